//! Filters: one room per protocol (`dubbo`, `triple`, `tcp`), each owning its connection
//! handling, router and stats; here, what they all share: the drain signal their connections
//! watch, the per-shard routes cell of a listener, the shard's buffer budget (`budget`), and the
//! per-route and per-service request counters. Filters never import each other, the
//! shard's state (`worker`) or control.

pub mod budget;
pub mod chain;
pub mod dubbo;
pub mod ext_authz;
pub mod jwt;
pub mod ratelimit;
pub mod rbac;
pub mod tcp;
pub mod triple;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use shard::Event;

pub use budget::{Budget, BudgetStatIds, Charge};

use crate::stats::{Kind, ShardStats, StatId, Stats};

/// Draining: connections tell their callers to go elsewhere (Dubbo readonly, HTTP/2 GOAWAY)
/// this long after the accept loops stopped. Callers reconnect at once when told; an io_uring
/// accept being cancelled at that very moment can complete with a connection nobody serves, so
/// the reconnects must find only the successor accepting.
pub const DRAIN_ANNOUNCE_DELAY_MS: u64 = 20;

/// How long a connection being handed to a hot-upgrade successor waits for its requests in
/// flight to be answered (and written); past it, it drains in this process (Dubbo's readonly
/// event, then a close once idle).
pub const HANDOVER_WAIT_MS: u64 = 1_000;
/// Most bytes read but not yet forwarded that a handed-over connection carries to the
/// successor (at most `hotswap::UNREAD_BYTES_MAX`); a connection holding more drains here.
pub const HANDOVER_UNREAD_BYTES_MAX: usize = 256 * 1024;

/// A live downstream connection on its way to a hot-upgrade successor: a duplicate of its
/// socket, the listener that accepted it, and the bytes read from it and not forwarded (the
/// start of its next frame). The successor serves it as if it had accepted it.
pub struct HandedOver {
    pub listener: String,
    pub fd: std::os::fd::OwnedFd,
    /// Dubbo: the start of its next frame; TCP proxy: read and not yet written upstream.
    pub unread: Vec<u8>,
    /// When this process stopped reading it (`hotswap::monotonic_ns`): the start of the pause
    /// the successor measures.
    pub paused_at_ns: u64,
    /// A TCP proxy connection: the upstream connection it is relayed to, which moves with it.
    pub upstream: Option<UpstreamHandedOver>,
}

/// The upstream half of a TCP proxy connection on its way to a hot-upgrade successor, which
/// resumes relaying the same pair (the byte stream between caller and server is untouched).
pub struct UpstreamHandedOver {
    pub fd: std::os::fd::OwnedFd,
    pub cluster: String,
    pub address: std::net::SocketAddr,
    /// Read from the upstream and not yet written downstream.
    pub unread: Vec<u8>,
    /// When the downstream connected, and the bytes relayed so far (received from the
    /// downstream, sent to it): the access log's and Istio's per-connection figures.
    pub started: std::time::SystemTime,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// Where a draining shard hands connections over (the worker's way up to the control thread,
/// which sends them to the successor). `false`: not taken (the connection drains here).
pub trait Handover {
    fn hand_over(&self, conn: HandedOver) -> bool;
    /// Whether the successor adopts TCP proxy connections (handoff protocol 3).
    fn takes_tcp(&self) -> bool;
}

/// One drain of one listener's connections on one shard: when they are told to leave, and when
/// those still open are closed anyway. Started for every listener when the process drains
/// (SIGTERM, `/drain`, hot upgrade), and for one listener when a config update removes it or
/// replaces it by one with another address, protocol, `transparent` or `bind`.
#[derive(Default)]
pub struct Drain {
    started: Event,
    deadline: Cell<Option<Instant>>,
    /// A hot upgrade whose successor adopts connections: where they go.
    handover: RefCell<Option<Rc<dyn Handover>>>,
}

impl Drain {
    /// Starts the drain of a hot upgrade whose successor adopts live connections: connections
    /// that can move (Dubbo on a kernel socket without TLS) go to `to`; the others are told to
    /// leave as [`Drain::start`] does.
    pub fn start_handing_over(&self, timeout: Duration, to: Rc<dyn Handover>) {
        if !self.started.is_set() {
            *self.handover.borrow_mut() = Some(to);
        }
        self.start(timeout);
    }

    /// Where this drain hands connections over, if it does.
    pub fn handover(&self) -> Option<Rc<dyn Handover>> {
        self.handover.borrow().clone()
    }

    /// Tells the connections to leave; those still open after `timeout` are closed.
    pub fn start(&self, timeout: Duration) {
        if !self.started.is_set() {
            self.deadline.set(Some(Instant::now() + timeout));
            self.started.set();
        }
    }

    pub fn is_started(&self) -> bool {
        self.started.is_set()
    }

    /// Completes once the drain has started.
    pub async fn started(&self) {
        self.started.wait().await
    }

    /// Completes at the deadline of the drain (never before it started).
    pub async fn deadline(&self) {
        self.started.wait().await;
        if let Some(d) = self.deadline.get() {
            shard::monoio::time::sleep_until(d.into()).await;
        }
    }
}

/// A listener's routes as one shard runs them: compiled router, the upstream pool of each
/// cluster (indexed like the snapshot's clusters) and per-route stats. Immutable; a config
/// update puts a new one in the listener's [`RoutesCell`].
pub struct Routes<R, P> {
    pub router: R,
    pub pools: Vec<Rc<P>>,
    /// Per route in config order, then the default route.
    pub route_ids: Vec<RequestStatIds>,
    /// The listener's and its routes' local rate limits on this shard; `None` (checked once
    /// per request) when it has none.
    pub limits: Option<Box<ratelimit::Limits>>,
    /// Per route in config order: its `max_concurrent_requests` on this shard (Dubbo routes;
    /// empty when no route has one).
    pub concurrency: Box<[Option<Rc<ratelimit::Concurrency>>]>,
    /// The index in `pools` of the listener's ext_authz cluster (Triple listeners with
    /// `ext_authz`).
    pub authz_pool: Option<usize>,
}

impl<R, P> Routes<R, P> {
    /// A place under the `max_concurrent_requests` of the route `route_index` (`None`: the
    /// default route), held by the call until it is dropped: `Ok(None)` when the route has no
    /// limit, `Err(limit)` when its calls fill it.
    pub fn concurrency_place(
        &self,
        route_index: Option<usize>,
    ) -> Result<Option<ratelimit::Slot>, u32> {
        match route_index.and_then(|i| self.concurrency.get(i)?.as_ref()) {
            Some(c) => c.acquire().map(Some).ok_or(c.limit),
            None => Ok(None),
        }
    }
}

/// The current routes of one listener on one shard, shared by all its connections.
pub type RoutesCell<R, P> = Rc<Latest<Routes<R, P>>>;

/// A value that config updates replace whole, read by cloning its `Rc` (a listener's routes,
/// a listener's context): whoever took one keeps it, while later readers get the new one. The
/// `RefCell` borrow lives only inside [`Latest::get`] and [`Latest::set`], which call nothing
/// while they hold it, so no two borrows ever overlap and neither can panic.
pub struct Latest<T: ?Sized>(RefCell<Rc<T>>);

impl<T: ?Sized> Latest<T> {
    pub fn new(value: Rc<T>) -> Latest<T> {
        Latest(RefCell::new(value))
    }

    pub fn get(&self) -> Rc<T> {
        self.0.borrow().clone()
    }

    /// Replaces the value; the old one is dropped after the borrow ended.
    pub fn set(&self, value: Rc<T>) {
        let old = self.0.replace(value);
        drop(old);
    }
}

impl<T: Default> Default for Latest<T> {
    fn default() -> Self {
        Latest::new(Rc::default())
    }
}

// === fault injection ===

/// Fault injection counters of one listener (Envoy's `fault.*` names): delays and aborts
/// injected, faults not injected for `max_active_faults`, and delays in progress.
#[derive(Clone, Copy, Debug)]
pub struct FaultStatIds {
    pub delays_injected: StatId,
    pub aborts_injected: StatId,
    pub overflow: StatId,
    pub active: StatId,
}

impl FaultStatIds {
    pub fn register(st: &Stats, listener: &str) -> Self {
        let t = [("listener", listener)];
        let c = |name, kind| st.add("listener", name, &t, kind);
        FaultStatIds {
            delays_injected: c("fault.delays_injected", Kind::Counter),
            aborts_injected: c("fault.aborts_injected", Kind::Counter),
            overflow: c("fault.faults_overflow", Kind::Counter),
            active: c("fault.active_faults", Kind::Gauge),
        }
    }
}

// === request stats ===

/// Stat ids of one listener: its connections (counted by the shard that accepts them) and
/// the bytes and protocols its tcp filter sees.
#[derive(Clone, Copy, Debug)]
pub struct ListenerStatIds {
    pub cx_total: StatId,
    pub cx_active: StatId,
    pub cx_overflow: StatId,
    pub cx_idle_timeout: StatId,
    pub bytes_rx: StatId,
    pub bytes_tx: StatId,
    /// `original_destination` listeners: connections whose first bytes are Dubbo (magic
    /// 0xdabb), the HTTP/2 preface (Triple, gRPC), or anything else. [`crate::stats::SINK`]
    /// on other listeners.
    pub detected_dubbo: StatId,
    pub detected_http2: StatId,
    pub detected_other: StatId,
    /// Listeners with `virtual_listeners`: connections handed to one of them.
    pub cx_handed_off: StatId,
    /// Listeners with `filter_chains`: connections no chain took (Envoy's
    /// `no_filter_chain_match`), and those whose chain ringside cannot serve (TLS).
    pub cx_no_filter_chain: StatId,
    pub cx_chain_unserved: StatId,
    /// Connections that ended while their listener drained (removed or replaced by a config
    /// update, or the process draining), and of those the ones closed at the drain timeout.
    pub cx_drained: StatId,
    pub cx_drain_timeout: StatId,
    /// Listeners with `tls`: completed handshakes (and of those the resumed ones), failed ones
    /// (bad or missing certificate, wrong SAN, timeout, not TLS under STRICT), and PERMISSIVE
    /// connections served as plaintext.
    pub tls_handshake: StatId,
    pub tls_resumed: StatId,
    pub tls_error: StatId,
    pub tls_plaintext: StatId,
    /// `tcp` listeners: connections handed to a hot-upgrade successor with their upstream
    /// connection, and those adopted from a predecessor.
    pub tcp_cx_handed_over: StatId,
    pub tcp_cx_adopted: StatId,
}

impl ListenerStatIds {
    pub fn register(st: &Stats, l: &crate::config::Listener) -> Self {
        use Kind::{Counter, Gauge};
        let t = [("listener", l.name.as_str())];
        let detected = |name: &str| {
            if l.original_destination {
                st.add("listener", name, &t, Counter)
            } else {
                crate::stats::SINK
            }
        };
        let chained = |name: &str| {
            if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
                crate::stats::SINK
            } else {
                st.add("listener", name, &t, Counter)
            }
        };
        let tls = |name: &str| {
            if l.tls.is_some() {
                st.add("listener", name, &t, Counter)
            } else {
                crate::stats::SINK
            }
        };
        let tcp = |name: &str| {
            if l.protocol == crate::config::Protocol::Tcp {
                st.add("listener", name, &t, Counter)
            } else {
                crate::stats::SINK
            }
        };
        ListenerStatIds {
            cx_total: st.add("listener", "downstream_cx_total", &t, Counter),
            cx_active: st.add("listener", "downstream_cx_active", &t, Gauge),
            cx_overflow: st.add("listener", "downstream_cx_overflow", &t, Counter),
            cx_idle_timeout: st.add("listener", "downstream_cx_idle_timeout", &t, Counter),
            bytes_rx: st.add("listener", "downstream_bytes_rx_total", &t, Counter),
            bytes_tx: st.add("listener", "downstream_bytes_tx_total", &t, Counter),
            detected_dubbo: detected("downstream_protocol_dubbo"),
            detected_http2: detected("downstream_protocol_http2"),
            detected_other: detected("downstream_protocol_other"),
            cx_handed_off: if l.virtual_listeners.is_empty() {
                crate::stats::SINK
            } else {
                st.add("listener", "downstream_cx_handed_off", &t, Counter)
            },
            cx_no_filter_chain: chained("no_filter_chain_match"),
            cx_chain_unserved: chained("downstream_cx_filter_chain_unserved"),
            cx_drained: st.add("listener", "downstream_cx_drained", &t, Counter),
            cx_drain_timeout: st.add("listener", "downstream_cx_drain_timeout", &t, Counter),
            tls_handshake: tls("downstream_tls_handshake"),
            tls_resumed: tls("downstream_tls_session_reused"),
            tls_error: tls("downstream_tls_error"),
            tls_plaintext: tls("downstream_tls_plaintext"),
            tcp_cx_handed_over: tcp("tcp_cx_handed_over"),
            tcp_cx_adopted: tcp("tcp_cx_adopted"),
        }
    }
}

/// Request and response counters of one route, or of one service and method (Dubbo
/// interface and method, Triple service and method).
#[derive(Clone, Copy, Debug)]
pub struct RequestStatIds {
    pub rq_total: StatId,
    pub rsp_ok: StatId,
    pub rsp_error: StatId,
    pub rsp_local: StatId,
}

impl RequestStatIds {
    pub fn register(stats: &Stats, scope: &str, tags: &[(&str, &str)]) -> Self {
        let c = |name| stats.add(scope, name, tags, Kind::Counter);
        RequestStatIds {
            rq_total: c("rq_total"),
            rsp_ok: c("rsp_ok"),
            rsp_error: c("rsp_error"),
            rsp_local: c("rsp_local"),
        }
    }
}

/// The per-request counters a request carries until it is answered: its route's and its
/// interface/method's.
#[derive(Clone, Copy, Debug)]
pub struct Counted {
    pub route: RequestStatIds,
    pub service: RequestStatIds,
}

impl Counted {
    pub fn inc(&self, stats: &ShardStats, pick: impl Fn(&RequestStatIds) -> StatId) {
        stats.inc(pick(&self.route));
        stats.inc(pick(&self.service));
    }
}

/// service (Dubbo interface) → method → counters, per listener per shard.
pub type ServiceStatsMap = FxHashMap<Box<[u8]>, FxHashMap<Box<[u8]>, RequestStatIds>>;

/// Bytes of service and method name a [`ServiceMemo`] holds (longer pairs are not remembered).
const SERVICE_MEMO_BYTES: usize = 192;

/// The (service, method) pair a listener last looked up on its shard, and its counters. A
/// consumer usually calls the same method many times in a row, and then the lookup is one
/// comparison of the names instead of two hash-map lookups (callgrind, dubbo 16x16: 260
/// instructions per request for the lookups, ~40 for the comparison). No allocation: the names
/// are copied into a fixed buffer.
pub struct ServiceMemo {
    names: [u8; SERVICE_MEMO_BYTES],
    service_len: usize,
    method_len: usize,
    ids: Option<RequestStatIds>,
}

impl Default for ServiceMemo {
    fn default() -> Self {
        ServiceMemo {
            names: [0; SERVICE_MEMO_BYTES],
            service_len: 0,
            method_len: 0,
            ids: None,
        }
    }
}

impl ServiceMemo {
    fn get(&self, service: &[u8], method: &[u8]) -> Option<RequestStatIds> {
        let ids = self.ids?;
        let (s, m) = (self.service_len, self.method_len);
        (s == service.len()
            && m == method.len()
            && self.names[..s] == *service
            && self.names[s..s + m] == *method)
            .then_some(ids)
    }

    fn set(&mut self, service: &[u8], method: &[u8], ids: RequestStatIds) {
        let (s, m) = (service.len(), method.len());
        if s + m > SERVICE_MEMO_BYTES {
            return;
        }
        self.names[..s].copy_from_slice(service);
        self.names[s..s + m].copy_from_slice(method);
        (self.service_len, self.method_len, self.ids) = (s, m, Some(ids));
    }
}

/// The counters of one service/method: the memo of the last pair, else a map lookup on the
/// data path, a registration (allocating) only the first time this shard sees the pair,
/// `other` beyond the cap.
#[allow(clippy::too_many_arguments)]
pub fn service_ids(
    memo: &RefCell<ServiceMemo>,
    map: &RefCell<ServiceStatsMap>,
    stats: &ShardStats,
    scope: &str,
    listener: &str,
    (service_tag, service): (&str, &[u8]),
    method: &[u8],
    other: RequestStatIds,
) -> RequestStatIds {
    if let Some(ids) = memo.borrow().get(service, method) {
        return ids;
    }
    let known = map
        .borrow()
        .get(service)
        .and_then(|m| m.get(method))
        .copied();
    let ids = match known {
        Some(ids) => ids,
        None if !stats.stats.track_service() => other,
        None => {
            let (s, m) = (
                String::from_utf8_lossy(service),
                String::from_utf8_lossy(method),
            );
            let tags = [("listener", listener), (service_tag, &s), ("method", &m)];
            let ids = RequestStatIds::register(&stats.stats, scope, &tags);
            map.borrow_mut()
                .entry(service.into())
                .or_default()
                .insert(method.into(), ids);
            ids
        }
    };
    memo.borrow_mut().set(service, method, ids);
    ids
}
