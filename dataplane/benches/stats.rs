//! Criterion benchmarks of counting on the data path: a counter increment through a shard's
//! handle (a chunk lookup plus a relaxed load and store on shard-private memory), a latency
//! histogram record, and, for comparison, an atomic read-modify-write on one shared counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dataplane::config::StatsConfig;
use dataplane::stats::{Kind, Stats};

fn counting(c: &mut Criterion) {
    let stats = Arc::new(Stats::new(2, &StatsConfig::default()).expect("stats"));
    let id = stats.add(
        "cluster",
        "upstream_rq_total",
        &[("cluster", "c")],
        Kind::Counter,
    );
    let h = stats.add_histogram("listener", "rq_time_us", &[("listener", "l")]);
    stats.prefault();
    let shard = stats.shard(0);
    c.bench_function("counter_inc", |b| b.iter(|| shard.inc(black_box(id))));
    c.bench_function("histogram_record", |b| {
        b.iter(|| shard.record_us(black_box(h), black_box(180)))
    });
    let shared = AtomicU64::new(0);
    c.bench_function("shared_atomic_fetch_add (for comparison)", |b| {
        b.iter(|| shared.fetch_add(1, Ordering::Relaxed))
    });
    let interface = "com.acme.UserService";
    c.bench_function("intern_existing_symbol", |b| {
        let _ = stats.symbols.intern(interface);
        b.iter(|| stats.symbols.find(black_box(interface.as_bytes())))
    });
}

criterion_group!(benches, counting);
criterion_main!(benches);
