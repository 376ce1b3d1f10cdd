//! Shared helpers for tests that run the real `ringside` binary.
#![allow(dead_code)]

pub mod dubbo;
pub mod envoy;
pub mod grpc;
pub mod h2;
pub mod http1;
pub mod peers;
pub mod pki;
pub mod xds;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RINGSIDE: &str = env!("CARGO_BIN_EXE_ringside");

/// A port nobody listens on right now, and one this test process has not handed out before.
///
/// Tests in one binary run concurrently, and the kernel may give a released port out again at
/// once: two tests on one port would share a SO_REUSEPORT listener (or one control socket path,
/// `$TMPDIR/ringside-<euid>/ringside-<admin port>.sock`) and talk to each other's ringside.
///
/// Ports come from 20000-29999, below the kernel's ephemeral range (32768-60999 here): a port
/// from the ephemeral range that a test's listener releases and binds again (a listener
/// removed by one xDS push and added back by the next) can meanwhile become the local port of
/// any process's outgoing connection, and the second bind then fails with EADDRINUSE
/// (`istio::ringside_acks_what_envoy_acks_for_istiod_sidecar_config` failed so in scripts/test).
/// Nothing connects from these ports on its own. The bench's fixed ports (30000-31999) are
/// above them.
///
/// Test binaries that run at the same time (two `cargo test` runs on one machine) must not hand
/// out the same port either: a port is free to bind until the process it was given to starts
/// its listener, and a second process's Envoy or ringside listening on it too (both set
/// SO_REUSEPORT) would take half its connections (`tls::istio_metrics_name_the_upstreams_
/// principal_on_outbound_grpc_calls` failed so: its TLS handshake went to another test's
/// plaintext listener and timed out). So a port is also claimed with an exclusive lock on
/// `$TMPDIR/ringside-test-ports/PORT`, held until this process exits (the kernel drops it then:
/// nothing stale is left behind).
pub fn free_port() -> u16 {
    #[allow(clippy::disallowed_types)]
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    #[allow(clippy::disallowed_types)]
    static CLAIMS: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    const FIRST: u32 = 20000;
    const COUNT: u32 = 10000;
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // Test binaries that run at the same time start apart.
    let start = std::process::id().wrapping_mul(2654435761) % COUNT;
    for k in 0..COUNT {
        let port = (FIRST + (start + given.len() as u32 * 7 + k) % COUNT) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            let Some(claim) = claim_port(port) else {
                continue; // another test process holds it
            };
            CLAIMS.lock().unwrap_or_else(|e| e.into_inner()).push(claim);
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// The lock on `$TMPDIR/ringside-test-ports/PORT` that marks `port` as this process's, or
/// None when another process holds it.
fn claim_port(port: u16) -> Option<std::fs::File> {
    let dir = std::env::temp_dir().join("ringside-test-ports");
    std::fs::create_dir_all(&dir).expect("create the test port claims directory");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
        .expect("open a test port claim file");
    match f.try_lock() {
        Ok(()) => Some(f),
        Err(std::fs::TryLockError::WouldBlock) => None,
        Err(std::fs::TryLockError::Error(e)) => panic!("lock test port claim {port}: {e}"),
    }
}

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        // Unique within the process (a counter) and across processes (the pid).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("ringside-test-{tag}-{}-{n}", std::process::id()));
        // A leftover of an earlier process with the same pid is removed, never shared.
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        TempDir(p)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running ringside, killed (and reaped) on drop.
pub struct Ringside {
    pub child: Child,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub config: String,
}

impl Ringside {
    /// Starts `ringside run` with `config` (which must put admin on `admin`) and waits for
    /// `/ready`.
    pub fn start(config: &str, admin: SocketAddr, extra: &[&str]) -> Ringside {
        Self::start_with(config, admin, extra, |_| {})
    }

    pub fn start_with(
        config: &str,
        admin: SocketAddr,
        extra: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Ringside {
        Self::start_wrapped(&[], config, admin, extra, tweak)
    }

    /// [`Ringside::start_with`] through a wrapper program (e.g. `setpriv --reuid 1337 ...`):
    /// runs `wrapper... ringside run --config ...`.
    pub fn start_wrapped(
        wrapper: &[&str],
        config: &str,
        admin: SocketAddr,
        extra: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Ringside {
        let dir = TempDir::new("rs");
        let path = dir.write("ringside.yaml", config);
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(RINGSIDE);
                c
            }
            None => Command::new(RINGSIDE),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RINGSIDE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let child = cmd.spawn().expect("spawn ringside");
        let mut r = Ringside {
            child,
            admin,
            dir,
            config: config.to_string(),
        };
        r.wait_ready();
        r
    }

    /// Starts a successor with `--upgrade` and waits until it is the one answering the admin
    /// API (the predecessor then drains and exits on its own).
    pub fn upgrade(&self, extra: &[&str]) -> Ringside {
        self.upgrade_with(extra, |_| {})
    }

    /// [`Ringside::upgrade`] with `tweak` applied to the successor's command (environment).
    pub fn upgrade_with(&self, extra: &[&str], tweak: impl FnOnce(&mut Command)) -> Ringside {
        let mut args = vec!["--upgrade"];
        args.extend_from_slice(extra);
        let dir = TempDir::new("rs-up");
        let path = dir.write("ringside.yaml", &self.config);
        let mut cmd = Command::new(RINGSIDE);
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RINGSIDE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let child = cmd.spawn().expect("spawn successor");
        let mut r = Ringside {
            child,
            admin: self.admin,
            dir,
            config: self.config.clone(),
        };
        let pid = r.child.id() as u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = r.child.try_wait() {
                let mut err = String::new();
                if let Some(e) = r.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("successor exited early with {status}: {err}");
            }
            if let Ok((200, body)) = http(self.admin, "GET", "/server_info") {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if v["pid"].as_u64() == Some(pid) && v["state"] == "LIVE" {
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "successor not serving in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open file descriptors of the process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("ringside exited early with {status}: {err}");
            }
            if let Ok((200, _)) = http(self.admin, "GET", "/ready") {
                return;
            }
            assert!(Instant::now() < deadline, "ringside not ready in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of stat `name` in `/stats` (`name: N`), if it is there.
    pub fn stat_value(&self, name: &str) -> Option<i64> {
        let (_, text) = self.get("/stats");
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path).expect("admin request")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for exit; returns the status and everything it wrote to stderr.
    pub fn wait_exit(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                return (status, err);
            }
            assert!(Instant::now() < deadline, "ringside did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Ringside {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what ringside logged.
        if std::thread::panicking() {
            let mut err = String::new();
            if let Some(e) = self.child.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            eprintln!("--- ringside stderr ---\n{err}--- end ---");
        }
    }
}

/// A binary of the `bench` crate (dubbo-echo, dubbo-load, ...), built next to ringside.
pub fn bench_bin(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(RINGSIDE).with_file_name(name);
    assert!(
        p.exists(),
        "{} missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// `bench`'s `name` (dubbo-echo, grpc-echo, tcp-echo) listening on a free loopback port, its
/// output discarded: the process (killed on drop) and its address.
pub fn bench_echo(name: &str) -> (KillOnDrop, SocketAddr) {
    let addr = local(free_port());
    let child = Command::new(bench_bin(name))
        .args(["--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (KillOnDrop(child), addr)
}

/// A helper process (a bench server or load generator), killed and reaped on drop, so a failing
/// test does not leave it running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

/// The default control socket of the ringside whose admin API is on `admin`
/// (`$TMPDIR/ringside-<euid>/ringside-<admin port>.sock`).
pub fn control_socket(admin: SocketAddr) -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    std::env::temp_dir()
        .join(format!("ringside-{euid}"))
        .join(format!("ringside-{}.sock", admin.port()))
}

/// An echo server on its own threads; returns its address.
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 65536];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = c.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// One round trip through `addr` to an echo server behind it: what was sent comes back.
pub fn echo_round_trip(addr: SocketAddr) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping", "echoed through {addr}");
}

/// Runs `ringside run --config cfg`, a start that must fail, to its end: its exit code and
/// what it printed on stderr.
pub fn run_to_exit(cfg: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(RINGSIDE)
        .args(["run", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config with one tcp listener in front of `endpoints`.
pub fn tcp_config(admin: SocketAddr, listen: SocketAddr, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "admin:\n  address: {admin}\ndrain_timeout_ms: 10000\nlisteners:\n  - name: l4\n    address: {listen}\n    protocol: tcp\n    cluster: up\nclusters:\n  - name: up\n    endpoints: [{}]\n",
        eps.join(", ")
    )
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A loopback address whose TCP handshakes never complete: a listener with a backlog of 0
/// whose one accept-queue slot is taken by a connection nobody accepts, so the kernel drops
/// every further SYN (the client retransmits until its connect times out), like a black-holed
/// pod IP. Kept alive as long as the value lives.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _filler: Vec<TcpStream>,
}

impl BlackHole {
    pub fn new() -> BlackHole {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // SAFETY: listen(2) on a socket this function owns; Linux lets a listening socket's
        // backlog be changed by calling listen again.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(rc, 0, "listen(0): {}", std::io::Error::last_os_error());
        // Backlog 0 holds one established connection; a second fills any slack.
        let mut filler = Vec::new();
        for _ in 0..2 {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                filler.push(s);
            }
        }
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "the black hole still completes handshakes"
        );
        BlackHole {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }
}

/// Waits (up to 10 s) until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}
