//! Tracing through the binary: trace contexts (W3C, B3 single and multi) from a grpcio client
//! and a Dubbo consumer reach the upstream with ringside's span as their parent, ringside's
//! spans reach a real OTLP/gRPC receiver (grpcio with PyPI `opentelemetry-proto`,
//! tests/peers/otlp/receiver.py) with the caller's trace id and parent, unsampled calls are not
//! exported, an Envoy 1.40 in front with its OpenTelemetry tracer produces spans of the same
//! trace, and a collector that never reads drops spans (counted) without slowing calls.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use codec::dubbo::encode::{Arg, RequestBuilder};
use codec::dubbo::Status;
use common::dubbo::{Consumer, Provider};
use common::grpc::{grpc_call, CallOpts, GrpcServer, Peer};
use common::{free_port, local, Ringside};
use serde_json::{json, Value};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// The OTLP receiver process; every span it printed, in arrival order.
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

    fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    /// The first span received for which `pred` holds (waits up to 20 s: Envoy's tracer
    /// flushes every 5 s).
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

    fn of_trace(&mut self, trace: &str) -> Value {
        self.wait(&format!("of trace {trace}"), |v| v["trace_id"] == trace)
    }

    fn any(&self, pred: impl Fn(&Value) -> bool) -> bool {
        self.seen.iter().any(pred)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn traceparent(trace: &str, parent: &str, flags: &str) -> String {
    format!("00-{trace}-{parent}-{flags}")
}

/// The value of `key` the server echoed in its reply metadata.
fn echoed(outcome: &common::grpc::CallOutcome, key: &str) -> String {
    assert!(outcome.ok, "{outcome:?}");
    let prefix = format!("{key}=");
    outcome.replies[0]
        .metadata
        .iter()
        .find_map(|m| m.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("server saw no {key}: {outcome:?}"))
        .to_string()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// A ringside span: its id, checked to be a fresh one (16 hex digits, not the caller's).
fn span_id(span: &Value) -> String {
    let id = span["span_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16, "{span}");
    assert_ne!(id, PARENT, "{span}");
    id
}

fn stat(rs: &Ringside, name: &str) -> i64 {
    rs.get("/stats")
        .1
        .lines()
        .filter(|l| l.starts_with("tracing.") && l.contains(&format!(".{name}:")))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<i64>().ok())
        .sum()
}

fn tracing_yaml(collector: &str, kind: &str, sampling: &str) -> String {
    format!(
        "    tracing:\n      collector_cluster: {collector}\n      service_name: ringside-test\n      random_sampling: {sampling}\n      span_kind: {kind}\n"
    )
}

/// grpcio calls through a traced triple listener (server spans): each context format is
/// continued with ringside's span as the parent, a call without one starts a trace, an
/// unsampled one goes on untouched and is not exported.
#[test]
fn grpc_calls_continue_the_callers_trace() {
    let mut rx = Receiver::start();
    let server = GrpcServer::start(0, "S", &[]);
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg = format!(
        "admin: {{address: {admin}}}\nlisteners:\n  - name: grpc\n    address: {listen}\n    protocol: triple\n    cluster: greeter\n{}clusters:\n  - name: greeter\n    endpoints: [\"{}\"]\n  - name: otel\n    endpoints: [\"{}\"]\n",
        tracing_yaml("otel", "server", "100"),
        server.addr(),
        rx.addr()
    );
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);

    // W3C, sampled: the server sees the caller's trace with ringside's span as its parent.
    let w3c = grpc_call(
        listen,
        &CallOpts::default()
            .meta("traceparent", &traceparent(TRACE, PARENT, "01"))
            .meta("tracestate", "vendor=opaque"),
    );
    let seen = echoed(&w3c, "traceparent");
    assert_eq!(echoed(&w3c, "tracestate"), "vendor=opaque");
    let span = rx.of_trace(TRACE);
    let id = span_id(&span);
    assert_eq!(seen, traceparent(TRACE, &id, "01"));
    assert_eq!(span["parent_span_id"], PARENT, "{span}");
    assert_eq!(span["service"], "ringside-test");
    assert_eq!(span["name"], "helloworld.Greeter/SayHello");
    assert_eq!(span["kind"], 2, "SPAN_KIND_SERVER: {span}");
    assert_eq!(span["status_code"], 0, "{span}");
    assert_eq!(*attr(&span, "rpc.system"), json!("grpc"));
    assert_eq!(*attr(&span, "rpc.service"), json!("helloworld.Greeter"));
    assert_eq!(*attr(&span, "rpc.method"), json!("SayHello"));
    assert_eq!(*attr(&span, "rpc.grpc.status_code"), json!(0));
    assert_eq!(*attr(&span, "network.peer.address"), json!("127.0.0.1"));
    assert_eq!(*attr(&span, "upstream_cluster"), json!("greeter"));
    assert_eq!(
        *attr(&span, "upstream_address"),
        json!(server.addr().to_string())
    );
    let (start, end) = (
        span["start"].as_u64().unwrap(),
        span["end"].as_u64().unwrap(),
    );
    assert!(start > 0 && end >= start, "{span}");

    // W3C, not sampled: forwarded as it came, no span.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let unsampled = traceparent(unsampled_trace, PARENT, "00");
    let out = grpc_call(listen, &CallOpts::default().meta("traceparent", &unsampled));
    assert_eq!(echoed(&out, "traceparent"), unsampled);

    // No context: ringside starts a sampled trace (random_sampling 100) and passes it on.
    let fresh = echoed(&grpc_call(listen, &CallOpts::default()), "traceparent");
    let parts: Vec<&str> = fresh.split('-').collect();
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{fresh}");
    let span = rx.of_trace(parts[1]);
    assert_eq!(span_id(&span), parts[2]);
    assert_eq!(span["parent_span_id"], "", "a root span: {span}");

    // B3 multi: span id and parent rewritten, the trace id kept.
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    let multi = grpc_call(
        listen,
        &CallOpts::default()
            .meta("x-b3-traceid", b3_trace)
            .meta("x-b3-spanid", PARENT)
            .meta("x-b3-sampled", "1"),
    );
    let span = rx.of_trace(b3_trace);
    assert_eq!(echoed(&multi, "x-b3-traceid"), b3_trace);
    assert_eq!(echoed(&multi, "x-b3-spanid"), span_id(&span));
    assert_eq!(echoed(&multi, "x-b3-parentspanid"), PARENT);
    assert_eq!(echoed(&multi, "x-b3-sampled"), "1");
    assert_eq!(span["parent_span_id"], PARENT);

    // B3 single, with a 64-bit trace id.
    let single = grpc_call(
        listen,
        &CallOpts::default().meta("b3", &format!("a3ce929d0e0e4736-{PARENT}-1")),
    );
    let span = rx.of_trace("0000000000000000a3ce929d0e0e4736");
    assert_eq!(
        echoed(&single, "b3"),
        format!("a3ce929d0e0e4736-{}-1-{PARENT}", span_id(&span))
    );
    assert_eq!(span["parent_span_id"], PARENT);

    // One shard, spans exported in call order: the unsampled call's would have come by now.
    assert!(
        !rx.any(|v| v["trace_id"] == unsampled_trace),
        "an unsampled call was exported: {:#?}",
        rx.seen
    );
    // The shard counts a batch as queued just after handing it to the exporter thread, which
    // may send it (and the receiver see it) first: wait for the count rather than assume it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(&rs, "spans_queued") < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stat(&rs, "spans_queued"), 4, "{}", rs.get("/stats").1);
    assert_eq!(stat(&rs, "spans_dropped"), 0);
}

/// Dubbo calls through a traced listener (client spans): a `traceparent` attachment is patched
/// in place, a call without one gets one added (its arguments intact), B3 multi attachments in
/// Java's capitalisation and B3 single ones are continued, an unsampled context goes on
/// untouched.
#[test]
fn dubbo_calls_continue_the_callers_trace() {
    let mut rx = Receiver::start();
    let p = Provider::start("A");
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg = format!(
        "admin: {{address: {admin}}}\nlisteners:\n  - name: dubbo\n    address: {listen}\n    protocol: dubbo\n    cluster: provider\n{}clusters:\n  - name: provider\n    endpoints: [\"{}\"]\n  - name: otel\n    endpoints: [\"{}\"]\n",
        tracing_yaml("otel", "client", "100"),
        p.addr,
        rx.addr()
    );
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    let mut c = Consumer::connect(listen);
    let svc = "com.example.Echo";
    let ask = |c: &mut Consumer, key: &str, attachments: &[(&str, &str)]| {
        let args = [Arg::Str(key)];
        let a = c.call(
            RequestBuilder::new(svc, "attachment")
                .args(&args)
                .attachments(attachments),
        );
        assert_eq!(a.status, Status::Ok, "{a:?}");
        a.text
    };

    let sent = traceparent(TRACE, PARENT, "01");
    let seen = ask(&mut c, "traceparent", &[("traceparent", &sent)]);
    let span = rx.of_trace(TRACE);
    let id = span_id(&span);
    assert_eq!(seen, traceparent(TRACE, &id, "01"));
    assert_eq!(span["parent_span_id"], PARENT);
    assert_eq!(span["kind"], 3, "SPAN_KIND_CLIENT: {span}");
    assert_eq!(span["name"], format!("{svc}/attachment"));
    assert_eq!(*attr(&span, "rpc.system"), json!("apache_dubbo"));
    assert_eq!(*attr(&span, "rpc.service"), json!(svc));
    assert_eq!(*attr(&span, "rpc.method"), json!("attachment"));
    assert_eq!(*attr(&span, "rpc.dubbo.status_code"), json!(20));
    assert_eq!(*attr(&span, "network.peer.address"), json!("127.0.0.1"));
    assert_eq!(*attr(&span, "network.peer.port"), json!(p.addr.port()));
    assert_eq!(*attr(&span, "upstream_cluster"), json!("provider"));

    // Unsampled: untouched, not exported.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let unsampled = traceparent(unsampled_trace, PARENT, "00");
    assert_eq!(
        ask(&mut c, "traceparent", &[("traceparent", &unsampled)]),
        unsampled
    );

    // No context: a traceparent attachment added; other attachments and arguments intact.
    let fresh = ask(&mut c, "traceparent", &[("tenant", "t1")]);
    let parts: Vec<&str> = fresh.split('-').collect();
    assert_eq!(parts.len(), 4, "{fresh}");
    let span = rx.of_trace(parts[1]);
    assert_eq!(span_id(&span), parts[2]);
    assert_eq!(span["parent_span_id"], "");
    assert_eq!(ask(&mut c, "tenant", &[("tenant", "t1")]), "t1");
    let echo = c.call(RequestBuilder::new(svc, "echo").args(&[Arg::Str("hi")]));
    assert_eq!(echo.text, "A|echo|hi");

    // B3 multi with Java's header names.
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    let b3 = [
        ("X-B3-TraceId", b3_trace),
        ("X-B3-SpanId", PARENT),
        ("X-B3-ParentSpanId", "0000000000000001"),
        ("X-B3-Sampled", "1"),
    ];
    let seen_span = ask(&mut c, "X-B3-SpanId", &b3);
    let span = rx.of_trace(b3_trace);
    assert_eq!(seen_span, span_id(&span));
    assert_eq!(ask(&mut c, "X-B3-ParentSpanId", &b3), PARENT);
    assert_eq!(span["parent_span_id"], PARENT);

    // B3 single: with a parent, span id and parent patched in place; without one, the span id
    // (the value keeps its length).
    let single_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let sent = format!("{single_trace}-{PARENT}-1-0000000000000001");
    let seen = ask(&mut c, "b3", &[("b3", &sent)]);
    let span = rx.of_trace(single_trace);
    assert_eq!(
        seen,
        format!("{single_trace}-{}-1-{PARENT}", span_id(&span))
    );
    assert_eq!(span["parent_span_id"], PARENT);
    let short_trace = "e457b5a2e4d86bd1a3ce929d0e0e4736";
    let sent = format!("{short_trace}-{PARENT}-1");
    let seen = ask(&mut c, "b3", &[("b3", &sent)]);
    let span = rx.of_trace(short_trace);
    assert_eq!(seen, format!("{short_trace}-{}-1", span_id(&span)));
    assert_eq!(span["parent_span_id"], PARENT);

    assert!(
        !rx.any(|v| v["trace_id"] == unsampled_trace),
        "an unsampled call was exported: {:#?}",
        rx.seen
    );
    assert_eq!(stat(&rs, "spans_dropped"), 0);
}

/// A Dubbo call without a context that ringside does not sample (random_sampling 0): by
/// default it still carries a new `traceparent` with flags `00` to the provider (as Envoy
/// sends the context it started); on a listener with `propagate_unsampled: false` it reaches
/// the provider untouched (no attachment added, arguments intact). Neither is exported.
#[test]
fn unsampled_new_traces_carry_a_context_unless_propagate_unsampled_is_off() {
    let mut rx = Receiver::start();
    let p = Provider::start("A");
    let (admin, loud, quiet) = (local(free_port()), local(free_port()), local(free_port()));
    let tracing = tracing_yaml("otel", "client", "0");
    let cfg = format!(
        "admin: {{address: {admin}}}\nlisteners:\n  - name: loud\n    address: {loud}\n    protocol: dubbo\n    cluster: provider\n{tracing}  - name: quiet\n    address: {quiet}\n    protocol: dubbo\n    cluster: provider\n{tracing}      propagate_unsampled: false\nclusters:\n  - name: provider\n    endpoints: [\"{}\"]\n  - name: otel\n    endpoints: [\"{}\"]\n",
        p.addr,
        rx.addr()
    );
    let _rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    let svc = "com.example.Echo";
    let ask = |to: SocketAddr, key: &str| {
        let mut c = Consumer::connect(to);
        let args = [Arg::Str(key)];
        let a = c.call(
            RequestBuilder::new(svc, "attachment")
                .args(&args)
                .attachments(&[("tenant", "t1")]),
        );
        assert_eq!(a.status, Status::Ok, "{a:?}");
        let echo = c.call(RequestBuilder::new(svc, "echo").args(&[Arg::Str("hi")]));
        assert_eq!(echo.text, "A|echo|hi");
        a.text
    };
    let sent = ask(loud, "traceparent");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!((parts[0], parts[3]), ("00", "00"), "{sent}");
    // The provider answers "-" for an attachment the request does not carry.
    assert_eq!(ask(quiet, "traceparent"), "-", "no traceparent expected");
    assert_eq!(ask(quiet, "tenant"), "t1");
    // The exporter would have sent them within 200 ms.
    std::thread::sleep(Duration::from_millis(600));
    while let Ok(v) = rx.lines.try_recv() {
        rx.seen.push(v);
    }
    assert!(
        rx.seen.is_empty(),
        "unsampled calls were exported: {:#?}",
        rx.seen
    );
}

/// A grpcio client calls Envoy 1.40 (OpenTelemetry tracer, random_sampling 100), Envoy calls
/// ringside, ringside the server: Envoy's span and ringside's are one trace, ringside's the
/// child of Envoy's, and the server's parent is ringside's span.
#[test]
fn envoy_in_front_joins_the_same_trace() {
    let mut rx = Receiver::start();
    let server = GrpcServer::start(0, "S", &[]);
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg = format!(
        "admin: {{address: {admin}}}\nlisteners:\n  - name: grpc\n    address: {listen}\n    protocol: triple\n    cluster: greeter\n{}clusters:\n  - name: greeter\n    endpoints: [\"{}\"]\n  - name: otel\n    endpoints: [\"{}\"]\n",
        tracing_yaml("otel", "server", "0"),
        server.addr(),
        rx.addr()
    );
    let _rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    let (envoy_admin, front) = (local(free_port()), local(free_port()));
    let http2 = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    });
    let cluster = |name: &str, to: SocketAddr| {
        json!({
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": http2.clone(),
            "load_assignment": common::envoy::load_assignment(name, &[to]),
        })
    };
    let bootstrap = json!({
        "admin": {"address": common::envoy::socket(envoy_admin)},
        "static_resources": {
            "listeners": [{
                "name": "front",
                "address": common::envoy::socket(front),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "front",
                        "codec_type": "HTTP2",
                        "tracing": {
                            "random_sampling": {"value": 100},
                            "provider": {
                                "name": "envoy.tracers.opentelemetry",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                                    "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "1s"},
                                    "service_name": "envoy-front"
                                }
                            }
                        },
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "ringside", "timeout": "5s"}}]
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                        }]
                    }
                }]}]
            }],
            "clusters": [cluster("ringside", listen), cluster("otel", rx.addr())]
        }
    });
    let envoy = common::envoy::Envoy::start(&bootstrap, envoy_admin);
    // Envoy's tracer starts the trace (sampled); ringside's sampling (0 %) has no say in it.
    let out = grpc_call(front, &CallOpts::default());
    let seen = echoed(&out, "traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    let trace = parts[1];
    let ours = rx.wait("from ringside", |v| {
        v["trace_id"] == trace && v["service"] == "ringside-test"
    });
    let theirs = rx.wait("from Envoy", |v| {
        v["trace_id"] == trace && v["service"] == "envoy-front"
    });
    assert_eq!(
        ours["parent_span_id"],
        theirs["span_id"],
        "{ours}\n{theirs}\n{}",
        envoy.log()
    );
    assert_eq!(
        parts[2], ours["span_id"],
        "the server's parent is ringside's span"
    );
    assert_eq!(parts[3], "01");
}

/// A collector that accepts connections and never reads: spans pile up, shards drop them
/// (counted), and no call waits for the exporter.
#[test]
fn a_collector_that_never_reads_drops_spans_and_never_slows_calls() {
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let held: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
    let h = held.clone();
    std::thread::spawn(move || {
        let mut conns: Vec<TcpStream> = Vec::new();
        for c in sink.incoming().map_while(Result::ok) {
            conns.push(c);
            h.store(conns.len(), std::sync::atomic::Ordering::SeqCst);
        }
    });
    let p = Provider::start("A");
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg = format!(
        "admin: {{address: {admin}}}\nlisteners:\n  - name: dubbo\n    address: {listen}\n    protocol: dubbo\n    cluster: provider\n{}clusters:\n  - name: provider\n    endpoints: [\"{}\"]\n  - name: otel\n    endpoints: [\"{sink_addr}\"]\n",
        tracing_yaml("otel", "client", "100"),
        p.addr,
    );
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    // ~2 KiB spans (a 1 KiB interface name, twice in each): 12,000 calls make ~24 MiB, far
    // more than the queue (64 batches of 64 KiB) and one export request hold.
    let svc: &'static str = Box::leak(format!("com.example.{}", "x".repeat(1024)).into_boxed_str());
    let calls_per_conn = 3000;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Consumer::connect(listen);
                let mut slowest = Duration::ZERO;
                for _ in 0..calls_per_conn {
                    let t = Instant::now();
                    let a = c.call(RequestBuilder::new(svc, "echo"));
                    assert_eq!(a.status, Status::Ok);
                    slowest = slowest.max(t.elapsed());
                }
                slowest
            })
        })
        .collect();
    let slowest = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap();
    let total = 4 * calls_per_conn as i64;
    let deadline = Instant::now() + Duration::from_secs(3);
    let (queued, dropped) = loop {
        let (q, d) = (stat(&rs, "spans_queued"), stat(&rs, "spans_dropped"));
        if q + d == total || Instant::now() > deadline {
            break (q, d);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(queued + dropped, total, "queued {queued} dropped {dropped}");
    assert!(
        dropped > 0,
        "the stuck collector made the shard drop spans: queued {queued}"
    );
    assert!(
        held.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the exporter never connected to the collector"
    );
    // The shard never waited for the exporter (generous for a loaded CI box).
    assert!(
        slowest < Duration::from_millis(500),
        "slowest call {slowest:?}"
    );
}

/// Real peers: the sofa-rpc-node and dubbo-ssl-python consumers (no trace context) call the
/// sofa-rpc-node provider through a traced listener: every request reaches the provider with
/// a `traceparent` attachment added (after string, int, map and list arguments), the provider
/// reads it and answers, and each call's span is exported.
#[test]
fn real_dubbo_peers_accept_requests_with_an_added_traceparent() {
    use common::peers::{node, python_consumer, run_consumer, NodeProvider};
    let mut rx = Receiver::start();
    let pa = free_port();
    let _a = NodeProvider::start(pa, "A", &[]);
    let (admin, listen) = (local(free_port()), local(free_port()));
    let cfg = format!(
        "admin: {{address: {admin}}}\nlisteners:\n  - name: dubbo\n    address: {listen}\n    protocol: dubbo\n    cluster: a\n{}clusters:\n  - name: a\n    endpoints: [\"127.0.0.1:{pa}\"]\n    timeout_ms: 5000\n  - name: otel\n    endpoints: [\"{}\"]\n",
        tracing_yaml("otel", "client", "100"),
        rx.addr()
    );
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    let mut calls = 0;
    for (method, args, want) in [
        ("echo", r#"["hello"]"#, json!("hello")),
        ("add", "[40, 2]", json!(42)),
        ("map", r#"[{"k": "v", "n": 1}]"#, json!({"k": "v", "n": 1})),
        ("list", "[[1, 2, 3]]", json!([1, 2, 3])),
    ] {
        let mut c = node("consumer.js");
        c.args(["--address", &listen.to_string(), "--method", method])
            .args(["--args", args, "--count", "2"]);
        let (ok, lines) = run_consumer(c);
        assert!(ok, "{method}: {lines:?}");
        assert!(
            lines.iter().all(|l| l["result"] == want),
            "{method}: {lines:?}"
        );
        calls += 2;
        let span = rx.wait(method, |v| v["attributes"]["rpc.method"] == method);
        assert_eq!(
            *attr(&span, "rpc.service"),
            json!("com.ringside.test.EchoService")
        );
        assert_eq!(*attr(&span, "rpc.dubbo.status_code"), json!(20));
        assert_eq!(span["parent_span_id"], "", "a trace started here: {span}");
    }
    let mut p = python_consumer();
    p.args(["--address", &listen.to_string(), "--method", "add"])
        .args(["--args", "[2, 3]", "--count", "2"]);
    let (ok, lines) = run_consumer(p);
    assert!(ok && lines.iter().all(|l| l["result"] == 5), "{lines:?}");
    calls += 2;
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(&rs, "spans_queued") < calls && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stat(&rs, "spans_queued"), calls, "{}", rs.get("/stats").1);
    assert_eq!(stat(&rs, "spans_dropped"), 0);
}

/// The same xDS snapshot (an INBOUND listener whose HTTP connection manager has the
/// OpenTelemetry tracer over gRPC to an EDS cluster) given to Envoy 1.40 and to ringside, the
/// same sampled call through each: both report a server span of the caller's trace, the
/// caller's span as parent, under the service name the tracer config gives.
#[test]
fn xds_opentelemetry_tracer_spans_match_envoys() {
    use common::envoy::{bootstrap, eds_cluster, load_assignment, socket, Ads, Envoy};
    use common::xds::XdsServer;
    let mut rx = Receiver::start();
    let server = GrpcServer::start(0, "S", &[]);
    let collector = rx.addr();
    let snapshot = |who: &str, grpc: SocketAddr| {
        json!({
            "version": "v1",
            "listeners": [{
                "name": "grpc", "address": socket(grpc), "traffic_direction": "INBOUND",
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "grpc", "codec_type": "HTTP2",
                        "tracing": {
                            "random_sampling": {"value": 100},
                            "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                                "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "1s"},
                                "service_name": format!("{who}-xds")
                            }}
                        },
                        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "s"}}]}]},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                    }
                }]}]
            }],
            "clusters": [eds_cluster("s", true), eds_cluster("otel", true)],
            "endpoints": [
                load_assignment("s", &[server.addr()]),
                load_assignment("otel", &[collector])
            ]
        })
    };
    for (who, trace) in [
        ("envoy", "11111111111111111111111111111111"),
        ("ringside", "22222222222222222222222222222222"),
    ] {
        let grpc = local(free_port());
        let xds = XdsServer::start();
        xds.put(&snapshot(who, grpc)).unwrap();
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
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(grpc).is_err() {
            assert!(Instant::now() < deadline, "{who}: listener never came up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = grpc_call(
            grpc,
            &CallOpts::default().meta("traceparent", &traceparent(trace, PARENT, "01")),
        );
        let seen = echoed(&out, "traceparent");
        let span = rx.of_trace(trace);
        assert_eq!(span["service"], format!("{who}-xds"), "{span}");
        assert_eq!(span["kind"], 2, "{who}: SPAN_KIND_SERVER: {span}");
        assert_eq!(span["parent_span_id"], PARENT, "{who}: {span}");
        assert_eq!(
            seen,
            traceparent(trace, span["span_id"].as_str().unwrap(), "01"),
            "{who}"
        );
    }
}

/// Threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

/// A collector that refuses connections: each export request fails (tried twice) and is
/// counted in `tracing.export_failed`; an xDS update that takes the tracer off the listener
/// ends the collector's exporter thread.
#[test]
fn failed_exports_are_counted_and_the_exporter_ends_with_its_collector() {
    use common::envoy::{eds_cluster, load_assignment, socket};
    use common::xds::{XdsServer, LDS};
    let server = GrpcServer::start(0, "S", &[]);
    // Nobody listens there: connections are refused.
    let collector = local(free_port());
    let grpc = local(free_port());
    let snapshot = |version: &str, traced: bool| {
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "grpc", "codec_type": "HTTP2",
            "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "s"}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        });
        if traced {
            hcm["tracing"] = json!({
                "random_sampling": {"value": 100},
                "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "1s"},
                    "service_name": "refused"
                }}
            });
        }
        json!({
            "version": version,
            "listeners": [{
                "name": "grpc", "address": socket(grpc), "traffic_direction": "INBOUND",
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm
                }]}]
            }],
            "clusters": [eds_cluster("s", true), eds_cluster("otel", true)],
            "endpoints": [
                load_assignment("s", &[server.addr()]),
                load_assignment("otel", &[collector])
            ]
        })
    };
    let xds = XdsServer::start();
    xds.put(&snapshot("v1", true)).unwrap();
    let admin = local(free_port());
    let cfg = format!(
        "admin:\n  address: {admin}\nxds:\n  server: {}\n  node_id: exporter\n  mode: sotw\n",
        xds.addr()
    );
    let rs = Ringside::start(&cfg, admin, &["--shards", "1"]);
    let pid = rs.child.id();
    xds.wait_ack(LDS, "v1");
    assert_eq!(threads_named(pid, "ringside-trace"), 1, "one exporter");
    let out = grpc_call(
        grpc,
        &CallOpts::default().meta("traceparent", &traceparent(TRACE, PARENT, "01")),
    );
    assert!(out.ok, "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&rs, "export_failed") < 1 {
        assert!(Instant::now() < deadline, "{}", rs.get("/stats").1);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stat(&rs, "export_failed"), 1);
    assert_eq!(stat(&rs, "export_ok"), 0);
    // The tracer leaves the config: its exporter thread ends.
    xds.put(&snapshot("v2", false)).unwrap();
    xds.wait_ack(LDS, "v2");
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads_named(pid, "ringside-trace") > 0 {
        assert!(
            Instant::now() < deadline,
            "the exporter thread is still there"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Calls go on, untraced.
    assert!(grpc_call(grpc, &CallOpts::default()).ok);
}
