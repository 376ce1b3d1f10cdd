//! Hot upgrade: the handoff protocol between a running ringside (the *old* process) and its
//! successor (the *new* one) over a Unix stream socket, with listening sockets passed as file
//! descriptors (SCM_RIGHTS), plus opaque state blobs (stats). Knows nothing of routing, parsing
//! or config: the data plane decides what the sockets and blobs mean.
//!
//! ## Protocol (version [`PROTOCOL_VERSION`])
//! Every message is a 4-byte big-endian length and a JSON object tagged by `"type"`; file
//! descriptors travel with the message that names them.
//! 1. new → old `Hello { protocol, build, highest }`; old → new `Welcome { protocol, build }` or
//!    `Refused { reason }` (another base protocol: the old process keeps serving). `protocol`
//!    is the base version every ringside speaks ([`PROTOCOL_BASE`], 1); `highest` (absent in
//!    version 1) the highest the successor speaks. The old process answers the version both
//!    speak ([`negotiate`]); a version 1 process ignores `highest` and answers 1, so each side
//!    falls back to version 1 with a peer that predates version 2.
//! 2. new → old `GetListeners`; old → new `Listeners { sockets: [{name, address}] }` with one
//!    fd per entry (several entries may share a name: one per old shard).
//! 3. new → old `Serving` once its shards accept on those sockets. The old process stops
//!    accepting, tells its callers it is going away, drains, then sends `Stats { blob }` and
//!    `Bye` and exits. If the connection drops before `Serving`, the old process never stopped
//!    serving; if it drops after, the old process resumes accepting.
//! 4. Version 2 only: new → old `GetConnections` right after `Serving`. While it drains, the
//!    old process hands over live downstream connections in batches: `Connections { conns:
//!    [{listener, unread}] }` with one fd per entry (at most [`FDS_PER_MESSAGE_MAX`] and about
//!    [`CONNECTIONS_BATCH_BYTES_MAX`] per message, see [`connection_batches`]); `unread` is
//!    what the old process read from the connection and did not forward (at most
//!    [`UNREAD_BYTES_MAX`], hex in the JSON). The successor serves each as if it had accepted
//!    it, starting with those bytes. Then `Stats` and `Bye` as in version 1.
//! 5. Version 3 adds TCP proxy connections: `TcpConnections { conns: [{listener, cluster,
//!    upstream, unread, unread_upstream, ...}] }` with two fds per entry, in order: the
//!    downstream connection, then the upstream connection ringside relays it to (at most
//!    [`FDS_PER_MESSAGE_MAX`]` / 2` entries per message, see [`tcp_batches`]). `unread` is what
//!    was read from the downstream and not yet written upstream, `unread_upstream` the other
//!    way. The successor resumes relaying the same pair, writing those bytes first. A version 2
//!    process never sees one (it would take the pair's second fd for the next entry's).
//!
//! Entries carry `paused_at_ns` and `sent_at_ns` (`CLOCK_MONOTONIC`, [`monotonic_ns`], the
//! same clock in every process of the host): when the old process stopped reading the
//! connection and when it sent the message, so the successor can tell how long the connection
//! paused. Absent (0) from a version 2 process of an earlier build.
//!
//! Unknown message types are answered with `Refused`, so a later version can add messages
//! without breaking this one.
//!
//! Limits: [`REQUEST_BYTES_MAX`] per message the running process reads from a successor,
//! [`MESSAGE_BYTES_MAX`] per message a successor reads from the process it replaces (the stats
//! blob), [`FDS_PER_MESSAGE_MAX`] descriptors per message. Who may connect, and the socket's
//! file mode and directory: [`private`].

mod hex;
pub mod private;
mod wire;

use serde::{Deserialize, Serialize};

pub use private::{bind_private, check_peer, peer_pid};
pub use wire::{recv, send, send_connections, send_tcp_connections};

/// The highest protocol version this crate speaks: 3 (TCP proxy connections move with their
/// upstream connection, step 5).
pub const PROTOCOL_VERSION: u32 = 3;
/// The version every ringside speaks, sent as `Hello::protocol`: a process refuses a successor
/// whose base differs. Bumped only on a change that breaks version 1's messages.
pub const PROTOCOL_BASE: u32 = 1;
/// The first version that moves live connections (`GetConnections`, `Connections`).
pub const PROTOCOL_CONNECTIONS: u32 = 2;
/// The first version that moves TCP proxy connections (`TcpConnections`).
pub const PROTOCOL_TCP: u32 = 3;
/// Most bytes read but not forwarded that one handed-over connection carries; a connection
/// holding more is not handed over (it drains in the old process instead).
pub const UNREAD_BYTES_MAX: usize = 256 * 1024;
/// A batch of connections is closed once its message reaches this size (the successor reads
/// up to [`MESSAGE_BYTES_MAX`]).
pub const CONNECTIONS_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest message accepted (a stats blob of a large config fits easily).
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest message the running process reads from whoever connects to its control socket
/// (`Hello`, `GetListeners`, `Serving` are a few dozen bytes).
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// The kernel's own limit on descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
pub const FDS_PER_MESSAGE_MAX: usize = 253;

/// One passed listening socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketEntry {
    /// The listener's name in the config (`__admin` and friends for the admin listeners).
    pub name: String,
    /// The address it is bound to, as text (for logs and checks).
    pub address: String,
}

/// One handed-over connection (version 2): the fd travels with its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnEntry {
    /// The name of the listener that accepted it (a virtual listener's for a handed-off one).
    pub listener: String,
    /// Bytes the old process read from it and did not forward: the start of the next frame.
    #[serde(with = "hex")]
    pub unread: Vec<u8>,
    /// When the old process stopped reading it ([`monotonic_ns`]; 0: not said).
    #[serde(default)]
    pub paused_at_ns: u64,
    /// When the old process sent it ([`monotonic_ns`]; 0: not said).
    #[serde(default)]
    pub sent_at_ns: u64,
}

/// One handed-over TCP proxy connection (version 3): its two fds (downstream, upstream) travel
/// with its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpPairEntry {
    /// The name of the listener that accepted it (a virtual listener's for a handed-off one).
    pub listener: String,
    /// The cluster and the address of the upstream connection (counts and logs).
    pub cluster: String,
    pub upstream: String,
    /// Read from the downstream and not yet written upstream.
    #[serde(with = "hex")]
    pub unread: Vec<u8>,
    /// Read from the upstream and not yet written downstream.
    #[serde(with = "hex")]
    pub unread_upstream: Vec<u8>,
    /// When the downstream connected (ms since the Unix epoch; the access log's start).
    pub started_unix_ms: u64,
    /// Bytes relayed so far each way (the access log's and Istio's per-connection totals).
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// As in [`ConnEntry`].
    pub paused_at_ns: u64,
    pub sent_at_ns: u64,
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable between the processes of one host (Rust's
/// `Instant` reads the same clock but does not expose it).
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists on
    // Linux.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The version a process speaking up to `ours` uses with a successor that says `highest`
/// (`None`: a version 1 successor, which does not send it).
pub fn negotiate(highest: Option<u32>, ours: u32) -> u32 {
    highest
        .unwrap_or(PROTOCOL_BASE)
        .clamp(PROTOCOL_BASE, ours.max(PROTOCOL_BASE))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Message {
    Hello {
        /// [`PROTOCOL_BASE`].
        protocol: u32,
        build: String,
        /// The highest version the successor speaks (version 2 on; a version 1 process
        /// ignores it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        highest: Option<u32>,
    },
    Welcome {
        /// The version both sides use from now on.
        protocol: u32,
        build: String,
    },
    Refused {
        reason: String,
    },
    GetListeners,
    /// Followed by exactly `sockets.len()` descriptors, in order.
    Listeners {
        sockets: Vec<SocketEntry>,
    },
    Serving,
    /// Version 2: the successor adopts live connections (sent right after `Serving`).
    GetConnections,
    /// Version 2: followed by exactly `conns.len()` descriptors, in order.
    Connections {
        conns: Vec<ConnEntry>,
    },
    /// Version 3: followed by exactly `2 * conns.len()` descriptors, in order (each entry's
    /// downstream, then its upstream).
    TcpConnections {
        conns: Vec<TcpPairEntry>,
    },
    Stats {
        blob: String,
    },
    Bye,
}

/// Splits handed-over connections into `Connections` messages the successor accepts: at most
/// [`FDS_PER_MESSAGE_MAX`] descriptors each, and a new message once one reaches
/// [`CONNECTIONS_BATCH_BYTES_MAX`] of encoded entries (an entry's `unread` is at most
/// [`UNREAD_BYTES_MAX`]). Returns each batch's range in `conns`.
pub fn connection_batches(conns: &[ConnEntry]) -> Vec<std::ops::Range<usize>> {
    // The entry's JSON: hex doubles the bytes; the name and punctuation are small.
    batches(conns, FDS_PER_MESSAGE_MAX, |c| {
        2 * c.unread.len() + c.listener.len() * 2 + 128
    })
}

/// [`connection_batches`] for TCP pairs (version 3): two descriptors per entry, so at most
/// [`FDS_PER_MESSAGE_MAX`]` / 2` entries per message.
pub fn tcp_batches(conns: &[TcpPairEntry]) -> Vec<std::ops::Range<usize>> {
    batches(conns, FDS_PER_MESSAGE_MAX / 2, |c| {
        2 * (c.unread.len() + c.unread_upstream.len())
            + 2 * (c.listener.len() + c.cluster.len() + c.upstream.len())
            + 256
    })
}

fn batches<T>(
    conns: &[T],
    per_message_max: usize,
    len_of: impl Fn(&T) -> usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, c) in conns.iter().enumerate() {
        let len = len_of(c);
        if i > start && (i - start == per_message_max || bytes + len > CONNECTIONS_BATCH_BYTES_MAX)
        {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < conns.len() {
        out.push(start..conns.len());
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("handoff socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the handoff connection")]
    Closed,
    #[error("message of {bytes} bytes is above the limit {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("{count} descriptors in one message, above the limit {limit}")]
    TooManyFds { count: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("protocol: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("refused by the running process: {0}")]
    Refused(String),
    #[error("message announced {announced} sockets but carried {carried} descriptors")]
    FdCountMismatch { announced: usize, carried: usize },
    #[error("peer pid {pid} runs as uid {uid}, not as ringside's uid {ours}")]
    ForeignPeer { pid: i32, uid: u32, ours: u32 },
    #[error("control socket directory {}: {why}", dir.display())]
    UnsafeDir {
        dir: std::path::PathBuf,
        why: String,
    },
}
