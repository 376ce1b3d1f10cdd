//! Mutual TLS through the real binary (docs/security.md): a test CA issues SPIFFE certificates
//! (rcgen, ECDSA P-256 as Istio's CA does); a Dubbo consumer → ringside (outbound, cluster
//! `tls`) → ringside (inbound listener `tls`, STRICT) → provider chain; STRICT refusing
//! plaintext and PERMISSIVE serving both; peers with the wrong SAN or from another CA refused;
//! grpcio over TLS to ringside, and through an outbound → inbound pair.

mod common;

use std::net::SocketAddr;

use codec::dubbo::encode::{Arg, RequestBuilder};
use codec::dubbo::Status;
use common::dubbo::*;
use common::grpc::{grpc_call, CallOpts, ClientTls, GrpcServer};
use common::pki::*;
use common::*;

const SVC: &str = "com.ringside.test.EchoService";

/// An inbound sidecar: listener `inbound` (`protocol`, TLS `mode`, client certificates must
/// carry the consumer's SAN) in front of `app`.
fn inbound_yaml(
    pki: &Pki,
    admin: SocketAddr,
    listen: SocketAddr,
    protocol: &str,
    mode: &str,
    app: SocketAddr,
) -> String {
    let alpn = if protocol == "triple" { "[h2]" } else { "[]" };
    format!(
        "admin: {{address: {admin}}}\n\
         listeners:\n\
         \x20 - name: inbound\n    address: {listen}\n    protocol: {protocol}\n    cluster: app\n\
         \x20   tls:\n      mode: {mode}\n      cert_chain: {}\n      private_key: {}\n\
         \x20     ca: {}\n      subject_alt_names: [\"{CONSUMER_ID}\"]\n      alpn: {alpn}\n\
         clusters:\n  - {{name: app, endpoints: [\"{app}\"]}}\n",
        pki.path("provider.pem"),
        pki.path("provider.key"),
        pki.path("ca.pem"),
    )
}

/// An outbound sidecar: plaintext listener `outbound` to cluster `peer` (the inbound sidecar)
/// over mutual TLS with certificate `me`, expecting the server SAN `want`.
fn outbound_yaml(
    pki: &Pki,
    admin: SocketAddr,
    listen: SocketAddr,
    protocol: &str,
    peer: SocketAddr,
    me: &str,
    want: &str,
) -> String {
    let alpn = if protocol == "triple" {
        "[h2]"
    } else {
        "[istio]"
    };
    format!(
        "admin: {{address: {admin}}}\n\
         listeners:\n\
         \x20 - {{name: outbound, address: {listen}, protocol: {protocol}, cluster: peer}}\n\
         clusters:\n\
         \x20 - name: peer\n    endpoints: [\"{peer}\"]\n    timeout_ms: 3000\n\
         \x20   tls:\n      cert_chain: {}\n      private_key: {}\n      ca: {}\n\
         \x20     sni: outbound_.20880_._.provider.default.svc.cluster.local\n\
         \x20     alpn: {alpn}\n      subject_alt_names: [\"{want}\"]\n",
        pki.path(&format!("{me}.pem")),
        pki.path(&format!("{me}.key")),
        pki.path("ca.pem"),
    )
}

fn start(yaml: &str, admin: SocketAddr) -> Ringside {
    Ringside::start(yaml, admin, &["--shards", "1"])
}

fn stat(rs: &Ringside, name: &str) -> i64 {
    rs.stat_value(&format!("listener.inbound.{name}"))
        .unwrap_or_else(|| panic!("no stat listener.inbound.{name}"))
}

/// Waits (up to 5 s) until listener stat `name` reaches `value`.
fn wait_stat(rs: &Ringside, name: &str, value: i64, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stat(rs, name) < value {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {name} stayed at {} (want {value})",
            stat(rs, name)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(stat(rs, name), value, "{what}: {name}");
}

fn echo(c: &mut Consumer, text: &str) -> (Status, String) {
    let args = [Arg::Str(text)];
    let a = c.call(RequestBuilder::new(SVC, "echo").args(&args));
    (a.status, a.text)
}

/// Plaintext Dubbo straight to a TLS listener: what came back before the connection closed.
fn plaintext_reply(addr: SocketAddr) -> Vec<u8> {
    use std::io::Read;
    let mut c = Consumer::connect(addr);
    let args = [Arg::Str("plain")];
    let _ = c.try_send(RequestBuilder::new(SVC, "echo").args(&args));
    let mut got = Vec::new();
    let _ = c.conn.read_to_end(&mut got);
    got
}

/// A TLS alert record (content type 21): what rustls answers a ClientHello that is not one.
fn is_tls_alert(b: &[u8]) -> bool {
    b.len() >= 7 && b[0] == 0x15 && b[1] == 0x03
}

#[test]
fn dubbo_consumer_to_outbound_to_strict_inbound_over_mutual_tls() {
    let pki = Pki::new();
    let provider = Provider::start("A");
    let (in_admin, in_listen) = (local(free_port()), local(free_port()));
    let inbound = start(
        &inbound_yaml(&pki, in_admin, in_listen, "dubbo", "strict", provider.addr),
        in_admin,
    );
    let (out_admin, out_listen) = (local(free_port()), local(free_port()));
    let outbound = start(
        &outbound_yaml(
            &pki,
            out_admin,
            out_listen,
            "dubbo",
            in_listen,
            "consumer",
            PROVIDER_ID,
        ),
        out_admin,
    );
    let mut c = Consumer::connect(out_listen);
    for i in 0..20 {
        let text = format!("hello-{i}");
        assert_eq!(echo(&mut c, &text), (Status::Ok, format!("A|echo|{text}")));
    }
    // One upstream connection (one shard), one handshake, reused by every call.
    assert_eq!(stat(&inbound, "downstream_tls_handshake"), 1);
    assert_eq!(stat(&inbound, "downstream_tls_error"), 0);

    // STRICT: plaintext is refused before the provider sees anything.
    let seen = provider.seen.lock().unwrap().len();
    let reply = plaintext_reply(in_listen);
    assert!(
        is_tls_alert(&reply),
        "plaintext under STRICT got {reply:02x?}"
    );
    // The socket may close a moment before the shard counts the failure.
    wait_stat(
        &inbound,
        "downstream_tls_error",
        1,
        "plaintext under STRICT",
    );
    assert_eq!(provider.seen.lock().unwrap().len(), seen);
    drop(outbound);
}

#[test]
fn permissive_serves_tls_and_plaintext_on_one_port() {
    let pki = Pki::new();
    let provider = Provider::start("A");
    let (in_admin, in_listen) = (local(free_port()), local(free_port()));
    let inbound = start(
        &inbound_yaml(
            &pki,
            in_admin,
            in_listen,
            "dubbo",
            "permissive",
            provider.addr,
        ),
        in_admin,
    );
    let (out_admin, out_listen) = (local(free_port()), local(free_port()));
    let _outbound = start(
        &outbound_yaml(
            &pki,
            out_admin,
            out_listen,
            "dubbo",
            in_listen,
            "consumer",
            PROVIDER_ID,
        ),
        out_admin,
    );
    let mut plain = Consumer::connect(in_listen);
    assert_eq!(
        echo(&mut plain, "plain"),
        (Status::Ok, "A|echo|plain".to_string())
    );
    let mut c = Consumer::connect(out_listen);
    assert_eq!(echo(&mut c, "tls"), (Status::Ok, "A|echo|tls".to_string()));
    assert_eq!(stat(&inbound, "downstream_tls_plaintext"), 1);
    assert_eq!(stat(&inbound, "downstream_tls_handshake"), 1);
}

#[test]
fn peers_with_the_wrong_identity_are_refused_on_both_sides() {
    let pki = Pki::new();
    let provider = Provider::start("A");
    let (in_admin, in_listen) = (local(free_port()), local(free_port()));
    let inbound = start(
        &inbound_yaml(&pki, in_admin, in_listen, "dubbo", "strict", provider.addr),
        in_admin,
    );
    // (client cert, server SAN the outbound side expects): the outbound refuses a server
    // without the expected SAN; the inbound refuses a client with the wrong SAN or from
    // another CA.
    let cases = [
        (
            "consumer",
            "spiffe://cluster.local/ns/default/sa/other",
            "server SAN",
        ),
        ("rogue", PROVIDER_ID, "client SAN"),
        ("stranger", PROVIDER_ID, "client CA"),
    ];
    for (i, (me, want, what)) in cases.into_iter().enumerate() {
        let (out_admin, out_listen) = (local(free_port()), local(free_port()));
        let _outbound = start(
            &outbound_yaml(&pki, out_admin, out_listen, "dubbo", in_listen, me, want),
            out_admin,
        );
        let mut c = Consumer::connect(out_listen);
        let (status, text) = echo(&mut c, "who");
        assert_ne!(status, Status::Ok, "{what}: answered: {text}");
        // The consumer's answer can come before the inbound side reads the alert.
        wait_stat(&inbound, "downstream_tls_error", i as i64 + 1, what);
    }
    assert_eq!(stat(&inbound, "downstream_tls_handshake"), 0);
    assert!(provider.seen.lock().unwrap().is_empty());
}

#[test]
fn grpcio_over_tls_to_ringside_and_through_an_outbound_inbound_pair() {
    let pki = Pki::new();
    let server = GrpcServer::start(0, "G", &[]);
    let (in_admin, in_listen) = (local(free_port()), local(free_port()));
    let inbound = start(
        &inbound_yaml(&pki, in_admin, in_listen, "triple", "strict", server.addr()),
        in_admin,
    );
    // grpcio with the consumer's certificate, straight to the inbound listener.
    let tls = ClientTls {
        ca: pki.dir.0.join("ca.pem"),
        cert: Some((
            pki.dir.0.join("consumer.pem"),
            pki.dir.0.join("consumer.key"),
        )),
        authority: PROVIDER_DNS.into(),
    };
    let out = grpc_call(in_listen, &CallOpts::default().count(3).tls(tls.clone()));
    assert!(out.ok, "{out:?}");
    assert_eq!(out.servers(), ["G", "G", "G"]);
    assert_eq!(stat(&inbound, "downstream_tls_handshake"), 1);
    // Without a client certificate: refused (STRICT, require_client_certificate).
    let anon = ClientTls { cert: None, ..tls };
    let out = grpc_call(in_listen, &CallOpts::default().tls(anon));
    assert!(!out.ok, "{out:?}");
    // Plaintext grpcio → outbound (Triple, mTLS upstream) → inbound.
    let (out_admin, out_listen) = (local(free_port()), local(free_port()));
    let _outbound = start(
        &outbound_yaml(
            &pki,
            out_admin,
            out_listen,
            "triple",
            in_listen,
            "consumer",
            PROVIDER_ID,
        ),
        out_admin,
    );
    let out = grpc_call(out_listen, &CallOpts::default().count(3));
    assert!(out.ok, "{out:?}");
    assert_eq!(out.servers(), ["G", "G", "G"]);
    assert_eq!(stat(&inbound, "downstream_tls_handshake"), 2);
}

/// Envoy's `common_tls_context` with a certificate of `pki` and the peer SAN it requires.
fn envoy_tls_context(pki: &Pki, me: &str, peer_id: &str, alpn: &str) -> serde_json::Value {
    serde_json::json!({
        "alpn_protocols": [alpn],
        "tls_certificates": [{
            "certificate_chain": {"filename": pki.path(&format!("{me}.pem"))},
            "private_key": {"filename": pki.path(&format!("{me}.key"))},
        }],
        "validation_context": {
            "trusted_ca": {"filename": pki.path("ca.pem")},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer_id}}],
        },
    })
}

/// A tcp_proxy listener on `listen` to `upstream`, TLS on the listener (`downstream`) and/or
/// towards the upstream (`upstream_tls`), as Istio's sidecars have on either side.
fn envoy_sidecar(
    admin: SocketAddr,
    listen: SocketAddr,
    upstream: SocketAddr,
    downstream: Option<serde_json::Value>,
    upstream_tls: Option<serde_json::Value>,
) -> serde_json::Value {
    use common::envoy::{load_assignment, socket};
    let mut chain = serde_json::json!({"filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "t", "cluster": "app"}}]});
    if let Some(ctx) = downstream {
        chain["transport_socket"] = serde_json::json!({"name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": ctx}});
    }
    let mut cluster = serde_json::json!({"name": "app", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": load_assignment("app", &[upstream])});
    if let Some(ctx) = upstream_tls {
        cluster["transport_socket"] = serde_json::json!({"name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "outbound_.20880_._.provider.default.svc.cluster.local",
                "common_tls_context": ctx}});
    }
    serde_json::json!({
        "admin": {"address": socket(admin)},
        "static_resources": {
            "listeners": [{"name": "l", "address": socket(listen), "filter_chains": [chain]}],
            "clusters": [cluster],
        },
    })
}

/// Starts Envoy and waits until it is LIVE (`/ready`: its listeners accept). No connection
/// probe: an outbound tcp_proxy would open (and cut) a TLS connection upstream for it.
fn start_envoy(bootstrap: &serde_json::Value, admin: SocketAddr) -> common::envoy::Envoy {
    let e = common::envoy::Envoy::start(bootstrap, admin);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !matches!(
        common::xds::http_body(admin, "GET", "/ready", ""),
        Ok((200, _))
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "envoy not LIVE:\n{}",
            e.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    e
}

#[test]
fn envoy_is_the_peer_sidecar_in_both_directions() {
    let pki = Pki::new();
    let provider = Provider::start("A");
    // ringside outbound (mTLS) → Envoy inbound (TLS listener requiring the consumer's SAN).
    let (e_admin, e_listen) = (local(free_port()), local(free_port()));
    let inbound_ctx = envoy_tls_context(&pki, "provider", CONSUMER_ID, "istio");
    let envoy_in = start_envoy(
        &envoy_sidecar(e_admin, e_listen, provider.addr, Some(inbound_ctx), None),
        e_admin,
    );
    let (out_admin, out_listen) = (local(free_port()), local(free_port()));
    let _out = start(
        &outbound_yaml(
            &pki,
            out_admin,
            out_listen,
            "dubbo",
            e_listen,
            "consumer",
            PROVIDER_ID,
        ),
        out_admin,
    );
    let mut c = Consumer::connect(out_listen);
    for i in 0..5 {
        let text = format!("to-envoy-{i}");
        assert_eq!(echo(&mut c, &text), (Status::Ok, format!("A|echo|{text}")));
    }
    let handshakes = format!(
        "listener.{}_{}.ssl.handshake",
        e_listen.ip(),
        e_listen.port()
    );
    assert_eq!(envoy_in.stat(&handshakes), 1, "{}", envoy_in.log());
    // A ringside presenting the wrong SAN is refused by Envoy.
    let (rogue_admin, rogue_listen) = (local(free_port()), local(free_port()));
    let _rogue = start(
        &outbound_yaml(
            &pki,
            rogue_admin,
            rogue_listen,
            "dubbo",
            e_listen,
            "rogue",
            PROVIDER_ID,
        ),
        rogue_admin,
    );
    let mut c = Consumer::connect(rogue_listen);
    let (status, text) = echo(&mut c, "rogue");
    assert_ne!(status, Status::Ok, "Envoy let a wrong SAN through: {text}");
    let ssl: Vec<String> = envoy_in
        .get("/stats")
        .lines()
        .filter(|l| l.contains("ssl.") && !l.ends_with(": 0"))
        .map(String::from)
        .collect();
    assert_eq!(envoy_in.stat(&handshakes), 1, "{ssl:#?}");

    // Envoy outbound (UpstreamTlsContext, mTLS) → ringside inbound (STRICT).
    let (in_admin, in_listen) = (local(free_port()), local(free_port()));
    let inbound = start(
        &inbound_yaml(&pki, in_admin, in_listen, "dubbo", "strict", provider.addr),
        in_admin,
    );
    let (o_admin, o_listen) = (local(free_port()), local(free_port()));
    let outbound_ctx = envoy_tls_context(&pki, "consumer", PROVIDER_ID, "istio");
    let _envoy_out = start_envoy(
        &envoy_sidecar(o_admin, o_listen, in_listen, None, Some(outbound_ctx)),
        o_admin,
    );
    let mut c = Consumer::connect(o_listen);
    for i in 0..5 {
        let text = format!("from-envoy-{i}");
        assert_eq!(echo(&mut c, &text), (Status::Ok, format!("A|echo|{text}")));
    }
    assert_eq!(stat(&inbound, "downstream_tls_handshake"), 1);
    assert_eq!(stat(&inbound, "downstream_tls_error"), 0);
}

#[test]
fn certs_lists_each_file_with_its_sans_and_expiry() {
    let pki = Pki::new();
    let provider = Provider::start("A");
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = start(
        &inbound_yaml(&pki, admin, listen, "dubbo", "strict", provider.addr),
        admin,
    );
    let (code, body) = rs.get("/certs");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let files = v["files"].as_array().unwrap();
    let chain = files
        .iter()
        .find(|f| f["owner"] == "listener inbound" && f["role"] == "cert_chain")
        .unwrap_or_else(|| panic!("no cert_chain in {body}"));
    assert_eq!(chain["path"], pki.path("provider.pem"));
    let leaf = &chain["certificates"][0];
    assert_eq!(leaf["uri_sans"], serde_json::json!([PROVIDER_ID]));
    // 2031-07-09T00:00:00Z, as the test CA issued it.
    assert_eq!(leaf["expiration_unix_s"], NOT_AFTER_UNIX_S);
    assert!(leaf["days_until_expiration"].as_i64().unwrap() > 365);
    assert!(
        files
            .iter()
            .any(|f| f["owner"] == "listener inbound" && f["role"] == "ca"),
        "{body}"
    );
}

/// Istio's standard metrics of an inbound listener say who called over mutual TLS: the
/// caller's and our certificate's SPIFFE ids are `source_principal` and
/// `destination_principal`, and `connection_security_policy` is `mutual_tls`; a plaintext
/// caller of the same PERMISSIVE listener is `unknown`, `unknown`, `none`. Envoy 1.40 has no
/// `istio.stats` filter to compare with: the values are Istio's documented ones
/// (istio.io, "Istio Standard Metrics"), as istio-proxy reports them. The caller is Envoy's
/// outbound sidecar (UpstreamTlsContext with the consumer's certificate).
#[test]
fn istio_metrics_name_the_principals_of_mutual_tls_calls() {
    let pki = Pki::new();
    let provider = Provider::start("A");
    let (in_admin, in_listen) = (local(free_port()), local(free_port()));
    let yaml = inbound_yaml(
        &pki,
        in_admin,
        in_listen,
        "dubbo",
        "permissive",
        provider.addr,
    )
    .replacen(
        "    cluster: app\n",
        "    cluster: app\n    istio_metrics: destination\n",
        1,
    );
    let inbound = start(&yaml, in_admin);
    let (o_admin, o_listen) = (local(free_port()), local(free_port()));
    let outbound_ctx = envoy_tls_context(&pki, "consumer", PROVIDER_ID, "istio");
    let _envoy_out = start_envoy(
        &envoy_sidecar(o_admin, o_listen, in_listen, None, Some(outbound_ctx)),
        o_admin,
    );
    let mut c = Consumer::connect(o_listen);
    for i in 0..3 {
        let text = format!("mtls-{i}");
        assert_eq!(echo(&mut c, &text), (Status::Ok, format!("A|echo|{text}")));
    }
    let mut plain = Consumer::connect(in_listen);
    for i in 0..2 {
        let text = format!("plain-{i}");
        assert_eq!(
            echo(&mut plain, &text),
            (Status::Ok, format!("A|echo|{text}"))
        );
    }
    let (code, scrape) = inbound.get("/stats/prometheus");
    assert_eq!(code, 200);
    let requests: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    let count = |principals: (&str, &str), policy: &str| {
        requests
            .iter()
            .filter(|l| {
                l.contains(&format!("source_principal=\"{}\",source_app", principals.0))
                    && l.contains(&format!(
                        "destination_principal=\"{}\",destination_app",
                        principals.1
                    ))
                    && l.contains(&format!("connection_security_policy=\"{policy}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert_eq!(
        count((CONSUMER_ID, PROVIDER_ID), "mutual_tls"),
        3,
        "{requests:#?}"
    );
    assert_eq!(count(("unknown", "unknown"), "none"), 2, "{requests:#?}");
    assert_eq!(requests.len(), 2, "{requests:#?}");
    // istio-proxy's namespace fallback: the caller's SPIFFE id names its namespace (no
    // metadata exchange here); a plaintext caller's is unknown.
    for l in &requests {
        let ns = if l.contains(CONSUMER_ID) {
            "default"
        } else {
            "unknown"
        };
        assert!(
            l.contains(&format!("source_workload_namespace=\"{ns}\"")),
            "{l}"
        );
    }
}

/// On an outbound listener, `destination_principal` is the SPIFFE id of the certificate the
/// upstream presented in its connection's TLS handshake, and `destination_workload_namespace`
/// the namespace it names (istio-proxy reads `uriSanPeerCertificate` of the upstream's TLS and
/// takes the namespace from it before the peer's metadata). The upstream is Envoy 1.40's inbound
/// sidecar terminating mutual TLS (ALPN h2) in front of the grpcio server; the caller is the
/// grpcio client through ringside's outbound listener (cluster TLS with the consumer's
/// certificate).
#[test]
fn istio_metrics_name_the_upstreams_principal_on_outbound_grpc_calls() {
    let pki = Pki::new();
    let server = GrpcServer::start(0, "S", &[]);
    let (e_admin, e_listen) = (local(free_port()), local(free_port()));
    let inbound_ctx = envoy_tls_context(&pki, "provider", CONSUMER_ID, "h2");
    let _envoy_in = start_envoy(
        &envoy_sidecar(e_admin, e_listen, server.addr(), Some(inbound_ctx), None),
        e_admin,
    );
    let (r_admin, r_listen) = (local(free_port()), local(free_port()));
    let yaml = outbound_yaml(
        &pki,
        r_admin,
        r_listen,
        "triple",
        e_listen,
        "consumer",
        PROVIDER_ID,
    )
    .replacen("cluster: peer}", "cluster: peer, istio_metrics: source}", 1);
    let out = start(&yaml, r_admin);
    let res = grpc_call(r_listen, &CallOpts::new(common::grpc::Call::Unary).count(2));
    assert!(res.ok, "{res:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let requests = loop {
        let (code, scrape) = out.get("/stats/prometheus");
        assert_eq!(code, 200);
        let requests: Vec<String> = scrape
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(str::to_string)
            .collect();
        if requests.iter().any(|l| l.ends_with(" 2")) {
            break requests;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "2 calls not counted: {requests:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let l = &requests[0];
    for want in [
        "reporter=\"source\"".to_string(),
        format!("destination_principal=\"{PROVIDER_ID}\""),
        // Our own certificate on the upstream connection (istio-proxy's
        // uriSanLocalCertificate).
        format!("source_principal=\"{CONSUMER_ID}\""),
        "destination_workload_namespace=\"default\"".to_string(),
        "destination_service_namespace=\"default\"".to_string(),
        "grpc_response_status=\"0\"".to_string(),
    ] {
        assert!(l.contains(&want), "{want} in {l}");
    }
}

/// The same for Dubbo calls: a Dubbo consumer through ringside's outbound listener over
/// mutual TLS to Envoy 1.40's inbound sidecar (tcp_proxy) in front of the provider; the
/// upstream connection's principals label the calls (the provider's certificate is
/// `destination_principal`, ours `source_principal`).
#[test]
fn istio_metrics_name_the_principals_of_outbound_dubbo_calls() {
    let pki = Pki::new();
    let provider = Provider::start("A");
    let (e_admin, e_listen) = (local(free_port()), local(free_port()));
    let inbound_ctx = envoy_tls_context(&pki, "provider", CONSUMER_ID, "istio");
    let _envoy_in = start_envoy(
        &envoy_sidecar(e_admin, e_listen, provider.addr, Some(inbound_ctx), None),
        e_admin,
    );
    let (r_admin, r_listen) = (local(free_port()), local(free_port()));
    let yaml = outbound_yaml(
        &pki,
        r_admin,
        r_listen,
        "dubbo",
        e_listen,
        "consumer",
        PROVIDER_ID,
    )
    .replacen("cluster: peer}", "cluster: peer, istio_metrics: source}", 1);
    let out = start(&yaml, r_admin);
    let mut c = Consumer::connect(r_listen);
    for i in 0..3 {
        let text = format!("x{i}");
        assert_eq!(echo(&mut c, &text), (Status::Ok, format!("A|echo|{text}")));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let requests = loop {
        let (code, scrape) = out.get("/stats/prometheus");
        assert_eq!(code, 200);
        let requests: Vec<String> = scrape
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(str::to_string)
            .collect();
        if requests.iter().any(|l| l.ends_with(" 3")) {
            break requests;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "3 calls not counted: {requests:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let l = &requests[0];
    for want in [
        "reporter=\"source\"".to_string(),
        format!("source_principal=\"{CONSUMER_ID}\""),
        format!("destination_principal=\"{PROVIDER_ID}\""),
        "destination_workload_namespace=\"default\"".to_string(),
        "destination_service_namespace=\"default\"".to_string(),
        "request_protocol=\"dubbo\"".to_string(),
        "response_code=\"20\"".to_string(),
    ] {
        assert!(l.contains(&want), "{want} in {l}");
    }
}

/// The scrape's lines of `family` (`{` follows the name) once one ends with ` {count}` (5 s).
fn istio_lines(rs: &Ringside, family: &str, count: u64) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (code, scrape) = rs.get("/stats/prometheus");
        assert_eq!(code, 200);
        let lines: Vec<String> = scrape
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .map(str::to_string)
            .collect();
        if lines.iter().any(|l| l.ends_with(&format!(" {count}"))) {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{family} never reached {count}: {lines:#?}; istio_* lines: {:#?}",
            scrape
                .lines()
                .filter(|l| l.starts_with("istio_"))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The same for HTTP/1.1 requests (docs/observability.md): raw HTTP/1.1 requests through
/// ringside's outbound triple listener (`http1`) over mutual TLS (ALPN `http/1.1`) to Envoy
/// 1.40's inbound sidecar (tcp_proxy) in front of an HTTP/1.1 server (Python's http.server);
/// the upstream connection's principals label them, on one connection kept alive and on a
/// second one.
#[test]
fn istio_metrics_name_the_principals_of_outbound_http1_requests() {
    use std::io::{Read, Write};
    let pki = Pki::new();
    let app_port = free_port();
    let _app = common::http1::Http1Server::start("127.0.0.1", app_port, "A");
    let (e_admin, e_listen) = (local(free_port()), local(free_port()));
    let inbound_ctx = envoy_tls_context(&pki, "provider", CONSUMER_ID, "http/1.1");
    let _envoy_in = start_envoy(
        &envoy_sidecar(e_admin, e_listen, local(app_port), Some(inbound_ctx), None),
        e_admin,
    );
    let (r_admin, r_listen) = (local(free_port()), local(free_port()));
    let yaml = outbound_yaml(
        &pki,
        r_admin,
        r_listen,
        "triple",
        e_listen,
        "consumer",
        PROVIDER_ID,
    )
    .replacen(
        "cluster: peer}",
        "cluster: peer, istio_metrics: source, triple: {http1: true}}",
        1,
    )
    .replacen("alpn: [h2]", "alpn: [http/1.1]", 1);
    let out = start(&yaml, r_admin);
    for n in [2, 1] {
        // `n` requests on one keep-alive connection, the last with `Connection: close`.
        let mut s = std::net::TcpStream::connect(r_listen).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut req = String::new();
        for i in 0..n {
            let close = if i + 1 == n {
                "Connection: close\r\n"
            } else {
                ""
            };
            req.push_str(&format!(
                "GET /r{i} HTTP/1.1\r\nHost: provider\r\n{close}\r\n"
            ));
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        assert_eq!(got.matches("HTTP/1.1 200 OK").count(), n, "{got}");
    }
    let requests = istio_lines(&out, "istio_requests_total", 3);
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let l = &requests[0];
    for want in [
        "reporter=\"source\"".to_string(),
        format!("destination_principal=\"{PROVIDER_ID}\""),
        format!("source_principal=\"{CONSUMER_ID}\""),
        "destination_workload_namespace=\"default\"".to_string(),
        "request_protocol=\"http\"".to_string(),
        "response_code=\"200\"".to_string(),
    ] {
        assert!(l.contains(&want), "{want} in {l}");
    }
}

/// The same for the tcp proxy's connections (`istio_tcp_*`): Dubbo consumers through
/// ringside's outbound tcp listener over mutual TLS to Envoy 1.40's inbound sidecar in front
/// of the provider; the upstream connection's principals label them.
#[test]
fn istio_metrics_name_the_principals_of_outbound_tcp_connections() {
    let pki = Pki::new();
    let provider = Provider::start("A");
    let (e_admin, e_listen) = (local(free_port()), local(free_port()));
    let inbound_ctx = envoy_tls_context(&pki, "provider", CONSUMER_ID, "istio");
    let _envoy_in = start_envoy(
        &envoy_sidecar(e_admin, e_listen, provider.addr, Some(inbound_ctx), None),
        e_admin,
    );
    let (r_admin, r_listen) = (local(free_port()), local(free_port()));
    let yaml = outbound_yaml(
        &pki,
        r_admin,
        r_listen,
        "tcp",
        e_listen,
        "consumer",
        PROVIDER_ID,
    )
    // Counted when a connection ends: the idle timeout ends them (the consumer's close reaches
    // the provider as a half-close through Envoy, but the test provider keeps a clone of each
    // connection, so its side stays open).
    .replacen(
        "cluster: peer}",
        "cluster: peer, istio_metrics: source, idle_timeout_ms: 500}",
        1,
    );
    let out = start(&yaml, r_admin);
    for i in 0..2 {
        let mut c = Consumer::connect(r_listen);
        let text = format!("x{i}");
        assert_eq!(echo(&mut c, &text), (Status::Ok, format!("A|echo|{text}")));
    }
    let closed = istio_lines(&out, "istio_tcp_connections_closed_total", 2);
    assert_eq!(closed.len(), 1, "{closed:#?}");
    let opened = istio_lines(&out, "istio_tcp_connections_opened_total", 2);
    for l in [&closed[0], &opened[0]] {
        for want in [
            "reporter=\"source\"".to_string(),
            format!("destination_principal=\"{PROVIDER_ID}\""),
            format!("source_principal=\"{CONSUMER_ID}\""),
            "destination_workload_namespace=\"default\"".to_string(),
            "request_protocol=\"tcp\"".to_string(),
        ] {
            assert!(l.contains(&want), "{want} in {l}");
        }
    }
}

/// TLS 1.3 session resumption (docs/security.md, "Session resumption"): ringside's listener
/// sends session tickets, and a second connection resumes, from Envoy 1.40 as the client
/// sidecar and from a ringside client sidecar alike (each a tcp proxy, so that every
/// connection of the consumer opens a TLS connection of its own); the resumed connections
/// serve calls like the first.
#[test]
fn second_connections_resume_from_envoy_and_ringside_clients() {
    let pki = Pki::new();
    let provider = Provider::start("A");
    let (in_admin, in_listen) = (local(free_port()), local(free_port()));
    let inbound = start(
        &inbound_yaml(&pki, in_admin, in_listen, "dubbo", "strict", provider.addr),
        in_admin,
    );
    // Each consumer connection: one call, then closed (the next one is a new TLS connection).
    let calls = |through: SocketAddr, tag: &str| {
        for i in 0..3 {
            let mut c = Consumer::connect(through);
            let text = format!("{tag}-{i}");
            assert_eq!(echo(&mut c, &text), (Status::Ok, format!("A|echo|{text}")));
        }
    };

    // Envoy outbound (UpstreamTlsContext; session reuse is its default) → ringside inbound.
    let (o_admin, o_listen) = (local(free_port()), local(free_port()));
    let outbound_ctx = envoy_tls_context(&pki, "consumer", PROVIDER_ID, "istio");
    let envoy_out = start_envoy(
        &envoy_sidecar(o_admin, o_listen, in_listen, None, Some(outbound_ctx)),
        o_admin,
    );
    calls(o_listen, "from-envoy");
    wait_stat(
        &inbound,
        "downstream_tls_handshake",
        3,
        "Envoy's connections",
    );
    assert_eq!(
        stat(&inbound, "downstream_tls_session_reused"),
        2,
        "the 2nd and 3rd connections from Envoy resume"
    );
    assert_eq!(
        envoy_out.stat("cluster.app.ssl.session_reused"),
        2,
        "{}",
        envoy_out.log()
    );

    // ringside outbound (a tcp listener, cluster `tls`) → ringside inbound.
    let (r_admin, r_listen) = (local(free_port()), local(free_port()));
    let yaml = outbound_yaml(
        &pki,
        r_admin,
        r_listen,
        "dubbo",
        in_listen,
        "consumer",
        PROVIDER_ID,
    )
    .replace("protocol: dubbo", "protocol: tcp");
    let _out = start(&yaml, r_admin);
    calls(r_listen, "from-ringside");
    wait_stat(
        &inbound,
        "downstream_tls_handshake",
        6,
        "ringside's connections",
    );
    assert_eq!(
        stat(&inbound, "downstream_tls_session_reused"),
        4,
        "the 2nd and 3rd connections from ringside resume"
    );
    assert_eq!(stat(&inbound, "downstream_tls_error"), 0);
}
