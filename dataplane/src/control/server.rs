//! The process: builds the stats layout from the config, starts the shards and the admin
//! listeners, and runs the control loop that turns signals and admin requests into a drain.
//!
//! Lifecycle: `Starting` → `Serving` (every shard bound its listeners and is accepting) →
//! `Draining` (SIGTERM, SIGINT, `POST /drain` or `POST /quitquitquit`: shards stop accepting and
//! wait up to `drain_timeout_ms` for their connections) → exit 0.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use shard::{ShardHandle, ShardInfo};

use super::admin;
use crate::config::{self, Config};
use crate::snapshot::{Builder, PollStatIds, ShardStatIds, Snapshot};
use crate::stats::{Kind, StatId, Stats};
use crate::worker::{self, ShardMsg, SHARD_INBOX_MAX};

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
        stopped: Option<worker::ListenerScope>,
    ) -> Result<Vec<BoundListener>, RunError> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let have = |l: &config::Listener| {
            guard.iter().flatten().any(|b| {
                b.name == l.name && b.address == l.address && b.transparent == l.transparent
            })
        };
        // A listener replaced on an address this process already listens on (its old sockets
        // drain meanwhile) is not someone else's: no probe for it.
        let ours = |l: &config::Listener| {
            guard.iter().flatten().any(|b| {
                b.address.port() == l.address.port()
                    && (b.address.ip() == l.address.ip()
                        || b.address.ip().is_unspecified()
                        || l.address.ip().is_unspecified())
            })
        };
        let mut out = Vec::new();
        // Virtual listeners (bind: false) have no socket.
        // Listeners that `/drain_listeners` stopped do not listen again.
        let stopped = |l: &config::Listener| stopped.is_some_and(|s| s.covers(l));
        for l in listeners
            .iter()
            .filter(|l| l.bind && !have(l) && !stopped(l))
        {
            out.push(bind_listener(l, shards, inherited, !ours(l))?);
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

    /// Closes our descriptors of the listeners `stop` names (`/drain_listeners`: new
    /// connections to them are refused once the shards dropped theirs).
    fn close_some(&self, stop: impl Fn(&str) -> bool) {
        if let Ok(mut guard) = self.inner.lock() {
            if let Some(all) = guard.as_mut() {
                all.retain(|b| !stop(&b.name));
            }
        }
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
    /// A successor serves on our listening sockets: drain (handing it our Dubbo connections
    /// when it adopts them: `protocol` 2, and our TCP proxy connections: 3), then hand it our
    /// final stats.
    HandOff {
        stream: std::os::unix::net::UnixStream,
        protocol: u32,
    },
    /// The successor died while we drained: serve again.
    Resume,
    /// A shard handed a connection over: send it to the successor now (not at the next 10 ms
    /// check).
    HandedOver,
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

/// State shared by the shards, the admin threads and the control thread.
pub struct Shared {
    /// The process settings the config file gave (admin, runtime, drain timeout, stats, xds);
    /// its `listeners` and `clusters` are empty: those live in `snapshot`, which may change.
    pub config: Config,
    pub stats: Arc<Stats>,
    /// Per shard: what its loop did with its time (see `PollStatIds`), its buffer budget.
    pub shard_ids: Vec<ShardStatIds>,
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
    /// `POST /healthcheck/fail` (until `POST /healthcheck/ok`): `/ready` answers 503
    /// `DRAINING`, as Envoy's does, while traffic is still served.
    pub health_failed: std::sync::atomic::AtomicBool,
    /// Names of the config file's listeners and clusters (`/config_dump`: static, the others
    /// came from xDS).
    pub static_names: (HashSet<String>, HashSet<String>),
    /// The SDS secrets received (ADS or the `sds` servers), for [`crate::io::tls::TlsSet::load`].
    /// Taken after `updates` when both are.
    #[allow(clippy::disallowed_types)]
    secrets: std::sync::Mutex<crate::io::tls::Secrets>,
    /// The SDS clients, one per `sds` server of the config by its name, and one on the ADS
    /// server (`None`) with an `xds` section.
    pub sds: OnceLock<Vec<(Option<String>, Arc<xds::SdsHandle>)>>,
    /// Hot upgrade, old side: connections the shards hand over, on their way to the
    /// successor (at most the connections open; sent by the control thread).
    handed_over: mpsc::Sender<crate::filter::HandedOver>,
    /// Hot upgrade, new side: the shard that adopts the next handed-over connection.
    adopt_next: AtomicUsize,
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
    /// `POST /drain_listeners`: the listeners draining, and those stopped.
    listener_drain: Option<worker::ListenerScope>,
    stopped: Option<worker::ListenerScope>,
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

// === impl worker::Process ===

/// What the shards read of the process: set-up, snapshots, sockets and their state counts.
impl worker::Process for Shared {
    fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    fn shard_ids(&self, shard: usize) -> ShardStatIds {
        self.shard_ids[shard]
    }

    fn buffered_bytes_max(&self) -> usize {
        self.config.runtime.buffered_bytes_per_shard_max
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Shared::snapshot(self)
    }

    fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.config.drain_timeout_ms)
    }

    fn listen_sockets(
        &self,
        shard: usize,
        listener: &str,
    ) -> Result<Vec<std::net::TcpListener>, String> {
        self.sockets.for_shard(shard, listener)
    }

    fn shard_serving(&self, serving: bool) {
        count(&self.lifecycle.shards_serving, serving);
    }

    fn shard_drained(&self, drained: bool) {
        count(&self.lifecycle.shards_drained, drained);
    }

    fn hand_over(&self, conn: crate::filter::HandedOver) -> bool {
        let sent = self.handed_over.send(conn).is_ok();
        // A full control queue already wakes the control thread.
        let _ = self.control.try_send(ControlEvent::HandedOver);
        sent
    }
}

/// One shard more (`up`) or one fewer in `n`.
fn count(n: &AtomicUsize, up: bool) {
    if up {
        n.fetch_add(1, Ordering::AcqRel);
    } else {
        n.fetch_sub(1, Ordering::AcqRel);
    }
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
            && !self.health_failed.load(Ordering::Acquire)
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
    ) -> Result<u64, ApplyError> {
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
    ) -> Result<u64, ApplyError> {
        self.record(|| self.apply_endpoints_inner(changed, xds_versions))
    }

    /// Counts an update's outcome and its time.
    fn record(&self, apply: impl FnOnce() -> Result<u64, ApplyError>) -> Result<u64, ApplyError> {
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
    ) -> Result<u64, ApplyError> {
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
                .ok_or_else(|| ApplyError::UnknownCluster(c.cluster.clone()))?;
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
                let field = |f: String| {
                    format!("cluster {:?}: {}", c.cluster, f.replace("clusters[0].", ""))
                };
                return Err(ApplyError::Invalid(
                    problems.into_iter().map(|(f, m)| (field(f), m)).collect(),
                ));
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

    fn secrets(&self) -> crate::io::tls::Secrets {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New SDS secrets from `server` (`None`: ADS), checked by the caller (their PEM loads).
    /// When the running config uses one, its TLS is rebuilt and handed to the shards: new
    /// handshakes use the new certificates, connections open keep theirs. Before the shards
    /// run (`ApplyError::NotRunning`) the secrets are kept and the caller tries again.
    pub fn update_secrets(
        &self,
        server: Option<&str>,
        updated: Vec<(String, crate::io::tls::Secret)>,
    ) -> Result<(), ApplyError> {
        let mut u = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        {
            let mut held = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
            for (name, secret) in updated {
                let key = (server.map(str::to_string), name.clone());
                if held.get(&key).is_none_or(|s| **s != secret) {
                    held.insert(key, Arc::new(secret));
                    changed.push(name);
                }
            }
        }
        let current = self.snapshot();
        let used = current
            .config
            .sds_secrets()
            .any(|(_, s)| s.server.as_deref() == server && changed.contains(&s.name));
        if !used {
            return Ok(());
        }
        self.ready_for_update(&u)?;
        let tls = crate::io::tls::TlsSet::load(&current.config, &self.secrets())
            .map_err(|f| ApplyError::Invalid(vec![f]))?;
        let next = u.builder.build_tls(&current, Arc::new(tls));
        self.publish(&mut u, Arc::new(next), Arc::new([]))?;
        tracing::info!(secrets = ?changed, "sds: new certificates for new connections");
        Ok(())
    }

    /// Hot upgrade, new side: gives a connection the predecessor handed over to one of our
    /// shards (in turn), which serves it on listener `listener` starting with `unread`.
    /// `false` when no shard took it (the connection is closed).
    pub fn adopt(&self, adoption: worker::Adoption) -> bool {
        let inbox = {
            let u = self.updates.lock().unwrap_or_else(|p| p.into_inner());
            if u.inboxes.is_empty() {
                return false;
            }
            let k = self.adopt_next.fetch_add(1, Ordering::Relaxed) % u.inboxes.len();
            u.inboxes[k].clone()
        };
        let mut msg = ShardMsg::Adopt(adoption);
        let deadline = Instant::now() + APPLY_TIMEOUT;
        loop {
            match inbox.try_send(msg) {
                Ok(()) => return true,
                Err(shard::SendError::Full { message, .. }) if Instant::now() < deadline => {
                    msg = message;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
    }

    /// Refuses updates before the shards run and while draining.
    fn ready_for_update(&self, u: &Updates) -> Result<(), ApplyError> {
        if u.inboxes.len() != self.shard_count {
            return Err(ApplyError::NotRunning);
        }
        if self.lifecycle.state() == State::Draining {
            return Err(ApplyError::Draining);
        }
        Ok(())
    }

    fn apply_inner(
        &self,
        config: Config,
        xds_versions: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<u64, ApplyError> {
        let started = Instant::now();
        let problems = config.validate_as(config::Source::Dynamic);
        if !problems.is_empty() {
            return Err(ApplyError::Invalid(problems));
        }
        // Routes compile here first, so that a shard never meets a route it cannot build.
        for l in &config.listeners {
            let bad = |source| ApplyError::Routes {
                listener: l.name.clone(),
                source,
            };
            match l.protocol {
                config::Protocol::Dubbo => {
                    crate::filter::dubbo::router::compile(l, &config.clusters).map_err(bad)?;
                }
                config::Protocol::Triple => {
                    crate::filter::triple::router::compile(l, &config.clusters).map_err(bad)?;
                }
                config::Protocol::Tcp => {}
            }
        }
        let access_logs = crate::snapshot::open_access_logs(&config)?;
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
        // Certificates are read here, before any socket is bound: a missing file refuses the
        // update as a whole.
        let tls = Arc::new(
            crate::io::tls::TlsSet::load(&config, &self.secrets())
                .map_err(|f| ApplyError::Invalid(vec![f]))?,
        );
        let stopped = u.stopped;
        let bound = self.sockets.bind_new(
            &config.listeners,
            self.shard_count,
            &mut u.inherited,
            stopped,
        )?;
        let keep = config.listeners.clone();
        let clusters = config.clusters.len();
        let building = Instant::now();
        let drains = self.listener_drains(&current.config.listeners, &keep);
        let mut snapshot = u
            .builder
            .build(config, &self.stats, xds_versions, access_logs);
        snapshot.tls = tls;
        let snapshot = Arc::new(snapshot);
        let built = building.elapsed();
        self.sockets.install(bound, &keep);
        let result = self.publish(&mut u, snapshot.clone(), drains);
        if result.is_ok() {
            super::sds_glue::resubscribe(self, &snapshot.config);
        }
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
    ) -> Arc<[Arc<worker::DrainReport>]> {
        let timeout = Duration::from_millis(self.config.drain_timeout_ms);
        old.iter()
            .filter_map(|o| {
                let replaced = match new.iter().find(|n| n.name == o.name) {
                    Some(n) if worker::keeps_connections(o, n) => return None,
                    Some(_) => true,
                    None => false,
                };
                tracing::info!(
                    listener = %o.name,
                    replaced,
                    drain_timeout_ms = timeout.as_millis() as u64,
                    "listener removed by a config update: draining its connections"
                );
                Some(worker::DrainReport::new(&o.name, self.shard_count, timeout))
            })
            .collect()
    }

    /// Hands `snapshot` to every shard and waits until each runs it; then it is the current
    /// one.
    fn publish(
        &self,
        u: &mut Updates,
        snapshot: Arc<Snapshot>,
        drains: Arc<[Arc<worker::DrainReport>]>,
    ) -> Result<u64, ApplyError> {
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
                    Err(e) => return Err(ApplyError::ShardRefused(e.to_string())),
                }
            }
        }
        let deadline = Instant::now() + APPLY_TIMEOUT;
        while done.load(Ordering::Acquire) < u.inboxes.len() {
            if Instant::now() > deadline {
                return Err(ApplyError::ShardsSlow {
                    applied: done.load(Ordering::Acquire),
                    shards: u.inboxes.len(),
                });
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

    /// `POST /drain_listeners`: the connections of the listeners in `scope` drain for
    /// `drain_timeout_ms` (Dubbo readonly, Triple GOAWAY, those still open then closed); with
    /// `graceful` the listeners keep accepting until then (new connections told at once) and
    /// then stop, else they stop now. The process keeps serving its other listeners. A graceful
    /// drain asked again for a scope already draining changes nothing (Envoy's answer too).
    pub fn drain_listeners(
        self: &Arc<Self>,
        scope: worker::ListenerScope,
        graceful: bool,
    ) -> Result<(), ApplyError> {
        let timeout = Duration::from_millis(self.config.drain_timeout_ms);
        let mut u = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        self.ready_for_update(&u)?;
        let draining = u.listener_drain.is_some_and(|d| d >= scope);
        if graceful && draining {
            return Ok(());
        }
        if !draining {
            u.listener_drain = Some(scope.widen(u.listener_drain));
            tracing::info!(
                ?scope,
                graceful,
                drain_timeout_ms = timeout.as_millis() as u64,
                "draining listeners"
            );
            Self::send_all(&u, || ShardMsg::DrainListeners { scope, timeout })?;
        }
        if !graceful {
            return self.stop_listeners_locked(&mut u, scope);
        }
        // One such thread per scope at most (a second graceful request returned above).
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name("ringside-drain-listeners".into())
            .spawn(move || {
                std::thread::sleep(timeout);
                let mut u = shared.updates.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = shared.stop_listeners_locked(&mut u, scope) {
                    tracing::warn!(error = %e, "drain_listeners: cannot stop the listeners");
                }
            });
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "drain_listeners: no thread to wait out the drain; stopping the listeners now");
                self.stop_listeners_locked(&mut u, scope)
            }
        }
    }

    /// The listeners in `scope` stop accepting for good: our sockets of them close, the
    /// shards drop theirs, and later updates do not bind them again.
    fn stop_listeners_locked(
        &self,
        u: &mut Updates,
        scope: worker::ListenerScope,
    ) -> Result<(), ApplyError> {
        if u.stopped.is_some_and(|s| s >= scope) {
            return Ok(());
        }
        u.stopped = Some(scope.widen(u.stopped));
        let snap = self.snapshot();
        let names: HashSet<&str> = snap
            .config
            .listeners
            .iter()
            .filter(|l| scope.covers(l))
            .map(|l| l.name.as_str())
            .collect();
        tracing::info!(?scope, listeners = ?names, "drain_listeners: listeners stopped");
        self.sockets.close_some(|name| names.contains(name));
        Self::send_all(u, || ShardMsg::StopListeners { scope })
    }

    /// Puts `msg()` in every shard's inbox, waiting up to `APPLY_TIMEOUT` for room.
    fn send_all(u: &Updates, msg: impl Fn() -> ShardMsg) -> Result<(), ApplyError> {
        for inbox in &u.inboxes {
            let mut m = msg();
            let deadline = Instant::now() + APPLY_TIMEOUT;
            loop {
                match inbox.try_send(m) {
                    Ok(()) => break,
                    Err(shard::SendError::Full { message, .. }) if Instant::now() < deadline => {
                        m = message;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(ApplyError::ShardRefused(e.to_string())),
                }
            }
        }
        Ok(())
    }
}

/// Command-line overrides of the config's runtime section.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub shards: Option<usize>,
    pub io: Option<config::IoMode>,
    pub poll_mode: Option<config::PollMode>,
}

/// Why a config update was refused; the running config is then unchanged (xDS NACKs with the
/// text).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Validation problems, each `field: message`.
    #[error("{}", .0.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<(String, String)>),
    #[error("listener {listener:?}: routes: {source}")]
    Routes {
        listener: String,
        source: crate::route::RouteError,
    },
    /// Endpoints for a cluster the running config does not have.
    #[error("endpoints for unknown cluster {0:?}")]
    UnknownCluster(String),
    /// EDS for a cluster the composer does not know.
    #[error("EDS for unknown cluster {0:?}")]
    EdsUnknownCluster(String),
    #[error("cluster {0:?} takes its endpoints from the registry, not from EDS")]
    EdsForRegistryCluster(String),
    #[error("the shards are not running yet")]
    NotRunning,
    #[error("draining: config updates are no longer applied")]
    Draining,
    /// A new listener's socket.
    #[error(transparent)]
    Bind(#[from] RunError),
    #[error("a shard did not take the update: {0}")]
    ShardRefused(String),
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::OpenError),
    #[error("only {applied} of {shards} shards applied the update within {APPLY_TIMEOUT:?}")]
    ShardsSlow { applied: usize, shards: usize },
}

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
    /// Connections the shards hand to a hot-upgrade successor.
    handed_over_rx: mpsc::Receiver<crate::filter::HandedOver>,
    /// Actual admin address (differs from the config when it asked for port 0).
    pub admin_address: std::net::SocketAddr,
}

fn shard_stat_ids(st: &Stats) -> Vec<ShardStatIds> {
    use Kind::{Counter, Gauge};
    let handover_pause = st.add_histogram("server", "hot_upgrade_handover_pause_us", &[]);
    (0..st.shard_count())
        .map(|i| {
            let shard = i.to_string();
            let t = [("shard", shard.as_str())];
            ShardStatIds {
                poll: PollStatIds {
                    idle_spin_us: st.add("shard", "poll_idle_spin_us", &t, Counter),
                    loop_us: st.add("shard", "poll_loop_us", &t, Counter),
                    sleeps: st.add("shard", "poll_sleeps", &t, Counter),
                },
                budget: crate::filter::BudgetStatIds {
                    rq_shed_memory: st.add("shard", "rq_shed_memory", &t, Counter),
                    buffered_bytes: st.add("shard", "buffered_bytes", &t, Gauge),
                },
                handover_pause,
            }
        })
        .collect()
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
        all.push(bind_listener(l, shards, inherited, true)?);
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
    crate::io::intercept::prepare_listener(&socket, false)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// One listener's sockets: a predecessor's (spread over the shards) when it handed some over,
/// else one SO_REUSEPORT socket per shard. `probe`: first check that no other socket listens
/// on the address ([`crate::io::check_port_free`]); false where this process holds one there.
fn bind_listener(
    l: &config::Listener,
    shards: usize,
    inherited: &mut Inherited,
    probe: bool,
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
    if taken.is_empty() && probe {
        crate::io::check_port_free(l.address, l.transparent).map_err(listen_err)?;
    } else {
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
        socks.push(crate::io::bind_reuseport(l.address, l.transparent).map_err(listen_err)?);
    }
    Ok(BoundListener {
        name: l.name.clone(),
        address: l.address,
        transparent: l.transparent,
        per_shard,
    })
}

/// The shards' runtime: the config's `runtime` section with the command line's overrides
/// (shard count, I/O backend, poll mode). Starts the DPDK port first when the config has one
/// (before any listener binds, docs/dpdk.md).
fn runtime_spec(config: &Config, overrides: &Overrides) -> Result<shard::Spec, RunError> {
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
    let poll = match overrides.poll_mode.unwrap_or(config.runtime.poll_mode) {
        config::PollMode::Sleep => shard::PollMode::Sleep,
        config::PollMode::Spin => shard::PollMode::Spin,
        config::PollMode::Hybrid => shard::PollMode::Hybrid,
    };
    let io = match overrides.io.unwrap_or(config.runtime.io) {
        // A polling loop is served by epoll unless io_uring is asked for: io_uring hands a
        // thread spinning in user space its completions as task work announced by an
        // interrupt, which cost ~38 µs per 1x1 request on these VMs where epoll's readiness
        // is read by the poll itself (decision 0009, "Change 5").
        config::IoMode::Auto if !matches!(poll, shard::PollMode::Sleep) => shard::IoMode::Epoll,
        config::IoMode::Auto => shard::IoMode::Auto,
        config::IoMode::Uring => shard::IoMode::Uring,
        config::IoMode::Epoll => shard::IoMode::Epoll,
    };
    let spin_budget = Duration::from_micros(config.runtime.spin_budget_us);
    Ok(shard::Spec {
        shards: shard_count,
        io,
        pin: config.runtime.pin,
        uring_entries: shard::URING_ENTRIES_DEFAULT,
        inbox_capacity: SHARD_INBOX_MAX,
        poll,
        spin_budget,
    })
}

/// Starts the shards (each runs `worker::shard_main` over `shared`) and logs each one's core,
/// I/O backend and poll mode.
fn start_shards(
    spec: &shard::Spec,
    shared: &Arc<Shared>,
) -> Result<Vec<ShardHandle<ShardMsg>>, RunError> {
    let shared = shared.clone();
    let shards = shard::start(spec, move |ctx, inbox| {
        worker::shard_main(ctx, shared.clone(), inbox)
    })?;
    for h in &shards {
        let i = &h.info;
        tracing::info!(
            shard = i.id,
            core = ?i.core,
            backend = i.backend.as_str(),
            poll_mode = i.poll.as_str(),
            fallback = i.fallback_reason.as_deref().unwrap_or(""),
            "shard up"
        );
    }
    Ok(shards)
}

impl Server {
    /// Starts shards and admin; returns once every shard is serving. `inherited` holds the
    /// listening sockets a predecessor handed over (empty for a fresh start).
    pub fn start(
        config: Config,
        overrides: &Overrides,
        mut inherited: Inherited,
    ) -> Result<Server, RunError> {
        let spec = runtime_spec(&config, overrides)?;
        let shard_count = spec.shards;
        // Before any access-log writer or span exporter starts (they confine themselves).
        shard::set_aux_cpus(&config.runtime.aux_cpus)
            .map_err(|e| RunError::Invalid(e.to_string()))?;
        crate::io::intercept::set_socket_mark(config.runtime.socket_mark);
        crate::io::intercept::set_keepalive(config.runtime.tcp_keepalive);
        let stats = Arc::new(
            Stats::new(shard_count, &config.stats)
                .map_err(|e| RunError::Invalid(format!("stats: {e}")))?,
        );
        if let Some(x) = &config.xds {
            stats.set_istio_node(crate::stats::istio::Node::from_xds(
                &x.node_id,
                &x.node_metadata,
            ));
        }
        let shard_ids = shard_stat_ids(&stats);
        let update_ids = UpdateStatIds {
            applied: stats.add("config", "update_applied", &[], Kind::Counter),
            rejected: stats.add("config", "update_rejected", &[], Kind::Counter),
            endpoints_only: stats.add("config", "update_endpoints_only", &[], Kind::Counter),
            apply_time: stats.add_histogram("config", "update_apply_time_us", &[]),
        };
        let mut builder = Builder::default();
        let access_logs = crate::snapshot::open_access_logs(&config)
            .map_err(|e| RunError::Invalid(e.to_string()))?;
        let tls = crate::io::tls::TlsSet::load(&config, &Default::default())
            .map_err(|(f, m)| RunError::Invalid(format!("{f}: {m}")))?;
        let mut snapshot = builder.build(config.clone(), &stats, None, access_logs);
        snapshot.tls = Arc::new(tls);
        let snapshot = Arc::new(snapshot);
        stats.prefault();
        let sockets = bind_all(&config, shard_count, &mut inherited)?;
        if config.xds.is_none() {
            for name in inherited.sockets.keys() {
                tracing::warn!(listener = %name, "inherited sockets for a listener the config no longer has; closing them");
            }
            inherited.sockets.clear();
        }
        let (control, control_rx) = mpsc::sync_channel(16);
        let (handed_over, handed_over_rx) = mpsc::channel();
        let dynamic = config.xds.is_some();
        let registry_discovery = config
            .clusters
            .iter()
            .any(|c| c.kind == config::ClusterType::Zookeeper);
        let static_names = (
            config.listeners.iter().map(|l| l.name.clone()).collect(),
            config.clusters.iter().map(|c| c.name.clone()).collect(),
        );
        let mut config = config;
        config.listeners = Vec::new();
        config.clusters = Vec::new();
        // The two locks are the control plane's (admin, config updates), never a shard's.
        #[allow(clippy::disallowed_types)]
        let shared = Arc::new(Shared {
            config,
            stats,
            shard_ids,
            snapshot: std::sync::Mutex::new(snapshot),
            updates: std::sync::Mutex::new(Updates {
                builder,
                inboxes: Vec::new(),
                inherited,
                spare: None,
                listener_drain: None,
                stopped: None,
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
            health_failed: std::sync::atomic::AtomicBool::new(false),
            static_names,
            secrets: Default::default(),
            sds: OnceLock::new(),
            handed_over,
            adopt_next: AtomicUsize::new(0),
        });

        // Admin first: it answers 503 on /ready while the shards come up.
        let admin_address = admin::start(shared.clone())
            .map_err(|(addr, source)| RunError::Admin { addr, source })?;

        let shards = start_shards(&spec, &shared)?;
        let infos: Vec<ShardInfo> = shards.iter().map(|h| h.info.clone()).collect();
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
            handed_over_rx,
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
            let (reason, successor, protocol) = match self.control_rx.recv() {
                Ok(ControlEvent::Drain { reason }) => (reason, None, 0),
                Ok(ControlEvent::HandOff { stream, protocol }) => {
                    ("hot upgrade", Some(stream), protocol)
                }
                Ok(ControlEvent::Resume | ControlEvent::HandedOver) => continue,
                Err(_) => ("control channel closed", None, 0),
            };
            let hand_over = protocol >= hotswap::PROTOCOL_CONNECTIONS;
            let timeout = Duration::from_millis(shared.config.drain_timeout_ms);
            tracing::info!(
                reason,
                drain_timeout_ms = timeout.as_millis() as u64,
                "draining"
            );
            shared.lifecycle.set(State::Draining);
            // Graceful offline: consumers that find us through the registry stop choosing us
            // before we stop accepting.
            super::registry_glue::deregister(&shared);
            let linger = successor.is_some();
            for h in &self.shards {
                let drain = ShardMsg::Drain {
                    timeout,
                    linger,
                    hand_over,
                    hand_over_tcp: protocol >= hotswap::PROTOCOL_TCP,
                };
                if let Err(e) = h.inbox.try_send(drain) {
                    tracing::warn!(error = %e, "could not tell a shard to drain");
                }
            }
            match &successor {
                Some(stream) => {
                    // The successor answers on the admin sockets now.
                    shared.admin_stop.store(true, Ordering::Release);
                    super::handoff::watch_successor(stream, &shared);
                }
                // No successor: refuse new connections from now on.
                None => shared.sockets.close(),
            }
            let mut finish_sent = false;
            let mut moved = 0;
            loop {
                if let Some(stream) = &successor {
                    moved += super::handoff::send_connections(stream, &self.handed_over_rx);
                }
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
                        moved += super::handoff::send_connections(stream, &self.handed_over_rx);
                        if hand_over {
                            tracing::info!(
                                connections = moved,
                                "hot upgrade: connections handed to the successor"
                            );
                        }
                        super::handoff::farewell(stream, &shared);
                    }
                    break 'serve;
                }
                match self.control_rx.recv_timeout(Duration::from_millis(10)) {
                    Ok(ControlEvent::Resume) if successor.is_some() => {
                        tracing::warn!("hot upgrade: successor died while we drained; resuming");
                        // Connections on their way to it are closed (their callers reconnect).
                        let lost = self.handed_over_rx.try_iter().count();
                        if lost > 0 {
                            tracing::warn!(
                                connections = lost,
                                "hot upgrade: closing connections the dead successor did not take"
                            );
                        }
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

    #[test]
    fn apply_errors_say_what_was_refused() {
        let e = ApplyError::Invalid(vec![
            ("clusters[0].name".into(), "empty".into()),
            ("listeners[1].address".into(), "port 0".into()),
        ]);
        assert_eq!(
            e.to_string(),
            "clusters[0].name: empty; listeners[1].address: port 0"
        );
        let e = ApplyError::ShardsSlow {
            applied: 1,
            shards: 2,
        };
        assert_eq!(
            e.to_string(),
            "only 1 of 2 shards applied the update within 10s"
        );
    }
}
