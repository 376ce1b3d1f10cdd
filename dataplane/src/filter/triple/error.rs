//! Why ringside ends a Triple/gRPC call itself, and the one mapping of each reason to the
//! `grpc-status` the caller gets ([`CallError::status`]); the `grpc-message` is its `Display`.
//! Connection-level failures are `conn::ConnError` (a GOAWAY code), not calls' answers.

use codec::h2::grpc::status;

use crate::access_log::Flags;

/// A call ringside answers itself, before or after it reached an upstream.
#[derive(Debug, thiserror::Error)]
pub enum CallError<'a> {
    /// The request's header list is over the listener's `header_list_bytes_max`.
    #[error("header list exceeds {0} bytes")]
    HeadersTooLarge(u32),
    #[error("path is not /{{service}}/{{method}}")]
    BadPath,
    #[error("ringside: no route for {service}/{method}")]
    NoRoute { service: String, method: String },
    /// The caller's deadline is nearer than a proxy hop can meet (`DEADLINE_MIN_US`).
    #[error("ringside: deadline exceeded on arrival")]
    ExpiredOnArrival,
    #[error("ringside: no healthy upstream")]
    NoHealthyUpstream,
    /// The route's cluster is `original_destination` and the caller's connection has none
    /// (it reached a bound listener directly, not by interception).
    #[error(
        "ringside: the connection has no original destination for its original_destination cluster"
    )]
    NoOriginalDestination,
    /// No upstream connection has a stream left (its MAX_CONCURRENT_STREAMS).
    #[error("ringside: upstream streams exhausted")]
    StreamsExhausted,
    #[error("ringside: deadline exceeded")]
    DeadlineExceeded,
    /// The shard's connections hold more than `runtime.buffered_bytes_per_shard_max`.
    #[error(
        "ringside: shard buffer budget exhausted: {buffered} bytes buffered, limit {limit} \
         (runtime.buffered_bytes_per_shard_max); call shed"
    )]
    ShedMemory { buffered: usize, limit: usize },
    /// The cluster's circuit breaker (`circuit_breakers.max_requests`) is open. UNAVAILABLE,
    /// as Envoy's 503 overflow reaches a gRPC caller.
    #[error("ringside: circuit breaker open")]
    CircuitOpen,
    /// The cluster's `circuit_breakers.max_pending_requests` calls already wait for room on
    /// its connections. UNAVAILABLE, as Envoy's 503 overflow reaches a gRPC caller.
    #[error("ringside: circuit breaker open: too many calls waiting for an upstream connection")]
    PendingOverflow,
    /// A local rate limit had no token for it.
    #[error("ringside: local rate limit")]
    RateLimited,
    /// Its route's `max_concurrent_requests` calls are in flight.
    #[error("ringside: concurrency limit of the route reached")]
    ConcurrencyLimited,
    /// The upstream broke HTTP/2 on the call's stream.
    #[error("upstream protocol error")]
    UpstreamProtocol,
    /// The upstream's response headers or trailers are over `header_list_bytes_max`.
    #[error("ringside: upstream response headers exceed {0} bytes")]
    ResponseHeadersTooLarge(u32),
    /// The upstream reset the stream with this HTTP/2 error code.
    #[error("upstream reset stream (code {0})")]
    UpstreamReset(u32),
    /// The upstream connection closed (the caller's connection is the one gone: see
    /// `cancel_all`) or failed: the reason.
    #[error("{0}")]
    UpstreamLost(&'a str),
    /// The route's `fault` aborts it with this gRPC status.
    #[error("ringside: fault injected")]
    FaultAbort(u32),
    /// The listener's HTTP rbac filters deny it. PERMISSION_DENIED with Envoy's message (its
    /// 403 local reply as a gRPC caller gets it).
    #[error("RBAC: access denied")]
    RbacDenied,
    /// The listener's jwt_authn filter fails it: Envoy's answer to a gRPC caller (its 401 or
    /// 403 mapped, the body as the message, `www-authenticate`).
    #[error("{message}")]
    Jwt {
        status: u32,
        message: &'static str,
        www_authenticate: Option<Vec<u8>>,
    },
    /// The external authorization service denied it: its HTTP status's gRPC status, its body
    /// as the message, its headers on the answer (Envoy's local reply to a gRPC caller).
    #[error("{message}")]
    AuthzDenied {
        status: u32,
        message: String,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// The external authorization failed (timeout, unreachable, an error) and
    /// `failure_mode_allow` is off: `status_on_error`'s gRPC status, no message.
    #[error("")]
    AuthzError(u32),
    /// The route answers itself (`redirect`, `direct_response`): the gRPC status of its HTTP
    /// status (Envoy's mapping), its body as the message, its `location`.
    #[error("{message}")]
    Direct {
        status: u32,
        message: String,
        location: Option<Vec<u8>>,
    },
}

impl CallError<'_> {
    /// The access log's response flags for this end (Envoy's names).
    pub fn flags(&self) -> Flags {
        match self {
            CallError::HeadersTooLarge(_) | CallError::BadPath => Flags::DOWNSTREAM_PROTOCOL_ERROR,
            CallError::NoRoute { .. } => Flags::NO_ROUTE_FOUND,
            CallError::ExpiredOnArrival | CallError::DeadlineExceeded => {
                Flags::UPSTREAM_REQUEST_TIMEOUT
            }
            CallError::NoHealthyUpstream | CallError::NoOriginalDestination => {
                Flags::NO_HEALTHY_UPSTREAM
            }
            CallError::StreamsExhausted | CallError::CircuitOpen | CallError::PendingOverflow => {
                Flags::UPSTREAM_OVERFLOW
            }
            CallError::ShedMemory { .. } => Flags::OVERLOAD_MANAGER,
            CallError::RateLimited | CallError::ConcurrencyLimited => Flags::RATE_LIMITED,
            CallError::UpstreamProtocol | CallError::ResponseHeadersTooLarge(_) => {
                Flags::UPSTREAM_PROTOCOL_ERROR
            }
            CallError::UpstreamReset(_) => Flags::UPSTREAM_REMOTE_RESET,
            CallError::UpstreamLost(_) => Flags::UPSTREAM_CONNECTION_TERMINATION,
            CallError::FaultAbort(_) => Flags::FAULT_INJECTED,
            // Envoy sets no response flag, only the details `rbac_access_denied_matched_policy`.
            CallError::RbacDenied | CallError::Direct { .. } | CallError::Jwt { .. } => {
                Flags::default()
            }
            CallError::AuthzDenied { .. } | CallError::AuthzError(_) => {
                Flags::UNAUTHORIZED_EXTERNAL_SERVICE
            }
        }
    }

    /// The gRPC status the caller gets.
    pub fn status(&self) -> u32 {
        match self {
            CallError::HeadersTooLarge(_)
            | CallError::StreamsExhausted
            | CallError::RateLimited
            | CallError::ConcurrencyLimited
            | CallError::ShedMemory { .. } => status::RESOURCE_EXHAUSTED,
            CallError::BadPath | CallError::NoRoute { .. } => status::UNIMPLEMENTED,
            CallError::ExpiredOnArrival | CallError::DeadlineExceeded => status::DEADLINE_EXCEEDED,
            CallError::NoHealthyUpstream
            | CallError::NoOriginalDestination
            | CallError::CircuitOpen
            | CallError::PendingOverflow
            | CallError::UpstreamReset(_)
            | CallError::UpstreamLost(_) => status::UNAVAILABLE,
            CallError::UpstreamProtocol | CallError::ResponseHeadersTooLarge(_) => status::INTERNAL,
            CallError::FaultAbort(code) => *code,
            CallError::RbacDenied => status::PERMISSION_DENIED,
            CallError::Direct { status, .. }
            | CallError::Jwt { status, .. }
            | CallError::AuthzDenied { status, .. } => *status,
            CallError::AuthzError(status) => *status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        let no_route = CallError::NoRoute {
            service: "pkg.S".into(),
            method: "Get".into(),
        };
        assert_eq!(no_route.status(), status::UNIMPLEMENTED);
        assert_eq!(no_route.to_string(), "ringside: no route for pkg.S/Get");
        assert_eq!(
            CallError::BadPath.to_string(),
            "path is not /{service}/{method}"
        );
        assert_eq!(CallError::UpstreamReset(8).status(), status::UNAVAILABLE);
        assert_eq!(
            CallError::HeadersTooLarge(1).status(),
            status::RESOURCE_EXHAUSTED
        );
        let shed = CallError::ShedMemory {
            buffered: 5,
            limit: 4,
        };
        assert_eq!(shed.status(), status::RESOURCE_EXHAUSTED);
        assert_eq!(
            shed.to_string(),
            "ringside: shard buffer budget exhausted: 5 bytes buffered, limit 4 \
             (runtime.buffered_bytes_per_shard_max); call shed"
        );
    }
}
