//! Envoy's access-log format language: a format string (`format`) or a format dictionary
//! (`json_format`) compiled once, at config time, into pieces; rendering a line walks the
//! pieces and appends to the shard's batch (no allocation).
//!
//! Command operators are `%NAME%`, `%NAME(ARG)%` and either with `:N` (truncate to N bytes)
//! before the closing `%`. An unknown operator, a missing closing `%` or a malformed argument is
//! a config error naming it (Envoy refuses them too). The operators and what each protocol
//! fills in are listed in docs/observability.md.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Flags, Part, Record};

/// Envoy's default format, which ringside uses when a log names no format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// Envoy's `%START_TIME%` format.
const DEFAULT_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%E3SZ";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("unknown command operator %{0}% (docs/observability.md lists the supported ones)")]
    UnknownOperator(String),
    #[error("command operator starting at byte {0} has no closing '%'")]
    Unterminated(usize),
    #[error("%{op}%: {why}")]
    BadArgument { op: String, why: String },
    #[error("json_format: {0}")]
    Json(String),
}

/// The borrowed fields of a call a format shows (numbers and addresses are always kept).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shows {
    pub protocol: bool,
    pub cluster: bool,
    pub route: bool,
    /// Any of the `%DUBBO_*%` operators.
    pub dubbo: bool,
}

impl Shows {
    /// Everything (tests: a record that renders any format).
    pub const ALL: Shows = Shows {
        protocol: true,
        cluster: true,
        route: true,
        dubbo: true,
    };
}

/// A compiled format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Text(Vec<Piece>),
    /// Keys in order, each with its value: a single operator renders typed (numbers as JSON
    /// numbers, a missing value as null), anything else as a JSON string.
    Json(Vec<(String, JsonValue)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonValue {
    Pieces(Vec<Piece>),
    Nested(Vec<(String, JsonValue)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Op(Op, Option<usize>),
}

/// One command operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    StartTime(Vec<TimePiece>),
    Duration,
    ResponseCode,
    GrpcStatus,
    GrpcStatusNumber,
    ResponseFlags,
    UpstreamHost,
    UpstreamCluster,
    RouteName,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    BytesReceived,
    BytesSent,
    Protocol,
    /// A request header, response header or trailer (lower case), with a fallback header
    /// (`%REQ(A?B)%`, `%RESP(A?B)%`, `%TRAILER(A?B)%`).
    Header(Part, String, Option<String>),
    DubboInterface,
    DubboMethod,
    DubboVersion,
    DubboGroup,
    DubboRequestId,
    Hostname,
}

impl Op {
    /// Renders a number (JSON number in `json_format`).
    fn numeric(&self) -> bool {
        matches!(
            self,
            Op::Duration
                | Op::ResponseCode
                | Op::GrpcStatusNumber
                | Op::BytesReceived
                | Op::BytesSent
                | Op::DubboRequestId
        )
    }
}

/// A piece of a `%START_TIME(...)%` format (a strftime subset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimePiece {
    Text(String),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// `%E3S`, `%E6S`, `%E9S`: seconds with that many fractional digits.
    SecondFrac(u8),
    /// `%s`: seconds since the epoch.
    Epoch,
    /// `%z`: always `+0000` (times are UTC).
    Zone,
}

impl Format {
    /// Compiles a format string.
    pub fn text(s: &str) -> Result<Format, FormatError> {
        Ok(Format::Text(parse(s)?))
    }

    /// Compiles a format dictionary (`json_format`): string values may hold operators and
    /// text; nested objects nest; numbers and booleans are kept as text.
    pub fn json(map: &serde_json::Map<String, serde_json::Value>) -> Result<Format, FormatError> {
        Ok(Format::Json(json_entries(map)?))
    }

    /// Request headers, response headers and trailers the format reads (lower case): the only
    /// ones a call keeps.
    pub fn headers(&self) -> Vec<(Part, String)> {
        let mut out: Vec<(Part, String)> = Vec::new();
        let mut add = |p: &Piece| {
            if let Piece::Op(Op::Header(part, a, b), _) = p {
                for h in std::iter::once(a).chain(b) {
                    if !out.iter().any(|(p, n)| p == part && n == h) {
                        out.push((*part, h.clone()));
                    }
                }
            }
        };
        match self {
            Format::Text(ps) => ps.iter().for_each(&mut add),
            Format::Json(entries) => visit_json(entries, &mut add),
        }
        out
    }

    /// Which of a call's borrowed fields the format shows ([`Shows`]): a record copies only
    /// these.
    pub fn shows(&self) -> Shows {
        let mut shows = Shows::default();
        let mut add = |p: &Piece| {
            if let Piece::Op(op, _) = p {
                match op {
                    Op::Protocol => shows.protocol = true,
                    Op::UpstreamCluster => shows.cluster = true,
                    Op::RouteName => shows.route = true,
                    Op::DubboInterface
                    | Op::DubboMethod
                    | Op::DubboVersion
                    | Op::DubboGroup
                    | Op::DubboRequestId => shows.dubbo = true,
                    _ => {}
                }
            }
        };
        match self {
            Format::Text(ps) => ps.iter().for_each(&mut add),
            Format::Json(entries) => visit_json(entries, &mut add),
        }
        shows
    }

    /// Appends one line (with its newline for `json_format`; a format string has its own).
    pub fn render(&self, r: &Record<'_>, out: &mut Vec<u8>) {
        self.render_cached(r, out, &mut LineCache::default());
    }

    /// [`Format::render`] with what a log on a shard keeps from line to line ([`LineCache`]).
    pub fn render_cached(&self, r: &Record<'_>, out: &mut Vec<u8>, tc: &mut LineCache) {
        match self {
            Format::Text(pieces) => render_text(pieces, r, out, tc),
            Format::Json(entries) => {
                render_json(entries, r, out, tc);
                out.push(b'\n');
            }
        }
    }
}

/// Appends `s`: a short piece byte by byte (most constant pieces of a format are 1-3 bytes,
/// where a `memcpy` call costs more than the copy), a longer one with one copy.
#[inline]
fn put(out: &mut Vec<u8>, s: &[u8]) {
    if s.len() <= 8 {
        for &b in s {
            out.push(b);
        }
    } else {
        out.extend_from_slice(s);
    }
}

/// Text and operators one after the other, a missing value as `-`.
fn render_text(pieces: &[Piece], r: &Record<'_>, out: &mut Vec<u8>, tc: &mut LineCache) {
    for p in pieces {
        match p {
            Piece::Text(t) => put(out, t.as_bytes()),
            Piece::Op(op, max) => {
                let start = out.len();
                if !value(op, r, out, tc) {
                    out.push(b'-');
                }
                truncate(out, start, *max);
            }
        }
    }
}

fn visit_json(entries: &[(String, JsonValue)], f: &mut impl FnMut(&Piece)) {
    for (_, v) in entries {
        match v {
            JsonValue::Pieces(ps) => ps.iter().for_each(&mut *f),
            JsonValue::Nested(n) => visit_json(n, f),
        }
    }
}

fn json_entries(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(String, JsonValue)>, FormatError> {
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let v = match v {
            serde_json::Value::String(s) => JsonValue::Pieces(parse(s)?),
            serde_json::Value::Object(m) => JsonValue::Nested(json_entries(m)?),
            serde_json::Value::Number(n) => JsonValue::Pieces(vec![Piece::Text(n.to_string())]),
            serde_json::Value::Bool(b) => JsonValue::Pieces(vec![Piece::Text(b.to_string())]),
            other => {
                return Err(FormatError::Json(format!(
                    "key {k:?}: values are strings or objects, not {other}"
                )))
            }
        };
        // Rendered once here: every line copies the quoted, escaped key and its colon.
        let mut key = Vec::with_capacity(k.len() + 3);
        json_string(k.as_bytes(), &mut key);
        key.push(b':');
        out.push((String::from_utf8_lossy(&key).into_owned(), v));
    }
    Ok(out)
}

fn render_json(
    entries: &[(String, JsonValue)],
    r: &Record<'_>,
    out: &mut Vec<u8>,
    tc: &mut LineCache,
) {
    out.push(b'{');
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // The key as compiled: already a JSON string with its colon.
        put(out, k.as_bytes());
        match v {
            JsonValue::Nested(n) => render_json(n, r, out, tc),
            JsonValue::Pieces(ps) => match ps.as_slice() {
                [Piece::Op(op, max)] => {
                    let start = out.len();
                    if !value(op, r, out, tc) {
                        out.extend_from_slice(b"null");
                    } else {
                        truncate(out, start, *max);
                        if !op.numeric() {
                            quote_from(out, start);
                        }
                    }
                }
                _ => {
                    let start = out.len();
                    render_text(ps, r, out, tc);
                    quote_from(out, start);
                }
            },
        }
    }
    out.push(b'}');
}

/// Turns `out[start..]` into a JSON string in place.
fn quote_from(out: &mut Vec<u8>, start: usize) {
    let needs_escape = out[start..]
        .iter()
        .any(|&b| b == b'"' || b == b'\\' || b < 0x20);
    if !needs_escape {
        out.insert(start, b'"');
        out.push(b'"');
        return;
    }
    let raw: Vec<u8> = out.split_off(start);
    json_string(&raw, out);
}

fn json_string(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b if b < 0x20 => {
                let _ = write!(Bytes(out), "\\u{b:04x}");
            }
            b => out.push(b),
        }
    }
    out.push(b'"');
}

/// Cuts what an operator wrote to `max` bytes (at a UTF-8 boundary).
fn truncate(out: &mut Vec<u8>, start: usize, max: Option<usize>) {
    if let Some(max) = max {
        if out.len() - start > max {
            let mut end = start + max;
            while end > start && (out[end] & 0xC0) == 0x80 {
                end -= 1;
            }
            out.truncate(end);
        }
    }
}

/// `fmt::Write` into a byte vector.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

// Numbers, addresses and times are written digit by digit: `write!` through `fmt` cost
// ~5,000 instructions per line of Envoy's default format (callgrind, docs/benchmarks.md
// "Observability cost in instructions"); these cost a few per digit.

/// The decimal digits of `n`.
fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(out, &buf[i..]);
}

/// `n` zero-padded to `width` digits (more digits when it has more).
fn put_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    let mut n = n;
    while n > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let from = i.min(buf.len() - width.min(buf.len()));
    put(out, &buf[from..]);
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                put_u64(out, u64::from(o));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(Bytes(out), "{v6}");
        }
    }
}

fn addr(a: Option<SocketAddr>, port: bool, out: &mut Vec<u8>, lc: &mut LineCache) -> bool {
    let Some(a) = a else { return false };
    match a {
        SocketAddr::V4(v4) => {
            let key = Some((v4, port));
            if let Some(hit) = lc.addrs.iter().find(|s| s.key == key) {
                out.extend_from_slice(&hit.text[..usize::from(hit.len)]);
                return true;
            }
            let start = out.len();
            put_ip(out, IpAddr::V4(*v4.ip()));
            if port {
                out.push(b':');
                put_u64(out, u64::from(v4.port()));
            }
            let written = &out[start..];
            let slot = &mut lc.addrs[lc.next_addr];
            slot.key = key;
            slot.len = written.len() as u8;
            slot.text[..written.len()].copy_from_slice(written);
            lc.next_addr = (lc.next_addr + 1) % ADDR_CACHE_SLOTS;
        }
        SocketAddr::V6(_) if !port => put_ip(out, a.ip()),
        // `[ip%scope]:port`, as std writes it.
        SocketAddr::V6(_) => {
            let _ = write!(Bytes(out), "{a}");
        }
    }
    true
}

fn num(n: u64, out: &mut Vec<u8>) -> bool {
    put_u64(out, n);
    true
}

fn text(s: Option<&[u8]>, out: &mut Vec<u8>) -> bool {
    match s {
        Some(s) if !s.is_empty() => {
            put(out, s);
            true
        }
        _ => false,
    }
}

/// Appends operator `op`'s value in `r` (cut to `max` bytes), as a header value's formatter
/// does (route header mutations): nothing when `r` has none; false then.
pub(crate) fn render_op(op: &Op, max: Option<usize>, r: &Record<'_>, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let some = value(op, r, out, &mut LineCache::default());
    truncate(out, start, max);
    some
}

/// Writes an operator's value; false when the record has none (rendered `-` or null).
fn value(op: &Op, r: &Record<'_>, out: &mut Vec<u8>, tc: &mut LineCache) -> bool {
    match op {
        Op::StartTime(pieces) => {
            time(r.start, pieces, out, tc);
            true
        }
        Op::Duration => num(r.duration.as_millis() as u64, out),
        Op::ResponseCode => num(u64::from(r.response_code.unwrap_or(0)), out),
        Op::GrpcStatus => match r.grpc_status {
            Some(s) => text(Some(grpc_status_name(s).as_bytes()), out),
            None => false,
        },
        Op::GrpcStatusNumber => match r.grpc_status {
            Some(s) => num(u64::from(s), out),
            None => false,
        },
        Op::ResponseFlags => {
            // Envoy writes "-" for no flags, also as a JSON value (a string, not null).
            if r.flags.is_empty() {
                out.push(b'-');
            } else {
                r.flags.write(out);
            }
            true
        }
        Op::UpstreamHost => addr(r.upstream_host, true, out, tc),
        Op::UpstreamCluster => text(r.upstream_cluster.map(str::as_bytes), out),
        Op::RouteName => text(r.route_name.map(str::as_bytes), out),
        Op::DownstreamRemoteAddress => addr(r.downstream_remote, true, out, tc),
        Op::DownstreamRemoteAddressWithoutPort => addr(r.downstream_remote, false, out, tc),
        Op::DownstreamLocalAddress => addr(r.downstream_local, true, out, tc),
        Op::DownstreamLocalAddressWithoutPort => addr(r.downstream_local, false, out, tc),
        Op::BytesReceived => num(r.bytes_received, out),
        Op::BytesSent => num(r.bytes_sent, out),
        Op::Protocol => text(r.protocol.map(str::as_bytes), out),
        Op::Header(part, a, b) => {
            let v = r
                .headers
                .get(*part, a)
                .or_else(|| b.as_ref().and_then(|b| r.headers.get(*part, b)));
            // A header sent empty renders empty (Envoy); only a missing one is `-`.
            match v {
                Some(v) => {
                    put(out, v);
                    true
                }
                None => false,
            }
        }
        Op::DubboInterface => text(r.dubbo.map(|d| d.interface), out),
        Op::DubboMethod => text(r.dubbo.map(|d| d.method), out),
        Op::DubboVersion => text(r.dubbo.map(|d| d.version), out),
        Op::DubboGroup => text(r.dubbo.map(|d| d.group), out),
        Op::DubboRequestId => match r.dubbo {
            Some(d) => num(d.request_id, out),
            None => false,
        },
        Op::Hostname => text(Some(hostname().as_bytes()), out),
    }
}

pub(crate) fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "-".into())
    })
}

/// gRPC status names as Envoy prints them for `%GRPC_STATUS%`.
pub(super) fn grpc_status_name(s: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(s as usize).copied().unwrap_or("InvalidCode")
}

/// UTC civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard
/// Hinnant's algorithm): the one calendar of the access log, the HTTP `date` stamp and the
/// process log's timestamps.
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What a log on one shard keeps from line to line so that constant-ish parts are rendered
/// once: the `%START_TIME%` text of the current second (the lines of that second copy it and
/// write only their sub-second digits) and the last few IPv4 addresses written (a log names
/// the same few upstreams and callers over and over).
#[derive(Debug, Default)]
pub struct LineCache {
    /// (the time format's address, the unix second) the text is for.
    key: Option<(usize, u64)>,
    text: Vec<u8>,
    /// Where in `text` each `%E3S`-style piece's fraction goes, and its digits.
    fracs: Vec<(usize, u8)>,
    addrs: [AddrText; ADDR_CACHE_SLOTS],
    /// The slot the next new address replaces (round robin).
    next_addr: usize,
}

/// Addresses a [`LineCache`] keeps.
const ADDR_CACHE_SLOTS: usize = 4;
/// `255.255.255.255:65535`.
const ADDR_TEXT_BYTES_MAX: usize = 21;

#[derive(Debug, Default, Clone, Copy)]
struct AddrText {
    /// The address and whether its port was written.
    key: Option<(std::net::SocketAddrV4, bool)>,
    text: [u8; ADDR_TEXT_BYTES_MAX],
    len: u8,
}

fn time(t: SystemTime, pieces: &[TimePiece], out: &mut Vec<u8>, tc: &mut LineCache) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let key = (pieces.as_ptr() as usize, secs);
    if tc.key != Some(key) {
        tc.text.clear();
        tc.fracs.clear();
        second(secs, pieces, &mut tc.text, &mut tc.fracs);
        tc.key = Some(key);
    }
    let start = out.len();
    out.extend_from_slice(&tc.text);
    for &(at, digits) in &tc.fracs {
        let mut frac = u64::from(since.subsec_nanos()) / 10u64.pow(9 - u32::from(digits));
        for b in out[start + at..start + at + usize::from(digits)]
            .iter_mut()
            .rev()
        {
            *b = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
    }
}

/// The text of `pieces` for unix second `secs`, each fraction as zeros (its place in `fracs`).
pub(super) fn second(
    secs: u64,
    pieces: &[TimePiece],
    out: &mut Vec<u8>,
    fracs: &mut Vec<(usize, u8)>,
) {
    let (y, mo, d) = civil((secs / 86_400) as i64);
    let sod = secs % 86_400;
    for p in pieces {
        match p {
            TimePiece::Text(s) => out.extend_from_slice(s.as_bytes()),
            TimePiece::Year => put_padded(out, y.max(0) as u64, 4),
            TimePiece::Month => put_padded(out, u64::from(mo), 2),
            TimePiece::Day => put_padded(out, u64::from(d), 2),
            TimePiece::Hour => put_padded(out, sod / 3600, 2),
            TimePiece::Minute => put_padded(out, sod / 60 % 60, 2),
            TimePiece::Second => put_padded(out, sod % 60, 2),
            TimePiece::SecondFrac(digits) => {
                put_padded(out, sod % 60, 2);
                out.push(b'.');
                fracs.push((out.len(), *digits));
                out.resize(out.len() + usize::from(*digits), b'0');
            }
            TimePiece::Epoch => put_u64(out, secs),
            TimePiece::Zone => out.extend_from_slice(b"+0000"),
        }
    }
}

fn parse_time(fmt: &str) -> Result<Vec<TimePiece>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            lit.push(c);
            continue;
        }
        let piece = match chars.next() {
            Some('Y') => TimePiece::Year,
            Some('m') => TimePiece::Month,
            Some('d') => TimePiece::Day,
            Some('H') => TimePiece::Hour,
            Some('M') => TimePiece::Minute,
            Some('S') => TimePiece::Second,
            Some('s') => TimePiece::Epoch,
            Some('z') => TimePiece::Zone,
            Some('%') => {
                lit.push('%');
                continue;
            }
            Some('E') => {
                let digits = chars.next();
                let s = chars.next();
                match (digits, s) {
                    (Some(n @ ('3' | '6' | '9')), Some('S')) => {
                        TimePiece::SecondFrac(n.to_digit(10).unwrap_or(3) as u8)
                    }
                    _ => return Err("only %E3S, %E6S and %E9S of the %E forms".into()),
                }
            }
            Some(other) => return Err(format!("time specifier %{other} is not supported")),
            None => return Err("a time format ends with '%'".into()),
        };
        if !lit.is_empty() {
            out.push(TimePiece::Text(std::mem::take(&mut lit)));
        }
        out.push(piece);
    }
    if !lit.is_empty() {
        out.push(TimePiece::Text(lit));
    }
    Ok(out)
}

/// Compiles a format string into pieces.
fn parse(s: &str) -> Result<Vec<Piece>, FormatError> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    let mut offset = 0;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        // `%%`: a literal `%`.
        if after.starts_with('%') {
            lit.push('%');
            rest = &after[1..];
            offset += i + 2;
            continue;
        }
        let (op, len) = operator(after).ok_or(FormatError::Unterminated(offset + i))?;
        let (op, max) = op?;
        if !lit.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut lit)));
        }
        out.push(Piece::Op(op, max));
        rest = &after[len..];
        offset += i + 1 + len;
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Piece::Text(lit));
    }
    Ok(out)
}

/// Reads `NAME[(ARG)][:N]%` at the start of `s`: the operator and the bytes taken (closing `%`
/// included); None when there is no closing `%`.
#[allow(clippy::type_complexity)]
fn operator(s: &str) -> Option<(Result<(Op, Option<usize>), FormatError>, usize)> {
    let name_end = s
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    let name = &s[..name_end];
    let mut i = name_end;
    let mut arg = None;
    if s[i..].starts_with('(') {
        let close = s[i..].find(')')? + i;
        arg = Some(&s[i + 1..close]);
        i = close + 1;
    }
    let mut max = None;
    if s[i..].starts_with(':') {
        let digits_end = s[i + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(s.len(), |e| e + i + 1);
        let digits = &s[i + 1..digits_end];
        max = Some(digits);
        i = digits_end;
    }
    if !s[i..].starts_with('%') {
        return None;
    }
    let taken = i + 1;
    let bad = |why: &str| FormatError::BadArgument {
        op: name.to_string(),
        why: why.to_string(),
    };
    let max = match max {
        None => None,
        Some(d) => match d.parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => return Some((Err(bad("the length after ':' is not a number")), taken)),
        },
    };
    let no_arg = |op: Op| match arg {
        None => Ok(op),
        Some(_) => Err(bad("takes no argument")),
    };
    let op = match name {
        "START_TIME" => match arg.map(parse_time) {
            None => parse_time(DEFAULT_TIME_FORMAT)
                .map_err(|e| bad(&e))
                .map(Op::StartTime),
            Some(Ok(p)) => Ok(Op::StartTime(p)),
            Some(Err(e)) => Err(bad(&e)),
        },
        "DURATION" => no_arg(Op::Duration),
        "RESPONSE_CODE" => no_arg(Op::ResponseCode),
        "GRPC_STATUS" => no_arg(Op::GrpcStatus),
        "GRPC_STATUS_NUMBER" => no_arg(Op::GrpcStatusNumber),
        "RESPONSE_FLAGS" => no_arg(Op::ResponseFlags),
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => no_arg(Op::UpstreamHost),
        "UPSTREAM_CLUSTER" => no_arg(Op::UpstreamCluster),
        "ROUTE_NAME" => no_arg(Op::RouteName),
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            no_arg(Op::DownstreamRemoteAddress)
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_arg(Op::DownstreamRemoteAddressWithoutPort)
        }
        "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(Op::DownstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => no_arg(Op::DownstreamLocalAddressWithoutPort),
        "BYTES_RECEIVED" => no_arg(Op::BytesReceived),
        "BYTES_SENT" => no_arg(Op::BytesSent),
        "PROTOCOL" => no_arg(Op::Protocol),
        "HOSTNAME" => no_arg(Op::Hostname),
        "DUBBO_INTERFACE" => no_arg(Op::DubboInterface),
        "DUBBO_METHOD" => no_arg(Op::DubboMethod),
        "DUBBO_VERSION" => no_arg(Op::DubboVersion),
        "DUBBO_GROUP" => no_arg(Op::DubboGroup),
        "DUBBO_REQUEST_ID" => no_arg(Op::DubboRequestId),
        "REQ" | "REQUEST_HEADER" | "RESP" | "RESPONSE_HEADER" | "TRAILER" | "RESPONSE_TRAILER" => {
            let part = match name {
                "REQ" | "REQUEST_HEADER" => Part::Request,
                "RESP" | "RESPONSE_HEADER" => Part::Response,
                _ => Part::Trailer,
            };
            match arg {
                None | Some("") => Err(bad("names a header: %OP(NAME)% or %OP(NAME?FALLBACK)%")),
                Some(a) => {
                    let mut parts = a.splitn(2, '?');
                    let main = parts.next().unwrap_or_default().to_ascii_lowercase();
                    let alt = parts.next().map(str::to_ascii_lowercase);
                    Ok(Op::Header(part, main, alt))
                }
            }
        }
        other => Err(FormatError::UnknownOperator(other.to_string())),
    };
    Some((op.map(|op| (op, max)), taken))
}

impl Flags {
    /// Envoy's short form (`UH,UT`; `-` for none), as Istio's `response_flags` label.
    pub fn short_string(self) -> String {
        if self.is_empty() {
            return "-".to_string();
        }
        let mut out = Vec::new();
        self.write(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Envoy's short names, comma-separated in Envoy's order.
    fn write(&self, out: &mut Vec<u8>) {
        let mut first = true;
        for (flag, name) in Flags::NAMES {
            if self.contains(*flag) {
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(name.as_bytes());
                first = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::DubboCall;

    fn record<'a>(headers: &'a dyn crate::access_log::Headers) -> Record<'a> {
        Record {
            start: UNIX_EPOCH + Duration::from_millis(1_460_751_420_310),
            duration: Duration::from_micros(226_900),
            protocol: Some("HTTP/2"),
            response_code: Some(200),
            grpc_status: Some(14),
            flags: Flags::UPSTREAM_CONNECTION_FAILURE | Flags::NO_HEALTHY_UPSTREAM,
            upstream_host: Some("10.0.2.1:80".parse().unwrap()),
            upstream_cluster: Some("locations"),
            route_name: None,
            downstream_remote: Some("10.0.35.28:4711".parse().unwrap()),
            downstream_local: None,
            bytes_received: 154,
            bytes_sent: 0,
            headers,
            dubbo: None,
        }
    }

    fn line(f: &Format, r: &Record<'_>) -> String {
        let mut out = Vec::new();
        f.render(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn envoy_default_format_renders_envoy_example() {
        let h = [
            (":method", "POST"),
            (":path", "/api/v1/locations"),
            (":authority", "locations"),
        ];
        let f = Format::text(DEFAULT_FORMAT).unwrap();
        assert_eq!(
            line(&f, &record(&h)),
            "[2016-04-15T20:17:00.310Z] \"POST /api/v1/locations HTTP/2\" 200 UH,UF 154 0 226 - \"-\" \"-\" \"-\" \"locations\" \"10.0.2.1:80\"\n"
        );
    }

    #[test]
    fn operators_arguments_and_truncation() {
        let h = [("user-agent", "grpc-python/1.85")];
        let f = Format::text(
            "%START_TIME(%s.%E6S %z)% %REQ(X-MISSING?USER-AGENT):6% %GRPC_STATUS% %GRPC_STATUS_NUMBER% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %ROUTE_NAME%",
        )
        .unwrap();
        assert_eq!(
            line(&f, &record(&h)),
            "1460751420.00.310000 +0000 grpc-p Unavailable 14 10.0.35.28 -"
        );
    }

    #[test]
    fn json_format_types_values_and_escapes() {
        let map = serde_json::json!({
            "code": "%RESPONSE_CODE%",
            "ua": "%REQ(USER-AGENT)%",
            "missing": "%REQ(X-NONE)%",
            "mixed": "%PROTOCOL% to %UPSTREAM_HOST%",
            "inner": {"bytes": "%BYTES_RECEIVED%", "fixed": 7},
            "dubbo": "%DUBBO_INTERFACE%.%DUBBO_METHOD%"
        });
        let f = Format::json(map.as_object().unwrap()).unwrap();
        let h = [("user-agent", "a \"quoted\"\tagent")];
        let mut r = record(&h);
        r.dubbo = Some(DubboCall {
            interface: b"org.apache.Echo",
            method: b"echo",
            version: b"",
            group: b"",
            request_id: 9,
        });
        let out = line(&f, &r);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "code": 200, "ua": "a \"quoted\"\tagent", "missing": null,
                "mixed": "HTTP/2 to 10.0.2.1:80", "inner": {"bytes": 154, "fixed": "7"},
                "dubbo": "org.apache.Echo.echo"
            })
        );
        assert!(out.ends_with("}\n"));
    }

    #[test]
    fn bad_formats_name_the_problem() {
        assert_eq!(
            Format::text("%NOPE%"),
            Err(FormatError::UnknownOperator("NOPE".into()))
        );
        assert_eq!(
            Format::text("abc %DURATION"),
            Err(FormatError::Unterminated(4))
        );
        assert!(matches!(
            Format::text("%DURATION(x)%"),
            Err(FormatError::BadArgument { .. })
        ));
        assert!(matches!(
            Format::text("%START_TIME(%Q)%"),
            Err(FormatError::BadArgument { .. })
        ));
        assert!(matches!(
            Format::text("%REQ()%"),
            Err(FormatError::BadArgument { .. })
        ));
    }

    #[test]
    fn headers_lists_what_the_format_reads() {
        let f = Format::text(DEFAULT_FORMAT).unwrap();
        let req = |n: &str| (Part::Request, n.to_string());
        assert_eq!(
            f.headers(),
            [
                req(":method"),
                req("x-envoy-original-path"),
                req(":path"),
                (Part::Response, "x-envoy-upstream-service-time".to_string()),
                req("x-forwarded-for"),
                req("user-agent"),
                req("x-request-id"),
                req(":authority")
            ]
        );
        let f = Format::text("%RESP(grpc-status)% %TRAILER(GRPC-STATUS?x-a)% %REQ(x-a)%").unwrap();
        assert_eq!(
            f.headers(),
            [
                (Part::Response, "grpc-status".to_string()),
                (Part::Trailer, "grpc-status".to_string()),
                (Part::Trailer, "x-a".to_string()),
                req("x-a"),
            ]
        );
    }

    /// Lines of one second share the cached text and differ in their fractions; another
    /// second or another format renders afresh.
    #[test]
    fn start_times_through_the_cache() {
        let f = Format::text("%START_TIME% %START_TIME(%s %E6S|%E9S)%").unwrap();
        let mut tc = LineCache::default();
        let at = |ms: u64, extra_ns: u32| {
            let mut r = record(NO_HEADERS_FOR_TESTS);
            r.start =
                UNIX_EPOCH + Duration::from_millis(ms) + Duration::from_nanos(extra_ns.into());
            r
        };
        let mut line = |r: &Record<'_>| {
            let mut out = Vec::new();
            f.render_cached(r, &mut out, &mut tc);
            String::from_utf8(out).unwrap()
        };
        for (ms, ns, want) in [
            (
                1_460_751_420_310,
                0,
                "2016-04-15T20:17:00.310Z 1460751420 00.310000|00.310000000",
            ),
            (
                1_460_751_420_007,
                123,
                "2016-04-15T20:17:00.007Z 1460751420 00.007000|00.007000123",
            ),
            (
                1_460_751_479_999,
                999_999,
                "2016-04-15T20:17:59.999Z 1460751479 59.999999|59.999999999",
            ),
            (0, 0, "1970-01-01T00:00:00.000Z 0 00.000000|00.000000000"),
        ] {
            assert_eq!(line(&at(ms, ns)), want);
        }
    }

    const NO_HEADERS_FOR_TESTS: &dyn crate::access_log::Headers = crate::access_log::NO_HEADERS;

    /// The digit-by-digit writers print what `fmt` prints.
    #[test]
    fn numbers_and_addresses_as_fmt_prints_them() {
        for n in [0u64, 7, 9, 10, 99, 100, 65_535, 1_000_000_007, u64::MAX] {
            let mut out = Vec::new();
            put_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            for width in [1, 2, 3, 4, 9] {
                let mut out = Vec::new();
                put_padded(&mut out, n, width);
                assert_eq!(out, format!("{n:0width$}").as_bytes(), "{n} width {width}");
            }
        }
        let mut lc = LineCache::default();
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:20880",
            "255.255.255.255:65535",
            "10.0.35.28:4711",
            "[::1]:8080",
            "[fe80::1%2]:443",
            "[2001:db8::ff00:42:8329]:1",
        ] {
            let sa: SocketAddr = a.parse().unwrap();
            // Twice each: written, then from the cache.
            for _ in 0..2 {
                let mut out = Vec::new();
                assert!(addr(Some(sa), true, &mut out, &mut lc));
                assert_eq!(out, sa.to_string().as_bytes());
                let mut out = Vec::new();
                assert!(addr(Some(sa), false, &mut out, &mut lc));
                assert_eq!(out, sa.ip().to_string().as_bytes());
            }
        }
        assert!(!addr(None, true, &mut Vec::new(), &mut lc));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_791), (2026, 12, 4));
    }
}

#[cfg(test)]
mod filter_tests {
    use crate::access_log::{Filter, Flags, Record, NO_HEADERS};
    use std::time::{Duration, UNIX_EPOCH};

    fn record(code: Option<u32>, flags: Flags, ms: u64) -> Record<'static> {
        Record {
            start: UNIX_EPOCH,
            duration: Duration::from_millis(ms),
            protocol: None,
            response_code: code,
            grpc_status: None,
            flags,
            upstream_host: None,
            upstream_cluster: None,
            route_name: None,
            downstream_remote: None,
            downstream_local: None,
            bytes_received: 0,
            bytes_sent: 0,
            headers: NO_HEADERS,
            dubbo: None,
        }
    }

    fn compile(yaml: &str) -> Filter {
        Filter::compile(&serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    /// Envoy's header matcher rules (missing headers, inversion) and its gRPC status filter
    /// (no status: UNKNOWN).
    #[test]
    fn header_and_grpc_status_filters_follow_envoy() {
        let mut roll = || 0u32;
        let keeps = |f: &Filter,
                     h: &[(&str, &str); 1],
                     grpc: Option<u32>,
                     roll: &mut dyn FnMut() -> u32| {
            let mut r = record(Some(200), Flags::NONE, 1);
            r.grpc_status = grpc;
            r.headers = h;
            f.keeps(&r, roll)
        };
        let vip = [("x-user", "vip-1")];
        let other = [("x-other", "1")];
        let prefix = compile("{header: {name: X-User, prefix: vip-}}");
        assert!(keeps(&prefix, &vip, None, &mut roll));
        assert!(!keeps(&prefix, &other, None, &mut roll));
        let inverted = compile("{header: {name: x-user, exact: vip-1, invert: true}}");
        assert!(!keeps(&inverted, &vip, None, &mut roll));
        // A missing header never matches a value condition, inverted or not...
        assert!(!keeps(&inverted, &other, None, &mut roll));
        // ...unless it counts as empty.
        let empty = compile(
            "{header: {name: x-user, exact: vip-1, invert: true, treat_missing_as_empty: true}}",
        );
        assert!(keeps(&empty, &other, None, &mut roll));
        assert!(keeps(
            &compile("{header: {name: x-user, present: false}}"),
            &other,
            None,
            &mut roll
        ));
        assert!(keeps(
            &compile("{header: {name: x-user, invert: true}}"),
            &other,
            None,
            &mut roll
        ));
        assert!(!keeps(
            &compile("{header: {name: x-user}}"),
            &other,
            None,
            &mut roll
        ));
        let failed = compile("{grpc_status: {statuses: [OK], exclude: true}}");
        assert!(!keeps(&failed, &vip, Some(0), &mut roll));
        assert!(keeps(&failed, &vip, Some(14), &mut roll));
        // No status (Dubbo, TCP, a cancelled stream): UNKNOWN.
        assert!(keeps(&failed, &vip, None, &mut roll));
        let unknown = compile("{grpc_status: {statuses: [UNKNOWN, UNAVAILABLE]}}");
        assert!(keeps(&unknown, &vip, None, &mut roll));
        assert!(keeps(&unknown, &vip, Some(14), &mut roll));
        assert!(!keeps(&unknown, &vip, Some(0), &mut roll));
        assert!(!keeps(&unknown, &vip, Some(40), &mut roll));
    }

    #[test]
    fn filters_keep_what_envoy_keeps() {
        let mut roll = || 0u32;
        let failed = compile("{status_code: {op: ge, value: 30}}");
        assert!(!failed.keeps(&record(Some(20), Flags::NONE, 1), &mut roll));
        assert!(failed.keeps(&record(Some(31), Flags::NONE, 1), &mut roll));
        // TCP: no response code, compared as 0.
        assert!(compile("{status_code: {op: eq, value: 0}}")
            .keeps(&record(None, Flags::NONE, 1), &mut roll));
        let slow_or_flagged =
            compile("{or: [{duration_ms: {op: ge, value: 100}}, {response_flags: [UT, UH]}]}");
        assert!(!slow_or_flagged.keeps(&record(Some(20), Flags::UPSTREAM_OVERFLOW, 5), &mut roll));
        assert!(slow_or_flagged.keeps(&record(Some(20), Flags::NO_HEALTHY_UPSTREAM, 5), &mut roll));
        assert!(slow_or_flagged.keeps(&record(Some(20), Flags::NONE, 100), &mut roll));
        let any_flag = compile("{response_flags: []}");
        assert!(!any_flag.keeps(&record(Some(20), Flags::NONE, 5), &mut roll));
        assert!(any_flag.keeps(&record(Some(20), Flags::RATE_LIMITED, 5), &mut roll));
        // A flag ringside never sets matches nothing.
        assert!(!compile("{response_flags: [URX]}")
            .keeps(&record(Some(20), Flags::RATE_LIMITED, 5), &mut roll));
    }

    /// `runtime_percent` keeps about that share of the calls (a uniform roll below it).
    #[test]
    fn runtime_percent_keeps_its_share() {
        let r = record(Some(20), Flags::NONE, 1);
        let mut x: u32 = 0;
        let mut roll = || {
            x = x.wrapping_add(0x9e37_79b9);
            x
        };
        for (percent, lo, hi) in [(0.0, 0, 0), (10.0, 900, 1100), (100.0, 10_000, 10_000)] {
            let f = compile(&format!("{{runtime_percent: {percent}}}"));
            let kept = (0..10_000).filter(|_| f.keeps(&r, &mut roll)).count();
            assert!((lo..=hi).contains(&kept), "{percent}%: {kept} of 10000");
        }
    }
}
