//! Counters and gauges: names resolved once at config time into dense indices, values kept per
//! shard, merged by the admin thread on scrape.
//!
//! Each shard writes only its own slots, so an update is a relaxed load and store on memory no
//! other core writes: no lock, no contended cache line, no read-modify-write instruction. The
//! admin thread reads the slots with relaxed loads (atomics only so that the cross-thread read
//! is defined; on x86 they compile to plain moves). The interned symbol table, histograms and
//! per-host switches of the stats issue build on this layout.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Index of one stat in every shard's value array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatId(u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down (stored as a wrapping u64; the merged value is read as i64).
    Gauge,
    /// A latency histogram slot (bucket, sum or count); rendered by [`Stats`] as a family.
    HistogramSlot,
}

/// Upper bounds (µs, inclusive) of the latency histogram buckets; the last bucket is +Inf.
/// Fixed so that every shard's histogram merges by adding slots.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A histogram's slots: one per bucket plus +Inf, then the sum (µs), then the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistId(u32);

/// One stat's identity: a family (`listener_downstream_cx_total`), its labels, its kind.
#[derive(Clone, Debug)]
pub struct StatDef {
    /// Dotted scope, as Envoy prints it: `listener`, `cluster`.
    pub scope: &'static str,
    /// The leaf name: `downstream_cx_total`.
    pub name: &'static str,
    /// `(label, value)`: the first label's value also goes into the dotted name.
    pub labels: Vec<(&'static str, String)>,
    pub kind: Kind,
}

/// The set of stat names; built before the shards start, immutable afterwards.
#[derive(Default)]
pub struct Registry {
    defs: Vec<StatDef>,
}

impl Registry {
    pub fn add(
        &mut self,
        scope: &'static str,
        name: &'static str,
        labels: Vec<(&'static str, String)>,
        kind: Kind,
    ) -> StatId {
        self.defs.push(StatDef {
            scope,
            name,
            labels,
            kind,
        });
        StatId((self.defs.len() - 1) as u32)
    }

    /// Registers a latency histogram (µs) over [`LATENCY_BUCKETS_US`].
    pub fn add_histogram(
        &mut self,
        scope: &'static str,
        name: &'static str,
        labels: Vec<(&'static str, String)>,
    ) -> HistId {
        let first = self.defs.len() as u32;
        for _ in 0..LATENCY_BUCKETS_US.len() + 3 {
            self.add(scope, name, labels.clone(), Kind::HistogramSlot);
        }
        HistId(first)
    }

    pub fn len(&self) -> usize {
        self.defs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }
}

/// One shard's values. Cloned (an `Arc`) into the admin side so it can read them.
#[derive(Clone)]
pub struct ShardStats {
    values: Arc<[AtomicU64]>,
}

impl ShardStats {
    pub fn new(len: usize) -> Self {
        ShardStats {
            values: (0..len).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Only the owning shard calls the mutators.
    #[inline]
    pub fn add(&self, id: StatId, n: u64) {
        let slot = &self.values[id.0 as usize];
        slot.store(
            slot.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn inc(&self, id: StatId) {
        self.add(id, 1);
    }

    #[inline]
    pub fn dec(&self, id: StatId) {
        self.add(id, u64::MAX);
    }

    /// Records one latency sample.
    #[inline]
    pub fn record_us(&self, h: HistId, us: u64) {
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        let base = h.0;
        self.add(StatId(base + bucket as u32), 1);
        self.add(StatId(base + LATENCY_BUCKETS_US.len() as u32 + 1), us);
        self.add(StatId(base + LATENCY_BUCKETS_US.len() as u32 + 2), 1);
    }

    pub fn get(&self, id: StatId) -> u64 {
        self.values[id.0 as usize].load(Ordering::Relaxed)
    }
}

/// Every stat with the value merged over all shards.
pub struct Snapshot<'a> {
    pub entries: Vec<(&'a StatDef, i128)>,
}

/// The registry plus every shard's values.
pub struct Stats {
    pub registry: Registry,
    pub shards: Vec<ShardStats>,
}

impl Stats {
    pub fn new(registry: Registry, shard_count: usize) -> Self {
        let shards = (0..shard_count)
            .map(|_| ShardStats::new(registry.len()))
            .collect();
        Stats { registry, shards }
    }

    pub fn merged(&self) -> Snapshot<'_> {
        let entries = self
            .registry
            .defs
            .iter()
            .enumerate()
            .map(|(i, def)| {
                let raw = self.shards.iter().fold(0u64, |acc, s| {
                    acc.wrapping_add(s.values[i].load(Ordering::Relaxed))
                });
                let v = match def.kind {
                    Kind::Counter | Kind::HistogramSlot => raw as i128,
                    Kind::Gauge => raw as i64 as i128,
                };
                (def, v)
            })
            .collect();
        Snapshot { entries }
    }

    /// Every stat as (dotted name, value), histograms as `_count`, `_sum_us` and
    /// `_le_<bound>` (cumulative) entries.
    fn flat(&self) -> Vec<(String, i128)> {
        let snap = self.merged();
        let mut out = Vec::with_capacity(snap.entries.len());
        let mut i = 0;
        while i < snap.entries.len() {
            let (d, v) = snap.entries[i];
            if d.kind != Kind::HistogramSlot {
                out.push((dotted(d), v));
                i += 1;
                continue;
            }
            let n = LATENCY_BUCKETS_US.len();
            let mut cumulative = 0;
            for (k, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
                cumulative += snap.entries[i + k].1;
                out.push((format!("{}_le_{bound}us", dotted(d)), cumulative));
            }
            out.push((format!("{}_sum_us", dotted(d)), snap.entries[i + n + 1].1));
            out.push((format!("{}_count", dotted(d)), snap.entries[i + n + 2].1));
            i += n + 3;
        }
        out
    }

    /// Envoy-style text: `listener.outbound.downstream_cx_total: 12`, sorted by name.
    pub fn render_text(&self) -> String {
        let mut lines: Vec<String> = self
            .flat()
            .iter()
            .map(|(name, v)| format!("{name}: {v}"))
            .collect();
        lines.sort();
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }

    pub fn render_json(&self) -> serde_json::Value {
        let stats: Vec<_> = self
            .flat()
            .iter()
            .map(|(name, v)| serde_json::json!({"name": name, "value": v}))
            .collect();
        serde_json::json!({ "stats": stats })
    }

    /// Prometheus text exposition format 0.0.4: `ringside_listener_downstream_cx_total{listener="x"} 12`.
    pub fn render_prometheus(&self) -> String {
        let snap = self.merged();
        let mut families: Vec<(String, Kind)> = Vec::new();
        for (d, _) in &snap.entries {
            let f = family(d);
            if !families.iter().any(|(n, _)| *n == f) {
                families.push((f, d.kind));
            }
        }
        let mut out = String::new();
        for (fam, kind) in families {
            let t = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::HistogramSlot => "histogram",
            };
            let _ = writeln!(out, "# TYPE {fam} {t}");
            if kind == Kind::HistogramSlot {
                render_histograms(&mut out, &fam, &snap);
                continue;
            }
            for (d, v) in snap.entries.iter().filter(|(d, _)| family(d) == fam) {
                out.push_str(&fam);
                if !d.labels.is_empty() {
                    out.push('{');
                    for (i, (k, val)) in d.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(val));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {v}");
            }
        }
        out
    }
}

/// Writes every histogram of one family: cumulative `_bucket{le=...}` in seconds, `_sum`
/// (seconds) and `_count`, as Prometheus expects.
fn render_histograms(out: &mut String, fam: &str, snap: &Snapshot<'_>) {
    let n = LATENCY_BUCKETS_US.len();
    let mut i = 0;
    while i < snap.entries.len() {
        let (d, _) = snap.entries[i];
        if d.kind != Kind::HistogramSlot || family(d) != fam {
            i += 1;
            continue;
        }
        let labels: Vec<String> = d
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        let with = |extra: &str| {
            let mut all = labels.clone();
            if !extra.is_empty() {
                all.push(extra.to_string());
            }
            if all.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", all.join(","))
            }
        };
        let mut cumulative = 0;
        for k in 0..=n {
            cumulative += snap.entries[i + k].1;
            let le = match LATENCY_BUCKETS_US.get(k) {
                Some(b) => format!("{}", *b as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{fam}_bucket{} {cumulative}",
                with(&format!("le=\"{le}\""))
            );
        }
        let sum_s = snap.entries[i + n + 1].1 as f64 / 1e6;
        let _ = writeln!(out, "{fam}_sum{} {sum_s}", with(""));
        let _ = writeln!(out, "{fam}_count{} {}", with(""), snap.entries[i + n + 2].1);
        i += n + 3;
    }
}

fn dotted(d: &StatDef) -> String {
    let mut s = String::from(d.scope);
    for (_, v) in &d.labels {
        s.push('.');
        s.push_str(v);
    }
    s.push('.');
    s.push_str(d.name);
    s
}

fn family(d: &StatDef) -> String {
    format!("ringside_{}_{}", d.scope, d.name)
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_gauges_go_negative_per_shard() {
        let mut r = Registry::default();
        let total = r.add(
            "listener",
            "downstream_cx_total",
            vec![("listener", "out".into())],
            Kind::Counter,
        );
        let active = r.add(
            "listener",
            "downstream_cx_active",
            vec![("listener", "out".into())],
            Kind::Gauge,
        );
        let s = Stats::new(r, 2);
        s.shards[0].inc(total);
        s.shards[1].add(total, 4);
        s.shards[0].inc(active);
        s.shards[0].inc(active);
        s.shards[1].dec(active);
        let text = s.render_text();
        assert!(
            text.contains("listener.out.downstream_cx_total: 5"),
            "{text}"
        );
        assert!(
            text.contains("listener.out.downstream_cx_active: 1"),
            "{text}"
        );
        let prom = s.render_prometheus();
        assert!(prom.contains("# TYPE ringside_listener_downstream_cx_total counter"));
        assert!(prom.contains("ringside_listener_downstream_cx_total{listener=\"out\"} 5"));
    }
}
