//! The crate's one error type. Every variant names the field or construct, the value seen and,
//! where one applies, the limit, so a reader can act without a hex dump.
//!
//! Who caused it: always the peer that sent the bytes (the codec never sees the socket, so the
//! caller knows which side that was). Retrying the same bytes fails the same way, so no
//! `DecodeError` is retryable. [`DecodeError::resync_possible`] says whether the stream can go
//! on after the error (the frame boundary is known) or must be closed.

/// A wire unit could not be decoded. Offsets in Hessian2 variants are byte offsets into the slice
/// handed to the reader (for a request, the frame body: frame offset minus
/// [`crate::dubbo::HEADER_BYTES`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The first two bytes of a frame are not the Dubbo magic 0xdabb. `seen` holds the bytes
    /// buffered so far (one byte is enough to reject).
    #[error("dubbo header: magic {seen:02x?} is not da bb")]
    BadMagic { seen: [u8; 2] },
    /// The header announces a frame larger than the configured maximum. Rejected from the
    /// header alone, before any of the body is buffered.
    #[error(
        "dubbo frame {request_id}: {frame_bytes} bytes exceed frame_bytes_max {frame_bytes_max}"
    )]
    FrameTooLarge {
        request_id: u64,
        frame_bytes: u64,
        frame_bytes_max: usize,
    },
    /// A buffer handed to a header view is shorter than the 16-byte header.
    #[error("dubbo header: {len} bytes, needs {}", crate::dubbo::HEADER_BYTES)]
    HeaderTruncated { len: usize },
    /// The body is not Hessian2, so its fields cannot be read (it still passes through).
    #[error("dubbo body: serialization id {serialization} is not hessian2 (2)")]
    NotHessian2 { serialization: u8 },
    /// The input ended inside a value.
    #[error("hessian2 {what} at offset {offset}: input ends inside it")]
    Truncated { what: &'static str, offset: usize },
    /// A tag byte that cannot start the expected construct.
    #[error("hessian2 {what} at offset {offset}: unexpected tag {tag:#04x}")]
    UnexpectedTag {
        what: &'static str,
        tag: u8,
        offset: usize,
    },
    /// A length or count that is negative or larger than the bytes left could hold.
    #[error("hessian2 {what} at offset {offset}: length {len} is negative or exceeds {limit}")]
    BadLength {
        what: &'static str,
        offset: usize,
        len: i64,
        limit: usize,
    },
    /// Lists, maps and objects nested deeper than [`crate::hessian2::NESTING_DEPTH_MAX`].
    #[error("hessian2 value at offset {offset}: nested deeper than {limit}")]
    NestingTooDeep { offset: usize, limit: usize },
    /// A byte that cannot appear at this place in (modified) UTF-8.
    #[error("hessian2 string at offset {offset}: bad utf-8 byte {byte:#04x}")]
    BadUtf8 { offset: usize, byte: u8 },
    /// More class definitions than [`crate::hessian2::CLASS_DEFS_MAX`].
    #[error("hessian2 class definition at offset {offset}: more than {limit}")]
    TooManyClassDefs { offset: usize, limit: usize },
    /// An object refers to a class definition that was not sent.
    #[error(
        "hessian2 object at offset {offset}: class definition {index} unknown ({defined} defined)"
    )]
    UnknownClassDef {
        offset: usize,
        index: i64,
        defined: usize,
    },
    /// A list or map refers to a type name that was not sent.
    #[error(
        "hessian2 type reference at offset {offset}: type {index} unknown ({defined} defined)"
    )]
    UnknownTypeRef {
        offset: usize,
        index: i64,
        defined: u32,
    },
    /// A Dubbo request routing field sent as a chunked string (over 32768 UTF-16 units), which
    /// cannot be borrowed as one slice. No real interface, method or version is that long.
    #[error("dubbo request {field}: chunked string, not supported for a routing field")]
    ChunkedField { field: &'static str },
    /// A routing field with a non-string value.
    #[error("dubbo request {field}: tag {tag:#04x} is not a string")]
    NotAString { field: &'static str, tag: u8 },
    /// The parameter types descriptor is not a list of JVM field descriptors.
    #[error("dubbo request parameter types: bad JVM descriptor at byte {index}")]
    BadDescriptor { index: usize },
    /// More parameter types than [`crate::dubbo::request::ARGUMENTS_MAX`].
    #[error("dubbo request parameter types: more than {limit} arguments")]
    TooManyArguments { limit: usize },
}

// === impl DecodeError ===

impl DecodeError {
    /// The request id of the frame, when the header was read before the error. The caller then
    /// answers that request before closing.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            DecodeError::FrameTooLarge { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }

    /// Whether the byte stream can go on after this error. Header errors lose the frame
    /// boundary (or refuse to buffer up to it), so the connection must close; errors inside a
    /// frame body leave the next frame where it was.
    pub fn resync_possible(&self) -> bool {
        !matches!(
            self,
            DecodeError::BadMagic { .. }
                | DecodeError::FrameTooLarge { .. }
                | DecodeError::HeaderTruncated { .. }
        )
    }
}
