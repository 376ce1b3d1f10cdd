//! Traffic interception on the data path: the socket mark on ringside's own sockets
//! (`runtime.socket_mark`), transparent listening sockets, and the original destination of an
//! intercepted connection. The rules that steer traffic here are the `ringside iptables`
//! command's; `docs/sidecar.md` describes both modes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shard::monoio::net::TcpStream;

/// `runtime.socket_mark`, process-wide (0: none). Set once at start, before any socket opens.
static SOCKET_MARK: AtomicU32 = AtomicU32::new(0);

pub fn set_socket_mark(mark: Option<u32>) {
    SOCKET_MARK.store(mark.unwrap_or(0), Ordering::Relaxed);
}

pub fn socket_mark() -> Option<u32> {
    match SOCKET_MARK.load(Ordering::Relaxed) {
        0 => None,
        m => Some(m),
    }
}

/// `runtime.tcp_keepalive`, process-wide, packed (enabled bit 63, time_s bits 32..48,
/// interval_s 16..32, probes 0..16). Set once at start, before any socket opens; read when a
/// connection is accepted or a cluster is built, never per request.
static KEEPALIVE: AtomicU64 = AtomicU64::new(u64::MAX);

pub fn set_keepalive(k: config::TcpKeepalive) {
    let packed = (u64::from(k.enabled) << 63)
        | (u64::from(k.time_s & 0xffff) << 32)
        | (u64::from(k.interval_s & 0xffff) << 16)
        | u64::from(k.probes & 0xffff);
    KEEPALIVE.store(packed, Ordering::Relaxed);
}

/// `runtime.tcp_keepalive` (its default until [`set_keepalive`] ran).
pub fn keepalive() -> config::TcpKeepalive {
    match KEEPALIVE.load(Ordering::Relaxed) {
        u64::MAX => config::TcpKeepalive::default(),
        p => config::TcpKeepalive {
            enabled: p >> 63 == 1,
            time_s: ((p >> 32) & 0xffff) as u32,
            interval_s: ((p >> 16) & 0xffff) as u32,
            probes: (p & 0xffff) as u32,
        },
    }
}

/// Every upstream connection ringside makes goes through here: with `runtime.socket_mark` the
/// socket carries the mark from its SYN on, so interception rules let it pass; with a
/// cluster's `source_addresses` it is bound to the one of `addr`'s family (none of that
/// family: the connect fails, as Envoy's bind of another family's address does).
pub async fn connect(addr: SocketAddr, sources: &[IpAddr]) -> io::Result<TcpStream> {
    let source = match sources {
        [] => None,
        s => match s.iter().find(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            Some(ip) => Some(*ip),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the cluster's source_addresses {s:?} have none of {addr}'s family"),
                ))
            }
        },
    };
    match (socket_mark(), source) {
        (None, None) => TcpStream::connect_addr(addr).await,
        (mark, source) => shard::sockopt::connect_with(addr, mark, source)
            .await
            .map_err(|e| needs_cap(e, "SO_MARK (runtime.socket_mark)")),
    }
}

/// A socket option the kernel refused for want of a capability, said as such (the bare EPERM
/// reads as if the address were the problem).
fn needs_cap(e: io::Error, option: &str) -> io::Error {
    if e.kind() == io::ErrorKind::PermissionDenied {
        io::Error::new(
            e.kind(),
            format!(
                "{option} needs CAP_NET_ADMIN, which this process lacks ({e}); give the \
                 container CAP_NET_ADMIN or drop the option (REDIRECT interception needs \
                 neither: docs/sidecar.md)"
            ),
        )
    } else {
        e
    }
}

/// Marks a listening socket (its SYN-ACKs, the connections it accepts and the kernel's RSTs and
/// TIME_WAIT ACKs for them carry the mark, while `--uid-owner` misses the latter) and makes it
/// transparent when asked.
pub fn prepare_listener(sock: &socket2::Socket, transparent: bool) -> io::Result<()> {
    if let Some(mark) = socket_mark() {
        sock.set_mark(mark)
            .map_err(|e| needs_cap(e, "SO_MARK (runtime.socket_mark)"))?;
    }
    if transparent {
        shard::sockopt::set_transparent(sock.as_raw_fd())
            .map_err(|e| needs_cap(e, "IP_TRANSPARENT (a listener's transparent: true)"))?;
    }
    Ok(())
}

/// Why an intercepted connection has no usable original destination.
#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    #[error("cannot read the original destination: {0}")]
    Io(#[from] io::Error),
    #[error("the original destination {0} is this listener itself (not intercepted?)")]
    Loop(SocketAddr),
}

/// The destination the downstream meant: REDIRECT (nat) records it in conntrack
/// (SO_ORIGINAL_DST); with TPROXY the accepted socket's local address is it. A destination that
/// is the listener itself (a direct connection to the listener) would loop and is refused.
pub fn original_destination(
    down: &TcpStream,
    listener: SocketAddr,
) -> Result<SocketAddr, OrigDstError> {
    let dst = destination(down)?;
    if dst.port() == listener.port()
        && (listener.ip().is_unspecified() || canonical(listener).ip() == dst.ip())
    {
        return Err(OrigDstError::Loop(dst));
    }
    Ok(dst)
}

/// The destination `down`'s peer meant: `SO_ORIGINAL_DST` (REDIRECT), else the local address
/// (TPROXY, or a connection that was not intercepted); IPv4-mapped addresses as IPv4.
pub fn destination(down: &TcpStream) -> io::Result<SocketAddr> {
    let dst = match shard::sockopt::original_dst(down.as_raw_fd()) {
        Ok(a) => a,
        Err(_) => down.local_addr()?,
    };
    Ok(canonical(dst))
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener) as plain IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}
