//! A bounded, lock-free, multi-producer single-consumer queue into one shard.
//!
//! Producers are other threads (the control thread, other shards); the consumer is a task on the
//! shard. `try_send` never blocks: a full inbox is reported to the sender, who decides (the
//! control plane retries a snapshot later; nothing on the data path waits). Sending wakes the
//! shard's loop through the waker the receiving task registered, which monoio's `sync` feature
//! turns into an eventfd write when the shard is parked.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use crossbeam_queue::ArrayQueue;
use futures_util::task::AtomicWaker;

struct Shared<T> {
    queue: ArrayQueue<T>,
    waker: AtomicWaker,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
}

/// The sending side; clone it for each producer.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving side, owned by one task on the shard.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// Why a message was not queued; the message is handed back.
#[derive(Debug, thiserror::Error)]
pub enum SendError<T> {
    #[error("shard inbox full ({capacity} messages)")]
    Full { message: T, capacity: usize },
    #[error("shard has stopped")]
    Closed(T),
}

/// A queue holding at most `capacity` messages (`capacity >= 1`).
pub fn inbox<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(capacity.max(1)),
        waker: AtomicWaker::new(),
        senders: AtomicUsize::new(1),
        receiver_alive: AtomicBool::new(true),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

// === impl Sender ===

impl<T> Sender<T> {
    pub fn try_send(&self, message: T) -> Result<(), SendError<T>> {
        if !self.shared.receiver_alive.load(Ordering::Acquire) {
            return Err(SendError::Closed(message));
        }
        match self.shared.queue.push(message) {
            Ok(()) => {
                self.shared.waker.wake();
                Ok(())
            }
            Err(message) => Err(SendError::Full {
                message,
                capacity: self.shared.queue.capacity(),
            }),
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.waker.wake();
        }
    }
}

// === impl Receiver ===

impl<T> Receiver<T> {
    /// The next message, or `None` once every sender is gone and the queue is empty.
    pub async fn recv(&self) -> Option<T> {
        poll_fn(|cx| {
            if let Some(m) = self.shared.queue.pop() {
                return Poll::Ready(Some(m));
            }
            self.shared.waker.register(cx.waker());
            // Re-check after registering: a push between the first pop and the registration
            // would otherwise be missed until the next one.
            if let Some(m) = self.shared.queue.pop() {
                return Poll::Ready(Some(m));
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    pub fn try_recv(&self) -> Option<T> {
        self.shared.queue.pop()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_inbox_hands_the_message_back() {
        let (tx, _rx) = inbox::<u32>(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        match tx.try_send(3) {
            Err(SendError::Full {
                message: 3,
                capacity: 2,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn closed_when_receiver_dropped() {
        let (tx, rx) = inbox::<u32>(2);
        drop(rx);
        assert!(matches!(tx.try_send(1), Err(SendError::Closed(1))));
    }

    #[test]
    fn cross_thread_send_wakes_a_parked_shard() {
        let (tx, rx) = inbox::<u64>(64);
        let producer = std::thread::spawn(move || {
            for i in 0..10_000u64 {
                let mut m = i;
                loop {
                    match tx.try_send(m) {
                        Ok(()) => break,
                        Err(SendError::Full { message, .. }) => {
                            m = message;
                            std::thread::yield_now();
                        }
                        Err(SendError::Closed(_)) => panic!("closed"),
                    }
                }
            }
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        let sum = rt.block_on(async move {
            let mut sum = 0u64;
            let mut n = 0;
            while let Some(v) = rx.recv().await {
                assert_eq!(v, n, "messages arrive in order");
                sum += v;
                n += 1;
            }
            sum
        });
        producer.join().unwrap();
        assert_eq!(sum, (0..10_000u64).sum::<u64>());
    }
}
