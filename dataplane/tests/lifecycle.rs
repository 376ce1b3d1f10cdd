//! Start-up, config errors, drain and exit through the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn validate_names_file_line_and_field() {
    let dir = TempDir::new("validate");
    let bad = dir.write(
        "bad.yaml",
        "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    protocol: tcp\n    cluster: missing\n",
    );
    let out = Command::new(RINGSIDE)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:5: field `listeners[0].cluster`: unknown cluster \"missing\"",
            bad.display()
        )),
        "{err}"
    );

    // `run` refuses the same file the same way, before binding anything.
    let (code, err) = run_to_exit(&bad);
    assert_eq!(code, Some(2));
    assert!(err.contains("listeners[0].cluster"));

    let good = dir.write(
        "good.yaml",
        "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    protocol: tcp\n    cluster: c\nclusters:\n  - name: c\n    endpoints: [\"127.0.0.1:2\"]\n",
    );
    let out = Command::new(RINGSIDE)
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `validate` refuses what `run` would refuse at start beyond the config's own checks: an
/// access-log format that does not compile and a certificate file that cannot be read, without
/// creating the log file (no side effects).
#[test]
fn validate_checks_access_log_formats_and_certificate_files() {
    let dir = TempDir::new("validate-files");
    let log = dir.0.join("calls.log");
    let bad_format = dir.write(
        "bad-format.yaml",
        &format!(
            "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    protocol: tcp\n    \
             cluster: c\n    access_log:\n      - path: {}\n        format: \"%NOPE%\\n\"\n\
             clusters:\n  - name: c\n    endpoints: [\"127.0.0.1:2\"]\n",
            log.display()
        ),
    );
    let (code, err) = validate(&bad_format);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listeners[0] (a): access log"), "{err}");
    assert!(err.contains("NOPE"), "{err}");
    assert!(!log.exists(), "validate created the access log file");

    let missing = dir.0.join("missing.pem");
    let bad_cert = dir.write(
        "bad-cert.yaml",
        &format!(
            "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    protocol: dubbo\n    \
             cluster: c\n    tls:\n      cert_chain: {0}\n      private_key: {0}\n      \
             require_client_certificate: false\n\
             clusters:\n  - name: c\n    endpoints: [\"127.0.0.1:2\"]\n",
            missing.display()
        ),
    );
    let (code, err) = validate(&bad_cert);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listeners[0].tls"), "{err}");
    assert!(err.contains("missing.pem"), "{err}");
    // `run` refuses both at start (exit 1, "cannot start"), naming the same problem.
    for (cfg, what) in [(&bad_format, "NOPE"), (&bad_cert, "missing.pem")] {
        let (code, err) = run_to_exit(cfg);
        assert_eq!(code, Some(1), "{}: {err}", cfg.display());
        assert!(err.contains(what), "{err}");
    }
}

/// `ringside validate --config cfg`: its exit code and stderr.
fn validate(cfg: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(RINGSIDE)
        .args(["validate", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn examples_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let out = Command::new(RINGSIDE)
                .args(["validate", "--config"])
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n > 0, "examples/ has configs");
}

#[test]
fn taken_port_fails_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo = echo_server();
    let admin = local(free_port());
    let dir = TempDir::new("taken");
    // The admin port is taken by someone else.
    let cfg = dir.write(
        "c.yaml",
        &tcp_config(taken.local_addr().unwrap(), local(free_port()), &[echo]),
    );
    let (code, err) = run_to_exit(&cfg);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot listen on"), "{err}");
    let _ = admin;
}

/// SO_REUSEPORT lets any process of the same user join a listening port: a second ringside
/// started by mistake on a running one's listener port must refuse to start, not silently take
/// half of its connections.
#[test]
fn a_second_process_on_a_listener_port_refuses_to_start() {
    let echo = echo_server();
    let listen = local(free_port());
    let first_admin = local(free_port());
    let first = Ringside::start(
        &tcp_config(first_admin, listen, &[echo]),
        first_admin,
        &["--shards", "2"],
    );
    let dir = TempDir::new("second");
    let cfg = dir.write("c.yaml", &tcp_config(local(free_port()), listen, &[echo]));
    let (code, err) = run_to_exit(&cfg);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {listen}")) && err.contains("already in use"),
        "{err}"
    );
    // The first one still serves every connection.
    for _ in 0..20 {
        echo_round_trip(listen);
    }
    drop(first);
}

/// A ringside killed outright (a crash, SIGKILL) can be restarted at once on the same ports: its
/// io_uring listeners are released a few ms after the process is gone, which the start-up
/// check for a port someone else listens on waits out.
#[test]
fn a_killed_process_can_be_restarted_at_once_on_its_ports() {
    let echo = echo_server();
    let (admin, listen) = (local(free_port()), local(free_port()));
    let config = tcp_config(admin, listen, &[echo]);
    for _ in 0..5 {
        let mut rs = Ringside::start(&config, admin, &["--shards", "2", "--io", "uring"]);
        echo_round_trip(listen);
        rs.child.kill().unwrap();
        rs.child.wait().unwrap();
    }
}

#[test]
fn sigterm_drains_without_cutting_a_transfer_in_flight() {
    let echo = echo_server();
    let (admin, listen) = (local(free_port()), local(free_port()));
    let mut rs = Ringside::start(
        &tcp_config(admin, listen, &[echo]),
        admin,
        &["--shards", "2"],
    );

    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let first = vec![5u8; 300_000];
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        back
    });
    s.write_all(&first).unwrap();

    rs.signal(libc::SIGTERM);
    // Draining: not ready, and no longer accepting.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match http(admin, "GET", "/ready") {
            Ok((503, body)) => {
                assert_eq!(body, "DRAINING\n");
                break;
            }
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => panic!("expected 503 while draining, got {other:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        TcpStream::connect(listen).is_err(),
        "a draining ringside accepts no new connections"
    );

    // The transfer in flight continues and completes.
    let second = vec![6u8; 300_000];
    s.write_all(&second).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let back = reader.join().unwrap();
    assert_eq!(back.len(), first.len() + second.len());
    assert!(back[..first.len()].iter().all(|&b| b == 5));
    assert!(back[first.len()..].iter().all(|&b| b == 6));
    drop(s);

    let (status, log) = rs.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit 0 after drain: {status} {log}");
    assert!(log.contains("reason=\"SIGTERM\""), "{log}");
}

#[test]
fn post_quitquitquit_exits_cleanly() {
    let echo = echo_server();
    let (admin, listen) = (local(free_port()), local(free_port()));
    let mut rs = Ringside::start(
        &tcp_config(admin, listen, &[echo]),
        admin,
        &["--shards", "1"],
    );
    assert_eq!(http(admin, "POST", "/quitquitquit").unwrap().0, 200);
    let (status, _) = rs.wait_exit(Duration::from_secs(10));
    assert!(status.success());
}

/// Every duration field has an upper bound; `validate` names each field out of range and the
/// allowed range. (Issue 20: `idle_timeout_ms: 18446744073709551615` passed validation and
/// the first connection on the listener killed its shard in the timer's `expect`.)
#[test]
fn validate_bounds_every_duration() {
    let dir = TempDir::new("durations");
    let max = u64::MAX;
    let bad = dir.write(
        "bad.yaml",
        &format!(
            "drain_timeout_ms: {max}\n\
             xds:\n  server: 127.0.0.1:1\n  node_id: n\n  initial_fetch_timeout_ms: {max}\n  retry_max_ms: {max}\n\
             registry:\n  addresses: [\"127.0.0.1:2\"]\n  initial_fetch_timeout_ms: {max}\n  retry_max_ms: {max}\n\
             \x20 services:\n    - interface: a.B\n      listener: a\n      local_port: 3\n      health_interval_ms: {max}\n\
             listeners:\n  - name: a\n    address: 127.0.0.1:4\n    protocol: tcp\n    cluster: c\n    idle_timeout_ms: {max}\n\
             clusters:\n  - name: c\n    endpoints: [\"127.0.0.1:5\"]\n    heartbeat_interval_ms: {max}\n"
        ),
    );
    let out = Command::new(RINGSIDE)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for (field, range) in [
        ("drain_timeout_ms", "0..=600000 ms"),
        ("xds.initial_fetch_timeout_ms", "0..=600000 ms"),
        ("xds.retry_max_ms", "1..=600000 ms"),
        ("registry.initial_fetch_timeout_ms", "0..=600000 ms"),
        ("registry.retry_max_ms", "1..=600000 ms"),
        (
            "registry.services[0].health_interval_ms",
            "100..=3600000 ms",
        ),
        ("listeners[0].idle_timeout_ms", "1..=604800000 ms"),
        ("clusters[0].heartbeat_interval_ms", "100..=3600000 ms"),
    ] {
        let want = format!("field `{field}`: {max} ms is out of range {range}");
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
}
