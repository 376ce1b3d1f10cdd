//! `ringside demo`: the product's main job on an embedded default, with nothing installed. It
//! starts built-in upstreams (a TCP echo server and a Dubbo2 echo provider) and ringside in
//! front of them (one shard: a `tcp` and a `dubbo` listener), runs load direct and through the
//! proxy, and prints latency and throughput side by side, including the latency ringside adds
//! over direct.
//!
//! This is a demonstration, not the benchmark: nothing is pinned apart from the shard, and the
//! load runs in the same process. `bench/run` is the measurement.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codec::dubbo::encode::{self, Arg, RequestBuilder};
use codec::dubbo::{self as dubbo_wire, Decoded};
use hdrhistogram::Histogram;

use dataplane::config::Config;
use dataplane::control::server::{ControlEvent, Overrides, Server};

/// Bytes per ping-pong message.
const MESSAGE_BYTES: usize = 128;
/// Largest latency the histograms hold (60 s); larger values are clamped.
const HIST_NS_MAX: u64 = 60_000_000_000;
/// Connections in the concurrent TCP measurement.
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

/// One measured load: what it is, and how to run it against an address.
struct Scenario {
    label: &'static str,
    kind: Kind,
    conns: usize,
    /// Requests in flight per connection (dubbo only).
    depth: usize,
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Dubbo,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        label: "tcp 1 conn",
        kind: Kind::Tcp,
        conns: 1,
        depth: 1,
    },
    Scenario {
        label: "tcp 32 conns",
        kind: Kind::Tcp,
        conns: CONNECTIONS_MANY,
        depth: 1,
    },
    Scenario {
        label: "dubbo 1x1",
        kind: Kind::Dubbo,
        conns: 1,
        depth: 1,
    },
    Scenario {
        label: "dubbo 16x16",
        kind: Kind::Dubbo,
        conns: 16,
        depth: 16,
    },
];

fn run_inner(seconds: u64) -> std::result::Result<(), String> {
    let echo = start_echo().map_err(|e| format!("echo upstream: {e}"))?;
    let provider = start_dubbo_echo().map_err(|e| format!("dubbo echo provider: {e}"))?;
    let tcp_port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let dubbo_port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let cfg_text = format!(
        "admin:\n  address: 127.0.0.1:0\nruntime:\n  shards: 1\nlisteners:\n  - name: tcp\n    \
         address: 127.0.0.1:{tcp_port}\n    protocol: tcp\n    cluster: echo\n  - name: dubbo\n    \
         address: 127.0.0.1:{dubbo_port}\n    protocol: dubbo\n    cluster: provider\nclusters:\n  \
         - name: echo\n    endpoints: [\"{echo}\"]\n  - name: provider\n    endpoints: [\"{provider}\"]\n"
    );
    let cfg = Config::from_yaml("<demo>", &cfg_text).map_err(|e| e.to_string())?;
    let server =
        Server::start(cfg, &Overrides::default(), Default::default()).map_err(|e| e.to_string())?;
    let backend = server
        .shared
        .shard_infos
        .get()
        .and_then(|v| v.first())
        .map(|i| i.backend.as_str())
        .unwrap_or("?");
    println!(
        "ringside demo: 1 shard ({backend}); tcp echo on {echo} behind :{tcp_port}, dubbo echo \
         provider on {provider} behind :{dubbo_port}; {seconds} s per run"
    );
    let dur = Duration::from_secs(seconds.max(1));
    let mut rows = Vec::new();
    for sc in &SCENARIOS {
        let (direct, proxied): (SocketAddr, SocketAddr) = match sc.kind {
            Kind::Tcp => (echo, ([127, 0, 0, 1], tcp_port).into()),
            Kind::Dubbo => (provider, ([127, 0, 0, 1], dubbo_port).into()),
        };
        eprintln!("  {}: direct ...", sc.label);
        let d = load(sc, direct, dur)?;
        eprintln!("  {}: through ringside ...", sc.label);
        let p = load(sc, proxied, dur)?;
        rows.push((sc.label, d, p));
    }
    println!();
    println!(
        "{:<14} {:<9} {:>10} {:>9} {:>9} {:>9} {:>12}",
        "load", "path", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "added p50 µs"
    );
    for (label, d, p) in &rows {
        for (path, r) in [("direct", d), ("ringside", p)] {
            let added = if path == "ringside" {
                format!("{:+.1}", q(&p.hist, 0.5) - q(&d.hist, 0.5))
            } else {
                String::new()
            };
            println!(
                "{:<14} {:<9} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>12}",
                label,
                path,
                r.requests as f64 / r.secs,
                q(&r.hist, 0.5),
                q(&r.hist, 0.99),
                q(&r.hist, 0.999),
                added
            );
        }
    }
    println!();
    println!(
        "Load, upstreams and proxy share this machine's cores, unpinned: a demonstration. \
         bench/run measures pinned, against Envoy."
    );
    let stats = server.shared.stats.render_text();
    let _ = server.control().try_send(ControlEvent::Drain {
        reason: "demo done",
    });
    server.run_until_drained();
    let interesting: Vec<&str> = stats
        .lines()
        .filter(|l| !l.contains("_le_") && !l.ends_with(": 0"))
        .collect();
    println!();
    println!(
        "ringside stats after the demo (non-zero):\n{}",
        interesting.join("\n")
    );
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

fn load(sc: &Scenario, addr: SocketAddr, dur: Duration) -> std::result::Result<Result, String> {
    let start = Instant::now();
    let deadline = start + dur;
    let (kind, depth) = (sc.kind, sc.depth);
    let handles: Vec<_> = (0..sc.conns)
        .map(|_| {
            std::thread::spawn(move || match kind {
                Kind::Tcp => ping_pong(addr, deadline),
                Kind::Dubbo => dubbo_pipelined(addr, depth, deadline),
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

type LoadResult = std::io::Result<(u64, Histogram<u64>)>;

fn ping_pong(addr: SocketAddr, deadline: Instant) -> LoadResult {
    let mut h =
        Histogram::<u64>::new_with_bounds(1, HIST_NS_MAX, 3).map_err(std::io::Error::other)?;
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
}

/// Keeps `depth` Dubbo requests in flight on one connection; checks each answer's id and status.
fn dubbo_pipelined(addr: SocketAddr, depth: usize, deadline: Instant) -> LoadResult {
    let bad = |m: String| std::io::Error::other(m);
    let mut h =
        Histogram::<u64>::new_with_bounds(1, HIST_NS_MAX, 3).map_err(std::io::Error::other)?;
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let args = [Arg::Str("hello from ringside demo")];
    let template = RequestBuilder::new("com.ringside.demo.EchoService", "echo")
        .version("1.0.0")
        .args(&args)
        .build()
        .to_vec();
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(depth);
    let mut next_id = 1u64;
    let mut out = Vec::with_capacity(template.len() * depth);
    let mut send = |n: usize, in_flight: &mut VecDeque<(u64, Instant)>, s: &mut TcpStream| {
        out.clear();
        let now = Instant::now();
        for _ in 0..n {
            let at = out.len();
            out.extend_from_slice(&template);
            dubbo_wire::set_request_id(&mut out[at..], next_id);
            in_flight.push_back((next_id, now));
            next_id += 1;
        }
        s.write_all(&out)
    };
    send(depth, &mut in_flight, &mut s)?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let mut answered = 0;
        loop {
            match dubbo_wire::decode_frame(&mut buf, 1 << 20) {
                Ok(Decoded::Frame(f)) => {
                    let id = f.header.request_id;
                    // Responses on one connection come back in order from the echo provider,
                    // but a proxy may reorder: find the id.
                    let Some(pos) = in_flight.iter().position(|(i, _)| *i == id) else {
                        return Err(bad(format!("answer to unknown request id {id}")));
                    };
                    let (_, sent) = in_flight.remove(pos).unwrap_or((id, Instant::now()));
                    if f.bytes[3] != 20 {
                        return Err(bad(format!(
                            "request {id} answered with status {}",
                            f.bytes[3]
                        )));
                    }
                    h.saturating_record(sent.elapsed().as_nanos() as u64);
                    n += 1;
                    answered += 1;
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => return Err(bad(format!("bad frame from {addr}: {e}"))),
            }
        }
        if Instant::now() >= deadline {
            if in_flight.is_empty() {
                return Ok((n, h));
            }
        } else if answered > 0 {
            send(answered, &mut in_flight, &mut s)?;
        }
        let got = s.read(&mut chunk)?;
        if got == 0 {
            return Err(bad(format!("{addr} closed the connection")));
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// A Dubbo2 echo provider: answers each request with its first string argument.
fn start_dubbo_echo() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || serve_dubbo_echo(c));
        }
    });
    Ok(addr)
}

fn serve_dubbo_echo(mut c: TcpStream) {
    let _ = c.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        out.clear();
        loop {
            match dubbo_wire::decode_frame(&mut buf, 8 << 20) {
                Ok(Decoded::Frame(f)) => {
                    let h = f.header;
                    if h.flags.event {
                        if h.flags.two_way {
                            out.extend_from_slice(&encode::heartbeat_response(h.request_id));
                        }
                        continue;
                    }
                    let value = codec::dubbo::request::RequestRepr::parse(f.body())
                        .ok()
                        .and_then(|r| match r.argument(0) {
                            Ok(Some(codec::hessian2::Scalar::Str(s))) => {
                                Some(String::from_utf8_lossy(s).into_owned())
                            }
                            _ => None,
                        })
                        .unwrap_or_default();
                    encode::response_ok_into(&mut out, h.request_id, &Arg::Str(&value), None);
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() && c.write_all(&out).is_err() {
            return;
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
