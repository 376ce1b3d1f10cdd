//! One access-log file: the bounded queue shards hand batches to, and the writer thread that
//! writes them. Files are shared by path across listeners and config updates (one writer per
//! path); a file no snapshot names any more is closed once its last batch is written.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use super::line::Lines;
use super::{record, Format, FormatError, Part, BATCH_BYTES, QUEUED_BATCHES_MAX};

/// `path` values that mean the process's standard output and error.
const STDOUT: &str = "/dev/stdout";
const STDERR: &str = "/dev/stderr";
/// How long the writer sleeps when nothing arrives (it is woken by every batch).
const IDLE_PARK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("access log {path}: {error}")]
    Format { path: String, error: FormatError },
    #[error("access log {path}: filter: {error}")]
    Filter { path: String, error: String },
    #[error("access log {path}: cannot open: {error}")]
    Io { path: String, error: std::io::Error },
}

/// What a shard hands a writer: fixed-size records ([`record`]) and the formats they name.
#[derive(Default)]
pub struct Batch {
    pub records: record::Records,
    /// Each format the records name by index, with the headers it shows.
    pub formats: Vec<(Arc<Format>, HeaderNames)>,
}

/// The headers a format shows, in its order ([`Format::headers`]).
pub type HeaderNames = Arc<[(Part, String)]>;

impl Batch {
    /// The index of `format` in this batch's table (added when new).
    #[inline]
    pub(super) fn format_index(&mut self, format: &Arc<Format>, names: &HeaderNames) -> u16 {
        // Most batches name one format: the last one added is checked first, inline.
        if let Some((f, _)) = self.formats.last() {
            if Arc::ptr_eq(f, format) {
                return (self.formats.len() - 1) as u16;
            }
        }
        self.format_index_slow(format, names)
    }

    /// Counts Dubbo call `rec` as a repeat of the last record
    /// ([`record::Records::repeat_dubbo`]) when that record is of `format` (the last format
    /// this batch added).
    #[inline(always)]
    pub(super) fn repeat_dubbo(
        &mut self,
        format: &Arc<Format>,
        rec: &record::DubboRec,
        upstream_cluster: (Option<std::net::SocketAddr>, Option<&str>),
        shows: super::format::Shows,
    ) -> bool {
        match self.formats.last() {
            Some((f, _)) if Arc::ptr_eq(f, format) => {
                let i = (self.formats.len() - 1) as u16;
                self.records.repeat_dubbo(rec, upstream_cluster, i, shows)
            }
            _ => false,
        }
    }

    #[inline(never)]
    fn format_index_slow(&mut self, format: &Arc<Format>, names: &HeaderNames) -> u16 {
        if let Some(i) = self
            .formats
            .iter()
            .rposition(|(f, _)| Arc::ptr_eq(f, format))
        {
            return i as u16;
        }
        self.formats.push((format.clone(), names.clone()));
        (self.formats.len() - 1) as u16
    }
}

pub struct FileSink {
    path: String,
    queue: ArrayQueue<Batch>,
    /// Written batches, cleared, for shards to fill again (no allocation in steady state).
    spare: ArrayQueue<Batch>,
    writer: OnceLock<Thread>,
    reopen: AtomicBool,
    /// The writer holds a batch it has not finished writing.
    busy: AtomicBool,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.path)
            .finish()
    }
}

/// The open files by path. Locked only off the shards: by the control thread when a
/// snapshot opens its logs, on SIGUSR1 ([`reopen_all`]) and at exit ([`drain_all`]).
#[allow(clippy::disallowed_types)]
type Registry = std::sync::Mutex<HashMap<String, Weak<FileSink>>>;

/// Every open file by path (weak: the snapshots that name a file keep it open).
fn registry() -> &'static Registry {
    static FILES: OnceLock<Registry> = OnceLock::new();
    FILES.get_or_init(Default::default)
}

/// Waits (up to `timeout`) until every batch handed to a writer is written: the process is
/// exiting, after its shards flushed their batches.
pub fn drain_all(timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    let files: Vec<Arc<FileSink>> = {
        let files = registry().lock().unwrap_or_else(|e| e.into_inner());
        files.values().filter_map(Weak::upgrade).collect()
    };
    for f in files {
        while !f.queue.is_empty() || f.busy.load(Ordering::SeqCst) {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(path = %f.path, "access log: exiting with lines not yet written");
                break;
            }
            if let Some(t) = f.writer.get() {
                t.unpark();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Makes every writer reopen its file before its next write (SIGUSR1: the file was rotated).
pub fn reopen_all() {
    let files = registry().lock().unwrap_or_else(|e| e.into_inner());
    for f in files.values().filter_map(Weak::upgrade) {
        f.reopen.store(true, Ordering::Relaxed);
        if let Some(t) = f.writer.get() {
            t.unpark();
        }
    }
}

impl FileSink {
    /// The sink of `path`, shared with every other log naming it; opens the file (appending,
    /// created 0644) and starts its writer the first time.
    pub fn open(path: &str) -> Result<Arc<FileSink>, OpenError> {
        let mut files = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(path).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let out = Output::open(path).map_err(|error| OpenError::Io {
            path: path.to_string(),
            error,
        })?;
        let sink = Arc::new(FileSink {
            path: path.to_string(),
            queue: ArrayQueue::new(QUEUED_BATCHES_MAX),
            spare: ArrayQueue::new(QUEUED_BATCHES_MAX),
            writer: OnceLock::new(),
            reopen: AtomicBool::new(false),
            busy: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&sink);
        let thread = std::thread::Builder::new()
            .name("ringside-log".into())
            .spawn(move || {
                shard::pin_aux_thread();
                write_loop(weak, out)
            })
            .map_err(|error| OpenError::Io {
                path: path.to_string(),
                error,
            })?;
        let _ = sink.writer.set(thread.thread().clone());
        files.retain(|_, w| w.strong_count() > 0);
        files.insert(path.to_string(), Arc::downgrade(&sink));
        Ok(sink)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// An empty batch to fill (a written one when there is one).
    pub(super) fn spare_batch(&self) -> Batch {
        self.spare.pop().unwrap_or_else(|| Batch {
            // The record vectors grow to what the shard's calls need (a Dubbo listener's
            // batches hold compact records, a Triple one's fixed ones), then are reused.
            records: record::Records::with_capacity(0, BATCH_BYTES),
            formats: Vec::with_capacity(4),
        })
    }

    /// Queues a batch for the writer; false (the batch dropped) when the queue is full.
    pub(super) fn push(&self, batch: Batch) -> bool {
        let ok = self.queue.push(batch).is_ok();
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
        ok
    }
}

enum Output {
    Stdout,
    Stderr,
    File(File),
}

impl Output {
    fn open(path: &str) -> std::io::Result<Output> {
        if path == STDOUT {
            return Ok(Output::Stdout);
        }
        if path == STDERR {
            return Ok(Output::Stderr);
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Output::File)
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout => std::io::stdout().lock().write_all(b),
            Output::Stderr => std::io::stderr().lock().write_all(b),
            Output::File(f) => f.write_all(b),
        }
    }
}

/// The writer thread: formats the records of each batch and writes the lines, batches in the
/// order they were queued, until the sink is gone.
fn write_loop(sink: Weak<FileSink>, mut out: Output) {
    let mut failures = 0u64;
    let mut lines = Lines::with_capacity(BATCH_BYTES + BATCH_BYTES / 4);
    loop {
        let Some(s) = sink.upgrade() else { return };
        if s.reopen.swap(false, Ordering::Relaxed) {
            match Output::open(&s.path) {
                Ok(o) => out = o,
                Err(e) => {
                    tracing::warn!(path = %s.path, error = %e, "access log: reopen failed; writing to the old file")
                }
            }
        }
        let mut wrote = false;
        loop {
            s.busy.store(true, Ordering::SeqCst);
            let Some(mut batch) = s.queue.pop() else {
                s.busy.store(false, Ordering::SeqCst);
                break;
            };
            wrote = true;
            let mut write = |lines: &mut Lines| {
                if let Err(e) = out.write_all(lines.text()) {
                    failures += 1;
                    // Once, then every 1000th failure: a full disk must not flood the log.
                    if failures % 1000 == 1 {
                        tracing::warn!(path = %s.path, error = %e, failures, "access log: write failed; lines lost");
                    }
                }
                lines.clear();
            };
            lines.batch(&batch.formats);
            lines.lines(&batch.records, &batch.formats, BATCH_BYTES, &mut write);
            if !lines.text().is_empty() {
                write(&mut lines);
            }
            batch.records.clear();
            batch.formats.clear();
            if batch.records.capacity_bytes() <= 4 * BATCH_BYTES {
                let _ = s.spare.push(batch);
            }
            lines.shrink(BATCH_BYTES + BATCH_BYTES / 4);
        }
        drop(s);
        if !wrote {
            std::thread::park_timeout(IDLE_PARK);
        }
    }
}
