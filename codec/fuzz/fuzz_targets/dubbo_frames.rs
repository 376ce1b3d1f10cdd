//! Frame decoding and every body reader over arbitrary bytes: must never panic, and feeding the
//! stream in pieces must decode exactly as feeding it whole. The first input byte picks the
//! piece size so the fuzzer explores chunkings too.
#![no_main]

use bytes::BytesMut;
use codec::dubbo::request::RequestRepr;
use codec::dubbo::response::ResponseRepr;
use codec::dubbo::{decode_frame, DecodeError, Decoded, EventRepr, HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer's inputs reach the limit.
const FRAME_BYTES_MAX: usize = 4096;

/// The frames decoded, and the kind of error that stopped decoding (a bad magic seen in pieces
/// names fewer bytes, so only the kind must match).
fn decode(
    pieces: &mut dyn Iterator<Item = &[u8]>,
) -> (Vec<Vec<u8>>, Option<std::mem::Discriminant<DecodeError>>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decode_frame(&mut buf, FRAME_BYTES_MAX) {
                Ok(Decoded::Frame(f)) => {
                    inspect(&f.header, f.body());
                    frames.push(f.bytes.to_vec());
                }
                Ok(Decoded::NeedMore(n)) => {
                    assert!(n > 0);
                    break;
                }
                Err(e) => return (frames, Some(std::mem::discriminant(&e))),
            }
        }
    }
    (frames, None)
}

fn inspect(header: &codec::dubbo::HeaderRepr, body: &[u8]) {
    let _ = EventRepr::parse(header, body);
    if header.flags.request {
        if let Ok(req) = RequestRepr::parse(body) {
            let _ = (req.interface(), req.version(), req.method(), req.group());
            let _ = req.timeout_ms();
            for i in 0..req.argument_count().min(8) {
                let _ = req.argument(i);
            }
            let _ = req.attachments().count();
            let _ = req.argument_types().count();
        }
    } else if let Ok(resp) = ResponseRepr::parse(header, body) {
        let _ = resp.value();
    }
    assert_eq!(header.frame_bytes() as usize, HEADER_BYTES + body.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let whole = decode(&mut std::iter::once(stream));
    let split = decode(&mut stream.chunks(piece));
    assert_eq!(whole, split);
});
