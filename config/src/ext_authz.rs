//! External authorization (Envoy's `envoy.filters.http.ext_authz` with a gRPC service, what
//! istiod makes of an AuthorizationPolicy with `action: CUSTOM`): a Triple listener's
//! `triple.ext_authz`, which asks `envoy.service.auth.v3.Authorization/Check` on a cluster
//! before routing a call (docs/security.md#external-authorization).

use serde::{Deserialize, Serialize};

use crate::StringMatch;

/// Envoy's default `grpc_service.timeout` for ext_authz (200 ms).
pub const EXT_AUTHZ_TIMEOUT_MS_DEFAULT: u64 = 200;
/// Longest `timeout_ms` accepted (istiod's default is 600 s).
pub const EXT_AUTHZ_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Largest CheckResponse message accepted from the authorizer (bigger: an error).
pub const EXT_AUTHZ_RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// The filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthz {
    /// The cluster the authorization service runs in (`grpc_service.envoy_grpc.cluster_name`):
    /// an HTTP/2 cluster of the config.
    pub cluster: String,
    /// `:authority` of the Check calls (`envoy_grpc.authority`); empty: the cluster's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
    /// How long a call waits for the answer (`grpc_service.timeout`); then it is an error.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// An error (timeout, authorizer unreachable, a gRPC error) lets the call through (and
    /// counts `failure_mode_allowed`) instead of answering `status_on_error`.
    #[serde(default)]
    pub failure_mode_allow: bool,
    /// With `failure_mode_allow`: such a call goes upstream with
    /// `x-envoy-auth-failure-mode-allowed: true`.
    #[serde(default)]
    pub failure_mode_allow_header_add: bool,
    /// The HTTP status of the answer on an error (gRPC callers: its gRPC status, Envoy's
    /// mapping); default 403.
    #[serde(default = "default_status_on_error")]
    pub status_on_error: u16,
    /// Only calls whose HTTP rbac filters (before this one) left a matched shadow policy whose
    /// name this matches are checked (Envoy's `filter_enabled_metadata` on
    /// `envoy.filters.http.rbac`'s `SHADOW_PREFIXshadow_effective_policy_id`); none: every
    /// call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_by_shadow_policy: Option<ShadowPolicyMatch>,
    /// The caller's certificate (URL-encoded PEM) goes in the CheckRequest's
    /// `source.certificate`.
    #[serde(default)]
    pub include_peer_certificate: bool,
    /// How many of the listener's `rbac` filters run before this one (istiod: the shadow
    /// filter it adds in front of each ext_authz filter; the DENY and ALLOW ones after it).
    #[serde(default)]
    pub after_rbac: usize,
    /// It runs before the listener's `jwt_authn` filter (istiod's order: CUSTOM, then
    /// RequestAuthentication, then DENY / ALLOW); else after it.
    #[serde(default)]
    pub before_jwt_authn: bool,
    /// Counters `STAT_PREFIXext_authz.ok`, `.denied`, `.error`, `.failure_mode_allowed`,
    /// `.disabled` (Envoy's: `http.HCM_STAT_PREFIX.`).
    #[serde(default)]
    pub stat_prefix: String,
    /// The request headers (by lower-case name) the authorizer is told of (Envoy's
    /// `allowed_headers`): none given, every one (gRPC) or only Envoy's defaults (`http`:
    /// `authorization`, `:method`, `:path`, `:authority`, which it always gets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_headers: Vec<StringMatch>,
    /// An HTTP authorization service (Envoy's `http_service`, istiod's `envoyExtAuthzHttp`)
    /// at `cluster`, asked with an HTTP/1.1 request, instead of gRPC's `Authorization/Check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<ExtAuthzHttp>,
    /// The request body goes to the authorizer too (Envoy's `with_request_body`, istiod's
    /// `includeRequestBodyInCheck`): the request waits until its body ended or
    /// `max_request_bytes` of it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_request_body: Option<ExtAuthzBody>,
}

/// Envoy's `BufferSettings`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzBody {
    /// The most of the body sent (1 ..= the listener's `stream_window_bytes`, the most an
    /// HTTP/2 caller sends unacknowledged).
    pub max_request_bytes: u32,
    /// A longer body: its first `max_request_bytes` are sent (with
    /// `x-envoy-auth-partial-body: true`); else it is answered 413.
    #[serde(default)]
    pub allow_partial_message: bool,
    /// The body goes as `raw_body` (bytes) instead of `body` (UTF-8 text) in the CheckRequest.
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// Envoy's `http_service`: the check is the request's allowed headers (and no body) sent to
/// `PATH_PREFIX + :path` with the request's method; a 200 answer lets it through, a 5xx one
/// is an error, any other denies it with that status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzHttp {
    /// Put in front of the request's path (`path_prefix`; must start with `/` when set).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_prefix: String,
    /// Fields set on the check request (`authorization_request.headers_to_add`, plain
    /// values), replacing the request's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_add: Vec<(String, String)>,
    /// On a 200: the answer's headers these match are set on the request
    /// (`allowed_upstream_headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_upstream_headers: Vec<StringMatch>,
    /// On a 200: the answer's headers these match are added to the request beside its own
    /// (`allowed_upstream_headers_to_append`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_upstream_headers_to_append: Vec<StringMatch>,
    /// On a denial: the answer's headers these match (with `:status`, `content-length`,
    /// `www-authenticate` and `location`) go to the caller; none given: all but `host`
    /// (`allowed_client_headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_client_headers: Vec<StringMatch>,
    /// On a 200: the answer's headers these match are added to the response
    /// (`allowed_client_headers_on_success`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_client_headers_on_success: Vec<StringMatch>,
}

/// Which shadow policy name enables the check: the key the rbac filter wrote
/// (`SHADOW_PREFIXshadow_effective_policy_id`) and the matcher on its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowPolicyMatch {
    /// `shadow_rules_stat_prefix` of the rbac filter (istiod: `istio_ext_authz_`).
    #[serde(default)]
    pub shadow_rules_stat_prefix: String,
    pub policy: StringMatch,
}

fn default_timeout_ms() -> u64 {
    EXT_AUTHZ_TIMEOUT_MS_DEFAULT
}

fn default_status_on_error() -> u16 {
    403
}

impl ExtAuthz {
    pub(crate) fn validate(
        &self,
        clusters: &std::collections::HashSet<&str>,
        rbac_filters: usize,
        at: &dyn Fn(&str) -> String,
        err: &mut dyn FnMut(String, String),
    ) {
        if !clusters.contains(self.cluster.as_str()) {
            err(at("cluster"), format!("unknown cluster {:?}", self.cluster));
        }
        if self.timeout_ms == 0 || self.timeout_ms > EXT_AUTHZ_TIMEOUT_MS_MAX {
            err(
                at("timeout_ms"),
                format!(
                    "{} is out of range 1..={EXT_AUTHZ_TIMEOUT_MS_MAX}",
                    self.timeout_ms
                ),
            );
        }
        if !(200..=599).contains(&self.status_on_error) {
            err(
                at("status_on_error"),
                format!("{} is not an HTTP status 200..=599", self.status_on_error),
            );
        }
        if self.after_rbac > rbac_filters {
            err(
                at("after_rbac"),
                format!(
                    "{} but the listener has {rbac_filters} rbac filters",
                    self.after_rbac
                ),
            );
        }
        if let Some(m) = &self.enabled_by_shadow_policy {
            crate::validate_string_match(&m.policy, at("enabled_by_shadow_policy.policy"), err);
        }
        if self
            .with_request_body
            .is_some_and(|b| b.max_request_bytes == 0)
        {
            err(
                at("with_request_body.max_request_bytes"),
                "must be at least 1".into(),
            );
        }
        for (i, m) in self.allowed_headers.iter().enumerate() {
            crate::validate_string_match(m, at(&format!("allowed_headers[{i}]")), err);
        }
        if let Some(h) = &self.http {
            if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
                err(
                    at("http.path_prefix"),
                    format!("{:?} does not start with /", h.path_prefix),
                );
            }
            for (n, v) in &h.headers_to_add {
                if n.is_empty() || n.starts_with(':') || n.bytes().any(|b| b.is_ascii_uppercase()) {
                    err(
                        at("http.headers_to_add"),
                        format!("{n:?} is not a lower-case field name"),
                    );
                }
                if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    err(
                        at("http.headers_to_add"),
                        format!("the value of {n:?} has a line break"),
                    );
                }
            }
            let lists = [
                ("allowed_upstream_headers", &h.allowed_upstream_headers),
                (
                    "allowed_upstream_headers_to_append",
                    &h.allowed_upstream_headers_to_append,
                ),
                ("allowed_client_headers", &h.allowed_client_headers),
                (
                    "allowed_client_headers_on_success",
                    &h.allowed_client_headers_on_success,
                ),
            ];
            for (name, list) in lists {
                for (i, m) in list.iter().enumerate() {
                    crate::validate_string_match(m, at(&format!("http.{name}[{i}]")), err);
                }
            }
        }
    }
}
