//! Istio's HTTP metadata exchange on Triple/gRPC calls through the real binary, as istio-proxy's
//! `peer_metadata` filter does it: a grpcio client sends what a caller's istio-proxy adds to a
//! request (`x-envoy-peer-metadata-id`, `x-envoy-peer-metadata`: the base64 of a protobuf
//! `Struct` of its workload), a grpcio server answers what an upstream's istio-proxy adds to a
//! response. The values are built here from the `Struct`s as istio-proxy builds them
//! (`convertWorkloadMetadataToStruct`, C++ protobuf's deterministic serialization, base64 with
//! padding); ringside's own must be byte for byte what istio-proxy would send for its node
//! metadata. Checked: the labels of `istio_requests_total` (the caller's workload inbound, the
//! upstream's outbound), that the apps never see the exchange, that ringside answers each
//! header only when the request carried it, and that a repeated value is decoded once.
//!
//! grpcio 1.85 sends `x-envoy-peer-metadata` on the wire (client metadata, server initial
//! metadata) but never hands a received one to the application (gRPC core parses it as a
//! known header, for its own CSM observability); what ringside sends and strips in that header
//! is therefore read on the wire by the test's own HTTP/2 peers (`common::h2`): a client
//! reading response headers, an upstream echoing a request header.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::envoy::{eds_cluster, load_assignment, socket};
use common::grpc::{grpc_call, Call, CallOpts, GrpcServer};
use common::h2::{Client, Upstream};
use common::xds::XdsServer;
use common::*;
use serde_json::{json, Value};

const INBOUND: &str = "inbound|9080||";
const INBOUND_WIRE: &str = "inbound|9081||";
const REVIEWS: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";
const DETAILS: &str = "outbound|9081||details.bookinfo.svc.cluster.local";
const NODE_ID: &str = "sidecar~10.1.2.3~ratings-v1-abc.bookinfo~bookinfo.svc.cluster.local";
const CALLER_ID: &str = "sidecar~10.1.2.9~productpage-v1-123.bookinfo~bookinfo.svc.cluster.local";
const REVIEWS_ID: &str = "sidecar~10.1.2.7~reviews-v2-xyz.bookinfo~bookinfo.svc.cluster.local";
const ID: &str = "x-envoy-peer-metadata-id";
const MD: &str = "x-envoy-peer-metadata";

/// `x-envoy-peer-metadata` values for these workloads' `Struct`s (as istio-proxy's
/// `convertWorkloadMetadataToStruct` writes them: the fields it keeps, `LABELS` with the four
/// labels it reads), by name. protobuf's Python implementation sorts map keys byte by byte as
/// C++ protobuf's deterministic serialization does (its default upb backend does not: it puts
/// `NAMESPACE` before `NAME`).
fn exchange_values(structs: &Value) -> BTreeMap<String, String> {
    let script = r#"
import os, sys, json, base64
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
from google.protobuf import struct_pb2
out = {}
for name, fields in json.load(sys.stdin).items():
    s = struct_pb2.Struct()
    s.update(fields)
    out[name] = base64.b64encode(s.SerializeToString(deterministic=True)).decode()
print(json.dumps(out))
"#;
    let out = common::peers::python_script(script, &structs.to_string(), "protobuf");
    serde_json::from_slice(&out).unwrap()
}

fn istio_stats() -> Value {
    json!({"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig"}})
}

fn hcm(cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "grpc", "codec_type": "HTTP2",
        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        "http_filters": [istio_stats(), {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    }})
}

#[test]
fn istio_metadata_exchange_on_grpc_calls_names_the_peers_workload() {
    let values = exchange_values(&json!({
        "caller": {"NAME": "productpage-v1-123", "NAMESPACE": "bookinfo",
            "WORKLOAD_NAME": "productpage-v1", "CLUSTER_ID": "east",
            "OWNER": "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/productpage-v1",
            "LABELS": {"app": "productpage", "version": "v1",
                "service.istio.io/canonical-name": "productpage-svc",
                "service.istio.io/canonical-revision": "r1"}},
        "reviews": {"NAME": "reviews-v2-xyz", "NAMESPACE": "bookinfo",
            "WORKLOAD_NAME": "reviews-v2", "CLUSTER_ID": "west",
            "OWNER": "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/reviews-v2",
            "LABELS": {"app": "reviews", "version": "v2"}},
        // What istio-proxy sends for the node metadata ringside is given below: NAME,
        // NAMESPACE, WORKLOAD_NAME, CLUSTER_ID, OWNER (rebuilt from the workload type), LABELS
        // (app, version; not pod-template-hash), nothing else (not ISTIO_VERSION).
        "ringside": {"NAME": "ratings-v1-abc", "NAMESPACE": "bookinfo",
            "WORKLOAD_NAME": "ratings-v1", "CLUSTER_ID": "Kubernetes",
            "OWNER": "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/ratings-v1",
            "LABELS": {"app": "ratings", "version": "v1"}}
    }));
    let (caller, reviews_md, ours) = (&values["caller"], &values["reviews"], &values["ringside"]);
    // The inbound app and an upstream whose istio-proxy answers with its workload (grpcio);
    // two wire-level upstreams (common::h2) behind a second listener of each direction.
    let app = GrpcServer::start(0, "app", &[]);
    let reviews = GrpcServer::start(
        0,
        "reviews",
        &[
            "--initial-metadata",
            &format!("{ID}={REVIEWS_ID}"),
            "--initial-metadata",
            &format!("{MD}={reviews_md}"),
        ],
    );
    let (wire_in, wire_out) = (Upstream::start("wire-in"), Upstream::start("wire-out"));
    let [inbound, inbound_wire, outbound, outbound_wire] = [0; 4].map(|_| local(free_port()));
    let listener = |name: &str, addr, dir: &str, cluster: &str| {
        json!({"name": name, "address": socket(addr), "traffic_direction": dir,
               "filter_chains": [{"filters": [hcm(cluster)]}]})
    };
    let xds = XdsServer::start();
    xds.put(&json!({
        "version": "v1",
        "listeners": [
            listener("in", inbound, "INBOUND", INBOUND),
            listener("in_wire", inbound_wire, "INBOUND", INBOUND_WIRE),
            listener("out", outbound, "OUTBOUND", REVIEWS),
            listener("out_wire", outbound_wire, "OUTBOUND", DETAILS),
        ],
        "clusters": [eds_cluster(INBOUND, true), eds_cluster(INBOUND_WIRE, true),
                     eds_cluster(REVIEWS, false), eds_cluster(DETAILS, false)],
        "endpoints": [load_assignment(INBOUND, &[app.addr()]),
                      load_assignment(INBOUND_WIRE, &[wire_in.addr]),
                      load_assignment(REVIEWS, &[reviews.addr()]),
                      load_assignment(DETAILS, &[wire_out.addr])]
    }))
    .unwrap();
    let admin = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: {NODE_ID}\n  \
         initial_fetch_timeout_ms: 20000\n  retry_initial_ms: 100\n  node_metadata:\n    \
         NAME: ratings-v1-abc\n    NAMESPACE: bookinfo\n    WORKLOAD_NAME: ratings-v1\n    \
         CLUSTER_ID: Kubernetes\n    ISTIO_VERSION: 1.28.0\n    \
         OWNER: kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/ratings-v1\n    \
         LABELS: {{app: ratings, version: v1, pod-template-hash: 5f7c}}\n",
        xds.addr()
    );
    // One shard: the decode count below is per shard.
    let rs = Ringside::start(&config, admin, &["--shards", "1"]);
    let path = "/helloworld.Greeter/SayHello";
    let header = |r: &common::h2::Reply, name: &str| -> Option<String> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };

    // Inbound, from an istio-proxy caller (grpcio): 3 calls, one value. The app does not see
    // the id (nor the value: grpcio would not show it, the wire upstream below does).
    let out = grpc_call(
        inbound,
        &CallOpts::new(Call::Unary)
            .count(3)
            .meta(ID, CALLER_ID)
            .meta(MD, caller),
    );
    assert!(out.ok, "{out:?}");
    for r in &out.replies {
        assert!(!r.metadata.iter().any(|kv| kv.starts_with(ID)), "{out:?}");
    }
    assert_eq!(
        out.initial.get(ID).map(String::as_str),
        Some(NODE_ID),
        "{out:?}"
    );
    // A caller without the exchange gets none.
    let out = grpc_call(inbound, &CallOpts::new(Call::Unary));
    assert!(out.ok, "{out:?}");
    assert!(!out.initial.contains_key(ID), "{out:?}");
    // On the wire: ringside answers with its metadata, each header only when the request
    // carried it (istio-proxy's rule).
    let mut c = Client::connect(inbound);
    let r = c.call(path, &[(ID, CALLER_ID), (MD, caller)], b"");
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert_eq!(header(&r, ID).as_deref(), Some(NODE_ID), "{r:?}");
    assert_eq!(header(&r, MD).as_ref(), Some(ours), "{r:?}");
    let r = c.call(path, &[(ID, CALLER_ID)], b"");
    assert_eq!(header(&r, ID).as_deref(), Some(NODE_ID), "{r:?}");
    assert_eq!(header(&r, MD), None, "{r:?}");
    let r = c.call(path, &[], b"");
    assert_eq!((header(&r, ID), header(&r, MD)), (None, None), "{r:?}");
    // The app behind the inbound listener sees neither header.
    let mut c = Client::connect(inbound_wire);
    for h in [MD, ID] {
        let r = c.call(
            path,
            &[(ID, CALLER_ID), (MD, caller), ("x-echo-header", h)],
            b"",
        );
        assert_eq!(r.text(), "wire-in:", "{h} forwarded to the app");
    }

    // Outbound (grpcio): ringside sends its id (and value, below), the upstream's sidecar
    // answers with its workload.
    let out = grpc_call(outbound, &CallOpts::new(Call::Unary).count(2));
    assert!(out.ok, "{out:?}");
    for r in &out.replies {
        assert!(
            r.metadata.contains(&format!("{ID}={NODE_ID}")),
            "what the upstream saw: {:?}",
            r.metadata
        );
    }
    assert!(!out.initial.contains_key(ID), "{out:?}");
    // On the wire: the upstream gets ringside's value (the app's own replaced), the app never
    // sees the upstream's.
    let mut c = Client::connect(outbound_wire);
    let r = c.call(path, &[(MD, "bogus"), ("x-echo-header", MD)], b"");
    assert_eq!(r.text(), format!("wire-out:{ours}"));
    let mut c = Client::connect(outbound);
    let r = c.call(path, &[], b"");
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert_eq!((header(&r, ID), header(&r, MD)), (None, None), "{r:?}");

    // The labels. Inbound (both listeners): 3 + 1 + 2 calls from productpage, 1 + 1 + 1
    // without its metadata; outbound: 2 + 1 to reviews, 1 to the wire upstream (no exchange).
    let deadline = Instant::now() + Duration::from_secs(10);
    let prom = loop {
        let (code, prom) = rs.get("/stats/prometheus");
        assert_eq!(code, 200);
        let n: usize = prom
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
            .sum();
        if n >= 13 {
            break prom;
        }
        assert!(Instant::now() < deadline, "13 calls not counted:\n{prom}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let count = |want: &[(&str, &str)]| -> usize {
        let hits: Vec<&str> = prom
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| {
                want.iter()
                    .all(|(k, v)| l.contains(&format!(",{k}=\"{v}\"")))
            })
            .collect();
        assert_eq!(hits.len(), 1, "{want:?} in\n{prom}");
        hits[0].rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        count(&[
            ("source_workload", "productpage-v1"),
            ("source_canonical_service", "productpage-svc"),
            ("source_canonical_revision", "r1"),
            ("source_workload_namespace", "bookinfo"),
            ("source_principal", "unknown"),
            ("source_app", "productpage"),
            ("source_version", "v1"),
            ("source_cluster", "east"),
            ("destination_workload", "ratings-v1"),
        ]),
        6
    );
    assert_eq!(
        count(&[
            ("source_workload", "unknown"),
            ("source_canonical_service", "unknown"),
            ("source_canonical_revision", "latest"),
            ("source_workload_namespace", "unknown"),
            ("source_app", "unknown"),
            ("source_cluster", "unknown"),
            ("destination_workload", "ratings-v1"),
        ]),
        3
    );
    assert_eq!(
        count(&[
            ("source_workload", "ratings-v1"),
            ("destination_workload", "reviews-v2"),
            ("destination_workload_namespace", "bookinfo"),
            ("destination_app", "reviews"),
            ("destination_version", "v2"),
            ("destination_service", "reviews.bookinfo.svc.cluster.local"),
            ("destination_canonical_service", "unknown"),
            ("destination_canonical_revision", "latest"),
            ("destination_service_name", "reviews"),
            ("destination_service_namespace", "bookinfo"),
            ("destination_cluster", "west"),
        ]),
        3
    );
    assert_eq!(
        count(&[
            ("source_workload", "ratings-v1"),
            ("destination_workload", "unknown"),
            ("destination_service", "details.bookinfo.svc.cluster.local"),
            ("destination_cluster", "unknown"),
        ]),
        1
    );
    // Each distinct value decoded once per listener on the shard (productpage's on both
    // inbound listeners, reviews' on one), not once per call.
    let (_, text) = rs.get("/stats");
    assert!(
        text.lines().any(|l| l == "istio.peer_metadata_decoded: 3"),
        "{}",
        text.lines()
            .filter(|l| l.starts_with("istio."))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// An HTTP connection manager as istiod writes it for HTTP services (`codec_type: AUTO`:
/// HTTP/1.1 and HTTP/2 on one listener).
fn hcm_auto(cluster: &str) -> Value {
    let mut h = hcm(cluster);
    h["typed_config"]["codec_type"] = json!("AUTO");
    h
}

/// A wire-level HTTP/1.1 upstream (one thread per connection, keep-alive): it answers every
/// request 200 with the body `NAME:` followed by `field=value;` for each request field whose
/// name starts with `x-envoy-peer-metadata`, and adds the response fields `extra`.
fn http1_wire_upstream(name: &'static str, extra: Vec<(String, String)>) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let extra = extra.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut seen = String::new();
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        let (n, v) = l.split_once(':').unwrap();
                        if n.to_ascii_lowercase().starts_with("x-envoy-peer-metadata") {
                            seen.push_str(&format!("{}={};", n.to_ascii_lowercase(), v.trim()));
                        }
                    }
                    let body = format!("{name}:{seen}");
                    let mut head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n", body.len());
                    for (n, v) in &extra {
                        head.push_str(&format!("{n}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    if w.write_all(format!("{head}{body}").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP/1.1 client on one keep-alive connection, reading answers on the wire.
struct Http1Client {
    r: std::io::BufReader<std::net::TcpStream>,
}

/// An answer: its status, its fields (names lower-cased) and its body.
#[derive(Debug)]
struct Answer {
    status: u16,
    fields: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl Http1Client {
    fn connect(addr: std::net::SocketAddr) -> Http1Client {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Http1Client {
            r: std::io::BufReader::new(s),
        }
    }

    fn get(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        use std::io::{BufRead, Read, Write};
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: svc\r\n");
        for (n, v) in fields {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.r.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut fields = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').unwrap();
            fields.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = fields
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        Answer {
            status,
            fields,
            body: String::from_utf8(body).unwrap(),
        }
    }
}

#[test]
fn istio_metadata_exchange_on_http1_requests_names_the_peers_workload() {
    let values = exchange_values(&json!({
        "caller": {"NAME": "productpage-v1-123", "NAMESPACE": "bookinfo",
            "WORKLOAD_NAME": "productpage-v1", "CLUSTER_ID": "east",
            "LABELS": {"app": "productpage", "version": "v1",
                "service.istio.io/canonical-name": "productpage-svc",
                "service.istio.io/canonical-revision": "r1"}},
        "reviews": {"NAME": "reviews-v2-xyz", "NAMESPACE": "bookinfo",
            "WORKLOAD_NAME": "reviews-v2", "CLUSTER_ID": "west",
            "LABELS": {"app": "reviews", "version": "v2"}},
        "ringside": {"NAME": "ratings-v1-abc", "NAMESPACE": "bookinfo",
            "WORKLOAD_NAME": "ratings-v1", "CLUSTER_ID": "Kubernetes",
            "OWNER": "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/ratings-v1",
            "LABELS": {"app": "ratings", "version": "v1"}}
    }));
    let (caller, reviews_md, ours) = (&values["caller"], &values["reviews"], &values["ringside"]);
    // The inbound app answers with an exchange of its own (replaced or removed by ringside);
    // the outbound upstream answers what its istio-proxy adds. A Python http.server app too.
    let app = http1_wire_upstream(
        "app",
        vec![
            (ID.into(), "app-own-id".into()),
            (MD.into(), "app-own".into()),
        ],
    );
    let reviews = http1_wire_upstream(
        "reviews",
        vec![
            (ID.into(), REVIEWS_ID.into()),
            (MD.into(), reviews_md.clone()),
        ],
    );
    let py_port = free_port();
    let _py = common::http1::Http1Server::start("127.0.0.1", py_port, "py");
    let [inbound, inbound_py, outbound] = [0; 3].map(|_| local(free_port()));
    let listener = |name: &str, addr, dir: &str, cluster: &str| {
        json!({"name": name, "address": socket(addr), "traffic_direction": dir,
               "filter_chains": [{"filters": [hcm_auto(cluster)]}]})
    };
    let xds = XdsServer::start();
    xds.put(&json!({
        "version": "v1",
        "listeners": [
            listener("in", inbound, "INBOUND", INBOUND),
            listener("in_py", inbound_py, "INBOUND", INBOUND_WIRE),
            listener("out", outbound, "OUTBOUND", REVIEWS),
        ],
        "clusters": [eds_cluster(INBOUND, false), eds_cluster(INBOUND_WIRE, false),
                     eds_cluster(REVIEWS, false)],
        "endpoints": [load_assignment(INBOUND, &[app]),
                      load_assignment(INBOUND_WIRE, &[local(py_port)]),
                      load_assignment(REVIEWS, &[reviews])]
    }))
    .unwrap();
    let admin = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: {NODE_ID}\n  \
         initial_fetch_timeout_ms: 20000\n  retry_initial_ms: 100\n  node_metadata:\n    \
         NAME: ratings-v1-abc\n    NAMESPACE: bookinfo\n    WORKLOAD_NAME: ratings-v1\n    \
         CLUSTER_ID: Kubernetes\n    ISTIO_VERSION: 1.28.0\n    \
         OWNER: kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/ratings-v1\n    \
         LABELS: {{app: ratings, version: v1, pod-template-hash: 5f7c}}\n",
        xds.addr()
    );
    let rs = Ringside::start(&config, admin, &["--shards", "1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(outbound).is_err() {
        assert!(Instant::now() < deadline, "listeners never came");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Inbound, from an istio-proxy caller: the app sees neither field; ringside answers with
    // its id and metadata (the app's own replaced), each only when the request carried it.
    let mut c = Http1Client::connect(inbound);
    for _ in 0..2 {
        let a = c.get("/a", &[(ID, CALLER_ID), (MD, caller)]);
        assert_eq!((a.status, a.body.as_str()), (200, "app:"), "{a:?}");
        assert_eq!(a.all(ID), [NODE_ID], "{a:?}");
        assert_eq!(a.all(MD), [ours.as_str()], "{a:?}");
    }
    let a = c.get("/a", &[(ID, CALLER_ID)]);
    assert_eq!((a.all(ID), a.all(MD)), (vec![NODE_ID], vec![]), "{a:?}");
    let a = c.get("/a", &[(MD, caller)]);
    assert_eq!(
        (a.all(ID), a.all(MD)),
        (vec![], vec![ours.as_str()]),
        "{a:?}"
    );
    let a = c.get("/a", &[]);
    assert_eq!((a.all(ID), a.all(MD)), (vec![], vec![]), "{a:?}");
    assert_eq!(a.body, "app:");
    // Python's http.client to Python's http.server, 3 requests on one connection.
    let req = json!({"path": "/p", "host": "svc", "headers": {ID: CALLER_ID, MD: caller}});
    let got = common::http1::http1_outcomes(inbound_py, &json!([req, req, req]));
    assert_eq!(got.len(), 3, "{got:?}");
    for o in &got {
        assert!(o.contains(" py GET /p "), "{got:?}");
    }

    // Outbound: the upstream gets ringside's id and metadata (the app's own replaced), the app
    // never sees the upstream's.
    let mut c = Http1Client::connect(outbound);
    let a = c.get("/r", &[(MD, "bogus"), (ID, "bogus-id")]);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body, format!("reviews:{ID}={NODE_ID};{MD}={ours};"));
    assert_eq!((a.all(ID), a.all(MD)), (vec![], vec![]), "{a:?}");
    let a = c.get("/r", &[]);
    assert_eq!(a.body, format!("reviews:{ID}={NODE_ID};{MD}={ours};"));

    // The labels: inbound 2 + 1 + 3 requests with productpage's metadata, 2 without;
    // outbound 2 to reviews.
    let deadline = Instant::now() + Duration::from_secs(10);
    let prom = loop {
        let (code, prom) = rs.get("/stats/prometheus");
        assert_eq!(code, 200);
        let n: usize = prom
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
            .sum();
        if n >= 10 {
            break prom;
        }
        assert!(
            Instant::now() < deadline,
            "10 requests not counted:\n{prom}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let count = |want: &[(&str, &str)]| -> usize {
        let hits: Vec<&str> = prom
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| {
                want.iter()
                    .all(|(k, v)| l.contains(&format!(",{k}=\"{v}\"")))
            })
            .collect();
        assert_eq!(hits.len(), 1, "{want:?} in\n{prom}");
        hits[0].rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        count(&[
            ("source_workload", "productpage-v1"),
            ("source_canonical_service", "productpage-svc"),
            ("source_canonical_revision", "r1"),
            ("source_workload_namespace", "bookinfo"),
            ("source_app", "productpage"),
            ("source_version", "v1"),
            ("source_cluster", "east"),
            ("destination_workload", "ratings-v1"),
            ("request_protocol", "http"),
        ]),
        6
    );
    assert_eq!(
        count(&[
            ("source_workload", "unknown"),
            ("source_canonical_revision", "latest"),
            ("source_workload_namespace", "unknown"),
            ("destination_workload", "ratings-v1"),
            ("request_protocol", "http"),
        ]),
        2
    );
    assert_eq!(
        count(&[
            ("source_workload", "ratings-v1"),
            ("destination_workload", "reviews-v2"),
            ("destination_workload_namespace", "bookinfo"),
            ("destination_app", "reviews"),
            ("destination_version", "v2"),
            ("destination_service", "reviews.bookinfo.svc.cluster.local"),
            ("destination_canonical_revision", "latest"),
            ("destination_service_namespace", "bookinfo"),
            ("destination_cluster", "west"),
            ("request_protocol", "http"),
            ("response_code", "200"),
        ]),
        2
    );
    // Each distinct value decoded once per listener on the shard.
    let (_, text) = rs.get("/stats");
    assert!(
        text.lines().any(|l| l == "istio.peer_metadata_decoded: 3"),
        "{}",
        text.lines()
            .filter(|l| l.starts_with("istio."))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
