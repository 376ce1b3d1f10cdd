//! The writer thread's renderer: a format string compiled once per format into steps that
//! read a [`Fixed`] record and its batch's arena directly, writing into one output buffer.
//!
//! The lines are the ones [`Format::render_cached`] writes for the same record, byte for
//! byte (`record::tests` renders every operator both ways, and records of every shape through
//! one writer); what differs is the cost (docs/benchmarks.md, "fifth step" and "sixth step"):
//! - no [`super::Record`] is rebuilt per line and no header is searched by name: a `%REQ(..)%`
//!   step knows the index of its header's span when the format is compiled;
//! - a line is written from its format's [`Template`] for the record's [`Shape`] (which
//!   optional parts it lacks, its protocol): every step whose text the shape fixes (a `-` for
//!   a header a Dubbo call does not have, no flags, the protocol) is folded into constant text
//!   when the first record of that shape comes, and only the other steps (the holes: times,
//!   numbers, addresses, strings) are rendered per line;
//! - the output is a buffer kept zero-filled to its length, with room for a line's fixed-size
//!   parts checked once per line ([`Template::bound`]); constant text (in pieces of
//!   [`TEXT_CHUNK`] bytes), the cached `%START_TIME%` text of the current second and cached addresses are
//!   copied as fixed-size chunks (a few stores, no `memcpy` call, no per-byte capacity check);
//! - numbers are written two digits at a time from a table, up to three digits without a loop.
//!
//! `json_format` formats (and nothing else) still go through [`Format::render_cached`] on a
//! record read back ([`Records::record`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::format::{self, LineCache, Op, Piece, TimePiece};
use std::borrow::Cow;

use super::record::{self, DubboRec, Elapsed, Fixed, Records, Span};
use super::{Flags, Format, Part, DUBBO_PROTOCOL};

/// A step's constant text up to this long is kept inline (longer: a step of its own).
const CHUNK: usize = 16;
/// The `%START_TIME%` text of a second up to this long is one fixed-size copy.
const TIME_CHUNK: usize = 32;
/// Cached address text: `255.255.255.255:65535` is 21 bytes.
const ADDR_CHUNK: usize = 24;
/// Addresses a renderer keeps (a log names the same few upstreams and callers).
const ADDR_SLOTS: usize = 8;
/// The longest a fixed-size chunk copy writes past what it keeps.
const SLACK: usize = 64;
/// Constant text of a template up to this long is one fixed-size copy.
const TEXT_CHUNK: usize = 32;
/// Templates a plan keeps (one per [`Shape`] of record seen; a log sees a few).
const TEMPLATES_MAX: usize = 8;
/// Formats a writer keeps compiled (a config change adds one; the oldest are dropped).
const PLANS_MAX: usize = 64;
/// Bytes an IPv6 socket address can take: `[` 45 `%` 10 `]:` 5.
const ADDR_MAX: usize = 64;
/// The most a repeated line's copy ([`Lines::again`]) copies at once: under glibc's
/// `rep movsb` threshold (a few KiB), where `memcpy` moves 32 bytes an instruction.
const AGAIN_BYTES: usize = 2048;

/// Two decimal digits of 0..=99 at `2 * n`.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// A format string compiled against its header names.
struct Plan {
    steps: Vec<Step>,
    /// What the steps write at most, the bytes copied from the arena (header values and
    /// strings) aside.
    bound: usize,
    /// The [`Shape`] bits of the operators the format has, and whether it shows the protocol.
    mask: u32,
    protocol: bool,
    /// The plan for each shape of record seen (built from its first record).
    templates: Vec<Template>,
    /// The template the last record used (the next one is most often of the same shape).
    last: usize,
}

/// The constant text before an operator (or the format's end), then the operator: one
/// dispatch per operator.
struct Step {
    /// Text up to [`CHUNK`] bytes, zero padded, and its length (longer text is a step of
    /// its own, [`Value::Long`], after an empty one).
    text: [u8; CHUNK],
    len: u8,
    op: Value,
    max: Option<usize>,
}

enum Value {
    /// The format's trailing text.
    End,
    /// Constant text longer than [`CHUNK`].
    Long(Box<[u8]>),
    Time(Box<TimeText>),
    Duration,
    ResponseCode,
    GrpcStatus,
    GrpcStatusNumber,
    Flags,
    Addr(Which, bool),
    Protocol,
    Str(Field),
    /// The span indexes (in the format's header names) of the header and its fallback.
    Header(Option<u16>, Option<u16>),
    BytesReceived,
    BytesSent,
    RequestId,
    Hostname,
}

/// In this order in [`Key::addrs`].
#[derive(Clone, Copy)]
enum Which {
    Upstream = 0,
    Remote = 1,
    Local = 2,
}

#[derive(Clone, Copy)]
enum Field {
    Cluster,
    Route,
    Dubbo(u8),
}

/// A `%START_TIME(...)%` operator's text of the last second it wrote.
struct TimeText {
    pieces: Vec<TimePiece>,
    secs: Option<u64>,
    text: Vec<u8>,
    /// `text` zero-padded (when it fits): one fixed-size copy.
    chunk: [u8; TIME_CHUNK],
    /// Where each fraction goes in the text, and its digits.
    fracs: Vec<(usize, u8)>,
    /// The start time (nanoseconds since the epoch) of the last record written and its whole
    /// text (fractions filled in, when it fits a chunk): the calls of one read share their
    /// start.
    last: Option<u64>,
    last_chunk: [u8; TIME_CHUNK],
}

impl Plan {
    /// None for what only [`Format::render_cached`] renders (`json_format`).
    fn compile(format: &Format, names: &[(Part, String)]) -> Option<Plan> {
        let Format::Text(pieces) = format else {
            return None;
        };
        let index = |part: Part, name: &str| {
            names
                .iter()
                .position(|(p, n)| *p == part && n == name)
                .map(|i| i as u16)
        };
        let mut bound = SLACK;
        let mut steps = Vec::with_capacity(pieces.len());
        let mut text: Vec<u8> = Vec::new();
        let push = |steps: &mut Vec<Step>, text: &mut Vec<u8>, op: Value, max: Option<usize>| {
            let mut chunk = [0u8; CHUNK];
            if text.len() > CHUNK {
                steps.push(Step {
                    text: chunk,
                    len: 0,
                    op: Value::Long(text.as_slice().into()),
                    max: None,
                });
                text.clear();
            }
            chunk[..text.len()].copy_from_slice(text);
            steps.push(Step {
                text: chunk,
                len: text.len() as u8,
                op,
                max,
            });
            text.clear();
        };
        for p in pieces {
            match p {
                Piece::Text(t) => {
                    bound += t.len();
                    text.extend_from_slice(t.as_bytes());
                }
                Piece::Op(op, max) => {
                    let (value, most) = match op {
                        Op::StartTime(pieces) => {
                            // Each piece writes at most 20 digits (a year, the epoch seconds)
                            // plus its fraction; text pieces their length.
                            let most = pieces
                                .iter()
                                .map(|p| match p {
                                    TimePiece::Text(s) => s.len(),
                                    _ => 32,
                                })
                                .sum();
                            (
                                Value::Time(Box::new(TimeText {
                                    pieces: pieces.clone(),
                                    secs: None,
                                    text: Vec::new(),
                                    chunk: [0; TIME_CHUNK],
                                    fracs: Vec::new(),
                                    last: None,
                                    last_chunk: [0; TIME_CHUNK],
                                })),
                                most,
                            )
                        }
                        Op::Duration => (Value::Duration, 20),
                        Op::ResponseCode => (Value::ResponseCode, 20),
                        Op::GrpcStatus => (Value::GrpcStatus, 24),
                        Op::GrpcStatusNumber => (Value::GrpcStatusNumber, 20),
                        Op::ResponseFlags => (
                            Value::Flags,
                            Flags::NAMES.iter().map(|(_, n)| n.len() + 1).sum(),
                        ),
                        Op::UpstreamHost => (Value::Addr(Which::Upstream, true), ADDR_MAX),
                        Op::DownstreamRemoteAddress => (Value::Addr(Which::Remote, true), ADDR_MAX),
                        Op::DownstreamRemoteAddressWithoutPort => {
                            (Value::Addr(Which::Remote, false), ADDR_MAX)
                        }
                        Op::DownstreamLocalAddress => (Value::Addr(Which::Local, true), ADDR_MAX),
                        Op::DownstreamLocalAddressWithoutPort => {
                            (Value::Addr(Which::Local, false), ADDR_MAX)
                        }
                        Op::BytesReceived => (Value::BytesReceived, 20),
                        Op::BytesSent => (Value::BytesSent, 20),
                        Op::UpstreamCluster => (Value::Str(Field::Cluster), 1),
                        Op::RouteName => (Value::Str(Field::Route), 1),
                        Op::Protocol => (Value::Protocol, 1),
                        Op::DubboInterface => (Value::Str(Field::Dubbo(0)), 1),
                        Op::DubboMethod => (Value::Str(Field::Dubbo(1)), 1),
                        Op::DubboVersion => (Value::Str(Field::Dubbo(2)), 1),
                        Op::DubboGroup => (Value::Str(Field::Dubbo(3)), 1),
                        Op::DubboRequestId => (Value::RequestId, 20),
                        Op::Header(part, a, b) => (
                            Value::Header(
                                index(*part, a),
                                b.as_deref().and_then(|b| index(*part, b)),
                            ),
                            1,
                        ),
                        Op::Hostname => (Value::Hostname, format::hostname().len() + 1),
                    };
                    bound += most;
                    push(&mut steps, &mut text, value, *max);
                }
            }
        }
        if !text.is_empty() {
            push(&mut steps, &mut text, Value::End, None);
        }
        let mask = steps
            .iter()
            .map(|s| constant_when(&s.op))
            .filter(|&w| w != u32::MAX)
            .fold(0, |m, w| m | w);
        let protocol = steps.iter().any(|s| matches!(s.op, Value::Protocol));
        Some(Plan {
            steps,
            bound,
            mask,
            protocol,
            templates: Vec::new(),
            last: 0,
        })
    }
}

/// The output: a buffer kept zero-filled to its length (`buf[..pos]` is written).
struct Out {
    buf: Vec<u8>,
    pos: usize,
    /// Counts the times the written text was taken (`pos` back to 0, or a new buffer): a
    /// line remembered at a place in `buf` is there while this has not changed.
    epoch: u64,
}

impl Out {
    /// Room for `n` more bytes.
    #[inline]
    fn room(&mut self, n: usize) {
        if self.buf.len() - self.pos < n {
            self.grow(n);
        }
    }

    #[cold]
    fn grow(&mut self, n: usize) {
        let len = (self.pos + n).max(self.buf.len() * 2);
        self.buf.resize(len, 0);
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        self.buf[self.pos] = b;
        self.pos += 1;
    }

    /// `c[..len]`, copying all of `c` (room for it was made): a fixed-size move, no call.
    #[inline]
    fn chunk<const N: usize>(&mut self, c: &[u8; N], len: usize) {
        let at = self.pos;
        let dst: &mut [u8; N] = self.buf[at..]
            .first_chunk_mut::<N>()
            .expect("room for a chunk");
        *dst = *c;
        debug_assert!(len <= N);
        self.pos = at + len;
    }

    /// Bytes of the line's fixed part (room made for the line).
    #[inline]
    fn fixed(&mut self, s: &[u8]) {
        let at = self.pos;
        self.buf[at..at + s.len()].copy_from_slice(s);
        self.pos = at + s.len();
    }

    /// Bytes from the arena: room for them and for what the line's fixed part still writes.
    #[inline]
    fn var(&mut self, s: &[u8], bound: usize) {
        self.room(s.len() + bound);
        self.fixed(s);
    }

    /// The decimal digits of `n`, two at a time (up to three digits, the common sizes of
    /// status codes, durations and small byte counts, without a loop).
    #[inline(always)]
    fn num(&mut self, n: u64) {
        let at = self.pos;
        // Fixed-size stores (a `copy_from_slice` of a slice compiles to a `memcpy` call).
        let Some(d) = self
            .buf
            .get_mut(at..)
            .and_then(|b| b.first_chunk_mut::<4>())
        else {
            return self.long_num(n);
        };
        if n < 10 {
            d[0] = b'0' + n as u8;
            self.pos = at + 1;
        } else if n < 100 {
            [d[0], d[1]] = pair(n as usize);
            self.pos = at + 2;
        } else if n < 1000 {
            d[0] = b'0' + (n / 100) as u8;
            [d[1], d[2]] = pair(n as usize % 100);
            self.pos = at + 3;
        } else {
            self.long_num(n);
        }
    }

    #[inline(never)]
    fn long_num(&mut self, mut n: u64) {
        let len = n.ilog10() as usize + 1;
        let at = self.pos;
        let digits = &mut self.buf[at..at + len];
        let mut i = len;
        while n >= 100 {
            let r = (n % 100) as usize * 2;
            n /= 100;
            i -= 2;
            digits[i] = PAIRS[r];
            digits[i + 1] = PAIRS[r + 1];
        }
        if n >= 10 {
            let r = n as usize * 2;
            digits[0] = PAIRS[r];
            digits[1] = PAIRS[r + 1];
        } else {
            digits[0] = b'0' + n as u8;
        }
        self.pos = at + len;
    }
}

/// The two digits of `n` (0..=99).
#[inline]
fn pair(n: usize) -> [u8; 2] {
    [PAIRS[n * 2], PAIRS[n * 2 + 1]]
}

#[derive(Clone, Copy, Default)]
struct AddrSlot {
    /// Bit 63: used; the IPv4 address, its port and whether the port is written.
    key: u64,
    text: [u8; ADDR_CHUNK],
    len: u8,
}

/// A file's writer: compiled formats, the output buffer and what it keeps from line to line.
pub struct Lines {
    plans: Vec<(Arc<Format>, Option<Plan>)>,
    /// The plan of each of the current batch's formats (an index in `plans`).
    batch: Vec<usize>,
    out: Out,
    addrs: [AddrSlot; ADDR_SLOTS],
    next_addr: usize,
    /// What `json_format` lines render with.
    cache: LineCache,
    scratch: Vec<u8>,
    /// The last compact Dubbo record whose line can be copied (this batch's).
    dubbo_last: Option<DubboLast>,
}

impl Lines {
    pub fn with_capacity(bytes: usize) -> Lines {
        Lines {
            plans: Vec::new(),
            batch: Vec::new(),
            out: Out {
                buf: vec![0; bytes],
                pos: 0,
                epoch: 0,
            },
            addrs: [AddrSlot::default(); ADDR_SLOTS],
            next_addr: 0,
            cache: LineCache::default(),
            scratch: Vec::new(),
            dubbo_last: None,
        }
    }

    /// What is rendered and not yet taken.
    pub fn text(&self) -> &[u8] {
        &self.out.buf[..self.out.pos]
    }

    pub fn clear(&mut self) {
        self.out.pos = 0;
        self.out.epoch += 1;
    }

    /// Shrinks a buffer a very long line grew past `bytes` (after its text was taken).
    pub fn shrink(&mut self, bytes: usize) {
        if self.out.buf.len() > 4 * bytes {
            self.out.buf = vec![0; bytes];
            self.out.pos = 0;
            self.out.epoch += 1;
        }
    }

    /// Compiles (or finds) the plans of a batch's formats.
    pub fn batch(&mut self, formats: &[(Arc<Format>, super::sink::HeaderNames)]) {
        if self.plans.len() + formats.len() > PLANS_MAX {
            self.plans.clear();
        }
        self.batch.clear();
        // Format indexes and IPv6 address keys are the batch's own.
        self.dubbo_last = None;
        for (format, names) in formats {
            let i = match self.plans.iter().position(|(f, _)| Arc::ptr_eq(f, format)) {
                Some(i) => i,
                None => {
                    self.plans
                        .push((format.clone(), Plan::compile(format, names)));
                    self.plans.len() - 1
                }
            };
            self.batch.push(i);
        }
    }

    /// Renders record `f` of `records` (its format: `formats[f.format]`, as given to
    /// [`Lines::batch`]). Not inlined: bench/callgrind-observed counts the lines formatted by
    /// its calls.
    #[inline(never)]
    pub fn line(
        &mut self,
        records: &Records,
        f: &Fixed,
        formats: &[(Arc<Format>, super::sink::HeaderNames)],
    ) {
        let Some(&plan) = self.batch.get(usize::from(f.format)) else {
            return;
        };
        let Some((_, plan)) = self.plans.get_mut(plan) else {
            return;
        };
        let Some(plan) = plan else {
            self.direct(records, f, formats);
            return;
        };
        render(
            plan,
            records,
            f,
            &mut self.out,
            &mut self.addrs,
            &mut self.next_addr,
        );
    }

    /// Record `f` rendered by its format itself (a format without a plan).
    fn direct(
        &mut self,
        records: &Records,
        f: &Fixed,
        formats: &[(Arc<Format>, super::sink::HeaderNames)],
    ) {
        let Some((format, names)) = formats.get(usize::from(f.format)) else {
            return;
        };
        let headers = records.headers(f, names);
        self.scratch.clear();
        format.render_cached(
            &records.record(f, &headers),
            &mut self.scratch,
            &mut self.cache,
        );
        self.out.var(&self.scratch, 0);
    }

    /// [`Lines::line`] for compact Dubbo record `r` (read directly on the template path; as
    /// the [`Fixed`] record [`Records::expand`] makes of it elsewhere). Not inlined:
    /// bench/callgrind-observed counts the lines formatted by its calls too.
    #[inline(never)]
    pub fn dubbo_line(
        &mut self,
        records: &Records,
        r: &DubboRec,
        formats: &[(Arc<Format>, super::sink::HeaderNames)],
    ) {
        // The line of the last record again (most lines, in a busy listener's batch).
        if let Some(last) = &self.dubbo_last {
            if last.epoch == self.out.epoch && last.same(r) {
                let (at, len) = (last.line.at, last.line.len);
                let out = &mut self.out;
                out.room(len);
                let (written, free) = out.buf.split_at_mut(out.pos);
                if let (Some(dst), Some(src)) = (free.get_mut(..len), written.get(at..at + len)) {
                    dst.copy_from_slice(src);
                    out.pos += len;
                    return;
                }
            }
        }
        self.dubbo_slow(records, r, formats);
    }

    /// [`Lines::dubbo_line`] through the record's plan and template.
    #[inline(never)]
    fn dubbo_slow(
        &mut self,
        records: &Records,
        r: &DubboRec,
        formats: &[(Arc<Format>, super::sink::HeaderNames)],
    ) {
        self.dubbo_last = None;
        let Some(&plan) = self.batch.get(usize::from(r.format)) else {
            return;
        };
        let Some((_, plan)) = self.plans.get_mut(plan) else {
            return;
        };
        let Some(plan) = plan else {
            self.direct(records, &records.expand(r), formats);
            return;
        };
        let line = render(
            plan,
            records,
            r,
            &mut self.out,
            &mut self.addrs,
            &mut self.next_addr,
        );
        self.dubbo_last = line.map(|line| DubboLast {
            rec: *r,
            line,
            epoch: self.out.epoch,
        });
    }

    /// Renders every record of a batch in the order the shard logged them (its compact Dubbo
    /// records among the others by [`Fixed::after`], each with its repeats); `full` runs
    /// after a line when the text not yet taken is `limit` bytes or more.
    pub fn lines(
        &mut self,
        records: &Records,
        formats: &[(Arc<Format>, super::sink::HeaderNames)],
        limit: usize,
        mut full: impl FnMut(&mut Lines),
    ) {
        let mut done = 0;
        for f in &records.fixed {
            let upto = (f.after as usize).clamp(done, records.dubbo.len());
            for r in records.dubbo.get(done..upto).unwrap_or_default() {
                self.dubbo_lines(records, r, formats, limit, &mut full);
            }
            done = upto;
            self.line(records, f, formats);
            if self.out.pos >= limit {
                full(self);
            }
        }
        for r in records.dubbo.get(done..).unwrap_or_default() {
            self.dubbo_lines(records, r, formats, limit, &mut full);
        }
    }

    /// The lines of compact record `r`: its own and its repeats ([`DubboRec::repeat`]).
    #[inline(always)]
    fn dubbo_lines(
        &mut self,
        records: &Records,
        r: &DubboRec,
        formats: &[(Arc<Format>, super::sink::HeaderNames)],
        limit: usize,
        full: &mut impl FnMut(&mut Lines),
    ) {
        let at = self.out.pos;
        self.dubbo_line(records, r, formats);
        if r.repeat > 0 {
            self.again(at, r.repeat, limit, full);
        }
        if self.out.pos >= limit {
            full(self);
        }
    }

    /// The line written last (from `at` to the end of the output) `n` more times, no record
    /// read: copies of the copies written so far, up to [`AGAIN_BYTES`] at a time (a few
    /// `memcpy` calls for a run, not one a line). `full` as in [`Lines::lines`], after the
    /// line that reaches `limit` (the line is kept aside before the output is taken).
    #[inline(never)]
    fn again(&mut self, mut at: usize, n: u16, limit: usize, full: &mut impl FnMut(&mut Lines)) {
        let len = self.out.pos - at;
        if len == 0 {
            return;
        }
        let mut left = usize::from(n);
        while left > 0 {
            if self.out.pos >= limit {
                self.scratch.clear();
                self.scratch
                    .extend_from_slice(self.out.buf.get(at..at + len).unwrap_or_default());
                full(self);
                at = self.out.pos;
                self.out.var(&self.scratch, 0);
                left -= 1;
                continue;
            }
            let out = &mut self.out;
            // The copies from `at` on (whole lines), as many as are left, within the copy's
            // bytes and up to the line that reaches `limit`.
            let k = ((out.pos - at) / len)
                .min(left)
                .min((AGAIN_BYTES / len).max(1))
                .min((limit - out.pos).div_ceil(len));
            let bytes = k * len;
            out.room(bytes);
            let (written, free) = out.buf.split_at_mut(out.pos);
            match (free.get_mut(..bytes), written.get(at..at + bytes)) {
                (Some(dst), Some(src)) => dst.copy_from_slice(src),
                _ => return,
            }
            out.pos += bytes;
            left -= k;
        }
    }
}

/// What a line's template path reads from a record, of either kind ([`Fixed`], [`DubboRec`]).
trait Rec {
    /// The [`Shape`] bits (before the plan masks them) and the protocol.
    fn shape(&self) -> (u32, Option<&'static str>);
    /// `%START_TIME%`: nanoseconds since the epoch (0 before it).
    fn start_ns(&self) -> u64;
    fn elapsed(&self) -> Elapsed;
    fn code(&self) -> u32;
    fn received(&self) -> u64;
    fn sent(&self) -> u64;
    /// Address `w` as a [`Key`] holds it: an IPv4 one as its [`v4_key`], 0 when missing, None
    /// for IPv6 (its line is not remembered).
    fn addr_key(&self, w: Which) -> Option<u64>;
    /// Writes address `w` with its port (`-` when missing).
    fn put_addr(
        &self,
        w: Which,
        records: &Records,
        out: &mut Out,
        addrs: &mut [AddrSlot; ADDR_SLOTS],
        next_addr: &mut usize,
    );
    /// The record as a [`Fixed`] one (what the steps and templates read).
    fn fixed<'a>(&'a self, records: &Records) -> Cow<'a, Fixed>;
}

/// Nanoseconds since the epoch of `f`'s start (0 before it).
#[inline]
fn fixed_ns(f: &Fixed) -> u64 {
    f.start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Rec for Fixed {
    #[inline]
    fn shape(&self) -> (u32, Option<&'static str>) {
        let f = self;
        let bits = u32::from(f.no_headers())
            | u32::from(f.flags.is_empty()) << 1
            | u32::from(f.grpc_status.is_none()) << 2
            | u32::from(!f.has_dubbo) << 3
            | u32::from(f.upstream_host.is_none()) << 4
            | u32::from(f.downstream_remote.is_none()) << 5
            | u32::from(f.downstream_local.is_none()) << 6;
        (bits, f.protocol)
    }

    #[inline]
    fn start_ns(&self) -> u64 {
        fixed_ns(self)
    }

    #[inline]
    fn elapsed(&self) -> Elapsed {
        self.duration
    }

    #[inline]
    fn code(&self) -> u32 {
        self.response_code.unwrap_or(0)
    }

    #[inline]
    fn received(&self) -> u64 {
        self.bytes_received
    }

    #[inline]
    fn sent(&self) -> u64 {
        self.bytes_sent
    }

    #[inline]
    fn addr_key(&self, w: Which) -> Option<u64> {
        match w.of(self) {
            Some(SocketAddr::V4(a)) => Some(v4_key(&a, true)),
            Some(SocketAddr::V6(_)) => None,
            None => Some(0),
        }
    }

    #[inline]
    fn put_addr(
        &self,
        w: Which,
        _records: &Records,
        out: &mut Out,
        addrs: &mut [AddrSlot; ADDR_SLOTS],
        next_addr: &mut usize,
    ) {
        match w.of(self) {
            Some(a) => addr(a, true, out, addrs, next_addr),
            None => out.byte(b'-'),
        }
    }

    #[inline]
    fn fixed<'a>(&'a self, _records: &Records) -> Cow<'a, Fixed> {
        Cow::Borrowed(self)
    }
}

impl DubboRec {
    #[inline]
    fn key_of(&self, w: Which) -> u64 {
        match w {
            Which::Upstream => self.upstream,
            Which::Remote => self.remote,
            Which::Local => self.local,
        }
    }
}

impl Rec for DubboRec {
    #[inline]
    fn shape(&self) -> (u32, Option<&'static str>) {
        // Never headers or a gRPC status; always a Dubbo call.
        let bits = NO_HEADERS
            | NO_GRPC
            | u32::from(self.flags.is_empty()) << 1
            | u32::from(self.upstream == record::ADDR_NONE) << 4
            | u32::from(self.remote == record::ADDR_NONE) << 5
            | u32::from(self.local == record::ADDR_NONE) << 6;
        (bits, Some(DUBBO_PROTOCOL))
    }

    #[inline]
    fn start_ns(&self) -> u64 {
        self.start_ns
    }

    #[inline]
    fn elapsed(&self) -> Elapsed {
        Elapsed::Between(self.started, self.ended)
    }

    #[inline]
    fn code(&self) -> u32 {
        u32::from(self.status)
    }

    #[inline]
    fn received(&self) -> u64 {
        u64::from(self.bytes_received)
    }

    #[inline]
    fn sent(&self) -> u64 {
        u64::from(self.bytes_sent)
    }

    #[inline]
    fn addr_key(&self, w: Which) -> Option<u64> {
        // An IPv4 key is the writer's own `v4_key` of the address with its port.
        let k = self.key_of(w);
        (k == record::ADDR_NONE || record::is_v4(k)).then_some(k)
    }

    #[inline]
    fn put_addr(
        &self,
        w: Which,
        records: &Records,
        out: &mut Out,
        addrs: &mut [AddrSlot; ADDR_SLOTS],
        next_addr: &mut usize,
    ) {
        let k = self.key_of(w);
        if record::is_v4(k) {
            if let Some(hit) = addrs.iter().find(|s| s.key == k) {
                out.chunk(&hit.text, usize::from(hit.len));
                return;
            }
        }
        match records.addr(k) {
            Some(a) => addr_slow(a, true, out, addrs, next_addr),
            None => out.byte(b'-'),
        }
    }

    #[inline]
    fn fixed<'a>(&'a self, records: &Records) -> Cow<'a, Fixed> {
        Cow::Owned(records.expand(self))
    }
}

/// What a line reads besides its step: the record, its batch and how much room to keep.
struct Ctx<'a> {
    records: &'a Records,
    f: &'a Fixed,
    headers: &'a [Span],
    /// Room kept after bytes copied from the arena (what the rest of the line writes at most).
    bound: usize,
}

/// The line of `f` through `plan`: through the template of `f`'s shape (made from `f` the
/// first time a record of that shape comes).
#[inline(always)]
fn render<R: Rec>(
    plan: &mut Plan,
    records: &Records,
    r: &R,
    out: &mut Out,
    addrs: &mut [AddrSlot; ADDR_SLOTS],
    next_addr: &mut usize,
) -> Option<Remembered> {
    let (bits, protocol) = r.shape();
    let shape = plan.shape(bits, protocol);
    let last = plan.last;
    let t = match plan.templates.get(last).filter(|t| t.shape == shape) {
        Some(_) => last,
        None => match plan.templates.iter().position(|t| t.shape == shape) {
            Some(t) => t,
            None => {
                if plan.templates.len() >= TEMPLATES_MAX {
                    plan.templates.clear();
                }
                let f = r.fixed(records);
                let t = Template::make(plan, shape, records, &f, addrs, next_addr);
                plan.templates.push(t);
                plan.templates.len() - 1
            }
        },
    };
    plan.last = t;
    let Plan {
        steps,
        templates,
        mask,
        ..
    } = plan;
    let t = &mut templates[t];
    // A line whose holes read what the last line's read is that line again: one copy.
    let key = t.memo.as_mut().and_then(|m| m.key(r));
    if let (
        Some(k),
        Some(Memo {
            last: Some(last), ..
        }),
    ) = (&key, &t.memo)
    {
        if last.epoch == out.epoch && last.key.same(k) {
            let (at, len) = (last.at, last.len);
            out.room(len);
            // The line is before `pos` (written in this epoch): one copy, no overlap.
            let (written, free) = out.buf.split_at_mut(out.pos);
            if let (Some(dst), Some(src)) = (free.get_mut(..len), written.get(at..at + len)) {
                dst.copy_from_slice(src);
                out.pos += len;
                return t
                    .memo
                    .as_ref()
                    .map(|m| m.remembered(*mask, out.pos - len, len));
            }
        }
    }
    let line_start = out.pos;
    out.room(t.bound);
    // The record as a `Fixed` one, for the steps (made once per line, when one needs it).
    let mut fixed: Option<Cow<'_, Fixed>> = None;
    for h in t.holes.iter() {
        h.text.put(out);
        // The common holes inline; the others (and any with a `:N` cut) by the step.
        match h.kind {
            Kind::Duration => out.num(match &key {
                Some(k) => k.ms,
                None => r.elapsed().get().as_millis() as u64,
            }),
            Kind::ResponseCode => out.num(u64::from(r.code())),
            Kind::BytesReceived => out.num(r.received()),
            Kind::BytesSent => out.num(r.sent()),
            Kind::Addr(which) => r.put_addr(which, records, out, addrs, next_addr),
            Kind::Time => {
                if let Some(Step {
                    op: Value::Time(t), ..
                }) = steps.get_mut(usize::from(h.step))
                {
                    // The calls of one read share their start: its text as last written.
                    let ns = match &key {
                        Some(k) => k.start,
                        None => r.start_ns(),
                    };
                    match t.last == Some(ns) {
                        true => out.chunk(&t.last_chunk, t.text.len()),
                        false => time(ns, t, out),
                    }
                }
            }
            Kind::Step => {
                if let Some(step) = steps.get_mut(usize::from(h.step)) {
                    let f = fixed.get_or_insert_with(|| r.fixed(records));
                    let ctx = Ctx {
                        records,
                        f,
                        headers: records.header_spans(f),
                        bound: t.bound,
                    };
                    value(&mut step.op, step.max, &ctx, out, addrs, next_addr);
                }
            }
            Kind::Text => {}
        }
    }
    t.tail.put(out);
    let (Some(key), Some(m)) = (key, &mut t.memo) else {
        return None;
    };
    let len = out.pos - line_start;
    m.last = Some(Last {
        key,
        at: line_start,
        len,
        epoch: out.epoch,
    });
    Some(m.remembered(*mask, line_start, len))
}

/// A line just written whose holes a [`Key`] holds: where it is, and what of a record it
/// shows (besides its status, sizes and flags): the start, the duration, which addresses (each
/// one the plan shows: its template, and so the line, depends on whether it is missing).
#[derive(Clone, Copy)]
struct Remembered {
    at: usize,
    len: usize,
    time: u64,
    duration: bool,
    addrs: [u64; 3],
}

/// The last compact Dubbo record written through a remembered line: a record equal to it in
/// what that line shows is that line again, found without the plan, template or [`Key`]
/// (the calls of one read share their start and, answered in one provider read, their end).
struct DubboLast {
    rec: DubboRec,
    line: Remembered,
    epoch: u64,
}

impl DubboLast {
    /// `r` renders as `self.rec` did (same format, status, sizes, flags; the same start,
    /// clock readings and addresses where the line shows them).
    #[inline(always)]
    fn same(&self, r: &DubboRec) -> bool {
        let (l, m) = (&self.rec, &self.line);
        let d = ((r.start_ns ^ l.start_ns) & m.time)
            | u64::from(r.format ^ l.format)
            | u64::from(r.status ^ l.status)
            | u64::from(r.flags.bits() ^ l.flags.bits())
            | u64::from(r.bytes_received ^ l.bytes_received)
            | u64::from(r.bytes_sent ^ l.bytes_sent)
            | ((r.upstream ^ l.upstream) & m.addrs[0])
            | ((r.remote ^ l.remote) & m.addrs[1])
            | ((r.local ^ l.local) & m.addrs[2]);
        d == 0 && (!m.duration || (r.started == l.started && r.ended == l.ended))
    }
}

/// Everything a [`Memo`] template's holes read from a record (what they do not show left at
/// a constant; addresses as [`v4_key`]s): two records with the same key have the same line.
#[derive(Clone, Copy)]
struct Key {
    /// Nanoseconds since the epoch.
    start: u64,
    ms: u64,
    code: u32,
    received: u64,
    sent: u64,
    upstream: u64,
    remote: u64,
    local: u64,
}

/// The last line of a template whose holes are all times, numbers and addresses with their
/// port (no string, header, flag or cut: what [`Key`] holds): a record with that line's key
/// gets a copy of it instead of its holes written again. The calls answered together share
/// their start, and a service's calls often their sizes, status and upstream: most lines of
/// a busy listener are the one before, but for their time.
struct Memo {
    /// The holes show the start, the duration, and which addresses (upstream, remote, local).
    time: bool,
    duration: bool,
    addrs: [bool; 3],
    last: Option<Last>,
    /// The two clock readings of the last record's duration and its milliseconds: the calls
    /// of one read share their start, the answers of one provider read their end, so most
    /// records repeat the last pair (no `Instant` subtraction, ~55 instructions).
    between: Option<(Instant, Instant, u64)>,
}

impl Key {
    /// Equal (every field compared, no branch per field and no `memcmp` call).
    #[inline(always)]
    fn same(&self, o: &Key) -> bool {
        ((self.start ^ o.start)
            | (self.ms ^ o.ms)
            | u64::from(self.code ^ o.code)
            | (self.received ^ o.received)
            | (self.sent ^ o.sent)
            | (self.upstream ^ o.upstream)
            | (self.remote ^ o.remote)
            | (self.local ^ o.local))
            == 0
    }
}

#[derive(Clone, Copy)]
struct Last {
    key: Key,
    /// Where the line is in the output, and the output's [`Out::epoch`] then.
    at: usize,
    len: usize,
    epoch: u64,
}

impl Memo {
    /// What a line of this template at `at` shows of a record (`mask`: its plan's
    /// [`Shape`] bits).
    #[inline]
    fn remembered(&self, mask: u32, at: usize, len: usize) -> Remembered {
        let all = |on: bool| if on { u64::MAX } else { 0 };
        Remembered {
            at,
            len,
            time: all(self.time),
            duration: self.duration,
            addrs: [
                all(mask & NO_UPSTREAM != 0),
                all(mask & NO_REMOTE != 0),
                all(mask & NO_LOCAL != 0),
            ],
        }
    }

    /// `d` in whole milliseconds (the last pair of clock readings' again when it repeats).
    #[inline]
    fn ms(&mut self, d: Elapsed) -> u64 {
        match d {
            Elapsed::Took(d) => d.as_millis() as u64,
            Elapsed::Between(a, b) => match self.between {
                Some((la, lb, ms)) if la == a && lb == b => ms,
                _ => {
                    let ms = b.saturating_duration_since(a).as_millis() as u64;
                    self.between = Some((a, b, ms));
                    ms
                }
            },
        }
    }

    /// `None` for holes a [`Key`] does not hold.
    fn of(holes: &[Hole]) -> Option<Memo> {
        let mut m = Memo {
            time: false,
            duration: false,
            addrs: [false; 3],
            last: None,
            between: None,
        };
        for h in holes {
            match h.kind {
                Kind::Time => m.time = true,
                Kind::Duration => m.duration = true,
                Kind::Addr(w) => m.addrs[w as usize] = true,
                Kind::ResponseCode | Kind::BytesReceived | Kind::BytesSent | Kind::Text => {}
                Kind::Step => return None,
            }
        }
        Some(m)
    }

    /// `None` for a record with an IPv6 address the holes show (written each time).
    #[inline]
    fn key<R: Rec>(&mut self, f: &R) -> Option<Key> {
        let ms = match self.duration {
            true => self.ms(f.elapsed()),
            false => 0,
        };
        let addr = |w: Which| match self.addrs[w as usize] {
            true => f.addr_key(w),
            false => Some(0),
        };
        Some(Key {
            start: match self.time {
                true => f.start_ns(),
                false => 0,
            },
            ms,
            code: f.code(),
            received: f.received(),
            sent: f.sent(),
            upstream: addr(Which::Upstream)?,
            remote: addr(Which::Remote)?,
            local: addr(Which::Local)?,
        })
    }
}

/// A plan's steps for records of one [`Shape`]: what every record of that shape shows the same
/// (constant text, and operators whose value the shape fixes: a `-` for a missing address,
/// flags or header, the protocol) folded into the text before the steps left, the holes.
/// Envoy's default format for a Dubbo call has six holes (the time, four numbers, the
/// upstream) where the plan has seventeen steps.
struct Template {
    shape: Shape,
    holes: Vec<Hole>,
    /// The text after the last hole.
    tail: Text,
    /// What the template writes at most, arena bytes aside (as [`Plan::bound`]).
    bound: usize,
    /// Its last line, when its holes are what a [`Key`] holds.
    memo: Option<Memo>,
}

struct Hole {
    text: Text,
    kind: Kind,
    /// Its step in [`Plan::steps`].
    step: u16,
}

/// How a hole is written: the common operators (without a `:N` cut) directly, the others
/// through their step.
#[derive(Clone, Copy)]
enum Kind {
    Duration,
    ResponseCode,
    BytesReceived,
    BytesSent,
    /// An address with its port.
    Addr(Which),
    /// `%START_TIME%` (its text is kept in the step).
    Time,
    Step,
    /// Constant text only.
    Text,
}

impl Kind {
    fn of(step: &Step) -> Kind {
        if step.max.is_some() {
            return Kind::Step;
        }
        match step.op {
            Value::Duration => Kind::Duration,
            Value::ResponseCode => Kind::ResponseCode,
            Value::BytesReceived => Kind::BytesReceived,
            Value::BytesSent => Kind::BytesSent,
            Value::Addr(w, true) => Kind::Addr(w),
            Value::Time(_) => Kind::Time,
            _ => Kind::Step,
        }
    }
}

impl Which {
    #[inline]
    fn of(self, f: &Fixed) -> Option<SocketAddr> {
        match self {
            Which::Upstream => f.upstream_host,
            Which::Remote => f.downstream_remote,
            Which::Local => f.downstream_local,
        }
    }
}

/// Constant text up to [`TEXT_CHUNK`] bytes: one fixed-size copy (longer text is split over
/// holes of kind [`Kind::Text`]).
struct Text {
    chunk: [u8; TEXT_CHUNK],
    len: usize,
}

impl Text {
    fn new(t: &[u8]) -> Text {
        let mut chunk = [0; TEXT_CHUNK];
        let len = t.len().min(TEXT_CHUNK);
        chunk[..len].copy_from_slice(&t[..len]);
        Text { chunk, len }
    }

    #[inline]
    fn put(&self, out: &mut Out) {
        out.chunk(&self.chunk, self.len);
    }
}

/// Holes of kind [`Kind::Text`] for all but the last [`TEXT_CHUNK`] bytes of `text` (or less),
/// which are returned.
fn split_text<'t>(text: &'t [u8], holes: &mut Vec<Hole>) -> &'t [u8] {
    let mut rest = text;
    while rest.len() > TEXT_CHUNK {
        let (head, tail) = rest.split_at(TEXT_CHUNK);
        holes.push(Hole {
            text: Text::new(head),
            kind: Kind::Text,
            step: 0,
        });
        rest = tail;
    }
    rest
}

/// Which of a record's optional parts are missing (bit per part, only those the plan shows)
/// and, when the plan shows it, its protocol text: records of one shape render every step
/// but the holes the same.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Shape {
    bits: u32,
    protocol: (usize, usize),
}

const NO_HEADERS: u32 = 1;
const NO_FLAGS: u32 = 1 << 1;
const NO_GRPC: u32 = 1 << 2;
const NO_DUBBO: u32 = 1 << 3;
const NO_UPSTREAM: u32 = 1 << 4;
const NO_REMOTE: u32 = 1 << 5;
const NO_LOCAL: u32 = 1 << 6;

impl Plan {
    /// The shape of a record with `bits` ([`Rec::shape`]) and `protocol`.
    #[inline]
    fn shape(&self, bits: u32, protocol: Option<&'static str>) -> Shape {
        Shape {
            bits: bits & self.mask,
            protocol: match (self.protocol, protocol) {
                (true, Some(p)) => (p.as_ptr() as usize, p.len()),
                _ => (0, 0),
            },
        }
    }
}

/// The [`Shape`] bit that makes `op` constant, `u32::MAX` for an operator constant in every
/// record, 0 for one never constant (a hole in every template).
fn constant_when(op: &Value) -> u32 {
    match op {
        Value::End | Value::Long(_) | Value::Hostname | Value::Protocol => u32::MAX,
        Value::Time(_)
        | Value::Duration
        | Value::ResponseCode
        | Value::BytesReceived
        | Value::BytesSent
        | Value::Str(_) => 0,
        Value::GrpcStatus | Value::GrpcStatusNumber => NO_GRPC,
        Value::Flags => NO_FLAGS,
        Value::Addr(Which::Upstream, _) => NO_UPSTREAM,
        Value::Addr(Which::Remote, _) => NO_REMOTE,
        Value::Addr(Which::Local, _) => NO_LOCAL,
        Value::Header(..) => NO_HEADERS,
        Value::RequestId => NO_DUBBO,
    }
}

impl Template {
    /// The template of `shape` (the shape of `f`): each step's value for `f` where the shape
    /// fixes it.
    fn make(
        plan: &mut Plan,
        shape: Shape,
        records: &Records,
        f: &Fixed,
        addrs: &mut [AddrSlot; ADDR_SLOTS],
        next_addr: &mut usize,
    ) -> Template {
        let mut scratch = Out {
            buf: vec![0; plan.bound],
            pos: 0,
            epoch: 0,
        };
        let ctx = Ctx {
            records,
            f,
            headers: records.header_spans(f),
            bound: plan.bound,
        };
        let mut holes = Vec::new();
        let mut text: Vec<u8> = Vec::new();
        let mut folded = 0;
        for (i, step) in plan.steps.iter_mut().enumerate() {
            text.extend_from_slice(&step.text[..usize::from(step.len)]);
            let when = constant_when(&step.op);
            if when != 0 && (when == u32::MAX || shape.bits & when != 0) {
                scratch.pos = 0;
                value(&mut step.op, step.max, &ctx, &mut scratch, addrs, next_addr);
                text.extend_from_slice(&scratch.buf[..scratch.pos]);
                folded += scratch.pos;
            } else {
                let last = split_text(&text, &mut holes);
                holes.push(Hole {
                    text: Text::new(last),
                    kind: Kind::of(step),
                    step: i as u16,
                });
                text.clear();
            }
        }
        let tail = Text::new(split_text(&text, &mut holes));
        Template {
            shape,
            memo: Memo::of(&holes),
            holes,
            tail,
            bound: plan.bound + folded,
        }
    }
}

/// Writes the value of one operator (after its step's text).
fn value(
    op: &mut Value,
    max: Option<usize>,
    ctx: &Ctx<'_>,
    out: &mut Out,
    addrs: &mut [AddrSlot; ADDR_SLOTS],
    next_addr: &mut usize,
) {
    let f = ctx.f;
    let start = out.pos;
    let shown = match op {
        Value::End => return,
        Value::Long(t) => {
            out.fixed(t);
            return;
        }
        Value::Time(t) => {
            time(fixed_ns(f), t, out);
            true
        }
        Value::Duration => {
            out.num(f.duration.get().as_millis() as u64);
            true
        }
        Value::ResponseCode => {
            out.num(u64::from(f.response_code.unwrap_or(0)));
            true
        }
        Value::GrpcStatus => match f.grpc_status {
            Some(s) => {
                out.fixed(format::grpc_status_name(s).as_bytes());
                true
            }
            None => false,
        },
        Value::GrpcStatusNumber => match f.grpc_status {
            Some(s) => {
                out.num(u64::from(s));
                true
            }
            None => false,
        },
        Value::Flags => {
            if f.flags.is_empty() {
                out.byte(b'-');
            } else {
                let mut first = true;
                for (flag, name) in Flags::NAMES {
                    if f.flags.contains(*flag) {
                        if !first {
                            out.byte(b',');
                        }
                        out.fixed(name.as_bytes());
                        first = false;
                    }
                }
            }
            true
        }
        Value::Addr(which, port) => match which.of(f) {
            Some(a) => {
                addr(a, *port, out, addrs, next_addr);
                true
            }
            None => false,
        },
        Value::Protocol => match f.protocol {
            Some(p) if !p.is_empty() => {
                out.var(p.as_bytes(), ctx.bound);
                true
            }
            _ => false,
        },
        Value::Str(field) => {
            let span = match field {
                Field::Cluster => f.cluster,
                Field::Route => f.route,
                Field::Dubbo(i) => f.dubbo[usize::from(*i) & 3],
            };
            match ctx.records.bytes_of(span) {
                Some(s) if !s.is_empty() => {
                    out.var(s, ctx.bound);
                    true
                }
                _ => false,
            }
        }
        Value::Header(a, b) => {
            let get = |i: Option<u16>| {
                i.and_then(|i| ctx.headers.get(usize::from(i)))
                    .and_then(|s: &Span| ctx.records.bytes_of(*s))
            };
            // A header sent empty renders empty (Envoy); only a missing one is `-`.
            match get(*a).or_else(|| get(*b)) {
                Some(v) => {
                    out.var(v, ctx.bound);
                    true
                }
                None => false,
            }
        }
        Value::BytesReceived => {
            out.num(f.bytes_received);
            true
        }
        Value::BytesSent => {
            out.num(f.bytes_sent);
            true
        }
        Value::RequestId => match f.has_dubbo {
            true => {
                out.num(f.request_id);
                true
            }
            false => false,
        },
        Value::Hostname => {
            let h = format::hostname().as_bytes();
            match h.is_empty() {
                true => false,
                false => {
                    out.fixed(h);
                    true
                }
            }
        }
    };
    if !shown {
        out.byte(b'-');
    }
    if let Some(max) = max {
        // Cut to `max` bytes at a UTF-8 boundary (as `format::truncate`).
        if out.pos - start > max {
            let mut end = start + max;
            while end > start && (out.buf[end] & 0xC0) == 0x80 {
                end -= 1;
            }
            out.pos = end;
        }
    }
}

/// Writes `%START_TIME%` of a record that started `ns` after the epoch; keeps the text as
/// `t.last` (when it fits a chunk: the caller copies it for the next record with the same
/// start).
fn time(ns: u64, t: &mut TimeText, out: &mut Out) {
    let since = Duration::from_nanos(ns);
    let secs = since.as_secs();
    if t.secs != Some(secs) {
        t.text.clear();
        t.fracs.clear();
        format::second(secs, &t.pieces, &mut t.text, &mut t.fracs);
        if t.text.len() <= TIME_CHUNK {
            t.chunk = [0; TIME_CHUNK];
            t.chunk[..t.text.len()].copy_from_slice(&t.text);
        }
        t.secs = Some(secs);
        t.last = None;
    }
    let start = out.pos;
    let fits = t.text.len() <= TIME_CHUNK;
    t.last = None;
    if fits {
        out.chunk(&t.chunk, t.text.len());
    } else {
        out.fixed(&t.text);
    }
    let nanos = since.subsec_nanos();
    for &(at, digits) in &t.fracs {
        let at = start + at;
        if digits == 3 {
            // Milliseconds (Envoy's default): the hundreds, then two digits from the table.
            let ms = (nanos / 1_000_000) as usize;
            let d: &mut [u8; 3] = out.buf[at..].first_chunk_mut().expect("fraction");
            let [a, b] = pair(ms % 100);
            *d = [b'0' + (ms / 100) as u8, a, b];
            continue;
        }
        let mut frac = match digits {
            6 => nanos / 1_000,
            _ => nanos,
        };
        for b in out.buf[at..at + usize::from(digits)].iter_mut().rev() {
            *b = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
    }
    if fits {
        if let Some(c) = out.buf[start..].first_chunk::<TIME_CHUNK>() {
            t.last_chunk = *c;
            t.last = Some(ns);
        }
    }
}

/// Writes address `a` (with its port, or not): a recently written IPv4 address from its cached
/// text.
#[inline]
fn addr(
    a: SocketAddr,
    port: bool,
    out: &mut Out,
    addrs: &mut [AddrSlot; ADDR_SLOTS],
    next_addr: &mut usize,
) {
    if let SocketAddr::V4(v4) = a {
        let key = v4_key(&v4, port);
        if let Some(hit) = addrs.iter().find(|s| s.key == key) {
            out.chunk(&hit.text, usize::from(hit.len));
            return;
        }
    }
    addr_slow(a, port, out, addrs, next_addr);
}

/// An IPv4 address, its port and whether the port is written as one non-zero number.
#[inline]
fn v4_key(a: &std::net::SocketAddrV4, port: bool) -> u64 {
    1 << 63 | u64::from(a.ip().to_bits()) << 17 | u64::from(a.port()) << 1 | u64::from(port)
}

#[inline(never)]
fn addr_slow(
    a: SocketAddr,
    port: bool,
    out: &mut Out,
    addrs: &mut [AddrSlot; ADDR_SLOTS],
    next_addr: &mut usize,
) {
    let SocketAddr::V4(v4) = a else {
        // `[ip%scope]:port` or the IP alone, as std writes them (rare: written each time).
        let text = match port {
            true => a.to_string(),
            false => a.ip().to_string(),
        };
        out.fixed(text.as_bytes());
        return;
    };
    let key = v4_key(&v4, port);
    let text = match port {
        true => v4.to_string(),
        false => v4.ip().to_string(),
    };
    let slot = &mut addrs[*next_addr];
    slot.key = key;
    slot.text = [0; ADDR_CHUNK];
    slot.text[..text.len()].copy_from_slice(text.as_bytes());
    slot.len = text.len() as u8;
    *next_addr = (*next_addr + 1) % ADDR_SLOTS;
    out.fixed(text.as_bytes());
}
