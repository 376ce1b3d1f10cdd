//! `dubbo-load`: Dubbo2 load generator.
//!
//! Closed loop (`--connections C --pipeline P`): C connections on one tokio current_thread
//! runtime, each keeping P requests in flight; every answer triggers the next request, and all
//! requests due after one read go out in one write. Latency is measured from the actual send.
//!
//! Open loop (`--rate R`): requests are due at fixed intervals (1/R) spread round-robin over the
//! C connections, and latency is measured from the *intended* send time, so a stall in the
//! system under test (or in this process) shows up in the latencies instead of silently
//! delaying the next sends (coordinated omission). A pacer thread sleeps in `nanosleep` with a
//! 1 µs timer slack and writes every due request; one reader thread per connection checks the
//! answers.
// The open loop's pacer and reader threads share each connection's state under a lock; this is
// the load generator, not ringside's data path (where std locks are banned).
#![allow(clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::args::Args;
use bench::dubbo_client::{ConnState, Template};
use bench::progress::{self, Counters};
use bench::report::{self, ErrorCounts, ErrorKind, LoadReport, Recorder};
use bench::runner::configs::{DUBBO_INTERFACE, DUBBO_METHOD};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str =
    "dubbo-load --target 127.0.0.1:30880 [--connections 1] [--pipeline 1 | --rate R]
           [--duration 10s] [--warmup 2s] [--timeout 1s] [--payload 16] [--json FILE]
           [--interface org.apache.dubbo.bench.EchoService] [--method echo]
           [--samples FILE] [--stop-file FILE] [--reconnect-on-close]
           [--traceparent 00-TRACEID-SPANID-FLAGS]

Closed loop by default: --connections x --pipeline requests in flight.
Open loop with --rate R: R requests/s over all connections, latency from the intended send time;
a connection that receives Dubbo's readonly event is replaced by a new one (as consumers do)
and closed once its answers are in (counted as reconnects).
--samples FILE (open loop): also write every measured request, one line each,
`due_unix_us latency_us ok(1|0)` (an expired request: its time until given up, ok 0), for
latency over time windows (bench/xds-push).
--stop-file FILE (open loop): stop sending once FILE exists (checked every 50 ms), as if
--duration ended then.
--reconnect-on-close (open loop): a connection the peer closes (or resets) is replaced at once
by a new one, as a consumer does (counted as reconnects_after_close); its requests in flight are
lost (timeouts). Without it the slot stays dead and its requests fail.
--traceparent VALUE: every request carries this W3C `traceparent` attachment, as a consumer
instrumented with OpenTelemetry sends its context (the same value each time; a proxy that
continues the trace rewrites its parent id).
Every response must be status 20 with an id in flight on its connection; errors are counted by
kind (status, unknown_id, decode, connect, timeout, io). Latency is recorded after --warmup for
--duration. JSON on stdout or --json FILE; a progress line each second on stderr.";

/// How often in-flight requests are checked against `--timeout`.
const EXPIRE_EVERY_MS: u64 = 100;
/// Connect timeout per connection.
const CONNECT_TIMEOUT_MS: u64 = 2000;

struct Opts {
    target: String,
    connections: usize,
    pipeline: usize,
    rate: Option<f64>,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    payload: usize,
    template: Template,
    samples: Option<String>,
    stop_file: Option<String>,
    reconnect_on_close: bool,
}

fn main() {
    let args = Args::parse(USAGE, &["reconnect-on-close"]);
    let target = args
        .opt_str("target")
        .unwrap_or_else(|| args.fail("--target is required"))
        .to_string();
    let payload: usize = args.get("payload", 16);
    let interface = args.str_or("interface", DUBBO_INTERFACE);
    let method = args.str_or("method", DUBBO_METHOD);
    let traceparent = args.opt_str("traceparent").map(str::to_string);
    if let Some(t) = &traceparent {
        let ok = t.len() == 55
            && t.bytes().enumerate().all(|(i, b)| match i {
                2 | 35 | 52 => b == b'-',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            });
        if !ok {
            args.fail("--traceparent must be 00-<32 hex>-<16 hex>-<2 hex> (lower case)");
        }
    }
    let opts = Opts {
        target,
        connections: args.get("connections", 1),
        pipeline: args.get("pipeline", 1),
        rate: args.opt("rate"),
        duration: args.duration("duration", Duration::from_secs(10)),
        warmup: args.duration("warmup", Duration::from_secs(2)),
        timeout: args.duration("timeout", Duration::from_secs(1)),
        payload,
        template: Template::with_attachments(
            &interface,
            &method,
            payload,
            &traceparent
                .as_deref()
                .map(|v| vec![("traceparent", v)])
                .unwrap_or_default(),
        ),
        samples: args.opt_str("samples").map(str::to_string),
        stop_file: args.opt_str("stop-file").map(str::to_string),
        reconnect_on_close: args.flag("reconnect-on-close"),
    };
    if opts.samples.is_some() && opts.rate.is_none() {
        args.fail("--samples needs the open loop (--rate)");
    }
    if opts.reconnect_on_close && opts.rate.is_none() {
        args.fail("--reconnect-on-close needs the open loop (--rate)");
    }
    if opts.connections == 0 || opts.pipeline == 0 {
        args.fail("--connections and --pipeline must be at least 1");
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        args.fail("--rate must be a positive number of requests per second");
    }
    if opts.target.parse::<SocketAddr>().is_err() {
        args.fail("--target must be IP:PORT");
    }

    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let progress = progress::spawn("dubbo-load", counters.clone(), start, opts.warmup);
    let (rec, errors, (reconnects, reconnects_after_close)) = match opts.rate {
        None => {
            let (rec, errors) = closed_loop(&opts, start, &counters);
            (rec, errors, (0, 0))
        }
        Some(rate) => open_loop(&opts, rate, start, &counters),
    };
    counters.stop.store(true, Relaxed);
    let _ = progress.join();

    let report = LoadReport {
        tool: "dubbo-load".into(),
        mode: if opts.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        target: opts.target.clone(),
        connections: opts.connections,
        pipeline: if opts.rate.is_some() {
            0
        } else {
            opts.pipeline
        },
        rate_per_s: opts.rate,
        payload_bytes: opts.payload,
        reconnects,
        reconnects_after_close,
        ..LoadReport::measured(&counters, &rec, errors, opts.duration, opts.warmup)
    };
    if let Err(e) = report::emit(&report, args.opt_str("json")) {
        eprintln!("dubbo-load: writing the report: {e}");
        std::process::exit(1);
    }
}

// --- closed loop ---

fn closed_loop(opts: &Opts, start: Instant, counters: &Arc<Counters>) -> (Recorder, ErrorCounts) {
    let rt = bench::runner::tokio_runtime(1);
    let measure_from = start + opts.warmup;
    let end = measure_from + opts.duration;
    let local = tokio::task::LocalSet::new();
    let target = Rc::new(opts.target.clone());
    rt.block_on(local.run_until(async {
        let mut tasks = Vec::new();
        for i in 0..opts.connections {
            let state = ConnState::new(i, opts.template.clone(), measure_from);
            let (target, counters) = (target.clone(), counters.clone());
            let (pipeline, timeout) = (opts.pipeline, opts.timeout);
            tasks.push(tokio::task::spawn_local(async move {
                closed_conn(&target, state, pipeline, timeout, end, &counters).await
            }));
        }
        report::merge_all(tasks).await
    }))
}

async fn closed_conn(
    target: &str,
    mut state: ConnState,
    pipeline: usize,
    timeout: Duration,
    end: Instant,
    counters: &Counters,
) -> (Recorder, ErrorCounts) {
    let connect = tokio::net::TcpStream::connect(target);
    let mut stream =
        match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                eprintln!("dubbo-load: connect {target}: {e}");
                state.error(ErrorKind::Connect, counters);
                return (state.rec, state.errors);
            }
            Err(_) => {
                state.error(ErrorKind::Connect, counters);
                return (state.rec, state.errors);
            }
        };
    let _ = stream.set_nodelay(true);
    let mut out = BytesMut::with_capacity(pipeline * state.frame_bytes());
    let now = Instant::now();
    for _ in 0..pipeline {
        state.push_request(&mut out, now);
    }
    counters.sent(pipeline as u64);
    let mut expire_at = now + Duration::from_millis(EXPIRE_EVERY_MS);
    let end_tokio = tokio::time::Instant::from_std(end);
    loop {
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                state.error(ErrorKind::Io, counters);
                break;
            }
            out.clear();
        }
        state.reserve_read();
        let wake = tokio::time::Instant::from_std(expire_at.min(end));
        let read = tokio::select! {
            r = stream.read_buf(&mut state.read_buf) => Some(r),
            _ = tokio::time::sleep_until(wake) => None,
        };
        let now = Instant::now();
        let mut freed = 0;
        match read {
            Some(Ok(0)) | Some(Err(_)) => {
                if now < end {
                    state.error(ErrorKind::Io, counters);
                }
                break;
            }
            Some(Ok(_)) => {
                let p = state.on_read(now, &mut out, counters);
                if p.fatal {
                    break;
                }
                freed += p.completed;
            }
            None => {}
        }
        if now >= expire_at {
            freed += state.expire(now, timeout, counters);
            expire_at = now + Duration::from_millis(EXPIRE_EVERY_MS);
        }
        if tokio::time::Instant::now() >= end_tokio {
            break;
        }
        for _ in 0..freed {
            state.push_request(&mut out, now);
        }
        counters.sent(freed as u64);
    }
    // The run is over: answers still owed are neither good nor errors.
    state.abandon();
    (state.rec, state.errors)
}

// --- open loop ---

/// One open-loop connection slot: the link new requests go to, replaced when the peer sends a
/// readonly event (a draining proxy or provider) — as a Dubbo consumer does, the old link keeps
/// reading its answers in flight and then closes.
struct OpenConn {
    index: usize,
    current: Mutex<Arc<OpenLink>>,
}

struct OpenLink {
    state: Mutex<ConnState>,
    writer: Mutex<TcpStream>,
}

/// What every reader thread shares.
struct OpenShared {
    addr: SocketAddr,
    template: Template,
    measure_from: Instant,
    timeout: Duration,
    counters: Arc<Counters>,
    /// Every link ever opened (results are merged from all of them).
    links: Mutex<Vec<Arc<OpenLink>>>,
    readers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    reconnects: std::sync::atomic::AtomicU64,
    /// `--reconnect-on-close`: replace a link the peer closed.
    reconnect_on_close: bool,
    reconnects_after_close: std::sync::atomic::AtomicU64,
    /// `--samples`: every link keeps its samples.
    samples: bool,
}

impl OpenShared {
    /// Connects a new link for slot `index` and starts its reader.
    fn connect(
        self: &Arc<Self>,
        conn: Option<&Arc<OpenConn>>,
        index: usize,
    ) -> Option<Arc<OpenLink>> {
        let s =
            match TcpStream::connect_timeout(&self.addr, Duration::from_millis(CONNECT_TIMEOUT_MS))
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("dubbo-load: connect {}: {e}", self.addr);
                    return None;
                }
            };
        let _ = s.set_nodelay(true);
        let reader = s.try_clone().ok()?;
        let link = Arc::new(OpenLink {
            state: Mutex::new({
                let mut st = ConnState::new(index, self.template.clone(), self.measure_from);
                if self.samples {
                    st.samples = Some(Vec::with_capacity(1 << 16));
                }
                st
            }),
            writer: Mutex::new(s),
        });
        if let Ok(mut links) = self.links.lock() {
            links.push(link.clone());
        }
        let (shared, l2, conn) = (self.clone(), link.clone(), conn.cloned());
        let h = std::thread::spawn(move || open_reader(&shared, conn, &l2, reader));
        if let Ok(mut r) = self.readers.lock() {
            r.push(h);
        }
        Some(link)
    }
}

fn open_loop(
    opts: &Opts,
    rate: f64,
    start: Instant,
    counters: &Arc<Counters>,
) -> (Recorder, ErrorCounts, (u64, u64)) {
    let measure_from = start + opts.warmup;
    let end = measure_from + opts.duration;
    let mut failed = ErrorCounts::default();
    let addr: SocketAddr = match opts.target.parse() {
        Ok(a) => a,
        Err(_) => return (Recorder::new(), failed, (0, 0)),
    };
    let shared = Arc::new(OpenShared {
        addr,
        template: opts.template.clone(),
        measure_from,
        timeout: opts.timeout,
        counters: counters.clone(),
        links: Mutex::new(Vec::new()),
        readers: Mutex::new(Vec::new()),
        reconnects: Default::default(),
        reconnect_on_close: opts.reconnect_on_close,
        reconnects_after_close: Default::default(),
        samples: opts.samples.is_some(),
    });
    let mut conns: Vec<Arc<OpenConn>> = Vec::new();
    for i in 0..opts.connections {
        // The first reader starts before its slot exists; it looks the slot up on readonly.
        match shared.connect(None, i) {
            Some(link) => conns.push(Arc::new(OpenConn {
                index: i,
                current: Mutex::new(link),
            })),
            None => {
                failed.add(ErrorKind::Connect);
                counters.error();
            }
        }
    }
    if conns.is_empty() {
        return (Recorder::new(), failed, (0, 0));
    }
    if let Ok(mut slots) = SLOTS.lock() {
        *slots = conns.clone();
    }

    // The pacer, on the main thread: request k is due at start + k / rate, on connection k % C.
    if !bench::set_timer_slack_1us() {
        eprintln!("dubbo-load: could not set the timer slack; pacing may run up to 50 µs late");
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut k: u64 = 0;
    let mut out = BytesMut::with_capacity(4096);
    let mut stop_checked = Instant::now();
    'pace: loop {
        let due = start + interval.mul_f64(k as f64);
        if due >= end {
            break;
        }
        if let Some(f) = &opts.stop_file {
            if stop_checked.elapsed() >= Duration::from_millis(50) {
                stop_checked = Instant::now();
                if std::path::Path::new(f).exists() {
                    break;
                }
            }
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let Some(conn) = conns.get((k % conns.len() as u64) as usize) else {
            break;
        };
        let Ok(link) = conn.current.lock().map(|l| l.clone()) else {
            break;
        };
        out.clear();
        match link.state.lock() {
            Ok(mut s) => s.push_request(&mut out, due),
            Err(_) => break 'pace,
        }
        let wrote = link
            .writer
            .lock()
            .map(|mut w| w.write_all(&out).is_ok())
            .unwrap_or(false);
        if wrote {
            counters.sent(1);
        } else if let Ok(mut s) = link.state.lock() {
            // The reader sees the broken connection too and counts it; the request is lost.
            s.error(ErrorKind::Io, counters);
        }
        k += 1;
    }

    // Let the last answers arrive (at most --timeout), then count what is missing as timeouts.
    let links = || shared.links.lock().map(|l| l.clone()).unwrap_or_default();
    let drain_until = Instant::now() + opts.timeout;
    while Instant::now() < drain_until
        && links()
            .iter()
            .any(|l| l.state.lock().map(|s| s.inflight() > 0).unwrap_or(false))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    counters.stop.store(true, Relaxed);
    for l in links() {
        if let Ok(w) = l.writer.lock() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }
    loop {
        let next = shared.readers.lock().ok().and_then(|mut r| r.pop());
        match next {
            Some(h) => {
                let _ = h.join();
            }
            None => break,
        }
    }
    let mut rec = Recorder::new();
    if let Some(path) = &opts.samples {
        if let Err(e) = write_samples(path, &links()) {
            eprintln!("dubbo-load: writing {path}: {e}");
        }
    }
    for l in links() {
        if let Ok(mut s) = l.state.lock() {
            s.expire_all(counters);
            rec.merge(&s.rec);
            failed.merge(&s.errors);
        }
    }
    let reconnects = (
        shared.reconnects.load(Relaxed),
        shared.reconnects_after_close.load(Relaxed),
    );
    (rec, failed, reconnects)
}

/// `--samples FILE`: `due_unix_us latency_us ok` per measured request, in due order.
fn write_samples(path: &str, links: &[Arc<OpenLink>]) -> std::io::Result<()> {
    let (now_i, now_wall) = (Instant::now(), std::time::SystemTime::now());
    let wall_us = now_wall
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(std::io::Error::other)?
        .as_micros() as i128;
    let mut all = Vec::new();
    for l in links {
        if let Ok(mut s) = l.state.lock() {
            all.extend(s.samples.take().unwrap_or_default());
        }
    }
    all.sort_by_key(|s| s.sent_at);
    let mut out = String::with_capacity(all.len() * 28);
    for s in all {
        let ago = now_i.saturating_duration_since(s.sent_at).as_micros() as i128;
        out.push_str(&format!(
            "{} {} {}\n",
            wall_us - ago,
            s.latency.as_micros(),
            u8::from(s.ok)
        ));
    }
    std::fs::write(path, out)
}

/// The open loop's connection slots, for readers started before their slot existed.
static SLOTS: Mutex<Vec<Arc<OpenConn>>> = Mutex::new(Vec::new());

/// After a readonly event (or, with `--reconnect-on-close`, a close): a new link takes the
/// slot's new requests; this one finishes. False when `link` was no longer the slot's current
/// one or no new connection could be made.
fn replace_link(
    shared: &Arc<OpenShared>,
    conn: Option<Arc<OpenConn>>,
    link: &Arc<OpenLink>,
) -> bool {
    let conn = conn.or_else(|| {
        let slots = SLOTS.lock().ok()?;
        slots
            .iter()
            .find(|c| {
                c.current
                    .lock()
                    .map(|l| Arc::ptr_eq(&l, link))
                    .unwrap_or(false)
            })
            .cloned()
    });
    let Some(conn) = conn else { return false };
    let is_current = conn
        .current
        .lock()
        .map(|l| Arc::ptr_eq(&l, link))
        .unwrap_or(false);
    if !is_current {
        return false;
    }
    let Some(new) = shared.connect(Some(&conn), conn.index) else {
        return false;
    };
    if let Ok(mut cur) = conn.current.lock() {
        *cur = new;
    }
    true
}

fn open_reader(
    shared: &Arc<OpenShared>,
    conn: Option<Arc<OpenConn>>,
    link: &Arc<OpenLink>,
    mut stream: TcpStream,
) {
    let counters = &*shared.counters;
    let timeout = shared.timeout;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(EXPIRE_EVERY_MS)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut heartbeats = BytesMut::new();
    let mut retired = false;
    loop {
        if retired && link.state.lock().map(|s| s.inflight() == 0).unwrap_or(true) {
            // Every answer of a link we left is in: close it, as a consumer would.
            if let Ok(w) = link.writer.lock() {
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
            return;
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => 0,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if counters.stop.load(Relaxed) {
                    return;
                }
                if let Ok(mut s) = link.state.lock() {
                    s.expire(Instant::now(), timeout, counters);
                }
                continue;
            }
            Err(_) => 0,
        };
        let now = Instant::now();
        let Ok(mut s) = link.state.lock() else {
            return;
        };
        if n == 0 {
            let done = retired && s.inflight() == 0;
            let stopping = counters.stop.load(Relaxed);
            if !stopping && !done {
                s.error(ErrorKind::Io, counters);
            }
            drop(s);
            // Its requests in flight stay in this link's state and expire as timeouts.
            if shared.reconnect_on_close
                && !stopping
                && !retired
                && replace_link(shared, conn, link)
            {
                shared.reconnects_after_close.fetch_add(1, Relaxed);
            }
            return;
        }
        if let Some(bytes) = buf.get(..n) {
            s.read_buf.extend_from_slice(bytes);
        }
        let p = s.on_read(now, &mut heartbeats, counters);
        drop(s);
        if !heartbeats.is_empty() {
            if let Ok(mut w) = link.writer.lock() {
                let _ = w.write_all(&heartbeats);
            }
            heartbeats.clear();
        }
        if p.readonly && !retired {
            retired = true;
            if replace_link(shared, conn.clone(), link) {
                shared.reconnects.fetch_add(1, Relaxed);
            }
        }
        if p.fatal {
            return;
        }
    }
}
