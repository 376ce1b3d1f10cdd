//! HTTP/1.1's TLS transports (docs/decisions/0010-http1.md): a TLS connection of a listener
//! with `triple.http1` (istiod's mTLS `http_connection_manager` chains of `virtualInbound`)
//! speaks HTTP/2 or HTTP/1.1 as Envoy's `codec_type: AUTO` decides ([`serve_tls`]); an
//! HTTP/1.1 request to an endpoint whose transport socket is TLS (auto-mTLS
//! `tlsMode-istio`, an `UpstreamTlsContext`) goes over TLS ([`UpStream`]).

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use shard::monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use shard::monoio::io::{AsyncReadRent, AsyncWriteRent};
use shard::monoio::net::TcpStream;
use shard::monoio::BufResult;

use super::TripleListener;
use crate::filter::Drain;
use crate::io::tls::TlsConn;
use crate::io::READ_CHUNK_BYTES;

/// The HTTP/2 connection preface's first bytes: a connection starting with them is HTTP/2.
const H2_START: &[u8] = b"PRI * HTTP/2.0";

/// Serves a TLS connection of a listener with `triple.http1` by what it speaks, as Envoy's
/// `codec_type: AUTO` chooses: the ALPN protocol when the handshake settled on one (`h2`:
/// HTTP/2; any other: HTTP/1.1), else its first bytes (HTTP/2's preface or not), read within
/// the listener's `preface_timeout_ms` and handed on with the connection. Returns whether the
/// drain's deadline cut it.
pub async fn serve_tls<C: crate::io::Conn>(mut s: C, l: Rc<TripleListener>, drain: &Drain) -> bool {
    match s.alpn().as_deref() {
        Some(b"h2") => return super::conn::serve(s, l, drain).await,
        Some(_) => {
            let buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
            return super::http1::serve_read(s, l, drain, buf).await;
        }
        None => {}
    }
    let deadline = Instant::now() + l.limits.preface_timeout;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        let k = buf.len().min(H2_START.len());
        if buf[..k] != H2_START[..k] {
            return super::http1::serve_read(s, l, drain, buf).await;
        }
        if k == H2_START.len() {
            return super::conn::serve_read(s, l, drain, buf).await;
        }
        buf.reserve(READ_CHUNK_BYTES);
        let read = crate::io::read_append(&mut s, buf);
        match shard::monoio::time::timeout_at(deadline.into(), read).await {
            Ok((Ok(n), b)) if n > 0 => buf = b,
            // Closed, broken or silent before saying what it speaks.
            Ok(_) => return false,
            Err(_) => {
                l.stats.inc(l.ids.hardening.cx_preface_timeout);
                return false;
            }
        }
    }
}

/// An upstream HTTP/1.1 connection: plaintext, or TLS when the endpoint's transport socket
/// is.
pub enum UpStream {
    Plain(TcpStream),
    Tls(TlsConn),
}

impl UpStream {
    /// Whether an idle connection is alive and quiet: nothing to read (an EOF, a TLS alert
    /// such as close_notify, or stray bytes, in the socket or already in TLS's buffers: not
    /// reusable; a response that was not asked for must not answer the next request).
    pub fn quiet(&self) -> bool {
        let fd = match self {
            UpStream::Plain(s) => s.as_raw_fd(),
            UpStream::Tls(s) if s.has_unread() => return false,
            UpStream::Tls(s) => s.get_ref().as_raw_fd(),
        };
        let mut b = [0u8; 1];
        matches!(shard::sockopt::peek(fd, &mut b),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, UpStream::Tls(_))
    }
}

impl AsyncReadRent for UpStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.read(buf).await,
            UpStream::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.readv(buf).await,
            UpStream::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.write(buf).await,
            UpStream::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.writev(buf).await,
            UpStream::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpStream::Plain(s) => s.flush().await,
            UpStream::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            UpStream::Plain(s) => s.shutdown().await,
            UpStream::Tls(s) => s.shutdown().await,
        }
    }
}
