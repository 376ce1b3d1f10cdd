//! A request's hash for RING_HASH / MAGLEV clusters: its route's `hash_policy` evaluated as
//! Envoy's `Http::HashPolicyImpl::generateHash` does (docs/governance.md#consistent-hashing),
//! on HTTP/2 (gRPC / Triple) and HTTP/1.1 requests alike, and the cookies a `ttl` generates
//! (Envoy's `Router::Filter::addDownstreamSetCookie`). Allocates nothing unless a header
//! hashed has more than [`INLINE_VALUES`] values (or a generated cookie's `set-cookie` is
//! longer than [`SET_COOKIE_INLINE`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::cluster::ring::{xxhash64, xxhash64_chain};
use crate::route::{HashKey, HashPolicy};

use super::headers::HeaderList;

/// Values of one header hashed without allocating.
const INLINE_VALUES: usize = 8;

/// The hash of a request with headers `hl` (pseudo-headers included), path `path` (with its
/// query) from `source` (the caller's address): each policy's hash in turn, the hash so far
/// rotated left by one and xor-ed with it; a `terminal` policy that leaves a hash ends the
/// list. `None` when no policy gave a value (the balancer then picks at random).
///
/// `conn`: the caller's connection (remote, local address) when the request goes to a hashing
/// cluster (Envoy evaluates the policies only then): a cookie policy with a `ttl` that finds
/// no cookie (or an empty one) hashes a value generated from it, and the second value says
/// which policies did (bit `i`: policy `i`) and the value, for the response's `set-cookie`.
pub fn request_hash(
    policies: &[HashPolicy],
    hl: &HeaderList,
    path: &[u8],
    source: Option<IpAddr>,
    conn: Option<(SocketAddr, SocketAddr)>,
) -> (Option<u64>, Option<(u64, u64)>) {
    let mut hash: Option<u64> = None;
    let mut generated: Option<(u64, u64)> = None;
    for (i, p) in policies.iter().enumerate() {
        let new = match &p.key {
            HashKey::Header(name) => header_hash(hl, name),
            HashKey::SourceIp => source.map(ip_hash),
            HashKey::QueryParameter(name) => query_value(path, name).map(xxhash64),
            HashKey::Cookie(name, generate) => {
                match cookie_value(hl, name).filter(|v| !v.is_empty()) {
                    Some(v) => Some(xxhash64(v)),
                    None => match (generate, conn) {
                        (Some(_), Some(c)) if i < 64 => {
                            let value = generated.map_or_else(|| cookie_of(c), |g| g.1);
                            generated = Some((generated.map_or(0, |g| g.0) | 1 << i, value));
                            // Envoy hashes the cookie's text: 16 lower-case hex digits.
                            Some(xxhash64(&hex16(value)))
                        }
                        _ => None,
                    },
                }
            }
        };
        if let Some(n) = new {
            hash = Some(hash.map_or(0, |h| h.rotate_left(1)) ^ n);
        }
        if p.terminal && hash.is_some() {
            break;
        }
    }
    (hash, generated)
}

/// A generated cookie's value for a connection: xxHash64 of its remote then its local address
/// as text (`10.0.0.1:5000` and `[::1]:80` forms, as Envoy's `asString`).
fn cookie_of((remote, local): (SocketAddr, SocketAddr)) -> u64 {
    use std::io::Write;
    let mut buf = [0u8; 128];
    let mut w = &mut buf[..];
    let _ = write!(w, "{remote}{local}");
    let len = 128 - w.len();
    xxhash64(&buf[..len])
}

/// `v` as 16 lower-case hex digits (Envoy's `Hex::uint64ToHex`).
pub fn hex16(v: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// A `set-cookie` value built on the stack up to this length.
pub const SET_COOKIE_INLINE: usize = 256;

/// The cookies a request's hash generated, kept until its response: Envoy's router adds one
/// `set-cookie` per generating policy each time it picks a host (a retry adds them again),
/// after the upstream's response headers, before the route's response mutations.
#[derive(Clone, Debug)]
pub struct Generated {
    policies: Arc<[HashPolicy]>,
    /// Bit `i`: policy `i` generated.
    mask: u64,
    value: u64,
}

impl Generated {
    /// From [`request_hash`]'s second value.
    pub fn new(policies: &Arc<[HashPolicy]>, (mask, value): (u64, u64)) -> Generated {
        Generated {
            policies: policies.clone(),
            mask,
            value,
        }
    }

    /// Each `set-cookie` value for a request that picked a host `picks` times, in order.
    pub fn each(&self, picks: u32, mut f: impl FnMut(&[u8])) {
        let hex = hex16(self.value);
        for _ in 0..picks.max(1) {
            for (i, p) in self.policies.iter().enumerate().take(64) {
                let HashKey::Cookie(_, Some(sc)) = &p.key else {
                    continue;
                };
                if self.mask & (1 << i) == 0 {
                    continue;
                }
                let len = sc.head.len() + hex.len() + sc.tail.len();
                let mut inline = [0u8; SET_COOKIE_INLINE];
                let mut heap = Vec::new();
                let out: &mut [u8] = match len <= SET_COOKIE_INLINE {
                    true => &mut inline[..len],
                    false => {
                        heap.resize(len, 0);
                        &mut heap
                    }
                };
                out[..sc.head.len()].copy_from_slice(&sc.head);
                out[sc.head.len()..sc.head.len() + 16].copy_from_slice(&hex);
                out[sc.head.len() + 16..].copy_from_slice(&sc.tail);
                f(out);
            }
        }
    }
}

/// Envoy's `HeaderHashMethod`: the header's values sorted, each one's xxHash64 seeded with
/// the hash of those before it (one value: its xxHash64, as Envoy 1.40 does it: checked
/// against its landings); `None` without the header.
fn header_hash(hl: &HeaderList, name: &[u8]) -> Option<u64> {
    let mut inline: [&[u8]; INLINE_VALUES] = [&[]; INLINE_VALUES];
    let mut n = 0;
    let mut more: Vec<&[u8]> = Vec::new();
    for (k, v, _) in hl.iter() {
        if k != name {
            continue;
        }
        if n < INLINE_VALUES {
            inline[n] = v;
        } else {
            if more.is_empty() {
                more.extend_from_slice(&inline);
            }
            more.push(v);
        }
        n += 1;
    }
    match n {
        0 => None,
        1 => Some(xxhash64(inline[0])),
        _ if n <= INLINE_VALUES => {
            let values = &mut inline[..n];
            values.sort_unstable();
            Some(xxhash64_chain(values))
        }
        _ => {
            more.sort_unstable();
            Some(xxhash64_chain(&more))
        }
    }
}

/// Envoy's `IpHashMethod`: the xxHash64 of the address as text (`10.0.0.1`, `::1`).
fn ip_hash(ip: IpAddr) -> u64 {
    use std::io::Write;
    let mut buf = [0u8; 64];
    let mut w = &mut buf[..];
    let _ = write!(w, "{ip}");
    let len = 64 - w.len();
    xxhash64(&buf[..len])
}

/// Envoy's `QueryParameterHashMethod`: the first value of parameter `name` in the path's
/// query, not decoded (a parameter without `=`: the empty value).
fn query_value<'a>(path: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let q = path.iter().position(|&b| b == b'?')?;
    path[q + 1..]
        .split(|&b| b == b'&')
        .find_map(|p| match p.iter().position(|&b| b == b'=') {
            Some(eq) if &p[..eq] == name => Some(&p[eq + 1..]),
            None if p == name => Some(&p[p.len()..]),
            _ => None,
        })
}

/// Envoy's `Utility::parseCookieValue`: the value of the first cookie `name` in the `cookie`
/// headers (`k=v` pairs split by `;`, leading spaces of the name skipped, one pair of double
/// quotes around the value removed).
fn cookie_value<'a>(hl: &'a HeaderList, name: &[u8]) -> Option<&'a [u8]> {
    hl.iter()
        .filter(|(k, _, _)| *k == b"cookie")
        .flat_map(|(_, v, _)| v.split(|&b| b == b';'))
        .find_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            let start = pair.iter().position(|&b| b != b' ').unwrap_or(0).min(eq);
            if &pair[start..eq] != name {
                return None;
            }
            let v = &pair[eq + 1..];
            Some(match v {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(fields: &[(&str, &str)]) -> HeaderList {
        let mut hl = HeaderList::default();
        for (k, v) in fields {
            hl.push(k.as_bytes(), v.as_bytes(), false, 1 << 20);
        }
        hl
    }

    fn policy(key: HashKey, terminal: bool) -> HashPolicy {
        HashPolicy { key, terminal }
    }

    #[test]
    fn policies_combine_as_envoys() {
        let hl = list(&[
            (":path", "/svc/m?a=1&b&user=x%20y"),
            ("x-user", "bob"),
            ("x-multi", "b"),
            ("x-multi", "a"),
            ("cookie", "k=1; session=\"abc\""),
        ]);
        let header = |n: &str| policy(HashKey::Header(n.as_bytes().into()), false);
        let h = |p: &[HashPolicy]| request_hash(p, &hl, b"/svc/m?a=1&b&user=x%20y", None, None).0;
        assert_eq!(h(&[header("x-user")]), Some(xxhash64(b"bob")));
        // Several values: sorted, chained.
        let ab = xxhash64_chain(&[b"a", b"b"]);
        assert_eq!(h(&[header("x-multi")]), Some(ab));
        assert_eq!(h(&[header("x-none")]), None);
        // Two policies: rotate-left-1 then xor; a missing one adds nothing.
        let both = xxhash64(b"bob").rotate_left(1) ^ ab;
        assert_eq!(
            h(&[header("x-user"), header("x-none"), header("x-multi")]),
            Some(both)
        );
        // Terminal with a hash ends the list; without one it does not.
        let mut t = header("x-user");
        t.terminal = true;
        assert_eq!(h(&[t.clone(), header("x-multi")]), Some(xxhash64(b"bob")));
        let mut tn = header("x-none");
        tn.terminal = true;
        assert_eq!(h(&[tn, header("x-multi")]), Some(ab));
        let q = |n: &str| policy(HashKey::QueryParameter(n.as_bytes().into()), false);
        assert_eq!(h(&[q("user")]), Some(xxhash64(b"x%20y")));
        assert_eq!(h(&[q("b")]), Some(xxhash64(b"")));
        assert_eq!(h(&[q("c")]), None);
        let c = |n: &str| policy(HashKey::Cookie(n.as_bytes().into(), None), false);
        assert_eq!(h(&[c("session")]), Some(xxhash64(b"abc")));
        assert_eq!(h(&[c("k")]), Some(xxhash64(b"1")));
        assert_eq!(h(&[c("none")]), None);
        let ip = request_hash(
            &[policy(HashKey::SourceIp, false)],
            &hl,
            b"/",
            Some("10.1.2.3".parse().unwrap()),
            None,
        )
        .0;
        assert_eq!(ip, Some(xxhash64(b"10.1.2.3")));
        let many: Vec<(String, String)> = (0..12)
            .map(|i| ("x-n".into(), format!("{:02}", 11 - i)))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let hl = list(&refs);
        let all: Vec<String> = (0..12).map(|i| format!("{i:02}")).collect();
        let all: Vec<&[u8]> = all.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(
            request_hash(&[header("x-n")], &hl, b"/", None, None).0,
            Some(xxhash64_chain(&all))
        );
    }

    /// A cookie policy with a ttl and no cookie: the value Envoy 1.40 generated for a
    /// connection from 127.0.0.1:45555 to 127.0.0.1:41080 (its `set-cookie` seen with curl
    /// `--local-port`), hashed as its hex text; the `set-cookie` values per pick.
    #[test]
    fn generated_cookies_are_envoys() {
        let sc = crate::route::SetCookie {
            head: b"sid=\""[..].into(),
            tail: b"\"; Max-Age=3600; Path=/p; SameSite=Strict; Secure; HttpOnly"[..].into(),
        };
        let gen = |n: &str| {
            policy(
                HashKey::Cookie(n.as_bytes().into(), Some(Box::new(sc.clone()))),
                false,
            )
        };
        let policies: Arc<[HashPolicy]> =
            vec![gen("sid"), policy(HashKey::SourceIp, false), gen("sid")].into();
        let conn = Some((
            "127.0.0.1:45555".parse().unwrap(),
            "127.0.0.1:41080".parse().unwrap(),
        ));
        let none = list(&[("cookie", "sid=")]);
        let (hash, g) = request_hash(&policies, &none, b"/", None, conn);
        assert_eq!(g, Some((0b101, 0x399834671bfa5a65)));
        let one = xxhash64(b"399834671bfa5a65");
        assert_eq!(hash, Some(one.rotate_left(1) ^ one));
        let mut seen = Vec::new();
        Generated::new(&policies, g.unwrap())
            .each(2, |v| seen.push(String::from_utf8(v.to_vec()).unwrap()));
        let want =
            "sid=\"399834671bfa5a65\"; Max-Age=3600; Path=/p; SameSite=Strict; Secure; HttpOnly";
        assert_eq!(seen, vec![want; 4]);
        // A cookie sent: its value, nothing generated; no connection (not a hashing cluster):
        // nothing.
        let sent = list(&[("cookie", "sid=abc")]);
        assert_eq!(
            request_hash(&policies[..1], &sent, b"/", None, conn),
            (Some(xxhash64(b"abc")), None)
        );
        assert_eq!(
            request_hash(&policies[..1], &none, b"/", None, None),
            (None, None)
        );
        assert_eq!(&hex16(0x0b47fe882d461bf2), b"0b47fe882d461bf2");
    }
}
