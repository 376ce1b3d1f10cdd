//! Envoy's consistent-hashing load balancers: the ring hash (`lb_policy: RING_HASH`,
//! `ring_hash_lb.cc`: a ring of xxHash64 points built from the endpoints' addresses and
//! weights, a request going to the first point at or after its hash) and Maglev (`MAGLEV`,
//! `maglev_lb.cc`: a lookup table filled by each endpoint's permutation). Built once per
//! endpoint (or ejection) change per shard, read by lookups that allocate nothing.

/// Envoy's `minimum_ring_size` default.
pub const MIN_RING_SIZE_DEFAULT: u64 = crate::config::MIN_RING_SIZE_DEFAULT;
/// Envoy's `maximum_ring_size` default.
pub const MAX_RING_SIZE_DEFAULT: u64 = crate::config::MAX_RING_SIZE_DEFAULT;

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
    xxhash64_seeded(data, 0)
}

/// Envoy's `HashUtil::xxHash64(absl::Span<absl::string_view>)`: each string's XXH64 seeded
/// with the hash of those before it (the first with 0). Allocates nothing.
pub fn xxhash64_chain(parts: &[&[u8]]) -> u64 {
    parts.iter().fold(0, |h, p| xxhash64_seeded(p, h))
}

/// XXH64's tail and avalanche over the last (under 32) bytes.
fn finish(mut h: u64, mut rest: &[u8]) -> u64 {
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

/// XXH64 of `data` with `seed` (Maglev's skip uses seed 1).
pub fn xxhash64_seeded(data: &[u8], seed: u64) -> u64 {
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
    finish(h, rest)
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
    /// wrapping to the first point; retry attempt `attempt` (a host predicate refused the
    /// earlier ones) takes the point `attempt` further on, as Envoy's `chooseHost`.
    pub fn pick(&self, h: u64, attempt: u32) -> Option<u32> {
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
        let mid = (mid as usize + attempt as usize) % ring.len();
        Some(ring[mid].1)
    }
}

/// Envoy's Maglev lookup table (`OriginalMaglevTable`): `table_size` (a prime) entries, each
/// the index of a host.
#[derive(Debug, Default)]
pub struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// Envoy's `MaglevTable::constructMaglevTableInternal`: the hosts sorted by key (the
    /// address as Envoy prints it), each with offset `xxHash64(key) % size` and skip
    /// `xxHash64(key, seed 1) % (size - 1) + 1`; in rounds, each host whose normalized weight
    /// has caught up with its target takes the next free entry of its permutation `offset +
    /// skip × next`, until the table is full. `hosts` are `(key, weight)` in the host set's
    /// order; the table holds indices into it.
    pub fn build(hosts: &[(&str, u32)], size: u64) -> Maglev {
        let total: f64 = hosts.iter().map(|&(_, w)| f64::from(w)).sum();
        if hosts.is_empty() || total <= 0.0 || size < 2 {
            return Maglev::default();
        }
        let max_weight = hosts
            .iter()
            .map(|&(_, w)| f64::from(w) / total)
            .fold(0.0f64, f64::max);
        struct Entry {
            host: u32,
            offset: u64,
            skip: u64,
            weight: f64,
            target: f64,
            next: u64,
        }
        let mut order: Vec<usize> = (0..hosts.len()).collect();
        order.sort_by(|&a, &b| hosts[a].0.cmp(hosts[b].0));
        let mut entries: Vec<Entry> = order
            .into_iter()
            .map(|i| {
                let key = hosts[i].0.as_bytes();
                Entry {
                    host: i as u32,
                    offset: xxhash64(key) % size,
                    skip: xxhash64_seeded(key, 1) % (size - 1) + 1,
                    weight: f64::from(hosts[i].1) / total,
                    target: 0.0,
                    next: 0,
                }
            })
            .collect();
        const FREE: u32 = u32::MAX;
        let mut table = vec![FREE; size as usize];
        let mut filled = 0u64;
        let mut iteration = 1u32;
        while filled < size {
            for e in entries.iter_mut() {
                if filled >= size {
                    break;
                }
                if f64::from(iteration) * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                let mut c = (e.offset + e.skip * e.next) % size;
                while table[c as usize] != FREE {
                    e.next += 1;
                    c = (e.offset + e.skip * e.next) % size;
                }
                table[c as usize] = e.host;
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Maglev {
            table: table.into_boxed_slice(),
        }
    }

    /// The host of request hash `h`: entry `h % size`; retry attempt `attempt` first flips
    /// the hash's bits as Envoy's `chooseHost` does (`h ^ (2^64 - attempt)`).
    pub fn pick(&self, mut h: u64, attempt: u32) -> Option<u32> {
        if self.table.is_empty() {
            return None;
        }
        if attempt > 0 {
            h ^= u64::from(attempt).wrapping_neg();
        }
        Some(self.table[(h % self.table.len() as u64) as usize])
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// One priority level's consistent-hashing table.
#[derive(Debug)]
pub enum Table {
    Ring(Ring),
    Maglev(Maglev),
}

impl Table {
    /// `hosts` as [`Ring::build`] and [`Maglev::build`] take them, for `lb` (a hashed policy).
    pub fn build(lb: crate::config::LbPolicy, hosts: &[(&str, u32)]) -> Table {
        match lb {
            crate::config::LbPolicy::Maglev { table_size } => {
                Table::Maglev(Maglev::build(hosts, table_size))
            }
            crate::config::LbPolicy::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            } => Table::Ring(Ring::build(hosts, minimum_ring_size, maximum_ring_size)),
            _ => Table::Ring(Ring::build(
                hosts,
                MIN_RING_SIZE_DEFAULT,
                MAX_RING_SIZE_DEFAULT,
            )),
        }
    }

    /// The index (in the hosts it was built from) of the host of hash `h` for retry attempt
    /// `attempt` (0: the first try).
    pub fn pick(&self, h: u64, attempt: u32) -> Option<u32> {
        match self {
            Table::Ring(r) => r.pick(h, attempt),
            Table::Maglev(m) => m.pick(h, attempt),
        }
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
    fn seeded_xxhash64_matches_the_reference() {
        let data: Vec<u8> = (0..200u8).collect();
        // XXH64 reference values, seed 1.
        assert_eq!(xxhash64_seeded(b"", 1), 0xD5AF_BA13_36A3_BE4B);
        assert_eq!(xxhash64_seeded(&data[..100], 1), 0x3D19_A3A2_098A_7023);
        assert_eq!(xxhash64_chain(&[b"abc"]), xxhash64(b"abc"));
        assert_eq!(
            xxhash64_chain(&[b"a", b"b"]),
            xxhash64_seeded(b"b", xxhash64(b"a"))
        );
    }

    #[test]
    fn maglev_fills_the_table_by_weight() {
        let hosts = [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 2)];
        let m = Maglev::build(&hosts, 65537);
        assert_eq!(m.len(), 65537);
        let mut per = [0usize; 3];
        for &h in m.table.iter() {
            per[h as usize] += 1;
        }
        // Weights 1:1:2, each within a few entries of its share.
        assert!(
            per[0].abs_diff(16384) < 64 && per[1].abs_diff(16384) < 64,
            "{per:?}"
        );
        assert_eq!(per.iter().sum::<usize>(), 65537);
        assert_eq!(m.pick(5, 0), Some(m.table[5]));
        assert_eq!(
            m.pick(5, 1),
            Some(m.table[((5 ^ u64::MAX) % 65537) as usize])
        );
        assert!(Maglev::build(&[], 7).pick(1, 0).is_none());
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
        assert_eq!(r.pick(0, 0), Some(first.1));
        assert_eq!(r.pick(first.0, 0), Some(first.1));
        assert_eq!(r.pick(last.0 + 1, 0), Some(first.1));
        assert_eq!(r.pick(last.0, 0), Some(last.1));
        for k in 1..r.len() {
            let (prev, p) = (r.points[k - 1], r.points[k]);
            if p.0 > prev.0 + 1 {
                assert_eq!(r.pick(prev.0 + 1, 0), Some(p.1));
                assert_eq!(r.pick(p.0, 0), Some(p.1));
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
        assert!(Ring::build(&[], 1024, 100).pick(5, 0).is_none());
    }
}
