//! A one-shot, shard-local event: set once, awaited by any number of tasks on the same shard
//! (used for "stop accepting" and "drain" signals). Not `Send`: it never leaves its shard.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Clone, Default)]
pub struct Event {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    set: Cell<bool>,
    /// One slot per waiting future (a future keeps its slot across polls, so a task that is
    /// polled often costs nothing extra); freed slots are reused.
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Event {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_set(&self) -> bool {
        self.inner.set.get()
    }

    pub fn set(&self) {
        if self.inner.set.replace(true) {
            return;
        }
        for w in self.inner.waiters.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Completes once the event is set.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            event: self,
            slot: None,
        }
    }
}

/// The future returned by [`Event::wait`].
pub struct Wait<'a> {
    event: &'a Event,
    slot: Option<usize>,
}

impl std::future::Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let inner = &self.event.inner;
        if inner.set.get() {
            return Poll::Ready(());
        }
        let mut waiters = inner.waiters.borrow_mut();
        match self.slot {
            Some(i) => match &mut waiters[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let i = match inner.free.borrow_mut().pop() {
                    Some(i) => {
                        waiters[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        waiters.push(Some(cx.waker().clone()));
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let inner = &self.event.inner;
            if let Some(w) = inner.waiters.borrow_mut().get_mut(i) {
                *w = None;
            }
            inner.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn waiters_keep_one_slot_each_and_all_wake() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let ev = Event::new();
            let done = Rc::new(Cell::new(0));
            for _ in 0..10 {
                let (ev, done) = (ev.clone(), done.clone());
                monoio::spawn(async move {
                    ev.wait().await;
                    done.set(done.get() + 1);
                });
            }
            // Let them all register, several times over.
            for _ in 0..5 {
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert!(ev.inner.waiters.borrow().len() <= 10);
            ev.set();
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            assert_eq!(done.get(), 10);
        });
    }

    #[test]
    fn dropped_waiters_free_their_slot() {
        let ev = Event::new();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for _ in 0..100 {
            let mut w = Box::pin(ev.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(ev.inner.waiters.borrow().len(), 1, "one slot, reused");
    }
}

/// A shard-local wake-up for one waiting task (a connection's writer waiting for frames, a
/// reader waiting for room). `notify` before `wait` is remembered, so no wake-up is lost.
#[derive(Default)]
pub struct Notify {
    pending: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Completes once `notify` has been called since the last completed `wait`.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.pending.replace(false) {
                return Poll::Ready(());
            }
            let mut w = self.waiter.borrow_mut();
            match w.as_ref() {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}
