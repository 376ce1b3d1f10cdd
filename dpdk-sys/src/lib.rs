//! Raw bindings to DPDK 22.11 (`libdpdk` via pkg-config): bindgen over the EAL, ethdev, mbuf and
//! mempool headers, plus `rs_*` shims for DPDK's static inline fast-path functions (rx/tx burst,
//! mbuf alloc/free, data pointer, append), which have no symbol in the shared libraries.
//!
//! Built only with ringside's `dpdk` cargo feature; the safe layer is `dataplane::dpdk`.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all)]

#[cfg(feature = "dpdk")]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
