//! Istio's standard metrics through the real binary: listeners that istiod gives its
//! `istio.stats` filter (a Dubbo listener and a TCP listener OUTBOUND, a gRPC listener INBOUND)
//! count real calls (a Dubbo consumer, the grpcio client, a TCP echo) under Istio's names and
//! labels, filled from the node metadata and the Istio cluster names. The scrape is parsed with
//! the reference Python parser (`prometheus_client`) and compared with the shape of
//! istio-proxy's own scrape (fixtures/istio/istio-proxy-scrape.txt: families, types, label
//! names and their order, histogram buckets).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use codec::dubbo::encode::{Arg, RequestBuilder};
use common::dubbo::{Consumer, Provider};
use common::envoy::{dubbo_listener, eds_cluster, load_assignment, socket};
use common::grpc::{grpc_call, Call, CallOpts, GrpcServer};
use common::xds::XdsServer;
use common::*;
use serde_json::{json, Value};

const USERS: &str = "outbound|20880||users.shop.svc.cluster.local";
const ECHO: &str = "outbound|7000||echo.shop.svc.cluster.local";
const INBOUND: &str = "inbound|50051||";

fn istio_stats() -> Value {
    json!({"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig"}})
}

fn snapshot(dubbo: SocketAddr, grpc: SocketAddr, tcp: SocketAddr, eps: [SocketAddr; 3]) -> Value {
    let mut d = dubbo_listener(
        "dubbo_out",
        dubbo,
        json!([{"name": "users", "interface": "com.acme.Users", "routes": [
            {"match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}}, "route": {"cluster": USERS}}
        ]}]),
    );
    d["traffic_direction"] = json!("OUTBOUND");
    d["filter_chains"][0]["filters"]
        .as_array_mut()
        .unwrap()
        .insert(0, istio_stats());
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "grpc", "codec_type": "HTTP2",
        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": INBOUND}}]}]},
        "http_filters": [istio_stats(), {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    });
    json!({
        "version": "v1",
        "listeners": [
            d,
            {"name": "grpc_in", "address": socket(grpc), "traffic_direction": "INBOUND",
             "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]},
            {"name": "tcp_out", "address": socket(tcp), "traffic_direction": "OUTBOUND",
             "filter_chains": [{"filters": [istio_stats(), {
                "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "tcp", "cluster": ECHO}}]}]}
        ],
        "clusters": [eds_cluster(USERS, false), eds_cluster(INBOUND, true), eds_cluster(ECHO, false)],
        "endpoints": [
            load_assignment(USERS, &[eps[0]]),
            load_assignment(INBOUND, &[eps[1]]),
            load_assignment(ECHO, &[eps[2]])
        ]
    })
}

/// Parses Prometheus text with `prometheus_client`; per family: its type and its samples
/// (name, labels, value).
fn parse(text: &str) -> BTreeMap<String, (String, Vec<(String, BTreeMap<String, String>, f64)>)> {
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = [f.type, [[s.name, s.labels, s.value] for s in f.samples]]
print(json.dumps(out))
"#;
    let out = common::peers::python_script(script, text, "the parser rejected the exposition");
    serde_json::from_slice(&out).unwrap()
}

/// ringside's own families in a scrape against the Prometheus conventions the issue names, as
/// `prometheus_client` reads them: every family has a HELP text, a counter's samples end in
/// `_total`, a histogram's family ends in `_seconds`. Returns the families checked and what
/// breaks a convention.
fn ringside_conventions(text: &str) -> (Vec<String>, Vec<String>) {
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
checked, bad = [], []
for f in text_string_to_metric_families(sys.stdin.read()):
    if not f.name.startswith("ringside_"):
        continue
    checked.append(f.type + " " + f.name)
    if not f.documentation:
        bad.append(f.name + ": no HELP")
    if f.type == "counter" and not all(s.name.endswith("_total") for s in f.samples):
        bad.append(f.name + ": counter samples without _total")
    if f.type == "histogram" and not f.name.endswith("_seconds"):
        bad.append(f.name + ": histogram without its unit (_seconds)")
    if f.type not in ("counter", "gauge", "histogram"):
        bad.append(f.name + ": type " + f.type)
print(json.dumps([checked, bad]))
"#;
    let out = common::peers::python_script(script, text, "the parser rejected the exposition");
    serde_json::from_slice(&out).unwrap()
}

/// The label names of a family's first series in the raw text, in their order.
fn label_order(text: &str, family: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| {
            ["{", "_total{", "_bucket{"]
                .iter()
                .any(|s| l.starts_with(&format!("{family}{s}")))
        })
        .unwrap_or_else(|| panic!("no {family} series in\n{text}"));
    let inner = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
    let mut names = Vec::new();
    let mut rest = inner;
    while let Some(eq) = rest.find("=\"") {
        names.push(rest[..eq].trim_start_matches(',').to_string());
        // Skip the quoted value (escapes: \" and \\).
        let mut i = eq + 2;
        let b = rest.as_bytes();
        while b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        rest = &rest[i + 1..];
    }
    names.retain(|n| n != "le");
    names
}

#[test]
fn istio_standard_metrics_for_dubbo_grpc_and_tcp_in_istio_proxys_shape() {
    let provider = Provider::start("P");
    let server = GrpcServer::start(0, "S", &[]);
    let echo = echo_server();
    let (dubbo, grpc, tcp) = (local(free_port()), local(free_port()), local(free_port()));
    let xds = XdsServer::start();
    xds.put(&snapshot(
        dubbo,
        grpc,
        tcp,
        [provider.addr, server.addr(), echo],
    ))
    .unwrap();
    let admin = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: sidecar~10.1.2.3~client-v1-abc.shop~shop.svc.cluster.local\n  \
         initial_fetch_timeout_ms: 20000\n  retry_initial_ms: 100\n  node_metadata:\n    NAME: client-v1-abc\n    \
         NAMESPACE: shop\n    WORKLOAD_NAME: client-v1\n    CLUSTER_ID: Kubernetes\n    \
         LABELS: {{app: client, version: v1}}\n",
        xds.addr()
    );
    let rs = Ringside::start(&config, admin, &["--shards", "2"]);

    // 3 Dubbo calls answered OK, 1 with status 80; 2 gRPC calls; one TCP round trip.
    let mut c = Consumer::connect(dubbo);
    let args = [Arg::Str("x")];
    for _ in 0..3 {
        c.call(RequestBuilder::new("com.acme.Users", "get").args(&args));
    }
    provider
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    c.call(RequestBuilder::new("com.acme.Users", "get").args(&args));
    let out = grpc_call(grpc, &CallOpts::new(Call::Unary).count(2).payload(100));
    assert!(out.ok, "{out:?}");
    echo_round_trip(tcp);

    // The TCP connection is counted when it closes, and a call may be counted just after its
    // answer is sent (on either shard): wait until the closed connection and all 6 calls show
    // (the closed counter is written last, after the connection's bytes).
    let deadline = Instant::now() + Duration::from_secs(10);
    let total = |prom: &str, family: &str, sample: &str| -> f64 {
        parse(prom).get(family).map_or(0.0, |(_, samples)| {
            samples.iter().filter(|s| s.0 == sample).map(|s| s.2).sum()
        })
    };
    let prom = loop {
        let (code, prom) = rs.get("/stats/prometheus");
        assert_eq!(code, 200);
        if total(
            &prom,
            "istio_tcp_connections_closed",
            "istio_tcp_connections_closed_total",
        ) >= 1.0
            && total(&prom, "istio_requests", "istio_requests_total") >= 6.0
        {
            break prom;
        }
        assert!(
            Instant::now() < deadline,
            "no TCP connection counted:\n{prom}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let ours = parse(&prom);
    // ringside's own families beside Istio's: HELP on each, `_total` counters, `_seconds`
    // histograms (Dubbo, Triple, TCP, xDS and admin families are all in this scrape).
    let (checked, bad) = ringside_conventions(&prom);
    for kind in ["counter ", "gauge ", "histogram "] {
        assert!(
            checked.iter().any(|c| c.starts_with(kind)),
            "no ringside {kind}family in\n{prom}"
        );
    }
    assert!(bad.is_empty(), "{bad:#?}\n{prom}");
    eprintln!("{} ringside families follow the conventions", checked.len());
    let fixture_text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/istio/istio-proxy-scrape.txt"),
    )
    .unwrap();
    let theirs = parse(&fixture_text);
    // Every family istio-proxy exports, with its type, label names (in its order) and buckets.
    for (family, (ty, samples)) in &theirs {
        let (our_ty, our_samples) = ours
            .get(family)
            .unwrap_or_else(|| panic!("no family {family} in\n{prom}"));
        assert_eq!(our_ty, ty, "{family}");
        let names = |s: &[(String, BTreeMap<String, String>, f64)]| -> Vec<String> {
            let mut n: Vec<String> = s[0].1.keys().filter(|k| *k != "le").cloned().collect();
            n.sort();
            n
        };
        assert_eq!(names(our_samples), names(samples), "{family}: label names");
        assert_eq!(
            label_order(&prom, family),
            label_order(&fixture_text, family),
            "{family}: label order"
        );
        let les = |s: &[(String, BTreeMap<String, String>, f64)]| -> Vec<String> {
            let first = &s[0].1;
            s.iter()
                .filter(|x| x.0.ends_with("_bucket"))
                .filter(|x| {
                    x.1.iter()
                        .all(|(k, v)| k == "le" || first.get(k) == Some(v))
                })
                .map(|x| x.1["le"].clone())
                .collect()
        };
        assert_eq!(les(our_samples), les(samples), "{family}: buckets");
    }

    // The values and what the labels say.
    let find = |family: &str, sample: &str, want: &[(&str, &str)]| -> f64 {
        let (_, samples) = &ours[family];
        let hits: Vec<f64> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == sample
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(|s| s.as_str()) == Some(*v))
            })
            .map(|s| s.2)
            .collect();
        assert_eq!(hits.len(), 1, "{sample} {want:?}: {hits:?} in\n{prom}");
        hits[0]
    };
    let dubbo_ok = [
        ("reporter", "source"),
        ("source_workload", "client-v1"),
        ("source_workload_namespace", "shop"),
        ("source_app", "client"),
        ("source_version", "v1"),
        ("source_canonical_service", "client"),
        ("source_canonical_revision", "v1"),
        ("source_cluster", "Kubernetes"),
        ("source_principal", "unknown"),
        ("destination_workload", "unknown"),
        ("destination_service", "users.shop.svc.cluster.local"),
        ("destination_service_name", "users"),
        ("destination_service_namespace", "shop"),
        ("request_protocol", "dubbo"),
        ("response_code", "20"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "unknown"),
    ];
    assert_eq!(
        find("istio_requests", "istio_requests_total", &dubbo_ok),
        3.0
    );
    let mut failed = dubbo_ok;
    failed[14].1 = "80";
    assert_eq!(find("istio_requests", "istio_requests_total", &failed), 1.0);
    assert_eq!(
        find(
            "istio_request_duration_milliseconds",
            "istio_request_duration_milliseconds_count",
            &dubbo_ok
        ),
        3.0
    );
    assert!(
        find("istio_request_bytes", "istio_request_bytes_sum", &dubbo_ok) > 3.0 * 16.0,
        "Dubbo frames"
    );

    let grpc_ok = [
        ("reporter", "destination"),
        ("source_workload", "unknown"),
        ("destination_workload", "client-v1"),
        ("destination_workload_namespace", "shop"),
        ("destination_app", "client"),
        ("destination_service", "client"),
        ("destination_service_namespace", "shop"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "grpc"),
        ("response_code", "200"),
        ("grpc_response_status", "0"),
        ("response_flags", "-"),
        ("connection_security_policy", "none"),
    ];
    assert_eq!(
        find("istio_requests", "istio_requests_total", &grpc_ok),
        2.0
    );
    assert!(
        find("istio_request_bytes", "istio_request_bytes_sum", &grpc_ok) >= 200.0,
        "two 100-byte payloads"
    );

    let tcp_labels = [
        ("reporter", "source"),
        ("destination_service", "echo.shop.svc.cluster.local"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
    ];
    for family in [
        "istio_tcp_connections_opened",
        "istio_tcp_connections_closed",
    ] {
        assert_eq!(
            find(family, &format!("{family}_total"), &tcp_labels),
            1.0,
            "{family}"
        );
    }
    assert_eq!(
        find(
            "istio_tcp_sent_bytes",
            "istio_tcp_sent_bytes_total",
            &tcp_labels
        ),
        4.0
    );
    assert_eq!(
        find(
            "istio_tcp_received_bytes",
            "istio_tcp_received_bytes_total",
            &tcp_labels
        ),
        4.0
    );
    std::mem::forget(provider);
}
