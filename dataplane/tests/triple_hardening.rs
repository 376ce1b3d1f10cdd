//! Hostile and broken HTTP/2 peers against the Triple proxy through the real binary (issue 20):
//! cancelled calls must free their upstream stream, discarded DATA must return its window,
//! caller-caused resets count as resets, control-frame floods and header amplification are shed,
//! refused streams are retried, and every connection has its timers.
//!
//! The upstream here ([`Backend`]) is a raw-frame HTTP/2 server that, unlike `common::h2`'s, keeps
//! any number of responses in progress under flow control, honours RST_STREAM, and counts what it
//! sees (streams open, resets, header bytes), so a test can tell what ringside did upstream.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::h2::frame::{self, code, flag, kind, setting, FrameHeader};
use codec::h2::hpack::{self, Decoder};
use common::h2::*;
use common::*;

const SAY: &str = "/helloworld.Greeter/SayHello";

/// What a [`Backend`] saw, over all its connections.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    closed: AtomicUsize,
    /// Request HEADERS frames (streams opened).
    streams: AtomicUsize,
    /// Streams open now, and the most open at once on one connection.
    open: AtomicUsize,
    open_max: AtomicUsize,
    resets: AtomicUsize,
    /// Bytes of HEADERS and CONTINUATION frames received (frame headers included).
    header_bytes: AtomicUsize,
    pings: AtomicUsize,
    /// Frames (other than RST_STREAM, WINDOW_UPDATE, PRIORITY) on a stream after its END_STREAM.
    after_end: AtomicUsize,
    /// Set once the first `x-goaway` request was refused with a GOAWAY.
    goaway_sent: AtomicBool,
    /// Streams refused with RST_STREAM REFUSED_STREAM (`x-refuse`).
    refused: AtomicUsize,
    /// GOAWAY frames received.
    goaways: AtomicUsize,
    /// Request header fields named `etag` received with the never-indexed bit, and without.
    etag_never: AtomicUsize,
    etag_plain: AtomicUsize,
    /// RST_STREAM frames received, by error code PROTOCOL_ERROR.
    resets_protocol: AtomicUsize,
}

/// A raw-frame HTTP/2 upstream. Request headers switch behaviour: `x-hang` (never answer),
/// `x-reply-bytes: N` (answer N bytes), `x-big-header: N` (answer with a response header of N
/// bytes; `x-big-trailer: N` the same in its trailers, before grpc-status), `x-goaway` (the first such request on the backend is refused by a GOAWAY naming the
/// stream before it, and the connection closes once older streams are answered), `x-refuse: K`
/// (once the request is in, RST_STREAM REFUSED_STREAM while the backend has refused fewer
/// than K streams), `x-bad-frame` (a PING of 7 bytes: a connection error), `x-no-window`
/// (never return stream window for the request body), `x-data-first` (a DATA frame before the
/// response HEADERS), `x-never-etag` (a never-indexed `etag: ""` in the response headers), `x-freeze`
/// (stop reading and writing on this connection, keeping it open: a half-open peer).
struct Backend {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Backend {
    fn start(streams_max: u32) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                s2.connections.fetch_add(1, Relaxed);
                let seen = s2.clone();
                std::thread::spawn(move || {
                    BackendConn::new(s, seen.clone(), streams_max).run();
                    seen.closed.fetch_add(1, Relaxed);
                });
            }
        });
        Backend { addr, seen }
    }

    fn get(&self, f: impl Fn(&Seen) -> &AtomicUsize) -> usize {
        f(&self.seen).load(Relaxed)
    }
}

/// A response in progress.
struct Answer {
    body: Vec<u8>,
    window: i64,
    trailers: bool,
    big_trailer: usize,
}

struct BackendConn {
    s: TcpStream,
    seen: Arc<Seen>,
    streams_max: u32,
    dec: Decoder,
    buf: Vec<u8>,
    send_window: i64,
    peer_initial: i64,
    /// Streams whose request is being read: their headers.
    reading: HashMap<u32, Vec<(String, String)>>,
    answering: HashMap<u32, Answer>,
    /// Streams open (request started, not answered or reset).
    open: usize,
    /// A GOAWAY was sent: close once nothing is open.
    leaving: bool,
    /// Streams whose request ended.
    ended: std::collections::HashSet<u32>,
}

impl BackendConn {
    fn new(s: TcpStream, seen: Arc<Seen>, streams_max: u32) -> BackendConn {
        s.set_nodelay(true).unwrap();
        BackendConn {
            s,
            seen,
            streams_max,
            dec: Decoder::default(),
            buf: Vec::new(),
            send_window: 65_535,
            peer_initial: 65_535,
            reading: HashMap::new(),
            answering: HashMap::new(),
            open: 0,
            leaving: false,
            ended: Default::default(),
        }
    }

    fn frame(&mut self) -> Option<(FrameHeader, Vec<u8>)> {
        loop {
            if let Some(h) = FrameHeader::parse(&self.buf) {
                let total = 9 + h.len as usize;
                if self.buf.len() >= total {
                    let payload = self.buf[9..total].to_vec();
                    self.buf.drain(..total);
                    return Some((h, payload));
                }
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn write(&mut self, b: &[u8]) -> bool {
        self.s.write_all(b).is_ok()
    }

    fn stream_closed(&mut self) {
        self.open -= 1;
        self.seen.open.fetch_sub(1, Relaxed);
    }

    fn run(mut self) {
        let mut preface = [0u8; 24];
        if self.s.read_exact(&mut preface).is_err() || &preface != frame::PREFACE {
            return;
        }
        let mut o = Vec::new();
        frame::write_settings(
            &mut o,
            &[(setting::MAX_CONCURRENT_STREAMS, self.streams_max)],
        );
        frame::write_window_update(&mut o, 0, 64 << 20);
        self.write(&o);
        while let Some((h, payload)) = self.frame() {
            if !self.on_frame(h, &payload) {
                // A write failed: ringside closed the connection (after a connection error it
                // writes its GOAWAY, then closes; an answer written meanwhile meets the reset).
                // What it sent before is still in the socket: count its GOAWAY.
                while let Some((h, _)) = self.frame() {
                    if h.kind == kind::GOAWAY {
                        self.seen.goaways.fetch_add(1, Relaxed);
                    }
                }
                return;
            }
            self.pump();
            if self.leaving && self.open == 0 {
                return;
            }
        }
        let left = self.open;
        self.seen.open.fetch_sub(left, Relaxed);
    }

    /// Handles one frame; false to stop serving the connection.
    fn on_frame(&mut self, h: FrameHeader, payload: &[u8]) -> bool {
        let sid = h.stream;
        let mut o = Vec::new();
        if self.ended.contains(&sid)
            && ![kind::RST_STREAM, kind::WINDOW_UPDATE, kind::PRIORITY].contains(&h.kind)
        {
            self.seen.after_end.fetch_add(1, Relaxed);
        }
        if h.flags & flag::END_STREAM != 0 && matches!(h.kind, kind::HEADERS | kind::DATA) {
            self.ended.insert(sid);
        }
        match h.kind {
            kind::SETTINGS if h.flags & flag::ACK == 0 => {
                for (id, v) in frame::settings(payload).unwrap() {
                    if id == setting::INITIAL_WINDOW_SIZE {
                        let delta = i64::from(v) - self.peer_initial;
                        self.peer_initial = i64::from(v);
                        for a in self.answering.values_mut() {
                            a.window += delta;
                        }
                    }
                }
                frame::write_settings_ack(&mut o);
            }
            kind::PING if h.flags & flag::ACK == 0 => {
                self.seen.pings.fetch_add(1, Relaxed);
                frame::write_ping(&mut o, true, payload.try_into().unwrap());
            }
            kind::WINDOW_UPDATE => {
                let inc = i64::from(frame::window_update(payload).unwrap());
                if sid == 0 {
                    self.send_window += inc;
                } else if let Some(a) = self.answering.get_mut(&sid) {
                    a.window += inc;
                }
            }
            kind::HEADERS | kind::CONTINUATION => {
                self.seen.header_bytes.fetch_add(9 + payload.len(), Relaxed);
                let frag = frame::headers_fragment(h.flags, payload).unwrap().to_vec();
                let mut fields = Vec::new();
                let seen = &self.seen;
                self.dec
                    .decode(&frag, &mut |n, v, never| {
                        if n == b"etag" {
                            let c = if never {
                                &seen.etag_never
                            } else {
                                &seen.etag_plain
                            };
                            c.fetch_add(1, Relaxed);
                        }
                        fields.push((
                            String::from_utf8_lossy(n).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        ))
                    })
                    .expect("valid hpack from ringside");
                if !self.reading.contains_key(&sid) && !self.answering.contains_key(&sid) {
                    self.seen.streams.fetch_add(1, Relaxed);
                    self.open += 1;
                    let now = self.seen.open.fetch_add(1, Relaxed) + 1;
                    self.seen.open_max.fetch_max(now, Relaxed);
                    let has = |k: &str| fields.iter().any(|(n, _)| n == k);
                    if has("x-bad-frame") {
                        FrameHeader {
                            len: 7,
                            kind: kind::PING,
                            flags: 0,
                            stream: 0,
                        }
                        .write(&mut o);
                        o.extend_from_slice(&[0; 7]);
                    }
                    if has("x-freeze") {
                        // Half-open: hold the socket, never read or write again.
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                    if has("x-goaway") && !self.seen.goaway_sent.swap(true, Relaxed) {
                        frame::write_goaway(&mut o, sid - 2, code::NO_ERROR, b"leaving");
                        self.stream_closed();
                        self.leaving = true;
                        return self.write(&o);
                    }
                    self.reading.insert(sid, fields);
                }
                if h.flags & flag::END_STREAM != 0 {
                    self.answer(sid);
                }
            }
            kind::DATA => {
                let n = payload.len() as u32;
                let stingy = self
                    .reading
                    .get(&sid)
                    .is_some_and(|f| f.iter().any(|(n, _)| n == "x-no-window"));
                if n > 0 {
                    frame::write_window_update(&mut o, 0, n);
                    if !stingy {
                        frame::write_window_update(&mut o, sid, n);
                    }
                }
                if h.flags & flag::END_STREAM != 0 {
                    self.answer(sid);
                }
            }
            kind::GOAWAY => {
                self.seen.goaways.fetch_add(1, Relaxed);
            }
            kind::RST_STREAM => {
                self.seen.resets.fetch_add(1, Relaxed);
                if frame::rst_stream(payload).ok() == Some(code::PROTOCOL_ERROR) {
                    self.seen.resets_protocol.fetch_add(1, Relaxed);
                }
                if self.reading.remove(&sid).is_some() || self.answering.remove(&sid).is_some() {
                    self.stream_closed();
                }
            }
            _ => {}
        }
        o.is_empty() || self.write(&o)
    }

    /// The request on `sid` is complete: start its answer (unless it hangs).
    fn answer(&mut self, sid: u32) {
        let Some(fields) = self.reading.remove(&sid) else {
            return;
        };
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("x-hang").is_some() {
            self.reading.insert(sid, fields);
            return;
        }
        // Refused once the whole request is in (so ringside has written all of it).
        if let Some(k) = get("x-refuse") {
            if self.seen.refused.load(Relaxed) < k.parse().unwrap() {
                self.seen.refused.fetch_add(1, Relaxed);
                let mut o = Vec::new();
                frame::write_rst_stream(&mut o, sid, code::REFUSED_STREAM);
                self.write(&o);
                self.stream_closed();
                return;
            }
        }
        let n: usize = get("x-reply-bytes").map_or(2, |v| v.parse().unwrap());
        let mut block = Vec::new();
        hpack::encode_field(&mut block, b":status", b"200", false);
        hpack::encode_field(&mut block, b"content-type", b"application/grpc", false);
        if let Some(big) = get("x-big-header") {
            let v = vec![b'h'; big.parse().unwrap()];
            hpack::encode_field(&mut block, b"x-big", &v, false);
        }
        if get("x-never-etag").is_some() {
            hpack::encode_field(&mut block, b"etag", b"", true);
        }
        let mut o = Vec::new();
        if get("x-data-first").is_some() {
            // Malformed (RFC 9113 8.1): a response body before the response HEADERS.
            let body = grpc_msg(b"early");
            frame::write_data_header(&mut o, sid, body.len(), false);
            o.extend_from_slice(&body);
        }
        frame::write_headers(&mut o, sid, &block, false, 16_384);
        self.write(&o);
        self.answering.insert(
            sid,
            Answer {
                body: grpc_msg(&vec![b'r'; n]),
                window: self.peer_initial,
                trailers: true,
                big_trailer: get("x-big-trailer").map_or(0, |v| v.parse().unwrap()),
            },
        );
    }

    /// Writes what the windows allow of the answers in progress.
    fn pump(&mut self) {
        let mut o = Vec::new();
        let mut done = Vec::new();
        for (&sid, a) in self.answering.iter_mut() {
            while !a.body.is_empty() {
                let n = a
                    .body
                    .len()
                    .min(16_384)
                    .min(a.window.min(self.send_window).max(0) as usize);
                if n == 0 {
                    break;
                }
                frame::write_data_header(&mut o, sid, n, false);
                o.extend_from_slice(&a.body[..n]);
                a.body.drain(..n);
                a.window -= n as i64;
                self.send_window -= n as i64;
            }
            if a.body.is_empty() && a.trailers {
                let mut block = Vec::new();
                if a.big_trailer > 0 {
                    let v = vec![b't'; a.big_trailer];
                    hpack::encode_field(&mut block, b"x-big", &v, false);
                }
                hpack::encode_field(&mut block, b"grpc-status", b"0", false);
                frame::write_headers(&mut o, sid, &block, true, 16_384);
                a.trailers = false;
                done.push(sid);
            }
        }
        for sid in done {
            self.answering.remove(&sid);
            self.stream_closed();
        }
        if !o.is_empty() {
            self.write(&o);
        }
    }
}

fn config(
    admin: SocketAddr,
    listen: SocketAddr,
    up: SocketAddr,
    triple: &str,
    cluster: &str,
) -> String {
    format!(
        "admin: {{address: {admin}}}\nlisteners:\n  - name: grpc\n    address: {listen}\n    protocol: triple\n    cluster: a\n{triple}clusters:\n  - name: a\n    endpoints: [\"{up}\"]\n{cluster}"
    )
}

/// Ringside with one triple listener routing everything to `up`; `triple` and `cluster` are
/// extra YAML lines of the listener and the cluster.
fn start(up: SocketAddr, triple: &str, cluster: &str) -> (Ringside, SocketAddr) {
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = Ringside::start(
        &config(admin, listen, up, triple, cluster),
        admin,
        &["--shards", "1"],
    );
    (rs, listen)
}

/// The admin /stats values of stat `name` (`scope.label.name: N`), summed.
fn stat(rs: &Ringside, name: &str) -> u64 {
    let (_, text) = rs.get("/stats");
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.rsplit('.').next() == Some(name))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// A raw caller: preface and SETTINGS (`settings`), nothing else.
fn raw_caller(listen: SocketAddr, settings: &[(u16, u32)]) -> Peer {
    let mut p = Peer::new(TcpStream::connect(listen).unwrap());
    let mut o = frame::PREFACE.to_vec();
    frame::write_settings(&mut o, settings);
    p.write(&o);
    p
}

fn request_block(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", SAY),
        (":authority", "ringside.test"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .chain(extra)
    {
        hpack::encode_field(&mut block, n.as_bytes(), v.as_bytes(), false);
    }
    block
}

/// A whole unary request on `id` (HEADERS, one DATA with END_STREAM) into `o`.
fn write_request(o: &mut Vec<u8>, id: u32, extra: &[(&str, &str)]) {
    frame::write_headers(o, id, &request_block(extra), false, 16_384);
    let body = grpc_msg(b"hi");
    frame::write_data_header(o, id, body.len(), true);
    o.extend_from_slice(&body);
}

/// Waits until `f` holds (or `within` passes); returns whether it did.
fn wait_for(within: Duration, f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Reads frames until stream `id` gets HEADERS (true) or the connection ends (false).
fn wait_headers(p: &mut Peer, id: u32) -> bool {
    while let Some(f) = p.read_frame() {
        if p.handle_control(&f) {
            continue;
        }
        if f.h.kind == kind::HEADERS && f.h.stream == id {
            return true;
        }
    }
    false
}

/// Item 1: a call the caller cancels after sending its whole request is reset upstream, so its
/// upstream stream slot is freed: 200 cancels against a backend allowing 100 streams leave the
/// cluster usable.
#[test]
fn cancelled_calls_reset_upstream_and_free_their_stream_slot() {
    let b = Backend::start(100);
    let (rs, listen) = start(b.addr, "    triple: {resets_per_second_max: 100000}\n", "");
    let mut c = raw_caller(listen, &[]);
    for i in 0..200u32 {
        let id = 1 + 2 * i;
        let mut o = Vec::new();
        write_request(&mut o, id, &[("x-hang", "1")]);
        c.write(&o);
        // Cancel once the backend has the stream (a caller that gave up waiting).
        assert!(
            wait_for(Duration::from_secs(5), || b.get(|s| &s.streams)
                > i as usize),
            "stream {i} never reached the backend"
        );
        let mut o = Vec::new();
        frame::write_rst_stream(&mut o, id, code::CANCEL);
        c.write(&o);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut c2 = Client::connect(listen);
    for _ in 0..5 {
        let r = c2.call(SAY, &[], b"later");
        assert_eq!(r.grpc_status(), Some(0), "later calls still succeed: {r:?}");
    }
    assert!(
        wait_for(Duration::from_secs(5), || b.get(|s| &s.resets) == 200),
        "each cancelled call must be reset upstream: {} resets seen",
        b.get(|s| &s.resets)
    );
    assert_eq!(b.get(|s| &s.open), 0);
    assert_eq!(stat(&rs, "upstream_rq_active"), 0);
}

/// Item 2: DATA queued for a caller that never grants window and then resets its calls is
/// dropped: its bytes must go back to the shared upstream connection as WINDOW_UPDATE, else that
/// connection stalls for every caller on the shard.
#[test]
fn discarded_data_returns_its_window_to_the_shared_upstream() {
    let b = Backend::start(1000);
    let (_rs, listen) = start(b.addr, "    triple: {resets_per_second_max: 100000}\n", "");
    // A caller whose streams have no window: answers queue in ringside.
    let mut z = raw_caller(listen, &[(setting::INITIAL_WINDOW_SIZE, 0)]);
    // 12 answers of 900 KB: three times ringside's 4 MiB connection window towards upstream.
    for i in 0..12u32 {
        let id = 1 + 2 * i;
        let mut o = Vec::new();
        write_request(&mut o, id, &[("x-reply-bytes", "900000")]);
        z.write(&o);
        assert!(wait_headers(&mut z, id), "answer headers on stream {id}");
        // Let the backend's DATA reach ringside's queue, then give up on the call.
        std::thread::sleep(Duration::from_millis(30));
        let mut o = Vec::new();
        frame::write_rst_stream(&mut o, id, code::CANCEL);
        z.write(&o);
    }
    // Another caller of the same upstream connection.
    let mut c = Client::connect(listen);
    c.p.s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let r = c.call(SAY, &[("x-reply-bytes", "200000")], b"");
    assert_eq!(
        (r.grpc_status(), r.data.len()),
        (Some(0), 5 + 200_000),
        "the shared upstream connection must not stall: {:?}",
        r.reset
    );
}

/// Reads until the connection ends; returns the GOAWAY error code seen, if any, and the number
/// of frames of `count_kind` read.
fn read_to_end(p: &mut Peer, count_kind: u8) -> (Option<u32>, usize) {
    let (mut goaway, mut n) = (None, 0);
    while let Some(f) = p.read_frame() {
        if f.h.kind == count_kind {
            n += 1;
        }
        if f.h.kind == kind::GOAWAY {
            goaway = Some(frame::goaway(&f.payload).unwrap().1);
        }
    }
    (goaway, n)
}

/// Item 3 ("MadeYouReset"): streams ringside resets because the caller broke the protocol count
/// against `resets_per_second_max` like the caller's own resets, and a call already past its
/// deadline never opens an upstream stream.
#[test]
fn caller_caused_resets_count_as_resets() {
    let b = Backend::start(10_000);
    let (rs, listen) = start(
        b.addr,
        "    triple: {resets_per_second_max: 50, stream_window_bytes: 65535}\n",
        "",
    );
    // grpc-timeout of 1 ns: answered at once, nothing upstream.
    let mut c = Client::connect(listen);
    let r = c.call(SAY, &[("grpc-timeout", "1n")], b"x");
    assert_eq!(r.grpc_status(), Some(4), "DEADLINE_EXCEEDED: {r:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        b.get(|s| &s.streams),
        0,
        "no HEADERS upstream for a dead call"
    );
    // Each way of making ringside reset a stream, 300 streams on one connection each.
    type Breaker = fn(&mut Vec<u8>, u32);
    let ways: [(&str, Breaker); 5] = [
        ("WINDOW_UPDATE of 0", |o, id| {
            write_request(o, id, &[("x-hang", "1")]);
            frame::write_window_update(o, id, 0);
        }),
        ("DATA after END_STREAM", |o, id| {
            write_request(o, id, &[("x-hang", "1")]);
            frame::write_data_header(o, id, 1, true);
            o.push(0);
        }),
        ("DATA past the stream window", |o, id| {
            let h = [("x-hang", "1"), ("x-no-window", "1")];
            frame::write_headers(o, id, &request_block(&h), false, 16_384);
            // The backend takes 65535 bytes; ringside granted 65535 + 48000.
            for _ in 0..8 {
                frame::write_data_header(o, id, 16_000, false);
                o.extend_from_slice(&[0; 16_000]);
            }
        }),
        ("trailers without END_STREAM", |o, id| {
            frame::write_headers(o, id, &request_block(&[("x-hang", "1")]), false, 16_384);
            let mut t = Vec::new();
            hpack::encode_field(&mut t, b"x-t", b"1", false);
            frame::write_headers(o, id, &t, false, 16_384);
        }),
        ("grpc-timeout 1n", |o, id| {
            write_request(o, id, &[("grpc-timeout", "1n")])
        }),
    ];
    for (what, breaker) in ways {
        let before = stat(&rs, "upstream_rq_total");
        let mut p = raw_caller(listen, &[]);
        p.s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut o = Vec::new();
        for i in 0..300 {
            breaker(&mut o, 1 + 2 * i);
        }
        // The connection may close before all is written.
        let _ = p.s.write_all(&o);
        let (goaway, _) = read_to_end(&mut p, kind::RST_STREAM);
        assert_eq!(
            goaway,
            Some(code::ENHANCE_YOUR_CALM),
            "{what}: 300 resets in a second must close the connection"
        );
        let opened = stat(&rs, "upstream_rq_total") - before;
        assert!(opened <= 51, "{what}: {opened} streams opened upstream");
    }
    assert_eq!(stat(&rs, "triple_rst_flood"), 5);
    assert!(stat(&rs, "triple_stream_error") >= 4 * 50);
    assert!(stat(&rs, "triple_rq_expired_on_arrival") >= 51);
    // Every stream opened upstream was reset there.
    assert!(wait_for(Duration::from_secs(5), || b.get(|s| &s.open) == 0));
}

/// Item 5: PING and SETTINGS floods from a caller that does not read the answers are cut at
/// `outbound_control_frames_max` queued frames with GOAWAY ENHANCE_YOUR_CALM.
#[test]
fn ping_and_settings_floods_are_cut() {
    let b = Backend::start(100);
    let (rs, listen) = start(b.addr, "", "");
    for (what, k) in [("PING", kind::PING), ("SETTINGS", kind::SETTINGS)] {
        // A small receive buffer, never read while flooding: acknowledgements pile up in
        // ringside once its socket buffer is full.
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&listen.into()).unwrap();
        let mut p = Peer::new(sock.into());
        p.s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut o = frame::PREFACE.to_vec();
        frame::write_settings(&mut o, &[]);
        p.write(&o);
        let mut chunk = Vec::new();
        for _ in 0..1000 {
            if k == kind::PING {
                frame::write_ping(&mut chunk, false, *b"floodpng");
            } else {
                frame::write_settings(&mut chunk, &[(setting::MAX_FRAME_SIZE, 16_384)]);
            }
        }
        // 400k frames: ~7 MB of acknowledgements, more than any socket buffer holds.
        let mut sent = 0;
        while sent < 400 && p.s.write_all(&chunk).is_ok() {
            sent += 1;
        }
        let ack = if k == kind::PING {
            kind::PING
        } else {
            kind::SETTINGS
        };
        let (goaway, acks) = read_to_end(&mut p, ack);
        assert!(
            acks < 400_000,
            "{what} flood: {acks} acknowledgements, the connection was never cut"
        );
        // The GOAWAY is last in a long queue; a reset may overtake it, the stat tells.
        if let Some(g) = goaway {
            assert_eq!(g, code::ENHANCE_YOUR_CALM, "{what}");
        }
    }
    assert_eq!(stat(&rs, "triple_control_flood"), 2);
    // Other callers are unaffected.
    let r = Client::connect(listen).call(SAY, &[], b"x");
    assert_eq!(r.grpc_status(), Some(0));
}

/// Item 6: trailers repeated after END_STREAM are a stream error, never forwarded.
#[test]
fn repeated_trailers_are_a_stream_error() {
    let b = Backend::start(100);
    let (rs, listen) = start(b.addr, "", "");
    let mut p = raw_caller(listen, &[]);
    let mut o = Vec::new();
    // More body than the backend's stream window: the trailers queue behind it in ringside.
    frame::write_headers(&mut o, 1, &request_block(&[("x-hang", "1")]), false, 16_384);
    for _ in 0..6 {
        frame::write_data_header(&mut o, 1, 16_000, false);
        o.extend_from_slice(&[0; 16_000]);
    }
    let mut t = Vec::new();
    hpack::encode_field(&mut t, b"x-t", b"1", false);
    frame::write_headers(&mut o, 1, &t, true, 16_384);
    frame::write_headers(&mut o, 1, &t, true, 16_384);
    p.write(&o);
    let mut reset = None;
    while let Some(f) = p.read_frame() {
        if p.handle_control(&f) {
            continue;
        }
        if f.h.kind == kind::RST_STREAM && f.h.stream == 1 {
            reset = Some(frame::rst_stream(&f.payload).unwrap());
            break;
        }
    }
    assert_eq!(
        reset,
        Some(code::STREAM_CLOSED),
        "the caller's stream is reset"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        b.get(|s| &s.after_end),
        0,
        "nothing after END_STREAM upstream"
    );
    assert!(wait_for(Duration::from_secs(2), || b.get(|s| &s.open) == 0));
    assert_eq!(stat(&rs, "triple_stream_error"), 1);
    // The connection lives on.
    let mut c = Client::connect(listen);
    assert_eq!(c.call(SAY, &[], b"x").grpc_status(), Some(0));
}

/// Item 7: upstream response headers over the header list limit end the call INTERNAL with a
/// reason, never relayed cut short (which could lose grpc-status); trailers over it, after
/// the response headers went out, reset the caller's stream INTERNAL_ERROR (as Envoy resets
/// a stream whose response began).
#[test]
fn oversized_upstream_headers_end_the_call_internal() {
    let b = Backend::start(100);
    let (rs, listen) = start(b.addr, "    triple: {header_list_bytes_max: 8192}\n", "");
    let mut c = Client::connect(listen);
    let r = c.call(SAY, &[("x-big-header", "10000")], b"x");
    assert_eq!(r.grpc_status(), Some(13), "INTERNAL {r:?}");
    assert!(
        r.grpc_message()
            .contains("upstream response headers exceed 8192"),
        "{r:?}"
    );
    let r = c.call(SAY, &[("x-big-trailer", "10000")], b"x");
    assert_eq!(
        (r.reset, r.grpc_status()),
        (Some(code::INTERNAL_ERROR), None),
        "{r:?}"
    );
    assert_eq!(stat(&rs, "upstream_h2_rsp_headers_too_large"), 2);
    assert!(wait_for(Duration::from_secs(2), || b.get(|s| &s.open) == 0));
    // Under the limit, all is relayed.
    let r = c.call(SAY, &[("x-big-trailer", "4000")], b"x");
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
}

/// Item 9: a caller connection that does not send the preface and SETTINGS in
/// `preface_timeout_ms` is closed; one that did stays.
#[test]
fn silent_callers_are_closed_after_the_preface_timeout() {
    let b = Backend::start(100);
    let (rs, listen) = start(b.addr, "    triple: {preface_timeout_ms: 300}\n", "");
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(listen).unwrap();
    let mut half = TcpStream::connect(listen).unwrap();
    half.write_all(&frame::PREFACE[..16]).unwrap();
    let mut ok = Client::connect(listen);
    for s in [&mut silent, &mut half] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        // Ringside's SETTINGS, then EOF.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => panic!("not closed: {e}"),
            }
        }
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    assert_eq!(stat(&rs, "triple_cx_preface_timeout"), 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        ok.call(SAY, &[], b"x").grpc_status(),
        Some(0),
        "a greeted caller stays"
    );
}

/// Item 9: a caller connection with no stream for the listener's `idle_timeout_ms` gets GOAWAY
/// and is closed; one with a call in progress is not.
#[test]
fn idle_caller_connections_are_closed() {
    let b = Backend::start(100);
    let (rs, listen) = start(b.addr, "    idle_timeout_ms: 300\n", "");
    let mut busy = Client::connect(listen);
    let id = busy.start(SAY, &[("x-hang", "1")], b"x", true);
    let mut c = Client::connect(listen);
    assert_eq!(c.call(SAY, &[], b"x").grpc_status(), Some(0));
    let t0 = Instant::now();
    assert_eq!(
        c.read_until_closed(),
        Some(code::NO_ERROR),
        "GOAWAY, then close"
    );
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    assert_eq!(stat(&rs, "triple_cx_idle_timeout"), 1);
    // The connection with a call in progress stayed.
    let mut o = Vec::new();
    frame::write_rst_stream(&mut o, id, code::CANCEL);
    busy.p.write(&o);
    assert_eq!(busy.call(SAY, &[], b"y").grpc_status(), Some(0));
}

/// Item 9: an upstream connection with no stream for the cluster's `idle_timeout_ms` is closed;
/// the next call opens a new one.
#[test]
fn idle_upstream_connections_are_closed() {
    let b = Backend::start(100);
    let (rs, listen) = start(b.addr, "", "    idle_timeout_ms: 300\n");
    let mut c = Client::connect(listen);
    assert_eq!(c.call(SAY, &[], b"x").grpc_status(), Some(0));
    assert!(
        wait_for(Duration::from_secs(2), || b.get(|s| &s.closed) == 1),
        "the idle upstream connection was not closed"
    );
    assert_eq!(stat(&rs, "upstream_h2_cx_idle_timeout"), 1);
    assert_eq!(c.call(SAY, &[], b"x").grpc_status(), Some(0));
    assert_eq!(b.get(|s| &s.connections), 2);
}

/// Item 9: PING keepalive closes a half-open upstream connection, so a call without a deadline
/// does not hang on it forever; an upstream that answers PINGs keeps its connection.
#[test]
fn keepalive_closes_half_open_upstreams() {
    let b = Backend::start(100);
    let (rs, listen) = start(
        b.addr,
        "",
        "    keepalive_interval_ms: 200\n    keepalive_timeout_ms: 200\n",
    );
    // A long call on a live upstream: PINGs answered, nothing closed.
    let mut c = Client::connect(listen);
    let id = c.start(SAY, &[("x-hang", "1")], b"x", true);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(b.get(|s| &s.pings) >= 1, "keepalive PINGs sent");
    assert_eq!(stat(&rs, "upstream_h2_cx_keepalive_timeout"), 0);
    let mut o = Vec::new();
    frame::write_rst_stream(&mut o, id, code::CANCEL);
    c.p.write(&o);
    // A call whose upstream goes silent with the connection open, no deadline.
    let t0 = Instant::now();
    let r = c.call(SAY, &[("x-freeze", "1")], b"x");
    assert_eq!(r.grpc_status(), Some(14), "UNAVAILABLE: {r:?}");
    // Envoy's words for a stream whose connection closed (the keepalive timeout closed it).
    assert!(
        r.grpc_message()
            .ends_with("reset reason: connection termination"),
        "{r:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(stat(&rs, "upstream_h2_cx_keepalive_timeout"), 1);
}

/// Found by the `triple_conn` fuzz target (corpus `regress_upstream_data_before_headers`): an
/// upstream's DATA before its response HEADERS was relayed, so the caller got a body without a
/// response (RFC 9113 8.1). The call fails UNAVAILABLE instead (Envoy's 502 "reset reason:
/// protocol error"), nothing of the body reaches the caller before HEADERS, and the upstream
/// stream is reset PROTOCOL_ERROR.
#[test]
fn upstream_data_before_response_headers_fails_the_call() {
    let b = Backend::start(100);
    let (_rs, listen) = start(b.addr, "", "");
    let mut p = raw_caller(listen, &[]);
    let mut o = Vec::new();
    write_request(&mut o, 1, &[("x-data-first", "1")]);
    p.write(&o);
    let (mut headers, mut status) = (false, None);
    while let Some(f) = p.read_frame() {
        if p.handle_control(&f) || f.h.stream != 1 {
            continue;
        }
        match f.h.kind {
            kind::DATA => assert!(headers, "DATA before HEADERS relayed to the caller"),
            kind::HEADERS => {
                headers = true;
                let frag = frame::headers_fragment(f.h.flags, &f.payload)
                    .unwrap()
                    .to_vec();
                let fields = p.decode(&frag);
                if let Some((_, v)) = fields.iter().find(|(n, _)| n == "grpc-status") {
                    status = v.parse::<u32>().ok();
                }
            }
            kind::RST_STREAM => break,
            _ => {}
        }
        if f.h.flags & flag::END_STREAM != 0 {
            break;
        }
    }
    // Envoy's 502 "... reset reason: protocol error", UNAVAILABLE to a gRPC caller.
    assert_eq!(status, Some(14), "the call ends UNAVAILABLE");
    assert!(
        wait_for(Duration::from_secs(2), || b.get(|s| &s.resets_protocol)
            == 1),
        "the upstream stream is reset PROTOCOL_ERROR"
    );
    // The shared upstream connection goes on.
    assert_eq!(
        Client::connect(listen).call(SAY, &[], b"x").grpc_status(),
        Some(0)
    );
}

/// Found by the `hpack_decode` fuzz target: ringside's HPACK encoder re-encoded a never-indexed
/// field equal to a static table entry (`etag: ""`) as a static index, dropping the
/// never-indexed bit an intermediary must keep (RFC 7541 6.2.3). Both directions through the
/// proxy: the caller's never-indexed field reaches the upstream never-indexed, and the
/// upstream's reaches the caller never-indexed; a plain one stays plain.
#[test]
fn never_indexed_fields_stay_never_indexed_through_the_proxy() {
    let b = Backend::start(100);
    let (_rs, listen) = start(b.addr, "", "");
    let mut p = raw_caller(listen, &[]);
    let mut block = request_block(&[("x-never-etag", "1")]);
    hpack::encode_field(&mut block, b"etag", b"", true);
    let mut o = Vec::new();
    frame::write_headers(&mut o, 1, &block, false, 16_384);
    let body = grpc_msg(b"hi");
    frame::write_data_header(&mut o, 1, body.len(), true);
    o.extend_from_slice(&body);
    // A second call with a plain etag.
    let mut block = request_block(&[]);
    hpack::encode_field(&mut block, b"etag", b"", false);
    frame::write_headers(&mut o, 3, &block, false, 16_384);
    frame::write_data_header(&mut o, 3, body.len(), true);
    o.extend_from_slice(&body);
    p.write(&o);
    let mut dec = Decoder::default();
    let (mut never, mut ended) = (Vec::new(), 0);
    while ended < 2 {
        let f = p.read_frame().expect("both calls end");
        if p.handle_control(&f) {
            continue;
        }
        if f.h.kind == kind::HEADERS {
            let frag = frame::headers_fragment(f.h.flags, &f.payload)
                .unwrap()
                .to_vec();
            dec.decode(&frag, &mut |n, _, nv| {
                if n == b"etag" {
                    never.push((f.h.stream, nv));
                }
            })
            .unwrap();
        }
        if f.h.kind == kind::RST_STREAM || f.h.flags & flag::END_STREAM != 0 {
            ended += 1;
        }
    }
    assert_eq!(
        never,
        [(1, true)],
        "the upstream's never-indexed etag reaches the caller as sent"
    );
    assert_eq!(
        b.get(|s| &s.etag_never),
        1,
        "the caller's never-indexed etag reaches the upstream as sent"
    );
    assert_eq!(b.get(|s| &s.etag_plain), 1, "a plain etag stays plain");
}

/// Item 3 (#20 leftovers): after a connection error the final GOAWAY gets a bounded time to be
/// written: a caller that never reads does not keep its connection (and its buffers) open
/// until the idle timeout.
#[test]
fn a_caller_that_never_reads_its_goaway_is_closed() {
    let b = Backend::start(100);
    let (rs, listen) = start(b.addr, "", "");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&listen.into()).unwrap();
    let mut p = Peer::new(sock.into());
    // Windows wide open: an 8 MB answer queues in ringside behind full socket buffers.
    let mut o = frame::PREFACE.to_vec();
    frame::write_settings(
        &mut o,
        &[(setting::INITIAL_WINDOW_SIZE, frame::WINDOW_LIMIT)],
    );
    frame::write_window_update(&mut o, 0, frame::WINDOW_LIMIT - 65_535);
    write_request(&mut o, 1, &[("x-reply-bytes", "8000000")]);
    p.write(&o);
    assert!(wait_for(Duration::from_secs(5), || b.get(|s| &s.open) == 0));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(stat(&rs, "downstream_cx_active"), 1);
    // A connection error (PING of 7 bytes): its GOAWAY can never be written.
    let mut o = Vec::new();
    FrameHeader {
        len: 7,
        kind: kind::PING,
        flags: 0,
        stream: 0,
    }
    .write(&mut o);
    o.extend_from_slice(&[0; 7]);
    p.write(&o);
    let t0 = Instant::now();
    assert!(
        wait_for(Duration::from_secs(5), || stat(&rs, "downstream_cx_active")
            == 0),
        "the connection stayed open with its GOAWAY unread"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(stat(&rs, "triple_protocol_error"), 1);
    drop(p);
    // The listener serves others.
    assert_eq!(
        Client::connect(listen).call(SAY, &[], b"x").grpc_status(),
        Some(0)
    );
}

/// Item 2 (#20 leftovers): a stream the upstream refuses unprocessed (above its GOAWAY's last
/// stream id, or RST_STREAM REFUSED_STREAM) is sent once more on another connection when what
/// was written of it is still held; a larger body, or a second refusal, fails UNAVAILABLE.
#[test]
fn refused_streams_are_retried_once_on_another_connection() {
    let b = Backend::start(100);
    let (rs, listen) = start(b.addr, "", "");
    let mut c = Client::connect(listen);
    assert_eq!(c.call(SAY, &[], b"first").grpc_status(), Some(0));
    // Refused by a GOAWAY naming the stream before it.
    let r = c.call(SAY, &[("x-goaway", "1")], b"hello");
    assert_eq!(
        r.grpc_status(),
        Some(0),
        "GOAWAY-refused call retried: {r:?}"
    );
    assert_eq!(b.get(|s| &s.connections), 2);
    // Refused by RST_STREAM REFUSED_STREAM (the first refusal).
    let r = c.call(SAY, &[("x-refuse", "1")], b"hello");
    assert_eq!(
        r.grpc_status(),
        Some(0),
        "REFUSED_STREAM call retried: {r:?}"
    );
    assert_eq!(stat(&rs, "upstream_h2_rq_retry_refused"), 2);
    // Refused on its first attempt and on its retry: not retried twice.
    let r = c.call(SAY, &[("x-refuse", "3")], b"hello");
    assert_eq!(r.grpc_status(), Some(14), "refused twice: {r:?}");
    assert_eq!(b.get(|s| &s.refused), 3);
    // A body larger than ringside holds for a retry (40 KB, three frames): fails as before.
    let big = vec![b'b'; 40_000];
    let r = c.call(SAY, &[("x-refuse", "4")], &big);
    assert_eq!(r.grpc_status(), Some(14), "large body not retried: {r:?}");
    assert_eq!(b.get(|s| &s.refused), 4);
    assert_eq!(stat(&rs, "upstream_h2_rq_retry_refused"), 3);
    // Nothing leaked: later calls (with a body of several frames) go through.
    let r = c.call(SAY, &[], &big);
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert!(wait_for(Duration::from_secs(2), || stat(
        &rs,
        "upstream_rq_active"
    ) == 0));
    assert!(wait_for(Duration::from_secs(2), || b.get(|s| &s.open) == 0));
}

/// A literal with incremental indexing and a new name: the caller adds it to its table.
fn literal_indexed(o: &mut Vec<u8>, n: &[u8], v: &[u8]) {
    o.push(0x40);
    hpack::write_int(o, n.len(), 7, 0);
    o.extend_from_slice(n);
    hpack::write_int(o, v.len(), 7, 0);
    o.extend_from_slice(v);
}

/// An HPACK amplifier: a new caller connection whose first request adds `entries` to its
/// table, then `count` requests (the first included) each referencing every entry `refs`
/// times (one byte each). Returns the bytes it sent, the header bytes the backend received
/// meanwhile, and the GOAWAY code it got, if any.
fn amplify(
    listen: SocketAddr,
    b: &Backend,
    entries: &[(String, String)],
    refs: usize,
    count: u32,
) -> (usize, usize, Option<u32>) {
    let before = b.get(|s| &s.header_bytes);
    let mut p = raw_caller(listen, &[]);
    let mut sent = frame::PREFACE.len() + 9;
    let mut o = Vec::new();
    for i in 0..count {
        let id = 1 + 2 * i;
        let mut block = request_block(&[]);
        if i == 0 {
            for (n, v) in entries {
                literal_indexed(&mut block, n.as_bytes(), v.as_bytes());
            }
        }
        for _ in 0..refs {
            for k in 0..entries.len() {
                hpack::write_int(&mut block, 62 + k, 7, 0x80);
            }
        }
        frame::write_headers(&mut o, id, &block, false, 16_384);
        let body = grpc_msg(b"hi");
        frame::write_data_header(&mut o, id, body.len(), true);
        o.extend_from_slice(&body);
    }
    sent += o.len();
    p.s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = p.s.write_all(&o);
    let (mut ended, mut goaway) = (0, None);
    while ended < count {
        let Some(f) = p.read_frame() else { break };
        if p.handle_control(&f) {
            continue;
        }
        match f.h.kind {
            kind::HEADERS if f.h.flags & flag::END_STREAM != 0 => ended += 1,
            kind::RST_STREAM => ended += 1,
            kind::GOAWAY => goaway = Some(frame::goaway(&f.payload).unwrap().1),
            _ => {}
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    (sent, b.get(|s| &s.header_bytes) - before, goaway)
}

/// Item 1 (#20 leftovers): HPACK amplification. A caller's small blocks referencing large
/// entries of its own table are not re-encoded literally upstream: ringside's encoder indexes
/// (and Huffman-codes) what it sends, and a large entry is not churned out of its table by
/// small fields. Two shapes (Envoy 1.40: 27x and 326x bytes upstream per byte received).
#[test]
fn hpack_amplification_is_not_passed_upstream() {
    let b = Backend::start(10_000);
    let (rs, listen) = start(b.addr, "", "");
    // '{' has a 15-bit Huffman code: Huffman cannot shrink these values.
    let big = vec![("x-amp".to_string(), "{".repeat(4000))];
    let (sent, up, goaway) = amplify(listen, &b, &big, 1, 200);
    let one = up as f64 / sent as f64;
    assert_eq!(goaway, None);
    let small: Vec<_> = (0..60)
        .map(|i| (format!("x-s{i:02}"), "{".repeat(30)))
        .collect();
    let (sent, up, goaway) = amplify(listen, &b, &small, 10, 200);
    let many = up as f64 / sent as f64;
    assert_eq!(goaway, None);
    eprintln!("bytes upstream per byte received: one 4 KB entry {one:.2}x, 60 small entries x10 {many:.2}x");
    assert!(one < 2.0, "one 4 KB entry: {one:.1}x");
    assert!(many < 2.0, "many small entries: {many:.1}x");
    assert_eq!(stat(&rs, "triple_header_flood"), 0);
    // Ordinary calls still go through both ways (blocks decode with a decoder kept per
    // connection on both sides).
    let mut c = Client::connect(listen);
    for _ in 0..3 {
        let r = c.call(SAY, &[("x-big-header", "3000")], b"x");
        assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    }
}

/// Item 1 (#20 leftovers): a caller that makes ringside decode more than
/// `hpack_amplified_bytes_per_second_max` header bytes beyond what it sent gets GOAWAY
/// ENHANCE_YOUR_CALM, counted in `triple_header_flood`.
#[test]
fn hpack_amplifying_callers_get_enhance_your_calm() {
    let b = Backend::start(10_000);
    let (rs, listen) = start(
        b.addr,
        "    triple: {hpack_amplified_bytes_per_second_max: 1048576}\n",
        "",
    );
    let big = vec![("x-amp".to_string(), "{".repeat(4000))];
    // 400 x 4 KB decoded in well under a second: 1.6 MB.
    let (_, up, goaway) = amplify(listen, &b, &big, 1, 400);
    assert_eq!(goaway, Some(code::ENHANCE_YOUR_CALM));
    assert_eq!(stat(&rs, "triple_header_flood"), 1);
    assert!(up < 1 << 20, "{up} header bytes upstream");
    let r = Client::connect(listen).call(SAY, &[], b"x");
    assert_eq!(r.grpc_status(), Some(0));
}

/// Item 3 (#20 leftovers), upstream side: an upstream that breaks the protocol gets ringside's
/// GOAWAY (written within a bounded time before the socket closes), and its calls fail
/// UNAVAILABLE at once.
#[test]
fn an_upstream_connection_error_sends_goaway_and_fails_its_calls() {
    let b = Backend::start(100);
    let (rs, listen) = start(b.addr, "", "");
    let mut c = Client::connect(listen);
    let t0 = Instant::now();
    let r = c.call(SAY, &[("x-bad-frame", "1")], b"x");
    assert_eq!(r.grpc_status(), Some(14), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(
        wait_for(Duration::from_secs(2), || b.get(|s| &s.goaways) == 1),
        "the upstream got no GOAWAY"
    );
    assert!(wait_for(Duration::from_secs(2), || b.get(|s| &s.closed) == 1));
    assert_eq!(stat(&rs, "upstream_rq_active"), 0);
    assert_eq!(c.call(SAY, &[], b"x").grpc_status(), Some(0));
}

/// Reads until each of `ids` has its whole answer (response HEADERS, DATA, trailers with
/// END_STREAM), returning window as DATA arrives; returns per stream the DATA bytes and the
/// grpc-status.
fn read_answers(p: &mut Peer, ids: &[u32]) -> HashMap<u32, (usize, Option<u32>)> {
    let mut got: HashMap<u32, (usize, Option<u32>)> = HashMap::new();
    while got.values().filter(|(_, st)| st.is_some()).count() < ids.len() {
        let f = p
            .read_frame()
            .expect("a frame before every answer is complete");
        if p.handle_control(&f) {
            continue;
        }
        let e = got.entry(f.h.stream).or_default();
        match f.h.kind {
            kind::DATA => {
                e.0 += f.payload.len();
                p.ack_data(f.h.stream, f.payload.len());
            }
            kind::HEADERS if f.h.flags & flag::END_STREAM != 0 => {
                let block = frame::headers_fragment(f.h.flags, &f.payload)
                    .unwrap()
                    .to_vec();
                let fields = p.decode(&block);
                let st = fields
                    .iter()
                    .find(|(n, _)| n == "grpc-status")
                    .and_then(|(_, v)| v.parse().ok());
                e.1 = Some(st.unwrap_or(u32::MAX));
            }
            kind::HEADERS => {
                let block = frame::headers_fragment(f.h.flags, &f.payload)
                    .unwrap()
                    .to_vec();
                p.decode(&block);
            }
            kind::RST_STREAM => panic!("stream {} reset: an admitted call broken", f.h.stream),
            _ => {}
        }
    }
    got
}

/// Issue 20, per-process ceilings (as `dubbo_hardening::
/// the_shard_buffer_budget_sheds_new_requests_when_exhausted`): a caller makes the shard hold
/// more than `runtime.buffered_bytes_per_shard_max` (2 MiB) for it — answers waiting for a
/// window it never grants (`no_window`), or frames written to a socket it never reads — and
/// another caller's new call is shed with RESOURCE_EXHAUSTED naming the budget, counted in
/// `shard.0.rq_shed_memory`. The first caller's calls, admitted before, are answered whole
/// once it reads; then the gauge `shard.0.buffered_bytes` is back where it was and calls go
/// through again.
fn budget_sheds_new_calls(no_window: bool) {
    let b = Backend::start(1000);
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg = format!(
        "runtime:\n  buffered_bytes_per_shard_max: {}\n{}",
        2 << 20,
        config(admin, listen, b.addr, "", "")
    );
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    let gauge = || stat(&rs, "buffered_bytes");
    let mut c = Client::connect(listen);
    let r = c.call(SAY, &[], b"before");
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    // The gauge is published every second.
    std::thread::sleep(Duration::from_millis(1_200));
    let base = gauge();
    let (n, window) = if no_window {
        // 8 answers of 900 KB: more than the 4 MiB the shared upstream connection may send
        // before ringside has written them on.
        (8u32, 0)
    } else {
        // 16 answers of 900 KB, all the window they need: what the socket buffers do not take
        // waits in the connection's output.
        (16, frame::WINDOW_LIMIT)
    };
    let mut hog = raw_caller(listen, &[(setting::INITIAL_WINDOW_SIZE, window)]);
    let mut o = Vec::new();
    if !no_window {
        frame::write_window_update(&mut o, 0, frame::WINDOW_LIMIT - 65_535);
    }
    let ids: Vec<u32> = (0..n).map(|i| 1 + 2 * i).collect();
    for &id in &ids {
        write_request(&mut o, id, &[("x-reply-bytes", "900000")]);
    }
    hog.write(&o);
    assert!(
        wait_for(Duration::from_secs(10), || gauge() >= 2 << 20),
        "what the shard holds for the caller is charged: gauge {}",
        gauge()
    );
    let shed = c.call(SAY, &[], b"shed");
    assert_eq!(
        shed.grpc_status(),
        Some(8),
        "a new call is shed RESOURCE_EXHAUSTED while the budget is exhausted: {shed:?}"
    );
    assert!(
        shed.grpc_message().contains("buffer budget exhausted"),
        "the answer says why: {}",
        shed.grpc_message()
    );
    assert_eq!(stat(&rs, "rq_shed_memory"), 1);
    if no_window {
        let mut o = Vec::new();
        frame::write_settings(&mut o, &[(setting::INITIAL_WINDOW_SIZE, 1 << 20)]);
        frame::write_window_update(&mut o, 0, 16 << 20);
        hog.write(&o);
    }
    let answers = read_answers(&mut hog, &ids);
    for id in &ids {
        assert_eq!(
            answers.get(id).copied(),
            Some((5 + 900_000, Some(0))),
            "admitted call on stream {id} answered whole"
        );
    }
    assert!(
        wait_for(Duration::from_secs(5), || gauge() <= base),
        "buffered bytes back to {base} once the answers are read: {}",
        gauge()
    );
    drop(hog);
    let r = c.call(SAY, &[], b"after");
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert_eq!(stat(&rs, "rq_shed_memory"), 1);
}

#[test]
fn the_shard_buffer_budget_sheds_new_calls_when_answers_wait_for_window() {
    budget_sheds_new_calls(true);
}

#[test]
fn the_shard_buffer_budget_sheds_new_calls_when_a_caller_does_not_read() {
    budget_sheds_new_calls(false);
}
