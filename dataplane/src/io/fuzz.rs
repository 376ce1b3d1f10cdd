//! (feature `fuzz`) The upstream connect seam of the fuzz targets: while a script runs on this
//! thread ([`Upstreams::install`]), the upstream pools' connects (`filter::dubbo::upstream`,
//! `filter::triple::conn`) are answered by the script with in-memory streams instead of
//! sockets: accepted, refused, or left pending. Off in every build of ringside itself.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

use shard::mem::MemStream;

/// Bytes each direction of an in-memory connection buffers (a socket's buffer).
pub const PIPE_BYTES: usize = 64 * 1024;

thread_local! {
    static UPSTREAMS: RefCell<Option<Rc<Upstreams>>> = const { RefCell::new(None) };
}

/// Upstream connect attempts of this thread's pools, answered by the script.
#[derive(Default)]
pub struct Upstreams {
    connecting: RefCell<VecDeque<Rc<Connecting>>>,
    refuse_all: Cell<bool>,
}

struct Connecting {
    addr: SocketAddr,
    outcome: RefCell<Option<io::Result<MemStream>>>,
    waker: RefCell<Option<Waker>>,
}

impl Connecting {
    fn answer(&self, r: io::Result<MemStream>) {
        *self.outcome.borrow_mut() = Some(r);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

impl Upstreams {
    /// Takes over this thread's upstream connects until [`Upstreams::uninstall`].
    pub fn install() -> Rc<Upstreams> {
        let u = Rc::new(Upstreams::default());
        UPSTREAMS.with(|s| *s.borrow_mut() = Some(u.clone()));
        u
    }

    pub fn uninstall() {
        UPSTREAMS.with(|s| s.borrow_mut().take());
    }

    /// The next attempt still waited for (one given up on, by a connect timeout or its
    /// connection closing, is dropped on the way).
    fn next(&self, i: usize) -> Option<Rc<Connecting>> {
        let mut q = self.connecting.borrow_mut();
        q.retain(|c| Rc::strong_count(c) > 1);
        if q.is_empty() {
            return None;
        }
        let i = i % q.len();
        q.remove(i)
    }

    /// Completes a waiting connect attempt: the provider's end of the new connection.
    pub fn accept(&self, i: usize) -> Option<(SocketAddr, MemStream)> {
        let c = self.next(i)?;
        let (client, server) = shard::mem::pair(PIPE_BYTES);
        c.answer(Ok(client));
        Some((c.addr, server))
    }

    /// Fails a waiting connect attempt (connection refused).
    pub fn refuse(&self, i: usize) -> bool {
        match self.next(i) {
            Some(c) => {
                c.answer(Err(io::ErrorKind::ConnectionRefused.into()));
                true
            }
            None => false,
        }
    }

    /// Refuses every waiting attempt and every later one.
    pub fn refuse_all(&self) {
        self.refuse_all.set(true);
        while self.refuse(0) {}
    }

    pub fn waiting(&self) -> usize {
        self.connecting
            .borrow()
            .iter()
            .filter(|c| Rc::strong_count(c) > 1)
            .count()
    }
}

/// The upstream pools' connect, when a script runs on this thread.
pub fn connect(addr: SocketAddr) -> Option<impl Future<Output = io::Result<MemStream>> + 'static> {
    let ups = UPSTREAMS.with(|s| s.borrow().clone())?;
    let c = Rc::new(Connecting {
        addr,
        outcome: RefCell::new(None),
        waker: RefCell::new(None),
    });
    if ups.refuse_all.get() {
        c.answer(Err(io::ErrorKind::ConnectionRefused.into()));
    } else {
        ups.connecting.borrow_mut().push_back(c.clone());
    }
    Some(std::future::poll_fn(move |cx| {
        match c.outcome.borrow_mut().take() {
            Some(r) => Poll::Ready(r),
            None => {
                *c.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }))
}
