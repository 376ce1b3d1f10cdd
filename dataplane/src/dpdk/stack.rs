//! A shard's user-space TCP/IP stack on its DPDK queue pair: smoltcp (ARP, IPv4, TCP) driven by
//! a poll task in the shard's monoio loop (rx burst → smoltcp → tx burst, then
//! `wake_after_park`: the loop keeps running timers and kernel I/O between two polls and never
//! blocks while the stack is up). Streams implement monoio's `AsyncReadRent`/`AsyncWriteRent`
//! with smoltcp's socket wakers, so the Dubbo filter runs on them unchanged.
//!
//! Everything is shard-local (`Rc`, `RefCell`): no locks. Limits: `dpdk.sockets_per_shard`
//! sockets (listening backlog, accepted, upstream), `dpdk.tcp_{rx,tx}_buffer_bytes` per socket.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use shard::monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use shard::monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use shard::monoio::BufResult;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use super::eal::{Eal, Mbuf, Queue};

/// Listening sockets kept per listener: connections that can be in their handshake at once
/// (smoltcp has no accept queue; each listening socket becomes the connection it accepts).
pub const LISTEN_BACKLOG: usize = 16;
/// A closed stream's socket still finishing its close (FIN_WAIT, LAST_ACK, ...) is aborted after
/// this long (smoltcp has no FIN_WAIT_2 timeout of its own).
pub const ORPHAN_LINGER: std::time::Duration = std::time::Duration::from_secs(60);
/// Polls between two scans of the orphans when nothing changed.
const ORPHAN_SCAN_POLLS: u64 = 4096;

thread_local! {
    static CURRENT: RefCell<Option<Rc<Stack>>> = const { RefCell::new(None) };
}

/// This shard's stack, when it has one.
pub fn current() -> Option<Rc<Stack>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// The smoltcp device over a queue pair.
struct Port {
    q: Queue,
    mtu: usize,
    /// Scratch for the rare multi-segment packet.
    scratch: Vec<u8>,
}

struct RxTok(Mbuf, *mut Vec<u8>);
struct TxTok<'a>(&'a mut Queue);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        if self.0.segments() == 1 {
            return f(self.0.data());
        }
        // SAFETY: the pointer is the Port's scratch buffer, which outlives the token (both come
        // from one `receive` on the Port, and smoltcp consumes the token before its next call).
        let scratch = unsafe { &mut *self.1 };
        match self.0.copy_to(scratch) {
            Some(n) => f(&scratch[..n]),
            None => f(&[]),
        }
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut out = None;
        let mut f = Some(f);
        let sent = self.0.send_with(len, |b| out = f.take().map(|f| f(b)));
        match (sent, out) {
            (true, Some(r)) => r,
            // No mbuf: run `f` on a scratch buffer so smoltcp's state advances as if the packet
            // had been lost on the wire (TCP retransmits it).
            _ => {
                let mut tmp = vec![0u8; len];
                // Invariant: `send_with` runs its closure exactly when it returns true, so on
                // this branch `f` was not taken.
                (f.take().expect("send_with did not run the closure"))(&mut tmp)
            }
        }
    }
}

impl Device for Port {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _t: SmolInstant) -> Option<(RxTok, TxTok<'_>)> {
        let m = self.q.recv()?;
        let scratch: *mut Vec<u8> = &mut self.scratch;
        Some((RxTok(m, scratch), TxTok(&mut self.q)))
    }

    fn transmit(&mut self, _t: SmolInstant) -> Option<TxTok<'_>> {
        Some(TxTok(&mut self.q))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        c.max_burst_size = None;
        c
    }
}

struct Inner {
    iface: Interface,
    sockets: SocketSet<'static>,
    port: Port,
    /// Sockets whose stream was dropped, and since when: removed once closed, aborted after
    /// [`ORPHAN_LINGER`].
    orphans: Vec<(SocketHandle, std::time::Instant)>,
    /// Tasks waiting in `accept`, woken after every poll that changed socket state.
    accept_wakers: Vec<Waker>,
    /// Local ports of this shard's upstream connections (its queue's share: how a packet of
    /// one that RSS puts on another queue is steered back here) and the next one to use.
    source_ports: std::ops::RangeInclusive<u16>,
    next_port: u16,
    live: usize,
    polls: u64,
}

impl Inner {
    /// The next source port of this shard's range that no listener uses (when listeners hold
    /// every port of the range, which would take thousands of them, the next port anyway).
    fn take_source_port(&mut self, eal: &Eal) -> u16 {
        let (first, last) = (*self.source_ports.start(), *self.source_ports.end());
        let mut p = self.next_port;
        for _ in first..=last {
            if !eal.is_listening(p) {
                break;
            }
            p = if p >= last { first } else { p + 1 };
        }
        self.next_port = if p >= last { first } else { p + 1 };
        p
    }
}

/// One shard's TCP/IP stack.
pub struct Stack {
    inner: RefCell<Inner>,
    pub address: Ipv4Addr,
    cfg: config::Dpdk,
    eal: &'static Eal,
}

fn now() -> SmolInstant {
    SmolInstant::now()
}

impl Stack {
    /// Builds this shard's stack on its queue pair and starts its poll task. `None` when the
    /// shard has no queue (`dpdk.queues`). Call on the shard's thread, inside its runtime.
    pub fn start(eal: &'static Eal, shard: usize) -> Option<Rc<Stack>> {
        let q = eal.queue(shard)?;
        let cfg = &eal.cfg;
        let mut port = Port {
            q,
            mtu: cfg.mtu as usize,
            scratch: vec![0; cfg.mtu as usize + 14],
        };
        let mut ic = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(eal.mac)));
        ic.random_seed = seed(shard);
        let mut iface = Interface::new(ic, &mut port, now());
        iface.update_ip_addrs(|a| {
            // Capacity is IFACE_MAX_ADDR_COUNT (>= 1): the first push cannot fail.
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.address), cfg.prefix_len));
        });
        if let Some(g) = cfg.gateway {
            if let Err(e) = iface.routes_mut().add_default_ipv4_route(g) {
                tracing::warn!(gateway = %g, error = ?e, "cannot add the default route");
            }
        }
        let source_ports = cfg.source_ports(shard as u16);
        let stack = Rc::new(Stack {
            inner: RefCell::new(Inner {
                iface,
                sockets: SocketSet::new(Vec::new()),
                port,
                orphans: Vec::new(),
                accept_wakers: Vec::new(),
                next_port: *source_ports.start(),
                source_ports,
                live: 0,
                polls: 0,
            }),
            address: cfg.address,
            cfg: cfg.clone(),
            eal,
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(stack.clone()));
        shard::monoio::spawn(poll_loop(stack.clone()));
        tracing::info!(shard, address = %cfg.address, "DPDK stack up");
        Some(stack)
    }

    /// One round: packets in, smoltcp, packets out, closed orphans reaped. True when a socket's
    /// state may have changed.
    pub fn poll_once(&self) -> bool {
        let mut g = self.inner.borrow_mut();
        let inner = &mut *g;
        let changed = matches!(
            inner.iface.poll(now(), &mut inner.port, &mut inner.sockets),
            smoltcp::iface::PollResult::SocketStateChanged
        );
        inner.port.q.flush();
        inner.polls = inner.polls.wrapping_add(1);
        if changed {
            for w in inner.accept_wakers.drain(..) {
                w.wake();
            }
        }
        // Orphans: after state changes, and now and then for those waiting on ORPHAN_LINGER.
        if changed || (!inner.orphans.is_empty() && inner.polls.is_multiple_of(ORPHAN_SCAN_POLLS)) {
            let mut i = 0;
            while i < inner.orphans.len() {
                let (h, since) = inner.orphans[i];
                let s = inner.sockets.get_mut::<tcp::Socket>(h);
                if since.elapsed() >= ORPHAN_LINGER {
                    s.abort();
                }
                if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
                    inner.sockets.remove(h);
                    inner.live -= 1;
                    inner.orphans.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
        changed
    }

    /// Packet counters of this shard's queue pair.
    pub fn queue_stats(&self) -> super::eal::QueueStats {
        self.inner.borrow().port.q.stats
    }

    fn new_socket(&self, inner: &mut Inner) -> io::Result<SocketHandle> {
        if inner.live >= self.cfg.sockets_per_shard as usize {
            return Err(io::Error::other(format!(
                "DPDK stack: {} sockets in use on this shard (dpdk.sockets_per_shard)",
                inner.live
            )));
        }
        let rx = tcp::SocketBuffer::new(vec![0; self.cfg.tcp_rx_buffer_bytes as usize]);
        let tx = tcp::SocketBuffer::new(vec![0; self.cfg.tcp_tx_buffer_bytes as usize]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        inner.live += 1;
        Ok(inner.sockets.add(s))
    }

    /// Listens on `port` of the stack's address.
    pub fn listen(self: &Rc<Self>, port: u16) -> io::Result<DpdkListener> {
        self.eal.mark_listening(port);
        let mut backlog = Vec::with_capacity(LISTEN_BACKLOG);
        for _ in 0..LISTEN_BACKLOG {
            backlog.push(self.listening_socket(port)?);
        }
        Ok(DpdkListener {
            stack: self.clone(),
            port,
            backlog,
        })
    }

    fn listening_socket(&self, port: u16) -> io::Result<SocketHandle> {
        let mut g = self.inner.borrow_mut();
        let h = self.new_socket(&mut g)?;
        g.sockets
            .get_mut::<tcp::Socket>(h)
            .listen(port)
            .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, format!("listen {port}: {e}")))?;
        Ok(h)
    }

    /// Opens a TCP connection to `addr` (IPv4) from the stack's address.
    pub fn connect(
        self: &Rc<Self>,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<DpdkStream>> {
        let this = self.clone();
        async move {
            let SocketAddr::V4(v4) = addr else {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the DPDK stack is IPv4 only",
                ));
            };
            let stream = {
                let mut g = this.inner.borrow_mut();
                let inner = &mut *g;
                let h = this.new_socket(inner)?;
                let local = inner.take_source_port(this.eal);
                let stream = DpdkStream {
                    stack: this.clone(),
                    h,
                };
                let remote = IpEndpoint::new(IpAddress::Ipv4(*v4.ip()), v4.port());
                let cx = inner.iface.context();
                inner
                    .sockets
                    .get_mut::<tcp::Socket>(h)
                    .connect(cx, remote, local)
                    .map_err(|e| io::Error::other(format!("connect {addr}: {e}")))?;
                stream
            };
            poll_fn(|cx| {
                let mut g = this.inner.borrow_mut();
                let s = g.sockets.get_mut::<tcp::Socket>(stream.h);
                match s.state() {
                    tcp::State::Established | tcp::State::CloseWait => Poll::Ready(Ok(())),
                    tcp::State::Closed | tcp::State::TimeWait => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("connect {addr}: refused"),
                    ))),
                    _ => {
                        s.register_send_waker(cx.waker());
                        Poll::Pending
                    }
                }
            })
            .await?;
            Ok(stream)
        }
    }
}

fn seed(shard: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ ((shard as u64) << 48) ^ u64::from(std::process::id())
}

/// The shard's poll task: runs for the life of the shard.
async fn poll_loop(stack: Rc<Stack>) {
    poll_fn(|cx: &mut Context<'_>| {
        stack.poll_once();
        shard::monoio::poll_mode::wake_after_park(cx.waker());
        Poll::<()>::Pending
    })
    .await
}

/// Listening sockets on one port of a shard's stack.
pub struct DpdkListener {
    stack: Rc<Stack>,
    port: u16,
    backlog: Vec<SocketHandle>,
}

impl DpdkListener {
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.stack.address, self.port))
    }

    /// The next established connection.
    pub async fn accept(&mut self) -> io::Result<(DpdkStream, SocketAddr)> {
        let (i, peer) = poll_fn(|cx| {
            let mut g = self.stack.inner.borrow_mut();
            for (i, &h) in self.backlog.iter().enumerate() {
                let s = g.sockets.get::<tcp::Socket>(h);
                match s.state() {
                    tcp::State::Listen | tcp::State::SynReceived => {}
                    _ => {
                        let peer = s
                            .remote_endpoint()
                            .map(|e| match e.addr {
                                IpAddress::Ipv4(a) => SocketAddr::from((a, e.port)),
                            })
                            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                        return Poll::Ready((i, peer));
                    }
                }
            }
            g.accept_wakers.push(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let h = self.backlog[i];
        let stream = DpdkStream {
            stack: self.stack.clone(),
            h,
        };
        // Re-arm the slot; at the socket limit the backlog shrinks until sockets close.
        match self.stack.listening_socket(self.port) {
            Ok(n) => self.backlog[i] = n,
            Err(e) => {
                tracing::warn!(port = self.port, error = %e, "DPDK listener backlog shrinks");
                self.backlog.swap_remove(i);
            }
        }
        Ok((stream, peer))
    }
}

impl Drop for DpdkListener {
    fn drop(&mut self) {
        let mut g = self.stack.inner.borrow_mut();
        for h in self.backlog.drain(..) {
            g.sockets.remove(h);
            g.live -= 1;
        }
    }
}

/// A TCP connection on a shard's DPDK stack.
pub struct DpdkStream {
    stack: Rc<Stack>,
    h: SocketHandle,
}

// SAFETY (monoio's `Split`): the read and write halves each borrow the stack only inside one
// poll (never across an await), so using them from two tasks of the shard is sound.
unsafe impl Split for DpdkStream {}

impl DpdkStream {
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        let g = self.stack.inner.borrow();
        g.sockets
            .get::<tcp::Socket>(self.h)
            .remote_endpoint()
            .map(|e| match e.addr {
                IpAddress::Ipv4(a) => SocketAddr::from((a, e.port)),
            })
    }

    /// Reads into `dst`: bytes read, 0 at EOF.
    fn poll_read(&self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut g = self.stack.inner.borrow_mut();
        let s = g.sockets.get_mut::<tcp::Socket>(self.h);
        if s.can_recv() {
            return Poll::Ready(
                s.recv_slice(dst)
                    .map_err(|e| io::Error::other(format!("recv: {e}"))),
            );
        }
        if !s.may_recv() {
            // The peer's FIN, or the connection is gone (reset, aborted).
            return Poll::Ready(Ok(0));
        }
        s.register_recv_waker(cx.waker());
        Poll::Pending
    }

    /// Writes from `src`: bytes taken into the socket's send buffer.
    fn poll_write(&self, cx: &mut Context<'_>, src: &[u8]) -> Poll<io::Result<usize>> {
        let mut g = self.stack.inner.borrow_mut();
        let s = g.sockets.get_mut::<tcp::Socket>(self.h);
        if !s.may_send() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if s.can_send() {
            return Poll::Ready(
                s.send_slice(src)
                    .map_err(|e| io::Error::other(format!("send: {e}"))),
            );
        }
        s.register_send_waker(cx.waker());
        Poll::Pending
    }
}

impl Drop for DpdkStream {
    fn drop(&mut self) {
        let mut g = self.stack.inner.borrow_mut();
        let s = g.sockets.get_mut::<tcp::Socket>(self.h);
        match s.state() {
            // Never established (a connect given up): nothing to say goodbye to.
            tcp::State::SynSent | tcp::State::SynReceived => s.abort(),
            _ => s.close(),
        }
        g.orphans.push((self.h, std::time::Instant::now()));
    }
}

impl AsyncReadRent for DpdkStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        {
            let cap = buf.bytes_total();
            // SAFETY: write_ptr is valid for bytes_total bytes; bytes before set_init are
            // written by recv_slice only.
            let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), cap) };
            let r = poll_fn(|cx| self.poll_read(cx, dst)).await;
            if let Ok(n) = r {
                // SAFETY: n bytes were written.
                unsafe { buf.set_init(n) };
            }
            (r, buf)
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        {
            // Short reads are allowed: fill the first non-empty iovec.
            let (ptr, n) = (buf.write_iovec_ptr(), buf.write_iovec_len());
            // SAFETY: the iovec array is valid for n entries while we own buf.
            let iovs = unsafe { std::slice::from_raw_parts(ptr, n) };
            let Some(iov) = iovs.iter().find(|v| v.iov_len > 0) else {
                return (Ok(0), buf);
            };
            // SAFETY: each iovec describes writable memory owned by buf.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(iov.iov_base as *mut u8, iov.iov_len) };
            let r = poll_fn(|cx| self.poll_read(cx, dst)).await;
            if let Ok(n) = r {
                // SAFETY: n bytes were written at the start of the buffer.
                unsafe { buf.set_init(n) };
            }
            (r, buf)
        }
    }
}

impl AsyncWriteRent for DpdkStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        {
            // SAFETY: read_ptr is valid for bytes_init bytes while we own buf.
            let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
            let r = poll_fn(|cx| self.poll_write(cx, src)).await;
            (r, buf)
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        {
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
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        // The poll task sends what the socket holds at its next round.
        std::future::ready(Ok(()))
    }

    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
        let mut g = self.stack.inner.borrow_mut();
        g.sockets.get_mut::<tcp::Socket>(self.h).close();
        std::future::ready(Ok(()))
    }
}
