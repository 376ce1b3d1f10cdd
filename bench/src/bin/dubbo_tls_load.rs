//! `dubbo-tls-load`: Dubbo2 calls over mutual TLS straight to an inbound sidecar, for the cost
//! of TLS connections rather than of calls.
//!
//! Handshake mode (default): `--connections C` threads, each in a loop: connect, full mTLS 1.3
//! handshake (no resumption), `--calls-per-connection N` calls one at a time, close (TLS
//! close_notify, then the socket). A connection's first call is timed from its connect (TCP +
//! handshake + call), the others from their send. The report's `handshakes` are the handshakes
//! completed in the measured window.
//!
//! Hold mode (`--hold N --signal-dir DIR`): opens `--warm W` connections (a handshake and one
//! call each), creates `DIR/warm`, waits for `DIR/go`; opens N more the same way, creates
//! `DIR/held`, waits for `DIR/stop`; then closes them all. The runner reads the sidecar's RSS
//! at `warm` and at `held`: the difference over N is its memory per idle TLS connection.
//!
//! The certificates are the bench's (`bench::mtls`): the client presents `--cert`/`--key` and
//! checks that the server chains to `--ca` and carries `--server-san`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::args::Args;
use bench::dubbo_client::{ConnState, Template};
use bench::mtls;
use bench::progress::{self, Counters};
use bench::report::{self, ErrorCounts, ErrorKind, LoadReport, Recorder};
use bench::runner::configs::{DUBBO_INTERFACE, DUBBO_METHOD};
use bytes::BytesMut;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

const USAGE: &str =
    "dubbo-tls-load --target 127.0.0.1:30412 --ca ca.pem --cert client.pem --key client-key.pem
           [--server-san spiffe://cluster.local/ns/bench/sa/provider]
           [--connections 8] [--calls-per-connection 1] [--duration 10s] [--warmup 2s]
           [--timeout 1s] [--payload 16] [--json FILE]
           | --hold N --signal-dir DIR [--warm 16] [--max-wait 120s]

Handshake mode: C threads each connecting, doing a full mTLS handshake and N calls, closing,
again. Hold mode: W then N idle mTLS connections, signalled through files in DIR (warm, go,
held, stop). JSON report on stdout or --json FILE; `handshakes` counts the measured ones.";

/// Connect timeout per connection.
const CONNECT_TIMEOUT_MS: u64 = 2000;
/// Pause after a failed connect or handshake, so a refusing sidecar is not hammered.
const RETRY_PAUSE_MS: u64 = 10;
/// Most connections hold mode opens (warm + held): each is a file descriptor here and in the
/// sidecar.
const HOLD_CONNECTIONS_MAX: usize = 10_000;

struct Opts {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    timeout: Duration,
    payload: usize,
    template: Template,
}

fn main() {
    let args = Args::parse(USAGE, &[]);
    let need = |name: &str| {
        args.opt_str(name)
            .unwrap_or_else(|| args.fail(&format!("--{name} is required")))
            .to_string()
    };
    let target = need("target");
    let Ok(addr) = target.parse::<SocketAddr>() else {
        args.fail("--target must be IP:PORT")
    };
    let config = mtls::client_config_from_files(
        Path::new(&need("ca")),
        Path::new(&need("cert")),
        Path::new(&need("key")),
        &args.str_or("server-san", mtls::SERVER_SAN),
    )
    .unwrap_or_else(|e| args.fail(&e));
    let payload: usize = args.get("payload", 16);
    let opts = Opts {
        addr,
        config: Arc::new(config),
        timeout: args.duration("timeout", Duration::from_secs(1)),
        payload,
        template: Template::new(DUBBO_INTERFACE, DUBBO_METHOD, payload),
    };
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let report = match args.opt::<usize>("hold") {
        Some(n) => {
            let warm: usize = args.get("warm", 16);
            if n == 0 || warm.saturating_add(n) > HOLD_CONNECTIONS_MAX {
                args.fail(&format!(
                    "--hold and --warm: 1 to {HOLD_CONNECTIONS_MAX} connections in all"
                ));
            }
            let dir = PathBuf::from(need("signal-dir"));
            let max_wait = args.duration("max-wait", Duration::from_secs(120));
            hold(&opts, &counters, warm, n, &dir, max_wait)
        }
        None => {
            let connections: usize = args.get("connections", 8);
            let calls: usize = args.get("calls-per-connection", 1);
            if connections == 0 || calls == 0 {
                args.fail("--connections and --calls-per-connection must be at least 1");
            }
            let duration = args.duration("duration", Duration::from_secs(10));
            let warmup = args.duration("warmup", Duration::from_secs(2));
            let progress = progress::spawn("dubbo-tls-load", counters.clone(), start, warmup);
            let r = handshakes(
                &opts,
                &counters,
                connections,
                calls,
                start,
                warmup,
                duration,
            );
            counters.stop.store(true, Relaxed);
            let _ = progress.join();
            r
        }
    };
    if let Err(e) = report::emit(&report, args.opt_str("json")) {
        eprintln!("dubbo-tls-load: writing the report: {e}");
        std::process::exit(1);
    }
}

/// One mTLS connection with its handshake done.
type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Why a connection ended early, already counted in its state's errors.
struct Failed;

/// Connects and completes the handshake; counts a failure as `connect` (the first message of
/// each kind is printed: a wrong CA or SAN shows here).
fn open(opts: &Opts, state: &mut ConnState, counters: &Counters) -> Result<Tls, Failed> {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    let fail = |state: &mut ConnState, what: String| {
        if !REPORTED.swap(true, Relaxed) {
            eprintln!("dubbo-tls-load: {}: {what}", opts.addr);
        }
        state.error(ErrorKind::Connect, counters);
        std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
        Failed
    };
    let tcp = TcpStream::connect_timeout(&opts.addr, Duration::from_millis(CONNECT_TIMEOUT_MS))
        .map_err(|e| fail(state, format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_read_timeout(Some(opts.timeout));
    let conn = ClientConnection::new(opts.config.clone(), mtls::server_name())
        .map_err(|e| fail(state, format!("TLS client: {e}")))?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| fail(state, format!("TLS handshake: {e}")))?;
    }
    Ok(tls)
}

/// One call: the request marked in flight since `since`, then reads until it is answered.
fn call(
    tls: &mut Tls,
    state: &mut ConnState,
    since: Instant,
    timeout: Duration,
    counters: &Counters,
) -> Result<(), Failed> {
    let mut out = BytesMut::with_capacity(state.frame_bytes());
    state.push_request(&mut out, since);
    counters.sent(1);
    if tls.write_all(&out).and_then(|()| tls.flush()).is_err() {
        state.error(ErrorKind::Io, counters);
        state.abandon();
        return Err(Failed);
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match tls.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                state.expire(Instant::now(), timeout, counters);
                return Err(Failed);
            }
            Err(_) => 0,
        };
        if n == 0 {
            state.error(ErrorKind::Io, counters);
            state.abandon();
            return Err(Failed);
        }
        state
            .read_buf
            .extend_from_slice(buf.get(..n).unwrap_or_default());
        let mut heartbeats = BytesMut::new();
        let p = state.on_read(Instant::now(), &mut heartbeats, counters);
        if !heartbeats.is_empty() && tls.write_all(&heartbeats).is_err() {
            state.error(ErrorKind::Io, counters);
        }
        if p.fatal {
            state.abandon();
            return Err(Failed);
        }
        if state.inflight() == 0 {
            return Ok(());
        }
    }
}

/// Sends close_notify and closes the socket.
fn close(mut tls: Tls) {
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    let _ = tls.sock.shutdown(std::net::Shutdown::Both);
}

fn handshakes(
    opts: &Opts,
    counters: &Arc<Counters>,
    connections: usize,
    calls: usize,
    start: Instant,
    warmup: Duration,
    duration: Duration,
) -> LoadReport {
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let measured_handshakes = AtomicU64::new(0);
    let (rec, errors) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..connections)
            .map(|i| {
                let (counters, measured_handshakes) = (&**counters, &measured_handshakes);
                s.spawn(move || {
                    let mut state = ConnState::new(i, opts.template.clone(), measure_from);
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        let Ok(mut tls) = open(opts, &mut state, counters) else {
                            continue;
                        };
                        if t0 >= measure_from {
                            measured_handshakes.fetch_add(1, Relaxed);
                        }
                        let mut ok = true;
                        for k in 0..calls {
                            let since = if k == 0 { t0 } else { Instant::now() };
                            if call(&mut tls, &mut state, since, opts.timeout, counters).is_err() {
                                ok = false;
                                break;
                            }
                        }
                        if ok {
                            close(tls);
                        }
                    }
                    (state.rec, state.errors)
                })
            })
            .collect();
        let mut all = (Recorder::new(), ErrorCounts::default());
        for t in threads {
            if let Ok((rec, errs)) = t.join() {
                all.0.merge(&rec);
                all.1.merge(&errs);
            }
        }
        all
    });
    LoadReport {
        tool: "dubbo-tls-load".into(),
        mode: "handshake".into(),
        target: opts.addr.to_string(),
        connections,
        pipeline: 1,
        payload_bytes: opts.payload,
        handshakes: measured_handshakes.load(Relaxed),
        ..LoadReport::measured(counters, &rec, errors, duration, warmup)
    }
}

/// Waits for `path` to exist, at most `max_wait`.
fn wait_for(path: &Path, max_wait: Duration) -> bool {
    let deadline = Instant::now() + max_wait;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Opens `n` connections, one call on each; keeps those that answered.
fn open_many(opts: &Opts, state: &mut ConnState, counters: &Counters, n: usize) -> Vec<Tls> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        if let Ok(mut tls) = open(opts, state, counters) {
            if call(&mut tls, state, t0, opts.timeout, counters).is_ok() {
                held.push(tls);
            }
        }
    }
    held
}

fn hold(
    opts: &Opts,
    counters: &Counters,
    warm: usize,
    n: usize,
    dir: &Path,
    max_wait: Duration,
) -> LoadReport {
    let start = Instant::now();
    let mut state = ConnState::new(0, opts.template.clone(), start);
    let signal = |name: &str| {
        if let Err(e) = std::fs::write(dir.join(name), b"") {
            eprintln!("dubbo-tls-load: {}: {e}", dir.join(name).display());
        }
    };
    let mut held = open_many(opts, &mut state, counters, warm);
    signal("warm");
    if wait_for(&dir.join("go"), max_wait) {
        held.extend(open_many(opts, &mut state, counters, n));
        signal("held");
        if !wait_for(&dir.join("stop"), max_wait) {
            eprintln!(
                "dubbo-tls-load: no {} within {max_wait:?}",
                dir.join("stop").display()
            );
        }
    } else {
        eprintln!(
            "dubbo-tls-load: no {} within {max_wait:?}",
            dir.join("go").display()
        );
    }
    let open_at_end = held.len();
    for tls in held {
        close(tls);
    }
    let elapsed = start.elapsed();
    LoadReport {
        tool: "dubbo-tls-load".into(),
        mode: "hold".into(),
        target: opts.addr.to_string(),
        connections: open_at_end,
        pipeline: 1,
        payload_bytes: opts.payload,
        handshakes: ((warm + n) as u64).saturating_sub(state.errors.connect),
        ..LoadReport::measured(
            counters,
            &state.rec,
            state.errors.clone(),
            elapsed,
            Duration::ZERO,
        )
    }
}
