//! Route header mutations: Envoy's `request_headers_to_add`, `request_headers_to_remove`,
//! `response_headers_to_add` and `response_headers_to_remove` at the route configuration
//! (listener), virtual host, route and weighted cluster levels, compiled once per route into
//! the levels one request goes through, in Envoy's order: the weighted cluster's first, then
//! route, virtual host, listener (the least specific wins), or listener, virtual host, route with
//! `most_specific_header_mutations_wins`. A route without mutations has none compiled (`None`):
//! its requests pay nothing.
//!
//! Within one level, as Envoy's `HeaderParser::evaluateHeaders`: removals first; then each
//! addition is decided against the headers as they are after the removals (`add_if_absent`,
//! `overwrite_if_exists`), the overwrites done, then the appends. Values are Envoy substitution
//! formats compiled with the access log's format compiler; ringside fills `%HOSTNAME%` and `%%`
//! and refuses any other operator (a configuration error naming it).

use std::sync::Arc;

use super::headers::HeaderList;
use crate::access_log::format::{Format, Op, Piece};
use crate::config::{AppendAction, HeaderMutations, HeaderToAdd};
use crate::route::RouteError;

/// A header a level adds: name, value, how.
type Add = (Box<[u8]>, Box<[u8]>, AppendAction);

/// One level's mutations in one direction.
#[derive(Debug, Default)]
pub struct Level {
    remove: Vec<Box<[u8]>>,
    add: Vec<Add>,
}

/// What a level edits: a header list of either protocol.
pub trait Fields {
    fn has(&self, name: &[u8]) -> bool;
    /// Drops every field `name`.
    fn remove(&mut self, name: &[u8]);
    /// Adds a field at the end.
    fn push(&mut self, name: &[u8], value: &[u8]);
}

impl Level {
    fn compile(add: &[HeaderToAdd], remove: &[String]) -> Result<Option<Level>, RouteError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(None);
        }
        let mut l = Level {
            remove: remove
                .iter()
                .map(|n| n.to_ascii_lowercase().into_bytes().into())
                .collect(),
            add: Vec::with_capacity(add.len()),
        };
        for h in add {
            let value = value(&h.value).map_err(|e| {
                RouteError::Header(format!("header {:?} value {:?}: {e}", h.name, h.value))
            })?;
            // An empty value is left out unless `keep_empty_value` (Envoy's `add_if_empty`).
            if value.is_empty() && !h.keep_empty_value {
                continue;
            }
            l.add.push((
                h.name.to_ascii_lowercase().into_bytes().into(),
                value.into_bytes().into(),
                h.append_action,
            ));
        }
        Ok(Some(l))
    }

    /// Applies the level to `f`.
    pub fn apply(&self, f: &mut impl Fields) {
        for n in &self.remove {
            f.remove(n);
        }
        // Decided against the headers after the removals, before any addition of this level.
        let mut decided = [Decision::Skip; 32];
        let mut more = Vec::new();
        for (i, (n, _, action)) in self.add.iter().enumerate() {
            let d = match action {
                AppendAction::AppendIfExistsOrAdd => Decision::Add,
                AppendAction::AddIfAbsent if !f.has(n) => Decision::Add,
                AppendAction::AddIfAbsent => Decision::Skip,
                AppendAction::OverwriteIfExists if !f.has(n) => Decision::Skip,
                AppendAction::OverwriteIfExists | AppendAction::OverwriteIfExistsOrAdd => {
                    Decision::Overwrite
                }
            };
            match decided.get_mut(i) {
                Some(slot) => *slot = d,
                None => more.push(d),
            }
        }
        let decision = |i: usize| match decided.get(i) {
            Some(d) => *d,
            None => more[i - decided.len()],
        };
        for (i, (n, v, _)) in self.add.iter().enumerate() {
            if decision(i) == Decision::Overwrite {
                f.remove(n);
                f.push(n, v);
            }
        }
        for (i, (n, v, _)) in self.add.iter().enumerate() {
            if decision(i) == Decision::Add {
                f.push(n, v);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Decision {
    Skip,
    Add,
    Overwrite,
}

/// A header value's format compiled to its bytes (every operator ringside fills is constant).
fn value(format: &str) -> Result<String, String> {
    let pieces = match Format::text(format).map_err(|e| e.to_string())? {
        Format::Text(p) => p,
        Format::Json(_) => unreachable!("a text format"),
    };
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(&t),
            Piece::Op(Op::Hostname, max) => {
                let h = crate::access_log::format::hostname();
                out.push_str(&h[..max.unwrap_or(h.len()).min(h.len())]);
            }
            Piece::Op(op, _) => {
                return Err(format!(
                    "command operator {op:?} is not one ringside fills in a header value (it fills %HOSTNAME% and %%)"
                ))
            }
        }
    }
    Ok(out)
}

/// One level's request and response mutations.
#[derive(Debug, Default)]
struct Both {
    request: Option<Arc<Level>>,
    response: Option<Arc<Level>>,
}

impl Both {
    fn compile(m: &HeaderMutations) -> Result<Both, RouteError> {
        Ok(Both {
            request: Level::compile(&m.request_headers_to_add, &m.request_headers_to_remove)?
                .map(Arc::new),
            response: Level::compile(&m.response_headers_to_add, &m.response_headers_to_remove)?
                .map(Arc::new),
        })
    }

    fn is_empty(&self) -> bool {
        self.request.is_none() && self.response.is_none()
    }
}

/// The mutations one route's requests and responses go through.
#[derive(Debug, Default)]
pub struct RouteHeaders {
    /// Route, virtual host and listener levels in evaluation order.
    request: Vec<Arc<Level>>,
    response: Vec<Arc<Level>>,
    /// The weighted clusters' own, by target (as `Action::pick` numbers them).
    targets: Vec<Both>,
}

impl RouteHeaders {
    /// The route's mutations, or `None` when it has none at any level.
    pub fn compile(
        route: &crate::config::TripleRoute,
        host: Option<&HeaderMutations>,
        listener: &Listener,
    ) -> Result<Option<Arc<RouteHeaders>>, RouteError> {
        let own = Both::compile(&route.headers)?;
        let host = host.map(Both::compile).transpose()?.unwrap_or_default();
        let mut levels = [&own, &host, &listener.0];
        if listener.1 {
            levels.reverse();
        }
        let targets = route
            .route
            .weighted_clusters
            .iter()
            .map(|w| Both::compile(&w.headers))
            .collect::<Result<Vec<_>, _>>()?;
        let r = RouteHeaders {
            request: levels.iter().filter_map(|b| b.request.clone()).collect(),
            response: levels.iter().filter_map(|b| b.response.clone()).collect(),
            targets: match targets.iter().all(Both::is_empty) {
                true => Vec::new(),
                false => targets,
            },
        };
        Ok(
            (!r.request.is_empty() || !r.response.is_empty() || !r.targets.is_empty())
                .then(|| Arc::new(r)),
        )
    }

    fn target(&self, target: usize) -> Option<&Both> {
        self.targets.get(target)
    }

    pub fn has_request(&self, target: usize) -> bool {
        !self.request.is_empty() || self.target(target).is_some_and(|b| b.request.is_some())
    }

    pub fn has_response(&self, target: usize) -> bool {
        !self.response.is_empty() || self.target(target).is_some_and(|b| b.response.is_some())
    }

    /// A request to weighted target `target` (0 for a plain cluster), mutated.
    pub fn request(&self, target: usize, f: &mut impl Fields) {
        if let Some(l) = self.target(target).and_then(|b| b.request.as_ref()) {
            l.apply(f);
        }
        self.request.iter().for_each(|l| l.apply(f));
    }

    /// A response of a request to `target`, mutated.
    pub fn response(&self, target: usize, f: &mut impl Fields) {
        if let Some(l) = self.target(target).and_then(|b| b.response.as_ref()) {
            l.apply(f);
        }
        self.response.iter().for_each(|l| l.apply(f));
    }
}

/// The listener's (route configuration's) level, and `most_specific_header_mutations_wins`.
#[derive(Debug, Default)]
pub struct Listener(Both, bool);

impl Listener {
    pub fn compile(t: &crate::config::TripleListener) -> Result<Listener, RouteError> {
        Ok(Listener(
            Both::compile(&t.headers)?,
            t.most_specific_header_mutations_wins,
        ))
    }
}

/// A response (and whose request went where) the mutations of its route apply to.
#[derive(Clone, Debug)]
pub struct Respond(pub Arc<RouteHeaders>, pub usize);

impl Respond {
    /// For a call routed by `headers` to `target`: `None` when its response is not mutated.
    pub fn of(headers: Option<&Arc<RouteHeaders>>, target: usize) -> Option<Respond> {
        headers
            .filter(|h| h.has_response(target))
            .map(|h| Respond(h.clone(), target))
    }

    pub fn apply(&self, f: &mut impl Fields) {
        self.0.response(self.1, f)
    }
}

impl Fields for HeaderList {
    fn has(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    fn remove(&mut self, name: &[u8]) {
        self.replace(name, None)
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        self.append(name, value)
    }
}

/// HTTP/1.1 request fields (names lower case).
impl Fields for Vec<(String, Vec<u8>)> {
    fn has(&self, name: &[u8]) -> bool {
        self.iter().any(|(n, _)| n.as_bytes() == name)
    }

    fn remove(&mut self, name: &[u8]) {
        self.retain(|(n, _)| n.as_bytes() != name)
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        self.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()))
    }
}

/// The fields of an HTTP/1.1 head (names in any case).
struct HeadFields(Vec<(Vec<u8>, Vec<u8>)>);

impl Fields for HeadFields {
    fn has(&self, name: &[u8]) -> bool {
        self.0.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    fn remove(&mut self, name: &[u8]) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name))
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        self.0.push((name.to_vec(), value.to_vec()))
    }
}

/// Framing fields of an HTTP/1.1 head: written by ringside for the connection, never mutated.
fn framing(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    ]
    .iter()
    .any(|f| name.eq_ignore_ascii_case(f))
}

/// An HTTP/1.1 response head (status line, `name: value` lines, blank line) with `r` applied
/// (its framing fields kept, after the others).
pub fn response_head(head: &[u8], r: &Respond) -> Vec<u8> {
    let mut lines = head.split(|&b| b == b'\n');
    let status = lines.next().unwrap_or_default();
    let mut fields = HeadFields(Vec::new());
    let mut kept = Vec::new();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (n, v) = (&line[..colon], line[colon + 1..].trim_ascii());
        match framing(n) {
            true => kept.push((n.to_vec(), v.to_vec())),
            false => fields.0.push((n.to_vec(), v.to_vec())),
        }
    }
    r.apply(&mut fields);
    let mut out = Vec::with_capacity(head.len() + 64);
    out.extend_from_slice(status);
    out.push(b'\n');
    for (n, v) in fields.0.iter().chain(&kept) {
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderToAdd;

    fn add(name: &str, value: &str, a: AppendAction) -> HeaderToAdd {
        HeaderToAdd {
            name: name.into(),
            value: value.into(),
            append_action: a,
            keep_empty_value: false,
        }
    }

    fn list(fields: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn one_level_removes_then_decides_then_overwrites_then_appends() {
        use AppendAction as A;
        let l = Level::compile(
            &[
                add("a", "1", A::AppendIfExistsOrAdd),
                add("b", "2", A::AddIfAbsent),
                add("c", "3", A::AddIfAbsent),
                add("d", "4", A::OverwriteIfExists),
                add("e", "5", A::OverwriteIfExists),
                add("f", "6%%", A::OverwriteIfExistsOrAdd),
                add("g", "", A::AppendIfExistsOrAdd),
            ],
            &["x".into()],
        )
        .unwrap()
        .unwrap();
        let mut f = list(&[("a", "0"), ("b", "0"), ("d", "0"), ("d", "1"), ("x", "0")]);
        l.apply(&mut f);
        assert_eq!(
            f,
            list(&[
                ("a", "0"),
                ("b", "0"),
                ("d", "4"),
                ("f", "6%"),
                ("a", "1"),
                ("c", "3")
            ])
        );
    }

    #[test]
    fn operators_other_than_hostname_are_refused() {
        let e = Level::compile(
            &[add("a", "%UPSTREAM_HOST%", AppendAction::AddIfAbsent)],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("%UPSTREAM_HOST%"), "{e}");
        assert!(Level::compile(&[add("a", "%HOSTNAME%", AppendAction::AddIfAbsent)], &[]).is_ok());
        assert!(Level::compile(&[add("a", "50%", AppendAction::AddIfAbsent)], &[]).is_err());
    }
}
