//! `zk-push`: registry-direct discovery at scale (issue 12; docs/benchmarks.md "ZooKeeper
//! discovery"). Starts a standalone ZooKeeper (Debian's jar, own data dir and port), writes
//! `--providers` provider nodes across `--interfaces` interfaces in Apache Dubbo's layout, runs
//! ringside with one `type: zookeeper` cluster per interface, and measures:
//! - start-up: from ringside's spawn until `/ready` (every interface read and applied);
//! - memory per endpoint: RSS with every provider minus RSS of the same config with none;
//! - change latency: a provider node created (or deleted) → every shard runs the snapshot
//!   that has it (`/server_info` `config_version` moves only once every shard applied it).
//!
//! No traffic is sent: provider addresses are 127.0.0.1 ports nobody listens on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::args::Args;
use zookeeper_client as zk;

const USAGE: &str = "zk-push --ringside PATH [--interfaces 1000] [--providers 10000] [--changes 20]
        [--shards 2] [--taskset-proxy 1] [--json OUT]

Runs ZooKeeper and ringside (registry-direct discovery); prints start-up time, memory per
endpoint and the ZooKeeper-change-to-every-shard latency (median, p90, max).";

const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Children to kill if we panic: the release profile aborts, so `Drop` would not run.
// A bench tool, not the data path.
#[allow(clippy::disallowed_types)]
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn spawn(mut cmd: Command, what: &str) -> Proc {
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    if let Ok(mut c) = CHILDREN.lock() {
        c.push(child.id());
    }
    Proc(child)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn config_version(admin: SocketAddr) -> u64 {
    http_get(admin, "/server_info")
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["config_version"].as_u64())
        .unwrap_or(0)
}

fn iface(i: usize) -> String {
    format!("com.ringside.bench.Service{i:04}")
}

fn node_path(i: usize, port: u16) -> String {
    let url = format!(
        "dubbo://127.0.0.1:{port}/{}?anyhost=true&application=bench&interface={}&methods=echo&side=provider&version=1.0.0",
        iface(i),
        iface(i)
    );
    let enc: String = url
        .bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-_.*".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect();
    format!("/dubbo/{}/providers/{enc}", iface(i))
}

struct Ringside {
    proc: Proc,
    admin: SocketAddr,
    _dir: PathBuf,
}

fn start_ringside(
    bin: &str,
    zk_port: u16,
    interfaces: usize,
    shards: usize,
    cpu: Option<&str>,
    dir: &std::path::Path,
) -> (Ringside, Duration) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut y = format!(
        "admin:\n  address: {admin}\nregistry:\n  addresses: [\"127.0.0.1:{zk_port}\"]\n  initial_fetch_timeout_ms: 120000\nlisteners:\n  - name: out\n    address: {listen}\n    protocol: dubbo\n    cluster: c0\nclusters:\n"
    );
    for i in 0..interfaces {
        y.push_str(&format!(
            "  - name: c{i}\n    type: zookeeper\n    registry: {{interface: {}}}\n",
            iface(i)
        ));
    }
    let path = dir.join("ringside.yaml");
    std::fs::write(&path, y).unwrap_or_else(|e| panic!("write config: {e}"));
    let mut cmd = match cpu {
        Some(c) => {
            let mut c2 = Command::new("taskset");
            c2.args(["-c", c, bin]);
            c2
        }
        None => Command::new(bin),
    };
    cmd.arg("run")
        .arg("--config")
        .arg(&path)
        .args(["--shards", &shards.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let proc = spawn(cmd, "ringside");
    loop {
        if let Some((200, _)) = http_get(admin, "/ready") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "ringside not ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ready = started.elapsed();
    (
        Ringside {
            proc,
            admin,
            _dir: dir.to_path_buf(),
        },
        ready,
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    let args = Args::parse(USAGE, &[]);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(c) = CHILDREN.lock() {
            for &pid in c.iter() {
                // SAFETY: kill(2) on a child we spawned.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        default_hook(info);
    }));
    let bin = args
        .opt_str("ringside")
        .unwrap_or_else(|| args.fail("--ringside PATH is required"))
        .to_string();
    let interfaces: usize = args.get("interfaces", 1000);
    let providers: usize = args.get("providers", 10_000);
    let changes: usize = args.get("changes", 20);
    let shards: usize = args.get("shards", 2);
    let cpu = args.opt_str("taskset-proxy").map(str::to_string);
    assert!(
        PathBuf::from(ZK_JAR).exists(),
        "{ZK_JAR} missing: run scripts/install-test-deps"
    );

    let dir = std::env::temp_dir().join(format!("zk-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).unwrap_or_else(|e| panic!("temp dir: {e}"));
    let zk_port = free_port();
    std::fs::write(
        dir.join("zoo.cfg"),
        format!(
            "tickTime=500\ndataDir={}\nclientPort={zk_port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n",
            dir.join("data").display()
        ),
    )
    .unwrap_or_else(|e| panic!("zoo.cfg: {e}"));
    let mut java = Command::new("java");
    java.args([
        "-Xmx512m",
        "-cp",
        ZK_JAR,
        "org.apache.zookeeper.server.ZooKeeperServerMain",
    ])
    .arg(dir.join("zoo.cfg"))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let _zk = spawn(java, "java (ZooKeeper)");
    // A worker thread keeps the session alive (pings) while main waits outside `block_on`.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let client = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match zk::Client::connect(&format!("127.0.0.1:{zk_port}")).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "ZooKeeper did not start: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());

    // Baseline: every interface's providers node exists, empty.
    rt.block_on(async {
        for i in 0..interfaces {
            client
                .mkdir(&format!("/dubbo/{}/providers", iface(i)), &persistent)
                .await
                .unwrap_or_else(|e| panic!("mkdir: {e}"));
        }
    });
    let tmp = |n: &str| {
        let d = dir.join(n);
        let _ = std::fs::create_dir_all(&d);
        d
    };
    let (empty, _) = start_ringside(
        &bin,
        zk_port,
        interfaces,
        shards,
        cpu.as_deref(),
        &tmp("rs0"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss_empty = rss_kb(empty.proc.0.id());
    drop(empty);

    // The providers, spread evenly.
    let write_started = Instant::now();
    rt.block_on(async {
        for n in 0..providers {
            let path = node_path(n % interfaces, 20_000 + (n / interfaces) as u16);
            client
                .create(&path, &[], &persistent)
                .await
                .unwrap_or_else(|e| panic!("create {path}: {e}"));
        }
    });
    let write_s = write_started.elapsed().as_secs_f64();
    let (rs, ready) = start_ringside(
        &bin,
        zk_port,
        interfaces,
        shards,
        cpu.as_deref(),
        &tmp("rs1"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss_full = rss_kb(rs.proc.0.id());
    let per_endpoint_bytes = (rss_full.saturating_sub(rss_empty) * 1024) as f64 / providers as f64;

    // Changes: alternately add and remove one provider of a different interface each time.
    let mut latencies_ms = Vec::new();
    for k in 0..changes {
        let i = (k * 7919) % interfaces;
        let path = node_path(i, 40_000 + k as u16);
        let before = config_version(rs.admin);
        let t0 = Instant::now();
        rt.block_on(async {
            client
                .create(&path, &[], &persistent)
                .await
                .unwrap_or_else(|e| panic!("create: {e}"));
        });
        while config_version(rs.admin) <= before {
            assert!(t0.elapsed() < Duration::from_secs(60), "change not applied");
            std::thread::sleep(Duration::from_micros(500));
        }
        latencies_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        let before = config_version(rs.admin);
        let t0 = Instant::now();
        rt.block_on(async {
            client
                .delete(&path, None)
                .await
                .unwrap_or_else(|e| panic!("delete: {e}"));
        });
        while config_version(rs.admin) <= before {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "removal not applied"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        latencies_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = latencies_ms.clone();
    sorted.sort_by(f64::total_cmp);
    // Mean time inside `Shared::apply` (validate, build the snapshot, every shard swaps it in).
    let stat = |body: &str, name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let body = http_get(rs.admin, "/stats")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let apply_mean_ms = stat(&body, "config.update_apply_time_us_sum_us")
        / stat(&body, "config.update_apply_time_us_count").max(1.0)
        / 1e3;
    let out = serde_json::json!({
        "interfaces": interfaces,
        "providers": providers,
        "shards": shards,
        "zookeeper_write_s": write_s,
        "startup_to_ready_ms": ready.as_secs_f64() * 1e3,
        "rss_kb_no_providers": rss_empty,
        "rss_kb_with_providers": rss_full,
        "memory_per_endpoint_bytes": per_endpoint_bytes,
        "change_to_all_shards_ms": {
            "samples": sorted.len(),
            "median": percentile(&sorted, 0.5),
            "p90": percentile(&sorted, 0.9),
            "max": sorted.last().copied().unwrap_or(0.0),
        },
        "apply_mean_ms": apply_mean_ms,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    if let Some(p) = args.opt_str("json") {
        let _ = std::fs::write(p, serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    drop(rs);
    let _ = std::fs::remove_dir_all(&dir);
}
