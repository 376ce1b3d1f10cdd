//! Run-wide counters shared by the connections of a load generator, and the once-a-second
//! progress line on stderr. Counters are relaxed atomics: they are for humans, the report is
//! built from per-connection state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
    pub stop: AtomicBool,
}

// === impl Counters ===

impl Counters {
    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Relaxed);
    }
    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Relaxed);
    }
    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }
}

/// Prints `[tool] 3s measure sent=.. recv=.. rps=.. errors=.. inflight=..` each second until
/// `counters.stop` is set. Returns the thread's handle.
pub fn spawn(
    tool: &'static str,
    counters: Arc<Counters>,
    start: Instant,
    warmup: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last_recv = 0;
        let mut tick = 1u64;
        while !counters.stop.load(Relaxed) {
            let due = start + Duration::from_secs(tick);
            // Short naps so the thread notices `stop` promptly.
            while Instant::now() < due && !counters.stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(50).min(due - Instant::now()));
            }
            if counters.stop.load(Relaxed) {
                break;
            }
            let sent = counters.sent.load(Relaxed);
            let recv = counters.received.load(Relaxed);
            let errors = counters.errors.load(Relaxed);
            let phase = if start.elapsed() <= warmup {
                "warmup"
            } else {
                "measure"
            };
            eprintln!(
                "[{tool}] {tick:>3}s {phase:<7} sent={sent} recv={recv} rps={} errors={errors} inflight={}",
                recv - last_recv,
                sent.saturating_sub(recv + errors),
            );
            last_recv = recv;
            tick += 1;
        }
    })
}
