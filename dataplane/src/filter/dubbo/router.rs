//! Dubbo routing: the listener's routes compiled once from config into byte matchers, then
//! matched against each request's lazily read fields. First match wins; the listener's
//! `cluster`, when set, is the default route. Matching borrows the request's bytes and
//! allocates nothing.

use crate::config;
use crate::route::{Match, Matcher, NamedMatch, RouteError, Table};

/// What a route needs to see of a request. Implemented over the codec's lazy request view, and
/// by a plain struct in tests.
pub trait Inspect {
    fn interface(&self) -> &[u8];
    fn method(&self) -> &[u8];
    fn version(&self) -> &[u8];
    /// A string attachment's value (`group`, custom keys), when present.
    fn attachment(&self, name: &[u8]) -> Option<&[u8]>;
    /// A scalar argument by index, when present and scalar.
    fn argument(&self, index: u32) -> Option<ArgValue<'_>>;
}

/// A scalar argument value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgValue<'a> {
    Str(&'a [u8]),
    Int(i64),
    Bool(bool),
}

enum ArgMatch {
    /// Compared with the argument's text form: strings as is, ints in decimal, bools as
    /// `true`/`false`.
    Exact {
        index: u32,
        text: Box<[u8]>,
        int: Option<i64>,
    },
    Prefix {
        index: u32,
        prefix: Box<[u8]>,
    },
    Range {
        index: u32,
        start: i64,
        end: i64,
    },
}

impl ArgMatch {
    fn new(a: &config::ArgumentMatch) -> Self {
        let index = a.index;
        if let Some(r) = a.range {
            ArgMatch::Range {
                index,
                start: r.start,
                end: r.end,
            }
        } else if let Some(p) = &a.prefix {
            ArgMatch::Prefix {
                index,
                prefix: p.as_bytes().into(),
            }
        } else {
            let text = a.exact.clone().unwrap_or_default();
            ArgMatch::Exact {
                index,
                int: text.parse().ok(),
                text: text.into_bytes().into(),
            }
        }
    }

    fn matches(&self, req: &impl Inspect) -> bool {
        match self {
            ArgMatch::Exact { index, text, int } => match req.argument(*index) {
                Some(ArgValue::Str(s)) => s == &**text,
                Some(ArgValue::Int(i)) => Some(i) == *int,
                Some(ArgValue::Bool(b)) => &**text == if b { &b"true"[..] } else { &b"false"[..] },
                None => false,
            },
            ArgMatch::Prefix { index, prefix } => {
                matches!(req.argument(*index), Some(ArgValue::Str(s)) if s.starts_with(prefix))
            }
            ArgMatch::Range { index, start, end } => {
                matches!(req.argument(*index), Some(ArgValue::Int(i)) if *start <= i && i < *end)
            }
        }
    }
}

/// One route's conditions; every one given must hold.
pub struct Route {
    interface: Option<Matcher>,
    method: Option<Matcher>,
    version: Option<Box<[u8]>>,
    arguments: Vec<ArgMatch>,
    /// `group` first, then the `attachments` conditions.
    attachments: Vec<NamedMatch>,
}

impl<R: Inspect> Match<R> for Route {
    fn matches(&self, req: &R) -> bool {
        self.interface
            .as_ref()
            .is_none_or(|m| m.matches(req.interface()))
            && self.method.as_ref().is_none_or(|m| m.matches(req.method()))
            && self.version.as_ref().is_none_or(|v| req.version() == &**v)
            && self.arguments.iter().all(|a| a.matches(req))
            && self
                .attachments
                .iter()
                .all(|a| a.matches(req.attachment(&a.name)))
    }
}

/// One listener's compiled Dubbo routes, and whether any of them reads attachments (`group`
/// or `attachments` conditions): when none does, requests are read up to the method only
/// (`RequestRepr::parse_preamble`), their arguments and attachments left unread unless
/// something else asks for them.
impl crate::route::Matched for Route {}

pub struct Router {
    table: Table<Route>,
    reads_attachments: bool,
}

impl Router {
    pub fn empty() -> Self {
        Router {
            table: Table::empty(),
            reads_attachments: false,
        }
    }

    pub fn reads_attachments(&self) -> bool {
        self.reads_attachments
    }
}

impl std::ops::Deref for Router {
    type Target = Table<Route>;
    fn deref(&self) -> &Table<Route> {
        &self.table
    }
}

/// Compiles a listener's Dubbo routes. The config was validated, so errors here are bugs, but
/// they are reported rather than unwrapped.
pub fn compile(l: &config::Listener, clusters: &[config::Cluster]) -> Result<Router, RouteError> {
    let routes = l.dubbo.as_ref().map_or(&[][..], |d| &d.routes);
    let reads_attachments = routes
        .iter()
        .any(|r| r.matcher.group.is_some() || !r.matcher.attachments.is_empty());
    let table = Table::compile(routes, l.cluster.as_deref(), clusters, |r| {
        let m = &r.matcher;
        let mut attachments = Vec::with_capacity(m.attachments.len() + 1);
        if let Some(g) = &m.group {
            attachments.push(NamedMatch::exact(b"group", g));
        }
        for a in &m.attachments {
            let (e, r) = (a.exact.as_deref(), a.regex.as_deref());
            attachments.push(NamedMatch::new(&a.name, e, None, r, a.present)?);
        }
        let route = Route {
            interface: Matcher::optional(&m.interface)?,
            method: Matcher::optional(&m.method)?,
            version: m.version.as_ref().map(|v| v.as_bytes().into()),
            arguments: m.arguments.iter().map(ArgMatch::new).collect(),
            attachments,
        };
        Ok((route, &r.route))
    })?;
    Ok(Router {
        table,
        reads_attachments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Default)]
    struct Req {
        interface: &'static str,
        method: &'static str,
        version: &'static str,
        attachments: Vec<(&'static str, &'static str)>,
        args: Vec<ArgValue<'static>>,
    }

    impl Inspect for Req {
        fn interface(&self) -> &[u8] {
            self.interface.as_bytes()
        }
        fn method(&self) -> &[u8] {
            self.method.as_bytes()
        }
        fn version(&self) -> &[u8] {
            self.version.as_bytes()
        }
        fn attachment(&self, name: &[u8]) -> Option<&[u8]> {
            self.attachments
                .iter()
                .find(|(k, _)| k.as_bytes() == name)
                .map(|(_, v)| v.as_bytes())
        }
        fn argument(&self, index: u32) -> Option<ArgValue<'_>> {
            self.args.get(index as usize).copied()
        }
    }

    fn router(yaml: &str) -> (Router, crate::config::Config) {
        let c = crate::config::Config::from_yaml("t.yaml", yaml).unwrap();
        (compile(&c.listeners[0], &c.clusters).unwrap(), c)
    }

    const BASE: &str = "clusters:\n  - {name: a, endpoints: [\"127.0.0.1:1\"]}\n  - {name: b, endpoints: [\"127.0.0.1:2\"]}\n  - {name: d, endpoints: [\"127.0.0.1:3\"]}\nlisteners:\n  - name: l\n    address: 127.0.0.1:9\n    protocol: dubbo\n";

    fn pick(r: &Router, req: &Req) -> Option<usize> {
        r.route(req).map(|a| a.pick_cluster(0))
    }

    #[test]
    fn first_match_wins_and_default_catches_the_rest() {
        let (r, _) = router(&format!(
            "{BASE}    cluster: d\n    dubbo:\n      routes:\n        - match: {{interface: {{prefix: com.a.}}, method: {{exact: get}}}}\n          route: {{cluster: a}}\n        - match: {{interface: {{regex: 'com\\.[ab]\\..*'}}}}\n          route: {{cluster: b}}\n"
        ));
        let mut q = Req {
            interface: "com.a.Svc",
            method: "get",
            ..Default::default()
        };
        assert_eq!(pick(&r, &q), Some(0));
        q.method = "put";
        assert_eq!(pick(&r, &q), Some(1), "regex route");
        q.interface = "org.x";
        assert_eq!(pick(&r, &q), Some(2), "default route");
        q.interface = "com.a"; // the regex is a full match
        assert_eq!(pick(&r, &q), Some(2));
    }

    #[test]
    fn no_route_without_default() {
        let (r, _) = router(&format!(
            "{BASE}    dubbo:\n      routes:\n        - match: {{version: '1.0.0', group: g1}}\n          route: {{cluster: a}}\n"
        ));
        let mut q = Req {
            version: "1.0.0",
            ..Default::default()
        };
        assert_eq!(pick(&r, &q), None, "group missing");
        q.attachments = vec![("group", "g1")];
        assert_eq!(pick(&r, &q), Some(0));
        q.version = "2.0.0";
        assert_eq!(pick(&r, &q), None);
    }

    #[test]
    fn arguments_and_attachments() {
        let (r, _) = router(&format!(
            "{BASE}    dubbo:\n      routes:\n        - match:\n            arguments: [{{index: 0, range: {{start: 10, end: 20}}}}]\n          route: {{cluster: a}}\n        - match:\n            arguments: [{{index: 1, prefix: vip-}}]\n            attachments: [{{name: tag, exact: gray}}, {{name: trace, present: true}}]\n          route: {{cluster: b}}\n        - match:\n            arguments: [{{index: 0, exact: '7'}}, {{index: 2, exact: 'true'}}]\n            attachments: [{{name: region, regex: 'cn-.*'}}]\n          route: {{cluster: d}}\n"
        ));
        let mut q = Req {
            args: vec![ArgValue::Int(15)],
            ..Default::default()
        };
        assert_eq!(pick(&r, &q), Some(0));
        q.args = vec![ArgValue::Int(20), ArgValue::Str(b"vip-1")];
        assert_eq!(
            pick(&r, &q),
            None,
            "range end is exclusive, attachments missing"
        );
        q.attachments = vec![("tag", "gray"), ("trace", "x")];
        assert_eq!(pick(&r, &q), Some(1));
        q.args = vec![ArgValue::Int(7), ArgValue::Str(b"no"), ArgValue::Bool(true)];
        q.attachments = vec![("region", "cn-hz")];
        assert_eq!(pick(&r, &q), Some(2));
        q.attachments = vec![("region", "us-1")];
        assert_eq!(pick(&r, &q), None);
    }

    #[test]
    fn weighted_clusters_follow_weights() {
        let (r, _) = router(&format!(
            "{BASE}    dubbo:\n      routes:\n        - route: {{weighted_clusters: [{{name: a, weight: 3}}, {{name: b, weight: 1}}], timeout_ms: 250}}\n"
        ));
        let a = r.route(&Req::default()).unwrap();
        assert_eq!(a.timeout, Some(Duration::from_millis(250)));
        let picks: Vec<usize> = (0..8).map(|d| a.pick_cluster(d)).collect();
        assert_eq!(picks, [0, 0, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn bad_route_config_is_rejected_with_field() {
        let e = crate::config::Config::from_yaml(
            "t.yaml",
            &format!("{BASE}    dubbo:\n      routes:\n        - match: {{method: {{regex: '('}}}}\n          route: {{cluster: zz}}\n"),
        )
        .unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|e| e.field.clone()).collect();
        assert_eq!(
            fields,
            [
                "listeners[0].dubbo.routes[0].match.method.regex",
                "listeners[0].dubbo.routes[0].route.cluster"
            ]
        );
    }
}
