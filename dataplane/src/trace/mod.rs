//! Distributed tracing: trace context propagation (W3C `traceparent`, B3 single and multi) in
//! Triple headers and Dubbo attachments, and one span per proxied call, exported with
//! OTLP/gRPC off the data path.
//!
//! Per call, a traced listener reads the context the call carries ([`context::Carrier`]) and
//! [`ListenerTrace::decide`]s: a sampled call gets a span of ringside's own (a child of the
//! caller's span) whose id the next hop sees as its parent; a call without a context starts a
//! trace, sampled at `random_sampling` percent; an unsampled context is forwarded untouched.
//! When the call ends, its span is encoded ([`otlp`]) straight into the shard's batch for the
//! collector (a `Vec<u8>` reused from batch to batch), handed to the collector's exporter
//! thread when it reaches [`BATCH_BYTES`] or [`FLUSH_INTERVAL_MS`] after its first span,
//! through a bounded lock-free queue of [`QUEUED_BATCHES_MAX`] batches. A full queue drops the
//! batch and counts its spans (`tracing.spans_dropped`): a slow collector never blocks a shard.
//! A listener without `tracing` pays one `Option` check per call.

pub mod context;
mod export;
pub mod otlp;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use context::{Arrived, Carrier, Field, Format, Incoming, SpanId, TraceId};
pub use export::{drain_all, Collector};
pub use otlp::SpanData;

use crate::stats::{Kind, ShardStats, StatId, Stats};

/// How long a span may wait in a shard's batch before the batch goes to the exporter (the
/// OpenTelemetry SDK's batch processor waits 5 s; a shorter wait keeps traces live).
pub const FLUSH_INTERVAL_MS: u64 = 200;
/// A batch this large goes to the exporter at once (some 150 spans).
pub const BATCH_BYTES: usize = 64 * 1024;
/// Batches queued per collector (all shards together) before shards drop spans.
pub const QUEUED_BATCHES_MAX: usize = 64;

/// A listener's tracing as the snapshot carries it (built on the control thread).
#[derive(Clone, Debug)]
pub struct TraceSpec {
    pub collector: Arc<Collector>,
    /// Sampled when a 32-bit roll is below this (`random_sampling` of 2^32).
    pub threshold: u64,
    pub kind: u64,
    /// `tracing.propagate_unsampled`.
    pub propagate_unsampled: bool,
    /// The node's id and zone (xDS bootstrap; empty without), the `node_id` and `zone` tags
    /// of HTTP/1.1 spans as Envoy's.
    pub node: Arc<(String, String)>,
}

impl TraceSpec {
    /// Opens (or shares) the collector of a listener's `tracing`; `node`: the node's id and
    /// zone.
    pub fn open(t: &config::Tracing, node: Arc<(String, String)>) -> std::io::Result<TraceSpec> {
        Ok(TraceSpec {
            node,
            collector: Collector::open(&t.collector_cluster, &t.service_name)?,
            threshold: (t.random_sampling.0 / 100.0 * (1u64 << 32) as f64) as u64,
            kind: match t.span_kind {
                config::SpanKind::Server => otlp::SPAN_KIND_SERVER,
                config::SpanKind::Client => otlp::SPAN_KIND_CLIENT,
            },
            propagate_unsampled: t.propagate_unsampled,
        })
    }
}

/// What ringside does with one call's trace context.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    pub trace_id: TraceId,
    /// Ringside's span: the parent the next hop sees.
    pub span_id: SpanId,
    /// The caller's span (none: the trace starts here).
    pub parent: Option<SpanId>,
    pub sampled: bool,
    /// How the context arrived (none: ringside adds a `traceparent`).
    pub incoming: Option<Incoming>,
}

impl Decision {
    /// The call's context must be written (added, or its span id replaced); otherwise it is
    /// forwarded as it came.
    pub fn rewrites(&self) -> bool {
        self.sampled || self.incoming.is_none()
    }
}

/// A traced listener on one shard.
pub struct ListenerTrace {
    kind: u64,
    threshold: u64,
    propagate_unsampled: bool,
    /// The node's id and zone ([`TraceSpec::node`]).
    pub node: Arc<(String, String)>,
    batch: Rc<ShardBatch>,
    /// xorshift64* state (ids and sampling rolls); seeded per listener and shard.
    rng: Cell<u64>,
}

impl ListenerTrace {
    /// The context a call arriving with `arrived` goes on with; `None`: not traced (an
    /// unsampled context or a B3 deny), forwarded untouched.
    #[inline]
    pub fn decide(&self, arrived: Arrived) -> Option<Decision> {
        match arrived {
            Arrived::Deny => None,
            Arrived::Context(c) if c.sampled == Some(false) => None,
            Arrived::Context(c) => Some(Decision {
                trace_id: c.trace_id,
                span_id: self.span_id(),
                parent: Some(c.span_id),
                sampled: c.sampled.unwrap_or_else(|| self.roll()),
                incoming: Some(c),
            }),
            Arrived::None => {
                // The decision first: an unsampled call that carries nothing on needs no ids.
                let sampled = self.roll();
                if !sampled && !self.propagate_unsampled {
                    return None;
                }
                // Neither id is zero: `next` never returns 0 (see there).
                let (a, b) = (self.next(), self.next());
                Some(Decision {
                    trace_id: (u128::from(a) << 64 | u128::from(b)).to_be_bytes(),
                    span_id: self.next().to_be_bytes(),
                    parent: None,
                    sampled,
                    incoming: None,
                })
            }
        }
    }

    pub fn kind(&self) -> u64 {
        self.kind
    }

    /// Encodes a finished sampled call's span into the shard's batch.
    pub fn finish(&self, d: &Decision, s: &SpanData<'_>) {
        if d.sampled {
            self.batch.span(|out| otlp::span(out, s));
        }
    }

    /// Encodes a finished sampled HTTP/1.1 request's span into the shard's batch.
    pub fn finish_http(&self, d: &Decision, s: &otlp::HttpSpan<'_>) {
        if d.sampled {
            self.batch.span(|out| otlp::http_span(out, s));
        }
    }

    /// Never 0: the state never is (xorshift64*, Vigna), and a non-zero state times an odd
    /// constant is non-zero modulo 2^64.
    #[inline]
    fn next(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn span_id(&self) -> SpanId {
        loop {
            let v = self.next();
            if v != 0 {
                return v.to_be_bytes();
            }
        }
    }

    fn roll(&self) -> bool {
        (self.next() >> 32) < self.threshold
    }
}

/// Unix time of `t` in nanoseconds (0 before 1970).
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One collector's batch on one shard.
pub struct ShardBatch {
    collector: Arc<Collector>,
    batch: RefCell<Vec<u8>>,
    spans: Cell<u32>,
    /// A flush of the current batch is scheduled.
    armed: Cell<bool>,
    stats: ShardStats,
    ids: TraceStatIds,
}

#[derive(Clone, Copy, Debug)]
struct TraceStatIds {
    queued: StatId,
    dropped: StatId,
}

impl TraceStatIds {
    fn register(stats: &Stats, cluster: &str) -> TraceStatIds {
        let tags = [("collector", cluster)];
        TraceStatIds {
            queued: stats.add("tracing", "spans_queued", &tags, Kind::Counter),
            dropped: stats.add("tracing", "spans_dropped", &tags, Kind::Counter),
        }
    }
}

impl ShardBatch {
    fn span(self: &Rc<Self>, encode: impl FnOnce(&mut Vec<u8>)) {
        let full = {
            let mut b = self.batch.borrow_mut();
            if b.capacity() == 0 {
                *b = self.collector.spare_batch();
            }
            encode(&mut b);
            b.len() >= BATCH_BYTES
        };
        self.spans.set(self.spans.get() + 1);
        if full {
            self.flush();
        } else if !self.armed.replace(true) {
            let me = self.clone();
            shard::monoio::spawn(async move {
                shard::monoio::time::sleep(Duration::from_millis(FLUSH_INTERVAL_MS)).await;
                me.flush();
            });
        }
    }

    /// Hands the batch to the exporter (or drops it, counted, when the exporter is behind).
    pub fn flush(&self) {
        self.armed.set(false);
        let spans = self.spans.replace(0);
        if spans == 0 {
            return;
        }
        let batch = std::mem::take(&mut *self.batch.borrow_mut());
        if self.collector.push(batch) {
            self.stats.add(self.ids.queued, u64::from(spans));
        } else {
            self.stats.add(self.ids.dropped, u64::from(spans));
        }
    }
}

/// The last listener of this shard that used a collector is gone: its last spans go to the
/// exporter, and the collector is no longer held here.
impl Drop for ShardBatch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A shard's collector batches, shared by its listeners (held by them: a batch no listener
/// context uses is dropped, and with it the shard's hold on the collector).
#[derive(Default)]
pub struct ShardTraces {
    batches: RefCell<Vec<std::rc::Weak<ShardBatch>>>,
    /// Seeds of the listeners' generators.
    seeds: Cell<u64>,
}

impl ShardTraces {
    /// The shard-side tracing of a listener (`None` when it has none).
    pub fn listener(
        &self,
        spec: Option<&TraceSpec>,
        stats: &ShardStats,
    ) -> Option<Rc<ListenerTrace>> {
        let spec = spec?;
        let batch = self.batch(&spec.collector, stats);
        Some(Rc::new(ListenerTrace {
            kind: spec.kind,
            threshold: spec.threshold,
            propagate_unsampled: spec.propagate_unsampled,
            node: spec.node.clone(),
            batch,
            rng: Cell::new(self.seed()),
        }))
    }

    /// A fresh non-zero seed: random per process (std's hasher keys), different per call.
    fn seed(&self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let n = self.seeds.get().wrapping_add(1);
        self.seeds.set(n);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(unix_ns(SystemTime::now()).into());
        h.finish() | 1
    }

    fn batch(&self, collector: &Arc<Collector>, stats: &ShardStats) -> Rc<ShardBatch> {
        let mut batches = self.batches.borrow_mut();
        // Batches no listener of this shard uses any more were dropped (and flushed).
        batches.retain(|b| b.strong_count() > 0);
        if let Some(b) = batches
            .iter()
            .filter_map(std::rc::Weak::upgrade)
            .find(|b| Arc::ptr_eq(&b.collector, collector))
        {
            return b;
        }
        collector.count_in(&stats.stats);
        let b = Rc::new(ShardBatch {
            collector: collector.clone(),
            batch: RefCell::new(Vec::new()),
            spans: Cell::new(0),
            armed: Cell::new(false),
            stats: stats.clone(),
            ids: TraceStatIds::register(&stats.stats, collector.cluster()),
        });
        batches.push(Rc::downgrade(&b));
        b
    }

    /// Hands every batch to its exporter (the shard is stopping).
    pub fn flush_all(&self) {
        let live: Vec<Rc<ShardBatch>> = self
            .batches
            .borrow()
            .iter()
            .filter_map(std::rc::Weak::upgrade)
            .collect();
        for b in live {
            b.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(percent: f64) -> ListenerTrace {
        let collector = Collector::open("test-collector", &format!("svc-{percent}")).unwrap();
        let stats = Arc::new(Stats::new(1, &Default::default()).unwrap());
        let shard = ShardTraces::default();
        let spec = TraceSpec {
            collector,
            threshold: (percent / 100.0 * (1u64 << 32) as f64) as u64,
            kind: otlp::SPAN_KIND_CLIENT,
            propagate_unsampled: true,
            node: Default::default(),
        };
        Rc::try_unwrap(shard.listener(Some(&spec), &stats.shard(0)).unwrap())
            .ok()
            .unwrap()
    }

    #[test]
    fn sampling_rates() {
        let all = listener(100.0);
        let none = listener(0.0);
        let tenth = listener(10.0);
        let mut n = 0;
        for _ in 0..10_000 {
            assert!(all.decide(Arrived::None).unwrap().sampled);
            assert!(!none.decide(Arrived::None).unwrap().sampled);
            n += usize::from(tenth.decide(Arrived::None).unwrap().sampled);
        }
        assert!((800..1200).contains(&n), "{n} of 10000 at 10%");
    }

    #[test]
    fn decisions() {
        let l = listener(0.0);
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = context::parse_traceparent(tp).unwrap();
        let d = l.decide(Arrived::Context(c)).unwrap();
        assert!(d.sampled && d.rewrites());
        assert_eq!(d.trace_id, c.trace_id);
        assert_eq!(d.parent, Some(c.span_id));
        assert_ne!(d.span_id, c.span_id);
        let unsampled = Incoming {
            sampled: Some(false),
            ..c
        };
        assert!(l.decide(Arrived::Context(unsampled)).is_none());
        assert!(l.decide(Arrived::Deny).is_none());
        // Deferred (B3 without a sampling state): ours, at 0 % not sampled, and forwarded
        // untouched.
        let deferred = Incoming { sampled: None, ..c };
        let d = l.decide(Arrived::Context(deferred)).unwrap();
        assert!(!d.sampled && !d.rewrites());
        // Started here: always written (the next hop learns the decision).
        let d = l.decide(Arrived::None).unwrap();
        assert!(!d.sampled && d.rewrites() && d.parent.is_none());
        assert_ne!(d.trace_id, [0; 16]);
    }
}
