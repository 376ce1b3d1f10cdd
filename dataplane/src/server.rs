//! The process: builds the stats layout from the config, starts the shards and the admin
//! listeners, and runs the control loop that turns signals and admin requests into a drain.
//!
//! Lifecycle: `Starting` → `Serving` (every shard bound its listeners and is accepting) →
//! `Draining` (SIGTERM, SIGINT, `POST /drain` or `POST /quitquitquit`: shards stop accepting and
//! wait up to `drain_timeout_ms` for their connections) → exit 0.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use shard::{ShardHandle, ShardInfo};

use crate::cluster::{ClusterStatIds, Endpoints, HostStatIds, Slot};
use crate::config::{self, Config};
use crate::dubbo::downstream::{DubboStatIds, RequestStatIds};
use crate::dubbo::upstream::UpstreamStatIds;
use crate::stats::{Kind, StatId, Stats};
use crate::{admin, listener};

/// Messages queued into each shard's inbox.
pub const SHARD_INBOX_MAX: usize = 64;

/// Control thread → shard.
pub enum ShardMsg {
    /// A new config snapshot: swap it in between requests, then count yourself in `done`.
    /// `drains`: the listeners it removes or replaces, whose connections drain.
    Apply {
        snapshot: Arc<Snapshot>,
        done: Arc<AtomicUsize>,
        drains: Arc<[Arc<listener::DrainReport>]>,
    },
    /// Stop accepting, tell Dubbo callers we are going away, let connections finish for at
    /// most `timeout`, then end the shard.
    /// With `linger` (hot upgrade), a drained shard waits for `Finish` or `Resume`.
    Drain { timeout: Duration, linger: bool },
    /// The successor of a hot upgrade failed while we drained: accept again.
    Resume,
    /// Every shard drained (hot upgrade): end the shard.
    Finish,
}

/// Listening sockets handed over by a predecessor (hot upgrade), by listener name.
#[derive(Default)]
pub struct Inherited {
    pub sockets: std::collections::HashMap<String, Vec<std::net::TcpListener>>,
}

impl Inherited {
    fn take(&mut self, name: &str) -> Vec<std::net::TcpListener> {
        self.sockets.remove(name).unwrap_or_default()
    }
}

/// Every listening socket of the process: per listener, per shard, the sockets that shard
/// accepts on (usually one; more when a predecessor ran more shards). The control thread keeps
/// these descriptors (shards accept on duplicates) so that a hot upgrade can hand them over and
/// a failed one can resume; they are closed only when the process stops listening.
pub struct ListenSockets {
    // Control plane only (start-up, config updates, drain, handoff); shards take this lock only
    // when they start accepting on a listener, never per connection.
    #[allow(clippy::disallowed_types)]
    inner: std::sync::Mutex<Option<Vec<BoundListener>>>,
    /// Admin listeners: (name, socket), `__admin` first.
    pub admin: Vec<(String, std::net::TcpListener)>,
}

/// One listener's sockets: per shard, the sockets that shard accepts on.
pub struct BoundListener {
    pub name: String,
    pub address: std::net::SocketAddr,
    /// IP_TRANSPARENT: a change rebinds the listener.
    pub transparent: bool,
    per_shard: Vec<Vec<std::net::TcpListener>>,
}

impl ListenSockets {
    /// Duplicates of this shard's sockets of listener `name`.
    pub fn for_shard(
        &self,
        shard: usize,
        name: &str,
    ) -> Result<Vec<std::net::TcpListener>, String> {
        let guard = self
            .inner
            .lock()
            .map_err(|_| "listen sockets poisoned".to_string())?;
        let all = guard.as_ref().ok_or("listening sockets already closed")?;
        let Some(b) = all.iter().find(|b| b.name == name) else {
            return Err(format!("no listening socket for listener {name:?}"));
        };
        b.per_shard
            .get(shard)
            .map(|socks| socks.iter().map(|s| s.try_clone()).collect())
            .unwrap_or(Ok(Vec::new()))
            .map_err(|e| format!("cannot duplicate a listening socket: {e}"))
    }

    /// (listener name, socket) for every listening socket, for a successor.
    pub fn for_handoff(&self) -> Vec<(String, std::net::TcpListener)> {
        let mut out = Vec::new();
        if let Ok(guard) = self.inner.lock() {
            for b in guard.iter().flatten() {
                for s in b.per_shard.iter().flatten() {
                    if let Ok(d) = s.try_clone() {
                        out.push((b.name.clone(), d));
                    }
                }
            }
        }
        for (name, s) in &self.admin {
            if let Ok(d) = s.try_clone() {
                out.push((name.clone(), d));
            }
        }
        out
    }

    /// Binds what `listeners` needs and is not bound yet (a new listener, or one whose address
    /// changed), taking a predecessor's sockets first. Returns the bound listeners to install
    /// with [`ListenSockets::install`] once the shards run the config.
    fn bind_new(
        &self,
        listeners: &[config::Listener],
        shards: usize,
        inherited: &mut Inherited,
    ) -> Result<Vec<BoundListener>, RunError> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let have = |l: &config::Listener| {
            guard.iter().flatten().any(|b| {
                b.name == l.name && b.address == l.address && b.transparent == l.transparent
            })
        };
        let mut out = Vec::new();
        // Virtual listeners (bind: false) have no socket.
        for l in listeners.iter().filter(|l| l.bind && !have(l)) {
            out.push(bind_listener(l, shards, inherited)?);
        }
        Ok(out)
    }

    /// Makes `bound` the sockets of their listeners and drops the sockets of listeners not in
    /// `keep` (removed by a config update; shards stopped accepting on them).
    fn install(&self, bound: Vec<BoundListener>, keep: &[config::Listener]) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(all) = guard.as_mut() else { return };
        for b in bound {
            all.retain(|x| x.name != b.name);
            all.push(b);
        }
        all.retain(|b| keep.iter().any(|l| l.name == b.name && l.bind));
    }

    /// Closes our descriptors (plain drain: new connections are refused from now on).
    pub fn close(&self) {
        if let Ok(mut guard) = self.inner.lock() {
            guard.take();
        }
    }
}

pub const ADMIN_SOCKET: &str = "__admin";
pub const HEALTH_SOCKET: &str = "__health";
pub const PROMETHEUS_SOCKET: &str = "__prometheus";

/// Anyone → control thread.
#[derive(Debug)]
pub enum ControlEvent {
    /// Drain and exit (SIGTERM, SIGINT, `POST /drain`, `POST /quitquitquit`).
    Drain { reason: &'static str },
    /// A successor serves on our listening sockets: drain, then hand it our final stats.
    HandOff {
        stream: std::os::unix::net::UnixStream,
    },
    /// The successor died while we drained: serve again.
    Resume,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Starting = 0,
    Serving = 1,
    Draining = 2,
}

pub struct Lifecycle {
    state: AtomicU8,
    pub shards_serving: AtomicUsize,
    /// Shards done draining for a hot upgrade, lingering until `Finish`.
    pub shards_drained: AtomicUsize,
    pub started: Instant,
}

impl Lifecycle {
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Starting,
            1 => State::Serving,
            _ => State::Draining,
        }
    }
    pub fn set(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }
}

/// Stat ids of one listener.
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
    /// Connections that ended while their listener drained (removed or replaced by a config
    /// update, or the process draining), and of those the ones closed at the drain timeout.
    pub cx_drained: StatId,
    pub cx_drain_timeout: StatId,
}

/// State shared by the shards, the admin threads and the control thread.
pub struct Shared {
    /// The process settings the config file gave (admin, runtime, drain timeout, stats, xds);
    /// its `listeners` and `clusters` are empty: those live in `snapshot`, which may change.
    pub config: Config,
    pub stats: Arc<Stats>,
    /// Per shard: what its loop did with its time (see `PollStatIds`).
    pub poll_ids: Vec<PollStatIds>,
    /// The config the shards run now. Control plane only (admin, config updates); shards get
    /// their copy through their inbox.
    #[allow(clippy::disallowed_types)]
    snapshot: std::sync::Mutex<Arc<Snapshot>>,
    #[allow(clippy::disallowed_types)]
    updates: std::sync::Mutex<Updates>,
    /// The xDS versions of the last accepted update (it may have changed nothing).
    #[allow(clippy::disallowed_types)]
    xds_versions: std::sync::Mutex<Option<std::collections::BTreeMap<String, String>>>,
    pub update_ids: UpdateStatIds,
    /// The xDS client, when the config has an `xds` section (for `/server_info`).
    pub xds: OnceLock<Arc<xds::Handle>>,
    /// False while the first dynamic config (xDS) is awaited: `/ready` answers 503.
    pub dynamic_ready: std::sync::atomic::AtomicBool,
    /// The registry client, when the config has a `registry` section.
    pub registry: OnceLock<Arc<registry::Handle>>,
    /// False while the first read of every registry interface is awaited: `/ready` answers 503.
    pub registry_ready: std::sync::atomic::AtomicBool,
    pub lifecycle: Lifecycle,
    pub shard_infos: OnceLock<Vec<ShardInfo>>,
    pub shard_count: usize,
    pub control: mpsc::SyncSender<ControlEvent>,
    pub sockets: ListenSockets,
    /// Set once a successor took over the admin sockets: our admin threads stop accepting.
    pub admin_stop: std::sync::atomic::AtomicBool,
    /// Set when every shard finished draining.
    pub drained: std::sync::atomic::AtomicBool,
}

/// What config updates need between two of them: the snapshot builder, the shards' inboxes and
/// the sockets a predecessor handed over for listeners that only a dynamic config names yet.
struct Updates {
    builder: Builder,
    inboxes: Vec<shard::Sender<ShardMsg>>,
    inherited: Inherited,
    /// When the running snapshot is endpoints-only: the one before it (its base), which no
    /// shard runs any more. The next endpoints-only snapshot is built in it (brought up to date
    /// by the running one's few changes) instead of in a copy of the whole config.
    spare: Option<Arc<Snapshot>>,
}

/// Stats of config updates.
#[derive(Clone, Copy, Debug)]
pub struct UpdateStatIds {
    pub applied: StatId,
    pub rejected: StatId,
    /// Of `applied`: snapshots that changed only some clusters' endpoints (the incremental
    /// path, see [`Shared::apply_endpoints`]).
    pub endpoints_only: StatId,
    /// Time from a config's arrival until every shard runs it.
    pub apply_time: crate::stats::HistId,
}

/// How long an update waits for every shard to take it before it is reported as failed.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl Shared {
    /// Ready: started, every shard accepting, not draining, and the first dynamic config (if
    /// any is configured) applied or given up on.
    pub fn ready(&self) -> bool {
        self.lifecycle.state() == State::Serving
            && self.lifecycle.shards_serving.load(Ordering::Acquire) == self.shard_count
            && self.dynamic_ready.load(Ordering::Acquire)
            && self.registry_ready.load(Ordering::Acquire)
    }

    /// The xDS versions of the last accepted update.
    pub fn xds_versions(&self) -> Option<std::collections::BTreeMap<String, String>> {
        self.xds_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The config the shards run now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Validates `config`, binds its new listeners, and hands it to every shard; returns once
    /// every shard runs it (the new snapshot's version), or why it was refused. The caller
    /// (xDS) NACKs on an error; the running config is then unchanged.
    pub fn apply(
        &self,
        config: Config,
        xds_versions: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<u64, String> {
        self.record(|| self.apply_inner(config, xds_versions))
    }

    /// Only the endpoints of `changed` (clusters the running snapshot has) are new: the next
    /// snapshot shares everything else with the running one, and the shards update just those
    /// clusters' endpoint tables (their pools and connections to endpoints that stay are
    /// kept). Returns like [`Shared::apply`].
    pub fn apply_endpoints(
        &self,
        changed: &[xds::ClusterEndpoints],
        xds_versions: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<u64, String> {
        self.record(|| self.apply_endpoints_inner(changed, xds_versions))
    }

    /// Counts an update's outcome and its time.
    fn record(&self, apply: impl FnOnce() -> Result<u64, String>) -> Result<u64, String> {
        let started = Instant::now();
        let result = apply();
        let shard0 = self.stats.shard(0);
        match &result {
            Ok(_) => {
                shard0.inc(self.update_ids.applied);
                shard0.record_us(
                    self.update_ids.apply_time,
                    started.elapsed().as_micros() as u64,
                );
            }
            Err(e) => {
                shard0.inc(self.update_ids.rejected);
                tracing::warn!(error = %e, "config update refused");
            }
        }
        result
    }

    fn apply_endpoints_inner(
        &self,
        changed: &[xds::ClusterEndpoints],
        xds_versions: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<u64, String> {
        let mut u = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot();
        let mut clusters: Vec<(usize, config::Cluster)> = Vec::with_capacity(changed.len());
        for c in changed {
            let i = u
                .builder
                .cluster_index(&c.cluster)
                .filter(|&i| {
                    current
                        .config
                        .clusters
                        .get(i)
                        .is_some_and(|x| x.name == c.cluster)
                })
                .ok_or_else(|| format!("endpoints for unknown cluster {:?}", c.cluster))?;
            let old = &current.config.clusters[i];
            if old.endpoints == c.endpoints && old.endpoint_metadata == c.metadata {
                continue;
            }
            let mut next = old.clone();
            next.endpoints = c.endpoints.clone();
            next.endpoint_metadata = c.metadata.clone();
            // The cluster alone is what changed: validate it alone.
            let one = Config {
                clusters: vec![next],
                ..Config::default()
            };
            let problems = one.validate_as(config::Source::Dynamic);
            if !problems.is_empty() {
                return Err(problems
                    .iter()
                    .map(|(f, m)| {
                        format!(
                            "cluster {:?}: {}: {m}",
                            c.cluster,
                            f.replace("clusters[0].", "")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "));
            }
            // A cluster named twice in one change: the last one wins.
            clusters.retain(|(j, _)| *j != i);
            clusters.extend(one.clusters.into_iter().map(|next| (i, next)));
        }
        if clusters.is_empty() {
            *self.xds_versions.lock().unwrap_or_else(|p| p.into_inner()) = xds_versions;
            return Ok(current.version);
        }
        self.ready_for_update(&u)?;
        // Nobody else holds the spare unless an admin request is reading it right now.
        let spare = u.spare.take().and_then(|s| Arc::try_unwrap(s).ok());
        let snapshot =
            u.builder
                .build_endpoints(&current, spare, clusters, &self.stats, xds_versions);
        let version = self.publish(&mut u, Arc::new(snapshot), Arc::new([]))?;
        self.stats.shard(0).inc(self.update_ids.endpoints_only);
        Ok(version)
    }

    /// Refuses updates before the shards run and while draining.
    fn ready_for_update(&self, u: &Updates) -> Result<(), String> {
        if u.inboxes.len() != self.shard_count {
            return Err("the shards are not running yet".into());
        }
        if self.lifecycle.state() == State::Draining {
            return Err("draining: config updates are no longer applied".into());
        }
        Ok(())
    }

    fn apply_inner(
        &self,
        config: Config,
        xds_versions: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<u64, String> {
        let started = Instant::now();
        let problems = config.validate_as(config::Source::Dynamic);
        if !problems.is_empty() {
            return Err(problems
                .iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join("; "));
        }
        // Routes compile here first, so that a shard never meets a route it cannot build.
        for l in &config.listeners {
            let bad = |e: String| format!("listener {:?}: routes: {e}", l.name);
            match l.protocol {
                config::Protocol::Dubbo => {
                    crate::dubbo::router::Router::new(l, &config.clusters).map_err(bad)?;
                }
                config::Protocol::Triple => {
                    crate::triple::router::Router::new(l, &config.clusters).map_err(bad)?;
                }
                config::Protocol::Tcp => {}
            }
        }
        let checked = started.elapsed();
        let mut u = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot();
        if current.config == config {
            // Same content under new versions (a state-of-the-world push of one type): the
            // shards have nothing to do.
            *self.xds_versions.lock().unwrap_or_else(|p| p.into_inner()) = xds_versions;
            return Ok(current.version);
        }
        self.ready_for_update(&u)?;
        let bound = self
            .sockets
            .bind_new(&config.listeners, self.shard_count, &mut u.inherited)
            .map_err(|e| e.to_string())?;
        let keep = config.listeners.clone();
        let clusters = config.clusters.len();
        let building = Instant::now();
        let drains = self.listener_drains(&current.config.listeners, &keep);
        let snapshot = Arc::new(u.builder.build(config, &self.stats, xds_versions));
        let built = building.elapsed();
        self.sockets.install(bound, &keep);
        let result = self.publish(&mut u, snapshot, drains);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            clusters,
            check_ms = ms(checked),
            build_ms = ms(built),
            shards_ms = ms(building.elapsed() - built),
            "config update applied"
        );
        result
    }

    /// The listeners of `old` that `new` removes or replaces (same name, another address,
    /// protocol, `transparent` or `bind`): their connections drain, up to `drain_timeout_ms`.
    fn listener_drains(
        &self,
        old: &[config::Listener],
        new: &[config::Listener],
    ) -> Arc<[Arc<listener::DrainReport>]> {
        let timeout = Duration::from_millis(self.config.drain_timeout_ms);
        old.iter()
            .filter_map(|o| {
                let replaced = match new.iter().find(|n| n.name == o.name) {
                    Some(n) if listener::keeps_connections(o, n) => return None,
                    Some(_) => true,
                    None => false,
                };
                tracing::info!(
                    listener = %o.name,
                    replaced,
                    drain_timeout_ms = timeout.as_millis() as u64,
                    "listener removed by a config update: draining its connections"
                );
                Some(listener::DrainReport::new(
                    &o.name,
                    self.shard_count,
                    timeout,
                ))
            })
            .collect()
    }

    /// Hands `snapshot` to every shard and waits until each runs it; then it is the current
    /// one.
    fn publish(
        &self,
        u: &mut Updates,
        snapshot: Arc<Snapshot>,
        drains: Arc<[Arc<listener::DrainReport>]>,
    ) -> Result<u64, String> {
        let version = snapshot.version;
        let done = Arc::new(AtomicUsize::new(0));
        for inbox in &u.inboxes {
            let mut msg = ShardMsg::Apply {
                snapshot: snapshot.clone(),
                done: done.clone(),
                drains: drains.clone(),
            };
            let deadline = Instant::now() + APPLY_TIMEOUT;
            loop {
                match inbox.try_send(msg) {
                    Ok(()) => break,
                    Err(shard::SendError::Full { message, .. }) if Instant::now() < deadline => {
                        msg = message;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(format!("a shard did not take the update: {e}")),
                }
            }
        }
        let deadline = Instant::now() + APPLY_TIMEOUT;
        while done.load(Ordering::Acquire) < u.inboxes.len() {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {} shards applied the update within {APPLY_TIMEOUT:?}",
                    done.load(Ordering::Acquire),
                    u.inboxes.len()
                ));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        // `/config_dump` shows what every shard runs.
        *self.xds_versions.lock().unwrap_or_else(|p| p.into_inner()) =
            snapshot.xds_versions.clone();
        let endpoints_only = snapshot.endpoints_only.is_some();
        let old = std::mem::replace(
            &mut *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()),
            snapshot,
        );
        u.spare = endpoints_only.then_some(old);
        Ok(version)
    }
}

/// Command-line overrides of the config's runtime section.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub shards: Option<usize>,
    pub io: Option<config::IoMode>,
    pub poll_mode: Option<config::PollMode>,
}

/// One shard's poll-loop counters, copied from the shard's `PollStats` by the shard itself
/// every `POLL_STATS_PUBLISH`: each shard writes only its own, tagged `shard=N`.
#[derive(Clone, Copy, Debug)]
pub struct PollStatIds {
    /// µs the loop spent in polls that found nothing (spin and hybrid modes).
    pub idle_spin_us: StatId,
    /// µs of loop wall time: `idle_spin_us / loop_us` is the idle-spinning fraction.
    pub loop_us: StatId,
    /// Times the loop blocked in the kernel (every wait in sleep mode, none in spin mode).
    pub sleeps: StatId,
}

/// How often a shard copies its poll-loop counters into the stats.
pub const POLL_STATS_PUBLISH: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] shard::StartError),
    #[error("admin: cannot listen on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {listener:?}: cannot listen on {addr}: {source}")]
    Listen {
        listener: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub struct Server {
    pub shared: Arc<Shared>,
    shards: Vec<ShardHandle<ShardMsg>>,
    control_rx: mpsc::Receiver<ControlEvent>,
    /// Actual admin address (differs from the config when it asked for port 0).
    pub admin_address: std::net::SocketAddr,
}

/// One immutable config as the shards run it: the config, every stat id it needs, and each
/// cluster's endpoint table. Built on the control thread; shards swap it in between requests.
pub struct Snapshot {
    /// Counts applied configs: 1 for the one the process started with.
    pub version: u64,
    pub config: Config,
    /// The xDS resource versions it was built from (type → version), when xDS built it.
    pub xds_versions: Option<std::collections::BTreeMap<String, String>>,
    pub listener_ids: Vec<ListenerStatIds>,
    /// For `dubbo` listeners, by listener index.
    pub dubbo_ids: Vec<Option<DubboStatIds>>,
    /// For `dubbo` and `triple` listeners: per route, then the default route.
    pub route_ids: Vec<Vec<RequestStatIds>>,
    /// Per cluster (shared with the next snapshot when only endpoints change).
    pub cluster_ids: Arc<[ClusterStatIds]>,
    pub upstream_ids: Arc<[UpstreamStatIds]>,
    /// For `triple` listeners, by listener index.
    pub triple_ids: Vec<Option<crate::triple::TripleStatIds>>,
    /// Each cluster's endpoints, shared by the shards.
    pub endpoints: Vec<Arc<Endpoints>>,
    /// Set when this snapshot differs from the one before it (`base`) only in the endpoints
    /// of these clusters (indices): a shard that runs `base` updates just those.
    pub endpoints_only: Option<EndpointsOnly>,
}

/// What an endpoints-only snapshot changed (see [`Snapshot::endpoints_only`]).
#[derive(Clone, Debug)]
pub struct EndpointsOnly {
    pub base: u64,
    pub clusters: Vec<usize>,
}

impl Snapshot {
    /// No listeners, no clusters (what a shard runs before its first snapshot).
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            config: Config::default(),
            xds_versions: None,
            listener_ids: Vec::new(),
            dubbo_ids: Vec::new(),
            route_ids: Vec::new(),
            cluster_ids: Arc::new([]),
            upstream_ids: Arc::new([]),
            triple_ids: Vec::new(),
            endpoints: Vec::new(),
            endpoints_only: None,
        }
    }
}

/// Endpoint tables with slot indices that stay stable across updates fall behind this many
/// slots beyond twice the live endpoints, then are renumbered (the shards replace that
/// cluster's pools; its connections close once idle).
pub const ENDPOINT_SLOTS_SLACK: usize = 64;

/// What the control thread remembers about one cluster between snapshots: its stat ids
/// (registered once) and its endpoint table.
struct ClusterState {
    /// Its index in the last snapshot's clusters.
    index: usize,
    ids: ClusterStatIds,
    upstream: UpstreamStatIds,
    published: Arc<Endpoints>,
}

/// The control thread's state between snapshots.
#[derive(Default)]
pub struct Builder {
    clusters: std::collections::HashMap<String, ClusterState>,
    next_generation: u64,
    version: u64,
}

fn poll_stat_ids(st: &Stats) -> Vec<PollStatIds> {
    use Kind::Counter;
    (0..st.shard_count())
        .map(|i| {
            let shard = i.to_string();
            let t = [("shard", shard.as_str())];
            PollStatIds {
                idle_spin_us: st.add("shard", "poll_idle_spin_us", &t, Counter),
                loop_us: st.add("shard", "poll_loop_us", &t, Counter),
                sleeps: st.add("shard", "poll_sleeps", &t, Counter),
            }
        })
        .collect()
}

fn host_stat_ids(st: &Stats, cluster: &str, addr: std::net::SocketAddr) -> HostStatIds {
    if !st.per_host {
        // Off (the default): every id is the sink. Not formatting the address matters at
        // 100,000 endpoints (a big xDS push spent ~6 % of its CPU here).
        let sink = crate::stats::SINK;
        return HostStatIds {
            cx_total: sink,
            cx_connect_fail: sink,
            rq_total: sink,
            rq_timeout: sink,
            rq_failure: sink,
        };
    }
    let host = addr.to_string();
    let t = [("cluster", cluster), ("host", host.as_str())];
    HostStatIds {
        cx_total: st.add_host("cluster_host", "upstream_cx_total", &t),
        cx_connect_fail: st.add_host("cluster_host", "upstream_cx_connect_fail", &t),
        rq_total: st.add_host("cluster_host", "upstream_rq_total", &t),
        rq_timeout: st.add_host("cluster_host", "upstream_rq_timeout", &t),
        rq_failure: st.add_host("cluster_host", "upstream_rq_failure", &t),
    }
}

impl Builder {
    /// The snapshot of `config` (validated by the caller); registers the stats it names.
    pub fn build(
        &mut self,
        config: Config,
        st: &Stats,
        xds_versions: Option<std::collections::BTreeMap<String, String>>,
    ) -> Snapshot {
        use Kind::{Counter, Gauge};
        self.version += 1;
        // A set of the new names: `retain` with a scan of config.clusters per kept cluster was
        // O(clusters²) (10,000 clusters: ~10^8 name comparisons on every update, EDS ones too).
        let names: std::collections::HashSet<&str> =
            config.clusters.iter().map(|c| c.name.as_str()).collect();
        self.clusters
            .retain(|name, _| names.contains(name.as_str()));
        let mut cluster_ids = Vec::with_capacity(config.clusters.len());
        let mut upstream_ids = Vec::with_capacity(config.clusters.len());
        let mut endpoints = Vec::with_capacity(config.clusters.len());
        for (index, c) in config.clusters.iter().enumerate() {
            let state = self.clusters.entry(c.name.clone()).or_insert_with(|| {
                let t = [("cluster", c.name.as_str())];
                self.next_generation += 1;
                ClusterState {
                    index,
                    ids: ClusterStatIds {
                        cx_total: st.add("cluster", "upstream_cx_total", &t, Counter),
                        cx_active: st.add("cluster", "upstream_cx_active", &t, Gauge),
                        cx_connect_fail: st.add("cluster", "upstream_cx_connect_fail", &t, Counter),
                        cx_connect_timeout: st.add(
                            "cluster",
                            "upstream_cx_connect_timeout",
                            &t,
                            Counter,
                        ),
                    },
                    upstream: UpstreamStatIds {
                        rq_total: st.add("cluster", "upstream_rq_total", &t, Counter),
                        rq_timeout: st.add("cluster", "upstream_rq_timeout", &t, Counter),
                        rq_failure: st.add("cluster", "upstream_rq_failure", &t, Counter),
                        rq_overflow: st.add("cluster", "upstream_rq_overflow", &t, Counter),
                        rq_active: st.add("cluster", "upstream_rq_active", &t, Gauge),
                        rsp_too_large: st.add("cluster", "upstream_rsp_too_large", &t, Counter),
                        cx_idle_timeout: st.add("cluster", "upstream_cx_idle_timeout", &t, Counter),
                        cx_heartbeat_timeout: st.add(
                            "cluster",
                            "upstream_cx_heartbeat_timeout",
                            &t,
                            Counter,
                        ),
                    },
                    published: Arc::new(Endpoints::empty(self.next_generation)),
                }
            });
            state.index = index;
            state.update(c, st, &mut self.next_generation);
            cluster_ids.push(state.ids.clone());
            upstream_ids.push(state.upstream);
            endpoints.push(state.published.clone());
        }
        let listener_ids = config
            .listeners
            .iter()
            .map(|l| {
                let t = [("listener", l.name.as_str())];
                let detected = |name: &str| {
                    if l.original_destination {
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
                    cx_drained: st.add("listener", "downstream_cx_drained", &t, Counter),
                    cx_drain_timeout: st.add(
                        "listener",
                        "downstream_cx_drain_timeout",
                        &t,
                        Counter,
                    ),
                }
            })
            .collect();
        let dubbo_ids = config
            .listeners
            .iter()
            .map(|l| {
                if l.protocol != config::Protocol::Dubbo {
                    return None;
                }
                let t = [("listener", l.name.as_str())];
                let c = |name| st.add("listener", name, &t, Counter);
                let other = [
                    ("listener", l.name.as_str()),
                    ("interface", "other"),
                    ("method", "other"),
                ];
                Some(DubboStatIds {
                    rq_total: c("dubbo_rq_total"),
                    rq_oneway: c("dubbo_rq_oneway"),
                    rq_heartbeat: c("dubbo_rq_heartbeat"),
                    rq_opaque: c("dubbo_rq_opaque"),
                    rq_no_route: c("dubbo_rq_no_route"),
                    rq_bad: c("dubbo_rq_bad"),
                    rq_overflow: c("dubbo_rq_overflow"),
                    rq_no_healthy_upstream: c("dubbo_rq_no_healthy_upstream"),
                    rsp_ok: c("dubbo_rsp_ok"),
                    rsp_error: c("dubbo_rsp_error"),
                    rsp_local: c("dubbo_rsp_local"),
                    cx_first_frame_timeout: c("dubbo_cx_first_frame_timeout"),
                    cx_heartbeat_timeout: c("dubbo_cx_heartbeat_timeout"),
                    cx_idle_timeout: c("dubbo_cx_idle_timeout"),
                    cx_output_full: c("dubbo_cx_output_full"),
                    rq_time: st.add_histogram("listener", "dubbo_rq_time_us", &t),
                    other_service: RequestStatIds::register(st, "dubbo_service", &other),
                })
            })
            .collect();
        let route_ids = config
            .listeners
            .iter()
            .map(|l| {
                let (names, scope): (Vec<Option<String>>, _) = match l.protocol {
                    config::Protocol::Dubbo => (
                        l.dubbo
                            .iter()
                            .flat_map(|d| &d.routes)
                            .map(|r| r.name.clone())
                            .collect(),
                        "dubbo_route",
                    ),
                    config::Protocol::Triple => (
                        l.triple
                            .iter()
                            .flat_map(|t| &t.routes)
                            .map(|r| r.name.clone())
                            .collect(),
                        "triple_route",
                    ),
                    config::Protocol::Tcp => return Vec::new(),
                };
                names
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| n.unwrap_or_else(|| format!("routes[{i}]")))
                    .chain(std::iter::once("default".to_string()))
                    .map(|route| {
                        let t = [("listener", l.name.as_str()), ("route", route.as_str())];
                        RequestStatIds::register(st, scope, &t)
                    })
                    .collect()
            })
            .collect();
        let triple_ids = config
            .listeners
            .iter()
            .map(|l| {
                if l.protocol != config::Protocol::Triple {
                    return None;
                }
                let t = [("listener", l.name.as_str())];
                let c = |name| st.add("listener", name, &t, Counter);
                let other = [
                    ("listener", l.name.as_str()),
                    ("service", "other"),
                    ("method", "other"),
                ];
                let rsp_status = std::array::from_fn(|i| {
                    let code = if i + 1 == crate::triple::GRPC_STATUS_COUNTED {
                        "other".to_string()
                    } else {
                        i.to_string()
                    };
                    let t = [
                        ("listener", l.name.as_str()),
                        ("grpc_status", code.as_str()),
                    ];
                    st.add("listener", "triple_rsp_total", &t, Counter)
                });
                Some(crate::triple::TripleStatIds {
                    rq_total: c("triple_rq_total"),
                    rq_no_route: c("triple_rq_no_route"),
                    rq_refused: c("triple_rq_refused"),
                    rq_bad: c("triple_rq_bad"),
                    rq_too_large: c("triple_rq_too_large"),
                    rq_timeout: c("triple_rq_timeout"),
                    rq_no_healthy_upstream: c("triple_rq_no_healthy_upstream"),
                    rsp_local: c("triple_rsp_local"),
                    rsp_status,
                    protocol_error: c("triple_protocol_error"),
                    rst_flood: c("triple_rst_flood"),
                    rq_time: st.add_histogram("listener", "triple_rq_time_us", &t),
                    other_service: RequestStatIds::register(st, "triple_service", &other),
                })
            })
            .collect();
        Snapshot {
            version: self.version,
            config,
            xds_versions,
            listener_ids,
            dubbo_ids,
            route_ids,
            cluster_ids: cluster_ids.into(),
            upstream_ids: upstream_ids.into(),
            triple_ids,
            endpoints,
            endpoints_only: None,
        }
    }

    /// Index of cluster `name` in the last snapshot built.
    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.get(name).map(|s| s.index)
    }

    /// The snapshot after `prev` (the last one built) in which only `changed` (index, the
    /// cluster with its new endpoints) differ: the endpoint tables of those clusters are
    /// updated, everything else is shared with or copied from `prev` as it is. `spare`, when
    /// it is `prev`'s base (`prev` is endpoints-only), is reused: only `prev`'s changes and
    /// these are written into it, so the work follows the changes, not the config's size;
    /// otherwise `prev` is copied.
    pub fn build_endpoints(
        &mut self,
        prev: &Snapshot,
        spare: Option<Snapshot>,
        changed: Vec<(usize, config::Cluster)>,
        st: &Stats,
        xds_versions: Option<std::collections::BTreeMap<String, String>>,
    ) -> Snapshot {
        self.version += 1;
        let base_of_prev = |s: &Snapshot| {
            prev.endpoints_only.as_ref().filter(|d| {
                d.base == s.version && s.config.clusters.len() == prev.config.clusters.len()
            })
        };
        let mut next = match spare {
            Some(mut s) if base_of_prev(&s).is_some() => {
                for &i in base_of_prev(&s)
                    .map(|d| d.clusters.as_slice())
                    .unwrap_or_default()
                {
                    s.config.clusters[i] = prev.config.clusters[i].clone();
                    s.endpoints[i] = prev.endpoints[i].clone();
                }
                s
            }
            _ => Snapshot {
                version: 0,
                config: prev.config.clone(),
                xds_versions: None,
                listener_ids: prev.listener_ids.clone(),
                dubbo_ids: prev.dubbo_ids.clone(),
                route_ids: prev.route_ids.clone(),
                cluster_ids: prev.cluster_ids.clone(),
                upstream_ids: prev.upstream_ids.clone(),
                triple_ids: prev.triple_ids.clone(),
                endpoints: prev.endpoints.clone(),
                endpoints_only: None,
            },
        };
        let mut indices = Vec::with_capacity(changed.len());
        for (i, c) in changed {
            if let Some(state) = self.clusters.get_mut(&c.name) {
                state.update(&c, st, &mut self.next_generation);
                next.endpoints[i] = state.published.clone();
            }
            next.config.clusters[i] = c;
            indices.push(i);
        }
        next.version = self.version;
        next.xds_versions = xds_versions;
        next.endpoints_only = Some(EndpointsOnly {
            base: prev.version,
            clusters: indices,
        });
        next
    }
}

impl ClusterState {
    /// Publishes `c.endpoints` as the live set, keeping each known address in its slot.
    fn update(&mut self, c: &config::Cluster, st: &Stats, generation: &mut u64) {
        let visits = visit_order(c);
        let old = &self.published;
        if old.addrs().eq(visits.addrs.iter().copied())
            && *old.levels == visits.levels[..]
            && *old.weights == visits.weights[..]
        {
            return; // unchanged: shards see the same Arc and skip this cluster
        }
        let distinct: std::collections::HashSet<_> = c.endpoints.iter().collect();
        if self.published.slots.len() > 2 * distinct.len() + ENDPOINT_SLOTS_SLACK {
            // Too many departed endpoints kept their slots: renumber.
            *generation += 1;
            self.published = Arc::new(Endpoints::empty(*generation));
        }
        let old = &self.published;
        let mut by_addr: std::collections::HashMap<std::net::SocketAddr, u32> = old
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.addr, i as u32))
            .collect();
        let mut added: Vec<Slot> = Vec::new();
        let live: Box<[u32]> = visits
            .addrs
            .iter()
            .map(|&addr| {
                *by_addr.entry(addr).or_insert_with(|| {
                    added.push(Slot {
                        addr,
                        ids: host_stat_ids(st, &c.name, addr),
                    });
                    (old.slots.len() + added.len() - 1) as u32
                })
            })
            .collect();
        let slots = if added.is_empty() {
            old.slots.clone()
        } else {
            old.slots.iter().copied().chain(added).collect()
        };
        self.published = Arc::new(Endpoints {
            slots,
            live,
            levels: visits.levels.into(),
            weights: visits.weights.into(),
            generation: old.generation,
        });
    }
}

/// The most times one endpoint appears in a cluster's live list (weights are scaled down to it).
pub const WEIGHT_VISITS_MAX: u32 = 10;

/// A cluster's endpoints in the order the balancer visits them (see [`Endpoints`]).
#[derive(Debug, Default, PartialEq)]
struct Visits {
    addrs: Vec<std::net::SocketAddr>,
    /// End of each priority level in `addrs`, lowest priority number first.
    levels: Vec<u32>,
    /// Weight of each entry of `addrs` when the endpoints' weights differ, else empty.
    weights: Vec<u32>,
}

/// The visit order of `c`'s endpoints: grouped by priority (metadata `priority`, lowest
/// first), each group in weighted round-robin order (see [`weighted_visits`]).
fn visit_order(c: &config::Cluster) -> Visits {
    let meta = &c.endpoint_metadata;
    if meta.len() != c.endpoints.len() || meta.is_empty() {
        let end = c.endpoints.len() as u32;
        return Visits {
            addrs: c.endpoints.clone(),
            levels: if end == 0 { Vec::new() } else { vec![end] },
            weights: Vec::new(),
        };
    }
    let weight = |i: usize| meta[i].weight.max(1);
    let weighted = (1..meta.len()).any(|i| weight(i) != weight(0));
    // By priority, config order within one (a stable sort).
    let mut order: Vec<usize> = (0..meta.len()).collect();
    order.sort_by_key(|&i| meta[i].priority);
    let mut v = Visits::default();
    for level in order.chunk_by(|&a, &b| meta[a].priority == meta[b].priority) {
        let weights: Vec<u32> = level.iter().map(|&i| weight(i)).collect();
        for k in weighted_visits(&weights) {
            v.addrs.push(c.endpoints[level[k]]);
            if weighted {
                v.weights.push(weights[k]);
            }
        }
        v.levels.push(v.addrs.len() as u32);
    }
    v
}

/// Indices of `weights` in the order round robin visits them: each once when the weights are
/// equal, else each `weight / gcd` times (scaled so that none exceeds [`WEIGHT_VISITS_MAX`], at
/// least once), interleaved. Round robin then follows the weights with no work per request.
fn weighted_visits(weights: &[u32]) -> Vec<usize> {
    if weights.windows(2).all(|w| w[0] == w[1]) {
        return (0..weights.len()).collect();
    }
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let max = weights.iter().copied().max().unwrap_or(1);
    let visits: Vec<u32> = if max / g <= WEIGHT_VISITS_MAX {
        weights.iter().map(|w| w / g).collect()
    } else {
        let max = u64::from(max);
        weights
            .iter()
            .map(|&w| ((u64::from(w) * u64::from(WEIGHT_VISITS_MAX) + max / 2) / max).max(1) as u32)
            .collect()
    };
    let rounds = visits.iter().copied().max().unwrap_or(1);
    let mut out = Vec::with_capacity(visits.iter().map(|&v| v as usize).sum());
    for k in 0..rounds {
        for (i, &v) in visits.iter().enumerate() {
            if v > k {
                out.push(i);
            }
        }
    }
    out
}

/// Binds (or takes over from `inherited`) every listening socket: admin first, then each
/// listener once per shard (SO_REUSEPORT). Inherited sockets are spread over the shards; a
/// shard left without one binds its own.
fn bind_all(
    config: &Config,
    shards: usize,
    inherited: &mut Inherited,
) -> Result<ListenSockets, RunError> {
    let a = &config.admin;
    let mut admin = Vec::new();
    for (name, addr) in [
        (ADMIN_SOCKET, Some(a.address)),
        (HEALTH_SOCKET, a.health_address),
        (PROMETHEUS_SOCKET, a.prometheus_address),
    ] {
        let Some(addr) = addr else { continue };
        let sock = match inherited.take(name).into_iter().next() {
            Some(s) => s,
            None => bind_admin(addr).map_err(|source| RunError::Admin { addr, source })?,
        };
        admin.push((name.to_string(), sock));
    }
    let mut all = Vec::with_capacity(config.listeners.len());
    for l in config.listeners.iter().filter(|l| l.bind) {
        all.push(bind_listener(l, shards, inherited)?);
    }
    #[allow(clippy::disallowed_types)]
    let inner = std::sync::Mutex::new(Some(all));
    Ok(ListenSockets { inner, admin })
}

/// An admin socket (blocking, served by its own thread), marked with `runtime.socket_mark` so
/// that its SYN-ACKs pass interception rules (health probes come from outside the pod).
fn bind_admin(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    crate::intercept::prepare_listener(&socket, false)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// One listener's sockets: a predecessor's (spread over the shards) when it handed some over,
/// else one SO_REUSEPORT socket per shard.
fn bind_listener(
    l: &config::Listener,
    shards: usize,
    inherited: &mut Inherited,
) -> Result<BoundListener, RunError> {
    let listen_err = |source| RunError::Listen {
        listener: l.name.clone(),
        addr: l.address,
        source,
    };
    let mut per_shard: Vec<Vec<std::net::TcpListener>> = (0..shards).map(|_| Vec::new()).collect();
    #[cfg(feature = "dpdk")]
    if crate::dpdk::owns_listener(l.address) {
        // On the DPDK port's address: no kernel socket; the shards' stacks listen.
        return Ok(BoundListener {
            name: l.name.clone(),
            address: l.address,
            transparent: l.transparent,
            per_shard,
        });
    }
    let taken = inherited.take(&l.name);
    if !taken.is_empty() {
        tracing::info!(listener = %l.name, sockets = taken.len(), "listening on the predecessor's sockets");
    }
    for (j, sock) in taken.into_iter().enumerate() {
        let bound = sock.local_addr().map_err(listen_err)?;
        if bound.port() != l.address.port() {
            return Err(RunError::Invalid(format!(
                "listener {:?}: the predecessor's socket is bound to {bound}, the config says {}",
                l.name, l.address
            )));
        }
        sock.set_nonblocking(true).map_err(listen_err)?;
        per_shard[j % shards].push(sock);
    }
    for socks in per_shard.iter_mut().filter(|s| s.is_empty()) {
        socks.push(listener::bind_reuseport(l.address, l.transparent).map_err(listen_err)?);
    }
    Ok(BoundListener {
        name: l.name.clone(),
        address: l.address,
        transparent: l.transparent,
        per_shard,
    })
}

impl Server {
    /// Starts shards and admin; returns once every shard is serving. `inherited` holds the
    /// listening sockets a predecessor handed over (empty for a fresh start).
    pub fn start(
        config: Config,
        overrides: &Overrides,
        mut inherited: Inherited,
    ) -> Result<Server, RunError> {
        let shard_count = overrides
            .shards
            .or(config.runtime.shards)
            .unwrap_or_else(|| shard::affinity_cores().len().max(1));
        if shard_count == 0 || shard_count > config::SHARDS_MAX {
            return Err(RunError::Invalid(format!(
                "--shards {shard_count} is out of range 1..={}",
                config::SHARDS_MAX
            )));
        }
        // The DPDK path starts EAL and its port before any listener binds (docs/dpdk.md).
        #[cfg(feature = "dpdk")]
        if let Some(d) = &config.dpdk {
            crate::dpdk::start(d, shard_count).map_err(RunError::Invalid)?;
        }
        #[cfg(not(feature = "dpdk"))]
        if config.dpdk.is_some() {
            return Err(RunError::Invalid(
                "the config has a `dpdk:` section but this ringside was built without DPDK \
                 support (cargo build --release --features dpdk; docs/dpdk.md)"
                    .into(),
            ));
        }
        let io = match overrides.io.unwrap_or(config.runtime.io) {
            config::IoMode::Auto => shard::IoMode::Auto,
            config::IoMode::Uring => shard::IoMode::Uring,
            config::IoMode::Epoll => shard::IoMode::Epoll,
        };
        let poll = match overrides.poll_mode.unwrap_or(config.runtime.poll_mode) {
            config::PollMode::Sleep => shard::PollMode::Sleep,
            config::PollMode::Spin => shard::PollMode::Spin,
            config::PollMode::Hybrid => shard::PollMode::Hybrid,
        };
        let spin_budget = Duration::from_micros(config.runtime.spin_budget_us);
        crate::intercept::set_socket_mark(config.runtime.socket_mark);
        let stats = Arc::new(
            Stats::new(shard_count, &config.stats)
                .map_err(|e| RunError::Invalid(format!("stats: {e}")))?,
        );
        let poll_ids = poll_stat_ids(&stats);
        let update_ids = UpdateStatIds {
            applied: stats.add("config", "update_applied", &[], Kind::Counter),
            rejected: stats.add("config", "update_rejected", &[], Kind::Counter),
            endpoints_only: stats.add("config", "update_endpoints_only", &[], Kind::Counter),
            apply_time: stats.add_histogram("config", "update_apply_time_us", &[]),
        };
        let mut builder = Builder::default();
        let snapshot = Arc::new(builder.build(config.clone(), &stats, None));
        stats.prefault();
        let sockets = bind_all(&config, shard_count, &mut inherited)?;
        if config.xds.is_none() {
            for name in inherited.sockets.keys() {
                tracing::warn!(listener = %name, "inherited sockets for a listener the config no longer has; closing them");
            }
            inherited.sockets.clear();
        }
        let (control, control_rx) = mpsc::sync_channel(16);
        let pin = config.runtime.pin;
        let dynamic = config.xds.is_some();
        let registry_discovery = config
            .clusters
            .iter()
            .any(|c| c.kind == config::ClusterType::Zookeeper);
        let mut config = config;
        config.listeners = Vec::new();
        config.clusters = Vec::new();
        // The two locks are the control plane's (admin, config updates), never a shard's.
        #[allow(clippy::disallowed_types)]
        let shared = Arc::new(Shared {
            config,
            stats,
            poll_ids,
            snapshot: std::sync::Mutex::new(snapshot),
            updates: std::sync::Mutex::new(Updates {
                builder,
                inboxes: Vec::new(),
                inherited,
                spare: None,
            }),
            update_ids,
            xds_versions: Default::default(),
            xds: OnceLock::new(),
            dynamic_ready: std::sync::atomic::AtomicBool::new(!dynamic),
            registry: OnceLock::new(),
            registry_ready: std::sync::atomic::AtomicBool::new(!registry_discovery),
            lifecycle: Lifecycle {
                state: AtomicU8::new(State::Starting as u8),
                shards_serving: AtomicUsize::new(0),
                shards_drained: AtomicUsize::new(0),
                started: Instant::now(),
            },
            shard_infos: OnceLock::new(),
            shard_count,
            control,
            sockets,
            admin_stop: std::sync::atomic::AtomicBool::new(false),
            drained: std::sync::atomic::AtomicBool::new(false),
        });

        // Admin first: it answers 503 on /ready while the shards come up.
        let admin_address = admin::start(shared.clone())
            .map_err(|(addr, source)| RunError::Admin { addr, source })?;

        let spec = shard::Spec {
            shards: shard_count,
            io,
            pin,
            uring_entries: shard::URING_ENTRIES_DEFAULT,
            inbox_capacity: SHARD_INBOX_MAX,
            poll,
            spin_budget,
        };
        let shared2 = shared.clone();
        let shards = shard::start(&spec, move |ctx, inbox| {
            listener::shard_main(ctx, shared2.clone(), inbox)
        })?;
        let infos: Vec<ShardInfo> = shards.iter().map(|h| h.info.clone()).collect();
        for i in &infos {
            tracing::info!(
                shard = i.id,
                core = ?i.core,
                backend = i.backend.as_str(),
                poll_mode = i.poll.as_str(),
                fallback = i.fallback_reason.as_deref().unwrap_or(""),
                "shard up"
            );
        }
        let _ = shared.shard_infos.set(infos);
        shared
            .updates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .inboxes = shards.iter().map(|h| h.inbox.clone()).collect();
        // Wait until every shard's accept loops run.
        while shared.lifecycle.shards_serving.load(Ordering::Acquire) < shard_count {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Parsing a large config leaves freed heap behind; give it back before serving.
        shard::trim_heap();
        shared.lifecycle.set(State::Serving);
        tracing::info!(shards = shard_count, admin = %admin_address, "ringside serving");
        Ok(Server {
            shared,
            shards,
            control_rx,
            admin_address,
        })
    }

    /// A handle other threads (signal handler, tests, the demo) use to ask for a drain.
    pub fn control(&self) -> mpsc::SyncSender<ControlEvent> {
        self.shared.control.clone()
    }

    /// Blocks until a drain is requested, drains, and returns when every shard has finished.
    /// For a hot upgrade the listening sockets stay open (the successor accepts on them) and,
    /// if the successor dies before we are done, we resume serving.
    pub fn run_until_drained(self) {
        let shared = self.shared.clone();
        'serve: loop {
            let (reason, successor) = match self.control_rx.recv() {
                Ok(ControlEvent::Drain { reason }) => (reason, None),
                Ok(ControlEvent::HandOff { stream }) => ("hot upgrade", Some(stream)),
                Ok(ControlEvent::Resume) => continue,
                Err(_) => ("control channel closed", None),
            };
            let timeout = Duration::from_millis(shared.config.drain_timeout_ms);
            tracing::info!(
                reason,
                drain_timeout_ms = timeout.as_millis() as u64,
                "draining"
            );
            shared.lifecycle.set(State::Draining);
            // Graceful offline: consumers that find us through the registry stop choosing us
            // before we stop accepting.
            crate::registry_glue::deregister(&shared);
            let linger = successor.is_some();
            for h in &self.shards {
                if let Err(e) = h.inbox.try_send(ShardMsg::Drain { timeout, linger }) {
                    tracing::warn!(error = %e, "could not tell a shard to drain");
                }
            }
            match &successor {
                Some(stream) => {
                    // The successor answers on the admin sockets now.
                    shared.admin_stop.store(true, Ordering::Release);
                    crate::control::watch_successor(stream, &shared);
                }
                // No successor: refuse new connections from now on.
                None => shared.sockets.close(),
            }
            let mut finish_sent = false;
            loop {
                if linger
                    && !finish_sent
                    && shared.lifecycle.shards_drained.load(Ordering::Acquire) == shared.shard_count
                {
                    for h in &self.shards {
                        let _ = h.inbox.try_send(ShardMsg::Finish);
                    }
                    finish_sent = true;
                }
                if self.shards.iter().all(|h| h.thread.is_finished()) {
                    shared.drained.store(true, Ordering::Release);
                    if let Some(stream) = &successor {
                        crate::control::farewell(stream, &shared);
                    }
                    break 'serve;
                }
                match self.control_rx.recv_timeout(Duration::from_millis(10)) {
                    Ok(ControlEvent::Resume) if successor.is_some() => {
                        tracing::warn!("hot upgrade: successor died while we drained; resuming");
                        for h in &self.shards {
                            let _ = h.inbox.try_send(ShardMsg::Resume);
                        }
                        shared.admin_stop.store(false, Ordering::Release);
                        if let Err((addr, e)) = admin::start(shared.clone()) {
                            tracing::error!(%addr, error = %e, "cannot restart admin");
                        }
                        shared.lifecycle.set(State::Serving);
                        continue 'serve;
                    }
                    _ => {}
                }
            }
        }
        for h in self.shards {
            let _ = h.thread.join();
        }
        tracing::info!("drained; exiting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, endpoints: &[u16]) -> config::Cluster {
        config::Cluster {
            name: name.into(),
            kind: config::ClusterType::Static,
            endpoints: endpoints
                .iter()
                .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], *p)))
                .collect(),
            endpoint_metadata: Vec::new(),
            registry: None,
            lb: config::LbPolicy::RoundRobin,
            connect_timeout_ms: config::CONNECT_TIMEOUT_MS_DEFAULT,
            timeout_ms: config::REQUEST_TIMEOUT_MS_DEFAULT,
            connections_per_host: 1,
            pending_requests_max: 100,
            heartbeat_interval_ms: config::HEARTBEAT_INTERVAL_MS_DEFAULT,
            response_bytes_max: config::RESPONSE_BYTES_MAX_DEFAULT,
            idle_timeout_ms: config::IDLE_TIMEOUT_MS_DEFAULT,
        }
    }

    fn build(b: &mut Builder, st: &Stats, clusters: Vec<config::Cluster>) -> Snapshot {
        let config = Config {
            clusters,
            ..Config::default()
        };
        b.build(config, st, None)
    }

    #[test]
    fn endpoint_slots_stay_put_and_unchanged_tables_are_shared() {
        let st = Stats::new(1, &config::StatsConfig::default()).unwrap();
        let mut b = Builder::default();
        let s1 = build(
            &mut b,
            &st,
            vec![cluster("a", &[1, 2, 3]), cluster("z", &[9])],
        );
        let ids = s1.cluster_ids[0].cx_total;
        // 2 leaves, 4 arrives, 1 and 3 keep their slots; z is untouched and shared.
        let s2 = build(
            &mut b,
            &st,
            vec![cluster("a", &[3, 4, 1]), cluster("z", &[9])],
        );
        let a = &s2.endpoints[0];
        assert_eq!(&*a.live, &[2, 3, 0]);
        assert_eq!(a.slots[3].addr.port(), 4);
        assert_eq!(a.generation, s1.endpoints[0].generation);
        assert!(Arc::ptr_eq(&s1.endpoints[1], &s2.endpoints[1]));
        assert_eq!(
            s2.cluster_ids[0].cx_total, ids,
            "stat ids are registered once"
        );
        // 2 comes back to its old slot.
        let s3 = build(&mut b, &st, vec![cluster("a", &[2]), cluster("z", &[9])]);
        assert_eq!(&*s3.endpoints[0].live, &[1]);
        assert_eq!(s3.version, 3);
    }

    #[test]
    fn endpoints_only_snapshots_change_only_their_clusters_and_reuse_the_spare() {
        let st = Stats::new(1, &config::StatsConfig::default()).unwrap();
        let mut b = Builder::default();
        let s1 = build(
            &mut b,
            &st,
            vec![cluster("a", &[1]), cluster("b", &[2]), cluster("c", &[3])],
        );
        assert_eq!(b.cluster_index("c"), Some(2));
        let s2 = b.build_endpoints(&s1, None, vec![(1, cluster("b", &[2, 4]))], &st, None);
        let d = s2.endpoints_only.as_ref().unwrap();
        assert_eq!((d.base, d.clusters.as_slice()), (s1.version, &[1][..]));
        assert_eq!(s2.config.clusters[1].endpoints.len(), 2);
        assert!(Arc::ptr_eq(&s1.endpoints[0], &s2.endpoints[0]));
        assert!(Arc::ptr_eq(&s1.cluster_ids, &s2.cluster_ids));
        // b keeps its table (slot 0 stays port 2), so shards keep its pool.
        assert_eq!(s2.endpoints[1].generation, s1.endpoints[1].generation);
        assert_eq!(s2.endpoints[1].slots[0].addr.port(), 2);
        // s1 is s2's base: the next snapshot is built in it and must equal s2 plus c's change.
        let s3 = b.build_endpoints(&s2, Some(s1), vec![(2, cluster("c", &[5]))], &st, None);
        let ports = |s: &Snapshot| -> Vec<Vec<u16>> {
            s.config
                .clusters
                .iter()
                .map(|c| c.endpoints.iter().map(|a| a.port()).collect())
                .collect()
        };
        assert_eq!(ports(&s3), [vec![1], vec![2, 4], vec![5]]);
        assert!(Arc::ptr_eq(&s2.endpoints[1], &s3.endpoints[1]));
        assert_eq!(s3.endpoints_only.as_ref().unwrap().base, s2.version);
        assert_eq!(s3.version, s2.version + 1);
        // A spare that is not the base of the running snapshot is not used.
        let stale = build(
            &mut b,
            &st,
            vec![cluster("a", &[9]), cluster("b", &[9]), cluster("c", &[9])],
        );
        let s4 = b.build_endpoints(&s3, Some(stale), vec![(0, cluster("a", &[6]))], &st, None);
        assert_eq!(ports(&s4), [vec![6], vec![2, 4], vec![5]]);
    }

    fn meta(weight: u32, priority: u32) -> config::EndpointMetadata {
        config::EndpointMetadata {
            weight,
            priority,
            ..Default::default()
        }
    }

    fn visit_ports(c: &config::Cluster) -> Vec<u16> {
        visit_order(c).addrs.iter().map(|a| a.port()).collect()
    }

    #[test]
    fn weights_become_repeated_visits_in_the_live_list() {
        let mut c = cluster("w", &[1, 2, 3]);
        c.endpoint_metadata = vec![meta(100, 0), meta(200, 0), meta(100, 0)];
        assert_eq!(visit_ports(&c), [1, 2, 3, 2]);
        assert_eq!(visit_order(&c).weights, [100, 200, 100, 200]);
        c.endpoint_metadata = vec![meta(1, 0), meta(1000, 0), meta(100, 0)];
        let ports = visit_ports(&c);
        assert_eq!(ports.iter().filter(|&&p| p == 2).count(), 10);
        assert_eq!(ports.iter().filter(|&&p| p == 1).count(), 1);
        assert_eq!(ports.iter().filter(|&&p| p == 3).count(), 1);
        c.endpoint_metadata = vec![meta(50, 0); 3];
        let v = visit_order(&c);
        assert_eq!(
            (v.addrs, v.levels, v.weights),
            (c.endpoints, vec![3], vec![])
        );
    }

    #[test]
    fn priorities_become_levels_each_weighted_on_its_own() {
        let mut c = cluster("p", &[1, 2, 3, 4, 5]);
        c.endpoint_metadata = vec![meta(1, 2), meta(3, 0), meta(1, 2), meta(1, 0), meta(2, 2)];
        let v = visit_order(&c);
        assert_eq!(visit_ports(&c), [2, 4, 2, 2, 1, 3, 5, 5]);
        assert_eq!(v.levels, [4, 8]);
        assert_eq!(v.weights, [3, 1, 3, 3, 1, 1, 2, 2]);
        // Equal weights: no weight table; one endpoint per level.
        c.endpoint_metadata = vec![meta(7, 1), meta(7, 0), meta(7, 1), meta(7, 0), meta(7, 5)];
        let v = visit_order(&c);
        assert_eq!(visit_ports(&c), [2, 4, 1, 3, 5]);
        assert_eq!((v.levels, v.weights), (vec![2, 4, 5], vec![]));
        assert_eq!(visit_order(&cluster("e", &[])), Visits::default());
    }

    /// A shard's balancer over `c` (built as the shards build it) and the picks it makes.
    fn balancer(c: config::Cluster) -> crate::cluster::ShardCluster {
        let st = Stats::new(1, &config::StatsConfig::default()).unwrap();
        let mut b = Builder::default();
        let s = build(&mut b, &st, vec![c.clone()]);
        crate::cluster::ShardCluster::new(&c, s.endpoints[0].clone(), s.cluster_ids[0].clone())
    }

    fn picks(
        lb: &crate::cluster::ShardCluster,
        n: usize,
        state: impl Fn(u16) -> crate::cluster::Availability,
    ) -> Vec<u16> {
        (0..n)
            .map(|_| {
                lb.pick_available(|i| state(lb.slot(i).addr.port()))
                    .map_or(0, |i| lb.slot(i).addr.port())
            })
            .collect()
    }

    #[test]
    fn round_robin_follows_weights_and_fails_over_by_priority() {
        use crate::cluster::Availability::{BackingOff, Excluded, Ready};
        let mut c = cluster("rr", &[1, 2, 3, 4]);
        c.endpoint_metadata = vec![meta(3, 0), meta(1, 0), meta(1, 1), meta(1, 2)];
        let lb = balancer(c);
        // 3:1 within priority 0; priorities 1 and 2 idle.
        let p = picks(&lb, 400, |_| Ready);
        assert_eq!(p.iter().filter(|&&p| p == 1).count(), 300);
        assert_eq!(p.iter().filter(|&&p| p == 2).count(), 100);
        // One endpoint of priority 0 down: the other takes it all.
        assert!(picks(&lb, 20, |p| if p == 1 { BackingOff } else { Ready })
            .iter()
            .all(|&p| p == 2));
        // Priority 0 down (back-off or excluded): priority 1; both 0 and 1 down: priority 2.
        let down01 = |p| match p {
            1 => BackingOff,
            2 => Excluded,
            _ => Ready,
        };
        assert_eq!(
            picks(&lb, 5, |p| if p <= 2 { BackingOff } else { Ready }),
            [3; 5]
        );
        assert_eq!(
            picks(&lb, 5, |p| if p == 3 { Excluded } else { down01(p) }),
            [4; 5]
        );
        // Nothing ready: the first endpoint in back-off of the first level that has one.
        assert_eq!(
            picks(&lb, 3, |p| if p == 1 { Excluded } else { BackingOff }),
            [2; 3]
        );
        assert_eq!(
            picks(&lb, 3, |p| if p == 4 { BackingOff } else { Excluded }),
            [4; 3]
        );
        assert_eq!(picks(&lb, 3, |_| Excluded), [0; 3]);
        // Priority 0 recovered: all traffic back on it.
        let p = picks(&lb, 8, |_| Ready);
        assert!(p.iter().all(|&p| p <= 2), "{p:?}");
    }

    #[test]
    fn least_request_weighs_active_requests_by_weight() {
        use crate::cluster::Availability::{BackingOff, Ready};
        let mut c = cluster("lr", &[1, 2, 3]);
        c.lb = config::LbPolicy::LeastRequest;
        c.endpoint_metadata = vec![meta(3, 0), meta(1, 0), meta(1, 1)];
        let lb = balancer(c);
        // Requests that never finish: the weight-3 endpoint carries 3 for every 1 of the other.
        let mut count = [0u32; 4];
        for _ in 0..400 {
            let i = lb.pick().unwrap();
            lb.add_active(i, 1);
            count[lb.slot(i).addr.port() as usize] += 1;
        }
        assert_eq!(count, [0, 300, 100, 0]);
        // The least loaded ready endpoint wins even when one in back-off has fewer.
        let p = picks(&lb, 3, |p| if p == 2 { BackingOff } else { Ready });
        assert_eq!(p, [1; 3]);
        assert_eq!(
            picks(&lb, 2, |p| if p == 3 { Ready } else { BackingOff }),
            [3; 2]
        );
    }

    #[test]
    fn churned_tables_are_renumbered_with_a_new_generation() {
        let st = Stats::new(1, &config::StatsConfig::default()).unwrap();
        let mut b = Builder::default();
        let first = build(&mut b, &st, vec![cluster("a", &[1])]);
        let mut last = first.endpoints[0].clone();
        for port in 2..200u16 {
            last = build(&mut b, &st, vec![cluster("a", &[port])]).endpoints[0].clone();
            assert!(last.slots.len() <= 2 + ENDPOINT_SLOTS_SLACK + 1);
        }
        assert_ne!(last.generation, first.endpoints[0].generation);
        assert_eq!(last.addrs().next().unwrap().port(), 199);
    }
}
