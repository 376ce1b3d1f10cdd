//! The bench tools against each other through real sockets: every load generator gets only good
//! answers from its echo server, and `dubbo-load` counts a peer that does not speak Dubbo
//! responses as errors; `dubbo-tls-load` handshakes with a TLS relay and refuses a wrong server
//! identity. No assertion on timings. Ports 31880-31899, loopback only; every child
//! is killed and reaped on drop, even when an assertion fails.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::report::LoadReport;

struct Server(Child);

impl Server {
    fn start(bin: &str, addr: &str) -> Server {
        let child = Command::new(bin)
            .args(["--listen", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "{bin} did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn load(bin: &str, args: &[&str]) -> LoadReport {
    let out = Command::new(bin)
        .args(args)
        .args(["--duration", "300ms", "--warmup", "100ms"])
        .stderr(Stdio::null())
        .output()
        .expect("run load generator");
    assert!(out.status.success(), "{bin} {args:?} failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[test]
fn dubbo_closed_and_open_loop_against_dubbo_echo() {
    let _echo = Server::start(env!("CARGO_BIN_EXE_dubbo-echo"), "127.0.0.1:31880");
    let load_bin = env!("CARGO_BIN_EXE_dubbo-load");

    let closed = load(
        load_bin,
        &[
            "--target",
            "127.0.0.1:31880",
            "--connections",
            "2",
            "--pipeline",
            "4",
        ],
    );
    assert_eq!(closed.mode, "closed");
    assert_eq!(closed.errors.total(), 0, "{:?}", closed.errors);
    assert!(closed.measured > 0 && closed.received >= closed.measured);
    assert!(closed.sent >= closed.received);
    assert!(closed.latency_us.p50 > 0.0 && closed.latency_us.p50 <= closed.latency_us.max);
    assert!(!closed.cdf.is_empty());

    let open = load(
        load_bin,
        &[
            "--target",
            "127.0.0.1:31880",
            "--connections",
            "2",
            "--rate",
            "2000",
        ],
    );
    assert_eq!(open.mode, "open");
    assert_eq!(open.errors.total(), 0, "{:?}", open.errors);
    // Every request due in the run was sent and answered (2,000/s for 0.4 s).
    assert_eq!(open.sent, open.received);
    assert!(open.sent >= 700, "sent {}", open.sent);
}

#[test]
fn tcp_load_against_tcp_echo() {
    let _echo = Server::start(env!("CARGO_BIN_EXE_tcp-echo"), "127.0.0.1:31890");
    let r = load(
        env!("CARGO_BIN_EXE_tcp-load"),
        &[
            "--target",
            "127.0.0.1:31890",
            "--connections",
            "3",
            "--bytes",
            "64",
        ],
    );
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    assert!(r.measured > 0);
}

#[test]
fn dubbo_load_counts_a_peer_that_echoes_requests_as_decode_errors() {
    // tcp-echo sends each request frame back: a request where a response must be.
    let _echo = Server::start(env!("CARGO_BIN_EXE_tcp-echo"), "127.0.0.1:31891");
    let r = load(
        env!("CARGO_BIN_EXE_dubbo-load"),
        &[
            "--target",
            "127.0.0.1:31891",
            "--connections",
            "1",
            "--pipeline",
            "1",
            "--timeout",
            "100ms",
        ],
    );
    assert_eq!(r.measured, 0);
    assert!(r.errors.decode > 0, "{:?}", r.errors);
}

#[test]
fn dubbo_load_counts_connect_errors() {
    // Nothing listens on this port.
    let r = load(
        env!("CARGO_BIN_EXE_dubbo-load"),
        &["--target", "127.0.0.1:31899", "--connections", "2"],
    );
    assert_eq!(r.errors.connect, 2, "{:?}", r.errors);
    assert_eq!(r.measured, 0);
}

#[test]
fn grpc_load_against_grpc_echo() {
    let _echo = Server::start(env!("CARGO_BIN_EXE_grpc-echo"), "127.0.0.1:31870");
    let load_bin = env!("CARGO_BIN_EXE_grpc-load");
    let r = load(
        load_bin,
        &[
            "--target",
            "127.0.0.1:31870",
            "--connections",
            "4",
            "--streams",
            "8",
        ],
    );
    assert_eq!((r.tool.as_str(), r.pipeline), ("grpc-load", 8));
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    assert!(r.measured > 0 && r.received >= r.measured && r.sent >= r.received);
    // Messages larger than a DATA frame and than the default 64 KiB window, echoed back.
    let r = load(
        load_bin,
        &[
            "--target",
            "127.0.0.1:31870",
            "--connections",
            "2",
            "--streams",
            "2",
            "--payload",
            "200000",
        ],
    );
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    assert!(r.measured > 0);
}

#[test]
fn grpc_load_counts_a_peer_that_is_not_http2() {
    let _echo = Server::start(env!("CARGO_BIN_EXE_tcp-echo"), "127.0.0.1:31892");
    let r = load(
        env!("CARGO_BIN_EXE_grpc-load"),
        &["--target", "127.0.0.1:31892", "--timeout", "100ms"],
    );
    assert_eq!(r.measured, 0);
    assert!(r.errors.total() > 0, "{:?}", r.errors);
}

/// A mutual-TLS terminator in front of `upstream`, with the bench's server certificate: one
/// thread per connection, handshake then bytes relayed both ways. Runs until the test ends.
fn tls_relay(listen: &str, upstream: &'static str, files: &bench::mtls::Files) {
    use rustls::pki_types::pem::PemObject;
    use std::io::{Read, Write};
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(&files.ca).expect("ca"))
        .expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.server_key).expect("key");
    let chain =
        vec![rustls::pki_types::CertificateDer::from_pem_file(&files.server_cert).expect("cert")];
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config"),
    );
    let listener = std::net::TcpListener::bind(listen).expect("bind");
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let Ok(mut up) = TcpStream::connect(upstream) else {
                    return;
                };
                let mut buf = [0u8; 16 * 1024];
                // One call at a time per connection: read a request, relay the answer.
                loop {
                    let n = match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if up.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    let n = match up.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[test]
fn dubbo_tls_load_handshakes_and_checks_the_server_identity() {
    let _echo = Server::start(env!("CARGO_BIN_EXE_dubbo-echo"), "127.0.0.1:31881");
    let dir = std::env::temp_dir().join(format!("dubbo-tls-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let files = bench::mtls::write_files(&dir).expect("certificates");
    tls_relay("127.0.0.1:31882", "127.0.0.1:31881", &files);
    let (ca, cert, key) = (
        files.ca.display().to_string(),
        files.client_cert.display().to_string(),
        files.client_key.display().to_string(),
    );
    let base = [
        "--target",
        "127.0.0.1:31882",
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--connections",
        "2",
        "--calls-per-connection",
        "2",
    ];
    let bin = env!("CARGO_BIN_EXE_dubbo-tls-load");
    let r = load(bin, &base);
    assert!(r.handshakes > 0, "{r:?}");
    assert!(r.measured >= r.handshakes, "{r:?}");
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);

    // A server without the expected SPIFFE id is refused: every attempt a connect error.
    let mut wrong = base.to_vec();
    wrong.extend(["--server-san", "spiffe://cluster.local/ns/bench/sa/other"]);
    let r = load(bin, &wrong);
    assert_eq!((r.handshakes, r.measured), (0, 0), "{r:?}");
    assert!(r.errors.connect > 0, "{:?}", r.errors);
    let _ = std::fs::remove_dir_all(&dir);
}
