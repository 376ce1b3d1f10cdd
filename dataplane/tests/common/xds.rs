//! The test ADS server (tests/peers/xds/server.py, xds-protos + grpcio) and a client for its HTTP
//! control API: start it, `put` a snapshot (Envoy's proto3 JSON), read the requests clients sent
//! (ACKs, NACKs with their error_detail), wait for an ACK, restart it on the same ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::peers::{require, root};
use super::{local, TempDir};

/// The short type names the server uses in /requests and /responses.
pub const LDS: &str = "lds";
pub const RDS: &str = "rds";
pub const CDS: &str = "cds";
pub const EDS: &str = "eds";
pub const SDS: &str = "sds";

/// A running tests/peers/xds/server.py, killed on drop.
pub struct XdsServer {
    child: Child,
    /// The ADS (gRPC) port.
    pub port: u16,
    /// The HTTP control port.
    pub control: u16,
    dir: TempDir,
    stderr: PathBuf,
    /// The Unix socket it serves SDS (and ADS) on as well, as pilot-agent does.
    pub sds_socket: PathBuf,
}

impl XdsServer {
    /// On free ports, with an empty snapshot (version "0").
    pub fn start() -> XdsServer {
        Self::start_on(0, 0, None)
    }

    /// On `port` / `control` (0: pick), with `snapshot` (as for [`XdsServer::put`]) if given.
    pub fn start_on(port: u16, control: u16, snapshot: Option<&Value>) -> XdsServer {
        Self::start_with_sockets(port, control, snapshot, &[])
    }

    /// [`XdsServer::start_on`], serving gRPC on these Unix sockets as well (pilot-agent's
    /// `./etc/istio/proxy/XDS` and `./var/run/secrets/workload-spiffe-uds/socket`).
    pub fn start_with_sockets(
        port: u16,
        control: u16,
        snapshot: Option<&Value>,
        sockets: &[&std::path::Path],
    ) -> XdsServer {
        Self::start_with_args(port, control, snapshot, sockets, &[])
    }

    /// On a free port serving ADS over TLS only (as istiod's 15012) with `cert`/`key` (PEM
    /// files), requiring a client certificate `client_ca` signed when given.
    pub fn start_tls(cert: &str, key: &str, client_ca: Option<&str>) -> XdsServer {
        let mut args = vec!["--tls-cert", cert, "--tls-key", key];
        if let Some(ca) = client_ca {
            args.extend(["--tls-client-ca", ca]);
        }
        Self::start_with_args(0, 0, None, &[], &args)
    }

    /// [`XdsServer::start_with_sockets`] with more command-line arguments.
    pub fn start_with_args(
        port: u16,
        control: u16,
        snapshot: Option<&Value>,
        sockets: &[&std::path::Path],
        args: &[&str],
    ) -> XdsServer {
        let dir = TempDir::new("xds");
        let python = require(root().join(".cache/venv/bin/python"));
        let stderr = dir.0.join("stderr");
        let sds_socket = dir.0.join("sds.sock");
        let mut cmd = Command::new(python);
        cmd.arg(root().join("tests/peers/xds/server.py"))
            .args(["--port", &port.to_string()])
            .args(["--control-port", &control.to_string()])
            .arg("--sds-socket")
            .arg(&sds_socket)
            .args(
                sockets
                    .iter()
                    .flat_map(|s| [std::ffi::OsStr::new("--sds-socket"), s.as_os_str()]),
            )
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        if let Some(s) = snapshot {
            let f = dir.write("snapshot.json", &s.to_string());
            cmd.arg("--snapshot").arg(f);
        }
        let mut child = cmd.spawn().expect("spawn xds server");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let (port, control) = loop {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                if let Some(rest) = l.strip_prefix("READY ") {
                    let field = |k: &str| -> u16 {
                        rest.split_whitespace()
                            .find_map(|f| f.strip_prefix(k))
                            .and_then(|v| v.parse().ok())
                            .expect("READY port=P control=C")
                    };
                    break (field("port="), field("control="));
                }
            }
            if let Ok(Some(s)) = child.try_wait() {
                let err = std::fs::read_to_string(&stderr).unwrap_or_default();
                panic!("xds server exited: {s}: {err}");
            }
            assert!(Instant::now() < deadline, "xds server not ready");
        };
        XdsServer {
            child,
            port,
            control,
            dir,
            stderr,
            sds_socket,
        }
    }

    /// The ADS address, for a bootstrap's xds cluster.
    pub fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (code, text) =
            http_body(local(self.control), method, path, body).expect("xds control request");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (code, v)
    }

    /// Replaces the whole snapshot and pushes it to every stream:
    /// `{"version": "v2", "listeners": [...], "routes": [...], "clusters": [...],
    /// "endpoints": [...]}` in Envoy's proto3 JSON (Any fields with `@type`). Err: the server's
    /// message for a resource that does not parse.
    pub fn put(&self, snapshot: &Value) -> Result<Value, String> {
        match self.call("PUT", "/resources", &snapshot.to_string()) {
            (200, v) => Ok(v),
            (code, v) => Err(format!(
                "{code}: {}",
                v["error"].as_str().unwrap_or(&v.to_string())
            )),
        }
    }

    /// Changes only the given resources (`remove`: names per key) under a new version and
    /// pushes only their types: `{"version": "v3", "secrets": [...]}`.
    pub fn patch(&self, change: &Value) -> Result<Value, String> {
        match self.call("PATCH", "/resources", &change.to_string()) {
            (200, v) => Ok(v),
            (code, v) => Err(format!(
                "{code}: {}",
                v["error"].as_str().unwrap_or(&v.to_string())
            )),
        }
    }

    /// The snapshot as last given.
    pub fn resources(&self) -> Value {
        self.call("GET", "/resources", "").1
    }

    /// Every request received, in order (see server.py for the fields).
    pub fn requests(&self) -> Vec<Value> {
        list(self.call("GET", "/requests", "").1)
    }

    /// Every response sent, in order.
    pub fn responses(&self) -> Vec<Value> {
        list(self.call("GET", "/responses", "").1)
    }

    /// The connected streams: {id, mode, node, cluster, types}.
    pub fn streams(&self) -> Vec<Value> {
        list(self.call("GET", "/streams", "").1)
    }

    /// Forgets the recorded requests and responses.
    pub fn reset(&self) {
        self.call("POST", "/reset", "");
    }

    /// The first request that satisfies `pred`, waiting up to `within`.
    pub fn wait_request(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let reqs = self.requests();
            if let Some(r) = reqs.iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {within:?}; requests: {}",
                serde_json::to_string_pretty(&reqs).unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ACK of `version` for type `ty` (lds/rds/cds/eds): a request without error_detail
    /// whose response_nonce is that of a response carrying `version` (and, SotW, whose
    /// version_info is `version`).
    pub fn wait_ack(&self, ty: &str, version: &str) -> Value {
        self.wait_request(
            Duration::from_secs(15),
            &format!("{ty} ACK of {version}"),
            |r| {
                r["type"] == ty
                    && r["ack"] == true
                    && r["acked_version"] == version
                    && (r["mode"] == "delta" || r["version_info"] == version)
            },
        )
    }

    /// The NACK of `version` for `ty`; its `error_detail.message` says why.
    pub fn wait_nack(&self, ty: &str, version: &str) -> Value {
        self.wait_request(
            Duration::from_secs(15),
            &format!("{ty} NACK of {version}"),
            |r| r["type"] == ty && r["ack"] == false && r["acked_version"] == version,
        )
    }

    /// SIGTERM; the exit code, or why there is none.
    pub fn terminate(&mut self) -> Result<i32, String> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let sent = Instant::now();
        while sent.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code().ok_or_else(|| format!("xds server died of {s}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err("xds server still running 10 s after SIGTERM".into())
    }

    /// Stops the server (SIGTERM, must exit 0) and starts a new one on the same ports with the
    /// same snapshot; its request log starts empty. Clients must reconnect and resubscribe.
    pub fn restart(&mut self) {
        let snapshot = self.resources();
        assert_eq!(self.terminate(), Ok(0), "xds server exit");
        let next = XdsServer::start_on(self.port, self.control, Some(&snapshot));
        *self = next;
    }

    /// What the server wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for XdsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- xds server stderr ---\n{}--- end ---", self.stderr());
        }
        let _ = &self.dir;
    }
}

fn list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => panic!("expected a JSON list, got {other}"),
    }
}

/// One HTTP/1.1 request with a body (Connection: close); returns (status, body).
pub fn http_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// A chunked HTTP/1.1 body, joined (Envoy's admin sends large answers so).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}
