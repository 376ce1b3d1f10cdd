//! The container image (Containerfile, scripts/build-image) built with podman and run with
//! `--network=host`: `/ready` answers, the process runs as uid 1337, a Dubbo call from the
//! sofa-rpc-node consumer goes through ringside in the container to the node provider on the
//! host, and SIGTERM makes PID 1 drain and exit 0 within the drain time. Once under podman's
//! default seccomp profile (io_uring blocked: the epoll backend) and once under the shipped
//! image/seccomp-io_uring.json (io_uring).
//!
//! Needs podman (scripts/install-test-deps). Where podman cannot run containers at all (no
//! podman binary, or not root), the tests say so and pass vacuously.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::peers::{node, root, run_consumer, NodeProvider};
use common::{free_port, http, local, TempDir};

const IMAGE: &str = "localhost/ringside:image-test";
const DRAIN_MS: u64 = 3_000;

fn podman() -> Command {
    let mut c = Command::new(root().join("scripts/podman"));
    c.stdin(Stdio::null());
    c
}

fn output(mut c: Command, what: &str) -> Result<Output, String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Why podman cannot run here, if it cannot: then the tests skip.
fn podman_unusable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (rootful podman with --network=host)".into());
    }
    match Command::new("podman").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("podman is not installed (scripts/install-test-deps installs it)".into()),
    }
}

/// Builds the image once per test process (scripts/build-image --test-profile: reuses the
/// release build's crates, links a static binary, checks it is static and < 15 MB).
fn build_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        let started = Instant::now();
        let mut c = Command::new(root().join("scripts/build-image"));
        c.args(["--test-profile", "--tag", IMAGE]);
        let out = output(c, "scripts/build-image")?;
        eprintln!(
            "{}image built in {:.1} s",
            String::from_utf8_lossy(&out.stdout),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// A running container, removed on drop (also when the test fails).
struct Container {
    name: String,
    child: Child,
    admin: SocketAddr,
}

impl Container {
    fn start(tag: &str, seccomp: Option<&str>, dir: &TempDir, admin: SocketAddr) -> Container {
        let name = format!("image-{tag}-{}", std::process::id());
        let mut c = podman();
        c.args(["run", "--rm", "--name", &name, "--network=host"]);
        if let Some(profile) = seccomp {
            c.arg("--security-opt")
                .arg(format!("seccomp={}", root().join(profile).display()));
        }
        c.arg("-v")
            .arg(format!("{}:/cfg:ro", dir.0.display()))
            .args(["-e", "RUST_LOG=info", IMAGE])
            .args(["run", "--config", "/cfg/ringside.yaml", "--shards", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn podman run");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "container {name} exited early with {status}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if let Ok((200, _)) = http(admin, "GET", "/ready") {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: /ready not answering");
            std::thread::sleep(Duration::from_millis(50));
        }
        Container { name, child, admin }
    }

    fn server_info(&self) -> serde_json::Value {
        let (code, body) = http(self.admin, "GET", "/server_info").unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The container's PID 1 as seen from the host.
    fn host_pid(&self) -> u32 {
        let mut c = podman();
        c.args(["inspect", "--format", "{{.State.Pid}}", &self.name]);
        let out = output(c, "podman inspect").unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// SIGTERM to PID 1; returns its exit code and how long it took to exit.
    fn terminate(&mut self) -> (Option<i32>, Duration) {
        let mut c = podman();
        c.args(["kill", "--signal", "TERM", &self.name]);
        output(c, "podman kill").unwrap();
        let t = Instant::now();
        let deadline = t + Duration::from_millis(DRAIN_MS + 10_000);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), t.elapsed());
            }
            assert!(Instant::now() < deadline, "{}: still running", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let mut c = podman();
            c.args(["rm", "--force", "--time", "0", &self.name]);
            let _ = c.output();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Builds the image, runs it (under `seccomp`, or podman's default profile), calls the node
/// provider through it, checks the I/O backend, then SIGTERM.
fn run_image(tag: &str, seccomp: Option<&str>, backend: &str) {
    if let Some(why) = podman_unusable() {
        eprintln!("skipped: {why}");
        return;
    }
    build_image();
    let provider_port = free_port();
    let _provider = NodeProvider::start(provider_port, "host", &[]);
    let (admin, listen) = (local(free_port()), local(free_port()));
    let dir = TempDir::new(&format!("image-{tag}"));
    dir.write(
        "ringside.yaml",
        &format!(
            "admin:\n  address: {admin}\ndrain_timeout_ms: {DRAIN_MS}\nlisteners:\n  - name: dubbo\n    address: {listen}\n    protocol: dubbo\n    cluster: host\nclusters:\n  - name: host\n    endpoints: [\"127.0.0.1:{provider_port}\"]\n    timeout_ms: 5000\n"
        ),
    );
    // TempDir is 0700 under some umasks; uid 1337 in the container must read the config.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut ct = Container::start(tag, seccomp, &dir, admin);

    let info = ct.server_info();
    let shards = info["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2, "{info}");
    for s in shards {
        assert_eq!(s["io_backend"], backend, "{info}");
    }
    if backend == "epoll" {
        let why = shards[0]["io_fallback_reason"].as_str().unwrap_or_default();
        assert!(why.contains("os error 38"), "ENOSYS expected: {info}");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", ct.host_pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().nth(1),
        Some("1337"),
        "runs as 1337: {uid}"
    );

    let mut c = node("consumer.js");
    c.args(["--address", &listen.to_string(), "--method", "echo"])
        .args(["--args", r#"["through the image"]"#, "--count", "3"]);
    let (ok, lines) = run_consumer(c);
    assert!(ok, "{lines:?}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["result"] == "through the image"),
        "{lines:?}"
    );
    let (_, stats) = http(admin, "GET", "/stats").unwrap();
    assert!(
        stats.contains("cluster.host.upstream_rq_total: 3"),
        "{stats}"
    );

    // An idle downstream connection is open while PID 1 drains.
    let _idle = std::net::TcpStream::connect(listen).unwrap();
    let (code, took) = ct.terminate();
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(
        took < Duration::from_millis(DRAIN_MS + 2_000),
        "drained in {took:?}, drain time {DRAIN_MS} ms"
    );
}

#[test]
fn image_serves_dubbo_on_epoll_under_the_default_seccomp_profile() {
    run_image("epoll", None, "epoll");
}

#[test]
fn image_serves_dubbo_on_io_uring_under_the_shipped_seccomp_profile() {
    run_image("uring", Some("image/seccomp-io_uring.json"), "io_uring");
}

#[test]
fn image_default_config_is_valid_and_the_image_is_small() {
    if let Some(why) = podman_unusable() {
        eprintln!("skipped: {why}");
        return;
    }
    build_image();
    let mut c = podman();
    c.args(["run", "--rm", "--name"])
        .arg(format!("image-validate-{}", std::process::id()))
        .args([IMAGE, "validate", "--config", "/etc/ringside/ringside.yaml"]);
    output(c, "validate the baked-in config").unwrap();
    let mut c = podman();
    c.args([
        "image",
        "inspect",
        "--format",
        "{{.Size}} {{.Config.User}} {{.Config.ExposedPorts}}",
        IMAGE,
    ]);
    let out = String::from_utf8(output(c, "podman image inspect").unwrap().stdout).unwrap();
    let mut f = out.split_whitespace();
    let size: u64 = f.next().unwrap().parse().unwrap();
    // Built with scripts/test's profile (no LTO): scripts/build-image --test-profile's bound;
    // the shipped (thin LTO) image's budget is 15 MB.
    assert!(size < 25_000_000, "image is {size} bytes");
    assert_eq!(f.next(), Some("1337:1337"), "{out}");
    for port in [15000, 15001, 15006, 15021, 15090] {
        assert!(
            out.contains(&format!("{port}/tcp")),
            "{port} exposed: {out}"
        );
    }
}
