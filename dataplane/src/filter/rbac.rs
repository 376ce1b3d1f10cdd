//! Authorization: a listener's network `rbac` filters (Envoy's `envoy.filters.network.rbac`),
//! evaluated once per connection (after its TLS handshake), and a Triple listener's HTTP
//! `rbac` filters (`envoy.filters.http.rbac`), evaluated once per call before routing; both
//! istiod's AuthorizationPolicy. Compiled once per config into trees of matchers, evaluated
//! with no allocation: the peer's SPIFFE id is read in place from its verified certificate,
//! a call's headers in place from its header list (docs/security.md#authorization).

use std::net::SocketAddr;

use super::chain::Cidr;
use crate::config;
use crate::route::{Matcher, NamedMatch, RouteError};
use crate::stats::{Kind, ShardStats, StatId, Stats};

/// A request, as the HTTP and Dubbo filters' rules read it (what a protocol does not have
/// is `None`, and rules on it do not match).
pub trait Request {
    /// The first value of header `name` (lower-case; pseudo-headers `:path`, `:authority`,
    /// `:method` too).
    fn header(&self, _name: &[u8]) -> Option<&[u8]> {
        None
    }
    /// A Dubbo request's interface.
    fn interface(&self) -> Option<&[u8]> {
        None
    }
    /// A Dubbo request's method.
    fn method(&self) -> Option<&[u8]> {
        None
    }
    /// The call's dynamic metadata (a verified JWT's payload).
    fn metadata(&self) -> Option<&super::jwt::Metadata> {
        None
    }
}

/// What a connection shows per-request rules, taken once when it is accepted.
pub struct ConnPeer {
    pub source: Option<SocketAddr>,
    /// The original destination under interception, else the listener's address.
    pub destination: Option<SocketAddr>,
    /// The caller's verified TLS certificate (DER), copied once per connection.
    pub certificate: Option<Box<[u8]>>,
    /// The TLS server name (SNI) it asked for; empty on plaintext or without SNI.
    pub server_name: Box<[u8]>,
}

impl ConnPeer {
    /// From `io::Conn::rbac_facts`: (source, destination, certificate, server name).
    #[allow(clippy::type_complexity)]
    pub fn new(
        (source, destination, certificate, server_name): (
            Option<SocketAddr>,
            Option<SocketAddr>,
            Option<Box<[u8]>>,
            Box<[u8]>,
        ),
    ) -> ConnPeer {
        ConnPeer {
            source,
            destination,
            certificate,
            server_name,
        }
    }

    /// The rules' view of a request on this connection.
    pub fn with<'a>(&'a self, request: &'a dyn Request) -> Peer<'a> {
        Peer {
            source: self.source,
            destination: self.destination,
            certificate: self.certificate.as_deref(),
            server_name: &self.server_name,
            request: Some(request),
        }
    }
}

/// What a connection (and, for the HTTP filter, a call) shows the rules.
pub struct Peer<'a> {
    /// The client's address.
    pub source: Option<SocketAddr>,
    /// Where it connected to (its original destination under interception).
    pub destination: Option<SocketAddr>,
    /// The client's verified TLS certificate (DER), if it sent one.
    pub certificate: Option<&'a [u8]>,
    /// The TLS server name (SNI) the client asked for: empty on plaintext or without SNI (as
    /// Envoy's `requestedServerName()`).
    pub server_name: &'a [u8],
    /// The call (HTTP filter); none for the network filter.
    pub request: Option<&'a dyn Request>,
}

/// A listener's rbac filters, in order: a connection passes when every one allows it.
pub struct Rbac {
    filters: Box<[Filter]>,
    /// The rules did not compile (a bug: config validation checks them): every connection is
    /// refused rather than let through.
    broken: bool,
}

struct Filter {
    rules: Option<Rules>,
    shadow: Option<Rules>,
    /// `shadow_rules_stat_prefix`: the metadata key its matched shadow policy goes under
    /// (`PREFIXshadow_effective_policy_id`), which an ext_authz filter may read.
    shadow_prefix: Box<str>,
    ids: RbacStatIds,
}

/// Envoy's counters of one filter (`STAT_PREFIXrbac.allowed`, ...).
#[derive(Clone, Copy)]
struct RbacStatIds {
    allowed: StatId,
    denied: StatId,
    shadow_allowed: StatId,
    shadow_denied: StatId,
}

struct Rules {
    action: config::RbacAction,
    policies: Box<[Policy]>,
}

struct Policy {
    name: Box<str>,
    permissions: Box<[Permission]>,
    principals: Box<[Principal]>,
}

enum Permission {
    Any,
    And(Box<[Permission]>),
    Or(Box<[Permission]>),
    Not(Box<Permission>),
    Port(u16),
    /// `[start, end)`.
    Ports(u16, u16),
    DestinationIp(Option<Cidr>),
    /// `:path` without its query or fragment.
    UrlPath(Matcher),
    Header(NamedMatch),
    Interface(Matcher),
    Method(Matcher),
    Metadata(super::jwt::MetaMatcher),
    /// The connection's TLS server name (empty: none).
    ServerName(Matcher),
}

enum Principal {
    Any,
    And(Box<[Principal]>),
    Or(Box<[Principal]>),
    Not(Box<Principal>),
    /// A verified certificate; with a matcher, one of its URI SANs matching it.
    Authenticated(Option<Matcher>),
    SourceIp(Option<Cidr>),
    Header(NamedMatch),
    Metadata(super::jwt::MetaMatcher),
}

impl Rbac {
    /// `None` for a listener without rbac filters. Validated config: a regex that does not
    /// compile is a bug; it is logged and the listener refuses every connection.
    pub fn new(filters: &[config::Rbac], st: &Stats) -> Option<Rbac> {
        if filters.is_empty() {
            return None;
        }
        Some(Self::compile(filters, st).unwrap_or_else(|e| {
            tracing::error!(error = %e, "rbac rules do not compile: refusing every connection");
            Rbac {
                filters: Box::new([]),
                broken: true,
            }
        }))
    }

    fn compile(filters: &[config::Rbac], st: &Stats) -> Result<Rbac, RouteError> {
        let filters = filters
            .iter()
            .map(|f| {
                // `STAT_PREFIXrbac.RULES_STAT_PREFIX.allowed` (the HTTP filter's rules prefix;
                // none: `STAT_PREFIXrbac.allowed`).
                let counter = |name: &str| {
                    let scope = match f.rules_stat_prefix.as_str() {
                        "" => format!("{}rbac", f.stat_prefix),
                        p => format!("{}rbac.{p}", f.stat_prefix),
                    };
                    st.add(&scope, name, &[], Kind::Counter)
                };
                // Envoy 1.40's names: `STAT_PREFIXrbac.SHADOW_PREFIX.shadow_allowed` (no
                // second dot without a shadow prefix).
                let shadow = |name: &str| {
                    let scope = match f.shadow_rules_stat_prefix.as_str() {
                        "" => format!("{}rbac", f.stat_prefix),
                        p => format!("{}rbac.{p}", f.stat_prefix),
                    };
                    st.add(&scope, name, &[], Kind::Counter)
                };
                Ok(Filter {
                    rules: f.rules.as_ref().map(Rules::new).transpose()?,
                    shadow: f.shadow_rules.as_ref().map(Rules::new).transpose()?,
                    shadow_prefix: f.shadow_rules_stat_prefix.clone().into_boxed_str(),
                    ids: RbacStatIds {
                        allowed: counter("allowed"),
                        denied: counter("denied"),
                        shadow_allowed: shadow("shadow_allowed"),
                        shadow_denied: shadow("shadow_denied"),
                    },
                })
            })
            .collect::<Result<_, RouteError>>()?;
        Ok(Rbac {
            filters,
            broken: false,
        })
    }

    /// Whether `peer` may go on, counted as Envoy counts: each filter's shadow rules are
    /// evaluated and counted, never enforced; its rules count `allowed` or `denied`, and the
    /// first filter that denies ends the evaluation.
    pub fn allows(&self, peer: &Peer<'_>, stats: &ShardStats) -> bool {
        self.allows_range(peer, stats, 0..usize::MAX, None).0
    }

    /// As [`Rbac::allows`], for the filters in `range` only (those before or after an
    /// ext_authz filter); with `shadow_prefix`, also the name of the shadow policy those
    /// filters with that `shadow_rules_stat_prefix` matched last (Envoy's
    /// `PREFIXshadow_effective_policy_id` metadata: the first matching policy by name of a
    /// filter, a later filter's replacing it).
    pub fn allows_range<'s>(
        &'s self,
        peer: &Peer<'_>,
        stats: &ShardStats,
        range: std::ops::Range<usize>,
        shadow_prefix: Option<&str>,
    ) -> (bool, Option<&'s str>) {
        let mut effective = None;
        if self.broken {
            return (false, effective);
        }
        let end = range.end.min(self.filters.len());
        for f in self
            .filters
            .get(range.start.min(end)..end)
            .unwrap_or_default()
        {
            if let Some(s) = &f.shadow {
                let allowed = match shadow_prefix.filter(|p| **p == *f.shadow_prefix) {
                    Some(_) => {
                        let first = s.first_match(peer);
                        if let Some(name) = first {
                            effective = Some(name);
                        }
                        s.decides(first.is_some())
                    }
                    None => s.allows(peer),
                };
                let id = match allowed {
                    true => f.ids.shadow_allowed,
                    false => f.ids.shadow_denied,
                };
                stats.inc(id);
            }
            if let Some(r) = &f.rules {
                if r.allows(peer) {
                    stats.inc(f.ids.allowed);
                } else {
                    stats.inc(f.ids.denied);
                    return (false, effective);
                }
            }
        }
        (true, effective)
    }
}

impl Rules {
    fn new(r: &config::RbacRules) -> Result<Rules, RouteError> {
        Ok(Rules {
            action: r.action,
            policies: r
                .policies
                .iter()
                .map(|p| {
                    Ok(Policy {
                        name: p.name.clone().into_boxed_str(),
                        permissions: p.permissions.iter().map(Permission::new).collect::<Result<
                            _,
                            RouteError,
                        >>(
                        )?,
                        principals: p
                            .principals
                            .iter()
                            .map(Principal::new)
                            .collect::<Result<_, RouteError>>()?,
                    })
                })
                .collect::<Result<_, RouteError>>()?,
        })
    }

    fn allows(&self, peer: &Peer<'_>) -> bool {
        let matched = self.policies.iter().any(|p| p.matches(peer));
        self.decides(matched)
    }

    /// The name of the first matching policy in name order (Envoy keeps them in a sorted
    /// map).
    fn first_match(&self, peer: &Peer<'_>) -> Option<&str> {
        self.policies
            .iter()
            .filter(|p| p.matches(peer))
            .map(|p| &*p.name)
            .min()
    }

    fn decides(&self, matched: bool) -> bool {
        match self.action {
            config::RbacAction::Allow => matched,
            config::RbacAction::Deny => !matched,
            config::RbacAction::Log => true,
        }
    }
}

impl Policy {
    fn matches(&self, peer: &Peer<'_>) -> bool {
        self.permissions.iter().any(|m| m.matches(peer))
            && self.principals.iter().any(|m| m.matches(peer))
    }
}

impl Permission {
    fn new(p: &config::Permission) -> Result<Permission, RouteError> {
        use config::Permission as P;
        let list = |l: &[P]| l.iter().map(Permission::new).collect::<Result<_, _>>();
        Ok(match p {
            P::Any(_) => Permission::Any,
            P::AndRules(l) => Permission::And(list(l)?),
            P::OrRules(l) => Permission::Or(list(l)?),
            P::NotRule(p) => Permission::Not(Box::new(Permission::new(p)?)),
            P::DestinationPort(port) => Permission::Port(*port),
            P::DestinationPortRange { start, end } => Permission::Ports(*start, *end),
            P::DestinationIp(c) => Permission::DestinationIp(Cidr::parse(c)),
            P::UrlPath(m) => Permission::UrlPath(Matcher::new(m)?),
            P::Header(h) => Permission::Header(named(h)?),
            P::DubboInterface(m) => Permission::Interface(Matcher::new(m)?),
            P::DubboMethod(m) => Permission::Method(Matcher::new(m)?),
            P::Metadata(m) => Permission::Metadata(super::jwt::MetaMatcher::new(m)?),
            P::RequestedServerName(m) => Permission::ServerName(Matcher::new(m)?),
        })
    }

    /// Recursion depth bounded by `config::RBAC_DEPTH_MAX` (validated).
    fn matches(&self, peer: &Peer<'_>) -> bool {
        let port = peer.destination.map(|a| a.port());
        match self {
            Permission::Any => true,
            Permission::And(l) => l.iter().all(|m| m.matches(peer)),
            Permission::Or(l) => l.iter().any(|m| m.matches(peer)),
            Permission::Not(m) => !m.matches(peer),
            Permission::Port(p) => port == Some(*p),
            Permission::Ports(lo, hi) => port.is_some_and(|p| (*lo..*hi).contains(&p)),
            Permission::DestinationIp(c) => match (c, peer.destination) {
                (Some(c), Some(a)) => c.contains(a.ip()),
                _ => false,
            },
            Permission::UrlPath(m) => peer
                .request
                .and_then(|r| r.header(b":path"))
                .is_some_and(|p| m.matches(url_path(p))),
            Permission::Header(h) => header_matches(h, peer),
            Permission::Interface(m) => peer
                .request
                .and_then(|r| r.interface())
                .is_some_and(|v| m.matches(v)),
            Permission::Method(m) => peer
                .request
                .and_then(|r| r.method())
                .is_some_and(|v| m.matches(v)),
            Permission::Metadata(m) => m.matches(peer.request.and_then(|r| r.metadata())),
            Permission::ServerName(m) => m.matches(peer.server_name),
        }
    }
}

impl Principal {
    fn new(p: &config::Principal) -> Result<Principal, RouteError> {
        use config::Principal as P;
        let list = |l: &[P]| l.iter().map(Principal::new).collect::<Result<_, _>>();
        Ok(match p {
            P::Any(_) => Principal::Any,
            P::AndIds(l) => Principal::And(list(l)?),
            P::OrIds(l) => Principal::Or(list(l)?),
            P::NotId(p) => Principal::Not(Box::new(Principal::new(p)?)),
            P::Authenticated { principal_name } => {
                Principal::Authenticated(Matcher::optional(principal_name)?)
            }
            P::SourceIp(c) | P::DirectRemoteIp(c) | P::RemoteIp(c) => {
                Principal::SourceIp(Cidr::parse(c))
            }
            P::Header(h) => Principal::Header(named(h)?),
            P::Metadata(m) => Principal::Metadata(super::jwt::MetaMatcher::new(m)?),
        })
    }

    fn matches(&self, peer: &Peer<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(l) => l.iter().all(|m| m.matches(peer)),
            Principal::Or(l) => l.iter().any(|m| m.matches(peer)),
            Principal::Not(m) => !m.matches(peer),
            Principal::Authenticated(name) => match (peer.certificate, name) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(der), Some(m)) => tls::x509::uri_sans_iter(der).any(|san| m.matches(san)),
            },
            Principal::SourceIp(c) => match (c, peer.source) {
                (Some(c), Some(a)) => c.contains(a.ip()),
                _ => false,
            },
            Principal::Header(h) => header_matches(h, peer),
            Principal::Metadata(m) => m.matches(peer.request.and_then(|r| r.metadata())),
        }
    }
}

fn named(h: &config::HeaderMatch) -> Result<NamedMatch, RouteError> {
    NamedMatch::header(h)
}

/// A header condition; a connection (no request) has no headers.
fn header_matches(h: &NamedMatch, peer: &Peer<'_>) -> bool {
    h.matches(peer.request.and_then(|r| r.header(&h.name)))
}

/// Envoy's `url_path`: the path without its query and fragment.
fn url_path(p: &[u8]) -> &[u8] {
    match p.iter().position(|b| *b == b'?' || *b == b'#') {
        Some(i) => &p[..i],
        None => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Headers(&'static [(&'static str, &'static str)]);

    impl Request for Headers {
        fn header(&self, name: &[u8]) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(n, _)| n.as_bytes() == name)
                .map(|(_, v)| v.as_bytes())
        }
    }

    #[test]
    fn http_rules_read_the_path_without_query_and_headers_in_place() {
        let yaml = "\
stat_prefix: http.in.
rules_stat_prefix: r_
rules:
  action: deny
  policies:
    - name: admin
      permissions:
        - and_rules:
            - url_path: {prefix: /pkg.Admin/}
            - not_rule: {header: {name: x-debug, present: true}}
      principals: [{any: true}]
";
        let filter: config::Rbac = serde_yaml::from_str(yaml).unwrap();
        let st = Arc::new(Stats::new(1, &Default::default()).unwrap());
        let rbac = Rbac::new(&[filter], &st).unwrap();
        let shard = st.shard(0);
        let allows = |h: &'static [(&'static str, &'static str)]| {
            let req = Headers(h);
            let peer = Peer {
                source: None,
                destination: None,
                certificate: None,
                server_name: b"",
                request: Some(&req),
            };
            rbac.allows(&peer, &shard)
        };
        assert!(
            !allows(&[(":path", "/pkg.Admin/Drop?x=1")]),
            "query ignored"
        );
        assert!(allows(&[(":path", "/pkg.Admin/Drop"), ("x-debug", "1")]));
        assert!(allows(&[(":path", "/pkg.User/Get")]));
        // A connection (no request) matches no url_path.
        let conn = Peer {
            source: None,
            destination: None,
            certificate: None,
            server_name: b"",
            request: None,
        };
        assert!(rbac.allows(&conn, &shard));
        let id = |n: &str| st.add("http.in.rbac.r_", n, &[], Kind::Counter);
        assert_eq!(shard.get(id("allowed")), 3);
        assert_eq!(shard.get(id("denied")), 1);
    }
}
