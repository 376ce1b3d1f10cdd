//! The Dubbo2 proxy with real peers through the real binary: the sofa-rpc-node consumer and
//! provider and the dubbo-ssl-python consumer (installed by scripts/install-test-deps).

mod common;

use std::time::{Duration, Instant};

use common::peers::*;
use common::*;
use serde_json::json;

fn config(admin: std::net::SocketAddr, listen: std::net::SocketAddr, a: u16, b: u16) -> String {
    format!(
        "admin:\n  address: {admin}\nlisteners:\n  - name: out\n    address: {listen}\n    protocol: dubbo\n    cluster: a\n    dubbo:\n      routes:\n        - match: {{method: {{exact: whoamiB}}}}\n          route: {{cluster: b}}\n        - match: {{version: '2.0.0'}}\n          route: {{cluster: b}}\n        - match: {{group: blue}}\n          route: {{cluster: b}}\n        - match: {{interface: {{exact: com.unknown.Nothing}}}}\n          route: {{cluster: nowhere}}\nclusters:\n  - name: a\n    endpoints: [\"127.0.0.1:{a}\"]\n    timeout_ms: 5000\n  - name: b\n    endpoints: [\"127.0.0.1:{b}\"]\n  - name: nowhere\n    endpoints: [\"127.0.0.1:1\"]\n"
    )
}

fn call(
    listen: std::net::SocketAddr,
    method: &str,
    args: &str,
    extra: &[&str],
) -> (bool, Vec<serde_json::Value>) {
    let mut c = node("consumer.js");
    c.args([
        "--address",
        &listen.to_string(),
        "--method",
        method,
        "--args",
        args,
    ])
    .args(extra);
    run_consumer(c)
}

#[test]
fn node_and_python_consumers_reach_node_providers_through_ringside() {
    let (pa, pb) = (free_port(), free_port());
    let _a = NodeProvider::start(pa, "A", &[]);
    let _b = NodeProvider::start(pb, "B", &["--version", "2.0.0"]);
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rs = Ringside::start(&config(admin, listen, pa, pb), admin, &["--shards", "2"]);

    // Argument kinds, node consumer.
    for (method, args, want) in [
        ("echo", r#"["hello"]"#, json!("hello")),
        ("add", "[40, 2]", json!(42)),
        ("map", r#"[{"k": "v", "n": 1}]"#, json!({"k": "v", "n": 1})),
        ("list", "[[1, 2, 3]]", json!([1, 2, 3])),
        ("empty", "[]", json!("empty")),
        ("whoami", "[]", json!("A")),
    ] {
        let (ok, lines) = call(listen, method, args, &["--count", "2"]);
        assert!(ok, "{method}: {lines:?}");
        assert_eq!(lines.len(), 2);
        assert!(
            lines.iter().all(|l| l["result"] == want),
            "{method}: {lines:?}"
        );
    }
    // A 2 MB argument.
    let dir = TempDir::new("large");
    let big = dir.write("large.json", &format!("[\"{}\"]", "x".repeat(2 << 20)));
    let mut c = node("consumer.js");
    c.args([
        "--address",
        &listen.to_string(),
        "--method",
        "large",
        "--args-file",
    ])
    .arg(&big);
    let (ok, lines) = run_consumer(c);
    assert!(ok, "{lines:?}");
    assert_eq!(lines[0]["result"], json!(2 << 20));

    // Version 2.0.0 is routed to B (which serves 2.0.0).
    let (ok, lines) = call(listen, "whoami", "[]", &["--version", "2.0.0"]);
    assert!(ok && lines[0]["result"] == "B", "{lines:?}");

    // The python consumer.
    let mut p = python_consumer();
    p.args([
        "--address",
        &listen.to_string(),
        "--method",
        "echo",
        "--args",
        r#"["from python"]"#,
        "--count",
        "3",
    ]);
    let (ok, lines) = run_consumer(p);
    assert!(ok, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["result"] == "from python"),
        "{lines:?}"
    );
    let mut p = python_consumer();
    p.args([
        "--address",
        &listen.to_string(),
        "--method",
        "add",
        "--args",
        "[2, 3]",
    ]);
    let (ok, lines) = run_consumer(p);
    assert!(ok && lines[0]["result"] == 5, "{lines:?}");

    let (_, stats) = rs.get("/stats");
    assert!(
        stats.contains("dubbo_service.out.com.ringside.test.EchoService.echo.rsp_ok: 5"),
        "{stats}"
    );
}

#[test]
fn unknown_service_and_dead_provider_give_errors_not_hangs() {
    let (pa, pb) = (free_port(), free_port());
    let mut a = NodeProvider::start(pa, "A", &[]);
    let _b = NodeProvider::start(pb, "B", &["--version", "2.0.0"]);
    let (admin, listen) = (local(free_port()), local(free_port()));
    let _rs = Ringside::start(
        // No default route: only EchoService is routed.
        &config(admin, listen, pa, pb).replace(
            "    cluster: a\n    dubbo:\n      routes:\n",
            "    dubbo:\n      routes:\n        - match: {interface: {exact: com.ringside.test.EchoService}, method: {exact: sleep}}\n          route: {cluster: a}\n        - match: {interface: {exact: com.ringside.test.EchoService}, method: {exact: whoami}}\n          route: {cluster: a}\n",
        ),
        admin,
        &["--shards", "1"],
    );
    // No route for this interface: an error quickly, as a normal Dubbo error.
    let mut c = node("consumer.js");
    c.args([
        "--address",
        &listen.to_string(),
        "--interface",
        "com.nobody.Svc",
        "--method",
        "x",
    ]);
    let t = Instant::now();
    let (ok, lines) = run_consumer(c);
    assert!(!ok);
    let err = lines[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("no route for com.nobody.Svc"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "answered, not timed out"
    );

    // Provider killed with a request in flight: the caller gets an error at once.
    let listen_s = listen.to_string();
    let waiter = std::thread::spawn(move || {
        let mut c = node("consumer.js");
        c.args([
            "--address",
            &listen_s,
            "--method",
            "sleep",
            "--args",
            "[3000]",
            "--version",
            "1.0.0",
            "--timeout-ms",
            "10000",
        ]);
        let t = Instant::now();
        let r = run_consumer(c);
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    a.kill();
    let ((ok, lines), took) = waiter.join().unwrap();
    assert!(!ok, "{lines:?}");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("ringside: upstream"),
        "{lines:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "error at once, not after the provider's sleep: {took:?}"
    );

    // It comes back: traffic resumes.
    let _a2 = NodeProvider::start(pa, "A2", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, lines) = call(listen, "whoami", "[]", &[]);
        if ok && lines[0]["result"] == "A2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "traffic did not resume: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `dubbo.rbac` (docs/security.md#authorization): a DENY filter on interface EchoService
/// method `add`, and an ALLOW filter on the interface by prefix with a dry-run ALLOW of
/// `echo` only. Real consumers: `add` is answered status 40 with the reason, the other methods
/// go through, and the counters say so.
#[test]
fn dubbo_rbac_denies_by_interface_and_method_with_a_reason() {
    let pa = free_port();
    let _a = NodeProvider::start(pa, "A", &[]);
    let (admin, listen) = (local(free_port()), local(free_port()));
    let rbac = "    dubbo:\n      rbac:\n\
        \x20       - stat_prefix: dubbo.\n          rules:\n            action: deny\n            policies:\n\
        \x20             - name: no-add\n                permissions:\n\
        \x20                 - and_rules:\n                      - dubbo_interface: {exact: com.ringside.test.EchoService}\n\
        \x20                     - dubbo_method: {exact: add}\n                principals: [{any: true}]\n\
        \x20       - stat_prefix: dubbo.\n          shadow_rules_stat_prefix: dry_run_\n          rules:\n            policies:\n\
        \x20             - name: ringside-services\n                permissions: [{dubbo_interface: {prefix: com.ringside.}}]\n\
        \x20               principals: [{any: true}]\n          shadow_rules:\n            policies:\n\
        \x20             - name: echo-only\n                permissions: [{dubbo_method: {exact: echo}}]\n\
        \x20               principals: [{any: true}]\n      routes:\n";
    let yaml = config(admin, listen, pa, pa).replace("    dubbo:\n      routes:\n", rbac);
    let rs = Ringside::start(&yaml, admin, &["--shards", "1"]);
    let stat = |n: &str| rs.stat_value(&format!("dubbo.rbac.{n}")).unwrap_or(-1);

    let (ok, lines) = call(listen, "echo", r#"["hi"]"#, &["--count", "2"]);
    assert!(ok && lines.iter().all(|l| l["result"] == "hi"), "{lines:?}");
    // Denied: a Dubbo error with the reason, from the node and the python consumer.
    let (ok, lines) = call(listen, "add", "[40, 2]", &[]);
    assert!(!ok, "{lines:?}");
    let err = lines[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("ringside: RBAC: access denied"), "{err}");
    let mut p = python_consumer();
    p.args([
        "--address",
        &listen.to_string(),
        "--method",
        "add",
        "--args",
        "[2, 3]",
    ]);
    let (ok, lines) = run_consumer(p);
    assert!(!ok, "{lines:?}");
    assert!(
        format!("{lines:?}").contains("RBAC: access denied"),
        "{lines:?}"
    );
    // Another interface is routed only if the ALLOW filter lets it: denied too.
    let mut c = node("consumer.js");
    c.args([
        "--address",
        &listen.to_string(),
        "--interface",
        "com.other.Svc",
        "--method",
        "x",
    ]);
    let (ok, lines) = run_consumer(c);
    assert!(!ok);
    let err = lines[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("RBAC: access denied"), "{err}");
    // DENY filter: allowed echo x2 and x, denied 2 adds; ALLOW filter: allowed echo x2,
    // denied com.other.Svc; its shadow rules allowed the echoes.
    assert_eq!(
        [
            stat("allowed"),
            stat("denied"),
            stat("dry_run_.shadow_allowed"),
            stat("dry_run_.shadow_denied")
        ],
        [2 + 1 + 2, 2 + 1, 2, 1],
        "{}",
        rs.get("/stats").1
    );
    assert!(rs
        .get("/stats")
        .1
        .contains("dubbo_service.out.com.ringside.test.EchoService.echo.rsp_ok: 2"),);
}
