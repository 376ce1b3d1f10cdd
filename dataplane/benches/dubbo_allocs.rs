//! Heap allocations per Dubbo request in steady state: a 1x1 closed loop through the real
//! listener, router and upstream pool over in-memory streams
//! (`dataplane::fuzzing::dubbo::steady_state_allocations`), with a global allocator that counts
//! allocation calls. The goal (issue #25, docs/decisions/0009-hop-at-the-floor.md) is none per
//! request. What remains is per 64 KiB of traffic, not per request: a read buffer that fills up
//! while its last frame is still queued elsewhere is replaced by a new one (and the new one's
//! first split shares it: a second allocation), about one allocation per 145 requests here.
//! Exits 1 at one allocation per 100 requests or more: any allocation made per request (or
//! per few requests) trips it.
//!
//! `cargo bench -p dataplane --features fuzz --bench dubbo_allocs`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static CALLS: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn allocations() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

fn main() {
    let (warmup, measured) = (1_000, 100_000);
    let n = dataplane::fuzzing::dubbo::steady_state_allocations(warmup, measured, allocations);
    println!(
        "dubbo 1x1 closed loop: {n} allocations in {measured} requests ({:.4} per request)",
        n as f64 / f64::from(measured)
    );
    if n * 100 >= u64::from(measured) {
        eprintln!("FAIL: the Dubbo request path allocates per request (goal: none)");
        std::process::exit(1);
    }
}
