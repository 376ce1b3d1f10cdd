//! A finished call as a fixed-size record: what a shard writes into its batch instead of the
//! formatted line, and what the file's writer thread turns back into a [`Record`] and formats
//! (the same [`super::Format::render_cached`] as before, so the text is the same byte for
//! byte).
//!
//! A [`Fixed`] holds the numbers, times, flags and addresses as they are (one copy of a
//! `Copy` struct into the batch's vector) and, for the borrowed bytes a format can show
//! (protocol, cluster, route, the Dubbo fields, the headers the format names), where the shard
//! copied them, once each, in the batch's byte arena. No formatting, no allocation (the batch
//! and its arena are reused from batch to batch).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::format::Shows;
use super::{DubboCall, DubboLine, Flags, Headers, Part, Record, DUBBO_PROTOCOL};

/// Bytes in a batch's arena: `at..at + len`; `len == u32::MAX`: missing.
#[derive(Clone, Copy, Debug)]
pub(super) struct Span {
    at: u32,
    len: u32,
}

const MISSING: Span = Span {
    at: 0,
    len: u32::MAX,
};

/// One call, fixed size.
#[derive(Clone, Copy, Debug)]
pub struct Fixed {
    /// The Dubbo records ([`Records::dubbo`]) pushed before this one: the writer writes the
    /// lines in the order the calls were logged.
    pub(super) after: u32,
    pub(super) start: SystemTime,
    pub(super) duration: Elapsed,
    pub(super) response_code: Option<u32>,
    pub(super) grpc_status: Option<u32>,
    pub(super) flags: Flags,
    /// The format's index in its batch's format table.
    pub format: u16,
    pub(super) has_dubbo: bool,
    /// The header values follow one another in the arena from `headers.at` (one span each,
    /// in the format's order, in `header_spans`); len 0: the call had no headers.
    pub(super) headers: Span,
    pub(super) upstream_host: Option<SocketAddr>,
    pub(super) downstream_remote: Option<SocketAddr>,
    pub(super) downstream_local: Option<SocketAddr>,
    pub(super) bytes_received: u64,
    pub(super) bytes_sent: u64,
    pub(super) request_id: u64,
    pub(super) protocol: Option<&'static str>,
    pub(super) cluster: Span,
    pub(super) route: Span,
    pub(super) dubbo: [Span; 4],
}

impl Fixed {
    /// The call had no headers (every header operator shows `-`).
    #[inline]
    pub(super) fn no_headers(&self) -> bool {
        self.headers.len == 0
    }
}

/// A call's duration: as measured, or the two monotonic clock readings it lies between
/// (subtracted on the writer thread).
#[derive(Clone, Copy, Debug)]
pub(super) enum Elapsed {
    Took(Duration),
    Between(Instant, Instant),
}

impl Elapsed {
    #[inline]
    pub(super) fn get(self) -> Duration {
        match self {
            Elapsed::Took(d) => d,
            Elapsed::Between(a, b) => b.saturating_duration_since(a),
        }
    }
}

/// A Dubbo call, compact: what a shard writes per call instead of a [`Fixed`] (~100 bytes
/// against ~290; no [`Record`] or [`Fixed`] built). The start is the wall clock in nanoseconds
/// since the epoch, the duration the two monotonic readings it lies between (subtracted on the
/// writer thread); the addresses are [`addr_key`]s (an IPv4 address inline, an IPv6 one an
/// index in the batch), the cluster is copied only when the format shows it, interface,
/// method, version and group (when shown) are an index in the batch's `calls`. The writer
/// renders it as [`Records::expand`] would (`record::tests` compares the two).
#[derive(Clone, Copy, Debug)]
pub struct DubboRec {
    pub start_ns: u64,
    pub started: Instant,
    pub ended: Instant,
    pub request_id: u64,
    pub(super) upstream: u64,
    /// The caller's address and ours ([`addr_key`]: a connection keeps them encoded).
    pub remote: u64,
    pub local: u64,
    pub bytes_received: u32,
    pub bytes_sent: u32,
    pub(super) cluster: Span,
    /// Index in [`Records::calls`], `u32::MAX`: not kept.
    pub(super) call: u32,
    pub(super) format: u16,
    pub flags: Flags,
    pub status: u8,
    /// The calls after this one whose lines are this one's again ([`Records::repeat_dubbo`]):
    /// the writer writes its line `1 + repeat` times.
    pub(super) repeat: u16,
}

impl DubboRec {
    /// A call's record (`remote` and `local`: [`addr_key`]s); its batch fills in the format,
    /// the upstream, the cluster and the Dubbo fields ([`Records::push_dubbo`]).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn new(
        start_ns: u64,
        (started, ended): (Instant, Instant),
        request_id: u64,
        (bytes_received, bytes_sent): (usize, usize),
        status: u8,
        flags: Flags,
        (remote, local): (u64, u64),
    ) -> DubboRec {
        DubboRec {
            start_ns,
            started,
            ended,
            request_id,
            upstream: ADDR_NONE,
            remote,
            local,
            // Frames are at most `config::FRAME_BYTES_MAX_LIMIT` (256 MiB) long.
            bytes_received: u32::try_from(bytes_received).unwrap_or(u32::MAX),
            bytes_sent: u32::try_from(bytes_sent).unwrap_or(u32::MAX),
            cluster: MISSING,
            call: u32::MAX,
            format: 0,
            flags,
            status,
            repeat: 0,
        }
    }
}

/// No address.
pub const ADDR_NONE: u64 = 0;
/// An IPv4 address with its port: `V4 | ip << 17 | port << 1 | 1` (the writer's address-text
/// cache key, `line::v4_key`).
const ADDR_V4: u64 = 1 << 63;
/// An IPv6 address: `V6 | i`, `i` its index in [`Records::v6`].
const ADDR_V6: u64 = 1 << 62;
/// An IPv6 address not yet in a batch (a connection's: the batch adds it).
pub const ADDR_V6_UNSET: u64 = ADDR_V6 | u32::MAX as u64;

/// `a` as a compact record keeps it (IPv6: [`ADDR_V6_UNSET`]).
#[inline]
pub fn addr_key(a: Option<SocketAddr>) -> u64 {
    match a {
        None => ADDR_NONE,
        Some(SocketAddr::V4(v4)) => {
            ADDR_V4 | u64::from(v4.ip().to_bits()) << 17 | u64::from(v4.port()) << 1 | 1
        }
        Some(SocketAddr::V6(_)) => ADDR_V6_UNSET,
    }
}

/// The IPv4 address of a key with [`ADDR_V4`] set.
#[inline]
pub(super) fn v4_of(key: u64) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from_bits((key >> 17) as u32),
        (key >> 1) as u16,
    ))
}

/// Whether `key` is an IPv4 address (its text cached by the writer under the key itself).
#[inline]
pub(super) fn is_v4(key: u64) -> bool {
    key & ADDR_V4 != 0
}

/// Records and the bytes they refer to.
#[derive(Default)]
pub struct Records {
    pub fixed: Vec<Fixed>,
    /// Dubbo calls, compact ([`DubboRec`]; in order among `fixed` by [`Fixed::after`]).
    pub dubbo: Vec<DubboRec>,
    /// Borrowed bytes copied (strings and header values).
    pub arena: Vec<u8>,
    /// Header value spans (several per record whose format shows headers).
    spans: Vec<Span>,
    /// IPv6 addresses of compact records.
    v6: Vec<SocketAddr>,
    /// Interface, method, version and group of compact records whose format shows them.
    calls: Vec<[Span; 4]>,
    /// Bytes of the fixed-size parts (records, addresses, calls).
    held: usize,
}

impl Records {
    pub fn with_capacity(records: usize, bytes: usize) -> Records {
        Records {
            fixed: Vec::with_capacity(records),
            arena: Vec::with_capacity(bytes),
            ..Records::default()
        }
    }

    pub fn clear(&mut self) {
        self.fixed.clear();
        self.dubbo.clear();
        self.arena.clear();
        self.spans.clear();
        self.v6.clear();
        self.calls.clear();
        self.held = 0;
    }

    /// What the batch holds, in bytes (its flush threshold).
    #[inline]
    pub fn bytes(&self) -> usize {
        self.held + self.arena.len() + self.spans.len() * std::mem::size_of::<Span>()
    }

    /// The memory the batch keeps (a batch grown far past the threshold is not reused).
    pub fn capacity_bytes(&self) -> usize {
        self.fixed.capacity() * std::mem::size_of::<Fixed>()
            + self.dubbo.capacity() * std::mem::size_of::<DubboRec>()
            + self.arena.capacity()
            + self.spans.capacity() * std::mem::size_of::<Span>()
            + self.v6.capacity() * std::mem::size_of::<SocketAddr>()
            + self.calls.capacity() * std::mem::size_of::<[Span; 4]>()
    }

    pub fn len(&self) -> usize {
        self.fixed.len() + self.dubbo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty() && self.dubbo.is_empty()
    }

    #[inline]
    fn copy(&mut self, s: Option<&[u8]>) -> Span {
        match s {
            Some(s) => {
                let at = self.arena.len() as u32;
                self.arena.extend_from_slice(s);
                Span {
                    at,
                    len: s.len() as u32,
                }
            }
            None => MISSING,
        }
    }

    /// Appends `r` as a record for the format at `format` in the batch's table, which shows
    /// the headers `names` (the format's [`super::Format::headers`]) and the fields `shows`
    /// (the others are not copied: the writer sees them missing, and the format never asks).
    pub fn push(&mut self, r: &Record<'_>, format: u16, names: &[(Part, String)], shows: Shows) {
        let mut headers = Span { at: 0, len: 0 };
        if !names.is_empty() && r.headers.any() {
            headers.at = self.spans.len() as u32;
            headers.len = names.len() as u32;
            for (part, name) in names {
                let v = r.headers.get(*part, name);
                let span = self.copy(v);
                self.spans.push(span);
            }
        }
        let (dubbo, request_id) = match r.dubbo {
            Some(d) if shows.dubbo => (
                [
                    self.copy(Some(d.interface)),
                    self.copy(Some(d.method)),
                    self.copy(Some(d.version)),
                    self.copy(Some(d.group)),
                ],
                d.request_id,
            ),
            _ => ([MISSING; 4], 0),
        };
        let fixed = Fixed {
            after: self.dubbo.len() as u32,
            start: r.start,
            duration: Elapsed::Took(r.duration),
            response_code: r.response_code,
            grpc_status: r.grpc_status,
            flags: r.flags,
            format,
            has_dubbo: r.dubbo.is_some(),
            headers,
            upstream_host: r.upstream_host,
            downstream_remote: r.downstream_remote,
            downstream_local: r.downstream_local,
            bytes_received: r.bytes_received,
            bytes_sent: r.bytes_sent,
            request_id,
            protocol: match shows.protocol {
                true => r.protocol,
                false => None,
            },
            cluster: match shows.cluster {
                true => self.copy(r.upstream_cluster.map(str::as_bytes)),
                false => MISSING,
            },
            route: match shows.route {
                true => self.copy(r.route_name.map(str::as_bytes)),
                false => MISSING,
            },
            dubbo,
        };
        self.held += std::mem::size_of::<Fixed>();
        self.fixed.push(fixed);
    }

    /// Appends Dubbo call `d` as a compact record ([`DubboRec`]) for the format at `format`
    /// (which shows `shows`): what [`Records::push`] of `d.record()` keeps, in a third of the
    /// bytes (`tests::compact_dubbo_records_render_as_general_ones`), or one more repeat of
    /// the last record when its line is that record's ([`Records::repeat_dubbo`]).
    #[inline]
    pub fn push_dubbo(&mut self, d: &DubboLine<'_>, format: u16, shows: Shows) {
        if !self.repeat_dubbo(d.rec, (d.upstream, d.upstream_cluster), format, shows) {
            self.push_dubbo_new(d, format, shows);
        }
    }

    /// Counts Dubbo call `rec` (answered by `upstream` of `cluster`: a [`DubboLine`]'s) as a
    /// repeat of the last record when the call's line is that record's line (true), without
    /// a record of its own: the last record is a compact one (no general record was pushed
    /// after it) of the same format, and the call equals it in everything a format can show
    /// (the request id and interface, method, version and group are shown by no format that
    /// repeats; the cluster is compared when shown). The
    /// calls of one read share their start and, answered in one provider read, their end:
    /// most calls of a busy connection repeat the one before
    /// (`tests::repeated_calls_render_as_each_their_own_line`).
    #[inline(always)]
    pub fn repeat_dubbo(
        &mut self,
        rec: &DubboRec,
        (upstream, cluster): (Option<SocketAddr>, Option<&str>),
        format: u16,
        shows: Shows,
    ) -> bool {
        if shows.dubbo {
            return false;
        }
        let n = self.dubbo.len();
        if self.fixed.last().is_some_and(|f| f.after as usize == n) {
            return false;
        }
        let upstream = addr_key(upstream);
        let Some(l) = self.dubbo.last() else {
            return false;
        };
        let r = rec;
        // IPv6 keys never match: a record's are its batch's indexes, a call's unset.
        let diff = (r.start_ns ^ l.start_ns)
            | (upstream ^ l.upstream)
            | (r.remote ^ l.remote)
            | (r.local ^ l.local)
            | u64::from(r.bytes_received ^ l.bytes_received)
            | u64::from(r.bytes_sent ^ l.bytes_sent)
            | u64::from(format ^ l.format)
            | u64::from(r.flags.bits() ^ l.flags.bits())
            | u64::from(r.status ^ l.status)
            | u64::from(l.repeat == u16::MAX);
        if diff != 0 || r.started != l.started || r.ended != l.ended {
            return false;
        }
        if shows.cluster && !self.same_cluster(l.cluster, cluster) {
            return false;
        }
        if let Some(l) = self.dubbo.last_mut() {
            l.repeat += 1;
        }
        true
    }

    /// Whether the cluster copied at `s` is `c`.
    #[inline(never)]
    fn same_cluster(&self, s: Span, c: Option<&str>) -> bool {
        self.bytes_of(s) == c.map(str::as_bytes)
    }

    /// [`Records::push_dubbo`] of a call that does not repeat the last record.
    #[inline]
    pub fn push_dubbo_new(&mut self, d: &DubboLine<'_>, format: u16, shows: Shows) {
        // What the batch adds, first; then the record copied once into its place and those
        // written over it (not built on the stack and copied again).
        let mut upstream = addr_key(d.upstream);
        if upstream == ADDR_V6_UNSET {
            upstream = self.v6(d.upstream);
        }
        let (mut remote, mut local) = (d.rec.remote, d.rec.local);
        if remote == ADDR_V6_UNSET {
            remote = self.v6(d.conn.0);
        }
        if local == ADDR_V6_UNSET {
            local = self.v6(d.conn.1);
        }
        let cluster = match shows.cluster {
            true => self.copy(d.upstream_cluster.map(str::as_bytes)),
            false => MISSING,
        };
        let call = match (shows.dubbo, &d.call) {
            (true, Some(c)) => self.dubbo_fields(c),
            _ => u32::MAX,
        };
        self.held += std::mem::size_of::<DubboRec>();
        // Copied from the caller's record straight into the vector (`push` of `*d.rec` goes
        // through the stack).
        self.dubbo.extend_from_slice(std::slice::from_ref(d.rec));
        if let Some(r) = self.dubbo.last_mut() {
            r.format = format;
            r.upstream = upstream;
            r.remote = remote;
            r.local = local;
            r.cluster = cluster;
            r.call = call;
            r.repeat = 0;
        }
    }

    /// An IPv6 address of a compact record (any other: its key).
    #[cold]
    #[inline(never)]
    fn v6(&mut self, a: Option<SocketAddr>) -> u64 {
        match a {
            Some(a @ SocketAddr::V6(_)) => {
                self.held += std::mem::size_of::<SocketAddr>();
                self.v6.push(a);
                ADDR_V6 | (self.v6.len() - 1) as u64
            }
            a => addr_key(a),
        }
    }

    /// Copies a call's interface, method, version and group; their index in `calls`.
    #[inline(never)]
    fn dubbo_fields(&mut self, c: &DubboCall<'_>) -> u32 {
        let spans = [
            self.copy(Some(c.interface)),
            self.copy(Some(c.method)),
            self.copy(Some(c.version)),
            self.copy(Some(c.group)),
        ];
        self.held += std::mem::size_of::<[Span; 4]>();
        self.calls.push(spans);
        (self.calls.len() - 1) as u32
    }

    /// The address of key `k` ([`addr_key`]).
    #[inline]
    pub(super) fn addr(&self, k: u64) -> Option<SocketAddr> {
        if is_v4(k) {
            Some(v4_of(k))
        } else if k & ADDR_V6 != 0 {
            self.v6.get((k & u64::from(u32::MAX)) as usize).copied()
        } else {
            None
        }
    }

    /// Compact record `r` as a [`Fixed`] one (what [`Records::push`] writes for the call):
    /// the general path of the writer renders it.
    pub(super) fn expand(&self, r: &DubboRec) -> Fixed {
        Fixed {
            after: 0,
            start: UNIX_EPOCH + Duration::from_nanos(r.start_ns),
            duration: Elapsed::Between(r.started, r.ended),
            response_code: Some(u32::from(r.status)),
            grpc_status: None,
            flags: r.flags,
            format: r.format,
            has_dubbo: true,
            headers: Span { at: 0, len: 0 },
            upstream_host: self.addr(r.upstream),
            downstream_remote: self.addr(r.remote),
            downstream_local: self.addr(r.local),
            bytes_received: u64::from(r.bytes_received),
            bytes_sent: u64::from(r.bytes_sent),
            request_id: r.request_id,
            protocol: Some(DUBBO_PROTOCOL),
            cluster: r.cluster,
            route: MISSING,
            dubbo: self
                .calls
                .get(r.call as usize)
                .copied()
                .unwrap_or([MISSING; 4]),
        }
    }

    pub(super) fn bytes_of(&self, s: Span) -> Option<&[u8]> {
        if s.len == u32::MAX {
            return None;
        }
        self.arena
            .get(s.at as usize..s.at as usize + s.len as usize)
    }

    fn str_of(&self, s: Span) -> Option<&str> {
        // Copied from a `&str`, so UTF-8; checked anyway (a record never panics the writer).
        self.bytes_of(s).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The spans of record `f`'s header values, in its format's header order (empty: the
    /// call had none).
    pub(super) fn header_spans(&self, f: &Fixed) -> &[Span] {
        self.spans
            .get(f.headers.at as usize..(f.headers.at + f.headers.len) as usize)
            .unwrap_or_default()
    }

    /// The headers of record `f`, read by its format's header names.
    pub fn headers<'a>(&'a self, f: &Fixed, names: &'a [(Part, String)]) -> RecordHeaders<'a> {
        let spans = self
            .spans
            .get(f.headers.at as usize..(f.headers.at + f.headers.len) as usize)
            .unwrap_or_default();
        RecordHeaders {
            names,
            spans,
            records: self,
        }
    }

    /// Record `f` as the format sees it.
    pub fn record<'a>(&'a self, f: &Fixed, headers: &'a RecordHeaders<'a>) -> Record<'a> {
        Record {
            start: f.start,
            duration: f.duration.get(),
            protocol: f.protocol,
            response_code: f.response_code,
            grpc_status: f.grpc_status,
            flags: f.flags,
            upstream_host: f.upstream_host,
            upstream_cluster: self.str_of(f.cluster),
            route_name: self.str_of(f.route),
            downstream_remote: f.downstream_remote,
            downstream_local: f.downstream_local,
            bytes_received: f.bytes_received,
            bytes_sent: f.bytes_sent,
            headers,
            dubbo: f.has_dubbo.then(|| DubboCall {
                interface: self.bytes_of(f.dubbo[0]).unwrap_or_default(),
                method: self.bytes_of(f.dubbo[1]).unwrap_or_default(),
                version: self.bytes_of(f.dubbo[2]).unwrap_or_default(),
                group: self.bytes_of(f.dubbo[3]).unwrap_or_default(),
                request_id: f.request_id,
            }),
        }
    }
}

/// The header values of a record, by its format's header names.
pub struct RecordHeaders<'a> {
    names: &'a [(Part, String)],
    spans: &'a [Span],
    records: &'a Records,
}

impl Headers for RecordHeaders<'_> {
    fn get(&self, part: Part, name: &str) -> Option<&[u8]> {
        if self.spans.is_empty() {
            return None;
        }
        let i = self
            .names
            .iter()
            .position(|(p, n)| *p == part && n == name)?;
        self.records.bytes_of(*self.spans.get(i)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::Format;

    /// A Dubbo call as the tests describe it: [`Call::push`] writes it the way a shard does
    /// (a [`DubboLine`] and its compact record), [`Call::record`] is what the format sees.
    #[derive(Clone, Copy)]
    struct Call<'a> {
        start: SystemTime,
        started: Instant,
        ended: Instant,
        status: u8,
        flags: Flags,
        upstream_host: Option<SocketAddr>,
        upstream_cluster: Option<&'a str>,
        downstream_remote: Option<SocketAddr>,
        downstream_local: Option<SocketAddr>,
        bytes_received: u64,
        bytes_sent: u64,
        request_id: u64,
        call: Option<DubboCall<'a>>,
    }

    impl<'a> Call<'a> {
        fn push(&self, records: &mut Records, format: u16, shows: Shows) {
            let conn = (self.downstream_remote, self.downstream_local);
            let rec = self.rec();
            let line = self.line(&conn, &rec);
            records.push_dubbo(&line, format, shows);
        }

        /// [`Call::push`] as a record of its own (never a repeat of the last one).
        fn push_new(&self, records: &mut Records, format: u16, shows: Shows) {
            let conn = (self.downstream_remote, self.downstream_local);
            let rec = self.rec();
            let line = self.line(&conn, &rec);
            records.push_dubbo_new(&line, format, shows);
        }

        fn rec(&self) -> DubboRec {
            DubboRec::new(
                self.start
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                (self.started, self.ended),
                self.request_id,
                (self.bytes_received as usize, self.bytes_sent as usize),
                self.status,
                self.flags,
                (
                    addr_key(self.downstream_remote),
                    addr_key(self.downstream_local),
                ),
            )
        }

        fn line<'c>(
            &self,
            conn: &'c (Option<SocketAddr>, Option<SocketAddr>),
            rec: &'c DubboRec,
        ) -> DubboLine<'c>
        where
            'a: 'c,
        {
            DubboLine {
                rec,
                upstream: self.upstream_host,
                conn,
                upstream_cluster: self.upstream_cluster,
                call: self.call,
            }
        }

        fn record(&self) -> Record<'a> {
            Record {
                start: self.start,
                duration: self.ended.saturating_duration_since(self.started),
                protocol: Some(DUBBO_PROTOCOL),
                response_code: Some(u32::from(self.status)),
                grpc_status: None,
                flags: self.flags,
                upstream_host: self.upstream_host,
                upstream_cluster: self.upstream_cluster,
                route_name: None,
                downstream_remote: self.downstream_remote,
                downstream_local: self.downstream_local,
                bytes_received: self.bytes_received,
                bytes_sent: self.bytes_sent,
                headers: crate::access_log::NO_HEADERS,
                dubbo: Some(self.call.unwrap_or(DubboCall {
                    interface: b"",
                    method: b"",
                    version: b"",
                    group: b"",
                    request_id: self.request_id,
                })),
            }
        }
    }

    struct H(Vec<(Part, &'static str, &'static str)>);

    impl Headers for H {
        fn get(&self, part: Part, name: &str) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(p, n, _)| *p == part && *n == name)
                .map(|(_, _, v)| v.as_bytes())
        }
    }

    /// Renders `r` directly and through a record written and read back: the same text.
    fn same_line(f: &Format, r: &Record<'_>) -> String {
        let mut direct = Vec::new();
        f.render(r, &mut direct);
        let names: Vec<(Part, String)> = f.headers();
        let mut records = Records::default();
        records.push(r, 7, &names, f.shows());
        records.push(r, 7, &names, Shows::ALL);
        let mut n = 0;
        for rec in &records.fixed {
            assert_eq!(rec.format, 7);
            let h = records.headers(rec, &names);
            let mut back = Vec::new();
            f.render(&records.record(rec, &h), &mut back);
            assert_eq!(
                String::from_utf8_lossy(&back),
                String::from_utf8_lossy(&direct)
            );
            n += 1;
        }
        assert_eq!(n, 2);
        // The writer's renderer (line::Lines), twice each (its caches then hold the time
        // and the addresses), from a small buffer (it grows for a long line).
        let formats: Vec<(std::sync::Arc<Format>, crate::access_log::sink::HeaderNames)> =
            vec![(std::sync::Arc::new(f.clone()), names.clone().into())];
        let mut records = Records::default();
        records.push(r, 0, &names, f.shows());
        records.push(r, 0, &names, Shows::ALL);
        let mut lines = crate::access_log::line::Lines::with_capacity(16);
        for _ in 0..2 {
            lines.batch(&formats);
            for rec in &records.fixed {
                lines.line(&records, rec, &formats);
                assert_eq!(
                    String::from_utf8_lossy(lines.text()),
                    String::from_utf8_lossy(&direct)
                );
                lines.clear();
            }
        }
        String::from_utf8(direct).unwrap()
    }

    /// One writer renders records of every shape through each format, interleaved (its
    /// templates are made from the first record of each shape and reused by the others):
    /// each line the same as the format renders it directly.
    fn same_lines(formats: &[&Format], rs: &[&Record<'_>]) {
        let formats: Vec<(std::sync::Arc<Format>, crate::access_log::sink::HeaderNames)> = formats
            .iter()
            .map(|f| (std::sync::Arc::new((*f).clone()), f.headers().into()))
            .collect();
        let mut records = Records::default();
        let mut want = Vec::new();
        // Forwards, backwards, forwards: a shape's template is made from its first record
        // and used for the others.
        let order = (0..rs.len()).chain((0..rs.len()).rev()).chain(0..rs.len());
        for i in order {
            let r = rs[i];
            {
                for (fi, (f, names)) in formats.iter().enumerate() {
                    records.push(r, fi as u16, names, f.shows());
                    let mut direct = Vec::new();
                    f.render(r, &mut direct);
                    want.push(direct);
                }
            }
        }
        let mut lines = crate::access_log::line::Lines::with_capacity(64);
        lines.batch(&formats);
        for (rec, want) in records.fixed.iter().zip(&want) {
            lines.line(&records, rec, &formats);
            assert_eq!(
                String::from_utf8_lossy(lines.text()),
                String::from_utf8_lossy(want)
            );
            lines.clear();
        }
        assert_eq!(records.fixed.len(), want.len());
    }

    /// A Dubbo call written straight from its [`Call`] renders as its record does, in
    /// every format, with and without the Dubbo fields kept.
    #[test]
    fn a_dubbo_line_renders_as_its_record() {
        let started = Instant::now();
        let formats: Vec<Format> = [EVERYTHING, crate::access_log::format::DEFAULT_FORMAT]
            .iter()
            .map(|f| Format::text(f).unwrap())
            .collect();
        let formats: Vec<(std::sync::Arc<Format>, crate::access_log::sink::HeaderNames)> = formats
            .into_iter()
            .map(|f| {
                let names = f.headers().into();
                (std::sync::Arc::new(f), names)
            })
            .collect();
        let call = DubboCall {
            interface: b"org.apache.dubbo.EchoService",
            method: b"echo",
            version: b"1.0",
            group: b"",
            request_id: 77,
        };
        let mut lines = crate::access_log::line::Lines::with_capacity(64);
        for (i, kept) in [Some(call), None, Some(call)].into_iter().enumerate() {
            let d = Call {
                start: UNIX_EPOCH + Duration::new(1_764_900_000 + i as u64, 5_000_000),
                started,
                ended: started + Duration::from_micros(1_500 * i as u64 + 999),
                status: 20 + i as u8,
                flags: if i == 1 {
                    Flags::NO_HEALTHY_UPSTREAM
                } else {
                    Flags::NONE
                },
                upstream_host: (i != 1).then(|| "10.1.2.3:20880".parse().unwrap()),
                upstream_cluster: Some("outbound|20880||echo"),
                downstream_remote: Some("10.9.8.7:4711".parse().unwrap()),
                downstream_local: None,
                bytes_received: 330 + i as u64,
                bytes_sent: 1_234,
                request_id: 77,
                call: kept,
            };
            let mut records = Records::default();
            for (fi, (f, _)) in formats.iter().enumerate() {
                d.push(&mut records, fi as u16, f.shows());
            }
            lines.batch(&formats);
            assert_eq!(records.dubbo.len(), formats.len());
            for (rec, (f, _)) in records.dubbo.iter().zip(&formats) {
                let mut want = Vec::new();
                let r = d.record();
                // A call whose fields were not kept shows them as `-` (its format does not
                // show them: the caller keeps them when it does).
                let r = Record {
                    dubbo: Some(kept.unwrap_or(DubboCall {
                        interface: b"",
                        method: b"",
                        version: b"",
                        group: b"",
                        request_id: 77,
                    })),
                    ..r
                };
                f.render(&r, &mut want);
                lines.dubbo_line(&records, rec, &formats);
                assert_eq!(
                    String::from_utf8_lossy(lines.text()),
                    String::from_utf8_lossy(&want)
                );
                lines.clear();
            }
        }
    }

    /// Lines written one after the other (the writer copies the last line of a template
    /// when a record's holes read what its record's did): each line is its record's, for
    /// records that differ from the one before in one hole (the time, the duration by a
    /// millisecond, the status, each size, the upstream (IPv6 too), a shown and an unshown
    /// caller address) or in none, across a taken output.
    #[test]
    fn consecutive_lines_are_each_their_records() {
        let started = Instant::now();
        let formats: Vec<(std::sync::Arc<Format>, crate::access_log::sink::HeaderNames)> = [
            crate::access_log::format::DEFAULT_FORMAT,
            "%START_TIME% %DURATION% %RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%\n",
            "%RESPONSE_CODE% %BYTES_SENT%\n",
            // Time texts of seconds and of microseconds.
            "%START_TIME(%s)% %DURATION% %UPSTREAM_HOST%\n",
            "%START_TIME(%Y-%m-%dT%H:%M:%E6S)% %DURATION%\n",
        ]
        .iter()
        .map(|f| {
            let f = Format::text(f).unwrap();
            let names = f.headers().into();
            (std::sync::Arc::new(f), names)
        })
        .collect();
        let base = Call {
            start: UNIX_EPOCH + Duration::new(1_764_900_000, 5_000_000),
            started,
            ended: started + Duration::from_micros(1_500),
            status: 20,
            flags: Flags::NONE,
            upstream_host: Some("10.1.2.3:20880".parse().unwrap()),
            upstream_cluster: Some("outbound|20880||echo"),
            downstream_remote: Some("10.9.8.7:4711".parse().unwrap()),
            downstream_local: Some("10.0.0.1:20880".parse().unwrap()),
            bytes_received: 330,
            bytes_sent: 1_234,
            request_id: 77,
            call: None,
        };
        let ms = |d: &Call<'static>, us: u64| Call {
            ended: d.started + Duration::from_micros(us),
            ..*d
        };
        let mut seq = vec![base, base];
        let mut next = |f: &dyn Fn(&Call<'static>) -> Call<'static>| {
            let d = f(seq.last().unwrap());
            seq.push(d);
            seq.push(d);
        };
        next(&|d| ms(d, 2_500));
        next(&|d| ms(d, 2_999));
        // The writer keeps the last pair of clock readings' milliseconds: another pair of the
        // same length, then the same end with a later start (a millisecond shorter).
        next(&|d| Call {
            started: d.started + Duration::from_millis(10),
            ended: d.ended + Duration::from_millis(10),
            ..*d
        });
        next(&|d| Call {
            started: d.started + Duration::from_millis(1),
            ..*d
        });
        next(&|d| Call {
            start: d.start + Duration::from_millis(1),
            ..*d
        });
        next(&|d| Call {
            start: d.start + Duration::from_secs(1),
            ..*d
        });
        next(&|d| Call { status: 31, ..*d });
        next(&|d| Call {
            bytes_received: 331,
            ..*d
        });
        next(&|d| Call {
            bytes_sent: 1_235,
            ..*d
        });
        next(&|d| Call {
            upstream_host: Some("10.1.2.4:20880".parse().unwrap()),
            ..*d
        });
        next(&|d| Call {
            downstream_remote: Some("10.9.8.7:4712".parse().unwrap()),
            ..*d
        });
        next(&|d| Call {
            downstream_local: Some("10.0.0.2:20880".parse().unwrap()),
            ..*d
        });
        next(&|d| Call {
            upstream_host: Some("[2001:db8::1]:20880".parse().unwrap()),
            ..*d
        });
        next(&|d| Call {
            upstream_host: None,
            ..*d
        });
        // A missing address (shown: `-` folded into another template), then there again;
        // flags (a hole the template path does not remember), then none again.
        next(&|d| Call {
            upstream_host: Some("10.1.2.4:20880".parse().unwrap()),
            downstream_remote: None,
            ..*d
        });
        next(&|d| Call {
            downstream_remote: Some("10.9.8.7:4712".parse().unwrap()),
            ..*d
        });
        next(&|d| Call {
            downstream_local: None,
            ..*d
        });
        next(&|d| Call {
            downstream_local: Some("10.0.0.2:20880".parse().unwrap()),
            ..*d
        });
        next(&|d| Call {
            flags: Flags::UPSTREAM_REQUEST_TIMEOUT,
            ..*d
        });
        next(&|d| Call {
            flags: Flags::NONE,
            ..*d
        });
        // Starts within one unit of a format's time text (the same text where it shows
        // milliseconds or seconds, another where it shows microseconds), then across into
        // the next millisecond; clock readings as far apart as the last ones, a microsecond
        // closer (the same whole milliseconds), then across into the next millisecond.
        for us in [300, 1, 699] {
            next(&|d| Call {
                start: d.start + Duration::from_micros(us),
                ..*d
            });
        }
        next(&|d| Call {
            started: d.started + Duration::from_micros(5),
            ended: d.ended + Duration::from_micros(5),
            ..*d
        });
        next(&|d| Call {
            started: d.started + Duration::from_micros(1),
            ..*d
        });
        next(&|d| Call {
            ended: d.ended + Duration::from_micros(2),
            ..*d
        });
        next(&|d| *d);
        // The formats interleaved (each record's format is not the last one's), then one
        // after the other (the writer copies the last record's line without its template);
        // each call a record of its own, then as the shard writes them (a call whose line
        // is the last record's a repeat of it).
        let n = seq.len() * formats.len();
        let interleaved = |i: usize| (i % formats.len(), i / formats.len());
        let grouped = |i: usize| (i / seq.len(), i % seq.len());
        let orders = [
            (&interleaved as &dyn Fn(usize) -> (usize, usize), false),
            (&grouped, true),
        ];
        for (order, runs) in orders {
            for repeats in [false, true] {
                let mut lines = crate::access_log::line::Lines::with_capacity(64);
                let mut records = Records::default();
                let mut want = Vec::new();
                for i in 0..n {
                    let (fi, di) = order(i);
                    let (f, _) = &formats[fi];
                    let d = &seq[di];
                    match repeats {
                        true => d.push(&mut records, fi as u16, f.shows()),
                        false => d.push_new(&mut records, fi as u16, f.shows()),
                    }
                    let r = Record {
                        dubbo: Some(DubboCall {
                            interface: b"",
                            method: b"",
                            version: b"",
                            group: b"",
                            request_id: 77,
                        }),
                        ..d.record()
                    };
                    f.render(&r, &mut want);
                }
                // Only the grouped order has calls in a row of one format.
                match repeats && runs {
                    true => assert!(records.dubbo.len() < n),
                    false => assert_eq!(records.dubbo.len(), n),
                }
                lines.batch(&formats);
                // The output taken now and then: a line kept in it is gone.
                let mut taken = Vec::new();
                lines.lines(&records, &formats, 300, |lines| {
                    taken.extend_from_slice(lines.text());
                    lines.clear();
                });
                taken.extend_from_slice(lines.text());
                assert_eq!(
                    String::from_utf8_lossy(&taken),
                    String::from_utf8_lossy(&want)
                );
            }
        }
    }

    /// Calls whose lines are the last record's are counted as its repeats
    /// ([`Records::repeat_dubbo`]) and written as copies of its line: each line the format's
    /// rendering of its own call. Runs of calls that differ only in what no format shows
    /// (the request id), broken by every field a line shows, by a general record pushed in
    /// between, by another format, by a cluster the format shows (the same cluster text from
    /// another string repeats), with IPv6 addresses (never a repeat), under a format that
    /// shows the request id (never a repeat), more than `u16::MAX` in a row, and the output
    /// taken in the middle of a run.
    #[test]
    fn repeated_calls_render_as_each_their_own_line() {
        let started = Instant::now();
        let formats: Vec<(std::sync::Arc<Format>, crate::access_log::sink::HeaderNames)> = [
            crate::access_log::format::DEFAULT_FORMAT,
            "%START_TIME% %DURATION% %UPSTREAM_CLUSTER% %UPSTREAM_HOST%\n",
            "%RESPONSE_CODE% %DUBBO_REQUEST_ID%\n",
            "%RESPONSE_CODE% %BYTES_SENT%\n",
        ]
        .iter()
        .map(|f| {
            let f = Format::text(f).unwrap();
            let names = f.headers().into();
            (std::sync::Arc::new(f), names)
        })
        .collect();
        let v4 = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let base = Call {
            start: UNIX_EPOCH + Duration::new(1_764_900_000, 5_000_000),
            started,
            ended: started + Duration::from_micros(1_500),
            status: 20,
            flags: Flags::NONE,
            upstream_host: v4("10.1.2.3:20880"),
            upstream_cluster: Some("outbound|20880||echo"),
            downstream_remote: v4("10.9.8.7:4711"),
            downstream_local: v4("10.0.0.1:20880"),
            bytes_received: 330,
            bytes_sent: 1_234,
            request_id: 77,
            call: None,
        };
        // The same cluster text from another string.
        let cluster = String::from("outbound|20880||echo");
        let cluster: &'static str = Box::leak(cluster.into_boxed_str());
        let changes: Vec<Box<dyn Fn(&Call<'static>) -> Call<'static>>> = vec![
            Box::new(|d| *d),
            Box::new(|d| Call {
                start: d.start + Duration::from_nanos(1),
                ..*d
            }),
            Box::new(|d| Call {
                started: d.started + Duration::from_nanos(1),
                ..*d
            }),
            Box::new(|d| Call {
                ended: d.ended + Duration::from_nanos(1),
                ..*d
            }),
            Box::new(|d| Call { status: 31, ..*d }),
            Box::new(|d| Call {
                flags: Flags::UPSTREAM_REQUEST_TIMEOUT,
                ..*d
            }),
            Box::new(|d| Call {
                bytes_received: d.bytes_received + 1,
                ..*d
            }),
            Box::new(|d| Call {
                bytes_sent: d.bytes_sent + 1,
                ..*d
            }),
            Box::new(|d| Call {
                upstream_host: v4("10.1.2.4:20880"),
                ..*d
            }),
            Box::new(|d| Call {
                upstream_host: None,
                ..*d
            }),
            Box::new(|d| Call {
                downstream_remote: v4("10.9.8.7:4712"),
                ..*d
            }),
            Box::new(|d| Call {
                downstream_local: None,
                ..*d
            }),
            Box::new(|d| Call {
                upstream_cluster: Some("outbound|20880||other"),
                ..*d
            }),
            Box::new(|d| Call {
                upstream_cluster: None,
                ..*d
            }),
            Box::new(move |d| Call {
                upstream_cluster: Some(cluster),
                ..*d
            }),
            Box::new(|d| Call {
                upstream_host: v4("[2001:db8::1]:20880"),
                downstream_remote: v4("[fe80::1%3]:4711"),
                ..*d
            }),
        ];
        let mut records = Records::default();
        let mut want = Vec::new();
        let calls = std::cell::Cell::new(0);
        let push = |records: &mut Records, want: &mut Vec<u8>, d: &Call<'static>, fi: usize| {
            let (f, _) = &formats[fi];
            d.push(records, fi as u16, f.shows());
            let r = d.record();
            f.render(&r, want);
            calls.set(calls.get() + 1);
        };
        for fi in 0..formats.len() {
            for (ci, change) in changes.iter().enumerate() {
                // A run of the call (another request id each), the change, a run of that.
                let d = Call {
                    request_id: 100 + ci as u64,
                    ..base
                };
                for i in 0..4 {
                    push(&mut records, &mut want, &Call { request_id: d.request_id + i, ..d }, fi);
                }
                let e = change(&d);
                for i in 0..3 {
                    push(&mut records, &mut want, &Call { request_id: e.request_id + i, ..e }, fi);
                }
                // Another format in between, then a general record in between.
                let other = (fi + 1) % formats.len();
                push(&mut records, &mut want, &e, other);
                push(&mut records, &mut want, &e, fi);
                let (f, names) = &formats[fi];
                let general = Call { status: 99, ..e }.record();
                records.push(&general, fi as u16, names, f.shows());
                f.render(&general, &mut want);
                calls.set(calls.get() + 1);
                push(&mut records, &mut want, &e, fi);
                push(&mut records, &mut want, &e, fi);
            }
        }
        // More than a record counts: the next call a record of its own.
        let (fi, long) = (3, u16::MAX as usize + 5);
        for i in 0..long {
            push(&mut records, &mut want, &Call { request_id: i as u64, ..base }, fi);
        }
        assert!(records.dubbo.len() + records.fixed.len() < calls.get() / 2);
        assert!(records.dubbo.iter().any(|r| r.repeat == u16::MAX));
        for limit in [64, 300, 1 << 20] {
            let mut lines = crate::access_log::line::Lines::with_capacity(64);
            lines.batch(&formats);
            let mut got = Vec::new();
            lines.lines(&records, &formats, limit, |lines| {
                got.extend_from_slice(lines.text());
                lines.clear();
            });
            got.extend_from_slice(lines.text());
            assert!(
                got == want,
                "limit {limit}: {} lines, {} wanted; first difference at byte {:?}",
                got.iter().filter(|&&b| b == b'\n').count(),
                want.iter().filter(|&&b| b == b'\n').count(),
                got.iter().zip(&want).position(|(a, b)| a != b),
            );
        }
    }

    /// A compact Dubbo record renders as the general record of the same call does
    /// ([`Records::push`] of its [`DubboLine::record`]), and as the format renders that
    /// record directly: every format (each operator, cuts, JSON, Envoy's default), calls
    /// with and without the Dubbo fields, IPv4, IPv6 and missing addresses, flags, sizes past
    /// `u16`, a cluster; the compact records interleaved with general ones (the order the
    /// shard logged them), each written twice so the writer's remembered lines are used too.
    #[test]
    fn compact_dubbo_records_render_as_general_ones() {
        let started = Instant::now();
        let formats: Vec<(std::sync::Arc<Format>, crate::access_log::sink::HeaderNames)> = [
            Format::text(EVERYTHING).unwrap(),
            Format::text(crate::access_log::format::DEFAULT_FORMAT).unwrap(),
            Format::text("%DUBBO_INTERFACE:5%|%UPSTREAM_CLUSTER%|%UPSTREAM_HOST:6%|%DURATION%|%START_TIME(%s.%E6S)%|%PROTOCOL%\n").unwrap(),
            Format::text("%START_TIME% %DURATION% %RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%\n").unwrap(),
            Format::json(
                &serde_json::from_str(
                    r#"{"code": "%RESPONSE_CODE%", "m": "%DUBBO_METHOD%", "up": "%UPSTREAM_HOST%", "cl": "%UPSTREAM_CLUSTER%", "ms": "%DURATION%", "p": "%PROTOCOL%"}"#,
                )
                .unwrap(),
            )
            .unwrap(),
        ]
        .into_iter()
        .map(|f| {
            let names = f.headers().into();
            (std::sync::Arc::new(f), names)
        })
        .collect();
        let kept = DubboCall {
            interface: b"org.apache.dubbo.EchoService",
            method: b"echo",
            version: b"1.0.0",
            group: "grüppe".as_bytes(),
            request_id: 1 << 40,
        };
        let v4 = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let base = Call {
            start: UNIX_EPOCH + Duration::new(1_764_900_000, 123_456_789),
            started,
            ended: started + Duration::from_micros(2_500),
            status: 20,
            flags: Flags::NONE,
            upstream_host: v4("10.1.2.3:20880"),
            upstream_cluster: Some("outbound|20880||echo"),
            downstream_remote: v4("10.9.8.7:4711"),
            downstream_local: v4("10.0.0.1:20880"),
            bytes_received: 330,
            bytes_sent: 1_234,
            request_id: 1 << 40,
            call: Some(kept),
        };
        let calls = [
            base,
            Call { call: None, ..base },
            Call {
                status: 31,
                flags: Flags::UPSTREAM_REQUEST_TIMEOUT,
                upstream_host: None,
                upstream_cluster: None,
                ..base
            },
            Call {
                upstream_host: v4("[2001:db8::1]:20880"),
                downstream_remote: v4("[fe80::1%3]:4711"),
                downstream_local: v4("[::1]:20880"),
                ..base
            },
            Call {
                downstream_remote: None,
                downstream_local: None,
                bytes_received: 70_000,
                bytes_sent: 256 << 20,
                ended: started + Duration::from_secs(3),
                ..base
            },
            Call {
                start: UNIX_EPOCH,
                ended: started,
                flags: Flags::NO_HEALTHY_UPSTREAM | Flags::UPSTREAM_CONNECTION_FAILURE,
                ..base
            },
        ];
        // Each call twice as a compact record and once as a general one, through every
        // format; the lines in the order they were pushed.
        let mut records = Records::default();
        let mut want = Vec::new();
        for c in calls.iter().chain(calls.iter().rev()) {
            // Twice through the formats, then twice in a row per format (the second line a
            // copy of the first).
            for (fi, (f, _)) in formats.iter().enumerate().chain(formats.iter().enumerate()) {
                c.push(&mut records, fi as u16, f.shows());
                f.render(&c.record(), &mut want);
            }
            for (fi, (f, _)) in formats.iter().enumerate() {
                for _ in 0..2 {
                    c.push(&mut records, fi as u16, f.shows());
                    f.render(&c.record(), &mut want);
                }
            }
            for (fi, (f, names)) in formats.iter().enumerate() {
                let conn = (c.downstream_remote, c.downstream_local);
                let rec = c.rec();
                let general = c.line(&conn, &rec).record();
                records.push(&general, fi as u16, names, f.shows());
                f.render(&general, &mut want);
            }
        }
        // A call's second line in a row per format is a repeat of its first (but where the
        // format shows a Dubbo field, or with IPv6 addresses).
        let repeats: usize = records.dubbo.iter().map(|r| usize::from(r.repeat)).sum();
        assert_eq!(records.dubbo.len() + repeats, 4 * records.fixed.len());
        assert_eq!(repeats, 2 * (2 * calls.len() - 2));
        let mut lines = crate::access_log::line::Lines::with_capacity(64);
        let mut got = Vec::new();
        lines.batch(&formats);
        // The output taken whenever it holds 300 bytes (a remembered line is gone then).
        lines.lines(&records, &formats, 300, |lines| {
            assert!(lines.text().len() >= 300);
            got.extend_from_slice(lines.text());
            lines.clear();
        });
        got.extend_from_slice(lines.text());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
    }

    const EVERYTHING: &str = "%START_TIME% %START_TIME(%s.%E9S %z)% %DURATION% %RESPONSE_CODE% %GRPC_STATUS% %GRPC_STATUS_NUMBER% %RESPONSE_FLAGS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %ROUTE_NAME% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %BYTES_RECEIVED% %BYTES_SENT% %PROTOCOL% %REQ(:PATH)% %REQ(X-A?X-B)% %RESP(GRPC-MESSAGE)% %TRAILER(GRPC-STATUS):1% %DUBBO_INTERFACE% %DUBBO_METHOD% %DUBBO_VERSION% %DUBBO_GROUP% %DUBBO_REQUEST_ID%\n";

    #[test]
    fn a_record_read_back_renders_the_same_line() {
        let f = Format::text(EVERYTHING).unwrap();
        let json = Format::json(
            &serde_json::from_str(
                r#"{"code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%", "b": "%REQ(X-B)%", "m": "%DUBBO_METHOD%", "up": "%UPSTREAM_HOST%"}"#,
            )
            .unwrap(),
        )
        .unwrap();
        let headers = H(vec![
            (Part::Request, ":path", "/pkg.Svc/Call"),
            (Part::Request, "x-b", "fallback \"quoted\""),
            (Part::Response, "grpc-message", ""),
            (Part::Trailer, "grpc-status", "14"),
        ]);
        let grpc = Record {
            start: UNIX_EPOCH + Duration::new(1_764_900_000, 123_456_789),
            duration: Duration::from_micros(226_900),
            protocol: Some("HTTP/2"),
            response_code: Some(200),
            grpc_status: Some(14),
            flags: Flags::UPSTREAM_CONNECTION_FAILURE | Flags::NO_HEALTHY_UPSTREAM,
            upstream_host: Some("[fe80::1%3]:8080".parse().unwrap()),
            upstream_cluster: Some("outbound|80||svc"),
            route_name: Some("r1"),
            downstream_remote: Some("10.0.35.28:4711".parse().unwrap()),
            downstream_local: Some("[::1]:15006".parse().unwrap()),
            bytes_received: 154,
            bytes_sent: u64::MAX,
            headers: &headers,
            dubbo: None,
        };
        let line = same_line(&f, &grpc);
        assert!(
            line.contains("/pkg.Svc/Call fallback \"quoted\"  1 "),
            "{line}"
        );
        assert!(line.contains("[fe80::1%3]:8080"), "{line}");
        same_line(&json, &grpc);

        let dubbo = Record {
            start: UNIX_EPOCH,
            duration: Duration::ZERO,
            protocol: Some("dubbo"),
            response_code: Some(20),
            grpc_status: None,
            flags: Flags::NONE,
            upstream_host: Some("127.0.0.1:20880".parse().unwrap()),
            upstream_cluster: None,
            route_name: None,
            downstream_remote: None,
            downstream_local: None,
            bytes_received: 0,
            bytes_sent: 0,
            headers: crate::access_log::NO_HEADERS,
            dubbo: Some(DubboCall {
                interface: b"org.apache.dubbo.EchoService",
                method: b"echo",
                version: b"",
                group: "grüppe".as_bytes(),
                request_id: 1 << 40,
            }),
        };
        let line = same_line(&f, &dubbo);
        assert!(
            line.contains("org.apache.dubbo.EchoService echo - grüppe 1099511627776"),
            "{line}"
        );
        same_line(&json, &dubbo);

        // TCP: nothing optional at all.
        let tcp = Record {
            protocol: None,
            response_code: None,
            upstream_host: None,
            dubbo: None,
            ..dubbo
        };
        same_line(&f, &tcp);
        same_line(&json, &tcp);
        same_line(
            &Format::text(crate::access_log::format::DEFAULT_FORMAT).unwrap(),
            &grpc,
        );
        let default = Format::text(crate::access_log::format::DEFAULT_FORMAT).unwrap();
        same_line(&default, &dubbo);
        same_line(&default, &tcp);

        // Truncation (inside a multi-byte character, of `-`, of numbers and times), long
        // constant text, a long time format, a hostname, every flag, a header value far
        // longer than the writer's buffer, addresses of every kind, more than it caches.
        let cut = Format::text(
            "%DUBBO_GROUP:3%|%REQ(X-B):0%|%BYTES_SENT:2%|%START_TIME:13%|%UPSTREAM_HOST:4%|%RESPONSE_FLAGS:7%|%GRPC_STATUS:4%|%HOSTNAME%|a constant piece longer than sixteen bytes|%START_TIME(%Y-%m-%d %H:%M:%S.%E9S and the epoch %s, zone %z)%|%REQ(X-LONG?X-B)%|%RESP(GRPC-MESSAGE)%|%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\n",
        )
        .unwrap();
        same_line(&cut, &dubbo);
        same_line(&cut, &grpc);
        same_line(&cut, &tcp);
        let long = "v".repeat(200_000);
        let long_headers = H(vec![
            (Part::Request, "x-long", Box::leak(long.into_boxed_str())),
            (Part::Request, "x-b", "b"),
        ]);
        let mut all_flags = Flags::NONE;
        for bit in 0..15 {
            all_flags = all_flags | Flags(1 << bit);
        }
        let flagged = Record {
            headers: &long_headers,
            flags: all_flags,
            grpc_status: Some(99),
            ..grpc
        };
        same_line(&cut, &flagged);
        let mut varied = Vec::new();
        for (i, a) in [
            "1.2.3.4:5",
            "[::1]:8080",
            "255.255.255.255:65535",
            "[fe80::1%3]:1",
            "10.0.0.1:1",
            "10.0.0.2:1",
            "10.0.0.3:1",
            "10.0.0.4:1",
            "10.0.0.5:1",
            "10.0.0.6:1",
            "10.0.0.7:1",
            "10.0.0.8:1",
            "10.0.0.9:1",
        ]
        .iter()
        .enumerate()
        {
            let a: SocketAddr = a.parse().unwrap();
            let r = Record {
                upstream_host: Some(a),
                downstream_remote: Some(a),
                downstream_local: (i % 2 == 0).then_some(a),
                start: UNIX_EPOCH + Duration::new(1_764_900_000 + i as u64, 999_999_999),
                duration: Duration::from_millis(10u64.pow(i as u32)),
                bytes_received: 10u64.pow(i as u32) - 1,
                bytes_sent: 10u64.pow(i as u32 + 6),
                ..grpc
            };
            same_line(&f, &r);
            same_line(&cut, &r);
            varied.push(r);
        }
        let http1 = Record {
            protocol: Some("HTTP/1.1"),
            grpc_status: None,
            flags: Flags::NONE,
            ..grpc
        };
        let empty_headers = H(vec![(Part::Request, ":path", "")]);
        let bare_grpc = Record {
            headers: &empty_headers,
            downstream_local: None,
            ..grpc
        };
        let mut all: Vec<&Record<'_>> = vec![&grpc, &dubbo, &tcp, &flagged, &http1, &bare_grpc];
        all.extend(varied.iter());
        same_lines(&[&f, &default, &cut, &json], &all);
    }
}
