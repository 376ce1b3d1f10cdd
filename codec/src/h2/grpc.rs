//! gRPC and Triple details a proxy reads from headers: status codes, `grpc-timeout`,
//! `tri-service-timeout`, and the `/{service}/{method}` path.

/// gRPC status codes ringside produces itself.
pub mod status {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const INTERNAL: u32 = 13;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const UNAVAILABLE: u32 = 14;
}

/// Splits `/{service}/{method}` (the method may not contain '/'); `None` for other paths.
pub fn split_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = path.strip_prefix(b"/")?;
    let slash = rest.iter().rposition(|&b| b == b'/')?;
    let (service, method) = rest.split_at(slash);
    let method = method.get(1..)?;
    if service.is_empty() || method.is_empty() {
        return None;
    }
    Some((service, method))
}

/// `grpc-timeout` (at most 8 digits and a unit: H M S m u n) in microseconds, rounded up.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<u64> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n = parse_u64(digits)?;
    Some(match unit {
        b'H' => n * 3_600_000_000,
        b'M' => n * 60_000_000,
        b'S' => n * 1_000_000,
        b'm' => n * 1_000,
        b'u' => n,
        b'n' => n.div_ceil(1_000),
        _ => return None,
    })
}

/// `tri-service-timeout`: milliseconds, in microseconds.
pub fn parse_tri_timeout(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 12 {
        return None;
    }
    parse_u64(v).map(|ms| ms * 1_000)
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// Writes a status code as decimal (no allocation).
pub fn status_text(code: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    let mut n = code;
    // u32::MAX has 10 digits: the buffer always has room.
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        i -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or_default()
}
