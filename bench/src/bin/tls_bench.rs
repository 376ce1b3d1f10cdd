//! tls-bench: the measurements behind docs/decisions/0007-tls-stack.md.
//!
//! Certificates as Istio issues them (ECDSA P-256, a SPIFFE URI SAN, a CA in between), TLS 1.3,
//! mutual authentication, no resumption (every handshake is a full one). For each rustls crypto
//! provider (ring, aws-lc-rs) it measures, on the calling thread (pin it with taskset):
//!
//! - full mTLS handshakes, client and server in memory: CPU time spent by each side, so
//!   handshakes per second per core as a server (inbound sidecar) and as a client (outbound);
//! - record protection: bytes per second per core to encrypt (writer + write_tls) and to decrypt
//!   (read_tls + process_new_packets + reader) 16 KiB writes;
//! - whether the kernel offers kTLS (`setsockopt(TCP_ULP, "tls")` on a connected socket).
//!
//! With `--envoy PATH` it also runs Envoy (BoringSSL) as a TLS server with the same certificates
//! (`--concurrency 1`) and a rustls server over the same kind of TCP connections, drives each
//! with sequential mTLS handshakes from a client thread, and reports each server's CPU time per
//! handshake (utime+stime of the Envoy process / getrusage of the rustls server thread).
//!
//! `tls-bench [--handshakes N] [--mib N] [--envoy PATH] [--tcp-handshakes N]`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU time of the calling thread: the machine is shared, so wall time would count other
/// programs' slices too.
#[derive(Clone, Copy)]
struct Cpu(Duration);

impl Cpu {
    fn now() -> Cpu {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY (bench program): clock_gettime writes into the timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Cpu(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    fn elapsed(&self) -> Duration {
        Cpu::now().0 - self.0
    }
}

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use bench::mtls::{self, Certs};

fn key_der(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key")
}

fn configs(p: &Arc<CryptoProvider>, c: &Certs) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let mut roots = RootCertStore::empty();
    roots.add(c.ca.clone()).expect("root");
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
        .build()
        .expect("client verifier");
    let mut server = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_client_cert_verifier(verifier)
        .with_single_cert(c.server.chain.clone(), key_der(&c.server.key_pem))
        .expect("server cert");
    server.send_tls13_tickets = 0;
    server.alpn_protocols = vec![b"istio".to_vec(), b"h2".to_vec()];
    let mut client = mtls::client_config(
        p,
        c.ca.clone(),
        c.client.chain.clone(),
        key_der(&c.client.key_pem),
        mtls::SERVER_SAN,
    )
    .expect("client config");
    client.alpn_protocols = vec![b"istio".to_vec()];
    (Arc::new(server), Arc::new(client))
}

mod common_any {
    //! One object-safe view over client and server connections for the pump.
    pub trait ConnectionCommonAny {
        fn wants_write(&self) -> bool;
        fn write_tls(&mut self, w: &mut Vec<u8>) -> std::io::Result<usize>;
        fn read_tls(&mut self, r: &mut &[u8]) -> std::io::Result<usize>;
        fn process(&mut self) -> Result<(), rustls::Error>;
        fn is_handshaking(&self) -> bool;
    }
    macro_rules! imp {
        ($t:ty) => {
            impl ConnectionCommonAny for $t {
                fn wants_write(&self) -> bool {
                    (**self).wants_write()
                }
                fn write_tls(&mut self, w: &mut Vec<u8>) -> std::io::Result<usize> {
                    (**self).write_tls(w)
                }
                fn read_tls(&mut self, r: &mut &[u8]) -> std::io::Result<usize> {
                    (**self).read_tls(r)
                }
                fn process(&mut self) -> Result<(), rustls::Error> {
                    self.process_new_packets().map(|_| ())
                }
                fn is_handshaking(&self) -> bool {
                    (**self).is_handshaking()
                }
            }
        };
    }
    imp!(rustls::ClientConnection);
    imp!(rustls::ServerConnection);
}

fn handshake_pair(
    sc: &Arc<ServerConfig>,
    cc: &Arc<ClientConfig>,
    times: &mut (Duration, Duration),
) -> (ServerConnection, ClientConnection) {
    use common_any::ConnectionCommonAny as _;
    let name = ServerName::try_from("provider.default.svc.cluster.local").expect("name");
    let t = Cpu::now();
    let mut client = ClientConnection::new(cc.clone(), name).expect("client");
    times.1 += t.elapsed();
    let t = Cpu::now();
    let mut server = ServerConnection::new(sc.clone()).expect("server");
    times.0 += t.elapsed();
    let mut buf = Vec::with_capacity(8192);
    loop {
        let a = pump2(
            &mut client,
            &mut server,
            &mut buf,
            &mut times.1,
            &mut times.0,
        );
        let b = pump2(
            &mut server,
            &mut client,
            &mut buf,
            &mut times.0,
            &mut times.1,
        );
        if !a && !b {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    (server, client)
}

fn pump2(
    from: &mut dyn common_any::ConnectionCommonAny,
    to: &mut dyn common_any::ConnectionCommonAny,
    buf: &mut Vec<u8>,
    from_time: &mut Duration,
    to_time: &mut Duration,
) -> bool {
    buf.clear();
    let t = Cpu::now();
    while from.wants_write() {
        from.write_tls(buf).expect("write_tls");
    }
    *from_time += t.elapsed();
    if buf.is_empty() {
        return false;
    }
    let t = Cpu::now();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read_tls");
        to.process().expect("process");
    }
    *to_time += t.elapsed();
    true
}

fn bench_handshakes(name: &str, sc: &Arc<ServerConfig>, cc: &Arc<ClientConfig>, n: u32) {
    // Warm-up.
    let mut times = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n / 10 + 1 {
        handshake_pair(sc, cc, &mut times);
    }
    let mut times = (Duration::ZERO, Duration::ZERO);
    let (server, client) = handshake_pair(sc, cc, &mut times);
    let suite = server
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()));
    let group = server
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()));
    let alpn = client
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let mut times = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        handshake_pair(sc, cc, &mut times);
    }
    println!(
        "{name}: mTLS full handshake ({} {} alpn {}): server {:.0}/s per core ({:.1} us), client {:.0}/s per core ({:.1} us)",
        suite.unwrap_or_default(),
        group.unwrap_or_default(),
        alpn.unwrap_or_default(),
        n as f64 / times.0.as_secs_f64(),
        times.0.as_secs_f64() * 1e6 / n as f64,
        n as f64 / times.1.as_secs_f64(),
        times.1.as_secs_f64() * 1e6 / n as f64,
    );
}

fn bench_records(name: &str, sc: &Arc<ServerConfig>, cc: &Arc<ClientConfig>, mib: usize) {
    let mut times = (Duration::ZERO, Duration::ZERO);
    let (mut server, mut client) = handshake_pair(sc, cc, &mut times);
    let chunk = vec![0x5au8; 16 * 1024];
    let total = mib * 1024 * 1024;
    let mut cipher = Vec::with_capacity(64 * 1024);
    let mut plain = vec![0u8; 64 * 1024];
    let (mut enc, mut dec) = (Duration::ZERO, Duration::ZERO);
    let mut sent = 0usize;
    let mut received = 0usize;
    // Batches of 256 writes (4 MiB): encrypted in one timed run, then decrypted in another, so
    // the clock is read twice per batch and not per record.
    let batch = 256;
    cipher.reserve(batch * (chunk.len() + 64));
    while sent < total {
        cipher.clear();
        let t = Cpu::now();
        for _ in 0..batch {
            server.writer().write_all(&chunk).expect("write");
            while server.wants_write() {
                server.write_tls(&mut cipher).expect("write_tls");
            }
        }
        enc += t.elapsed();
        sent += batch * chunk.len();
        let t = Cpu::now();
        let mut rd = &cipher[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).expect("read_tls");
            client.process_new_packets().expect("process");
            loop {
                match client.reader().read(&mut plain) {
                    Ok(0) => break,
                    Ok(n) => received += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
        dec += t.elapsed();
    }
    assert_eq!(sent, received);
    println!(
        "{name}: records of 16 KiB writes ({}): encrypt {:.2} GB/s per core, decrypt {:.2} GB/s per core",
        server
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        sent as f64 / enc.as_secs_f64() / 1e9,
        sent as f64 / dec.as_secs_f64() / 1e9,
    );
}

fn ktls_probe() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let ulp = b"tls";
    use std::os::fd::AsRawFd;
    // SAFETY (bench program, not ringside): a valid fd and a 3-byte buffer that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            ulp.as_ptr().cast(),
            ulp.len() as libc::socklen_t,
        )
    };
    let avail = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    println!(
        "kTLS: setsockopt(TCP_ULP, \"tls\") = {} ({}); tcp_available_ulp: {}",
        r,
        if r == 0 {
            "available".to_string()
        } else {
            std::io::Error::last_os_error().to_string()
        },
        avail.trim()
    );
}

fn cpu_of_thread() -> Duration {
    // SAFETY (bench program): getrusage writes into the zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn cpu_of_pid(pid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY (bench program): sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Sequential mTLS handshakes over TCP to `addr`; each writes one byte after the handshake so
/// the server finishes its side before the client closes.
fn tcp_handshakes(addr: SocketAddr, cc: &Arc<ClientConfig>, n: u32) -> Duration {
    let name = ServerName::try_from("provider.default.svc.cluster.local").expect("name");
    let t = Instant::now();
    for _ in 0..n {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let mut c = ClientConnection::new(cc.clone(), name.clone()).expect("client");
        while c.is_handshaking() {
            c.complete_io(&mut tcp).expect("handshake");
        }
        let mut s = rustls::Stream::new(&mut c, &mut tcp);
        s.write_all(b"x").expect("write");
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    }
    t.elapsed()
}

fn rustls_tcp_server(
    sc: Arc<ServerConfig>,
    n: u32,
) -> (SocketAddr, std::thread::JoinHandle<Duration>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        let start = cpu_of_thread();
        for _ in 0..n {
            let (mut tcp, _) = l.accept().expect("accept");
            tcp.set_nodelay(true).expect("nodelay");
            let mut s = ServerConnection::new(sc.clone()).expect("server");
            let mut stream = rustls::Stream::new(&mut s, &mut tcp);
            let mut b = [0u8; 1];
            let _ = stream.read(&mut b);
            let _ = stream.write_all(b"y");
        }
        cpu_of_thread() - start
    });
    (addr, h)
}

fn envoy_server(envoy: &str, c: &Certs, n: u32, cc: &Arc<ClientConfig>) {
    let dir = std::env::temp_dir().join(format!("tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let w = |f: &str, s: &str| std::fs::write(dir.join(f), s).expect("write");
    w("ca.pem", &c.ca_pem);
    w("cert.pem", &c.server.cert_pem);
    w("key.pem", &c.server.key_pem);
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("p")
        .local_addr()
        .expect("a")
        .port();
    let admin = TcpListener::bind("127.0.0.1:0")
        .expect("p")
        .local_addr()
        .expect("a")
        .port();
    let d = dir.display();
    let cfg = format!(
        r#"{{"admin": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {admin}}}}}}},
 "static_resources": {{
  "listeners": [{{"name": "tls", "address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {port}}}}},
   "filter_chains": [{{
    "transport_socket": {{"name": "envoy.transport_sockets.tls", "typed_config": {{
      "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
      "require_client_certificate": true,
      "common_tls_context": {{
        "tls_params": {{"tls_minimum_protocol_version": "TLSv1_3"}},
        "alpn_protocols": ["istio", "h2"],
        "tls_certificates": [{{"certificate_chain": {{"filename": "{d}/cert.pem"}}, "private_key": {{"filename": "{d}/key.pem"}}}}],
        "validation_context": {{"trusted_ca": {{"filename": "{d}/ca.pem"}}}}}}}}}},
    "filters": [{{"name": "envoy.filters.network.echo", "typed_config": {{
      "@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"}}}}]}}]}}]}}}}"#
    );
    w("envoy.json", &cfg);
    let cpu = std::env::var("ENVOY_CPU").unwrap_or_else(|_| "1".into());
    let mut child = std::process::Command::new("taskset")
        .args(["-c", &cpu, envoy, "--concurrency", "1", "-c"])
        .arg(dir.join("envoy.json"))
        .args(["--log-level", "error", "--base-id"])
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("envoy");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "envoy did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    tcp_handshakes(addr, cc, n / 10 + 1);
    let before = cpu_of_pid(child.id());
    let wall = tcp_handshakes(addr, cc, n);
    let cpu = cpu_of_pid(child.id()) - before;
    println!(
        "envoy 1.40 (BoringSSL) TLS listener + echo filter: {:.0} handshakes per CPU-second ({:.1} us CPU each incl. accept and 1 byte echoed; wall {:.0}/s sequential)",
        n as f64 / cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
        n as f64 / wall.as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = arg("--handshakes", 2000);
    let mib = arg("--mib", 512) as usize;
    let tcp_n = arg("--tcp-handshakes", 2000);
    let args: Vec<String> = std::env::args().collect();
    let envoy = args
        .iter()
        .position(|a| a == "--envoy")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let certs = mtls::generate().expect("certificates");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load avg before: {}", load.trim());
    ktls_probe();
    let providers: [(&str, CryptoProvider); 2] = [
        ("ring", rustls::crypto::ring::default_provider()),
        ("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider()),
    ];
    for (name, p) in providers {
        let p = Arc::new(p);
        let (sc, cc) = configs(&p, &certs);
        bench_handshakes(name, &sc, &cc, n);
        bench_records(name, &sc, &cc, mib);
        if envoy.is_some() {
            let (addr, h) = rustls_tcp_server(sc.clone(), tcp_n + tcp_n / 10 + 1);
            tcp_handshakes(addr, &cc, tcp_n / 10 + 1);
            tcp_handshakes(addr, &cc, tcp_n);
            let cpu = h.join().expect("server");
            println!(
                "{name}: rustls TLS server over TCP: {:.0} handshakes per CPU-second ({:.1} us CPU each incl. accept and 1 byte each way; warm-up included in CPU, {} + {})",
                (tcp_n + tcp_n / 10 + 1) as f64 / cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / (tcp_n + tcp_n / 10 + 1) as f64,
                tcp_n / 10 + 1,
                tcp_n
            );
        }
    }
    if let Some(e) = envoy {
        let p = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (_, cc) = configs(&p, &certs);
        envoy_server(&e, &certs, tcp_n, &cc);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load avg after: {}", load.trim());
}
