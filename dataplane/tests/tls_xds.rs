//! TLS from xDS with certificates over SDS (docs/security.md, docs/xds.md "TLS"): the shapes
//! istiod sends (`DownstreamTlsContext` / `UpstreamTlsContext` whose certificate is the SDS
//! secret `default` and whose trust bundle is `ROOTCA`, both from the `sds-grpc` cluster, i.e.
//! pilot-agent's Unix socket), served by the test xDS server (tests/peers/xds/server.py, which
//! also serves SDS on a Unix socket) to ringside and to Envoy 1.40 as the peer sidecar, both
//! ways; certificate rotation over SDS in the middle of a load run. Needs
//! scripts/install-test-deps (the venv with xds-protos, Envoy).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dubbo::*;
use common::envoy::{
    add_sds_cluster, bootstrap, dubbo_call, dubbo_listener, load_assignment, socket, Ads,
    DubboCall, Envoy,
};
use common::pki::*;
use common::xds::*;
use common::*;
use serde_json::{json, Value};

const ECHO: &str = "com.ringside.test.EchoService";

/// Istio's `sds_config`: the SDS server behind the bootstrap's `sds-grpc` cluster.
fn sds_config() -> Value {
    json!({"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
        "set_node_on_first_message_only": true},
        "initial_fetch_timeout": "0s", "resource_api_version": "V3"})
}

/// istiod's `common_tls_context`: certificate `default` and trust bundle `ROOTCA` over SDS,
/// the peer's SAN matched by `san` (`{"exact": ..}` or `{"prefix": ..}`).
fn istio_tls_context(alpn: &[&str], san: Value) -> Value {
    json!({
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
        "alpn_protocols": alpn,
        "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": sds_config()}],
        "combined_validation_context": {
            "default_validation_context": {"match_subject_alt_names": [san]},
            "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": sds_config()}
        }
    })
}

fn downstream_tls(ctx: Value) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": true,
        "common_tls_context": ctx}})
}

fn upstream_tls(ctx: Value) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "outbound_.20880_._.provider.default.svc.cluster.local",
        "common_tls_context": ctx}})
}

fn static_cluster(name: &str, endpoints: &[SocketAddr]) -> Value {
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": load_assignment(name, endpoints)})
}

/// A Dubbo listener (dubbo_proxy) sending every EchoService call to `cluster`.
fn dubbo_to(name: &str, addr: SocketAddr, cluster: &str) -> Value {
    dubbo_listener(
        name,
        addr,
        json!([{"name": "echo", "interface": ECHO, "routes": [
            {"match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}}, "route": {"cluster": cluster}}
        ]}]),
    )
}

fn tcp_proxy_to(name: &str, addr: SocketAddr, cluster: &str) -> Value {
    json!({"name": name, "address": socket(addr), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": name, "cluster": cluster}}]}]})
}

/// A ringside whose listeners and clusters come from `xds` and whose SDS server `sds-grpc` is
/// `xds`'s Unix socket.
fn ringside(xds: &XdsServer, node: &str) -> Ringside {
    let admin = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\n\
         sds:\n  - {{name: sds-grpc, path: {}}}\n\
         xds:\n  server: {}\n  node_id: {node}\n  node_cluster: tests\n  \
         initial_fetch_timeout_ms: 20000\n  retry_initial_ms: 100\n  retry_max_ms: 1000\n",
        xds.sds_socket.display(),
        xds.addr()
    );
    Ringside::start(&config, admin, &["--shards", "1"])
}

/// An Envoy whose listeners and clusters come from `xds`, with istio-proxy's `sds-grpc` static
/// cluster on `xds`'s Unix socket (as pilot-agent's).
fn envoy(xds: &XdsServer, node: &str) -> Envoy {
    let admin = local(free_port());
    let mut boot = bootstrap(admin, xds.addr(), Ads::Sotw, node);
    add_sds_cluster(&mut boot, &xds.sds_socket);
    Envoy::start(&boot, admin)
}

fn echo(addr: SocketAddr, text: &str) -> Result<String, String> {
    dubbo_call(addr, &DubboCall::new(ECHO, "", "", "echo", text))
}

/// Calls until one is answered by the provider (the proxies warm, SDS arrives), up to 20 s.
fn wait_answered(addr: SocketAddr, what: &str, logs: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The listener comes with the first xDS snapshot.
        if std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{what}: {addr} never listened\n{}",
                logs()
            );
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match echo(addr, "warm") {
            Ok(t) if t.ends_with("|echo|warm") => return,
            other => assert!(
                Instant::now() < deadline,
                "{what}: never answered (last: {other:?})\n{}",
                logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn certs(rs: &Ringside) -> Value {
    let (code, body) = rs.get("/certs");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The expiry `/certs` shows for the SDS certificate `default` of `owner`.
fn sds_expiry(rs: &Ringside, owner: &str) -> Option<i64> {
    let v = certs(rs);
    v["files"]
        .as_array()?
        .iter()
        .find(|f| f["owner"] == owner && f["path"] == "sds:sds-grpc/default")?["certificates"][0]
        ["expiration_unix_s"]
        .as_i64()
}

#[test]
fn istio_shaped_tls_over_sds_with_envoy_as_the_peer_both_ways() {
    let pki = Pki::new();
    let provider = Provider::start("A");
    let ca = pki.read("ca.pem");

    // ringside outbound (consumer's certificate over SDS) → Envoy inbound (provider's
    // certificate over SDS, client SAN by prefix as istiod's inbound chains) → provider.
    let rs_xds = XdsServer::start();
    let envoy_xds = XdsServer::start();
    let (out_listen, envoy_listen) = (local(free_port()), local(free_port()));
    let mut to_envoy = static_cluster("to-envoy", &[envoy_listen]);
    to_envoy["transport_socket"] = upstream_tls(istio_tls_context(
        &["istio-peer-exchange", "istio"],
        json!({"exact": PROVIDER_ID}),
    ));
    rs_xds
        .put(&json!({"version": "1",
            "listeners": [dubbo_to("out", out_listen, "to-envoy")],
            "clusters": [to_envoy],
            "secrets": sds_secrets(&pki.read("consumer.pem"), &pki.read("consumer.key"), &ca)}))
        .unwrap();
    let mut inbound = tcp_proxy_to("in", envoy_listen, "app");
    inbound["filter_chains"][0]["transport_socket"] = downstream_tls(istio_tls_context(
        &["istio-peer-exchange", "h2", "http/1.1"],
        json!({"prefix": "spiffe://cluster.local/"}),
    ));
    envoy_xds
        .put(&json!({"version": "1",
            "listeners": [inbound],
            "clusters": [static_cluster("app", &[provider.addr])],
            "secrets": sds_secrets(&pki.read("provider.pem"), &pki.read("provider.key"), &ca)}))
        .unwrap();
    let envoy_in = envoy(&envoy_xds, "envoy-in");
    let rs_out = ringside(&rs_xds, "ringside-out");
    wait_answered(out_listen, "ringside → Envoy", &|| envoy_in.log());
    for i in 0..5 {
        let text = format!("to-envoy-{i}");
        assert_eq!(echo(out_listen, &text), Ok(format!("A|echo|{text}")));
    }
    let handshakes = format!(
        "listener.{}_{}.ssl.handshake",
        envoy_listen.ip(),
        envoy_listen.port()
    );
    assert!(envoy_in.stat(&handshakes) >= 1, "{}", envoy_in.log());
    assert_eq!(
        sds_expiry(&rs_out, "cluster to-envoy"),
        Some(NOT_AFTER_UNIX_S),
        "{}",
        certs(&rs_out)
    );
    // Both secrets were asked for on the Unix socket, and ACKed.
    let sds: Vec<Value> = rs_xds
        .requests()
        .into_iter()
        .filter(|r| r["type"] == SDS && r["ack"] == true)
        .collect();
    assert!(!sds.is_empty(), "no SDS ACK: {:?}", rs_xds.requests());
    let names = sds[0]["resource_names"].as_array().unwrap();
    assert_eq!(names, &[json!("ROOTCA"), json!("default")]);

    // Envoy outbound (consumer's certificate) → ringside inbound (DownstreamTlsContext as
    // istiod's inbound chains, provider's certificate over SDS) → provider.
    let rs_xds = XdsServer::start();
    let envoy_xds = XdsServer::start();
    let (in_listen, envoy_out) = (local(free_port()), local(free_port()));
    let mut inbound = dubbo_to("in", in_listen, "app");
    inbound["filter_chains"][0]["transport_socket"] = downstream_tls(istio_tls_context(
        &["istio-peer-exchange", "h2", "http/1.1"],
        json!({"prefix": "spiffe://cluster.local/"}),
    ));
    rs_xds
        .put(&json!({"version": "1",
            "listeners": [inbound],
            "clusters": [static_cluster("app", &[provider.addr])],
            "secrets": sds_secrets(&pki.read("provider.pem"), &pki.read("provider.key"), &ca)}))
        .unwrap();
    let mut to_rs = static_cluster("to-ringside", &[in_listen]);
    to_rs["transport_socket"] = upstream_tls(istio_tls_context(
        &["istio-peer-exchange", "istio"],
        json!({"exact": PROVIDER_ID}),
    ));
    envoy_xds
        .put(&json!({"version": "1",
            "listeners": [tcp_proxy_to("out", envoy_out, "to-ringside")],
            "clusters": [to_rs],
            "secrets": sds_secrets(&pki.read("consumer.pem"), &pki.read("consumer.key"), &ca)}))
        .unwrap();
    let rs_in = ringside(&rs_xds, "ringside-in");
    let _envoy_out = envoy(&envoy_xds, "envoy-out");
    wait_answered(envoy_out, "Envoy → ringside", &|| {
        let tls: Vec<String> = rs_in
            .get("/stats")
            .1
            .lines()
            .filter(|l| l.contains("tls") || l.contains("cx_total"))
            .map(String::from)
            .collect();
        format!("{}\n{tls:#?}\n{}", _envoy_out.log(), certs(&rs_in))
    });
    // Handshakes Envoy tried while warming (before ringside had its SDS secret) may have
    // failed; none fails once both are warm.
    let warm_errors = rs_in.stat_value("listener.in.downstream_tls_error");
    for i in 0..5 {
        let text = format!("from-envoy-{i}");
        assert_eq!(echo(envoy_out, &text), Ok(format!("A|echo|{text}")));
    }
    assert!(
        rs_in
            .stat_value("listener.in.downstream_tls_handshake")
            .unwrap_or(0)
            >= 1
    );
    assert_eq!(
        rs_in.stat_value("listener.in.downstream_tls_error"),
        warm_errors
    );
    assert_eq!(sds_expiry(&rs_in, "listener in"), Some(NOT_AFTER_UNIX_S));
}

/// The expiry (notAfter, as openssl prints it) of the certificate a TLS server on `addr`
/// presents to a client with `pki`'s consumer certificate, or why there is none.
fn served_not_after(pki: &Pki, addr: SocketAddr) -> Result<String, String> {
    use std::process::{Command, Stdio};
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-showcerts"])
        .args([
            "-cert",
            &pki.path("consumer.pem"),
            "-key",
            &pki.path("consumer.key"),
        ])
        .args(["-CAfile", &pki.path("ca.pem")])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or("no certificate")?;
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .ok_or("no certificate end")?
        + start
        + "-----END CERTIFICATE-----".len();
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-enddate"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("openssl: {e}"))?;
    use std::io::Write;
    x.stdin
        .take()
        .unwrap()
        .write_all(text[start..end].as_bytes())
        .unwrap();
    let out = x.wait_with_output().map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn certificate_rotation_over_sds_during_a_load_run_fails_no_call() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIP certificate_rotation_over_sds_during_a_load_run_fails_no_call: no openssl binary (it reads the served certificate)");
        return;
    }
    let pki = Pki::new();
    let provider = Provider::start("A");
    let ca = pki.read("ca.pem");
    // ringside inbound (istiod's shape, certificate over SDS) ← ringside outbound (files).
    let xds = XdsServer::start();
    let in_listen = local(free_port());
    let mut inbound = dubbo_to("in", in_listen, "app");
    inbound["filter_chains"][0]["transport_socket"] = downstream_tls(istio_tls_context(
        &["istio"],
        json!({"prefix": "spiffe://cluster.local/"}),
    ));
    xds.put(&json!({"version": "1",
        "listeners": [inbound],
        "clusters": [static_cluster("app", &[provider.addr])],
        "secrets": sds_secrets(&pki.read("provider.pem"), &pki.read("provider.key"), &ca)}))
        .unwrap();
    let rs_in = ringside(&xds, "ringside-in");
    let (out_admin, out_listen) = (local(free_port()), local(free_port()));
    let out_yaml = format!(
        "admin: {{address: {out_admin}}}\n\
         listeners:\n  - {{name: out, address: {out_listen}, protocol: dubbo, cluster: peer}}\n\
         clusters:\n\
         \x20 - name: peer\n    endpoints: [\"{in_listen}\"]\n    timeout_ms: 3000\n\
         \x20   tls:\n      cert_chain: {}\n      private_key: {}\n      ca: {}\n\
         \x20     alpn: [istio]\n      subject_alt_names: [\"{PROVIDER_ID}\"]\n",
        pki.path("consumer.pem"),
        pki.path("consumer.key"),
        pki.path("ca.pem"),
    );
    let _rs_out = Ringside::start(&out_yaml, out_admin, &["--shards", "1"]);
    wait_answered(out_listen, "outbound → inbound", &|| String::new());
    assert_eq!(sds_expiry(&rs_in, "listener in"), Some(NOT_AFTER_UNIX_S));
    let before = served_not_after(&pki, in_listen).unwrap();
    assert!(before.contains("2031"), "{before}");

    // Load: 4 consumers calling back to back through the outbound, one upstream TLS
    // connection, until told to stop; every answer must be the provider's.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
            std::thread::spawn(move || {
                let mut c = Consumer::connect(out_listen);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("w{w}-{i}");
                    let args = [codec::dubbo::encode::Arg::Str(&text)];
                    let a =
                        c.call(codec::dubbo::encode::RequestBuilder::new(ECHO, "echo").args(&args));
                    if a.status == codec::dubbo::Status::Ok && a.text == format!("A|echo|{text}") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed call {text}: {:?} {}", a.status, a.text);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let ok_before = ok.load(Ordering::Relaxed);
    assert!(ok_before > 0, "no call answered before the rotation");

    // Rotation: pilot-agent pushes a new `default` (expiring 2032-01-15).
    let (cert, key) = pki.issue(PROVIDER_ID, (2032, 1, 15));
    xds.patch(&json!({"version": "2", "secrets": [
        {"name": "default", "tls_certificate": {
            "certificate_chain": {"inline_string": cert},
            "private_key": {"inline_string": key}}}]}))
        .unwrap();
    let rotated = 1_957_737_600; // 2032-01-15T00:00:00Z
    let deadline = Instant::now() + Duration::from_secs(10);
    while sds_expiry(&rs_in, "listener in") != Some(rotated) {
        assert!(
            Instant::now() < deadline,
            "rotation not applied: {}",
            certs(&rs_in)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // New handshakes get the new certificate at once.
    let after = served_not_after(&pki, in_listen).unwrap();
    assert!(after.contains("2032"), "{after}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    assert_eq!(bad, 0, "{bad} calls failed ({ok} answered)");
    assert!(ok > ok_before, "no call answered after the rotation");
    // The outbound's connection survived the rotation: one handshake from it, plus the two
    // openssl probes.
    assert_eq!(
        rs_in.stat_value("listener.in.downstream_tls_handshake"),
        Some(3)
    );
}

/// istiod's auto-mTLS cluster for a Dubbo service and its EDS assignment, verbatim from the
/// fixture `aeraki-dubbo.json` (`cluster_tls.go`: `transport_socket_matches` `tlsMode-istio` →
/// ISTIO_MUTUAL over SDS, `tlsMode-disabled` `{}` → raw_buffer; the endpoint's
/// `envoy.transport_socket_match` `{tlsMode: istio}`).
fn auto_mtls_fixture() -> (Value, Value) {
    let p = common::peers::root().join("dataplane/tests/fixtures/istio/aeraki-dubbo.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let name = "outbound|20880||org.apache.dubbo.samples.basic.api.demoservice";
    let cluster = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone();
    let endpoints = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cluster_name"] == name)
        .unwrap()
        .clone();
    assert_eq!(
        cluster["transport_socket_matches"][0]["match"]["tlsMode"],
        "istio"
    );
    (cluster, endpoints)
}

/// Dubbo calls on new connections to `addr` until both providers answered (the balancer picks
/// each within a few calls), at most 40: the providers that answered, or the first failure.
fn providers_reached(addr: SocketAddr) -> Result<std::collections::BTreeSet<String>, String> {
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let text = format!("m{i}");
        let got = echo(addr, &text)?;
        let (who, rest) = got.split_once('|').ok_or(got.clone())?;
        if rest != format!("echo|{text}") {
            return Err(got);
        }
        seen.insert(who.to_string());
        if seen.len() == 2 {
            break;
        }
    }
    Ok(seen)
}

#[test]
fn istio_auto_mtls_tls_to_sidecar_endpoints_plaintext_to_the_others_like_envoy() {
    let pki = Pki::new();
    let ca = pki.read("ca.pem");
    // "B": a pod with a sidecar (Envoy inbound, STRICT mTLS, the SAN istiod's cluster names);
    // "A": a legacy pod without one (plaintext provider, no tlsMode label).
    let (legacy, meshed) = (Provider::start("A"), Provider::start("B"));
    let (cluster, mut assignment) = auto_mtls_fixture();
    let san = cluster["transport_socket_matches"][0]["transport_socket"]["typed_config"]
        ["common_tls_context"]["combined_validation_context"]["default_validation_context"]
        ["match_subject_alt_names"][0]["exact"]
        .as_str()
        .unwrap()
        .to_string();
    let (cert, key) = pki.issue(&san, NOT_AFTER);
    let envoy_in_xds = XdsServer::start();
    let sidecar_in = local(free_port());
    let mut inbound = tcp_proxy_to("in", sidecar_in, "app");
    // Not `istio-peer-exchange`: this Envoy has no istio.metadata_exchange filter to speak it
    // (istio-proxy offers it only on chains that have it), and ringside's outbound cluster
    // (istiod's, with the filter) would negotiate it.
    inbound["filter_chains"][0]["transport_socket"] = downstream_tls(istio_tls_context(
        &["istio"],
        json!({"prefix": "spiffe://cluster.local/"}),
    ));
    envoy_in_xds
        .put(&json!({"version": "1", "listeners": [inbound],
            "clusters": [static_cluster("app", &[meshed.addr])],
            "secrets": sds_secrets(&cert, &key, &ca)}))
        .unwrap();
    let envoy_in = envoy(&envoy_in_xds, "sidecar-in");

    // The service's endpoints: the meshed pod (istiod's labelled endpoint, readdressed) and the
    // legacy pod (no metadata).
    let eps = assignment["endpoints"][0]["lb_endpoints"]
        .as_array_mut()
        .unwrap();
    eps[0]["endpoint"]["address"] = socket(sidecar_in);
    eps.push(json!({"endpoint": {"address": socket(legacy.addr)}, "load_balancing_weight": 1}));
    let name = cluster["name"].as_str().unwrap().to_string();
    let outbound = |dubbo: SocketAddr, tcp: SocketAddr, cluster: &Value| {
        json!({"version": "1",
            "listeners": [dubbo_to("out", dubbo, &name), tcp_proxy_to("out-tcp", tcp, &name)],
            "clusters": [cluster], "endpoints": [assignment],
            "secrets": sds_secrets(&pki.read("consumer.pem"), &pki.read("consumer.key"), &ca)})
    };

    // ringside outbound, given istiod's resources as they are.
    let rs_xds = XdsServer::start();
    let (rs_dubbo, rs_tcp) = (local(free_port()), local(free_port()));
    rs_xds.put(&outbound(rs_dubbo, rs_tcp, &cluster)).unwrap();
    let rs = ringside(&rs_xds, "ringside-out");
    // Envoy outbound (the oracle), the same resources without the Istio-only cluster filter
    // (istio.metadata_exchange: only istio-proxy builds have it).
    let mut plain = cluster.clone();
    plain.as_object_mut().unwrap().remove("filters");
    let envoy_xds = XdsServer::start();
    let (envoy_dubbo, envoy_tcp) = (local(free_port()), local(free_port()));
    envoy_xds
        .put(&outbound(envoy_dubbo, envoy_tcp, &plain))
        .unwrap();
    let envoy_out = envoy(&envoy_xds, "envoy-out");

    let both: std::collections::BTreeSet<String> = ["A", "B"].map(String::from).into();
    let rs_logs = || format!("{:#?}", certs(&rs));
    wait_answered(rs_dubbo, "ringside dubbo", &rs_logs);
    assert_eq!(
        providers_reached(rs_dubbo),
        Ok(both.clone()),
        "{}",
        rs_logs()
    );
    wait_answered(envoy_dubbo, "Envoy dubbo", &|| envoy_out.log());
    assert_eq!(
        providers_reached(envoy_dubbo),
        Ok(both.clone()),
        "{}",
        envoy_out.log()
    );
    // TCP (tcp_proxy): each connection to one endpoint, TLS to the meshed one only.
    for (what, addr) in [("ringside tcp", rs_tcp), ("Envoy tcp", envoy_tcp)] {
        assert_eq!(providers_reached(addr), Ok(both.clone()), "{what}");
    }
    // TLS connections reached the sidecar: ringside's Dubbo pool connection, its tcp proxy's
    // connection(s), and Envoy's (whose tcp_proxy may reuse the idle connection its
    // dubbo_proxy released to the cluster's TCP pool).
    let handshakes = format!(
        "listener.{}_{}.ssl.handshake",
        sidecar_in.ip(),
        sidecar_in.port()
    );
    let n = envoy_in.stat(&handshakes);
    assert!(n >= 3, "{n} handshakes\n{}", envoy_in.get("/stats"));
    assert_eq!(
        sds_expiry(&rs, &format!("cluster {name}/tlsMode-istio")),
        Some(NOT_AFTER_UNIX_S),
        "{}",
        certs(&rs)
    );
}

/// A ringside and an Envoy each given the snapshot `inbound` makes for its own address, by
/// its own xDS server (kept alive with them).
struct Inbounds {
    rs: Ringside,
    envoy: Envoy,
    _xds: [XdsServer; 2],
}

fn inbounds(
    rs_in: SocketAddr,
    envoy_in: SocketAddr,
    inbound: &dyn Fn(SocketAddr) -> Value,
) -> Inbounds {
    let rs_xds = XdsServer::start();
    rs_xds.put(&inbound(rs_in)).unwrap();
    let rs = ringside(&rs_xds, "ringside-in");
    let envoy_xds = XdsServer::start();
    envoy_xds.put(&inbound(envoy_in)).unwrap();
    let envoy = envoy(&envoy_xds, "envoy-in");
    Inbounds {
        rs,
        envoy,
        _xds: [rs_xds, envoy_xds],
    }
}

/// istiod's `envoy.filters.network.rbac` for an AuthorizationPolicy, from its golden files
/// (fixtures/istio/rbac, copied from istio/istio pilot/pkg/security/authz/builder/testdata/tcp):
/// `allow-both-http-tcp-out` (ALLOW port 80 from principals `.*/ns/ns-1/.*`) with the shadow
/// rules of `dry-run-mix-out` (a dry-run ALLOW of port 80), port 80 being `port` here.
fn istiod_rbac(port: u16) -> Value {
    let golden = |f: &str| -> Value {
        let p = common::peers::root().join(format!("dataplane/tests/fixtures/istio/rbac/{f}.yaml"));
        serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    fn port_80_to(v: &mut Value, port: u16) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if k == "destinationPort" && *v == json!(80) {
                        *v = json!(port);
                    } else {
                        port_80_to(v, port);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|v| port_80_to(v, port)),
            _ => {}
        }
    }
    let mut f = golden("allow-both-http-tcp-out");
    f["typedConfig"]["shadowRules"] =
        golden("dry-run-mix-out")["typedConfig"]["shadowRules"].clone();
    port_80_to(&mut f, port);
    f
}

#[test]
fn istiod_network_rbac_by_spiffe_id_and_port_like_envoy() {
    let pki = Pki::new();
    let ca = pki.read("ca.pem");
    let provider = Provider::start("A");
    let (rs_in, envoy_in) = (local(free_port()), local(free_port()));
    // The same inbound for both: mTLS (istiod's inbound context), then istiod's rbac filter,
    // then dubbo_proxy to the provider.
    let inbound = |addr: SocketAddr| {
        let mut l = dubbo_to("in", addr, "app");
        let proxy = l["filter_chains"][0]["filters"][0].clone();
        l["filter_chains"][0]["filters"] = json!([istiod_rbac(addr.port()), proxy]);
        l["filter_chains"][0]["transport_socket"] = downstream_tls(istio_tls_context(
            &["istio"],
            json!({"prefix": "spiffe://cluster.local/"}),
        ));
        json!({"version": "1", "listeners": [l],
            "clusters": [static_cluster("app", &[provider.addr])],
            "secrets": sds_secrets(&pki.read("provider.pem"), &pki.read("provider.key"), &ca)})
    };
    let Inbounds {
        rs, envoy, _xds, ..
    } = inbounds(rs_in, envoy_in, &inbound);

    // Callers: a ringside outbound presenting an `ns-1` identity (allowed) or a `default` one
    // (denied by the ALLOW policy), to each inbound.
    let dir = TempDir::new("rbac");
    let (ok_cert, ok_key) = pki.issue("spiffe://cluster.local/ns/ns-1/sa/consumer", NOT_AFTER);
    let files = [
        (
            "ok",
            dir.write("ok.pem", &ok_cert),
            dir.write("ok.key", &ok_key),
        ),
        (
            "no",
            pki.path("consumer.pem").into(),
            pki.path("consumer.key").into(),
        ),
    ];
    let admin = local(free_port());
    let mut yaml = format!("admin: {{address: {admin}}}\nlisteners:\n");
    let mut clusters = String::from("clusters:\n");
    let mut addrs = std::collections::HashMap::new();
    for (who, cert, key) in &files {
        for (side, target) in [("rs", rs_in), ("envoy", envoy_in)] {
            let (name, listen) = (format!("{who}-{side}"), local(free_port()));
            addrs.insert(name.clone(), listen);
            yaml += &format!(
                "  - {{name: {name}, address: {listen}, protocol: dubbo, cluster: {name}}}\n"
            );
            clusters += &format!(
                "  - name: {name}\n    endpoints: [\"{target}\"]\n    timeout_ms: 3000\n    \
                 tls: {{cert_chain: {}, private_key: {}, ca: {}, alpn: [istio], subject_alt_names: [\"{PROVIDER_ID}\"]}}\n",
                cert.display(),
                key.display(),
                pki.path("ca.pem")
            );
        }
    }
    let _out = Ringside::start(&(yaml + &clusters), admin, &["--shards", "1"]);
    wait_answered(addrs["ok-rs"], "allowed → ringside", &|| String::new());
    wait_answered(addrs["ok-envoy"], "allowed → Envoy", &|| envoy.log());
    for side in ["rs", "envoy"] {
        let text = format!("via-{side}");
        assert_eq!(
            echo(addrs[&format!("ok-{side}")], &text),
            Ok(format!("A|echo|{text}"))
        );
        let denied = echo(addrs[&format!("no-{side}")], "denied");
        assert!(
            denied.is_err(),
            "{side}: a denied identity was answered: {denied:?}"
        );
    }
    // Envoy's counters, same names: the enforced rules allowed and denied, the shadow rules
    // (port only) allowed every connection.
    let names = [
        "tcp.rbac.allowed",
        "tcp.rbac.denied",
        "tcp.rbac.istio_dry_run_allow_.shadow_allowed",
        "tcp.rbac.istio_dry_run_allow_.shadow_denied",
    ];
    let rs_stats: Vec<u64> = names
        .iter()
        .map(|n| rs.stat_value(n).map_or(u64::MAX, |v| v as u64))
        .collect();
    let envoy_stats: Vec<u64> = names.iter().map(|n| envoy.stat(n)).collect();
    for (who, s) in [("ringside", &rs_stats), ("Envoy", &envoy_stats)] {
        assert!(s[0] >= 1 && s[1] >= 1, "{who}: {names:?} = {s:?}");
        assert_eq!(s[2], s[0] + s[1], "{who}: {names:?} = {s:?}");
        assert_eq!(s[3], 0, "{who}: {names:?} = {s:?}");
    }
}

/// istiod's `envoy.filters.http.rbac` filters for two AuthorizationPolicies, from its golden
/// files (fixtures/istio/rbac/http, copied from istio/istio
/// pilot/pkg/security/authz/builder/testdata/http): `deny-and-allow-out1` (DENY principal
/// `spiffe://deny`, here the rogue's id) and `dry-run-mix-out` (ALLOW path `/another`, here
/// `allowed`; a dry-run ALLOW of `/allow`, here `shadow`), in that order (istiod puts DENY
/// first).
fn istiod_http_rbac(allowed: &str, shadow: &str) -> Vec<Value> {
    let golden = |f: &str| -> String {
        let p = common::peers::root()
            .join(format!("dataplane/tests/fixtures/istio/rbac/http/{f}.yaml"));
        std::fs::read_to_string(p).unwrap()
    };
    let deny = golden("deny-and-allow-out1").replace("spiffe://deny", ROGUE_ID);
    let allow = golden("dry-run-mix-out")
        .replace("exact: /another", &format!("exact: {allowed}"))
        .replace("exact: /allow", &format!("exact: {shadow}"));
    [deny, allow]
        .iter()
        .map(|y| serde_yaml::from_str(y).unwrap())
        .collect()
}

/// An inbound for both proxies: mTLS (istiod's inbound context), an HTTP connection manager
/// with the given HTTP `filters` before the router, routing everything to the gRPC `server`.
fn rbac_grpc_inbound(
    addr: SocketAddr,
    mut filters: Vec<Value>,
    server: &common::grpc::GrpcServer,
    pki: &Pki,
) -> Value {
    filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    let hcm = json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound_grpc",
        "codec_type": "HTTP2",
        "http_filters": filters,
        "route_config": {"name": "in", "virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]}}});
    let mut app = static_cluster("app", &[server.addr()]);
    app["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
    let l = json!({"name": "in", "address": socket(addr), "filter_chains": [{
        "filters": [hcm],
        "transport_socket": downstream_tls(istio_tls_context(
            &["h2"], json!({"prefix": "spiffe://cluster.local/"})))}]});
    json!({"version": "1", "listeners": [l], "clusters": [app],
        "secrets": sds_secrets(&pki.read("provider.pem"), &pki.read("provider.key"), &pki.read("ca.pem"))})
}

#[test]
fn istiod_http_rbac_on_grpc_calls_like_envoy() {
    use common::grpc::{grpc_call, Call, CallOpts, ClientTls, GrpcServer};
    let pki = Pki::new();
    let server = GrpcServer::start(0, "G", &[]);
    let (rs_in, envoy_in) = (local(free_port()), local(free_port()));
    const UNARY: &str = "/helloworld.Greeter/SayHello";
    const STREAM: &str = "/helloworld.Greeter/SayHelloStream";
    let inbound =
        |addr: SocketAddr| rbac_grpc_inbound(addr, istiod_http_rbac(UNARY, STREAM), &server, &pki);
    let Inbounds {
        rs, envoy, _xds, ..
    } = inbounds(rs_in, envoy_in, &inbound);

    let tls = |who: &str| ClientTls {
        ca: pki.dir.0.join("ca.pem"),
        cert: Some((
            pki.dir.0.join(format!("{who}.pem")),
            pki.dir.0.join(format!("{who}.key")),
        )),
        authority: PROVIDER_DNS.into(),
    };
    let names = [
        "http.inbound_grpc.rbac.allowed",
        "http.inbound_grpc.rbac.denied",
        "http.inbound_grpc.rbac.istio_dry_run_allow_.shadow_allowed",
        "http.inbound_grpc.rbac.istio_dry_run_allow_.shadow_denied",
    ];
    for (side, addr) in [("ringside", rs_in), ("Envoy", envoy_in)] {
        let counters = || -> Vec<u64> {
            names
                .iter()
                .map(|n| match side {
                    "ringside" => rs.stat_value(n).map_or(u64::MAX, |v| v as u64),
                    _ => envoy.stat(n),
                })
                .collect()
        };
        // Warm: the listener and the SDS secrets arrive.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = grpc_call(
                addr,
                &CallOpts::default().tls(tls("consumer")).timeout_s(2.0),
            );
            if out.ok {
                break;
            }
            assert!(Instant::now() < deadline, "{side}: never answered: {out:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let before = counters();
        // Allowed: the consumer's unary calls (two on one connection).
        let out = grpc_call(addr, &CallOpts::default().count(2).tls(tls("consumer")));
        assert!(out.ok, "{side}: {out:?}");
        assert_eq!(out.servers(), ["G", "G"], "{side}");
        // Denied by the ALLOW policy (its path is not allowed).
        let out = grpc_call(
            addr,
            &CallOpts::new(Call::ServerStream).tls(tls("consumer")),
        );
        assert_eq!(
            (out.code.as_str(), out.details.as_str()),
            ("PERMISSION_DENIED", "RBAC: access denied"),
            "{side}: {out:?}"
        );
        // Denied by the DENY policy (the rogue's SPIFFE id).
        let out = grpc_call(addr, &CallOpts::default().tls(tls("rogue")));
        assert_eq!(
            (out.code.as_str(), out.details.as_str()),
            ("PERMISSION_DENIED", "RBAC: access denied"),
            "{side}: {out:?}"
        );
        // Both filters count under the same names: DENY allowed 3 and denied 1, ALLOW allowed
        // 2 and denied 1; its shadow rules allowed the stream call, denied the unary ones.
        let after = counters();
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(
            delta,
            [5, 2, 1, 2],
            "{side}: {names:?} before {before:?} after {after:?}"
        );
    }
}

/// istiod's `uriTemplate` path permissions (AuthorizationPolicy `paths` with `{*}` / `{**}`),
/// in the shape of its golden file `allow-path-out.yaml` (istio/istio
/// pilot/pkg/security/authz/builder/testdata/http): an ALLOW policy whose paths are
/// `/helloworld.Greeter/{*}` and `/{**}/SayHello` and whose notPaths is `/{**}/SayHelloStream`.
/// gRPC calls whose `:path` tells `*` (one segment) from `**` (any) must get the same answer
/// through ringside and Envoy 1.40.
#[test]
fn istiod_uri_template_paths_like_envoy() {
    use common::grpc::{grpc_call, Call, CallOpts, ClientTls, GrpcServer};
    let pki = Pki::new();
    let server = GrpcServer::start(0, "G", &[]);
    let (rs_in, envoy_in) = (local(free_port()), local(free_port()));
    let template = |t: &str| {
        json!({"uriTemplate": {"name": "uri-template", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
            "pathTemplate": t}}})
    };
    let rbac = json!({"name": "envoy.filters.http.rbac", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"policies": {"ns[foo]-policy[httpbin-1]-rule[0]": {
            "permissions": [{"andRules": {"rules": [
                {"orRules": {"rules": [template("/helloworld.Greeter/*"), template("/**/SayHello")]}},
                {"notRule": {"orRules": {"rules": [template("/**/SayHelloStream")]}}}]}}],
            "principals": [{"andIds": {"ids": [{"any": true}]}}]}}},
        "shadowRulesStatPrefix": "istio_dry_run_allow_"}});
    let inbound = |addr: SocketAddr| rbac_grpc_inbound(addr, vec![rbac.clone()], &server, &pki);
    let Inbounds {
        rs: _rs,
        envoy: _envoy,
        _xds,
        ..
    } = inbounds(rs_in, envoy_in, &inbound);
    let tls = ClientTls {
        ca: pki.dir.0.join("ca.pem"),
        cert: Some((
            pki.dir.0.join("consumer.pem"),
            pki.dir.0.join("consumer.key"),
        )),
        authority: PROVIDER_DNS.into(),
    };
    // (call, service, expected status): OK and UNIMPLEMENTED passed the filter (the server
    // knows only helloworld.Greeter), PERMISSION_DENIED did not.
    let cases = [
        (Call::Unary, "helloworld.Greeter", "OK"),
        (Call::ClientStream, "helloworld.Greeter", "OK"),
        (
            Call::ServerStream,
            "helloworld.Greeter",
            "PERMISSION_DENIED",
        ),
        (Call::Unary, "a.B", "UNIMPLEMENTED"),
        (Call::Unary, "x/y.Z", "UNIMPLEMENTED"),
        (Call::ServerStream, "a.B", "PERMISSION_DENIED"),
        (Call::Bidi, "helloworld.Greeter/x", "PERMISSION_DENIED"),
        (Call::Unary, "helloworld.Greeter/x", "UNIMPLEMENTED"),
    ];
    for (side, addr) in [("ringside", rs_in), ("Envoy", envoy_in)] {
        // Warm: the listener and the SDS secrets arrive.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = grpc_call(addr, &CallOpts::default().tls(tls.clone()).timeout_s(2.0));
            if out.ok {
                break;
            }
            assert!(Instant::now() < deadline, "{side}: never answered: {out:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let got: Vec<String> = cases
            .iter()
            .map(|(call, service, _)| {
                let out = grpc_call(
                    addr,
                    &CallOpts::new(*call).service(service).tls(tls.clone()),
                );
                if out.ok {
                    "OK".to_string()
                } else {
                    out.code
                }
            })
            .collect();
        let want: Vec<&str> = cases.iter().map(|c| c.2).collect();
        assert_eq!(got, want, "{side}: {cases:?}");
    }
}

/// istiod's serving identity: its service's DNS name (what Istio's bootstrap matches) and its
/// SPIFFE id.
const ISTIOD_DNS: &str = "istiod.istio-system.svc";
const ISTIOD_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istiod";

/// A ringside whose ADS stream goes to `xds` over TLS (`xds.tls`: `ca`, the server's SANs, the
/// consumer's certificate), its stderr in a file (the connect errors are read from it).
fn ringside_ads_tls(xds: &XdsServer, ca: &str, san: &str, pki: &Pki) -> (Ringside, TempDir) {
    let logs = TempDir::new("ads-tls-log");
    let log = std::fs::File::create(logs.0.join("stderr")).unwrap();
    let admin = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\n\
         xds:\n  server: {}\n  node_id: sidecar~127.0.0.1~c.default~default.svc.cluster.local\n  \
         initial_fetch_timeout_ms: 300\n  retry_initial_ms: 100\n  retry_max_ms: 300\n  \
         tls:\n    ca: {ca}\n    cert_chain: {}\n    private_key: {}\n    \
         subject_alt_names: [\"{san}\"]\n    sni: {ISTIOD_DNS}\n",
        xds.addr(),
        pki.path("consumer.pem"),
        pki.path("consumer.key"),
    );
    let rs = Ringside::start_with(&config, admin, &["--shards", "1"], |c| {
        c.stderr(log);
    });
    (rs, logs)
}

/// Waits until ringside's log shows `what` (at most 10 s); the log.
fn wait_logged(logs: &TempDir, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(logs.0.join("stderr")).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(Instant::now() < deadline, "never logged {what:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ads_over_tls_is_acked_and_a_wrong_ca_or_san_is_refused_without_plaintext() {
    let pki = Pki::new();
    pki.write_leaf("istiod", ISTIOD_ID, &[ISTIOD_DNS]);
    // istiod's 15012 as a TLS-only server requiring a client certificate of the mesh CA.
    let xds = XdsServer::start_tls(
        &pki.path("istiod.pem"),
        &pki.path("istiod.key"),
        Some(&pki.path("ca.pem")),
    );
    let upstream = local(free_port());
    xds.put(&json!({"version": "v1", "clusters": [static_cluster("c1", &[upstream])]}))
        .unwrap();

    // The right trust bundle and istiod's DNS SAN: the snapshot is ACKed through TLS.
    let (rs, _logs) = ringside_ads_tls(&xds, &pki.path("ca.pem"), ISTIOD_DNS, &pki);
    xds.wait_ack(CDS, "v1");
    let dump = rs.get("/config_dump").1;
    assert!(dump.contains("\"c1\""), "{dump}");
    drop(rs);

    // Another CA's trust bundle: every handshake fails, the error names the certificate, and
    // nothing ever reaches the server (no plaintext fallback).
    let other = Pki::new();
    xds.reset();
    let (rs, logs) = ringside_ads_tls(&xds, &other.path("ca.pem"), ISTIOD_DNS, &pki);
    // (The other CA has the same subject: its signature, not its name, fails.)
    let text = wait_logged(&logs, "TLS handshake");
    assert!(
        text.contains("peer certificate: InvalidSignatureForPublicKey"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(xds.requests().is_empty(), "{:?}", xds.requests());
    assert_ne!(rs.stat_value("xds.connected"), Some(1));
    drop(rs);

    // The right CA, a SAN istiod's certificate does not carry: refused, naming both.
    xds.reset();
    let (rs, logs) = ringside_ads_tls(&xds, &pki.path("ca.pem"), "istiod.other.svc", &pki);
    let text = wait_logged(&logs, "match none of");
    assert!(
        text.contains(ISTIOD_DNS) && text.contains("istiod.other.svc"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(xds.requests().is_empty(), "{:?}", xds.requests());
    drop(rs);
}

/// A permission or principal rule of Aeraki's Dubbo authz (`internal/plugin/dubbo/authz/model`:
/// each condition an `or` of its values, the conditions of a rule an `and`).
fn aeraki_and(kind: &str, items: Vec<Value>) -> Value {
    let (and, or, list) = match kind {
        "permission" => ("andRules", "orRules", "rules"),
        _ => ("andIds", "orIds", "ids"),
    };
    let ors: Vec<Value> = items
        .into_iter()
        .map(|i| json!({ or: { list: [i] } }))
        .collect();
    json!({ and: { list: ors } })
}

/// `to.operation.interfaces` / `methods` as Aeraki writes them: a metadata matcher on the
/// `envoy.filters.dubbo.rbac` filter's `service` / `method` (`*` suffix: a prefix).
fn aeraki_operation(key: &str, value: &str) -> Value {
    let m = match value.strip_suffix('*') {
        Some(p) => json!({"prefix": p}),
        None => json!({"exact": value}),
    };
    json!({"metadata": {"filter": "envoy.filters.dubbo.rbac", "path": [{"key": key}],
        "value": {"stringMatch": m}}})
}

/// Aeraki's inbound dubbo_proxy (`internal/plugin/dubbo/dubboproxy.go` `buildInboundProxy`,
/// `authz/builder`) for two DubboAuthorizationPolicies of namespace `default`: `deny-add`
/// (DENY, `to.operation.methods: [add]`) and `allow-ns-1` (ALLOW, `from.source.namespaces:
/// [ns-1]`, `to.operation.interfaces: [com.ringside.test.*]`): a DENY rbac filter, an ALLOW one,
/// the router; as the TypedStruct of Aeraki's EnvoyFilter (protojson, lowerCamelCase).
fn aeraki_inbound_dubbo_proxy(cluster: &str) -> Value {
    let rbac = |action: Option<&str>, name: &str, permission: Value, principal: Value| {
        let mut rules = json!({"policies": {
            format!("ns[default]-policy[{name}]-rule[0]"): {
                "permissions": [permission], "principals": [principal]}}});
        if let Some(a) = action {
            rules["action"] = json!(a);
        }
        json!({"name": "envoy.filters.dubbo.rbac", "config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "rules": rules, "statPrefix": "dubbo."}})
    };
    let any_principal = json!({"andIds": {"ids": [{"any": true}]}});
    let ns_1 = json!({"authenticated": {"principalName": {"safeRegex": {"googleRe2": {}, "regex": ".*/ns/ns-1/.*"}}}});
    json!({"name": "envoy.filters.network.dubbo_proxy", "typed_config": {
    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type_url": "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy",
    "value": {
        "statPrefix": cluster, "protocolType": "Dubbo", "serializationType": "Hessian2",
        "routeConfig": [{"name": cluster, "interface": "*", "routes": [{
            "match": {"method": {"name": {"safeRegex": {"googleRe2": {}, "regex": ".*"}}}},
            "route": {"cluster": cluster}}]}],
        "dubboFilters": [
            rbac(Some("DENY"), "deny-add",
                aeraki_and("permission", vec![aeraki_operation("method", "add")]), any_principal),
            // ALLOW is proto3's default: protojson leaves `action` out.
            rbac(None, "allow-ns-1",
                aeraki_and("permission", vec![aeraki_operation("service", "com.ringside.test.*")]),
                aeraki_and("principal", vec![ns_1])),
            {"name": "envoy.filters.dubbo.router"}
        ]
    }}})
}

/// Aeraki's Dubbo authorization from xDS (docs/security.md#authorization): the inbound
/// dubbo_proxy above on an istiod mTLS chain, served by the test ADS server to ringside, the
/// sofa-rpc-node consumer calling through a ringside outbound that presents an `ns-1` identity
/// or a `default` one. `ns-1`: `echo` is answered, `add` denied by the DENY policy with the
/// reason; `default`: `echo` denied by the ALLOW policy. Counted per filter as Envoy's.
#[test]
fn aeraki_dubbo_authorization_policy_from_xds_by_method_and_namespace() {
    use common::peers::{node, run_consumer, NodeProvider};
    let pki = Pki::new();
    let ca = pki.read("ca.pem");
    let pa = free_port();
    let _provider = NodeProvider::start(pa, "A", &[]);
    let rs_in = local(free_port());
    let cluster = "inbound|20880||";
    let xds = XdsServer::start();
    xds.put(&json!({"version": "1",
        "listeners": [{"name": "virtualInbound-20880", "address": socket(rs_in), "filter_chains": [{
            "filters": [aeraki_inbound_dubbo_proxy(cluster)],
            "transport_socket": downstream_tls(istio_tls_context(
                &["istio"], json!({"prefix": "spiffe://cluster.local/"})))}]}],
        "clusters": [static_cluster(cluster, &[local(pa)])],
        "secrets": sds_secrets(&pki.read("provider.pem"), &pki.read("provider.key"), &ca)}))
        .unwrap();
    let rs = ringside(&xds, "ringside-in");

    let dir = TempDir::new("aeraki-rbac");
    let (ok_cert, ok_key) = pki.issue("spiffe://cluster.local/ns/ns-1/sa/consumer", NOT_AFTER);
    let (ok_cert, ok_key) = (dir.write("ok.pem", &ok_cert), dir.write("ok.key", &ok_key));
    let admin = local(free_port());
    let (ok_out, no_out) = (local(free_port()), local(free_port()));
    let tls = |cert: &str, key: &str| {
        format!(
            "tls: {{cert_chain: {cert}, private_key: {key}, ca: {}, alpn: [istio], subject_alt_names: [\"{PROVIDER_ID}\"]}}",
            pki.path("ca.pem")
        )
    };
    let yaml = format!(
        "admin: {{address: {admin}}}\nlisteners:\n\
         \x20 - {{name: ok, address: {ok_out}, protocol: dubbo, cluster: ok}}\n\
         \x20 - {{name: no, address: {no_out}, protocol: dubbo, cluster: no}}\n\
         clusters:\n\
         \x20 - {{name: ok, endpoints: [\"{rs_in}\"], timeout_ms: 5000, {}}}\n\
         \x20 - {{name: no, endpoints: [\"{rs_in}\"], timeout_ms: 5000, {}}}\n",
        tls(
            &ok_cert.display().to_string(),
            &ok_key.display().to_string()
        ),
        tls(&pki.path("consumer.pem"), &pki.path("consumer.key")),
    );
    let _out = Ringside::start(&yaml, admin, &["--shards", "1"]);
    let call = |addr: SocketAddr, interface: &str, method: &str, args: &str| {
        let mut c = node("consumer.js");
        c.args([
            "--address",
            &addr.to_string(),
            "--interface",
            interface,
            "--method",
            method,
            "--args",
            args,
        ]);
        run_consumer(c)
    };
    let stat = |n: &str| rs.stat_value(&format!("dubbo.rbac.{n}")).unwrap_or(-1);
    // The inbound listener and its SDS certificate arrive over xDS: call until answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, lines) = call(ok_out, ECHO, "echo", r#"["warm"]"#);
        if ok && lines.first().is_some_and(|l| l["result"] == "warm") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never answered: {lines:?}\n{}",
            rs.get("/stats").1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (allowed, denied) = (stat("allowed"), stat("denied"));
    assert!(allowed >= 2 && denied == 0, "{allowed} {denied}");

    let (ok, lines) = call(ok_out, ECHO, "echo", r#"["hi"]"#);
    assert!(ok && lines[0]["result"] == "hi", "{lines:?}");
    // Denied by the DENY policy: a Dubbo error carrying the reason, from the consumer.
    let (ok, lines) = call(ok_out, ECHO, "add", "[40, 2]");
    assert!(!ok, "{lines:?}");
    let err = lines[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("ringside: RBAC: access denied"), "{err}");
    // A `default` identity: allowed by the DENY filter, denied by the ALLOW one.
    let (ok, lines) = call(no_out, ECHO, "echo", r#"["hi"]"#);
    assert!(!ok, "{lines:?}");
    let err = lines[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("RBAC: access denied"), "{err}");
    // ns-1 on another interface: outside the ALLOW policy's `com.ringside.test.*`.
    let (ok, lines) = call(ok_out, "com.other.Svc", "echo", r#"["hi"]"#);
    assert!(!ok, "{lines:?}");
    // Both filters count into `dubbo.rbac.*`: echo (2 allowed), add (1 denied), default's
    // echo (1 allowed, 1 denied), com.other.Svc (1 allowed, 1 denied).
    assert_eq!(
        [stat("allowed") - allowed, stat("denied") - denied],
        [2 + 1 + 1, 1 + 1 + 1],
        "{}",
        rs.get("/stats").1
    );
}

const MX_CALLER_ID: &str =
    "sidecar~10.1.2.9~productpage-v1-123.bookinfo~bookinfo.svc.cluster.local";
const MX_REVIEWS_ID: &str = "sidecar~10.1.2.7~reviews-v2-xyz.bookinfo~bookinfo.svc.cluster.local";
const MX_IN_ID: &str = "sidecar~10.1.2.3~ratings-v1-abc.bookinfo~bookinfo.svc.cluster.local";
const MX_OUT_ID: &str = "sidecar~10.1.2.4~details-v1-def.bookinfo~bookinfo.svc.cluster.local";

/// Node metadata as istiod's pilot-agent gives it (YAML under `xds.node_metadata`), and the
/// workload `Struct` istio-proxy writes for it (JSON, for the spec peer).
fn mx_node(workload: &str, app: &str) -> (String, Value) {
    let yaml = format!(
        "  node_metadata:\n    NAME: {workload}-abc\n    NAMESPACE: bookinfo\n    \
         WORKLOAD_NAME: {workload}\n    CLUSTER_ID: Kubernetes\n    \
         LABELS: {{app: {app}, version: v1, pod-template-hash: 5f7c}}\n"
    );
    let json = json!({"NAME": format!("{workload}-abc"), "NAMESPACE": "bookinfo",
        "WORKLOAD_NAME": workload, "CLUSTER_ID": "Kubernetes",
        "LABELS": {"app": app, "version": "v1"}});
    (yaml, json)
}

/// A ringside as [`ringside`] with node metadata.
fn mx_ringside(xds: &XdsServer, node: &str, metadata: &str) -> Ringside {
    let admin = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\n\
         sds:\n  - {{name: sds-grpc, path: {}}}\n\
         xds:\n  server: {}\n  node_id: {node}\n  node_cluster: tests\n  \
         initial_fetch_timeout_ms: 20000\n  retry_initial_ms: 100\n  retry_max_ms: 1000\n{metadata}",
        xds.sds_socket.display(),
        xds.addr()
    );
    Ringside::start(&config, admin, &["--shards", "1"])
}

/// The spec peer of tests/peers/istio/tcp_exchange.py (a sidecar speaking the in-band
/// exchange), killed on drop; its report lines (one per connection) arrive on `lines`.
struct MxPeer {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Value>,
}

impl MxPeer {
    fn start(args: &[String]) -> MxPeer {
        use std::io::BufRead;
        let python = common::peers::require(common::peers::root().join(".cache/venv/bin/python"));
        let mut child = std::process::Command::new(python)
            .arg(common::peers::root().join("tests/peers/istio/tcp_exchange.py"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "tcp_exchange.py {args:?}");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { return };
                let _ = tx.send(serde_json::from_str(&l).unwrap());
            }
        });
        MxPeer { child, lines }
    }

    fn next(&self) -> Value {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the spec peer reported no connection")
    }
}

impl Drop for MxPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The spec peer's arguments: its mode, TLS as `me`, its node.
fn mx_args(
    mode: &str,
    pki: &Pki,
    me: &str,
    id: &str,
    node: &Value,
    more: &[String],
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        mode.into(),
        "--cert".into(),
        pki.path(&format!("{me}.pem")),
        "--key".into(),
        pki.path(&format!("{me}.key")),
        "--ca".into(),
        pki.path("ca.pem"),
        "--metadata".into(),
        node.to_string(),
        "--id".into(),
        id.into(),
    ];
    a.extend_from_slice(more);
    a
}

/// What istio-proxy writes in-band for node `id` with workload `node` (base64), computed by
/// the spec peer (protobuf's Python implementation: C++'s deterministic order).
fn mx_frame(id: &str, node: &Value, more: &[&str]) -> String {
    let python = common::peers::require(common::peers::root().join(".cache/venv/bin/python"));
    let out = std::process::Command::new(python)
        .arg(common::peers::root().join("tests/peers/istio/tcp_exchange.py"))
        .args(["frame", "--metadata", &node.to_string(), "--id", id])
        .args(more)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn mx_filter() -> Value {
    json!({"name": "istio.metadata_exchange", "typed_config": {
        "@type": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
        "protocol": "istio-peer-exchange"}})
}

fn istio_stats() -> Value {
    json!({"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig"}})
}

/// `listener` as istiod writes a TCP chain: istio.metadata_exchange (when `mx`) and
/// istio.stats before its proxy filter, the direction given.
fn istio_tcp_chain(mut listener: Value, dir: &str, mx: bool) -> Value {
    let chain = &mut listener["filter_chains"][0]["filters"];
    let proxy = chain[0].take();
    *chain = match mx {
        true => json!([mx_filter(), istio_stats(), proxy]),
        false => json!([istio_stats(), proxy]),
    };
    listener["traffic_direction"] = json!(dir);
    listener
}

/// The sum of the samples of `family` whose labels hold all of `want`, in a scrape of `rs`
/// (waiting up to 10 s for it to reach `n`).
fn mx_count(rs: &Ringside, family: &str, want: &[(&str, &str)], n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, prom) = rs.get("/stats/prometheus");
        let got: u64 = prom
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .filter(|l| {
                want.iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        if got >= n || Instant::now() > deadline {
            if got != n {
                let istio: Vec<&str> = prom.lines().filter(|l| l.starts_with("istio_")).collect();
                panic!("{family} {want:?}: {got}, want {n}\n{istio:#?}");
            }
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Istio's in-band TCP metadata exchange (istio-proxy's `istio.metadata_exchange`), on Dubbo
/// and tcp connections over mutual TLS, both ways, with a peer written from istio-proxy's
/// code (tests/peers/istio/tcp_exchange.py): ringside's frame is byte for byte what
/// istio-proxy writes for its node, the peer's names the peer's workload in Istio's metrics,
/// the application bytes after it pass untouched; hostile peers (a huge announced size, a
/// wrong magic) are closed. Envoy 1.40 (no such filter) negotiating another ALPN protocol:
/// no exchange, the bytes untouched.
#[test]
fn istio_in_band_metadata_exchange_on_dubbo_and_tcp_connections() {
    let pki = Pki::new();
    let ca = pki.read("ca.pem");
    let provider = Provider::start("A");
    let tcp_echo = echo_server();
    let (in_yaml, in_node) = mx_node("ratings-v1", "ratings");
    let (out_yaml, out_node) = mx_node("details-v1", "details");
    let caller = json!({"NAME": "productpage-v1-123", "NAMESPACE": "bookinfo",
        "WORKLOAD_NAME": "productpage-v1", "CLUSTER_ID": "east",
        "LABELS": {"app": "productpage", "version": "v1"}});
    let reviews = json!({"NAME": "reviews-v2-xyz", "NAMESPACE": "bookinfo",
        "WORKLOAD_NAME": "reviews-v2", "CLUSTER_ID": "west",
        "LABELS": {"app": "reviews", "version": "v2"}});

    // Inbound: ringside (provider's certificate) with istiod's inbound chains.
    let in_xds = XdsServer::start();
    let (in_dubbo, in_tcp) = (local(free_port()), local(free_port()));
    let tls_in = downstream_tls(istio_tls_context(
        &["istio-peer-exchange", "h2", "http/1.1"],
        json!({"prefix": "spiffe://cluster.local/"}),
    ));
    let mut l_dubbo = istio_tcp_chain(dubbo_to("in-dubbo", in_dubbo, "app"), "INBOUND", true);
    l_dubbo["filter_chains"][0]["transport_socket"] = tls_in.clone();
    let mut l_tcp = istio_tcp_chain(tcp_proxy_to("in-tcp", in_tcp, "echo"), "INBOUND", true);
    l_tcp["filter_chains"][0]["transport_socket"] = tls_in;
    in_xds
        .put(&json!({"version": "1", "listeners": [l_dubbo, l_tcp],
            "clusters": [static_cluster("app", &[provider.addr]), static_cluster("echo", &[tcp_echo])],
            "secrets": sds_secrets(&pki.read("provider.pem"), &pki.read("provider.key"), &ca)}))
        .unwrap();
    let rs_in = mx_ringside(&in_xds, MX_IN_ID, &in_yaml);
    // The caller's sidecar: the spec peer in front of each listener.
    let (relay_dubbo, relay_tcp) = (free_port(), free_port());
    let peer = |listen: u16, target: SocketAddr, more: &[String]| {
        let mut more = more.to_vec();
        more.extend([
            "--listen".into(),
            listen.to_string(),
            "--target".into(),
            target.to_string(),
        ]);
        MxPeer::start(&mx_args(
            "client",
            &pki,
            "consumer",
            MX_CALLER_ID,
            &caller,
            &more,
        ))
    };
    let p_dubbo = peer(relay_dubbo, in_dubbo, &[]);
    let p_tcp = peer(relay_tcp, in_tcp, &[]);
    wait_answered(
        local(relay_dubbo),
        "spec peer → ringside inbound",
        &|| String::new(),
    );
    let ours_in = mx_frame(MX_IN_ID, &in_node, &[]);
    let got = p_dubbo.next();
    assert_eq!(got["alpn"], "istio-peer-exchange", "{got}");
    assert_eq!(
        got["received"],
        ours_in.as_str(),
        "ringside's frame, byte for byte"
    );
    for i in 0..3 {
        let text = format!("in-{i}");
        assert_eq!(
            echo(local(relay_dubbo), &text),
            Ok(format!("A|echo|{text}"))
        );
        assert_eq!(p_dubbo.next()["received"], ours_in.as_str());
    }
    // tcp: bytes through the tcp proxy to an echo server, untouched after the exchange; the
    // connection closed (counted when it closes).
    echo_round_trip(local(relay_tcp));
    assert_eq!(p_tcp.next()["received"], ours_in.as_str());
    let caller_labels = [
        ("reporter", "destination"),
        ("source_workload", "productpage-v1"),
        // The SPIFFE id's namespace first, as istio-proxy (then the metadata's).
        ("source_workload_namespace", "default"),
        ("source_principal", CONSUMER_ID),
        ("source_app", "productpage"),
        ("source_cluster", "east"),
        ("destination_workload", "ratings-v1"),
        ("destination_principal", PROVIDER_ID),
        ("connection_security_policy", "mutual_tls"),
    ];
    let dubbo_in: Vec<_> = caller_labels
        .iter()
        .copied()
        .chain([("request_protocol", "dubbo")])
        .collect();
    // 1 call from wait_answered + 3 + 1 on the Dubbo listener.
    assert!(mx_count(&rs_in, "istio_requests_total", &dubbo_in, 4) == 4);
    let tcp_in: Vec<_> = caller_labels
        .iter()
        .copied()
        .chain([("request_protocol", "tcp")])
        .collect();
    mx_count(&rs_in, "istio_tcp_connections_closed_total", &tcp_in, 1);

    // A hostile caller announcing a payload larger than ringside reads: closed, and ringside
    // sent nothing of its own (a server answers only a whole header and payload).
    let relay = free_port();
    let p = peer(relay, in_tcp, &["--size".into(), "100000000".into()]);
    let c = std::net::TcpStream::connect(local(relay)).unwrap();
    let got = p.next();
    assert_eq!(got["peer"], "closed", "{got}");
    assert!(got["received"].is_null(), "{got}");
    drop(c);
    // First bytes that are not the exchange's header (a sidecar without the filter that
    // offered the ALPN anyway): no exchange, ringside writes nothing of its own and the bytes
    // go on to the app as they are: the echo server sends back exactly what the caller sent.
    let relay = free_port();
    let p = peer(relay, in_tcp, &["--bad-magic".into()]);
    let c = std::net::TcpStream::connect(local(relay)).unwrap();
    let got = p.next();
    let sent = mx_frame(MX_CALLER_ID, &caller, &["--bad-magic"]);
    assert_eq!(got["received"], sent.as_str(), "{got}");
    drop(c);

    // Outbound: ringside (consumer's certificate) to the upstream's sidecar (the spec peer,
    // provider's certificate, in front of the provider), the cluster as istiod writes it.
    let relay_up = free_port();
    let p_up = MxPeer::start(&mx_args(
        "server",
        &pki,
        "provider",
        MX_REVIEWS_ID,
        &reviews,
        &[
            "--listen".into(),
            relay_up.to_string(),
            "--forward".into(),
            provider.addr.to_string(),
        ],
    ));
    let relay_up_tcp = free_port();
    let p_up_tcp = MxPeer::start(&mx_args(
        "server",
        &pki,
        "provider",
        MX_REVIEWS_ID,
        &reviews,
        &[
            "--listen".into(),
            relay_up_tcp.to_string(),
            "--forward".into(),
            tcp_echo.to_string(),
        ],
    ));
    let out_xds = XdsServer::start();
    let (out_dubbo, out_tcp) = (local(free_port()), local(free_port()));
    let istiod_cluster = |name: &str, relay: u16| {
        let mut c = static_cluster(name, &[local(relay)]);
        c["transport_socket"] = upstream_tls(istio_tls_context(
            &["istio-peer-exchange", "istio"],
            json!({"exact": PROVIDER_ID}),
        ));
        c["filters"] = json!([{"name": "istio.metadata_exchange", "typed_config": mx_filter()["typed_config"]}]);
        c
    };
    out_xds
        .put(&json!({"version": "1",
            "listeners": [istio_tcp_chain(dubbo_to("out-dubbo", out_dubbo, REVIEWS_MX), "OUTBOUND", false),
                          istio_tcp_chain(tcp_proxy_to("out-tcp", out_tcp, REVIEWS_TCP_MX), "OUTBOUND", false)],
            "clusters": [istiod_cluster(REVIEWS_MX, relay_up), istiod_cluster(REVIEWS_TCP_MX, relay_up_tcp)],
            "secrets": sds_secrets(&pki.read("consumer.pem"), &pki.read("consumer.key"), &ca)}))
        .unwrap();
    let rs_out = mx_ringside(&out_xds, MX_OUT_ID, &out_yaml);
    wait_answered(out_dubbo, "ringside outbound → spec peer", &|| {
        String::new()
    });
    let ours_out = mx_frame(MX_OUT_ID, &out_node, &[]);
    let got = p_up.next();
    assert_eq!(got["alpn"], "istio-peer-exchange", "{got}");
    assert_eq!(
        got["received"],
        ours_out.as_str(),
        "ringside's frame, byte for byte"
    );
    for i in 0..3 {
        let text = format!("out-{i}");
        assert_eq!(echo(out_dubbo, &text), Ok(format!("A|echo|{text}")));
    }
    echo_round_trip(out_tcp);
    assert_eq!(
        p_up_tcp.next()["received"],
        ours_out.as_str(),
        "the tcp proxy's connection"
    );
    let reviews_labels = [
        ("reporter", "source"),
        ("source_workload", "details-v1"),
        ("source_principal", CONSUMER_ID),
        ("destination_workload", "reviews-v2"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", PROVIDER_ID),
        ("destination_app", "reviews"),
        ("destination_version", "v2"),
        ("destination_cluster", "west"),
    ];
    let dubbo_out: Vec<_> = reviews_labels
        .iter()
        .copied()
        .chain([("request_protocol", "dubbo")])
        .collect();
    mx_count(&rs_out, "istio_requests_total", &dubbo_out, 4);
    // The tcp proxy's upstream connections name their principals too (the namespace the
    // provider's SPIFFE id's, before the exchange's), as the Dubbo listener's.
    let tcp_out: Vec<_> = reviews_labels
        .iter()
        .copied()
        .chain([("request_protocol", "tcp")])
        .collect();
    mx_count(&rs_out, "istio_tcp_connections_closed_total", &tcp_out, 1);

    // Envoy 1.40 (no istio.metadata_exchange filter) as the caller's sidecar, ALPN `istio`
    // only: no exchange, the Dubbo bytes untouched through ringside's inbound listener.
    let envoy_xds = XdsServer::start();
    let envoy_out = local(free_port());
    let mut to_rs = static_cluster("to-ringside", &[in_dubbo]);
    to_rs["transport_socket"] =
        upstream_tls(istio_tls_context(&["istio"], json!({"exact": PROVIDER_ID})));
    envoy_xds
        .put(&json!({"version": "1",
            "listeners": [tcp_proxy_to("out", envoy_out, "to-ringside")],
            "clusters": [to_rs],
            "secrets": sds_secrets(&pki.read("consumer.pem"), &pki.read("consumer.key"), &ca)}))
        .unwrap();
    let envoy_sidecar = envoy(&envoy_xds, "envoy-out");
    wait_answered(envoy_out, "Envoy → ringside inbound", &|| {
        envoy_sidecar.log()
    });
    assert_eq!(echo(envoy_out, "via-envoy"), Ok("A|echo|via-envoy".into()));
    let unknown_caller = [
        ("reporter", "destination"),
        ("source_workload", "unknown"),
        ("source_principal", CONSUMER_ID),
        ("request_protocol", "dubbo"),
    ];
    mx_count(&rs_in, "istio_requests_total", &unknown_caller, 2);
}

const REVIEWS_MX: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";
const REVIEWS_TCP_MX: &str = "outbound|9081||reviews.bookinfo.svc.cluster.local";

/// RBAC `requested_server_name` (istiod's `connection.sni` conditions) in the network and
/// HTTP filters: matched against the SNI of the caller's TLS connection, the empty string on
/// plaintext, as Envoy 1.40 (whose SNI is what `tls_inspector` read: istiod's listeners have
/// it, so these do). The same rules on a TLS inbound (the client asks for
/// `PROVIDER_DNS`) and a plaintext one, through both proxies: the network filter lets in a
/// TLS connection only with that SNI and a plaintext one only without any; the HTTP filter
/// allows the unary method with that SNI and the server-streaming one without SNI.
#[test]
fn istiod_requested_server_name_like_envoy() {
    use common::grpc::{grpc_call, Call, CallOpts, ClientTls, GrpcServer};
    let pki = Pki::new();
    let server = GrpcServer::start(0, "G", &[]);
    let sni = |m: Value| json!({"requestedServerName": m});
    let path = |p: &str| json!({"urlPath": {"path": {"exact": p}}});
    let any_sni = sni(json!({"safeRegex": {"regex": ".+"}}));
    let http_rbac = json!({"name": "envoy.filters.http.rbac", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"policies": {
            "sni-unary": {
                "permissions": [{"andRules": {"rules": [
                    sni(json!({"exact": PROVIDER_DNS})), path("/helloworld.Greeter/SayHello")]}}],
                "principals": [{"any": true}]},
            "plain-stream": {
                "permissions": [{"andRules": {"rules": [
                    {"notRule": any_sni.clone()}, path("/helloworld.Greeter/SayHelloStream")]}}],
                "principals": [{"any": true}]}}}}});
    let network_rbac = |tls: bool| {
        let permission = match tls {
            true => sni(json!({"suffix": ".default.svc"})),
            false => json!({"notRule": any_sni.clone()}),
        };
        json!({"name": "envoy.filters.network.rbac", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "statPrefix": "tcp.",
            "rules": {"policies": {"sni": {"permissions": [permission],
                "principals": [{"any": true}]}}}}})
    };
    let ports: Vec<SocketAddr> = (0..4).map(|_| local(free_port())).collect();
    // (TLS inbound, plaintext inbound) of one proxy.
    let inbound = |tls_addr: SocketAddr, plain_addr: SocketAddr| {
        let mut snap = rbac_grpc_inbound(tls_addr, vec![http_rbac.clone()], &server, &pki);
        let mut tls_l = snap["listeners"][0].clone();
        // As istiod's inbound: Envoy's connection SNI is what tls_inspector read.
        tls_l["listener_filters"] = json!([{"name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type":
                "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]);
        let hcm = tls_l["filter_chains"][0]["filters"][0].clone();
        tls_l["filter_chains"][0]["filters"] = json!([network_rbac(true), hcm.clone()]);
        let mut plain = tls_l.clone();
        plain["name"] = json!("plain");
        plain["address"] = socket(plain_addr);
        plain["filter_chains"][0]
            .as_object_mut()
            .unwrap()
            .remove("transport_socket");
        plain["filter_chains"][0]["filters"] = json!([network_rbac(false), hcm]);
        snap["listeners"] = json!([tls_l, plain]);
        snap
    };
    let rs_xds = XdsServer::start();
    rs_xds.put(&inbound(ports[0], ports[1])).unwrap();
    let _rs = ringside(&rs_xds, "ringside-sni");
    let envoy_xds = XdsServer::start();
    envoy_xds.put(&inbound(ports[2], ports[3])).unwrap();
    let _envoy = envoy(&envoy_xds, "envoy-sni");
    for (who, x) in [("ringside", &rs_xds), ("Envoy", &envoy_xds)] {
        let ack = x.wait_ack("lds", "1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
    }
    let tls = |authority: &str| ClientTls {
        ca: pki.dir.0.join("ca.pem"),
        cert: Some((
            pki.dir.0.join("consumer.pem"),
            pki.dir.0.join("consumer.key"),
        )),
        authority: authority.into(),
    };
    let outcome = |addr: SocketAddr, call: Call, t: Option<ClientTls>| -> String {
        let mut o = CallOpts::new(call).timeout_s(3.0);
        if let Some(t) = t {
            o = o.tls(t);
        }
        let out = grpc_call(addr, &o);
        match out.ok {
            true => "OK".into(),
            false if out.code == "PERMISSION_DENIED" => out.code,
            // The network filter closed the connection.
            false => "closed".into(),
        }
    };
    let mut seen = Vec::new();
    for (side, tls_addr, plain_addr) in [
        ("ringside", ports[0], ports[1]),
        ("Envoy", ports[2], ports[3]),
    ] {
        // Warm: the listeners and the SDS secrets arrive.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let warm = [
                outcome(tls_addr, Call::Unary, Some(tls(PROVIDER_DNS))),
                outcome(plain_addr, Call::ServerStream, None),
            ];
            if warm == ["OK", "OK"] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{side}: never answered: {warm:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let got = vec![
            outcome(tls_addr, Call::Unary, Some(tls(PROVIDER_DNS))),
            outcome(tls_addr, Call::ServerStream, Some(tls(PROVIDER_DNS))),
            outcome(plain_addr, Call::Unary, None),
            outcome(plain_addr, Call::ServerStream, None),
        ];
        seen.push((side, got));
    }
    eprintln!("{seen:?}");
    let want = ["OK", "PERMISSION_DENIED", "PERMISSION_DENIED", "OK"];
    assert_eq!(seen[1].1, want, "Envoy, the oracle");
    assert_eq!(seen[0].1, seen[1].1, "ringside against Envoy");
}
