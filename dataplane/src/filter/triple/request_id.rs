//! `x-request-id` as Envoy's UUID request-id extension makes it: a random version-4 UUID,
//! lower-case hex in the 8-4-4-4-12 form, for a request that comes without one.
//!
//! Per shard (a thread-local generator, wyrand: 64 bits of state, seeded from the process's
//! random hash keys and the clock), hex by a 256-entry table, on the stack: no allocation, no
//! lock, a few dozen instructions per id.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_usize(&h as *const _ as usize);
    h.finish()
}

/// wyrand (Wang Yi's generator): passes BigCrush and PractRand; 2^64 period per shard.
fn next() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    })
}

/// Each byte's two lower-case hex digits.
const HEX: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    t
};

/// The length of a UUID's text.
pub const LEN: usize = 36;

/// A new random version-4 UUID (RFC 9562: version nibble 4, variant bits 10), as text.
pub fn uuid4() -> [u8; LEN] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&next().to_be_bytes());
    b[8..].copy_from_slice(&next().to_be_bytes());
    b[6] = b[6] & 0x0f | 0x40;
    b[8] = b[8] & 0x3f | 0x80;
    format(&b)
}

fn format(b: &[u8; 16]) -> [u8; LEN] {
    let mut out = [b'-'; LEN];
    let mut o = 0;
    for (i, &byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            o += 1;
        }
        let [hi, lo] = HEX[usize::from(byte)];
        out[o] = hi;
        out[o + 1] = lo;
        o += 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let u = uuid4();
            let s = std::str::from_utf8(&u).unwrap();
            let parts: Vec<&str> = s.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{s}"
            );
            assert!(s
                .bytes()
                .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            assert!(parts[2].starts_with('4'), "{s}");
            assert!(
                matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "{s}"
            );
            assert!(seen.insert(u), "{s} twice");
        }
    }

    #[test]
    fn hex_as_format_does() {
        let b: [u8; 16] = core::array::from_fn(|i| (i * 17 + 3) as u8);
        let want = b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let want = format!(
            "{}-{}-{}-{}-{}",
            &want[..8],
            &want[8..12],
            &want[12..16],
            &want[16..20],
            &want[20..]
        );
        assert_eq!(std::str::from_utf8(&format(&b)).unwrap(), want);
    }
}
