//! Authorization (Envoy's `envoy.filters.network.rbac` and `envoy.filters.http.rbac`, what
//! istiod makes of an AuthorizationPolicy): a listener's `rbac` filters, evaluated in order once
//! per connection, and a Triple listener's `triple.rbac` filters, evaluated once per call
//! (docs/security.md#authorization).

use serde::{Deserialize, Serialize};

use crate::{HeaderMatch, MetadataMatch, StringMatch};

/// Where a set of rbac filters runs: what its rules may look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RbacScope {
    /// A listener's `rbac`: once per connection, no request to look at.
    Network,
    /// A Triple listener's `triple.rbac`: once per call, its headers too.
    Http,
    /// A Dubbo listener's `dubbo.rbac`: once per request, its interface and method too.
    Dubbo,
}

/// Most policies of one rules set (istiod: one per AuthorizationPolicy rule).
pub const RBAC_POLICIES_MAX: usize = 1024;
/// Deepest nesting of `and_*` / `or_*` / `not_*` (the evaluation recurses this deep).
pub const RBAC_DEPTH_MAX: usize = 16;
/// Most `rbac` filters of one listener (istiod: DENY, ALLOW, AUDIT).
pub const RBAC_FILTERS_MAX: usize = 8;

/// One RBAC filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rbac {
    /// Counters `STAT_PREFIXrbac.allowed`, `.denied` (Envoy's names; istiod: `tcp.` for the
    /// network filter; the HTTP filter's are `http.HCM_STAT_PREFIX.`).
    #[serde(default)]
    pub stat_prefix: String,
    /// The HTTP filter's `rules_stat_prefix`: the enforced rules' counters are
    /// `STAT_PREFIXrbac.RULES_STAT_PREFIX.allowed` (none: `STAT_PREFIXrbac.allowed`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rules_stat_prefix: String,
    /// Enforced; none: every connection passes this filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RbacRules>,
    /// Evaluated and counted (`STAT_PREFIXrbac.SHADOW_PREFIX.shadow_allowed`, `shadow_denied`),
    /// never enforced (istiod's dry-run policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_rules: Option<RbacRules>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shadow_rules_stat_prefix: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacRules {
    #[serde(default)]
    pub action: RbacAction,
    #[serde(default)]
    pub policies: Vec<RbacPolicy>,
}

/// `allow`: a connection passes when a policy matches; `deny`: when none does; `log`: always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RbacAction {
    #[default]
    Allow,
    Deny,
    Log,
}

/// Matches a connection when one of `permissions` and one of `principals` match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacPolicy {
    pub name: String,
    /// Each rule a map of one key (`url_path: {...}`, Envoy's form), not a YAML tag
    /// (serde_yaml's default for enums).
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub permissions: Vec<Permission>,
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub principals: Vec<Principal>,
}

/// What the connection asks for (its destination).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Permission {
    /// Must be `true`.
    Any(bool),
    AndRules(Vec<Permission>),
    OrRules(Vec<Permission>),
    NotRule(Box<Permission>),
    /// The port the client connected to (the original destination's, under interception).
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPortRange {
        start: u16,
        end: u16,
    },
    /// A CIDR (`10.0.0.0/8`) the destination address is in.
    DestinationIp(String),
    /// HTTP only: the request's `:path` without its query (Envoy's `url_path`).
    UrlPath(StringMatch),
    /// HTTP only: a request header (pseudo-headers `:authority`, `:method`, `:path` too).
    Header(HeaderMatch),
    /// Dubbo only: the request's interface (Aeraki's `dubboInterface`).
    DubboInterface(StringMatch),
    /// Dubbo only: the request's method (Aeraki's `dubboMethod`).
    DubboMethod(StringMatch),
    /// HTTP only: the call's dynamic metadata (a verified JWT's payload).
    Metadata(MetadataMatch),
    /// The TLS server name (SNI) the client asked for on the connection; empty on plaintext
    /// or without SNI (Envoy's `requested_server_name`).
    RequestedServerName(StringMatch),
}

/// Who the peer is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Principal {
    /// Must be `true`.
    Any(bool),
    AndIds(Vec<Principal>),
    OrIds(Vec<Principal>),
    NotId(Box<Principal>),
    /// A peer with a verified TLS client certificate; with `principal_name`, one of whose URI
    /// SANs (the SPIFFE id) matches it.
    Authenticated {
        #[serde(default)]
        principal_name: Option<StringMatch>,
    },
    /// CIDR of the peer's address (`source_ip`, `direct_remote_ip` and `remote_ip` are the
    /// same for a connection: ringside reads no PROXY protocol or forwarded header).
    SourceIp(String),
    DirectRemoteIp(String),
    RemoteIp(String),
    /// HTTP only: a request header (istiod's `request.headers[...]` conditions).
    Header(HeaderMatch),
    /// HTTP only: the call's dynamic metadata (istiod's `requestPrincipals`,
    /// `request.auth.claims[...]`: a verified JWT's payload).
    Metadata(MetadataMatch),
}

impl Rbac {
    pub(crate) fn validate(
        &self,
        scope: RbacScope,
        at: &dyn Fn(&str) -> String,
        err: &mut dyn FnMut(String, String),
    ) {
        for (f, r) in [("rules", &self.rules), ("shadow_rules", &self.shadow_rules)] {
            let Some(r) = r else { continue };
            if r.policies.len() > RBAC_POLICIES_MAX {
                err(
                    at(&format!("{f}.policies")),
                    format!("{} policies: at most {RBAC_POLICIES_MAX}", r.policies.len()),
                );
            }
            for (i, p) in r.policies.iter().enumerate() {
                let at = |g: &str| at(&format!("{f}.policies[{i}].{g}"));
                for (k, m) in p.permissions.iter().enumerate() {
                    m.validate(&at(&format!("permissions[{k}]")), scope, 1, err);
                }
                for (k, m) in p.principals.iter().enumerate() {
                    m.validate(&at(&format!("principals[{k}]")), scope, 1, err);
                }
            }
        }
        if scope != RbacScope::Http && !self.rules_stat_prefix.is_empty() {
            err(
                at("rules_stat_prefix"),
                "only the HTTP filter (triple.rbac) has one".into(),
            );
        }
    }
}

/// A rule that reads a request of one protocol, in a filter of another scope.
fn only_in(
    want: RbacScope,
    at: &str,
    scope: RbacScope,
    what: &str,
    err: &mut dyn FnMut(String, String),
) {
    if scope != want {
        let home = match want {
            RbacScope::Http => "a triple listener's triple.rbac",
            RbacScope::Dubbo => "a dubbo listener's dubbo.rbac",
            RbacScope::Network => "a listener's rbac",
        };
        err(
            format!("{at}.{what}"),
            format!("matches a request: only in {home}"),
        );
    }
}

fn cidr(at: &str, s: &str, err: &mut dyn FnMut(String, String)) {
    if let Err(e) = crate::parse_cidr(s) {
        err(at.to_string(), e);
    }
}

fn depth(at: &str, d: usize, err: &mut dyn FnMut(String, String)) -> bool {
    if d > RBAC_DEPTH_MAX {
        err(
            at.to_string(),
            format!("nested deeper than {RBAC_DEPTH_MAX}"),
        );
        return false;
    }
    true
}

impl Permission {
    fn validate(&self, at: &str, scope: RbacScope, d: usize, err: &mut dyn FnMut(String, String)) {
        if !depth(at, d, err) {
            return;
        }
        match self {
            Permission::Any(false) => err(format!("{at}.any"), "must be true".into()),
            Permission::Any(true) | Permission::DestinationPort(_) => {}
            Permission::AndRules(l) | Permission::OrRules(l) => {
                for (i, p) in l.iter().enumerate() {
                    p.validate(&format!("{at}[{i}]"), scope, d + 1, err);
                }
            }
            Permission::NotRule(p) => p.validate(&format!("{at}.not_rule"), scope, d + 1, err),
            Permission::DestinationPortRange { start, end } if start > end => err(
                format!("{at}.destination_port_range"),
                format!("start {start} is above end {end}"),
            ),
            Permission::DestinationPortRange { .. } => {}
            Permission::DestinationIp(s) => cidr(&format!("{at}.destination_ip"), s, err),
            Permission::UrlPath(m) => {
                only_in(RbacScope::Http, at, scope, "url_path", err);
                crate::validate_string_match(m, format!("{at}.url_path"), err);
            }
            Permission::Header(h) => {
                only_in(RbacScope::Http, at, scope, "header", err);
                crate::validate_header_match(h, format!("{at}.header"), err);
            }
            Permission::DubboInterface(m) => {
                only_in(RbacScope::Dubbo, at, scope, "dubbo_interface", err);
                crate::validate_string_match(m, format!("{at}.dubbo_interface"), err);
            }
            Permission::DubboMethod(m) => {
                only_in(RbacScope::Dubbo, at, scope, "dubbo_method", err);
                crate::validate_string_match(m, format!("{at}.dubbo_method"), err);
            }
            Permission::Metadata(m) => {
                only_in(RbacScope::Http, at, scope, "metadata", err);
                m.validate(&format!("{at}.metadata"), err);
            }
            Permission::RequestedServerName(m) => {
                crate::validate_string_match(m, format!("{at}.requested_server_name"), err);
            }
        }
    }
}

impl Principal {
    fn validate(&self, at: &str, scope: RbacScope, d: usize, err: &mut dyn FnMut(String, String)) {
        if !depth(at, d, err) {
            return;
        }
        match self {
            Principal::Any(false) => err(format!("{at}.any"), "must be true".into()),
            Principal::Any(true) => {}
            Principal::AndIds(l) | Principal::OrIds(l) => {
                for (i, p) in l.iter().enumerate() {
                    p.validate(&format!("{at}[{i}]"), scope, d + 1, err);
                }
            }
            Principal::NotId(p) => p.validate(&format!("{at}.not_id"), scope, d + 1, err),
            Principal::Authenticated { principal_name } => {
                if let Some(Err(e)) = principal_name
                    .as_ref()
                    .and_then(|m| m.regex.as_deref())
                    .map(regex::Regex::new)
                {
                    err(
                        format!("{at}.authenticated.principal_name.regex"),
                        e.to_string(),
                    );
                }
            }
            Principal::SourceIp(s) | Principal::DirectRemoteIp(s) | Principal::RemoteIp(s) => {
                cidr(&format!("{at}.ip"), s, err)
            }
            Principal::Header(h) => {
                only_in(RbacScope::Http, at, scope, "header", err);
                crate::validate_header_match(h, format!("{at}.header"), err);
            }
            Principal::Metadata(m) => {
                only_in(RbacScope::Http, at, scope, "metadata", err);
                m.validate(&format!("{at}.metadata"), err);
            }
        }
    }
}
