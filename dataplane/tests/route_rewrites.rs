//! Route rewrites (`prefix_rewrite`, `regex_rewrite`, `host_rewrite_literal`,
//! `host_rewrite_header`, `host_rewrite_path_regex`, weighted clusters' `host_rewrite_literal`,
//! `append_x_forwarded_host`, `x-envoy-original-path` and the router's
//! `suppress_envoy_headers`) against Envoy 1.40 given the same LDS/RDS/CDS/EDS: an upstream that
//! echoes the `:path` / `:authority` it got (and the headers a rewrite adds) is called by
//! grpcio (HTTP/2) and by Python's http.client (HTTP/1.1) through both; every answer must be
//! the same.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use codec::h2::frame::{self, flag, kind};
use common::envoy::*;
use common::grpc::{grpc_call, CallOpts};
use common::h2::Peer;
use common::http1::http1_outcomes;
use common::xds::*;
use common::*;
use serde_json::{json, Value};

/// What the echo upstream says of one request.
fn echo_line(get: &dyn Fn(&str) -> Option<String>, path: &str, authority: &str) -> String {
    let or = |k: &str| get(k).unwrap_or_else(|| "-".into());
    format!(
        "path={path} authority={authority} xeop={} xfh={} xeoh={}",
        or("x-envoy-original-path"),
        or("x-forwarded-host"),
        or("x-envoy-original-host"),
    )
}

/// An upstream speaking h2c (prior knowledge) and HTTP/1.1 on one port (told apart by the
/// HTTP/2 preface): every request is answered with [`echo_line`], over gRPC as a HelloReply
/// (`message`, `server` = "echo"), over HTTP/1.1 as a text body.
fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut first = [0u8; 24];
                let Ok(n) = s.peek(&mut first) else { return };
                if n >= 3 && &first[..3] == b"PRI" {
                    serve_h2(s)
                } else {
                    serve_h1(s)
                }
            });
        }
    });
    addr
}

fn serve_h2(s: TcpStream) {
    let mut p = Peer::new(s);
    p.s.set_read_timeout(None).unwrap();
    let mut preface = [0u8; 24];
    if p.s.read_exact(&mut preface).is_err() || &preface != frame::PREFACE {
        return;
    }
    let mut o = Vec::new();
    frame::write_settings(&mut o, &[]);
    p.write(&o);
    let mut heads: std::collections::HashMap<u32, Vec<(String, String)>> = Default::default();
    while let Some(f) = p.read_frame() {
        if p.handle_control(&f) {
            continue;
        }
        let sid = f.h.stream;
        let ended = f.h.flags & flag::END_STREAM != 0;
        match f.h.kind {
            kind::HEADERS => {
                let frag = frame::headers_fragment(f.h.flags, &f.payload)
                    .unwrap()
                    .to_vec();
                let fields = p.decode(&frag);
                heads.entry(sid).or_insert(fields);
            }
            kind::DATA => p.ack_data(sid, f.payload.len()),
            _ => continue,
        }
        if !ended {
            continue;
        }
        let Some(h) = heads.remove(&sid) else {
            continue;
        };
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let line = echo_line(
            &get,
            &get(":path").unwrap_or_default(),
            &get(":authority").unwrap_or_default(),
        );
        // HelloReply { message = 1, server = 3 }.
        let mut reply = vec![0x0a];
        let mut n = line.len();
        while n >= 0x80 {
            reply.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        reply.push(n as u8);
        reply.extend_from_slice(line.as_bytes());
        reply.extend_from_slice(&[0x1a, 4]);
        reply.extend_from_slice(b"echo");
        p.headers(
            sid,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        drop(p.data(sid, &common::h2::grpc_msg(&reply), false));
        p.headers(sid, &[("grpc-status", "0")], true);
    }
}

fn serve_h1(s: TcpStream) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut start = String::new();
        if r.read_line(&mut start).unwrap_or(0) == 0 {
            return;
        }
        let mut fields: Vec<(String, String)> = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                fields.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let len: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let path = start.split(' ').nth(1).unwrap_or("").to_string();
        let line = echo_line(&get, &path, &get("host").unwrap_or_default()) + "\n";
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            line.len()
        );
        if w.write_all(head.as_bytes()).is_err() || w.write_all(line.as_bytes()).is_err() {
            return;
        }
    }
}

/// The routes of one virtual host, to `cluster`: one per rewrite kind (see the test).
fn routes(cluster: &str) -> Value {
    let to = |extra: Value| {
        let mut a = json!({"cluster": cluster});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    let re = |regex: &str, substitution: &str| json!({"pattern": {"regex": regex}, "substitution": substitution});
    json!([
        {"match": {"prefix": "/pfx/"}, "route": to(json!({"prefix_rewrite": "/new/"}))},
        // The trailing-slash subtlety of Envoy's docs: "/strip/x" becomes "//x".
        {"match": {"prefix": "/strip"}, "route": to(json!({"prefix_rewrite": "/"}))},
        {"match": {"path": "/exact/p"}, "route": to(json!({"prefix_rewrite": "/e2"}))},
        {"match": {"path_separated_prefix": "/sep"}, "route": to(json!({"prefix_rewrite": "/s2"}))},
        // A regex route's prefix_rewrite replaces the whole path (query kept).
        {"match": {"safe_regex": {"regex": "/re/[a-z]+/.*"}},
            "route": to(json!({"prefix_rewrite": "/whole"}))},
        {"match": {"prefix": "/rx/"},
            "route": to(json!({"regex_rewrite": re("^/rx/([^/]+)/(.*)$", "/\\2/\\1")}))},
        {"match": {"prefix": "/host/"}, "route": to(json!({"host_rewrite_literal": "literal.example"}))},
        {"match": {"prefix": "/hdr/"}, "route": to(json!({"host_rewrite_header": "x-new-host"}))},
        {"match": {"prefix": "/hpr/"},
            "route": to(json!({"host_rewrite_path_regex": re("^/hpr/([^/]+).*$", "\\1.svc")}))},
        {"match": {"prefix": "/wc/"}, "route": {"weighted_clusters": {"clusters": [
            {"name": cluster, "weight": 1, "host_rewrite_literal": "weighted.example"}]}}},
        {"match": {"prefix": "/wboth/"}, "route": {"weighted_clusters": {"clusters": [
            {"name": cluster, "weight": 1, "host_rewrite_literal": "weighted.example"}]},
            "host_rewrite_literal": "route.example"}},
        {"match": {"prefix": "/both/"}, "route": to(json!({"prefix_rewrite": "/b2/",
            "host_rewrite_literal": "both.example", "append_x_forwarded_host": true}))},
        {"match": {"prefix": "/case/", "case_sensitive": false},
            "route": to(json!({"prefix_rewrite": "/ci/"}))},
        {"match": {"prefix": "/"}, "route": to(json!({}))}
    ])
}

/// An HTTP connection manager as istiod writes it (`codec_type: AUTO`) on `addr`, routes from
/// RDS `r`, the router filter with `suppress_envoy_headers` as given.
fn listener(name: &str, addr: SocketAddr, suppress: bool) -> Value {
    json!({"name": name, "address": socket(addr), "filter_chains": [{"filters": [{
    "name": "envoy.filters.network.http_connection_manager",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name, "codec_type": "AUTO", "server_name": "rw-test",
        "rds": {"route_config_name": "r", "config_source": {"ads": {}, "resource_api_version": "V3"}},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "suppress_envoy_headers": suppress}}]
    }}]}]})
}

fn snapshot(listen: SocketAddr, quiet: SocketAddr, up: SocketAddr) -> Value {
    json!({
        "version": "rw1",
        "listeners": [listener("rw", listen, false), listener("rw_quiet", quiet, true)],
        "routes": [{"name": "r", "virtual_hosts": [
            {"name": "grpc", "domains": ["grpc.test"], "routes": routes("h2")},
            {"name": "web", "domains": ["*"], "routes": routes("h1")}
        ]}],
        "clusters": [eds_cluster("h2", true), eds_cluster("h1", false)],
        "endpoints": [load_assignment("h2", &[up]), load_assignment("h1", &[up])]
    })
}

/// (listener, quiet listener) of a proxy given the snapshot.
struct Proxy {
    listen: SocketAddr,
    quiet: SocketAddr,
}

/// gRPC calls (service, metadata) and what the echo saw of each, via `p`.
fn grpc_seen(p: &Proxy) -> Vec<String> {
    let calls: &[(&str, &[(&str, &str)])] = &[
        ("pfx", &[]),
        ("strip", &[]),
        ("sep", &[]),
        ("rx", &[]),
        ("host", &[]),
        ("hdr", &[("x-new-host", "from-header.example")]),
        ("hdr", &[]),
        ("hpr", &[]),
        ("wc", &[]),
        ("wboth", &[]),
        ("both", &[("x-forwarded-host", "first.example")]),
        ("CASE", &[]),
        ("plain", &[]),
    ];
    let mut out = Vec::new();
    for (target, quiet) in [(p.listen, false), (p.quiet, true)] {
        for (service, meta) in calls {
            if quiet && !["pfx", "both"].contains(service) {
                continue;
            }
            let mut opts = CallOpts::default().service(service).authority("grpc.test");
            for (k, v) in *meta {
                opts = opts.meta(k, v);
            }
            let o = grpc_call(target, &opts);
            let seen = match o.replies.first() {
                Some(r) if o.ok => r.message.clone(),
                _ => format!("failed {} {}", o.code, o.details),
            };
            out.push(format!("grpc quiet={quiet} {service} {meta:?}: {seen}"));
        }
    }
    out
}

/// HTTP/1.1 requests and what the echo saw of each, via `p`.
fn http1_seen(p: &Proxy) -> Vec<String> {
    let reqs = |paths: &[(&str, Value)]| -> Value {
        paths
            .iter()
            .map(|(path, headers)| json!({"path": path, "host": "web.test", "headers": headers}))
            .collect::<Vec<_>>()
            .into()
    };
    let none = json!({});
    let loud = reqs(&[
        ("/pfx/a/b?q=1", none.clone()),
        ("/strip/x", none.clone()),
        ("/stripx?y", none.clone()),
        ("/strip", none.clone()),
        ("/exact/p?z=1", none.clone()),
        ("/sep/a", none.clone()),
        ("/sep", none.clone()),
        ("/sepx", none.clone()),
        ("/re/ab/cd?x=1", none.clone()),
        ("/rx/one/two/three?k", none.clone()),
        ("/rx/one", none.clone()),
        ("/host/x", none.clone()),
        ("/hdr/x", json!({"x-new-host": "from-header.example"})),
        ("/hdr/y", none.clone()),
        ("/hpr/abc/def?g", none.clone()),
        ("/wc/x", none.clone()),
        ("/wboth/x", none.clone()),
        ("/both/x", json!({"x-forwarded-host": "first.example"})),
        ("/both/y", none.clone()),
        ("/both/z", json!({"x-forwarded-host": "web.test"})),
        ("/CASE/Path", none.clone()),
        ("/plain?x", none.clone()),
    ]);
    let quiet = reqs(&[("/pfx/a?q", none.clone()), ("/both/x", none.clone())]);
    let mut out: Vec<String> = http1_outcomes(p.listen, &loud)
        .into_iter()
        .map(|o| format!("h1 {o}"))
        .collect();
    out.extend(
        http1_outcomes(p.quiet, &quiet)
            .into_iter()
            .map(|o| format!("h1 quiet {o}")),
    );
    // The connection a request took is each proxy's own business.
    out.iter().map(|o| o.replace("[new] ", "")).collect()
}

/// Every rewrite kind, through grpcio and HTTP/1.1 clients: the upstream sees the same `:path`,
/// `:authority`, `x-envoy-original-path`, `x-forwarded-host` and `x-envoy-original-host` from
/// ringside as from Envoy 1.40 given the same resources (and a few are pinned, so a rewrite
/// both proxies skipped would not pass).
#[test]
fn route_rewrites_match_envoy() {
    let up = echo_upstream();
    let envoy = Proxy {
        listen: local(free_port()),
        quiet: local(free_port()),
    };
    let envoy_xds = XdsServer::start();
    envoy_xds
        .put(&snapshot(envoy.listen, envoy.quiet, up))
        .unwrap();
    let envoy_admin = local(free_port());
    let e = Envoy::start(
        &bootstrap(envoy_admin, envoy_xds.addr(), Ads::Sotw, "oracle-rw"),
        envoy_admin,
    );
    e.wait_dump("rw", |d| {
        dynamic_listeners(d).iter().any(|(n, _)| n == "rw_quiet")
            && dynamic_route_configs(d).iter().any(|r| r == "r")
    });
    let rs = Proxy {
        listen: local(free_port()),
        quiet: local(free_port()),
    };
    let rs_xds = XdsServer::start();
    rs_xds.put(&snapshot(rs.listen, rs.quiet, up)).unwrap();
    let admin = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: rw\n  mode: sotw\n",
        rs_xds.addr()
    );
    let _ringside = Ringside::start(&config, admin, &["--shards", "2"]);
    rs_xds.wait_ack(RDS, "rw1");
    for a in [rs.listen, rs.quiet] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while TcpStream::connect(a).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "ringside never listened on {a}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let want: Vec<String> = grpc_seen(&envoy)
        .into_iter()
        .chain(http1_seen(&envoy))
        .collect();
    let got: Vec<String> = grpc_seen(&rs).into_iter().chain(http1_seen(&rs)).collect();
    let diff: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("envoy:    {w}\nringside: {g}"))
        .collect();
    assert!(
        diff.is_empty() && want.len() == got.len(),
        "{} of {} differ:\n{}\n(envoy saw:\n{})",
        diff.len(),
        want.len(),
        diff.join("\n"),
        want.join("\n")
    );
    // Pinned, as Envoy does them (a change both proxies made would pass the comparison).
    let has = |needle: &str| {
        assert!(
            got.iter().any(|g| g.contains(needle)),
            "no answer with {needle:?}:\n{}",
            got.join("\n")
        )
    };
    has("path=/new/a/b?q=1 authority=web.test xeop=/pfx/a/b?q=1");
    has("path=//x ");
    has("path=/whole?x=1 ");
    has("path=/two/three/one?k ");
    has("path=/ci/Path ");
    has("path=/ci/SayHello authority=grpc.test xeop=/CASE/SayHello");
    has("authority=SayHello.svc");
    has("path=/hpr/abc/def?g authority=abc.svc");
    has("authority=route.example");
    has("authority=weighted.example xeop=- xfh=- xeoh=-");
    has("path=/host/x authority=literal.example xeop=- xfh=- xeoh=web.test");
    has("path=/b2/x authority=both.example xeop=/both/x xfh=first.example,web.test");
    has("h1 quiet 200 path=/new/a?q authority=web.test xeop=-");
}

/// A route configuration of `redirect` and `direct_response` routes (and a forwarding one).
fn direct_snapshot(listen: SocketAddr, up: SocketAddr) -> Value {
    let redirect = |prefix: &str, r: Value| json!({"match": {"prefix": prefix}, "redirect": r});
    let direct =
        |prefix: &str, d: Value| json!({"match": {"prefix": prefix}, "direct_response": d});
    let routes = json!([
        redirect("/r/https", json!({"https_redirect": true})),
        redirect("/r/full", json!({"host_redirect": "other.example", "port_redirect": 8443,
            "path_redirect": "/landing", "response_code": "FOUND"})),
        redirect("/r/pfx/", json!({"prefix_rewrite": "/moved/", "response_code": "TEMPORARY_REDIRECT"})),
        redirect("/r/re/", json!({"regex_rewrite": {"pattern": {"regex": "^/r/re/(.*)$"},
            "substitution": "/x/\\1"}, "strip_query": true, "response_code": "PERMANENT_REDIRECT"})),
        redirect("/r/q", json!({"path_redirect": "/withq?a=b", "response_code": "SEE_OTHER"})),
        redirect("/r/scheme", json!({"scheme_redirect": "http", "port_redirect": 8080})),
        direct("/d/text", json!({"status": 200, "body": {"inline_string": "hello from the route\n"}})),
        direct("/d/503", json!({"status": 503, "body": {"inline_bytes": "Ynl0ZXMgYm9keQ=="}})),
        direct("/d/301", json!({"status": 301})),
        direct("/d/204", json!({"status": 204})),
        direct("/d/404", json!({"status": 404, "body": {"inline_string": "nothing here"}})),
        // The route's fault aborts before the route answers (Envoy's fault filter runs
        // before its router).
        {"match": {"prefix": "/d/fault"}, "direct_response": {"status": 200},
         "typed_per_filter_config": {"envoy.filters.http.fault": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"http_status": 418, "percentage": {"numerator": 100}}}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "h1"}}
    ]);
    let mut l = listener("dr", listen, false);
    l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array_mut()
        .unwrap()
        .insert(
            0,
            json!({"name": "envoy.filters.http.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}),
        );
    json!({
        "version": "dr1",
        "listeners": [l],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}],
        "clusters": [eds_cluster("h1", false)],
        "endpoints": [load_assignment("h1", &[up])]
    })
}

/// One HTTP/1.1 request (`Connection: close`) on its own connection: the response's status
/// line, its header fields (lower-cased names, sorted, `date` left out) and body.
fn raw_http1(target: SocketAddr, path: &str, host: &str) -> String {
    let mut s = TcpStream::connect(target).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("").to_string();
    let mut fields: Vec<String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| format!("{}: {}", n.trim().to_ascii_lowercase(), v.trim()))
        .filter(|f| !f.starts_with("date:"))
        .collect();
    fields.sort();
    format!(
        "{path} {host}: {status} | {} | {body:?}",
        fields.join(" | ")
    )
}

/// `redirect` (scheme, host, port, path, prefix and regex rewrites, strip_query, each response
/// code) and `direct_response` (status, inline string and bytes bodies, a 3xx without a body;
/// a route fault's abort before it) answered by ringside as by Envoy 1.40: HTTP/1.1 callers get the same status line, header
/// fields (but `date`) and body; grpcio callers the same status and message.
#[test]
fn redirects_and_direct_responses_match_envoy() {
    let up = echo_upstream();
    let envoy_listen = local(free_port());
    let envoy_xds = XdsServer::start();
    envoy_xds.put(&direct_snapshot(envoy_listen, up)).unwrap();
    let envoy_admin = local(free_port());
    let e = Envoy::start(
        &bootstrap(envoy_admin, envoy_xds.addr(), Ads::Sotw, "oracle-dr"),
        envoy_admin,
    );
    e.wait_dump("dr", |d| {
        dynamic_listeners(d).iter().any(|(n, _)| n == "dr")
            && dynamic_route_configs(d).iter().any(|r| r == "r")
    });
    let rs_listen = local(free_port());
    let rs_xds = XdsServer::start();
    rs_xds.put(&direct_snapshot(rs_listen, up)).unwrap();
    let admin = local(free_port());
    let config = format!(
        "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: dr\n  mode: sotw\n",
        rs_xds.addr()
    );
    let _ringside = Ringside::start(&config, admin, &["--shards", "1"]);
    rs_xds.wait_ack(RDS, "dr1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while TcpStream::connect(rs_listen).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "ringside never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let requests = [
        ("/r/https/a?b=1", "web.test"),
        ("/r/https", "web.test:80"),
        ("/r/https", "web.test:8080"),
        ("/r/full/x?y=1", "web.test:80"),
        ("/r/pfx/a/b?c", "web.test"),
        ("/r/re/a/b?c=d", "web.test"),
        ("/r/q?z=9", "web.test"),
        ("/r/scheme/p", "web.test:9000"),
        ("/d/text", "web.test"),
        ("/d/503", "web.test"),
        ("/d/301/p?q", "web.test"),
        ("/d/204", "web.test"),
        ("/d/404", "web.test"),
        ("/d/fault", "web.test"),
    ];
    let run = |target: SocketAddr| -> Vec<String> {
        let mut out: Vec<String> = requests
            .iter()
            .map(|(p, h)| raw_http1(target, p, h))
            .collect();
        for service in [
            "r/https", "r/pfx", "d/text", "d/503", "d/404", "d/301", "d/fault",
        ] {
            let o = grpc_call(
                target,
                &CallOpts::default().service(service).authority("grpc.test"),
            );
            // A fault's message is each proxy's own (docs/governance.md#fault-injection).
            let details = match service {
                "d/fault" => "-".to_string(),
                _ => o.details.clone(),
            };
            out.push(format!(
                "grpc {service}: ok={} code={} details={:?} location={:?}",
                o.ok,
                o.code,
                details,
                o.trailers.get("location").or(o.initial.get("location"))
            ));
        }
        out
    };
    let want = run(envoy_listen);
    let got = run(rs_listen);
    let diff: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("envoy:    {w}\nringside: {g}"))
        .collect();
    assert!(
        diff.is_empty(),
        "{} of {} differ:\n{}\n(envoy:\n{})",
        diff.len(),
        want.len(),
        diff.join("\n"),
        want.join("\n")
    );
    let has = |needle: &str| {
        assert!(
            got.iter().any(|g| g.contains(needle)),
            "no answer with {needle:?}:\n{}",
            got.join("\n")
        )
    };
    has("location: https://web.test/r/https/a?b=1");
    has("location: http://other.example:8443/landing?y=1");
    has("location: http://web.test/moved/a/b?c");
    has("HTTP/1.1 503 Service Unavailable");
    has("/d/fault web.test: HTTP/1.1 418");
}
