//! Writes the generated seeds of the fuzz corpora: frames made by the encoders, covering every
//! frame kind and Hessian2 value form. Real captured frames (tests/fixtures/*.bin) are added by
//! scripts/fuzz-codec. Usage: `cargo run -p codec --example fuzz_seeds -- codec/fuzz/corpus`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use codec::dubbo::encode::{self, Arg, RequestBuilder};
use codec::dubbo::Status;
use codec::hessian2::Writer;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "codec/fuzz/corpus".into());
    let dir = Path::new(&dir);

    let mut object_arg = Vec::new();
    Writer::new(&mut object_arg)
        .class_def("com.example.Order", &["id", "items", "note"])
        .object_begin(0)
        .long(1 << 40)
        .list_typed_begin("java.util.ArrayList", 2)
        .string("a")
        .double(2.5)
        .map_begin()
        .string("k")
        .binary(&[1, 2, 3])
        .end();
    let long_text = "x".repeat(40_000);
    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "request_typical",
            RequestBuilder::new("org.apache.dubbo.samples.api.GreetingService", "greet")
                .request_id(1)
                .version("1.0.0")
                .group("blue")
                .timeout_ms(3000)
                .args(&[Arg::Str("ringside"), Arg::Int(3)])
                .attachments(&[("remote.application", "demo")])
                .build()
                .to_vec(),
        ),
        (
            "request_object_arg",
            RequestBuilder::new("com.example.OrderService", "place")
                .request_id(2)
                .args(&[
                    Arg::Raw {
                        descriptor: "Lcom/example/Order;",
                        hessian2: &object_arg,
                    },
                    Arg::Bytes(&[0; 20]),
                    Arg::Long(-1),
                    Arg::Bool(false),
                    Arg::Null,
                ])
                .build()
                .to_vec(),
        ),
        (
            "request_unicode",
            RequestBuilder::new("com.example.Svc", "echo")
                .args(&[Arg::Str("héllo wörld \u{1f600}")])
                .group("グループ")
                .build()
                .to_vec(),
        ),
        (
            "request_chunked",
            RequestBuilder::new("com.example.Svc", "echo")
                .args(&[Arg::Str(&long_text)])
                .build()
                .to_vec(),
        ),
        (
            "response_value",
            encode::response_ok(1, &Arg::Str("hi"), None).to_vec(),
        ),
        (
            "response_attachments",
            encode::response_ok(1, &Arg::Int(7), Some(&[("dubbo", "2.0.2")])).to_vec(),
        ),
        (
            "response_error",
            encode::response_error(1, Status::ServiceNotFound, "no provider").to_vec(),
        ),
        ("heartbeat_request", encode::heartbeat_request(3).to_vec()),
        ("heartbeat_response", encode::heartbeat_response(3).to_vec()),
        ("readonly_event", encode::readonly_event(4).to_vec()),
    ];

    let frames_dir = dir.join("dubbo_frames");
    std::fs::create_dir_all(&frames_dir).expect("corpus dir");
    for (name, frame) in &frames {
        // The first byte is the piece size the target feeds the stream in.
        let mut seed = vec![7u8];
        seed.extend_from_slice(frame);
        if name != &"request_chunked" {
            // Two frames back to back, so the target sees a stream.
            seed.extend_from_slice(frame);
        }
        std::fs::write(frames_dir.join(name), seed).expect("write seed");
    }

    let values_dir = dir.join("hessian2_values");
    std::fs::create_dir_all(&values_dir).expect("corpus dir");
    for (name, frame) in &frames {
        if let Some(body) = frame.get(codec::dubbo::HEADER_BYTES..) {
            std::fs::write(values_dir.join(name), body).expect("write seed");
        }
    }
    let mut scalars = Vec::new();
    let mut w = Writer::new(&mut scalars);
    for i in [0, -16, 47, 48, -2048, 2047, 262_143, -262_144, i32::MAX] {
        w.int(i);
    }
    for l in [0, -8, 15, 2047, -262_144, 1 << 31, i64::MIN] {
        w.long(l);
    }
    for d in [0.0, 1.0, -128.0, 32767.0, 0.1] {
        w.double(d);
    }
    w.date_ms(894_621_091_000).null().bool(true).bool(false);
    w.list_variable_begin().int(1).end();
    w.list_begin(9);
    for _ in 0..9 {
        w.null();
    }
    w.map_typed_begin("java.util.HashMap")
        .string("a")
        .int(1)
        .end();
    w.reference(0);
    std::fs::write(values_dir.join("scalars"), &scalars).expect("write seed");
}
