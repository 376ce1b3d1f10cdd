//! Tests that need DPDK (on its virtual devices) or root-only network set-ups: run by
//! `scripts/test` with `--features dpdk` when DPDK is installed (docs/dpdk.md). Helpers shared
//! by the test files live here.

/// A `dpdk:` config section for tests: no hugepages, no files, no PCI, the given vdevs.
pub fn test_dpdk_config(vdevs: &[&str], address: &str) -> config::Dpdk {
    let yaml = format!(
        "vdevs: [{}]\nno_huge: true\nin_memory: true\nmemory_mb: 256\naddress: {address}\nprefix_len: 24\nmbufs_per_queue: 4095\n",
        vdevs
            .iter()
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    serde_yaml_from(&yaml)
}

fn serde_yaml_from(yaml: &str) -> config::Dpdk {
    let text = format!("dpdk:\n{}", indent(yaml));
    let c = config::Config::from_yaml("test.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    c.dpdk.expect("dpdk section")
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}
