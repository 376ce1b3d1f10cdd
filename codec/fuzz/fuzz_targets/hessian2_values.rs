//! The Hessian2 reader over arbitrary bytes: reading values in sequence must never panic, each
//! read must move forward, and chunked values must iterate.
#![no_main]

use codec::hessian2::{Reader, Scalar};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = Reader::new(data);
    while !reader.is_empty() {
        let before = reader.position();
        match reader.read_value() {
            Ok(Scalar::StrChunked(c) | Scalar::BinaryChunked(c)) => {
                let mut out = Vec::new();
                c.copy_to(&mut out);
            }
            Ok(_) => {}
            Err(_) => break,
        }
        assert!(reader.position() > before);
    }
    let _ = codec::hessian2::skip_value(data);
});
