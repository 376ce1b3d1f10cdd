//! gRPC / Triple peers installed by scripts/install-test-deps: the grpcio Greeter server and
//! client (tests/peers/grpc/), the apache-dubbo Triple server and client
//! (tests/peers/dubbo_triple/), and h2load (Debian nghttp2-client) with a gRPC-framed
//! HelloRequest body. Both clients print the same JSON line, parsed into [`CallOutcome`]; both
//! servers take the same flags (`--name` echoed in every reply, `--delay-ms`).
//!
//! grpcio's insecure channels speak HTTP/2 with prior knowledge (h2c, no Upgrade), as does the
//! Dubbo SDK and h2load with an `http://` URI.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::peers::{require, root};

/// Which implementation a peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// PyPI grpcio 1.85.1.
    Grpc,
    /// PyPI apache-dubbo 3.0.0b1 (the Python Dubbo SDK, Triple).
    DubboTriple,
}

impl Peer {
    fn dir(self) -> &'static str {
        match self {
            Peer::Grpc => "grpc",
            Peer::DubboTriple => "dubbo_triple",
        }
    }

    /// `python tests/peers/<dir>/<script>` from the test venv, stdin closed.
    pub fn command(self, script: &str) -> Command {
        let python = require(root().join(".cache/venv/bin/python"));
        let mut c = Command::new(python);
        c.arg(root().join("tests/peers").join(self.dir()).join(script))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null());
        c
    }
}

/// The Greeter method a client calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Call {
    #[default]
    Unary,
    ServerStream,
    ClientStream,
    Bidi,
}

impl Call {
    pub fn arg(self) -> &'static str {
        match self {
            Call::Unary => "unary",
            Call::ServerStream => "server_stream",
            Call::ClientStream => "client_stream",
            Call::Bidi => "bidi",
        }
    }
}

/// A Greeter server process (either peer), killed and reaped on drop.
pub struct GrpcServer {
    pub child: Child,
    pub peer: Peer,
    pub port: u16,
    pub name: String,
    /// The server's stderr (the Dubbo SDK logs there), shown when a test fails.
    pub log: PathBuf,
}

impl GrpcServer {
    /// Starts the grpcio server on `port` (0: a free one, read back from its READY line) and
    /// waits until it listens. `extra`: `--delay-ms MS`, `--status CODE --message TEXT`, ...
    pub fn start(port: u16, name: &str, extra: &[&str]) -> GrpcServer {
        Self::start_peer(Peer::Grpc, port, name, extra)
    }

    /// Starts the apache-dubbo Triple server (same flags but `--status`).
    pub fn start_triple(port: u16, name: &str, extra: &[&str]) -> GrpcServer {
        Self::start_peer(Peer::DubboTriple, port, name, extra)
    }

    pub fn start_peer(peer: Peer, port: u16, name: &str, extra: &[&str]) -> GrpcServer {
        let log = std::env::temp_dir().join(format!(
            "ringside-test-{}-{}-{}-{}.log",
            peer.dir(),
            name,
            std::process::id(),
            super::free_port()
        ));
        let err = std::fs::File::create(&log).expect("server log file");
        let mut child = peer
            .command("server.py")
            .args(["--port", &port.to_string(), "--name", name])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn python server");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
                if let Some(rest) = l.strip_prefix("READY port=") {
                    let p = rest.split_whitespace().next().unwrap_or("");
                    break p.parse::<u16>().expect("READY port=N");
                }
            }
            if let Ok(Some(s)) = child.try_wait() {
                panic!(
                    "{peer:?} server {name} exited ({s}) before READY: {}",
                    tail(&log)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{peer:?} server {name} not READY in 30 s: {}", tail(&log));
            }
        };
        GrpcServer {
            child,
            peer,
            port,
            name: name.to_string(),
            log,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        super::local(self.port)
    }

    /// SIGTERM, then waits for the exit (at most 10 s, then SIGKILL). Ok(exit code); Err says
    /// whether the server died of a signal or did not exit in time.
    pub fn terminate(&mut self) -> Result<i32, String> {
        let sent = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        while sent.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s
                    .code()
                    .ok_or_else(|| format!("{} died of {s} after SIGTERM", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!("{} still running 10 s after SIGTERM", self.name))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {:?} server {} stderr ---\n{}--- end ---",
                self.peer,
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// What a client is asked to do; `CallOpts::default()` is one unary call, 5 s deadline.
#[derive(Clone, Debug)]
pub struct CallOpts {
    pub call: Call,
    /// unary: calls one after another on one channel; server_stream: replies asked for;
    /// client_stream and bidi: requests sent.
    pub count: u32,
    pub payload_bytes: usize,
    pub timeout_s: f64,
    /// Request metadata (tri-service-version, tri-service-group, x-user, ...).
    pub metadata: Vec<(String, String)>,
    /// The service part of `:path` (default helloworld.Greeter).
    pub service: Option<String>,
    /// grpcio only: gRPC's transparent retries of calls the server never saw (calls queued on
    /// a connection when a GOAWAY arrives; RFC 9113 6.8 streams above the last stream id).
    pub transparent_retries: bool,
    /// grpcio only: a TLS channel (mutual when `cert` is set) instead of h2c.
    pub tls: Option<ClientTls>,
    /// grpcio only: the calls' `:authority` (default: the target).
    pub authority: Option<String>,
    /// Metadata keys whose value differs per unary call: call i sends `v{i}`.
    pub vary: Vec<String>,
}

/// A grpcio TLS channel: PEM files, and the name the server certificate is checked against
/// (`grpc.ssl_target_name_override`; it must be one of the certificate's DNS SANs).
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: Option<(PathBuf, PathBuf)>,
    pub authority: String,
}

impl Default for CallOpts {
    fn default() -> Self {
        CallOpts {
            call: Call::Unary,
            count: 1,
            payload_bytes: 0,
            timeout_s: 5.0,
            metadata: Vec::new(),
            service: None,
            transparent_retries: false,
            tls: None,
            authority: None,
            vary: Vec::new(),
        }
    }
}

impl CallOpts {
    pub fn new(call: Call) -> CallOpts {
        CallOpts {
            call,
            ..CallOpts::default()
        }
    }
    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }
    pub fn payload(mut self, bytes: usize) -> Self {
        self.payload_bytes = bytes;
        self
    }
    pub fn timeout_s(mut self, s: f64) -> Self {
        self.timeout_s = s;
        self
    }
    pub fn meta(mut self, k: &str, v: &str) -> Self {
        self.metadata.push((k.into(), v.into()));
        self
    }
    pub fn service(mut self, s: &str) -> Self {
        self.service = Some(s.into());
        self
    }
    pub fn transparent_retries(mut self) -> Self {
        self.transparent_retries = true;
        self
    }
    pub fn authority(mut self, a: &str) -> Self {
        self.authority = Some(a.into());
        self
    }
    pub fn vary(mut self, key: &str) -> Self {
        self.vary.push(key.into());
        self
    }
    pub fn tls(mut self, t: ClientTls) -> Self {
        self.tls = Some(t);
        self
    }
}

/// One reply as the client saw it.
#[derive(Clone, Debug, Deserialize)]
pub struct Reply {
    /// `--name` of the server that answered.
    pub server: String,
    pub seq: i64,
    pub message: String,
    pub payload_bytes: u64,
    /// Payload bytes the server received for this reply's request(s).
    pub received_bytes: u64,
    /// Request metadata the server saw (tri-* and x-* keys, traceparent, tracestate, b3),
    /// "k=v", sorted.
    pub metadata: Vec<String>,
}

/// The JSON line a client prints.
#[derive(Clone, Debug, Deserialize)]
pub struct CallOutcome {
    pub ok: bool,
    /// grpc-status name: OK, UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED, ...
    pub code: String,
    pub code_number: i32,
    pub details: String,
    pub replies: Vec<Reply>,
    /// Every echoed payload equal to what was sent (client_stream: the byte count).
    pub payload_ok: bool,
    #[serde(default)]
    pub trailers: BTreeMap<String, String>,
    /// The response headers' metadata (the last call's, grpcio only).
    #[serde(default)]
    pub initial: BTreeMap<String, String>,
    pub elapsed_ms: f64,
}

impl CallOutcome {
    /// The server names that answered, in order.
    pub fn servers(&self) -> Vec<&str> {
        self.replies.iter().map(|r| r.server.as_str()).collect()
    }
}

/// Runs `peer`'s client.py against `target` and parses its JSON line. Panics (with the
/// client's stderr) only if it printed no JSON line; a failed call is `ok: false`.
pub fn peer_call(peer: Peer, target: SocketAddr, opts: &CallOpts) -> CallOutcome {
    let mut cmd = peer.command("client.py");
    cmd.args(["--target", &target.to_string(), "--call", opts.call.arg()])
        .args(["--count", &opts.count.to_string()])
        .args(["--payload-bytes", &opts.payload_bytes.to_string()])
        .args(["--timeout-s", &opts.timeout_s.to_string()]);
    for (k, v) in &opts.metadata {
        cmd.arg("--metadata").arg(format!("{k}={v}"));
    }
    if let Some(s) = &opts.service {
        cmd.args(["--service", s]);
    }
    if opts.transparent_retries {
        cmd.arg("--transparent-retries");
    }
    if let Some(a) = &opts.authority {
        cmd.args(["--authority", a]);
    }
    for k in &opts.vary {
        cmd.args(["--vary-metadata", k]);
    }
    if let Some(t) = &opts.tls {
        cmd.arg("--tls-ca").arg(&t.ca);
        cmd.args(["--tls-authority", &t.authority]);
        if let Some((cert, key)) = &t.cert {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
    }
    let within = Duration::from_secs_f64(opts.timeout_s * opts.count.max(1) as f64 + 30.0);
    let out = run_with_deadline(cmd, within);
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<CallOutcome>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "{peer:?} client printed no outcome ({}):\nstdout: {stdout}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The grpcio client.
pub fn grpc_call(target: SocketAddr, opts: &CallOpts) -> CallOutcome {
    peer_call(Peer::Grpc, target, opts)
}

/// The apache-dubbo Triple client.
pub fn triple_call(target: SocketAddr, opts: &CallOpts) -> CallOutcome {
    peer_call(Peer::DubboTriple, target, opts)
}

/// Runs `cmd` to completion with stdout and stderr captured; kills it after `within`.
pub fn run_with_deadline(mut cmd: Command, within: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err_t = reader(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let s = child.wait().expect("wait");
            eprintln!("{cmd:?} killed after {within:?}");
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// `.cache/grpc/hello.bin`: one gRPC length-prefixed HelloRequest{name: "ringside"}.
pub fn h2load_body() -> PathBuf {
    require(root().join(".cache/grpc/hello.bin"))
}

/// h2load's summary. `succeeded` counts HTTP 2xx responses: h2load does not read grpc-status
/// (an UNIMPLEMENTED answer with :status 200 counts as succeeded), so tests that care check the
/// calls with the Python clients too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct H2loadSummary {
    pub total: u64,
    pub started: u64,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub req_per_s: f64,
    /// Everything h2load printed, for assertion messages.
    pub output: String,
}

/// Runs `h2load -n requests -c connections -m streams` (streams per connection) against
/// `http://target/helloworld.Greeter/SayHello` (prior-knowledge h2c) with the HelloRequest body
/// and gRPC headers; `extra` goes before the URI (e.g. `-H`, `tri-service-version: 1.0`).
/// Panics if h2load is missing or prints no summary.
pub fn h2load(
    target: SocketAddr,
    requests: u64,
    connections: u32,
    streams: u32,
    extra: &[&str],
) -> H2loadSummary {
    h2load_path(
        target,
        "/helloworld.Greeter/SayHello",
        requests,
        connections,
        streams,
        extra,
    )
}

/// [`h2load`] with another `:path`.
pub fn h2load_path(
    target: SocketAddr,
    path: &str,
    requests: u64,
    connections: u32,
    streams: u32,
    extra: &[&str],
) -> H2loadSummary {
    let mut cmd = Command::new("h2load");
    cmd.stdin(Stdio::null())
        .args(["-n", &requests.to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-m", &streams.to_string()])
        .arg(format!("--data={}", h2load_body().display()))
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(extra)
        .arg(format!("http://{target}{path}"));
    let out = match Command::new("h2load").arg("--version").output() {
        Ok(_) => run_with_deadline(cmd, Duration::from_secs(120)),
        Err(e) => panic!("h2load not found ({e}): run scripts/install-test-deps"),
    };
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    parse_h2load(&text).unwrap_or_else(|| panic!("no h2load summary in:\n{text}"))
}

/// Parses h2load's `finished in`, `requests:` and `status codes:` lines.
pub fn parse_h2load(text: &str) -> Option<H2loadSummary> {
    // "requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed, 0 errored, 0 timeout"
    // -> a lookup of the number before each word (0 when absent).
    fn counts(line: &str) -> impl Fn(&str) -> u64 {
        let c: BTreeMap<String, u64> = line
            .split(',')
            .filter_map(|part| {
                let mut w = part.split_whitespace();
                let n = w.next()?.parse().ok()?;
                Some((w.next()?.to_string(), n))
            })
            .collect();
        move |k| c.get(k).copied().unwrap_or(0)
    }
    let mut s = H2loadSummary {
        output: text.to_string(),
        ..H2loadSummary::default()
    };
    let mut seen = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("requests:") {
            let get = counts(rest);
            s.total = get("total");
            s.started = get("started");
            s.done = get("done");
            s.succeeded = get("succeeded");
            s.failed = get("failed");
            s.errored = get("errored");
            s.timeout = get("timeout");
            seen = true;
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            let get = counts(rest);
            s.status_2xx = get("2xx");
            s.status_3xx = get("3xx");
            s.status_4xx = get("4xx");
            s.status_5xx = get("5xx");
        } else if let Some(rest) = line.strip_prefix("finished in") {
            // "finished in 226.49ms, 1766.06 req/s, 161.53KB/s"
            s.req_per_s = rest
                .split(',')
                .nth(1)
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        }
    }
    seen.then_some(s)
}
