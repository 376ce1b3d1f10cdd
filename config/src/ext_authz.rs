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
    }
}
