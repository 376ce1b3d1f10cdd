//! RINGSIDE PATCH (not in upstream monoio 0.2.4): how `Runtime::block_on` waits for I/O when
//! no task is ready. See ringside's docs/decisions/0003-poll-mode.md.
//!
//! - [`PollMode::Sleep`]: upstream behaviour, a blocking `park()` (io_uring_enter waiting for one
//!   completion, or epoll_wait with the next timer as timeout).
//! - [`PollMode::Spin`]: never blocks. A wait is `submit()` (io_uring: io_uring_enter without
//!   waiting, then reap the completion queue; epoll: epoll_wait with timeout 0), and at least
//!   every [`FULL_POLL_INTERVAL`] `park_timeout(0)`, which also runs foreign (cross-thread)
//!   wakers and fires due timers (`submit()` does neither; on io_uring `park_timeout(0)` costs
//!   several times a `submit()`: the kernel arms a timer for the zero wait).
//! - [`PollMode::Hybrid`]: spins like `Spin` until the loop has been idle for `budget`, then
//!   blocks like `Sleep`; any work found restarts the budget.
//!
//! The mode is a thread-local: [`set_poll_mode`] on the runtime's thread before `block_on`; a
//! task may change it while the loop runs with [`switch_poll_mode`] (read at every wait).

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{driver::Driver, scheduler::TaskQueue};

/// How the runtime waits when no task is ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PollMode {
    /// Block in the kernel until an event or a timer (upstream monoio).
    #[default]
    Sleep,
    /// Poll without blocking, forever.
    Spin,
    /// Poll without blocking until idle for `budget`, then block.
    Hybrid {
        /// How long the loop keeps polling after it last found work.
        budget: Duration,
    },
}

/// What the poll loop did; written only by the runtime's thread (relaxed stores), readable from
/// any thread.
#[derive(Debug, Default)]
pub struct PollCounters {
    /// Nanoseconds of loop turns whose non-blocking poll found nothing to do.
    pub idle_spin_ns: AtomicU64,
    /// Non-blocking polls.
    pub spins: AtomicU64,
    /// Blocking waits (every wait in `Sleep`; the falls asleep in `Hybrid`).
    pub sleeps: AtomicU64,
}

/// How stale a spinning loop lets timers and wakers from other threads get (timers have 1 ms
/// resolution anyway).
pub const FULL_POLL_INTERVAL: Duration = Duration::from_micros(100);

thread_local! {
    static MODE: Cell<PollMode> = const { Cell::new(PollMode::Sleep) };
    static COUNTERS: RefCell<Option<Arc<PollCounters>>> = const { RefCell::new(None) };
    static AFTER_PARK: RefCell<Option<std::task::Waker>> = const { RefCell::new(None) };
}

/// RINGSIDE PATCH (DPDK path): a task that polls a device outside the kernel (a DPDK queue)
/// registers here before it returns `Pending`; the loop's next wait then never blocks (it waits
/// as in `Spin`, so timers and I/O still run) and wakes the task right after. One waker per
/// thread: a later registration replaces the earlier one.
pub fn wake_after_park(waker: &std::task::Waker) {
    AFTER_PARK.with(|a| {
        let mut a = a.borrow_mut();
        match a.as_mut() {
            Some(w) => w.clone_from(waker),
            None => *a = Some(waker.clone()),
        }
    });
}

/// Sets the poll mode (and where to count) for runtimes that `block_on` later on this thread.
pub fn set_poll_mode(mode: PollMode, counters: Option<Arc<PollCounters>>) {
    MODE.with(|m| m.set(mode));
    COUNTERS.with(|c| *c.borrow_mut() = counters);
}

/// Changes the poll mode of the runtime running on this thread, from its next wait on.
pub fn switch_poll_mode(mode: PollMode) {
    MODE.with(|m| m.set(mode));
}

/// The wait step of one `block_on`.
pub(crate) struct Poller {
    counters: Option<Arc<PollCounters>>,
    /// Since when the loop has found nothing (hybrid), `None` right after work.
    idle_since: Option<Instant>,
    /// The last `park_timeout(0)`.
    full_poll: Instant,
    /// When the last non-blocking poll started, if it found nothing: the loop turn from then to
    /// the next poll was idle.
    idle_poll: Option<Instant>,
    idle_ns: u64,
    spins: u64,
    sleeps: u64,
}

impl Poller {
    pub(crate) fn current() -> Self {
        Poller {
            counters: COUNTERS.with(|c| c.borrow().clone()),
            idle_since: None,
            full_poll: Instant::now(),
            idle_poll: None,
            idle_ns: 0,
            spins: 0,
            sleeps: 0,
        }
    }

    /// Waits for work the way the mode says; `tasks` tells whether a wait found any.
    pub(crate) fn park<D: Driver>(&mut self, driver: &D, tasks: &TaskQueue) -> io::Result<()> {
        let device = AFTER_PARK.with(|a| a.borrow_mut().take());
        if let Some(w) = device {
            let r = self.spin(driver, tasks);
            w.wake();
            return r;
        }
        match MODE.with(Cell::get) {
            PollMode::Sleep => self.sleep(driver),
            PollMode::Spin => self.spin(driver, tasks),
            PollMode::Hybrid { budget } => match self.idle_since {
                Some(t) if t.elapsed() >= budget => {
                    self.idle_since = None;
                    let r = self.sleep(driver);
                    // A blocking park ran wakers and timers: no full poll needed right after.
                    self.full_poll = Instant::now();
                    r
                }
                _ => self.spin(driver, tasks),
            },
        }
    }

    fn sleep<D: Driver>(&mut self, driver: &D) -> io::Result<()> {
        self.idle_poll = None;
        self.sleeps += 1;
        if let Some(c) = &self.counters {
            c.sleeps.store(self.sleeps, Ordering::Relaxed);
        }
        driver.park()
    }

    fn spin<D: Driver>(&mut self, driver: &D, tasks: &TaskQueue) -> io::Result<()> {
        let start = Instant::now();
        let r = if start.duration_since(self.full_poll) >= FULL_POLL_INTERVAL {
            self.full_poll = start;
            driver.park_timeout(Duration::ZERO)
        } else {
            driver.submit()
        };
        self.spins += 1;
        // Idle time is whole loop turns that found nothing, counted at the next poll's start:
        // once a poll no longer enters the kernel (io_uring, docs/decisions/0009), the loop's
        // own overhead is most of a turn, and the poll alone would undercount it.
        if let Some(t) = self.idle_poll.take() {
            self.idle_ns += start.duration_since(t).as_nanos() as u64;
        }
        if tasks.is_empty() {
            self.idle_poll = Some(start);
            self.idle_since.get_or_insert(start);
        } else {
            self.idle_since = None;
        }
        if let Some(c) = &self.counters {
            c.idle_spin_ns.store(self.idle_ns, Ordering::Relaxed);
            c.spins.store(self.spins, Ordering::Relaxed);
        }
        r
    }
}
