//! JWT authentication (Envoy's `envoy.filters.http.jwt_authn`, what istiod makes of a
//! RequestAuthentication): a Triple listener's `triple.jwt_authn`, checked once per call before
//! its `rbac` filters and routing (docs/security.md#jwt-authentication).

use serde::{Deserialize, Serialize};

use crate::StringMatch;

/// Most providers of one filter.
pub const JWT_PROVIDERS_MAX: usize = 64;
/// Most requirement rules of one filter.
pub const JWT_RULES_MAX: usize = 256;
/// Deepest nesting of `requires_any` / `requires_all`.
pub const JWT_DEPTH_MAX: usize = 8;
/// Largest inline JWKS (bytes).
pub const JWT_JWKS_BYTES_MAX: usize = 1 << 20;

/// The filter: providers by name, and the rules that say which a request needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthn {
    /// Counters `STAT_PREFIXallowed`, `STAT_PREFIXdenied`, `STAT_PREFIXcors_preflight_bypassed`
    /// (Envoy's: `http.HCM_STAT_PREFIX.jwt_authn.` and the filter's own `stat_prefix`).
    #[serde(default)]
    pub stat_prefix: String,
    pub providers: Vec<JwtProvider>,
    /// The first rule whose path matches decides; none: the request needs nothing.
    #[serde(default)]
    pub rules: Vec<JwtRule>,
    /// A CORS preflight (OPTIONS with `origin` and `access-control-request-method`) passes
    /// untouched.
    #[serde(default)]
    pub bypass_cors_preflight: bool,
    /// A failed request's answer has no body and no `www-authenticate`.
    #[serde(default)]
    pub strip_failure_response: bool,
}

/// Where a token may be: a header, after `value_prefix` (Envoy: found anywhere in the value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default)]
    pub value_prefix: String,
}

/// A header set from a verified token's claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtClaimToHeader {
    pub header_name: String,
    pub claim_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    pub name: String,
    /// The `iss` a token must have; empty: any.
    #[serde(default)]
    pub issuer: String,
    /// One of the token's `aud` must be one of these (`http(s)://` and a trailing `/`
    /// ignored); empty: any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The keys (a JWKS, JSON), parsed once per config; one that holds no usable key fails
    /// every token (Envoy: "Jwks doesn't have any valid public key").
    pub local_jwks: String,
    /// Keep the token in the request going upstream (default: its header is removed).
    #[serde(default)]
    pub forward: bool,
    /// Default (none of `from_headers`, `from_params`): `authorization: Bearer ...` and the
    /// `access_token` query parameter.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    /// The verified payload becomes the request's dynamic metadata under this key of
    /// `envoy.filters.http.jwt_authn` (istiod: `payload`).
    #[serde(default)]
    pub payload_in_metadata: String,
    /// Claims whose string value becomes a list of its space-separated words in that
    /// metadata (istiod: `scope`, `permission`).
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
    /// The token's payload (base64url, as sent) in this header upstream.
    #[serde(default)]
    pub forward_payload_header: String,
    #[serde(default)]
    pub pad_forward_payload_header: bool,
    #[serde(default)]
    pub claim_to_headers: Vec<JwtClaimToHeader>,
    /// Envoy's `clear_route_cache`: once a token passed and a claim went to a header or the
    /// payload to metadata, a denial after the filter (rbac, ext_authz) takes the route of the
    /// request as the filter left it, with its payloads; else that of the request as it came.
    #[serde(default)]
    pub clear_route_cache: bool,
    /// Allowed clock difference for `exp` and `nbf`; 0: 60 s (Envoy's default).
    #[serde(default)]
    pub clock_skew_seconds: u32,
}

/// Which requests need what: `match` on the path (without its query).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRule {
    /// `exact` (Envoy's `path`), `prefix` or `regex` on the path.
    #[serde(rename = "match")]
    pub path: StringMatch,
    /// None: the request needs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<JwtRequirement>,
}

/// Envoy's `JwtRequirement`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JwtRequirement {
    ProviderName(String),
    ProviderAndAudiences {
        provider_name: String,
        audiences: Vec<String>,
    },
    RequiresAny(Vec<JwtRequirement>),
    RequiresAll(Vec<JwtRequirement>),
    /// Must be `true`: no token passes, an invalid one fails (inside `requires_any`: checked
    /// with its siblings' providers).
    AllowMissing(bool),
    /// Must be `true`: every request passes; valid tokens still give their payload.
    AllowMissingOrFailed(bool),
}

impl JwtAuthn {
    pub(crate) fn validate(
        &self,
        at: &dyn Fn(&str) -> String,
        err: &mut dyn FnMut(String, String),
    ) {
        if self.providers.len() > JWT_PROVIDERS_MAX {
            err(
                at("providers"),
                format!(
                    "{} providers: at most {JWT_PROVIDERS_MAX}",
                    self.providers.len()
                ),
            );
        }
        if self.rules.len() > JWT_RULES_MAX {
            err(
                at("rules"),
                format!("{} rules: at most {JWT_RULES_MAX}", self.rules.len()),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = |f: &str| at(&format!("providers[{i}].{f}"));
            if !names.insert(p.name.as_str()) {
                err(at("name"), format!("{:?} is named twice", p.name));
            }
            if p.local_jwks.len() > JWT_JWKS_BYTES_MAX {
                err(at("local_jwks"), format!("over {JWT_JWKS_BYTES_MAX} bytes"));
            }
            let header = |name: &str, f: &str, err: &mut dyn FnMut(String, String)| {
                if name.is_empty()
                    || name.starts_with(':')
                    || name
                        .bytes()
                        .any(|b| b.is_ascii_uppercase() || !b.is_ascii_graphic())
                {
                    err(
                        at(f),
                        format!("{name:?}: a header name is non-empty and lower-case"),
                    );
                }
            };
            for (k, h) in p.from_headers.iter().enumerate() {
                header(&h.name, &format!("from_headers[{k}].name"), err);
            }
            for (k, h) in p.claim_to_headers.iter().enumerate() {
                header(
                    &h.header_name,
                    &format!("claim_to_headers[{k}].header_name"),
                    err,
                );
            }
            if !p.forward_payload_header.is_empty() {
                header(&p.forward_payload_header, "forward_payload_header", err);
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = |f: &str| at(&format!("rules[{i}].{f}"));
            crate::validate_string_match(&r.path, at("match"), err);
            if let Some(q) = &r.requires {
                q.validate(&names, &at("requires"), 1, err);
            }
        }
    }
}

impl JwtRequirement {
    fn validate(
        &self,
        providers: &std::collections::HashSet<&str>,
        at: &str,
        d: usize,
        err: &mut dyn FnMut(String, String),
    ) {
        if d > JWT_DEPTH_MAX {
            err(
                at.to_string(),
                format!("nested deeper than {JWT_DEPTH_MAX}"),
            );
            return;
        }
        let known = |name: &str, err: &mut dyn FnMut(String, String)| {
            if !providers.contains(name) {
                // Envoy: "Required provider ['NAME'] is not configured."
                err(
                    at.to_string(),
                    format!("provider {name:?} is not configured"),
                );
            }
        };
        match self {
            JwtRequirement::ProviderName(n) => known(n, err),
            JwtRequirement::ProviderAndAudiences { provider_name, .. } => known(provider_name, err),
            JwtRequirement::RequiresAny(l) | JwtRequirement::RequiresAll(l) => {
                if l.len() < 2 {
                    // Envoy's proto: `requirements` has at least 2 items.
                    err(
                        at.to_string(),
                        "requires_any / requires_all list at least 2".into(),
                    );
                }
                for (i, r) in l.iter().enumerate() {
                    r.validate(providers, &format!("{at}[{i}]"), d + 1, err);
                }
            }
            JwtRequirement::AllowMissing(b) | JwtRequirement::AllowMissingOrFailed(b) => {
                if !b {
                    err(at.to_string(), "must be true".into());
                }
            }
        }
    }
}

/// The jwt_authn filter's name: the metadata namespace of verified payloads.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";

/// A condition on a call's dynamic metadata (Envoy's `MetadataMatcher`): the value at `path`
/// under `filter` (only `envoy.filters.http.jwt_authn`'s verified payloads exist: any other
/// filter's value is absent) matched by `value`, then `invert`ed. istiod's RBAC
/// `requestPrincipals` / `request.auth.claims` and a VirtualService's `request.auth.claims`
/// headers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataMatch {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueMatch,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// Envoy's `ValueMatcher` (the kinds istiod writes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ValueMatch {
    /// A string value matching.
    String(StringMatch),
    /// `true`: any value is there; `false`: never matches (Envoy).
    Present(bool),
    /// A null value.
    Null,
    Bool(bool),
    /// A list one of whose items matches (`list_match.one_of`).
    List(Box<ValueMatch>),
    /// One of these matches.
    Or(Vec<ValueMatch>),
}

impl MetadataMatch {
    pub(crate) fn validate(&self, at: &str, err: &mut dyn FnMut(String, String)) {
        if self.path.is_empty() {
            err(format!("{at}.path"), "at least one key".into());
        }
        self.value.validate(&format!("{at}.value"), 1, err);
    }
}

impl ValueMatch {
    fn validate(&self, at: &str, d: usize, err: &mut dyn FnMut(String, String)) {
        if d > JWT_DEPTH_MAX {
            err(
                at.to_string(),
                format!("nested deeper than {JWT_DEPTH_MAX}"),
            );
            return;
        }
        match self {
            ValueMatch::String(m) => crate::validate_string_match(m, format!("{at}.string"), err),
            ValueMatch::List(v) => v.validate(&format!("{at}.list"), d + 1, err),
            ValueMatch::Or(l) => {
                for (i, v) in l.iter().enumerate() {
                    v.validate(&format!("{at}.or[{i}]"), d + 1, err);
                }
            }
            ValueMatch::Present(_) | ValueMatch::Null | ValueMatch::Bool(_) => {}
        }
    }
}
