//! A Hessian2 Dubbo response body (`ResponseRepr<'a>`): the status from the header and, for an
//! OK response, the response type Dubbo writes first (Apache Dubbo
//! `DubboCodec.encodeResponseData`: a Hessian int, 0 exception, 1 value, 2 null, 3/4/5 the same
//! with an attachments map after). For any other status the body is the error message string.
//! Emitting is [`super::encode::response_ok`] and [`super::encode::response_error`].
//!
//! No-panic contract: as for the whole crate; limits are the Hessian2 reader's.

use super::{DecodeError, HeaderRepr, Serialization, Status};
use crate::hessian2::{Reader, Scalar};

enum_with_unknown! {
    /// The leading int of an OK response body.
    pub enum ResponseKind(i32) {
        Exception = 0,
        Value = 1,
        NullValue = 2,
        ExceptionWithAttachments = 3,
        ValueWithAttachments = 4,
        NullValueWithAttachments = 5,
    }
}

// === impl ResponseKind ===

impl ResponseKind {
    /// Whether an attachments map follows the value.
    pub fn has_attachments(self) -> bool {
        matches!(
            self,
            ResponseKind::ExceptionWithAttachments
                | ResponseKind::ValueWithAttachments
                | ResponseKind::NullValueWithAttachments
        )
    }

    /// Whether the value is an exception the provider threw.
    pub fn is_exception(self) -> bool {
        matches!(
            self,
            ResponseKind::Exception | ResponseKind::ExceptionWithAttachments
        )
    }
}

/// The parsed head of a response.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResponseRepr<'a> {
    pub status: Status,
    /// OK responses only.
    pub kind: Option<ResponseKind>,
    /// Non-OK responses only: the error message, when it was a plain string.
    pub error_message: Option<&'a [u8]>,
    body: &'a [u8],
    value_offset: usize,
}

// === impl ResponseRepr ===

impl<'a> ResponseRepr<'a> {
    /// Reads the response type (OK) or error message (other statuses) of a Hessian2 response.
    /// Event responses (heartbeats) parse with no kind and no message.
    pub fn parse(header: &HeaderRepr, body: &'a [u8]) -> Result<ResponseRepr<'a>, DecodeError> {
        if header.serialization != Serialization::Hessian2 {
            return Err(DecodeError::NotHessian2 {
                serialization: header.serialization.into(),
            });
        }
        let mut r = Reader::new(body);
        let mut repr = ResponseRepr {
            status: header.status,
            kind: None,
            error_message: None,
            body,
            value_offset: 0,
        };
        if header.flags.event {
            // Heartbeat and other event responses carry no response type (see `EventRepr`).
        } else if header.status == Status::Ok {
            let offset = r.position();
            let tag = r.peek().unwrap_or(0);
            match r.read_value()? {
                Scalar::Int(kind) => repr.kind = Some(ResponseKind::from(kind)),
                _ => {
                    return Err(DecodeError::UnexpectedTag {
                        what: "response type",
                        tag,
                        offset,
                    })
                }
            }
            repr.value_offset = r.position();
        } else if let Scalar::Str(message) = r.read_value()? {
            repr.error_message = Some(message);
        }
        Ok(repr)
    }

    /// The returned value (or exception), read on demand: scalars in place, others as
    /// `Composite`; `None` for null kinds and error responses.
    pub fn value(&self) -> Result<Option<Scalar<'a>>, DecodeError> {
        match self.kind {
            Some(ResponseKind::NullValue | ResponseKind::NullValueWithAttachments) | None => {
                Ok(None)
            }
            Some(_) => Reader::with_position(self.body, self.value_offset)
                .read_value()
                .map(Some),
        }
    }
}
