//! Triple/gRPC routing: routes compiled once from config, matched against a stream's request
//! headers (`:path` split into service and method, `:authority`, the `tri-*` headers and any
//! other header). The virtual host is chosen by `:authority` (flat `routes` are one host of
//! domain `*`); within it the first match wins; the listener's `cluster` is the default route.

use super::headers::HeaderList;
use crate::config;
use crate::route::{HostRoutes, Hosts, Match, Matcher, NamedMatch, RouteError};

/// What a route sees of a request.
pub struct RequestView<'a> {
    pub service: &'a [u8],
    pub method: &'a [u8],
    pub headers: &'a HeaderList,
}

/// One route's conditions; every one given must hold.
pub struct Route {
    service: Option<Matcher>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    /// `tri-service-version`, `tri-service-group` and `tri-unit-info` (exact), then the
    /// `headers` conditions.
    headers: Vec<NamedMatch>,
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
                .all(|h| h.value.matches(r.headers.get(&h.name)))
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
    Hosts::compile(&hosts, ignore_port, l.cluster.as_deref(), clusters, |r| {
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
            let (e, p, r) = (h.exact.as_deref(), h.prefix.as_deref(), h.regex.as_deref());
            headers.push(NamedMatch::new(&h.name, e, p, r, h.present)?);
        }
        let route = Route {
            service: Matcher::optional(&m.service)?,
            method: Matcher::optional(&m.method)?,
            authority: Matcher::optional(&m.authority)?,
            headers,
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
            service: service.as_bytes(),
            method: b"Get",
            headers: &hl,
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
}
