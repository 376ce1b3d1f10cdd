//! Trace contexts on the wire: W3C Trace Context `traceparent` (Level 1, §3.2), B3 single
//! (`b3`) and B3 multi (`x-b3-*`), read from a call's Triple headers or Dubbo attachments
//! ([`Carrier`]), and the values ringside forwards in their place.
//!
//! Parsing is strict where the specs are (lower-case hex, fixed lengths, all-zero ids
//! invalid): a context that does not parse is treated as absent, as Envoy does. Nothing here
//! allocates; values are written into caller-provided arrays.

/// 16 bytes; a 64-bit B3 trace id is kept in the low half (high half zero).
pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// `traceparent` of version 00 is exactly this long: `00-{32 hex}-{16 hex}-{2 hex}`.
pub const TRACEPARENT_BYTES: usize = 55;
/// Where the parent id (16 hex) sits in a `traceparent` value.
pub const TRACEPARENT_PARENT: std::ops::Range<usize> = 36..52;

/// Which propagation format a context arrived in (and is forwarded in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// The tracing values a call carries, found by one pass over its headers or attachments.
#[derive(Clone, Copy, Debug, Default)]
pub struct Carrier<'a> {
    pub traceparent: Option<&'a [u8]>,
    pub b3: Option<&'a [u8]>,
    pub x_b3_traceid: Option<&'a [u8]>,
    pub x_b3_spanid: Option<&'a [u8]>,
    pub x_b3_parentspanid: Option<&'a [u8]>,
    pub x_b3_sampled: Option<&'a [u8]>,
    pub x_b3_flags: Option<&'a [u8]>,
}

/// Which [`Carrier`] slot a header or attachment name fills (names compared ignoring case:
/// Dubbo attachments keep the case the application wrote, `X-B3-TraceId` included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Traceparent,
    B3,
    TraceId,
    SpanId,
    ParentSpanId,
    Sampled,
    Flags,
}

impl Field {
    /// The field `name` fills, if any: the first byte and the length checked inline (they
    /// reject almost every other header or attachment), the names compared out of line.
    #[inline]
    pub fn of(name: &[u8]) -> Option<Field> {
        // Every name starts with t, b or x and is 2, 10, 11, 12 or 17 bytes long.
        if !matches!(name.first(), Some(b't' | b'T' | b'b' | b'B' | b'x' | b'X'))
            || !matches!(name.len(), 2 | 10..=12 | 17)
        {
            return None;
        }
        Self::named(name)
    }

    #[inline(never)]
    fn named(name: &[u8]) -> Option<Field> {
        const NAMES: [(&[u8], Field); 7] = [
            (b"traceparent", Field::Traceparent),
            (b"b3", Field::B3),
            (b"x-b3-traceid", Field::TraceId),
            (b"x-b3-spanid", Field::SpanId),
            (b"x-b3-parentspanid", Field::ParentSpanId),
            (b"x-b3-sampled", Field::Sampled),
            (b"x-b3-flags", Field::Flags),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, f)| f)
    }
}

/// Whether `bytes` (a Dubbo request's attachments map, raw Hessian2) may hold a [`Field`]'s
/// name as a string key, compared ignoring case: a `3` after a `b` or `B` (every B3 name has
/// `b3`), or the byte 11 followed by `traceparent` in any case (a Hessian2 string's length
/// ends right before its bytes in every form a key is read in: `0x0b`, `0x30 0x0b` and
/// `S 0x00 0x0b`; chunked keys are not read). Never no when a name is there; a yes may find
/// none (the map is then read as before). A request without any lets its map go unread.
///
/// Most maps have neither a `3` nor an 11: 16 bytes at a time, one compare of each byte with
/// both (SSE2 compares, ~100 instructions for a request's usual ~100 bytes of attachments,
/// where the byte-pair compare before cost ~260 and reading the map ~700); the last 16 bytes
/// as one chunk that overlaps the one before. Only a map with one is looked at where it is
/// ([`names_field`]).
#[inline]
pub fn may_name_field(bytes: &[u8]) -> bool {
    let (chunks, tail) = bytes.as_chunks::<16>();
    if let Some(n) = chunks.iter().position(may_hold_name) {
        return names_field(bytes, n);
    }
    let candidate = match bytes.last_chunk::<16>() {
        // The full chunks hold none: a candidate in the last 16 bytes is in the tail.
        Some(last) => !tail.is_empty() && may_hold_name(last),
        None => bytes.iter().any(|&b| b == b'3' || b == 0x0b),
    };
    candidate && names_field(bytes, chunks.len())
}

/// Whether a chunk has a `3` or an 11 (one compare of each byte with both: SSE2 compares).
#[inline(always)]
fn may_hold_name(c: &[u8; 16]) -> bool {
    let mut hit = 0u8;
    for &b in c {
        hit |= u8::from(b == b'3') | u8::from(b == 0x0b);
    }
    hit != 0
}

/// [`may_name_field`] for a map with a `3` or an 11, from its 16-byte chunk `from` on: each
/// chunk that has one looked at byte by byte (`memchr2` over the map cost ~330 instructions
/// for a map naming `traceparent`, mostly its set-up, callgrind), the tail too.
#[inline(never)]
fn names_field(bytes: &[u8], from: usize) -> bool {
    let names_at = |i: usize| match bytes.get(i) {
        Some(b'3') => i > 0 && bytes.get(i - 1).is_some_and(|&b| b | 0x20 == b'b'),
        Some(0x0b) => bytes
            .get(i + 1..i + 12)
            .is_some_and(|n| n.eq_ignore_ascii_case(b"traceparent")),
        _ => false,
    };
    let (chunks, _) = bytes.as_chunks::<16>();
    for (n, c) in chunks.iter().enumerate().skip(from) {
        // One bit per candidate byte; only those are looked at.
        let mut hits = 0u16;
        for (j, &b) in c.iter().enumerate() {
            hits |= u16::from((b == b'3') | (b == 0x0b)) << j;
        }
        while hits != 0 {
            if names_at(n * 16 + hits.trailing_zeros() as usize) {
                return true;
            }
            hits &= hits - 1;
        }
    }
    (chunks.len() * 16..bytes.len()).any(names_at)
}

impl<'a> Carrier<'a> {
    /// Records `value` under `field` (the first value of a name wins).
    pub fn set(&mut self, field: Field, value: &'a [u8]) {
        let slot = match field {
            Field::Traceparent => &mut self.traceparent,
            Field::B3 => &mut self.b3,
            Field::TraceId => &mut self.x_b3_traceid,
            Field::SpanId => &mut self.x_b3_spanid,
            Field::ParentSpanId => &mut self.x_b3_parentspanid,
            Field::Sampled => &mut self.x_b3_sampled,
            Field::Flags => &mut self.x_b3_flags,
        };
        slot.get_or_insert(value);
    }

    /// The context the call carries: W3C first, then B3 single, then B3 multi.
    #[inline]
    pub fn arrived(&self) -> Arrived {
        if self.is_empty() {
            return Arrived::None;
        }
        self.arrived_slow()
    }

    /// No field at all (a call without a context: its map was not read).
    #[inline]
    fn is_empty(&self) -> bool {
        self.traceparent.is_none()
            && self.b3.is_none()
            && self.x_b3_traceid.is_none()
            && self.x_b3_spanid.is_none()
            && self.x_b3_parentspanid.is_none()
            && self.x_b3_sampled.is_none()
            && self.x_b3_flags.is_none()
    }

    fn arrived_slow(&self) -> Arrived {
        if let Some(c) = self.traceparent.and_then(parse_traceparent) {
            return Arrived::Context(c);
        }
        if let Some(v) = self.b3 {
            if let Some(a) = parse_b3_single(v) {
                return a;
            }
        }
        self.b3_multi()
    }

    fn b3_multi(&self) -> Arrived {
        let sampled = match (self.x_b3_flags, self.x_b3_sampled) {
            (Some(b"1"), _) => Some(true),
            (_, Some(b"1" | b"true")) => Some(true),
            (_, Some(b"0" | b"false")) => Some(false),
            _ => None,
        };
        let ids = self.x_b3_traceid.and_then(|t| {
            let (trace_id, hex_len) = parse_trace_id(t)?;
            let span_id = parse_span_id(self.x_b3_spanid?)?;
            Some((trace_id, hex_len, span_id))
        });
        match (ids, sampled) {
            (Some((trace_id, trace_hex_len, span_id)), sampled) => Arrived::Context(Incoming {
                format: Format::B3Multi,
                trace_id,
                trace_hex_len,
                span_id,
                sampled,
            }),
            (None, Some(false)) => Arrived::Deny,
            _ => Arrived::None,
        }
    }
}

/// What a call arrived with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrived {
    /// No (valid) context: ringside starts one.
    None,
    Context(Incoming),
    /// A B3 "do not sample" without ids (`b3: 0`, `x-b3-sampled: 0`): no span, and the call
    /// is forwarded as it is.
    Deny,
}

/// A context that arrived with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub format: Format,
    pub trace_id: TraceId,
    /// 32, or 16 for a 64-bit B3 trace id (forwarded as it came).
    pub trace_hex_len: u8,
    /// The caller's span: the parent of ringside's.
    pub span_id: SpanId,
    /// `None`: B3 left the sampling decision to the receiver.
    pub sampled: Option<bool>,
}

/// W3C `traceparent`: `version-traceid-parentid-flags`. Version 00 is exactly 55 bytes; a
/// later version may append fields after a `-` (§3.2.4); version ff is invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<Incoming> {
    if v.len() < TRACEPARENT_BYTES || (v.len() > TRACEPARENT_BYTES && v[TRACEPARENT_BYTES] != b'-')
    {
        return None;
    }
    let whole = v.len();
    let v: &[u8; TRACEPARENT_BYTES] = v.first_chunk()?;
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && whole != TRACEPARENT_BYTES) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (Some(trace_hex), Some(span_hex)) = (
        v[3..35].first_chunk::<32>(),
        v[TRACEPARENT_PARENT].first_chunk::<16>(),
    ) else {
        return None;
    };
    let (trace_id, trace_ok) = hex_array::<16, 32>(trace_hex);
    let (span_id, span_ok) = hex_array::<8, 16>(span_hex);
    let flags = hex_byte(&v[53..55])?;
    if !(trace_ok && span_ok) || trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Incoming {
        format: Format::W3c,
        trace_id,
        trace_hex_len: 32,
        span_id,
        sampled: Some(flags & 1 == 1),
    })
}

/// B3 single: `{traceid}-{spanid}[-{sampling}[-{parentspanid}]]`, or a lone `{sampling}`
/// (`0`, `1`, `d`). `None`: not a valid b3 value (the multi headers are tried next).
pub fn parse_b3_single(v: &[u8]) -> Option<Arrived> {
    match v {
        b"0" => return Some(Arrived::Deny),
        // Sampling without ids: as if nothing came, but sampled.
        b"1" | b"d" => return Some(Arrived::None),
        _ => {}
    }
    let mut parts = v.split(|&b| b == b'-');
    let (trace_id, trace_hex_len) = parse_trace_id(parts.next()?)?;
    let span_id = parse_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(b"1" | b"d") => Some(true),
        Some(b"0") => Some(false),
        Some(_) => return None,
    };
    if let Some(p) = parts.next() {
        parse_span_id(p)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Arrived::Context(Incoming {
        format: Format::B3Single,
        trace_id,
        trace_hex_len,
        span_id,
        sampled,
    }))
}

/// 32 or 16 lower-case hex digits, not all zero.
fn parse_trace_id(v: &[u8]) -> Option<(TraceId, u8)> {
    let (id, ok) = if let Ok(v) = <&[u8; 32]>::try_from(v) {
        hex_array::<16, 32>(v)
    } else {
        let (low, ok) = hex_array::<8, 16>(v.try_into().ok()?);
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&low);
        (id, ok)
    };
    (ok && id != [0; 16]).then_some((id, v.len() as u8))
}

/// 16 lower-case hex digits, not all zero.
pub fn parse_span_id(v: &[u8]) -> Option<SpanId> {
    let v: &[u8; 16] = v.try_into().ok()?;
    let (id, ok) = hex_array::<8, 16>(v);
    (ok && id != [0; 8]).then_some(id)
}

/// Each byte's value as a lower-case hex digit, or [`NOT_HEX`] (its high bit set) for a byte
/// that is not one: a `traceparent`'s version and flags.
const HEX_VALUE: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
const NOT_HEX: u8 = 0x80;

fn hex_byte(v: &[u8]) -> Option<u8> {
    let (hi, lo) = (
        HEX_VALUE[usize::from(*v.first()?)],
        HEX_VALUE[usize::from(*v.get(1)?)],
    );
    ((hi | lo) & NOT_HEX == 0).then_some(hi << 4 | lo)
}

/// `H` lower-case hex digits decoded into `N` bytes (`H` = 2 `N`, a multiple of 8), eight
/// digits at a time in a `u64`, and whether every digit was one (a table look-up per digit
/// cost ~9 instructions a byte, callgrind).
#[inline(always)]
fn hex_array<const N: usize, const H: usize>(v: &[u8; H]) -> ([u8; N], bool) {
    debug_assert!(H == 2 * N && H.is_multiple_of(8));
    let mut out = [0u8; N];
    let mut ok = true;
    // Plain indexes over the fixed sizes (a `zip` of chunk iterators was not unrolled).
    let mut k = 0;
    while k < N / 4 {
        let (Some(digits), Some(o)) = (
            v.get(8 * k..8 * k + 8).and_then(|d| d.first_chunk::<8>()),
            out.get_mut(4 * k..4 * k + 4)
                .and_then(|o| o.first_chunk_mut::<4>()),
        ) else {
            return (out, false);
        };
        let (bytes, good) = hex8(digits);
        // An array store (`copy_from_slice` here compiled to a call).
        *o = bytes;
        ok &= good;
        k += 1;
    }
    (out, ok)
}

/// Eight lower-case hex digits as four bytes, and whether all eight were digits: SWAR over
/// one little-endian `u64` (byte k is digit k).
#[inline(always)]
fn hex8(digits: &[u8; 8]) -> ([u8; 4], bool) {
    const fn rep(b: u8) -> u64 {
        u64::from_ne_bytes([b; 8])
    }
    const HIGH: u64 = rep(0x80);
    let x = u64::from_le_bytes(*digits);
    // With every byte under 0x80, `x + (0x80 - lo)` sets a byte's high bit exactly when the
    // byte is at least `lo`, and never carries into the next byte.
    let at_least = |lo: u8| x.wrapping_add(rep(0x80 - lo));
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    let ok = x & HIGH == 0 && (digit | letter) & HIGH == HIGH;
    // '0'-'9' are 0x30-0x39, 'a'-'f' 0x61-0x66: the low nibble, plus 9 where bit 6 is set.
    let nibbles = (x & rep(0x0f)) + ((x >> 6) & rep(0x01)) * 9;
    // Each 16-bit lane: digit 2j in its low byte, 2j+1 in its high one -> byte j.
    const LOW_BYTES: u64 = 0x00ff_00ff_00ff_00ff;
    let pairs = ((nibbles & LOW_BYTES) << 4) | ((nibbles >> 8) & LOW_BYTES);
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    let all = (quads | (quads >> 16)) & 0xffff_ffff;
    ((all as u32).to_le_bytes(), ok)
}

/// Lower-case hex of `id` into `out` (twice its length): one table look-up per byte (a
/// traced call encodes 48 bytes; the iterator form cost ~35 instructions a byte, callgrind).
#[inline]
pub fn hex_encode(id: &[u8], out: &mut [u8]) {
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [HEX[i >> 4], HEX[i & 15]];
            i += 1;
        }
        t
    };
    debug_assert!(out.len() >= 2 * id.len());
    let n = id.len().min(out.len() / 2);
    for i in 0..n {
        let [hi, lo] = PAIRS[usize::from(id[i])];
        out[2 * i] = hi;
        out[2 * i + 1] = lo;
    }
}

/// A version-00 `traceparent` naming `span_id` as the parent of the next hop.
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> [u8; TRACEPARENT_BYTES] {
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
    traceparent_into(&mut v, trace_id, span_id, sampled);
    v
}

/// [`traceparent`] written over `v`, which holds a version-00 value's dashes (`00-…-…-0?`):
/// the ids and the flags.
#[inline]
pub fn traceparent_into(
    v: &mut [u8; TRACEPARENT_BYTES],
    trace_id: &TraceId,
    span_id: &SpanId,
    sampled: bool,
) {
    hex_encode(trace_id, &mut v[3..35]);
    hex_encode(span_id, &mut v[TRACEPARENT_PARENT]);
    v[54] = if sampled { b'1' } else { b'0' };
}

/// A `b3` single value: `{traceid}-{spanid}-{1|0}-{parentspanid}` (the trace id as long as it
/// arrived). Returns the bytes used of `out`.
pub fn b3_single(
    trace_id: &TraceId,
    trace_hex_len: u8,
    span_id: &SpanId,
    sampled: bool,
    parent: &SpanId,
    out: &mut [u8; 68],
) -> usize {
    let t = usize::from(trace_hex_len);
    let tid = if t == 16 {
        &trace_id[8..]
    } else {
        &trace_id[..]
    };
    hex_encode(tid, &mut out[..t]);
    out[t] = b'-';
    hex_encode(span_id, &mut out[t + 1..t + 17]);
    out[t + 17] = b'-';
    out[t + 18] = if sampled { b'1' } else { b'0' };
    out[t + 19] = b'-';
    hex_encode(parent, &mut out[t + 20..t + 36]);
    t + 36
}

/// 16 hex digits of a span id.
pub fn span_hex(id: &SpanId) -> [u8; 16] {
    let mut out = [0u8; 16];
    hex_encode(id, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// The pre-check says yes for every field name in every mix of case (alone and inside
    /// other bytes), and no for the attachments of a request without a context.
    #[test]
    fn may_name_field_never_misses_a_name() {
        let names: [&[u8]; 7] = [
            b"traceparent",
            b"b3",
            b"x-b3-traceid",
            b"x-b3-spanid",
            b"x-b3-parentspanid",
            b"x-b3-sampled",
            b"x-b3-flags",
        ];
        for name in names {
            let letters: Vec<usize> = (0..name.len())
                .filter(|&i| name[i].is_ascii_alphabetic())
                .collect();
            // Every case mix of the letters (traceparent: 2^11).
            for mask in 0u32..(1 << letters.len().min(16)) {
                let mut n = name.to_vec();
                for (bit, &i) in letters.iter().enumerate() {
                    if mask & (1 << bit) != 0 {
                        n[i] = n[i].to_ascii_uppercase();
                    }
                }
                assert!(Field::of(&n).is_some());
                // As a key in each Hessian2 string form a key is read in.
                let forms = [
                    vec![n.len() as u8],
                    vec![0x30, n.len() as u8],
                    vec![b'S', 0, n.len() as u8],
                ];
                for form in forms {
                    let mut key = form.clone();
                    key.extend_from_slice(&n);
                    assert!(may_name_field(&key), "{}", String::from_utf8_lossy(&key));
                    let mut framed = b"H\x04path\x30\x22org.apache".to_vec();
                    framed.extend_from_slice(&key);
                    framed.extend_from_slice(b"\x01vZ");
                    assert!(may_name_field(&framed));
                }
            }
        }
        let plain = b"H\x04path\x30\x22org.apache.dubbo.bench.EchoService\x09interface\x30\x22org.apache.dubbo.bench.EchoService\x07version\x051.0.0\x07timeout\x043000Z";
        assert!(!may_name_field(plain));
        assert!(!may_name_field(b""));
        assert!(!may_name_field(b"3p"));
        // A near miss is a yes (then the map is read): exactness is the parse's.
        assert!(may_name_field(b"\x05jb3kx"));
        assert!(may_name_field(b"\x01x\x0bTRACEPARENTZ"));
        // A `3` or an 11-byte string elsewhere is a no; a length byte at the end is read
        // no further.
        assert!(!may_name_field(b"\x043000\x0bapplicationZ"));
        assert!(!may_name_field(b"3"));
        assert!(!may_name_field(b"\x0b"));
        assert!(!may_name_field(b"\x0btraceparen"));
        assert!(!may_name_field(b"\x0atraceparent"));
        // Each key at every offset of maps of every length around the search's blocks (16
        // and 32 bytes), in bytes that hold neither a `3` nor an 11.
        for key in [&b"\x02b3"[..], b"\x0bTraceparent", b"\x0cX-B3-TraceId"] {
            for len in key.len()..140 {
                for at in 0..=len - key.len() {
                    let mut m = vec![b'a'; len];
                    m[at..at + key.len()].copy_from_slice(key);
                    assert!(may_name_field(&m), "{len} {at}");
                }
                assert!(!may_name_field(&vec![b'a'; len]));
            }
        }
    }

    #[test]
    fn traceparent_round_trip() {
        let c = parse_traceparent(TP).unwrap();
        assert_eq!(c.format, Format::W3c);
        assert_eq!(c.sampled, Some(true));
        assert_eq!(&traceparent(&c.trace_id, &c.span_id, true)[..], TP);
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(parse_traceparent(unsampled).unwrap().sampled, Some(false));
    }

    #[test]
    fn traceparent_rejects() {
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version may carry more fields.
        let v1 = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later";
        assert!(parse_traceparent(v1).is_some());
    }

    /// Every field name in three cases names its field; each with one byte changed, one
    /// byte more or one less names none.
    #[test]
    fn field_names_ignore_case_only() {
        let names = [
            ("traceparent", Field::Traceparent),
            ("b3", Field::B3),
            ("x-b3-traceid", Field::TraceId),
            ("x-b3-spanid", Field::SpanId),
            ("x-b3-parentspanid", Field::ParentSpanId),
            ("x-b3-sampled", Field::Sampled),
            ("x-b3-flags", Field::Flags),
        ];
        for (name, field) in names {
            for n in [
                name.to_string(),
                name.to_uppercase(),
                "X-B3-".to_string() + &name[name.len().min(5)..],
            ] {
                if n.eq_ignore_ascii_case(name) {
                    assert_eq!(Field::of(n.as_bytes()), Some(field), "{n}");
                }
            }
            for at in 0..name.len() {
                let mut n = name.as_bytes().to_vec();
                n[at] = b'q';
                assert_eq!(Field::of(&n), None, "{}", String::from_utf8_lossy(&n));
            }
            assert_eq!(Field::of(format!("{name}x").as_bytes()), None);
            assert_eq!(Field::of(&name.as_bytes()[1..]), None);
        }
        assert_eq!(Field::of(b""), None);
    }

    /// Every byte value in every hex position of a `traceparent` (version, trace id, parent
    /// id, flags): accepted exactly when it is a lower-case hex digit, and then decoded to
    /// the value a digit-by-digit reading gives.
    #[test]
    fn traceparent_hex_digits_each_checked() {
        fn digit(b: u8) -> Option<u8> {
            match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                _ => None,
            }
        }
        let hex_at: Vec<usize> = (0..TRACEPARENT_BYTES)
            .filter(|i| ![2, 35, 52].contains(i))
            .collect();
        for &at in &hex_at {
            for b in 0..=255u8 {
                let mut v = TP.to_vec();
                v[at] = b;
                let got = parse_traceparent(&v);
                let Some(d) = digit(b) else {
                    assert_eq!(got, None, "byte {b:#04x} at {at}");
                    continue;
                };
                // The reference: each id read digit by digit.
                let read = |r: std::ops::Range<usize>| -> Vec<u8> {
                    v[r].chunks(2)
                        .map(|p| digit(p[0]).unwrap() << 4 | digit(p[1]).unwrap())
                        .collect()
                };
                let (trace, span) = (read(3..35), read(36..52));
                let zero = trace.iter().all(|&x| x == 0) || span.iter().all(|&x| x == 0);
                if at < 2 && (d == 0xf && v[1 - at] == b'f') || zero {
                    assert_eq!(got, None, "byte {b:#04x} at {at}");
                    continue;
                }
                let got = got.unwrap_or_else(|| panic!("byte {b:#04x} at {at} refused"));
                assert_eq!(&got.trace_id[..], &trace[..], "at {at}");
                assert_eq!(&got.span_id[..], &span[..], "at {at}");
                assert_eq!(got.sampled, Some(read(53..55)[0] & 1 == 1), "at {at}");
            }
        }
    }

    #[test]
    fn b3_single_forms() {
        let a = parse_b3_single(
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        );
        let Some(Arrived::Context(c)) = a else {
            panic!("{a:?}")
        };
        assert_eq!(
            (c.format, c.sampled, c.trace_hex_len),
            (Format::B3Single, Some(true), 32)
        );
        let Some(Arrived::Context(c)) = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1")
        else {
            panic!()
        };
        assert_eq!((c.sampled, c.trace_hex_len), (None, 16));
        assert_eq!(&c.trace_id[..8], &[0; 8]);
        assert_eq!(parse_b3_single(b"0"), Some(Arrived::Deny));
        assert_eq!(parse_b3_single(b"xyz-e457b5a2e4d86bd1"), None);
        let mut out = [0u8; 68];
        let n = b3_single(&c.trace_id, 16, &c.span_id, true, &[1; 8], &mut out);
        assert_eq!(
            &out[..n],
            b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-0101010101010101"
        );
    }

    #[test]
    fn carrier_precedence_and_multi() {
        let mut c = Carrier::default();
        c.set(
            Field::of(b"X-B3-TraceId").unwrap(),
            b"463ac35c9f6413ad48485a3953bb6124",
        );
        c.set(Field::of(b"x-b3-spanid").unwrap(), b"a2fb4a1d1a96d312");
        c.set(Field::of(b"x-b3-sampled").unwrap(), b"1");
        let Arrived::Context(m) = c.arrived() else {
            panic!()
        };
        assert_eq!((m.format, m.sampled), (Format::B3Multi, Some(true)));
        c.set(Field::Traceparent, TP);
        let Arrived::Context(w) = c.arrived() else {
            panic!()
        };
        assert_eq!(w.format, Format::W3c);
        let mut deny = Carrier::default();
        deny.set(Field::Sampled, b"0");
        assert_eq!(deny.arrived(), Arrived::Deny);
        assert_eq!(Carrier::default().arrived(), Arrived::None);
        assert_eq!(Field::of(b"content-type"), None);
    }
}
