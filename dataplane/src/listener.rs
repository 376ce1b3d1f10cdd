//! One shard's side of the data plane: it binds its own copy of every listener (SO_REUSEPORT, so
//! the kernel spreads connections over shards), runs the accept loops, and drains when the
//! control thread says so.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shard::monoio::net::TcpListener;
use shard::{Event, Receiver, ShardCtx};

use crate::cluster::ShardCluster;
use crate::config::Protocol;
use crate::dubbo::downstream::{self, DubboListener};
use crate::dubbo::router::Router;
use crate::dubbo::upstream::ClusterPool;
use crate::server::{ListenerStatIds, PollStatIds, ShardMsg, Shared, POLL_STATS_PUBLISH};
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

/// What every connection of one listener on one shard needs.
pub struct ListenerCtx {
    pub name: String,
    pub protocol: Protocol,
    pub cluster: Option<Rc<ShardCluster>>,
    pub buffer_bytes: usize,
    pub idle_timeout: Duration,
    pub connections_max: u32,
    pub stats: ShardStats,
    pub ids: ListenerStatIds,
    /// Set for `dubbo` listeners.
    pub dubbo: Option<Rc<DubboListener>>,
    /// Set for `triple` listeners.
    pub triple: Option<Rc<crate::triple::TripleListener>>,
    /// The shard's drain signal.
    pub draining: Rc<std::cell::RefCell<Event>>,
}

/// Set-up on the shard thread (takes its own descriptors of the listening sockets the control
/// thread bound or inherited), then the shard's future.
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

pub fn shard_main(
    ctx: ShardCtx,
    shared: Arc<Shared>,
    inbox: Receiver<ShardMsg>,
) -> Result<impl std::future::Future<Output = ()>, String> {
    let config = &shared.config;
    let id = ctx.info.id;
    let sockets = shared.sockets.for_shard(id)?;
    // Compile each Dubbo listener's routes once here (the config was validated; an error is a
    // bug, reported rather than unwrapped).
    let mut routers = Vec::with_capacity(config.listeners.len());
    let mut triple_routers = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let bad = |e: String| format!("listener {:?}: routes: {e}", l.name);
        routers.push(match l.protocol {
            Protocol::Dubbo => Some(Router::new(l, &config.clusters).map_err(bad)?),
            _ => None,
        });
        triple_routers.push(match l.protocol {
            Protocol::Triple => {
                Some(crate::triple::router::Router::new(l, &config.clusters).map_err(bad)?)
            }
            _ => None,
        });
    }
    let poll_stats = ctx.info.poll_stats.clone();
    Ok(async move {
        let stats = shared.stats.shard(id);
        shard::monoio::spawn(publish_poll_stats(
            poll_stats,
            stats.clone(),
            shared.poll_ids[id],
        ));
        let clusters: Vec<Rc<ShardCluster>> = shared
            .config
            .clusters
            .iter()
            .zip(&shared.cluster_ids)
            .zip(&shared.cluster_endpoints)
            .map(|((c, ids), eps)| Rc::new(ShardCluster::new(c, eps.clone(), ids.clone())))
            .collect();
        // Upstream Dubbo pools: one per cluster per shard, shared by every listener of the shard.
        let pools: Vec<Rc<ClusterPool>> = shared
            .config
            .clusters
            .iter()
            .zip(&clusters)
            .zip(&shared.upstream_ids)
            .map(|((c, lb), ids)| ClusterPool::new(c, lb.clone(), stats.clone(), *ids))
            .collect();
        // HTTP/2 upstream pools for triple listeners, built only when one exists.
        let has_triple = shared
            .config
            .listeners
            .iter()
            .any(|l| l.protocol == Protocol::Triple);
        let h2_pools: Vec<Rc<crate::triple::Pool>> = if has_triple {
            shared
                .config
                .clusters
                .iter()
                .zip(&clusters)
                .zip(&shared.upstream_ids)
                .map(|((c, lb), ids)| crate::triple::Pool::new(c, lb.clone(), stats.clone(), *ids))
                .collect()
        } else {
            Vec::new()
        };
        // Set when the shard drains: Dubbo connections announce readonly and close when idle.
        // Replaced by a fresh event on resume.
        let draining = Rc::new(std::cell::RefCell::new(Event::new()));
        let connections = Rc::new(Cell::new(0usize));
        let mut contexts = Vec::with_capacity(shared.config.listeners.len());
        for (index, ((l, router), triple_router)) in shared
            .config
            .listeners
            .iter()
            .zip(routers)
            .zip(triple_routers)
            .enumerate()
        {
            let ids = &shared.listener_ids[index];
            let lctx = Rc::new(ListenerCtx {
                name: l.name.clone(),
                protocol: l.protocol,
                cluster: l
                    .cluster
                    .as_ref()
                    .and_then(|n| clusters.iter().find(|c| &c.name == n).cloned()),
                buffer_bytes: l.buffer_bytes,
                idle_timeout: Duration::from_millis(l.idle_timeout_ms),
                connections_max: l.connections_per_shard_max,
                stats: stats.clone(),
                ids: *ids,
                dubbo: router
                    .zip(shared.dubbo_ids[index])
                    .map(|(router, dubbo_ids)| {
                        let d = l.dubbo.clone().unwrap_or_default();
                        Rc::new(DubboListener {
                            name: l.name.clone(),
                            router,
                            pools: pools.clone(),
                            frame_bytes_max: d.frame_bytes_max,
                            pending_max: d.pending_requests_per_connection_max,
                            stats: stats.clone(),
                            ids: dubbo_ids,
                            route_ids: shared.route_ids[index].clone(),
                            services: Default::default(),
                            dice: crate::dubbo::router::Dice::new(
                                (id as u32 + 1).wrapping_mul(0x9e37_79b9),
                            ),
                            draining: draining.clone(),
                        })
                    }),
                triple: triple_router
                    .zip(shared.triple_ids[index].clone())
                    .map(|(router, ids)| {
                        let t = l.triple.clone().unwrap_or_default();
                        Rc::new(crate::triple::TripleListener {
                            name: l.name.clone(),
                            router,
                            pools: h2_pools.clone(),
                            limits: crate::triple::H2Limits::from_config(&t),
                            stats: stats.clone(),
                            ids,
                            route_ids: shared.route_ids[index].clone(),
                            services: Default::default(),
                            dice: crate::dubbo::router::Dice::new(
                                (id as u32 + 7).wrapping_mul(0x9e37_79b9),
                            ),
                        })
                    }),
                draining: draining.clone(),
            });
            contexts.push(lctx);
        }
        // Accept on every socket this shard was given; `stop` ends these loops (and only these:
        // a resume starts new ones).
        let start_accepting = |sockets: Vec<Vec<std::net::TcpListener>>, stop: &Event| {
            for (lctx, socks) in contexts.iter().zip(sockets) {
                for sock in socks {
                    match TcpListener::from_std(sock) {
                        Ok(listener) => {
                            shard::monoio::spawn(accept_loop(
                                listener,
                                lctx.clone(),
                                stop.clone(),
                                connections.clone(),
                            ));
                        }
                        Err(e) => {
                            tracing::error!(shard = id, listener = %lctx.name, error = %e, "cannot register listener")
                        }
                    }
                }
            }
        };
        let mut stop_accepting = Event::new();
        start_accepting(sockets, &stop_accepting);
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
                    let done = connections.get() == 0 || Instant::now() >= d;
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
                Some(ShardMsg::Drain { timeout, linger: l }) if deadline.is_none() => {
                    shared
                        .lifecycle
                        .shards_serving
                        .fetch_sub(1, Ordering::AcqRel);
                    stop_accepting.set();
                    draining.borrow().set();
                    deadline = Some(Instant::now() + timeout);
                    linger = l;
                    if linger {
                        // A hot upgrade: the successor's shards may spin on our CPUs.
                        shard::force_sleep(true);
                    }
                }
                Some(ShardMsg::Resume) if deadline.is_some() => {
                    shard::force_sleep(false);
                    match shared.sockets.for_shard(id) {
                        Ok(sockets) => {
                            stop_accepting = Event::new();
                            *draining.borrow_mut() = Event::new();
                            start_accepting(sockets, &stop_accepting);
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
                        Err(e) => tracing::error!(shard = id, error = %e, "cannot resume"),
                    }
                }
                Some(ShardMsg::Finish) => break,
                Some(_) => {}
                None => break,
            }
        }
        if connections.get() > 0 {
            tracing::warn!(
                shard = id,
                open = connections.get(),
                "drain timeout: closing connections still open"
            );
        }
        tracing::debug!(shard = id, "drained");
    })
}

pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

async fn accept_loop(
    listener: TcpListener,
    l: Rc<ListenerCtx>,
    stop: Event,
    connections: Rc<Cell<usize>>,
) {
    let active_here = Rc::new(Cell::new(0u32));
    loop {
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
        if active_here.get() >= l.connections_max {
            l.stats.inc(l.ids.cx_overflow);
            drop(stream);
            continue;
        }
        l.stats.inc(l.ids.cx_total);
        l.stats.inc(l.ids.cx_active);
        active_here.set(active_here.get() + 1);
        connections.set(connections.get() + 1);
        let (l2, active_here2, connections2) =
            (l.clone(), active_here.clone(), connections.clone());
        shard::monoio::spawn(async move {
            match l2.protocol {
                Protocol::Tcp => tcp_proxy::serve(stream, l2.clone()).await,
                Protocol::Dubbo => {
                    if let Some(d) = l2.dubbo.clone() {
                        downstream::serve(stream, d).await
                    }
                }
                Protocol::Triple => {
                    if let Some(t) = l2.triple.clone() {
                        let drain = l2.draining.borrow().clone();
                        crate::triple::conn::serve(stream, t, drain).await
                    }
                }
            }
            l2.stats.dec(l2.ids.cx_active);
            active_here2.set(active_here2.get() - 1);
            connections2.set(connections2.get() - 1);
        });
    }
}
