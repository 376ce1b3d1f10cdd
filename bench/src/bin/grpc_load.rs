//! `grpc-load`: closed-loop gRPC unary load generator over prior-knowledge h2c (the `h2` crate
//! on a tokio current_thread runtime), with the same HDR histogram and JSON report as
//! `dubbo-load`.
//!
//! `--connections C --streams S`: C HTTP/2 connections, each keeping S unary calls
//! (`/helloworld.Greeter/SayHello`, one HelloRequest) in flight; each answer starts the next call
//! on the same connection. Latency is from the call's start to its trailers. A call counts as
//! good only with `:status 200` and `grpc-status: 0` (in trailers, or in the headers of a
//! trailers-only answer); anything else is an error by kind (status, decode, connect, timeout,
//! io). Calls still in flight when the run ends are neither.
//!
//! `--reconnect` behaves like a gRPC client's channel: once a connection takes no new stream (a
//! GOAWAY arrived, or it closed), a new connection is made for the calls that follow (counted in
//! `reconnects`). A call the old connection refused before sending it is not failed: it goes out
//! on the new connection, and its latency includes the wait for it. Calls the peer had accepted
//! and then lost still fail.
//!
//! Why not h2load: it reports min / max / mean / sd of request time only (no percentiles) and
//! never reads grpc-status, so a proxy answering UNIMPLEMENTED with :status 200 would look fine.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::args::Args;
use bench::grpc::{grpc_path, hello_request_frame};
use bench::progress::{self, Counters};
use bench::report::{self, ErrorCounts, ErrorKind, LoadReport, Recorder};
use bytes::Bytes;
use http::{HeaderMap, Request};

const USAGE: &str = "grpc-load --target 127.0.0.1:30870 [--connections 1] [--streams 1]
           [--duration 10s] [--warmup 2s] [--timeout 1s] [--payload 16] [--json FILE]
           [--header k:v]... [--reconnect] [--stop-file FILE]

Closed loop: --connections x --streams unary calls in flight (h2c, prior knowledge), each to
/helloworld.Greeter/SayHello with a HelloRequest of --payload bytes. Good = :status 200 and
grpc-status 0. Latency recorded after --warmup for --duration. JSON on stdout or --json FILE; a
progress line each second on stderr.
--reconnect: a connection that takes no new stream (GOAWAY, close) is replaced by a new one,
as a gRPC channel does (counted as reconnects); a call it refused before sending goes out on
the new one, timed from its first attempt.
--stop-file FILE: stop starting calls once FILE exists (checked every 50 ms), as if --duration
ended then.";

const CONNECT_TIMEOUT_MS: u64 = 2000;
const STREAM_WINDOW: u32 = 1 << 20;
const CONN_WINDOW: u32 = 16 << 20;

struct Opts {
    target: String,
    connections: usize,
    streams: usize,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    payload: usize,
    headers: Vec<(String, String)>,
    reconnect: bool,
    stop_file: Option<String>,
}

fn main() {
    let args = Args::parse(USAGE, &["reconnect"]);
    let target = args
        .opt_str("target")
        .unwrap_or_else(|| args.fail("--target is required"))
        .to_string();
    if target.parse::<std::net::SocketAddr>().is_err() {
        args.fail("--target must be IP:PORT");
    }
    let headers = args
        .opt_str("header")
        .map(|h| {
            h.split(',')
                .filter_map(|kv| kv.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let opts = Opts {
        target,
        connections: args.get("connections", 1),
        streams: args.get("streams", 1),
        duration: args.duration("duration", Duration::from_secs(10)),
        warmup: args.duration("warmup", Duration::from_secs(2)),
        timeout: args.duration("timeout", Duration::from_secs(1)),
        payload: args.get("payload", 16),
        headers,
        reconnect: args.flag("reconnect"),
        stop_file: args.opt_str("stop-file").map(str::to_string),
    };
    if opts.connections == 0 || opts.streams == 0 {
        args.fail("--connections and --streams must be at least 1");
    }

    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let progress = progress::spawn("grpc-load", counters.clone(), start, opts.warmup);
    let (rec, errors, reconnects) = closed_loop(&opts, start, &counters);
    counters.stop.store(true, Relaxed);
    let _ = progress.join();

    let report = LoadReport {
        tool: "grpc-load".into(),
        mode: "closed".into(),
        target: opts.target.clone(),
        connections: opts.connections,
        pipeline: opts.streams,
        rate_per_s: None,
        payload_bytes: opts.payload,
        reconnects,
        ..LoadReport::measured(&counters, &rec, errors, opts.duration, opts.warmup)
    };
    if let Err(e) = report::emit(&report, args.opt_str("json")) {
        eprintln!("grpc-load: writing the report: {e}");
        std::process::exit(1);
    }
}

/// What every call of a run shares.
struct Shared {
    uri: http::Uri,
    body: Bytes,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
    counters: Arc<Counters>,
    reconnect: bool,
    /// `--stop-file` appeared.
    stopped: std::cell::Cell<bool>,
}

impl Shared {
    /// The run is over: `--duration` ended or `--stop-file` appeared.
    fn over(&self) -> bool {
        self.stopped.get() || Instant::now() >= self.end
    }
}

fn closed_loop(
    opts: &Opts,
    start: Instant,
    counters: &Arc<Counters>,
) -> (Recorder, ErrorCounts, u64) {
    let rt = bench::runner::tokio_runtime(1);
    let measure_from = start + opts.warmup;
    let uri: http::Uri = match format!("http://{}{}", opts.target, grpc_path()).parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("grpc-load: bad target: {e}");
            std::process::exit(2);
        }
    };
    let headers = opts
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                http::HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();
    let shared = Rc::new(Shared {
        uri,
        body: hello_request_frame("ringside", opts.payload),
        headers,
        measure_from,
        end: measure_from + opts.duration,
        timeout: opts.timeout,
        counters: counters.clone(),
        reconnect: opts.reconnect,
        stopped: std::cell::Cell::new(false),
    });
    let local = tokio::task::LocalSet::new();
    let reconnects = Rc::new(std::cell::Cell::new(0u64));
    let (rec, errors) = rt.block_on(local.run_until(async {
        if let Some(file) = opts.stop_file.clone() {
            let shared = shared.clone();
            tokio::task::spawn_local(async move {
                while !shared.over() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if std::path::Path::new(&file).exists() {
                        shared.stopped.set(true);
                    }
                }
            });
        }
        let mut tasks = Vec::new();
        for _ in 0..opts.connections {
            let (target, shared, streams) = (opts.target.clone(), shared.clone(), opts.streams);
            let reconnects = reconnects.clone();
            tasks.push(tokio::task::spawn_local(async move {
                channel(&target, streams, shared, &reconnects).await
            }));
        }
        report::merge_all(tasks).await
    }));
    (rec, errors, reconnects.get())
}

/// One connection slot: with `--reconnect`, a new connection each time the current one takes no
/// new stream, until the run ends.
async fn channel(
    target: &str,
    streams: usize,
    shared: Rc<Shared>,
    reconnects: &std::cell::Cell<u64>,
) -> (Recorder, ErrorCounts) {
    let mut rec = Recorder::new();
    let mut errors = ErrorCounts::default();
    // Calls a connection refused before sending them: (lane, first attempt).
    let mut refused: Vec<Instant> = Vec::new();
    loop {
        let (r, e, gone) = connection(target, streams, shared.clone(), &mut refused).await;
        rec.merge(&r);
        errors.merge(&e);
        if !(shared.reconnect && gone) || shared.over() {
            break;
        }
        reconnects.set(reconnects.get() + 1);
    }
    (rec, errors)
}

/// One connection and its `streams` lanes; `refused` holds the first-attempt times of calls an
/// earlier connection refused, which go out first here (and on return, those this one
/// refused). True when the connection went away before the run ended.
async fn connection(
    target: &str,
    streams: usize,
    shared: Rc<Shared>,
    refused: &mut Vec<Instant>,
) -> (Recorder, ErrorCounts, bool) {
    let mut errors = ErrorCounts::default();
    let connect = tokio::net::TcpStream::connect(target);
    let tcp = match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect).await {
        Ok(Ok(s)) => s,
        other => {
            if let Ok(Err(e)) = other {
                eprintln!("grpc-load: connect {target}: {e}");
            }
            errors.add(ErrorKind::Connect);
            shared.counters.error();
            return (Recorder::new(), errors, false);
        }
    };
    let _ = tcp.set_nodelay(true);
    let handshake = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .handshake::<_, Bytes>(tcp)
        .await;
    let (client, conn) = match handshake {
        Ok(x) => x,
        Err(e) => {
            eprintln!("grpc-load: HTTP/2 handshake with {target}: {e}");
            errors.add(ErrorKind::Connect);
            shared.counters.error();
            return (Recorder::new(), errors, false);
        }
    };
    let driver = tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let mut lanes = Vec::new();
    for _ in 0..streams {
        let (client, shared) = (client.clone(), shared.clone());
        let first = refused.pop();
        lanes.push(tokio::task::spawn_local(lane(client, shared, first)));
    }
    refused.clear();
    let mut rec = Recorder::new();
    for l in lanes {
        if let Ok((r, e, end)) = l.await {
            rec.merge(&r);
            errors.merge(&e);
            if let Some(t0) = end {
                refused.push(t0);
            }
        }
    }
    driver.abort();
    let gone = !shared.over();
    (rec, errors, gone)
}

/// One stream slot of a connection: calls one after another until the run ends or the
/// connection goes away. `first`: the first attempt of a call an earlier connection refused,
/// made now. Returns, with `--reconnect`, the first attempt of the call this connection refused.
async fn lane(
    mut client: h2::client::SendRequest<Bytes>,
    shared: Rc<Shared>,
    mut first: Option<Instant>,
) -> (Recorder, ErrorCounts, Option<Instant>) {
    let mut rec = Recorder::new();
    let mut errors = ErrorCounts::default();
    let end = tokio::time::Instant::from_std(shared.end);
    while !shared.over() {
        let t0 = first.take().unwrap_or_else(Instant::now);
        let deadline = tokio::time::Instant::from_std(t0 + shared.timeout);
        let outcome = tokio::select! {
            r = call(&mut client, &shared) => Some(r),
            _ = tokio::time::sleep_until(deadline.min(end)) => None,
        };
        let now = Instant::now();
        match outcome {
            Some(Ok(())) => {
                shared.counters.received(1);
                if t0 >= shared.measure_from {
                    rec.record(now - t0);
                }
            }
            Some(Err(Failure::NotSent)) if shared.reconnect => return (rec, errors, Some(t0)),
            Some(Err(Failure::NotSent)) => {
                errors.add(ErrorKind::Io);
                shared.counters.error();
                break; // the connection is gone
            }
            Some(Err(Failure::Failed(kind))) => {
                errors.add(kind);
                shared.counters.error();
                if kind == ErrorKind::Io {
                    break; // the connection is gone
                }
            }
            None if shared.over() => break, // abandoned at the end of the run
            None => {
                errors.add(ErrorKind::Timeout);
                shared.counters.error();
            }
        }
    }
    (rec, errors, None)
}

/// Why a call did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The connection took no new stream (GOAWAY received, or closed): nothing was sent.
    NotSent,
    /// Sent, and failed this way.
    Failed(ErrorKind),
}

impl From<ErrorKind> for Failure {
    fn from(kind: ErrorKind) -> Failure {
        Failure::Failed(kind)
    }
}

async fn call(client: &mut h2::client::SendRequest<Bytes>, shared: &Shared) -> Result<(), Failure> {
    let ready = std::future::poll_fn(|cx| client.poll_ready(cx)).await;
    if ready.is_err() {
        return Err(Failure::NotSent);
    }
    let mut req = Request::post(shared.uri.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|_| Failure::Failed(ErrorKind::Decode))?;
    for (k, v) in &shared.headers {
        req.headers_mut().insert(k.clone(), v.clone());
    }
    let (response, mut send) = client
        .send_request(req, false)
        .map_err(|_| Failure::NotSent)?;
    shared.counters.sent(1);
    send.send_data(shared.body.clone(), true).map_err(h2_kind)?;
    let response = response.await.map_err(h2_kind)?;
    if response.status() != http::StatusCode::OK {
        return Err(ErrorKind::Status.into());
    }
    let head_status = grpc_status(response.headers());
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(h2_kind)?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(h2_kind)?;
    match trailers.as_ref().and_then(grpc_status).or(head_status) {
        Some(0) => Ok(()),
        Some(_) => Err(ErrorKind::Status.into()),
        None => Err(ErrorKind::Decode.into()),
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A stream reset by the peer is that call's failure; anything else broke the connection.
fn h2_kind(e: h2::Error) -> ErrorKind {
    if e.is_reset() && !e.is_go_away() {
        ErrorKind::Status
    } else {
        ErrorKind::Io
    }
}
