//! HTTP/2 frame parsing over an arbitrary byte stream (after the preface), the way a
//! connection reads it: split frames by their 9-byte headers, then parse each payload by type.
//! Must never panic; every value parsed must write back (with the writers ringside sends its
//! own frames with) to the same bytes, and a header block written as HEADERS + CONTINUATION
//! must read back whole.
//!
//! Input: one byte choosing the largest frame we accept, then the frames.
#![no_main]

use codec::h2::frame::{self, flag, kind, FrameHeader, HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

const FRAME_MAX: [u32; 3] = [frame::FRAME_BYTES_DEFAULT, 1024, 100];

fn payload_of(out: &[u8]) -> (FrameHeader, &[u8]) {
    let h = FrameHeader::parse(out).expect("own frame has a header");
    let p = &out[HEADER_BYTES..];
    assert_eq!(p.len(), h.len as usize, "own frame length");
    (h, p)
}

fn check_frame(h: FrameHeader, payload: &[u8]) {
    let mut out = Vec::new();
    h.write(&mut out);
    assert_eq!(FrameHeader::parse(&out), Some(h));
    match h.kind {
        kind::DATA => {
            if let Ok(d) = frame::data_payload(h.flags, payload) {
                if h.flags & flag::PADDED == 0 {
                    assert_eq!(d, payload);
                } else {
                    assert_eq!(Some(d), payload.get(1..1 + d.len()));
                }
                let mut out = Vec::new();
                frame::write_data_header(&mut out, h.stream, d.len(), true);
                // The header only: the caller appends the data.
                let back = FrameHeader::parse(&out).expect("own frame has a header");
                assert_eq!(out.len(), HEADER_BYTES);
                assert_eq!((back.stream, back.len as usize), (h.stream, d.len()));
            }
        }
        kind::HEADERS => {
            if let Ok(f) = frame::headers_fragment(h.flags, payload) {
                assert!(f.len() <= payload.len());
                for max in [0, 10, frame::FRAME_BYTES_DEFAULT] {
                    write_headers_round_trip(h.stream, f, h.flags & flag::END_STREAM != 0, max);
                }
            }
        }
        kind::SETTINGS => {
            if let Ok(values) = frame::settings(payload) {
                let values: Vec<(u16, u32)> = values.collect();
                let mut out = Vec::new();
                frame::write_settings(&mut out, &values);
                let (back, p) = payload_of(&out);
                assert_eq!((back.kind, back.stream), (kind::SETTINGS, 0));
                assert_eq!(p, payload);
            }
        }
        kind::WINDOW_UPDATE => {
            if let Ok(inc) = frame::window_update(payload) {
                assert!(inc <= frame::WINDOW_LIMIT);
                let mut out = Vec::new();
                frame::write_window_update(&mut out, h.stream, inc);
                let (back, p) = payload_of(&out);
                assert_eq!(back.stream, h.stream);
                assert_eq!(frame::window_update(p), Ok(inc));
            }
        }
        kind::RST_STREAM => {
            if let Ok(c) = frame::rst_stream(payload) {
                let mut out = Vec::new();
                frame::write_rst_stream(&mut out, h.stream, c);
                let (_, p) = payload_of(&out);
                assert_eq!(p, payload);
            }
        }
        kind::GOAWAY => {
            if let Ok((last, c)) = frame::goaway(payload) {
                let debug = &payload[8..];
                let mut out = Vec::new();
                frame::write_goaway(&mut out, last, c, debug);
                let (_, p) = payload_of(&out);
                assert_eq!(frame::goaway(p), Ok((last, c)));
                assert_eq!(&p[8..], debug);
            }
        }
        kind::PING => {
            if let Ok(data) = <[u8; 8]>::try_from(payload) {
                let mut out = Vec::new();
                frame::write_ping(&mut out, h.flags & flag::ACK != 0, data);
                let (back, p) = payload_of(&out);
                assert_eq!(back.flags, h.flags & flag::ACK);
                assert_eq!(p, payload);
            }
        }
        _ => {}
    }
}

/// A block written as HEADERS + CONTINUATION frames reads back whole: END_STREAM on the
/// first frame only, END_HEADERS on the last only, no frame above the limit.
fn write_headers_round_trip(stream: u32, block: &[u8], end: bool, max: u32) {
    let mut out = Vec::new();
    frame::write_headers(&mut out, stream, block, end, max);
    let limit = max.max(frame::FRAME_BYTES_DEFAULT);
    let (mut rest, mut joined, mut first) = (&out[..], Vec::new(), true);
    loop {
        let h = FrameHeader::parse(rest).expect("own frame has a header");
        assert!(h.len <= limit);
        assert_eq!(h.stream, stream & frame::STREAM_ID_MAX);
        assert_eq!(
            h.kind,
            if first {
                kind::HEADERS
            } else {
                kind::CONTINUATION
            }
        );
        let end_flag = h.flags & flag::END_STREAM != 0;
        assert_eq!(end_flag, first && end);
        let total = HEADER_BYTES + h.len as usize;
        joined.extend_from_slice(&rest[HEADER_BYTES..total]);
        rest = &rest[total..];
        first = false;
        if h.flags & flag::END_HEADERS != 0 {
            break;
        }
    }
    assert!(rest.is_empty(), "bytes after END_HEADERS");
    assert_eq!(joined, block);
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let frame_max = FRAME_MAX[usize::from(pick) % FRAME_MAX.len()];
    while let Some(h) = FrameHeader::parse(rest) {
        if h.len > frame_max {
            return; // FRAME_SIZE_ERROR: the connection ends here
        }
        let total = HEADER_BYTES + h.len as usize;
        let Some(payload) = rest.get(HEADER_BYTES..total) else {
            return; // needs more bytes
        };
        check_frame(h, payload);
        rest = &rest[total..];
    }
});
