//! EAL and port errors through the real binary: each says what is wrong and what to do. Every
//! case is its own process (EAL starts once per process). Nothing here opens a real device: the
//! PCI case allows one address that does not exist.
#![cfg(feature = "dpdk")]

use std::process::Command;

const RINGSIDE: &str = env!("CARGO_BIN_EXE_ringside-dpdk");

/// Runs ringside-dpdk on a config with `dpdk` as its dpdk section; returns its stderr (it must
/// fail to start).
fn fails_with(dpdk: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "dpdk-errors-{}-{:x}.yaml",
        std::process::id(),
        fxhash(dpdk)
    ));
    // Its own admin port: the control socket is named after it.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &path,
        format!("admin:\n  address: 127.0.0.1:{admin}\ndpdk:\n{dpdk}  address: 10.213.4.2\n  prefix_len: 24\n"),
    )
    .unwrap();
    let out = Command::new(RINGSIDE)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run ringside-dpdk");
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success(), "started with {dpdk}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn unknown_driver_says_which_device_and_where_to_look() {
    let e = fails_with("  vdevs: [\"net_nosuchdriver0\"]\n  no_huge: true\n");
    assert!(e.contains("DPDK EAL failed to start"), "{e}");
    assert!(e.contains("--vdev=net_nosuchdriver0"), "{e}");
    assert!(e.contains("dpdk.vdevs"), "{e}");
}

#[test]
fn missing_port_lists_the_ports_eal_found() {
    let e = fails_with("  vdevs: [\"net_null0\"]\n  port: net_missing0\n  no_huge: true\n");
    assert!(
        e.contains("DPDK port \"net_missing0\" not found; ports EAL found: [net_null0]"),
        "{e}"
    );
}

#[test]
fn pci_device_without_a_dpdk_driver_gets_the_binding_hint() {
    let e = fails_with("  pci: [\"0000:7f:1f.7\"]\n  no_huge: true\n");
    assert!(e.contains("not found"), "{e}");
    assert!(e.contains("vfio-pci"), "{e}");
}

#[test]
fn no_hugepages_says_so() {
    let have_huge = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("HugePages_Free:") && !l.trim_end().ends_with(" 0"));
    if have_huge {
        println!("skipped: this machine has free hugepages");
        return;
    }
    let e = fails_with("  vdevs: [\"net_null0\"]\n");
    assert!(e.contains("DPDK EAL failed to start"), "{e}");
    assert!(e.contains("hugepages"), "{e}");
    assert!(e.contains("no_huge"), "{e}");
}

#[test]
fn config_errors_name_the_field() {
    let e = fails_with("  vdevs: [\"net_null0\"]\n  no_huge: true\n  queues: 0\n  burst: 0\n");
    assert!(e.contains("dpdk.burst"), "{e}");
    assert!(e.contains("dpdk.queues"), "{e}");
}
