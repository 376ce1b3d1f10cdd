//! The test ADS server (tests/peers/xds/server.py) against the real Envoy 1.40 as its client:
//! Envoy is the oracle for what an xDS snapshot means. SotW and delta ADS, Dubbo listeners
//! (dubbo_proxy with inline routes) over EDS clusters, a Triple/gRPC listener with
//! http_connection_manager + RDS, ACKs and NACKs as Envoy sends them, a restarted server, and
//! requests from real peers through Envoy's xDS-configured listeners. Needs
//! scripts/install-test-deps (Envoy, the venv with xds-protos, the node peers).

mod common;

use std::net::SocketAddr;

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

/// Version 2.0.0 of EchoService goes to b; otherwise method whoamiB to b and everything else
/// to a (weighted 100/0).
fn dubbo_routes() -> Value {
    json!([
        {"name": "echo-v2", "interface": ECHO, "version": "2.0.0",
         "routes": [{"match": any_method(), "route": {"cluster": "b"}}]},
        {"name": "echo", "interface": ECHO,
         "routes": [
            {"match": {"method": {"name": {"exact": "whoamiB"}}}, "route": {"cluster": "b"}},
            {"match": any_method(), "route": {"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 100}, {"name": "b", "weight": 0}]}}}
         ]}
    ])
}

fn dubbo_snapshot(version: &str, listen: SocketAddr, a: SocketAddr, b: SocketAddr) -> Value {
    json!({
        "version": version,
        "listeners": [dubbo_listener("dubbo_out", listen, dubbo_routes())],
        "clusters": [eds_cluster("a", false), eds_cluster("b", false)],
        "endpoints": [load_assignment("a", &[a]), load_assignment("b", &[b])]
    })
}

fn node_call(listen: SocketAddr, method: &str, extra: &[&str]) -> (bool, Vec<Value>) {
    let mut c = node("consumer.js");
    c.args(["--address", &listen.to_string(), "--method", method])
        .args(extra);
    run_consumer(c)
}

#[test]
fn sotw_dubbo_listener_eds_clusters_ack_nack_and_restart() {
    let (pa, pb) = (free_port(), free_port());
    let _a = NodeProvider::start(pa, "A", &[]);
    let _b = NodeProvider::start(pb, "B", &["--version", "2.0.0"]);
    let mut xds = XdsServer::start();
    let admin = local(free_port());
    let envoy = Envoy::start(
        &bootstrap(admin, xds.addr(), Ads::Sotw, "oracle-sotw"),
        admin,
    );

    // The empty initial snapshot (version "0") is ACKed: Envoy finishes its init.
    xds.wait_ack(CDS, "0");
    xds.wait_ack(LDS, "0");
    let streams = xds.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0]["node"], "oracle-sotw");
    assert_eq!(streams[0]["mode"], "sotw");

    let listen = local(free_port());
    xds.put(&dubbo_snapshot("v1", listen, local(pa), local(pb)))
        .unwrap();
    for ty in [CDS, EDS, LDS] {
        let ack = xds.wait_ack(ty, "v1");
        assert!(ack["error_detail"].is_null());
        assert!(!ack["response_nonce"].as_str().unwrap().is_empty());
    }
    // EDS asked for exactly the two clusters.
    let eds = xds.wait_ack(EDS, "v1");
    let mut eds_names: Vec<&str> = eds["resource_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    eds_names.sort();
    assert_eq!(eds_names, ["a", "b"]);

    let dump = envoy.wait_dump("dubbo_out at v1", |d| {
        dynamic_listeners(d) == [("dubbo_out".to_string(), "v1".to_string())]
    });
    assert_eq!(dynamic_clusters(&dump), ["a", "b"]);
    assert_eq!(eds_endpoints(&dump, "a"), [local(pa).to_string()]);
    assert_eq!(eds_endpoints(&dump, "b"), [local(pb).to_string()]);
    let filter = &dynamic_listener(&dump, "dubbo_out")["filter_chains"][0]["filters"][0];
    assert_eq!(filter["name"], "envoy.filters.network.dubbo_proxy");
    assert_eq!(
        filter["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy"
    );
    assert_eq!(
        filter["typed_config"]["multiple_route_config"]["route_config"][0]["version"],
        "2.0.0"
    );

    // Real peers through Envoy's xDS listener: default route -> a (node provider A), version
    // 2.0.0 -> b (provider B serves 2.0.0).
    let (ok, lines) = node_call(listen, "whoami", &[]);
    assert!(ok && lines[0]["result"] == "A", "{lines:?}");
    let (ok, lines) = node_call(listen, "whoami", &["--version", "2.0.0"]);
    assert!(ok && lines[0]["result"] == "B", "{lines:?}");
    let (ok, lines) = node_call(listen, "echo", &["--args", r#"["via envoy"]"#]);
    assert!(ok && lines[0]["result"] == "via envoy", "{lines:?}");
    assert_eq!(envoy.stat("cluster.a.upstream_rq_total"), 2);
    assert_eq!(envoy.stat("cluster.b.upstream_rq_total"), 1);

    // An invalid listener (an empty prefix matcher fails Envoy's validation): NACKed with the
    // reason, and Envoy keeps serving v1.
    let mut bad = dubbo_snapshot("v2-bad", listen, local(pa), local(pb));
    bad["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["multiple_route_config"]["route_config"][1]["routes"][1]["match"] =
        json!({"method": {"name": {"prefix": ""}}});
    xds.put(&bad).unwrap();
    let nack = xds.wait_nack(LDS, "v2-bad");
    let msg = nack["error_detail"]["message"].as_str().unwrap();
    assert!(msg.contains("dubbo_out"), "{msg}");
    assert!(
        msg.contains("StringMatcherValidationError.Prefix: value length must be at least 1"),
        "{msg}"
    );
    // The NACK carries the last accepted version; clusters (valid) were ACKed at v2-bad.
    assert_eq!(nack["version_info"], "v1");
    xds.wait_ack(CDS, "v2-bad");
    let (ok, lines) = node_call(listen, "whoami", &[]);
    assert!(ok && lines[0]["result"] == "A", "{lines:?}");
    let dump = envoy.config_dump();
    assert_eq!(
        dynamic_listeners(&dump),
        [("dubbo_out".to_string(), "v1".to_string())]
    );

    // A snapshot the server cannot parse is refused by the control API itself.
    let err = xds
        .put(&json!({"version": "x", "clusters": [{"name": "c", "no_such_field": 1}]}))
        .unwrap_err();
    assert!(
        err.starts_with("400") && err.contains("no_such_field"),
        "{err}"
    );

    // v3 (valid again) is ACKed; then the server restarts on the same port with v3: Envoy
    // reconnects, resubscribes telling the version it has, and ACKs the resent v3.
    xds.put(&dubbo_snapshot("v3", listen, local(pa), local(pb)))
        .unwrap();
    xds.wait_ack(LDS, "v3");
    xds.restart();
    let first = xds.wait_request(
        std::time::Duration::from_secs(15),
        "CDS resubscription",
        |r| r["type"] == CDS && r["response_nonce"] == "",
    );
    assert_eq!(first["version_info"], "v3", "{first}");
    assert_eq!(first["node"], "oracle-sotw");
    for ty in [CDS, EDS, LDS] {
        xds.wait_ack(ty, "v3");
    }
    assert_eq!(xds.streams().len(), 1);
    let (ok, lines) = node_call(listen, "whoami", &["--version", "2.0.0"]);
    assert!(ok && lines[0]["result"] == "B", "{lines:?}");
    assert_eq!(xds.terminate(), Ok(0));
}

#[test]
fn sotw_triple_listener_with_rds() {
    let g1 = GrpcServer::start(0, "g1", &[]);
    let g2 = GrpcServer::start(0, "g2", &[]);
    let xds = XdsServer::start();
    let admin = local(free_port());
    let envoy = Envoy::start(
        &bootstrap(admin, xds.addr(), Ads::Sotw, "oracle-rds"),
        admin,
    );
    let listen = local(free_port());
    let routes = |cluster: &str| {
        json!({"name": "triple_routes", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/helloworld.Greeter/"}, "route": {"cluster": cluster}}]
        }]})
    };
    let snapshot = |version: &str, cluster: &str| {
        json!({
            "version": version,
            "listeners": [rds_listener("triple_out", listen, "triple_routes")],
            "routes": [routes(cluster), {"name": "unrequested", "virtual_hosts": []}],
            "clusters": [eds_cluster("g1", true), eds_cluster("g2", true)],
            "endpoints": [load_assignment("g1", &[g1.addr()]), load_assignment("g2", &[g2.addr()])]
        })
    };
    xds.put(&snapshot("r1", "g1")).unwrap();
    for ty in [CDS, EDS, LDS, RDS] {
        xds.wait_ack(ty, "r1");
    }
    // RDS: Envoy asked for its route config by name and got only that one.
    let rds = xds.wait_ack(RDS, "r1");
    assert_eq!(rds["resource_names"], json!(["triple_routes"]));
    let sent: Vec<Value> = xds
        .responses()
        .into_iter()
        .filter(|r| r["type"] == RDS)
        .collect();
    assert!(
        sent.iter()
            .all(|r| r["resources"] == json!(["triple_routes"])),
        "{sent:?}"
    );
    let dump = envoy.wait_dump("triple_out", |d| {
        dynamic_listeners(d).iter().any(|(n, _)| n == "triple_out")
    });
    assert_eq!(dynamic_route_configs(&dump), ["triple_routes"]);
    let out = grpc_call(listen, &CallOpts::default());
    assert!(out.ok, "{out:?}");
    assert_eq!(out.servers(), ["g1"]);

    // A new route config alone moves the traffic.
    xds.put(&snapshot("r2", "g2")).unwrap();
    xds.wait_ack(RDS, "r2");
    let out = grpc_call(listen, &CallOpts::default());
    assert!(out.ok, "{out:?}");
    assert_eq!(out.servers(), ["g2"]);

    // A third cluster: Envoy's EDS subscription grows (a SotW request with the new names),
    // the server answers it with exactly those, and the route to g3 works.
    let g3 = GrpcServer::start(0, "g3", &[]);
    let mut r3 = snapshot("r3", "g3");
    r3["clusters"]
        .as_array_mut()
        .unwrap()
        .push(eds_cluster("g3", true));
    r3["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(load_assignment("g3", &[g3.addr()]));
    xds.put(&r3).unwrap();
    let eds = xds.wait_request(
        std::time::Duration::from_secs(15),
        "EDS ACK of r3 naming g3",
        |r| {
            r["type"] == EDS
                && r["ack"] == true
                && r["acked_version"] == "r3"
                && r["resource_names"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("g3"))
        },
    );
    let mut names: Vec<&str> = eds["resource_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["g1", "g2", "g3"]);
    // That request both ACKs the pushed EDS response (g1, g2: the subscription then) and
    // subscribes to g3; the server answers the change with exactly the three, which Envoy ACKs.
    let answer = xds.wait_request(
        std::time::Duration::from_secs(15),
        "EDS ACK of the answer to the new subscription",
        |r| r["type"] == EDS && r["ack"] == true && r["seq"].as_u64() > eds["seq"].as_u64(),
    )["response_nonce"]
        .clone();
    let answered = xds
        .responses()
        .into_iter()
        .find(|r| r["nonce"] == answer)
        .unwrap();
    assert_eq!(answered["resources"], json!(["g1", "g2", "g3"]));
    xds.wait_ack(RDS, "r3");
    let out = grpc_call(listen, &CallOpts::default());
    assert!(out.ok, "{out:?}");
    assert_eq!(out.servers(), ["g3"]);
}

#[test]
fn delta_ads_adds_changes_and_removes() {
    let pa = common::dubbo::Provider::start("a");
    let pb = common::dubbo::Provider::start("b");
    let pa2 = common::dubbo::Provider::start("a2");
    let mut xds = XdsServer::start();
    let admin = local(free_port());
    let envoy = Envoy::start(
        &bootstrap(admin, xds.addr(), Ads::Delta, "oracle-delta"),
        admin,
    );
    let listen = local(free_port());
    xds.put(&dubbo_snapshot("d1", listen, pa.addr, pb.addr))
        .unwrap();
    for ty in [CDS, EDS, LDS] {
        let ack = xds.wait_ack(ty, "d1");
        assert_eq!(ack["mode"], "delta");
    }
    assert_eq!(xds.streams()[0]["mode"], "delta");
    envoy.wait_dump("dubbo_out", |d| {
        dynamic_listeners(d).iter().any(|(n, _)| n == "dubbo_out")
    });
    let call = |method: &str, version: &str| {
        dubbo_call(listen, &DubboCall::new(ECHO, version, "", method, "x"))
    };
    assert_eq!(call("whoami", "").unwrap(), "a|whoami|x");
    assert_eq!(call("whoamiB", "").unwrap(), "b|whoamiB|x");

    // d2: cluster b removed (its routes now go to a), a's endpoint changed.
    let mut d2 = dubbo_snapshot("d2", listen, pa2.addr, pb.addr);
    d2["clusters"] = json!([eds_cluster("a", false)]);
    d2["endpoints"] = json!([load_assignment("a", &[pa2.addr])]);
    let text = d2
        .to_string()
        .replace("\"cluster\":\"b\"", "\"cluster\":\"a\"");
    let mut d2: Value = serde_json::from_str(&text).unwrap();
    d2["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["multiple_route_config"]
        ["route_config"][1]["routes"][1]["route"] = json!({"cluster": "a"});
    xds.put(&d2).unwrap();
    for ty in [CDS, EDS, LDS] {
        xds.wait_ack(ty, "d2");
    }
    let sent = xds.responses();
    let cds = sent
        .iter()
        .rev()
        .find(|r| r["type"] == CDS && r["version"] == "d2")
        .unwrap();
    assert_eq!(cds["removed"], json!(["b"]), "{cds}");
    assert_eq!(
        cds["resources"],
        json!([]),
        "a unchanged: not resent: {cds}"
    );
    let eds = sent
        .iter()
        .rev()
        .find(|r| r["type"] == EDS && r["version"] == "d2")
        .unwrap();
    assert_eq!(eds["resources"], json!(["a"]), "{eds}");
    let dump = envoy.wait_dump("cluster b gone", |d| dynamic_clusters(d) == ["a"]);
    assert_eq!(eds_endpoints(&dump, "a"), [pa2.addr.to_string()]);
    // Delta: a listener's version_info is its resource version (the server's digest), not d2.
    let dump = envoy.wait_dump("listener of d2", |d| {
        dynamic_listener(d, "dubbo_out")["filter_chains"][0]["filters"][0]["typed_config"]
            ["multiple_route_config"]["route_config"][1]["routes"][0]["route"]["cluster"]
            == "a"
    });
    let lds = sent
        .iter()
        .rev()
        .find(|r| r["type"] == LDS && r["version"] == "d2")
        .unwrap();
    assert_eq!(lds["resources"], json!(["dubbo_out"]), "{lds}");
    let (_, listener_version) = &dynamic_listeners(&dump)[0];
    assert_ne!(listener_version, "d2");
    assert_eq!(call("whoamiB", "").unwrap(), "a2|whoamiB|x");
    assert_eq!(call("whoami", "2.0.0").unwrap(), "a2|whoami|x");

    // Restart: Envoy resubscribes with the versions it holds (initial_resource_versions), and
    // gets nothing resent for them.
    xds.restart();
    let first = xds.wait_request(
        std::time::Duration::from_secs(15),
        "CDS resubscription",
        |r| r["type"] == CDS && r["response_nonce"] == "",
    );
    let held = first["initial_resource_versions"].as_object().unwrap();
    assert_eq!(held.keys().collect::<Vec<_>>(), ["a"], "{first}");
    xds.wait_ack(CDS, "d2");
    xds.wait_ack(LDS, "d2");
    let resent: Vec<Value> = xds
        .responses()
        .into_iter()
        .filter(|r| r["resources"] != json!([]))
        .collect();
    assert!(resent.is_empty(), "{resent:?}");
    assert_eq!(call("whoami", "").unwrap(), "a2|whoami|x");
}

/// The base of the Envoy-vs-ringside differential test: a table of Dubbo requests and the
/// cluster Envoy routes each to.
#[test]
fn dubbo_routing_table_through_envoy() {
    let listen = local(free_port());
    let clusters: Vec<Value> = ["a", "b", "v2", "blue", "getters", "other"]
        .iter()
        .map(|c| eds_cluster(c, false))
        .collect();
    let snapshot = json!({
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
    });
    let table: Vec<(DubboCall, Result<&str, &str>)> = vec![
        (DubboCall::new(ECHO, "", "", "echo", "1"), Ok("a")),
        (DubboCall::new(ECHO, "1.0.0", "", "echo", "2"), Ok("a")),
        (DubboCall::new(ECHO, "2.0.0", "", "echo", "3"), Ok("v2")),
        (DubboCall::new(ECHO, "", "blue", "echo", "4"), Ok("blue")),
        (DubboCall::new(ECHO, "", "", "whoamiB", "5"), Ok("b")),
        (DubboCall::new(ECHO, "", "", "getName", "6"), Ok("getters")),
        (DubboCall::new(ECHO, "", "", "weighted", "7"), Ok("b")),
        (
            DubboCall::new("com.ringside.test.Other", "", "", "x", "8"),
            Ok("other"),
        ),
        (DubboCall::new(ECHO, "2.0.0", "blue", "echo", "9"), Ok("v2")),
        (DubboCall::new(ECHO, "", "green", "echo", "10"), Ok("a")),
        (DubboCall::new(ECHO, "", "", "get", "11"), Ok("getters")),
        (DubboCall::new(ECHO, "3.0.0", "", "whoamiB", "12"), Ok("b")),
        (
            DubboCall::new("com.nobody.Svc", "", "", "x", "13"),
            Err("ServiceNotFound"),
        ),
    ];
    let calls: Vec<DubboCall> = table.iter().map(|(c, _)| c.clone()).collect();
    let got = dubbo_routes_via_envoy(&snapshot, &calls);
    for (c, g) in calls.iter().zip(&got) {
        eprintln!(
            "{} {} {} {}({}) -> {g:?}",
            c.interface, c.version, c.group, c.method, c.arg
        );
    }
    let mut mismatches = Vec::new();
    for ((call, want), got) in table.iter().zip(&got) {
        let same = match (want, got) {
            (Ok(w), Ok(g)) => w == g,
            (Err(w), Err(g)) => g.starts_with(w),
            _ => false,
        };
        if !same {
            mismatches.push(format!("{call:?}: want {want:?}, Envoy {got:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// generic_proxy with its Dubbo codec (the successor of dubbo_proxy) from xDS: Envoy ACKs it and
/// routes by the request's service.
#[test]
fn sotw_generic_proxy_dubbo_listener() {
    let pa = common::dubbo::Provider::start("a");
    let po = common::dubbo::Provider::start("other");
    let xds = XdsServer::start();
    let admin = local(free_port());
    let envoy = Envoy::start(
        &bootstrap(admin, xds.addr(), Ads::Sotw, "oracle-generic"),
        admin,
    );
    let listen = local(free_port());
    xds.put(&json!({
        "version": "g1",
        "listeners": [generic_dubbo_listener("generic", listen, &[
            (ECHO, "a"), ("com.ringside.test.Other", "other")])],
        "clusters": [eds_cluster("a", false), eds_cluster("other", false)],
        "endpoints": [load_assignment("a", &[pa.addr]), load_assignment("other", &[po.addr])]
    }))
    .unwrap();
    for ty in [CDS, EDS, LDS] {
        xds.wait_ack(ty, "g1");
    }
    let dump = envoy.wait_dump("generic", |d| {
        dynamic_listeners(d) == [("generic".to_string(), "g1".to_string())]
    });
    assert_eq!(
        dynamic_listener(&dump, "generic")["filter_chains"][0]["filters"][0]["name"],
        "envoy.filters.network.generic_proxy"
    );
    let call = |interface: &str, version: &str| {
        dubbo_call(
            listen,
            &DubboCall::new(interface, version, "", "whoami", "g"),
        )
    };
    assert_eq!(call(ECHO, "").unwrap(), "a|whoami|g");
    assert_eq!(call(ECHO, "1.0.0").unwrap(), "a|whoami|g");
    assert_eq!(
        call("com.ringside.test.Other", "").unwrap(),
        "other|whoami|g"
    );
    let err = call("com.nobody.Svc", "").unwrap_err();
    eprintln!("generic_proxy, no route: {err}");
}

/// The node of a sidecar as pilot-agent writes it into Envoy's bootstrap (from the pod's
/// ISTIO_META_* variables, its labels and annotations, the mesh's proxy config): strings, the
/// `LABELS` and `ANNOTATIONS` maps, numbers, a list and the nested `PROXY_CONFIG`.
fn istio_node_metadata() -> Value {
    json!({
        "ANNOTATIONS": {"kubectl.kubernetes.io/default-container": "reviews",
                        "sidecar.istio.io/status": "{\"initContainers\":[\"istio-init\"]}"},
        "APP_CONTAINERS": "reviews",
        "CLUSTER_ID": "Kubernetes",
        "ENVOY_PROMETHEUS_PORT": 15090,
        "ENVOY_STATUS_PORT": 15021,
        "INSTANCE_IPS": "10.1.2.3",
        "INTERCEPTION_MODE": "REDIRECT",
        "ISTIO_VERSION": "1.24.0",
        "LABELS": {"app": "reviews", "version": "v2",
                   "security.istio.io/tlsMode": "istio",
                   "service.istio.io/canonical-name": "reviews",
                   "service.istio.io/canonical-revision": "v2"},
        "MESH_ID": "cluster.local",
        "NAME": "reviews-v2-5b6d8c7f9-x7k2p",
        "NAMESPACE": "bookinfo",
        "OWNER": "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/reviews-v2",
        "PILOT_SAN": ["istiod.istio-system.svc"],
        "POD_PORTS": "[{\"containerPort\":9080,\"protocol\":\"TCP\"}]",
        "PROXY_CONFIG": {"concurrency": 2, "discoveryAddress": "istiod.istio-system.svc:15012",
                         "drainDuration": "45s", "holdApplicationUntilProxyStarts": false,
                         "proxyMetadata": {"DNS_AGENT": ""}, "statusPort": 15020,
                         "terminationDrainDuration": "5s"},
        "SERVICE_ACCOUNT": "bookinfo-reviews",
        "WORKLOAD_NAME": "reviews-v2"
    })
}

/// istiod reads a proxy's identity from the Node of the first request of its ADS stream:
/// Envoy 1.40 and ringside given the same node (Envoy in its bootstrap, ringside in
/// `xds.node_id`, `node_cluster`, `locality`, `node_metadata`) send the same id, cluster,
/// locality and metadata, values and types alike.
#[test]
fn node_metadata_reaches_the_ads_server_as_envoys() {
    let xds = XdsServer::start();
    let meta = istio_node_metadata();
    let id = "sidecar~10.1.2.3~reviews-v2-5b6d8c7f9-x7k2p.bookinfo~bookinfo.svc.cluster.local";
    let e_admin = local(free_port());
    let mut b = bootstrap(e_admin, xds.addr(), Ads::Sotw, id);
    b["node"] = json!({"id": id, "cluster": "reviews.bookinfo",
                       "locality": {"region": "eu-west-1", "zone": "eu-west-1a"},
                       "metadata": meta});
    let _envoy = Envoy::start(&b, e_admin);
    let admin = local(free_port());
    // YAML takes the JSON as it is.
    let cfg = format!(
        "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: \"{id}\"\n  \
         node_cluster: reviews.bookinfo\n  locality: {{region: eu-west-1, zone: eu-west-1a}}\n  \
         mode: sotw\n  node_metadata: {meta}\n",
        xds.addr()
    );
    let _rs = Ringside::start(&cfg, admin, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (envoy, ours) = loop {
        let streams = xds.streams();
        let first = |agent: &str| {
            streams
                .iter()
                .filter_map(|s| s.get("first_node").filter(|n| !n.is_null()))
                .find(|n| n["userAgentName"] == agent)
                .cloned()
        };
        if let (Some(e), Some(r)) = (first("envoy"), first("ringside")) {
            break (e, r);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stream whose first request carries each node: {streams:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for field in ["id", "cluster", "locality", "metadata"] {
        assert_eq!(
            ours[field], envoy[field],
            "node.{field}: ringside vs Envoy 1.40"
        );
    }
    // And what istiod reads, as the pod gave it.
    assert_eq!(ours["id"], id);
    for key in [
        "NAMESPACE",
        "CLUSTER_ID",
        "ISTIO_VERSION",
        "WORKLOAD_NAME",
        "LABELS",
    ] {
        assert_eq!(ours["metadata"][key], meta[key], "{key}");
    }
    assert_eq!(ours["metadata"]["PROXY_CONFIG"]["concurrency"], 2.0);
    assert_eq!(ours["metadata"]["PILOT_SAN"], meta["PILOT_SAN"]);
}
