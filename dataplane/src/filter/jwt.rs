//! JWT authentication: a Triple listener's `jwt_authn` (Envoy's `envoy.filters.http.jwt_authn`,
//! istiod's RequestAuthentication), checked once per call before its rbac filters and routing.
//! The providers' JWKS are parsed once per config (here, when the snapshot is built); a call is
//! verified only when it carries a token. The requirement tree is evaluated as Envoy's
//! verifiers do (`verifier.cc`, `authenticator.cc`): the same statuses and the same texts
//! (google/jwt_verify_lib's `getStatusString`), so a caller gets what Envoy would answer
//! (docs/security.md#jwt-authentication).

use std::collections::BTreeMap;

use aws_lc_rs::{hmac, signature};
use serde_json::{Map, Value};

use crate::config;
use crate::route::{Matcher, RouteError};
use crate::stats::{Kind, ShardStats, StatId, Stats};

/// The request as the filter reads it: every field of its header list (pseudo-headers too).
pub trait Headers {
    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8]));
}

/// jwt_verify_lib's `Status`, the ones this verifier can reach; `text` is Envoy's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    JwtMissed,
    JwtNotYetValid,
    JwtExpired,
    JwtBadFormat,
    JwtHeaderParseErrorBadBase64,
    JwtHeaderParseErrorBadJson,
    JwtHeaderBadAlg,
    JwtHeaderNotImplementedAlg,
    JwtHeaderBadKid,
    JwtPayloadParseErrorBadBase64,
    JwtEd25519SignatureWrongLength,
    JwtPayloadParseErrorBadJson,
    JwtPayloadParseErrorIssNotString,
    JwtPayloadParseErrorSubNotString,
    JwtPayloadParseErrorIatNotInteger,
    JwtPayloadParseErrorIatOutOfRange,
    JwtPayloadParseErrorNbfNotInteger,
    JwtPayloadParseErrorNbfOutOfRange,
    JwtPayloadParseErrorExpNotInteger,
    JwtPayloadParseErrorExpOutOfRange,
    JwtPayloadParseErrorJtiNotString,
    JwtPayloadParseErrorAudNotString,
    JwtSignatureParseErrorBadBase64,
    JwtUnknownIssuer,
    JwtAudienceNotAllowed,
    JwtVerificationFail,
    JwksNoValidKeys,
    JwksKidAlgMismatch,
}

impl Status {
    /// google/jwt_verify_lib's `getStatusString`: the body of Envoy's answer.
    pub fn text(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "OK",
            JwtMissed => "Jwt is missing",
            JwtNotYetValid => "Jwt not yet valid",
            JwtExpired => "Jwt is expired",
            JwtBadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
            JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
            JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            JwtHeaderBadKid => "Jwt header [kid] field is not a string",
            JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
            JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
            JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
            JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
            JwtPayloadParseErrorIatNotInteger => "Jwt payload [iat] field is not an integer",
            JwtPayloadParseErrorIatOutOfRange => {
                "Jwt payload [iat] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
            JwtPayloadParseErrorNbfOutOfRange => {
                "Jwt payload [nbf] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
            JwtPayloadParseErrorExpOutOfRange => {
                "Jwt payload [exp] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
            JwtPayloadParseErrorAudNotString => {
                "Jwt payload [aud] field is not a string or string list"
            }
            JwtSignatureParseErrorBadBase64 => "Jwt signature is an invalid Base64url encoded",
            JwtUnknownIssuer => "Jwt issuer is not configured",
            JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
            JwtVerificationFail => "Jwt verification fails",
            JwksNoValidKeys => "Jwks doesn't have any valid public key",
            JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
        }
    }

    /// Envoy's answer: 403 for a token of another audience, else 401.
    pub fn http_code(self) -> u16 {
        match self {
            Status::JwtAudienceNotAllowed => 403,
            _ => 401,
        }
    }
}

/// A change to the request the filter makes (in order).
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// Drop every field of this name.
    Remove(Box<[u8]>),
    /// Add a field.
    Add(Box<[u8]>, Vec<u8>),
    /// Drop this query parameter from `:path` (a token taken from it, not forwarded).
    RemoveParam(Box<str>),
    /// No change: the filter clears the route Envoy's connection manager resolved before it
    /// ran (a provider's `clear_route_cache`), so what comes after routes the request as the
    /// filter left it.
    ClearRouteCache,
}

/// What a passed request carries on: the changes to make, and the verified payloads by
/// `payload_in_metadata` key (the dynamic metadata of `envoy.filters.http.jwt_authn`).
#[derive(Debug, Default)]
pub struct Passed {
    pub ops: Vec<Op>,
    pub metadata: Map<String, Value>,
}

impl Passed {
    /// Whether the filter cleared the route resolved before it ran ([`Op::ClearRouteCache`]).
    pub fn clears_route_cache(&self) -> bool {
        self.ops.contains(&Op::ClearRouteCache)
    }

    /// Whether the filter changes the request.
    pub fn changes(&self) -> bool {
        self.ops.iter().any(|o| *o != Op::ClearRouteCache)
    }
}

/// A failed request: its status (the answer's body) and HTTP code.
#[derive(Debug, PartialEq, Eq)]
pub struct Failed {
    pub status: Status,
    /// Envoy's `strip_failure_response`: no body and no `www-authenticate`.
    pub stripped: bool,
}

impl Failed {
    /// `www-authenticate` for a request to `realm` (`x-forwarded-proto://host/path`, the path
    /// cut at 256 bytes): `Bearer realm="..."`, `, error="invalid_token"` unless the token is
    /// missing. None when stripped.
    pub fn www_authenticate(&self, proto: &[u8], host: &[u8], path: &[u8]) -> Option<Vec<u8>> {
        if self.stripped {
            return None;
        }
        let mut v = b"Bearer realm=\"".to_vec();
        v.extend_from_slice(proto);
        v.extend_from_slice(b"://");
        v.extend_from_slice(host);
        v.extend_from_slice(&path[..path.len().min(256)]);
        v.push(b'"');
        if self.status != Status::JwtMissed {
            v.extend_from_slice(b", error=\"invalid_token\"");
        }
        Some(v)
    }

    /// The answer's body.
    pub fn body(&self) -> &'static str {
        if self.stripped {
            ""
        } else {
            self.status.text()
        }
    }
}

#[derive(Clone, Copy)]
struct JwtStatIds {
    allowed: StatId,
    denied: StatId,
    cors_bypassed: StatId,
}

/// A listener's compiled filter.
pub struct JwtAuthn {
    providers: Box<[Provider]>,
    rules: Box<[Rule]>,
    bypass_cors: bool,
    strip: bool,
    ids: JwtStatIds,
}

struct Rule {
    path: Matcher,
    verifier: Verifier,
}

struct Provider {
    issuer: String,
    audiences: Audiences,
    /// None: the JWKS has no usable key.
    keys: Option<Box<[Key]>>,
    forward: bool,
    payload_key: String,
    space_delimited: Box<[String]>,
    forward_payload_header: Option<(Box<[u8]>, bool)>,
    claim_to_headers: Box<[(Box<[u8]>, String)]>,
    clear_route_cache: bool,
    skew: u64,
}

/// `aud` values a provider or requirement accepts (`http(s)://` and a trailing `/` dropped);
/// empty: any.
struct Audiences(Box<[String]>);

impl Audiences {
    fn new(l: &[String]) -> Audiences {
        Audiences(l.iter().map(|a| sanitize_audience(a).to_string()).collect())
    }

    fn allows(&self, jwt: &[String]) -> bool {
        self.0.is_empty()
            || jwt
                .iter()
                .any(|a| self.0.iter().any(|c| c == sanitize_audience(a)))
    }
}

/// jwt_verify_lib's `sanitizeAudience`.
fn sanitize_audience(a: &str) -> &str {
    if a.is_empty() {
        return a;
    }
    let a = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    a.strip_suffix('/').unwrap_or(a)
}

/// The issuers of the providers that name one token location; empty issuer: any.
#[derive(Default, Clone)]
struct Issuers {
    any: bool,
    list: Vec<String>,
}

impl Issuers {
    fn add(&mut self, iss: &str) {
        if iss.is_empty() {
            self.any = true;
        } else if !self.list.iter().any(|i| i == iss) {
            self.list.push(iss.to_string());
        }
    }

    fn allows(&self, iss: &str) -> bool {
        self.any || self.list.iter().any(|i| i == iss)
    }
}

/// Where some providers look for tokens (Envoy's `Extractor`).
#[derive(Default)]
struct Extractor {
    /// By header name and value prefix, in Envoy's (sorted) order.
    headers: Vec<(Box<[u8]>, Box<[u8]>, Issuers)>,
    params: Vec<(String, Issuers)>,
    /// Headers the providers set (`forward_payload_header`, `claim_to_headers`): dropped from
    /// the request before anything else.
    sanitize: Vec<Box<[u8]>>,
}

enum Location {
    Header(Box<[u8]>),
    Param(String),
}

struct Token<'a> {
    value: Vec<u8>,
    issuers: &'a Issuers,
    location: Location,
}

impl Extractor {
    fn new(providers: &[&config::JwtProvider]) -> Extractor {
        let mut headers: BTreeMap<(Vec<u8>, Vec<u8>), Issuers> = BTreeMap::new();
        let mut params: BTreeMap<String, Issuers> = BTreeMap::new();
        let mut sanitize = Vec::new();
        for p in providers {
            for h in &p.from_headers {
                headers
                    .entry((
                        h.name.as_bytes().to_vec(),
                        h.value_prefix.as_bytes().to_vec(),
                    ))
                    .or_default()
                    .add(&p.issuer);
            }
            for q in &p.from_params {
                params.entry(q.clone()).or_default().add(&p.issuer);
            }
            if p.from_headers.is_empty() && p.from_params.is_empty() {
                headers
                    .entry((b"authorization".to_vec(), b"Bearer ".to_vec()))
                    .or_default()
                    .add(&p.issuer);
                params
                    .entry("access_token".into())
                    .or_default()
                    .add(&p.issuer);
            }
            if !p.forward_payload_header.is_empty() {
                sanitize.push(p.forward_payload_header.as_bytes().into());
            }
            for c in &p.claim_to_headers {
                sanitize.push(c.header_name.as_bytes().into());
            }
        }
        Extractor {
            headers: headers
                .into_iter()
                .map(|((n, p), i)| (n.into(), p.into(), i))
                .collect(),
            params: params.into_iter().collect(),
            sanitize,
        }
    }

    /// The request's tokens, in Envoy's order (headers, then query parameters).
    fn extract<'a>(&'a self, req: &dyn Headers) -> Vec<Token<'a>> {
        let mut out = Vec::new();
        if self.headers.is_empty() && self.params.is_empty() {
            return out;
        }
        let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
        let mut path: Option<Vec<u8>> = None;
        // Collected once: the header list is small.
        let mut owned: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        req.each(&mut |n, v| {
            if n == b":path" {
                path = Some(v.to_vec());
            } else if self.headers.iter().any(|(h, _, _)| &**h == n) {
                owned.push((n.to_vec(), v.to_vec()));
            }
        });
        // Envoy keeps `authorization` as an inline header: its values are one, joined by `,`
        // (so two Bearer tokens are one malformed token there).
        let mut joined: Option<Vec<u8>> = None;
        for (n, v) in owned.iter().filter(|(n, _)| n == b"authorization") {
            let _ = n;
            match &mut joined {
                Some(j) => {
                    j.push(b',');
                    j.extend_from_slice(v);
                }
                None => joined = Some(v.clone()),
            }
        }
        owned.retain(|(n, _)| n != b"authorization");
        if let Some(j) = joined {
            owned.push((b"authorization".to_vec(), j));
        }
        fields.extend(owned.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        for (name, prefix, issuers) in &self.headers {
            for (_, v) in fields.iter().filter(|(n, _)| n == &&**name) {
                let value = if prefix.is_empty() {
                    *v
                } else {
                    match find(v, prefix) {
                        Some(pos) => extract_jwt(v, pos + prefix.len()),
                        None => continue,
                    }
                };
                out.push(Token {
                    value: value.to_vec(),
                    issuers,
                    location: Location::Header(name.clone()),
                });
            }
        }
        if let (false, Some(path)) = (self.params.is_empty(), path) {
            let query = query_params(&path);
            for (name, issuers) in &self.params {
                if let Some((_, v)) = query.iter().find(|(k, _)| k.as_bytes() == name.as_bytes()) {
                    out.push(Token {
                        value: v.as_bytes().to_vec(),
                        issuers,
                        location: Location::Param(name.clone()),
                    });
                }
            }
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Envoy's `extractJWT`: from the first base64url character or dot at or after `after` to the
/// end (the value as it is when there is none).
fn extract_jwt(v: &[u8], after: usize) -> &[u8] {
    let legal = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    match v.iter().skip(after).position(legal) {
        Some(i) => &v[after + i..],
        None => v,
    }
}

/// The query of `path` (before any `#`), each pair percent-decoded (and `+` as a space), as
/// Envoy's `parseAndDecodeQueryString`.
pub fn query_params(path: &[u8]) -> Vec<(String, String)> {
    let Some(q) = path.iter().position(|b| *b == b'?') else {
        return Vec::new();
    };
    let q = &path[q + 1..];
    let q = &q[..q.iter().position(|b| *b == b'#').unwrap_or(q.len())];
    q.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(i) => (url_decode(&p[..i]), url_decode(&p[i + 1..])),
            None => (url_decode(p), String::new()),
        })
        .collect()
}

fn url_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        match s[i] {
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `:path` with query parameter `name` taken out, as Envoy rebuilds it (the other parameters
/// decoded, by name, `?k=v&...`; the fragment dropped).
pub fn path_without_param(path: &[u8], name: &str) -> Vec<u8> {
    let cut = path
        .iter()
        .position(|b| *b == b'?' || *b == b'#')
        .unwrap_or(path.len());
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in query_params(path) {
        if k != name {
            params.entry(k).or_default().push(v);
        }
    }
    let mut out = path[..cut].to_vec();
    let mut delim = b'?';
    for (k, vs) in &params {
        for v in vs {
            out.push(delim);
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            delim = b'&';
        }
    }
    out
}

/// A requirement, compiled (Envoy's verifier tree).
enum Verifier {
    /// The provider's tokens must all be valid (a missing one fails).
    Provider {
        index: usize,
        audiences: Option<Audiences>,
        extractor: Extractor,
    },
    /// `allow_missing` (the sibling providers' locations): no token passes, a bad one fails.
    AllowMissing(Extractor),
    /// `allow_missing_or_failed`: everything passes.
    AllowFailed(Extractor),
    Any(Box<[Verifier]>),
    All(Box<[Verifier]>),
    AllowAll,
}

impl JwtAuthn {
    /// Validated config: a rule that does not compile is a bug; it is logged and every call
    /// the filter checks fails.
    pub fn new(c: &config::JwtAuthn, st: &Stats) -> JwtAuthn {
        Self::compile(c, st).unwrap_or_else(|e| {
            tracing::error!(error = %e, "jwt_authn rules do not compile: failing every call");
            JwtAuthn {
                providers: Box::new([]),
                rules: Box::new([Rule {
                    path: Matcher::new(&config::StringMatch {
                        prefix: Some(String::new()),
                        ..Default::default()
                    })
                    .expect("an empty prefix compiles"),
                    verifier: Verifier::Any(Box::new([])),
                }]),
                bypass_cors: false,
                strip: false,
                ids: JwtStatIds {
                    allowed: st.add("jwt_authn", "allowed", &[], Kind::Counter),
                    denied: st.add("jwt_authn", "denied", &[], Kind::Counter),
                    cors_bypassed: st.add(
                        "jwt_authn",
                        "cors_preflight_bypassed",
                        &[],
                        Kind::Counter,
                    ),
                },
            }
        })
    }

    fn compile(c: &config::JwtAuthn, st: &Stats) -> Result<JwtAuthn, RouteError> {
        let scope = c.stat_prefix.trim_end_matches('.');
        let ids = JwtStatIds {
            allowed: st.add(scope, "allowed", &[], Kind::Counter),
            denied: st.add(scope, "denied", &[], Kind::Counter),
            cors_bypassed: st.add(scope, "cors_preflight_bypassed", &[], Kind::Counter),
        };
        let providers: Box<[Provider]> = c.providers.iter().map(Provider::new).collect();
        let rules = c
            .rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    path: Matcher::new(&r.path)?,
                    verifier: match &r.requires {
                        Some(q) => Verifier::new(q, c, &[]),
                        None => Verifier::AllowAll,
                    },
                })
            })
            .collect::<Result<_, RouteError>>()?;
        Ok(JwtAuthn {
            providers,
            rules,
            bypass_cors: c.bypass_cors_preflight,
            strip: c.strip_failure_response,
            ids,
        })
    }

    /// Checks a call: `Ok` with what to change and its payloads, or the failure to answer.
    /// Counted as Envoy counts (`allowed`, `denied`, `cors_preflight_bypassed`).
    pub fn check(&self, req: &dyn Headers, stats: &ShardStats) -> Result<Passed, Failed> {
        let mut method = None;
        let mut path = None;
        let mut cors = (false, false);
        req.each(&mut |n, v| match n {
            b":method" => method = Some(v == b"OPTIONS"),
            b":path" => path = Some(url_path(v).to_vec()),
            b"origin" if !v.is_empty() => cors.0 = true,
            b"access-control-request-method" if !v.is_empty() => cors.1 = true,
            _ => {}
        });
        let mut out = Passed::default();
        if self.bypass_cors && method == Some(true) && cors == (true, true) {
            stats.inc(self.ids.cors_bypassed);
            stats.inc(self.ids.allowed);
            return Ok(out);
        }
        let path = path.unwrap_or_default();
        let Some(rule) = self.rules.iter().find(|r| r.path.matches(&path)) else {
            stats.inc(self.ids.allowed);
            return Ok(out);
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut payloads = Map::new();
        let status = self.verify(&rule.verifier, req, now, &mut out.ops, &mut payloads);
        if status == Status::Ok {
            stats.inc(self.ids.allowed);
            out.metadata = payloads;
            Ok(out)
        } else {
            stats.inc(self.ids.denied);
            Err(Failed {
                status,
                stripped: self.strip,
            })
        }
    }

    fn verify(
        &self,
        v: &Verifier,
        req: &dyn Headers,
        now: u64,
        ops: &mut Vec<Op>,
        payloads: &mut Map<String, Value>,
    ) -> Status {
        let mut auth =
            |e: &Extractor, fixed: Option<(usize, Option<&Audiences>)>, failed, missing| {
                ops.extend(e.sanitize.iter().map(|h| Op::Remove(h.clone())));
                let tokens = e.extract(req);
                self.authenticate(tokens, fixed, failed, missing, now, ops, payloads)
            };
        match v {
            Verifier::Provider {
                index,
                audiences,
                extractor,
            } => auth(extractor, Some((*index, audiences.as_ref())), false, false),
            Verifier::AllowMissing(e) => auth(e, None, false, true),
            Verifier::AllowFailed(e) => auth(e, None, true, true),
            Verifier::AllowAll => Status::Ok,
            // Done at the first that passes; else the last one's status.
            Verifier::Any(l) => {
                // (Never empty in a validated config; empty fails.)
                let mut last = Status::JwtVerificationFail;
                for c in l.iter() {
                    last = self.verify(c, req, now, ops, payloads);
                    if last == Status::Ok {
                        break;
                    }
                }
                last
            }
            // Done at the first that fails.
            Verifier::All(l) => {
                for c in l.iter() {
                    let s = self.verify(c, req, now, ops, payloads);
                    if s != Status::Ok {
                        return s;
                    }
                }
                Status::Ok
            }
        }
    }

    /// Envoy's `AuthenticatorImpl`: the tokens from the last, each must be valid unless
    /// missing or failing is allowed.
    #[allow(clippy::too_many_arguments)]
    fn authenticate(
        &self,
        mut tokens: Vec<Token<'_>>,
        fixed: Option<(usize, Option<&Audiences>)>,
        allow_failed: bool,
        allow_missing: bool,
        now: u64,
        ops: &mut Vec<Op>,
        payloads: &mut Map<String, Value>,
    ) -> Status {
        let finish = |s: Status| {
            if allow_failed || (allow_missing && s == Status::JwtMissed) {
                Status::Ok
            } else {
                s
            }
        };
        let mut last = Status::JwtMissed;
        while let Some(tok) = tokens.pop() {
            last = self.verify_token(&tok, fixed, now, ops, payloads);
            if last != Status::Ok && !allow_failed && !allow_missing {
                break;
            }
        }
        finish(last)
    }

    fn verify_token(
        &self,
        tok: &Token<'_>,
        fixed: Option<(usize, Option<&Audiences>)>,
        now: u64,
        ops: &mut Vec<Op>,
        payloads: &mut Map<String, Value>,
    ) -> Status {
        let jwt = match Jwt::parse(&tok.value) {
            Ok(j) => j,
            Err(s) => return s,
        };
        if !tok.issuers.allows(&jwt.iss) {
            return Status::JwtUnknownIssuer;
        }
        let index = match fixed {
            Some((i, _)) => Some(i),
            // The first provider of that issuer, else the first without one.
            None => self
                .providers
                .iter()
                .position(|p| p.issuer == jwt.iss)
                .or_else(|| self.providers.iter().position(|p| p.issuer.is_empty())),
        };
        let Some(p) = index.map(|i| &self.providers[i]) else {
            return Status::JwtUnknownIssuer;
        };
        if now + p.skew < jwt.nbf {
            return Status::JwtNotYetValid;
        }
        if jwt.exp != 0 && now > jwt.exp.saturating_add(p.skew) {
            return Status::JwtExpired;
        }
        let audiences = fixed.and_then(|(_, a)| a).unwrap_or(&p.audiences);
        if !audiences.allows(&jwt.aud) {
            return Status::JwtAudienceNotAllowed;
        }
        let Some(keys) = &p.keys else {
            return Status::JwksNoValidKeys;
        };
        let s = jwt.verify(keys);
        if s != Status::Ok {
            return s;
        }
        // Good: Envoy's `handleGoodJwt`.
        if let Some((h, pad)) = &p.forward_payload_header {
            let mut v = jwt.payload_b64.to_vec();
            if *pad {
                while v.len() % 4 != 0 {
                    v.push(b'=');
                }
            }
            ops.push(Op::Add(h.clone(), v));
        }
        let mut header_added = false;
        for (h, claim) in p.claim_to_headers.iter() {
            if let Some(v) = claim_text(jwt.payload.get(claim.as_str())) {
                ops.push(Op::Add(h.clone(), v.into_bytes()));
                header_added = true;
            }
        }
        // The route cleared as Envoy 1.40 clears it: once a claim went to a header or the
        // payload to metadata, not for a token only removed (tests/jwt_authn.rs,
        // `denials_after_jwt_authn_take_the_route_envoy_takes`).
        if p.clear_route_cache && (header_added || !p.payload_key.is_empty()) {
            ops.push(Op::ClearRouteCache);
        }
        if !p.forward {
            ops.push(match &tok.location {
                Location::Header(h) => Op::Remove(h.clone()),
                Location::Param(n) => Op::RemoveParam(n.as_str().into()),
            });
        }
        if !p.payload_key.is_empty() {
            let mut payload = jwt.payload;
            for c in p.space_delimited.iter() {
                if let Some(Value::String(s)) = payload.get(c.as_str()) {
                    let words = s
                        .split(' ')
                        .filter(|w| !w.is_empty())
                        .map(|w| Value::String(w.to_string()))
                        .collect();
                    payload.insert(c.clone(), Value::Array(words));
                }
            }
            payloads.insert(p.payload_key.clone(), Value::Object(payload));
        }
        Status::Ok
    }
}

/// A claim as a header value (Envoy: strings, numbers, booleans; others none).
fn claim_text(v: Option<&Value>) -> Option<String> {
    let s = match v? {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            let d = n.as_f64()?;
            if d >= 0.0 && d < u64::MAX as f64 && d.fract() == 0.0 {
                (d as u64).to_string()
            } else {
                format!("{d:.6}")
            }
        }
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

/// `:path` without its query and fragment.
fn url_path(p: &[u8]) -> &[u8] {
    match p.iter().position(|b| *b == b'?' || *b == b'#') {
        Some(i) => &p[..i],
        None => p,
    }
}

impl Verifier {
    fn new(q: &config::JwtRequirement, c: &config::JwtAuthn, siblings: &[&str]) -> Verifier {
        use config::JwtRequirement as R;
        let by_name = |n: &str| c.providers.iter().position(|p| p.name == n);
        let with = |names: &[&str]| {
            let l: Vec<&config::JwtProvider> = names
                .iter()
                .filter_map(|n| c.providers.iter().find(|p| p.name == *n))
                .collect();
            Extractor::new(&l)
        };
        match q {
            // Validated config: the provider exists.
            R::ProviderName(n) => match by_name(n) {
                Some(index) => Verifier::Provider {
                    index,
                    audiences: None,
                    extractor: Extractor::new(&[&c.providers[index]]),
                },
                None => Verifier::Any(Box::new([])),
            },
            R::ProviderAndAudiences {
                provider_name,
                audiences,
            } => match by_name(provider_name) {
                Some(index) => Verifier::Provider {
                    index,
                    audiences: (!audiences.is_empty()).then(|| Audiences::new(audiences)),
                    extractor: Extractor::new(&[&c.providers[index]]),
                },
                None => Verifier::Any(Box::new([])),
            },
            R::AllowMissing(_) => Verifier::AllowMissing(with(siblings)),
            R::AllowMissingOrFailed(_) => Verifier::AllowFailed(with(siblings)),
            R::RequiresAll(l) => {
                Verifier::All(l.iter().map(|r| Verifier::new(r, c, &[])).collect())
            }
            R::RequiresAny(l) => {
                // The regular ones in order, then one bypass (allow_missing_or_failed over
                // allow_missing) with the providers they name.
                let names: Vec<&str> = l
                    .iter()
                    .filter_map(|r| match r {
                        R::ProviderName(n) => Some(n.as_str()),
                        R::ProviderAndAudiences { provider_name, .. } => {
                            Some(provider_name.as_str())
                        }
                        _ => None,
                    })
                    .collect();
                let mut out: Vec<Verifier> = l
                    .iter()
                    .filter(|r| !matches!(r, R::AllowMissing(_) | R::AllowMissingOrFailed(_)))
                    .map(|r| Verifier::new(r, c, &[]))
                    .collect();
                let bypass = l
                    .iter()
                    .find(|r| matches!(r, R::AllowMissingOrFailed(_)))
                    .or_else(|| l.iter().find(|r| matches!(r, R::AllowMissing(_))));
                if let Some(b) = bypass {
                    out.push(Verifier::new(b, c, &names));
                }
                Verifier::Any(out.into())
            }
        }
    }
}

impl Provider {
    fn new(p: &config::JwtProvider) -> Provider {
        Provider {
            issuer: p.issuer.clone(),
            audiences: Audiences::new(&p.audiences),
            keys: parse_jwks(&p.local_jwks),
            forward: p.forward,
            payload_key: p.payload_in_metadata.clone(),
            space_delimited: p.space_delimited_claims.clone().into(),
            forward_payload_header: (!p.forward_payload_header.is_empty()).then(|| {
                (
                    p.forward_payload_header.as_bytes().into(),
                    p.pad_forward_payload_header,
                )
            }),
            claim_to_headers: p
                .claim_to_headers
                .iter()
                .map(|c| (c.header_name.as_bytes().into(), c.claim_name.clone()))
                .collect(),
            clear_route_cache: p.clear_route_cache,
            skew: match p.clock_skew_seconds {
                0 => 60,
                s => u64::from(s),
            },
        }
    }
}

// === tokens ===

/// A parsed token (jwt_verify_lib's `Jwt::parseFromString`).
struct Jwt<'a> {
    /// `header.payload`, what is signed.
    signed: &'a [u8],
    payload_b64: &'a [u8],
    alg: String,
    kid: String,
    iss: String,
    nbf: u64,
    exp: u64,
    aud: Vec<String>,
    payload: Map<String, Value>,
    signature: Vec<u8>,
}

const ALGS: [&str; 13] = [
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
    "PS384", "PS512", "EdDSA",
];

impl<'a> Jwt<'a> {
    fn parse(t: &'a [u8]) -> Result<Jwt<'a>, Status> {
        let parts: Vec<&[u8]> = t.split(|b| *b == b'.').filter(|p| !p.is_empty()).collect();
        let [h, p, s] = parts.as_slice() else {
            return Err(Status::JwtBadFormat);
        };
        let header = b64url(h).ok_or(Status::JwtHeaderParseErrorBadBase64)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header).map_err(|_| Status::JwtHeaderParseErrorBadJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(Status::JwtHeaderBadAlg),
        };
        if !ALGS.contains(&alg.as_str()) {
            return Err(Status::JwtHeaderNotImplementedAlg);
        }
        let kid = match header.get("kid") {
            None => String::new(),
            Some(Value::String(k)) => k.clone(),
            Some(_) => return Err(Status::JwtHeaderBadKid),
        };
        let payload = b64url(p).ok_or(Status::JwtPayloadParseErrorBadBase64)?;
        let payload: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| Status::JwtPayloadParseErrorBadJson)?;
        let string = |k: &str, bad: Status| match payload.get(k) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad),
        };
        let iss = string("iss", Status::JwtPayloadParseErrorIssNotString)?;
        string("sub", Status::JwtPayloadParseErrorSubNotString)?;
        let number = |k: &str, bad: Status, range: Status| match payload.get(k) {
            None => Ok(0),
            Some(Value::Number(n)) => {
                let d = n.as_f64().unwrap_or(-1.0);
                if d < 0.0 || d >= u64::MAX as f64 {
                    Err(range)
                } else {
                    Ok(d as u64)
                }
            }
            Some(_) => Err(bad),
        };
        number(
            "iat",
            Status::JwtPayloadParseErrorIatNotInteger,
            Status::JwtPayloadParseErrorIatOutOfRange,
        )?;
        let nbf = number(
            "nbf",
            Status::JwtPayloadParseErrorNbfNotInteger,
            Status::JwtPayloadParseErrorNbfOutOfRange,
        )?;
        let exp = number(
            "exp",
            Status::JwtPayloadParseErrorExpNotInteger,
            Status::JwtPayloadParseErrorExpOutOfRange,
        )?;
        string("jti", Status::JwtPayloadParseErrorJtiNotString)?;
        let aud = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(l)) => l
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
            Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
        };
        let signature = b64url(s).ok_or(Status::JwtSignatureParseErrorBadBase64)?;
        // What is signed: the token's first two parts as sent.
        let signed_len = h.len() + 1 + p.len();
        let start = h.as_ptr() as usize - t.as_ptr() as usize;
        let signed = if &t[start + h.len() + 1..start + signed_len] == *p {
            &t[start..start + signed_len]
        } else {
            // Empty parts between them (`a..b.c`): never the case for three parts, but safe.
            return Err(Status::JwtBadFormat);
        };
        Ok(Jwt {
            signed,
            payload_b64: p,
            alg,
            kid,
            iss,
            nbf,
            exp,
            aud,
            payload,
            signature,
        })
    }

    /// jwt_verify_lib's `verifyJwtWithoutTimeChecking`.
    fn verify(&self, keys: &[Key]) -> Status {
        let mut matched = false;
        for k in keys {
            if !self.kid.is_empty() && !k.kid.is_empty() && k.kid != self.kid {
                continue;
            }
            if !k.alg.is_empty() && k.alg != self.alg {
                continue;
            }
            matched = true;
            match &k.kind {
                KeyKind::Ed25519(x) => {
                    if self.signature.len() != 64 {
                        return Status::JwtEd25519SignatureWrongLength;
                    }
                    let key = signature::UnparsedPublicKey::new(&signature::ED25519, x);
                    if key.verify(self.signed, &self.signature).is_ok() {
                        return Status::Ok;
                    }
                }
                kind => {
                    if kind.verifies(&self.alg, self.signed, &self.signature) {
                        return Status::Ok;
                    }
                }
            }
        }
        if matched {
            Status::JwtVerificationFail
        } else {
            Status::JwksKidAlgMismatch
        }
    }
}

/// Base64url, with or without padding (absl's `WebSafeBase64Unescape`).
fn b64url(s: &[u8]) -> Option<Vec<u8>> {
    let s = match s.iter().position(|b| *b == b'=') {
        Some(i) if s[i..].iter().all(|b| *b == b'=') && s[i..].len() <= 2 && s.len() % 4 == 0 => {
            &s[..i]
        }
        Some(_) => return None,
        None => s,
    };
    if s.len() % 4 == 1 {
        return None;
    }
    let val = |b: u8| -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            n |= val(*b)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

// === keys ===

struct Key {
    kid: String,
    alg: String,
    kind: KeyKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

enum KeyKind {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point (`04 || x || y`).
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Oct(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl KeyKind {
    /// Whether `sig` signs `msg` under this key with the token's `alg` (the digest chosen by
    /// `alg` as jwt_verify_lib chooses it: SHA-256 unless it names another).
    fn verifies(&self, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            KeyKind::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    "RS256" => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
                    "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                    "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                    // Not RS* or PS*: jwt_verify_lib tries no RSA verification.
                    _ => return false,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            KeyKind::Ec { curve, point } => {
                let size = match curve {
                    Curve::P256 => 32,
                    Curve::P384 => 48,
                    Curve::P521 => 66,
                };
                let a: &'static signature::EcdsaVerificationAlgorithm = match (curve, alg) {
                    (Curve::P256, "ES384" | "ES512") => return false,
                    (Curve::P256, _) => &signature::ECDSA_P256_SHA256_FIXED,
                    (Curve::P384, "ES384") => &signature::ECDSA_P384_SHA384_FIXED,
                    (Curve::P384, _) => return false,
                    (Curve::P521, "ES384") => &signature::ECDSA_P521_SHA384_FIXED,
                    (Curve::P521, "ES512") => &signature::ECDSA_P521_SHA512_FIXED,
                    (Curve::P521, _) => &signature::ECDSA_P521_SHA256_FIXED,
                };
                // jwt_verify_lib: r the first half, s the second; each as a number.
                let half = sig.len() / 2;
                let (r, s) = (&sig[..half], &sig[half..half * 2]);
                let strip = |x: &[u8]| -> Option<Vec<u8>> {
                    let i = x.iter().position(|b| *b != 0).unwrap_or(x.len());
                    let x = &x[i..];
                    (x.len() <= size).then(|| {
                        let mut v = vec![0u8; size - x.len()];
                        v.extend_from_slice(x);
                        v
                    })
                };
                let (Some(mut r), Some(s)) = (strip(r), strip(s)) else {
                    return false;
                };
                r.extend_from_slice(&s);
                signature::UnparsedPublicKey::new(a, point)
                    .verify(msg, &r)
                    .is_ok()
            }
            KeyKind::Oct(k) => {
                let a = match alg {
                    "HS384" => hmac::HMAC_SHA384,
                    "HS512" => hmac::HMAC_SHA512,
                    _ => hmac::HMAC_SHA256,
                };
                hmac::verify(&hmac::Key::new(a, k), msg, sig).is_ok()
            }
            KeyKind::Ed25519(_) => false,
        }
    }
}

/// A JWKS's usable keys (jwt_verify_lib's `createFromJwksCore`: a key that does not parse is
/// skipped); none: None.
fn parse_jwks(s: &str) -> Option<Box<[Key]>> {
    let v: Map<String, Value> = serde_json::from_str(s).ok()?;
    let Some(Value::Array(keys)) = v.get("keys") else {
        return None;
    };
    let keys: Box<[Key]> = keys
        .iter()
        .filter_map(|k| k.as_object().and_then(parse_jwk))
        .collect();
    (!keys.is_empty()).then_some(keys)
}

fn parse_jwk(k: &Map<String, Value>) -> Option<Key> {
    let text = |f: &str| match k.get(f) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let kty = text("kty")?;
    let kid = text("kid").unwrap_or_default();
    let alg = text("alg").unwrap_or_default();
    let kind = match kty.as_str() {
        "RSA" => {
            if !alg.is_empty() && !(alg.starts_with("RS") || alg.starts_with("PS")) {
                return None;
            }
            let n = b64url(text("n")?.as_bytes())?;
            let e = b64url(text("e")?.as_bytes())?;
            let strip = |x: Vec<u8>| {
                let i = x.iter().position(|b| *b != 0).unwrap_or(x.len());
                x[i..].to_vec()
            };
            let (n, e) = (strip(n), strip(e));
            if e != [3] && e != [1, 0, 1] || n.is_empty() || n.last().is_some_and(|b| b & 1 == 0) {
                return None;
            }
            KeyKind::Rsa { n, e }
        }
        "EC" => {
            if !alg.is_empty() && !alg.starts_with("ES") {
                return None;
            }
            let crv = match k.get("crv") {
                None => String::new(),
                Some(Value::String(c)) => c.clone(),
                Some(_) => return None,
            };
            let curve = match (alg.as_str(), crv.as_str()) {
                ("ES256", "P-256" | "") | ("", "P-256" | "") => Curve::P256,
                ("ES384", "P-384" | "") | ("", "P-384") => Curve::P384,
                ("ES512", "P-521" | "") | ("", "P-521") => Curve::P521,
                _ => return None,
            };
            let size = match curve {
                Curve::P256 => 32,
                Curve::P384 => 48,
                Curve::P521 => 66,
            };
            let pad = |x: Vec<u8>| -> Option<Vec<u8>> {
                let i = x.iter().position(|b| *b != 0).unwrap_or(x.len());
                let x = &x[i..];
                (x.len() <= size).then(|| {
                    let mut v = vec![0u8; size - x.len()];
                    v.extend_from_slice(x);
                    v
                })
            };
            let x = pad(b64url(text("x")?.as_bytes())?)?;
            let y = pad(b64url(text("y")?.as_bytes())?)?;
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            // The point must be on the curve.
            let a: &'static signature::EcdsaVerificationAlgorithm = match curve {
                Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                Curve::P521 => &signature::ECDSA_P521_SHA512_FIXED,
            };
            signature::ParsedPublicKey::new(a, &point).ok()?;
            KeyKind::Ec { curve, point }
        }
        "oct" => {
            if !alg.is_empty() && !matches!(alg.as_str(), "HS256" | "HS384" | "HS512") {
                return None;
            }
            let k = b64url(text("k")?.as_bytes()).filter(|k| !k.is_empty())?;
            KeyKind::Oct(k)
        }
        "OKP" => {
            if !alg.is_empty() && alg != "EdDSA" || text("crv")? != "Ed25519" {
                return None;
            }
            let x = b64url(text("x")?.as_bytes()).filter(|x| x.len() == 32)?;
            KeyKind::Ed25519(x)
        }
        _ => return None,
    };
    Some(Key { kid, alg, kind })
}

// === dynamic metadata ===

/// A call's dynamic metadata: `envoy.filters.http.jwt_authn`'s (payloads by
/// `payload_in_metadata` key); no other filter writes any.
pub type Metadata = Map<String, Value>;

/// A compiled `MetadataMatcher` (RBAC `metadata`, route `dynamic_metadata`).
pub struct MetaMatcher {
    /// The filter is `envoy.filters.http.jwt_authn` (any other: the value is absent).
    jwt: bool,
    path: Box<[String]>,
    value: ValueMatcher,
    invert: bool,
}

enum ValueMatcher {
    String(Matcher),
    Present(bool),
    Null,
    Bool(bool),
    List(Box<ValueMatcher>),
    Or(Box<[ValueMatcher]>),
}

impl MetaMatcher {
    pub fn new(m: &config::MetadataMatch) -> Result<MetaMatcher, RouteError> {
        Ok(MetaMatcher {
            jwt: m.filter == config::JWT_AUTHN_FILTER,
            path: m.path.clone().into(),
            value: ValueMatcher::new(&m.value)?,
            invert: m.invert,
        })
    }

    /// Envoy's `MetadataMatcher::match`: the value at the path (absent when a key is missing
    /// or a step is not a struct) matched, then inverted.
    pub fn matches(&self, md: Option<&Metadata>) -> bool {
        let mut v: Option<&Value> = None;
        if let (true, Some(md)) = (self.jwt, md) {
            let mut map = Some(md);
            for k in self.path.iter() {
                v = map.and_then(|m| m.get(k.as_str()));
                map = v.and_then(Value::as_object);
            }
        }
        self.value.matches(v) ^ self.invert
    }
}

impl ValueMatcher {
    fn new(v: &config::ValueMatch) -> Result<ValueMatcher, RouteError> {
        use config::ValueMatch as V;
        Ok(match v {
            V::String(m) => ValueMatcher::String(Matcher::new(m)?),
            V::Present(b) => ValueMatcher::Present(*b),
            V::Null => ValueMatcher::Null,
            V::Bool(b) => ValueMatcher::Bool(*b),
            V::List(v) => ValueMatcher::List(Box::new(ValueMatcher::new(v)?)),
            V::Or(l) => {
                ValueMatcher::Or(l.iter().map(ValueMatcher::new).collect::<Result<_, _>>()?)
            }
        })
    }

    /// Recursion bounded by the validated nesting limit.
    fn matches(&self, v: Option<&Value>) -> bool {
        match self {
            ValueMatcher::String(m) => {
                matches!(v, Some(Value::String(s)) if m.matches(s.as_bytes()))
            }
            ValueMatcher::Present(p) => *p && v.is_some(),
            ValueMatcher::Null => matches!(v, Some(Value::Null)),
            ValueMatcher::Bool(b) => v == Some(&Value::Bool(*b)),
            ValueMatcher::List(m) => match v {
                Some(Value::Array(l)) => l.iter().any(|x| m.matches(Some(x))),
                _ => false,
            },
            ValueMatcher::Or(l) => l.iter().any(|m| m.matches(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_and_queries_as_envoy_reads_them() {
        assert_eq!(b64url(b"aGk").unwrap(), b"hi");
        assert_eq!(b64url(b"aGk=").unwrap(), b"hi");
        assert_eq!(b64url(b"_-8").unwrap(), [0xff, 0xef]);
        assert!(b64url(b"a+b/").is_none());
        assert!(b64url(b"a").is_none());
        assert_eq!(
            query_params(b"/p?a=1&access_token=x%2By&b#f"),
            [
                ("a".to_string(), "1".to_string()),
                ("access_token".into(), "x+y".into()),
                ("b".into(), "".into())
            ]
        );
        assert_eq!(
            path_without_param(b"/p?z=1&access_token=t&a=2", "access_token"),
            b"/p?a=2&z=1"
        );
        assert_eq!(
            path_without_param(b"/p?access_token=t", "access_token"),
            b"/p"
        );
        assert_eq!(extract_jwt(b"Bearer  abc.def", 7), b"abc.def");
        assert_eq!(sanitize_audience("https://a.b/"), "a.b");
    }

    #[test]
    fn bad_tokens_get_jwt_verify_libs_statuses() {
        let s = |t: &[u8]| Jwt::parse(t).err();
        assert_eq!(s(b"abc"), Some(Status::JwtBadFormat));
        assert_eq!(s(b"a..b"), Some(Status::JwtBadFormat));
        assert_eq!(s(b"!.b.c"), Some(Status::JwtHeaderParseErrorBadBase64));
        // {"alg":"none"}
        assert_eq!(
            s(b"eyJhbGciOiJub25lIn0.e30.c2ln"),
            Some(Status::JwtHeaderNotImplementedAlg)
        );
        // {"alg":"RS256"} . {"exp":"x"}
        assert_eq!(
            s(b"eyJhbGciOiJSUzI1NiJ9.eyJleHAiOiJ4In0.c2ln"),
            Some(Status::JwtPayloadParseErrorExpNotInteger)
        );
        assert!(Jwt::parse(b"eyJhbGciOiJSUzI1NiJ9.e30.c2ln").is_ok());
    }
}
