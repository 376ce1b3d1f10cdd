//! istiod's external authorization (an AuthorizationPolicy with `action: CUSTOM` and an
//! `envoyExtAuthzGrpc` provider) through ringside and through Envoy 1.40 given the same
//! resources over ADS: the shadow `envoy.filters.http.rbac` filter whose matched policy enables
//! `envoy.filters.http.ext_authz`, then a DENY rbac filter, as istiod orders them. The shapes
//! are istiod's, from the istio/istio repository (commit 86c9f01f):
//! `pilot/pkg/security/authz/builder/builder.go` (`buildHTTP`: the shadow rbac filter with
//! `shadow_rules_stat_prefix: istio_ext_authz_` in front of each ext_authz filter, policy names
//! `istio-ext-authz-PROVIDER-ns[NS]-policy[NAME]-rule[N]`), `.../builder/extauthz.go`
//! (`generateGRPCConfig`, `generateFilterMatcherForProvider`) and the golden files
//! `.../builder/testdata/http/custom-grpc-provider-out1.yaml` and
//! `custom-grpc-provider-out2.yaml`.
//!
//! The authorization server is tests/peers/grpc/ext_authz_server.py (grpcio, xds-protos), which
//! records every CheckRequest and answers by the request's `x-authz` header. Compared, per
//! grpcio call: the status, message, trailers and response headers the caller got and the
//! metadata the upstream saw (allowed with header changes, denied with and without an
//! http_response, an authorizer error, a timeout, a call the shadow rules do not match, the
//! ordering with the DENY rbac filter after it, the authorizer down with `failure_mode_allow`
//! and with `status_on_error`); the CheckRequests both sent, field by field (ids, timestamps,
//! ports and the request id aside); the `ext_authz` and shadow `rbac` counters.
//!
//! The network filter (istiod's CUSTOM policy on TCP chains: the shadow network rbac filter,
//! `envoy.filters.network.ext_authz`, golden files
//! `.../builder/testdata/tcp/custom-both-http-tcp-out1.yaml` and `out2.yaml`) is compared the
//! same way with raw TCP connections (`istiod_custom_tcp_chain_like_envoy`); istiod's whole
//! sidecar LDS with a CUSTOM policy on its HTTP and TCP inbound chains must be ACKed by both
//! (`istiod_custom_policy_lds_acks_like_envoy`).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::envoy::{envoy_or_ringside, load_assignment, socket};
use common::grpc::{grpc_call, Call, CallOpts, GrpcServer, Peer};
use common::xds::XdsServer;
use common::*;
use serde_json::{json, Value};

/// tests/peers/grpc/ext_authz_server.py, killed on drop.
struct Authz {
    child: Child,
    port: u16,
    record: PathBuf,
}

impl Authz {
    fn start(record: &Path) -> Authz {
        Authz::start_script("ext_authz_server.py", record)
    }

    /// The server of tests/peers/grpc/`script` (the HTTP one: ext_authz_http_server.py).
    fn start_script(script: &str, record: &Path) -> Authz {
        use std::io::BufRead;
        let _ = std::fs::remove_file(record);
        let mut child = Peer::Grpc
            .command(script)
            .args(["--record", &record.display().to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY port=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("authz server: {line:?}"));
        Authz {
            child,
            port,
            record: record.to_path_buf(),
        }
    }

    /// The CheckRequests received so far, in order.
    fn checks(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Authz {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PROVIDER_PREFIX: &str = "istio-ext-authz-default";

/// istiod's shadow rbac filter for CUSTOM policies of provider `default` (golden file
/// custom-grpc-provider-out1.yaml: DENY action, one policy per rule, `url_path` exact).
fn shadow_rbac() -> Value {
    let path = |p: &str| {
        json!({"permissions": [{"and_rules": {"rules": [{"or_rules": {"rules": [
            {"url_path": {"path": {"exact": p}}}]}}]}}],
            "principals": [{"and_ids": {"ids": [{"any": true}]}}]})
    };
    json!({"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "shadow_rules": {"action": "DENY", "policies": {
            format!("{PROVIDER_PREFIX}-ns[foo]-policy[httpbin-1]-rule[0]"): path("/httpbin1"),
            format!("{PROVIDER_PREFIX}-ns[foo]-policy[grpc]-rule[0]"): path("/helloworld.Greeter/SayHello"),
            // HTTP/1.1 callers' paths (tests/peers/http1/peer.py's `/header/NAME`).
            format!("{PROVIDER_PREFIX}-ns[foo]-policy[h1]-rule[0]"): {"permissions": [{"and_rules": {"rules": [
                {"or_rules": {"rules": [{"url_path": {"path": {"prefix": "/header/"}}}]}}]}}],
                "principals": [{"and_ids": {"ids": [{"any": true}]}}]}}},
        "shadow_rules_stat_prefix": "istio_ext_authz_"}})
}

/// istiod's ext_authz filter for an `envoyExtAuthzGrpc` provider (golden file
/// custom-grpc-provider-out2.yaml, `generateGRPCConfig` with the provider's matcher).
fn ext_authz(cluster: &str, fail_open: bool, status: Option<u32>, timeout: &str) -> Value {
    let mut f = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster,
            "authority": "my-custom-ext-authz.foo.svc.cluster.local"}, "timeout": timeout},
        "transport_api_version": "V3",
        "failure_mode_allow": fail_open,
        "filter_enabled_metadata": {"filter": "envoy.filters.http.rbac",
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": PROVIDER_PREFIX}}}});
    if fail_open {
        f["failure_mode_allow_header_add"] = json!(true);
    }
    if let Some(s) = status {
        f["status_on_error"] = json!({ "code": s });
    }
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": f})
}

/// istiod's jwt_authn filter for a RequestAuthentication (`convertToEnvoyJwtConfig`: the token
/// optional, a bad one refused), on a fresh EC key; istiod puts it after the CUSTOM filters
/// (pilot/pkg/networking/core/listener_builder.go: CUSTOM authz, authn, then authz).
fn jwt_authn() -> Value {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
    fn b64(b: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..=c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let p = key.public_key().as_ref();
    let jwks = json!({"keys": [{"kty": "EC", "kid": "e1", "crv": "P-256", "alg": "ES256",
        "x": b64(&p[1..33]), "y": b64(&p[33..65])}]})
    .to_string();
    json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"origins-0": {"issuer": "https://issuer.test",
            "local_jwks": {"inline_string": jwks}, "payload_in_metadata": "payload"}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "origins-0"}, {"allow_missing": {}}]}}}]}})
}

/// istiod's DENY filter for `when: request.headers[x-deny-rbac]` (after the CUSTOM ones).
fn deny_rbac() -> Value {
    json!({"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "DENY", "policies": {"ns[foo]-policy[deny]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [{"any": true}]}}],
            "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [
                {"header": {"name": "x-deny-rbac", "present_match": true}}]}}]}}]}}}}})
}

fn listener(name: &str, addr: SocketAddr, authz: Value) -> Value {
    listener_with(
        name,
        addr,
        vec![shadow_rbac(), authz, jwt_authn(), deny_rbac()],
    )
}

/// A listener whose HTTP filters are `filters`, then the router.
fn listener_with(name: &str, addr: SocketAddr, mut filters: Vec<Value>) -> Value {
    filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name, "codec_type": "AUTO",
        "route_config": {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/helloworld.Greeter/"}, "route": {"cluster": "grpc", "timeout": "5s"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "h1", "timeout": "5s"}}]}]},
        "http_filters": filters
    });
    json!({"name": name, "address": socket(addr), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]})
}

fn h2_cluster(name: &str, at: SocketAddr) -> Value {
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": load_assignment(name, &[at]),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}})
}

/// A: the authorizer up, errors answered 403 (istiod's `statusOnError: "403"`), timeout
/// 0.5 s; B: the authorizer down, `failure_mode_allow` (istiod's `failOpen`); C: the
/// authorizer down, `status_on_error` 503.
fn snapshot(l: [SocketAddr; 3], grpc: SocketAddr, authz: SocketAddr, down: SocketAddr) -> Value {
    json!({
        "version": "v1",
        "listeners": [
            listener("in_a", l[0], ext_authz("outbound|9000||authz", false, Some(403), "0.5s")),
            listener("in_b", l[1], ext_authz("outbound|9000||down", true, None, "0.5s")),
            listener("in_c", l[2], ext_authz("outbound|9000||down", false, Some(503), "0.5s"))],
        "clusters": [h2_cluster("grpc", grpc), h2_cluster("outbound|9000||authz", authz),
            h2_cluster("outbound|9000||down", down), h1_cluster("h1", down)]
    })
}

/// A grpcio call's outcome as two proxies' are compared: code, message, trailers and response
/// headers (without `date`, `server` and the upstream's timing), the `x-` metadata the
/// upstream saw (the request id aside).
fn grpc(target: SocketAddr, call: Call, meta: &[(&str, &str)]) -> String {
    let mut opts = CallOpts::new(call).authority("svc").timeout_s(5.0);
    for (k, v) in meta {
        opts = opts.meta(k, v);
    }
    let o = grpc_call(target, &opts);
    let clean = |mut m: std::collections::BTreeMap<String, String>| {
        for k in ["date", "server", "x-envoy-upstream-service-time"] {
            m.remove(k);
        }
        m
    };
    let seen: Vec<String> = o
        .replies
        .iter()
        .flat_map(|r| r.metadata.clone())
        .filter(|m| !m.starts_with("x-request-id=") && !m.starts_with("x-forwarded-proto="))
        .collect();
    format!(
        "{} {:?} trailers={:?} headers={:?} seen={seen:?}",
        o.code,
        o.details,
        clean(o.trailers.clone()),
        clean(o.initial.clone())
    )
}

/// A CheckRequest with what differs between two runs by nature replaced: the time, the stream
/// id, the request id, ports (the listener's port is per run), `grpc-timeout` (the caller's
/// deadline as time passes).
fn normalized(mut c: Value) -> Value {
    let a = &mut c["attributes"];
    a["request"]["time"] = json!("-");
    let http = &mut a["request"]["http"];
    http["id"] = json!("-");
    for k in ["x-request-id", "grpc-timeout"] {
        if http["headers"].get(k).is_some() {
            http["headers"][k] = json!("-");
        }
    }
    for peer in ["source", "destination"] {
        if a[peer]["address"]["socket_address"]
            .get("port_value")
            .is_some()
        {
            a[peer]["address"]["socket_address"]["port_value"] = json!("-");
        }
    }
    c
}

/// A call: the listener (index), the method, its metadata.
type Case = (usize, Call, Vec<(&'static str, &'static str)>);

#[test]
fn istiod_custom_grpc_provider_like_envoy() {
    let server = GrpcServer::start(0, "G", &[]);
    // Nothing listens there: the authorizer of listeners B and C is down.
    let down = local(free_port());
    let dir = TempDir::new("ext-authz");
    let a = |m: &'static str| ("x-authz", m);
    let cases: Vec<Case> = vec![
        (
            0,
            Call::Unary,
            vec![a("allow"), ("x-remove-me", "bye"), ("x-authz-set", "old")],
        ),
        (0, Call::Unary, vec![a("deny")]),
        (0, Call::Unary, vec![a("deny-plain")]),
        (0, Call::Unary, vec![a("error")]),
        (0, Call::Unary, vec![a("slow")]),
        (0, Call::Unary, vec![("x-other", "1")]),
        // Not matched by the shadow rules (another method): never checked.
        (0, Call::ServerStream, vec![a("deny")]),
        // The ext_authz filter runs before the DENY rbac filter after it.
        (0, Call::Unary, vec![a("deny"), ("x-deny-rbac", "1")]),
        (0, Call::Unary, vec![a("allow"), ("x-deny-rbac", "1")]),
        // istiod's order: ext_authz before jwt_authn (the authorizer sees the token; its
        // denial comes first).
        (
            0,
            Call::Unary,
            vec![a("allow"), ("authorization", "Bearer abc")],
        ),
        (
            0,
            Call::Unary,
            vec![a("deny"), ("authorization", "Bearer abc")],
        ),
        (1, Call::Unary, vec![a("deny")]),
        (2, Call::Unary, vec![a("allow")]),
    ];
    let run = |who: &str| {
        let authz = Authz::start(&dir.0.join(format!("{who}.jsonl")));
        let listen = [local(free_port()), local(free_port()), local(free_port())];
        let xds = XdsServer::start();
        xds.put(&snapshot(listen, server.addr(), local(authz.port), down))
            .unwrap();
        let proxy = envoy_or_ringside(who, xds.addr(), "ext-authz", "1");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        for l in listen {
            wait_listening(l);
        }
        let answers: Vec<String> = cases
            .iter()
            .map(|(l, call, meta)| grpc(listen[*l], *call, meta))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while authz.checks().len() < 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let checks: Vec<Value> = authz.checks().into_iter().map(normalized).collect();
        let stat = |name: &str| -> i64 {
            match proxy.downcast_ref::<Ringside>() {
                Some(r) => r.stat_value(name).unwrap_or(-1),
                None => proxy
                    .downcast_ref::<common::envoy::Envoy>()
                    .map_or(-1, |e| e.stat(name) as i64),
            }
        };
        let mut stats = Vec::new();
        for l in ["in_a", "in_b", "in_c"] {
            for s in [
                "ext_authz.ok",
                "ext_authz.denied",
                "ext_authz.error",
                "ext_authz.failure_mode_allowed",
                "ext_authz.disabled",
                "rbac.istio_ext_authz_.shadow_allowed",
                "rbac.istio_ext_authz_.shadow_denied",
                "rbac.denied",
            ] {
                stats.push((format!("http.{l}.{s}"), stat(&format!("http.{l}.{s}"))));
            }
        }
        // A check is a request to the authorizer's cluster.
        let checks_sent = "cluster.outbound|9000||authz.upstream_rq_total";
        stats.push((checks_sent.to_string(), stat(checks_sent)));
        eprintln!("{who}: {answers:#?}\n{checks:#?}\n{stats:?}");
        drop(proxy);
        (answers, checks, stats)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    for (i, (r, e)) in ringside.0.iter().zip(&envoy.0).enumerate() {
        assert_eq!(
            r, e,
            "call {i} {:?}: ringside (left) vs Envoy (right)",
            cases[i]
        );
    }
    assert_eq!(
        ringside.1.len(),
        envoy.1.len(),
        "CheckRequests sent: ringside (left) vs Envoy (right)"
    );
    for (i, (r, e)) in ringside.1.iter().zip(&envoy.1).enumerate() {
        assert_eq!(r, e, "CheckRequest {i}: ringside (left) vs Envoy (right)");
    }
    assert_eq!(
        ringside.2, envoy.2,
        "counters, ringside (left) vs Envoy (right)"
    );
    // What the comparison rests on: the authorizer's answers took effect.
    assert!(
        envoy.0[0].starts_with("OK ") && envoy.0[0].contains("x-authz-added=yes"),
        "{}",
        envoy.0[0]
    );
    assert!(envoy.0[1].starts_with("UNAUTHENTICATED "), "{}", envoy.0[1]);
    assert!(envoy.0[6].starts_with("OK "), "{}", envoy.0[6]);
    assert!(
        envoy.0[9].starts_with("UNAUTHENTICATED ") && envoy.0[9].contains("Jwt"),
        "{}",
        envoy.0[9]
    );
    assert!(envoy.0[10].contains("denied by test"), "{}", envoy.0[10]);
    assert!(
        envoy.0[11].contains("x-envoy-auth-failure-mode-allowed=true"),
        "{}",
        envoy.0[11]
    );
}

// === The network filter (istiod's CUSTOM policy on TCP chains) ===

/// istiod's shadow network rbac filter in front of the network ext_authz filter (golden file
/// `pilot/pkg/security/authz/builder/testdata/tcp/custom-both-http-tcp-out1.yaml`: DENY
/// action, `stat_prefix: tcp.`, `shadow_rules_stat_prefix: istio_ext_authz_`), with its
/// rules 1 and 2 as there (a caller 1.2.3.4; port 80 from it) and a rule 0 whose principals
/// leave out a caller 127.0.0.9 (the `notId` / `directRemoteIp` of rule 5 there), so that one
/// caller is not checked.
fn tcp_shadow_rbac() -> Value {
    let ip = |a: &str| json!({"direct_remote_ip": {"address_prefix": a, "prefix_len": 32}});
    let policy = |name: &str| format!("{PROVIDER_PREFIX}-ns[foo]-policy[tcp-deny]-{name}");
    json!({"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "shadow_rules": {"action": "DENY", "policies": {
            policy("rule[0]"): {
                "permissions": [{"and_rules": {"rules": [{"any": true}]}}],
                "principals": [{"and_ids": {"ids": [
                    {"not_id": {"or_ids": {"ids": [ip("127.0.0.9")]}}}]}}]},
            policy("rule[1]"): {
                "permissions": [{"and_rules": {"rules": [{"any": true}]}}],
                "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [ip("1.2.3.4")]}}]}}]},
            policy("rule[2]"): {
                "permissions": [{"and_rules": {"rules": [
                    {"or_rules": {"rules": [{"destination_port": 80}]}}]}}],
                "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [ip("1.2.3.4")]}}]}}]}}},
        "shadow_rules_stat_prefix": "istio_ext_authz_",
        "stat_prefix": "tcp."}})
}

/// istiod's network ext_authz filter (golden file `.../testdata/tcp/custom-both-http-tcp-out2.yaml`,
/// `generateGRPCConfig`'s `tcp`).
fn tcp_ext_authz(cluster: &str, fail_open: bool, timeout: &str) -> Value {
    json!({"name": "envoy.filters.network.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
        "failure_mode_allow": fail_open,
        "filter_enabled_metadata": {"filter": "envoy.filters.network.rbac",
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": PROVIDER_PREFIX}}},
        "grpc_service": {"envoy_grpc": {"authority": "my-custom-ext-authz.foo.svc.cluster.local",
            "cluster_name": cluster}, "timeout": timeout},
        "stat_prefix": "tcp.",
        "transport_api_version": "V3"}})
}

/// An inbound TCP chain as istiod builds it with a CUSTOM policy
/// (`pilot/pkg/networking/core/networkfilter.go`, `buildCompleteNetworkFilters`: the CUSTOM
/// filters first, then the DENY / ALLOW rbac filters, then tcp_proxy); the DENY filter here
/// denies a caller 127.0.0.6.
fn tcp_listener(name: &str, addr: SocketAddr, authz: Value) -> Value {
    let deny = json!({"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "rules": {"action": "DENY", "policies": {"ns[foo]-policy[deny]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [{"any": true}]}}],
            "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [
                {"direct_remote_ip": {"address_prefix": "127.0.0.6", "prefix_len": 32}}]}}]}}]}}},
        "stat_prefix": "tcp."}});
    json!({"name": name, "address": socket(addr), "filter_chains": [{"filters": [
        tcp_shadow_rbac(), authz, deny,
        {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "inbound|9000||", "cluster": "inbound|9000||"}}]}]})
}

/// An echo upstream that counts the connections it accepted.
fn counting_echo() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let n = std::sync::Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 4096];
                while let Ok(k) = c.read(&mut buf) {
                    if k == 0 || c.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, n)
}

/// A raw TCP client from `source` (a loopback address the authorizer answers by): sends
/// `ping`, then reads: `echoed` when it comes back, `closed` when the connection ends first.
fn tcp_outcome(target: SocketAddr, source: &str) -> String {
    use std::io::{Read, Write};
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    if let Err(e) = s.connect(&target.into()) {
        return format!("connect failed: {e}");
    }
    let mut c: std::net::TcpStream = s.into();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = c.write_all(b"ping");
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() >= 4 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return "open".into(),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return "open".into(),
            Err(_) => break,
        }
    }
    match got.as_slice() {
        b"ping" => "echoed".into(),
        [] => "closed".into(),
        other => format!("got {:?}", String::from_utf8_lossy(other)),
    }
}

/// istiod's CUSTOM policy on an inbound TCP chain (shadow network rbac, network ext_authz,
/// a DENY rbac filter, tcp_proxy) through Envoy 1.40 and ringside given the same resources:
/// per raw TCP connection (the authorizer answers by the caller's source address) what the
/// caller saw, the CheckRequests both sent field by field (ports and the time aside), the
/// counters; and the upstream's connections: ringside connects upstream only after the answer
/// (Envoy's tcp_proxy connects at once and its ext_authz filter checks on the first bytes).
/// A: the authorizer up, fail closed, timeout 0.5 s; B: the authorizer down,
/// `failure_mode_allow`; C: down, fail closed.
#[test]
fn istiod_custom_tcp_chain_like_envoy() {
    use std::sync::atomic::Ordering;
    let down = local(free_port());
    let dir = TempDir::new("ext-authz-tcp");
    // (listener, source address)
    let cases: [(usize, &str); 8] = [
        (0, "127.0.0.2"), // allow
        (0, "127.0.0.3"), // deny
        (0, "127.0.0.4"), // a gRPC error
        (0, "127.0.0.5"), // slower than the timeout
        (0, "127.0.0.9"), // not matched by the shadow rules: not checked
        (0, "127.0.0.6"), // allowed by the authorizer, denied by the DENY rbac after it
        (1, "127.0.0.3"), // authorizer down, failure_mode_allow
        (2, "127.0.0.2"), // authorizer down, fail closed
    ];
    let run = |who: &str| {
        let (echo, accepted) = counting_echo();
        let authz = Authz::start(&dir.0.join(format!("{who}.jsonl")));
        let listen = [local(free_port()), local(free_port()), local(free_port())];
        let xds = XdsServer::start();
        let up = |c: &str, fo: bool| tcp_ext_authz(c, fo, "0.5s");
        xds.put(&json!({
            "version": "v1",
            "listeners": [
                tcp_listener("tcp_a", listen[0], up("outbound|9000||authz", false)),
                tcp_listener("tcp_b", listen[1], up("outbound|9000||down", true)),
                tcp_listener("tcp_c", listen[2], up("outbound|9000||down", false))],
            "clusters": [
                {"name": "inbound|9000||", "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": load_assignment("inbound|9000||", &[echo])},
                h2_cluster("outbound|9000||authz", local(authz.port)),
                h2_cluster("outbound|9000||down", down)]
        }))
        .unwrap();
        let proxy = envoy_or_ringside(who, xds.addr(), "ext-authz-tcp", "1");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        for l in listen {
            wait_listening(l);
        }
        // wait_listening's connections: each proxy has done with them (ringside checks them
        // at once, Envoy never: they send nothing), then what they left is the baseline.
        std::thread::sleep(Duration::from_millis(700));
        let stats_text = || match proxy.downcast_ref::<Ringside>() {
            Some(r) => r.get("/stats").1,
            None => proxy
                .downcast_ref::<common::envoy::Envoy>()
                .unwrap()
                .get("/stats"),
        };
        let counters = |text: String| -> BTreeMap<String, i64> {
            text.lines()
                .filter(|l| l.starts_with("ext_authz.") || l.starts_with("tcp.rbac."))
                .filter_map(|l| {
                    let (k, v) = l.split_once(": ")?;
                    Some((k.to_string(), v.trim().parse().ok()?))
                })
                .collect()
        };
        let base = counters(stats_text());
        let checked_before = authz.checks().len();
        let mut outcomes = Vec::new();
        for (l, src) in cases {
            let before = accepted.load(Ordering::SeqCst);
            let o = tcp_outcome(listen[l], src);
            std::thread::sleep(Duration::from_millis(100));
            outcomes.push((o, accepted.load(Ordering::SeqCst) - before));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while authz.checks().len() < checked_before + 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let checks: Vec<Value> = authz
            .checks()
            .into_iter()
            .skip(checked_before)
            .map(normalized)
            .collect();
        // What the cases added.
        let stats: Vec<String> = counters(stats_text())
            .into_iter()
            .map(|(k, v)| format!("{k}: {}", v - base.get(&k).copied().unwrap_or(0)))
            .collect();
        eprintln!("{who}: {outcomes:?}\n{checks:#?}\n{stats:#?}");
        drop(proxy);
        (outcomes, checks, stats)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    for (i, (r, e)) in ringside.0.iter().zip(&envoy.0).enumerate() {
        assert_eq!(
            r.0, e.0,
            "connection {i} {:?}: ringside (left) vs Envoy (right)",
            cases[i]
        );
        match r.0.as_str() {
            // Let through: one upstream connection each.
            "echoed" => assert_eq!((r.1, e.1), (1, 1), "connection {i} {:?}", cases[i]),
            // Closed: never an upstream connection from ringside.
            _ => assert_eq!(r.1, 0, "connection {i} {:?}: upstream connected", cases[i]),
        }
    }
    assert_eq!(
        ringside.1.len(),
        envoy.1.len(),
        "CheckRequests sent: ringside (left) vs Envoy (right)"
    );
    for (i, (r, e)) in ringside.1.iter().zip(&envoy.1).enumerate() {
        assert_eq!(r, e, "CheckRequest {i}: ringside (left) vs Envoy (right)");
    }
    // `disabled`: Envoy counts every read of a connection it does not check (here the
    // bytes, then the end), ringside the connection once (docs/xds.md).
    let disabled = |v: &[String]| -> (Vec<String>, i64) {
        let (d, rest): (Vec<&String>, Vec<&String>) = v
            .iter()
            .partition(|l| l.starts_with("ext_authz.tcp..disabled: "));
        let n = d
            .first()
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1);
        (rest.into_iter().cloned().collect(), n)
    };
    let (r, rd) = disabled(&ringside.2);
    let (e, ed) = disabled(&envoy.2);
    assert_eq!(r, e, "counters, ringside (left) vs Envoy (right)");
    assert!(rd == 1 && ed >= 1, "disabled: ringside {rd}, Envoy {ed}");
    // What the comparison rests on: the answers took effect.
    let seen: Vec<&str> = envoy.0.iter().map(|o| o.0.as_str()).collect();
    assert_eq!(
        seen,
        ["echoed", "closed", "closed", "closed", "echoed", "closed", "echoed", "closed"],
        "Envoy"
    );
}

// === istiod's whole inbound LDS with a CUSTOM policy ===

/// `dataplane/tests/fixtures/istio/NAME.json` (istiod's output for a sidecar; see the README
/// there).
fn istio_fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/istio/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// What only istio-proxy has (as tests/istio.rs strips it for Envoy): filters whose config is
/// an Istio message, a TypedStruct of one, or a Wasm null-VM plugin; SDS fetches get a short
/// timeout (no SDS server here).
fn strip_istio_only(v: &mut Value) {
    fn istio_only(filter: &Value) -> bool {
        let tc = &filter["typed_config"];
        let ty = tc["@type"].as_str().unwrap_or("");
        let inner = tc["type_url"].as_str().unwrap_or("");
        ty.ends_with("/stats.PluginConfig")
            || ty.ends_with("/envoy.tcp.metadataexchange.config.MetadataExchange")
            || ty.contains("/istio.")
            || (ty.ends_with("TypedStruct")
                && (inner.contains("/io.istio.") || inner.contains("metadataexchange")))
            || (ty.ends_with("wasm.v3.Wasm")
                && tc["config"]["vm_config"]["runtime"] == "envoy.wasm.runtime.null")
    }
    match v {
        Value::Object(o) => {
            if let Some(sds) = o.get_mut("sds_config") {
                sds["initial_fetch_timeout"] = json!("0.1s");
            }
            for key in ["filters", "http_filters"] {
                if let Some(Value::Array(fs)) = o.get_mut(key) {
                    fs.retain(|f| !istio_only(f));
                }
            }
            o.values_mut().for_each(strip_istio_only);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_istio_only),
        _ => {}
    }
}

/// istiod's CUSTOM policy with a gRPC provider on every chain of `virtualInbound` but the
/// blackhole one: on TCP chains the shadow network rbac and network ext_authz filters of
/// `testdata/tcp/custom-both-http-tcp-out1.yaml` / `out2.yaml` (verbatim: rules 0 to 5,
/// timeout 0.002s, fail open) after Istio's authn / metadata-exchange filters
/// (`buildCompleteNetworkFilters`); on HTTP chains the HTTP pair of
/// `testdata/http/custom-grpc-provider-out1.yaml` / `out2.yaml` after the metadata exchange.
fn with_custom_policy(snapshot: &mut Value) {
    let ip = |k: &str, a: &str, len: u32| json!({k: {"address_prefix": a, "prefix_len": len}});
    let port = |p: u32| json!({"or_rules": {"rules": [{"destination_port": p}]}});
    let any_rule = json!({"and_rules": {"rules": [{"any": true}]}});
    let any_id = json!({"and_ids": {"ids": [{"any": true}]}});
    let direct = json!({"or_ids": {"ids": [ip("direct_remote_ip", "1.2.3.4", 32)]}});
    let policy = |n: u32| format!("{PROVIDER_PREFIX}-ns[foo]-policy[httpbin-deny]-rule[{n}]");
    let shadow = json!({"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "shadow_rules": {"action": "DENY", "policies": {
            policy(0): {"permissions": [any_rule], "principals": [any_id]},
            policy(1): {"permissions": [any_rule], "principals": [{"and_ids": {"ids": [direct]}}]},
            policy(2): {"permissions": [{"and_rules": {"rules": [port(80)]}}],
                        "principals": [{"and_ids": {"ids": [direct]}}]},
            policy(3): {"permissions": [any_rule], "principals": [any_id]},
            policy(4): {"permissions": [{"and_rules": {"rules": [port(80)]}}], "principals": [any_id]},
            policy(5): {
                "permissions": [{"and_rules": {"rules": [port(80), {"not_rule": port(8000)}]}}],
                "principals": [{"and_ids": {"ids": [
                    {"or_ids": {"ids": [ip("remote_ip", "172.18.4.0", 22)]}},
                    {"not_id": {"or_ids": {"ids": [ip("remote_ip", "192.168.244.139", 32)]}}},
                    direct,
                    {"not_id": {"or_ids": {"ids": [ip("direct_remote_ip", "9.0.0.1", 32)]}}}]}}]}}},
        "shadow_rules_stat_prefix": "istio_ext_authz_",
        "stat_prefix": "tcp."}});
    let cluster = "outbound|9000||my-custom-ext-authz.foo.svc.cluster.local";
    let tcp = tcp_ext_authz(cluster, true, "0.002s");
    let vi = snapshot["listeners"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l["name"] == "virtualInbound")
        .unwrap();
    let after_istio = |fs: &Vec<Value>| {
        fs.iter()
            .position(|f| {
                !["istio_authn", "istio.metadata_exchange"].contains(&f["name"].as_str().unwrap())
            })
            .unwrap_or(fs.len())
    };
    let (mut tcp_chains, mut http_chains) = (0, 0);
    for c in vi["filter_chains"].as_array_mut().unwrap() {
        if c.to_string().contains("BlackHoleCluster") {
            continue;
        }
        let fs = c["filters"].as_array_mut().unwrap();
        let last = fs.last_mut().unwrap();
        if last["name"] == "envoy.filters.network.tcp_proxy" {
            let at = after_istio(fs);
            fs.splice(at..at, [shadow.clone(), tcp.clone()]);
            tcp_chains += 1;
        } else {
            let hs = last["typed_config"]["http_filters"].as_array_mut().unwrap();
            let at = after_istio(hs);
            hs.splice(
                at..at,
                [
                    shadow_rbac(),
                    ext_authz(cluster, false, Some(403), "0.002s"),
                ],
            );
            http_chains += 1;
        }
    }
    assert!(
        tcp_chains >= 3 && http_chains >= 4,
        "{tcp_chains} {http_chains}"
    );
    snapshot["clusters"]
        .as_array_mut()
        .unwrap()
        .push(h2_cluster(cluster, local(1)));
}

/// istiod's whole LDS and CDS for a stock sidecar (`fixtures/istio/stock.json`) with a CUSTOM
/// policy on its inbound listener, HTTP and TCP chains: Envoy 1.40 and ringside both ACK it.
#[test]
fn istiod_custom_policy_lds_acks_like_envoy() {
    let mut fx = istio_fixture("stock");
    with_custom_policy(&mut fx);
    // Listeners that bind move to loopback and free ports, a chain matching the listener's
    // own port with it (as tests/istio.rs moves them).
    for l in fx["listeners"].as_array_mut().unwrap() {
        if l["bind_to_port"] == false {
            continue;
        }
        let old = l["address"]["socket_address"]["port_value"].clone();
        let port = free_port();
        l["address"] = socket(local(port));
        for c in l["filter_chains"].as_array_mut().into_iter().flatten() {
            if c["filter_chain_match"]["destination_port"] == old {
                c["filter_chain_match"]["destination_port"] = json!(port);
            }
        }
    }
    fx["version"] = json!("custom");
    let node = "sidecar~10.244.0.7~reviews-v1.default~default.svc.cluster.local";
    for who in ["envoy", "ringside"] {
        let mut snap = fx.clone();
        let xds = XdsServer::start();
        let admin = local(free_port());
        let _proxy: Box<dyn std::any::Any> = if who == "envoy" {
            strip_istio_only(&mut snap);
            xds.put(&snap).unwrap();
            let mut boot =
                common::envoy::bootstrap(admin, xds.addr(), common::envoy::Ads::Sotw, node);
            boot["static_resources"]["clusters"]
                .as_array_mut()
                .unwrap()
                .push(h2_cluster("sds-grpc", local(1)));
            Box::new(common::envoy::Envoy::start(&boot, admin))
        } else {
            xds.put(&snap).unwrap();
            let cfg = format!(
                "admin:\n  address: {admin}\n\
                 sds:\n  - {{name: sds-grpc, path: /nonexistent/workload-spiffe-uds/socket}}\n\
                 xds:\n  server: {}\n  node_id: {node}\n  node_cluster: t\n  mode: sotw\n  \
                 initial_fetch_timeout_ms: 200\n",
                xds.addr()
            );
            Box::new(Ringside::start(&cfg, admin, &["--shards", "1"]))
        };
        for ty in ["cds", "lds"] {
            let answer = xds.wait_request(Duration::from_secs(15), ty, |r| {
                r["type"] == ty
                    && (r["ack"] == false || (r["ack"] == true && r["acked_version"] == "custom"))
            });
            assert_eq!(answer["ack"], true, "{who} {ty}: {answer}");
        }
    }
}

// === An HTTP authorization service (istiod's `envoyExtAuthzHttp` provider) ===

/// istiod's ext_authz filter for an `envoyExtAuthzHttp` provider (golden file
/// `pilot/pkg/security/authz/builder/testdata/http/custom-http-provider-out2.yaml`, istio/istio
/// commit 63a5e452: `allowed_headers`, `headers_to_add`, the response's allowed headers with
/// `ignore_case`, `path_prefix`, `clear_route_cache`), its `withRequestBody` left out (not
/// supported yet), `x-authz` added to the request headers it includes; `full: false` is the
/// bare provider (no header lists: Envoy's defaults).
fn http_ext_authz(cluster: &str, full: bool, fail_open: bool, status: u32, timeout: &str) -> Value {
    let names = |first: &str| {
        json!({"patterns": [{"exact": first, "ignore_case": true},
            {"prefix": "x-prefix-", "ignore_case": true},
            {"suffix": "-suffix", "ignore_case": true}]})
    };
    let mut service = json!({"server_uri": {"uri": "http://my-custom-ext-authz.foo.svc.cluster.local",
        "cluster": cluster, "timeout": timeout}});
    let mut f = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": fail_open,
        "clear_route_cache": true,
        "status_on_error": {"code": status},
        "filter_enabled_metadata": {"filter": "envoy.filters.http.rbac",
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": PROVIDER_PREFIX}}}});
    if full {
        f["allowed_headers"] = json!({"patterns": [{"exact": "X-Authz", "ignore_case": true},
            {"exact": "x-custom-id", "ignore_case": true},
            {"prefix": "x-prefix-", "ignore_case": true},
            {"suffix": "-suffix", "ignore_case": true}]});
        service["path_prefix"] = json!("/check");
        service["authorization_request"] = json!({"headers_to_add": [
            {"key": "x-header-1", "value": "value-1"}, {"key": "x-header-2", "value": "value-2"}]});
        service["authorization_response"] = json!({
            "allowed_client_headers": names("Set-cookie"),
            "allowed_client_headers_on_success": names("Set-cookie"),
            "allowed_upstream_headers": names("Authorization")});
    } else {
        // The bare provider tells the authorizer of Envoy's defaults only: x-authz by the
        // deprecated field, as older istiod versions wrote `includeHeadersInCheck`.
        service["authorization_request"] =
            json!({"allowed_headers": {"patterns": [{"exact": "x-authz"}]}});
    }
    f["http_service"] = service;
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": f})
}

/// istiod's CUSTOM filters (the shadow rbac filter, ext_authz) and a DENY rbac filter.
fn http_listener(name: &str, addr: SocketAddr, authz: Value) -> Value {
    listener_with(name, addr, vec![shadow_rbac(), authz, deny_rbac()])
}

fn h1_cluster(name: &str, at: SocketAddr) -> Value {
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": load_assignment(name, &[at])})
}

/// What an HTTP authorizer saw, as two runs are compared: ports (of `host`), the request id
/// and `x-envoy-expected-rq-timeout-ms` aside.
fn http_normalized(mut c: Value) -> Value {
    if let Some(h) = c["headers"].as_object_mut() {
        for k in ["x-request-id"] {
            if h.contains_key(k) {
                h.insert(k.into(), json!("-"));
            }
        }
    }
    c
}

/// istiod's CUSTOM policy with an `envoyExtAuthzHttp` provider through Envoy 1.40 and
/// ringside given the same resources: per grpcio call what the caller got and the upstream
/// saw, what the authorization server saw (method, path, headers, body) of each check, and
/// the counters. A: the full provider (istiod's golden file), fail closed, 0.5 s; B: the
/// authorizer down, `failure_mode_allow`; C: the bare provider (Envoy's default header lists),
/// `status_on_error` 503.
#[test]
fn istiod_custom_http_provider_like_envoy() {
    let server = GrpcServer::start(0, "G", &[]);
    let down = local(free_port());
    let dir = TempDir::new("ext-authz-http");
    let a = |m: &'static str| ("x-authz", m);
    let cases: Vec<Case> = vec![
        (
            0,
            Call::Unary,
            vec![
                a("allow"),
                ("x-remove-me", "bye"),
                ("authorization", "Bearer orig"),
                ("x-prefix-in", "p"),
                ("x-custom-id", "c1"),
                ("x-not-sent", "n"),
            ],
        ),
        (0, Call::Unary, vec![a("deny"), ("x-my-suffix", "s")]),
        (0, Call::Unary, vec![a("error")]),
        (0, Call::Unary, vec![a("slow")]),
        (0, Call::Unary, vec![a("close")]),
        (0, Call::Unary, vec![("x-other", "1")]),
        // Not matched by the shadow rules: never checked.
        (0, Call::ServerStream, vec![a("deny")]),
        (1, Call::Unary, vec![a("deny")]),
        (2, Call::Unary, vec![a("deny"), ("x-custom-id", "c2")]),
        (2, Call::Unary, vec![a("error")]),
        (
            2,
            Call::Unary,
            vec![a("allow"), ("authorization", "Bearer orig")],
        ),
    ];
    let run = |who: &str| {
        let authz = Authz::start_script(
            "ext_authz_http_server.py",
            &dir.0.join(format!("{who}.jsonl")),
        );
        let listen = [local(free_port()), local(free_port()), local(free_port())];
        let xds = XdsServer::start();
        let cluster = "outbound|8000||my-custom-ext-authz.foo.svc.cluster.local";
        xds.put(&json!({
            "version": "v1",
            "listeners": [
                http_listener("in_a", listen[0], http_ext_authz(cluster, true, false, 403, "0.5s")),
                http_listener("in_b", listen[1], http_ext_authz("outbound|8000||down", true, true, 403, "0.5s")),
                http_listener("in_c", listen[2], http_ext_authz(cluster, false, false, 503, "0.5s"))],
            "clusters": [h2_cluster("grpc", server.addr()), h1_cluster(cluster, local(authz.port)),
                h1_cluster("outbound|8000||down", down), h1_cluster("h1", down)]
        }))
        .unwrap();
        let proxy = envoy_or_ringside(who, xds.addr(), "ext-authz-http", "1");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        for l in listen {
            wait_listening(l);
        }
        let answers: Vec<String> = cases
            .iter()
            .map(|(l, call, meta)| grpc(listen[*l], *call, meta))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while authz.checks().len() < 9 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let checks: Vec<Value> = authz.checks().into_iter().map(http_normalized).collect();
        let stat = |name: &str| -> i64 {
            match proxy.downcast_ref::<Ringside>() {
                Some(r) => r.stat_value(name).unwrap_or(-1),
                None => proxy
                    .downcast_ref::<common::envoy::Envoy>()
                    .map_or(-1, |e| e.stat(name) as i64),
            }
        };
        let mut stats = Vec::new();
        for l in ["in_a", "in_b", "in_c"] {
            for s in [
                "ext_authz.ok",
                "ext_authz.denied",
                "ext_authz.error",
                "ext_authz.failure_mode_allowed",
                "ext_authz.disabled",
            ] {
                stats.push((format!("http.{l}.{s}"), stat(&format!("http.{l}.{s}"))));
            }
        }
        // A check is a request to the authorizer's cluster.
        let checks_sent = format!("cluster.{cluster}.upstream_rq_total");
        stats.push((checks_sent.clone(), stat(&checks_sent)));
        eprintln!("{who}: {answers:#?}\n{checks:#?}\n{stats:?}");
        drop(proxy);
        (answers, checks, stats)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    for (i, (r, e)) in ringside.0.iter().zip(&envoy.0).enumerate() {
        assert_eq!(
            r, e,
            "call {i} {:?}: ringside (left) vs Envoy (right)",
            cases[i]
        );
    }
    assert_eq!(
        ringside.1.len(),
        envoy.1.len(),
        "checks sent: ringside (left) vs Envoy (right)"
    );
    for (i, (r, e)) in ringside.1.iter().zip(&envoy.1).enumerate() {
        assert_eq!(r, e, "check {i}: ringside (left) vs Envoy (right)");
    }
    assert_eq!(
        ringside.2, envoy.2,
        "counters, ringside (left) vs Envoy (right)"
    );
    // What the comparison rests on: the authorizer's answers took effect.
    assert!(
        envoy.0[0].starts_with("OK ") && envoy.0[0].contains("x-prefix-up=1"),
        "{}",
        envoy.0[0]
    );
    assert!(envoy.0[1].starts_with("UNAUTHENTICATED "), "{}", envoy.0[1]);
    assert!(envoy.0[6].starts_with("OK "), "{}", envoy.0[6]);
    assert!(
        envoy.2.last().is_some_and(|(_, n)| *n >= 6),
        "Envoy's checks on the authorizer's cluster: {:?}",
        envoy.2.last()
    );
}

// === HTTP/1.1 callers ===

/// Python's http.client (tests/peers/http1/peer.py) sending `requests` on one keep-alive
/// connection to `target`: per request `STATUS BODY` and the response fields its `show` names.
/// An HTTP/1.1 POST with `Expect: 100-continue` whose body is sent only after the interim
/// answer came (or 3 s passed without one): the interim status line (or that none came), then
/// the final status line.
fn expect_continue(target: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(target).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(
        b"POST /header/x-authz-added HTTP/1.1\r\nHost: svc\r\nx-authz: allow\r\n\
          content-length: 10\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    // The interim head, up to its empty line.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let interim = loop {
        match s.read(&mut byte) {
            Ok(1) => {
                head.push(byte[0]);
                if head.ends_with(b"\r\n\r\n") {
                    break String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                }
            }
            Ok(_) => break format!("closed after {:?}", String::from_utf8_lossy(&head)),
            Err(e) => break format!("no interim answer in 3 s ({:?}): {e}", e.kind()),
        }
    };
    s.write_all(b"xxxxxxxxxx").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    format!(
        "{interim} then {}",
        rest.lines().next().unwrap_or("nothing")
    )
}

fn http1_calls(target: SocketAddr, requests: &Value) -> Vec<String> {
    use std::io::Write;
    let python = common::peers::require(common::peers::root().join(".cache/venv/bin/python"));
    let mut child = std::process::Command::new(python)
        .arg(common::peers::root().join("tests/peers/http1/peer.py"))
        .args(["client", "--target", &target.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(requests.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            match v["status"].as_u64() {
                // The upstream's line names the peer's address: the same in both runs.
                Some(st) => format!(
                    "{st} {} headers={}",
                    v["body"].as_str().unwrap_or("").trim_end(),
                    v["headers"]
                ),
                None => format!("error {}", v["error"]),
            }
        })
        .collect()
}

/// HTTP/1.1 requests behind istiod's CUSTOM filters through Envoy 1.40 and ringside given the
/// same resources: with the gRPC authorizer (listener A of
/// `istiod_custom_grpc_provider_like_envoy`, its authorizer down with `failure_mode_allow`: B)
/// and the HTTP one (the full provider, the bare one): per request the status, body (the
/// upstream's line names the request header asked for) and the response fields the test
/// names; what each authorizer saw; the counters.
#[test]
fn http1_callers_checked_like_envoy() {
    use common::http1::Http1Server;
    let up_port = free_port();
    let _up = Http1Server::start("127.0.0.1", up_port, "U");
    let down = local(free_port());
    let dir = TempDir::new("ext-authz-h1");
    let show = json!([
        "set-cookie",
        "x-prefix-up",
        "x-deny-reason",
        "x-prefix-deny",
        "www-authenticate",
        "content-type",
        "x-authz-resp"
    ]);
    let req = |path: &str, headers: Value| json!({"method": "GET", "path": path, "host": "svc", "headers": headers, "show": show});
    // (listener, requests on one connection)
    let cases: Vec<(usize, Value)> = vec![
        // gRPC authorizer.
        (
            0,
            json!([
            req("/header/x-authz-added", json!({"x-authz": "allow", "x-remove-me": "bye"})),
            req("/header/x-remove-me", json!({"x-authz": "allow", "x-remove-me": "bye"})),
            req("/header/x-authz-set", json!({"x-authz": "allow", "x-authz-set": "old"})),
            req("/header/a", json!({"x-authz": "deny"})),
            req("/header/a", json!({"x-authz": "deny-plain"})),
            req("/header/a", json!({"x-authz": "error"})),
            req("/header/a", json!({"x-authz": "slow"})),
            // Not matched by the shadow rules: not checked.
            req("/other", json!({"x-authz": "deny"})),
            {"method": "POST", "path": "/header/x-authz-added", "host": "svc", "body_len": 10,
             "headers": {"x-authz": "allow"}, "show": show}]),
        ),
        (
            1,
            json!([req(
                "/header/x-envoy-auth-failure-mode-allowed",
                json!({"x-authz": "deny"})
            )]),
        ),
        // HTTP authorizer, the full provider.
        (
            2,
            json!([
            req("/header/x-prefix-up", json!({"x-authz": "allow", "x-prefix-in": "p",
                "x-custom-id": "c", "x-not-sent": "n"})),
            req("/header/x-remove-me", json!({"x-authz": "allow", "x-remove-me": "bye"})),
            req("/header/authorization", json!({"x-authz": "allow", "authorization": "Bearer orig"})),
            req("/header/x-not-allowed", json!({"x-authz": "allow"})),
            req("/header/a", json!({"x-authz": "deny"})),
            req("/header/a", json!({"x-authz": "error"})),
            req("/header/a", json!({"x-authz": "slow"})),
            req("/header/a", json!({"x-authz": "close"})),
            {"method": "POST", "path": "/header/x-prefix-up", "host": "svc", "body_len": 10,
             "headers": {"x-authz": "allow"}, "show": show}]),
        ),
        // HTTP authorizer, the bare provider (status_on_error 503).
        (
            3,
            json!([
                req("/header/x-prefix-up", json!({"x-authz": "allow"})),
                req("/header/a", json!({"x-authz": "deny"})),
                req("/header/a", json!({"x-authz": "error"}))
            ]),
        ),
    ];
    let run = |who: &str| {
        let grpc_authz = Authz::start(&dir.0.join(format!("{who}-grpc.jsonl")));
        let http_authz = Authz::start_script(
            "ext_authz_http_server.py",
            &dir.0.join(format!("{who}-http.jsonl")),
        );
        let listen = [0; 4].map(|_| local(free_port()));
        let xds = XdsServer::start();
        let hcluster = "outbound|8000||my-custom-ext-authz.foo.svc.cluster.local";
        xds.put(&json!({
            "version": "v1",
            "listeners": [
                listener("in_a", listen[0], ext_authz("outbound|9000||authz", false, Some(403), "0.5s")),
                listener("in_b", listen[1], ext_authz("outbound|9000||down", true, None, "0.5s")),
                http_listener("in_h", listen[2], http_ext_authz(hcluster, true, false, 403, "0.5s")),
                http_listener("in_bare", listen[3], http_ext_authz(hcluster, false, false, 503, "0.5s"))],
            "clusters": [h2_cluster("grpc", down), h2_cluster("outbound|9000||authz", local(grpc_authz.port)),
                h2_cluster("outbound|9000||down", down), h1_cluster(hcluster, local(http_authz.port)),
                h1_cluster("h1", local(up_port))]
        }))
        .unwrap();
        let proxy = envoy_or_ringside(who, xds.addr(), "ext-authz-h1", "1");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        for l in listen {
            wait_listening(l);
        }
        let answers: Vec<Vec<String>> = cases
            .iter()
            .map(|(l, reqs)| http1_calls(listen[*l], reqs))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let grpc_checks: Vec<Value> = grpc_authz.checks().into_iter().map(normalized).collect();
        let http_checks: Vec<Value> = http_authz
            .checks()
            .into_iter()
            .map(http_normalized)
            .collect();
        let stat = |name: &str| -> i64 {
            match proxy.downcast_ref::<Ringside>() {
                Some(r) => r.stat_value(name).unwrap_or(-1),
                None => proxy
                    .downcast_ref::<common::envoy::Envoy>()
                    .map_or(-1, |e| e.stat(name) as i64),
            }
        };
        let mut stats = Vec::new();
        for l in ["in_a", "in_b", "in_h", "in_bare"] {
            for s in ["ok", "denied", "error", "failure_mode_allowed", "disabled"] {
                let name = format!("http.{l}.ext_authz.{s}");
                stats.push((name.clone(), stat(&name)));
            }
        }
        eprintln!("{who}: {answers:#?}\n{grpc_checks:#?}\n{http_checks:#?}\n{stats:?}");
        drop(proxy);
        (answers, grpc_checks, http_checks, stats)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    for (i, (r, e)) in ringside.0.iter().zip(&envoy.0).enumerate() {
        assert_eq!(r, e, "connection {i}: ringside (left) vs Envoy (right)");
    }
    assert_eq!(
        ringside.1.len(),
        envoy.1.len(),
        "CheckRequests: ringside (left) vs Envoy (right)"
    );
    for (i, (r, e)) in ringside.1.iter().zip(&envoy.1).enumerate() {
        assert_eq!(r, e, "CheckRequest {i}: ringside (left) vs Envoy (right)");
    }
    assert_eq!(
        ringside.2.len(),
        envoy.2.len(),
        "HTTP checks: ringside (left) vs Envoy (right)"
    );
    for (i, (r, e)) in ringside.2.iter().zip(&envoy.2).enumerate() {
        assert_eq!(r, e, "HTTP check {i}: ringside (left) vs Envoy (right)");
    }
    assert_eq!(
        ringside.3, envoy.3,
        "counters, ringside (left) vs Envoy (right)"
    );
    // What the comparison rests on: the answers took effect.
    assert!(
        envoy.0[0][0].starts_with("200 ") && envoy.0[0][0].contains("x-authz-added=yes"),
        "{}",
        envoy.0[0][0]
    );
    assert!(
        envoy.0[0][3].starts_with("401 denied by test"),
        "{}",
        envoy.0[0][3]
    );
    assert!(envoy.0[2][0].contains("x-prefix-up=1"), "{}", envoy.0[2][0]);
    assert!(
        envoy.0[2][4].starts_with("401 denied by test"),
        "{}",
        envoy.0[2][4]
    );
}

// === The request body (istiod's `includeRequestBodyInCheck`) ===

/// `with_request_body` (istiod's `includeRequestBodyInCheck`: `maxRequestBytes`,
/// `allowPartialMessage`, `packAsBytes`) through Envoy 1.40 and ringside given the same
/// resources: grpcio calls (the body as HTTP/2 DATA) and HTTP/1.1 requests (Content-Length and
/// chunked bodies, shorter and longer than the limit) to a gRPC authorizer (partial allowed;
/// not allowed, as bytes) and an HTTP one; compared: what the caller got, what each
/// authorizer saw (the body, `x-envoy-auth-partial-body`), the counters.
#[test]
fn request_body_like_envoy() {
    let server = GrpcServer::start(0, "G", &[]);
    let up_port = free_port();
    let _up = common::http1::Http1Server::start("127.0.0.1", up_port, "U");
    let dir = TempDir::new("ext-authz-body");
    let body = |partial: bool, bytes: bool| json!({"max_request_bytes": 16, "allow_partial_message": partial, "pack_as_bytes": bytes});
    let show = json!(["x-authz-added"]);
    let post = |len: u64, chunked: bool, what: &str| {
        json!({"method": "POST", "path": "/header/x-authz-added", "host": "svc",
            "body_len": len, "chunked": chunked, "headers": {"x-authz": what}, "show": show})
    };
    let grpc_cases: Vec<Case> = vec![
        (0, Call::Unary, vec![("x-authz", "allow")]),
        (1, Call::Unary, vec![("x-authz", "allow")]),
        (2, Call::Unary, vec![]),
        (0, Call::ClientStream, vec![("x-authz", "allow")]),
    ];
    let h1_cases: Vec<(usize, Value)> = vec![
        (
            0,
            json!([
                post(10, false, "allow"),
                post(40, false, "allow"),
                post(40, true, "allow")
            ]),
        ),
        (1, json!([post(10, false, "allow")])),
        (1, json!([post(40, false, "allow")])),
        (2, json!([post(10, false, ""), post(40, true, "")])),
    ];
    let run = |who: &str| {
        let grpc_authz = Authz::start(&dir.0.join(format!("{who}-grpc.jsonl")));
        let http_authz = Authz::start_script(
            "ext_authz_http_server.py",
            &dir.0.join(format!("{who}-http.jsonl")),
        );
        let listen = [0; 3].map(|_| local(free_port()));
        let hcluster = "outbound|8000||my-custom-ext-authz.foo.svc.cluster.local";
        let with_body = |mut f: Value, b: Value| {
            f["typed_config"]["with_request_body"] = b;
            f
        };
        let xds = XdsServer::start();
        xds.put(&json!({
            "version": "v1",
            "listeners": [
                http_listener("in_g", listen[0], with_body(
                    ext_authz("outbound|9000||authz", false, Some(403), "0.5s"), body(true, false))),
                http_listener("in_gb", listen[1], with_body(
                    ext_authz("outbound|9000||authz", false, Some(403), "0.5s"), body(false, true))),
                http_listener("in_h", listen[2], with_body(
                    http_ext_authz(hcluster, false, false, 503, "0.5s"), body(true, false)))],
            "clusters": [h2_cluster("grpc", server.addr()),
                h2_cluster("outbound|9000||authz", local(grpc_authz.port)),
                h1_cluster(hcluster, local(http_authz.port)), h1_cluster("h1", local(up_port))]
        }))
        .unwrap();
        let proxy = envoy_or_ringside(who, xds.addr(), "ext-authz-body", "1");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        for l in listen {
            wait_listening(l);
        }
        let mut answers: Vec<String> = grpc_cases
            .iter()
            .map(|(l, call, meta)| grpc(listen[*l], *call, meta))
            .collect();
        for (l, reqs) in &h1_cases {
            answers.extend(http1_calls(listen[*l], reqs));
        }
        // A caller that waits for `100 Continue` before its body (curl does, for large ones).
        answers.push(expect_continue(listen[0]));
        std::thread::sleep(Duration::from_millis(300));
        let grpc_checks: Vec<Value> = grpc_authz.checks().into_iter().map(normalized).collect();
        let http_checks: Vec<Value> = http_authz
            .checks()
            .into_iter()
            .map(http_normalized)
            .collect();
        let stat = |name: &str| -> i64 {
            match proxy.downcast_ref::<Ringside>() {
                Some(r) => r.stat_value(name).unwrap_or(-1),
                None => proxy
                    .downcast_ref::<common::envoy::Envoy>()
                    .map_or(-1, |e| e.stat(name) as i64),
            }
        };
        let mut stats = Vec::new();
        for l in ["in_g", "in_gb", "in_h"] {
            for s in ["ok", "denied", "error", "disabled"] {
                let name = format!("http.{l}.ext_authz.{s}");
                stats.push((name.clone(), stat(&name)));
            }
        }
        eprintln!("{who}: {answers:#?}\n{grpc_checks:#?}\n{http_checks:#?}\n{stats:?}");
        drop(proxy);
        (answers, grpc_checks, http_checks, stats)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    for (i, (r, e)) in ringside.0.iter().zip(&envoy.0).enumerate() {
        assert_eq!(r, e, "call {i}: ringside (left) vs Envoy (right)");
    }
    assert_eq!(
        ringside.1.len(),
        envoy.1.len(),
        "CheckRequests: ringside (left) vs Envoy (right)"
    );
    for (i, (r, e)) in ringside.1.iter().zip(&envoy.1).enumerate() {
        assert_eq!(r, e, "CheckRequest {i}: ringside (left) vs Envoy (right)");
    }
    assert_eq!(
        ringside.2.len(),
        envoy.2.len(),
        "HTTP checks: ringside (left) vs Envoy (right)"
    );
    for (i, (r, e)) in ringside.2.iter().zip(&envoy.2).enumerate() {
        assert_eq!(r, e, "HTTP check {i}: ringside (left) vs Envoy (right)");
    }
    assert_eq!(
        ringside.3, envoy.3,
        "counters, ringside (left) vs Envoy (right)"
    );
    // What the comparison rests on: bodies reached the authorizers.
    assert!(envoy
        .1
        .iter()
        .any(|c| c["attributes"]["request"]["http"]["body"].is_string()));
    assert!(envoy.2.iter().any(|c| c["body"] == "xxxxxxxxxx"));
    assert_eq!(
        envoy.0.last().map(String::as_str),
        Some("HTTP/1.1 100 Continue then HTTP/1.1 200 OK"),
        "{envoy:?}"
    );
}
