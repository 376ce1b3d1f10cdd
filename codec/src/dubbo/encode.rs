//! Frames ringside writes itself (local error replies, heartbeats, readonly events) and frames
//! tests and the load generator send: a Hessian2 request ([`RequestBuilder`]) and OK responses.
//! Forwarded frames are never re-encoded; this is only for frames that start here.
//!
//! Every builder writes the header with a placeholder length, appends the Hessian2 body and then
//! patches the length, so a frame is one allocation (or none, with the `*_into` forms and a
//! reused buffer). Bodies are not limited here; a body over `u32::MAX` bytes cannot be framed
//! and is a caller bug (checked by `debug_assert!`). Never panics in release builds.

use bytes::{BufMut, Bytes, BytesMut};

use super::response::ResponseKind;
use super::{field, Flags, HeaderRepr, Serialization, Status, HEADER_BYTES, READONLY_EVENT};
use crate::hessian2::{tag, Writer};

/// The dubbo protocol version ringside's frames announce (Apache Dubbo's
/// `Version.DEFAULT_DUBBO_PROTOCOL_VERSION`).
pub const DUBBO_VERSION: &str = "2.0.2";

/// One argument (or response value) to encode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg<'a> {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    /// A value already encoded as Hessian2 (e.g. with [`Writer`]), and its JVM type descriptor.
    Raw {
        descriptor: &'a str,
        hessian2: &'a [u8],
    },
}

// === impl Arg ===

impl Arg<'_> {
    /// The JVM field descriptor Dubbo sends for this argument.
    pub fn descriptor(&self) -> &str {
        match self {
            Arg::Null => "Ljava/lang/Object;",
            Arg::Bool(_) => "Z",
            Arg::Int(_) => "I",
            Arg::Long(_) => "J",
            Arg::Double(_) => "D",
            Arg::Str(_) => "Ljava/lang/String;",
            Arg::Bytes(_) => "[B",
            Arg::Raw { descriptor, .. } => descriptor,
        }
    }

    pub fn write<B: BufMut>(&self, w: &mut Writer<B>) {
        match *self {
            Arg::Null => w.null(),
            Arg::Bool(v) => w.bool(v),
            Arg::Int(v) => w.int(v),
            Arg::Long(v) => w.long(v),
            Arg::Double(v) => w.double(v),
            Arg::Str(v) => w.string(v),
            Arg::Bytes(v) => w.binary(v),
            Arg::Raw { hessian2, .. } => w.raw(hessian2),
        };
    }
}

/// Builds a Hessian2 request frame the way a Java Dubbo consumer does. The frame depends only on
/// the builder, so a load generator can build once and patch each copy's id with
/// [`super::set_request_id`].
#[derive(Clone, Copy, Debug)]
pub struct RequestBuilder<'a> {
    request_id: u64,
    two_way: bool,
    dubbo_version: &'a str,
    interface: &'a str,
    version: &'a str,
    method: &'a str,
    group: Option<&'a str>,
    timeout_ms: Option<u64>,
    descriptor: Option<&'a str>,
    args: &'a [Arg<'a>],
    attachments: &'a [(&'a str, &'a str)],
}

// === impl RequestBuilder ===

impl<'a> RequestBuilder<'a> {
    /// A two-way request for `interface.method()`, id 0, no version, group or arguments.
    pub fn new(interface: &'a str, method: &'a str) -> RequestBuilder<'a> {
        RequestBuilder {
            request_id: 0,
            two_way: true,
            dubbo_version: DUBBO_VERSION,
            interface,
            version: "",
            method,
            group: None,
            timeout_ms: None,
            descriptor: None,
            args: &[],
            attachments: &[],
        }
    }

    pub fn request_id(mut self, id: u64) -> Self {
        self.request_id = id;
        self
    }

    pub fn two_way(mut self, two_way: bool) -> Self {
        self.two_way = two_way;
        self
    }

    pub fn dubbo_version(mut self, dubbo_version: &'a str) -> Self {
        self.dubbo_version = dubbo_version;
        self
    }

    pub fn version(mut self, version: &'a str) -> Self {
        self.version = version;
        self
    }

    pub fn group(mut self, group: &'a str) -> Self {
        self.group = Some(group);
        self
    }

    /// Sent as the `timeout` attachment, a decimal string as Dubbo 2.7 consumers send it.
    pub fn timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    /// Overrides the parameter types derived from `args` (needed only for odd cases: the
    /// descriptor must still list one type per argument for the frame to decode).
    pub fn descriptor(mut self, descriptor: &'a str) -> Self {
        self.descriptor = Some(descriptor);
        self
    }

    pub fn args(mut self, args: &'a [Arg<'a>]) -> Self {
        self.args = args;
        self
    }

    /// Extra attachments, after `path`, `interface`, `version`, `group` and `timeout`.
    pub fn attachments(mut self, attachments: &'a [(&'a str, &'a str)]) -> Self {
        self.attachments = attachments;
        self
    }

    pub fn build(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Appends the frame to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        let header = HeaderRepr {
            flags: Flags {
                request: true,
                two_way: self.two_way,
                event: false,
            },
            serialization: Serialization::Hessian2,
            status: Status::Unknown(0),
            request_id: self.request_id,
            body_bytes: 0,
        };
        frame_into(out, &header, |w| {
            w.string(self.dubbo_version)
                .string(self.interface)
                .string(self.version)
                .string(self.method);
            match self.descriptor {
                Some(descriptor) => {
                    w.string(descriptor);
                }
                None => {
                    let mut descriptor = String::new();
                    for arg in self.args {
                        descriptor.push_str(arg.descriptor());
                    }
                    w.string(&descriptor);
                }
            }
            for arg in self.args {
                arg.write(w);
            }
            w.map_begin();
            w.string("path").string(self.interface);
            w.string("interface").string(self.interface);
            if !self.version.is_empty() {
                w.string("version").string(self.version);
            }
            if let Some(group) = self.group {
                w.string("group").string(group);
            }
            if let Some(timeout_ms) = self.timeout_ms {
                w.string("timeout").string(&timeout_ms.to_string());
            }
            for (key, value) in self.attachments {
                w.string(key).string(value);
            }
            w.end();
        });
    }
}

/// An OK response carrying `value`. With `attachments` the kind is `ValueWithAttachments` (or
/// `NullValueWithAttachments`) and the map is written after the value, as Dubbo 2.0.2+
/// providers do; without, `Value` (or `NullValue`).
pub fn response_ok(
    request_id: u64,
    value: &Arg<'_>,
    attachments: Option<&[(&str, &str)]>,
) -> Bytes {
    let mut out = BytesMut::new();
    response_ok_into(&mut out, request_id, value, attachments);
    out.freeze()
}

/// [`response_ok`], appended to `out`.
pub fn response_ok_into(
    out: &mut BytesMut,
    request_id: u64,
    value: &Arg<'_>,
    attachments: Option<&[(&str, &str)]>,
) {
    let null = matches!(value, Arg::Null);
    let kind = match (null, attachments.is_some()) {
        (false, false) => ResponseKind::Value,
        (true, false) => ResponseKind::NullValue,
        (false, true) => ResponseKind::ValueWithAttachments,
        (true, true) => ResponseKind::NullValueWithAttachments,
    };
    frame_into(out, &response_header(request_id, Status::Ok, false), |w| {
        w.int(kind.into());
        if !null {
            value.write(w);
        }
        if let Some(attachments) = attachments {
            w.map_begin();
            for (key, value) in attachments {
                w.string(key).string(value);
            }
            w.end();
        }
    });
}

/// An error response: `status` (anything but OK) and the message as a Hessian2 string, as Dubbo
/// writes `Response.getErrorMessage()`.
pub fn response_error(request_id: u64, status: Status, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    frame_into(&mut out, &response_header(request_id, status, false), |w| {
        w.string(message);
    });
    out.freeze()
}

/// A two-way heartbeat request: event flag, null body.
pub fn heartbeat_request(request_id: u64) -> Bytes {
    let header = HeaderRepr {
        flags: Flags {
            request: true,
            two_way: true,
            event: true,
        },
        serialization: Serialization::Hessian2,
        status: Status::Unknown(0),
        request_id,
        body_bytes: 0,
    };
    let mut out = BytesMut::new();
    frame_into(&mut out, &header, |w| {
        w.null();
    });
    out.freeze()
}

/// The answer to a heartbeat request: event flag, status OK, null body.
pub fn heartbeat_response(request_id: u64) -> Bytes {
    let mut out = BytesMut::new();
    frame_into(
        &mut out,
        &response_header(request_id, Status::Ok, true),
        |w| {
            w.null();
        },
    );
    out.freeze()
}

/// The one-way event a provider sends when it goes read-only (Apache Dubbo
/// `HeaderExchangeServer.sendChannelReadOnlyEvent`): body is the string "R".
pub fn readonly_event(request_id: u64) -> Bytes {
    let header = HeaderRepr {
        flags: Flags {
            request: true,
            two_way: false,
            event: true,
        },
        serialization: Serialization::Hessian2,
        status: Status::Unknown(0),
        request_id,
        body_bytes: 0,
    };
    let mut out = BytesMut::new();
    frame_into(&mut out, &header, |w| {
        w.string(core::str::from_utf8(READONLY_EVENT).unwrap_or("R"));
    });
    out.freeze()
}

fn response_header(request_id: u64, status: Status, event: bool) -> HeaderRepr {
    HeaderRepr {
        flags: Flags {
            request: false,
            two_way: false,
            event,
        },
        serialization: Serialization::Hessian2,
        status,
        request_id,
        body_bytes: 0,
    }
}

/// Appends `header` and the body written by `body`, then patches the body length.
fn frame_into(
    out: &mut BytesMut,
    header: &HeaderRepr,
    body: impl FnOnce(&mut Writer<&mut BytesMut>),
) {
    let start = out.len();
    out.put_slice(&header.to_bytes());
    body(&mut Writer::new(&mut *out));
    let body_len = out.len().saturating_sub(start + HEADER_BYTES);
    debug_assert!(u32::try_from(body_len).is_ok(), "body of {body_len} bytes");
    let body_len = u32::try_from(body_len).unwrap_or(u32::MAX);
    let len_at = start + field::BODY_LEN.start..start + field::BODY_LEN.end;
    if let Some(dst) = out.get_mut(len_at) {
        dst.copy_from_slice(&body_len.to_be_bytes());
    }
}

/// A copy of request `frame` with one string attachment added: `key`/`value` are written at
/// `end` (a body offset from [`super::request::RequestRepr::attachments_end`]), before the
/// attachments map's end marker, and the header's body length grows by their size. The only
/// way ringside changes a forwarded request's size (one allocation of the new frame). `None`
/// when `end` is not inside the body or the body would outgrow the header's length field.
pub fn insert_attachment(frame: &[u8], end: usize, key: &str, value: &str) -> Option<BytesMut> {
    let mut out = BytesMut::with_capacity(frame.len() + key.len() + value.len() + 8);
    insert_attachment_into(&mut out, frame, end, key, value)?;
    Some(out)
}

/// [`insert_attachment`] appending the new frame to `out` (a caller's reused buffer, from which
/// it splits the frame off: no allocation per frame). `out` is left as it was on `None`.
pub fn insert_attachment_into(
    out: &mut BytesMut,
    frame: &[u8],
    end: usize,
    key: &str,
    value: &str,
) -> Option<()> {
    insert_with(out, frame, end, key.len() + value.len() + 8, |out| {
        Writer::new(out).string(key).string(value);
    })
}

/// [`insert_attachment_into`] for an entry whose Hessian2 encoding the caller already has
/// (`entry`: the key's and the value's encodings, in parts, one after the other, e.g. a fixed
/// prefix and a value): the frame is copied around it, nothing is encoded. The caller vouches
/// that the parts are one well-formed string key and value (see [`encoded_string_header`]).
pub fn insert_encoded_attachment_into(
    out: &mut BytesMut,
    frame: &[u8],
    end: usize,
    entry: &[&[u8]],
) -> Option<()> {
    let extra = entry.iter().map(|p| p.len()).sum();
    insert_with(out, frame, end, extra, |out| {
        for p in entry {
            out.extend_from_slice(p);
        }
    })
}

/// The Hessian2 header of a string of `units` UTF-16 units short enough for one chunk
/// (up to 32768: `Writer::string`'s own choice of form), with how many of its bytes are used.
pub const fn encoded_string_header(units: usize) -> ([u8; 3], usize) {
    if units <= 0x1f {
        ([units as u8, 0, 0], 1)
    } else if units <= 0x3ff {
        ([tag::STRING_SHORT + (units >> 8) as u8, units as u8, 0], 2)
    } else {
        ([tag::STRING_FINAL, (units >> 8) as u8, units as u8], 3)
    }
}

fn insert_with(
    out: &mut BytesMut,
    frame: &[u8],
    end: usize,
    extra: usize,
    entry: impl FnOnce(&mut BytesMut),
) -> Option<()> {
    let body = frame.get(HEADER_BYTES..)?;
    if end >= body.len() {
        return None;
    }
    let (head, tail) = (frame.get(..HEADER_BYTES + end)?, body.get(end..)?);
    let start = out.len();
    out.reserve(frame.len() + extra);
    out.extend_from_slice(head);
    entry(&mut *out);
    out.extend_from_slice(tail);
    let len = u32::try_from(out.len() - start - HEADER_BYTES).ok();
    let at = start + field::BODY_LEN.start..start + field::BODY_LEN.end;
    match (len, out.get_mut(at)) {
        (Some(len), Some(dst)) => dst.copy_from_slice(&len.to_be_bytes()),
        _ => {
            out.truncate(start);
            return None;
        }
    }
    Some(())
}
