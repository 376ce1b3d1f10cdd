//! The Dubbo filter's only door to the codec: splitting frames off a read buffer, reading the
//! routing fields of a request, and making the frames ringside writes itself (local replies,
//! heartbeats). Keeping the codec calls here keeps the filter's code about proxying.

use bytes::{Bytes, BytesMut};
use codec::dubbo as d;
use codec::DecodeError;

use super::router::{ArgValue, Inspect};
use crate::trace::context::TRACEPARENT_BYTES;
use crate::trace::{Carrier, Field};

/// Dubbo response status, as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u8);

impl Status {
    pub const OK: Status = Status(20);
    pub const SERVER_TIMEOUT: Status = Status(31);
    pub const BAD_REQUEST: Status = Status(40);
    pub const SERVICE_NOT_FOUND: Status = Status(60);
    pub const SERVER_ERROR: Status = Status(80);
    pub const SERVER_THREADPOOL_EXHAUSTED: Status = Status(100);
}

/// The header fields the filter acts on.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub request: bool,
    pub two_way: bool,
    pub event: bool,
    /// Serialization id 2: the body's routing fields can be read.
    pub hessian2: bool,
    pub serialization: u8,
    pub id: u64,
}

pub enum Next {
    /// A whole frame (header included), split off the buffer.
    Frame(Header, BytesMut),
    /// At least this many more bytes are needed.
    NeedMore(usize),
}

/// What a read buffer holds for a large frame being read (its whole size above the first read
/// chunk, `more` bytes of it still to come): its room beyond that chunk, charged to the shard's
/// budget while the frame is read. Ordinary frames charge nothing.
pub fn large_frame_room(buf: &BytesMut, more: usize) -> usize {
    if buf.len() + more > crate::io::READ_CHUNK_BYTES {
        buf.capacity().saturating_sub(crate::io::READ_CHUNK_BYTES)
    } else {
        0
    }
}

/// The header of a request (not an event) whose frame, `more` bytes of it still to come, is
/// larger than one read chunk: one the reader may shed before buffering its body.
pub fn large_request(buf: &BytesMut, more: usize) -> Option<Header> {
    if buf.len() + more <= crate::io::READ_CHUNK_BYTES {
        return None;
    }
    let h =
        d::HeaderRepr::parse(&d::Header::new_checked(buf.get(..d::HEADER_BYTES)?).ok()?).ok()?;
    (h.flags.request && !h.flags.event).then(|| Header {
        request: true,
        two_way: h.flags.two_way,
        event: false,
        hessian2: h.serialization == d::Serialization::Hessian2,
        serialization: h.serialization.into(),
        id: h.request_id,
    })
}

/// Splits the next whole frame off `buf`. An error is a frame the connection cannot go on
/// from; `FrameTooLarge` carries the request id and the frame's whole size (a reader that can
/// afford to may skip that many bytes and go on with the next frame).
pub fn next_frame(buf: &mut BytesMut, frame_bytes_max: usize) -> Result<Next, DecodeError> {
    match d::decode_frame(buf, frame_bytes_max) {
        Ok(d::Decoded::Frame(f)) => {
            let h = &f.header;
            Ok(Next::Frame(
                Header {
                    request: h.flags.request,
                    two_way: h.flags.two_way,
                    event: h.flags.event,
                    hessian2: h.serialization == d::Serialization::Hessian2,
                    serialization: h.serialization.into(),
                    id: h.request_id,
                },
                f.bytes,
            ))
        }
        Ok(d::Decoded::NeedMore(n)) => Ok(Next::NeedMore(n)),
        Err(e) => Err(e),
    }
}

pub fn set_request_id(frame: &mut [u8], id: u64) {
    d::set_request_id(frame, id);
}

/// The request id of a whole frame (0 for a frame too short to have one).
pub fn request_id(frame: &[u8]) -> u64 {
    frame
        .get(d::field::REQUEST_ID)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Whether a whole frame is a one-way request (not an event): nobody waits for its answer.
pub fn is_oneway_request(frame: &[u8]) -> bool {
    let f = d::Flags::from_byte(frame.get(d::field::FLAGS).copied().unwrap_or(0));
    f.request && !f.two_way && !f.event
}

/// Whether a response frame carries status 20.
pub fn response_ok(frame: &[u8]) -> bool {
    frame.get(3) == Some(&Status::OK.0)
}

/// A response frame's status (byte 3 of the header).
pub fn response_status(frame: &[u8]) -> Status {
    Status(frame.get(3).copied().unwrap_or(0))
}

/// Whether an event frame is Dubbo's readonly event (a provider going away).
pub fn is_readonly_event(frame: &[u8]) -> bool {
    d::is_readonly_event(frame)
}

pub fn error_response(id: u64, status: Status, message: &str) -> Bytes {
    d::encode::response_error(id, d::Status::from(status.0), message)
}

pub fn heartbeat_response(id: u64) -> Bytes {
    d::encode::heartbeat_response(id)
}

/// Dubbo's readonly event: "this process is going away, send new requests elsewhere".
pub fn readonly_event() -> Bytes {
    d::encode::readonly_event(0)
}

pub fn heartbeat_request(id: u64) -> Bytes {
    d::encode::heartbeat_request(id)
}

/// A Hessian2 request's routing fields, borrowed from the frame.
pub struct RequestView<'a> {
    req: d::request::RequestRepr<'a>,
}

impl<'a> RequestView<'a> {
    /// Reads the preamble (interface, version, method, attachments) of a Hessian2 request.
    pub fn parse(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let body = frame.get(d::HEADER_BYTES..).unwrap_or(&[]);
        d::request::RequestRepr::parse(body).map(|req| RequestView { req })
    }

    /// Reads a Hessian2 request up to its method (and parameter types); arguments and
    /// attachments are read when asked for (each ask a scan from the arguments).
    #[inline]
    pub fn parse_preamble(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let body = frame.get(d::HEADER_BYTES..).unwrap_or(&[]);
        d::request::RequestRepr::parse_preamble(body).map(|req| RequestView { req })
    }

    pub fn interface_bytes(&self) -> &[u8] {
        self.req.interface()
    }
    pub fn version_bytes(&self) -> &[u8] {
        self.req.version()
    }
    pub fn method_bytes(&self) -> &[u8] {
        self.req.method()
    }
    pub fn group_bytes(&self) -> Option<&[u8]> {
        self.req.attachment(b"group")
    }
}

/// A request's trace context: the values it carries, and where the values ringside may
/// rewrite in place sit in the frame (found from the values when asked: a call without a
/// context, the common one, moves only the empty carrier and `insert_at`).
pub struct TraceFields<'a> {
    pub carrier: Carrier<'a>,
    /// Frame offset of the attachments map's first entry: where a new attachment goes.
    pub insert_at: Option<usize>,
    /// The frame the values are slices of.
    frame: &'a [u8],
}

impl TraceFields<'_> {
    /// Frame offset of a value of the carrier.
    fn at(&self, v: Option<&[u8]>) -> Option<usize> {
        let at = (v?.as_ptr() as usize).checked_sub(self.frame.as_ptr() as usize)?;
        (at < self.frame.len()).then_some(at)
    }
    /// Frame offsets of the `traceparent`, `b3`, `X-B3-SpanId` and `X-B3-ParentSpanId`
    /// values (the first of each name: the one kept, and the one rewritten in place).
    pub fn traceparent_at(&self) -> Option<usize> {
        self.at(self.carrier.traceparent)
    }
    pub fn b3_at(&self) -> Option<usize> {
        self.at(self.carrier.b3)
    }
    pub fn spanid_at(&self) -> Option<usize> {
        self.at(self.carrier.x_b3_spanid)
    }
    pub fn parentspanid_at(&self) -> Option<usize> {
        self.at(self.carrier.x_b3_parentspanid)
    }
}

impl<'a> TraceFields<'a> {
    /// No field yet, for [`RequestView::parse_traced_into`] to fill.
    #[inline]
    pub fn new(frame: &'a [u8]) -> TraceFields<'a> {
        TraceFields {
            carrier: Carrier::default(),
            insert_at: None,
            frame,
        }
    }
}

impl<'a> RequestView<'a> {
    /// [`RequestView::parse`] that also reads the request's trace context (string values
    /// only) into `fields` (made by [`TraceFields::new`] of the same frame), in the same scan
    /// of the attachments the parse makes for routing; the fields are filled in place rather
    /// than returned with the request (~150 bytes more moved through each `Result`). A request
    /// whose attachment bytes name no context field (`trace::context::may_name_field`, a look
    /// at the raw bytes) has its arguments skipped and checked but its map left unread (as
    /// `parse_preamble` leaves it: routes that read attachments scan them).
    #[inline]
    pub fn parse_traced_into(
        frame: &'a [u8],
        fields: &mut TraceFields<'a>,
    ) -> Result<Self, DecodeError> {
        let body = frame.get(d::HEADER_BYTES..).unwrap_or(&[]);
        let carrier = &mut fields.carrier;
        let (req, entries) = d::request::RequestRepr::parse_visiting_if(
            body,
            crate::trace::context::may_name_field,
            |k, v| {
                if let (Some(field), d::request::Scalar::Str(v)) = (Field::of(k), v) {
                    carrier.set(field, v);
                }
            },
        )?;
        fields.insert_at = entries.map(|o| o + d::HEADER_BYTES);
        Ok(RequestView { req })
    }
}

/// The Hessian2 encoding of the `traceparent` key and of a value's string header: a value is
/// always 55 ASCII bytes (lower-case hex and dashes), so its encoding is this prefix and the
/// value's bytes, written without an encoder (`codec::hessian2::Writer` walks every char).
const TRACEPARENT_ENTRY_PREFIX: [u8; 14] = {
    let key = b"traceparent";
    let (vh, vn) = d::encode::encoded_string_header(TRACEPARENT_BYTES);
    let (kh, kn) = d::encode::encoded_string_header(11);
    assert!(kn == 1 && vn == 2 && key.len() == 11);
    let mut out = [0u8; 14];
    out[0] = kh[0];
    let mut i = 0;
    while i < 11 {
        out[1 + i] = key[i];
        i += 1;
    }
    out[12] = vh[0];
    out[13] = vh[1];
    out
};

/// What an added `traceparent` entry takes: the key and the value with their Hessian2 string
/// headers.
pub const TRACEPARENT_ENTRY_BYTES: usize = TRACEPARENT_ENTRY_PREFIX.len() + TRACEPARENT_BYTES;

/// The entry with an all-zero context (`00-0…0-0…0-00`): copied whole, its ids then written
/// in place.
const TRACEPARENT_ENTRY_TEMPLATE: [u8; TRACEPARENT_ENTRY_BYTES] = {
    let value = b"00-00000000000000000000000000000000-0000000000000000-00";
    assert!(value.len() == TRACEPARENT_BYTES);
    let mut out = [0u8; TRACEPARENT_ENTRY_BYTES];
    let mut i = 0;
    while i < TRACEPARENT_ENTRY_PREFIX.len() {
        out[i] = TRACEPARENT_ENTRY_PREFIX[i];
        i += 1;
    }
    let mut j = 0;
    while j < TRACEPARENT_BYTES {
        out[i + j] = value[j];
        j += 1;
    }
    out
};

/// Appends to `out` a copy of `frame` with a `traceparent` attachment (version 00 of
/// `trace_id`, `span_id` as the parent, `sampled`) added at frame offset `end` (from
/// [`TraceFields::insert_at`]: the map's first entry); `None` (and `out` unchanged) when `end`
/// is not in the body. The same bytes as `codec::dubbo::encode::insert_attachment_into`
/// writes; the frame's head, the entry and the frame's tail each one copy, the ids hex-encoded
/// straight into the copy (no value built and moved first).
pub fn insert_traceparent_into(
    out: &mut BytesMut,
    frame: &[u8],
    end: usize,
    trace_id: &crate::trace::context::TraceId,
    span_id: &crate::trace::context::SpanId,
    sampled: bool,
) -> Option<()> {
    if end < d::HEADER_BYTES || end >= frame.len() {
        return None;
    }
    let (head, tail) = frame.split_at(end);
    let body = u32::try_from(frame.len() - d::HEADER_BYTES + TRACEPARENT_ENTRY_BYTES).ok()?;
    let start = out.len();
    out.reserve(frame.len() + TRACEPARENT_ENTRY_BYTES);
    out.extend_from_slice(head);
    out.extend_from_slice(&TRACEPARENT_ENTRY_TEMPLATE);
    out.extend_from_slice(tail);
    let at = start + end + TRACEPARENT_ENTRY_PREFIX.len();
    if let Some(value) = out
        .get_mut(at..)
        .and_then(|v| v.first_chunk_mut::<TRACEPARENT_BYTES>())
    {
        crate::trace::context::traceparent_into(value, trace_id, span_id, sampled);
    }
    let len = start + d::field::BODY_LEN.start;
    if let Some(dst) = out.get_mut(len..).and_then(|v| v.first_chunk_mut::<4>()) {
        *dst = body.to_be_bytes();
    }
    Some(())
}

impl RequestView<'_> {
    /// The request's traffic label (`keys`: the attachments holding it), from one scan of the
    /// attachments (string values only).
    pub fn label(&self, keys: &crate::cluster::LabelKeys) -> crate::cluster::Label {
        let (mut tag, mut force) = (None, None);
        for (k, v) in self.req.attachments() {
            let d::request::Scalar::Str(v) = v else {
                continue;
            };
            if k == &keys.key[..] {
                tag = tag.or(Some(v));
            } else if k == &keys.force_key[..] {
                force = force.or(Some(v));
            }
        }
        crate::cluster::Label::of(tag, force)
    }
}

impl Inspect for RequestView<'_> {
    fn interface(&self) -> &[u8] {
        self.req.interface()
    }
    fn method(&self) -> &[u8] {
        self.req.method()
    }
    fn version(&self) -> &[u8] {
        self.req.version()
    }
    fn attachment(&self, name: &[u8]) -> Option<&[u8]> {
        self.req.attachment(name)
    }
    fn argument(&self, index: u32) -> Option<ArgValue<'_>> {
        match self.req.argument(index as usize).ok()?? {
            d::request::Scalar::Str(s) => Some(ArgValue::Str(s)),
            d::request::Scalar::Int(i) => Some(ArgValue::Int(i as i64)),
            d::request::Scalar::Long(i) => Some(ArgValue::Int(i)),
            d::request::Scalar::Bool(b) => Some(ArgValue::Bool(b)),
            _ => None,
        }
    }
}

impl crate::filter::rbac::Request for RequestView<'_> {
    fn interface(&self) -> Option<&[u8]> {
        Some(self.interface_bytes())
    }
    fn method(&self) -> Option<&[u8]> {
        Some(self.method_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pre-encoded `traceparent` entry writes the bytes the Hessian2 encoder writes.
    #[test]
    fn traceparent_insert_matches_the_encoder() {
        let frame = d::encode::RequestBuilder::new("org.apache.dubbo.bench.EchoService", "echo")
            .version("1.0.0")
            .args(&[d::encode::Arg::Str("0123456789abcdef")])
            .build();
        let req = d::request::RequestRepr::parse_frame(&frame).unwrap();
        let end = req.attachments_end().unwrap() + d::HEADER_BYTES;
        let value = crate::trace::context::traceparent(&[0xab; 16], &[0x12; 8], false);
        let mut ours = BytesMut::from(&b"left alone"[..]);
        insert_traceparent_into(&mut ours, &frame, end, &[0xab; 16], &[0x12; 8], false).unwrap();
        let mut theirs = BytesMut::from(&b"left alone"[..]);
        d::encode::insert_attachment_into(
            &mut theirs,
            &frame,
            end - d::HEADER_BYTES,
            "traceparent",
            std::str::from_utf8(&value).unwrap(),
        )
        .unwrap();
        assert_eq!(ours, theirs);
        let grown = d::request::RequestRepr::parse_frame(&ours[10..]).unwrap();
        assert_eq!(grown.attachment(b"traceparent"), Some(&value[..]));
        assert_eq!(grown.attachment(b"path"), req.attachment(b"path"));
        // Not in the body: nothing written.
        let mut none = BytesMut::new();
        let ids = (&[0xab; 16], &[0x12; 8]);
        assert!(
            insert_traceparent_into(&mut none, &frame, frame.len(), ids.0, ids.1, true).is_none()
        );
        assert!(insert_traceparent_into(&mut none, &frame, 15, ids.0, ids.1, true).is_none());
        assert!(none.is_empty());
        // Sampled: the flags byte, and a second frame appended after the first.
        let value = crate::trace::context::traceparent(&[0x01; 16], &[0xfe; 8], true);
        let mut theirs = ours.clone();
        d::encode::insert_attachment_into(
            &mut theirs,
            &frame,
            end - d::HEADER_BYTES,
            "traceparent",
            std::str::from_utf8(&value).unwrap(),
        )
        .unwrap();
        insert_traceparent_into(&mut ours, &frame, end, &[0x01; 16], &[0xfe; 8], true).unwrap();
        assert_eq!(ours, theirs);
    }
}
