//! Hostile and broken Dubbo peers through the real binary: every request answered exactly once,
//! every buffer and timer bounded (issue 20).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use codec::dubbo::encode::{self, Arg, RequestBuilder};
use codec::dubbo::Status;
use common::dubbo::*;
use common::*;

const SVC: &str = "com.ringside.test.EchoService";

/// One counter or gauge from `/stats` (0 when absent).
fn stat(rs: &Ringside, name: &str) -> i64 {
    rs.stat_value(name).unwrap_or(0)
}

/// A config with one dubbo listener (default route to cluster `a`) and the clusters given as
/// raw YAML list items.
fn config(admin: SocketAddr, listen: SocketAddr, listener_extra: &str, clusters: &str) -> String {
    format!(
        "admin:\n  address: {admin}\nlisteners:\n  - name: dubbo\n    address: {listen}\n    protocol: dubbo\n    cluster: a\n{listener_extra}clusters:\n{clusters}"
    )
}

fn start(listener_extra: &str, clusters: &str) -> (Ringside, SocketAddr) {
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = Ringside::start(
        &config(admin, listen, listener_extra, clusters),
        admin,
        &["--shards", "1"],
    );
    (rs, listen)
}

/// Sends `n` requests (ids 1..=n, method `m<i>`) on `c`, one every `gap`, from another thread,
/// while this one collects the answers; panics on a request left unanswered.
fn calls_spread(c: &mut Consumer, n: u64, gap: Duration) -> Vec<Answer> {
    let mut w = c.conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for id in 1..=n {
            let m = format!("m{id}");
            w.write_all(&RequestBuilder::new(SVC, &m).request_id(id).build())
                .unwrap();
            std::thread::sleep(gap);
        }
    });
    let mut answers = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..n {
        let a = c.recv().unwrap_or_else(|| {
            let missing: Vec<u64> = (1..=n).filter(|i| !ids.contains(i)).collect();
            panic!("{} of {n} calls never answered: {missing:?}", missing.len())
        });
        assert!(ids.insert(a.id), "answered twice: {a:?}");
        answers.push(a);
    }
    sender.join().unwrap();
    answers
}

/// Issue 20: deadlines run while the connection is still connecting. One endpoint that never
/// completes its handshake, connect timeout 2 s, request timeout 500 ms: every call is
/// answered (31 when its deadline passes first, 80 when the connect fails first), nothing
/// stays active, and later calls are answered too.
#[test]
fn deadlines_run_while_connecting_to_a_black_hole() {
    let hole = BlackHole::new();
    let (rs, listen) = start(
        "",
        &format!(
            "  - name: a\n    endpoints: [\"{}\"]\n    connect_timeout_ms: 2000\n    timeout_ms: 500\n",
            hole.addr
        ),
    );
    let mut c = Consumer::connect(listen);
    let answers = calls_spread(&mut c, 120, Duration::from_millis(25));
    let timeouts = answers
        .iter()
        .filter(|a| a.status == Status::ServerTimeout)
        .count();
    for a in &answers {
        assert!(
            matches!(a.status, Status::ServerTimeout | Status::ServerError),
            "{a:?}"
        );
    }
    assert!(
        timeouts > 60,
        "deadlines of requests on a connecting connection must fire: {timeouts} of 120 got 31"
    );
    // Later calls are answered.
    for _ in 0..8 {
        let a = c.call(RequestBuilder::new(SVC, "later"));
        assert!(
            matches!(a.status, Status::ServerTimeout | Status::ServerError),
            "{a:?}"
        );
    }
    assert_eq!(stat(&rs, "cluster.a.upstream_rq_active"), 0);
    assert!(stat(&rs, "cluster.a.upstream_rq_timeout") >= timeouts as i64);
}

/// Issue 20: a request whose deadline passed while its connection was connecting is answered
/// (31) when the connect fails and the other requests move to the next endpoint; none is lost.
#[test]
fn expired_requests_are_answered_when_a_failed_connect_moves_the_rest() {
    let hole = BlackHole::new();
    let b = Provider::start("B");
    let (rs, listen) = start(
        "",
        &format!(
            "  - name: a\n    endpoints: [\"{}\", \"{}\"]\n    endpoint_metadata: [{{}}, {{priority: 1}}]\n    connect_timeout_ms: 2000\n    timeout_ms: 500\n",
            hole.addr, b.addr
        ),
    );
    let mut c = Consumer::connect(listen);
    let answers = calls_spread(&mut c, 120, Duration::from_millis(25));
    let count = |s: Status| answers.iter().filter(|a| a.status == s).count();
    assert!(count(Status::ServerTimeout) > 0, "no call timed out");
    assert!(count(Status::Ok) > 0, "no call moved to the next endpoint");
    for a in answers.iter().filter(|a| a.status == Status::Ok) {
        assert_eq!(a.text, format!("B|m{}|", a.id));
    }
    assert_eq!(
        stat(&rs, "cluster.a.upstream_rq_active"),
        0,
        "{}",
        rs.get("/stats").1
    );
    let later = c.call(RequestBuilder::new(SVC, "later"));
    assert!(
        matches!(
            later.status,
            Status::Ok | Status::ServerTimeout | Status::ServerError
        ),
        "{later:?}"
    );
}

/// Issue 20: a one-way request keeps no caller id on the shared upstream connection, so when a
/// failed connect moves requests to the next endpoint it can neither take over a two-way
/// request's entry (whose caller would get the one-way's answer) nor be dropped.
#[test]
fn one_way_requests_move_with_a_failed_connect_and_take_over_nothing() {
    let hole = BlackHole::new();
    let b = Provider::start("B");
    let (rs, listen) = start(
        "",
        &format!(
            "  - name: a\n    endpoints: [\"{}\", \"{}\"]\n    endpoint_metadata: [{{}}, {{priority: 1}}]\n    connect_timeout_ms: 1000\n    timeout_ms: 5000\n",
            hole.addr, b.addr
        ),
    );
    let mut c = Consumer::connect(listen);
    // The first two-way request on a new upstream connection gets upstream id 1; the one-way
    // request before it carries caller id 1.
    c.send_raw(
        &RequestBuilder::new(SVC, "oneway")
            .two_way(false)
            .request_id(1)
            .build(),
    );
    c.send_raw(&RequestBuilder::new(SVC, "twoway").request_id(50).build());
    let a = c.recv().expect("an answer");
    assert_eq!((a.id, a.status), (50, Status::Ok), "{a:?}");
    assert_eq!(
        a.text, "B|twoway|",
        "the two-way request got its own answer"
    );
    let seen = b.seen.lock().unwrap().clone();
    assert!(
        seen.contains(&"oneway".to_string()),
        "one-way request moved: {seen:?}"
    );
    assert_eq!(stat(&rs, "cluster.a.upstream_rq_active"), 0);
}

/// Issue 20: one-way requests count against the endpoint's pending limit (they wait in the
/// connection's queue like any other): beyond it they are shed and counted.
#[test]
fn one_way_requests_count_against_the_pending_limit() {
    let hole = BlackHole::new();
    let (rs, listen) = start(
        "",
        &format!(
            "  - name: a\n    endpoints: [\"{}\"]\n    connect_timeout_ms: 3000\n    pending_requests_max: 4\n",
            hole.addr
        ),
    );
    let mut c = Consumer::connect(listen);
    for id in 1..=10 {
        c.send_raw(
            &RequestBuilder::new(SVC, "oneway")
                .two_way(false)
                .request_id(id)
                .build(),
        );
    }
    let a = c.call(RequestBuilder::new(SVC, "twoway"));
    assert_eq!(a.status, Status::ServerThreadpoolExhausted, "{a:?}");
    assert_eq!(stat(&rs, "cluster.a.upstream_rq_overflow"), 7);
}

/// Issue 20: a response frame (request bit clear) from a consumer is a bad frame: answered
/// with 40 and the connection closed, instead of hanging.
#[test]
fn a_response_frame_from_a_consumer_is_answered_40_and_closed() {
    let a = Provider::start("A");
    let (rs, listen) = start(
        "",
        &format!("  - name: a\n    endpoints: [\"{}\"]\n", a.addr),
    );
    let mut c = Consumer::connect(listen);
    c.send_raw(&encode::response_ok(9, &Arg::Str("hi"), None));
    let ans = c.recv().expect("an answer");
    assert_eq!((ans.id, ans.status), (9, Status::BadRequest), "{ans:?}");
    assert!(ans.text.contains("response frame"), "{}", ans.text);
    assert!(c.recv().is_none(), "closed");
    assert_eq!(stat(&rs, "listener.dubbo.dubbo_rq_bad"), 1);
    let mut ok = Consumer::connect(listen);
    assert_eq!(ok.call(RequestBuilder::new(SVC, "x")).text, "A|x|");
}

/// Issue 20: one answer over the cluster's `response_bytes_max` (default 8 MiB) among 8
/// concurrent callers on one upstream connection: only its caller gets 80 (with the reason),
/// the frame is skipped, the 7 others are answered normally on the same connection.
#[test]
fn an_oversized_response_fails_only_its_own_request() {
    let a = Provider::start("A");
    let (rs, listen) = start(
        "",
        &format!("  - name: a\n    endpoints: [\"{}\"]\n", a.addr),
    );
    // Warm the one upstream connection.
    let mut warm = Consumer::connect(listen);
    assert_eq!(
        warm.call(RequestBuilder::new(SVC, "warm")).status,
        Status::Ok
    );
    let mut c0 = Consumer::connect(listen);
    let big_id = c0.send(RequestBuilder::new(SVC, "big").args(&[Arg::Int(9 << 20)]));
    let others: Vec<_> = (0..7)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Consumer::connect(listen);
                let s = format!("small{i}");
                let arg = [Arg::Str(&s)];
                let ans = c.call(RequestBuilder::new(SVC, "small").args(&arg));
                (ans, format!("A|small|{s}"))
            })
        })
        .collect();
    for t in others {
        let (ans, want) = t.join().unwrap();
        assert_eq!(ans.status, Status::Ok, "{ans:?}");
        assert_eq!(ans.text, want);
    }
    let ans = c0.recv().expect("an answer to the big request");
    assert_eq!(
        (ans.id, ans.status),
        (big_id, Status::ServerError),
        "{}",
        ans.text
    );
    assert!(ans.text.contains("response_bytes_max"), "{}", ans.text);
    // The connection stayed up and still works.
    assert_eq!(c0.call(RequestBuilder::new(SVC, "after")).text, "A|after|");
    assert_eq!(stat(&rs, "cluster.a.upstream_cx_total"), 1);
    assert_eq!(stat(&rs, "cluster.a.upstream_rsp_too_large"), 1);
}

/// Issue 20: an upstream connection with no request for the cluster's `idle_timeout_ms` is
/// closed (and counted); the next request opens a new one.
#[test]
fn an_idle_upstream_connection_is_closed() {
    let a = Provider::start("A");
    let (rs, listen) = start(
        "",
        &format!(
            "  - name: a\n    endpoints: [\"{}\"]\n    idle_timeout_ms: 300\n",
            a.addr
        ),
    );
    let mut c = Consumer::connect(listen);
    assert_eq!(c.call(RequestBuilder::new(SVC, "one")).text, "A|one|");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stat(&rs, "cluster.a.upstream_cx_active") != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle upstream connection not closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stat(&rs, "cluster.a.upstream_cx_idle_timeout"), 1);
    assert_eq!(c.call(RequestBuilder::new(SVC, "two")).text, "A|two|");
    assert_eq!(stat(&rs, "cluster.a.upstream_cx_total"), 2);
}

/// Reads until EOF or reset; true if that came within `within`.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    let deadline = std::time::Instant::now() + within;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Issue 20: connections that never send a frame, stop sending (no heartbeat) or stay idle
/// hold no slot forever: each timer closes them and is counted; a consumer that heartbeats
/// outlives the heartbeat timer.
#[test]
fn first_frame_heartbeat_and_idle_timers_close_silent_consumers() {
    let a = Provider::start("A");
    let (rs, listen) = start(
        "    idle_timeout_ms: 1500\n    dubbo: {first_frame_timeout_ms: 300, heartbeat_timeout_ms: 600}\n",
        &format!("  - name: a\n    endpoints: [\"{}\"]\n", a.addr),
    );
    // Never sends a frame.
    let mut silent = std::net::TcpStream::connect(listen).unwrap();
    // Sends one heartbeat, then nothing.
    let mut quiet = Consumer::connect(listen);
    quiet.send_raw(&encode::heartbeat_request(1));
    assert_eq!(quiet.recv().expect("heartbeat answered").id, 1);
    // Heartbeats every 150 ms and calls once: outlives the heartbeat timer, then goes idle.
    let mut live = Consumer::connect(listen);
    assert_eq!(live.call(RequestBuilder::new(SVC, "x")).text, "A|x|");
    let mut live_w = live.conn.try_clone().unwrap();
    let beat = std::thread::spawn(move || {
        for id in 2.. {
            if live_w.write_all(&encode::heartbeat_request(id)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)),
        "first-frame timer"
    );
    assert!(
        closed_within(&mut quiet.conn, Duration::from_secs(3)),
        "heartbeat timer"
    );
    assert_eq!(stat(&rs, "listener.dubbo.dubbo_cx_first_frame_timeout"), 1);
    assert_eq!(stat(&rs, "listener.dubbo.dubbo_cx_heartbeat_timeout"), 1);
    assert_eq!(
        stat(&rs, "listener.dubbo.dubbo_cx_idle_timeout"),
        0,
        "live one still open"
    );
    assert!(
        closed_within(&mut live.conn, Duration::from_secs(6)),
        "idle timer"
    );
    beat.join().unwrap();
    assert_eq!(stat(&rs, "listener.dubbo.dubbo_cx_idle_timeout"), 1);
    assert_eq!(stat(&rs, "listener.dubbo.dubbo_cx_heartbeat_timeout"), 1);
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Writes `chunk` over and over for `for_how_long` (or until the peer closes), tracking
/// ringside's peak RSS; returns (peak RSS growth in MiB, whether ringside closed the
/// connection).
fn flood(
    rs: &Ringside,
    s: &mut std::net::TcpStream,
    chunk: &[u8],
    for_how_long: Duration,
) -> (u64, bool) {
    let pid = rs.child.id();
    let base = rss_kib(pid);
    let mut peak = base;
    s.set_write_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let t = std::time::Instant::now();
    let (mut closed, mut at) = (false, 0);
    while t.elapsed() < for_how_long {
        // Whole frames only: a partial write goes on where it stopped.
        match s.write(&chunk[at..]) {
            Ok(n) => at = (at + n) % chunk.len(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        peak = peak.max(rss_kib(pid));
    }
    ((peak - base) / 1024, closed)
}

/// Issue 20: a consumer that never reads while sending heartbeats: ringside stops reading it
/// once `output_bytes_max` of answers are queued and closes it when that lasts past
/// `output_stall_timeout_ms`; its memory stays bounded, other consumers are unaffected.
#[test]
fn a_consumer_that_never_reads_its_heartbeat_answers_is_bounded_and_closed() {
    let a = Provider::start("A");
    let (rs, listen) = start(
        "    dubbo: {output_stall_timeout_ms: 1500}\n",
        &format!("  - name: a\n    endpoints: [\"{}\"]\n", a.addr),
    );
    let mut other = Consumer::connect(listen);
    assert_eq!(other.call(RequestBuilder::new(SVC, "x")).text, "A|x|");
    let mut s = std::net::TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let chunk: Vec<u8> = (0..4096)
        .flat_map(|i| encode::heartbeat_request(i).to_vec())
        .collect();
    let (grew_mib, _) = flood(&rs, &mut s, &chunk, Duration::from_secs(4));
    eprintln!("ringside grew by {grew_mib} MiB");
    assert!(
        grew_mib < 100,
        "ringside grew by {grew_mib} MiB for one consumer that does not read"
    );
    assert_eq!(other.call(RequestBuilder::new(SVC, "y")).text, "A|y|");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "the consumer was not closed"
    );
    assert_eq!(
        stat(&rs, "listener.dubbo.dubbo_cx_output_full"),
        1,
        "{}",
        rs.get("/stats").1
    );
    assert_eq!(other.call(RequestBuilder::new(SVC, "z")).text, "A|z|");
}

/// Issue 20: a consumer that never reads while asking for 1 MiB answers: the answers to its
/// requests in flight are bounded too (the queue may reach twice `output_bytes_max`, then the
/// consumer is closed); other consumers are unaffected.
#[test]
fn a_consumer_that_never_reads_its_large_answers_is_bounded_and_closed() {
    let a = Provider::start("A");
    // The other consumers' provider is another one: the test provider answers one
    // connection's requests in order, so its own backlog would delay them.
    let b = Provider::start("B");
    let (rs, listen) = start(
        "    dubbo:\n      routes:\n        - match: {method: {exact: small}}\n          route: {cluster: b}\n",
        &format!(
            "  - name: a\n    endpoints: [\"{}\"]\n  - name: b\n    endpoints: [\"{}\"]\n",
            a.addr, b.addr
        ),
    );
    let mut other = Consumer::connect(listen);
    assert_eq!(
        other.call(RequestBuilder::new(SVC, "small")).text,
        "B|small|"
    );
    let mut s = std::net::TcpStream::connect(listen).unwrap();
    // 256 requests for 1 MiB answers, written once.
    let chunk: Vec<u8> = (0..256)
        .flat_map(|i| {
            RequestBuilder::new(SVC, "big")
                .args(&[Arg::Int(1 << 20)])
                .request_id(i)
                .build()
                .to_vec()
        })
        .collect();
    s.write_all(&chunk).unwrap();
    let (pid, base) = (rs.child.id(), rss_kib(rs.child.id()));
    let mut peak = base;
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    let grew_mib = (peak - base) / 1024;
    eprintln!("ringside grew by {grew_mib} MiB");
    assert!(
        grew_mib < 100,
        "ringside grew by {grew_mib} MiB for one consumer that does not read"
    );
    assert_eq!(
        other.call(RequestBuilder::new(SVC, "small")).text,
        "B|small|"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(15)),
        "the consumer was not closed"
    );
    assert_eq!(stat(&rs, "listener.dubbo.dubbo_cx_output_full"), 1);
    assert_eq!(
        other.call(RequestBuilder::new(SVC, "small")).text,
        "B|small|"
    );
}

/// Found by the `dubbo_conn` fuzz target (corpus `regress_oneway_then_bad_frame_connection_closes`):
/// a consumer that sent a one-way request and then a bad frame, or EOF, kept its connection
/// open forever: releasing the one-way request woke the reader but not the writer, which closes
/// a finished connection only once nothing is in flight. The one-way request here waits on a
/// connect that fails after 300 ms, so it is still in flight when the reader is done.
#[test]
fn a_one_way_request_then_a_bad_frame_or_eof_closes_the_connection() {
    let hole = BlackHole::new();
    let (rs, listen) = start(
        "",
        &format!(
            "  - name: a\n    endpoints: [\"{}\"]\n    connect_timeout_ms: 300\n",
            hole.addr
        ),
    );
    let oneway = RequestBuilder::new(SVC, "oneway")
        .two_way(false)
        .request_id(1)
        .build();
    // One-way request, then a bad frame (answered 40).
    let mut bad = Consumer::connect(listen);
    let mut o = oneway.to_vec();
    o.extend_from_slice(b"\xda\xbb\x00garbage that is not a dubbo header");
    bad.send_raw(&o);
    let a = bad.recv().expect("the bad frame is answered");
    assert_eq!(a.status, Status::BadRequest, "{a:?}");
    // One-way request, then EOF.
    let mut eof = Consumer::connect(listen);
    eof.send_raw(&oneway);
    eof.conn.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        closed_within(&mut bad.conn, Duration::from_secs(3)),
        "the connection that sent a bad frame after a one-way request stays open"
    );
    assert!(
        closed_within(&mut eof.conn, Duration::from_secs(3)),
        "the connection that ended after a one-way request stays open"
    );
    let mut gone = false;
    for _ in 0..100 {
        if stat(&rs, "listener.dubbo.downstream_cx_active") == 0 {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone, "{}", rs.get("/stats").1);
}

/// Waits until `f` holds (or `within` passes); returns whether it did.
fn wait_for(within: Duration, f: impl Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Issue 20, per-process ceilings: what a shard holds buffered is bounded by
/// `runtime.buffered_bytes_per_shard_max`, whatever each connection's own bound. A consumer
/// that stops reading while 24 answers of 1 MiB are queued for it (under its own 64 MiB
/// `output_bytes_max`) exhausts a 4 MiB budget: another consumer's new call is shed with
/// status 100 naming the budget and counted in `shard.0.rq_shed_memory`. The calls admitted
/// before are not broken: once the first consumer reads, each of its 24 gets its whole answer;
/// then the gauge `shard.0.buffered_bytes` is back where it was and calls go through again.
#[test]
fn the_shard_buffer_budget_sheds_new_requests_when_exhausted() {
    let a = Provider::start("A");
    let b = Provider::start("B");
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg = format!(
        "runtime:\n  buffered_bytes_per_shard_max: {}\n{}",
        4 << 20,
        config(
            admin,
            listen,
            "    dubbo:\n      output_bytes_max: 67108864\n      output_stall_timeout_ms: 60000\n      routes:\n        - match: {method: {exact: small}}\n          route: {cluster: b}\n",
            &format!(
                "  - name: a\n    endpoints: [\"{}\"]\n  - name: b\n    endpoints: [\"{}\"]\n",
                a.addr, b.addr
            ),
        )
    );
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    let gauge = || stat(&rs, "shard.0.buffered_bytes");
    let mut other = Consumer::connect(listen);
    assert_eq!(
        other.call(RequestBuilder::new(SVC, "small")).text,
        "B|small|"
    );
    // The gauge is published every second.
    std::thread::sleep(Duration::from_millis(1_200));
    let base = gauge();
    let mut hog = Consumer::connect(listen);
    for _ in 0..24 {
        hog.send(RequestBuilder::new(SVC, "big").args(&[Arg::Int(1 << 20)]));
    }
    assert!(
        wait_for(Duration::from_secs(10), || gauge() >= 4 << 20),
        "answers queued for a consumer that does not read are charged: gauge {}",
        gauge()
    );
    let shed = other.call(RequestBuilder::new(SVC, "small"));
    assert_eq!(
        shed.status,
        Status::ServerThreadpoolExhausted,
        "a new call is shed while the budget is exhausted: {shed:?}"
    );
    assert!(
        shed.text.contains("buffer budget exhausted"),
        "the answer says why: {}",
        shed.text
    );
    // Heartbeats are still answered (they hold nothing).
    other.send_raw(&encode::heartbeat_request(99));
    let hb = other.recv().expect("heartbeat answer");
    assert_eq!((hb.id, hb.status), (99, Status::Ok));
    assert_eq!(stat(&rs, "shard.0.rq_shed_memory"), 1);
    let answers = hog.recv_n(24);
    assert_eq!(answers.len(), 24);
    for a in answers.values() {
        assert!(
            a.status == Status::Ok && a.frame.len() > 1 << 20,
            "an admitted call is answered whole (id {}: {:?}, {} bytes)",
            a.id,
            a.status,
            a.frame.len()
        );
    }
    assert!(
        wait_for(Duration::from_secs(5), || gauge() <= base),
        "buffered bytes back to {base} once the answers are read: {}",
        gauge()
    );
    drop(hog);
    assert_eq!(
        other.call(RequestBuilder::new(SVC, "small")).text,
        "B|small|"
    );
    assert_eq!(stat(&rs, "shard.0.rq_shed_memory"), 1);
}

/// Issue 20, per-process ceilings: a large request that arrives while the shard is over its
/// buffer budget is shed from its header (answered 100 before its body is in, the body
/// discarded as it comes, never buffered), and its connection goes on with the next frame. A
/// request read in part holds its read buffer's room: a consumer that sends 5 of the 6 MiB of
/// one request exhausts a 4 MiB budget; once it sends the rest, its request goes through.
#[test]
fn a_large_request_is_shed_from_its_header_while_the_budget_is_exhausted() {
    let a = Provider::start("A");
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg = format!(
        "runtime:\n  buffered_bytes_per_shard_max: {}\n{}",
        4 << 20,
        config(
            admin,
            listen,
            "",
            &format!("  - name: a\n    endpoints: [\"{}\"]\n", a.addr),
        )
    );
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    let gauge = || stat(&rs, "shard.0.buffered_bytes");
    let body = vec![7u8; 6 << 20];
    let large = |id| {
        RequestBuilder::new(SVC, "up")
            .args(&[Arg::Bytes(&body)])
            .request_id(id)
            .build()
    };
    let mut c = Consumer::connect(listen);
    assert_eq!(c.call(RequestBuilder::new(SVC, "x")).text, "A|x|");
    std::thread::sleep(Duration::from_millis(1_200));
    let base = gauge();
    let mut hog = Consumer::connect(listen);
    let first = large(1);
    hog.send_raw(&first[..5 << 20]);
    assert!(
        wait_for(Duration::from_secs(10), || gauge() >= 4 << 20),
        "a request read in part holds its room: gauge {}",
        gauge()
    );
    let second = large(7);
    c.send_raw(&second[..1 << 20]);
    let shed = c
        .recv()
        .expect("shed from its header, before its body is in");
    assert_eq!(
        (shed.id, shed.status),
        (7, Status::ServerThreadpoolExhausted),
        "{shed:?}"
    );
    assert!(
        shed.text.contains("buffer budget exhausted"),
        "{}",
        shed.text
    );
    assert_eq!(stat(&rs, "shard.0.rq_shed_memory"), 1);
    // The rest of its body is discarded; the next frame on the connection is read as one.
    c.send_raw(&second[1 << 20..]);
    hog.send_raw(&first[5 << 20..]);
    let a1 = hog.recv().expect("the request read in part goes through");
    assert_eq!((a1.id, a1.text.as_str()), (1, "A|up|6291456 bytes"));
    assert!(
        wait_for(Duration::from_secs(5), || gauge() <= base),
        "buffered bytes back to {base}: {}",
        gauge()
    );
    assert_eq!(c.call(RequestBuilder::new(SVC, "after")).text, "A|after|");
    assert_eq!(stat(&rs, "shard.0.rq_shed_memory"), 1);
}
