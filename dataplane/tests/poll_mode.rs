//! `--poll-mode sleep|spin|hybrid` through the real binary: Dubbo traffic, request timeouts
//! (timers) and SIGTERM drain (a wake-up from another thread) in the spinning modes, the CPU an
//! idle process burns in each mode, and the refusal to spin without a CPU per shard.
//!
//! The tests here run one at a time (`SERIAL`): every one-shard ringside pins its shard to the
//! first CPU of the mask, and two spinning ones on one CPU would skew the CPU measurements.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use codec::dubbo::encode::{Arg, RequestBuilder};
use codec::dubbo::Status;
use common::dubbo::*;
use common::*;

const SVC: &str = "com.ringside.test.EchoService";

#[allow(clippy::disallowed_types)]
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One shard in `mode`, a Dubbo listener routing to `provider` with a 200 ms request timeout.
fn start(mode: &str, provider: std::net::SocketAddr, extra: &[&str]) -> (Ringside, Consumer) {
    let (admin, listen) = (local(free_port()), local(free_port()));
    let routes = "    dubbo:\n      routes:\n        - route: {cluster: a, timeout_ms: 200}\n";
    let mut args = vec!["--shards", "1", "--poll-mode", mode];
    args.extend_from_slice(extra);
    let rs = Ringside::start(
        &dubbo_config(admin, listen, &[("a", &[provider])], routes),
        admin,
        &args,
    );
    (rs, Consumer::connect(listen))
}

fn server_info(rs: &Ringside) -> serde_json::Value {
    let (status, body) = rs.get("/server_info");
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// Nanoseconds the process's threads spent on a CPU and waiting on a run queue, summed over
/// /proc/PID/task/*/schedstat (its first two fields).
fn sched_ns(pid: u32) -> (u64, u64) {
    let (mut run, mut wait) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        // A thread may end between read_dir and the read.
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("schedstat")) else {
            continue;
        };
        let f: Vec<u64> = stat
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        run += f[0];
        wait += f[1];
    }
    (run, wait)
}

/// What the process did over `window` while nothing was sent to it, each as a share of the
/// window summed over its threads (so one busy thread reads ~1.0).
///
/// `cpu` is time on a CPU: what idling costs. `runnable` adds time spent waiting on a run queue:
/// a thread that polls is runnable all the time, whether the scheduler gives it a whole core or,
/// on a loaded machine, a tenth of one, so "it spins" is judged on `runnable`. (Judged on CPU
/// time, these tests failed whenever other work shared the machine: a spinning shard measured
/// 0.2 of a core at load 15 on 2 CPUs.) A thread that wakes often and is then queued behind a
/// spinner on its pinned core is runnable a lot too, so "it stopped spinning" is judged on `cpu`.
struct Idle {
    cpu: f64,
    runnable: f64,
}

fn idle(rs: &Ringside, window: Duration) -> Idle {
    let pid = rs.child.id();
    let (t0, (run0, wait0)) = (Instant::now(), sched_ns(pid));
    std::thread::sleep(window);
    let (t1, (run1, wait1)) = (Instant::now(), sched_ns(pid));
    let secs = (t1 - t0).as_secs_f64() * 1e9;
    Idle {
        cpu: (run1 - run0) as f64 / secs,
        runnable: ((run1 - run0) + (wait1 - wait0)) as f64 / secs,
    }
}

#[test]
fn spin_and_hybrid_answer_calls_and_fire_request_timeouts() {
    let _serial = serial();
    let a = Provider::start("A");
    for (mode, io, backend) in [
        // A polling shard gets epoll unless io_uring is asked for (decision 0009, Change 5).
        ("spin", "auto", "epoll"),
        ("spin", "uring", "io_uring"),
        ("spin", "epoll", "epoll"),
        ("hybrid", "auto", "epoll"),
        ("hybrid", "uring", "io_uring"),
        ("hybrid", "epoll", "epoll"),
    ] {
        let (rs, mut c) = start(mode, a.addr, &["--io", io]);
        let info = server_info(&rs);
        assert_eq!(info["shards"][0]["poll_mode"], mode, "{info}");
        assert_eq!(
            info["shards"][0]["io_backend"], backend,
            "{mode}/{io}: {info}"
        );
        for i in 0..200 {
            let arg = [Arg::Int(i)];
            let ans = c.call(RequestBuilder::new(SVC, "echo").args(&arg));
            assert_eq!(ans.status, Status::Ok, "{mode}/{io}: {ans:?}");
            assert_eq!(ans.text, format!("A|echo|{i}"));
        }
        // A request the provider never answers: only the shard's timer can end it.
        let t = Instant::now();
        let ans = c.call(RequestBuilder::new(SVC, "hold"));
        let took = t.elapsed();
        assert_eq!(ans.status, Status::ServerTimeout, "{mode}/{io}: {ans:?}");
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(1500),
            "{mode}/{io}: timeout after {took:?}"
        );
        assert_eq!(c.call(RequestBuilder::new(SVC, "after")).text, "A|after|");
    }
}

#[test]
fn sigterm_drains_a_spinning_shard() {
    let _serial = serial();
    let a = Provider::start("A");
    let (mut rs, mut c) = start("spin", a.addr, &[]);
    assert_eq!(c.call(RequestBuilder::new(SVC, "echo")).status, Status::Ok);
    let t = Instant::now();
    rs.signal(libc::SIGTERM);
    // The drain reaches the shard only as a wake-up from the control thread.
    let deadline = Instant::now() + Duration::from_secs(3);
    while rs.get("/ready") != (503, "DRAINING\n".into()) {
        assert!(Instant::now() < deadline, "not draining");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Once its last connection is gone the shard ends (the drain timeout is 5 s).
    drop(c);
    let (status, log) = rs.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit 0 after drain: {status} {log}");
    assert!(log.contains("reason=\"SIGTERM\""), "{log}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        t.elapsed()
    );
}

#[test]
fn idle_cpu_is_near_zero_when_sleeping_or_hybrid_and_a_core_when_spinning() {
    let _serial = serial();
    let a = Provider::start("A");
    let mut seen = Vec::new();
    for mode in ["sleep", "hybrid", "spin"] {
        let (rs, mut c) = start(mode, a.addr, &[]);
        assert_eq!(c.call(RequestBuilder::new(SVC, "echo")).status, Status::Ok);
        // Let start-up and the call's aftermath settle (the hybrid budget is 50 µs).
        std::thread::sleep(Duration::from_millis(200));
        let Idle { cpu, runnable } = idle(&rs, Duration::from_secs(1));
        let info = server_info(&rs);
        let shard = &info["shards"][0];
        let fraction = shard["poll_idle_spin_fraction"].as_f64().unwrap();
        seen.push(format!(
            "{mode}: cpu {cpu:.3}, runnable {runnable:.3}, idle spin fraction {fraction:.3}"
        ));
        match mode {
            "spin" => {
                assert!(runnable > 0.5, "spin uses its core: {seen:?}");
                assert!(fraction > 0.5, "spin is mostly idle spinning: {seen:?}");
                assert_eq!(shard["poll_sleeps"], 0, "{info}");
            }
            _ => {
                assert!(cpu < 0.1, "{mode} costs ~nothing when idle: {seen:?}");
                assert!(fraction < 0.05, "{seen:?}");
            }
        }
        if mode == "spin" {
            // Published by the shard every second: the Prometheus counters agree.
            std::thread::sleep(Duration::from_millis(1100));
            let (_, prom) = rs.get("/stats/prometheus");
            let value = |name: &str| -> u64 {
                prom.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} missing: {prom}"))
            };
            let idle = value("ringside_shard_poll_idle_spin_us_total{shard=\"0\"}");
            let looped = value("ringside_shard_poll_loop_us_total{shard=\"0\"}");
            assert!(
                looped >= 1_000_000 && idle * 2 > looped,
                "{idle} / {looped}"
            );
        }
    }
    eprintln!("{seen:?}");
}

/// Restricts the child's affinity mask to CPUs 0..n.
fn on_cpus(cmd: &mut Command, n: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for cpu in 0..n {
                libc::CPU_SET(cpu, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `ringside run` expecting it to refuse to start; returns its stderr.
fn refused(config: &str, args: &[&str], cpus: Option<usize>) -> String {
    let dir = TempDir::new("poll");
    let path = dir.write("ringside.yaml", config);
    let mut cmd = Command::new(RINGSIDE);
    cmd.arg("run").arg("--config").arg(&path).args(args);
    if let Some(n) = cpus {
        on_cpus(&mut cmd, n);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--poll-mode spin needs each shard pinned"),
        "{err}"
    );
    assert!(err.contains("Fix:"), "{err}");
    err
}

#[test]
fn spin_is_refused_without_a_pinned_cpu_per_shard() {
    let _serial = serial();
    let echo = echo_server();
    let config = |admin| tcp_config(admin, local(free_port()), &[echo]);

    // Two shards on a one-CPU affinity mask.
    let err = refused(
        &config(local(free_port())),
        &["--shards", "2", "--poll-mode", "spin"],
        Some(1),
    );
    assert!(
        err.contains("2 shards were asked for and the process may run on 1 CPU(s)"),
        "{err}"
    );

    // Pinning switched off in the config, spin asked for there too.
    let cfg = config(local(free_port())).replace(
        "drain_timeout_ms",
        "runtime:\n  pin: false\n  poll_mode: spin\ndrain_timeout_ms",
    );
    let err = refused(&cfg, &["--shards", "1"], None);
    assert!(err.contains("pinning is off"), "{err}");

    // Hybrid is allowed there (it only warns): an idle hybrid shard costs nothing.
    let admin = local(free_port());
    let rs = Ringside::start_with(
        &config(admin),
        admin,
        &["--shards", "2", "--poll-mode", "hybrid"],
        |cmd| on_cpus(cmd, 1),
    );
    let info = server_info(&rs);
    assert_eq!(info["shards"][1]["poll_mode"], "hybrid", "{info}");
}

#[test]
fn a_spinning_predecessor_sleeps_while_a_hot_upgrade_drains_it() {
    use std::io::{Read, Write};
    let _serial = serial();
    let echo = echo_server();
    let (admin, listen) = (local(free_port()), local(free_port()));
    let spin = ["--shards", "1", "--poll-mode", "spin"];
    let mut old = Ringside::start(&tcp_config(admin, listen, &[echo]), admin, &spin);
    // A connection that keeps the predecessor draining (its drain timeout is 10 s).
    let mut s = std::net::TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echoed = |s: &mut std::net::TcpStream, b: u8| {
        s.write_all(&[b]).unwrap();
        let mut back = [0u8];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back[0], b);
    };
    echoed(&mut s, 1);
    let before = idle(&old, Duration::from_millis(500));
    // Since hand-off protocol 3 an idle TCP connection moves to the successor, and the
    // predecessor, with nothing left, exits at once. A protocol 2 successor leaves TCP
    // connections with it, which is the draining predecessor this test needs.
    let new = old.upgrade_with(&spin, |c| {
        c.env("RINGSIDE_HANDOFF_PROTOCOL_MAX", "2");
    });
    std::thread::sleep(Duration::from_millis(200));
    // Both measured over the same window: a predecessor still spinning on the successor's
    // pinned core would get about as much of it as the successor does.
    let (draining, successor) = std::thread::scope(|s| {
        let d = s.spawn(|| idle(&old, Duration::from_millis(500)));
        let n = idle(&new, Duration::from_millis(500));
        (d.join().unwrap(), n)
    });
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the predecessor is still draining"
    );
    let seen = format!(
        "runnable: predecessor {:.2} -> {:.2}, successor {:.2}; cpu: predecessor {:.3} -> {:.3}, successor {:.3}",
        before.runnable, draining.runnable, successor.runnable, before.cpu, draining.cpu, successor.cpu
    );
    assert!(before.runnable > 0.5, "{seen}");
    assert!(successor.runnable > 0.5, "{seen}");
    assert!(
        draining.cpu < 0.1 && draining.cpu < 0.25 * successor.cpu,
        "a draining predecessor stops spinning: {seen}"
    );
    // The connection it drains still works.
    echoed(&mut s, 2);
    eprintln!("{seen}");
}
