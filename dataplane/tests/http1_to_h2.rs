//! HTTP/1.1 requests routed to a cluster whose `HttpProtocolOptions` asks for HTTP/2 go
//! upstream as HTTP/2 (docs/decisions/0010-http1.md), as Envoy's router sends them: checked
//! byte for byte against Envoy 1.40 given the same resources, with a real HTTP/2 server (the
//! `h2` library's, tests/peers/http1/h2_server.py) that answers with what it received.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::envoy::{envoy_or_ringside, load_assignment, socket, Envoy};
use common::http1::{H2Frames, H2Server, Http1Server};
use common::xds::XdsServer;
use common::*;
use serde_json::{json, Value};

/// Reads one HTTP/1.1 response (to a request with `method`) off `s`, framed as its head says
/// (`content-length`, chunked, or until the connection closes), into `buf`: its bytes.
fn read_response(s: &mut std::net::TcpStream, buf: &mut Vec<u8>, method: &str) -> Vec<u8> {
    let mut chunk = [0u8; 65536];
    let mut fill = |buf: &mut Vec<u8>| -> bool {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    };
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if !fill(buf) {
            return std::mem::take(buf);
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    };
    let end = if method == "HEAD" || status == 204 || status == 304 || status < 200 {
        head_end
    } else if let Some(n) = field("content-length") {
        let n: usize = n.trim().parse().unwrap();
        while buf.len() < head_end + n {
            assert!(fill(buf), "closed within a body");
        }
        head_end + n
    } else if field("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut at = head_end;
        loop {
            let line_end = loop {
                if let Some(p) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + p + 2;
                }
                assert!(fill(buf), "closed within a chunk size");
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[at..line_end - 2])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap();
            if size == 0 {
                // The trailer section up to its empty line.
                let mut t = line_end;
                loop {
                    if let Some(p) = buf[t..].windows(2).position(|w| w == b"\r\n") {
                        if p == 0 {
                            break;
                        }
                        t += p + 2;
                        continue;
                    }
                    assert!(fill(buf), "closed within trailers");
                }
                at = t + 2;
                break;
            }
            while buf.len() < line_end + size + 2 {
                assert!(fill(buf), "closed within a chunk");
            }
            at = line_end + size + 2;
        }
        at
    } else {
        while fill(buf) {}
        buf.len()
    };
    let rest = buf.split_off(end);
    std::mem::replace(buf, rest)
}

/// Sends each raw request on one keep-alive connection to `target` (a new one after a close)
/// and returns each raw response.
fn exchange(target: SocketAddr, requests: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut conn: Option<std::net::TcpStream> = None;
    let mut buf = Vec::new();
    for (method, bytes) in requests {
        let s = conn.get_or_insert_with(|| {
            let s = std::net::TcpStream::connect(target).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        });
        s.write_all(bytes).unwrap();
        let mut r = read_response(s, &mut buf, method);
        // An interim response (100 Continue) and the final one, together.
        while r.starts_with(b"HTTP/1.1 1") {
            let more = read_response(s, &mut buf, method);
            r.extend_from_slice(&more);
            if more.is_empty() {
                break;
            }
        }
        let text = String::from_utf8_lossy(&r).to_string();
        if text.is_empty() || text.to_lowercase().contains("\r\nconnection: close\r\n") {
            conn = None;
            buf.clear();
        }
        out.push(if text.is_empty() {
            "closed".to_string()
        } else {
            text
        });
    }
    out
}

/// A response as two proxies' are compared: the values of the fields Envoy's connection
/// manager and router add to every response that are times (`date`, checked to be an HTTP
/// date, and `x-envoy-upstream-service-time`, a number of milliseconds) are replaced by what
/// they are; everything else, `server` and the fields' places included, as it is.
fn comparable(r: &str) -> String {
    r.split("\r\n")
        .map(|l| {
            if let Some(v) = l.strip_prefix("date: ") {
                assert!(is_http_date(v), "{l:?}");
                return "date: <date>".to_string();
            }
            if let Some(v) = l.strip_prefix("x-envoy-upstream-service-time: ") {
                assert!(
                    !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()),
                    "{l:?}"
                );
                return "x-envoy-upstream-service-time: <ms>".to_string();
            }
            l.to_string()
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// RFC 9110's IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn is_http_date(v: &str) -> bool {
    let b = v.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 29
        && ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].contains(&&v[..3])
        && &v[3..5] == ", "
        && digits(5..7)
        && [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .contains(&&v[8..11])
        && digits(12..16)
        && digits(17..19)
        && b[19] == b':'
        && digits(20..22)
        && b[22] == b':'
        && digits(23..25)
        && &v[25..] == " GMT"
}

/// An HTTP connection manager as istiod writes it (`codec_type: AUTO`, `server_name:
/// istio-envoy`), routing host `svc` to
/// the cluster `h2up` (HTTP/2: `explicit_http_config.http2_protocol_options`) and `/h1/` to
/// `h1up` (`use_downstream_protocol_config`: an HTTP/1.1 request stays HTTP/1.1).
fn snapshot(listen: SocketAddr, h2up: SocketAddr, h1up: SocketAddr) -> Value {
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "http", "codec_type": "AUTO", "server_name": "istio-envoy",
        "route_config": {"name": "r", "virtual_hosts": [{"name": "svc", "domains": ["svc", "svc:80"], "routes": [
            {"match": {"prefix": "/h1/"}, "route": {"cluster": "h1up", "timeout": "5s"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "h2up", "timeout": "5s"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    });
    let options = |mut o: Value| {
        o["@type"] =
            json!("type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
        o["common_http_protocol_options"] = json!({"idle_timeout": "60s"});
        json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": o})
    };
    let cluster = |name: &str, ep: SocketAddr, o: Value| {
        json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": load_assignment(name, &[ep]),
               "typed_extension_protocol_options": options(o)})
    };
    json!({
        "version": "v1",
        "listeners": [{"name": "http", "address": socket(listen), "traffic_direction": "OUTBOUND",
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
        "clusters": [
            cluster("h2up", h2up, json!({"explicit_http_config": {"http2_protocol_options": {}}})),
            cluster("h1up", h1up, json!({"use_downstream_protocol_config": {}})),
        ]
    })
}

/// A chunked body of `data` in pieces of `piece` bytes.
fn chunked(data: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in data.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The same HTTP/1.1 requests on raw keep-alive connections through Envoy 1.40 and ringside,
/// routed to an HTTP/2 cluster: a GET with hop-by-hop fields (`Connection` naming one, `TE`,
/// `Keep-Alive`), a POST with a `Content-Length` body, a chunked POST with chunk extensions
/// and a trailer, a 100 KiB body each way (beyond HTTP/2's initial 64 KiB windows, so both
/// sides' flow control), HEAD, a response without length in several DATA frames (chunked to
/// the caller), one with trailers (dropped), one that ends with its HEADERS, 204 and 404, an
/// `Expect: 100-continue` request, an HTTP/1.1 request to a `use_downstream_protocol_config`
/// cluster (HTTP/1.1 upstream), and `Connection: close`. Each response is the same bytes from
/// both, and so what the HTTP/2 server saw (it answers with its view of the request: the
/// pseudo-header and field order, the body's length and digest).
#[test]
fn http1_requests_go_upstream_as_http2_like_envoy() {
    let h2_port = free_port();
    let _h2 = H2Server::start(h2_port, "h2");
    let h1_port = free_port();
    let _h1 = Http1Server::start("127.0.0.1", h1_port, "h1");
    let big = pattern(100 * 1024);
    let mut post_big = b"PUT /len HTTP/1.1\r\nHost: svc\r\nContent-Length: 102400\r\n\r\n".to_vec();
    post_big.extend_from_slice(&big);
    let mut chunked_big =
        b"POST /frames HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked_big.extend_from_slice(&chunked(&big, 7000));
    let requests: Vec<(String, Vec<u8>)> = vec![
        ("GET", b"GET /len?q=1 HTTP/1.1\r\nHost: svc\r\nUser-Agent: t/1\r\nX-App: a\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\n\r\n".to_vec()),
        ("POST", b"POST /len HTTP/1.1\r\nHost: svc:80\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world".to_vec()),
        ("POST", b"POST /len HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n".to_vec()),
        ("PUT", post_big),
        ("POST", chunked_big),
        ("HEAD", b"HEAD /len HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("GET", b"GET /frames HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("GET", b"GET /trailers HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("GET", b"GET /empty HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("GET", b"GET /status/204 HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("GET", b"GET /status/404 HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("GET", b"GET /big HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("POST", b"POST /len HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        ("GET", b"GET /h1/x HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("DELETE", b"DELETE /len HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n".to_vec()),
    ]
    .into_iter()
    .map(|(m, b)| (m.to_string(), b))
    .collect();
    let run = |who: &str| -> (Vec<String>, [u64; 2]) {
        let listen = local(free_port());
        let xds = XdsServer::start();
        xds.put(&snapshot(listen, local(h2_port), local(h1_port)))
            .unwrap();
        let proxy = envoy_or_ringside(who, xds.addr(), "h1h2", "1");
        let ack = xds.wait_ack("cds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        wait_listening(listen);
        let got = exchange(listen, &requests);
        // The HTTP/2 cluster's requests (a stream each), none in flight any more.
        let stat = |name: &str| {
            let name = format!("cluster.h2up.{name}");
            match (
                proxy.downcast_ref::<Envoy>(),
                proxy.downcast_ref::<Ringside>(),
            ) {
                (Some(e), _) => e.stat(&name),
                (_, Some(r)) => r.stat_value(&name).unwrap_or(-1) as u64,
                _ => unreachable!(),
            }
        };
        let until = Instant::now() + Duration::from_secs(5);
        while stat("upstream_rq_active") != 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        (got, [stat("upstream_rq_total"), stat("upstream_rq_active")])
    };
    let (envoy, envoy_rq) = run("envoy");
    let (ringside, ringside_rq) = run("ringside");
    assert_eq!(
        envoy_rq,
        [14, 0],
        "Envoy's upstream_rq_total, upstream_rq_active"
    );
    assert_eq!(
        ringside_rq, envoy_rq,
        "upstream_rq_total, upstream_rq_active"
    );
    for (i, e) in envoy.iter().enumerate() {
        eprintln!(
            "--- {i} envoy:\n{}",
            e.chars().take(1500).collect::<String>()
        );
        eprintln!(
            "--- {i} ringside:\n{}",
            ringside[i].chars().take(1500).collect::<String>()
        );
    }
    // Envoy's answers are what the HTTP/2 server gives (not local errors), HTTP/2 upstream.
    assert!(envoy[0].starts_with("HTTP/1.1 200 OK\r\n"), "{}", envoy[0]);
    assert!(
        envoy[0].contains(
            "h2 GET /len?q=1\n:authority: svc\n:path: /len?q=1\n:method: GET\n:scheme: http\n"
        ),
        "{}",
        envoy[0]
    );
    assert!(envoy[13].contains("h1 GET /h1/x"), "{}", envoy[13]);
    assert_eq!(ringside.len(), envoy.len());
    // Every response carries `server: istio-envoy` (the HCM's `server_name`, replacing the
    // HTTP/1.1 upstream's own), a `date` and `x-envoy-upstream-service-time`.
    for (i, r) in ringside.iter().enumerate() {
        let head = r
            .split("\r\n\r\n")
            .find(|h| !h.starts_with("HTTP/1.1 1"))
            .unwrap_or("");
        for f in [
            "server: istio-envoy",
            "date: ",
            "x-envoy-upstream-service-time: ",
        ] {
            assert!(
                head.contains(&format!("\r\n{f}")),
                "response {i}: no {f:?}: {r}"
            );
        }
    }
    for (i, (r, e)) in ringside.iter().zip(&envoy).enumerate() {
        assert_eq!(
            comparable(r),
            comparable(e),
            "response {i}: ringside (left) vs Envoy (right)"
        );
    }
}

/// A GET of `path` (host `svc`) on a new connection to `target`: the raw response.
fn get(target: SocketAddr, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n");
    exchange(target, &[("GET".to_string(), req.into_bytes())]).remove(0)
}

/// The h2 server's counters (its `/stats`, asked through the proxy at `target`): the
/// connections it accepted, the most streams it saw open at once on one, the streams the
/// client reset.
fn server_stats(target: SocketAddr) -> (u32, u32, u32) {
    let r = get(target, "/stats");
    let line = r
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| b.lines().next())
        .unwrap_or_else(|| panic!("no stats: {r}"));
    let v: Vec<u32> = line
        .split(' ')
        .map(|kv| kv.split('=').nth(1).unwrap().parse().unwrap())
        .collect();
    (v[0], v[1], v[2])
}

/// A proxy (`who`) given [`snapshot`] over the test xDS server, its HTTP/2 cluster to
/// `h2_port` (with `http2_options` as its `http2_protocol_options`), listening on the address
/// returned; `--shards 1` / `--concurrency 1`.
fn proxy(
    who: &str,
    h2_port: u16,
    http2_options: Value,
) -> (SocketAddr, Box<dyn std::any::Any>, XdsServer) {
    proxy_with(who, h2_port, |o| {
        o["explicit_http_config"]["http2_protocol_options"] = http2_options.clone()
    })
}

/// [`proxy`] with the HTTP/2 cluster's `HttpProtocolOptions` as `options` makes them.
fn proxy_with(
    who: &str,
    h2_port: u16,
    options: impl Fn(&mut Value),
) -> (SocketAddr, Box<dyn std::any::Any>, XdsServer) {
    proxy_snapshot(who, h2_port, |snap| {
        options(
            &mut snap["clusters"][0]["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
        )
    })
}

/// [`proxy`] with [`snapshot`] as `edit` makes it.
fn proxy_snapshot(
    who: &str,
    h2_port: u16,
    edit: impl Fn(&mut Value),
) -> (SocketAddr, Box<dyn std::any::Any>, XdsServer) {
    let listen = local(free_port());
    let xds = XdsServer::start();
    let mut snap = snapshot(listen, local(h2_port), local(free_port()));
    edit(&mut snap);
    xds.put(&snap).unwrap();
    let p = envoy_or_ringside(who, xds.addr(), "h1h2", "1");
    for kind in ["cds", "lds"] {
        let ack = xds.wait_ack(kind, "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
    }
    wait_listening(listen);
    (listen, p, xds)
}

/// N concurrent HTTP/1.1 requests, each on a caller connection of its own (one shard), to an
/// HTTP/2 cluster: Envoy 1.40 multiplexes them over its HTTP/2 connection, one per endpoint
/// while the server's SETTINGS_MAX_CONCURRENT_STREAMS leaves room, and so must ringside. The
/// server holds each answer 400 ms (all N are open at once) and counts the connections it
/// accepted and the most streams open at once on one. With its default limit (100) both
/// proxies use the one connection a first request opened, N streams at once; with a limit of
/// 3 (below N) both open more connections and never exceed 3 streams on one. Every response
/// is the server's answer to that request.
#[test]
fn concurrent_http1_requests_share_http2_connections_like_envoy() {
    const N: usize = 8;
    let run = |who: &str, max_streams: Option<u32>| {
        let h2_port = free_port();
        let limit = max_streams.map(|m| m.to_string());
        let args: Vec<&str> = match &limit {
            Some(l) => vec!["--max-streams", l],
            None => vec![],
        };
        let _h2 = H2Server::start_with(h2_port, "h2", &args);
        let (listen, _proxy, _xds) = proxy(who, h2_port, json!({}));
        // The connection up and its SETTINGS known first, as in a running mesh.
        let first = get(listen, "/len");
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{who}: {first}");
        let answers: Vec<String> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..N)
                .map(|i| sc.spawn(move || get(listen, &format!("/hold/400/{i}"))))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, a) in answers.iter().enumerate() {
            assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{who} {i}: {a}");
            assert!(
                a.contains(&format!("\r\n\r\nh2 GET /hold/400/{i}\n")),
                "{who} {i}: {a}"
            );
        }
        let stats = server_stats(listen);
        eprintln!("{who}, max streams {max_streams:?}: (conns, max open, resets) {stats:?}");
        stats
    };
    let envoy = run("envoy", None);
    let ringside = run("ringside", None);
    assert_eq!(
        envoy,
        (1, N as u32, 0),
        "Envoy: one connection, N streams at once"
    );
    assert_eq!(ringside, envoy, "ringside (left) vs Envoy (right)");
    // With a limit of 3 the first connection takes 3 and the rest go to a second one: all
    // of them when they are sent before its SETTINGS (the limit) arrived (then up to N - 3
    // open at once there), else 3 and the rest to a third. Which comes first is a race, in
    // Envoy as in ringside (seen from Envoy: (2, 5, 0), (3, 3, 0), (3, 4, 0)).
    let envoy = run("envoy", Some(3));
    let ringside = run("ringside", Some(3));
    for (who, (conns, max, resets)) in [("Envoy", envoy), ("ringside", ringside)] {
        assert!(
            (2..=3).contains(&conns) && (3..=N as u32 - 3).contains(&max) && resets == 0,
            "{who} with a limit of 3: {:?}",
            (conns, max, resets)
        );
    }
}

/// One caller asks for a 16 MiB response and never reads it (a small receive buffer): its
/// stream stalls once its window is used, and another caller's request on the same upstream
/// connection is answered at once all the same (the connection's window is not held by the
/// stalled stream, the frames of others are read past it). When the stalled caller goes away
/// its stream alone is reset (RST_STREAM CANCEL; the server counts one reset), and the
/// connection serves the next request. The same through Envoy 1.40 and ringside.
#[test]
fn a_caller_that_does_not_read_stalls_only_its_own_stream() {
    let run = |who: &str| {
        let h2_port = free_port();
        let _h2 = H2Server::start(h2_port, "h2");
        // Envoy's windows as ringside's (its defaults are 256 MiB: it would take the whole
        // response in and the stream would not stall).
        let windows = json!({"initial_stream_window_size": 65536,
                             "initial_connection_window_size": 1048576});
        let (listen, _proxy, _xds) = proxy(who, h2_port, windows);
        let first = get(listen, "/len");
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{who}: {first}");
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&listen.into()).unwrap();
        let mut slow: std::net::TcpStream = sock.into();
        slow.write_all(b"GET /bytes/16777216 HTTP/1.1\r\nHost: svc\r\n\r\n")
            .unwrap();
        // Long enough for the response to fill every buffer on its way and stall.
        std::thread::sleep(Duration::from_millis(1500));
        let started = std::time::Instant::now();
        let other = get(listen, "/len");
        let took = started.elapsed();
        assert!(other.starts_with("HTTP/1.1 200 OK\r\n"), "{who}: {other}");
        assert!(other.contains("\r\n\r\nh2 GET /len\n"), "{who}: {other}");
        assert!(
            took < Duration::from_secs(2),
            "{who}: the other request took {took:?}"
        );
        let stalled = server_stats(listen);
        drop(slow);
        std::thread::sleep(Duration::from_millis(500));
        let after = get(listen, "/len");
        assert!(after.starts_with("HTTP/1.1 200 OK\r\n"), "{who}: {after}");
        let gone = server_stats(listen);
        eprintln!("{who}: stalled {stalled:?}, after the caller left {gone:?}");
        (stalled, gone)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    // One connection throughout; the stalled stream open beside the other request (the
    // stats one too); one reset when its caller left.
    assert_eq!(envoy, ((1, 2, 0), (1, 2, 1)), "Envoy");
    assert_eq!(ringside, envoy, "ringside (left) vs Envoy (right)");
}

/// The cluster's own limits on its HTTP/2 connections, as Envoy 1.40 applies them:
/// `http2_protocol_options.max_concurrent_streams: 2` (6 concurrent callers, each request held
/// 300 ms: 3 connections, at most 2 streams at once on one) and
/// `common_http_protocol_options.max_requests_per_connection: 2` (5 requests one after
/// another, then the stats one: 3 connections).
#[test]
fn the_clusters_stream_and_request_limits_like_envoy() {
    let run = |who: &str| {
        let h2_port = free_port();
        let _h2 = H2Server::start(h2_port, "h2");
        let (listen, _proxy, _xds) = proxy(who, h2_port, json!({"max_concurrent_streams": 2}));
        let answers: Vec<String> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..6)
                .map(|i| sc.spawn(move || get(listen, &format!("/hold/300/{i}"))))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, a) in answers.iter().enumerate() {
            assert!(
                a.contains(&format!("\r\n\r\nh2 GET /hold/300/{i}\n")),
                "{who} {i}: {a}"
            );
        }
        let streams = server_stats(listen);
        drop((_proxy, _xds, _h2));
        let h2_port = free_port();
        let _h2 = H2Server::start(h2_port, "h2");
        let (listen, _proxy, _xds) = proxy_with(who, h2_port, |o| {
            o["common_http_protocol_options"]["max_requests_per_connection"] = json!(2)
        });
        for i in 0..5 {
            let a = get(listen, &format!("/len/{i}"));
            assert!(
                a.contains(&format!("\r\n\r\nh2 GET /len/{i}\n")),
                "{who} {i}: {a}"
            );
        }
        let requests = server_stats(listen);
        eprintln!("{who}: max_concurrent_streams 2 {streams:?}, max_requests_per_connection 2 {requests:?}");
        (streams, requests)
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    assert_eq!(envoy, ((3, 2, 0), (3, 1, 0)), "Envoy");
    assert_eq!(ringside, envoy, "ringside (left) vs Envoy (right)");
}

/// What the first connection of an [`H2Frames`] server got: its SETTINGS_INITIAL_WINDOW_SIZE
/// (none when the SETTINGS left it out) and connection WINDOW_UPDATE increments.
fn windows(events: &[(f64, String)]) -> (Option<u32>, Vec<u32>) {
    let initial = events
        .iter()
        .find_map(|(_, e)| e.strip_prefix("SETTINGS "))
        .and_then(|s| {
            s.split(',')
                .find_map(|kv| kv.strip_prefix("4=").map(|v| v.parse().unwrap()))
        });
    let updates = events
        .iter()
        .filter_map(|(_, e)| e.strip_prefix("WINDOW_UPDATE 0 "))
        .map(|v| v.parse().unwrap())
        .collect();
    (initial, updates)
}

/// The HTTP/2 windows ringside gives an HTTP/2 upstream are the cluster's
/// `http2_protocol_options.initial_stream_window_size` and `initial_connection_window_size`,
/// with Envoy 1.40's defaults (16 MiB and 24 MiB) when unset: the same SETTINGS_INITIAL_
/// WINDOW_SIZE and connection WINDOW_UPDATE as Envoy sends on its first connection, as a raw
/// HTTP/2 server records them (before the first response: no window was used yet).
#[test]
fn the_clusters_http2_windows_like_envoy() {
    let cases = [
        json!({}),
        json!({"initial_stream_window_size": 65536, "initial_connection_window_size": 1048576}),
        json!({"initial_stream_window_size": 65535, "initial_connection_window_size": 65535}),
        json!({"initial_stream_window_size": 2147483647, "initial_connection_window_size": 2147483647}),
    ];
    let run = |who: &str, options: &Value| {
        let port = free_port();
        let up = H2Frames::start(port, false);
        let (listen, _proxy, _xds) = proxy(who, port, options.clone());
        let r = get(listen, "/x");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{who}: {r}");
        // The server's lines reach the test through a pipe and a thread: wait for the
        // request's HEADERS (every line before it is in then).
        up.await_events("HEADERS", 1);
        let events = up.events(1);
        let first_headers = events.iter().position(|(_, e)| e.starts_with("HEADERS"));
        windows(&events[..first_headers.unwrap_or(events.len())])
    };
    for o in &cases {
        let envoy = run("envoy", o);
        let ringside = run("ringside", o);
        eprintln!("{o}: envoy {envoy:?}, ringside {ringside:?}");
        assert_eq!(ringside, envoy, "{o}: ringside (left) vs Envoy (right)");
    }
}

/// `http2_protocol_options.connection_keepalive` (interval 1 s, timeout 1 s, no jitter): a
/// PING every second on the upstream connection, idle or not, as Envoy 1.40 sends them (a
/// raw HTTP/2 server counts those of the first 3.5 s). Against an upstream that answers
/// nothing (neither the request nor the PING), the connection is closed 1 s after its first
/// PING and the request waiting on it fails as Envoy's does (503, `reset reason: connection
/// termination`, before the route's 5 s timeout).
#[test]
fn connection_keepalive_pings_like_envoy() {
    let keepalive = json!({"connection_keepalive": {
        "interval": "1s", "timeout": "1s", "interval_jitter": {"value": 0}}});
    let run = |who: &str| {
        let port = free_port();
        let up = H2Frames::start(port, false);
        let (listen, _proxy, _xds) = proxy(who, port, keepalive.clone());
        let r = get(listen, "/x");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{who}: {r}");
        std::thread::sleep(Duration::from_millis(3600));
        let pings: Vec<f64> = up
            .events(1)
            .iter()
            .filter(|(t, e)| e == "PING" && *t < 3.5)
            .map(|(t, _)| *t)
            .collect();
        drop((_proxy, _xds, up));
        let port = free_port();
        let up = H2Frames::start(port, true);
        let (listen, _proxy, _xds) = proxy(who, port, keepalive.clone());
        let started = std::time::Instant::now();
        let r = get(listen, "/x");
        let took = started.elapsed();
        // The close may reach the server just after the answer reached the caller.
        std::thread::sleep(Duration::from_millis(300));
        let events = up.events(1);
        let eof = events.iter().find(|(_, e)| e == "EOF").map(|(t, _)| *t);
        let pings_before = events.iter().filter(|(_, e)| e == "PING").count();
        eprintln!("{who}: PINGs at {pings:?}; silent upstream: {took:?}, closed at {eof:?} after {pings_before} PING(s)\n{r}");
        assert!(
            eof.is_some_and(|t| (1.7..3.0).contains(&t)),
            "{who}: closed at {eof:?}"
        );
        (pings.len(), pings_before, comparable(&r))
    };
    let envoy = run("envoy");
    let ringside = run("ringside");
    assert_eq!(envoy.0, 3, "Envoy: 3 PINGs in 3.5 s");
    assert!(
        envoy.2.contains("reset reason: connection termination"),
        "{}",
        envoy.2
    );
    assert_eq!(ringside, envoy, "ringside (left) vs Envoy (right)");
}

/// `common_http_protocol_options.idle_timeout` (1 s) closes an upstream HTTP/2 connection
/// that had no request that long, and `max_connection_duration` (1 s) one that is that old
/// (the next request opens another), as Envoy 1.40 does (ringside says GOAWAY first, Envoy
/// just closes).
#[test]
fn idle_timeout_and_max_connection_duration_like_envoy() {
    let run = |who: &str, common: Value| {
        let port = free_port();
        let up = H2Frames::start(port, false);
        let (listen, _proxy, _xds) = proxy_with(who, port, |o| {
            o["common_http_protocol_options"] = common.clone();
        });
        let r = get(listen, "/x");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{who}: {r}");
        std::thread::sleep(Duration::from_millis(400));
        let r = get(listen, "/y");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{who}: {r}");
        std::thread::sleep(Duration::from_millis(1800));
        let r = get(listen, "/z");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{who}: {r}");
        // The three requests' HEADERS in: every connection's ACCEPT before them is too.
        up.await_events("HEADERS", 3);
        let eof = up
            .events(1)
            .iter()
            .find(|(_, e)| e == "EOF")
            .map(|(t, _)| *t);
        let conns = up.connections();
        eprintln!("{who} {common}: first connection closed at {eof:?}, {conns} connections");
        (eof, conns)
    };
    // Closed 1 s after its last request (idle: at 1.4 s) or after it opened (duration).
    for (common, at) in [
        (json!({"idle_timeout": "1s"}), 1.3..1.9),
        (json!({"max_connection_duration": "1s"}), 0.9..1.3),
    ] {
        let envoy = run("envoy", common.clone());
        let ringside = run("ringside", common.clone());
        let when = |(eof, conns): (Option<f64>, u32)| (eof.is_some_and(|t| at.contains(&t)), conns);
        assert_eq!(when(envoy), (true, 2), "Envoy {common}: {envoy:?}");
        let (envoy, ringside) = (when(envoy), when(ringside));
        assert_eq!(
            ringside, envoy,
            "{common}: ringside (left) vs Envoy (right)"
        );
    }
}

/// The windows a proxy gives callers on an HTTP connection manager's HTTP/2 connections: the
/// HCM's `http2_protocol_options.initial_stream_window_size` and
/// `initial_connection_window_size`, Envoy 1.40's defaults (16 MiB, 24 MiB) when unset: the
/// SETTINGS_INITIAL_WINDOW_SIZE and connection WINDOW_UPDATE a raw client gets.
#[test]
fn the_listeners_http2_windows_like_envoy() {
    fn frames(listen: SocketAddr) -> (Option<u32>, Vec<u32>) {
        let mut s = std::net::TcpStream::connect(listen).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let (mut initial, mut updates, mut at) = (None, Vec::new(), 0);
        while buf.len() >= at + 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            let (kind, flags) = (buf[at + 3], buf[at + 4]);
            let stream = u32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap());
            let p = &buf[at + 9..(at + 9 + len).min(buf.len())];
            if kind == 4 && flags & 1 == 0 {
                for kv in p.chunks(6) {
                    if kv[..2] == [0, 4] {
                        initial = Some(u32::from_be_bytes(kv[2..6].try_into().unwrap()));
                    }
                }
            }
            if kind == 8 && stream == 0 {
                updates.push(u32::from_be_bytes(p.try_into().unwrap()));
            }
            at += 9 + len;
        }
        (initial, updates)
    }
    for options in [
        None,
        Some(
            json!({"initial_stream_window_size": 70000, "initial_connection_window_size": 100000}),
        ),
    ] {
        let run = |who: &str| {
            let (listen, _proxy, _xds) = proxy_snapshot(who, free_port(), |snap| {
                if let Some(o) = &options {
                    snap["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
                        ["http2_protocol_options"] = o.clone();
                }
            });
            frames(listen)
        };
        let envoy = run("envoy");
        let ringside = run("ringside");
        eprintln!("{options:?}: envoy {envoy:?}, ringside {ringside:?}");
        assert_eq!(
            ringside, envoy,
            "{options:?}: ringside (left) vs Envoy (right)"
        );
    }
}
