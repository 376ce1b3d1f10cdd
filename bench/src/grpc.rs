//! gRPC bits shared by `grpc-echo` and `grpc-load`: the Greeter path the benchmarks call and the
//! 5-byte length-prefixed HelloRequest they send (tests/peers/grpc/helloworld.proto, field 1
//! `name`, field 2 `payload`), encoded by hand so the bench needs no protobuf compiler.

use bytes::{BufMut, Bytes, BytesMut};

pub const GRPC_SERVICE: &str = "helloworld.Greeter";
pub const GRPC_METHOD: &str = "SayHello";

/// `/helloworld.Greeter/SayHello`.
pub fn grpc_path() -> String {
    format!("/{GRPC_SERVICE}/{GRPC_METHOD}")
}

fn varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// One gRPC message (flag 0, big-endian length) holding HelloRequest{name, payload}.
pub fn hello_request_frame(name: &str, payload_bytes: usize) -> Bytes {
    let mut msg = BytesMut::new();
    msg.put_u8(0x0a); // field 1, length-delimited
    varint(&mut msg, name.len() as u64);
    msg.put_slice(name.as_bytes());
    if payload_bytes > 0 {
        msg.put_u8(0x12); // field 2, length-delimited
        varint(&mut msg, payload_bytes as u64);
        msg.extend((0..payload_bytes).map(|i| (i % 251) as u8));
    }
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_matches_the_h2load_body() {
        // What `tests/peers/grpc/stubs.py --body FILE ringside` writes (protobuf's encoding).
        let want = [
            0u8, 0, 0, 0, 10, 0x0a, 8, b'r', b'i', b'n', b'g', b's', b'i', b'd', b'e',
        ];
        assert_eq!(&hello_request_frame("ringside", 0)[..], &want[..]);
        let f = hello_request_frame("a", 300);
        assert_eq!(&f[5..10], &[0x0a, 1, b'a', 0x12, 0xac]);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
    }
}
