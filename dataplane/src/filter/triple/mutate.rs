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
//! formats compiled with the access log's format compiler: `%%`, `%HOSTNAME%` and the
//! operators of the request's stream info ([`Facts`], the route's name and cluster) are filled
//! (a missing value: empty, and an empty value is not added unless `keep_empty_value`, as
//! Envoy's header formatter); any other operator is refused (a configuration error naming
//! it). A level whose values are all literal adds them as compiled (no allocation); one with
//! operators renders them per request, against the headers after its removals (`%REQ(x)%` in
//! request headers, `%RESP(x)%` in response headers), before it adds any. As Envoy 1.40 (its
//! router finalizes the request before the upstream request exists): the upstream host is
//! empty in request headers, and so is a response header; a response header's `%REQ(x)%`
//! reads the request as it went upstream, captured when it left ([`Respond::capture`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::headers::HeaderList;
use crate::access_log::format::{Format, Op, Piece};
use crate::access_log::{Flags, Part};
use crate::config::{AppendAction, HeaderMutations, HeaderToAdd};
use crate::route::RouteError;

/// A header a level adds: name, value, how, `keep_empty_value`.
type Add = (Box<[u8]>, Value, AppendAction, bool);

/// A header value: its bytes, or operators to fill per request.
#[derive(Debug)]
enum Value {
    Literal(Box<[u8]>),
    Format(Box<[Piece]>),
}

/// The request headers a response level's `%REQ(x)%` reads, as the request went upstream:
/// (name, value) of those it had.
#[derive(Clone, Debug, Default)]
pub struct Captured(Vec<Field>);

/// A header's name and value.
type Field = (Box<[u8]>, Box<[u8]>);

impl Captured {
    fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| &n[..] == name)
            .map(|(_, v)| &v[..])
    }
}

/// What the operators read beside the headers being edited: the route's name and cluster
/// (`%ROUTE_NAME%`, `%UPSTREAM_CLUSTER%`) and, for a response, the request's captured headers.
#[derive(Clone, Copy, Default)]
struct Names<'a> {
    route: Option<&'a str>,
    cluster: Option<&'a str>,
    request: Option<&'a Captured>,
}

/// One level's mutations in one direction.
#[derive(Debug, Default)]
pub struct Level {
    remove: Vec<Box<[u8]>>,
    add: Vec<Add>,
    /// Some value has operators (rendered per request).
    dynamic: bool,
    /// Response headers (`%RESP(x)%` reads them; request headers: `%REQ(x)%`).
    response: bool,
}

/// What a level edits: a header list of either protocol.
pub trait Fields {
    fn has(&self, name: &[u8]) -> bool;
    /// The first value of `name` (lower case; `:authority` is HTTP/1.1's `host`).
    fn value(&self, name: &[u8]) -> Option<&[u8]>;
    /// Drops every field `name`.
    fn remove(&mut self, name: &[u8]);
    /// Adds a field at the end.
    fn push(&mut self, name: &[u8], value: &[u8]);
}

/// What a header value's operators read of the request (Envoy's stream info).
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    /// `HTTP/2` or `HTTP/1.1` (`%PROTOCOL%`).
    pub protocol: &'static str,
    /// When the request began (`%START_TIME%`).
    pub start: SystemTime,
    /// The caller's (remote, local) address (`%DOWNSTREAM_REMOTE_ADDRESS%`,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`, ...).
    pub caller: (Option<SocketAddr>, Option<SocketAddr>),
    /// Responses: the endpoint that answered (`%UPSTREAM_HOST%`,
    /// `%UPSTREAM_REMOTE_ADDRESS%`) and the status (`%RESPONSE_CODE%`).
    pub upstream: Option<SocketAddr>,
    pub response_code: Option<u32>,
    /// Since the request began (`%DURATION%`, Envoy's `currentDuration`): zero for request
    /// headers (evaluated as they arrive).
    pub duration: Duration,
    /// Request body bytes received so far (`%BYTES_RECEIVED%`; `%BYTES_SENT%` is always 0:
    /// headers are evaluated before any response body goes out).
    pub bytes_received: u64,
    /// The request's response flags so far (`%RESPONSE_FLAGS%`, `-` for none).
    pub flags: Flags,
    /// `%GRPC_STATUS%`: a gRPC request's response `grpc-status`, else its HTTP status mapped
    /// (Envoy's `Grpc::Common::getGrpcStatus` once the response code is known); none for
    /// request headers and local replies (evaluated before either is set).
    pub grpc_status: Option<u32>,
}

impl Facts {
    /// A request's facts (none of its response yet).
    pub fn request(
        protocol: &'static str,
        start: SystemTime,
        caller: (Option<SocketAddr>, Option<SocketAddr>),
    ) -> Facts {
        Facts {
            protocol,
            start,
            caller,
            upstream: None,
            response_code: None,
            duration: Duration::ZERO,
            bytes_received: 0,
            flags: Flags::NONE,
            grpc_status: None,
        }
    }

    /// `%GRPC_STATUS%` of a gRPC request's response with headers `grpc_status` (its field, if
    /// any) and status `code`, as Envoy's formatter reads it.
    pub fn grpc_status_of(grpc_status: Option<&[u8]>, code: Option<u32>) -> Option<u32> {
        grpc_status
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .or_else(|| code.map(|c| super::error::http_to_grpc_status(c as u16)))
    }
}

/// The headers a level edits (`part`), as the access log's renderer reads them; a response
/// level also reads the request's captured headers.
struct View<'a, F>(&'a F, Part, Option<&'a Captured>);

impl<F: Fields> crate::access_log::Headers for View<'_, F> {
    fn get(&self, part: Part, name: &str) -> Option<&[u8]> {
        if part == self.1 {
            return self.0.value(name.as_bytes());
        }
        match part {
            Part::Request => self.2.and_then(|c| c.get(name.as_bytes())),
            _ => None,
        }
    }
}

impl Level {
    fn compile(
        add: &[HeaderToAdd],
        remove: &[String],
        response: bool,
    ) -> Result<Option<Level>, RouteError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(None);
        }
        let mut l = Level {
            remove: remove
                .iter()
                .map(|n| n.to_ascii_lowercase().into_bytes().into())
                .collect(),
            add: Vec::with_capacity(add.len()),
            dynamic: false,
            response,
        };
        for h in add {
            let value = value(&h.value).map_err(|e| {
                RouteError::Header(format!("header {:?} value {:?}: {e}", h.name, h.value))
            })?;
            // An empty value is left out unless `keep_empty_value` (Envoy's `add_if_empty`).
            if matches!(&value, Value::Literal(v) if v.is_empty()) && !h.keep_empty_value {
                continue;
            }
            l.dynamic |= matches!(value, Value::Format(_));
            l.add.push((
                h.name.to_ascii_lowercase().into_bytes().into(),
                value,
                h.append_action,
                h.keep_empty_value,
            ));
        }
        Ok(Some(l))
    }

    /// The values of a level with operators, filled against `f` (`None` for literals).
    fn render(&self, f: &impl Fields, facts: &Facts, names: Names<'_>) -> Vec<Option<Vec<u8>>> {
        let part = match self.response {
            true => Part::Response,
            false => Part::Request,
        };
        let view = View(f, part, names.request.filter(|_| self.response));
        let record = crate::access_log::Record {
            start: facts.start,
            duration: facts.duration,
            protocol: Some(facts.protocol),
            response_code: facts.response_code,
            grpc_status: facts.grpc_status,
            flags: facts.flags,
            // Envoy 1.40 finalizes a request's headers before its upstream request exists:
            // no upstream host for them.
            upstream_host: facts.upstream.filter(|_| self.response),
            upstream_cluster: names.cluster,
            route_name: names.route,
            downstream_remote: facts.caller.0,
            downstream_local: facts.caller.1,
            bytes_received: facts.bytes_received,
            bytes_sent: 0,
            headers: &view,
            dubbo: None,
        };
        self.add
            .iter()
            .map(|(_, v, _, _)| match v {
                Value::Literal(_) => None,
                Value::Format(pieces) => {
                    let mut out = Vec::new();
                    for p in pieces.iter() {
                        match p {
                            Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                            Piece::Op(op, max) => {
                                crate::access_log::format::render_op(op, *max, &record, &mut out);
                            }
                        }
                    }
                    Some(out)
                }
            })
            .collect()
    }

    /// Applies the level to `f`; `facts` and `names` fill its operators.
    fn apply(&self, f: &mut impl Fields, facts: &Facts, names: Names<'_>) {
        for n in &self.remove {
            f.remove(n);
        }
        // Operators see the headers after the removals, before any addition of this level.
        let rendered = match self.dynamic {
            true => self.render(f, facts, names),
            false => Vec::new(),
        };
        let value = |i: usize| -> &[u8] {
            match &self.add[i].1 {
                Value::Literal(v) => v,
                Value::Format(_) => rendered[i].as_deref().unwrap_or_default(),
            }
        };
        // Decided against the headers after the removals, before any addition of this level.
        let mut decided = [Decision::Skip; 32];
        let mut more = Vec::new();
        for (i, (n, _, action, keep_empty)) in self.add.iter().enumerate() {
            let d = match action {
                _ if !keep_empty && value(i).is_empty() => Decision::Skip,
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
        for (i, (n, ..)) in self.add.iter().enumerate() {
            if decision(i) == Decision::Overwrite {
                f.remove(n);
                f.push(n, value(i));
            }
        }
        for (i, (n, ..)) in self.add.iter().enumerate() {
            if decision(i) == Decision::Add {
                f.push(n, value(i));
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

/// The operators ringside fills in a header value (the rest of Envoy's: a config error).
const FILLED: &str = "%%, %HOSTNAME%, %START_TIME%, %PROTOCOL%, %DOWNSTREAM_REMOTE_ADDRESS%, \
    %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%, %DOWNSTREAM_LOCAL_ADDRESS%, \
    %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% (and the DIRECT forms), %REQ(x)%, %RESP(x)%, \
    %RESPONSE_CODE%, %UPSTREAM_HOST%, %UPSTREAM_REMOTE_ADDRESS%, %UPSTREAM_CLUSTER%, \
    %ROUTE_NAME%, %DURATION%, %BYTES_RECEIVED%, %BYTES_SENT%, %RESPONSE_FLAGS%, %GRPC_STATUS%, \
    %GRPC_STATUS_NUMBER% (in a request header, as Envoy 1.40: the upstream host, the \
    response's headers and gRPC status empty, the response code, duration and bytes 0)";

/// A header value's format compiled: its bytes when it has no operator but `%HOSTNAME%` (a
/// constant), else its pieces.
fn value(format: &str) -> Result<Value, String> {
    let pieces = match Format::text(format).map_err(|e| e.to_string())? {
        Format::Text(p) => p,
        Format::Json(_) => unreachable!("a text format"),
    };
    let mut literal = String::new();
    let mut constant = true;
    for p in &pieces {
        match p {
            Piece::Text(t) => literal.push_str(t),
            Piece::Op(Op::Hostname, max) => {
                let h = crate::access_log::format::hostname();
                literal.push_str(&h[..max.unwrap_or(h.len()).min(h.len())]);
            }
            Piece::Op(op, _) => {
                let filled = matches!(
                    op,
                    Op::StartTime(_)
                        | Op::Protocol
                        | Op::DownstreamRemoteAddress
                        | Op::DownstreamRemoteAddressWithoutPort
                        | Op::DownstreamLocalAddress
                        | Op::DownstreamLocalAddressWithoutPort
                        | Op::Header(Part::Request | Part::Response, ..)
                        | Op::ResponseCode
                        | Op::UpstreamHost
                        | Op::UpstreamCluster
                        | Op::RouteName
                        | Op::Duration
                        | Op::BytesReceived
                        | Op::BytesSent
                        | Op::ResponseFlags
                        | Op::GrpcStatus
                        | Op::GrpcStatusNumber
                );
                if !filled {
                    return Err(format!(
                        "command operator {op:?} is not one ringside fills in a header value (it fills {FILLED})"
                    ));
                }
                constant = false;
            }
        }
    }
    Ok(match constant {
        true => Value::Literal(literal.into_bytes().into()),
        false => Value::Format(pieces.into()),
    })
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
            request: Level::compile(
                &m.request_headers_to_add,
                &m.request_headers_to_remove,
                false,
            )?
            .map(Arc::new),
            response: Level::compile(
                &m.response_headers_to_add,
                &m.response_headers_to_remove,
                true,
            )?
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
    /// `%ROUTE_NAME%`, and `%UPSTREAM_CLUSTER%` by target.
    route_name: Option<Box<str>>,
    clusters: Box<[Box<str>]>,
    /// The request headers its response levels read (`%REQ(x)%`), lower case.
    captures: Box<[Box<[u8]>]>,
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
        let clusters = match &route.route.cluster {
            Some(c) => vec![c.as_str().into()],
            None => route
                .route
                .weighted_clusters
                .iter()
                .map(|w| w.name.as_str().into())
                .collect(),
        };
        let mut r = RouteHeaders {
            request: levels.iter().filter_map(|b| b.request.clone()).collect(),
            response: levels.iter().filter_map(|b| b.response.clone()).collect(),
            targets: match targets.iter().all(Both::is_empty) {
                true => Vec::new(),
                false => targets,
            },
            route_name: route.name.as_deref().map(Into::into),
            clusters: clusters.into(),
            captures: Box::new([]),
        };
        let mut captures: Vec<Box<[u8]>> = Vec::new();
        let response_levels = r
            .response
            .iter()
            .chain(r.targets.iter().filter_map(|b| b.response.as_ref()));
        for l in response_levels {
            for (_, v, _, _) in &l.add {
                let Value::Format(pieces) = v else { continue };
                for p in pieces.iter() {
                    if let Piece::Op(Op::Header(Part::Request, a, b), _) = p {
                        for n in std::iter::once(a).chain(b) {
                            let n: Box<[u8]> = n.to_ascii_lowercase().into_bytes().into();
                            if !captures.contains(&n) {
                                captures.push(n);
                            }
                        }
                    }
                }
            }
        }
        r.captures = captures.into();
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

    fn names<'a>(&'a self, target: usize, request: Option<&'a Captured>) -> Names<'a> {
        Names {
            route: self.route_name.as_deref(),
            cluster: self.clusters.get(target).map(|c| &**c),
            request,
        }
    }

    /// A request to weighted target `target` (0 for a plain cluster), mutated.
    pub fn request(&self, target: usize, f: &mut impl Fields, facts: &Facts) {
        let names = self.names(target, None);
        if let Some(l) = self.target(target).and_then(|b| b.request.as_ref()) {
            l.apply(f, facts, names);
        }
        self.request.iter().for_each(|l| l.apply(f, facts, names));
    }

    /// A response of a request to `target` (its headers as they went upstream: `request`),
    /// mutated.
    fn response(
        &self,
        target: usize,
        f: &mut impl Fields,
        facts: &Facts,
        request: Option<&Captured>,
    ) {
        let names = self.names(target, request);
        if let Some(l) = self.target(target).and_then(|b| b.response.as_ref()) {
            l.apply(f, facts, names);
        }
        self.response.iter().for_each(|l| l.apply(f, facts, names));
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

/// A response (and whose request went where) the mutations of its route apply to, with the
/// request headers its `%REQ(x)%` operators read.
#[derive(Clone, Debug)]
pub struct Respond(pub Arc<RouteHeaders>, pub usize, Option<Box<Captured>>);

impl Respond {
    /// For a call routed by `headers` to `target`: `None` when its response is not mutated.
    pub fn of(headers: Option<&Arc<RouteHeaders>>, target: usize) -> Option<Respond> {
        headers
            .filter(|h| h.has_response(target))
            .map(|h| Respond(h.clone(), target, None))
    }

    /// Keeps the request headers (`get`: as the request went upstream) that the response's
    /// `%REQ(x)%` operators read; nothing (no allocation) when they read none.
    pub fn capture<'a>(&mut self, get: impl Fn(&[u8]) -> Option<&'a [u8]>) {
        if self.0.captures.is_empty() {
            return;
        }
        let kept = self
            .0
            .captures
            .iter()
            .filter_map(|n| Some((n.clone(), get(n)?.into())))
            .collect();
        self.2 = Some(Box::new(Captured(kept)));
    }

    pub fn apply(&self, f: &mut impl Fields, facts: &Facts) {
        self.0.response(self.1, f, facts, self.2.as_deref())
    }

    /// The fields of a local reply (ringside's own answer to a routed request) after the
    /// route's response mutations, as Envoy 1.40's filter manager finalizes a local reply's
    /// headers with its route's before the reply's own fields are set: the mutations see only
    /// `location` (a redirect's or direct response's, added first), `%RESPONSE_CODE%` is 0
    /// (the stream has no response code yet), `%GRPC_STATUS%` empty, and `facts` give the
    /// endpoint picked, if any, the duration, bytes and response flags so far.
    /// Error path only (allocates).
    pub fn local_reply(&self, location: Option<&[u8]>, facts: &Facts) -> HeaderList {
        let mut f = HeaderList::default();
        if let Some(loc) = location {
            f.append(b"location", loc);
        }
        let facts = Facts {
            response_code: Some(0),
            grpc_status: None,
            ..*facts
        };
        self.apply(&mut f, &facts);
        f
    }
}

/// Whether a local reply's field `n` (from [`Respond::local_reply`]) gives way to one the
/// reply sets after the mutations (Envoy sets these on the reply, replacing a mutation's):
/// its framing and content type, a gRPC reply's status and message, `date`.
pub fn local_reply_sets(n: &[u8]) -> bool {
    matches!(
        n,
        b"content-type"
            | b"content-length"
            | b"grpc-status"
            | b"grpc-message"
            | b"date"
            | b"connection"
            | b"transfer-encoding"
            | b"upgrade"
    )
}

impl Fields for HeaderList {
    fn has(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    fn value(&self, name: &[u8]) -> Option<&[u8]> {
        self.get(name)
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

    fn value(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.as_bytes() == name)
            .map(|(_, v)| &v[..])
    }

    fn remove(&mut self, name: &[u8]) {
        self.retain(|(n, _)| n.as_bytes() != name)
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        self.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()))
    }
}

/// An HTTP/1.1 request's fields (names lower case, `host` left out) with the parts of its
/// request line that `%REQ(:authority)%`, `%REQ(:path)%` and `%REQ(:method)%` read.
pub struct Http1Request<'a> {
    pub fields: &'a mut Vec<(String, Vec<u8>)>,
    pub authority: &'a str,
    pub path: &'a str,
    pub method: &'a str,
}

impl Fields for Http1Request<'_> {
    fn has(&self, name: &[u8]) -> bool {
        self.fields.has(name)
    }

    fn value(&self, name: &[u8]) -> Option<&[u8]> {
        match name {
            b":authority" => Some(self.authority.as_bytes()),
            b":path" => Some(self.path.as_bytes()),
            b":method" => Some(self.method.as_bytes()),
            n => self.fields.value(n),
        }
    }

    fn remove(&mut self, name: &[u8]) {
        Fields::remove(&mut *self.fields, name)
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        Fields::push(&mut *self.fields, name, value)
    }
}

/// The fields of an HTTP/1.1 head (names in any case).
struct HeadFields(Vec<(Vec<u8>, Vec<u8>)>);

impl Fields for HeadFields {
    fn has(&self, name: &[u8]) -> bool {
        self.0.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    fn value(&self, name: &[u8]) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
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
pub fn response_head(head: &[u8], r: &Respond, facts: &Facts) -> Vec<u8> {
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
    r.apply(&mut fields, facts);
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

    fn facts() -> Facts {
        Facts {
            protocol: "HTTP/2",
            start: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_460_751_420_310),
            caller: (
                Some("10.0.35.28:4711".parse().unwrap()),
                Some("10.0.0.1:80".parse().unwrap()),
            ),
            upstream: Some("10.0.2.1:8080".parse().unwrap()),
            response_code: Some(200),
            ..Facts::request("HTTP/2", std::time::UNIX_EPOCH, (None, None))
        }
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
            false,
        )
        .unwrap()
        .unwrap();
        let mut f = list(&[("a", "0"), ("b", "0"), ("d", "0"), ("d", "1"), ("x", "0")]);
        l.apply(&mut f, &facts(), Names::default());
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
    fn operators_ringside_does_not_fill_are_refused() {
        let one = |v: &str, response: bool| {
            Level::compile(&[add("a", v, AppendAction::AddIfAbsent)], &[], response)
        };
        for response in [false, true] {
            for ok in [
                "%UPSTREAM_HOST%",
                "%UPSTREAM_REMOTE_ADDRESS%",
                "%REQ(x-a)%",
                "%RESP(x-a)%",
                "%ROUTE_NAME%",
                "%UPSTREAM_CLUSTER%",
                "%RESPONSE_CODE%",
                "%HOSTNAME%",
            ] {
                assert!(one(ok, response).is_ok(), "{ok}");
            }
        }
        for ok in [
            "%DURATION%",
            "%BYTES_RECEIVED%",
            "%BYTES_SENT%",
            "%RESPONSE_FLAGS%",
            "%GRPC_STATUS%",
        ] {
            assert!(one(ok, true).is_ok(), "{ok}");
        }
        let e = one("%DUBBO_METHOD%", true).unwrap_err();
        assert!(e.to_string().contains("DubboMethod"), "{e}");
        assert!(one("%UPSTREAM_LOCAL_ADDRESS%", false).is_err());
        assert!(one("50%", false).is_err());
    }

    /// As Envoy 1.40: in a request header the upstream host is empty (not added), the
    /// response's headers empty, the response code 0; the route's name and the cluster are
    /// filled; a response header's `%REQ(x)%` reads the captured request.
    #[test]
    fn request_and_response_operators_fill_as_envoy() {
        use AppendAction as A;
        let l = Level::compile(
            &[
                add("x-up", "%UPSTREAM_HOST%", A::AddIfAbsent),
                add(
                    "x-names",
                    "%ROUTE_NAME% %UPSTREAM_CLUSTER% %RESPONSE_CODE%",
                    A::AddIfAbsent,
                ),
                add("x-resp", "%RESP(x-s)%", A::AddIfAbsent),
            ],
            &[],
            false,
        )
        .unwrap()
        .unwrap();
        let names = Names {
            route: Some("r1"),
            cluster: Some("c1"),
            request: None,
        };
        let mut f = list(&[("x-s", "1")]);
        let mut facts = facts();
        facts.response_code = None;
        l.apply(&mut f, &facts, names);
        assert_eq!(f, list(&[("x-s", "1"), ("x-names", "r1 c1 0")]));
        let r = Level::compile(
            &[add(
                "x-req",
                "%REQ(x-in)%|%REQ(:path)%|%REQ(x-none)%",
                A::AddIfAbsent,
            )],
            &[],
            true,
        )
        .unwrap()
        .unwrap();
        let captured = Captured(vec![
            (b"x-in"[..].into(), b"v"[..].into()),
            (b":path"[..].into(), b"/new"[..].into()),
        ]);
        let mut f = list(&[("x-in", "response's")]);
        r.apply(
            &mut f,
            &facts,
            Names {
                request: Some(&captured),
                ..names
            },
        );
        assert_eq!(f, list(&[("x-in", "response's"), ("x-req", "v|/new|")]));
    }

    /// Operators filled per request, against the headers after the level's removals; an empty
    /// value is not added (unless `keep_empty_value`); literal levels render nothing.
    #[test]
    fn operators_are_filled_from_the_request() {
        use AppendAction as A;
        let l = Level::compile(
            &[
                add(
                    "x-from",
                    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %PROTOCOL%",
                    A::AppendIfExistsOrAdd,
                ),
                add("x-t", "[%START_TIME(%s)%] %REQ(x-in)% %REQ(:authority):3%", A::AddIfAbsent),
                add("x-gone", "%REQ(x-rm)%", A::OverwriteIfExistsOrAdd),
                add("x-lit", "plain", A::AddIfAbsent),
            ],
            &["x-rm".into()],
            false,
        )
        .unwrap()
        .unwrap();
        assert!(l.dynamic);
        // An HTTP/1.1 request: `host` is its request line's authority, not a field.
        let mut f = list(&[("x-in", "v1"), ("x-rm", "away")]);
        l.apply(
            &mut Http1Request {
                fields: &mut f,
                authority: "svc.local",
                path: "/",
                method: "GET",
            },
            &facts(),
            Names::default(),
        );
        assert_eq!(
            f,
            list(&[
                ("x-in", "v1"),
                ("x-from", "10.0.35.28 10.0.35.28:4711 10.0.0.1:80 HTTP/2"),
                ("x-t", "[1460751420] v1 svc"),
                ("x-lit", "plain"),
            ])
        );
        let r = Level::compile(
            &[add(
                "x-up",
                "%UPSTREAM_REMOTE_ADDRESS% %RESPONSE_CODE% %RESP(x-s)%",
                A::AddIfAbsent,
            )],
            &[],
            true,
        )
        .unwrap()
        .unwrap();
        let mut f = list(&[("x-s", "9")]);
        r.apply(&mut f, &facts(), Names::default());
        assert_eq!(f, list(&[("x-s", "9"), ("x-up", "10.0.2.1:8080 200 9")]));
        let lit = Level::compile(&[add("x-l", "a%%b", A::AddIfAbsent)], &[], false)
            .unwrap()
            .unwrap();
        assert!(!lit.dynamic);
    }
}
