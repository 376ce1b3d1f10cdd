//! (feature `fuzz`) Drives the real Dubbo and Triple connection code with fuzzer-chosen bytes,
//! in memory: a [`crate::worker::Detached`] shard built from a fixed config serves
//! [`shard::mem`] streams as its callers' connections, and its upstream pools' connects are
//! answered by the script ([`Upstreams`]): accepted (the script then plays the provider on the
//! other end), refused, or left pending. The scripts (`dubbo::run`, `triple::run`) read their
//! operations from the fuzzer's input and check invariants as they go and at the end: every
//! request answered at most once (exactly once when the caller behaved), no frame on a stream
//! after its end, flow-control windows kept, well-formed output, and every connection, gauge
//! and pending request gone once the peers leave.
//!
//! Time: monoio fires timers only when the loop parks, which the scripts' turns never do, so a
//! run is deterministic except for the script's explicit sleeps (a few ms, for the short
//! deadlines of the fuzz config).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use crate::io::fuzz::{Upstreams, PIPE_BYTES};
use crate::snapshot::{Builder, Snapshot};
use crate::stats::{ShardStats, Stats};
use crate::worker::Detached;

pub mod dubbo;
pub mod triple;

/// How much a run may grow the heap: far above what a few KB of input can legitimately make
/// ringside hold, far below what an unbounded buffer reaches.
pub const HEAP_GROWTH_MAX: usize = 64 << 20;
/// How far the heap in use after a run may drift from where it stood after the first run:
/// memory a run leaves behind (a reference cycle, a task that never ends) adds up run after run
/// and trips this within a few thousand runs, where the per-run bound cannot see it.
pub const HEAP_DRIFT_MAX: usize = 1 << 20;

thread_local! {
    static SETTLED_HEAP: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Checks, after a run, that the runs so far left no memory behind (see [`HEAP_DRIFT_MAX`]).
pub fn check_no_leak(live_bytes: fn() -> usize) {
    let now = live_bytes();
    let first = SETTLED_HEAP.with(|b| {
        let first = b.get().unwrap_or(now);
        b.set(Some(first));
        first
    });
    assert!(
        now <= first + HEAP_DRIFT_MAX,
        "runs leave memory behind: {} bytes in use after this run, {first} after the first",
        now
    );
}

/// Explicit sleeps per run at most (each is a few ms of real time).
pub const SLEEPS_MAX: u32 = 3;

/// The fuzzer's input, read as operations.
pub struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    pub fn new(data: &'a [u8]) -> Script<'a> {
        Script { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 once the input is used up).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// An operation's four argument bytes (every operation takes four, used or not, so that
    /// an operation skipped for want of a peer leaves the rest of the script in step).
    pub fn args(&mut self) -> [u8; 4] {
        [self.byte(), self.byte(), self.byte(), self.byte()]
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
}

/// Returns once every task that was ready has run.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        // monoio runs a task that wakes itself while polled again at once (front of the
        // queue); a task spawned now runs after every task already queued, and wakes us then.
        let w = cx.waker().clone();
        shard::monoio::spawn(async move { w.wake() });
        Poll::Pending
    }
}

/// Turns the runtime until no byte moved through any in-memory connection for a few turns
/// (a bounded number of turns: a task that keeps moving bytes forever shows as a failure of
/// the invariants checked after it).
pub async fn settle() {
    let mut last = shard::mem::activity();
    let mut quiet = 0;
    for _ in 0..2_000 {
        YieldNow(false).await;
        let now = shard::mem::activity();
        if now == last {
            quiet += 1;
            if quiet >= 4 {
                return;
            }
        } else {
            quiet = 0;
            last = now;
        }
    }
}

/// A fixed config's snapshot and stats, built once per thread (the per-run state is the
/// [`Detached`] shard built from it).
#[derive(Clone)]
pub struct Fixture {
    pub snapshot: Arc<Snapshot>,
    pub stats: Arc<Stats>,
}

impl Fixture {
    pub fn new(yaml: &str) -> Fixture {
        let config = config::Config::from_yaml("fuzz.yaml", yaml).expect("fuzz config parses");
        let errors = config.validate();
        assert!(errors.is_empty(), "fuzz config: {errors:?}");
        let stats = Arc::new(Stats::new(1, &config.stats).expect("stats"));
        let snapshot = Builder::default().build(config, &stats, None, Vec::new());
        Fixture {
            snapshot: Arc::new(snapshot),
            stats,
        }
    }

    /// The end of a run, every peer gone: the listener's and the cluster's connection and
    /// request gauges are back to 0, so is the shard's buffer budget (`buffered`: every byte
    /// charged was given back), and the heap grew by at most 64 MiB (`peak`) during it.
    pub fn check_end(&self, stats: &ShardStats, buffered: usize, peak: usize, input_bytes: usize) {
        let snap = &self.snapshot;
        let gauges = [
            ("listener cx_active", snap.listener_ids[0].cx_active),
            ("cluster cx_active", snap.cluster_ids[0].cx_active),
            ("cluster rq_active", snap.upstream_ids[0].rq_active),
        ];
        for (name, id) in gauges {
            assert_eq!(stats.get(id), 0, "{name} after every peer left");
        }
        assert_eq!(
            buffered, 0,
            "bytes charged to the buffer budget after every peer left"
        );
        assert!(
            peak <= HEAP_GROWTH_MAX,
            "heap grew by {peak} bytes during a run of {input_bytes} input bytes"
        );
    }

    pub fn shard(&self) -> (Detached, ShardStats) {
        let stats = self.stats.shard(0);
        (Detached::new(self.snapshot.clone(), stats.clone()), stats)
    }
}

/// A fresh runtime per run: nothing a run leaves behind (a task that never ended) reaches the
/// next one.
pub fn runtime(
) -> shard::monoio::Runtime<shard::monoio::time::TimeDriver<shard::monoio::LegacyDriver>> {
    shard::monoio::RuntimeBuilder::<shard::monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime")
}
