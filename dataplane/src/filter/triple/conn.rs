//! One HTTP/2 connection, caller side (`Side::Down`) or upstream side (`Side::Up`), and the
//! relay between a caller's stream and its upstream stream.
//!
//! Frames are read into one buffer and split zero-copy; HEADERS are decoded (HPACK state must be
//! kept) into a reusable [`HeaderList`] and re-encoded for the other connection; DATA payloads
//! are relayed as they are. Flow control is per hop: ringside returns window to the sender of a
//! DATA frame only when the bytes have been written towards the other side, so a slow reader
//! holds back its writer and ringside buffers at most one window per stream and per
//! connection. Everything is on one shard: connections point at each other with `Weak`
//! references and no borrow is held across a call into another connection.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use codec::h2::frame::{self, code, flag, kind, setting, FrameHeader};
use codec::h2::grpc::{self, status};
use codec::h2::hpack::{self, Decoder};
use rustc_hash::FxHashMap;
use shard::monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use shard::Notify;

use super::error::{http_to_grpc_status, CallError, Reset};
use super::headers::HeaderList;
use super::router::{RequestView, Router};
use super::{Call, H2Limits, Host, Pool, TripleListener};
use crate::access_log::Part;
use crate::filter::{Budget, Drain, RequestStatIds, Routes};
use crate::io::READ_CHUNK_BYTES;
use crate::stats::istio::exchange;
/// Bytes queued for a peer that does not read (control frames are not flow controlled): beyond
/// this the connection is closed.
pub const OUT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// A caller connection that is draining and has no stream left closes after this long.
pub const DRAIN_QUIET_MS: u64 = 300;
/// A call whose deadline is nearer than this on arrival cannot be met through a proxy hop: it is
/// answered DEADLINE_EXCEEDED at once, without an upstream stream.
pub const DEADLINE_MIN_US: u64 = 1_000;
/// The PING payload of upstream keepalives.
const KEEPALIVE_PING: [u8; 8] = *b"rs-alive";
/// A connection closing on a timer gets this long to flush its GOAWAY before the socket goes.
pub const CLOSE_FLUSH_MS: u64 = 500;
/// The PING payload that follows the first, graceful GOAWAY.
const DRAIN_PING: [u8; 8] = *b"rs-drain";
/// A request the upstream refuses unprocessed (GOAWAY above its stream, REFUSED_STREAM) is sent
/// once more on another connection if at most this much of its body, in at most
/// `RETRY_DATA_FRAMES` pieces, was written: ringside keeps those written pieces (slices of the
/// read buffer, no copy) until the response starts.
pub const RETRY_BODY_BYTES_MAX: usize = 32 * 1024;
const RETRY_DATA_FRAMES: usize = 2;
/// A shadow copy (`request_mirror_policies`) whose stream has more than this queued (its
/// shadow reads slower than the call's own upstream) is reset and counted as dropped: a slow
/// shadow never holds the call back nor grows memory beyond this per copy.
pub const MIRROR_QUEUED_BYTES_MAX: usize = 64 * 1024;
/// A shadow copy's deadline when its call has none (Envoy's default route timeout, 15 s).
pub const MIRROR_TIMEOUT_MS_DEFAULT: u64 = 15_000;

/// What a connection is.
pub enum Side {
    /// A caller's connection to a triple listener.
    Down(Rc<TripleListener>),
    /// A connection to one upstream endpoint.
    Up(Rc<Host>),
}

/// A connection error: GOAWAY with this code, then close.
#[derive(Debug)]
pub struct ConnError {
    pub code: u32,
    pub why: String,
}

fn conn_err(code: u32, why: impl Into<String>) -> ConnError {
    ConnError {
        code,
        why: why.into(),
    }
}

impl From<frame::FrameError> for ConnError {
    fn from(e: frame::FrameError) -> Self {
        conn_err(e.code, e.what)
    }
}

/// A frame waiting in a stream's queue (DATA waits for flow-control window; anything behind it
/// waits with it, so order is kept).
enum Out {
    Headers(Vec<u8>, bool),
    Data(Queued, bool),
    Rst(u32),
}

/// DATA waiting in a stream's queue, charged to the shard's buffer budget for as long as it
/// waits: released as it is written into the connection's output (charged there) or dropped,
/// wherever that happens (a retry moves it to another connection's stream).
struct Queued {
    b: Bytes,
    budget: Rc<Budget>,
}

impl Queued {
    fn new(b: Bytes, budget: &Rc<Budget>) -> Queued {
        budget.charge(b.len());
        Queued {
            b,
            budget: budget.clone(),
        }
    }

    fn advance(&mut self, n: usize) {
        self.b.advance(n);
        self.budget.release(n);
    }
}

impl std::ops::Deref for Queued {
    type Target = Bytes;
    fn deref(&self) -> &Bytes {
        &self.b
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.budget.release(self.b.len());
    }
}

/// Upstream side: what was written of a request so far, kept until its response starts so that
/// a stream the upstream refuses unprocessed can be sent again on another connection.
#[derive(Default)]
struct Held {
    /// The request HEADERS block (empty until written) and its END_STREAM flag.
    block: Vec<u8>,
    end: bool,
    data: [Option<(Bytes, bool)>; RETRY_DATA_FRAMES],
    bytes: usize,
}

impl Held {
    /// Keeps `b`, a written piece of the body; false when it no longer fits.
    fn keep(&mut self, b: Bytes, end: bool) -> bool {
        self.bytes += b.len();
        if self.bytes > RETRY_BODY_BYTES_MAX {
            return false;
        }
        match self.data.iter_mut().find(|d| d.is_none()) {
            Some(slot) => {
                *slot = Some((b, end));
                true
            }
            None => false,
        }
    }
}

pub struct Stream {
    /// The stream this one is relayed to, on the other connection.
    link: Option<(Weak<Conn>, u32)>,
    /// Upstream side, first attempt: the request as written, while a retry is still possible.
    held: Option<Held>,
    /// Upstream side, a retry: DATA bytes at the head of the queue that were already credited
    /// to the caller by the first attempt (not credited again).
    no_credit: u32,
    /// Upstream side: a retry of a `retry_policy`, holding a slot of the cluster's
    /// `max_retries` until it ends.
    retried: bool,
    /// Caller side: held by a fault delay (boxed: only delayed calls pay for it).
    delayed: Option<Box<Delayed>>,
    /// Caller side: held before routing while the external authorization service is asked.
    authz: Option<Box<AuthzWait>>,
    /// Upstream side: a Check call to the external authorization service, its answer
    /// collected here instead of relayed.
    check: Option<Box<CheckCall>>,
    /// Caller side: the shadow copies of the call (`request_mirror_policies`) that its request
    /// still goes to, until it ended (empty, no allocation, for calls not mirrored).
    mirrors: Vec<(Weak<Conn>, u32)>,
    /// Upstream side: a shadow copy, unlinked; its answer is dropped.
    shadow: bool,
    send_window: i64,
    /// What the peer may still send on this stream.
    recv_avail: i64,
    /// Relayed bytes not yet returned to the peer as window.
    recv_unacked: u32,
    queue: VecDeque<Out>,
    sent_end: bool,
    recv_end: bool,
    /// HEADERS came first: the caller's request (set when the stream is made) or, upstream
    /// side, the response's; DATA before it is malformed (RFC 9113 8.1).
    headers_in: bool,
    /// Caller side: the call's bookkeeping.
    call: Option<Call>,
}

/// Caller side: a call held before it goes upstream, by a fault delay (until `until`) or, with
/// `until` `None`, waiting in its pool's `waiting` queue for room on a connection
/// (`circuit_breakers`); and what its caller sent meanwhile (not credited back until relayed,
/// so bounded by the stream's window).
struct Delayed {
    until: Option<Instant>,
    routed: Routed,
    /// The request HEADERS ended the stream.
    end: bool,
    data: VecDeque<(Queued, bool)>,
    trailers: Option<Vec<u8>>,
}

/// Caller side: a call waiting for the external authorization service's answer, before
/// routing (until `until`, the filter's timeout); what its caller sends meanwhile waits with
/// it (not credited back until relayed, so bounded by the stream's window).
struct AuthzWait {
    until: Instant,
    /// The Check call's stream on the authorizer's connection.
    check: Option<(Weak<Conn>, u32)>,
    /// The request HEADERS ended the stream.
    end: bool,
    /// The request's headers (the connection's list is reused by the next HEADERS).
    headers: super::headers::HeaderList,
    /// The jwt_authn filter's verified payloads.
    payload: Option<crate::filter::jwt::Metadata>,
    data: VecDeque<(Queued, bool)>,
    trailers: Option<Vec<u8>>,
    /// `with_request_body`: the check waits for the body (not sent yet).
    buffering: bool,
}

/// Upstream side: a Check call's answer as it arrives; read when the stream ends (however it
/// ends: answered, reset, its connection lost).
struct CheckCall {
    /// Who waits for it.
    waiter: CheckWaiter,
    /// `:status` 200.
    status_ok: bool,
    grpc_status: Option<u32>,
    body: Vec<u8>,
    too_large: bool,
}

impl CheckCall {
    fn outcome(
        &self,
        ended: bool,
    ) -> Result<crate::filter::ext_authz::Answer, crate::filter::ext_authz::CheckError> {
        use crate::filter::ext_authz::{parse_response, CheckError};
        match (ended, self.status_ok, self.grpc_status) {
            (true, true, Some(0)) if !self.too_large => parse_response(&self.body),
            (true, true, Some(0)) => Err(CheckError::BadResponse),
            (true, true, Some(g)) => Err(CheckError::Grpc(g)),
            _ => Err(CheckError::Transport),
        }
    }
}

/// DATA bytes dropped unsent, to credit back to the connection they came from.
type GiveBack = Option<(Weak<Conn>, u32, u32)>;

/// Returns dropped DATA's bytes to their sender as window (connection level, and stream level
/// while that stream lives): without it every discarded frame shrinks the sender's window for
/// good, and a shared upstream connection stalls.
fn give_back(back: GiveBack) {
    if let Some((w, id, n)) = back {
        if let Some(c) = w.upgrade() {
            c.credit(id, n);
        }
    }
}

impl Stream {
    /// Drops the queue and the link; returns the queued DATA bytes to give back.
    fn drop_queue(&mut self) -> GiveBack {
        let n: usize = self
            .queue
            .drain(..)
            .map(|o| match o {
                Out::Data(b, _) => b.len(),
                _ => 0,
            })
            .sum();
        let n = n.saturating_sub(std::mem::take(&mut self.no_credit) as usize);
        self.held = None;
        let link = self.link.take();
        let (w, id) = link?;
        (n > 0).then_some((w, id, n as u32))
    }

    fn new(send_window: i64, recv_window: u32, call: Option<Call>) -> Stream {
        Stream {
            link: None,
            held: None,
            no_credit: 0,
            retried: false,
            delayed: None,
            authz: None,
            check: None,
            mirrors: Vec::new(),
            shadow: false,
            send_window,
            recv_avail: i64::from(recv_window),
            recv_unacked: 0,
            queue: VecDeque::new(),
            sent_end: false,
            recv_end: false,
            headers_in: call.is_some(),
            call,
        }
    }
}

pub struct Conn {
    pub side: Side,
    limits: H2Limits,
    out: RefCell<BytesMut>,
    out_ready: Notify,
    /// The writer has bytes taken from `out` not yet written.
    writing: Cell<bool>,
    /// The shard's buffer budget; `charged`: what this connection's output (`out` and the
    /// write in progress, `in_write` bytes) holds charged to it.
    budget: Rc<Budget>,
    charged: Cell<usize>,
    in_write: Cell<usize>,
    /// Stop reading and writing.
    closed: Cell<bool>,
    /// Write what is queued, then close.
    closing: Cell<bool>,
    peer_frame_max: Cell<u32>,
    peer_initial_window: Cell<i64>,
    peer_streams_max: Cell<u32>,
    send_window: Cell<i64>,
    recv_avail: Cell<i64>,
    recv_unacked: Cell<u32>,
    streams: RefCell<FxHashMap<u32, Stream>>,
    /// Streams with DATA waiting for window.
    blocked: RefCell<Vec<u32>>,
    decoder: RefCell<Decoder>,
    /// Re-encodes every header block as it is written (indexing, Huffman), and its scratch.
    encoder: RefCell<hpack::Encoder>,
    encoded: RefCell<Vec<u8>>,
    /// Caller side: header bytes decoded beyond the block bytes received in the current
    /// one-second window (HPACK amplification).
    amplified: Cell<(Instant, u64)>,
    headers: RefCell<super::headers::HeaderList>,
    /// Caller side: the highest stream id the caller opened. Upstream side: the next id to use.
    stream_ids: Cell<u32>,
    /// Caller side: GOAWAY sent (draining). Upstream side: GOAWAY received, with its last id.
    goaway: Cell<Option<u32>>,
    /// Caller side: resets (the caller's and those it caused) in the current one-second window.
    resets: Cell<(Instant, u32)>,
    /// Control frames (PING and SETTINGS ACKs, RST_STREAM) queued since the writer last took
    /// the output buffer.
    ctl_queued: Cell<u32>,
    /// Caller side: wakes the deadline task when an earlier deadline is set.
    deadline_wake: Notify,
    /// Upstream side: the deadlines of its shadow copies (earliest first), and what wakes
    /// their task when an earlier one is added.
    mirror_deadlines: RefCell<std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u32)>>>,
    mirror_wake: Notify,
    armed: Cell<Option<Instant>>,
    /// Caller side: a stream ended (the drain waits for the last one).
    stream_ended: Notify,
    /// Caller side: the caller answered the drain PING.
    drain_acked: Notify,
    /// Upstream side: connected (frames are queued before).
    pub open: Cell<bool>,
    /// The peer's first SETTINGS arrived (caller side: the preface is complete).
    greeted: Cell<bool>,
    /// Successful reads from the socket (the keepalive watches it move).
    reads: Cell<u64>,
    /// Upstream side: answers to its keepalive PINGs (`http2_keepalive`).
    pongs: super::Pongs,
    /// Upstream side: older than the cluster's `max_connection_duration`: no new stream.
    aged: Cell<bool>,
    /// When the last stream ended (or the connection opened); `went_idle` fires then.
    idle_since: Cell<Instant>,
    went_idle: Notify,
    /// Caller side, when the listener logs: the caller's and our address.
    caller_addrs: Cell<(Option<std::net::SocketAddr>, Option<std::net::SocketAddr>)>,
    /// Caller side: its mutual TLS as Istio's metrics label it (with `istio_metrics`).
    peer: Cell<crate::stats::istio::PeerId>,
    /// Caller side: where the caller meant to connect (intercepted connections), for routes
    /// to `original_destination` clusters.
    original_dst: Cell<Option<std::net::SocketAddr>>,
    /// Caller side, when the listener has HTTP rbac filters: what the rules know of the
    /// connection (set once when it is accepted).
    rbac_peer: RefCell<Option<crate::filter::rbac::ConnPeer>>,
    /// Caller side: over TLS (`x-forwarded-proto` when absent: a JWT failure's realm).
    tls: Cell<bool>,
    /// Upstream side over TLS: the SPIFFE ids of the server's certificate and of ours, set
    /// once the handshake is done.
    tls_peer: RefCell<Option<crate::stats::istio::UpstreamTls>>,
    /// Upstream side: `tls_peer` as the Istio metrics of one outbound listener label it (that
    /// listener's id, the peer): looked up once per connection and listener.
    istio_peer: Cell<(u64, crate::stats::istio::PeerId)>,
    /// Caller side: some call of the connection has response header mutations (until then,
    /// response headers are relayed without looking for them).
    mutates: Cell<bool>,
    /// Upstream side: the ALPN it offers over TLS in place of its cluster's (`istio.alpn`).
    pub alpn: crate::io::tls::AlpnOverride,
    /// Caller side: what its requests' `x-forwarded-client-cert` becomes (set once).
    xfcc: super::xfcc::Xfcc,
}

/// Output never written (the peer stopped reading, the connection failed) is given back to the
/// budget with the connection; its streams' queued DATA gives itself back ([`Queued`]).
impl Drop for Conn {
    fn drop(&mut self) {
        self.budget.release(self.charged.get());
    }
}

impl Conn {
    fn new(side: Side, limits: H2Limits) -> Conn {
        let budget = match &side {
            Side::Down(l) => l.budget.clone(),
            Side::Up(h) => h.pool.budget.clone(),
        };
        Conn {
            side,
            limits,
            out: RefCell::new(BytesMut::with_capacity(16 * 1024)),
            out_ready: Notify::new(),
            writing: Cell::new(false),
            budget,
            charged: Cell::new(0),
            in_write: Cell::new(0),
            closed: Cell::new(false),
            closing: Cell::new(false),
            peer_frame_max: Cell::new(frame::FRAME_BYTES_DEFAULT),
            peer_initial_window: Cell::new(i64::from(frame::WINDOW_DEFAULT)),
            peer_streams_max: Cell::new(u32::MAX),
            send_window: Cell::new(i64::from(frame::WINDOW_DEFAULT)),
            recv_avail: Cell::new(i64::from(frame::WINDOW_DEFAULT)),
            recv_unacked: Cell::new(0),
            streams: RefCell::new(FxHashMap::default()),
            blocked: RefCell::new(Vec::new()),
            decoder: RefCell::new(Decoder::new(hpack::TABLE_BYTES_DEFAULT)),
            encoder: RefCell::new(hpack::Encoder::default()),
            encoded: RefCell::new(Vec::with_capacity(1024)),
            amplified: Cell::new((Instant::now(), 0)),
            headers: RefCell::new(Default::default()),
            stream_ids: Cell::new(0),
            goaway: Cell::new(None),
            resets: Cell::new((Instant::now(), 0)),
            ctl_queued: Cell::new(0),
            deadline_wake: Notify::new(),
            mirror_deadlines: RefCell::new(Default::default()),
            mirror_wake: Notify::new(),
            armed: Cell::new(None),
            stream_ended: Notify::new(),
            drain_acked: Notify::new(),
            caller_addrs: Cell::new((None, None)),
            peer: Cell::new(crate::stats::istio::PeerId::NONE),
            original_dst: Cell::new(None),
            rbac_peer: RefCell::new(None),
            tls: Cell::new(false),
            tls_peer: RefCell::new(None),
            istio_peer: Cell::new((0, crate::stats::istio::PeerId::NONE)),
            mutates: Cell::new(false),
            alpn: None,
            xfcc: Default::default(),
            greeted: Cell::new(false),
            reads: Cell::new(0),
            pongs: Default::default(),
            aged: Cell::new(false),
            idle_since: Cell::new(Instant::now()),
            went_idle: Notify::new(),
            open: Cell::new(false),
        }
    }

    /// Our SETTINGS and the connection window raise, queued first on every connection.
    fn greet(&self, client: bool) {
        let l = self.limits;
        let mut out = self.out.borrow_mut();
        if client {
            out.extend_from_slice(frame::PREFACE);
        }
        let mut settings = vec![
            (setting::INITIAL_WINDOW_SIZE, l.stream_window),
            (setting::MAX_FRAME_SIZE, l.frame_max),
            (setting::MAX_HEADER_LIST_SIZE, l.header_list_max),
        ];
        if client {
            settings.push((setting::ENABLE_PUSH, 0));
        } else {
            settings.push((setting::MAX_CONCURRENT_STREAMS, l.streams_max));
        }
        frame::write_settings(&mut *out, &settings);
        if l.conn_window > frame::WINDOW_DEFAULT {
            frame::write_window_update(&mut *out, 0, l.conn_window - frame::WINDOW_DEFAULT);
        }
        self.recv_avail.set(i64::from(l.conn_window));
        drop(out);
        self.account();
    }

    /// Brings this connection's charge to the budget in line with its output.
    fn account(&self) {
        let now = self.out.borrow().len() + self.in_write.get();
        let was = self.charged.replace(now);
        self.budget.recharge(was, now);
    }

    fn side_name(&self) -> &'static str {
        match self.side {
            Side::Down(_) => "caller",
            Side::Up(_) => "upstream",
        }
    }

    pub fn stream_count(&self) -> usize {
        self.streams.borrow().len()
    }

    fn write(&self, f: impl FnOnce(&mut BytesMut)) {
        if self.closed.get() {
            return;
        }
        let queued = {
            let mut out = self.out.borrow_mut();
            f(&mut out);
            out.len()
        };
        self.account();
        if queued > OUT_BYTES_MAX {
            tracing::warn!("http/2 peer does not read: {OUT_BYTES_MAX} bytes queued, closing");
            self.close();
        }
        self.out_ready.notify();
    }

    /// Queues a control frame (one the peer provoked and cannot flow-control); a peer making
    /// ringside queue more than `control_frames_max` without reading them is flooding (PING or
    /// SETTINGS floods): connection error ENHANCE_YOUR_CALM.
    fn write_control(&self, f: impl FnOnce(&mut BytesMut)) -> Result<(), ConnError> {
        let n = self.ctl_queued.get() + 1;
        self.ctl_queued.set(n);
        if n > self.limits.control_frames_max {
            match &self.side {
                Side::Down(l) => l.stats.inc(l.ids.hardening.control_flood),
                Side::Up(h) => h.pool.stats.inc(h.pool.h2_ids.control_flood),
            }
            return Err(conn_err(
                code::ENHANCE_YOUR_CALM,
                "too many control frames queued",
            ));
        }
        self.write(f);
        Ok(())
    }

    /// Caller side: counts a stream reset (by the caller, or by ringside because of it) against
    /// `resets_per_second_max`; beyond it the connection is closed (rapid reset, MadeYouReset).
    fn count_reset(&self) -> Result<(), ConnError> {
        let Side::Down(l) = &self.side else {
            return Ok(());
        };
        let (start, n) = self.resets.get();
        let now = Instant::now();
        let (start, n) = if now.duration_since(start) > Duration::from_secs(1) {
            (now, 1)
        } else {
            (start, n + 1)
        };
        self.resets.set((start, n));
        if n > l.limits.resets_per_second_max {
            l.stats.inc(l.ids.rst_flood);
            return Err(conn_err(code::ENHANCE_YOUR_CALM, "too many stream resets"));
        }
        Ok(())
    }

    /// Caller side: counts header bytes decoded beyond the block bytes received against
    /// `hpack_amplified_bytes_per_second_max`; beyond it the connection is closed (HPACK
    /// amplification: small blocks referencing large entries of the caller's table).
    fn count_amplified(&self, n: usize) -> Result<(), ConnError> {
        let Side::Down(l) = &self.side else {
            return Ok(());
        };
        if n == 0 {
            return Ok(());
        }
        let (start, sum) = self.amplified.get();
        let now = Instant::now();
        let (start, sum) = if now.duration_since(start) > Duration::from_secs(1) {
            (now, n as u64)
        } else {
            (start, sum + n as u64)
        };
        self.amplified.set((start, sum));
        if sum > u64::from(self.limits.amplified_per_second_max) {
            l.stats.inc(l.ids.hardening.header_flood);
            return Err(conn_err(
                code::ENHANCE_YOUR_CALM,
                "too many header bytes decoded from the HPACK table",
            ));
        }
        Ok(())
    }

    fn close(&self) {
        self.closed.set(true);
        self.closing.set(true);
        self.out_ready.notify();
    }

    /// An upstream connection of a removed endpoint: GOAWAY and close once no stream is left.
    pub fn close_if_idle(&self) {
        if self.streams.borrow().is_empty() && !self.closing.get() {
            self.goaway_close(code::NO_ERROR, "endpoint removed from its cluster");
        }
    }

    /// GOAWAY with `code`, then close once it is written.
    fn goaway_close(&self, code: u32, why: &str) {
        let last = match self.side {
            Side::Down(_) => self.stream_ids.get(),
            Side::Up(_) => 0,
        };
        self.write(|o| frame::write_goaway(o, last, code, why.as_bytes()));
        self.closing.set(true);
        self.out_ready.notify();
    }

    // === relay ===

    /// Queues `item` on stream `id` and writes what the windows allow; false when the stream
    /// is gone or already ended (the item is dropped: DATA must then be credited by the caller).
    fn send(self: &Rc<Self>, id: u32, item: Out) -> bool {
        {
            let mut streams = self.streams.borrow_mut();
            let Some(s) = streams.get_mut(&id) else {
                return false;
            };
            if s.sent_end {
                return false;
            }
            if let (Out::Data(b, _), Some(lg)) =
                (&item, s.call.as_mut().and_then(|c| c.log.as_mut()))
            {
                lg.bytes_sent += b.len() as u64;
            }
            s.queue.push_back(item);
        }
        self.flush(id);
        true
    }

    /// Writes what the windows allow of a stream's queue, returns the relayed bytes' window to
    /// the other side, and forgets the stream when both directions are done.
    fn flush(self: &Rc<Self>, id: u32) {
        let mut credit: Option<(Weak<Conn>, u32, u32)> = None;
        let done;
        {
            let mut streams = self.streams.borrow_mut();
            let Some(s) = streams.get_mut(&id) else {
                return;
            };
            let frame_max = self.peer_frame_max.get() as usize;
            let mut relayed = 0u32;
            {
                let mut out = self.out.borrow_mut();
                while let Some(item) = s.queue.front_mut() {
                    match item {
                        Out::Headers(block, end) => {
                            // Queued blocks are stateless; the connection's encoder indexes
                            // them in the order they go out.
                            let mut enc = self.encoded.borrow_mut();
                            enc.clear();
                            if let Err(e) = self.encoder.borrow_mut().encode_block(&mut enc, block)
                            {
                                // Our own block: cannot happen; the peer's table may now differ.
                                tracing::error!(error = %e, "re-encoding a header block failed");
                                self.closed.set(true);
                                self.closing.set(true);
                            }
                            frame::write_headers(&mut *out, id, &enc, *end, frame_max as u32);
                            s.sent_end |= *end;
                            let end = *end;
                            if let Some(Out::Headers(block, _)) = s.queue.pop_front() {
                                // The request's HEADERS are kept for a retry; trailers end it.
                                match s.held.as_mut() {
                                    Some(h) if h.block.is_empty() => {
                                        h.block = block;
                                        h.end = end;
                                    }
                                    _ => s.held = None,
                                }
                            }
                        }
                        Out::Rst(c) => {
                            frame::write_rst_stream(&mut *out, id, *c);
                            s.sent_end = true;
                            s.recv_end = true;
                            s.held = None;
                            s.queue.clear();
                        }
                        Out::Data(b, end) => {
                            let window = s.send_window.min(self.send_window.get()).max(0) as usize;
                            let n = b.len().min(window).min(frame_max);
                            if n == 0 && !b.is_empty() {
                                let mut blocked = self.blocked.borrow_mut();
                                if !blocked.contains(&id) {
                                    blocked.push(id);
                                }
                                break;
                            }
                            let last = n == b.len();
                            frame::write_data_header(&mut *out, id, n, last && *end);
                            out.extend_from_slice(&b[..n]);
                            s.send_window -= n as i64;
                            self.send_window.set(self.send_window.get() - n as i64);
                            relayed += n as u32;
                            if let Some(h) = s.held.as_mut() {
                                if !h.keep(b.slice(..n), last && *end) {
                                    s.held = None;
                                }
                            }
                            if last {
                                s.sent_end |= *end;
                                s.queue.pop_front();
                            } else {
                                b.advance(n);
                            }
                        }
                    }
                }
            }
            self.out_ready.notify();
            self.account();
            let resent = relayed.min(s.no_credit);
            s.no_credit -= resent;
            relayed -= resent;
            if relayed > 0 {
                if let Some((w, other)) = &s.link {
                    credit = Some((w.clone(), *other, relayed));
                }
            }
            done = s.sent_end && s.recv_end && s.queue.is_empty();
        }
        if let Some((w, other, n)) = credit {
            if let Some(c) = w.upgrade() {
                c.credit(other, n);
            }
        }
        if done {
            self.forget(id);
        }
        if self.out.borrow().len() > OUT_BYTES_MAX {
            self.close();
        }
    }

    /// `n` bytes received on `id` were relayed (or dropped): give the peer its window back,
    /// in batches of half a window.
    fn credit(&self, id: u32, n: u32) {
        let l = self.limits;
        let unacked = self.recv_unacked.get() + n;
        if unacked >= l.conn_window / 2 {
            self.write(|o| frame::write_window_update(o, 0, unacked));
            self.recv_avail
                .set(self.recv_avail.get() + i64::from(unacked));
            self.recv_unacked.set(0);
        } else {
            self.recv_unacked.set(unacked);
        }
        let mut update = 0;
        if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
            if !s.recv_end {
                s.recv_unacked += n;
                if s.recv_unacked >= l.stream_window / 2 {
                    update = s.recv_unacked;
                    s.recv_avail += i64::from(update);
                    s.recv_unacked = 0;
                }
            }
        }
        if update > 0 {
            self.write(|o| frame::write_window_update(o, id, update));
        }
    }

    fn forget(&self, id: u32) {
        let removed = self.streams.borrow_mut().remove(&id);
        if let Some(mut s) = removed {
            if let Some(w) = s.authz.take() {
                // Ended while its authorization was asked: the Check call is cancelled.
                let n: usize = w.data.iter().map(|(q, _)| q.len()).sum();
                self.credit(id, n as u32);
                cancel_check(w.check);
            }
            // A Check call's end (answered, reset, connection lost): its caller learns it
            // once this stream is gone.
            let check = s.check.take().map(|c| {
                let outcome = c.outcome(s.recv_end && s.headers_in);
                (c.waiter, outcome)
            });
            if let (Side::Down(l), Some(d)) = (&self.side, s.delayed.take()) {
                // Ended while delayed or waiting (deadline, cancel, connection gone): what its
                // caller sent is given back to the connection's window.
                if d.until.is_some() {
                    l.stats.dec(l.ids.fault.active);
                    l.faults_active.set(l.faults_active.get().saturating_sub(1));
                } else {
                    let me: *const Conn = self;
                    d.routed.routes.pools[d.routed.cluster]
                        .waiting
                        .borrow_mut()
                        .retain(|(w, i)| !(*i == id && std::ptr::eq(w.as_ptr(), me)));
                }
                let n: usize = d.data.iter().map(|(q, _)| q.len()).sum();
                self.credit(id, n as u32);
            }
            // Ended before its request did: its shadow copies would never end theirs.
            for (w, uid) in std::mem::take(&mut s.mirrors) {
                if let Some(up) = w.upgrade() {
                    up.drop_shadow(uid);
                }
            }
            if let (Side::Down(l), Some(mut call)) = (&self.side, s.call) {
                l.end_call(&call);
                l.log_call(&mut call, self.caller_addrs.get(), self.peer.get());
                l.trace_call(&mut call, self.caller_addrs.get());
            }
            if let Side::Up(h) = &self.side {
                if s.retried {
                    h.pool.retries.ended();
                }
                if s.shadow {
                    h.pool.mirrors.ended();
                }
                h.pool.stats.dec(h.pool.ids.rq_active);
                if let Some(b) = &h.pool.breaker {
                    b.ended();
                }
                // Room on this connection: a call waiting for it may go.
                wake_waiting(&h.pool);
                if h.retired.get() {
                    self.close_if_idle();
                }
            }
            self.stream_ended.notify();
            if self.streams.borrow().is_empty() {
                self.idle_since.set(Instant::now());
                self.went_idle.notify();
            }
            match check {
                Some((CheckWaiter::Call(down, did), outcome)) => {
                    if let Some(down) = down.upgrade() {
                        down.check_done(did, outcome);
                    }
                }
                Some((CheckWaiter::Slot(slot), outcome)) => {
                    if let Some(slot) = slot.upgrade() {
                        slot.answer(outcome);
                    }
                }
                None => {}
            }
        }
    }

    /// The link of a stream, if it still has one.
    fn link(&self, id: u32) -> Option<(Rc<Conn>, u32)> {
        let streams = self.streams.borrow();
        let (w, other) = streams.get(&id)?.link.as_ref()?;
        Some((w.upgrade()?, *other))
    }

    /// Cuts a stream from its relay partner (which is ending): what is queued is dropped, its
    /// DATA credited back to the partner's connection.
    fn unlink(&self, id: u32) {
        let back = match self.streams.borrow_mut().get_mut(&id) {
            Some(s) => s.drop_queue(),
            None => return,
        };
        give_back(back);
    }

    /// Ends a stream here without writing anything (the peer reset it, or the connection is
    /// gone) and returns the stream it was relayed to.
    fn end_stream(&self, id: u32) -> Option<(Rc<Conn>, u32)> {
        let link = self.link(id);
        let back = self.streams.borrow_mut().get_mut(&id).and_then(|s| {
            s.sent_end = true;
            s.recv_end = true;
            s.drop_queue()
        });
        give_back(back);
        self.forget(id);
        let (other, oid) = link?;
        other.unlink(oid);
        Some((other, oid))
    }

    /// Tells the relay partner of a lost stream: an upstream stream is cancelled, a caller's
    /// call ends with `status` (counted as an upstream failure).
    fn abandon(self: &Rc<Self>, other: &Rc<Conn>, oid: u32, e: &CallError) {
        match &other.side {
            Side::Up(_) => other.reset(oid, code::CANCEL),
            Side::Down(_) => {
                if let Side::Up(h) = &self.side {
                    h.pool.stats.inc(h.pool.ids.rq_failure);
                }
                other.fail_call(oid, e)
            }
        }
    }

    /// Resets a stream on this connection and forgets it. The RST_STREAM goes out even when our
    /// side already ended (a request fully sent upstream): the peer stops working on it and the
    /// stream no longer counts against its concurrency limit.
    fn reset(self: &Rc<Self>, id: u32, c: u32) {
        let (back, open) = {
            let mut streams = self.streams.borrow_mut();
            let Some(s) = streams.get_mut(&id) else {
                return;
            };
            let open = !(s.sent_end && s.recv_end);
            s.sent_end = true;
            s.recv_end = true;
            (s.drop_queue(), open)
        };
        give_back(back);
        if open {
            self.ctl_queued.set(self.ctl_queued.get() + 1);
            self.write(|o| frame::write_rst_stream(o, id, c));
        }
        self.blocked.borrow_mut().retain(|&b| b != id);
        self.forget(id);
    }

    // === frames in ===

    fn on_frame(self: &Rc<Self>, h: FrameHeader, payload: Bytes) -> Result<(), ConnError> {
        match h.kind {
            kind::DATA => self.on_data(h, payload),
            kind::RST_STREAM => {
                if h.stream == 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
                }
                let c = frame::rst_stream(&payload)?;
                self.on_rst(h.stream, c)
            }
            kind::SETTINGS => self.on_settings(h, &payload),
            kind::PING => {
                let data: [u8; 8] = payload[..]
                    .try_into()
                    .map_err(|_| conn_err(code::FRAME_SIZE_ERROR, "PING length is not 8"))?;
                if h.stream != 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "PING on a stream"));
                }
                if h.flags & flag::ACK == 0 {
                    self.write_control(|o| frame::write_ping(o, true, data))?;
                } else if data == DRAIN_PING {
                    self.drain_acked.notify();
                } else if data == KEEPALIVE_PING {
                    self.pongs.ack();
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => self.on_window_update(h, &payload),
            kind::GOAWAY => {
                let (last, c) = frame::goaway(&payload)?;
                self.on_goaway(last, c);
                Ok(())
            }
            kind::PUSH_PROMISE => Err(conn_err(code::PROTOCOL_ERROR, "PUSH_PROMISE not enabled")),
            kind::PRIORITY => {
                if payload.len() != 5 {
                    return Err(conn_err(code::FRAME_SIZE_ERROR, "PRIORITY length is not 5"));
                }
                Ok(())
            }
            kind::CONTINUATION => Err(conn_err(
                code::PROTOCOL_ERROR,
                "CONTINUATION without HEADERS",
            )),
            // Unknown frame types are ignored (RFC 9113 4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(self: &Rc<Self>, h: FrameHeader, payload: &[u8]) -> Result<(), ConnError> {
        if h.stream != 0 {
            return Err(conn_err(code::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if h.flags & flag::ACK != 0 {
            if !payload.is_empty() {
                return Err(conn_err(
                    code::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        self.greeted.set(true);
        let mut window_delta = 0i64;
        for (id, v) in frame::settings(payload)? {
            match id {
                setting::ENABLE_PUSH if v > 1 => {
                    return Err(conn_err(code::PROTOCOL_ERROR, "ENABLE_PUSH above 1"))
                }
                setting::MAX_CONCURRENT_STREAMS => self.peer_streams_max.set(v),
                setting::HEADER_TABLE_SIZE => self.encoder.borrow_mut().set_peer_table_size(v),
                setting::INITIAL_WINDOW_SIZE => {
                    if v > frame::WINDOW_LIMIT {
                        return Err(conn_err(
                            code::FLOW_CONTROL_ERROR,
                            "INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    window_delta += i64::from(v) - self.peer_initial_window.get();
                    self.peer_initial_window.set(i64::from(v));
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::FRAME_BYTES_DEFAULT..=frame::FRAME_BYTES_LIMIT).contains(&v) {
                        return Err(conn_err(
                            code::PROTOCOL_ERROR,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_frame_max.set(v);
                }
                _ => {}
            }
        }
        self.write_control(frame::write_settings_ack)?;
        if window_delta != 0 {
            for s in self.streams.borrow_mut().values_mut() {
                s.send_window += window_delta;
            }
            if window_delta > 0 {
                self.flush_all();
            }
        }
        Ok(())
    }

    fn flush_all(self: &Rc<Self>) {
        let ids: Vec<u32> = std::mem::take(&mut *self.blocked.borrow_mut());
        for id in ids {
            self.flush(id);
        }
    }

    fn on_window_update(self: &Rc<Self>, h: FrameHeader, payload: &[u8]) -> Result<(), ConnError> {
        let inc = i64::from(frame::window_update(payload)?);
        if h.stream == 0 {
            if inc == 0 {
                return Err(conn_err(code::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            let w = self.send_window.get() + inc;
            if w > i64::from(frame::WINDOW_LIMIT) {
                return Err(conn_err(
                    code::FLOW_CONTROL_ERROR,
                    "connection window above 2^31-1",
                ));
            }
            self.send_window.set(w);
            self.flush_all();
            return Ok(());
        }
        let bad = {
            let mut streams = self.streams.borrow_mut();
            match streams.get_mut(&h.stream) {
                None => return Ok(()),
                Some(_) if inc == 0 => Some(code::PROTOCOL_ERROR),
                Some(s) => {
                    s.send_window += inc;
                    (s.send_window > i64::from(frame::WINDOW_LIMIT))
                        .then_some(code::FLOW_CONTROL_ERROR)
                }
            }
        };
        match bad {
            Some(c) => self.on_stream_error(h.stream, c, "bad WINDOW_UPDATE"),
            None => {
                self.blocked.borrow_mut().retain(|&b| b != h.stream);
                self.flush(h.stream);
                Ok(())
            }
        }
    }

    fn on_data(self: &Rc<Self>, h: FrameHeader, payload: Bytes) -> Result<(), ConnError> {
        let len = i64::from(h.len);
        let avail = self.recv_avail.get() - len;
        if avail < 0 {
            return Err(conn_err(
                code::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        self.recv_avail.set(avail);
        if h.stream == 0 {
            return Err(conn_err(code::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let data = frame::data_payload(h.flags, &payload)?;
        let data = payload.slice_ref(data);
        let pad = h.len - data.len() as u32;
        let end = h.flags & flag::END_STREAM != 0;
        enum Next {
            Relay(Weak<Conn>, u32),
            /// Kept by a fault delay.
            Held,
            Drop,
            Error(u32),
        }
        let mut body_ready = false;
        let next = {
            let mut streams = self.streams.borrow_mut();
            match streams.get_mut(&h.stream) {
                None => {
                    if self.is_idle(h.stream) {
                        return Err(conn_err(code::PROTOCOL_ERROR, "DATA on an idle stream"));
                    }
                    Next::Drop
                }
                Some(s) if s.recv_end => Next::Error(code::STREAM_CLOSED),
                // An upstream's DATA before its response HEADERS: relayed, the caller would
                // see a body without a response (the call fails INTERNAL instead).
                Some(s) if !s.headers_in => Next::Error(code::PROTOCOL_ERROR),
                Some(s) => {
                    s.recv_avail -= len;
                    if s.recv_avail < 0 {
                        Next::Error(code::FLOW_CONTROL_ERROR)
                    } else {
                        s.recv_end = end;
                        if let Some(c) = s.call.as_mut() {
                            c.received += data.len() as u64;
                            if let Some(lg) = c.log.as_mut() {
                                lg.bytes_received += data.len() as u64;
                            }
                        }
                        if let Some(c) = s.check.as_mut() {
                            // A Check call's answer: kept (bounded), credited as read.
                            let max = crate::config::EXT_AUTHZ_RESPONSE_BYTES_MAX + 5;
                            match c.body.len() + data.len() > max {
                                true => c.too_large = true,
                                false => c.body.extend_from_slice(&data),
                            }
                            Next::Drop
                        } else {
                            match (&s.link, s.delayed.as_mut(), s.authz.as_mut()) {
                                (Some((w, other)), _, _) => Next::Relay(w.clone(), *other),
                                (None, Some(d), _) => {
                                    d.data
                                        .push_back((Queued::new(data.clone(), &self.budget), end));
                                    Next::Held
                                }
                                (None, None, Some(w)) => {
                                    w.data
                                        .push_back((Queued::new(data.clone(), &self.budget), end));
                                    if w.buffering {
                                        body_ready = self.body_complete(w, end);
                                    }
                                    Next::Held
                                }
                                (None, None, None) => Next::Drop,
                            }
                        }
                    }
                }
            }
        };
        match next {
            Next::Relay(w, other) => {
                if pad > 0 {
                    self.credit(h.stream, pad);
                }
                self.to_mirrors(
                    h.stream,
                    |up| Out::Data(Queued::new(data.clone(), &up.budget), end),
                    end,
                );
                let n = data.len() as u32;
                let sent = w.upgrade().is_some_and(|c| {
                    c.send(other, Out::Data(Queued::new(data, &self.budget), end))
                });
                if !sent {
                    self.credit(h.stream, n);
                }
            }
            Next::Held => {
                if pad > 0 {
                    self.credit(h.stream, pad);
                }
            }
            Next::Drop => self.credit(h.stream, h.len),
            Next::Error(c) => {
                self.credit(h.stream, h.len);
                self.on_stream_error(h.stream, c, "bad DATA")?;
            }
        }
        if body_ready {
            self.body_check(h.stream);
        }
        if end {
            self.maybe_forget(h.stream);
        }
        Ok(())
    }

    /// `with_request_body`: whether the body call's wait `w` buffered is enough to check
    /// with (`end`: the stream ended): ended, `max_request_bytes` of it with
    /// `allow_partial_message`, more than that without.
    fn body_complete(&self, w: &AuthzWait, end: bool) -> bool {
        let Side::Down(l) = &self.side else {
            return false;
        };
        let Some(b) = l.ext_authz.as_ref().and_then(|x| x.body) else {
            return false;
        };
        let held: usize = w.data.iter().map(|(q, _)| q.len()).sum();
        let max = b.max_request_bytes as usize;
        end || held > max || (b.allow_partial_message && held >= max)
    }

    fn maybe_forget(&self, id: u32) {
        let done = self
            .streams
            .borrow()
            .get(&id)
            .is_some_and(|s| s.sent_end && s.recv_end && s.queue.is_empty());
        if done {
            self.forget(id);
        }
    }

    /// A stream id the peer could open but has not.
    fn is_idle(&self, id: u32) -> bool {
        match self.side {
            Side::Down(_) => id > self.stream_ids.get(),
            Side::Up(_) => id >= self.stream_ids.get(),
        }
    }

    /// A stream-level protocol error: reset both this stream and its relay partner. A caller's
    /// counts as a reset against `resets_per_second_max` (the caller made ringside reset it).
    fn on_stream_error(self: &Rc<Self>, id: u32, c: u32, why: &str) -> Result<(), ConnError> {
        tracing::debug!(
            side = self.side_name(),
            stream = id,
            code = c,
            why,
            "http/2 stream error"
        );
        match &self.side {
            Side::Down(l) => l.stats.inc(l.ids.hardening.stream_error),
            Side::Up(h) => h.pool.stats.inc(h.pool.h2_ids.stream_error),
        }
        if let Some((other, oid)) = self.link(id) {
            self.unlink(id);
            other.unlink(oid);
            self.abandon(&other, oid, &CallError::Reset(Reset::Protocol));
        }
        self.reset(id, c);
        self.count_reset()
    }

    fn on_rst(self: &Rc<Self>, id: u32, c: u32) -> Result<(), ConnError> {
        if self.is_idle(id) {
            return Err(conn_err(
                code::PROTOCOL_ERROR,
                "RST_STREAM on an idle stream",
            ));
        }
        if c == code::REFUSED_STREAM && self.retry(id, Again::Refused) == Sent::Yes {
            return Ok(());
        }
        self.count_reset()?;
        if let Side::Down(l) = &self.side {
            if self.streams.borrow().contains_key(&id) {
                l.stats.inc(l.ids.hardening.rq_cancelled);
            }
        }
        if let Side::Up(h) = &self.side {
            if self.streams.borrow().contains_key(&id) {
                h.pool.outcome(h, true);
            }
            if c != code::REFUSED_STREAM && self.retry(id, Again::Reset) == Sent::Yes {
                return Ok(());
            }
        }
        if let Some((other, oid)) = self.end_stream(id) {
            let why = match c {
                code::REFUSED_STREAM => Reset::RemoteRefused,
                _ => Reset::Remote,
            };
            self.abandon(&other, oid, &CallError::Reset(why));
        }
        Ok(())
    }

    fn on_goaway(self: &Rc<Self>, last: u32, c: u32) {
        match &self.side {
            Side::Down(_) => {
                // The caller is leaving: its streams finish, then the connection ends.
                self.closing.set(self.stream_count() == 0);
                self.out_ready.notify();
            }
            Side::Up(h) => {
                tracing::debug!(upstream = %h.addr, last, code = c, "upstream GOAWAY");
                self.goaway.set(Some(last));
                // Streams above `last` were not processed: fail them (safe for callers to retry).
                let refused: Vec<u32> = self
                    .streams
                    .borrow()
                    .keys()
                    .copied()
                    .filter(|&id| id > last)
                    .collect();
                for id in refused {
                    if self.retry(id, Again::Refused) != Sent::Yes {
                        self.upstream_failed(id, Reset::RemoteRefused);
                    }
                }
                if self.stream_count() == 0 {
                    self.close();
                }
            }
        }
    }

    /// Ends upstream stream `id` for another try (a retry now, or a parked one after its
    /// back-off) and hands over what it held: the request it kept, the frames queued behind
    /// it and its unused credit. Its retry slot moves with the call. `None`: no such stream.
    fn detach_for_retry(&self, id: u32) -> Option<(Held, VecDeque<Out>, u32)> {
        let mut streams = self.streams.borrow_mut();
        let s = streams.get_mut(&id)?;
        s.link = None;
        s.sent_end = true;
        s.recv_end = true;
        s.retried = false;
        Some((
            s.held.take().unwrap_or_default(),
            std::mem::take(&mut s.queue),
            std::mem::take(&mut s.no_credit),
        ))
    }

    /// Upstream side: stream `id` failed for `why` before any response reached its caller;
    /// sends it again on another connection (new or other) and relinks its caller's stream,
    /// when what was written of it is still held (`RETRY_BODY_BYTES_MAX`). A call whose route
    /// has a `retry_policy` is retried as it says (`retry_on`, `num_retries`, `previous_hosts`)
    /// within the cluster's `max_retries`; a refused stream (above a GOAWAY's last stream id,
    /// or REFUSED_STREAM: unprocessed, RFC 9113 8.7) is also retried, counted by the policy
    /// when there is one, else once. Anything else: not retried (the caller then fails or gets
    /// the answer as before).
    fn retry(self: &Rc<Self>, id: u32, why: Again) -> Sent {
        let Side::Up(h) = &self.side else {
            return Sent::NotRetriable;
        };
        let (down_w, did, was_retry, sent_end, held) = {
            let streams = self.streams.borrow();
            match streams.get(&id) {
                Some(
                    s @ Stream {
                        link: Some(link),
                        headers_in: false,
                        ..
                    },
                ) => (
                    link.0.clone(),
                    link.1,
                    s.retried,
                    s.sent_end,
                    s.held.is_some(),
                ),
                _ => return Sent::NotRetriable,
            }
        };
        let Some(down) = down_w.upgrade() else {
            return Sent::NotRetriable;
        };
        let pool = &h.pool;
        let (mut policy, label, hash) = down
            .streams
            .borrow()
            .get(&did)
            .and_then(|s| s.call.as_ref())
            .map_or((None, None, None), |c| (c.retry, c.label, c.hash));
        match &policy {
            Some(r) if matches!(why, Again::Refused) || why.wanted_by(&r.policy) => {
                if !r.left() {
                    pool.stats.inc(pool.ids.rq_retry_limit_exceeded);
                    return Sent::Limited;
                }
                if !held {
                    return Sent::NotRetriable;
                }
                // A retry retried again keeps its slot.
                if !pool.retries.admit(was_retry, pool.retry_load()) {
                    pool.stats.inc(pool.ids.rq_retry_overflow);
                    return Sent::Limited;
                }
            }
            None if matches!(why, Again::Refused) && held => {}
            _ => return Sent::NotRetriable,
        }
        let by_policy = policy.is_some();
        // A retry of a policy first waits its back-off (Envoy's `retry_back_off`), when the
        // request was all written: what a caller still sending sends has nowhere to wait.
        if let Some(r) = policy.as_ref().filter(|_| sent_end) {
            let wait = r.back_off(pool.dice.roll());
            if !wait.is_zero() {
                return self.park(id, why, down_w, did, policy, (label, hash), wait);
            }
        }
        let picked = pool
            .retry_connection(
                h,
                self.limits,
                &self.alpn,
                Some(self),
                policy.as_ref(),
                label,
                hash,
            )
            .ok()
            .and_then(|up| Some((up.open_stream(down_w, did)?, up)));
        let Some((uid, up)) = picked else {
            if by_policy && !was_retry {
                pool.retries.ended();
            }
            return Sent::NotRetriable;
        };
        let Some((held, queue, no_credit)) = self.detach_for_retry(id) else {
            return Sent::NotRetriable;
        };
        let open = match why {
            Again::Answer { .. } => !sent_end,
            Again::TryTimeout => true,
            _ => false,
        };
        if open {
            // Answered while the request was still going out, or given up on: stop it.
            self.ctl_queued.set(self.ctl_queued.get() + 1);
            self.write(|o| frame::write_rst_stream(o, id, code::CANCEL));
        }
        self.blocked.borrow_mut().retain(|&b| b != id);
        self.forget(id);
        if matches!(why, Again::Refused) {
            pool.stats.inc(pool.h2_ids.rq_retry_refused);
        }
        if let Some(r) = policy.as_mut() {
            pool.stats.inc(pool.ids.rq_retry);
            r.done += 1;
            if let Side::Up(nh) = &up.side {
                r.tried(nh.index);
            }
        }
        tracing::debug!(upstream = %h.addr, stream = id, ?why, "stream sent again");
        relink(
            &down, did, &up, uid, policy, by_policy, held, queue, no_credit,
        );
        Sent::Yes
    }

    /// Upstream side: stream `id`, all written, failed and its policy retries it after `wait`
    /// (its back-off): the stream ends here (reset upstream if still open), its held request
    /// and retry slot wait in the pool's back-off queue, its caller's stream unlinked, until
    /// the pool's back-off task sends it on (`resume`). Counted as a retry now, as Envoy does
    /// when it schedules one.
    #[allow(clippy::too_many_arguments)]
    fn park(
        self: &Rc<Self>,
        id: u32,
        why: Again,
        down_w: Weak<Conn>,
        did: u32,
        mut policy: Option<crate::route::Retry>,
        (label, hash): (Option<crate::cluster::Label>, Option<u64>),
        wait: Duration,
    ) -> Sent {
        let Side::Up(h) = &self.side else {
            return Sent::NotRetriable;
        };
        let pool = &h.pool;
        let Some((held, queue, no_credit)) = self.detach_for_retry(id) else {
            return Sent::NotRetriable;
        };
        if matches!(why, Again::TryTimeout) {
            // Given up on: stop it.
            self.ctl_queued.set(self.ctl_queued.get() + 1);
            self.write(|o| frame::write_rst_stream(o, id, code::CANCEL));
        }
        self.blocked.borrow_mut().retain(|&b| b != id);
        self.forget(id);
        if let Some(r) = policy.as_mut() {
            pool.stats.inc(pool.ids.rq_retry);
            r.done += 1;
        }
        if let Some(down) = down_w.upgrade() {
            if let Some(s) = down.streams.borrow_mut().get_mut(&did) {
                s.link = None;
                if let Some(c) = s.call.as_mut() {
                    c.retry = policy;
                    c.try_deadline = None;
                }
            }
        }
        tracing::debug!(upstream = %h.addr, stream = id, ?why, ?wait, "stream sent again after its back-off");
        pool.backoff.borrow_mut().push(Parked {
            due: Instant::now() + wait,
            down: down_w,
            did,
            host: h.clone(),
            avoid: Rc::downgrade(self),
            limits: self.limits,
            alpn: self.alpn.clone(),
            held,
            queue,
            no_credit,
            policy,
            label,
            hash,
        });
        wake_backoff(pool);
        Sent::Yes
    }

    /// Upstream side: the stream is lost (`why`, Envoy's reset reason); its caller gets
    /// UNAVAILABLE.
    fn upstream_failed(self: &Rc<Self>, id: u32, why: Reset) {
        if let Side::Up(h) = &self.side {
            h.pool.outcome(h, true);
        }
        if let Some((down, did)) = self.end_stream(id) {
            self.abandon(&down, did, &CallError::Reset(why));
        }
    }

    fn on_headers(self: &Rc<Self>, id: u32, end: bool, block: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(conn_err(code::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        let mut decoded = 0usize;
        {
            let mut hl = self.headers.borrow_mut();
            hl.clear();
            let limit = self.limits.header_list_max as usize;
            let hl = &mut *hl;
            self.decoder
                .borrow_mut()
                .decode(block, &mut |n, v, never| {
                    decoded += n.len() + v.len();
                    hl.push(n, v, never, limit)
                })
                .map_err(|e| conn_err(code::COMPRESSION_ERROR, e.to_string()))?;
        }
        self.count_amplified(decoded.saturating_sub(block.len()))?;
        match &self.side {
            Side::Down(l) => {
                let l = l.clone();
                self.on_request_headers(&l, id, end)
            }
            Side::Up(_) => self.on_response_headers(id, end),
        }
    }

    // === caller side ===

    fn on_request_headers(
        self: &Rc<Self>,
        l: &Rc<TripleListener>,
        id: u32,
        end: bool,
    ) -> Result<(), ConnError> {
        if id.is_multiple_of(2) {
            return Err(conn_err(
                code::PROTOCOL_ERROR,
                "even stream id from a client",
            ));
        }
        let known = self.streams.borrow().get(&id).map(|s| s.recv_end);
        if let Some(ended) = known {
            return self.on_request_trailers(id, ended, end);
        }
        if id <= self.stream_ids.get() {
            return Err(conn_err(
                code::PROTOCOL_ERROR,
                "stream id reused or not increasing",
            ));
        }
        self.stream_ids.set(id);
        // Before it is logged, authorized and routed, as Envoy's connection manager does.
        self.xfcc.apply(&mut self.headers.borrow_mut());
        l.stats.inc(l.ids.rq_total);
        if self.goaway.get().is_some()
            || self.streams.borrow().len() >= l.limits.streams_max as usize
        {
            l.stats.inc(l.ids.rq_refused);
            return self.write_control(|o| frame::write_rst_stream(o, id, code::REFUSED_STREAM));
        }
        let now = Instant::now();
        let mut call = Call::new(l, now);
        call.log = l.capture(&self.headers.borrow());
        if let (Some(i), Some(lg)) = (l.istio.as_ref().filter(|i| i.inbound()), &mut call.log) {
            // istio-proxy's inbound `peer_metadata`: the caller's sidecar names its workload.
            let hl = self.headers.borrow();
            let value = hl.get(exchange::HEADER);
            lg.mx.id_received = hl.get(exchange::HEADER_ID).is_some();
            lg.mx.value_received = value.is_some();
            lg.mx.peer = i.peer_metadata(value);
        }
        let mut s = Stream::new(
            self.peer_initial_window.get(),
            self.limits.stream_window,
            Some(call),
        );
        s.recv_end = end;
        self.streams.borrow_mut().insert(id, s);
        if !l.budget.admits() {
            // The shard holds too much buffered: shed; calls already admitted go on.
            l.budget.shed();
            let e = CallError::ShedMemory {
                buffered: l.budget.used(),
                limit: l.budget.max(),
            };
            self.fail_call(id, &e);
            return Ok(());
        }
        // The jwt_authn filter, then rbac (with ext_authz after the rbac filters before it;
        // with istiod's order, ext_authz and the rbac filters before it first, then
        // jwt_authn), as the listener orders them.
        let x = l.ext_authz.as_ref();
        let payload = match x.is_some_and(|x| x.before_jwt_authn) {
            true => None,
            false => match self.authenticate(l, id) {
                Ok(p) => p,
                Err(e) => {
                    self.respond_before_routing(l, id, None);
                    self.fail_call(id, &e);
                    return Ok(());
                }
            },
        };
        let split = x.map_or(usize::MAX, |x| x.after_rbac);
        let (allowed, policy) = self.authorized(
            l,
            payload.as_ref(),
            0..split,
            x.and_then(|x| x.shadow_prefix()),
        );
        if !allowed {
            self.respond_before_routing(l, id, payload.as_ref());
            self.fail_call(id, &CallError::RbacDenied);
            return Ok(());
        }
        if let Some(x) = x {
            if x.applies(policy) {
                self.start_check(l, id, end, payload);
                return Ok(());
            }
            l.stats.inc(x.ids.disabled);
        }
        self.proceed(l, id, end, payload, now)
    }

    /// Caller side: a call its authorization filters let through (the rbac filters after an
    /// ext_authz filter still to run): routed and sent upstream, its headers in the
    /// connection's list.
    fn proceed(
        self: &Rc<Self>,
        l: &Rc<TripleListener>,
        id: u32,
        end: bool,
        mut payload: Option<crate::filter::jwt::Metadata>,
        now: Instant,
    ) -> Result<(), ConnError> {
        if l.ext_authz.as_ref().is_some_and(|x| x.before_jwt_authn) {
            payload = match self.authenticate(l, id) {
                Ok(p) => p,
                Err(e) => {
                    self.respond_before_routing(l, id, None);
                    self.fail_call(id, &e);
                    return Ok(());
                }
            };
        }
        if let Some(x) = &l.ext_authz {
            let (allowed, _) = self.authorized(l, payload.as_ref(), x.after_rbac..usize::MAX, None);
            if !allowed {
                self.respond_before_routing(l, id, payload.as_ref());
                self.fail_call(id, &CallError::RbacDenied);
                return Ok(());
            }
        }
        if l.jwt.is_some() {
            // Allowed: the request as it came is no longer needed.
            if let Some(c) = self
                .streams
                .borrow_mut()
                .get_mut(&id)
                .and_then(|s| s.call.as_mut())
            {
                c.as_came = None;
            }
        }
        // The header list is borrowed only for this call, into a function that cannot reach
        // the connection (so cannot borrow it again).
        let routed = route_call(
            l,
            &self.headers.borrow(),
            (
                self.limits.header_list_max,
                self.caller_addrs.get(),
                self.original_dst.get(),
            ),
            (now, if self.tls.get() { b"https" } else { b"http" }),
            payload.as_ref(),
        );
        match routed {
            Ok(call) => self.forward_call(l, id, end, call),
            Err(Refused::Malformed) => {
                self.on_stream_error(id, code::PROTOCOL_ERROR, "malformed request headers")
            }
            Err(Refused::Call(e)) => {
                self.fail_call(id, &e);
                Ok(())
            }
            Err(Refused::Routed(e, respond, name)) => {
                self.set_respond(id, respond, name);
                self.fail_call(id, &e);
                match e {
                    CallError::ExpiredOnArrival => self.count_reset(),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Caller side: the response mutations the call's answers get from now on, and the name
    /// of the route it matched (logged calls; `None` leaves the record's as it is).
    fn set_respond(
        &self,
        id: u32,
        respond: Option<super::mutate::Respond>,
        route_name: Option<Rc<str>>,
    ) {
        if let Some(c) = self
            .streams
            .borrow_mut()
            .get_mut(&id)
            .and_then(|s| s.call.as_mut())
        {
            if respond.is_some() {
                self.mutates.set(true);
            }
            c.respond = respond;
            if let (Some(lg), Some(name)) = (c.log.as_mut(), route_name) {
                lg.route = Some(name);
            }
        }
    }

    /// Caller side: the response mutations of the route call `id` would take (none for a
    /// route that answers itself), for an answer made before routing (jwt_authn, rbac): Envoy's
    /// connection manager resolves the route before its filters run, and its local replies
    /// get the route's response mutations. Error path only.
    fn respond_before_routing(
        &self,
        l: &TripleListener,
        id: u32,
        metadata: Option<&crate::filter::jwt::Metadata>,
    ) {
        // After jwt_authn passed the call without clearing the route: the route of the call
        // as it came, without the filter's payloads.
        let as_came = self
            .streams
            .borrow_mut()
            .get_mut(&id)
            .and_then(|s| s.call.as_mut()?.as_came.take());
        let (respond, name) = {
            let current = self.headers.borrow();
            let (hl, metadata) = match &as_came {
                Some(a) => (a.headers.as_deref().unwrap_or(&current), None),
                None => (&*current, metadata),
            };
            let path = hl.get(b":path").unwrap_or(b"/");
            let (service, method) = super::router::path_parts(path);
            let view = RequestView {
                path,
                service,
                method,
                headers: hl,
                metadata,
            };
            let routes = l.routes.get();
            let found = routes.router.route_entry(hl.get(b":authority"), &view);
            // Envoy's access log names the route its connection manager resolved.
            let name = found
                .and_then(|(entry, _)| entry?.name.clone())
                .filter(|_| l.log.is_some());
            let respond = match found {
                Some((entry, action)) if action.direct.is_none() => {
                    let (_, target) = action.pick(l.roll());
                    super::mutate::Respond::of(entry.and_then(|m| m.mutations.as_ref()), target)
                        .map(|mut r| {
                            // `%REQ(x)%`: the request as it is now.
                            r.capture(|n| current.get(n));
                            r
                        })
                }
                _ => None,
            };
            (respond, name)
        };
        self.set_respond(id, respond, name);
    }

    /// The listener's jwt_authn filter on the call whose headers were just decoded: its
    /// changes made to the header list (a token not forwarded removed, ...), its verified
    /// payloads returned; or the answer Envoy gives a gRPC caller (the HTTP status mapped:
    /// 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, the body as the message).
    fn authenticate(
        &self,
        l: &TripleListener,
        id: u32,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, CallError> {
        let Some(j) = &l.jwt else {
            return Ok(None);
        };
        let checked = j.check(&*self.headers.borrow(), &l.stats);
        match checked {
            Ok(p) => {
                let denials_follow = l.rbac.is_some() || l.ext_authz.is_some();
                let kept = super::AsCame::keep(&self.headers.borrow(), &p, denials_follow);
                if let Some(c) = self
                    .streams
                    .borrow_mut()
                    .get_mut(&id)
                    .and_then(|s| s.call.as_mut())
                {
                    c.as_came = kept;
                }
                apply_jwt_ops(&mut self.headers.borrow_mut(), &p.ops);
                Ok((!p.metadata.is_empty()).then_some(p.metadata))
            }
            Err(f) => {
                let hl = self.headers.borrow();
                let scheme: &[u8] = if self.tls.get() { b"https" } else { b"http" };
                let www = f.www_authenticate(
                    hl.get(b"x-forwarded-proto").unwrap_or(scheme),
                    hl.get(b":authority").unwrap_or_default(),
                    hl.get(b":path").unwrap_or_default(),
                );
                Err(CallError::Jwt {
                    status: http_to_grpc_status(f.status.http_code()),
                    message: f.body(),
                    www_authenticate: www,
                })
            }
        }
    }

    /// The listener's HTTP rbac filters in `range` on the call whose headers are in the
    /// connection's list (counted; no filters: allowed), and the shadow policy those with
    /// `shadow_prefix` matched. Envoy runs them before the router: a denied call is not
    /// routed.
    fn authorized<'l>(
        &self,
        l: &'l TripleListener,
        md: Option<&crate::filter::jwt::Metadata>,
        range: std::ops::Range<usize>,
        shadow_prefix: Option<&str>,
    ) -> (bool, Option<&'l str>) {
        let Some(rbac) = &l.rbac else {
            return (true, None);
        };
        let hl = self.headers.borrow();
        let call = super::headers::CallView {
            headers: &hl,
            metadata: md,
        };
        match &*self.rbac_peer.borrow() {
            Some(c) => rbac.allows_range(&c.with(&call), &l.stats, range, shadow_prefix),
            // Set at accept whenever the listener has rules.
            None => (false, None),
        }
    }

    /// Caller side: call `id` (its headers in the connection's list) waits while its
    /// authorization is asked: `Authorization/Check` on a stream of the filter's cluster's
    /// pool, the CheckRequest built from the call as Envoy 1.40 builds it.
    fn start_check(
        self: &Rc<Self>,
        l: &Rc<TripleListener>,
        id: u32,
        end: bool,
        payload: Option<crate::filter::jwt::Metadata>,
    ) {
        let Some(x) = &l.ext_authz else {
            return;
        };
        let scheme: &[u8] = if self.tls.get() { b"https" } else { b"http" };
        {
            let mut hl = self.headers.borrow_mut();
            // What Envoy's connection manager adds before its filters run: the authorizer
            // sees them (and the router then finds them there).
            if hl.get(b"x-forwarded-proto").is_none() {
                hl.append(b"x-forwarded-proto", scheme);
            }
            if hl.get(b"x-request-id").is_none() {
                hl.append(b"x-request-id", &super::request_id::uuid4());
            }
        }
        // `with_request_body`: a call with a body waits for it (its end, or enough of it)
        // before the check goes; the filter's timeout runs from then.
        let buffering = x.body.is_some() && !end;
        if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
            s.authz = Some(Box::new(AuthzWait {
                until: Instant::now()
                    + Duration::from_millis(crate::config::EXT_AUTHZ_TIMEOUT_MS_MAX),
                check: None,
                end,
                headers: self.headers.borrow().clone(),
                payload,
                data: VecDeque::new(),
                trailers: None,
                buffering,
            }));
        }
        if buffering {
            return;
        }
        let message = self.check_message(l, x, id, &self.headers.borrow(), None);
        self.dispatch_check(l, x, id, message);
    }

    /// Caller side: the check of call `id` whose headers are `hl` (and body `body`), as the
    /// filter's authorizer is asked: a CheckRequest, or an HTTP authorizer's request.
    fn check_message(
        &self,
        l: &TripleListener,
        x: &crate::filter::ext_authz::ExtAuthz,
        id: u32,
        hl: &super::headers::HeaderList,
        body: Option<crate::filter::ext_authz::Body<'_>>,
    ) -> Bytes {
        let peer = self.rbac_peer.borrow();
        let attrs = crate::filter::ext_authz::Attributes::of_call(
            peer.as_ref(),
            l.local_uris.first().map(String::as_str),
            "HTTP/2",
            u64::from(id),
        );
        let allowed = hl
            .iter()
            .map(|(n, v, _)| (n, v))
            .filter(|(n, _)| x.allows_header(n));
        match &x.http {
            Some(h) => Bytes::from(h.request(allowed, body)),
            None => crate::filter::ext_authz::check_request(
                &attrs,
                allowed,
                x.include_peer_certificate,
                body,
            ),
        }
    }

    /// Caller side: `with_request_body`: the body call `id` buffered is complete (ended, or
    /// over `max_request_bytes`): checked with it, or, over the limit without
    /// `allow_partial_message`, answered 413 as Envoy's buffer limit answers.
    fn body_check(self: &Rc<Self>, id: u32) {
        let Side::Down(l) = &self.side else {
            return;
        };
        let l = l.clone();
        let Some(x) = &l.ext_authz else {
            return;
        };
        let Some(settings) = x.body else {
            return;
        };
        let message = {
            let mut streams = self.streams.borrow_mut();
            let Some(w) = streams.get_mut(&id).and_then(|s| s.authz.as_mut()) else {
                return;
            };
            w.buffering = false;
            let mut buffered = Vec::new();
            for (q, _) in &w.data {
                buffered.extend_from_slice(q);
            }
            if buffered.len() > settings.max_request_bytes as usize
                && !settings.allow_partial_message
            {
                None
            } else {
                let body = crate::filter::ext_authz::Body {
                    buffered: &buffered,
                    settings,
                };
                Some(self.check_message(&l, x, id, &w.headers, Some(body)))
            }
        };
        match message {
            Some(m) => self.dispatch_check(&l, x, id, m),
            None => {
                let w = self
                    .streams
                    .borrow_mut()
                    .get_mut(&id)
                    .and_then(|s| s.authz.take());
                let Some(w) = w else {
                    return;
                };
                let held: usize = w.data.iter().map(|(q, _)| q.len()).sum();
                *self.headers.borrow_mut() = w.headers;
                self.credit(id, held as u32);
                self.respond_before_routing(&l, id, w.payload.as_ref());
                self.fail_call(
                    id,
                    &CallError::Direct {
                        status: http_to_grpc_status(413),
                        message: "Payload Too Large".into(),
                        location: None,
                    },
                );
            }
        }
    }

    /// Caller side: sends call `id`'s check `message` to the filter's authorizer; its timeout
    /// runs from now.
    fn dispatch_check(
        self: &Rc<Self>,
        l: &Rc<TripleListener>,
        x: &crate::filter::ext_authz::ExtAuthz,
        id: u32,
        message: Bytes,
    ) {
        let until = Instant::now() + x.timeout;
        if let Some(w) = self
            .streams
            .borrow_mut()
            .get_mut(&id)
            .and_then(|s| s.authz.as_mut())
        {
            w.until = until;
        }
        let routes = l.routes.get();
        let pool = routes.authz_pool.and_then(|i| routes.pools.get(i));
        if x.http.is_some() {
            // An HTTP authorizer: asked over HTTP/1.1 by a task of its own, whose answer comes
            // back by the call's id (none waits for it any more after the timeout: dropped).
            let Some(pool) = pool.cloned() else {
                self.check_done(id, Err(crate::filter::ext_authz::CheckError::Transport));
                return;
            };
            let (me, l) = (Rc::downgrade(self), l.clone());
            shard::monoio::spawn(async move {
                let Some(x) = &l.ext_authz else {
                    return;
                };
                let outcome = super::http1::http_check(&pool, x, message).await;
                if let Some(c) = me.upgrade() {
                    c.check_done(id, outcome);
                }
            });
            if self.armed.get().is_none_or(|a| until < a) {
                self.deadline_wake.notify();
            }
            return;
        }
        let waiter = CheckWaiter::Call(Rc::downgrade(self), id);
        let sent =
            pool.and_then(|pool| send_check(pool, self.limits, &l.alpn.http2, x, message, waiter));
        let Some((up, uid)) = sent else {
            // No connection to the authorizer: an error now.
            self.check_done(id, Err(crate::filter::ext_authz::CheckError::Transport));
            return;
        };
        if let Some(w) = self
            .streams
            .borrow_mut()
            .get_mut(&id)
            .and_then(|s| s.authz.as_mut())
        {
            w.check = Some((Rc::downgrade(&up), uid));
        }
        if self.armed.get().is_none_or(|a| until < a) {
            self.deadline_wake.notify();
        }
    }

    /// Caller side: the authorization of call `id` is known (answered, failed, timed out).
    fn check_done(
        self: &Rc<Self>,
        id: u32,
        outcome: Result<crate::filter::ext_authz::Answer, crate::filter::ext_authz::CheckError>,
    ) {
        let Side::Down(l) = &self.side else {
            return;
        };
        let l = l.clone();
        let w = self
            .streams
            .borrow_mut()
            .get_mut(&id)
            .and_then(|s| s.authz.take());
        if let Some(w) = w {
            self.authz_done(&l, id, *w, outcome);
        }
    }

    /// Caller side: acts on call `id`'s authorization as Envoy's ext_authz filter does: OK
    /// goes on (routed, the answer's header changes made), denied is answered with the
    /// answer's status, headers and body, an error answers `status_on_error` (or, with
    /// `failure_mode_allow`, goes on).
    fn authz_done(
        self: &Rc<Self>,
        l: &Rc<TripleListener>,
        id: u32,
        w: AuthzWait,
        outcome: Result<crate::filter::ext_authz::Answer, crate::filter::ext_authz::CheckError>,
    ) {
        use crate::filter::ext_authz::Answer;
        let Some(x) = &l.ext_authz else {
            return;
        };
        let AuthzWait {
            check,
            end,
            headers,
            payload,
            data,
            trailers,
            ..
        } = w;
        cancel_check(check);
        // The call's headers back in the connection's list (no one else's are there between
        // two frames).
        *self.headers.borrow_mut() = headers;
        let refused = match outcome {
            Ok(Answer::Ok {
                headers,
                remove,
                response_headers,
            }) => {
                l.stats.inc(x.ids.ok);
                apply_authz_headers(&mut self.headers.borrow_mut(), &headers, &remove);
                if !response_headers.is_empty() {
                    if let Some(c) = self
                        .streams
                        .borrow_mut()
                        .get_mut(&id)
                        .and_then(|s| s.call.as_mut())
                    {
                        c.authz_response_headers = response_headers;
                    }
                }
                None
            }
            Ok(Answer::Denied {
                status,
                headers,
                body,
            }) => {
                l.stats.inc(x.ids.denied);
                Some(CallError::AuthzDenied {
                    status: http_to_grpc_status(status),
                    message: body,
                    headers,
                })
            }
            Err(e) => {
                tracing::debug!(listener = %l.name, error = ?e, "ext_authz: check failed");
                l.stats.inc(x.ids.error);
                if x.failure_mode_allow {
                    l.stats.inc(x.ids.failure_mode_allowed);
                    if x.failure_mode_allow_header_add {
                        self.headers.borrow_mut().replace(
                            crate::filter::ext_authz::FAILURE_MODE_ALLOWED_HEADER,
                            Some(b"true"),
                        );
                    }
                    None
                } else {
                    Some(CallError::AuthzError(http_to_grpc_status(
                        x.status_on_error,
                    )))
                }
            }
        };
        let held: usize = data.iter().map(|(q, _)| q.len()).sum();
        if let Some(e) = refused {
            self.credit(id, held as u32);
            self.respond_before_routing(l, id, payload.as_ref());
            self.fail_call(id, &e);
            return;
        }
        if let Err(e) = self.proceed(l, id, end, payload, Instant::now()) {
            self.goaway_close(e.code, &e.why);
            return;
        }
        let link = self.link(id);
        if link.is_none() {
            // Delayed (a fault) or waiting for room: what its caller sent waits with it;
            // failed: given back.
            let mut streams = self.streams.borrow_mut();
            if let Some(d) = streams.get_mut(&id).and_then(|s| s.delayed.as_mut()) {
                d.data.extend(data);
                d.trailers = trailers;
                return;
            }
            drop(streams);
            self.credit(id, held as u32);
            return;
        }
        self.forward_held(id, link, data, trailers);
    }

    /// Trailers from the caller: once, and ending the stream.
    fn on_request_trailers(
        self: &Rc<Self>,
        id: u32,
        ended: bool,
        end: bool,
    ) -> Result<(), ConnError> {
        if ended {
            return self.on_stream_error(id, code::STREAM_CLOSED, "HEADERS after END_STREAM");
        }
        if !end {
            return self.on_stream_error(id, code::PROTOCOL_ERROR, "trailers without END_STREAM");
        }
        let mut block = Vec::new();
        self.headers.borrow().encode(&mut block);
        let mut body_ready = false;
        if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
            s.recv_end = true;
        }
        if let Some((up, uid)) = self.link(id) {
            self.to_mirrors(id, |_| Out::Headers(block.clone(), true), true);
            up.send(uid, Out::Headers(block, true));
        } else {
            let mut streams = self.streams.borrow_mut();
            if let Some(s) = streams.get_mut(&id) {
                if let Some(d) = s.delayed.as_mut() {
                    d.trailers = Some(block);
                } else if let Some(w) = s.authz.as_mut() {
                    w.trailers = Some(block);
                    // `with_request_body`: the body ended with the trailers.
                    body_ready = w.buffering;
                }
            }
        }
        if body_ready {
            self.body_check(id);
        }
        self.maybe_forget(id);
        Ok(())
    }

    /// Sends a routed call upstream: a stream on a connection of the picked cluster, its
    /// headers, and its deadline armed.
    fn forward_call(
        self: &Rc<Self>,
        l: &Rc<TripleListener>,
        id: u32,
        end: bool,
        mut call: Routed,
    ) -> Result<(), ConnError> {
        if call.answer.is_none() {
            call.route_ids.rq_total_inc(&l.stats);
            call.service_ids.rq_total_inc(&l.stats);
        }
        if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
            if let Some(c) = s.call.as_mut() {
                c.route = call.route_ids;
                c.service = call.service_ids;
                c.deadline = call.deadline;
                c.trace = call.trace.take();
                c.label = call.label;
                c.hash = call.hash;
                c.slot = call.slot.take();
                c.respond = call.respond.take();
                c.cookies = call.cookies.take();
                if c.respond.is_some() || c.cookies.is_some() {
                    self.mutates.set(true);
                }
                if let Some(lg) = c.log.as_mut() {
                    lg.route = call.route_name.take();
                    if let Some(h) = call.edited.take() {
                        lg.keep_routed_request(|n| h.get(n));
                    }
                }
            }
        }
        if let Some(d) = call.fault.and_then(|f| f.delay) {
            self.delay_call(l, id, end, call, d);
            return Ok(());
        }
        self.send_upstream(l, id, end, call, false)
    }

    /// A route's fault delay holds the call: nothing goes upstream until `delay` passed (the
    /// deadline task releases it); what the caller sends meanwhile waits with it, bounded by
    /// the stream's flow-control window.
    fn delay_call(
        self: &Rc<Self>,
        l: &Rc<TripleListener>,
        id: u32,
        end: bool,
        call: Routed,
        delay: Duration,
    ) {
        let until = Instant::now() + delay;
        l.stats.inc(l.ids.fault.delays_injected);
        l.stats.inc(l.ids.fault.active);
        l.faults_active.set(l.faults_active.get() + 1);
        if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
            if let Some(lg) = s.call.as_mut().and_then(|c| c.log.as_mut()) {
                lg.flags = lg.flags | crate::access_log::Flags::DELAY_INJECTED;
            }
            s.delayed = Some(Box::new(Delayed {
                until: Some(until),
                routed: call,
                end,
                data: VecDeque::new(),
                trailers: None,
            }));
        }
        if self.armed.get().is_none_or(|a| until < a) {
            self.deadline_wake.notify();
        }
    }

    /// Caller side: the fault delay of stream `id` is over, or its turn to leave its pool's
    /// `waiting` queue came: the call goes upstream with what its caller sent meanwhile, or is
    /// answered with the fault's abort, or (no room after all) waits again with it.
    /// Sends what a held call's caller sent while it was held (`data`, `trailers`: behind an
    /// ext_authz check, a fault delay or a wait for room) on its upstream stream `link` and to
    /// its mirrors; what cannot be sent is credited back to the caller.
    fn forward_held(
        &self,
        id: u32,
        link: Option<(Rc<Conn>, u32)>,
        data: VecDeque<(Queued, bool)>,
        trailers: Option<Vec<u8>>,
    ) {
        for (q, end) in data {
            let n = q.len() as u32;
            self.to_mirrors(
                id,
                |up| Out::Data(Queued::new((*q).clone(), &up.budget), end),
                end,
            );
            let sent = link
                .as_ref()
                .is_some_and(|(up, uid)| up.send(*uid, Out::Data(q, end)));
            if !sent {
                self.credit(id, n);
            }
        }
        if let (Some(t), Some((up, uid))) = (trailers, link) {
            self.to_mirrors(id, |_| Out::Headers(t.clone(), true), true);
            up.send(uid, Out::Headers(t, true));
        }
        self.maybe_forget(id);
    }

    fn release_delayed(self: &Rc<Self>, l: &Rc<TripleListener>, id: u32) {
        let d = self
            .streams
            .borrow_mut()
            .get_mut(&id)
            .and_then(|s| s.delayed.take());
        let Some(d) = d else {
            return;
        };
        let mut d = *d;
        let fault = d.until.is_some();
        if fault {
            l.stats.dec(l.ids.fault.active);
            l.faults_active.set(l.faults_active.get().saturating_sub(1));
        }
        if let Some(code) = d.routed.fault.and_then(|f| f.abort).filter(|_| fault) {
            l.stats.inc(l.ids.fault.aborts_injected);
            let n: usize = d.data.iter().map(|(q, _)| q.len()).sum();
            // A direct route's abort: no response mutations (Envoy finalizes a local reply
            // only with a route that forwards).
            if d.routed.answer.is_some() {
                self.set_respond(id, None, None);
            }
            drop(d);
            self.credit(id, n as u32);
            self.fail_call(id, &CallError::FaultAbort(code));
            return;
        }
        if let Some(answer) = d.routed.answer.take() {
            // A direct route's answer, its delay over.
            let n: usize = d.data.iter().map(|(q, _)| q.len()).sum();
            drop(d);
            self.credit(id, n as u32);
            self.fail_call(id, &answer);
            return;
        }
        let (data, trailers) = (std::mem::take(&mut d.data), d.trailers.take());
        if self.send_upstream(l, id, d.end, d.routed, !fault).is_err() {
            return;
        }
        let link = self.link(id);
        if link.is_none() {
            // Waiting (again) for room: what its caller sent waits with it.
            let mut streams = self.streams.borrow_mut();
            if let Some(w) = streams.get_mut(&id).and_then(|s| s.delayed.as_mut()) {
                w.data = data;
                w.trailers = trailers;
                return;
            }
        }
        self.forward_held(id, link, data, trailers);
    }

    /// With `circuit_breakers`: no connection of the call's cluster has room for it and no new
    /// one may be opened, or calls wait already: it waits in its pool's `waiting` queue (at
    /// most this shard's part of `max_pending_requests`; beyond it, UNAVAILABLE), with what
    /// its caller sends meanwhile, until a stream of the pool ends (`wake_waiting`) or its
    /// deadline passes. `again`: it had its turn and found no room: back to the front.
    fn wait_for_room(self: &Rc<Self>, id: u32, end: bool, call: Routed, again: bool) {
        let pool = call.routes.pools[call.cluster].clone();
        let max = pool.conn_breaker.as_ref().map_or(0, |b| b.max_pending) as usize;
        if pool.waiting.borrow().len() >= max {
            pool.stats.inc(pool.ids.rq_pending_overflow);
            self.fail_call(id, &CallError::PendingOverflow);
            return;
        }
        let deadline = call.deadline;
        {
            let mut streams = self.streams.borrow_mut();
            let Some(s) = streams.get_mut(&id) else {
                return;
            };
            s.delayed = Some(Box::new(Delayed {
                until: None,
                routed: call,
                end,
                data: VecDeque::new(),
                trailers: None,
            }));
        }
        let entry = (Rc::downgrade(self), id);
        match again {
            true => pool.waiting.borrow_mut().push_front(entry),
            false => pool.waiting.borrow_mut().push_back(entry),
        }
        if let Some(d) = deadline {
            if self.armed.get().is_none_or(|a| d < a) {
                self.deadline_wake.notify();
            }
        }
    }

    /// Sends a routed call upstream (after its fault delay, if any; `queued`: taken from its
    /// pool's `waiting` queue, which other calls do not overtake).
    fn send_upstream(
        self: &Rc<Self>,
        l: &Rc<TripleListener>,
        id: u32,
        end: bool,
        mut call: Routed,
        queued: bool,
    ) -> Result<(), ConnError> {
        let pool = &call.routes.pools[call.cluster];
        if !queued && pool.conn_breaker.is_some() && !pool.waiting.borrow().is_empty() {
            self.wait_for_room(id, end, call, false);
            return Ok(());
        }
        if pool.breaker.as_ref().is_some_and(|b| b.is_open()) {
            pool.stats.inc(pool.ids.rq_active_overflow);
            self.fail_call(id, &CallError::CircuitOpen);
            return Ok(());
        }
        let up = if pool.lb.original_destination {
            let Some(dst) = self.original_dst.get() else {
                l.stats.inc(l.ids.rq_no_healthy_upstream);
                self.fail_call(id, &CallError::NoOriginalDestination);
                return Ok(());
            };
            pool.connection_to(dst, self.limits, &l.alpn.http2, None)
        } else {
            pool.connection(
                self.limits,
                &l.alpn.http2,
                None,
                None,
                call.label,
                call.hash,
            )
        };
        let up = match up {
            Ok(up) => up,
            Err(super::NoConn::Full) if pool.conn_breaker.is_some() => {
                self.wait_for_room(id, end, call, queued);
                return Ok(());
            }
            Err(_) => {
                l.stats.inc(l.ids.rq_no_healthy_upstream);
                self.fail_call(id, &CallError::NoHealthyUpstream);
                return Ok(());
            }
        };
        let Some(uid) = up.open_stream(Rc::downgrade(self), id) else {
            pool.stats.inc(pool.ids.rq_overflow);
            self.fail_call(id, &CallError::StreamsExhausted);
            return Ok(());
        };
        if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
            s.link = Some((Rc::downgrade(&up), uid));
            if let (Some(c), Side::Up(h)) = (s.call.as_mut(), &up.side) {
                c.upstream = Some(h.addr);
                if let Some(p) = call.retry {
                    let mut r = crate::route::Retry::new(p);
                    r.tried(h.index);
                    c.retry = Some(r);
                    c.try_deadline = p.per_try_timeout.map(|t| Instant::now() + t);
                }
            }
            if let Some(lg) = s.call.as_mut().and_then(|c| c.log.as_mut()) {
                if let Side::Up(h) = &up.side {
                    lg.upstream = Some(h.addr);
                }
                lg.cluster = Some(pool.lb.clone());
            }
            if let Some(tr) = s.call.as_mut().and_then(|c| c.trace.as_mut()) {
                if let Side::Up(h) = &up.side {
                    tr.upstream = Some(h.addr);
                }
                tr.cluster = Some(pool.lb.clone());
            }
        }
        up.send(uid, Out::Headers(std::mem::take(&mut call.block), end));
        if call.mirrors_len > 0 {
            self.open_mirrors(id, end, &call);
        }
        let try_deadline = call
            .retry
            .and_then(|p| p.per_try_timeout)
            .map(|t| Instant::now() + t);
        if let Some(d) = [call.deadline, try_deadline].into_iter().flatten().min() {
            if self.armed.get().is_none_or(|a| d < a) {
                self.deadline_wake.notify();
            }
        }
        Ok(())
    }

    /// Ends a call with a gRPC status made by ringside, trailers-only; once its response headers
    /// went out, the caller's stream is reset (INTERNAL_ERROR) instead, as Envoy does.
    pub fn fail_call(self: &Rc<Self>, id: u32, e: &CallError) {
        let Side::Down(l) = &self.side else {
            return;
        };
        let link = self.link(id);
        // Envoy's router says "retried and the latest reset reason" once it retried.
        let retried = self
            .streams
            .borrow()
            .get(&id)
            .and_then(|s| s.call.as_ref()?.retry)
            .is_some_and(|r| r.done > 0);
        let message = percent_encode(&e.message(retried));
        let mut num = [0u8; 10];
        let status_text = grpc::status_text(e.status(), &mut num);
        let authz_headers;
        let (headers_sent, back, mutated) = {
            let mut streams = self.streams.borrow_mut();
            let Some(s) = streams.get_mut(&id) else {
                return;
            };
            if s.sent_end {
                return;
            }
            let back = s.drop_queue();
            let Some(call) = s.call.as_mut() else {
                return;
            };
            authz_headers = std::mem::take(&mut call.authz_response_headers);
            call.local = true;
            call.status = Some(e.status());
            // Once routed, ringside's own answer gets the route's response mutations, as
            // Envoy's local replies after routing do (a reset after a response: none).
            let mutated = match (&call.respond, call.headers_sent) {
                (Some(r), false) => {
                    let location = match e {
                        CallError::Direct { location, .. } => location.as_deref(),
                        _ => None,
                    };
                    let facts = super::mutate::Facts {
                        upstream: call.upstream,
                        duration: call.started.elapsed(),
                        bytes_received: call.received,
                        flags: e.flags(),
                        ..super::mutate::Facts::request(
                            "HTTP/2",
                            SystemTime::now() - call.started.elapsed(),
                            self.caller_addrs.get(),
                        )
                    };
                    Some(r.local_reply(location, &facts))
                }
                _ => None,
            };
            if let Some(lg) = call.log.as_mut() {
                lg.flags = lg.flags | e.flags();
            }
            // What the caller is sent, for `%RESP(...)%` (after the response began: nothing,
            // the stream is reset below).
            if let Some(lg) = call.log.as_mut().filter(|_| !call.headers_sent) {
                lg.keep(Part::Response, |n| match n {
                    b":status" => Some(b"200".as_slice()),
                    b"content-type" => Some(b"application/grpc".as_slice()),
                    b"grpc-status" => Some(status_text),
                    b"grpc-message" => Some(&message[..]).filter(|m| !m.is_empty()),
                    n => mutated
                        .as_ref()
                        .filter(|_| !super::mutate::local_reply_sets(n))
                        .and_then(|m| m.get(n)),
                });
            }
            (
                std::mem::replace(&mut call.headers_sent, true),
                back,
                mutated,
            )
        };
        give_back(back);
        // A call still relayed: its upstream stream is cancelled.
        if let Some((up, uid)) = link {
            up.unlink(uid);
            up.reset(uid, code::CANCEL);
        }
        l.stats.inc(l.ids.rsp_local);
        if headers_sent {
            // The response began: as Envoy's filter manager, which can only reset the stream
            // then (Envoy 1.40's HTTP/2 codec resets it INTERNAL_ERROR, as seen from grpcio;
            // what was queued for the caller is dropped).
            self.reset(id, code::INTERNAL_ERROR);
            return;
        }
        let mut block = Vec::with_capacity(96);
        hpack::encode_field(&mut block, b":status", b"200", false);
        // The route's mutations (with a route's `location`), before what the reply sets.
        let mut server_listed = false;
        if let Some(m) = &mutated {
            for (n, v, _) in m.iter() {
                if super::mutate::local_reply_sets(n)
                    || (n == b"server" && l.stamp.overwrites_server())
                {
                    continue;
                }
                server_listed |= n == b"server";
                hpack::encode_field(&mut block, n, v, false);
            }
        } else if let CallError::Direct {
            location: Some(loc),
            ..
        } = e
        {
            hpack::encode_field(&mut block, b"location", loc, false);
        }
        hpack::encode_field(&mut block, b"content-type", b"application/grpc", false);
        hpack::encode_field(&mut block, b"grpc-status", status_text, false);
        // As Envoy's local reply: no `grpc-message` for an empty body (a redirect's).
        if !message.is_empty() {
            hpack::encode_field(&mut block, b"grpc-message", &message, false);
        }
        if let CallError::Jwt {
            www_authenticate: Some(w),
            ..
        } = e
        {
            hpack::encode_field(&mut block, b"www-authenticate", w, false);
        }
        // An OK authorization's response headers, on any answer (Envoy's ext_authz filter
        // adds them to local replies too); none is one the reply sets, none is there to
        // overwrite.
        for (a, n, v) in &authz_headers {
            let settable = n.first() != Some(&b':') && !super::mutate::local_reply_sets(n);
            if settable && *a != crate::filter::ext_authz::HeaderAction::OverwriteIfExists {
                hpack::encode_field(&mut block, n, v, false);
            }
        }
        // The authorizer's headers on its denial (pseudo-headers and what the reply sets
        // are not its to change).
        if let CallError::AuthzDenied { headers, .. } = e {
            for (n, v) in headers {
                if n.first() != Some(&b':') && !super::mutate::local_reply_sets(n) {
                    hpack::encode_field(&mut block, n, v, false);
                }
            }
        }
        // Envoy's router marks its overflow answers (unless `suppress_envoy_headers`).
        if e.overloaded() && !l.suppress_envoy_headers {
            hpack::encode_field(&mut block, b"x-envoy-overloaded", b"true", false);
        }
        // Envoy's connection manager's, on its local replies too.
        hpack::encode_field(&mut block, b"date", &super::stamp::http_date(), false);
        if l.stamp.adds_server(server_listed) {
            hpack::encode_field(&mut block, b"server", &l.stamp.server_name, false);
        }
        self.send(id, Out::Headers(block, true));
        // The caller may still be sending: tell it to stop (RFC 9113 8.1).
        let still_sending = self.streams.borrow().get(&id).is_some_and(|s| !s.recv_end);
        if still_sending {
            if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
                s.recv_end = true;
                s.sent_end = false;
                s.queue.push_back(Out::Rst(code::NO_ERROR));
            }
            self.flush(id);
        }
        self.maybe_forget(id);
    }

    /// Response headers or trailers from upstream, relayed to the caller. Headers over the
    /// limit are not relayed cut short (grpc-status could be lost): the call ends INTERNAL.
    fn on_response_headers(self: &Rc<Self>, id: u32, end: bool) -> Result<(), ConnError> {
        if self.streams.borrow().get(&id).is_some_and(|s| s.recv_end) {
            return self.on_stream_error(id, code::STREAM_CLOSED, "HEADERS after END_STREAM");
        }
        if self.on_check_headers(id, end) {
            return Ok(());
        }
        let first = self
            .streams
            .borrow()
            .get(&id)
            .map(|s| (!s.headers_in, s.retried));
        if let (Some((true, was_retry)), Side::Up(h)) = (first, &self.side) {
            let mut retried = was_retry;
            // A trailers-only answer (an error without a message) its route retries.
            if end && !self.headers.borrow().too_large {
                let (grpc, http) = {
                    let hl = self.headers.borrow();
                    (
                        header_u32(hl.get(b"grpc-status")),
                        header_u32(hl.get(b":status")),
                    )
                };
                match self.retry(id, Again::Answer { grpc, http }) {
                    Sent::Yes => {
                        let failed = matches!(grpc, Some(status::INTERNAL | status::UNAVAILABLE));
                        h.pool.outcome(h, failed);
                        return Ok(());
                    }
                    Sent::Limited => retried = false,
                    Sent::NotRetriable => {}
                }
            }
            if retried {
                h.pool.stats.inc(h.pool.ids.rq_retry_success);
            }
        }
        let shadow = match self.streams.borrow_mut().get_mut(&id) {
            Some(s) => {
                s.headers_in = true;
                // The upstream processes the request: no retry, the held request is let go.
                s.held = None;
                s.recv_end |= end && s.shadow;
                s.shadow
            }
            None => false,
        };
        if shadow {
            // A shadow's answer goes nowhere; its end counts for outlier detection as any.
            if end {
                if let Side::Up(h) = &self.side {
                    let grpc = header_u32(self.headers.borrow().get(b"grpc-status"));
                    h.pool.outcome(
                        h,
                        matches!(grpc, Some(status::INTERNAL | status::UNAVAILABLE)),
                    );
                }
                self.maybe_forget(id);
            }
            return Ok(());
        }
        let Some((down, did)) = self.link(id) else {
            return Ok(());
        };
        if self.headers.borrow().too_large {
            if let Side::Up(h) = &self.side {
                h.pool.stats.inc(h.pool.h2_ids.rsp_headers_too_large);
                h.pool.stats.inc(h.pool.ids.rq_failure);
            }
            // Resets this upstream stream too.
            let e = CallError::ResponseHeadersTooLarge(self.limits.header_list_max);
            down.fail_call(did, &e);
            return Ok(());
        }
        let mut block;
        let grpc_status = {
            let hl = self.headers.borrow();
            // Made to size (the block otherwise grows by reallocation with each field added).
            let stamps = match &down.side {
                Side::Down(l) => l.stamp.h2_bytes_max(),
                Side::Up(_) => 0,
            };
            block = Vec::with_capacity(hl.encoded_bytes_max() + stamps);
            down.encode_response_headers(did, &hl, &mut block, self);
            down.keep_response_headers(did, |n| hl.get(n));
            hl.get(b"grpc-status").and_then(|v| {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
            })
        };
        if end {
            if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
                s.recv_end = true;
            }
            if let Side::Up(h) = &self.side {
                // The gRPC statuses that say the server is in trouble (their HTTP equivalents,
                // 500 and 503, are 5xx to Envoy's detector).
                let failed = matches!(grpc_status, Some(status::INTERNAL | status::UNAVAILABLE));
                h.pool.outcome(h, failed);
            }
            self.maybe_forget(id);
        }
        down.relay_response_headers(did, block, end, grpc_status);
        Ok(())
    }

    /// Upstream side: the response headers or trailers of a Check call are kept in its
    /// `CheckCall` (true: stream `id` is one).
    fn on_check_headers(&self, id: u32, end: bool) -> bool {
        {
            let mut streams = self.streams.borrow_mut();
            let Some(s) = streams.get_mut(&id) else {
                return false;
            };
            let Some(c) = s.check.as_mut() else {
                return false;
            };
            let hl = self.headers.borrow();
            if !s.headers_in {
                s.headers_in = true;
                c.status_ok = hl.get(b":status") == Some(b"200".as_slice());
            }
            if let Some(g) = header_u32(hl.get(b"grpc-status")) {
                c.grpc_status = Some(g);
            }
            s.recv_end |= end;
        }
        if end {
            self.maybe_forget(id);
        }
        true
    }

    /// Encodes an upstream's response headers `hl` (or trailers) for the caller of stream `id`.
    /// With Istio's metadata exchange (listeners with `istio_metrics`), on the response
    /// headers as istio-proxy's `peer_metadata` filter: outbound, the upstream's sidecar named
    /// its workload (read, then removed); inbound, the caller's sidecar gets ours, each header
    /// only when its request carried it.
    fn encode_response_headers(
        &self,
        id: u32,
        hl: &super::headers::HeaderList,
        out: &mut Vec<u8>,
        up: &Conn,
    ) {
        let Side::Down(l) = &self.side else {
            return hl.encode(out);
        };
        // Response headers (not trailers): the route's mutations, and what Envoy's router and
        // connection manager add (`x-envoy-upstream-service-time`, `date`, `server`).
        let first = self
            .streams
            .borrow()
            .get(&id)
            .and_then(|s| s.call.as_ref())
            .filter(|c| !c.headers_sent)
            .map(|c| {
                let mutates = self.mutates.get();
                (
                    (c.started, c.received),
                    c.respond.as_ref().filter(|_| mutates).cloned(),
                    // Envoy picks a host once per try: one set of cookies each.
                    c.cookies
                        .as_ref()
                        .filter(|_| mutates)
                        .map(|g| (g.clone(), 1 + c.retry.as_ref().map_or(0, |r| r.done))),
                )
            });
        let cookies = first.as_ref().and_then(|f| f.2.as_ref());
        let mutated;
        let hl = match first.as_ref().and_then(|(s, r, _)| Some((s, r.as_ref()?))) {
            Some(((started, received), r)) => {
                let mut m = hl.clone();
                // The router's cookies first, then the route's mutations (which may remove
                // them), as Envoy's router.
                if let Some((g, picks)) = cookies {
                    g.each(*picks, |v| m.append(b"set-cookie", v));
                }
                let code = hl
                    .get(b":status")
                    .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok());
                let facts = super::mutate::Facts {
                    upstream: match &up.side {
                        Side::Up(h) => Some(h.addr),
                        Side::Down(_) => None,
                    },
                    response_code: code,
                    duration: started.elapsed(),
                    bytes_received: *received,
                    grpc_status: super::mutate::Facts::grpc_status_of(hl.get(b"grpc-status"), code),
                    ..super::mutate::Facts::request(
                        "HTTP/2",
                        SystemTime::now() - started.elapsed(),
                        self.caller_addrs.get(),
                    )
                };
                r.apply(&mut m, &facts);
                mutated = m;
                &mutated
            }
            None => hl,
        };
        // An OK authorization's response headers, after the route's (as Envoy's ext_authz
        // filter adds them to what the router passes on).
        let authz = match first.is_some() {
            true => self
                .streams
                .borrow_mut()
                .get_mut(&id)
                .and_then(|s| s.call.as_mut())
                .map(|c| std::mem::take(&mut c.authz_response_headers))
                .filter(|h| !h.is_empty()),
            false => None,
        };
        let authz_mutated;
        let hl = match authz {
            Some(h) => {
                let mut m = hl.clone();
                apply_authz_headers(&mut m, &h, &[]);
                authz_mutated = m;
                &authz_mutated
            }
            None => hl,
        };
        let st = &l.stamp;
        let stamped = |n: &[u8]| first.is_some() && st.replaces(n);
        self.encode_exchange(l, id, hl, out, up, &stamped);
        if let Some((g, picks)) = cookies.filter(|_| !matches!(first, Some((_, Some(_), _)))) {
            g.each(*picks, |v| {
                hpack::encode_field(out, b"set-cookie", v, false)
            });
        }
        if let Some(((started, _), _, _)) = first {
            // Names known: no static-table search, no allocation; one clock read (every
            // response pays these).
            let now = Instant::now();
            if st.envoy_headers {
                let ms = now.saturating_duration_since(started).as_millis() as u64;
                let ms = super::stamp::Decimal::new(ms);
                hpack::encode_known(out, None, b"x-envoy-upstream-service-time", ms.as_slice());
            }
            let date = super::stamp::http_date_at(now);
            hpack::encode_known(out, Some(hpack::STATIC_DATE), b"date", &date);
            let adds = match st.server {
                crate::config::ServerHeader::AppendIfAbsent => {
                    st.adds_server(hl.get(b"server").is_some())
                }
                _ => st.adds_server(false),
            };
            if adds {
                hpack::encode_known(out, Some(hpack::STATIC_SERVER), b"server", &st.server_name);
            }
        }
    }

    /// Encodes `hl` (without the fields `skip` names) with Istio's metadata exchange when the
    /// listener has it (see [`Conn::encode_response_headers`]).
    fn encode_exchange(
        &self,
        l: &TripleListener,
        id: u32,
        hl: &super::headers::HeaderList,
        out: &mut Vec<u8>,
        up: &Conn,
        skip: &dyn Fn(&[u8]) -> bool,
    ) {
        let Some(i) = &l.istio else {
            return hl.encode_except(out, skip);
        };
        let mut streams = self.streams.borrow_mut();
        let Some(lg) = streams
            .get_mut(&id)
            .and_then(|s| s.call.as_mut())
            .filter(|c| !c.headers_sent)
            .and_then(|c| c.log.as_mut())
        else {
            return hl.encode_except(out, skip);
        };
        hl.encode_except(out, |n| exchange::is_header(n) || skip(n));
        if i.inbound() {
            let (own_id, value) = i.own_exchange();
            if !value.is_empty() {
                if lg.mx.id_received {
                    hpack::encode_field(out, exchange::HEADER_ID, own_id, false);
                }
                if lg.mx.value_received {
                    hpack::encode_field(out, exchange::HEADER, value, false);
                }
            }
        } else {
            lg.mx.peer = i.peer_metadata(hl.get(exchange::HEADER));
            lg.upstream_peer = up.istio_peer(i);
        }
    }

    /// Upstream side: the server's TLS principal as outbound listener `i`'s metrics label it
    /// (`destination_principal`), looked up in its table once per connection and listener.
    fn istio_peer(&self, i: &crate::stats::istio::IstioListener) -> crate::stats::istio::PeerId {
        let (id, peer) = self.istio_peer.get();
        if id == i.id() {
            return peer;
        }
        let peer = i.upstream(self.tls_peer.borrow().as_ref());
        self.istio_peer.set((i.id(), peer));
        peer
    }

    /// Keeps, for the call's access log, the response headers (or trailers, when headers were
    /// sent before) the formats read; `get` finds a header in the block going to the caller.
    fn keep_response_headers<'h>(&self, id: u32, get: impl Fn(&[u8]) -> Option<&'h [u8]>) {
        if let Some(c) = self
            .streams
            .borrow_mut()
            .get_mut(&id)
            .and_then(|s| s.call.as_mut())
        {
            let part = if c.headers_sent {
                Part::Trailer
            } else {
                Part::Response
            };
            if let Some(lg) = c.log.as_mut() {
                lg.keep(part, get);
            }
        }
    }

    fn relay_response_headers(
        self: &Rc<Self>,
        id: u32,
        block: Vec<u8>,
        end: bool,
        st: Option<u32>,
    ) {
        if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
            if let Some(c) = s.call.as_mut() {
                c.headers_sent = true;
                if end {
                    c.status = Some(st.unwrap_or(status::INTERNAL));
                }
            }
        }
        self.send(id, Out::Headers(block, end));
        self.maybe_forget(id);
    }

    /// Caller side: ends calls past their deadline (DEADLINE_EXCEEDED to the caller, CANCEL
    /// upstream); returns the next deadline.
    fn expire(self: &Rc<Self>, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let mut tries = Vec::new();
        let mut released = Vec::new();
        let mut authz_expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (&id, s) in self.streams.borrow().iter() {
            let Some(c) = s.call.as_ref() else {
                continue;
            };
            // The external authorization's timeout.
            if let Some(u) = s.authz.as_ref().map(|w| w.until) {
                if u <= now {
                    authz_expired.push(id);
                } else {
                    next = Some(next.map_or(u, |n| n.min(u)));
                }
            }
            // A fault delay ends (unless the call's deadline came first).
            if let Some(u) = s.delayed.as_ref().and_then(|d| d.until) {
                if u <= now && c.deadline.is_none_or(|d| d > now) {
                    released.push(id);
                } else if u > now {
                    next = Some(next.map_or(u, |n| n.min(u)));
                }
            }
            // A try's deadline holds until its response starts.
            let try_d = c.try_deadline.filter(|_| !c.headers_sent);
            let Some(d) = [c.deadline, try_d].into_iter().flatten().min() else {
                continue;
            };
            if s.sent_end {
                continue;
            }
            if d > now {
                next = Some(next.map_or(d, |n| n.min(d)));
            } else if c.deadline.is_some_and(|d| d <= now) {
                expired.push(id);
            } else {
                tries.push(id);
            }
        }
        let Side::Down(l) = &self.side else {
            return next;
        };
        for id in authz_expired {
            self.check_done(id, Err(crate::filter::ext_authz::CheckError::Timeout));
        }
        for id in released {
            self.release_delayed(l, id);
            let d = self.streams.borrow().get(&id).and_then(|s| {
                let c = s.call.as_ref()?;
                [c.deadline, c.try_deadline].into_iter().flatten().min()
            });
            if let Some(d) = d {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        // Tries past `per_try_timeout_ms`: sent again when the policy says so (a `reset`),
        // else the call ends as at its deadline.
        for id in tries {
            let link = self.link(id);
            if let Some(c) = self
                .streams
                .borrow_mut()
                .get_mut(&id)
                .and_then(|s| s.call.as_mut())
            {
                c.try_deadline = None;
            }
            if let Some((up, uid)) = link {
                if let Side::Up(h) = &up.side {
                    h.pool.stats.inc(h.pool.ids.rq_per_try_timeout);
                    h.pool.outcome(h, true);
                }
                if up.retry(uid, Again::TryTimeout) == Sent::Yes {
                    let d = self
                        .streams
                        .borrow()
                        .get(&id)
                        .and_then(|s| s.call.as_ref()?.try_deadline);
                    if let Some(d) = d {
                        next = Some(next.map_or(d, |n| n.min(d)));
                    }
                    continue;
                }
            }
            expired.push(id);
        }
        for id in expired {
            l.stats.inc(l.ids.rq_timeout);
            if let Some((up, uid)) = self.link(id) {
                if let Side::Up(h) = &up.side {
                    h.pool.stats.inc(h.pool.ids.rq_timeout);
                }
                self.unlink(id);
                up.unlink(uid);
                up.reset(uid, code::CANCEL);
            }
            if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
                if let Some(c) = s.call.as_mut() {
                    c.deadline = None;
                }
            }
            self.fail_call(id, &CallError::Timeout);
        }
        next
    }

    /// Caller side: cancels every stream (the caller's connection is gone).
    fn cancel_all(self: &Rc<Self>) {
        let ids: Vec<u32> = self.streams.borrow().keys().copied().collect();
        for id in ids {
            if let Some((other, oid)) = self.end_stream(id) {
                self.abandon(&other, oid, &CallError::Reset(Reset::Termination));
            }
        }
    }

    // === upstream side ===

    /// Opens a stream relayed to the caller's stream `(down, did)`; `None` when this
    /// connection has no stream id or concurrency left.
    fn open_stream(self: &Rc<Self>, down: Weak<Conn>, did: u32) -> Option<u32> {
        let id = self.stream_ids.get();
        if id > frame::STREAM_ID_MAX || !self.has_room() {
            return None;
        }
        self.stream_ids.set(id + 2);
        let mut s = Stream::new(
            self.peer_initial_window.get(),
            self.limits.stream_window,
            None,
        );
        s.link = Some((down, did));
        s.held = Some(Held::default());
        self.streams.borrow_mut().insert(id, s);
        if let Side::Up(h) = &self.side {
            h.pool.stats.inc(h.pool.ids.rq_total);
            h.pool.stats.inc(h.pool.ids.rq_active);
            if let Some(b) = &h.pool.breaker {
                b.started();
            }
        }
        Some(id)
    }

    /// Caller side: opens a shadow copy of call `id` on each of its mirror clusters (after its
    /// own upstream stream): the same headers (`:authority` with `-shadow`, as Envoy), then
    /// what the caller sends, as it is relayed. Dropped and counted, never waited for, when
    /// the shadow has no room (`MIRRORS_ACTIVE_PER_SHARD_MAX`, its breaker, no connection).
    fn open_mirrors(self: &Rc<Self>, id: u32, end: bool, call: &Routed) {
        let deadline = call
            .deadline
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(MIRROR_TIMEOUT_MS_DEFAULT));
        let none = None;
        let alpn = match &self.side {
            Side::Down(l) => &l.alpn.http2,
            Side::Up(_) => &none,
        };
        for &c in &call.mirrors[..call.mirrors_len as usize] {
            let pool = &call.routes.pools[c];
            let dropped = || pool.stats.inc(pool.ids.rq_mirror_dropped);
            if pool.lb.original_destination
                || !pool.budget.admits()
                || pool.breaker.as_ref().is_some_and(|b| b.is_open())
            {
                dropped();
                continue;
            }
            let Ok(up) = pool.connection(self.limits, alpn, None, None, call.label, call.hash)
            else {
                dropped();
                continue;
            };
            if !pool.mirrors.try_start() {
                dropped();
                continue;
            }
            let Some(uid) = up.open_stream(Weak::new(), 0) else {
                pool.mirrors.ended();
                dropped();
                continue;
            };
            pool.stats.inc(pool.ids.rq_mirror);
            if let Some(s) = up.streams.borrow_mut().get_mut(&uid) {
                s.link = None;
                s.held = None;
                s.shadow = true;
            }
            up.send(uid, Out::Headers(call.shadow_block.clone(), end));
            let earliest = {
                let mut d = up.mirror_deadlines.borrow_mut();
                let earliest = d.peek().is_none_or(|e| deadline < e.0 .0);
                d.push(std::cmp::Reverse((deadline, uid)));
                earliest
            };
            if earliest {
                up.mirror_wake.notify();
            }
            if !end {
                if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
                    s.mirrors.push((Rc::downgrade(&up), uid));
                }
            }
        }
    }

    /// Caller side: queues `item` (made per shadow connection) on each shadow copy of call
    /// `id`; a copy with `MIRROR_QUEUED_BYTES_MAX` queued already is reset and counted as
    /// dropped. `end`: the request is complete, the call lets its copies go.
    fn to_mirrors(&self, id: u32, item: impl Fn(&Conn) -> Out, end: bool) {
        let mirrors = match self.streams.borrow_mut().get_mut(&id) {
            Some(s) if !s.mirrors.is_empty() => match end {
                true => std::mem::take(&mut s.mirrors),
                false => s.mirrors.clone(),
            },
            _ => return,
        };
        for (w, uid) in mirrors {
            let Some(up) = w.upgrade() else { continue };
            let queued: usize = up.streams.borrow().get(&uid).map_or(0, |s| {
                s.queue
                    .iter()
                    .map(|o| match o {
                        Out::Data(b, _) => b.len(),
                        _ => 0,
                    })
                    .sum()
            });
            if queued > MIRROR_QUEUED_BYTES_MAX || !up.send(uid, item(&up)) {
                up.drop_shadow(uid);
                if let Some(s) = self.streams.borrow_mut().get_mut(&id) {
                    s.mirrors
                        .retain(|(w2, u2)| !(*u2 == uid && Weak::ptr_eq(w2, &w)));
                }
            }
        }
    }

    /// Upstream side: resets shadow copy `uid` (if still there), counted as dropped.
    fn drop_shadow(self: &Rc<Self>, uid: u32) {
        let Side::Up(h) = &self.side else { return };
        let shadow = self.streams.borrow().get(&uid).is_some_and(|s| s.shadow);
        if shadow {
            h.pool.stats.inc(h.pool.ids.rq_mirror_dropped);
            self.reset(uid, code::CANCEL);
        }
    }

    /// Upstream side: resets the shadow copies past their deadline (counted as timeouts);
    /// returns the next deadline.
    fn expire_mirrors(self: &Rc<Self>, now: Instant) -> Option<Instant> {
        loop {
            let top = self.mirror_deadlines.borrow().peek().map(|e| e.0);
            let (d, uid) = top?;
            if d > now {
                return Some(d);
            }
            self.mirror_deadlines.borrow_mut().pop();
            let shadow = self.streams.borrow().get(&uid).is_some_and(|s| s.shadow);
            if let (Side::Up(h), true) = (&self.side, shadow) {
                h.pool.stats.inc(h.pool.ids.rq_timeout);
                h.pool.outcome(h, true);
                self.reset(uid, code::CANCEL);
            }
        }
    }

    pub fn has_room(&self) -> bool {
        !self.closed.get()
            && !self.closing.get()
            && !self.aged.get()
            && self.goaway.get().is_none()
            && self.stream_ids.get() <= frame::STREAM_ID_MAX
            && (self.streams.borrow().len() as u64) < u64::from(self.peer_streams_max.get())
    }
}

/// Who waits for a Check call's answer.
enum CheckWaiter {
    /// A Triple call (the HTTP filter): the caller connection and its stream.
    Call(Weak<Conn>, u32),
    /// A connection (the network filter).
    Slot(Weak<crate::filter::ext_authz::CheckSlot>),
}

/// Opens an `Authorization/Check` call carrying `message` (a framed CheckRequest) on a
/// connection of `pool`, the filter's authority and timeout in its headers; the answer goes
/// to `waiter` when the stream ends. None: no connection or stream for it.
fn send_check(
    pool: &Rc<Pool>,
    limits: H2Limits,
    alpn: &crate::io::tls::AlpnOverride,
    x: &crate::filter::ext_authz::ExtAuthz,
    message: Bytes,
    waiter: CheckWaiter,
) -> Option<(Rc<Conn>, u32)> {
    let up = pool.connection(limits, alpn, None, None, None, None).ok()?;
    let uid = up.open_stream(Weak::new(), 0)?;
    if let Some(s) = up.streams.borrow_mut().get_mut(&uid) {
        s.link = None;
        s.held = None;
        s.check = Some(Box::new(CheckCall {
            waiter,
            status_ok: false,
            grpc_status: None,
            body: Vec::new(),
            too_large: false,
        }));
    }
    let mut block = Vec::with_capacity(128 + x.authority.len());
    let fields: [(&[u8], &[u8]); 7] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", crate::filter::ext_authz::CHECK_PATH),
        (b":authority", &x.authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", &x.grpc_timeout),
    ];
    for (n, v) in fields {
        hpack::encode_field(&mut block, n, v, false);
    }
    up.send(uid, Out::Headers(block, false));
    up.send(uid, Out::Data(Queued::new(message, &up.budget), true));
    Some((up, uid))
}

impl crate::filter::ext_authz::CheckStreams for Conn {
    fn cancel_check(self: Rc<Self>, id: u32) {
        let was = self
            .streams
            .borrow_mut()
            .get_mut(&id)
            .and_then(|s| s.check.take());
        if was.is_some() {
            self.reset(id, code::CANCEL);
        }
    }
}

/// The network ext_authz filter's Check client on one shard: the Triple upstream pool of the
/// authorizer's cluster, as the HTTP filter's calls use it.
pub struct PoolCheckClient {
    pub pool: Rc<Pool>,
    pub limits: H2Limits,
    pub alpn: crate::io::tls::AlpnOverride,
}

impl crate::filter::ext_authz::CheckClient for PoolCheckClient {
    fn send(
        &self,
        x: &crate::filter::ext_authz::ExtAuthz,
        message: Bytes,
        slot: &Rc<crate::filter::ext_authz::CheckSlot>,
    ) -> bool {
        let waiter = CheckWaiter::Slot(Rc::downgrade(slot));
        match send_check(&self.pool, self.limits, &self.alpn, x, message, waiter) {
            Some((up, uid)) => {
                let on: Rc<dyn crate::filter::ext_authz::CheckStreams> = up;
                slot.sent(Rc::downgrade(&on), uid);
                true
            }
            None => false,
        }
    }
}

/// Cancels a Check call whose caller no longer waits for it (its answer is not wanted).
fn cancel_check(check: Option<(Weak<Conn>, u32)>) {
    let Some((w, uid)) = check else {
        return;
    };
    let Some(up) = w.upgrade() else {
        return;
    };
    let was = up
        .streams
        .borrow_mut()
        .get_mut(&uid)
        .and_then(|s| s.check.take());
    if was.is_some() {
        up.reset(uid, code::CANCEL);
    }
}

/// Makes an OK authorization's changes to the request (Envoy's order: set, add, add if
/// absent, overwrite if present, append, then remove); pseudo-headers and `host` are not the
/// authorizer's to change.
pub(super) fn apply_authz_headers(
    hl: &mut HeaderList,
    headers: &[(crate::filter::ext_authz::HeaderAction, Vec<u8>, Vec<u8>)],
    remove: &[Vec<u8>],
) {
    use crate::filter::ext_authz::HeaderAction as A;
    let allowed = |n: &[u8]| n.first() != Some(&b':') && n != b"host";
    for (a, n, v) in headers.iter().filter(|(_, n, _)| allowed(n)) {
        match a {
            A::Set => hl.replace(n, Some(v)),
            A::Add => hl.append(n, v),
            A::AddIfAbsent => {
                if hl.get(n).is_none() {
                    hl.append(n, v);
                }
            }
            A::OverwriteIfExists => {
                if hl.get(n).is_some() {
                    hl.replace(n, Some(v));
                }
            }
            A::Append => match hl.get(n) {
                Some(old) => {
                    let mut joined = old.to_vec();
                    joined.push(b',');
                    joined.extend_from_slice(v);
                    hl.replace(n, Some(&joined));
                }
                None => hl.append(n, v),
            },
        }
    }
    for n in remove.iter().filter(|n| allowed(n)) {
        hl.replace(n, None);
    }
}

/// A header value that is a decimal number (`grpc-status`, `:status`).
fn header_u32(v: Option<&[u8]>) -> Option<u32> {
    std::str::from_utf8(v?).ok()?.parse().ok()
}

/// Percent-encodes a grpc-message (gRPC over HTTP/2: bytes outside 0x20..=0x7e and '%').
fn percent_encode(m: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    for &b in m.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// A caller's request, routed: where it goes and what it counts into.
struct Routed {
    /// The routes it was routed on (a config update may swap the listener's meanwhile).
    routes: Rc<Routes<Router, Pool>>,
    /// Index of the picked cluster in `routes.pools`.
    cluster: usize,
    route_ids: RequestStatIds,
    service_ids: RequestStatIds,
    deadline: Option<Instant>,
    /// The request headers encoded for the upstream.
    block: Vec<u8>,
    /// A sampled call's span record.
    trace: Option<Box<super::Traced>>,
    /// The route's `retry_policy`.
    retry: Option<crate::route::RetryPolicy>,
    /// The route's fault for this call: a delay (then, with an abort, the abort).
    fault: Option<crate::route::Injected>,
    /// Its traffic label, when the listener reads them.
    label: Option<crate::cluster::Label>,
    /// Its hash by its route's `hash_policy`, when it has one and the policy gave a value.
    hash: Option<u64>,
    /// The cookies its hash generated, for its response's `set-cookie`.
    cookies: Option<super::hash::Generated>,
    /// The shadow clusters its route's mirror policies picked (indices in `routes.pools`), and
    /// the request headers for them (empty when none).
    mirrors: [usize; crate::config::MIRROR_POLICIES_MAX],
    mirrors_len: u8,
    shadow_block: Vec<u8>,
    /// Its place under its route's `max_concurrent_requests`.
    slot: Option<crate::filter::ratelimit::Slot>,
    /// Its route's response header mutations.
    respond: Option<super::mutate::Respond>,
    /// The request as routing left it, when the route edited it (mutations, rewrites) and the
    /// listener logs: what the access log reads.
    edited: Option<HeaderList>,
    /// A route that answers itself, held by its fault delay: its answer once the delay is over
    /// (nothing goes upstream).
    answer: Option<Box<CallError>>,
    /// The route's name, when the call is logged (`%ROUTE_NAME%`).
    route_name: Option<Rc<str>>,
}

impl Routed {
    /// A direct route's answer `answer` held by its fault's delay (`fault`: the delay, then
    /// its abort, if any): it goes nowhere; counted as a direct route's answer (`ids`: the
    /// listener's `other_service`).
    fn direct(
        (routes, ids): (Rc<Routes<Router, Pool>>, RequestStatIds),
        slot: Option<crate::filter::ratelimit::Slot>,
        fault: Option<crate::route::Injected>,
        answer: CallError,
        respond: Option<super::mutate::Respond>,
    ) -> Routed {
        Routed {
            routes,
            cluster: 0,
            route_ids: ids,
            service_ids: ids,
            deadline: None,
            block: Vec::new(),
            trace: None,
            retry: None,
            fault,
            label: None,
            hash: None,
            mirrors: [0; crate::config::MIRROR_POLICIES_MAX],
            mirrors_len: 0,
            shadow_block: Vec::new(),
            slot,
            respond,
            edited: None,
            cookies: None,
            answer: Some(Box::new(answer)),
            route_name: None,
        }
    }
}

/// Why a caller's request is not forwarded.
enum Refused {
    /// The request headers break HTTP/2's rules: a stream error.
    Malformed,
    /// Answered with a gRPC status, before a route was found.
    Call(CallError),
    /// Answered with a gRPC status once routed: with the response mutations that answer
    /// gets (Envoy's local replies on a route that forwards; a direct route's own answer) and
    /// the route's name when the call is logged.
    Routed(CallError, Option<super::mutate::Respond>, Option<Rc<str>>),
}

/// Routes a caller's request by its header list `hl`: the route (first match), the cluster
/// (weighted pick), the counters, the deadline (the caller's `grpc-timeout` or
/// `tri-service-timeout`, capped by the route's timeout) and the headers encoded for the
/// upstream. Counts what it refuses. Reads the listener and `hl`, never the connection.
fn route_call(
    l: &TripleListener,
    hl: &HeaderList,
    (header_list_max, caller, dst): (
        u32,
        (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>),
        Option<std::net::SocketAddr>,
    ),
    (now, scheme): (Instant, &[u8]),
    metadata: Option<&crate::filter::jwt::Metadata>,
) -> Result<Routed, Refused> {
    if hl.too_large {
        l.stats.inc(l.ids.rq_too_large);
        return Err(Refused::Call(CallError::HeadersTooLarge(header_list_max)));
    }
    let path = hl.get(b":path");
    if hl.malformed || path.is_none() || hl.get(b":method").is_none() {
        l.stats.inc(l.ids.rq_bad);
        return Err(Refused::Malformed);
    }
    let Some((service, method)) = path.and_then(grpc::split_path) else {
        l.stats.inc(l.ids.rq_no_route);
        return Err(Refused::Call(CallError::BadPath));
    };
    let routes = l.routes.get();
    // Routes see the path split at its first `/` (as HTTP/1.1 requests are), so a route's
    // `service` / `method` mean the same for every path; a gRPC path splits the same either way.
    let full = path.unwrap_or(b"/");
    let (route_service, route_method) = super::router::path_parts(full);
    let view = RequestView {
        path: full,
        service: route_service,
        method: route_method,
        headers: hl,
        metadata,
    };
    let Some((entry, action)) = routes.router.route_entry(hl.get(b":authority"), &view) else {
        l.stats.inc(l.ids.rq_no_route);
        return Err(Refused::Call(CallError::NoRoute));
    };
    let route_ids = match action.route_index {
        Some(i) => routes.route_ids[i],
        None => *routes.route_ids.last().unwrap_or(&l.ids.other_service),
    };
    // The weighted cluster is picked with the route (Envoy's connection manager resolves
    // both before its filters run): ringside's answers from here on get the response
    // mutations of this route and target, unless the route answers itself (Envoy's filter
    // manager finalizes a local reply only with a route that forwards).
    let direct = action.direct.as_deref();
    let (cluster, target) = match direct {
        None => action.pick(l.roll()),
        Some(_) => (0, 0),
    };
    let headers = entry.and_then(|m| m.mutations.as_ref());
    // `%ROUTE_NAME%`, when the listener logs: the route's own name, shared.
    let route_name = l
        .log
        .as_ref()
        .and_then(|_| entry.and_then(|m| m.name.clone()));
    // A local reply's `%REQ(x)%` read the request as it came (the router has not finalized it).
    let captured = |r: Option<super::mutate::Respond>| {
        r.map(|mut r| {
            r.capture(|n| hl.get(n));
            r
        })
    };
    let refused = |e| {
        Refused::Routed(
            e,
            match direct {
                None => captured(super::mutate::Respond::of(headers, target)),
                Some(_) => None,
            },
            route_name.clone(),
        )
    };
    let service_ids = l.service_ids(service, method);
    let caller_us = hl
        .get(b"grpc-timeout")
        .and_then(grpc::parse_grpc_timeout)
        .or_else(|| {
            hl.get(b"tri-service-timeout")
                .and_then(grpc::parse_tri_timeout)
        });
    let route_us = action.timeout.map(|t| t.as_micros() as u64);
    let timeout_us = match (caller_us, route_us) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if timeout_us.is_some_and(|us| us < DEADLINE_MIN_US) {
        l.stats.inc(l.ids.rq_timeout);
        l.stats.inc(l.ids.hardening.rq_expired_on_arrival);
        return Err(refused(CallError::ExpiredOnArrival));
    }
    if let Some(limits) = &routes.limits {
        if let Some(limit) = limits
            .for_route(action.route_index)
            .filter(|limit| !limit.admit(&l.stats))
        {
            l.stats.inc(l.ids.rq_rate_limited);
            let status = limit.config().grpc_status();
            return Err(refused(CallError::RateLimited(status)));
        }
    }
    // The route's concurrency limit: the call holds a place until its stream ends.
    let slot = routes.concurrency_place(action.route_index).map_err(|_| {
        l.stats.inc(l.ids.rq_concurrency_limited);
        refused(CallError::ConcurrencyLimited)
    })?;
    let fault = match action.fault(&l.dice) {
        Some(f)
            if action
                .fault
                .and_then(|p| p.max_active_faults)
                .is_some_and(|m| l.faults_active.get() >= m) =>
        {
            let _ = f;
            l.stats.inc(l.ids.fault.overflow);
            None
        }
        f => f,
    };
    if let Some(code) = fault.filter(|f| f.delay.is_none()).and_then(|f| f.abort) {
        l.stats.inc(l.ids.fault.aborts_injected);
        return Err(refused(CallError::FaultAbort(code)));
    }
    if let Some(d) = direct {
        // The route answers itself (`redirect`, `direct_response`): a gRPC caller gets
        // Envoy's local reply, the HTTP status mapped, the body as the message, with the
        // route's response mutations.
        let scheme = hl.get(b":scheme").unwrap_or(b"http");
        let xfp = hl.get(b"x-forwarded-proto").unwrap_or(scheme);
        let host = hl.get(b":authority").unwrap_or(b"");
        let answer = CallError::Direct {
            status: http_to_grpc_status(d.status),
            message: String::from_utf8_lossy(&d.body).into_owned(),
            location: d.location(scheme, xfp, host, full),
        };
        let respond = captured(super::mutate::Respond::of(headers, 0));
        if fault.is_some_and(|f| f.delay.is_some()) {
            // The route's fault delay holds the answer (and then its abort, if any), as
            // Envoy's fault filter holds the request before its router answers.
            let ids = l.ids.other_service;
            let mut r = Routed::direct((routes, ids), slot, fault, answer, respond);
            r.route_name = route_name;
            return Ok(r);
        }
        return Err(Refused::Routed(answer, respond, route_name));
    }
    // Its hash (RING_HASH / MAGLEV clusters), of the request as it came; the cookies it
    // generated from the connection's addresses (the local one as Envoy restores it, the
    // original destination of a connection handed over).
    let (hash, cookies) = match action.hash.is_empty() {
        true => (None, None),
        false => {
            let conn = match (caller.0, dst.or(caller.1)) {
                (Some(r), Some(a)) => Some((r, a)),
                _ => None,
            }
            .filter(|_| routes.pools.get(cluster).is_some_and(|p| p.lb.hashes()));
            let (h, g) =
                super::hash::request_hash(&action.hash, hl, full, caller.0.map(|a| a.ip()), conn);
            (h, g.map(|g| super::hash::Generated::new(&action.hash, g)))
        }
    };
    // What Envoy's connection manager adds before the router: `x-forwarded-proto` (the
    // caller's connection's scheme) and `x-request-id` (a new UUID) when absent.
    let own = Own {
        scheme: hl.get(b"x-forwarded-proto").is_none().then_some(scheme),
        request_id: hl
            .get(b"x-request-id")
            .is_none()
            .then(super::request_id::uuid4),
    };
    // The route's header mutations, on a copy of the list (none: the list as it came). A copy
    // (mutations, rewrites) gets `own` first, in Envoy's order; else it is encoded after the
    // list's fields.
    let mutated;
    let (hl, own_listed) = match headers.filter(|h| h.has_request(target)) {
        Some(h) => {
            let mut m = hl.clone();
            own.append(&mut m);
            let facts = super::mutate::Facts::request("HTTP/2", SystemTime::now(), caller);
            h.request(target, &mut m, &facts);
            mutated = m;
            (&mutated, true)
        }
        None if action.rewrite.is_some() && !own.is_empty() => {
            let mut m = hl.clone();
            own.append(&mut m);
            mutated = m;
            (&mutated, true)
        }
        None => (hl, false),
    };
    let own = if own_listed { Own::default() } else { own };
    let mut respond = super::mutate::Respond::of(headers, target);
    let edited = l.log.is_some()
        && (headers.is_some_and(|h| h.has_request(target)) || action.rewrite.is_some());
    let retry = action.retry;
    // The route's rewrites: what goes upstream (mirrors and retries too) is the rewritten
    // request, as Envoy's router sends its finalized headers.
    let rewritten;
    let hl = match action.rewrite.as_deref() {
        None => hl,
        Some(rw) => {
            rewritten = rewrite_request(l, rw, target, hl);
            &rewritten
        }
    };
    // What the response's `%REQ(x)%` read: the request as it goes upstream.
    if let Some(r) = respond.as_mut() {
        r.capture(|n| {
            hl.get(n).or(match n {
                b"x-forwarded-proto" => own.scheme,
                b"x-request-id" => own.request_id.as_ref().map(|id| &id[..]),
                _ => None,
            })
        });
    }
    let mut mirrors = [0; crate::config::MIRROR_POLICIES_MAX];
    let mut mirrors_len = 0u8;
    for (slot, c) in mirrors.iter_mut().zip(action.mirrors(&l.dice)) {
        *slot = c;
        mirrors_len += 1;
    }
    // Envoy's router tells the upstream the time it will wait (the per-try timeout when it
    // is the shorter), unless none or `suppress_envoy_headers`.
    let per_try = retry.and_then(|r| r.per_try_timeout);
    let expected = match (action.timeout, per_try) {
        (Some(t), Some(p)) => Some(t.min(p)),
        (t, p) => t.or(p),
    }
    .filter(|_| l.stamp.envoy_headers)
    .map(|t| super::stamp::Decimal::new(t.as_millis() as u64));
    // After the list's fields, before the trace context (as on HTTP/1.1).
    let added = |block: &mut Vec<u8>| {
        own.encode(block);
        if let Some(ms) = &expected {
            hpack::encode_known(
                block,
                None,
                b"x-envoy-expected-rq-timeout-ms",
                ms.as_slice(),
            );
        }
    };
    let mut shadow_block = Vec::new();
    if mirrors_len > 0 {
        hl.encode_shadow(&mut shadow_block);
        added(&mut shadow_block);
    }
    let mut block = Vec::with_capacity(block_hint(hl) + OWN_BYTES_MAX);
    // Istio's metadata exchange: what a caller's sidecar sent is not forwarded (istio-proxy
    // removes it inbound, replaces it with its own outbound).
    let mx = l.istio.is_some();
    let trace = match &l.trace {
        None => {
            hl.encode_except(&mut block, |n| mx && exchange::is_header(n));
            added(&mut block);
            None
        }
        Some(t) => encode_traced(l, t, hl, (service, method), &mut block, (mx, &added)),
    };
    if let Some(i) = l.istio.as_ref().filter(|i| !i.inbound()) {
        // Outbound: this workload's metadata, for the upstream's sidecar to label the call.
        let (id, value) = i.own_exchange();
        if !value.is_empty() {
            hpack::encode_field(&mut block, exchange::HEADER_ID, id, false);
            hpack::encode_field(&mut block, exchange::HEADER, value, false);
        }
    }
    Ok(Routed {
        routes,
        cluster,
        route_ids,
        service_ids,
        deadline: timeout_us.map(|us| now + Duration::from_micros(us)),
        block,
        trace,
        retry,
        fault,
        label: l
            .labels
            .as_ref()
            .map(|k| crate::cluster::Label::of(hl.get(&k.key), hl.get(&k.force_key))),
        hash,
        cookies,
        mirrors,
        mirrors_len,
        shadow_block,
        slot,
        respond,
        edited: edited.then(|| hl.clone()),
        answer: None,
        route_name,
    })
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`: the gRPC status of a local reply's HTTP status.
/// Makes the jwt_authn filter's changes to a call's header list, in order.
pub(super) fn apply_jwt_ops(hl: &mut HeaderList, ops: &[crate::filter::jwt::Op]) {
    use crate::filter::jwt::Op;
    for op in ops {
        match op {
            Op::Remove(n) => hl.replace(n, None),
            Op::Add(n, v) => hl.append(n, v),
            Op::RemoveParam(p) => {
                let path = hl
                    .get(b":path")
                    .map(|v| crate::filter::jwt::path_without_param(v, p));
                if let Some(path) = path {
                    *hl = hl.rewritten(Some(&path), None);
                }
            }
            Op::ClearRouteCache => {}
        }
    }
}

/// A copy of request headers `hl` as route rewrite `rw` makes them for target `target`: the
/// new `:path` and `:authority`, the old ones in `x-envoy-original-path` and
/// `x-envoy-original-host` (unless the listener suppresses Envoy's headers), the old
/// `:authority` appended to `x-forwarded-host` when asked (`Rewritten::replaced_host`).
fn rewrite_request(
    l: &TripleListener,
    rw: &crate::route::Rewrite,
    target: usize,
    hl: &HeaderList,
) -> HeaderList {
    let path = hl.get(b":path").unwrap_or(b"/");
    let authority = hl.get(b":authority").unwrap_or(b"");
    let new = rw.apply(target, path, authority, |n| hl.get(n));
    let mut out = hl.rewritten(new.path.as_deref(), new.host.as_deref());
    if let Some(old) = &new.replaced_host {
        if !l.suppress_envoy_headers {
            out.replace(b"x-envoy-original-host", Some(old));
        }
        if rw.append_xfh {
            if let Some(v) = crate::route::forwarded_host(hl.get(b"x-forwarded-host"), old) {
                out.replace(b"x-forwarded-host", Some(&v));
            }
        }
    }
    if new.path.is_some() && !l.suppress_envoy_headers {
        out.replace(b"x-envoy-original-path", Some(path));
    }
    out
}

/// Encodes a traced call's headers for the upstream: the trace context it carries with
/// ringside's span as the parent (its other headers as they came), a new `traceparent` when it
/// carries none, or everything untouched when its context is not sampled. Returns the span
/// record of a sampled call.
fn encode_traced(
    l: &TripleListener,
    t: &crate::trace::ListenerTrace,
    hl: &HeaderList,
    (service, method): (&[u8], &[u8]),
    block: &mut Vec<u8>,
    (mx, added): (bool, &dyn Fn(&mut Vec<u8>)),
) -> Option<Box<super::Traced>> {
    use crate::trace::context::{self as cx, Format};
    let mut carrier = crate::trace::Carrier::default();
    for (n, v, _) in hl.iter() {
        if let Some(f) = crate::trace::Field::of(n) {
            carrier.set(f, v);
        }
    }
    let d = match t.decide(carrier.arrived()) {
        Some(d) if d.rewrites() => d,
        _ => {
            hl.encode_except(block, |n| mx && exchange::is_header(n));
            added(block);
            return None;
        }
    };
    let format = d.incoming.map_or(Format::W3c, |i| i.format);
    hl.encode_except(block, |n| {
        (mx && exchange::is_header(n))
            || match format {
                Format::W3c => n == b"traceparent",
                Format::B3Single => n == b"b3",
                Format::B3Multi => {
                    n == b"x-b3-spanid" || n == b"x-b3-parentspanid" || n == b"x-b3-sampled"
                }
            }
    });
    added(block);
    let caller = d.incoming.map(|i| i.span_id).unwrap_or_default();
    match format {
        Format::W3c => {
            let v = cx::traceparent(&d.trace_id, &d.span_id, d.sampled);
            hpack::encode_field(block, b"traceparent", &v, false);
        }
        Format::B3Single => {
            let mut v = [0u8; 68];
            let hex_len = d.incoming.map_or(32, |i| i.trace_hex_len);
            let n = cx::b3_single(&d.trace_id, hex_len, &d.span_id, d.sampled, &caller, &mut v);
            hpack::encode_field(block, b"b3", &v[..n], false);
        }
        Format::B3Multi => {
            hpack::encode_field(block, b"x-b3-spanid", &cx::span_hex(&d.span_id), false);
            hpack::encode_field(block, b"x-b3-parentspanid", &cx::span_hex(&caller), false);
            let sampled: &[u8] = if d.sampled { b"1" } else { b"0" };
            hpack::encode_field(block, b"x-b3-sampled", sampled, false);
        }
    }
    d.sampled.then(|| l.traced(d, service, method))
}

/// The request fields Envoy's connection manager adds when absent (see `route_call`).
#[derive(Default)]
struct Own<'a> {
    scheme: Option<&'a [u8]>,
    request_id: Option<[u8; super::request_id::LEN]>,
}

/// At most the bytes `Own` and `x-envoy-expected-rq-timeout-ms` add to a request block.
const OWN_BYTES_MAX: usize =
    (2 + 17 + 1 + 5) + (2 + 12 + 1 + super::request_id::LEN) + (2 + 30 + 1 + 20);

impl Own<'_> {
    fn is_empty(&self) -> bool {
        self.scheme.is_none() && self.request_id.is_none()
    }

    fn append(&self, hl: &mut HeaderList) {
        if let Some(s) = self.scheme {
            hl.append(b"x-forwarded-proto", s);
        }
        if let Some(id) = &self.request_id {
            hl.append(b"x-request-id", id);
        }
    }

    fn encode(&self, block: &mut Vec<u8>) {
        if let Some(s) = self.scheme {
            hpack::encode_known(block, None, b"x-forwarded-proto", s);
        }
        if let Some(id) = &self.request_id {
            hpack::encode_known(block, None, b"x-request-id", id);
        }
    }
}

fn block_hint(hl: &super::headers::HeaderList) -> usize {
    hl.list_bytes.min(16 * 1024)
}

impl RequestStatIds {
    fn rq_total_inc(&self, stats: &crate::stats::ShardStats) {
        stats.inc(self.rq_total);
    }
}

// === tasks ===

/// Reads frames until EOF or a connection error.
async fn read_loop<R: AsyncReadRent>(
    conn: &Rc<Conn>,
    mut r: R,
    server: bool,
    mut buf: BytesMut,
) -> Result<(), ConnError> {
    let frame_max = conn.limits.frame_max;
    let mut preface_left = server;
    // A header block being continued: (stream, END_STREAM, fragments so far).
    let mut cont: Option<(u32, bool, Vec<u8>)> = None;
    let cont_max = conn.limits.header_list_max as usize * 2 + 16 * 1024;
    loop {
        // Bytes that cannot start the preface end the connection at once (as Envoy's codec),
        // not at the preface timeout.
        let n = buf.len().min(frame::PREFACE.len());
        if preface_left && buf[..n] != frame::PREFACE[..n] {
            return Err(conn_err(
                code::PROTOCOL_ERROR,
                "not an HTTP/2 connection preface",
            ));
        }
        if preface_left && buf.len() >= frame::PREFACE.len() {
            if &buf[..frame::PREFACE.len()] != frame::PREFACE {
                return Err(conn_err(
                    code::PROTOCOL_ERROR,
                    "not an HTTP/2 connection preface",
                ));
            }
            buf.advance(frame::PREFACE.len());
            preface_left = false;
        }
        // Frames, once the caller's preface is through (server side).
        if !preface_left {
            while let Some(h) = FrameHeader::parse(&buf) {
                if h.len > frame_max {
                    return Err(conn_err(
                        code::FRAME_SIZE_ERROR,
                        format!("frame of {} bytes exceeds {frame_max}", h.len),
                    ));
                }
                let total = frame::HEADER_BYTES + h.len as usize;
                if buf.len() < total {
                    buf.reserve(total - buf.len());
                    break;
                }
                buf.advance(frame::HEADER_BYTES);
                let payload = buf.split_to(h.len as usize).freeze();
                tracing::trace!(
                    side = conn.side_name(),
                    kind = h.kind,
                    stream = h.stream,
                    flags = h.flags,
                    len = h.len,
                    "frame in"
                );
                if let Some((sid, end, mut block)) = cont.take() {
                    if h.kind != kind::CONTINUATION || h.stream != sid {
                        return Err(conn_err(code::PROTOCOL_ERROR, "header block interrupted"));
                    }
                    block.extend_from_slice(&payload);
                    if block.len() > cont_max {
                        return Err(conn_err(code::ENHANCE_YOUR_CALM, "header block too large"));
                    }
                    if h.flags & flag::END_HEADERS != 0 {
                        conn.on_headers(sid, end, &block)?;
                    } else {
                        cont = Some((sid, end, block));
                    }
                    continue;
                }
                if h.kind == kind::HEADERS {
                    let frag = frame::headers_fragment(h.flags, &payload)?;
                    let end = h.flags & flag::END_STREAM != 0;
                    if h.flags & flag::END_HEADERS != 0 {
                        conn.on_headers(h.stream, end, frag)?;
                    } else {
                        cont = Some((h.stream, end, frag.to_vec()));
                    }
                    continue;
                }
                conn.on_frame(h, payload)?;
            }
        }
        if conn.closed.get() {
            return Ok(());
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let (res, b) = crate::io::read_append(&mut r, buf).await;
        buf = b;
        conn.reads.set(conn.reads.get() + 1);
        match res {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(conn_err(code::NO_ERROR, format!("read: {e}"))),
        }
    }
}

async fn write_loop<W: AsyncWriteRent>(conn: &Rc<Conn>, mut w: W) {
    let mut spare = BytesMut::with_capacity(16 * 1024);
    loop {
        if conn.out.borrow().is_empty() {
            if conn.closing.get() {
                let _ = w.shutdown().await;
                return;
            }
            conn.out_ready.wait().await;
            continue;
        }
        let buf = std::mem::replace(&mut *conn.out.borrow_mut(), spare);
        conn.ctl_queued.set(0);
        conn.writing.set(true);
        conn.in_write.set(buf.len());
        let (res, mut buf) = w.write_all(buf).await;
        conn.writing.set(false);
        conn.in_write.set(0);
        conn.account();
        if res.is_err() {
            conn.closed.set(true);
            conn.closing.set(true);
            return;
        }
        buf.clear();
        spare = buf;
    }
}

/// Serves one caller connection (a kernel socket, or a DPDK stack's with feature `dpdk`).
/// When `drain` starts (the process drains, or a config update removed the listener) the caller
/// gets the two-step GOAWAY and the connection closes once its streams are done; at the drain's
/// deadline the final GOAWAY goes out whatever is still open, and the connection closes.
/// Returns whether the deadline cut it.
pub async fn serve<S: crate::io::Conn>(stream: S, l: Rc<TripleListener>, drain: &Drain) -> bool {
    serve_read(stream, l, drain, BytesMut::with_capacity(READ_CHUNK_BYTES)).await
}

/// [`serve`] for a connection whose first bytes were read already (`read`: they start with
/// the HTTP/2 preface): a TLS connection told from HTTP/1.1 by its first bytes.
pub async fn serve_read<S: crate::io::Conn>(
    stream: S,
    l: Rc<TripleListener>,
    drain: &Drain,
    read: BytesMut,
) -> bool {
    let _ = stream.set_nodelay(true);
    let limits = l.limits;
    let mut conn = Conn::new(Side::Down(l.clone()), limits);
    conn.xfcc = super::xfcc::Xfcc::of(&stream, &l);
    let conn = Rc::new(conn);
    // The caller's address: for logs, traces and `source_ip` hash policies.
    conn.caller_addrs.set(stream.addrs());
    if let Some(i) = &l.istio {
        conn.peer
            .set(i.peer(stream.peer_principal().as_ref().map(|p| p.as_deref())));
    }
    conn.original_dst.set(original_dst(&stream, &l));
    conn.tls.set(stream.is_tls());
    if l.rbac.is_some() || l.ext_authz.is_some() {
        *conn.rbac_peer.borrow_mut() =
            Some(crate::filter::rbac::ConnPeer::new(stream.rbac_facts()));
    }
    conn.greet(false);
    let (r, w) = stream.into_split();
    let reader_done = Notify::new();
    let reader = async {
        if let Err(e) = read_loop(&conn, r, true, read).await {
            if e.code != code::NO_ERROR {
                l.stats.inc(l.ids.protocol_error);
                tracing::debug!(listener = %l.name, code = e.code, why = %e.why, "caller connection error");
                conn.goaway_close(e.code, &e.why);
            }
        }
        conn.cancel_all();
        conn.closing.set(true);
        conn.out_ready.notify();
        reader_done.notify();
    };
    // Once the reader is done (a connection error, EOF, or the connection closed), what is
    // queued (the GOAWAY last) gets CLOSE_FLUSH_MS to be written: a caller that never reads
    // must not keep the connection and its buffers (the writer would wait on it forever).
    let flush_bound = async {
        reader_done.wait().await;
        shard::monoio::time::sleep(Duration::from_millis(CLOSE_FLUSH_MS)).await;
        tracing::debug!(listener = %l.name, "caller did not read the final frames in time: closing");
    };
    let deadlines = async {
        loop {
            if conn.closing.get() {
                return;
            }
            let next = conn.expire(Instant::now());
            conn.armed.set(next);
            match next {
                Some(t) => {
                    shard::monoio::select! {
                        _ = shard::monoio::time::sleep_until(t.into()) => {}
                        _ = conn.deadline_wake.wait() => {}
                    }
                }
                None => conn.deadline_wake.wait().await,
            }
        }
    };
    // The preface and SETTINGS must arrive in time (a silent connection holds a slot).
    let preface = async {
        shard::monoio::time::sleep(limits.preface_timeout).await;
        if conn.greeted.get() {
            std::future::pending::<()>().await;
        }
        l.stats.inc(l.ids.hardening.cx_preface_timeout);
        tracing::debug!(listener = %l.name, "no HTTP/2 preface in time: closing");
    };
    let idle = async {
        idle_for(&conn, limits.idle_timeout).await;
        l.stats.inc(l.ids.hardening.cx_idle_timeout);
        tracing::debug!(listener = %l.name, "idle timeout: closing the connection");
        conn.goaway.set(Some(conn.stream_ids.get()));
        close_flushed(&conn, "idle timeout").await;
    };
    let cut = std::cell::Cell::new(false);
    let drainer = async {
        drain.started().await;
        shard::monoio::select! {
            _ = drain_gracefully(&conn) => {}
            _ = drain.deadline() => {
                tracing::debug!(listener = %l.name, streams = conn.stream_count(), "drain timeout: closing the connection");
                cut.set(true);
            }
        }
        let last = conn.stream_ids.get();
        conn.goaway.set(Some(last));
        // Debug text unlike the first GOAWAY's: a client's error names which one it processed
        // ("draining": the graceful one, which refuses nothing; "drained": this one).
        conn.write(|o| frame::write_goaway(o, last, code::NO_ERROR, b"drained"));
        conn.closing.set(true);
        conn.out_ready.notify();
        // Let the writer flush the final GOAWAY and shut the socket down (bounded): written,
        // not only taken from the queue (a write in progress still holds it).
        flushed(&conn).await;
        conn.closed.set(true);
    };
    shard::monoio::select! {
        _ = async { shard::monoio::join!(reader, write_loop(&conn, w)) } => {}
        _ = flush_bound => {}
        _ = deadlines => {}
        _ = drainer => {}
        _ = preface => {}
        _ = idle => {}
    }
    conn.cancel_all();
    cut.get()
}

/// The original destination of a caller connection, for routes to `original_destination`
/// clusters: always on a virtual listener's (handed over by an `original_destination`
/// listener), on a bound listener's only while its routes use such a cluster (and never its own
/// address: a connection that was not intercepted would be sent back to the listener).
pub(super) fn original_dst<S: crate::io::Conn>(
    stream: &S,
    l: &TripleListener,
) -> Option<std::net::SocketAddr> {
    match l.bound {
        None => stream.original_dst(),
        Some(own) => {
            let routes = l.routes.get();
            if !routes.pools.iter().any(|p| p.lb.original_destination) {
                return None;
            }
            stream.original_dst().filter(|d| {
                !(d.port() == own.port() && (own.ip().is_unspecified() || own.ip() == d.ip()))
            })
        }
    }
}

/// The caller side of a drain up to the final GOAWAY. Two-step GOAWAY (RFC 9113 6.8): first with
/// the largest id and a PING, so streams the caller opens before it sees the GOAWAY are still
/// served. The final GOAWAY waits for the PING's ACK however long it takes (the drain's deadline
/// bounds it): until the caller has read the first GOAWAY it may start streams, and a final
/// GOAWAY that excluded them would fail them (grpcio without retries: "Stream removed (GOAWAY
/// received)"; this used to give up after 1 s, too short for a loaded client). After the ACK,
/// streams are still
/// accepted until the connection has been idle for DRAIN_QUIET_MS: a client may have streams
/// queued behind its PING ACK (grpc-core does). Then the final GOAWAY may name the last stream
/// served.
async fn drain_gracefully(conn: &Conn) {
    shard::monoio::time::sleep(Duration::from_millis(
        crate::filter::DRAIN_ANNOUNCE_DELAY_MS,
    ))
    .await;
    conn.write(|o| {
        frame::write_goaway(o, frame::STREAM_ID_MAX, code::NO_ERROR, b"draining");
        frame::write_ping(o, false, DRAIN_PING);
    });
    conn.drain_acked.wait().await;
    loop {
        if conn.stream_count() == 0 {
            shard::monoio::time::sleep(Duration::from_millis(DRAIN_QUIET_MS)).await;
            if conn.stream_count() == 0 {
                return;
            }
        }
        conn.stream_ended.wait().await;
    }
}

/// Completes once the connection has had no stream for `timeout`.
async fn idle_for(conn: &Conn, timeout: Duration) {
    loop {
        if conn.stream_count() > 0 {
            conn.went_idle.wait().await;
            continue;
        }
        let since = conn.idle_since.get();
        shard::monoio::select! {
            _ = shard::monoio::time::sleep_until((since + timeout).into()) => {}
            _ = conn.went_idle.wait() => continue,
        }
        if conn.stream_count() == 0 && conn.idle_since.get() == since {
            return;
        }
    }
}

/// Upstream side: ends shadow copies at their deadline (never completes).
async fn mirror_deadlines(conn: &Rc<Conn>) {
    loop {
        match conn.expire_mirrors(Instant::now()) {
            None => conn.mirror_wake.wait().await,
            Some(d) => shard::monoio::select! {
                _ = shard::monoio::time::sleep_until(d.into()) => {}
                _ = conn.mirror_wake.wait() => {}
            },
        }
    }
}

/// Upstream side: completes when the peer, with streams open, stayed silent for `interval`
/// and then did not answer a PING within `timeout` (a half-open connection: without this a call
/// with no deadline would wait on it forever).
async fn keepalive(conn: &Conn, interval: Duration, timeout: Duration) {
    let mut seen = conn.reads.get();
    loop {
        shard::monoio::time::sleep(interval).await;
        let now = conn.reads.get();
        if now != seen || conn.stream_count() == 0 {
            seen = now;
            continue;
        }
        conn.write(|o| frame::write_ping(o, false, KEEPALIVE_PING));
        shard::monoio::time::sleep(timeout).await;
        if conn.reads.get() == now {
            return;
        }
        seen = conn.reads.get();
    }
}

/// GOAWAY NO_ERROR, then a bounded wait for it to be written (the caller drops the socket).
async fn close_flushed(conn: &Conn, why: &str) {
    conn.goaway_close(code::NO_ERROR, why);
    flushed(conn).await;
}

/// Waits (at most CLOSE_FLUSH_MS) for what is queued to be written.
async fn flushed(conn: &Conn) {
    for _ in 0..CLOSE_FLUSH_MS / 5 {
        if conn.out.borrow().is_empty() && !conn.writing.get() {
            break;
        }
        shard::monoio::time::sleep(Duration::from_millis(5)).await;
    }
    shard::monoio::time::sleep(Duration::from_millis(5)).await;
}

/// A new upstream connection to `host` (connects in the background; frames queue meanwhile).
pub fn connect(host: &Rc<Host>, limits: H2Limits, alpn: crate::io::tls::AlpnOverride) -> Rc<Conn> {
    let mut conn = Conn::new(Side::Up(host.clone()), limits);
    conn.alpn = alpn;
    let conn = Rc::new(conn);
    conn.stream_ids.set(1);
    conn.greet(true);
    shard::monoio::spawn(run_upstream(conn.clone()));
    conn
}

async fn run_upstream(conn: Rc<Conn>) {
    let Side::Up(host) = &conn.side else {
        return;
    };
    let host = host.clone();
    let pool: Rc<Pool> = host.pool.clone();
    // Endpoints in the DPDK port's subnet are reached through this shard's DPDK stack.
    #[cfg(feature = "dpdk")]
    if let Some(stack) = crate::dpdk::upstream_stack(host.addr) {
        let connected =
            shard::monoio::time::timeout(pool.connect_timeout, stack.connect(host.addr)).await;
        return serve_upstream(conn, host, pool, connected).await;
    }
    #[cfg(feature = "fuzz")]
    if let Some(connecting) = crate::io::fuzz::connect(host.addr) {
        let connected = shard::monoio::time::timeout(pool.connect_timeout, connecting).await;
        return serve_upstream(conn, host, pool, connected).await;
    }
    // An endpoint whose transport socket has TLS: connect and handshake within the connect
    // timeout.
    if let Some(tls) = pool.lb.tls(host.index) {
        let connected = shard::monoio::time::timeout(
            pool.connect_timeout,
            crate::io::tls::connect(host.addr, &pool.lb.sources, &tls, conn.alpn.as_deref()),
        )
        .await;
        return serve_upstream(conn, host, pool, connected).await;
    }
    let connected = shard::monoio::time::timeout(
        pool.connect_timeout,
        crate::io::intercept::connect(host.addr, &pool.lb.sources),
    )
    .await;
    serve_upstream(conn, host, pool, connected).await
}

async fn serve_upstream<S: crate::io::Conn>(
    conn: Rc<Conn>,
    host: Rc<Host>,
    pool: Rc<Pool>,
    connected: Result<std::io::Result<S>, shard::monoio::time::error::Elapsed>,
) {
    let connect_timed_out = connected.is_err();
    let why = match connected {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            let _ = stream.set_keepalive(&pool.lb.keepalive);
            pool.stats.inc(pool.lb.ids.cx_total);
            pool.stats.inc(host.ids.cx_total);
            pool.stats.inc(pool.lb.ids.cx_active);
            host.down_until.set(None);
            conn.open.set(true);
            *conn.tls_peer.borrow_mut() =
                stream
                    .peer_principal()
                    .map(|p| crate::stats::istio::UpstreamTls {
                        peer: p.map(Box::from),
                        local: pool.lb.tls(host.index).and_then(|t| t.principal.clone()),
                    });
            let (r, w) = stream.into_split();
            let why = shard::monoio::select! {
                why = async {
                    match read_loop(&conn, r, false, BytesMut::with_capacity(READ_CHUNK_BYTES)).await {
                        Ok(()) => "upstream closed the connection".to_string(),
                        Err(e) => {
                            let why = format!("upstream connection error: {}", e.why);
                            if e.code != code::NO_ERROR {
                                // Its calls fail now; the GOAWAY gets a bounded time to go out
                                // (the writer runs until this arm ends).
                                conn.goaway_close(e.code, &e.why);
                                fail_upstream_streams(&conn, &why, Reset::Protocol);
                                flushed(&conn).await;
                            }
                            why
                        }
                    }
                } => why,
                _ = write_loop(&conn, w) => "upstream write failed".to_string(),
                _ = async {
                    idle_for(&conn, pool.idle_timeout).await;
                    // No await between the check and `closing`: no stream can slip in.
                    pool.stats.inc(pool.h2_ids.cx_idle_timeout);
                    close_flushed(&conn, "idle timeout").await;
                } => "upstream connection idle".to_string(),
                _ = mirror_deadlines(&conn) => unreachable!("runs until the connection ends"),
                _ = async {
                    if pool.max_connection_duration.is_zero() {
                        return std::future::pending().await;
                    }
                    shard::monoio::time::sleep(pool.max_connection_duration).await;
                    // No new stream from now on; closed once the last one ended.
                    conn.aged.set(true);
                    idle_for(&conn, Duration::ZERO).await;
                    close_flushed(&conn, "max connection duration").await;
                } => "upstream connection reached its max_connection_duration".to_string(),
                _ = async {
                    match &pool.http2_keepalive {
                        Some(k) => {
                            super::keepalive_pings(
                                k,
                                &pool.dice,
                                &conn.pongs,
                                || conn.reads.get(),
                                || conn.write(|o| frame::write_ping(o, false, KEEPALIVE_PING)),
                            )
                            .await
                        }
                        None => keepalive(&conn, pool.keepalive_interval, pool.keepalive_timeout).await,
                    }
                } => {
                    pool.stats.inc(pool.h2_ids.cx_keepalive_timeout);
                    tracing::debug!(upstream = %host.addr, "keepalive PING unanswered: closing");
                    format!("ringside: upstream {} did not answer a keepalive PING", host.addr)
                },
            };
            pool.stats.dec(pool.lb.ids.cx_active);
            why
        }
        Ok(Err(e)) => {
            pool.stats.inc(pool.lb.ids.cx_connect_fail);
            pool.stats.inc(host.ids.cx_connect_fail);
            host.mark_down();
            pool.outcome(&host, true);
            format!("ringside: upstream connect to {} failed: {e}", host.addr)
        }
        Err(_) => {
            pool.stats.inc(pool.lb.ids.cx_connect_timeout);
            host.mark_down();
            pool.outcome(&host, true);
            format!("ringside: upstream connect to {} timed out", host.addr)
        }
    };
    conn.closed.set(true);
    host.remove(&conn);
    let reset = match (conn.open.get(), connect_timed_out) {
        (true, _) => Reset::Termination,
        (false, true) => Reset::ConnectTimeout,
        (false, false) => Reset::ConnectFailure,
    };
    fail_upstream_streams(&conn, &why, reset);
    // One connection fewer under `max_connections`: a waiting call may open another.
    wake_waiting(&pool);
}

/// Room may have come up on `pool`'s connections (a stream ended, a connection closed): the
/// calls waiting for it go, oldest first, until one finds none. In a task of its own (one at
/// a time per pool), so no borrow of the connection that made room is held meanwhile.
fn wake_waiting(pool: &Rc<Pool>) {
    if pool.waking.get() || pool.waiting.borrow().is_empty() {
        return;
    }
    pool.waking.set(true);
    let pool = pool.clone();
    shard::monoio::spawn(async move {
        pool.waking.set(false);
        loop {
            let Some((w, id)) = pool.waiting.borrow_mut().pop_front() else {
                break;
            };
            let Some(down) = w.upgrade() else {
                continue;
            };
            if let Side::Down(l) = &down.side {
                down.release_delayed(l, id);
            }
            let again = pool
                .waiting
                .borrow()
                .front()
                .is_some_and(|(w2, i2)| *i2 == id && Weak::ptr_eq(w2, &w));
            if again {
                break;
            }
        }
    });
}

/// A retry waiting its back-off (`Conn::park`), in its pool's `backoff` queue.
pub struct Parked {
    due: Instant,
    /// The caller's connection and stream.
    down: Weak<Conn>,
    did: u32,
    /// The endpoint and connection of the failed try.
    host: Rc<Host>,
    avoid: Weak<Conn>,
    limits: H2Limits,
    /// The failed connection's ALPN override, the retry's too.
    alpn: crate::io::tls::AlpnOverride,
    held: Held,
    queue: VecDeque<Out>,
    no_credit: u32,
    policy: Option<crate::route::Retry>,
    label: Option<crate::cluster::Label>,
    hash: Option<u64>,
}

/// Starts the pool's back-off task unless it runs: one task per cluster per shard while
/// retries wait, sending each on when its time comes (in due order), then ending.
fn wake_backoff(pool: &Rc<Pool>) {
    pool.backoff_wake.notify();
    if pool.backing_off.replace(true) {
        return;
    }
    let pool = pool.clone();
    shard::monoio::spawn(async move {
        loop {
            let now = Instant::now();
            let next = {
                let q = pool.backoff.borrow();
                q.iter()
                    .enumerate()
                    .min_by_key(|(_, p)| p.due)
                    .map(|(i, p)| (i, p.due))
            };
            let Some((i, due)) = next else {
                break;
            };
            if due > now {
                shard::monoio::select! {
                    _ = shard::monoio::time::sleep_until(due.into()) => {}
                    _ = pool.backoff_wake.wait() => {}
                }
                continue;
            }
            let p = pool.backoff.borrow_mut().swap_remove(i);
            resume(&pool, p);
        }
        pool.backing_off.set(false);
    });
}

/// A parked retry's back-off ended: it goes to a connection the pool picks now (as an
/// immediate retry would), unless its caller's call ended meanwhile (deadline, cancel,
/// connection gone: its slot is given back); no connection: the caller gets UNAVAILABLE.
fn resume(pool: &Rc<Pool>, p: Parked) {
    let Parked {
        down: down_w,
        did,
        mut policy,
        ..
    } = p;
    let by_policy = policy.is_some();
    let give_up = || {
        if by_policy {
            pool.retries.ended();
        }
    };
    let Some(down) = down_w.upgrade() else {
        give_up();
        return;
    };
    let waiting = down.streams.borrow().get(&did).is_some_and(|s| {
        s.link.is_none() && s.delayed.is_none() && !s.sent_end && s.call.is_some()
    });
    if !waiting {
        give_up();
        return;
    }
    let avoid = p.avoid.upgrade();
    let picked = pool
        .retry_connection(
            &p.host,
            p.limits,
            &p.alpn,
            avoid.as_deref(),
            policy.as_ref(),
            p.label,
            p.hash,
        )
        .ok()
        .and_then(|up| Some((up.open_stream(down_w, did)?, up)));
    let Some((uid, up)) = picked else {
        give_up();
        down.fail_call(did, &CallError::NoHealthyUpstream);
        return;
    };
    if let (Some(r), Side::Up(nh)) = (policy.as_mut(), &up.side) {
        r.tried(nh.index);
    }
    relink(
        &down,
        did,
        &up,
        uid,
        policy,
        by_policy,
        p.held,
        p.queue,
        p.no_credit,
    );
}

/// A retried call goes on: its caller's stream `did` is linked to upstream stream `uid`, which
/// takes the retry slot (`by_policy`), the held request and what was queued behind it.
#[allow(clippy::too_many_arguments)]
fn relink(
    down: &Rc<Conn>,
    did: u32,
    up: &Rc<Conn>,
    uid: u32,
    policy: Option<crate::route::Retry>,
    by_policy: bool,
    held: Held,
    queue: VecDeque<Out>,
    no_credit: u32,
) {
    let mut try_deadline = None;
    if let Some(s) = down.streams.borrow_mut().get_mut(&did) {
        s.link = Some((Rc::downgrade(&up), uid));
        if let Some(c) = s.call.as_mut() {
            if let Side::Up(h) = &up.side {
                c.upstream = Some(h.addr);
            }
            c.retry = policy;
            try_deadline = policy
                .and_then(|r| r.policy.per_try_timeout)
                .map(|t| Instant::now() + t);
            c.try_deadline = try_deadline;
        }
    }
    if let Some(d) = try_deadline {
        if down.armed.get().is_none_or(|a| d < a) {
            down.deadline_wake.notify();
        }
    }
    if let Some(s) = up.streams.borrow_mut().get_mut(&uid) {
        s.retried = by_policy;
        // Held again only while the policy has retries left (a refused stream without
        // a policy is sent again once).
        s.held = policy.filter(|r| r.left()).map(|_| Held::default());
        s.no_credit = no_credit;
        if !held.block.is_empty() {
            s.queue.push_back(Out::Headers(held.block, held.end));
        }
        for (b, end) in held.data.into_iter().flatten() {
            s.no_credit += b.len() as u32;
            s.queue
                .push_back(Out::Data(Queued::new(b, &up.budget), end));
        }
        s.queue.extend(queue);
    }
    up.flush(uid);
}

/// Upstream side: every stream of the connection is lost (`connect_failed`: it never opened);
/// each is retried if its call's `retry_policy` says so, else its caller gets UNAVAILABLE
/// with Envoy's `reset` reason (`why` is ringside's, for the log).
fn fail_upstream_streams(conn: &Rc<Conn>, why: &str, reset: Reset) {
    let connect_failed = matches!(reset, Reset::ConnectFailure | Reset::ConnectTimeout);
    let ids: Vec<u32> = conn.streams.borrow().keys().copied().collect();
    if !ids.is_empty() {
        tracing::debug!(streams = ids.len(), why, "upstream streams lost");
    }
    let again = match connect_failed {
        true => Again::ConnectFailure,
        false => Again::Reset,
    };
    for id in ids {
        if conn.retry(id, again) == Sent::Yes {
            // A lost stream still counts against its endpoint (a failed connect was counted
            // once for the connection).
            if let (Side::Up(h), false) = (&conn.side, connect_failed) {
                h.pool.outcome(h, true);
            }
            continue;
        }
        conn.upstream_failed(id, reset);
    }
}

/// Why an upstream stream may be sent again ([`Conn::retry`]).
#[derive(Clone, Copy, Debug)]
pub(super) enum Again {
    /// Refused unprocessed (REFUSED_STREAM, or above a GOAWAY's last stream id).
    Refused,
    ConnectFailure,
    /// Reset by the upstream, or its connection lost with the stream open.
    Reset,
    /// `per_try_timeout_ms` passed without a response (retried as a `reset`).
    TryTimeout,
    /// A trailers-only answer: its `grpc-status` and HTTP `:status`.
    Answer {
        grpc: Option<u32>,
        http: Option<u32>,
    },
}

impl Again {
    pub(super) fn wanted_by(self, p: &crate::route::RetryPolicy) -> bool {
        use crate::config::RetryOn as On;
        match self {
            Again::Refused => p.on(On::RefusedStream),
            Again::ConnectFailure => p.retries_failure(true),
            Again::Reset | Again::TryTimeout => p.retries_failure(false),
            Again::Answer { grpc, http } => {
                http.is_some_and(|c| p.retries_status(c))
                    || match grpc {
                        Some(status::CANCELLED) => p.on(On::Cancelled),
                        Some(status::DEADLINE_EXCEEDED) => p.on(On::DeadlineExceeded),
                        Some(status::INTERNAL) => p.on(On::Internal),
                        Some(status::RESOURCE_EXHAUSTED) => p.on(On::ResourceExhausted),
                        Some(status::UNAVAILABLE) => p.on(On::Unavailable),
                        _ => false,
                    }
            }
        }
    }
}

/// What [`Conn::retry`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Yes,
    /// Not a failure its call retries (or nowhere to send it).
    NotRetriable,
    /// Retriable, but `num_retries` or `max_retries` said no (counted).
    Limited,
}
