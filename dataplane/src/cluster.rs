//! A cluster as one shard sees it: its endpoints, the shard's own load-balancing state, and the
//! upstream connect path (timeout, retry on the next endpoint). Per shard, so nothing here is
//! shared or locked; balancing decisions are local to the shard, as in every thread-per-core
//! proxy.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shard::monoio::net::TcpStream;

use crate::config::{self, LbPolicy};
use crate::stats::{ShardStats, StatId};

/// Connect attempts for one downstream connection, each to a different endpoint when there are
/// several.
pub const CONNECT_ATTEMPTS_MAX: usize = 3;

/// Stat ids of one cluster.
#[derive(Clone, Debug)]
pub struct ClusterStatIds {
    pub cx_total: StatId,
    pub cx_active: StatId,
    pub cx_connect_fail: StatId,
    pub cx_connect_timeout: StatId,
    /// Per endpoint, in config order (all the sink when `stats.per_host` is off); shared by
    /// every shard.
    pub hosts: Arc<[HostStatIds]>,
}

/// Stat ids of one upstream endpoint (`stats.per_host`).
#[derive(Clone, Copy, Debug)]
pub struct HostStatIds {
    pub cx_total: StatId,
    pub cx_connect_fail: StatId,
    pub rq_total: StatId,
    pub rq_timeout: StatId,
    pub rq_failure: StatId,
}

pub struct ShardCluster {
    pub name: String,
    /// Shared by every shard (read-only).
    endpoints: Arc<[SocketAddr]>,
    /// Connections (tcp) or requests in flight (dubbo) per endpoint, on this shard.
    active: Vec<Cell<u32>>,
    next: Cell<usize>,
    lb: LbPolicy,
    connect_timeout: Duration,
    pub ids: ClusterStatIds,
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
    pub stream: TcpStream,
    pub guard: ActiveGuard<'a>,
}

/// Counts one connection (or request) on an endpoint until dropped.
pub struct ActiveGuard<'a> {
    pub endpoint: usize,
    cluster: &'a ShardCluster,
    stats: &'a ShardStats,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        let a = &self.cluster.active[self.endpoint];
        a.set(a.get().saturating_sub(1));
        self.stats.dec(self.cluster.ids.cx_active);
    }
}

impl ShardCluster {
    /// `endpoints` is the cluster's endpoint list, built once and shared by every shard.
    pub fn new(c: &config::Cluster, endpoints: Arc<[SocketAddr]>, ids: ClusterStatIds) -> Self {
        ShardCluster {
            name: c.name.clone(),
            endpoints,
            active: c.endpoints.iter().map(|_| Cell::new(0)).collect(),
            next: Cell::new(0),
            lb: c.lb,
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            ids,
        }
    }

    /// The endpoint index the next connection or request should use.
    pub fn pick(&self) -> usize {
        let n = self.endpoints.len();
        debug_assert!(n > 0, "config validation guarantees an endpoint");
        let start = self.next.get() % n;
        self.next.set(start.wrapping_add(1));
        match self.lb {
            LbPolicy::RoundRobin => start,
            LbPolicy::LeastRequest => (0..n)
                .map(|k| (start + k) % n)
                .min_by_key(|&i| self.active[i].get())
                .unwrap_or(start),
        }
    }

    /// The balancer's pick among endpoints `state` does not exclude: the first one ready, else
    /// the first one in failure back-off (a cluster whose endpoints all failed recently is
    /// tried anyway), else `None`.
    pub fn pick_available(&self, state: impl Fn(usize) -> Availability) -> Option<usize> {
        let mut fallback = None;
        for _ in 0..self.endpoints.len() {
            let i = self.pick();
            match state(i) {
                Availability::Ready => return Some(i),
                Availability::BackingOff => fallback = fallback.or(Some(i)),
                Availability::Excluded => {}
            }
        }
        fallback
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Adjusts an endpoint's active count (requests in flight, for `least_request`).
    pub fn add_active(&self, endpoint: usize, delta: i32) {
        let a = &self.active[endpoint];
        a.set(a.get().saturating_add_signed(delta));
    }

    /// Connects to an endpoint chosen by the balancer, trying up to [`CONNECT_ATTEMPTS_MAX`]
    /// endpoints.
    pub async fn connect<'a>(
        &'a self,
        stats: &'a ShardStats,
    ) -> Result<Upstream<'a>, ConnectError> {
        let attempts = CONNECT_ATTEMPTS_MAX.min(self.endpoints.len());
        let mut last = None;
        for _ in 0..attempts {
            let i = self.pick();
            let addr = self.endpoints[i];
            match shard::monoio::time::timeout(self.connect_timeout, TcpStream::connect_addr(addr))
                .await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    self.active[i].set(self.active[i].get() + 1);
                    stats.inc(self.ids.cx_total);
                    stats.inc(self.ids.hosts[i].cx_total);
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
                    stats.inc(self.ids.hosts[i].cx_connect_fail);
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
