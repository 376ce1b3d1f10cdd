//! One shard's side of the data plane: it binds its own copy of every listener (SO_REUSEPORT, so
//! the kernel spreads connections over shards), runs the accept loops, and drains when the
//! control thread says so.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shard::monoio::net::TcpListener;
use shard::{Event, Notify, Receiver, ShardCtx};

use crate::cluster::ShardCluster;
use crate::config::{self, Protocol};
use crate::dubbo::downstream::RequestStatIds;
use crate::dubbo::downstream::{self, DubboListener};
use crate::dubbo::router::Router;
use crate::dubbo::upstream::ClusterPool;
use crate::server::{ListenerStatIds, PollStatIds, ShardMsg, Shared, Snapshot, POLL_STATS_PUBLISH};
use crate::stats::ShardStats;
use crate::tcp_proxy;

/// Listen backlog per shard socket.
pub const LISTEN_BACKLOG: i32 = 1024;
/// Pause after an accept error such as EMFILE, so a full fd table does not spin the shard.
pub const ACCEPT_ERROR_BACKOFF_MS: u64 = 10;
/// Draining: connections tell their callers to go elsewhere (Dubbo readonly, HTTP/2 GOAWAY)
/// this long after the accept loops stopped. Callers reconnect at once when told; an io_uring
/// accept being cancelled at that very moment can complete with a connection nobody serves, so
/// the reconnects must find only the successor accepting.
pub const DRAIN_ANNOUNCE_DELAY_MS: u64 = 20;
/// How often a draining shard checks whether its connections are gone.
const DRAIN_POLL_MS: u64 = 10;

/// One drain of one listener's connections on one shard: when they are told to leave, and when
/// those still open are closed anyway. Started for every listener when the process drains
/// (SIGTERM, `/drain`, hot upgrade), and for one listener when a config update removes it or
/// replaces it by one with another address, protocol, `transparent` or `bind`.
#[derive(Default)]
pub struct Drain {
    started: Event,
    deadline: Cell<Option<Instant>>,
}

impl Drain {
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

/// One listener's connections on one shard, across the contexts a config update gives it:
/// how many are open (`connections_per_shard_max`), and the drain they follow.
#[derive(Default)]
pub struct Connections {
    open: Cell<u32>,
    /// Replaced by a fresh one when a drained shard resumes.
    drain: RefCell<Rc<Drain>>,
    /// Of the current drain: connections that ended, and those closed at its deadline.
    drained: Cell<u64>,
    closed_at_deadline: Cell<u64>,
    /// Notified when the last open connection ends.
    none_open: Notify,
}

impl Connections {
    pub fn drain(&self) -> Rc<Drain> {
        self.drain.borrow().clone()
    }
}

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

/// What every connection of one listener on one shard needs.
pub struct ListenerCtx {
    pub name: String,
    pub protocol: Protocol,
    /// The configured listening address (to refuse an original destination that loops back).
    pub address: SocketAddr,
    /// tcp: connect each connection to its original destination (a cluster of type
    /// `original_destination`).
    pub original_destination: bool,
    /// tcp: the listener's cluster (refreshed by every config update).
    pub cluster: std::cell::RefCell<Option<Rc<ShardCluster>>>,
    pub buffer_bytes: usize,
    pub idle_timeout: Duration,
    pub connections_max: u32,
    pub stats: ShardStats,
    pub ids: ListenerStatIds,
    /// Set for `dubbo` listeners.
    pub dubbo: Option<Rc<DubboListener>>,
    /// Set for `triple` listeners.
    pub triple: Option<Rc<crate::triple::TripleListener>>,
    /// This listener's connections on this shard (shared by its successive contexts).
    pub conns: Rc<Connections>,
    /// `original_destination` listeners: the `virtual_listeners` connections are handed to by
    /// original destination, exact addresses first (set after every config update).
    pub virtuals: RefCell<Rc<[Virtual]>>,
}

/// A virtual listener (`bind: false`) as an `original_destination` listener sees it.
pub struct Virtual {
    pub address: SocketAddr,
    pub listener: Rc<RefCell<Rc<ListenerCtx>>>,
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

/// A listener's routes as one shard runs them: compiled router, the upstream pool of each
/// cluster (indexed like the snapshot's clusters) and per-route stats. Immutable; a config
/// update puts a new one in the listener's [`RoutesCell`].
pub struct Routes<R, P> {
    pub router: R,
    pub pools: Vec<Rc<P>>,
    /// Per route in config order, then the default route.
    pub route_ids: Vec<RequestStatIds>,
}

/// The current routes of one listener on one shard, shared by all its connections.
pub type RoutesCell<R, P> = Rc<RefCell<Rc<Routes<R, P>>>>;

/// Copies this shard's poll-loop counters into its stats, every `POLL_STATS_PUBLISH`, for as
/// long as the shard runs.
async fn publish_poll_stats(poll: shard::PollStats, stats: ShardStats, ids: PollStatIds) {
    let (mut idle, mut looped, mut sleeps) = (0u64, 0u64, 0u64);
    loop {
        shard::monoio::time::sleep(POLL_STATS_PUBLISH).await;
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
    triple: Option<Rc<crate::triple::Pool>>,
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

    fn retire(&self) {
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
    ctx: Rc<RefCell<Rc<ListenerCtx>>>,
    /// Ends this listener's accept loops.
    stop: Event,
    conns: Rc<Connections>,
}

/// A listener's config without its routes: a change here rebuilds the listener's context
/// (new connections get it); a change of routes only swaps the routes.
fn listener_params(l: &config::Listener) -> config::Listener {
    let mut p = l.clone();
    p.cluster = None;
    if let Some(d) = p.dubbo.as_mut() {
        d.routes.clear();
    }
    if let Some(t) = p.triple.as_mut() {
        t.routes.clear();
    }
    p
}

fn cluster_params(c: &config::Cluster) -> config::Cluster {
    let mut p = c.clone();
    p.endpoints.clear();
    p.endpoint_metadata.clear();
    p
}

/// Everything one shard runs: listeners, clusters and the snapshot they came from.
struct ShardState {
    id: usize,
    shared: Arc<Shared>,
    stats: ShardStats,
    snapshot: Arc<Snapshot>,
    clusters: HashMap<String, ClusterEntry>,
    listeners: Vec<ShardListener>,
    connections: Rc<Cell<usize>>,
    accepting: bool,
}

impl ShardState {
    /// Takes `snap`: clusters first (endpoint-only changes update pools in place), then
    /// listeners (route changes swap each listener's routes; new listeners start accepting;
    /// removed ones stop). Runs between requests, without awaiting.
    fn apply(&mut self, snap: Arc<Snapshot>, drains: &[Arc<DrainReport>]) {
        if let Some(d) = &snap.endpoints_only {
            if d.base == self.snapshot.version && self.apply_endpoints(&snap, &d.clusters) {
                self.snapshot = snap;
                return;
            }
        }
        let config = &snap.config;
        let needs_triple = config
            .listeners
            .iter()
            .any(|l| l.protocol == Protocol::Triple);
        let mut old = std::mem::take(&mut self.clusters);
        let mut replaced = false;
        for (i, c) in config.clusters.iter().enumerate() {
            let eps = &snap.endpoints[i];
            let params = cluster_params(c);
            let kept = match old.remove(&c.name) {
                Some(e) if e.params == params && e.lb.endpoints().generation == eps.generation => {
                    e.update_endpoints(eps);
                    Some(e)
                }
                Some(e) => {
                    e.retire();
                    None
                }
                None => None,
            };
            let mut entry = kept.unwrap_or_else(|| {
                replaced = true;
                let lb = Rc::new(ShardCluster::new(
                    c,
                    eps.clone(),
                    snap.cluster_ids[i].clone(),
                ));
                ClusterEntry {
                    params,
                    dubbo: ClusterPool::new(
                        c,
                        lb.clone(),
                        self.stats.clone(),
                        snap.upstream_ids[i],
                    ),
                    lb,
                    triple: None,
                }
            });
            if needs_triple && entry.triple.is_none() {
                replaced = true;
                entry.triple = Some(crate::triple::Pool::new(
                    c,
                    entry.lb.clone(),
                    self.stats.clone(),
                    snap.upstream_ids[i],
                ));
            }
            self.clusters.insert(c.name.clone(), entry);
        }
        for (_, e) in old.drain() {
            e.retire();
            replaced = true;
        }
        // Routes hold cluster indices: rebuild them all when any cluster came, went or moved.
        let reindexed = replaced
            || self.snapshot.config.clusters.len() != config.clusters.len()
            || self
                .snapshot
                .config
                .clusters
                .iter()
                .zip(&config.clusters)
                .any(|(a, b)| a.name != b.name);

        let mut old = std::mem::take(&mut self.listeners);
        for (index, l) in config.listeners.iter().enumerate() {
            let prev = old
                .iter()
                .position(|x| x.cfg.name == l.name)
                .map(|k| old.swap_remove(k));
            let sl = match prev {
                Some(p) if keeps_connections(&p.cfg, l) => {
                    let ctx = p.ctx.borrow().clone();
                    if listener_params(&p.cfg) != listener_params(l) {
                        let fresh = self.listener_ctx(&snap, index, Some(&ctx), p.conns.clone());
                        *p.ctx.borrow_mut() = fresh;
                    } else if reindexed || p.cfg != *l {
                        self.swap_routes(&snap, index, &ctx);
                    }
                    *p.ctx.borrow().cluster.borrow_mut() = self.tcp_cluster(l);
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
                        ctx: Rc::new(RefCell::new(self.listener_ctx(
                            &snap,
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
        self.link_virtuals();
        self.snapshot = snap;
    }

    /// A listener the update removed or replaced: it stops accepting and its connections drain
    /// (Dubbo readonly, Triple GOAWAY) for up to `drain_timeout_ms`; once they are all gone,
    /// this shard adds its part to the listener's drain report.
    fn drain_gone(&self, gone: ShardListener, drains: &[Arc<DrainReport>]) {
        gone.stop.set();
        let timeout = Duration::from_millis(self.shared.config.drain_timeout_ms);
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
                })
                .collect();
            v.sort_by_key(|x| x.address.ip().is_unspecified());
            *sl.ctx.borrow().virtuals.borrow_mut() = v.into();
        }
    }

    fn tcp_cluster(&self, l: &config::Listener) -> Option<Rc<ShardCluster>> {
        let name = l.cluster.as_ref()?;
        self.clusters.get(name).map(|e| e.lb.clone())
    }

    fn dubbo_routes(&self, snap: &Snapshot, index: usize) -> Rc<Routes<Router, ClusterPool>> {
        let l = &snap.config.listeners[index];
        // The control thread compiled these routes before sending the snapshot.
        let router = Router::new(l, &snap.config.clusters).unwrap_or_else(|e| {
            tracing::error!(listener = %l.name, error = %e, "routes did not compile on a shard");
            Router::empty()
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
        })
    }

    fn triple_routes(
        &self,
        snap: &Snapshot,
        index: usize,
    ) -> Rc<Routes<crate::triple::router::Router, crate::triple::Pool>> {
        let l = &snap.config.listeners[index];
        let router = crate::triple::router::Router::new(l, &snap.config.clusters).unwrap_or_else(
            |e| {
                tracing::error!(listener = %l.name, error = %e, "routes did not compile on a shard");
                crate::triple::router::Router::empty()
            },
        );
        Rc::new(Routes {
            router,
            pools: snap
                .config
                .clusters
                .iter()
                .filter_map(|c| self.clusters[&c.name].triple.clone())
                .collect(),
            route_ids: snap.route_ids[index].clone(),
        })
    }

    fn swap_routes(&self, snap: &Snapshot, index: usize, ctx: &ListenerCtx) {
        if let Some(d) = &ctx.dubbo {
            *d.routes.borrow_mut() = self.dubbo_routes(snap, index);
        }
        if let Some(t) = &ctx.triple {
            *t.routes.borrow_mut() = self.triple_routes(snap, index);
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
        let dubbo = snap.dubbo_ids[index].map(|dubbo_ids| {
            let d = l.dubbo.clone().unwrap_or_default();
            let routes = self.dubbo_routes(snap, index);
            let (routes, services) = match prev.and_then(|p| p.dubbo.as_ref()) {
                Some(p) => {
                    *p.routes.borrow_mut() = routes;
                    (p.routes.clone(), p.services.clone())
                }
                None => (Rc::new(RefCell::new(routes)), Default::default()),
            };
            Rc::new(DubboListener {
                name: l.name.clone(),
                routes,
                frame_bytes_max: d.frame_bytes_max,
                pending_max: d.pending_requests_per_connection_max,
                timers: crate::dubbo::downstream::Timers::from_config(l, &d),
                output_bytes_max: d.output_bytes_max,
                stats: stats.clone(),
                ids: dubbo_ids,
                services,
                dice: crate::dubbo::router::Dice::new((id as u32 + 1).wrapping_mul(0x9e37_79b9)),
            })
        });
        let triple = snap.triple_ids[index].clone().map(|ids| {
            let t = l.triple.clone().unwrap_or_default();
            let routes = self.triple_routes(snap, index);
            let (routes, services) = match prev.and_then(|p| p.triple.as_ref()) {
                Some(p) => {
                    *p.routes.borrow_mut() = routes;
                    (p.routes.clone(), p.services.clone())
                }
                None => (Rc::new(RefCell::new(routes)), Default::default()),
            };
            Rc::new(crate::triple::TripleListener {
                name: l.name.clone(),
                routes,
                limits: crate::triple::H2Limits::from_config(&t),
                stats: stats.clone(),
                ids,
                services,
                dice: crate::dubbo::router::Dice::new((id as u32 + 7).wrapping_mul(0x9e37_79b9)),
            })
        });
        Rc::new(ListenerCtx {
            name: l.name.clone(),
            protocol: l.protocol,
            address: l.address,
            original_destination: l.original_destination,
            cluster: RefCell::new(self.tcp_cluster(l)),
            buffer_bytes: l.buffer_bytes,
            idle_timeout: Duration::from_millis(l.idle_timeout_ms),
            connections_max: l.connections_per_shard_max,
            stats: stats.clone(),
            ids: snap.listener_ids[index],
            dubbo,
            triple,
            conns,
            virtuals: RefCell::new(Rc::new([])),
        })
    }

    /// Accept loops on this shard's sockets of `sl`, until `sl.stop`.
    fn start_accepting(&self, sl: &ShardListener) {
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
        let socks = match self.shared.sockets.for_shard(self.id, &sl.cfg.name) {
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
    /// `timeout`.
    fn drain_all(&mut self, timeout: Duration) {
        self.accepting = false;
        for sl in &self.listeners {
            sl.stop.set();
            sl.conns.drain().start(timeout);
        }
    }

    fn resume_accepting(&mut self) {
        self.accepting = true;
        for sl in &mut self.listeners {
            sl.stop = Event::new();
            *sl.conns.drain.borrow_mut() = Rc::new(Drain::default());
        }
        for sl in &self.listeners {
            self.start_accepting(sl);
        }
    }
}

/// Set-up on the shard thread, then the shard's future: the snapshot current at start, then
/// every update the control thread sends.
pub fn shard_main(
    ctx: ShardCtx,
    shared: Arc<Shared>,
    inbox: Receiver<ShardMsg>,
) -> Result<impl std::future::Future<Output = ()>, String> {
    let id = ctx.info.id;
    let poll_stats = ctx.info.poll_stats.clone();
    Ok(async move {
        let stats = shared.stats.shard(id);
        shard::monoio::spawn(publish_poll_stats(
            poll_stats,
            stats.clone(),
            shared.poll_ids[id],
        ));
        let first = shared.snapshot();
        let mut st = ShardState {
            id,
            shared: shared.clone(),
            stats,
            snapshot: Arc::new(crate::server::Snapshot::empty()),
            clusters: HashMap::new(),
            listeners: Vec::new(),
            connections: Rc::new(Cell::new(0usize)),
            accepting: true,
        };
        #[cfg(feature = "dpdk")]
        crate::dpdk::start_shard(id, &shared.stats, st.stats.clone());
        st.apply(first, &[]);
        shared
            .lifecycle
            .shards_serving
            .fetch_add(1, Ordering::AcqRel);
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
                        shared
                            .lifecycle
                            .shards_drained
                            .fetch_add(1, Ordering::AcqRel);
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
                Some(ShardMsg::Drain { timeout, linger: l }) if deadline.is_none() => {
                    shared
                        .lifecycle
                        .shards_serving
                        .fetch_sub(1, Ordering::AcqRel);
                    st.drain_all(timeout);
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
                    shared
                        .lifecycle
                        .shards_serving
                        .fetch_add(1, Ordering::AcqRel);
                    if reported {
                        shared
                            .lifecycle
                            .shards_drained
                            .fetch_sub(1, Ordering::AcqRel);
                    }
                    deadline = None;
                    reported = false;
                    tracing::info!(shard = id, "resumed accepting");
                }
                Some(ShardMsg::Finish) => break,
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
        tracing::debug!(shard = id, "drained");
    })
}

/// A listening socket of one shard; `transparent`: IP_TRANSPARENT (TPROXY). Carries
/// `runtime.socket_mark` when set.
pub fn bind_reuseport(
    addr: SocketAddr,
    transparent: bool,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    crate::intercept::prepare_listener(&socket, transparent)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
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
    let conns = l.conns.clone();
    let drain = conns.drain();
    l.stats.inc(l.ids.cx_total);
    l.stats.inc(l.ids.cx_active);
    conns.open.set(conns.open.get() + 1);
    // Whether the drain's deadline cut the connection.
    let cut = match l.protocol {
        // Config validation keeps TCP listeners off the DPDK path.
        Protocol::Tcp => match crate::io::Conn::into_kernel(stream) {
            Ok(s) => tcp_proxy::serve(s, l.clone(), &drain).await,
            Err(_) => {
                tracing::error!(listener = %l.name, "tcp proxy needs a kernel socket");
                false
            }
        },
        Protocol::Dubbo => match l.dubbo.clone() {
            Some(d) => downstream::serve(stream, d, &drain).await,
            None => false,
        },
        Protocol::Triple => match l.triple.clone() {
            Some(t) => crate::triple::conn::serve(stream, t, &drain).await,
            None => false,
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

async fn accept_loop<A: crate::io::Accept>(
    mut listener: A,
    slot: Rc<RefCell<Rc<ListenerCtx>>>,
    stop: Event,
    connections: Rc<Cell<usize>>,
) {
    loop {
        // The listener's context as of now (a config update may have replaced it).
        let l = slot.borrow().clone();
        let accepted = shard::monoio::select! {
            r = listener.accept() => r,
            _ = stop.wait() => return,
        };
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
