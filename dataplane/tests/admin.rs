//! The admin, health and Prometheus listeners against clients that hold connections open:
//! probes are answered at once whatever other clients do (issue 20: one byte-dripping client
//! used to stall every kubelet probe). And the endpoints tools and runbooks use (`/clusters`,
//! `/listeners`, `/stats?filter&usedonly`, `/reset_counters`, `/healthcheck/*`, `/logging`),
//! answered in the shapes Envoy 1.40 answers them in (the real Envoy, side by side).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{free_port, http, local, Ringside};

/// Kubelet's default probe timeout (`timeoutSeconds: 1`): a probe slower than this fails.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// ringside's whole-request deadline on the admin listeners (admin::REQUEST_DEADLINE).
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// admin::CONNECTIONS_MAX.
const CONNECTIONS_MAX: usize = 64;

struct Admin {
    rs: Ringside,
    health: SocketAddr,
    prometheus: SocketAddr,
}

fn start() -> Admin {
    let admin = local(free_port());
    let health = local(free_port());
    let prometheus = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\n  health_address: {health}\n  prometheus_address: {prometheus}\n"
    );
    let rs = Ringside::start(&config, admin, &["--shards", "1"]);
    Admin {
        rs,
        health,
        prometheus,
    }
}

/// One GET; panics unless it is answered 200 within [`PROBE_TIMEOUT`]; returns how long it took.
fn probe(addr: SocketAddr, path: &str) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    let read = s.read_to_string(&mut resp);
    let took = t.elapsed();
    assert!(
        read.is_ok() && resp.starts_with("HTTP/1.1 200"),
        "{path} on {addr}: no answer within {PROBE_TIMEOUT:?} ({read:?}, {resp:?})"
    );
    assert!(took < PROBE_TIMEOUT, "{path} on {addr} took {took:?}");
    took
}

/// A client that opened a request and sends one more byte of it every 4 s.
fn dripper(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"G").unwrap();
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for b in b"ET /healthz/ready HTTP/1.1\r\n" {
            std::thread::sleep(Duration::from_secs(4));
            if w.write_all(&[*b]).is_err() {
                return;
            }
        }
    });
    s
}

fn stat(rs: &Ringside, name: &str) -> u64 {
    let v = rs
        .stat_value(name)
        .unwrap_or_else(|| panic!("no stat {name} in /stats"));
    u64::try_from(v).unwrap_or_else(|_| panic!("stat {name} is negative: {v}"))
}

#[test]
fn probes_are_answered_while_a_client_drips_its_request() {
    let a = start();
    // One dripping client on each listener, connected before the probes.
    let _drips: Vec<TcpStream> = [a.rs.admin, a.health, a.prometheus]
        .into_iter()
        .map(dripper)
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // 12 probes over 6 s: the drippers send bytes meanwhile.
    let mut slowest = Duration::ZERO;
    for _ in 0..12 {
        slowest = slowest.max(probe(a.health, "/healthz/ready"));
        slowest = slowest.max(probe(a.prometheus, "/stats/prometheus"));
        slowest = slowest.max(probe(a.rs.admin, "/ready"));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("36 probes next to 3 dripping clients: slowest {slowest:?}");
}

#[test]
fn slow_clients_are_cut_at_the_deadline_and_cannot_exhaust_the_listener() {
    let a = start();
    let fds_before = a.rs.fd_count();
    // A client that sends half a request and then nothing is closed at the deadline.
    let mut idle = TcpStream::connect(a.health).unwrap();
    idle.write_all(b"GET /healthz/ready HTTP/1.1\r\n").unwrap();
    let t = Instant::now();
    // Many more open connections than the listener keeps: the oldest are closed to make room,
    // so the process holds a bounded number of them and probes still get in.
    let many: Vec<TcpStream> = (0..4 * CONNECTIONS_MAX)
        .map(|_| {
            let mut s = TcpStream::connect(a.health).unwrap();
            s.write_all(b"GET /heal").unwrap();
            s
        })
        .collect();
    for _ in 0..12 {
        probe(a.health, "/healthz/ready");
    }
    let fds = a.rs.fd_count();
    assert!(
        fds <= fds_before + CONNECTIONS_MAX + 4,
        "{fds} fds open (before: {fds_before}): the listener holds every connection"
    );
    let evicted = stat(&a.rs, "admin.health.downstream_cx_evicted");
    assert!(
        evicted >= (4 * CONNECTIONS_MAX + 1 - CONNECTIONS_MAX) as u64,
        "evicted {evicted}"
    );
    drop(many);
    // A fresh client that stalls is cut at the deadline.
    let mut stalled = TcpStream::connect(a.prometheus).unwrap();
    stalled.write_all(b"GET /stats/prom").unwrap();
    let t2 = Instant::now();
    stalled
        .set_read_timeout(Some(REQUEST_DEADLINE * 2))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = stalled.read(&mut buf);
    let took = t2.elapsed();
    assert!(matches!(n, Ok(0)), "stalled client: {n:?} after {took:?}");
    assert!(
        took >= REQUEST_DEADLINE - Duration::from_millis(200),
        "cut after {took:?}, before the deadline"
    );
    // Counted as the exchange is dropped, just after the client saw the close.
    let counted = Instant::now() + Duration::from_secs(2);
    while stat(&a.rs, "admin.prometheus.downstream_rq_timeout") == 0 && Instant::now() < counted {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stat(&a.rs, "admin.prometheus.downstream_rq_timeout"), 1);
    // The first client, the oldest, was evicted long before its deadline.
    idle.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(t.elapsed() < REQUEST_DEADLINE * 3);
    match idle.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the oldest slow client is still open: {other:?}"),
    }
    assert_eq!(http(a.health, "GET", "/healthz/ready").unwrap().0, 200);
}

// === Envoy's admin endpoints ===

/// An Envoy 1.40 with a static listener and a cluster of `endpoints` (outlier detection on),
/// named like ringside's, to compare the shapes of the answers.
fn envoy_beside(listen: SocketAddr, endpoints: &[SocketAddr]) -> common::envoy::Envoy {
    use common::envoy::{load_assignment, socket};
    let admin = local(free_port());
    let bootstrap = serde_json::json!({
        "node": {"id": "n", "cluster": "c"},
        "admin": {"address": socket(admin)},
        "static_resources": {
            "listeners": [{"name": "dubbo", "address": socket(listen), "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "dubbo", "cluster": "p"}
            }]}]}],
            "clusters": [{"name": "p", "type": "STATIC", "connect_timeout": "1s", "outlier_detection": {},
                "load_assignment": load_assignment("p", endpoints)}]
        }
    });
    common::envoy::Envoy::start(&bootstrap, admin)
}

/// The field names of `/clusters` text lines `p::ADDR::FIELD::value` of the first host, in
/// order, and the cluster-level fields `p::FIELD...::value` (without the value).
fn cluster_fields(text: &str, host: SocketAddr) -> (Vec<String>, Vec<String>) {
    let prefix = format!("p::{host}::");
    let mut per_host = Vec::new();
    let mut cluster = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix(&prefix) {
            per_host.push(rest.split("::").next().unwrap().to_string());
        } else if l.starts_with("p::") && !l.starts_with("p::127.") {
            let parts: Vec<&str> = l.split("::").collect();
            cluster.push(parts[..parts.len() - 1].join("::"));
        }
    }
    (per_host, cluster)
}

/// The shape of a JSON value: objects' keys (recursively), arrays by their first element,
/// scalars by type.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::String(_) => Value::from("string"),
        Value::Number(_) => Value::from("number"),
        Value::Bool(_) => Value::from("bool"),
        Value::Null => Value::Null,
    }
}

fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "POST", path).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

#[test]
fn clusters_and_listeners_answer_in_envoys_shapes() {
    use common::dubbo::{dubbo_config, Consumer, Provider};
    let (a, b) = (Provider::start("A"), Provider::start("B"));
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg = dubbo_config(admin, listen, &[("p", &[a.addr, b.addr])], "    cluster: p\n")
        .replace(
            "    timeout_ms: 1000\n",
            "    timeout_ms: 1000\n    outlier_detection: {consecutive_errors: 2, base_ejection_time_ms: 60000, max_ejection_percent: 50}\n",
        )
        .replace("admin:\n", "stats:\n  per_host: true\nadmin:\n");
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    let envoy = envoy_beside(local(free_port()), &[a.addr, b.addr]);
    let envoy_listen = envoy_listener_addr(&envoy);

    // /listeners: `name::address`, and listener_statuses.
    let (code, text) = rs.get("/listeners");
    assert_eq!(
        (code, text.as_str()),
        (200, format!("dubbo::{listen}\n").as_str())
    );
    assert_eq!(envoy.get("/listeners"), format!("dubbo::{envoy_listen}\n"));
    let ours: serde_json::Value =
        serde_json::from_str(&rs.get("/listeners?format=json").1).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&envoy.get("/listeners?format=json")).unwrap();
    assert_eq!(
        shape(&ours),
        shape(&theirs),
        "{ours:#}\nvs Envoy's\n{theirs:#}"
    );
    assert_eq!(
        ours["listener_statuses"][0]["local_address"]["socket_address"]["port_value"],
        listen.port()
    );

    // Traffic, then B fails twice in a row and is ejected.
    let mut c = Consumer::connect(listen);
    let args = [codec::dubbo::encode::Arg::Str("x")];
    let call = |c: &mut Consumer| {
        c.call(codec::dubbo::encode::RequestBuilder::new("com.acme.S", "echo").args(&args))
    };
    for _ in 0..4 {
        call(&mut c);
    }
    b.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..4 {
        call(&mut c);
    }

    // /clusters text: the same fields in the same order, per cluster and per host.
    let (code, text) = rs.get("/clusters");
    assert_eq!(code, 200);
    let etext = envoy.get("/clusters");
    let (ours_host, ours_cluster) = cluster_fields(&text, a.addr);
    let (envoy_host, envoy_cluster) = cluster_fields(&etext, a.addr);
    assert_eq!(
        ours_host, envoy_host,
        "per-host fields:\n{text}\nEnvoy:\n{etext}"
    );
    assert_eq!(
        ours_cluster, envoy_cluster,
        "cluster fields:\n{text}\nEnvoy:\n{etext}"
    );
    let line = |host: SocketAddr, field: &str| -> String {
        let p = format!("p::{host}::{field}::");
        text.lines()
            .find_map(|l| l.strip_prefix(&p))
            .unwrap_or_else(|| panic!("no {p} in\n{text}"))
            .to_string()
    };
    assert_eq!(line(a.addr, "health_flags"), "healthy");
    assert_eq!(
        line(b.addr, "health_flags"),
        "/failed_outlier_check",
        "{text}"
    );
    assert_eq!(line(a.addr, "rq_total"), "4", "{text}");
    // B's two error answers (status 80) are answers: rq_error counts requests that failed at
    // the connection or timed out.
    assert_eq!(line(b.addr, "rq_total"), "4", "{text}");
    assert_eq!(line(b.addr, "rq_error"), "0", "{text}");

    // JSON: Envoy's ClusterStatus shape (B's host status carries failed_outlier_check).
    let ours: serde_json::Value = serde_json::from_str(&rs.get("/clusters?format=json").1).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&envoy.get("/clusters?format=json")).unwrap();
    let host_of = |v: &serde_json::Value, port: u16| -> serde_json::Value {
        v["cluster_statuses"][0]["host_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["address"]["socket_address"]["port_value"] == port)
            .cloned()
            .unwrap_or_else(|| panic!("no host {port} in {v:#}"))
    };
    let names = |h: &serde_json::Value| -> Vec<(String, String)> {
        h["stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["type"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        names(&host_of(&ours, a.addr.port())),
        names(&host_of(&theirs, a.addr.port()))
    );
    let mut ours_cluster = ours["cluster_statuses"][0].clone();
    let mut theirs_cluster = theirs["cluster_statuses"][0].clone();
    for c in [&mut ours_cluster, &mut theirs_cluster] {
        c["host_statuses"] = serde_json::Value::Null;
    }
    assert_eq!(
        shape(&ours_cluster),
        shape(&theirs_cluster),
        "{ours:#}\nvs Envoy's\n{theirs:#}"
    );
    let b_status = host_of(&ours, b.addr.port());
    assert_eq!(
        b_status["health_status"]["failed_outlier_check"], true,
        "{b_status:#}"
    );
    assert_eq!(b_status["health_status"]["eds_health_status"], "HEALTHY");
    let a_status = host_of(&ours, a.addr.port());
    assert_eq!(
        shape(&a_status["health_status"]),
        shape(&host_of(&theirs, a.addr.port())["health_status"])
    );
    let rq_total = a_status["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "rq_total")
        .unwrap();
    assert_eq!(
        rq_total["value"], "4",
        "64-bit values as strings, as protobuf JSON"
    );
    std::mem::forget((a, b));
}

/// The address Envoy's static listener listens on (from its /listeners).
fn envoy_listener_addr(envoy: &common::envoy::Envoy) -> String {
    envoy
        .get("/listeners")
        .trim()
        .split("::")
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn health_check_fail_reset_counters_stats_filter_and_logging_as_envoy() {
    use common::dubbo::{dubbo_config, Consumer, Provider};
    let p = Provider::start("P");
    let (admin, listen) = (local(free_port()), local(free_port()));
    let health = local(free_port());
    let cfg = dubbo_config(admin, listen, &[("p", &[p.addr])], "    cluster: p\n")
        .replace("admin:\n", &format!("admin:\n  health_address: {health}\n"));
    let rs = Ringside::start(&cfg, admin, &["--shards", "2"]);
    let envoy = envoy_beside(local(free_port()), &[p.addr]);
    let both = |method: &str, path: &str| -> ((u16, String), (u16, String)) {
        (
            http(rs.admin, method, path).unwrap(),
            common::xds::http_body(envoy.admin, method, path, "").unwrap(),
        )
    };

    // /healthcheck/fail: POST only; /ready (and kubelet's /healthz/ready) answer 503 DRAINING
    // until /healthcheck/ok, while traffic is still served.
    let (ours, theirs) = both("GET", "/healthcheck/fail");
    assert_eq!((ours.0, theirs.0), (405, 405));
    let (ours, theirs) = both("POST", "/healthcheck/fail");
    assert_eq!(ours, (200, "OK\n".to_string()));
    assert_eq!(theirs, (200, "OK\n".to_string()));
    let (ours, theirs) = both("GET", "/ready");
    assert_eq!(ours, theirs);
    assert_eq!(ours, (503, "DRAINING\n".to_string()));
    assert_eq!(http(health, "GET", "/healthz/ready").unwrap().0, 503);
    let mut c = Consumer::connect(listen);
    let call = |c: &mut Consumer| {
        let a = c.call(codec::dubbo::encode::RequestBuilder::new(
            "com.acme.S",
            "echo",
        ));
        assert_eq!(a.status, codec::dubbo::Status::Ok);
    };
    for _ in 0..3 {
        call(&mut c);
    }
    let (ours, theirs) = both("POST", "/healthcheck/ok");
    assert_eq!((ours.0, theirs.0), (200, 200));
    let (ours, theirs) = both("GET", "/ready");
    assert_eq!(ours, theirs);
    assert_eq!(ours, (200, "LIVE\n".to_string()));
    assert_eq!(http(health, "GET", "/healthz/ready").unwrap().0, 200);

    // /stats?filter=REGEX (searched in the name) and usedonly (values not 0).
    let (code, text) = rs.get("/stats?filter=upstream_rq_(total|timeout)$");
    assert_eq!(code, 200);
    assert_eq!(
        text,
        "cluster.p.upstream_rq_timeout: 0\ncluster.p.upstream_rq_total: 3\n"
    );
    let (_, text) = rs.get("/stats?usedonly&filter=%5Ecluster%5C.p%5C.upstream_rq");
    assert_eq!(
        text, "cluster.p.upstream_rq_total: 3\n",
        "percent-decoded, zeros left out"
    );
    let (_, prom) = rs.get("/stats/prometheus?usedonly&filter=upstream_rq_total");
    assert!(
        prom.contains("ringside_cluster_upstream_rq_total{cluster=\"p\"} 3"),
        "{prom}"
    );
    assert!(!prom.contains("downstream"), "{prom}");
    let (_, json) = rs.get("/stats?format=json&filter=upstream_rq_total");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["stats"].as_array().unwrap().len(), 1, "{json}");
    let (ours, theirs) = both("GET", "/stats?filter=(");
    assert_eq!((ours.0, theirs.0), (400, 400), "a bad regex: {ours:?}");

    // /reset_counters: counters read 0 and count on from there; gauges are left alone.
    let (ours, theirs) = both("POST", "/reset_counters");
    assert_eq!((ours, theirs.0), ((200, "OK\n".to_string()), 200));
    assert_eq!(rs.stat_value("cluster.p.upstream_rq_total"), Some(0));
    assert_eq!(
        rs.stat_value("listener.dubbo.downstream_cx_active"),
        Some(1),
        "a gauge"
    );
    call(&mut c);
    assert_eq!(rs.stat_value("cluster.p.upstream_rq_total"), Some(1));

    // /logging: POST only; a level changes what is logged from then on; a bad one is refused.
    let (ours, theirs) = both("GET", "/logging");
    assert_eq!((ours.0, theirs.0), (405, 405));
    let (ours, theirs) = both("POST", "/logging?level=bogus");
    assert_eq!((ours.0, theirs.0), (400, 400));
    assert!(
        ours.1.starts_with("error: unknown logger level"),
        "{}",
        ours.1
    );
    let (ours, theirs) = both("POST", "/logging?level=debug");
    assert_eq!((ours.0, theirs.0), (200, 200));
    assert!(
        ours.1.starts_with("active loggers:\n") && theirs.1.starts_with("active loggers:\n"),
        "{}",
        ours.1
    );
    let (code, _) = post(rs.admin, "/logging?level=info");
    assert_eq!(code, 200);
    std::mem::forget(p);
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let admin = local(free_port());
    let mut rs = Ringside::start(
        &format!("admin:\n  address: {admin}\n"),
        admin,
        &["--shards", "1", "--log-format", "json"],
    );
    // A level change over the admin API is logged too (at info).
    assert_eq!(post(admin, "/logging?level=info").0, 200);
    assert_eq!(post(admin, "/drain").0, 200);
    let (status, log) = rs.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for k in ["timestamp", "level", "target", "message"] {
            assert!(v[k].is_string(), "no {k} in {l}");
        }
    }
    let changed = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["message"] == "admin: log level changed")
        .unwrap_or_else(|| panic!("no level change logged: {log}"));
    assert_eq!(changed["level"], "INFO");
    assert_eq!(changed["filter"], "info", "the event's fields: {changed}");
}

/// `/config_dump` parsed by the real `envoy.admin.v3.ConfigDump` definitions (protobuf's JSON
/// parser with the xds-protos messages, every `Any` resolved to its type): what
/// `istioctl proxy-config` unmarshals. Prints per dump type what it found.
fn parse_config_dump(text: &str) -> serde_json::Value {
    let script = r#"
import sys, json
from google.protobuf import json_format
import envoy.admin.v3.config_dump_pb2 as cd
import envoy.admin.v3.config_dump_shared_pb2 as cds
import envoy.config.listener.v3.listener_pb2 as lpb
import envoy.config.cluster.v3.cluster_pb2 as cpb
import envoy.config.route.v3.route_pb2 as rpb
import envoy.config.endpoint.v3.endpoint_pb2 as epb
import envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2
import envoy.extensions.filters.network.dubbo_proxy.v3.dubbo_proxy_pb2
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2
import envoy.extensions.filters.http.router.v3.router_pb2
import envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2
d = cd.ConfigDump()
# Strict inside configs (an unknown field there fails); ringside's own top-level keys aside.
doc = json.loads(sys.stdin.read())
json_format.ParseDict({"configs": doc["configs"]}, d)
out = {}
for a in d.configs:
    name = a.TypeName().split(".")[-1]
    if name == "ListenersConfigDump":
        m = cds.ListenersConfigDump(); a.Unpack(m)
        ls = []
        for s in list(m.static_listeners) + [x.active_state for x in m.dynamic_listeners]:
            l = lpb.Listener(); s.listener.Unpack(l)
            ls.append({"name": l.name, "port": l.address.socket_address.port_value,
                       "filters": [f.typed_config.TypeName() for c in l.filter_chains for f in c.filters]})
        out[name] = {"version_info": m.version_info, "listeners": ls}
    elif name == "ClustersConfigDump":
        m = cds.ClustersConfigDump(); a.Unpack(m)
        cs = []
        for s in list(m.static_clusters) + list(m.dynamic_active_clusters):
            c = cpb.Cluster(); s.cluster.Unpack(c)
            cs.append({"name": c.name, "type": cpb.Cluster.DiscoveryType.Name(c.type),
                       "consecutive_5xx": c.outlier_detection.consecutive_5xx.value})
        out[name] = {"clusters": cs}
    elif name == "RoutesConfigDump":
        m = cds.RoutesConfigDump(); a.Unpack(m)
        rs = []
        for s in list(m.static_route_configs) + list(m.dynamic_route_configs):
            r = rpb.RouteConfiguration(); s.route_config.Unpack(r)
            rs.append({"name": r.name, "clusters": [x.route.cluster for v in r.virtual_hosts for x in v.routes]})
        out[name] = {"routes": rs}
    elif name == "EndpointsConfigDump":
        m = cds.EndpointsConfigDump(); a.Unpack(m)
        es = []
        for s in list(m.static_endpoint_configs) + list(m.dynamic_endpoint_configs):
            e = epb.ClusterLoadAssignment(); s.endpoint_config.Unpack(e)
            es.append({"cluster": e.cluster_name, "ports": [x.endpoint.address.socket_address.port_value for g in e.endpoints for x in g.lb_endpoints]})
        out[name] = {"endpoints": es}
    else:
        out[name] = {}
print(json.dumps(out))
"#;
    let out = common::peers::python_script(script, text, "ConfigDump rejected");
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn config_dump_parses_as_envoys_config_dump() {
    let (admin, tcp, dubbo, grpc) = (
        local(free_port()),
        local(free_port()),
        local(free_port()),
        local(free_port()),
    );
    let up = local(free_port());
    let config = [
        format!("admin:\n  address: {admin}\nlisteners:"),
        format!("  - name: tcp\n    address: {tcp}\n    protocol: tcp\n    cluster: up"),
        format!("  - name: dubbo\n    address: {dubbo}\n    protocol: dubbo\n    cluster: up"),
        "    dubbo:\n      routes:\n        - match: {method: {exact: audit}}".into(),
        "          route: {cluster: audit}".into(),
        format!("  - name: grpc\n    address: {grpc}\n    protocol: triple\n    cluster: up"),
        "    triple:\n      routes:\n        - match: {service: {exact: pkg.Greeter}}".into(),
        "          route: {cluster: audit}".into(),
        format!("clusters:\n  - name: up\n    endpoints: [\"{up}\"]"),
        "    outlier_detection: {consecutive_errors: 7}".into(),
        format!("  - name: audit\n    endpoints: [\"{up}\"]\n"),
    ]
    .join("\n");
    let rs = Ringside::start(&config, admin, &["--shards", "1"]);
    let (code, text) = rs.get("/config_dump?include_eds");
    assert_eq!(code, 200);
    let d = parse_config_dump(&text);
    let listeners = d["ListenersConfigDump"]["listeners"].as_array().unwrap();
    let names: Vec<&str> = listeners
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tcp", "dubbo", "grpc"], "{d}");
    assert_eq!(listeners[0]["port"], tcp.port());
    assert_eq!(
        listeners[0]["filters"][0],
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    );
    assert_eq!(
        listeners[1]["filters"][0],
        "envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy"
    );
    assert_eq!(
        listeners[2]["filters"][0],
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let clusters = &d["ClustersConfigDump"]["clusters"];
    assert_eq!(clusters[0]["name"], "up");
    assert_eq!(clusters[0]["consecutive_5xx"], 7);
    assert_eq!(
        d["RoutesConfigDump"]["routes"][0],
        serde_json::json!({"name": "grpc", "clusters": ["audit", "up"]})
    );
    assert_eq!(
        d["EndpointsConfigDump"]["endpoints"][0],
        serde_json::json!({"cluster": "up", "ports": [up.port()]})
    );
    assert!(d.get("BootstrapConfigDump").is_some(), "{d}");
    // ringside's own view stays beside Envoy's.
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(raw["version"], 1);
    assert_eq!(raw["config"]["listeners"][0]["name"], "tcp");
}

// === POST /drain_listeners (pilot-agent's `?inboundonly&graceful` at pod shutdown) ===

/// The drain period of both proxies: ringside's `drain_timeout_ms`, Envoy's `--drain-time-s`.
const DRAIN_PERIOD: Duration = Duration::from_secs(3);

/// False when a connection to `addr` is refused; else one echo round trip through it must work.
fn accepts(addr: SocketAddr) -> bool {
    let mut c = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return false,
        // The handshake completed into the backlog as the listener closed: reset, as refused.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return false,
        Err(e) => panic!("connect {addr}: {e}"),
        Ok(c) => c,
    };
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    match c.read_exact(&mut buf) {
        Ok(()) => assert_eq!(&buf, b"ping"),
        // Accepted into the backlog just as the listener stopped: reset, as refused.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return false,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return false,
        Err(e) => panic!("echo through {addr}: {e}"),
    }
    true
}

/// What a client of the admin API and of two tcp listeners (`inbound`: traffic_direction
/// INBOUND, `outbound`: OUTBOUND) sees through a `/drain_listeners?inboundonly&graceful`, then
/// a plain `/drain_listeners`. `during` runs right after the first request (inside the drain
/// period).
#[derive(Debug, PartialEq)]
struct DrainWalk {
    answer: (u16, String),
    inbound_during: bool,
    outbound_during: bool,
    ready_during: u16,
    outbound_after: bool,
    ready_after: u16,
    again: (u16, String),
    all: (u16, String),
}

fn drain_walk(
    admin: SocketAddr,
    inbound: SocketAddr,
    outbound: SocketAddr,
    during: impl FnOnce(),
) -> (DrainWalk, Duration) {
    // Envoy keeps HTTP/1.1 connections open: `Connection: close` requests.
    let req = |method: &str, path: &str| {
        common::xds::http_body(admin, method, path, "")
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    };
    let ready = || req("GET", "/ready").0;
    assert!(accepts(inbound) && accepts(outbound));
    let t0 = Instant::now();
    let answer = req("POST", "/drain_listeners?inboundonly&graceful");
    let inbound_during = accepts(inbound);
    let outbound_during = accepts(outbound);
    let ready_during = ready();
    during();
    assert!(
        t0.elapsed() < DRAIN_PERIOD,
        "the checks inside the drain period took {:?}: inconclusive",
        t0.elapsed()
    );
    // The drain period ends: the inbound listener stops.
    while accepts(inbound) {
        assert!(
            t0.elapsed() < DRAIN_PERIOD + Duration::from_secs(5),
            "{inbound} still accepts"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped_after = t0.elapsed();
    let outbound_after = accepts(outbound);
    let ready_after = ready();
    let again = req("POST", "/drain_listeners?inboundonly&graceful");
    // Not graceful, every listener: the outbound one stops at once.
    let all = req("POST", "/drain_listeners");
    let t1 = Instant::now();
    while accepts(outbound) {
        assert!(
            t1.elapsed() < Duration::from_secs(2),
            "{outbound} still accepts"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let walk = DrainWalk {
        answer,
        inbound_during,
        outbound_during,
        ready_during,
        outbound_after,
        ready_after,
        again,
        all,
    };
    (walk, stopped_after)
}

#[test]
fn drain_listeners_inboundonly_graceful_as_envoy() {
    use common::dubbo::{Consumer, Provider};
    use common::envoy::{load_assignment, socket};
    let echo = common::echo_server();
    let provider = Provider::start("A");

    // Envoy 1.40 as pilot-agent runs it (`--drain-strategy immediate`), drain period 3 s.
    let (e_admin, e_in, e_out) = (local(free_port()), local(free_port()), local(free_port()));
    let tcp = |name: &str, addr: SocketAddr, direction: &str| {
        serde_json::json!({"name": name, "address": socket(addr), "traffic_direction": direction,
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": name, "cluster": "echo"}}]}]})
    };
    let bootstrap = serde_json::json!({
        "node": {"id": "n", "cluster": "c"},
        "admin": {"address": socket(e_admin)},
        "static_resources": {
            "listeners": [tcp("in", e_in, "INBOUND"), tcp("out", e_out, "OUTBOUND")],
            "clusters": [{"name": "echo", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": load_assignment("echo", &[echo])}]
        }
    });
    let period = DRAIN_PERIOD.as_secs().to_string();
    let _envoy = common::envoy::Envoy::start_with_args(
        &bootstrap,
        e_admin,
        &["--drain-time-s", &period, "--drain-strategy", "immediate"],
    );
    let (envoy_walk, envoy_stopped) = drain_walk(e_admin, e_in, e_out, || {});

    // ringside with the same listeners, and a Dubbo and a Triple listener, both inbound.
    let (admin, r_in, r_out) = (local(free_port()), local(free_port()), local(free_port()));
    let (dubbo_in, grpc_in) = (local(free_port()), local(free_port()));
    let cfg = format!(
        "admin: {{address: {admin}}}\ndrain_timeout_ms: {}\nlisteners:\n\
         \x20 - {{name: in, address: {r_in}, protocol: tcp, cluster: echo, traffic_direction: inbound}}\n\
         \x20 - {{name: out, address: {r_out}, protocol: tcp, cluster: echo, traffic_direction: outbound}}\n\
         \x20 - {{name: dubbo_in, address: {dubbo_in}, protocol: dubbo, cluster: p, traffic_direction: inbound}}\n\
         \x20 - {{name: grpc_in, address: {grpc_in}, protocol: triple, cluster: echo, traffic_direction: inbound}}\n\
         clusters:\n  - {{name: echo, endpoints: [\"{echo}\"]}}\n  - {{name: p, endpoints: [\"{}\"]}}\n",
        DRAIN_PERIOD.as_millis(),
        provider.addr
    );
    let mut rs = Ringside::start(&cfg, admin, &["--shards", "2"]);
    let args = [codec::dubbo::encode::Arg::Str("x")];
    let call = || codec::dubbo::encode::RequestBuilder::new("com.acme.S", "echo").args(&args);
    let mut old_dubbo = Consumer::connect(dubbo_in);
    assert_eq!(old_dubbo.call(call()).status, codec::dubbo::Status::Ok);
    let mut old_grpc = common::h2::Client::connect(grpc_in);
    let mut old_tcp = TcpStream::connect(r_in).unwrap();
    old_tcp.write_all(b"x").unwrap();
    old_tcp.read_exact(&mut [0u8; 1]).unwrap();
    let (walk, stopped) = drain_walk(admin, r_in, r_out, || {
        // Connections open before: told to leave (Dubbo readonly, then closed once idle;
        // HTTP/2 GOAWAY, then closed with no stream left).
        assert!(old_dubbo.recv().is_none() && old_dubbo.readonly);
        assert_eq!(old_grpc.read_until_closed(), Some(0), "GOAWAY NO_ERROR");
        // A consumer that connects inside the drain period is served, told to leave, and
        // closed once idle.
        let mut new = Consumer::connect(dubbo_in);
        assert_eq!(new.call(call()).status, codec::dubbo::Status::Ok);
        assert!(new.recv().is_none() && new.readonly);
    });
    assert_eq!(
        walk, envoy_walk,
        "ringside and Envoy 1.40 through /drain_listeners"
    );
    assert_eq!(walk.answer, (200, "OK\n".to_string()));
    assert!(walk.inbound_during && walk.outbound_during && walk.outbound_after);
    assert_eq!((walk.ready_during, walk.ready_after), (200, 200));
    for (who, s) in [("ringside", stopped), ("envoy", envoy_stopped)] {
        assert!(
            s >= DRAIN_PERIOD - Duration::from_millis(100),
            "{who}: inbound stopped {s:?} after the request, before the drain period"
        );
    }
    // The other inbound listeners stopped too; ringside closed the tcp connection still open
    // at the end of the period (Envoy leaves it: a difference, docs/observability.md).
    for a in [dubbo_in, grpc_in] {
        let e = TcpStream::connect(a).expect_err("stopped");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    old_tcp
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(old_tcp.read(&mut [0u8; 1]).unwrap_or(0), 0, "closed");
    // The process still runs, with its admin API.
    assert!(rs.child.try_wait().unwrap().is_none());
    assert_eq!(rs.get("/ready").0, 200);
}
