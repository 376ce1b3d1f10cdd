//! Route header mutations (`request_headers_to_add` / `_remove`, `response_headers_to_add` /
//! `_remove` at the route configuration, virtual host, route and weighted cluster levels) as
//! Envoy 1.40 does them, given the same RDS: what istiod writes for a VirtualService's
//! `headers: {request: {set, add, remove}, response: {set, add, remove}}` (`set`:
//! OVERWRITE_IF_EXISTS_OR_ADD, `add`: APPEND_IF_EXISTS_OR_ADD, names sorted; istio/istio
//! pilot/pkg/networking/core/route/route.go `translateAppendHeaders`,
//! `TranslateHeadersOperations`), plus the other append actions, the deprecated `append`,
//! `keep_empty_value`, `%%` and `%HOSTNAME%`, and `most_specific_header_mutations_wins` on a
//! second listener. A grpcio client (unary calls, and a trailers-only failure) and raw HTTP/1.1
//! requests (to an HTTP/2 upstream and to an HTTP/1.1 one) go through each proxy; the upstreams
//! echo the headers they got. The upstreams see the same headers through both, the clients get
//! the same response headers.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::envoy::{envoy_or_ringside, load_assignment, socket};
use common::grpc::{grpc_call, Call, CallOpts, GrpcServer};
use common::http1::{H2Server, Http1Server};
use common::xds::XdsServer;
use common::*;
use serde_json::{json, Value};

/// One HTTP/1.1 exchange on a new connection (the request says `Connection: close`): the
/// response's bytes.
fn http1(target: SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(target).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A header as `name: value` (name lower case, as HTTP/2 and Envoy's HTTP/1.1 codec write it).
fn header(n: &str, v: &str) -> Value {
    json!({"key": n, "value": v})
}

/// One level's mutations: (name, value, action) added, names removed, per direction.
fn level(req: &[Value], req_rm: &[&str], resp: &[Value], resp_rm: &[&str]) -> Value {
    json!({
        "request_headers_to_add": req, "request_headers_to_remove": req_rm,
        "response_headers_to_add": resp, "response_headers_to_remove": resp_rm,
    })
}

fn add(n: &str, v: &str, action: &str) -> Value {
    json!({"header": header(n, v), "append_action": action})
}

/// istiod's `set` and `add` (translateAppendHeaders: sorted by name).
fn set(n: &str, v: &str) -> Value {
    add(n, v, "OVERWRITE_IF_EXISTS_OR_ADD")
}

fn append(n: &str, v: &str) -> Value {
    add(n, v, "APPEND_IF_EXISTS_OR_ADD")
}

/// `route` with `m`'s fields merged in.
fn with(mut route: Value, m: Value) -> Value {
    for (k, v) in m.as_object().unwrap() {
        route[k] = v.clone();
    }
    route
}

/// A route configuration with mutations at every level (`most_specific`: its
/// `most_specific_header_mutations_wins`).
fn route_config(name: &str, most_specific: bool) -> Value {
    let vh_level = level(
        &[
            set("x-level", "vh"),
            append("x-vh", "vh"),
            set("x-pct", "50%% off"),
        ],
        &["x-drop-vh"],
        &[set("x-resp-level", "vh"), append("x-resp-vh", "vh")],
        &["x-up-drop-vh"],
    );
    let rc_level = level(
        &[set("x-level", "rc"), append("x-rc", "rc")],
        &["x-drop-rc"],
        &[set("x-resp-level", "rc"), append("x-resp-rc", "rc")],
        &["x-up-drop-rc"],
    );
    // A VirtualService route's `headers` as istiod writes them, and the other actions.
    let route_level = level(
        &[
            set("x-client-set", "route"),
            set("x-level", "route"),
            append("x-client-add", "route"),
            add("x-absent-add", "route", "ADD_IF_ABSENT"),
            add("x-present-keep", "route", "ADD_IF_ABSENT"),
            add("x-overwrite-present", "route", "OVERWRITE_IF_EXISTS"),
            add("x-overwrite-absent", "route", "OVERWRITE_IF_EXISTS"),
            json!({"header": header("x-legacy-overwrite", "route"), "append": false}),
            json!({"header": header("x-legacy-append", "route"), "append": true}),
            json!({"header": header("x-empty-kept", ""), "keep_empty_value": true}),
            json!({"header": header("x-empty-dropped", "")}),
            set("x-host", "%HOSTNAME%"),
        ],
        &["x-drop-route"],
        &[
            set("x-up-set", "route"),
            append("x-up-add", "route"),
            set("x-resp-level", "route"),
        ],
        &["x-up-drop"],
    );
    let cluster_level = level(
        &[set("x-level", "cluster"), append("x-cluster", "c")],
        &[],
        &[
            set("x-resp-level", "cluster"),
            append("x-resp-cluster", "c"),
        ],
        &[],
    );
    with(
        json!({
            "name": name,
            "most_specific_header_mutations_wins": most_specific,
            "virtual_hosts": [with(json!({"name": "svc", "domains": ["*"], "routes": [
                {"match": {"prefix": "/helloworld.Greeter/", "headers": [
                    {"name": "x-target", "string_match": {"exact": "fail"}}]},
                 "route": {"cluster": "grpcfail", "timeout": "5s"}},
                with(json!({"match": {"prefix": "/helloworld.Greeter/"},
                 "route": {"weighted_clusters": {"clusters": [
                     with(json!({"name": "grpc", "weight": 100}), cluster_level.clone())]},
                     "timeout": "5s"}}), route_level.clone()),
                with(json!({"match": {"prefix": "/header/"},
                 "route": {"cluster": "h1up", "timeout": "5s"}}), route_level.clone()),
                with(json!({"match": {"prefix": "/"},
                 "route": {"weighted_clusters": {"clusters": [
                     with(json!({"name": "h2up", "weight": 100}), cluster_level)]},
                     "timeout": "5s"}}), route_level),
            ]}), vh_level)]
        }),
        rc_level,
    )
}

/// Three listeners: `least` (the default order; `server_name` overwrites every `server`), `most`
/// (`most_specific_header_mutations_wins`; APPEND_IF_ABSENT; the router's
/// `suppress_envoy_headers`), `pass` (PASS_THROUGH).
fn snapshot(listen: [SocketAddr; 3], ups: [SocketAddr; 4]) -> Value {
    let hcm = |rc: Value, server: &str, suppress: bool| {
        json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http", "codec_type": "AUTO", "server_name": "istio-envoy",
            "server_header_transformation": server,
            "route_config": rc,
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": suppress}}]
        })
    };
    let listener = |name: &str, addr: SocketAddr, most_specific: bool, server: &str, suppress| {
        json!({"name": name, "address": socket(addr), "traffic_direction": "OUTBOUND",
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm(route_config(name, most_specific), server, suppress)}]}]})
    };
    let options = |mut o: Value| {
        o["@type"] =
            json!("type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
        json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": o})
    };
    let h2 = || json!({"explicit_http_config": {"http2_protocol_options": {}}});
    let cluster = |name: &str, ep: SocketAddr, o: Value| {
        json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": load_assignment(name, &[ep]),
               "typed_extension_protocol_options": options(o)})
    };
    json!({
        "version": "v1",
        "listeners": [
            listener("least", listen[0], false, "OVERWRITE", false),
            listener("most", listen[1], true, "APPEND_IF_ABSENT", true),
            listener("pass", listen[2], false, "PASS_THROUGH", false),
        ],
        "clusters": [
            cluster("grpc", ups[0], h2()),
            cluster("grpcfail", ups[1], h2()),
            cluster("h2up", ups[2], h2()),
            cluster("h1up", ups[3], json!({"use_downstream_protocol_config": {}})),
        ]
    })
}

/// Headers ringside and Envoy differ on by design or by a later item: times, and the ones
/// Envoy's connection manager and router add to every response.
fn proxy_own(name: &str) -> bool {
    matches!(
        name,
        "date" | "server" | "x-envoy-upstream-service-time" | "content-length"
    )
}

/// `name: value` lines stably sorted by name (the order of one name's values kept: an append
/// comes after what was there), without `content-length`, values that are times replaced by
/// what they are.
fn fields_by_name<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (n, val) = l.split_once(": ")?;
            let n = n.to_ascii_lowercase();
            let val = match n.as_str() {
                "date" if val.ends_with(" GMT") && val.len() == 29 => "<date>".to_string(),
                "x-envoy-upstream-service-time" if val.parse::<u64>().is_ok() => "<ms>".into(),
                _ => val.to_string(),
            };
            (n != "content-length").then_some((n, val))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().map(|(n, v)| format!("{n}: {v}")).collect()
}

/// What one proxy did: per call or request, what the upstream saw and what the client got.
#[derive(Debug, PartialEq)]
struct Seen {
    /// The grpcio calls: (request metadata the server saw, response metadata the client got).
    grpc: Vec<(Vec<String>, Vec<String>)>,
    /// The grpcio calls' `server`, `date` and `x-envoy-upstream-service-time` (values that are
    /// times replaced by what they are).
    stamps: Vec<Vec<String>>,
    /// The HTTP/1.1 requests: (status line, response fields, the upstream's echo).
    http1: Vec<(String, Vec<String>, Vec<String>)>,
}

/// A version-4 UUID as Envoy writes request ids: lower-case hex, 8-4-4-4-12, version 4,
/// variant 10.
fn is_uuid4(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

fn exercise(listen: SocketAddr) -> Seen {
    let mut grpc = Vec::new();
    let mut stamps = Vec::new();
    let metadata = [
        ("x-client-set", "c"),
        ("x-client-add", "c"),
        ("x-present-keep", "c"),
        ("x-overwrite-present", "c"),
        ("x-legacy-overwrite", "c"),
        ("x-legacy-append", "c"),
        ("x-level", "c"),
        ("x-drop-rc", "c"),
        ("x-drop-vh", "c"),
        ("x-drop-route", "c"),
        ("x-kept", "c"),
    ];
    // The third call brings its own x-request-id (kept); the others get a new one.
    for (target, rid) in [("ok", None), ("fail", None), ("ok", Some("client-rid-1"))] {
        let mut opts = CallOpts::new(Call::Unary).meta("x-target", target);
        for (k, v) in metadata {
            opts = opts.meta(k, v);
        }
        if let Some(r) = rid {
            opts = opts.meta("x-request-id", r);
        }
        let out = grpc_call(listen, &opts);
        assert_eq!(out.ok, target == "ok", "{target}: {out:?}");
        // With what Envoy's connection manager and router add to every request
        // (x-forwarded-proto, x-request-id, x-envoy-expected-rq-timeout-ms); a new request id
        // shown as what it is.
        let seen = out
            .replies
            .first()
            .map(|r| r.metadata.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|m| match m.strip_prefix("x-request-id=") {
                Some(v) if is_uuid4(v) => "x-request-id=<uuid4>".to_string(),
                _ => m,
            })
            .collect();
        // The response headers (a trailers-only answer: its only HEADERS, the trailers).
        let got = match target {
            "ok" => &out.initial,
            _ => &out.trailers,
        };
        stamps.push(
            got.iter()
                .filter(|(k, _)| proxy_own(k) && *k != "content-length")
                .map(|(k, v)| match k.as_str() {
                    "date" if v.ends_with(" GMT") && v.len() == 29 => "date=<date>".to_string(),
                    "x-envoy-upstream-service-time" if v.parse::<u64>().is_ok() => {
                        format!("{k}=<ms>")
                    }
                    _ => format!("{k}={v}"),
                })
                .collect(),
        );
        let got = got
            .iter()
            .filter(|(k, _)| k.starts_with("x-") && !proxy_own(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        grpc.push((seen, got));
    }
    let request = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: svc\r\nX-Client-Set: c\r\nX-Client-Add: c\r\n\
             X-Present-Keep: c\r\nX-Overwrite-Present: c\r\nX-Legacy-Append: c\r\nX-Level: c\r\n\
             X-Drop-Rc: c\r\nX-Drop-Route: c\r\nX-Kept: c\r\nConnection: close\r\n\r\n"
        )
    };
    let mut http1_seen = Vec::new();
    // To the HTTP/2 upstream (it echoes every field it got), and to the HTTP/1.1 one (which
    // answers with the field /header/NAME names, as it got it, in its response).
    for path in [
        "/len",
        "/header/x-client-set",
        "/header/x-client-add",
        "/header/x-level",
        "/header/x-drop-route",
    ] {
        let r = http1(listen, &request(path));
        let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or("").to_string();
        let fields = fields_by_name(lines.filter(|l| !l.to_lowercase().starts_with("connection:")));
        let echo = match path {
            // The echo's header lines (x-request-id's value shown as <id> by the server).
            "/len" => fields_by_name(body.lines().skip(1).filter(|l| !l.starts_with("body "))),
            _ => body.lines().map(str::to_string).collect(),
        };
        http1_seen.push((status, fields, echo));
    }
    Seen {
        grpc,
        stamps,
        http1: http1_seen,
    }
}

#[test]
fn route_header_mutations_are_envoys() {
    let grpc = GrpcServer::start(
        0,
        "up",
        &[
            "--initial-metadata",
            "x-up-set=up",
            "--initial-metadata",
            "x-up-add=up",
            "--initial-metadata",
            "x-up-drop=up",
            "--initial-metadata",
            "x-up-drop-vh=up",
            "--initial-metadata",
            "x-up-drop-rc=up",
            "--initial-metadata",
            "x-up-kept=up",
        ],
    );
    let grpcfail = GrpcServer::start(0, "fail", &["--status", "NOT_FOUND", "--message", "no"]);
    let h2_port = free_port();
    let _h2 = H2Server::start(h2_port, "h2");
    let h1_port = free_port();
    let _h1 = Http1Server::start("127.0.0.1", h1_port, "h1");
    let ups = [grpc.addr(), grpcfail.addr(), local(h2_port), local(h1_port)];
    let run = |who: &str| -> [Seen; 3] {
        let listen = [local(free_port()), local(free_port()), local(free_port())];
        let xds = XdsServer::start();
        xds.put(&snapshot(listen, ups)).unwrap();
        let _proxy = envoy_or_ringside(who, xds.addr(), "vshdr", "1");
        let ack = xds.wait_ack("cds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        listen.iter().for_each(|&a| wait_listening(a));
        let seen = listen.map(exercise);
        // Refused: a pseudo-header or `host` (Envoy: ":-prefixed or host headers may not be
        // modified"), `append` with `append_action`; by ringside alone, a value operator it
        // does not fill (Envoy fills %UPSTREAM_LOCAL_ADDRESS%: a documented difference).
        let bad = [
            (
                add(":path", "/x", "OVERWRITE_IF_EXISTS_OR_ADD"),
                true,
                "may not be modified",
            ),
            (
                add("host", "x", "OVERWRITE_IF_EXISTS_OR_ADD"),
                true,
                "may not be modified",
            ),
            (
                json!({"header": header("x-a", "1"), "append": true, "append_action": "ADD_IF_ABSENT"}),
                true,
                "append",
            ),
            (
                set("x-d", "%UPSTREAM_LOCAL_ADDRESS%"),
                false,
                "UPSTREAM_LOCAL_ADDRESS",
            ),
        ];
        for (k, (h, envoy_refuses, why)) in bad.into_iter().enumerate() {
            let version = format!("bad{k}");
            let mut snap = snapshot(listen, ups);
            snap["version"] = json!(version);
            snap["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
                ["virtual_hosts"][0]["routes"][1]["request_headers_to_add"]
                .as_array_mut()
                .unwrap()
                .push(h);
            xds.put(&snap).unwrap();
            if who == "ringside" || envoy_refuses {
                let nack = xds.wait_nack("lds", &version);
                let message = nack["error_detail"]["message"].as_str().unwrap_or("");
                assert!(message.contains(why), "{who} {version}: {message}");
            } else {
                xds.wait_ack("lds", &version);
            }
        }
        seen
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    eprintln!("envoy: {envoy:#?}\nringside: {ringside:#?}");
    // Envoy did what the configuration says (the test sees the mutations at all): the
    // least specific level wins by default, the most specific with the flag.
    let seen = &envoy[0].grpc[0].0;
    for want in [
        "x-level=rc",
        "x-client-set=route",
        "x-pct=50% off",
        "x-cluster=c",
        "x-absent-add=route",
        "x-present-keep=c",
        "x-overwrite-present=route",
        "x-empty-kept=",
    ] {
        assert!(seen.contains(&want.to_string()), "{want}: {seen:?}");
    }
    // What Envoy adds to every gRPC request upstream: a new request id (a caller's kept), the
    // scheme, the route's timeout (not with the router's suppress_envoy_headers).
    for want in [
        "x-request-id=<uuid4>",
        "x-forwarded-proto=http",
        "x-envoy-expected-rq-timeout-ms=5000",
    ] {
        assert!(seen.contains(&want.to_string()), "{want}: {seen:?}");
    }
    assert!(envoy[0].grpc[2]
        .0
        .contains(&"x-request-id=client-rid-1".to_string()));
    assert!(!envoy[1].grpc[0]
        .0
        .iter()
        .any(|m| m.starts_with("x-envoy-expected-rq-timeout-ms=")));
    // (The weighted cluster's level is evaluated first: any other level's `set` beats it.)
    assert!(envoy[1].grpc[0].0.contains(&"x-level=route".to_string()));
    assert!(envoy[0].grpc[0].1.contains(&"x-resp-level=rc".to_string()));
    assert!(envoy[1].grpc[0]
        .1
        .contains(&"x-resp-level=route".to_string()));
    // A trailers-only answer gets the response mutations in its one HEADERS frame.
    assert!(envoy[0].grpc[1].1.contains(&"x-resp-rc=rc".to_string()));
    assert!(envoy[0].http1[1].2[0].contains("x-client-set=route"));
    // HTTP/2 responses (a trailers-only one too) carry what Envoy adds to every response.
    assert!(
        envoy[0].stamps[0].contains(&"server=istio-envoy".to_string()),
        "{:?}",
        envoy[0].stamps
    );
    for (i, (r, e)) in ringside.iter().zip(&envoy).enumerate() {
        assert_eq!(
            r.stamps, e.stamps,
            "listener {i}: server, date, service time"
        );
        for (k, (rg, eg)) in r.grpc.iter().zip(&e.grpc).enumerate() {
            assert_eq!(
                rg.0, eg.0,
                "listener {i} call {k}: request metadata the server saw"
            );
            assert_eq!(rg.1, eg.1, "listener {i} call {k}: response metadata");
        }
        for (k, (rh, eh)) in r.http1.iter().zip(&e.http1).enumerate() {
            assert_eq!(rh, eh, "listener {i} HTTP/1.1 request {k}");
        }
        assert_eq!(r, e);
    }
}

/// Header values with substitution operators ringside fills per request, against Envoy 1.40
/// given the same RDS: request headers from the caller's addresses, `%PROTOCOL%`,
/// `%START_TIME%`, `%REQ(x)%` (a missing header: not added; `:N` truncation; `:authority`),
/// response headers from the upstream's address, `%RESPONSE_CODE%` and `%RESP(x)%`, for a
/// grpcio call and an HTTP/1.1 request. Values that differ by nature (the caller's port, each
/// proxy's own listening port, the time) are compared by shape.
#[test]
fn route_header_operators_are_envoys() {
    let grpc = GrpcServer::start(0, "up", &["--initial-metadata", "x-up-kept=up"]);
    let h2_port = free_port();
    let _h2 = H2Server::start(h2_port, "h2");
    let request = level(
        &[
            set("x-dr", "%DOWNSTREAM_REMOTE_ADDRESS%"),
            set("x-dra", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
            set("x-dl", "%DOWNSTREAM_LOCAL_ADDRESS%"),
            set("x-dla", "<%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%>"),
            set("x-proto", "%PROTOCOL%"),
            set("x-start", "%START_TIME(%s)%"),
            set("x-req", "v=%REQ(x-in)% t=%REQ(x-in):2% a=%REQ(:authority)%"),
            set("x-missing", "%REQ(x-not-sent)%"),
            json!({"header": header("x-missing-kept", "%REQ(x-not-sent)%"), "keep_empty_value": true}),
            append("x-in", "again-%REQ(x-in)%"),
            // Envoy 1.40 finalizes the request before its upstream request exists: no
            // upstream host (not added; kept empty), no response (empty, code 0).
            set("x-uh-req", "%UPSTREAM_HOST%"),
            json!({"header": header("x-uh-kept", "%UPSTREAM_REMOTE_ADDRESS%"), "keep_empty_value": true}),
            set(
                "x-names",
                "%ROUTE_NAME%|%UPSTREAM_CLUSTER%|%RESPONSE_CODE%|%RESP(x-up-kept)%",
            ),
        ],
        &[],
        &[
            set("x-up", "%UPSTREAM_REMOTE_ADDRESS%"),
            set("x-uh", "%UPSTREAM_HOST%"),
            set("x-code", "%RESPONSE_CODE%"),
            set("x-resp", "r=%RESP(x-up-kept)%"),
            set(
                "x-rproto",
                "%PROTOCOL% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            ),
            // The request as it went upstream (after the mutations above).
            set(
                "x-rq",
                "%REQ(x-in)%|%REQ(:path)%|%REQ(x-forwarded-proto)%|%REQ(x-dl)%|%REQ(x-none)%",
            ),
            set("x-rid", "%REQ(x-request-id)%"),
            set("x-rnames", "%ROUTE_NAME%|%UPSTREAM_CLUSTER%"),
        ],
        &[],
    );
    let snapshot = |listen: SocketAddr| {
        let rc = json!({"name": "ops", "virtual_hosts": [with(json!({"name": "svc", "domains": ["*"],
            "routes": [
                {"name": "r-grpc", "match": {"prefix": "/helloworld.Greeter/"}, "route": {"cluster": "grpc", "timeout": "5s"}},
                {"name": "r-h2", "match": {"prefix": "/"}, "route": {"cluster": "h2up", "timeout": "5s"}}
            ]}), request.clone())]});
        let h2 = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
        let cluster = |name: &str, ep: SocketAddr| {
            json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
                   "load_assignment": load_assignment(name, &[ep]),
                   "typed_extension_protocol_options": h2.clone()})
        };
        json!({
            "version": "v1",
            "listeners": [{"name": "ops", "address": socket(listen), "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "http", "codec_type": "AUTO", "route_config": rc,
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }}]}]}],
            "clusters": [cluster("grpc", grpc.addr()), cluster("h2up", local(h2_port))]
        })
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    // `name=value` with what differs by nature replaced by its shape.
    let norm = |listen: SocketAddr, name: &str, value: &str| -> String {
        let value = value.replace(&listen.to_string(), "<listen>");
        let value = match name {
            "x-dr" => match value.strip_prefix("127.0.0.1:") {
                Some(p) if p.parse::<u16>().is_ok() => "127.0.0.1:<port>".to_string(),
                _ => value,
            },
            "x-start" => match value.parse::<u64>() {
                Ok(t) if t + 60 >= now() && t <= now() => "<now>".to_string(),
                _ => value,
            },
            "x-rid" if value.len() == 36 && value.matches('-').count() == 4 => "<uuid>".into(),
            _ => value,
        };
        format!("{name}={value}")
    };
    let ours = |n: &str| {
        n.starts_with("x-")
            && ![
                "x-envoy-upstream-service-time",
                "x-request-id",
                "x-forwarded-proto",
                "x-envoy-expected-rq-timeout-ms",
            ]
            .contains(&n)
    };
    let exercise = |listen: SocketAddr| -> Vec<String> {
        let mut out = Vec::new();
        let o = grpc_call(listen, &CallOpts::new(Call::Unary).meta("x-in", "abc"));
        assert!(o.ok, "{o:?}");
        for m in o
            .replies
            .first()
            .map(|r| r.metadata.clone())
            .unwrap_or_default()
        {
            let (n, v) = m.split_once('=').unwrap_or((&m, ""));
            if ours(n) {
                out.push(format!("grpc upstream {}", norm(listen, n, v)));
            }
        }
        for (n, v) in &o.initial {
            if ours(n) {
                out.push(format!("grpc client {}", norm(listen, n, v)));
            }
        }
        let r = http1(
            listen,
            "GET /len HTTP/1.1\r\nHost: svc\r\nX-In: abc\r\nConnection: close\r\n\r\n",
        );
        let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
        let fields = |lines: &mut dyn Iterator<Item = &str>, who: &str, out: &mut Vec<String>| {
            for (n, v) in lines.filter_map(|l| l.split_once(": ")) {
                let n = n.to_ascii_lowercase();
                if ours(&n) {
                    out.push(format!("h1 {who} {}", norm(listen, &n, v)));
                }
            }
        };
        fields(&mut head.split("\r\n").skip(1), "client", &mut out);
        fields(&mut body.lines().skip(1), "upstream", &mut out);
        out.sort();
        out
    };
    let run = |who: &str| -> Vec<String> {
        let listen = local(free_port());
        let xds = XdsServer::start();
        xds.put(&snapshot(listen)).unwrap();
        let _proxy = envoy_or_ringside(who, xds.addr(), "vsops", "1");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        wait_listening(listen);
        exercise(listen)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    eprintln!("envoy: {envoy:#?}\nringside: {ringside:#?}");
    // Envoy filled them (the test sees the operators at work).
    let up = grpc.addr().to_string();
    for want in [
        "grpc upstream x-dr=127.0.0.1:<port>".to_string(),
        "grpc upstream x-dl=<listen>".into(),
        "grpc upstream x-proto=HTTP/2".into(),
        "grpc upstream x-start=<now>".into(),
        "grpc upstream x-req=v=abc t=ab a=<listen>".into(),
        format!("grpc client x-up={up}"),
        "grpc client x-code=200".into(),
        "grpc client x-resp=r=up".into(),
        "h1 upstream x-proto=HTTP/1.1".into(),
        "h1 upstream x-req=v=abc t=ab a=svc".into(),
        "grpc upstream x-uh-kept=".into(),
        "grpc upstream x-names=r-grpc|grpc|0|".into(),
        "grpc client x-rq=abc|/helloworld.Greeter/SayHello|http|<listen>|".into(),
        "grpc client x-rid=<uuid>".into(),
        "grpc client x-rnames=r-grpc|grpc".into(),
        "h1 client x-rnames=r-h2|h2up".into(),
        "h1 client x-rq=abc|/len|http|<listen>|".into(),
    ] {
        assert!(
            envoy.iter().any(|e| e.starts_with(&want)),
            "{want}: {envoy:#?}"
        );
    }
    assert!(
        !envoy.iter().any(|e| e.contains("x-uh-req")),
        "Envoy added no upstream host to the request: {envoy:#?}"
    );
    assert_eq!(ringside, envoy);
}

/// Header values with the stream's own operators, against Envoy 1.40 given the same RDS:
/// `%DURATION%`, `%BYTES_RECEIVED%`, `%BYTES_SENT%`, `%RESPONSE_FLAGS%`, `%GRPC_STATUS%` and
/// `%GRPC_STATUS_NUMBER%` in request headers (evaluated as the request arrives: 0, `-`, empty)
/// and in response headers, for a grpcio call answered by its upstream after 150 ms (the
/// duration at least that, the request's body bytes received), a grpcio call the proxy
/// answers itself (no healthy upstream: `UH`, no gRPC status yet) and an HTTP/1.1 request.
/// Durations are compared by range (short, or at least the upstream's delay).
#[test]
fn route_header_stream_operators_are_envoys() {
    let grpc = GrpcServer::start(0, "up", &["--delay-ms", "150"]);
    let h2_port = free_port();
    let _h2 = H2Server::start(h2_port, "h2");
    let keep = |n: &str, v: &str| {
        json!({"header": header(n, v), "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
               "keep_empty_value": true})
    };
    let ops = |p: &str| {
        vec![
            keep(&format!("x-{p}-dur"), "%DURATION%"),
            keep(&format!("x-{p}-bytes"), "%BYTES_RECEIVED%/%BYTES_SENT%"),
            keep(&format!("x-{p}-flags"), "%RESPONSE_FLAGS%"),
            keep(
                &format!("x-{p}-gs"),
                "<%GRPC_STATUS%><%GRPC_STATUS_NUMBER%>",
            ),
        ]
    };
    let mutations = level(&ops("q"), &[], &ops("s"), &[]);
    let snapshot = |listen: SocketAddr| {
        let rc = json!({"name": "ops", "virtual_hosts": [with(json!({"name": "svc", "domains": ["*"],
            "routes": [
                {"name": "r-grpc", "match": {"prefix": "/helloworld.Greeter/"}, "route": {"cluster": "grpc", "timeout": "5s"}},
                {"name": "r-none", "match": {"prefix": "/nobody."}, "route": {"cluster": "empty", "timeout": "5s"}},
                {"name": "r-h2", "match": {"prefix": "/"}, "route": {"cluster": "h2up", "timeout": "5s"}}
            ]}), mutations.clone())]});
        let h2 = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
        let cluster = |name: &str, eps: &[SocketAddr]| {
            json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
                   "load_assignment": load_assignment(name, eps),
                   "typed_extension_protocol_options": h2.clone()})
        };
        json!({
            "version": "v1",
            "listeners": [{"name": "ops", "address": socket(listen), "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "http", "codec_type": "AUTO", "route_config": rc,
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }}]}]}],
            "clusters": [cluster("grpc", &[grpc.addr()]), cluster("empty", &[]),
                         cluster("h2up", &[local(h2_port)])]
        })
    };
    // `name=value`, a duration by its range.
    let norm = |name: &str, value: &str| -> String {
        let value = match (name.ends_with("-dur"), value.parse::<u64>()) {
            (true, Ok(ms)) if ms < 100 => "<short>".to_string(),
            (true, Ok(ms)) if (140..3000).contains(&ms) => "<delayed>".to_string(),
            _ => value.to_string(),
        };
        format!("{name}={value}")
    };
    let ours = |n: &str| n.starts_with("x-q-") || n.starts_with("x-s-");
    let exercise = |listen: SocketAddr| -> Vec<String> {
        let mut out = Vec::new();
        let o = grpc_call(listen, &CallOpts::new(Call::Unary).timeout_s(5.0));
        assert!(o.ok, "{o:?}");
        for m in o
            .replies
            .first()
            .map(|r| r.metadata.clone())
            .unwrap_or_default()
        {
            let (n, v) = m.split_once('=').unwrap_or((&m, ""));
            if ours(n) {
                out.push(format!("grpc upstream {}", norm(n, v)));
            }
        }
        for (n, v) in &o.initial {
            if ours(n) {
                out.push(format!("grpc client {}", norm(n, v)));
            }
        }
        let o = grpc_call(
            listen,
            &CallOpts::new(Call::Unary)
                .service("nobody.S")
                .timeout_s(5.0),
        );
        assert!(!o.ok, "{o:?}");
        for (n, v) in o.trailers.iter().chain(&o.initial) {
            if ours(n) {
                out.push(format!("grpc local {}", norm(n, v)));
            }
        }
        let r = http1(
            listen,
            "POST /len HTTP/1.1\r\nHost: svc\r\nContent-Length: 7\r\nConnection: close\r\n\r\npayload",
        );
        let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
        for (who, lines) in [
            ("client", head.split("\r\n").skip(1)),
            ("upstream", body.split("\n").skip(1)),
        ] {
            for (n, v) in lines.filter_map(|l| l.trim_end_matches('\r').split_once(": ")) {
                let n = n.to_ascii_lowercase();
                if ours(&n) {
                    out.push(format!("h1 {who} {}", norm(&n, v)));
                }
            }
        }
        out.sort();
        out
    };
    let run = |who: &str| -> Vec<String> {
        let listen = local(free_port());
        let xds = XdsServer::start();
        xds.put(&snapshot(listen)).unwrap();
        let _proxy = envoy_or_ringside(who, xds.addr(), "vsops2", "1");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        wait_listening(listen);
        exercise(listen)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    eprintln!("envoy: {envoy:#?}\nringside: {ringside:#?}");
    // Envoy filled them (the test sees the operators at work).
    for want in [
        "grpc upstream x-q-dur=<short>",
        "grpc upstream x-q-flags=-",
        "grpc client x-s-dur=<delayed>",
        "grpc client x-s-bytes=15/0",
        // The response code (200) as Envoy maps it, before the trailers' grpc-status.
        "grpc client x-s-gs=<Unknown><2>",
        "grpc local x-s-flags=UH",
        "grpc local x-s-gs=<><>",
        "h1 client x-s-bytes=7/0",
        "h1 client x-s-gs=<><>",
    ] {
        assert!(envoy.iter().any(|e| e == want), "{want}: {envoy:#?}");
    }
    assert_eq!(ringside, envoy);
}

/// Route timeouts as Envoy 1.40 applies them, given the same RDS: a `RouteAction` without
/// `timeout` (Envoy's 15 s), `timeout: 0s` (istiod's default: none), `2s`, and `0s` with a
/// `per_try_timeout`. A grpcio call and an HTTP/1.1 request per route (to an HTTP/1.1
/// upstream that names the header as it got it): the upstream sees the same
/// `x-envoy-expected-rq-timeout-ms` (or none) through both proxies.
#[test]
fn route_timeouts_and_the_expected_timeout_header_are_envoys() {
    let grpc = GrpcServer::start(0, "up", &[]);
    let h1_port = free_port();
    let _h1 = Http1Server::start("127.0.0.1", h1_port, "h1");
    const CASES: [&str; 4] = ["none", "zero", "two", "try"];
    let timeout = |case: &str| match case {
        "none" => json!({}),
        "zero" => json!({"timeout": "0s"}),
        "two" => json!({"timeout": "2s"}),
        _ => json!({"timeout": "0s", "retry_policy": {"retry_on": "5xx", "num_retries": 1,
            "per_try_timeout": "1.5s"}}),
    };
    let snapshot = |listen: SocketAddr| {
        let mut routes = Vec::new();
        for (prefix, cluster) in [("/helloworld.Greeter/", "grpc"), ("/header/", "h1up")] {
            for case in CASES {
                routes.push(json!({
                    "match": {"prefix": prefix, "headers": [
                        {"name": "x-t", "string_match": {"exact": case}}]},
                    "route": with(json!({"cluster": cluster}), timeout(case))}));
            }
        }
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http", "codec_type": "AUTO",
            "route_config": {"name": "t", "virtual_hosts": [
                {"name": "svc", "domains": ["*"], "routes": routes}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        });
        let cluster = |name: &str, ep: SocketAddr, h2: bool| {
            let mut c = json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": load_assignment(name, &[ep])});
            if h2 {
                c["typed_extension_protocol_options"] = json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}});
            }
            c
        };
        json!({
            "version": "v1",
            "listeners": [{"name": "t", "address": socket(listen), "traffic_direction": "OUTBOUND",
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": [cluster("grpc", grpc.addr(), true), cluster("h1up", local(h1_port), false)]
        })
    };
    let run = |who: &str| -> Vec<(String, String)> {
        let listen = local(free_port());
        let xds = XdsServer::start();
        xds.put(&snapshot(listen)).unwrap();
        let _proxy = envoy_or_ringside(who, xds.addr(), "timeouts", "1");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        wait_listening(listen);
        let mut seen = Vec::new();
        for case in CASES {
            let out = grpc_call(listen, &CallOpts::new(Call::Unary).meta("x-t", case));
            assert!(out.ok, "{who} {case}: {out:?}");
            let grpc_saw = out
                .replies
                .first()
                .map(|r| r.metadata.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.starts_with("x-envoy-expected-rq-timeout-ms="))
                .collect::<Vec<_>>()
                .join(",");
            let r = http1(
                listen,
                &format!(
                    "GET /header/x-envoy-expected-rq-timeout-ms HTTP/1.1\r\nHost: svc\r\n\
                     x-t: {case}\r\nConnection: close\r\n\r\n"
                ),
            );
            let h1_saw = r
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.trim().rsplit(' ').next().unwrap_or("").to_string())
                .unwrap_or(r);
            seen.push((
                format!("{case} grpc: {grpc_saw}"),
                format!("{case} http1: {h1_saw}"),
            ));
        }
        seen
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    eprintln!("envoy: {envoy:#?}\nringside: {ringside:#?}");
    // Envoy: 15 s without a timeout, none with 0s, the per-try timeout when shorter.
    assert_eq!(
        envoy[0],
        (
            "none grpc: x-envoy-expected-rq-timeout-ms=15000".to_string(),
            "none http1: x-envoy-expected-rq-timeout-ms=15000".to_string()
        )
    );
    assert_eq!(
        envoy[1],
        (
            "zero grpc: ".to_string(),
            "zero http1: x-envoy-expected-rq-timeout-ms=none".to_string()
        )
    );
    assert_eq!(ringside, envoy);
}
