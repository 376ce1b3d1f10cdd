//! A small Hessian2 writer: the values ringside itself sends (local replies, heartbeats) and what
//! tests and the load generator need to build requests. Emits the most compact form of each
//! value, as Java's `Hessian2Output` does, so frames look like a Java peer's. Never panics; the
//! only limit is the chunk size ([`CHUNK_MAX`]) for long strings and binary data.

use bytes::BufMut;

use super::{tag, CHUNK_MAX};

/// Appends Hessian2 values to a buffer. Composite values are written as a `*_begin` call, the
/// elements, and [`Writer::end`] for the variable-length forms.
#[derive(Debug)]
pub struct Writer<B> {
    out: B,
}

// === impl Writer ===

impl<B: BufMut> Writer<B> {
    pub fn new(out: B) -> Writer<B> {
        Writer { out }
    }

    pub fn into_inner(self) -> B {
        self.out
    }

    pub fn get_mut(&mut self) -> &mut B {
        &mut self.out
    }

    /// Appends bytes that are already Hessian2.
    pub fn raw(&mut self, encoded: &[u8]) -> &mut Self {
        self.out.put_slice(encoded);
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.out.put_u8(tag::NULL);
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.out.put_u8(if value { tag::TRUE } else { tag::FALSE });
        self
    }

    pub fn int(&mut self, value: i32) -> &mut Self {
        match value {
            -0x10..=0x2f => self.out.put_u8((value + i32::from(tag::INT_ZERO)) as u8),
            -0x800..=0x7ff => {
                self.out
                    .put_u8(((value >> 8) + i32::from(tag::INT_BYTE_ZERO)) as u8);
                self.out.put_u8(value as u8);
            }
            -0x40000..=0x3ffff => {
                self.out
                    .put_u8(((value >> 16) + i32::from(tag::INT_SHORT_ZERO)) as u8);
                self.out.put_u16(value as u16);
            }
            _ => {
                self.out.put_u8(tag::INT);
                self.out.put_i32(value);
            }
        }
        self
    }

    pub fn long(&mut self, value: i64) -> &mut Self {
        match value {
            -0x8..=0xf => self.out.put_u8((value + i64::from(tag::LONG_ZERO)) as u8),
            -0x800..=0x7ff => {
                self.out
                    .put_u8(((value >> 8) + i64::from(tag::LONG_BYTE_ZERO)) as u8);
                self.out.put_u8(value as u8);
            }
            -0x40000..=0x3ffff => {
                self.out
                    .put_u8(((value >> 16) + i64::from(tag::LONG_SHORT_ZERO)) as u8);
                self.out.put_u16(value as u16);
            }
            v if i32::try_from(v).is_ok() => {
                self.out.put_u8(tag::LONG_INT);
                self.out.put_i32(v as i32);
            }
            _ => {
                self.out.put_u8(tag::LONG);
                self.out.put_i64(value);
            }
        }
        self
    }

    pub fn double(&mut self, value: f64) -> &mut Self {
        let whole = value.fract() == 0.0 && !(value == 0.0 && value.is_sign_negative());
        if whole && value == 0.0 {
            self.out.put_u8(tag::DOUBLE_ZERO);
        } else if whole && value == 1.0 {
            self.out.put_u8(tag::DOUBLE_ONE);
        } else if whole && (-128.0..=127.0).contains(&value) {
            self.out.put_u8(tag::DOUBLE_BYTE);
            self.out.put_i8(value as i8);
        } else if whole && (-32768.0..=32767.0).contains(&value) {
            self.out.put_u8(tag::DOUBLE_SHORT);
            self.out.put_i16(value as i16);
        } else {
            self.out.put_u8(tag::DOUBLE);
            self.out.put_f64(value);
        }
        self
    }

    /// A date as milliseconds since the Unix epoch.
    pub fn date_ms(&mut self, ms: i64) -> &mut Self {
        self.out.put_u8(tag::DATE_MS);
        self.out.put_i64(ms);
        self
    }

    /// A string, its length counted in UTF-16 units and characters beyond U+FFFF written as two
    /// 3-byte surrogates, as Java peers expect. Chunked above [`CHUNK_MAX`] units.
    pub fn string(&mut self, value: &str) -> &mut Self {
        let mut rest = value;
        loop {
            let (units, split) = chunk_split(rest);
            let (chunk, tail) = rest.split_at(split);
            if tail.is_empty() {
                self.string_final_header(units);
                self.put_cesu8(chunk);
                return self;
            }
            self.out.put_u8(tag::STRING_CHUNK);
            self.out.put_u16(units as u16);
            self.put_cesu8(chunk);
            rest = tail;
        }
    }

    fn string_final_header(&mut self, units: usize) {
        if units <= 0x1f {
            self.out.put_u8(units as u8);
        } else if units <= 0x3ff {
            self.out.put_u8(tag::STRING_SHORT + (units >> 8) as u8);
            self.out.put_u8(units as u8);
        } else {
            self.out.put_u8(tag::STRING_FINAL);
            self.out.put_u16(units as u16);
        }
    }

    fn put_cesu8(&mut self, s: &str) {
        if s.is_ascii() {
            self.out.put_slice(s.as_bytes());
            return;
        }
        for c in s.chars() {
            if u32::from(c) <= 0xffff {
                let mut buf = [0; 4];
                self.out.put_slice(c.encode_utf8(&mut buf).as_bytes());
            } else {
                let mut units = [0; 2];
                for &u in c.encode_utf16(&mut units).iter() {
                    self.out.put_u8(0xe0 | (u >> 12) as u8);
                    self.out.put_u8(0x80 | ((u >> 6) & 0x3f) as u8);
                    self.out.put_u8(0x80 | (u & 0x3f) as u8);
                }
            }
        }
    }

    /// Binary data, chunked above [`CHUNK_MAX`] bytes.
    pub fn binary(&mut self, value: &[u8]) -> &mut Self {
        let mut rest = value;
        while rest.len() > CHUNK_MAX {
            let (chunk, tail) = rest.split_at(CHUNK_MAX);
            self.out.put_u8(tag::BINARY_CHUNK);
            self.out.put_u16(CHUNK_MAX as u16);
            self.out.put_slice(chunk);
            rest = tail;
        }
        let len = rest.len();
        if len <= 0xf {
            self.out.put_u8(tag::BINARY_DIRECT + len as u8);
        } else if len <= 0x3ff {
            self.out.put_u8(tag::BINARY_SHORT + (len >> 8) as u8);
            self.out.put_u8(len as u8);
        } else {
            self.out.put_u8(tag::BINARY_FINAL);
            self.out.put_u16(len as u16);
        }
        self.out.put_slice(rest);
        self
    }

    /// An untyped list of `len` values, which follow (no end marker).
    pub fn list_begin(&mut self, len: usize) -> &mut Self {
        if len <= 7 {
            self.out.put_u8(tag::LIST_DIRECT_UNTYPED + len as u8);
        } else {
            self.out.put_u8(tag::LIST_FIXED_UNTYPED);
            self.int(len_i32(len));
        }
        self
    }

    /// A typed list of `len` values, e.g. `"[string"` or `"java.util.ArrayList"`.
    pub fn list_typed_begin(&mut self, type_name: &str, len: usize) -> &mut Self {
        if len <= 7 {
            self.out.put_u8(tag::LIST_DIRECT_TYPED + len as u8);
            self.string(type_name);
        } else {
            self.out.put_u8(tag::LIST_FIXED_TYPED);
            self.string(type_name);
            self.int(len_i32(len));
        }
        self
    }

    /// An untyped list of any number of values, closed by [`Writer::end`].
    pub fn list_variable_begin(&mut self) -> &mut Self {
        self.out.put_u8(tag::LIST_VAR_UNTYPED);
        self
    }

    /// An untyped map ('H'): key, value pairs closed by [`Writer::end`].
    pub fn map_begin(&mut self) -> &mut Self {
        self.out.put_u8(tag::MAP_UNTYPED);
        self
    }

    /// A typed map ('M'): key, value pairs closed by [`Writer::end`].
    pub fn map_typed_begin(&mut self, type_name: &str) -> &mut Self {
        self.out.put_u8(tag::MAP_TYPED);
        self.string(type_name);
        self
    }

    /// Ends a map or variable-length list.
    pub fn end(&mut self) -> &mut Self {
        self.out.put_u8(tag::END);
        self
    }

    /// A class definition; objects of it then refer to it by its index in the stream.
    pub fn class_def(&mut self, name: &str, fields: &[&str]) -> &mut Self {
        self.out.put_u8(tag::CLASS_DEF);
        self.string(name);
        self.int(len_i32(fields.len()));
        for field in fields {
            self.string(field);
        }
        self
    }

    /// An object of class definition `index`; its field values follow.
    pub fn object_begin(&mut self, index: usize) -> &mut Self {
        if index <= 0xf {
            self.out.put_u8(tag::OBJECT_DIRECT + index as u8);
        } else {
            self.out.put_u8(tag::OBJECT);
            self.int(len_i32(index));
        }
        self
    }

    /// A back-reference to the `index`th list, map or object of the stream.
    pub fn reference(&mut self, index: u32) -> &mut Self {
        self.out.put_u8(tag::REF);
        self.int(len_i32(index as usize));
        self
    }
}

fn len_i32(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// How many UTF-16 units and bytes of `s` fit in one chunk.
fn chunk_split(s: &str) -> (usize, usize) {
    if s.is_ascii() {
        let n = s.len().min(CHUNK_MAX);
        return (n, n);
    }
    let mut units = 0;
    for (index, c) in s.char_indices() {
        let n = c.len_utf16();
        if units + n > CHUNK_MAX {
            return (units, index);
        }
        units += n;
    }
    (units, s.len())
}
