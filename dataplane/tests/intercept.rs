//! Traffic interception (`ringside iptables`, transparent listeners, original destination), in
//! network namespaces the tests create: a client namespace and a pod namespace joined by a veth
//! pair, with the app (a Dubbo provider and a gRPC server) and ringside in the pod namespace,
//! and `ringside iptables` applied there. Traffic never leaves loopback and these namespaces.
//!
//! Needs root (CI runs the suite as root) and `iptables`, `conntrack`, `setpriv`
//! (scripts/install-test-deps). Without root the tests say so and pass vacuously.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use codec::dubbo::encode::{Arg, RequestBuilder};
use codec::dubbo::Status;
use common::dubbo::{Consumer, Provider};
use common::grpc::{grpc_call, Call, CallOpts, GrpcServer};
use common::{Ringside, TempDir, RINGSIDE};

const CLIENT_IP: &str = "10.77.0.1";
const POD_IP: &str = "10.77.0.2";
const APP_DUBBO_PORT: u16 = 20880;
const APP_GRPC_PORT: u16 = 50051;
const REMOTE_DUBBO_PORT: u16 = 20881;
const REMOTE_GRPC_PORT: u16 = 50052;
const PROXY_UID: &str = "1337";
const SVC: &str = "org.apache.dubbo.demo.DemoService";

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips (passes) when not root: namespaces and iptables need CAP_SYS_ADMIN/CAP_NET_ADMIN.
macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, iptables)");
            return;
        }
    };
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop (also when the test fails).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!(
            "rs-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        check(
            Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .unwrap(),
            "ip netns add",
        );
        let ns = Netns { name };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command in the namespace (`ip netns exec`).
    fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .unwrap()
    }

    /// [`Netns::exec`], asserting success; returns stdout.
    fn sh(&self, argv: &[&str]) -> String {
        check(self.exec(argv), &argv.join(" "))
    }

    /// Runs `f` on a thread that entered the namespace: sockets it opens and processes it
    /// spawns live in the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open netns");
                // SAFETY: setns on a valid namespace fd, for this thread only.
                let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// The ruleset as iptables-save and ip6tables-save print it, rules and chains only (no
    /// counters, no comments).
    fn rules(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for save in ["iptables-save", "ip6tables-save"] {
            for l in self.sh(&[save]).lines() {
                if l.starts_with("-A ") || l.starts_with(":RINGSIDE") {
                    out.insert(format!("{save}: {l}"));
                }
            }
        }
        for fam in ["-4", "-6"] {
            for l in self.sh(&["ip", fam, "rule", "show"]).lines() {
                out.insert(format!("ip {fam} rule: {l}"));
            }
            // `ip route show table 133` fails when the table does not exist: empty then.
            let routes = self.exec(&["ip", fam, "route", "show", "table", "133"]);
            for l in String::from_utf8_lossy(&routes.stdout).lines() {
                out.insert(format!("ip {fam} route table 133: {l}"));
            }
        }
        out
    }

    fn ringside_iptables(&self, args: &[&str]) -> String {
        let mut argv = vec![RINGSIDE, "iptables"];
        argv.extend_from_slice(args);
        self.sh(&argv)
    }

    /// TCP entries in this namespace's conntrack table.
    fn conntrack_tcp(&self) -> Vec<String> {
        let out = self.exec(&["conntrack", "-L", "-p", "tcp"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("tcp"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Client namespace (10.77.0.1) and pod namespace (10.77.0.2) joined by a veth pair.
struct Topology {
    client: Netns,
    pod: Netns,
}

impl Topology {
    fn new() -> Topology {
        let client = Netns::new("cl");
        let pod = Netns::new("pod");
        client.sh(&[
            "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns",
            &pod.name,
        ]);
        for (ns, ip) in [(&client, CLIENT_IP), (&pod, POD_IP)] {
            ns.sh(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "veth0"]);
            ns.sh(&["ip", "link", "set", "veth0", "up"]);
        }
        Topology { client, pod }
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn sidecar_config(dir: &TempDir, transparent: bool) -> String {
    // The control socket is a path on the shared file system: one per test, writable by the
    // proxy's uid.
    let ctl = dir.0.join("ctl.sock");
    format!(
        "admin:\n  address: 127.0.0.1:15000\n  control_socket: {}\n\
         runtime:\n  shards: 1\n  socket_mark: 1337\n\
         listeners:\n\
         \x20 - name: inbound\n    address: 0.0.0.0:15006\n    protocol: tcp\n    transparent: {transparent}\n    original_destination: true\n    cluster: inbound_passthrough\n\
         \x20 - name: outbound\n    address: 0.0.0.0:15001\n    protocol: tcp\n    transparent: {transparent}\n    original_destination: true\n    cluster: outbound_passthrough\n\
         clusters:\n\
         \x20 - name: inbound_passthrough\n    type: original_destination\n\
         \x20 - name: outbound_passthrough\n    type: original_destination\n",
        ctl.display()
    )
}

/// `name: N` from the admin /stats text (0 when absent).
fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn dubbo_echo(to: SocketAddr, arg: &str) -> String {
    dubbo_call(to, "echo", arg)
}

fn dubbo_call(to: SocketAddr, method: &str, arg: &str) -> String {
    let mut c = Consumer::connect(to);
    let args = [Arg::Str(arg)];
    let ans = c.call(RequestBuilder::new(SVC, method).args(&args));
    assert_eq!(ans.status, Status::Ok, "{ans:?}");
    ans.text
}

fn grpc_unary(to: SocketAddr) -> String {
    let out = grpc_call(to, &CallOpts::new(Call::Unary).timeout_s(10.0));
    assert!(out.ok, "gRPC call to {to} failed: {out:?}");
    out.servers().join(",")
}

/// Waits until `cond` holds on the pod's ringside stats (counters are published a moment after
/// the connection).
fn wait_stats(pod: &Netns, rs: &Ringside, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, stats) = pod.run(|| rs.get("/stats"));
        if cond(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How the proxy is told apart from the app.
#[derive(Clone, Copy, PartialEq)]
enum Exclusion {
    /// ringside runs as uid 1337 (setpriv, keeping CAP_NET_ADMIN) and uses socket_mark 1337;
    /// the rules match both.
    UidAndMark,
    /// ringside runs as root; the rules have no uid match (`--proxy-uid 0`): only SO_MARK
    /// keeps its own connections from being intercepted again.
    MarkOnly,
}

/// The whole scenario in one mode: inbound Dubbo and gRPC calls from the client namespace to
/// the pod's app, outbound Dubbo and gRPC calls from the pod's app to servers in the client
/// namespace, each through ringside (its listener counters prove it), none looped; then
/// conntrack (tproxy: nothing), idempotence and `--clean`.
fn scenario(mode: &str, exclusion: Exclusion) {
    let topo = Topology::new();
    let (client, pod) = (&topo.client, &topo.pod);
    let before = pod.rules();

    // The app in the pod, the remote servers in the client namespace.
    let app_dubbo = pod.run(|| Provider::start_on(addr("0.0.0.0", APP_DUBBO_PORT), "app"));
    let _app_grpc =
        pod.run(|| GrpcServer::start(APP_GRPC_PORT, "app-grpc", &["--host", "0.0.0.0"]));
    let remote_dubbo =
        client.run(|| Provider::start_on(addr("0.0.0.0", REMOTE_DUBBO_PORT), "remote"));
    let _remote_grpc =
        client.run(|| GrpcServer::start(REMOTE_GRPC_PORT, "remote-grpc", &["--host", "0.0.0.0"]));

    let dir = TempDir::new("intercept");
    let cfg = sidecar_config(&dir, mode == "tproxy");
    let rs = pod.run(|| match exclusion {
        Exclusion::UidAndMark => {
            // The config and the control socket's directory must be usable by uid 1337, and
            // ringside refuses a control socket directory that is not its uid's alone (0777
            // was refused): give the directory to uid 1337, mode 0700.
            let owner = format!("{PROXY_UID}:{PROXY_UID}");
            for args in [
                ["chown", owner.as_str(), &dir.0.display().to_string()],
                ["chmod", "0700", &dir.0.display().to_string()],
            ] {
                assert!(Command::new(args[0])
                    .args(&args[1..])
                    .status()
                    .unwrap()
                    .success());
            }
            Ringside::start_wrapped(
                &[
                    "setpriv",
                    "--reuid",
                    PROXY_UID,
                    "--regid",
                    PROXY_UID,
                    "--clear-groups",
                    "--inh-caps",
                    "+net_admin,+net_raw",
                    "--ambient-caps",
                    "+net_admin,+net_raw",
                ],
                &cfg,
                addr("127.0.0.1", 15000),
                &[],
                |_| {},
            )
        }
        Exclusion::MarkOnly => Ringside::start(&cfg, addr("127.0.0.1", 15000), &[]),
    });
    if exclusion == Exclusion::UidAndMark {
        let status = std::fs::read_to_string(format!("/proc/{}/status", rs.child.id())).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(uid.split_whitespace().nth(1) == Some(PROXY_UID), "{uid}");
    }

    let uid_arg = match exclusion {
        Exclusion::UidAndMark => PROXY_UID,
        Exclusion::MarkOnly => "0",
    };
    let args = [
        "--mode",
        mode,
        "--inbound-ports",
        "*",
        "--proxy-uid",
        uid_arg,
        "--proxy-mark",
        "1337",
    ];
    pod.ringside_iptables(&args);
    let installed = pod.rules();
    // Idempotent: a second run leaves exactly the same rules.
    pod.ringside_iptables(&args);
    assert_eq!(pod.rules(), installed, "a second run changed the rules");
    let nat_used = installed.iter().any(|r| r.contains("REDIRECT"));
    assert_eq!(nat_used, mode == "redirect", "{installed:#?}");

    // Inbound: the client calls the pod's app; ringside's inbound listener carries it.
    let dubbo_in = client.run(|| dubbo_echo(addr(POD_IP, APP_DUBBO_PORT), "in"));
    assert_eq!(dubbo_in, "app|echo|in");
    let grpc_in = client.run(|| grpc_unary(addr(POD_IP, APP_GRPC_PORT)));
    assert_eq!(grpc_in, "app-grpc");
    let stats = wait_stats(pod, &rs, "inbound listener carried both calls", |s| {
        stat(s, "listener.inbound.downstream_cx_total") >= 2
    });
    assert!(app_dubbo.accepted.load(Ordering::SeqCst) >= 1);
    // ringside's own connections to the app were not intercepted again (outbound untouched).
    assert_eq!(
        stat(&stats, "listener.outbound.downstream_cx_total"),
        0,
        "the proxy's connection to the app looped into the outbound listener: {stats}"
    );
    let inbound_cx = stat(&stats, "listener.inbound.downstream_cx_total");
    assert_eq!(
        stat(&stats, "cluster.inbound_passthrough.upstream_cx_total"),
        inbound_cx,
        "{stats}"
    );

    // Outbound: the pod's app calls servers in the client namespace.
    let dubbo_out = pod.run(|| dubbo_echo(addr(CLIENT_IP, REMOTE_DUBBO_PORT), "out"));
    assert_eq!(dubbo_out, "remote|echo|out");
    let grpc_out = pod.run(|| grpc_unary(addr(CLIENT_IP, REMOTE_GRPC_PORT)));
    assert_eq!(grpc_out, "remote-grpc");
    let stats = wait_stats(pod, &rs, "outbound listener carried both calls", |s| {
        stat(s, "listener.outbound.downstream_cx_total") >= 2
    });
    assert!(remote_dubbo.accepted.load(Ordering::SeqCst) >= 1);
    let outbound_cx = stat(&stats, "listener.outbound.downstream_cx_total");
    assert_eq!(
        stat(&stats, "cluster.outbound_passthrough.upstream_cx_total"),
        outbound_cx,
        "{stats}"
    );
    // Nothing looped: the inbound listener saw only the client's connections.
    assert_eq!(
        stat(&stats, "listener.inbound.downstream_cx_total"),
        inbound_cx,
        "{stats}"
    );
    assert_eq!(
        stat(
            &stats,
            "cluster.outbound_passthrough.upstream_cx_connect_fail"
        ),
        0
    );
    // What the first bytes said: the Dubbo magic and the HTTP/2 preface, both ways.
    for dir in ["inbound", "outbound"] {
        for proto in ["dubbo", "http2"] {
            let name = format!("listener.{dir}.downstream_protocol_{proto}");
            assert!(stat(&stats, &name) >= 1, "{name}: {stats}");
        }
    }

    let tracked = pod.conntrack_tcp();
    if mode == "tproxy" {
        assert!(
            tracked.is_empty(),
            "tproxy mode must leave no conntrack entries: {tracked:#?}"
        );
    } else {
        // redirect mode needs conntrack: the check above sees entries when there are some.
        assert!(
            !tracked.is_empty(),
            "redirect mode without conntrack entries?"
        );
    }

    pod.ringside_iptables(&["--mode", mode, "--clean"]);
    assert_eq!(pod.rules(), before, "--clean left rules behind");
    // Without the rules, a direct connection to the outbound port has no original destination
    // but the listener itself: refused, not looped.
    pod.run(|| {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(addr("127.0.0.1", 15001)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap_or(0), 0, "closed at once");
    });
}

#[test]
fn tproxy_intercepts_dubbo_and_grpc_both_ways_without_conntrack() {
    require_root!();
    scenario("tproxy", Exclusion::UidAndMark);
}

#[test]
fn redirect_intercepts_dubbo_and_grpc_both_ways() {
    require_root!();
    scenario("redirect", Exclusion::UidAndMark);
}

#[test]
fn tproxy_socket_mark_alone_keeps_the_proxy_out_of_its_own_rules() {
    require_root!();
    scenario("tproxy", Exclusion::MarkOnly);
}

#[test]
fn redirect_socket_mark_alone_keeps_the_proxy_out_of_its_own_rules() {
    require_root!();
    scenario("redirect", Exclusion::MarkOnly);
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    require_root!();
    let ns = Netns::new("dry");
    let before = ns.rules();
    let tproxy = ns.ringside_iptables(&[
        "--mode",
        "tproxy",
        "--dry-run",
        "--exclude-cidrs",
        "10.1.0.0/16,fd00::/8",
    ]);
    for want in [
        "iptables -w -t mangle -A RINGSIDE_PREROUTING -i lo -p tcp -m mark --mark 0x1 -j TPROXY --on-port 15001 --tproxy-mark 0x1",
        "iptables -w -t mangle -A RINGSIDE_OUTPUT -m mark --mark 1337 -j RETURN",
        "iptables -w -t mangle -A RINGSIDE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "iptables -w -t mangle -A RINGSIDE_OUTPUT -d 10.1.0.0/16 -j RETURN",
        "ip6tables -w -t mangle -A RINGSIDE_OUTPUT -d fd00::/8 -j RETURN",
        "iptables -w -t raw -A RINGSIDE_NOTRACK -p tcp -j CT --notrack",
        "ip -4 rule add fwmark 0x1 lookup 133",
        "ip -4 route add local 0.0.0.0/0 dev lo table 133",
        "ip -6 route add local ::/0 dev lo table 133",
    ] {
        assert!(tproxy.lines().any(|l| l == want), "missing {want:?} in:\n{tproxy}");
    }
    assert!(!tproxy.contains("-t nat"), "{tproxy}");
    // The mark rule is the first of the OUTPUT chain.
    let first = tproxy
        .lines()
        .find(|l| l.contains("-A RINGSIDE_OUTPUT"))
        .unwrap();
    assert!(first.contains("--mark 1337 -j RETURN"), "{first}");

    let redirect = ns.ringside_iptables(&[
        "--mode",
        "redirect",
        "--dry-run",
        "--inbound-ports",
        "8080,9090",
        "--exclude-inbound-ports",
        "22",
    ]);
    for want in [
        "iptables -w -t nat -A RINGSIDE_INBOUND -p tcp -m multiport --dports 8080,9090 -j REDIRECT --to-ports 15006",
        "iptables -w -t nat -A RINGSIDE_INBOUND -p tcp -m multiport --dports 15006,15001,15000,15021,15090,22 -j RETURN",
        "iptables -w -t nat -A RINGSIDE_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        "iptables -w -t nat -A PREROUTING -j RINGSIDE_INBOUND",
    ] {
        assert!(redirect.lines().any(|l| l == want), "missing {want:?} in:\n{redirect}");
    }
    assert_eq!(ns.rules(), before, "--dry-run changed the rules");

    // A dry-run after a real run prints the removal first.
    ns.ringside_iptables(&["--mode", "redirect"]);
    let again = ns.ringside_iptables(&["--mode", "tproxy", "--dry-run"]);
    assert!(
        again
            .lines()
            .next()
            .unwrap_or("")
            .contains("-D PREROUTING -j RINGSIDE_INBOUND"),
        "{again}"
    );
    let installed = ns.rules();
    assert_ne!(installed, before);
    ns.ringside_iptables(&["--mode", "tproxy", "--clean"]);
    assert_eq!(ns.rules(), before);
}

#[test]
fn bad_arguments_are_refused() {
    for (args, want) in [
        (
            &["--mode", "tproxy", "--inbound-ports", "80,x"][..],
            "--inbound-ports",
        ),
        (
            &["--mode", "tproxy", "--exclude-cidrs", "10.0.0.0/40"][..],
            "--exclude-cidrs",
        ),
        (
            &["--mode", "tproxy", "--proxy-mark", "1"][..],
            "--proxy-mark",
        ),
        (
            &["--mode", "redirect", "--inbound-ports", "15006"][..],
            "--inbound-ports",
        ),
    ] {
        let out = Command::new(RINGSIDE)
            .arg("iptables")
            .args(args)
            .arg("--dry-run")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// IPv6: the same rules through ip6tables and `ip -6`, dual-stack `[::]` listeners; a Dubbo call
/// each way over IPv6 in `mode`.
fn scenario_v6(mode: &str) {
    const CLIENT6: &str = "fd77::1";
    const POD6: &str = "fd77::2";
    let topo = Topology::new();
    let (client, pod) = (&topo.client, &topo.pod);
    for (ns, ip) in [(client, CLIENT6), (pod, POD6)] {
        ns.sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            "veth0",
            "nodad",
        ]);
    }
    let v6 = |ip: &str, port: u16| -> SocketAddr { format!("[{ip}]:{port}").parse().unwrap() };
    let _app = pod.run(|| Provider::start_on(v6("::", APP_DUBBO_PORT), "app6"));
    let _remote = client.run(|| Provider::start_on(v6("::", REMOTE_DUBBO_PORT), "remote6"));
    let dir = TempDir::new("intercept6");
    let cfg = sidecar_config(&dir, mode == "tproxy")
        .replace("0.0.0.0:15006", "\"[::]:15006\"")
        .replace("0.0.0.0:15001", "\"[::]:15001\"");
    let rs = pod.run(|| Ringside::start(&cfg, addr("127.0.0.1", 15000), &[]));
    pod.ringside_iptables(&["--mode", mode, "--proxy-uid", "0"]);

    let got = client.run(|| dubbo_echo(v6(POD6, APP_DUBBO_PORT), "in6"));
    assert_eq!(got, "app6|echo|in6");
    let got = pod.run(|| dubbo_echo(v6(CLIENT6, REMOTE_DUBBO_PORT), "out6"));
    assert_eq!(got, "remote6|echo|out6");
    let stats = wait_stats(pod, &rs, "both IPv6 calls intercepted", |s| {
        stat(s, "listener.inbound.downstream_cx_total") == 1
            && stat(s, "listener.outbound.downstream_cx_total") == 1
    });
    assert_eq!(
        stat(&stats, "cluster.outbound_passthrough.upstream_cx_total"),
        1
    );
    if mode == "tproxy" {
        assert!(pod.conntrack_tcp().is_empty());
    }
    pod.ringside_iptables(&["--mode", mode, "--clean"]);
}

#[test]
fn tproxy_intercepts_ipv6() {
    require_root!();
    scenario_v6("tproxy");
}

#[test]
fn redirect_intercepts_ipv6() {
    require_root!();
    scenario_v6("redirect");
}

/// Outbound routing by original destination and protocol (tproxy, proxy as root with its
/// mark): the outbound listener hands Dubbo connections to 10.77.0.1:20881 to the virtual
/// listener `out_20881`, whose Dubbo route sends method `route` to another provider (port
/// 20882) than the one the app dialled; gRPC connections to :50052 go to the virtual Triple
/// listener `out_50052`, whose cluster is another server (port 50053). A Dubbo call to a port
/// no virtual listener has (20883) still passes through to its original destination. The
/// virtual Dubbo listener's `connections_per_shard_max` closes a connection beyond it.
#[test]
fn tproxy_routes_outbound_dubbo_and_grpc_by_destination_and_protocol() {
    require_root!();
    let topo = Topology::new();
    let (client, pod) = (&topo.client, &topo.pod);
    let (canary_dubbo, other_dubbo, canary_grpc) = (20882, 20883, 50053);
    let remote = client.run(|| Provider::start_on(addr("0.0.0.0", REMOTE_DUBBO_PORT), "remote"));
    let canary = client.run(|| Provider::start_on(addr("0.0.0.0", canary_dubbo), "canary"));
    let other = client.run(|| Provider::start_on(addr("0.0.0.0", other_dubbo), "other"));
    let _remote_grpc =
        client.run(|| GrpcServer::start(REMOTE_GRPC_PORT, "remote-grpc", &["--host", "0.0.0.0"]));
    let _canary_grpc =
        client.run(|| GrpcServer::start(canary_grpc, "canary-grpc", &["--host", "0.0.0.0"]));

    let dir = TempDir::new("intercept-l7");
    let cfg = format!(
        "admin:\n  address: 127.0.0.1:15000\n  control_socket: {ctl}\n\
         runtime:\n  shards: 1\n  socket_mark: 1337\n\
         listeners:\n\
         \x20 - name: outbound\n    address: 0.0.0.0:15001\n    protocol: tcp\n    transparent: true\n    original_destination: true\n    cluster: outbound_passthrough\n    virtual_listeners: [out_{REMOTE_DUBBO_PORT}, out_{REMOTE_GRPC_PORT}]\n\
         \x20 - name: out_{REMOTE_DUBBO_PORT}\n    address: 0.0.0.0:{REMOTE_DUBBO_PORT}\n    bind: false\n    protocol: dubbo\n    cluster: remote\n    connections_per_shard_max: 2\n    dubbo:\n      routes:\n\
         \x20       - match: {{method: {{exact: route}}}}\n          route: {{cluster: canary}}\n\
         \x20 - name: out_{REMOTE_GRPC_PORT}\n    address: 0.0.0.0:{REMOTE_GRPC_PORT}\n    bind: false\n    protocol: triple\n    cluster: canary_grpc\n\
         clusters:\n\
         \x20 - name: outbound_passthrough\n    type: original_destination\n\
         \x20 - name: remote\n    endpoints: [\"{CLIENT_IP}:{REMOTE_DUBBO_PORT}\"]\n\
         \x20 - name: canary\n    endpoints: [\"{CLIENT_IP}:{canary_dubbo}\"]\n\
         \x20 - name: canary_grpc\n    endpoints: [\"{CLIENT_IP}:{canary_grpc}\"]\n",
        ctl = dir.0.join("ctl.sock").display()
    );
    let rs = pod.run(|| Ringside::start(&cfg, addr("127.0.0.1", 15000), &[]));
    pod.ringside_iptables(&[
        "--mode",
        "tproxy",
        "--proxy-uid",
        "0",
        "--proxy-mark",
        "1337",
    ]);

    // Dubbo to :20881: through the Dubbo filter; method `route` goes to the canary provider.
    let routed = pod.run(|| dubbo_call(addr(CLIENT_IP, REMOTE_DUBBO_PORT), "route", "x"));
    assert_eq!(routed, "canary|route|x", "routed by the Dubbo route");
    let plain = pod.run(|| dubbo_call(addr(CLIENT_IP, REMOTE_DUBBO_PORT), "echo", "x"));
    assert_eq!(
        plain, "remote|echo|x",
        "the virtual listener's default cluster"
    );
    // gRPC to :50052: through the Triple filter to the canary server.
    let grpc = pod.run(|| grpc_unary(addr(CLIENT_IP, REMOTE_GRPC_PORT)));
    assert_eq!(grpc, "canary-grpc", "routed by the virtual Triple listener");
    // Dubbo to :20883 (no virtual listener): passed through to the original destination.
    let passed = pod.run(|| dubbo_call(addr(CLIENT_IP, other_dubbo), "route", "x"));
    assert_eq!(passed, "other|route|x");

    let stats = wait_stats(pod, &rs, "all four connections counted", |s| {
        stat(s, "listener.outbound.downstream_cx_total") >= 4
    });
    // Three connections handed off (two Dubbo, one gRPC), only the call to :20883 passed
    // through; one Dubbo request on each of the virtual listener's clusters.
    for (name, want) in [
        ("listener.outbound.downstream_cx_handed_off", 3),
        ("listener.out_20881.downstream_cx_total", 2),
        ("listener.out_50052.downstream_cx_total", 1),
        ("cluster.outbound_passthrough.upstream_cx_total", 1),
        ("cluster.canary.upstream_rq_total", 1),
        ("cluster.remote.upstream_rq_total", 1),
        ("listener.outbound.downstream_protocol_dubbo", 3),
        ("listener.outbound.downstream_protocol_http2", 1),
    ] {
        assert_eq!(stat(&stats, name), want, "{name}: {stats}");
    }
    assert!(canary.accepted.load(Ordering::SeqCst) >= 1);
    assert!(other.accepted.load(Ordering::SeqCst) >= 1);
    assert!(remote.accepted.load(Ordering::SeqCst) >= 1);

    // The virtual listener's connections_per_shard_max (2, one shard): two connections held
    // open, a third handed to it is closed at once and counted as its overflow.
    let to = addr(CLIENT_IP, REMOTE_DUBBO_PORT);
    let held: Vec<Consumer> = (0..2)
        .map(|i| {
            pod.run(|| {
                let mut c = Consumer::connect(to);
                let args = [Arg::Str("held")];
                let a = c.call(RequestBuilder::new(SVC, "echo").args(&args));
                assert_eq!(a.text, "remote|echo|held", "held connection {i}");
                c
            })
        })
        .collect();
    let refused = pod.run(|| {
        let mut c = Consumer::connect(to);
        let _ = c.try_send(RequestBuilder::new(SVC, "echo"));
        c.recv()
    });
    assert!(refused.is_none(), "over the limit: closed, {refused:?}");
    let stats = wait_stats(pod, &rs, "the overflow counted", |s| {
        stat(s, "listener.out_20881.downstream_cx_overflow") == 1
    });
    assert_eq!(stat(&stats, "listener.out_20881.downstream_cx_active"), 2);
    drop(held);
    pod.ringside_iptables(&["--mode", "tproxy", "--clean"]);
}
