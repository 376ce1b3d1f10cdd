//! The optional DPDK path (`--features dpdk`; docs/dpdk.md): EAL started from the config's
//! `dpdk:` section, one port, one RX/TX queue pair (and mbuf pool) per DPDK shard, and on each
//! such shard a user-space TCP/IP stack (smoltcp: ARP, IPv4, TCP) polled inside the shard's
//! monoio loop ([`stack`]). Listeners bound to the port's address and upstream endpoints in its
//! subnet run on it; everything else stays on the kernel.

pub mod eal;
pub mod stack;

pub use eal::{classify, Dest, Eal, EalError, Queue};
pub use stack::{DpdkListener, DpdkStream, Stack};

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

/// Starts EAL and the port from the config (once per process). `shards`: how many the server
/// runs (the first `dpdk.queues` of them get a queue pair).
pub fn start(cfg: &config::Dpdk, shards: usize) -> Result<(), String> {
    if usize::from(cfg.queues) > shards {
        return Err(format!(
            "dpdk.queues is {} but only {shards} shards run",
            cfg.queues
        ));
    }
    eal::init(cfg).map(|_| ()).map_err(|e| e.to_string())
}

/// Called on each shard as it starts: builds its stack when it has a queue pair, and publishes
/// the queue's packet counters as `dpdk.<queue>.*` stats.
pub fn start_shard(
    shard: usize,
    stats: &std::sync::Arc<crate::stats::Stats>,
    shard_stats: crate::stats::ShardStats,
) {
    let Some(e) = eal::get() else { return };
    let Some(stack) = Stack::start(e, shard) else {
        return;
    };
    let q = shard.to_string();
    let t = [("queue", q.as_str())];
    let id = |name| stats.add("dpdk", name, &t, crate::stats::Kind::Counter);
    let ids = [
        id("rx_packets"),
        id("tx_packets"),
        id("tx_dropped"),
        id("tx_no_mbuf"),
        id("rx_dropped"),
        id("steered_out"),
        id("steered_in"),
        id("steer_dropped"),
        id("arp_copies"),
    ];
    shard::monoio::spawn(async move {
        let mut last = [0u64; 9];
        loop {
            shard::monoio::time::sleep(crate::stats::POLL_STATS_PUBLISH).await;
            let s = stack.queue_stats();
            let now = [
                s.rx_packets,
                s.tx_packets,
                s.tx_dropped,
                s.tx_no_mbuf,
                s.rx_dropped,
                s.steered_out,
                s.steered_in,
                s.steer_dropped,
                s.arp_copies,
            ];
            for ((id, n), l) in ids.iter().zip(now).zip(&mut last) {
                shard_stats.add(*id, n.saturating_sub(*l));
                *l = n;
            }
        }
    });
}

/// The `dpdk` section of `/server_info`: the port and its queues (null without a `dpdk:`
/// section).
pub fn server_info() -> serde_json::Value {
    let Some(e) = eal::get() else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "port": e.port_name,
        "mac": eal::format_mac(&e.mac),
        "address": format!("{}/{}", e.cfg.address, e.cfg.prefix_len),
        "queues": e.cfg.queues,
        "source_ports": (0..e.cfg.queues)
            .map(|q| {
                let r = e.cfg.source_ports(q);
                format!("{}-{}", r.start(), r.end())
            })
            .collect::<Vec<_>>(),
    })
}

/// Whether a listener on `addr` runs on the DPDK port (its address is the port's).
pub fn owns_listener(addr: SocketAddr) -> bool {
    eal::get().is_some_and(|e| addr.ip() == IpAddr::V4(e.cfg.address))
}

/// This shard's stack when `addr` is reached through the DPDK port (in the port's subnet, or
/// anywhere when a gateway is set).
pub fn upstream_stack(addr: SocketAddr) -> Option<Rc<Stack>> {
    let e = eal::get()?;
    let IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    if ip.is_loopback() {
        return None;
    }
    if !(e.cfg.in_subnet(ip) || e.cfg.gateway.is_some()) {
        return None;
    }
    stack::current()
}

/// A listener on this shard's stack, or `None` (no queue pair here, or listen failed: logged).
pub fn listen(shard: usize, name: &str, addr: SocketAddr) -> Option<DpdkListener> {
    let s = stack::current()?;
    match s.listen(addr.port()) {
        Ok(l) => {
            tracing::info!(shard, listener = %name, %addr, "listening on the DPDK port");
            Some(l)
        }
        Err(e) => {
            tracing::error!(shard, listener = %name, %addr, error = %e, "cannot listen on the DPDK port");
            None
        }
    }
}

impl crate::io::StopRead for shard::monoio::io::OwnedReadHalf<DpdkStream> {
    type Stopper = ();
}

impl crate::io::Conn for DpdkStream {
    fn set_nodelay(&self, _on: bool) -> std::io::Result<()> {
        // The stack's sockets never delay (Nagle and delayed ACKs are off).
        Ok(())
    }
    fn into_kernel(self) -> Result<shard::monoio::net::TcpStream, Self> {
        Err(self)
    }
}

impl crate::io::Accept for DpdkListener {
    type Stream = DpdkStream;
    fn accept(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<(DpdkStream, SocketAddr)>> {
        DpdkListener::accept(self)
    }
}
