//! `Vec<u8>` as a lowercase hex string in JSON (the unread bytes of a handed-over connection):
//! twice the bytes, where serde's default (an array of numbers) takes up to four times.

use serde::{Deserialize, Deserializer, Serializer};

const DIGITS: &[u8; 16] = b"0123456789abcdef";

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 15)] as char);
    }
    s.serialize_str(&text)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    decode(text.as_bytes())
        .ok_or_else(|| serde::de::Error::custom("unread: not an even-length hex string"))
}

fn decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    text.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn round_trip_and_bad_text() {
        assert_eq!(decode(b"00ff10da"), Some(vec![0, 255, 16, 0xda]));
        assert_eq!(decode(b"0"), None);
        assert_eq!(decode(b"zz"), None);
        assert_eq!(decode(b"AB"), None);
    }
}
