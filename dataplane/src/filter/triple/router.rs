//! Triple/gRPC routing: routes compiled once from config, matched against a stream's request
//! headers (`:path` split into service and method, `:authority`, the `tri-*` headers and any
//! other header). The virtual host is chosen by `:authority` (flat `routes` are one host of
//! domain `*`); within it the first match wins; the listener's `cluster` is the default route.

use super::headers::HeaderList;
use crate::config;
use crate::route::{HostRoutes, Hosts, Match, Matcher, NamedMatch, RouteError};

/// What a route sees of a request.
pub struct RequestView<'a> {
    /// The whole `:path` (HTTP/1.1: the request target), query included.
    pub path: &'a [u8],
    pub service: &'a [u8],
    pub method: &'a [u8],
    pub headers: &'a HeaderList,
    /// Its dynamic metadata (a verified JWT's payload).
    pub metadata: Option<&'a crate::filter::jwt::Metadata>,
}

/// `/{service}/{method...}`: the path (without its query) split at its first `/` after the
/// leading one; `method` is empty when there is none.
pub fn path_parts(path: &[u8]) -> (&[u8], &[u8]) {
    let path = &path[..path.iter().position(|&b| b == b'?').unwrap_or(path.len())];
    let rest = path.strip_prefix(b"/").unwrap_or(path);
    match rest.iter().position(|&b| b == b'/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, b""),
    }
}

/// One route's conditions; every one given must hold.
pub struct Route {
    service: Option<Matcher>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    /// `tri-service-version`, `tri-service-group` and `tri-unit-info` (exact), then the
    /// `headers` conditions.
    headers: Vec<NamedMatch>,
    path: Option<PathCond>,
    query: Vec<NamedMatch>,
    /// `dynamic_metadata` conditions.
    metadata: Vec<crate::filter::jwt::MetaMatcher>,
    /// Its header mutations (with its host's and the listener's); `None` when there are none.
    pub mutations: Option<std::sync::Arc<super::mutate::RouteHeaders>>,
    /// Its `name` (`%ROUTE_NAME%` in access logs; `None` when unnamed or empty), shared with
    /// the calls' records by reference count (the router is this shard's own).
    pub name: Option<std::rc::Rc<str>>,
}

/// A condition on the path without its query and fragment (Envoy's `prefix`, `path`,
/// `safe_regex`, `path_separated_prefix`; the bool: ignore ASCII case).
enum PathCond {
    Exact(Box<[u8]>, bool),
    Prefix(Box<[u8]>, bool),
    Separated(Box<[u8]>, bool),
    Regex(Matcher),
}

impl PathCond {
    fn new(p: &config::PathMatch) -> Result<Self, RouteError> {
        let fold = |v: &str| -> Box<[u8]> {
            match p.ignore_case {
                true => v.to_ascii_lowercase().into_bytes().into(),
                false => v.as_bytes().into(),
            }
        };
        Ok(match p {
            config::PathMatch { exact: Some(e), .. } => PathCond::Exact(fold(e), p.ignore_case),
            config::PathMatch {
                prefix: Some(v), ..
            } => PathCond::Prefix(fold(v), p.ignore_case),
            config::PathMatch {
                separated_prefix: Some(v),
                ..
            } => PathCond::Separated(fold(v), p.ignore_case),
            config::PathMatch { regex, .. } => {
                PathCond::Regex(Matcher::new(&config::StringMatch {
                    regex: Some(regex.clone().unwrap_or_default()),
                    ..Default::default()
                })?)
            }
        })
    }

    fn matches(&self, path: &[u8]) -> bool {
        let end = path
            .iter()
            .position(|&b| b == b'?' || b == b'#')
            .unwrap_or(path.len());
        let path = &path[..end];
        let starts = |p: &[u8], fold: bool| {
            path.len() >= p.len()
                && match fold {
                    true => path[..p.len()].eq_ignore_ascii_case(p),
                    false => &path[..p.len()] == p,
                }
        };
        match self {
            PathCond::Exact(e, fold) => path.len() == e.len() && starts(e, *fold),
            PathCond::Prefix(p, fold) => starts(p, *fold),
            PathCond::Separated(p, fold) => {
                starts(p, *fold) && (path.len() == p.len() || path[p.len()] == b'/')
            }
            PathCond::Regex(r) => r.matches(path),
        }
    }
}

/// The first value of query parameter `name` in `path` (after `?`, up to `#`; `&`-separated
/// `name=value` pairs, a pair without `=` has the empty value), not decoded: as Envoy's
/// `QueryParamsMulti::parseQueryString` and `getFirstValue`.
fn query_value<'a>(path: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let start = path.iter().position(|&b| b == b'?')? + 1;
    let rest = &path[start..];
    let rest = &rest[..rest.iter().position(|&b| b == b'#').unwrap_or(rest.len())];
    rest.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (!pair.is_empty() && k == name).then_some(v)
    })
}

impl Match<RequestView<'_>> for Route {
    fn matches(&self, r: &RequestView<'_>) -> bool {
        self.service.as_ref().is_none_or(|m| m.matches(r.service))
            && self.method.as_ref().is_none_or(|m| m.matches(r.method))
            && self
                .authority
                .as_ref()
                .is_none_or(|m| m.matches(r.headers.get(b":authority").unwrap_or(b"")))
            && self
                .headers
                .iter()
                .all(|h| h.matches(r.headers.get(&h.name)))
            && self.path.as_ref().is_none_or(|p| p.matches(r.path))
            && self
                .query
                .iter()
                .all(|q| q.matches(query_value(r.path, &q.name)))
            && self.metadata.iter().all(|m| m.matches(r.metadata))
    }
}

impl crate::route::Matched for Route {
    fn matched_len(&self) -> Option<usize> {
        match &self.path {
            Some(PathCond::Exact(p, _) | PathCond::Prefix(p, _) | PathCond::Separated(p, _)) => {
                Some(p.len())
            }
            Some(PathCond::Regex(_)) | None => None,
        }
    }
}

/// One listener's compiled Triple routes.
pub type Router = Hosts<Route>;

/// Compiles a listener's Triple routes (validated config: errors are bugs, reported).
pub fn compile(l: &config::Listener, clusters: &[config::Cluster]) -> Result<Router, RouteError> {
    let any = ["*".to_string()];
    let (hosts, ignore_port): (Vec<HostRoutes<'_, config::TripleRoute>>, bool) = match &l.triple {
        Some(t) if !t.virtual_hosts.is_empty() => (
            t.virtual_hosts
                .iter()
                .map(|h| HostRoutes {
                    domains: &h.domains,
                    routes: &h.routes,
                })
                .collect(),
            t.ignore_port_in_host_matching,
        ),
        Some(t) => (
            vec![HostRoutes {
                domains: &any,
                routes: &t.routes,
            }],
            false,
        ),
        None => (Vec::new(), false),
    };
    // Which host each route (in compile order: hosts in order, each one's routes) is of.
    let host_levels: Vec<Option<&config::HeaderMutations>> = match &l.triple {
        Some(t) if !t.virtual_hosts.is_empty() => t
            .virtual_hosts
            .iter()
            .flat_map(|h| h.routes.iter().map(move |_| Some(&h.headers)))
            .collect(),
        _ => Vec::new(),
    };
    let listener_level = match &l.triple {
        Some(t) => super::mutate::Listener::compile(t)?,
        None => Default::default(),
    };
    let next = std::cell::Cell::new(0usize);
    Hosts::compile(&hosts, ignore_port, l.cluster.as_deref(), clusters, |r| {
        let i = next.replace(next.get() + 1);
        let host_level = host_levels.get(i).copied().flatten();
        let mutations = super::mutate::RouteHeaders::compile(r, host_level, &listener_level)?;
        let m = &r.matcher;
        let mut headers = Vec::with_capacity(m.headers.len() + 3);
        for (name, v) in [
            (&b"tri-service-version"[..], &m.version),
            (b"tri-service-group", &m.group),
            (b"tri-unit-info", &m.unit),
        ] {
            if let Some(v) = v {
                headers.push(NamedMatch::exact(name, v));
            }
        }
        for h in &m.headers {
            headers.push(NamedMatch::header(h)?);
        }
        let route = Route {
            service: Matcher::optional(&m.service)?,
            method: Matcher::optional(&m.method)?,
            authority: Matcher::optional(&m.authority)?,
            headers,
            path: m.path.as_ref().map(PathCond::new).transpose()?,
            query: m
                .query_parameters
                .iter()
                .map(|q| {
                    let (e, p, r) = (q.exact.as_deref(), q.prefix.as_deref(), q.regex.as_deref());
                    NamedMatch::new(&q.name, e, p, r, q.present)
                })
                .collect::<Result<_, _>>()?,
            metadata: m
                .dynamic_metadata
                .iter()
                .map(crate::filter::jwt::MetaMatcher::new)
                .collect::<Result<_, _>>()?,
            mutations,
            name: r.name.as_deref().filter(|n| !n.is_empty()).map(Into::into),
        };
        Ok((route, &r.route))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "clusters:\n  - {name: a, endpoints: [\"127.0.0.1:1\"]}\n  - {name: b, endpoints: [\"127.0.0.1:2\"]}\n  - {name: d, endpoints: [\"127.0.0.1:3\"]}\nlisteners:\n  - name: l\n    address: 127.0.0.1:9\n    protocol: triple\n    cluster: d\n    triple:\n      routes:\n        - match: {service: {prefix: pkg.}, version: '1.0', headers: [{name: x-env, regex: 'gr(a|e)y'}]}\n          route: {cluster: a}\n        - match: {authority: {exact: svc.local}, headers: [{name: x-debug, present: false}]}\n          route: {cluster: b}\n";

    fn pick(r: &Router, service: &str, headers: &[(&str, &str)]) -> Option<usize> {
        let mut hl = HeaderList::default();
        for (n, v) in headers {
            hl.push(n.as_bytes(), v.as_bytes(), false, 1 << 16);
        }
        let view = RequestView {
            path: b"/",
            service: service.as_bytes(),
            method: b"Get",
            headers: &hl,
            metadata: None,
        };
        r.route(hl.get(b":authority"), &view)
            .map(|a| a.pick_cluster(0))
    }

    #[test]
    fn tri_headers_headers_and_authority_select_the_route() {
        let c = config::Config::from_yaml("t.yaml", BASE).unwrap();
        let r = compile(&c.listeners[0], &c.clusters).unwrap();
        let v1 = ("tri-service-version", "1.0");
        assert_eq!(pick(&r, "pkg.S", &[v1, ("x-env", "grey")]), Some(0));
        assert_eq!(pick(&r, "pkg.S", &[v1, ("x-env", "greyer")]), Some(2));
        assert_eq!(
            pick(&r, "pkg.S", &[("x-env", "gray")]),
            Some(2),
            "no version"
        );
        let host = (":authority", "svc.local");
        assert_eq!(pick(&r, "other.S", &[host]), Some(1));
        assert_eq!(pick(&r, "other.S", &[host, ("x-debug", "1")]), Some(2));
        assert_eq!(pick(&r, "other.S", &[]), Some(2), "default route");
        let none = compile(&c.listeners[0], &c.clusters[..2]).map(|_| ());
        assert!(matches!(none, Err(RouteError::UnknownCluster(n)) if n == "d"));
    }

    #[test]
    fn query_values_are_the_first_of_their_name_as_sent() {
        let q = |p: &str, n: &str| query_value(p.as_bytes(), n.as_bytes()).map(|v| v.to_vec());
        assert_eq!(q("/p?a=1&b=2", "b"), Some(b"2".to_vec()));
        assert_eq!(q("/p?a=1&a=2", "a"), Some(b"1".to_vec()));
        assert_eq!(q("/p?a&b=", "a"), Some(Vec::new()));
        assert_eq!(q("/p?a=%78", "a"), Some(b"%78".to_vec()), "not decoded");
        assert_eq!(q("/p?x=1#a=2", "a"), None, "the fragment is not the query");
        assert_eq!(q("/p", "a"), None);
        assert_eq!(q("/p?&&a=3", "a"), Some(b"3".to_vec()));
    }

    #[test]
    fn path_conditions_ignore_the_query_and_fold_case_when_asked() {
        let c = |m: config::PathMatch, p: &str| PathCond::new(&m).unwrap().matches(p.as_bytes());
        let sep = |v: &str, fold: bool| config::PathMatch {
            separated_prefix: Some(v.into()),
            ignore_case: fold,
            ..Default::default()
        };
        assert!(c(sep("/a/b", false), "/a/b?x"));
        assert!(c(sep("/a/b", false), "/a/b/c"));
        assert!(!c(sep("/a/b", false), "/a/bc"));
        assert!(!c(sep("/a/b", false), "/A/b"));
        assert!(c(sep("/a/b", true), "/A/B/c"));
        let exact = config::PathMatch {
            exact: Some("/x/y".into()),
            ..Default::default()
        };
        assert!(c(exact.clone(), "/x/y?q#f"));
        assert!(!c(exact, "/x/y/"));
        let re = config::PathMatch {
            regex: Some("/i/[0-9]+".into()),
            ignore_case: true,
            ..Default::default()
        };
        assert!(c(re.clone(), "/i/12?z"));
        assert!(
            !c(re, "/I/12"),
            "case folding does not apply to regexes (Envoy)"
        );
    }
}
