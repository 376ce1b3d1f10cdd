//! The answers a proxy makes itself once a request is routed (no healthy upstream, a refused
//! connect, an upstream timeout, a fault abort, a local rate limit, an RBAC denial, a
//! redirect, a direct response, a fault delay before a direct response) against Envoy 1.40
//! given the same LDS/CDS: Envoy's filter manager finalizes every local reply of a route that
//! forwards with the route's response header mutations (route, virtual host, route
//! configuration, weighted cluster), and a direct route's own answer with its mutations after
//! its `location`; a local reply on a direct route from a filter before the router (fault
//! abort, RBAC) gets none, and neither does a request no route matches. Each request goes
//! through both proxies as a grpcio call (a trailers-only answer) and as raw HTTP/1.1; the
//! response fields must be the same (the proxies' own stamps aside), the gRPC status and
//! message too (Envoy's local reply: its HTTP status mapped, its body as `grpc-message`: a
//! timeout, a refused connect, a reset, a retried connect failure, a per-try timeout...), and
//! a fault delay must hold a direct answer in both.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::envoy::{envoy_or_ringside, load_assignment, socket};
use common::grpc::{grpc_call, Call, CallOpts};
use common::xds::XdsServer;
use common::*;
use serde_json::{json, Value};

/// One HTTP/1.1 exchange on a new connection (`Connection: close`): the response's bytes and
/// the ms until its first ones (Envoy closes a `Connection: close` exchange a while later).
fn http1(target: SocketAddr, request: &str) -> (String, u128) {
    let mut s = std::net::TcpStream::connect(target).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    s.write_all(request.as_bytes()).unwrap();
    let mut first = [0u8; 1];
    let n = s.read(&mut first).unwrap_or(0);
    let ms = t.elapsed().as_millis();
    let mut out = first[..n].to_vec();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), ms)
}

fn add(n: &str, v: &str, action: &str) -> Value {
    json!({"header": {"key": n, "value": v}, "append_action": action})
}

fn fault(f: Value) -> Value {
    let mut f = f;
    f["@type"] = json!("type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault");
    json!({"envoy.filters.http.fault": f})
}

fn all() -> Value {
    json!({"numerator": 100, "denominator": "HUNDRED"})
}

/// A route `prefix` with its own response mutation `x-r: NAME`.
fn route(prefix: &str, name: &str, action: Value) -> Value {
    let mut r = json!({"match": {"prefix": prefix},
        "response_headers_to_add": [add("x-r", name, "APPEND_IF_EXISTS_OR_ADD")]});
    for (k, v) in action.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

fn snapshot(
    listen: SocketAddr,
    silent: SocketAddr,
    refused: SocketAddr,
    resets: SocketAddr,
) -> Value {
    let rl = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "route_rl",
        "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "3600s"},
        "filter_enabled": {"runtime_key": "rl_on", "default_value": all()},
        "filter_enforced": {"runtime_key": "rl_enforced", "default_value": all()}
    });
    let routes = json!([
        route(
            "/direct",
            "direct",
            json!({"direct_response": {"status": 200, "body": {"inline_string": "hi"}}})
        ),
        route(
            "/redirect",
            "redirect",
            json!({"redirect": {"host_redirect": "example.com"}})
        ),
        route(
            "/delayed-abort",
            "delayed-abort",
            json!({
            "direct_response": {"status": 200, "body": {"inline_string": "late"}},
            "typed_per_filter_config": fault(json!({
                "delay": {"fixed_delay": "0.3s", "percentage": all()},
                "abort": {"http_status": 418, "percentage": all()}}))})
        ),
        route(
            "/delayed",
            "delayed",
            json!({
            "direct_response": {"status": 200, "body": {"inline_string": "late"}},
            "typed_per_filter_config": fault(json!({
                "delay": {"fixed_delay": "0.3s", "percentage": all()}}))})
        ),
        route(
            "/abort-direct",
            "abort-direct",
            json!({
            "direct_response": {"status": 200, "body": {"inline_string": "hi"}},
            "typed_per_filter_config": fault(json!({"abort": {"http_status": 418, "percentage": all()}}))})
        ),
        route(
            "/nohealthy",
            "nohealthy",
            json!({"route": {"cluster": "empty"}})
        ),
        route(
            "/refused",
            "refused",
            json!({"route": {"cluster": "refused"}})
        ),
        route(
            "/timeout",
            "timeout",
            json!({"route": {"cluster": "silent", "timeout": "0.3s"}})
        ),
        route(
            "/abort",
            "abort",
            json!({"route": {"cluster": "refused"},
            "typed_per_filter_config": fault(json!({"abort": {"http_status": 418, "percentage": all()}}))})
        ),
        route(
            "/limited",
            "limited",
            json!({"route": {"cluster": "refused"},
            "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": rl}})
        ),
        route(
            "/retried",
            "retried",
            json!({"route": {"cluster": "refused",
            "retry_policy": {"retry_on": "connect-failure", "num_retries": 1}}})
        ),
        route(
            "/pertry",
            "pertry",
            json!({"route": {"cluster": "silent", "timeout": "3s",
            "retry_policy": {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.15s"}}})
        ),
        route("/reset", "reset", json!({"route": {"cluster": "resets"}})),
        route(
            "/weighted",
            "weighted",
            json!({"route": {"weighted_clusters": {"clusters": [
            {"name": "empty", "weight": 100,
             "response_headers_to_add": [add("x-w", "w", "APPEND_IF_EXISTS_OR_ADD")]}]}}})
        ),
    ]);
    let route_config = json!({
        "name": "lr",
        "response_headers_to_add": [
            add("x-rc", "rc", "APPEND_IF_EXISTS_OR_ADD"),
            add("x-code", "%RESPONSE_CODE%", "OVERWRITE_IF_EXISTS_OR_ADD"),
            add("x-uh", "%UPSTREAM_HOST%", "OVERWRITE_IF_EXISTS_OR_ADD"),
        ],
        "virtual_hosts": [
            {"name": "svc", "domains": ["*"], "routes": routes,
             "response_headers_to_add": [
                add("x-vh", "vh", "OVERWRITE_IF_EXISTS_OR_ADD"),
                add("x-loc", "%RESP(location)%", "OVERWRITE_IF_EXISTS_OR_ADD"),
                add("x-r", "vh", "ADD_IF_ABSENT"),
                add("x-req", "%REQ(x-in)%", "OVERWRITE_IF_EXISTS_OR_ADD")]},
            {"name": "other", "domains": ["other.example"],
             "response_headers_to_add": [add("x-vh", "other", "OVERWRITE_IF_EXISTS_OR_ADD")],
             "routes": [{"match": {"prefix": "/only"}, "route": {"cluster": "refused"}}]},
        ]
    });
    let rbac = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "DENY", "policies": {"deny-marked": {
            "permissions": [{"header": {"name": "x-deny", "present_match": true}}],
            "principals": [{"any": true}]}}}
    });
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "lr", "codec_type": "AUTO", "server_name": "istio-envoy",
        "route_config": route_config,
        "http_filters": [
            {"name": "envoy.filters.http.rbac", "typed_config": rbac},
            {"name": "envoy.filters.http.fault", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "listener_rl"}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        ]
    });
    let h2 = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}});
    let cluster = |name: &str, eps: &[SocketAddr]| {
        json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": load_assignment(name, eps),
               "typed_extension_protocol_options": h2})
    };
    json!({
        "version": "v1",
        "listeners": [{"name": "lr", "address": socket(listen), "traffic_direction": "OUTBOUND",
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
        "clusters": [cluster("empty", &[]), cluster("refused", &[refused]),
            cluster("silent", &[silent]), cluster("resets", &[resets])]
    })
}

/// A listener that accepts and never answers (each connection held open).
fn silent_upstream() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

/// One request: its name, the gRPC service it calls (path `/{service}/SayHello`), the
/// `:authority`, whether it is marked for the RBAC denial.
const REQUESTS: [(&str, &str, Option<&str>, bool); 18] = [
    ("direct", "direct", None, false),
    ("redirect", "redirect", None, false),
    ("delayed", "delayed", None, false),
    ("delayed-abort", "delayed-abort", None, false),
    ("abort-direct", "abort-direct", None, false),
    ("nohealthy", "nohealthy", None, false),
    ("refused", "refused", None, false),
    ("timeout", "timeout", None, false),
    ("abort", "abort", None, false),
    // The route's bucket holds one token: the first goes on (a refused connect), the second
    // is rate limited.
    ("limited-first", "limited", None, false),
    ("limited-second", "limited", None, false),
    ("weighted", "weighted", None, false),
    // A connect failure retried once, a per-try timeout retried once, a stream the upstream
    // resets (`x-rst`).
    ("retried", "retried", None, false),
    ("per-try", "pertry", None, false),
    ("reset", "reset", None, false),
    ("rbac-forwarding", "refused", None, true),
    ("rbac-direct", "direct", None, true),
    ("no-route", "nothing", Some("other.example"), false),
];

/// What a client got: (request, the fields compared, elapsed ms).
type Got = Vec<(String, Vec<String>, u128)>;

/// Fields a proxy writes for itself (times, its connection's framing), left out of the
/// comparison (a gRPC answer's `content-type` is grpcio's to check).
fn compared(name: &str) -> bool {
    !matches!(name, "date" | "connection" | "content-type")
}

fn exercise(listen: SocketAddr) -> (Got, Got) {
    let mut grpc = Vec::new();
    let mut plain = Vec::new();
    for (what, service, authority, deny) in REQUESTS {
        let mut opts = CallOpts::new(Call::Unary)
            .service(service)
            .timeout_s(5.0)
            .meta("x-in", "v");
        if let Some(a) = authority {
            opts = opts.authority(a);
        }
        if deny {
            opts = opts.meta("x-deny", "1");
        }
        if what == "reset" {
            opts = opts.meta("x-rst", "1");
        }
        let out = grpc_call(listen, &opts);
        // The call's own time, as the client measured it (not the client's start-up).
        let ms = out.elapsed_ms as u128;
        assert!(!out.ok, "{what}: {out:?}");
        let mut fields: Vec<String> = out
            .trailers
            .iter()
            .filter(|(k, _)| compared(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        fields.sort();
        // grpcio gives grpc-status and grpc-message as the call's code and details.
        fields.insert(0, format!("grpc-status={}", out.code_number));
        fields.insert(1, format!("grpc-message={}", out.details));
        grpc.push((what.to_string(), fields, ms));
    }
    for (what, service, authority, deny) in REQUESTS {
        let host = authority.unwrap_or("svc");
        let marked = match (deny, what) {
            (true, _) => "X-Deny: 1\r\n",
            (_, "reset") => "X-Rst: 1\r\n",
            _ => "",
        };
        let request = format!(
            "GET /{service}/x HTTP/1.1\r\nHost: {host}\r\nX-In: v\r\n{marked}Connection: close\r\n\r\n"
        );
        let (r, ms) = http1(listen, &request);
        let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
        let mut lines = head.split("\r\n");
        let mut fields: Vec<String> = lines
            .by_ref()
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .filter(|(n, _)| compared(n) || n == "content-type")
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        fields.sort();
        fields.insert(0, head.lines().next().unwrap_or("").to_string());
        fields.push(format!("body={body}"));
        plain.push((what.to_string(), fields, ms));
    }
    (grpc, plain)
}

#[test]
fn local_replies_get_route_response_mutations_like_envoy() {
    let silent = silent_upstream();
    let refused = local(free_port());
    let resets = common::h2::Upstream::start("R").addr;
    let run = |who: &str| -> (Got, Got) {
        let listen = local(free_port());
        let xds = XdsServer::start();
        xds.put(&snapshot(listen, silent, refused, resets)).unwrap();
        let _proxy = envoy_or_ringside(who, xds.addr(), "localreply", "1");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        wait_listening(listen);
        exercise(listen)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    eprintln!("envoy: {envoy:#?}\nringside: {ringside:#?}");
    let find = |got: &Got, what: &str| got.iter().find(|g| g.0 == what).unwrap().clone();
    // Envoy, the oracle: every local reply of a forwarding route has the mutations of all
    // levels (and the weighted cluster's); a direct route's answer too; a filter's answer on a
    // direct route and a request without a route have none.
    let has = |g: &(String, Vec<String>, u128), f: &str| g.1.iter().any(|x| x.contains(f));
    for (got, sep) in [(&envoy.0, "="), (&envoy.1, "=")] {
        for what in [
            "direct",
            "redirect",
            "delayed",
            "nohealthy",
            "refused",
            "timeout",
            "abort",
            "limited-first",
            "limited-second",
            "weighted",
            "rbac-forwarding",
        ] {
            let g = find(got, what);
            assert!(has(&g, &format!("x-rc{sep}rc")), "Envoy {what}: {g:?}");
            assert!(has(&g, &format!("x-code{sep}0")), "Envoy {what}: {g:?}");
        }
        for what in ["delayed-abort", "abort-direct", "rbac-direct", "no-route"] {
            let g = find(got, what);
            assert!(!has(&g, "x-rc"), "Envoy {what}: {g:?}");
        }
        assert!(has(&find(got, "weighted"), "x-w=w"));
        if sep == "=" && std::ptr::eq(got, &envoy.0) {
            // Envoy's gRPC local replies, as they are known (the statuses the comparison
            // below holds ringside to).
            for (what, status, message) in [
                ("timeout", 14, "upstream request timeout"),
                ("per-try", 14, "upstream request timeout"),
                ("nohealthy", 14, "no healthy upstream"),
                ("limited-second", 14, "local_rate_limited"),
                ("abort", 2, "fault filter abort"),
                ("no-route", 12, ""),
                (
                    "retried",
                    14,
                    "upstream connect error or disconnect/reset before headers. retried and \
                     the latest reset reason: remote connection failure",
                ),
            ] {
                let g = find(got, what);
                assert_eq!(
                    (g.1[0].as_str(), g.1[1].as_str()),
                    (
                        format!("grpc-status={status}").as_str(),
                        format!("grpc-message={message}").as_str()
                    ),
                    "Envoy {what}: {g:?}"
                );
            }
        }
        assert!(
            has(&find(got, "abort"), "x-req=v"),
            "{:?}",
            find(got, "abort")
        );
        assert!(has(&find(got, "refused"), "x-uh=127.0.0.1:"));
        assert!(has(&find(got, "redirect"), "x-loc=http://example.com/"));
        // The fault delay held the direct answer.
        assert!(find(got, "delayed").2 >= 250, "{:?}", find(got, "delayed"));
        assert!(find(got, "delayed-abort").2 >= 250);
        assert!(find(got, "direct").2 < 250);
    }
    for (k, (e, r)) in [(&envoy.0, &ringside.0), (&envoy.1, &ringside.1)]
        .into_iter()
        .enumerate()
    {
        let proto = ["gRPC", "HTTP/1.1"][k];
        for (eg, rg) in e.iter().zip(r) {
            assert_eq!(eg.1, rg.1, "{proto} {}: ringside's fields vs Envoy's", eg.0);
            // A fault delay holds both (the upstream timeout's own 300 ms aside).
            if eg.0 != "timeout" && eg.0 != "per-try" {
                assert_eq!(eg.2 >= 250, rg.2 >= 250, "{proto} {}: delay", eg.0);
            }
        }
    }
}

/// After the response headers went to the caller, the route's timeout passes while the
/// upstream holds the rest (a grpcio unary call whose server sent its headers then sleeps; an
/// HTTP/1.1 request whose HTTP/2 upstream sent its head and half its body then stalls), against
/// Envoy 1.40 given the same LDS/CDS: Envoy's filter manager can only reset the caller's
/// stream then (HTTP/2: RST_STREAM; HTTP/1.1: the connection closes mid-body), where ringside
/// once ended the call with trailers. grpcio's status and details, the response headers it
/// got, and the HTTP/1.1 status line and ending are the same through both.
#[test]
fn failures_after_the_response_began_reset_like_envoy() {
    use common::grpc::GrpcServer;
    use common::http1::H2Server;
    let grpc = GrpcServer::start(
        0,
        "slow",
        &["--initial-metadata", "x-a=1", "--delay-ms", "3000"],
    );
    let h2_port = free_port();
    let _h2 = H2Server::start(h2_port, "h2");
    let snapshot = |listen: SocketAddr| {
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http", "codec_type": "AUTO",
            "route_config": {"name": "r", "virtual_hosts": [{"name": "svc", "domains": ["*"], "routes": [
                {"match": {"prefix": "/helloworld.Greeter/"}, "route": {"cluster": "grpc", "timeout": "1s"}},
                {"match": {"prefix": "/stall/"}, "route": {"cluster": "h2up", "timeout": "1s"}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        });
        let cluster = |name: &str, ep: SocketAddr| {
            json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": load_assignment(name, &[ep]),
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}}})
        };
        json!({
            "version": "v1",
            "listeners": [{"name": "l", "address": socket(listen), "traffic_direction": "OUTBOUND",
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": [cluster("grpc", grpc.addr()), cluster("h2up", local(h2_port))]
        })
    };
    let run = |who: &str| -> (Vec<String>, Vec<String>) {
        let listen = local(free_port());
        let xds = XdsServer::start();
        xds.put(&snapshot(listen)).unwrap();
        let _proxy = envoy_or_ringside(who, xds.addr(), "began", "1");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        wait_listening(listen);
        let out = grpc_call(listen, &CallOpts::new(Call::Unary).timeout_s(5.0));
        let ms = out.elapsed_ms;
        assert!((800.0..2500.0).contains(&ms), "{who}: {ms} ms: {out:?}");
        let mut initial: Vec<String> = out
            .initial
            .iter()
            .filter(|(k, _)| k.starts_with("x-a"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        initial.sort();
        let mut trailers: Vec<String> = out.trailers.keys().cloned().collect();
        trailers.sort();
        let grpc_seen = vec![
            format!("code={} {}", out.code_number, out.code),
            format!("details={}", out.details),
            format!("initial={initial:?}"),
            format!("trailers={trailers:?}"),
        ];
        let (r, _) = http1(
            listen,
            "GET /stall/3000 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
        );
        let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let http1_seen = vec![
            head.lines().next().unwrap_or("").to_string(),
            format!("chunked={chunked}"),
            format!(
                "has the body's start={}",
                body.contains("h2 GET /stall/3000")
            ),
            format!("ended={}", body.ends_with("0\r\n\r\n")),
        ];
        (grpc_seen, http1_seen)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    eprintln!("envoy: {envoy:#?}\nringside: {ringside:#?}");
    // Envoy got the response headers to the caller, then cut the stream short (a timeout
    // before them is a trailers-only UNAVAILABLE `upstream request timeout`; grpcio shows no
    // response metadata of a failed call).
    assert!(envoy.0[1].contains("RST_STREAM"), "{envoy:?}");
    assert_eq!(envoy.1[0], "HTTP/1.1 200 OK", "{envoy:?}");
    assert_eq!(envoy.1[3], "ended=false", "{envoy:?}");
    assert_eq!(ringside, envoy);
}
