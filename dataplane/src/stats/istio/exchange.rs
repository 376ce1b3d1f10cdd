//! Istio's HTTP metadata exchange, as istio-proxy's `peer_metadata` filter does it: a call
//! carries `x-envoy-peer-metadata-id` (the sender's node id) and `x-envoy-peer-metadata` (the
//! base64 of a protobuf `google.protobuf.Struct` of the sender's workload metadata), on requests
//! (from the caller's sidecar) and on responses (from the callee's).
//!
//! Reading ([`decode`]) follows istio-proxy's `convertStructToWorkloadMetadata`
//! (`extensions/common/metadata_object.cc`): `NAMESPACE`, `WORKLOAD_NAME`, `CLUSTER_ID` and, in
//! `LABELS`, `service.istio.io/canonical-name`, `service.istio.io/canonical-revision`, `app`
//! (`app.kubernetes.io/name` first) and `version` (`app.kubernetes.io/version` first). The
//! value is base64 with or without padding (Envoy's `Base64::decodeWithoutPadding`).
//!
//! Writing ([`exchange_value`]) follows its `MXPropagationMethod::computeValue`: the node
//! metadata read as above (plus `NAME`, `OWNER`, `IDENTITY`), written back by
//! `convertWorkloadMetadataToStruct` (`LABELS` always present; `OWNER` rebuilt from the
//! workload type `OWNER` names), serialized deterministically (map keys in byte order) and
//! base64-encoded with padding.
//!
//! In-band on TCP ([`in_band_frame`], [`decode_in_band`]): istio-proxy's
//! `istio.metadata_exchange` network filter (istio/proxy, before it moved to Envoy's contrib:
//! `source/extensions/filters/network/metadata_exchange/metadata_exchange.cc`,
//! `metadata_exchange_initial_header.h`). On a TLS connection that negotiated the ALPN
//! protocol [`ALPN`], each side writes before any application byte an 8-byte header (the magic
//! [`MAGIC`], then the size of what follows, both big-endian) and a `google.protobuf.Any`
//! (`type.googleapis.com/google.protobuf.Struct`) holding a `Struct` whose
//! `x-envoy-peer-metadata` is the workload `Struct` (as above) and `x-envoy-peer-metadata-id`
//! the node id, serialized deterministically.

use std::collections::BTreeMap;

use crate::config::NodeMetadataValue;

/// The sender's node id.
pub const HEADER_ID: &[u8] = b"x-envoy-peer-metadata-id";
/// The sender's workload metadata.
pub const HEADER: &[u8] = b"x-envoy-peer-metadata";

/// The ALPN protocol of the in-band TCP exchange.
pub const ALPN: &[u8] = b"istio-peer-exchange";
/// The in-band header's magic number (istio-proxy's `MetadataExchangeInitialHeader`).
pub const MAGIC: u32 = 0x3D23_0467;
/// The in-band header's length: magic and data size.
pub const IN_BAND_HEADER_BYTES: usize = 8;
/// The largest in-band payload read from a peer (istio-proxy sets none; a node's metadata is
/// a few hundred bytes to a few KiB): a larger announced size ends the connection.
pub const IN_BAND_BYTES_MAX: usize = 64 * 1024;
const STRUCT_TYPE_URL: &[u8] = b"type.googleapis.com/google.protobuf.Struct";

/// Whether `name` is one of the exchange's two headers.
pub fn is_header(name: &[u8]) -> bool {
    name == HEADER || name == HEADER_ID
}

/// A peer's workload, as its metadata names it (empty: not given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMeta {
    pub workload: String,
    pub namespace: String,
    pub cluster: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub app: String,
    pub version: String,
}

/// The peer an `x-envoy-peer-metadata` value describes. A value that is not base64 decodes to
/// nothing, as Envoy's decoder gives an empty string (an empty `Struct`: every field empty); a
/// `Struct` that does not parse is `None` (istio-proxy keeps no peer then).
pub fn decode(value: &[u8]) -> Option<PeerMeta> {
    decode_struct(&base64_decode(value).unwrap_or_default())
}

/// The peer an in-band payload (the `Any` after the header) describes: its `Struct`'s
/// `x-envoy-peer-metadata` (istio-proxy's `tryReadProxyData`). `None`: bytes that do not
/// parse, another type, or no such field (istio-proxy keeps no peer then).
pub fn decode_in_band(any: &[u8]) -> Option<PeerMeta> {
    let (mut rest, mut type_url, mut value): (&[u8], &[u8], &[u8]) = (any, &[], &[]);
    while !rest.is_empty() {
        match next_field(&mut rest)? {
            (t, Some(b)) if t == (1 << 3 | 2) => type_url = b,
            (t, Some(b)) if t == (2 << 3 | 2) => value = b,
            _ => {}
        }
    }
    if type_url != STRUCT_TYPE_URL {
        return None;
    }
    let mut found = None;
    for (k, v) in Fields::new(value) {
        let v = v.ok()?;
        if k == HEADER {
            found = Some(struct_value(v).unwrap_or_default());
        }
    }
    decode_struct(found?)
}

/// What ringside writes in-band: the header and the `Any` (see the module's doc) for node
/// `id` (none when empty) and metadata `m`.
pub fn in_band_frame(id: &str, m: &BTreeMap<String, NodeMetadataValue>) -> Vec<u8> {
    let mut data: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut workload = Vec::new();
    write_len(&mut workload, 5, &workload_struct(m));
    data.insert("x-envoy-peer-metadata", workload);
    if !id.is_empty() {
        data.insert("x-envoy-peer-metadata-id", value_string(id));
    }
    let mut any = Vec::new();
    write_len(&mut any, 1, STRUCT_TYPE_URL);
    write_len(&mut any, 2, &write_struct(&data));
    let mut out = Vec::with_capacity(IN_BAND_HEADER_BYTES + any.len());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&(any.len() as u32).to_be_bytes());
    out.extend_from_slice(&any);
    out
}

/// The size an in-band header announces; `None`: not the exchange's magic.
pub fn in_band_size(header: &[u8; IN_BAND_HEADER_BYTES]) -> Option<usize> {
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    (magic == MAGIC)
        .then(|| u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize)
}

/// The peer a workload `Struct` describes (`None`: it does not parse).
fn decode_struct(bytes: &[u8]) -> Option<PeerMeta> {
    let mut m = PeerMeta::default();
    let mut labels = Labels::default();
    for (key, v) in Fields::new(&bytes) {
        let v = v.ok()?;
        let field = |slot: &mut String| {
            if let Some(s) = string_value(v) {
                *slot = s;
            }
        };
        match key {
            b"NAMESPACE" => field(&mut m.namespace),
            b"WORKLOAD_NAME" => field(&mut m.workload),
            b"CLUSTER_ID" => field(&mut m.cluster),
            b"LABELS" => {
                if let Some(s) = struct_value(v) {
                    for (k, lv) in Fields::new(s) {
                        let lv = string_value(lv.ok()?).unwrap_or_default();
                        labels.set(k, lv);
                    }
                }
            }
            _ => {}
        }
    }
    m.canonical_service = labels.canonical_name;
    m.canonical_revision = labels.canonical_revision;
    m.app = labels.app;
    m.version = labels.version;
    Some(m)
}

/// The `LABELS` istio-proxy reads, in its precedence: the qualified `app.kubernetes.io/*`
/// labels over `app` and `version` (its loop takes `app` only while the name is still empty).
#[derive(Default)]
struct Labels {
    canonical_name: String,
    canonical_revision: String,
    app: String,
    version: String,
}

impl Labels {
    fn set(&mut self, key: &[u8], v: String) {
        match key {
            b"service.istio.io/canonical-name" => self.canonical_name = v,
            b"service.istio.io/canonical-revision" => self.canonical_revision = v,
            b"app.kubernetes.io/name" => self.app = v,
            b"app" if self.app.is_empty() => self.app = v,
            b"app.kubernetes.io/version" => self.version = v,
            b"version" if self.version.is_empty() => self.version = v,
            _ => {}
        }
    }
}

/// What ringside sends as `x-envoy-peer-metadata`: this node's metadata as istio-proxy writes
/// its own (see the module's doc).
pub fn exchange_value(m: &BTreeMap<String, NodeMetadataValue>) -> String {
    base64_encode(&workload_struct(m))
}

/// This node's workload `Struct`, as istio-proxy's `convertWorkloadMetadataToStruct` writes
/// it, serialized deterministically.
fn workload_struct(m: &BTreeMap<String, NodeMetadataValue>) -> Vec<u8> {
    let string = |k: &str| match m.get(k) {
        Some(NodeMetadataValue::String(s)) => s.as_str(),
        Some(NodeMetadataValue::Json(serde_json::Value::String(s))) => s.as_str(),
        _ => "",
    };
    let mut labels = Labels::default();
    match m.get("LABELS") {
        Some(NodeMetadataValue::Map(l)) => {
            for (k, v) in l {
                labels.set(k.as_bytes(), v.clone());
            }
        }
        Some(NodeMetadataValue::Json(serde_json::Value::Object(l))) => {
            for (k, v) in l {
                labels.set(k.as_bytes(), v.as_str().unwrap_or_default().to_string());
            }
        }
        _ => {}
    }
    let (namespace, workload) = (string("NAMESPACE"), string("WORKLOAD_NAME"));
    let owner = workload_type(string("OWNER"), workload).map(|suffix| {
        format!("kubernetes://apis/apps/v1/namespaces/{namespace}/{suffix}s/{workload}")
    });
    // convertWorkloadMetadataToStruct: the fields it sets when not empty; LABELS always.
    let mut top: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for (k, v) in [
        ("NAME", string("NAME")),
        ("NAMESPACE", namespace),
        ("WORKLOAD_NAME", workload),
        ("CLUSTER_ID", string("CLUSTER_ID")),
        ("IDENTITY", string("IDENTITY")),
        ("OWNER", owner.as_deref().unwrap_or_default()),
    ] {
        if !v.is_empty() {
            top.insert(k, value_string(v));
        }
    }
    let mut l: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for (k, v) in [
        ("service.istio.io/canonical-name", &labels.canonical_name),
        (
            "service.istio.io/canonical-revision",
            &labels.canonical_revision,
        ),
        ("app", &labels.app),
        ("version", &labels.version),
    ] {
        if !v.is_empty() {
            l.insert(k, value_string(v));
        }
    }
    let mut value = Vec::new();
    write_len(&mut value, 5, &write_struct(&l));
    top.insert("LABELS", value);
    write_struct(&top)
}

/// istio-proxy's `parseOwner`: the workload type an `OWNER` names (`.../<type>s/<workload>`),
/// as the suffix its `owner()` writes back; `None` for an unknown type.
fn workload_type(owner: &str, workload: &str) -> Option<&'static str> {
    if owner.len() <= workload.len() + 2 {
        return None;
    }
    let head = &owner[..owner.len() - workload.len() - 2];
    let last = &head[head.rfind('/')? + 1..];
    ["pod", "deployment", "job", "cronjob"]
        .into_iter()
        .find(|s| *s == last)
}

// --- protobuf wire format (google.protobuf.Struct / Value) ---

/// A `Struct`'s `fields` entries (field 1, `map<string, Value>`): (key, the `Value`'s bytes),
/// `Err` for bytes that do not parse.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(b: &'a [u8]) -> Fields<'a> {
        Fields { rest: b }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], Result<&'a [u8], ()>);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let Some((tag, body)) = next_field(&mut self.rest) else {
                self.rest = &[];
                return Some((&[], Err(())));
            };
            if tag != (1 << 3 | 2) {
                continue;
            }
            let Some(body) = body else { continue };
            // A map entry: 1 = key, 2 = value.
            let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
            let mut entry = body;
            while !entry.is_empty() {
                match next_field(&mut entry) {
                    Some((t, Some(b))) if t == (1 << 3 | 2) => key = b,
                    Some((t, Some(b))) if t == (2 << 3 | 2) => value = b,
                    Some(_) => {}
                    None => return Some((key, Err(()))),
                }
            }
            return Some((key, Ok(value)));
        }
        None
    }
}

/// A `Value`'s `string_value` (field 3), if it holds one.
fn string_value(v: &[u8]) -> Option<String> {
    last_len_field(v, 3).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// A `Value`'s `struct_value` (field 5), if it holds one.
fn struct_value(v: &[u8]) -> Option<&[u8]> {
    last_len_field(v, 5)
}

fn last_len_field(mut b: &[u8], field: u64) -> Option<&[u8]> {
    let mut found = None;
    while !b.is_empty() {
        match next_field(&mut b)? {
            (t, Some(body)) if t == (field << 3 | 2) => found = Some(body),
            _ => {}
        }
    }
    found
}

/// Reads one field: its tag and, for a length-delimited one, its bytes. `None`: malformed.
fn next_field<'a>(b: &mut &'a [u8]) -> Option<(u64, Option<&'a [u8]>)> {
    let tag = varint(b)?;
    match tag & 7 {
        0 => {
            varint(b)?;
            Some((tag, None))
        }
        1 => {
            *b = b.get(8..)?;
            Some((tag, None))
        }
        2 => {
            let n = usize::try_from(varint(b)?).ok()?;
            let body = b.get(..n)?;
            *b = &b[n..];
            Some((tag, Some(body)))
        }
        5 => {
            *b = b.get(4..)?;
            Some((tag, None))
        }
        _ => None,
    }
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.first()?;
        *b = &b[1..];
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn write_len(out: &mut Vec<u8>, field: u64, body: &[u8]) {
    write_varint(out, field << 3 | 2);
    write_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// A `Value` holding `s` (`string_value`).
fn value_string(s: &str) -> Vec<u8> {
    let mut v = Vec::new();
    write_len(&mut v, 3, s.as_bytes());
    v
}

/// A `Struct` of `fields` (keys in byte order: protobuf's deterministic map order).
fn write_struct(fields: &BTreeMap<&str, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        let mut entry = Vec::new();
        write_len(&mut entry, 1, k.as_bytes());
        write_len(&mut entry, 2, v);
        write_len(&mut out, 1, &entry);
    }
    out
}

// --- base64 (standard alphabet) ---

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = u32::from(chunk[0]) << 16
            | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(ALPHABET[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padded or not; `None` for anything else.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let s = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What istio-proxy sends for this metadata: the bytes C++ protobuf's deterministic
    /// serialization gives (`NAME` before `NAMESPACE`), made with protobuf's Python
    /// implementation (which sorts map keys the same way) from
    /// `{NAME, NAMESPACE, WORKLOAD_NAME, CLUSTER_ID, OWNER, LABELS: {app, version}}`.
    const CLIENT: &str = "ChoKCkNMVVNURVJfSUQSDBoKS3ViZXJuZXRlcwouCgZMQUJFTFMSJCoiCg8KA2FwcBIIGgZjbGllbnQKDwoHdmVyc2lvbhIEGgJ2MQoXCgROQU1FEg8aDWNsaWVudC12MS1hYmMKEwoJTkFNRVNQQUNFEgYaBHNob3AKSgoFT1dORVISQRo/a3ViZXJuZXRlczovL2FwaXMvYXBwcy92MS9uYW1lc3BhY2VzL3Nob3AvZGVwbG95bWVudHMvY2xpZW50LXYxChwKDVdPUktMT0FEX05BTUUSCxoJY2xpZW50LXYx";

    fn metadata() -> BTreeMap<String, NodeMetadataValue> {
        serde_yaml::from_str(
            "NAME: client-v1-abc\nNAMESPACE: shop\nWORKLOAD_NAME: client-v1\n\
             CLUSTER_ID: Kubernetes\nOWNER: kubernetes://apis/apps/v1/namespaces/shop/deployments/client-v1\n\
             LABELS: {app: client, version: v1, pod-template-hash: abc}\nISTIO_VERSION: '1.28.0'\n",
        )
        .unwrap()
    }

    #[test]
    fn ringside_sends_its_metadata_as_istio_proxy_encodes_it() {
        assert_eq!(exchange_value(&metadata()), CLIENT);
    }

    #[test]
    fn a_peers_metadata_is_read_as_istio_proxy_reads_it() {
        let m = decode(CLIENT.as_bytes()).unwrap();
        assert_eq!(
            m,
            PeerMeta {
                workload: "client-v1".into(),
                namespace: "shop".into(),
                cluster: "Kubernetes".into(),
                canonical_service: String::new(),
                canonical_revision: String::new(),
                app: "client".into(),
                version: "v1".into(),
            }
        );
        // Without padding too (istio-proxy's own tests send RawStdEncoding).
        assert_eq!(base64_decode(b"YWI").unwrap(), b"ab");
        assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
        // Not base64: an empty Struct, all unknown; base64 of bytes that do not parse: no peer.
        assert_eq!(decode(b"!!!").unwrap(), PeerMeta::default());
        assert_eq!(decode(base64_encode(b"\x0a\x05ab").as_bytes()), None);
    }

    #[test]
    fn the_in_band_frame_round_trips() {
        let f = in_band_frame("sidecar~1.2.3.4~a.b~b.svc.cluster.local", &metadata());
        let head: [u8; 8] = f[..8].try_into().unwrap();
        assert_eq!(&f[..4], &[0x3d, 0x23, 0x04, 0x67]);
        assert_eq!(in_band_size(&head), Some(f.len() - 8));
        let m = decode_in_band(&f[8..]).unwrap();
        assert_eq!(m, decode(CLIENT.as_bytes()).unwrap());
        assert_eq!(in_band_size(&[0; 8]), None);
        assert_eq!(decode_in_band(b"\x0a\x03abc"), None, "another type");
        assert_eq!(decode_in_band(b"\x0a\xff"), None, "malformed");
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..10 {
            let b: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64_decode(base64_encode(&b).as_bytes()).unwrap(), b);
        }
        assert_eq!(base64_encode(b"ab"), "YWI=");
    }
}
