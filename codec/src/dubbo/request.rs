//! A Hessian2 Dubbo request body, read lazily and borrowed (`RequestRepr<'a>`).
//!
//! Body layout (Apache Dubbo `DubboCodec.encodeRequestData`): five strings — dubbo version,
//! service path (the interface), service version, method name, parameter types as JVM
//! descriptors (`Ljava/lang/String;I[J`) — then one value per parameter type, then the
//! attachments map (string keys: `path`, `interface`, `version`, `group`, `timeout`, custom).
//!
//! [`RequestRepr::parse`] reads the five strings as slices of the body, skips the arguments
//! without building them, and checks the attachments map, remembering only offsets and the
//! `group` value: routing reads interface, version, method and group without allocating or
//! rescanning (and the map's end). [`RequestRepr::parse_visiting`] also hands the caller each
//! attachment that scan reads (a trace context, without a second scan), and
//! [`RequestRepr::parse_visiting_if`] reads the map only when a caller's look at its raw bytes
//! says a wanted key may be there. Arguments
//! ([`RequestRepr::argument`]) and other attachments
//! ([`RequestRepr::attachment`]) are found on demand by a scan from a remembered offset.
//! [`RequestRepr::parse_preamble`] reads only the five strings (and checks the descriptor), for
//! a caller that routes on interface, version and method alone: the arguments and attachments
//! are then neither skipped nor checked until something asks for them (each
//! [`RequestRepr::group`] or [`RequestRepr::attachment`] then scans, arguments first).
//! Emitting a request is [`super::encode::RequestBuilder`].
//!
//! No-panic contract: as for the whole crate. Limits: the Hessian2 reader's
//! ([`crate::hessian2`]), and [`ARGUMENTS_MAX`] parameters. A routing field sent as a chunked
//! string (over 32768 UTF-16 units) cannot be borrowed and is rejected with
//! [`DecodeError::ChunkedField`]; chunked attachment values and arguments are returned as
//! [`Scalar::StrChunked`] instead.
//!
//! Leniency: a version sent as Hessian null reads as empty; a body that ends after the
//! arguments has no attachments; bytes after the attachments map are ignored.

use super::{DecodeError, HeaderRepr, Serialization, HEADER_BYTES};
use crate::hessian2::Reader;
pub use crate::hessian2::Scalar;

/// Most parameters of a request: the JVM's limit on method parameters (JVMS §4.3.3).
pub const ARGUMENTS_MAX: usize = 255;

/// The routing view of a Hessian2 request body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestRepr<'a> {
    body: &'a [u8],
    dubbo_version: &'a [u8],
    interface: &'a [u8],
    version: &'a [u8],
    method: &'a [u8],
    descriptor: &'a [u8],
    group: Option<&'a [u8]>,
    argument_count: usize,
    arguments_offset: usize,
    /// Where the attachments map starts; `None` if the body has none.
    attachments_offset: Option<usize>,
    /// Arguments defined classes or types the attachments may refer to: scans of the map must
    /// then start from the arguments to learn them again.
    attachments_need_arguments: bool,
    /// Made by [`RequestRepr::parse_preamble`]: the arguments were not skipped, so where the
    /// attachments are (and `group`) is found by a scan when asked.
    preamble_only: bool,
    /// Where the attachments map's end marker is, when `parse` read the map.
    attachments_end: Option<usize>,
}

// === impl RequestRepr ===

impl<'a> RequestRepr<'a> {
    /// Parses a whole frame (header included), checking it is a Hessian2 request.
    pub fn parse_frame(frame: &'a [u8]) -> Result<RequestRepr<'a>, DecodeError> {
        let header = HeaderRepr::parse(&super::Header::new_checked(frame)?)?;
        if header.serialization != Serialization::Hessian2 {
            return Err(DecodeError::NotHessian2 {
                serialization: header.serialization.into(),
            });
        }
        RequestRepr::parse(frame.get(HEADER_BYTES..).unwrap_or(&[]))
    }

    /// Parses a request body (the frame after its header). Offsets in errors are into `body`.
    pub fn parse(body: &'a [u8]) -> Result<RequestRepr<'a>, DecodeError> {
        Self::parse_visiting(body, |_, _| {})
    }

    /// As [`RequestRepr::parse`], handing `visit` every attachment with a string key as the
    /// parse's one scan of the map reads it: a caller that wants a few attachments (a trace
    /// context) gets them without a second scan.
    pub fn parse_visiting(
        body: &'a [u8],
        visit: impl FnMut(&'a [u8], Scalar<'a>),
    ) -> Result<RequestRepr<'a>, DecodeError> {
        Self::parse_visiting_if(body, |_| true, visit).map(|(req, _)| req)
    }

    /// [`RequestRepr::parse_visiting`] for a caller that wants a few attachments by name and
    /// may add one: `may_hold` is handed the bytes from the attachments map to the body's end
    /// and says whether they may hold a key `visit` wants (a cheap look at the raw bytes; it
    /// must never say no when one is there, a yes that finds none costs only the scan). On a
    /// no, the arguments are skipped (and checked) but the map is not read: nothing is
    /// visited, and the request is as [`RequestRepr::parse_preamble`] leaves it (`group` and
    /// other attachments are found by a scan when asked). Also returns where the map's
    /// entries start (after its `H`, or its `M` and type): an entry written there joins the
    /// map ([`super::encode::insert_attachment_into`]). `None` when the body has no map.
    #[inline]
    pub fn parse_visiting_if(
        body: &'a [u8],
        may_hold: impl FnOnce(&'a [u8]) -> bool,
        mut visit: impl FnMut(&'a [u8], Scalar<'a>),
    ) -> Result<(RequestRepr<'a>, Option<usize>), DecodeError> {
        let (mut req, mut r) = Self::preamble(body)?;
        for _ in 0..req.argument_count {
            r.skip_value()?;
        }
        if !matches!(r.peek(), None | Some(crate::hessian2::tag::NULL))
            && !may_hold(body.get(r.position()..).unwrap_or_default())
        {
            r.read_map_begin()?;
            return Ok((req, Some(r.position())));
        }
        req.preamble_only = false;
        let attachments_need_arguments = r.class_defs() > 0 || r.types() > 0;
        let mut group = None;
        let mut attachments_end = None;
        let mut entries = None;
        let attachments_offset = match r.peek() {
            None => None,
            Some(crate::hessian2::tag::NULL) => None,
            Some(_) => {
                let offset = r.position();
                r.read_map_begin()?;
                entries = Some(r.position());
                loop {
                    let at = r.position();
                    if r.read_end() {
                        attachments_end = Some(at);
                        break;
                    }
                    let key = r.read_value()?;
                    let value = r.read_value()?;
                    if let Scalar::Str(key) = key {
                        if let (b"group", Scalar::Str(value)) = (key, value) {
                            group = Some(value);
                        }
                        visit(key, value);
                    }
                }
                Some(offset)
            }
        };
        let req = RequestRepr {
            group,
            attachments_offset,
            attachments_need_arguments,
            attachments_end,
            ..req
        };
        Ok((req, entries))
    }

    /// Parses only the five leading strings of a request body (and the parameter count from
    /// the descriptor); arguments and attachments are read, and checked, when asked for. For
    /// routing on interface, version and method: a call with a few short attachments costs
    /// about half the instructions of [`Self::parse`].
    #[inline]
    pub fn parse_preamble(body: &'a [u8]) -> Result<RequestRepr<'a>, DecodeError> {
        Self::preamble(body).map(|(req, _)| req)
    }

    // Inlined into its callers (which the Dubbo filter inlines into its frame handler): the
    // request and the reader it returns are then built in place, not moved out through
    // `Result`s (~190 bytes each; callgrind: ~64 instructions a request, parse_visiting_if's
    // ~98).
    #[inline(always)]
    fn preamble(body: &'a [u8]) -> Result<(RequestRepr<'a>, Reader<'a>), DecodeError> {
        let mut r = Reader::new(body);
        let dubbo_version = routing_string(&mut r, "dubbo version")?;
        let interface = routing_string(&mut r, "interface")?;
        let version = routing_string(&mut r, "version")?;
        let method = routing_string(&mut r, "method")?;
        let descriptor = routing_string(&mut r, "parameter types")?;
        let argument_count = argument_count(descriptor)?;
        let req = RequestRepr {
            body,
            dubbo_version,
            interface,
            version,
            method,
            descriptor,
            group: None,
            argument_count,
            arguments_offset: r.position(),
            attachments_offset: None,
            attachments_need_arguments: false,
            preamble_only: true,
            attachments_end: None,
        };
        Ok((req, r))
    }

    /// The dubbo protocol version the consumer speaks, e.g. `2.0.2`.
    pub fn dubbo_version(&self) -> &'a [u8] {
        self.dubbo_version
    }

    /// The service path, normally the interface name (`com.example.DemoService`).
    pub fn interface(&self) -> &'a [u8] {
        self.interface
    }

    /// The service version; empty if none was sent.
    pub fn version(&self) -> &'a [u8] {
        self.version
    }

    pub fn method(&self) -> &'a [u8] {
        self.method
    }

    /// The parameter types as sent, e.g. `Ljava/lang/String;I`.
    pub fn descriptor(&self) -> &'a [u8] {
        self.descriptor
    }

    /// Each parameter type of the descriptor, e.g. `Ljava/lang/String;`, `I`, `[J`.
    pub fn argument_types(&self) -> ArgumentTypes<'a> {
        ArgumentTypes {
            descriptor: self.descriptor,
            index: 0,
        }
    }

    pub fn argument_count(&self) -> usize {
        self.argument_count
    }

    /// The `group` attachment, when it is a string. Found by `parse`: no scan (after
    /// `parse_preamble`: a scan).
    pub fn group(&self) -> Option<&'a [u8]> {
        if self.preamble_only {
            return self.attachments().find_map(|(k, v)| match (k, v) {
                (b"group", Scalar::Str(v)) => Some(v),
                _ => None,
            });
        }
        self.group
    }

    /// A string attachment's value. `group` is remembered by `parse`; other keys scan the map.
    pub fn attachment(&self, key: &[u8]) -> Option<&'a [u8]> {
        if key == b"group" {
            return self.group();
        }
        match self.attachment_value(key)? {
            Scalar::Str(value) => Some(value),
            _ => None,
        }
    }

    /// An attachment's value of any type (lists, maps and objects read as `Composite`).
    pub fn attachment_value(&self, key: &[u8]) -> Option<Scalar<'a>> {
        self.attachments()
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value)
    }

    /// The `timeout` attachment in milliseconds, sent as a string or a number.
    pub fn timeout_ms(&self) -> Option<u64> {
        match self.attachment_value(b"timeout")? {
            Scalar::Str(s) => crate::hessian2::to_str(s)?.parse().ok(),
            Scalar::Int(n) => u64::try_from(n).ok(),
            Scalar::Long(n) => u64::try_from(n).ok(),
            _ => None,
        }
    }

    /// Every attachment with a string key, in wire order.
    pub fn attachments(&self) -> Attachments<'a> {
        if self.preamble_only {
            return self.attachments_after_arguments();
        }
        let Some(offset) = self.attachments_offset else {
            return Attachments {
                reader: None,
                end: None,
            };
        };
        let reader = if self.attachments_need_arguments {
            let mut r = Reader::with_position(self.body, self.arguments_offset);
            (0..self.argument_count)
                .try_for_each(|_| r.skip_value())
                .ok()
                .map(|_| r)
        } else {
            Some(Reader::with_position(self.body, offset))
        };
        let reader = reader.and_then(|mut r| r.read_map_begin().ok().map(|_| r));
        Attachments { reader, end: None }
    }

    /// The attachments, found by skipping the arguments (after `parse_preamble`). None when
    /// the body ends after them or sends null; a map that does not start cleanly reads as none.
    fn attachments_after_arguments(&self) -> Attachments<'a> {
        let mut r = Reader::with_position(self.body, self.arguments_offset);
        let reader = (0..self.argument_count)
            .try_for_each(|_| r.skip_value())
            .ok()
            .filter(|_| !matches!(r.peek(), None | Some(crate::hessian2::tag::NULL)))
            .and_then(|_| r.read_map_begin().ok().map(|_| r));
        Attachments { reader, end: None }
    }

    /// Where the attachments map's end marker (`Z`) is in the body: an attachment added before
    /// it ([`super::encode::insert_attachment`]) joins the map. `None` when the body has no
    /// attachments map or it cannot be read to its end.
    pub fn attachments_end(&self) -> Option<usize> {
        if self.attachments_end.is_some() {
            // Found by `parse`.
            return self.attachments_end;
        }
        let mut it = self.attachments();
        it.by_ref().for_each(drop);
        it.end()
    }

    /// The offset of `value` (a slice this request returned, e.g. an attachment's string) in
    /// the body; `None` for a slice of other memory.
    pub fn offset_of(&self, value: &[u8]) -> Option<usize> {
        let start = self.body.as_ptr() as usize;
        let at = (value.as_ptr() as usize).checked_sub(start)?;
        (at + value.len() <= self.body.len()).then_some(at)
    }

    /// The argument at `index` (0-based): `Ok(None)` past the last one; scalars in place, other
    /// values as `Composite`. Scans the arguments before it.
    pub fn argument(&self, index: usize) -> Result<Option<Scalar<'a>>, DecodeError> {
        if index >= self.argument_count {
            return Ok(None);
        }
        let mut r = Reader::with_position(self.body, self.arguments_offset);
        for _ in 0..index {
            r.skip_value()?;
        }
        r.read_value().map(Some)
    }
}

/// Reads one of the five leading strings, borrowed.
fn routing_string<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a [u8], DecodeError> {
    let tag = r.peek().unwrap_or(0);
    match r.read_value() {
        Ok(Scalar::Str(s)) => Ok(s),
        Ok(Scalar::Null) => Ok(&[]),
        Ok(Scalar::StrChunked(_)) => Err(DecodeError::ChunkedField { field }),
        Ok(_) => Err(DecodeError::NotAString { field, tag }),
        Err(e) => Err(e),
    }
}

/// Iterator over attachments with string keys: `(key, value)`.
#[derive(Clone, Debug)]
pub struct Attachments<'a> {
    reader: Option<Reader<'a>>,
    /// Where the map's end marker is, once the iterator reached it.
    end: Option<usize>,
}

impl Attachments<'_> {
    /// The body offset of the map's end marker (`Z`), once the iteration has ended there
    /// (`None` before, or when the map could not be read to its end): where
    /// [`super::encode::insert_attachment`] adds an entry, found without a second scan.
    pub fn end(&self) -> Option<usize> {
        self.end
    }
}

impl<'a> Iterator for Attachments<'a> {
    type Item = (&'a [u8], Scalar<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let r = self.reader.as_mut()?;
            let at = r.position();
            if r.read_end() {
                self.reader = None;
                self.end = Some(at);
                return None;
            }
            let entry = r.read_value().and_then(|k| Ok((k, r.read_value()?)));
            match entry {
                Ok((Scalar::Str(key), value)) => return Some((key, value)),
                Ok(_) => continue,
                Err(_) => {
                    self.reader = None;
                    return None;
                }
            }
        }
    }
}

/// Iterator over the parameter types of a JVM descriptor list.
#[derive(Clone, Debug)]
pub struct ArgumentTypes<'a> {
    descriptor: &'a [u8],
    index: usize,
}

impl<'a> Iterator for ArgumentTypes<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.index;
        let end = next_type(self.descriptor, start).ok()??;
        self.index = end;
        self.descriptor.get(start..end)
    }
}

/// Counts the field descriptors (JVMS §4.3.2) in `descriptor`.
pub fn argument_count(descriptor: &[u8]) -> Result<usize, DecodeError> {
    let mut count = 0;
    let mut index = 0;
    while let Some(end) = next_type(descriptor, index)? {
        count += 1;
        if count > ARGUMENTS_MAX {
            return Err(DecodeError::TooManyArguments {
                limit: ARGUMENTS_MAX,
            });
        }
        index = end;
    }
    Ok(count)
}

/// The end of the field descriptor starting at `start`, or `None` at the end of the list.
fn next_type(descriptor: &[u8], start: usize) -> Result<Option<usize>, DecodeError> {
    let mut i = start;
    while descriptor.get(i) == Some(&b'[') {
        i += 1;
    }
    match descriptor.get(i) {
        None if i == start => Ok(None),
        Some(b'Z' | b'B' | b'C' | b'S' | b'I' | b'J' | b'F' | b'D') => Ok(Some(i + 1)),
        Some(b'L') => {
            let name = descriptor.get(i + 1..).unwrap_or(&[]);
            match name.iter().position(|&b| b == b';') {
                Some(len) if len > 0 => Ok(Some(i + 1 + len + 1)),
                _ => Err(DecodeError::BadDescriptor { index: i }),
            }
        }
        _ => Err(DecodeError::BadDescriptor { index: i }),
    }
}
