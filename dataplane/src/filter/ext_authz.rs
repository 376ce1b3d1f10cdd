//! External authorization: a Triple listener's `ext_authz` (Envoy's
//! `envoy.filters.http.ext_authz` with a gRPC service; istiod's AuthorizationPolicy with
//! `action: CUSTOM`). A call it applies to (the shadow policy an rbac filter before it matched,
//! `filter_enabled_metadata`) waits before routing while ringside asks
//! `envoy.service.auth.v3.Authorization/Check` on the filter's cluster, over the listener's own
//! HTTP/2 upstream pool; the answer lets it go on (with the header changes it names), answers
//! it (denied), or, on an error, answers `status_on_error` unless `failure_mode_allow`
//! (docs/security.md#external-authorization).
//!
//! This module builds the CheckRequest Envoy 1.40 sends (its attributes: source and
//! destination address and principal, the request's method, path, host, scheme, protocol and
//! headers) and reads the CheckResponse; the protocol's connection code holds the call.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::service::auth::v3 as auth_pb;
use prost::Message;

use crate::config;
use crate::route::Matcher;
use crate::stats::{Kind, ShardStats, StatId, Stats};

/// The Check call's `:path`.
pub const CHECK_PATH: &[u8] = b"/envoy.service.auth.v3.Authorization/Check";
/// The header Envoy adds to a request let through by `failure_mode_allow` (with
/// `failure_mode_allow_header_add`).
pub const FAILURE_MODE_ALLOWED_HEADER: &[u8] = b"x-envoy-auth-failure-mode-allowed";

/// One listener's compiled filter.
pub struct ExtAuthz {
    /// The authorization service's cluster (its pool is found by name in the routes' pools).
    pub cluster: String,
    /// `:authority` of the Check calls.
    pub authority: Box<[u8]>,
    pub timeout: Duration,
    /// `grpc-timeout` of the Check calls (`NNNm`).
    pub grpc_timeout: Box<[u8]>,
    pub failure_mode_allow: bool,
    pub failure_mode_allow_header_add: bool,
    pub status_on_error: u16,
    /// The shadow rbac prefix and the matcher of the policy name that enable the filter; none:
    /// every call is checked.
    enabled: Option<(Box<str>, Matcher)>,
    pub include_peer_certificate: bool,
    /// The listener's rbac filters that run before this one.
    pub after_rbac: usize,
    /// It runs before the jwt_authn filter (istiod's order), else after it.
    pub before_jwt_authn: bool,
    pub ids: ExtAuthzStatIds,
    /// The network filter's own counters (a tcp listener's `ext_authz`).
    pub net: Option<NetStatIds>,
    /// The request headers the authorizer is told of (`allowed_headers`; with `http`,
    /// Envoy's defaults besides); none: every one.
    allowed: Option<Box<[Matcher]>>,
    /// An HTTP authorization service (`http_service`) instead of gRPC's Check.
    pub http: Option<HttpCheck>,
    /// The request body goes to the authorizer (`with_request_body`).
    pub body: Option<config::ExtAuthzBody>,
}

/// A request body as the authorizer is told of it: the bytes buffered (at most
/// `max_request_bytes` of them go) and whether that was all of it.
#[derive(Clone, Copy)]
pub struct Body<'a> {
    pub buffered: &'a [u8],
    pub settings: config::ExtAuthzBody,
}

impl Body<'_> {
    /// What goes: the first `max_request_bytes`.
    pub fn sent(&self) -> &[u8] {
        let n = self
            .buffered
            .len()
            .min(self.settings.max_request_bytes as usize);
        &self.buffered[..n]
    }

    /// `x-envoy-auth-partial-body`: more was buffered than goes (Envoy's test).
    pub fn partial(&self) -> &'static [u8] {
        match self.sent().len() != self.buffered.len() {
            true => b"true",
            false => b"false",
        }
    }
}

/// The header the authorizer learns whether it got the whole body by.
pub const PARTIAL_BODY_HEADER: &[u8] = b"x-envoy-auth-partial-body";

/// Envoy's `http_service`, compiled: what the check request carries besides the request's
/// allowed headers, and which of the answer's headers go where.
pub struct HttpCheck {
    /// `x-envoy-expected-rq-timeout-ms` of the check requests (the filter's timeout), as
    /// Envoy's async client's router adds it.
    timeout_ms: Box<[u8]>,
    path_prefix: Box<[u8]>,
    headers_to_add: Box<[(Box<[u8]>, Box<[u8]>)]>,
    upstream: Box<[Matcher]>,
    upstream_append: Box<[Matcher]>,
    /// None: every header of the answer but `host` (Envoy's default).
    client: Option<Box<[Matcher]>>,
    client_on_success: Box<[Matcher]>,
}

/// The header a 200 answer of an HTTP authorizer names the request headers to remove in
/// (comma-separated), as Envoy reads it.
pub const HEADERS_TO_REMOVE_HEADER: &[u8] = b"x-envoy-auth-headers-to-remove";
/// What an HTTP authorizer is always told of (Envoy's `toRequestMatchers` defaults).
const HTTP_ALLOWED_ALWAYS: [&[u8]; 4] = [b"authorization", b":method", b":path", b":authority"];
/// The answer's headers that go to a denied caller besides those `allowed_client_headers`
/// names (Envoy's `toClientMatchers` defaults).
const HTTP_CLIENT_ALWAYS: [&[u8]; 4] = [
    b":status",
    b"content-length",
    b"www-authenticate",
    b"location",
];

/// The network filter's counters besides the shared ones: `ext_authz.STAT_PREFIX.total`,
/// `.cx_closed` and the gauge `.active` (Envoy's `ALL_TCP_EXT_AUTHZ_STATS`).
#[derive(Clone, Copy)]
pub struct NetStatIds {
    pub total: StatId,
    pub cx_closed: StatId,
    pub active: StatId,
}

/// Envoy's counters: `STAT_PREFIXext_authz.ok`, `.denied`, `.error`, `.failure_mode_allowed`,
/// `.disabled`.
#[derive(Clone, Copy)]
pub struct ExtAuthzStatIds {
    pub ok: StatId,
    pub denied: StatId,
    pub error: StatId,
    pub failure_mode_allowed: StatId,
    pub disabled: StatId,
}

impl ExtAuthz {
    /// The HTTP filter (a Triple listener's `triple.ext_authz`): counters
    /// `STAT_PREFIXext_authz.*`.
    pub fn new(c: &config::ExtAuthz, st: &Stats) -> ExtAuthz {
        Self::build(c, st, format!("{}ext_authz", c.stat_prefix), false)
    }

    /// The network filter (a tcp listener's `ext_authz`): counters as Envoy names them,
    /// `ext_authz.STAT_PREFIX.NAME` (istiod's `tcp.`: `ext_authz.tcp..ok`).
    pub fn network(c: &config::ExtAuthz, st: &Stats) -> ExtAuthz {
        Self::build(c, st, format!("ext_authz.{}", c.stat_prefix), true)
    }

    fn build(c: &config::ExtAuthz, st: &Stats, scope: String, network: bool) -> ExtAuthz {
        let id = |name: &str| st.add(&scope, name, &[], Kind::Counter);
        // A matcher that does not compile (config validation checks it: a bug) leaves the
        // filter on for every call: more checks, never fewer.
        let enabled = c.enabled_by_shadow_policy.as_ref().and_then(|m| {
            match Matcher::new(&m.policy) {
                Ok(x) => Some((m.shadow_rules_stat_prefix.clone().into_boxed_str(), x)),
                Err(e) => {
                    tracing::error!(error = %e, "ext_authz: filter_enabled_metadata does not compile: checking every call");
                    None
                }
            }
        });
        let compile = |l: &[config::StringMatch]| -> Box<[Matcher]> {
            // Validation compiles them first: one that fails here is a bug, and matches
            // nothing.
            l.iter().filter_map(|m| Matcher::new(m).ok()).collect()
        };
        let allowed = match (&c.http, c.allowed_headers.is_empty()) {
            (None, true) => None,
            _ => Some(compile(&c.allowed_headers)),
        };
        let http = c.http.as_ref().map(|h| HttpCheck {
            timeout_ms: c.timeout_ms.to_string().into_bytes().into(),
            path_prefix: h.path_prefix.as_bytes().into(),
            headers_to_add: h
                .headers_to_add
                .iter()
                .map(|(n, v)| (n.as_bytes().into(), v.as_bytes().into()))
                .collect(),
            upstream: compile(&h.allowed_upstream_headers),
            upstream_append: compile(&h.allowed_upstream_headers_to_append),
            client: (!h.allowed_client_headers.is_empty())
                .then(|| compile(&h.allowed_client_headers)),
            client_on_success: compile(&h.allowed_client_headers_on_success),
        });
        let authority = match c.authority.as_str() {
            "" => c.cluster.as_bytes(),
            a => a.as_bytes(),
        };
        ExtAuthz {
            cluster: c.cluster.clone(),
            authority: authority.into(),
            timeout: Duration::from_millis(c.timeout_ms),
            grpc_timeout: format!("{}m", c.timeout_ms).into_bytes().into(),
            failure_mode_allow: c.failure_mode_allow,
            failure_mode_allow_header_add: c.failure_mode_allow_header_add,
            status_on_error: c.status_on_error,
            enabled,
            include_peer_certificate: c.include_peer_certificate,
            after_rbac: c.after_rbac,
            before_jwt_authn: c.before_jwt_authn,
            ids: ExtAuthzStatIds {
                ok: id("ok"),
                denied: id("denied"),
                error: id("error"),
                failure_mode_allowed: id("failure_mode_allowed"),
                disabled: id("disabled"),
            },
            net: network.then(|| NetStatIds {
                total: id("total"),
                cx_closed: id("cx_closed"),
                active: st.add(&scope, "active", &[], Kind::Gauge),
            }),
            allowed,
            http,
            body: c.with_request_body,
        }
    }

    /// Whether the authorizer is told of the request header `name` (lower case).
    pub fn allows_header(&self, name: &[u8]) -> bool {
        match &self.allowed {
            None => true,
            Some(l) => {
                (self.http.is_some() && HTTP_ALLOWED_ALWAYS.contains(&name))
                    || l.iter().any(|m| m.matches(name))
            }
        }
    }

    /// The `shadow_rules_stat_prefix` of the rbac filter whose matched shadow policy enables
    /// this one.
    pub fn shadow_prefix(&self) -> Option<&str> {
        self.enabled.as_ref().map(|(p, _)| &**p)
    }

    /// Whether a call is checked, given the shadow policy the rbac filters before this one
    /// matched (none matched: not checked, as Envoy's metadata matcher on an absent key).
    pub fn applies(&self, policy: Option<&str>) -> bool {
        match &self.enabled {
            None => true,
            Some((_, m)) => policy.is_some_and(|p| m.matches(p.as_bytes())),
        }
    }
}

/// What the CheckRequest says of the call.
pub struct Attributes<'a> {
    pub source: Option<SocketAddr>,
    /// The connection's local address (its original destination under interception).
    pub destination: Option<SocketAddr>,
    /// The caller's verified certificate (DER).
    pub peer_certificate: Option<&'a [u8]>,
    /// The listener's certificate's first URI SAN.
    pub local_uri: Option<&'a str>,
    /// `HTTP/2` or `HTTP/1.1`.
    pub protocol: &'static str,
    /// Request bytes received so far (Envoy's `size`: the stream's bytes received).
    pub size: i64,
    /// Envoy's stream id (any number: the authorizer only logs it).
    pub id: u64,
}

impl<'a> Attributes<'a> {
    /// A call's, on a connection whose caller is `peer` (none known: the fields empty).
    pub fn of_call(
        peer: Option<&'a crate::filter::rbac::ConnPeer>,
        local_uri: Option<&'a str>,
        protocol: &'static str,
        id: u64,
    ) -> Attributes<'a> {
        Attributes {
            source: peer.and_then(|p| p.source),
            destination: peer.and_then(|p| p.destination),
            peer_certificate: peer.and_then(|p| p.certificate.as_deref()),
            local_uri,
            protocol,
            size: 0,
            id,
        }
    }
}

/// The CheckRequest of a call whose headers are `headers` (pseudo-headers included), as a
/// length-prefixed gRPC message: Envoy 1.40's `CheckRequestUtils::createHttpCheck` (headers
/// by lower-case name, repeated ones joined with `,`; `path` with its query; `query` and
/// `fragment` empty).
pub fn check_request<'h>(
    a: &Attributes<'_>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    include_peer_certificate: bool,
    body: Option<Body<'_>>,
) -> Bytes {
    use auth_pb::attribute_context::{HttpRequest, Request};
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut http = HttpRequest {
        id: a.id.to_string(),
        size: a.size,
        protocol: a.protocol.to_string(),
        ..Default::default()
    };
    for (n, v) in headers {
        match n {
            b":method" => http.method = text(v),
            b":path" => http.path = text(v),
            b":authority" => http.host = text(v),
            b":scheme" => http.scheme = text(v),
            // Envoy skips a caller's own, which it uses internally.
            b"x-envoy-auth-partial-body" => continue,
            _ => {}
        }
        match http.headers.get_mut(&*String::from_utf8_lossy(n)) {
            Some(e) => {
                e.push(',');
                e.push_str(&String::from_utf8_lossy(v));
            }
            None => {
                http.headers.insert(text(n), text(v));
            }
        }
    }
    if let Some(b) = body {
        // Envoy's `size`: the body bytes received so far.
        http.size = b.buffered.len() as i64;
        // The body (as text, invalid UTF-8 replaced, or as bytes) and whether it was cut.
        match b.settings.pack_as_bytes {
            true => http.raw_body = b.sent().to_vec(),
            false => http.body = String::from_utf8_lossy(b.sent()).into_owned(),
        }
        http.headers
            .insert(text(PARTIAL_BODY_HEADER), text(b.partial()));
    }
    let (source, destination) = peers(a, include_peer_certificate, "");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let req = auth_pb::CheckRequest {
        attributes: Some(auth_pb::AttributeContext {
            source: Some(source),
            destination: Some(destination),
            request: Some(Request {
                time: Some(envoy_types::pb::google::protobuf::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                http: Some(http),
            }),
            // Envoy sends both, empty without metadata namespaces to copy.
            metadata_context: Some(Default::default()),
            route_metadata_context: Some(Default::default()),
            ..Default::default()
        }),
    };
    framed(&req)
}

// === impl HttpCheck ===

impl HttpCheck {
    /// The HTTP/1.1 check request (with the request's body when `with_request_body`, else
    /// none) for a request whose headers are
    /// `headers` (pseudo-headers included, those `allows_header` lets through): as Envoy 1.40's
    /// `RawHttpClientImpl::check` builds it from the CheckRequest: the request's method,
    /// `path_prefix` + its path, its authority as `host`, each allowed header once (repeated
    /// ones joined with `,`), `content-length: 0`, then `headers_to_add` (replacing); and what
    /// Envoy's async client adds: `x-envoy-internal: true`, `x-envoy-expected-rq-timeout-ms`.
    pub fn request<'h>(
        &self,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
        body: Option<Body<'_>>,
    ) -> Vec<u8> {
        let mut method: &[u8] = b"GET";
        let mut path: &[u8] = b"/";
        let mut host: &[u8] = b"";
        let mut fields: Vec<(&[u8], Vec<u8>)> = Vec::new();
        for (n, v) in headers {
            match n {
                b":method" => method = v,
                b":path" => path = v,
                b":authority" => host = v,
                // Envoy's HTTP/1 codec writes no other pseudo-header; content-length is its
                // own, and a caller's partial-body marker is skipped as in the CheckRequest.
                _ if n.starts_with(b":") => {}
                b"content-length" | b"host" | b"x-envoy-auth-partial-body" => {}
                b"x-envoy-internal" | b"x-envoy-expected-rq-timeout-ms" => {}
                _ if self.headers_to_add.iter().any(|(a, _)| &**a == n) => {}
                _ => match fields.iter_mut().find(|(k, _)| *k == n) {
                    Some((_, e)) => {
                        e.push(b',');
                        e.extend_from_slice(v);
                    }
                    None => fields.push((n, v.to_vec())),
                },
            }
        }
        let mut h = Vec::with_capacity(
            128 + path.len()
                + self.path_prefix.len()
                + fields
                    .iter()
                    .map(|(n, v)| n.len() + v.len() + 4)
                    .sum::<usize>(),
        );
        h.extend_from_slice(method);
        h.push(b' ');
        h.extend_from_slice(&self.path_prefix);
        h.extend_from_slice(path);
        h.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        h.extend_from_slice(host);
        let sent = body.as_ref().map_or(&[][..], |b| b.sent());
        h.extend_from_slice(format!("\r\ncontent-length: {}\r\n", sent.len()).as_bytes());
        if let Some(b) = &body {
            h.extend_from_slice(PARTIAL_BODY_HEADER);
            h.extend_from_slice(b": ");
            h.extend_from_slice(b.partial());
            h.extend_from_slice(b"\r\n");
        }
        let added = self.headers_to_add.iter().map(|(n, v)| (&**n, &**v));
        for (n, v) in fields.iter().map(|(n, v)| (*n, &v[..])).chain(added) {
            h.extend_from_slice(n);
            h.extend_from_slice(b": ");
            h.extend_from_slice(v);
            h.extend_from_slice(b"\r\n");
        }
        h.extend_from_slice(b"x-envoy-internal: true\r\nx-envoy-expected-rq-timeout-ms: ");
        h.extend_from_slice(&self.timeout_ms);
        h.extend_from_slice(b"\r\n\r\n");
        h.extend_from_slice(sent);
        h
    }

    /// The authorizer's answer (its status, header fields with lower-case names, body), as
    /// Envoy 1.40's `RawHttpClientImpl::toResponse` reads it: 5xx is an error; 200 lets the
    /// request through with the headers `allowed_upstream_headers` match set on it (those of
    /// `..._to_append` added), those named in `x-envoy-auth-headers-to-remove` removed, those
    /// `allowed_client_headers_on_success` match added to its response; any other denies it
    /// with that status, the headers `allowed_client_headers` match, and the body.
    pub fn answer(
        &self,
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
    ) -> Result<Answer, CheckError> {
        if (500..=599).contains(&status) {
            return Err(CheckError::HttpStatus(status));
        }
        let any = |l: &[Matcher], n: &[u8]| l.iter().any(|m| m.matches(n));
        if status == 200 {
            let mut set = Vec::new();
            let mut remove = Vec::new();
            let mut response_headers = Vec::new();
            for (n, v) in headers {
                if n == HEADERS_TO_REMOVE_HEADER {
                    for name in v.split(|&b| b == b',') {
                        let name = name.trim_ascii();
                        if !name.is_empty() {
                            remove.push(name.to_ascii_lowercase());
                        }
                    }
                    continue;
                }
                if any(&self.upstream, &n) {
                    set.push((HeaderAction::Set, n.clone(), v.clone()));
                }
                if any(&self.upstream_append, &n) {
                    set.push((HeaderAction::Add, n.clone(), v.clone()));
                }
                if any(&self.client_on_success, &n) {
                    response_headers.push((HeaderAction::Add, n, v));
                }
            }
            return Ok(Answer::Ok {
                headers: set,
                remove,
                response_headers,
            });
        }
        let to_client = |n: &[u8]| match &self.client {
            None => n != b"host",
            Some(l) => HTTP_CLIENT_ALWAYS.contains(&n) || any(l, n),
        };
        Ok(Answer::Denied {
            status,
            headers: headers
                .into_iter()
                .filter(|(n, _)| n != HEADERS_TO_REMOVE_HEADER && to_client(n))
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// The CheckRequest's source and destination (Envoy's `setAttrContextPeer`): addresses, the
/// peers' principals (the first URI SAN of each certificate), the caller's certificate when
/// asked for, `service` the destination's service (the network filter: the TLS server name).
fn peers(
    a: &Attributes<'_>,
    include_peer_certificate: bool,
    service: &str,
) -> (
    auth_pb::attribute_context::Peer,
    auth_pb::attribute_context::Peer,
) {
    use auth_pb::attribute_context::Peer;
    let principal = |der: Option<&[u8]>| {
        der.and_then(|d| tls::x509::uri_sans_iter(d).next())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let source = Peer {
        address: a.source.map(address),
        principal: principal(a.peer_certificate),
        certificate: match (include_peer_certificate, a.peer_certificate) {
            (true, Some(der)) => url_encoded_pem(der),
            _ => String::new(),
        },
        ..Default::default()
    };
    let destination = Peer {
        address: a.destination.map(address),
        principal: a.local_uri.unwrap_or_default().to_string(),
        service: service.to_string(),
        ..Default::default()
    };
    (source, destination)
}

/// The CheckRequest of a connection (the network filter), as a length-prefixed gRPC message:
/// Envoy 1.40's `CheckRequestUtils::createTcpCheck` (source and destination, the destination's
/// service the TLS server name the caller asked for; no request attributes).
pub fn tcp_check_request(
    a: &Attributes<'_>,
    server_name: &[u8],
    include_peer_certificate: bool,
) -> Bytes {
    let (source, destination) = peers(
        a,
        include_peer_certificate,
        &String::from_utf8_lossy(server_name),
    );
    let req = auth_pb::CheckRequest {
        attributes: Some(auth_pb::AttributeContext {
            source: Some(source),
            destination: Some(destination),
            // Envoy sends it, empty without metadata namespaces to copy.
            metadata_context: Some(Default::default()),
            ..Default::default()
        }),
    };
    framed(&req)
}

/// A message with gRPC's length prefix.
fn framed(req: &auth_pb::CheckRequest) -> Bytes {
    let len = req.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    // Cannot fail: the buffer has room for the message.
    let _ = req.encode(&mut out);
    out.freeze()
}

fn address(a: SocketAddr) -> core_pb::Address {
    core_pb::Address {
        address: Some(core_pb::address::Address::SocketAddress(
            core_pb::SocketAddress {
                address: a.ip().to_string(),
                port_specifier: Some(core_pb::socket_address::PortSpecifier::PortValue(
                    u32::from(a.port()),
                )),
                ..Default::default()
            },
        )),
    }
}

/// The certificate as PEM, URL-encoded (Envoy's `urlEncodedPemEncodedPeerCertificate`).
fn url_encoded_pem(der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for c in der.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        b64.push(B64[(n >> 18) as usize & 63]);
        b64.push(B64[(n >> 12) as usize & 63]);
        b64.push(if c.len() > 1 {
            B64[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        b64.push(if c.len() > 2 {
            B64[n as usize & 63]
        } else {
            b'='
        });
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 3 / 2);
    for b in pem.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// How a header the authorizer names is applied (Envoy's `HeaderValueOption`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderAction {
    /// A new field beside any already there (`APPEND_IF_EXISTS_OR_ADD`).
    Add,
    /// Only when absent (`ADD_IF_ABSENT`).
    AddIfAbsent,
    /// Replacing any already there (`OVERWRITE_IF_EXISTS_OR_ADD`, the deprecated
    /// `append: false`).
    Set,
    /// Replacing, only when there (`OVERWRITE_IF_EXISTS`).
    OverwriteIfExists,
    /// The deprecated `append: true`: joined to the existing value with `,`, else added.
    Append,
}

/// The authorizer's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// OK: the call goes on with `headers` applied to its request (then `remove` removed),
    /// `response_headers` added to its response.
    Ok {
        headers: Vec<(HeaderAction, Vec<u8>, Vec<u8>)>,
        remove: Vec<Vec<u8>>,
        response_headers: Vec<(HeaderAction, Vec<u8>, Vec<u8>)>,
    },
    /// Denied: answered with this HTTP status (default 403), headers and body.
    Denied {
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: String,
    },
}

/// Why a Check failed (an error: `status_on_error`, or through with `failure_mode_allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckError {
    Timeout,
    /// No connection to the cluster, the stream reset, a non-200 answer.
    Transport,
    /// The call ended with a gRPC status other than OK.
    Grpc(u32),
    /// The message does not decode, or is larger than `EXT_AUTHZ_RESPONSE_BYTES_MAX`.
    BadResponse,
    /// An HTTP authorizer answered 5xx.
    HttpStatus(u16),
}

/// Reads a Check's response body (gRPC length-prefixed; one message).
pub fn parse_response(body: &[u8]) -> Result<Answer, CheckError> {
    let [0, a, b, c, d, msg @ ..] = body else {
        return Err(CheckError::BadResponse);
    };
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if msg.len() != len {
        return Err(CheckError::BadResponse);
    }
    let r = auth_pb::CheckResponse::decode(msg).map_err(|_| CheckError::BadResponse)?;
    let ok = r.status.as_ref().is_none_or(|s| s.code == 0);
    use auth_pb::check_response::HttpResponse;
    if ok {
        let (headers, remove, response_headers) = match r.http_response {
            Some(HttpResponse::OkResponse(o)) => (
                options(&o.headers),
                o.headers_to_remove
                    .into_iter()
                    .map(|h| h.to_ascii_lowercase().into_bytes())
                    .collect(),
                options(&o.response_headers_to_add),
            ),
            _ => (Vec::new(), Vec::new(), Vec::new()),
        };
        return Ok(Answer::Ok {
            headers,
            remove,
            response_headers,
        });
    }
    Ok(match r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => Answer::Denied {
            status: d
                .status
                .map(|s| s.code)
                .filter(|&c| c > 0 && c <= 999)
                .map_or(403, |c| c as u16),
            headers: d
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.to_ascii_lowercase().into_bytes(), value(h)))
                .collect(),
            body: d.body,
        },
        _ => Answer::Denied {
            status: 403,
            headers: Vec::new(),
            body: String::new(),
        },
    })
}

fn value(h: &core_pb::HeaderValue) -> Vec<u8> {
    match h.raw_value.is_empty() {
        true => h.value.clone().into_bytes(),
        false => h.raw_value.clone(),
    }
}

#[allow(deprecated)] // `append`: Envoy 1.40 still reads it first.
fn options(l: &[core_pb::HeaderValueOption]) -> Vec<(HeaderAction, Vec<u8>, Vec<u8>)> {
    use core_pb::header_value_option::HeaderAppendAction as A;
    l.iter()
        .filter_map(|o| {
            let h = o.header.as_ref()?;
            let action = match (&o.append, A::try_from(o.append_action)) {
                (Some(b), _) if b.value => HeaderAction::Append,
                (Some(_), _) => HeaderAction::Set,
                (None, Ok(A::AppendIfExistsOrAdd) | Err(_)) => HeaderAction::Add,
                (None, Ok(A::AddIfAbsent)) => HeaderAction::AddIfAbsent,
                (None, Ok(A::OverwriteIfExistsOrAdd)) => HeaderAction::Set,
                (None, Ok(A::OverwriteIfExists)) => HeaderAction::OverwriteIfExists,
            };
            Some((action, h.key.to_ascii_lowercase().into_bytes(), value(h)))
        })
        .collect()
}

/// A connection's Check call (the network filter): its answer, filled by the upstream side of
/// the call when it ends, which the connection waits for.
#[derive(Default)]
pub struct CheckSlot {
    outcome: RefCell<Option<Result<Answer, CheckError>>>,
    done: shard::Notify,
    /// The call's stream, cancelled when the connection stops waiting before the answer.
    stream: RefCell<Option<(Weak<dyn CheckStreams>, u32)>>,
}

impl CheckSlot {
    /// The call ended with `outcome`.
    pub fn answer(&self, outcome: Result<Answer, CheckError>) {
        *self.outcome.borrow_mut() = Some(outcome);
        self.stream.borrow_mut().take();
        self.done.notify();
    }

    /// The call went out as stream `id` of `on`.
    pub fn sent(&self, on: Weak<dyn CheckStreams>, id: u32) {
        *self.stream.borrow_mut() = Some((on, id));
    }
}

impl Drop for CheckSlot {
    fn drop(&mut self) {
        // Given up (timeout, the connection gone) before the answer: the call is cancelled,
        // as Envoy's filter cancels its request.
        if let Some((w, id)) = self.stream.get_mut().take() {
            if let Some(c) = w.upgrade() {
                c.cancel_check(id);
            }
        }
    }
}

/// The HTTP/2 connection a Check call runs on (the Triple upstream pool's).
pub trait CheckStreams {
    /// Resets the Check call on stream `id`; its answer is no longer wanted.
    fn cancel_check(self: Rc<Self>, id: u32);
}

/// Sends a connection's Check calls: the Triple upstream pool of the authorizer's cluster
/// (the client the HTTP filter uses), which the network filter's room cannot name.
pub trait CheckClient {
    /// Sends `message` (a framed CheckRequest) as `Authorization/Check` with the filter's
    /// authority and timeout; the answer goes to `slot`. False: no connection for it.
    fn send(&self, x: &ExtAuthz, message: Bytes, slot: &Rc<CheckSlot>) -> bool;
}

/// Asks the gRPC authorizer through `client` with `message` (a framed CheckRequest) and waits
/// for the answer, at most the filter's timeout (then the call is cancelled).
pub async fn ask(
    x: &ExtAuthz,
    client: Option<&dyn CheckClient>,
    message: Bytes,
) -> Result<Answer, CheckError> {
    let slot = Rc::new(CheckSlot::default());
    let outcome = match client.is_some_and(|c| c.send(x, message, &slot)) {
        false => Err(CheckError::Transport),
        true => {
            shard::monoio::select! {
                _ = slot.done.wait() => slot.outcome.borrow_mut().take().unwrap_or(Err(CheckError::Transport)),
                _ = shard::monoio::time::sleep(x.timeout) => Err(CheckError::Timeout),
            }
        }
    };
    // Dropped unanswered (a timeout): the call is cancelled.
    drop(slot);
    outcome
}

/// The network filter on one connection (after the rbac filters before it allowed it and
/// enabled it): asks the authorizer and waits for the answer (the filter's timeout); whether
/// the connection goes on. Envoy's `Filter::onComplete`: OK goes on; denied closes; an error
/// (timeout, no connection, a gRPC error, an answer that does not decode) closes unless
/// `failure_mode_allow`.
pub async fn check_connection(
    x: &ExtAuthz,
    client: Option<&dyn CheckClient>,
    message: Bytes,
    stats: &ShardStats,
) -> bool {
    let Some(net) = &x.net else {
        return true;
    };
    stats.inc(net.total);
    stats.inc(net.active);
    let outcome = ask(x, client, message).await;
    stats.dec(net.active);
    let goes_on = match outcome {
        Ok(Answer::Ok { .. }) => {
            stats.inc(x.ids.ok);
            true
        }
        Ok(Answer::Denied { .. }) => {
            stats.inc(x.ids.denied);
            false
        }
        Err(e) => {
            tracing::debug!(error = ?e, "ext_authz: connection check failed");
            stats.inc(x.ids.error);
            if x.failure_mode_allow {
                stats.inc(x.ids.failure_mode_allowed);
            }
            x.failure_mode_allow
        }
    };
    if !goes_on {
        stats.inc(net.cx_closed);
    }
    goes_on
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_answers_round_trip() {
        let a = Attributes {
            source: Some("10.0.0.1:5000".parse().unwrap()),
            destination: Some("10.0.0.2:8080".parse().unwrap()),
            peer_certificate: None,
            local_uri: Some("spiffe://cluster.local/ns/foo/sa/b"),
            protocol: "HTTP/2",
            size: 0,
            id: 7,
        };
        let hs: [(&[u8], &[u8]); 5] = [
            (b":method", b"POST"),
            (b":path", b"/a.B/C?x=1"),
            (b":authority", b"svc"),
            (b"x-k", b"1"),
            (b"x-k", b"2"),
        ];
        let b = check_request(&a, hs.iter().copied(), false, None);
        let r = auth_pb::CheckRequest::decode(&b[5..]).unwrap();
        let at = r.attributes.unwrap();
        let h = at.request.unwrap().http.unwrap();
        assert_eq!(
            (h.method.as_str(), h.path.as_str(), h.host.as_str()),
            ("POST", "/a.B/C?x=1", "svc")
        );
        assert_eq!(h.headers["x-k"], "1,2");
        assert_eq!(h.headers[":path"], "/a.B/C?x=1");
        assert_eq!(
            at.destination.unwrap().principal,
            "spiffe://cluster.local/ns/foo/sa/b"
        );

        let frame = |m: &auth_pb::CheckResponse| {
            let v = m.encode_to_vec();
            let mut out = vec![0];
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(&v);
            out
        };
        let denied = auth_pb::CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            parse_response(&frame(&denied)),
            Ok(Answer::Denied {
                status: 403,
                headers: vec![],
                body: String::new()
            })
        );
        assert_eq!(
            parse_response(b"\0\0\0\0\x05ab"),
            Err(CheckError::BadResponse)
        );
    }

    /// An HTTP authorizer's check request and answers, as Envoy's `RawHttpClientImpl` makes
    /// and reads them.
    #[test]
    fn http_service_request_and_answers() {
        let sm = |exact: Option<&str>, prefix: Option<&str>| config::StringMatch {
            exact: exact.map(Into::into),
            prefix: prefix.map(Into::into),
            regex: None,
        };
        let c = config::ExtAuthz {
            cluster: "authz".into(),
            authority: String::new(),
            timeout_ms: 100,
            failure_mode_allow: false,
            failure_mode_allow_header_add: false,
            status_on_error: 403,
            enabled_by_shadow_policy: None,
            include_peer_certificate: false,
            after_rbac: 0,
            before_jwt_authn: false,
            stat_prefix: String::new(),
            allowed_headers: vec![sm(Some("x-a"), None)],
            with_request_body: None,
            http: Some(config::ExtAuthzHttp {
                path_prefix: "/check".into(),
                headers_to_add: vec![("x-add".into(), "1".into())],
                allowed_upstream_headers: vec![sm(None, Some("x-up"))],
                allowed_client_headers_on_success: vec![sm(Some("set-cookie"), None)],
                ..Default::default()
            }),
        };
        let x = ExtAuthz::new(&c, &Stats::new(1, &Default::default()).unwrap());
        let hs: [(&[u8], &[u8]); 7] = [
            (b":method", b"POST"),
            (b":path", b"/a.B/C?x=1"),
            (b":authority", b"svc"),
            (b"x-a", b"1"),
            (b"x-a", b"2"),
            (b"x-b", b"no"),
            (b"x-add", b"theirs"),
        ];
        let h = x.http.as_ref().unwrap();
        let head = h.request(hs.iter().copied().filter(|(n, _)| x.allows_header(n)), None);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /check/a.B/C?x=1 HTTP/1.1\r\nhost: svc\r\ncontent-length: 0\r\n\
             x-a: 1,2\r\nx-add: 1\r\nx-envoy-internal: true\r\n\
             x-envoy-expected-rq-timeout-ms: 100\r\n\r\n"
        );
        let fields = |l: &[(&str, &str)]| -> Vec<(Vec<u8>, Vec<u8>)> {
            l.iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect()
        };
        let ok = h.answer(
            200,
            fields(&[
                ("x-up-1", "u"),
                ("x-other", "o"),
                ("set-cookie", "s"),
                ("x-envoy-auth-headers-to-remove", "x-a, x-b"),
            ]),
            Vec::new(),
        );
        assert_eq!(
            ok,
            Ok(Answer::Ok {
                headers: vec![(HeaderAction::Set, b"x-up-1".to_vec(), b"u".to_vec())],
                remove: vec![b"x-a".to_vec(), b"x-b".to_vec()],
                response_headers: vec![(HeaderAction::Add, b"set-cookie".to_vec(), b"s".to_vec())],
            })
        );
        // No allowed_client_headers: every header but host goes to the denied caller.
        let denied = h.answer(401, fields(&[("host", "h"), ("x-d", "1")]), b"no".to_vec());
        assert_eq!(
            denied,
            Ok(Answer::Denied {
                status: 401,
                headers: fields(&[("x-d", "1")]),
                body: "no".into()
            })
        );
        assert_eq!(
            h.answer(503, Vec::new(), Vec::new()),
            Err(CheckError::HttpStatus(503))
        );
    }
}
