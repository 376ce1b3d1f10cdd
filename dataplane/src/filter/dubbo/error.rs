//! Why ringside answers a Dubbo request itself, and the one mapping of each reason to the
//! response status the caller gets ([`LocalError::status`]); the error message is
//! `ringside: ` followed by its `Display`. A request whose id is known gets this answer before
//! its connection closes (two-way requests only: nobody waits for a one-way one).

use std::net::SocketAddr;

use codec::DecodeError;

use crate::access_log::Flags;

use super::upstream::HEARTBEAT_MISSES_MAX;
use super::wire::Status;

/// A request ringside answers itself (status and message of a local reply).
#[derive(Debug, thiserror::Error)]
pub enum LocalError<'a> {
    /// A frame the connection cannot go on from (bad magic, over `frame_bytes_max`, ...).
    #[error("{0}")]
    BadFrame(DecodeError),
    /// Consumers send requests: the stream is not what it should be.
    #[error("a response frame (request bit clear) from a consumer")]
    ResponseFromConsumer,
    /// The Hessian2 preamble (interface, version, method, attachments) cannot be read.
    #[error("malformed Hessian2 request: {0}")]
    BadRequest(DecodeError),
    #[error(
        "no route for {}:{} method {} (group {}) on listener {listener}",
        String::from_utf8_lossy(.interface),
        String::from_utf8_lossy(.version),
        String::from_utf8_lossy(.method),
        String::from_utf8_lossy(.group)
    )]
    NoRoute {
        interface: &'a [u8],
        version: &'a [u8],
        method: &'a [u8],
        group: &'a [u8],
        listener: &'a str,
    },
    /// A request in a serialization ringside does not decode, on a listener without a default
    /// route.
    #[error("listener {listener} has no default route for serialization {serialization}")]
    NoDefaultRoute {
        listener: &'a str,
        serialization: u8,
    },
    #[error("no healthy endpoint in cluster {0}")]
    NoHealthyEndpoint(&'a str),
    /// The endpoint has `pending_requests_max` requests in flight.
    #[error("{limit} requests already pending to {addr}")]
    Overflow { addr: SocketAddr, limit: u32 },
    /// The cluster's circuit breaker (`circuit_breakers.max_requests`) is open.
    #[error("circuit breaker of cluster {cluster} open: {limit} requests in flight on this shard")]
    CircuitOpen { cluster: &'a str, limit: u32 },
    /// The cluster's `circuit_breakers.max_pending_requests` requests wait for a connection.
    #[error(
        "circuit breaker of cluster {cluster} open: {limit} requests waiting for a connection \
         on this shard"
    )]
    PendingOverflow { cluster: &'a str, limit: u32 },
    /// A local rate limit had no token for it.
    #[error(
        "rate limited by the local rate limit of listener {listener} ({} per {} ms, burst {})",
        .bucket.tokens_per_fill, .bucket.fill_interval_ms, .bucket.max_tokens
    )]
    RateLimited {
        listener: &'a str,
        bucket: &'a crate::config::TokenBucket,
    },
    /// The route's `max_concurrent_requests` calls are in flight.
    #[error("concurrency limit of the route reached: {limit} calls in flight")]
    ConcurrencyLimited { limit: u32 },
    #[error("upstream {addr} did not answer within {waited_ms} ms")]
    Timeout { addr: SocketAddr, waited_ms: u128 },
    /// The upstream connection failed or closed with the request in flight.
    #[error("upstream {addr} {why}")]
    UpstreamFailed {
        addr: SocketAddr,
        why: &'a UpstreamGone,
    },
    /// The shard's connections hold more than `runtime.buffered_bytes_per_shard_max`.
    #[error(
        "shard buffer budget exhausted: {buffered} bytes buffered, limit {limit} \
         (runtime.buffered_bytes_per_shard_max); request shed"
    )]
    ShedMemory { buffered: usize, limit: usize },
    #[error(
        "response of {frame_bytes} bytes from upstream {addr} exceeds the cluster's \
         response_bytes_max {limit}"
    )]
    ResponseTooLarge {
        frame_bytes: u64,
        addr: SocketAddr,
        limit: usize,
    },
    /// The route's `fault` answers it with this status.
    #[error("fault injected")]
    FaultAbort(u8),
    /// The listener's `dubbo.rbac` filters deny it: 40 (BAD_REQUEST), which a consumer does
    /// not retry, with Envoy's RBAC message.
    #[error("RBAC: access denied")]
    RbacDenied,
}

/// Why an upstream connection ended (its requests in flight fail with
/// [`LocalError::UpstreamFailed`]; its queued one-way requests are dropped and counted).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamGone {
    #[error("connect failed: {0}")]
    ConnectFailed(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("write failed: {0}")]
    WriteFailed(std::io::Error),
    #[error("read failed: {0}")]
    ReadFailed(std::io::Error),
    #[error("sent a bad frame: {0}")]
    BadFrame(DecodeError),
    /// The provider closed it (EOF).
    #[error("closed the connection")]
    PeerClosed,
    /// Closed by ringside (the pool, or its other tasks).
    #[error("closed")]
    Closed,
    #[error("endpoint removed from its cluster")]
    Retired,
    #[error("missed {HEARTBEAT_MISSES_MAX} heartbeats")]
    MissedHeartbeats,
    #[error("idle for {0} ms")]
    Idle(u128),
}

impl LocalError<'_> {
    /// The access log's response flags for this answer (Envoy's names).
    pub fn flags(&self) -> Flags {
        match self {
            LocalError::BadFrame(_)
            | LocalError::ResponseFromConsumer
            | LocalError::BadRequest(_) => Flags::DOWNSTREAM_PROTOCOL_ERROR,
            LocalError::NoRoute { .. } | LocalError::NoDefaultRoute { .. } => Flags::NO_ROUTE_FOUND,
            LocalError::NoHealthyEndpoint(_) => Flags::NO_HEALTHY_UPSTREAM,
            LocalError::UpstreamFailed {
                why: UpstreamGone::ConnectFailed(_) | UpstreamGone::ConnectTimeout,
                ..
            } => Flags::UPSTREAM_CONNECTION_FAILURE,
            LocalError::UpstreamFailed {
                why: UpstreamGone::BadFrame(_),
                ..
            } => Flags::UPSTREAM_PROTOCOL_ERROR,
            LocalError::UpstreamFailed { .. } => Flags::UPSTREAM_CONNECTION_TERMINATION,
            LocalError::ResponseTooLarge { .. } => Flags::UPSTREAM_PROTOCOL_ERROR,
            LocalError::Overflow { .. }
            | LocalError::CircuitOpen { .. }
            | LocalError::PendingOverflow { .. } => Flags::UPSTREAM_OVERFLOW,
            LocalError::Timeout { .. } => Flags::UPSTREAM_REQUEST_TIMEOUT,
            LocalError::RateLimited { .. } | LocalError::ConcurrencyLimited { .. } => {
                Flags::RATE_LIMITED
            }
            LocalError::ShedMemory { .. } => Flags::OVERLOAD_MANAGER,
            LocalError::FaultAbort(_) => Flags::FAULT_INJECTED,
            LocalError::RbacDenied => Flags::default(),
        }
    }

    /// The upstream the answer is about, when there is one.
    pub fn upstream(&self) -> Option<SocketAddr> {
        match self {
            LocalError::Overflow { addr, .. }
            | LocalError::Timeout { addr, .. }
            | LocalError::UpstreamFailed { addr, .. }
            | LocalError::ResponseTooLarge { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// The Dubbo response status the caller gets.
    pub fn status(&self) -> Status {
        match self {
            LocalError::BadFrame(_)
            | LocalError::ResponseFromConsumer
            | LocalError::BadRequest(_)
            | LocalError::RbacDenied => Status::BAD_REQUEST,
            LocalError::NoRoute { .. } | LocalError::NoDefaultRoute { .. } => {
                Status::SERVICE_NOT_FOUND
            }
            LocalError::NoHealthyEndpoint(_)
            | LocalError::UpstreamFailed { .. }
            | LocalError::ResponseTooLarge { .. } => Status::SERVER_ERROR,
            LocalError::Overflow { .. }
            | LocalError::RateLimited { .. }
            | LocalError::ConcurrencyLimited { .. }
            | LocalError::ShedMemory { .. }
            | LocalError::CircuitOpen { .. }
            | LocalError::PendingOverflow { .. } => Status::SERVER_THREADPOOL_EXHAUSTED,
            LocalError::Timeout { .. } => Status::SERVER_TIMEOUT,
            LocalError::FaultAbort(s) => Status(*s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        let e = LocalError::NoRoute {
            interface: b"com.a.Svc",
            version: b"1.0",
            method: b"get",
            group: b"-",
            listener: "l",
        };
        assert_eq!(e.status(), Status::SERVICE_NOT_FOUND);
        assert_eq!(
            e.to_string(),
            "no route for com.a.Svc:1.0 method get (group -) on listener l"
        );
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = LocalError::Timeout { addr, waited_ms: 5 };
        assert_eq!(e.status(), Status::SERVER_TIMEOUT);
        assert_eq!(
            e.to_string(),
            "upstream 127.0.0.1:1 did not answer within 5 ms"
        );
        let e = LocalError::Overflow { addr, limit: 3 };
        assert_eq!(e.status(), Status::SERVER_THREADPOOL_EXHAUSTED);
        let e = LocalError::ShedMemory {
            buffered: 5,
            limit: 4,
        };
        assert_eq!(e.status(), Status::SERVER_THREADPOOL_EXHAUSTED);
        assert_eq!(
            e.to_string(),
            "shard buffer budget exhausted: 5 bytes buffered, limit 4 \
             (runtime.buffered_bytes_per_shard_max); request shed"
        );
        let why = UpstreamGone::MissedHeartbeats;
        let e = LocalError::UpstreamFailed { addr, why: &why };
        assert_eq!(e.status(), Status::SERVER_ERROR);
        assert_eq!(e.to_string(), "upstream 127.0.0.1:1 missed 3 heartbeats");
    }
}
