//! Starting shards: one OS thread per shard, pinned to one core of the process's affinity mask,
//! running a monoio runtime on io_uring or, when io_uring cannot be set up, on epoll.
//!
//! The backend is chosen once per shard at start-up and never changes. `IoMode::Auto` tries
//! io_uring and falls back to epoll when `io_uring_setup` fails (ENOSYS/EPERM under a container's
//! default seccomp profile, ENOMEM when the memlock limit is too small on older kernels); the
//! reason is logged and kept in [`ShardInfo`] so `/server_info` can show it.

use std::future::Future;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::inbox::{inbox, Receiver, Sender};

/// io_uring submission queue entries per shard (monoio's minimum is 256).
pub const URING_ENTRIES_DEFAULT: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring when it can be set up, else epoll.
    Auto,
    /// io_uring or fail to start.
    Uring,
    /// epoll, even where io_uring works.
    Epoll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    Epoll,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// What a shard turned out to be, reported once it is running.
#[derive(Clone, Debug)]
pub struct ShardInfo {
    pub id: usize,
    /// The core this shard is pinned to, or `None` when pinning was off or failed.
    pub core: Option<usize>,
    pub backend: Backend,
    /// Why io_uring was not used, when `IoMode::Auto` fell back to epoll.
    pub fallback_reason: Option<String>,
}

/// How many shards to start and how.
#[derive(Clone, Debug)]
pub struct Spec {
    pub shards: usize,
    pub io: IoMode,
    /// Pin each shard to one core of the affinity mask (round robin when there are more shards
    /// than cores).
    pub pin: bool,
    pub uring_entries: u32,
    /// Capacity of each shard's inbox (messages from the control thread and other shards).
    pub inbox_capacity: usize,
}

/// Handed to the closure that builds each shard's future, on the shard's own thread.
pub struct ShardCtx {
    pub info: ShardInfo,
}

pub struct ShardHandle<M> {
    pub info: ShardInfo,
    pub thread: JoinHandle<()>,
    /// The shard's inbox: the only way to reach it from another thread.
    pub inbox: Sender<M>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("shard {shard}: io_uring requested (--io uring) but unavailable: {source}")]
    UringUnavailable {
        shard: usize,
        source: std::io::Error,
    },
    #[error("shard {shard}: cannot build the epoll runtime: {source}")]
    Epoll {
        shard: usize,
        source: std::io::Error,
    },
    #[error("cannot spawn shard thread {shard}: {source}")]
    Spawn {
        shard: usize,
        source: std::io::Error,
    },
    #[error("shard {shard} died during start-up")]
    Died { shard: usize },
    #[error("shard {shard}: {message}")]
    Setup { shard: usize, message: String },
    #[error("shard count must be at least 1")]
    NoShards,
}

/// The cores this process may run on (its affinity mask), in order.
pub fn affinity_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// Starts `spec.shards` shards. `make` runs on each shard's thread, outside the runtime (so it
/// may do blocking set-up such as binding sockets, but not async I/O), and returns the future
/// the shard runs until it completes (the shard then exits), or a set-up error. Returns once every shard has its
/// runtime up, or the first start-up error (shards already started then finish on their own
/// when their future sees the process shut down).
pub fn start<M, F, Fut, E>(spec: &Spec, make: F) -> Result<Vec<ShardHandle<M>>, StartError>
where
    M: Send + 'static,
    F: Fn(ShardCtx, Receiver<M>) -> Result<Fut, E> + Send + Sync + 'static,
    E: std::fmt::Display,
    Fut: Future<Output = ()> + 'static,
{
    if spec.shards == 0 {
        return Err(StartError::NoShards);
    }
    let make = Arc::new(make);
    let cores = affinity_cores();
    let mut handles = Vec::with_capacity(spec.shards);
    for id in 0..spec.shards {
        let core = if spec.pin && !cores.is_empty() {
            Some(cores[id % cores.len()])
        } else {
            None
        };
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<ShardInfo, StartError>>(1);
        let (inbox_tx, inbox_rx) = inbox::<M>(spec.inbox_capacity);
        let make = make.clone();
        let io = spec.io;
        let entries = spec.uring_entries;
        let thread = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || run_shard(id, core, io, entries, ready_tx, inbox_rx, make))
            .map_err(|source| StartError::Spawn { shard: id, source })?;
        let info = match ready_rx.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StartError::Died { shard: id });
            }
        };
        handles.push(ShardHandle {
            info,
            thread,
            inbox: inbox_tx,
        });
    }
    Ok(handles)
}

fn run_shard<M, F, Fut, E>(
    id: usize,
    core: Option<usize>,
    io: IoMode,
    entries: u32,
    ready: mpsc::SyncSender<Result<ShardInfo, StartError>>,
    inbox: Receiver<M>,
    make: Arc<F>,
) where
    F: Fn(ShardCtx, Receiver<M>) -> Result<Fut, E>,
    E: std::fmt::Display,
    Fut: Future<Output = ()> + 'static,
{
    let pinned = core.filter(|&c| core_affinity::set_for_current(core_affinity::CoreId { id: c }));
    if core.is_some() && pinned.is_none() {
        tracing::warn!(shard = id, core = ?core, "could not pin shard to its core");
    }
    let info = |backend, fallback_reason| ShardInfo {
        id,
        core: pinned,
        backend,
        fallback_reason,
    };

    let mut fallback_reason = None;
    if io != IoMode::Epoll {
        match RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                let info = info(Backend::IoUring, None);
                tracing::info!(shard = id, core = ?pinned, backend = "io_uring", "shard started");
                if let Some(fut) = setup(&*make, info, inbox, &ready) {
                    rt.block_on(fut);
                }
                return;
            }
            Err(source) if io == IoMode::Uring => {
                let _ = ready.send(Err(StartError::UringUnavailable { shard: id, source }));
                return;
            }
            Err(e) => {
                tracing::warn!(shard = id, error = %e, "io_uring unavailable; falling back to epoll");
                fallback_reason = Some(format!("io_uring_setup failed: {e}"));
            }
        }
    }
    match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
        Ok(mut rt) => {
            let info = info(Backend::Epoll, fallback_reason);
            tracing::info!(shard = id, core = ?pinned, backend = "epoll", "shard started");
            if let Some(fut) = setup(&*make, info, inbox, &ready) {
                rt.block_on(fut);
            }
        }
        Err(source) => {
            let _ = ready.send(Err(StartError::Epoll { shard: id, source }));
        }
    }
}

/// Runs the caller's set-up for one shard and reports the outcome to `start`.
fn setup<M, F, Fut, E>(
    make: &F,
    info: ShardInfo,
    inbox: Receiver<M>,
    ready: &mpsc::SyncSender<Result<ShardInfo, StartError>>,
) -> Option<Fut>
where
    F: Fn(ShardCtx, Receiver<M>) -> Result<Fut, E>,
    E: std::fmt::Display,
{
    let shard = info.id;
    match make(ShardCtx { info: info.clone() }, inbox) {
        Ok(fut) => {
            let _ = ready.send(Ok(info));
            Some(fut)
        }
        Err(e) => {
            let _ = ready.send(Err(StartError::Setup {
                shard,
                message: e.to_string(),
            }));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn run_all(io: IoMode, shards: usize) -> Vec<ShardInfo> {
        let ran = Arc::new(AtomicUsize::new(0));
        let ran2 = ran.clone();
        let spec = Spec {
            shards,
            io,
            pin: true,
            uring_entries: URING_ENTRIES_DEFAULT,
            inbox_capacity: 4,
        };
        let handles = start(&spec, move |ctx, _rx: Receiver<()>| {
            let ran = ran2.clone();
            Ok::<_, String>(async move {
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                assert!(ctx.info.id < shards);
                ran.fetch_add(1, Ordering::SeqCst);
            })
        })
        .unwrap();
        let infos: Vec<_> = handles.iter().map(|h| h.info.clone()).collect();
        for h in handles {
            h.thread.join().unwrap();
        }
        assert_eq!(ran.load(Ordering::SeqCst), shards);
        infos
    }

    #[test]
    fn epoll_shards_run_with_timers() {
        let infos = run_all(IoMode::Epoll, 2);
        assert!(infos.iter().all(|i| i.backend == Backend::Epoll));
        assert_eq!(infos[1].id, 1);
    }

    #[test]
    fn auto_reports_a_backend() {
        let infos = run_all(IoMode::Auto, 1);
        // On a host with io_uring this is IoUring; where it is blocked, the reason is kept.
        let i = &infos[0];
        assert!(i.backend == Backend::IoUring || i.fallback_reason.is_some());
    }

    #[test]
    fn zero_shards_is_an_error() {
        let spec = Spec {
            shards: 0,
            io: IoMode::Auto,
            pin: false,
            uring_entries: URING_ENTRIES_DEFAULT,
            inbox_capacity: 4,
        };
        assert!(matches!(
            start(&spec, |_, _: Receiver<()>| Ok::<_, String>(async {})),
            Err(StartError::NoShards)
        ));
    }
}
