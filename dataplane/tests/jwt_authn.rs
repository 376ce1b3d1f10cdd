//! istiod's `envoy.filters.http.jwt_authn` (a RequestAuthentication) on an HTTP connection
//! manager, through ringside and through Envoy 1.40 given the same resources over ADS: the same
//! answers to HTTP/1.1 requests (Rust's raw client: status, body, `www-authenticate`, what the
//! upstream, Python's http.server, saw) and to grpcio calls (grpc-status, message, trailers,
//! the metadata the server saw), for no token, valid tokens (RS256, PS256, ES256; header, query
//! parameter, a second provider's header), expired, not yet valid, another issuer or audience,
//! a bad signature, an unknown `kid`, a malformed token; and the same `jwt_authn` counters.
//! The verified payload as Envoy's dynamic metadata: istiod's rbac filter on
//! `requestPrincipals` and `request.auth.claims` (a string claim, a list claim, a
//! space-delimited `scope`), and routes on a claim (a VirtualService's
//! `@request.auth.claims.group`, its `withoutHeaders` inverted), with the same answers and
//! `rbac` counters.
//! Tokens are signed here (aws-lc-rs), keys made per run.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use common::envoy::{bootstrap, load_assignment, socket, Ads, Envoy};
use common::grpc::{grpc_call, CallOpts, CallOutcome, GrpcServer};
use common::http1::Http1Server;
use common::xds::XdsServer;
use common::*;
use serde_json::{json, Value};

const ISS: &str = "https://issuer.test";
const OTHER_ISS: &str = "https://other.test";

fn b64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The two INTEGERs of a PKCS#1 RSAPublicKey (n, e), without leading zeros.
fn rsa_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let (len, at) = match b[1] {
            l if l < 0x80 => (l as usize, 2),
            l => {
                let k = (l & 0x7f) as usize;
                (
                    b[2..2 + k].iter().fold(0usize, |a, x| a << 8 | *x as usize),
                    2 + k,
                )
            }
        };
        (b[0], &b[at..at + len], &b[at + len..])
    }
    let (_, seq, _) = tlv(der);
    let (_, n, rest) = tlv(seq);
    let (_, e, _) = tlv(rest);
    let strip = |x: &[u8]| x[x.iter().position(|b| *b != 0).unwrap_or(0)..].to_vec();
    (strip(n), strip(e))
}

struct Keys {
    rsa: aws_lc_rs::rsa::KeyPair,
    ec: EcdsaKeyPair,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            rsa: aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
            ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        }
    }

    /// The RSA key (kid r1, no alg: RS* and PS*) and the EC key (kid e1).
    fn jwks(&self, rsa: bool) -> String {
        let (n, e) = rsa_components(self.rsa.public_key().as_ref());
        let p = self.ec.public_key().as_ref();
        let mut keys = vec![
            json!({"kty": "EC", "kid": "e1", "crv": "P-256", "alg": "ES256",
            "x": b64(&p[1..33]), "y": b64(&p[33..65])}),
        ];
        if rsa {
            keys.insert(
                0,
                json!({"kty": "RSA", "kid": "r1", "n": b64(&n), "e": b64(&e)}),
            );
        }
        json!({ "keys": keys }).to_string()
    }

    fn sign(&self, alg: &str, kid: &str, claims: &Value) -> String {
        let head = b64(json!({"alg": alg, "kid": kid, "typ": "JWT"})
            .to_string()
            .as_bytes());
        let body = b64(claims.to_string().as_bytes());
        let msg = format!("{head}.{body}");
        let rng = SystemRandom::new();
        let sig = match alg {
            "ES256" => self
                .ec
                .sign(&rng, msg.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            _ => {
                let pad: &'static dyn signature::RsaEncoding = match alg {
                    "PS256" => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0u8; self.rsa.public_modulus_len()];
                self.rsa.sign(pad, &rng, msg.as_bytes(), &mut sig).unwrap();
                sig
            }
        };
        format!("{msg}.{}", b64(&sig))
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str, aud: Value, exp: i64, nbf: i64) -> Value {
    let t = now() as i64;
    json!({"iss": iss, "sub": "alice", "aud": aud, "iat": t, "exp": t + exp, "nbf": t + nbf,
        "scope": "read write", "group": "admins"})
}

/// istiod's filter for two RequestAuthentication rules (its `convertToEnvoyJwtConfig`):
/// `origins-0` (default locations, token not forwarded) and `origins-1` (header `x-jwt`,
/// forwarded), each `payload_in_metadata: payload`, the requirement any of the providers or
/// all of (provider or allow_missing).
fn jwt_filter(keys: &Keys) -> Value {
    let provider = |iss: &str, jwks: String, extra: Value| {
        let mut p = json!({"issuer": iss, "audiences": ["ringside"],
            "local_jwks": {"inline_string": jwks}, "payload_in_metadata": "payload",
            "clear_route_cache": true,
            "normalize_payload_in_metadata": {"space_delimited_claims": ["permission", "scope"]}});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    let or_missing = |name: &str| json!({"requires_any": {"requirements": [{"provider_name": name}, {"allow_missing": {}}]}});
    json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            "origins-0": provider(ISS, keys.jwks(true), json!({})),
            "origins-1": provider(OTHER_ISS, keys.jwks(false), json!({"forward": true,
                "from_headers": [{"name": "x-jwt"}]}))},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "origins-0"}, {"provider_name": "origins-1"},
            {"requires_all": {"requirements": [or_missing("origins-0"), or_missing("origins-1")]}}]}}}],
        "bypass_cors_preflight": true}})
}

/// A metadata matcher on the verified payload's claim `claim` as istiod writes them
/// (`pilot/pkg/security/authz/model`): `list` (its `MetadataListValueMatcherForJWTClaims`,
/// also the route's `request.auth.claims`): a list one of whose items is `v`, or the string
/// `v`; else (`MetadataStringMatcherForJWTClaim`, `requestPrincipals`) the string.
fn claim(claim: &str, v: &str, list: bool) -> Value {
    let s = json!({"string_match": {"exact": v}});
    let value = match list {
        true => json!({"or_match": {"value_matchers": [{"list_match": {"one_of": s}}, s]}}),
        false => s,
    };
    json!({"filter": "envoy.filters.http.jwt_authn",
        "path": [{"key": "payload"}, {"key": claim}], "value": value})
}

/// istiod's ALLOW filter for an AuthorizationPolicy with two rules: anything but `/admin/`
/// for anyone, and `/admin/` for request principal `https://issuer.test/alice` whose claim
/// `group` has `admins` and whose `scope` has `write`.
fn rbac_filter() -> Value {
    let md = |m: Value| json!({"metadata": m});
    let admin = json!({"url_path": {"path": {"prefix": "/admin/"}}});
    json!({"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {
            "ns[default]-policy[jwt]-rule[0]": {
                "permissions": [{"and_rules": {"rules": [{"not_rule": admin}]}}],
                "principals": [{"and_ids": {"ids": [{"any": true}]}}]},
            "ns[default]-policy[jwt]-rule[1]": {
                "permissions": [{"and_rules": {"rules": [admin]}}],
                "principals": [{"and_ids": {"ids": [
                    {"or_ids": {"ids": [{"and_ids": {"ids": [
                        md(claim("iss", ISS, false)), md(claim("sub", "alice", false))]}}]}},
                    md(claim("group", "admins", true)),
                    md(claim("scope", "write", true))]}}]}}}}})
}

fn snapshot(
    listen: SocketAddr,
    up: SocketAddr,
    up2: SocketAddr,
    grpc: SocketAddr,
    keys: &Keys,
) -> Value {
    let by_claim = claim("group", "admins", true);
    let not_admins = {
        let mut m = by_claim.clone();
        m["invert"] = json!(true);
        m
    };
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound_0.0.0.0_80", "codec_type": "AUTO",
        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/helloworld.Greeter/"}, "route": {"cluster": "grpc"}},
            // A VirtualService on `@request.auth.claims.group`: admins to `up`, the others
            // (`withoutHeaders`) to `up2`.
            {"match": {"prefix": "/claims/", "dynamic_metadata": [by_claim]}, "route": {"cluster": "up"}},
            {"match": {"prefix": "/claims/", "dynamic_metadata": [not_admins]}, "route": {"cluster": "up2"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
        "http_filters": [jwt_filter(keys), rbac_filter(),
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    });
    json!({
        "version": "v1",
        "listeners": [{"name": "in", "address": socket(listen), "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
        "clusters": [
            {"name": "up", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": load_assignment("up", &[up])},
            {"name": "up2", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": load_assignment("up2", &[up2])},
            {"name": "grpc", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": load_assignment("grpc", &[grpc]),
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}}}]
    })
}

enum Proxy {
    Envoy(Envoy),
    Ringside(Ringside),
}

impl Proxy {
    fn start(who: &str, snapshot: &Value, listen: SocketAddr) -> (Proxy, XdsServer) {
        let xds = XdsServer::start();
        xds.put(snapshot).unwrap();
        let admin = local(free_port());
        let p = if who == "envoy" {
            Proxy::Envoy(Envoy::start(
                &bootstrap(admin, xds.addr(), Ads::Sotw, "jwt"),
                admin,
            ))
        } else {
            let cfg = format!(
                "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: jwt\n  node_cluster: t\n  mode: sotw\n  \
                 initial_fetch_timeout_ms: 5000\n",
                xds.addr()
            );
            Proxy::Ringside(Ringside::start(&cfg, admin, &["--shards", "1"]))
        };
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        wait_listening(listen);
        (p, xds)
    }

    fn stat(&self, name: &str) -> i64 {
        match self {
            Proxy::Envoy(e) => e.stat(name) as i64,
            Proxy::Ringside(r) => r.stat_value(name).unwrap_or(-1),
        }
    }
}

/// One HTTP/1.1 request on its own connection: `STATUS | content-type | www-authenticate |
/// BODY` (the upstream's line names what it saw).
fn http1(target: SocketAddr, method: &str, path: &str, headers: &[(&str, String)]) -> String {
    let mut s = std::net::TcpStream::connect(target).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: svc\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("").split(' ').nth(1).unwrap_or("?");
    let field = |name: &str| {
        head.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("-".to_string(), |(_, v)| v.trim().to_string())
    };
    format!(
        "{status} | {} | {} | {}",
        field("content-type"),
        field("www-authenticate"),
        body.trim_end()
    )
}

/// A grpcio call's outcome as two proxies' are compared: code, message, trailers (without
/// `date` and `server`), the token fields the server saw.
fn grpc(target: SocketAddr, meta: &[(&str, String)]) -> String {
    let mut opts = CallOpts::default().authority("svc").timeout_s(5.0);
    for (k, v) in meta {
        opts = opts.meta(k, v);
    }
    let o: CallOutcome = grpc_call(target, &opts);
    let mut trailers = o.trailers.clone();
    trailers.remove("date");
    // Each proxy names itself.
    trailers.remove("server");
    // What the filter decides on: the token fields (the headers Envoy's connection manager
    // adds to gRPC requests are another matter).
    let seen: Vec<String> = o
        .replies
        .iter()
        .flat_map(|r| r.metadata.clone())
        .filter(|m| m.starts_with("authorization=") || m.starts_with("x-jwt"))
        .collect();
    format!("{} {:?} {trailers:?} {seen:?}", o.code, o.details)
}

/// The filter istiod writes for a RequestAuthentication with two issuers, on an inbound HTTP
/// connection manager (`codec_type: AUTO`) routing gRPC to a grpcio server and the rest to
/// Python's http.server, through Envoy 1.40 and ringside: every request and call answered the
/// same (see the module's comment), and the same `jwt_authn.allowed` / `denied` counts.
#[test]
fn istiod_jwt_authn_on_http1_and_grpc_like_envoy() {
    let keys = Keys::new();
    let up_port = free_port();
    let _up = Http1Server::start("127.0.0.1", up_port, "up");
    let up2_port = free_port();
    let _up2 = Http1Server::start("127.0.0.1", up2_port, "up2");
    let server = GrpcServer::start(0, "G", &[]);
    let aud = || json!("ringside");
    let good = keys.sign("RS256", "r1", &claims(ISS, aud(), 3600, -10));
    let ps = keys.sign(
        "PS256",
        "r1",
        &claims(ISS, json!(["x", "https://ringside/"]), 3600, -10),
    );
    let es = keys.sign("ES256", "e1", &claims(ISS, aud(), 3600, -10));
    let expired = keys.sign("RS256", "r1", &claims(ISS, aud(), -3600, -7200));
    let early = keys.sign("RS256", "r1", &claims(ISS, aud(), 7200, 3600));
    let evil = keys.sign(
        "RS256",
        "r1",
        &claims("https://evil.test", aud(), 3600, -10),
    );
    let wrong_aud = keys.sign("RS256", "r1", &claims(ISS, json!(["other"]), 3600, -10));
    let unknown_kid = keys.sign("RS256", "r9", &claims(ISS, aud(), 3600, -10));
    // A valid token's header and payload with another token's signature.
    let forged = {
        let (hp, _) = good.rsplit_once('.').unwrap();
        let (_, sig) = expired.rsplit_once('.').unwrap();
        format!("{hp}.{sig}")
    };
    // Not alice, not an admin; an admin without `write`; alice's groups as a list.
    let bob = keys.sign("RS256", "r1", &{
        let mut c = claims(ISS, aud(), 3600, -10);
        c["sub"] = json!("bob");
        c["group"] = json!("users");
        c
    });
    let reader = keys.sign("RS256", "r1", &{
        let mut c = claims(ISS, aud(), 3600, -10);
        c["scope"] = json!("read");
        c
    });
    let listed = keys.sign("ES256", "e1", &{
        let mut c = claims(ISS, aud(), 3600, -10);
        c["group"] = json!(["users", "admins"]);
        c
    });
    let other = keys.sign("ES256", "e1", &claims(OTHER_ISS, aud(), 3600, -10));
    let other_expired = keys.sign("ES256", "e1", &claims(OTHER_ISS, aud(), -3600, -7200));
    let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
    let xjwt = |t: &str| ("x-jwt", t.to_string());
    const AUTH: &str = "/header/authorization";
    let http_cases: Vec<(&str, String, Vec<(&str, String)>)> = vec![
        ("GET", AUTH.into(), vec![]),
        ("GET", AUTH.into(), vec![bearer(&good)]),
        ("GET", AUTH.into(), vec![bearer(&ps)]),
        ("GET", AUTH.into(), vec![bearer(&es)]),
        ("GET", AUTH.into(), vec![bearer(&expired)]),
        ("GET", AUTH.into(), vec![bearer(&early)]),
        ("GET", AUTH.into(), vec![bearer(&evil)]),
        ("GET", AUTH.into(), vec![bearer(&wrong_aud)]),
        ("GET", AUTH.into(), vec![bearer(&forged)]),
        ("GET", AUTH.into(), vec![bearer(&unknown_kid)]),
        ("GET", AUTH.into(), vec![bearer("abc")]),
        (
            "GET",
            AUTH.into(),
            vec![("authorization", "Basic eHk6eg==".into())],
        ),
        ("GET", format!("/q?b=2&access_token={good}&a=1"), vec![]),
        ("GET", format!("/q?access_token={expired}"), vec![]),
        ("GET", "/header/x-jwt".into(), vec![xjwt(&other)]),
        ("GET", "/header/x-jwt".into(), vec![xjwt(&other_expired)]),
        (
            "GET",
            "/header/x-jwt".into(),
            vec![bearer(&good), xjwt(&other_expired)],
        ),
        ("GET", AUTH.into(), vec![bearer(&expired), xjwt(&other)]),
        ("GET", AUTH.into(), vec![bearer(&good), bearer(&expired)]),
        (
            "OPTIONS",
            AUTH.into(),
            vec![
                bearer(&expired),
                ("origin", "https://a.test".into()),
                ("access-control-request-method", "GET".into()),
            ],
        ),
        // The rbac filter on request principal and claims, the routes on a claim.
        ("GET", "/admin/x".into(), vec![bearer(&good)]),
        ("GET", "/admin/x".into(), vec![bearer(&listed)]),
        ("GET", "/admin/x".into(), vec![bearer(&bob)]),
        ("GET", "/admin/x".into(), vec![bearer(&reader)]),
        ("GET", "/admin/x".into(), vec![]),
        ("GET", "/admin/x".into(), vec![xjwt(&other)]),
        ("GET", "/claims/x".into(), vec![bearer(&good)]),
        ("GET", "/claims/x".into(), vec![bearer(&listed)]),
        ("GET", "/claims/x".into(), vec![bearer(&bob)]),
        ("GET", "/claims/x".into(), vec![]),
    ];
    let grpc_cases: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![bearer(&good)],
        vec![bearer(&expired)],
        vec![bearer(&wrong_aud)],
        vec![bearer(&forged)],
        vec![xjwt(&other)],
    ];
    let run = |who: &str| -> (Vec<String>, Vec<String>, Vec<i64>) {
        let listen = local(free_port());
        let (proxy, _xds) = Proxy::start(
            who,
            &snapshot(
                listen,
                local(up_port),
                local(up2_port),
                server.addr(),
                &keys,
            ),
            listen,
        );
        let h: Vec<String> = http_cases
            .iter()
            .map(|(m, p, hs)| http1(listen, m, p, hs))
            .collect();
        let g: Vec<String> = grpc_cases.iter().map(|m| grpc(listen, m)).collect();
        let stats = [
            "jwt_authn.allowed",
            "jwt_authn.denied",
            "jwt_authn.cors_preflight_bypassed",
            "rbac.allowed",
            "rbac.denied",
        ]
        .iter()
        .map(|s| proxy.stat(&format!("http.inbound_0.0.0.0_80.{s}")))
        .collect();
        eprintln!("{who}: {h:#?} {g:#?} {stats:?}");
        (h, g, stats)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    for (i, (r, e)) in ringside.0.iter().zip(&envoy.0).enumerate() {
        assert_eq!(
            r, e,
            "HTTP/1.1 request {i} {:?}: ringside (left) vs Envoy (right)",
            http_cases[i]
        );
    }
    for (i, (r, e)) in ringside.1.iter().zip(&envoy.1).enumerate() {
        assert_eq!(r, e, "gRPC call {i}: ringside (left) vs Envoy (right)");
    }
    assert_eq!(
        ringside.2, envoy.2,
        "counters, ringside (left) vs Envoy (right)"
    );
    // What the comparison rests on: tokens pass and fail, and a verified one is not forwarded.
    assert!(
        envoy.0[1].starts_with("200 ") && envoy.0[1].ends_with("authorization=none"),
        "{}",
        envoy.0[1]
    );
    assert!(
        envoy.0[4].starts_with("401 ") && envoy.0[4].contains("Jwt is expired"),
        "{}",
        envoy.0[4]
    );
    assert!(envoy.1[2].starts_with("UNAUTHENTICATED "), "{}", envoy.1[2]);
    // The rbac filter and the routes read the payload: alice passes /admin/, bob does not;
    // an admin's /claims/ request goes to `up`, bob's to `up2`.
    let at = |i: usize| envoy.0[http_cases.len() - 10 + i].as_str();
    assert!(
        at(0).starts_with("200 ") && at(2).starts_with("403 "),
        "{} {}",
        at(0),
        at(2)
    );
    assert!(
        at(6).contains("| up GET") && at(8).contains("| up2 GET"),
        "{} {}",
        at(6),
        at(8)
    );
}

/// The route of a denial made after jwt_authn passed (an rbac filter that denies every
/// request), whose response mutations the denial gets: four listeners whose provider differs
/// (claim `sub` to header `x-sub` and the token not forwarded, without `clear_route_cache`;
/// the same with it; `clear_route_cache` with the payload in metadata only; `clear_route_cache`
/// alone, the token not forwarded), routes that tell
/// the headers as they came (`authorization` present) from the headers as jwt_authn left them
/// (`x-sub` present) and from its payload (`dynamic_metadata` on `sub`), each route naming
/// itself in `x-route` on its answers. A grpcio call (the trailers-only answer's fields) and
/// an HTTP/1.1 request per listener, with a valid token and without one (jwt_authn's own
/// denial), through Envoy 1.40 and ringside given the same resources.
#[test]
fn denials_after_jwt_authn_take_the_route_envoy_takes() {
    let keys = Keys::new();
    let up_port = free_port();
    let _up = Http1Server::start("127.0.0.1", up_port, "up");
    let good = keys.sign("RS256", "r1", &claims(ISS, json!("ringside"), 3600, -10));
    const CASES: [&str; 4] = ["kept", "cleared", "payload", "bare"];
    let provider = |case: &str| {
        let mut p = json!({"issuer": ISS, "audiences": ["ringside"],
            "local_jwks": {"inline_string": keys.jwks(true)}});
        if case != "bare" {
            p["payload_in_metadata"] = json!("payload");
        }
        if case == "kept" || case == "cleared" {
            p["claim_to_headers"] = json!([{"header_name": "x-sub", "claim_name": "sub"}]);
        }
        if case != "kept" {
            p["clear_route_cache"] = json!(true);
        }
        p
    };
    let named = |m: Value, name: &str| {
        json!({"match": m, "route": {"cluster": "up", "timeout": "0s"},
            "response_headers_to_add": [{"header": {"key": "x-route", "value": name}}]})
    };
    let present = |h: &str| json!({"prefix": "/", "headers": [{"name": h, "present_match": true}]});
    let routes = json!([
        named(present("x-sub"), "claim-header"),
        named(
            json!({"prefix": "/", "dynamic_metadata": [claim("sub", "alice", false)]}),
            "claim-metadata"
        ),
        named(present("authorization"), "token"),
        named(json!({"prefix": "/"}), "default"),
    ]);
    let deny_all = json!({"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "DENY", "policies": {"all": {
            "permissions": [{"any": true}], "principals": [{"any": true}]}}}}});
    let listener = |case: &str, listen: SocketAddr| {
        let jwt = json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"p": provider(case)},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}});
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": case, "codec_type": "AUTO",
            "route_config": {"name": case, "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": routes.clone()}]},
            "http_filters": [jwt, deny_all.clone(),
                {"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        });
        json!({"name": case, "address": socket(listen), "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]})
    };
    // The answer's status and `x-route` of one HTTP/1.1 request.
    let http1_route = |target: SocketAddr, token: Option<&str>| {
        let mut s = std::net::TcpStream::connect(target).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
        let req = format!("GET /x HTTP/1.1\r\nhost: svc\r\n{auth}connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got).into_owned();
        let status = text.split(' ').nth(1).unwrap_or("?").to_string();
        let route = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("x-route"))
            .map_or("-".to_string(), |(_, v)| v.trim().to_string());
        format!("{status} {route}")
    };
    let run = |who: &str| -> Vec<String> {
        let listens: Vec<SocketAddr> = CASES.iter().map(|_| local(free_port())).collect();
        let snapshot = json!({
            "version": "v1",
            "listeners": CASES.iter().zip(&listens).map(|(c, l)| listener(c, *l)).collect::<Vec<_>>(),
            "clusters": [{"name": "up", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": load_assignment("up", &[local(up_port)])}]
        });
        let (_proxy, _xds) = Proxy::start(who, &snapshot, listens[0]);
        let mut seen = Vec::new();
        for (case, listen) in CASES.iter().zip(&listens) {
            wait_listening(*listen);
            for token in [Some(good.as_str()), None] {
                let meta: Vec<(&str, String)> = token
                    .map(|t| vec![("authorization", format!("Bearer {t}"))])
                    .unwrap_or_default();
                seen.push(format!(
                    "{case} token={}: grpc {} | http1 {}",
                    token.is_some(),
                    grpc(*listen, &meta),
                    http1_route(*listen, token)
                ));
            }
        }
        seen
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    eprintln!("envoy: {envoy:#?}\nringside: {ringside:#?}");
    // What the comparison rests on: every request denied, by rbac with a token, by jwt_authn
    // without.
    assert!(
        envoy
            .iter()
            .step_by(2)
            .all(|s| s.contains("PERMISSION_DENIED") && s.contains("| http1 403 ")),
        "{envoy:#?}"
    );
    assert!(
        envoy
            .iter()
            .skip(1)
            .step_by(2)
            .all(|s| s.contains("UNAUTHENTICATED") && s.contains("| http1 401 ")),
        "{envoy:#?}"
    );
    for (r, e) in ringside.iter().zip(&envoy) {
        assert_eq!(r, e, "ringside (left) vs Envoy (right)");
    }
}
