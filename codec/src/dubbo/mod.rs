//! Dubbo2 framing: the 16-byte header (view [`Header`], parsed [`HeaderRepr`]) and incremental
//! frame decoding over a read buffer ([`decode_frame`]).
//!
//! ```text
//! 0      2       3        4                12              16
//! +------+-------+--------+----------------+---------------+----------------+
//! | dabb | flags | status | request id u64 | body len u32  | body ...       |
//! +------+-------+--------+----------------+---------------+----------------+
//! flags: 0x80 request, 0x40 two-way, 0x20 event, low 5 bits serialization id
//! ```
//!
//! Owns: header layout, frame boundaries, request-id patching and event recognition. The body
//! is read by [`request`] and [`response`] (Hessian2 only; any other serialization passes
//! through opaque) and written by [`encode`].
//!
//! No-panic contract: no function here panics on any input. Views are built only through
//! [`Header::new_checked`], which checks the length once, so accessors index safely after it.
//! Limits: a frame (header included) is at most the caller's `frame_bytes_max`
//! ([`FRAME_BYTES_MAX_DEFAULT`] by default), checked from the header before the body is
//! buffered.

use bytes::BytesMut;

pub use crate::error::DecodeError;

pub mod encode;
pub mod request;
pub mod response;

#[cfg(test)]
mod tests;

/// Byte ranges of the header fields.
pub mod field {
    pub type Field = core::ops::Range<usize>;

    pub const MAGIC: Field = 0..2;
    pub const FLAGS: usize = 2;
    pub const STATUS: usize = 3;
    pub const REQUEST_ID: Field = 4..12;
    pub const BODY_LEN: Field = 12..16;
}

/// Size of the Dubbo2 header.
pub const HEADER_BYTES: usize = field::BODY_LEN.end;
/// The two magic bytes every frame starts with.
pub const MAGIC: [u8; 2] = [0xda, 0xbb];
/// Default largest frame, header included: Dubbo's own default payload limit
/// (`payload = 8 * 1024 * 1024`).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 8 << 20;

const FLAG_REQUEST: u8 = 0x80;
const FLAG_TWO_WAY: u8 = 0x40;
const FLAG_EVENT: u8 = 0x20;
const SERIALIZATION_MASK: u8 = 0x1f;

enum_with_unknown! {
    /// The serialization id in the low 5 bits of the flags byte (Apache Dubbo's
    /// `Serialization.getContentTypeId()` values).
    pub enum Serialization(u8) {
        Hessian2 = 2,
        Java = 3,
        CompactedJava = 4,
        Fastjson = 6,
        NativeJava = 7,
        Kryo = 8,
        Fst = 9,
        Protostuff = 10,
        Avro = 11,
        Gson = 16,
        ProtobufJson = 21,
        Protobuf = 22,
        Fastjson2 = 23,
        Kryo2 = 25,
    }
}

enum_with_unknown! {
    /// The status byte of a response (requests carry 0).
    pub enum Status(u8) {
        Ok = 20,
        ClientTimeout = 30,
        ServerTimeout = 31,
        ChannelInactive = 35,
        BadRequest = 40,
        BadResponse = 50,
        ServiceNotFound = 60,
        ServiceError = 70,
        ServerError = 80,
        ClientError = 90,
        ServerThreadpoolExhausted = 100,
    }
}

/// The three flag bits of the flags byte (the serialization id is kept apart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    pub request: bool,
    pub two_way: bool,
    pub event: bool,
}

// === impl Flags ===

impl Flags {
    /// The flags of a header's flags byte (its serialization bits ignored).
    pub fn from_byte(byte: u8) -> Flags {
        Flags {
            request: byte & FLAG_REQUEST != 0,
            two_way: byte & FLAG_TWO_WAY != 0,
            event: byte & FLAG_EVENT != 0,
        }
    }

    fn to_byte(self) -> u8 {
        let mut byte = 0;
        if self.request {
            byte |= FLAG_REQUEST;
        }
        if self.two_way {
            byte |= FLAG_TWO_WAY;
        }
        if self.event {
            byte |= FLAG_EVENT;
        }
        byte
    }
}

/// A view of a Dubbo2 header over a buffer of at least [`HEADER_BYTES`].
#[derive(Clone, Debug)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

// === impl Header ===

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps `buffer` after checking it holds a whole header. Fields are not validated (see
    /// [`HeaderRepr::parse`]).
    pub fn new_checked(buffer: T) -> Result<Header<T>, DecodeError> {
        let len = buffer.as_ref().len();
        if len < HEADER_BYTES {
            return Err(DecodeError::HeaderTruncated { len });
        }
        Ok(Header { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn bytes(&self) -> &[u8; HEADER_BYTES] {
        // new_checked guarantees the length, so the fallback never runs.
        self.buffer
            .as_ref()
            .get(..HEADER_BYTES)
            .and_then(|b| b.try_into().ok())
            .unwrap_or(&[0; HEADER_BYTES])
    }

    pub fn magic(&self) -> [u8; 2] {
        let b = self.bytes();
        [b[field::MAGIC.start], b[field::MAGIC.start + 1]]
    }

    pub fn flags(&self) -> Flags {
        Flags::from_byte(self.bytes()[field::FLAGS])
    }

    pub fn serialization(&self) -> Serialization {
        Serialization::from(self.bytes()[field::FLAGS] & SERIALIZATION_MASK)
    }

    pub fn status(&self) -> Status {
        Status::from(self.bytes()[field::STATUS])
    }

    pub fn request_id(&self) -> u64 {
        let mut raw = [0; 8];
        raw.copy_from_slice(&self.bytes()[field::REQUEST_ID]);
        u64::from_be_bytes(raw)
    }

    pub fn body_bytes(&self) -> u32 {
        let mut raw = [0; 4];
        raw.copy_from_slice(&self.bytes()[field::BODY_LEN]);
        u32::from_be_bytes(raw)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn put(&mut self, range: core::ops::Range<usize>, value: &[u8]) {
        // new_checked guarantees HEADER_BYTES, and every field range lies inside the header.
        if let Some(dst) = self.buffer.as_mut().get_mut(range) {
            dst.copy_from_slice(value);
        }
    }

    pub fn set_magic(&mut self) {
        self.put(field::MAGIC, &MAGIC);
    }

    pub fn set_flags(&mut self, flags: Flags, serialization: Serialization) {
        let byte = flags.to_byte() | (u8::from(serialization) & SERIALIZATION_MASK);
        self.put(field::FLAGS..field::FLAGS + 1, &[byte]);
    }

    pub fn set_status(&mut self, status: Status) {
        self.put(field::STATUS..field::STATUS + 1, &[u8::from(status)]);
    }

    pub fn set_request_id(&mut self, id: u64) {
        self.put(field::REQUEST_ID, &id.to_be_bytes());
    }

    pub fn set_body_bytes(&mut self, len: u32) {
        self.put(field::BODY_LEN, &len.to_be_bytes());
    }
}

/// The parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeaderRepr {
    pub flags: Flags,
    /// Low 5 bits on the wire: an `Unknown` value above 31 is masked on emit.
    pub serialization: Serialization,
    /// Meaningful on responses; requests send 0.
    pub status: Status,
    pub request_id: u64,
    pub body_bytes: u32,
}

// === impl HeaderRepr ===

impl HeaderRepr {
    /// Validates the magic and reads every field.
    pub fn parse<T: AsRef<[u8]>>(header: &Header<T>) -> Result<HeaderRepr, DecodeError> {
        let magic = header.magic();
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { seen: magic });
        }
        Ok(HeaderRepr {
            flags: header.flags(),
            serialization: header.serialization(),
            status: header.status(),
            request_id: header.request_id(),
            body_bytes: header.body_bytes(),
        })
    }

    /// Bytes [`HeaderRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_BYTES
    }

    /// The whole frame's size, header included.
    pub const fn frame_bytes(&self) -> u64 {
        HEADER_BYTES as u64 + self.body_bytes as u64
    }

    /// Writes all [`HEADER_BYTES`] bytes of the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut Header<T>) {
        header.set_magic();
        header.set_flags(self.flags, self.serialization);
        header.set_status(self.status);
        header.set_request_id(self.request_id);
        header.set_body_bytes(self.body_bytes);
    }

    /// The header as an array, for writers that build frames by appending.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut header = Header {
            buffer: [0u8; HEADER_BYTES],
        };
        self.emit(&mut header);
        header.buffer
    }
}

/// A whole frame split off the read buffer, header included. `bytes` stays mutable so the proxy
/// can patch the request id in place ([`set_request_id`]) before forwarding it unchanged.
#[derive(Debug)]
pub struct Frame {
    pub header: HeaderRepr,
    pub bytes: BytesMut,
}

// === impl Frame ===

impl Frame {
    /// The body, after the header.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_BYTES..).unwrap_or(&[])
    }
}

/// What [`decode_frame`] found in the buffer.
#[derive(Debug)]
pub enum Decoded {
    /// A whole frame, split off the front of the buffer.
    Frame(Frame),
    /// The buffer holds part of a frame: at least this many more bytes are needed. Once the
    /// header is buffered this is the exact shortfall of the frame; before, that of the header.
    NeedMore(usize),
}

/// Splits the next whole frame off the front of `buf`, or says how many more bytes it needs.
///
/// Rejects a bad magic as soon as its first byte is buffered, and a frame larger than
/// `frame_bytes_max` (header included) as soon as the header is, so a hostile peer cannot make
/// the caller buffer a huge body. On error `buf` is left as it was; the stream cannot resync.
pub fn decode_frame(buf: &mut BytesMut, frame_bytes_max: usize) -> Result<Decoded, DecodeError> {
    let Some(head) = buf.get(..HEADER_BYTES) else {
        let seen = [
            buf.first().copied().unwrap_or(MAGIC[0]),
            buf.get(1).copied().unwrap_or(MAGIC[1]),
        ];
        if seen != MAGIC {
            return Err(DecodeError::BadMagic { seen });
        }
        return Ok(Decoded::NeedMore(HEADER_BYTES - buf.len()));
    };
    let header = HeaderRepr::parse(&Header::new_checked(head)?)?;
    let frame_bytes = header.frame_bytes();
    let frame_len = match usize::try_from(frame_bytes) {
        Ok(len) if len <= frame_bytes_max => len,
        _ => {
            return Err(DecodeError::FrameTooLarge {
                request_id: header.request_id,
                frame_bytes,
                frame_bytes_max,
            })
        }
    };
    if buf.len() < frame_len {
        return Ok(Decoded::NeedMore(frame_len - buf.len()));
    }
    Ok(Decoded::Frame(Frame {
        header,
        bytes: buf.split_to(frame_len),
    }))
}

/// Patches the request id of a frame in place (the proxy renumbers requests per upstream
/// connection). Returns false, changing nothing, if `frame` is shorter than a header.
pub fn set_request_id(frame: &mut [u8], id: u64) -> bool {
    match frame.get_mut(field::REQUEST_ID) {
        Some(dst) => {
            dst.copy_from_slice(&id.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Apache Dubbo's `Request.READONLY_EVENT`: the event a provider sends when it goes read-only
/// (shutting down) so consumers stop sending to it.
pub const READONLY_EVENT: &[u8] = b"R";

/// Apache Dubbo's `MOCK_HEARTBEAT_EVENT`: heartbeat data for serializations that cannot write
/// null; accepted from Hessian2 peers too.
pub const MOCK_HEARTBEAT_EVENT: &[u8] = b"H";
/// Apache Dubbo 3's `WRITEABLE_EVENT`: a provider that went read-only takes requests again.
pub const WRITEABLE_EVENT: &[u8] = b"W";

/// What an event frame announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventRepr {
    /// A heartbeat (request or response): Hessian2 null body (or the mock heartbeat "H"), or an
    /// empty body.
    Heartbeat,
    /// A provider going read-only: body is the Hessian2 string "R".
    ReadOnly,
    /// A read-only provider taking requests again (Dubbo 3): body is the string "W".
    Writeable,
    /// Any other event, or an event in a serialization other than Hessian2.
    Other,
}

// === impl EventRepr ===

impl EventRepr {
    /// Classifies an event frame from its header and body. Returns `None` if the header has
    /// no event flag.
    pub fn parse(header: &HeaderRepr, body: &[u8]) -> Option<EventRepr> {
        if !header.flags.event {
            return None;
        }
        if header.serialization != Serialization::Hessian2 {
            return Some(if body.is_empty() {
                EventRepr::Heartbeat
            } else {
                EventRepr::Other
            });
        }
        let mut reader = crate::hessian2::Reader::new(body);
        Some(match reader.read_value() {
            _ if body.is_empty() => EventRepr::Heartbeat,
            Ok(crate::hessian2::Scalar::Null) => EventRepr::Heartbeat,
            Ok(crate::hessian2::Scalar::Str(s)) if s == MOCK_HEARTBEAT_EVENT => {
                EventRepr::Heartbeat
            }
            Ok(crate::hessian2::Scalar::Str(s)) if s == READONLY_EVENT => EventRepr::ReadOnly,
            Ok(crate::hessian2::Scalar::Str(s)) if s == WRITEABLE_EVENT => EventRepr::Writeable,
            _ => EventRepr::Other,
        })
    }
}

/// Whether a whole frame is Dubbo's readonly event (a provider going away).
pub fn is_readonly_event(frame: &[u8]) -> bool {
    event_of(frame) == Some(EventRepr::ReadOnly)
}

/// Whether a whole frame is a heartbeat request or response.
pub fn is_heartbeat(frame: &[u8]) -> bool {
    event_of(frame) == Some(EventRepr::Heartbeat)
}

fn event_of(frame: &[u8]) -> Option<EventRepr> {
    let header = HeaderRepr::parse(&Header::new_checked(frame).ok()?).ok()?;
    let body = frame.get(HEADER_BYTES..)?;
    EventRepr::parse(&header, body)
}
