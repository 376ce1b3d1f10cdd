//! An append-only, lock-free arena: values are pushed once and never move or change, so any
//! thread can read any published entry without a lock. Storage grows in fixed chunks allocated
//! on first use; an index is `chunk * CHUNK_ENTRIES + offset`.
//!
//! Pushing claims an index with one `fetch_add` and publishes the value with a `OnceLock`;
//! readers that race a push see `None` for that index until it is published.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Entries per chunk.
pub const CHUNK_ENTRIES: usize = 4096;

/// One chunk: entries published once each.
type Chunk<T> = Box<[OnceLock<T>]>;

pub struct Arena<T> {
    chunks: Box<[OnceLock<Chunk<T>>]>,
    next: AtomicU32,
}

impl<T> Arena<T> {
    /// An arena for at most `capacity` entries (rounded up to whole chunks).
    pub fn new(capacity: usize) -> Self {
        let n = capacity.div_ceil(CHUNK_ENTRIES).max(1);
        Arena {
            chunks: (0..n).map(|_| OnceLock::new()).collect(),
            next: AtomicU32::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK_ENTRIES
    }

    /// Appends `value`; `None` when the arena is full.
    pub fn push(&self, value: T) -> Option<u32> {
        let id = self.next.fetch_add(1, Ordering::AcqRel);
        if id as usize >= self.capacity() {
            // Keep `next` from wrapping around after many failed pushes.
            self.next.store(self.capacity() as u32, Ordering::Release);
            return None;
        }
        let slot = self.slot(id)?;
        // The index is ours alone, so the slot is empty.
        let _ = slot.set(value);
        Some(id)
    }

    /// Appends all `values` at consecutive indices; returns the first. `None` when they do
    /// not fit (nothing is published then).
    pub fn push_many(&self, values: Vec<T>) -> Option<u32> {
        let n = u32::try_from(values.len()).ok()?;
        let first = self.next.fetch_add(n, Ordering::AcqRel);
        if first as usize + n as usize > self.capacity() {
            self.next.store(self.capacity() as u32, Ordering::Release);
            return None;
        }
        for (k, v) in values.into_iter().enumerate() {
            let _ = self.slot(first + k as u32)?.set(v);
        }
        Some(first)
    }

    fn slot(&self, id: u32) -> Option<&OnceLock<T>> {
        let (c, o) = (id as usize / CHUNK_ENTRIES, id as usize % CHUNK_ENTRIES);
        let chunk = self
            .chunks
            .get(c)?
            .get_or_init(|| (0..CHUNK_ENTRIES).map(|_| OnceLock::new()).collect());
        chunk.get(o)
    }

    pub fn get(&self, id: u32) -> Option<&T> {
        let (c, o) = (id as usize / CHUNK_ENTRIES, id as usize % CHUNK_ENTRIES);
        self.chunks.get(c)?.get()?.get(o)?.get()
    }

    /// Indices claimed so far (some may still be unpublished).
    pub fn len(&self) -> u32 {
        self.next
            .load(Ordering::Acquire)
            .min(self.capacity() as u32)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of chunk storage allocated (not counting what the entries own).
    pub fn chunk_bytes(&self) -> usize {
        self.chunks.iter().filter(|c| c.get().is_some()).count()
            * CHUNK_ENTRIES
            * std::mem::size_of::<OnceLock<T>>()
            + self.chunks.len() * std::mem::size_of::<OnceLock<Chunk<T>>>()
    }
}
