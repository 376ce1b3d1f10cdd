//! Child processes of the runner: spawned pinned with `taskset`, registered so that every exit
//! path (normal return, SIGINT/SIGTERM/SIGHUP, panic) kills them, and reaped on drop.
//! Readiness is a signal, never a sleep: a TCP connect for the upstreams, `GET /ready` for
//! ringside and Envoy.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// PIDs of live children. A std `Mutex` is fine here: the runner is not the data path.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// How long a process may take to become ready.
pub const READY_TIMEOUT_MS: u64 = 15_000;

/// Kills every registered child (SIGKILL). Safe to call more than once.
pub fn kill_all() {
    let pids: Vec<u32> = match CHILDREN.lock() {
        Ok(mut c) => std::mem::take(&mut *c),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// Kills the children on SIGINT, SIGTERM and SIGHUP (then exits 130), and on panic (the
/// release profile aborts on panic, so no destructor would run).
pub fn install_cleanup() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all();
        hook(info);
    }));
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            eprintln!("bench-run: interrupted; killing child processes");
            kill_all();
            std::process::exit(130);
        });
    });
}

/// A child process that is killed and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

// === impl Proc ===

impl Proc {
    /// Spawns `program args` pinned to `cpu` (taskset execs the program, so the PID is the
    /// program's), stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        cpu: u32,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> std::io::Result<Proc> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        if let Ok(mut c) = CHILDREN.lock() {
            c.push(child.id());
        }
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit by itself, at most `timeout`; kills it after that.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                self.unregister();
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn unregister(&self) {
        let pid = self.child.id();
        if let Ok(mut c) = CHILDREN.lock() {
            c.retain(|p| *p != pid);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.unregister();
    }
}

/// Polls `check` every 20 ms until it holds, `proc` exits, or [`READY_TIMEOUT_MS`] passes.
pub fn wait_ready(
    proc: &mut Proc,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
    loop {
        if check() {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            return Err(format!("{} exited ({status}) before {what}", proc.name));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{}: no {what} within {READY_TIMEOUT_MS} ms",
                proc.name
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn can_connect(addr: &str) -> bool {
    addr.parse()
        .ok()
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_millis(200)).ok())
        .is_some()
}

/// `GET path`; the status code, if any answer came.
pub fn http_get_status(addr: &str, path: &str) -> Option<u16> {
    let sock = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    // HTTP/1.1: Envoy's admin refuses HTTP/1.0 with 426.
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = std::str::from_utf8(head.get(..n)?).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}
