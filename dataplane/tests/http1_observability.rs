//! HTTP/1.1 requests on an HTTP connection manager as istiod writes it (`codec_type: AUTO`)
//! get what HTTP/2 requests on the same listener get: access-log lines with Envoy's operators
//! (checked line for line against Envoy 1.40 given the same resources) and Istio's standard
//! metrics with `request_protocol="http"` (Envoy 1.40 has no `istio.stats`: the counts and byte
//! sums are checked against what Envoy's lines say of the same requests).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::envoy::{bootstrap, load_assignment, socket, Ads, Envoy};
use common::http1::{http1_outcomes, Http1Server};
use common::xds::XdsServer;
use common::*;
use serde_json::{json, Value};

const UP: &str = "outbound|80||up.shop.svc.cluster.local";

/// The lines of `path` once it has at least `n` (waits up to 15 s).
fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, want {n}: {text}",
            path.display(),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `target` answers to the raw bytes `request`: its status line (`closed`: nothing).
fn raw(target: SocketAddr, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(target).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or("closed").to_string()
}

/// Parses Prometheus text with `prometheus_client`: the samples (name, labels, value).
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out += [[s.name, s.labels, s.value] for s in f.samples]
print(json.dumps(out))
"#;
    let out = common::peers::python_script(script, text, "the parser rejected the exposition");
    serde_json::from_slice(&out).unwrap()
}

const FORMAT: &str = "%PROTOCOL% %REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %GRPC_STATUS% %REQ(X-USER)% %RESP(:STATUS)% %RESP(CONTENT-TYPE)% %RESP(X-NONE?CONTENT-LENGTH)% %ROUTE_NAME%\n";

/// An HTTP connection manager as istiod writes it (`codec_type: AUTO`, `websocket` upgrades),
/// OUTBOUND, with a text and a JSON file access log, routes on host `svc` to an HTTP/1.1
/// upstream (Python's http.server), a cluster without endpoints, one whose endpoint refuses
/// connections, and a route with a 500 ms timeout; `istio_stats`: with istio-proxy's
/// `istio.stats` filter (ringside; Envoy 1.40 has none).
fn snapshot(
    listen: SocketAddr,
    up: SocketAddr,
    dead: SocketAddr,
    dir: &Path,
    who: &str,
    istio_stats: bool,
) -> Value {
    let file_log = |name: &str, format: Value| {
        json!({"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": dir.join(format!("{who}-{name}")).display().to_string(), "log_format": format}})
    };
    let mut filters = vec![
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    ];
    if istio_stats {
        filters.insert(
            0,
            json!({"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig"}}),
        );
    }
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "http", "codec_type": "AUTO",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "route_config": {"name": "r", "virtual_hosts": [{"name": "svc", "domains": ["svc", "svc:80"], "routes": [
            {"name": "empty", "match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
            {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
            {"name": "sleep", "match": {"prefix": "/sleep"}, "route": {"cluster": UP, "timeout": "0.5s"}},
            {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": UP, "timeout": "5s"}}]}]},
        "http_filters": filters,
        "access_log": [
            file_log("http.log", json!({"text_format_source": {"inline_string": FORMAT}})),
            file_log("http.json", json!({"json_format": {
                "proto": "%PROTOCOL%", "code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%",
                "flags": "%RESPONSE_FLAGS%", "rx": "%BYTES_RECEIVED%", "tx": "%BYTES_SENT%"}}))
        ]
    });
    let cluster = |name: &str, eps: &[SocketAddr]| {
        json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": load_assignment(name, eps)})
    };
    json!({
        "version": "v1",
        "listeners": [{"name": "http", "address": socket(listen), "traffic_direction": "OUTBOUND",
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
        "clusters": [cluster(UP, &[up]), cluster("dead", &[dead]), cluster("empty", &[])]
    })
}

/// The same HTTP/1.1 requests (Python's http.client on one keep-alive connection, plus an
/// HTTP/1.0 request, a malformed head and one over 60 KiB on raw sockets) through Envoy 1.40 and through
/// ringside: a GET with a header the format shows, a POST with a 300-byte body, a PUT with a
/// 20000-byte chunked body, HEAD, a chunked response, an upstream 503, an unknown host (404
/// `NR`), a cluster without endpoints (503 `UH`), a refused connection (503 `UF`), a route
/// timeout (504 `UT`), a route timeout while the body comes (the connection closed, `UT`;
/// both count it in the cluster's `upstream_rq_timeout`; `upstream_rq_total` is compared too), HTTP/1.0 (426 `DPE`, as Envoy without `accept_http_10`), 400 and 431
/// (`DPE`). Every access-log line (text and JSON, `%ROUTE_NAME%` of named and unnamed routes)
/// is the same in both. ringside's
/// Istio metrics count each request under `request_protocol="http"` with its status and
/// flags, and their request and response byte sums are what Envoy's lines say.
#[test]
fn http1_requests_are_logged_and_counted_like_envoy() {
    let up_port = free_port();
    let _up = Http1Server::start("127.0.0.1", up_port, "up");
    let up = local(up_port);
    let dead = local(free_port());
    let dir = TempDir::new("http1-obs");
    let requests = json!([
        {"method": "GET", "path": "/one?q=1", "host": "svc", "headers": {"x-user": "vip-1"}},
        {"method": "POST", "path": "/post", "host": "svc:80", "body_len": 300},
        {"method": "PUT", "path": "/chunks", "host": "svc", "body_len": 20000, "chunked": true},
        {"method": "HEAD", "path": "/h", "host": "svc"},
        {"method": "GET", "path": "/chunked", "host": "svc"},
        {"method": "GET", "path": "/status/503", "host": "svc"},
        {"method": "GET", "path": "/x", "host": "other"},
        {"method": "GET", "path": "/empty", "host": "svc"},
        {"method": "GET", "path": "/dead", "host": "svc"},
        {"method": "GET", "path": "/sleep/1500", "host": "svc"},
        {"method": "GET", "path": "/sleepbody/1500", "host": "svc"},
        {"method": "GET", "path": "/last", "host": "svc"},
    ]);
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: svc\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let raws: [&[u8]; 3] = [
        b"GET /ten HTTP/1.0\r\nHost: svc\r\nX-User: old\r\n\r\n",
        b"GET /bad HTTP/1.1\r\nHost: svc\r\nbad header\r\n\r\n",
        big.as_bytes(),
    ];
    let n = requests.as_array().unwrap().len() + raws.len();
    type Run = (
        Vec<String>,
        Vec<String>,
        Vec<Value>,
        Option<Ringside>,
        [u64; 2],
    );
    let run = |who: &str| -> Run {
        let listen = local(free_port());
        let xds = XdsServer::start();
        xds.put(&snapshot(listen, up, dead, &dir.0, who, who != "envoy"))
            .unwrap();
        let admin = local(free_port());
        let (envoy, ringside) = if who == "envoy" {
            let e = Envoy::start_with_args(
                &bootstrap(admin, xds.addr(), Ads::Sotw, "h1"),
                admin,
                &["--file-flush-interval-msec", "100"],
            );
            (Some(e), None)
        } else {
            let cfg = format!(
                "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: h1\n  node_cluster: t\n  mode: sotw\n  \
                 initial_fetch_timeout_ms: 5000\n  node_metadata:\n    NAMESPACE: shop\n    WORKLOAD_NAME: client-v1\n    \
                 CLUSTER_ID: Kubernetes\n    LABELS: {{app: client, version: v1}}\n",
                xds.addr()
            );
            (None, Some(Ringside::start(&cfg, admin, &["--shards", "1"])))
        };
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        wait_listening(listen);
        let got = http1_outcomes(listen, &requests);
        let mut statuses: Vec<String> = got
            .iter()
            .map(|o| {
                o.trim_start_matches("[new] ")
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        for r in raws {
            statuses.push(raw(listen, r));
        }
        eprintln!("{who}: {got:#?} {statuses:?}");
        let text = lines(&dir.0.join(format!("{who}-http.log")), n);
        let json: Vec<Value> = lines(&dir.0.join(format!("{who}-http.json")), n)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{who}: {e}: {l}")))
            .collect();
        // The requests to the cluster, and its route timeouts (before the response head and
        // during its body).
        let stat = |name: &str| {
            let name = format!("cluster.{UP}.{name}");
            match (&envoy, &ringside) {
                (Some(e), _) => e.stat(&name),
                (_, Some(r)) => r.stat_value(&name).unwrap_or(0) as u64,
                _ => unreachable!(),
            }
        };
        let counts = [stat("upstream_rq_total"), stat("upstream_rq_timeout")];
        drop(envoy);
        (statuses, text, json, ringside, counts)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    assert_eq!(
        envoy.0,
        [
            "200",
            "200",
            "200",
            "200",
            "200",
            "503",
            "404",
            "503",
            "503",
            "504",
            "error",
            "200",
            "HTTP/1.1 426 Upgrade Required",
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 431 Request Header Fields Too Large",
        ],
        "Envoy's statuses"
    );
    assert_eq!(ringside.0, envoy.0, "statuses");
    for (i, (r, e)) in ringside.1.iter().zip(&envoy.1).enumerate() {
        assert_eq!(r, e, "line {i}, ringside (left) vs Envoy (right)");
    }
    assert_eq!(ringside.1.len(), envoy.1.len(), "{:#?}", ringside.1);
    assert_eq!(ringside.2, envoy.2, "JSON lines");
    assert_eq!(
        envoy.4,
        [9, 2],
        "Envoy's upstream_rq_total and upstream_rq_timeout"
    );
    assert_eq!(
        ringside.4, envoy.4,
        "upstream_rq_total and upstream_rq_timeout"
    );

    // Istio's metrics: one series per (status, flags, cluster) with the requests Envoy's lines
    // show for it, and the body bytes they show each way.
    let rs = ringside.3.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let scraped = loop {
        let (code, prom) = rs.get("/stats/prometheus");
        assert_eq!(code, 200);
        let s = samples(&prom);
        let total: f64 = s
            .iter()
            .filter(|x| x.0 == "istio_requests_total")
            .map(|x| x.2)
            .sum();
        if total >= n as f64 {
            break s;
        }
        assert!(Instant::now() < deadline, "not all counted:\n{prom}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Envoy's lines, grouped as the labels group them: (code, flags, cluster) -> (requests,
    // bytes received, bytes sent).
    let mut want: BTreeMap<(String, String, String), (f64, f64, f64)> = BTreeMap::new();
    for l in &envoy.1 {
        let f: Vec<&str> = l.split(' ').collect();
        let e = want
            .entry((f[4].to_string(), f[5].to_string(), f[8].to_string()))
            .or_default();
        e.0 += 1.0;
        e.1 += f[6].parse::<f64>().unwrap();
        e.2 += f[7].parse::<f64>().unwrap();
    }
    let mut got: BTreeMap<(String, String, String), (f64, f64, f64)> = BTreeMap::new();
    for (name, labels, value) in &scraped {
        if !name.starts_with("istio_") {
            continue;
        }
        assert_eq!(labels["request_protocol"], "http", "{name} {labels:?}");
        assert_eq!(labels["grpc_response_status"], "", "{name} {labels:?}");
        assert_eq!(labels["reporter"], "source", "{name} {labels:?}");
        assert_eq!(labels["source_workload"], "client-v1", "{name} {labels:?}");
        let cluster = match labels["destination_service"].as_str() {
            "up.shop.svc.cluster.local" => UP.to_string(),
            "unknown" => "-".to_string(),
            other => panic!("{other}"),
        };
        let key = (
            labels["response_code"].clone(),
            labels["response_flags"].clone(),
            cluster,
        );
        let e = got.entry(key).or_default();
        match name.as_str() {
            "istio_requests_total" => e.0 += value,
            "istio_request_bytes_sum" => e.1 += value,
            "istio_response_bytes_sum" => e.2 += value,
            _ => {}
        }
    }
    // Envoy logs the clusters `dead` and `empty` by name; Istio's labels have no service
    // for them (not an Istio cluster name): `unknown`, as for no route.
    let want: BTreeMap<_, _> = want
        .into_iter()
        .fold(BTreeMap::new(), |mut m, ((c, f, cl), v)| {
            let cl = if cl == UP { cl } else { "-".to_string() };
            let e: &mut (f64, f64, f64) = m.entry((c, f, cl)).or_default();
            e.0 += v.0;
            e.1 += v.1;
            e.2 += v.2;
            m
        });
    assert_eq!(got, want, "Istio's metrics (left) vs Envoy's lines (right)");
}

/// Envoy 1.40 or ringside (one shard) on `snapshot` (version `v1`), serving on `listen`.
enum Proxy {
    Envoy(Envoy),
    Ringside(Ringside),
}

impl Proxy {
    fn start(who: &str, snapshot: &Value, listen: SocketAddr) -> (Proxy, XdsServer) {
        let xds = XdsServer::start();
        xds.put(snapshot).unwrap();
        let admin = local(free_port());
        let p = if who == "envoy" {
            Proxy::Envoy(Envoy::start_with_args(
                &bootstrap(admin, xds.addr(), Ads::Sotw, "h1"),
                admin,
                &["--file-flush-interval-msec", "100"],
            ))
        } else {
            let cfg = format!(
                "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: h1\n  node_cluster: t\n  mode: sotw\n  \
                 initial_fetch_timeout_ms: 5000\n",
                xds.addr()
            );
            Proxy::Ringside(Ringside::start(&cfg, admin, &["--shards", "1"]))
        };
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        wait_listening(listen);
        (p, xds)
    }

    /// A counter's value (-1: not there).
    fn stat(&self, name: &str) -> i64 {
        match self {
            Proxy::Envoy(e) => e.stat(name) as i64,
            Proxy::Ringside(r) => r.stat_value(name).unwrap_or(-1),
        }
    }
}

/// Routes with the HTTP fault filter's per-route config as istiod writes a VirtualService
/// `fault` (`typed_per_filter_config`, the connection manager's empty fault filter first):
/// an abort with an HTTP status, one with a gRPC status, a delay (longer than the route's
/// timeout, which runs from the delay's end), a delay then an abort, Istio's empty config that
/// injects nothing, and a 50 % abort. HTTP/1.1 requests (Python's http.client on one keep-alive
/// connection, a body on an aborted request) through Envoy 1.40 and ringside: the same
/// statuses and connection reuse, the same access-log lines (`FI`, `DI`), the same fault
/// counters; the 50 % route aborts between 25 % and 75 % of 40 requests in both.
#[test]
fn http1_faults_like_envoy() {
    let up_port = free_port();
    let _up = Http1Server::start("127.0.0.1", up_port, "up");
    let up = local(up_port);
    let dir = TempDir::new("http1-fault");
    let hundred = json!({"numerator": 100, "denominator": "HUNDRED"});
    let fault = |f: Value| {
        let mut v = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
        v.as_object_mut()
            .unwrap()
            .extend(f.as_object().unwrap().clone());
        json!({"envoy.filters.http.fault": v})
    };
    let route = |prefix: &str, timeout: &str, f: Option<Value>| {
        let mut r =
            json!({"match": {"prefix": prefix}, "route": {"cluster": "up", "timeout": timeout}});
        if let Some(f) = f {
            r["typed_per_filter_config"] = fault(f);
        }
        r
    };
    let snapshot = |who: &str, listen: SocketAddr| {
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http", "codec_type": "AUTO",
            "route_config": {"name": "r", "virtual_hosts": [{"name": "svc", "domains": ["svc"], "routes": [
                route("/http-abort", "5s", Some(json!({"abort": {"http_status": 503, "percentage": hundred}}))),
                route("/grpc-abort", "5s", Some(json!({"abort": {"grpc_status": 7, "percentage": hundred}}))),
                route("/delay-abort", "5s", Some(json!({"delay": {"fixed_delay": "0.3s", "percentage": hundred},
                    "abort": {"http_status": 429, "percentage": hundred}}))),
                route("/delay", "0.5s", Some(json!({"delay": {"fixed_delay": "0.8s", "percentage": hundred}}))),
                route("/empty", "5s", Some(json!({"abort": {"http_status": 503}}))),
                route("/half", "5s", Some(json!({"abort": {"http_status": 500,
                    "percentage": {"numerator": 50, "denominator": "HUNDRED"}}}))),
                route("/", "5s", None)]}]},
            "http_filters": [
                {"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
                {"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": dir.0.join(format!("{who}.log")).display().to_string(),
                "log_format": {"text_format_source": {"inline_string": FORMAT}}}}]
        });
        json!({
            "version": "v1",
            "listeners": [{"name": "http", "address": socket(listen), "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": [{"name": "up", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": load_assignment("up", &[up])}]
        })
    };
    let requests = json!([
        {"method": "GET", "path": "/http-abort", "host": "svc"},
        {"method": "POST", "path": "/http-abort", "host": "svc", "body_len": 100},
        {"method": "GET", "path": "/grpc-abort", "host": "svc"},
        {"method": "GET", "path": "/delay-abort", "host": "svc"},
        {"method": "GET", "path": "/delay", "host": "svc"},
        {"method": "GET", "path": "/empty", "host": "svc"},
        {"method": "GET", "path": "/last", "host": "svc"},
    ]);
    let halves = json!((0..40)
        .map(|_| json!({"method": "GET", "path": "/half", "host": "svc"}))
        .collect::<Vec<_>>());
    let n = requests.as_array().unwrap().len();
    let run = |who: &str| -> (Vec<String>, Vec<String>, usize, Vec<i64>) {
        let listen = local(free_port());
        let (proxy, _xds) = Proxy::start(who, &snapshot(who, listen), listen);
        let t0 = Instant::now();
        let got: Vec<String> = http1_outcomes(listen, &requests)
            .iter()
            .map(|o| common::http1::http1_comparable(o))
            .collect();
        let took = t0.elapsed();
        // The delays: 0.3 s and 0.8 s.
        assert!(took >= Duration::from_millis(1050), "{who}: {took:?}");
        let aborted = http1_outcomes(listen, &halves)
            .iter()
            .filter(|o| common::http1::http1_comparable(o).ends_with("500"))
            .count();
        let log: Vec<String> = lines(&dir.0.join(format!("{who}.log")), n + 40)
            .into_iter()
            .filter(|l| !l.contains(" /half "))
            .collect();
        let prefix = match who {
            "envoy" => "http.http.",
            _ => "listener.http.",
        };
        let stats = ["fault.aborts_injected", "fault.delays_injected"]
            .iter()
            .map(|s| proxy.stat(&format!("{prefix}{s}")))
            .collect();
        eprintln!("{who}: {got:#?} {log:#?} {aborted} {stats:?}");
        (got, log, aborted, stats)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    assert_eq!(
        ringside.0, envoy.0,
        "statuses, ringside (left) vs Envoy (right)"
    );
    assert_eq!(
        ringside.1, envoy.1,
        "log lines, ringside (left) vs Envoy (right)"
    );
    for (who, r) in [("envoy", &envoy), ("ringside", &ringside)] {
        assert!(
            (10..=30).contains(&r.2),
            "{who}: {} of 40 aborted at 50 %",
            r.2
        );
    }
    // Aborts: 4 + the 50 % route's; delays: 2.
    assert_eq!(envoy.3, [4 + envoy.2 as i64, 2], "Envoy's counters");
    assert_eq!(
        ringside.3,
        [4 + ringside.2 as i64, 2],
        "ringside's counters"
    );
}

/// How many requests with the `/flaky/` key of `path` the peer server at `server` has seen.
fn seen_by(server: SocketAddr, path: &str) -> usize {
    let got = http1_outcomes(
        server,
        &json!([{"method": "GET", "path": path, "host": "probe"}]),
    );
    let line = &got[0];
    let k: usize = line
        .rsplit("try=")
        .next()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    k - 1
}

/// Routes with `request_mirror_policies` as istiod writes a VirtualService `mirror`: every
/// request (100 %), none (0 %), half (50 %), to a shadow cluster (Python's http.server,
/// counting what it gets by key). HTTP/1.1 requests (GET, POST with a body, a chunked PUT)
/// through Envoy 1.40 and ringside: the caller's answers are the primary's, the same in both,
/// and the shadow gets the same number of copies (the 50 % route: between 25 % and 75 % of 40
/// in both).
#[test]
fn http1_mirrors_like_envoy() {
    let (up_port, shadow_port) = (free_port(), free_port());
    let _up = Http1Server::start("127.0.0.1", up_port, "up");
    let _shadow = Http1Server::start("127.0.0.1", shadow_port, "shadow");
    let (up, shadow) = (local(up_port), local(shadow_port));
    let route = |prefix: &str, mirror: Option<u32>| {
        let mut r =
            json!({"match": {"prefix": prefix}, "route": {"cluster": "up", "timeout": "5s"}});
        if let Some(pct) = mirror {
            r["route"]["request_mirror_policies"] = json!([{"cluster": "shadow",
                "runtime_fraction": {"default_value": {"numerator": pct, "denominator": "HUNDRED"}}}]);
        }
        r
    };
    let snapshot = |listen: SocketAddr| {
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http", "codec_type": "AUTO",
            "route_config": {"name": "r", "virtual_hosts": [{"name": "svc", "domains": ["svc"], "routes": [
                route("/all/", Some(100)), route("/none/", Some(0)), route("/half/", Some(50)),
                route("/", None)]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        });
        let cluster = |name: &str, ep: SocketAddr| {
            json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
                   "load_assignment": load_assignment(name, &[ep])})
        };
        json!({
            "version": "v1",
            "listeners": [{"name": "http", "address": socket(listen), "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": [cluster("up", up), cluster("shadow", shadow)]
        })
    };
    let run = |who: &str| -> (Vec<String>, [usize; 3], i64) {
        let listen = local(free_port());
        let (proxy, _xds) = Proxy::start(who, &snapshot(listen), listen);
        let key = |route: &str| format!("/{route}/flaky/{who}-{route}/0/200");
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(json!({"method": "GET", "path": key("all"), "host": "svc"}));
        }
        requests
            .push(json!({"method": "POST", "path": key("all"), "host": "svc", "body_len": 300}));
        requests.push(json!({"method": "PUT", "path": key("all"), "host": "svc", "body_len": 5000, "chunked": true}));
        for _ in 0..3 {
            requests.push(json!({"method": "GET", "path": key("none"), "host": "svc"}));
        }
        for _ in 0..40 {
            requests.push(json!({"method": "GET", "path": key("half"), "host": "svc"}));
        }
        let got: Vec<String> = http1_outcomes(listen, &json!(requests))
            .iter()
            .map(|o| o.replace(&format!("{who}-"), "WHO-"))
            .collect();
        // Shadow copies are fire and forget: give them time to arrive.
        std::thread::sleep(Duration::from_millis(1000));
        let counts = [
            seen_by(shadow, &key("all")),
            seen_by(shadow, &key("none")),
            seen_by(shadow, &key("half")),
        ];
        // Each shadow copy is a request to the shadow cluster.
        let sent = proxy.stat("cluster.shadow.upstream_rq_total");
        eprintln!("{who}: {counts:?} {sent}");
        (got, counts, sent)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    assert_eq!(
        ringside.0, envoy.0,
        "answers, ringside (left) vs Envoy (right)"
    );
    assert_eq!(envoy.1[..2], [5, 0], "Envoy's shadow copies");
    assert_eq!(
        ringside.1[..2],
        envoy.1[..2],
        "shadow copies, ringside (left) vs Envoy (right)"
    );
    for (who, r) in [("envoy", &envoy), ("ringside", &ringside)] {
        assert!(
            (10..=30).contains(&r.1[2]),
            "{who}: {} of 40 mirrored at 50 %",
            r.1[2]
        );
        let copies: usize = r.1.iter().sum();
        assert_eq!(
            r.2, copies as i64,
            "{who}: shadow cluster's upstream_rq_total"
        );
    }
}

/// Route matches istiod writes for VirtualService `uri` / `queryParams` / `ignoreUriCase`
/// and Gateway-API (GAMMA) HTTPRoutes (`path_separated_prefix`), on HTTP paths deeper than
/// `/{service}/{method}`: `path_separated_prefix`, a case-insensitive prefix and path, an
/// exact deep path, a `safe_regex` on the whole path, `query_parameters` (exact, present, a
/// value not percent-decoded, the first of a repeated name), a gRPC-shaped prefix and a deep
/// prefix; no catch-all, so an unmatched request is 404 (`NR`). The same HTTP/1.1 requests
/// through Envoy 1.40 and ringside reach the same upstream (each cluster is its own Python
/// server, which names itself in its answer) or the same 404.
#[test]
fn http1_route_matching_like_envoy() {
    let names = ["a", "b", "c", "d", "e"];
    let servers: Vec<(Http1Server, SocketAddr)> = names
        .iter()
        .map(|n| {
            let port = free_port();
            (Http1Server::start("127.0.0.1", port, n), local(port))
        })
        .collect();
    let route = |m: Value, cluster: &str| json!({"match": m, "route": {"cluster": cluster}});
    let query = |name: &str, m: Value| {
        let mut q = json!({"name": name});
        q.as_object_mut()
            .unwrap()
            .extend(m.as_object().unwrap().clone());
        q
    };
    let routes = json!([
        route(json!({"path_separated_prefix": "/api/v1"}), "a"),
        route(json!({"prefix": "/Static/", "case_sensitive": false}), "b"),
        route(json!({"path": "/exact/deep/path"}), "c"),
        route(
            json!({"safe_regex": {"regex": "/items/[0-9]+/detail"}}),
            "d"
        ),
        route(
            json!({"prefix": "/q", "query_parameters": [
            query("mode", json!({"string_match": {"exact": "x"}}))]}),
            "e"
        ),
        route(
            json!({"prefix": "/q", "query_parameters": [
            query("flag", json!({"present_match": true})),
            query("v", json!({"string_match": {"prefix": "1."}}))]}),
            "d"
        ),
        route(json!({"prefix": "/grpc.Svc/Meth"}), "c"),
        route(json!({"path": "/Exact/CI", "case_sensitive": false}), "e"),
        route(json!({"prefix": "/deep/a/b/"}), "a"),
        // istiod's `withoutHeaders`: an exact match inverted with a missing header as empty,
        // an inverted presence, and an inverted prefix (a missing header fails it).
        route(
            json!({"prefix": "/h/", "headers": [{"name": "x-canary",
            "string_match": {"exact": "1"}, "invert_match": true,
            "treat_missing_header_as_empty": true}]}),
            "b"
        ),
        route(
            json!({"prefix": "/h/", "headers": [{"name": "x-debug", "present_match": true,
            "invert_match": true}]}),
            "c"
        ),
        route(
            json!({"prefix": "/h/", "headers": [{"name": "x-v",
            "string_match": {"prefix": "2"}, "invert_match": true}]}),
            "d"
        ),
        route(json!({"prefix": "/h/"}), "e"),
    ]);
    let snapshot = |listen: SocketAddr| {
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http", "codec_type": "AUTO",
            "route_config": {"name": "r", "virtual_hosts": [
                {"name": "svc", "domains": ["svc"], "routes": routes.clone()}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        });
        let clusters: Vec<Value> = names
            .iter()
            .zip(&servers)
            .map(|(n, (_, addr))| {
                json!({"name": n, "type": "STATIC", "connect_timeout": "1s",
                       "load_assignment": load_assignment(n, &[*addr])})
            })
            .collect();
        json!({
            "version": "v1",
            "listeners": [{"name": "http", "address": socket(listen), "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": clusters
        })
    };
    let paths = [
        "/api/v1",
        "/api/v1/",
        "/api/v1/users",
        "/api/v1?x=1",
        "/api/v12",
        "/API/v1",
        "/static/x",
        "/STATIC/y",
        "/Static",
        "/exact/deep/path",
        "/exact/deep/path?q=1",
        "/exact/deep/path/",
        "/exact/deep",
        "/items/42/detail",
        "/items/42/detail?z",
        "/items/x/detail",
        "/items/42/detail/more",
        "/q?mode=x",
        "/q?mode=y&flag&v=1.2",
        "/q?flag=1&v=1.0&mode=x",
        "/q?mode=x&mode=y",
        "/q?mode=y&mode=x",
        "/q",
        "/qq?flag&v=1.",
        "/q?mode=%78",
        "/q?flag&v=2.0",
        "/q?=x&mode",
        "/grpc.Svc/Meth",
        "/grpc.Svc/Method2",
        "/grpc.Svc/Meth/extra",
        "/grpc.Svc/Met",
        "/exact/ci",
        "/EXACT/ci",
        "/Exact/CI/",
        "/deep/a/b/c",
        "/deep/a/b",
        "/",
    ];
    let with_headers = [
        json!({"x-canary": "1", "x-debug": "1"}),
        json!({"x-canary": "1", "x-debug": "1", "x-v": "3"}),
        json!({"x-canary": "1", "x-debug": "1", "x-v": "2a"}),
        json!({"x-canary": "1"}),
        json!({}),
        json!({"x-canary": "2", "x-debug": ""}),
    ];
    let requests: Vec<Value> = paths
        .iter()
        .map(|p| json!({"method": "GET", "path": p, "host": "svc"}))
        .chain(
            with_headers
                .iter()
                .map(|h| json!({"method": "GET", "path": "/h/x", "host": "svc", "headers": h})),
        )
        .collect();
    let labels: Vec<String> = paths
        .iter()
        .map(|p| p.to_string())
        .chain(with_headers.iter().map(|h| format!("/h/x {h}")))
        .collect();
    let requests = json!(requests);
    let run = |who: &str| -> Vec<String> {
        let listen = local(free_port());
        let (_proxy, _xds) = Proxy::start(who, &snapshot(listen), listen);
        http1_outcomes(listen, &requests)
            .iter()
            .zip(&labels)
            .map(|(o, p)| {
                // The answering server's name (the first word of its line), or the status.
                let o = common::http1::http1_comparable(o);
                let o = o.strip_prefix("[new] ").unwrap_or(&o);
                let mut words = o.split(' ');
                let status = words.next().unwrap_or("");
                let server = if status == "200" {
                    words.next().unwrap_or("")
                } else {
                    ""
                };
                format!("{p} -> {status} {server}")
            })
            .collect()
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    eprintln!("{envoy:#?}");
    assert_eq!(ringside, envoy, "ringside (left) vs Envoy 1.40 (right)");
    // The oracle itself reached every upstream and refused some: the routes were all exercised.
    for n in names {
        assert!(
            envoy.iter().any(|l| l.ends_with(&format!(" 200 {n}"))),
            "{n}: {envoy:#?}"
        );
    }
    assert!(envoy.iter().any(|l| l.ends_with(" 404 ")), "{envoy:#?}");
}

/// A listener (`codec_type: AUTO`, the connection manager's defaults: `proxy_100_continue`
/// off) whose routes on host `svc` pick by header: `x-short` a 300 ms route timeout,
/// `x-retry` one retry on `reset`, `x-mirror` a shadow copy of every request to `shadow`;
/// `/empty` a cluster without endpoints, `/dead` one whose endpoint refuses connections;
/// else `up` with a 5 s timeout.
fn upstream_snapshot(listen: SocketAddr, up: SocketAddr, shadow: SocketAddr) -> Value {
    let by = |header: &str, route: Value| {
        json!({"match": {"prefix": "/", "headers": [{"name": header, "present_match": true}]},
               "route": route})
    };
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "http", "codec_type": "AUTO",
        "route_config": {"name": "r", "virtual_hosts": [{"name": "svc", "domains": ["svc"], "routes": [
            by("x-short", json!({"cluster": "up", "timeout": "0.3s"})),
            by("x-retry", json!({"cluster": "up", "timeout": "5s",
                "retry_policy": {"retry_on": "reset", "num_retries": 1}})),
            by("x-mirror", json!({"cluster": "up", "timeout": "5s",
                "request_mirror_policies": [{"cluster": "shadow"}]})),
            {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
            {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "5s"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    });
    let cluster = |name: &str, eps: &[SocketAddr]| {
        json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": load_assignment(name, eps)})
    };
    json!({
        "version": "v1",
        "listeners": [{"name": "http", "address": socket(listen), "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
        "clusters": [cluster("up", &[up]), cluster("shadow", &[shadow]),
                     cluster("empty", &[]), cluster("dead", &[local(free_port())])]
    })
}

/// A raw HTTP/1.1 client connection: heads read one at a time from what arrived.
struct RawClient {
    s: std::net::TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    fn connect(target: SocketAddr, request: &[u8]) -> RawClient {
        let mut s = std::net::TcpStream::connect(target).unwrap();
        s.write_all(request).unwrap();
        RawClient { s, buf: Vec::new() }
    }

    /// The next response head (with its blank line) within `wait`; `timeout` when none came,
    /// `closed` when the connection closed first.
    fn head(&mut self, wait: Duration) -> String {
        let until = Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return "timeout".into();
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut b = [0u8; 4096];
            match self.s.read(&mut b) {
                Ok(0) => return "closed".into(),
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return "timeout".into(),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return "timeout".into(),
                Err(_) => return "closed".into(),
            }
        }
    }

    /// The body of a response with head `head` (its `content-length` bytes; none without).
    fn body(&mut self, head: &str) -> String {
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        self.s
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        while self.buf.len() < len {
            let mut b = [0u8; 4096];
            match self.s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
            }
        }
        let body: Vec<u8> = self.buf.drain(..len.min(self.buf.len())).collect();
        String::from_utf8_lossy(&body).trim_end().to_string()
    }
}

/// The status line of a response head.
fn status_line(head: &str) -> String {
    head.lines().next().unwrap_or("").to_string()
}

/// `Expect: 100-continue` through Envoy 1.40 (its connection manager's default,
/// `proxy_100_continue: false`) and ringside, with a raw client that sends the head, waits up
/// to 1 s for an interim response (as curl does) and only then sends its body: a POST with a
/// body by length, a chunked PUT, a GET without body, a mixed-case `100-Continue`, another
/// expectation (forwarded as it came), and requests answered by the proxy itself (no route,
/// no endpoint, connection refused). The client sees the same interim response (byte for
/// byte), final status, body and connection state from both, and the upstream (Python's
/// http.server, which names the `expect` field it got) the same request.
#[test]
fn http1_expect_continue_like_envoy() {
    let (up_port, shadow_port) = (free_port(), free_port());
    let _up = Http1Server::start("127.0.0.1", up_port, "up");
    let _shadow = Http1Server::start("127.0.0.1", shadow_port, "shadow");
    let (up, shadow) = (local(up_port), local(shadow_port));
    let cases: [(&str, &[u8]); 8] = [
        ("POST /header/expect HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", b"hello"),
        ("PUT /header/expect HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nExpect: 100-Continue\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        ("GET /header/expect HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\n\r\n", b""),
        ("POST /header/expect HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n", b""),
        ("POST /header/expect HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: something\r\n\r\n", b"hello"),
        ("POST /x HTTP/1.1\r\nHost: other\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", b"hello"),
        ("POST /empty HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", b"hello"),
        ("POST /dead HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", b"hello"),
    ];
    let run = |who: &str| -> Vec<Vec<String>> {
        let listen = local(free_port());
        let (_proxy, _xds) = Proxy::start(who, &upstream_snapshot(listen, up, shadow), listen);
        let mut out = Vec::new();
        for (head, body) in cases {
            let mut c = RawClient::connect(listen, head.as_bytes());
            let mut seen = Vec::new();
            let mut first = c.head(Duration::from_secs(1));
            if first.starts_with("HTTP/1.1 1") || first == "timeout" {
                seen.push(first.replace("\r\n", "\\r\\n"));
                c.s.write_all(body).unwrap();
                first = c.head(Duration::from_secs(5));
            } else {
                seen.push("no interim".into());
            }
            seen.push(status_line(&first));
            let close = first
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n");
            seen.push(format!("close={close}"));
            seen.push(c.body(&first));
            // The connection after it: another request on it.
            let _ = c.s.write_all(b"GET /next HTTP/1.1\r\nHost: svc\r\n\r\n");
            let next = c.head(Duration::from_secs(2));
            seen.push(status_line(&next));
            eprintln!("{who}: {head:?}: {seen:?}");
            out.push(seen);
        }
        out
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    // Envoy answers the expectation on arrival, whatever comes after, and removes it.
    let interim = "HTTP/1.1 100 Continue\\r\\n\\r\\n";
    assert_eq!(envoy[0][0], interim, "Envoy: {envoy:?}");
    assert_eq!(
        envoy[0][3],
        "up POST /header/expect len=5 xfp=http rid=yes hop=none peer=127.0.0.1 expect=none",
        "Envoy: {envoy:?}"
    );
    assert_eq!(envoy[5][0], interim, "Envoy, no route: {envoy:?}");
    for (i, (r, e)) in ringside.iter().zip(&envoy).enumerate() {
        assert_eq!(r, e, "{:?}: ringside (left) vs Envoy (right)", cases[i].0);
    }
}

/// The gauge `cluster.NAME.upstream_rq_active` of `proxy` once it is `want`, or its value
/// when `within` passed first.
fn active_when(proxy: &Proxy, cluster: &str, want: i64, within: Duration) -> i64 {
    let name = format!("cluster.{cluster}.upstream_rq_active");
    let until = Instant::now() + within;
    loop {
        let v = proxy.stat(&name);
        if v == want || Instant::now() >= until {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cluster's `upstream_rq_active` through Envoy 1.40 and ringside, scraped from each
/// proxy's admin while HTTP/1.1 requests are in flight to a Python http.server and after they
/// ended: held before the response head, during its body, past the route's timeout (before
/// the head and during the body), reset by the upstream, retried after a reset, given up by
/// the caller, with a shadow copy (the shadow cluster's gauge too), and a request the proxy
/// answers itself (no endpoint, connection refused: never in flight). Both show the same
/// values at the same points and the same `upstream_rq_total`.
#[test]
fn http1_upstream_rq_active_like_envoy() {
    let (up_port, shadow_port) = (free_port(), free_port());
    let _up = Http1Server::start("127.0.0.1", up_port, "up");
    let _shadow = Http1Server::start("127.0.0.1", shadow_port, "shadow");
    let (up, shadow) = (local(up_port), local(shadow_port));
    let run = |who: &str| -> Vec<String> {
        let listen = local(free_port());
        let (proxy, _xds) = Proxy::start(who, &upstream_snapshot(listen, up, shadow), listen);
        let mut out = Vec::new();
        let long = Duration::from_secs(5);
        let get =
            |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nHost: svc\r\n{extra}\r\n");
        let mut note = |what: &str, v: String| {
            eprintln!("{who}: {what}: {v}");
            out.push(format!("{what}: {v}"));
        };
        // Held before its response head.
        let mut c = RawClient::connect(listen, get("/sleep/1500", "").as_bytes());
        let during = active_when(&proxy, "up", 1, long);
        let head = c.head(long);
        c.body(&head);
        let after = active_when(&proxy, "up", 0, long);
        note("held", format!("{during} {} {after}", status_line(&head)));
        // Held during its body.
        let mut c = RawClient::connect(listen, get("/sleepbody/1000", "").as_bytes());
        let head = c.head(long);
        let during = proxy.stat("cluster.up.upstream_rq_active");
        let body = c.body(&head);
        let after = active_when(&proxy, "up", 0, long);
        note(
            "body",
            format!("{during} {} {body} {after}", status_line(&head)),
        );
        // The route's timeout before the head, and during the body.
        let mut c = RawClient::connect(listen, get("/sleep/1500", "x-short: 1\r\n").as_bytes());
        let head = c.head(long);
        let after = active_when(&proxy, "up", 0, long);
        note("timeout", format!("{} {after}", status_line(&head)));
        let mut c = RawClient::connect(listen, get("/sleepbody/1500", "x-short: 1\r\n").as_bytes());
        let head = c.head(long);
        let state = c.head(long);
        let after = active_when(&proxy, "up", 0, long);
        note(
            "timeout in body",
            format!("{} {state} {after}", status_line(&head)),
        );
        // Reset by the upstream; retried after one.
        let reset = format!("/flaky/{who}-reset/1/reset");
        let mut c = RawClient::connect(listen, get(&reset, "").as_bytes());
        let head = c.head(long);
        let after = active_when(&proxy, "up", 0, long);
        note("reset", format!("{} {after}", status_line(&head)));
        let retried = format!("/flaky/{who}-retry/1/reset");
        let mut c = RawClient::connect(listen, get(&retried, "x-retry: 1\r\n").as_bytes());
        let head = c.head(long);
        let body = c.body(&head).replace(who, "WHO");
        let after = active_when(&proxy, "up", 0, long);
        note("retried", format!("{} {body} {after}", status_line(&head)));
        // The caller goes away while its request is held.
        let c = RawClient::connect(listen, get("/sleep/1500", "").as_bytes());
        let during = active_when(&proxy, "up", 1, long);
        drop(c);
        let after = active_when(&proxy, "up", 0, long);
        note("caller gone", format!("{during} {after}"));
        // A shadow copy: both clusters' gauges while held, then back.
        let mut c = RawClient::connect(listen, get("/sleep/1500", "x-mirror: 1\r\n").as_bytes());
        let during = active_when(&proxy, "up", 1, long);
        let shadow_during = active_when(&proxy, "shadow", 1, long);
        let head = c.head(long);
        c.body(&head);
        let after = active_when(&proxy, "up", 0, long);
        let shadow_after = active_when(&proxy, "shadow", 0, long);
        note(
            "mirrored",
            format!(
                "{during} {shadow_during} {} {after} {shadow_after}",
                status_line(&head)
            ),
        );
        // Answered by the proxy: never in flight.
        for path in ["/empty", "/dead"] {
            let mut c = RawClient::connect(listen, get(path, "").as_bytes());
            let head = c.head(long);
            note(
                path,
                format!(
                    "{} {}",
                    status_line(&head),
                    proxy.stat("cluster.up.upstream_rq_active")
                ),
            );
        }
        note(
            "totals",
            format!(
                "{} {}",
                proxy.stat("cluster.up.upstream_rq_total"),
                proxy.stat("cluster.shadow.upstream_rq_total")
            ),
        );
        out
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    assert!(
        envoy[0].starts_with("held: 1 HTTP/1.1 200 OK 0"),
        "Envoy: {envoy:#?}"
    );
    for (r, e) in ringside.iter().zip(&envoy) {
        assert_eq!(r, e, "ringside (left) vs Envoy (right)");
    }
    assert_eq!(ringside.len(), envoy.len());
}
