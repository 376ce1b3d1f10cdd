//! HTTP/1.1 peers of tests/peers/http1/peer.py (Python's http.server and http.client).

use std::net::SocketAddr;

use serde_json::Value;

use super::peers::root;

/// An HTTP/1.1 server of tests/peers/http1/peer.py (Python's http.server, keep-alive), killed
/// on drop; it answers each request with a line naming itself (see the script).
pub struct Http1Server(std::process::Child);

impl Http1Server {
    pub fn start(host: &str, port: u16, name: &str) -> Http1Server {
        use std::io::BufRead;
        let python = super::peers::require(root().join(".cache/venv/bin/python"));
        let mut child = std::process::Command::new(python)
            .arg(root().join("tests/peers/http1/peer.py"))
            .args([
                "server",
                "--host",
                host,
                "--port",
                &port.to_string(),
                "--name",
                name,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "http1 server {name}");
        Http1Server(child)
    }
}

impl Drop for Http1Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The outcome of each request in `requests` (JSON, see tests/peers/http1/peer.py) sent by
/// Python's http.client to `target` on one keep-alive connection: `STATUS BODY` (the body's
/// line names the server that answered and what it received), `error ...` when it failed.
pub fn http1_outcomes(target: SocketAddr, requests: &Value) -> Vec<String> {
    http1_client_outcomes(target, requests, &[])
}

/// [`http1_outcomes`] with more arguments for the client (TLS); an outcome of a TLS client
/// ends with the ALPN protocol negotiated (`alpn=null`: none).
pub fn http1_client_outcomes(target: SocketAddr, requests: &Value, args: &[String]) -> Vec<String> {
    let python = super::peers::require(root().join(".cache/venv/bin/python"));
    let mut child = std::process::Command::new(python)
        .arg(root().join("tests/peers/http1/peer.py"))
        .args(["client", "--target", &target.to_string()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(requests.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            // A request that needed a new connection (the first, or after a close) says so.
            let new = if v["reused"] == true { "" } else { "[new] " };
            let alpn = match v.get("alpn") {
                Some(a) => format!(" alpn={a}"),
                None => String::new(),
            };
            match v["status"].as_u64() {
                Some(s) => format!(
                    "{new}{s} {}{alpn}",
                    v["body"].as_str().unwrap_or("").trim_end()
                ),
                None => format!("error {}", v["error"]),
            }
        })
        .collect()
}

/// An outcome of [`http1_outcomes`] as two proxies' are compared: a local answer's body is
/// each proxy's own words, so only its status (and whether it needed a new connection) counts.
pub fn http1_comparable(o: &str) -> String {
    let (new, rest) = match o.strip_prefix("[new] ") {
        Some(rest) => ("[new] ", rest),
        None => ("", o),
    };
    match rest.split_once(' ') {
        Some((s, _)) if s.parse::<u16>().is_ok_and(|s| s >= 400) => format!("{new}{s}"),
        _ => o.to_string(),
    }
}

/// The HTTP/2 server of tests/peers/http1/h2_server.py, killed on drop.
pub struct H2Server(std::process::Child);

impl H2Server {
    pub fn start(port: u16, name: &str) -> H2Server {
        H2Server::start_with(port, name, &[])
    }

    /// [`H2Server::start`] with more of the server's options (`--max-streams L`).
    pub fn start_with(port: u16, name: &str, args: &[&str]) -> H2Server {
        use std::io::BufRead;
        let python = super::peers::require(root().join(".cache/venv/bin/python"));
        let mut child = std::process::Command::new(python)
            .arg(root().join("tests/peers/http1/h2_server.py"))
            .args(["--port", &port.to_string(), "--name", name])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "h2 server {name}");
        H2Server(child)
    }
}

impl Drop for H2Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tests/peers/http1/h2_frames.py: a raw HTTP/2 server that records the frames its clients
/// send (one line per event, "CONN SECONDS WHAT ...", seconds since the connection was
/// accepted), killed on drop.
pub struct H2Frames {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl H2Frames {
    /// `mute`: it answers neither requests nor PINGs.
    pub fn start(port: u16, mute: bool) -> H2Frames {
        use std::io::BufRead;
        let python = super::peers::require(root().join(".cache/venv/bin/python"));
        let mut child = std::process::Command::new(python)
            .arg(root().join("tests/peers/http1/h2_frames.py"))
            .args(["--port", &port.to_string()])
            .args(if mute { &["--mute"][..] } else { &[][..] })
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "h2_frames");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = lines.clone();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                keep.lock().unwrap().push(l);
            }
        });
        H2Frames { child, lines }
    }

    /// The events of connection `conn` (1: the first accepted) so far: (seconds, what).
    pub fn events(&self, conn: u32) -> Vec<(f64, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let n: u32 = it.next()?.parse().ok()?;
                let t: f64 = it.next()?.parse().ok()?;
                (n == conn).then(|| (t, it.next().unwrap_or("").to_string()))
            })
            .collect()
    }

    /// Waits (up to 5 s) until the peer has reported `n` events starting with `what` over all
    /// its connections. Its lines reach the test through a pipe and a reader thread, so a
    /// test that has just had an answer can look before the thread has taken them in (an
    /// `ACCEPT` missed that way failed `idle_timeout_and_max_connection_duration_like_envoy`
    /// once in scripts/test); the peer prints in order, so every line before the `n`th is in
    /// once it is.
    pub fn await_events(&self, what: &str, n: usize) {
        let count = || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.splitn(3, ' ').nth(2).is_some_and(|e| e.starts_with(what)))
                .count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while count() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u32 {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.ends_with(" ACCEPT"))
            .count() as u32
    }
}

impl Drop for H2Frames {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
