//! With io_uring blocked for the process (as under Docker's and podman's default seccomp
//! profile), ringside falls back to epoll, serves, and says so in /server_info.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;

use common::*;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// A filter that makes io_uring_setup/enter/register fail with ENOSYS and allows the rest.
fn no_uring() -> BpfProgram {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .into_iter()
    .map(|nr| (nr, vec![]))
    .collect();
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap()
    .try_into()
    .unwrap()
}

fn start_blocked(extra: &[&str]) -> (Ringside, std::net::SocketAddr) {
    let echo = echo_server();
    let (admin, listen) = (local(free_port()), local(free_port()));
    let prog = no_uring();
    let rs = Ringside::start_with(
        &tcp_config(admin, listen, &[echo]),
        admin,
        extra,
        move |cmd| {
            // SAFETY: apply_filter only makes the prctl/seccomp syscalls; it is async-signal-safe
            // enough for the window between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    seccompiler::apply_filter(&prog).map_err(std::io::Error::other)
                });
            }
        },
    );
    (rs, listen)
}

#[test]
fn auto_falls_back_to_epoll_and_serves() {
    let (rs, listen) = start_blocked(&["--shards", "2"]);
    let mut s = TcpStream::connect(listen).unwrap();
    s.write_all(b"hello through epoll").unwrap();
    let mut back = [0u8; 19];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello through epoll");

    let (_, info) = rs.get("/server_info");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    for shard in info["shards"].as_array().unwrap() {
        assert_eq!(shard["io_backend"], "epoll", "{info}");
        let why = shard["io_fallback_reason"].as_str().unwrap_or("");
        assert!(why.contains("io_uring_setup failed"), "{info}");
    }
}

#[test]
fn forced_uring_refuses_to_start_when_blocked() {
    let echo = echo_server();
    let (admin, listen) = (local(free_port()), local(free_port()));
    let dir = TempDir::new("forced");
    let cfg = dir.write("c.yaml", &tcp_config(admin, listen, &[echo]));
    let prog = no_uring();
    let mut cmd = std::process::Command::new(RINGSIDE);
    cmd.args(["run", "--io", "uring", "--config"]).arg(&cfg);
    // SAFETY: as above.
    unsafe {
        cmd.pre_exec(move || seccompiler::apply_filter(&prog).map_err(std::io::Error::other));
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("io_uring requested (--io uring) but unavailable"),
        "{err}"
    );
}

#[test]
fn forced_epoll_is_reported() {
    let echo = echo_server();
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = Ringside::start(
        &tcp_config(admin, listen, &[echo]),
        admin,
        &["--io", "epoll", "--shards", "1"],
    );
    let (_, info) = rs.get("/server_info");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["shards"][0]["io_backend"], "epoll");
    assert!(info["shards"][0]["io_fallback_reason"].is_null());
}
