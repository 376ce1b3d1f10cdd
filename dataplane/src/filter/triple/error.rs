//! Why ringside ends a Triple/gRPC call itself, and the one mapping of each reason to the
//! `grpc-status` the caller gets ([`CallError::status`]); the `grpc-message` is
//! [`CallError::message`]. Where Envoy 1.40 answers the same situation, both are its local
//! reply as a gRPC caller gets it (its HTTP status mapped by `Grpc::Utility::httpToGrpcStatus`,
//! its body as the message: `source/common/router/router.cc`,
//! `source/common/http/utility.cc` `sendLocalReply`); ringside's own limits keep their own.
//! Connection-level failures are `conn::ConnError` (a GOAWAY code), not calls' answers.

use codec::h2::grpc::status;

use crate::access_log::Flags;

/// Why an upstream stream ended before its response began: Envoy's stream reset reasons
/// (`Http::Utility::resetReasonToString`), as its router words them in its 503 / 502.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// The connect was refused or failed.
    ConnectFailure,
    /// The connect took longer than the cluster's `connect_timeout`.
    ConnectTimeout,
    /// The connection closed (or went away) with the stream open.
    Termination,
    /// The upstream reset the stream (RST_STREAM other than REFUSED_STREAM).
    Remote,
    /// The upstream refused the stream (REFUSED_STREAM, or above a GOAWAY's last stream id).
    RemoteRefused,
    /// The upstream broke HTTP/2 on the stream.
    Protocol,
    /// A circuit breaker refused it (Envoy's pool overflow).
    Overflow,
}

/// Envoy's body for a reset before the response, first try and after a retry.
macro_rules! before_headers {
    ($reason:literal) => {
        (
            concat!(
                "upstream connect error or disconnect/reset before headers. reset reason: ",
                $reason
            ),
            concat!(
                "upstream connect error or disconnect/reset before headers. retried and the \
                 latest reset reason: ",
                $reason
            ),
        )
    };
}

impl Reset {
    /// Envoy's name of the reason.
    pub fn reason(self) -> &'static str {
        match self {
            Reset::ConnectFailure => "remote connection failure",
            Reset::ConnectTimeout => "connection timeout",
            Reset::Termination => "connection termination",
            Reset::Remote => "remote reset",
            Reset::RemoteRefused => "remote refused stream reset",
            Reset::Protocol => "protocol error",
            Reset::Overflow => "overflow",
        }
    }

    /// Envoy's router's body for it (`Filter::onUpstreamReset`): "retried and the latest
    /// reset reason" once the request was `retried`.
    pub fn body(self, retried: bool) -> &'static str {
        let (first, again) = match self {
            Reset::ConnectFailure => before_headers!("remote connection failure"),
            Reset::ConnectTimeout => before_headers!("connection timeout"),
            Reset::Termination => before_headers!("connection termination"),
            Reset::Remote => before_headers!("remote reset"),
            Reset::RemoteRefused => before_headers!("remote refused stream reset"),
            Reset::Protocol => before_headers!("protocol error"),
            Reset::Overflow => before_headers!("overflow"),
        };
        match retried {
            true => again,
            false => first,
        }
    }
}

/// Envoy's gRPC status for an HTTP status of its local replies (`httpToGrpcStatus`).
pub fn http_to_grpc_status(code: u16) -> u32 {
    match code {
        400 => status::INTERNAL,
        401 => 16, // UNAUTHENTICATED
        403 => status::PERMISSION_DENIED,
        404 => status::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => status::UNAVAILABLE,
        _ => 2, // UNKNOWN
    }
}

/// A call ringside answers itself, before or after it reached an upstream.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request's header list is over the listener's `header_list_bytes_max` (ringside's
    /// own limit).
    #[error("header list exceeds {0} bytes")]
    HeadersTooLarge(u32),
    /// ringside's own: a gRPC path must name a service and a method.
    #[error("path is not /{{service}}/{{method}}")]
    BadPath,
    /// No virtual host or route matches: Envoy's 404 without a body (UNIMPLEMENTED, no
    /// `grpc-message`).
    #[error("")]
    NoRoute,
    /// The caller's deadline is nearer than a proxy hop can meet (`DEADLINE_MIN_US`):
    /// ringside's own (Envoy does not read `grpc-timeout` by default).
    #[error("ringside: deadline exceeded on arrival")]
    ExpiredOnArrival,
    /// No endpoint to send it to: Envoy's 503.
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// The route's cluster is `original_destination` and the caller's connection has none
    /// (it reached a bound listener directly, not by interception): Envoy's ORIGINAL_DST
    /// cluster has no host for it either, its 503 "no healthy upstream".
    #[error("no healthy upstream")]
    NoOriginalDestination,
    /// No upstream connection has a stream left (its MAX_CONCURRENT_STREAMS) and the cluster
    /// has no `circuit_breakers` queue: ringside's own (Envoy queues the call).
    #[error("ringside: upstream streams exhausted")]
    StreamsExhausted,
    /// The route's timeout, a try's `per_try_timeout` or the caller's `grpc-timeout` passed
    /// before the response: Envoy's 504 (UNAVAILABLE).
    #[error("upstream request timeout")]
    Timeout,
    /// The shard's connections hold more than `runtime.buffered_bytes_per_shard_max`
    /// (ringside's own limit).
    #[error(
        "ringside: shard buffer budget exhausted: {buffered} bytes buffered, limit {limit} \
         (runtime.buffered_bytes_per_shard_max); call shed"
    )]
    ShedMemory { buffered: usize, limit: usize },
    /// The cluster's circuit breaker (`circuit_breakers.max_requests`) is open: Envoy's 503
    /// overflow (with `x-envoy-overloaded`).
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    CircuitOpen,
    /// The cluster's `circuit_breakers.max_pending_requests` calls already wait for room on
    /// its connections: Envoy's 503 overflow (with `x-envoy-overloaded`).
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    PendingOverflow,
    /// A local rate limit had no token for it: this gRPC status (Envoy's 429 as UNAVAILABLE,
    /// or RESOURCE_EXHAUSTED) with Envoy's body.
    #[error("local_rate_limited")]
    RateLimited(u32),
    /// Its route's `max_concurrent_requests` calls are in flight (ringside's own limit).
    #[error("ringside: concurrency limit of the route reached")]
    ConcurrencyLimited,
    /// The upstream stream ended before the response began: Envoy's 503 (502 for a protocol
    /// error), UNAVAILABLE either way.
    #[error(
        "upstream connect error or disconnect/reset before headers. reset reason: {}",
        .0.reason()
    )]
    Reset(Reset),
    /// The upstream's response headers or trailers are over `header_list_bytes_max`
    /// (ringside's own limit).
    #[error("ringside: upstream response headers exceed {0} bytes")]
    ResponseHeadersTooLarge(u32),
    /// The route's `fault` aborts it with this gRPC status (Envoy's body).
    #[error("fault filter abort")]
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

impl CallError {
    /// The access log's response flags for this end (Envoy's names).
    pub fn flags(&self) -> Flags {
        match self {
            CallError::HeadersTooLarge(_) | CallError::BadPath => Flags::DOWNSTREAM_PROTOCOL_ERROR,
            CallError::NoRoute => Flags::NO_ROUTE_FOUND,
            CallError::ExpiredOnArrival | CallError::Timeout => Flags::UPSTREAM_REQUEST_TIMEOUT,
            CallError::NoHealthyUpstream | CallError::NoOriginalDestination => {
                Flags::NO_HEALTHY_UPSTREAM
            }
            CallError::StreamsExhausted | CallError::CircuitOpen | CallError::PendingOverflow => {
                Flags::UPSTREAM_OVERFLOW
            }
            CallError::ShedMemory { .. } => Flags::OVERLOAD_MANAGER,
            CallError::RateLimited(_) | CallError::ConcurrencyLimited => Flags::RATE_LIMITED,
            CallError::Reset(r) => match r {
                Reset::ConnectFailure | Reset::ConnectTimeout => Flags::UPSTREAM_CONNECTION_FAILURE,
                Reset::Termination => Flags::UPSTREAM_CONNECTION_TERMINATION,
                Reset::Remote | Reset::RemoteRefused => Flags::UPSTREAM_REMOTE_RESET,
                Reset::Protocol => Flags::UPSTREAM_PROTOCOL_ERROR,
                Reset::Overflow => Flags::UPSTREAM_OVERFLOW,
            },
            CallError::ResponseHeadersTooLarge(_) => Flags::UPSTREAM_PROTOCOL_ERROR,
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
            | CallError::ConcurrencyLimited
            | CallError::ShedMemory { .. } => status::RESOURCE_EXHAUSTED,
            CallError::BadPath | CallError::NoRoute => status::UNIMPLEMENTED,
            CallError::ExpiredOnArrival => status::DEADLINE_EXCEEDED,
            CallError::NoHealthyUpstream
            | CallError::NoOriginalDestination
            | CallError::Timeout
            | CallError::CircuitOpen
            | CallError::PendingOverflow
            | CallError::Reset(_) => status::UNAVAILABLE,
            CallError::ResponseHeadersTooLarge(_) => status::INTERNAL,
            CallError::FaultAbort(code) | CallError::RateLimited(code) => *code,
            CallError::RbacDenied => status::PERMISSION_DENIED,
            CallError::Direct { status, .. }
            | CallError::Jwt { status, .. }
            | CallError::AuthzDenied { status, .. } => *status,
            CallError::AuthzError(status) => *status,
        }
    }

    /// Envoy's answer to an overflow: its router adds `x-envoy-overloaded: true` (unless
    /// `suppress_envoy_headers`).
    pub fn overloaded(&self) -> bool {
        matches!(self, CallError::CircuitOpen | CallError::PendingOverflow)
    }

    /// The `grpc-message` (before percent-encoding; empty: none): the `Display` text, where an
    /// upstream reset or overflow of a call that was `retried` says "retried and the latest
    /// reset reason", as Envoy's router words it once it retried.
    pub fn message(&self, retried: bool) -> String {
        match self {
            CallError::Reset(r) => r.body(retried).to_string(),
            CallError::CircuitOpen | CallError::PendingOverflow => {
                Reset::Overflow.body(retried).to_string()
            }
            _ => self.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        assert_eq!(CallError::NoRoute.status(), status::UNIMPLEMENTED);
        assert_eq!(CallError::NoRoute.message(false), "");
        assert_eq!(
            CallError::BadPath.to_string(),
            "path is not /{service}/{method}"
        );
        let timeout = CallError::Timeout;
        assert_eq!(
            (timeout.status(), timeout.message(true).as_str()),
            (status::UNAVAILABLE, "upstream request timeout")
        );
        let reset = CallError::Reset(Reset::Remote);
        assert_eq!(reset.status(), status::UNAVAILABLE);
        assert_eq!(
            reset.message(false),
            "upstream connect error or disconnect/reset before headers. reset reason: remote reset"
        );
        assert_eq!(
            CallError::Reset(Reset::ConnectFailure).message(true),
            "upstream connect error or disconnect/reset before headers. retried and the latest \
             reset reason: remote connection failure"
        );
        assert!(CallError::CircuitOpen.overloaded());
        assert_eq!(
            CallError::PendingOverflow.message(false),
            "upstream connect error or disconnect/reset before headers. reset reason: overflow"
        );
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
        assert_eq!(http_to_grpc_status(429), status::UNAVAILABLE);
        assert_eq!(http_to_grpc_status(418), 2);
    }
}
