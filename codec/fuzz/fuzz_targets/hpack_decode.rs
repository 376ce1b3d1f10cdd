//! HPACK decoding over arbitrary header blocks, with one decoder kept across blocks as on a
//! connection: must never panic, the dynamic table must stay within the size the peer may use,
//! and every decoded field must survive ringside's re-encoding (what the Triple relay sends to
//! the other side) unchanged, "never indexed" included. Huffman strings round-trip.
//!
//! Input: one byte choosing the table limit we advertise, then header blocks, each a 2-byte
//! big-endian length and its bytes (the last one takes what is left).
#![no_main]

use codec::h2::hpack::{self, Decoder};
use libfuzzer_sys::fuzz_target;

const LIMITS: [usize; 4] = [0, 256, hpack::TABLE_BYTES_DEFAULT, 65_536];

type Field = (Vec<u8>, Vec<u8>, bool);

fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<Field>, hpack::HpackError> {
    let mut fields = Vec::new();
    d.decode(block, &mut |n, v, never| {
        fields.push((n.to_vec(), v.to_vec(), never))
    })?;
    Ok(fields)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let limit = LIMITS[usize::from(pick) % LIMITS.len()];
    let mut d = Decoder::new(limit);
    while !rest.is_empty() {
        let block = match rest {
            [a, b, tail @ ..] => {
                let n = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
                let (block, after) = tail.split_at(n);
                rest = after;
                block
            }
            _ => std::mem::take(&mut rest),
        };
        let Ok(fields) = decode(&mut d, block) else {
            // A decoding error is a connection error: the table is not used again.
            return;
        };
        assert!(
            d.table_bytes() <= limit,
            "table {} > limit {limit}",
            d.table_bytes()
        );

        let mut encoded = Vec::new();
        for (n, v, never) in &fields {
            hpack::encode_field(&mut encoded, n, v, *never);
            let mut huff = Vec::new();
            hpack::huffman_encode(v, &mut huff);
            let mut back = Vec::new();
            hpack::huffman_decode(&huff, &mut back).expect("own huffman output decodes");
            assert_eq!(&back, v);
        }
        // The encoder keeps no state: a fresh decoder must read its output.
        let again = decode(&mut Decoder::new(0), &encoded).expect("own encoding decodes");
        assert_eq!(again, fields);
    }
});
