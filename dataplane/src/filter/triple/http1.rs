//! HTTP/1.1 on a triple listener that accepts it (`triple.http1`: Envoy's
//! `http_connection_manager` with `codec_type: AUTO`, as istiod sends every HTTP chain): a
//! plaintext connection whose first bytes are not the HTTP/2 preface is served here, one
//! request at a time. Each request is routed by Host and path with the listener's own routes
//! (virtual hosts by authority, as for HTTP/2) and forwarded over HTTP/1.1 on a keep-alive
//! connection to the picked endpoint of the route's cluster (an idle one of the pool when
//! there is one, one request at a time per connection). Bodies stream through one bounded
//! buffer per direction (Content-Length, chunked, or until close for a response), never
//! whole. Local answers and limits follow Envoy (docs/decisions/0010-http1.md): a head over
//! [`HEAD_BYTES_MAX`] or [`HEADERS_MAX`] fields 431, malformed 400 (then close), no route
//! 404, no endpoint or a failed connect 503, the route's timeout 504. WebSocket upgrades are
//! tunnelled once the upstream answers 101; other upgrades 403.
//!
//! Connections that speak HTTP/2 never reach this module: the listener peeks at their first
//! bytes once ([`sniff`]) and hands them to `conn::serve` as before.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use shard::monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use shard::monoio::net::TcpStream;

use super::conn::{Again, RETRY_BODY_BYTES_MAX};
use super::error::Reset;
use super::headers::HeaderList;
use super::http1_tls::UpStream;
use super::router::RequestView;
use super::{Logged, Pool, TripleListener};
use crate::access_log::{Flags, Part};
use crate::cluster::{Availability, ShardCluster};
use crate::filter::Drain;
use crate::io::READ_CHUNK_BYTES;
use crate::stats::istio::{exchange, IstioListener, MetaId};

#[path = "http1_h2.rs"]
mod h2;

pub use h2::Mux as H2Conn;

/// A request head (request line and fields) larger than this is answered 431 (Envoy's
/// `max_request_headers_kb` default, 60 KiB). The response head from an upstream is held to
/// the same bound (502 beyond it).
pub const HEAD_BYTES_MAX: usize = 60 * 1024;
/// Header fields per request head; more: 431 (Envoy's `max_request_headers_count` default).
pub const HEADERS_MAX: usize = 100;
/// Once a request's first byte arrived, its whole head must arrive within this long, else
/// the connection is closed (a peer that never finishes a head holds no slot for long).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive upstream connections kept per cluster and shard; beyond it they close.
pub const IDLE_UPSTREAM_MAX: usize = 64;
/// Endpoints tried for one request when connecting fails (nothing was sent yet).
const CONNECT_ATTEMPTS_MAX: usize = 3;
/// A head not complete yet is checked as far as it goes while it is at most this long (a
/// request line that cannot be HTTP is refused at once, as Envoy's parser does, instead of
/// waiting for a blank line that may never come); a longer one only once it is complete.
const PARTIAL_CHECK_BYTES_MAX: usize = 4096;
/// A chunk-size line (with extensions) or a trailer line longer than this is malformed.
const CHUNK_LINE_MAX: usize = 4096;
/// The HTTP/2 connection preface's first bytes: a connection starting with them is HTTP/2.
const H2_START: &[u8] = b"PRI * HTTP/2.0";
/// The interim response to `Expect: 100-continue`, as Envoy's HTTP/1.1 codec writes it (no
/// fields); static, so answering it allocates nothing.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What a connection's first bytes speak.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    Http2,
    Http1,
    /// Nothing within the timeout, or the peer closed first.
    Nothing,
}

/// Peeks (MSG_PEEK: the bytes stay for whoever serves the connection) until the first bytes
/// tell HTTP/2's preface from anything else, at most `timeout`.
pub async fn sniff(s: &TcpStream, timeout: Duration) -> Sniffed {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 16];
    loop {
        shard::monoio::select! {
            r = s.readable(false) => if r.is_err() { return Sniffed::Nothing },
            _ = shard::monoio::time::sleep_until(deadline.into()) => return Sniffed::Nothing,
        }
        match shard::sockopt::peek(s.as_raw_fd(), &mut buf) {
            Ok(0) => return Sniffed::Nothing,
            Ok(n) => {
                let k = n.min(H2_START.len());
                if buf[..k] != H2_START[..k] {
                    return Sniffed::Http1;
                }
                if k == H2_START.len() {
                    return Sniffed::Http2;
                }
                // A prefix of the preface: the rest is on its way.
                shard::monoio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Sniffed::Nothing,
        }
        if Instant::now() >= deadline {
            return Sniffed::Nothing;
        }
    }
}

/// How a message's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// A response without length: its body ends when the upstream closes.
    UntilClose,
}

/// A request head, copied out of the read buffer.
struct Request {
    method: String,
    /// The path (origin form; an absolute-form target's path part).
    path: String,
    authority: String,
    /// Fields as received (names lower-cased), `host` left out.
    fields: Vec<(String, Vec<u8>)>,
    framing: Framing,
    /// The caller asked to close after this exchange (`Connection: close`, or HTTP/1.0
    /// without `keep-alive`).
    close: bool,
    /// `Expect: 100-continue` (any case): answered `100 Continue` on arrival
    /// ([`CONTINUE`]) and not forwarded.
    expect_continue: bool,
    /// `Upgrade: websocket` with `Connection: upgrade`.
    websocket: bool,
    /// Another upgrade (not h2c, which is dropped as Envoy does).
    other_upgrade: bool,
}

/// Why a request ends in a local answer (its status and body, as Envoy answers).
#[derive(Debug)]
enum Local {
    BadRequest,
    TooLarge,
    /// A body over ext_authz's `max_request_bytes` (without `allow_partial_message`).
    PayloadTooLarge,
    /// An HTTP/1.0 request.
    UpgradeRequired,
    /// The route's fault aborts it with this HTTP status.
    FaultAbort(u16),
    Forbidden(&'static str),
    NoRoute,
    /// A local rate limit had no token: its HTTP status.
    RateLimited(u16),
    /// The route's `max_concurrent_requests` requests are in flight.
    ConcurrencyLimited,
    NoHealthyUpstream,
    /// Connecting failed; `retried`: after a retry (Envoy's "retried and the latest").
    ConnectFailure {
        retried: bool,
    },
    /// The upstream closed or reset the connection or stream before the response head
    /// (`why`: Envoy's reset reason).
    UpstreamReset {
        retried: bool,
        why: Reset,
    },
    Timeout,
    BadGateway,
    /// The listener's jwt_authn filter fails it (401 or 403, Envoy's body and
    /// `www-authenticate`).
    Jwt {
        code: u16,
        body: &'static str,
        www_authenticate: Option<Vec<u8>>,
    },
    /// The external authorization failed: `status_on_error`, no body.
    AuthzError(u16),
    /// The external authorizer denied it: its status, headers and body.
    AuthzDenied {
        code: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: String,
    },
    /// The route's own answer (`redirect`, `direct_response`).
    Direct {
        code: u16,
        body: Vec<u8>,
        location: Option<Vec<u8>>,
    },
}

impl Local {
    fn status(&self) -> (u16, &'static str, &'static str) {
        match self {
            Local::BadRequest => (400, "Bad Request", "Bad Request"),
            Local::TooLarge => (
                431,
                "Request Header Fields Too Large",
                "Request Header Fields Too Large",
            ),
            Local::UpgradeRequired => (426, "Upgrade Required", "Upgrade Required"),
            Local::PayloadTooLarge => (413, "Payload Too Large", "Payload Too Large"),
            Local::FaultAbort(code) => (*code, reason(*code), "fault filter abort"),
            Local::Forbidden(body) => (403, "Forbidden", body),
            Local::NoRoute => (404, "Not Found", ""),
            Local::RateLimited(code) => (*code, reason(*code), "local_rate_limited"),
            Local::ConcurrencyLimited => (503, "Service Unavailable", "concurrency_limited"),
            Local::NoHealthyUpstream => (503, "Service Unavailable", "no healthy upstream"),
            Local::ConnectFailure { retried } => (
                503,
                "Service Unavailable",
                Reset::ConnectFailure.body(*retried),
            ),
            Local::UpstreamReset { retried, why } => {
                (503, "Service Unavailable", why.body(*retried))
            }
            Local::Timeout => (504, "Gateway Timeout", "upstream request timeout"),
            Local::BadGateway => (502, "Bad Gateway", "upstream sent a malformed response"),
            // Its body and location: see `local`.
            Local::Direct { code, .. } => (*code, reason(*code), ""),
            Local::Jwt { code, body, .. } => (*code, reason(*code), body),
            Local::AuthzError(code) => (*code, reason(*code), ""),
            // Its body: see `local`.
            Local::AuthzDenied { code, .. } => (*code, reason(*code), ""),
        }
    }

    /// The response flags Envoy logs with this answer.
    fn flags(&self) -> Flags {
        match self {
            Local::BadRequest | Local::TooLarge | Local::UpgradeRequired => {
                Flags::DOWNSTREAM_PROTOCOL_ERROR
            }
            Local::Forbidden(_)
            | Local::Direct { .. }
            | Local::Jwt { .. }
            | Local::PayloadTooLarge => Flags::NONE,
            Local::FaultAbort(_) => Flags::FAULT_INJECTED,
            Local::AuthzError(_) | Local::AuthzDenied { .. } => {
                Flags::UNAUTHORIZED_EXTERNAL_SERVICE
            }
            Local::NoRoute => Flags::NO_ROUTE_FOUND,
            Local::RateLimited(_) | Local::ConcurrencyLimited => Flags::RATE_LIMITED,
            Local::NoHealthyUpstream => Flags::NO_HEALTHY_UPSTREAM,
            Local::ConnectFailure { .. } => Flags::UPSTREAM_CONNECTION_FAILURE,
            Local::UpstreamReset { why, .. } => super::error::CallError::Reset(*why).flags(),
            Local::Timeout => Flags::UPSTREAM_REQUEST_TIMEOUT,
            Local::BadGateway => Flags::UPSTREAM_PROTOCOL_ERROR,
        }
    }
}

/// The reason phrase of a status ringside may answer with itself.
fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// What one exchange leaves the connection with.
enum Next {
    KeepAlive,
    Close,
    /// The upstream switched to WebSocket: relay bytes both ways (with what it sent ahead).
    Tunnel(Up, BytesMut, Option<InFlight>),
}

/// Serves one HTTP/1.x caller connection (its first bytes are not HTTP/2's preface) until it
/// closes, asks to, breaks the protocol, sits idle for the listener's `idle_timeout_ms`, or
/// its listener drains (closed after the exchange in flight; at the drain's deadline in any
/// case). Returns whether the drain's deadline cut it.
pub async fn serve<C: crate::io::Conn>(down: C, l: Rc<TripleListener>, drain: &Drain) -> bool {
    serve_read(down, l, drain, BytesMut::with_capacity(READ_CHUNK_BYTES)).await
}

/// [`serve`] for a connection whose first bytes were read already (`read`; a TLS connection
/// told from HTTP/2 by them, [`super::http1_tls::serve_tls`]).
pub async fn serve_read<C: crate::io::Conn>(
    down: C,
    l: Rc<TripleListener>,
    drain: &Drain,
    read: BytesMut,
) -> bool {
    let _ = down.set_nodelay(true);
    let dst = super::conn::original_dst(&down, &l);
    let peer = (l.rbac.is_some() || l.ext_authz.is_some())
        .then(|| crate::filter::rbac::ConnPeer::new(crate::io::Conn::rbac_facts(&down)));
    let scheme = if down.is_tls() { "https" } else { "http" };
    // The caller's address: for logs, traces and `source_ip` hash policies.
    let caller = down.addrs();
    let istio_peer = match &l.istio {
        Some(i) => i.peer(down.peer_principal().as_ref().map(|p| p.as_deref())),
        None => crate::stats::istio::PeerId::NONE,
    };
    let xfcc = super::xfcc::Xfcc::of(&down, &l);
    let mut c = Down {
        xfcc,
        scheme,
        s: down,
        buf: read,
        dst,
        peer,
        hl: HeaderList::default(),
        caller,
        istio_peer,
        seen: Seen::default(),
        hash: None,
        alpn: l.alpn.http11.clone(),
        alpn2: l.alpn.http2.clone(),
        respond: None,
        direct_delay: None,
        authz_response: Vec::new(),
    };
    loop {
        let next = shard::monoio::select! {
            n = exchange(&mut c, &l) => Some(n),
            _ = drain.deadline() => None,
        };
        let Some(next) = next else {
            // Cut in the middle of an exchange: logged as the caller's connection lost.
            c.seen.finish(&l, c.caller, c.istio_peer);
            return true;
        };
        match next {
            Next::KeepAlive if !drain.is_started() => c.seen.finish(&l, c.caller, c.istio_peer),
            Next::Tunnel(up, rbuf, active) => {
                // Logged when the tunnel closes, as Envoy logs an upgraded stream.
                let mut seen = std::mem::take(&mut c.seen);
                let (caller, istio_peer) = (c.caller, c.istio_peer);
                let cut = shard::monoio::select! {
                    _ = tunnel(c, up, rbuf) => false,
                    _ = drain.deadline() => true,
                };
                // The upgraded request was in flight to its cluster until now (Envoy's
                // upstream stream lasts as long as the tunnel).
                drop(active);
                seen.finish(&l, caller, istio_peer);
                return cut;
            }
            _ => {
                c.seen.finish(&l, c.caller, c.istio_peer);
                return false;
            }
        }
    }
}

/// One exchange as its access-log line and Istio's metrics see it (the record taken from the
/// listener's pool when it logs or counts: no allocation per request once warm).
#[derive(Default)]
struct Seen {
    /// The record ([`TripleListener::capture`]), from the request head on.
    lg: Option<Box<Logged>>,
    started: Option<Instant>,
    /// The response status sent (0: none).
    code: u16,
    flags: Flags,
    /// Body bytes received from the caller and sent to it (a chunked body's data only, as
    /// Envoy counts them).
    rx: u64,
    tx: u64,
    upstream: Option<SocketAddr>,
    cluster: Option<Rc<ShardCluster>>,
    /// The request's span, when it is sampled.
    trace: Option<Box<Traced>>,
}

/// A sampled HTTP/1.1 request's span as far as it is known before the response.
struct Traced {
    decision: crate::trace::Decision,
    start_unix_ns: u64,
    scheme: &'static str,
    authority: String,
    path: String,
    method: String,
    request_id: Vec<u8>,
    user_agent: Vec<u8>,
    downstream_cluster: Vec<u8>,
}

impl Seen {
    /// Starts an exchange whose request head is `hl` (empty: none could be parsed).
    fn begin(&mut self, l: &TripleListener, hl: &HeaderList) {
        self.lg = l.capture(hl);
        self.started = Some(Instant::now());
        self.code = 0;
        self.flags = Flags::NONE;
        self.rx = 0;
        self.tx = 0;
        self.upstream = None;
        self.cluster = None;
        self.trace = None;
    }

    /// Writes the exchange's line and counts it (when it began and the listener logs or
    /// counts).
    fn finish(
        &mut self,
        l: &TripleListener,
        caller: (Option<SocketAddr>, Option<SocketAddr>),
        peer: crate::stats::istio::PeerId,
    ) {
        let cluster = self.cluster.take();
        if let (Some(t), Some(tr)) = (&l.trace, self.trace.take()) {
            let flags = match self.code {
                0 => self.flags | Flags::DOWNSTREAM_CONNECTION_TERMINATION,
                _ => self.flags,
            };
            let flags = flags.short_string();
            let d = &tr.decision;
            t.finish_http(
                d,
                &crate::trace::otlp::HttpSpan {
                    trace_id: &d.trace_id,
                    span_id: &d.span_id,
                    parent: d.parent.as_ref(),
                    kind: t.kind(),
                    start_unix_ns: tr.start_unix_ns,
                    end_unix_ns: crate::trace::unix_ns(std::time::SystemTime::now()),
                    node: &t.node,
                    request_id: &tr.request_id,
                    scheme: tr.scheme,
                    authority: tr.authority.as_bytes(),
                    path: tr.path.as_bytes(),
                    method: tr.method.as_bytes(),
                    downstream_cluster: &tr.downstream_cluster,
                    user_agent: &tr.user_agent,
                    peer: caller.0,
                    request_size: self.rx,
                    response_size: self.tx,
                    cluster: cluster.as_ref().map(|c| c.name.as_str()),
                    status: self.code,
                    flags: &flags,
                },
            );
        }
        let (Some(mut lg), Some(started)) = (self.lg.take(), self.started) else {
            return;
        };
        lg.bytes_received = self.rx;
        lg.bytes_sent = self.tx;
        lg.flags = match self.code {
            0 => self.flags | Flags::DOWNSTREAM_CONNECTION_TERMINATION,
            _ => self.flags,
        };
        lg.upstream = self.upstream;
        lg.cluster = cluster;
        l.log_exchange(lg, started, u32::from(self.code), caller, peer);
    }
}

/// The caller's connection: the socket, what was read and not used yet (the start of the
/// next request, when pipelined), what routing needs of the connection.
struct Down<C> {
    s: C,
    /// `https` on TLS, else `http` (`:scheme`, and `x-forwarded-proto` when absent).
    scheme: &'static str,
    buf: BytesMut,
    dst: Option<SocketAddr>,
    peer: Option<crate::filter::rbac::ConnPeer>,
    /// The request's headers as routes, rbac and logs read them (reused per request).
    hl: HeaderList,
    /// The caller's (remote, local) address, when the listener logs.
    caller: (Option<SocketAddr>, Option<SocketAddr>),
    /// The caller's mutual TLS as Istio's metrics label it.
    istio_peer: crate::stats::istio::PeerId,
    /// The exchange in flight.
    seen: Seen,
    /// The request's hash by its route's `hash_policy` (RING_HASH / MAGLEV clusters).
    hash: Option<u64>,
    /// The listener's ALPN override for HTTP/1.1 upstreams (`istio.alpn`).
    alpn: crate::io::tls::AlpnOverride,
    /// Its override for HTTP/2 upstreams (`upstream_http: http2`).
    alpn2: crate::io::tls::AlpnOverride,
    /// What its requests' `x-forwarded-client-cert` becomes (set once per connection).
    xfcc: super::xfcc::Xfcc,
    /// The response mutations of the exchange's route, which ringside's own answer gets
    /// once the request is routed (as Envoy's local replies do).
    respond: Option<super::mutate::Respond>,
    /// A direct route's fault delay (and abort after it) that holds its answer.
    direct_delay: Option<(Duration, Option<u16>)>,
    /// An OK external authorization's headers for the exchange's answer (empty: none).
    authz_response: Vec<(crate::filter::ext_authz::HeaderAction, Vec<u8>, Vec<u8>)>,
}

/// One request and its response.
async fn exchange<C: crate::io::Conn>(c: &mut Down<C>, l: &TripleListener) -> Next {
    let head = match read_head(&mut c.s, &mut c.buf, l.limits.idle_timeout, true).await {
        Ok(n) => n,
        Err(HeadError::Closed) => return Next::Close,
        Err(e) => {
            let (id, e) = match e {
                HeadError::TooLarge => (l.ids.rq_too_large, Local::TooLarge),
                _ => (l.ids.rq_bad, Local::BadRequest),
            };
            l.stats.inc(id);
            c.hl.clear();
            c.seen.begin(l, &c.hl);
            return local(c, l, &e, true).await;
        }
    };
    l.stats.inc(l.ids.rq_total);
    let req = parse_request(&c.buf[..head]);
    c.buf.advance(head);
    let mut req = match req {
        Ok(r) => r,
        Err(e) => {
            let id = match e {
                Local::TooLarge => l.ids.rq_too_large,
                _ => l.ids.rq_bad,
            };
            l.stats.inc(id);
            c.hl.clear();
            c.seen.begin(l, &c.hl);
            return local(c, l, &e, true).await;
        }
    };
    c.respond = None;
    c.direct_delay = None;
    c.authz_response.clear();
    // Before it is logged, authorized and routed, as Envoy's connection manager does.
    c.xfcc.apply_fields(&mut req.fields);
    header_list(&mut c.hl, &req, c.scheme);
    c.seen.begin(l, &c.hl);
    if req.expect_continue {
        // Envoy's connection manager answers the expectation itself as the head arrives
        // (`proxy_100_continue` off, its default and istiod's), before its filters and the
        // route: whatever answer comes after, and whether or not a body follows.
        let (r, _) = c.s.write_all(CONTINUE).await;
        if r.is_err() {
            return Next::Close;
        }
    }
    if let (Some(i), Some(lg)) = (l.istio.as_ref().filter(|i| i.inbound()), &mut c.seen.lg) {
        // istio-proxy's inbound `peer_metadata`, as on HTTP/2: the caller's sidecar names its
        // workload.
        let value = c.hl.get(exchange::HEADER);
        lg.mx.id_received = c.hl.get(exchange::HEADER_ID).is_some();
        lg.mx.value_received = value.is_some();
        lg.mx.peer = i.peer_metadata(value);
    }
    // One `x-request-id` for every try, HTTP/1.1 or HTTP/2, and the span's.
    let rid = (!req.fields.iter().any(|(n, _)| n == "x-request-id")).then(|| request_id(l));
    // The trace context going upstream, when it is rewritten.
    let mut tail = Vec::new();
    if let Some(t) = &l.trace {
        c.seen.trace = trace_request(t, &mut req, c.scheme, rid.as_deref(), &mut tail);
    }
    let started = Instant::now();
    // The body, unread, would be taken for the next request.
    let close = req.close || req.framing != Framing::Length(0);
    // `_held` (a named binding, not `_`) keeps the request's concurrency place until the
    // exchange ends with this function.
    let Routed {
        pool,
        timeout,
        retry,
        delay,
        mirrors,
        _slot: _held,
        mutations,
        mut respond,
        cookies,
    } = match authorize(c, l, &mut req, rid.as_deref())
        .await
        .and_then(|payload| route(c, l, &mut req, payload))
    {
        Ok(r) => r,
        Err(e) => {
            if let Some((d, abort)) = c.direct_delay.take() {
                // A direct route's fault delay, then its abort (without the route's
                // mutations: Envoy finalizes a local reply only with a route that forwards)
                // or its answer.
                fault_delay(c, l, d).await;
                if let Some(code) = abort {
                    l.stats.inc(l.ids.fault.aborts_injected);
                    c.respond = None;
                    return local(c, l, &Local::FaultAbort(code), close).await;
                }
            }
            return local(c, l, &e, close).await;
        }
    };
    if let Some((h, target)) = &mutations {
        let facts = super::mutate::Facts::request("HTTP/1.1", SystemTime::now(), c.caller);
        let mut f = super::mutate::Http1Request {
            fields: &mut req.fields,
            authority: &req.authority,
            path: &req.path,
            method: &req.method,
        };
        h.request(*target, &mut f, &facts);
    }
    // The access log reads the request as routing left it (Envoy's router edits it in place).
    if let Some(lg) = c.seen.lg.as_mut() {
        let rewritten = c.hl.get(b":path") != Some(req.path.as_bytes())
            || c.hl.get(b":authority") != Some(req.authority.as_bytes());
        if mutations.is_some() || rewritten {
            let hl = &c.hl;
            let get = |n: &[u8]| match n {
                b":path" => Some(req.path.as_bytes()),
                b":authority" => Some(req.authority.as_bytes()),
                n if n.starts_with(b":") => hl.get(n),
                n => req
                    .fields
                    .iter()
                    .find(|(k, _)| k.as_bytes() == n)
                    .map(|(_, v)| &v[..]),
            };
            lg.keep_routed_request(get);
        }
    }
    // What the response's `%REQ(x)%` read: the request as it goes upstream.
    if let Some(r) = respond.as_mut() {
        let hl = &c.hl;
        let field = |n: &[u8]| {
            req.fields
                .iter()
                .find(|(k, _)| k.as_bytes() == n)
                .map(|(_, v)| &v[..])
        };
        r.capture(|n| match n {
            b":path" => Some(req.path.as_bytes()),
            b":authority" => Some(req.authority.as_bytes()),
            b":method" => Some(req.method.as_bytes()),
            n if n.starts_with(b":") => hl.get(n),
            b"x-forwarded-proto" => field(n).or(Some(c.scheme.as_bytes())),
            b"x-request-id" => field(n).or(rid.as_deref().map(str::as_bytes)),
            n => field(n),
        });
    }
    // Its local replies from here on read the same.
    c.respond = respond.clone();
    let mut started = started;
    if let Some((d, abort)) = delay {
        // The route's fault delay holds the request (its body waits in the socket); the route's
        // timeout runs from its end, as Envoy's router sees the request only then.
        fault_delay(c, l, d).await;
        if let Some(code) = abort {
            l.stats.inc(l.ids.fault.aborts_injected);
            return local(c, l, &Local::FaultAbort(code), close).await;
        }
        started = Instant::now();
    }
    let deadline = timeout.map(|t| started + t);
    // Envoy's router tells the upstream the time it will wait (the per-try timeout when it
    // is the shorter), unless none or `suppress_envoy_headers`.
    let per_try = retry.and_then(|r| r.per_try_timeout);
    let expected = match (timeout, per_try) {
        (Some(t), Some(p)) => Some(t.min(p)),
        (t, p) => t.or(p),
    }
    .map(|t| t.as_millis() as u64)
    .filter(|_| l.stamp.envoy_headers);
    let added = (deadline, expected, rid, tail.as_slice());
    let out = forward(
        c,
        l,
        &req,
        &pool,
        added,
        retry,
        (&mirrors, respond.as_ref(), cookies.as_ref()),
    )
    .await;
    l.stats
        .record_us(l.ids.rq_time, started.elapsed().as_micros() as u64);
    // Envoy's router counts the cluster's `upstream_rq_timeout` whenever the route's timeout
    // fires, also once the response head went out (a body still coming).
    let timed_out = || {
        l.stats.inc(l.ids.rq_timeout);
        pool.stats.inc(pool.ids.rq_timeout);
    };
    match out {
        Ok(next) => next,
        // The response head went out: the connection can only close.
        Err((e, None)) => {
            if matches!(e, Local::Timeout) {
                timed_out();
            }
            Next::Close
        }
        Err((e, Some(body_read))) => {
            match e {
                Local::Timeout => timed_out(),
                Local::NoHealthyUpstream => l.stats.inc(l.ids.rq_no_healthy_upstream),
                _ => {}
            }
            // A body not read to its end would be taken for the next request: close.
            local(c, l, &e, req.close || !body_read).await
        }
    }
}

/// A route's fault delay `d` on the exchange: counted, flagged, waited out.
async fn fault_delay<C>(c: &mut Down<C>, l: &TripleListener, d: Duration) {
    l.stats.inc(l.ids.fault.delays_injected);
    l.stats.inc(l.ids.fault.active);
    l.faults_active.set(l.faults_active.get() + 1);
    c.seen.flags = c.seen.flags | Flags::DELAY_INJECTED;
    shard::monoio::time::sleep(d).await;
    l.stats.dec(l.ids.fault.active);
    l.faults_active.set(l.faults_active.get().saturating_sub(1));
}

/// Reads the trace context `req` carries and decides as the listener's tracing says. When
/// the context is rewritten (ringside's span as the parent; a new `traceparent` when it
/// carries none), its fields leave `req` and come back as `tail` (HTTP/1.1 field lines), which
/// goes upstream after every field ringside adds, as Envoy's router injects the context last
/// (W3C: `traceparent`, then `tracestate` as it came, empty when none did, as Envoy's
/// OpenTelemetry tracer). Left as it came when not rewritten. The span record of a sampled
/// request (`rid`: the `x-request-id` ringside adds, if any).
fn trace_request(
    t: &crate::trace::ListenerTrace,
    req: &mut Request,
    scheme: &'static str,
    rid: Option<&str>,
    tail: &mut Vec<u8>,
) -> Option<Box<Traced>> {
    use crate::trace::context::{self as cx, Format};
    let mut carrier = crate::trace::Carrier::default();
    for (n, v) in &req.fields {
        if let Some(f) = crate::trace::Field::of(n.as_bytes()) {
            carrier.set(f, v);
        }
    }
    let d = match t.decide(carrier.arrived()) {
        Some(d) if d.rewrites() => d,
        _ => return None,
    };
    let format = d.incoming.map_or(Format::W3c, |i| i.format);
    let caller = d.incoming.map(|i| i.span_id).unwrap_or_default();
    let mut line = |name: &[u8], v: &[u8]| {
        tail.extend_from_slice(name);
        tail.extend_from_slice(b": ");
        tail.extend_from_slice(v);
        tail.extend_from_slice(b"\r\n");
    };
    match format {
        Format::W3c => {
            let state = req
                .fields
                .iter()
                .find(|(n, _)| n == "tracestate")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            req.fields
                .retain(|(n, _)| n != "traceparent" && n != "tracestate");
            line(
                b"traceparent",
                &cx::traceparent(&d.trace_id, &d.span_id, d.sampled),
            );
            line(b"tracestate", &state);
        }
        Format::B3Single => {
            req.fields.retain(|(n, _)| n != "b3");
            let mut v = [0u8; 68];
            let hex_len = d.incoming.map_or(32, |i| i.trace_hex_len);
            let n = cx::b3_single(&d.trace_id, hex_len, &d.span_id, d.sampled, &caller, &mut v);
            line(b"b3", &v[..n]);
        }
        Format::B3Multi => {
            req.fields.retain(|(n, _)| {
                n != "x-b3-spanid" && n != "x-b3-parentspanid" && n != "x-b3-sampled"
            });
            line(b"x-b3-spanid", &cx::span_hex(&d.span_id));
            line(b"x-b3-parentspanid", &cx::span_hex(&caller));
            line(b"x-b3-sampled", if d.sampled { b"1" } else { b"0" });
        }
    }
    if !d.sampled {
        return None;
    }
    let field = |name: &str| {
        req.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    Some(Box::new(Traced {
        decision: d,
        start_unix_ns: crate::trace::unix_ns(std::time::SystemTime::now()),
        scheme,
        authority: req.authority.clone(),
        path: req.path.clone(),
        method: req.method.clone(),
        request_id: field("x-request-id")
            .or_else(|| rid.map(|r| r.as_bytes().to_vec()))
            .unwrap_or_default(),
        user_agent: field("user-agent").unwrap_or_else(|| b"-".to_vec()),
        downstream_cluster: field("x-envoy-downstream-service-cluster")
            .unwrap_or_else(|| b"-".to_vec()),
    }))
}

/// The listener's jwt_authn filter on the request: its changes made (to the fields going
/// upstream and to the header list routes and rbac read), its verified payloads returned with
/// what a denial after it routes by ([`super::AsCame`]); or Envoy's answer.
fn authenticate<C>(
    c: &mut Down<C>,
    l: &TripleListener,
    req: &mut Request,
) -> Result<
    (
        Option<serde_json::Map<String, serde_json::Value>>,
        Option<super::AsCame>,
    ),
    Local,
> {
    use crate::filter::jwt::Op;
    let Some(j) = &l.jwt else {
        return Ok((None, None));
    };
    match j.check(&c.hl, &l.stats) {
        Ok(p) => {
            let denials_follow = l.rbac.is_some() || l.ext_authz.is_some();
            let as_came = super::AsCame::keep(&c.hl, &p, denials_follow);
            super::conn::apply_jwt_ops(&mut c.hl, &p.ops);
            for op in &p.ops {
                match op {
                    Op::Remove(n) => req.fields.retain(|(k, _)| k.as_bytes() != &**n),
                    Op::Add(n, v) => req
                        .fields
                        .push((String::from_utf8_lossy(n).into_owned(), v.clone())),
                    Op::RemoveParam(name) => {
                        let path =
                            crate::filter::jwt::path_without_param(req.path.as_bytes(), name);
                        req.path = String::from_utf8_lossy(&path).into_owned();
                    }
                    Op::ClearRouteCache => {}
                }
            }
            Ok(((!p.metadata.is_empty()).then_some(p.metadata), as_came))
        }
        Err(f) => {
            let www = f.www_authenticate(
                c.hl.get(b"x-forwarded-proto")
                    .unwrap_or(c.scheme.as_bytes()),
                req.authority.as_bytes(),
                req.path.as_bytes(),
            );
            Err(Local::Jwt {
                code: f.status.http_code(),
                body: f.body(),
                www_authenticate: www,
            })
        }
    }
}

/// Where a request goes, as its route says.
struct Routed {
    pool: Rc<Pool>,
    timeout: Option<Duration>,
    retry: Option<crate::route::RetryPolicy>,
    /// The route's fault delay for this request, and the abort after it (HTTP status).
    delay: Option<(Duration, Option<u16>)>,
    /// The shadow clusters its route's `request_mirror_policies` picked for it.
    mirrors: [Option<Rc<Pool>>; crate::config::MIRROR_POLICIES_MAX],
    /// Its place under its route's `max_concurrent_requests`, held while this lives.
    _slot: Option<crate::filter::ratelimit::Slot>,
    /// Its route's request header mutations and the weighted target it goes to.
    mutations: Option<(std::sync::Arc<super::mutate::RouteHeaders>, usize)>,
    /// Its route's response header mutations.
    respond: Option<super::mutate::Respond>,
    /// The cookies its hash generated (its response sets them).
    cookies: Option<super::hash::Generated>,
}

/// The shadow pools a forwarded request is mirrored to, and what its answer gets besides the
/// upstream's: its route's response mutations, the cookies its hash generated.
type Answer<'a> = (
    &'a [Option<Rc<Pool>>],
    Option<&'a super::mutate::Respond>,
    Option<&'a super::hash::Generated>,
);

/// The listener's authorization filters on a request, in their order: jwt_authn, the rbac
/// filters before ext_authz, ext_authz, jwt_authn when istiod's order puts it after
/// ext_authz, the rbac filters after it; the jwt payloads routes may match on.
async fn authorize<C: crate::io::Conn>(
    c: &mut Down<C>,
    l: &TripleListener,
    req: &mut Request,
    rid: Option<&str>,
) -> Result<Option<crate::filter::jwt::Metadata>, Local> {
    if req.other_upgrade {
        return Err(Local::Forbidden("upgrade not allowed"));
    }
    // The jwt_authn filter, then rbac (ext_authz after the rbac filters before it), as the
    // listener orders them (istiod's: ext_authz and its shadow rbac filter first).
    let x = l.ext_authz.as_ref();
    let early = x.is_some_and(|x| x.before_jwt_authn);
    let mut payload = None;
    let mut as_came = None;
    if !early {
        (payload, as_came) = match authenticate(c, l, req) {
            Ok(p) => p,
            Err(e) => {
                respond_before_routing(c, l, req, None, None);
                return Err(e);
            }
        };
    }
    let split = x.map_or(usize::MAX, |x| x.after_rbac);
    let mut policy = None;
    if let (Some(rbac), Some(peer)) = (&l.rbac, &c.peer) {
        let call = super::headers::CallView {
            headers: &c.hl,
            metadata: payload.as_ref(),
        };
        let (allowed, p) = rbac.allows_range(
            &peer.with(&call),
            &l.stats,
            0..split,
            x.and_then(|x| x.shadow_prefix()),
        );
        if !allowed {
            respond_before_routing(c, l, req, payload.as_ref(), as_came.as_ref());
            return Err(Local::Forbidden("RBAC: access denied"));
        }
        policy = p.map(str::to_owned);
    }
    let Some(x) = x else {
        return Ok(payload);
    };
    if x.applies(policy.as_deref()) {
        if let Err(e) = check(c, l, req, x, rid).await {
            respond_before_routing(c, l, req, payload.as_ref(), as_came.as_ref());
            return Err(e);
        }
    } else {
        l.stats.inc(x.ids.disabled);
    }
    if early {
        (payload, as_came) = match authenticate(c, l, req) {
            Ok(p) => p,
            Err(e) => {
                respond_before_routing(c, l, req, None, None);
                return Err(e);
            }
        };
    }
    if let (Some(rbac), Some(peer)) = (&l.rbac, &c.peer) {
        let call = super::headers::CallView {
            headers: &c.hl,
            metadata: payload.as_ref(),
        };
        if !rbac
            .allows_range(&peer.with(&call), &l.stats, split..usize::MAX, None)
            .0
        {
            respond_before_routing(c, l, req, payload.as_ref(), as_came.as_ref());
            return Err(Local::Forbidden("RBAC: access denied"));
        }
    }
    Ok(payload)
}

/// The listener's ext_authz filter on a request it applies to, as on HTTP/2: the authorizer
/// (gRPC's Check over the listener's HTTP/2 pool of its cluster, or an HTTP service over
/// HTTP/1.1) asked while the request waits (its body unread in the socket), within the
/// filter's timeout. OK: its header changes made to the request (its response headers kept
/// for the answer); denied: answered with its status, headers and body; an error: answered
/// `status_on_error` unless `failure_mode_allow`.
async fn check<C: crate::io::Conn>(
    c: &mut Down<C>,
    l: &TripleListener,
    req: &mut Request,
    x: &crate::filter::ext_authz::ExtAuthz,
    rid: Option<&str>,
) -> Result<(), Local> {
    use crate::filter::ext_authz::{Answer, CheckError};
    // What Envoy's connection manager adds before its filters run: the authorizer sees them
    // (and they go upstream as they are).
    if c.hl.get(b"x-forwarded-proto").is_none() {
        c.hl.append(b"x-forwarded-proto", c.scheme.as_bytes());
    }
    if let (Some(r), None) = (rid, c.hl.get(b"x-request-id")) {
        c.hl.append(b"x-request-id", r.as_bytes());
    }
    let routes = l.routes.get();
    let pool = routes.authz_pool.and_then(|i| routes.pools.get(i)).cloned();
    // `with_request_body`: the body (or enough of it) read first; it stays in the
    // connection's buffer, relayed upstream from there.
    let body = match (x.body, req.framing) {
        (None, _) | (_, Framing::Length(0)) => None,
        // A caller waiting for `100 Continue` had it on arrival (`exchange`).
        (Some(b), framing) => Some(body_for_check(c, framing, b).await?),
    };
    let body = match (x.body, &body) {
        (Some(settings), Some(d)) => Some(crate::filter::ext_authz::Body {
            buffered: d,
            settings,
        }),
        _ => None,
    };
    // The check's bytes, built before the wait (the header list's borrow ends with them).
    let message = {
        let allowed =
            c.hl.iter()
                .map(|(n, v, _)| (n, v))
                .filter(|(n, _)| x.allows_header(n));
        match &x.http {
            Some(h) => bytes::Bytes::from(h.request(allowed, body)),
            None => {
                let attrs = crate::filter::ext_authz::Attributes::of_call(
                    c.peer.as_ref(),
                    l.local_uris.first().map(String::as_str),
                    "HTTP/1.1",
                    0,
                );
                crate::filter::ext_authz::check_request(
                    &attrs,
                    allowed,
                    x.include_peer_certificate,
                    body,
                )
            }
        }
    };
    let outcome = match (&x.http, pool) {
        (_, None) => Err(CheckError::Transport),
        (Some(_), Some(pool)) => http_check(&pool, x, message).await,
        (None, Some(pool)) => {
            let client = super::conn::PoolCheckClient {
                pool,
                limits: l.limits,
                alpn: l.alpn.http2.clone(),
            };
            crate::filter::ext_authz::ask(x, Some(&client), message).await
        }
    };
    match outcome {
        Ok(Answer::Ok {
            headers,
            remove,
            response_headers,
        }) => {
            l.stats.inc(x.ids.ok);
            super::conn::apply_authz_headers(&mut c.hl, &headers, &remove);
            c.authz_response = response_headers;
        }
        Ok(Answer::Denied {
            status,
            headers,
            body,
        }) => {
            l.stats.inc(x.ids.denied);
            return Err(Local::AuthzDenied {
                code: status,
                headers,
                body,
            });
        }
        Err(e) => {
            tracing::debug!(listener = %l.name, error = ?e, "ext_authz: check failed");
            l.stats.inc(x.ids.error);
            if !x.failure_mode_allow {
                return Err(Local::AuthzError(x.status_on_error));
            }
            l.stats.inc(x.ids.failure_mode_allowed);
            if x.failure_mode_allow_header_add {
                c.hl.replace(
                    crate::filter::ext_authz::FAILURE_MODE_ALLOWED_HEADER,
                    Some(b"true"),
                );
            }
        }
    }
    // The request going upstream is the header list as the filter left it.
    req.fields =
        c.hl.iter()
            .filter(|(n, _, _)| !n.starts_with(b":") && *n != b"host")
            .map(|(n, v, _)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
            .collect();
    Ok(())
}

/// `with_request_body` on an HTTP/1.1 request: its body's data read into the connection's
/// buffer (where it stays, relayed from there) until it ended, or `max_request_bytes` came
/// (`allow_partial_message`), or more (without it: 413, as Envoy's buffer limit answers);
/// the data so far.
async fn body_for_check<C: crate::io::Conn>(
    c: &mut Down<C>,
    framing: Framing,
    b: crate::config::ExtAuthzBody,
) -> Result<Vec<u8>, Local> {
    let max = b.max_request_bytes as usize;
    loop {
        let (data, ended) = match framing {
            Framing::Length(n) => {
                let k = c.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                (c.buf[..k].to_vec(), k as u64 == n)
            }
            Framing::Chunked => {
                let mut d = Vec::new();
                let (_, ended) = Chunks::default()
                    .feed_data(&c.buf, &mut |x| d.extend_from_slice(x))
                    .map_err(|_| Local::BadRequest)?;
                (d, ended)
            }
            // Requests are never framed by the close.
            Framing::UntilClose => return Err(Local::BadRequest),
        };
        if data.len() > max && !b.allow_partial_message {
            return Err(Local::PayloadTooLarge);
        }
        if ended || data.len() > max || (b.allow_partial_message && data.len() >= max) {
            return Ok(data);
        }
        c.buf.reserve(READ_CHUNK_BYTES);
        let read = crate::io::read_append(&mut c.s, std::mem::take(&mut c.buf));
        let (r, buf) = match shard::monoio::time::timeout(HEAD_TIMEOUT, read).await {
            Ok(x) => x,
            Err(_) => return Err(Local::BadRequest),
        };
        c.buf = buf;
        match r {
            Ok(0) | Err(_) => return Err(Local::BadRequest),
            Ok(_) => {}
        }
    }
}

/// The route's cluster pool, timeout and retry policy, or the local answer. Once a route is
/// found its cluster is the exchange's (`%UPSTREAM_CLUSTER%`), as Envoy's connection manager
/// sets it when it resolves the route (before rate limits and faults). `payload`: the jwt
/// payloads the authorization filters verified.
fn route<C>(
    c: &mut Down<C>,
    l: &TripleListener,
    req: &mut Request,
    payload: Option<crate::filter::jwt::Metadata>,
) -> Result<Routed, Local> {
    let hl = &c.hl;
    let full = req.path.as_bytes();
    let (service, method) = super::router::path_parts(full);
    let routes = l.routes.get();
    let view = RequestView {
        path: full,
        service,
        method,
        headers: hl,
        metadata: payload.as_ref(),
    };
    let Some((entry, action)) = routes
        .router
        .route_entry(Some(req.authority.as_bytes()), &view)
    else {
        l.stats.inc(l.ids.rq_no_route);
        return Err(Local::NoRoute);
    };
    // A route that answers itself (`redirect`, `direct_response`) goes nowhere; the listener's
    // local rate limit and the route's fault still apply to it first (Envoy's filters run
    // before its router).
    let direct = action.direct.as_deref();
    let (cluster, target) = match direct {
        None => action.pick(l.roll()),
        Some(_) => (0, 0),
    };
    // Its hash (RING_HASH / MAGLEV clusters), of the request as it came; the cookies it
    // generated from the connection's addresses (as on HTTP/2).
    let mut cookies = None;
    c.hash = match action.hash.is_empty() || direct.is_some() {
        true => None,
        false => {
            let conn = match (c.caller.0, c.dst.or(c.caller.1)) {
                (Some(r), Some(a)) => Some((r, a)),
                _ => None,
            }
            .filter(|_| routes.pools.get(cluster).is_some_and(|p| p.lb.hashes()));
            let (h, g) = super::hash::request_hash(
                &action.hash,
                &c.hl,
                req.path.as_bytes(),
                c.caller.0.map(|a| a.ip()),
                conn,
            );
            cookies = g.map(|g| super::hash::Generated::new(&action.hash, g));
            h
        }
    };
    let headers = entry.and_then(|m| m.mutations.as_ref());
    if let Some(lg) = c.seen.lg.as_mut().filter(|_| l.log.is_some()) {
        lg.route = entry.and_then(|m| m.name.clone());
    }
    // Ringside's answers from here on get the route's response mutations (Envoy's local
    // replies after routing), unless the route answers itself: then only its own answer.
    c.respond = match direct {
        None => super::mutate::Respond::of(headers, target),
        Some(_) => None,
    };
    capture_as_it_came(c);
    if direct.is_none() {
        c.seen.cluster = Some(routes.pools[cluster].lb.clone());
        if let Some(rw) = action.rewrite.as_deref() {
            rewrite_request(l, rw, target, &c.hl, req);
        }
    }
    if let Some(limits) = &routes.limits {
        if let Some(limit) = limits
            .for_route(action.route_index)
            .filter(|limit| !limit.admit(&l.stats))
        {
            l.stats.inc(l.ids.rq_rate_limited);
            return Err(Local::RateLimited(limit.config().http_status()));
        }
    }
    // The route's concurrency limit: the request holds a place until its exchange ends.
    let slot = routes.concurrency_place(action.route_index).map_err(|_| {
        l.stats.inc(l.ids.rq_concurrency_limited);
        Local::ConcurrencyLimited
    })?;
    // The route's fault, rolled as for HTTP/2 (delay and abort each on its own, as Envoy).
    let fault = match action.fault(&l.dice) {
        Some(_)
            if action
                .fault
                .and_then(|p| p.max_active_faults)
                .is_some_and(|m| l.faults_active.get() >= m) =>
        {
            l.stats.inc(l.ids.fault.overflow);
            None
        }
        f => f,
    };
    let http_status = action
        .fault
        .and_then(|f| f.abort)
        .and_then(|a| a.http_status)
        .map_or(200, |s| s as u16);
    let abort = fault.and_then(|f| f.abort).map(|_| http_status);
    let delay = fault.and_then(|f| f.delay);
    if let (Some(code), None) = (abort, delay) {
        l.stats.inc(l.ids.fault.aborts_injected);
        return Err(Local::FaultAbort(code));
    }
    if let Some(d) = direct {
        let xfp =
            c.hl.get(b"x-forwarded-proto")
                .unwrap_or(c.scheme.as_bytes());
        let host = req.authority.as_bytes();
        c.respond = super::mutate::Respond::of(headers, 0);
        if let Some(r) = c.respond.as_mut() {
            r.capture(|n| c.hl.get(n));
        }
        // Its fault delay (then abort) holds the answer, as Envoy's fault filter holds the
        // request before its router answers.
        c.direct_delay = delay.map(|d| (d, abort));
        return Err(Local::Direct {
            code: d.status,
            body: d.body.to_vec(),
            location: d.location(c.scheme.as_bytes(), xfp, host, req.path.as_bytes()),
        });
    }
    let mut mirrors: [Option<Rc<Pool>>; crate::config::MIRROR_POLICIES_MAX] = Default::default();
    for (slot, i) in mirrors.iter_mut().zip(action.mirrors(&l.dice)) {
        *slot = Some(routes.pools[i].clone());
    }
    Ok(Routed {
        pool: routes.pools[cluster].clone(),
        timeout: action.timeout,
        retry: action.retry,
        delay: delay.map(|d| (d, abort)),
        mirrors,
        _slot: slot,
        mutations: headers
            .filter(|h| h.has_request(target))
            .map(|h| (h.clone(), target)),
        respond: c.respond.clone(),
        cookies,
    })
}

/// A local reply's `%REQ(x)%` read the request as it came (before routing finalized it).
fn capture_as_it_came<C>(c: &mut Down<C>) {
    let hl = &c.hl;
    if let Some(r) = c.respond.as_mut() {
        r.capture(|n| hl.get(n));
    }
}

/// The response mutations of the route `req` would take (none for a route that answers
/// itself), for an answer made before routing (jwt_authn, rbac): Envoy's connection manager
/// resolves the route before its filters run, and its local replies get the route's response
/// mutations; after jwt_authn passed it without clearing that route, `as_came` is the request
/// as it came. Error path only.
fn respond_before_routing<C>(
    c: &mut Down<C>,
    l: &TripleListener,
    req: &Request,
    metadata: Option<&crate::filter::jwt::Metadata>,
    as_came: Option<&super::AsCame>,
) {
    let (hl, metadata) = match as_came {
        Some(a) => (a.headers.as_deref().unwrap_or(&c.hl), None),
        None => (&c.hl, metadata),
    };
    let full = match as_came {
        Some(_) => hl.get(b":path").unwrap_or(req.path.as_bytes()),
        None => req.path.as_bytes(),
    };
    let (service, method) = super::router::path_parts(full);
    let view = RequestView {
        path: full,
        service,
        method,
        headers: hl,
        metadata,
    };
    let routes = l.routes.get();
    let Some((entry, action)) = routes
        .router
        .route_entry(Some(req.authority.as_bytes()), &view)
    else {
        c.respond = None;
        return;
    };
    // Envoy's access log names the route its connection manager resolved.
    let name = entry
        .and_then(|m| m.name.clone())
        .filter(|_| l.log.is_some());
    c.respond = match action.direct {
        Some(_) => None,
        None => {
            let (_, target) = action.pick(l.roll());
            super::mutate::Respond::of(entry.and_then(|m| m.mutations.as_ref()), target).map(
                |mut r| {
                    r.capture(|n| c.hl.get(n));
                    r
                },
            )
        }
    };
    if let (Some(lg), Some(name)) = (c.seen.lg.as_mut(), name) {
        lg.route = Some(name);
    }
}

/// Route rewrite `rw` (for target `target`) on the request going upstream, as on HTTP/2
/// (`conn::rewrite_request`); `hl`: the request as it came.
fn rewrite_request(
    l: &TripleListener,
    rw: &crate::route::Rewrite,
    target: usize,
    hl: &HeaderList,
    req: &mut Request,
) {
    let new = rw.apply(target, req.path.as_bytes(), req.authority.as_bytes(), |n| {
        hl.get(n)
    });
    let set = |fields: &mut Vec<(String, Vec<u8>)>, name: &str, v: Vec<u8>| {
        fields.retain(|(n, _)| n != name);
        fields.push((name.to_string(), v));
    };
    if let Some(old) = new.replaced_host {
        if rw.append_xfh {
            let xfh = hl.get(b"x-forwarded-host");
            if let Some(v) = crate::route::forwarded_host(xfh, &old) {
                set(&mut req.fields, "x-forwarded-host", v);
            }
        }
        if !l.suppress_envoy_headers {
            set(&mut req.fields, "x-envoy-original-host", old);
        }
    }
    if let Some(h) = new.host {
        req.authority = String::from_utf8_lossy(&h).into_owned();
    }
    if let Some(p) = new.path {
        if !l.suppress_envoy_headers {
            let old = std::mem::take(&mut req.path).into_bytes();
            set(&mut req.fields, "x-envoy-original-path", old);
        }
        req.path = String::from_utf8_lossy(&p).into_owned();
    }
}

/// `hl` := the request's fields as an HTTP/2 header list (pseudo-headers first), as routes,
/// rbac and access logs read them.
fn header_list(hl: &mut HeaderList, req: &Request, scheme: &str) {
    hl.clear();
    let limit = usize::MAX;
    hl.push(b":method", req.method.as_bytes(), false, limit);
    hl.push(b":scheme", scheme.as_bytes(), false, limit);
    hl.push(b":authority", req.authority.as_bytes(), false, limit);
    hl.push(b":path", req.path.as_bytes(), false, limit);
    for (n, v) in &req.fields {
        hl.push(n.as_bytes(), v, false, limit);
    }
}

/// A path as the routes (made for `/{service}/{method}`) match it: its first segment is the
/// service and the rest the method, so an xDS `prefix: /a/` (service `a`) or `/a/b` (service
/// `a`, method prefix `b`) matches the paths Envoy's prefix match does, however many segments
/// follow; a path of one segment is all service.
enum HeadError {
    /// The peer closed (or went idle) between requests: nothing to answer.
    Closed,
    TooLarge,
    Bad,
}

/// Reads until `buf` holds a whole head (a request's, or a response's when `!request`); its
/// length. `idle`: how long the first byte may take (zero: no limit); once it came, the whole
/// head gets [`HEAD_TIMEOUT`].
async fn read_head<R: AsyncReadRent>(
    s: &mut R,
    buf: &mut BytesMut,
    idle: Duration,
    request: bool,
) -> Result<usize, HeadError> {
    let mut deadline = (!idle.is_zero()).then(|| Instant::now() + idle);
    let mut head_started = false;
    let mut searched: usize = 0;
    loop {
        if !buf.is_empty() && !head_started {
            head_started = true;
            deadline = Some(Instant::now() + HEAD_TIMEOUT);
        }
        // Searched only past what was searched before (a head sent byte by byte is not
        // scanned again per byte).
        let from = searched.saturating_sub(3);
        if let Some(end) = head_end(&buf[from..]) {
            let n = from + end;
            if n > HEAD_BYTES_MAX {
                return Err(HeadError::TooLarge);
            }
            return Ok(n);
        }
        searched = buf.len();
        if buf.len() > HEAD_BYTES_MAX {
            return Err(HeadError::TooLarge);
        }
        if !buf.is_empty() && buf.len() <= PARTIAL_CHECK_BYTES_MAX && !partial_ok(buf, request) {
            return Err(HeadError::Bad);
        }
        buf.reserve(READ_CHUNK_BYTES);
        let read = crate::io::read_append(s, std::mem::take(buf));
        let (r, b) = match deadline {
            Some(d) => match shard::monoio::time::timeout_at(d.into(), read).await {
                Ok(x) => x,
                // Idle, or a head that never ends: closed without an answer.
                Err(_) => return Err(HeadError::Closed),
            },
            None => read.await,
        };
        *buf = b;
        match r {
            Ok(0) | Err(_) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) | Err(_) => return Err(HeadError::Bad),
            Ok(_) => {}
        }
    }
}

/// Whether the start of a head is valid as far as it goes.
fn partial_ok(b: &[u8], request: bool) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let parsed = match request {
        true => httparse::Request::new(&mut fields).parse(b).map(|_| ()),
        false => httparse::Response::new(&mut fields).parse(b).map(|_| ()),
    };
    // Too many fields is decided on the whole head (431, not 400).
    matches!(parsed, Ok(()) | Err(httparse::Error::TooManyHeaders))
}

/// The length of the head at the start of `b` (through its blank line), if it is complete.
fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Hop-by-hop fields (RFC 9110 7.6.1), never forwarded; the fields a `Connection` field
/// names are dropped too.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "http2-settings"
    )
}

fn contains_token(v: &[u8], token: &str) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn parse_request(head: &[u8]) -> Result<Request, Local> {
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut r = httparse::Request::new(&mut fields);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Local::BadRequest),
        Err(httparse::Error::TooManyHeaders) => return Err(Local::TooLarge),
        Err(_) => return Err(Local::BadRequest),
    }
    let (Some(method), Some(target), Some(version)) = (r.method, r.path, r.version) else {
        return Err(Local::BadRequest);
    };
    if version == 0 {
        // HTTP/1.0: refused, as Envoy's codec does unless `accept_http_10` (istiod sets it
        // only for a proxy whose node metadata has `HTTP10`).
        return Err(Local::UpgradeRequired);
    }
    let mut host: Option<&[u8]> = None;
    let (mut length, mut chunked, mut te) = (None::<u64>, false, false);
    let mut connection: Vec<&[u8]> = Vec::new();
    let (mut upgrade, mut expect) = (None, false);
    for h in r.headers.iter() {
        let v = h.value;
        match h.name.to_ascii_lowercase().as_str() {
            "host" => {
                if host.is_some() {
                    return Err(Local::BadRequest);
                }
                host = Some(v);
            }
            "content-length" => {
                let n = std::str::from_utf8(v)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(Local::BadRequest)?;
                if length.is_some_and(|l| l != n) {
                    return Err(Local::BadRequest);
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                te = true;
                // Only `chunked`, last (RFC 9112 6.1); another coding: 400 (as Envoy's 501
                // would refuse it).
                chunked = v.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            "connection" => connection.push(v),
            "upgrade" => upgrade = Some(v),
            "expect" => expect = continue_expected(v),
            _ => {}
        }
    }
    if te && (!chunked || length.is_some()) {
        return Err(Local::BadRequest);
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Length(0),
    };
    let names_token = |t: &str| connection.iter().any(|v| contains_token(v, t));
    let close = names_token("close");
    let upgrading = upgrade.is_some() && names_token("upgrade");
    let websocket =
        upgrading && upgrade.is_some_and(|u| u.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    let other_upgrade = upgrading
        && !websocket
        && !upgrade.is_some_and(|u| u.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    // The target: origin form, or absolute form (whose authority replaces Host).
    let (authority, path) = if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let slash = rest.find('/').unwrap_or(rest.len());
        let path = if slash == rest.len() {
            "/"
        } else {
            &rest[slash..]
        };
        (rest[..slash].to_string(), path.to_string())
    } else if target.starts_with('/') {
        let Some(h) = host else {
            return Err(Local::BadRequest);
        };
        let h = std::str::from_utf8(h).map_err(|_| Local::BadRequest)?;
        (h.trim().to_string(), target.to_string())
    } else if method == "OPTIONS" && target == "*" {
        let h = std::str::from_utf8(host.unwrap_or(b"")).map_err(|_| Local::BadRequest)?;
        (h.trim().to_string(), target.to_string())
    } else {
        // CONNECT (authority form) and anything else.
        return Err(Local::BadRequest);
    };
    if method == "CONNECT" {
        return Err(Local::Forbidden("CONNECT not allowed"));
    }
    Ok(Request {
        method: method.to_string(),
        path,
        authority,
        fields: fields_of(r.headers, &connection),
        framing,
        close,
        expect_continue: expect,
        websocket,
        other_upgrade,
    })
}

/// The end-to-end fields of a head, names lower-cased: hop-by-hop ones, `host`,
/// `expect: 100-continue` (answered here; another expectation goes on, as Envoy's connection
/// manager removes only that one) and those `connection` names left out; a `TE` naming `trailers` kept as
/// `te: trailers` (Envoy's sanitizing of TE).
fn fields_of(headers: &[httparse::Header<'_>], connection: &[&[u8]]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter_map(|h| {
            let n = h.name.to_ascii_lowercase();
            let named = connection.iter().any(|v| contains_token(v, &n));
            if n == "te" && !named && contains_token(h.value, "trailers") {
                return Some((n, b"trailers".to_vec()));
            }
            let answered = n == "expect" && continue_expected(h.value);
            (!hop_by_hop(&n) && n != "host" && !answered && !named).then(|| (n, h.value.to_vec()))
        })
        .collect()
}

/// Whether an `Expect` value is `100-continue` (case-insensitive, RFC 9110 10.1.1).
fn continue_expected(v: &[u8]) -> bool {
    v.trim_ascii().eq_ignore_ascii_case(b"100-continue")
}

/// Writes a local answer; closes after it when `close`.
async fn local<C: crate::io::Conn>(
    c: &mut Down<C>,
    l: &TripleListener,
    e: &Local,
    close: bool,
) -> Next {
    l.stats.inc(l.ids.rsp_local);
    let (code, reason, body) = e.status();
    let (body, location) = match e {
        Local::Direct { body, location, .. } => (body.as_slice(), location.as_deref()),
        Local::AuthzDenied { body, .. } => (body.as_bytes(), None),
        _ => (body.as_bytes(), None),
    };
    // The authorizer's headers on its denial replace the reply's own of those names
    // (Envoy's ext_authz filter removes, then adds them); pseudo-headers are not its.
    let denied: &[(Vec<u8>, Vec<u8>)] = match e {
        Local::AuthzDenied { headers, .. } => headers,
        _ => &[],
    };
    let replaced = |n: &[u8]| denied.iter().any(|(k, _)| k == n);
    c.seen.code = code;
    c.seen.tx = body.len() as u64;
    c.seen.flags = c.seen.flags | e.flags();
    // Once routed, the route's response mutations (with a route's `location`), before what
    // the reply sets, as Envoy's local replies after routing.
    let mutated = c.respond.as_ref().map(|r| {
        let elapsed = c.seen.started.map_or(Duration::ZERO, |s| s.elapsed());
        let facts = super::mutate::Facts {
            upstream: c.seen.upstream,
            duration: elapsed,
            bytes_received: c.seen.rx,
            flags: c.seen.flags,
            ..super::mutate::Facts::request("HTTP/1.1", SystemTime::now() - elapsed, c.caller)
        };
        r.local_reply(location, &facts)
    });
    let kept = |n: &[u8]| {
        !(super::mutate::local_reply_sets(n) || n == b"server" && l.stamp.overwrites_server())
    };
    if let Some(lg) = c.seen.lg.as_mut() {
        // What the caller is sent, for `%RESP(...)%`.
        let (status, length) = (code.to_string(), body.len().to_string());
        lg.keep(Part::Response, |n| match n {
            b":status" => Some(status.as_bytes()),
            // Envoy's local reply carries no content-length field without a body.
            b"content-length" if !body.is_empty() => Some(length.as_bytes()),
            b"content-type" if !body.is_empty() => Some(b"text/plain".as_slice()),
            n => mutated.as_ref().filter(|_| kept(n)).and_then(|m| m.get(n)),
        });
    }
    let mut out = format!("HTTP/1.1 {code} {reason}\r\n");
    let mut server_listed = false;
    let mut line = |n: &[u8], v: &[u8]| {
        out.push_str(&String::from_utf8_lossy(n));
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(v));
        out.push_str("\r\n");
    };
    match &mutated {
        Some(m) => {
            for (n, v, _) in m.iter().filter(|(n, _, _)| kept(n)) {
                server_listed |= n == b"server";
                line(n, v);
            }
        }
        None => {
            if let Some(loc) = location {
                line(b"location", loc);
            }
        }
    }
    // A 204 carries no content-length (RFC 9110 8.6; Envoy's codec leaves it out).
    if code != 204 && !replaced(b"content-length") {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    if !body.is_empty() && !replaced(b"content-type") {
        out.push_str("content-type: text/plain\r\n");
    }
    for (n, v) in denied {
        if !n.starts_with(b":") && n != b"date" && n != b"connection" {
            out.push_str(&String::from_utf8_lossy(n));
            out.push_str(": ");
            out.push_str(&String::from_utf8_lossy(v));
            out.push_str("\r\n");
        }
    }
    // An OK authorization's response headers, on any answer (as on HTTP/2).
    for (a, n, v) in &c.authz_response {
        let settable = !n.starts_with(b":") && !super::mutate::local_reply_sets(n);
        if settable && *a != crate::filter::ext_authz::HeaderAction::OverwriteIfExists {
            out.push_str(&String::from_utf8_lossy(n));
            out.push_str(": ");
            out.push_str(&String::from_utf8_lossy(v));
            out.push_str("\r\n");
        }
    }
    if let Local::Jwt {
        www_authenticate: Some(w),
        ..
    } = e
    {
        out.push_str("www-authenticate: ");
        out.push_str(&String::from_utf8_lossy(w));
        out.push_str("\r\n");
    }
    // Envoy's connection manager's, on its local replies too.
    out.push_str("date: ");
    out.push_str(std::str::from_utf8(&super::stamp::http_date()).unwrap_or_default());
    out.push_str("\r\n");
    if l.stamp.adds_server(server_listed) {
        out.push_str("server: ");
        out.push_str(&String::from_utf8_lossy(&l.stamp.server_name));
        out.push_str("\r\n");
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    let (r, _) = c.s.write_all(out).await;
    match (r, close) {
        (Ok(_), false) => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// An upstream HTTP/1.1 connection, returned to its pool's idle list when an exchange leaves
/// it clean.
struct Up {
    s: UpStream,
    addr: SocketAddr,
    /// The endpoint's slot in its cluster (`None`: an original destination).
    slot: Option<usize>,
    /// The ALPN override it offered over TLS (`istio.alpn`).
    alpn: crate::io::tls::AlpnOverride,
    /// Its TLS principals (`None`: plaintext, or a server without a certificate), for
    /// outbound listeners' Istio metrics (`destination_principal`, `source_principal`).
    tls_peer: Option<Box<crate::stats::istio::UpstreamTls>>,
    /// Those principals as the last outbound listener that used it labels them: (its id,
    /// the entry in its table), looked up once per connection and listener.
    istio_peer: (u64, crate::stats::istio::PeerId),
}

impl Up {
    /// The connection's TLS principals as outbound listener `i`'s metrics label them.
    fn istio_peer(
        &mut self,
        i: &crate::stats::istio::IstioListener,
    ) -> crate::stats::istio::PeerId {
        if self.istio_peer.0 != i.id() {
            self.istio_peer = (i.id(), i.upstream(self.tls_peer.as_deref()));
        }
        self.istio_peer.1
    }
}

/// An idle upstream connection of a pool ([`Pool::http1_idle`]), since when.
pub struct IdleConn {
    up: Up,
    since: Instant,
}

/// One request to a cluster in flight on this shard, counted as Envoy's connection pools
/// count a stream: from the moment it has a connection (an HTTP/1.1 one; a stream opened on
/// an HTTP/2 one) `upstream_rq_total` and `upstream_rq_active` go up, and `upstream_rq_active`
/// goes down when this is dropped, whichever way the request ended (answered, reset, timed
/// out, its caller gone, given up for another try, a WebSocket tunnel closed). Holds the
/// pool (a reference count, no allocation).
pub struct InFlight(Rc<Pool>);

impl InFlight {
    fn start(pool: &Rc<Pool>) -> InFlight {
        pool.stats.inc(pool.ids.rq_total);
        pool.stats.inc(pool.ids.rq_active);
        InFlight(pool.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.dec(self.0.ids.rq_active);
    }
}

/// Which connections a request may go on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Speak {
    Http1,
    Http2,
    /// HTTP/2 where TLS settled on `h2`, else HTTP/1.1 (`upstream_http: auto`).
    Alpn,
}

impl Speak {
    fn of(pool: &Pool, req: &Request) -> Speak {
        use config::UpstreamHttp as U;
        match pool.upstream_http {
            // A WebSocket upgrade stays HTTP/1.1 (docs/decisions/0010-http1.md).
            _ if req.websocket => Speak::Http1,
            U::Http2 => Speak::Http2,
            U::Auto => Speak::Alpn,
            U::Http1 | U::Downstream => Speak::Http1,
        }
    }
}

/// Where one try of a request goes: an HTTP/1.1 connection of its own, or a stream on a
/// shared HTTP/2 one.
enum Link {
    H1(Up),
    H2(h2::Stream),
}

impl Link {
    /// The endpoint's slot in its cluster (`None`: an original destination).
    fn slot(&self) -> Option<usize> {
        match self {
            Link::H1(up) => up.slot,
            Link::H2(s) => s.mux().slot,
        }
    }

    /// The connection's TLS principals as outbound listener `i`'s metrics label them.
    fn istio_peer(
        &mut self,
        i: &crate::stats::istio::IstioListener,
    ) -> crate::stats::istio::PeerId {
        match self {
            Link::H1(up) => up.istio_peer(i),
            Link::H2(s) => s.mux().istio_peer(i),
        }
    }
}

/// An idle HTTP/1.1 connection to `addr` (TLS or not, as `tls`; over TLS, one that offered
/// `alpn`) from `pool`, if a live one is there.
fn idle_connection(
    pool: &Pool,
    addr: SocketAddr,
    tls: bool,
    alpn: &crate::io::tls::AlpnOverride,
) -> Option<Up> {
    let mut idle = pool.http1_idle.borrow_mut();
    let now = Instant::now();
    // Expired ones go first (their sockets close as they drop).
    idle.retain(|i| pool.idle_timeout.is_zero() || now - i.since < pool.idle_timeout);
    while let Some(i) = idle.iter().rposition(|i| {
        let u = &i.up;
        u.addr == addr && u.s.is_tls() == tls && (!tls || crate::io::tls::same_alpn(&u.alpn, alpn))
    }) {
        let IdleConn { up, .. } = idle.swap_remove(i);
        // Alive and quiet: nothing to read yet. EOF or stray bytes (an HTTP/2 peer's late
        // frames or GOAWAY among them): dropped.
        if up.s.quiet() {
            return Some(up);
        }
    }
    None
}

fn put_idle(pool: &Pool, up: Up) {
    let mut idle = pool.http1_idle.borrow_mut();
    if idle.len() < IDLE_UPSTREAM_MAX {
        idle.push(IdleConn {
            up,
            since: Instant::now(),
        });
    }
}

/// A connection for one request: to the caller's original destination for an
/// `original_destination` cluster, else to an endpoint the balancer picks (another one, up to
/// [`CONNECT_ATTEMPTS_MAX`], when connecting fails), skipping those a retry already tried
/// while another is there (`previous_hosts`). HTTP/2 (`speak`): a stream on a connection of
/// the pool to that endpoint with room for it (connected or connecting), else on a new one.
async fn upstream<C>(
    c: &mut Down<C>,
    pool: &Rc<Pool>,
    retry: Option<&crate::route::Retry>,
    speak: Speak,
) -> Result<Link, Local> {
    let lb = &pool.lb;
    let mut tried = [usize::MAX; CONNECT_ATTEMPTS_MAX];
    for attempt in 0..CONNECT_ATTEMPTS_MAX {
        let (addr, slot, tls) = if lb.original_destination {
            if attempt > 0 {
                break;
            }
            (c.dst.ok_or(Local::NoHealthyUpstream)?, None, None)
        } else {
            let state = |i: usize, skip_retried: bool| {
                if tried.contains(&i) || (skip_retried && retry.is_some_and(|r| r.avoids(i))) {
                    Availability::Excluded
                } else {
                    Availability::Ready
                }
            };
            // `previous_priorities`: the levels the retry leaves out.
            let levels = retry.map_or(&[][..], |r| r.priority_avoided());
            let draws = retry.map_or(0, |r| r.host_draws());
            let picked = lb
                .pick_avoiding(None, levels, c.hash, draws, |i| state(i, true))
                .or_else(|| {
                    // Every endpoint of the drawn levels tried: a tried one, drawn from the
                    // same load (never another level for it, as Envoy).
                    retry.and_then(|_| {
                        lb.pick_avoiding(None, levels, c.hash, draws, |i| state(i, false))
                    })
                });
            let Some(i) = picked else {
                if attempt == 0 {
                    return Err(Local::NoHealthyUpstream);
                }
                break;
            };
            tried[attempt] = i;
            (lb.slot(i).addr, Some(i), lb.tls(i))
        };
        c.seen.upstream = Some(addr);
        // istio.alpn: the listener's override for the protocol the request goes with.
        let alpn = pool.alpn(match speak {
            Speak::Http2 => &c.alpn2,
            Speak::Http1 | Speak::Alpn => &c.alpn,
        });
        if speak != Speak::Http1 {
            // A shared HTTP/2 connection with room (one being connected included).
            let mux = match h2::find(pool, addr, tls.is_some(), alpn) {
                Some(m) => Some(m),
                None if speak == Speak::Http2 => {
                    Some(h2::connect(pool, addr, slot, tls.clone(), alpn.clone()))
                }
                None => None,
            };
            if let Some(mux) = mux {
                let s = h2::Stream::new(mux);
                if s.mux().ready().await {
                    return Ok(Link::H2(s));
                }
                // Its connect failed (counted by it): another endpoint.
                continue;
            }
        }
        if speak != Speak::Http2 {
            if let Some(mut up) = idle_connection(pool, addr, tls.is_some(), alpn) {
                up.slot = slot;
                return Ok(Link::H1(up));
            }
        }
        let Some((s, tls_peer)) = dial(pool, addr, tls.as_deref(), alpn.as_deref()).await else {
            continue;
        };
        // `upstream_http: auto`: HTTP/2 where TLS settled on `h2`.
        if speak == Speak::Alpn
            && matches!(&s, UpStream::Tls(t) if crate::io::Conn::alpn(t).as_deref() == Some(b"h2"))
        {
            let mux = h2::adopt(pool, s, (addr, slot, alpn.clone()), tls_peer);
            return Ok(Link::H2(h2::Stream::new(mux)));
        }
        return Ok(Link::H1(Up {
            s,
            addr,
            slot,
            alpn: alpn.clone(),
            tls_peer,
            istio_peer: Default::default(),
        }));
    }
    Err(Local::ConnectFailure { retried: false })
}

/// A new connection to `addr` for `pool` (TLS when the endpoint's transport socket is, with
/// `tls`, offering `alpn`; the handshake within the connect timeout), counted; with its TLS
/// principals (the server's certificate, ours), as Triple's upstream connections keep them.
/// `None`: connecting failed (counted).
async fn dial(
    pool: &Pool,
    addr: SocketAddr,
    tls: Option<&crate::io::tls::ClientTls>,
    alpn: Option<&[String]>,
) -> Option<(UpStream, Option<Box<crate::stats::istio::UpstreamTls>>)> {
    let lb = &pool.lb;
    let connect = async {
        match tls {
            Some(t) => crate::io::tls::connect(addr, &lb.sources, t, alpn)
                .await
                .map(UpStream::Tls),
            None => crate::io::intercept::connect(addr, &lb.sources)
                .await
                .map(UpStream::Plain),
        }
    };
    match shard::monoio::time::timeout(pool.connect_timeout, connect).await {
        Ok(Ok(s)) => {
            let _ = match &s {
                UpStream::Plain(s) => crate::io::Conn::set_nodelay(s, true)
                    .and_then(|_| crate::io::Conn::set_keepalive(s, &lb.keepalive)),
                UpStream::Tls(s) => crate::io::Conn::set_keepalive(s, &lb.keepalive),
            };
            pool.stats.inc(lb.ids.cx_total);
            let tls_peer = match (&s, tls) {
                (UpStream::Tls(t), Some(ours)) => crate::io::Conn::peer_principal(t).map(|p| {
                    Box::new(crate::stats::istio::UpstreamTls {
                        peer: p.map(Box::from),
                        local: ours.principal.clone(),
                    })
                }),
                _ => None,
            };
            Some((s, tls_peer))
        }
        Ok(Err(e)) => {
            pool.stats.inc(lb.ids.cx_connect_fail);
            tracing::debug!(cluster = %lb.name, %addr, error = %e, "HTTP/1.1 upstream connect failed");
            None
        }
        Err(_) => {
            pool.stats.inc(lb.ids.cx_connect_timeout);
            None
        }
    }
}

/// The first value of the field `name` (lower case; `:status`: the status code) in a response
/// head as [`parse_response`] writes it.
fn response_field<'h>(head: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    if name == b":status" {
        return head.get(9..12);
    }
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// The request head as it goes upstream.
fn request_head(
    req: &Request,
    scheme: &str,
    request_id: impl FnOnce() -> String,
    (expected_ms, tail): (Option<u64>, &[u8]),
    mx: Mx<'_>,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(
        256 + req
            .fields
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>(),
    );
    h.extend_from_slice(req.method.as_bytes());
    h.push(b' ');
    h.extend_from_slice(req.path.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.authority.is_empty() {
        h.extend_from_slice(b"host: ");
        h.extend_from_slice(req.authority.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    let mut proto = false;
    let mut id = false;
    for (n, v) in &req.fields {
        if mx.drops(n) {
            continue;
        }
        proto |= n == "x-forwarded-proto";
        id |= n == "x-request-id";
        h.extend_from_slice(n.as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(v);
        h.extend_from_slice(b"\r\n");
    }
    // What Envoy's connection manager adds in Istio's configuration.
    if !proto {
        h.extend_from_slice(b"x-forwarded-proto: ");
        h.extend_from_slice(scheme.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    if !id {
        h.extend_from_slice(b"x-request-id: ");
        h.extend_from_slice(request_id().as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    mx.write(&mut h, true);
    if let Some(ms) = expected_ms {
        h.extend_from_slice(b"x-envoy-expected-rq-timeout-ms: ");
        h.extend_from_slice(super::stamp::Decimal::new(ms).as_slice());
        h.extend_from_slice(b"\r\n");
    }
    // The trace context, last, as Envoy's router injects it.
    h.extend_from_slice(tail);
    match req.framing {
        Framing::Chunked => h.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(_) | Framing::UntilClose => {}
    }
    if req.websocket {
        h.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// A version-4 UUID (Envoy's `x-request-id` format), from the shard's generator.
fn request_id(_l: &TripleListener) -> String {
    String::from_utf8_lossy(&super::request_id::uuid4()).into_owned()
}

/// The response head from the upstream.
struct Response {
    code: u16,
    head: Vec<u8>,
    framing: Framing,
    /// The upstream keeps the connection open after it.
    reusable: bool,
    /// Outbound with Istio's metadata exchange: the upstream's workload its head named.
    peer: MetaId,
    /// Where the upstream's fields end in `head`, and the fields ringside adds after them
    /// (before its framing fields): where the stamps go ([`super::stamp::head`]).
    own: (usize, usize),
    /// HTTP/2: the response ended with its HEADERS.
    ended: bool,
}

/// Istio's metadata exchange on one HTTP/1.1 exchange (`x-envoy-peer-metadata-id`,
/// `x-envoy-peer-metadata`), done as on HTTP/2 (istio-proxy's `peer_metadata` filter, which
/// works on HTTP requests of any codec): what the request head going upstream and the
/// response head going back do with its two fields.
#[derive(Clone, Copy)]
enum Mx<'a> {
    /// A listener without Istio's metrics: both pass untouched.
    Off,
    /// Inbound: both are removed from the request; the response's own are replaced by ours,
    /// each only when the request carried it (`Some`).
    Inbound {
        id: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
    },
    /// Outbound: ours replace the app's on the request (none without xDS); the upstream's are
    /// read from the response (its workload: `Response::peer`) and removed.
    Outbound {
        id: &'a [u8],
        value: &'a [u8],
        istio: &'a IstioListener,
    },
}

impl<'a> Mx<'a> {
    /// The exchange of the request `lg` records on listener `l`.
    fn of(l: &'a TripleListener, lg: Option<&Logged>) -> Mx<'a> {
        let (Some(i), Some(lg)) = (&l.istio, lg) else {
            return Mx::Off;
        };
        let (id, value) = i.own_exchange();
        match i.inbound() {
            true => {
                let ours = !value.is_empty();
                Mx::Inbound {
                    id: (ours && lg.mx.id_received).then_some(id),
                    value: (ours && lg.mx.value_received).then_some(value),
                }
            }
            false => Mx::Outbound {
                id,
                value,
                istio: i,
            },
        }
    }

    /// Whether a field named `name` (lower case) is the exchange's, not passed on.
    fn drops(&self, name: &str) -> bool {
        !matches!(self, Mx::Off) && exchange::is_header(name.as_bytes())
    }

    /// Appends the exchange's fields that `head` (a request's when `request`) carries.
    fn write(&self, head: &mut Vec<u8>, request: bool) {
        let (id, value) = match (*self, request) {
            (Mx::Inbound { id, value }, false) => (id, value),
            (Mx::Outbound { id, value, .. }, true) if !value.is_empty() => (Some(id), Some(value)),
            _ => return,
        };
        for (n, v) in [(exchange::HEADER_ID, id), (exchange::HEADER, value)] {
            if let Some(v) = v {
                head.extend_from_slice(n);
                head.extend_from_slice(b": ");
                head.extend_from_slice(v);
                head.extend_from_slice(b"\r\n");
            }
        }
    }
}

fn parse_response(
    head: &[u8],
    method_head: bool,
    close: bool,
    mx: Mx<'_>,
) -> Result<Response, Local> {
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut r = httparse::Response::new(&mut fields);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Local::BadGateway),
    }
    let (Some(code), Some(version)) = (r.code, r.version) else {
        return Err(Local::BadGateway);
    };
    let mut connection: Vec<&[u8]> = Vec::new();
    let (mut length, mut chunked, mut te) = (None::<u64>, false, false);
    for h in r.headers.iter() {
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or(Local::BadGateway)?;
                if length.is_some_and(|l| l != n) {
                    return Err(Local::BadGateway);
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                te = true;
                chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            "connection" => connection.push(h.value),
            _ => {}
        }
    }
    let no_body = method_head || code == 204 || code == 304 || (100..200).contains(&code);
    let framing = match (no_body, chunked, te, length) {
        (true, ..) => Framing::Length(0),
        (false, true, _, _) => Framing::Chunked,
        (false, false, true, _) => Framing::UntilClose,
        (false, false, false, Some(n)) => Framing::Length(n),
        (false, false, false, None) => Framing::UntilClose,
    };
    let upstream_close = connection.iter().any(|v| contains_token(v, "close")) || version == 0;
    let mut out = Vec::with_capacity(head.len() + 32);
    out.extend_from_slice(format!("HTTP/1.1 {code} {}\r\n", r.reason.unwrap_or("")).as_bytes());
    let upgrade = code == 101;
    let mut peer = MetaId::NONE;
    for h in r.headers.iter() {
        let n = h.name.to_ascii_lowercase();
        let named = connection.iter().any(|v| contains_token(v, &n));
        if let (Mx::Outbound { istio, .. }, true) = (mx, n.as_bytes() == exchange::HEADER) {
            // The first value, as HTTP/2's header list gives it.
            if peer == MetaId::NONE {
                peer = istio.peer_metadata(Some(h.value));
            }
        }
        let keep = match n.as_str() {
            _ if mx.drops(&n) => false,
            "transfer-encoding" => framing == Framing::Chunked,
            "upgrade" => upgrade,
            _ => !hop_by_hop(&n) && !named,
        };
        if keep {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    let fields_end = out.len();
    mx.write(&mut out, false);
    let own = (fields_end, out.len());
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if close || framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Response {
        code,
        head: out,
        framing,
        reusable: !upstream_close && framing != Framing::UntilClose,
        peer,
        own,
        ended: false,
    })
}

/// Forwards one routed request and relays its response, trying it again as the route's
/// `retry_policy` says (the same decisions as HTTP/2's, `Again::wanted_by`). `Err` carries the
/// local answer and, unless the response head was already written (`None`: the connection can
/// only close), whether the request's body was read to its end.
async fn forward<C: crate::io::Conn>(
    c: &mut Down<C>,
    l: &TripleListener,
    req: &Request,
    pool: &Rc<Pool>,
    (deadline, expected_ms, rid, tail): (Option<Instant>, Option<u64>, Option<String>, &[u8]),
    policy: Option<crate::route::RetryPolicy>,
    (mirrors, respond, cookies): Answer<'_>,
) -> Result<Next, (Local, Option<bool>)> {
    let mx = Mx::of(l, c.seen.lg.as_deref());
    // From here to the response head: `x-envoy-upstream-service-time`.
    let sent = Instant::now();
    let head = request_head(
        req,
        c.scheme,
        || rid.clone().unwrap_or_default(),
        (expected_ms, tail),
        mx,
    );
    let mirroring = mirrors.iter().any(Option::is_some);
    let mut mirrored = !mirroring;
    let mut body = match req.framing == Framing::Length(0) {
        true => Body::Held(Vec::new()),
        false => Body::Unread,
    };
    let mut retry = policy.map(crate::route::Retry::new);
    let mut slot = RetrySlot {
        breaker: &pool.retries,
        taken: false,
    };
    let (mut link, active, resp, mut rbuf) = loop {
        let got = one_try(
            c,
            req,
            pool,
            (&head, rid.as_deref(), expected_ms, tail),
            &mut body,
            &mut retry,
            deadline,
            mirroring,
            mx,
        )
        .await;
        if !mirrored {
            // The shadow copies go once the request was read (its body held for them).
            mirrored = true;
            let shadow_deadline = deadline.unwrap_or_else(|| {
                Instant::now() + Duration::from_millis(super::conn::MIRROR_TIMEOUT_MS_DEFAULT)
            });
            for m in mirrors.iter().flatten() {
                match &body {
                    Body::Held(b) => mirror(
                        m,
                        shadow_head(&head),
                        b.clone(),
                        shadow_deadline,
                        m.alpn(&c.alpn).clone(),
                    ),
                    // A body over RETRY_BODY_BYTES_MAX, or one not read whole.
                    _ => m.stats.inc(m.ids.rq_mirror_dropped),
                }
            }
        }
        let again = match &got {
            Ok((_, _, resp, _)) if resp.code >= 200 => Some(Again::Answer {
                grpc: None,
                http: Some(u32::from(resp.code)),
            }),
            Ok(_) => None,
            Err(Failed::Connect) => Some(Again::ConnectFailure),
            Err(Failed::Lost(_)) => Some(Again::Reset),
            Err(Failed::TryTimeout) => {
                pool.stats.inc(pool.ids.rq_per_try_timeout);
                Some(Again::TryTimeout)
            }
            Err(Failed::Final(_)) => None,
        };
        if let Some(r) = retry.as_mut() {
            let wanted = again.is_some_and(|a| a.wanted_by(&r.policy));
            if wanted && !r.left() {
                pool.stats.inc(pool.ids.rq_retry_limit_exceeded);
            } else if wanted && matches!(body, Body::Held(_)) && slot.take(pool) {
                // Envoy's back-off first (`retry_back_off`), within the request's deadline;
                // the failed try's connection is let go before.
                let wait = r.back_off(pool.dice.roll());
                pool.stats.inc(pool.ids.rq_retry);
                r.done += 1;
                tracing::debug!(cluster = %pool.lb.name, ?again, ?wait, "HTTP/1.1 request sent again (retry_policy)");
                drop(got);
                if !wait.is_zero() {
                    let until = Instant::now() + wait;
                    let until = deadline.map_or(until, |d| d.min(until));
                    shard::monoio::time::sleep_until(until.into()).await;
                }
                continue;
            } else if !wanted && r.done > 0 && got.is_ok() {
                pool.stats.inc(pool.ids.rq_retry_success);
            }
        }
        match got {
            Ok(x) => break x,
            Err(f) => {
                // Envoy's router words a reset "retried and the latest" once it retried.
                let retried = retry.as_ref().is_some_and(|r| r.done > 0);
                return Err((f.local(retried), Some(body.read())));
            }
        }
    };
    c.seen.code = resp.code;
    let mut resp = resp;
    let service_ms = sent.elapsed().as_millis() as u64;
    resp.head = super::stamp::head(&resp.head, resp.own, &l.stamp, Some(service_ms));
    if let Some(g) = cookies {
        // One set per host picked (Envoy's router), before the route's mutations.
        let picks = 1 + retry.as_ref().map_or(0, |r| r.done);
        let end = resp.head.len().saturating_sub(2);
        let mut lines = Vec::new();
        g.each(picks, |v| {
            lines.extend_from_slice(b"set-cookie: ");
            lines.extend_from_slice(v);
            lines.extend_from_slice(b"\r\n");
        });
        resp.head.splice(end..end, lines);
    }
    if let Some(r) = respond {
        let elapsed = c.seen.started.map_or(Duration::ZERO, |s| s.elapsed());
        let facts = super::mutate::Facts {
            upstream: c.seen.upstream,
            response_code: Some(u32::from(resp.code)),
            duration: elapsed,
            bytes_received: c.seen.rx,
            ..super::mutate::Facts::request("HTTP/1.1", SystemTime::now() - elapsed, c.caller)
        };
        resp.head = super::mutate::response_head(&resp.head, r, &facts);
    }
    if !c.authz_response.is_empty() {
        // An OK authorization's response headers, after the route's (Envoy's ext_authz
        // filter encodes after the router's mutations were made).
        authz_response_head(&mut resp.head, &c.authz_response);
    }
    if let Some(lg) = c.seen.lg.as_mut() {
        lg.keep(Part::Response, |n| response_field(&resp.head, n));
        if let Mx::Outbound { .. } = mx {
            lg.mx.peer = resp.peer;
        }
        // Outbound: the upstream connection's TLS names both principals.
        if let Some(i) = l.istio.as_ref().filter(|i| !i.inbound()) {
            lg.upstream_peer = link.istio_peer(i);
        }
    }
    let (r, _) = c.s.write_all(resp.head.clone()).await;
    if r.is_err() {
        c.seen.flags = c.seen.flags | Flags::DOWNSTREAM_CONNECTION_TERMINATION;
        return Ok(Next::Close);
    }
    let mut link = match link {
        Link::H1(up) if resp.code == 101 && req.websocket => {
            return Ok(Next::Tunnel(up, rbuf, active));
        }
        l => l,
    };
    let relayed = async {
        let c = &mut *c;
        match &mut link {
            Link::H2(s) => {
                s.relay(&mut c.s, resp.framing, resp.ended, &mut c.seen.tx)
                    .await
            }
            Link::H1(up) => {
                relay_body(
                    &mut up.s,
                    &mut rbuf,
                    &mut c.s,
                    resp.framing,
                    &mut None,
                    &mut c.seen.tx,
                )
                .await
            }
        }
    };
    let relayed = match deadline {
        Some(d) => shard::monoio::time::timeout_at(d.into(), relayed)
            .await
            .unwrap_or(Err(BodyError::Timeout)),
        None => relayed.await,
    };
    if let Err(e) = relayed {
        c.seen.flags = c.seen.flags
            | match e {
                BodyError::Timeout => Flags::UPSTREAM_REQUEST_TIMEOUT,
                BodyError::Write => Flags::DOWNSTREAM_CONNECTION_TERMINATION,
                BodyError::Read | BodyError::Malformed => Flags::UPSTREAM_CONNECTION_TERMINATION,
            };
        let e = match e {
            BodyError::Timeout => Local::Timeout,
            BodyError::Write | BodyError::Read | BodyError::Malformed => Local::BadGateway,
        };
        return Err((e, None));
    }
    match link {
        Link::H1(up) if resp.reusable && rbuf.is_empty() => put_idle(pool, up),
        // A stream that ended both ways goes without a reset.
        _ => {}
    }
    Ok(match req.close || resp.framing == Framing::UntilClose {
        true => Next::Close,
        false => Next::KeepAlive,
    })
}

/// The request head `head` ([`request_head`]) as a shadow copy gets it: `-shadow` appended to
/// its host (before the port, if any), as Envoy does.
fn shadow_head(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 7);
    let Some(at) = head.windows(8).position(|w| w == b"\r\nhost: ") else {
        return head.to_vec();
    };
    let start = at + 8;
    let end = start + head[start..].iter().position(|&b| b == b'\r').unwrap_or(0);
    let v = &head[start..end];
    let host_end = match v.iter().rposition(|&b| b == b':') {
        Some(i) if i + 1 < v.len() && v[i + 1..].iter().all(u8::is_ascii_digit) => start + i,
        _ => end,
    };
    out.extend_from_slice(&head[..host_end]);
    out.extend_from_slice(b"-shadow");
    out.extend_from_slice(&head[host_end..]);
    out
}

/// Sends a shadow copy (`request_mirror_policies`) of a request, `head` and `body`, to an
/// endpoint of `pool` on a connection of its own, fire and forget: its response is read and
/// dropped, and nothing of it reaches the caller; bounded by `deadline` and the cluster's
/// shadow copies in flight on this shard (beyond: `upstream_rq_mirror_dropped`).
fn mirror(
    pool: &Rc<Pool>,
    head: Vec<u8>,
    body: Vec<u8>,
    deadline: Instant,
    alpn: crate::io::tls::AlpnOverride,
) {
    if pool.lb.original_destination || !pool.mirrors.try_start() {
        pool.stats.inc(pool.ids.rq_mirror_dropped);
        return;
    }
    pool.stats.inc(pool.ids.rq_mirror);
    let pool = pool.clone();
    shard::monoio::spawn(async move {
        let send = async {
            let lb = &pool.lb;
            let i = lb.pick_available(|_| Availability::Ready)?;
            let addr = lb.slot(i).addr;
            let mut s = match lb.tls(i) {
                Some(t) => UpStream::Tls(
                    crate::io::tls::connect(addr, &lb.sources, &t, alpn.as_deref())
                        .await
                        .ok()?,
                ),
                None => UpStream::Plain(
                    crate::io::intercept::connect(addr, &lb.sources)
                        .await
                        .ok()?,
                ),
            };
            // In flight until its response head came (or its deadline cut it).
            let _active = InFlight::start(&pool);
            let (r, _) = s.write_all(head).await;
            r.ok()?;
            if !body.is_empty() {
                let (r, _) = s.write_all(body).await;
                r.ok()?;
            }
            let mut rbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
            read_head(&mut s, &mut rbuf, Duration::ZERO, false)
                .await
                .ok()
        };
        let _ = shard::monoio::time::timeout_at(deadline.into(), send).await;
        pool.mirrors.ended();
    });
}

/// A request's body as another try needs it.
enum Body {
    /// Not read from the caller yet.
    Unread,
    /// Sent once, held for another try (a request without body: empty).
    Held(Vec<u8>),
    /// Sent whole, not held (no retry policy, or over [`RETRY_BODY_BYTES_MAX`], as Envoy
    /// gives up retrying a request over its buffer limit).
    Read,
    /// Sending it failed part-way: no other try.
    Partial,
}

impl Body {
    /// Whether the caller's body was read to its end.
    fn read(&self) -> bool {
        matches!(self, Body::Held(_) | Body::Read)
    }
}

/// Why one try gave no response to relay.
enum Failed {
    /// Connecting failed (every endpoint tried).
    Connect,
    /// The upstream closed or broke the connection before the response head.
    Lost(Reset),
    /// The route's `per_try_timeout_ms` passed before the response head.
    TryTimeout,
    /// Not a failure another try could mend: answered as it says.
    Final(Local),
}

impl Failed {
    fn local(self, retried: bool) -> Local {
        match self {
            Failed::Connect => Local::ConnectFailure { retried },
            Failed::Lost(why) => Local::UpstreamReset { retried, why },
            Failed::TryTimeout => Local::Timeout,
            Failed::Final(l) => l,
        }
    }
}

/// This request's slot among the retries in flight to the cluster (`max_retries`), taken at
/// its first retry and given back when the request ends (dropped: also when cut short).
struct RetrySlot<'a> {
    breaker: &'a crate::cluster::RetryBreaker,
    taken: bool,
}

impl RetrySlot<'_> {
    /// Whether the request may be retried (its slot taken now or before); counts an overflow.
    fn take(&mut self, pool: &Pool) -> bool {
        if !self.breaker.admit(self.taken, pool.retry_load()) {
            pool.stats.inc(pool.ids.rq_retry_overflow);
            return false;
        }
        self.taken = true;
        true
    }
}

impl Drop for RetrySlot<'_> {
    fn drop(&mut self) {
        if self.taken {
            self.breaker.ended();
        }
    }
}

/// One try: a connection (an HTTP/2 stream), the request head and body (from the caller the
/// first time, held after), and the response head (interim ones dropped). Sending is bounded
/// by the request's deadline; the response head also by `per_try_timeout_ms` from the end of
/// the request, as Envoy's per-try timer.
#[allow(clippy::too_many_arguments)]
async fn one_try<C: crate::io::Conn>(
    c: &mut Down<C>,
    req: &Request,
    pool: &Rc<Pool>,
    (head, rid, expected_ms, tail): (&[u8], Option<&str>, Option<u64>, &[u8]),
    body: &mut Body,
    retry: &mut Option<crate::route::Retry>,
    deadline: Option<Instant>,
    keep_body: bool,
    mx: Mx<'_>,
) -> Result<(Link, Option<InFlight>, Response, BytesMut), Failed> {
    let mut rbuf = BytesMut::new();
    // Set once the request has a connection (an HTTP/2 stream opened); dropped with the try.
    let mut active = None;
    let send = async {
        let speak = Speak::of(pool, req);
        // A connection that takes no new stream by the time this one opens (a GOAWAY, closed
        // meanwhile): another one, nothing was sent.
        for _ in 0..CONNECT_ATTEMPTS_MAX {
            let mut link = upstream(c, pool, retry.as_ref(), speak)
                .await
                .map_err(|e| match e {
                    Local::ConnectFailure { .. } => Failed::Connect,
                    e => Failed::Final(e),
                })?;
            if let (Some(r), Some(i)) = (retry.as_mut(), link.slot()) {
                r.tried(i);
            }
            let up = match &mut link {
                Link::H2(s) => {
                    let added = (rid, expected_ms, tail);
                    let keep = retry.is_some() || keep_body;
                    match send_h2(c, req, s, (added, mx), body, (keep, pool, &mut active)).await {
                        Err(_) if !s.opened() => continue,
                        sent => sent?,
                    }
                    return Ok(link);
                }
                Link::H1(up) => up,
            };
            // Envoy's connection pool counts a request to the cluster once it has a
            // connection for it.
            active = Some(InFlight::start(pool));
            rbuf.reserve(READ_CHUNK_BYTES);
            let (r, _) = up.s.write_all(head.to_vec()).await;
            r.map_err(|_| Failed::Lost(Reset::Termination))?;
            match body {
                Body::Unread => {
                    *body = Body::Partial;
                    let mut hold = (retry.is_some() || keep_body).then(Vec::new);
                    relay_body(
                        &mut c.s,
                        &mut c.buf,
                        &mut up.s,
                        req.framing,
                        &mut hold,
                        &mut c.seen.rx,
                    )
                    .await
                    .map_err(|e| match e {
                        BodyError::Write => Failed::Lost(Reset::Termination),
                        BodyError::Read | BodyError::Malformed | BodyError::Timeout => {
                            Failed::Final(Local::BadRequest)
                        }
                    })?;
                    *body = hold.map_or(Body::Read, Body::Held);
                }
                Body::Held(b) if !b.is_empty() => {
                    let (r, _) = up.s.write_all(b.clone()).await;
                    r.map_err(|_| Failed::Lost(Reset::Termination))?;
                }
                _ => {}
            }
            return Ok(link);
        }
        Err(Failed::Lost(Reset::RemoteRefused))
    };
    let mut link = within(deadline, send, || Failed::Final(Local::Timeout)).await?;
    let per_try = retry
        .as_ref()
        .and_then(|r| r.policy.per_try_timeout)
        .map(|t| Instant::now() + t);
    let (try_deadline, cut) = match (per_try, deadline) {
        (Some(p), Some(d)) if d <= p => (Some(d), Failed::Final(Local::Timeout)),
        (Some(p), _) => (Some(p), Failed::TryTimeout),
        (None, d) => (d, Failed::Final(Local::Timeout)),
    };
    let read = async {
        let up = match &mut link {
            Link::H2(s) => return Ok((s.response(req, mx).await?, BytesMut::new())),
            Link::H1(up) => up,
        };
        loop {
            let n = read_head(&mut up.s, &mut rbuf, Duration::ZERO, false)
                .await
                .map_err(|e| match e {
                    HeadError::Closed => Failed::Lost(Reset::Termination),
                    _ => Failed::Final(Local::BadGateway),
                })?;
            let resp = parse_response(&rbuf[..n], req.method == "HEAD", req.close, mx)
                .map_err(Failed::Final)?;
            rbuf.advance(n);
            // Interim responses (100 Continue, 103) are dropped: a caller that asked got its
            // 100 from ringside on arrival.
            if resp.code != 101 && (100..200).contains(&resp.code) {
                continue;
            }
            return Ok((resp, std::mem::take(&mut rbuf)));
        }
    };
    let (resp, rbuf) = within(try_deadline, read, || cut).await?;
    Ok((link, active, resp, rbuf))
}

/// Sends a request on an HTTP/2 stream: HEADERS (opening it), then its body (from the
/// caller, a copy held when `keep`; or held from a try before).
async fn send_h2<C: crate::io::Conn>(
    c: &mut Down<C>,
    req: &Request,
    s: &mut h2::Stream,
    (added, mx): ((Option<&str>, Option<u64>, &[u8]), Mx<'_>),
    body: &mut Body,
    (keep, pool, active): (bool, &Rc<Pool>, &mut Option<InFlight>),
) -> Result<(), Failed> {
    let empty = matches!(body, Body::Held(b) if b.is_empty()) || req.framing == Framing::Length(0);
    s.open(req, (c.scheme, mx), added, empty).await?;
    // In flight from the stream's HEADERS, as Envoy's HTTP/2 pool counts a stream.
    *active = Some(InFlight::start(pool));
    if empty {
        return Ok(());
    }
    let mut hold = keep.then(Vec::new);
    let from_caller = matches!(body, Body::Unread);
    if from_caller {
        *body = Body::Partial;
    }
    s.send_body(
        (&mut c.s, &mut c.buf),
        req.framing,
        body,
        &mut hold,
        &mut c.seen.rx,
    )
    .await?;
    if from_caller {
        *body = hold.map_or(Body::Read, Body::Held);
    }
    Ok(())
}

/// `f`, or `timed_out()` once `deadline` passes.
async fn within<T>(
    deadline: Option<Instant>,
    f: impl std::future::Future<Output = Result<T, Failed>>,
    timed_out: impl FnOnce() -> Failed,
) -> Result<T, Failed> {
    match deadline {
        Some(d) => shard::monoio::time::timeout_at(d.into(), f)
            .await
            .unwrap_or_else(|_| Err(timed_out())),
        None => f.await,
    }
}

#[derive(Debug)]
enum BodyError {
    Read,
    Write,
    Malformed,
    /// The request's deadline passed.
    Timeout,
}

/// Relays one body framed by `framing` from `from` (after what `buf` already holds) to `to`,
/// through `buf`: bytes read beyond the body stay in `buf` (a pipelined next request). With
/// `hold` a copy of what is relayed is kept there while it is at most
/// [`RETRY_BODY_BYTES_MAX`] (beyond, `hold` becomes `None`). Adds the body's bytes (a chunked
/// body's data, without its framing) to `count` as they go.
async fn relay_body<R: AsyncReadRent, W: AsyncWriteRent>(
    from: &mut R,
    buf: &mut BytesMut,
    to: &mut W,
    framing: Framing,
    hold: &mut Option<Vec<u8>>,
    count: &mut u64,
) -> Result<(), BodyError> {
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunks = Chunks::default();
    while left > 0 {
        if buf.is_empty() {
            buf.reserve(READ_CHUNK_BYTES);
            let (r, b) = crate::io::read_append(from, std::mem::take(buf)).await;
            *buf = b;
            match r {
                Ok(0) if framing == Framing::UntilClose => return Ok(()),
                Ok(0) | Err(_) => return Err(BodyError::Read),
                Ok(_) => {}
            }
        }
        let take = match framing {
            Framing::Length(_) => (buf.len() as u64).min(left) as usize,
            Framing::UntilClose => buf.len(),
            Framing::Chunked => {
                let data = chunks.data;
                let (n, done) = chunks.feed(buf).map_err(|_| BodyError::Malformed)?;
                *count += chunks.data - data;
                if done {
                    left = 0;
                }
                n
            }
        };
        if framing != Framing::Chunked {
            *count += take as u64;
        }
        if let Framing::Length(_) = framing {
            left -= take as u64;
        }
        let piece = buf.split_to(take).freeze();
        if let Some(h) = hold {
            match h.len() + piece.len() <= RETRY_BODY_BYTES_MAX {
                true => h.extend_from_slice(&piece),
                false => *hold = None,
            }
        }
        let (r, _) = to.write_all(piece).await;
        r.map_err(|_| BodyError::Write)?;
    }
    Ok(())
}

/// Where a chunked body's framing is (RFC 9112 7.1): it is relayed as it came, and this finds
/// where it ends.
#[derive(Default)]
struct Chunks {
    state: ChunkState,
    /// Bytes of the current size or trailer line.
    line: usize,
    /// Data bytes (the chunks' contents) fed so far.
    data: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum ChunkState {
    /// In a chunk-size line: its value so far, whether a digit came, whether extensions began.
    #[default]
    SizeStart,
    Size(u64, bool),
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// In a trailer section line; `true`: at its start (an empty line ends the body).
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

impl Chunks {
    /// Consumes the start of `b` up to the body's end: (bytes of it that belong to the body,
    /// whether the body ended there).
    fn feed(&mut self, b: &[u8]) -> Result<(usize, bool), ()> {
        self.feed_data(b, &mut |_| {})
    }

    /// [`Chunks::feed`], handing each run of chunk data to `data` as it is passed.
    fn feed_data(&mut self, b: &[u8], data: &mut dyn FnMut(&[u8])) -> Result<(usize, bool), ()> {
        use ChunkState as S;
        let mut i = 0;
        while i < b.len() {
            let x = b[i];
            self.state = match self.state {
                S::Done => return Ok((i, true)),
                S::Data(n) => {
                    let take = (n as usize).min(b.len() - i);
                    data(&b[i..i + take]);
                    i += take;
                    self.data += take as u64;
                    let rest = n - take as u64;
                    self.state = if rest == 0 { S::DataCr } else { S::Data(rest) };
                    continue;
                }
                S::DataCr if x == b'\r' => S::DataLf,
                S::DataLf if x == b'\n' => S::SizeStart,
                S::DataCr | S::DataLf => return Err(()),
                S::SizeStart | S::Size(..) => {
                    let (v, digit) = match self.state {
                        S::Size(v, d) => (v, d),
                        _ => (0, false),
                    };
                    match (x as char).to_digit(16) {
                        Some(d) if v >> 60 == 0 => S::Size(v << 4 | u64::from(d), true),
                        Some(_) => return Err(()),
                        None if !digit => return Err(()),
                        None if x == b'\r' => S::SizeLf(v),
                        None if x == b';' || x == b' ' || x == b'\t' => S::Ext(v),
                        None => return Err(()),
                    }
                }
                S::Ext(v) if x == b'\r' => S::SizeLf(v),
                S::Ext(v) => S::Ext(v),
                S::SizeLf(0) if x == b'\n' => S::Trailer(true),
                S::SizeLf(v) if x == b'\n' => S::Data(v),
                S::SizeLf(_) => return Err(()),
                S::Trailer(start) if x == b'\r' => S::TrailerLf(start),
                S::Trailer(_) => S::Trailer(false),
                S::TrailerLf(true) if x == b'\n' => {
                    i += 1;
                    self.state = S::Done;
                    return Ok((i, true));
                }
                S::TrailerLf(false) if x == b'\n' => S::Trailer(true),
                S::TrailerLf(_) => return Err(()),
            };
            self.line = match self.state {
                S::SizeStart | S::Trailer(true) | S::Data(_) => 0,
                _ => self.line + 1,
            };
            if self.line > CHUNK_LINE_MAX {
                return Err(());
            }
            i += 1;
        }
        Ok((i, self.state == S::Done))
    }
}

/// After a 101 to a WebSocket upgrade: bytes both ways until either side closes (what each
/// side sent ahead, still in its buffer, first).
async fn tunnel<C: crate::io::Conn>(c: Down<C>, up: Up, rbuf: BytesMut) {
    match up.s {
        UpStream::Plain(u) => tunnel_over(c, u, rbuf).await,
        UpStream::Tls(u) => tunnel_over(c, u, rbuf).await,
    }
}

async fn tunnel_over<C: crate::io::Conn, U: crate::io::Conn>(c: Down<C>, up: U, rbuf: BytesMut) {
    let (mut dr, mut dw) = c.s.into_split();
    let (mut ur, mut uw) = up.into_split();
    shard::monoio::select! {
        _ = copy(c.buf, &mut dr, &mut uw) => {}
        _ = copy(rbuf, &mut ur, &mut dw) => {}
    }
}

async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(pending: BytesMut, r: &mut R, w: &mut W) {
    let mut buf = pending;
    loop {
        if !buf.is_empty() {
            let (res, b) = w.write_all(buf).await;
            if res.is_err() {
                return;
            }
            buf = b;
            buf.clear();
        }
        buf.reserve(READ_CHUNK_BYTES);
        let (res, b) = crate::io::read_append(r, buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => {
                let _ = w.shutdown().await;
                return;
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_end() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nx-t: 1\r\n\r\nGET / HTTP/1.1\r\n";
        let mut c = Chunks::default();
        let (n, done) = c.feed(body).unwrap();
        assert!(done);
        assert_eq!(&body[n..], b"GET / HTTP/1.1\r\n");
        // Byte by byte, the same end.
        let mut c = Chunks::default();
        let mut total = 0;
        for (i, b) in body.iter().enumerate() {
            let (n, done) = c.feed(std::slice::from_ref(b)).unwrap();
            total += n;
            if done {
                assert_eq!(i + 1, total);
                break;
            }
        }
        assert_eq!(total, body.len() - b"GET / HTTP/1.1\r\n".len());
        for bad in [
            &b"x\r\n"[..],
            b"4\r\nWikiX\r\n",
            b"\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(Chunks::default().feed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_are_framed_and_cleaned_as_envoy_does() {
        let r = parse_request(b"POST /a/b?x=1 HTTP/1.1\r\nHost: svc:80\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nX-App: v\r\n\r\n").unwrap();
        assert_eq!(r.authority, "svc:80");
        assert_eq!(r.path, "/a/b?x=1");
        assert_eq!(r.framing, Framing::Chunked);
        assert!(r.expect_continue && !r.close);
        assert_eq!(r.fields, vec![("x-app".to_string(), b"v".to_vec())]);
        // Only `100-continue` is answered and removed (any case, without a body too); another
        // expectation goes on as it came, as Envoy's connection manager leaves it.
        let r =
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").unwrap();
        assert!(r.expect_continue && r.fields.is_empty());
        let r =
            parse_request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: x\r\n\r\n")
                .unwrap();
        assert!(!r.expect_continue);
        assert_eq!(r.fields[1], ("expect".to_string(), b"x".to_vec()));
        let cl_te = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse_request(cl_te), Err(Local::BadRequest)));
        assert!(
            matches!(
                parse_request(b"GET / HTTP/1.1\r\n\r\n"),
                Err(Local::BadRequest)
            ),
            "no Host"
        );
        let r = parse_request(b"GET http://h:8/p HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(
            (r.authority.as_str(), r.path.as_str(), r.close),
            ("h:8", "/p", true)
        );
        assert!(
            matches!(
                parse_request(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"),
                Err(Local::UpgradeRequired)
            ),
            "HTTP/1.0, as Envoy without accept_http_10"
        );
        let many: String = (0..=HEADERS_MAX).map(|i| format!("x-{i}: 1\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert!(matches!(
            parse_request(req.as_bytes()),
            Err(Local::TooLarge)
        ));
        let ws = parse_request(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert!(ws.websocket && !ws.other_upgrade);
    }

    #[test]
    fn a_head_that_cannot_be_http_is_refused_before_it_ends() {
        assert!(partial_ok(b"GET /a HTTP/1.1\r\nHost: x", true));
        assert!(partial_ok(b"GE", true));
        assert!(!partial_ok(b"hello\n", true));
        assert!(!partial_ok(b"GET / HTTP/1.1\r\nbad header\r\n", true));
        assert!(partial_ok(b"HTTP/1.1 200 O", false));
        assert!(!partial_ok(b"SSH-2.0-OpenSSH\r\n", false));
    }

    #[test]
    fn responses_without_body_and_until_close() {
        let r = parse_response(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            false,
            false,
            Mx::Off,
        )
        .unwrap();
        assert_eq!(r.framing, Framing::Length(0));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            true,
            false,
            Mx::Off,
        )
        .unwrap();
        assert_eq!(r.framing, Framing::Length(0), "HEAD");
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", false, false, Mx::Off).unwrap();
        assert_eq!(r.framing, Framing::UntilClose);
        assert!(!r.reusable);
        assert!(r.head.ends_with(b"connection: close\r\n\r\n"));
    }
}

// === the HTTP authorization service (ext_authz `http_service`) ===

/// Asks the HTTP authorization service of `x` (its cluster's `pool`) with the check request
/// `head` (`HttpCheck::request_head`): over an idle keep-alive HTTP/1.1 connection of the
/// pool to an endpoint the balancer picks, else a new one (another endpoint, up to
/// [`CONNECT_ATTEMPTS_MAX`], when connecting fails), within the filter's timeout; the answer
/// as `HttpCheck::answer` reads it. Connect failure, a reset or a malformed answer is
/// `Transport`, an answer larger than `EXT_AUTHZ_RESPONSE_BYTES_MAX` `BadResponse`.
pub async fn http_check(
    pool: &Rc<Pool>,
    x: &crate::filter::ext_authz::ExtAuthz,
    head: bytes::Bytes,
) -> Result<crate::filter::ext_authz::Answer, crate::filter::ext_authz::CheckError> {
    use crate::filter::ext_authz::CheckError;
    let Some(service) = &x.http else {
        return Err(CheckError::Transport);
    };
    let ask = async {
        let (status, fields, body) = http_check_exchange(pool, head).await?;
        service.answer(status, fields, body)
    };
    match shard::monoio::time::timeout(x.timeout, ask).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::Timeout),
    }
}

/// One check exchange: (status, fields with lower-case names, body).
#[allow(clippy::type_complexity)]
async fn http_check_exchange(
    pool: &Rc<Pool>,
    head: bytes::Bytes,
) -> Result<(u16, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>), crate::filter::ext_authz::CheckError> {
    use crate::filter::ext_authz::CheckError;
    let lb = &pool.lb;
    let alpn = pool.alpn(&None).clone();
    let mut tried = [usize::MAX; CONNECT_ATTEMPTS_MAX];
    let mut up = None;
    for attempt in 0..CONNECT_ATTEMPTS_MAX {
        let Some(i) = lb.pick_available(|i| match tried.contains(&i) {
            true => Availability::Excluded,
            false => Availability::Ready,
        }) else {
            break;
        };
        tried[attempt] = i;
        let addr = lb.slot(i).addr;
        let tls = lb.tls(i);
        if let Some(u) = idle_connection(pool, addr, tls.is_some(), &alpn) {
            up = Some(u);
            break;
        }
        if let Some((s, tls_peer)) = dial(pool, addr, tls.as_deref(), alpn.as_deref()).await {
            up = Some(Up {
                s,
                addr,
                slot: Some(i),
                alpn: alpn.clone(),
                tls_peer,
                istio_peer: Default::default(),
            });
            break;
        }
    }
    let Some(mut up) = up else {
        return Err(CheckError::Transport);
    };
    // A check is a request to the authorizer's cluster (Envoy's async client goes through
    // its router), as a gRPC check is (`conn.rs`, `open_stream`), in flight until its answer
    // was read (or the filter's timeout cut it).
    let _active = InFlight::start(pool);
    let (r, _) = up.s.write_all(head).await;
    r.map_err(|_| CheckError::Transport)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let n = read_head(&mut up.s, &mut buf, Duration::ZERO, false)
        .await
        .map_err(|_| CheckError::Transport)?;
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut r = httparse::Response::new(&mut fields);
    if !matches!(r.parse(&buf[..n]), Ok(httparse::Status::Complete(_))) {
        return Err(CheckError::Transport);
    }
    let status = r.code.ok_or(CheckError::Transport)?;
    let mut close = r.version == Some(0);
    let (mut length, mut chunked) = (None::<u64>, false);
    let mut out = Vec::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = h.name.to_ascii_lowercase().into_bytes();
        match &name[..] {
            b"content-length" => {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            b"transfer-encoding" => chunked = contains_token(h.value, "chunked"),
            b"connection" => close |= contains_token(h.value, "close"),
            _ => {}
        }
        out.push((name, h.value.to_vec()));
    }
    buf.advance(n);
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let limit = crate::config::EXT_AUTHZ_RESPONSE_BYTES_MAX;
    let mut body = Vec::new();
    let mut chunks = Chunks::default();
    loop {
        // What is buffered: taken into the body as the framing says; done when it ends.
        let done = match (no_body, chunked, length) {
            (true, ..) => true,
            (false, true, _) => {
                let (used, ended) = chunks
                    .feed_data(&buf, &mut |d| body.extend_from_slice(d))
                    .map_err(|_| CheckError::Transport)?;
                buf.advance(used);
                ended
            }
            (false, false, Some(len)) => {
                let take = (len as usize - body.len()).min(buf.len());
                body.extend_from_slice(&buf[..take]);
                buf.advance(take);
                body.len() as u64 == len
            }
            (false, false, None) => {
                body.extend_from_slice(&buf);
                buf.clear();
                false
            }
        };
        if body.len() > limit {
            return Err(CheckError::BadResponse);
        }
        if done {
            break;
        }
        buf.reserve(READ_CHUNK_BYTES);
        let (res, b) = crate::io::read_append(&mut up.s, std::mem::take(&mut buf)).await;
        buf = b;
        match res {
            Ok(0) | Err(_) if length.is_none() && !chunked => {
                // A body until the close: it ended.
                close = true;
                break;
            }
            Ok(0) | Err(_) => return Err(CheckError::Transport),
            Ok(_) => {}
        }
    }
    if !close && buf.is_empty() {
        put_idle(pool, up);
    }
    Ok((status, out, body))
}

/// Makes an OK authorization's response header changes on a response head (as
/// `conn::apply_authz_headers` does on a header list).
fn authz_response_head(
    head: &mut Vec<u8>,
    headers: &[(crate::filter::ext_authz::HeaderAction, Vec<u8>, Vec<u8>)],
) {
    use crate::filter::ext_authz::HeaderAction as A;
    for (a, n, v) in headers {
        if n.starts_with(b":") {
            continue;
        }
        let present = response_field(head, n).is_some();
        let (drop, add) = match a {
            A::Add => (false, true),
            A::AddIfAbsent => (false, !present),
            A::Set => (true, true),
            A::OverwriteIfExists => (present, present),
            A::Append => (false, true),
        };
        if drop {
            remove_field(head, n);
        }
        if add {
            let end = head.len().saturating_sub(2);
            let mut line = Vec::with_capacity(n.len() + v.len() + 4);
            line.extend_from_slice(n);
            line.extend_from_slice(b": ");
            line.extend_from_slice(v);
            line.extend_from_slice(b"\r\n");
            head.splice(end..end, line);
        }
    }
}

/// Removes every field named `name` (lower case) from a response head.
fn remove_field(head: &mut Vec<u8>, name: &[u8]) {
    let mut out = Vec::with_capacity(head.len());
    for (i, line) in head.split_inclusive(|&b| b == b'\n').enumerate() {
        let named = i > 0
            && line
                .iter()
                .position(|&b| b == b':')
                .is_some_and(|c| line[..c].eq_ignore_ascii_case(name));
        if !named {
            out.extend_from_slice(line);
        }
    }
    *head = out;
}
