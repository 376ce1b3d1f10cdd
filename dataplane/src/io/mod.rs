//! Small I/O helpers shared by the filters, over monoio's owned-buffer traits, and the two
//! traits that let the Dubbo filter run on the kernel or on the DPDK path ([`Conn`], [`Accept`]);
//! the listening socket of a shard ([`bind_reuseport`]) and the interception socket options
//! (`intercept`).

#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod intercept;
pub mod peer_exchange;
pub mod tls;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use shard::monoio::buf::IoBufMut;
use shard::monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use shard::monoio::net::{TcpListener, TcpStream};

/// A connection's read buffer starts this large and grows by this much when a read fills it.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Frames at least this large are written on their own instead of being copied into a batch.
pub const WRITE_COPY_BYTES_MAX: usize = 16 * 1024;
/// A batch of small frames is flushed when it reaches this size. A connection's batch buffer
/// starts empty and grows, the first times its batches need more, to what they need (never
/// shrunk: no allocation in the steady state), so an idle connection does not hold a 64 KiB
/// buffer it never fills (docs/security.md, "Memory per connection").
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Reads into the spare capacity of `buf`, after the bytes it already holds (monoio's own
/// `BytesMut` read writes from the start of the buffer). The caller reserves room first: with
/// no spare capacity the read returns 0, which reads as EOF.
pub async fn read_append<R: AsyncReadRent>(
    r: &mut R,
    buf: BytesMut,
) -> (std::io::Result<usize>, BytesMut) {
    debug_assert!(buf.capacity() > buf.len(), "reserve before reading");
    let start = buf.len();
    let (res, slice) = r.read(buf.slice_mut(start..)).await;
    (res, slice.into_inner())
}

/// Writes every frame queued in `out`: small ones copied into one batch per write, large ones
/// on their own (no copy). `taken` sees each frame once the writer no longer holds it (for the
/// owner's byte and request accounting): a small one as it is copied into the batch, a large
/// one once written or failed (not if the write is cancelled: the owner's `Drop` settles it).
pub async fn write_queue<W: AsyncWriteRent>(
    out: &RefCell<VecDeque<Bytes>>,
    batch: &mut Vec<u8>,
    w: &mut W,
    mut taken: impl FnMut(&Bytes),
) -> std::io::Result<()> {
    loop {
        let next = out.borrow_mut().pop_front();
        let Some(frame) = next else { break };
        if frame.len() >= WRITE_COPY_BYTES_MAX {
            flush(batch, w).await?;
            let (r, frame) = w.write_all(frame).await;
            taken(&frame);
            r?;
            continue;
        }
        taken(&frame);
        batch.extend_from_slice(&frame);
        if batch.len() >= WRITE_BATCH_BYTES {
            flush(batch, w).await?;
        }
    }
    flush(batch, w).await
}

async fn flush<W: AsyncWriteRent>(batch: &mut Vec<u8>, w: &mut W) -> std::io::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let b = std::mem::take(batch);
    let (r, mut b) = w.write_all(b).await;
    b.clear();
    *batch = b;
    r.map(|_| ())
}

/// A connection the filters serve or open: the kernel's `TcpStream`, a TLS stream over it
/// ([`tls`]), or (feature `dpdk`) a stream of a shard's DPDK stack. Generic code over it is
/// monomorphised per backend: the kernel path compiles to what it was before (no boxing, no
/// dynamic dispatch, no TLS branch), and a TLS connection is a type of its own, chosen once at
/// accept or connect. It splits into a read and a write half that run concurrently.
pub trait Conn:
    AsyncReadRent
    + AsyncWriteRent
    + Splitable<OwnedRead: StopRead + 'static, OwnedWrite: AsyncWriteRent + 'static>
    + 'static
{
    fn set_nodelay(&self, on: bool) -> std::io::Result<()>;
    /// The kernel socket a hot-upgrade successor can take over (a plaintext kernel TCP
    /// connection); `None` where its state lives in this process (TLS, the DPDK stack).
    fn handover_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Closes a connection handed to a hot-upgrade successor: our descriptor only, no FIN
    /// (the successor serves the socket). Dropping monoio's write half would shut the socket
    /// down for writing, for the successor too.
    fn close_handed_over(r: Self::OwnedRead, w: Self::OwnedWrite)
    where
        Self: Sized,
    {
        drop((r, w));
    }
    /// TCP keepalive (`runtime.tcp_keepalive` / `clusters[].tcp_keepalive`) on a kernel
    /// socket; the DPDK stack's and the fuzz targets' in-memory streams have none.
    fn set_keepalive(&self, _k: &config::TcpKeepalive) -> std::io::Result<()> {
        Ok(())
    }
    /// The peer's and the local address (for access logs); none where the stream has none.
    fn addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (None, None)
    }
    /// Where the peer meant to connect: the address before a REDIRECT (`SO_ORIGINAL_DST`),
    /// else the local address (TPROXY, or no interception); none where the stream has none.
    fn original_dst(&self) -> Option<SocketAddr> {
        None
    }
    /// A TLS peer that presented a certificate: `Some(its SPIFFE id)` (Istio's principal;
    /// `Some(None)`: a certificate without one). `None`: plaintext, or no client certificate.
    fn peer_principal(&self) -> Option<Option<String>> {
        None
    }
    /// `f` of the peer's verified TLS certificate (DER, read in place), or of `None` on a
    /// plaintext connection or a client that sent none.
    fn with_peer_certificate(&self, f: &mut dyn FnMut(Option<&[u8]>) -> bool) -> bool {
        f(None)
    }
    /// The certificates the TLS peer presented (end entity first, DER, copied); empty on
    /// plaintext or when it sent none.
    fn peer_chain(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// The TLS server name (SNI) the client sent; `None` on plaintext or without SNI.
    fn server_name(&self) -> Option<String> {
        None
    }
    /// What per-request authorization needs of the connection, taken once: the peer's
    /// address, where it meant to connect (else the local address), its verified certificate
    /// (DER, copied), the TLS server name it asked for (empty: plaintext, or no SNI).
    #[allow(clippy::type_complexity)]
    fn rbac_facts(
        &self,
    ) -> (
        Option<SocketAddr>,
        Option<SocketAddr>,
        Option<Box<[u8]>>,
        Box<[u8]>,
    ) {
        let (source, local) = self.addrs();
        let mut certificate = None;
        self.with_peer_certificate(&mut |c| {
            certificate = c.map(Box::from);
            true
        });
        let server_name = self.server_name().unwrap_or_default().into_bytes().into();
        (
            source,
            self.original_dst().or(local),
            certificate,
            server_name,
        )
    }
    /// The kernel socket, for the filters that only run on the kernel (TCP proxy, Triple);
    /// config validation keeps those off the DPDK path. A TLS connection is no kernel socket.
    fn into_kernel(self) -> Result<TcpStream, Self>
    where
        Self: Sized;
    /// The kernel socket underneath (a TLS connection's too), for what reads the socket
    /// itself, such as its original destination; none on the DPDK path.
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
    /// The ALPN protocol the TLS handshake settled on; `None` on plaintext or without ALPN.
    fn alpn(&self) -> Option<Vec<u8>> {
        None
    }
    /// Whether the connection is TLS (HTTP's `https` scheme).
    fn is_tls(&self) -> bool {
        false
    }
}

impl Conn for TcpStream {
    #[inline]
    fn set_nodelay(&self, on: bool) -> std::io::Result<()> {
        TcpStream::set_nodelay(self, on)
    }
    fn set_keepalive(&self, k: &config::TcpKeepalive) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let k = k.enabled.then_some((k.time_s, k.interval_s, k.probes));
        shard::sockopt::set_keepalive(self.as_raw_fd(), k)
    }
    fn addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (self.peer_addr().ok(), self.local_addr().ok())
    }
    fn original_dst(&self) -> Option<SocketAddr> {
        intercept::destination(self).ok()
    }
    fn handover_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.as_raw_fd())
    }
    fn close_handed_over(r: Self::OwnedRead, w: Self::OwnedWrite) {
        // Reunited, the stream closes its descriptor without a shutdown.
        if let Ok(stream) = r.reunite(w) {
            drop(stream);
        }
    }
    #[inline]
    fn into_kernel(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
    fn socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

/// The read half of a [`Conn`]: [`read_append`], or (for a connection handed to a
/// hot-upgrade successor) a read that `stop` ends without losing a byte.
pub trait StopRead: AsyncReadRent + Sized {
    /// Per-connection state of stoppable reads (kept across reads, so none allocates).
    type Stopper: Default;

    /// Reads like [`read_append`] until `stop` is set. Then the read is cancelled and its
    /// outcome awaited: bytes the kernel delivered before the cancellation are in the
    /// returned buffer (io_uring completes such a read with its data; epoll reads nothing once
    /// cancelled). Returns whether `stop` ended the read. Halves that are never handed over
    /// ([`Conn::handover_fd`] is `None`) ignore `stop`.
    fn read_until<'a>(
        &'a mut self,
        buf: BytesMut,
        stop: &'a shard::Event,
        stopper: &'a mut Self::Stopper,
    ) -> impl std::future::Future<Output = (std::io::Result<usize>, BytesMut, bool)> + 'a {
        let _ = (stop, stopper);
        async move {
            let (r, b) = read_append(self, buf).await;
            (r, b, false)
        }
    }
}

/// A kernel connection's read half: its reads are cancellable (monoio's `Canceller`, one per
/// connection: the set of ops it tracks keeps its capacity, so a read allocates nothing).
impl StopRead for shard::monoio::io::OwnedReadHalf<TcpStream> {
    type Stopper = shard::monoio::io::Canceller;

    async fn read_until<'a>(
        &'a mut self,
        buf: BytesMut,
        stop: &'a shard::Event,
        stopper: &'a mut Self::Stopper,
    ) -> (std::io::Result<usize>, BytesMut, bool) {
        use shard::monoio::io::CancelableAsyncReadRent;
        if stop.is_set() {
            return (Err(std::io::ErrorKind::Interrupted.into()), buf, true);
        }
        let start = buf.len();
        let read = self.cancelable_read(buf.slice_mut(start..), stopper.handle());
        let mut read = std::pin::pin!(read);
        shard::monoio::select! {
            (r, slice) = &mut read => (r, slice.into_inner(), false),
            _ = stop.wait() => {
                *stopper = std::mem::take(stopper).cancel();
                let (r, slice) = read.as_mut().await;
                // A cancelled read is no error: the buffer holds what arrived.
                let r = match r {
                    Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                        Err(std::io::ErrorKind::Interrupted.into())
                    }
                    r => r,
                };
                (r, slice.into_inner(), true)
            }
        }
    }
}

impl StopRead for ::tls::TlsRead<TcpStream> {
    type Stopper = ();
}

#[cfg(feature = "fuzz")]
impl StopRead for shard::monoio::io::OwnedReadHalf<shard::mem::MemStream> {
    type Stopper = ();
}

/// In-memory connections (feature `fuzz`): the fuzz targets' downstream and upstream peers.
#[cfg(feature = "fuzz")]
impl Conn for shard::mem::MemStream {
    fn set_nodelay(&self, _on: bool) -> std::io::Result<()> {
        Ok(())
    }
    fn into_kernel(self) -> Result<TcpStream, Self> {
        Err(self)
    }
}

/// Where connections come from: a kernel listening socket or a DPDK stack's listener.
pub trait Accept {
    type Stream: Conn;
    fn accept(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Stream, std::net::SocketAddr)>>;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    #[inline]
    fn accept(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<(TcpStream, std::net::SocketAddr)>> {
        TcpListener::accept(self)
    }
}
/// Listen backlog per shard socket.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Fails with `AddrInUse` when another socket already listens on `addr`. SO_REUSEPORT lets any
/// process of the same user join a listening port, so a second ringside (or any other program)
/// started on a listener's port would otherwise silently take half its connections: a probe bound
/// without SO_REUSEPORT conflicts with any listener there. A predecessor's sockets are taken over
/// only through `ringside run --upgrade`, which skips this check.
///
/// A listener is tried again for up to [`PORT_BUSY_WAIT_MS`]: a process killed while it used
/// io_uring (a crash, SIGKILL) releases its listening sockets only when the kernel tears its
/// ring down, a few milliseconds after the process is gone, and a restart must not fail then.
pub fn check_port_free(addr: SocketAddr, transparent: bool) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(PORT_BUSY_WAIT_MS);
    loop {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        probe.set_reuse_address(true)?;
        intercept::prepare_listener(&probe, transparent)?;
        match probe.bind(&addr.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "address already in use by another socket (another process listens there; \
                     a running ringside hands its sockets over only through `ringside run \
                     --upgrade`)",
                ));
            }
            r => return r,
        }
    }
}

/// How long start-up waits for a listener's address to be released (see [`check_port_free`]).
pub const PORT_BUSY_WAIT_MS: u64 = 1000;

/// A listening socket of one shard; `transparent`: IP_TRANSPARENT (TPROXY). Carries
/// `runtime.socket_mark` when set.
pub fn bind_reuseport(
    addr: SocketAddr,
    transparent: bool,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    intercept::prepare_listener(&socket, transparent)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
