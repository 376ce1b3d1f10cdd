//! Istio's in-band TCP metadata exchange on a TLS connection that negotiated the ALPN protocol
//! `istio-peer-exchange` (istio-proxy's `istio.metadata_exchange` network filter; the format
//! is in `stats::istio::exchange`): before any application byte, each side writes its header
//! and node metadata and reads the peer's.
//!
//! The client (ringside's upstream connections) writes its own first, as istio-proxy's
//! upstream filter does with the first bytes it sends; the server (ringside's listeners) waits
//! for the caller's first bytes and answers with its own when they are the exchange's header,
//! as istio-proxy's downstream filter does on the first bytes it receives (a caller that sends
//! nothing for [`FIRST_BYTES_WAIT`] gets ours anyway: a sidecar in front of a
//! server-speaks-first app writes its own when ours arrives). Either side then reads exactly
//! the peer's header and payload: what follows stays in the connection for the protocol. A
//! peer whose first bytes are not the exchange's header (a sidecar without the filter that
//! offered the ALPN anyway, such as a plain Envoy given istiod's TLS contexts) exchanges
//! nothing: its bytes are the application's, untouched, and a server sends nothing of its own.
//!
//! Bounded against a hostile peer: a payload announced over `IN_BAND_BYTES_MAX`, or an
//! exchange not done within [`TIMEOUT`], ends the connection (istio-proxy sets neither bound).

use std::io;
use std::time::Duration;

use shard::monoio::buf::IoBufMut;
use shard::monoio::io::{AsyncReadRent, AsyncWriteRentExt};

use super::tls::TlsConn;
use crate::stats::istio::exchange::{
    in_band_size, ALPN, IN_BAND_BYTES_MAX, IN_BAND_HEADER_BYTES, MAGIC,
};

/// How long the whole exchange may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server waits for the caller's first bytes before it writes its own.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_secs(2);

/// Whether a connection negotiated the exchange (its ALPN protocol).
pub fn negotiated(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ALPN)
}

/// Which side of the connection ringside is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Accepted by a listener.
    Server,
    /// Opened to an upstream.
    Client,
}

/// Does the exchange on `s` as `side`, writing `ours` (header and payload): the peer's
/// payload (its `Any`), or `None` when the peer's first bytes are not the exchange's.
pub async fn exchange(s: &mut TlsConn, ours: &[u8], side: Side) -> io::Result<Option<Vec<u8>>> {
    let run = async {
        let mut written = false;
        if side == Side::Client {
            write(s, ours).await?;
            written = true;
        }
        let first = match side {
            Side::Client => s.peek(IN_BAND_HEADER_BYTES).await?,
            Side::Server => {
                match shard::monoio::time::timeout(FIRST_BYTES_WAIT, s.peek(IN_BAND_HEADER_BYTES))
                    .await
                {
                    Ok(first) => first?,
                    Err(_) => {
                        write(s, ours).await?;
                        written = true;
                        s.peek(IN_BAND_HEADER_BYTES).await?
                    }
                }
            }
        };
        if first.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before istio-peer-exchange",
            ));
        }
        let magic = MAGIC.to_be_bytes();
        let n = first.len().min(magic.len());
        if first[..n] != magic[..n] {
            return Ok(None);
        }
        let head = read_exact(s, IN_BAND_HEADER_BYTES).await?;
        let head: [u8; IN_BAND_HEADER_BYTES] = head
            .get(..IN_BAND_HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short header"))?;
        let size = in_band_size(&head).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "not istio-peer-exchange's magic",
            )
        })?;
        if size > IN_BAND_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "istio-peer-exchange payload of {size} bytes (at most {IN_BAND_BYTES_MAX})"
                ),
            ));
        }
        let theirs = read_exact(s, size).await?;
        if !written {
            write(s, ours).await?;
        }
        Ok(Some(theirs))
    };
    match shard::monoio::time::timeout(TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "istio-peer-exchange timed out",
        )),
    }
}

async fn write(s: &mut TlsConn, b: &[u8]) -> io::Result<()> {
    let (r, _) = s.write_all(b.to_vec()).await;
    r.map(|_| ())
}

/// Reads exactly `n` bytes (never more: each read is bounded to the bytes still missing by a
/// `slice_mut` window, whatever capacity the allocator gave the buffer; what follows the
/// exchange is the application's and must stay in the socket).
async fn read_exact<S: AsyncReadRent>(s: &mut S, n: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let start = out.len();
        let (r, slice) = s.read(out.slice_mut(start..n)).await;
        out = slice.into_inner();
        if r? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during istio-peer-exchange",
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::read_exact;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        shard::monoio::RuntimeBuilder::<shard::monoio::LegacyDriver>::new()
            .build()
            .expect("monoio runtime")
            .block_on(f)
    }

    /// The exchange's reads take what it is owed and leave the application's bytes behind, even
    /// when the buffer's capacity is larger than what is missing.
    #[test]
    fn read_exact_leaves_what_follows_in_the_stream() {
        let data: Vec<u8> = (0u8..40).collect();
        let mut src: &[u8] = &data;
        let head = block_on(read_exact(&mut src, 8)).unwrap();
        assert_eq!(head, &data[..8]);
        let body = block_on(read_exact(&mut src, 3)).unwrap();
        assert_eq!(body, &data[8..11]);
        assert_eq!(src, &data[11..], "the application's bytes stay unread");
        let e = block_on(read_exact(&mut src, 30)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
