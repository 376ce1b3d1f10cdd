//! TCP keepalive on every socket ringside owns (issue 20, timers): read back from the running
//! binary's own sockets. The test takes a duplicate of each of ringside's socket descriptors
//! (pidfd_getfd, Linux 5.6; the test runs as ringside's user) and reads SO_KEEPALIVE,
//! TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT from it with getsockopt.

mod common;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};

use codec::dubbo::encode::RequestBuilder;
use common::dubbo::*;
use common::*;

/// SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT.
type Keepalive = (bool, u32, u32, u32);

/// (local address, peer address, keepalive) of each connected TCP socket of process `pid`.
fn sockets(pid: u32) -> Vec<(SocketAddr, SocketAddr, Keepalive)> {
    // SAFETY: plain syscalls; the descriptors returned are owned here.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: pidfd_open returned a new descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let fd: i32 = e.file_name().to_string_lossy().parse().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if dup < 0 {
            // Closed meanwhile.
            continue;
        }
        // SAFETY: pidfd_getfd returned a new descriptor.
        let s = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(dup as i32) });
        if s.r#type().ok() != Some(socket2::Type::STREAM) {
            continue;
        }
        let (Ok(local), Ok(peer)) = (s.local_addr(), s.peer_addr()) else {
            continue; // listening or unix sockets
        };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
            continue;
        };
        let on = s.keepalive().unwrap();
        let secs = |d: std::time::Duration| d.as_secs() as u32;
        out.push((
            local,
            peer,
            (
                on,
                secs(s.keepalive_time().unwrap()),
                secs(s.keepalive_interval().unwrap()),
                s.keepalive_retries().unwrap(),
            ),
        ));
    }
    out
}

/// Downstream sockets (Dubbo, Triple and TCP proxy listeners) get `runtime.tcp_keepalive`;
/// upstream connections their cluster's `tcp_keepalive`, or `runtime.tcp_keepalive` when the
/// cluster sets none.
#[test]
fn every_proxied_connection_has_tcp_keepalive() {
    let provider = Provider::start("A");
    let grpc = common::h2::Upstream::start("G");
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in echo.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    let (admin, dubbo, triple, tcp) = (
        local(free_port()),
        local(free_port()),
        local(free_port()),
        local(free_port()),
    );
    let config = format!(
        "admin: {{address: {admin}}}
runtime:
  tcp_keepalive: {{time_s: 37, interval_s: 11, probes: 4}}
listeners:
  - {{name: dubbo, address: {dubbo}, protocol: dubbo, cluster: a}}
  - {{name: grpc, address: {triple}, protocol: triple, cluster: g}}
  - {{name: tcp, address: {tcp}, protocol: tcp, cluster: e}}
clusters:
  - name: a
    endpoints: [\"{}\"]
    tcp_keepalive: {{time_s: 41, interval_s: 13, probes: 5}}
  - name: g
    endpoints: [\"{}\"]
    tcp_keepalive: {{time_s: 43, interval_s: 17, probes: 6}}
  - name: e
    endpoints: [\"{echo_addr}\"]
",
        provider.addr, grpc.addr
    );
    let rs = Ringside::start(&config, admin, &["--shards", "1"]);
    let mut c = Consumer::connect(dubbo);
    assert_eq!(
        c.call(RequestBuilder::new("com.ringside.test.EchoService", "m"))
            .text,
        "A|m|"
    );
    let mut g = common::h2::Client::connect(triple);
    assert_eq!(
        g.call("/helloworld.Greeter/SayHello", &[], b"x")
            .grpc_status(),
        Some(0)
    );
    let mut t = std::net::TcpStream::connect(tcp).unwrap();
    {
        use std::io::{Read, Write};
        t.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        t.read_exact(&mut b).unwrap();
    }
    let socks = sockets(rs.child.id());
    let find = |what: &str, f: &dyn Fn(&(SocketAddr, SocketAddr, Keepalive)) -> bool| {
        let hits: Vec<_> = socks.iter().filter(|s| f(s)).collect();
        assert_eq!(hits.len(), 1, "{what}: {socks:?}");
        hits[0].2
    };
    let runtime = (true, 37, 11, 4);
    assert_eq!(find("dubbo downstream", &|s| s.0 == dubbo), runtime);
    assert_eq!(find("triple downstream", &|s| s.0 == triple), runtime);
    assert_eq!(find("tcp downstream", &|s| s.0 == tcp), runtime);
    assert_eq!(
        find("dubbo upstream", &|s| s.1 == provider.addr),
        (true, 41, 13, 5)
    );
    assert_eq!(
        find("triple upstream", &|s| s.1 == grpc.addr),
        (true, 43, 17, 6)
    );
    assert_eq!(find("tcp upstream", &|s| s.1 == echo_addr), runtime);
    drop((c, g, t));
}
