//! Stats: names interned into a lock-free symbol table, values kept per shard, merged by the
//! admin thread on scrape.
//!
//! - A stat's identity (scope, name, tags) is a short varint string of [`symbols`] ids, stored
//!   once in an append-only [`arena`] of definitions; its index there is its [`StatId`].
//! - Each shard has its own value array, indexed by `StatId`, grown in chunks. Only the owning
//!   shard writes its slots: an update is a relaxed load and store on memory no other core
//!   writes (no lock, no read-modify-write, no contended line). The admin thread reads the
//!   slots with relaxed loads and sums them over shards.
//! - Registration happens at config time, and on a shard once per new Dubbo interface/method
//!   (bounded by `stats.dubbo_services_max`). A name excluded by the config's include/exclude
//!   rules, and every per-host stat when `stats.per_host` is off, is registered as [`SINK`]: it
//!   costs no memory and is never exported.
//! - Histograms have fixed buckets ([`LATENCY_BUCKETS_US`]) so shards merge by adding slots.
//! - Counters can be exported and imported (hot upgrade carries totals to the successor).

pub mod arena;
pub mod symbols;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arena::{Arena, CHUNK_ENTRIES};
use regex::Regex;
use symbols::{put_varint, take_varint, Symbol, SymbolTable};

use crate::config;

/// The most stat definitions one process holds (all shards share them).
pub const STATS_MAX: usize = 1 << 22;

/// Upper bounds (µs, inclusive) of the latency histogram buckets; the last bucket is +Inf.
/// Fixed so that every shard's histogram merges by adding slots.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// Slots of one histogram: buckets, +Inf, sum (µs), count.
const HIST_SLOTS: usize = LATENCY_BUCKETS_US.len() + 3;

/// Index of one stat in every shard's value array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatId(u32);

/// Where excluded stats (and per-host stats when they are off) are counted: never exported.
pub const SINK: StatId = StatId(0);

/// A histogram: its first slot's id; the others follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistId(u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down (a wrapping u64; the merged value is read as i64).
    Gauge,
    /// The first slot of a histogram (the rest follow it).
    Histogram,
    /// A later slot of a histogram.
    HistogramSlot,
}

/// A stat's identity: varints `[scope, name, tag count, (key, value)...]` of symbol ids.
pub struct StatDef {
    key: Box<[u8]>,
    kind: Kind,
}

/// The decoded form of a definition, for rendering.
struct Named<'a> {
    scope: &'a str,
    name: &'a str,
    tags: Vec<(&'a str, &'a str)>,
}

/// Which names are kept (config `stats`).
struct Filter {
    include: Vec<Matcher>,
    exclude: Vec<Matcher>,
}

enum Matcher {
    Prefix(String),
    Regex(Regex),
}

impl Matcher {
    fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Prefix(p) => name.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(name),
        }
    }
}

/// One shard's values, grown in chunks as stats are registered.
pub struct ShardValues {
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl ShardValues {
    fn new() -> Self {
        ShardValues {
            chunks: (0..STATS_MAX / CHUNK_ENTRIES)
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    #[inline]
    fn slot(&self, id: StatId) -> Option<&AtomicU64> {
        let (c, o) = (id.0 as usize / CHUNK_ENTRIES, id.0 as usize % CHUNK_ENTRIES);
        self.chunks
            .get(c)?
            .get_or_init(|| (0..CHUNK_ENTRIES).map(|_| AtomicU64::new(0)).collect())
            .get(o)
    }

    fn read(&self, id: u32) -> u64 {
        let (c, o) = (id as usize / CHUNK_ENTRIES, id as usize % CHUNK_ENTRIES);
        self.chunks
            .get(c)
            .and_then(|c| c.get())
            .and_then(|c| c.get(o))
            .map(|v| v.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn bytes(&self) -> usize {
        self.chunks.iter().filter(|c| c.get().is_some()).count()
            * CHUNK_ENTRIES
            * std::mem::size_of::<AtomicU64>()
            + self.chunks.len() * std::mem::size_of::<OnceLock<Box<[AtomicU64]>>>()
    }
}

/// All stats of the process.
pub struct Stats {
    pub symbols: SymbolTable,
    defs: Arena<StatDef>,
    shards: Vec<Arc<ShardValues>>,
    filter: Filter,
    /// Export per-upstream-host stats (off by default: they dominate memory with many hosts).
    pub per_host: bool,
    /// Dubbo (listener, interface, method) entries registered so far, against the cap.
    services_tracked: AtomicUsize,
    pub services_max: usize,
    /// Counter totals carried over from a predecessor process (hot upgrade), by text name.
    carried: OnceLock<HashMap<String, u64>>,
    /// Registered definitions by hash of (key, is histogram): registering a name again (a new
    /// config snapshot naming the same listener or cluster) returns the same id, so gauges
    /// stay consistent and repeated updates do not grow the arena. Taken at config time and on
    /// a shard's first sight of a new service, never per request.
    #[allow(clippy::disallowed_types)]
    registered: std::sync::Mutex<HashMap<u64, u32>>,
}

/// What one stat merged over shards looks like.
enum Merged {
    Value(Kind, i128),
    Histogram(Vec<u64>),
}

impl Stats {
    pub fn new(shard_count: usize, cfg: &config::StatsConfig) -> Result<Stats, String> {
        let compile = |rules: &[config::NameMatch]| -> Result<Vec<Matcher>, String> {
            rules
                .iter()
                .map(|m| match (&m.prefix, &m.regex) {
                    (Some(p), _) => Ok(Matcher::Prefix(p.clone())),
                    (_, Some(r)) => Regex::new(&format!("^(?:{r})$"))
                        .map(Matcher::Regex)
                        .map_err(|e| e.to_string()),
                    _ => Err("a stats name rule needs prefix or regex".into()),
                })
                .collect()
        };
        let stats = Stats {
            symbols: SymbolTable::default(),
            defs: Arena::new(STATS_MAX),
            shards: (0..shard_count)
                .map(|_| Arc::new(ShardValues::new()))
                .collect(),
            filter: Filter {
                include: compile(&cfg.include)?,
                exclude: compile(&cfg.exclude)?,
            },
            per_host: cfg.per_host,
            services_tracked: AtomicUsize::new(0),
            services_max: cfg.dubbo_services_max,
            carried: OnceLock::new(),
            registered: Default::default(),
        };
        // Id 0 is the sink.
        stats.defs.push(StatDef {
            key: Box::new([]),
            kind: Kind::Counter,
        });
        Ok(stats)
    }

    /// The handle a shard counts through.
    pub fn shard(self: &Arc<Self>, index: usize) -> ShardStats {
        ShardStats {
            stats: self.clone(),
            values: self.shards[index].clone(),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn encode(&self, scope: &str, name: &str, tags: &[(&str, &str)]) -> Option<Box<[u8]>> {
        let mut key = Vec::with_capacity(4 + tags.len() * 4);
        put_varint(&mut key, self.symbols.intern(scope)?.0);
        put_varint(&mut key, self.symbols.intern(name)?.0);
        put_varint(&mut key, tags.len() as u32);
        for (k, v) in tags {
            put_varint(&mut key, self.symbols.intern(k)?.0);
            put_varint(&mut key, self.symbols.intern(v)?.0);
        }
        Some(key.into_boxed_slice())
    }

    fn kept(&self, scope: &str, name: &str, tags: &[(&str, &str)]) -> bool {
        if self.filter.include.is_empty() && self.filter.exclude.is_empty() {
            return true;
        }
        let text = dotted_parts(scope, name, tags.iter().map(|t| t.1));
        (self.filter.include.is_empty() || self.filter.include.iter().any(|m| m.matches(&text)))
            && !self.filter.exclude.iter().any(|m| m.matches(&text))
    }

    /// Registers a counter or gauge; [`SINK`] when filtered out or when the tables are full.
    pub fn add(&self, scope: &str, name: &str, tags: &[(&str, &str)], kind: Kind) -> StatId {
        if !self.kept(scope, name, tags) {
            return SINK;
        }
        let Some(key) = self.encode(scope, name, tags) else {
            return SINK;
        };
        self.register(key, false, |key| self.defs.push(StatDef { key, kind }))
            .map(StatId)
            .unwrap_or(SINK)
    }

    /// The id already registered for `key`, else the one `push` allocates.
    fn register(
        &self,
        key: Box<[u8]>,
        histogram: bool,
        push: impl FnOnce(Box<[u8]>) -> Option<u32>,
    ) -> Option<u32> {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = rustc_hash::FxBuildHasher.build_hasher();
        key.hash(&mut h);
        histogram.hash(&mut h);
        let hash = h.finish();
        let mut seen = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = seen.get(&hash) {
            // A hash collision with another name gets a definition of its own (unindexed).
            if self.defs.get(id).is_some_and(|d| d.key == key) {
                return Some(id);
            }
            return push(key);
        }
        let id = push(key)?;
        seen.insert(hash, id);
        Some(id)
    }

    /// Registers a per-upstream-host stat: [`SINK`] unless `stats.per_host` is on.
    pub fn add_host(&self, scope: &str, name: &str, tags: &[(&str, &str)]) -> StatId {
        if self.per_host {
            self.add(scope, name, tags, Kind::Counter)
        } else {
            SINK
        }
    }

    /// Registers a latency histogram (µs) over [`LATENCY_BUCKETS_US`].
    pub fn add_histogram(&self, scope: &str, name: &str, tags: &[(&str, &str)]) -> HistId {
        let sink = HistId(SINK.0);
        if !self.kept(scope, name, tags) {
            return sink;
        }
        let Some(key) = self.encode(scope, name, tags) else {
            return sink;
        };
        let first = self.register(key, true, |key| {
            let slots = (0..HIST_SLOTS)
                .map(|k| StatDef {
                    key: key.clone(),
                    kind: if k == 0 {
                        Kind::Histogram
                    } else {
                        Kind::HistogramSlot
                    },
                })
                .collect();
            self.defs.push_many(slots)
        });
        first.map(HistId).unwrap_or(sink)
    }

    /// Claims room for one more Dubbo (listener, interface, method) entry; false at the cap.
    pub fn track_service(&self) -> bool {
        self.services_tracked.fetch_add(1, Ordering::Relaxed) < self.services_max
    }

    /// Allocates every shard's storage for the stats registered so far (at start-up, so the
    /// data path finds its chunks allocated).
    pub fn prefault(&self) {
        let n = self.defs.len();
        for s in &self.shards {
            let mut id = 0;
            while id < n {
                let _ = s.slot(StatId(id));
                id += CHUNK_ENTRIES as u32;
            }
        }
    }

    fn named(&self, def: &StatDef) -> Option<Named<'_>> {
        let mut k = &def.key[..];
        let scope = self.symbols.resolve(Symbol(take_varint(&mut k)?));
        let name = self.symbols.resolve(Symbol(take_varint(&mut k)?));
        let n = take_varint(&mut k)?;
        let mut tags = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let key = self.symbols.resolve(Symbol(take_varint(&mut k)?));
            let value = self.symbols.resolve(Symbol(take_varint(&mut k)?));
            tags.push((key, value));
        }
        Some(Named { scope, name, tags })
    }

    fn sum(&self, id: u32) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |acc, s| acc.wrapping_add(s.read(id)))
    }

    /// Every stat merged over shards, duplicates (two shards registering the same Dubbo
    /// interface) merged by name, in registration order.
    fn merged(&self) -> Vec<(&StatDef, Merged)> {
        let mut out: Vec<(&StatDef, Merged)> = Vec::new();
        let mut seen: HashMap<(&[u8], bool), usize> = HashMap::new();
        let n = self.defs.len();
        let mut id = 1;
        while id < n {
            let Some(def) = self.defs.get(id) else {
                id += 1;
                continue;
            };
            let (value, step) = match def.kind {
                Kind::Counter | Kind::Gauge => {
                    let raw = self.sum(id);
                    let v = if def.kind == Kind::Gauge {
                        raw as i64 as i128
                    } else {
                        raw as i128
                    };
                    (Merged::Value(def.kind, v), 1)
                }
                Kind::Histogram => {
                    let slots = (0..HIST_SLOTS as u32).map(|k| self.sum(id + k)).collect();
                    (Merged::Histogram(slots), HIST_SLOTS as u32)
                }
                Kind::HistogramSlot => (Merged::Value(Kind::HistogramSlot, 0), 1),
            };
            id += step;
            if def.kind == Kind::HistogramSlot {
                continue;
            }
            let is_hist = def.kind == Kind::Histogram;
            match seen.get(&(&def.key[..], is_hist)) {
                Some(&at) => match (&mut out[at].1, value) {
                    (Merged::Value(_, a), Merged::Value(_, b)) => *a += b,
                    (Merged::Histogram(a), Merged::Histogram(b)) => {
                        for (x, y) in a.iter_mut().zip(b) {
                            *x += y;
                        }
                    }
                    _ => {}
                },
                None => {
                    seen.insert((&def.key[..], is_hist), out.len());
                    out.push((def, value));
                }
            }
        }
        out
    }

    fn carried(&self, text: &str) -> i128 {
        self.carried
            .get()
            .and_then(|m| m.get(text))
            .map(|&v| v as i128)
            .unwrap_or(0)
    }

    /// Every stat as (dotted name, value); histograms as `_count`, `_sum_us` and cumulative
    /// `_le_<bound>us` entries.
    fn flat(&self) -> Vec<(String, i128)> {
        let mut out = Vec::new();
        for (def, m) in self.merged() {
            let Some(n) = self.named(def) else { continue };
            let base = dotted(&n);
            match m {
                Merged::Value(kind, v) => {
                    let carried = if kind == Kind::Counter {
                        self.carried(&base)
                    } else {
                        0
                    };
                    out.push((base, v + carried));
                }
                Merged::Histogram(slots) => {
                    let mut cumulative = 0u64;
                    for (k, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
                        cumulative += slots[k];
                        out.push((format!("{base}_le_{bound}us"), cumulative as i128));
                    }
                    let n = LATENCY_BUCKETS_US.len();
                    out.push((format!("{base}_sum_us"), slots[n + 1] as i128));
                    out.push((format!("{base}_count"), slots[n + 2] as i128));
                }
            }
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

    /// Prometheus text exposition format 0.0.4: families `ringside_<scope>_<name>`, tags as
    /// labels; histograms in seconds.
    pub fn render_prometheus(&self) -> String {
        let merged = self.merged();
        let mut families: Vec<Family<'_>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (def, m) in &merged {
            let Some(n) = self.named(def) else { continue };
            let fam = format!("ringside_{}_{}", sanitize(n.scope), sanitize(n.name));
            let text = dotted(&n);
            let at = *index.entry(fam.clone()).or_insert_with(|| {
                families.push((fam.clone(), def.kind, Vec::new()));
                families.len() - 1
            });
            families[at].2.push((n, m, text));
        }
        let mut out = String::new();
        for (fam, kind, members) in families {
            let t = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                _ => "histogram",
            };
            let _ = writeln!(out, "# TYPE {fam} {t}");
            for (n, m, text) in members {
                let labels: Vec<String> = n
                    .tags
                    .iter()
                    .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape_label(v)))
                    .collect();
                match m {
                    Merged::Value(k, v) => {
                        let v = v + if *k == Kind::Counter {
                            self.carried(&text)
                        } else {
                            0
                        };
                        let _ = writeln!(out, "{fam}{} {v}", braces(&labels, None));
                    }
                    Merged::Histogram(slots) => {
                        let mut cumulative = 0;
                        for (k, slot) in slots.iter().enumerate().take(LATENCY_BUCKETS_US.len() + 1)
                        {
                            cumulative += slot;
                            let le = match LATENCY_BUCKETS_US.get(k) {
                                Some(b) => format!("{}", *b as f64 / 1e6),
                                None => "+Inf".to_string(),
                            };
                            let le = format!("le=\"{le}\"");
                            let _ = writeln!(
                                out,
                                "{fam}_bucket{} {cumulative}",
                                braces(&labels, Some(&le))
                            );
                        }
                        let n = LATENCY_BUCKETS_US.len();
                        let sum_s = slots[n + 1] as f64 / 1e6;
                        let _ = writeln!(out, "{fam}_sum{} {sum_s}", braces(&labels, None));
                        let _ =
                            writeln!(out, "{fam}_count{} {}", braces(&labels, None), slots[n + 2]);
                    }
                }
            }
        }
        out
    }

    /// Counter totals by text name, as JSON: what a hot upgrade hands to the successor.
    pub fn export(&self) -> Vec<u8> {
        let mut m: HashMap<String, u64> = HashMap::new();
        for (def, merged) in self.merged() {
            if let (Merged::Value(Kind::Counter, v), Some(n)) = (merged, self.named(def)) {
                let name = dotted(&n);
                let total = v + self.carried(&name);
                m.insert(name, total.clamp(0, u64::MAX as i128) as u64);
            }
        }
        serde_json::to_vec(&m).unwrap_or_default()
    }

    /// Adds a predecessor's exported counter totals to this process's counters (once).
    pub fn import(&self, blob: &[u8]) -> Result<usize, String> {
        let m: HashMap<String, u64> =
            serde_json::from_slice(blob).map_err(|e| format!("bad stats blob: {e}"))?;
        let n = m.len();
        self.carried
            .set(m)
            .map_err(|_| "stats were already imported".to_string())?;
        Ok(n)
    }

    /// Memory held by stats, for `/memory`.
    pub fn memory(&self) -> serde_json::Value {
        let defs = self.defs.len() as usize;
        let def_key_bytes: usize = (0..self.defs.len())
            .filter_map(|i| self.defs.get(i))
            .map(|d| d.key.len())
            .sum();
        let def_bytes = self.defs.chunk_bytes() + def_key_bytes;
        let value_bytes: usize = self.shards.iter().map(|s| s.bytes()).sum();
        serde_json::json!({
            "symbols": self.symbols.len(),
            "symbol_table_bytes": self.symbols.bytes(),
            "stat_definitions": defs,
            "stat_definition_bytes": def_bytes,
            "stat_value_bytes": value_bytes,
            "stats_bytes_total": self.symbols.bytes() + def_bytes + value_bytes,
        })
    }
}

/// One Prometheus family: its name, kind, and members (decoded name, value, text name).
type Family<'a> = (String, Kind, Vec<(Named<'a>, &'a Merged, String)>);

fn braces(labels: &[String], extra: Option<&str>) -> String {
    let mut all: Vec<&str> = labels.iter().map(|s| s.as_str()).collect();
    all.extend(extra);
    if all.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", all.join(","))
    }
}

fn dotted_parts<'a>(scope: &str, name: &str, values: impl Iterator<Item = &'a str>) -> String {
    let mut s = String::from(scope);
    for v in values {
        s.push('.');
        s.push_str(v);
    }
    s.push('.');
    s.push_str(name);
    s
}

fn dotted(n: &Named<'_>) -> String {
    dotted_parts(n.scope, n.name, n.tags.iter().map(|t| t.1))
}

/// Prometheus metric and label names allow `[a-zA-Z0-9_]`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One shard's handle: counts into its own values, can register new stats.
#[derive(Clone)]
pub struct ShardStats {
    pub stats: Arc<Stats>,
    values: Arc<ShardValues>,
}

impl ShardStats {
    /// Only the owning shard calls the mutators.
    #[inline]
    pub fn add(&self, id: StatId, n: u64) {
        if let Some(slot) = self.values.slot(id) {
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        }
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
        if h.0 == SINK.0 {
            return;
        }
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        let n = LATENCY_BUCKETS_US.len() as u32;
        self.add(StatId(h.0 + bucket as u32), 1);
        self.add(StatId(h.0 + n + 1), us);
        self.add(StatId(h.0 + n + 2), 1);
    }

    pub fn get(&self, id: StatId) -> u64 {
        self.values.read(id.0)
    }
}

/// How often a shard copies its loop counters (poll loop, DPDK port) into the stats.
pub const POLL_STATS_PUBLISH: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests;
