//! EAL start-up and the port: arguments from the `dpdk:` config section, errors that say what
//! to fix, and the per-queue packet I/O (rx/tx bursts of mbufs).

use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crossbeam_queue::ArrayQueue;
use dpdk_sys as sys;

/// Bytes of packet data per mbuf (DPDK's RTE_MBUF_DEFAULT_BUF_SIZE: 2048 + headroom).
pub const MBUF_DATA_BYTES: u16 = 2048 + 128;

/// RTE_ETH_RSS_IPV4 and RTE_ETH_RSS_NONFRAG_IPV4_TCP (rte_ethdev.h: RTE_BIT64(2), RTE_BIT64(4);
/// bindgen cannot evaluate the macros).
const RSS_IPV4: u64 = 1 << 2;
const RSS_NONFRAG_IPV4_TCP: u64 = 1 << 4;

/// Why the DPDK path could not start.
#[derive(Debug, thiserror::Error)]
pub enum EalError {
    #[error("DPDK EAL failed to start ({reason}); EAL arguments: {args}.{hint}")]
    Init {
        reason: String,
        args: String,
        hint: &'static str,
    },
    #[error("DPDK is already initialised in this process with other settings")]
    Twice,
    #[error("DPDK port {wanted:?} not found; ports EAL found: [{found}]{hint}")]
    NoPort {
        wanted: String,
        found: String,
        hint: &'static str,
    },
    #[error("DPDK port {port}: {what} failed: {reason}")]
    Port {
        port: String,
        what: &'static str,
        reason: String,
    },
    #[error("DPDK port {port} has {max} {dir} queues, {wanted} wanted (dpdk.queues)")]
    Queues {
        port: String,
        dir: &'static str,
        max: u16,
        wanted: u16,
    },
}

fn errno_text(e: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local string.
    let s = unsafe { CStr::from_ptr(sys::rs_strerror(e)) };
    format!("{} (errno {e})", s.to_string_lossy())
}

/// The EAL arguments for `cfg` (argv[0] first).
pub fn eal_args(cfg: &config::Dpdk) -> Vec<String> {
    let mut a = vec!["ringside".to_string()];
    if let Some(l) = &cfg.lcores {
        a.push(format!("--lcores={l}"));
    }
    if cfg.no_huge {
        a.push("--no-huge".into());
    }
    if cfg.in_memory {
        // --no-huge implies legacy memory, which EAL refuses with --in-memory; --no-shconf is
        // the part of --in-memory that matters then (no files under /var/run/dpdk).
        a.push(
            if cfg.no_huge {
                "--no-shconf"
            } else {
                "--in-memory"
            }
            .into(),
        );
    }
    a.push("-m".into());
    a.push(cfg.memory_mb.to_string());
    for v in &cfg.vdevs {
        a.push(format!("--vdev={v}"));
    }
    if cfg.pci.is_empty() {
        a.push("--no-pci".into());
    }
    for p in &cfg.pci {
        a.push(format!("--allow={p}"));
    }
    // Shards poll their queues themselves: EAL's own threads only need to exist.
    a.push("--no-telemetry".into());
    a.extend(cfg.eal_args.iter().cloned());
    a
}

/// The started EAL and the configured port, process-wide.
pub struct Eal {
    pub port_id: u16,
    pub port_name: String,
    pub mac: [u8; 6],
    pub cfg: config::Dpdk,
    /// One mbuf pool per queue pair, in queue order.
    pools: Vec<Pool>,
    /// Multi-queue: one steering ring per queue, in queue order (empty with one queue). A shard
    /// that receives a packet belonging to another shard's connection (RSS hashed it to the
    /// wrong queue) puts it on that shard's ring, which the shard reads between its RX bursts.
    steer: Vec<ArrayQueue<MbufPtr>>,
    /// Ports some shard listens on (a bit per port): packets to them stay on the queue RSS
    /// chose, and no upstream connection takes one as its source port. Bits are only set.
    listening: Box<[AtomicU64]>,
}

/// An mbuf on its way from one shard to another (ownership moves with the pointer).
struct MbufPtr(*mut sys::rte_mbuf);
// SAFETY: an mbuf is plain memory owned by whoever holds the pointer; freeing it from another
// thread returns it to its pool, which is multi-producer safe.
unsafe impl Send for MbufPtr {}

/// An mbuf pool: created once at start-up and never freed (it lives as long as the process).
#[derive(Clone, Copy)]
struct Pool(*mut sys::rte_mempool);
// SAFETY: a DPDK mempool is made for use from many threads (its ring is multi-producer and
// multi-consumer); each queue's pool is only used by the shard owning the queue anyway.
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

static EAL: OnceLock<Result<Eal, String>> = OnceLock::new();

/// The EAL started by [`init`], if any.
pub fn get() -> Option<&'static Eal> {
    EAL.get().and_then(|r| r.as_ref().ok())
}

/// Starts EAL and the port once per process (EAL cannot start twice).
pub fn init(cfg: &config::Dpdk) -> Result<&'static Eal, EalError> {
    let mut err = None;
    let r = EAL.get_or_init(|| match start(cfg) {
        Ok(e) => Ok(e),
        Err(e) => {
            let s = e.to_string();
            err = Some(e);
            Err(s)
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    match r {
        Ok(e) if e.cfg == *cfg => Ok(e),
        Ok(_) => Err(EalError::Twice),
        Err(s) => Err(EalError::Init {
            reason: s.clone(),
            args: eal_args(cfg).join(" "),
            hint: "",
        }),
    }
}

fn start(cfg: &config::Dpdk) -> Result<Eal, EalError> {
    let args = eal_args(cfg);
    let joined = args.join(" ");
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_default())
        .collect();
    let mut argv: Vec<*mut libc::c_char> = cargs
        .iter()
        .map(|c| c.as_ptr() as *mut libc::c_char)
        .collect();
    // SAFETY: argv points at NUL-terminated strings that outlive the call; EAL may permute
    // argv's pointers but does not write through them.
    let n = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    if n < 0 {
        // SAFETY: reads EAL's thread-local errno.
        let e = unsafe { sys::rs_errno() };
        let hint = match e {
            libc::ENOMEM | libc::EACCES => {
                " Hint: no usable hugepages? Reserve some (docs/dpdk.md) or set `dpdk.no_huge: true` \
                 (tests, virtual devices), and run as root or with CAP_IPC_LOCK."
            }
            libc::EALREADY => " Hint: EAL was already started in this process.",
            libc::ENODEV | libc::EINVAL => {
                " Hint: check `dpdk.vdevs`/`dpdk.pci` and `dpdk.eal_args` (a driver that is not \
                 installed, a malformed device string, an unknown option)."
            }
            _ => "",
        };
        return Err(EalError::Init {
            reason: errno_text(e),
            args: joined,
            hint,
        });
    }
    let port_id = find_port(cfg)?;
    let port_name = port_name(port_id);
    let pools = setup_port(cfg, port_id, &port_name)?;
    let mut mac = sys::rte_ether_addr::default();
    // SAFETY: port_id is a valid, started port; mac is a valid out pointer.
    unsafe { sys::rte_eth_macaddr_get(port_id, &mut mac) };
    tracing::info!(
        port = %port_name,
        mac = %format_mac(&mac.addr_bytes),
        queues = cfg.queues,
        address = %cfg.address,
        "DPDK port started"
    );
    let steer = if cfg.queues > 1 {
        (0..cfg.queues)
            .map(|_| ArrayQueue::new(cfg.steer_ring_size as usize))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Eal {
        port_id,
        port_name,
        mac: mac.addr_bytes,
        cfg: cfg.clone(),
        pools,
        steer,
        listening: (0..65_536 / 64).map(|_| AtomicU64::new(0)).collect(),
    })
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn port_name(id: u16) -> String {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: buf is large enough for RTE_ETH_NAME_MAX_LEN (64) bytes including the NUL.
    let r = unsafe { sys::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) };
    if r != 0 {
        return format!("port{id}");
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Every port EAL probed, by name.
pub fn port_names() -> Vec<String> {
    let mut out = Vec::new();
    for id in 0..sys::RTE_MAX_ETHPORTS as u16 {
        // SAFETY: plain query on a port id.
        if unsafe { sys::rte_eth_dev_is_valid_port(id) } == 1 {
            out.push(port_name(id));
        }
    }
    out
}

fn find_port(cfg: &config::Dpdk) -> Result<u16, EalError> {
    let names = port_names();
    let wanted = cfg.port.clone().or_else(|| {
        // Default: the first device the config names (vdev name before its first comma).
        cfg.pci.first().cloned().or_else(|| {
            cfg.vdevs
                .first()
                .map(|v| v.split(',').next().unwrap_or(v).to_string())
        })
    });
    let hint: &'static str = if cfg.pci.is_empty() {
        ""
    } else {
        ". Hint: a PCI NIC shows up only when it is bound to a DPDK-capable driver (vfio-pci: \
         `dpdk-devbind.py -b vfio-pci <addr>`) and the port is not in use by the kernel"
    };
    let Some(wanted) = wanted else {
        return Err(EalError::NoPort {
            wanted: "(none)".into(),
            found: names.join(", "),
            hint,
        });
    };
    let c = CString::new(wanted.as_str()).unwrap_or_default();
    let mut id = 0u16;
    // SAFETY: c is NUL-terminated; id is a valid out pointer.
    let r = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    if r != 0 {
        return Err(EalError::NoPort {
            wanted,
            found: names.join(", "),
            hint,
        });
    }
    Ok(id)
}

fn setup_port(cfg: &config::Dpdk, port: u16, name: &str) -> Result<Vec<Pool>, EalError> {
    let fail = |what: &'static str, r: i32| EalError::Port {
        port: name.to_string(),
        what,
        reason: errno_text(-r),
    };
    let mut info = sys::rte_eth_dev_info::default();
    // SAFETY: valid port id and out pointer.
    let r = unsafe { sys::rte_eth_dev_info_get(port, &mut info) };
    if r != 0 {
        return Err(fail("rte_eth_dev_info_get", r));
    }
    for (dir, max) in [("RX", info.max_rx_queues), ("TX", info.max_tx_queues)] {
        if max < cfg.queues {
            return Err(EalError::Queues {
                port: name.into(),
                dir,
                max,
                wanted: cfg.queues,
            });
        }
    }
    let mut conf = sys::rte_eth_conf::default();
    if cfg.queues > 1 {
        // RSS spreads flows over the shards' queues.
        conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf =
            info.flow_type_rss_offloads & (RSS_IPV4 | RSS_NONFRAG_IPV4_TCP);
    }
    // SAFETY: valid port, queue counts within the device's limits, conf initialised.
    let r = unsafe { sys::rte_eth_dev_configure(port, cfg.queues, cfg.queues, &conf) };
    if r != 0 {
        return Err(fail("rte_eth_dev_configure", r));
    }
    // SAFETY: valid port id.
    let r = unsafe { sys::rte_eth_dev_set_mtu(port, cfg.mtu) };
    if r != 0 && r != -libc::ENOTSUP {
        tracing::warn!(port = %name, mtu = cfg.mtu, error = %errno_text(-r), "cannot set the MTU; keeping the port's");
    }
    let mut rx_ring = cfg.rx_ring_size;
    let mut tx_ring = cfg.tx_ring_size;
    // SAFETY: valid port and in/out pointers.
    let r = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port, &mut rx_ring, &mut tx_ring) };
    if r != 0 {
        return Err(fail("rte_eth_dev_adjust_nb_rx_tx_desc", r));
    }
    // SAFETY: valid port id.
    let socket = unsafe { sys::rte_eth_dev_socket_id(port) };
    let socket = if socket < 0 { 0 } else { socket };
    let mut pools = Vec::new();
    for q in 0..cfg.queues {
        let pname = CString::new(format!("rs_p{port}_q{q}")).unwrap_or_default();
        // SAFETY: name NUL-terminated; sizes validated by the config.
        let mp = unsafe {
            sys::rte_pktmbuf_pool_create(
                pname.as_ptr(),
                cfg.mbufs_per_queue,
                cfg.mbuf_cache,
                0,
                MBUF_DATA_BYTES,
                socket,
            )
        };
        if mp.is_null() {
            // SAFETY: reads EAL's thread-local errno.
            let e = unsafe { sys::rs_errno() };
            return Err(EalError::Port {
                port: name.into(),
                what: "mbuf pool creation (dpdk.mbufs_per_queue, dpdk.memory_mb)",
                reason: errno_text(e),
            });
        }
        // SAFETY: valid port, queue index < configured queues, pool just created.
        let r = unsafe {
            sys::rte_eth_rx_queue_setup(port, q, rx_ring, socket as u32, std::ptr::null(), mp)
        };
        if r != 0 {
            return Err(fail("rte_eth_rx_queue_setup", r));
        }
        // SAFETY: as above.
        let r = unsafe {
            sys::rte_eth_tx_queue_setup(port, q, tx_ring, socket as u32, std::ptr::null())
        };
        if r != 0 {
            return Err(fail("rte_eth_tx_queue_setup", r));
        }
        pools.push(Pool(mp));
    }
    // SAFETY: configured port.
    let r = unsafe { sys::rte_eth_dev_start(port) };
    if r != 0 {
        return Err(fail("rte_eth_dev_start", r));
    }
    // Best effort: virtual devices and most NICs accept it; the stack filters by MAC anyway.
    // SAFETY: started port.
    unsafe { sys::rte_eth_promiscuous_enable(port) };
    Ok(pools)
}

impl Eal {
    /// Notes that a shard listens on `port` (before its listening sockets exist).
    pub fn mark_listening(&self, port: u16) {
        self.listening[usize::from(port / 64)].fetch_or(1 << (port % 64), Ordering::Relaxed);
    }

    /// Whether some shard listens on `port`.
    pub fn is_listening(&self, port: u16) -> bool {
        self.listening[usize::from(port / 64)].load(Ordering::Relaxed) & (1 << (port % 64)) != 0
    }

    /// The queue pair of shard `shard`, or `None` when the shard has none (`dpdk.queues`).
    /// Call it once per shard, on the shard's thread.
    pub fn queue(&'static self, shard: usize) -> Option<Queue> {
        let pool = *self.pools.get(shard)?;
        // Registers the shard's thread with EAL (an lcore id: per-lcore mempool caches).
        // SAFETY: plain call; failure (no free lcore id) only loses the mbuf cache.
        if unsafe { sys::rte_thread_register() } != 0 {
            tracing::debug!(
                shard,
                "rte_thread_register failed: mbuf pool without a per-core cache"
            );
        }
        Some(Queue {
            port: self.port_id,
            queue: shard as u16,
            pool: pool.0,
            burst: self.cfg.burst as usize,
            rx: vec![std::ptr::null_mut(); self.cfg.burst as usize],
            rx_pos: 0,
            rx_len: 0,
            rx_steered: false,
            steer_turn: false,
            eal: self,
            tx: Vec::with_capacity(self.cfg.burst as usize),
            stats: QueueStats::default(),
        })
    }
}

/// Packet counters of one queue pair.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Packets the TX ring refused (freed).
    pub tx_dropped: u64,
    /// Packets not sent because the mbuf pool was empty.
    pub tx_no_mbuf: u64,
    /// Received packets too large for the stack (multi-segment beyond the MTU).
    pub rx_dropped: u64,
    /// Multi-queue: packets this queue received for another shard's connection, handed over.
    pub steered_out: u64,
    /// Multi-queue: packets other shards handed to this one.
    pub steered_in: u64,
    /// Multi-queue: packets dropped because the owning shard's steering ring was full (or,
    /// for ARP copies, no mbuf was free).
    pub steer_dropped: u64,
    /// Multi-queue: ARP replies copied to the other shards (each stack keeps its own cache).
    pub arp_copies: u64,
}

/// Where a received packet goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Dest {
    Here,
    /// Another shard's upstream connection: its local port is in that queue's source ports.
    Queue(u16),
    /// An ARP reply: every stack learns from it, and this one too.
    Everyone,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ARP_REPLY: u16 = 2;
const IPPROTO_TCP: u8 = 6;

/// Which shard a received Ethernet frame belongs to (multi-queue). Only TCP to `address` with a
/// destination port in another queue's source ports (and no listener's) moves, and ARP replies
/// are copied; the rest (connections to listeners, which RSS keeps on the queue that got their
/// SYN, ICMP, fragments) stays where RSS put it.
/// `listening`: whether some shard listens on a port.
pub fn classify(
    frame: &[u8],
    cfg: &config::Dpdk,
    listening: impl Fn(u16) -> bool,
    me: u16,
) -> Dest {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    match be16(12) {
        Some(ETHERTYPE_ARP) => {
            if be16(14 + 6) == Some(ARP_REPLY) {
                Dest::Everyone
            } else {
                Dest::Here
            }
        }
        Some(ETHERTYPE_IPV4) => {
            let Some(&vihl) = frame.get(14) else {
                return Dest::Here;
            };
            let ihl = usize::from(vihl & 0x0f) * 4;
            let to_us = frame.get(30..34) == Some(&cfg.address.octets()[..]);
            // Not a later fragment (offset 0): those carry no TCP header.
            let first_fragment = be16(14 + 6).is_some_and(|f| f & 0x1fff == 0);
            if frame.get(14 + 9) != Some(&IPPROTO_TCP) || !to_us || !first_fragment {
                return Dest::Here;
            }
            let port = be16(14 + ihl + 2).filter(|&p| !listening(p));
            match port.and_then(|p| cfg.source_port_queue(p)) {
                Some(q) if q != me => Dest::Queue(q),
                _ => Dest::Here,
            }
        }
        _ => Dest::Here,
    }
}

/// One RX/TX queue pair of the port and its mbuf pool, owned by one shard.
pub struct Queue {
    port: u16,
    queue: u16,
    pool: *mut sys::rte_mempool,
    burst: usize,
    rx: Vec<*mut sys::rte_mbuf>,
    rx_pos: usize,
    rx_len: usize,
    /// `rx` holds packets from this queue's steering ring (already classified).
    rx_steered: bool,
    /// The next refill tries the steering ring first (alternates with the RX ring).
    steer_turn: bool,
    eal: &'static Eal,
    tx: Vec<*mut sys::rte_mbuf>,
    pub stats: QueueStats,
}

/// One received packet; freed when dropped.
pub struct Mbuf(*mut sys::rte_mbuf);

impl Mbuf {
    /// The packet's bytes (first segment).
    pub fn data(&self) -> &[u8] {
        // SAFETY: the mbuf is owned by us until drop; mtod/data_len describe its first segment.
        unsafe {
            std::slice::from_raw_parts(
                sys::rs_pktmbuf_mtod(self.0),
                sys::rs_pktmbuf_data_len(self.0) as usize,
            )
        }
    }
    pub fn segments(&self) -> u16 {
        // SAFETY: valid mbuf.
        unsafe { sys::rs_pktmbuf_nb_segs(self.0) }
    }
    /// Copies a whole (possibly multi-segment) packet into `buf`; `None` if it does not fit.
    pub fn copy_to(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: valid mbuf; buf is writable for its length.
        let n = unsafe { sys::rs_pktmbuf_copy_out(self.0, buf.as_mut_ptr(), buf.len() as u32) };
        (n >= 0).then_some(n as usize)
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; it goes back to its pool.
        unsafe { sys::rs_pktmbuf_free(self.0) }
    }
}

impl Queue {
    /// One RX burst into `rx` (overwrites it: callers have handed out or freed what it held).
    fn rx_burst(&mut self) -> usize {
        // SAFETY: rx has room for `burst` pointers; the queue belongs to this shard.
        let n = unsafe {
            sys::rs_eth_rx_burst(
                self.port,
                self.queue,
                self.rx.as_mut_ptr(),
                self.burst as u16,
            )
        };
        n as usize
    }

    /// Takes up to one burst from this queue's steering ring into `rx`.
    fn steered_burst(&mut self) -> usize {
        let Some(ring) = self.eal.steer.get(usize::from(self.queue)) else {
            return 0;
        };
        let mut n = 0;
        while n < self.burst {
            let Some(MbufPtr(m)) = ring.pop() else { break };
            self.rx[n] = m;
            n += 1;
        }
        self.stats.steered_in += n as u64;
        n
    }

    /// Refills `rx` from the steering ring and the RX ring in turn; false when both are empty.
    fn refill(&mut self) -> bool {
        for _ in 0..2 {
            let steered = self.steer_turn && !self.eal.steer.is_empty();
            self.steer_turn = !self.steer_turn;
            let n = if steered {
                self.steered_burst()
            } else {
                let n = self.rx_burst();
                self.stats.rx_packets += n as u64;
                n
            };
            if n > 0 {
                (self.rx_pos, self.rx_len, self.rx_steered) = (0, n, steered);
                return true;
            }
        }
        (self.rx_pos, self.rx_len) = (0, 0);
        false
    }

    /// The next packet for this shard's stack: from the RX ring (one burst at a time) or, with
    /// several queues, handed over by another shard. Packets for other shards are passed on.
    pub fn recv(&mut self) -> Option<Mbuf> {
        loop {
            if self.rx_pos == self.rx_len && !self.refill() {
                return None;
            }
            let m = Mbuf(self.rx[self.rx_pos]);
            self.rx_pos += 1;
            if self.rx_steered || self.eal.steer.is_empty() {
                return Some(m);
            }
            let eal = self.eal;
            match classify(m.data(), &eal.cfg, |p| eal.is_listening(p), self.queue) {
                Dest::Here => return Some(m),
                Dest::Everyone => {
                    self.copy_to_others(&m);
                    return Some(m);
                }
                Dest::Queue(q) => self.steer(q, m),
            }
        }
    }

    /// Hands `m` to queue `q`'s shard (dropped and counted when its ring is full).
    fn steer(&mut self, q: u16, m: Mbuf) {
        if self.hand_over(q, m) {
            self.stats.steered_out += 1;
        } else {
            self.stats.steer_dropped += 1;
        }
    }

    /// Puts `m` on queue `q`'s steering ring; false (and `m` freed) when it is full.
    fn hand_over(&self, q: u16, m: Mbuf) -> bool {
        let Some(ring) = self.eal.steer.get(usize::from(q)) else {
            return false;
        };
        let p = MbufPtr(m.0);
        std::mem::forget(m);
        match ring.push(p) {
            Ok(()) => true,
            Err(MbufPtr(back)) => {
                drop(Mbuf(back));
                false
            }
        }
    }

    /// A copy of `m` (from this queue's pool) for every other shard.
    fn copy_to_others(&mut self, m: &Mbuf) {
        let data = m.data();
        for q in 0..self.eal.cfg.queues {
            if q == self.queue {
                continue;
            }
            // SAFETY: the pool is valid for the process's life.
            let c = unsafe { sys::rs_pktmbuf_alloc(self.pool) };
            if c.is_null() {
                self.stats.steer_dropped += 1;
                continue;
            }
            let copy = Mbuf(c);
            // SAFETY: fresh mbuf; append returns NULL when the tailroom is too small.
            let p = unsafe { sys::rs_pktmbuf_append(c, data.len() as u16) };
            if p.is_null() {
                self.stats.steer_dropped += 1;
                continue;
            }
            // SAFETY: append made data.len() bytes at p writable; the source is another mbuf.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
            if self.hand_over(q, copy) {
                self.stats.arp_copies += 1;
            } else {
                self.stats.steer_dropped += 1;
            }
        }
    }

    /// Queues a packet of `len` bytes filled by `fill`, sending a burst when `burst` are queued.
    /// `false` when no mbuf was free or `len` does not fit one (the packet is dropped, as a NIC
    /// with a full ring would).
    pub fn send_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> bool {
        // SAFETY: the pool is valid for the process's life.
        let m = unsafe { sys::rs_pktmbuf_alloc(self.pool) };
        if m.is_null() {
            self.stats.tx_no_mbuf += 1;
            return false;
        }
        // SAFETY: m is a fresh mbuf; append returns NULL when the tailroom is too small.
        let p = unsafe { sys::rs_pktmbuf_append(m, len as u16) };
        if p.is_null() || len > u16::MAX as usize {
            // SAFETY: we own m.
            unsafe { sys::rs_pktmbuf_free(m) };
            self.stats.tx_no_mbuf += 1;
            return false;
        }
        // SAFETY: append made `len` bytes at p writable.
        fill(unsafe { std::slice::from_raw_parts_mut(p, len) });
        self.tx.push(m);
        if self.tx.len() >= self.burst {
            self.flush();
        }
        true
    }

    /// Sends the queued packets; those the TX ring refuses are freed and counted.
    pub fn flush(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        // SAFETY: tx holds owned mbufs; tx_burst takes ownership of the first `sent`.
        let sent = unsafe {
            sys::rs_eth_tx_burst(
                self.port,
                self.queue,
                self.tx.as_mut_ptr(),
                self.tx.len() as u16,
            )
        } as usize;
        self.stats.tx_packets += sent as u64;
        if sent < self.tx.len() {
            let rest = &mut self.tx[sent..];
            self.stats.tx_dropped += rest.len() as u64;
            // SAFETY: the refused mbufs are still ours.
            unsafe { sys::rs_pktmbuf_free_bulk(rest.as_mut_ptr(), rest.len() as u32) };
        }
        self.tx.clear();
    }

    /// Sends `n` packets of `len` bytes as fast as the port takes them (benchmarks): bulk
    /// allocation, no per-packet work besides the length. Returns packets sent.
    pub fn blast(&mut self, n: u64, len: u16) -> u64 {
        let mut sent_total = 0;
        let mut bufs = vec![std::ptr::null_mut(); self.burst];
        let mut left = n;
        while left > 0 {
            let k = (left as usize).min(self.burst);
            // SAFETY: bufs has room for k pointers; the pool is valid.
            if unsafe { sys::rs_pktmbuf_alloc_bulk(self.pool, bufs.as_mut_ptr(), k as u32) } != 0 {
                continue;
            }
            for &m in &bufs[..k] {
                // SAFETY: fresh mbufs with room for len bytes (MBUF_DATA_BYTES >= 2048).
                unsafe { sys::rs_pktmbuf_append(m, len) };
            }
            // SAFETY: tx_burst takes ownership of the first `s` mbufs.
            let s =
                unsafe { sys::rs_eth_tx_burst(self.port, self.queue, bufs.as_mut_ptr(), k as u16) }
                    as usize;
            if s < k {
                // SAFETY: the rest are still ours.
                unsafe { sys::rs_pktmbuf_free_bulk(bufs[s..].as_mut_ptr(), (k - s) as u32) };
            }
            sent_total += s as u64;
            left -= k as u64;
        }
        self.stats.tx_packets += sent_total;
        sent_total
    }

    /// Receives and frees up to `n` packets (benchmarks); returns packets received.
    pub fn drain(&mut self, n: u64) -> u64 {
        let mut got = 0;
        while self.rx_pos < self.rx_len {
            drop(Mbuf(self.rx[self.rx_pos]));
            self.rx_pos += 1;
            got += 1;
        }
        while got < n {
            let k = self.rx_burst();
            if k == 0 {
                break;
            }
            // SAFETY: the k mbufs are ours.
            unsafe { sys::rs_pktmbuf_free_bulk(self.rx.as_mut_ptr(), k as u32) };
            got += k as u64;
        }
        self.stats.rx_packets += got;
        got
    }

    /// Free mbufs left in this queue's pool.
    pub fn pool_free(&self) -> u32 {
        // SAFETY: valid pool.
        unsafe { sys::rs_mempool_avail_count(self.pool) }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.flush();
        for &m in &self.rx[self.rx_pos..self.rx_len] {
            // SAFETY: received, not yet handed out.
            unsafe { sys::rs_pktmbuf_free(m) };
        }
    }
}
