//! The shard runtime: one thread per core, each pinned to its core, each running its own event
//! loop (io_uring by default, epoll where io_uring is unavailable), its own timers and its own
//! state. Shards share nothing on the data path; the control thread talks to a shard only through
//! its bounded, lock-free [`inbox`], which wakes the shard's loop.
//!
//! This crate knows nothing of protocols, routes or config formats: `dataplane` hands it a
//! closure that builds each shard's top-level future on the shard's own thread.
//!
//! The runtime underneath is monoio; why, with the measured figures, is in
//! `docs/decisions/0001-runtime.md`.

pub mod event;
pub mod inbox;
pub mod mem;
mod runtime;
pub mod sockopt;

pub use event::{Event, Notify};
pub use inbox::{inbox, Receiver, SendError, Sender};
pub use runtime::{
    affinity_cores, force_sleep, pin_aux_thread, set_aux_cpus, start, AuxCpusError, Backend,
    IoMode, PollMode, PollStats, ShardCtx, ShardHandle, ShardInfo, Spec, StartError,
    SPIN_BUDGET_DEFAULT, URING_ENTRIES_DEFAULT,
};

/// Re-exported so that `dataplane` uses the same runtime version as the shards it runs on.
pub use monoio;

/// Returns freed heap memory to the OS (glibc `malloc_trim`), e.g. after parsing a large
/// config, so that start-up garbage does not stay in the resident set.
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers
    // from us and is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Waits until `fd` is readable (for a listening socket: a connection is pending) or `timeout`
/// passes; `Ok(true)` when readable. For blocking control-plane loops (admin, hot upgrade)
/// that must also notice a stop flag.
pub fn wait_readable(
    fd: std::os::fd::BorrowedFd<'_>,
    timeout: std::time::Duration,
) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd, borrowed for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    match n {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}
