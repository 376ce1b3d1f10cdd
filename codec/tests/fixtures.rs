//! Real frames captured from node and python Dubbo peers (`tests/fixtures/*.bin`, one frame or a
//! stream of frames per file): each file must split into whole frames with nothing left over,
//! byte-by-byte feeding must give the same frames, and every Hessian2 body must read.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use bytes::BytesMut;
use codec::dubbo::request::RequestRepr;
use codec::dubbo::response::ResponseRepr;
use codec::dubbo::{decode_frame, Decoded, EventRepr, Serialization, FRAME_BYTES_MAX_DEFAULT};

fn fixtures() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

fn split(pieces: &mut dyn Iterator<Item = &[u8]>) -> Vec<BytesMut> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        while let Decoded::Frame(f) = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap() {
            frames.push(f.bytes);
        }
    }
    assert!(
        buf.is_empty(),
        "{} bytes left after the last frame",
        buf.len()
    );
    frames
}

#[test]
fn captured_frames_decode() {
    let files = fixtures();
    // Captured 2026-11-30 with tcpdump between the sofa-rpc-node / dubbo-ssl-python consumers
    // and the sofa-rpc-node provider (tests/peers): one direction of one connection per file.
    assert!(
        files.len() >= 16,
        "captured fixtures missing: {} files",
        files.len()
    );
    for (path, bytes) in files {
        let name = path.display();
        let frames = split(&mut std::iter::once(&bytes[..]));
        assert!(!frames.is_empty(), "{name}: no frame");
        assert_eq!(split(&mut bytes.chunks(1)), frames, "{name}: byte by byte");
        assert_eq!(split(&mut bytes.chunks(7)), frames, "{name}: 7-byte pieces");
        for frame in &frames {
            let mut buf = frame.clone();
            let Decoded::Frame(f) = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap() else {
                unreachable!()
            };
            let h = f.header;
            if h.serialization != Serialization::Hessian2 {
                continue;
            }
            if let Some(event) = EventRepr::parse(&h, f.body()) {
                eprintln!("{name}: id {} event {event:?}", h.request_id);
            } else if h.flags.request {
                let req = RequestRepr::parse(f.body())
                    .unwrap_or_else(|e| panic!("{name}: request {}: {e}", h.request_id));
                assert!(!req.interface().is_empty(), "{name}: empty interface");
                assert!(!req.method().is_empty(), "{name}: empty method");
                for i in 0..req.argument_count() {
                    req.argument(i).unwrap();
                }
                eprintln!(
                    "{name}: id {} {}:{} {} group {:?} args {} attachments {}",
                    h.request_id,
                    String::from_utf8_lossy(req.interface()),
                    String::from_utf8_lossy(req.version()),
                    String::from_utf8_lossy(req.method()),
                    req.group().map(String::from_utf8_lossy),
                    req.argument_count(),
                    req.attachments().count(),
                );
            } else {
                let resp = ResponseRepr::parse(&h, f.body())
                    .unwrap_or_else(|e| panic!("{name}: response {}: {e}", h.request_id));
                resp.value().unwrap();
                eprintln!(
                    "{name}: id {} {:?} {:?}",
                    h.request_id, resp.status, resp.kind
                );
            }
        }
    }
}
