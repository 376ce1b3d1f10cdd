//! Upstream side of the Dubbo filter: per shard, per cluster, per endpoint, a few long-lived
//! connections that carry requests from many downstream connections at once.
//!
//! Each request, one-way ones included, gets a fresh upstream request id (patched into the
//! frame in place), so ids on a connection never collide; a two-way request's id names its slot
//! in the connection's [`InFlight`] table, which sends the response back to its caller with the
//! original id. Every pending request ends exactly
//! once: with the provider's response, with a timeout reply (status 31; deadlines run from the
//! moment a request is queued, while its connection is still connecting too), or with an
//! upstream-failure reply (status 80) when the connection fails. No caller waits on a dead
//! connection. A one-way request counts as pending (against `pending_requests_max` and its
//! caller's limit) until the writer takes it off the queue; one that cannot be sent is counted
//! as a failure (it has nobody to answer).
//!
//! Tasks per upstream connection: a writer (batches queued frames into few writes), a reader
//! (matches responses, answers the provider's heartbeats, notes readonly events) and a keeper
//! (request deadlines and idle heartbeats). All three share one `Rc<UpConn>`; nothing crosses
//! shards.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use shard::monoio::io::{AsyncReadRent, AsyncWriteRent};
use shard::Notify;

use super::downstream::{DownConn, Logged};
use super::error::{LocalError, UpstreamGone};
use super::wire;
use crate::access_log::Flags;
use crate::cluster::{
    Availability, HostStatIds, HostTable, Label, ShardCluster, UpstreamStatIds,
    ENDPOINT_FAILURE_BACKOFF_MS,
};
use crate::config;
use crate::filter::ratelimit::Slot as ConcurrencySlot;
use crate::filter::{Budget, Charge, Counted};
use crate::io::READ_CHUNK_BYTES;
use crate::stats::ShardStats;

/// Missed heartbeat intervals before an upstream connection is closed as dead.
pub const HEARTBEAT_MISSES_MAX: u32 = 3;
/// A two-way request whose route has a `retry_policy` is kept (charged to the shard's budget)
/// until it is answered, so it can be sent again, if its frame is at most this large.
pub const RETRY_FRAME_BYTES_MAX: usize = 32 * 1024;
/// A request larger than this is not copied to a shadow cluster (`request_mirror_policies`):
/// the copy is made per mirrored request, so its size is bounded (counted as dropped).
pub const MIRROR_FRAME_BYTES_MAX: usize = 64 * 1024;

/// A request waiting for its response.
pub(crate) struct Pending {
    down: Rc<DownConn>,
    id_down: u64,
    deadline: Instant,
    started: Instant,
    counted: Counted,
    /// The call's access-log record (when the listener logs).
    log: Option<Box<Logged>>,
    /// The request frame's length (Istio's `istio_request_bytes`).
    bytes_in: u32,
    /// Its route's `retry_policy`, when it has one and the frame is small enough to keep.
    again: Option<Again>,
    /// Its traffic label (`traffic_label`): retries and moves stay within its endpoints.
    label: Option<Label>,
    /// Its place under its route's `max_concurrent_requests` (given back when this is dropped).
    _slot: Option<ConcurrencySlot>,
}

/// What a request that may be retried keeps: its frame as last sent, its retries so far, the
/// request's own deadline (each try's `deadline` is within it), and whether it holds a slot of
/// the cluster's `max_retries`.
struct Again {
    frame: Bytes,
    budget: Rc<Budget>,
    retry: crate::route::Retry,
    deadline: Instant,
    slot: bool,
}

impl Again {
    /// Keeps `frame` (as sent) in place of the one kept so far.
    fn keep(&mut self, frame: &Bytes) {
        self.budget.recharge(self.frame.len(), frame.len());
        self.frame = frame.clone();
    }
}

impl Drop for Again {
    fn drop(&mut self) {
        self.budget.release(self.frame.len());
    }
}

/// Why a request might be sent again.
#[derive(Clone, Copy, Debug)]
enum Cause {
    ConnectFailure,
    /// The connection was lost with the request in flight, or its try's deadline passed.
    Reset,
    /// The provider answered with this status.
    Status(u8),
}

impl Cause {
    fn of(reply: &Reply<'_>) -> Option<Cause> {
        match reply {
            Reply::Response(f) => Some(Cause::Status(wire::response_status(f).0)),
            Reply::Local(LocalError::UpstreamFailed { why, .. }) => Some(match why {
                UpstreamGone::ConnectFailed(_) | UpstreamGone::ConnectTimeout => {
                    Cause::ConnectFailure
                }
                _ => Cause::Reset,
            }),
            Reply::Local(LocalError::Timeout { .. }) => Some(Cause::Reset),
            Reply::Local(_) => None,
        }
    }

    fn wanted_by(self, p: &crate::route::RetryPolicy) -> bool {
        use crate::config::RetryOn as On;
        match self {
            Cause::ConnectFailure => p.on(On::ConnectFailure),
            Cause::Reset => p.on(On::Reset),
            Cause::Status(s) => p.retriable_status(u32::from(s)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum UpState {
    Connecting,
    Open,
    Closed,
}

pub struct UpConn {
    host: Rc<Host>,
    pool: Rc<ClusterPool>,
    state: Cell<UpState>,
    out: RefCell<VecDeque<Bytes>>,
    /// Bytes in `out` and of a large frame being written, charged to the shard's budget.
    out_bytes: Cell<usize>,
    out_ready: Notify,
    /// The callers of the one-way requests in `out`, in queue order (`None`: a shadow copy,
    /// `request_mirror_policies`, which has no caller).
    oneway: RefCell<VecDeque<(Option<Rc<DownConn>>, Option<Label>)>>,
    pending: RefCell<InFlight>,
    /// Shadow copies (`request_mirror_policies`) in flight, by upstream request id: their
    /// deadline. Their answers are dropped; nobody waits for them.
    mirrors: RefCell<FxHashMap<u64, Instant>>,
    deadlines: RefCell<Deadlines>,
    keeper_wake: Notify,
    /// When the keeper's timer fires next (`None`: it waits without a timer, or has not run
    /// yet). A new deadline wakes it only when it is earlier than that.
    keeper_until: Cell<Option<Instant>>,
    next_id: Cell<u64>,
    /// With `circuit_breakers`: requests queued while it was connecting (counted in the pool's
    /// `connecting_requests` until it opens or fails).
    connecting_requests: Cell<u32>,
    /// When the last request was queued (the idle timer runs from it).
    last_request: Cell<Instant>,
    last_read: Cell<Instant>,
    last_ping: Cell<Instant>,
    /// Over TLS: the SPIFFE ids of the provider's certificate and of ours, set once the
    /// handshake is done (Istio's outbound `destination_principal`, `source_principal`).
    tls: RefCell<Option<crate::stats::istio::UpstreamTls>>,
    /// `tls` as the Istio metrics of one outbound listener label it (that listener's id, the
    /// peer): looked up once per connection and listener.
    istio_peer: Cell<(u64, crate::stats::istio::PeerId)>,
    /// What the provider's sidecar sent in Istio's in-band metadata exchange (its payload),
    /// when the connection negotiated it.
    mx: RefCell<Option<Box<[u8]>>>,
    /// `mx` as the Istio metrics of one outbound listener label it (its id, the peer).
    istio_meta: Cell<(u64, crate::stats::istio::MetaId)>,
}

/// One endpoint of a cluster, on one shard.
pub struct Host {
    pub addr: SocketAddr,
    pub index: usize,
    conns: RefCell<Vec<Rc<UpConn>>>,
    next_conn: Cell<usize>,
    /// Requests queued or in flight to this endpoint.
    pending: Cell<u32>,
    down_until: Cell<Option<Instant>>,
    /// The provider said it is going away (Dubbo readonly event): no new requests.
    readonly: Cell<bool>,
    /// Removed from the cluster (endpoint update, or the cluster itself went away): never
    /// picked again; its connections close once their requests in flight are answered.
    retired: Cell<bool>,
    ids: HostStatIds,
    /// Consecutive errors and ejections (`outlier_detection`).
    outlier: crate::cluster::Outlier,
}

/// A cluster's upstream pools on one shard.
pub struct ClusterPool {
    pub lb: Rc<ShardCluster>,
    /// By endpoint slot, each built on first use.
    hosts: HostTable<Host>,
    /// `original_destination` clusters: a host per original destination called (at most
    /// [`crate::cluster::ORIGINAL_DST_HOSTS_MAX`]), found by address.
    destinations: RefCell<Vec<Rc<Host>>>,
    pub timeout: Duration,
    connections_per_host: usize,
    pending_max: u32,
    heartbeat: Duration,
    connect_timeout: Duration,
    response_bytes_max: usize,
    idle_timeout: Duration,
    pub stats: ShardStats,
    pub ids: UpstreamStatIds,
    /// The shard's buffer budget (requests queued, large responses being read).
    budget: Rc<Budget>,
    /// This shard's part of `circuit_breakers.max_requests`, when the cluster has one.
    breaker: Option<crate::cluster::RequestBreaker>,
    /// Consecutive-error ejection, when the cluster has `outlier_detection`.
    outlier: Option<crate::cluster::OutlierConfig>,
    /// This shard's part of `circuit_breakers.max_retries`.
    retries: crate::cluster::RetryBreaker,
    /// This shard's part of `circuit_breakers` `max_connections` and `max_pending_requests`.
    conn_breaker: Option<crate::cluster::ConnBreaker>,
    /// With `conn_breaker`: requests queued on connections still connecting.
    connecting_requests: Cell<u32>,
    /// Shadow copies in flight to this cluster on this shard.
    mirrors: crate::cluster::MirrorBudget,
}

/// Why a request could not be sent upstream; each becomes a local reply.
pub enum ForwardError {
    NoHealthyEndpoint,
    /// The cluster's `circuit_breakers.max_requests` (this shard's part) are in flight.
    CircuitOpen {
        limit: u32,
    },
    /// `circuit_breakers.max_pending_requests` (this shard's part) wait for a connection.
    PendingOverflow {
        limit: u32,
    },
    Overflow {
        addr: SocketAddr,
        limit: u32,
    },
}

// === impl ClusterPool ===

impl ClusterPool {
    pub fn new(
        c: &config::Cluster,
        lb: Rc<ShardCluster>,
        stats: ShardStats,
        ids: UpstreamStatIds,
        budget: Rc<Budget>,
    ) -> Rc<ClusterPool> {
        let pool = Rc::new(ClusterPool {
            lb,
            hosts: HostTable::new(),
            destinations: RefCell::new(Vec::new()),
            timeout: Duration::from_millis(c.timeout_ms),
            connections_per_host: c.connections_per_host as usize,
            pending_max: c.pending_requests_max,
            heartbeat: Duration::from_millis(c.heartbeat_interval_ms),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            response_bytes_max: c.response_bytes_max,
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            breaker: crate::cluster::RequestBreaker::for_shard(c, stats.stats.shard_count()),
            outlier: crate::cluster::OutlierConfig::for_cluster(c),
            retries: crate::cluster::RetryBreaker::for_shard(c, stats.stats.shard_count()),
            conn_breaker: crate::cluster::ConnBreaker::for_shard(c, stats.stats.shard_count()),
            connecting_requests: Cell::new(0),
            mirrors: Default::default(),
            stats,
            ids,
            budget,
        });
        crate::cluster::watch_intervals(&pool, pool.outlier.as_ref(), ClusterPool::interval);
        pool
    }

    /// What a `retry_budget` is a share of: this shard's requests to the cluster in flight
    /// and waiting for a connection (Envoy's active and pending requests); 0 without a budget.
    fn retry_load(&self) -> u32 {
        if !self.retries.has_budget() {
            return 0;
        }
        let active = self.breaker.as_ref().map_or(0, |b| b.active());
        active + self.connecting_requests.get()
    }

    /// Outlier detection's interval (failure percentage, success rate).
    fn interval(&self) {
        crate::cluster::interval(
            self.outlier.as_ref(),
            &self.lb,
            &self.hosts,
            &self.stats,
            &self.ids,
        );
    }

    /// The host of endpoint slot `i`, built on first use.
    fn host(&self, i: usize) -> Rc<Host> {
        self.hosts.get_or_build(i, || {
            let slot = self.lb.slot(i);
            Host::new(slot.addr, i, slot.ids)
        })
    }

    /// Picks a healthy endpoint with the cluster's balancer, among those traffic label
    /// `label` selects: skips endpoints in failure back-off or readonly; when every endpoint
    /// is in back-off, tries the balancer's pick.
    fn pick_host(&self, now: Instant, label: Option<Label>) -> Option<Rc<Host>> {
        self.pick_host_but(now, None, label)
    }

    /// [`Self::pick_host`] for a retry: skips the endpoints `retry` tried (`previous_hosts`)
    /// while another is available.
    fn pick_host_but(
        &self,
        now: Instant,
        retry: Option<&crate::route::Retry>,
        label: Option<Label>,
    ) -> Option<Rc<Host>> {
        if let Some(r) = retry {
            // `previous_priorities`: the levels the retry leaves out.
            let levels = r.priority_avoided();
            let i = self
                .lb
                .pick_avoiding(label, levels, None, r.host_draws(), |i| match r.avoids(i) {
                    true => Availability::Excluded,
                    false => self.availability(i, now),
                })
                .or_else(|| {
                    self.lb
                        .pick_avoiding(label, levels, None, 0, |i| self.availability(i, now))
                })?;
            return Some(self.host(i));
        }
        let i = self
            .lb
            .pick_labelled(label, |i| self.availability(i, now))?;
        Some(self.host(i))
    }

    fn availability(&self, i: usize, now: Instant) -> Availability {
        {
            self.hosts.peek(i, |h| match h {
                Some(h) if h.readonly.get() => Availability::Excluded,
                Some(h) if h.down_until.get().is_some_and(|t| t > now) => Availability::BackingOff,
                // Ejected: like back-off, used only when no endpoint is ready.
                Some(h) if self.outlier.is_some() && h.outlier.is_ejected(now) => {
                    Availability::BackingOff
                }
                _ => Availability::Ready,
            })
        }
    }

    /// Endpoint slots that left the cluster: their connections close once idle.
    pub fn retire(&self, slots: &[u32]) {
        self.hosts.retire(slots);
    }

    /// The whole pool left service (its cluster was removed or replaced).
    pub fn retire_all(&self) {
        self.hosts.retire_all();
        for h in self.destinations.borrow().iter() {
            crate::cluster::Retire::retire(&**h);
        }
    }

    /// `original_destination` clusters: the host of `dst` (the caller connection's original
    /// destination), built on first use. `None` when [`crate::cluster::ORIGINAL_DST_HOSTS_MAX`] destinations
    /// all have connections.
    fn host_to(&self, dst: SocketAddr) -> Option<Rc<Host>> {
        let mut ds = self.destinations.borrow_mut();
        if let Some(h) = ds.iter().find(|h| h.addr == dst) {
            return Some(h.clone());
        }
        if ds.len() >= crate::cluster::ORIGINAL_DST_HOSTS_MAX {
            let idle = ds.iter().position(|h| h.conns.borrow().is_empty())?;
            ds.swap_remove(idle);
        }
        // No endpoint slot: counted on the cluster, not per host (as tcp's connect_to).
        let h = Rc::new(Host::new(dst, usize::MAX, HostStatIds::sink()));
        ds.push(h.clone());
        Some(h)
    }

    /// The host a request of `down` goes to: its original destination for an
    /// `original_destination` cluster (none: the connection was not intercepted), else the
    /// balancer's pick.
    fn host_for(&self, down: &DownConn, now: Instant, label: Option<Label>) -> Option<Rc<Host>> {
        if self.lb.original_destination {
            down.original_dst.and_then(|d| self.host_to(d))
        } else {
            self.pick_host(now, label)
        }
    }

    /// Sends one request frame upstream. `frame` is a whole Dubbo frame whose request id is
    /// rewritten here; two-way requests are tracked until they end.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        self: &Rc<Self>,
        frame: BytesMut,
        id_down: u64,
        two_way: bool,
        timeout: Duration,
        retry: Option<crate::route::RetryPolicy>,
        label: Option<Label>,
        down: &Rc<DownConn>,
        counted: Counted,
        log: Option<Box<Logged>>,
        slot: Option<ConcurrencySlot>,
    ) -> Result<(), (ForwardError, Option<Box<Logged>>)> {
        let now = Instant::now();
        let Some(host) = self.host_for(down, now, label) else {
            return Err((ForwardError::NoHealthyEndpoint, log));
        };
        if let Some(b) = self.breaker.as_ref().filter(|b| b.is_open()) {
            self.stats.inc(self.ids.rq_active_overflow);
            return Err((ForwardError::CircuitOpen { limit: b.max }, log));
        }
        if host.pending.get() >= self.pending_max {
            self.stats.inc(self.ids.rq_overflow);
            let e = ForwardError::Overflow {
                addr: host.addr,
                limit: self.pending_max,
            };
            return Err((e, log));
        }
        let conn = host.connection(self);
        if let Some(b) = &self.conn_breaker {
            if conn.state.get() == UpState::Connecting
                && self.connecting_requests.get() >= b.max_pending
            {
                self.stats.inc(self.ids.rq_pending_overflow);
                let e = ForwardError::PendingOverflow {
                    limit: b.max_pending,
                };
                return Err((e, log));
            }
        }
        let rq = if two_way {
            let again = retry
                .filter(|_| frame.len() <= RETRY_FRAME_BYTES_MAX)
                .map(|p| Again {
                    frame: Bytes::new(),
                    budget: self.budget.clone(),
                    retry: crate::route::Retry::new(p),
                    deadline: now + timeout,
                    slot: false,
                });
            let first = match again.as_ref().and_then(|a| a.retry.policy.per_try_timeout) {
                Some(t) => t.min(timeout),
                None => timeout,
            };
            Request::TwoWay(Pending {
                down: down.clone(),
                id_down,
                deadline: now + first,
                started: now,
                counted,
                log,
                again,
                bytes_in: u32::try_from(frame.len()).unwrap_or(u32::MAX),
                label,
                _slot: slot,
            })
        } else {
            Request::OneWay(down.clone(), label)
        };
        self.send_on(&host, &conn, frame, rq, now);
        Ok(())
    }

    /// Sends a copy of a request `frame` to this cluster as a shadow: its answer (two-way) is
    /// dropped; a one-way copy is done once written, and it is dropped itself (counted in `upstream_rq_mirror_dropped`) rather than
    /// wait or grow anything: too large, the shard's buffer budget full,
    /// `MIRRORS_ACTIVE_PER_SHARD_MAX` in flight, no endpoint available, its circuit breakers
    /// (`max_requests`, the endpoint's `pending_requests_max`, `max_pending_requests`) full.
    /// Its deadline is `timeout`; it counts against this cluster's limits as any request.
    pub fn mirror(self: &Rc<Self>, frame: &[u8], timeout: Duration, label: Option<Label>) {
        let now = Instant::now();
        let dropped = || self.stats.inc(self.ids.rq_mirror_dropped);
        // A shadow has no caller connection, so no original destination.
        if frame.len() > MIRROR_FRAME_BYTES_MAX
            || !self.budget.admits()
            || self.lb.original_destination
        {
            return dropped();
        }
        let Some(host) = self.pick_host(now, label) else {
            return dropped();
        };
        if self.breaker.as_ref().is_some_and(|b| b.is_open())
            || host.pending.get() >= self.pending_max
        {
            return dropped();
        }
        let conn = host.connection(self);
        if let Some(b) = &self.conn_breaker {
            if conn.state.get() == UpState::Connecting
                && self.connecting_requests.get() >= b.max_pending
            {
                return dropped();
            }
        }
        if !self.mirrors.try_start() {
            return dropped();
        }
        self.stats.inc(self.ids.rq_mirror);
        let mut frame = BytesMut::from(frame);
        let id_up = conn.other_id();
        self.queue_on(&host, &conn, &mut frame, id_up, now);
        if wire::is_oneway_request(&frame) {
            // No answer: in flight until written, as a one-way request of a caller.
            conn.oneway.borrow_mut().push_back((None, label));
        } else {
            conn.mirrors.borrow_mut().insert(id_up, now + timeout);
            conn.deadline(now + timeout, id_up);
        }
        self.take_room(&host);
        conn.enqueue(frame.freeze());
    }

    /// Counts a request queued to `conn` under upstream request id `id_up` (written into
    /// `frame`).
    fn queue_on(&self, host: &Host, conn: &UpConn, frame: &mut BytesMut, id_up: u64, now: Instant) {
        if self.conn_breaker.is_some() && conn.state.get() == UpState::Connecting {
            conn.connecting_requests
                .set(conn.connecting_requests.get() + 1);
            self.connecting_requests
                .set(self.connecting_requests.get() + 1);
        }
        conn.last_request.set(now);
        self.stats.inc(self.ids.rq_total);
        self.stats.inc(host.ids.rq_total);
        wire::set_request_id(frame, id_up);
    }

    /// A request to `host` is in flight: the endpoint's, balancer's and breaker's counts.
    fn take_room(&self, host: &Host) {
        host.pending.set(host.pending.get() + 1);
        if let Some(b) = &self.breaker {
            b.started();
        }
        self.lb.add_active(host.index, 1);
        self.stats.inc(self.ids.rq_active);
    }

    /// Queues `frame` on a connection of `host` under a fresh request id; a two-way request
    /// is tracked until its response, deadline or failure, a one-way one until it is written.
    fn send(self: &Rc<Self>, host: &Rc<Host>, frame: BytesMut, rq: Request, now: Instant) {
        self.send_on(host, &host.connection(self), frame, rq, now);
    }

    /// [`Self::send`] on `conn`, a connection of `host`.
    fn send_on(
        self: &Rc<Self>,
        host: &Rc<Host>,
        conn: &Rc<UpConn>,
        mut frame: BytesMut,
        rq: Request,
        now: Instant,
    ) {
        let frame = match rq {
            Request::TwoWay(mut p) => {
                let id_up = conn.pending.borrow().next_id();
                self.queue_on(host, conn, &mut frame, id_up, now);
                let frame = frame.freeze();
                if let Some(a) = p.again.as_mut() {
                    a.keep(&frame);
                    a.retry.tried(host.index);
                }
                p.down.inflight.set(p.down.inflight.get() + 1);
                let deadline = p.deadline;
                let id = conn.pending.borrow_mut().insert(p);
                debug_assert_eq!(id, id_up);
                conn.deadline(deadline, id_up);
                frame
            }
            Request::OneWay(down, label) => {
                let id_up = conn.other_id();
                self.queue_on(host, conn, &mut frame, id_up, now);
                down.inflight.set(down.inflight.get() + 1);
                conn.oneway.borrow_mut().push_back((Some(down), label));
                frame.freeze()
            }
        };
        self.take_room(host);
        conn.enqueue(frame);
    }

    /// One request's outcome at `host`, for outlier detection (when the cluster has it).
    fn outcome(&self, host: &Host, failed: bool) {
        crate::cluster::outcome(
            self.outlier.as_ref(),
            &self.lb,
            &self.hosts,
            &self.stats,
            &self.ids,
            host,
            failed,
        );
    }

    /// A request that reached no provider and has nobody to answer (one-way): counted.
    fn drop_oneway(&self, host: &Host, why: &UpstreamGone) {
        self.stats.inc(self.ids.rq_failure);
        self.stats.inc(host.ids.rq_failure);
        tracing::debug!(upstream = %host.addr, %why, "one-way request dropped");
    }
}

/// A request on its way upstream.
enum Request {
    TwoWay(Pending),
    /// Its caller, counted until the frame is written, and its traffic label.
    OneWay(Rc<DownConn>, Option<Label>),
}

// === impl Host ===

impl crate::cluster::OutlierHost for Host {
    fn outlier(&self) -> &crate::cluster::Outlier {
        &self.outlier
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn ids(&self) -> &HostStatIds {
        &self.ids
    }
}

impl crate::cluster::Retire for Host {
    fn retire(&self) {
        self.retired.set(true);
        for c in self.conns.borrow().iter() {
            c.keeper_wake.notify();
        }
    }
}

impl Host {
    fn new(addr: SocketAddr, index: usize, ids: HostStatIds) -> Host {
        Host {
            addr,
            index,
            conns: RefCell::new(Vec::new()),
            next_conn: Cell::new(0),
            pending: Cell::new(0),
            down_until: Cell::new(None),
            readonly: Cell::new(false),
            retired: Cell::new(false),
            ids,
            outlier: Default::default(),
        }
    }

    /// An open or connecting connection to this endpoint, opening one when the pool has room.
    fn connection(self: &Rc<Self>, pool: &Rc<ClusterPool>) -> Rc<UpConn> {
        let mut conns = self.conns.borrow_mut();
        // With `max_connections`: an endpoint's first connection is always opened, others
        // only under the limit (else the request shares a connection there is).
        let may_open = || {
            pool.conn_breaker
                .as_ref()
                .is_none_or(|b| b.may_connect(conns.is_empty(), &pool.stats, &pool.ids))
        };
        if conns.len() < pool.connections_per_host && may_open() {
            let c = Rc::new(UpConn {
                host: self.clone(),
                pool: pool.clone(),
                state: Cell::new(UpState::Connecting),
                out: RefCell::new(VecDeque::new()),
                out_bytes: Cell::new(0),
                out_ready: Notify::new(),
                oneway: RefCell::new(VecDeque::new()),
                pending: RefCell::new(InFlight::default()),
                mirrors: RefCell::new(FxHashMap::default()),
                deadlines: RefCell::new(Deadlines::default()),
                keeper_wake: Notify::new(),
                keeper_until: Cell::new(None),
                next_id: Cell::new(OTHER_IDS),
                connecting_requests: Cell::new(0),
                last_request: Cell::new(Instant::now()),
                last_read: Cell::new(Instant::now()),
                last_ping: Cell::new(Instant::now()),
                tls: RefCell::new(None),
                istio_peer: Cell::new((0, crate::stats::istio::PeerId::NONE)),
                mx: RefCell::new(None),
                istio_meta: Cell::new((0, crate::stats::istio::MetaId::NONE)),
            });
            conns.push(c.clone());
            if let Some(b) = &pool.conn_breaker {
                b.opened();
            }
            shard::monoio::spawn(run(c.clone()));
            return c;
        }
        let i = self.next_conn.get() % conns.len();
        self.next_conn.set(i.wrapping_add(1));
        conns[i].clone()
    }

    fn remove(&self, conn: &Rc<UpConn>) {
        let mut conns = self.conns.borrow_mut();
        let n = conns.len();
        conns.retain(|c| !Rc::ptr_eq(c, conn));
        if conns.len() < n {
            if let Some(b) = &conn.pool.conn_breaker {
                b.closed();
            }
        }
    }
}

// === impl UpConn ===

impl UpConn {
    /// Counts one request (two-way and answered, or one-way and written or dropped) out of
    /// this connection's endpoint and its caller.
    fn release(&self, down: &DownConn) {
        self.release_host();
        down.inflight.set(down.inflight.get().saturating_sub(1));
        down.room_maybe();
    }

    /// Counts one request out of this connection's endpoint (its caller's part aside).
    fn release_host(&self) {
        let host = &self.host;
        let pool = &self.pool;
        host.pending.set(host.pending.get().saturating_sub(1));
        if host.retired.get() {
            self.keeper_wake.notify();
        }
        pool.lb.add_active(host.index, -1);
        if let Some(b) = &pool.breaker {
            b.ended();
        }
        pool.stats.dec(pool.ids.rq_active);
    }

    /// A shadow copy ended: answered (`failed` as for any answer, for outlier detection), timed
    /// out or lost with the connection (`None`). Nothing goes anywhere.
    fn end_mirror(&self, failed: Option<bool>) {
        self.release_host();
        self.pool.mirrors.ended();
        if let Some(failed) = failed {
            if self.pool.outlier.is_some() {
                self.pool.outcome(&self.host, failed);
            }
        }
    }

    /// The connection is no longer connecting (open, or closed): its queued requests no
    /// longer wait for it.
    fn connected(&self) {
        let n = self.connecting_requests.replace(0);
        let p = &self.pool.connecting_requests;
        p.set(p.get().saturating_sub(n));
    }

    /// Queues a frame for the writer.
    fn enqueue(&self, frame: Bytes) {
        let n = frame.len();
        self.out_bytes.set(self.out_bytes.get() + n);
        self.pool.budget.charge(n);
        self.out.borrow_mut().push_back(frame);
        self.out_ready.notify();
    }

    /// What is left queued was dropped: its bytes go back to the budget.
    fn release_out(&self) {
        self.pool.budget.release(self.out_bytes.replace(0));
    }

    /// The writer is done with one frame (copied into its batch, or written): a one-way
    /// request is done.
    fn written(&self, frame: &Bytes) {
        let n = frame.len();
        debug_assert!(self.out_bytes.get() >= n);
        self.out_bytes.set(self.out_bytes.get().saturating_sub(n));
        self.pool.budget.release(n);
        if wire::is_oneway_request(frame) {
            let down = self.oneway.borrow_mut().pop_front();
            debug_assert!(down.is_some(), "a one-way frame without its caller");
            match down {
                Some((Some(down), _)) => self.release(&down),
                // A one-way shadow copy is done once written.
                Some((None, _)) => self.end_mirror(None),
                None => {}
            }
        }
    }

    /// Ends one pending request: counters down, and its caller answered with `reply`, unless
    /// its route retries it.
    fn finish(&self, mut p: Pending, reply: Reply<'_>) {
        if self.pool.outlier.is_some() {
            let failed = match &reply {
                // Statuses that say the provider is in trouble (not the request).
                Reply::Response(f) => matches!(
                    wire::response_status(f),
                    wire::Status::SERVER_TIMEOUT
                        | wire::Status::SERVER_ERROR
                        | wire::Status::SERVER_THREADPOOL_EXHAUSTED
                ),
                Reply::Local(e) => matches!(
                    e,
                    LocalError::Timeout { .. } | LocalError::UpstreamFailed { .. }
                ),
            };
            self.pool.outcome(&self.host, failed);
        }
        if let Some(a) = p.again.as_mut() {
            // An OK answer is never retried (config refuses 20 as a retriable status): the
            // common case skips the policy's checks.
            let ok = matches!(&reply, Reply::Response(f) if wire::response_status(f) == wire::Status::OK);
            if !ok && Cause::of(&reply).is_some_and(|c| c.wanted_by(&a.retry.policy)) {
                p = match self.retry(p, &reply) {
                    Ok(()) => return,
                    Err(p) => p,
                };
            } else {
                // An answer the policy does not retry (the common case): what `retry` and
                // `answered` do for it, without moving `p` through them or reading the clock
                // (~140 instructions per request in bench/callgrind-dubbo's governed config).
                if std::mem::take(&mut a.slot) {
                    self.pool.retries.ended();
                }
                if a.retry.done > 0 {
                    self.pool.stats.inc(self.pool.ids.rq_retry_success);
                }
            }
        }
        self.release(&p.down);
        let cluster = Some(&*self.pool.lb.name);
        match reply {
            Reply::Response(mut frame) => {
                wire::set_request_id(&mut frame, p.id_down);
                let (status, len) = (frame[3], frame.len());
                // Answered when its read completed: one clock reading per read of the
                // provider connection (`last_read`), shared by the answers it carried, not one
                // per answer (the access log's duration ends there too).
                let answered = self.last_read.get();
                p.down
                    .response(frame.freeze(), p.started, answered, p.counted);
                let lb = Some(&*self.pool.lb);
                p.down.count_istio(
                    lb,
                    status,
                    Flags::NONE,
                    p.started,
                    (p.bytes_in, len),
                    Some(self),
                );
                if let Some(lg) = p.log {
                    let addr = Some(self.host.addr);
                    p.down
                        .log_call_at(lg, status, Flags::NONE, addr, cluster, len, answered);
                }
            }
            Reply::Local(e) => {
                let len = p.down.local_reply(p.id_down, &e, Some(p.counted));
                let lb = Some(&*self.pool.lb);
                let (status, flags) = (e.status().0, e.flags());
                let bytes = (p.bytes_in, len);
                p.down
                    .count_istio(lb, status, flags, p.started, bytes, Some(self));
                if let Some(lg) = p.log {
                    let status = e.status().0;
                    let addr = e.upstream().or(Some(self.host.addr));
                    p.down.log_call(lg, status, e.flags(), addr, cluster, len);
                }
            }
        }
    }

    /// Sends `p` again if its route's `retry_policy` retries `reply` (the cause is in
    /// `retry_on`, retries and time are left, the cluster's `max_retries` has room), to an
    /// endpoint it did not try yet while one is available. `Err(p)`: answered as it is.
    fn retry(&self, mut p: Pending, reply: &Reply<'_>) -> Result<(), Pending> {
        let (pool, now) = (&self.pool, Instant::now());
        let Some(a) = p.again.as_mut() else {
            return Err(p);
        };
        let wanted = Cause::of(reply).is_some_and(|c| c.wanted_by(&a.retry.policy));
        // The request's own deadline passed (not just this try's): no time for another.
        if !wanted || now >= a.deadline {
            let success = a.retry.done > 0 && !wanted;
            return Err(self.answered(p, success));
        }
        if !a.retry.left() {
            pool.stats.inc(pool.ids.rq_retry_limit_exceeded);
            return Err(self.answered(p, false));
        }
        if !pool.retries.admit(a.slot, pool.retry_load()) {
            pool.stats.inc(pool.ids.rq_retry_overflow);
            return Err(self.answered(p, false));
        }
        a.slot = true;
        // An original destination is the one place the request can go.
        let host = match pool.lb.original_destination {
            true => Some(self.host.clone()),
            false => pool.pick_host_but(now, Some(&a.retry), p.label),
        };
        let host = host.filter(|h| h.pending.get() < pool.pending_max);
        let Some(host) = host else {
            return Err(self.answered(p, false));
        };
        a.retry.done += 1;
        let frame = BytesMut::from(&a.frame[..]);
        p.deadline = match a.retry.policy.per_try_timeout {
            Some(t) => (now + t).min(a.deadline),
            None => a.deadline,
        };
        self.release(&p.down);
        pool.stats.inc(pool.ids.rq_retry);
        tracing::debug!(from = %self.host.addr, to = %host.addr, "request sent again (retry_policy)");
        pool.send(&host, frame, Request::TwoWay(p), now);
        Ok(())
    }

    /// A request that may have been retried is answered: its `max_retries` slot is freed, and
    /// `success` (a retried request whose last answer was not retriable) counted.
    fn answered(&self, mut p: Pending, success: bool) -> Pending {
        let pool = &self.pool;
        if let Some(a) = p.again.as_mut() {
            if std::mem::take(&mut a.slot) {
                pool.retries.ended();
            }
        }
        if success {
            pool.stats.inc(pool.ids.rq_retry_success);
        }
        p
    }

    /// The connect failed (the endpoint is in back-off now). Its queued requests never
    /// reached the provider, so each one goes to the endpoint the balancer picks now instead
    /// (the next one, or the next priority level), unless that one is in back-off too or full;
    /// a request whose deadline passed meanwhile is answered with 31 (its deadline normally
    /// fired already), the rest fail as on any closed connection: every request is answered
    /// (or, one-way, counted) exactly once.
    fn connect_failed(self: &Rc<Self>, why: &UpstreamGone) {
        let (now, pool) = (Instant::now(), &self.pool);
        let frames: Vec<Bytes> = self.out.borrow_mut().drain(..).collect();
        self.release_out();
        let mut moved = Vec::new();
        for frame in frames {
            let rq = if wire::is_oneway_request(&frame) {
                let down = self.oneway.borrow_mut().pop_front();
                debug_assert!(down.is_some(), "a one-way frame without its caller");
                match down {
                    Some((Some(d), label)) => Some(Request::OneWay(d, label)),
                    Some((None, _)) => {
                        // A one-way shadow copy is not moved: lost with the connect.
                        self.end_mirror(None);
                        None
                    }
                    None => None,
                }
            } else {
                // None: our heartbeat, or a request already answered (its deadline passed).
                let p = self.pending.borrow_mut().remove(wire::request_id(&frame));
                p.map(Request::TwoWay)
            };
            let Some(rq) = rq else { continue };
            let rq = match rq {
                Request::TwoWay(p) if p.deadline <= now => {
                    self.time_out(p, now);
                    continue;
                }
                rq => rq,
            };
            let label = match &rq {
                Request::TwoWay(p) => p.label,
                Request::OneWay(_, label) => *label,
            };
            let host = pool.pick_host(now, label).filter(|h| {
                h.down_until.get().is_none_or(|t| t <= now) && h.pending.get() < pool.pending_max
            });
            match (host, rq) {
                (Some(host), rq) => {
                    match &rq {
                        Request::TwoWay(p) => self.release(&p.down),
                        Request::OneWay(down, _) => self.release(down),
                    }
                    moved.push((host, frame, rq));
                }
                (None, Request::TwoWay(p)) => {
                    self.pending
                        .borrow_mut()
                        .restore(wire::request_id(&frame), p);
                }
                (None, Request::OneWay(down, _)) => {
                    self.release(&down);
                    pool.drop_oneway(&self.host, why);
                }
            }
        }
        // Fails what stayed pending (no endpoint to move it to) with 80.
        self.close(why);
        for (host, frame, rq) in moved {
            tracing::debug!(from = %self.host.addr, to = %host.addr, "connect failed; request sent to another endpoint");
            pool.send(&host, BytesMut::from(&frame[..]), rq, now);
        }
    }

    /// Answers a request whose deadline passed with status 31 (or, its try's deadline only,
    /// retries it if its route says so).
    fn time_out(&self, p: Pending, now: Instant) {
        let pool = &self.pool;
        if p.again.as_ref().is_some_and(|a| p.deadline < a.deadline) {
            pool.stats.inc(pool.ids.rq_per_try_timeout);
        } else {
            pool.stats.inc(pool.ids.rq_timeout);
        }
        pool.stats.inc(self.host.ids.rq_timeout);
        let e = LocalError::Timeout {
            addr: self.host.addr,
            waited_ms: now.duration_since(p.started).as_millis(),
        };
        self.finish(p, Reply::Local(e));
    }

    /// Fails every pending request (the connection is gone) and leaves the pool.
    fn close(self: &Rc<Self>, why: &UpstreamGone) {
        if self.state.replace(UpState::Closed) == UpState::Closed {
            return;
        }
        self.connected();
        self.host.remove(self);
        if self.host.conns.borrow().is_empty() {
            // A readonly provider is tried again once its connections are gone: it may have
            // restarted (a failed connect then puts it in back-off).
            self.host.readonly.set(false);
        }
        self.out.borrow_mut().clear();
        self.release_out();
        let oneway = std::mem::take(&mut *self.oneway.borrow_mut());
        for (down, _) in oneway {
            match down {
                Some(down) => {
                    self.release(&down);
                    self.pool.drop_oneway(&self.host, why);
                }
                None => {
                    self.end_mirror(None);
                }
            }
        }
        self.out_ready.notify();
        self.keeper_wake.notify();
        let pending: Vec<Pending> = self.pending.borrow_mut().drain();
        if !pending.is_empty() {
            tracing::debug!(upstream = %self.host.addr, n = pending.len(), %why, "failing requests in flight");
        }
        let pool = &self.pool;
        for p in pending {
            pool.stats.inc(pool.ids.rq_failure);
            pool.stats.inc(self.host.ids.rq_failure);
            let addr = self.host.addr;
            self.finish(p, Reply::Local(LocalError::UpstreamFailed { addr, why }));
        }
        let mirrors = std::mem::take(&mut *self.mirrors.borrow_mut());
        for _ in mirrors {
            self.end_mirror(None);
        }
        self.deadlines.borrow_mut().clear();
    }
}

impl UpConn {
    /// Tracks the deadline of request `id`, waking the keeper when it must fire sooner than
    /// its timer.
    fn deadline(&self, deadline: Instant, id: u64) {
        self.deadlines.borrow_mut().push(deadline, id);
        if self.keeper_until.get().is_none_or(|t| deadline < t) {
            self.keeper_wake.notify();
        }
    }
}

impl UpConn {
    /// A fresh upstream request id for a frame no [`InFlight`] slot tracks: a one-way request,
    /// a mirrored copy, a heartbeat.
    fn other_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(OTHER_IDS | id.wrapping_add(1));
        id
    }
}

/// Upstream request ids of frames outside [`InFlight`] (one-way, mirrored, heartbeats) have
/// this bit set; the table's own ids never do (their generation is below 2^30), so the two
/// kinds never meet. Both stay positive as a Java `long`.
const OTHER_IDS: u64 = 1 << 62;
/// Generations of an [`InFlight`] slot run 1..=GENERATION_MASK, then wrap to 1.
const GENERATION_MASK: u32 = (1 << 30) - 1;

/// The two-way requests in flight on one upstream connection, by upstream request id. The ids
/// are ringside's own (each request's id is rewritten on its way up), so an id names its slot:
/// the low 32 bits are the slot's index, the bits above its generation, bumped on every reuse,
/// so an answer to a request that is gone (timed out, failed over) or a made-up id finds
/// nothing. A response finds its request by one index and one comparison, no hashing (the map
/// this replaces cost ~280 instructions per request at 16x16, callgrind), and the request is
/// written once, where it stays. Slots freed are reused last-in first-out; the table is as
/// long as the most requests ever in flight at once on the connection (bounded by the
/// endpoint's `pending_requests_max`).
struct InFlight<T = Pending> {
    slots: Vec<Slot<T>>,
    /// The empty slots: every slot not holding a request is here, exactly once.
    free: Vec<u32>,
}

struct Slot<T> {
    generation: u32,
    request: Option<T>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> InFlight<T> {
    /// The id the next [`Self::insert`] gives.
    fn next_id(&self) -> u64 {
        match self.free.last() {
            Some(&i) => Self::id(i, Self::bump(self.slots[i as usize].generation)),
            None => Self::id(self.slots.len() as u32, 1),
        }
    }

    fn insert(&mut self, p: T) -> u64 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    request: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[i as usize];
        slot.generation = Self::bump(slot.generation);
        slot.request = Some(p);
        Self::id(i, slot.generation)
    }

    fn get(&self, id: u64) -> Option<&T> {
        let (i, generation) = Self::split(id);
        let slot = self.slots.get(i)?;
        (slot.generation == generation).then_some(slot.request.as_ref())?
    }

    fn remove(&mut self, id: u64) -> Option<T> {
        let (i, generation) = Self::split(id);
        let slot = self.slots.get_mut(i)?;
        if slot.generation != generation {
            return None;
        }
        let p = slot.request.take()?;
        self.free.push(i as u32);
        Some(p)
    }

    /// Puts back a request [`Self::remove`] just took out under `id` (its slot not reused since).
    fn restore(&mut self, id: u64, p: T) {
        let (i, generation) = Self::split(id);
        let at = self.free.iter().rposition(|&f| f as usize == i);
        match (at, self.slots.get_mut(i)) {
            (Some(at), Some(slot)) if slot.generation == generation && slot.request.is_none() => {
                self.free.swap_remove(at);
                slot.request = Some(p);
            }
            _ => debug_assert!(false, "restore: slot {i} was reused"),
        }
    }

    fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Every request in flight, the table left empty.
    fn drain(&mut self) -> Vec<T> {
        let out: Vec<T> = self
            .slots
            .iter_mut()
            .filter_map(|s| s.request.take())
            .collect();
        self.free.clear();
        self.free.extend((0..self.slots.len() as u32).rev());
        out
    }

    fn id(i: u32, generation: u32) -> u64 {
        (u64::from(generation) << 32) | u64::from(i)
    }

    fn split(id: u64) -> (usize, u32) {
        ((id & 0xffff_ffff) as usize, (id >> 32) as u32)
    }

    fn bump(generation: u32) -> u32 {
        (generation & GENERATION_MASK) % GENERATION_MASK + 1
    }
}

/// A connection dropped with a frame still charged (its writer was cancelled mid-write).
impl UpConn {
    /// This connection's TLS as outbound listener `i`'s metrics label it, looked up in its
    /// table once per connection and listener.
    pub(crate) fn istio_peer(
        &self,
        i: &crate::stats::istio::IstioListener,
    ) -> crate::stats::istio::PeerId {
        let (id, peer) = self.istio_peer.get();
        if id == i.id() {
            return peer;
        }
        let peer = i.upstream(self.tls.borrow().as_ref());
        self.istio_peer.set((i.id(), peer));
        peer
    }

    /// The provider's workload from the in-band exchange as outbound listener `i`'s metrics
    /// label it, looked up once per connection and listener.
    pub(crate) fn istio_meta(
        &self,
        i: &crate::stats::istio::IstioListener,
    ) -> crate::stats::istio::MetaId {
        let (id, meta) = self.istio_meta.get();
        if id == i.id() {
            return meta;
        }
        let meta = i.peer_metadata_in_band(self.mx.borrow().as_deref());
        self.istio_meta.set((i.id(), meta));
        meta
    }
}

impl Drop for UpConn {
    fn drop(&mut self) {
        self.release_out();
    }
}

/// Request deadlines of one connection, earliest first. Requests on a connection usually share
/// one timeout, so deadlines mostly arrive in order: those go to a FIFO (O(1) push and pop);
/// the rare earlier one goes to a heap. An answer to the oldest request in the FIFO removes its
/// entry (providers mostly answer a connection's requests in order, so the FIFO holds about
/// the requests in flight and the keeper's timer rarely fires); other answered requests' entries
/// stay until their deadline and are skipped then (the pending map decides).
#[derive(Default)]
struct Deadlines {
    in_order: VecDeque<(Instant, u64)>,
    out_of_order: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Deadlines {
    fn push(&mut self, deadline: Instant, id: u64) {
        match self.in_order.back() {
            Some(&(last, _)) if deadline < last => self.out_of_order.push(Reverse((deadline, id))),
            _ => self.in_order.push_back((deadline, id)),
        }
    }

    /// Request `id` was answered: its entry goes if it is the FIFO's oldest.
    fn answered(&mut self, id: u64) {
        if self
            .in_order
            .front()
            .is_some_and(|&(_, oldest)| oldest == id)
        {
            self.in_order.pop_front();
        }
    }

    fn peek(&self) -> Option<(Instant, u64)> {
        match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(&a), Some(&Reverse(b))) => Some(if b < a { b } else { a }),
            (Some(&a), None) => Some(a),
            (None, Some(&Reverse(b))) => Some(b),
            (None, None) => None,
        }
    }

    fn pop(&mut self) {
        let from_heap = match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(a), Some(Reverse(b))) => b < a,
            (None, Some(_)) => true,
            _ => false,
        };
        if from_heap {
            self.out_of_order.pop();
        } else {
            self.in_order.pop_front();
        }
    }

    fn clear(&mut self) {
        self.in_order.clear();
        self.out_of_order.clear();
    }
}

enum Reply<'a> {
    Response(BytesMut),
    /// Answered by ringside (status and message from the error).
    Local(LocalError<'a>),
}

/// Connects, then runs reader, writer and keeper until the connection ends. Endpoints in the
/// DPDK port's subnet are reached through this shard's DPDK stack (feature `dpdk`).
/// The keeper runs while connecting too, so requests queued meanwhile time out on their own
/// deadlines.
async fn run(conn: Rc<UpConn>) {
    let (addr, timeout) = (conn.host.addr, conn.pool.connect_timeout);
    #[cfg(feature = "dpdk")]
    if let Some(stack) = crate::dpdk::upstream_stack(addr) {
        let connected = shard::monoio::select! {
            c = shard::monoio::time::timeout(timeout, stack.connect(addr)) => c,
            why = keeper(&conn) => return conn.close(&why),
        };
        return serve_upstream(conn, connected).await;
    }
    #[cfg(feature = "fuzz")]
    if let Some(connecting) = crate::io::fuzz::connect(addr) {
        let connected = shard::monoio::select! {
            c = shard::monoio::time::timeout(timeout, connecting) => c,
            why = keeper(&conn) => return conn.close(&why),
        };
        return serve_upstream(conn, connected).await;
    }
    // An endpoint whose transport socket has TLS: connect and handshake within the connect
    // timeout.
    if let Some(tls) = conn.pool.lb.tls(conn.host.index) {
        // The handshake and, when the provider's sidecar negotiated it, Istio's in-band
        // metadata exchange (bounded on its own), within the connect timeout.
        let connect = async {
            let mut s = crate::io::tls::connect(addr, &conn.pool.lb.sources, &tls, None).await?;
            if crate::io::peer_exchange::negotiated(s.alpn_protocol().as_deref()) {
                let ours = conn.pool.stats.stats.istio_node();
                let side = crate::io::peer_exchange::Side::Client;
                let theirs =
                    crate::io::peer_exchange::exchange(&mut s, &ours.exchange_frame, side).await?;
                *conn.mx.borrow_mut() = theirs.map(Box::from);
            }
            Ok(s)
        };
        let connected = shard::monoio::select! {
            c = shard::monoio::time::timeout(timeout, connect) => c,
            why = keeper(&conn) => return conn.close(&why),
        };
        return serve_upstream(conn, connected).await;
    }
    let connected = shard::monoio::select! {
        c = shard::monoio::time::timeout(timeout, crate::io::intercept::connect(addr, &conn.pool.lb.sources)) => c,
        why = keeper(&conn) => return conn.close(&why),
    };
    serve_upstream(conn, connected).await
}

async fn serve_upstream<S: crate::io::Conn>(
    conn: Rc<UpConn>,
    connected: Result<std::io::Result<S>, shard::monoio::time::error::Elapsed>,
) {
    let host = conn.host.clone();
    let pool = conn.pool.clone();
    let stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            pool.stats.inc(pool.lb.ids.cx_connect_fail);
            pool.stats.inc(host.ids.cx_connect_fail);
            pool.outcome(&host, true);
            host.down_until.set(Some(
                Instant::now() + Duration::from_millis(ENDPOINT_FAILURE_BACKOFF_MS),
            ));
            conn.connect_failed(&UpstreamGone::ConnectFailed(e));
            return;
        }
        Err(_) => {
            pool.stats.inc(pool.lb.ids.cx_connect_timeout);
            pool.outcome(&host, true);
            host.down_until.set(Some(
                Instant::now() + Duration::from_millis(ENDPOINT_FAILURE_BACKOFF_MS),
            ));
            conn.connect_failed(&UpstreamGone::ConnectTimeout);
            return;
        }
    };
    if conn.state.get() == UpState::Closed {
        return;
    }
    let _ = stream.set_nodelay(true);
    let _ = stream.set_keepalive(&pool.lb.keepalive);
    *conn.tls.borrow_mut() = stream
        .peer_principal()
        .map(|p| crate::stats::istio::UpstreamTls {
            peer: p.map(Box::from),
            local: pool.lb.tls(host.index).and_then(|t| t.principal.clone()),
        });
    pool.stats.inc(pool.lb.ids.cx_total);
    pool.stats.inc(host.ids.cx_total);
    pool.stats.inc(pool.lb.ids.cx_active);
    host.down_until.set(None);
    host.readonly.set(false);
    conn.state.set(UpState::Open);
    conn.connected();
    conn.last_read.set(Instant::now());
    let (r, w) = stream.into_split();
    let why = shard::monoio::select! {
        why = read_loop(&conn, r) => why,
        why = write_loop(&conn, w) => why,
        why = keeper(&conn) => why,
    };
    pool.stats.dec(pool.lb.ids.cx_active);
    conn.close(&why);
}

async fn write_loop<W: AsyncWriteRent>(conn: &Rc<UpConn>, mut w: W) -> UpstreamGone {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        if conn.out.borrow().is_empty() {
            if conn.state.get() == UpState::Closed {
                let _ = w.shutdown().await;
                return UpstreamGone::Closed;
            }
            conn.out_ready.wait().await;
            continue;
        }
        match crate::io::write_queue(&conn.out, &mut batch, &mut w, |f| conn.written(f)).await {
            Ok(()) => {}
            Err(e) => return UpstreamGone::WriteFailed(e),
        }
    }
}

async fn read_loop<R: AsyncReadRent>(conn: &Rc<UpConn>, mut r: R) -> UpstreamGone {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // A large response read in part holds its room: charged beyond the first chunk.
    let mut held = Charge::new(conn.pool.budget.clone());
    let frame_max = conn.pool.response_bytes_max;
    // Bytes of an oversized frame still to be discarded.
    let mut skip: u64 = 0;
    loop {
        loop {
            if skip > 0 {
                let n = usize::try_from(skip).unwrap_or(usize::MAX).min(buf.len());
                let _ = buf.split_to(n);
                skip -= n as u64;
                if skip > 0 {
                    buf.reserve(READ_CHUNK_BYTES);
                    break;
                }
            }
            match wire::next_frame(&mut buf, frame_max) {
                Ok(wire::Next::Frame(h, frame)) => {
                    // Out of the buffer: charged where it goes (the caller's queue).
                    held.set(0);
                    on_upstream_frame(conn, h, frame)
                }
                Ok(wire::Next::NeedMore(n)) => {
                    buf.reserve(n.max(READ_CHUNK_BYTES / 4));
                    held.set(wire::large_frame_room(&buf, n));
                    break;
                }
                Err(codec::DecodeError::FrameTooLarge {
                    request_id,
                    frame_bytes,
                    ..
                }) => {
                    too_large(conn, request_id, frame_bytes);
                    skip = frame_bytes;
                }
                Err(e) => return UpstreamGone::BadFrame(e),
            }
        }
        let (res, b) = crate::io::read_append(&mut r, buf).await;
        buf = b;
        match res {
            Ok(0) => return UpstreamGone::PeerClosed,
            Ok(_) => conn.last_read.set(Instant::now()),
            Err(e) => return UpstreamGone::ReadFailed(e),
        }
    }
}

fn on_upstream_frame(conn: &Rc<UpConn>, h: wire::Header, frame: BytesMut) {
    if h.event {
        if h.request {
            if wire::is_readonly_event(&frame) {
                tracing::info!(upstream = %conn.host.addr, "provider is going readonly; no new requests to it");
                conn.host.readonly.set(true);
            }
            if h.two_way {
                conn.enqueue(wire::heartbeat_response(h.id));
            }
        }
        // Heartbeat responses only prove liveness (last_read is already updated).
        return;
    }
    if h.request {
        // Providers do not send requests on consumer connections; ignore.
        return;
    }
    // No entry: a late response after a timeout, or the answer to our own heartbeat: dropped.
    let p = conn.pending.borrow_mut().remove(h.id);
    if let Some(p) = p {
        conn.deadlines.borrow_mut().answered(h.id);
        conn.finish(p, Reply::Response(frame));
    } else if conn.mirrors.borrow_mut().remove(&h.id).is_some() {
        conn.deadlines.borrow_mut().answered(h.id);
        let failed = matches!(
            wire::response_status(&frame),
            wire::Status::SERVER_TIMEOUT
                | wire::Status::SERVER_ERROR
                | wire::Status::SERVER_THREADPOOL_EXHAUSTED
        );
        conn.end_mirror(Some(failed));
    }
}

/// A frame over `response_bytes_max` (its body is skipped, the connection goes on): its
/// request, if one waits, is answered with 80.
fn too_large(conn: &Rc<UpConn>, id: u64, frame_bytes: u64) {
    let pool = &conn.pool;
    pool.stats.inc(pool.ids.rsp_too_large);
    let p = conn.pending.borrow_mut().remove(id);
    if conn.mirrors.borrow_mut().remove(&id).is_some() {
        conn.end_mirror(Some(false));
    }
    tracing::debug!(upstream = %conn.host.addr, frame_bytes, limit = pool.response_bytes_max, "response too large; skipped");
    if let Some(p) = p {
        let e = LocalError::ResponseTooLarge {
            frame_bytes,
            addr: conn.host.addr,
            limit: pool.response_bytes_max,
        };
        conn.finish(p, Reply::Local(e));
    }
}

/// Enforces request deadlines and keeps an idle connection alive with heartbeats.
async fn keeper(conn: &Rc<UpConn>) -> UpstreamGone {
    let pool = conn.pool.clone();
    loop {
        if conn.state.get() == UpState::Closed {
            return UpstreamGone::Closed;
        }
        if conn.host.retired.get() && conn.pending.borrow().is_empty() {
            return UpstreamGone::Retired;
        }
        let now = Instant::now();
        let next_deadline = conn.deadlines.borrow().peek().map(|(d, _)| d);
        // While connecting, only deadlines run.
        let open = conn.state.get() == UpState::Open;
        let idle_since = conn.last_read.get();
        if open && now.duration_since(idle_since) >= pool.heartbeat * HEARTBEAT_MISSES_MAX {
            pool.stats.inc(pool.ids.cx_heartbeat_timeout);
            return UpstreamGone::MissedHeartbeats;
        }
        // Idle: nothing pending, nothing queued, no request for `idle_timeout`.
        let unused = conn.pending.borrow().is_empty()
            && conn.oneway.borrow().is_empty()
            && conn.mirrors.borrow().is_empty();
        let idle_at = unused.then(|| conn.last_request.get() + pool.idle_timeout);
        if open && idle_at.is_some_and(|t| now >= t) {
            pool.stats.inc(pool.ids.cx_idle_timeout);
            return UpstreamGone::Idle(pool.idle_timeout.as_millis());
        }
        let next_heartbeat = open.then(|| idle_since.max(conn.last_ping.get()) + pool.heartbeat);
        let wake_at = [next_deadline, next_heartbeat, idle_at.filter(|_| open)]
            .into_iter()
            .flatten()
            .min();
        conn.keeper_until.set(wake_at);
        let Some(wake_at) = wake_at else {
            conn.keeper_wake.wait().await;
            continue;
        };
        shard::monoio::select! {
            _ = shard::monoio::time::sleep_until(wake_at.into()) => {}
            _ = conn.keeper_wake.wait() => continue,
        }
        conn.keeper_until.set(None);
        let now = Instant::now();
        expire(conn, now);
        let quiet_since = conn.last_read.get().max(conn.last_ping.get());
        if conn.state.get() == UpState::Open && now.duration_since(quiet_since) >= pool.heartbeat {
            conn.last_ping.set(now);
            conn.enqueue(wire::heartbeat_request(conn.other_id()));
        }
    }
}

fn expire(conn: &Rc<UpConn>, now: Instant) {
    loop {
        let top = conn.deadlines.borrow().peek();
        let Some((deadline, id)) = top else {
            return;
        };
        if deadline > now {
            return;
        }
        conn.deadlines.borrow_mut().pop();
        let p = {
            let mut pending = conn.pending.borrow_mut();
            match pending.get(id) {
                Some(p) if p.deadline == deadline => pending.remove(id),
                _ => None,
            }
        };
        if let Some(p) = p {
            conn.time_out(p, now);
            continue;
        }
        let mirror = {
            let mut mirrors = conn.mirrors.borrow_mut();
            match mirrors.get(&id) {
                Some(&d) if d == deadline => mirrors.remove(&id),
                _ => None,
            }
        };
        if mirror.is_some() {
            conn.pool.stats.inc(conn.pool.ids.rq_timeout);
            conn.end_mirror(Some(true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_pop_in_time_order_in_or_out_of_order() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut d = Deadlines::default();
        d.push(at(100), 1);
        d.push(at(200), 2);
        d.push(at(50), 3);
        d.push(at(150), 4);
        d.push(at(300), 5);
        let mut order = Vec::new();
        while let Some((_, id)) = d.peek() {
            order.push(id);
            d.pop();
        }
        assert_eq!(order, [3, 1, 4, 2, 5]);
    }

    #[test]
    fn an_answer_to_the_oldest_request_removes_its_deadline() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut d = Deadlines::default();
        for id in 1..=4 {
            d.push(at(100 + id), id);
        }
        d.answered(1);
        assert_eq!(d.peek(), Some((at(102), 2)));
        // Out of order: 3's entry stays (skipped at its deadline by the pending map).
        d.answered(3);
        assert_eq!(d.peek(), Some((at(102), 2)));
        d.answered(2);
        assert_eq!(d.peek(), Some((at(103), 3)));
        d.pop();
        d.answered(4);
        assert_eq!(d.peek(), None);
    }

    #[test]
    fn in_flight_ids_name_their_slot_and_go_stale_when_it_is_reused() {
        let mut t = InFlight::<u32>::default();
        let a = t.next_id();
        assert_eq!(t.insert(10), a);
        let b = t.insert(20);
        assert_ne!(a, b);
        assert_eq!(t.get(a), Some(&10));
        assert_eq!(t.remove(a), Some(10));
        assert_eq!(t.remove(a), None, "answered twice");
        // The slot is reused under a new generation: the old id finds nothing.
        let c = t.next_id();
        assert_eq!(t.insert(30), c);
        assert_eq!(c & 0xffff_ffff, a & 0xffff_ffff);
        assert_ne!(c, a);
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None);
        // Ids outside the table (one-way, mirrors, heartbeats) and made-up ones find nothing.
        assert_eq!(t.get(OTHER_IDS | (c & 0xffff_ffff)), None);
        assert_eq!(t.get(u64::MAX), None);
        assert_eq!(t.get(0), None);
        assert!(c < OTHER_IDS && b < OTHER_IDS);
        // Taken out and put back under the same id (a failed connect with no other endpoint).
        let p = t.remove(b).unwrap();
        t.restore(b, p);
        assert_eq!(t.get(b), Some(&20));
        assert_eq!(
            t.next_id() & 0xffff_ffff,
            2,
            "the restored slot left the free list"
        );
        let mut all = t.drain();
        all.sort();
        assert_eq!(all, [20, 30]);
        assert!(t.is_empty());
        assert_eq!(t.get(b), None);
    }

    #[test]
    fn in_flight_generations_wrap_below_the_other_ids_bit() {
        assert_eq!(InFlight::<()>::bump(0), 1);
        assert_eq!(InFlight::<()>::bump(7), 8);
        assert_eq!(InFlight::<()>::bump(GENERATION_MASK), 1);
        let id = InFlight::<()>::id(u32::MAX, GENERATION_MASK);
        assert!(id < OTHER_IDS);
    }
}
