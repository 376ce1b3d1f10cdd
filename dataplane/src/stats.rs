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
}

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
                    Kind::Counter => raw as i128,
                    Kind::Gauge => raw as i64 as i128,
                };
                (def, v)
            })
            .collect();
        Snapshot { entries }
    }

    /// Envoy-style text: `listener.outbound.downstream_cx_total: 12`, sorted by name.
    pub fn render_text(&self) -> String {
        let mut lines: Vec<String> = self
            .merged()
            .entries
            .iter()
            .map(|(d, v)| format!("{}: {v}", dotted(d)))
            .collect();
        lines.sort();
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }

    pub fn render_json(&self) -> serde_json::Value {
        let stats: Vec<_> = self
            .merged()
            .entries
            .iter()
            .map(|(d, v)| serde_json::json!({"name": dotted(d), "value": v}))
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
            };
            let _ = writeln!(out, "# TYPE {fam} {t}");
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
