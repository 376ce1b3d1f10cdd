//! Access logs: one line per Dubbo call, Triple stream and TCP connection, in Envoy's format
//! language ([`format`]), written off the data path.
//!
//! A shard writes a finished call as a fixed-size record ([`record`]: numbers and addresses as
//! they are, the few borrowed bytes its formats show copied once into the batch's arena; no
//! formatting) into its own batch for that file (reused from batch to batch) and hands full
//! batches, and every [`FLUSH_INTERVAL_MS`] the batch it has, to the file's writer thread
//! through a bounded lock-free queue; the writer formats the lines. When the writer falls
//! behind and the queue is full, the shard drops the batch and counts its lines
//! (`access_log.lines_dropped`): a slow disk never blocks a shard and never grows memory past
//! `QUEUED_BATCHES_MAX` batches per file. SIGUSR1 makes every writer reopen its file (log
//! rotation). Nothing here runs when no listener has an access log.

pub mod format;
mod line;
pub mod record;
mod sink;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use format::{Format, FormatError, LineCache};
pub use sink::{drain_all, reopen_all, Batch, FileSink, OpenError};

use crate::stats::{Kind, ShardStats, StatId, Stats};

/// How long a line may wait in a shard's batch before the batch goes to the writer (Envoy
/// flushes its file logs every second; a shorter wait keeps `tail -f` live).
pub const FLUSH_INTERVAL_MS: u64 = 100;
/// A batch this large goes to the writer at once.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Batches queued per file (all shards together) before shards drop lines.
pub const QUEUED_BATCHES_MAX: usize = 64;
/// Formats one batch refers to (listeners of a shard sharing a file, each config version's
/// own): a batch that reaches it goes to the writer.
pub const BATCH_FORMATS_MAX: usize = 256;

/// Envoy's response flags ringside sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    pub const NONE: Flags = Flags(0);
    /// UH: no healthy endpoint.
    pub const NO_HEALTHY_UPSTREAM: Flags = Flags(1);
    /// UT: the upstream did not answer before the deadline.
    pub const UPSTREAM_REQUEST_TIMEOUT: Flags = Flags(1 << 1);
    /// LR: ringside reset the stream.
    pub const LOCAL_RESET: Flags = Flags(1 << 2);
    /// UR: the upstream reset the stream.
    pub const UPSTREAM_REMOTE_RESET: Flags = Flags(1 << 3);
    /// UF: the connect to the upstream failed.
    pub const UPSTREAM_CONNECTION_FAILURE: Flags = Flags(1 << 4);
    /// UC: the upstream connection ended with the call in flight.
    pub const UPSTREAM_CONNECTION_TERMINATION: Flags = Flags(1 << 5);
    /// UO: a pending or concurrency limit refused the call.
    pub const UPSTREAM_OVERFLOW: Flags = Flags(1 << 6);
    /// NR: no route.
    pub const NO_ROUTE_FOUND: Flags = Flags(1 << 7);
    /// DC: the caller went away first.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: Flags = Flags(1 << 8);
    /// DPE: the caller broke the protocol.
    pub const DOWNSTREAM_PROTOCOL_ERROR: Flags = Flags(1 << 9);
    /// UPE: the upstream broke the protocol.
    pub const UPSTREAM_PROTOCOL_ERROR: Flags = Flags(1 << 10);
    /// RL: a local rate limit refused the call.
    pub const RATE_LIMITED: Flags = Flags(1 << 11);
    /// OM: shed because the shard's buffer budget is spent (Envoy's overload manager).
    pub const OVERLOAD_MANAGER: Flags = Flags(1 << 12);
    /// DI: a fault delay held the call.
    pub const DELAY_INJECTED: Flags = Flags(1 << 13);
    /// FI: a fault abort answered the call.
    pub const FAULT_INJECTED: Flags = Flags(1 << 14);
    /// UAEX: the external authorization service denied the request (or failed it).
    pub const UNAUTHORIZED_EXTERNAL_SERVICE: Flags = Flags(1 << 15);

    /// In the order Envoy prints them.
    const NAMES: &'static [(Flags, &'static str)] = &[
        (Flags::NO_HEALTHY_UPSTREAM, "UH"),
        (Flags::UPSTREAM_REQUEST_TIMEOUT, "UT"),
        (Flags::LOCAL_RESET, "LR"),
        (Flags::UPSTREAM_REMOTE_RESET, "UR"),
        (Flags::UPSTREAM_CONNECTION_FAILURE, "UF"),
        (Flags::UPSTREAM_CONNECTION_TERMINATION, "UC"),
        (Flags::UPSTREAM_OVERFLOW, "UO"),
        (Flags::NO_ROUTE_FOUND, "NR"),
        (Flags::DELAY_INJECTED, "DI"),
        (Flags::FAULT_INJECTED, "FI"),
        (Flags::RATE_LIMITED, "RL"),
        (Flags::UNAUTHORIZED_EXTERNAL_SERVICE, "UAEX"),
        (Flags::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
        (Flags::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
        (Flags::UPSTREAM_PROTOCOL_ERROR, "UPE"),
        (Flags::OVERLOAD_MANAGER, "OM"),
    ];

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flag of an Envoy short name; None for one ringside never sets (`URX`, `LH`, ...).
    pub fn from_name(name: &str) -> Option<Flags> {
        Flags::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(f, _)| *f)
    }

    /// The flags as a number (a table key).
    pub fn bits(self) -> u16 {
        self.0
    }

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, o: Flags) -> Flags {
        Flags(self.0 | o.0)
    }
}

/// Which headers of a call an operator reads: `%REQ(...)%`, `%RESP(...)%`, `%TRAILER(...)%`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Request,
    Response,
    Trailer,
}

/// The headers a record can show (request, response, trailers), by lower-case name.
pub trait Headers {
    fn get(&self, part: Part, name: &str) -> Option<&[u8]>;

    /// False when the call has no headers at all (its record then copies none).
    fn any(&self) -> bool {
        true
    }
}

/// Request headers only (tests).
impl<const N: usize> Headers for [(&str, &str); N] {
    fn get(&self, part: Part, name: &str) -> Option<&[u8]> {
        if part != Part::Request {
            return None;
        }
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }
}

/// What a Dubbo call adds to its record.
#[derive(Clone, Copy, Debug)]
pub struct DubboCall<'a> {
    pub interface: &'a [u8],
    pub method: &'a [u8],
    pub version: &'a [u8],
    pub group: &'a [u8],
    /// The caller's request id.
    pub request_id: u64,
}

/// One finished call or connection, as the format sees it.
pub struct Record<'a> {
    pub start: SystemTime,
    pub duration: Duration,
    /// `dubbo`, `HTTP/2` (Triple) or none (TCP), as Envoy prints `%PROTOCOL%` (static text: a
    /// record keeps the reference, not a copy).
    pub protocol: Option<&'static str>,
    /// Dubbo: the response status (20 OK, 31 timeout, ...); Triple: the HTTP status; TCP: none
    /// (rendered 0, as Envoy does).
    pub response_code: Option<u32>,
    pub grpc_status: Option<u32>,
    pub flags: Flags,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub route_name: Option<&'a str>,
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub headers: &'a dyn Headers,
    pub dubbo: Option<DubboCall<'a>>,
}

/// A finished Dubbo call as the shard hands it to its logs: the compact record's fixed part
/// ([`record::DubboRec`], the connection's addresses already as keys) and what each log's
/// batch adds from borrowed data (written by [`ListenerLog::write_dubbo`] straight into the
/// batch: no [`Record`] built, unless a log has a filter to ask).
pub struct DubboLine<'a> {
    pub rec: &'a record::DubboRec,
    pub upstream: Option<SocketAddr>,
    /// The caller's address and ours (`rec.remote`, `rec.local` encode them).
    pub conn: &'a (Option<SocketAddr>, Option<SocketAddr>),
    pub upstream_cluster: Option<&'a str>,
    /// Interface, method, version and group (`None` when the caller did not keep them: no
    /// format shows them, [`ListenerLog::shows_dubbo`]).
    pub call: Option<DubboCall<'a>>,
}

impl<'a> DubboLine<'a> {
    /// The call as a format (or a filter) sees it.
    pub fn record(&self) -> Record<'a> {
        let r = self.rec;
        Record {
            start: SystemTime::UNIX_EPOCH + Duration::from_nanos(r.start_ns),
            duration: r.ended.saturating_duration_since(r.started),
            protocol: Some(DUBBO_PROTOCOL),
            response_code: Some(u32::from(r.status)),
            grpc_status: None,
            flags: r.flags,
            upstream_host: self.upstream,
            upstream_cluster: self.upstream_cluster,
            route_name: None,
            downstream_remote: self.conn.0,
            downstream_local: self.conn.1,
            bytes_received: u64::from(r.bytes_received),
            bytes_sent: u64::from(r.bytes_sent),
            headers: NO_HEADERS,
            dubbo: Some(self.call.unwrap_or(DubboCall {
                interface: b"",
                method: b"",
                version: b"",
                group: b"",
                request_id: r.request_id,
            })),
        }
    }
}

/// `%PROTOCOL%` of a Dubbo call.
pub const DUBBO_PROTOCOL: &str = "dubbo";

/// No headers (TCP, Dubbo).
pub const NO_HEADERS: &NoHeaders = &NoHeaders;

pub struct NoHeaders;

impl Headers for NoHeaders {
    fn get(&self, _part: Part, _name: &str) -> Option<&[u8]> {
        None
    }

    fn any(&self) -> bool {
        false
    }
}

/// One configured log of a listener: its format, which calls it keeps, and its file.
#[derive(Clone, Debug)]
pub struct LogSpec {
    pub format: Arc<Format>,
    pub filter: Option<Arc<Filter>>,
    pub file: Arc<FileSink>,
}

/// An access log's filter, compiled from [`config::AccessLogFilter`] (validated: exactly one
/// kind, flags and statuses known, nesting bounded by `config::ACCESS_LOG_FILTER_DEPTH_MAX`).
#[derive(Debug)]
pub enum Filter {
    StatusCode(config::Comparison),
    DurationMs(config::Comparison),
    /// Kept when a 32-bit roll is below this (the percentage of 2^32).
    Sampled(u64),
    /// Any of these flags (any flag when empty).
    ResponseFlags(Flags),
    AnyResponseFlag,
    Header(HeaderFilter),
    /// The gRPC status (a call without one: UNKNOWN) is in the set (bit per status), or with
    /// `exclude`, is not.
    GrpcStatus {
        set: u32,
        exclude: bool,
    },
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

/// A request header condition, with Envoy's `HeaderMatcher` rules for inversion and missing
/// headers.
pub struct HeaderFilter {
    /// Lower case (HTTP/2 header names are).
    name: String,
    value: crate::route::ValueMatch,
    invert: bool,
    missing_as_empty: bool,
}

impl std::fmt::Debug for HeaderFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderFilter")
            .field("name", &self.name)
            .field("invert", &self.invert)
            .finish_non_exhaustive()
    }
}

impl HeaderFilter {
    fn new(h: &config::AccessLogHeaderFilter) -> Result<HeaderFilter, crate::route::RouteError> {
        Ok(HeaderFilter {
            name: h.name.to_ascii_lowercase(),
            value: crate::route::ValueMatch::new(
                h.exact.as_deref(),
                h.prefix.as_deref(),
                h.regex.as_deref(),
                h.present,
            )?,
            invert: h.invert,
            missing_as_empty: h.treat_missing_as_empty,
        })
    }

    /// Envoy's `HeaderUtility::matchHeaders`: a missing header matches only a presence
    /// condition (`present: false`, or inverted `present: true`) unless it counts as empty.
    fn matches(&self, v: Option<&[u8]>) -> bool {
        use crate::route::ValueMatch;
        let v = match v {
            Some(v) => Some(v),
            None if self.missing_as_empty => Some(&b""[..]),
            None => {
                return match self.value {
                    ValueMatch::Present(want) => want == self.invert,
                    ValueMatch::Is(_) => false,
                }
            }
        };
        self.value.matches(v) != self.invert
    }
}

impl Filter {
    fn compile(f: &config::AccessLogFilter) -> Result<Filter, crate::route::RouteError> {
        let list = |l: &[config::AccessLogFilter]| {
            l.iter().map(Filter::compile).collect::<Result<Vec<_>, _>>()
        };
        Ok(if let Some(c) = f.status_code {
            Filter::StatusCode(c)
        } else if let Some(c) = f.duration_ms {
            Filter::DurationMs(c)
        } else if let Some(p) = f.runtime_percent {
            Filter::Sampled((p.0.clamp(0.0, 100.0) / 100.0 * (1u64 << 32) as f64) as u64)
        } else if let Some(names) = &f.response_flags {
            match names.is_empty() {
                true => Filter::AnyResponseFlag,
                false => Filter::ResponseFlags(
                    names
                        .iter()
                        .filter_map(|n| Flags::from_name(n))
                        .fold(Flags::NONE, |a, b| a | b),
                ),
            }
        } else if let Some(h) = &f.header {
            Filter::Header(HeaderFilter::new(h)?)
        } else if let Some(g) = &f.grpc_status {
            let set = g
                .statuses
                .iter()
                .filter_map(|n| config::GRPC_STATUS_NAMES.iter().position(|k| k == n))
                .fold(0u32, |set, i| set | 1 << i);
            Filter::GrpcStatus {
                set,
                exclude: g.exclude,
            }
        } else if let Some(l) = &f.and {
            Filter::And(list(l)?)
        } else if let Some(l) = &f.or {
            Filter::Or(list(l)?)
        } else {
            // Validation refuses a filter with nothing set; keep every call if one got here.
            Filter::And(Vec::new())
        })
    }

    /// The request headers the filter reads (lower case), added to `out` once each.
    fn header_names(&self, out: &mut Vec<(Part, String)>) {
        match self {
            Filter::Header(h) if !out.iter().any(|(p, n)| *p == Part::Request && *n == h.name) => {
                out.push((Part::Request, h.name.clone()));
            }
            Filter::And(l) | Filter::Or(l) => l.iter().for_each(|f| f.header_names(out)),
            _ => {}
        }
    }

    /// Whether `r` gets a line; `roll` draws a uniform 32-bit number (runtime filters).
    pub fn keeps(&self, r: &Record<'_>, roll: &mut dyn FnMut() -> u32) -> bool {
        match self {
            // TCP has no response code: 0, as in Envoy.
            Filter::StatusCode(c) => c.holds(u64::from(r.response_code.unwrap_or(0))),
            Filter::DurationMs(c) => c.holds(r.duration.as_millis() as u64),
            Filter::Sampled(threshold) => u64::from(roll()) < *threshold,
            Filter::ResponseFlags(f) => f.0 & r.flags.0 != 0,
            Filter::AnyResponseFlag => !r.flags.is_empty(),
            Filter::Header(h) => h.matches(r.headers.get(Part::Request, &h.name)),
            Filter::GrpcStatus { set, exclude } => {
                // Envoy: a call without a status is UNKNOWN; a status beyond the known ones is
                // in no list.
                let s = r.grpc_status.unwrap_or(2);
                let listed = s < 32 && set & (1 << s) != 0;
                listed != *exclude
            }
            Filter::And(l) => l.iter().all(|f| f.keeps(r, roll)),
            Filter::Or(l) => l.iter().any(|f| f.keeps(r, roll)),
        }
    }
}

/// Builds a listener's logs from its config, opening (or sharing) their files. Called when a
/// snapshot is built (control thread), never on a shard.
pub fn open(logs: &[config::AccessLog]) -> Result<Vec<LogSpec>, OpenError> {
    logs.iter()
        .map(|l| {
            Ok(LogSpec {
                format: Arc::new(compile(l)?),
                filter: compile_filter(l)?.map(Arc::new),
                file: FileSink::open(&l.path)?,
            })
        })
        .collect()
}

/// Compiles a listener's log formats without opening (or creating) their files: what
/// `ringside validate` checks.
pub fn check(logs: &[config::AccessLog]) -> Result<(), OpenError> {
    logs.iter()
        .try_for_each(|l| compile(l).and_then(|_| compile_filter(l)).map(drop))
}

/// A log's filter, compiled (its regexes: config validation checked them already).
fn compile_filter(l: &config::AccessLog) -> Result<Option<Filter>, OpenError> {
    l.filter
        .as_ref()
        .map(Filter::compile)
        .transpose()
        .map_err(|e| OpenError::Filter {
            path: l.path.clone(),
            error: e.to_string(),
        })
}

/// A log's format, compiled (the default format when the config names none).
fn compile(l: &config::AccessLog) -> Result<Format, OpenError> {
    match (&l.format, &l.json_format) {
        (_, Some(map)) => Format::json(map),
        (Some(f), None) => Format::text(f),
        (None, None) => Format::text(format::DEFAULT_FORMAT),
    }
    .map_err(|e| OpenError::Format {
        path: l.path.clone(),
        error: e,
    })
}

/// A listener's logs on one shard.
pub struct ListenerLog {
    logs: Vec<ShardLog>,
    /// Headers any of the formats reads (lower case): a Triple call keeps only these.
    pub headers: Rc<[(Part, String)]>,
    /// Some format reads a response header or trailer.
    pub reads_response: bool,
    /// Some format shows a `%DUBBO_*%` field (else a Dubbo call need not keep its fields for
    /// the log).
    pub shows_dubbo: bool,
    /// xorshift64* state for runtime filters (never 0); seeded per listener and shard.
    rng: Cell<u64>,
}

/// One log of a listener on one shard.
struct ShardLog {
    format: Arc<Format>,
    /// The headers the format shows, in its order, and which borrowed fields (what a record
    /// copies).
    names: Arc<[(Part, String)]>,
    shows: format::Shows,
    filter: Option<Arc<Filter>>,
    file: Rc<ShardFile>,
}

impl ListenerLog {
    /// Writes `r` as a fixed-size record ([`record`]) into the batch of every log whose filter
    /// keeps it; the file's writer thread formats the line.
    pub fn write(&self, r: &Record<'_>) {
        for l in &self.logs {
            if let Some(f) = &l.filter {
                if !f.keeps(r, &mut || self.roll()) {
                    continue;
                }
            }
            l.file.line(l, r);
        }
    }

    /// [`ListenerLog::write`] for a Dubbo call, its record written straight from `d`.
    #[inline]
    pub fn write_dubbo(&self, d: &DubboLine<'_>) {
        if !self.repeat_dubbo(d.rec, d.upstream, d.upstream_cluster) {
            self.write_dubbo_new(d);
        }
    }

    /// Counts Dubbo call `rec` (answered by `upstream` of `cluster`; its record as far as
    /// the listener's connection fills it, [`DubboLine::rec`]) as one more repeat of the
    /// last record of the listener's log ([`record::Records::repeat_dubbo`]) when the
    /// listener has one log, without a filter, and the call's line is that record's: false
    /// when not ([`ListenerLog::write_dubbo_new`] then writes it). Inline: most calls of a
    /// busy connection.
    #[inline(always)]
    pub fn repeat_dubbo(
        &self,
        rec: &record::DubboRec,
        upstream: Option<SocketAddr>,
        cluster: Option<&str>,
    ) -> bool {
        match self.logs.as_slice() {
            [l] if l.filter.is_none() => l.file.repeat_dubbo(l, rec, upstream, cluster),
            _ => false,
        }
    }

    /// [`ListenerLog::write_dubbo`] of a call [`ListenerLog::repeat_dubbo`] did not count.
    #[inline]
    pub fn write_dubbo_new(&self, d: &DubboLine<'_>) {
        // One log without a filter (the common case): its batch directly, no loop.
        if let [l] = self.logs.as_slice() {
            if l.filter.is_none() {
                return l.file.dubbo_new(l, d);
            }
        }
        self.write_dubbo_each(d);
    }

    #[inline(never)]
    fn write_dubbo_each(&self, d: &DubboLine<'_>) {
        for l in &self.logs {
            if l.filter.is_some() && !self.keeps_dubbo(l, d) {
                continue;
            }
            l.file.dubbo_line(l, d);
        }
    }

    /// Whether `l`'s filter keeps call `d` (out of line: the record it builds is not made, or
    /// half made ahead of the loop, for the logs without a filter).
    #[cold]
    #[inline(never)]
    fn keeps_dubbo(&self, l: &ShardLog, d: &DubboLine<'_>) -> bool {
        l.filter
            .as_ref()
            .is_none_or(|f| f.keeps(&d.record(), &mut || self.roll()))
    }

    fn roll(&self) -> u32 {
        // xorshift64* (Vigna).
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// One file's batch on one shard.
pub struct ShardFile {
    sink: Arc<FileSink>,
    batch: RefCell<Batch>,
    lines: Cell<u32>,
    /// A flush of the current batch is scheduled.
    armed: Cell<bool>,
    stats: ShardStats,
    ids: FileStatIds,
}

#[derive(Clone, Copy, Debug)]
struct FileStatIds {
    logged: StatId,
    dropped: StatId,
}

impl ShardFile {
    fn line(self: &Rc<Self>, log: &ShardLog, r: &Record<'_>) {
        let full = {
            let mut b = self.batch.borrow_mut();
            if b.records.arena.capacity() == 0 {
                *b = self.sink.spare_batch();
            }
            let i = b.format_index(&log.format, &log.names);
            b.records.push(r, i, &log.names, log.shows);
            b.records.bytes() >= BATCH_BYTES || b.formats.len() >= BATCH_FORMATS_MAX
        };
        self.added(full);
    }

    /// A Dubbo call's line: one more repeat of the batch's last record when the call's line
    /// is that record's, else a record of its own.
    #[inline]
    fn dubbo_line(self: &Rc<Self>, log: &ShardLog, d: &DubboLine<'_>) {
        if !self.repeat_dubbo(log, d.rec, d.upstream, d.upstream_cluster) {
            self.dubbo_new(log, d);
        }
    }

    /// Counts a Dubbo call as one more repeat of the batch's last record when the call's
    /// line is that record's ([`record::Records::repeat_dubbo`]).
    #[inline(always)]
    fn repeat_dubbo(
        self: &Rc<Self>,
        log: &ShardLog,
        rec: &record::DubboRec,
        upstream: Option<SocketAddr>,
        cluster: Option<&str>,
    ) -> bool {
        let repeated = self.batch.borrow_mut().repeat_dubbo(
            &log.format,
            rec,
            (upstream, cluster),
            log.shows,
        );
        if repeated {
            self.added(false);
        }
        repeated
    }

    #[inline(never)]
    fn dubbo_new(self: &Rc<Self>, log: &ShardLog, d: &DubboLine<'_>) {
        let full = {
            let mut b = self.batch.borrow_mut();
            // A batch handed to the writer left an empty one (no arena) behind.
            if b.records.arena.capacity() == 0 {
                self.refill(&mut b);
            }
            let i = b.format_index(&log.format, &log.names);
            b.records.push_dubbo_new(d, i, log.shows);
            b.records.bytes() >= BATCH_BYTES || b.formats.len() >= BATCH_FORMATS_MAX
        };
        self.added(full);
    }

    #[cold]
    #[inline(never)]
    fn refill(&self, b: &mut Batch) {
        *b = self.sink.spare_batch();
    }

    /// A line was added to the batch (`full`: the batch is to go now).
    #[inline]
    fn added(self: &Rc<Self>, full: bool) {
        self.lines.set(self.lines.get() + 1);
        if full {
            self.flush();
        } else if !self.armed.get() {
            self.arm();
        }
    }

    /// Schedules the flush of the batch (its first line was added).
    #[cold]
    #[inline(never)]
    fn arm(self: &Rc<Self>) {
        self.armed.set(true);
        let me = self.clone();
        shard::monoio::spawn(async move {
            shard::monoio::time::sleep(Duration::from_millis(FLUSH_INTERVAL_MS)).await;
            me.flush();
        });
    }

    /// Hands the batch to the writer (or drops it, counted, when the writer is behind).
    pub fn flush(&self) {
        self.armed.set(false);
        let lines = self.lines.replace(0);
        if lines == 0 {
            return;
        }
        let batch = std::mem::take(&mut *self.batch.borrow_mut());
        if self.sink.push(batch) {
            self.stats.add(self.ids.logged, u64::from(lines));
        } else {
            self.stats.add(self.ids.dropped, u64::from(lines));
        }
    }
}

/// A shard's files, shared by its listeners (one batch per file per shard).
#[derive(Default)]
pub struct ShardLogs {
    files: RefCell<Vec<Rc<ShardFile>>>,
}

impl ShardLogs {
    /// The shard-side logs of a listener (`None` when it has none: the data path then skips
    /// all access-log work with one check).
    pub fn listener(&self, specs: &[LogSpec], stats: &ShardStats) -> Option<Rc<ListenerLog>> {
        if specs.is_empty() {
            return None;
        }
        let mut headers: Vec<(Part, String)> = Vec::new();
        let logs: Vec<ShardLog> = specs
            .iter()
            .map(|s| {
                for h in s.format.headers() {
                    if !headers.contains(&h) {
                        headers.push(h);
                    }
                }
                if let Some(f) = &s.filter {
                    f.header_names(&mut headers);
                }
                ShardLog {
                    format: s.format.clone(),
                    names: s.format.headers().into(),
                    shows: s.format.shows(),
                    filter: s.filter.clone(),
                    file: self.file(&s.file, stats),
                }
            })
            .collect();
        let shows_dubbo = logs.iter().any(|l| l.shows.dubbo);
        Some(Rc::new(ListenerLog {
            logs,
            shows_dubbo,
            reads_response: headers.iter().any(|(p, _)| *p != Part::Request),
            headers: headers.into(),
            rng: Cell::new(seed()),
        }))
    }

    fn file(&self, sink: &Arc<FileSink>, stats: &ShardStats) -> Rc<ShardFile> {
        let mut files = self.files.borrow_mut();
        // Files no listener of this shard writes to any more (their last batch goes first).
        files.retain(|f| {
            let used = Rc::strong_count(f) > 1;
            if !used {
                f.flush();
            }
            used
        });
        if let Some(f) = files.iter().find(|f| Arc::ptr_eq(&f.sink, sink)) {
            return f.clone();
        }
        let f = Rc::new(ShardFile {
            sink: sink.clone(),
            batch: RefCell::new(Batch::default()),
            lines: Cell::new(0),
            armed: Cell::new(false),
            stats: stats.clone(),
            ids: FileStatIds::register(&stats.stats, sink.path()),
        });
        files.push(f.clone());
        f
    }

    /// Hands every batch to its writer (the shard is stopping).
    pub fn flush_all(&self) {
        for f in self.files.borrow().iter() {
            f.flush();
        }
    }
}

/// A non-zero seed, random per process (std's hasher keys) and per call.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() | 1
}

impl FileStatIds {
    fn register(stats: &Stats, path: &str) -> FileStatIds {
        let tags = [("path", path)];
        FileStatIds {
            logged: stats.add("access_log", "lines_logged", &tags, Kind::Counter),
            dropped: stats.add("access_log", "lines_dropped", &tags, Kind::Counter),
        }
    }
}
