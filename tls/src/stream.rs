//! [`TlsStream`]: a rustls connection over a monoio stream, read and written with owned buffers.
//!
//! The handshake runs to completion on the whole stream ([`accept`], [`connect`]) before any
//! filter sees it. The stream then splits into a [`TlsRead`] and a [`TlsWrite`] half that share
//! the rustls connection through an `Rc<RefCell<_>>` borrowed only between awaits (never across
//! one), over the two halves of the socket: reads and writes run concurrently, as they do on a
//! plaintext socket, without two `&mut` to one value (the halves implement `Splitable`
//! themselves instead of the `Split` marker).
//!
//! Ciphertext is read into a buffer owned by the read half ([`CIPHER_READ_BYTES`]) and handed to
//! rustls only once the plaintext it already holds is drained, so rustls' received-plaintext
//! limit is never hit. Everything rustls wants to send (records, alerts, a KeyUpdate answer the
//! read side queued) leaves through the write half, in one socket write per filter write.

// Copies between rustls and the caller's owned buffers (raw pointers monoio hands over).
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::rc::Rc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Split,
    Splitable,
};
use monoio::BufResult;
use rustls::Connection;

/// Ciphertext read per socket read, at most: one full TLS record (16 KiB plaintext plus
/// overhead) fits.
pub const CIPHER_READ_BYTES: usize = 18 * 1024;

/// The ciphertext buffer a connection starts with: a handshake flight of SPIFFE certificates
/// and the small records of RPC traffic fit. It grows to [`CIPHER_READ_BYTES`], once, the first
/// time a read fills it (large frames: one record per read), and is never shrunk, so the
/// steady state allocates nothing; an idle or small-message connection keeps 4 KiB instead of
/// 18 (docs/security.md, "Memory per connection").
pub const CIPHER_START_BYTES: usize = 4 * 1024;

/// The handshake's write buffer (a certificate flight) is shrunk to this when the connection
/// keeps it: RPC records are small, and the buffer grows again if one is not.
const OUT_KEEP_BYTES: usize = 1024;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS handshake: {0}")]
    Io(#[from] io::Error),
    #[error("TLS handshake: the peer closed the connection")]
    Closed,
}

/// A TLS connection over `S` after a completed handshake.
pub struct TlsStream<S: AsyncWriteRent> {
    read: TlsRead<S>,
    write: TlsWrite<S>,
}

/// The read half of a [`TlsStream`].
pub struct TlsRead<S> {
    io: OwnedReadHalf<S>,
    tls: Rc<RefCell<Connection>>,
    /// Ciphertext read from the socket and not yet given to rustls: `cipher[pos..]`.
    cipher: Cipher,
    pos: usize,
}

/// A ciphertext read buffer: [`CIPHER_START_BYTES`] until a read fills it, then
/// [`CIPHER_READ_BYTES`].
struct Cipher(Vec<u8>);

impl Cipher {
    fn new() -> Cipher {
        Cipher(Vec::with_capacity(CIPHER_START_BYTES))
    }

    /// The emptied buffer for the next socket read (grown if the last read filled it).
    fn take(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.0);
        let full = b.len() == b.capacity();
        b.clear();
        if full && b.capacity() < CIPHER_READ_BYTES {
            b.reserve_exact(CIPHER_READ_BYTES);
        }
        b
    }
}

/// The write half of a [`TlsStream`].
pub struct TlsWrite<S: AsyncWriteRent> {
    io: OwnedWriteHalf<S>,
    tls: Rc<RefCell<Connection>>,
    /// Ciphertext on its way to the socket (reused).
    out: Vec<u8>,
}

/// Completes a server handshake on `io`.
pub async fn accept<S>(
    mut io: S,
    config: std::sync::Arc<rustls::ServerConfig>,
) -> Result<TlsStream<S>, HandshakeError>
where
    S: AsyncReadRent + AsyncWriteRent + Split,
{
    let mut conn = Connection::Server(rustls::ServerConnection::new(config)?);
    let bufs = handshake(&mut io, &mut conn, Cipher::new()).await?;
    Ok(TlsStream::new(io, conn, bufs))
}

/// Completes a server handshake on `io` as Envoy (BoringSSL) does when the client's ALPN list
/// and the server's have nothing in common: without ALPN (`no_alpn`, the same config with no
/// protocols), where rustls alone would refuse the handshake. Istio's inbound chains offer
/// `h2, http/1.1` while its sidecars ask for `istio-peer-exchange, istio`.
pub async fn accept_lenient_alpn<S>(
    mut io: S,
    config: std::sync::Arc<rustls::ServerConfig>,
    no_alpn: &std::sync::Arc<rustls::ServerConfig>,
) -> Result<TlsStream<S>, HandshakeError>
where
    S: AsyncReadRent + AsyncWriteRent + Split,
{
    let mut acceptor = rustls::server::Acceptor::default();
    let mut cipher = Cipher::new();
    let accepted = loop {
        let (r, c) = io.read(cipher.take()).await;
        cipher.0 = c;
        if r? == 0 {
            return Err(HandshakeError::Closed);
        }
        let mut rd = &cipher.0[..];
        while !rd.is_empty() {
            acceptor.read_tls(&mut rd)?;
        }
        match acceptor.accept() {
            Ok(Some(a)) => break a,
            Ok(None) => {}
            Err((e, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = io.write_all(out).await;
                return Err(e.into());
            }
        }
    };
    let overlap = match accepted.client_hello().alpn() {
        None => true,
        Some(mut offered) => offered.any(|p| config.alpn_protocols.iter().any(|a| a == p)),
    };
    let config = if overlap { config } else { no_alpn.clone() };
    let mut conn = match accepted.into_connection(config) {
        Ok(c) => Connection::Server(c),
        Err((e, mut alert)) => {
            let mut out = Vec::new();
            let _ = alert.write_all(&mut out);
            let _ = io.write_all(out).await;
            return Err(e.into());
        }
    };
    let bufs = handshake(&mut io, &mut conn, cipher).await?;
    Ok(TlsStream::new(io, conn, bufs))
}

/// Completes a client handshake on `io` for `name` (SNI, unless the config disables it).
pub async fn connect<S>(
    mut io: S,
    config: std::sync::Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
) -> Result<TlsStream<S>, HandshakeError>
where
    S: AsyncReadRent + AsyncWriteRent + Split,
{
    let mut conn = Connection::Client(rustls::ClientConnection::new(config, name)?);
    let bufs = handshake(&mut io, &mut conn, Cipher::new()).await?;
    Ok(TlsStream::new(io, conn, bufs))
}

/// Drives `conn` until the handshake is done and everything it queued is written. Records read
/// past the handshake (a client's first request may share a segment with its Finished) stay
/// in rustls, decrypted, for the read half. Returns the read and write buffers, for the
/// connection to keep (no second allocation).
async fn handshake<S: AsyncReadRent + AsyncWriteRent>(
    io: &mut S,
    conn: &mut Connection,
    mut cipher: Cipher,
) -> Result<(Cipher, Vec<u8>), HandshakeError> {
    let mut out = Vec::new();
    loop {
        out = send(io, conn, out).await?;
        if !conn.is_handshaking() {
            return Ok((cipher, out));
        }
        let (r, c) = io.read(cipher.take()).await;
        cipher.0 = c;
        if r? == 0 {
            return Err(HandshakeError::Closed);
        }
        let mut rd = &cipher.0[..];
        while !rd.is_empty() {
            if conn.read_tls(&mut rd)? == 0 {
                // close_notify during the handshake.
                return Err(HandshakeError::Closed);
            }
            if let Err(e) = conn.process_new_packets() {
                // The alert rustls queued tells the peer why.
                let _ = send(io, conn, out).await;
                return Err(e.into());
            }
        }
    }
}

/// Writes everything `conn` has queued; returns the (empty) buffer for reuse.
async fn send<S: AsyncWriteRent>(
    io: &mut S,
    conn: &mut Connection,
    mut out: Vec<u8>,
) -> io::Result<Vec<u8>> {
    while conn.wants_write() {
        out.clear();
        while conn.wants_write() {
            conn.write_tls(&mut out)?;
        }
        let (r, o) = io.write_all(out).await;
        out = o;
        r?;
    }
    Ok(out)
}

// === impl TlsStream ===

impl<S: AsyncReadRent + AsyncWriteRent + Split> TlsStream<S> {
    fn new(io: S, conn: Connection, (mut cipher, mut out): (Cipher, Vec<u8>)) -> Self {
        let (r, w) = io.into_split();
        let tls = Rc::new(RefCell::new(conn));
        // The handshake's buffers, emptied (everything they held was given to rustls or
        // written); the write buffer no larger than a small record needs.
        cipher.0.clear();
        out.clear();
        out.shrink_to(OUT_KEEP_BYTES);
        TlsStream {
            read: TlsRead {
                io: r,
                tls: tls.clone(),
                cipher,
                pos: 0,
            },
            write: TlsWrite { io: w, tls, out },
        }
    }
}

impl<S: AsyncWriteRent> TlsStream<S> {
    /// The negotiated ALPN protocol, if any.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        self.read.tls.borrow().alpn_protocol().map(|p| p.to_vec())
    }

    /// The server name (SNI) a server-side connection's client sent, if any.
    pub fn server_name(&self) -> Option<String> {
        match &*self.read.tls.borrow() {
            Connection::Server(s) => s.server_name().map(str::to_string),
            Connection::Client(_) => None,
        }
    }

    /// Whether anything arrived that was not read yet: ciphertext not given to rustls,
    /// plaintext rustls holds, or the peer's close_notify (an idle pooled connection with
    /// any is not reusable).
    pub fn has_unread(&self) -> bool {
        if self.read.pos < self.read.cipher.0.len() {
            return true;
        }
        let mut tls = self.read.tls.borrow_mut();
        let mut reader = tls.reader();
        !matches!(reader.fill_buf(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Whether the handshake resumed an earlier session (a TLS 1.3 ticket).
    pub fn resumed(&self) -> bool {
        self.read.tls.borrow().handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The peer's certificate chain (end entity first), as it was verified.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        self.read
            .tls
            .borrow()
            .peer_certificates()
            .map(|c| c.to_vec())
    }

    /// `f` of the peer's end-entity certificate as it was verified (DER, borrowed in place:
    /// no copy), or of `None` when the peer sent none.
    pub fn with_peer_certificate<R>(&self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        let tls = self.read.tls.borrow();
        f(tls
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref()))
    }

    /// The plaintext socket underneath (socket options).
    pub fn get_ref(&self) -> &S {
        // SAFETY: a shared borrow of the socket for a synchronous call (a socket option);
        // both halves only ever use it through their own &mut for IO, never concurrently
        // with this borrow of `&self` (the whole stream, not split).
        unsafe { &*self.read.io.0.get() }
    }
}

impl<S: AsyncWriteRent> Splitable for TlsStream<S> {
    type OwnedRead = TlsRead<S>;
    type OwnedWrite = TlsWrite<S>;

    fn into_split(self) -> (TlsRead<S>, TlsWrite<S>) {
        (self.read, self.write)
    }
}

impl<S: AsyncReadRent + AsyncWriteRent> AsyncReadRent for TlsStream<S> {
    fn read<T: IoBufMut>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = BufResult<usize, T>> {
        self.read.read(buf)
    }

    fn readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = BufResult<usize, T>> {
        self.read.readv(buf)
    }
}

impl<S: AsyncWriteRent> AsyncWriteRent for TlsStream<S> {
    fn write<T: IoBuf>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = BufResult<usize, T>> {
        self.write.write(buf)
    }

    fn writev<T: IoVecBuf>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = BufResult<usize, T>> {
        self.write.writev(buf)
    }

    fn flush(&mut self) -> impl std::future::Future<Output = io::Result<()>> {
        self.write.flush()
    }

    fn shutdown(&mut self) -> impl std::future::Future<Output = io::Result<()>> {
        self.write.shutdown()
    }
}

impl<S: AsyncReadRent + AsyncWriteRent> TlsStream<S> {
    /// A copy of the first plaintext bytes that arrived (at most `max`), left unread: waits
    /// until some came. Empty: the peer closed first. (What one TLS record carried, or less:
    /// a peek sees the first record's plaintext.)
    pub async fn peek(&mut self, max: usize) -> io::Result<Vec<u8>> {
        self.read.peek(max).await
    }
}

// === impl TlsRead ===

impl<S: AsyncReadRent> TlsRead<S> {
    /// See [`TlsStream::peek`].
    async fn peek(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let seen = self
            .with_plaintext(|p| (p[..p.len().min(max)].to_vec(), 0))
            .await?;
        Ok(seen.unwrap_or_default())
    }

    /// Copies decrypted bytes into `dst` (at most `len`); reads and decrypts more first when
    /// rustls holds none. `Ok(0)`: the peer closed (with or without close_notify: Dubbo and
    /// HTTP/2 frame their messages, so a truncation shows as an incomplete frame there).
    async fn read_into(&mut self, dst: *mut u8, len: usize) -> io::Result<usize> {
        if len == 0 {
            return Ok(0);
        }
        let n = self
            .with_plaintext(|p| {
                let n = p.len().min(len);
                // SAFETY: `dst` is valid for `len` bytes of writes (the caller's owned buffer,
                // kept alive by the caller for this call) and cannot overlap rustls' own buffer.
                unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), dst, n) };
                (n, n)
            })
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Waits until rustls holds plaintext, reading and decrypting ciphertext as needed, then
    /// hands it to `take`, which returns its result and how many bytes it consumed (0: a peek).
    /// `Ok(None)`: the peer closed (rustls decides whether cleanly).
    async fn with_plaintext<R>(
        &mut self,
        mut take: impl FnMut(&[u8]) -> (R, usize),
    ) -> io::Result<Option<R>> {
        loop {
            {
                let mut tls = self.tls.borrow_mut();
                let mut reader = tls.reader();
                match reader.fill_buf() {
                    Ok([]) => return Ok(None),
                    Ok(p) => {
                        let (r, n) = take(p);
                        reader.consume(n);
                        return Ok(Some(r));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(e),
                }
                // No plaintext: give rustls the next ciphertext, if any is buffered.
                if self.pos < self.cipher.0.len() {
                    let mut rd = &self.cipher.0[self.pos..];
                    let before = rd.len();
                    tls.read_tls(&mut rd)?;
                    self.pos += before - rd.len();
                    tls.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            let cipher = self.cipher.take();
            self.pos = 0;
            let (r, c) = self.io.read(cipher).await;
            self.cipher.0 = c;
            if r? == 0 {
                // EOF: rustls decides whether it was clean.
                let mut tls = self.tls.borrow_mut();
                tls.read_tls(&mut &[][..])?;
                tls.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
        }
    }
}

impl<S: AsyncReadRent> AsyncReadRent for TlsRead<S> {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let len = buf.bytes_total();
        let dst = buf.write_ptr();
        let r = self.read_into(dst, len).await;
        if let Ok(n) = r {
            // SAFETY: `read_into` wrote `n` bytes at the start of the buffer's writable area.
            unsafe { buf.set_init(n) };
        }
        (r, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // The first non-empty iovec only: a short read is allowed.
        let iovecs: Vec<(usize, *mut u8)> = (0..buf.write_iovec_len())
            .map(|i| {
                // SAFETY: `i` is below write_iovec_len, so the iovec exists.
                let v = unsafe { *buf.write_iovec_ptr().add(i) };
                (v.iov_len, v.iov_base.cast::<u8>())
            })
            .collect();
        let Some(&(len, dst)) = iovecs.iter().find(|(len, _)| *len > 0) else {
            return (Ok(0), buf);
        };
        let skipped: usize = iovecs
            .iter()
            .take_while(|(l, _)| *l == 0)
            .map(|(l, _)| l)
            .sum();
        let r = self.read_into(dst, len).await;
        if let Ok(n) = r {
            // SAFETY: `n` bytes were written at the start of the first non-empty iovec.
            unsafe { buf.set_init(skipped + n) };
        }
        (r, buf)
    }
}

// === impl TlsWrite ===

impl<S: AsyncWriteRent> TlsWrite<S> {
    /// Encrypts what rustls accepts of `plain` (its buffer limit may take less than all) and
    /// writes the records.
    async fn write_slices(&mut self, plain: &[&[u8]]) -> io::Result<usize> {
        let mut taken = 0;
        {
            let mut tls = self.tls.borrow_mut();
            for p in plain {
                let n = tls.writer().write(p)?;
                taken += n;
                if n < p.len() {
                    break;
                }
            }
        }
        self.flush_tls().await?;
        Ok(taken)
    }

    /// Writes every record rustls has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        loop {
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            {
                let mut tls = self.tls.borrow_mut();
                while tls.wants_write() {
                    tls.write_tls(&mut out)?;
                }
            }
            if out.is_empty() {
                self.out = out;
                return Ok(());
            }
            let (r, o) = self.io.write_all(out).await;
            self.out = o;
            r?;
        }
    }
}

impl<S: AsyncWriteRent> AsyncWriteRent for TlsWrite<S> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `read_ptr` is valid for `bytes_init` initialised bytes while we own `buf`.
        let plain = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let r = self.write_slices(&[plain]).await;
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let slices: Vec<&[u8]> = (0..buf.read_iovec_len())
            .map(|i| {
                // SAFETY: `i` is below read_iovec_len, and each iovec points at initialised
                // bytes of `buf`, which we own for the whole call.
                unsafe {
                    let v = *buf.read_iovec_ptr().add(i);
                    std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
                }
            })
            .collect();
        let r = self.write_slices(&slices).await;
        drop(slices);
        (r, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_tls().await?;
        self.io.flush().await
    }

    /// Sends close_notify, then shuts the socket's write side.
    async fn shutdown(&mut self) -> io::Result<()> {
        self.tls.borrow_mut().send_close_notify();
        self.flush_tls().await?;
        self.io.shutdown().await
    }
}
