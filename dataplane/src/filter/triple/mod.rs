//! The Triple/gRPC filter: HTTP/2 (prior-knowledge h2c) on both sides, each stream routed on
//! its request headers (`:path` → service and method, `:authority`, `tri-*` and any header) and
//! relayed to a stream on a shared upstream connection. Bodies are never decoded.
//!
//! - `headers`: a decoded header list in a reusable buffer;
//! - `router`: compiled routes;
//! - `conn`: one HTTP/2 connection (caller or upstream side) and the stream relay;
//! - `error`: why ringside answers a call itself, and the gRPC status of each reason;
//! - here: the listener's per-shard state, the upstream pools, the stat ids.
pub mod conn;
pub mod error;
pub mod hash;
pub mod headers;
pub mod http1;
pub mod http1_tls;
pub mod mutate;
pub mod request_id;
pub mod router;
pub mod stamp;
pub mod xfcc;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use crate::access_log::{Flags, Headers, Part, Record};
use crate::cluster::{Availability, ShardCluster, UpstreamStatIds, ENDPOINT_FAILURE_BACKOFF_MS};
use crate::config;
use crate::filter::{Budget, RequestStatIds, ServiceStatsMap};
use crate::route::Dice;
use crate::stats::{HistId, Kind, ShardStats, StatId, Stats};

/// gRPC status codes counted one by one (0..=16); others count as 17 (`other`).
pub const GRPC_STATUS_COUNTED: usize = 18;

/// HTTP/2 limits of one connection (what ringside advertises and enforces).
#[derive(Clone, Copy, Debug)]
pub struct H2Limits {
    pub frame_max: u32,
    pub header_list_max: u32,
    pub streams_max: u32,
    pub stream_window: u32,
    pub conn_window: u32,
    pub resets_per_second_max: u32,
    pub control_frames_max: u32,
    /// Caller connections: header bytes decoded beyond the header block bytes received, per
    /// second (HPACK amplification).
    pub amplified_per_second_max: u32,
    pub preface_timeout: Duration,
    /// Caller connections: closed after this long without a stream (the listener's
    /// `idle_timeout_ms`).
    pub idle_timeout: Duration,
}

impl H2Limits {
    pub fn from_config(t: &config::TripleListener, idle_timeout_ms: u64) -> H2Limits {
        H2Limits {
            frame_max: t.frame_bytes_max,
            header_list_max: t.header_list_bytes_max,
            streams_max: t.concurrent_streams_max,
            stream_window: t.stream_window_bytes,
            conn_window: t.connection_window_bytes,
            resets_per_second_max: t.resets_per_second_max,
            control_frames_max: t.outbound_control_frames_max,
            amplified_per_second_max: t.hpack_amplified_bytes_per_second_max,
            preface_timeout: Duration::from_millis(t.preface_timeout_ms),
            idle_timeout: Duration::from_millis(idle_timeout_ms),
        }
    }
}

/// Stat ids of one triple listener.
#[derive(Clone, Debug)]
pub struct TripleStatIds {
    pub rq_total: StatId,
    pub rq_no_route: StatId,
    pub rq_refused: StatId,
    pub rq_bad: StatId,
    pub rq_too_large: StatId,
    pub rq_timeout: StatId,
    pub rq_no_healthy_upstream: StatId,
    /// Calls a local rate limit refused.
    pub rq_rate_limited: StatId,
    /// Calls answered at their route's `max_concurrent_requests`.
    pub rq_concurrency_limited: StatId,
    pub fault: crate::filter::FaultStatIds,
    pub rsp_local: StatId,
    /// Responses by grpc-status (index 17: any other value).
    pub rsp_status: [StatId; GRPC_STATUS_COUNTED],
    pub protocol_error: StatId,
    pub rst_flood: StatId,
    pub hardening: HardeningStatIds,
    pub rq_time: HistId,
    pub other_service: RequestStatIds,
}

impl TripleStatIds {
    pub fn register(st: &Stats, listener: &str) -> Self {
        let t = [("listener", listener)];
        let c = |name| st.add("listener", name, &t, Kind::Counter);
        let other = [
            ("listener", listener),
            ("service", "other"),
            ("method", "other"),
        ];
        let rsp_status = std::array::from_fn(|i| {
            let code = if i + 1 == GRPC_STATUS_COUNTED {
                "other".to_string()
            } else {
                i.to_string()
            };
            let t = [("listener", listener), ("grpc_status", code.as_str())];
            st.add("listener", "triple_rsp_total", &t, Kind::Counter)
        });
        TripleStatIds {
            rq_total: c("triple_rq_total"),
            rq_no_route: c("triple_rq_no_route"),
            rq_refused: c("triple_rq_refused"),
            rq_bad: c("triple_rq_bad"),
            rq_too_large: c("triple_rq_too_large"),
            rq_timeout: c("triple_rq_timeout"),
            rq_no_healthy_upstream: c("triple_rq_no_healthy_upstream"),
            rq_rate_limited: c("triple_rq_rate_limited"),
            rq_concurrency_limited: c("triple_rq_concurrency_limited"),
            fault: crate::filter::FaultStatIds::register(st, listener),
            rsp_local: c("triple_rsp_local"),
            rsp_status,
            protocol_error: c("triple_protocol_error"),
            rst_flood: c("triple_rst_flood"),
            hardening: HardeningStatIds::register(st, &t),
            rq_time: st.add_histogram("listener", "triple_rq_time_us", &t),
            other_service: RequestStatIds::register(st, "triple_service", &other),
        }
    }
}

/// Caller connections and streams ringside sheds (issue 20), per listener.
#[derive(Clone, Copy, Debug)]
pub struct HardeningStatIds {
    /// Calls the caller cancelled (RST_STREAM) before their end.
    pub rq_cancelled: StatId,
    /// Streams ringside reset because the caller broke the protocol on them (WINDOW_UPDATE of
    /// 0, DATA after END_STREAM or past the window, trailers without END_STREAM or repeated):
    /// they count against `resets_per_second_max` like the caller's own resets.
    pub stream_error: StatId,
    /// Calls whose deadline had passed on arrival (`grpc-timeout` under 1 ms): answered
    /// DEADLINE_EXCEEDED without opening an upstream stream.
    pub rq_expired_on_arrival: StatId,
    /// Connections closed for queueing more than `outbound_control_frames_max` control frames.
    pub control_flood: StatId,
    /// Connections closed for making ringside decode more header bytes than they sent, beyond
    /// `hpack_amplified_bytes_per_second_max` per second (HPACK amplification).
    pub header_flood: StatId,
    /// Connections closed because the preface did not arrive in `preface_timeout_ms`.
    pub cx_preface_timeout: StatId,
    /// Connections closed after `idle_timeout_ms` without a stream.
    pub cx_idle_timeout: StatId,
}

impl HardeningStatIds {
    pub fn register(st: &crate::stats::Stats, t: &[(&str, &str)]) -> Self {
        let c = |name| st.add("listener", name, t, crate::stats::Kind::Counter);
        HardeningStatIds {
            rq_cancelled: c("triple_rq_cancelled"),
            stream_error: c("triple_stream_error"),
            rq_expired_on_arrival: c("triple_rq_expired_on_arrival"),
            control_flood: c("triple_control_flood"),
            header_flood: c("triple_header_flood"),
            cx_preface_timeout: c("triple_cx_preface_timeout"),
            cx_idle_timeout: c("triple_cx_idle_timeout"),
        }
    }
}

/// What HTTP/2 upstream connections count, per cluster.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamH2StatIds {
    /// Response headers or trailers over `header_list_bytes_max`: the caller got INTERNAL.
    pub rsp_headers_too_large: StatId,
    /// Streams the upstream broke the protocol on (reset; the caller got INTERNAL).
    pub stream_error: StatId,
    /// Streams the upstream refused unprocessed (GOAWAY above them, or REFUSED_STREAM) and
    /// ringside sent once more on another connection.
    pub rq_retry_refused: StatId,
    /// Connections closed for queueing more than `outbound_control_frames_max` control frames.
    pub control_flood: StatId,
    /// Connections closed after the cluster's `idle_timeout_ms` without a stream.
    pub cx_idle_timeout: StatId,
    /// Connections closed because a keepalive PING went unanswered.
    pub cx_keepalive_timeout: StatId,
}

impl UpstreamH2StatIds {
    pub fn register(st: &crate::stats::Stats, t: &[(&str, &str)]) -> Self {
        let c = |name| st.add("cluster", name, t, crate::stats::Kind::Counter);
        UpstreamH2StatIds {
            rsp_headers_too_large: c("upstream_h2_rsp_headers_too_large"),
            stream_error: c("upstream_h2_stream_error"),
            rq_retry_refused: c("upstream_h2_rq_retry_refused"),
            control_flood: c("upstream_h2_control_flood"),
            cx_idle_timeout: c("upstream_h2_cx_idle_timeout"),
            cx_keepalive_timeout: c("upstream_h2_cx_keepalive_timeout"),
        }
    }
}

/// One call's bookkeeping, kept on the caller's stream.
pub struct Call {
    pub started: Instant,
    /// Request body bytes received so far (`%BYTES_RECEIVED%` in header values).
    pub received: u64,
    pub deadline: Option<Instant>,
    pub headers_sent: bool,
    pub status: Option<u32>,
    pub local: bool,
    pub route: RequestStatIds,
    pub service: RequestStatIds,
    /// The call's access-log record (when the listener logs).
    pub log: Option<Box<Logged>>,
    /// A sampled call's span record (when the listener traces).
    pub trace: Option<Box<Traced>>,
    /// Its route's `retry_policy` and the retries so far, when the route has one.
    pub retry: Option<crate::route::Retry>,
    /// The current try's deadline (`per_try_timeout_ms`), until the response starts.
    pub try_deadline: Option<Instant>,
    /// Its traffic label (`triple.traffic_label`): retries stay within its endpoints.
    pub label: Option<crate::cluster::Label>,
    /// Its hash by its route's `hash_policy` (RING_HASH / MAGLEV clusters): retries keep it.
    pub hash: Option<u64>,
    /// Its place under its route's `max_concurrent_requests`, given back when the stream ends.
    pub slot: Option<crate::filter::ratelimit::Slot>,
    /// Its route's response header mutations, when it has some (also on ringside's own
    /// answers once it is routed, as Envoy's local replies get them).
    pub respond: Option<mutate::Respond>,
    /// The endpoint its current try went to (`%UPSTREAM_HOST%` in a local reply's mutations).
    pub upstream: Option<SocketAddr>,
    /// The cookies its hash generated (its response sets them).
    pub cookies: Option<hash::Generated>,
    /// The external authorization's `response_headers_to_add` (its response gets them).
    pub authz_response_headers: Vec<(crate::filter::ext_authz::HeaderAction, Vec<u8>, Vec<u8>)>,
    /// The request as it came, for a denial after jwt_authn passed it (see [`AsCame`]).
    pub as_came: Option<AsCame>,
}

/// Envoy's connection manager resolves a request's route before its filters run, and
/// jwt_authn clears that route only when a provider's `clear_route_cache` applies: otherwise a
/// denial after the filter (rbac, ext_authz) answers with the route of the request as it came,
/// without the filter's payloads. Kept from the filter's pass until the request is routed.
pub struct AsCame {
    /// The header list before the filter changed it (`None`: it changed nothing).
    pub headers: Option<Box<headers::HeaderList>>,
}

impl AsCame {
    /// What a denial after jwt_authn's pass `p` of the request in `hl` routes by: `None` when
    /// the filter cleared the route (the request as it left it, with its payloads) or no
    /// denial can follow (`denials_follow`: the listener has rbac or ext_authz); `hl` copied
    /// only when the filter is about to change it. Error path only, but kept per call.
    pub fn keep(
        hl: &headers::HeaderList,
        p: &crate::filter::jwt::Passed,
        denials_follow: bool,
    ) -> Option<AsCame> {
        if !denials_follow || p.clears_route_cache() {
            return None;
        }
        Some(AsCame {
            headers: p.changes().then(|| Box::new(hl.clone())),
        })
    }
}

/// What a sampled call keeps until its stream ends, for its span.
pub struct Traced {
    pub decision: crate::trace::Decision,
    start_unix_ns: u64,
    /// The service, then the method (`service_len` bytes of service).
    name: Vec<u8>,
    service_len: usize,
    pub upstream: Option<SocketAddr>,
    pub cluster: Option<Rc<ShardCluster>>,
}

impl Call {
    fn new(l: &TripleListener, now: Instant) -> Call {
        Call {
            started: now,
            received: 0,
            deadline: None,
            headers_sent: false,
            status: None,
            local: false,
            route: l.ids.other_service,
            service: l.ids.other_service,
            log: None,
            trace: None,
            retry: None,
            try_deadline: None,
            label: None,
            hash: None,
            slot: None,
            respond: None,
            authz_response_headers: Vec::new(),
            as_came: None,
            upstream: None,
            cookies: None,
        }
    }
}

/// Spent records kept for reuse per listener and shard.
const LOG_POOL_MAX: usize = 1024;

/// What a logged call keeps until its stream ends: the request headers, response headers and
/// trailers its formats read, where it went, its bytes and how it ended.
pub struct Logged {
    start: SystemTime,
    /// Values of the captured headers, one after the other; `spans[i]`: (name index, end).
    values: Vec<u8>,
    spans: Vec<(usize, usize)>,
    names: Rc<[(Part, String)]>,
    /// Some format reads a response header or trailer.
    reads_response: bool,
    pub upstream: Option<SocketAddr>,
    pub cluster: Option<Rc<ShardCluster>>,
    /// The matched route's name (`%ROUTE_NAME%`; `None`: no route, or an unnamed one).
    pub route: Option<Rc<str>>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub flags: Flags,
    /// Istio's metadata exchange on this call (listeners with `istio_metrics`).
    pub mx: crate::stats::istio::Exchange,
    /// Outbound: the upstream connection's TLS principal, as the listener's metrics label it
    /// (`destination_principal`), set when the response headers arrive.
    pub upstream_peer: crate::stats::istio::PeerId,
}

impl Headers for Logged {
    fn get(&self, part: Part, name: &str) -> Option<&[u8]> {
        let mut from = 0;
        for &(i, end) in &self.spans {
            let (p, n) = &self.names[i];
            if *p == part && n == name {
                return Some(&self.values[from..end]);
            }
            from = end;
        }
        None
    }
}

impl Logged {
    /// Keeps the values of the `part` headers the formats read; `get` finds a header (the
    /// first value of a name) in what was sent to the caller.
    /// Keeps the request headers again, as routing left them (before any response header is
    /// kept): Envoy's router edits the request in place, so its logs read the rewritten
    /// `:path` and `:authority`, `x-envoy-original-path` and the headers routes added.
    pub fn keep_routed_request<'h>(&mut self, get: impl Fn(&[u8]) -> Option<&'h [u8]>) {
        self.values.clear();
        self.spans.clear();
        self.keep(Part::Request, get);
    }

    pub fn keep<'h>(&mut self, part: Part, get: impl Fn(&[u8]) -> Option<&'h [u8]>) {
        if !self.reads_response && part != Part::Request {
            return;
        }
        for (i, (p, name)) in self.names.iter().enumerate() {
            if *p != part {
                continue;
            }
            if let Some(v) = get(name.as_bytes()) {
                self.values.extend_from_slice(v);
                self.spans.push((i, self.values.len()));
            }
        }
    }
}

/// Everything one triple listener's connections on one shard need.
pub struct TripleListener {
    pub name: String,
    /// Router, pools and route stats, swapped by config updates (see the Dubbo listener).
    pub routes: crate::filter::RoutesCell<router::Router, Pool>,
    pub limits: H2Limits,
    pub stats: ShardStats,
    pub ids: TripleStatIds,
    /// The shard's buffer budget: calls are shed while it is exhausted.
    pub budget: Rc<Budget>,
    pub services: Rc<RefCell<ServiceStatsMap>>,
    /// The pair looked up last, in front of `services`.
    pub service_memo: RefCell<crate::filter::ServiceMemo>,
    pub dice: Dice,
    /// Access logs, when the listener has any (one line per stream).
    pub log: Option<Rc<crate::access_log::ListenerLog>>,
    /// Spent call records, reused (no allocation per logged call in steady state).
    pub log_pool: RefCell<Vec<Box<Logged>>>,
    /// Calls held by a fault delay now (against `max_active_faults`).
    pub faults_active: Cell<u32>,
    /// Istio's standard metrics, when the listener has `istio_metrics` (they read the call's
    /// record too: cluster, bytes, flags).
    pub istio: Option<crate::stats::istio::IstioListener>,
    /// Tracing, when the listener has it (a span per sampled call; docs/observability.md).
    pub trace: Option<Rc<crate::trace::ListenerTrace>>,
    /// Spent span records, reused like `log_pool`.
    pub trace_pool: RefCell<Vec<Box<Traced>>>,
    /// The address it listens on; `None` for a virtual listener (`bind: false`), whose
    /// connections were handed over by an `original_destination` listener.
    pub bound: Option<SocketAddr>,
    /// HTTP rbac filters (`triple.rbac`), checked on every call before routing.
    pub rbac: Option<crate::filter::rbac::Rbac>,
    /// External authorization (`triple.ext_authz`), between the rbac filters before it and
    /// those after it.
    pub ext_authz: Option<crate::filter::ext_authz::ExtAuthz>,
    /// JWT authentication (`triple.jwt_authn`), checked on every call before `rbac`.
    pub jwt: Option<std::sync::Arc<crate::filter::jwt::JwtAuthn>>,
    /// Traffic labels (`triple.traffic_label`): the headers a call's label is read from.
    pub labels: Option<crate::cluster::LabelKeys>,
    /// `triple.http1`: connections that do not start with the HTTP/2 preface are HTTP/1.1
    /// ([`http1`]).
    pub http1: bool,
    /// `triple.alpn_override` (Istio's `istio.alpn`): the ALPN of TLS upstream connections.
    pub alpn: UpstreamAlpn,
    /// `x-forwarded-client-cert` on requests: `triple.forward_client_cert` and
    /// `client_cert_details`, and the URI SANs of the listener's certificate (`By`).
    pub xfcc: (config::ForwardClientCert, config::ClientCertDetails),
    pub local_uris: std::sync::Arc<[String]>,
    /// `date`, `server`, `x-envoy-upstream-service-time` on responses.
    pub stamp: stamp::Stamp,
    /// `triple.suppress_envoy_headers`: no `x-envoy-original-path` on rewritten requests.
    pub suppress_envoy_headers: bool,
}

/// A listener's `alpn_override` by the protocol a request goes upstream with: HTTP/2 (Triple
/// and gRPC calls) or HTTP/1.1 (the [`http1`] path); `None`: the cluster's own ALPN.
#[derive(Default)]
pub struct UpstreamAlpn {
    pub http2: crate::io::tls::AlpnOverride,
    pub http11: crate::io::tls::AlpnOverride,
}

impl UpstreamAlpn {
    /// istio-proxy's `istio.alpn`: an empty list overrides nothing.
    pub fn from_config(o: Option<&config::AlpnOverride>) -> UpstreamAlpn {
        let list = |l: &[String]| (!l.is_empty()).then(|| std::sync::Arc::from(l));
        match o {
            None => UpstreamAlpn::default(),
            Some(o) => UpstreamAlpn {
                http2: list(&o.http2),
                http11: list(&o.http11),
            },
        }
    }
}

impl TripleListener {
    /// A span record for a sampled call to `service`/`method` (from the pool when it can).
    fn traced(&self, d: crate::trace::Decision, service: &[u8], method: &[u8]) -> Box<Traced> {
        let mut t = self.trace_pool.borrow_mut().pop().unwrap_or_else(|| {
            Box::new(Traced {
                decision: d,
                start_unix_ns: 0,
                name: Vec::new(),
                service_len: 0,
                upstream: None,
                cluster: None,
            })
        });
        t.decision = d;
        t.start_unix_ns = crate::trace::unix_ns(SystemTime::now());
        t.name.clear();
        t.name.extend_from_slice(service);
        t.service_len = service.len();
        t.name.extend_from_slice(method);
        t.upstream = None;
        t.cluster = None;
        t
    }

    /// Writes a finished sampled call's span; `caller` is the caller's (remote, local) address.
    fn trace_call(&self, c: &mut Call, caller: (Option<SocketAddr>, Option<SocketAddr>)) {
        let (Some(t), Some(mut tr)) = (&self.trace, c.trace.take()) else {
            return;
        };
        let d = &tr.decision;
        let (service, method) = tr.name.split_at(tr.service_len);
        let server = t.kind() == crate::trace::otlp::SPAN_KIND_SERVER;
        t.finish(
            d,
            &crate::trace::SpanData {
                trace_id: &d.trace_id,
                span_id: &d.span_id,
                parent: d.parent.as_ref(),
                kind: t.kind(),
                system: "grpc",
                service,
                method,
                start_unix_ns: tr.start_unix_ns,
                end_unix_ns: crate::trace::unix_ns(SystemTime::now()),
                status: c.status,
                failed: c.status != Some(0),
                peer: if server { caller.0 } else { tr.upstream },
                upstream: tr.upstream,
                cluster: tr.cluster.as_ref().map(|c| c.name.as_str()),
            },
        );
        tr.cluster = None;
        let mut pool = self.trace_pool.borrow_mut();
        if pool.len() < LOG_POOL_MAX {
            pool.push(tr);
        }
    }

    fn roll(&self) -> u32 {
        self.dice.roll()
    }

    fn service_ids(&self, service: &[u8], method: &[u8]) -> RequestStatIds {
        crate::filter::service_ids(
            &self.service_memo,
            &self.services,
            &self.stats,
            "triple_service",
            &self.name,
            ("service", service),
            method,
            self.ids.other_service,
        )
    }

    /// A record of the call whose request headers are `hl` (`None` when nothing is logged).
    fn capture(&self, hl: &headers::HeaderList) -> Option<Box<Logged>> {
        if self.log.is_none() && self.istio.is_none() {
            return None;
        }
        let mut lg = self.log_pool.borrow_mut().pop().unwrap_or_else(|| {
            Box::new(Logged {
                start: SystemTime::UNIX_EPOCH,
                values: Vec::new(),
                spans: Vec::new(),
                names: Rc::from(Vec::new()),
                reads_response: false,
                upstream: None,
                cluster: None,
                route: None,
                bytes_received: 0,
                bytes_sent: 0,
                flags: Flags::NONE,
                mx: Default::default(),
                upstream_peer: Default::default(),
            })
        });
        lg.values.clear();
        lg.spans.clear();
        lg.reads_response = false;
        lg.upstream = None;
        lg.cluster = None;
        lg.route = None;
        lg.bytes_received = 0;
        lg.bytes_sent = 0;
        lg.flags = Flags::NONE;
        lg.mx = Default::default();
        lg.upstream_peer = Default::default();
        let Some(log) = &self.log else {
            return Some(lg);
        };
        // Only a logged call reads the clock of day and copies headers.
        lg.start = SystemTime::now();
        lg.names = log.headers.clone();
        lg.reads_response = log.reads_response;
        lg.keep(Part::Request, |n| hl.get(n));
        Some(lg)
    }

    /// Writes a finished call's access-log line; `caller` is the caller's (remote, local)
    /// address.
    fn log_call(
        &self,
        c: &mut Call,
        caller: (Option<SocketAddr>, Option<SocketAddr>),
        peer: crate::stats::istio::PeerId,
    ) {
        let Some(lg) = c.log.take() else {
            return;
        };
        let mut flags = lg.flags;
        if c.status.is_none() {
            // Cancelled by the caller, or its connection is gone.
            flags = flags | Flags::DOWNSTREAM_CONNECTION_TERMINATION;
        }
        if let Some(istio) = &self.istio {
            let text = || flags.short_string();
            let o = crate::stats::istio::Outcome {
                cluster: lg
                    .cluster
                    .as_ref()
                    .map(|c| (c.ids.cx_total, c.name.as_str())),
                code: if c.headers_sent { 200 } else { 0 },
                grpc: c.status,
                flags: (flags.bits(), &text),
                // Inbound: the caller's mutual TLS; outbound: the upstream's certificate.
                peer: if istio.inbound() {
                    peer
                } else {
                    lg.upstream_peer
                },
                meta: lg.mx.peer,
            };
            let us = c.started.elapsed().as_micros() as u64;
            istio.request(&o, us, lg.bytes_received, lg.bytes_sent);
        }
        if let Some(log) = &self.log {
            Self::write_line(log, c, &lg, flags, caller);
        }
        let mut pool = self.log_pool.borrow_mut();
        if pool.len() < LOG_POOL_MAX {
            pool.push(lg);
        }
    }

    fn write_line(
        log: &crate::access_log::ListenerLog,
        c: &Call,
        lg: &Logged,
        flags: Flags,
        caller: (Option<SocketAddr>, Option<SocketAddr>),
    ) {
        log.write(&Record {
            start: lg.start,
            duration: c.started.elapsed(),
            protocol: Some("HTTP/2"),
            response_code: Some(if c.headers_sent { 200 } else { 0 }),
            grpc_status: c.status,
            flags,
            upstream_host: lg.upstream,
            upstream_cluster: lg.cluster.as_ref().map(|c| c.name.as_str()),
            route_name: lg.route.as_deref(),
            downstream_remote: caller.0,
            downstream_local: caller.1,
            bytes_received: lg.bytes_received,
            bytes_sent: lg.bytes_sent,
            headers: lg,
            dubbo: None,
        });
    }

    /// Writes a finished HTTP/1.x exchange's access-log lines and counts it in Istio's metrics
    /// (`request_protocol="http"`), from its record `lg` ([`Self::capture`]: bytes, flags,
    /// upstream, cluster) and the response `code` sent (0: none); `caller` is the caller's
    /// (remote, local) address. The record goes back to the pool.
    fn log_exchange(
        &self,
        mut lg: Box<Logged>,
        started: Instant,
        code: u32,
        caller: (Option<SocketAddr>, Option<SocketAddr>),
        peer: crate::stats::istio::PeerId,
    ) {
        let flags = lg.flags;
        let duration = started.elapsed();
        if let Some(istio) = &self.istio {
            let text = || flags.short_string();
            let o = crate::stats::istio::Outcome {
                cluster: lg
                    .cluster
                    .as_ref()
                    .map(|c| (c.ids.cx_total, c.name.as_str())),
                code,
                grpc: None,
                flags: (flags.bits(), &text),
                // Inbound: the caller's mutual TLS; outbound: the upstream connection's TLS.
                peer: if istio.inbound() {
                    peer
                } else {
                    lg.upstream_peer
                },
                meta: lg.mx.peer,
            };
            istio.request_as(
                crate::stats::istio::Protocol::Http,
                &o,
                duration.as_micros() as u64,
                lg.bytes_received,
                lg.bytes_sent,
            );
        }
        if let Some(log) = &self.log {
            log.write(&Record {
                start: lg.start,
                duration,
                protocol: Some("HTTP/1.1"),
                response_code: Some(code),
                grpc_status: None,
                flags,
                upstream_host: lg.upstream,
                upstream_cluster: lg.cluster.as_ref().map(|c| c.name.as_str()),
                route_name: lg.route.as_deref(),
                downstream_remote: caller.0,
                downstream_local: caller.1,
                bytes_received: lg.bytes_received,
                bytes_sent: lg.bytes_sent,
                headers: &*lg,
                dubbo: None,
            });
        }
        lg.cluster = None;
        lg.route = None;
        let mut pool = self.log_pool.borrow_mut();
        if pool.len() < LOG_POOL_MAX {
            pool.push(lg);
        }
    }

    /// Counts a finished call (called when its stream is forgotten).
    fn end_call(&self, c: &Call) {
        let Some(st) = c.status else {
            // Cancelled by the caller or lost with its connection.
            return;
        };
        self.stats
            .record_us(self.ids.rq_time, c.started.elapsed().as_micros() as u64);
        let i = (st as usize).min(GRPC_STATUS_COUNTED - 1);
        self.stats.inc(self.ids.rsp_status[i]);
        for ids in [&c.route, &c.service] {
            if c.local {
                self.stats.inc(ids.rsp_local);
            } else if st == 0 {
                self.stats.inc(ids.rsp_ok);
            } else {
                self.stats.inc(ids.rsp_error);
            }
        }
    }
}

/// Original destinations one `original_destination` cluster keeps hosts (and their
/// connections) for, per shard: beyond it a host without connections makes room, and with
/// none such the call fails UNAVAILABLE (`upstream_rq_overflow`).
pub const ORIGINAL_DST_HOSTS_MAX: usize = crate::cluster::ORIGINAL_DST_HOSTS_MAX;

/// A cluster's HTTP/2 upstream connections on one shard.
pub struct Pool {
    pub lb: Rc<ShardCluster>,
    /// By endpoint slot, each built on first use.
    hosts: crate::cluster::HostTable<Host>,
    /// `original_destination` clusters: a host per original destination called (at most
    /// [`ORIGINAL_DST_HOSTS_MAX`]), found by address.
    destinations: RefCell<Vec<Rc<Host>>>,
    connections_per_host: usize,
    pub connect_timeout: Duration,
    /// Connections with no stream for this long close; PING keepalive (interval, timeout).
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Envoy's `connection_keepalive` (`http2_keepalive`): replaces the two above.
    pub http2_keepalive: Option<config::Http2Keepalive>,
    /// The cluster's HTTP/2 windows (`http2_stream_window_bytes`,
    /// `http2_connection_window_bytes`), where given.
    pub http2_stream_window: Option<u32>,
    pub http2_connection_window: Option<u32>,
    /// Connections take no new stream once this old and close when done (zero: never).
    pub max_connection_duration: Duration,
    pub stats: ShardStats,
    pub ids: UpstreamStatIds,
    pub h2_ids: UpstreamH2StatIds,
    /// The shard's buffer budget (what its connections queue is charged to it).
    pub budget: Rc<Budget>,
    /// This shard's part of `circuit_breakers.max_requests`, when the cluster has one.
    pub breaker: Option<crate::cluster::RequestBreaker>,
    /// Consecutive-error ejection, when the cluster has `outlier_detection`.
    pub outlier: Option<crate::cluster::OutlierConfig>,
    /// This shard's part of `circuit_breakers.max_retries`.
    pub retries: crate::cluster::RetryBreaker,
    /// This shard's part of `circuit_breakers` `max_connections` and `max_pending_requests`.
    pub conn_breaker: Option<crate::cluster::ConnBreaker>,
    /// With `circuit_breakers`: calls waiting for room on a connection (every connection at
    /// the upstream's stream limit and no new one allowed), oldest first, at most
    /// `max_pending_requests` (this shard's part): (caller connection, stream).
    pub waiting: RefCell<std::collections::VecDeque<(std::rc::Weak<conn::Conn>, u32)>>,
    /// A task sending waiting calls is scheduled.
    pub waking: Cell<bool>,
    /// Shadow copies (`request_mirror_policies`) in flight to this cluster on this shard.
    pub mirrors: crate::cluster::MirrorBudget,
    /// Retries waiting their back-off (`retry_back_off`), in no order; the back-off task
    /// runs while it has some (`backing_off`), woken by `backoff_wake` for an earlier one.
    pub backoff: RefCell<Vec<conn::Parked>>,
    pub backing_off: Cell<bool>,
    pub backoff_wake: shard::Notify,
    /// The back-off's jitter.
    pub dice: crate::route::Dice,
    /// Idle keep-alive upstream connections of HTTP/1.1 requests ([`http1`]; HTTP/1.1 or
    /// HTTP/2 as `upstream_http` says), at most [`http1::IDLE_UPSTREAM_MAX`].
    pub http1_idle: RefCell<Vec<http1::IdleConn>>,
    /// HTTP/2 connections HTTP/1.1 requests share (`upstream_http: http2`, or `auto` where
    /// TLS settled on `h2`): as many streams on each as the upstream allows at once.
    pub http2_conns: RefCell<Vec<Rc<http1::H2Conn>>>,
    /// Their limits: streams at once on one (0: the upstream's alone), requests each (0:
    /// none).
    pub http2_streams_max: u32,
    pub requests_per_connection_max: u32,
    /// The protocol HTTP/1.1 requests are forwarded with (`upstream_http`).
    pub upstream_http: config::UpstreamHttp,
    /// `keep_alpn`: listeners' `alpn_override` does not apply to this cluster.
    pub keep_alpn: bool,
}

/// Why a pool has no connection for a call.
pub enum NoConn {
    /// No endpoint to pick.
    NoEndpoint,
    /// The picked endpoint's connections are all at the upstream's stream limit and no new
    /// one may be opened.
    Full,
}

pub struct Host {
    pub addr: SocketAddr,
    pub index: usize,
    pub pool: Rc<Pool>,
    pub ids: crate::cluster::HostStatIds,
    conns: RefCell<Vec<Rc<conn::Conn>>>,
    next: Cell<usize>,
    down_until: Cell<Option<Instant>>,
    /// Consecutive errors and ejections (`outlier_detection`).
    pub outlier: crate::cluster::Outlier,
    /// Removed from the cluster: never picked again; its connections close once idle.
    pub retired: Cell<bool>,
}

/// A seed for a pool's back-off jitter: differs per pool and per process.
fn jitter_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

impl Pool {
    /// What a `retry_budget` is a share of: this shard's calls to the cluster open upstream
    /// and waiting for room on a connection (Envoy's active and pending requests; HTTP/1.1
    /// requests are not counted); 0 without a budget.
    pub fn retry_load(&self) -> u32 {
        if !self.retries.has_budget() {
            return 0;
        }
        let active = self.breaker.as_ref().map_or(0, |b| b.active());
        active + self.waiting.borrow().len() as u32
    }

    pub fn new(
        c: &config::Cluster,
        lb: Rc<ShardCluster>,
        stats: ShardStats,
        ids: UpstreamStatIds,
        h2_ids: UpstreamH2StatIds,
        budget: Rc<Budget>,
    ) -> Rc<Pool> {
        let pool = Rc::new(Pool {
            lb,
            hosts: crate::cluster::HostTable::new(),
            destinations: RefCell::new(Vec::new()),
            connections_per_host: c.connections_per_host as usize,
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            keepalive_interval: Duration::from_millis(c.keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(c.keepalive_timeout_ms),
            http2_keepalive: c.http2_keepalive,
            http2_stream_window: c.http2_stream_window_bytes,
            http2_connection_window: c.http2_connection_window_bytes,
            max_connection_duration: Duration::from_millis(c.max_connection_duration_ms),
            breaker: crate::cluster::RequestBreaker::for_shard(c, stats.stats.shard_count()),
            outlier: crate::cluster::OutlierConfig::for_cluster(c),
            retries: crate::cluster::RetryBreaker::for_shard(c, stats.stats.shard_count()),
            conn_breaker: crate::cluster::ConnBreaker::for_shard(c, stats.stats.shard_count()),
            waiting: RefCell::new(std::collections::VecDeque::new()),
            waking: Cell::new(false),
            mirrors: Default::default(),
            backoff: RefCell::new(Vec::new()),
            backing_off: Cell::new(false),
            backoff_wake: shard::Notify::new(),
            dice: crate::route::Dice::new(jitter_seed()),
            http1_idle: RefCell::new(Vec::new()),
            http2_conns: RefCell::new(Vec::new()),
            http2_streams_max: c.http2_streams_max,
            requests_per_connection_max: c.requests_per_connection_max,
            upstream_http: c.upstream_http,
            keep_alpn: c.keep_alpn,
            stats,
            ids,
            h2_ids,
            budget,
        });
        crate::cluster::watch_intervals(&pool, pool.outlier.as_ref(), Pool::interval);
        pool
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
    fn host(self: &Rc<Self>, i: usize) -> Rc<Host> {
        self.hosts.get_or_build(i, || {
            let slot = self.lb.slot(i);
            Host {
                addr: slot.addr,
                index: i,
                pool: self.clone(),
                ids: slot.ids,
                conns: RefCell::new(Vec::new()),
                next: Cell::new(0),
                down_until: Cell::new(None),
                retired: Cell::new(false),
                outlier: Default::default(),
            }
        })
    }

    /// A connection with room for one more stream, on an endpoint the balancer picks (skipping
    /// endpoints in connect-failure back-off unless all are), other than `avoid` (a connection
    /// that refused the stream) and, for a retry, the endpoints `retry` already tried while
    /// another is available (`previous_hosts`), from the priority levels it does not leave out
    /// (`previous_priorities`).
    fn connection(
        self: &Rc<Self>,
        limits: H2Limits,
        alpn: &crate::io::tls::AlpnOverride,
        avoid: Option<&conn::Conn>,
        retry: Option<&crate::route::Retry>,
        label: Option<crate::cluster::Label>,
        hash: Option<u64>,
    ) -> Result<Rc<conn::Conn>, NoConn> {
        let now = Instant::now();
        let state = |i: usize, skip_tried: bool| {
            if skip_tried && retry.is_some_and(|r| r.avoids(i)) {
                return Availability::Excluded;
            }
            self.hosts.peek(i, |h| match h {
                Some(h) if h.down_until.get().is_some_and(|t| t > now) => Availability::BackingOff,
                // Ejected: like back-off, used only when no endpoint is ready.
                Some(h) if self.outlier.is_some() && h.outlier.is_ejected(now) => {
                    Availability::BackingOff
                }
                _ => Availability::Ready,
            })
        };
        // `previous_priorities`: the levels the retry leaves out.
        let levels = retry.map_or(&[][..], |r| r.priority_avoided());
        let draws = retry.map_or(0, |r| r.host_draws());
        let i = match self
            .lb
            .pick_avoiding(label, levels, hash, draws, |i| state(i, true))
        {
            Some(i) => i,
            // Every endpoint of the drawn levels tried: a tried one, drawn from the same load
            // (as Envoy takes its last pick: never another level for it).
            None if retry.is_some() => self
                .lb
                .pick_avoiding(label, levels, hash, draws, |i| state(i, false))
                .ok_or(NoConn::NoEndpoint)?,
            None => return Err(NoConn::NoEndpoint),
        };
        self.host(i)
            .connection(self.connections_per_host, limits, self.alpn(alpn), avoid)
    }

    /// `original_destination` clusters: a connection with room for one more stream to `dst`
    /// (the caller connection's original destination), other than `avoid`. `None` when
    /// [`ORIGINAL_DST_HOSTS_MAX`] destinations all have connections, or `dst`'s host has no
    /// room.
    fn connection_to(
        self: &Rc<Self>,
        dst: SocketAddr,
        limits: H2Limits,
        alpn: &crate::io::tls::AlpnOverride,
        avoid: Option<&conn::Conn>,
    ) -> Result<Rc<conn::Conn>, NoConn> {
        let found = self
            .destinations
            .borrow()
            .iter()
            .find(|h| h.addr == dst)
            .cloned();
        let host = match found {
            Some(h) => h,
            None => {
                let mut ds = self.destinations.borrow_mut();
                if ds.len() >= ORIGINAL_DST_HOSTS_MAX {
                    let idle = ds
                        .iter()
                        .position(|h| h.conns.borrow().is_empty())
                        .ok_or(NoConn::NoEndpoint)?;
                    ds.swap_remove(idle);
                }
                let h = Rc::new(Host {
                    addr: dst,
                    index: usize::MAX,
                    pool: self.clone(),
                    ids: crate::cluster::HostStatIds::sink(),
                    conns: RefCell::new(Vec::new()),
                    next: Cell::new(0),
                    down_until: Cell::new(None),
                    retired: Cell::new(false),
                    outlier: Default::default(),
                });
                ds.push(h.clone());
                h
            }
        };
        host.connection(self.connections_per_host, limits, self.alpn(alpn), avoid)
    }

    /// The ALPN override a connection of this cluster gets (none with `keep_alpn`).
    pub fn alpn<'a>(
        &self,
        alpn: &'a crate::io::tls::AlpnOverride,
    ) -> &'a crate::io::tls::AlpnOverride {
        const NONE: &crate::io::tls::AlpnOverride = &None;
        if self.keep_alpn {
            NONE
        } else {
            alpn
        }
    }

    /// Another connection for a stream `avoid` refused: of the same endpoint for an
    /// original destination, else of any endpoint the balancer picks; with `alpn`, the ALPN
    /// override of the connection that refused it.
    fn retry_connection(
        self: &Rc<Self>,
        host: &Rc<Host>,
        limits: H2Limits,
        alpn: &crate::io::tls::AlpnOverride,
        avoid: Option<&conn::Conn>,
        retry: Option<&crate::route::Retry>,
        label: Option<crate::cluster::Label>,
        hash: Option<u64>,
    ) -> Result<Rc<conn::Conn>, NoConn> {
        if host.index == usize::MAX {
            host.connection(self.connections_per_host, limits, alpn, avoid)
        } else {
            self.connection(limits, alpn, avoid, retry, label, hash)
        }
    }

    /// One call's outcome at `host`, for outlier detection (when the cluster has it).
    pub fn outcome(&self, host: &Host, failed: bool) {
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

    /// Endpoint slots that left the cluster: their connections close once idle.
    pub fn retire(&self, slots: &[u32]) {
        self.hosts.retire(slots);
    }

    /// The whole pool left service (its cluster was removed or replaced).
    pub fn retire_all(&self) {
        self.hosts.retire_all();
        for h in self.destinations.take() {
            crate::cluster::Retire::retire(&*h);
        }
    }
}

impl crate::cluster::OutlierHost for Host {
    fn outlier(&self) -> &crate::cluster::Outlier {
        &self.outlier
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn ids(&self) -> &crate::cluster::HostStatIds {
        &self.ids
    }
}

impl crate::cluster::Retire for Host {
    fn retire(&self) {
        self.retired.set(true);
        let conns: Vec<Rc<conn::Conn>> = self.conns.borrow().clone();
        for c in conns {
            c.close_if_idle();
        }
    }
}

impl Host {
    /// A connection with room, among those offering `alpn` over TLS (an `istio.alpn` override
    /// is part of a pooled connection's identity, as in Envoy's pools).
    fn connection(
        self: &Rc<Self>,
        max: usize,
        limits: H2Limits,
        alpn: &crate::io::tls::AlpnOverride,
        avoid: Option<&conn::Conn>,
    ) -> Result<Rc<conn::Conn>, NoConn> {
        use crate::io::tls::same_alpn;
        let n = self
            .conns
            .borrow()
            .iter()
            .filter(|c| same_alpn(&c.alpn, alpn))
            .count();
        let base = max.max(1);
        // With `max_connections`: whether one more may be opened (asked only when one would).
        let may_open = || {
            let p = &self.pool;
            p.conn_breaker
                .as_ref()
                .is_none_or(|b| b.may_connect(n == 0, &p.stats, &p.ids))
        };
        // Up to `connections_per_host` connections share the streams round-robin; when all are
        // full (the upstream's MAX_CONCURRENT_STREAMS) up to as many again are opened.
        let asked = n < base;
        if asked && may_open() {
            return Ok(self.open(limits, alpn));
        }
        {
            let conns = self.conns.borrow();
            let all = conns.len();
            for k in 0..all {
                let i = (self.next.get() + k) % all;
                if conns[i].has_room()
                    && same_alpn(&conns[i].alpn, alpn)
                    && !avoid.is_some_and(|a| std::ptr::eq(a, &*conns[i]))
                {
                    self.next.set(i + 1);
                    return Ok(conns[i].clone());
                }
            }
        }
        if !asked && n < base * 2 && may_open() {
            return Ok(self.open(limits, alpn));
        }
        Err(NoConn::Full)
    }

    fn open(
        self: &Rc<Self>,
        mut limits: H2Limits,
        alpn: &crate::io::tls::AlpnOverride,
    ) -> Rc<conn::Conn> {
        // The cluster's windows where it gives them, else the caller's listener's.
        if let Some(w) = self.pool.http2_stream_window {
            limits.stream_window = w;
        }
        if let Some(w) = self.pool.http2_connection_window {
            limits.conn_window = w;
        }
        let c = conn::connect(self, limits, alpn.clone());
        self.conns.borrow_mut().push(c.clone());
        if let Some(b) = &self.pool.conn_breaker {
            b.opened();
        }
        c
    }

    fn mark_down(&self) {
        self.down_until.set(Some(
            Instant::now() + Duration::from_millis(ENDPOINT_FAILURE_BACKOFF_MS),
        ));
    }

    fn remove(&self, c: &Rc<conn::Conn>) {
        let mut conns = self.conns.borrow_mut();
        let n = conns.len();
        conns.retain(|x| !Rc::ptr_eq(x, c));
        if conns.len() < n {
            if let Some(b) = &self.pool.conn_breaker {
                b.closed();
            }
        }
    }
}

/// The PING ACKs an upstream HTTP/2 connection got for its keepalive PINGs.
#[derive(Default)]
pub struct Pongs {
    n: Cell<u64>,
    arrived: shard::Notify,
}

impl Pongs {
    /// A keepalive PING was answered.
    pub fn ack(&self) {
        self.n.set(self.n.get() + 1);
        self.arrived.notify();
    }
}

/// Envoy's `connection_keepalive` on an upstream HTTP/2 connection: a PING (`ping`) every
/// `interval_ms` plus a random `jitter_percent` of it at most, counted from the previous
/// answer, idle or not. Completes when one was not answered within `timeout_ms` and the
/// connection read nothing meanwhile (`reads`: its count of reads; a peer busy sending is
/// alive): the caller closes the connection.
pub async fn keepalive_pings(
    k: &config::Http2Keepalive,
    dice: &Dice,
    pongs: &Pongs,
    reads: impl Fn() -> u64,
    ping: impl Fn(),
) {
    let spread = k.interval_ms * u64::from(k.jitter_percent) / 100;
    loop {
        let jitter = match spread {
            0 => 0,
            s => u64::from(dice.roll()) % (s + 1),
        };
        shard::monoio::time::sleep(Duration::from_millis(k.interval_ms + jitter)).await;
        let (answered, read) = (pongs.n.get(), reads());
        ping();
        let deadline = Instant::now() + Duration::from_millis(k.timeout_ms);
        loop {
            let expired = shard::monoio::select! {
                _ = pongs.arrived.wait() => false,
                _ = shard::monoio::time::sleep_until(deadline.into()) => true,
            };
            if pongs.n.get() != answered {
                break;
            }
            if expired {
                if reads() == read {
                    return;
                }
                break;
            }
        }
    }
}
