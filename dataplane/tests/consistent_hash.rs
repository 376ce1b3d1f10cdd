//! RING_HASH and MAGLEV clusters with route `hash_policy` (docs/governance.md#consistent-hashing)
//! through the real binary, Envoy 1.40 the oracle: both proxies get the same LDS / RDS / CDS /
//! EDS from their own test ADS server, four real upstreams per cluster with weights 1, 2, 1,
//! 3, and every request must land on the same upstream through both.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use common::envoy::*;
use common::grpc::{grpc_call, Call, CallOpts, GrpcServer};
use common::http1::Http1Server;
use common::xds::*;
use common::*;
use serde_json::{json, Value};

const WEIGHTS: [u32; 4] = [1, 2, 1, 3];

/// The HTTP/1.1 routes: (path prefix, hash_policy) for each cluster.
fn http_policies() -> Vec<(&'static str, Value)> {
    let header = |n: &str| json!({"header": {"header_name": n}});
    vec![
        ("/hdr", json!([header("x-user")])),
        ("/multi", json!([header("x-a"), header("x-b")])),
        (
            "/term",
            json!([{"header": {"header_name": "x-a"}, "terminal": true}, header("x-b")]),
        ),
        (
            "/ip",
            json!([{"connection_properties": {"source_ip": true}}]),
        ),
        ("/query", json!([{"query_parameter": {"name": "u"}}])),
        ("/cookie", json!([{"cookie": {"name": "sid"}}])),
    ]
}

fn cluster(name: &str, http2: bool, lb: Value) -> Value {
    let mut c = eds_cluster(name, http2);
    for (k, v) in lb.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn endpoints(name: &str, ups: &[SocketAddr]) -> Value {
    let eps: Vec<Value> = ups
        .iter()
        .zip(WEIGHTS)
        .map(|(a, w)| json!({"endpoint": {"address": socket(*a)}, "load_balancing_weight": w}))
        .collect();
    json!({"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]})
}

fn hcm_listener(name: &str, addr: SocketAddr, codec: &str, rds: &str) -> Value {
    let mut l = rds_listener(name, addr, rds);
    l["filter_chains"][0]["filters"][0]["typed_config"]["codec_type"] = json!(codec);
    l
}

/// gRPC listener `grpc` (routes `grpc_routes`: `x-lb: maglev` to cluster `maglev_grpc`, else
/// `ring_grpc`, both hashing `x-user`) and HTTP/1.1 listener `http` (routes `/ring/...` and
/// `/maglev/...` with the policies of [`http_policies`]). Rings: default sizes for gRPC; min
/// = max = 100 for HTTP (the cap leaves fractions to carry). Maglev: the default 65537 for
/// gRPC, 1031 for HTTP.
fn snapshot(
    version: &str,
    listen: (SocketAddr, SocketAddr),
    grpc: &[SocketAddr],
    http: &[SocketAddr],
) -> Value {
    let user = json!([{"header": {"header_name": "x-user"}}]);
    let mut http_routes = Vec::new();
    for lb in ["ring", "maglev"] {
        for (path, policy) in http_policies() {
            http_routes.push(json!({
                "match": {"prefix": format!("/{lb}{path}")},
                "route": {"cluster": format!("{lb}_http"), "hash_policy": policy, "timeout": "5s"}
            }));
        }
    }
    json!({
        "version": version,
        "listeners": [
            hcm_listener("grpc", listen.0, "HTTP2", "grpc_routes"),
            hcm_listener("http", listen.1, "AUTO", "http_routes"),
        ],
        "routes": [
            {"name": "grpc_routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/", "headers": [
                    {"name": "x-lb", "string_match": {"exact": "maglev"}}]},
                 "route": {"cluster": "maglev_grpc", "hash_policy": user, "timeout": "5s"}},
                {"match": {"prefix": "/"},
                 "route": {"cluster": "ring_grpc", "hash_policy": user, "timeout": "5s"}}
            ]}]},
            {"name": "http_routes", "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": http_routes}]}
        ],
        "clusters": [
            cluster("ring_grpc", true, json!({"lb_policy": "RING_HASH"})),
            cluster("maglev_grpc", true, json!({"lb_policy": "MAGLEV"})),
            cluster("ring_http", false, json!({"lb_policy": "RING_HASH",
                "ring_hash_lb_config": {"minimum_ring_size": "100", "maximum_ring_size": "100"}})),
            cluster("maglev_http", false, json!({"lb_policy": "MAGLEV",
                "maglev_lb_config": {"table_size": "1031"}})),
        ],
        "endpoints": [
            endpoints("ring_grpc", grpc),
            endpoints("maglev_grpc", grpc),
            endpoints("ring_http", http),
            endpoints("maglev_http", http),
        ]
    })
}

/// One HTTP/1.1 GET on a new connection from `source` (an address of 127/8), `Connection:
/// close`; the name of the upstream that answered (the first word of its body).
fn get(target: SocketAddr, source: Ipv4Addr, path: &str, headers: &[(String, String)]) -> String {
    let mut s = connect_from(source, target);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: hash.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => {
            body.split_whitespace().next().unwrap_or("").to_string()
        }
        _ => format!("error: {text}"),
    }
}

/// A TCP connection to `target` bound to `source` first (std connects from the default).
fn connect_from(source: Ipv4Addr, target: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(t) = target else {
        panic!("IPv4 only")
    };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns, handed to TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let src = sin(source, 0);
        let rc = libc::bind(fd, &src as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "bind {source}: {}", std::io::Error::last_os_error());
        let dst = sin(*t.ip(), t.port());
        let rc = libc::connect(fd, &dst as *const _ as *const libc::sockaddr, len);
        assert_eq!(
            rc,
            0,
            "connect {target}: {}",
            std::io::Error::last_os_error()
        );
        TcpStream::from_raw_fd(fd)
    }
}

const VALUES: usize = 32;

/// Where every request of every case went through the proxy at (`grpc`, `http`): one line per
/// case, the upstreams in request order.
fn landings(grpc: SocketAddr, http: SocketAddr) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for lb in ["ring", "maglev"] {
        let mut opts = CallOpts::new(Call::Unary)
            .count(VALUES as u32)
            .vary("x-user");
        if lb == "maglev" {
            opts = opts.meta("x-lb", "maglev");
        }
        let servers = |o: common::grpc::CallOutcome| match o.ok {
            true => o.servers().iter().map(|s| s.to_string()).collect(),
            false => vec![format!("error: {o:?}")],
        };
        out.push((format!("{lb} grpc x-user"), servers(grpc_call(grpc, &opts))));
        // Two x-user values per call (gRPC metadata repeated): sorted, chained.
        let opts = opts.meta("x-user", "w");
        out.push((
            format!("{lb} grpc x-user twice"),
            servers(grpc_call(grpc, &opts)),
        ));
        let lo = Ipv4Addr::LOCALHOST;
        let h = |pairs: &[(&str, String)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        let cases: Vec<(&str, Box<dyn Fn(usize) -> String + '_>)> = vec![
            (
                "hdr",
                Box::new(|i| {
                    get(
                        http,
                        lo,
                        &format!("/{lb}/hdr"),
                        &h(&[("x-user", format!("u{i}"))]),
                    )
                }),
            ),
            (
                // Two x-a values (sorted, concatenated) and x-b: rotate, xor.
                "multi",
                Box::new(|i| {
                    get(
                        http,
                        lo,
                        &format!("/{lb}/multi"),
                        &h(&[
                            ("x-a", format!("z{i}")),
                            ("x-a", format!("a{}", i % 5)),
                            ("x-b", format!("b{}", i % 3)),
                        ]),
                    )
                }),
            ),
            (
                // Terminal x-a when present (x-b then ignored), else x-b alone.
                "term",
                Box::new(|i| {
                    let mut hs = vec![("x-b", format!("b{i}"))];
                    if i % 2 == 0 {
                        hs.push(("x-a", format!("a{}", i / 2)));
                    }
                    get(http, lo, &format!("/{lb}/term"), &h(&hs))
                }),
            ),
            (
                "ip",
                Box::new(|i| {
                    get(
                        http,
                        Ipv4Addr::new(127, 0, 0, 2 + i as u8),
                        &format!("/{lb}/ip"),
                        &[],
                    )
                }),
            ),
            (
                "query",
                Box::new(|i| get(http, lo, &format!("/{lb}/query?x=1&u=q{i}&u=other"), &[])),
            ),
            (
                "cookie",
                Box::new(|i| {
                    get(
                        http,
                        lo,
                        &format!("/{lb}/cookie"),
                        &h(&[("cookie", format!("a=1; sid=\"s{i}\""))]),
                    )
                }),
            ),
        ];
        for (name, call) in cases {
            out.push((
                format!("{lb} http1 {name}"),
                (0..VALUES).map(|i| call(i)).collect(),
            ));
        }
    }
    out
}

/// Four grpcio Greeters (`g1`..`g4`) and four HTTP/1.1 servers (`h1`..`h4`).
struct Upstreams {
    _grpc: Vec<GrpcServer>,
    _http: Vec<Http1Server>,
    grpc_addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
}

impl Upstreams {
    fn start() -> Upstreams {
        let grpc: Vec<GrpcServer> = (1..=4)
            .map(|i| GrpcServer::start(0, &format!("g{i}"), &[]))
            .collect();
        let http_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
        let http = http_ports
            .iter()
            .enumerate()
            .map(|(i, &p)| Http1Server::start("127.0.0.1", p, &format!("h{}", i + 1)))
            .collect();
        Upstreams {
            grpc_addrs: grpc.iter().map(|s| s.addr()).collect(),
            http_addrs: http_ports.iter().map(|&p| local(p)).collect(),
            _grpc: grpc,
            _http: http,
        }
    }
}

/// `who` ("envoy": Envoy 1.40; else ringside with 2 shards) on a fresh xDS server serving
/// `snap` (version v1) to node `node`: returned once every type is ACKed and both of
/// `listen` accept.
fn start_proxy(
    who: &str,
    node: &str,
    snap: &Value,
    listen: (SocketAddr, SocketAddr),
) -> (XdsServer, Box<dyn std::any::Any>) {
    let xds = XdsServer::start();
    xds.put(snap).unwrap();
    let proxy = envoy_or_ringside(who, xds.addr(), node, "2");
    for ty in [CDS, EDS, LDS, RDS] {
        let ack = xds.wait_ack(ty, "v1");
        assert_eq!(ack["ack"], true, "{who} {ty}: {ack}");
    }
    wait_listening(listen.0);
    wait_listening(listen.1);
    std::thread::sleep(Duration::from_millis(300));
    (xds, proxy)
}

/// Envoy 1.40 and ringside (2 shards) given the same resources: each of [`VALUES`] header
/// values (and source addresses, query parameters, cookies) lands on the same upstream
/// through both, per cluster (RING_HASH with default and capped sizes, MAGLEV with the
/// default and a small table) and per hash policy (header, several headers, terminal,
/// source_ip, query_parameter, cookie), over gRPC (grpcio) and HTTP/1.1. Then what ringside
/// refuses, and what both refuse.
#[test]
fn consistent_hashing_lands_where_envoy_does() {
    let ups = Upstreams::start();
    let (grpc_ups, http_ups) = (&ups.grpc_addrs[..], &ups.http_addrs[..]);
    let run = |who: &str| -> Vec<(String, Vec<String>)> {
        let listen = (local(free_port()), local(free_port()));
        let (xds, _proxy) = start_proxy(
            who,
            "hash",
            &snapshot("v1", listen, grpc_ups, http_ups),
            listen,
        );
        let seen = landings(listen.0, listen.1);
        // Refused: MURMUR_HASH_2 (ringside only), a Maglev table size that is not prime
        // (both), filter_state hashing and a header's regex_rewrite (ringside only).
        let bad: [(&str, Value, bool, &str); 4] = [
            (
                CDS,
                json!({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"hash_function": "MURMUR_HASH_2"}}),
                false,
                "MURMUR_HASH_2",
            ),
            (
                CDS,
                json!({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": "1000"}}),
                true,
                "prime",
            ),
            (
                RDS,
                json!([{"filter_state": {"key": "k"}}]),
                false,
                "filter_state",
            ),
            (
                RDS,
                json!([{"header": {"header_name": "x-a", "regex_rewrite": {
                    "pattern": {"regex": "a"}, "substitution": "b"}}}]),
                false,
                "regex_rewrite",
            ),
        ];
        for (k, (ty, change, envoy_refuses, why)) in bad.into_iter().enumerate() {
            let version = format!("bad{k}");
            let mut snap = snapshot(&version, listen, grpc_ups, http_ups);
            if ty == CDS {
                snap["clusters"][2] = cluster("ring_http", false, change);
            } else {
                snap["routes"][1]["virtual_hosts"][0]["routes"][0]["route"]["hash_policy"] = change;
            }
            xds.put(&snap).unwrap();
            if who == "ringside" || envoy_refuses {
                let nack = xds.wait_nack(ty, &version);
                let message = nack["error_detail"]["message"].as_str().unwrap_or("");
                assert!(message.contains(why), "{who} {version}: {message}");
            } else {
                xds.wait_ack(ty, &version);
            }
        }
        seen
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    let mut wrong = Vec::new();
    for ((case, e), (_, r)) in envoy.iter().zip(&ringside) {
        eprintln!("{case}:\n  envoy    {e:?}\n  ringside {r:?}");
        assert!(
            e.iter().all(|s| !s.starts_with("error")),
            "{case}: Envoy, the oracle, failed: {e:?}"
        );
        // The case spreads (a test that every value passes trivially would not catch a
        // wrong ring): at least 3 of the 4 upstreams.
        let mut distinct: Vec<&String> = e.iter().collect();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() >= 3, "{case}: Envoy used only {distinct:?}");
        if e != r {
            let differ = e.iter().zip(r).filter(|(a, b)| a != b).count();
            wrong.push(format!("{case}: {differ} of {VALUES} differ"));
        }
    }
    assert!(
        wrong.is_empty(),
        "ringside lands elsewhere than Envoy: {wrong:#?}"
    );
}

/// Routes of [`cookie_snapshot`]: (path prefix, cluster, hash_policy, more of the route).
fn cookie_routes() -> Vec<(&'static str, &'static str, Value, Value)> {
    let full = json!({"cookie": {"name": "sid", "ttl": "3600s", "path": "/p",
        "attributes": [{"name": "SameSite", "value": "Strict"}, {"name": "Secure"}]}});
    vec![
        ("/gen", "ring_http", json!([full.clone()]), json!({})),
        // ttl 0: no Max-Age; two generating policies around a header one.
        (
            "/zero",
            "maglev_http",
            json!([{"cookie": {"name": "a", "ttl": "0s"}},
                   {"header": {"header_name": "x-user"}},
                   {"cookie": {"name": "b", "ttl": "20s", "path": "/"}}]),
            json!({}),
        ),
        // A cluster that does not hash: Envoy evaluates no policy, sets no cookie.
        ("/rr", "rr_http", json!([full.clone()]), json!({})),
        // The route's response mutations come after the router's cookie.
        (
            "/mut",
            "ring_http",
            json!([full.clone()]),
            json!({"response_headers_to_add": [{"header": {"key": "set-cookie", "value": "after=1"},
                "append_action": "APPEND_IF_EXISTS_OR_ADD"}]}),
        ),
        (
            "/gone",
            "ring_http",
            json!([full.clone()]),
            json!({"response_headers_to_remove": ["set-cookie"]}),
        ),
        // Each try picks a host again: a cookie per try (the upstream answers 503).
        (
            "/status/",
            "ring_http",
            json!([full]),
            json!({"retry_policy": {"retry_on": "5xx", "num_retries": 2}}),
        ),
    ]
}

fn cookie_snapshot(
    listen: (SocketAddr, SocketAddr),
    grpc: &[SocketAddr],
    http: &[SocketAddr],
) -> Value {
    let mut http_routes = Vec::new();
    for (path, cluster, policy, more) in cookie_routes() {
        let mut r = json!({"match": {"prefix": path},
            "route": {"cluster": cluster, "hash_policy": policy, "timeout": "5s"}});
        for (k, v) in more.as_object().unwrap() {
            match k.as_str() {
                "retry_policy" => r["route"][k] = v.clone(),
                _ => r[k] = v.clone(),
            }
        }
        http_routes.push(r);
    }
    let grpc_policy = json!([{"cookie": {"name": "sid", "ttl": "60s"}}]);
    json!({
        "version": "v1",
        "listeners": [
            hcm_listener("grpc", listen.0, "HTTP2", "grpc_routes"),
            hcm_listener("http", listen.1, "AUTO", "http_routes"),
        ],
        "routes": [
            {"name": "grpc_routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"},
                 "route": {"cluster": "ring_grpc", "hash_policy": grpc_policy, "timeout": "5s"}}
            ]}]},
            {"name": "http_routes", "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": http_routes}]}
        ],
        "clusters": [
            cluster("ring_grpc", true, json!({"lb_policy": "RING_HASH"})),
            cluster("ring_http", false, json!({"lb_policy": "RING_HASH"})),
            cluster("maglev_http", false, json!({"lb_policy": "MAGLEV"})),
            cluster("rr_http", false, json!({})),
        ],
        "endpoints": [
            endpoints("ring_grpc", grpc),
            endpoints("ring_http", http),
            endpoints("maglev_http", http),
            endpoints("rr_http", http),
        ]
    })
}

/// One HTTP/1.1 GET on a new connection: the upstream that answered (or the status when not
/// 200) and the response's `set-cookie` values, each generated value checked against Envoy's
/// recipe for this connection (xxHash64 of `CLIENT_ADDRESS` then `PROXY_ADDRESS` as text, 16
/// hex digits) and written `<v>`; and that value.
fn cookie_get(
    target: SocketAddr,
    path: &str,
    cookie: Option<&str>,
) -> (String, Vec<String>, Option<String>) {
    let mut s = connect_from(Ipv4Addr::LOCALHOST, target);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let recipe = format!("{}{}", s.local_addr().unwrap(), target);
    let want = format!(
        "{:016x}",
        dataplane::cluster::ring::xxhash64(recipe.as_bytes())
    );
    let mut req =
        format!("GET {path} HTTP/1.1\r\nhost: hash.test\r\nconnection: close\r\nx-user: u1\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("cookie: {c}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let landed = match head.starts_with("HTTP/1.1 200") {
        true => body.split_whitespace().next().unwrap_or("").to_string(),
        false => head.lines().next().unwrap_or("").to_string(),
    };
    let mut cookies = Vec::new();
    let mut value = None;
    for line in head.lines().skip(1) {
        let Some((n, v)) = line.split_once(": ") else {
            continue;
        };
        if n.eq_ignore_ascii_case("set-cookie") {
            cookies.push(match v.split_once("=\"") {
                Some((name, rest)) if rest.starts_with(&want) => {
                    value = Some(want.clone());
                    format!("{name}=\"<v>{}", &rest[16..])
                }
                _ => v.to_string(),
            });
        }
    }
    (landed, cookies, value)
}

/// Envoy 1.40 and ringside given the same routes with cookie `hash_policy` entries that have
/// a `ttl` (istiod's DestinationRule `consistentHash.httpCookie` with a ttl): a request without
/// the cookie hashes the value Envoy generates from its connection, and the response carries
/// Envoy's `set-cookie` byte for byte (value, Max-Age, Path, attributes, HttpOnly; one per
/// generating policy, one set per try; none for a cluster that does not hash; before the
/// route's response mutations), over HTTP/1.1 and gRPC. The generated value, sent back as the
/// cookie, lands where the request without it did, through both proxies (and Envoy's values
/// through ringside land where Envoy put them).
#[test]
fn generated_cookies_are_envoys() {
    let ups = Upstreams::start();
    let (grpc_ups, http_ups) = (&ups.grpc_addrs[..], &ups.http_addrs[..]);
    type Seen = (Vec<String>, Vec<(String, String)>);
    let run = |who: &str, theirs: &[(String, String)]| -> Seen {
        let listen = (local(free_port()), local(free_port()));
        let (_xds, _proxy) = start_proxy(
            who,
            "cookie",
            &cookie_snapshot(listen, grpc_ups, http_ups),
            listen,
        );
        let mut lines = Vec::new();
        let mut values = Vec::new();
        for (path, ..) in cookie_routes() {
            let path = match path {
                "/status/" => "/status/503".to_string(),
                p => format!("{p}/x"),
            };
            let mut spread = Vec::new();
            for _ in 0..12 {
                let (landed, cookies, value) = cookie_get(listen.1, &path, None);
                lines.push(format!("{path}: {cookies:?}"));
                spread.push(landed.clone());
                // The generated value sent back lands where the request without it did.
                let back = match (path.as_str(), &value) {
                    ("/gen/x", Some(v)) => Some(format!("sid={v}")),
                    ("/zero/x", Some(v)) => Some(format!("a={v}; b=\"{v}\"")),
                    _ => None,
                };
                if let Some(c) = back {
                    let (again, sets, _) = cookie_get(listen.1, &path, Some(&c));
                    lines.push(format!(
                        "{path} sent back: same upstream {}, cookies {sets:?}",
                        again == landed
                    ));
                }
                if let (Some(v), "/gen/x") = (value, path.as_str()) {
                    values.push((v, landed));
                }
            }
            if path == "/gen/x" || path == "/zero/x" {
                spread.sort();
                spread.dedup();
                lines.push(format!("{path} spreads: {}", spread.len() >= 2));
            }
        }
        // Envoy's generated values through this proxy land where Envoy put them.
        for (v, up) in theirs {
            let (landed, _, _) = cookie_get(listen.1, "/gen/x", Some(&format!("sid={v}")));
            assert_eq!(&landed, up, "{who}: Envoy's cookie {v}");
        }
        // gRPC: the call's response metadata carries the cookie; sent back, it lands on the
        // same server.
        for _ in 0..6 {
            let o = grpc_call(listen.0, &CallOpts::new(Call::Unary));
            assert!(o.ok, "{who}: {o:?}");
            let sc = o.initial.get("set-cookie").cloned().unwrap_or_default();
            let v = sc
                .strip_prefix("sid=\"")
                .map(|r| r[..16.min(r.len())].to_string())
                .unwrap_or_default();
            assert!(
                v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()),
                "{who}: {sc}"
            );
            lines.push(format!("grpc: {}", sc.replace(&v, "<v>")));
            let again = grpc_call(
                listen.0,
                &CallOpts::new(Call::Unary).meta("cookie", &format!("sid={v}")),
            );
            lines.push(format!(
                "grpc cookie sent back lands alike: {}",
                again.servers() == o.servers()
            ));
        }
        (lines, values)
    };
    let (envoy, envoy_values) = run("envoy", &[]);
    assert!(!envoy_values.is_empty());
    let (ringside, _) = run("ringside", &envoy_values);
    eprintln!("envoy: {envoy:#?}\nringside: {ringside:#?}");
    // Envoy did what the test says (the cases exercise the behaviour).
    let want = "\"sid=\\\"<v>\\\"; Max-Age=3600; Path=/p; SameSite=Strict; Secure; HttpOnly\"";
    assert!(
        envoy.iter().any(|l| l == &format!("/gen/x: [{want}]")),
        "{envoy:#?}"
    );
    assert!(
        envoy
            .iter()
            .any(|l| l == &format!("/status/503: [{want}, {want}, {want}]")),
        "{envoy:#?}"
    );
    assert!(envoy.iter().any(|l| l == "/rr/x: []"), "{envoy:#?}");
    assert!(envoy.iter().all(|l| !l.contains("false")), "{envoy:#?}");
    assert_eq!(ringside, envoy);
}
