//! A cluster as one shard sees it: its endpoints, the shard's own load-balancing state, and the
//! upstream connect path (timeout, retry on the next endpoint). Per shard, so nothing here is
//! shared or locked; balancing decisions are local to the shard, as in every thread-per-core
//! proxy.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use shard::monoio::net::TcpStream;

use crate::config::{self, LbPolicy};
use crate::stats::{Kind, ShardStats, StatId, Stats};

pub mod ring;
pub mod zone;

/// After a failed connect, an endpoint gets no new requests for this long (unless every
/// endpoint of the cluster is down, when it is tried again at once).
pub const ENDPOINT_FAILURE_BACKOFF_MS: u64 = 500;

/// Connect attempts for one downstream connection, each to a different endpoint when there are
/// several.
pub const CONNECT_ATTEMPTS_MAX: usize = 3;

/// Original destinations one `original_destination` cluster keeps hosts (and their
/// connections) for, per shard, in the Dubbo and Triple pools.
pub const ORIGINAL_DST_HOSTS_MAX: usize = 1024;

/// Stat ids of one cluster.
#[derive(Clone, Debug)]
pub struct ClusterStatIds {
    pub cx_total: StatId,
    pub cx_active: StatId,
    pub cx_connect_fail: StatId,
    pub cx_connect_timeout: StatId,
}

/// Stat ids of one cluster's requests, counted by every protocol's upstream pools.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamStatIds {
    pub rq_total: StatId,
    pub rq_timeout: StatId,
    pub rq_failure: StatId,
    pub rq_overflow: StatId,
    pub rq_active: StatId,
    /// Responses over `response_bytes_max`, skipped (their callers got status 80).
    pub rsp_too_large: StatId,
    /// Connections closed after `idle_timeout_ms` without a request.
    pub cx_idle_timeout: StatId,
    /// Connections closed after missing `HEARTBEAT_MISSES_MAX` heartbeats.
    pub cx_heartbeat_timeout: StatId,
    /// Requests refused by the cluster's `circuit_breakers.max_requests` (Envoy 1.40's name).
    pub rq_active_overflow: StatId,
    /// Connections not opened for `circuit_breakers.max_connections`, and requests refused
    /// for `max_pending_requests` (Envoy's names).
    pub cx_overflow: StatId,
    pub rq_pending_overflow: StatId,
    /// Outlier detection: endpoints ejected, and ejections skipped for `max_ejection_percent`.
    pub outlier_ejections: StatId,
    /// ... by failure percentage and by success rate (each interval).
    pub outlier_ejections_failure_percentage: StatId,
    pub outlier_ejections_success_rate: StatId,
    pub outlier_overflow: StatId,
    /// Endpoints ejected now (summed over shards: each shard ejects for itself).
    pub outlier_active: StatId,
    /// Retries (`retry_policy`), Envoy's names: each retry sent; retried requests whose last
    /// answer was not retriable; retries not made for `max_retries`; or for `num_retries`.
    pub rq_retry: StatId,
    pub rq_retry_success: StatId,
    pub rq_retry_overflow: StatId,
    pub rq_retry_limit_exceeded: StatId,
    /// Tries that passed `per_try_timeout_ms`.
    pub rq_per_try_timeout: StatId,
    /// Mirroring (`request_mirror_policies`) to this cluster as a shadow: copies sent, and
    /// copies not sent (`MIRRORS_ACTIVE_PER_SHARD_MAX` in flight, its circuit breaker open,
    /// no endpoint, too large, or dropped mid-way by a slow shadow).
    pub rq_mirror: StatId,
    pub rq_mirror_dropped: StatId,
}

impl ClusterStatIds {
    pub fn register(st: &Stats, cluster: &str) -> Self {
        let t = [("cluster", cluster)];
        let c = |name, kind| st.add("cluster", name, &t, kind);
        ClusterStatIds {
            cx_total: c("upstream_cx_total", Kind::Counter),
            cx_active: c("upstream_cx_active", Kind::Gauge),
            cx_connect_fail: c("upstream_cx_connect_fail", Kind::Counter),
            cx_connect_timeout: c("upstream_cx_connect_timeout", Kind::Counter),
        }
    }
}

impl UpstreamStatIds {
    pub fn register(st: &Stats, cluster: &str) -> Self {
        let t = [("cluster", cluster)];
        let c = |name, kind| st.add("cluster", name, &t, kind);
        UpstreamStatIds {
            rq_total: c("upstream_rq_total", Kind::Counter),
            rq_timeout: c("upstream_rq_timeout", Kind::Counter),
            rq_failure: c("upstream_rq_failure", Kind::Counter),
            rq_overflow: c("upstream_rq_overflow", Kind::Counter),
            rq_active: c("upstream_rq_active", Kind::Gauge),
            rsp_too_large: c("upstream_rsp_too_large", Kind::Counter),
            cx_idle_timeout: c("upstream_cx_idle_timeout", Kind::Counter),
            cx_heartbeat_timeout: c("upstream_cx_heartbeat_timeout", Kind::Counter),
            rq_active_overflow: c("upstream_rq_active_overflow", Kind::Counter),
            cx_overflow: c("upstream_cx_overflow", Kind::Counter),
            rq_pending_overflow: c("upstream_rq_pending_overflow", Kind::Counter),
            outlier_ejections: c(
                "outlier_detection.ejections_enforced_consecutive_5xx",
                Kind::Counter,
            ),
            outlier_ejections_failure_percentage: c(
                "outlier_detection.ejections_enforced_failure_percentage",
                Kind::Counter,
            ),
            outlier_ejections_success_rate: c(
                "outlier_detection.ejections_enforced_success_rate",
                Kind::Counter,
            ),
            outlier_overflow: c("outlier_detection.ejections_overflow", Kind::Counter),
            outlier_active: c("outlier_detection.ejections_active", Kind::Gauge),
            rq_retry: c("upstream_rq_retry", Kind::Counter),
            rq_retry_success: c("upstream_rq_retry_success", Kind::Counter),
            rq_retry_overflow: c("upstream_rq_retry_overflow", Kind::Counter),
            rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded", Kind::Counter),
            rq_per_try_timeout: c("upstream_rq_per_try_timeout", Kind::Counter),
            rq_mirror: c("upstream_rq_mirror", Kind::Counter),
            rq_mirror_dropped: c("upstream_rq_mirror_dropped", Kind::Counter),
        }
    }
}

/// The step of a shard's priority-load draws through 0..100: coprime with 100, so every 100
/// draws of a cluster take each value once (a level with load L gets exactly L of every 100
/// requests that find it ready), and near 100 / golden ratio, so that any few consecutive
/// draws are spread over the range (a level of 30 % gets about 3 of any 10).
pub const LOAD_DRAW_STEP: u8 = 61;

/// Per-level loads (percent) as [`Endpoints::load`] keeps them: cumulative, empty when the
/// first level takes all.
fn cumulative(load: &[u32]) -> Box<[u8]> {
    let mut sum = 0u32;
    match load.first() {
        Some(&l) if l < 100 => load
            .iter()
            .map(|&l| {
                sum = (sum + l).min(100);
                sum as u8
            })
            .collect(),
        _ => Box::new([]),
    }
}

/// One endpoint of a cluster and its stat ids (all the sink when `stats.per_host` is off).
/// Its index in [`Endpoints::slots`] is stable while the cluster lives, so per-endpoint state
/// on the shards (balancer counts, connections) survives endpoint updates.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub addr: SocketAddr,
    pub ids: HostStatIds,
}

/// A cluster's endpoints as the control thread published them, shared by every shard.
#[derive(Debug)]
pub struct Endpoints {
    /// Every endpoint the cluster had since `generation` began (indices never reused).
    pub slots: Arc<[Slot]>,
    /// The slots in service now, in the order round robin visits them: priority levels
    /// lowest number first, each in config order with an endpoint repeated by its weight
    /// (`server::visit_order`).
    pub live: Box<[u32]>,
    /// End of each priority level in `live` (empty when `live` is).
    pub levels: Box<[u32]>,
    /// Weight of each `live` entry (least_request), empty when every endpoint weighs the same.
    pub weights: Box<[u32]>,
    /// Envoy's priority load (`config::Cluster::priority_load`) as cumulative percentages, one
    /// per level: a request draws `r` in 0..100 and starts at the first level whose entry
    /// exceeds `r`. Empty: strict failover (every request starts at the first level).
    pub load: Box<[u8]>,
    /// (healthy, all) endpoints of each level as EDS counts them (a YAML cluster: all
    /// healthy), when there are several levels and they are priorities (not locality
    /// groups); else empty. A shard that ejects endpoints (outlier detection) counts them
    /// out of `healthy` and balances by the load recomputed from that (Envoy: an ejected
    /// host is unhealthy, docs/governance.md#locality).
    pub level_hosts: Box<[(u32, u32)]>,
    /// The overprovisioning factor of the loads, in percent.
    pub overprovisioning: u32,
    /// Distinct endpoints in `live` (an endpoint appears there once per weight visit).
    pub distinct: u32,
    /// Changes when slots are renumbered (see `server::EndpointTable`): shards then replace the
    /// cluster instead of updating it.
    pub generation: u64,
    /// The transport socket of each slot (`config::Cluster::transport_socket`: TLS or
    /// plaintext per endpoint, Istio's auto mTLS); empty when the cluster has no
    /// `transport_socket_matches` (every endpoint: socket 0).
    pub sockets: Box<[u8]>,
    /// The endpoints by traffic label, when one of them has a `tag` (built with the table, so
    /// a labelled request picks from its subset with no work beyond a binary search).
    pub labels: Option<Box<Labels>>,
    /// The endpoints by locality, for zone-aware routing (`cluster_manager`; not with
    /// locality-weighted balancing).
    pub zones: Option<Box<zone::Zones>>,
}

/// The live endpoints of a cluster by traffic label: the untagged ones, and those of each
/// tag (by [`tag_hash`], sorted), each in the visit order of [`Endpoints::live`].
#[derive(Debug, Default)]
pub struct Labels {
    pub untagged: Subset,
    pub tagged: Box<[(u64, Subset)]>,
}

/// Some of a cluster's live endpoints, as [`Endpoints`] keeps all of them: `live`, `levels`,
/// `weights`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Subset {
    pub live: Box<[u32]>,
    pub levels: Box<[u32]>,
    pub weights: Box<[u32]>,
}

/// A request's traffic label as the balancer takes it (docs/governance.md#traffic-labels):
/// the label's [`tag_hash`] (0: the call has none) and whether it forbids the fall-back to the
/// untagged endpoints, in one word (bit 0: force; bit 1: always set, so that an
/// `Option<Label>` is 8 bytes; the rest: the hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(std::num::NonZeroU64);

impl Default for Label {
    /// No label, not forced.
    fn default() -> Self {
        Label::new(0, false)
    }
}

impl Label {
    const PRESENT: u64 = 0b10;

    /// `tag`: a [`tag_hash`], or 0 for none.
    pub fn new(tag: u64, force: bool) -> Label {
        let bits = (tag & !0b11) | Label::PRESENT | u64::from(force);
        Label(std::num::NonZeroU64::new(bits).unwrap_or(std::num::NonZeroU64::MIN))
    }

    /// The label's [`tag_hash`]; 0 when the call has none.
    pub fn tag(self) -> u64 {
        self.0.get() & !0b11
    }

    pub fn force(self) -> bool {
        self.0.get() & 1 == 1
    }

    /// The label of a call that carries `tag` (absent or empty: none) and `force` (Apache
    /// Dubbo reads `Boolean.valueOf`: `true` in any case forces).
    pub fn of(tag: Option<&[u8]>, force: Option<&[u8]>) -> Label {
        Label::new(
            tag.filter(|t| !t.is_empty()).map_or(0, tag_hash),
            force.is_some_and(|f| f.eq_ignore_ascii_case(b"true")),
        )
    }
}

/// Where a listener reads a call's traffic label (`traffic_label`: a Dubbo attachment or a
/// Triple header), as bytes.
#[derive(Debug)]
pub struct LabelKeys {
    pub key: Box<[u8]>,
    pub force_key: Box<[u8]>,
}

impl LabelKeys {
    pub fn new((key, force_key): (&str, &str)) -> LabelKeys {
        LabelKeys {
            key: key.as_bytes().into(),
            force_key: force_key.as_bytes().into(),
        }
    }
}

/// FNV-1a of a traffic label, its low two bits cleared (see [`Label`]), never 0 (0 is "no
/// label"). Equal labels hash equal; two labels of one cluster hashing equal are one label
/// (62 bits: not seen in practice; the label is the caller's to choose anyway, so a collision
/// grants nothing it could not ask for).
pub fn tag_hash(tag: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in tag {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h & !0b11).max(0b100)
}

/// The endpoints one pick chooses among (borrowed from [`Endpoints`] or one of its
/// [`Subset`]s).
struct Set<'a> {
    live: &'a [u32],
    levels: &'a [u32],
    weights: &'a [u32],
    /// See [`Endpoints::load`] (traffic-label subsets: empty).
    load: &'a [u8],
    /// The cluster's whole table (its load may be recomputed with the shard's ejections).
    all: bool,
}

impl Subset {
    fn set(&self) -> Set<'_> {
        Set {
            live: &self.live,
            levels: &self.levels,
            weights: &self.weights,
            load: &[],
            all: false,
        }
    }
}

impl Endpoints {
    pub fn empty(generation: u64) -> Self {
        Endpoints {
            slots: Arc::new([]),
            live: Box::new([]),
            levels: Box::new([]),
            weights: Box::new([]),
            load: Box::new([]),
            level_hosts: Box::new([]),
            overprovisioning: config::OVERPROVISIONING_FACTOR_DEFAULT,
            distinct: 0,
            generation,
            sockets: Box::new([]),
            labels: None,
            zones: None,
        }
    }

    /// The endpoints a request with `label` may go to (Apache Dubbo's tag routing): without a
    /// label (the listener reads none), all; labelled `t`, those tagged `t`, else (none is, and
    /// the label is not forced) the untagged ones; with an empty label, the untagged ones.
    fn set(&self, label: Option<Label>) -> Set<'_> {
        let all = Set {
            live: &self.live,
            levels: &self.levels,
            weights: &self.weights,
            load: &self.load,
            all: true,
        };
        let Some(label) = label else {
            return all;
        };
        let none = Set {
            live: &[],
            levels: &[],
            weights: &[],
            load: &[],
            all: false,
        };
        let Some(labels) = &self.labels else {
            // No endpoint is tagged: every one is untagged.
            return if label.tag() != 0 && label.force() {
                none
            } else {
                all
            };
        };
        if label.tag() == 0 {
            return labels.untagged.set();
        }
        match labels
            .tagged
            .binary_search_by_key(&label.tag(), |(t, _)| *t)
        {
            Ok(k) => labels.tagged[k].1.set(),
            Err(_) if label.force() => none,
            Err(_) => labels.untagged.set(),
        }
    }

    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.live.iter().map(|&i| self.slots[i as usize].addr)
    }

    /// The transport socket of slot `i` (see [`Endpoints::sockets`]).
    pub fn socket(&self, i: usize) -> usize {
        usize::from(self.sockets.get(i).copied().unwrap_or(0))
    }
}

/// Stat ids of one upstream endpoint (`stats.per_host`).
#[derive(Clone, Copy, Debug)]
pub struct HostStatIds {
    pub cx_total: StatId,
    pub cx_connect_fail: StatId,
    pub rq_total: StatId,
    pub rq_timeout: StatId,
    pub rq_failure: StatId,
    /// Shards on which the endpoint is ejected now (outlier detection; never exported, read by
    /// `/clusters`; the sink when the cluster has no `outlier_detection`).
    pub ejected: StatId,
}

impl HostStatIds {
    /// Every id the sink: a host that is no endpoint (an original destination).
    pub fn sink() -> Self {
        let sink = crate::stats::SINK;
        HostStatIds {
            cx_total: sink,
            cx_connect_fail: sink,
            rq_total: sink,
            rq_timeout: sink,
            rq_failure: sink,
            ejected: sink,
        }
    }
}

pub struct ShardCluster {
    pub name: String,
    /// Shared by every shard (read-only); replaced by endpoint updates.
    endpoints: RefCell<Arc<Endpoints>>,
    /// Connections (tcp) or requests in flight (dubbo) per endpoint slot, on this shard.
    active: RefCell<Vec<Cell<u32>>>,
    next: Cell<usize>,
    /// xorshift64 state of `random` picks (never 0), seeded per shard cluster.
    dice: Cell<u64>,
    /// The next priority-load draw (see [`Endpoints::load`]): 0..100, stepping by
    /// [`LOAD_DRAW_STEP`].
    draw: Cell<u8>,
    /// Endpoint slots this shard ejected (outlier detection) and until when, kept while the
    /// cluster has [`Endpoints::level_hosts`] (its load depends on them).
    ejected: RefCell<Vec<(u32, std::time::Instant)>>,
    /// The load recomputed without `ejected` (cumulative as [`Endpoints::load`]; empty: the
    /// first level takes all) and when the first of those ejections ends; `None` while it
    /// needs recomputing (no ejection: not used).
    shard_load: RefCell<Option<(Box<[u8]>, std::time::Instant)>>,
    /// Zone-aware routing of priority-0 requests (see [`zone::ZoneRoute`]), computed by
    /// [`ShardCluster::set_local`] for the endpoint tables whose addresses `zone_key` holds
    /// (this cluster's, the local cluster's).
    zone: RefCell<Option<zone::ZoneRoute>>,
    zone_key: Cell<(usize, usize)>,
    zone_aware: config::ZoneAware,
    /// The next zone draw: 0..10000 stepping by [`zone::ZONE_DRAW_STEP`]; and the next
    /// `routing_enabled` draw (0..100 by [`LOAD_DRAW_STEP`]).
    zone_draw: Cell<u16>,
    zone_enabled_draw: Cell<u8>,
    lb: LbPolicy,
    /// RING_HASH / MAGLEV: this shard's tables, built at the first pick after the endpoints
    /// or the shard's ejections changed.
    hashed: RefCell<Option<Rc<Hashed>>>,
    connect_timeout: Duration,
    /// TCP keepalive of its upstream connections: `tcp_keepalive`, else `runtime.tcp_keepalive`.
    pub keepalive: config::TcpKeepalive,
    /// `type: original_destination`: no endpoints; see [`ShardCluster::connect_to`].
    pub original_destination: bool,
    /// `source_addresses`: what its upstream connections bind (one per IP family).
    pub sources: Box<[std::net::IpAddr]>,
    pub ids: ClusterStatIds,
    /// Its transport sockets (`tls`, `transport_socket_matches`): connections to an endpoint
    /// whose socket has TLS are TLS connections. Replaced in place when new certificates
    /// arrive (SDS): connections open keep theirs.
    tls: RefCell<Option<crate::io::tls::ClusterSockets>>,
}

/// A RING_HASH / MAGLEV cluster's tables on one shard, one per priority level (Envoy builds
/// one per priority over its healthy hosts, or all of them in panic).
struct Hashed {
    /// The endpoint table they were built from (its address), and the slots left out (this
    /// shard's ejected endpoints, sorted).
    from: usize,
    without: Box<[u32]>,
    /// Per level: the table, and the endpoint slot of each of its host indices.
    levels: Box<[(ring::Table, Box<[u32]>)]>,
}

/// Retry attempts of a hashed pick whose endpoint `state` excludes (a retry's
/// `previous_hosts`): Istio's `host_selection_retry_max_attempts` (5) plus the first.
pub const HASH_PICK_ATTEMPTS: u32 = 6;

/// A pool's per-endpoint state by slot (Dubbo and HTTP/2 hosts alike), each built on first use:
/// a sidecar config lists many endpoints, few carry traffic on a shard.
pub struct HostTable<H> {
    hosts: RefCell<Vec<Option<Rc<H>>>>,
}

/// What a pool does with a host whose endpoint left (its connections close once idle).
pub trait Retire {
    fn retire(&self);
}

impl<H: Retire> HostTable<H> {
    pub fn new() -> Self {
        HostTable {
            hosts: RefCell::new(Vec::new()),
        }
    }

    /// The host of slot `i`, built by `build` the first time.
    pub fn get_or_build(&self, i: usize, build: impl FnOnce() -> H) -> Rc<H> {
        let mut hosts = self.hosts.borrow_mut();
        if hosts.len() <= i {
            hosts.resize(i + 1, None);
        }
        hosts[i].get_or_insert_with(|| Rc::new(build())).clone()
    }

    /// Every built host (outlier detection's interval: once per interval, not per request).
    pub fn all(&self) -> Vec<Rc<H>> {
        self.hosts.borrow().iter().flatten().cloned().collect()
    }

    /// How many built hosts `f` holds for (rare decisions: outlier ejection).
    pub fn count(&self, f: impl Fn(&H) -> bool) -> usize {
        self.hosts
            .borrow()
            .iter()
            .flatten()
            .filter(|h| f(h))
            .count()
    }

    /// `f` of the host of slot `i`, if it was built (balancer availability checks).
    pub fn peek<R>(&self, i: usize, f: impl FnOnce(Option<&H>) -> R) -> R {
        f(self.hosts.borrow().get(i).and_then(|h| h.as_deref()))
    }

    /// Endpoint slots that left the cluster: their hosts retire.
    pub fn retire(&self, slots: &[u32]) {
        for &i in slots {
            let host = self
                .hosts
                .borrow_mut()
                .get_mut(i as usize)
                .and_then(Option::take);
            if let Some(h) = host {
                h.retire();
            }
        }
    }

    /// The whole pool left service (its cluster was removed or replaced).
    pub fn retire_all(&self) {
        let hosts: Vec<Rc<H>> = self.hosts.borrow_mut().drain(..).flatten().collect();
        for h in hosts {
            h.retire();
        }
    }
}

impl<H: Retire> Default for HostTable<H> {
    fn default() -> Self {
        Self::new()
    }
}

/// How an endpoint stands for [`ShardCluster::pick_available`].
pub enum Availability {
    Ready,
    /// A connect failed recently: used only when no endpoint is ready.
    BackingOff,
    /// Never picked (e.g. a Dubbo provider that announced readonly).
    Excluded,
}

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

/// A new upstream connection and the guard that counts it out of its endpoint's active count.
pub struct Upstream<'a> {
    pub stream: UpstreamStream,
    pub guard: ActiveGuard<'a>,
}

/// An upstream connection of the tcp proxy: plaintext, or TLS when the endpoint's transport
/// socket has it.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<crate::io::tls::TlsConn>),
}

impl UpstreamStream {
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            UpstreamStream::Plain(s) => s.peer_addr().ok(),
            UpstreamStream::Tls(s) => s.get_ref().peer_addr().ok(),
        }
    }
}

/// Counts one connection (or request) on an endpoint until dropped.
pub struct ActiveGuard<'a> {
    pub endpoint: usize,
    cluster: &'a ShardCluster,
    stats: &'a ShardStats,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.cluster.add_active(self.endpoint, -1);
        self.stats.dec(self.cluster.ids.cx_active);
    }
}

impl ShardCluster {
    /// `endpoints` is the cluster's endpoint table, built once and shared by every shard.
    pub fn new(
        c: &config::Cluster,
        endpoints: Arc<Endpoints>,
        ids: ClusterStatIds,
        tls: Option<crate::io::tls::ClusterSockets>,
    ) -> Self {
        ShardCluster {
            name: c.name.clone(),
            active: RefCell::new(endpoints.slots.iter().map(|_| Cell::new(0)).collect()),
            endpoints: RefCell::new(endpoints),
            next: Cell::new(0),
            dice: Cell::new({
                use std::hash::{BuildHasher, Hasher};
                // Per-thread random keys, a new one per call: a distinct seed per shard cluster.
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
                    | 1
            }),
            draw: Cell::new(0),
            ejected: RefCell::new(Vec::new()),
            shard_load: RefCell::new(None),
            zone: RefCell::new(None),
            zone_key: Cell::new((0, 0)),
            zone_aware: c.zone_aware,
            zone_draw: Cell::new(0),
            zone_enabled_draw: Cell::new(0),
            lb: c.lb,
            hashed: RefCell::new(None),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            keepalive: c
                .tcp_keepalive
                .unwrap_or_else(crate::io::intercept::keepalive),
            original_destination: c.kind == config::ClusterType::OriginalDestination,
            sources: c.source_addresses.clone().into_boxed_slice(),
            ids,
            tls: RefCell::new(tls),
        }
    }

    /// The TLS a new connection to endpoint slot `i` uses (`None`: plaintext): the cluster's
    /// `tls`, or the one of the `transport_socket_matches` entry the endpoint matched.
    pub fn tls(&self, i: usize) -> Option<Arc<crate::io::tls::ClientTls>> {
        let sockets = self.tls.borrow();
        let k = self.endpoints.borrow().socket(i);
        sockets.as_ref()?.get(k).cloned().flatten()
    }

    /// New certificates (or a TLS now ready): for connections opened from now on.
    pub fn set_tls(&self, tls: Option<crate::io::tls::ClusterSockets>) {
        *self.tls.borrow_mut() = tls;
    }

    /// Takes an endpoint update of the same generation; returns the slots that left service,
    /// and those whose transport socket changed (their connections close once idle; new
    /// ones use the new socket).
    pub fn set_endpoints(&self, e: Arc<Endpoints>) -> Vec<u32> {
        let old = self.endpoints.replace(e.clone());
        // The levels or their counts may have changed: recompute at the next pick.
        *self.shard_load.borrow_mut() = None;
        // Its zones may have changed: `set_local` recomputes.
        *self.zone.borrow_mut() = None;
        *self.hashed.borrow_mut() = None;
        self.zone_key.set((0, 0));
        let mut active = self.active.borrow_mut();
        while active.len() < e.slots.len() {
            active.push(Cell::new(0));
        }
        old.live
            .iter()
            .copied()
            .filter(|&i| !e.live.contains(&i) || old.socket(i as usize) != e.socket(i as usize))
            .collect()
    }

    /// Recomputes zone-aware routing (docs/governance.md#zone-aware-routing) with `local`, the
    /// local cluster's endpoint table (none: no zone-aware routing), if it or this cluster's
    /// table changed since the last time. Called whenever a snapshot reaches the shard.
    pub fn set_local(&self, local: Option<&Arc<Endpoints>>) {
        let own = self.endpoints.borrow();
        let key = (
            Arc::as_ptr(&own) as usize,
            local.map_or(0, |l| Arc::as_ptr(l) as usize),
        );
        if self.zone_key.get() == key {
            return;
        }
        self.zone_key.set(key);
        let route = match (own.zones.as_deref(), local.and_then(|l| l.zones.as_deref())) {
            (Some(own), Some(local)) => zone::ZoneRoute::compute(own, local, &self.zone_aware),
            _ => None,
        };
        *self.zone.borrow_mut() = route;
    }

    /// Zone-aware routing's pick for a request that goes to priority 0: `Ok(Some)` an
    /// endpoint of the locality its draw falls in, `Ok(None)` when zone-aware routing does not
    /// apply (or that locality has no endpoint ready: the whole level then), `Err` when it
    /// fails the request (`fail_traffic_on_panic`).
    fn pick_zone(
        &self,
        e: &Endpoints,
        state: &impl Fn(usize) -> Availability,
    ) -> Result<Option<usize>, ()> {
        let route = self.zone.borrow();
        let (cum, enabled) = match route.as_ref() {
            None => return Ok(None),
            Some(zone::ZoneRoute::Fail) => return Err(()),
            Some(zone::ZoneRoute::Route { cum, enabled }) => (cum, *enabled),
        };
        if enabled < 100 {
            let r = self.zone_enabled_draw.get();
            self.zone_enabled_draw.set((r + LOAD_DRAW_STEP) % 100);
            if r >= enabled {
                return Ok(None);
            }
        }
        let Some(zones) = e.zones.as_deref() else {
            return Ok(None);
        };
        let r = self.zone_draw.get();
        self.zone_draw
            .set(((u32::from(r) + u32::from(zone::ZONE_DRAW_STEP)) % 10000) as u16);
        let g = cum.iter().position(|&c| r < c).unwrap_or(0);
        let set = zones.p0.set();
        let Some(&end) = set.levels.get(g) else {
            return Ok(None);
        };
        let from = if g == 0 {
            0
        } else {
            set.levels[g - 1] as usize
        };
        Ok(self.pick_in(&set, from..end as usize, state).ok())
    }

    /// The endpoint slot the next connection or request should use; `None` when the cluster
    /// has no endpoint in service.
    pub fn pick(&self) -> Option<usize> {
        self.pick_available(|_| Availability::Ready)
    }

    /// The balancer's pick among endpoints `state` does not exclude, by priority: from the
    /// first level (lowest priority number) that has an endpoint ready; when no level has one,
    /// the first endpoint in failure back-off of the first level that has one (a cluster
    /// whose endpoints all failed recently is tried anyway); else `None`. Strict failover:
    /// a level gets no traffic while a level before it has an endpoint ready.
    pub fn pick_available(&self, state: impl Fn(usize) -> Availability) -> Option<usize> {
        self.pick_labelled(None, state)
    }

    /// [`Self::pick_available`] among the endpoints a request with traffic label `label` may
    /// go to (see [`Endpoints::set`]; `None`: all of them).
    pub fn pick_labelled(
        &self,
        label: Option<Label>,
        state: impl Fn(usize) -> Availability,
    ) -> Option<usize> {
        self.pick_with(label, None, None, 0, state)
    }

    /// [`Self::pick_labelled`] for a request whose route's `hash_policy` gave `hash`: on a
    /// RING_HASH / MAGLEV cluster, the endpoint of that hash (none: of a random one) when the
    /// request may go to every endpoint (no traffic label narrows them; a labelled request
    /// picks at random among its label's); other policies ignore it.
    pub fn pick_hashed(
        &self,
        label: Option<Label>,
        hash: Option<u64>,
        state: impl Fn(usize) -> Availability,
    ) -> Option<usize> {
        self.pick_with(label, None, hash, 0, state)
    }

    /// [`Self::pick_labelled`] for a retry whose policy leaves out the priority levels of the
    /// endpoint slots `avoid` (`previous_priorities`, see `route::Retry::priority_avoided`):
    /// the level is drawn from Envoy's priority load recomputed with those levels' health
    /// taken as none (`PreviousPrioritiesRetryPriority`); the usual pick when `avoid` is
    /// empty, when that leaves no level with health, when the cluster's levels are not
    /// priorities (one level, or locality-weighted groups) or the request has a traffic label.
    /// `hash`: as [`Self::pick_hashed`] (a RING_HASH / MAGLEV cluster draws the level from its
    /// hash and the usual load, as Envoy's thread-aware balancers ignore retry priorities).
    /// `draws` (a retry's `previous_hosts`, [`crate::route::Retry::host_draws`]; 0: none): the
    /// level is drawn from the load up to that many times while the drawn level has no
    /// endpoint `state` leaves ready, then an endpoint in back-off of a drawn level, else
    /// `None` (the caller takes a tried endpoint, drawing again), as Envoy re-selects within
    /// the priority load (`host_selection_retry_max_attempts`) and never fails over to
    /// another level for a tried host or one ringside holds in connect back-off.
    pub fn pick_avoiding(
        &self,
        label: Option<Label>,
        avoid: &[u32],
        hash: Option<u64>,
        draws: u32,
        state: impl Fn(usize) -> Availability,
    ) -> Option<usize> {
        if avoid.is_empty() || label.is_some() {
            return self.pick_with(label, None, hash, draws, state);
        }
        let load = self.retry_load(&self.endpoints.borrow(), avoid);
        self.pick_with(label, load.as_deref(), hash, draws, state)
    }

    /// The cumulative priority load (as [`Endpoints::load`]) without the levels of the slots
    /// `avoid`; `None` when the usual load applies (see [`Self::pick_avoiding`]).
    fn retry_load(&self, e: &Endpoints, avoid: &[u32]) -> Option<Box<[u8]>> {
        if e.level_hosts.is_empty() || e.level_hosts.len() != e.levels.len() {
            return None;
        }
        let mut counts = self.level_counts(e, std::time::Instant::now());
        for &slot in avoid {
            if let Some(p) = e.live.iter().position(|&i| i == slot) {
                let k = e.levels.partition_point(|&end| end as usize <= p);
                if let Some(c) = counts.get_mut(k) {
                    c.0 = 0;
                }
            }
        }
        let load = config::priority_load(&counts, e.overprovisioning);
        if load.iter().all(|&l| l == 0) {
            // Envoy: no level left with health, the original load.
            return None;
        }
        Some(cumulative(&load))
    }

    /// (healthy, all) endpoints of each level ([`Endpoints::level_hosts`]) with the endpoints
    /// this shard has ejected until after `now` counted unhealthy.
    fn level_counts(&self, e: &Endpoints, now: std::time::Instant) -> Vec<(u32, u32)> {
        let ejected = self.ejected.borrow();
        let mut from = 0;
        e.levels
            .iter()
            .zip(e.level_hosts.iter())
            .map(|(&end, &(healthy, all))| {
                let level = &e.live[from..end as usize];
                from = end as usize;
                let out = ejected
                    .iter()
                    .filter(|(i, until)| now < *until && level.contains(i))
                    .count() as u32;
                (healthy.saturating_sub(out), all)
            })
            .collect()
    }

    /// [`Self::pick_labelled`], drawing the level from `load` (cumulative, as
    /// [`Endpoints::load`]) instead of the cluster's when given and the request may go to
    /// every endpoint; `hash` as [`Self::pick_hashed`]; `draws` as [`Self::pick_avoiding`].
    fn pick_with(
        &self,
        label: Option<Label>,
        load: Option<&[u8]>,
        hash: Option<u64>,
        draws: u32,
        state: impl Fn(usize) -> Availability,
    ) -> Option<usize> {
        let e = self.endpoints.borrow();
        let mut set = e.set(label);
        if self.lb.is_hashed() && set.all {
            return self.pick_consistent(&e, hash, &state);
        }
        // A labelled request keeps its label's strict failover.
        let draws = if set.all { draws } else { 0 };
        let shard_load;
        if let (true, Some(load)) = (set.all, load) {
            set.load = load;
        } else if set.all && !self.ejected.borrow().is_empty() {
            // Endpoints ejected on this shard: the load without them.
            self.refresh_load(&e);
            shard_load = self.shard_load.borrow();
            if let Some((load, _)) = shard_load.as_ref() {
                set.load = load;
            }
        }
        let mut fallback = None;
        // Zone-aware routing (priority 0, unlabelled requests): first the locality the zone
        // draw falls in.
        let zoned = |k: usize| match set.all && k == 0 {
            true => self.pick_zone(&e, &state),
            false => Ok(None),
        };
        if !set.load.is_empty() {
            // Envoy's priority load: the level this request's draw falls in first; when it
            // has no endpoint ready, strict failover over all levels below (a retry that
            // avoids its tried endpoints: drawn again, `draws` times in all, then none).
            for _ in 0..draws.max(1) {
                let r = self.draw.get();
                self.draw.set((r + LOAD_DRAW_STEP) % 100);
                let k = set.load.iter().position(|&c| r < c).unwrap_or(0);
                match zoned(k) {
                    Ok(Some(i)) => return Some(i),
                    Ok(None) => {}
                    Err(()) => return None,
                }
                let from = if k == 0 {
                    0
                } else {
                    set.levels[k - 1] as usize
                };
                match self.pick_in(&set, from..set.levels[k] as usize, &state) {
                    Ok(i) => return Some(i),
                    Err(backing_off) => fallback = fallback.or(backing_off),
                }
            }
            if draws > 0 {
                // An endpoint in connect back-off of a drawn level (Envoy knows no back-off:
                // its predicate takes such a host), never one of another level.
                return fallback;
            }
        } else {
            match zoned(0) {
                Ok(Some(i)) => return Some(i),
                Ok(None) => {}
                Err(()) => return None,
            }
            if draws > 0 {
                // All of the load on the first level: a retry stays there (an endpoint in
                // back-off there too).
                return match set.levels.first() {
                    Some(&end) => match self.pick_in(&set, 0..end as usize, &state) {
                        Ok(i) => Some(i),
                        Err(backing_off) => backing_off,
                    },
                    None => None,
                };
            }
        }
        let mut from = 0;
        for &end in set.levels.iter() {
            let level = from..end as usize;
            from = end as usize;
            match self.pick_in(&set, level, &state) {
                Ok(i) => return Some(i),
                Err(backing_off) => fallback = fallback.or(backing_off),
            }
        }
        fallback
    }

    /// A uniformly random number (the shard cluster's xorshift64).
    fn roll64(&self) -> u64 {
        let mut x = self.dice.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.dice.set(x);
        x
    }

    /// RING_HASH / MAGLEV (Envoy's `ThreadAwareLoadBalancerBase::chooseHost`): `hash` (none:
    /// a random number) picks the priority level (`hash % 100` against the priority load)
    /// and, in that level's table, the endpoint; one `state` excludes is passed over by
    /// Envoy's retry attempts (the next point of the ring, a flipped Maglev hash), at most
    /// [`HASH_PICK_ATTEMPTS`]. Connect back-off is not consulted (Envoy has none: the hash's
    /// endpoint is the one). No allocation unless the tables need building.
    fn pick_consistent(
        &self,
        e: &Endpoints,
        hash: Option<u64>,
        state: &impl Fn(usize) -> Availability,
    ) -> Option<usize> {
        let h = hash.unwrap_or_else(|| self.roll64());
        let tables = self.hashed_tables(e);
        let r = (h % 100) as u8;
        let k = {
            let ejections = !self.ejected.borrow().is_empty();
            if ejections && !e.level_hosts.is_empty() {
                self.refresh_load(e);
            }
            let shard_load = self.shard_load.borrow();
            let load = match shard_load.as_ref() {
                Some((load, _)) if ejections && !e.level_hosts.is_empty() => &load[..],
                _ => &e.load[..],
            };
            load.iter().position(|&c| r < c).unwrap_or(0)
        };
        let (table, slots) = tables.levels.get(k)?;
        for attempt in 0..HASH_PICK_ATTEMPTS {
            let slot = slots[table.pick(h, attempt)? as usize] as usize;
            match state(slot) {
                Availability::Excluded => {}
                _ => return Some(slot),
            }
        }
        None
    }

    /// This shard's hash tables for endpoint table `e` less the endpoints it ejected now,
    /// built again when either changed (Envoy rebuilds on every host or health change).
    fn hashed_tables(&self, e: &Endpoints) -> Rc<Hashed> {
        let from = e as *const Endpoints as usize;
        let mut ejected = self.ejected.borrow_mut();
        if !ejected.is_empty() {
            let now = std::time::Instant::now();
            ejected.retain(|&(_, until)| now < until);
        }
        if let Some(t) = self.hashed.borrow().as_ref() {
            if t.from == from
                && t.without.len() == ejected.len()
                && ejected.iter().all(|(i, _)| t.without.contains(i))
            {
                return t.clone();
            }
        }
        let mut without: Vec<u32> = ejected.iter().map(|&(i, _)| i).collect();
        drop(ejected);
        without.sort_unstable();
        without.dedup();
        let mut levels = Vec::with_capacity(e.levels.len());
        let mut start = 0;
        for &end in e.levels.iter() {
            // The level's distinct endpoints in config order with their weights.
            let mut hosts: Vec<(u32, u32)> = Vec::new();
            for k in start..end as usize {
                let slot = e.live[k];
                if !hosts.iter().any(|h| h.0 == slot) {
                    hosts.push((slot, e.weights.get(k).copied().unwrap_or(1).max(1)));
                }
            }
            start = end as usize;
            // Envoy: over the healthy hosts, or all of them when under 50 % are (panic).
            let healthy: Vec<(u32, u32)> = hosts
                .iter()
                .copied()
                .filter(|h| without.binary_search(&h.0).is_err())
                .collect();
            if !healthy.is_empty() && healthy.len() * 2 >= hosts.len() {
                hosts = healthy;
            }
            let keys: Vec<String> = hosts
                .iter()
                .map(|&(slot, _)| e.slots[slot as usize].addr.to_string())
                .collect();
            let weighted: Vec<(&str, u32)> = keys
                .iter()
                .zip(&hosts)
                .map(|(k, &(_, w))| (k.as_str(), w))
                .collect();
            let table = ring::Table::build(self.lb, &weighted);
            levels.push((table, hosts.iter().map(|h| h.0).collect()));
        }
        let t = Rc::new(Hashed {
            from,
            without: without.into(),
            levels: levels.into(),
        });
        *self.hashed.borrow_mut() = Some(t.clone());
        t
    }

    /// Notes that this shard ejected the endpoint at `addr` until `until` (outlier
    /// detection): while it is, the cluster's priority load counts it unhealthy, as Envoy's
    /// does (only for a cluster with [`Endpoints::level_hosts`]; others fail over strictly),
    /// and a RING_HASH / MAGLEV cluster's tables leave it out.
    pub fn note_ejection(&self, addr: SocketAddr, until: std::time::Instant) {
        let e = self.endpoints.borrow();
        if e.level_hosts.is_empty() && !self.lb.is_hashed() {
            return;
        }
        let Some(&slot) = e.live.iter().find(|&&i| e.slots[i as usize].addr == addr) else {
            return;
        };
        let mut ejected = self.ejected.borrow_mut();
        ejected.retain(|&(i, _)| i != slot);
        ejected.push((slot, until));
        *self.shard_load.borrow_mut() = None;
    }

    /// Recomputes `shard_load` if it is stale (an ejection began or ended, or the endpoints
    /// changed): Envoy's priority load over [`Endpoints::level_hosts`] with this shard's
    /// ejected endpoints counted unhealthy; when no level has any health left, Envoy's total
    /// panic (each level's share of all endpoints). Rare: once per ejection event.
    fn refresh_load(&self, e: &Endpoints) {
        let now = std::time::Instant::now();
        if self
            .shard_load
            .borrow()
            .as_ref()
            .is_some_and(|(_, until)| now < *until)
        {
            return;
        }
        let mut ejected = self.ejected.borrow_mut();
        ejected.retain(|&(_, until)| now < until);
        if ejected.is_empty() || e.level_hosts.len() != e.levels.len() {
            ejected.clear();
            *self.shard_load.borrow_mut() = None;
            return;
        }
        let until = ejected.iter().map(|&(_, u)| u).min().unwrap_or(now);
        drop(ejected);
        let counts = self.level_counts(e, now);
        let mut load = config::priority_load(&counts, e.overprovisioning);
        if load.iter().all(|&l| l == 0) {
            // Total panic: by endpoint count.
            let total: u32 = counts.iter().map(|c| c.1).sum::<u32>().max(1);
            let mut left = 100;
            for (l, c) in load.iter_mut().zip(&counts) {
                *l = (c.1 * 100 / total).min(left);
                left -= *l;
            }
            load[0] += left;
        }
        *self.shard_load.borrow_mut() = Some((cumulative(&load), until));
    }

    /// The pick among `live[level]`: `Ok` a ready endpoint, else `Err` the first one in
    /// back-off, if any. Round robin: the next ready entry from the cursor (O(1) while
    /// endpoints are ready). Least request: the ready endpoint with the fewest active
    /// requests per unit of weight (Envoy's weighted least request with `active_request_bias`
    /// 1), ties to the first from the cursor. Random: the first ready entry from a random one.
    fn pick_in(
        &self,
        e: &Set<'_>,
        level: std::ops::Range<usize>,
        state: &impl Fn(usize) -> Availability,
    ) -> Result<usize, Option<usize>> {
        let n = level.len();
        let start = match self.lb {
            // Hashed policies come here only for a labelled request: random within its label.
            LbPolicy::Random | LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
                (self.roll64() >> 32) as usize
            }
            _ => self.next.get(),
        } % n.max(1);
        let at = |k: usize| level.start + (start + k) % n;
        let weight = |k: usize| u64::from(e.weights.get(at(k)).copied().unwrap_or(1));
        let active = self.active.borrow();
        let load = |i: usize| u64::from(active.get(i).map_or(0, Cell::get)) + 1;
        let mut best: Option<(usize, usize)> = None; // (k, slot)
        let mut backing_off = None;
        for k in 0..n {
            let i = e.live[at(k)] as usize;
            match state(i) {
                Availability::Ready => match (self.lb, best) {
                    (
                        LbPolicy::RoundRobin
                        | LbPolicy::Random
                        | LbPolicy::RingHash { .. }
                        | LbPolicy::Maglev { .. },
                        _,
                    ) => {
                        best = Some((k, i));
                        break;
                    }
                    (LbPolicy::LeastRequest, Some((b, j)))
                        if load(i) * weight(b) >= load(j) * weight(k) => {}
                    (LbPolicy::LeastRequest, _) => best = Some((k, i)),
                },
                Availability::BackingOff => backing_off = backing_off.or(Some(i)),
                Availability::Excluded => {}
            }
        }
        match best {
            Some((k, i)) => {
                self.next.set(start + k + 1);
                Ok(i)
            }
            None => {
                self.next.set(start.wrapping_add(1));
                Err(backing_off)
            }
        }
    }

    pub fn live_count(&self) -> usize {
        self.endpoints.borrow().live.len()
    }

    /// The endpoint in slot `i` (any slot ever picked stays valid).
    pub fn slot(&self, i: usize) -> Slot {
        self.endpoints.borrow().slots[i]
    }

    pub fn endpoints(&self) -> Arc<Endpoints> {
        self.endpoints.borrow().clone()
    }

    /// Adjusts an endpoint's active count (requests in flight, for `least_request`).
    pub fn add_active(&self, endpoint: usize, delta: i32) {
        if let Some(a) = self.active.borrow().get(endpoint) {
            a.set(a.get().saturating_add_signed(delta));
        }
    }

    /// Counts an upstream connection a hot-upgrade predecessor opened to `addr` and handed
    /// over (tcp proxy): active on the endpoint slot of that address if the cluster still has
    /// one, not in `upstream_cx_total` (nobody connected again).
    pub fn adopt<'a>(&'a self, addr: SocketAddr, stats: &'a ShardStats) -> ActiveGuard<'a> {
        let endpoint = {
            let e = self.endpoints.borrow();
            e.live
                .iter()
                .map(|&i| i as usize)
                .find(|&i| e.slots.get(i).is_some_and(|s| s.addr == addr))
                .unwrap_or(usize::MAX)
        };
        self.add_active(endpoint, 1);
        stats.inc(self.ids.cx_active);
        ActiveGuard {
            endpoint,
            cluster: self,
            stats,
        }
    }

    /// `type: original_destination`: connects to `addr`, the downstream connection's original
    /// destination (one attempt; counted on the cluster, not on any endpoint).
    pub async fn connect_to<'a>(
        &'a self,
        addr: SocketAddr,
        stats: &'a ShardStats,
    ) -> Result<Upstream<'a>, ConnectError> {
        match shard::monoio::time::timeout(
            self.connect_timeout,
            crate::io::intercept::connect(addr, &self.sources),
        )
        .await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let _ = crate::io::Conn::set_keepalive(&stream, &self.keepalive);
                stats.inc(self.ids.cx_total);
                stats.inc(self.ids.cx_active);
                Ok(Upstream {
                    stream: UpstreamStream::Plain(stream),
                    guard: ActiveGuard {
                        // No slot: the guard's active count is a no-op.
                        endpoint: usize::MAX,
                        cluster: self,
                        stats,
                    },
                })
            }
            Ok(Err(source)) => {
                stats.inc(self.ids.cx_connect_fail);
                Err(ConnectError::Io { addr, source })
            }
            Err(_) => {
                stats.inc(self.ids.cx_connect_timeout);
                Err(ConnectError::Timeout {
                    addr,
                    timeout_ms: self.connect_timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Connects to an endpoint chosen by the balancer, trying up to [`CONNECT_ATTEMPTS_MAX`]
    /// different endpoints (in priority order: a failed connect moves on to the next level
    /// once the level has none left untried).
    pub async fn connect<'a>(
        &'a self,
        stats: &'a ShardStats,
    ) -> Result<Upstream<'a>, ConnectError> {
        let mut tried = [usize::MAX; CONNECT_ATTEMPTS_MAX];
        let mut last = None;
        for attempt in 0..CONNECT_ATTEMPTS_MAX {
            let Some(i) = self.pick_available(|i| match tried.contains(&i) {
                true => Availability::Excluded,
                false => Availability::Ready,
            }) else {
                break;
            };
            tried[attempt] = i;
            let Slot { addr, ids: host } = self.slot(i);
            match shard::monoio::time::timeout(self.connect_timeout, self.open(i, addr)).await {
                Ok(Ok(stream)) => {
                    self.add_active(i, 1);
                    stats.inc(self.ids.cx_total);
                    stats.inc(host.cx_total);
                    stats.inc(self.ids.cx_active);
                    return Ok(Upstream {
                        stream,
                        guard: ActiveGuard {
                            endpoint: i,
                            cluster: self,
                            stats,
                        },
                    });
                }
                Ok(Err(source)) => {
                    stats.inc(self.ids.cx_connect_fail);
                    stats.inc(host.cx_connect_fail);
                    last = Some(ConnectError::Io { addr, source });
                }
                Err(_) => {
                    stats.inc(self.ids.cx_connect_timeout);
                    last = Some(ConnectError::Timeout {
                        addr,
                        timeout_ms: self.connect_timeout.as_millis() as u64,
                    });
                }
            }
        }
        Err(last.unwrap_or(ConnectError::Io {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source: io::Error::other("cluster has no endpoints"),
        }))
    }
}

impl ShardCluster {
    /// RING_HASH or MAGLEV: its picks use a request's hash (Envoy evaluates a route's
    /// `hash_policy`, and generates its cookies, only for these).
    pub fn hashes(&self) -> bool {
        matches!(self.lb, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }

    /// A connection to endpoint slot `i` at `addr`, TLS when its transport socket has it
    /// (connect and handshake: the caller bounds both by the connect timeout).
    async fn open(&self, i: usize, addr: SocketAddr) -> io::Result<UpstreamStream> {
        let stream = match self.tls(i) {
            Some(t) => {
                let s = crate::io::tls::connect(addr, &self.sources, &t, None).await?;
                UpstreamStream::Tls(Box::new(s))
            }
            None => {
                let s = crate::io::intercept::connect(addr, &self.sources).await?;
                let _ = s.set_nodelay(true);
                UpstreamStream::Plain(s)
            }
        };
        let _ = match &stream {
            UpstreamStream::Plain(s) => crate::io::Conn::set_keepalive(s, &self.keepalive),
            UpstreamStream::Tls(s) => crate::io::Conn::set_keepalive(&**s, &self.keepalive),
        };
        Ok(stream)
    }
}

// === circuit breakers ===

/// One shard's part of a cluster's `circuit_breakers.max_requests`: `ceil(max_requests /
/// shards)` requests in flight on this shard (a per-shard approximation of Envoy's process-wide
/// count; docs/governance.md measures its error).
pub struct RequestBreaker {
    pub max: u32,
    /// Requests in flight to the cluster from this shard's pool.
    active: std::cell::Cell<u32>,
}

impl RequestBreaker {
    /// The breaker of cluster `c` on one of `shards` shards, if it has one.
    pub fn for_shard(c: &config::Cluster, shards: usize) -> Option<RequestBreaker> {
        let cb = c.circuit_breakers.as_ref()?;
        Some(RequestBreaker {
            max: cb.max_requests.div_ceil(shards.max(1) as u32),
            active: std::cell::Cell::new(0),
        })
    }

    /// Requests in flight to the cluster from this shard's pool.
    pub fn active(&self) -> u32 {
        self.active.get()
    }

    /// Whether the breaker is open: `max` requests are in flight, a new one is refused.
    pub fn is_open(&self) -> bool {
        self.active.get() >= self.max
    }

    /// A request went upstream (counted even when a retry or a move to another endpoint
    /// re-sends one that was already admitted).
    pub fn started(&self) {
        self.active.set(self.active.get() + 1);
    }

    pub fn ended(&self) {
        self.active.set(self.active.get().saturating_sub(1));
    }
}

/// One shard's part of a cluster's `circuit_breakers` `max_connections` and
/// `max_pending_requests`: `ceil(max / shards)` each, as `max_requests`. The connections are
/// counted here; the pools count their waiting requests themselves.
pub struct ConnBreaker {
    pub max_connections: u32,
    pub max_pending: u32,
    /// Upstream connections of the cluster's pool on this shard, connecting or open.
    connections: Cell<u32>,
}

impl ConnBreaker {
    pub fn for_shard(c: &config::Cluster, shards: usize) -> Option<ConnBreaker> {
        let cb = c.circuit_breakers.as_ref()?;
        let n = shards.max(1) as u32;
        Some(ConnBreaker {
            max_connections: cb.max_connections.div_ceil(n),
            max_pending: cb.max_pending_requests.div_ceil(n),
            connections: Cell::new(0),
        })
    }

    /// Whether the pool may open one more connection: under `max_connections`, or `first`
    /// (an endpoint without any connection always gets one, as in Envoy). A connection not
    /// allowed, or allowed only as an endpoint's first, is counted in `upstream_cx_overflow`.
    pub fn may_connect(&self, first: bool, stats: &ShardStats, ids: &UpstreamStatIds) -> bool {
        if self.connections.get() < self.max_connections {
            return true;
        }
        stats.inc(ids.cx_overflow);
        first
    }

    pub fn opened(&self) {
        self.connections.set(self.connections.get() + 1);
    }

    pub fn closed(&self) {
        self.connections
            .set(self.connections.get().saturating_sub(1));
    }
}

/// One shard's part of a cluster's `circuit_breakers.max_retries` (Envoy's default 3 without
/// one): `ceil(max_retries / shards)` retries in flight on this shard, so retries cannot
/// multiply the load on a cluster that is failing everything. With a `retry_budget` (which
/// replaces `max_retries`, as in Envoy's `RetryBudgetImpl`) the limit follows the load: this
/// shard's retries in flight may be `budget_percent` of this shard's requests to the cluster
/// active and pending, at least `ceil(min_retry_concurrency / shards)`.
pub struct RetryBreaker {
    /// Without a budget: the limit.
    pub max: u32,
    /// With one: (fraction of the load, per-shard minimum).
    budget: Option<(f64, u32)>,
    active: Cell<u32>,
}

impl RetryBreaker {
    pub fn for_shard(c: &config::Cluster, shards: usize) -> RetryBreaker {
        let n = shards.max(1) as u32;
        let max = c
            .circuit_breakers
            .map_or(config::MAX_RETRIES_DEFAULT, |cb| cb.max_retries);
        let budget = c.circuit_breakers.and_then(|cb| cb.retry_budget).map(|b| {
            (
                b.budget_percent.0 / 100.0,
                b.min_retry_concurrency.div_ceil(n),
            )
        });
        RetryBreaker {
            max: max.div_ceil(n),
            budget,
            active: Cell::new(0),
        }
    }

    /// Retries allowed in flight on this shard while `load` requests to the cluster are
    /// active or pending on it: `max`, or with a budget Envoy's
    /// `max(budget_percent / 100 × load, min_retry_concurrency)` (rounded down).
    pub fn limit(&self, load: u32) -> u32 {
        match self.budget {
            None => self.max,
            Some((fraction, min)) => ((fraction * f64::from(load)) as u32).max(min),
        }
    }

    /// Whether the budget depends on the load (callers then count it).
    pub fn has_budget(&self) -> bool {
        self.budget.is_some()
    }

    /// Whether one more retry may go (Envoy's `retries().canCreate()`, checked at every
    /// retry); `held`: the request already holds a slot from its previous retry (Envoy gives
    /// it back and takes it again, so it is checked without its own), which it keeps; else a
    /// slot is taken. False when the limit is reached (counting is the caller's).
    pub fn admit(&self, held: bool, load: u32) -> bool {
        let n = self.active.get();
        if n - u32::from(held && n > 0) >= self.limit(load) {
            return false;
        }
        if !held {
            self.active.set(n + 1);
        }
        true
    }

    pub fn ended(&self) {
        self.active.set(self.active.get().saturating_sub(1));
    }
}

/// Shadow copies (`request_mirror_policies`) in flight to one cluster on one shard, at most:
/// a shadow that answers slowly or never holds at most this many requests' state (each until
/// its deadline); beyond it copies are dropped and counted, the main requests never wait.
pub const MIRRORS_ACTIVE_PER_SHARD_MAX: u32 = 256;

/// One shard's count of a cluster's shadow copies in flight.
#[derive(Default)]
pub struct MirrorBudget {
    active: Cell<u32>,
}

impl MirrorBudget {
    /// Takes room for one copy; false when `MIRRORS_ACTIVE_PER_SHARD_MAX` are in flight.
    pub fn try_start(&self) -> bool {
        let n = self.active.get();
        if n >= MIRRORS_ACTIVE_PER_SHARD_MAX {
            return false;
        }
        self.active.set(n + 1);
        true
    }

    pub fn ended(&self) {
        self.active.set(self.active.get().saturating_sub(1));
    }
}

// === outlier detection ===

/// A cluster's ejection settings (`outlier_detection`).
#[derive(Clone, Copy, Debug)]
pub struct OutlierConfig {
    /// 0: no consecutive-error ejection.
    pub consecutive: u32,
    pub failure_percentage: Option<config::FailurePercentage>,
    pub success_rate: Option<config::SuccessRate>,
    pub base: Duration,
    pub max: Duration,
    pub interval: Duration,
    pub max_percent: u32,
}

impl OutlierConfig {
    pub fn for_cluster(c: &config::Cluster) -> Option<OutlierConfig> {
        let o = c.outlier_detection.as_ref()?;
        Some(OutlierConfig {
            consecutive: o.consecutive_errors,
            failure_percentage: o.failure_percentage,
            success_rate: o.success_rate,
            base: Duration::from_millis(o.base_ejection_time_ms),
            max: Duration::from_millis(o.max_ejection_time_ms.max(o.base_ejection_time_ms)),
            interval: Duration::from_millis(o.interval_ms),
            max_percent: o.max_ejection_percent,
        })
    }
}

/// What one failed request did to its endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Ejection {
    None,
    /// Ejected for this long.
    Ejected(Duration),
    /// Would have been ejected, but `max_ejection_percent` of the cluster already is.
    Overflow,
}

impl OutlierConfig {
    /// Whether requests are tallied per interval (failure-percentage or success-rate
    /// ejection).
    pub fn windowed(&self) -> bool {
        self.failure_percentage.is_some() || self.success_rate.is_some()
    }
}

/// Runs `tick` on `pool` every `cfg.interval` while the pool lives, when `cfg` ejects by
/// interval (one timer task per pool per shard; none otherwise).
pub fn watch_intervals<P: 'static>(pool: &Rc<P>, cfg: Option<&OutlierConfig>, tick: fn(&P)) {
    let Some(cfg) = cfg.filter(|c| c.windowed()) else {
        return;
    };
    let (pool, every) = (
        Rc::downgrade(pool),
        cfg.interval.max(Duration::from_millis(1)),
    );
    shard::monoio::spawn(async move {
        loop {
            shard::monoio::time::sleep(every).await;
            let Some(p) = pool.upgrade() else {
                return;
            };
            tick(&p);
        }
    });
}

/// Envoy's interval ejections over the requests each host of a pool had since the last
/// interval (`DetectorImpl::processSuccessRateEjections`): hosts not ejected with at least a
/// check's `request_volume` are that check's candidates; with at least its `minimum_hosts` of
/// them, failure percentage ejects those failing `threshold` % or more, success rate those
/// below `mean - stdev_factor / 1000 × stdev` of the candidates' success rates. Every host's
/// tally starts again. Allocates the candidate list, once per interval.
pub fn interval<H: OutlierHost + Retire>(
    cfg: Option<&OutlierConfig>,
    lb: &ShardCluster,
    hosts: &HostTable<H>,
    stats: &ShardStats,
    ids: &UpstreamStatIds,
) {
    let Some(cfg) = cfg else {
        return;
    };
    let now = std::time::Instant::now();
    let all = hosts.all();
    // (host, success rate in %, requests)
    let tallies: Vec<(&H, f64, u32)> = all
        .iter()
        .filter_map(|h| {
            let (total, failed) = h.outlier().take_tally();
            (total > 0 && !h.outlier().is_ejected(now)).then(|| {
                let rate = f64::from(total - failed) * 100.0 / f64::from(total);
                (&**h, rate, total)
            })
        })
        .collect();
    let total_hosts = lb.endpoints.borrow().distinct as usize;
    let eject = |h: &H, counter: StatId| {
        let share = || (hosts.count(|h| h.outlier().is_ejected(now)), total_hosts);
        match h.outlier().eject(cfg, now, share) {
            Ejection::Ejected(t) => {
                count_ejection(stats, ids, counter, h.ids().ejected, t);
                lb.note_ejection(h.addr(), now + t);
                tracing::info!(cluster = %lb.name, upstream = %h.addr(), ejected_ms = t.as_millis() as u64, "outlier detection: endpoint ejected (interval)");
            }
            Ejection::Overflow => stats.inc(ids.outlier_overflow),
            Ejection::None => {}
        }
    };
    if let Some(sr) = cfg.success_rate {
        let valid: Vec<&(&H, f64, u32)> = tallies
            .iter()
            .filter(|t| t.2 >= sr.request_volume)
            .collect();
        if !valid.is_empty() && valid.len() >= sr.minimum_hosts as usize {
            let n = valid.len() as f64;
            let mean = valid.iter().map(|t| t.1).sum::<f64>() / n;
            let variance = valid.iter().map(|t| (t.1 - mean).powi(2)).sum::<f64>() / n;
            let threshold = mean - f64::from(sr.stdev_factor) / 1000.0 * variance.sqrt();
            for t in valid.iter().filter(|t| t.1 < threshold) {
                eject(t.0, ids.outlier_ejections_success_rate);
            }
        }
    }
    if let Some(fp) = cfg.failure_percentage {
        let valid: Vec<&(&H, f64, u32)> = tallies
            .iter()
            .filter(|t| t.2 >= fp.request_volume)
            .collect();
        if !valid.is_empty() && valid.len() >= fp.minimum_hosts as usize {
            for t in valid
                .iter()
                .filter(|t| 100.0 - t.1 >= f64::from(fp.threshold))
            {
                eject(t.0, ids.outlier_ejections_failure_percentage);
            }
        }
    }
}

/// Counts an ejection of `time` in `counter` (its kind) and `ids`: the active gauge is up
/// until it ends (a timer task per ejection, which is rare; it runs on even if the pool is
/// replaced meanwhile).
pub fn count_ejection(
    stats: &ShardStats,
    ids: &UpstreamStatIds,
    counter: StatId,
    host: StatId,
    time: Duration,
) {
    stats.inc(counter);
    stats.inc(ids.outlier_active);
    stats.inc(host);
    let (stats, active) = (stats.clone(), ids.outlier_active);
    shard::monoio::spawn(async move {
        shard::monoio::time::sleep(time).await;
        stats.dec(active);
        stats.dec(host);
    });
}

/// A pool's host (Dubbo or HTTP/2) as outlier detection sees it.
pub trait OutlierHost {
    fn outlier(&self) -> &Outlier;
    fn addr(&self) -> SocketAddr;
    fn ids(&self) -> &HostStatIds;
}

/// One request's outcome at `host` of a pool (`hosts`, balanced by `lb`), for outlier
/// detection: nothing without `cfg`; a success resets the host's count, a failure may eject it
/// (counted in `ids`, logged). No allocation: the cluster's endpoint count is the published
/// `Endpoints::distinct`.
/// The success path is inlined into the callers (every answered request takes it); a failure
/// goes to [`failed_outcome`].
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn outcome<H: OutlierHost + Retire>(
    cfg: Option<&OutlierConfig>,
    lb: &ShardCluster,
    hosts: &HostTable<H>,
    stats: &ShardStats,
    ids: &UpstreamStatIds,
    host: &H,
    failed: bool,
) {
    let Some(cfg) = cfg else {
        return;
    };
    if cfg.windowed() {
        host.outlier().tally(failed);
    }
    if !failed {
        host.outlier().success();
        return;
    }
    failed_outcome(cfg, lb, hosts, stats, ids, host);
}

/// [`outcome`] of a failed request.
#[inline(never)]
fn failed_outcome<H: OutlierHost + Retire>(
    cfg: &OutlierConfig,
    lb: &ShardCluster,
    hosts: &HostTable<H>,
    stats: &ShardStats,
    ids: &UpstreamStatIds,
    host: &H,
) {
    if cfg.consecutive == 0 {
        return;
    }
    let now = std::time::Instant::now();
    let share = || {
        let total = lb.endpoints.borrow().distinct as usize;
        (hosts.count(|h| h.outlier().is_ejected(now)), total)
    };
    match host.outlier().failure(cfg, now, share) {
        Ejection::None => {}
        Ejection::Ejected(t) => {
            count_ejection(stats, ids, ids.outlier_ejections, host.ids().ejected, t);
            lb.note_ejection(host.addr(), now + t);
            tracing::info!(cluster = %lb.name, upstream = %host.addr(), ejected_ms = t.as_millis() as u64, "outlier detection: endpoint ejected");
        }
        Ejection::Overflow => stats.inc(ids.outlier_overflow),
    }
}

/// One endpoint's outlier state on one shard.
#[derive(Default)]
pub struct Outlier {
    consecutive: Cell<u32>,
    /// Ejections so far, less one per `interval` spent not ejected.
    ejections: Cell<u32>,
    /// When the last ejection ends (or ended).
    until: Cell<Option<std::time::Instant>>,
    /// Requests and failed ones since the last interval (failure percentage, success rate).
    total: Cell<u32>,
    failed: Cell<u32>,
}

impl Outlier {
    pub fn is_ejected(&self, now: std::time::Instant) -> bool {
        self.until.get().is_some_and(|u| now < u)
    }

    pub fn success(&self) {
        self.consecutive.set(0);
    }

    /// One request for the interval's tally.
    pub fn tally(&self, failed: bool) {
        self.total.set(self.total.get().saturating_add(1));
        self.failed
            .set(self.failed.get().saturating_add(u32::from(failed)));
    }

    /// The interval's (requests, failed), starting the next.
    pub fn take_tally(&self) -> (u32, u32) {
        (self.total.take(), self.failed.take())
    }

    /// A failed request. `ejected_share`: (ejected, total) endpoints of the cluster now, asked
    /// only when this failure would eject.
    pub fn failure(
        &self,
        cfg: &OutlierConfig,
        now: std::time::Instant,
        ejected_share: impl FnOnce() -> (usize, usize),
    ) -> Ejection {
        let n = self.consecutive.get() + 1;
        self.consecutive.set(n);
        if n < cfg.consecutive || self.is_ejected(now) {
            return Ejection::None;
        }
        self.eject(cfg, now, ejected_share)
    }

    /// Ejects the endpoint (consecutive errors, or an interval's check) unless
    /// `max_ejection_percent` of the cluster already is: the n-th ejection lasts n × base.
    pub fn eject(
        &self,
        cfg: &OutlierConfig,
        now: std::time::Instant,
        ejected_share: impl FnOnce() -> (usize, usize),
    ) -> Ejection {
        let (ejected, total) = ejected_share();
        // Envoy: eject while under max_ejection_percent, and always at least one.
        if ejected > 0 && ejected * 100 >= cfg.max_percent as usize * total.max(1) {
            self.consecutive.set(0);
            return Ejection::Overflow;
        }
        let mut count = self.ejections.get();
        if let Some(ended) = self.until.get() {
            let healthy = now.saturating_duration_since(ended);
            let decay = healthy.as_nanos() / cfg.interval.as_nanos().max(1);
            count = count.saturating_sub(decay.min(u32::MAX as u128) as u32);
        }
        count += 1;
        self.ejections.set(count);
        self.consecutive.set(0);
        let time = cfg.base.saturating_mul(count).min(cfg.max);
        self.until.set(Some(now + time));
        Ejection::Ejected(time)
    }
}

#[cfg(test)]
mod outlier_tests {
    use super::*;
    use std::time::Instant;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive: 2,
            failure_percentage: None,
            success_rate: None,
            base: Duration::from_secs(10),
            max: Duration::from_secs(25),
            interval: Duration::from_secs(100),
            max_percent: 50,
        }
    }

    #[test]
    fn ejections_grow_by_base_cap_at_max_and_decay_per_interval() {
        let (o, c, t0) = (Outlier::default(), cfg(), Instant::now());
        let none = || (0, 4);
        assert_eq!(o.failure(&c, t0, none), Ejection::None);
        o.success();
        assert_eq!(
            o.failure(&c, t0, none),
            Ejection::None,
            "a success reset the count"
        );
        assert_eq!(
            o.failure(&c, t0, none),
            Ejection::Ejected(Duration::from_secs(10))
        );
        assert!(o.is_ejected(t0 + Duration::from_secs(9)));
        assert!(!o.is_ejected(t0 + Duration::from_secs(10)));
        let t1 = t0 + Duration::from_secs(11);
        o.failure(&c, t1, none);
        assert_eq!(
            o.failure(&c, t1, none),
            Ejection::Ejected(Duration::from_secs(20))
        );
        let t2 = t1 + Duration::from_secs(21);
        o.failure(&c, t2, none);
        assert_eq!(
            o.failure(&c, t2, none),
            Ejection::Ejected(Duration::from_secs(25)),
            "max"
        );
        // 250 s healthy after the third ejection ended: two intervals off the count (3 -> 1),
        // so the next one is the second: 20 s.
        let t3 = t2 + Duration::from_secs(25 + 250);
        o.failure(&c, t3, none);
        assert_eq!(
            o.failure(&c, t3, none),
            Ejection::Ejected(Duration::from_secs(20))
        );
    }

    #[test]
    fn max_ejection_percent_keeps_endpoints_in_but_one_may_always_go() {
        let (o, c, t0) = (Outlier::default(), cfg(), Instant::now());
        o.failure(&c, t0, || (0, 4));
        assert_eq!(
            o.failure(&c, t0, || (2, 4)),
            Ejection::Overflow,
            "50 % already out"
        );
        o.failure(&c, t0, || (1, 4));
        assert!(
            matches!(o.failure(&c, t0, || (1, 4)), Ejection::Ejected(_)),
            "25 % < 50 %"
        );
        let p = Outlier::default();
        let strict = OutlierConfig {
            max_percent: 0,
            ..cfg()
        };
        p.failure(&strict, t0, || (0, 4));
        assert!(
            matches!(p.failure(&strict, t0, || (0, 4)), Ejection::Ejected(_)),
            "at least one"
        );
    }
}
