//! The optional DPDK path (`--features dpdk`; docs/dpdk.md): EAL started from the config's
//! `dpdk:` section, one port, one RX/TX queue pair (and mbuf pool) per DPDK shard, and on each
//! such shard a user-space TCP/IP stack (smoltcp: ARP, IPv4, TCP) polled inside the shard's
//! monoio loop ([`stack`]). Listeners bound to the port's address and upstream endpoints in its
//! subnet run on it; everything else stays on the kernel.

pub mod eal;
pub mod stack;

pub use eal::{Eal, EalError, Queue};
pub use stack::{DpdkListener, DpdkStream, Stack};
