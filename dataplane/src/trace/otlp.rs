//! OTLP protobuf, written by hand: one `Span` (opentelemetry/proto/trace/v1/trace.proto)
//! appended to a shard's batch as a `ScopeSpans.spans` entry, and the
//! `ExportTraceServiceRequest` the exporter wraps batches in. Writing the few fields ringside
//! sets straight into a reused buffer costs no allocation per span and no generated types
//! (docs/decisions/0008-otlp-encoding.md says why not `opentelemetry-proto`).
//!
//! Field numbers are the proto's; `tests` decodes what is written here with prost structs
//! declared from the same proto, and the integration test with Python's `opentelemetry-proto`.

use std::net::SocketAddr;

use super::context::{SpanId, TraceId};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// `Span.SpanKind`.
pub const SPAN_KIND_SERVER: u64 = 2;
pub const SPAN_KIND_CLIENT: u64 = 3;
/// `Status.StatusCode`.
const STATUS_CODE_ERROR: u64 = 2;

pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire)));
}

pub fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A length-delimited field whose body `body` writes: the body goes after the key, then its
/// length is inserted in front of it (a move of the body's bytes; no allocation once `out`
/// has room).
pub fn message_field(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    let at = out.len();
    body(out);
    let len = (out.len() - at) as u64;
    let mut prefix = [0u8; 10];
    let mut n = 0;
    let mut v = len;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        prefix[n] = if v > 0 { b | 0x80 } else { b };
        n += 1;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&prefix[..n]);
    out[at..].rotate_right(n);
}

/// `KeyValue{key, value: AnyValue{string_value}}`.
pub fn attr_str(out: &mut Vec<u8>, field: u32, k: &str, v: &[u8]) {
    let any = 1 + varint_len(v.len() as u64) + v.len();
    let kv = 1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any as u64) + any;
    if kv < 0x80 && field < 16 {
        // Every length fits one byte (a span's attributes do): the keys and lengths are two
        // 4-byte copies around the key and the value, not a varint loop per number.
        out.reserve(2 + kv);
        out.extend_from_slice(&[
            (field << 3) as u8 | LEN,
            kv as u8,
            1 << 3 | LEN,
            k.len() as u8,
        ]);
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&[2 << 3 | LEN, any as u8, 1 << 3 | LEN, v.len() as u8]);
        out.extend_from_slice(v);
        return;
    }
    attr_str_varints(out, field, k, v);
}

/// [`attr_str`] with every key and length as a varint (any length).
fn attr_str_varints(out: &mut Vec<u8>, field: u32, k: &str, v: &[u8]) {
    let any = 1 + varint_len(v.len() as u64) + v.len();
    let kv = 1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any as u64) + any;
    key(out, field, LEN);
    varint(out, kv as u64);
    bytes_field(out, 1, k.as_bytes());
    key(out, 2, LEN);
    varint(out, any as u64);
    bytes_field(out, 1, v);
}

/// `KeyValue{key, value: AnyValue{int_value}}`.
pub fn attr_int(out: &mut Vec<u8>, field: u32, k: &str, v: i64) {
    let any = 1 + varint_len(v as u64);
    let kv = 1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any as u64) + any;
    key(out, field, LEN);
    varint(out, kv as u64);
    bytes_field(out, 1, k.as_bytes());
    key(out, 2, LEN);
    varint(out, any as u64);
    key(out, 3, VARINT);
    varint(out, v as u64);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

/// What one finished call's span says.
pub struct SpanData<'a> {
    pub trace_id: &'a TraceId,
    pub span_id: &'a SpanId,
    pub parent: Option<&'a SpanId>,
    pub kind: u64,
    /// `apache_dubbo` or `grpc` (OpenTelemetry's `rpc.system` values).
    pub system: &'static str,
    pub service: &'a [u8],
    pub method: &'a [u8],
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Dubbo: the response status; Triple: the `grpc-status` (none: the caller cancelled).
    pub status: Option<u32>,
    pub failed: bool,
    pub peer: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    pub cluster: Option<&'a str>,
}

/// Appends `s` as one `ScopeSpans.spans` (field 2) entry.
pub fn span(out: &mut Vec<u8>, s: &SpanData<'_>) {
    message_field(out, 2, |o| {
        bytes_field(o, 1, s.trace_id);
        bytes_field(o, 2, s.span_id);
        if let Some(p) = s.parent {
            bytes_field(o, 4, p);
        }
        // Name: OpenTelemetry's RPC convention, `{rpc.service}/{rpc.method}`.
        key(o, 5, LEN);
        varint(o, (s.service.len() + 1 + s.method.len()) as u64);
        o.extend_from_slice(s.service);
        o.push(b'/');
        o.extend_from_slice(s.method);
        key(o, 6, VARINT);
        varint(o, s.kind);
        fixed64(o, 7, s.start_unix_ns);
        fixed64(o, 8, s.end_unix_ns);
        attr_str(o, 9, "rpc.system", s.system.as_bytes());
        attr_str(o, 9, "rpc.service", s.service);
        attr_str(o, 9, "rpc.method", s.method);
        if let Some(st) = s.status {
            let k = if s.system == "grpc" {
                "rpc.grpc.status_code"
            } else {
                "rpc.dubbo.status_code"
            };
            attr_int(o, 9, k, i64::from(st));
        }
        if let Some(a) = s.peer {
            let mut ip = [0u8; 40];
            let n = ip_text(a, &mut ip);
            attr_str(o, 9, "network.peer.address", &ip[..n]);
            attr_int(o, 9, "network.peer.port", i64::from(a.port()));
        }
        if let Some(c) = s.cluster {
            attr_str(o, 9, "upstream_cluster", c.as_bytes());
        }
        if let Some(a) = s.upstream {
            let mut text = [0u8; 48];
            let n = addr_text(a, &mut text);
            attr_str(o, 9, "upstream_address", &text[..n]);
        }
        attr_str(o, 9, "component", b"proxy");
        if s.failed {
            message_field(o, 15, |st| {
                key(st, 3, VARINT);
                varint(st, STATUS_CODE_ERROR);
            });
        }
    });
}

/// An HTTP/1.1 request's span, with the name and tags Envoy's OpenTelemetry tracer gives an
/// HTTP connection manager's request (every value a string, as Envoy's).
pub struct HttpSpan<'a> {
    pub trace_id: &'a TraceId,
    pub span_id: &'a SpanId,
    pub parent: Option<&'a SpanId>,
    pub kind: u64,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// The node's id and zone.
    pub node: &'a (String, String),
    pub request_id: &'a [u8],
    pub scheme: &'a str,
    pub authority: &'a [u8],
    pub path: &'a [u8],
    pub method: &'a [u8],
    /// `x-envoy-downstream-service-cluster` (`-`: none).
    pub downstream_cluster: &'a [u8],
    /// `user-agent` (`-`: none).
    pub user_agent: &'a [u8],
    pub peer: Option<SocketAddr>,
    pub request_size: u64,
    pub response_size: u64,
    pub cluster: Option<&'a str>,
    /// The status sent (0: none).
    pub status: u16,
    /// Envoy's response flags, short (`-`: none).
    pub flags: &'a str,
}

/// Appends `s` as one `ScopeSpans.spans` entry: named `ingress` (server spans) or
/// `egress {authority}` (Envoy's operation names), Envoy's tags in Envoy's order, status
/// ERROR (and `error: true`) when the response is a 5xx or none was sent, status ERROR alone
/// for a 4xx of a client span.
pub fn http_span(out: &mut Vec<u8>, s: &HttpSpan<'_>) {
    message_field(out, 2, |o| {
        bytes_field(o, 1, s.trace_id);
        bytes_field(o, 2, s.span_id);
        if let Some(p) = s.parent {
            bytes_field(o, 4, p);
        }
        // Envoy's operation name; an egress span's with the host.
        key(o, 5, LEN);
        if s.kind == SPAN_KIND_SERVER {
            varint(o, 7);
            o.extend_from_slice(b"ingress");
        } else {
            varint(o, (7 + s.authority.len()) as u64);
            o.extend_from_slice(b"egress ");
            o.extend_from_slice(s.authority);
        }
        key(o, 6, VARINT);
        varint(o, s.kind);
        fixed64(o, 7, s.start_unix_ns);
        fixed64(o, 8, s.end_unix_ns);
        attr_str(o, 9, "node_id", s.node.0.as_bytes());
        attr_str(o, 9, "zone", s.node.1.as_bytes());
        attr_str(o, 9, "guid:x-request-id", s.request_id);
        let mut url = Vec::with_capacity(s.scheme.len() + 3 + s.authority.len() + s.path.len());
        url.extend_from_slice(s.scheme.as_bytes());
        url.extend_from_slice(b"://");
        url.extend_from_slice(s.authority);
        url.extend_from_slice(s.path);
        attr_str(o, 9, "http.url", &url);
        attr_str(o, 9, "http.method", s.method);
        attr_str(o, 9, "downstream_cluster", s.downstream_cluster);
        attr_str(o, 9, "user_agent", s.user_agent);
        attr_str(o, 9, "http.protocol", b"HTTP/1.1");
        if let Some(a) = s.peer {
            let mut ip = [0u8; 40];
            let n = ip_text(a, &mut ip);
            attr_str(o, 9, "peer.address", &ip[..n]);
        }
        attr_str(o, 9, "request_size", s.request_size.to_string().as_bytes());
        attr_str(
            o,
            9,
            "response_size",
            s.response_size.to_string().as_bytes(),
        );
        attr_str(o, 9, "component", b"proxy");
        if let Some(c) = s.cluster {
            attr_str(o, 9, "upstream_cluster", c.as_bytes());
            attr_str(o, 9, "upstream_cluster.name", c.as_bytes());
        }
        attr_str(o, 9, "http.status_code", s.status.to_string().as_bytes());
        attr_str(o, 9, "response_flags", s.flags.as_bytes());
        let failed = s.status >= 500 || s.status == 0;
        if failed {
            attr_str(o, 9, "error", b"true");
        }
        // Envoy's OpenTelemetry span, as OpenTelemetry's HTTP convention says: a 4xx is an
        // error of a client span only.
        if failed || (s.kind == SPAN_KIND_CLIENT && s.status >= 400) {
            message_field(o, 15, |st| {
                key(st, 3, VARINT);
                varint(st, STATUS_CODE_ERROR);
            });
        }
    });
}

/// The IP of `a` as text into `out` (no allocation); returns its length. IPv4 digit by
/// digit (`write!` through `fmt` cost ~1,200 instructions a span); IPv6 through `fmt`.
fn ip_text(a: SocketAddr, out: &mut [u8]) -> usize {
    if let SocketAddr::V4(v4) = a {
        return v4_text(v4.ip().octets(), out);
    }
    use std::io::Write;
    let mut w = &mut out[..];
    let _ = write!(w, "{}", a.ip());
    let left = w.len();
    out.len() - left
}

/// `a` as `ip:port` (`[ip]:port` for IPv6) into `out`; returns its length.
fn addr_text(a: SocketAddr, out: &mut [u8]) -> usize {
    if let SocketAddr::V4(v4) = a {
        let n = v4_text(v4.ip().octets(), out);
        return n + port_text(v4.port(), out.get_mut(n..).unwrap_or_default());
    }
    use std::io::Write;
    let mut w = &mut out[..];
    let _ = write!(w, "{a}");
    let left = w.len();
    out.len() - left
}

/// Dotted decimal of `ip` (at most 15 bytes) into `out`; returns its length (0: no room).
fn v4_text(ip: [u8; 4], out: &mut [u8]) -> usize {
    let Some(out) = out.first_chunk_mut::<15>() else {
        return 0;
    };
    let mut n = 0;
    for (i, b) in ip.into_iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        if b >= 100 {
            out[n] = b'0' + b / 100;
            n += 1;
        }
        if b >= 10 {
            out[n] = b'0' + b / 10 % 10;
            n += 1;
        }
        out[n] = b'0' + b % 10;
        n += 1;
    }
    n
}

/// `:port` into `out`; returns its length (0: no room).
fn port_text(port: u16, out: &mut [u8]) -> usize {
    let Some(out) = out.first_chunk_mut::<6>() else {
        return 0;
    };
    out[0] = b':';
    let digits = port.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut p = port;
    for i in (1..=digits).rev() {
        out[i] = b'0' + (p % 10) as u8;
        p /= 10;
    }
    digits + 1
}

/// `ExportTraceServiceRequest{resource_spans: [ResourceSpans{resource{service.name},
/// scope_spans: [ScopeSpans{scope{name: ringside}, spans}]}]}` around `spans` (entries written
/// by [`span`]).
pub fn export_request(service_name: &str, spans: &[u8], out: &mut Vec<u8>) {
    out.clear();
    message_field(out, 1, |rs| {
        message_field(rs, 1, |res| {
            attr_str(res, 1, "service.name", service_name.as_bytes());
        });
        message_field(rs, 2, |ss| {
            message_field(ss, 1, |scope| {
                bytes_field(scope, 1, b"ringside");
                bytes_field(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            ss.extend_from_slice(spans);
        });
    });
}

#[cfg(test)]
mod tests {
    //! Decodes what the writer wrote with prost structs declared from trace.proto.
    use super::*;
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Req {
        #[prost(message, repeated, tag = "1")]
        resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Resource {
        #[prost(message, repeated, tag = "1")]
        attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        scope: Option<Scope>,
        #[prost(message, repeated, tag = "2")]
        spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Scope {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Span {
        #[prost(bytes, tag = "1")]
        trace_id: Vec<u8>,
        #[prost(bytes, tag = "2")]
        span_id: Vec<u8>,
        #[prost(bytes, tag = "4")]
        parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        name: String,
        #[prost(int32, tag = "6")]
        kind: i32,
        #[prost(fixed64, tag = "7")]
        start: u64,
        #[prost(fixed64, tag = "8")]
        end: u64,
        #[prost(message, repeated, tag = "9")]
        attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        status: Option<Status>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(int32, tag = "3")]
        code: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct KeyValue {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(message, optional, tag = "2")]
        value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct AnyValue {
        #[prost(string, optional, tag = "1")]
        string_value: Option<String>,
        #[prost(int64, optional, tag = "3")]
        int_value: Option<i64>,
    }

    /// The one-byte-lengths form of `attr_str` writes what the varint form writes, across the
    /// 127/128 boundary of the entry's length.
    #[test]
    fn attr_str_short_form_is_the_varint_form() {
        for field in [1, 9, 15, 16] {
            for klen in [0, 1, 10, 60, 126, 127, 128, 200] {
                for vlen in 0..=140 {
                    let k = "k".repeat(klen);
                    let v = vec![b'v'; vlen];
                    let (mut a, mut b) = (vec![0xaa], vec![0xaa]);
                    attr_str(&mut a, field, &k, &v);
                    attr_str_varints(&mut b, field, &k, &v);
                    assert_eq!(a, b, "field {field} key {klen} value {vlen}");
                }
            }
        }
    }

    /// Addresses as text, as `Display` writes them (IPv4 digit by digit, IPv6 through fmt).
    #[test]
    fn address_texts_are_displays() {
        for a in [
            "0.0.0.0:0",
            "1.2.3.4:5",
            "9.10.99.100:80",
            "127.0.0.1:4000",
            "10.255.0.7:20880",
            "255.255.255.255:65535",
            "[::1]:50051",
            "[2001:db8::1:2]:443",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut ip = [0u8; 40];
            let n = ip_text(a, &mut ip);
            assert_eq!(std::str::from_utf8(&ip[..n]).unwrap(), a.ip().to_string());
            let mut text = [0u8; 48];
            let n = addr_text(a, &mut text);
            assert_eq!(std::str::from_utf8(&text[..n]).unwrap(), a.to_string());
        }
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn spans_decode() {
        let mut batch = Vec::new();
        let long = vec![b'm'; 300];
        for (i, method) in [&b"sayHello"[..], &long].iter().enumerate() {
            span(
                &mut batch,
                &SpanData {
                    trace_id: &[7; 16],
                    span_id: &[i as u8 + 1; 8],
                    parent: (i == 0).then_some(&[9; 8]),
                    kind: SPAN_KIND_SERVER,
                    system: "grpc",
                    service: b"helloworld.Greeter",
                    method,
                    start_unix_ns: 1_700_000_000_000_000_000,
                    end_unix_ns: 1_700_000_000_000_500_000,
                    status: Some(if i == 0 { 0 } else { 14 }),
                    failed: i == 1,
                    peer: Some("127.0.0.1:4000".parse().unwrap()),
                    upstream: Some("[::1]:50051".parse().unwrap()),
                    cluster: Some("greeter"),
                },
            );
        }
        let mut out = Vec::new();
        export_request("svc", &batch, &mut out);
        let req = Req::decode(&out[..]).unwrap();
        let rs = &req.resource_spans[0];
        let attr = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(attr.key, "service.name");
        assert_eq!(
            attr.value.as_ref().unwrap().string_value.as_deref(),
            Some("svc")
        );
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "ringside");
        assert_eq!(ss.spans.len(), 2);
        let s = &ss.spans[0];
        assert_eq!(s.trace_id, vec![7; 16]);
        assert_eq!(s.span_id, vec![1; 8]);
        assert_eq!(s.parent_span_id, vec![9; 8]);
        assert_eq!(s.name, "helloworld.Greeter/sayHello");
        assert_eq!(s.kind, 2);
        assert_eq!(s.end - s.start, 500_000);
        assert_eq!(s.status, None);
        let get = |s: &Span, k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .unwrap_or_else(|| panic!("{k}"))
        };
        assert_eq!(get(s, "rpc.system").string_value.as_deref(), Some("grpc"));
        assert_eq!(get(s, "rpc.grpc.status_code").int_value, Some(0));
        assert_eq!(
            get(s, "network.peer.address").string_value.as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(get(s, "network.peer.port").int_value, Some(4000));
        assert_eq!(
            get(s, "upstream_address").string_value.as_deref(),
            Some("[::1]:50051")
        );
        let s = &ss.spans[1];
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.name.len(), "helloworld.Greeter/".len() + 300);
        assert_eq!(s.status.as_ref().unwrap().code, 2);
        assert_eq!(get(s, "rpc.grpc.status_code").int_value, Some(14));
    }
}
