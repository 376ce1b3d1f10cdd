//! Reader and writer tests: the spec's own byte examples (so reader and writer are not only
//! checked against each other), every prefix of valid input, hostile input, and property tests.

use proptest::prelude::*;

use super::*;

fn read(bytes: &[u8]) -> Scalar<'_> {
    let mut r = Reader::new(bytes);
    let v = r.read_value().unwrap();
    assert_eq!(
        r.position(),
        bytes.len(),
        "value {bytes:02x?} not fully consumed"
    );
    v
}

fn written(f: impl FnOnce(&mut Writer<&mut Vec<u8>>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut Writer::new(&mut out));
    out
}

/// Encodings from the Hessian 2.0 serialization spec's examples, with their values.
fn spec_scalars() -> Vec<(Vec<u8>, Scalar<'static>)> {
    vec![
        (vec![0x4e], Scalar::Null),
        (vec![0x54], Scalar::Bool(true)),
        (vec![0x46], Scalar::Bool(false)),
        (vec![0x90], Scalar::Int(0)),
        (vec![0x80], Scalar::Int(-16)),
        (vec![0xbf], Scalar::Int(47)),
        (vec![0xc8, 0x30], Scalar::Int(48)),
        (vec![0xc0, 0x00], Scalar::Int(-2048)),
        (vec![0xc7, 0x00], Scalar::Int(-256)),
        (vec![0xcf, 0xff], Scalar::Int(2047)),
        (vec![0xd0, 0x00, 0x00], Scalar::Int(-262144)),
        (vec![0xd7, 0xff, 0xff], Scalar::Int(262143)),
        (vec![b'I', 0x00, 0x00, 0x01, 0x2c], Scalar::Int(300)),
        (vec![b'I', 0x80, 0, 0, 0], Scalar::Int(i32::MIN)),
        (vec![0xe0], Scalar::Long(0)),
        (vec![0xd8], Scalar::Long(-8)),
        (vec![0xef], Scalar::Long(15)),
        (vec![0xf0, 0x00], Scalar::Long(-2048)),
        (vec![0xff, 0xff], Scalar::Long(2047)),
        (vec![0x38, 0x00, 0x00], Scalar::Long(-262144)),
        (vec![0x3f, 0xff, 0xff], Scalar::Long(262143)),
        (vec![0x59, 0x00, 0x00, 0x01, 0x2c], Scalar::Long(300)),
        (vec![b'L', 0, 0, 0, 0, 0, 0, 0x01, 0x2c], Scalar::Long(300)),
        (vec![0x5b], Scalar::Double(0.0)),
        (vec![0x5c], Scalar::Double(1.0)),
        (vec![0x5d, 0x80], Scalar::Double(-128.0)),
        (vec![0x5d, 0x7f], Scalar::Double(127.0)),
        (vec![0x5e, 0x80, 0x00], Scalar::Double(-32768.0)),
        (vec![0x5e, 0x7f, 0xff], Scalar::Double(32767.0)),
        (
            vec![0x5f, 0x00, 0x00, 0x30, 0x39],
            Scalar::Double(12345.0 * 0.001),
        ),
        (
            vec![b'D', 0x40, 0x28, 0x80, 0, 0, 0, 0, 0],
            Scalar::Double(12.25),
        ),
        (
            vec![0x4a, 0x00, 0x00, 0x00, 0xd0, 0x4b, 0x92, 0x84, 0xb8],
            Scalar::DateMs(894_621_091_000),
        ),
        (
            vec![0x4b, 0x00, 0xe3, 0x83, 0x8f],
            Scalar::DateMs(894_621_060_000),
        ),
        (vec![0x00], Scalar::Str(b"")),
        (b"\x05hello".to_vec(), Scalar::Str(b"hello")),
        (vec![0x01, 0xc3, 0x83], Scalar::Str("\u{c3}".as_bytes())),
        (b"S\x00\x05hello".to_vec(), Scalar::Str(b"hello")),
        (b"\x30\x05hello".to_vec(), Scalar::Str(b"hello")),
        (vec![0x20], Scalar::Binary(b"")),
        (vec![0x23, 1, 2, 3], Scalar::Binary(&[1, 2, 3])),
        (vec![0x34, 0x03, 1, 2, 3], Scalar::Binary(&[1, 2, 3])),
        (vec![b'B', 0x00, 0x03, 1, 2, 3], Scalar::Binary(&[1, 2, 3])),
    ]
}

/// Composite values from the spec (lists, maps, objects, refs), each read as `Composite`.
fn spec_composites() -> Vec<Vec<u8>> {
    vec![
        // Fixed typed list `V type int value*`: int[] {0, 1}.
        b"V\x04[int\x92\x90\x91".to_vec(),
        // Variable untyped list.
        b"\x57\x90\x91Z".to_vec(),
        // Variable typed list.
        b"\x55\x04[int\x90\x91Z".to_vec(),
        // Fixed untyped list 'X'.
        b"\x58\x92\x90\x91".to_vec(),
        // Compact fixed typed and untyped lists.
        b"\x72\x04[int\x90\x91".to_vec(),
        b"\x7a\x90\x91".to_vec(),
        // A second list refers to the first list's type by index.
        b"\x7a\x72\x04[int\x90\x91\x71\x90\x90".to_vec(),
        // Untyped map.
        b"H\x91\x03fee\x92\x03fie\x93\x03foeZ".to_vec(),
        // Typed map.
        b"M\x13com.caucho.test.Car\x05color\x0aaquamarine\x05model\x06BeetleZ".to_vec(),
        // Class definition, then two objects of it (in a list so both are one value).
        b"\x7a\x43\x0bexample.Car\x92\x05color\x05modelO\x90\x03red\x08corvette\x60\x05green\x05civic"
            .to_vec(),
        // Circular list via a ref: `class LinkedList { head, tail }`.
        b"C\x0aLinkedList\x92\x04head\x04tailO\x90\x91\x51\x90".to_vec(),
        // Chunked string and binary.
        {
            let mut v = vec![b'R', 0x00, 0x02, b'a', b'b'];
            v.extend_from_slice(b"\x03cde");
            v
        },
        {
            let mut v = vec![b'A', 0x00, 0x02, 1, 2];
            v.extend_from_slice(&[0x21, 3]);
            v
        },
    ]
}

#[test]
fn reads_spec_scalars() {
    for (bytes, value) in spec_scalars() {
        assert_eq!(read(&bytes), value, "{bytes:02x?}");
    }
}

#[test]
fn skips_spec_composites() {
    for bytes in spec_composites() {
        let mut r = Reader::new(&bytes);
        r.skip_value()
            .unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
        assert_eq!(r.position(), bytes.len(), "{bytes:02x?}");
        assert_eq!(skip_value(&bytes).unwrap(), bytes.len());
    }
}

#[test]
fn every_strict_prefix_is_truncated_not_panic() {
    let all = spec_scalars()
        .into_iter()
        .map(|(b, _)| b)
        .chain(spec_composites());
    for bytes in all {
        for len in 0..bytes.len() {
            let prefix = &bytes[..len];
            assert!(
                skip_value(prefix).is_err(),
                "prefix {prefix:02x?} of {bytes:02x?} decoded"
            );
        }
    }
}

#[test]
fn chunks_iterate_and_copy() {
    let mut long = String::from("é");
    long.push_str(&"a".repeat(CHUNK_MAX + 10));
    let bytes = written(|w| {
        w.string(&long);
    });
    assert_eq!(bytes[0], tag::STRING_CHUNK);
    let Scalar::StrChunked(chunks) = read(&bytes) else {
        panic!("not chunked");
    };
    assert_eq!(chunks.iter().count(), 2);
    let mut out = Vec::new();
    chunks.copy_to(&mut out);
    assert_eq!(out, long.as_bytes());

    let data: Vec<u8> = (0..CHUNK_MAX * 2 + 3).map(|i| i as u8).collect();
    let bytes = written(|w| {
        w.binary(&data);
    });
    let Scalar::BinaryChunked(chunks) = read(&bytes) else {
        panic!("not chunked");
    };
    assert_eq!(chunks.iter().count(), 3);
    let mut out = Vec::new();
    chunks.copy_to(&mut out);
    assert_eq!(out, data);
}

#[test]
fn strings_count_utf16_units() {
    // U+1F600 from Java: two 3-byte surrogates, two units.
    let cesu = written(|w| {
        w.string("\u{1f600}");
    });
    assert_eq!(cesu, [0x02, 0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]);
    assert!(matches!(read(&cesu), Scalar::Str(s) if s.len() == 6));
    // The same character as 4-byte UTF-8 (non-Java peers) also counts two units.
    let utf8 = [0x02, 0xf0, 0x9f, 0x98, 0x80];
    assert_eq!(read(&utf8), Scalar::Str("\u{1f600}".as_bytes()));
    assert_eq!(to_str("\u{1f600}".as_bytes()), Some("\u{1f600}"));
    // ...but not one.
    assert!(matches!(
        skip_value(&[0x01, 0xf0, 0x9f, 0x98, 0x80]),
        Err(DecodeError::BadUtf8 { .. })
    ));
    // Mixed: "añb" is 3 units, 4 bytes.
    assert_eq!(read("\x03añb".as_bytes()), Scalar::Str("añb".as_bytes()));
}

/// Short-form strings (tags 0x30-0x33, 32-1023 units) read by `read_value`'s inline path as
/// `value` reads them: the same span and position, every prefix truncated, non-ASCII counted
/// in units.
#[test]
fn short_form_strings_read_inline_as_in_full() {
    for (len, fill) in [(32, "a"), (55, "b"), (256, "c"), (1023, "d"), (40, "é")] {
        let text = fill.repeat(len);
        let bytes = written(|w| {
            w.string(&text);
        });
        assert!(
            (0x30..=0x33).contains(&bytes[0]),
            "{len}: tag {:#x}",
            bytes[0]
        );
        assert_eq!(read(&bytes), Scalar::Str(text.as_bytes()), "{len}");
        let mut full = Reader::new(&bytes);
        assert_eq!(full.value(0).unwrap(), Scalar::Str(text.as_bytes()));
        assert_eq!(full.position(), bytes.len());
        for cut in 0..bytes.len() {
            assert!(
                Reader::new(&bytes[..cut]).read_value().is_err(),
                "{len}: prefix of {cut} bytes read"
            );
        }
    }
}

#[test]
fn rejects_bad_utf8() {
    for bytes in [
        &[0x01, 0xff][..],
        &[0x01, 0x80],
        &[0x01, 0xc3, 0x41],
        &[0x01, 0xe2, 0x82],
    ] {
        assert!(skip_value(bytes).is_err(), "{bytes:02x?}");
    }
}

#[test]
fn rejects_reserved_tags() {
    for tag in [0x40, 0x45, 0x47, 0x50, b'Z'] {
        assert_eq!(
            skip_value(&[tag]),
            Err(DecodeError::UnexpectedTag {
                what: "value",
                tag,
                offset: 0
            })
        );
    }
}

#[test]
fn nesting_is_bounded() {
    // Lists of one list of one list ... deeper than the limit.
    let mut deep = vec![0x79; NESTING_DEPTH_MAX + 1];
    deep.push(0x4e);
    assert!(matches!(
        skip_value(&deep),
        Err(DecodeError::NestingTooDeep { .. })
    ));
    // At the limit it decodes.
    let mut ok = vec![0x79; NESTING_DEPTH_MAX];
    ok.push(0x4e);
    assert_eq!(skip_value(&ok).unwrap(), ok.len());
    // Maps nest too, and a hostile stream far deeper must not blow the stack.
    let mut maps = vec![b'H'; 100_000];
    maps.push(b'N');
    assert!(matches!(
        skip_value(&maps),
        Err(DecodeError::NestingTooDeep { .. })
    ));
}

#[test]
fn objects_of_many_class_defs_read_their_own_field_counts() {
    // More definitions than a reader keeps inline (16): each object must take its own
    // definition's field count, wherever the count is kept.
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    let names = ["a", "b", "c"];
    for i in 0..40 {
        w.class_def(&format!("example.C{i}"), &names[..i % 3]);
    }
    for i in (0..40).rev() {
        w.object_begin(i);
        for f in 0..i % 3 {
            w.int(f as i32);
        }
    }
    w.string("end");
    let mut r = Reader::new(&out);
    for _ in 0..40 {
        r.skip_value().unwrap();
    }
    assert_eq!(r.class_defs(), 40);
    assert_eq!(r.read_value().unwrap(), Scalar::Str(b"end"));
    assert!(r.is_empty());
}

#[test]
fn class_defs_are_bounded_and_checked() {
    let mut defs = Vec::new();
    for _ in 0..=CLASS_DEFS_MAX {
        defs.extend_from_slice(b"C\x01A\x90");
    }
    defs.push(b'N');
    assert!(matches!(
        skip_value(&defs),
        Err(DecodeError::TooManyClassDefs { .. })
    ));
    assert_eq!(
        skip_value(&[0x61]),
        Err(DecodeError::UnknownClassDef {
            offset: 0,
            index: 1,
            defined: 0
        })
    );
    assert!(matches!(
        skip_value(b"O\x8f"),
        Err(DecodeError::UnknownClassDef { index: -1, .. })
    ));
    // A field count beyond the input.
    assert!(matches!(
        skip_value(b"C\x01AI\x7f\xff\xff\xff"),
        Err(DecodeError::BadLength { .. })
    ));
}

#[test]
fn lengths_and_type_refs_are_checked() {
    assert!(matches!(
        skip_value(b"XI\x7f\xff\xff\xff\x90"),
        Err(DecodeError::BadLength { .. })
    ));
    assert!(matches!(
        skip_value(b"X\x8f"),
        Err(DecodeError::BadLength { len: -1, .. })
    ));
    assert!(matches!(
        skip_value(b"\x71\x90\x90"),
        Err(DecodeError::UnknownTypeRef { index: 0, .. })
    ));
    assert!(matches!(
        skip_value(b"\x71N\x90"),
        Err(DecodeError::UnexpectedTag { what: "type", .. })
    ));
    // A map missing its end.
    assert!(matches!(
        skip_value(b"H\x01a\x01b"),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn writer_emits_compact_forms() {
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (
            written(|w| {
                w.int(0);
            }),
            vec![0x90],
        ),
        (
            written(|w| {
                w.int(-16);
            }),
            vec![0x80],
        ),
        (
            written(|w| {
                w.int(48);
            }),
            vec![0xc8, 0x30],
        ),
        (
            written(|w| {
                w.int(262143);
            }),
            vec![0xd7, 0xff, 0xff],
        ),
        (
            written(|w| {
                w.int(300_000);
            }),
            vec![b'I', 0x00, 0x04, 0x93, 0xe0],
        ),
        (
            written(|w| {
                w.long(-8);
            }),
            vec![0xd8],
        ),
        (
            written(|w| {
                w.long(2047);
            }),
            vec![0xff, 0xff],
        ),
        (
            written(|w| {
                w.long(-262144);
            }),
            vec![0x38, 0, 0],
        ),
        (
            written(|w| {
                w.long(300_000);
            }),
            vec![0x59, 0x00, 0x04, 0x93, 0xe0],
        ),
        (
            written(|w| {
                w.double(0.0);
            }),
            vec![0x5b],
        ),
        (
            written(|w| {
                w.double(-128.0);
            }),
            vec![0x5d, 0x80],
        ),
        (
            written(|w| {
                w.double(12.25);
            }),
            vec![b'D', 0x40, 0x28, 0x80, 0, 0, 0, 0, 0],
        ),
        (
            written(|w| {
                w.string("hello");
            }),
            b"\x05hello".to_vec(),
        ),
        (
            written(|w| {
                w.binary(&[1, 2, 3]);
            }),
            vec![0x23, 1, 2, 3],
        ),
        (
            written(|w| {
                w.list_begin(2).int(0).int(1);
            }),
            vec![0x7a, 0x90, 0x91],
        ),
        (
            written(|w| {
                w.list_typed_begin("[int", 2).int(0).int(1);
            }),
            b"\x72\x04[int\x90\x91".to_vec(),
        ),
        (
            written(|w| {
                w.map_begin().int(1).string("fee").end();
            }),
            b"H\x91\x03feeZ".to_vec(),
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
    let s = "x".repeat(1000);
    assert_eq!(
        &written(|w| {
            w.string(&s);
        })[..2],
        &[0x33, 0xe8]
    );
    let s = "x".repeat(1024);
    assert_eq!(
        &written(|w| {
            w.string(&s);
        })[..3],
        &[b'S', 0x04, 0x00]
    );
}

/// A value tree for the writer→reader property test.
#[derive(Clone, Debug)]
enum Tree {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Date(i64),
    Str(String),
    Bin(Vec<u8>),
    List(Vec<Tree>),
    TypedList(String, Vec<Tree>),
    VarList(Vec<Tree>),
    Map(Vec<(Tree, Tree)>),
    TypedMap(String, Vec<(Tree, Tree)>),
    Object(Vec<Tree>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        Just(Tree::Null),
        any::<bool>().prop_map(Tree::Bool),
        any::<i32>().prop_map(Tree::Int),
        prop_oneof![any::<i64>(), -300_000i64..300_000].prop_map(Tree::Long),
        any::<f64>().prop_map(Tree::Double),
        any::<i64>().prop_map(Tree::Date),
        any::<String>().prop_map(Tree::Str),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Tree::Bin),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let items = proptest::collection::vec(inner.clone(), 0..10);
        let pairs = proptest::collection::vec((inner.clone(), inner), 0..5);
        prop_oneof![
            items.clone().prop_map(Tree::List),
            ("[a-z]{1,8}", items.clone()).prop_map(|(t, v)| Tree::TypedList(t, v)),
            items.clone().prop_map(Tree::VarList),
            pairs.clone().prop_map(Tree::Map),
            ("[a-z.]{1,12}", pairs).prop_map(|(t, v)| Tree::TypedMap(t, v)),
            items.prop_map(Tree::Object),
        ]
    })
}

fn write_tree<B: bytes::BufMut>(w: &mut Writer<B>, t: &Tree, classes: &mut usize) {
    match t {
        Tree::Null => {
            w.null();
        }
        Tree::Bool(v) => {
            w.bool(*v);
        }
        Tree::Int(v) => {
            w.int(*v);
        }
        Tree::Long(v) => {
            w.long(*v);
        }
        Tree::Double(v) => {
            w.double(*v);
        }
        Tree::Date(v) => {
            w.date_ms(*v);
        }
        Tree::Str(v) => {
            w.string(v);
        }
        Tree::Bin(v) => {
            w.binary(v);
        }
        Tree::List(items) => {
            w.list_begin(items.len());
            items.iter().for_each(|i| write_tree(w, i, classes));
        }
        Tree::TypedList(t, items) => {
            w.list_typed_begin(t, items.len());
            items.iter().for_each(|i| write_tree(w, i, classes));
        }
        Tree::VarList(items) => {
            w.list_variable_begin();
            items.iter().for_each(|i| write_tree(w, i, classes));
            w.end();
        }
        Tree::Map(pairs) | Tree::TypedMap(_, pairs) => {
            match t {
                Tree::TypedMap(name, _) => w.map_typed_begin(name),
                _ => w.map_begin(),
            };
            for (k, v) in pairs {
                write_tree(w, k, classes);
                write_tree(w, v, classes);
            }
            w.end();
        }
        Tree::Object(fields) => {
            let names: Vec<String> = (0..fields.len()).map(|i| format!("f{i}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            w.class_def("example.Obj", &names);
            w.object_begin(*classes);
            *classes += 1;
            fields.iter().for_each(|f| write_tree(w, f, classes));
        }
    }
}

fn scalar_of(t: &Tree) -> Option<Scalar<'_>> {
    Some(match t {
        Tree::Null => Scalar::Null,
        Tree::Bool(v) => Scalar::Bool(*v),
        Tree::Int(v) => Scalar::Int(*v),
        Tree::Long(v) => Scalar::Long(*v),
        Tree::Date(v) => Scalar::DateMs(*v),
        Tree::Str(v) if v.chars().all(|c| u32::from(c) <= 0xffff) && v.len() < CHUNK_MAX => {
            Scalar::Str(v.as_bytes())
        }
        Tree::Bin(v) => Scalar::Binary(v),
        _ => return None,
    })
}

proptest! {
    #[test]
    fn written_values_skip_exactly(trees in proptest::collection::vec(tree(), 1..4)) {
        let mut out = Vec::new();
        let mut classes = 0;
        let mut ends = Vec::new();
        {
            let mut w = Writer::new(&mut out);
            for t in &trees {
                write_tree(&mut w, t, &mut classes);
                ends.push(w.get_mut().len());
            }
        }
        let mut r = Reader::new(&out);
        for (t, end) in trees.iter().zip(ends) {
            let v = r.read_value().unwrap();
            prop_assert_eq!(r.position(), end);
            if let Some(want) = scalar_of(t) {
                prop_assert_eq!(v, want);
            }
            if let (Tree::Double(want), Scalar::Double(got)) = (t, v) {
                prop_assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
            }
        }
        prop_assert!(r.is_empty());
    }

    #[test]
    fn written_strings_read_back(s in any::<String>()) {
        let bytes = written(|w| { w.string(&s); });
        let mut r = Reader::new(&bytes);
        let v = r.read_value().unwrap();
        prop_assert!(r.is_empty());
        if s.chars().all(|c| u32::from(c) <= 0xffff) {
            prop_assert_eq!(v, Scalar::Str(s.as_bytes()));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut r = Reader::new(&bytes);
        while !r.is_empty() {
            if r.read_value().is_err() {
                break;
            }
        }
        if let Ok(Scalar::StrChunked(c) | Scalar::BinaryChunked(c)) = Reader::new(&bytes).read_value() {
            let mut out = Vec::new();
            c.copy_to(&mut out);
        }
    }

    #[test]
    fn arbitrary_bytes_after_valid_prefix_never_panic(
        t in tree(),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut out = Vec::new();
        write_tree(&mut Writer::new(&mut out), &t, &mut 0);
        let at = cut.index(out.len() + 1);
        out.truncate(at);
        out.extend_from_slice(&tail);
        let _ = skip_value(&out);
    }
}
