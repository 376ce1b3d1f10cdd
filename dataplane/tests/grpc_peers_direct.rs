//! The gRPC / Triple peers and their helpers (tests/common/grpc.rs) against each other directly,
//! client -> server with no proxy: proves the peers before the Triple proxy tests point them
//! through ringside. grpcio (PyPI grpcio 1.85.1), apache-dubbo 3.0.0b1 and h2load.

mod common;

use common::free_port;
use common::grpc::*;

const MB: usize = 1024 * 1024;

#[test]
fn grpcio_client_and_server_every_call_kind() {
    let s = GrpcServer::start(0, "alpha", &[]);

    let o = grpc_call(
        s.addr(),
        &CallOpts::new(Call::Unary)
            .count(2)
            .payload(2 * MB)
            .meta("tri-service-version", "1.0")
            .meta("tri-service-group", "gray")
            .meta("x-user", "vip"),
    );
    assert!(o.ok, "{o:?}");
    assert_eq!((o.code.as_str(), o.code_number), ("OK", 0));
    assert_eq!(o.servers(), ["alpha", "alpha"]);
    assert!(o.payload_ok);
    assert_eq!(o.replies[0].payload_bytes, 2 * MB as u64);
    assert_eq!(
        o.replies[0].metadata,
        [
            "tri-service-group=gray",
            "tri-service-version=1.0",
            "x-user=vip"
        ]
    );
    // Trailers the server adds reach the caller (a proxy must forward them).
    assert_eq!(
        o.trailers.get("x-server").map(String::as_str),
        Some("alpha")
    );

    let o = grpc_call(
        s.addr(),
        &CallOpts::new(Call::ServerStream).count(5).payload(100),
    );
    assert!(o.ok && o.payload_ok, "{o:?}");
    let seqs: Vec<i64> = o.replies.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);

    let o = grpc_call(
        s.addr(),
        &CallOpts::new(Call::ClientStream).count(4).payload(MB),
    );
    assert!(o.ok && o.payload_ok, "{o:?}");
    assert_eq!(o.replies.len(), 1);
    assert_eq!(o.replies[0].seq, 4, "requests the server counted");
    assert_eq!(o.replies[0].received_bytes, 4 * MB as u64);

    let o = grpc_call(s.addr(), &CallOpts::new(Call::Bidi).count(3).payload(1000));
    assert!(o.ok && o.payload_ok, "{o:?}");
    assert_eq!(o.replies.len(), 3);
}

#[test]
fn dubbo_triple_client_and_server_every_call_kind() {
    let s = GrpcServer::start_triple(0, "tri", &[]);
    let o = triple_call(
        s.addr(),
        &CallOpts::new(Call::Unary)
            .payload(MB)
            .meta("tri-service-version", "1.0")
            .meta("x-user", "vip"),
    );
    assert!(o.ok && o.payload_ok, "{o:?}");
    assert_eq!(o.servers(), ["tri"]);
    assert_eq!(
        o.replies[0].metadata,
        ["tri-service-version=1.0", "x-user=vip"]
    );
    let o = triple_call(s.addr(), &CallOpts::new(Call::ServerStream).count(3));
    assert!(o.ok && o.payload_ok && o.replies.len() == 3, "{o:?}");
    let o = triple_call(
        s.addr(),
        &CallOpts::new(Call::ClientStream).count(3).payload(10),
    );
    assert!(o.ok && o.payload_ok, "{o:?}");
    assert_eq!(o.replies[0].received_bytes, 30);
    let o = triple_call(s.addr(), &CallOpts::new(Call::Bidi).count(3));
    assert!(o.ok && o.payload_ok && o.replies.len() == 3, "{o:?}");
}

#[test]
fn grpcio_and_dubbo_triple_interoperate() {
    let g = GrpcServer::start(0, "g", &[]);
    let t = GrpcServer::start_triple(0, "t", &[]);

    // grpcio client -> Dubbo SDK server, every kind, 3 MB unary.
    for call in [
        Call::Unary,
        Call::ServerStream,
        Call::ClientStream,
        Call::Bidi,
    ] {
        let o = grpc_call(t.addr(), &CallOpts::new(call).count(2).payload(100));
        assert!(o.ok && o.payload_ok, "{call:?}: {o:?}");
        assert!(o.servers().iter().all(|s| *s == "t"));
    }
    let o = grpc_call(t.addr(), &CallOpts::new(Call::Unary).payload(3 * MB));
    assert!(o.ok && o.payload_ok, "{o:?}");

    // Dubbo SDK client -> grpcio server.
    let o = triple_call(g.addr(), &CallOpts::new(Call::Unary).meta("x-user", "vip"));
    assert!(o.ok && o.payload_ok, "{o:?}");
    assert_eq!(o.replies[0].metadata, ["x-user=vip"]);
    let o = triple_call(g.addr(), &CallOpts::new(Call::ServerStream).count(4));
    assert!(o.ok && o.replies.len() == 4, "{o:?}");
    // The SDK ends every request stream with one more, empty, message (its done_writing sends
    // a zero-length gRPC message with END_STREAM); grpcio counts it, so a client stream of 3
    // arrives as 4 messages. A proxy must pass it through like any other message.
    let o = triple_call(
        g.addr(),
        &CallOpts::new(Call::ClientStream).count(3).payload(10),
    );
    assert!(o.ok && o.payload_ok, "{o:?}");
    assert_eq!(o.replies[0].seq, 4);
    assert_eq!(o.replies[0].received_bytes, 30);
}

#[test]
fn deadline_exceeded_with_a_slow_server() {
    let g = GrpcServer::start(0, "slow", &["--delay-ms", "1500"]);
    let o = grpc_call(g.addr(), &CallOpts::new(Call::Unary).timeout_s(0.2));
    assert!(!o.ok);
    assert_eq!((o.code.as_str(), o.code_number), ("DEADLINE_EXCEEDED", 4));
    assert!(o.elapsed_ms < 1400.0, "{o:?}");
    let o = grpc_call(g.addr(), &CallOpts::new(Call::ServerStream).timeout_s(0.2));
    assert_eq!(o.code, "DEADLINE_EXCEEDED", "{o:?}");

    let t = GrpcServer::start_triple(0, "slow-tri", &["--delay-ms", "1500"]);
    let o = triple_call(t.addr(), &CallOpts::new(Call::Unary).timeout_s(0.3));
    assert_eq!(
        (o.code.as_str(), o.code_number),
        ("DEADLINE_EXCEEDED", 4),
        "{o:?}"
    );
}

#[test]
fn unavailable_when_nothing_listens() {
    let nobody = common::local(free_port());
    let o = grpc_call(nobody, &CallOpts::default());
    assert_eq!(
        (o.code.as_str(), o.code_number),
        ("UNAVAILABLE", 14),
        "{o:?}"
    );
    let o = triple_call(nobody, &CallOpts::default());
    assert_eq!(
        (o.code.as_str(), o.code_number),
        ("UNAVAILABLE", 14),
        "{o:?}"
    );
}

#[test]
fn error_statuses_and_unknown_service() {
    let g = GrpcServer::start(
        0,
        "nf",
        &["--status", "NOT_FOUND", "--message", "no such greeting"],
    );
    let o = grpc_call(g.addr(), &CallOpts::default());
    assert_eq!((o.code.as_str(), o.code_number), ("NOT_FOUND", 5), "{o:?}");
    assert_eq!(o.details, "no such greeting");
    assert_eq!(o.trailers.get("x-server").map(String::as_str), Some("nf"));

    let ok = GrpcServer::start(0, "ok", &[]);
    let o = grpc_call(ok.addr(), &CallOpts::default().service("helloworld.Nobody"));
    assert_eq!(
        (o.code.as_str(), o.code_number),
        ("UNIMPLEMENTED", 12),
        "{o:?}"
    );
    let o = triple_call(ok.addr(), &CallOpts::default().service("helloworld.Nobody"));
    assert_eq!(o.code, "UNIMPLEMENTED", "{o:?}");
}

#[test]
fn servers_exit_cleanly_on_sigterm() {
    let mut g = GrpcServer::start(0, "term", &[]);
    assert_eq!(g.terminate(), Ok(0));
    let mut t = GrpcServer::start_triple(0, "term-tri", &[]);
    assert_eq!(t.terminate(), Ok(0));
}

#[test]
fn h2load_100_streams_on_4_connections() {
    let g = GrpcServer::start(0, "load", &[]);
    let s = h2load(g.addr(), 400, 4, 25, &[]);
    assert_eq!(s.total, 400, "{}", s.output);
    assert_eq!(s.succeeded, 400, "{}", s.output);
    assert_eq!((s.failed, s.errored, s.timeout), (0, 0, 0), "{}", s.output);
    assert_eq!(s.status_2xx, 400, "{}", s.output);
    assert!(s.req_per_s > 0.0, "{}", s.output);
}

#[test]
fn h2load_summary_parses() {
    let text = "finished in 226.49ms, 1766.06 req/s, 161.53KB/s\n\
        requests: 400 total, 398 started, 397 done, 390 succeeded, 10 failed, 3 errored, 1 timeout\n\
        status codes: 390 2xx, 0 3xx, 7 4xx, 0 5xx\n";
    let s = parse_h2load(text).unwrap();
    assert_eq!(
        (
            s.total,
            s.started,
            s.done,
            s.succeeded,
            s.failed,
            s.errored,
            s.timeout
        ),
        (400, 398, 397, 390, 10, 3, 1)
    );
    assert_eq!((s.status_2xx, s.status_4xx), (390, 7));
    assert!((s.req_per_s - 1766.06).abs() < 1e-9);
    assert!(parse_h2load("connect failed").is_none());
}
