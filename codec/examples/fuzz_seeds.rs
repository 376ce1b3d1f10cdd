//! Writes the generated seeds of the fuzz corpora: frames made by the encoders, covering every
//! frame kind and Hessian2 value form, and HTTP/2 frames and HPACK blocks (RFC 7541 Appendix C,
//! a gRPC call). Real captured Dubbo frames (tests/fixtures/*.bin) are added by scripts/fuzz.
//! Usage: `cargo run -p codec --example fuzz_seeds -- codec/fuzz/corpus`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use codec::dubbo::encode::{self, Arg, RequestBuilder};
use codec::dubbo::Status;
use codec::h2::frame::{self, flag, kind, FrameHeader};
use codec::h2::hpack;
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
    h2_seeds(dir);
}

fn write_seeds(dir: &Path, target: &str, seeds: &[(&str, Vec<u8>)]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus dir");
    for (name, seed) in seeds {
        std::fs::write(d.join(name), seed).expect("write seed");
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    FrameHeader {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    }
    .write(out);
    out.extend_from_slice(payload);
}

/// hpack_decode: a table-limit byte, then blocks with a 2-byte length each.
fn hpack_seed(limit_pick: u8, blocks: &[&[u8]]) -> Vec<u8> {
    let mut seed = vec![limit_pick];
    for b in blocks {
        seed.extend_from_slice(&(b.len() as u16).to_be_bytes());
        seed.extend_from_slice(b);
    }
    seed
}

/// The header blocks of one gRPC call, as a client and server encode them.
fn grpc_blocks() -> [Vec<u8>; 3] {
    let mut request = Vec::new();
    for (n, v) in [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/helloworld.Greeter/SayHello"),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"1S"),
    ] {
        hpack::encode_field(&mut request, n, v, false);
    }
    let mut response = Vec::new();
    hpack::encode_field(&mut response, b":status", b"200", false);
    hpack::encode_field(&mut response, b"content-type", b"application/grpc", false);
    let mut trailers = Vec::new();
    hpack::encode_field(&mut trailers, b"grpc-status", b"0", false);
    hpack::encode_field(&mut trailers, b"grpc-message", b"", false);
    [request, response, trailers]
}

fn h2_seeds(dir: &Path) {
    // RFC 7541 C.3 (no Huffman), C.4 (Huffman) requests, C.5 responses (table of 256 bytes).
    let c3 = [
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
    ]
    .map(unhex);
    let c4 = [
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ]
    .map(unhex);
    let c5 = [
        "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
        "4803333037c1c0bf",
        "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076657273696f6e3d31",
    ]
    .map(unhex);
    let [request, response, trailers] = grpc_blocks();
    let as_slices = |b: &[Vec<u8>]| -> Vec<u8> {
        let v: Vec<&[u8]> = b.iter().map(|x| &x[..]).collect();
        hpack_seed(2, &v)
    };
    let mut size_update = vec![0x3f, 0xe1, 0x1f];
    size_update.extend_from_slice(&c3[0]);
    let mut shrink = vec![0x20];
    shrink.extend_from_slice(&c3[1]);
    let mut never = Vec::new();
    hpack::encode_field(&mut never, b"authorization", b"secret", true);
    hpack::encode_field(&mut never, b"etag", b"", true);
    write_seeds(
        dir,
        "hpack_decode",
        &[
            ("rfc7541_c3_requests", as_slices(&c3)),
            ("rfc7541_c4_requests_huffman", as_slices(&c4)),
            ("rfc7541_c5_responses_table_256", {
                let mut seed = as_slices(&c5);
                seed[0] = 1; // the 256-byte table C.5 assumes
                seed
            }),
            (
                "grpc_call",
                as_slices(&[request.clone(), response.clone(), trailers.clone()]),
            ),
            ("size_update_then_fields", as_slices(&[size_update, shrink])),
            ("never_indexed", as_slices(&[never])),
        ],
    );

    // h2_frames: a frame-size byte, then frames.
    let hello = b"\x00\x00\x00\x00\x0a\x0a\x08ringside";
    let mut call = vec![0];
    frame::write_settings(
        &mut call,
        &[
            (frame::setting::INITIAL_WINDOW_SIZE, 1 << 20),
            (frame::setting::MAX_FRAME_SIZE, 16_384),
            (frame::setting::MAX_HEADER_LIST_SIZE, 16_384),
        ],
    );
    frame::write_settings_ack(&mut call);
    frame::write_window_update(&mut call, 0, 983_041);
    frame::write_headers(&mut call, 1, &request, false, 16_384);
    h2_frame(&mut call, kind::DATA, flag::END_STREAM, 1, hello);
    frame::write_headers(&mut call, 1, &response, false, 16_384);
    h2_frame(&mut call, kind::DATA, 0, 1, hello);
    frame::write_headers(&mut call, 1, &trailers, true, 16_384);

    let mut continued = vec![0];
    let mut first = vec![2, 0, 0, 0, 1, 16];
    first.extend_from_slice(&request[..20]);
    first.extend_from_slice(&[0, 0]);
    let padded_priority = flag::PADDED | flag::PRIORITY | flag::END_STREAM;
    h2_frame(&mut continued, kind::HEADERS, padded_priority, 3, &first);
    h2_frame(&mut continued, kind::CONTINUATION, 0, 3, &request[20..40]);
    h2_frame(
        &mut continued,
        kind::CONTINUATION,
        flag::END_HEADERS,
        3,
        &request[40..],
    );

    let mut control = vec![0];
    frame::write_ping(&mut control, false, *b"rs-drain");
    frame::write_ping(&mut control, true, *b"rs-drain");
    h2_frame(&mut control, kind::PRIORITY, 0, 5, &[0, 0, 0, 3, 16]);
    frame::write_rst_stream(&mut control, 5, frame::code::CANCEL);
    frame::write_window_update(&mut control, 5, 1);
    frame::write_goaway(&mut control, 7, frame::code::NO_ERROR, b"draining");

    let mut padded = vec![2];
    let mut data = vec![3];
    data.extend_from_slice(hello);
    data.extend_from_slice(&[0, 0, 0]);
    h2_frame(&mut padded, kind::DATA, flag::PADDED, 1, &data);
    h2_frame(
        &mut padded,
        kind::DATA,
        flag::PADDED | flag::END_STREAM,
        1,
        &[0],
    );
    write_seeds(
        dir,
        "h2_frames",
        &[
            ("grpc_call", call),
            ("headers_continuation_padded_priority", continued),
            ("control_frames", control),
            ("data_padded_small_max", padded),
        ],
    );
}
