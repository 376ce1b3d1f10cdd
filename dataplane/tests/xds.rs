//! ringside driven by xDS: the test ADS server (tests/peers/xds/server.py) pushes Envoy v3
//! resources to the real binary, and real peers send traffic through what it built. Listeners,
//! routes, clusters and endpoints appear and change without a restart; an invalid resource is
//! NACKed and traffic keeps flowing on the old snapshot; a restarted server gets a resubscribe;
//! delta xDS; and a routing table checked against Envoy 1.40 given the same snapshot. Needs
//! scripts/install-test-deps (the venv with xds-protos, Envoy, the node peers).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::dubbo::Provider;
use common::envoy::*;
use common::grpc::{grpc_call, CallOpts, GrpcServer};
use common::peers::*;
use common::xds::*;
use common::*;
use serde_json::{json, Value};

const ECHO: &str = "com.ringside.test.EchoService";

fn any_method() -> Value {
    json!({"method": {"name": {"safe_regex": {"regex": ".*"}}}})
}

/// A ringside whose listeners and clusters all come from the ADS server at `xds`.
fn ringside_on(xds: SocketAddr, mode: &str, node: &str) -> Ringside {
    ringside_with(xds, mode, node, "")
}

/// [`ringside_on`] with `top` (top-level fields, one per line) added to its config file.
fn ringside_with(xds: SocketAddr, mode: &str, node: &str, top: &str) -> Ringside {
    let admin = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\n{top}\
         xds:\n  server: {xds}\n  node_id: {node}\n  node_cluster: tests\n  mode: {mode}\n  \
         initial_fetch_timeout_ms: 20000\n  retry_initial_ms: 100\n  retry_max_ms: 1000\n"
    );
    Ringside::start(&config, admin, &["--shards", "2"])
}

fn dump(rs: &Ringside) -> Value {
    let (code, body) = rs.get("/config_dump");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `/config_dump` satisfies `pred` (updates are applied asynchronously to the ACK
/// the test waited for only from the server's point of view).
fn wait_dump(rs: &Ringside, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let d = dump(rs);
        if pred(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "config_dump never showed {what}: {d}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stat(rs: &Ringside, name: &str) -> i64 {
    rs.stat_value(name).unwrap_or(0)
}

fn call(listen: SocketAddr, method: &str, arg: &str) -> Result<String, String> {
    dubbo_call(listen, &DubboCall::new(ECHO, "", "", method, arg))
}

/// The Dubbo listener of the SotW test: method `who2` → cluster `b`, `whoamiB` → `which`, any
/// other → `a`; `extra` is added to the `who2` route action (to make it invalid).
fn dubbo_out(listen: SocketAddr, which: &str, extra: Value) -> Value {
    let mut who2 = json!({"cluster": "b"});
    if let (Some(o), Some(e)) = (who2.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    dubbo_listener(
        "dubbo_out",
        listen,
        json!([{"name": "echo", "interface": ECHO, "routes": [
            {"match": {"method": {"name": {"exact": "who2"}}}, "route": who2},
            {"match": {"method": {"name": {"exact": "whoamiB"}}}, "route": {"cluster": which}},
            {"match": any_method(), "route": {"cluster": "a"}}
        ]}]),
    )
}

#[test]
fn sotw_listener_routes_endpoints_nack_and_server_restart() {
    let pa = free_port();
    let _a = NodeProvider::start(pa, "A", &[]);
    let (b, b2, c) = (
        Provider::start("b"),
        Provider::start("b2"),
        Provider::start("c"),
    );
    let listen = local(free_port());
    let clusters = json!([
        eds_cluster("a", false),
        eds_cluster("b", false),
        eds_cluster("c", false)
    ]);
    let endpoints = |b_addr: SocketAddr| {
        json!([
            load_assignment("a", &[local(pa)]),
            load_assignment("b", &[b_addr]),
            load_assignment("c", &[c.addr])
        ])
    };
    let mut xds = XdsServer::start();
    xds.put(&json!({
        "version": "v1",
        "listeners": [dubbo_out(listen, "b", json!({}))],
        "clusters": clusters, "endpoints": endpoints(b.addr)
    }))
    .unwrap();
    // /ready waits for the first snapshot.
    let rs = ringside_on(xds.addr(), "sotw", "ringside-sotw");
    for ty in [CDS, EDS, LDS] {
        let ack = xds.wait_ack(ty, "v1");
        assert!(ack["error_detail"].is_null(), "{ack}");
    }
    let streams = xds.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0]["node"], "ringside-sotw");
    let d = dump(&rs);
    assert_eq!(d["xds_versions"]["lds"], "v1", "{d}");
    assert_eq!(d["config"]["listeners"][0]["name"], "dubbo_out");
    assert_eq!(d["config"]["listeners"][0]["protocol"], "dubbo");
    let v1 = d["version"].as_u64().unwrap();

    // Real peers (node consumer → ringside → node provider) on the xDS listener.
    let (ok, lines) = {
        let mut cmd = node("consumer.js");
        cmd.args(["--address", &listen.to_string(), "--method", "whoami"]);
        run_consumer(cmd)
    };
    assert!(ok && lines[0]["result"] == "A", "{lines:?}");
    assert_eq!(call(listen, "who2", "1").unwrap(), "b|who2|1");
    assert_eq!(call(listen, "whoamiB", "1").unwrap(), "b|whoamiB|1");

    // A route change moves traffic (whoamiB → c); the rest stays.
    let held = common::dubbo::Consumer::connect(listen);
    xds.put(&json!({
        "version": "v2",
        "listeners": [dubbo_out(listen, "c", json!({}))],
        "clusters": clusters, "endpoints": endpoints(b.addr)
    }))
    .unwrap();
    xds.wait_ack(LDS, "v2");
    wait_dump(&rs, "lds v2", |d| d["xds_versions"]["lds"] == "v2");
    assert_eq!(call(listen, "whoamiB", "2").unwrap(), "c|whoamiB|2");
    assert_eq!(call(listen, "who2", "2").unwrap(), "b|who2|2");
    // A connection opened before the update routes on the new routes too.
    let mut held = held;
    let id = held.send(
        codec::dubbo::encode::RequestBuilder::new(ECHO, "whoamiB")
            .args(&[codec::dubbo::encode::Arg::Str("held")]),
    );
    let a = held
        .recv()
        .expect("answer on the connection opened before the update");
    assert_eq!(a.id, id);
    assert!(a.text.starts_with("c|whoamiB|held"), "{}", a.text);

    // An endpoint change (EDS) moves traffic of cluster b to b2, routes untouched.
    xds.put(&json!({
        "version": "v3",
        "listeners": [dubbo_out(listen, "c", json!({}))],
        "clusters": clusters, "endpoints": endpoints(b2.addr)
    }))
    .unwrap();
    xds.wait_ack(EDS, "v3");
    wait_dump(&rs, "eds v3", |d| d["xds_versions"]["eds"] == "v3");
    assert_eq!(call(listen, "who2", "3").unwrap(), "b2|who2|3");
    let good = dump(&rs);
    assert!(good["version"].as_u64().unwrap() > v1);

    // An invalid resource (a route action field ringside cannot honour) is NACKed with the
    // field named; the running snapshot stays and traffic keeps flowing on it.
    let bad = json!({"metadata_match": {"filter_metadata": {"envoy.lb": {"canary": true}}}});
    xds.put(&json!({
        "version": "v4",
        "listeners": [dubbo_out(listen, "a", bad)],
        "clusters": clusters, "endpoints": endpoints(b2.addr)
    }))
    .unwrap();
    let nack = xds.wait_nack(LDS, "v4");
    let detail = nack["error_detail"]["message"].as_str().unwrap_or_default();
    assert!(detail.contains("metadata_match"), "{nack}");
    assert_eq!(
        nack["version_info"], "v3",
        "the NACK names the last good version: {nack}"
    );
    assert_eq!(call(listen, "whoamiB", "4").unwrap(), "c|whoamiB|4");
    assert_eq!(dump(&rs)["version"], good["version"]);
    let (_, info) = rs.get("/server_info");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert!(info["xds"]["connected"] == true, "{info}");
    assert!(
        info["xds"]["last_nack"]
            .as_str()
            .unwrap_or_default()
            .contains("metadata_match"),
        "{info}"
    );

    // The server restarts: ringside reconnects and resubscribes with its versions, gets v4
    // again (NACK again), then a good v5 is applied.
    xds.restart();
    xds.wait_request(
        Duration::from_secs(15),
        "LDS resubscribe after restart",
        |r| r["type"] == LDS && r["version_info"] == "v3",
    );
    xds.put(&json!({
        "version": "v5",
        "listeners": [dubbo_out(listen, "a", json!({}))],
        "clusters": clusters, "endpoints": endpoints(b2.addr)
    }))
    .unwrap();
    xds.wait_ack(LDS, "v5");
    wait_dump(&rs, "lds v5", |d| d["xds_versions"]["lds"] == "v5");
    assert!(
        call(listen, "whoamiB", "5").is_err(),
        "node provider A has no whoamiB"
    );
    assert_eq!(call(listen, "who2", "5").unwrap(), "b2|who2|5");
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(&rs, "xds.reconnects") < 1 {
        assert!(Instant::now() < deadline, "xds.reconnects never counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stat(&rs, "config.update_applied") >= 4);
    assert!(stat(&rs, "xds.update_nacks") >= 1);
}

#[test]
fn delta_adds_changes_and_removes_dubbo_and_triple() {
    let (a, a2, b) = (
        Provider::start("a"),
        Provider::start("a2"),
        Provider::start("b"),
    );
    let g1 = GrpcServer::start(0, "g1", &[]);
    let g2 = GrpcServer::start(0, "g2", &[]);
    let (listen, tlisten) = (local(free_port()), local(free_port()));
    let triple_routes = |cluster: &str| {
        json!({"name": "triple_routes", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/helloworld.Greeter/"}, "route": {"cluster": cluster}}]
        }]})
    };
    let dubbo = dubbo_listener(
        "dubbo_out",
        listen,
        json!([{"name": "echo", "interface": ECHO, "routes": [
            {"match": {"method": {"name": {"exact": "toB"}}}, "route": {"cluster": "b"}},
            {"match": any_method(), "route": {"cluster": "a"}}
        ]}]),
    );
    let mut xds = XdsServer::start();
    xds.put(&json!({
        "version": "d1",
        "listeners": [dubbo.clone(), rds_listener("triple_out", tlisten, "triple_routes")],
        "routes": [triple_routes("g1")],
        "clusters": [eds_cluster("a", false), eds_cluster("b", false),
                     eds_cluster("g1", true), eds_cluster("g2", true)],
        "endpoints": [load_assignment("a", &[a.addr]), load_assignment("b", &[b.addr]),
                      load_assignment("g1", &[g1.addr()]), load_assignment("g2", &[g2.addr()])]
    }))
    .unwrap();
    let rs = ringside_on(xds.addr(), "delta", "ringside-delta");
    assert_eq!(xds.streams()[0]["mode"], "delta");
    assert_eq!(call(listen, "x", "1").unwrap(), "a|x|1");
    assert_eq!(call(listen, "toB", "1").unwrap(), "b|toB|1");
    let out = grpc_call(tlisten, &CallOpts::default());
    assert!(out.ok, "{out:?}");
    assert_eq!(out.servers(), ["g1"]);

    // d2: cluster b removed (its route now goes to a), a's endpoint moves to a2, the route
    // config alone moves gRPC to g2.
    let dubbo2 = dubbo_listener(
        "dubbo_out",
        listen,
        json!([{"name": "echo", "interface": ECHO, "routes": [
            {"match": any_method(), "route": {"cluster": "a"}}
        ]}]),
    );
    xds.put(&json!({
        "version": "d2",
        "listeners": [dubbo2, rds_listener("triple_out", tlisten, "triple_routes")],
        "routes": [triple_routes("g2")],
        "clusters": [eds_cluster("a", false), eds_cluster("g1", true), eds_cluster("g2", true)],
        "endpoints": [load_assignment("a", &[a2.addr]),
                      load_assignment("g1", &[g1.addr()]), load_assignment("g2", &[g2.addr()])]
    }))
    .unwrap();
    let removed = xds.wait_request(Duration::from_secs(15), "CDS ACK of d2", |r| {
        r["type"] == CDS && r["ack"] == true && r["acked_version"] == "d2"
    });
    assert!(removed["error_detail"].is_null(), "{removed}");
    let d = wait_dump(&rs, "cluster b gone and a at a2", |d| {
        let cl = d["config"]["clusters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        cl.iter().all(|c| c["name"] != "b")
            && cl
                .iter()
                .any(|c| c["name"] == "a" && c["endpoints"] == json!([a2.addr.to_string()]))
    });
    assert_eq!(d["config"]["listeners"].as_array().unwrap().len(), 2, "{d}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = grpc_call(tlisten, &CallOpts::default());
        if out.ok && out.servers() == ["g2"] {
            break;
        }
        assert!(Instant::now() < deadline, "gRPC never moved to g2: {out:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(call(listen, "toB", "2").unwrap(), "a2|toB|2");

    // d3: the triple listener is removed: it stops accepting.
    xds.put(&json!({
        "version": "d3",
        "listeners": [dubbo],
        "clusters": [eds_cluster("a", false), eds_cluster("b", false)],
        "endpoints": [load_assignment("a", &[a2.addr]), load_assignment("b", &[b.addr])]
    }))
    .unwrap();
    wait_dump(&rs, "one listener", |d| {
        d["config"]["listeners"]
            .as_array()
            .is_some_and(|l| l.len() == 1)
    });
    assert_eq!(call(listen, "toB", "3").unwrap(), "b|toB|3");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(tlisten).is_ok() {
        assert!(Instant::now() < deadline, "{tlisten} still accepts");
        std::thread::sleep(Duration::from_millis(50));
    }
    xds.terminate().unwrap();
}

/// An EDS update of one cluster takes the incremental path (`config.update_endpoints_only`):
/// only that cluster's endpoints change; every other cluster keeps its pool and its upstream
/// connection (the providers accept no new one), an endpoint that stays keeps its connection,
/// an endpoint that left gets no new request; a route change after it still works on the same
/// pools. In both ADS modes (state of the world resends every assignment; delta the changed
/// one).
#[test]
fn eds_update_changes_only_its_cluster_and_keeps_the_other_connections() {
    for mode in ["sotw", "delta"] {
        let (a, b1, b2, c) = (
            Provider::start("a"),
            Provider::start("b1"),
            Provider::start("b2"),
            Provider::start("c"),
        );
        let listen = local(free_port());
        let listener = |to_c: &str| {
            dubbo_listener(
                "dubbo_out",
                listen,
                json!([{"name": "echo", "interface": ECHO, "routes": [
                    {"match": {"method": {"name": {"exact": "toB"}}}, "route": {"cluster": "b"}},
                    {"match": {"method": {"name": {"exact": "toC"}}}, "route": {"cluster": to_c}},
                    {"match": any_method(), "route": {"cluster": "a"}}
                ]}]),
            )
        };
        let clusters = json!([
            eds_cluster("a", false),
            eds_cluster("b", false),
            eds_cluster("c", false)
        ]);
        let snapshot = |version: &str, to_c: &str, b: &[SocketAddr]| {
            json!({
                "version": version,
                "listeners": [listener(to_c)],
                "clusters": clusters,
                "endpoints": [load_assignment("a", &[a.addr]), load_assignment("b", b),
                              load_assignment("c", &[c.addr])]
            })
        };
        let mut xds = XdsServer::start();
        xds.put(&snapshot("v1", "c", &[b1.addr])).unwrap();
        let rs = ringside_on(xds.addr(), mode, &format!("ringside-incr-{mode}"));
        // One downstream connection: one shard, so each provider sees that shard's pool.
        let mut consumer = common::dubbo::Consumer::connect(listen);
        let mut call = |method: &str, arg: &str| -> String {
            let args = [codec::dubbo::encode::Arg::Str(arg)];
            let req = codec::dubbo::encode::RequestBuilder::new(ECHO, method).args(&args);
            consumer.call(req).text
        };
        assert!(call("x", "1").starts_with("a|x|1"), "{mode}");
        assert!(call("toB", "1").starts_with("b1|toB|1"), "{mode}");
        assert!(call("toC", "1").starts_with("c|toC|1"), "{mode}");
        let accepted = |p: &Provider| p.accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            (accepted(&a), accepted(&b1), accepted(&c)),
            (1, 1, 1),
            "{mode}"
        );
        let incremental = stat(&rs, "config.update_endpoints_only");
        let dumped = |d: &Value, cluster: &str| -> Value {
            let all = d["config"]["clusters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            all.into_iter()
                .find(|c| c["name"] == cluster)
                .map(|c| c["endpoints"].clone())
                .unwrap_or(Value::Null)
        };

        // v2: b gains b2. Only b changes; b1 keeps its connection.
        xds.put(&snapshot("v2", "c", &[b1.addr, b2.addr])).unwrap();
        xds.wait_ack(EDS, "v2");
        let d = wait_dump(&rs, "eds v2", |d| d["xds_versions"]["eds"] == "v2");
        assert_eq!(
            dumped(&d, "b"),
            json!([b1.addr.to_string(), b2.addr.to_string()]),
            "{mode}: {d}"
        );
        assert_eq!(dumped(&d, "a"), json!([a.addr.to_string()]), "{mode}");
        assert_eq!(
            stat(&rs, "config.update_endpoints_only"),
            incremental + 1,
            "{mode}: the EDS update did not take the incremental path"
        );
        let mut seen: Vec<String> = (0..4)
            .map(|i| {
                call("toB", &i.to_string())
                    .split('|')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, ["b1", "b2"], "{mode}");
        assert!(call("x", "2").starts_with("a|x|2"), "{mode}");
        assert!(call("toC", "2").starts_with("c|toC|2"), "{mode}");
        assert_eq!(
            (accepted(&a), accepted(&b1), accepted(&b2), accepted(&c)),
            (1, 1, 1, 1),
            "{mode}: a connection was dropped or a pool rebuilt"
        );

        // v3: b1 leaves: no new request goes to it; the others keep their connections.
        xds.put(&snapshot("v3", "c", &[b2.addr])).unwrap();
        xds.wait_ack(EDS, "v3");
        wait_dump(&rs, "eds v3", |d| d["xds_versions"]["eds"] == "v3");
        for i in 0..6 {
            let got = call("toB", &format!("after{i}"));
            assert!(got.starts_with("b2|toB|"), "{mode}: {got}");
        }
        assert!(call("x", "3").starts_with("a|x|3"), "{mode}");
        assert_eq!(
            (accepted(&a), accepted(&b2), accepted(&c)),
            (1, 1, 1),
            "{mode}"
        );
        assert_eq!(
            stat(&rs, "config.update_endpoints_only"),
            incremental + 2,
            "{mode}"
        );

        // v4: a route change after incremental snapshots (toC → b) runs on the same pools.
        xds.put(&snapshot("v4", "b", &[b2.addr])).unwrap();
        xds.wait_ack(LDS, "v4");
        wait_dump(&rs, "lds v4", |d| d["xds_versions"]["lds"] == "v4");
        assert!(call("toC", "4").starts_with("b2|toC|4"), "{mode}");
        assert!(call("x", "4").starts_with("a|x|4"), "{mode}");
        assert_eq!(
            (accepted(&a), accepted(&b2), accepted(&c)),
            (1, 1, 1),
            "{mode}"
        );
        xds.terminate().unwrap();
    }
}

/// A dubbo-echo provider (bench crate) on `addr` that answers every request with `name`.
fn echo_provider(addr: SocketAddr, name: &str) -> KillOnDrop {
    let child = std::process::Command::new(bench_bin("dubbo-echo"))
        .args([
            "--listen",
            &addr.to_string(),
            "--reply",
            "fixed",
            "--fixed",
            name,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "dubbo-echo {name} never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    KillOnDrop(child)
}

/// One answer a load thread got: when, and the provider's name or the error message.
type Answered = (Instant, Result<String, String>);

/// Sequential calls on one connection until `stop`.
fn load(listen: SocketAddr, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Vec<Answered> {
    let mut consumer = common::dubbo::Consumer::connect(listen);
    let mut out = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let args = [codec::dubbo::encode::Arg::Str("x")];
        let req = codec::dubbo::encode::RequestBuilder::new(ECHO, "echo").args(&args);
        let a = consumer.call(req);
        let r = match u8::from(a.status) {
            20 => Ok(a.text),
            s => Err(format!("status {s}: {}", a.text)),
        };
        out.push((Instant::now(), r));
    }
    out
}

/// EDS `load_balancing_weight` and `priority` with real providers: weights 3:1 at priority 0
/// split the traffic 3:1 and priority 1 gets none; with both priority-0 providers killed the
/// traffic moves to priority 1, and back once they restart. The only failures are requests on a
/// killed provider's connections as it died; requests that a connect to a dead provider would
/// have failed (after the kill, and each time its back-off ends) go to the next endpoint instead.
///
/// How many can fail: each load connection has one request in flight, so one per connection on
/// the killed provider's established connection, and at most one more on a connection ringside
/// opened while the provider was dying. Linux releases a killed process's files in task work,
/// last opened first: its accepted connections are reset before its listening socket closes,
/// so a reconnect right after the reset still completes the handshake into the accept queue and
/// is reset a moment later (on this machine's 6.18 kernel 188 of 200 reconnects made right after
/// such a reset were accepted). After that the listener is gone and connects are refused.
#[test]
fn eds_weights_split_traffic_and_priorities_fail_over_and_back() {
    let (a, b, c) = (local(free_port()), local(free_port()), local(free_port()));
    let mut pa = echo_provider(a, "p0a");
    let mut pb = echo_provider(b, "p0b");
    let _pc = echo_provider(c, "p1");
    let listen = local(free_port());
    let ep = |addr: SocketAddr, weight: u32| json!({"endpoint": {"address": socket(addr)}, "load_balancing_weight": weight});
    let assignment = json!({"cluster_name": "w", "endpoints": [
        {"priority": 0, "lb_endpoints": [ep(a, 3), ep(b, 1)]},
        {"priority": 1, "lb_endpoints": [{"endpoint": {"address": socket(c)}}]}
    ]});
    let mut xds = XdsServer::start();
    xds.put(&json!({
        "version": "v1",
        "listeners": [dubbo_listener("dubbo_out", listen, json!([{"name": "echo", "interface": ECHO,
            "routes": [{"match": any_method(), "route": {"cluster": "w"}}]}]))],
        "clusters": [eds_cluster("w", false)],
        "endpoints": [assignment]
    }))
    .unwrap();
    let rs = ringside_on(xds.addr(), "sotw", "ringside-eds-weights");
    let d = wait_dump(&rs, "listener and cluster w", |d| {
        d["config"]["listeners"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
    });
    let w = d["config"]["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "w"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&w["endpoints"], &w["endpoint_metadata"]),
        (
            &json!([a.to_string(), b.to_string(), c.to_string()]),
            &json!([{"weight": 3}, {"weight": 1}, {"weight": 1, "priority": 1}])
        ),
        "{d}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(listen, "echo", "x").is_err() {
        assert!(Instant::now() < deadline, "listener never served");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Weights: one connection (one shard's balancer), 400 calls, exactly 3:1.
    let mut counts = std::collections::BTreeMap::new();
    let mut consumer = common::dubbo::Consumer::connect(listen);
    for _ in 0..400 {
        let args = [codec::dubbo::encode::Arg::Str("x")];
        let req = codec::dubbo::encode::RequestBuilder::new(ECHO, "echo").args(&args);
        *counts.entry(consumer.call(req).text).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        [("p0a".to_string(), 300), ("p0b".to_string(), 100)].into(),
        "weights 3:1, nothing to priority 1"
    );

    // Priority failover under load: 4 connections of sequential calls.
    const CONNS: usize = 4;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..CONNS)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || load(listen, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    pa.0.kill().unwrap();
    pb.0.kill().unwrap();
    let _ = (pa.0.wait(), pb.0.wait());
    // Three back-off periods (500 ms): each ends with a connect to a dead provider.
    std::thread::sleep(Duration::from_millis(1600));
    let restarted = Instant::now();
    let _pa = echo_provider(a, "p0a");
    let _pb = echo_provider(b, "p0b");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let per_conn: Vec<Vec<Answered>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut failed = 0;
    for answers in &per_conn {
        // (time since the kill, None before it; the message)
        let errors: Vec<(Option<Duration>, &String)> = answers
            .iter()
            .filter_map(|(t, r)| Some((t.checked_duration_since(killed), r.as_ref().err()?)))
            .collect();
        for provider in [a, b] {
            let on = errors
                .iter()
                .filter(|(_, e)| e.contains(&provider.to_string()));
            // Its established connection, and one opened while it was dying (see above).
            assert!(on.count() <= 2, "{provider}: {errors:#?}");
        }
        for (after, e) in &errors {
            // Status 80 naming a killed provider as it died (never a failed connect, nothing
            // later).
            assert!(
                e.starts_with("status 80")
                    && (e.contains(&a.to_string()) || e.contains(&b.to_string()))
                    && !e.contains("connect failed")
                    && !e.contains("connect timed out")
                    && after.is_some_and(|d| d < restarted.duration_since(killed)),
                "{after:?} after the kill: {e}"
            );
        }
        failed += errors.len();
    }
    let answers: Vec<Answered> = per_conn.into_iter().flatten().collect();
    let served = |from: Instant, to: Instant| -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for (t, r) in &answers {
            if let (true, Ok(name)) = (*t >= from && *t < to, r) {
                *m.entry(name.clone()).or_insert(0) += 1;
            }
        }
        m
    };
    let ms = Duration::from_millis;
    let before = served(killed - ms(300), killed);
    assert!(
        !before.contains_key("p1") && before.len() == 2,
        "{before:?}"
    );
    let down = served(killed + ms(100), restarted);
    assert!(
        down.len() == 1 && down["p1"] > 100,
        "priority 1 takes over: {down:?}"
    );
    let back = served(restarted + ms(1000), Instant::now());
    assert!(
        !back.contains_key("p1") && back.get("p0a") > back.get("p0b"),
        "back on priority 0 once it restarted: {back:?}"
    );
    // The connects to the dead providers happened (and their requests went on to priority 1).
    assert!(stat(&rs, "cluster.w.upstream_cx_connect_fail") >= 2);
    eprintln!(
        "failover: {} answers, {} failed; during the outage {down:?}, after {back:?}",
        answers.len(),
        failed
    );
    xds.terminate().unwrap();
}

/// The same snapshot and table of Dubbo requests given to Envoy 1.40 and to ringside: both must
/// route every request to the same cluster (or both refuse it).
#[test]
fn dubbo_routing_table_matches_envoy() {
    let clusters: Vec<Value> = ["a", "b", "v2", "blue", "getters", "other"]
        .iter()
        .map(|c| eds_cluster(c, false))
        .collect();
    let snapshot = |listen: SocketAddr| {
        json!({
            "version": "t1",
            "listeners": [dubbo_listener("table", listen, json!([
                {"name": "echo-v2", "interface": ECHO, "version": "2.0.0",
                 "routes": [{"match": any_method(), "route": {"cluster": "v2"}}]},
                {"name": "echo-blue", "interface": ECHO, "group": "blue",
                 "routes": [{"match": any_method(), "route": {"cluster": "blue"}}]},
                {"name": "echo", "interface": ECHO,
                 "routes": [
                    {"match": {"method": {"name": {"exact": "whoamiB"}}}, "route": {"cluster": "b"}},
                    {"match": {"method": {"name": {"prefix": "get"}}}, "route": {"cluster": "getters"}},
                    {"match": {"method": {"name": {"exact": "weighted"}}},
                     "route": {"weighted_clusters": {"clusters": [
                        {"name": "a", "weight": 0}, {"name": "b", "weight": 100}]}}},
                    {"match": any_method(), "route": {"cluster": "a"}}
                 ]},
                {"name": "other", "interface": "com.ringside.test.Other",
                 "routes": [{"match": any_method(), "route": {"cluster": "other"}}]}
            ]))],
            "clusters": clusters
        })
    };
    let calls = vec![
        DubboCall::new(ECHO, "", "", "echo", "1"),
        DubboCall::new(ECHO, "1.0.0", "", "echo", "2"),
        DubboCall::new(ECHO, "2.0.0", "", "echo", "3"),
        DubboCall::new(ECHO, "", "blue", "echo", "4"),
        DubboCall::new(ECHO, "", "", "whoamiB", "5"),
        DubboCall::new(ECHO, "", "", "getName", "6"),
        DubboCall::new(ECHO, "", "", "weighted", "7"),
        DubboCall::new("com.ringside.test.Other", "", "", "x", "8"),
        DubboCall::new(ECHO, "2.0.0", "blue", "echo", "9"),
        DubboCall::new(ECHO, "", "green", "echo", "10"),
        DubboCall::new(ECHO, "", "", "get", "11"),
        DubboCall::new(ECHO, "3.0.0", "", "whoamiB", "12"),
        DubboCall::new("com.nobody.Svc", "", "", "x", "13"),
    ];
    let envoy = dubbo_routes_via_envoy(&snapshot(local(free_port())), &calls);
    let ringside = dubbo_routes_via_ringside(&snapshot(local(free_port())), &calls);
    let mut mismatches = Vec::new();
    for ((c, e), r) in calls.iter().zip(&envoy).zip(&ringside) {
        eprintln!("{c:?}: envoy {e:?}, ringside {r:?}");
        let same = match (e, r) {
            (Ok(e), Ok(r)) => e == r,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if !same {
            mismatches.push(format!("{c:?}: Envoy {e:?}, ringside {r:?}"));
        }
    }
    assert!(
        ringside.iter().filter(|r| r.is_ok()).count() >= 12,
        "{ringside:?}"
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// [`dubbo_routes_via_envoy`] with ringside as the ADS client.
fn dubbo_routes_via_ringside(snapshot: &Value, calls: &[DubboCall]) -> Vec<Result<String, String>> {
    let t = table_setup(snapshot);
    let xds = XdsServer::start_on(0, 0, Some(&t.snapshot));
    let _rs = ringside_on(xds.addr(), "sotw", "routing-table");
    xds.wait_ack(LDS, "t1");
    route_calls(&t, calls)
}

/// A ringside like [`ringside_on`] (SotW) whose drains last at most `drain_ms`.
fn ringside_draining(xds: SocketAddr, node: &str, drain_ms: u64) -> Ringside {
    ringside_with(
        xds,
        "sotw",
        node,
        &format!("drain_timeout_ms: {drain_ms}\n"),
    )
}

/// Waits until stat `name` satisfies `pred`; returns its value.
fn wait_stat(rs: &Ringside, name: &str, within: Duration, pred: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let v = stat(rs, name);
        if pred(v) {
            return v;
        }
        if Instant::now() >= deadline {
            let scope = name.rsplit_once('.').map_or(name, |(s, _)| s);
            let (_, all) = rs.get("/stats");
            let related: Vec<&str> = all.lines().filter(|l| l.starts_with(scope)).collect();
            panic!("{name} stayed at {v}: {related:#?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A consumer calling `echo` in a loop until `stop` on a connection to `listen`; it reconnects
/// when told to leave (`honour_readonly`, as Dubbo's Java consumer does) or else only when it
/// finds its connection closed as it picks it for the next call (as sofa-rpc-node does).
/// Returns (calls answered, reconnects, failures).
fn looping_consumer(
    listen: SocketAddr,
    honour_readonly: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64, Vec<String>)> {
    use codec::dubbo::encode::{Arg, RequestBuilder};
    std::thread::spawn(move || {
        let (mut ok, mut reconnects, mut errors) = (0u64, 0u64, Vec::new());
        let mut c = common::dubbo::Consumer::connect(listen);
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let leave = if honour_readonly {
                c.readonly
            } else {
                c.closed_by_peer()
            };
            if leave {
                c = common::dubbo::Consumer::connect(listen);
                reconnects += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
            let arg = format!("{honour_readonly}-{i}");
            let args = [Arg::Str(&arg)];
            let req = RequestBuilder::new(ECHO, "echo")
                .version("1.0.0")
                .args(&args);
            let sent = c.try_send(req);
            match sent.ok().and_then(|id| c.recv().map(|a| (id, a))) {
                Some((id, a)) if a.id == id && a.text == arg => ok += 1,
                other => {
                    errors.push(format!("call {i}: {other:?}"));
                    c = common::dubbo::Consumer::connect(listen);
                }
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        (ok, reconnects, errors)
    })
}

/// An update that replaces a Dubbo listener (same address, another name: a new listener, so the
/// old one's connections drain) while consumers hold connections: the real sofa-rpc-node
/// consumer and a Rust one (both ignore readonly events; they are closed right behind an
/// answer), a Rust one that honours readonly, an idle one, one with a slow call in flight and
/// one whose call the provider never answers. No call fails, every consumer ends up on the new
/// listener, the idle connection closes at once, the slow call is answered, and the last
/// connection is closed at the drain timeout; the old listener's stats and log say so.
#[test]
fn a_replaced_dubbo_listener_drains_its_connections_within_the_drain_timeout() {
    use codec::dubbo::encode::{Arg, RequestBuilder};
    use std::sync::atomic::{AtomicBool, Ordering};
    const DRAIN_MS: u64 = 1500;
    let pp = free_port();
    let _p = NodeProvider::start(pp, "P", &[]);
    let silent = Provider::start("H"); // never answers method `hold`
    let listen = local(free_port());
    let snapshot = |version: &str, name: &str| {
        json!({
            "version": version,
            "listeners": [dubbo_listener(name, listen, json!([{"name": "echo", "interface": ECHO,
                "routes": [
                    {"match": {"method": {"name": {"exact": "hold"}}}, "route": {"cluster": "h"}},
                    {"match": any_method(), "route": {"cluster": "p"}}
                ]}]))],
            "clusters": [eds_cluster("p", false), eds_cluster("h", false)],
            "endpoints": [load_assignment("p", &[local(pp)]), load_assignment("h", &[silent.addr])]
        })
    };
    let xds = XdsServer::start();
    xds.put(&snapshot("v1", "dubbo_old")).unwrap();
    let mut rs = ringside_draining(xds.addr(), "ringside-drain-dubbo", DRAIN_MS);
    xds.wait_ack(LDS, "v1");

    let sofa =
        std::thread::spawn(move || node_consumer_loop(listen, "echo", r#"["sofa"]"#, 300, 5));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let loops = [
        looping_consumer(listen, true, stop.clone()),
        looping_consumer(listen, false, stop.clone()),
    ];
    let mut idle = common::dubbo::Consumer::connect(listen);
    let mut slow = common::dubbo::Consumer::connect(listen);
    let mut held = common::dubbo::Consumer::connect(listen);
    // Six connections: sofa-rpc-node's, the two loops', and the three above.
    let old_total = wait_stat(
        &rs,
        "listener.dubbo_old.downstream_cx_active",
        Duration::from_secs(15),
        |v| v == 6,
    );
    std::thread::sleep(Duration::from_millis(300));
    // Sent now, so that the cluster's 3 s request timeout cannot answer it before the drain
    // timeout does.
    held.send(RequestBuilder::new(ECHO, "hold").version("1.0.0"));
    let slow_id = slow.send(
        RequestBuilder::new(ECHO, "sleep")
            .version("1.0.0")
            .args(&[Arg::Int(600)]),
    );
    let replaced = Instant::now();
    xds.put(&snapshot("v2", "dubbo_new")).unwrap();

    // Idle: readonly event, then closed once quiet (200 ms).
    assert!(idle.recv().is_none(), "the idle connection is closed");
    let idle_closed = replaced.elapsed();
    assert!(idle.readonly, "it was told to leave first");
    assert!(idle_closed < Duration::from_millis(1000), "{idle_closed:?}");
    // The slow call in flight is answered, then its connection closes.
    let a = slow.recv().expect("the call in flight is answered");
    assert_eq!((a.id, a.text.as_str()), (slow_id, "slept"));
    assert!(slow.recv().is_none(), "then its connection is closed");
    // The call nobody answers keeps its connection until the drain timeout.
    assert!(held.recv().is_none(), "closed at the drain timeout");
    let held_closed = replaced.elapsed();
    assert!(
        held_closed >= Duration::from_millis(DRAIN_MS - 100)
            && held_closed < Duration::from_millis(DRAIN_MS + 1000),
        "{held_closed:?}"
    );
    wait_stat(
        &rs,
        "listener.dubbo_old.downstream_cx_active",
        Duration::from_millis(500),
        |v| v == 0,
    );
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (sofa_ok, lines) = sofa.join().unwrap();
    let failed: Vec<_> = lines.iter().filter(|l| l["ok"] != true).collect();
    assert!(sofa_ok && failed.is_empty(), "sofa-rpc-node: {failed:?}");
    assert_eq!(lines.len(), 300);
    for (honours, t) in [true, false].into_iter().zip(loops) {
        let (ok, reconnects, errors) = t.join().unwrap();
        assert!(errors.is_empty(), "honours readonly {honours}: {errors:?}");
        assert!(ok > 50 && reconnects >= 1, "{honours}: {ok} {reconnects}");
    }
    // Everything that looped moved to the new listener; the old one counts its drain.
    assert!(stat(&rs, "listener.dubbo_new.downstream_cx_total") >= 3);
    assert_eq!(
        stat(&rs, "listener.dubbo_old.downstream_cx_total"),
        old_total
    );
    assert_eq!(stat(&rs, "listener.dubbo_old.downstream_cx_drained"), 6);
    assert_eq!(
        stat(&rs, "listener.dubbo_old.downstream_cx_drain_timeout"),
        1
    );
    assert_eq!(stat(&rs, "listener.dubbo_new.downstream_cx_drained"), 0);
    rs.signal(libc::SIGTERM);
    let (_, log) = rs.wait_exit(Duration::from_secs(10));
    assert!(
        log.contains(
            "listener removed by a config update: draining its connections listener=dubbo_old"
        ),
        "{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("listener drained listener=dubbo_old"))
        .unwrap_or_else(|| panic!("one line for the drained listener: {log}"));
    assert!(line.contains("connections=6 closed_at_timeout=1"), "{line}");
}

/// An update that replaces a Triple listener (same address, another name) and removes a tcp
/// one: a raw HTTP/2 caller's stream in flight is answered after the graceful GOAWAY and the
/// connection closes with a final GOAWAY naming it; a grpcio client calling in a loop fails
/// nothing and moves to the new listener; the tcp connection keeps relaying and is closed at
/// the drain timeout.
#[test]
fn a_replaced_triple_listener_sends_goaway_and_a_removed_tcp_listener_closes_at_the_timeout() {
    use codec::h2::frame::code;
    use std::io::{Read, Write};
    const DRAIN_MS: u64 = 1500;
    let g = GrpcServer::start(0, "g", &["--delay-ms", "200"]);
    let echo = echo_server();
    let (tlisten, tcp_listen) = (local(free_port()), local(free_port()));
    let tcp_listener = json!({
        "name": "tcp_old",
        "address": socket(tcp_listen),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp_old", "cluster": "echo"}}]}]
    });
    let snapshot = |version: &str, listeners: Value| {
        json!({
            "version": version,
            "listeners": listeners,
            "routes": [{"name": "greeter", "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "g"}}]}]}],
            "clusters": [eds_cluster("g", true), eds_cluster("echo", false)],
            "endpoints": [load_assignment("g", &[g.addr()]), load_assignment("echo", &[echo])]
        })
    };
    let xds = XdsServer::start();
    xds.put(&snapshot(
        "v1",
        json!([rds_listener("grpc_old", tlisten, "greeter"), tcp_listener]),
    ))
    .unwrap();
    let rs = ringside_draining(xds.addr(), "ringside-drain-triple", DRAIN_MS);
    xds.wait_ack(LDS, "v1");

    let grpcio = std::thread::spawn(move || {
        grpc_call(tlisten, &CallOpts::new(common::grpc::Call::Unary).count(12))
    });
    let mut tcp = std::net::TcpStream::connect(tcp_listen).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echoed = |tcp: &mut std::net::TcpStream, b: &[u8]| {
        tcp.write_all(b).unwrap();
        let mut got = vec![0u8; b.len()];
        tcp.read_exact(&mut got).unwrap();
        assert_eq!(got, b);
    };
    echoed(&mut tcp, b"before");
    let mut h2 = common::h2::Client::connect(tlisten);
    assert_eq!(
        h2.call("/helloworld.Greeter/SayHello", &[], b"")
            .grpc_status(),
        Some(0)
    );
    wait_stat(
        &rs,
        "listener.grpc_old.downstream_cx_active",
        Duration::from_secs(15),
        |v| v == 2,
    );
    std::thread::sleep(Duration::from_millis(300));
    let in_flight = h2.start("/helloworld.Greeter/SayHello", &[], b"", true);
    let replaced = Instant::now();
    xds.put(&snapshot(
        "v2",
        json!([rds_listener("grpc_new", tlisten, "greeter")]),
    ))
    .unwrap();

    let reply = h2.finish(in_flight, &mut Default::default());
    assert_eq!(
        reply.grpc_status(),
        Some(0),
        "the stream in flight finishes"
    );
    assert_eq!(h2.read_until_closed(), Some(code::NO_ERROR));
    assert_eq!(
        h2.goaway.map(|g| g.0),
        Some(in_flight),
        "the final GOAWAY names the last stream served"
    );
    let h2_closed = replaced.elapsed();
    assert!(h2_closed < Duration::from_millis(DRAIN_MS), "{h2_closed:?}");
    // tcp: relaying until the timeout, then closed.
    echoed(&mut tcp, b"during the drain");
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    let tcp_closed = replaced.elapsed();
    assert!(
        tcp_closed >= Duration::from_millis(DRAIN_MS - 100)
            && tcp_closed < Duration::from_millis(DRAIN_MS + 1000),
        "{tcp_closed:?}"
    );
    let out = grpcio.join().unwrap();
    assert!(out.ok && out.replies.len() == 12, "{out:?}");
    wait_stat(
        &rs,
        "listener.grpc_old.downstream_cx_active",
        Duration::from_millis(500),
        |v| v == 0,
    );
    assert!(
        stat(&rs, "listener.grpc_new.downstream_cx_total") >= 1,
        "grpcio moved"
    );
    assert_eq!(stat(&rs, "listener.grpc_old.downstream_cx_drained"), 2);
    assert_eq!(
        stat(&rs, "listener.grpc_old.downstream_cx_drain_timeout"),
        0
    );
    assert_eq!(stat(&rs, "listener.tcp_old.downstream_cx_drained"), 1);
    assert_eq!(stat(&rs, "listener.tcp_old.downstream_cx_drain_timeout"), 1);
}

/// Durations from xDS are bounded where they are translated: an out-of-range one is NACKed
/// naming the resource's field, and the running snapshot stays. (Issue 20: an idle_timeout whose
/// seconds saturated the conversion to u64::MAX ms reached the timer's `expect` and killed the
/// shard at the first connection; every value was taken unchecked.)
#[test]
fn out_of_range_durations_are_nacked_naming_the_field() {
    use std::io::{Read, Write};
    let echo = echo_server();
    let listen = local(free_port());
    let tcp = |idle: &str| {
        json!({
            "name": "tcp_in",
            "address": socket(listen),
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tcp_in", "cluster": "echo", "idle_timeout": idle}}]}]
        })
    };
    let snapshot = |version: &str, idle: &str, connect: &str| {
        let mut cluster = eds_cluster("echo", false);
        cluster["connect_timeout"] = json!(connect);
        json!({
            "version": version,
            "listeners": [tcp(idle)],
            "clusters": [cluster],
            "endpoints": [load_assignment("echo", &[echo])]
        })
    };
    let xds = XdsServer::start();
    xds.put(&snapshot("v1", "10s", "1s")).unwrap();
    let rs = ringside_on(xds.addr(), "sotw", "ringside-durations");
    xds.wait_ack(LDS, "v1");
    let relay = |tag: &[u8]| {
        let mut c = std::net::TcpStream::connect(listen).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(tag).unwrap();
        let mut buf = vec![0; tag.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, tag);
    };
    relay(b"v1");

    // The largest Duration proto3 JSON allows: about 10,000 years.
    xds.put(&snapshot("v2", "315576000000s", "1s")).unwrap();
    let nack = xds.wait_nack(LDS, "v2");
    let detail = nack["error_detail"]["message"].as_str().unwrap_or_default();
    assert!(
        detail.contains("idle_timeout") && detail.contains("out of range 0..=604800000 ms"),
        "{nack}"
    );
    relay(b"still v1");

    xds.put(&snapshot("v3", "10s", "86400s")).unwrap();
    let nack = xds.wait_nack(CDS, "v3");
    let detail = nack["error_detail"]["message"].as_str().unwrap_or_default();
    assert!(
        detail.contains("connect_timeout") && detail.contains("out of range 0..=60000 ms"),
        "{nack}"
    );
    relay(b"still v1 again");
    assert_eq!(rs.get("/ready").0, 200);
}

/// CDS `lb_policy: RANDOM` (istio's `loadBalancer.simple: RANDOM`) is ACKed and balances:
/// 60 calls on one Dubbo connection (one shard) reach all three providers of the EDS
/// cluster, and not in round robin's fixed cycle (probability 3^-57 at random).
#[test]
fn a_random_cluster_is_acked_and_spreads_calls() {
    let ps = [
        Provider::start("r0"),
        Provider::start("r1"),
        Provider::start("r2"),
    ];
    let listen = local(free_port());
    let mut cluster = eds_cluster("r", false);
    cluster["lb_policy"] = json!("RANDOM");
    let xds = XdsServer::start();
    xds.put(&json!({
        "version": "v1",
        "listeners": [dubbo_listener("dubbo_out", listen, json!([{"name": "echo", "interface": ECHO,
            "routes": [{"match": any_method(), "route": {"cluster": "r"}}]}]))],
        "clusters": [cluster],
        "endpoints": [load_assignment("r", &[ps[0].addr, ps[1].addr, ps[2].addr])]
    }))
    .unwrap();
    let rs = ringside_on(xds.addr(), "sotw", "ringside-random");
    let ack = xds.wait_ack(CDS, "v1");
    assert!(ack["error_detail"].is_null(), "{ack}");
    let d = wait_dump(&rs, "cds v1", |d| d["xds_versions"]["cds"] == "v1");
    assert_eq!(d["config"]["clusters"][0]["lb"], "random", "{d}");
    let mut c = common::dubbo::Consumer::connect(listen);
    let picks: Vec<String> = (0..60)
        .map(|i| {
            let a = c.call(
                codec::dubbo::encode::RequestBuilder::new(ECHO, "who")
                    .args(&[codec::dubbo::encode::Arg::Str(&i.to_string())]),
            );
            a.text.split('|').next().unwrap_or_default().to_string()
        })
        .collect();
    for p in ["r0", "r1", "r2"] {
        assert!(
            picks.iter().any(|x| x == p),
            "every provider called: {picks:?}"
        );
    }
    assert!(
        (3..picks.len()).any(|i| picks[i] != picks[i - 3]),
        "not a fixed cycle: {picks:?}"
    );
}
