//! Framing over a Unix stream socket: length-prefixed JSON, descriptors attached with
//! SCM_RIGHTS to the first byte of the message they belong to.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

#[cfg(test)]
use crate::REQUEST_BYTES_MAX;
use crate::{
    ConnEntry, HandoffError, Message, TcpPairEntry, FDS_PER_MESSAGE_MAX, MESSAGE_BYTES_MAX,
};

/// Sends `msg` with `fds` attached.
pub fn send(sock: &UnixStream, msg: &Message, fds: &[RawFd]) -> Result<(), HandoffError> {
    if fds.len() > FDS_PER_MESSAGE_MAX {
        return Err(HandoffError::TooManyFds {
            count: fds.len(),
            limit: FDS_PER_MESSAGE_MAX,
        });
    }
    let body = serde_json::to_vec(msg).map_err(|e| HandoffError::Malformed(e.to_string()))?;
    if body.len() > MESSAGE_BYTES_MAX {
        return Err(HandoffError::TooLarge {
            bytes: body.len(),
            limit: MESSAGE_BYTES_MAX,
        });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    // The descriptors ride on the first sendmsg; the rest of the frame follows as plain bytes.
    let first = send_with_fds(sock, &frame, fds)?;
    let mut w = sock;
    w.write_all(&frame[first..])?;
    Ok(())
}

/// Sends handed-over connections (version 2): `conns[i]` with `fds[i]`, in as many
/// `Connections` messages as [`crate::connection_batches`] makes. Returns the number of messages.
pub fn send_connections(
    sock: &UnixStream,
    conns: &[ConnEntry],
    fds: &[RawFd],
) -> Result<usize, HandoffError> {
    if conns.len() != fds.len() {
        return Err(HandoffError::FdCountMismatch {
            announced: conns.len(),
            carried: fds.len(),
        });
    }
    let batches = crate::connection_batches(conns);
    for r in &batches {
        let msg = Message::Connections {
            conns: conns[r.clone()].to_vec(),
        };
        send(sock, &msg, &fds[r.clone()])?;
    }
    Ok(batches.len())
}

/// Sends handed-over TCP proxy connections (version 3): `conns[i]` with `fds[i]` (its
/// downstream, then its upstream descriptor), in as many `TcpConnections` messages as
/// [`crate::tcp_batches`] makes. Returns the number of messages.
pub fn send_tcp_connections(
    sock: &UnixStream,
    conns: &[TcpPairEntry],
    fds: &[(RawFd, RawFd)],
) -> Result<usize, HandoffError> {
    if conns.len() != fds.len() {
        return Err(HandoffError::FdCountMismatch {
            announced: conns.len() * 2,
            carried: fds.len() * 2,
        });
    }
    let batches = crate::tcp_batches(conns);
    for r in &batches {
        let msg = Message::TcpConnections {
            conns: conns[r.clone()].to_vec(),
        };
        let flat: Vec<RawFd> = fds[r.clone()].iter().flat_map(|&(d, u)| [d, u]).collect();
        send(sock, &msg, &flat)?;
    }
    Ok(batches.len())
}

fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[RawFd]) -> Result<usize, HandoffError> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; if fds.is_empty() { 0 } else { space }];
    // SAFETY: msghdr is plain data; every pointer below points into buffers that outlive the
    // sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE(fd_bytes) long, so the first header and
        // its data fit; CMSG_FIRSTHDR is non-null for a non-empty buffer.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    loop {
        // SAFETY: msg is fully initialised above.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    }
}

/// Receives one message and the descriptors that came with it. A message longer than
/// `bytes_max` is refused before its body is read; the body's buffer grows with the bytes that
/// actually arrive, so a length prefix alone allocates nothing. A read timeout set on `sock`
/// bounds each read (an expired one is [`HandoffError::Io`] of kind `WouldBlock`).
pub fn recv(sock: &UnixStream, bytes_max: usize) -> Result<(Message, Vec<OwnedFd>), HandoffError> {
    let limit = bytes_max.min(MESSAGE_BYTES_MAX);
    let mut len = [0u8; 4];
    let (got, fds) = recv_with_fds(sock, &mut len)?;
    if got == 0 {
        return Err(HandoffError::Closed);
    }
    let mut r = sock;
    r.read_exact(&mut len[got..]).map_err(eof_is_closed)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > limit {
        return Err(HandoffError::TooLarge { bytes: n, limit });
    }
    let mut body = Vec::with_capacity(n.min(READ_CHUNK_BYTES));
    r.take(n as u64)
        .read_to_end(&mut body)
        .map_err(eof_is_closed)?;
    if body.len() < n {
        return Err(HandoffError::Closed);
    }
    let msg: Message =
        serde_json::from_slice(&body).map_err(|e| HandoffError::Malformed(e.to_string()))?;
    Ok((msg, fds))
}

/// The first allocation for a message body; it grows as bytes arrive.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// An end of stream is the peer closing; a timeout or other error keeps its cause.
fn eof_is_closed(e: std::io::Error) -> HandoffError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        HandoffError::Closed
    } else {
        HandoffError::Io(e)
    }
}

/// Reads up to `buf.len()` bytes with one recvmsg, collecting any descriptors.
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), HandoffError> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let fd_bytes = FDS_PER_MESSAGE_MAX * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: plain data; pointers into buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: msg is initialised; MSG_CMSG_CLOEXEC marks received fds close-on-exec.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG_* macros walk it within
    // those bounds, and each SCM_RIGHTS payload is an array of fds now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(HandoffError::TooManyFds {
            count: FDS_PER_MESSAGE_MAX + 1,
            limit: FDS_PER_MESSAGE_MAX,
        });
    }
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SocketEntry;
    use std::net::TcpListener;

    #[test]
    fn listening_sockets_cross_with_their_message() {
        let (a, b) = UnixStream::pair().unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs = [l1.local_addr().unwrap(), l2.local_addr().unwrap()];
        let msg = Message::Listeners {
            sockets: addrs
                .iter()
                .map(|a| SocketEntry {
                    name: "out".into(),
                    address: a.to_string(),
                })
                .collect(),
        };
        send(&a, &msg, &[l1.as_raw_fd(), l2.as_raw_fd()]).unwrap();
        let (got, fds) = recv(&b, MESSAGE_BYTES_MAX).unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 2);
        // The received descriptors are the same sockets: connections to the old address are
        // accepted through them.
        drop((l1, l2));
        for (fd, addr) in fds.into_iter().zip(addrs) {
            let l = TcpListener::from(fd);
            assert_eq!(l.local_addr().unwrap(), addr);
            let _c = std::net::TcpStream::connect(addr).unwrap();
            l.accept().unwrap();
        }
    }

    #[test]
    fn messages_without_fds_and_large_blobs() {
        let (a, b) = UnixStream::pair().unwrap();
        let blob = "x".repeat(3 << 20);
        let writer = std::thread::spawn(move || {
            send(
                &a,
                &Message::Hello {
                    protocol: 1,
                    build: "t".into(),
                    highest: None,
                },
                &[],
            )
            .unwrap();
            send(&a, &Message::Stats { blob }, &[]).unwrap();
        });
        assert!(matches!(
            recv(&b, MESSAGE_BYTES_MAX).unwrap().0,
            Message::Hello { protocol: 1, .. }
        ));
        match recv(&b, MESSAGE_BYTES_MAX).unwrap().0 {
            Message::Stats { blob } => assert_eq!(blob.len(), 3 << 20),
            other => panic!("{other:?}"),
        }
        writer.join().unwrap();
        assert!(matches!(
            recv(&b, MESSAGE_BYTES_MAX),
            Err(HandoffError::Closed)
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut w = &a;
        w.write_all(&5u32.to_be_bytes()).unwrap();
        w.write_all(b"{nope").unwrap();
        assert!(matches!(
            recv(&b, MESSAGE_BYTES_MAX),
            Err(HandoffError::Malformed(_))
        ));
        w.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(matches!(
            recv(&b, MESSAGE_BYTES_MAX),
            Err(HandoffError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_length_over_the_callers_limit_is_refused_before_the_body() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut w = &a;
        w.write_all(&((REQUEST_BYTES_MAX + 1) as u32).to_be_bytes())
            .unwrap();
        assert!(matches!(
            recv(&b, REQUEST_BYTES_MAX),
            Err(HandoffError::TooLarge { bytes, limit })
                if bytes == REQUEST_BYTES_MAX + 1 && limit == REQUEST_BYTES_MAX
        ));
        // A length within the limit whose body never comes is a closed peer.
        w.write_all(&1000u32.to_be_bytes()).unwrap();
        w.write_all(b"{").unwrap();
        drop(a);
        assert!(matches!(
            recv(&b, REQUEST_BYTES_MAX),
            Err(HandoffError::Closed)
        ));
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (_a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        assert!(matches!(
            recv(&b, REQUEST_BYTES_MAX),
            Err(HandoffError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock
        ));
    }

    /// Connections cross in batches with their unread bytes, and the received descriptors are
    /// the same connections: what the peer sends arrives on them, what we write reaches it.
    #[test]
    fn connections_cross_in_batches_with_their_unread_bytes() {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // More than one message's worth of descriptors.
        const N: usize = FDS_PER_MESSAGE_MAX + 7;
        let mut peers = Vec::new();
        let mut served = Vec::new();
        for _ in 0..N {
            peers.push(TcpStream::connect(addr).unwrap());
            served.push(l.accept().unwrap().0);
        }
        let conns: Vec<ConnEntry> = (0..N)
            .map(|i| ConnEntry {
                listener: format!("l{}", i % 3),
                unread: vec![i as u8; i % 5],
                paused_at_ns: i as u64,
                sent_at_ns: 0,
            })
            .collect();
        let fds: Vec<RawFd> = served.iter().map(|s| s.as_raw_fd()).collect();
        let (a, b) = UnixStream::pair().unwrap();
        let sent = std::thread::scope(|s| {
            let w = s.spawn(|| send_connections(&a, &conns, &fds).unwrap());
            let mut got = Vec::new();
            while got.len() < N {
                let (msg, fds) = recv(&b, MESSAGE_BYTES_MAX).unwrap();
                let Message::Connections { conns } = msg else {
                    panic!("{msg:?}")
                };
                assert_eq!(conns.len(), fds.len());
                assert!(fds.len() <= FDS_PER_MESSAGE_MAX);
                got.extend(conns.into_iter().zip(fds));
            }
            assert_eq!(w.join().unwrap(), 2);
            got
        });
        // The old process closes its copies once they are sent.
        drop(served);
        for (i, ((entry, fd), peer)) in sent.into_iter().zip(&mut peers).enumerate() {
            assert_eq!(entry, conns[i]);
            let mut adopted = TcpStream::from(fd);
            adopted.write_all(&[i as u8]).unwrap();
            let mut one = [0u8];
            peer.read_exact(&mut one).unwrap();
            assert_eq!(one[0], i as u8);
            peer.write_all(b"ok").unwrap();
            let mut two = [0u8; 2];
            adopted.read_exact(&mut two).unwrap();
            assert_eq!(&two, b"ok");
        }
        // Announced entries must match the descriptors.
        assert!(matches!(
            send_connections(&a, &conns[..2], &fds[..1]),
            Err(HandoffError::FdCountMismatch { .. })
        ));
    }

    /// TCP pairs (version 3) cross two descriptors per entry, downstream then upstream, in
    /// batches of at most half the descriptor limit; each received pair is the same two
    /// connections, and an entry without its ConnEntry fields (a version 2 message) still
    /// parses.
    #[test]
    fn tcp_pairs_cross_with_both_descriptors_in_order() {
        use crate::{tcp_batches, TcpPairEntry};
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        const N: usize = FDS_PER_MESSAGE_MAX / 2 + 3;
        let mut peers = Vec::new();
        let mut served = Vec::new();
        for _ in 0..2 * N {
            peers.push(TcpStream::connect(addr).unwrap());
            served.push(l.accept().unwrap().0);
        }
        let conns: Vec<TcpPairEntry> = (0..N)
            .map(|i| TcpPairEntry {
                listener: "l4".into(),
                cluster: "up".into(),
                upstream: "127.0.0.1:9".into(),
                unread: vec![i as u8; i % 3],
                unread_upstream: vec![!(i as u8); i % 4],
                started_unix_ms: 1,
                bytes_received: i as u64,
                bytes_sent: 2,
                paused_at_ns: 3,
                sent_at_ns: 4,
            })
            .collect();
        let fds: Vec<(RawFd, RawFd)> = (0..N)
            .map(|i| (served[2 * i].as_raw_fd(), served[2 * i + 1].as_raw_fd()))
            .collect();
        assert_eq!(tcp_batches(&conns), vec![0..126, 126..N]);
        let (a, b) = UnixStream::pair().unwrap();
        let got = std::thread::scope(|s| {
            let w = s.spawn(|| send_tcp_connections(&a, &conns, &fds).unwrap());
            let mut got = Vec::new();
            while got.len() < N {
                let (msg, fds) = recv(&b, MESSAGE_BYTES_MAX).unwrap();
                let Message::TcpConnections { conns } = msg else {
                    panic!("{msg:?}")
                };
                assert_eq!(2 * conns.len(), fds.len());
                let mut fds = fds.into_iter();
                for c in conns {
                    got.push((c, fds.next().unwrap(), fds.next().unwrap()));
                }
            }
            assert_eq!(w.join().unwrap(), 2);
            got
        });
        drop(served);
        for (i, (entry, down, up)) in got.into_iter().enumerate() {
            assert_eq!(entry, conns[i]);
            for (k, fd) in [(2 * i, down), (2 * i + 1, up)] {
                let mut s = TcpStream::from(fd);
                s.write_all(&[k as u8]).unwrap();
                let mut one = [0u8];
                peers[k].read_exact(&mut one).unwrap();
                assert_eq!(one[0], k as u8, "entry {i}: descriptors in order");
            }
        }
        assert!(matches!(
            send_tcp_connections(&a, &conns[..2], &fds[..1]),
            Err(HandoffError::FdCountMismatch { .. })
        ));
        let v2 = br#"{"type":"Connections","conns":[{"listener":"d","unread":"ab"}]}"#;
        let Message::Connections { conns } = serde_json::from_slice(v2).unwrap() else {
            panic!()
        };
        assert_eq!(
            (conns[0].unread.as_slice(), conns[0].paused_at_ns),
            (&[0xab][..], 0)
        );
    }

    #[test]
    fn batches_respect_descriptors_and_bytes() {
        use crate::{connection_batches, CONNECTIONS_BATCH_BYTES_MAX, UNREAD_BYTES_MAX};
        let small = |n| {
            (0..n)
                .map(|_| ConnEntry {
                    listener: "d".into(),
                    unread: Vec::new(),
                    paused_at_ns: 0,
                    sent_at_ns: 0,
                })
                .collect::<Vec<_>>()
        };
        assert!(connection_batches(&[]).is_empty());
        assert_eq!(connection_batches(&small(3)), vec![0..3]);
        assert_eq!(
            connection_batches(&small(600)),
            vec![0..253, 253..506, 506..600]
        );
        let big: Vec<ConnEntry> = (0..40)
            .map(|_| ConnEntry {
                listener: "d".into(),
                unread: vec![7; UNREAD_BYTES_MAX],
                paused_at_ns: 0,
                sent_at_ns: 0,
            })
            .collect();
        let batches = connection_batches(&big);
        assert!(batches.len() >= 2, "{batches:?}");
        for r in batches {
            let body = serde_json::to_vec(&Message::Connections {
                conns: big[r].to_vec(),
            })
            .unwrap();
            assert!(body.len() <= CONNECTIONS_BATCH_BYTES_MAX + UNREAD_BYTES_MAX * 2 + 1024);
            assert!(body.len() < MESSAGE_BYTES_MAX);
        }
    }

    /// Version 1 peers: a version 1 successor's Hello (no `highest`) is version 1 here, and a
    /// version 1 process reads our Hello (its own message type, without `highest`) and answers
    /// version 1, which we then use.
    #[test]
    fn version_one_peers_fall_back() {
        use crate::{negotiate, PROTOCOL_BASE, PROTOCOL_VERSION};
        #[derive(serde::Deserialize, Debug)]
        #[serde(tag = "type")]
        enum V1 {
            Hello { protocol: u32, build: String },
        }
        let v1_hello = br#"{"type":"Hello","protocol":1,"build":"ringside 0.0.9"}"#;
        let Message::Hello { highest, .. } = serde_json::from_slice(v1_hello).unwrap() else {
            panic!()
        };
        assert_eq!(highest, None);
        assert_eq!(negotiate(highest, PROTOCOL_VERSION), 1);
        let ours = serde_json::to_vec(&Message::Hello {
            protocol: PROTOCOL_BASE,
            build: "t".into(),
            highest: Some(PROTOCOL_VERSION),
        })
        .unwrap();
        let V1::Hello { protocol, build } = serde_json::from_slice(&ours).unwrap();
        assert_eq!((protocol, build.as_str()), (1, "t"));
        assert_eq!(negotiate(Some(2), 2), 2);
        assert_eq!(negotiate(Some(9), 2), 2);
        assert_eq!(negotiate(Some(2), 1), 1);
        assert_eq!(negotiate(Some(0), 2), 1);
        // A version 1 process refuses a message type it does not know: GetConnections is sent
        // only after Welcome said 2.
        let unknown = serde_json::to_vec(&Message::GetConnections).unwrap();
        assert!(serde_json::from_slice::<V1>(&unknown).is_err());
    }

    #[test]
    fn bad_unread_text_is_malformed() {
        let (a, b) = UnixStream::pair().unwrap();
        let body = br#"{"type":"Connections","conns":[{"listener":"d","unread":"abc"}]}"#;
        let mut w = &a;
        w.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        w.write_all(body).unwrap();
        assert!(matches!(
            recv(&b, MESSAGE_BYTES_MAX),
            Err(HandoffError::Malformed(_))
        ));
    }
}
