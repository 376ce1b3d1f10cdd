//! Envoy's zone-aware routing (docs/governance.md#zone-aware-routing) through the real binary,
//! Envoy 1.40 the oracle: both proxies run the same Envoy bootstrap (`cluster_manager.
//! local_cluster_name` naming a STATIC local cluster with endpoints in three zones, the
//! node's locality `zone-a`) and get the same CDS / EDS from their own test ADS server.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::envoy::*;
use common::grpc::{grpc_call, Call, CallOpts, GrpcServer};
use common::xds::*;
use common::*;
use serde_json::{json, Value};

/// The bootstrap both proxies run: `envoy::bootstrap` plus the local cluster (`local`: the
/// callers' own proxies, 2 in zone-a, 1 in zone-b, 1 in zone-c; addresses nobody connects to)
/// and the node's locality.
fn zone_bootstrap(admin: SocketAddr, xds: SocketAddr, node: &str) -> Value {
    let mut b = bootstrap(admin, xds, Ads::Sotw, node);
    b["node"]["locality"] = json!({"region": "r1", "zone": "zone-a"});
    b["cluster_manager"] = json!({"local_cluster_name": "local"});
    let callers = |zone: &str, n: u16| -> Value {
        let eps: Vec<Value> = (0..n)
            .map(|i| json!({"endpoint": {"address": socket(local(9 + i))}}))
            .collect();
        json!({"locality": {"region": "r1", "zone": zone}, "lb_endpoints": eps})
    };
    b["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "local", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "local", "endpoints": [
                callers("zone-a", 2), callers("zone-b", 1), callers("zone-c", 1)
            ]}
        }));
    b
}

/// ringside run as Envoy is (`ringside -c BOOTSTRAP`, what pilot-agent execs).
struct RingsideAsEnvoy {
    _child: KillOnDrop,
    log: PathBuf,
    _dir: TempDir,
}

impl RingsideAsEnvoy {
    fn start(bootstrap: &Value) -> RingsideAsEnvoy {
        let dir = TempDir::new("rs-zone");
        let path = dir.write("bootstrap.json", &bootstrap.to_string());
        let log = dir.0.join("ringside.log");
        let child = Command::new(RINGSIDE)
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", "2"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn ringside");
        RingsideAsEnvoy {
            _child: KillOnDrop(child),
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The upstream cluster `greeter` (EDS, round robin) with the providers of each zone given,
/// all at priority 0, behind one gRPC listener on `listen`.
fn snapshot(version: &str, listen: SocketAddr, zones: &[(&str, &[&GrpcServer])]) -> Value {
    let localities: Vec<Value> = zones
        .iter()
        .filter(|(_, servers)| !servers.is_empty())
        .map(|(zone, servers)| {
            let eps: Vec<Value> = servers
                .iter()
                .map(|s| json!({"endpoint": {"address": socket(s.addr())}}))
                .collect();
            json!({"locality": {"region": "r1", "zone": zone}, "lb_endpoints": eps})
        })
        .collect();
    json!({
        "version": version,
        "listeners": [rds_listener("grpc_zone", listen, "zone_routes")],
        "routes": [{"name": "zone_routes", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "greeter"}}]
        }]}],
        "clusters": [eds_cluster("greeter", true)],
        "endpoints": [{"cluster_name": "greeter", "endpoints": localities}]
    })
}

fn take(v: &[GrpcServer], n: usize) -> Vec<&GrpcServer> {
    v.iter().take(n).collect()
}

/// Waits until `listen` accepts connections.
fn wait_listening(listen: SocketAddr, who: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "never listened on {listen}: {}",
            who()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Envoy: until `/clusters` lists `hosts` endpoints of `greeter`.
fn await_envoy_hosts(envoy: &Envoy, hosts: usize, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let clusters = envoy.get("/clusters");
        let n = clusters
            .lines()
            .filter(|l| l.starts_with("greeter::") && l.contains("::health_flags::"))
            .count();
        if n == hosts {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy never applied {version}: {clusters}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const CALLS: u32 = 400;

/// Percent of CALLS calls through `addr` answered by each zone's providers (named `a..`,
/// `b..`, `c..`).
fn shares(who: &str, addr: SocketAddr) -> [f64; 3] {
    let out = grpc_call(addr, &CallOpts::new(Call::Unary).count(CALLS));
    assert!(out.ok, "{who}: {out:?}");
    let servers = out.servers();
    assert_eq!(servers.len(), CALLS as usize, "{who}");
    let pct = |p: char| {
        servers.iter().filter(|s| s.starts_with(p)).count() as f64 * 100.0 / f64::from(CALLS)
    };
    [pct('a'), pct('b'), pct('c')]
}

/// Zone-aware routing against Envoy 1.40. Callers (the local cluster): zone-a 50 %, zone-b
/// 25 %, zone-c 25 %; this proxy in zone-a; `min_cluster_size` 6 (Envoy's default). Phases, by
/// the providers EDS gives `greeter` (all priority 0), with Envoy's expected shares a / b / c:
///
/// - all local: 4 a, 2 b, 2 c: zone-a has 50 % of the providers for 50 % of the callers:
///   100 / 0 / 0 (without zone-aware routing 50 / 25 / 25);
/// - residual spill: 2 a, 4 b, 2 c: zone-a has 25 % for 50 %: half the calls stay
///   (2500 / 5000), the rest goes where capacity is left over, all of it zone-b's (50 % of
///   the providers for 25 % of the callers; zone-c: 25 % for 25 %): 50 / 50 / 0 (without:
///   25 / 50 / 25);
/// - below min_cluster_size: 1 a, 2 b, 2 c (5 providers): no zone-aware routing,
///   20 / 40 / 40;
/// - local zone empty: 0 a, 4 b, 2 c: everything crosses zones by residual capacity, b
///   66.7 − 25, c 33.3 − 25: 0 / 83.3 / 16.7 (without: 0 / 66.7 / 33.3).
///
/// 400 calls of one grpcio client per phase through each proxy. Tolerance: ringside within 2
/// points of the exact share (deterministic draws), Envoy within 8 (its draws are random: 3.5
/// σ at 400 calls), the two within 8 of each other.
#[test]
fn zone_aware_routing_matches_envoy() {
    let a: Vec<GrpcServer> = (1..=4)
        .map(|i| GrpcServer::start(0, &format!("a{i}"), &[]))
        .collect();
    let b: Vec<GrpcServer> = (1..=4)
        .map(|i| GrpcServer::start(0, &format!("b{i}"), &[]))
        .collect();
    let c: Vec<GrpcServer> = (1..=2)
        .map(|i| GrpcServer::start(0, &format!("c{i}"), &[]))
        .collect();
    // (name, providers per zone, exact shares a / b / c)
    let phases: [(&str, [usize; 3], [f64; 3]); 4] = [
        ("all-local", [4, 2, 2], [100.0, 0.0, 0.0]),
        ("residual", [2, 4, 2], [50.0, 50.0, 0.0]),
        ("small", [1, 2, 2], [20.0, 40.0, 40.0]),
        ("local-empty", [0, 4, 2], [0.0, 83.33, 16.67]),
    ];
    let snap = |version: &str, listen: SocketAddr, n: [usize; 3]| {
        let (za, zb, zc) = (take(&a, n[0]), take(&b, n[1]), take(&c, n[2]));
        snapshot(
            version,
            listen,
            &[("zone-a", &za), ("zone-b", &zb), ("zone-c", &zc)],
        )
    };
    let first = phases[0];
    let envoy_xds = XdsServer::start();
    let envoy_listen = local(free_port());
    envoy_xds
        .put(&snap(first.0, envoy_listen, first.1))
        .unwrap();
    let envoy_admin = local(free_port());
    let envoy = Envoy::start(
        &zone_bootstrap(envoy_admin, envoy_xds.addr(), "oracle-zone"),
        envoy_admin,
    );
    envoy.wait_dump("grpc_zone", |d| {
        dynamic_listeners(d).iter().any(|(n, _)| n == "grpc_zone")
            && dynamic_route_configs(d).iter().any(|r| r == "zone_routes")
    });
    let rs_xds = XdsServer::start();
    let rs_listen = local(free_port());
    rs_xds.put(&snap(first.0, rs_listen, first.1)).unwrap();
    let rs = RingsideAsEnvoy::start(&zone_bootstrap(
        local(free_port()),
        rs_xds.addr(),
        "ringside-zone",
    ));
    rs_xds.wait_ack(RDS, first.0);
    wait_listening(rs_listen, &|| rs.log());
    for (k, (version, n, exact)) in phases.into_iter().enumerate() {
        if k > 0 {
            envoy_xds.put(&snap(version, envoy_listen, n)).unwrap();
            rs_xds.put(&snap(version, rs_listen, n)).unwrap();
            rs_xds.wait_ack(EDS, version);
            await_envoy_hosts(&envoy, n.iter().sum(), version);
            // ringside: the acked snapshot reaches the shards between requests.
            std::thread::sleep(Duration::from_millis(200));
        }
        let e = shares("envoy", envoy_listen);
        let r = shares("ringside", rs_listen);
        eprintln!(
            "{version} ({n:?} providers): exact {exact:?} %, Envoy {e:?} %, ringside {r:?} %"
        );
        for z in 0..3 {
            assert!(
                (e[z] - exact[z]).abs() <= 8.0,
                "{version}: Envoy, the oracle: {e:?} % (exact {exact:?} %)"
            );
            assert!(
                (r[z] - exact[z]).abs() <= 2.0,
                "{version}: ringside {r:?} % (exact {exact:?} %)\n{}",
                rs.log()
            );
            assert!(
                (r[z] - e[z]).abs() <= 8.0,
                "{version}: ringside {r:?} % vs Envoy {e:?} %"
            );
        }
    }
}
