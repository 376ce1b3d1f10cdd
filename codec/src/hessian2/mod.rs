//! Hessian 2.0 serialization (<http://hessian.caucho.com/doc/hessian-serialization.html>), as
//! far as a proxy needs it: a [`Reader`] that reads scalars in place and skips every other value
//! without building objects, and a small [`Writer`].
//!
//! Owns: the tag grammar (§3 of the spec, one `match` in [`Reader::read_value`]), the reader's
//! per-stream state (class definitions and type names, which later values refer to by index).
//! Strings are borrowed as the bytes on the wire; their length prefix counts UTF-16 units, which
//! the reader walks. Java peers send supplementary characters as two 3-byte surrogates (CESU-8);
//! the reader also takes 4-byte UTF-8 as two units. A string over 32768 units arrives in chunks
//! and is returned as [`Chunks`] (copy it out with [`Chunks::copy_to`] if needed).
//!
//! No-panic contract: nothing here panics on any input; malformed input is a
//! [`DecodeError`](crate::DecodeError) naming the construct and its offset. Limits: nesting of
//! lists, maps and objects ([`NESTING_DEPTH_MAX`]), class definitions per stream
//! ([`CLASS_DEFS_MAX`]) and fields per class ([`CLASS_FIELDS_MAX`]); every count is also checked
//! against the bytes left before it is looped over. Work is linear in the input: every value
//! consumes at least one byte.

use crate::error::DecodeError;

mod writer;
pub use writer::Writer;

#[cfg(test)]
mod tests;

/// Deepest nesting of lists, maps and objects the reader follows. Recursion uses about 200 bytes
/// of stack per level in release builds (measured: 160 for `Reader::value` on x86-64), so 128
/// levels is ~32 KiB, far below any thread's stack, and above the object graphs Dubbo services
/// send (Java's own serializer recurses the same way).
pub const NESTING_DEPTH_MAX: usize = 128;
/// Most class definitions ('C') in one stream. The reader keeps one field count per definition
/// in a fixed array, so this is also its size (2 bytes each).
pub const CLASS_DEFS_MAX: usize = 256;
/// Class definitions a [`Reader`] keeps without allocating.
const CLASS_FIELDS_INLINE: usize = 16;
/// Most fields in one class definition.
pub const CLASS_FIELDS_MAX: usize = u16::MAX as usize;
/// Largest chunk the writer emits for strings (UTF-16 units) and binary (bytes), as Java's
/// `Hessian2Output` does.
pub const CHUNK_MAX: usize = 0x8000;

/// Tag bytes with names (spec §4, "Bytecode map"); ranges are matched inline.
pub mod tag {
    pub const BINARY_CHUNK: u8 = b'A';
    pub const BINARY_FINAL: u8 = b'B';
    pub const CLASS_DEF: u8 = b'C';
    pub const DOUBLE: u8 = b'D';
    pub const FALSE: u8 = b'F';
    pub const MAP_UNTYPED: u8 = b'H';
    pub const INT: u8 = b'I';
    pub const DATE_MS: u8 = 0x4a;
    pub const DATE_MINUTES: u8 = 0x4b;
    pub const LONG: u8 = b'L';
    pub const MAP_TYPED: u8 = b'M';
    pub const NULL: u8 = b'N';
    pub const OBJECT: u8 = b'O';
    pub const REF: u8 = b'Q';
    pub const STRING_CHUNK: u8 = b'R';
    pub const STRING_FINAL: u8 = b'S';
    pub const TRUE: u8 = b'T';
    pub const LIST_VAR_TYPED: u8 = b'U';
    pub const LIST_FIXED_TYPED: u8 = b'V';
    pub const LIST_VAR_UNTYPED: u8 = b'W';
    pub const LIST_FIXED_UNTYPED: u8 = b'X';
    pub const LONG_INT: u8 = b'Y';
    pub const END: u8 = b'Z';
    pub const DOUBLE_ZERO: u8 = 0x5b;
    pub const DOUBLE_ONE: u8 = 0x5c;
    pub const DOUBLE_BYTE: u8 = 0x5d;
    pub const DOUBLE_SHORT: u8 = 0x5e;
    pub const DOUBLE_MILL: u8 = 0x5f;
    pub const OBJECT_DIRECT: u8 = 0x60;
    pub const LIST_DIRECT_TYPED: u8 = 0x70;
    pub const LIST_DIRECT_UNTYPED: u8 = 0x78;
    pub const INT_ZERO: u8 = 0x90;
    pub const INT_BYTE_ZERO: u8 = 0xc8;
    pub const INT_SHORT_ZERO: u8 = 0xd4;
    pub const LONG_ZERO: u8 = 0xe0;
    pub const LONG_BYTE_ZERO: u8 = 0xf8;
    pub const LONG_SHORT_ZERO: u8 = 0x3c;
    pub const STRING_SHORT: u8 = 0x30;
    pub const BINARY_DIRECT: u8 = 0x20;
    pub const BINARY_SHORT: u8 = 0x34;
}

/// One value as read: scalars in place, everything else skipped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    /// Milliseconds since the Unix epoch.
    DateMs(i64),
    /// A string's bytes as sent (UTF-8, or CESU-8 from Java for characters beyond U+FFFF).
    Str(&'a [u8]),
    Binary(&'a [u8]),
    /// A string sent in chunks.
    StrChunked(Chunks<'a>),
    /// Binary data sent in chunks.
    BinaryChunked(Chunks<'a>),
    /// A list, map, object or back-reference: skipped, not built.
    Composite,
}

/// A chunked string or binary value, as the raw bytes of all its chunks. Iterate the data with
/// [`Chunks::iter`]; [`Chunks::copy_to`] is the allocating fallback for callers that need one
/// slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunks<'a> {
    raw: &'a [u8],
    string: bool,
}

// === impl Chunks ===

impl<'a> Chunks<'a> {
    /// The encoded chunks, tags and lengths included.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The data of each chunk in order.
    pub fn iter(&self) -> ChunkIter<'a> {
        ChunkIter {
            cur: Cursor::new(self.raw, 0),
            string: self.string,
            done: false,
        }
    }

    /// Appends the data of all chunks to `out`.
    pub fn copy_to(&self, out: &mut Vec<u8>) {
        for chunk in self.iter() {
            out.extend_from_slice(chunk);
        }
    }
}

/// Iterator over the data of [`Chunks`].
#[derive(Clone, Debug)]
pub struct ChunkIter<'a> {
    cur: Cursor<'a>,
    string: bool,
    done: bool,
}

impl<'a> Iterator for ChunkIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        let offset = self.cur.pos;
        let tag = self.cur.byte("chunk").ok()?;
        let (len, last) = match (self.string, tag) {
            (true, tag::STRING_CHUNK) | (false, tag::BINARY_CHUNK) => (self.cur.u16().ok()?, false),
            (true, tag::STRING_FINAL) | (false, tag::BINARY_FINAL) => (self.cur.u16().ok()?, true),
            (true, 0x00..=0x1f) => (usize::from(tag), true),
            (true, 0x30..=0x33) => (
                short_len(tag, tag::STRING_SHORT, self.cur.byte("").ok()?),
                true,
            ),
            (false, 0x20..=0x2f) => (usize::from(tag - tag::BINARY_DIRECT), true),
            (false, 0x34..=0x37) => (
                short_len(tag, tag::BINARY_SHORT, self.cur.byte("").ok()?),
                true,
            ),
            _ => return None,
        };
        self.done = last;
        let data = if self.string {
            self.cur.utf8_span(len, offset)
        } else {
            self.cur.take(len, "binary", offset)
        };
        data.ok()
    }
}

fn short_len(tag: u8, base: u8, low: u8) -> usize {
    (usize::from(tag.wrapping_sub(base)) << 8) | usize::from(low)
}

/// A byte cursor: bounds-checked reads, UTF-16-counted string spans.
#[derive(Clone, Debug)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

// === impl Cursor ===

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], pos: usize) -> Cursor<'a> {
        Cursor {
            buf,
            pos: pos.min(buf.len()),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    #[inline]
    fn byte(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let b = self.peek().ok_or(DecodeError::Truncated {
            what,
            offset: self.pos,
        })?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn take(
        &mut self,
        len: usize,
        what: &'static str,
        offset: usize,
    ) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(len);
        let data = end
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or(DecodeError::Truncated { what, offset })?;
        self.pos += len;
        Ok(data)
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let offset = self.pos.saturating_sub(1);
        let data = self.take(N, what, offset)?;
        let mut out = [0; N];
        out.copy_from_slice(data);
        Ok(out)
    }

    #[inline]
    fn u16(&mut self) -> Result<usize, DecodeError> {
        Ok(usize::from(u16::from_be_bytes(self.array("length")?)))
    }

    /// Consumes `units` UTF-16 units of (modified) UTF-8 and returns their bytes.
    #[inline]
    fn utf8_span(&mut self, units: usize, offset: usize) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        // Fast path: all ASCII, one byte per unit (routing fields and most attachments).
        if let Some(data) = start
            .checked_add(units)
            .and_then(|end| self.buf.get(start..end))
        {
            if data.is_ascii() {
                self.pos += units;
                return Ok(data);
            }
        }
        self.utf8_span_slow(units, offset)
    }

    #[cold]
    #[inline(never)]
    fn utf8_span_slow(&mut self, units: usize, offset: usize) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let truncated = DecodeError::Truncated {
            what: "string",
            offset,
        };
        let mut pos = start;
        let mut left = units;
        while left > 0 {
            let lead = *self.buf.get(pos).ok_or(truncated.clone())?;
            let (extra, taken) = match lead {
                0x00..=0x7f => (0, 1),
                0xc0..=0xdf => (1, 1),
                0xe0..=0xef => (2, 1),
                0xf0..=0xf7 => (3, 2),
                _ => {
                    return Err(DecodeError::BadUtf8 {
                        offset: pos,
                        byte: lead,
                    })
                }
            };
            if taken > left {
                return Err(DecodeError::BadUtf8 {
                    offset: pos,
                    byte: lead,
                });
            }
            for i in 1..=extra {
                let at = pos + i;
                let b = *self.buf.get(at).ok_or(truncated.clone())?;
                if b & 0xc0 != 0x80 {
                    return Err(DecodeError::BadUtf8 {
                        offset: at,
                        byte: b,
                    });
                }
            }
            pos += 1 + extra;
            left -= taken;
        }
        let data = self.buf.get(start..pos).ok_or(truncated)?;
        self.pos = pos;
        Ok(data)
    }
}

/// Reads a Hessian2 stream: scalars in place, everything else skipped. Keeps the stream's class
/// definitions and type-name count, which later values refer to, so read a stream's values in
/// order with one reader.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    cur: Cursor<'a>,
    /// Field counts of the first [`CLASS_FIELDS_INLINE`] class definitions; the rest (up to
    /// [`CLASS_DEFS_MAX`]) in `class_fields_more`. A reader is made per request, so it must be
    /// cheap to make: a 256-entry array was zeroed for every request (callgrind: ~50
    /// instructions of a ~5,500-instruction Dubbo request) though a request defines a
    /// handful of classes at most, and a `Vec` that stays empty does not allocate.
    class_fields: [u16; CLASS_FIELDS_INLINE],
    class_fields_more: Vec<u16>,
    class_defs: usize,
    types: u32,
}

// === impl Reader ===

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader::with_position(buf, 0)
    }

    /// A reader starting at `pos` (clamped to the end), with no class definitions or types. Offsets
    /// in errors stay relative to `buf`.
    pub fn with_position(buf: &'a [u8], pos: usize) -> Reader<'a> {
        Reader {
            cur: Cursor::new(buf, pos),
            class_fields: [0; CLASS_FIELDS_INLINE],
            class_fields_more: Vec::new(),
            class_defs: 0,
            types: 0,
        }
    }

    pub fn position(&self) -> usize {
        self.cur.pos
    }

    pub fn remaining(&self) -> usize {
        self.cur.remaining()
    }

    pub fn is_empty(&self) -> bool {
        self.cur.remaining() == 0
    }

    /// The next tag byte, not consumed.
    pub fn peek(&self) -> Option<u8> {
        self.cur.peek()
    }

    /// Class definitions seen so far.
    pub fn class_defs(&self) -> usize {
        self.class_defs
    }

    /// Type names seen so far (lists and typed maps refer back to them).
    pub fn types(&self) -> u32 {
        self.types
    }

    /// Skips one value of any type.
    #[inline]
    pub fn skip_value(&mut self) -> Result<(), DecodeError> {
        self.read_value().map(|_| ())
    }

    /// Reads one value: scalars are returned in place, lists, maps and objects are skipped.
    /// Always inlined (its fast paths are small, the full grammar is out of line): as a call
    /// it cost ~100 instructions a string in a request's attachments (callgrind).
    #[inline(always)]
    pub fn read_value(&mut self) -> Result<Scalar<'a>, DecodeError> {
        // Inline fast path for the short strings and small ints that make up most of a request's
        // preamble and attachments; everything else takes the full grammar in `value`.
        match self.cur.peek() {
            Some(tag @ 0x00..=0x1f) => {
                let offset = self.cur.pos;
                self.cur.pos += 1;
                self.cur
                    .utf8_span(usize::from(tag), offset)
                    .map(Scalar::Str)
            }
            Some(tag @ 0x80..=0xbf) => {
                self.cur.pos += 1;
                Ok(Scalar::Int(i32::from(tag) - i32::from(tag::INT_ZERO)))
            }
            // Strings of 32 to 1023 units (an interface name, a `traceparent`): the call
            // into `value` cost ~100 instructions more a string (callgrind).
            Some(tag @ 0x30..=0x33) => {
                let offset = self.cur.pos;
                let Some(&low) = self.cur.buf.get(offset + 1) else {
                    return self.value(0);
                };
                self.cur.pos += 2;
                self.cur
                    .utf8_span(short_len(tag, tag::STRING_SHORT, low), offset)
                    .map(Scalar::Str)
            }
            _ => self.value(0),
        }
    }

    /// Consumes the start of a map ('H', or 'M' and its type), whose entries follow as key,
    /// value pairs until [`Reader::read_end`] returns true.
    pub fn read_map_begin(&mut self) -> Result<(), DecodeError> {
        let offset = self.cur.pos;
        match self.cur.byte("map")? {
            tag::MAP_UNTYPED => Ok(()),
            tag::MAP_TYPED => self.type_name(),
            tag => Err(DecodeError::UnexpectedTag {
                what: "map",
                tag,
                offset,
            }),
        }
    }

    /// Consumes the end marker 'Z' of a map or variable list, if it is next.
    pub fn read_end(&mut self) -> bool {
        if self.cur.peek() == Some(tag::END) {
            self.cur.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Scalar<'a>, DecodeError> {
        loop {
            let offset = self.cur.pos;
            let tag = self.cur.byte("value")?;
            let value = match tag {
                0x00..=0x1f | 0x30..=0x33 | tag::STRING_CHUNK | tag::STRING_FINAL => {
                    self.string(tag, offset)?
                }
                0x20..=0x2f | 0x34..=0x37 | tag::BINARY_CHUNK | tag::BINARY_FINAL => {
                    self.binary(tag, offset)?
                }
                0x38..=0x3f => {
                    let [b1, b0] = self.cur.array("long")?;
                    let high = i64::from(tag) - i64::from(tag::LONG_SHORT_ZERO);
                    Scalar::Long((high << 16) + (i64::from(b1) << 8) + i64::from(b0))
                }
                tag::CLASS_DEF => {
                    // `class-def value`: the definition prefixes the value that uses it.
                    self.class_def(offset)?;
                    continue;
                }
                tag::DOUBLE => Scalar::Double(f64::from_be_bytes(self.cur.array("double")?)),
                tag::FALSE => Scalar::Bool(false),
                tag::TRUE => Scalar::Bool(true),
                tag::NULL => Scalar::Null,
                tag::MAP_UNTYPED => {
                    self.entries_until_end(deeper(depth, offset)?, 2)?;
                    Scalar::Composite
                }
                tag::MAP_TYPED => {
                    self.type_name()?;
                    self.entries_until_end(deeper(depth, offset)?, 2)?;
                    Scalar::Composite
                }
                tag::INT => Scalar::Int(i32::from_be_bytes(self.cur.array("int")?)),
                tag::DATE_MS => Scalar::DateMs(i64::from_be_bytes(self.cur.array("date")?)),
                tag::DATE_MINUTES => {
                    let minutes = i32::from_be_bytes(self.cur.array("date")?);
                    Scalar::DateMs(i64::from(minutes) * 60_000)
                }
                tag::LONG => Scalar::Long(i64::from_be_bytes(self.cur.array("long")?)),
                tag::OBJECT => {
                    let index = self.int("object definition index")?;
                    self.object(i64::from(index), deeper(depth, offset)?, offset)?
                }
                0x60..=0x6f => {
                    let index = i64::from(tag - tag::OBJECT_DIRECT);
                    self.object(index, deeper(depth, offset)?, offset)?
                }
                tag::REF => {
                    self.int("reference")?;
                    Scalar::Composite
                }
                tag::LIST_VAR_TYPED => {
                    self.type_name()?;
                    self.entries_until_end(deeper(depth, offset)?, 1)?;
                    Scalar::Composite
                }
                tag::LIST_FIXED_TYPED => {
                    self.type_name()?;
                    let len = self.int("list length")?;
                    self.values(i64::from(len), deeper(depth, offset)?, "list", offset)?
                }
                tag::LIST_VAR_UNTYPED => {
                    self.entries_until_end(deeper(depth, offset)?, 1)?;
                    Scalar::Composite
                }
                tag::LIST_FIXED_UNTYPED => {
                    let len = self.int("list length")?;
                    self.values(i64::from(len), deeper(depth, offset)?, "list", offset)?
                }
                0x70..=0x77 => {
                    self.type_name()?;
                    let len = i64::from(tag - tag::LIST_DIRECT_TYPED);
                    self.values(len, deeper(depth, offset)?, "list", offset)?
                }
                0x78..=0x7f => {
                    let len = i64::from(tag - tag::LIST_DIRECT_UNTYPED);
                    self.values(len, deeper(depth, offset)?, "list", offset)?
                }
                tag::LONG_INT => {
                    Scalar::Long(i64::from(i32::from_be_bytes(self.cur.array("long")?)))
                }
                tag::DOUBLE_ZERO => Scalar::Double(0.0),
                tag::DOUBLE_ONE => Scalar::Double(1.0),
                tag::DOUBLE_BYTE => {
                    Scalar::Double(f64::from(i8::from_be_bytes(self.cur.array("double")?)))
                }
                tag::DOUBLE_SHORT => {
                    Scalar::Double(f64::from(i16::from_be_bytes(self.cur.array("double")?)))
                }
                tag::DOUBLE_MILL => {
                    // Java's Hessian2Output (and Dubbo's hessian-lite) send thousandths as an
                    // int here; the spec's text calls it a float. Same size either way.
                    let mills = i32::from_be_bytes(self.cur.array("double")?);
                    Scalar::Double(f64::from(mills) * 0.001)
                }
                0x80..=0xd7 => Scalar::Int(self.int_after(tag)?),
                0xd8..=0xef => Scalar::Long(i64::from(tag) - i64::from(tag::LONG_ZERO)),
                0xf0..=0xff => {
                    let [b0] = self.cur.array("long")?;
                    let high = i64::from(tag) - i64::from(tag::LONG_BYTE_ZERO);
                    Scalar::Long((high << 8) + i64::from(b0))
                }
                // 0x40, 0x45, 0x47, 0x50 are reserved; 'Z' only ends a list or map.
                _ => {
                    return Err(DecodeError::UnexpectedTag {
                        what: "value",
                        tag,
                        offset,
                    })
                }
            };
            return Ok(value);
        }
    }

    /// The `int` production: compact forms or 'I'.
    fn int(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let offset = self.cur.pos;
        let tag = self.cur.byte(what)?;
        match tag {
            0x80..=0xd7 | tag::INT => self.int_after(tag),
            _ => Err(DecodeError::UnexpectedTag { what, tag, offset }),
        }
    }

    fn int_after(&mut self, tag: u8) -> Result<i32, DecodeError> {
        Ok(match tag {
            0x80..=0xbf => i32::from(tag) - i32::from(tag::INT_ZERO),
            0xc0..=0xcf => {
                let [b0] = self.cur.array("int")?;
                ((i32::from(tag) - i32::from(tag::INT_BYTE_ZERO)) << 8) + i32::from(b0)
            }
            0xd0..=0xd7 => {
                let [b1, b0] = self.cur.array("int")?;
                ((i32::from(tag) - i32::from(tag::INT_SHORT_ZERO)) << 16)
                    + (i32::from(b1) << 8)
                    + i32::from(b0)
            }
            _ => i32::from_be_bytes(self.cur.array("int")?),
        })
    }

    #[inline]
    fn string(&mut self, tag: u8, offset: usize) -> Result<Scalar<'a>, DecodeError> {
        let units = match tag {
            0x00..=0x1f => usize::from(tag),
            0x30..=0x33 => short_len(tag, tag::STRING_SHORT, self.cur.byte("string")?),
            tag::STRING_FINAL => self.cur.u16()?,
            tag::STRING_CHUNK => return self.chunks(true, offset).map(Scalar::StrChunked),
            _ => {
                return Err(DecodeError::UnexpectedTag {
                    what: "string",
                    tag,
                    offset,
                })
            }
        };
        self.cur.utf8_span(units, offset).map(Scalar::Str)
    }

    fn binary(&mut self, tag: u8, offset: usize) -> Result<Scalar<'a>, DecodeError> {
        let len = match tag {
            0x20..=0x2f => usize::from(tag - tag::BINARY_DIRECT),
            0x34..=0x37 => short_len(tag, tag::BINARY_SHORT, self.cur.byte("binary")?),
            tag::BINARY_FINAL => self.cur.u16()?,
            tag::BINARY_CHUNK => return self.chunks(false, offset).map(Scalar::BinaryChunked),
            _ => {
                return Err(DecodeError::UnexpectedTag {
                    what: "binary",
                    tag,
                    offset,
                })
            }
        };
        self.cur.take(len, "binary", offset).map(Scalar::Binary)
    }

    /// After a non-final chunk tag at `start`: chunks until a final one (spec §3.10, §3.2:
    /// the final chunk may use any non-chunked form).
    fn chunks(&mut self, string: bool, start: usize) -> Result<Chunks<'a>, DecodeError> {
        let what = if string { "string" } else { "binary" };
        loop {
            let len = self.cur.u16()?;
            if string {
                self.cur.utf8_span(len, start)?;
            } else {
                self.cur.take(len, what, start)?;
            }
            let offset = self.cur.pos;
            let tag = self.cur.byte(what)?;
            let last = match (string, tag) {
                (true, tag::STRING_CHUNK) | (false, tag::BINARY_CHUNK) => continue,
                (true, 0x00..=0x1f | 0x30..=0x33 | tag::STRING_FINAL) => self.string(tag, offset),
                (false, 0x20..=0x2f | 0x34..=0x37 | tag::BINARY_FINAL) => self.binary(tag, offset),
                _ => Err(DecodeError::UnexpectedTag { what, tag, offset }),
            };
            last?;
            let raw = self
                .cur
                .buf
                .get(start..self.cur.pos)
                .ok_or(DecodeError::Truncated { what, offset })?;
            return Ok(Chunks { raw, string });
        }
    }

    /// The `type` production of lists and typed maps: a new type name (string) or a reference
    /// to an earlier one (int).
    fn type_name(&mut self) -> Result<(), DecodeError> {
        let offset = self.cur.pos;
        let tag = self.cur.byte("type")?;
        match tag {
            0x00..=0x1f | 0x30..=0x33 | tag::STRING_CHUNK | tag::STRING_FINAL => {
                self.string(tag, offset)?;
                self.types = self.types.saturating_add(1);
                Ok(())
            }
            0x80..=0xd7 | tag::INT => {
                let index = self.int_after(tag)?;
                if u32::try_from(index).map_or(true, |i| i >= self.types) {
                    return Err(DecodeError::UnknownTypeRef {
                        offset,
                        index: i64::from(index),
                        defined: self.types,
                    });
                }
                Ok(())
            }
            _ => Err(DecodeError::UnexpectedTag {
                what: "type",
                tag,
                offset,
            }),
        }
    }

    /// `class-def ::= 'C' string int string*` (spec §3.7).
    fn class_def(&mut self, offset: usize) -> Result<(), DecodeError> {
        if self.class_defs >= CLASS_DEFS_MAX {
            return Err(DecodeError::TooManyClassDefs {
                offset,
                limit: CLASS_DEFS_MAX,
            });
        }
        self.expect_string("class name")?;
        let count = self.int("class field count")?;
        let limit = self.cur.remaining().min(CLASS_FIELDS_MAX);
        let fields = match usize::try_from(count) {
            Ok(n) if n <= limit => n,
            _ => {
                return Err(DecodeError::BadLength {
                    what: "class field count",
                    offset,
                    len: i64::from(count),
                    limit,
                })
            }
        };
        for _ in 0..fields {
            self.expect_string("class field name")?;
        }
        let fields = u16::try_from(fields).unwrap_or(u16::MAX);
        match self.class_fields.get_mut(self.class_defs) {
            Some(slot) => *slot = fields,
            None => self.class_fields_more.push(fields),
        }
        self.class_defs += 1;
        Ok(())
    }

    fn expect_string(&mut self, what: &'static str) -> Result<(), DecodeError> {
        let offset = self.cur.pos;
        let tag = self.cur.byte(what)?;
        match tag {
            0x00..=0x1f | 0x30..=0x33 | tag::STRING_CHUNK | tag::STRING_FINAL => {
                self.string(tag, offset).map(|_| ())
            }
            _ => Err(DecodeError::UnexpectedTag { what, tag, offset }),
        }
    }

    fn object(
        &mut self,
        index: i64,
        depth: usize,
        offset: usize,
    ) -> Result<Scalar<'a>, DecodeError> {
        let fields = usize::try_from(index)
            .ok()
            .filter(|&i| i < self.class_defs)
            .and_then(|i| {
                self.class_fields
                    .get(i)
                    .or_else(|| self.class_fields_more.get(i - CLASS_FIELDS_INLINE))
            })
            .ok_or(DecodeError::UnknownClassDef {
                offset,
                index,
                defined: self.class_defs,
            })?;
        self.values(i64::from(*fields), depth, "object", offset)
    }

    /// `count` values (of a fixed list or an object).
    fn values(
        &mut self,
        count: i64,
        depth: usize,
        what: &'static str,
        offset: usize,
    ) -> Result<Scalar<'a>, DecodeError> {
        // Every value takes at least one byte, so a longer count is a lie we need not loop on.
        let limit = self.cur.remaining();
        let count = match usize::try_from(count) {
            Ok(n) if n <= limit => n,
            _ => {
                return Err(DecodeError::BadLength {
                    what,
                    offset,
                    len: count,
                    limit,
                })
            }
        };
        for _ in 0..count {
            self.value(depth)?;
        }
        Ok(Scalar::Composite)
    }

    /// Groups of `per_entry` values until 'Z' (variable lists: 1, maps: 2).
    fn entries_until_end(&mut self, depth: usize, per_entry: usize) -> Result<(), DecodeError> {
        while !self.read_end() {
            for _ in 0..per_entry {
                self.value(depth)?;
            }
        }
        Ok(())
    }
}

fn deeper(depth: usize, offset: usize) -> Result<usize, DecodeError> {
    if depth >= NESTING_DEPTH_MAX {
        return Err(DecodeError::NestingTooDeep {
            offset,
            limit: NESTING_DEPTH_MAX,
        });
    }
    Ok(depth + 1)
}

/// Skips the first value of `buf` (with no earlier class definitions or types) and returns its
/// length in bytes.
pub fn skip_value(buf: &[u8]) -> Result<usize, DecodeError> {
    let mut reader = Reader::new(buf);
    reader.skip_value()?;
    Ok(reader.position())
}

/// The value's bytes as `&str`, when they are valid UTF-8 (CESU-8 surrogates from Java are not).
pub fn to_str(bytes: &[u8]) -> Option<&str> {
    core::str::from_utf8(bytes).ok()
}
