//! Registry-direct discovery and registration through the real binary, against a real
//! ZooKeeper (Debian's `zookeeperd` jar, started by hand with its own data dir and port) and
//! the sofa-rpc-node provider and consumer, which write and read Apache Dubbo's layout.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::peers::*;
use common::*;

const IFACE: &str = "com.ringside.test.EchoService";
const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";

/// A standalone ZooKeeper server on 127.0.0.1, killed on drop.
struct ZooKeeper {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl ZooKeeper {
    fn start() -> ZooKeeper {
        require(PathBuf::from(ZK_JAR));
        let dir = TempDir::new("zk-server");
        let port = free_port();
        std::fs::create_dir_all(dir.0.join("data")).unwrap();
        dir.write(
            "zoo.cfg",
            &format!(
                "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\nmaxSessionTimeout=20000\n",
                dir.0.join("data").display()
            ),
        );
        let mut zk = ZooKeeper {
            child: None,
            port,
            dir,
        };
        zk.resume();
        zk
    }

    /// Starts (again) on the same port and data dir.
    fn resume(&mut self) {
        let child = Command::new("java")
            .args([
                "-Xmx128m",
                "-Dzookeeper.admin.enableServer=false",
                "-cp",
                ZK_JAR,
                "org.apache.zookeeper.server.ZooKeeperServerMain",
            ])
            .arg(self.dir.0.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn java (ZooKeeper): run scripts/install-test-deps");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while zk_ls(self.port, "/").is_none() {
            assert!(Instant::now() < deadline, "ZooKeeper did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stopped: forgets every node and session (the next start is a fresh ensemble, so
    /// clients that come back find their session expired).
    fn wipe(&mut self) {
        assert!(self.child.is_none(), "stop ZooKeeper first");
        let data = self.dir.0.join("data");
        std::fs::remove_dir_all(&data).unwrap();
        std::fs::create_dir_all(&data).unwrap();
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn registry(&self) -> String {
        format!("127.0.0.1:{}/dubbo", self.port)
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Children of `path`, URL-decoded; `None` when ZooKeeper does not answer.
fn zk_ls(port: u16, path: &str) -> Option<Vec<String>> {
    let out = node("zk.js")
        .args(["--server", &format!("127.0.0.1:{port}"), "ls", path])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn providers_path() -> String {
    format!("/dubbo/{IFACE}/providers")
}

/// Calls `whoami` `n` times through `addr` (or through the registry); returns who answered.
fn whoami(target: &[&str], n: usize, version: &str) -> (bool, Vec<String>) {
    let mut c = node("consumer.js");
    c.args(target).args([
        "--method",
        "whoami",
        "--count",
        &n.to_string(),
        "--version",
        version,
    ]);
    let (ok, lines) = run_consumer(c);
    let names = lines
        .iter()
        .map(|l| l["result"].as_str().unwrap_or("<error>").to_string())
        .collect();
    (ok, names)
}

/// A consumer process making one call that the provider answers after 1.5 s.
fn slow_call(target: &[&str]) -> Child {
    node("consumer.js")
        .args(target)
        .args([
            "--method",
            "sleep",
            "--args",
            "[1500]",
            "--timeout-ms",
            "5000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn server_info(rs: &Ringside) -> serde_json::Value {
    serde_json::from_str(&rs.get("/server_info").1).unwrap()
}

fn discovery_config(admin: SocketAddr, listen: SocketAddr, zk: &ZooKeeper) -> String {
    format!(
        "admin:\n  address: {admin}\nregistry:\n  addresses: [\"{zk}\"]\n  session_timeout_ms: 4000\n  retry_initial_ms: 200\n  retry_max_ms: 1000\nlisteners:\n  - name: out\n    address: {listen}\n    protocol: dubbo\n    cluster: v1\n    dubbo:\n      routes:\n        - match: {{version: '2.0.0'}}\n          route: {{cluster: v2}}\nclusters:\n  - name: v1\n    type: zookeeper\n    registry: {{interface: {IFACE}, version: '1.0.0'}}\n  - name: v2\n    type: zookeeper\n    registry: {{interface: {IFACE}, version: '2.0.0'}}\n",
        zk = zk.address()
    )
}

#[test]
fn providers_found_in_zookeeper_get_traffic_and_outlive_a_registry_outage() {
    let mut zk = ZooKeeper::start();
    let reg = zk.registry();
    let (pa, pb, pc, pd) = (free_port(), free_port(), free_port(), free_port());
    let _a = NodeProvider::start(pa, "A", &["--registry", &reg]);
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = Ringside::start(
        &discovery_config(admin, listen, &zk),
        admin,
        &["--shards", "2"],
    );
    let via = ["--address", &listen.to_string()];
    let via = &via[..];

    // Discovered: /ready waited for the first read, so the first call already finds A.
    let (ok, who) = whoami(via, 4, "1.0.0");
    assert!(ok && who.iter().all(|w| w == "A"), "{who:?}");
    let info = server_info(&rs);
    assert_eq!(info["registry"]["connected"], true, "{info}");
    assert_eq!(info["registry"]["endpoints"], 1, "{info}");
    let dump = rs.get("/config_dump").1;
    assert!(
        dump.contains("\"version\":\"1.0.0\"") || dump.contains("1.0.0"),
        "{dump}"
    );

    // A second provider appears and gets traffic.
    let _b = NodeProvider::start(pb, "B", &["--registry", &reg]);
    wait_for("B to get traffic", Duration::from_secs(15), || {
        whoami(via, 6, "1.0.0").1.iter().any(|w| w == "B")
    });

    // Version subsets: only the 2.0.0 provider answers 2.0.0 calls.
    let _c = NodeProvider::start(pc, "C", &["--registry", &reg, "--version", "2.0.0"]);
    wait_for("C to get 2.0.0 traffic", Duration::from_secs(15), || {
        let (ok, who) = whoami(via, 4, "2.0.0");
        ok && who.iter().all(|w| w == "C")
    });
    let (ok, who) = whoami(via, 8, "1.0.0");
    assert!(ok && who.iter().all(|w| w == "A" || w == "B"), "{who:?}");

    // A's node is removed (A keeps running): calls in flight on A finish, new ones go to B.
    let in_flight: Vec<Child> = (0..4).map(|_| slow_call(via)).collect();
    std::thread::sleep(Duration::from_millis(700));
    let a_node = zk_ls(zk.port, &providers_path())
        .unwrap()
        .into_iter()
        .find(|n| n.contains(&format!(":{pa}")))
        .expect("A's node");
    let rm = node("zk.js")
        .args(["--server", &zk.address(), "rm"])
        .arg(format!("{}/{}", providers_path(), encode(&a_node)))
        .status()
        .unwrap();
    assert!(rm.success());
    wait_for("A to leave", Duration::from_secs(10), || {
        whoami(via, 6, "1.0.0").1.iter().all(|w| w == "B")
    });
    for mut c in in_flight {
        assert!(c.wait().unwrap().success(), "a call in flight failed");
    }

    // ZooKeeper stops while traffic flows: no call fails; endpoints stay.
    let mut traffic = node("consumer.js");
    traffic
        .args(via)
        .args(["--method", "whoami", "--count", "60", "--interval-ms", "50"]);
    let flowing = std::thread::spawn(move || run_consumer(traffic));
    std::thread::sleep(Duration::from_millis(300));
    zk.stop();
    wait_for(
        "ringside to see the registry down",
        Duration::from_secs(10),
        || server_info(&rs)["registry"]["connected"] == false,
    );
    let (ok, lines) = flowing.join().unwrap();
    assert!(ok, "calls failed while ZooKeeper was down: {lines:?}");
    assert_eq!(lines.len(), 60);
    let (ok, who) = whoami(via, 4, "1.0.0");
    assert!(ok && who.iter().all(|w| w == "B"), "{who:?}");

    // Restarted: watches resume and a change is picked up.
    zk.resume();
    wait_for("the registry back", Duration::from_secs(20), || {
        server_info(&rs)["registry"]["connected"] == true
    });
    let _d = NodeProvider::start(pd, "D", &["--registry", &reg]);
    wait_for("D to get traffic", Duration::from_secs(20), || {
        whoami(via, 6, "1.0.0").1.iter().any(|w| w == "D")
    });
    let stats = rs.get("/stats").1;
    assert!(stats.contains("registry.updates"), "{stats}");
}

/// `encodeURIComponent`, as the provider wrote the node name.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[test]
fn ringside_registers_the_local_provider_and_deregisters_it_first_on_drain() {
    let mut zk = ZooKeeper::start();
    let reg = zk.registry();
    let local_port = free_port();
    let mut app = NodeProvider::start(local_port, "APP", &[]);
    let (admin, inbound) = (local(free_port()), local(free_port()));
    let config = format!(
        "admin:\n  address: {admin}\ndrain_timeout_ms: 4000\nregistry:\n  addresses: [\"{zk}\"]\n  session_timeout_ms: 4000\n  services:\n    - interface: {IFACE}\n      version: '1.0.0'\n      methods: [whoami, sleep]\n      application: app\n      listener: in\n      local_port: {local_port}\n      health_interval_ms: 200\n      register_consumer: true\nlisteners:\n  - name: in\n    address: {inbound}\n    protocol: dubbo\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [\"127.0.0.1:{local_port}\"]\n",
        zk = zk.address()
    );
    let mut rs = Ringside::start(&config, admin, &["--shards", "1"]);
    let zk_port = zk.port;
    let registered = || {
        zk_ls(zk_port, &providers_path())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.contains(&inbound.to_string()))
            .count()
    };
    wait_for("ringside's provider node", Duration::from_secs(10), || {
        registered() == 1
    });
    let consumers = zk_ls(zk.port, &format!("/dubbo/{IFACE}/consumers")).unwrap();
    assert!(
        consumers.iter().any(|n| n.contains(&inbound.to_string())),
        "{consumers:?}"
    );

    // A consumer that only knows the registry finds ringside and calls through it.
    let (ok, who) = whoami(&["--registry", &reg], 3, "1.0.0");
    assert!(ok && who.iter().all(|w| w == "APP"), "{who:?}");
    assert_eq!(server_info(&rs)["registry"]["registered"], 1);

    // The local port stops answering: unregistered; answers again: registered again.
    app.kill();
    wait_for(
        "deregistration of a dead app",
        Duration::from_secs(10),
        || registered() == 0,
    );
    let _app = NodeProvider::start(local_port, "APP", &[]);
    wait_for("registration again", Duration::from_secs(10), || {
        registered() == 1
    });

    // Session expiry (a ZooKeeper that lost its state): a new session, registered again.
    zk.stop();
    zk.wipe();
    zk.resume();
    wait_for(
        "registration in a new session",
        Duration::from_secs(20),
        || registered() == 1,
    );
    assert_eq!(
        server_info(&rs)["registry"]["session_expirations"],
        1,
        "{}",
        server_info(&rs)
    );

    // Drain with a call in flight: the node goes first, while ringside still serves it.
    let mut slow = slow_call(&["--address", &inbound.to_string()]);
    let stat = |name: &str| -> u64 {
        rs.get("/stats")
            .1
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_for("the slow call in flight", Duration::from_secs(10), || {
        stat("cluster.app.upstream_rq_active") == 1
    });
    rs.signal(libc::SIGTERM);
    wait_for("the node to go at drain", Duration::from_secs(3), || {
        registered() == 0
    });
    assert!(
        rs.child.try_wait().unwrap().is_none(),
        "ringside exited before its node was gone"
    );
    assert!(slow.wait().unwrap().success(), "the call in flight failed");
    let (status, log) = rs.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{log}");
    let dereg = log
        .find("local services deregistered")
        .expect("deregistered");
    let exit = log.find("drained; exiting").expect("drained");
    assert!(dereg < exit, "{log}");
}

/// Traffic labels from the registry (docs/governance.md#traffic-labels): sofa-rpc-node
/// providers registered in ZooKeeper, B and C untagged, G with `dubbo.tag=gray` in its
/// provider URL (what Apache Dubbo's `dubbo.provider.tag=gray` registers); sofa-rpc-node
/// consumers through a listener with `traffic_label`: a call with the `dubbo.tag: gray`
/// attachment reaches only G, an unlabelled one only B and C, one labelled `blue` (no provider
/// has it) falls back to B and C, and `blue` forced (`dubbo.force.tag: true`) fails.
#[test]
fn zookeeper_provider_tags_route_labelled_calls() {
    let zk = ZooKeeper::start();
    let reg = zk.registry();
    let (pb, pc, pg) = (free_port(), free_port(), free_port());
    let _b = NodeProvider::start(pb, "B", &["--registry", &reg]);
    let _c = NodeProvider::start(pc, "C", &["--registry", &reg]);
    let _g = NodeProvider::start(pg, "G", &["--registry", &reg, "--tag", "gray"]);
    let g_url = zk_ls(zk.port, &providers_path())
        .unwrap()
        .into_iter()
        .find(|n| n.contains(&format!(":{pg}")))
        .expect("G's node");
    assert!(g_url.contains("dubbo.tag=gray"), "{g_url}");
    let (admin, listen) = (local(free_port()), local(free_port()));
    let config = format!(
        "admin:\n  address: {admin}\nregistry:\n  addresses: [\"{zk}\"]\nlisteners:\n  - name: out\n    address: {listen}\n    protocol: dubbo\n    cluster: echo\n    dubbo: {{traffic_label: {{}}}}\nclusters:\n  - name: echo\n    type: zookeeper\n    registry: {{interface: {IFACE}, version: '1.0.0'}}\n",
        zk = zk.address()
    );
    let _rs = Ringside::start(&config, admin, &["--shards", "2"]);
    let calls = |n: usize, attachments: &str| -> (bool, Vec<String>) {
        let mut c = node("consumer.js");
        c.args(["--address", &listen.to_string(), "--method", "whoami"])
            .args(["--count", &n.to_string()]);
        if !attachments.is_empty() {
            c.args(["--attachments", attachments]);
        }
        let (ok, lines) = run_consumer(c);
        let who = lines
            .iter()
            .map(|l| match l["ok"].as_bool() {
                Some(true) => l["result"].as_str().unwrap_or("?").to_string(),
                _ => "!".to_string(),
            })
            .collect();
        (ok, who)
    };
    // All three discovered before the checks (an unlabelled call never shows G).
    wait_for("B and C to get traffic", Duration::from_secs(15), || {
        let who = calls(4, "").1;
        who.iter().any(|w| w == "B") && who.iter().any(|w| w == "C")
    });
    wait_for("G to get gray traffic", Duration::from_secs(15), || {
        calls(1, r#"{"dubbo.tag":"gray"}"#).1 == ["G"]
    });
    let (ok, who) = calls(6, r#"{"dubbo.tag":"gray"}"#);
    assert!(ok && who.iter().all(|w| w == "G"), "gray: {who:?}");
    let (ok, who) = calls(8, "");
    assert!(ok, "{who:?}");
    assert!(
        who.iter().all(|w| w == "B" || w == "C")
            && who.iter().any(|w| w == "B")
            && who.iter().any(|w| w == "C"),
        "unlabelled: the untagged providers only: {who:?}"
    );
    let (ok, who) = calls(8, r#"{"dubbo.tag":"blue"}"#);
    assert!(ok, "{who:?}");
    assert!(
        who.iter().all(|w| w == "B" || w == "C")
            && who.iter().any(|w| w == "B")
            && who.iter().any(|w| w == "C"),
        "blue (no provider): the untagged ones: {who:?}"
    );
    let (_, who) = calls(2, r#"{"dubbo.tag":"blue","dubbo.force.tag":"true"}"#);
    assert_eq!(who, ["!", "!"], "blue forced: no provider");
}
