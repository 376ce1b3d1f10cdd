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
//! - Histograms have fixed buckets per [`Layout`] (ringside's latencies: [`LATENCY_BUCKETS_US`];
//!   Istio's: Envoy's default buckets, [`ENVOY_BUCKETS_MILLI`]) so shards merge by adding slots.
//! - Counters can be exported and imported (hot upgrade carries totals to the successor), and
//!   reset (`POST /reset_counters`): the admin thread remembers each counter's value at the
//!   reset and subtracts it when rendering, so the shards stay the only writers of their slots.
//! - Scope [`ISTIO_SCOPE`] holds Istio's standard metrics: exported under their own names
//!   (`istio_requests_total`), labels in the order Istio's stats filter gives them.

pub mod arena;
pub mod istio;
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
/// Envoy's default histogram buckets (0.5, 1, 5, ... 3,600,000), in thousandths of the unit:
/// Istio's histograms (milliseconds, bytes) use them. Values are recorded in thousandths too
/// (a duration in µs, a size in bytes × 1000), so the 0.5 bound stays an integer.
pub const ENVOY_BUCKETS_MILLI: [u64; 19] = [
    500,
    1_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    600_000_000,
    1_800_000_000,
    3_600_000_000,
];

/// The scope of Istio's standard metrics (Envoy's `istiocustom` stat namespace): exported under
/// their own names, without the `ringside_` prefix.
pub const ISTIO_SCOPE: &str = "istiocustom";

/// The buckets of a histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// [`LATENCY_BUCKETS_US`], values in µs; Prometheus shows seconds.
    LatencyUs,
    /// [`ENVOY_BUCKETS_MILLI`], values in thousandths of the unit; Prometheus shows the unit.
    EnvoyMilli,
}

impl Layout {
    fn bounds(self) -> &'static [u64] {
        match self {
            Layout::LatencyUs => &LATENCY_BUCKETS_US,
            Layout::EnvoyMilli => &ENVOY_BUCKETS_MILLI,
        }
    }
    /// Slots of one histogram: buckets, +Inf, sum, count.
    fn slots(self) -> usize {
        self.bounds().len() + 3
    }
    /// What a recorded value is divided by for Prometheus.
    fn divisor(self) -> f64 {
        match self {
            Layout::LatencyUs => 1e6,
            Layout::EnvoyMilli => 1e3,
        }
    }
}

/// Index of one stat in every shard's value array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatId(u32);

/// Where excluded stats (and per-host stats when they are off) are counted: never exported.
pub const SINK: StatId = StatId(0);

/// A histogram: its first slot's id (the others follow) and its buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistId(u32, Layout);

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
    /// A gauge the admin API reads ([`Stats::total`]) but never exports (a host's ejection on
    /// each shard, for `/clusters`).
    Hidden,
}

/// A stat's identity: varints `[scope, name, tag count, (key, value)...]` of symbol ids.
pub struct StatDef {
    key: Box<[u8]>,
    kind: Kind,
    layout: Layout,
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
    /// Istio metrics: this workload (from `xds.node_metadata`, set at start) and the label
    /// sets allowed per listener and shard.
    istio_node: OnceLock<Arc<istio::Node>>,
    pub istio_label_sets_max: usize,
    /// Counter totals carried over from a predecessor process (hot upgrade), by text name.
    carried: OnceLock<HashMap<String, u64>>,
    /// Counter values at the last `POST /reset_counters`, by text name (admin thread only).
    #[allow(clippy::disallowed_types)]
    reset_base: std::sync::Mutex<HashMap<String, i128>>,
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
            istio_node: OnceLock::new(),
            istio_label_sets_max: cfg.istio_label_sets_max,
            carried: OnceLock::new(),
            reset_base: Default::default(),
            registered: Default::default(),
        };
        // Id 0 is the sink.
        stats.defs.push(StatDef {
            key: Box::new([]),
            kind: Kind::Counter,
            layout: Layout::LatencyUs,
        });
        Ok(stats)
    }

    /// Names this workload for Istio's metrics (once, at start).
    pub fn set_istio_node(&self, node: istio::Node) {
        let _ = self.istio_node.set(Arc::new(node));
    }

    /// This workload for Istio's metrics (all `unknown` when no node metadata was given).
    pub fn istio_node(&self) -> Arc<istio::Node> {
        self.istio_node
            .get_or_init(|| Arc::new(istio::Node::from_metadata(&Default::default())))
            .clone()
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
        self.register(key, false, |key| {
            self.defs.push(StatDef {
                key,
                kind,
                layout: Layout::LatencyUs,
            })
        })
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

    /// Registers a [`Kind::Hidden`] gauge (never exported, not subject to include/exclude).
    pub fn add_hidden(&self, scope: &str, name: &str, tags: &[(&str, &str)]) -> StatId {
        let Some(key) = self.encode(scope, name, tags) else {
            return SINK;
        };
        self.register(key, false, |key| {
            self.defs.push(StatDef {
                key,
                kind: Kind::Hidden,
                layout: Layout::LatencyUs,
            })
        })
        .map(StatId)
        .unwrap_or(SINK)
    }

    /// Registers a latency histogram (µs) over [`LATENCY_BUCKETS_US`].
    pub fn add_histogram(&self, scope: &str, name: &str, tags: &[(&str, &str)]) -> HistId {
        self.add_histogram_in(scope, name, tags, Layout::LatencyUs)
    }

    /// Registers a histogram with the buckets of `layout`.
    pub fn add_histogram_in(
        &self,
        scope: &str,
        name: &str,
        tags: &[(&str, &str)],
        layout: Layout,
    ) -> HistId {
        let sink = HistId(SINK.0, layout);
        if !self.kept(scope, name, tags) {
            return sink;
        }
        let Some(key) = self.encode(scope, name, tags) else {
            return sink;
        };
        let first = self.register(key, true, |key| {
            let slots = (0..layout.slots())
                .map(|k| StatDef {
                    key: key.clone(),
                    kind: if k == 0 {
                        Kind::Histogram
                    } else {
                        Kind::HistogramSlot
                    },
                    layout,
                })
                .collect();
            self.defs.push_many(slots)
        });
        first.map(|f| HistId(f, layout)).unwrap_or(sink)
    }

    /// A stat's value summed over shards (the admin API's per-host figures; a gauge read as
    /// i64 by the caller).
    pub fn total(&self, id: StatId) -> u64 {
        self.sum(id.0)
    }

    /// Claims room for one more Dubbo (listener, interface, method) entry; false at the cap.
    pub fn track_service(&self) -> bool {
        // Past the cap every request of an untracked pair asks again: a plain load then, not a
        // read-modify-write of a line every shard shares.
        self.services_tracked.load(Ordering::Relaxed) < self.services_max
            && self.services_tracked.fetch_add(1, Ordering::Relaxed) < self.services_max
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
                Kind::Hidden => (Merged::Value(Kind::HistogramSlot, 0), 1),
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
                    let n = def.layout.slots() as u32;
                    let slots = (0..n).map(|k| self.sum(id + k)).collect();
                    (Merged::Histogram(slots), n)
                }
                Kind::HistogramSlot => (Merged::Value(Kind::HistogramSlot, 0), 1),
            };
            id += step;
            if matches!(def.kind, Kind::HistogramSlot | Kind::Hidden) {
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

    /// A counter's value as exported: what the shards counted, plus what a predecessor carried
    /// over, less its value at the last reset.
    fn counter_value(&self, text: &str, raw: i128, base: &HashMap<String, i128>) -> i128 {
        raw + self.carried(text) - base.get(text).copied().unwrap_or(0)
    }

    fn reset_base(&self) -> std::sync::MutexGuard<'_, HashMap<String, i128>> {
        self.reset_base.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `POST /reset_counters`: every counter reads 0 from now on (gauges and histograms are
    /// left alone, as Envoy does).
    pub fn reset_counters(&self) {
        let merged = self.merged();
        let mut base = self.reset_base();
        for (def, m) in merged {
            if let (Merged::Value(Kind::Counter, v), Some(n)) = (m, self.named(def)) {
                let text = dotted(&n);
                let total = v + self.carried(&text);
                base.insert(text, total);
            }
        }
    }

    /// Every stat as (dotted name, value); histograms as `_count`, `_sum_us` and cumulative
    /// `_le_<bound>us` entries (Istio's: `_sum` and `_le_<bound>` in their unit).
    fn flat(&self, sel: &Select<'_>) -> Vec<(String, i128)> {
        let mut out = Vec::new();
        let base = self.reset_base().clone();
        for (def, m) in self.merged() {
            let Some(n) = self.named(def) else { continue };
            let base_name = dotted(&n);
            if !sel.keeps(&base_name, &m) {
                continue;
            }
            match m {
                Merged::Value(kind, v) => {
                    let v = if kind == Kind::Counter {
                        self.counter_value(&base_name, v, &base)
                    } else {
                        v
                    };
                    out.push((base_name, v));
                }
                Merged::Histogram(slots) => {
                    let bounds = def.layout.bounds();
                    let (unit, div) = match def.layout {
                        Layout::LatencyUs => ("us", 1),
                        Layout::EnvoyMilli => ("", 1000),
                    };
                    let mut cumulative = 0u64;
                    for (k, bound) in bounds.iter().enumerate() {
                        cumulative += slots[k];
                        let b = if div == 1 {
                            bound.to_string()
                        } else {
                            format!("{}", *bound as f64 / div as f64)
                        };
                        out.push((format!("{base_name}_le_{b}{unit}"), cumulative as i128));
                    }
                    let n = bounds.len();
                    let sum = slots[n + 1] / div;
                    out.push((
                        format!("{base_name}_sum{}", if div == 1 { "_us" } else { "" }),
                        sum as i128,
                    ));
                    out.push((format!("{base_name}_count"), slots[n + 2] as i128));
                }
            }
        }
        out
    }

    /// Envoy-style text: `listener.outbound.downstream_cx_total: 12`, sorted by name.
    pub fn render_text(&self) -> String {
        self.render_text_selected(&Select::ALL)
    }

    /// [`Stats::render_text`] of the stats `sel` keeps (`/stats?filter=...&usedonly`).
    pub fn render_text_selected(&self, sel: &Select<'_>) -> String {
        let mut lines: Vec<String> = self
            .flat(sel)
            .iter()
            .map(|(name, v)| format!("{name}: {v}"))
            .collect();
        lines.sort();
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }

    pub fn render_json(&self, sel: &Select<'_>) -> serde_json::Value {
        let stats: Vec<_> = self
            .flat(sel)
            .iter()
            .map(|(name, v)| serde_json::json!({"name": name, "value": v}))
            .collect();
        serde_json::json!({ "stats": stats })
    }

    /// Prometheus text exposition format 0.0.4. ringside's own stats: families
    /// `ringside_<scope>_<name>`, tags as labels, counters ending in `_total`, latency
    /// histograms in seconds (`_seconds`), a HELP line naming the stat each family comes from.
    /// Istio's ([`ISTIO_SCOPE`]): their own names and labels, as istio-proxy exports them.
    pub fn render_prometheus(&self) -> String {
        self.render_prometheus_selected(&Select::ALL)
    }

    /// [`Stats::render_prometheus`] of the stats `sel` keeps.
    pub fn render_prometheus_selected(&self, sel: &Select<'_>) -> String {
        let merged = self.merged();
        let base = self.reset_base().clone();
        let mut families: Vec<Family<'_>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (def, m) in &merged {
            let Some(n) = self.named(def) else { continue };
            let text = dotted(&n);
            if !sel.keeps(&text, m) {
                continue;
            }
            let fam = family_name(&n, def);
            let at = *index.entry(fam.clone()).or_insert_with(|| {
                families.push((fam.clone(), def.kind, def.layout, Vec::new()));
                families.len() - 1
            });
            families[at].3.push((n, m, text));
        }
        let mut out = String::new();
        for (fam, kind, layout, members) in families {
            let t = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                _ => "histogram",
            };
            let _ = writeln!(out, "# HELP {fam} {}", help(&members[0].0, kind));
            let _ = writeln!(out, "# TYPE {fam} {t}");
            for (n, m, text) in members {
                let labels: Vec<String> = n
                    .tags
                    .iter()
                    .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape_label(v)))
                    .collect();
                match m {
                    Merged::Value(k, v) => {
                        let v = if *k == Kind::Counter {
                            self.counter_value(&text, *v, &base)
                        } else {
                            *v
                        };
                        let _ = writeln!(out, "{fam}{} {v}", braces(&labels, None));
                    }
                    Merged::Histogram(slots) => {
                        let bounds = layout.bounds();
                        let div = layout.divisor();
                        let mut cumulative = 0;
                        for (k, slot) in slots.iter().enumerate().take(bounds.len() + 1) {
                            cumulative += slot;
                            let le = match bounds.get(k) {
                                Some(b) => format!("{}", *b as f64 / div),
                                None => "+Inf".to_string(),
                            };
                            let le = format!("le=\"{le}\"");
                            let _ = writeln!(
                                out,
                                "{fam}_bucket{} {cumulative}",
                                braces(&labels, Some(&le))
                            );
                        }
                        let n = bounds.len();
                        let sum = slots[n + 1] as f64 / div;
                        let _ = writeln!(out, "{fam}_sum{} {sum}", braces(&labels, None));
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
        let base = self.reset_base().clone();
        for (def, merged) in self.merged() {
            if let (Merged::Value(Kind::Counter, v), Some(n)) = (merged, self.named(def)) {
                let name = dotted(&n);
                let total = self.counter_value(&name, v, &base);
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
type Family<'a> = (String, Kind, Layout, Vec<(Named<'a>, &'a Merged, String)>);

/// Which stats an admin request shows: `filter` (a regex searched in the text name, as Envoy's
/// `/stats?filter=`) and `usedonly` (Envoy: stats ever written; here: a counter or gauge that
/// is not 0, a histogram with a sample).
pub struct Select<'a> {
    pub filter: Option<&'a Regex>,
    pub used_only: bool,
}

impl Select<'_> {
    pub const ALL: Select<'static> = Select {
        filter: None,
        used_only: false,
    };

    fn keeps(&self, text: &str, m: &Merged) -> bool {
        if self.filter.is_some_and(|r| !r.is_match(text)) {
            return false;
        }
        // `server.state` is set by Envoy at start, so its `usedonly` lists it even at LIVE (0),
        // and pilot-agent's readiness probe needs it there.
        !self.used_only
            || text == "server.state"
            || match m {
                Merged::Value(_, v) => *v != 0,
                Merged::Histogram(slots) => slots.last().is_some_and(|&c| c != 0),
            }
    }
}

/// The Prometheus family of a stat: Istio's under their own name; ringside's as
/// `ringside_<scope>_<name>`, a counter ending in `_total` and a latency histogram (µs,
/// exported in seconds) in `_seconds` (a `_us` suffix replaced).
fn family_name(n: &Named<'_>, def: &StatDef) -> String {
    if n.scope == ISTIO_SCOPE {
        return sanitize(n.name);
    }
    let base = format!("ringside_{}_{}", sanitize(n.scope), sanitize(n.name));
    match (def.kind, def.layout) {
        (Kind::Counter, _) if !base.ends_with("_total") => base + "_total",
        (Kind::Histogram, Layout::LatencyUs) => {
            format!("{}_seconds", base.strip_suffix("_us").unwrap_or(&base))
        }
        _ => base,
    }
}

/// The HELP text of a family: Istio's documented meaning, or the ringside stat it exports
/// (its text name with `<tag>` placeholders, as `/stats` shows it).
fn help(n: &Named<'_>, kind: Kind) -> String {
    if n.scope == ISTIO_SCOPE {
        let what = match n.name {
            "istio_requests_total" => "Requests (Dubbo calls, gRPC/Triple calls) handled",
            "istio_request_duration_milliseconds" => "Duration of requests in milliseconds",
            "istio_request_bytes" => "Request sizes in bytes",
            "istio_response_bytes" => "Response sizes in bytes",
            "istio_tcp_connections_opened_total" => "TCP connections opened",
            "istio_tcp_connections_closed_total" => "TCP connections closed",
            "istio_tcp_sent_bytes_total" => "Bytes sent to the downstream of TCP connections",
            "istio_tcp_received_bytes_total" => {
                "Bytes received from the downstream of TCP connections"
            }
            _ => "Istio standard metric",
        };
        return format!("{what} (Istio standard metric).");
    }
    let placeholders: Vec<String> = n.tags.iter().map(|(k, _)| format!("<{k}>")).collect();
    let text = dotted_parts(n.scope, n.name, placeholders.iter().map(|s| s.as_str()));
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        _ => "histogram",
    };
    format!("ringside {kind} {text}")
}

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
    if n.scope == ISTIO_SCOPE {
        // Envoy's text name of a tagged Istio stat: `istiocustom.NAME.KEY.VALUE...`.
        let mut s = format!("{}.{}", n.scope, n.name);
        for (k, v) in &n.tags {
            s.push('.');
            s.push_str(k);
            s.push('.');
            s.push_str(v);
        }
        return s;
    }
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
        self.record(h, us);
    }

    /// Records one sample in the histogram's unit (µs for latencies, thousandths for
    /// [`Layout::EnvoyMilli`]).
    #[inline]
    pub fn record(&self, h: HistId, v: u64) {
        if h.0 == SINK.0 {
            return;
        }
        let bounds = h.1.bounds();
        let bucket = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
        let n = bounds.len() as u32;
        self.add(StatId(h.0 + bucket as u32), 1);
        self.add(StatId(h.0 + n + 1), v);
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
