//! The admin, health and Prometheus listeners against clients that hold connections open:
//! probes are answered at once whatever other clients do (issue 20: one byte-dripping client
//! used to stall every kubelet probe).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{free_port, http, local, Ringside};

/// Kubelet's default probe timeout (`timeoutSeconds: 1`): a probe slower than this fails.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// ringside's whole-request deadline on the admin listeners (admin::REQUEST_DEADLINE).
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// admin::CONNECTIONS_MAX.
const CONNECTIONS_MAX: usize = 64;

struct Admin {
    rs: Ringside,
    health: SocketAddr,
    prometheus: SocketAddr,
}

fn start() -> Admin {
    let admin = local(free_port());
    let health = local(free_port());
    let prometheus = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\n  health_address: {health}\n  prometheus_address: {prometheus}\n"
    );
    let rs = Ringside::start(&config, admin, &["--shards", "1"]);
    Admin {
        rs,
        health,
        prometheus,
    }
}

/// One GET; panics unless it is answered 200 within [`PROBE_TIMEOUT`]; returns how long it took.
fn probe(addr: SocketAddr, path: &str) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    let read = s.read_to_string(&mut resp);
    let took = t.elapsed();
    assert!(
        read.is_ok() && resp.starts_with("HTTP/1.1 200"),
        "{path} on {addr}: no answer within {PROBE_TIMEOUT:?} ({read:?}, {resp:?})"
    );
    assert!(took < PROBE_TIMEOUT, "{path} on {addr} took {took:?}");
    took
}

/// A client that opened a request and sends one more byte of it every 4 s.
fn dripper(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"G").unwrap();
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for b in b"ET /healthz/ready HTTP/1.1\r\n" {
            std::thread::sleep(Duration::from_secs(4));
            if w.write_all(&[*b]).is_err() {
                return;
            }
        }
    });
    s
}

fn stat(rs: &Ringside, name: &str) -> u64 {
    let v = rs
        .stat_value(name)
        .unwrap_or_else(|| panic!("no stat {name} in /stats"));
    u64::try_from(v).unwrap_or_else(|_| panic!("stat {name} is negative: {v}"))
}

#[test]
fn probes_are_answered_while_a_client_drips_its_request() {
    let a = start();
    // One dripping client on each listener, connected before the probes.
    let _drips: Vec<TcpStream> = [a.rs.admin, a.health, a.prometheus]
        .into_iter()
        .map(dripper)
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // 12 probes over 6 s: the drippers send bytes meanwhile.
    let mut slowest = Duration::ZERO;
    for _ in 0..12 {
        slowest = slowest.max(probe(a.health, "/healthz/ready"));
        slowest = slowest.max(probe(a.prometheus, "/stats/prometheus"));
        slowest = slowest.max(probe(a.rs.admin, "/ready"));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("36 probes next to 3 dripping clients: slowest {slowest:?}");
}

#[test]
fn slow_clients_are_cut_at_the_deadline_and_cannot_exhaust_the_listener() {
    let a = start();
    let fds_before = a.rs.fd_count();
    // A client that sends half a request and then nothing is closed at the deadline.
    let mut idle = TcpStream::connect(a.health).unwrap();
    idle.write_all(b"GET /healthz/ready HTTP/1.1\r\n").unwrap();
    let t = Instant::now();
    // Many more open connections than the listener keeps: the oldest are closed to make room,
    // so the process holds a bounded number of them and probes still get in.
    let many: Vec<TcpStream> = (0..4 * CONNECTIONS_MAX)
        .map(|_| {
            let mut s = TcpStream::connect(a.health).unwrap();
            s.write_all(b"GET /heal").unwrap();
            s
        })
        .collect();
    for _ in 0..12 {
        probe(a.health, "/healthz/ready");
    }
    let fds = a.rs.fd_count();
    assert!(
        fds <= fds_before + CONNECTIONS_MAX + 4,
        "{fds} fds open (before: {fds_before}): the listener holds every connection"
    );
    let evicted = stat(&a.rs, "admin.health.downstream_cx_evicted");
    assert!(
        evicted >= (4 * CONNECTIONS_MAX + 1 - CONNECTIONS_MAX) as u64,
        "evicted {evicted}"
    );
    drop(many);
    // A fresh client that stalls is cut at the deadline.
    let mut stalled = TcpStream::connect(a.prometheus).unwrap();
    stalled.write_all(b"GET /stats/prom").unwrap();
    let t2 = Instant::now();
    stalled
        .set_read_timeout(Some(REQUEST_DEADLINE * 2))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = stalled.read(&mut buf);
    let took = t2.elapsed();
    assert!(matches!(n, Ok(0)), "stalled client: {n:?} after {took:?}");
    assert!(
        took >= REQUEST_DEADLINE - Duration::from_millis(200),
        "cut after {took:?}, before the deadline"
    );
    assert_eq!(stat(&a.rs, "admin.prometheus.downstream_rq_timeout"), 1);
    // The first client, the oldest, was evicted long before its deadline.
    idle.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(t.elapsed() < REQUEST_DEADLINE * 3);
    match idle.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the oldest slow client is still open: {other:?}"),
    }
    assert_eq!(http(a.health, "GET", "/healthz/ready").unwrap().0, 200);
}
