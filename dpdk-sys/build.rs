//! Finds DPDK with pkg-config (`libdpdk`, Debian's libdpdk-dev 22.11), generates bindings over
//! `src/shim.h` with bindgen and compiles `src/shim.c` (DPDK's static inline functions, which
//! have no symbol to link against). Fails with a clear message when DPDK is not installed: this
//! crate is only built with ringside's `dpdk` feature.

#[cfg(not(feature = "dpdk"))]
fn main() {}

#[cfg(feature = "dpdk")]
fn main() {
    println!("cargo:rerun-if-changed=src/shim.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    // Libraries and include paths (`cargo_metadata(false)`: the link lines are emitted below).
    let lib = match pkg_config::Config::new()
        .atleast_version("22.11")
        .cargo_metadata(false)
        .probe("libdpdk")
    {
        Ok(l) => l,
        Err(e) => panic!(
            "dpdk-sys: pkg-config cannot find libdpdk >= 22.11 ({e}).\n\
             The DPDK path is optional (cargo feature `dpdk`); to build it install DPDK's \
             development files (Debian: apt-get install libdpdk-dev libclang-dev pkg-config, \
             or run scripts/install-test-deps)."
        ),
    };

    // The C flags DPDK wants (-include rte_config.h, -march=..., -I...), passed as they are to
    // clang (bindgen) and to the C compiler (shim).
    let cflags = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut clang_args: Vec<String> = cflags.split_whitespace().map(str::to_string).collect();
    for p in &lib.include_paths {
        clang_args.push(format!("-I{}", p.display()));
    }

    let mut build = cc::Build::new();
    build.file("src/shim.c").opt_level(2).warnings(false);
    for a in &clang_args {
        build.flag(a);
    }
    build.compile("ringside_dpdk_shim");

    // Poll-mode drivers are not linked: Debian's EAL loads them from its plugin directory
    // (RTE_EAL_PMD_PATH, /usr/lib/<triplet>/dpdk/pmds-23.0) at rte_eal_init; a DPDK built
    // statically needs `-d <driver.so>` in `dpdk.eal_args` or a whole-archive link instead.
    for p in &lib.link_paths {
        println!("cargo:rustc-link-search=native={}", p.display());
    }
    for l in &lib.libs {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    println!("cargo:version={}", lib.version);

    let bindings = bindgen::Builder::default()
        .header("src/shim.h")
        .clang_args(&clang_args)
        .allowlist_function("rte_eal_.*|rte_eth_.*|rte_pktmbuf_.*|rte_mempool_.*|rte_lcore_.*|rte_socket_id|rte_version|rte_vdev_.*|rs_.*|rte_exit|rte_strerror|rte_dev_.*|rte_thread_.*")
        .allowlist_type("rte_eth_.*|rte_mbuf|rte_mempool|rte_ether_addr")
        .allowlist_var("RTE_ETH_.*|RTE_MBUF_.*|RTE_MAX_.*|RTE_PKTMBUF_.*|RTE_ETHER_.*")
        .blocklist_function("rte_eth_rx_burst|rte_eth_tx_burst")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        .generate()
        .unwrap_or_else(|e| {
            panic!("dpdk-sys: bindgen failed on src/shim.h ({e}); is libclang-dev installed?")
        });
    // Build script: a panic is the way to fail the build with a message.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("dpdk-sys: cannot write bindings.rs");
}
