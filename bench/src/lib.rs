//! Load generators, echo providers and the side-by-side runner that measures ringside against
//! direct and against Envoy in the same run. A program, not a test; never a dependency of
//! anything else.
//!
//! Binaries: `dubbo-load` and `tcp-load` (closed and open loop, HDR histograms, JSON report),
//! `dubbo-echo` and `tcp-echo` (upstreams), `bench-run` (the runner behind `bench/run`).
//! Dubbo frames are decoded and built with the workspace `codec` crate only; this crate owns no
//! wire format.

// The workspace bans std locks because they must never be on ringside's data path; this crate
// is a measuring tool, and its few locks are off the measured path (the runner's child list, the
// open-loop pacer and reader threads sharing one connection's state).
#![allow(clippy::disallowed_types)]

pub mod args;
pub mod dubbo_client;
pub mod grpc;
pub mod mtls;
pub mod plot;
pub mod progress;
pub mod report;
pub mod runner;

/// Sets the main thread's timer slack to 1 µs (through `/proc/self/timerslack_ns`, so no
/// unsafe code; the file exists per process and acts on the thread whose id is the process id)
/// so `nanosleep` wakes the open-loop pacer, which runs on the main thread, close to the intended
/// send time: the default slack is 50 µs, more than the whole hop we measure. Returns whether it
/// worked.
pub fn set_timer_slack_1us() -> bool {
    std::fs::write("/proc/self/timerslack_ns", "1000").is_ok()
}
