//! One listener on one shard: its connection context, the accept loop, and the serving of
//! each accepted connection by the listener's protocol (with connection and drain counts).

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use shard::monoio::net::TcpStream;
use shard::{Event, Notify};

use crate::config::Protocol;
use crate::filter::dubbo::downstream::{self, DubboListener};
use crate::filter::tcp::{self as tcp_proxy, TcpProxy};
use crate::filter::{chain, Drain, Latest, ListenerStatIds};
use crate::stats::ShardStats;

/// Pause after an accept error such as EMFILE, so a full fd table does not spin the shard.
pub const ACCEPT_ERROR_BACKOFF_MS: u64 = 10;

/// One listener's connections on one shard, across the contexts a config update gives it:
/// how many are open (`connections_per_shard_max`), and the drain they follow.
#[derive(Default)]
pub struct Connections {
    pub(super) open: Cell<u32>,
    /// Replaced by a fresh one when a drained shard resumes.
    pub(super) drain: Latest<Drain>,
    /// Of the current drain: connections that ended, and those closed at its deadline.
    pub(super) drained: Cell<u64>,
    pub(super) closed_at_deadline: Cell<u64>,
    /// Notified when the last open connection ends.
    pub(super) none_open: Notify,
}

impl Connections {
    pub fn drain(&self) -> Rc<Drain> {
        self.drain.get()
    }
}

/// What every connection of one listener on one shard needs.
pub struct ListenerCtx {
    pub name: String,
    pub protocol: Protocol,
    pub connections_max: u32,
    pub stats: ShardStats,
    pub ids: ListenerStatIds,
    /// Set for `dubbo` listeners.
    pub dubbo: Option<Rc<DubboListener>>,
    /// Set for `triple` listeners.
    pub triple: Option<Rc<crate::filter::triple::TripleListener>>,
    /// Set for `tcp` listeners.
    pub tcp: Option<Rc<TcpProxy>>,
    /// This listener's connections on this shard (shared by its successive contexts).
    pub conns: Rc<Connections>,
    /// `original_destination` listeners: the `virtual_listeners` connections are handed to by
    /// original destination, exact addresses first (set after every config update).
    pub virtuals: Latest<[Virtual]>,
    /// Listeners with `filter_chains`: the chains and the listeners that serve them (set after
    /// every config update).
    pub chains: Latest<Chains>,
    /// `tls`: connections are TLS (STRICT) or, PERMISSIVE, TLS when they start with a TLS
    /// record.
    pub tls: Option<std::sync::Arc<crate::io::tls::ServerTls>>,
    /// `rbac`: a connection it denies is closed before its protocol reads a byte.
    pub rbac: Option<crate::filter::rbac::Rbac>,
    /// tcp listeners' `ext_authz` (the network filter): a connection waits for the
    /// authorizer's answer before its upstream connect; after the first `after_rbac` rbac
    /// filters, before the rest.
    pub ext_authz: Option<crate::filter::ext_authz::ExtAuthz>,
    /// Its Check calls' client (refreshed by every config update: the cluster's pool).
    pub authz_client: std::cell::RefCell<Option<Rc<dyn crate::filter::ext_authz::CheckClient>>>,
}

/// A listener's filter chains as its connections are matched against them.
#[derive(Default)]
pub struct Chains {
    pub matches: Vec<chain::Match>,
    /// Per chain in `matches`: the virtual listener that serves it (`None`: unserved).
    pub targets: Vec<Option<Rc<Latest<ListenerCtx>>>>,
    /// The default chain, if the listener has one.
    pub default: Option<Option<Rc<Latest<ListenerCtx>>>>,
    pub tls_inspector: Option<crate::config::Inspector>,
    pub http_inspector: Option<crate::config::Inspector>,
    /// Whether any chain matches on the transport protocol, on application protocols.
    pub needs: (bool, bool),
}

impl Chains {
    pub fn is_empty(&self) -> bool {
        self.matches.is_empty() && self.default.is_none()
    }
}

/// Hands `down` to the virtual listener of the filter chain it matches (`l` has chains, `t`
/// is its tcp side); closes it when none matches or its chain is unserved.
async fn serve_chains(down: TcpStream, l: &ListenerCtx, t: &TcpProxy, chains: &Chains) {
    let dst = if t.original_destination {
        // A connection to the listener's own address matches too (Istio's blackhole chain).
        match crate::io::intercept::original_destination(&down, t.address) {
            Ok(a) | Err(crate::io::intercept::OrigDstError::Loop(a)) => Some(a),
            Err(_) => None,
        }
    } else {
        down.local_addr().ok()
    };
    let (Some(dst), Ok(src)) = (dst, down.peer_addr()) else {
        tracing::debug!(listener = %l.name, "no addresses for chain matching; closing");
        return;
    };
    let on = |i: &Option<crate::config::Inspector>, needed: bool| {
        needed && i.as_ref().is_some_and(|i| i.enabled_for(dst.port()))
    };
    let (tls, http) = (
        on(&chains.tls_inspector, chains.needs.0),
        on(&chains.http_inspector, chains.needs.1),
    );
    let inspected = if tls || http {
        tcp_proxy::inspect(&down, tls, http).await
    } else {
        tcp_proxy::Inspected {
            transport: "raw_buffer",
            application_protocol: None,
            hello: None,
        }
    };
    // A TLS connection's ALPN list (allocated for TLS connections only).
    let tls_alpn: Vec<&str> = inspected
        .hello
        .iter()
        .flat_map(|h| h.alpn.iter().map(String::as_str))
        .collect();
    let info = chain::ConnInfo {
        dst,
        src,
        server_name: inspected
            .hello
            .as_ref()
            .map_or(&b""[..], |h| &h.server_name),
        transport: inspected.transport,
        application_protocols: match &inspected.hello {
            Some(_) => &tls_alpn,
            None => inspected.application_protocol.as_slice(),
        },
    };
    let target = match chain::select(&chains.matches, &info) {
        Some(i) => chains.targets.get(i),
        None => chains.default.as_ref(),
    };
    match target {
        None => l.stats.inc(l.ids.cx_no_filter_chain),
        Some(None) => l.stats.inc(l.ids.cx_chain_unserved),
        Some(Some(v)) => {
            let v = v.get();
            if v.admit() {
                // Boxed: serve_connection brought us here. One allocation per connection.
                Box::pin(serve_connection(down, v)).await;
            }
        }
    }
}

/// A virtual listener (`bind: false`) as an `original_destination` listener sees it.
pub struct Virtual {
    pub address: SocketAddr,
    pub listener: Rc<Latest<ListenerCtx>>,
    /// A dubbo or triple virtual listener's `default_filter_chain` listener: the connections
    /// whose first bytes do not speak its protocol.
    pub catch_all: Option<Rc<Latest<ListenerCtx>>>,
}

/// The virtual listener a connection to `dst` belongs to: one with exactly that address, else
/// one on that port with an unspecified IP (0.0.0.0 or [::]). `virtuals` lists exact ones
/// first.
pub fn virtual_for(virtuals: &[Virtual], dst: SocketAddr) -> Option<&Virtual> {
    virtuals.iter().find(|v| {
        v.address.port() == dst.port()
            && (v.address.ip() == dst.ip() || v.address.ip().is_unspecified())
    })
}

impl tcp_proxy::Virtuals for Rc<[Virtual]> {
    fn protocol(&self, dst: SocketAddr) -> Option<(Protocol, bool, bool)> {
        virtual_for(self, dst).map(|v| {
            let l = v.listener.get();
            let http1 = l.triple.as_ref().is_some_and(|t| t.http1);
            (l.protocol, v.catch_all.is_some(), http1)
        })
    }

    fn hand_off(
        &self,
        dst: SocketAddr,
        down: TcpStream,
        spoken: bool,
    ) -> Pin<Box<dyn Future<Output = ()>>> {
        let v = virtual_for(self, dst).and_then(|v| match spoken {
            true => Some(v.listener.get()),
            false => v.catch_all.as_ref().map(|c| c.get()),
        });
        // Boxed: serve_connection may come back here (a virtual tcp listener). One allocation
        // per handed-off connection, none per request.
        Box::pin(async move {
            // Over the virtual listener's connections_per_shard_max: closed, as an accepting
            // listener does.
            if let Some(v) = v.filter(|v| v.admit()) {
                serve_connection(down, v).await;
            }
        })
    }
}

impl ListenerCtx {
    /// Whether one more connection fits under `connections_per_shard_max` on this shard (one
    /// over it is counted in `downstream_cx_overflow`; the caller closes it).
    pub fn admit(&self) -> bool {
        let fits = self.conns.open.get() < self.connections_max;
        if !fits {
            self.stats.inc(self.ids.cx_overflow);
        }
        fits
    }
}

/// Serves one accepted (or, for a virtual listener, handed-off) connection, admitted by
/// [`ListenerCtx::admit`], by the listener's protocol, and counts it: open, and whether it
/// ended during a drain (`downstream_cx_drained`) and at the drain's deadline
/// (`downstream_cx_drain_timeout`).
pub async fn serve_connection<C: crate::io::Conn>(stream: C, l: Rc<ListenerCtx>) {
    l.stats.inc(l.ids.cx_total);
    serve_counted(stream, l, None).await
}

/// What a hot-upgrade predecessor handed over with a connection.
pub enum Carried {
    /// Dubbo: the bytes it read and did not forward (the start of the next frame).
    Dubbo(Vec<u8>),
    /// TCP proxy: the upstream connection and what neither direction wrote yet.
    Tcp(tcp_proxy::Adopted),
}

/// Serves a connection a hot-upgrade predecessor handed over (admitted by
/// [`ListenerCtx::admit`]), starting with what it carried. Counted like an accepted one,
/// except in `downstream_cx_total`: the caller did not connect again.
pub async fn serve_adopted(stream: TcpStream, l: Rc<ListenerCtx>, carried: Carried) {
    serve_counted(stream, l, Some(carried)).await
}

async fn serve_counted<C: crate::io::Conn>(
    stream: C,
    l: Rc<ListenerCtx>,
    carried: Option<Carried>,
) {
    let _ = stream.set_keepalive(&crate::io::intercept::keepalive());
    let conns = l.conns.clone();
    let drain = conns.drain();
    l.stats.inc(l.ids.cx_active);
    conns.open.set(conns.open.get() + 1);
    // Whether the drain's deadline cut the connection.
    let cut = match (l.tls.clone(), carried) {
        (None, Some(Carried::Dubbo(carried))) => match l.dubbo.clone() {
            Some(d) => downstream::serve_carried(stream, d, &drain, Some(carried), None).await,
            None => false,
        },
        (None, Some(Carried::Tcp(a))) => {
            match (crate::io::Conn::into_kernel(stream), l.tcp.as_ref()) {
                (Ok(s), Some(t)) => tcp_proxy::serve_adopted(s, a, t, &drain).await,
                _ => false,
            }
        }
        (Some(_), Some(_)) => false,
        (None, None) => serve_protocol(stream, &l, &drain, None).await,
        (Some(tls), None) => match crate::io::Conn::into_kernel(stream) {
            Ok(tcp) => serve_tls(tcp, &l, &tls, &drain).await,
            Err(_) => {
                tracing::error!(listener = %l.name, "TLS needs a kernel socket");
                false
            }
        },
    };
    l.stats.dec(l.ids.cx_active);
    if drain.is_started() {
        l.stats.inc(l.ids.cx_drained);
        conns.drained.set(conns.drained.get() + 1);
        if cut {
            l.stats.inc(l.ids.cx_drain_timeout);
            conns
                .closed_at_deadline
                .set(conns.closed_at_deadline.get() + 1);
        }
    }
    conns.open.set(conns.open.get() - 1);
    if conns.open.get() == 0 {
        conns.none_open.notify();
    }
}

/// Serves a connection (plaintext, or TLS after its handshake) by the listener's protocol;
/// whether the drain's deadline cut it. `mx`: what the caller sent in Istio's in-band
/// metadata exchange (its payload), when the connection negotiated it.
async fn serve_protocol<C: crate::io::Conn>(
    stream: C,
    l: &ListenerCtx,
    drain: &Rc<Drain>,
    mx: Option<&[u8]>,
) -> bool {
    if (l.rbac.is_some() || l.ext_authz.is_some()) && !authorized(&stream, l).await {
        return false;
    }
    match l.protocol {
        Protocol::Tcp => {
            let Some(t) = l.tcp.as_ref() else {
                return false;
            };
            let virtuals = l.virtuals.get();
            match crate::io::Conn::into_kernel(stream) {
                Ok(s) => {
                    let chains = l.chains.get();
                    if chains.is_empty() {
                        tcp_proxy::serve(s, t, &virtuals, drain, mx).await
                    } else {
                        serve_chains(s, l, t, &chains).await;
                        false
                    }
                }
                // TLS terminated in front of the proxy (config validation keeps tls off a tcp
                // listener with chains or virtual listeners, and tcp listeners off the DPDK
                // path).
                Err(s) => tcp_proxy::serve(s, t, &virtuals, drain, mx).await,
            }
        }
        Protocol::Dubbo => match l.dubbo.clone() {
            Some(d) => downstream::serve_carried(stream, d, drain, None, mx).await,
            None => false,
        },
        Protocol::Triple => match l.triple.clone() {
            // HTTP/1.1 beside HTTP/2 (plaintext): one peek at the first bytes decides.
            Some(t) if t.http1 => match crate::io::Conn::into_kernel(stream) {
                Ok(s) => {
                    use crate::filter::triple::http1;
                    match http1::sniff(&s, t.limits.preface_timeout).await {
                        http1::Sniffed::Http1 => http1::serve(s, t, drain).await,
                        http1::Sniffed::Http2 => {
                            crate::filter::triple::conn::serve(s, t, drain).await
                        }
                        http1::Sniffed::Nothing => {
                            l.stats.inc(t.ids.hardening.cx_preface_timeout);
                            false
                        }
                    }
                }
                // TLS (an mTLS chain of an HTTP connection manager): by ALPN or first bytes.
                Err(s) => crate::filter::triple::http1_tls::serve_tls(s, t, drain).await,
            },
            Some(t) => crate::filter::triple::conn::serve(stream, t, drain).await,
            None => false,
        },
    }
}

/// The connection's authorization: the listener's rbac filters and, between them, its
/// network ext_authz filter (istiod's order: the CUSTOM policy's shadow rbac filter, ext_authz,
/// then the DENY / ALLOW rbac filters), each as Envoy's: a denial closes the connection.
async fn authorized<C: crate::io::Conn>(stream: &C, l: &ListenerCtx) -> bool {
    let (source, local) = stream.addrs();
    let destination = stream.original_dst().or(local);
    let server_name = stream.server_name().unwrap_or_default();
    let x = l.ext_authz.as_ref();
    let split = x.map_or(usize::MAX, |x| x.after_rbac);
    // The listener certificate's URI SAN (the CheckRequest's destination principal), on a
    // TLS connection.
    let local_uri = l
        .tls
        .as_ref()
        .filter(|_| stream.is_tls())
        .and_then(|t| t.uris.first())
        .map(String::as_str);
    // The rbac filters before the ext_authz filter (all without one); the shadow policy they
    // matched enables it. Then its CheckRequest, built while the certificate is borrowed.
    // The rbac filters in `range` on the connection (the certificate is borrowed only inside
    // `with_peer_certificate`: once before the ext_authz check, once after it).
    let rbac = |certificate: Option<&[u8]>, range, shadow: Option<&str>| match &l.rbac {
        Some(rbac) => {
            let peer = crate::filter::rbac::Peer {
                source,
                destination,
                certificate,
                server_name: server_name.as_bytes(),
                request: None,
            };
            rbac.allows_range(&peer, &l.stats, range, shadow)
        }
        None => (true, None),
    };
    let mut message = None;
    let allowed = stream.with_peer_certificate(&mut |certificate| {
        let (allowed, policy) = rbac(certificate, 0..split, x.and_then(|x| x.shadow_prefix()));
        if let Some(x) = x.filter(|x| allowed && x.applies(policy)) {
            let attrs = crate::filter::ext_authz::Attributes {
                source,
                destination,
                peer_certificate: certificate,
                local_uri,
                protocol: "",
                size: 0,
                id: 0,
            };
            message = Some(crate::filter::ext_authz::tcp_check_request(
                &attrs,
                server_name.as_bytes(),
                x.include_peer_certificate,
            ));
        }
        allowed
    });
    if !allowed {
        tracing::debug!(listener = %l.name, peer = ?source, "rbac: connection denied");
        return false;
    }
    let Some(x) = x else {
        return true;
    };
    match message {
        Some(m) => {
            let client = l.authz_client.borrow().clone();
            if !crate::filter::ext_authz::check_connection(x, client.as_deref(), m, &l.stats).await
            {
                tracing::debug!(listener = %l.name, peer = ?source, "ext_authz: connection closed");
                return false;
            }
        }
        None => l.stats.inc(x.ids.disabled),
    }
    // The rbac filters after it.
    if l.rbac.is_none() {
        return true;
    }
    let allowed = stream
        .with_peer_certificate(&mut |certificate| rbac(certificate, split..usize::MAX, None).0);
    if !allowed {
        tracing::debug!(listener = %l.name, peer = ?source, "rbac: connection denied");
    }
    allowed
}

/// A connection to a listener with `tls`: a handshake, then the protocol over TLS. PERMISSIVE
/// serves a connection whose first byte is not a TLS record as plaintext; STRICT closes it
/// (the handshake fails on its first bytes).
async fn serve_tls(
    tcp: TcpStream,
    l: &ListenerCtx,
    tls: &crate::io::tls::ServerTls,
    drain: &Rc<Drain>,
) -> bool {
    if tls.mode == crate::config::TlsMode::Permissive
        && !crate::io::tls::starts_with_tls(&tcp).await
    {
        l.stats.inc(l.ids.tls_plaintext);
        return serve_protocol(tcp, l, drain, None).await;
    }
    match crate::io::tls::accept(tcp, tls).await {
        Ok(mut s) => {
            l.stats.inc(l.ids.tls_handshake);
            if s.resumed() {
                l.stats.inc(l.ids.tls_resumed);
            }
            // Istio's in-band metadata exchange, when the caller's sidecar negotiated it: both
            // sides' node metadata before the protocol's first byte.
            let mut mx = None;
            if crate::io::peer_exchange::negotiated(s.alpn_protocol().as_deref()) {
                let ours = l.stats.stats.istio_node();
                let side = crate::io::peer_exchange::Side::Server;
                match crate::io::peer_exchange::exchange(&mut s, &ours.exchange_frame, side).await {
                    Ok(p) => mx = p,
                    Err(e) => {
                        tracing::debug!(listener = %l.name, error = %e, "istio-peer-exchange failed; closing");
                        return false;
                    }
                }
            }
            serve_protocol(s, l, drain, mx.as_deref()).await
        }
        Err(e) => {
            l.stats.inc(l.ids.tls_error);
            tracing::debug!(listener = %l.name, error = %e, "TLS handshake failed");
            false
        }
    }
}

pub(super) async fn accept_loop<A: crate::io::Accept>(
    mut listener: A,
    slot: Rc<Latest<ListenerCtx>>,
    stop: Event,
    connections: Rc<Cell<usize>>,
) {
    loop {
        let accepted = shard::monoio::select! {
            r = listener.accept() => r,
            _ = stop.wait() => return,
        };
        // The listener's context as of now, after the accept: a config update while the
        // loop waited (new certificates included) applies to this very connection.
        let l = slot.get();
        let (stream, _peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(listener = %l.name, error = %e, "accept failed");
                shard::monoio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                continue;
            }
        };
        if !l.admit() {
            drop(stream);
            continue;
        }
        connections.set(connections.get() + 1);
        let connections = connections.clone();
        shard::monoio::spawn(async move {
            serve_connection(stream, l).await;
            connections.set(connections.get() - 1);
        });
    }
}
