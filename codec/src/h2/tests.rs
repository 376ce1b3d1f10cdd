use proptest::prelude::*;

use super::frame::{self, FrameHeader};
use super::grpc;
use super::hpack::{self, Decoder, HpackError};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
    let mut out = Vec::new();
    d.decode(block, &mut |n, v, _| {
        out.push((
            String::from_utf8_lossy(n).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ))
    })?;
    Ok(out)
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn rfc7541_c3_requests_without_huffman() {
    let mut d = Decoder::default();
    let first = hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
    assert_eq!(
        decode_all(&mut d, &first).unwrap(),
        pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com")
        ])
    );
    assert_eq!(d.table_bytes(), 57);
    let second = hex("8286 84be 5808 6e6f 2d63 6163 6865");
    assert_eq!(
        decode_all(&mut d, &second).unwrap(),
        pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache")
        ])
    );
    assert_eq!(d.table_bytes(), 110);
}

#[test]
fn rfc7541_c4_requests_with_huffman() {
    let mut d = Decoder::default();
    let first = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
    assert_eq!(
        decode_all(&mut d, &first).unwrap()[3],
        (":authority".into(), "www.example.com".into())
    );
    let third = hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65");
    // (the C.3.3 block: literal new name, not Huffman; index 0xbf = 63 after two inserts)
    let second = hex("8286 84be 5886 a8eb 1064 9cbf");
    assert_eq!(
        decode_all(&mut d, &second).unwrap()[4],
        ("cache-control".into(), "no-cache".into())
    );
    let got = decode_all(&mut d, &third).unwrap();
    assert_eq!(got[1], (":scheme".into(), "https".into()));
    assert_eq!(got[3], (":authority".into(), "www.example.com".into()));
    assert_eq!(got[4], ("custom-key".into(), "custom-value".into()));
}

#[test]
fn huffman_known_codes() {
    let mut out = Vec::new();
    hpack::huffman_encode(b"www.example.com", &mut out);
    assert_eq!(out, hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"));
    // Padding longer than 7 bits, and padding that is not all ones, are errors.
    let mut v = Vec::new();
    assert_eq!(
        hpack::huffman_decode(&[0xff, 0xff], &mut v),
        Err(HpackError::Huffman)
    );
    v.clear();
    // '0' is 00000 (5 bits); padded with zeros instead of ones.
    assert_eq!(
        hpack::huffman_decode(&[0x00], &mut v),
        Err(HpackError::Huffman)
    );
    v.clear();
    hpack::huffman_decode(&[0x07], &mut v).unwrap();
    assert_eq!(v, b"0");
}

/// Found by the hpack_decode fuzz target: a never-indexed field equal to a static entry
/// ("etag" with an empty value) was re-encoded as a static index, losing the never-indexed bit
/// an intermediary must keep (RFC 7541 6.2.3).
#[test]
fn never_indexed_static_match_keeps_its_representation() {
    let mut block = Vec::new();
    hpack::encode_field(&mut block, b"etag", b"", true);
    hpack::encode_field(&mut block, b"etag", b"", false);
    let mut got = Vec::new();
    Decoder::default()
        .decode(&block, &mut |n, v, never| {
            got.push((n.to_vec(), v.to_vec(), never))
        })
        .unwrap();
    assert_eq!(
        got,
        [
            (b"etag".to_vec(), vec![], true),
            (b"etag".to_vec(), vec![], false)
        ]
    );
    assert_eq!(
        block.last(),
        Some(&0xa2),
        "the plain one is still sent as index 34"
    );
}

#[test]
fn decoder_errors() {
    let mut d = Decoder::default();
    // Index 70 with an empty dynamic table.
    assert!(matches!(
        d.decode(&[0x80 | 70], &mut |_, _, _| {}),
        Err(HpackError::BadIndex { index: 70, .. })
    ));
    // Index 0.
    assert!(d.decode(&[0x80], &mut |_, _, _| {}).is_err());
    // A literal whose value runs past the block.
    assert_eq!(
        d.decode(&[0x04, 0x05, b'a'], &mut |_, _, _| {}),
        Err(HpackError::Truncated)
    );
    // A table size update above the advertised limit.
    let mut big = Vec::new();
    hpack::write_int(&mut big, 1 << 20, 5, 0x20);
    assert!(matches!(
        d.decode(&big, &mut |_, _, _| {}),
        Err(HpackError::TableSizeUpdate { .. })
    ));
    // An integer that never ends.
    assert!(d
        .decode(
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &mut |_, _, _| {}
        )
        .is_err());
}

#[test]
fn table_evicts_oldest_and_size_update_shrinks() {
    let mut d = Decoder::new(100);
    let mut block = Vec::new();
    // Two literal-with-indexing entries of 32 + 2 + 30 = 64 bytes: the second evicts the first.
    for name in [b"aa", b"bb"] {
        block.push(0x40);
        hpack::write_int(&mut block, 2, 7, 0);
        block.extend_from_slice(name);
        hpack::write_int(&mut block, 30, 7, 0);
        block.extend_from_slice(&[b'x'; 30]);
    }
    decode_all(&mut d, &block).unwrap();
    assert_eq!(d.table_bytes(), 64);
    assert_eq!(decode_all(&mut d, &[0x80 | 62]).unwrap()[0].0, "bb");
    assert!(d.decode(&[0x80 | 63], &mut |_, _, _| {}).is_err());
    // Size update to 0 empties the table.
    decode_all(&mut d, &[0x20]).unwrap();
    assert_eq!(d.table_bytes(), 0);
}

#[test]
fn frames_round_trip() {
    let mut out = Vec::new();
    frame::write_window_update(&mut out, 7, 1000);
    let h = FrameHeader::parse(&out).unwrap();
    assert_eq!(
        (h.len, h.kind, h.stream),
        (4, frame::kind::WINDOW_UPDATE, 7)
    );
    assert_eq!(frame::window_update(&out[9..]).unwrap(), 1000);
    out.clear();
    frame::write_goaway(&mut out, 9, frame::code::ENHANCE_YOUR_CALM, b"calm");
    assert_eq!(
        frame::goaway(&out[9..]).unwrap(),
        (9, frame::code::ENHANCE_YOUR_CALM)
    );
    out.clear();
    // A 40,000-byte block splits into HEADERS + 2 CONTINUATION at 16,384.
    frame::write_headers(&mut out, 1, &[0u8; 40_000], true, 16_384);
    let mut pos = 0;
    let mut kinds = Vec::new();
    while pos < out.len() {
        let h = FrameHeader::parse(&out[pos..]).unwrap();
        kinds.push((h.kind, h.flags));
        pos += 9 + h.len as usize;
    }
    assert_eq!(
        kinds,
        vec![
            (frame::kind::HEADERS, frame::flag::END_STREAM),
            (frame::kind::CONTINUATION, 0),
            (frame::kind::CONTINUATION, frame::flag::END_HEADERS)
        ]
    );
    // Padding: pad length 2, data "ab", 2 pad bytes.
    assert_eq!(
        frame::data_payload(frame::flag::PADDED, &[2, b'a', b'b', 0, 0]).unwrap(),
        b"ab"
    );
    assert!(frame::data_payload(frame::flag::PADDED, &[5, b'a']).is_err());
    assert!(frame::settings(&[0; 7]).is_err());
}

#[test]
fn grpc_headers() {
    assert_eq!(
        grpc::split_path(b"/helloworld.Greeter/SayHello"),
        Some((&b"helloworld.Greeter"[..], &b"SayHello"[..]))
    );
    assert_eq!(grpc::split_path(b"/a/b/c"), Some((&b"a/b"[..], &b"c"[..])));
    assert_eq!(grpc::split_path(b"/nomethod/"), None);
    assert_eq!(grpc::split_path(b"x"), None);
    assert_eq!(grpc::parse_grpc_timeout(b"100m"), Some(100_000));
    assert_eq!(grpc::parse_grpc_timeout(b"2S"), Some(2_000_000));
    assert_eq!(grpc::parse_grpc_timeout(b"1500n"), Some(2));
    assert_eq!(grpc::parse_grpc_timeout(b"123456789S"), None);
    assert_eq!(grpc::parse_grpc_timeout(b"10x"), None);
    assert_eq!(grpc::parse_tri_timeout(b"250"), Some(250_000));
    let mut b = [0; 10];
    assert_eq!(grpc::status_text(14, &mut b), b"14");
    assert_eq!(grpc::status_text(0, &mut b), b"0");
}

proptest! {
    #[test]
    fn huffman_round_trips(s in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut enc = Vec::new();
        hpack::huffman_encode(&s, &mut enc);
        let mut dec = Vec::new();
        hpack::huffman_decode(&enc, &mut dec).unwrap();
        prop_assert_eq!(dec, s);
    }

    #[test]
    fn encoder_output_decodes_to_input(
        fields in proptest::collection::vec(
            (prop_oneof![Just(b":path".to_vec()), Just(b"content-type".to_vec()), Just(b":method".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..20)],
             prop_oneof![Just(b"POST".to_vec()), proptest::collection::vec(any::<u8>(), 0..300)],
             any::<bool>()),
            0..20)
    ) {
        let mut block = Vec::new();
        for (n, v, never) in &fields {
            hpack::encode_field(&mut block, n, v, *never);
        }
        let mut d = Decoder::default();
        let mut got = Vec::new();
        d.decode(&block, &mut |n, v, never| got.push((n.to_vec(), v.to_vec(), never))).unwrap();
        prop_assert_eq!(got, fields);
    }

    #[test]
    fn decoder_never_panics(block in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut d = Decoder::new(256);
        let _ = d.decode(&block, &mut |_, _, _| {});
        let _ = d.decode(&block, &mut |_, _, _| {});
    }
}

/// The stateful encoder: a repeated field costs one byte, literals are Huffman-coded when
/// shorter, the peer's table size is followed (updates announced, entries evicted alike), and
/// a peer decoder kept across blocks always reads back the fields given.
#[test]
fn stateful_encoder_indexes_and_stays_in_step_with_the_peer() {
    use super::hpack::{encode_field, Encoder};
    let mut enc = Encoder::default();
    let mut peer = Decoder::default();
    let big = "a".repeat(3900);
    let fields = [
        (":method", "POST"),
        (":path", "/helloworld.Greeter/SayHello"),
        ("content-type", "application/grpc"),
        ("x-amp", big.as_str()),
        ("authorization", "secret"),
    ];
    let mut stateless = Vec::new();
    for (n, v) in fields {
        encode_field(
            &mut stateless,
            n.as_bytes(),
            v.as_bytes(),
            n == "authorization",
        );
    }
    let mut sizes = Vec::new();
    for round in 0..4 {
        if round == 2 {
            // The peer shrinks its table to 256 bytes: the 4 KB entry cannot stay.
            enc.set_peer_table_size(256);
        }
        let mut out = Vec::new();
        enc.encode_block(&mut out, &stateless).unwrap();
        sizes.push(out.len());
        let got = decode_all(&mut peer, &out).unwrap();
        assert_eq!(got, pairs(&fields), "round {round}");
        assert!(enc.table_bytes() == peer.table_bytes(), "round {round}");
    }
    // First block: Huffman literals (3900 'a' take 5 bits each); then a few index bytes.
    assert!(sizes[0] < 2600, "{sizes:?}");
    assert!(sizes[1] < 20, "{sizes:?}");
    // Table of 256: the big field goes literal again, without indexing.
    assert!(sizes[3] > 2000, "{sizes:?}");
    let mut never = Vec::new();
    enc.encode(&mut never, b"authorization", b"secret", true);
    assert_eq!(never[0] & 0xf0, 0x10, "never-indexed kept");
}

/// A table full of one large entry is not churned by small fields (they go literal instead).
#[test]
fn stateful_encoder_keeps_a_large_entry_against_small_ones() {
    use super::hpack::Encoder;
    let mut enc = Encoder::default();
    let mut peer = Decoder::default();
    let big = "z".repeat(4000);
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let mut out = Vec::new();
        for (n, v) in [
            (":path", "/a.B/C"),
            ("x-amp", big.as_str()),
            ("te", "trailers"),
        ] {
            enc.encode(&mut out, n.as_bytes(), v.as_bytes(), false);
        }
        sizes.push(out.len());
        decode_all(&mut peer, &out).unwrap();
        assert_eq!(enc.table_bytes(), peer.table_bytes());
    }
    assert!(sizes[1] < 40 && sizes[2] < 40, "{sizes:?}");
}

/// A block that changed nothing in the table is copied the next time it comes, and never after
/// the table changed (an insertion shifts every dynamic index; a new peer table size).
#[test]
fn stateful_encoder_reuses_a_repeated_block_only_while_the_table_stands() {
    use super::hpack::{encode_field, Encoder};
    let block = |fields: &[(&str, &str)]| {
        let mut b = Vec::new();
        for (n, v) in fields {
            encode_field(&mut b, n.as_bytes(), v.as_bytes(), false);
        }
        b
    };
    let a_fields = [(":status", "200"), ("content-type", "application/grpc")];
    let b_fields = [("x-new", "one"), ("x-other", "two")];
    let c_fields = [("grpc-status", "0"), ("x-late", "three")];
    let (a, b, c) = (block(&a_fields), block(&b_fields), block(&c_fields));
    let mut enc = Encoder::default();
    let mut peer = Decoder::default();
    let script: [(&[u8], &[(&str, &str)]); 9] = [
        (&a, &a_fields),
        (&a, &a_fields),
        (&a, &a_fields),
        (&b, &b_fields),
        (&a, &a_fields),
        (&a, &a_fields),
        (&c, &c_fields),
        (&a, &a_fields),
        (&a, &a_fields),
    ];
    let mut outs = Vec::new();
    for (round, (blk, fields)) in script.iter().enumerate() {
        if round == 5 {
            enc.set_peer_table_size(64);
        }
        let mut out = Vec::new();
        enc.encode_block(&mut out, blk).unwrap();
        let got = decode_all(&mut peer, &out).unwrap();
        assert_eq!(got, pairs(fields), "round {round}");
        assert_eq!(enc.table_bytes(), peer.table_bytes(), "round {round}");
        outs.push(out);
    }
    // Rounds 1 and 2: all indexed, the same bytes; round 4 after B's insertions: other indexes.
    assert_eq!(outs[1], outs[2]);
    assert_ne!(outs[2], outs[4], "B's entries shifted A's indexes");
}

/// The memo (fields equal to the last similar block's written from it) changes no byte: a
/// script of gRPC-like response headers and trailers with changing values (a `date` each
/// "second", service times, statuses), never-indexed and oversized fields, other blocks between
/// and peer table size changes encodes exactly as an encoder that encodes every field afresh,
/// and decodes to the fields sent.
#[test]
fn stateful_encoder_memo_writes_what_fresh_encoding_writes() {
    use super::hpack::{encode_field, Encoder};
    let mut memo = Encoder::default();
    let mut fresh = Encoder::default();
    fresh.no_memo = true;
    let mut peer = Decoder::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let big = "b".repeat(3000);
    let (mut hits, mut total) = (0usize, 0usize);
    for round in 0..3000 {
        if round % 700 == 350 {
            let size = [0u32, 256, 4096, 1024][(round / 700) % 4];
            memo.set_peer_table_size(size);
            fresh.set_peer_table_size(size);
        }
        let date = format!(
            "Sat, 05 Dec 2026 20:{:02}:{:02} GMT",
            round / 600,
            round / 10 % 60
        );
        let ms = next(6).to_string();
        let status = if next(20) == 0 { "14" } else { "0" };
        let mut fields: Vec<(String, String, bool)> = match next(10) {
            0 => vec![
                (":status".into(), "200".into(), false),
                ("x-other".into(), next(3).to_string(), false),
            ],
            1..=4 => vec![
                ("grpc-status".into(), status.into(), false),
                ("grpc-message".into(), String::new(), false),
            ],
            _ => vec![
                (":status".into(), "200".into(), false),
                ("content-type".into(), "application/grpc".into(), false),
                ("x-envoy-upstream-service-time".into(), ms, false),
                ("date".into(), date, false),
                ("server".into(), "ringside".into(), false),
            ],
        };
        if next(25) == 0 {
            fields.push(("authorization".into(), "secret".into(), true));
        }
        if next(40) == 0 {
            fields.push(("x-big".into(), big.clone(), false));
        }
        let mut block = Vec::new();
        for (n, v, never) in &fields {
            encode_field(&mut block, n.as_bytes(), v.as_bytes(), *never);
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        memo.encode_block(&mut a, &block).unwrap();
        fresh.encode_block(&mut b, &block).unwrap();
        assert_eq!(a, b, "round {round}: {fields:?}");
        let got = decode_all(&mut peer, &a).unwrap();
        let want: Vec<(String, String)> = fields
            .iter()
            .map(|(n, v, _)| (n.clone(), v.clone()))
            .collect();
        assert_eq!(got, want, "round {round}");
        assert_eq!(memo.table_bytes(), peer.table_bytes(), "round {round}");
        total += 1;
        hits += usize::from(a.len() < 12);
    }
    // Many blocks are a few index bytes: the table holds their fields.
    assert!(hits > total / 8, "{hits} of {total}");
}

/// A name whose values change with every message (`x-envoy-upstream-service-time`,
/// `x-request-id`) takes one table entry, its first value's: later values name it by index
/// and go raw, and the table does not churn (the other entries stay referenced by index).
#[test]
fn stateful_encoder_keeps_volatile_values_out_of_the_table() {
    use super::hpack::{encode_field, Encoder};
    let mut enc = Encoder::default();
    let mut peer = Decoder::default();
    let mut sizes = Vec::new();
    let mut table = Vec::new();
    for i in 0..50 {
        let id = format!("{i:08x}-0000-4000-8000-000000000000");
        let fields = [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("x-envoy-upstream-service-time", &*i.to_string()),
            ("x-request-id", &*id),
        ];
        let mut block = Vec::new();
        for (n, v) in fields {
            encode_field(&mut block, n.as_bytes(), v.as_bytes(), false);
        }
        let mut out = Vec::new();
        enc.encode_block(&mut out, &block).unwrap();
        assert_eq!(decode_all(&mut peer, &out).unwrap(), pairs(&fields), "{i}");
        assert_eq!(enc.table_bytes(), peer.table_bytes(), "{i}");
        sizes.push(out.len());
        table.push(enc.table_bytes());
    }
    // content-type, the first service time, the first request id: nothing added after.
    assert!(table.iter().all(|&t| t == table[0]), "{table:?}");
    // Later blocks: 2 index bytes, then twice an indexed name (2 bytes), a length and the
    // raw value.
    assert!(
        sizes[1..]
            .iter()
            .all(|&s| s <= 2 + (2 + 1 + 2) + (2 + 1 + 36)),
        "{sizes:?}"
    );
}
