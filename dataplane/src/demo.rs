//! `ringside demo`: the product's main job on an embedded default, with nothing installed. It
//! starts a built-in echo upstream and ringside in front of it (one shard), runs ping-pong load
//! direct and through the proxy, and prints latency and throughput side by side, including the
//! latency ringside adds over direct.
//!
//! This is a demonstration, not the benchmark: nothing is pinned apart from the shard, and the
//! load runs in the same process. `bench/run` is the measurement.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::config::Config;
use crate::server::{ControlEvent, Overrides, Server};

/// Bytes per ping-pong message.
const MESSAGE_BYTES: usize = 128;
/// Largest latency the histograms hold (60 s); larger values are clamped.
const HIST_NS_MAX: u64 = 60_000_000_000;
/// Connections in the concurrent measurement.
const CONNECTIONS_MANY: usize = 32;

struct Result {
    requests: u64,
    secs: f64,
    hist: Histogram<u64>,
}

pub fn run(seconds: u64) -> ExitCode {
    match run_inner(seconds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_inner(seconds: u64) -> std::result::Result<(), String> {
    let echo = start_echo().map_err(|e| format!("echo upstream: {e}"))?;
    let proxy_port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let cfg_text = format!(
        "admin:\n  address: 127.0.0.1:0\nruntime:\n  shards: 1\nlisteners:\n  - name: demo\n    \
         address: 127.0.0.1:{proxy_port}\n    protocol: tcp\n    cluster: echo\nclusters:\n  \
         - name: echo\n    endpoints: [\"{echo}\"]\n"
    );
    let cfg = Config::from_yaml("<demo>", &cfg_text).map_err(|e| e.to_string())?;
    let server = Server::start(cfg, &Overrides::default()).map_err(|e| e.to_string())?;
    let proxy: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    let backend = server
        .shared
        .shard_infos
        .get()
        .and_then(|v| v.first())
        .map(|i| i.backend.as_str())
        .unwrap_or("?");
    println!(
        "ringside demo: echo upstream on {echo}, ringside (1 shard, {backend}) on {proxy}, \
         {MESSAGE_BYTES}-byte ping-pong, {seconds} s per run"
    );
    let dur = Duration::from_secs(seconds.max(1));
    let mut rows = Vec::new();
    for (label, conns) in [("1 connection", 1), ("32 connections", CONNECTIONS_MANY)] {
        eprintln!("  measuring direct, {label} ...");
        let d = load(echo, conns, dur)?;
        eprintln!("  measuring through ringside, {label} ...");
        let p = load(proxy, conns, dur)?;
        rows.push((label, d, p));
    }
    println!();
    println!(
        "{:<16} {:<9} {:>10} {:>10} {:>10} {:>10}",
        "load", "path", "req/s", "p50 µs", "p99 µs", "p99.9 µs"
    );
    for (label, d, p) in &rows {
        for (path, r) in [("direct", d), ("ringside", p)] {
            println!(
                "{:<16} {:<9} {:>10.0} {:>10.1} {:>10.1} {:>10.1}",
                label,
                path,
                r.requests as f64 / r.secs,
                q(&r.hist, 0.5),
                q(&r.hist, 0.99),
                q(&r.hist, 0.999)
            );
        }
    }
    if let Some((_, d, p)) = rows.first() {
        println!();
        println!(
            "latency ringside adds at 1 connection: p50 {:+.1} µs, p99 {:+.1} µs (one direct round trip here: {:.1} µs)",
            q(&p.hist, 0.5) - q(&d.hist, 0.5),
            q(&p.hist, 0.99) - q(&d.hist, 0.99),
            q(&d.hist, 0.5)
        );
    }
    let stats = server.shared.stats.render_text();
    let _ = server.control().try_send(ControlEvent::Drain {
        reason: "demo done",
    });
    server.run_until_drained();
    println!();
    println!("ringside stats after the demo:\n{stats}");
    Ok(())
}

fn q(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_echo() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let _ = c.set_nodelay(true);
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn load(addr: SocketAddr, conns: usize, dur: Duration) -> std::result::Result<Result, String> {
    let start = Instant::now();
    let deadline = start + dur;
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<(u64, Histogram<u64>)> {
                let mut h = Histogram::<u64>::new_with_bounds(1, HIST_NS_MAX, 3)
                    .map_err(std::io::Error::other)?;
                let mut s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                let msg = [7u8; MESSAGE_BYTES];
                let mut back = [0u8; MESSAGE_BYTES];
                let mut n = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    s.write_all(&msg)?;
                    s.read_exact(&mut back)?;
                    h.saturating_record(t.elapsed().as_nanos() as u64);
                    n += 1;
                }
                Ok((n, h))
            })
        })
        .collect();
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, HIST_NS_MAX, 3).map_err(|e| e.to_string())?;
    let mut requests = 0;
    for h in handles {
        let (n, part) = h
            .join()
            .map_err(|_| "load thread panicked".to_string())?
            .map_err(|e| format!("load against {addr}: {e}"))?;
        requests += n;
        hist.add(part).map_err(|e| e.to_string())?;
    }
    Ok(Result {
        requests,
        secs: start.elapsed().as_secs_f64(),
        hist,
    })
}
