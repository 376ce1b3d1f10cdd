//! The L4 filter: relays bytes between a downstream connection and one upstream connection.
//!
//! Each direction is a loop over one buffer of `buffer_bytes`: read, then write all of it, then
//! read again. A slow reader on one side therefore stops reads on the other side (backpressure),
//! and a connection never holds more than two buffers. EOF on one side is passed on as a
//! half-close (shutdown of the write side) while the other direction keeps flowing; an error on
//! either side ends both. The idle timer runs once per connection, not per read.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::try_join;
use shard::monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use shard::monoio::net::TcpStream;

use crate::cluster::Upstream;
use crate::listener::ListenerCtx;

pub async fn serve(down: TcpStream, l: Rc<ListenerCtx>) {
    let _ = down.set_nodelay(true);
    let cluster = l.cluster.borrow().clone();
    let Some(cluster) = cluster.as_ref() else {
        return;
    };
    let connected = if cluster.original_destination {
        if !l.original_destination {
            return;
        }
        let dst = match crate::intercept::original_destination(&down, l.address) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(listener = %l.name, error = %e, "no original destination; closing downstream");
                return;
            }
        };
        cluster.connect_to(dst, &l.stats).await
    } else {
        cluster.connect(&l.stats).await
    };
    let Upstream {
        stream: up_stream,
        guard: _active,
    } = match connected {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(listener = %l.name, cluster = %cluster.name, error = %e, "no upstream; closing downstream");
            return;
        }
    };
    let last_activity = Cell::new(Instant::now());
    let (dr, dw) = down.into_split();
    let (ur, uw) = up_stream.into_split();
    let ids = l.ids;
    let first = Cell::new(l.original_destination);
    let up = relay_inspect(dr, uw, l.buffer_bytes, &last_activity, |chunk| {
        l.stats.add(ids.bytes_rx, chunk.len() as u64);
        if first.replace(false) {
            l.stats.inc(match detect(chunk) {
                Detected::Dubbo => ids.detected_dubbo,
                Detected::Http2 => ids.detected_http2,
                Detected::Other => ids.detected_other,
            });
        }
    });
    let back = relay(ur, dw, l.buffer_bytes, &last_activity, |n| {
        l.stats.add(ids.bytes_tx, n)
    });
    shard::monoio::select! {
        r = try_join(up, back) => {
            if let Err(e) = r {
                tracing::debug!(listener = %l.name, error = %e, "connection ended with an error");
            }
        }
        _ = idle(&last_activity, l.idle_timeout) => {
            l.stats.inc(ids.cx_idle_timeout);
        }
    }
}

/// What the first bytes a downstream sent look like.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    /// Dubbo2: magic 0xdabb.
    Dubbo,
    /// HTTP/2 prior knowledge (Triple, gRPC): the connection preface `PRI * HTTP/2.0`.
    Http2,
    Other,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Classifies a connection by its first chunk (at least the bytes that decide it: a chunk
/// shorter than the preface counts as HTTP/2 when it is a prefix of it).
pub fn detect(first: &[u8]) -> Detected {
    if first.len() >= 2 && first[..2] == [0xda, 0xbb] {
        Detected::Dubbo
    } else if first.len() >= 3
        && H2_PREFACE.starts_with(&first[..first.len().min(H2_PREFACE.len())])
    {
        Detected::Http2
    } else {
        Detected::Other
    }
}

/// [`relay`], handing each chunk to `inspect` before writing it.
async fn relay_inspect<R: AsyncReadRent, W: AsyncWriteRent>(
    mut from: R,
    mut to: W,
    buffer_bytes: usize,
    last_activity: &Cell<Instant>,
    inspect: impl Fn(&[u8]),
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(buffer_bytes);
    loop {
        buf.clear();
        let (r, b) = from.read(buf).await;
        buf = b;
        let n = r?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        last_activity.set(Instant::now());
        inspect(&buf[..n]);
        let (r, b) = to.write_all(buf).await;
        buf = b;
        r?;
    }
}

async fn relay<R: AsyncReadRent, W: AsyncWriteRent>(
    mut from: R,
    mut to: W,
    buffer_bytes: usize,
    last_activity: &Cell<Instant>,
    count: impl Fn(u64),
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(buffer_bytes);
    loop {
        buf.clear();
        let (r, b) = from.read(buf).await;
        buf = b;
        let n = r?;
        if n == 0 {
            // Half-close: the peer finished sending; tell the other side, keep the reverse
            // direction open.
            let _ = to.shutdown().await;
            return Ok(());
        }
        last_activity.set(Instant::now());
        count(n as u64);
        let (r, b) = to.write_all(buf).await;
        buf = b;
        r?;
    }
}

async fn idle(last_activity: &Cell<Instant>, timeout: Duration) {
    loop {
        let deadline = last_activity.get() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        shard::monoio::time::sleep_until(deadline.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dubbo_http2_and_other() {
        assert_eq!(detect(&[0xda, 0xbb, 0xc2, 0]), Detected::Dubbo);
        assert_eq!(detect(H2_PREFACE), Detected::Http2);
        assert_eq!(detect(b"PRI * HT"), Detected::Http2);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detected::Other);
        assert_eq!(detect(b"PRX"), Detected::Other);
        assert_eq!(detect(&[0xda]), Detected::Other);
    }
}
