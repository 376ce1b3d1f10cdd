//! One shard's side of the data plane: its state (`ShardState`: the listeners and clusters of
//! the snapshot it runs, applied between two events), its main loop (`shard_main`: the inbox of
//! snapshots and drains from the control thread), and its listeners' accept loops and
//! connections (`listener`).

pub mod listener;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shard::monoio::net::{TcpListener, TcpStream};
use shard::{Event, Receiver, ShardCtx};

use crate::cluster::ShardCluster;
use crate::config::{self, Protocol};
use crate::filter::dubbo::downstream::DubboListener;
use crate::filter::dubbo::router as dubbo;
use crate::filter::dubbo::upstream::ClusterPool;
use crate::filter::tcp::TcpProxy;
use crate::filter::triple::router as triple;
use crate::filter::{Budget, Drain, HandedOver, Handover, Latest, Routes, UpstreamHandedOver};
use crate::route::Dice;
use crate::snapshot::{PollStatIds, ShardStatIds, Snapshot};
use crate::stats::istio::Protocol as IstioProtocol;
use crate::stats::{ShardStats, Stats, POLL_STATS_PUBLISH};
use listener::{accept_loop, Connections, ListenerCtx, Virtual};

/// What a shard needs from the process that runs it, read when the shard starts, applies a
/// snapshot or changes state; never per request. Implemented by the control side
/// (`control::server::Shared`), so that the data path imports nothing from `control`.
pub trait Process: Send + Sync + 'static {
    fn stats(&self) -> &Arc<Stats>;
    /// Shard `shard`'s own stats (poll loop, buffer budget).
    fn shard_ids(&self, shard: usize) -> ShardStatIds;
    /// `runtime.buffered_bytes_per_shard_max` (read when the shard starts).
    fn buffered_bytes_max(&self) -> usize;
    /// The snapshot the shards run now (a starting shard's first).
    fn snapshot(&self) -> Arc<Snapshot>;
    /// How long a removed listener's connections may take to finish.
    fn drain_timeout(&self) -> Duration;
    /// Duplicates of the listening sockets of `listener` that shard `shard` accepts on.
    fn listen_sockets(
        &self,
        shard: usize,
        listener: &str,
    ) -> Result<Vec<std::net::TcpListener>, String>;
    /// A shard started (`true`) or stopped (`false`) accepting.
    fn shard_serving(&self, serving: bool);
    /// A shard lingering after a hot-upgrade drain finished it (`true`), or resumed (`false`).
    fn shard_drained(&self, drained: bool);
    /// Hot upgrade: a live connection for the successor (`false`: not taken).
    fn hand_over(&self, conn: HandedOver) -> bool;
}

/// A shard's connections go to the hot-upgrade successor through the process; `tcp`: the
/// successor adopts TCP proxy connections too (handoff protocol 3).
struct ToSuccessor(Arc<dyn Process>, bool);

impl Handover for ToSuccessor {
    fn hand_over(&self, conn: HandedOver) -> bool {
        self.0.hand_over(conn)
    }

    fn takes_tcp(&self) -> bool {
        self.1
    }
}

/// A connection a hot-upgrade predecessor handed over, on its way to a shard.
pub struct Adoption {
    /// The listener that serves it (by name).
    pub listener: String,
    pub stream: std::net::TcpStream,
    /// What the predecessor read from it and did not forward.
    pub unread: Vec<u8>,
    /// A TCP proxy connection: its upstream half, as the predecessor named it.
    pub upstream: Option<UpstreamHandedOver>,
    /// When the predecessor stopped reading it and when it sent it (`hotswap::monotonic_ns`,
    /// 0 when it did not say).
    pub paused_at_ns: u64,
    pub sent_at_ns: u64,
}

/// Messages queued into each shard's inbox.
pub const SHARD_INBOX_MAX: usize = 64;

/// Control thread → shard.
pub enum ShardMsg {
    /// A new config snapshot: swap it in between requests, then count yourself in `done`.
    /// `drains`: the listeners it removes or replaces, whose connections drain.
    Apply {
        snapshot: Arc<Snapshot>,
        done: Arc<AtomicUsize>,
        drains: Arc<[Arc<DrainReport>]>,
    },
    /// Stop accepting, tell Dubbo callers we are going away, let connections finish for at
    /// most `timeout`, then end the shard.
    /// With `linger` (hot upgrade), a drained shard waits for `Finish` or `Resume`; with
    /// `hand_over`, Dubbo connections go to the successor ([`Process::hand_over`]), and with
    /// `hand_over_tcp` TCP proxy connections too.
    Drain {
        timeout: Duration,
        linger: bool,
        hand_over: bool,
        hand_over_tcp: bool,
    },
    /// Hot upgrade, new side: serve this connection the predecessor handed over.
    Adopt(Adoption),
    /// The successor of a hot upgrade failed while we drained: accept again.
    Resume,
    /// Every shard drained (hot upgrade): end the shard.
    Finish,
    /// `POST /drain_listeners`: the connections of the listeners in `scope` (those there now
    /// and those a later update adds) drain as in a listener drain (Dubbo readonly, Triple
    /// GOAWAY; closed `timeout` after), new ones told at once; the listeners keep accepting.
    DrainListeners {
        scope: ListenerScope,
        timeout: Duration,
    },
    /// The listeners in `scope` stop accepting for good (the control thread closed their
    /// sockets); a later update's listeners in it do not start.
    StopListeners { scope: ListenerScope },
}

/// Which listeners `POST /drain_listeners` drains: `inboundonly` those with
/// `traffic_direction: inbound`, else all. `All` covers `Inbound`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ListenerScope {
    Inbound,
    All,
}

impl ListenerScope {
    pub fn covers(self, l: &config::Listener) -> bool {
        self == ListenerScope::All || l.traffic_direction == Some(config::TrafficDirection::Inbound)
    }

    /// The wider of `self` and `other` (either may be unset).
    pub fn widen(self, other: Option<ListenerScope>) -> ListenerScope {
        other.map_or(self, |o| o.max(self))
    }
}

/// How often a draining shard checks whether its connections are gone.
const DRAIN_POLL_MS: u64 = 10;

/// The drain of a listener that a config update removed or replaced, as the control thread
/// hands it to every shard: each shard adds what its connections did once they are all gone,
/// and the last one logs the listener's one line.
pub struct DrainReport {
    pub listener: String,
    started: Instant,
    timeout: Duration,
    shards_left: AtomicUsize,
    connections: AtomicU64,
    closed_at_deadline: AtomicU64,
}

impl DrainReport {
    pub fn new(listener: &str, shards: usize, timeout: Duration) -> Arc<DrainReport> {
        Arc::new(DrainReport {
            listener: listener.to_string(),
            started: Instant::now(),
            timeout,
            shards_left: AtomicUsize::new(shards),
            connections: AtomicU64::new(0),
            closed_at_deadline: AtomicU64::new(0),
        })
    }

    fn shard_done(&self, connections: u64, closed_at_deadline: u64) {
        self.connections.fetch_add(connections, Ordering::AcqRel);
        self.closed_at_deadline
            .fetch_add(closed_at_deadline, Ordering::AcqRel);
        if self.shards_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            tracing::info!(
                listener = %self.listener,
                connections = self.connections.load(Ordering::Acquire),
                closed_at_timeout = self.closed_at_deadline.load(Ordering::Acquire),
                drain_ms = self.started.elapsed().as_millis() as u64,
                drain_timeout_ms = self.timeout.as_millis() as u64,
                "listener drained"
            );
        }
    }
}

/// Whether a listener's connections can stay when an update changes it from `old` to `new`
/// (same name): its socket and protocol are the same. Otherwise the old listener's connections
/// drain and the new one starts afresh.
pub fn keeps_connections(old: &config::Listener, new: &config::Listener) -> bool {
    old.address == new.address
        && old.protocol == new.protocol
        && old.transparent == new.transparent
        && old.bind == new.bind
}

/// Copies this shard's poll-loop counters and its buffered bytes into its stats, every
/// `POLL_STATS_PUBLISH`, for as long as the shard runs.
async fn publish_poll_stats(
    poll: shard::PollStats,
    stats: ShardStats,
    ids: PollStatIds,
    budget: Rc<Budget>,
) {
    let (mut idle, mut looped, mut sleeps) = (0u64, 0u64, 0u64);
    loop {
        shard::monoio::time::sleep(POLL_STATS_PUBLISH).await;
        budget.publish();
        let now = (
            poll.idle_spin().as_micros() as u64,
            poll.loop_time().as_micros() as u64,
            poll.sleeps(),
        );
        stats.add(ids.idle_spin_us, now.0.saturating_sub(idle));
        stats.add(ids.loop_us, now.1.saturating_sub(looped));
        stats.add(ids.sleeps, now.2.saturating_sub(sleeps));
        (idle, looped, sleeps) = now;
    }
}

/// One cluster on one shard: balancer state and the upstream pools of each protocol.
struct ClusterEntry {
    /// The cluster's config without its endpoints (a change replaces the entry).
    params: config::Cluster,
    lb: Rc<ShardCluster>,
    dubbo: Rc<ClusterPool>,
    /// Built once a triple listener exists.
    triple: Option<Rc<crate::filter::triple::Pool>>,
}

impl ClusterEntry {
    /// New endpoints in the same table (same generation): slots that stay keep their pools and
    /// connections; endpoints that left get no new requests and their connections close once
    /// idle.
    fn update_endpoints(&self, eps: &Arc<crate::cluster::Endpoints>) {
        if !Arc::ptr_eq(&self.lb.endpoints(), eps) {
            let gone = self.lb.set_endpoints(eps.clone());
            self.dubbo.retire(&gone);
            if let Some(t) = &self.triple {
                t.retire(&gone);
            }
        }
    }
}

/// An entry leaves service when it is dropped (its cluster changed or left the config, or the
/// shard state went away): its pools retire, connections closing once idle. A pool and its
/// hosts point at each other (a host's connections need the pool's settings); retiring empties
/// the host table, which ends that cycle, so the pools are freed once their connections close.
impl Drop for ClusterEntry {
    fn drop(&mut self) {
        self.dubbo.retire_all();
        if let Some(t) = &self.triple {
            t.retire_all();
        }
    }
}

/// One listener on one shard.
struct ShardListener {
    cfg: config::Listener,
    /// Read by the accept loops for each new connection.
    ctx: Rc<Latest<ListenerCtx>>,
    /// Ends this listener's accept loops.
    stop: Event,
    conns: Rc<Connections>,
}

/// A listener's config without its routes: a change here rebuilds the listener's context
/// (new connections get it); a change of routes only swaps the routes.
fn listener_params(l: &config::Listener) -> config::Listener {
    let mut p = l.clone();
    p.cluster = None;
    // Rate limits live with the routes (`filter::Routes::limits`).
    p.local_rate_limit = None;
    if let Some(d) = p.dubbo.as_mut() {
        d.routes.clear();
    }
    if let Some(t) = p.triple.as_mut() {
        t.routes.clear();
    }
    p
}

/// Listener `l`'s Istio metrics on this shard, when it has `istio_metrics`.
fn istio_listener(
    snap: &Snapshot,
    index: usize,
    stats: &crate::stats::ShardStats,
    protocol: IstioProtocol,
) -> Option<crate::stats::istio::IstioListener> {
    let reporter = snap.config.listeners[index].istio_metrics?;
    // Our certificate's SPIFFE id: destination_principal of inbound mutual-TLS calls.
    let principal = snap
        .tls
        .listeners
        .get(index)
        .and_then(|t| t.as_ref()?.principal.clone());
    Some(crate::stats::istio::IstioListener::new(
        stats.clone(),
        reporter,
        protocol,
        stats.stats.istio_node(),
        principal,
        stats.stats.istio_label_sets_max,
    ))
}

/// This shard's fronts of listener `index`'s rate limit buckets, when it has any.
fn shard_limits(snap: &Snapshot, index: usize) -> Option<Box<crate::filter::ratelimit::Limits>> {
    let shared = snap.limits.get(index)?.as_ref()?;
    Some(Box::new(shared.for_shard()))
}

/// This shard's concurrency limits of a listener's routes (none when no route has one).
fn shard_concurrency(
    l: &config::Listener,
    shards: usize,
) -> Box<[Option<Rc<crate::filter::ratelimit::Concurrency>>]> {
    // Route indices as the routers number them: a Dubbo listener's routes; a Triple
    // listener's routes, then each virtual host's (`all_routes`).
    let limits: Vec<Option<u32>> = match (&l.dubbo, &l.triple) {
        (Some(d), _) => d.routes.iter().map(|r| r.max_concurrent_requests).collect(),
        (_, Some(t)) => t.all_routes().map(|r| r.max_concurrent_requests).collect(),
        _ => Vec::new(),
    };
    if limits.iter().all(Option::is_none) {
        return Box::new([]);
    }
    limits
        .into_iter()
        .map(|m| m.map(|m| crate::filter::ratelimit::Concurrency::for_shard(m, shards)))
        .collect()
}

fn cluster_params(c: &config::Cluster) -> config::Cluster {
    let mut p = c.clone();
    p.endpoints.clear();
    p.endpoint_metadata.clear();
    // Derived from the endpoints' health, published with them (`Endpoints::load`,
    // `Endpoints::level_hosts`): an EDS health change updates the cluster, keeping its pools
    // and what the shard learnt of its endpoints (back-off, ejections).
    p.priority_load.clear();
    p.priority_hosts.clear();
    p.overprovisioning = 0;
    p
}

/// Everything one shard runs: listeners, clusters and the snapshot they came from.
struct ShardState {
    id: usize,
    /// `None`: a detached shard ([`Detached`], feature `fuzz`): no sockets, no control thread.
    process: Option<Arc<dyn Process>>,
    stats: ShardStats,
    /// Bytes this shard's connections hold buffered, and their limit.
    budget: Rc<Budget>,
    snapshot: Arc<Snapshot>,
    clusters: HashMap<String, ClusterEntry>,
    listeners: Vec<ShardListener>,
    connections: Rc<Cell<usize>>,
    accepting: bool,
    /// `POST /drain_listeners`: the listeners whose connections drain, and for how long.
    listener_drain: Option<(ListenerScope, Duration)>,
    /// The listeners that stopped accepting for good (the end of a `/drain_listeners`).
    stopped: Option<ListenerScope>,
    /// Access-log batches of this shard, one per file.
    logs: crate::access_log::ShardLogs,
    /// Span batches of this shard, one per collector.
    traces: crate::trace::ShardTraces,
}

impl ShardState {
    /// Takes `snap`: clusters first (endpoint-only changes update pools in place), then
    /// listeners (route changes swap each listener's routes; new listeners start accepting;
    /// removed ones stop). Runs between requests, without awaiting.
    fn apply(&mut self, snap: Arc<Snapshot>, drains: &[Arc<DrainReport>]) {
        if let Some(d) = &snap.endpoints_only {
            if d.base == self.snapshot.version && self.apply_endpoints(&snap, &d.clusters) {
                self.link_zones(&snap);
                self.snapshot = snap;
                return;
            }
        }
        let reindexed = self.apply_clusters(&snap);
        self.link_zones(&snap);
        self.apply_listeners(&snap, reindexed, drains);
        self.link_virtuals();
        self.link_chains();
        self.follow_listener_drain();
        self.snapshot = snap;
    }

    /// `POST /drain_listeners` reached this shard: see [`ShardMsg::DrainListeners`].
    fn drain_listeners(&mut self, scope: ListenerScope, timeout: Duration) {
        let scope = scope.widen(self.listener_drain.map(|(s, _)| s));
        self.listener_drain = Some((scope, timeout));
        self.follow_listener_drain();
    }

    /// See [`ShardMsg::StopListeners`].
    fn stop_listeners(&mut self, scope: ListenerScope) {
        self.stopped = Some(scope.widen(self.stopped));
        self.follow_listener_drain();
    }

    /// The listeners in a `/drain_listeners` scope drain (starting a drain that runs is a
    /// no-op: its deadline stays), those in a stopped scope stop accepting.
    fn follow_listener_drain(&self) {
        if let Some((scope, timeout)) = self.listener_drain {
            for sl in self.listeners.iter().filter(|l| scope.covers(&l.cfg)) {
                sl.conns.drain().start(timeout);
            }
        }
        if let Some(scope) = self.stopped {
            for sl in self.listeners.iter().filter(|l| scope.covers(&l.cfg)) {
                sl.stop.set();
            }
        }
    }

    /// The clusters of `snap`: kept (endpoint changes applied in place) when their settings
    /// and endpoint generation are the same, else new pools while the old ones retire. Returns
    /// whether the listeners' routes must be rebuilt (they hold cluster indices): a cluster
    /// came, went, moved or got new pools.
    fn apply_clusters(&mut self, snap: &Snapshot) -> bool {
        let config = &snap.config;
        // Triple listeners, and the network ext_authz filter's Check calls.
        let needs_triple = config
            .listeners
            .iter()
            .any(|l| l.protocol == Protocol::Triple || l.ext_authz.is_some());
        let mut old = std::mem::take(&mut self.clusters);
        let mut replaced = false;
        for (i, c) in config.clusters.iter().enumerate() {
            let eps = &snap.endpoints[i];
            let params = cluster_params(c);
            let kept = match old.remove(&c.name) {
                Some(e) if e.params == params && e.lb.endpoints().generation == eps.generation => {
                    e.update_endpoints(eps);
                    // New certificates (SDS) for the connections it opens from now on.
                    e.lb.set_tls(snap.tls.clusters.get(i).cloned().flatten());
                    Some(e)
                }
                // Changed: the old entry is dropped here, which retires its pools.
                Some(_) | None => None,
            };
            let mut entry = kept.unwrap_or_else(|| {
                replaced = true;
                let lb = Rc::new(ShardCluster::new(
                    c,
                    eps.clone(),
                    snap.cluster_ids[i].clone(),
                    snap.tls.clusters.get(i).cloned().flatten(),
                ));
                ClusterEntry {
                    params,
                    dubbo: ClusterPool::new(
                        c,
                        lb.clone(),
                        self.stats.clone(),
                        snap.upstream_ids[i],
                        self.budget.clone(),
                    ),
                    lb,
                    triple: None,
                }
            });
            if needs_triple && entry.triple.is_none() {
                replaced = true;
                entry.triple = Some(crate::filter::triple::Pool::new(
                    c,
                    entry.lb.clone(),
                    self.stats.clone(),
                    snap.upstream_ids[i],
                    snap.upstream_h2_ids[i],
                    self.budget.clone(),
                ));
            }
            self.clusters.insert(c.name.clone(), entry);
        }
        // Clusters the config no longer has: dropped here, which retires their pools.
        replaced |= !old.is_empty();
        drop(old);
        // Routes hold cluster indices: rebuild them all when any cluster came, went or moved.
        replaced
            || self.snapshot.config.clusters.len() != config.clusters.len()
            || self
                .snapshot
                .config
                .clusters
                .iter()
                .zip(&config.clusters)
                .any(|(a, b)| a.name != b.name)
    }

    /// The listeners of `snap`: one that keeps its socket and protocol keeps its connections
    /// (new settings give new connections a new context; new routes are swapped in); new
    /// listeners start accepting; removed or replaced ones stop and their connections drain.
    fn apply_listeners(
        &mut self,
        snap: &Arc<Snapshot>,
        reindexed: bool,
        drains: &[Arc<DrainReport>],
    ) {
        let config = &snap.config;
        let mut old = std::mem::take(&mut self.listeners);
        for (index, l) in config.listeners.iter().enumerate() {
            let prev = old
                .iter()
                .position(|x| x.cfg.name == l.name)
                .map(|k| old.swap_remove(k));
            let sl = match prev {
                Some(p) if keeps_connections(&p.cfg, l) => {
                    let ctx = p.ctx.get();
                    // New certificates (SDS) give new connections a new context too.
                    let tls = snap.tls.listeners.get(index).cloned().flatten();
                    let same_tls = match (&ctx.tls, &tls) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (a, b) => a.is_none() && b.is_none(),
                    };
                    if listener_params(&p.cfg) != listener_params(l) || !same_tls {
                        let fresh = self.listener_ctx(snap, index, Some(&ctx), p.conns.clone());
                        p.ctx.set(fresh);
                    } else if reindexed || p.cfg != *l {
                        self.swap_routes(snap, index, &ctx);
                    }
                    if let Some(t) = &p.ctx.get().tcp {
                        *t.cluster.borrow_mut() = self.tcp_cluster(l);
                    }
                    *p.ctx.get().authz_client.borrow_mut() = self.authz_client(l);
                    ShardListener {
                        cfg: l.clone(),
                        ctx: p.ctx,
                        stop: p.stop,
                        conns: p.conns,
                    }
                }
                other => {
                    if let Some(p) = other {
                        self.drain_gone(p, drains);
                    }
                    let conns = Rc::new(Connections::default());
                    let sl = ShardListener {
                        cfg: l.clone(),
                        ctx: Rc::new(Latest::new(self.listener_ctx(
                            snap,
                            index,
                            None,
                            conns.clone(),
                        ))),
                        stop: Event::new(),
                        conns,
                    };
                    if self.accepting {
                        self.start_accepting(&sl);
                    }
                    sl
                }
            };
            self.listeners.push(sl);
        }
        for gone in old {
            self.drain_gone(gone, drains);
        }
    }

    /// A listener the update removed or replaced: it stops accepting and its connections drain
    /// (Dubbo readonly, Triple GOAWAY) for up to `drain_timeout_ms`; once they are all gone,
    /// this shard adds its part to the listener's drain report.
    fn drain_gone(&self, gone: ShardListener, drains: &[Arc<DrainReport>]) {
        gone.stop.set();
        let timeout = self
            .process
            .as_ref()
            .map_or(Duration::ZERO, |p| p.drain_timeout());
        let conns = gone.conns;
        conns.drained.set(0);
        conns.closed_at_deadline.set(0);
        conns.drain().start(timeout);
        tracing::debug!(shard = self.id, listener = %gone.cfg.name, open = conns.open.get(), "listener removed: draining its connections");
        let report = drains
            .iter()
            .find(|r| r.listener == gone.cfg.name)
            .cloned()
            // Every shard gets the control thread's report; this one stands in should a
            // listener ever be dropped without one (the line is then per shard).
            .unwrap_or_else(|| DrainReport::new(&gone.cfg.name, 1, timeout));
        shard::monoio::spawn(async move {
            while conns.open.get() > 0 {
                conns.none_open.wait().await;
            }
            report.shard_done(conns.drained.get(), conns.closed_at_deadline.get());
        });
    }

    /// An endpoints-only snapshot after the one this shard runs: only the changed clusters'
    /// balancers and pools see it (work proportional to the change; listeners, routes and the
    /// other clusters stay as they are). False, with nothing done, when a changed cluster is
    /// not here or its table was renumbered: the full apply handles that.
    fn apply_endpoints(&self, snap: &Snapshot, changed: &[usize]) -> bool {
        let entry = |i: usize| {
            let c = snap.config.clusters.get(i)?;
            let eps = snap.endpoints.get(i)?;
            let e = self.clusters.get(&c.name)?;
            (e.lb.endpoints().generation == eps.generation).then_some((e, eps))
        };
        if !changed.iter().all(|&i| entry(i).is_some()) {
            return false;
        }
        for (e, eps) in changed.iter().filter_map(|&i| entry(i)) {
            e.update_endpoints(eps);
        }
        true
    }

    /// Zone-aware routing (docs/governance.md#zone-aware-routing): every cluster recomputes
    /// its routing if its endpoints or the local cluster's changed (a pointer comparison per
    /// cluster otherwise).
    fn link_zones(&self, snap: &Snapshot) {
        if snap.config.cluster_manager.is_none() && self.snapshot.config.cluster_manager.is_none() {
            return;
        }
        let local = snap
            .config
            .local_locality()
            .and_then(|(name, _)| self.clusters.get(name))
            .map(|e| e.lb.endpoints());
        for e in self.clusters.values() {
            e.lb.set_local(local.as_ref());
        }
    }

    /// Gives each `original_destination` listener the virtual listeners it names (validation
    /// made sure they exist and are virtual), exact addresses before wildcard ones.
    fn link_virtuals(&self) {
        for sl in self
            .listeners
            .iter()
            .filter(|l| !l.cfg.virtual_listeners.is_empty())
        {
            let mut v: Vec<Virtual> = sl
                .cfg
                .virtual_listeners
                .iter()
                .filter_map(|name| self.listeners.iter().find(|x| &x.cfg.name == name))
                .map(|x| Virtual {
                    address: x.cfg.address,
                    listener: x.ctx.clone(),
                    catch_all: self.catch_all(&x.cfg),
                })
                .collect();
            v.sort_by_key(|x| x.address.ip().is_unspecified());
            sl.ctx.get().virtuals.set(v.into());
        }
    }

    /// A dubbo or triple virtual listener's catch-all chain listener (validation made sure it
    /// is a virtual tcp listener), marked as such.
    fn catch_all(&self, v: &config::Listener) -> Option<Rc<Latest<ListenerCtx>>> {
        if v.protocol == Protocol::Tcp || !v.filter_chains.is_empty() {
            return None;
        }
        let name = v.default_filter_chain.as_ref()?.listener.as_ref()?;
        let x = self.listeners.iter().find(|x| &x.cfg.name == name)?;
        if let Some(t) = &x.ctx.get().tcp {
            t.handed.set(true);
        }
        Some(x.ctx.clone())
    }

    /// Gives each listener with `filter_chains` its compiled chains and the virtual listeners
    /// that serve them (validation made sure they exist and are virtual).
    fn link_chains(&self) {
        let ctx_of = |name: &Option<String>| {
            let name = name.as_ref()?;
            self.listeners
                .iter()
                .find(|x| &x.cfg.name == name)
                .map(|x| x.ctx.clone())
        };
        for sl in &self.listeners {
            let cfg = &sl.cfg;
            // A dubbo or triple virtual listener's default chain is its catch-all, which the
            // hand-off uses (link_virtuals).
            let chooses = cfg.protocol == Protocol::Tcp;
            if !chooses || (cfg.filter_chains.is_empty() && cfg.default_filter_chain.is_none()) {
                continue;
            }
            let matches: Vec<crate::filter::chain::Match> = cfg
                .filter_chains
                .iter()
                .map(|c| crate::filter::chain::Match::new(&c.matcher))
                .collect();
            let needs = matches.iter().fold((false, false), |acc, m| {
                let (t, a) = m.inspects();
                (acc.0 || t, acc.1 || a)
            });
            let chains = listener::Chains {
                targets: cfg
                    .filter_chains
                    .iter()
                    .map(|c| ctx_of(&c.listener))
                    .collect(),
                default: cfg
                    .default_filter_chain
                    .as_ref()
                    .map(|c| ctx_of(&c.listener)),
                matches,
                tls_inspector: cfg.tls_inspector.clone(),
                http_inspector: cfg.http_inspector.clone(),
                needs,
            };
            sl.ctx.get().chains.set(Rc::new(chains));
        }
    }

    /// The Check client of a listener's network ext_authz filter: the Triple pool of its
    /// cluster (every cluster has one when a listener has the filter).
    fn authz_client(
        &self,
        l: &config::Listener,
    ) -> Option<Rc<dyn crate::filter::ext_authz::CheckClient>> {
        let x = l.ext_authz.as_ref()?;
        let pool = self.clusters.get(&x.cluster)?.triple.clone()?;
        let limits = crate::filter::triple::H2Limits::from_config(
            &config::TripleListener::default(),
            l.idle_timeout_ms,
        );
        Some(Rc::new(crate::filter::triple::conn::PoolCheckClient {
            pool,
            limits,
            alpn: None,
        }))
    }

    fn tcp_cluster(&self, l: &config::Listener) -> Option<Rc<ShardCluster>> {
        let name = l.cluster.as_ref()?;
        self.clusters.get(name).map(|e| e.lb.clone())
    }

    fn dubbo_routes(
        &self,
        snap: &Snapshot,
        index: usize,
    ) -> Rc<Routes<dubbo::Router, ClusterPool>> {
        let l = &snap.config.listeners[index];
        // The control thread compiled these routes before sending the snapshot.
        let router = dubbo::compile(l, &snap.config.clusters).unwrap_or_else(|e| {
            tracing::error!(listener = %l.name, error = %e, "routes did not compile on a shard");
            dubbo::Router::empty()
        });
        Rc::new(Routes {
            router,
            pools: snap
                .config
                .clusters
                .iter()
                .map(|c| self.clusters[&c.name].dubbo.clone())
                .collect(),
            route_ids: snap.route_ids[index].clone(),
            limits: shard_limits(snap, index),
            concurrency: shard_concurrency(l, self.stats.stats.shard_count()),
            authz_pool: None,
        })
    }

    fn triple_routes(
        &self,
        snap: &Snapshot,
        index: usize,
    ) -> Rc<Routes<triple::Router, crate::filter::triple::Pool>> {
        let l = &snap.config.listeners[index];
        let router = triple::compile(l, &snap.config.clusters).unwrap_or_else(|e| {
            tracing::error!(listener = %l.name, error = %e, "routes did not compile on a shard");
            triple::Router::empty()
        });
        Rc::new(Routes {
            router,
            pools: snap
                .config
                .clusters
                .iter()
                .filter_map(|c| self.clusters[&c.name].triple.clone())
                .collect(),
            route_ids: snap.route_ids[index].clone(),
            limits: shard_limits(snap, index),
            concurrency: shard_concurrency(l, self.stats.stats.shard_count()),
            // Every cluster has a triple pool when the config has a Triple listener.
            authz_pool: l
                .triple
                .as_ref()
                .and_then(|t| t.ext_authz.as_ref())
                .and_then(|x| {
                    snap.config
                        .clusters
                        .iter()
                        .position(|c| c.name == x.cluster)
                }),
        })
    }

    fn swap_routes(&self, snap: &Snapshot, index: usize, ctx: &ListenerCtx) {
        if let Some(d) = &ctx.dubbo {
            d.routes.set(self.dubbo_routes(snap, index));
        }
        if let Some(t) = &ctx.triple {
            t.routes.set(self.triple_routes(snap, index));
        }
    }

    /// A listener's context; `prev` (the same listener before a parameter change) passes on
    /// its routes cell and per-service stats, so existing connections follow route updates.
    fn listener_ctx(
        &self,
        snap: &Snapshot,
        index: usize,
        prev: Option<&Rc<ListenerCtx>>,
        conns: Rc<Connections>,
    ) -> Rc<ListenerCtx> {
        let l = &snap.config.listeners[index];
        let id = self.id;
        let stats = &self.stats;
        let log = snap
            .access_logs
            .get(index)
            .and_then(|specs| self.logs.listener(specs, stats));
        let trace = self
            .traces
            .listener(snap.traces.get(index).and_then(Option::as_ref), stats);
        let dubbo = snap.dubbo_ids[index].map(|dubbo_ids| {
            let d = l.dubbo.clone().unwrap_or_default();
            let routes = self.dubbo_routes(snap, index);
            let (routes, services) = match prev.and_then(|p| p.dubbo.as_ref()) {
                Some(p) => {
                    p.routes.set(routes);
                    (p.routes.clone(), p.services.clone())
                }
                None => (Rc::new(Latest::new(routes)), Default::default()),
            };
            Rc::new(DubboListener {
                name: l.name.clone(),
                routes,
                frame_bytes_max: d.frame_bytes_max,
                pending_max: d.pending_requests_per_connection_max,
                timers: crate::filter::dubbo::downstream::Timers::from_config(l, &d),
                output_bytes_max: d.output_bytes_max,
                stats: stats.clone(),
                ids: dubbo_ids,
                budget: self.budget.clone(),
                services,
                service_memo: Default::default(),
                dice: Dice::new((id as u32 + 1).wrapping_mul(0x9e37_79b9)),
                log: log.clone(),
                log_pool: Default::default(),
                faults_active: Default::default(),
                istio: istio_listener(snap, index, &stats, IstioProtocol::Dubbo),
                trace: trace.clone(),
                trace_arena: Default::default(),
                rbac: crate::filter::rbac::Rbac::new(&d.rbac, &stats.stats),
                bound: l.bind.then_some(l.address),
                labels: d
                    .traffic_label
                    .as_ref()
                    .map(|t| crate::cluster::LabelKeys::new(t.dubbo_keys())),
            })
        });
        let triple = snap.triple_ids[index].clone().map(|ids| {
            let t = l.triple.clone().unwrap_or_default();
            let routes = self.triple_routes(snap, index);
            let (routes, services) = match prev.and_then(|p| p.triple.as_ref()) {
                Some(p) => {
                    p.routes.set(routes);
                    (p.routes.clone(), p.services.clone())
                }
                None => (Rc::new(Latest::new(routes)), Default::default()),
            };
            Rc::new(crate::filter::triple::TripleListener {
                name: l.name.clone(),
                routes,
                limits: crate::filter::triple::H2Limits::from_config(&t, l.idle_timeout_ms),
                stats: stats.clone(),
                ids,
                budget: self.budget.clone(),
                services,
                service_memo: Default::default(),
                dice: Dice::new((id as u32 + 7).wrapping_mul(0x9e37_79b9)),
                log: log.clone(),
                log_pool: Default::default(),
                faults_active: Default::default(),
                istio: istio_listener(snap, index, &stats, IstioProtocol::Grpc),
                trace,
                trace_pool: Default::default(),
                bound: l.bind.then_some(l.address),
                rbac: crate::filter::rbac::Rbac::new(&t.rbac, &stats.stats),
                ext_authz: t
                    .ext_authz
                    .as_ref()
                    .map(|x| crate::filter::ext_authz::ExtAuthz::new(x, &stats.stats)),
                jwt: snap.jwt.get(index).cloned().flatten(),
                labels: t
                    .traffic_label
                    .as_ref()
                    .map(|t| crate::cluster::LabelKeys::new(t.triple_keys())),
                http1: t.http1,
                alpn: crate::filter::triple::UpstreamAlpn::from_config(t.alpn_override.as_ref()),
                xfcc: (t.forward_client_cert, t.client_cert_details),
                stamp: crate::filter::triple::stamp::Stamp::from_config(&t),
                suppress_envoy_headers: t.suppress_envoy_headers,
                local_uris: snap
                    .tls
                    .listeners
                    .get(index)
                    .and_then(|t| t.as_ref())
                    .map(|t| t.uris.clone())
                    .unwrap_or_else(|| std::sync::Arc::from(Vec::new())),
            })
        });
        let tcp = (l.protocol == Protocol::Tcp).then(|| {
            Rc::new(TcpProxy {
                name: l.name.clone(),
                address: l.address,
                original_destination: l.original_destination,
                cluster: RefCell::new(self.tcp_cluster(l)),
                buffer_bytes: l.buffer_bytes,
                idle_timeout: Duration::from_millis(l.idle_timeout_ms),
                stats: stats.clone(),
                ids: snap.listener_ids[index],
                log: log.clone(),
                istio: istio_listener(snap, index, &stats, IstioProtocol::Tcp),
                handed: Cell::new(false),
            })
        });
        Rc::new(ListenerCtx {
            name: l.name.clone(),
            protocol: l.protocol,
            connections_max: l.connections_per_shard_max,
            stats: stats.clone(),
            ids: snap.listener_ids[index],
            dubbo,
            triple,
            tcp,
            conns,
            virtuals: Latest::new(Rc::new([])),
            chains: Latest::default(),
            tls: snap.tls.listeners.get(index).cloned().flatten(),
            rbac: crate::filter::rbac::Rbac::new(&l.rbac, &stats.stats),
            ext_authz: l
                .ext_authz
                .as_ref()
                .map(|x| crate::filter::ext_authz::ExtAuthz::network(x, &stats.stats)),
            authz_client: RefCell::new(self.authz_client(l)),
        })
    }

    /// Accept loops on this shard's sockets of `sl`, until `sl.stop`.
    fn start_accepting(&self, sl: &ShardListener) {
        if self.stopped.is_some_and(|s| s.covers(&sl.cfg)) {
            // Stopped by `/drain_listeners`: the control thread holds no socket for it.
            return;
        }
        if !sl.cfg.bind {
            // Virtual: its connections come from an original_destination listener.
            return;
        }
        #[cfg(feature = "dpdk")]
        if crate::dpdk::owns_listener(sl.cfg.address) {
            // On the port's address: accepted by this shard's DPDK stack (shards without a
            // queue pair do not accept there).
            if let Some(l) = crate::dpdk::listen(self.id, &sl.cfg.name, sl.cfg.address) {
                shard::monoio::spawn(accept_loop(
                    l,
                    sl.ctx.clone(),
                    sl.stop.clone(),
                    self.connections.clone(),
                ));
            }
            return;
        }
        let Some(process) = &self.process else {
            return;
        };
        let socks = match process.listen_sockets(self.id, &sl.cfg.name) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(shard = self.id, listener = %sl.cfg.name, error = %e, "cannot accept");
                return;
            }
        };
        for sock in socks {
            match TcpListener::from_std(sock) {
                Ok(listener) => {
                    shard::monoio::spawn(accept_loop(
                        listener,
                        sl.ctx.clone(),
                        sl.stop.clone(),
                        self.connections.clone(),
                    ));
                }
                Err(e) => {
                    tracing::error!(shard = self.id, listener = %sl.cfg.name, error = %e, "cannot register listener")
                }
            }
        }
    }

    /// The process drains: every listener stops accepting and its connections drain for up to
    /// `timeout`; with `hand_over`, those that can move go to the hot-upgrade successor.
    fn drain_all(&mut self, timeout: Duration, hand_over: bool, hand_over_tcp: bool) {
        self.accepting = false;
        let to: Option<Rc<dyn Handover>> = match &self.process {
            Some(p) if hand_over => Some(Rc::new(ToSuccessor(p.clone(), hand_over_tcp))),
            _ => None,
        };
        for sl in &self.listeners {
            sl.stop.set();
            match &to {
                Some(to) => sl.conns.drain().start_handing_over(timeout, to.clone()),
                None => sl.conns.drain().start(timeout),
            }
        }
    }

    /// Serves a connection the hot-upgrade predecessor handed over, on the plaintext Dubbo
    /// listener (or, with an upstream connection, the tcp listener) of its name as if this
    /// shard had accepted it; closed when this config has no such listener (its caller
    /// reconnects). Records how long it paused.
    fn adopt(&self, a: Adoption) {
        let protocol = match a.upstream {
            Some(_) => Protocol::Tcp,
            None => Protocol::Dubbo,
        };
        let sl = self
            .listeners
            .iter()
            .find(|sl| sl.cfg.name == a.listener && sl.cfg.protocol == protocol);
        let Some(ctx) = sl.map(|sl| sl.ctx.get()).filter(|c| c.tls.is_none()) else {
            tracing::warn!(shard = self.id, listener = %a.listener, ?protocol, "hot upgrade: a handed-over connection for a plaintext listener this config does not have; closing it");
            return;
        };
        if !ctx.admit() {
            return;
        }
        let kernel = |s: std::net::TcpStream| {
            s.set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(s))
        };
        let served = kernel(a.stream).and_then(|stream| {
            let carried = match a.upstream {
                None => listener::Carried::Dubbo(a.unread),
                Some(u) => listener::Carried::Tcp(crate::filter::tcp::Adopted {
                    up: kernel(std::net::TcpStream::from(u.fd))?,
                    cluster: u.cluster,
                    upstream: u.address,
                    to_upstream: a.unread,
                    to_downstream: u.unread,
                    started: u.started,
                    bytes_received: u.bytes_received,
                    bytes_sent: u.bytes_sent,
                }),
            };
            Ok((stream, carried))
        });
        let (stream, carried) = match served {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(shard = self.id, error = %e, "hot upgrade: cannot serve a handed-over connection");
                return;
            }
        };
        self.record_pause(&a.listener, a.paused_at_ns, a.sent_at_ns);
        let connections = self.connections.clone();
        connections.set(connections.get() + 1);
        shard::monoio::spawn(async move {
            listener::serve_adopted(stream, ctx, carried).await;
            connections.set(connections.get() - 1);
        });
    }

    /// How long an adopted connection paused: from its predecessor's last read until now (the
    /// shard is about to read it), in `server.hot_upgrade_handover_pause_us`; the split at the
    /// predecessor's send is logged at debug.
    fn record_pause(&self, listener: &str, paused_at_ns: u64, sent_at_ns: u64) {
        let (Some(p), true) = (&self.process, paused_at_ns > 0) else {
            return;
        };
        let now = hotswap::monotonic_ns();
        let pause_us = now.saturating_sub(paused_at_ns) / 1000;
        self.stats
            .record_us(p.shard_ids(self.id).handover_pause, pause_us);
        tracing::debug!(
            shard = self.id,
            %listener,
            pause_us,
            predecessor_us = sent_at_ns.saturating_sub(paused_at_ns) / 1000,
            transit_us = now.saturating_sub(sent_at_ns) / 1000,
            "hot upgrade: adopted a connection"
        );
    }

    fn resume_accepting(&mut self) {
        self.accepting = true;
        for sl in &mut self.listeners {
            sl.stop = Event::new();
            sl.conns.drain.set(Rc::new(Drain::default()));
        }
        for sl in &self.listeners {
            self.start_accepting(sl);
        }
        // A `/drain_listeners` drain outlives the failed hot upgrade.
        self.follow_listener_drain();
    }
}

/// A shard's clusters and listeners built from a snapshot as `shard_main` builds them, with no
/// socket and no control thread (feature `fuzz`): the fuzz targets hand its listeners
/// in-memory connections ([`listener::serve_connection`]) and its upstream pools connect through
/// `crate::io::fuzz::Upstreams`.
#[cfg(feature = "fuzz")]
pub struct Detached(ShardState);

#[cfg(feature = "fuzz")]
impl Detached {
    /// Must be called on the runtime that will serve its connections.
    pub fn new(snapshot: Arc<Snapshot>, stats: ShardStats) -> Detached {
        // The budget's stats go to the sink: a detached shard has no shard stats; the fuzz
        // targets read the budget itself ([`Detached::budget`]).
        let sink = crate::filter::BudgetStatIds {
            rq_shed_memory: crate::stats::SINK,
            buffered_bytes: crate::stats::SINK,
        };
        let max = snapshot.config.runtime.buffered_bytes_per_shard_max;
        let mut st = ShardState {
            id: 0,
            process: None,
            budget: Budget::new(max, stats.clone(), sink),
            stats,
            snapshot: Arc::new(Snapshot::empty()),
            clusters: HashMap::new(),
            listeners: Vec::new(),
            connections: Rc::new(Cell::new(0usize)),
            accepting: false,
            listener_drain: None,
            stopped: None,
            logs: Default::default(),
            traces: Default::default(),
        };
        st.apply(snapshot, &[]);
        Detached(st)
    }

    /// The current context of listener `name`.
    pub fn listener(&self, name: &str) -> Option<Rc<ListenerCtx>> {
        let sl = self.0.listeners.iter().find(|l| l.cfg.name == name)?;
        let ctx = sl.ctx.get();
        Some(ctx)
    }

    /// The shard's buffer budget.
    pub fn budget(&self) -> &Rc<Budget> {
        &self.0.budget
    }
}

/// Set-up on the shard thread, then the shard's future: the snapshot current at start, then
/// every update the control thread sends.
pub fn shard_main(
    ctx: ShardCtx,
    process: Arc<dyn Process>,
    inbox: Receiver<ShardMsg>,
) -> Result<impl std::future::Future<Output = ()>, String> {
    let id = ctx.info.id;
    let poll_stats = ctx.info.poll_stats.clone();
    Ok(async move {
        let stats = process.stats().shard(id);
        let ids = process.shard_ids(id);
        let budget = Budget::new(process.buffered_bytes_max(), stats.clone(), ids.budget);
        shard::monoio::spawn(publish_poll_stats(
            poll_stats,
            stats.clone(),
            ids.poll,
            budget.clone(),
        ));
        let first = process.snapshot();
        let mut st = ShardState {
            id,
            process: Some(process.clone()),
            stats,
            budget,
            snapshot: Arc::new(Snapshot::empty()),
            clusters: HashMap::new(),
            listeners: Vec::new(),
            connections: Rc::new(Cell::new(0usize)),
            accepting: true,
            listener_drain: None,
            stopped: None,
            logs: Default::default(),
            traces: Default::default(),
        };
        #[cfg(feature = "dpdk")]
        crate::dpdk::start_shard(id, process.stats(), st.stats.clone());
        st.apply(first, &[]);
        process.shard_serving(true);
        tracing::debug!(shard = id, "serving");

        // Serve until told to drain; a closed inbox (the control thread is gone) means stop now.
        // A hot-upgrade drain lingers once drained (the successor may still die and we resume)
        // until the control thread says Finish.
        let mut deadline = None;
        let mut linger = false;
        let mut reported = false;
        loop {
            let msg = match deadline {
                None => inbox.recv().await,
                Some(d) => {
                    let done = st.connections.get() == 0 || Instant::now() >= d;
                    if done && !linger {
                        break;
                    }
                    if done && !reported {
                        reported = true;
                        process.shard_drained(true);
                    }
                    shard::monoio::select! {
                        m = inbox.recv() => m,
                        _ = shard::monoio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)) => continue,
                    }
                }
            };
            match msg {
                Some(ShardMsg::Apply {
                    snapshot,
                    done,
                    drains,
                }) => {
                    st.apply(snapshot, &drains);
                    done.fetch_add(1, Ordering::AcqRel);
                }
                Some(ShardMsg::Drain {
                    timeout,
                    linger: l,
                    hand_over,
                    hand_over_tcp,
                }) if deadline.is_none() => {
                    process.shard_serving(false);
                    st.drain_all(timeout, hand_over, hand_over_tcp);
                    deadline = Some(Instant::now() + timeout);
                    linger = l;
                    if linger {
                        // A hot upgrade: the successor's shards may spin on our CPUs.
                        shard::force_sleep(true);
                    }
                }
                Some(ShardMsg::Resume) if deadline.is_some() => {
                    shard::force_sleep(false);
                    st.resume_accepting();
                    process.shard_serving(true);
                    if reported {
                        process.shard_drained(false);
                    }
                    deadline = None;
                    reported = false;
                    tracing::info!(shard = id, "resumed accepting");
                }
                Some(ShardMsg::Adopt(a)) => st.adopt(a),
                Some(ShardMsg::Finish) => break,
                Some(ShardMsg::DrainListeners { scope, timeout }) => {
                    st.drain_listeners(scope, timeout)
                }
                Some(ShardMsg::StopListeners { scope }) => st.stop_listeners(scope),
                Some(_) => {}
                None => break,
            }
        }
        if st.connections.get() > 0 {
            tracing::warn!(
                shard = id,
                open = st.connections.get(),
                "drain timeout: closing connections still open"
            );
        }
        // The lines of the last calls go to their writers (the process waits for them).
        st.logs.flush_all();
        st.traces.flush_all();
        tracing::debug!(shard = id, "drained");
    })
}
