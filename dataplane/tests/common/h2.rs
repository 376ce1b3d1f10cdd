//! A small blocking HTTP/2 peer for tests, built on the codec's framing and HPACK: a gRPC-style
//! client that also sends deliberately broken input, and an upstream that answers each stream
//! with its name (behaviour switched by request headers). Independent of ringside's own relay
//! code, so a bug there cannot hide in both.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use codec::h2::frame::{self, flag, kind, FrameHeader};
use codec::h2::hpack::{self, Decoder};

pub struct Frame {
    pub h: FrameHeader,
    pub payload: Vec<u8>,
}

/// One HTTP/2 connection, blocking.
pub struct Peer {
    pub s: TcpStream,
    dec: Decoder,
    pub send_window: i64,
    stream_windows: HashMap<u32, i64>,
    peer_initial: i64,
    pub peer_frame_max: usize,
}

impl Peer {
    pub fn new(s: TcpStream) -> Peer {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Peer {
            s,
            dec: Decoder::default(),
            send_window: 65_535,
            stream_windows: HashMap::new(),
            peer_initial: 65_535,
            peer_frame_max: 16_384,
        }
    }

    pub fn write(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// Reads one frame; `None` on EOF or error.
    pub fn read_frame(&mut self) -> Option<Frame> {
        let mut hb = [0u8; 9];
        self.s.read_exact(&mut hb).ok()?;
        let h = FrameHeader::parse(&hb)?;
        let mut payload = vec![0; h.len as usize];
        self.s.read_exact(&mut payload).ok()?;
        Some(Frame { h, payload })
    }

    pub fn decode(&mut self, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.dec
            .decode(block, &mut |n, v, _| {
                out.push((
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ))
            })
            .expect("valid hpack from ringside");
        out
    }

    /// Applies SETTINGS and WINDOW_UPDATE frames (acking SETTINGS, answering PING); returns
    /// true when the frame was such a connection-level frame.
    pub fn handle_control(&mut self, f: &Frame) -> bool {
        match f.h.kind {
            kind::SETTINGS => {
                if f.h.flags & flag::ACK == 0 {
                    for (id, v) in frame::settings(&f.payload).unwrap() {
                        if id == frame::setting::INITIAL_WINDOW_SIZE {
                            let delta = i64::from(v) - self.peer_initial;
                            self.peer_initial = i64::from(v);
                            for w in self.stream_windows.values_mut() {
                                *w += delta;
                            }
                        }
                        if id == frame::setting::MAX_FRAME_SIZE {
                            self.peer_frame_max = v as usize;
                        }
                    }
                    let mut o = Vec::new();
                    frame::write_settings_ack(&mut o);
                    self.write(&o);
                }
                true
            }
            kind::WINDOW_UPDATE => {
                let inc = i64::from(frame::window_update(&f.payload).unwrap());
                if f.h.stream == 0 {
                    self.send_window += inc;
                } else {
                    *self
                        .stream_windows
                        .entry(f.h.stream)
                        .or_insert(self.peer_initial) += inc;
                }
                true
            }
            kind::PING => {
                if f.h.flags & flag::ACK == 0 {
                    let mut o = Vec::new();
                    frame::write_ping(&mut o, true, f.payload[..8].try_into().unwrap());
                    self.write(&o);
                }
                true
            }
            _ => false,
        }
    }

    /// Returns window for received DATA at once.
    pub fn ack_data(&mut self, stream: u32, n: usize) {
        if n == 0 {
            return;
        }
        let mut o = Vec::new();
        frame::write_window_update(&mut o, 0, n as u32);
        frame::write_window_update(&mut o, stream, n as u32);
        self.write(&o);
    }

    pub fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) {
        let mut block = Vec::new();
        for (n, v) in fields {
            hpack::encode_field(&mut block, n.as_bytes(), v.as_bytes(), false);
        }
        let mut o = Vec::new();
        frame::write_headers(&mut o, stream, &block, end, self.peer_frame_max as u32);
        self.write(&o);
    }

    /// Sends DATA respecting the peer's windows (reading control frames while blocked; other
    /// frames read meanwhile are returned).
    pub fn data(&mut self, stream: u32, mut body: &[u8], end: bool) -> Vec<Frame> {
        let mut other = Vec::new();
        loop {
            let sw = *self
                .stream_windows
                .entry(stream)
                .or_insert(self.peer_initial);
            let n = body
                .len()
                .min(self.peer_frame_max)
                .min(sw.min(self.send_window).max(0) as usize);
            if n == 0 && !body.is_empty() {
                let f = self.read_frame().expect("frame while waiting for window");
                if !self.handle_control(&f) {
                    other.push(f);
                }
                continue;
            }
            let last = n == body.len();
            let mut o = Vec::new();
            frame::write_data_header(&mut o, stream, n, last && end);
            o.extend_from_slice(&body[..n]);
            self.write(&o);
            self.send_window -= n as i64;
            *self.stream_windows.get_mut(&stream).unwrap() -= n as i64;
            body = &body[n..];
            if last {
                return other;
            }
        }
    }
}

/// A gRPC message: 5-byte prefix and payload.
pub fn grpc_msg(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[derive(Debug, Default)]
pub struct Reply {
    pub headers: Vec<(String, String)>,
    pub data: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub reset: Option<u32>,
}

impl Reply {
    pub fn grpc_status(&self) -> Option<u32> {
        self.trailers
            .iter()
            .chain(&self.headers)
            .find(|(n, _)| n == "grpc-status")
            .and_then(|(_, v)| v.parse().ok())
    }
    pub fn grpc_message(&self) -> String {
        self.trailers
            .iter()
            .chain(&self.headers)
            .find(|(n, _)| n == "grpc-message")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
    /// The payload of the first gRPC message, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.data.get(5..).unwrap_or(&[])).into_owned()
    }
}

pub struct Client {
    pub p: Peer,
    next: u32,
    pub goaway: Option<(u32, u32)>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let mut p = Peer::new(TcpStream::connect(addr).unwrap());
        let mut o = frame::PREFACE.to_vec();
        frame::write_settings(&mut o, &[(frame::setting::INITIAL_WINDOW_SIZE, 1 << 20)]);
        frame::write_window_update(&mut o, 0, 16 << 20);
        p.write(&o);
        Client {
            p,
            next: 1,
            goaway: None,
        }
    }

    pub fn next_id(&mut self) -> u32 {
        let id = self.next;
        self.next += 2;
        id
    }

    /// Starts a gRPC call; an `:authority` in `extra` replaces the default `ringside.test`
    /// (among the pseudo-headers, where HTTP/2 wants it).
    pub fn start(&mut self, path: &str, extra: &[(&str, &str)], body: &[u8], end: bool) -> u32 {
        let id = self.next_id();
        let authority = extra
            .iter()
            .find(|(n, _)| *n == ":authority")
            .map_or("ringside.test", |(_, v)| *v);
        let mut h = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        h.extend(extra.iter().filter(|(n, _)| *n != ":authority"));
        self.p.headers(id, &h, false);
        let other = self.p.data(id, &grpc_msg(body), end);
        assert!(other.is_empty(), "unexpected frames while sending");
        id
    }

    /// Reads until stream `id` ends (trailers, END_STREAM or RST); other streams' frames are
    /// collected into `others`.
    pub fn finish(&mut self, id: u32, others: &mut HashMap<u32, Reply>) -> Reply {
        loop {
            let done = others
                .get(&id)
                .is_some_and(|r| r.reset.is_some() || !r.trailers.is_empty());
            if done {
                return others.remove(&id).unwrap();
            }
            let Some(f) = self.p.read_frame() else {
                return others.remove(&id).unwrap_or_else(|| Reply {
                    reset: Some(u32::MAX),
                    ..Default::default()
                });
            };
            if self.p.handle_control(&f) {
                continue;
            }
            let sid = f.h.stream;
            match f.h.kind {
                kind::HEADERS => {
                    let frag = frame::headers_fragment(f.h.flags, &f.payload)
                        .unwrap()
                        .to_vec();
                    let fields = self.p.decode(&frag);
                    let r = others.entry(sid).or_default();
                    let end = f.h.flags & flag::END_STREAM != 0;
                    if r.headers.is_empty() {
                        r.headers = fields.clone();
                        if end {
                            // trailers-only
                            r.trailers = fields;
                        }
                    } else {
                        r.trailers = fields;
                    }
                }
                kind::DATA => {
                    let d = frame::data_payload(f.h.flags, &f.payload).unwrap().to_vec();
                    self.p.ack_data(sid, f.payload.len());
                    others.entry(sid).or_default().data.extend_from_slice(&d);
                }
                kind::RST_STREAM => {
                    others.entry(sid).or_default().reset =
                        Some(frame::rst_stream(&f.payload).unwrap());
                }
                kind::GOAWAY => {
                    self.goaway = Some(frame::goaway(&f.payload).unwrap());
                }
                _ => {}
            }
        }
    }

    pub fn call(&mut self, path: &str, extra: &[(&str, &str)], body: &[u8]) -> Reply {
        let id = self.start(path, extra, body, true);
        self.finish(id, &mut HashMap::new())
    }

    /// Reads frames until the connection closes; returns the GOAWAY error code seen, if any.
    pub fn read_until_closed(&mut self) -> Option<u32> {
        while let Some(f) = self.p.read_frame() {
            if f.h.kind == kind::GOAWAY {
                self.goaway = Some(frame::goaway(&f.payload).unwrap());
            }
            self.p.handle_control(&f);
        }
        self.goaway.map(|g| g.1)
    }
}

/// A test upstream: each stream is answered, once the request ends, with a gRPC message
/// `{name}:{request payload}` and grpc-status 0. Request headers switch behaviour:
/// `x-delay-ms` (wait first), `x-reply-bytes` (reply with that many bytes), `x-rst` (reset the
/// stream instead), `x-status` (reply with that grpc-status), `x-fail-on: NAME` (UNAVAILABLE
/// when this upstream is NAME), `x-echo-header` (reply with the
/// value of the named request header). Failures for retries: `x-fail-first: N` with `x-key: K`
/// (the first N attempts of key K, over all test upstreams, fail), `x-fail-only-on: NAME[,NAME]`
/// (every attempt at these upstreams fails), each as `x-fail-with` says: a gRPC code answered
/// trailers-only (default 14), `rst` (RST_STREAM INTERNAL_ERROR) or `slow` (answer after 500 ms).
pub struct Upstream {
    pub addr: SocketAddr,
}

/// Connections an [`Upstream`] accepted.
pub static UPSTREAM_CONNECTIONS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

impl Upstream {
    pub fn start(name: &'static str) -> Upstream {
        Self::with_streams_max(name, 1000)
    }

    /// An upstream whose SETTINGS allow `streams` concurrent streams per connection.
    pub fn with_streams_max(name: &'static str, streams: u32) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                UPSTREAM_CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::spawn(move || serve_upstream(name, s, streams));
            }
        });
        Upstream { addr }
    }
}

/// Requests by test upstream name: their `:authority` and body.
type Seen = HashMap<String, Vec<(String, Vec<u8>)>>;

/// Requests each test upstream (by name) answered.
#[allow(clippy::disallowed_types)]
static SEEN: std::sync::LazyLock<std::sync::Mutex<Seen>> =
    std::sync::LazyLock::new(Default::default);

/// The requests (`:authority`, body) the test upstreams named `name` received complete.
pub fn upstream_seen(name: &str) -> Vec<(String, Vec<u8>)> {
    SEEN.lock().unwrap().get(name).cloned().unwrap_or_default()
}

/// Attempts per `x-key` seen by the test upstreams (`x-fail-first`).
static ATTEMPTS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, u32>>> =
    std::sync::LazyLock::new(Default::default);

/// A request the test upstream is reading: headers so far, body so far.
type Request = (Vec<(String, String)>, Vec<u8>);

fn serve_upstream(name: &str, s: TcpStream, streams: u32) {
    let mut p = Peer::new(s);
    p.s.set_read_timeout(None).unwrap();
    let mut preface = [0u8; 24];
    if p.s.read_exact(&mut preface).is_err() || &preface != frame::PREFACE {
        return;
    }
    let mut o = Vec::new();
    frame::write_settings(&mut o, &[(frame::setting::MAX_CONCURRENT_STREAMS, streams)]);
    p.write(&o);
    let mut reqs: HashMap<u32, Request> = HashMap::new();
    while let Some(f) = p.read_frame() {
        if p.handle_control(&f) {
            continue;
        }
        let sid = f.h.stream;
        let mut ended = f.h.flags & flag::END_STREAM != 0;
        match f.h.kind {
            kind::HEADERS => {
                let frag = frame::headers_fragment(f.h.flags, &f.payload)
                    .unwrap()
                    .to_vec();
                let fields = p.decode(&frag);
                let r = reqs.entry(sid).or_default();
                if r.0.is_empty() {
                    r.0 = fields;
                }
            }
            kind::DATA => {
                let d = frame::data_payload(f.h.flags, &f.payload).unwrap().to_vec();
                p.ack_data(sid, f.payload.len());
                reqs.entry(sid).or_default().1.extend_from_slice(&d);
            }
            kind::RST_STREAM => {
                reqs.remove(&sid);
                ended = false;
            }
            _ => ended = false,
        }
        if !ended {
            continue;
        }
        let Some((h, body)) = reqs.remove(&sid) else {
            continue;
        };
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        SEEN.lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .push((get(":authority").unwrap_or_default(), body.clone()));
        let fail = match (get("x-fail-first"), get("x-key")) {
            (Some(n), Some(k)) => {
                let mut m = ATTEMPTS.lock().unwrap();
                let seen = m.entry(k).or_insert(0);
                *seen += 1;
                *seen <= n.parse::<u32>().unwrap()
            }
            _ => get("x-fail-only-on").is_some_and(|n| n.split(',').any(|n| n == name)),
        };
        if fail {
            let mut o = Vec::new();
            match get("x-fail-with").as_deref() {
                Some("rst") => frame::write_rst_stream(&mut o, sid, frame::code::INTERNAL_ERROR),
                Some("slow") => std::thread::sleep(Duration::from_millis(500)),
                code => {
                    p.headers(
                        sid,
                        &[
                            (":status", "200"),
                            ("content-type", "application/grpc"),
                            ("grpc-status", code.unwrap_or("14")),
                            ("grpc-message", "failing on purpose"),
                        ],
                        true,
                    );
                }
            }
            if !o.is_empty() {
                p.write(&o);
                continue;
            }
            if get("x-fail-with").as_deref() != Some("slow") {
                continue;
            }
        }
        if let Some(ms) = get("x-delay-ms") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
        }
        if get("x-rst").is_some() {
            let mut o = Vec::new();
            frame::write_rst_stream(&mut o, sid, frame::code::INTERNAL_ERROR);
            p.write(&o);
            continue;
        }
        let payload = if let Some(n) = get("x-reply-bytes") {
            vec![b'r'; n.parse().unwrap()]
        } else if let Some(k) = get("x-echo-header") {
            format!("{name}:{}", get(&k).unwrap_or_default()).into_bytes()
        } else {
            let mut v = format!("{name}:").into_bytes();
            v.extend_from_slice(body.get(5..).unwrap_or(&[]));
            v
        };
        // `x-fail-on: NAME`: the upstream of that name answers UNAVAILABLE (a provider in
        // trouble among healthy ones).
        let status = if get("x-fail-on").is_some_and(|n| n == name) {
            "14".to_string()
        } else {
            get("x-status").unwrap_or_else(|| "0".into())
        };
        p.headers(
            sid,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        let other = p.data(sid, &grpc_msg(&payload), false);
        // Frames read while blocked on window (new requests) are not expected in these tests.
        drop(other);
        p.headers(
            sid,
            &[("grpc-status", &status), ("grpc-message", "from upstream")],
            true,
        );
    }
}
