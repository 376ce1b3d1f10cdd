//! Routing shared by every protocol: byte matchers compiled once from config ([`Matcher`],
//! [`ValueMatch`]), where a matched request goes ([`Action`], with a weighted pick by the shard's
//! [`Dice`]), and one listener's compiled route table ([`Table`]: first match wins, then the
//! listener's default route). Each protocol's router (`filter::dubbo::router`,
//! `filter::triple::router`) supplies only its own match type, over its own view of a request.
//!
//! Matching borrows the request's bytes and allocates nothing. Imports `config` only.

use std::time::Duration;

use regex::bytes::Regex;

use crate::config::{self, StringMatch};

/// Why a listener's routes do not compile. Config validation rejects these first, so meeting
/// one on a shard is a bug (reported, not unwrapped).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    #[error(transparent)]
    Regex(#[from] regex::Error),
    #[error("rewrite: {0}")]
    Rewrite(String),
    /// A header mutation the protocol cannot do (its message names it).
    #[error("{0}")]
    Header(String),
}

/// A full-match regex, as Envoy's `safe_regex`.
fn full_match(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// A string condition on one request field (interface, method, `:authority`, ...).
pub enum Matcher {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(Regex),
}

impl Matcher {
    pub fn new(m: &StringMatch) -> Result<Self, RouteError> {
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (_, Some(p), _) => Matcher::Prefix(p.as_bytes().into()),
            (_, _, Some(p)) => Matcher::Regex(full_match(p)?),
            (e, _, _) => Matcher::Exact(e.as_deref().unwrap_or("").as_bytes().into()),
        })
    }

    /// A matcher for each condition given (`None` matches every request).
    pub fn optional(m: &Option<StringMatch>) -> Result<Option<Self>, RouteError> {
        m.as_ref().map(Matcher::new).transpose()
    }

    pub fn matches(&self, v: &[u8]) -> bool {
        match self {
            Matcher::Exact(e) => v == &**e,
            Matcher::Prefix(p) => v.starts_with(p),
            Matcher::Regex(r) => r.is_match(v),
        }
    }
}

/// A condition on a named value that may be absent (a Dubbo attachment, an HTTP/2 header).
pub enum ValueMatch {
    /// Present and matching.
    Is(Matcher),
    /// Present (`true`) or absent (`false`).
    Present(bool),
}

impl ValueMatch {
    /// The first condition given of `exact`, `prefix`, `regex`; else `present` (default: true).
    pub fn new(
        exact: Option<&str>,
        prefix: Option<&str>,
        regex: Option<&str>,
        present: Option<bool>,
    ) -> Result<Self, RouteError> {
        Ok(match (exact, prefix, regex) {
            (Some(e), _, _) => ValueMatch::Is(Matcher::Exact(e.as_bytes().into())),
            (_, Some(p), _) => ValueMatch::Is(Matcher::Prefix(p.as_bytes().into())),
            (_, _, Some(r)) => ValueMatch::Is(Matcher::Regex(full_match(r)?)),
            _ => ValueMatch::Present(present.unwrap_or(true)),
        })
    }

    pub fn matches(&self, v: Option<&[u8]>) -> bool {
        match self {
            ValueMatch::Is(m) => v.is_some_and(|v| m.matches(v)),
            ValueMatch::Present(want) => v.is_some() == *want,
        }
    }
}

/// A [`ValueMatch`] on the value named `name`, with Envoy's `invert_match` and
/// `treat_missing_header_as_empty`.
pub struct NamedMatch {
    pub name: Box<[u8]>,
    pub value: ValueMatch,
    invert: bool,
    missing_as_empty: bool,
}

impl NamedMatch {
    /// See [`ValueMatch::new`].
    pub fn new(
        name: &str,
        exact: Option<&str>,
        prefix: Option<&str>,
        regex: Option<&str>,
        present: Option<bool>,
    ) -> Result<NamedMatch, RouteError> {
        Ok(NamedMatch {
            name: name.as_bytes().into(),
            value: ValueMatch::new(exact, prefix, regex, present)?,
            invert: false,
            missing_as_empty: false,
        })
    }

    /// A request header condition from config.
    pub fn header(h: &config::HeaderMatch) -> Result<NamedMatch, RouteError> {
        let (e, p, r) = (h.exact.as_deref(), h.prefix.as_deref(), h.regex.as_deref());
        Ok(NamedMatch {
            invert: h.invert,
            missing_as_empty: h.treat_missing_as_empty,
            ..NamedMatch::new(&h.name, e, p, r, h.present)?
        })
    }

    /// `name` must equal `value` exactly.
    pub fn exact(name: &[u8], value: &str) -> NamedMatch {
        NamedMatch {
            name: name.into(),
            value: ValueMatch::Is(Matcher::Exact(value.as_bytes().into())),
            invert: false,
            missing_as_empty: false,
        }
    }

    /// Whether the value `v` (`None`: absent) meets the condition, as Envoy's header matchers:
    /// presence is compared, then inverted; an absent value fails a value condition (inverted or
    /// not) unless it is taken as empty.
    pub fn matches(&self, v: Option<&[u8]>) -> bool {
        match (&self.value, v) {
            (ValueMatch::Present(want), v) => (v.is_some() == *want) != self.invert,
            (ValueMatch::Is(_), None) if !self.missing_as_empty => false,
            (ValueMatch::Is(m), v) => m.matches(v.unwrap_or(b"")) != self.invert,
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
    /// The route's `retry_policy`, compiled.
    pub retry: Option<RetryPolicy>,
    /// The route's `fault`.
    pub fault: Option<config::Fault>,
    /// The route's `request_mirror_policies`: (shadow cluster index in the config, share).
    pub mirrors: Vec<(usize, config::Share)>,
    /// The route's path and host rewrites (`None`: the request goes as it came).
    pub rewrite: Option<Box<Rewrite>>,
    /// The route answers itself (`redirect`, `direct_response`): it has no targets then.
    pub direct: Option<Box<Direct>>,
    /// The route's `hash_policy` (for RING_HASH / MAGLEV clusters), in order; empty: none.
    /// Shared: a call whose hash generated a cookie keeps it until its response.
    pub hash: std::sync::Arc<[HashPolicy]>,
}

/// One `hash_policy` entry of a route, compiled: what is hashed, and whether a hash from it
/// ends the list (`terminal`). The protocol filter evaluates it on its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashPolicy {
    pub key: HashKey,
    pub terminal: bool,
}

/// What a [`HashPolicy`] hashes (names lower-case where they are header names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(Box<[u8]>),
    SourceIp,
    QueryParameter(Box<[u8]>),
    /// A cookie's value; with a `ttl` ([`SetCookie`]), generated when the request has none.
    Cookie(Box<[u8]>, Option<Box<SetCookie>>),
}

/// A generated cookie's `set-cookie` value around its value, as Envoy's
/// `Http::Utility::makeSetCookieValue` writes it: `head` is `NAME="`, `tail` is `"`, then
/// `; Max-Age=TTL` (not for 0), `; Path=PATH` (when given), `; NAME=VALUE` (or `; NAME`) per
/// attribute, `; HttpOnly`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetCookie {
    pub head: Box<[u8]>,
    pub tail: Box<[u8]>,
}

impl SetCookie {
    fn new(p: &config::HashPolicy, name: &str) -> Option<SetCookie> {
        let ttl = p.cookie_ttl_s?;
        let mut tail = String::from("\"");
        if ttl != 0 {
            tail.push_str(&format!("; Max-Age={ttl}"));
        }
        if !p.cookie_path.is_empty() {
            tail.push_str(&format!("; Path={}", p.cookie_path));
        }
        for a in &p.cookie_attributes {
            match a.value.is_empty() {
                true => tail.push_str(&format!("; {}", a.name)),
                false => tail.push_str(&format!("; {}={}", a.name, a.value)),
            }
        }
        tail.push_str("; HttpOnly");
        Some(SetCookie {
            head: format!("{name}=\"").into_bytes().into(),
            tail: tail.into_bytes().into(),
        })
    }
}

impl HashPolicy {
    fn new(p: &config::HashPolicy) -> Option<HashPolicy> {
        let key = if let Some(h) = &p.header {
            HashKey::Header(h.to_ascii_lowercase().into_bytes().into())
        } else if p.source_ip {
            HashKey::SourceIp
        } else if let Some(q) = &p.query_parameter {
            HashKey::QueryParameter(q.as_bytes().into())
        } else {
            let name = p.cookie.as_ref()?;
            HashKey::Cookie(
                name.as_bytes().into(),
                SetCookie::new(p, name).map(Box::new),
            )
        };
        Some(HashPolicy {
            key,
            terminal: p.terminal,
        })
    }
}

/// A route's own answer, compiled (config `direct`).
pub struct Direct {
    pub status: u16,
    pub body: Box<[u8]>,
    redirect: Option<RedirectTo>,
}

struct RedirectTo {
    scheme: Option<Box<[u8]>>,
    host: Option<Box<[u8]>>,
    /// `:PORT`.
    port: Option<Box<[u8]>>,
    path: Option<Box<[u8]>>,
    rewrite: Option<PathRewrite>,
    strip_query: bool,
}

impl Direct {
    fn new(d: &config::DirectAction, matched_len: Option<usize>) -> Result<Direct, RouteError> {
        let redirect = match &d.redirect {
            None => None,
            Some(r) => Some(RedirectTo {
                scheme: r.scheme.as_ref().map(|v| v.as_bytes().into()),
                host: r.host.as_ref().map(|v| v.as_bytes().into()),
                port: r.port.map(|p| format!(":{p}").into_bytes().into()),
                path: r.path.as_ref().map(|v| v.as_bytes().into()),
                rewrite: match (&r.prefix_rewrite, &r.regex_rewrite) {
                    (Some(p), _) => Some(PathRewrite::Prefix(matched_len, p.as_bytes().into())),
                    (None, Some(re)) => {
                        let (re, with) = regex_rewrite(re)?;
                        Some(PathRewrite::Regex(re, with))
                    }
                    (None, None) => None,
                },
                strip_query: r.strip_query,
            }),
        };
        Ok(Direct {
            status: d.status,
            body: d.body.as_deref().unwrap_or("").as_bytes().into(),
            redirect,
        })
    }

    /// The answer's `location`, for a 201 or 3xx (Envoy's `Utility::newUri`, after the
    /// redirect's path rewrite): the request's `scheme`, `x-forwarded-proto` (`xfp`), host
    /// and path (with its query), each replaced where the redirect says.
    pub fn location(&self, scheme: &[u8], xfp: &[u8], host: &[u8], path: &[u8]) -> Option<Vec<u8>> {
        if self.status != 201 && !(300..400).contains(&self.status) {
            return None;
        }
        let r = self.redirect.as_ref();
        let scheme = r.and_then(|r| r.scheme.as_deref()).unwrap_or(scheme);
        let port = r.and_then(|r| r.port.as_deref()).unwrap_or(b"");
        let host = match r.and_then(|r| r.host.as_deref()) {
            Some(h) => h.to_vec(),
            None => request_host(host, scheme, port, xfp).to_vec(),
        };
        let rewritten = r.and_then(|r| r.rewrite.as_ref()).map(|rw| rw.apply(path));
        let path = rewritten.as_deref().unwrap_or(path);
        let mut p: Vec<u8> = match r.and_then(|r| r.path.as_deref()) {
            Some(new) if new.contains(&b'?') => new.to_vec(),
            Some(new) => match path.iter().position(|&b| b == b'?') {
                Some(q) => [new, &path[q..]].concat(),
                None => new.to_vec(),
            },
            None => path.to_vec(),
        };
        if !p.starts_with(b"/") {
            p.insert(0, b'/');
        }
        if r.is_some_and(|r| r.strip_query) {
            if let Some(q) = p.iter().position(|&b| b == b'?') {
                p.truncate(q);
            }
        }
        Some([scheme, b"://", &host, port, &p].concat())
    }
}

/// Envoy's `processRequestHost`: the request's host, its port dropped when the redirect
/// gives one, or when the scheme changes away from `xfp` and the port was that one's default.
fn request_host<'a>(host: &'a [u8], scheme: &[u8], port: &[u8], xfp: &[u8]) -> &'a [u8] {
    if host.is_empty() {
        return host;
    }
    let end = match host.first() {
        Some(b'[') => host.windows(2).rposition(|w| w == b"]:").map(|i| i + 1),
        _ => host.iter().rposition(|&b| b == b':'),
    };
    let Some(end) = end else {
        return host;
    };
    let request_port = &host[end..];
    let mut remove = !port.is_empty();
    if scheme != xfp {
        remove |= xfp == b"https" && request_port == b":443";
        remove |= xfp == b"http" && request_port == b":80";
    }
    match remove {
        true => &host[..end],
        false => host,
    }
}

impl PathRewrite {
    /// `path` (query included) rewritten.
    fn apply(&self, path: &[u8]) -> Vec<u8> {
        let rest = |n: usize| &path[n.min(path.len())..];
        match self {
            PathRewrite::Prefix(len, with) => {
                let n = len.unwrap_or_else(|| just_path(path).len());
                [&with[..], rest(n)].concat()
            }
            PathRewrite::Regex(re, with) => {
                let p = just_path(path);
                let new = re.replace_all(p, with.as_bytes());
                [&new[..], rest(p.len())].concat()
            }
        }
    }
}

/// What a route's `match.path` condition matched, for a `prefix` rewrite: the route's
/// conditions say (a protocol without rewrites keeps the default).
pub trait Matched {
    /// The length of the path's matched part: its `prefix`, `exact` path or
    /// `separated_prefix`; `None` for the whole path without its query (a regex or no path
    /// condition), as Envoy's regex routes.
    fn matched_len(&self) -> Option<usize> {
        None
    }
}

/// A route's rewrites compiled (config `rewrite` and the weighted clusters' `host_rewrite`).
pub struct Rewrite {
    path: Option<PathRewrite>,
    host: Option<HostRewrite>,
    /// Per target (as `Action::targets`): its weighted cluster's `host_rewrite`.
    target_hosts: Vec<Option<Box<[u8]>>>,
    pub append_xfh: bool,
}

enum PathRewrite {
    /// The first `len` bytes (`None`: the path without its query) replaced by `with`.
    Prefix(Option<usize>, Box<[u8]>),
    /// Every match replaced (in the path without its query).
    Regex(Regex, String),
}

enum HostRewrite {
    Literal(Box<[u8]>),
    Header(Box<[u8]>),
    PathRegex(Regex, String),
}

/// A request's new path and `:authority`, where a rewrite changed them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub path: Option<Vec<u8>>,
    pub host: Option<Vec<u8>>,
    /// The `:authority` the route's own host rewrite replaced (the request's, or its weighted
    /// cluster's `host_rewrite`), when not empty: Envoy's `updateAuthority` puts it in
    /// `x-envoy-original-host` (unless the router suppresses Envoy's headers) and appends it to
    /// `x-forwarded-host` (`append_x_forwarded_host`).
    pub replaced_host: Option<Vec<u8>>,
}

/// A regex rewrite compiled: the pattern (unanchored, as RE2's `GlobalReplace`) and the
/// substitution in the `regex` crate's syntax.
fn regex_rewrite(r: &config::RegexRewrite) -> Result<(Regex, String), RouteError> {
    let re = Regex::new(&r.pattern)?;
    let with = r
        .replacement(re.captures_len() - 1)
        .map_err(RouteError::Rewrite)?;
    Ok((re, with))
}

/// `x-forwarded-host` with the replaced host `old` appended (Envoy's `append_x_forwarded_host`:
/// `,`-separated, not when it is the last value already); `None` when it stays as it is or
/// `old` is empty.
pub fn forwarded_host(xfh: Option<&[u8]>, old: &[u8]) -> Option<Vec<u8>> {
    if old.is_empty() {
        return None;
    }
    match xfh.filter(|x| !x.is_empty()) {
        None => Some(old.to_vec()),
        Some(x) if x.rsplit(|&b| b == b',').next() == Some(old) => None,
        Some(x) => Some([x, b",", old].concat()),
    }
}

/// The path without its query and fragment.
fn just_path(path: &[u8]) -> &[u8] {
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    &path[..end]
}

impl Rewrite {
    fn new(
        a: &config::RouteAction,
        matched_len: Option<usize>,
    ) -> Result<Option<Box<Rewrite>>, RouteError> {
        let target_hosts: Vec<Option<Box<[u8]>>> = a
            .weighted_clusters
            .iter()
            .map(|w| w.host_rewrite.as_ref().map(|h| h.as_bytes().into()))
            .collect();
        let weighted = target_hosts.iter().any(Option::is_some);
        let Some(r) = a.rewrite.as_ref() else {
            return Ok(weighted.then(|| {
                Box::new(Rewrite {
                    path: None,
                    host: None,
                    target_hosts,
                    append_xfh: false,
                })
            }));
        };
        let path = match (&r.prefix, &r.regex) {
            (Some(p), _) => Some(PathRewrite::Prefix(matched_len, p.as_bytes().into())),
            (None, Some(re)) => {
                let (re, with) = regex_rewrite(re)?;
                Some(PathRewrite::Regex(re, with))
            }
            (None, None) => None,
        };
        let host = match (&r.host, &r.host_header, &r.host_path_regex) {
            (Some(h), _, _) => Some(HostRewrite::Literal(h.as_bytes().into())),
            (None, Some(h), _) => Some(HostRewrite::Header(
                h.to_ascii_lowercase().into_bytes().into(),
            )),
            (None, None, Some(re)) => {
                let (re, with) = regex_rewrite(re)?;
                Some(HostRewrite::PathRegex(re, with))
            }
            (None, None, None) => None,
        };
        if path.is_none() && host.is_none() && !weighted {
            return Ok(None);
        }
        Ok(Some(Box::new(Rewrite {
            path,
            host,
            target_hosts,
            append_xfh: r.append_x_forwarded_host,
        })))
    }

    /// Whether it rewrites paths (then the path as it came goes in `x-envoy-original-path`).
    pub fn rewrites_path(&self) -> bool {
        self.path.is_some()
    }

    /// The new path and `:authority` of a request with `path` (query included), sent to target
    /// `target` (`Action::pick_target`); `header` reads its headers. As Envoy's route entry:
    /// the weighted cluster's host, then the route's host rewrite (from the path as it came),
    /// then the path rewrite.
    pub fn apply<'h>(
        &self,
        target: usize,
        path: &[u8],
        authority: &[u8],
        header: impl Fn(&[u8]) -> Option<&'h [u8]>,
    ) -> Rewritten {
        let mut out = Rewritten {
            host: self
                .target_hosts
                .get(target)
                .and_then(|h| h.as_deref())
                .map(<[u8]>::to_vec),
            path: None,
            replaced_host: None,
        };
        let host = match &self.host {
            None => None,
            Some(HostRewrite::Literal(h)) => Some(h.to_vec()),
            Some(HostRewrite::Header(name)) => header(name).map(<[u8]>::to_vec),
            Some(HostRewrite::PathRegex(re, with)) => Some(
                re.replace_all(just_path(path), with.as_bytes())
                    .into_owned(),
            ),
        };
        if let Some(h) = host.filter(|h| !h.is_empty()) {
            let prior = out.host.replace(h).unwrap_or_else(|| authority.to_vec());
            out.replaced_host = (!prior.is_empty()).then_some(prior);
        }
        out.path = self.path.as_ref().map(|p| p.apply(path));
        out
    }
}

/// A fault to inject into one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub delay: Option<Duration>,
    /// The status to answer with instead of forwarding (after the delay, if any).
    pub abort: Option<u32>,
}

/// Whether a request falls in `share` of requests, by a roll of the shard's dice.
fn hit(share: config::Share, roll: u32) -> bool {
    share.0 >= config::Share::PER_MILLION || roll % config::Share::PER_MILLION < share.0
}

impl Action {
    /// The fault to inject into one request (each of delay and abort rolled on its own, as
    /// Envoy); `None` when none applies.
    pub fn fault(&self, dice: &Dice) -> Option<Injected> {
        let f = self.fault.as_ref()?;
        let i = Injected {
            delay: f
                .delay
                .filter(|d| hit(d.percentage, dice.roll()))
                .map(|d| Duration::from_millis(d.fixed_delay_ms)),
            abort: f
                .abort
                .filter(|a| hit(a.percentage, dice.roll()))
                .map(|a| a.status),
        };
        (i != Injected::default()).then_some(i)
    }

    /// The shadow clusters one request is copied to (each policy rolled on its own, as
    /// Envoy); nothing rolled, and no allocation, when the route has no mirror policy.
    pub fn mirrors<'a>(&'a self, dice: &'a Dice) -> impl Iterator<Item = usize> + 'a {
        self.mirrors
            .iter()
            .filter(|&&(_, share)| hit(share, dice.roll()))
            .map(|&(cluster, _)| cluster)
    }
}

/// A route's `retry_policy` compiled into a small copyable value (a request that may be
/// retried carries it, no allocation).
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// `retry_on` as bits (`1 << RetryOn as u32`).
    on: u16,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    codes: [u16; config::RETRIABLE_STATUS_CODES_MAX],
    codes_len: u8,
    pub previous_hosts: bool,
    /// With `previous_hosts`: the draws of a retry's endpoint (Envoy's
    /// `host_selection_retry_max_attempts` + 1).
    host_draws: u8,
    /// `previous_priorities`' `update_frequency` (0: none).
    previous_priorities: u8,
    /// `retry_back_off` in ms: (base interval, max interval).
    back_off: (u32, u32),
}

/// One request's retries so far: its route's policy, the retries sent, the endpoints tried
/// (for `previous_hosts`). Inline in the request's state: no allocation.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub policy: RetryPolicy,
    pub done: u32,
    tried: [u32; config::RETRIES_MAX as usize + 1],
    tried_len: u8,
}

impl Retry {
    pub fn new(policy: RetryPolicy) -> Retry {
        Retry {
            policy,
            done: 0,
            tried: [0; config::RETRIES_MAX as usize + 1],
            tried_len: 0,
        }
    }

    /// The wait before the next retry (the `done + 1`-th), from `roll` (a random number):
    /// Envoy's `JitteredExponentialBackOffStrategy`, whose interval starts at the base and
    /// doubles at each retry while under half the max (else becomes the max), each wait being
    /// `random % interval` ms.
    pub fn back_off(&self, roll: u32) -> std::time::Duration {
        let (base, max) = self.policy.back_off;
        let mut interval = u64::from(base.max(1));
        for _ in 0..self.done {
            interval = match interval < u64::from(max) / 2 {
                true => interval * 2,
                false => u64::from(max),
            };
        }
        std::time::Duration::from_millis(u64::from(roll) % interval.max(1))
    }

    /// Whether `num_retries` leaves one more.
    pub fn left(&self) -> bool {
        self.done < self.policy.num_retries
    }

    /// The request went to endpoint slot `slot`.
    pub fn tried(&mut self, slot: usize) {
        if let Some(t) = self.tried.get_mut(self.tried_len as usize) {
            *t = slot as u32;
            self.tried_len += 1;
        }
    }

    /// Whether the next pick should skip endpoint slot `slot` (`previous_hosts`).
    pub fn avoids(&self, slot: usize) -> bool {
        self.policy.previous_hosts && self.tried[..self.tried_len as usize].contains(&(slot as u32))
    }

    /// How many times the next pick draws its priority level before it takes a tried
    /// endpoint (`previous_hosts` with endpoints tried: Envoy's
    /// `host_selection_retry_max_attempts` + 1); 0: the balancer's usual pick.
    pub fn host_draws(&self) -> u32 {
        match self.policy.previous_hosts && self.tried_len > 0 {
            true => u32::from(self.policy.host_draws),
            false => 0,
        }
    }

    /// The endpoint slots whose priority levels the next retry's priority load leaves out
    /// (`previous_priorities`, Envoy's `PreviousPrioritiesRetryPriority`): none before
    /// `update_frequency` tries, then those of the tries up to the last multiple of it (the
    /// load is decided again every `update_frequency` tries). Empty without the policy.
    pub fn priority_avoided(&self) -> &[u32] {
        let f = usize::from(self.policy.previous_priorities);
        if f == 0 {
            return &[];
        }
        let n = self.tried_len as usize;
        &self.tried[..n / f * f]
    }
}

/// The most draws of a retry's endpoint ([`Retry::host_draws`]): a bound on the work of one
/// pick, whatever `host_selection_retry_max_attempts` says.
const HOST_DRAWS_MAX: u32 = 64;

impl RetryPolicy {
    pub fn new(p: &config::RetryPolicy) -> RetryPolicy {
        let mut codes = [0u16; config::RETRIABLE_STATUS_CODES_MAX];
        let n = p.retriable_status_codes.len().min(codes.len());
        for (c, &v) in codes.iter_mut().zip(&p.retriable_status_codes) {
            *c = v.min(u32::from(u16::MAX)) as u16;
        }
        RetryPolicy {
            on: p.retry_on.iter().fold(0, |b, &o| b | (1 << o as u32)),
            num_retries: p.num_retries,
            per_try_timeout: p.per_try_timeout_ms.map(Duration::from_millis),
            codes,
            codes_len: n as u8,
            previous_hosts: p.previous_hosts,
            host_draws: p
                .host_selection_retry_max_attempts
                .saturating_add(1)
                .min(HOST_DRAWS_MAX) as u8,
            previous_priorities: p
                .previous_priorities
                .map_or(0, |f| f.min(config::RETRIES_MAX) as u8),
            back_off: {
                let base = p
                    .retry_back_off
                    .map_or(config::RETRY_BACK_OFF_BASE_MS_DEFAULT, |b| {
                        b.base_interval_ms
                    });
                let max = p
                    .retry_back_off
                    .and_then(|b| b.max_interval_ms)
                    .unwrap_or(base * 10);
                (base as u32, max as u32)
            },
        }
    }

    /// Whether `retry_on` has `on`.
    pub fn on(&self, on: config::RetryOn) -> bool {
        self.on & (1 << on as u32) != 0
    }

    /// Whether `code` is one of `retriable_status_codes` (and `retry_on` says to use them).
    pub fn retriable_status(&self, code: u32) -> bool {
        self.on(config::RetryOn::RetriableStatusCodes)
            && self.codes[..self.codes_len as usize]
                .iter()
                .any(|&c| u32::from(c) == code)
    }

    /// Whether an HTTP response with status `code` is retried: `retriable_status_codes`, any
    /// 5xx under `5xx`, 502/503/504 under `gateway-error` (Envoy's `wouldRetryFromHeaders`).
    pub fn retries_status(&self, code: u32) -> bool {
        use config::RetryOn as On;
        self.retriable_status(code)
            || (self.on(On::FiveXx) && (500..600).contains(&code))
            || (self.on(On::GatewayError) && matches!(code, 502..=504))
    }

    /// Whether a try without an answer is retried: `connect` when the connection could not
    /// be made (`connect-failure`), else reset, lost or past `per_try_timeout_ms` (`reset`);
    /// `5xx` and `gateway-error` cover both (Envoy's `wouldRetryFromReset`).
    pub fn retries_failure(&self, connect: bool) -> bool {
        use config::RetryOn as On;
        self.on(On::FiveXx)
            || self.on(On::GatewayError)
            || self.on(match connect {
                true => On::ConnectFailure,
                false => On::Reset,
            })
    }
}

impl Action {
    fn new(
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
            retry: None,
            fault: None,
            mirrors: Vec::new(),
            rewrite: None,
            direct: None,
            hash: Vec::new().into(),
        }
    }

    /// The listener's default route: all to `cluster`, no timeout override.
    fn default_route(clusters: &[config::Cluster], cluster: &str) -> Result<Action, RouteError> {
        Ok(Action::new(
            vec![(cluster_index(clusters, cluster)?, 1)],
            None,
            None,
        ))
    }

    /// Compiles a route's action.
    fn from_config(
        a: &config::RouteAction,
        clusters: &[config::Cluster],
        route_index: usize,
        matched_len: Option<usize>,
    ) -> Result<Action, RouteError> {
        let targets = match &a.cluster {
            Some(c) => vec![(cluster_index(clusters, c)?, 1)],
            None => a
                .weighted_clusters
                .iter()
                .map(|w| Ok((cluster_index(clusters, &w.name)?, w.weight)))
                .collect::<Result<Vec<_>, RouteError>>()?,
        };
        let mut action = Action::new(
            targets,
            a.timeout_ms.map(Duration::from_millis),
            Some(route_index),
        );
        action.retry = a.retry_policy.as_ref().map(RetryPolicy::new);
        action.fault = a.fault;
        action.mirrors = a
            .request_mirror_policies
            .iter()
            .map(|m| Ok((cluster_index(clusters, &m.cluster)?, m.percentage)))
            .collect::<Result<_, RouteError>>()?;
        action.rewrite = Rewrite::new(a, matched_len)?;
        action.hash = a.hash_policy.iter().filter_map(HashPolicy::new).collect();
        action.direct = match &a.direct {
            Some(d) => Some(Box::new(Direct::new(d, matched_len)?)),
            None => None,
        };
        Ok(action)
    }

    /// The cluster for this request; `dice` is any number from the shard's random source.
    pub fn pick_cluster(&self, dice: u32) -> usize {
        self.pick(dice).0
    }

    /// The cluster for this request and which of the route's targets (weighted clusters, in
    /// config order; 0 for a plain `cluster`) it is.
    pub fn pick(&self, dice: u32) -> (usize, usize) {
        if self.targets.len() == 1 {
            return (self.targets[0].0, 0);
        }
        let mut point = dice % self.total_weight.max(1);
        for (i, &(cluster, weight)) in self.targets.iter().enumerate() {
            if point < weight {
                return (cluster, i);
            }
            point -= weight;
        }
        (self.targets[0].0, 0)
    }
}

/// Index of a cluster by name in the config.
fn cluster_index(clusters: &[config::Cluster], name: &str) -> Result<usize, RouteError> {
    clusters
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| RouteError::UnknownCluster(name.to_string()))
}

/// A protocol's compiled match conditions over its view of a request `R`.
pub trait Match<R: ?Sized> {
    /// Whether every condition holds for `req`.
    fn matches(&self, req: &R) -> bool;
}

/// One listener's compiled routes: each route's conditions `M` and action, in config order,
/// and the listener's default route (its `cluster`).
pub struct Table<M> {
    routes: Vec<(M, Action)>,
    default: Option<Action>,
}

impl<M: Matched> Table<M> {
    /// Routes nothing (every request gets "no route").
    pub fn empty() -> Self {
        Table {
            routes: Vec::new(),
            default: None,
        }
    }

    /// Compiles `routes` (config order; `compile` turns one into its conditions and gives its
    /// action) and the default route to `default_cluster`, against the config's `clusters`.
    pub fn compile<C>(
        routes: &[C],
        default_cluster: Option<&str>,
        clusters: &[config::Cluster],
        compile: impl Fn(&C) -> Result<(M, &config::RouteAction), RouteError>,
    ) -> Result<Self, RouteError> {
        Self::compile_from(routes, 0, default_cluster, clusters, &compile)
    }

    /// [`Table::compile`], the route indices counted from `first` (routes of several tables
    /// share one index space for their stats).
    fn compile_from<C>(
        routes: &[C],
        first: usize,
        default_cluster: Option<&str>,
        clusters: &[config::Cluster],
        compile: &impl Fn(&C) -> Result<(M, &config::RouteAction), RouteError>,
    ) -> Result<Self, RouteError> {
        let routes = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (m, action) = compile(r)?;
                let matched = m.matched_len();
                Ok((
                    m,
                    Action::from_config(action, clusters, first + i, matched)?,
                ))
            })
            .collect::<Result<_, RouteError>>()?;
        let default = default_cluster
            .map(|c| Action::default_route(clusters, c))
            .transpose()?;
        Ok(Table { routes, default })
    }

    /// The first matching route's action, else the default route, else `None` (no route).
    pub fn route<R: ?Sized>(&self, req: &R) -> Option<&Action>
    where
        M: Match<R>,
    {
        self.routes
            .iter()
            .find(|(m, _)| m.matches(req))
            .map(|(_, a)| a)
            .or(self.default.as_ref())
    }

    /// The default route alone (for requests whose fields cannot be read).
    pub fn default_route(&self) -> Option<&Action> {
        self.default.as_ref()
    }
}

/// Domains of one kind, lower-case, sorted, each with its host's index.
type Domains = Vec<(Box<[u8]>, usize)>;

/// Routes per host, as Envoy's virtual hosts: a request takes the routes of the one host whose
/// domain matches its host name best (exact, then the longest `*suffix`, then the longest
/// `prefix*`, then `*`; ASCII case ignored), and only those; then the default route. Built
/// once per config; choosing a host compares bytes in place (no lower-cased copy), a binary
/// search per domain kind and length.
pub struct Hosts<M> {
    exact: Domains,
    /// `*suffix` domains without the `*`, by length, longest first.
    suffixes: Vec<(usize, Domains)>,
    /// `prefix*` domains without the `*`, by length, longest first.
    prefixes: Vec<(usize, Domains)>,
    /// The host of the domain `*`.
    any: Option<usize>,
    ignore_port: bool,
    tables: Vec<Table<M>>,
    default: Option<Action>,
}

/// One virtual host to compile: its domains and its routes.
pub struct HostRoutes<'a, C> {
    pub domains: &'a [String],
    pub routes: &'a [C],
}

impl<M: Matched> Hosts<M> {
    /// Compiles each host's domains and routes (route indices run on across hosts, in order)
    /// and the default route to `default_cluster`. Validated config has each domain once; a
    /// repeated one keeps its first host.
    pub fn compile<C>(
        hosts: &[HostRoutes<'_, C>],
        ignore_port: bool,
        default_cluster: Option<&str>,
        clusters: &[config::Cluster],
        compile: impl Fn(&C) -> Result<(M, &config::RouteAction), RouteError>,
    ) -> Result<Self, RouteError> {
        let mut exact = Vec::new();
        let mut suffixes: Vec<(usize, Domains)> = Vec::new();
        let mut prefixes: Vec<(usize, Domains)> = Vec::new();
        let mut any = None;
        let mut tables = Vec::with_capacity(hosts.len());
        let mut first = 0;
        for (i, h) in hosts.iter().enumerate() {
            for d in h.domains {
                let d = d.to_ascii_lowercase().into_bytes();
                if d == b"*" {
                    any = any.or(Some(i));
                } else if let Some(s) = d.strip_prefix(b"*") {
                    add_by_len(&mut suffixes, s, i);
                } else if let Some(p) = d.strip_suffix(b"*") {
                    add_by_len(&mut prefixes, p, i);
                } else {
                    exact.push((d.into_boxed_slice(), i));
                }
            }
            tables.push(Table::compile_from(
                h.routes, first, None, clusters, &compile,
            )?);
            first += h.routes.len();
        }
        sort_domains(&mut exact);
        for kind in [&mut suffixes, &mut prefixes] {
            kind.sort_by(|a, b| b.0.cmp(&a.0));
            kind.iter_mut().for_each(|(_, d)| sort_domains(d));
        }
        let default = default_cluster
            .map(|c| Action::default_route(clusters, c))
            .transpose()?;
        Ok(Hosts {
            exact,
            suffixes,
            prefixes,
            any,
            ignore_port,
            tables,
            default,
        })
    }

    /// Routes nothing (every request gets "no route").
    pub fn empty() -> Self {
        Hosts {
            exact: Vec::new(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            any: None,
            ignore_port: false,
            tables: Vec::new(),
            default: None,
        }
    }

    /// The index of the host whose routes a request for `host` takes (Envoy's
    /// `RouteMatcher::findVirtualHost`): with only a `*` host, that one even without a host
    /// name; otherwise none without one.
    pub fn find(&self, host: Option<&[u8]>) -> Option<usize> {
        if self.exact.is_empty() && self.suffixes.is_empty() && self.prefixes.is_empty() {
            return self.any;
        }
        let mut host = host?;
        if self.ignore_port {
            host = &host[..port_start(host).unwrap_or(host.len())];
        }
        if let Some(i) = lookup(&self.exact, host) {
            return Some(i);
        }
        // `>`, not `>=`: `*.foo.com` does not match `.foo.com`.
        let suffix = self.suffixes.iter().filter(|(len, _)| host.len() > *len);
        for (len, domains) in suffix {
            if let Some(i) = lookup(domains, &host[host.len() - len..]) {
                return Some(i);
            }
        }
        let prefix = self.prefixes.iter().filter(|(len, _)| host.len() > *len);
        for (len, domains) in prefix {
            if let Some(i) = lookup(domains, &host[..*len]) {
                return Some(i);
            }
        }
        self.any
    }

    /// The first matching route of the host chosen for `host`, else the default route, else
    /// `None` (no route).
    pub fn route<R: ?Sized>(&self, host: Option<&[u8]>, req: &R) -> Option<&Action>
    where
        M: Match<R>,
    {
        self.route_entry(host, req).map(|(_, a)| a)
    }

    /// As [`Hosts::route`], with the matching route's conditions (`None`: the default route).
    pub fn route_entry<R: ?Sized>(
        &self,
        host: Option<&[u8]>,
        req: &R,
    ) -> Option<(Option<&M>, &Action)>
    where
        M: Match<R>,
    {
        self.find(host)
            .and_then(|i| self.tables[i].routes.iter().find(|(m, _)| m.matches(req)))
            .map(|(m, a)| (Some(m), a))
            .or(self.default.as_ref().map(|a| (None, a)))
    }
}

fn add_by_len(kind: &mut Vec<(usize, Domains)>, d: &[u8], host: usize) {
    match kind.iter_mut().find(|(len, _)| *len == d.len()) {
        Some((_, domains)) => domains.push((d.into(), host)),
        None => kind.push((d.len(), vec![(d.into(), host)])),
    }
}

/// Sorted by domain; of a repeated domain the first host stays.
fn sort_domains(d: &mut Domains) {
    d.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    d.dedup_by(|later, first| later.0 == first.0);
}

/// The host of `name` among `domains` (lower-case), `name` compared ASCII case-insensitively.
fn lookup(domains: &Domains, name: &[u8]) -> Option<usize> {
    let lower = || name.iter().map(u8::to_ascii_lowercase);
    domains
        .binary_search_by(|(d, _)| d.iter().copied().cmp(lower()))
        .ok()
        .map(|k| domains[k].1)
}

/// Where the port of a host name starts (its `:`), as Envoy's `HeaderUtility::getPortStart`:
/// the last `:` unless it is inside an IPv6 literal's brackets.
fn port_start(host: &[u8]) -> Option<usize> {
    let colon = host.iter().rposition(|&b| b == b':')?;
    match host.iter().rposition(|&b| b == b']') {
        Some(v6_end) if v6_end > colon => None,
        _ => Some(colon),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy's `JitteredExponentialBackOffStrategy` (base 25, max 250): intervals 25, 50, 100,
    /// 200, 250, 250, ...; each wait `random % interval`.
    #[test]
    fn retry_back_off_is_envoys_jittered_exponential() {
        let policy = |b: Option<config::RetryBackOff>| {
            RetryPolicy::new(&config::RetryPolicy {
                retry_on: vec![config::RetryOn::Reset],
                num_retries: 10,
                per_try_timeout_ms: None,
                retriable_status_codes: vec![],
                previous_hosts: true,
                host_selection_retry_max_attempts: 1,
                previous_priorities: None,
                retry_back_off: b,
            })
        };
        let mut r = Retry::new(policy(None));
        let mut caps = Vec::new();
        for _ in 0..7 {
            // The largest wait (999: one under a multiple of every interval) is interval - 1.
            caps.push(r.back_off(999).as_millis() + 1);
            r.done += 1;
        }
        assert_eq!(caps, [25, 50, 100, 200, 250, 250, 250]);
        let mut r = Retry::new(policy(Some(config::RetryBackOff {
            base_interval_ms: 10,
            max_interval_ms: Some(30),
        })));
        let mut caps = Vec::new();
        for _ in 0..4 {
            caps.push(r.back_off(599).as_millis() + 1);
            r.done += 1;
        }
        // 10 < 15: doubles to 20; 20 >= 15: the max, 30.
        assert_eq!(caps, [10, 20, 30, 30]);
        assert_eq!(Retry::new(policy(None)).back_off(30).as_millis(), 5);
    }

    /// `previous_priorities` with `update_frequency` 2: the first retry draws from the
    /// cluster's load, the second and third leave out the levels of the first two tries, the
    /// fourth those of the first four.
    #[test]
    fn previous_priorities_decide_every_update_frequency_tries() {
        let mut r = Retry::new(RetryPolicy::new(&config::RetryPolicy {
            retry_on: vec![config::RetryOn::Reset],
            num_retries: 10,
            per_try_timeout_ms: None,
            retriable_status_codes: vec![],
            previous_hosts: false,
            host_selection_retry_max_attempts: 1,
            previous_priorities: Some(2),
            retry_back_off: None,
        }));
        let mut seen = Vec::new();
        for slot in [7, 8, 9, 10, 11] {
            r.tried(slot);
            seen.push(r.priority_avoided().to_vec());
        }
        assert_eq!(
            seen,
            [
                vec![],
                vec![7, 8],
                vec![7, 8],
                vec![7, 8, 9, 10],
                vec![7, 8, 9, 10]
            ]
        );
        r.policy.previous_priorities = 0;
        assert!(r.priority_avoided().is_empty());
    }

    #[test]
    fn matchers_compare_whole_values() {
        let sm = |exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>| StringMatch {
            exact: exact.map(Into::into),
            prefix: prefix.map(Into::into),
            regex: regex.map(Into::into),
        };
        let m = Matcher::new(&sm(None, None, Some("a.c"))).unwrap();
        assert!(m.matches(b"abc") && !m.matches(b"abcd") && !m.matches(b"xabc"));
        let m = Matcher::new(&sm(None, Some("ab"), None)).unwrap();
        assert!(m.matches(b"abc") && !m.matches(b"a"));
        let m = Matcher::new(&sm(Some("ab"), None, None)).unwrap();
        assert!(m.matches(b"ab") && !m.matches(b"abc"));
        assert!(matches!(
            Matcher::new(&sm(None, None, Some("("))),
            Err(RouteError::Regex(_))
        ));
        let v = ValueMatch::new(None, None, None, Some(false)).unwrap();
        assert!(v.matches(None) && !v.matches(Some(b"")));
        let v = ValueMatch::new(None, None, Some("cn-.*"), None).unwrap();
        assert!(v.matches(Some(b"cn-hz")) && !v.matches(None) && !v.matches(Some(b"us")));
    }

    #[test]
    fn dice_never_sticks_at_zero() {
        let d = Dice::new(0);
        let rolls: Vec<u32> = (0..4).map(|_| d.roll()).collect();
        assert!(rolls.iter().all(|&r| r != 0), "{rolls:?}");
        assert_ne!(rolls[0], rolls[1]);
    }

    struct Any;
    impl Matched for Any {}
    impl Match<()> for Any {
        fn matches(&self, _: &()) -> bool {
            true
        }
    }

    #[test]
    fn hosts_pick_the_most_specific_domain_as_envoy() {
        let clusters: Vec<config::Cluster> = (0..6)
            .map(|i| config::Cluster {
                name: format!("c{i}"),
                ..config::Config::from_yaml(
                    "t",
                    "clusters: [{name: x, endpoints: [\"127.0.0.1:1\"]}]",
                )
                .unwrap()
                .clusters[0]
                    .clone()
            })
            .collect();
        let route = |c: usize| config::RouteAction {
            cluster: Some(format!("c{c}")),
            ..Default::default()
        };
        let routes: Vec<Vec<config::RouteAction>> = (0..6).map(|c| vec![route(c)]).collect();
        let domains: Vec<Vec<String>> = [
            &["Api.Example.com", "api.example.com:8080"][..],
            &["*.example.com"],
            &["*-bar.example.com"],
            &["api.*"],
            &["api.example.*"],
            &["*"],
        ]
        .iter()
        .map(|ds| ds.iter().map(|d| d.to_string()).collect())
        .collect();
        let compile = |ignore_port: bool| {
            let hosts: Vec<HostRoutes<'_, config::RouteAction>> = (0..6)
                .map(|i| HostRoutes {
                    domains: &domains[i],
                    routes: &routes[i],
                })
                .collect();
            Hosts::compile(&hosts, ignore_port, None, &clusters, |r| Ok((Any, r))).unwrap()
        };
        let h = compile(false);
        let pick = |h: &Hosts<Any>, host: &str| h.find(Some(host.as_bytes()));
        assert_eq!(pick(&h, "api.example.com"), Some(0));
        assert_eq!(pick(&h, "API.EXAMPLE.COM"), Some(0), "case");
        assert_eq!(pick(&h, "api.example.com:8080"), Some(0));
        assert_eq!(
            pick(&h, "api.example.com:9090"),
            Some(4),
            "port kept: a prefix"
        );
        assert_eq!(pick(&h, "www.example.com"), Some(1), "suffix over prefix");
        assert_eq!(pick(&h, "foo-bar.example.com"), Some(2), "longest suffix");
        assert_eq!(
            pick(&h, "-bar.example.com"),
            Some(1),
            "a wildcard needs one byte"
        );
        assert_eq!(pick(&h, ".example.com"), Some(5));
        assert_eq!(pick(&h, "api.example.org"), Some(4), "longest prefix");
        assert_eq!(pick(&h, "api.x"), Some(3));
        assert_eq!(pick(&h, "api."), Some(5));
        assert_eq!(pick(&h, "other"), Some(5));
        assert_eq!(h.find(None), None, "no host name, several hosts");
        let h = compile(true);
        assert_eq!(pick(&h, "api.example.com:9090"), Some(0), "port ignored");
        assert_eq!(pick(&h, "api.example.com:"), Some(0));
        assert_eq!(pick(&h, "[::1]"), Some(5));
        let r = h.route(Some(b"x-bar.example.com"), &()).unwrap();
        assert_eq!((r.pick_cluster(0), r.route_index), (2, Some(2)));
        assert_eq!(port_start(b"[::1]:80"), Some(5));
        assert_eq!(port_start(b"[::1]"), None);
        let only_any = Hosts::compile(
            &[HostRoutes {
                domains: &domains[5],
                routes: &routes[5],
            }],
            false,
            None,
            &clusters,
            |r| Ok((Any, r)),
        )
        .unwrap();
        assert_eq!(only_any.find(None), Some(0), "Envoy's fast path");
    }
}
