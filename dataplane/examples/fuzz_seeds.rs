//! Writes the seed corpora of the connection fuzz targets (dataplane/fuzz): short scripts of
//! meaningful conversations (a call answered, a connect refused and retried elsewhere, a
//! deadline passing while connecting, a provider dying with calls in flight, a cancelled
//! stream, a server's GOAWAY, a zero window). Usage:
//! `cargo run --release -p dataplane --features fuzz --example fuzz_seeds -- dataplane/fuzz/corpus`;
//! `... --example fuzz_seeds -- --replay dubbo_conn|triple_conn FILE...` replays inputs.

use std::path::Path;

use dataplane::fuzzing::{dubbo, triple};

/// Writes the seeds of `target`, each checked first: it runs through the target's script
/// without breaking an invariant.
fn write(dir: &Path, target: &str, seeds: &[(&str, Vec<u8>)]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus dir");
    for (name, seed) in seeds {
        eprintln!("{target}/{name}");
        match target {
            "dubbo_conn" => dubbo::run(seed, no_heap),
            _ => triple::run(seed, no_heap),
        }
        std::fs::write(d.join(name), seed).expect("write seed");
    }
}

/// The heap is not measured here (the fuzz targets count it).
fn no_heap() -> usize {
    0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--replay") {
        // `--replay TARGET FILE...`: runs inputs (a crash libFuzzer left) through a script
        // without instrumentation, with ringside's logs (RUST_LOG=debug).
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
        let target = args.get(2).expect("--replay TARGET FILE...");
        for f in &args[3..] {
            let data = std::fs::read(f).expect("read input");
            eprintln!("{target}: {f}");
            match target.as_str() {
                "dubbo_conn" => dubbo::run(&data, no_heap),
                _ => triple::run(&data, no_heap),
            }
        }
        return;
    }
    let dir = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "dataplane/fuzz/corpus".into());
    let dir = Path::new(&dir);
    dubbo_seeds(dir);
    triple_seeds(dir);
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// One operation: its code and four argument bytes (raw bytes, if any, follow).
fn op(code: u8, args: &[u8]) -> Vec<u8> {
    let mut v = vec![code];
    v.extend_from_slice(args);
    v.resize(5, 0);
    v
}

fn dubbo_seeds(dir: &Path) {
    use dubbo::op::*;
    // REQUEST: consumer pick, flags (bit 0 two-way, bits 1-2 echo/slow/unroutable), id, size.
    let call = |c: u8, flags: u8, id: u8| op(REQUEST, &[c, flags, id, 2]);
    let reply = |p: u8, which: u8, kind: u8| op(REPLY, &[p, which, kind]);
    let accept = || op(ACCEPT, &[0]);
    write(
        dir,
        "dubbo_conn",
        &[
            (
                "call_answered",
                cat(&[call(0, 1, 1), accept(), reply(0, 0, 0)]),
            ),
            (
                "heartbeat_oneway_error",
                cat(&[
                    op(HEARTBEAT, &[0, 7]),
                    call(0, 0, 9),
                    accept(),
                    call(0, 1, 2),
                    reply(0, 0, 1),
                ]),
            ),
            (
                "connect_refused_moves",
                cat(&[
                    call(0, 1, 1),
                    call(0, 1, 2),
                    op(REFUSE, &[0]),
                    accept(),
                    reply(0, 0, 0),
                    reply(0, 1, 2),
                ]),
            ),
            (
                "deadline_while_connecting",
                cat(&[call(0, 3, 1), op(SLEEP, &[]), accept(), reply(0, 0, 0)]),
            ),
            (
                "two_consumers_provider_dies",
                cat(&[
                    call(0, 1, 1),
                    call(1, 1, 1),
                    accept(),
                    accept(),
                    reply(0, 0, 0),
                    op(UP_CLOSE, &[0, 1]),
                ]),
            ),
            (
                "pending_limit_not_reading",
                cat(&[
                    op(READING, &[0]),
                    call(0, 1, 1),
                    call(0, 1, 2),
                    call(0, 1, 3),
                    call(0, 1, 4),
                    call(0, 1, 5),
                    call(0, 1, 6),
                    accept(),
                    accept(),
                    reply(0, 0, 2),
                    reply(1, 0, 2),
                    op(READING, &[0]),
                ]),
            ),
            (
                "provider_events_duplicate_unknown",
                cat(&[
                    call(0, 1, 1),
                    accept(),
                    op(UP_EVENT, &[0, 5, 0]),
                    op(UP_EVENT, &[0, 6, 1]),
                    reply(0, 0, 3),
                    reply(0, 0, 0),
                    reply(0, 0, 0),
                ]),
            ),
            (
                "unroutable_and_bad_magic",
                cat(&[call(0, 5, 1), op(RAW, &[0, 4]), vec![0xda, 0xbc, 0xc2, 0]]),
            ),
        ],
    );
}

fn triple_seeds(dir: &Path) {
    use triple::op::*;
    // HEADERS: stream select (< 128: new stream), pick (bits 0-1 method, 2 grpc-timeout 1m,
    // 3 END_STREAM). DATA: stream, length / 8, END_STREAM. RESPOND: server, stream, what, len.
    let new = |pick: u8| op(HEADERS, &[0, pick]);
    let data = |sel: u8| op(DATA, &[sel, 2, 1]);
    let respond = |sel: u8, what: u8| op(RESPOND, &[0, sel, what, 1]);
    let accept = |max: u8| op(ACCEPT, &[0, max]);
    write(
        dir,
        "triple_conn",
        &[
            (
                "unary_call",
                cat(&[new(0), data(0), accept(0), respond(0, 0)]),
            ),
            (
                "unknown_service_and_trailers_only",
                cat(&[new(2 | 8), new(8), accept(0), respond(0, 1)]),
            ),
            (
                "deadline_passes",
                cat(&[new(4 | 8), op(SLEEP, &[]), accept(0), respond(0, 0)]),
            ),
            (
                "caller_cancels",
                cat(&[new(0), data(0), accept(0), op(RST, &[0, 8]), respond(0, 0)]),
            ),
            (
                "refused_then_server_goaway",
                cat(&[
                    new(8),
                    op(REFUSE, &[0]),
                    new(8),
                    accept(1),
                    new(8),
                    new(8),
                    op(UP_GOAWAY, &[0, 1]),
                    respond(0, 0),
                ]),
            ),
            (
                "zero_window_large_answer",
                cat(&[
                    op(SETTINGS, &[4, 0, 0]),
                    new(0),
                    data(0),
                    accept(0),
                    op(RESPOND, &[0, 0, 2, 0]),
                    op(RESPOND, &[0, 0, 3, 255]),
                    op(WINDOW_UPDATE, &[1, 0xff, 0xff]),
                    op(RST, &[0, 8]),
                ]),
            ),
            (
                "trailers_ping_close",
                cat(&[
                    new(0),
                    op(HEADERS, &[200, 0]),
                    op(PING, &[1]),
                    accept(3),
                    respond(0, 0),
                    op(CLOSE, &[]),
                ]),
            ),
        ],
    );
}
