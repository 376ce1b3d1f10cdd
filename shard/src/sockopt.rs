//! Socket options for traffic interception that need raw `getsockopt` or a socket configured
//! before `connect`: the original destination of a REDIRECTed connection (`SO_ORIGINAL_DST`,
//! `IP6T_SO_ORIGINAL_DST`) and upstream connections carrying a socket mark (`SO_MARK`) or bound
//! to a source address, both set before the SYN leaves.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

use monoio::net::TcpStream;

/// A new descriptor (close-on-exec) for the socket `fd` refers to: a connection handed to a
/// hot-upgrade successor outlives the runtime's own descriptor, which is closed as usual.
pub fn dup_socket(fd: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) only reads `fd` (EBADF when it is not open) and returns a
    // new descriptor that nobody else owns.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
/// (linux/netfilter_ipv6/ip6_tables.h): both 80.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination a connection had before netfilter NAT (iptables `REDIRECT`) rewrote it, from
/// the conntrack entry. Tries IPv4 then IPv6 (a dual-stack socket may carry either). Fails with
/// `ENOENT` (or `ENOPROTOOPT`) when the connection was not NATed or conntrack has no entry, as
/// with TPROXY, where the accepted socket's local address is the original destination.
pub fn original_dst(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: getsockopt writes at most `len` bytes into a zeroed sockaddr_in of that size.
    let v4 = unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        if r == 0 && sa.sin_family as libc::c_int == libc::AF_INET {
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            )))
        } else {
            Err(io::Error::last_os_error())
        }
    };
    if v4.is_ok() {
        return v4;
    }
    // SAFETY: as above, with a sockaddr_in6.
    unsafe {
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::SOL_IPV6,
            SO_ORIGINAL_DST,
            (&mut sa as *mut libc::sockaddr_in6).cast(),
            &mut len,
        );
        if r == 0 && sa.sin6_family as libc::c_int == libc::AF_INET6 {
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                sa.sin6_flowinfo,
                sa.sin6_scope_id,
            )))
        } else {
            // Report the IPv4 error when IPv6 does not apply to this socket.
            let e6 = io::Error::last_os_error();
            match e6.raw_os_error() {
                Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP) => v4,
                _ => Err(e6),
            }
        }
    }
}

/// Sets an integer socket option.
fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int from a live local.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `SO_MARK` on `fd` (needs CAP_NET_ADMIN or CAP_NET_RAW).
pub fn set_mark(fd: RawFd, mark: u32) -> io::Result<()> {
    // The kernel reads the mark as a 32-bit value: the same bits as a c_int.
    set_int(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

/// Connects to `addr` from a socket that carries `mark` (`SO_MARK`) from its first packet on,
/// so interception rules can tell the proxy's own upstream connections apart, and that is
/// bound to `source` (port chosen by the kernel; Istio's 127.0.0.6, which its rules let pass).
/// Runs on the shard's runtime (io_uring or epoll): a non-blocking connect, then a wait for
/// writability.
pub async fn connect_with(
    addr: SocketAddr,
    mark: Option<u32>,
    source: Option<std::net::IpAddr>,
) -> io::Result<TcpStream> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2); the fd is owned by `std` right below.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    if let Some(mark) = mark {
        set_mark(fd, mark)?;
    }
    if let Some(ip) = source {
        let (storage, len) = sockaddr(SocketAddr::new(ip, 0));
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
        let r = unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("bind source address {ip}: {e}"),
            ));
        }
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let r = unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    let stream = TcpStream::from_std(std_stream)?;
    stream.writable(false).await?;
    // SO_ERROR: the connect's outcome.
    let raw = stream.as_raw_fd();
    // SAFETY: borrowed for the call only; `into_raw_fd` gives it back without closing it.
    let probe = unsafe { std::net::TcpStream::from_raw_fd(raw) };
    let err = probe.take_error();
    let _ = probe.into_raw_fd();
    if let Some(e) = err? {
        return Err(e);
    }
    // A connect refused before the poll may report writable with the error already read:
    // a connected socket has a peer.
    stream.peer_addr()?;
    Ok(stream)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; the fields set below fit in it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe {
                std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin);
            }
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe {
                std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6);
            }
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// IP_TRANSPARENT (IPv4 sockets) or IPV6_TRANSPARENT (IPv6 sockets) on `fd`: the socket may
/// accept connections to any address (TPROXY) and bind non-local ones. Needs CAP_NET_ADMIN.
pub fn set_transparent(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: getsockname writes at most `len` bytes into a zeroed sockaddr_storage.
    let family = unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        ss.ss_family as libc::c_int
    };
    let (level, name) = if family == libc::AF_INET6 {
        (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
    } else {
        (libc::SOL_IP, libc::IP_TRANSPARENT)
    };
    set_int(fd, level, name, one)
}

/// Copies up to `buf.len()` bytes a socket has received into `buf` without consuming them
/// (recv with MSG_PEEK, non-blocking): `Ok(0)` is EOF, WouldBlock means nothing has arrived.
pub fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most buf.len() bytes into the live buffer `buf`.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// TCP keepalive on a connected socket: SO_KEEPALIVE on with TCP_KEEPIDLE `time_s`,
/// TCP_KEEPINTVL `interval_s` and TCP_KEEPCNT `probes`; `None` turns SO_KEEPALIVE off.
pub fn set_keepalive(fd: RawFd, k: Option<(u32, u32, u32)>) -> io::Result<()> {
    let set = |level, name, v| set_int(fd, level, name, v);
    let Some((time_s, interval_s, probes)) = k else {
        return set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0);
    };
    let int = |v: u32| libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, int(time_s))?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, int(interval_s))?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, int(probes))?;
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
}
