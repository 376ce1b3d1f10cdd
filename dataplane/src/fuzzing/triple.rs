//! The Triple script: one HTTP/2 caller and the gRPC servers behind two endpoints, played by
//! the fuzzer's input, around one real Triple listener and its upstream pool.
//!
//! Operations: the caller sends HEADERS (a new stream to a routed, 1 ms-deadline or unknown
//! method, or trailers on an open one), DATA within the windows ringside granted, WINDOW_UPDATE,
//! PING, RST_STREAM, SETTINGS, GOAWAY, raw bytes, half-closes, stops or resumes reading; a
//! connect attempt is accepted (the server's SETTINGS first) or refused; a server answers one of
//! the streams ringside opened (full response, trailers-only, headers, DATA, trailers, RST,
//! window), sends raw bytes, GOAWAY or leaves; the clock moves a few ms.
//!
//! Checked after every operation, both ways: ringside's output is well-formed HTTP/2 (its
//! SETTINGS first, frames that parse, header blocks that decode with one HPACK decoder per
//! connection); no HEADERS or DATA on a stream after ringside ended it (END_STREAM or
//! RST_STREAM); DATA within the connection window the peer gave; towards the caller only
//! streams the caller opened, towards servers new stream ids odd and increasing. At the end
//! (servers gone, connects refused, the caller's windows opened): every stream a well-behaved
//! caller opened got its end, unless ringside sent GOAWAY; every task ends and the gauges and
//! the shard's buffer budget are back to 0.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use codec::h2::frame::{self, flag, kind, setting, FrameHeader, HEADER_BYTES};
use codec::h2::hpack::{self, Decoder};
use shard::mem::MemStream;

use super::{settle, Fixture, Script, Upstreams, PIPE_BYTES, SLEEPS_MAX};

/// The config every run serves: small stream and reset limits, the smallest windows, routes
/// with a normal and a 1 ms deadline, one cluster of two endpoints.
pub const CONFIG: &str = r#"
listeners:
  - name: in
    address: 127.0.0.1:50051
    protocol: triple
    triple:
      concurrent_streams_max: 4
      stream_window_bytes: 65535
      connection_window_bytes: 65535
      resets_per_second_max: 20
      header_list_bytes_max: 4096
      routes:
        - match: {service: {exact: helloworld.Greeter}, method: {exact: Slow}}
          route: {cluster: backend, timeout_ms: 1}
        - match: {service: {exact: helloworld.Greeter}}
          route: {cluster: backend}
clusters:
  - name: backend
    endpoints: [127.0.0.2:50051, 127.0.0.3:50051]
    connect_timeout_ms: 60000
    connections_per_host: 1
"#;

/// What ringside may send in a frame (its SETTINGS_MAX_FRAME_SIZE default applies both ways:
/// neither peer of the script raises it).
const FRAME_MAX: u32 = frame::FRAME_BYTES_DEFAULT;
const WINDOW: i64 = frame::WINDOW_DEFAULT as i64;

thread_local! {
    static FIXTURE: Fixture = Fixture::new(CONFIG);
}

/// Operation codes.
pub mod op {
    pub const HEADERS: u8 = 0;
    pub const DATA: u8 = 1;
    pub const RST: u8 = 2;
    pub const WINDOW_UPDATE: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 5;
    pub const RAW: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const GOAWAY: u8 = 8;
    pub const READING: u8 = 9;
    pub const ACCEPT: u8 = 10;
    pub const REFUSE: u8 = 11;
    pub const RESPOND: u8 = 12;
    pub const UP_RAW: u8 = 13;
    pub const UP_GOAWAY: u8 = 14;
    pub const UP_CLOSE: u8 = 15;
    pub const SLEEP: u8 = 16;
    pub const COUNT: u8 = 17;
}

/// A request header block: `pick` bits 0-1 choose the method (SayHello, Slow with its 1 ms
/// route deadline, an unknown service), bit 2 adds `grpc-timeout: 1m`.
pub fn request_block(pick: u8) -> Vec<u8> {
    let path: &[u8] = match pick & 3 {
        1 => b"/helloworld.Greeter/Slow",
        2 => b"/unknown.Service/Call",
        _ => b"/helloworld.Greeter/SayHello",
    };
    let mut b = Vec::new();
    for (n, v) in [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"greeter"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ] {
        hpack::encode_field(&mut b, n, v, false);
    }
    if pick & 4 != 0 {
        hpack::encode_field(&mut b, b"grpc-timeout", b"1m", false);
    }
    b
}

fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        hpack::encode_field(&mut b, n, v, false);
    }
    b
}

/// One gRPC message of `n` bytes, framed.
fn message(n: usize) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(n as u32).to_be_bytes());
    m.resize(5 + n, b'm');
    m
}

fn h2(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    FrameHeader {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    }
    .write(out);
    out.extend_from_slice(payload);
}

/// One end of an HTTP/2 connection as the script sees what ringside sends to it.
struct Peer {
    end: Option<MemStream>,
    input: Vec<u8>,
    /// Bytes of `input` already parsed.
    parsed: usize,
    /// Still expects ringside's client preface (servers) / its SETTINGS first.
    preface: bool,
    settings_seen: bool,
    decoder: Decoder,
    /// Streams ringside ended (END_STREAM or RST_STREAM sent).
    ended: HashSet<u32>,
    /// Streams that ringside sent anything on.
    seen: HashSet<u32>,
    /// DATA bytes ringside sent, and the connection window this peer gave it beyond 65535.
    data_in: i64,
    conn_credit: i64,
    /// Per stream: DATA bytes ringside sent, and window this peer gave beyond the initial one.
    stream_data: HashMap<u32, i64>,
    stream_credit: HashMap<u32, i64>,
    /// Window ringside gave this peer (connection, per stream) beyond the initial, and what
    /// the peer sent.
    granted: i64,
    granted_stream: HashMap<u32, i64>,
    sent: i64,
    sent_stream: HashMap<u32, i64>,
    goaway: Option<u32>,
    eof: bool,
    /// Sent only well-formed frames within the rules: its streams must all end.
    clean: bool,
    reading: bool,
}

impl Peer {
    fn new(end: MemStream, server: bool) -> Peer {
        Peer {
            end: Some(end),
            input: Vec::new(),
            parsed: 0,
            preface: server,
            settings_seen: false,
            decoder: Decoder::new(hpack::TABLE_BYTES_DEFAULT),
            ended: HashSet::new(),
            seen: HashSet::new(),
            data_in: 0,
            conn_credit: 0,
            stream_data: HashMap::new(),
            stream_credit: HashMap::new(),
            granted: 0,
            granted_stream: HashMap::new(),
            sent: 0,
            sent_stream: HashMap::new(),
            goaway: None,
            eof: false,
            clean: true,
            reading: true,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> bool {
        let ok = match &self.end {
            Some(e) => matches!(e.try_write(bytes), Ok(n) if n == bytes.len()),
            None => false,
        };
        if !ok {
            self.clean = false;
        }
        ok
    }

    /// How many DATA bytes this peer may send on `stream` (the windows ringside granted).
    fn send_room(&self, stream: u32) -> i64 {
        let conn = WINDOW + self.granted - self.sent;
        let s = WINDOW + self.granted_stream.get(&stream).copied().unwrap_or(0)
            - self.sent_stream.get(&stream).copied().unwrap_or(0);
        conn.min(s).max(0)
    }

    fn note_sent(&mut self, stream: u32, n: usize) {
        self.sent += n as i64;
        *self.sent_stream.entry(stream).or_default() += n as i64;
    }

    /// Reads and checks what ringside sent; `who` names the peer in failures. Returns the
    /// streams ringside opened (HEADERS on a stream not seen before).
    fn collect(&mut self, who: &str, all: bool) -> Vec<u32> {
        let mut opened = Vec::new();
        let Some(end) = &self.end else {
            return opened;
        };
        if !(self.reading || all) {
            return opened;
        }
        loop {
            let before = self.input.len();
            if end.try_read(&mut self.input).is_none() {
                self.eof = true;
            }
            if self.input.len() == before {
                break;
            }
        }
        let mut acks = Vec::new();
        if self.preface {
            if self.input.len() < frame::PREFACE.len() {
                return opened;
            }
            assert_eq!(
                &self.input[..frame::PREFACE.len()],
                frame::PREFACE,
                "{who}: ringside's client preface"
            );
            self.parsed = frame::PREFACE.len();
            self.preface = false;
        }
        // A header block in progress, and where its HEADERS frame starts.
        let mut cont: Option<(u32, bool, Vec<u8>)> = None;
        let mut cont_start = 0;
        while let Some(h) = FrameHeader::parse(&self.input[self.parsed..]) {
            let total = HEADER_BYTES + h.len as usize;
            if self.input.len() - self.parsed < total {
                break;
            }
            let frame_start = self.parsed;
            let at = self.parsed + HEADER_BYTES;
            let payload = self.input[at..at + h.len as usize].to_vec();
            self.parsed += total;
            assert!(h.len <= FRAME_MAX, "{who}: frame of {} bytes", h.len);
            if !self.settings_seen {
                assert!(
                    h.kind == kind::SETTINGS && h.flags & flag::ACK == 0,
                    "{who}: ringside's first frame is not SETTINGS: {h:?}"
                );
                self.settings_seen = true;
            }
            if let Some((sid, end_, mut b)) = cont.take() {
                assert!(
                    h.kind == kind::CONTINUATION && h.stream == sid,
                    "{who}: header block of stream {sid} interrupted by {h:?}"
                );
                b.extend_from_slice(&payload);
                if h.flags & flag::END_HEADERS != 0 {
                    self.on_headers(who, sid, end_, &b, &mut opened);
                } else {
                    cont = Some((sid, end_, b));
                }
                continue;
            }
            let s = h.stream;
            match h.kind {
                kind::HEADERS => {
                    let frag = frame::headers_fragment(h.flags, &payload)
                        .unwrap_or_else(|e| panic!("{who}: ringside's HEADERS: {e}"));
                    let end_ = h.flags & flag::END_STREAM != 0;
                    if h.flags & flag::END_HEADERS != 0 {
                        self.on_headers(who, s, end_, frag, &mut opened);
                    } else {
                        cont = Some((s, end_, frag.to_vec()));
                        cont_start = frame_start;
                    }
                }
                kind::DATA => {
                    assert!(s != 0, "{who}: DATA on stream 0");
                    assert!(
                        !self.ended.contains(&s),
                        "{who}: DATA on stream {s} after its end"
                    );
                    assert!(
                        self.seen.contains(&s),
                        "{who}: DATA before HEADERS on stream {s}"
                    );
                    let n = i64::from(h.len);
                    self.data_in += n;
                    *self.stream_data.entry(s).or_default() += n;
                    if self.clean {
                        assert!(
                            self.data_in <= WINDOW + self.conn_credit,
                            "{who}: {} DATA bytes past a connection window of {}",
                            self.data_in,
                            WINDOW + self.conn_credit
                        );
                    }
                    if h.flags & flag::END_STREAM != 0 {
                        self.ended.insert(s);
                    }
                }
                kind::RST_STREAM => {
                    assert!(s != 0, "{who}: RST_STREAM on stream 0");
                    self.ended.insert(s);
                }
                kind::SETTINGS => {
                    assert_eq!(s, 0, "{who}: SETTINGS on a stream");
                    if h.flags & flag::ACK == 0 {
                        frame::settings(&payload)
                            .unwrap_or_else(|e| panic!("{who}: ringside's SETTINGS: {e}"))
                            .for_each(drop);
                        frame::write_settings_ack(&mut acks);
                    }
                }
                kind::WINDOW_UPDATE => {
                    let inc = i64::from(
                        frame::window_update(&payload)
                            .unwrap_or_else(|e| panic!("{who}: ringside's WINDOW_UPDATE: {e}")),
                    );
                    assert!(inc > 0, "{who}: WINDOW_UPDATE of 0");
                    if s == 0 {
                        self.granted += inc;
                    } else {
                        *self.granted_stream.entry(s).or_default() += inc;
                    }
                }
                kind::GOAWAY => {
                    let (last, _) = frame::goaway(&payload)
                        .unwrap_or_else(|e| panic!("{who}: ringside's GOAWAY: {e}"));
                    self.goaway = Some(last);
                }
                kind::PING => assert_eq!(payload.len(), 8, "{who}: PING length"),
                _ => panic!("{who}: ringside sent frame type {}", h.kind),
            }
        }
        if cont.is_some() {
            // The rest of the block is not here yet: read it from its HEADERS next time.
            self.parsed = cont_start;
        }
        if !acks.is_empty() {
            let clean = self.clean;
            self.write(&acks);
            self.clean = clean;
        }
        opened
    }

    fn on_headers(&mut self, who: &str, s: u32, end: bool, block: &[u8], opened: &mut Vec<u32>) {
        assert!(s != 0, "{who}: HEADERS on stream 0");
        assert!(
            !self.ended.contains(&s),
            "{who}: HEADERS on stream {s} after its end"
        );
        let mut fields = 0;
        self.decoder
            .decode(block, &mut |_, _, _| fields += 1)
            .unwrap_or_else(|e| panic!("{who}: ringside's header block does not decode: {e}"));
        if self.seen.insert(s) {
            opened.push(s);
        }
        if end {
            self.ended.insert(s);
        }
    }
}

/// Runs one script; panics on a broken invariant.
pub fn run(data: &[u8], live_bytes: fn() -> usize) {
    let fx = FIXTURE.with(Fixture::clone);
    let data = data.to_vec();
    // A task of its own, so that its turns let the connection tasks run.
    super::runtime()
        .block_on(async move { shard::monoio::spawn(script(fx, data, live_bytes)).await });
    Upstreams::uninstall();
    super::check_no_leak(live_bytes);
}

/// A server behind an endpoint: the streams ringside opened on it and their state.
struct Server {
    peer: Peer,
    streams: Vec<u32>,
    /// Streams this server ended (its END_STREAM or RST_STREAM sent).
    done: HashSet<u32>,
    max_opened: u32,
}

async fn script(fx: Fixture, data: Vec<u8>, live_bytes: fn() -> usize) {
    let base = live_bytes();
    let ups = Upstreams::install();
    let (shard, stats) = fx.shard();
    let ctx = shard.listener("in").expect("listener in");
    let (ours, theirs) = shard::mem::pair(PIPE_BYTES);
    let done = Rc::new(Cell::new(false));
    {
        let (ctx, flag) = (ctx.clone(), done.clone());
        shard::monoio::spawn(async move {
            crate::worker::listener::serve_connection(theirs, ctx).await;
            flag.set(true);
        });
    }
    let mut caller = Peer::new(ours, false);
    let mut hello = frame::PREFACE.to_vec();
    frame::write_settings(&mut hello, &[(setting::ENABLE_PUSH, 0)]);
    caller.write(&hello);
    // Streams the caller opened, and those it ended (END_STREAM or RST_STREAM sent).
    let mut opened: Vec<u32> = Vec::new();
    let mut caller_ended: HashSet<u32> = HashSet::new();
    let mut servers: Vec<Server> = Vec::new();
    let mut s = Script::new(&data);
    let (mut sleeps, mut peak) = (0, 0);
    while !s.is_empty() {
        let code = s.byte() % op::COUNT;
        let a = s.args();
        // Raw bytes follow their operation (length: argument 1).
        let raw = match code {
            op::RAW | op::UP_RAW => s.bytes(usize::from(a[1])),
            _ => &[],
        };
        let mut out = Vec::new();
        match code {
            op::HEADERS => {
                let (sel, pick) = (a[0], a[1]);
                let end = pick & 8 != 0;
                if sel < 128 || opened.is_empty() {
                    let id = opened.last().map_or(1, |l| l + 2);
                    opened.push(id);
                    frame::write_headers(&mut out, id, &request_block(pick), end, FRAME_MAX);
                    if end {
                        caller_ended.insert(id);
                    }
                } else {
                    // Trailers on an open stream (END_STREAM always).
                    let id = opened[usize::from(sel) % opened.len()];
                    if !caller_ended.insert(id) {
                        caller.clean = false;
                    }
                    frame::write_headers(&mut out, id, &block(&[]), true, FRAME_MAX);
                }
                caller.write(&out);
            }
            op::DATA => {
                let (sel, len, end) = (usize::from(a[0]), a[1], a[2] & 1 == 1);
                let Some(&id) = opened.get(sel % opened.len().max(1)) else {
                    continue;
                };
                if caller_ended.contains(&id) {
                    continue;
                }
                let mut m = message(usize::from(len) * 8);
                m.truncate(caller.send_room(id) as usize);
                h2(
                    &mut out,
                    kind::DATA,
                    if end { flag::END_STREAM } else { 0 },
                    id,
                    &m,
                );
                if caller.write(&out) {
                    caller.note_sent(id, m.len());
                    if end {
                        caller_ended.insert(id);
                    }
                }
            }
            op::RST => {
                let (sel, c) = (usize::from(a[0]), a[1]);
                let id = opened.get(sel % opened.len().max(1)).copied().unwrap_or(1);
                frame::write_rst_stream(&mut out, id, u32::from(c % 12));
                caller.clean = false;
                caller.write(&out);
            }
            op::WINDOW_UPDATE => {
                let (sel, inc) = (
                    usize::from(a[0]),
                    u32::from(u16::from_be_bytes([a[1], a[2]])).max(1),
                );
                let id = if sel == 0 {
                    0
                } else {
                    opened.get(sel % opened.len().max(1)).copied().unwrap_or(0)
                };
                frame::write_window_update(&mut out, id, inc);
                if caller.write(&out) {
                    if id == 0 {
                        caller.conn_credit += i64::from(inc);
                    } else {
                        *caller.stream_credit.entry(id).or_default() += i64::from(inc);
                    }
                }
            }
            op::SETTINGS => {
                let (id, v) = (a[0] % 7, u32::from(u16::from_be_bytes([a[1], a[2]])));
                frame::write_settings(&mut out, &[(u16::from(id), v)]);
                caller.clean = false;
                caller.write(&out);
            }
            op::PING => {
                frame::write_ping(&mut out, false, [a[0]; 8]);
                caller.write(&out);
            }
            op::RAW => {
                caller.clean = false;
                caller.write(raw);
            }
            op::CLOSE => {
                caller.clean = false;
                if let Some(e) = &caller.end {
                    e.close_write();
                }
            }
            op::GOAWAY => {
                frame::write_goaway(&mut out, 0, u32::from(a[0] % 12), b"bye");
                caller.clean = false;
                caller.write(&out);
            }
            op::READING => caller.reading = !caller.reading,
            op::ACCEPT => {
                let (i, max) = (usize::from(a[0]), a[1]);
                if let Some((_, end)) = ups.accept(i) {
                    let mut peer = Peer::new(end, true);
                    let mut hello = Vec::new();
                    let settings: &[(u16, u32)] = match max % 4 {
                        0 => &[],
                        n => &[(setting::MAX_CONCURRENT_STREAMS, u32::from(n))],
                    };
                    frame::write_settings(&mut hello, settings);
                    peer.write(&hello);
                    servers.push(Server {
                        peer,
                        streams: Vec::new(),
                        done: HashSet::new(),
                        max_opened: 0,
                    });
                }
            }
            op::REFUSE => {
                ups.refuse(usize::from(a[0]));
            }
            op::RESPOND | op::UP_RAW | op::UP_GOAWAY | op::UP_CLOSE => {
                let pick = usize::from(a[0]);
                if servers.is_empty() {
                    continue;
                }
                let n = servers.len();
                let sv = &mut servers[pick % n];
                match code {
                    op::RESPOND => {
                        let (sel, what, len) = (usize::from(a[1]), a[2], a[3]);
                        let Some(&id) = sv.streams.get(sel % sv.streams.len().max(1)) else {
                            continue;
                        };
                        respond(sv, id, what, len, &mut out);
                        sv.peer.write(&out);
                    }
                    op::UP_RAW => {
                        sv.peer.clean = false;
                        sv.peer.write(raw);
                    }
                    op::UP_GOAWAY => {
                        let last = sv.max_opened.saturating_sub(2 * u32::from(a[1] % 3));
                        frame::write_goaway(&mut out, last, 0, b"");
                        sv.peer.write(&out);
                    }
                    _ => {
                        if a[1] & 1 == 0 {
                            if let Some(e) = &sv.peer.end {
                                e.close_write();
                            }
                        } else {
                            sv.peer.end = None;
                        }
                    }
                }
            }
            _ => {
                if sleeps < SLEEPS_MAX {
                    sleeps += 1;
                    shard::monoio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        settle().await;
        collect_all(&mut caller, &mut servers, &opened, false);
        peak = peak.max(live_bytes().saturating_sub(base));
    }

    // The end: servers leave, no endpoint answers, the caller's windows open wide.
    ups.refuse_all();
    for sv in &mut servers {
        sv.peer.end = None;
    }
    settle().await;
    collect_all(&mut caller, &mut servers, &opened, true);
    if caller.clean && caller.goaway.is_none() && !caller.eof {
        let mut out = Vec::new();
        let limit = i64::from(frame::WINDOW_LIMIT);
        let room = limit - (WINDOW + caller.conn_credit - caller.data_in);
        if room > 0 {
            frame::write_window_update(&mut out, 0, room as u32);
            caller.conn_credit += room;
        }
        for &id in &opened {
            if caller.ended.contains(&id) {
                continue;
            }
            let credit = caller.stream_credit.get(&id).copied().unwrap_or(0);
            let used = caller.stream_data.get(&id).copied().unwrap_or(0);
            let room = limit - (WINDOW + credit - used);
            if room > 0 {
                frame::write_window_update(&mut out, id, room as u32);
                *caller.stream_credit.entry(id).or_default() += room;
            }
        }
        caller.write(&out);
        settle().await;
        collect_all(&mut caller, &mut servers, &opened, true);
        if caller.clean && caller.goaway.is_none() {
            for &id in &opened {
                assert!(
                    caller.ended.contains(&id),
                    "stream {id} of a well-behaved caller never ended (servers gone)"
                );
            }
        }
    }
    if let Some(e) = &caller.end {
        e.close_write();
    }
    settle().await;
    collect_all(&mut caller, &mut servers, &opened, true);
    assert!(done.get(), "caller connection task still running after EOF");
    fx.check_end(&stats, shard.budget().used(), peak, data.len());
    drop(shard);
}

/// A server's answer on stream `id`: `what` picks full response, trailers-only
/// (UNAVAILABLE), HEADERS, DATA of `len` × 16 bytes, trailers, RST_STREAM or WINDOW_UPDATE.
fn respond(sv: &mut Server, id: u32, what: u8, len: u8, out: &mut Vec<u8>) {
    let headers = block(&[(b":status", b"200"), (b"content-type", b"application/grpc")]);
    let trailers = block(&[(b"grpc-status", b"0")]);
    let ended = sv.done.contains(&id);
    match what % 7 {
        0 | 3 if !ended => {
            if what.is_multiple_of(7) {
                frame::write_headers(out, id, &headers, false, FRAME_MAX);
            }
            let mut m = message(usize::from(len) * 16);
            m.truncate(sv.peer.send_room(id) as usize);
            h2(out, kind::DATA, 0, id, &m);
            sv.peer.note_sent(id, m.len());
            if what.is_multiple_of(7) {
                frame::write_headers(out, id, &trailers, true, FRAME_MAX);
                sv.done.insert(id);
            }
        }
        1 if !ended => {
            let only = block(&[
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"14"),
            ]);
            frame::write_headers(out, id, &only, true, FRAME_MAX);
            sv.done.insert(id);
        }
        2 if !ended => frame::write_headers(out, id, &headers, false, FRAME_MAX),
        4 if !ended => {
            frame::write_headers(out, id, &trailers, true, FRAME_MAX);
            sv.done.insert(id);
        }
        5 => {
            frame::write_rst_stream(out, id, u32::from(len % 12));
            sv.done.insert(id);
        }
        _ => {
            let inc = u32::from(len).max(1) * 1024;
            frame::write_window_update(out, 0, inc);
            frame::write_window_update(out, id, inc);
            sv.peer.conn_credit += i64::from(inc);
            *sv.peer.stream_credit.entry(id).or_default() += i64::from(inc);
        }
    }
}

fn collect_all(caller: &mut Peer, servers: &mut [Server], opened: &[u32], all: bool) {
    for id in caller.collect("caller", all) {
        if caller.clean {
            assert!(
                opened.contains(&id),
                "caller: ringside sent HEADERS on stream {id}, which the caller never opened"
            );
        }
    }
    for (i, sv) in servers.iter_mut().enumerate() {
        let who = format!("server {i}");
        for id in sv.peer.collect(&who, all) {
            assert!(
                id % 2 == 1 && id > sv.max_opened,
                "{who}: ringside opened stream {id} after {}",
                sv.max_opened
            );
            sv.max_opened = id;
            sv.streams.push(id);
        }
    }
}
