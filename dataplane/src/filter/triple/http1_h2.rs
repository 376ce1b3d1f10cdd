//! HTTP/1.1 requests forwarded as HTTP/2 (a cluster's `upstream_http: http2`, or `auto` where
//! TLS settled on ALPN `h2`; docs/decisions/0010-http1.md), as Envoy's router does with an
//! HTTP/2 upstream: requests from every caller connection of the shard share one multiplexed
//! connection per endpoint ([`Mux`], kept in the cluster's pool) while it has room under the
//! peer's SETTINGS_MAX_CONCURRENT_STREAMS (then another connection is opened), each request a
//! stream ([`Stream`]). The request head becomes HEADERS (`:authority`, `:path`, `:method`,
//! `:scheme`, then the end-to-end fields), its body DATA (a chunked body's data without
//! framing) within the peer's windows; the response HEADERS become an HTTP/1.1 head (its
//! reason phrase Envoy's, `content-length` kept, else `transfer-encoding: chunked` with each
//! DATA frame a chunk; trailers dropped, as Envoy's HTTP/1.1 codec does by default).
//!
//! One task per connection reads its frames and hands each stream's to the request task
//! waiting on it (a bounded queue per stream: the stream's window, given back only as its
//! caller takes the bytes, so a caller that does not read holds back its own stream and no
//! other; the connection's window is given back as frames arrive). Request tasks queue their
//! frames in the connection's output, which the same task writes. A RST_STREAM or a GOAWAY
//! fails only the streams it names; a stream whose caller goes away is reset (CANCEL).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use codec::h2::frame::{self, code, flag, kind, setting, FrameHeader};
use codec::h2::hpack;
use rustc_hash::FxHashMap;
use shard::monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};

use super::super::error::Reset;
use super::{Body, BodyError, Chunks, Failed, Framing, Local, Mx, Pool, Request, Response};
use crate::io::READ_CHUNK_BYTES;
use crate::stats::istio::{exchange, MetaId};

/// The stream window ringside gives an upstream (SETTINGS_INITIAL_WINDOW_SIZE) unless the
/// cluster gives one (`http2_stream_window_bytes`; from xDS always, Envoy's 16 MiB by
/// default): at most this much of one response waits in ringside for a caller that reads
/// slower than its upstream writes.
const STREAM_WINDOW: u32 = frame::WINDOW_DEFAULT;
/// The connection's window unless the cluster gives one (`http2_connection_window_bytes`):
/// given back as the callers take the bytes (and at once for what no caller waits for), so
/// the streams of one connection hold at most this much in ringside together.
const CONN_WINDOW: u32 = 1 << 20;
/// Frames queued for an upstream that does not read them: beyond this the connection closes.
const OUT_BYTES_MAX: usize = super::super::conn::OUT_BYTES_MAX;
/// A response header block (HEADERS and CONTINUATIONs) larger than this breaks the
/// connection.
const BLOCK_BYTES_MAX: usize = 2 * super::HEAD_BYTES_MAX;

/// Whether, and how, a connection came up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Connecting,
    Up,
    Failed,
}

/// Why a stream got no (whole) response.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// The upstream reset it (RST_STREAM: `Remote`, or `RemoteRefused` for REFUSED_STREAM) or
    /// a GOAWAY left it out (`RemoteRefused`): a `reset`.
    Reset(Reset),
    /// The connection ended.
    Gone,
    /// The upstream broke the protocol on it (502).
    Broken,
}

impl Lost {
    fn failed(self) -> Failed {
        match self {
            Lost::Broken => Failed::Final(Local::BadGateway),
            Lost::Reset(why) => Failed::Lost(why),
            Lost::Gone => Failed::Lost(Reset::Termination),
        }
    }
}

/// What arrived on a stream, in order.
enum Ev {
    /// The response's final HEADERS (its fields in the stream's `fields`), END_STREAM.
    Head(bool),
    /// A DATA frame's data (padding removed), END_STREAM.
    Data(Bytes, bool),
    /// Trailers with END_STREAM (dropped).
    End,
}

/// One stream's state on its connection (kept for reuse when the stream ends: no allocation
/// per request once a connection has served as many at once).
#[derive(Default)]
struct Slot {
    send_window: i64,
    /// What the upstream may still send on it.
    recv_window: i64,
    /// Relayed bytes not given back as window yet.
    unacked: u32,
    events: VecDeque<Ev>,
    /// The response head's fields, flat ([`push_field`]).
    fields: Vec<u8>,
    lost: Option<Lost>,
    waker: Option<Waker>,
    head_in: bool,
    recv_end: bool,
}

impl Slot {
    fn reset(&mut self, send_window: i64, recv_window: u32) {
        self.send_window = send_window;
        self.recv_window = i64::from(recv_window);
        self.unacked = 0;
        self.events.clear();
        self.fields.clear();
        self.lost = None;
        self.waker = None;
        self.head_in = false;
        self.recv_end = false;
    }

    fn lose(&mut self, why: Lost) -> Option<Waker> {
        if self.lost.is_none() && !self.recv_end {
            self.lost = Some(why);
        }
        self.waker.take()
    }
}

struct State {
    open: Open,
    /// Takes no new stream (idle timeout, a failure, the connection ended).
    dead: bool,
    /// A GOAWAY came: no new stream.
    goaway: bool,
    /// The next stream id.
    next: u32,
    /// Streams opened and not ended.
    active: u32,
    /// Requests given this connection (opened or waiting to open).
    assigned: u32,
    /// Requests ever given it, and how many it may take in all (the cluster's
    /// `max_requests_per_connection`; `u32::MAX`: no limit).
    given: u32,
    requests_max: u32,
    /// The cluster's own limit of streams at once (`max_concurrent_streams`; `u32::MAX`:
    /// none).
    streams_max: u32,
    /// The peer's SETTINGS came (until then its stream limit is taken as unlimited, as
    /// Envoy's pool does).
    settings_seen: bool,
    peer_streams_max: u32,
    peer_window: i64,
    frame_max: u32,
    conn_window: i64,
    /// The windows ringside gives the upstream (SETTINGS_INITIAL_WINDOW_SIZE, the
    /// connection's).
    recv_stream_window: u32,
    recv_conn_window: u32,
    /// Bytes of the connection's window taken by the callers (or dropped) and not given
    /// back yet.
    recv_unacked: u32,
    /// Older than the cluster's `max_connection_duration`: no new stream, closed once the
    /// last request left.
    aged: bool,
    streams: FxHashMap<u32, Slot>,
    spare: Vec<Slot>,
    /// Tasks waiting for the connect, for room under the peer's stream limit or for
    /// connection window.
    waiters: Vec<Waker>,
    /// When the last request left it.
    idle_since: Instant,
}

impl State {
    /// Streams at once: the cluster's limit and the peer's (taken as unlimited until its
    /// SETTINGS came, as Envoy's pool does).
    fn cap(&self) -> u32 {
        match self.settings_seen {
            true => self.streams_max.min(self.peer_streams_max),
            false => self.streams_max,
        }
    }
}

/// One multiplexed HTTP/2 upstream connection of a pool (HTTP/1.1 requests).
pub struct Mux {
    pub(super) addr: SocketAddr,
    /// The endpoint's slot in its cluster.
    pub(super) slot: Option<usize>,
    tls: bool,
    alpn: crate::io::tls::AlpnOverride,
    /// Its TLS principals, for outbound listeners' Istio metrics.
    tls_peer: RefCell<Option<Box<crate::stats::istio::UpstreamTls>>>,
    istio_peer: Cell<(u64, crate::stats::istio::PeerId)>,
    st: RefCell<State>,
    out: RefCell<BytesMut>,
    out_ready: shard::Notify,
    /// Write what is queued, then close.
    closing: Cell<bool>,
    enc: RefCell<hpack::Encoder>,
    /// Scratch for one header block.
    block: RefCell<Vec<u8>>,
    /// Successful reads (the keepalive takes a peer that sends as alive).
    reads: Cell<u64>,
    /// Answers to its keepalive PINGs.
    pongs: super::super::Pongs,
}

fn wake(ws: impl IntoIterator<Item = Waker>) {
    for w in ws {
        w.wake();
    }
}

impl Mux {
    fn new(
        pool: &Pool,
        addr: SocketAddr,
        slot: Option<usize>,
        tls: bool,
        alpn: crate::io::tls::AlpnOverride,
    ) -> Mux {
        let or_max = |v: u32| if v == 0 { u32::MAX } else { v };
        let stream_window = pool.http2_stream_window.unwrap_or(STREAM_WINDOW);
        let conn_window = pool.http2_connection_window.unwrap_or(CONN_WINDOW);
        let mut out = BytesMut::with_capacity(16 * 1024);
        out.extend_from_slice(frame::PREFACE);
        // As Envoy: the stream window in SETTINGS, the connection's raised by a WINDOW_UPDATE.
        frame::write_settings(
            &mut out,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::INITIAL_WINDOW_SIZE, stream_window),
            ],
        );
        if conn_window > frame::WINDOW_DEFAULT {
            frame::write_window_update(&mut out, 0, conn_window - frame::WINDOW_DEFAULT);
        }
        Mux {
            addr,
            slot,
            tls,
            alpn,
            tls_peer: RefCell::new(None),
            istio_peer: Cell::new(Default::default()),
            st: RefCell::new(State {
                open: Open::Connecting,
                dead: false,
                goaway: false,
                next: 1,
                active: 0,
                assigned: 0,
                given: 0,
                requests_max: or_max(pool.requests_per_connection_max),
                streams_max: or_max(pool.http2_streams_max),
                settings_seen: false,
                peer_streams_max: u32::MAX,
                peer_window: i64::from(frame::WINDOW_DEFAULT),
                frame_max: frame::FRAME_BYTES_DEFAULT,
                conn_window: i64::from(frame::WINDOW_DEFAULT),
                recv_stream_window: stream_window,
                recv_conn_window: conn_window,
                recv_unacked: 0,
                aged: false,
                streams: FxHashMap::default(),
                spare: Vec::new(),
                waiters: Vec::new(),
                idle_since: Instant::now(),
            }),
            out: RefCell::new(out),
            out_ready: shard::Notify::new(),
            closing: Cell::new(false),
            enc: RefCell::new(hpack::Encoder::default()),
            block: RefCell::new(Vec::with_capacity(1024)),
            reads: Cell::new(0),
            pongs: Default::default(),
        }
    }

    /// Whether another request to `addr` (TLS as `tls`, offering `alpn`) may go on it.
    fn takes(&self, addr: SocketAddr, tls: bool, alpn: &crate::io::tls::AlpnOverride) -> bool {
        let st = self.st.borrow();
        let cap = st.cap();
        self.addr == addr
            && self.tls == tls
            && (!tls || crate::io::tls::same_alpn(&self.alpn, alpn))
            && !st.dead
            && !st.goaway
            && !st.aged
            && st.open != Open::Failed
            && st.assigned < cap
            && st.given < st.requests_max
            && u64::from(st.next) + 2 * u64::from(st.assigned) < u64::from(frame::STREAM_ID_MAX)
    }

    /// The connection's TLS principals as outbound listener `i`'s metrics label them.
    pub(super) fn istio_peer(
        &self,
        i: &crate::stats::istio::IstioListener,
    ) -> crate::stats::istio::PeerId {
        let (id, p) = self.istio_peer.get();
        if id == i.id() {
            return p;
        }
        let p = i.upstream(self.tls_peer.borrow().as_deref());
        self.istio_peer.set((i.id(), p));
        p
    }

    fn write(&self, f: impl FnOnce(&mut BytesMut)) {
        if self.st.borrow().open == Open::Failed {
            return;
        }
        let queued = {
            let mut out = self.out.borrow_mut();
            f(&mut out);
            out.len()
        };
        self.out_ready.notify();
        if queued > OUT_BYTES_MAX {
            tracing::warn!(upstream = %self.addr, "http/2 upstream does not read: closing");
            self.die(Lost::Gone);
        }
    }

    /// The connection takes no new stream and ends; its open streams are lost for `why`.
    fn die(&self, why: Lost) {
        let ws: Vec<Waker> = {
            let mut st = self.st.borrow_mut();
            st.dead = true;
            let st = &mut *st;
            let mut ws = std::mem::take(&mut st.waiters);
            ws.extend(st.streams.values_mut().filter_map(|s| s.lose(why)));
            ws
        };
        self.closing.set(true);
        self.out_ready.notify();
        wake(ws);
    }

    /// The connect's outcome (`false`: it failed), once known.
    pub(super) async fn ready(&self) -> bool {
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            match st.open {
                Open::Up => Poll::Ready(true),
                Open::Failed => Poll::Ready(false),
                Open::Connecting => {
                    st.waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn on_frame(&self, h: FrameHeader, p: Bytes) -> Result<(), Lost> {
        match h.kind {
            kind::DATA => self.on_data(h, p),
            kind::SETTINGS if h.stream != 0 => Err(Lost::Broken),
            kind::SETTINGS if h.flags & flag::ACK != 0 => Ok(()),
            kind::SETTINGS => self.on_settings(&p),
            kind::PING => {
                let data: [u8; 8] = p.as_ref().try_into().map_err(|_| Lost::Broken)?;
                match h.flags & flag::ACK {
                    0 => self.write(|o| frame::write_ping(o, true, data)),
                    _ if data == KEEPALIVE_PING => self.pongs.ack(),
                    _ => {}
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let n = i64::from(frame::window_update(&p).map_err(|_| Lost::Broken)?);
                let ws: Vec<Waker> = {
                    let mut st = self.st.borrow_mut();
                    if h.stream == 0 {
                        st.conn_window += n;
                        std::mem::take(&mut st.waiters)
                    } else {
                        match st.streams.get_mut(&h.stream) {
                            Some(s) => {
                                s.send_window += n;
                                s.waker.take().into_iter().collect()
                            }
                            None => Vec::new(),
                        }
                    }
                };
                wake(ws);
                Ok(())
            }
            kind::RST_STREAM => {
                // Envoy's reset reasons: REFUSED_STREAM is a refused stream.
                let why = match frame::rst_stream(&p).map_err(|_| Lost::Broken)? {
                    code::REFUSED_STREAM => Reset::RemoteRefused,
                    _ => Reset::Remote,
                };
                let w = self
                    .st
                    .borrow_mut()
                    .streams
                    .get_mut(&h.stream)
                    .and_then(|s| s.lose(Lost::Reset(why)));
                wake(w);
                Ok(())
            }
            kind::GOAWAY => {
                let (last, c) = frame::goaway(&p).map_err(|_| Lost::Broken)?;
                tracing::debug!(upstream = %self.addr, last, code = c, "HTTP/2 upstream GOAWAY");
                let (ws, idle) = {
                    let mut st = self.st.borrow_mut();
                    st.goaway = true;
                    let st = &mut *st;
                    let mut ws = std::mem::take(&mut st.waiters);
                    // Streams above `last` were not processed: a `reset` each (retriable).
                    ws.extend(
                        st.streams
                            .iter_mut()
                            .filter(|(id, _)| **id > last)
                            .filter_map(|(_, s)| s.lose(Lost::Reset(Reset::RemoteRefused))),
                    );
                    (ws, st.active == 0)
                };
                wake(ws);
                if idle {
                    self.closing.set(true);
                    self.out_ready.notify();
                }
                Ok(())
            }
            kind::PUSH_PROMISE => Err(Lost::Broken),
            // PING ACKs, PRIORITY, unknown kinds.
            _ => Ok(()),
        }
    }

    fn on_settings(&self, p: &[u8]) -> Result<(), Lost> {
        let ws = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            st.settings_seen = true;
            for (id, v) in frame::settings(p).map_err(|_| Lost::Broken)? {
                match id {
                    setting::INITIAL_WINDOW_SIZE if v > frame::WINDOW_LIMIT => {
                        return Err(Lost::Broken)
                    }
                    setting::INITIAL_WINDOW_SIZE => {
                        let delta = i64::from(v) - st.peer_window;
                        st.peer_window = i64::from(v);
                        for s in st.streams.values_mut() {
                            s.send_window += delta;
                        }
                    }
                    setting::MAX_FRAME_SIZE => {
                        st.frame_max = v.clamp(frame::FRAME_BYTES_DEFAULT, frame::FRAME_BYTES_LIMIT)
                    }
                    setting::MAX_CONCURRENT_STREAMS => st.peer_streams_max = v,
                    setting::HEADER_TABLE_SIZE => self.enc.borrow_mut().set_peer_table_size(v),
                    _ => {}
                }
            }
            let mut ws = std::mem::take(&mut st.waiters);
            ws.extend(st.streams.values_mut().filter_map(|s| s.waker.take()));
            ws
        };
        self.write(frame::write_settings_ack);
        wake(ws);
        Ok(())
    }

    fn on_data(&self, h: FrameHeader, p: Bytes) -> Result<(), Lost> {
        if h.stream == 0 {
            return Err(Lost::Broken);
        }
        let data = frame::data_payload(h.flags, &p).map_err(|_| Lost::Broken)?;
        let data = p.slice_ref(data);
        let end = h.flags & flag::END_STREAM != 0;
        let (credit, w) = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            // What a caller will take is given back to the connection's window as it takes
            // it (`Stream::credit`); the rest (padding, a frame no caller waits for) at once.
            let mut queued = 0;
            let w = st.streams.get_mut(&h.stream).and_then(|s| {
                if s.lost.is_some() {
                    return None;
                }
                s.recv_window -= i64::from(h.len);
                if !s.head_in || s.recv_end || s.recv_window < 0 {
                    // DATA before the response head, after its end, or beyond the window.
                    return s.lose(Lost::Broken);
                }
                // Padding counts as relayed at once.
                s.unacked += h.len - data.len() as u32;
                queued = data.len() as u32;
                s.recv_end = end;
                s.events.push_back(Ev::Data(data, end));
                s.waker.take()
            });
            (conn_credit(st, h.len - queued), w)
        };
        if credit > 0 {
            self.write(|o| frame::write_window_update(o, 0, credit));
        }
        wake(w);
        Ok(())
    }

    /// A complete header block of stream `id` (decoded here, in the connection's order, for
    /// the HPACK table, whoever it was for).
    fn on_headers(
        &self,
        dec: &mut hpack::Decoder,
        id: u32,
        end: bool,
        block: &[u8],
    ) -> Result<(), Lost> {
        if id == 0 {
            return Err(Lost::Broken);
        }
        let mut st = self.st.borrow_mut();
        let Some(s) = st.streams.get_mut(&id) else {
            // A stream already ended (cancelled): decoded for the table, dropped.
            return dec
                .decode(block, &mut |_, _, _| {})
                .map_err(|_| Lost::Broken);
        };
        if s.head_in {
            // Trailers: dropped, as Envoy's HTTP/1.1 codec does by default.
            dec.decode(block, &mut |_, _, _| {})
                .map_err(|_| Lost::Broken)?;
            let w = match end && !s.recv_end && s.lost.is_none() {
                true => {
                    s.recv_end = true;
                    s.events.push_back(Ev::End);
                    s.waker.take()
                }
                false => s.lose(Lost::Broken),
            };
            drop(st);
            wake(w);
            return Ok(());
        }
        s.fields.clear();
        let fields = &mut s.fields;
        dec.decode(block, &mut |n, v, _| push_field(fields, n, v))
            .map_err(|_| Lost::Broken)?;
        let status = flat_fields(&s.fields)
            .find(|(n, _)| *n == b":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
            .filter(|c| (100..600).contains(c));
        let w = match status {
            // Interim (1xx) heads are dropped: the caller got its 100 from ringside.
            Some(c) if c < 200 && !end => None,
            Some(c) if c >= 200 && s.lost.is_none() => {
                s.head_in = true;
                s.recv_end = end;
                s.events.push_back(Ev::Head(end));
                s.waker.take()
            }
            _ => s.lose(Lost::Broken),
        };
        drop(st);
        wake(w);
        Ok(())
    }
}

/// `n` bytes of the connection's window taken: what to give back now (in batches of half
/// the window), 0 if nothing yet.
fn conn_credit(st: &mut State, n: u32) -> u32 {
    st.recv_unacked += n;
    match st.recv_unacked >= st.recv_conn_window / 2 {
        true => std::mem::take(&mut st.recv_unacked),
        false => 0,
    }
}

/// The payload of keepalive PINGs (`http2_keepalive`).
const KEEPALIVE_PING: [u8; 8] = *b"rs-alive";

/// Appends a field to a flat list: name length, value length (u32 each), name, value.
fn push_field(b: &mut Vec<u8>, n: &[u8], v: &[u8]) {
    b.extend_from_slice(&(n.len() as u32).to_le_bytes());
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(n);
    b.extend_from_slice(v);
}

/// The (name, value) pairs of a flat list ([`push_field`]).
fn flat_fields(mut b: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::from_fn(move || {
        let len =
            |x: &[u8]| -> Option<usize> { Some(u32::from_le_bytes(x.try_into().ok()?) as usize) };
        let n = len(b.get(..4)?)?;
        let v = len(b.get(4..8)?)?;
        let name = b.get(8..8 + n)?;
        let value = b.get(8 + n..8 + n + v)?;
        b = &b[8 + n + v..];
        Some((name, value))
    })
}

/// An HTTP/2 connection of `pool` to `addr` that takes another request (TLS as `tls`,
/// offering `alpn`), connected or connecting.
pub(super) fn find(
    pool: &Pool,
    addr: SocketAddr,
    tls: bool,
    alpn: &crate::io::tls::AlpnOverride,
) -> Option<Rc<Mux>> {
    pool.http2_conns
        .borrow()
        .iter()
        .find(|m| m.takes(addr, tls, alpn))
        .cloned()
}

/// A new HTTP/2 connection of `pool` to endpoint `addr` (its slot `slot`; over TLS with `tls`,
/// offering `alpn`), in the pool at once (requests that come while it connects share it); it
/// connects in a task of its own ([`Mux::ready`]).
pub(super) fn connect(
    pool: &Rc<Pool>,
    addr: SocketAddr,
    slot: Option<usize>,
    tls: Option<std::sync::Arc<crate::io::tls::ClientTls>>,
    alpn: crate::io::tls::AlpnOverride,
) -> Rc<Mux> {
    let mux = Rc::new(Mux::new(pool, addr, slot, tls.is_some(), alpn));
    pool.http2_conns.borrow_mut().push(mux.clone());
    let (m, pool) = (mux.clone(), pool.clone());
    shard::monoio::spawn(async move {
        let dialed = super::dial(&pool, m.addr, tls.as_deref(), m.alpn.as_deref()).await;
        match dialed {
            Some((s, tls_peer)) => {
                *m.tls_peer.borrow_mut() = tls_peer;
                run(m, pool, s).await
            }
            None => {
                m.st.borrow_mut().open = Open::Failed;
                m.die(Lost::Gone);
                pool.http2_conns.borrow_mut().retain(|x| !Rc::ptr_eq(x, &m));
            }
        }
    });
    mux
}

/// An HTTP/2 connection of `pool` on `s`, connected already (TLS settled on ALPN `h2` for a
/// cluster with `upstream_http: auto`), in the pool from now on.
pub(super) fn adopt(
    pool: &Rc<Pool>,
    s: super::UpStream,
    (addr, slot, alpn): (SocketAddr, Option<usize>, crate::io::tls::AlpnOverride),
    tls_peer: Option<Box<crate::stats::istio::UpstreamTls>>,
) -> Rc<Mux> {
    let mux = Rc::new(Mux::new(pool, addr, slot, s.is_tls(), alpn));
    *mux.tls_peer.borrow_mut() = tls_peer;
    pool.http2_conns.borrow_mut().push(mux.clone());
    shard::monoio::spawn(run(mux.clone(), pool.clone(), s));
    mux
}

/// Serves a connected connection until it ends: reads its frames, writes what its streams
/// queue, closes it once it had no request for the cluster's `idle_timeout_ms`.
async fn run(mux: Rc<Mux>, pool: Rc<Pool>, s: super::UpStream) {
    let ws = {
        let mut st = mux.st.borrow_mut();
        st.open = Open::Up;
        st.idle_since = Instant::now();
        std::mem::take(&mut st.waiters)
    };
    wake(ws);
    let why = match s {
        super::UpStream::Plain(s) => serve(&mux, &pool, s).await,
        super::UpStream::Tls(s) => serve(&mux, &pool, s).await,
    };
    mux.die(why);
    pool.http2_conns
        .borrow_mut()
        .retain(|x| !Rc::ptr_eq(x, &mux));
}

async fn serve<S: Splitable>(mux: &Mux, pool: &Pool, s: S) -> Lost
where
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    let (r, w) = s.into_split();
    shard::monoio::select! {
        why = read_loop(mux, r) => why,
        _ = write_loop(mux, w) => Lost::Gone,
        _ = idle(mux, pool) => Lost::Gone,
        _ = aged(mux, pool) => Lost::Gone,
        _ = async {
            match &pool.http2_keepalive {
                Some(k) => {
                    super::super::keepalive_pings(
                        k,
                        &pool.dice,
                        &mux.pongs,
                        || mux.reads.get(),
                        || mux.write(|o| frame::write_ping(o, false, KEEPALIVE_PING)),
                    )
                    .await
                }
                None => std::future::pending().await,
            }
        } => {
            // Its requests fail as a `connection termination` reset, as Envoy's.
            pool.stats.inc(pool.h2_ids.cx_keepalive_timeout);
            tracing::debug!(upstream = %mux.addr, "keepalive PING unanswered: closing");
            Lost::Gone
        },
    }
}

/// Reads frames until the connection ends (`Gone`) or breaks (`Broken`).
async fn read_loop<R: AsyncReadRent>(mux: &Mux, mut r: R) -> Lost {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut dec = hpack::Decoder::default();
    // A header block being continued: (stream, END_STREAM, fragments so far).
    let mut cont: Option<(u32, bool, Vec<u8>)> = None;
    loop {
        while let Some(h) = FrameHeader::parse(&buf) {
            // Our SETTINGS_MAX_FRAME_SIZE is the default.
            if h.len > frame::FRAME_BYTES_DEFAULT {
                return Lost::Broken;
            }
            let total = frame::HEADER_BYTES + h.len as usize;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                break;
            }
            buf.advance(frame::HEADER_BYTES);
            let p = buf.split_to(h.len as usize).freeze();
            let done = if let Some((sid, end, mut block)) = cont.take() {
                if h.kind != kind::CONTINUATION || h.stream != sid {
                    return Lost::Broken;
                }
                block.extend_from_slice(&p);
                if block.len() > BLOCK_BYTES_MAX {
                    return Lost::Broken;
                }
                if h.flags & flag::END_HEADERS != 0 {
                    mux.on_headers(&mut dec, sid, end, &block)
                } else {
                    cont = Some((sid, end, block));
                    Ok(())
                }
            } else if h.kind == kind::HEADERS {
                let end = h.flags & flag::END_STREAM != 0;
                match frame::headers_fragment(h.flags, &p) {
                    Ok(frag) if h.flags & flag::END_HEADERS != 0 => {
                        mux.on_headers(&mut dec, h.stream, end, frag)
                    }
                    Ok(frag) => {
                        cont = Some((h.stream, end, frag.to_vec()));
                        Ok(())
                    }
                    Err(_) => Err(Lost::Broken),
                }
            } else if h.kind == kind::CONTINUATION {
                Err(Lost::Broken)
            } else {
                mux.on_frame(h, p)
            };
            if let Err(why) = done {
                return why;
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let (res, b) = crate::io::read_append(&mut r, buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return Lost::Gone,
            Ok(_) => mux.reads.set(mux.reads.get() + 1),
        }
    }
}

/// Writes what the streams queue, until closing with nothing left (or a write fails).
async fn write_loop<W: AsyncWriteRent>(mux: &Mux, mut w: W) {
    let mut spare = BytesMut::with_capacity(16 * 1024);
    loop {
        if mux.out.borrow().is_empty() {
            if mux.closing.get() {
                let _ = w.shutdown().await;
                return;
            }
            mux.out_ready.wait().await;
            continue;
        }
        let buf = std::mem::replace(&mut *mux.out.borrow_mut(), spare);
        let (res, mut buf) = w.write_all(buf).await;
        if res.is_err() {
            return;
        }
        buf.clear();
        spare = buf;
    }
}

/// Completes never; once the connection had no request for the pool's idle timeout it takes
/// no more, says GOAWAY and closes (the writer ends after the GOAWAY).
async fn idle(mux: &Mux, pool: &Pool) {
    let t = pool.idle_timeout;
    if !t.is_zero() {
        loop {
            let at = {
                let st = mux.st.borrow();
                (st.assigned == 0).then_some(st.idle_since + t)
            };
            match at {
                None => shard::monoio::time::sleep(t).await,
                Some(at) if Instant::now() >= at => break,
                Some(at) => shard::monoio::time::sleep_until(at.into()).await,
            }
        }
        // No request has it: nothing to fail.
        mux.st.borrow_mut().dead = true;
        pool.stats.inc(pool.h2_ids.cx_idle_timeout);
        mux.write(|o| frame::write_goaway(o, 0, code::NO_ERROR, b""));
        mux.closing.set(true);
        mux.out_ready.notify();
    }
    std::future::pending::<()>().await
}

/// Completes never; once the connection is as old as the cluster's
/// `max_connection_duration` it takes no new request and closes when the last one left (at
/// once without any), as Envoy's pool drains it.
async fn aged(mux: &Mux, pool: &Pool) {
    let d = pool.max_connection_duration;
    if !d.is_zero() {
        shard::monoio::time::sleep(d).await;
        let idle = {
            let mut st = mux.st.borrow_mut();
            st.aged = true;
            st.assigned == 0
        };
        if idle {
            mux.closing.set(true);
            mux.out_ready.notify();
        }
    }
    std::future::pending::<()>().await
}

/// One request's stream on a [`Mux`] (id 0 until [`Stream::open`]). Dropped before its
/// response ended (the caller went away, a timeout, a retry): reset with CANCEL.
pub struct Stream {
    mux: Rc<Mux>,
    id: u32,
    sent_end: bool,
}

impl Stream {
    /// A request given to `mux` (counted against its room until dropped).
    pub(super) fn new(mux: Rc<Mux>) -> Stream {
        {
            let mut st = mux.st.borrow_mut();
            st.assigned += 1;
            st.given += 1;
        }
        Stream {
            mux,
            id: 0,
            sent_end: false,
        }
    }

    pub(super) fn mux(&self) -> &Rc<Mux> {
        &self.mux
    }

    /// The HEADERS went out.
    pub(super) fn opened(&self) -> bool {
        self.id != 0
    }

    /// Opens the stream with the request's HEADERS once the peer's stream limit leaves room
    /// (`rid`: the `x-request-id` added when the request has none; `tail`: the trace context
    /// as HTTP/1.1 field lines, last). `end`: the request has no body. `Err` with the stream
    /// not opened: the connection takes no new stream (GOAWAY, closed) or has more requests
    /// waiting than its limit lets open: another connection may.
    pub(super) async fn open(
        &mut self,
        req: &Request,
        (scheme, mx): (&str, Mx<'_>),
        (rid, expected_ms, tail): (Option<&str>, Option<u64>, &[u8]),
        end: bool,
    ) -> Result<(), Failed> {
        let mux = self.mux.clone();
        poll_fn(|cx| {
            let mut st = mux.st.borrow_mut();
            if st.dead || st.goaway || st.next >= frame::STREAM_ID_MAX - 2 {
                return Poll::Ready(Err(Failed::Lost(Reset::RemoteRefused)));
            }
            let cap = st.cap();
            if st.active < cap {
                return Poll::Ready(Ok(()));
            }
            // Given more requests than its limit (known since) allows at once: this one goes
            // to another connection, as Envoy's pool moves them.
            if st.assigned > cap {
                return Poll::Ready(Err(Failed::Lost(Reset::RemoteRefused)));
            }
            st.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        let frame_max = {
            let mut st = mux.st.borrow_mut();
            let st = &mut *st;
            self.id = st.next;
            st.next += 2;
            st.active += 1;
            let mut slot = st.spare.pop().unwrap_or_default();
            slot.reset(st.peer_window, st.recv_stream_window);
            st.streams.insert(self.id, slot);
            st.frame_max
        };
        let mut block = mux.block.borrow_mut();
        block.clear();
        let block = &mut *block;
        let enc = &mut *mux.enc.borrow_mut();
        // Envoy's order: the pseudo-headers as its HTTP/1.1 codec set them.
        enc.encode(block, b":authority", req.authority.as_bytes(), false);
        enc.encode(block, b":path", req.path.as_bytes(), false);
        enc.encode(block, b":method", req.method.as_bytes(), false);
        enc.encode(block, b":scheme", scheme.as_bytes(), false);
        let mut proto = false;
        for (n, v) in req.fields.iter().filter(|(n, _)| !mx.drops(n)) {
            proto |= n == "x-forwarded-proto";
            enc.encode(block, n.as_bytes(), v, false);
        }
        if !proto {
            enc.encode(block, b"x-forwarded-proto", scheme.as_bytes(), false);
        }
        if let Some(id) = rid {
            enc.encode(block, b"x-request-id", id.as_bytes(), false);
        }
        // Istio's metadata exchange, as on an HTTP/1.1 upstream.
        if !matches!(mx, Mx::Off) {
            let mut mx_fields = Vec::new();
            mx.write(&mut mx_fields, true);
            for (n, v) in head_fields(&mx_fields) {
                enc.encode(block, n, v, false);
            }
        }
        if let Some(ms) = expected_ms {
            let mut digits = [0u8; 20];
            enc.encode(
                block,
                b"x-envoy-expected-rq-timeout-ms",
                decimal(ms, &mut digits),
                false,
            );
        }
        // The trace context, last, as Envoy's router injects it (HTTP/1.1 field lines).
        for (n, v) in head_fields(tail) {
            enc.encode(block, n, v, false);
        }
        let id = self.id;
        self.sent_end = end;
        mux.write(|o| frame::write_headers(o, id, block, end, frame_max));
        Ok(())
    }

    /// Sends `data` as DATA frames within the send windows (waiting for the peer's
    /// WINDOW_UPDATEs), the last with END_STREAM when `end`.
    pub(super) async fn send_data(&mut self, mut data: &[u8], end: bool) -> Result<(), Failed> {
        let (mux, id) = (self.mux.clone(), self.id);
        loop {
            let n = poll_fn(|cx| {
                let mut st = mux.st.borrow_mut();
                let st = &mut *st;
                let (conn_window, frame_max) = (st.conn_window, st.frame_max);
                let Some(s) = st.streams.get_mut(&id) else {
                    return Poll::Ready(Err(Failed::Lost(Reset::Termination)));
                };
                if let Some(l) = s.lost {
                    return Poll::Ready(Err(l.failed()));
                }
                let room = conn_window
                    .min(s.send_window)
                    .min(i64::from(frame_max))
                    .max(0) as usize;
                let n = room.min(data.len());
                if n > 0 || data.is_empty() {
                    s.send_window -= n as i64;
                    st.conn_window -= n as i64;
                    return Poll::Ready(Ok(n));
                }
                // Woken by a WINDOW_UPDATE of the stream (its waker) or of the connection.
                s.waker = Some(cx.waker().clone());
                st.waiters.push(cx.waker().clone());
                Poll::Pending
            })
            .await?;
            let last = n == data.len();
            mux.write(|o| {
                frame::write_data_header(o, id, n, last && end);
                o.extend_from_slice(&data[..n]);
            });
            data = &data[n..];
            if last {
                self.sent_end |= end;
                return Ok(());
            }
        }
    }

    /// Sends the request's body: from the caller (`Body::Unread`: relayed as it arrives, a
    /// copy kept in `hold` as [`super::relay_body`] does) or held from an earlier try.
    pub(super) async fn send_body<D: AsyncReadRent>(
        &mut self,
        (down, dbuf): (&mut D, &mut BytesMut),
        framing: Framing,
        body: &Body,
        hold: &mut Option<Vec<u8>>,
        count: &mut u64,
    ) -> Result<(), Failed> {
        if let Body::Held(b) = body {
            return match framing {
                Framing::Chunked => self.send_data(&dechunk(b), true).await,
                _ => self.send_data(b, true).await,
            };
        }
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut chunks = Chunks::default();
        let mut data = Vec::new();
        while left > 0 {
            if dbuf.is_empty() {
                dbuf.reserve(READ_CHUNK_BYTES);
                let (r, b) = crate::io::read_append(down, std::mem::take(dbuf)).await;
                *dbuf = b;
                match r {
                    Ok(0) | Err(_) => return Err(Failed::Final(Local::BadRequest)),
                    Ok(_) => {}
                }
            }
            data.clear();
            let take = match framing {
                Framing::Chunked => {
                    let (n, done) = chunks
                        .feed_data(dbuf, &mut |d| data.extend_from_slice(d))
                        .map_err(|_| Failed::Final(Local::BadRequest))?;
                    if done {
                        left = 0;
                    }
                    n
                }
                _ => {
                    let n = (dbuf.len() as u64).min(left) as usize;
                    left -= n as u64;
                    data.extend_from_slice(&dbuf[..n]);
                    n
                }
            };
            *count += data.len() as u64;
            let piece = dbuf.split_to(take);
            if let Some(h) = hold {
                match h.len() + piece.len() <= super::RETRY_BODY_BYTES_MAX {
                    true => h.extend_from_slice(&piece),
                    false => *hold = None,
                }
            }
            if !data.is_empty() || left == 0 {
                self.send_data(&data, left == 0).await?;
            }
        }
        Ok(())
    }

    /// The next thing that arrived on the stream, or why nothing more will.
    async fn next(&mut self) -> Result<Ev, Lost> {
        let (mux, id) = (self.mux.clone(), self.id);
        poll_fn(|cx| {
            let mut st = mux.st.borrow_mut();
            let Some(s) = st.streams.get_mut(&id) else {
                return Poll::Ready(Err(Lost::Gone));
            };
            if let Some(ev) = s.events.pop_front() {
                return Poll::Ready(Ok(ev));
            }
            if let Some(l) = s.lost {
                return Poll::Ready(Err(l));
            }
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Reads the response's HEADERS (interim 1xx ones were dropped) and makes its HTTP/1.1
    /// head.
    pub(super) async fn response(&mut self, req: &Request, mx: Mx<'_>) -> Result<Response, Failed> {
        match self.next().await.map_err(Lost::failed)? {
            Ev::Head(end) => {
                let st = self.mux.st.borrow();
                let fields = st.streams.get(&self.id).map_or(&[][..], |s| &s.fields[..]);
                Ok(response_head(fields, end, req, mx))
            }
            Ev::Data(..) | Ev::End => Err(Failed::Final(Local::BadGateway)),
        }
    }

    /// `n` bytes of the response were relayed: their windows back to the upstream (in
    /// batches: a quarter of the stream's, half the connection's).
    fn credit(&self, n: u32) {
        let (update, conn) = {
            let mut st = self.mux.st.borrow_mut();
            let st = &mut *st;
            let batch = st.recv_stream_window / 4;
            let update = match st.streams.get_mut(&self.id) {
                Some(s) if !s.recv_end => {
                    s.unacked += n;
                    match s.unacked >= batch {
                        true => {
                            s.recv_window += i64::from(s.unacked);
                            std::mem::take(&mut s.unacked)
                        }
                        false => 0,
                    }
                }
                _ => 0,
            };
            (update, conn_credit(st, n))
        };
        let id = self.id;
        if update > 0 || conn > 0 {
            self.mux.write(|o| {
                if conn > 0 {
                    frame::write_window_update(o, 0, conn);
                }
                if update > 0 {
                    frame::write_window_update(o, id, update);
                }
            });
        }
    }

    /// Relays the response's body (its DATA, as chunks when `framing` is chunked) to the
    /// caller until END_STREAM (trailers dropped), giving the stream's window back as the
    /// caller takes it.
    pub(super) async fn relay<W: AsyncWriteRent>(
        &mut self,
        to: &mut W,
        framing: Framing,
        ended: bool,
        count: &mut u64,
    ) -> Result<(), BodyError> {
        if ended {
            return Ok(());
        }
        let mut wbuf = BytesMut::new();
        loop {
            let ev = self.next().await.map_err(|l| match l {
                Lost::Broken => BodyError::Malformed,
                Lost::Reset(_) | Lost::Gone => BodyError::Read,
            })?;
            let (data, end) = match ev {
                Ev::Data(d, end) => (d, end),
                Ev::End => (Bytes::new(), true),
                Ev::Head(_) => return Err(BodyError::Malformed),
            };
            let n = data.len();
            *count += n as u64;
            let chunked = framing == Framing::Chunked;
            if chunked {
                if n > 0 {
                    wbuf.extend_from_slice(format_args_hex(n, &mut [0u8; 16]));
                    wbuf.extend_from_slice(b"\r\n");
                    wbuf.extend_from_slice(&data);
                    wbuf.extend_from_slice(b"\r\n");
                }
                if end {
                    wbuf.extend_from_slice(b"0\r\n\r\n");
                }
                if !wbuf.is_empty() {
                    let (r, b) = to.write_all(std::mem::take(&mut wbuf)).await;
                    r.map_err(|_| BodyError::Write)?;
                    wbuf = b;
                    wbuf.clear();
                }
            } else if n > 0 {
                let (r, _) = to.write_all(data).await;
                r.map_err(|_| BodyError::Write)?;
            }
            if n > 0 {
                self.credit(n as u32);
            }
            if end {
                return Ok(());
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mux = &self.mux;
        let mut conn = 0;
        let (ws, rst, close) = {
            let mut st = mux.st.borrow_mut();
            let st = &mut *st;
            st.assigned -= 1;
            let mut rst = false;
            if self.id != 0 {
                st.active -= 1;
                if let Some(s) = st.streams.remove(&self.id) {
                    // Not ended both ways, and not ended by the peer or with the connection:
                    // reset (a stream the upstream broke too).
                    let ended = s.recv_end && self.sent_end;
                    let gone = matches!(s.lost, Some(Lost::Reset(_) | Lost::Gone));
                    rst = !ended && !gone;
                    // What its caller will not take goes back to the connection's window.
                    let left: usize = s
                        .events
                        .iter()
                        .map(|e| match e {
                            Ev::Data(d, _) => d.len(),
                            _ => 0,
                        })
                        .sum();
                    conn = conn_credit(st, left as u32);
                    if st.spare.len() < 64 {
                        st.spare.push(s);
                    }
                }
            }
            if st.assigned == 0 {
                st.idle_since = Instant::now();
            }
            // After a GOAWAY, or its last request (`max_requests_per_connection`): closed.
            let spent = st.given >= st.requests_max && st.assigned == 0;
            if spent {
                st.dead = true;
            }
            let close = (st.goaway && st.active == 0) || spent || (st.aged && st.assigned == 0);
            (std::mem::take(&mut st.waiters), rst, close)
        };
        if rst {
            let id = self.id;
            mux.write(|o| frame::write_rst_stream(o, id, code::CANCEL));
        }
        if conn > 0 {
            mux.write(|o| frame::write_window_update(o, 0, conn));
        }
        if close {
            mux.closing.set(true);
            mux.out_ready.notify();
        }
        wake(ws);
    }
}

/// `v` in decimal, in `buf`.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// `n` in lower-case hexadecimal (a chunk size), in `buf`.
fn format_args_hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The data of a chunked body held whole (its framing dropped).
fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let _ = Chunks::default().feed_data(b, &mut |d| out.extend_from_slice(d));
    out
}

/// The (name, value) pairs of HTTP/1.1 field lines (`name: value\r\n` each).
fn head_fields(b: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    b.split(|&x| x == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r")?;
        let colon = line.iter().position(|&x| x == b':')?;
        Some((&line[..colon], line[colon + 1..].trim_ascii()))
    })
}

/// The HTTP/1.1 head of a response whose HEADERS carried `fields` (`end`: END_STREAM with
/// them), as Envoy's HTTP/1.1 codec writes it.
fn response_head(fields: &[u8], end: bool, req: &Request, mx: Mx<'_>) -> Response {
    let code = flat_fields(fields)
        .find(|(n, _)| *n == b":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
        .unwrap_or(502);
    let no_body = req.method == "HEAD" || code == 204 || code == 304;
    let length = flat_fields(fields)
        .find(|(n, _)| *n == b"content-length")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
    let framing = match (no_body, length, end) {
        (true, ..) => Framing::Length(0),
        (false, Some(n), _) => Framing::Length(n),
        (false, None, true) => Framing::Length(0),
        (false, None, false) => Framing::Chunked,
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("HTTP/1.1 {code} {}\r\n", reason(code)).as_bytes());
    let mut peer = MetaId::NONE;
    for (n, v) in flat_fields(fields) {
        if let (Mx::Outbound { istio, .. }, true) = (mx, n == exchange::HEADER) {
            // The first value, as HTTP/2's header list gives it.
            if peer == MetaId::NONE {
                peer = istio.peer_metadata(Some(v));
            }
        }
        let name = String::from_utf8_lossy(n);
        if n.starts_with(b":") || super::hop_by_hop(&name) || mx.drops(&name) {
            continue;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    let fields_end = out.len();
    mx.write(&mut out, false);
    let own = (fields_end, out.len());
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(0) if length.is_none() && code != 204 && code != 304 && !no_body => {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        _ => {}
    }
    if req.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Response {
        code,
        head: out,
        framing,
        reusable: true,
        peer,
        own,
        ended: end,
    }
}

/// The reason phrase Envoy's HTTP/1.1 codec writes for a status.
fn reason(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_held_lose_their_framing() {
        assert_eq!(
            dechunk(b"4;x=1\r\nWiki\r\n5\r\npedia\r\n0\r\nt: 1\r\n\r\n"),
            b"Wikipedia"
        );
    }

    #[test]
    fn numbers_are_written_without_allocating() {
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
        assert_eq!(decimal(15000, &mut [0; 20]), b"15000");
        assert_eq!(format_args_hex(0x1f40, &mut [0; 16]), b"1f40");
        assert_eq!(format_args_hex(7, &mut [0; 16]), b"7");
    }

    #[test]
    fn responses_are_framed_as_envoys_http1_codec_does() {
        let req = super::super::parse_request(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let flat = |fs: &[(&str, &str)]| {
            let mut b = Vec::new();
            for (n, v) in fs {
                push_field(&mut b, n.as_bytes(), v.as_bytes());
            }
            b
        };
        let r = response_head(
            &flat(&[(":status", "200"), ("x-a", "1")]),
            false,
            &req,
            Mx::Off,
        );
        assert_eq!(r.framing, Framing::Chunked);
        assert_eq!(
            r.head,
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let r = response_head(
            &flat(&[(":status", "404"), ("content-length", "3")]),
            false,
            &req,
            Mx::Off,
        );
        assert_eq!(r.framing, Framing::Length(3));
        assert_eq!(
            r.head,
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\n"
        );
        let r = response_head(&flat(&[(":status", "204")]), true, &req, Mx::Off);
        assert_eq!(r.head, b"HTTP/1.1 204 No Content\r\n\r\n");
    }
}
