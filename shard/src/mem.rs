//! In-memory byte streams for driving connection code without sockets (the fuzz targets of
//! `dataplane/fuzz`): [`pair`] gives two connected ends, each readable and writable through
//! monoio's owned-buffer traits and splittable like a `TcpStream`. Each direction holds at most
//! `capacity` bytes: a writer to a full direction waits until the other end reads, so
//! backpressure behaves as on a socket. Dropping an end (or `shutdown`) is the other end's EOF;
//! writing towards a dropped end fails with `BrokenPipe`. Single-threaded: everything lives on
//! one runtime.
//!
//! The test side can also use the non-async [`MemStream::try_read`] / [`MemStream::try_write`]
//! between two turns of the runtime.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::BufResult;

thread_local! {
    /// Bytes moved through any pair of this thread (see [`activity`]).
    static ACTIVITY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Bytes written or read so far through every pair of this thread, and ends closed: a driver
/// turning the runtime until nothing moves any more compares two readings.
pub fn activity() -> u64 {
    ACTIVITY.with(|a| a.get())
}

fn moved(n: usize) {
    ACTIVITY.with(|a| a.set(a.get() + n as u64 + 1));
}

/// One direction of a pair.
struct Pipe {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// The writing end shut down or was dropped: EOF once `bytes` is drained.
    write_closed: bool,
    /// The reading end was dropped: writes fail.
    read_closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Pipe {
    fn new(capacity: usize) -> Rc<RefCell<Pipe>> {
        Rc::new(RefCell::new(Pipe {
            bytes: VecDeque::new(),
            capacity: capacity.max(1),
            write_closed: false,
            read_closed: false,
            reader: None,
            writer: None,
        }))
    }

    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// One end of an in-memory connection.
pub struct MemStream {
    rx: Rc<RefCell<Pipe>>,
    tx: Rc<RefCell<Pipe>>,
}

/// Two connected ends; each direction buffers at most `capacity` bytes.
pub fn pair(capacity: usize) -> (MemStream, MemStream) {
    let (a, b) = (Pipe::new(capacity), Pipe::new(capacity));
    (
        MemStream {
            rx: a.clone(),
            tx: b.clone(),
        },
        MemStream { rx: b, tx: a },
    )
}

// SAFETY (monoio's `Split`): the read half touches only `rx` and the write half only `tx`, each
// inside one poll (no borrow is held across an await), so using the halves from two tasks of
// one thread is sound.
unsafe impl Split for MemStream {}

impl MemStream {
    /// Copies what is buffered towards this end (up to `dst.len()` bytes); `Ok(0)` with a
    /// non-empty `dst` means EOF.
    fn poll_read(&self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut p = self.rx.borrow_mut();
        if dst.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if p.bytes.is_empty() {
            if p.write_closed {
                return Poll::Ready(Ok(0));
            }
            p.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = dst.len().min(p.bytes.len());
        for (d, s) in dst.iter_mut().zip(p.bytes.drain(..n)) {
            *d = s;
        }
        moved(n);
        p.wake_writer();
        Poll::Ready(Ok(n))
    }

    fn poll_write(&self, cx: &mut Context<'_>, src: &[u8]) -> Poll<io::Result<usize>> {
        let mut p = self.tx.borrow_mut();
        if p.read_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if p.write_closed {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        }
        if src.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = p.capacity.saturating_sub(p.bytes.len());
        if room == 0 {
            p.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(src.len());
        p.bytes.extend(&src[..n]);
        moved(n);
        p.wake_reader();
        Poll::Ready(Ok(n))
    }

    /// Reads what is buffered towards this end into `out` without waiting; `None` at EOF
    /// (the other end shut down or is gone, and everything was read).
    pub fn try_read(&self, out: &mut Vec<u8>) -> Option<usize> {
        let mut p = self.rx.borrow_mut();
        if p.bytes.is_empty() && p.write_closed {
            return None;
        }
        let n = p.bytes.len();
        out.extend(p.bytes.drain(..));
        if n > 0 {
            moved(n);
            p.wake_writer();
        }
        Some(n)
    }

    /// Writes as much of `src` as fits without waiting; `Err` when the other end is gone or
    /// this end shut down.
    pub fn try_write(&self, src: &[u8]) -> io::Result<usize> {
        let mut p = self.tx.borrow_mut();
        if p.read_closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if p.write_closed {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let n = p.capacity.saturating_sub(p.bytes.len()).min(src.len());
        p.bytes.extend(&src[..n]);
        moved(n);
        if n > 0 {
            p.wake_reader();
        }
        Ok(n)
    }

    /// Bytes written by this end that the other end has not read yet.
    pub fn unread(&self) -> usize {
        self.tx.borrow().bytes.len()
    }

    /// Half-closes: the other end reads EOF after what is buffered.
    pub fn close_write(&self) {
        let mut p = self.tx.borrow_mut();
        if !p.write_closed {
            moved(0);
        }
        p.write_closed = true;
        p.wake_reader();
    }
}

impl Drop for MemStream {
    fn drop(&mut self) {
        self.close_write();
        let mut p = self.rx.borrow_mut();
        p.read_closed = true;
        p.bytes.clear();
        p.wake_writer();
    }
}

impl AsyncReadRent for MemStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let cap = buf.bytes_total();
        // SAFETY: write_ptr is valid for bytes_total bytes while we own buf; bytes before
        // set_init are written by poll_read only.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), cap) };
        let r = poll_fn(|cx| self.poll_read(cx, dst)).await;
        if let Ok(n) = r {
            // SAFETY: n bytes were written at the start of the buffer.
            unsafe { buf.set_init(n) };
        }
        (r, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Short reads are allowed: fill the first non-empty iovec.
        let (ptr, n) = (buf.write_iovec_ptr(), buf.write_iovec_len());
        // SAFETY: the iovec array is valid for n entries while we own buf.
        let iovs = unsafe { std::slice::from_raw_parts(ptr, n) };
        let Some(iov) = iovs.iter().find(|v| v.iov_len > 0) else {
            return (Ok(0), buf);
        };
        // SAFETY: each iovec describes writable memory owned by buf.
        let dst = unsafe { std::slice::from_raw_parts_mut(iov.iov_base as *mut u8, iov.iov_len) };
        let r = poll_fn(|cx| self.poll_read(cx, dst)).await;
        if let Ok(n) = r {
            // SAFETY: n bytes were written at the start of the buffer.
            unsafe { buf.set_init(n) };
        }
        (r, buf)
    }
}

impl AsyncWriteRent for MemStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: read_ptr is valid for bytes_init bytes while we own buf.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let r = poll_fn(|cx| self.poll_write(cx, src)).await;
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (ptr, n) = (buf.read_iovec_ptr(), buf.read_iovec_len());
        // SAFETY: the iovec array is valid for n entries while we own buf.
        let iovs = unsafe { std::slice::from_raw_parts(ptr, n) };
        let Some(iov) = iovs.iter().find(|v| v.iov_len > 0) else {
            return (Ok(0), buf);
        };
        // SAFETY: each iovec describes readable memory owned by buf.
        let src = unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
        let r = poll_fn(|cx| self.poll_write(cx, src)).await;
        (r, buf)
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }

    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
        self.close_write();
        std::future::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::io::{AsyncWriteRentExt, Splitable};

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn bytes_flow_with_backpressure_and_eof() {
        rt().block_on(async {
            let (a, b) = pair(4);
            let (mut ar, mut aw) = a.into_split();
            let writer = monoio::spawn(async move {
                let (r, _) = aw.write_all(b"hello world".to_vec()).await;
                r.expect("write");
                aw.shutdown().await.expect("shutdown");
            });
            // b reads between turns of the runtime: never more than 4 bytes queued.
            let mut out = Vec::new();
            while out.len() < 11 {
                assert!(b.try_read(&mut out).is_some());
                assert!(b.unread() == 0 && out.len() <= 11);
                monoio::time::sleep(std::time::Duration::ZERO).await;
                let queued = a_queued(&b);
                assert!(queued <= 4, "{queued} bytes queued");
            }
            writer.await;
            assert_eq!(out, b"hello world");
            assert_eq!(b.try_read(&mut out), None, "EOF after shutdown");
            drop(b);
            let (r, _) = ar.read(vec![0u8; 8]).await;
            assert_eq!(r.expect("read"), 0, "the dropped end reads as EOF");
        });
    }

    /// Bytes queued towards `b`.
    fn a_queued(b: &MemStream) -> usize {
        b.rx.borrow().bytes.len()
    }

    #[test]
    fn writing_to_a_dropped_end_fails() {
        rt().block_on(async {
            let (mut a, b) = pair(16);
            drop(b);
            let (r, _) = a.write(b"x".to_vec()).await;
            assert_eq!(r.expect_err("peer gone").kind(), io::ErrorKind::BrokenPipe);
        });
    }
}
