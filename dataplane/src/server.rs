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

use crate::cluster::{ClusterStatIds, HostStatIds};
use crate::config::{self, Config};
use crate::dubbo::downstream::{DubboStatIds, RequestStatIds};
use crate::dubbo::upstream::UpstreamStatIds;
use crate::stats::{Kind, StatId, Stats};
use crate::{admin, listener};

/// Messages queued into each shard's inbox.
pub const SHARD_INBOX_MAX: usize = 64;

/// Control thread → shard.
pub enum ShardMsg {
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
    // Control plane only (start-up, drain, handoff); shards never touch this lock.
    #[allow(clippy::disallowed_types)]
    inner: std::sync::Mutex<Option<Vec<Vec<Vec<std::net::TcpListener>>>>>,
    /// Admin listeners: (name, socket), `__admin` first.
    pub admin: Vec<(String, std::net::TcpListener)>,
}

impl ListenSockets {
    /// Duplicates of this shard's sockets, per listener.
    pub fn for_shard(&self, shard: usize) -> Result<Vec<Vec<std::net::TcpListener>>, String> {
        let guard = self
            .inner
            .lock()
            .map_err(|_| "listen sockets poisoned".to_string())?;
        let all = guard.as_ref().ok_or("listening sockets already closed")?;
        all.iter()
            .map(|per_shard| {
                per_shard
                    .get(shard)
                    .map(|socks| {
                        socks
                            .iter()
                            .map(|s| s.try_clone())
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .unwrap_or(Ok(Vec::new()))
                    .map_err(|e| format!("cannot duplicate a listening socket: {e}"))
            })
            .collect()
    }

    /// (listener name, socket) for every listening socket, for a successor.
    pub fn for_handoff(
        &self,
        listeners: &[config::Listener],
    ) -> Vec<(String, std::net::TcpListener)> {
        let mut out = Vec::new();
        if let Ok(guard) = self.inner.lock() {
            if let Some(all) = guard.as_ref() {
                for (l, per_shard) in listeners.iter().zip(all) {
                    for s in per_shard.iter().flatten() {
                        if let Ok(d) = s.try_clone() {
                            out.push((l.name.clone(), d));
                        }
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
}

/// Read-only state shared by the shards (at start) and the admin thread.
pub struct Shared {
    pub config: Config,
    /// Bumped on every config change; 1 for the static file.
    pub config_version: u64,
    pub stats: Arc<Stats>,
    pub listener_ids: Vec<ListenerStatIds>,
    /// For `dubbo` listeners, by listener index.
    pub dubbo_ids: Vec<Option<DubboStatIds>>,
    /// For `dubbo` listeners: per route, then the default route.
    pub route_ids: Vec<Vec<RequestStatIds>>,
    pub cluster_ids: Vec<ClusterStatIds>,
    pub upstream_ids: Vec<UpstreamStatIds>,
    /// For `triple` listeners, by listener index.
    pub triple_ids: Vec<Option<crate::triple::TripleStatIds>>,
    /// Per shard: what its loop did with its time (see `PollStatIds`).
    pub poll_ids: Vec<PollStatIds>,
    /// Each cluster's endpoints, shared by the shards.
    pub cluster_endpoints: Vec<Arc<[std::net::SocketAddr]>>,
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

impl Shared {
    /// Ready: started, every shard accepting, not draining.
    pub fn ready(&self) -> bool {
        self.lifecycle.state() == State::Serving
            && self.lifecycle.shards_serving.load(Ordering::Acquire) == self.shard_count
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

/// Every stat id, resolved once before the shards start.
struct StatLayout {
    listener_ids: Vec<ListenerStatIds>,
    dubbo_ids: Vec<Option<DubboStatIds>>,
    route_ids: Vec<Vec<RequestStatIds>>,
    cluster_ids: Vec<ClusterStatIds>,
    upstream_ids: Vec<UpstreamStatIds>,
    triple_ids: Vec<Option<crate::triple::TripleStatIds>>,
    poll_ids: Vec<PollStatIds>,
}

fn build_stats(config: &Config, st: &Stats) -> StatLayout {
    use Kind::{Counter, Gauge};
    let poll_ids = (0..st.shard_count())
        .map(|i| {
            let shard = i.to_string();
            let t = [("shard", shard.as_str())];
            PollStatIds {
                idle_spin_us: st.add("shard", "poll_idle_spin_us", &t, Counter),
                loop_us: st.add("shard", "poll_loop_us", &t, Counter),
                sleeps: st.add("shard", "poll_sleeps", &t, Counter),
            }
        })
        .collect();
    let listener_ids = config
        .listeners
        .iter()
        .map(|l| {
            let t = [("listener", l.name.as_str())];
            ListenerStatIds {
                cx_total: st.add("listener", "downstream_cx_total", &t, Counter),
                cx_active: st.add("listener", "downstream_cx_active", &t, Gauge),
                cx_overflow: st.add("listener", "downstream_cx_overflow", &t, Counter),
                cx_idle_timeout: st.add("listener", "downstream_cx_idle_timeout", &t, Counter),
                bytes_rx: st.add("listener", "downstream_bytes_rx_total", &t, Counter),
                bytes_tx: st.add("listener", "downstream_bytes_tx_total", &t, Counter),
            }
        })
        .collect();
    let cluster_ids = config
        .clusters
        .iter()
        .map(|c| {
            let t = [("cluster", c.name.as_str())];
            ClusterStatIds {
                cx_total: st.add("cluster", "upstream_cx_total", &t, Counter),
                cx_active: st.add("cluster", "upstream_cx_active", &t, Gauge),
                cx_connect_fail: st.add("cluster", "upstream_cx_connect_fail", &t, Counter),
                cx_connect_timeout: st.add("cluster", "upstream_cx_connect_timeout", &t, Counter),
                hosts: c
                    .endpoints
                    .iter()
                    .map(|e| {
                        let host = e.to_string();
                        let t = [("cluster", c.name.as_str()), ("host", host.as_str())];
                        HostStatIds {
                            cx_total: st.add_host("cluster_host", "upstream_cx_total", &t),
                            cx_connect_fail: st.add_host(
                                "cluster_host",
                                "upstream_cx_connect_fail",
                                &t,
                            ),
                            rq_total: st.add_host("cluster_host", "upstream_rq_total", &t),
                            rq_timeout: st.add_host("cluster_host", "upstream_rq_timeout", &t),
                            rq_failure: st.add_host("cluster_host", "upstream_rq_failure", &t),
                        }
                    })
                    .collect::<Vec<_>>()
                    .into(),
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
    let upstream_ids = config
        .clusters
        .iter()
        .map(|c| {
            let t = [("cluster", c.name.as_str())];
            UpstreamStatIds {
                rq_total: st.add("cluster", "upstream_rq_total", &t, Counter),
                rq_timeout: st.add("cluster", "upstream_rq_timeout", &t, Counter),
                rq_failure: st.add("cluster", "upstream_rq_failure", &t, Counter),
                rq_overflow: st.add("cluster", "upstream_rq_overflow", &t, Counter),
                rq_active: st.add("cluster", "upstream_rq_active", &t, Gauge),
            }
        })
        .collect();
    StatLayout {
        listener_ids,
        dubbo_ids,
        route_ids,
        cluster_ids,
        upstream_ids,
        triple_ids,
        poll_ids,
    }
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
            None => std::net::TcpListener::bind(addr)
                .map_err(|source| RunError::Admin { addr, source })?,
        };
        admin.push((name.to_string(), sock));
    }
    let mut all = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let listen_err = |source| RunError::Listen {
            listener: l.name.clone(),
            addr: l.address,
            source,
        };
        let mut per_shard: Vec<Vec<std::net::TcpListener>> =
            (0..shards).map(|_| Vec::new()).collect();
        for (j, sock) in inherited.take(&l.name).into_iter().enumerate() {
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
            socks.push(listener::bind_reuseport(l.address).map_err(listen_err)?);
        }
        all.push(per_shard);
    }
    #[allow(clippy::disallowed_types)]
    let inner = std::sync::Mutex::new(Some(all));
    Ok(ListenSockets { inner, admin })
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
        let stats = Arc::new(
            Stats::new(shard_count, &config.stats)
                .map_err(|e| RunError::Invalid(format!("stats: {e}")))?,
        );
        let layout = build_stats(&config, &stats);
        let cluster_endpoints = config
            .clusters
            .iter()
            .map(|c| c.endpoints.as_slice().into())
            .collect();
        stats.prefault();
        let sockets = bind_all(&config, shard_count, &mut inherited)?;
        for name in inherited.sockets.keys() {
            tracing::warn!(listener = %name, "inherited sockets for a listener the config no longer has; closing them");
        }
        let (control, control_rx) = mpsc::sync_channel(16);
        let pin = config.runtime.pin;
        let shared = Arc::new(Shared {
            config,
            config_version: 1,
            stats,
            listener_ids: layout.listener_ids,
            dubbo_ids: layout.dubbo_ids,
            route_ids: layout.route_ids,
            cluster_ids: layout.cluster_ids,
            upstream_ids: layout.upstream_ids,
            triple_ids: layout.triple_ids,
            poll_ids: layout.poll_ids,
            cluster_endpoints,
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
