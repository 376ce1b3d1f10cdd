//! Real peers installed by scripts/install-test-deps: the sofa-rpc-node Dubbo provider and
//! consumer, and the dubbo-ssl-python consumer.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `path`, or a panic that says to run scripts/install-test-deps.
pub fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-test-deps",
        path.display()
    );
    path
}

pub fn node(script: &str) -> Command {
    let modules = require(root().join(".cache/node/node_modules"));
    let mut c = Command::new("node");
    c.arg(root().join("tests/peers").join(script))
        .env("NODE_PATH", modules)
        .stdin(Stdio::null());
    c
}

pub fn python_consumer() -> Command {
    let python = require(root().join(".cache/venv/bin/python"));
    let mut c = Command::new(python);
    c.arg(root().join("tests/peers/consumer.py"))
        .stdin(Stdio::null());
    c
}

/// A node provider process, killed on drop.
pub struct NodeProvider {
    pub child: Child,
    pub port: u16,
}

impl NodeProvider {
    pub fn start(port: u16, name: &str, extra: &[&str]) -> NodeProvider {
        let mut child = node("provider.js")
            .args(["--port", &port.to_string(), "--name", name])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node provider");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.starts_with("READY") => break,
                _ => {}
            }
            if let Ok(Some(s)) = child.try_wait() {
                panic!("node provider exited: {s}");
            }
            assert!(Instant::now() < deadline, "node provider not ready");
        }
        NodeProvider { child, port }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProvider {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a consumer command to completion; returns (success, JSON lines).
pub fn run_consumer(mut cmd: Command) -> (bool, Vec<serde_json::Value>) {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run consumer");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.success(), lines)
}

/// The sofa-rpc-node consumer making `count` calls of `method(args)` (a JSON array) to `address`,
/// `interval_ms` apart, on one connection it keeps (it ignores Dubbo readonly events and
/// reconnects only once the connection is closed); returns like [`run_consumer`].
pub fn node_consumer_loop(
    address: std::net::SocketAddr,
    method: &str,
    args: &str,
    count: u32,
    interval_ms: u32,
) -> (bool, Vec<serde_json::Value>) {
    let mut c = node("consumer.js");
    c.args(["--address", &address.to_string(), "--method", method])
        .args(["--args", args, "--count", &count.to_string()])
        .args(["--interval-ms", &interval_ms.to_string()]);
    run_consumer(c)
}

/// Runs `script` (`python -c`) with the test venv's Python, `input` on its stdin; returns its
/// standard output. A failing script panics with `what`, its standard error and the input.
pub fn python_script(script: &str, input: &str, what: &str) -> Vec<u8> {
    use std::io::Write;
    let python = require(root().join(".cache/venv/bin/python"));
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
