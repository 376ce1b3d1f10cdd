//! Envoy's zone-aware routing (docs/governance.md#zone-aware-routing): a request that goes
//! to priority 0 prefers the endpoints of the proxy's own locality, as far as that locality's
//! share of the cluster's endpoints covers its share of the callers (the *local cluster*'s
//! endpoints), and spills the rest to the localities with capacity left over, in proportion to
//! it. The endpoint grouping ([`Zones`]) is built with the endpoint table on the control
//! thread; the routing ([`ZoneRoute`]) per shard, when the cluster's or the local cluster's
//! endpoints change. A request then costs one counter step and a comparison per locality.

use crate::config::{self, Locality};

use super::Subset;

/// The step of a shard's zone draws through 0..10000 (coprime with 10000, near 10000 / golden
/// ratio): every 10000 draws take each value once, a few consecutive ones spread over the
/// range (as [`super::LOAD_DRAW_STEP`] for the priority draws).
pub const ZONE_DRAW_STEP: u16 = 6181;

/// Envoy's healthy panic threshold (`healthy_panic_threshold`'s default): a local cluster
/// under this share of healthy endpoints is in panic and zone-aware routing stops.
pub const LOCAL_PANIC_PERCENT: u64 = 50;

/// A cluster's endpoints by locality, built with its endpoint table when the config has a
/// local cluster (`cluster_manager`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Zones {
    /// Priority-0 endpoints grouped by locality, the proxy's own first when it has any, the
    /// others in locality order; `levels`: the end of each group.
    pub p0: Subset,
    /// Each group's locality and its distinct healthy endpoints.
    pub p0_localities: Box<[(Locality, u32)]>,
    /// Whether the first group is the proxy's own locality.
    pub has_local: bool,
    /// Distinct healthy endpoints per locality over every priority (what the cluster counts
    /// for when it is the local cluster), in locality order.
    pub all_localities: Box<[(Locality, u32)]>,
    /// Whether the proxy's own locality has an endpoint (as the local cluster).
    pub local_present: bool,
    /// Healthy and all endpoints as EDS counts them (a YAML cluster: all healthy): the local
    /// cluster's panic.
    pub healthy: u32,
    pub all: u32,
}

/// Where a shard sends the priority-0 requests of one cluster: a draw `r` in 0..10000 goes
/// to the first group of [`Zones::p0`] whose entry in `cum` exceeds it.
#[derive(Debug, PartialEq, Eq)]
pub enum ZoneRoute {
    Route {
        cum: Box<[u16]>,
        /// Percentage of requests zone-aware (`routing_enabled`); the others balance over
        /// the whole level.
        enabled: u8,
    },
    /// The local cluster is in panic and `fail_traffic_on_panic`: no endpoint.
    Fail,
}

/// Envoy's (local, upstream) percentages of one upstream locality, in 1/10000.
#[derive(Debug, Clone, Copy)]
struct Percentages {
    local: u64,
    upstream: u64,
}

impl ZoneRoute {
    /// Envoy's `regenerateLocalityRoutingStructures` for `own` (the upstream cluster) with
    /// `local` (the local cluster): `None` where Envoy does no locality routing
    /// (`earlyExitNonLocalityRouting`: fewer than 2 upstream localities at priority 0, fewer
    /// than 2 local localities without `force_local_zone`, no local endpoint in the proxy's
    /// locality, fewer healthy priority-0 endpoints than `min_cluster_size`; the local
    /// cluster in panic without `fail_traffic_on_panic`).
    pub fn compute(own: &Zones, local: &Zones, cfg: &config::ZoneAware) -> Option<ZoneRoute> {
        let groups = own.p0_localities.len();
        if groups < 2 {
            return None;
        }
        if cfg.force_local_zone_min_size.is_none() && local.all_localities.len() < 2 {
            return None;
        }
        if !local.local_present {
            return None;
        }
        let p0_healthy: u64 = own.p0_localities.iter().map(|(_, n)| u64::from(*n)).sum();
        if p0_healthy < cfg.min_cluster_size {
            return None;
        }
        // Envoy checks the local cluster's panic per request; it changes only with the local
        // cluster, so here.
        let all = u64::from(local.all.max(1));
        if u64::from(local.healthy) * 100 < LOCAL_PANIC_PERCENT * all {
            return cfg.fail_traffic_on_panic.then_some(ZoneRoute::Fail);
        }
        let enabled = cfg.routing_enabled.min(100) as u8;
        let p = percentages(own, local);
        // The local locality's share upstream covers its share of callers: all there.
        let forced = cfg
            .force_local_zone_min_size
            .is_some_and(|m| own.has_local && own.p0_localities[0].1 >= m);
        if own.has_local && ((p[0].upstream > 0 && p[0].upstream >= p[0].local) || forced) {
            return Some(ZoneRoute::Route {
                cum: vec![10000u16; groups].into(),
                enabled,
            });
        }
        // Residual: what the local locality can take, the rest by residual capacity.
        let to_local = if own.has_local && p[0].local > 0 {
            (p[0].upstream * 10000 / p[0].local).min(10000)
        } else {
            0
        };
        let mut residual = Vec::with_capacity(groups);
        let mut sum = 0u64;
        for (i, x) in p.iter().enumerate() {
            if !(i == 0 && own.has_local) && x.upstream > x.local {
                sum += x.upstream - x.local;
            }
            residual.push(sum);
        }
        let others = groups as u64 - u64::from(own.has_local);
        let cum: Box<[u16]> = (0..groups)
            .map(|i| match (i == 0 && own.has_local, sum) {
                // The local group takes [0, to_local).
                (true, _) => to_local,
                // Envoy: "extremely unlikely" (rounding): a random locality.
                (false, 0) => {
                    let k = i as u64 + 1 - u64::from(own.has_local);
                    to_local + (10000 - to_local) * k / others.max(1)
                }
                (false, _) => to_local + (10000 - to_local) * residual[i] / sum,
            } as u16)
            .collect();
        Some(ZoneRoute::Route { cum, enabled })
    }
}

/// Envoy's `calculateLocalityPercentages` (`HEALTHY_HOSTS_NUM`): each upstream locality's
/// share of the local cluster's healthy endpoints and of the upstream's priority-0 healthy
/// ones, in 1/10000.
fn percentages(own: &Zones, local: &Zones) -> Vec<Percentages> {
    let total_local: u64 = local
        .all_localities
        .iter()
        .map(|(_, n)| u64::from(*n))
        .sum();
    let total_up: u64 = own.p0_localities.iter().map(|(_, n)| u64::from(*n)).sum();
    own.p0_localities
        .iter()
        .map(|(loc, n)| {
            let local_n = local
                .all_localities
                .binary_search_by(|(l, _)| l.cmp(loc))
                .map_or(0, |k| u64::from(local.all_localities[k].1));
            Percentages {
                local: if total_local > 0 {
                    10000 * local_n / total_local
                } else {
                    0
                },
                upstream: if total_up > 0 {
                    10000 * u64::from(*n) / total_up
                } else {
                    0
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(z: &str) -> Locality {
        Locality {
            region: "r".into(),
            zone: z.into(),
            sub_zone: String::new(),
        }
    }

    /// Zones with `p0` endpoints per zone (the first the proxy's own when `has_local`) and as
    /// a local cluster `all` per zone, all healthy.
    fn zones(p0: &[(&str, u32)], has_local: bool, all: &[(&str, u32)], me: &str) -> Zones {
        let mut all_l: Vec<(Locality, u32)> = all.iter().map(|(z, n)| (loc(z), *n)).collect();
        all_l.sort();
        let n: u32 = all.iter().map(|x| x.1).sum();
        Zones {
            p0: Subset::default(),
            p0_localities: p0.iter().map(|(z, n)| (loc(z), *n)).collect(),
            has_local,
            local_present: all.iter().any(|(z, n)| *z == me && *n > 0),
            all_localities: all_l.into(),
            healthy: n,
            all: n,
        }
    }

    fn cum(r: Option<ZoneRoute>) -> Vec<u16> {
        match r {
            Some(ZoneRoute::Route { cum, .. }) => cum.into(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn direct_when_the_local_share_upstream_covers_the_callers() {
        // Upstream 4 a / 2 b / 2 c, callers 1 a / 1 b / 1 c: a has 50 % ≥ 33 %.
        let up = zones(&[("a", 4), ("b", 2), ("c", 2)], true, &[], "a");
        let local = zones(&[], false, &[("a", 1), ("b", 1), ("c", 1)], "a");
        let c = cum(ZoneRoute::compute(&up, &local, &Default::default()));
        assert_eq!(c[0], 10000);
    }

    #[test]
    fn residual_spills_by_capacity_left() {
        // Envoy's own example: local 40/40/20 %, upstream 25/50/25 %: the local locality takes
        // 25/40 = 62.5 % (6250 of 10000), the rest to b (10 points spare) and c (5): 2/3, 1/3.
        let up = zones(&[("a", 2), ("b", 4), ("c", 2)], true, &[], "a");
        let local = zones(&[], false, &[("a", 2), ("b", 2), ("c", 1)], "a");
        let c = cum(ZoneRoute::compute(&up, &local, &Default::default()));
        assert_eq!(c, [6250, 8750, 10000]);
    }

    #[test]
    fn no_zone_routing_below_min_cluster_size_or_without_local_endpoints() {
        let up = zones(&[("a", 2), ("b", 3)], true, &[], "a");
        let local = zones(&[], false, &[("a", 1), ("b", 1)], "a");
        assert_eq!(ZoneRoute::compute(&up, &local, &Default::default()), None);
        let up = zones(&[("a", 3), ("b", 3)], true, &[], "a");
        assert!(ZoneRoute::compute(&up, &local, &Default::default()).is_some());
        // The local cluster has nobody in the proxy's locality.
        let lonely = zones(&[], false, &[("b", 1), ("c", 1)], "a");
        assert_eq!(ZoneRoute::compute(&up, &lonely, &Default::default()), None);
        // One local locality.
        let one = zones(&[], false, &[("a", 3)], "a");
        assert_eq!(ZoneRoute::compute(&up, &one, &Default::default()), None);
        let forced = config::ZoneAware {
            force_local_zone_min_size: Some(3),
            ..Default::default()
        };
        assert_eq!(cum(ZoneRoute::compute(&up, &one, &forced))[0], 10000);
    }

    #[test]
    fn local_zone_empty_upstream_spills_by_capacity() {
        // No upstream endpoint in a; callers 2 a / 1 b / 1 c; upstream 3 b / 3 c: b and c
        // each 50 % upstream vs 25 % local: equal residual, half each.
        let up = zones(&[("b", 3), ("c", 3)], false, &[], "a");
        let local = zones(&[], false, &[("a", 2), ("b", 1), ("c", 1)], "a");
        let c = cum(ZoneRoute::compute(&up, &local, &Default::default()));
        assert_eq!(c, [5000, 10000]);
    }

    #[test]
    fn local_panic_stops_or_fails() {
        let up = zones(&[("a", 3), ("b", 3)], true, &[], "a");
        let mut local = zones(&[], false, &[("a", 1), ("b", 1)], "a");
        local.all = 5;
        assert_eq!(ZoneRoute::compute(&up, &local, &Default::default()), None);
        let fail = config::ZoneAware {
            fail_traffic_on_panic: true,
            ..Default::default()
        };
        assert_eq!(
            ZoneRoute::compute(&up, &local, &fail),
            Some(ZoneRoute::Fail)
        );
    }
}
