//! The ringside data plane: listeners, filters, router, clusters, upstream pools, stats and the
//! admin API, composed on top of the `shard` runtime and the `codec` wire formats. Owns no wire
//! format and no syscall wrapper of its own beyond socket options.
//!
//! Rooms (docs/architecture.md has the map and the import rule): the data path is `io`, `stats`,
//! `cluster`, `route` (matchers and weighted picks shared by the protocols), `filter` (one room
//! per protocol), `snapshot` and `worker` (one shard's state); `control` (process lifecycle,
//! hot-upgrade hand-off, admin, xDS and registry glue) sits on top and the data path never
//! imports it.
#![cfg_attr(not(feature = "dpdk"), forbid(unsafe_code))]
// With `dpdk`, only the FFI module may use unsafe code.
#![cfg_attr(feature = "dpdk", deny(unsafe_code))]

pub use config;

pub mod access_log;
pub mod cluster;
pub mod control;
#[cfg(feature = "dpdk")]
#[allow(unsafe_code)]
pub mod dpdk;
pub mod filter;
#[cfg(feature = "fuzz")]
pub mod fuzzing;
pub mod io;
#[cfg(test)]
mod rooms;
pub mod route;
pub mod snapshot;
pub mod stats;
pub mod trace;
pub mod worker;
