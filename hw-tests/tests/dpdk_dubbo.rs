//! A Dubbo call (the real npm peers) and gRPC calls (grpcio) through ringside's DPDK path, both
//! ways:
//!
//! ```text
//!  netns dpdk-t<pid>                          root namespace
//!  consumer.js ─┐                             ┌─ ringside-dpdk: net_af_packet0 on dpdk-<pid>a
//!  provider.js ─┴─ dpdk-<pid>b 10.213.3.1 ═veth═ dpdk-<pid>a (no IP; DPDK's 10.213.3.2)
//! ```
//!
//! The consumer calls 10.213.3.2:20880 (a listener on the DPDK port: accepted by the smoltcp
//! stack of the shard whose queue got the SYN), ringside forwards to the provider
//! 10.213.3.1:20881 (an upstream connection opened by the same stack), and the answers come back
//! the same way. Two shards run the port with a queue pair each (`qpairs=2`, spread by the
//! kernel's fanout hash): replies of an upstream connection that land on the other shard's queue
//! are steered to the shard that opened it (its source port says which). The namespace and the veth
//! are removed on drop, also when the test fails. The kernel never routes for the DPDK end: it
//! has no address, IPv6 is off and forwarding from it is off.
#![cfg(feature = "dpdk")]

#[path = "../../dataplane/tests/common/dubbo.rs"]
#[allow(dead_code)]
mod dubbo;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RINGSIDE: &str = env!("CARGO_BIN_EXE_ringside-dpdk");
const PEER_IP: &str = "10.213.3.1";
const DPDK_IP: &str = "10.213.3.2";
const PROVIDER_PORT: u16 = 20881;
const LISTEN_PORT: u16 = 20880;
const GRPC_SERVER_PORT: u16 = 50061;
const GRPC_LISTEN_PORT: u16 = 50060;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The peers' network namespace and the veth pair, removed on drop.
struct Net {
    ns: String,
    host_if: String,
}

impl Net {
    fn new() -> Net {
        let pid = std::process::id();
        let net = Net {
            ns: format!("dpdk-t{pid}"),
            host_if: format!("dpdk-{pid}a"),
        };
        let peer_if = format!("dpdk-{pid}b");
        net.cleanup();
        sh(&["ip", "netns", "add", &net.ns]);
        sh(&[
            "ip",
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        sh(&["ip", "link", "set", &peer_if, "netns", &net.ns]);
        sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{}.forwarding=0", net.host_if),
            &format!("net.ipv6.conf.{}.disable_ipv6=1", net.host_if),
        ]);
        sh(&["ip", "link", "set", &net.host_if, "up"]);
        let ns = |a: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &net.ns];
            v.extend_from_slice(a);
            sh(&v);
        };
        ns(&[
            "ip",
            "addr",
            "add",
            &format!("{PEER_IP}/24"),
            "dev",
            &peer_if,
        ]);
        ns(&["ip", "link", "set", &peer_if, "up"]);
        ns(&["ip", "link", "set", "lo", "up"]);
        // Without this the peers' packets reach af_packet with partial (offloaded) checksums.
        ns(&["ethtool", "-K", &peer_if, "tx", "off"]);
        net
    }

    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    fn node(&self, script: &str) -> Command {
        let modules = root().join(".cache/node/node_modules");
        assert!(modules.exists(), "run scripts/install-test-deps");
        let mut c = self.exec("node");
        c.arg(root().join("tests/peers").join(script))
            .env("NODE_PATH", modules)
            .stdin(Stdio::null());
        c
    }

    fn cleanup(&self) {
        // Processes still in the namespace (a failed test's peers) go first.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a process of the namespace this test created.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A child process killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then(|| {
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    })
}

fn start_provider(net: &Net) -> Proc {
    let mut c = net.node("provider.js");
    c.args(["--port", &PROVIDER_PORT.to_string(), "--name", "A"]);
    spawn_until_ready(c, "provider")
}

/// Spawns a peer that prints `READY ...` once it listens, and waits for that line.
fn spawn_until_ready(mut c: Command, what: &str) -> Proc {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(ready.starts_with("READY"), "{what}: {ready:?}");
    Proc(child)
}

fn kernel_config(admin: SocketAddr) -> String {
    format!(
        "admin:\n  address: {admin}\nruntime:\n  shards: 1\n\
         listeners:\n  - name: out\n    address: {DPDK_IP}:{LISTEN_PORT}\n    protocol: dubbo\n    cluster: a\n\
         clusters:\n  - name: a\n    endpoints: [\"{PEER_IP}:{PROVIDER_PORT}\"]\n    timeout_ms: 5000\n"
    )
}

/// `shards` shards, each with its own queue pair on the port (`qpairs`: the kernel's
/// PACKET_FANOUT hash spreads the flows, as RSS would on a NIC), and 8 upstream connections per
/// shard so that replies landing on another shard's queue (steering) are all but certain.
fn config(admin: SocketAddr, host_if: &str, shards: usize) -> String {
    format!(
        "admin:\n  address: {admin}\nruntime:\n  shards: {shards}\n\
         dpdk:\n  vdevs: [\"net_af_packet0,iface={host_if},qpairs={shards}\"]\n  no_huge: true\n  memory_mb: 256\n  mbufs_per_queue: 4095\n  address: {DPDK_IP}\n  prefix_len: 24\n  queues: {shards}\n\
         listeners:\n  - name: out\n    address: {DPDK_IP}:{LISTEN_PORT}\n    protocol: dubbo\n    cluster: a\n\
         \x20 - name: grpc\n    address: {DPDK_IP}:{GRPC_LISTEN_PORT}\n    protocol: triple\n    cluster: g\n\
         clusters:\n  - name: a\n    endpoints: [\"{PEER_IP}:{PROVIDER_PORT}\"]\n    timeout_ms: 5000\n    connections_per_host: 8\n\
         \x20 - name: g\n    endpoints: [\"{PEER_IP}:{GRPC_SERVER_PORT}\"]\n"
    )
}

/// The grpcio Greeter server (tests/peers/grpc) in the namespace.
fn start_grpc_server(net: &Net) -> Proc {
    let python = root().join(".cache/venv/bin/python");
    assert!(python.exists(), "run scripts/install-test-deps");
    let mut c = net.exec(python.to_str().unwrap());
    c.arg(root().join("tests/peers/grpc/server.py"))
        .args(["--host", PEER_IP, "--port", &GRPC_SERVER_PORT.to_string()])
        .args(["--name", "G"])
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    spawn_until_ready(c, "grpc server")
}

/// One grpcio client run in the namespace against ringside's Triple listener on the DPDK port.
fn grpc_client(net: &Net, args: &[&str]) -> serde_json::Value {
    let python = root().join(".cache/venv/bin/python");
    let out = net
        .exec(python.to_str().unwrap())
        .arg(root().join("tests/peers/grpc/client.py"))
        .args(["--target", &format!("{DPDK_IP}:{GRPC_LISTEN_PORT}")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run grpc client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc client {args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("grpc client JSON line")
}

fn start_ringside(dir: &std::path::Path, cfg: &str, admin: SocketAddr) -> Proc {
    let path = dir.join("ringside.yaml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = Command::new(RINGSIDE)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringside-dpdk");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(admin, "/ready").is_none() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("ringside-dpdk exited with {status}: {err}");
        }
        assert!(Instant::now() < deadline, "ringside-dpdk not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

fn consumer(net: &Net, method: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = net
        .node("consumer.js")
        .args([
            "--address",
            &format!("{DPDK_IP}:{LISTEN_PORT}"),
            "--method",
            method,
        ])
        .args(args)
        .output()
        .expect("run consumer");
    assert!(
        out.status.success(),
        "consumer {method}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn dubbo_call_crosses_the_dpdk_path_both_ways() {
    let dir = std::env::temp_dir().join(format!("dpdk-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let net = Net::new();
    let _provider = start_provider(&net);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Two shards, two queue pairs.
    let _rs = start_ringside(&dir, &config(admin, &net.host_if, 2), admin);

    let lines = consumer(
        &net,
        "echo",
        &["--args", r#"["over dpdk"]"#, "--count", "3"],
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["result"] == "over dpdk"),
        "{lines:?}"
    );
    let lines = consumer(&net, "add", &["--args", "[40, 2]"]);
    assert_eq!(lines[0]["result"], 42, "{lines:?}");
    // 2 MiB each way: many segments, windows, the mbuf pool recycled many times over.
    let big = dir.join("large.json");
    std::fs::write(&big, format!("[\"{}\"]", "x".repeat(2 << 20))).unwrap();
    let lines = consumer(&net, "large", &["--args-file", big.to_str().unwrap()]);
    assert_eq!(lines[0]["result"], 2 << 20, "{lines:?}");

    // Triple/gRPC on the same port: grpcio client → ringside's HTTP/2 listener on the DPDK
    // stack → grpcio server over an upstream connection of the same stack; unary, a 1 MiB
    // payload each way, and a bidi stream.
    let _grpc = start_grpc_server(&net);
    let r = grpc_client(&net, &["--count", "3"]);
    assert_eq!(r["replies"].as_array().map(Vec::len), Some(3), "{r}");
    assert_eq!(r["replies"][0]["server"], "G", "{r}");
    let r = grpc_client(&net, &["--payload-bytes", "1048576"]);
    assert_eq!(r["payload_ok"], true, "{r}");
    let r = grpc_client(&net, &["--call", "bidi", "--count", "20"]);
    assert_eq!(r["replies"].as_array().map(Vec::len), Some(20), "{r}");

    let info: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/server_info").expect("server_info")).unwrap();
    assert_eq!(info["dpdk"]["queues"], 2, "{info}");
    assert_eq!(info["dpdk"]["port"], "net_af_packet0", "{info}");
    assert_eq!(info["dpdk"]["source_ports"][1], "57344-65535", "{info}");

    // Many connections at once: both shards' queues get some (hash fanout), and every upstream
    // reply RSS puts on the other queue is steered to the shard that opened the connection.
    let (conns, calls) = (16, 4);
    let ok = in_netns(&net.ns, move || {
        let addr: SocketAddr = format!("{DPDK_IP}:{LISTEN_PORT}").parse().unwrap();
        let mut cs: Vec<dubbo::Consumer> =
            (0..conns).map(|_| dubbo::Consumer::connect(addr)).collect();
        echo_calls(&mut cs, calls)
    });
    assert_eq!(ok, conns * calls);
    std::thread::sleep(Duration::from_millis(1500)); // queue counters are published every 1 s
    let stats = http_get(admin, "/stats").expect("stats");
    assert_eq!(
        stat(&stats, "dubbo_route.out.default.rsp_ok"),
        5 + (conns * calls) as u64,
        "{stats}"
    );
    for q in ["0", "1"] {
        assert!(stat(&stats, &format!("dpdk.{q}.rx_packets")) > 0, "{stats}");
        assert!(stat(&stats, &format!("dpdk.{q}.tx_packets")) > 0, "{stats}");
    }
    let steered = stat(&stats, "dpdk.0.steered_out") + stat(&stats, "dpdk.1.steered_out");
    let taken = stat(&stats, "dpdk.0.steered_in") + stat(&stats, "dpdk.1.steered_in");
    let copies = stat(&stats, "dpdk.0.arp_copies") + stat(&stats, "dpdk.1.arp_copies");
    for l in stats.lines().filter(|l| l.starts_with("dpdk.")) {
        println!("{l}");
    }
    assert!(steered > 0, "no packet needed steering: {stats}");
    assert_eq!(steered + copies, taken, "{stats}");
    assert_eq!(
        stat(&stats, "dpdk.0.steer_dropped") + stat(&stats, "dpdk.1.steer_dropped"),
        0,
        "{stats}"
    );
    assert!(stat(&stats, "cluster.a.upstream_cx_total") >= 16, "{stats}");
    assert!(stat(&stats, "cluster.g.upstream_cx_total") >= 1, "{stats}");

    // Latency, one connection, sequential calls from a consumer in the namespace (printed for
    // docs/benchmarks.md; RINGSIDE_DPDK_BENCH_CALLS sets how many).
    let calls: usize = std::env::var("RINGSIDE_DPDK_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let lat = in_netns(&net.ns, move || {
        sequential_latency_us(format!("{DPDK_IP}:{LISTEN_PORT}").parse().unwrap(), calls)
    });
    println!(
        "dubbo over DPDK af_packet ({calls} sequential calls): p50 {} us, p99 {} us",
        lat.0, lat.1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `f` on a thread that entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on this thread only, with a namespace fd we opened.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

/// `calls` echo calls on each connection, all connections' requests on the wire at once;
/// returns the calls answered Ok.
fn echo_calls(cs: &mut [dubbo::Consumer], calls: usize) -> usize {
    use codec::dubbo::encode::{Arg, RequestBuilder};
    let args = [Arg::Str("spread")];
    let req = RequestBuilder::new("com.ringside.test.EchoService", "echo")
        .version("1.0.0")
        .args(&args);
    let mut ok = 0;
    for _ in 0..calls {
        let ids: Vec<u64> = cs.iter_mut().map(|c| c.send(req)).collect();
        for (c, id) in cs.iter_mut().zip(ids) {
            let a = c.recv().expect("an answer");
            assert_eq!(a.id, id);
            ok += usize::from(a.status == codec::dubbo::Status::Ok);
        }
    }
    ok
}

/// p50 and p99 (µs) of `n` sequential echo calls on one connection to `addr`.
pub fn sequential_latency_us(addr: SocketAddr, n: usize) -> (u64, u64) {
    use codec::dubbo::encode::{Arg, RequestBuilder};
    let mut c = dubbo::Consumer::connect(addr);
    let args = [Arg::Str("ping")];
    let req = RequestBuilder::new("com.ringside.test.EchoService", "echo")
        .version("1.0.0")
        .args(&args);
    for _ in 0..20 {
        c.call(req);
    }
    let mut us: Vec<u64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let a = c.call(req);
            assert_eq!(a.status, codec::dubbo::Status::Ok, "{a:?}");
            t.elapsed().as_micros() as u64
        })
        .collect();
    us.sort_unstable();
    (us[n / 2], us[(n * 99 / 100).min(n - 1)])
}

/// docs/benchmarks.md: the same Dubbo hop (consumer and provider in the namespace, ringside in
/// the root namespace, one shard) over the kernel (the veth's host end has the address) and
/// over DPDK (net_af_packet on the address-less host end). Runs `RINGSIDE_DPDK_BENCH_RUNS`
/// (3) runs of `RINGSIDE_DPDK_BENCH_CALLS` (2000) sequential calls each way and prints each
/// run's p50/p99. `cargo test --release -p hw-tests --features dpdk --test dpdk_dubbo --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn latency_kernel_vs_dpdk() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (runs, calls) = (
        env("RINGSIDE_DPDK_BENCH_RUNS", 3),
        env("RINGSIDE_DPDK_BENCH_CALLS", 2000),
    );
    let dir = std::env::temp_dir().join(format!("dpdk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let net = Net::new();
    let _provider = start_provider(&net);
    let addr: SocketAddr = format!("{DPDK_IP}:{LISTEN_PORT}").parse().unwrap();
    for path in ["kernel", "dpdk"] {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cidr = format!("{DPDK_IP}/24");
        let cfg = if path == "kernel" {
            sh(&["ip", "addr", "add", &cidr, "dev", &net.host_if]);
            kernel_config(admin)
        } else {
            // One shard, as the kernel run (figures in docs/benchmarks.md).
            config(admin, &net.host_if, 1)
        };
        let rs = start_ringside(&dir, &cfg, admin);
        for run in 0..runs {
            let (p50, p99) = in_netns(&net.ns, move || sequential_latency_us(addr, calls));
            println!("{path} run {run}: {calls} sequential calls: p50 {p50} us, p99 {p99} us");
        }
        drop(rs);
        if path == "kernel" {
            sh(&["ip", "addr", "del", &cidr, "dev", &net.host_if]);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
