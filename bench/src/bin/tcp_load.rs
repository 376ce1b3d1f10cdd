//! `tcp-load`: closed-loop L4 ping-pong. Each of C connections writes N bytes, reads N bytes
//! back, and records the round trip, for the warm-up plus the measured duration.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::args::Args;
use bench::progress::{self, Counters};
use bench::report::{self, ErrorCounts, ErrorKind, LoadReport, Recorder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "tcp-load --target 127.0.0.1:30890 [--connections 1] [--bytes 128]
         [--duration 10s] [--warmup 2s] [--json FILE]

Closed loop ping-pong: every connection sends --bytes, waits for them to come back, repeats.
Latency is recorded after --warmup for --duration. JSON result on stdout or --json FILE;
a progress line per second on stderr.";

fn main() {
    let args = Args::parse(USAGE, &[]);
    let target = args
        .opt_str("target")
        .unwrap_or_else(|| args.fail("--target is required"))
        .to_string();
    let connections: usize = args.get("connections", 1);
    let bytes: usize = args.get("bytes", 128);
    let duration = args.duration("duration", Duration::from_secs(10));
    let warmup = args.duration("warmup", Duration::from_secs(2));
    if connections == 0 || bytes == 0 {
        args.fail("--connections and --bytes must be at least 1");
    }

    let counters = Arc::new(Counters::default());
    let rt = bench::runner::tokio_runtime(1);
    let (recorder, errors) = rt.block_on(async {
        let start = Instant::now();
        let measure_from = start + warmup;
        let end = measure_from + duration;
        let progress = progress::spawn("tcp-load", counters.clone(), start, warmup);
        let target = Rc::new(target.clone());
        let local = tokio::task::LocalSet::new();
        let results = local
            .run_until(async {
                let mut tasks = Vec::new();
                for _ in 0..connections {
                    let (target, counters) = (target.clone(), counters.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        ping_pong(&target, bytes, measure_from, end, &counters).await
                    }));
                }
                report::merge_all(tasks).await
            })
            .await;
        counters
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = progress.join();
        results
    });

    let report = LoadReport {
        tool: "tcp-load".into(),
        mode: "closed".into(),
        target,
        connections,
        pipeline: 1,
        rate_per_s: None,
        payload_bytes: bytes,
        ..LoadReport::measured(&counters, &recorder, errors, duration, warmup)
    };
    if let Err(e) = report::emit(&report, args.opt_str("json")) {
        eprintln!("tcp-load: writing the report: {e}");
        std::process::exit(1);
    }
}

async fn ping_pong(
    target: &str,
    bytes: usize,
    measure_from: Instant,
    end: Instant,
    counters: &Counters,
) -> (Recorder, ErrorCounts) {
    let mut rec = Recorder::new();
    let mut errors = ErrorCounts::default();
    let mut stream = match tokio::net::TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcp-load: connect {target}: {e}");
            errors.add(ErrorKind::Connect);
            counters.error();
            return (rec, errors);
        }
    };
    let _ = stream.set_nodelay(true);
    let msg = vec![0x5au8; bytes];
    let mut back = vec![0u8; bytes];
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let io = async {
            stream.write_all(&msg).await?;
            stream.read_exact(&mut back).await
        };
        counters.sent(1);
        match tokio::time::timeout(Duration::from_secs(5), io).await {
            Ok(Ok(_)) if back == msg => {
                counters.received(1);
                if t0 >= measure_from {
                    rec.record(t0.elapsed());
                }
            }
            Ok(Ok(_)) => {
                errors.add(ErrorKind::Decode);
                counters.error();
                break;
            }
            Ok(Err(_)) => {
                errors.add(ErrorKind::Io);
                counters.error();
                break;
            }
            Err(_) => {
                errors.add(ErrorKind::Timeout);
                counters.error();
                break;
            }
        }
    }
    (rec, errors)
}
