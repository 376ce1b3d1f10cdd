//! The `dpdk:` section: the optional DPDK path (docs/dpdk.md). The section is plain data and
//! is always parsed and checked; using it needs a ringside built with `--features dpdk`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Memory EAL may take, MB (`-m`), when hugepages are off (`no_huge`).
pub const DPDK_MEMORY_MB_DEFAULT: u32 = 256;
pub const DPDK_MEMORY_MB_MIN: u32 = 64;
pub const DPDK_MEMORY_MB_MAX: u32 = 1 << 20;
/// mbufs in the packet pool of each shard's queue pair.
pub const DPDK_MBUFS_PER_QUEUE_DEFAULT: u32 = 8191;
pub const DPDK_MBUFS_PER_QUEUE_MIN: u32 = 1023;
pub const DPDK_MBUFS_PER_QUEUE_MAX: u32 = 1 << 20;
/// Per-lcore mbuf cache of each pool (DPDK's `RTE_MEMPOOL_CACHE_MAX_SIZE` is 512).
pub const DPDK_MBUF_CACHE_DEFAULT: u32 = 256;
pub const DPDK_MBUF_CACHE_MAX: u32 = 512;
/// RX and TX descriptor ring sizes per queue.
pub const DPDK_RING_SIZE_DEFAULT: u16 = 1024;
pub const DPDK_RING_SIZE_MIN: u16 = 64;
pub const DPDK_RING_SIZE_MAX: u16 = 16_384;
/// Packets taken or sent per rx/tx burst.
pub const DPDK_BURST_DEFAULT: u16 = 32;
pub const DPDK_BURST_MAX: u16 = 512;
/// TCP sockets (listening, accepted and upstream) one shard's stack holds at once.
pub const DPDK_SOCKETS_PER_SHARD_DEFAULT: u32 = 1024;
pub const DPDK_SOCKETS_PER_SHARD_MAX: u32 = 65_536;
/// Per-socket receive and send buffers of the user-space TCP stack.
pub const DPDK_TCP_BUFFER_BYTES_DEFAULT: u32 = 256 * 1024;
pub const DPDK_TCP_BUFFER_BYTES_MIN: u32 = 4 * 1024;
pub const DPDK_TCP_BUFFER_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Packets one shard can have waiting in another's steering ring (multi-queue: packets RSS put
/// on the wrong shard's queue); beyond it they are dropped and counted, as a full NIC ring would.
pub const DPDK_STEER_RING_SIZE_DEFAULT: u32 = 4096;
pub const DPDK_STEER_RING_SIZE_MIN: u32 = 64;
pub const DPDK_STEER_RING_SIZE_MAX: u32 = 1 << 20;
/// Local ports `DPDK_EPHEMERAL_PORT_FIRST..=65535` of the DPDK address are the stacks' upstream
/// source ports, split evenly between the queues (that is how a packet of an upstream
/// connection finds the shard that opened it). A listener's port in that range is skipped.
pub const DPDK_EPHEMERAL_PORT_FIRST: u16 = 49_152;
/// Port MTU (IP packet size).
pub const DPDK_MTU_DEFAULT: u16 = 1500;
pub const DPDK_MTU_MIN: u16 = 576;
pub const DPDK_MTU_MAX: u16 = 9000;

/// EAL and one port for ringside's shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dpdk {
    /// EAL `--lcores` (e.g. `"0-1"`); default: the cores the process may run on.
    #[serde(default)]
    pub lcores: Option<String>,
    /// Virtual devices (`--vdev`), e.g. `net_af_packet0,iface=veth0` or `net_null0`.
    #[serde(default)]
    pub vdevs: Vec<String>,
    /// PCI devices to use (`-a 0000:03:00.0`); empty with `vdevs` set: `--no-pci`.
    #[serde(default)]
    pub pci: Vec<String>,
    /// Run without hugepages (`--no-huge`): for tests and virtual devices, far slower on a NIC.
    #[serde(default)]
    pub no_huge: bool,
    /// `--in-memory`: no files under /var/run/dpdk (several processes can run side by side).
    #[serde(default = "yes")]
    pub in_memory: bool,
    #[serde(default = "memory_mb_default")]
    pub memory_mb: u32,
    /// Extra EAL arguments, appended as they are (e.g. `--log-level=eal,8`).
    #[serde(default)]
    pub eal_args: Vec<String>,
    /// The ethdev the shards use, by name (`net_af_packet0`, `0000:03:00.0`); default: the first.
    #[serde(default)]
    pub port: Option<String>,
    /// IPv4 address of the port: listeners bound to it and upstream endpoints in its subnet
    /// run on DPDK; everything else stays on the kernel.
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// Next hop for destinations outside the subnet.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Shards that get a queue pair on the port (the first N shards); default 1.
    #[serde(default = "one")]
    pub queues: u16,
    #[serde(default = "mbufs_default")]
    pub mbufs_per_queue: u32,
    #[serde(default = "mbuf_cache_default")]
    pub mbuf_cache: u32,
    #[serde(default = "ring_default")]
    pub rx_ring_size: u16,
    #[serde(default = "ring_default")]
    pub tx_ring_size: u16,
    #[serde(default = "burst_default")]
    pub burst: u16,
    #[serde(default = "sockets_default")]
    pub sockets_per_shard: u32,
    #[serde(default = "tcp_buffer_default")]
    pub tcp_rx_buffer_bytes: u32,
    #[serde(default = "tcp_buffer_default")]
    pub tcp_tx_buffer_bytes: u32,
    #[serde(default = "mtu_default")]
    pub mtu: u16,
    /// Packets a shard's steering ring holds (multi-queue only; `DPDK_STEER_RING_SIZE_*`).
    #[serde(default = "steer_ring_default")]
    pub steer_ring_size: u32,
}

fn yes() -> bool {
    true
}
fn one() -> u16 {
    1
}
fn memory_mb_default() -> u32 {
    DPDK_MEMORY_MB_DEFAULT
}
fn mbufs_default() -> u32 {
    DPDK_MBUFS_PER_QUEUE_DEFAULT
}
fn mbuf_cache_default() -> u32 {
    DPDK_MBUF_CACHE_DEFAULT
}
fn ring_default() -> u16 {
    DPDK_RING_SIZE_DEFAULT
}
fn burst_default() -> u16 {
    DPDK_BURST_DEFAULT
}
fn sockets_default() -> u32 {
    DPDK_SOCKETS_PER_SHARD_DEFAULT
}
fn tcp_buffer_default() -> u32 {
    DPDK_TCP_BUFFER_BYTES_DEFAULT
}
fn mtu_default() -> u16 {
    DPDK_MTU_DEFAULT
}
fn steer_ring_default() -> u32 {
    DPDK_STEER_RING_SIZE_DEFAULT
}

impl Dpdk {
    /// The local ports queue `queue` opens upstream connections from: its even share of
    /// `DPDK_EPHEMERAL_PORT_FIRST..=65535`.
    pub fn source_ports(&self, queue: u16) -> std::ops::RangeInclusive<u16> {
        let span = self.source_port_span();
        let first = u32::from(DPDK_EPHEMERAL_PORT_FIRST) + u32::from(queue) * span;
        // In range: queue < queues, so first + span - 1 <= 65535.
        (first as u16)..=((first + span - 1) as u16)
    }

    /// The queue whose upstream connections use local port `port`, if any.
    pub fn source_port_queue(&self, port: u16) -> Option<u16> {
        let off = u32::from(port.checked_sub(DPDK_EPHEMERAL_PORT_FIRST)?);
        let q = off / self.source_port_span();
        (q < u32::from(self.queues)).then_some(q as u16)
    }

    fn source_port_span(&self) -> u32 {
        (65_536 - u32::from(DPDK_EPHEMERAL_PORT_FIRST)) / u32::from(self.queues.max(1))
    }

    /// Whether `ip` is in the port's subnet.
    pub fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len.min(32)))
        };
        u32::from(ip) & mask == u32::from(self.address) & mask
    }

    pub(crate) fn validate(
        &self,
        shards: Option<usize>,
        listeners: &[crate::Listener],
        err: &mut dyn FnMut(String, String),
    ) {
        for (i, l) in listeners.iter().enumerate() {
            if l.address.ip() == std::net::IpAddr::V4(self.address) {
                if l.protocol == crate::Protocol::Tcp {
                    err(
                        format!("listeners[{i}].protocol"),
                        format!(
                            "listener {:?} is on the DPDK port's address {}: only dubbo and \
                             triple listeners run on the DPDK path",
                            l.name, self.address
                        ),
                    );
                }
                if l.transparent {
                    err(
                        format!("listeners[{i}].transparent"),
                        "a listener on the DPDK port cannot be transparent".into(),
                    );
                }
            }
        }
        let mut range = |field: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                err(
                    format!("dpdk.{field}"),
                    format!("{v} is out of range {lo}..={hi}"),
                );
            }
        };
        range(
            "memory_mb",
            self.memory_mb.into(),
            DPDK_MEMORY_MB_MIN.into(),
            DPDK_MEMORY_MB_MAX.into(),
        );
        range(
            "mbufs_per_queue",
            self.mbufs_per_queue.into(),
            DPDK_MBUFS_PER_QUEUE_MIN.into(),
            DPDK_MBUFS_PER_QUEUE_MAX.into(),
        );
        range(
            "mbuf_cache",
            self.mbuf_cache.into(),
            0,
            DPDK_MBUF_CACHE_MAX.into(),
        );
        for (f, v) in [
            ("rx_ring_size", self.rx_ring_size),
            ("tx_ring_size", self.tx_ring_size),
        ] {
            range(
                f,
                v.into(),
                DPDK_RING_SIZE_MIN.into(),
                DPDK_RING_SIZE_MAX.into(),
            );
        }
        range("burst", self.burst.into(), 1, DPDK_BURST_MAX.into());
        range(
            "sockets_per_shard",
            self.sockets_per_shard.into(),
            2,
            DPDK_SOCKETS_PER_SHARD_MAX.into(),
        );
        for (f, v) in [
            ("tcp_rx_buffer_bytes", self.tcp_rx_buffer_bytes),
            ("tcp_tx_buffer_bytes", self.tcp_tx_buffer_bytes),
        ] {
            range(
                f,
                v.into(),
                DPDK_TCP_BUFFER_BYTES_MIN.into(),
                DPDK_TCP_BUFFER_BYTES_MAX.into(),
            );
        }
        range(
            "mtu",
            self.mtu.into(),
            DPDK_MTU_MIN.into(),
            DPDK_MTU_MAX.into(),
        );
        range("prefix_len", self.prefix_len.into(), 1, 32);
        let most = shards.unwrap_or(crate::SHARDS_MAX) as u64;
        range("queues", self.queues.into(), 1, most);
        range(
            "steer_ring_size",
            self.steer_ring_size.into(),
            DPDK_STEER_RING_SIZE_MIN.into(),
            DPDK_STEER_RING_SIZE_MAX.into(),
        );
        if self.vdevs.is_empty() && self.pci.is_empty() {
            err(
                "dpdk".into(),
                "names no device: set `vdevs` (virtual devices) or `pci` (NIC addresses)".into(),
            );
        }
        if self.address.is_unspecified() || self.address.is_broadcast() {
            err(
                "dpdk.address".into(),
                format!("{} is not a host address", self.address),
            );
        }
        if let Some(g) = self.gateway {
            if !self.in_subnet(g) {
                err(
                    "dpdk.gateway".into(),
                    format!(
                        "{g} is not in {}/{} (the port's subnet)",
                        self.address, self.prefix_len
                    ),
                );
            }
        }
    }
}
