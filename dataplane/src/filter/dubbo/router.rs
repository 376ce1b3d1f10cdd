//! Dubbo routing: the listener's routes compiled once from config into byte matchers, then
//! matched against each request's lazily read fields. First match wins; the listener's
//! `cluster`, when set, is the default route. Matching borrows the request's bytes and
//! allocates nothing.

use std::time::Duration;

use regex::bytes::Regex;

use crate::config::{self, StringMatch};

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

pub(crate) enum Matcher {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(Regex),
}

impl Matcher {
    pub(crate) fn new(m: &StringMatch) -> Result<Self, regex::Error> {
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (_, Some(p), _) => Matcher::Prefix(p.as_bytes().into()),
            // Full match, as Envoy's safe_regex.
            (_, _, Some(p)) => Matcher::Regex(Regex::new(&format!("^(?:{p})$"))?),
            (e, _, _) => Matcher::Exact(e.as_deref().unwrap_or("").as_bytes().into()),
        })
    }

    pub(crate) fn matches(&self, v: &[u8]) -> bool {
        match self {
            Matcher::Exact(e) => v == &**e,
            Matcher::Prefix(p) => v.starts_with(p),
            Matcher::Regex(r) => r.is_match(v),
        }
    }
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

enum AttachmentMatch {
    Exact(Box<[u8]>, Box<[u8]>),
    Regex(Box<[u8]>, Regex),
    Present(Box<[u8]>, bool),
}

impl AttachmentMatch {
    fn new(a: &config::AttachmentMatch) -> Result<Self, regex::Error> {
        let name: Box<[u8]> = a.name.as_bytes().into();
        Ok(if let Some(e) = &a.exact {
            AttachmentMatch::Exact(name, e.as_bytes().into())
        } else if let Some(p) = &a.regex {
            AttachmentMatch::Regex(name, Regex::new(&format!("^(?:{p})$"))?)
        } else {
            AttachmentMatch::Present(name, a.present.unwrap_or(true))
        })
    }

    fn matches(&self, req: &impl Inspect) -> bool {
        match self {
            AttachmentMatch::Exact(n, v) => req.attachment(n) == Some(&**v),
            AttachmentMatch::Regex(n, r) => req.attachment(n).is_some_and(|v| r.is_match(v)),
            AttachmentMatch::Present(n, want) => req.attachment(n).is_some() == *want,
        }
    }
}

/// A shard-local xorshift source for weighted cluster picks.
pub struct Dice(std::cell::Cell<u32>);

impl Dice {
    /// `seed` may be anything (zero is avoided).
    pub fn new(seed: u32) -> Dice {
        Dice(std::cell::Cell::new(seed | 1))
    }

    pub fn roll(&self) -> u32 {
        let mut x = self.0.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0.set(x);
        x
    }
}

/// Where a matched request goes.
pub struct Action {
    /// (cluster index in the config, weight); one entry for a plain `cluster`.
    targets: Vec<(usize, u32)>,
    total_weight: u32,
    pub timeout: Option<Duration>,
    /// Index of the route (for stats); `None` for the listener's default route.
    pub route_index: Option<usize>,
}

impl Action {
    /// (cluster index, weight) targets; one entry for a plain cluster.
    pub(crate) fn new(
        targets: Vec<(usize, u32)>,
        timeout: Option<Duration>,
        route_index: Option<usize>,
    ) -> Action {
        let total_weight = targets.iter().map(|t| t.1).sum();
        Action {
            targets,
            total_weight,
            timeout,
            route_index,
        }
    }

    /// The listener's default route: all to `cluster`, no timeout override.
    pub(crate) fn default_route(
        clusters: &[config::Cluster],
        cluster: &str,
    ) -> Result<Action, String> {
        Ok(Action::new(
            vec![(cluster_index(clusters, cluster)?, 1)],
            None,
            None,
        ))
    }

    /// Compiles a route's action.
    pub(crate) fn from_config(
        a: &config::RouteAction,
        clusters: &[config::Cluster],
        route_index: Option<usize>,
    ) -> Result<Action, String> {
        let targets = match &a.cluster {
            Some(c) => vec![(cluster_index(clusters, c)?, 1)],
            None => a
                .weighted_clusters
                .iter()
                .map(|w| Ok((cluster_index(clusters, &w.name)?, w.weight)))
                .collect::<Result<Vec<_>, String>>()?,
        };
        Ok(Action::new(
            targets,
            a.timeout_ms.map(Duration::from_millis),
            route_index,
        ))
    }

    /// The cluster for this request; `dice` is any number from the shard's random source.
    pub fn pick_cluster(&self, dice: u32) -> usize {
        if self.targets.len() == 1 {
            return self.targets[0].0;
        }
        let mut point = dice % self.total_weight.max(1);
        for &(cluster, weight) in &self.targets {
            if point < weight {
                return cluster;
            }
            point -= weight;
        }
        self.targets[0].0
    }
}

struct Route {
    interface: Option<Matcher>,
    method: Option<Matcher>,
    version: Option<Box<[u8]>>,
    group: Option<Box<[u8]>>,
    arguments: Vec<ArgMatch>,
    attachments: Vec<AttachmentMatch>,
    action: Action,
}

impl Route {
    fn matches(&self, req: &impl Inspect) -> bool {
        self.interface
            .as_ref()
            .is_none_or(|m| m.matches(req.interface()))
            && self.method.as_ref().is_none_or(|m| m.matches(req.method()))
            && self.version.as_ref().is_none_or(|v| req.version() == &**v)
            && self
                .group
                .as_ref()
                .is_none_or(|g| req.attachment(b"group") == Some(&**g))
            && self.arguments.iter().all(|a| a.matches(req))
            && self.attachments.iter().all(|a| a.matches(req))
    }
}

/// One listener's compiled route table.
pub struct Router {
    routes: Vec<Route>,
    default: Option<Action>,
}

/// Index of a cluster by name in the config.
pub(crate) fn cluster_index(clusters: &[config::Cluster], name: &str) -> Result<usize, String> {
    clusters
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| format!("unknown cluster {name:?}"))
}

impl Router {
    /// Routes nothing (every request gets "no route").
    pub fn empty() -> Router {
        Router {
            routes: Vec::new(),
            default: None,
        }
    }

    /// Compiles a listener's routes. The config was validated, so errors here are bugs, but
    /// they are reported rather than unwrapped.
    pub fn new(l: &config::Listener, clusters: &[config::Cluster]) -> Result<Router, String> {
        let mut routes = Vec::new();
        let empty = config::DubboListener::default();
        let d = l.dubbo.as_ref().unwrap_or(&empty);
        for (i, r) in d.routes.iter().enumerate() {
            let m = &r.matcher;
            routes.push(Route {
                interface: m
                    .interface
                    .as_ref()
                    .map(Matcher::new)
                    .transpose()
                    .map_err(|e| e.to_string())?,
                method: m
                    .method
                    .as_ref()
                    .map(Matcher::new)
                    .transpose()
                    .map_err(|e| e.to_string())?,
                version: m.version.as_ref().map(|v| v.as_bytes().into()),
                group: m.group.as_ref().map(|v| v.as_bytes().into()),
                arguments: m.arguments.iter().map(ArgMatch::new).collect(),
                attachments: m
                    .attachments
                    .iter()
                    .map(AttachmentMatch::new)
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?,
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

    /// The first matching route's action, else the default route, else `None` (no route).
    pub fn route(&self, req: &impl Inspect) -> Option<&Action> {
        self.routes
            .iter()
            .find(|r| r.matches(req))
            .map(|r| &r.action)
            .or(self.default.as_ref())
    }

    /// For requests whose body ringside does not decode (serializations other than
    /// Hessian2): only the default route applies.
    pub fn default_route(&self) -> Option<&Action> {
        self.default.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        (Router::new(&c.listeners[0], &c.clusters).unwrap(), c)
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
