//! ringside without capabilities, as Istio's default (REDIRECT) interception runs the sidecar:
//! the image's default config starts as an unprivileged user with no capability, and a config
//! that asks for a socket option needing CAP_NET_ADMIN (SO_MARK, IP_TRANSPARENT) fails with an
//! error that names the capability. Runs ringside through `setpriv` as `nobody` with every
//! capability dropped, so it needs root to start (CI runs the suite as root); without root the
//! tests say so and pass vacuously.

mod common;

use std::time::{Duration, Instant};

use common::peers::root;
use common::{free_port, local, Ringside, TempDir, RINGSIDE};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

const NOBODY: [&str; 11] = [
    "setpriv",
    "--reuid",
    "65534",
    "--regid",
    "65534",
    "--clear-groups",
    "--inh-caps",
    "-all",
    "--bounding-set",
    "-all",
    "--",
];

/// The image's config with every address moved to 127.0.0.1 and a free port (tests never bind
/// 0.0.0.0 nor Istio's fixed ports).
fn image_config() -> (String, std::net::SocketAddr) {
    let text = std::fs::read_to_string(root().join("image/ringside.yaml")).unwrap();
    let admin = local(free_port());
    let mut out = String::new();
    for line in text.lines() {
        let moved = ["address: ", "health_address: ", "prometheus_address: "]
            .iter()
            .find_map(|k| {
                let i = line.find(k)?;
                (!line.trim_start().starts_with('#')).then(|| {
                    let addr = if *k == "address: " && line.contains("15000") {
                        admin
                    } else {
                        local(free_port())
                    };
                    format!("{}{k}{addr}", &line[..i])
                })
            });
        out.push_str(&moved.unwrap_or_else(|| line.to_string()));
        out.push('\n');
    }
    (out, admin)
}

#[test]
fn the_image_default_config_runs_without_capabilities() {
    if !is_root() {
        eprintln!(
            "SKIPPED the_image_default_config_runs_without_capabilities: needs root (setpriv)"
        );
        return;
    }
    let (config, admin) = image_config();
    let rs = Ringside::start_wrapped(&NOBODY, &config, admin, &["--shards", "1"], |_| {});
    let (code, _) = rs.get("/ready");
    assert_eq!(code, 200);
}

#[test]
fn a_socket_option_without_cap_net_admin_names_the_capability() {
    if !is_root() {
        eprintln!("SKIPPED a_socket_option_without_cap_net_admin_names_the_capability: needs root");
        return;
    }
    let (config, admin) = image_config();
    for (what, config) in [
        (
            "SO_MARK (runtime.socket_mark)",
            format!("runtime:\n  socket_mark: 1337\n{config}"),
        ),
        (
            "IP_TRANSPARENT",
            config.replacen(
                "    original_destination: true\n",
                "    transparent: true\n    original_destination: true\n",
                1,
            ),
        ),
    ] {
        let dir = TempDir::new("unpriv");
        let path = dir.write("ringside.yaml", &config);
        let mut child = std::process::Command::new(NOBODY[0])
            .args(&NOBODY[1..])
            .arg(RINGSIDE)
            .args(["run", "--config"])
            .arg(&path)
            .args(["--shards", "1"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: ringside kept running ({admin})"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{what}: {err}");
        assert!(
            err.contains(what) && err.contains("needs CAP_NET_ADMIN"),
            "{what}: the error does not name the capability: {err}"
        );
    }
}
