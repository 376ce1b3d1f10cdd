//! Triple/gRPC routing: routes compiled once from config, matched against a stream's request
//! headers (`:path` split into service and method, `:authority`, the `tri-*` headers and any
//! other header). First match wins; the listener's `cluster` is the default route.

use regex::bytes::Regex;

use super::headers::HeaderList;
use crate::config;
use crate::filter::dubbo::router::{Action, Matcher};

/// What a route sees of a request.
pub struct RequestView<'a> {
    pub service: &'a [u8],
    pub method: &'a [u8],
    pub headers: &'a HeaderList,
}

enum HeaderCond {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(Regex),
    Present(bool),
}

struct HeaderMatch {
    name: Box<[u8]>,
    cond: HeaderCond,
}

impl HeaderMatch {
    fn new(h: &config::HeaderMatch) -> Result<Self, regex::Error> {
        let cond = if let Some(e) = &h.exact {
            HeaderCond::Exact(e.as_bytes().into())
        } else if let Some(p) = &h.prefix {
            HeaderCond::Prefix(p.as_bytes().into())
        } else if let Some(r) = &h.regex {
            HeaderCond::Regex(Regex::new(&format!("^(?:{r})$"))?)
        } else {
            HeaderCond::Present(h.present.unwrap_or(true))
        };
        Ok(HeaderMatch {
            name: h.name.as_bytes().into(),
            cond,
        })
    }

    fn matches(&self, headers: &HeaderList) -> bool {
        let v = headers.get(&self.name);
        match &self.cond {
            HeaderCond::Exact(e) => v == Some(&**e),
            HeaderCond::Prefix(p) => v.is_some_and(|v| v.starts_with(p)),
            HeaderCond::Regex(r) => v.is_some_and(|v| r.is_match(v)),
            HeaderCond::Present(want) => v.is_some() == *want,
        }
    }
}

struct Route {
    service: Option<Matcher>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    /// (header, exact value) for version, group and unit.
    tri: Vec<(&'static [u8], Box<[u8]>)>,
    headers: Vec<HeaderMatch>,
    action: Action,
}

impl Route {
    fn matches(&self, r: &RequestView<'_>) -> bool {
        self.service.as_ref().is_none_or(|m| m.matches(r.service))
            && self.method.as_ref().is_none_or(|m| m.matches(r.method))
            && self
                .authority
                .as_ref()
                .is_none_or(|m| m.matches(r.headers.get(b":authority").unwrap_or(b"")))
            && self
                .tri
                .iter()
                .all(|(name, want)| r.headers.get(name) == Some(&**want))
            && self.headers.iter().all(|h| h.matches(r.headers))
    }
}

pub struct Router {
    routes: Vec<Route>,
    default: Option<Action>,
}

impl Router {
    /// Routes nothing (every request gets "no route").
    pub fn empty() -> Router {
        Router {
            routes: Vec::new(),
            default: None,
        }
    }

    pub fn new(l: &config::Listener, clusters: &[config::Cluster]) -> Result<Router, String> {
        let empty = config::TripleListener::default();
        let t = l.triple.as_ref().unwrap_or(&empty);
        let re = |e: regex::Error| e.to_string();
        let mut routes = Vec::with_capacity(t.routes.len());
        for (i, r) in t.routes.iter().enumerate() {
            let m = &r.matcher;
            let compile =
                |sm: &Option<config::StringMatch>| sm.as_ref().map(Matcher::new).transpose();
            let mut tri = Vec::new();
            for (name, v) in [
                (&b"tri-service-version"[..], &m.version),
                (b"tri-service-group", &m.group),
                (b"tri-unit-info", &m.unit),
            ] {
                if let Some(v) = v {
                    tri.push((name, v.as_bytes().into()));
                }
            }
            routes.push(Route {
                service: compile(&m.service).map_err(re)?,
                method: compile(&m.method).map_err(re)?,
                authority: compile(&m.authority).map_err(re)?,
                tri,
                headers: m
                    .headers
                    .iter()
                    .map(HeaderMatch::new)
                    .collect::<Result<_, _>>()
                    .map_err(re)?,
                action: Action::from_config(&r.route, clusters, Some(i))?,
            });
        }
        let default = l
            .cluster
            .as_deref()
            .map(|c| Action::default_route(clusters, c))
            .transpose()?;
        Ok(Router { routes, default })
    }

    pub fn route(&self, r: &RequestView<'_>) -> Option<&Action> {
        self.routes
            .iter()
            .find(|route| route.matches(r))
            .map(|route| &route.action)
            .or(self.default.as_ref())
    }
}
