//! The L4 proxy through the real binary: bytes on every shard, half-close, backpressure,
//! upstream failures, stats and admin.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;

fn roundtrip(addr: std::net::SocketAddr, seed: u8, len: usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || {
            w.write_all(&data).unwrap();
            // Half-close: we are done sending but still want every byte back.
            w.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len(), "all bytes come back, then EOF");
    assert!(back == data, "bytes come back unchanged");
}

#[test]
fn bytes_flow_on_every_shard_with_half_close() {
    let echo = echo_server();
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = Ringside::start(
        &tcp_config(admin, listen, &[echo]),
        admin,
        &["--shards", "2"],
    );

    let handles: Vec<_> = (0..64u8)
        .map(|i| std::thread::spawn(move || roundtrip(listen, i, 100_000 + i as usize * 997)))
        .collect();
    for h in handles {
        h.join().unwrap();
    }

    let (code, info) = rs.get("/server_info");
    assert_eq!(code, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["shard_count"], 2);
    let shards = info["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for s in shards {
        assert!(
            s["downstream_cx_total"].as_u64().unwrap() > 0,
            "every shard accepted connections: {info}"
        );
        assert!(s["io_backend"] == "io_uring" || s["io_backend"] == "epoll");
    }
    let (_, stats) = rs.get("/stats");
    assert!(
        stats.contains("listener.l4.downstream_cx_total: 64"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.up.upstream_cx_total: 64"),
        "{stats}"
    );
}

#[test]
fn a_dead_endpoint_is_skipped_and_counted() {
    let echo = echo_server();
    let dead = local(free_port());
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg = tcp_config(admin, listen, &[dead, echo]);
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    for i in 0..6 {
        roundtrip(listen, i, 1000);
    }
    let (_, stats) = rs.get("/stats");
    assert!(stats.contains("cluster.up.upstream_cx_total: 6"), "{stats}");
    assert!(
        !stats.contains("cluster.up.upstream_cx_connect_fail: 0"),
        "{stats}"
    );
}

#[test]
fn no_upstream_closes_the_downstream() {
    let dead = local(free_port());
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = Ringside::start(
        &tcp_config(admin, listen, &[dead]),
        admin,
        &["--shards", "1"],
    );
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "connection closed, not left hanging");
    let (_, stats) = rs.get("/stats");
    assert!(
        stats.contains("cluster.up.upstream_cx_connect_fail: 1"),
        "{stats}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_slow_reader_cannot_grow_proxy_memory() {
    // An upstream that accepts and never reads.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let _keep = std::thread::spawn(move || {
        let conns: Vec<_> = sink.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(conns);
    });
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = Ringside::start(
        &tcp_config(admin, listen, &[sink_addr]),
        admin,
        &["--shards", "1"],
    );
    let before = rss_kib(rs.child.id());
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = vec![1u8; 1 << 20];
    let mut sent = 0usize;
    // Write until the proxy stops taking bytes (the kernel buffers on both hops fill up).
    while sent < (256 << 20) {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < (256 << 20),
        "writes must block once buffers are full (sent {sent})"
    );
    let after = rss_kib(rs.child.id());
    assert!(
        after < before + 16 * 1024,
        "proxy RSS grew from {before} KiB to {after} KiB after {sent} bytes"
    );
}

#[test]
fn admin_endpoints_answer() {
    let echo = echo_server();
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = Ringside::start(
        &tcp_config(admin, listen, &[echo]),
        admin,
        &["--shards", "1"],
    );
    assert_eq!(rs.get("/ready"), (200, "LIVE\n".to_string()));
    let (code, dump) = rs.get("/config_dump");
    assert_eq!(code, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["config"]["listeners"][0]["name"], "l4");
    assert_eq!(dump["config"]["clusters"][0]["lb"], "round_robin");
    let (code, json) = rs.get("/stats?format=json");
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(json["stats"].as_array().unwrap().len() >= 10);
    let (code, prom) = rs.get("/stats/prometheus");
    assert_eq!(code, 200);
    assert!(prom.contains("# TYPE ringside_listener_downstream_cx_total counter"));
    assert!(prom.contains("ringside_cluster_upstream_cx_total{cluster=\"up\"} 0"));
    assert_eq!(rs.get("/nope").0, 404);
    assert_eq!(rs.get("/drain").0, 405, "drain needs POST");
}

/// Both directions of one relayed connection backpressured at once, on both backends: the
/// upstream holds its echo for 1.5 s while the client keeps sending 32 MiB, so ringside's write
/// to the upstream meets a full socket while the answer side fills too. On epoll a write's
/// EAGAIN once dropped the read readiness of the same socket (a vendored monoio patch cleared
/// READABLE for either direction): the relay then slept forever with data waiting, in 2 of 3
/// runs. Every byte must come back, in order.
#[test]
fn a_relay_survives_both_directions_backpressured() {
    for io in ["epoll", "uring"] {
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up_addr = up.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = up.accept().unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = c.shutdown(Shutdown::Write);
        });
        let (admin, listen) = (local(free_port()), local(free_port()));
        let rs = Ringside::start(
            &tcp_config(admin, listen, &[up_addr]),
            admin,
            &["--shards", "1", "--io", io],
        );
        let c = TcpStream::connect(listen).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut w = c.try_clone().unwrap();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(&sent).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::with_capacity(data.len());
        let mut r = c;
        let read = r.read_to_end(&mut got);
        assert!(
            read.is_ok() && got == data,
            "{io}: {} of {} bytes came back ({read:?}): the relay stalled",
            got.len(),
            data.len()
        );
        writer.join().unwrap();
        server.join().unwrap();
        drop(rs);
    }
}

/// `lb: random` (xDS `lb_policy: RANDOM`) through the binary: three upstreams that each
/// answer their own name; 60 connections on one shard reach every one of them, and not in
/// round robin's fixed cycle (a run of a/b/c repeated: probability 3^-57 at random).
#[test]
fn random_lb_spreads_connections_out_of_cycle() {
    let named = |name: u8| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = c.write_all(&[name]);
            }
        });
        addr
    };
    let ups = [named(b'a'), named(b'b'), named(b'c')];
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg =
        tcp_config(admin, listen, &ups).replace("  - name: up\n", "  - name: up\n    lb: random\n");
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    let (_, dump) = rs.get("/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["config"]["clusters"][0]["lb"], "random");
    let picks: Vec<u8> = (0..60)
        .map(|_| {
            let mut s = TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            b[0]
        })
        .collect();
    let text = String::from_utf8_lossy(&picks).to_string();
    for n in [b'a', b'b', b'c'] {
        assert!(picks.contains(&n), "every upstream picked: {text}");
    }
    assert!(
        (3..picks.len()).any(|i| picks[i] != picks[i - 3]),
        "not a fixed cycle: {text}"
    );
}
