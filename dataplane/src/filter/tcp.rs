//! The L4 filter: relays bytes between a downstream connection and one upstream connection.
//!
//! Each direction is a loop over one buffer of `buffer_bytes`: read, then write all of it, then
//! read again. A slow reader on one side therefore stops reads on the other side (backpressure),
//! and a connection never holds more than two buffers. EOF on one side is passed on as a
//! half-close (shutdown of the write side) while the other direction keeps flowing; an error on
//! either side ends both. The idle timer runs once per connection, not per read.
//!
//! A listener with `tls` hands the proxy the TLS connection after its handshake: the relay
//! reads and writes plaintext on that side (a half-close is a close_notify, then the socket's
//! FIN; a close_notify received reads as EOF). Such a connection stays in this process on hot
//! upgrade (its TLS session lives here) until it ends or the drain's deadline.
//!
//! Hot upgrade (handoff protocol 3): a connection whose upstream is a plaintext kernel socket
//! moves to the successor with that upstream connection once both directions are quiet (each
//! waiting in a read, nothing read for [`HANDOVER_QUIET_MS`]): both reads are cancelled (what a
//! cancelled read still brought is carried, at most [`crate::filter::HANDOVER_UNREAD_BYTES_MAX`]
//! each way) and both sockets go to the successor, which resumes relaying the same pair. Bytes
//! that arrive meanwhile wait in the sockets. A connection never quiet stays here until it ends
//! or the drain's deadline closes it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use futures_util::future::try_join;
use shard::monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use shard::monoio::net::TcpStream;
use shard::Event;

use std::os::fd::AsRawFd;

use crate::access_log::{Flags, ListenerLog, Record, NO_HEADERS};
use crate::cluster::{ShardCluster, Upstream, UpstreamStream};
use crate::config::Protocol;
use crate::filter::{
    Drain, HandedOver, ListenerStatIds, UpstreamHandedOver, HANDOVER_UNREAD_BYTES_MAX,
};
use crate::io::{Conn, StopRead};
use crate::stats::ShardStats;

/// A hot-upgrade successor takes a connection once neither direction has read anything for
/// this long (and neither holds bytes it has not written): a bulk transfer is not paused, a
/// connection between two exchanges moves.
pub const HANDOVER_QUIET_MS: u64 = 20;

/// A TCP proxy connection a hot-upgrade predecessor handed over, with the upstream connection
/// it relayed it to.
pub struct Adopted {
    pub up: TcpStream,
    pub cluster: String,
    pub upstream: SocketAddr,
    /// Read from the downstream and not yet written upstream, and the other way.
    pub to_upstream: Vec<u8>,
    pub to_downstream: Vec<u8>,
    pub started: SystemTime,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// How long a connection whose original destination is a virtual listener's may take to send
/// its first bytes before it is passed through as plain TCP (a server-first protocol).
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Everything one tcp listener's connections on one shard need (the proxy side of its context).
pub struct TcpProxy {
    pub name: String,
    /// The configured listening address (to refuse an original destination that loops back).
    pub address: SocketAddr,
    /// Connect each connection to its original destination (a cluster of type
    /// `original_destination`).
    pub original_destination: bool,
    /// The listener's cluster (refreshed by every config update).
    pub cluster: RefCell<Option<Rc<ShardCluster>>>,
    pub buffer_bytes: usize,
    pub idle_timeout: Duration,
    pub stats: ShardStats,
    pub ids: ListenerStatIds,
    /// Access logs (one line per connection), when the listener has any.
    pub log: Option<Rc<ListenerLog>>,
    /// Istio's standard metrics (`istio_tcp_*`), when the listener has `istio_metrics`.
    pub istio: Option<crate::stats::istio::IstioListener>,
    /// A virtual listener's catch-all chain (set after every config update): its connections
    /// come from a hand-off whose listener checked their original destination, which is this
    /// listener's own (virtual) address, so that is no loop.
    pub handed: Cell<bool>,
}

/// What the access log says about one connection.
struct Outcome {
    /// When the downstream connected (to this process or, moved, to a predecessor).
    start: SystemTime,
    upstream: Option<SocketAddr>,
    flags: Flags,
    bytes_received: Cell<u64>,
    bytes_sent: Cell<u64>,
    /// Handed to a virtual listener, which logs it.
    handed_off: bool,
    /// Moved to a hot-upgrade successor, which logs it when it ends.
    moved: bool,
    /// The downstream's TLS peer, for Istio's metrics (`mutual_tls` and its principal).
    peer: crate::stats::istio::PeerId,
    /// The peer's workload from Istio's in-band metadata exchange: the downstream's on an
    /// inbound listener, the upstream's on an outbound one.
    meta: crate::stats::istio::MetaId,
}

impl Outcome {
    fn new(start: SystemTime) -> Outcome {
        Outcome {
            start,
            upstream: None,
            flags: Flags::default(),
            bytes_received: Cell::new(0),
            bytes_sent: Cell::new(0),
            handed_off: false,
            moved: false,
            peer: crate::stats::istio::PeerId::NONE,
            meta: crate::stats::istio::MetaId::NONE,
        }
    }
}

/// How a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relayed {
    /// Both directions ended, an error or the idle timeout.
    Ended,
    /// The drain's deadline closed it.
    Cut,
    /// It went to a hot-upgrade successor.
    Moved,
}

/// The virtual listeners (`bind: false`) an `original_destination` listener hands connections
/// to by their original destination. Implemented by the shard (`worker`), which serves them.
pub trait Virtuals {
    /// The virtual listener that takes connections to `dst`, if one does: its protocol,
    /// whether it has a catch-all chain for the connections that do not speak it, and whether
    /// (a triple listener) it serves HTTP/1.1 too.
    fn protocol(&self, dst: SocketAddr) -> Option<(Protocol, bool, bool)>;
    /// Serves `down` on the virtual listener of `dst` (`spoken`: its first bytes fit the
    /// listener's protocol) or else on its catch-all chain's listener, admitted as an accepted
    /// connection is (closed at once over its `connections_per_shard_max`).
    fn hand_off(
        &self,
        dst: SocketAddr,
        down: TcpStream,
        spoken: bool,
    ) -> Pin<Box<dyn Future<Output = ()>>>;
}

/// Relays one connection (a kernel socket, or a TLS connection whose handshake the listener
/// completed); closes it at the deadline of a drain of its listener (ringside cannot see where
/// one request of an opaque byte stream ends, so there is no earlier point at which closing is
/// safe). Returns whether that deadline cut it.
/// `mx`: what the downstream's sidecar sent in Istio's in-band metadata exchange (its payload).
pub async fn serve<D: Conn>(
    down: D,
    l: &TcpProxy,
    virtuals: &dyn Virtuals,
    drain: &Drain,
    mx: Option<&[u8]>,
) -> bool {
    let (start, started) = (SystemTime::now(), Instant::now());
    if l.log.is_none() && l.istio.is_none() {
        return relay_connection(down, l, virtuals, drain, &mut Outcome::new(start)).await;
    }
    let (remote, local) = down.addrs();
    let mut out = Outcome::new(start);
    if let Some(istio) = l.istio.as_ref().filter(|i| i.inbound()) {
        // Inbound: the caller's mutual TLS (outbound: the upstream connection's, once it is
        // open).
        out.peer = istio.peer(down.peer_principal().as_ref().map(|p| p.as_deref()));
        out.meta = istio.peer_metadata_in_band(mx);
    }
    let cut = relay_connection(down, l, virtuals, drain, &mut out).await;
    if out.handed_off || out.moved {
        // The virtual listener it went to counts and logs it, or the successor does.
        return cut;
    }
    report(l, &out, start, started.elapsed(), (remote, local));
    cut
}

/// Relays a connection a hot-upgrade predecessor handed over: the bytes it carried first,
/// then on as [`serve`] does. Counted and logged as one connection from its first accept.
pub async fn serve_adopted(down: TcpStream, a: Adopted, l: &TcpProxy, drain: &Drain) -> bool {
    let _ = down.set_nodelay(true);
    l.stats.inc(l.ids.tcp_cx_adopted);
    let (remote, local) = (down.peer_addr().ok(), down.local_addr().ok());
    let mut out = Outcome::new(a.started);
    out.upstream = Some(a.upstream);
    out.bytes_received.set(a.bytes_received);
    out.bytes_sent.set(a.bytes_sent);
    // Counted on the cluster when this config has it (any endpoint slot of that address).
    let cluster = l.cluster.borrow().clone().filter(|c| c.name == a.cluster);
    let _active = cluster.as_ref().map(|c| c.adopt(a.upstream, &l.stats));
    let pending = [a.to_upstream, a.to_downstream];
    let relayed = relay_both(down, a.up, l, drain, false, &out, &a.cluster, pending).await;
    out.moved = relayed == Relayed::Moved;
    if !out.moved && (l.log.is_some() || l.istio.is_some()) {
        let took = SystemTime::now()
            .duration_since(a.started)
            .unwrap_or_default();
        report(l, &out, a.started, took, (remote, local));
    }
    relayed == Relayed::Cut
}

/// Istio's metrics and the access-log line of one connection that ended.
fn report(
    l: &TcpProxy,
    out: &Outcome,
    start: SystemTime,
    duration: Duration,
    (remote, local): (Option<SocketAddr>, Option<SocketAddr>),
) {
    if let Some(istio) = &l.istio {
        let cluster = l.cluster.borrow();
        let text = || out.flags.short_string();
        let o = crate::stats::istio::Outcome {
            cluster: cluster.as_ref().map(|c| (c.ids.cx_total, c.name.as_str())),
            code: 0,
            grpc: None,
            flags: (out.flags.bits(), &text),
            peer: out.peer,
            meta: out.meta,
        };
        istio.connection(&o, out.bytes_received.get(), out.bytes_sent.get());
    }
    if let Some(log) = l.log.as_ref() {
        // Borrowed for the line only (no await while held): no copy of the name per connection.
        let cluster = l.cluster.borrow();
        log.write(&Record {
            start,
            duration,
            protocol: None,
            response_code: None,
            grpc_status: None,
            flags: out.flags,
            upstream_host: out.upstream,
            upstream_cluster: cluster.as_ref().map(|c| c.name.as_str()),
            route_name: None,
            downstream_remote: remote,
            downstream_local: local,
            bytes_received: out.bytes_received.get(),
            bytes_sent: out.bytes_sent.get(),
            headers: NO_HEADERS,
            dubbo: None,
        });
    }
}

async fn relay_connection<D: Conn>(
    down: D,
    l: &TcpProxy,
    virtuals: &dyn Virtuals,
    drain: &Drain,
    out: &mut Outcome,
) -> bool {
    let _ = Conn::set_nodelay(&down, true);
    let cluster = l.cluster.borrow().clone();
    let Some(cluster) = cluster.as_ref() else {
        out.flags = Flags::NO_HEALTHY_UPSTREAM;
        return false;
    };
    if cluster.original_destination && !l.original_destination {
        return false;
    }
    // The original destination: where an original_destination cluster connects, and which
    // virtual listener takes the connection whatever the listener's own cluster (Istio's
    // REGISTRY_ONLY virtualOutbound sends the rest to BlackHoleCluster).
    let dst = if l.original_destination {
        let found = match down.socket() {
            Some(s) => crate::io::intercept::original_destination(s, l.address),
            None => Err(io::Error::from(io::ErrorKind::Unsupported).into()),
        };
        match found {
            Ok(a) => Some(a),
            Err(crate::io::intercept::OrigDstError::Loop(a)) if l.handed.get() => Some(a),
            Err(e) if cluster.original_destination => {
                tracing::debug!(listener = %l.name, error = %e, "no original destination; closing downstream");
                return false;
            }
            Err(_) => None,
        }
    } else {
        None
    };
    // Virtual listeners (bind: false) take the connections to their address whose protocol
    // they speak; listeners without any pay one empty-slice check.
    if let Some((dst, (protocol, catch_all, http1))) =
        dst.and_then(|d| Some((d, virtuals.protocol(d)?)))
    {
        // Config validation keeps tls off a listener with virtual_listeners.
        let Ok(down) = down.into_kernel() else {
            tracing::debug!(listener = %l.name, "a TLS connection is not handed to a virtual listener; closing it");
            return false;
        };
        let detected = peek_protocol(&down).await;
        l.stats.inc(detected_id(l, &detected));
        // HTTP/1.x (a request line, as Envoy's http_inspector reads it) to a triple listener
        // that serves it.
        let http1 = http1
            && detected == Detected::Other
            && inspect(&down, false, true)
                .await
                .application_protocol
                .is_some_and(|p| p != "h2c");
        let fits = match protocol {
            Protocol::Dubbo => detected == Detected::Dubbo,
            Protocol::Triple => detected == Detected::Http2 || http1,
            Protocol::Tcp => true,
        };
        if fits || catch_all {
            out.handed_off = true;
            l.stats.inc(l.ids.cx_handed_off);
            virtuals.hand_off(dst, down, fits).await;
            return false;
        }
        return connect_and_relay(down, Some(dst), true, cluster, l, drain, out).await;
    }
    connect_and_relay(down, dst, false, cluster, l, drain, out).await
}

/// Connects `cluster` (to `dst` for an original_destination one) and relays `down` to it.
/// `counted`: its protocol was detected already (else the first chunk's is, on an
/// original_destination listener).
async fn connect_and_relay<D: Conn>(
    down: D,
    dst: Option<SocketAddr>,
    counted: bool,
    cluster: &ShardCluster,
    l: &TcpProxy,
    drain: &Drain,
    out: &mut Outcome,
) -> bool {
    let connected = match dst {
        Some(dst) if cluster.original_destination => cluster.connect_to(dst, &l.stats).await,
        _ => cluster.connect(&l.stats).await,
    };
    let Upstream {
        stream: up_stream,
        guard: active,
    } = match connected {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(listener = %l.name, cluster = %cluster.name, error = %e, "no upstream; closing downstream");
            out.flags = Flags::UPSTREAM_CONNECTION_FAILURE;
            return false;
        }
    };
    out.upstream = up_stream.peer_addr();
    let first = l.original_destination && !counted;
    let pending = [Vec::new(), Vec::new()];
    let relayed = match up_stream {
        UpstreamStream::Plain(up) => {
            relay_both(down, up, l, drain, first, out, &cluster.name, pending).await
        }
        UpstreamStream::Tls(mut up) => {
            if let Some(i) = l.istio.as_ref().filter(|i| !i.inbound()) {
                // Outbound: the handshake's principals, the server's certificate
                // (`destination_principal`) and ours (`source_principal`).
                let tls = crate::io::Conn::peer_principal(&*up).map(|p| {
                    crate::stats::istio::UpstreamTls {
                        peer: p.map(Box::from),
                        local: cluster
                            .tls(active.endpoint)
                            .and_then(|t| t.principal.clone()),
                    }
                });
                out.peer = i.upstream(tls.as_ref());
            }
            // Istio's in-band metadata exchange, when the upstream's sidecar negotiated it.
            if crate::io::peer_exchange::negotiated(up.alpn_protocol().as_deref()) {
                let ours = l.stats.stats.istio_node();
                let side = crate::io::peer_exchange::Side::Client;
                match crate::io::peer_exchange::exchange(&mut up, &ours.exchange_frame, side).await
                {
                    Ok(theirs) => {
                        if let Some(i) = l.istio.as_ref().filter(|i| !i.inbound()) {
                            out.meta = i.peer_metadata_in_band(theirs.as_deref());
                        }
                    }
                    Err(e) => {
                        tracing::debug!(listener = %l.name, cluster = %cluster.name, error = %e, "istio-peer-exchange failed; closing downstream");
                        out.flags = Flags::UPSTREAM_CONNECTION_FAILURE;
                        return false;
                    }
                }
            }
            relay_both(down, *up, l, drain, first, out, &cluster.name, pending).await
        }
    };
    out.moved = relayed == Relayed::Moved;
    relayed == Relayed::Cut
}

/// One direction of a relay: whether it is waiting in a read (holding no bytes), and whether
/// it has ended.
#[derive(Default)]
struct Direction {
    reading: Cell<bool>,
    ended: Cell<bool>,
}

/// Relays both directions until both ended, the connection was idle too long, the drain
/// deadline came, or a hot-upgrade successor took the pair. `first`: detect the protocol of
/// the first chunk. `pending`: bytes to write upstream and downstream before reading (carried
/// by a predecessor). `cluster`: the upstream's cluster (named to the successor).
#[allow(clippy::too_many_arguments)]
async fn relay_both<D: Conn, U: Conn>(
    down: D,
    up: U,
    l: &TcpProxy,
    drain: &Drain,
    first: bool,
    out: &Outcome,
    cluster: &str,
    pending: [Vec<u8>; 2],
) -> Relayed {
    let last_activity = Cell::new(Instant::now());
    // Only a pair of plaintext kernel sockets can move (a TLS session lives here).
    let fds = match (down.handover_fd(), up.handover_fd(), out.upstream) {
        (Some(d), Some(u), Some(addr)) => Some((d, u, addr)),
        _ => None,
    };
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let (mut stop_down, mut stop_up) = Default::default();
    let ids = l.ids;
    let first = Cell::new(first);
    let (rx, tx) = (&out.bytes_received, &out.bytes_sent);
    let to_up = |chunk: &[u8]| {
        l.stats.add(ids.bytes_rx, chunk.len() as u64);
        rx.set(rx.get() + chunk.len() as u64);
        if first.replace(false) {
            l.stats.inc(detected_id(l, &detect(chunk)));
        }
    };
    let to_down = |chunk: &[u8]| {
        l.stats.add(ids.bytes_tx, chunk.len() as u64);
        tx.set(tx.get() + chunk.len() as u64);
    };
    let dirs = [Direction::default(), Direction::default()];
    let mut pending = pending;
    let mut movable = fds.is_some();
    loop {
        let stop = Event::new();
        let [p_up, p_down] = std::mem::take(&mut pending);
        let relays = try_join(
            relay(
                (&mut dr, &mut uw),
                l.buffer_bytes,
                &last_activity,
                &to_up,
                p_up,
                (&stop, &mut stop_down, &dirs[0]),
            ),
            relay(
                (&mut ur, &mut dw),
                l.buffer_bytes,
                &last_activity,
                &to_down,
                p_down,
                (&stop, &mut stop_up, &dirs[1]),
            ),
        );
        let r = shard::monoio::select! {
            r = relays => r,
            _ = await_quiet(drain, movable, &dirs, &last_activity, &stop) => unreachable!("await_quiet never completes"),
            _ = idle(&last_activity, l.idle_timeout) => {
                l.stats.inc(ids.cx_idle_timeout);
                return Relayed::Ended;
            }
            _ = drain.deadline() => {
                tracing::debug!(listener = %l.name, "drain timeout: closing the connection");
                return Relayed::Cut;
            }
        };
        let (a, b) = match r {
            Ok(ab) => ab,
            Err(e) => {
                tracing::debug!(listener = %l.name, error = %e, "connection ended with an error");
                return Relayed::Ended;
            }
        };
        if !stop.is_set() {
            return Relayed::Ended;
        }
        // Both reads stopped: `a` was read from the downstream, `b` from the upstream, neither
        // written yet.
        let paused_at_ns = hotswap::monotonic_ns();
        let fits = a.len() <= HANDOVER_UNREAD_BYTES_MAX && b.len() <= HANDOVER_UNREAD_BYTES_MAX;
        let to = drain.handover();
        if let (true, Some(to), Some((down_fd, up_fd, address))) = (fits, to, fds) {
            let dups = shard::sockopt::dup_socket(down_fd)
                .and_then(|d| Ok((d, shard::sockopt::dup_socket(up_fd)?)));
            let moved = match dups {
                Ok((down_dup, up_dup)) => to.hand_over(HandedOver {
                    listener: l.name.clone(),
                    fd: down_dup,
                    unread: a.to_vec(),
                    paused_at_ns,
                    upstream: Some(UpstreamHandedOver {
                        fd: up_dup,
                        cluster: cluster.to_owned(),
                        address,
                        unread: b.to_vec(),
                        started: out.start,
                        bytes_received: rx.get(),
                        bytes_sent: tx.get(),
                    }),
                }),
                Err(e) => {
                    tracing::warn!(listener = %l.name, error = %e, "hot upgrade: cannot duplicate a connection's sockets");
                    false
                }
            };
            if moved {
                l.stats.inc(ids.tcp_cx_handed_over);
                // Our descriptors close without a shutdown: the successor relays on them.
                D::close_handed_over(dr, dw);
                U::close_handed_over(ur, uw);
                return Relayed::Moved;
            }
        }
        // It stays: what the stopped reads brought is written first, then relaying goes on.
        tracing::debug!(listener = %l.name, to_upstream = a.len(), to_downstream = b.len(), "hot upgrade: connection not handed over; relaying it here");
        movable = false;
        pending = [a.to_vec(), b.to_vec()];
    }
}

/// Hot upgrade: once the drain hands connections to a successor that takes TCP ones, waits
/// until both directions wait in a read and nothing was read for [`HANDOVER_QUIET_MS`], then
/// stops both reads (`stop`). Never completes.
async fn await_quiet(
    drain: &Drain,
    movable: bool,
    dirs: &[Direction; 2],
    last_activity: &Cell<Instant>,
    stop: &Event,
) {
    let quiet = Duration::from_millis(HANDOVER_QUIET_MS);
    if movable {
        drain.started().await;
        if drain.handover().is_some_and(|to| to.takes_tcp()) {
            loop {
                let due = last_activity.get() + quiet;
                let now = Instant::now();
                let waiting = dirs.iter().all(|d| d.reading.get() && !d.ended.get());
                if now >= due && waiting {
                    stop.set();
                    break;
                }
                // Busy (a direction writing, or bytes read within the period): look again
                // when the period would end.
                let next = if now >= due { now + quiet } else { due };
                shard::monoio::time::sleep_until(next.into()).await;
            }
        }
    }
    std::future::pending::<()>().await
}

/// What the first bytes a downstream sent look like.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    /// Dubbo2: magic 0xdabb.
    Dubbo,
    /// HTTP/2 prior knowledge (Triple, gRPC): the connection preface `PRI * HTTP/2.0`.
    Http2,
    Other,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn detected_id(l: &TcpProxy, d: &Detected) -> crate::stats::StatId {
    match d {
        Detected::Dubbo => l.ids.detected_dubbo,
        Detected::Http2 => l.ids.detected_http2,
        Detected::Other => l.ids.detected_other,
    }
}

/// Whether `first` (the bytes so far) decides [`detect`]: two bytes decide Dubbo, three the
/// HTTP/2 preface (a longer prefix of it only confirms).
fn decided(first: &[u8]) -> bool {
    first.len() >= 3 || !H2_PREFACE.starts_with(first) && first != [0xda]
}

/// The protocol of a downstream's first bytes, read with MSG_PEEK (left in the socket for
/// whoever serves the connection). A downstream that sends nothing for [`DETECT_TIMEOUT`], or
/// closes first, counts as [`Detected::Other`].
async fn peek_protocol(down: &TcpStream) -> Detected {
    let deadline = Instant::now() + DETECT_TIMEOUT;
    let mut buf = [0u8; 8];
    loop {
        shard::monoio::select! {
            r = down.readable(false) => if r.is_err() { return Detected::Other },
            _ = shard::monoio::time::sleep_until(deadline.into()) => return Detected::Other,
        }
        match shard::sockopt::peek(down.as_raw_fd(), &mut buf) {
            Ok(0) => return Detected::Other,
            Ok(n) => {
                if decided(&buf[..n]) {
                    return detect(&buf[..n]);
                }
                // A prefix too short to tell ("PR", one 0xda): the rest is on its way.
                shard::monoio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Detected::Other,
        }
        if Instant::now() >= deadline {
            return Detected::Other;
        }
    }
}

/// What filter chain matching learns from a connection's first bytes (Envoy's `tls_inspector`
/// and `http_inspector`).
#[derive(Debug, PartialEq, Eq)]
pub struct Inspected {
    /// `tls` for a TLS record, else `raw_buffer`.
    pub transport: &'static str,
    /// `h2c`, `http/1.1` or `http/1.0` of a plaintext connection.
    pub application_protocol: Option<&'static str>,
    /// A TLS connection's ClientHello: its SNI and ALPN protocols.
    pub hello: Option<ClientHello>,
}

/// What chain matching reads of a TLS ClientHello (Envoy's `tls_inspector`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub server_name: Vec<u8>,
    pub alpn: Vec<String>,
}

/// The SNI and ALPN of the ClientHello in the TLS record `rec` (header included); `None`
/// when it is not a ClientHello or is cut short.
pub fn parse_client_hello(rec: &[u8]) -> Option<ClientHello> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (h, t) = (b.get(..n)?, b.get(n..)?);
        *b = t;
        Some(h)
    }
    fn len(b: &mut &[u8], n: usize) -> Option<usize> {
        Some(take(b, n)?.iter().fold(0, |a, x| a << 8 | *x as usize))
    }
    let mut b = rec.get(5..)?;
    if take(&mut b, 1)? != [1] {
        return None;
    }
    let body = len(&mut b, 3)?;
    let mut b = b.get(..body.min(b.len()))?;
    take(&mut b, 2 + 32)?;
    let sid = len(&mut b, 1)?;
    take(&mut b, sid)?;
    let suites = len(&mut b, 2)?;
    take(&mut b, suites)?;
    let comp = len(&mut b, 1)?;
    take(&mut b, comp)?;
    let mut out = ClientHello::default();
    if b.is_empty() {
        return Some(out);
    }
    let ext_len = len(&mut b, 2)?;
    let mut exts = take(&mut b, ext_len)?;
    while !exts.is_empty() {
        let ty = len(&mut exts, 2)?;
        let n = len(&mut exts, 2)?;
        let mut data = take(&mut exts, n)?;
        match ty {
            0 => {
                let list = len(&mut data, 2)?;
                let mut list = take(&mut data, list)?;
                while !list.is_empty() {
                    let kind = len(&mut list, 1)?;
                    let n = len(&mut list, 2)?;
                    let name = take(&mut list, n)?;
                    if kind == 0 {
                        out.server_name = name.to_ascii_lowercase();
                    }
                }
            }
            16 => {
                let list = len(&mut data, 2)?;
                let mut list = take(&mut data, list)?;
                while !list.is_empty() {
                    let n = len(&mut list, 1)?;
                    let p = take(&mut list, n)?;
                    out.alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(out)
}

/// Reads (peeks) the whole first TLS record, up to its 16 KiB, then parses the ClientHello in
/// it. One buffer per TLS connection, only for chain matching.
async fn peek_tls_record(down: &TcpStream, header: &[u8], deadline: Instant) -> Inspected {
    let tls = |hello| Inspected {
        transport: "tls",
        application_protocol: None,
        hello,
    };
    let want = 5 + (usize::from(header[3]) << 8 | usize::from(header[4])).min(16 * 1024 + 256);
    let mut rec = vec![0u8; want];
    loop {
        match shard::sockopt::peek(down.as_raw_fd(), &mut rec) {
            Ok(n) if n == want => return tls(parse_client_hello(&rec)),
            Ok(0) => return tls(None),
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return tls(None),
            _ => {}
        }
        if Instant::now() >= deadline {
            return tls(None);
        }
        shard::monoio::select! {
            r = down.readable(false) => if r.is_err() { return tls(None) },
            _ = shard::monoio::time::sleep_until(deadline.into()) => return tls(None),
        }
        shard::monoio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Bytes of an HTTP/1 request line read to find its version; a longer line counts as no
/// HTTP.
pub const REQUEST_LINE_BYTES_MAX: usize = 1024;

/// Reads the first bytes (with MSG_PEEK, left for whoever serves the connection) until they
/// decide what `tls` and `http` inspection asks, or [`DETECT_TIMEOUT`] passes (then: what is
/// known, as Envoy's inspectors with `continue_on_listener_filters_timeout`).
pub async fn inspect(down: &TcpStream, tls: bool, http: bool) -> Inspected {
    let deadline = Instant::now() + DETECT_TIMEOUT;
    let mut buf = [0u8; REQUEST_LINE_BYTES_MAX];
    let mut seen = 0;
    loop {
        let (verdict, done) = classify(&buf[..seen], tls, http);
        if verdict.transport == "tls" && seen >= 5 {
            return peek_tls_record(down, &buf[..5], deadline).await;
        }
        if done && verdict.transport == "tls" {
            // Wait for the record header.
        } else if done || Instant::now() >= deadline {
            return verdict;
        }
        shard::monoio::select! {
            r = down.readable(false) => if r.is_err() { return verdict },
            _ = shard::monoio::time::sleep_until(deadline.into()) => return verdict,
        }
        match shard::sockopt::peek(down.as_raw_fd(), &mut buf) {
            Ok(0) => return classify(&buf[..seen], tls, http).0,
            Ok(n) if n == seen => {
                // Readable with nothing new (the rest is on its way).
                shard::monoio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(n) => seen = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return classify(&buf[..seen], tls, http).0,
        }
    }
}

/// What `first` tells, and whether more bytes could change it.
fn classify(first: &[u8], tls: bool, http: bool) -> (Inspected, bool) {
    let raw = |app| Inspected {
        transport: "raw_buffer",
        application_protocol: app,
        hello: None,
    };
    if first.is_empty() {
        return (raw(None), !tls && !http);
    }
    if tls && first[0] == 0x16 {
        if first.len() < 2 {
            return (raw(None), false);
        }
        if first[1] == 0x03 {
            let t = Inspected {
                transport: "tls",
                application_protocol: None,
                hello: None,
            };
            return (t, true);
        }
    }
    if !http {
        return (raw(None), true);
    }
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] == H2_PREFACE[..n] {
        return (raw(Some("h2c")), n == H2_PREFACE.len());
    }
    // An HTTP/1 request line: METHOD SP target SP HTTP/1.x CRLF.
    let method = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method == 0 || (method < first.len() && first[method] != b' ') {
        return (raw(None), true);
    }
    let Some(end) = first.windows(2).position(|w| w == b"\r\n") else {
        return (raw(None), first.len() >= REQUEST_LINE_BYTES_MAX);
    };
    let line = &first[..end];
    let app = if line.ends_with(b" HTTP/1.1") {
        Some("http/1.1")
    } else if line.ends_with(b" HTTP/1.0") {
        Some("http/1.0")
    } else {
        None
    };
    (raw(app), true)
}

/// Classifies a connection by its first chunk (at least the bytes that decide it: a chunk
/// shorter than the preface counts as HTTP/2 when it is a prefix of it).
pub fn detect(first: &[u8]) -> Detected {
    if first.len() >= 2 && first[..2] == [0xda, 0xbb] {
        Detected::Dubbo
    } else if first.len() >= 3
        && H2_PREFACE.starts_with(&first[..first.len().min(H2_PREFACE.len())])
    {
        Detected::Http2
    } else {
        Detected::Other
    }
}

/// Copies `from` to `to` until EOF, handing each chunk to `inspect` (counting, protocol
/// detection) before writing it; `pending` (carried by a hot-upgrade predecessor, or read by a
/// stopped read that did not lead to a hand-over) is written first. Ends early once `stop` is
/// set while it reads, with the bytes that read brought (not written, not inspected); an
/// ended direction stays ended.
async fn relay<R: StopRead, W: AsyncWriteRent>(
    (from, to): (&mut R, &mut W),
    buffer_bytes: usize,
    last_activity: &Cell<Instant>,
    inspect: &impl Fn(&[u8]),
    pending: Vec<u8>,
    (stop, stopper, dir): (&Event, &mut R::Stopper, &Direction),
) -> io::Result<BytesMut> {
    if dir.ended.get() {
        return Ok(BytesMut::new());
    }
    if !pending.is_empty() {
        inspect(&pending);
        let (r, _) = to.write_all(pending).await;
        r?;
    }
    let mut buf = BytesMut::with_capacity(buffer_bytes);
    loop {
        buf.clear();
        dir.reading.set(true);
        let (r, b, _) = from.read_until(buf, stop, stopper).await;
        dir.reading.set(false);
        buf = b;
        if stop.is_set() {
            // A cancelled read is no error, and an EOF read now is read again by whoever
            // relays next (a FIN stays readable).
            return match r {
                Ok(_) => Ok(buf),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(buf),
                Err(e) => Err(e),
            };
        }
        let n = r?;
        if n == 0 {
            // Half-close: the peer finished sending; tell the other side, keep the reverse
            // direction open.
            dir.ended.set(true);
            let _ = to.shutdown().await;
            return Ok(BytesMut::new());
        }
        last_activity.set(Instant::now());
        inspect(&buf[..n]);
        let (r, b) = to.write_all(buf).await;
        buf = b;
        r?;
    }
}

async fn idle(last_activity: &Cell<Instant>, timeout: Duration) {
    loop {
        let deadline = last_activity.get() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        shard::monoio::time::sleep_until(deadline.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dubbo_http2_and_other() {
        assert_eq!(detect(&[0xda, 0xbb, 0xc2, 0]), Detected::Dubbo);
        assert_eq!(detect(H2_PREFACE), Detected::Http2);
        assert_eq!(detect(b"PRI * HT"), Detected::Http2);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detected::Other);
        assert_eq!(detect(b"PRX"), Detected::Other);
        assert_eq!(detect(&[0xda]), Detected::Other);
    }

    #[test]
    fn inspection_finds_tls_h2c_and_http1_as_envoys_inspectors() {
        let c = |b: &[u8]| classify(b, true, true);
        let app = |b: &[u8]| c(b).0.application_protocol;
        assert_eq!(c(&[0x16, 0x03, 0x01]).0.transport, "tls");
        assert_eq!(c(&[0x16]).1, false, "one byte does not decide");
        assert_eq!(
            classify(&[0x16, 0x03], false, true).0.transport,
            "raw_buffer"
        );
        assert_eq!(app(H2_PREFACE), Some("h2c"));
        assert_eq!(c(b"PRI * HT").1, false);
        assert_eq!(app(b"GET /x HTTP/1.1\r\nHost: a\r\n"), Some("http/1.1"));
        assert_eq!(app(b"POST / HTTP/1.0\r\n"), Some("http/1.0"));
        assert_eq!(c(b"GET /x HTT").1, false);
        assert_eq!(app(b"SSH-2.0-x\r\n"), None);
        assert_eq!(
            c(&[0xda, 0xbb]),
            (
                Inspected {
                    transport: "raw_buffer",
                    application_protocol: None,
                    hello: None
                },
                true
            )
        );
        assert_eq!(c(b"").1, false);
        assert_eq!(classify(b"", false, false).1, true);
    }

    /// A ClientHello as a client sends it: SNI `Svc.NS` and ALPN istio-peer-exchange, istio.
    pub fn client_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let mut ext = Vec::new();
        let name = sni.as_bytes();
        if !name.is_empty() {
            ext.extend_from_slice(&[0, 0]);
            ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
            ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
            ext.extend_from_slice(name);
        }
        if !alpn.is_empty() {
            let list: Vec<u8> = alpn
                .iter()
                .flat_map(|p| {
                    let mut v = vec![p.len() as u8];
                    v.extend_from_slice(p.as_bytes());
                    v
                })
                .collect();
            ext.extend_from_slice(&[0, 16]);
            ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
            ext.extend_from_slice(&list);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn client_hello_gives_sni_and_alpn() {
        let h =
            parse_client_hello(&client_hello("Svc.NS", &["istio-peer-exchange", "istio"])).unwrap();
        assert_eq!(h.server_name, b"svc.ns");
        assert_eq!(h.alpn, ["istio-peer-exchange", "istio"]);
        let h = parse_client_hello(&client_hello("", &[])).unwrap();
        assert_eq!(h, ClientHello::default());
        let cut = client_hello("a", &["h2"]);
        assert_eq!(parse_client_hello(&cut[..cut.len() - 3]), None);
    }

    #[test]
    fn short_prefixes_wait_for_more_bytes() {
        assert!(!decided(b"P") && !decided(b"PR") && !decided(&[0xda]));
        assert!(decided(b"PRI") && decided(&[0xda, 0xbb]) && decided(b"G"));
        assert!(decided(&[0xda, 0x00]) && decided(b"PX"));
    }
}
