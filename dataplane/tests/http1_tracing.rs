//! Tracing of HTTP/1.1 requests (docs/observability.md#tracing): the same xDS snapshot (an
//! OUTBOUND HTTP connection manager with `codec_type: AUTO` and the OpenTelemetry tracer) given
//! to Envoy 1.40 and to ringside, the same HTTP/1.1 requests through each: both report the same
//! span for each (name, kind, status, parent and every tag Envoy's tracer gives an HTTP
//! request, `response_size` included: the upstream echoes the fields it received, so the
//! forwarded head is Envoy's to the byte), and the upstreams (the HTTP/2 server of
//! tests/peers/http1/h2_server.py, which answers with the fields it received; the HTTP/1.1
//! server of tests/peers/http1/peer.py) see the context with the proxy's span as parent. Then
//! ringside alone: B3 single and multi contexts continued (as on HTTP/2), an unsampled context
//! passed on untouched and never exported.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::envoy::{bootstrap, eds_cluster, load_assignment, socket, Ads, Envoy};
use common::grpc::Peer;
use common::http1::{H2Server, Http1Server};
use common::xds::XdsServer;
use common::*;
use serde_json::{json, Value};

const PARENT: &str = "00f067aa0ba902b7";

/// The OTLP receiver (tests/peers/otlp/receiver.py); every span it printed.
struct Receiver {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Receiver {
    fn start() -> Receiver {
        let mut child = Peer::Grpc
            .command("../otlp/receiver.py")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the OTLP receiver");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (ready_tx, ready_rx) = mpsc::channel();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Some(p) = line.strip_prefix("READY port=") {
                    let _ = ready_tx.send(p.trim().parse::<u16>().unwrap());
                } else if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let port = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the OTLP receiver did not print READY in 30 s");
        Receiver {
            child,
            port,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first span for which `pred` holds (waits up to 20 s: Envoy's tracer flushes every
    /// 5 s).
    fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = self.seen.iter().find(|v| pred(v)) {
                return v.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no span {what}; received: {:#?}",
                self.seen
            );
            if let Ok(v) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                self.seen.push(v);
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one raw request on a new connection with `Connection: close` semantics (the proxy's
/// answer is read until it closes or 3 s pass); the raw response.
fn send(target: SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(target).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).to_string()
}

/// A span as two proxies' are compared: what is the same for the same request (the ids,
/// times, `x-request-id` and the service name set aside; a trace started by the proxy has no
/// parent in both).
fn comparable(span: &Value) -> Value {
    let mut attrs = span["attributes"].clone();
    let guid = attrs
        .as_object_mut()
        .unwrap()
        .remove("guid:x-request-id")
        .unwrap_or_else(|| panic!("no guid:x-request-id: {span}"));
    assert_eq!(guid.as_str().unwrap().len(), 36, "a UUID: {span}");
    json!({
        "name": span["name"], "kind": span["kind"], "status_code": span["status_code"],
        "parent_span_id": span["parent_span_id"], "attributes": attrs,
    })
}

#[test]
fn http1_request_spans_match_envoys() {
    let mut rx = Receiver::start();
    let h2_port = free_port();
    let _h2 = H2Server::start(h2_port, "h2");
    let h1_port = free_port();
    let _h1 = Http1Server::start("127.0.0.1", h1_port, "h1");
    let collector = local(rx.port);
    let snapshot = |who: &str, listen: SocketAddr, listen_in: SocketAddr| {
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http", "codec_type": "AUTO",
            "tracing": {
                "random_sampling": {"value": 100},
                "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "1s"},
                    "service_name": format!("{who}-h1")
                }}
            },
            "route_config": {"name": "r", "virtual_hosts": [{"name": "svc", "domains": ["svc", "svc:80"], "routes": [
                {"match": {"prefix": "/header/"}, "route": {"cluster": "h1up", "timeout": "5s"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "h2up", "timeout": "5s"}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        });
        json!({
            "version": "v1",
            "listeners": [
                {"name": "http", "address": socket(listen), "traffic_direction": "OUTBOUND",
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]},
                {"name": "http_in", "address": socket(listen_in), "traffic_direction": "INBOUND",
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": [eds_cluster("h2up", true), eds_cluster("h1up", false), eds_cluster("otel", true)],
            "endpoints": [
                load_assignment("h2up", &[local(h2_port)]),
                load_assignment("h1up", &[local(h1_port)]),
                load_assignment("otel", &[collector])
            ]
        })
    };
    let mut spans: Vec<Vec<Value>> = Vec::new();
    for (who, n) in [("envoy", 1), ("ringside", 2)] {
        let trace = format!("{n}").repeat(32);
        let listen = local(free_port());
        let listen_in = local(free_port());
        let xds = XdsServer::start();
        xds.put(&snapshot(who, listen, listen_in)).unwrap();
        let admin = local(free_port());
        let _proxy: Box<dyn std::any::Any> = if who == "envoy" {
            Box::new(Envoy::start(
                &bootstrap(admin, xds.addr(), Ads::Sotw, "oracle"),
                admin,
            ))
        } else {
            let cfg = format!(
                "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: oracle\n  node_cluster: tests\n  mode: sotw\n",
                xds.addr()
            );
            Box::new(Ringside::start(&cfg, admin, &["--shards", "1"]))
        };
        let ack = xds.wait_ack("lds", "v1");
        assert_eq!(ack["ack"], true, "{who}: {ack}");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(listen).is_err()
            || std::net::TcpStream::connect(listen_in).is_err()
        {
            assert!(Instant::now() < deadline, "{who}: listener never came up");
            std::thread::sleep(Duration::from_millis(50));
        }
        // A sampled W3C context, a POST with a body and a user agent.
        let got = send(
            listen,
            &format!(
                "POST /a/b?x=1 HTTP/1.1\r\nHost: svc\r\nUser-Agent: ua/1\r\ntraceparent: 00-{trace}-{PARENT}-01\r\n\
                 Content-Length: 5\r\nConnection: close\r\n\r\nhello"
            ),
        );
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{who}: {got}");
        let first = rx.wait(&format!("of trace {trace}"), |v| v["trace_id"] == trace);
        let ours = first["span_id"].as_str().unwrap().to_string();
        assert_eq!(ours.len(), 16, "{first}");
        assert_ne!(ours, PARENT);
        assert!(
            got.contains(&format!("\ntraceparent: 00-{trace}-{ours}-01\n")),
            "{who}: the upstream saw the proxy's span as parent: {got}"
        );
        // An HTTP/1.1 upstream that answers with the `traceparent` it received.
        let t1 = format!("{n}a").repeat(16);
        let got = send(
            listen,
            &format!(
                "GET /header/traceparent HTTP/1.1\r\nHost: svc\r\ntraceparent: 00-{t1}-{PARENT}-01\r\n\
                 Connection: close\r\n\r\n"
            ),
        );
        let h1span = rx.wait(&format!("of trace {t1}"), |v| v["trace_id"] == t1);
        let id = h1span["span_id"].as_str().unwrap();
        assert!(
            got.contains(&format!("traceparent=00-{t1}-{id}-01")),
            "{who}: the HTTP/1.1 upstream saw the proxy's span as parent: {got}"
        );
        // No context (the proxy starts a sampled trace), an upstream 503, no route (404).
        let cases = [
            (
                "GET /new HTTP/1.1\r\nHost: svc:80\r\nConnection: close\r\n\r\n",
                "/new",
            ),
            (
                "GET /status/503 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
                "/status/503",
            ),
            (
                "GET /c HTTP/1.1\r\nHost: nohost\r\nConnection: close\r\n\r\n",
                "/c",
            ),
        ];
        let mut mine = vec![first, h1span];
        for (req, path) in cases {
            let got = send(listen, req);
            assert!(got.starts_with("HTTP/1.1 "), "{who}: {got}");
            let service = format!("{who}-h1");
            let span = rx.wait(&format!("for {path}"), |v| {
                v["service"] == service
                    && v["attributes"]["http.url"]
                        .as_str()
                        .is_some_and(|u| u.ends_with(path))
            });
            if path == "/new" {
                let id = span["span_id"].as_str().unwrap();
                let t = span["trace_id"].as_str().unwrap();
                assert!(
                    got.contains(&format!("\ntraceparent: 00-{t}-{id}-01\n")),
                    "{who}: a new context to the upstream: {got}"
                );
            }
            mine.push(span);
        }
        // The inbound listener: server spans (`ingress`; a 4xx is no error there).
        for (req, path) in [
            (
                "GET /in HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
                "/in",
            ),
            (
                "GET /in404 HTTP/1.1\r\nHost: nohost\r\nConnection: close\r\n\r\n",
                "/in404",
            ),
        ] {
            let got = send(listen_in, req);
            assert!(got.starts_with("HTTP/1.1 "), "{who}: {got}");
            let service = format!("{who}-h1");
            mine.push(rx.wait(&format!("for {path}"), |v| {
                v["service"] == service
                    && v["attributes"]["http.url"]
                        .as_str()
                        .is_some_and(|u| u.ends_with(path))
            }));
        }
        for s in &mine {
            assert_eq!(s["service"], format!("{who}-h1"), "{s}");
        }
        if who == "ringside" {
            ringside_only(listen, &mut rx);
        }
        spans.push(mine);
    }
    let (envoy, ringside) = (&spans[0], &spans[1]);
    assert_eq!(envoy[0]["attributes"]["http.protocol"], "HTTP/1.1");
    assert_eq!(envoy[0]["parent_span_id"], PARENT);
    assert_eq!(envoy.len(), ringside.len());
    assert_eq!(envoy[5]["kind"], 2, "a server span: {}", envoy[5]);
    for (i, (r, e)) in ringside.iter().zip(envoy).enumerate() {
        assert_eq!(
            comparable(r),
            comparable(e),
            "span {i}: ringside (left) vs Envoy (right)"
        );
    }
}

/// What ringside does beyond the Envoy comparison, as on HTTP/2 (docs/observability.md
/// #propagation): B3 single and multi contexts continued with ringside's span, an unsampled
/// context passed on as it came and its request never exported.
fn ringside_only(listen: SocketAddr, rx: &mut Receiver) {
    let unsampled = "4".repeat(32);
    let got = send(
        listen,
        &format!(
            "GET /u HTTP/1.1\r\nHost: svc\r\ntraceparent: 00-{unsampled}-{PARENT}-00\r\n\
             Connection: close\r\n\r\n"
        ),
    );
    assert!(
        got.contains(&format!("\ntraceparent: 00-{unsampled}-{PARENT}-00\n")),
        "an unsampled context goes on untouched: {got}"
    );
    assert!(!got.contains("tracestate"), "{got}");
    // B3 multi (Java's capitalisation).
    let t = "5".repeat(32);
    let got = send(
        listen,
        &format!(
            "GET /b3multi HTTP/1.1\r\nHost: svc\r\nX-B3-TraceId: {t}\r\nX-B3-SpanId: {PARENT}\r\n\
             X-B3-Sampled: 1\r\nConnection: close\r\n\r\n"
        ),
    );
    let span = rx.wait("of the B3 multi context", |v| v["trace_id"] == t);
    assert_eq!(span["parent_span_id"], PARENT, "{span}");
    let ours = span["span_id"].as_str().unwrap();
    for want in [
        format!("\nx-b3-traceid: {t}\n"),
        format!("\nx-b3-spanid: {ours}\n"),
        format!("\nx-b3-parentspanid: {PARENT}\n"),
        "\nx-b3-sampled: 1\n".to_string(),
    ] {
        assert!(got.contains(&want), "B3 multi upstream, {want:?}: {got}");
    }
    assert_eq!(got.matches("x-b3-spanid").count(), 1, "{got}");
    // B3 single, 64-bit trace id.
    let t = "6".repeat(16);
    let got = send(
        listen,
        &format!(
            "GET /b3single HTTP/1.1\r\nHost: svc\r\nb3: {t}-{PARENT}-1\r\nConnection: close\r\n\r\n"
        ),
    );
    let span = rx.wait("of the B3 single context", |v| {
        v["trace_id"].as_str().is_some_and(|id| id.ends_with(&t))
    });
    assert_eq!(span["parent_span_id"], PARENT, "{span}");
    let ours = span["span_id"].as_str().unwrap();
    assert!(
        got.contains(&format!("\nb3: {t}-{ours}-1-{PARENT}\n")),
        "B3 single upstream: {got}"
    );
    // The unsampled request went first: its span, had there been one, came before.
    assert!(
        !rx.seen.iter().any(|v| v["trace_id"] == unsampled),
        "an unsampled request was exported: {:#?}",
        rx.seen
    );
}
