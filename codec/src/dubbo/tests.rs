//! Header, frame decoding and encoder tests, including malformed input and property tests.

use bytes::BytesMut;
use proptest::prelude::*;

use super::encode::{self, Arg, RequestBuilder};
use super::request::{RequestRepr, Scalar};
use super::response::{ResponseKind, ResponseRepr};
use super::*;

fn sample_header() -> HeaderRepr {
    HeaderRepr {
        flags: Flags {
            request: true,
            two_way: true,
            event: false,
        },
        serialization: Serialization::Hessian2,
        status: Status::Unknown(0),
        request_id: 0x0102_0304_0506_0708,
        body_bytes: 5,
    }
}

#[test]
fn header_emit_layout() {
    let bytes = sample_header().to_bytes();
    assert_eq!(
        bytes,
        [0xda, 0xbb, 0xc2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 5]
    );
}

#[test]
fn header_parse() {
    let bytes = [0xda, 0xbb, 0x22, 20, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 1, 0];
    let repr = HeaderRepr::parse(&Header::new_checked(&bytes[..]).unwrap()).unwrap();
    assert!(!repr.flags.request && !repr.flags.two_way && repr.flags.event);
    assert_eq!(repr.serialization, Serialization::Hessian2);
    assert_eq!(repr.status, Status::Ok);
    assert_eq!(repr.request_id, 9);
    assert_eq!(repr.body_bytes, 256);
    assert_eq!(repr.frame_bytes(), 272);
}

#[test]
fn header_unknown_values_pass_through() {
    let mut bytes = sample_header().to_bytes();
    bytes[2] = 0x80 | 31;
    bytes[3] = 77;
    let repr = HeaderRepr::parse(&Header::new_checked(&bytes[..]).unwrap()).unwrap();
    assert_eq!(repr.serialization, Serialization::Unknown(31));
    assert_eq!(repr.status, Status::Unknown(77));
    assert_eq!(repr.to_bytes(), bytes);
}

#[test]
fn header_rejects_short_buffer_and_bad_magic() {
    assert_eq!(
        Header::new_checked(&[0xda, 0xbb][..]).unwrap_err(),
        DecodeError::HeaderTruncated { len: 2 }
    );
    let mut bytes = sample_header().to_bytes();
    bytes[1] = 0xbc;
    assert_eq!(
        HeaderRepr::parse(&Header::new_checked(&bytes[..]).unwrap()).unwrap_err(),
        DecodeError::BadMagic { seen: [0xda, 0xbc] }
    );
}

#[test]
fn enums_round_trip() {
    for raw in 0..=255u8 {
        assert_eq!(u8::from(Status::from(raw)), raw);
        assert_eq!(u8::from(Serialization::from(raw)), raw);
    }
    assert_eq!(Serialization::from(2), Serialization::Hessian2);
    assert_eq!(Serialization::from(25), Serialization::Kryo2);
    assert_eq!(Status::from(100), Status::ServerThreadpoolExhausted);
}

#[test]
fn decode_frame_needs_more_then_splits() {
    let frame = heartbeat_request_bytes(7);
    let mut buf = BytesMut::new();
    assert!(matches!(
        decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT),
        Ok(Decoded::NeedMore(HEADER_BYTES))
    ));
    buf.extend_from_slice(&frame[..10]);
    assert!(matches!(
        decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT),
        Ok(Decoded::NeedMore(6))
    ));
    buf.extend_from_slice(&frame[10..16]);
    assert!(matches!(
        decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT),
        Ok(Decoded::NeedMore(1))
    ));
    buf.extend_from_slice(&frame[16..]);
    buf.extend_from_slice(&frame[..3]);
    let Ok(Decoded::Frame(f)) = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT) else {
        panic!("no frame");
    };
    assert_eq!(&f.bytes[..], &frame[..]);
    assert_eq!(f.header.request_id, 7);
    assert_eq!(f.body(), b"N");
    assert_eq!(buf.len(), 3);
}

fn heartbeat_request_bytes(id: u64) -> Vec<u8> {
    encode::heartbeat_request(id).to_vec()
}

#[test]
fn decode_frame_rejects_bad_magic_early() {
    let mut buf = BytesMut::from(&b"G"[..]);
    assert_eq!(
        decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap_err(),
        DecodeError::BadMagic { seen: [b'G', 0xbb] }
    );
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    let err = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap_err();
    assert_eq!(err, DecodeError::BadMagic { seen: *b"GE" });
    assert!(!err.resync_possible());
    assert_eq!(err.request_id(), None);
    assert_eq!(buf.len(), 18, "buffer untouched on error");
}

#[test]
fn decode_frame_rejects_oversize_from_header_alone() {
    let mut header = sample_header();
    header.body_bytes = u32::MAX;
    let mut buf = BytesMut::from(&header.to_bytes()[..]);
    let err = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap_err();
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            request_id: header.request_id,
            frame_bytes: u64::from(u32::MAX) + 16,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
        }
    );
    assert_eq!(err.request_id(), Some(header.request_id));
    // The limit counts the header: a frame of exactly the limit passes.
    header.body_bytes = 100;
    let mut buf = BytesMut::from(&header.to_bytes()[..]);
    assert!(matches!(
        decode_frame(&mut buf, 116),
        Ok(Decoded::NeedMore(100))
    ));
    assert!(decode_frame(&mut buf, 115).is_err());
}

#[test]
fn set_request_id_patches_in_place() {
    let mut frame = encode::heartbeat_request(1).to_vec();
    assert!(set_request_id(&mut frame, u64::MAX - 1));
    let repr = HeaderRepr::parse(&Header::new_checked(&frame[..]).unwrap()).unwrap();
    assert_eq!(repr.request_id, u64::MAX - 1);
    assert!(!set_request_id(&mut [0u8; 11], 5));
}

#[test]
fn events() {
    let hb = encode::heartbeat_request(3);
    assert!(is_heartbeat(&hb));
    assert!(!is_readonly_event(&hb));
    let hb = encode::heartbeat_response(3);
    assert!(is_heartbeat(&hb));
    assert_eq!(hb[3], 20);
    let ro = encode::readonly_event(4);
    assert!(is_readonly_event(&ro));
    assert!(!is_heartbeat(&ro));
    assert_eq!(ro[2], 0xa2, "one-way event request, hessian2");
    assert_eq!(&ro[HEADER_BYTES..], &[0x01, b'R']);
    let req = RequestBuilder::new("a.B", "m").build();
    assert!(!is_heartbeat(&req) && !is_readonly_event(&req));
    assert_eq!(
        EventRepr::parse(
            &HeaderRepr::parse(&Header::new_checked(&req[..]).unwrap()).unwrap(),
            &req[HEADER_BYTES..]
        ),
        None
    );
    let mut event = sample_header();
    event.flags.event = true;
    for (body, want) in [
        (&b"\x01H"[..], EventRepr::Heartbeat),
        (b"\x01W", EventRepr::Writeable),
        (b"", EventRepr::Heartbeat),
        (b"\x01X", EventRepr::Other),
        (b"\x91", EventRepr::Other),
        (b"\xff", EventRepr::Other),
    ] {
        assert_eq!(EventRepr::parse(&event, body), Some(want), "{body:02x?}");
    }
    event.serialization = Serialization::Protobuf;
    assert_eq!(EventRepr::parse(&event, b""), Some(EventRepr::Heartbeat));
    assert_eq!(
        EventRepr::parse(&event, b"\x0a\x01H"),
        Some(EventRepr::Other)
    );
    assert!(!is_heartbeat(&[0xda]));
}

#[test]
fn request_builder_round_trip() {
    let args = [
        Arg::Str("hello"),
        Arg::Int(42),
        Arg::Long(-7),
        Arg::Bool(true),
    ];
    let frame = RequestBuilder::new("com.example.DemoService", "sayHello")
        .request_id(99)
        .version("1.0.0")
        .group("blue")
        .timeout_ms(3000)
        .args(&args)
        .attachments(&[("tenant", "acme")])
        .build();
    let mut buf = BytesMut::from(&frame[..]);
    let Ok(Decoded::Frame(f)) = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT) else {
        panic!("no frame");
    };
    assert_eq!(f.header.request_id, 99);
    assert!(f.header.flags.request && f.header.flags.two_way && !f.header.flags.event);
    let req = RequestRepr::parse(f.body()).unwrap();
    assert_eq!(req.dubbo_version(), b"2.0.2");
    assert_eq!(req.interface(), b"com.example.DemoService");
    assert_eq!(req.version(), b"1.0.0");
    assert_eq!(req.method(), b"sayHello");
    assert_eq!(req.descriptor(), b"Ljava/lang/String;IJZ");
    assert_eq!(req.argument_count(), 4);
    assert_eq!(
        req.argument_types().collect::<Vec<_>>(),
        [&b"Ljava/lang/String;"[..], b"I", b"J", b"Z"]
    );
    assert_eq!(req.group(), Some(&b"blue"[..]));
    assert_eq!(req.attachment(b"group"), Some(&b"blue"[..]));
    assert_eq!(req.attachment(b"tenant"), Some(&b"acme"[..]));
    assert_eq!(
        req.attachment(b"path"),
        Some(&b"com.example.DemoService"[..])
    );
    assert_eq!(req.attachment(b"missing"), None);
    assert_eq!(req.timeout_ms(), Some(3000));
    assert_eq!(req.argument(0).unwrap(), Some(Scalar::Str(b"hello")));
    assert_eq!(req.argument(1).unwrap(), Some(Scalar::Int(42)));
    assert_eq!(req.argument(2).unwrap(), Some(Scalar::Long(-7)));
    assert_eq!(req.argument(3).unwrap(), Some(Scalar::Bool(true)));
    assert_eq!(req.argument(4).unwrap(), None);
    assert_eq!(RequestRepr::parse_frame(&frame).unwrap(), req);
}

#[test]
fn responses_round_trip() {
    let ok = encode::response_ok(5, &Arg::Str("hi"), None);
    let header = HeaderRepr::parse(&Header::new_checked(&ok[..]).unwrap()).unwrap();
    let resp = ResponseRepr::parse(&header, &ok[HEADER_BYTES..]).unwrap();
    assert_eq!(resp.status, Status::Ok);
    assert_eq!(resp.kind, Some(ResponseKind::Value));
    assert_eq!(resp.value().unwrap(), Some(Scalar::Str(b"hi")));

    let ok = encode::response_ok(5, &Arg::Null, Some(&[("dubbo", "2.0.2")]));
    let header = HeaderRepr::parse(&Header::new_checked(&ok[..]).unwrap()).unwrap();
    let resp = ResponseRepr::parse(&header, &ok[HEADER_BYTES..]).unwrap();
    assert_eq!(resp.kind, Some(ResponseKind::NullValueWithAttachments));
    assert_eq!(resp.value().unwrap(), None);

    let hb = encode::heartbeat_response(5);
    let header = HeaderRepr::parse(&Header::new_checked(&hb[..]).unwrap()).unwrap();
    let resp = ResponseRepr::parse(&header, &hb[HEADER_BYTES..]).unwrap();
    assert_eq!((resp.kind, resp.error_message), (None, None));

    let err = encode::response_error(6, Status::ServiceNotFound, "no provider for a.B");
    let header = HeaderRepr::parse(&Header::new_checked(&err[..]).unwrap()).unwrap();
    assert_eq!(header.status, Status::ServiceNotFound);
    assert!(!header.flags.request);
    let resp = ResponseRepr::parse(&header, &err[HEADER_BYTES..]).unwrap();
    assert_eq!(resp.kind, None);
    assert_eq!(resp.error_message, Some(&b"no provider for a.B"[..]));
}

#[test]
fn non_hessian2_body_is_opaque() {
    let mut header = sample_header();
    header.serialization = Serialization::Protobuf;
    header.body_bytes = 3;
    let mut buf = BytesMut::from(&header.to_bytes()[..]);
    buf.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    let Ok(Decoded::Frame(f)) = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT) else {
        panic!("no frame");
    };
    assert_eq!(f.header.serialization, Serialization::Protobuf);
    assert_eq!(
        RequestRepr::parse_frame(&f.bytes).unwrap_err(),
        DecodeError::NotHessian2 { serialization: 22 }
    );
}

fn header_strategy() -> impl Strategy<Value = HeaderRepr> {
    (
        any::<[bool; 3]>(),
        0u8..32,
        any::<u8>(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(f, ser, status, id, len)| HeaderRepr {
            flags: Flags {
                request: f[0],
                two_way: f[1],
                event: f[2],
            },
            serialization: Serialization::from(ser),
            status: Status::from(status),
            request_id: id,
            body_bytes: len,
        })
}

fn frames_strategy() -> impl Strategy<Value = Vec<u8>> {
    let frame = (
        any::<u64>(),
        "[a-zA-Z.]{1,40}",
        "[a-z]{1,20}",
        proptest::option::of("[a-z0-9]{0,10}"),
        0u8..4,
        "\\PC{0,20}",
    )
        .prop_map(|(id, interface, method, group, kind, text)| match kind {
            0 => {
                let args = [Arg::Str(&text), Arg::Long(id as i64)];
                let mut b = RequestBuilder::new(&interface, &method)
                    .request_id(id)
                    .args(&args);
                if let Some(group) = group.as_deref() {
                    b = b.group(group);
                }
                b.build().to_vec()
            }
            1 => encode::response_ok(id, &Arg::Str(&text), None).to_vec(),
            2 => encode::heartbeat_request(id).to_vec(),
            _ => encode::response_error(id, Status::ServerError, &text).to_vec(),
        });
    proptest::collection::vec(frame, 1..6).prop_map(|frames| frames.concat())
}

fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, DecodeError> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT)? {
                Decoded::Frame(f) => frames.push(f.bytes.to_vec()),
                Decoded::NeedMore(n) => {
                    assert!(n > 0);
                    break;
                }
            }
        }
    }
    assert!(buf.is_empty());
    Ok(frames)
}

proptest! {
    #[test]
    fn header_emit_parse_round_trip(repr in header_strategy()) {
        let bytes = repr.to_bytes();
        let parsed = HeaderRepr::parse(&Header::new_checked(&bytes[..]).unwrap()).unwrap();
        prop_assert_eq!(parsed, repr);
    }

    #[test]
    fn every_chunking_decodes_the_same(stream in frames_strategy(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let whole = decode_all(&[&stream]).unwrap();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&stream[last..p]);
            last = p;
        }
        chunks.push(&stream[last..]);
        prop_assert_eq!(decode_all(&chunks).unwrap(), whole.clone());
        // Byte by byte too, with exact NeedMore once the header is known.
        let singles: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(decode_all(&singles).unwrap(), whole);
    }

    #[test]
    fn need_more_is_exact_after_header(stream in frames_strategy()) {
        let total = HeaderRepr::parse(&Header::new_checked(&stream[..]).unwrap()).unwrap().frame_bytes() as usize;
        for have in HEADER_BYTES..total {
            let mut buf = BytesMut::from(&stream[..have]);
            let got = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap();
            prop_assert!(matches!(got, Decoded::NeedMore(n) if n == total - have));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), max in 0usize..512) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode_frame(&mut buf, max);
        let _ = RequestRepr::parse(&bytes);
        let _ = is_readonly_event(&bytes);
        if let Ok(h) = Header::new_checked(&bytes[..]) {
            if let Ok(h) = HeaderRepr::parse(&h) {
                let _ = ResponseRepr::parse(&h, &bytes[HEADER_BYTES..]);
            }
        }
    }

    #[test]
    fn arbitrary_header_then_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 16..256)) {
        bytes[0] = 0xda;
        bytes[1] = 0xbb;
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT);
        let _ = RequestRepr::parse_frame(&bytes);
    }
}

/// A request body written by hand: preamble strings, `args` already encoded, then `attachments`.
fn body(preamble: [&str; 5], args: &[u8], attachments: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = crate::hessian2::Writer::new(&mut out);
    for s in preamble {
        w.string(s);
    }
    w.raw(args).raw(attachments);
    out
}

const PREAMBLE: [&str; 5] = ["2.0.2", "a.B", "1.0", "m", "La/Dto;"];

#[test]
fn request_attachments_see_class_defs_from_arguments() {
    // Argument: an object of class a.Dto { x }. Attachment "dto" is another object of the same
    // class definition (index 0), which a scan from the map alone would not know.
    let arg = b"C\x05a.Dto\x91\x01x\x60\x95";
    let map = b"H\x03dto\x60\x96\x05group\x04blue\x06tenant\x04acmeZ";
    let body = body(PREAMBLE, arg, map);
    let req = RequestRepr::parse(&body).unwrap();
    assert_eq!(req.group(), Some(&b"blue"[..]));
    assert_eq!(req.attachment(b"tenant"), Some(&b"acme"[..]));
    assert_eq!(req.attachment_value(b"dto"), Some(Scalar::Composite));
    assert_eq!(req.attachments().count(), 3);
    assert_eq!(req.argument(0).unwrap(), Some(Scalar::Composite));
}

#[test]
fn preamble_only_requests_read_arguments_and_attachments_when_asked() {
    // The same body as above: class definitions in the arguments that the attachments use.
    let arg = b"C\x05a.Dto\x91\x01x\x60\x95";
    let map = b"H\x03dto\x60\x96\x05group\x04blue\x06tenant\x04acmeZ";
    let b = body(PREAMBLE, arg, map);
    let full = RequestRepr::parse(&b).unwrap();
    let lazy = RequestRepr::parse_preamble(&b).unwrap();
    assert_eq!(lazy.interface(), full.interface());
    assert_eq!(lazy.version(), full.version());
    assert_eq!(lazy.method(), full.method());
    assert_eq!(lazy.argument_count(), 1);
    assert_eq!(lazy.group(), Some(&b"blue"[..]));
    assert_eq!(lazy.attachment(b"group"), Some(&b"blue"[..]));
    assert_eq!(lazy.attachment(b"tenant"), Some(&b"acme"[..]));
    assert_eq!(lazy.attachment_value(b"dto"), Some(Scalar::Composite));
    assert_eq!(lazy.attachments().count(), 3);
    assert_eq!(lazy.attachments_end(), full.attachments_end());
    assert!(lazy.attachments_end().is_some());
    assert_eq!(lazy.argument(0).unwrap(), Some(Scalar::Composite));
    // No attachments, or a null map.
    for b in [body(PREAMBLE, b"N", b""), body(PREAMBLE, b"N", b"N")] {
        let lazy = RequestRepr::parse_preamble(&b).unwrap();
        assert_eq!(lazy.attachments().count(), 0);
        assert_eq!(lazy.group(), None);
        assert_eq!(lazy.attachments_end(), None);
    }
    // Broken after the preamble: `parse` refuses it, `parse_preamble` routes it and finds
    // no attachments in it.
    let broken = body(PREAMBLE, b"N", b"H\x05group\x45");
    assert!(RequestRepr::parse(&broken).is_err());
    let lazy = RequestRepr::parse_preamble(&broken).unwrap();
    assert_eq!(lazy.interface(), b"a.B");
    assert_eq!(lazy.group(), None);
    // Broken in the preamble: both refuse it.
    let bad = body(["2.0.2", "a.B", "1.0", "m", "Lx"], b"N", b"HZ");
    assert!(RequestRepr::parse(&bad).is_err());
    assert!(RequestRepr::parse_preamble(&bad).is_err());
}

#[test]
fn request_lenient_forms() {
    // Null version, typed attachments map, numeric timeout, no group.
    let mut b = Vec::new();
    let mut w = crate::hessian2::Writer::new(&mut b);
    w.string("2.0.2")
        .string("a.B")
        .null()
        .string("m")
        .string("I")
        .int(1);
    w.map_typed_begin("java.util.HashMap")
        .string("timeout")
        .int(250)
        .end();
    let req = RequestRepr::parse(&b).unwrap();
    assert_eq!(req.version(), b"");
    assert_eq!(req.timeout_ms(), Some(250));
    assert_eq!(req.group(), None);
    // No attachments at all, or a null map.
    let b1 = body(PREAMBLE, b"N", b"");
    let req = RequestRepr::parse(&b1).unwrap();
    assert_eq!(req.attachments().count(), 0);
    let b2 = body(PREAMBLE, b"N", b"N");
    let req = RequestRepr::parse(&b2).unwrap();
    assert_eq!(req.attachment(b"group"), None);
    // No arguments.
    let b3 = body(["2.0.2", "a.B", "", "m", ""], b"", b"HZ");
    let req = RequestRepr::parse(&b3).unwrap();
    assert_eq!(req.argument_count(), 0);
    assert_eq!(req.argument(0).unwrap(), None);
}

#[test]
fn request_chunked_values() {
    let long = "g".repeat(crate::hessian2::CHUNK_MAX + 1);
    let mut map = Vec::new();
    crate::hessian2::Writer::new(&mut map)
        .map_begin()
        .string("group")
        .string(&long)
        .end();
    let b1 = body(PREAMBLE, b"N", &map);
    let req = RequestRepr::parse(&b1).unwrap();
    // A chunked group cannot be borrowed as one slice: not a routing match.
    assert_eq!(req.group(), None);
    let Some(Scalar::StrChunked(chunks)) = req.attachment_value(b"group") else {
        panic!("not chunked");
    };
    let mut out = Vec::new();
    chunks.copy_to(&mut out);
    assert_eq!(out, long.as_bytes());

    let body = body(["2.0.2", &long, "", "m", ""], b"", b"HZ");
    assert_eq!(
        RequestRepr::parse(&body).unwrap_err(),
        DecodeError::ChunkedField { field: "interface" }
    );
}

#[test]
fn request_malformed() {
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (
            vec![],
            DecodeError::Truncated {
                what: "value",
                offset: 0,
            },
        ),
        (
            b"\x052.0.2\x91".to_vec(),
            DecodeError::NotAString {
                field: "interface",
                tag: 0x91,
            },
        ),
        (
            body(["2.0.2", "a.B", "", "m", "Ljava/lang/String"], b"", b""),
            DecodeError::BadDescriptor { index: 0 },
        ),
        (
            body(["2.0.2", "a.B", "", "m", "IV"], b"", b""),
            DecodeError::BadDescriptor { index: 1 },
        ),
        (
            body(["2.0.2", "a.B", "", "m", "[[L;"], b"", b""),
            DecodeError::BadDescriptor { index: 2 },
        ),
        (
            body(["2.0.2", "a.B", "", "m", "I["], b"", b""),
            DecodeError::BadDescriptor { index: 2 },
        ),
        (
            body(["2.0.2", "a.B", "", "m", &"I".repeat(256)], b"", b""),
            DecodeError::TooManyArguments { limit: 255 },
        ),
        (
            body(["2.0.2", "a.B", "", "m", "II"], b"\x91", b""),
            DecodeError::Truncated {
                what: "value",
                offset: 17,
            },
        ),
    ];
    for (body, want) in cases {
        assert_eq!(RequestRepr::parse(&body).unwrap_err(), want, "{body:02x?}");
    }
    // Attachments that are not a map, and a map cut short.
    assert!(matches!(
        RequestRepr::parse(&body(PREAMBLE, b"N", b"\x91")),
        Err(DecodeError::UnexpectedTag { what: "map", .. })
    ));
    assert!(matches!(
        RequestRepr::parse(&body(PREAMBLE, b"N", b"H\x05group")),
        Err(DecodeError::Truncated { .. })
    ));
    // Every strict prefix of a valid body that cuts the preamble or arguments is an error.
    let frame = RequestBuilder::new("com.example.DemoService", "sayHello")
        .args(&[Arg::Str("x"), Arg::Int(1)])
        .group("g")
        .build();
    let full = &frame[HEADER_BYTES..];
    for len in 0..full.len() {
        let r = RequestRepr::parse(&full[..len]);
        // A cut exactly after the arguments is a valid request without attachments.
        if let Ok(req) = r {
            assert_eq!(req.group(), None, "prefix {len}");
        }
    }
}

#[test]
fn descriptors() {
    use super::request::argument_count;
    for (desc, n) in [
        ("", 0),
        ("I", 1),
        ("ZBCSIJFD", 8),
        ("[I", 1),
        ("[[Ljava/lang/String;J", 2),
        (
            "Ljava/lang/String;[Ljava/lang/String;[Ljava/lang/Object;",
            3,
        ),
    ] {
        assert_eq!(argument_count(desc.as_bytes()).unwrap(), n, "{desc}");
    }
}

#[test]
fn insert_attachment_joins_the_map() {
    let args = [Arg::Str("world"), Arg::Int(7)];
    let frame = RequestBuilder::new("com.example.Greeter", "sayHello")
        .version("1.0.0")
        .group("g1")
        .args(&args)
        .attachments(&[("tenant", "t1")])
        .build();
    let req = RequestRepr::parse_frame(&frame).unwrap();
    let end = req.attachments_end().unwrap();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let grown = encode::insert_attachment(&frame, end, "traceparent", tp).unwrap();
    let req2 = RequestRepr::parse_frame(&grown).unwrap();
    assert_eq!(req2.attachment(b"traceparent"), Some(tp.as_bytes()));
    assert_eq!(req2.attachment(b"tenant"), Some(&b"t1"[..]));
    assert_eq!(req2.group(), Some(&b"g1"[..]));
    assert_eq!(req2.argument(1).unwrap(), Some(Scalar::Int(7)));
    let h = HeaderRepr::parse(&Header::new_checked(&grown[..]).unwrap()).unwrap();
    assert_eq!(h.body_bytes as usize, grown.len() - HEADER_BYTES);
    assert_eq!(
        h.request_id,
        HeaderRepr::parse(&Header::new_checked(&frame[..]).unwrap())
            .unwrap()
            .request_id
    );
    // The value's offset lets a proxy patch it in place.
    let v = req2.attachment(b"traceparent").unwrap();
    let at = req2.offset_of(v).unwrap();
    assert_eq!(
        &grown[HEADER_BYTES + at..HEADER_BYTES + at + tp.len()],
        tp.as_bytes()
    );
    assert_eq!(req2.offset_of(b"elsewhere"), None);
    assert!(encode::insert_attachment(&frame, frame.len(), "k", "v").is_none());
}

#[test]
fn parse_visiting_if_skips_the_map_on_a_no_and_finds_its_entries() {
    let args = [Arg::Str("world"), Arg::Int(7)];
    let frame = RequestBuilder::new("com.example.Greeter", "sayHello")
        .version("1.0.0")
        .group("g1")
        .args(&args)
        .attachments(&[("tenant", "t1")])
        .build();
    let body = &frame[HEADER_BYTES..];
    let full = RequestRepr::parse(body).unwrap();
    // A yes: the same request and visits as parse_visiting; the entries start after the `H`.
    let mut seen = Vec::new();
    let (req, entries) =
        RequestRepr::parse_visiting_if(body, |_| true, |k, _| seen.push(k.to_vec())).unwrap();
    assert_eq!(req, full);
    assert_eq!(seen.len(), 5, "path, interface, version, group, tenant");
    let map_at = entries.unwrap() - 1;
    assert_eq!(body[map_at], b'H');
    // A no: `may_hold` sees the map's bytes to the end; nothing is visited, the map not read,
    // and the attachments are still found (by a scan).
    let mut looked = None;
    let (lazy, entries2) = RequestRepr::parse_visiting_if(
        body,
        |rest| {
            looked = Some(rest.len());
            false
        },
        |_, _| panic!("visited after a no"),
    )
    .unwrap();
    assert_eq!(looked, Some(body.len() - map_at));
    assert_eq!(entries2, entries);
    assert_eq!(lazy.interface(), full.interface());
    assert_eq!(lazy.group(), Some(&b"g1"[..]));
    assert_eq!(lazy.attachment(b"tenant"), Some(&b"t1"[..]));
    assert_eq!(lazy.attachments_end(), full.attachments_end());
    // An entry written where the entries start joins the map.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut grown = BytesMut::new();
    encode::insert_attachment_into(&mut grown, &frame, entries2.unwrap(), "traceparent", tp)
        .unwrap();
    let req2 = RequestRepr::parse_frame(&grown).unwrap();
    assert_eq!(req2.attachment(b"traceparent"), Some(tp.as_bytes()));
    assert_eq!(req2.attachment(b"tenant"), Some(&b"t1"[..]));
    assert_eq!(req2.group(), Some(&b"g1"[..]));
    assert_eq!(req2.argument(1).unwrap(), Some(Scalar::Int(7)));
    // Bad (here: cut) arguments are still an error on a no; a body without a map has no
    // entries.
    let Ok(Some(Scalar::Str(world))) = full.argument(0) else {
        panic!("first argument")
    };
    let world_at = full.offset_of(world).unwrap();
    let cut = &body[..world_at + 2];
    assert!(RequestRepr::parse_visiting_if(cut, |_| false, |_, _| {}).is_err());
    let no_map = &body[..map_at];
    let (_, none) = RequestRepr::parse_visiting_if(no_map, |_| false, |_, _| {}).unwrap();
    assert_eq!(none, None);
}
