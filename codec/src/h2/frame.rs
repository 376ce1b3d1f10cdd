//! Frame headers, payload views and the encoders for the frames a proxy writes itself.

use bytes::BufMut;

/// The client connection preface (RFC 9113 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADER_BYTES: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value, and the smallest allowed.
pub const FRAME_BYTES_DEFAULT: u32 = 16_384;
/// SETTINGS_MAX_FRAME_SIZE's largest allowed value.
pub const FRAME_BYTES_LIMIT: u32 = (1 << 24) - 1;
/// The initial flow-control window of every stream and connection.
pub const WINDOW_DEFAULT: u32 = 65_535;
/// The largest flow-control window.
pub const WINDOW_LIMIT: u32 = (1 << 31) - 1;
/// The largest stream id.
pub const STREAM_ID_MAX: u32 = (1 << 31) - 1;

pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const INTERNAL_ERROR: u32 = 0x2;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// A frame's 9-byte header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// The reserved bit is dropped.
    pub stream: u32,
}

impl FrameHeader {
    /// Parses the first 9 bytes of `b`, or `None` when fewer are buffered.
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        let h: &[u8; HEADER_BYTES] = b.get(..HEADER_BYTES)?.try_into().ok()?;
        Some(FrameHeader {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & STREAM_ID_MAX,
        })
    }

    pub fn write(&self, out: &mut impl BufMut) {
        let l = self.len.to_be_bytes();
        out.put_slice(&[l[1], l[2], l[3], self.kind, self.flags]);
        out.put_u32(self.stream & STREAM_ID_MAX);
    }
}

/// A frame that breaks the protocol; what to do about it is the caller's (connection or stream
/// error) — `code` is the error code RFC 9113 names for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("http/2 {what} (error code {code:#x})")]
pub struct FrameError {
    pub code: u32,
    pub what: &'static str,
}

fn protocol(what: &'static str) -> FrameError {
    FrameError {
        code: code::PROTOCOL_ERROR,
        what,
    }
}

fn frame_size(what: &'static str) -> FrameError {
    FrameError {
        code: code::FRAME_SIZE_ERROR,
        what,
    }
}

/// The data of a DATA frame, without padding.
pub fn data_payload(flags: u8, payload: &[u8]) -> Result<&[u8], FrameError> {
    unpad(flags, payload)
}

fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], FrameError> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or_else(|| protocol("padded frame without pad length"))?;
    let keep = rest
        .len()
        .checked_sub(usize::from(pad))
        .ok_or_else(|| protocol("padding longer than the frame"))?;
    Ok(rest.split_at(keep).0)
}

/// The header block fragment of a HEADERS frame, without padding and priority fields.
pub fn headers_fragment(flags: u8, payload: &[u8]) -> Result<&[u8], FrameError> {
    let b = unpad(flags, payload)?;
    if flags & flag::PRIORITY != 0 {
        return b
            .get(5..)
            .ok_or_else(|| frame_size("HEADERS priority fields truncated"));
    }
    Ok(b)
}

/// The (id, value) pairs of a SETTINGS payload.
pub fn settings(payload: &[u8]) -> Result<impl Iterator<Item = (u16, u32)> + '_, FrameError> {
    if !payload.len().is_multiple_of(6) {
        return Err(frame_size("SETTINGS length not a multiple of 6"));
    }
    Ok(payload.chunks_exact(6).map(|c| {
        // chunks_exact: every chunk has 6 bytes.
        let [a, b, c0, c1, c2, c3] = <[u8; 6]>::try_from(c).unwrap_or_default();
        (
            u16::from_be_bytes([a, b]),
            u32::from_be_bytes([c0, c1, c2, c3]),
        )
    }))
}

/// The increment of a WINDOW_UPDATE frame (zero is the caller's error to raise).
pub fn window_update(payload: &[u8]) -> Result<u32, FrameError> {
    let b: [u8; 4] = payload
        .try_into()
        .map_err(|_| frame_size("WINDOW_UPDATE length is not 4"))?;
    Ok(u32::from_be_bytes(b) & WINDOW_LIMIT)
}

/// The error code of a RST_STREAM frame.
pub fn rst_stream(payload: &[u8]) -> Result<u32, FrameError> {
    let b: [u8; 4] = payload
        .try_into()
        .map_err(|_| frame_size("RST_STREAM length is not 4"))?;
    Ok(u32::from_be_bytes(b))
}

/// The last stream id and error code of a GOAWAY frame.
pub fn goaway(payload: &[u8]) -> Result<(u32, u32), FrameError> {
    let b = payload
        .first_chunk::<8>()
        .ok_or_else(|| frame_size("GOAWAY shorter than 8 bytes"))?;
    Ok((
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & STREAM_ID_MAX,
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    ))
}

pub fn write_settings(out: &mut impl BufMut, values: &[(u16, u32)]) {
    FrameHeader {
        len: (values.len() * 6) as u32,
        kind: kind::SETTINGS,
        flags: 0,
        stream: 0,
    }
    .write(out);
    for &(id, v) in values {
        out.put_u16(id);
        out.put_u32(v);
    }
}

pub fn write_settings_ack(out: &mut impl BufMut) {
    FrameHeader {
        len: 0,
        kind: kind::SETTINGS,
        flags: flag::ACK,
        stream: 0,
    }
    .write(out);
}

pub fn write_ping(out: &mut impl BufMut, ack: bool, data: [u8; 8]) {
    FrameHeader {
        len: 8,
        kind: kind::PING,
        flags: if ack { flag::ACK } else { 0 },
        stream: 0,
    }
    .write(out);
    out.put_slice(&data);
}

pub fn write_window_update(out: &mut impl BufMut, stream: u32, increment: u32) {
    FrameHeader {
        len: 4,
        kind: kind::WINDOW_UPDATE,
        flags: 0,
        stream,
    }
    .write(out);
    out.put_u32(increment & WINDOW_LIMIT);
}

pub fn write_rst_stream(out: &mut impl BufMut, stream: u32, error_code: u32) {
    FrameHeader {
        len: 4,
        kind: kind::RST_STREAM,
        flags: 0,
        stream,
    }
    .write(out);
    out.put_u32(error_code);
}

pub fn write_goaway(out: &mut impl BufMut, last_stream: u32, error_code: u32, debug: &[u8]) {
    FrameHeader {
        len: 8 + debug.len() as u32,
        kind: kind::GOAWAY,
        flags: 0,
        stream: 0,
    }
    .write(out);
    out.put_u32(last_stream & STREAM_ID_MAX);
    out.put_u32(error_code);
    out.put_slice(debug);
}

/// The header of a DATA frame carrying `len` bytes (the caller appends them).
pub fn write_data_header(out: &mut impl BufMut, stream: u32, len: usize, end_stream: bool) {
    FrameHeader {
        len: len as u32,
        kind: kind::DATA,
        flags: if end_stream { flag::END_STREAM } else { 0 },
        stream,
    }
    .write(out);
}

/// A header block as HEADERS plus as many CONTINUATION frames as `frame_bytes_max` needs.
pub fn write_headers(
    out: &mut impl BufMut,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    frame_bytes_max: u32,
) {
    let max = (frame_bytes_max.max(FRAME_BYTES_DEFAULT)) as usize;
    let mut chunks = block.chunks(max).peekable();
    let mut kind = kind::HEADERS;
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        FrameHeader {
            len: 0,
            kind,
            flags: flags | flag::END_HEADERS,
            stream,
        }
        .write(out);
        return;
    }
    while let Some(c) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= flag::END_HEADERS;
        }
        FrameHeader {
            len: c.len() as u32,
            kind,
            flags,
            stream,
        }
        .write(out);
        out.put_slice(c);
        kind = crate::h2::frame::kind::CONTINUATION;
        flags = 0;
    }
}
