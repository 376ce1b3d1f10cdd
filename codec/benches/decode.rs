//! Decode benchmarks: the frame split and the routing-field scan of a typical Hessian2 request
//! (interface, version, method, group), and emitting the same request. Run with
//! `cargo bench -p codec --bench decode`.
#![allow(clippy::indexing_slicing)]

use std::hint::black_box;

use bytes::BytesMut;
use codec::dubbo::encode::{Arg, RequestBuilder};
use codec::dubbo::request::RequestRepr;
use codec::dubbo::{decode_frame, Decoded, FRAME_BYTES_MAX_DEFAULT, HEADER_BYTES};
use criterion::{criterion_group, criterion_main, Criterion};

/// What a Java consumer sends for `greet(String name, int times)` in group/version: about
/// 300 bytes.
fn typical_request() -> bytes::Bytes {
    RequestBuilder::new("org.apache.dubbo.samples.api.GreetingService", "greet")
        .request_id(42)
        .version("1.0.0")
        .group("blue")
        .timeout_ms(3000)
        .args(&[Arg::Str("ringside"), Arg::Int(3)])
        .attachments(&[
            ("remote.application", "demo-consumer"),
            ("traceid", "5b8aa5a2d2c872e8321cf37308d69df2"),
        ])
        .build()
}

fn routing(c: &mut Criterion) {
    let frame = typical_request();
    let mut group = c.benchmark_group("dubbo");
    group.bench_function("decode_frame", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&frame[..]),
            |buf| match decode_frame(buf, FRAME_BYTES_MAX_DEFAULT) {
                Ok(Decoded::Frame(f)) => black_box(f.header.request_id),
                _ => 0,
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("routing_fields", |b| {
        let body = &frame[HEADER_BYTES..];
        b.iter(|| {
            let req = RequestRepr::parse(black_box(body)).ok()?;
            black_box((req.interface(), req.version(), req.method(), req.group()));
            Some(())
        })
    });
    group.bench_function("frame_and_routing_fields", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&frame[..]),
            |buf| {
                let Ok(Decoded::Frame(f)) = decode_frame(buf, FRAME_BYTES_MAX_DEFAULT) else {
                    return None;
                };
                let req = RequestRepr::parse(f.body()).ok()?;
                black_box((req.interface(), req.version(), req.method(), req.group()));
                Some(())
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("custom_attachment", |b| {
        let req = RequestRepr::parse(&frame[HEADER_BYTES..]).ok();
        b.iter(|| black_box(req.as_ref()?.attachment(b"traceid")))
    });
    // Tracing (docs/observability.md#tracing): the one scan of the attachments a traced
    // request pays (the context fields and the map's end), and, for a request that arrived
    // without a context, adding a `traceparent` attachment (one copy of the frame); beside it
    // a plain copy of the frame.
    group.bench_function("trace_scan_attachments", |b| {
        let req = RequestRepr::parse(&frame[HEADER_BYTES..]).ok();
        b.iter(|| {
            let mut it = req.as_ref()?.attachments();
            let n = it.by_ref().filter(|(k, _)| k.len() == 11).count();
            black_box((n, it.end()));
            Some(())
        })
    });
    group.bench_function("trace_insert_traceparent", |b| {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let end = RequestRepr::parse(&frame[HEADER_BYTES..])
            .ok()
            .and_then(|r| r.attachments_end());
        b.iter(|| {
            let grown = codec::dubbo::encode::insert_attachment(&frame, end?, "traceparent", tp)?;
            black_box(grown.len());
            Some(())
        })
    });
    group.bench_function("copy_frame", |b| {
        b.iter(|| black_box(BytesMut::from(black_box(&frame[..])).len()))
    });
    group.bench_function("emit_request", |b| {
        let mut out = BytesMut::with_capacity(1024);
        b.iter(|| {
            out.clear();
            RequestBuilder::new("org.apache.dubbo.samples.api.GreetingService", "greet")
                .version("1.0.0")
                .group("blue")
                .args(&[Arg::Str("ringside"), Arg::Int(3)])
                .encode_into(&mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
