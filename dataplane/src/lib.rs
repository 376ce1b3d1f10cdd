//! The ringside data plane: listeners, filters, router, clusters, upstream pools, stats and the
//! admin API, composed on top of the `shard` runtime and the `codec` wire formats. Owns no wire
//! format and no syscall wrapper of its own beyond socket options.
#![cfg_attr(not(feature = "dpdk"), forbid(unsafe_code))]
// With `dpdk`, only the FFI module may use unsafe code.
#![cfg_attr(feature = "dpdk", deny(unsafe_code))]

pub mod admin;
pub mod cluster;
pub use config;
pub mod control;
pub mod demo;
#[cfg(feature = "dpdk")]
#[allow(unsafe_code)]
pub mod dpdk;
pub mod dubbo;
#[cfg(feature = "fuzz")]
pub mod fuzzing;
pub mod intercept;
pub mod io;
pub mod iptables;
pub mod listener;
pub mod registry_glue;
pub mod server;
pub mod stats;
pub mod tcp_proxy;
pub mod triple;
pub mod xds_glue;
