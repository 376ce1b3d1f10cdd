//! Downstream side of the Dubbo filter: one consumer connection.
//!
//! The reader decodes frames, answers heartbeats itself, routes each request and hands it to the
//! cluster's upstream pool; the writer sends back, in batches, the responses and local replies
//! queued for this connection. Request path, top to bottom: `decode → route → forward`, and
//! back: `match reply (upstream.rs) → response() → writer`.
//!
//! Limits: a frame above the listener's `frame_bytes_max` is refused from its header alone; at
//! `pending_requests_per_connection_max` requests in flight, or `output_bytes_max` bytes of
//! answers queued, the reader stops reading until answers drain (backpressure instead of
//! buffering). A consumer that stays over `output_bytes_max` for `output_stall_timeout_ms`, or
//! makes the queue reach twice the limit, is closed. Timers (one watcher task per connection):
//! first frame, heartbeat (nothing read at all) and idle (nothing in flight, no request).
//! Counters are plain `Cell`s updated per read or per frame; the watcher does the clock work.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use shard::monoio::io::AsyncWriteRent;
use shard::{Event, Notify};

use crate::access_log::record::{addr_key, DubboRec};
use crate::access_log::{DubboCall, Flags, ListenerLog};
use crate::filter::{
    service_ids, Budget, Charge, Counted, Drain, HandedOver, Handover, RequestStatIds,
    ServiceStatsMap, HANDOVER_UNREAD_BYTES_MAX, HANDOVER_WAIT_MS,
};
use crate::io::{StopRead, READ_CHUNK_BYTES};
use crate::route::Dice;
use crate::trace::{Decision, ListenerTrace};

use super::error::LocalError;
use super::router::Router;
use super::upstream::{ClusterPool, ForwardError};
use super::wire;
use crate::route::Action;
use crate::stats::{HistId, Kind, ShardStats, StatId, Stats};

/// What one queued answer costs beyond its bytes (its queue slot and allocation), counted
/// against `output_bytes_max` so a flood of tiny answers (heartbeats) is bounded in memory too.
pub const QUEUED_FRAME_OVERHEAD_BYTES: usize = 64;
/// An output queue emptied with more slots than this gives the memory back.
const OUT_SLOTS_KEPT: usize = 1024;
/// While draining, a connection idle for this long after its readonly event is closed.
pub const DRAIN_QUIET_MS: u64 = 200;
/// While draining, a caller that keeps sending after our readonly event is closed after this
/// long, right behind the answer that leaves it with nothing in flight.
pub const DRAIN_GRACE_MS: u64 = 1_000;

/// Stat ids of one Dubbo listener.
#[derive(Clone, Copy, Debug)]
pub struct DubboStatIds {
    pub rq_total: StatId,
    pub rq_oneway: StatId,
    pub rq_heartbeat: StatId,
    /// Requests in a serialization ringside does not decode (routed by the default route).
    pub rq_opaque: StatId,
    pub rq_no_route: StatId,
    pub rq_bad: StatId,
    pub rq_overflow: StatId,
    pub rq_no_healthy_upstream: StatId,
    /// Requests a local rate limit refused.
    pub rq_rate_limited: StatId,
    /// Two-way calls answered 100 at their route's `max_concurrent_requests`.
    pub rq_concurrency_limited: StatId,
    pub fault: crate::filter::FaultStatIds,
    pub rsp_ok: StatId,
    pub rsp_error: StatId,
    pub rsp_local: StatId,
    /// Connections closed by each timer, and for not reading their answers.
    pub cx_first_frame_timeout: StatId,
    pub cx_heartbeat_timeout: StatId,
    pub cx_idle_timeout: StatId,
    pub cx_output_full: StatId,
    /// Hot upgrade: connections handed to the successor, those that drained here instead
    /// (requests in flight past `HANDOVER_WAIT_MS`, too many unread bytes), and, in the
    /// successor, those adopted from the predecessor.
    pub cx_handed_over: StatId,
    pub cx_handover_fallback: StatId,
    pub cx_adopted: StatId,
    pub rq_time: HistId,
    /// Where interfaces/methods beyond `stats.dubbo_services_max` are counted.
    pub other_service: RequestStatIds,
}

impl DubboStatIds {
    pub fn register(st: &Stats, listener: &str) -> Self {
        let t = [("listener", listener)];
        let c = |name| st.add("listener", name, &t, Kind::Counter);
        let other = [
            ("listener", listener),
            ("interface", "other"),
            ("method", "other"),
        ];
        DubboStatIds {
            rq_total: c("dubbo_rq_total"),
            rq_oneway: c("dubbo_rq_oneway"),
            rq_heartbeat: c("dubbo_rq_heartbeat"),
            rq_opaque: c("dubbo_rq_opaque"),
            rq_no_route: c("dubbo_rq_no_route"),
            rq_bad: c("dubbo_rq_bad"),
            rq_overflow: c("dubbo_rq_overflow"),
            rq_no_healthy_upstream: c("dubbo_rq_no_healthy_upstream"),
            rq_rate_limited: c("dubbo_rq_rate_limited"),
            rq_concurrency_limited: c("dubbo_rq_concurrency_limited"),
            fault: crate::filter::FaultStatIds::register(st, listener),
            rsp_ok: c("dubbo_rsp_ok"),
            rsp_error: c("dubbo_rsp_error"),
            rsp_local: c("dubbo_rsp_local"),
            cx_first_frame_timeout: c("dubbo_cx_first_frame_timeout"),
            cx_heartbeat_timeout: c("dubbo_cx_heartbeat_timeout"),
            cx_idle_timeout: c("dubbo_cx_idle_timeout"),
            cx_output_full: c("dubbo_cx_output_full"),
            cx_handed_over: c("dubbo_cx_handed_over"),
            cx_handover_fallback: c("dubbo_cx_handover_fallback"),
            cx_adopted: c("dubbo_cx_adopted"),
            rq_time: st.add_histogram("listener", "dubbo_rq_time_us", &t),
            other_service: RequestStatIds::register(st, "dubbo_service", &other),
        }
    }
}

/// A Dubbo listener's routes on one shard.
pub type DubboRoutes = crate::filter::Routes<Router, ClusterPool>;

/// Everything one Dubbo listener's connections on one shard need.
pub struct DubboListener {
    pub name: String,
    /// Router, pools and route stats; a config update swaps them (every connection of the
    /// listener, old and new, routes its next request on the new ones).
    pub routes: crate::filter::RoutesCell<Router, ClusterPool>,
    pub frame_bytes_max: usize,
    pub pending_max: u32,
    pub timers: Timers,
    /// Answers queued for one connection before its reader stops.
    pub output_bytes_max: usize,
    pub stats: ShardStats,
    pub ids: DubboStatIds,
    /// The shard's buffer budget: answers queued and large frames being read are charged to
    /// it; new requests are shed while it is exhausted.
    pub budget: Rc<Budget>,
    /// Per (interface, method) seen on this shard; registered on first sight.
    pub services: Rc<RefCell<ServiceStatsMap>>,
    /// The pair looked up last, in front of `services`.
    pub service_memo: RefCell<crate::filter::ServiceMemo>,
    /// xorshift state for weighted cluster picks (any non-zero seed).
    pub dice: Dice,
    /// Access logs, when the listener has any (one line per call).
    pub log: Option<Rc<ListenerLog>>,
    /// Spent call records, reused (no allocation per logged call in steady state).
    pub log_pool: RefCell<Vec<Box<Logged>>>,
    /// Requests held by a fault delay now (against `max_active_faults`).
    pub faults_active: Cell<u32>,
    /// Istio's standard metrics, when the listener has `istio_metrics`.
    pub istio: Option<crate::stats::istio::IstioListener>,
    /// Tracing, when the listener has it (a span per sampled call; docs/observability.md).
    pub trace: Option<Rc<ListenerTrace>>,
    /// The buffer requests that get a `traceparent` added are copied into (split off it, one
    /// allocation per [`TRACE_ARENA_BYTES`] of them, reused once they are all written).
    pub trace_arena: RefCell<BytesMut>,
    /// Request authorization (`dubbo.rbac`), checked on every request before routing.
    pub rbac: Option<crate::filter::rbac::Rbac>,
    /// The listener's own address when it binds one (`None`: a virtual listener, whose
    /// connections an `original_destination` listener handed over).
    pub bound: Option<SocketAddr>,
    /// Traffic labels (`dubbo.traffic_label`): the attachments a request's label is read from.
    pub labels: Option<crate::cluster::LabelKeys>,
}

/// Spent records kept for reuse per listener and shard.
const LOG_POOL_MAX: usize = 1024;
/// Capacity of a listener's buffer for requests copied to add a `traceparent` (on one shard).
pub const TRACE_ARENA_BYTES: usize = 64 * 1024;

/// What a logged call keeps from its request until it is answered.
pub struct Logged {
    /// The call's access-log record as far as its request goes: the start (wall clock,
    /// nanoseconds since the epoch; and the monotonic reading), the request id and size. The
    /// answer fills in the rest ([`DownConn::log_line`]) and the record is copied from here
    /// into the log's batch.
    rec: DubboRec,
    /// interface, method, version, group, one after the other (`ends` marks where each ends).
    fields: Vec<u8>,
    ends: [usize; 4],
    /// A sampled call's trace context (its span is written when the call is answered).
    trace: Option<Decision>,
}

impl Logged {
    /// A record for the pool (only until it holds [`LOG_POOL_MAX`] of them).
    #[cold]
    #[inline(never)]
    fn new() -> Box<Logged> {
        let now = Instant::now();
        Box::new(Logged {
            rec: DubboRec::new(0, (now, now), 0, (0, 0), 0, Flags::NONE, (0, 0)),
            fields: Vec::new(),
            ends: [0; 4],
            trace: None,
        })
    }

    /// Keeps interface, method, version and group (a span or a format shows them; out of
    /// line: the other calls do not pay for its registers).
    #[inline(never)]
    fn keep_fields(&mut self, r: &wire::RequestView<'_>) {
        let parts = [
            r.interface_bytes(),
            r.method_bytes(),
            r.version_bytes(),
            r.group_bytes().unwrap_or_default(),
        ];
        for (i, p) in parts.iter().enumerate() {
            self.fields.extend_from_slice(p);
            self.ends[i] = self.fields.len();
        }
    }

    fn call(&self) -> DubboCall<'_> {
        let f = |i: usize| &self.fields[if i == 0 { 0 } else { self.ends[i - 1] }..self.ends[i]];
        DubboCall {
            interface: f(0),
            method: f(1),
            version: f(2),
            group: f(3),
            request_id: self.rec.request_id,
        }
    }
}

impl DubboListener {
    /// A record of a request for the access log (`None` when the listener logs nothing).
    fn capture(
        &self,
        h: &wire::Header,
        frame_bytes: usize,
        req: Option<&wire::RequestView<'_>>,
        at: (Instant, u64),
    ) -> Option<Box<Logged>> {
        self.capture_traced(h, frame_bytes, req, None, at)
    }

    /// A record of a request for the access log and, for a sampled call, its span (`None`
    /// when neither wants one). `at`: when the request arrived, monotonic and wall-clock
    /// ([`DownConn::read_at`]: its read batch's, read once per batch, not per call; the wall
    /// clock is kept only on a listener that logs). Interface, method, version and group are
    /// kept only for a span or a format that shows them.
    fn capture_traced(
        &self,
        h: &wire::Header,
        frame_bytes: usize,
        req: Option<&wire::RequestView<'_>>,
        trace: Option<Decision>,
        at: (Instant, u64),
    ) -> Option<Box<Logged>> {
        let trace = trace.filter(|d| d.sampled);
        if self.log.is_none() && trace.is_none() {
            return None;
        }
        let mut lg = self.log_pool.borrow_mut().pop().unwrap_or_else(Logged::new);
        lg.rec.start_ns = match &self.log {
            Some(_) => at.1,
            None => crate::trace::unix_ns(SystemTime::now()),
        };
        lg.rec.started = at.0;
        lg.rec.request_id = h.id;
        // Frames are at most `config::FRAME_BYTES_MAX_LIMIT` (256 MiB) long.
        lg.rec.bytes_received = u32::try_from(frame_bytes).unwrap_or(u32::MAX);
        lg.fields.clear();
        let keep = trace.is_some() || self.log.as_ref().is_some_and(|l| l.shows_dubbo);
        // Most calls are not sampled, and most records come back from the pool without one.
        if trace.is_some() || lg.trace.is_some() {
            lg.trace = trace;
        }
        match req.filter(|_| keep) {
            Some(r) => lg.keep_fields(r),
            None => lg.ends = [0; 4],
        }
        Some(lg)
    }

    /// The counters of one interface/method: a map lookup on the data path, a registration
    /// (allocating) only the first time this shard sees the pair, `other` beyond the cap.
    fn service_ids(&self, interface: &[u8], method: &[u8]) -> RequestStatIds {
        service_ids(
            &self.service_memo,
            &self.services,
            &self.stats,
            "dubbo_service",
            &self.name,
            ("interface", interface),
            method,
            self.ids.other_service,
        )
    }

    fn roll(&self) -> u32 {
        self.dice.roll()
    }
}

/// A Dubbo listener's connection timers.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    pub first_frame: Duration,
    pub heartbeat: Duration,
    pub idle: Duration,
    pub output_stall: Duration,
}

impl Timers {
    pub fn from_config(l: &crate::config::Listener, d: &crate::config::DubboListener) -> Timers {
        Timers {
            first_frame: Duration::from_millis(d.first_frame_timeout_ms),
            heartbeat: Duration::from_millis(d.heartbeat_timeout_ms),
            idle: Duration::from_millis(l.idle_timeout_ms),
            output_stall: Duration::from_millis(d.output_stall_timeout_ms),
        }
    }
}

/// One consumer connection, shared by its reader and writer tasks and by the pending entries of
/// its requests in flight.
pub struct DownConn {
    l: Rc<DubboListener>,
    out: RefCell<VecDeque<Bytes>>,
    /// Bytes in `out` (each frame with [`QUEUED_FRAME_OVERHEAD_BYTES`]), and of a large frame
    /// being written; charged to the shard's budget.
    out_bytes: Cell<usize>,
    /// Since when `out_bytes` is at or over `output_bytes_max`.
    full_since: Cell<Option<Instant>>,
    out_ready: Notify,
    /// A frame (any) arrived; the first-frame timer is off.
    greeted: Cell<bool>,
    /// When the last read returned bytes, and when the last request arrived.
    last_read: Cell<Instant>,
    /// The wall-clock time of `last_read` (nanoseconds since the epoch), kept when the
    /// listener logs (a logged call's `%START_TIME%`: one clock read per read batch, not per
    /// call).
    last_read_wall: Cell<u64>,
    last_request: Cell<Instant>,
    /// The reader waits for room (we stopped reading): the heartbeat timer does not run.
    paused: Cell<bool>,
    /// Why the connection must be cut now (the queue overflowed); the watcher acts on it.
    cut: Cell<Option<Cut>>,
    watch: Notify,
    /// Requests forwarded and not yet answered.
    pub inflight: Cell<u32>,
    room: Notify,
    /// No more answers are wanted (the writer failed, or the connection is being closed).
    closed: Cell<bool>,
    /// The reader is done (EOF or a fatal decode error): close once every answer is written.
    read_done: Cell<bool>,
    /// We told the caller we are going away (readonly event): close once idle.
    draining: Cell<bool>,
    draining_since: Cell<Option<Instant>>,
    /// Set when the writer is done (ends the drain announcer).
    finished: Event,
    /// The caller's and our address (looked up only when the listener logs).
    addrs: (Option<SocketAddr>, Option<SocketAddr>),
    /// `addrs` as the access log's records keep them (`access_log::record::addr_key`).
    log_keys: (u64, u64),
    /// The caller's mutual TLS as Istio's metrics label it (with `istio_metrics`).
    peer: crate::stats::istio::PeerId,
    /// The caller's workload from Istio's in-band metadata exchange (inbound).
    meta: crate::stats::istio::MetaId,
    /// What `rbac` rules know of the connection (when the listener has any).
    rbac_peer: Option<crate::filter::rbac::ConnPeer>,
    /// The kernel socket a hot-upgrade successor can take over (`None`: TLS, DPDK).
    handover_fd: Option<std::os::fd::RawFd>,
    /// Where the caller meant to connect, for routes to `original_destination` clusters
    /// (looked up only when the listener's routes have one).
    pub(super) original_dst: Option<SocketAddr>,
    /// Set when a hot-upgrade drain hands this connection over (to `handover_to`): the reader
    /// stops at the next frame boundary.
    handover: Event,
    handover_to: RefCell<Option<Rc<dyn Handover>>>,
    /// The reader stopped for the hand-over: the writer notifies `quiet` whenever nothing is
    /// in flight and everything is written.
    read_stopped: Cell<bool>,
    quiet: Notify,
    /// The writer holds a batch (the queue may be empty while it is being written).
    writing: Cell<bool>,
    /// Handed over: the writer ends without a FIN (the successor owns the socket now).
    handed_over: Cell<bool>,
}

impl DownConn {
    /// Queues a provider's answer (already carrying the caller's request id), counted and
    /// timed from `started` (when it was forwarded) to `now` (when its read completed).
    pub fn response(&self, frame: Bytes, started: Instant, now: Instant, counted: Counted) {
        let l = &self.l;
        l.stats.record_us(
            l.ids.rq_time,
            now.saturating_duration_since(started).as_micros() as u64,
        );
        if wire::response_ok(&frame) {
            l.stats.inc(l.ids.rsp_ok);
            counted.inc(&l.stats, |c| c.rsp_ok);
        } else {
            l.stats.inc(l.ids.rsp_error);
            counted.inc(&l.stats, |c| c.rsp_error);
        }
        self.push(frame);
    }

    /// Queues an error reply made by ringside itself (`counted`: once routed).
    /// Answers request `id` with the status and message of `e` (see [`LocalError::status`]).
    /// Returns the answer's length.
    pub fn local_reply(&self, id: u64, e: &LocalError<'_>, counted: Option<Counted>) -> usize {
        self.l.stats.inc(self.l.ids.rsp_local);
        if let Some(c) = counted {
            c.inc(&self.l.stats, |c| c.rsp_local);
        }
        let message = format!("ringside: {e}");
        let frame = wire::error_response(id, e.status(), &message);
        let len = frame.len();
        self.push(frame);
        len
    }

    /// Notes a read: its time, and its wall-clock time when the listener logs.
    fn mark_read(&self) {
        self.last_read.set(Instant::now());
        if self.l.log.is_some() {
            self.last_read_wall
                .set(crate::trace::unix_ns(SystemTime::now()));
        }
    }

    /// When the bytes being handled were read: monotonic and (on a listener that logs)
    /// wall-clock.
    fn read_at(&self) -> (Instant, u64) {
        (self.last_read.get(), self.last_read_wall.get())
    }

    /// Answers `id` with `e` and logs the call (when the listener logs and `lg` was captured).
    fn local_reply_logged(
        &self,
        id: u64,
        e: &LocalError<'_>,
        counted: Option<Counted>,
        lg: Option<Box<Logged>>,
        cluster: Option<&str>,
    ) -> usize {
        let len = self.local_reply(id, e, counted);
        if let Some(lg) = lg {
            let status = e.status().0;
            self.log_call(lg, status, e.flags(), e.upstream(), cluster, len);
        }
        len
    }

    /// Counts a finished call in Istio's metrics (when the listener has them): `status` the
    /// Dubbo status it was answered with, `cluster` where it went, `up` the provider
    /// connection it went on (outbound: its TLS names the principals).
    pub(crate) fn count_istio(
        &self,
        cluster: Option<&crate::cluster::ShardCluster>,
        status: u8,
        flags: Flags,
        started: Instant,
        (bytes_in, bytes_out): (u32, usize),
        up: Option<&super::upstream::UpConn>,
    ) {
        let Some(istio) = &self.l.istio else { return };
        // Inbound: the caller's mutual TLS; outbound: the provider connection's.
        let (peer, meta) = match (istio.inbound(), up) {
            (true, _) => (self.peer, self.meta),
            (false, Some(up)) => (up.istio_peer(istio), up.istio_meta(istio)),
            (false, None) => Default::default(),
        };
        let text = || flags.short_string();
        let o = crate::stats::istio::Outcome {
            cluster: cluster.map(|c| (c.ids.cx_total, c.name.as_str())),
            code: u32::from(status),
            grpc: None,
            flags: (flags.bits(), &text),
            peer,
            meta,
        };
        let us = started.elapsed().as_micros() as u64;
        istio.request(&o, us, u64::from(bytes_in), bytes_out as u64);
    }

    /// Writes a call's access-log line and span, and keeps its record for reuse.
    #[inline(never)]
    pub(crate) fn log_call(
        &self,
        lg: Box<Logged>,
        status: u8,
        flags: Flags,
        upstream: Option<SocketAddr>,
        cluster: Option<&str>,
        bytes_sent: usize,
    ) {
        self.log_call_at(
            lg,
            status,
            flags,
            upstream,
            cluster,
            bytes_sent,
            Instant::now(),
        );
    }

    /// [`DownConn::log_call`] for a call answered at `ended` (a clock reading the caller
    /// already took). Inline (in the provider's answer, `UpConn::finish`, and in
    /// [`DownConn::log_call`]): most calls take its repeat path, whose call frame and
    /// arguments cost as much as a third of it.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn log_call_at(
        &self,
        mut lg: Box<Logged>,
        status: u8,
        flags: Flags,
        upstream: Option<SocketAddr>,
        cluster: Option<&str>,
        bytes_sent: usize,
        ended: Instant,
    ) {
        if let (Some(t), Some(_)) = (&self.l.trace, &lg.trace) {
            self.span(t, &lg, status, upstream, cluster);
        }
        self.log_line(&mut lg, status, flags, upstream, cluster, bytes_sent, ended);
        let mut pool = self.l.log_pool.borrow_mut();
        if pool.len() < LOG_POOL_MAX {
            pool.push(lg);
        }
    }

    /// A sampled call's span (out of line: the calls not sampled do not pay for its frame).
    #[inline(never)]
    fn span(
        &self,
        t: &ListenerTrace,
        lg: &Logged,
        status: u8,
        upstream: Option<SocketAddr>,
        cluster: Option<&str>,
    ) {
        let Some(d) = &lg.trace else { return };
        let call = lg.call();
        let server = t.kind() == crate::trace::otlp::SPAN_KIND_SERVER;
        t.finish(
            d,
            &crate::trace::SpanData {
                trace_id: &d.trace_id,
                span_id: &d.span_id,
                parent: d.parent.as_ref(),
                kind: t.kind(),
                system: "apache_dubbo",
                service: call.interface,
                method: call.method,
                start_unix_ns: lg.rec.start_ns,
                end_unix_ns: crate::trace::unix_ns(SystemTime::now()),
                status: Some(u32::from(status)),
                // 0: a one-way request, handed on (nothing comes back).
                failed: status != wire::Status::OK.0 && status != 0,
                peer: if server { self.addrs.0 } else { upstream },
                upstream,
                cluster,
            },
        );
    }

    /// The call's record, written straight into its logs' batches (no `Record` built; the
    /// duration is subtracted on the writer thread).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn log_line(
        &self,
        lg: &mut Logged,
        status: u8,
        flags: Flags,
        upstream: Option<SocketAddr>,
        cluster: Option<&str>,
        bytes_sent: usize,
        ended: Instant,
    ) {
        let Some(log) = &self.l.log else { return };
        let r = &mut lg.rec;
        r.ended = ended;
        r.status = status;
        r.flags = flags;
        // Frames are at most `config::FRAME_BYTES_MAX_LIMIT` (256 MiB) long.
        r.bytes_sent = u32::try_from(bytes_sent).unwrap_or(u32::MAX);
        (r.remote, r.local) = self.log_keys;
        // Most calls repeat the last line of their log (checked inline, without the
        // `DubboLine` built).
        if !log.repeat_dubbo(r, upstream, cluster) {
            self.log_new(log, lg, upstream, cluster);
        }
    }

    /// [`DownConn::log_line`] of a call that is not a repeat of its log's last line.
    #[inline(never)]
    fn log_new(
        &self,
        log: &ListenerLog,
        lg: &Logged,
        upstream: Option<SocketAddr>,
        cluster: Option<&str>,
    ) {
        log.write_dubbo_new(&crate::access_log::DubboLine {
            rec: &lg.rec,
            upstream,
            conn: &self.addrs,
            upstream_cluster: cluster,
            call: log.shows_dubbo.then(|| lg.call()),
        });
    }

    /// Wakes the reader if it waits for room under `pending_requests_per_connection_max`
    /// (after a request left `inflight`), and the writer when nothing is left in flight: a
    /// caller whose reader is done closes then, also when the last request was one-way (no
    /// answer is queued to wake the writer).
    pub fn room_maybe(&self) {
        if self.has_room() {
            self.room.notify();
        }
        if self.inflight.get() == 0 {
            self.out_ready.notify();
        }
    }

    fn push(&self, frame: Bytes) {
        if self.closed.get() || self.cut.get().is_some() {
            return;
        }
        let len = frame.len() + QUEUED_FRAME_OVERHEAD_BYTES;
        let (queued, max) = (self.out_bytes.get(), self.l.output_bytes_max);
        if queued >= max && queued + len > 2 * max {
            // Already over the limit (the reader stopped), and answers to requests in flight
            // keep coming: the consumer does not read. One answer alone never trips this.
            self.cut.set(Some(Cut::OutputOverflow));
            self.watch.notify();
            return;
        }
        self.out_bytes.set(queued + len);
        self.l.budget.charge(len);
        if queued + len >= max && self.full_since.get().is_none() {
            self.full_since.set(Some(Instant::now()));
            self.watch.notify();
        }
        self.out.borrow_mut().push_back(frame);
        self.out_ready.notify();
    }

    /// The writer is done with `frame` (copied into its batch, or written).
    fn taken(&self, frame: &Bytes) {
        let len = frame.len() + QUEUED_FRAME_OVERHEAD_BYTES;
        debug_assert!(self.out_bytes.get() >= len);
        let left = self.out_bytes.get().saturating_sub(len);
        self.out_bytes.set(left);
        self.l.budget.release(len);
        if left < self.l.output_bytes_max && self.full_since.take().is_some() {
            self.room.notify();
        }
    }

    /// The reader may read: room under both the in-flight and the output limits.
    fn has_room(&self) -> bool {
        self.inflight.get() < self.l.pending_max && self.out_bytes.get() < self.l.output_bytes_max
    }

    /// Every request answered and every answer written.
    fn is_quiet(&self) -> bool {
        self.inflight.get() == 0 && self.out.borrow().is_empty() && !self.writing.get()
    }

    /// Drops every queued answer (nobody will read them) and gives their bytes back.
    fn clear_out(&self) {
        self.out.borrow_mut().clear();
        self.l.budget.release(self.out_bytes.replace(0));
    }
}

/// Whatever is still queued when the last reference goes (the connection was cut, or ended
/// with answers it never took) is given back to the budget.
impl Drop for DownConn {
    fn drop(&mut self) {
        self.l.budget.release(self.out_bytes.get());
    }
}

/// Why the watcher closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    FirstFrame,
    Heartbeat,
    Idle,
    OutputStall,
    OutputOverflow,
}

/// Runs the connection's timers; returns when one of them (or an overflowing queue) ends it.
/// Wakes only at the earliest timer (or when the queue first fills), never per request.
async fn watch(conn: &Rc<DownConn>, accepted: Instant) -> Cut {
    let t = conn.l.timers;
    // The idle timer is checked at `idle_check`; busy then, it is checked again one idle
    // period later (a connection is closed between 1 and 2 idle periods after its last use).
    let mut idle_check = accepted + t.idle;
    loop {
        if let Some(c) = conn.cut.get() {
            return c;
        }
        let now = Instant::now();
        if !conn.greeted.get() && now >= accepted + t.first_frame {
            return Cut::FirstFrame;
        }
        // While we do not read, the consumer's heartbeats cannot be seen.
        let heartbeat_at = (!conn.paused.get()).then(|| conn.last_read.get() + t.heartbeat);
        if heartbeat_at.is_some_and(|h| now >= h) {
            return Cut::Heartbeat;
        }
        if conn
            .full_since
            .get()
            .is_some_and(|s| now >= s + t.output_stall)
        {
            return Cut::OutputStall;
        }
        if now >= idle_check {
            let busy = conn.inflight.get() > 0 || conn.out_bytes.get() > 0;
            let idle_at = conn.last_request.get() + t.idle;
            match (busy, idle_at <= now) {
                (false, true) => return Cut::Idle,
                (false, false) => idle_check = idle_at,
                (true, _) => idle_check = now + t.idle,
            }
        }
        let mut wake = heartbeat_at.map_or(idle_check, |h| h.min(idle_check));
        if !conn.greeted.get() {
            wake = wake.min(accepted + t.first_frame);
        }
        if let Some(s) = conn.full_since.get() {
            wake = wake.min(s + t.output_stall);
        }
        shard::monoio::select! {
            _ = shard::monoio::time::sleep_until(wake.into()) => {}
            _ = conn.watch.wait() => {}
        }
    }
}

/// The original destination of a caller connection, for routes to `original_destination`
/// clusters (Istio's inbound `inbound|PORT||`): only while the listener's routes use such a
/// cluster; on a bound listener never its own address (a connection that was not intercepted
/// would be sent back to the listener).
fn original_dst<S: crate::io::Conn>(stream: &S, l: &DubboListener) -> Option<SocketAddr> {
    let routes = l.routes.get();
    if !routes.pools.iter().any(|p| p.lb.original_destination) {
        return None;
    }
    let d = stream.original_dst()?;
    match l.bound {
        Some(own)
            if d.port() == own.port() && (own.ip().is_unspecified() || own.ip() == d.ip()) =>
        {
            None
        }
        _ => Some(d),
    }
}

/// Serves one consumer connection, on the kernel or on the DPDK path (`S`: `crate::io::Conn`).
/// When `drain` starts (the process drains, or a config update removed the listener) the
/// caller is told to leave and the connection closes once idle; at the drain's deadline it is
/// closed whatever it is doing. Returns whether the deadline cut it (it was not closed yet; a
/// connection we closed whose caller has not closed its side yet does not count).
pub async fn serve<S: crate::io::Conn>(stream: S, l: Rc<DubboListener>, drain: &Drain) -> bool {
    serve_carried(stream, l, drain, None, None).await
}

/// [`serve`] for a connection a hot-upgrade predecessor handed over, with the bytes it read
/// and did not forward (`carried`): they are decoded before anything new is read. `mx`: what
/// the caller's sidecar sent in Istio's in-band metadata exchange (its payload).
pub async fn serve_carried<S: crate::io::Conn>(
    stream: S,
    l: Rc<DubboListener>,
    drain: &Drain,
    carried: Option<Vec<u8>>,
    mx: Option<&[u8]>,
) -> bool {
    let _ = stream.set_nodelay(true);
    let accepted = Instant::now();
    let adopted = carried.is_some();
    if adopted {
        l.stats.inc(l.ids.cx_adopted);
    }
    let addrs = match (&l.log, &l.trace) {
        (Some(_), _) | (_, Some(_)) => stream.addrs(),
        _ => (None, None),
    };
    let (peer, meta) = match &l.istio {
        Some(i) => (
            i.peer(stream.peer_principal().as_ref().map(|p| p.as_deref())),
            i.peer_metadata_in_band(mx),
        ),
        None => Default::default(),
    };
    let conn_l_rbac = l
        .rbac
        .as_ref()
        .map(|_| crate::filter::rbac::ConnPeer::new(stream.rbac_facts()));
    let original_dst = original_dst(&stream, &l);
    let conn = Rc::new(DownConn {
        l,
        out: RefCell::new(VecDeque::new()),
        out_bytes: Cell::new(0),
        full_since: Cell::new(None),
        out_ready: Notify::new(),
        // An adopted connection spoke to the predecessor already.
        greeted: Cell::new(adopted),
        last_read: Cell::new(accepted),
        last_read_wall: Cell::new(crate::trace::unix_ns(SystemTime::now())),
        last_request: Cell::new(accepted),
        paused: Cell::new(false),
        cut: Cell::new(None),
        watch: Notify::new(),
        inflight: Cell::new(0),
        room: Notify::new(),
        closed: Cell::new(false),
        read_done: Cell::new(false),
        draining: Cell::new(false),
        draining_since: Cell::new(None),
        finished: Event::new(),
        addrs,
        log_keys: (addr_key(addrs.0), addr_key(addrs.1)),
        peer,
        meta,
        rbac_peer: conn_l_rbac,
        handover_fd: stream.handover_fd(),
        original_dst,
        handover: Event::new(),
        handover_to: RefCell::new(None),
        read_stopped: Cell::new(false),
        quiet: Notify::new(),
        writing: Cell::new(false),
        handed_over: Cell::new(false),
    });
    let (mut r, mut w) = stream.into_split();
    let cut = shard::monoio::select! {
        _ = async {
            shard::monoio::join!(
                read_loop(&conn, &mut r, carried),
                write_loop(&conn, &mut w),
                announce_drain(&conn, drain)
            )
        } => false,
        // After our FIN the reader waits for the caller's (so that nothing it sends meanwhile
        // is answered with a reset that could discard the answers it has not read yet); at the
        // deadline it stops waiting.
        _ = drain.deadline() => !conn.finished.is_set(),
        // Counted inside the branch: once it completes, select! drops the other branches'
        // futures, which own the socket, before any handler runs; a peer that sees the close
        // must find it counted.
        _ = async { closed_by(&conn, watch(&conn, accepted).await) } => false,
    };
    if cut {
        tracing::debug!(listener = %conn.l.name, in_flight = conn.inflight.get(), "drain timeout: closing the connection");
    }
    if conn.handed_over.get() {
        // The successor serves the socket: our descriptor goes, without a FIN.
        S::close_handed_over(r, w);
    }
    conn.closed.set(true);
    // Nobody takes the answers still queued any more (requests in flight keep `conn` alive
    // until they end, but push nothing now): their bytes go back to the budget.
    conn.clear_out();
    cut
}

/// Counts and logs a connection the watcher closes.
fn closed_by(conn: &DownConn, why: Cut) {
    let (l, ids) = (&conn.l, &conn.l.ids);
    let (stat, what) = match why {
        Cut::FirstFrame => (ids.cx_first_frame_timeout, "no first frame in time"),
        Cut::Heartbeat => (
            ids.cx_heartbeat_timeout,
            "sent nothing, not even a heartbeat, in time",
        ),
        Cut::Idle => (ids.cx_idle_timeout, "idle"),
        Cut::OutputStall => (
            ids.cx_output_full,
            "does not read its answers (output queue stayed full)",
        ),
        Cut::OutputOverflow => (
            ids.cx_output_full,
            "does not read its answers (output queue overflowed)",
        ),
    };
    l.stats.inc(stat);
    tracing::debug!(listener = %l.name, in_flight = conn.inflight.get(), queued_bytes = conn.out_bytes.get(), "closing the connection: {what}");
}

/// When the shard drains: tell the caller this process is going away (Dubbo's readonly event,
/// so a well-behaved consumer sends new requests elsewhere) and let the writer close the
/// connection once it has been idle for [`DRAIN_QUIET_MS`].
async fn announce_drain(conn: &Rc<DownConn>, drain: &Drain) {
    shard::monoio::select! {
        _ = drain.started() => {}
        _ = conn.finished.wait() => return,
    }
    shard::monoio::select! {
        _ = shard::monoio::time::sleep(Duration::from_millis(crate::filter::DRAIN_ANNOUNCE_DELAY_MS)) => {}
        _ = conn.finished.wait() => return,
    }
    if conn.closed.get() || conn.read_done.get() {
        return;
    }
    if let (Some(_), Some(to)) = (conn.handover_fd, drain.handover()) {
        // A successor adopts it: the reader stops at a frame boundary and hands it over once
        // its requests are answered (or drains it as below).
        *conn.handover_to.borrow_mut() = Some(to);
        conn.handover.set();
        return;
    }
    tell_readonly(conn);
}

/// Dubbo's readonly event: the caller sends new requests elsewhere; we close once idle.
fn tell_readonly(conn: &DownConn) {
    conn.push(wire::readonly_event());
    conn.draining.set(true);
    conn.draining_since.set(Some(Instant::now()));
    conn.out_ready.notify();
}

async fn write_loop<W: AsyncWriteRent>(conn: &Rc<DownConn>, w: &mut W) {
    let mut batch = Vec::new();
    // The last pass wrote answers (as opposed to waking with nothing to write).
    let mut wrote = false;
    loop {
        if conn.handed_over.get() {
            // The successor serves the socket: no FIN.
            conn.finished.set();
            return;
        }
        if conn.out.borrow().is_empty() {
            let idle = conn.inflight.get() == 0;
            if conn.read_stopped.get() && idle && !conn.closed.get() {
                // Stopped for a hand-over and quiet: tell the reader, wait for its decision.
                conn.quiet.notify();
                conn.out_ready.wait().await;
                continue;
            }
            if conn.closed.get() || (conn.read_done.get() && idle) {
                let _ = w.shutdown().await;
                conn.finished.set();
                return;
            }
            if conn.draining.get() && idle {
                // Draining and idle. A request the caller sent before it saw our readonly event
                // may still arrive, so close only once no request has come for a quiet period.
                // A caller that ignores readonly events (sofa-rpc-node) keeps the line busy:
                // after the grace period it is closed right behind the answer that left it with
                // nothing in flight, before it can send again. Closing anywhere else in its gap
                // between two calls (as a timer ending with the grace period did) crosses the
                // FIN with its next request, which then fails with "socket closed".
                let since = conn.draining_since.get().unwrap_or_else(Instant::now);
                let grace_over = since.elapsed() >= Duration::from_millis(DRAIN_GRACE_MS);
                if grace_over && std::mem::take(&mut wrote) {
                    close_draining(conn, w).await;
                    return;
                }
                shard::monoio::select! {
                    _ = shard::monoio::time::sleep(Duration::from_millis(DRAIN_QUIET_MS)) => {
                        if conn.out.borrow().is_empty() && conn.inflight.get() == 0 {
                            close_draining(conn, w).await;
                            return;
                        }
                    }
                    _ = conn.out_ready.wait() => {}
                }
                continue;
            }
            wrote = false;
            {
                let mut out = conn.out.borrow_mut();
                if out.capacity() > OUT_SLOTS_KEPT {
                    out.shrink_to(OUT_SLOTS_KEPT);
                }
            }
            conn.out_ready.wait().await;
            continue;
        }
        conn.writing.set(true);
        let written = crate::io::write_queue(&conn.out, &mut batch, w, |f| conn.taken(f)).await;
        conn.writing.set(false);
        if let Err(e) = written {
            tracing::debug!(listener = %conn.l.name, error = %e, "downstream write failed");
            conn.closed.set(true);
            conn.clear_out();
            conn.finished.set();
            return;
        }
        wrote = true;
    }
}

/// Ends a drained connection: FIN to the caller; from now on the reader forwards nothing.
async fn close_draining<W: AsyncWriteRent>(conn: &DownConn, w: &mut W) {
    conn.closed.set(true);
    let _ = w.shutdown().await;
    conn.finished.set();
}

async fn read_loop<R: StopRead>(conn: &Rc<DownConn>, r: &mut R, carried: Option<Vec<u8>>) {
    let l = conn.l.clone();
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // Bytes a hot-upgrade predecessor read from this connection and did not forward: the
    // start of its next frame, read before anything new.
    if let Some(c) = carried {
        buf.extend_from_slice(&c);
        buf.reserve(READ_CHUNK_BYTES / 4);
    }
    // Until a hand-over falls back, a hot upgrade can stop the reads.
    let mut may_hand_over = conn.handover_fd.is_some();
    let mut stopper = R::Stopper::default();
    // A large frame read in part holds its room: charged beyond the first chunk.
    let mut held = Charge::new(l.budget.clone());
    // Bytes of a shed large request still to be discarded as they arrive.
    let mut skip: usize = 0;
    'read: loop {
        loop {
            if skip > 0 {
                let n = skip.min(buf.len());
                buf.advance(n);
                skip -= n;
                if skip > 0 {
                    buf.reserve(READ_CHUNK_BYTES);
                    break;
                }
            }
            match wire::next_frame(&mut buf, l.frame_bytes_max) {
                Ok(wire::Next::Frame(h, frame)) => {
                    // The frame is out of the buffer: its bytes are charged where it goes.
                    held.set(0);
                    if let Err(()) = on_frame(conn, h, frame) {
                        break 'read;
                    }
                }
                Ok(wire::Next::NeedMore(n)) => {
                    if held.is_zero() && !l.budget.admits() {
                        if let Some(h) = wire::large_request(&buf, n) {
                            // A new large request while the shard is over its budget: shed
                            // from its header, its body discarded instead of buffered.
                            conn.greeted.set(true);
                            l.stats.inc(l.ids.rq_total);
                            if !h.two_way {
                                l.stats.inc(l.ids.rq_oneway);
                            }
                            shed(conn, &h, buf.len() + n);
                            skip = buf.len() + n;
                            continue;
                        }
                    }
                    buf.reserve(n.max(READ_CHUNK_BYTES / 4));
                    held.set(wire::large_frame_room(&buf, n));
                    break;
                }
                Err(e) => {
                    l.stats.inc(l.ids.rq_bad);
                    tracing::debug!(listener = %l.name, error = %e, "bad frame; closing");
                    if let Some(id) = e.request_id() {
                        conn.local_reply(id, &LocalError::BadFrame(e), None);
                    }
                    break 'read;
                }
            }
        }
        if !conn.has_room() {
            conn.paused.set(true);
            while !conn.has_room() && !conn.closed.get() {
                if may_hand_over {
                    shard::monoio::select! {
                        _ = conn.room.wait() => {}
                        _ = conn.handover.wait() => break,
                    }
                } else {
                    conn.room.wait().await;
                }
            }
            conn.paused.set(false);
            conn.mark_read();
        }
        if conn.closed.get() {
            break;
        }
        let (res, b, stopped) = if may_hand_over {
            r.read_until(buf, &conn.handover, &mut stopper).await
        } else {
            let (res, b) = crate::io::read_append(r, buf).await;
            (res, b, false)
        };
        buf = b;
        if stopped {
            // At a frame boundary: `buf` holds the start of the next frame and whatever the
            // cancelled read brought, none of it forwarded.
            match &res {
                Ok(0) => break,
                Err(e) if e.kind() != std::io::ErrorKind::Interrupted => break,
                _ => {}
            }
            if hand_over(conn, &buf, skip > 0).await {
                return;
            }
            // It drains here: what was read meanwhile is served first.
            may_hand_over = false;
            continue;
        }
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => conn.mark_read(),
        }
    }
    conn.read_done.set(true);
    conn.out_ready.notify();
}

/// Hot upgrade: the reader stopped at a frame boundary with `unread` not forwarded. Waits up to
/// [`HANDOVER_WAIT_MS`] for every request in flight to be answered and written, then hands a
/// duplicate of the socket and `unread` to the successor; the writer then ends without a FIN.
/// `false`: it drains here instead (readonly event, close once idle), its answers still due.
async fn hand_over(conn: &Rc<DownConn>, unread: &[u8], mid_discard: bool) -> bool {
    let l = &conn.l;
    // The reader stopped just now: from here until a successor's shard reads it, the
    // connection pauses.
    let paused_at_ns = hotswap::monotonic_ns();
    let to = conn.handover_to.borrow_mut().take();
    let movable = !mid_discard && unread.len() <= HANDOVER_UNREAD_BYTES_MAX;
    let quiet = match (&to, movable) {
        (Some(_), true) => {
            conn.read_stopped.set(true);
            conn.out_ready.notify();
            let quiet = shard::monoio::select! {
                _ = async {
                    while !conn.is_quiet() {
                        conn.quiet.wait().await;
                    }
                } => true,
                _ = shard::monoio::time::sleep(Duration::from_millis(HANDOVER_WAIT_MS)) => false,
                _ = conn.finished.wait() => false,
            };
            conn.read_stopped.set(false);
            tracing::debug!(
                listener = %l.name,
                quiet,
                waited_us = hotswap::monotonic_ns().saturating_sub(paused_at_ns) / 1000,
                "hot upgrade: stopped connection waited for its requests in flight"
            );
            quiet
        }
        _ => false,
    };
    // Checked again with no await in between: nothing can be queued or sent from here on.
    if let (true, Some(to), Some(fd)) = (quiet, to, conn.handover_fd) {
        let moved = !conn.closed.get()
            && conn.cut.get().is_none()
            && conn.is_quiet()
            && match shard::sockopt::dup_socket(fd) {
                Ok(fd) => to.hand_over(HandedOver {
                    listener: l.name.clone(),
                    fd,
                    unread: unread.to_vec(),
                    paused_at_ns,
                    upstream: None,
                }),
                Err(e) => {
                    tracing::warn!(listener = %l.name, error = %e, "hot upgrade: cannot duplicate a connection's socket");
                    false
                }
            };
        if moved {
            l.stats.inc(l.ids.cx_handed_over);
            conn.handed_over.set(true);
            conn.closed.set(true);
            conn.out_ready.notify();
            return true;
        }
    }
    l.stats.inc(l.ids.cx_handover_fallback);
    tracing::debug!(
        listener = %l.name,
        in_flight = conn.inflight.get(),
        unread = unread.len(),
        "hot upgrade: connection not handed over; draining it here"
    );
    tell_readonly(conn);
    false
}

/// Handles one whole frame from the consumer. `Err(())` closes the connection (after any reply
/// queued for it is written).
fn on_frame(conn: &Rc<DownConn>, h: wire::Header, frame: BytesMut) -> Result<(), ()> {
    let l = &conn.l;
    conn.greeted.set(true);
    if conn.closed.get() {
        // It crossed our FIN (a drained connection): its caller sees the close and cannot get
        // an answer, so it is not forwarded (nor counted) to run with nobody waiting.
        tracing::debug!(listener = %l.name, id = h.id, "request after close; not forwarded");
        return Err(());
    }
    if h.event {
        if h.request && h.two_way {
            l.stats.inc(l.ids.rq_heartbeat);
            conn.push(wire::heartbeat_response(h.id));
        }
        return Ok(());
    }
    if !h.request {
        // Consumers don't send responses: the stream is not what we think it is.
        l.stats.inc(l.ids.rq_bad);
        tracing::debug!(listener = %l.name, id = h.id, "response frame from a consumer; closing");
        let lg = l.capture(&h, frame.len(), None, conn.read_at());
        conn.local_reply_logged(h.id, &LocalError::ResponseFromConsumer, None, lg, None);
        return Err(());
    }
    l.stats.inc(l.ids.rq_total);
    conn.last_request.set(conn.last_read.get());
    if !h.two_way {
        l.stats.inc(l.ids.rq_oneway);
    }
    if !l.budget.admits() {
        // The shard holds too much buffered; requests already admitted go on.
        shed(conn, &h, frame.len());
        return Ok(());
    }
    // This request routes on the routes current now (an Rc, so an update cannot pull them
    // away mid-request).
    if !authorized(conn, &h, &frame) {
        return Ok(());
    }
    let routes = l.routes.get();
    let Some((action, service, lg, propagate, label)) = route_frame(conn, &h, &frame, &routes)?
    else {
        return Ok(());
    };
    let frame = propagate.apply(frame, &l.trace_arena);
    let counted = Counted {
        route: routes.route_ids[action.route_index.unwrap_or(routes.route_ids.len() - 1)],
        service,
    };
    counted.inc(&l.stats, |c| c.rq_total);
    if let Some(limits) = &routes.limits {
        if let Some(limit) = limits.for_route(action.route_index) {
            if !limit.admit(&l.stats) {
                l.stats.inc(l.ids.rq_rate_limited);
                if h.two_way {
                    let e = LocalError::RateLimited {
                        listener: &l.name,
                        bucket: limit.config(),
                    };
                    conn.local_reply_logged(h.id, &e, Some(counted), lg, None);
                }
                return Ok(());
            }
        }
    }
    // The route's concurrency limit: a two-way call holds a place until it ends, whichever way.
    let place = match h.two_way {
        true => routes.concurrency_place(action.route_index),
        false => Ok(None),
    };
    let slot = match place {
        Ok(slot) => slot,
        Err(limit) => {
            l.stats.inc(l.ids.rq_concurrency_limited);
            let e = LocalError::ConcurrencyLimited { limit };
            conn.local_reply_logged(h.id, &e, Some(counted), lg, None);
            return Ok(());
        }
    };
    let pool = &routes.pools[action.pick_cluster(l.roll())];
    let timeout: Duration = action.timeout.unwrap_or(pool.timeout);
    let rq = Routed1 {
        id: h.id,
        two_way: h.two_way,
        timeout,
        retry: action.retry,
        counted,
        label,
        slot,
    };
    let fault = match action.fault(&l.dice) {
        Some(_)
            if action
                .fault
                .and_then(|f| f.max_active_faults)
                .is_some_and(|m| l.faults_active.get() >= m) =>
        {
            l.stats.inc(l.ids.fault.overflow);
            None
        }
        f => f,
    };
    // A copy to each shadow cluster the route's mirror policies pick (two-way and one-way
    // requests that go on: an aborted one is not mirrored, a delayed one is, when it is
    // routed).
    if !action.mirrors.is_empty() && fault.is_none_or(|f| f.abort.is_none()) {
        for shadow in action.mirrors(&l.dice) {
            routes.pools[shadow].mirror(&frame, timeout, label);
        }
    }
    match fault {
        Some(f) if f.delay.is_some() => delay(conn, pool, frame, rq, lg, f),
        Some(f) => abort(conn, rq, lg, f.abort.unwrap_or_default()),
        None => send(conn, pool, frame, rq, lg),
    }
    Ok(())
}

/// What a routed request carries to its pool.
struct Routed1 {
    id: u64,
    two_way: bool,
    timeout: Duration,
    retry: Option<crate::route::RetryPolicy>,
    counted: Counted,
    /// Its traffic label, when the listener reads them.
    label: Option<crate::cluster::Label>,
    /// Its place under the route's `max_concurrent_requests`, held until it ends.
    slot: Option<crate::filter::ratelimit::Slot>,
}

/// A route's fault delay holds the request for its time (it counts as in flight on its
/// connection meanwhile, and its frame against the shard's buffer budget); a connection that
/// closes first drops it. Then it is forwarded, or answered with the fault's abort.
fn delay(
    conn: &Rc<DownConn>,
    pool: &Rc<ClusterPool>,
    frame: BytesMut,
    rq: Routed1,
    lg: Option<Box<Logged>>,
    f: crate::route::Injected,
) {
    let l = &conn.l;
    l.stats.inc(l.ids.fault.delays_injected);
    l.stats.inc(l.ids.fault.active);
    l.faults_active.set(l.faults_active.get() + 1);
    conn.inflight.set(conn.inflight.get() + 1);
    let mut held = Charge::new(l.budget.clone());
    held.set(frame.len());
    let (conn, pool) = (conn.clone(), pool.clone());
    let d = f.delay.unwrap_or_default();
    shard::monoio::spawn(async move {
        let gone = shard::monoio::select! {
            _ = shard::monoio::time::sleep(d) => false,
            _ = conn.finished.wait() => true,
        };
        drop(held);
        let l = &conn.l;
        l.stats.dec(l.ids.fault.active);
        l.faults_active.set(l.faults_active.get().saturating_sub(1));
        conn.inflight.set(conn.inflight.get().saturating_sub(1));
        conn.room_maybe();
        if gone || conn.closed.get() {
            return;
        }
        match f.abort {
            Some(code) => abort(&conn, rq, lg, code),
            None => send(&conn, &pool, frame, rq, lg),
        }
    });
}

/// Answers a request with the route's fault abort status (a one-way one is dropped).
fn abort(conn: &Rc<DownConn>, rq: Routed1, lg: Option<Box<Logged>>, code: u32) {
    let l = &conn.l;
    l.stats.inc(l.ids.fault.aborts_injected);
    let e = LocalError::FaultAbort(code as u8);
    if rq.two_way {
        conn.local_reply_logged(rq.id, &e, Some(rq.counted), lg, None);
    } else if let Some(lg) = lg {
        conn.log_call(lg, 0, e.flags(), None, None, 0);
    }
}

/// Forwards a request to `pool`, or answers it when the pool refuses.
fn send(
    conn: &Rc<DownConn>,
    pool: &Rc<ClusterPool>,
    frame: BytesMut,
    rq: Routed1,
    lg: Option<Box<Logged>>,
) {
    let l = &conn.l;
    let Routed1 {
        id,
        two_way,
        timeout,
        retry,
        counted,
        label,
        slot,
    } = rq;
    // A one-way request's record stays here: it is logged as it leaves (nothing comes back).
    let (lg, oneway_lg) = if two_way { (lg, None) } else { (None, lg) };
    let cluster = Some(&*pool.lb.name);
    let bytes_in = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    let (refused, lg) = match pool.forward(
        frame, id, two_way, timeout, retry, label, conn, counted, lg, slot,
    ) {
        Ok(()) => {
            if let Some(lg) = oneway_lg {
                conn.log_call(lg, 0, Flags::NONE, None, cluster, 0);
            }
            return;
        }
        Err((ForwardError::NoHealthyEndpoint, lg)) => {
            l.stats.inc(l.ids.rq_no_healthy_upstream);
            (LocalError::NoHealthyEndpoint(&pool.lb.name), lg)
        }
        Err((ForwardError::CircuitOpen { limit }, lg)) => {
            l.stats.inc(l.ids.rq_overflow);
            let e = LocalError::CircuitOpen {
                cluster: &pool.lb.name,
                limit,
            };
            (e, lg)
        }
        Err((ForwardError::PendingOverflow { limit }, lg)) => {
            l.stats.inc(l.ids.rq_overflow);
            let e = LocalError::PendingOverflow {
                cluster: &pool.lb.name,
                limit,
            };
            (e, lg)
        }
        Err((ForwardError::Overflow { addr, limit }, lg)) => {
            l.stats.inc(l.ids.rq_overflow);
            (LocalError::Overflow { addr, limit }, lg)
        }
    };
    if two_way {
        let len = conn.local_reply_logged(id, &refused, Some(counted), lg, cluster);
        let (status, flags) = (refused.status().0, refused.flags());
        conn.count_istio(
            Some(&pool.lb),
            status,
            flags,
            conn.last_read.get(),
            (bytes_in, len),
            None,
        );
    } else if let Some(lg) = oneway_lg {
        conn.log_call(lg, 0, refused.flags(), refused.upstream(), cluster, 0);
    }
}

/// A routed request: its route's action, its (interface, method) counters, its access-log
/// (and span) record, what its trace context needs before it is forwarded, and its traffic
/// label (when the listener reads them).
type Routed<'r> = (
    &'r Action,
    RequestStatIds,
    Option<Box<Logged>>,
    Propagate,
    Option<crate::cluster::Label>,
);

/// What a traced request's frame needs so the provider sees ringside's span as its parent.
#[derive(Clone, Copy, Debug)]
enum Propagate {
    /// Not traced, or its context goes on as it came (unsampled).
    Untouched,
    /// Span ids rewritten in place (same length: no copy): up to two (frame offset, hex).
    Patch([Option<(usize, [u8; 16])>; 2]),
    /// No context arrived: a `traceparent` attachment of these ids is added at this frame
    /// offset (the attachments map's first entry; a copy of the frame, the one case that
    /// changes a forwarded request's size). Its value is encoded straight into the copy.
    Insert {
        end: usize,
        trace_id: crate::trace::context::TraceId,
        span_id: crate::trace::context::SpanId,
        sampled: bool,
    },
}

impl Propagate {
    /// The trace context of a request ringside traces: how its frame carries ringside's span.
    fn of(d: &Decision, t: &wire::TraceFields<'_>) -> Propagate {
        use crate::trace::context::{self as cx, Format};
        if !d.rewrites() {
            return Propagate::Untouched;
        }
        let Some(inc) = d.incoming else {
            return match t.insert_at {
                Some(end) => Propagate::Insert {
                    end,
                    trace_id: d.trace_id,
                    span_id: d.span_id,
                    sampled: d.sampled,
                },
                None => Propagate::Untouched,
            };
        };
        let ours = cx::span_hex(&d.span_id);
        let caller = || cx::span_hex(&inc.span_id);
        let at = |base: Option<usize>, skip: usize| base.map(|b| b + skip);
        match inc.format {
            Format::W3c => Propagate::Patch([
                at(t.traceparent_at(), cx::TRACEPARENT_PARENT.start).map(|a| (a, ours)),
                None,
            ]),
            Format::B3Single => {
                // {trace}-{span}-{sampling}-{parent}: the span after the trace id; a parent
                // (when the value has one) becomes the caller's span.
                let tl = usize::from(inc.trace_hex_len);
                let has_parent = t.carrier.b3.is_some_and(|v| v.len() == tl + 36);
                Propagate::Patch([
                    at(t.b3_at(), tl + 1).map(|a| (a, ours)),
                    at(t.b3_at(), tl + 20)
                        .filter(|_| has_parent)
                        .map(|a| (a, caller())),
                ])
            }
            Format::B3Multi => Propagate::Patch([
                t.spanid_at().map(|a| (a, ours)),
                t.parentspanid_at()
                    .filter(|_| t.carrier.x_b3_parentspanid.is_some_and(|v| v.len() == 16))
                    .map(|a| (a, caller())),
            ]),
        }
    }

    /// The frame as it goes upstream. Inlined so that a call that is not traced passes
    /// straight through (the call cost every plain request ~27 instructions, callgrind).
    #[inline(always)]
    fn apply(self, frame: BytesMut, arena: &RefCell<BytesMut>) -> BytesMut {
        match self {
            Propagate::Untouched => frame,
            p => p.apply_traced(frame, arena),
        }
    }

    fn apply_traced(self, mut frame: BytesMut, arena: &RefCell<BytesMut>) -> BytesMut {
        match self {
            Propagate::Untouched => frame,
            Propagate::Patch(patches) => {
                for (at, hex) in patches.into_iter().flatten() {
                    if let Some(dst) = frame.get_mut(at..at + 16) {
                        dst.copy_from_slice(&hex);
                    }
                }
                frame
            }
            Propagate::Insert {
                end,
                trace_id,
                span_id,
                sampled,
            } => {
                let mut arena = arena.borrow_mut();
                let n = frame.len() + wire::TRACEPARENT_ENTRY_BYTES;
                if arena.capacity() < n {
                    // A new buffer, or the old one again when every frame cut from it is gone.
                    arena.reserve(TRACE_ARENA_BYTES.max(n));
                }
                match wire::insert_traceparent_into(
                    &mut arena, &frame, end, &trace_id, &span_id, sampled,
                ) {
                    Some(()) => arena.split(),
                    None => frame,
                }
            }
        }
    }
}

/// Sheds a new request because the shard's buffer budget is exhausted: counted, answered 100
/// (a one-way request is dropped).
fn shed(conn: &DownConn, h: &wire::Header, frame_bytes: usize) {
    let l = &conn.l;
    l.budget.shed();
    if h.two_way {
        let e = LocalError::ShedMemory {
            buffered: l.budget.used(),
            limit: l.budget.max(),
        };
        let lg = l.capture(h, frame_bytes, None, conn.read_at());
        conn.local_reply_logged(h.id, &e, None, lg, None);
    }
}

/// Routes a request: its route's action and its (interface, method) counters. A Hessian2
/// request routes on its fields; any other serialization only by the default route. `Ok(None)`:
/// no route (answered, counted); `Err(())`: the request cannot be read (answered; the
/// connection closes).
/// The listener's `dubbo.rbac` filters on a request (counted; none: allowed). A denied
/// two-way request is answered status 40 here. Runs before routing, on the interface and
/// method read in place (a frame that is not Hessian2, or does not parse, shows the rules
/// neither: routing answers a malformed one).
fn authorized(conn: &Rc<DownConn>, h: &wire::Header, frame: &[u8]) -> bool {
    let l = &conn.l;
    let (Some(rbac), Some(peer)) = (&l.rbac, &conn.rbac_peer) else {
        return l.rbac.is_none();
    };
    struct Opaque;
    impl crate::filter::rbac::Request for Opaque {}
    let req = h
        .hessian2
        .then(|| wire::RequestView::parse(frame).ok())
        .flatten();
    let allowed = match &req {
        Some(r) => rbac.allows(&peer.with(r), &l.stats),
        None => rbac.allows(&peer.with(&Opaque), &l.stats),
    };
    if !allowed && h.two_way {
        let lg = l.capture(h, frame.len(), req.as_ref(), conn.read_at());
        conn.local_reply_logged(h.id, &LocalError::RbacDenied, None, lg, None);
    }
    allowed
}

fn route_frame<'r>(
    conn: &Rc<DownConn>,
    h: &wire::Header,
    frame: &[u8],
    routes: &'r DubboRoutes,
) -> Result<Option<Routed<'r>>, ()> {
    let l = &conn.l;
    if !h.hessian2 {
        l.stats.inc(l.ids.rq_opaque);
        let Some(a) = routes.router.default_route() else {
            l.stats.inc(l.ids.rq_no_route);
            if h.two_way {
                let e = LocalError::NoDefaultRoute {
                    listener: &l.name,
                    serialization: h.serialization,
                };
                let lg = l.capture(h, frame.len(), None, conn.read_at());
                conn.local_reply_logged(h.id, &e, None, lg, None);
            }
            return Ok(None);
        };
        let lg = l.capture(h, frame.len(), None, conn.read_at());
        // No label can be read: the request is unlabelled.
        let label = l.labels.as_ref().map(|_| crate::cluster::Label::default());
        return Ok(Some((
            a,
            l.ids.other_service,
            lg,
            Propagate::Untouched,
            label,
        )));
    }
    // A traced listener reads the trace context in the parse's own scan of the attachments.
    // Otherwise routes that read attachments get them read (and checked) once, `group`
    // remembered; else only what routes on interface, version and method is read here (about
    // half the instructions), and traffic labels or the access log scan the attachments when
    // they need them.
    // The trace fields are read into `traced` in place (returned with the request they were
    // moved, ~150 bytes more, through every `Result` on the way: callgrind).
    let mut traced;
    let (parsed, fields) = match &l.trace {
        Some(_) => {
            traced = wire::TraceFields::new(frame);
            let parsed = wire::RequestView::parse_traced_into(frame, &mut traced);
            (parsed, Some(&traced))
        }
        None if routes.router.reads_attachments() => (wire::RequestView::parse(frame), None),
        None => (wire::RequestView::parse_preamble(frame), None),
    };
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            l.stats.inc(l.ids.rq_bad);
            if h.two_way {
                let lg = l.capture(h, frame.len(), None, conn.read_at());
                conn.local_reply_logged(h.id, &LocalError::BadRequest(e), None, lg, None);
            }
            return Err(());
        }
    };
    let service = l.service_ids(req.interface_bytes(), req.method_bytes());
    if let Some(a) = routes.router.route(&req) {
        let (trace, propagate) = match (&l.trace, fields) {
            (Some(t), Some(fields)) => match t.decide(fields.carrier.arrived()) {
                Some(d) => (Some(d), Propagate::of(&d, fields)),
                None => (None, Propagate::Untouched),
            },
            _ => (None, Propagate::Untouched),
        };
        let lg = l.capture_traced(h, frame.len(), Some(&req), trace, conn.read_at());
        let label = l.labels.as_ref().map(|k| req.label(k));
        return Ok(Some((a, service, lg, propagate, label)));
    }
    l.stats.inc(service.rq_total);
    l.stats.inc(service.rsp_local);
    l.stats.inc(l.ids.rq_no_route);
    if h.two_way {
        let e = LocalError::NoRoute {
            interface: req.interface_bytes(),
            version: req.version_bytes(),
            method: req.method_bytes(),
            group: req.group_bytes().unwrap_or(b"-"),
            listener: &l.name,
        };
        let lg = l.capture(h, frame.len(), Some(&req), conn.read_at());
        conn.local_reply_logged(h.id, &e, None, lg, None);
    }
    Ok(None)
}
