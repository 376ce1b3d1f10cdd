//! The Dubbo2 proxy through the real binary, with Rust test providers and consumers: routing,
//! local replies, malformed input, failures, timeouts, multiplexing.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use codec::dubbo::encode::{self, Arg, RequestBuilder};
use codec::dubbo::Status;
use common::dubbo::*;
use common::*;

const SVC: &str = "com.ringside.test.EchoService";

fn start(
    clusters: &[(&str, &[std::net::SocketAddr])],
    extra: &str,
    shards: &str,
) -> (Ringside, std::net::SocketAddr) {
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = Ringside::start(
        &dubbo_config(admin, listen, clusters, extra),
        admin,
        &["--shards", shards],
    );
    (rs, listen)
}

#[test]
fn forwards_and_routes_by_method_version_group_argument_attachment() {
    let a = Provider::start("A");
    let b = Provider::start("B");
    let routes = "    cluster: a\n    dubbo:\n      routes:\n\
        \x20       - match: {method: {exact: toB}}\n          route: {cluster: b}\n\
        \x20       - match: {version: '2.0.0'}\n          route: {cluster: b}\n\
        \x20       - match: {group: blue}\n          route: {cluster: b}\n\
        \x20       - match: {arguments: [{index: 0, prefix: 'vip-'}]}\n          route: {cluster: b}\n\
        \x20       - match: {attachments: [{name: tag, exact: gray}]}\n          route: {cluster: b}\n";
    let (_rs, listen) = start(&[("a", &[a.addr]), ("b", &[b.addr])], routes, "2");
    let mut c = Consumer::connect(listen);
    let who = |c: &mut Consumer, b: RequestBuilder<'_>| {
        let ans = c.call(b);
        assert_eq!(ans.status, Status::Ok, "{ans:?}");
        ans.text
    };
    let args = [Arg::Str("hello")];
    let base = RequestBuilder::new(SVC, "echo").args(&args);
    assert_eq!(who(&mut c, base), "A|echo|hello", "default route");
    assert_eq!(
        who(&mut c, RequestBuilder::new(SVC, "toB").args(&args)),
        "B|toB|hello"
    );
    assert_eq!(who(&mut c, base.version("2.0.0")), "B|echo|hello");
    assert_eq!(who(&mut c, base.version("1.0.0")), "A|echo|hello");
    assert_eq!(who(&mut c, base.group("blue")), "B|echo|hello");
    let vip = [Arg::Str("vip-7")];
    assert_eq!(
        who(&mut c, RequestBuilder::new(SVC, "echo").args(&vip)),
        "B|echo|vip-7"
    );
    let att = [("tag", "gray")];
    assert_eq!(who(&mut c, base.attachments(&att)), "B|echo|hello");

    // Argument kinds pass through untouched.
    let ints = [Arg::Int(42)];
    assert_eq!(
        who(&mut c, RequestBuilder::new(SVC, "int").args(&ints)),
        "A|int|42"
    );
    assert_eq!(who(&mut c, RequestBuilder::new(SVC, "none")), "A|none|");
    let big = vec![7u8; 2 << 20];
    let bin = [Arg::Bytes(&big)];
    assert_eq!(
        who(&mut c, RequestBuilder::new(SVC, "large").args(&bin)),
        format!("A|large|{} bytes", 2 << 20)
    );
}

#[test]
fn no_route_is_answered_quickly_and_the_connection_stays_usable() {
    let a = Provider::start("A");
    let routes = "    dubbo:\n      routes:\n        - match: {interface: {exact: com.known.Svc}}\n          route: {cluster: a}\n";
    let (rs, listen) = start(&[("a", &[a.addr])], routes, "1");
    let mut c = Consumer::connect(listen);
    // Answered by ringside at once, not after a timeout: the fastest of a few tries is well
    // under 100 ms even on a busy CI machine (the cluster timeout is 1 s).
    let mut fastest = Duration::MAX;
    let mut ans = None;
    for _ in 0..5 {
        let t = Instant::now();
        ans = Some(
            c.call(
                RequestBuilder::new("com.unknown.Svc", "get")
                    .version("1.0.0")
                    .group("g"),
            ),
        );
        fastest = fastest.min(t.elapsed());
    }
    let ans = ans.unwrap();
    assert!(
        fastest < Duration::from_millis(100),
        "answered in {fastest:?}"
    );
    assert_eq!(ans.status, Status::ServiceNotFound);
    assert!(
        ans.text
            .contains("no route for com.unknown.Svc:1.0.0 method get (group g)"),
        "{}",
        ans.text
    );
    let ans = c.call(RequestBuilder::new("com.known.Svc", "get"));
    assert_eq!(ans.status, Status::Ok);
    assert_eq!(ans.text, "A|get|");
    let (_, stats) = rs.get("/stats");
    assert!(
        stats.contains("listener.dubbo.dubbo_rq_no_route: 5"),
        "{stats}"
    );
    assert!(stats.contains("listener.dubbo.dubbo_rsp_ok: 1"), "{stats}");
    assert!(
        stats.contains("dubbo_route.dubbo.routes[0].rsp_ok: 1"),
        "{stats}"
    );
    assert!(
        stats.contains("dubbo_route.dubbo.default.rq_total: 0"),
        "{stats}"
    );
}

#[test]
fn heartbeats_are_answered_by_ringside() {
    let a = Provider::start("A");
    let (_rs, listen) = start(&[("a", &[a.addr])], "    cluster: a\n", "1");
    let mut c = Consumer::connect(listen);
    c.send_raw(&encode::heartbeat_request(77));
    let ans = c.recv().unwrap();
    assert_eq!(ans.id, 77);
    assert!(
        ans.frame[2] & 0x20 != 0,
        "event flag set on the heartbeat response"
    );
    assert_eq!(
        a.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "not forwarded"
    );
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let a = Provider::start("A");
    let (rs, listen) = start(
        &[("a", &[a.addr])],
        "    cluster: a\n    dubbo: {frame_bytes_max: 1048576}\n",
        "1",
    );
    let mut healthy = Consumer::connect(listen);
    assert_eq!(
        healthy.call(RequestBuilder::new(SVC, "x")).status,
        Status::Ok
    );

    // Bad magic: no request id to answer; closed.
    let mut c = Consumer::connect(listen);
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    assert!(c.recv().is_none(), "closed without a reply");

    // Oversized length: answered with 40 from the header alone, then closed.
    let mut c = Consumer::connect(listen);
    let mut hdr = RequestBuilder::new(SVC, "x").request_id(9).build().to_vec();
    hdr.truncate(16);
    hdr[12..16].copy_from_slice(&(64u32 << 20).to_be_bytes());
    c.send_raw(&hdr);
    let ans = c.recv().unwrap();
    assert_eq!((ans.id, ans.status), (9, Status::BadRequest), "{ans:?}");
    assert!(c.recv().is_none());

    // Truncated Hessian: a whole frame whose preamble is cut short.
    let mut c = Consumer::connect(listen);
    let full = RequestBuilder::new(SVC, "x").request_id(5).build().to_vec();
    let mut cut = full[..16 + 6].to_vec();
    cut[12..16].copy_from_slice(&6u32.to_be_bytes());
    c.send_raw(&cut);
    let ans = c.recv().unwrap();
    assert_eq!((ans.id, ans.status), (5, Status::BadRequest), "{ans:?}");
    assert!(
        ans.text.contains("ringside: malformed Hessian2 request"),
        "{}",
        ans.text
    );
    assert!(c.recv().is_none());

    // Garbage after a valid frame: the valid one is answered, then the connection closes.
    let mut c = Consumer::connect(listen);
    let mut bytes = RequestBuilder::new(SVC, "first")
        .request_id(1)
        .build()
        .to_vec();
    bytes.extend_from_slice(&[0u8; 40]);
    c.send_raw(&bytes);
    let ans = c.recv().unwrap();
    assert_eq!((ans.id, ans.status), (1, Status::Ok));
    assert!(c.recv().is_none());

    // The healthy connection and the process are unaffected.
    assert_eq!(healthy.call(RequestBuilder::new(SVC, "y")).text, "A|y|");
    assert_eq!(rs.get("/ready").0, 200);
}

#[test]
fn other_serializations_pass_through_untouched() {
    let a = Provider::start("A");
    let (rs, listen) = start(&[("a", &[a.addr])], "    cluster: a\n", "1");
    let mut c = Consumer::connect(listen);
    let body = br#"{"not":"hessian","id":[1,2,3]}"#;
    let mut frame = vec![0xda, 0xbb, 0xc0 | 6, 0];
    frame.extend_from_slice(&3u64.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    c.send_raw(&frame);
    let ans = c.recv().unwrap();
    assert_eq!(ans.id, 3);
    assert_eq!(
        &ans.frame[16..],
        body,
        "body forwarded and returned byte for byte"
    );
    let (_, stats) = rs.get("/stats");
    assert!(
        stats.contains("listener.dubbo.dubbo_rq_opaque: 1"),
        "{stats}"
    );
}

#[test]
fn timeout_answers_31_and_drops_the_late_response() {
    let a = Provider::start("A");
    let routes = "    dubbo:\n      routes:\n        - route: {cluster: a, timeout_ms: 200}\n";
    let (rs, listen) = start(&[("a", &[a.addr])], routes, "1");
    let mut c = Consumer::connect(listen);
    let t = Instant::now();
    let ans = c.call(RequestBuilder::new(SVC, "hold"));
    let took = t.elapsed();
    assert_eq!(ans.status, Status::ServerTimeout, "{ans:?}");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // The connection still works.
    assert_eq!(c.call(RequestBuilder::new(SVC, "after")).text, "A|after|");
    let (_, stats) = rs.get("/stats");
    assert!(
        stats.contains("cluster.a.upstream_rq_timeout: 1"),
        "{stats}"
    );
}

#[test]
fn provider_killed_with_requests_in_flight_fails_them_then_recovers() {
    let a = Provider::start("A");
    let addr = a.addr;
    let (_rs, listen) = start(&[("a", &[addr])], "    cluster: a\n", "1");
    let mut c = Consumer::connect(listen);
    assert_eq!(c.call(RequestBuilder::new(SVC, "warm")).status, Status::Ok);
    let ids: Vec<u64> = (0..5)
        .map(|_| c.send(RequestBuilder::new(SVC, "hold")))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    a.kill();
    let answers = c.recv_n(ids.len());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "errors come at once, not after a timeout"
    );
    for id in ids {
        let ans = &answers[&id];
        assert_eq!(ans.status, Status::ServerError, "{ans:?}");
        assert!(ans.text.contains("ringside: upstream"), "{}", ans.text);
    }
    // While it is down: an error, not a hang.
    let ans = c.call(RequestBuilder::new(SVC, "down"));
    assert_eq!(ans.status, Status::ServerError);
    // It comes back on the same address; traffic resumes.
    let _a2 = Provider::start_on(addr, "A2");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ans = c.call(RequestBuilder::new(SVC, "back"));
        if ans.status == Status::Ok {
            assert_eq!(ans.text, "A2|back|");
            break;
        }
        assert!(Instant::now() < deadline, "traffic did not resume: {ans:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn many_downstream_connections_share_few_upstream_connections() {
    let a = Provider::start("A");
    let (rs, listen) = start(&[("a", &[a.addr])], "    cluster: a\n", "2");
    let threads: Vec<_> = (0..64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Consumer::connect(listen);
                for round in 0..4 {
                    let args: Vec<String> = (0..8).map(|k| format!("c{t}-r{round}-k{k}")).collect();
                    let mut sent = std::collections::HashMap::new();
                    for s in &args {
                        let arg = [Arg::Str(s)];
                        let id = c.send(RequestBuilder::new(SVC, "echo").args(&arg));
                        sent.insert(id, s.clone());
                    }
                    let answers = c.recv_n(8);
                    for (id, s) in sent {
                        assert_eq!(
                            answers[&id].text,
                            format!("A|echo|{s}"),
                            "answer matched to its request"
                        );
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let upstream = a.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        upstream <= 2,
        "64 consumers reached the provider over {upstream} connections"
    );
    let (_, stats) = rs.get("/stats");
    assert!(
        stats.contains("listener.dubbo.dubbo_rsp_ok: 2048"),
        "{stats}"
    );
    drop(TcpStream::connect(listen));
}

#[test]
fn dubbo_proxy_works_on_the_epoll_backend() {
    let a = Provider::start("A");
    let (admin, listen) = (local(free_port()), local(free_port()));
    let _rs = Ringside::start(
        &dubbo_config(admin, listen, &[("a", &[a.addr])], "    cluster: a\n"),
        admin,
        &["--shards", "2", "--io", "epoll"],
    );
    let mut c = Consumer::connect(listen);
    let ids: Vec<u64> = (0..16)
        .map(|_| c.send(RequestBuilder::new(SVC, "e")))
        .collect();
    let answers = c.recv_n(16);
    for id in ids {
        assert_eq!(answers[&id].text, "A|e|");
    }
}
