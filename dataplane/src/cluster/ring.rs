//! Envoy's ring hash load balancer (`lb_policy: RING_HASH`, `ring_hash_lb.cc`): the ring of
//! xxHash64 points built from the endpoints' addresses and weights, and the lookup of a
//! request's hash on it. Built once per endpoint change, shared read-only by lookups.
//!
//! Not wired to the balancer yet: see docs/xds.md (`lb_policy` row).

/// Envoy's `minimum_ring_size` default.
pub const MIN_RING_SIZE_DEFAULT: u64 = 1024;
/// Envoy's `maximum_ring_size` default.
pub const MAX_RING_SIZE_DEFAULT: u64 = 8 * 1024 * 1024;

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge(acc: u64, v: u64) -> u64 {
    (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4)
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

fn le32(b: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes(b[..4].try_into().unwrap()))
}

/// XXH64 of `data` with seed 0 (Envoy's `HashUtil::xxHash64`).
pub fn xxhash64(data: &[u8]) -> u64 {
    let seed = 0u64;
    let mut rest = data;
    let mut h = if data.len() >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 32 {
            for (k, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, le64(&rest[k * 8..]));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for acc in v {
            h = merge(h, acc);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(data.len() as u64);
    while rest.len() >= 8 {
        h = (h ^ round(0, le64(rest)))
            .rotate_left(27)
            .wrapping_mul(P1)
            .wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h = (h ^ le32(rest).wrapping_mul(P1))
            .rotate_left(23)
            .wrapping_mul(P2)
            .wrapping_add(P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h = (h ^ u64::from(b).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// The ring of one priority level: `(hash, host)` sorted by hash; `host` indexes the hosts
/// the ring was built from.
#[derive(Debug, Default)]
pub struct Ring {
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// Envoy's `Ring::Ring`: `hosts` are `(hash key, weight)` in the host set's order, the
    /// key being the address as Envoy prints it (`10.0.0.1:80`, `[::1]:80`). Each host gets
    /// `scale * weight / total` points (running sums, so fractions carry to the next host),
    /// `scale` making the lightest host's share a whole number of at least `min_size` points
    /// in all, at most `max_size`. Point `i` of a host is the xxHash64 of `KEY_i`.
    pub fn build(hosts: &[(&str, u32)], min_size: u64, max_size: u64) -> Ring {
        let total: f64 = hosts.iter().map(|&(_, w)| f64::from(w)).sum();
        if hosts.is_empty() || total <= 0.0 {
            return Ring::default();
        }
        let min_weight = hosts
            .iter()
            .map(|&(_, w)| f64::from(w) / total)
            .fold(f64::INFINITY, f64::min);
        let scale = ((min_weight * min_size as f64).ceil() / min_weight).min(max_size as f64);
        let mut points = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        let mut key = Vec::with_capacity(64);
        for (h, &(addr, w)) in hosts.iter().enumerate() {
            target += scale * (f64::from(w) / total);
            let mut i = 0u64;
            while current < target {
                key.clear();
                key.extend_from_slice(addr.as_bytes());
                key.push(b'_');
                key.extend_from_slice(i.to_string().as_bytes());
                points.push((xxhash64(&key), h as u32));
                i += 1;
                current += 1.0;
            }
        }
        points.sort_unstable_by_key(|&(hash, _)| hash);
        Ring {
            points: points.into_boxed_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The host of request hash `h` (Envoy's ketama lookup): the first point at or after `h`,
    /// wrapping to the first point.
    pub fn pick(&self, h: u64) -> Option<u32> {
        let ring = &self.points;
        if ring.is_empty() {
            return None;
        }
        let (mut low, mut high) = (0i64, ring.len() as i64);
        let mid = loop {
            let mid = (low + high) / 2;
            if mid == ring.len() as i64 {
                break 0;
            }
            let val = ring[mid as usize].0;
            let val1 = if mid == 0 {
                0
            } else {
                ring[mid as usize - 1].0
            };
            if h <= val && h > val1 {
                break mid;
            }
            if val < h {
                low = mid + 1;
            } else {
                high = mid - 1;
            }
            if low > high {
                break 0;
            }
        };
        Some(ring[mid as usize].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxhash64_matches_the_reference() {
        // XXH64 reference values, seed 0.
        assert_eq!(xxhash64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxhash64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxhash64(b"abc"), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn ring_sizes_and_lookup() {
        let hosts = [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)];
        let r = Ring::build(&hosts, MIN_RING_SIZE_DEFAULT, MAX_RING_SIZE_DEFAULT);
        // ceil(1024 / 3) = 342 points each.
        assert_eq!(r.len(), 1026);
        let mut per = [0; 3];
        for &(_, h) in r.points.iter() {
            per[h as usize] += 1;
        }
        assert_eq!(per, [342; 3]);
        // The first point at or after the hash, wrapping.
        let (first, last) = (r.points[0], r.points[r.len() - 1]);
        assert_eq!(r.pick(0), Some(first.1));
        assert_eq!(r.pick(first.0), Some(first.1));
        assert_eq!(r.pick(last.0 + 1), Some(first.1));
        assert_eq!(r.pick(last.0), Some(last.1));
        for k in 1..r.len() {
            let (prev, p) = (r.points[k - 1], r.points[k]);
            if p.0 > prev.0 + 1 {
                assert_eq!(r.pick(prev.0 + 1), Some(p.1));
                assert_eq!(r.pick(p.0), Some(p.1));
            }
        }
        // Weights 1:3: the lightest host's share is whole (256 of 1024); a max size caps the
        // ring, fractions carrying over (34, 33, 33).
        let r = Ring::build(&[("a:1", 1), ("b:1", 3)], 1024, 8 << 20);
        assert_eq!(r.len(), 1024);
        assert_eq!(r.points.iter().filter(|p| p.1 == 0).count(), 256);
        let r = Ring::build(&hosts, 1024, 100);
        assert_eq!(r.len(), 100);
        assert_eq!(r.points.iter().filter(|p| p.1 == 0).count(), 34);
        assert!(Ring::build(&[], 1024, 100).pick(5).is_none());
    }
}
