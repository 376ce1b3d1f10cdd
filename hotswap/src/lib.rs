//! Hot upgrade: the handoff protocol between a running ringside (the *old* process) and its
//! successor (the *new* one) over a Unix stream socket, with listening sockets passed as file
//! descriptors (SCM_RIGHTS), plus opaque state blobs (stats). Knows nothing of routing, parsing
//! or config: the data plane decides what the sockets and blobs mean.
//!
//! ## Protocol (version [`PROTOCOL_VERSION`])
//! Every message is a 4-byte big-endian length and a JSON object tagged by `"type"`; file
//! descriptors travel with the message that names them.
//! 1. new → old `Hello { protocol, build }`; old → new `Welcome { protocol, build }` or
//!    `Refused { reason }` (a different protocol version: the old process keeps serving).
//! 2. new → old `GetListeners`; old → new `Listeners { sockets: [{name, address}] }` with one
//!    fd per entry (several entries may share a name: one per old shard).
//! 3. new → old `Serving` once its shards accept on those sockets. The old process stops
//!    accepting, tells its callers it is going away, drains, then sends `Stats { blob }` and
//!    `Bye` and exits. If the connection drops before `Serving`, the old process never stopped
//!    serving; if it drops after, the old process resumes accepting.
//!
//! Unknown message types are answered with `Refused`, so a later version can add messages (for
//! example moving live connections with their unread bytes) without breaking this one.
//!
//! Limits: [`REQUEST_BYTES_MAX`] per message the running process reads from a successor,
//! [`MESSAGE_BYTES_MAX`] per message a successor reads from the process it replaces (the stats
//! blob), [`FDS_PER_MESSAGE_MAX`] descriptors per message. Who may connect, and the socket's
//! file mode and directory: [`private`].

pub mod private;
mod wire;

use serde::{Deserialize, Serialize};

pub use private::{bind_private, check_peer, peer_pid};
pub use wire::{recv, send};

/// Bumped on any incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 1;
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Message {
    Hello {
        protocol: u32,
        build: String,
    },
    Welcome {
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
    Stats {
        blob: String,
    },
    Bye,
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
