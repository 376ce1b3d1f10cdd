//! HPACK (RFC 7541): the decoder a header-routing proxy needs (static and dynamic tables,
//! Huffman strings) and a stateless encoder.
//!
//! The decoder hands each header to a callback as borrowed slices: strings sent raw are
//! borrowed from the block itself, Huffman strings are decoded into two scratch buffers the
//! decoder keeps, so after warm-up decoding allocates only when the peer inserts into the
//! dynamic table.
//!
//! Two encoders. [`encode_field`] is stateless: headers that equal a static entry are sent as
//! one index byte, others as literals "without indexing" (or "never indexed" when the sender
//! asked for that) with the name indexed when the static table has it; its blocks mean the same
//! on any connection. [`Encoder`] is one connection's stateful encoder: it re-encodes such a
//! block at the moment it is written, indexing fields in its dynamic table (a repeated header
//! costs one or two bytes) and Huffman-coding literals when shorter, so a peer cannot make a
//! proxy send much more than it received by referencing large entries of its own table (HPACK
//! amplification).

use std::collections::VecDeque;

/// The decoder's dynamic table size before any SETTINGS (RFC 7540 6.5.2 default).
pub const TABLE_BYTES_DEFAULT: usize = 4096;
/// RFC 7541 4.1: each entry costs its name and value plus 32.
const ENTRY_OVERHEAD: usize = 32;

/// Why a header block could not be decoded. Any of these is a connection error of type
/// COMPRESSION_ERROR: the decoder's table can no longer be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("hpack: header block ends inside a field")]
    Truncated,
    #[error("hpack: integer overflows")]
    IntegerOverflow,
    #[error("hpack: index {index} is not in the table ({entries} entries)")]
    BadIndex { index: usize, entries: usize },
    #[error("hpack: invalid huffman string")]
    Huffman,
    #[error("hpack: dynamic table size update to {size} exceeds {limit} or is not at the start")]
    TableSizeUpdate { size: usize, limit: usize },
}

/// The static table (RFC 7541 Appendix A); index 1 is the first entry.
pub const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Huffman code length of each symbol (RFC 7541 Appendix B; symbol 256 is EOS). The code is
/// canonical: within one length, codes are consecutive in symbol order, and each length's first
/// code follows the previous length's last. So the lengths alone define it.
const HUFFMAN_LEN: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const HUFFMAN_LEN_MAX: usize = 30;

/// The canonical code, derived at compile time from [`HUFFMAN_LEN`].
struct Canonical {
    /// First code of each length.
    first_code: [u32; HUFFMAN_LEN_MAX + 1],
    /// Number of codes of each length.
    count: [u32; HUFFMAN_LEN_MAX + 1],
    /// Index into `symbols` of each length's first code.
    first_index: [u16; HUFFMAN_LEN_MAX + 1],
    /// Symbols sorted by (length, symbol).
    symbols: [u16; 257],
    /// Each symbol's code (for the tests and for an encoder).
    codes: [u32; 257],
}

// Runs at compile time: an index out of range fails the build, not a request.
#[allow(clippy::indexing_slicing)]
const fn canonical() -> Canonical {
    let mut c = Canonical {
        first_code: [0; HUFFMAN_LEN_MAX + 1],
        count: [0; HUFFMAN_LEN_MAX + 1],
        first_index: [0; HUFFMAN_LEN_MAX + 1],
        symbols: [0; 257],
        codes: [0; 257],
    };
    let mut s = 0;
    while s < 257 {
        c.count[HUFFMAN_LEN[s] as usize] += 1;
        s += 1;
    }
    let mut code = 0u32;
    let mut index = 0u16;
    let mut len = 1;
    while len <= HUFFMAN_LEN_MAX {
        c.first_code[len] = code;
        c.first_index[len] = index;
        let mut s = 0;
        while s < 257 {
            if HUFFMAN_LEN[s] as usize == len {
                c.symbols[index as usize] = s as u16;
                c.codes[s] = code;
                code += 1;
                index += 1;
            }
            s += 1;
        }
        code <<= 1;
        len += 1;
    }
    c
}

static HUFFMAN: Canonical = canonical();

/// Decodes a Huffman-coded string, appending to `dst`.
pub fn huffman_decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HpackError> {
    let h = &HUFFMAN;
    // `acc` holds `bits` not yet decoded bits in its low end, most significant first.
    let mut acc: u64 = 0;
    let mut bits: usize = 0;
    let mut input = src.iter();
    loop {
        while bits <= 56 {
            match input.next() {
                Some(&b) => {
                    acc = (acc << 8) | u64::from(b);
                    bits += 8;
                }
                None => break,
            }
        }
        if bits < 5 {
            break;
        }
        let mut found = false;
        let mut len = 5;
        while len <= bits.min(HUFFMAN_LEN_MAX) {
            let code = ((acc >> (bits - len)) & ((1u64 << len) - 1)) as u32;
            let (Some(&first), Some(&count), Some(&first_index)) = (
                h.first_code.get(len),
                h.count.get(len),
                h.first_index.get(len),
            ) else {
                break;
            };
            if code < first + count {
                let i = first_index as usize + (code - first) as usize;
                let sym = h.symbols.get(i).copied().ok_or(HpackError::Huffman)?;
                if sym == 256 {
                    // EOS inside a string is an error (RFC 7541 5.2).
                    return Err(HpackError::Huffman);
                }
                dst.push(sym as u8);
                bits -= len;
                found = true;
                break;
            }
            len += 1;
        }
        if !found {
            // Not enough bits left for a whole code: what remains must be padding.
            break;
        }
    }
    // Padding: fewer than 8 bits, all ones (the EOS prefix).
    if bits > 7 || (acc & ((1u64 << bits) - 1)) != (1u64 << bits) - 1 {
        return Err(HpackError::Huffman);
    }
    Ok(())
}

/// Appends the Huffman code of `src` (used by tests and tools; the proxy's encoder sends
/// strings raw).
// A byte indexes the 257-entry tables: always in range.
#[allow(clippy::indexing_slicing)]
pub fn huffman_encode(src: &[u8], dst: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut bits = 0;
    for &b in src {
        let len = HUFFMAN_LEN[b as usize] as usize;
        acc = (acc << len) | u64::from(HUFFMAN.codes[b as usize]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            dst.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        let pad = 8 - bits;
        dst.push(((acc << pad) as u8) | ((1u8 << pad) - 1));
    }
}

/// Reads an HPACK integer with an `n`-bit prefix (RFC 7541 5.1), returning it and the bytes
/// consumed.
fn read_int(b: &[u8], n: u32) -> Result<(usize, usize), HpackError> {
    let first = *b.first().ok_or(HpackError::Truncated)?;
    let max = (1usize << n) - 1;
    let mut v = usize::from(first) & max;
    if v < max {
        return Ok((v, 1));
    }
    let mut shift = 0u32;
    for (i, &byte) in b.iter().enumerate().skip(1) {
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
        v = v
            .checked_add(usize::from(byte & 0x7f) << shift)
            .ok_or(HpackError::IntegerOverflow)?;
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
        shift += 7;
    }
    Err(HpackError::Truncated)
}

/// Appends an HPACK integer with an `n`-bit prefix; `flags` fills the bits above the prefix.
pub fn write_int(out: &mut Vec<u8>, v: usize, n: u32, flags: u8) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = v - max;
    while rest >= 128 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Where a decoded string lives: borrowed from the block, or in one of the scratch buffers.
#[derive(Clone, Copy)]
enum Str {
    Block(usize, usize),
    Scratch,
    Table(usize),
}

/// A dynamic table entry: name, value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// One connection's HPACK decoder.
pub struct Decoder {
    /// Newest first.
    entries: VecDeque<Entry>,
    size: usize,
    /// Current maximum (changed by size updates from the peer's encoder).
    max: usize,
    /// The limit we advertised (SETTINGS_HEADER_TABLE_SIZE): updates above it are errors.
    limit: usize,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(TABLE_BYTES_DEFAULT)
    }
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max: limit,
            limit,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Bytes the dynamic table holds, by RFC 7541's accounting.
    pub fn table_bytes(&self) -> usize {
        self.size
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        let bad = || HpackError::BadIndex {
            index,
            entries: STATIC_TABLE.len() + self.entries.len(),
        };
        if index == 0 {
            return Err(bad());
        }
        if index <= STATIC_TABLE.len() {
            return STATIC_TABLE.get(index - 1).copied().ok_or_else(bad);
        }
        self.entries
            .get(index - STATIC_TABLE.len() - 1)
            .map(|(n, v)| (&**n, &**v))
            .ok_or_else(bad)
    }

    fn evict(&mut self) {
        while self.size > self.max {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let cost = name.len() + value.len() + ENTRY_OVERHEAD;
        if cost > self.max {
            // RFC 7541 4.4: an entry larger than the table empties it.
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.size += cost;
        self.entries.push_front((name.into(), value.into()));
        self.evict();
    }

    /// Reads a string literal at `b[pos..]`; Huffman ones go to the name or value buffer.
    fn read_str(
        &mut self,
        b: &[u8],
        pos: usize,
        into_name: bool,
    ) -> Result<(Str, usize), HpackError> {
        let rest = b.get(pos..).ok_or(HpackError::Truncated)?;
        let huffman = rest.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
        let (len, used) = read_int(rest, 7)?;
        let start = pos + used;
        let end = start.checked_add(len).ok_or(HpackError::Truncated)?;
        let raw = b.get(start..end).ok_or(HpackError::Truncated)?;
        if !huffman {
            return Ok((Str::Block(start, end), end));
        }
        let buf = if into_name {
            &mut self.name_buf
        } else {
            &mut self.value_buf
        };
        buf.clear();
        huffman_decode(raw, buf)?;
        Ok((Str::Scratch, end))
    }

    /// Decodes one complete header block (HEADERS plus any CONTINUATION payloads, joined),
    /// calling `f(name, value, never_indexed)` for each field in order.
    pub fn decode(
        &mut self,
        block: &[u8],
        f: &mut impl FnMut(&[u8], &[u8], bool),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut fields_seen = false;
        while pos < block.len() {
            let first = block.get(pos).copied().ok_or(HpackError::Truncated)?;
            if first & 0x80 != 0 {
                // Indexed field.
                let (index, used) = read_int(block.get(pos..).unwrap_or_default(), 7)?;
                pos += used;
                let (n, v) = self.entry(index)?;
                f(n, v, false);
                fields_seen = true;
                continue;
            }
            if first & 0xe0 == 0x20 {
                // Dynamic table size update: only before the first field.
                let (size, used) = read_int(block.get(pos..).unwrap_or_default(), 5)?;
                if size > self.limit || fields_seen {
                    return Err(HpackError::TableSizeUpdate {
                        size,
                        limit: self.limit,
                    });
                }
                pos += used;
                self.max = size;
                self.evict();
                continue;
            }
            // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
            let (prefix, index_it, never) = if first & 0xc0 == 0x40 {
                (6, true, false)
            } else {
                (4, false, first & 0x10 != 0)
            };
            let (name_index, used) = read_int(block.get(pos..).unwrap_or_default(), prefix)?;
            pos += used;
            let name = if name_index == 0 {
                let (s, end) = self.read_str(block, pos, true)?;
                pos = end;
                s
            } else {
                self.entry(name_index)?;
                Str::Table(name_index)
            };
            let (value, end) = self.read_str(block, pos, false)?;
            pos = end;
            fields_seen = true;
            let n: &[u8] = match name {
                Str::Block(s, e) => block.get(s..e).ok_or(HpackError::Truncated)?,
                Str::Scratch => &self.name_buf,
                Str::Table(i) => self.entry(i)?.0,
            };
            let v: &[u8] = match value {
                Str::Block(s, e) => block.get(s..e).ok_or(HpackError::Truncated)?,
                _ => &self.value_buf,
            };
            f(n, v, never);
            if index_it {
                // Copy out of the borrows before the table changes.
                let (n, v) = (n.to_vec(), v.to_vec());
                self.insert(&n, &v);
            }
        }
        Ok(())
    }
}

/// One connection's stateful HPACK encoder (RFC 7541 2.3, 4): a dynamic table mirrored by the
/// peer's decoder, of at most the peer's SETTINGS_HEADER_TABLE_SIZE (and `TABLE_BYTES_DEFAULT`);
/// a field is added unless it is never-indexed, larger than the table, or would evict a larger
/// entry (see `may_insert`), or its name is one whose values change with every message
/// ([`volatile`]: only its first value is added, for the name).
/// Blocks must be encoded in the order they are written to the connection. Evicted entries'
/// buffers are reused, so a warm encoder does not allocate.
pub struct Encoder {
    table: Table,
    /// The smallest and the last table size to announce at the start of the next block.
    update: Option<(usize, usize)>,
    /// Reads the stateless blocks handed to [`Encoder::encode_block`] (no dynamic table).
    reader: Decoder,
    /// The fields of the last blocks encoded and what each became, by position: gRPC's response
    /// headers and trailers repeat field for field on every call, with a few values that change
    /// (`date` once a second, `x-envoy-upstream-service-time`). A field whose bytes equal the
    /// memo's at its position is written from the memo (a static index as it is, an entry of
    /// the dynamic table by its number, while it stands) without decoding it or searching the
    /// table; only the others are encoded. Two blocks: the headers and the trailers of a call
    /// alternate on a connection.
    memos: [Memo; 2],
    /// The memo the next block that matches neither replaces.
    memo_next: usize,
    /// `Memo::fields` of the block being encoded (kept for its allocation).
    spare_fields: Vec<(u32, Rep)>,
    /// Tests: encode every field afresh (the reference the memo must equal).
    #[cfg(test)]
    pub(crate) no_memo: bool,
}

/// The dynamic table of an [`Encoder`].
struct Table {
    /// Newest first: name followed by value, and the name's length.
    entries: VecDeque<(Vec<u8>, usize)>,
    size: usize,
    max: usize,
    spare: Vec<Vec<u8>>,
    /// Entries inserted so far: the newest entry is number `inserted - 1`, the one at dynamic
    /// position k (0 newest) number `inserted - 1 - k`; an entry is still in the table while its
    /// number is at least `inserted - entries.len()`.
    inserted: u64,
    /// Changes whenever the table does (an insertion, a new size).
    generation: u64,
    /// The entry number of each [`VOLATILE`] name's one entry (the first value it was sent
    /// with), if it was added: later values name it by index without searching the table.
    volatile: [Option<u64>; VOLATILE.len()],
}

/// Names whose values change with every message (a duration, a request id, a span id): a new
/// value would take a table entry that is never referenced again and evicts ones that are
/// (as nghttp2 leaves `:path`, `content-length` and others out of its table). Only the first
/// value of each goes into the table, so the name is then sent as an index; the values are
/// sent raw (Huffman-coding a value read once costs both ends more than the bytes it saves).
pub const VOLATILE: [&[u8]; 5] = [
    b"x-envoy-upstream-service-time",
    b"x-request-id",
    b"traceparent",
    b"x-b3-spanid",
    b"grpc-timeout",
];

fn volatile(name: &[u8]) -> Option<usize> {
    // By length first: every literal field is checked.
    let i = match name.len() {
        29 => 0,
        12 if name.first() == Some(&b'x') => 1,
        12 => 4,
        11 if name.first() == Some(&b't') => 2,
        11 => 3,
        _ => return None,
    };
    (name == VOLATILE[i]).then_some(i)
}

/// One block's fields as the encoder wrote them (see `Encoder::memos`).
#[derive(Default)]
struct Memo {
    block: Vec<u8>,
    /// Each field's end in `block` and how it was written.
    fields: Vec<(u32, Rep)>,
    /// The table's generation the whole block was encoded at without changing it, and what it
    /// was encoded to: while the table stands, the same block is copied from here.
    generation: Option<u64>,
    encoded: Vec<u8>,
}

/// How a field of a stateless block was written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rep {
    /// A static index, copied as it is.
    Static,
    /// As the dynamic-table entry of this number (found there, or inserted then).
    Entry(u64),
    /// A literal not in the table: encoded again each time.
    Literal,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            table: Table {
                entries: VecDeque::new(),
                size: 0,
                max: TABLE_BYTES_DEFAULT,
                spare: Vec::new(),
                inserted: 0,
                generation: 0,
                volatile: [None; VOLATILE.len()],
            },
            update: None,
            reader: Decoder::new(0),
            memos: [Memo::default(), Memo::default()],
            memo_next: 0,
            spare_fields: Vec::new(),
            #[cfg(test)]
            no_memo: false,
        }
    }
}

/// Where the string literal at `pos` of `b` ends (its length prefix read, its bytes not).
fn str_end(b: &[u8], pos: usize) -> Result<usize, HpackError> {
    let (len, used) = read_int(b.get(pos..).ok_or(HpackError::Truncated)?, 7)?;
    let end = (pos + used).checked_add(len).ok_or(HpackError::Truncated)?;
    if end > b.len() {
        return Err(HpackError::Truncated);
    }
    Ok(end)
}

/// The length of `src` Huffman-coded.
// A byte indexes the 257-entry table: always in range.
#[allow(clippy::indexing_slicing)]
fn huffman_len(src: &[u8]) -> usize {
    let bits: usize = src
        .iter()
        .map(|&b| usize::from(HUFFMAN_LEN[b as usize]))
        .sum();
    bits.div_ceil(8)
}

/// A string literal, Huffman-coded when that is shorter.
fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    let h = huffman_len(s);
    if h < s.len() {
        write_int(out, h, 7, 0x80);
        huffman_encode(s, out);
    } else {
        write_int(out, s.len(), 7, 0);
        out.extend_from_slice(s);
    }
}

impl Encoder {
    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the table shrinks to it (or grows up to
    /// `TABLE_BYTES_DEFAULT`), announced at the start of the next block.
    pub fn set_peer_table_size(&mut self, bytes: u32) {
        let new = (bytes as usize).min(TABLE_BYTES_DEFAULT);
        let t = &mut self.table;
        if new == t.max && self.update.is_none() {
            return;
        }
        let low = self.update.map_or(new, |(low, _)| low.min(new));
        self.update = Some((low, new));
        t.generation += 1;
        t.max = new;
        t.evict(0);
    }

    /// Bytes the dynamic table holds, by RFC 7541's accounting.
    pub fn table_bytes(&self) -> usize {
        self.table.size
    }

    /// Re-encodes `block`, a complete block of the stateless encoder (or any block that uses no
    /// dynamic table), appending to `out`. The same bytes as encoding each field afresh; fields
    /// equal to the last similar block's are written from its memo (see `Encoder::memos`).
    pub fn encode_block(&mut self, out: &mut Vec<u8>, block: &[u8]) -> Result<(), HpackError> {
        #[cfg(test)]
        let memo_on = !self.no_memo;
        #[cfg(not(test))]
        let memo_on = true;
        // The memo of the block like this one (the same first byte: `:status` of response
        // headers, `grpc-status` of trailers), else the one used least recently.
        let k = match block.first() {
            Some(f) if self.memos[0].block.first() == Some(f) => 0,
            Some(f) if self.memos[1].block.first() == Some(f) => 1,
            _ => self.memo_next,
        };
        self.memo_next = 1 - k;
        let memo = &mut self.memos[k];
        if memo_on
            && self.update.is_none()
            && memo.generation == Some(self.table.generation)
            && memo.block == block
        {
            out.extend_from_slice(&memo.encoded);
            return Ok(());
        }
        let plain = self.update.is_none();
        if let Some((low, last)) = self.update.take() {
            // The peer's table goes through `low`: ours too, or they would differ.
            let t = &mut self.table;
            if low < last {
                t.max = low;
                t.evict(0);
                write_int(out, low, 5, 0x20);
            }
            t.max = last;
            write_int(out, last, 5, 0x20);
        }
        let (start, generation) = (out.len(), self.table.generation);
        let mut fields = std::mem::take(&mut self.spare_fields);
        fields.clear();
        let r = transcode(
            &mut self.table,
            &mut self.reader,
            out,
            block,
            memo_on.then_some(&*memo),
            &mut fields,
        );
        if r.is_ok() {
            memo.block.clear();
            memo.block.extend_from_slice(block);
            std::mem::swap(&mut memo.fields, &mut fields);
            memo.encoded.clear();
            memo.generation = None;
            // (Not with a size update: that is written once.)
            if plain && self.table.generation == generation {
                memo.generation = Some(generation);
                memo.encoded
                    .extend_from_slice(out.get(start..).unwrap_or_default());
            }
        } else {
            *memo = Memo::default();
        }
        self.spare_fields = fields;
        r
    }

    /// Appends one field: an index when the static or dynamic table has it, else a literal
    /// (Huffman-coded when shorter) added to the dynamic table when it may be, unless the field
    /// is "never indexed" (kept so, RFC 7541 6.2.3).
    pub fn encode(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8], never: bool) {
        let (exact, name_index) = static_lookup(name, value);
        if let (Some(i), false) = (exact, never) {
            write_int(out, i, 7, 0x80);
            return;
        }
        self.table
            .encode_literal(out, name, value, never, name_index);
    }
}

/// Reads the fields of a stateless block as they are represented (a static index is copied as
/// it is; a literal's static name index is kept, so no static lookup is made again) and encodes
/// each, or writes it as `memo` says when it is the memo's field at that position; `fields`
/// gets each field's end and representation. Anything the stateless encoder never writes (a
/// dynamic index, a size update) is an error.
fn transcode(
    table: &mut Table,
    reader: &mut Decoder,
    out: &mut Vec<u8>,
    block: &[u8],
    memo: Option<&Memo>,
    fields: &mut Vec<(u32, Rep)>,
) -> Result<(), HpackError> {
    let mut pos = 0;
    // Where the memo's field at this position starts.
    let mut memo_start = 0;
    while let Some(&first) = block.get(pos) {
        let rest = block.get(pos..).unwrap_or_default();
        let memo_field = memo.and_then(|m| m.fields.get(fields.len()).copied());
        let memo_end = memo_field.map_or(0, |f| f.0 as usize);
        if first & 0x80 != 0 {
            let (index, used) = read_int(rest, 7)?;
            if index == 0 || index > STATIC_TABLE.len() {
                return Err(HpackError::BadIndex {
                    index,
                    entries: STATIC_TABLE.len(),
                });
            }
            out.extend_from_slice(rest.get(..used).unwrap_or_default());
            pos += used;
            fields.push((pos as u32, Rep::Static));
            memo_start = memo_end;
            continue;
        }
        if first & 0xe0 == 0x20 {
            return Err(HpackError::TableSizeUpdate { size: 0, limit: 0 });
        }
        let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
        let never = first & 0xf0 == 0x10;
        let (name_index, used) = read_int(rest, prefix)?;
        let field_start = pos;
        pos += used;
        // The field's extent, from the string lengths alone.
        let name_end = if name_index == 0 {
            str_end(block, pos)?
        } else {
            pos
        };
        let end = str_end(block, name_end)?;
        // The memo's field at this position: the same bytes, and its entry still stands.
        if let (Some((_, Rep::Entry(n))), Some(m)) = (memo_field, memo) {
            if table.holds(n) && m.block.get(memo_start..memo_end) == block.get(field_start..end) {
                write_int(out, table.index_of(n), 7, 0x80);
                pos = end;
                fields.push((pos as u32, Rep::Entry(n)));
                memo_start = memo_end;
                continue;
            }
        }
        let name = if name_index == 0 {
            let (s, _) = reader.read_str(block, pos, true)?;
            Some(s)
        } else if name_index <= STATIC_TABLE.len() {
            None
        } else {
            return Err(HpackError::BadIndex {
                index: name_index,
                entries: STATIC_TABLE.len(),
            });
        };
        let (value, _) = reader.read_str(block, name_end, false)?;
        pos = end;
        let n: &[u8] = match name {
            Some(Str::Block(s, e)) => block.get(s..e).ok_or(HpackError::Truncated)?,
            Some(_) => &reader.name_buf,
            None => STATIC_TABLE.get(name_index - 1).map_or(&[][..], |e| e.0),
        };
        let v: &[u8] = match value {
            Str::Block(s, e) => block.get(s..e).ok_or(HpackError::Truncated)?,
            _ => &reader.value_buf,
        };
        let static_name = (name_index > 0).then_some(name_index);
        let rep = table.encode_literal(out, n, v, never, static_name);
        fields.push((pos as u32, rep));
        memo_start = memo_end;
    }
    Ok(())
}

impl Table {
    /// Whether entry number `n` is still in the table.
    fn holds(&self, n: u64) -> bool {
        n < self.inserted && n + self.entries.len() as u64 >= self.inserted
    }

    /// The HPACK index of entry number `n` (in the table).
    fn index_of(&self, n: u64) -> usize {
        STATIC_TABLE.len() + 1 + (self.inserted - 1 - n) as usize
    }

    /// Whether an entry of `cost` bytes goes into the table: it must fit, and it must not evict
    /// an entry larger than itself. Without the second rule a peer whose own table is full of
    /// one large entry makes ours churn (the small fields it does not index itself evict the
    /// large one before each reference), and every reference goes out literally again.
    fn may_insert(&self, cost: usize) -> bool {
        if cost > self.max {
            return false;
        }
        let mut free = self.max.saturating_sub(self.size);
        for (buf, _) in self.entries.iter().rev() {
            if free >= cost {
                return true;
            }
            let c = buf.len() + ENTRY_OVERHEAD;
            if c > cost {
                return false;
            }
            free += c;
        }
        free >= cost
    }

    /// Makes room for `need` bytes.
    fn evict(&mut self, need: usize) {
        while self.size + need > self.max {
            match self.entries.pop_back() {
                Some((buf, _)) => {
                    self.size -= buf.len() + ENTRY_OVERHEAD;
                    self.spare.push(buf);
                }
                None => break,
            }
        }
    }

    /// A field the static table does not have whole (`name_index`: its name's static entry):
    /// a dynamic index, or a literal added to the dynamic table when it may be. Returns how it
    /// was written.
    fn encode_literal(
        &mut self,
        out: &mut Vec<u8>,
        name: &[u8],
        value: &[u8],
        never: bool,
        mut name_index: Option<usize>,
    ) -> Rep {
        let vol = volatile(name);
        if let Some(n) = vol
            .and_then(|i| self.volatile[i])
            .filter(|&n| self.holds(n))
        {
            // Its name's entry stands: the value goes raw, not into the table (`VOLATILE`).
            let (prefix, flags) = if never { (4, 0x10) } else { (4, 0x00) };
            let own = self.entries.get((self.inserted - 1 - n) as usize);
            if !never && own.and_then(|(buf, nl)| buf.get(*nl..)) == Some(value) {
                write_int(out, self.index_of(n), 7, 0x80);
                return Rep::Entry(n);
            }
            write_int(out, self.index_of(n), prefix, flags);
            write_int(out, value.len(), 7, 0);
            out.extend_from_slice(value);
            return Rep::Literal;
        }
        if !never {
            for (k, (buf, nl)) in self.entries.iter().enumerate() {
                if *nl != name.len() || buf.get(..*nl) != Some(name) {
                    continue;
                }
                if buf.get(*nl..) == Some(value) {
                    write_int(out, STATIC_TABLE.len() + 1 + k, 7, 0x80);
                    return Rep::Entry(self.inserted - 1 - k as u64);
                }
                name_index.get_or_insert(STATIC_TABLE.len() + 1 + k);
            }
        }
        let cost = name.len() + value.len() + ENTRY_OVERHEAD;
        let index_it = !never && self.may_insert(cost);
        let (prefix, flags) = match (index_it, never) {
            (true, _) => (6, 0x40),
            (false, true) => (4, 0x10),
            (false, false) => (4, 0x00),
        };
        match name_index {
            Some(i) => write_int(out, i, prefix, flags),
            None => {
                out.push(flags);
                write_str(out, name);
            }
        }
        if vol.is_some() {
            write_int(out, value.len(), 7, 0);
            out.extend_from_slice(value);
        } else {
            write_str(out, value);
        }
        if index_it {
            self.evict(cost);
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(name);
            buf.extend_from_slice(value);
            self.entries.push_front((buf, name.len()));
            self.size += cost;
            self.inserted += 1;
            self.generation += 1;
            if let Some(i) = vol {
                self.volatile[i] = Some(self.inserted - 1);
            }
            return Rep::Entry(self.inserted - 1);
        }
        Rep::Literal
    }
}

/// The static entry equal to (name, value), or the first with this name.
fn static_lookup(name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
    let Some(firsts) = STATIC_BY_LEN.get(name.len()) else {
        return (None, None);
    };
    for &f in firsts {
        let f = f as usize;
        if f >= STATIC_TABLE.len() {
            break;
        }
        if STATIC_TABLE[f].0 != name {
            continue;
        }
        // Entries with one name are adjacent.
        for (i, (n, v)) in STATIC_TABLE.iter().enumerate().skip(f) {
            if *n != name {
                break;
            }
            if *v == value {
                return (Some(i + 1), Some(i + 1));
            }
        }
        return (None, Some(f + 1));
    }
    (None, None)
}

/// For each name length, the 0-based index of the first entry of each static-table name of that
/// length (entries of one name are adjacent), 255 for none: a lookup compares a field's name
/// with at most 6 entries instead of scanning all 61 (checked against the table by a test).
const STATIC_BY_LEN: [[u8; 6]; 28] = [
    [255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255],
    [20, 59, 255, 255, 255, 255],
    [32, 33, 36, 37, 44, 58],
    [3, 21, 49, 255, 255, 255],
    [18, 31, 34, 53, 255, 255],
    [1, 5, 7, 35, 50, 51],
    [38, 41, 45, 255, 255, 255],
    [255, 255, 255, 255, 255, 255],
    [0, 54, 57, 255, 255, 255],
    [52, 255, 255, 255, 255, 255],
    [30, 46, 255, 255, 255, 255],
    [17, 22, 23, 29, 40, 43],
    [14, 27, 255, 255, 255, 255],
    [15, 16, 255, 255, 255, 255],
    [25, 26, 28, 60, 255, 255],
    [39, 56, 255, 255, 255, 255],
    [47, 255, 255, 255, 255, 255],
    [24, 42, 48, 255, 255, 255],
    [255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255],
    [55, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255],
    [19, 255, 255, 255, 255, 255],
];

/// The table search `static_lookup` replaced: the reference of its test.
#[cfg(test)]
fn static_lookup_scan(name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
    let mut name_index = None;
    for (i, (n, v)) in STATIC_TABLE.iter().enumerate() {
        if *n == name {
            if *v == value {
                return (Some(i + 1), Some(i + 1));
            }
            name_index.get_or_insert(i + 1);
        } else if name_index.is_some() {
            break;
        }
    }
    (None, name_index)
}

/// Appends one header field (see the module doc for the representation chosen). A field the
/// sender marked "never indexed" keeps that representation even when the static table has it
/// (RFC 7541 6.2.3: an intermediary must not re-encode it any other way).
pub fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8], never_indexed: bool) {
    let (exact, name_index) = static_lookup(name, value);
    if let (Some(i), false) = (exact, never_indexed) {
        write_int(out, i, 7, 0x80);
        return;
    }
    encode_literal(out, name_index, name, value, never_indexed);
}

/// Static-table index of `date` (RFC 7541 Appendix A).
pub const STATIC_DATE: usize = 33;
/// Static-table index of `server` (RFC 7541 Appendix A).
pub const STATIC_SERVER: usize = 54;

/// Appends a field of a name the caller knows, without searching the static table (fields a
/// proxy adds to every response: `date`, `server`, `x-envoy-upstream-service-time`):
/// `name_index` is the name's static-table index ([`STATIC_DATE`], [`STATIC_SERVER`]), None for
/// a name the table lacks. The same bytes as [`encode_field`] for a value the table does not
/// hold with that name (none of these names has a non-empty value there).
pub fn encode_known(out: &mut Vec<u8>, name_index: Option<usize>, name: &[u8], value: &[u8]) {
    debug_assert_eq!(static_lookup(name, value), (None, name_index));
    encode_literal(out, name_index, name, value, false);
}

fn encode_literal(
    out: &mut Vec<u8>,
    name_index: Option<usize>,
    name: &[u8],
    value: &[u8],
    never_indexed: bool,
) {
    let flags = if never_indexed { 0x10 } else { 0x00 };
    match name_index {
        Some(i) => write_int(out, i, 4, flags),
        None => {
            out.push(flags);
            write_int(out, name.len(), 7, 0);
            out.extend_from_slice(name);
        }
    }
    write_int(out, value.len(), 7, 0);
    out.extend_from_slice(value);
}

#[cfg(test)]
mod known_tests {
    use super::*;

    /// `encode_known` writes what `encode_field` writes, without the table search.
    #[test]
    fn known_names_encode_as_encode_field_does() {
        for (i, name, value) in [
            (
                Some(STATIC_DATE),
                &b"date"[..],
                &b"Sun, 06 Nov 1994 08:49:37 GMT"[..],
            ),
            (Some(STATIC_SERVER), b"server", b"istio-envoy"),
            (None, b"x-envoy-upstream-service-time", b"12"),
        ] {
            assert_eq!(static_lookup(name, value), (None, i), "{name:?}");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_field(&mut a, name, value, false);
            encode_known(&mut b, i, name, value);
            assert_eq!(a, b, "{name:?}");
        }
    }

    /// The by-length index finds what a scan of the whole table finds, for every entry, every
    /// name with another value, and names the table lacks.
    #[test]
    fn static_lookup_by_length_matches_the_scan() {
        let mut cases: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (n, v) in STATIC_TABLE {
            cases.push((n.to_vec(), v.to_vec()));
            cases.push((n.to_vec(), b"other".to_vec()));
            let mut longer = n.to_vec();
            longer.push(b'x');
            cases.push((longer, v.to_vec()));
            cases.push((n[..n.len() - 1].to_vec(), v.to_vec()));
        }
        for n in [
            &b""[..],
            b"x-envoy-upstream-service-time",
            b"grpc-status",
            b"te",
            b"a-very-long-header-name-beyond-any-entry",
        ] {
            cases.push((n.to_vec(), Vec::new()));
        }
        for (n, v) in &cases {
            assert_eq!(static_lookup(n, v), static_lookup_scan(n, v), "{n:?} {v:?}");
        }
    }
}
