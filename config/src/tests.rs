use super::*;

const GOOD: &str = "\
admin:
  address: 127.0.0.1:15000
listeners:
  - name: out
    address: 127.0.0.1:15001
    protocol: tcp
    cluster: echo
clusters:
  - name: echo
    endpoints: [\"127.0.0.1:9000\", \"127.0.0.1:9001\"]
    lb: least_request
";

fn errors(text: &str) -> Vec<ConfigError> {
    match Config::from_yaml("c.yaml", text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.0,
    }
}

#[test]
fn source_addresses_one_per_family() {
    let with = |list: &str| {
        GOOD.replace(
            "lb: least_request",
            &format!("lb: least_request\n    source_addresses: {list}"),
        )
    };
    let c = Config::from_yaml("c.yaml", &with("[127.0.0.6, \"::6\"]")).unwrap();
    assert_eq!(c.clusters[0].source_addresses.len(), 2);
    let e = errors(&with("[127.0.0.6, 127.0.0.7]"));
    assert_eq!(e[0].field, "clusters[0].source_addresses", "{e:?}");
}

#[test]
fn good_config_loads_with_defaults() {
    let c = Config::from_yaml("c.yaml", GOOD).unwrap();
    assert_eq!(c.listeners[0].buffer_bytes, BUFFER_BYTES_DEFAULT);
    assert_eq!(c.clusters[0].lb, LbPolicy::LeastRequest);
    assert_eq!(c.drain_timeout_ms, DRAIN_TIMEOUT_MS_DEFAULT);
    assert!(c.runtime.pin);
}

#[test]
fn unknown_cluster_names_field_and_line() {
    let e = errors(&GOOD.replace("cluster: echo", "cluster: nope"));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].field, "listeners[0].cluster");
    assert_eq!(e[0].line, Some(7));
    assert!(
        e[0].message.contains("unknown cluster \"nope\""),
        "{}",
        e[0]
    );
    assert_eq!(
        e[0].to_string(),
        "c.yaml:7: field `listeners[0].cluster`: unknown cluster \"nope\" (defined: echo)"
    );
}

#[test]
fn typo_in_field_name_is_rejected_with_line() {
    let e = errors(&GOOD.replace("lb: least_request", "lbb: least_request"));
    assert_eq!(e[0].line, Some(11));
    assert!(e[0].message.contains("unknown field `lbb`"), "{}", e[0]);
    assert_eq!(e[0].field, "clusters[0]");
}

#[test]
fn bad_enum_value_is_rejected() {
    let e = errors(&GOOD.replace("protocol: tcp", "protocol: udp"));
    assert_eq!(e[0].field, "listeners[0].protocol");
    assert_eq!(e[0].line, Some(6));
    assert!(e[0].message.contains("unknown variant `udp`"), "{}", e[0]);
}

#[test]
fn bad_address_is_rejected() {
    let e = errors(&GOOD.replace("127.0.0.1:15001", "localhost"));
    assert_eq!(e[0].field, "listeners[0].address");
    assert_eq!(e[0].line, Some(5));
}

#[test]
fn several_problems_are_all_reported() {
    let text = GOOD
        .replace("cluster: echo", "cluster: nope")
        .replace(
            "endpoints: [\"127.0.0.1:9000\", \"127.0.0.1:9001\"]",
            "endpoints: []",
        )
        .replace("127.0.0.1:15001", "127.0.0.1:15000");
    let e = errors(&text);
    let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "clusters[0].endpoints",
            "listeners[0].address",
            "listeners[0].cluster"
        ]
    );
    assert_eq!(e[0].line, Some(10));
}

#[test]
fn out_of_range_values_are_rejected_not_clamped() {
    let e = errors(&GOOD.replace("lb: least_request", "connect_timeout_ms: 0"));
    assert_eq!(e[0].field, "clusters[0].connect_timeout_ms");
    let e = errors(&format!("{GOOD}runtime:\n  shards: 0\n"));
    assert_eq!(e[0].field, "runtime.shards");
    assert_eq!(e[0].line, Some(13));
}

#[test]
fn aux_cpus_are_checked_by_index() {
    let e = errors(&format!("{GOOD}runtime:\n  aux_cpus: [1, 1024, 1]\n"));
    let got: Vec<(&str, &str)> = e
        .iter()
        .map(|e| (e.field.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("runtime.aux_cpus[1]", "CPU 1024 is out of range 0..1024"),
            ("runtime.aux_cpus[2]", "CPU 1 is listed twice"),
        ]
    );
    let c = Config::from_yaml("c.yaml", &format!("{GOOD}runtime:\n  aux_cpus: [0, 3]\n")).unwrap();
    assert_eq!(c.runtime.aux_cpus, [0, 3]);
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let e = errors("listeners:\n  - name: [\n");
    assert!(e[0].line.is_some());
}

#[test]
fn poll_mode_defaults_parses_and_checks_the_budget() {
    let c = Config::from_yaml("c.yaml", GOOD).unwrap();
    assert_eq!(c.runtime.poll_mode, PollMode::Sleep);
    assert_eq!(c.runtime.spin_budget_us, SPIN_BUDGET_US_DEFAULT);
    let with = |runtime: &str| format!("runtime:\n{runtime}{GOOD}");
    let c = Config::from_yaml(
        "c.yaml",
        &with("  poll_mode: hybrid\n  spin_budget_us: 20\n"),
    )
    .unwrap();
    assert_eq!(c.runtime.poll_mode, PollMode::Hybrid);
    assert_eq!(c.runtime.spin_budget_us, 20);
    let e = errors(&with("  poll_mode: busy\n"));
    assert_eq!(e[0].line, Some(2));
    assert!(e[0].message.contains("unknown variant `busy`"), "{}", e[0]);
    let e = errors(&with("  poll_mode: hybrid\n  spin_budget_us: 0\n"));
    assert_eq!(e[0].field, "runtime.spin_budget_us");
    assert_eq!(e[0].line, Some(3));
}

#[test]
fn xds_bootstrap_parses_with_defaults_and_checks_the_server() {
    let c = Config::from_yaml(
        "t.yaml",
        "xds:\n  server: 127.0.0.1:18000\n  node_id: n1\n  mode: delta\n",
    )
    .unwrap();
    let x = c.xds.unwrap();
    assert_eq!(x.mode, XdsMode::Delta);
    assert_eq!(
        x.initial_fetch_timeout_ms,
        XDS_INITIAL_FETCH_TIMEOUT_MS_DEFAULT
    );
    let e = Config::from_yaml("t.yaml", "xds:\n  server: nowhere\n  node_id: n1\n").unwrap_err();
    assert!(e.to_string().contains("xds.server"), "{e}");
    assert!(e.0[0].line == Some(2), "{e}");
}

#[test]
fn dynamic_configs_may_have_clusters_without_endpoints() {
    let mut c = Config::default();
    c.clusters.push(Cluster {
        name: "empty".into(),
        kind: ClusterType::Static,
        endpoints: vec![],
        endpoint_metadata: Vec::new(),
        registry: None,
        lb: LbPolicy::RoundRobin,
        connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
        source_addresses: Vec::new(),
        timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
        connections_per_host: CONNECTIONS_PER_HOST_DEFAULT,
        pending_requests_max: PENDING_REQUESTS_PER_HOST_MAX_DEFAULT,
        heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
        response_bytes_max: RESPONSE_BYTES_MAX_DEFAULT,
        idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
        keepalive_interval_ms: KEEPALIVE_INTERVAL_MS_DEFAULT,
        keepalive_timeout_ms: KEEPALIVE_TIMEOUT_MS_DEFAULT,
        tcp_keepalive: None,
        tls: None,
        transport_socket_matches: Vec::new(),
        upstream_http: Default::default(),
        http2_streams_max: 0,
        requests_per_connection_max: 0,
        http2_stream_window_bytes: None,
        http2_connection_window_bytes: None,
        http2_keepalive: None,
        max_connection_duration_ms: 0,
        circuit_breakers: None,
        outlier_detection: None,
        priority_load: Vec::new(),
        priority_hosts: Vec::new(),
        overprovisioning: 0,
        locality_weighted: false,
        zone_aware: Default::default(),
        keep_alpn: false,
    });
    assert_eq!(c.validate_as(Source::File).len(), 1);
    assert!(c.validate_as(Source::Dynamic).is_empty());
}

const INTERCEPT: &str = "\
runtime:
  socket_mark: 1337
listeners:
  - name: outbound
    address: 0.0.0.0:15001
    protocol: tcp
    transparent: true
    original_destination: true
    cluster: passthrough
clusters:
  - name: passthrough
    type: original_destination
";

#[test]
fn interception_fields_load() {
    let c = Config::from_yaml("c.yaml", INTERCEPT).unwrap();
    assert_eq!(c.runtime.socket_mark, Some(1337));
    assert!(c.listeners[0].transparent && c.listeners[0].original_destination);
    assert_eq!(c.clusters[0].kind, ClusterType::OriginalDestination);
    assert!(c.clusters[0].endpoints.is_empty());
}

#[test]
fn interception_mistakes_are_refused() {
    let fields =
        |text: &str| -> Vec<String> { errors(text).into_iter().map(|e| e.field).collect() };
    assert_eq!(
        fields(&INTERCEPT.replace("socket_mark: 1337", "socket_mark: 0")),
        ["runtime.socket_mark"]
    );
    assert_eq!(
        fields(&INTERCEPT.replace("    original_destination: true\n", "")),
        ["listeners[0].cluster"]
    );
    assert_eq!(
        fields(&INTERCEPT.replace(
            "    type: original_destination\n",
            "    type: original_destination\n    endpoints: [\"127.0.0.1:1\"]\n"
        )),
        ["clusters[0].endpoints"]
    );
    let e = errors(&INTERCEPT.replace("type: original_destination", "type: dynamic"));
    assert!(e[0].message.contains("unknown variant"), "{e:?}");
    // A static cluster behind an original_destination listener would ignore the destination.
    let e = errors(&INTERCEPT.replace(
        "    type: original_destination\n",
        "    endpoints: [\"127.0.0.1:1\"]\n",
    ));
    assert_eq!(e[0].field, "listeners[0].original_destination");
    let e = errors(&INTERCEPT.replace("protocol: tcp", "protocol: dubbo"));
    assert!(
        e.iter()
            .any(|e| e.field == "listeners[0].original_destination"),
        "{e:?}"
    );
    // Its cluster is fine: a dubbo request goes to its connection's original destination.
    assert!(
        !e.iter().any(|e| e.field == "listeners[0].cluster"),
        "{e:?}"
    );
}

const VIRTUAL: &str = "\
listeners:
  - name: outbound
    address: 0.0.0.0:15001
    protocol: tcp
    original_destination: true
    cluster: passthrough
    virtual_listeners: [out_20880]
  - name: out_20880
    address: 0.0.0.0:20880
    bind: false
    protocol: dubbo
    cluster: users
clusters:
  - name: passthrough
    type: original_destination
  - name: users
    endpoints: [\"10.0.0.1:20880\"]
";

#[test]
fn virtual_listeners_load() {
    let c = Config::from_yaml("c.yaml", VIRTUAL).unwrap();
    assert_eq!(c.listeners[0].virtual_listeners, ["out_20880"]);
    assert!(c.listeners[0].bind && !c.listeners[1].bind);
    // A virtual listener may share its address with a bound one: it opens no socket.
    let shared = VIRTUAL.replace("address: 0.0.0.0:20880", "address: 0.0.0.0:15001");
    assert!(Config::from_yaml("c.yaml", &shared).is_ok());
    // The rest may go to a cluster of any type (Istio's REGISTRY_ONLY: BlackHoleCluster): the
    // original destination still picks the virtual listener.
    let rest = VIRTUAL.replace("    cluster: passthrough\n", "    cluster: users\n");
    Config::from_yaml("c.yaml", &rest).unwrap();
    // Without virtual listeners that original destination would be ignored.
    let e = errors(
        &rest
            .replace("    virtual_listeners: [out_20880]\n", "")
            .replace("    bind: false\n", ""),
    );
    assert!(
        e.iter()
            .any(|e| e.field == "listeners[0].original_destination"),
        "{e:?}"
    );
}

/// A virtual dubbo listener's catch-all chain (Istio's sniffed port): a virtual tcp listener
/// that may read the original destination; anything else there is refused.
#[test]
fn a_virtual_listeners_catch_all_chain_is_a_virtual_tcp_listener() {
    let with = |target: &str| {
        VIRTUAL.replace(
            "    cluster: users\nclusters:",
            &format!(
                "    cluster: users\n    default_filter_chain: {{listener: rest}}\n  - name: rest\n    \
                 address: 0.0.0.0:20880\n    bind: false\n    protocol: {target}\n    cluster: \
                 passthrough\n    original_destination: true\nclusters:"
            ),
        )
    };
    let c = Config::from_yaml("c.yaml", &with("tcp")).unwrap();
    assert_eq!(
        c.listeners[1]
            .default_filter_chain
            .as_ref()
            .unwrap()
            .listener
            .as_deref(),
        Some("rest")
    );
    let e = errors(&with("dubbo"));
    assert!(
        e.iter()
            .any(|e| e.field == "listeners[1].default_filter_chain.listener"),
        "{e:?}"
    );
    // Beside filter_chains it is not a catch-all: a virtual listener does not choose chains.
    let chains = with("tcp").replace(
        "    default_filter_chain:",
        "    filter_chains: [{match: {destination_port: 1}, listener: rest}]\n    default_filter_chain:",
    );
    let e = errors(&chains);
    assert!(
        e.iter().any(|e| e.field == "listeners[1].filter_chains"),
        "{e:?}"
    );
}

/// A dubbo listener may route to an original_destination cluster (Istio's `inbound|PORT||`
/// behind Aeraki's inbound chain); a tcp listener only with original_destination: true.
#[test]
fn dubbo_routes_may_use_an_original_destination_cluster() {
    let dubbo = VIRTUAL.replace(
        "    cluster: users\nclusters:",
        "    cluster: passthrough\nclusters:",
    );
    Config::from_yaml("c.yaml", &dubbo).unwrap();
    let tcp = VIRTUAL.replace("    original_destination: true\n", "");
    let e = errors(&tcp);
    assert!(e.iter().any(|e| e.field == "listeners[0].cluster"), "{e:?}");
}

#[test]
fn virtual_listener_mistakes_are_refused() {
    let first = |text: &str| -> (String, String) {
        let e = errors(text);
        (e[0].field.clone(), e[0].message.clone())
    };
    let (f, m) = first(&VIRTUAL.replace("[out_20880]", "[out_20881]"));
    assert_eq!(f, "listeners[0].virtual_listeners");
    assert!(m.contains("unknown listener \"out_20881\""), "{m}");
    // Named but bound.
    let e = errors(&VIRTUAL.replace("    bind: false\n", ""));
    assert!(
        e.iter().any(|e| e.message.contains("give it bind: false")),
        "{e:?}"
    );
    // Virtual but named by nobody.
    let (f, m) = first(&VIRTUAL.replace("    virtual_listeners: [out_20880]\n", ""));
    assert_eq!(f, "listeners[1].bind");
    assert!(m.contains("no listener hands connections"), "{m}");
    // Only an original_destination tcp listener hands connections off.
    let e = errors(&VIRTUAL.replace(
        "    original_destination: true\n    cluster: passthrough\n",
        "    cluster: users\n",
    ));
    assert!(
        e.iter()
            .any(|e| e.field == "listeners[0].virtual_listeners"),
        "{e:?}"
    );
    // A virtual listener is not transparent.
    let (f, _) = first(&VIRTUAL.replace(
        "    bind: false\n",
        "    bind: false\n    transparent: true\n",
    ));
    assert_eq!(f, "listeners[1].bind");
    // Two virtual listeners with one address.
    let two = VIRTUAL.replace("[out_20880]", "[out_20880, out_b]") + "";
    let two = two.replace(
        "clusters:\n",
        "  - name: out_b\n    address: 0.0.0.0:20880\n    bind: false\n    protocol: tcp\n    cluster: users\nclusters:\n",
    );
    let (f, m) = first(&two);
    assert_eq!(f, "listeners[0].virtual_listeners");
    assert!(m.contains("ambiguous"), "{m}");
}

#[test]
fn dpdk_section_defaults_subnet_and_listener_checks() {
    let text =
        format!("{GOOD}dpdk:\n  vdevs: [\"net_null0\"]\n  address: 10.1.2.3\n  prefix_len: 24\n");
    let c = Config::from_yaml("c.yaml", &text).unwrap();
    let d = c.dpdk.as_ref().unwrap();
    assert_eq!(d.mbufs_per_queue, DPDK_MBUFS_PER_QUEUE_DEFAULT);
    assert_eq!(d.sockets_per_shard, DPDK_SOCKETS_PER_SHARD_DEFAULT);
    assert_eq!(d.queues, 1);
    assert!(d.in_memory && !d.no_huge);
    assert!(d.in_subnet("10.1.2.200".parse().unwrap()));
    assert!(!d.in_subnet("10.1.3.1".parse().unwrap()));

    // A TCP listener on the port's address, no device, a gateway outside the subnet.
    let bad = "admin:\n  address: 127.0.0.1:15000\nlisteners:\n  - name: out\n    address: 10.1.2.3:15001\n    protocol: tcp\n    cluster: echo\nclusters:\n  - name: echo\n    endpoints: [\"127.0.0.1:9000\"]\ndpdk:\n  address: 10.1.2.3\n  prefix_len: 24\n  gateway: 10.9.9.9\n";
    let e = errors(bad);
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"listeners[0].protocol"), "{e:?}");
    assert!(fields.contains(&"dpdk"), "{e:?}");
    assert!(fields.contains(&"dpdk.gateway"), "{e:?}");

    // Two queues split the upstream source ports.
    let two = format!(
        "{GOOD}dpdk:\n  vdevs: [\"net_null0\"]\n  address: 10.1.2.3\n  prefix_len: 24\n  queues: 2\n"
    );
    let c = Config::from_yaml("c.yaml", &two).unwrap();
    let d = c.dpdk.as_ref().unwrap();
    assert_eq!(d.source_ports(0), 49_152..=57_343);
    assert_eq!(d.source_ports(1), 57_344..=65_535);
    assert_eq!(d.source_port_queue(49_152), Some(0));
    assert_eq!(d.source_port_queue(57_343), Some(0));
    assert_eq!(d.source_port_queue(57_344), Some(1));
    assert_eq!(d.source_port_queue(65_535), Some(1));
    assert_eq!(d.source_port_queue(20_880), None);
    let three = Config::from_yaml("c.yaml", &two.replace("queues: 2", "queues: 3")).unwrap();
    let d = three.dpdk.as_ref().unwrap();
    assert_eq!(d.source_ports(2), 60_074..=65_534);
    assert_eq!(d.source_port_queue(65_535), None);
}

#[test]
fn registry_sections_and_zookeeper_clusters_are_checked() {
    let errs = |yaml: &str| -> Vec<String> {
        match Config::from_yaml("t.yaml", yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.field.clone()).collect(),
        }
    };
    assert_eq!(
        errs("clusters:\n  - {name: z, type: zookeeper, registry: {interface: com.a.B}}\n"),
        ["clusters[0].type"]
    );
    assert_eq!(
        errs("registry: {addresses: ['h:1']}\nclusters:\n  - {name: z, type: zookeeper}\n"),
        ["clusters[0].registry"]
    );
    assert_eq!(
        errs("registry: {addresses: ['h:1']}\nclusters:\n  - {name: z, endpoints: ['127.0.0.1:1'], registry: {interface: a.B}}\n"),
        ["clusters[0].registry"]
    );
    assert_eq!(
        errs("registry: {addresses: ['nope'], chroot: 'x/', root: 'a/b', session_timeout_ms: 1, services: [{interface: 'a/b', listener: zz, local_port: 0}]}\n"),
        [
            "registry.addresses[0]",
            "registry.chroot",
            "registry.root",
            "registry.session_timeout_ms",
            "registry.services[0].interface",
            "registry.services[0].listener",
            "registry.services[0].local_port"
        ]
    );
    assert_eq!(
        errs("clusters:\n  - {name: s, endpoints: ['127.0.0.1:1', '127.0.0.1:2'], endpoint_metadata: [{weight: 0}]}\n"),
        ["clusters[0].endpoint_metadata", "clusters[0].endpoint_metadata[0].weight"]
    );
    assert!(errs("registry: {addresses: ['127.0.0.1:2181'], chroot: /prod}\nclusters:\n  - {name: z, type: zookeeper, registry: {interface: com.a.B, version: '1.0.0'}}\n").is_empty());
}

#[test]
fn tcp_keepalive_defaults_and_bounds() {
    let c = Config::from_yaml("c.yaml", GOOD).unwrap();
    assert_eq!(c.runtime.tcp_keepalive, TcpKeepalive::default());
    assert_eq!(
        (
            c.runtime.tcp_keepalive.enabled,
            c.runtime.tcp_keepalive.time_s
        ),
        (true, KEEPALIVE_TIME_S_DEFAULT)
    );
    assert_eq!(c.clusters[0].tcp_keepalive, None);
    let with = |runtime: &str| format!("runtime:\n{runtime}{GOOD}");
    let c = Config::from_yaml(
        "c.yaml",
        &with("  tcp_keepalive: {time_s: 30, probes: 3}\n"),
    )
    .unwrap();
    assert_eq!(
        c.runtime.tcp_keepalive,
        TcpKeepalive {
            enabled: true,
            time_s: 30,
            interval_s: KEEPALIVE_PROBE_INTERVAL_S_DEFAULT,
            probes: 3
        }
    );
    let e = errors(&with("  tcp_keepalive: {time_s: 0}\n"));
    assert_eq!(e[0].field, "runtime.tcp_keepalive.time_s");
    let e = errors(&with("  tcp_keepalive: {probes: 128}\n"));
    assert_eq!(e[0].field, "runtime.tcp_keepalive.probes");
    let e = errors(&GOOD.replace("lb: least_request", "tcp_keepalive: {interval_s: 40000}"));
    assert_eq!(e[0].field, "clusters[0].tcp_keepalive.interval_s");
}

#[test]
fn tls_fields_parse_and_their_combinations_are_checked() {
    let ok = "\
admin: {address: 127.0.0.1:15000}
listeners:
  - name: in
    address: 127.0.0.1:15001
    protocol: dubbo
    cluster: app
    tls: {mode: permissive, cert_chain: c.pem, private_key: k.pem, ca: ca.pem,
          subject_alt_names: [\"spiffe://td/ns/a/sa/b\"], alpn: [h2]}
clusters:
  - name: app
    endpoints: [\"127.0.0.1:9000\"]
    tls: {ca: ca.pem, cert_chain: c.pem, private_key: k.pem, sni: outbound_.80_._.x, alpn: [istio]}
";
    let c = Config::from_yaml("c.yaml", ok).unwrap();
    let t = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(t.mode, TlsMode::Permissive);
    assert!(t.require_client_certificate, "mutual TLS by default");
    assert!(t.session_tickets);
    assert_eq!(t.ticket_key_rotation_s, TICKET_KEY_ROTATION_S_MAX);
    // Ticket keys: rotated within 1 s ..= 6 h.
    let rotated = |s: &str| {
        ok.replace(
            "alpn: [h2]}",
            &format!("alpn: [h2], ticket_key_rotation_s: {s}}}"),
        )
    };
    let c = Config::from_yaml("c.yaml", &rotated("60")).unwrap();
    assert_eq!(
        c.listeners[0].tls.as_ref().unwrap().ticket_key_rotation_s,
        60
    );
    for bad in ["0", "21601"] {
        let e = errors(&rotated(bad));
        assert_eq!(
            e[0].field, "listeners[0].tls.ticket_key_rotation_s",
            "{e:?}"
        );
    }
    assert_eq!(
        c.clusters[0].tls.as_ref().unwrap().sni.as_deref(),
        Some("outbound_.80_._.x")
    );
    // A client certificate needs a CA to check it against.
    let e = errors(&ok.replace(" ca: ca.pem,\n", "\n"));
    assert_eq!(e[0].field, "listeners[0].tls.ca", "{e:?}");
    // A cluster's certificate and key go together.
    let e = errors(&ok.replace(
        "cert_chain: c.pem, private_key: k.pem, sni",
        "cert_chain: c.pem, sni",
    ));
    assert_eq!(e[0].field, "clusters[0].tls.private_key", "{e:?}");
    // TLS termination on a tcp listener (its proxy relays the plaintext), to a TLS cluster
    // too (the tcp proxy originates TLS); not on one that hands connections on by bytes TLS
    // would hide (filter_chains, virtual_listeners).
    let tcp = ok.replace("protocol: dubbo", "protocol: tcp");
    Config::from_yaml("c.yaml", &tcp).unwrap();
    let chains = tcp
        .replace(
            "    cluster: app\n    tls:",
            "    cluster: app\n    default_filter_chain: {listener: v}\n    tls:",
        )
        .replace(
            "clusters:\n",
            "  - {name: v, address: 127.0.0.1:15002, bind: false, protocol: tcp, cluster: app}\n\
             clusters:\n",
        );
    let e = errors(&chains);
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["listeners[0].tls.mode"], "{e:?}");
    // transport_socket_matches: each entry's tls is checked like the cluster's.
    let matches = ok.replace(
        "    tls: {ca: ca.pem, cert_chain: c.pem, private_key: k.pem, sni: outbound_.80_._.x, alpn: [istio]}\n",
        "    endpoint_metadata: [{transport_socket_match: {tlsMode: istio}}]\n    \
         transport_socket_matches:\n      - {name: tlsMode-istio, match: {tlsMode: istio}, tls: {ca: ca.pem}}\n      \
         - {name: tlsMode-disabled}\n",
    );
    let c = Config::from_yaml("c.yaml", &matches).unwrap();
    assert_eq!(c.clusters[0].transport_socket(0), 1);
    assert!(c.clusters[0].has_tls());
    let e = errors(&matches.replace("tls: {ca: ca.pem}", "tls: {sni: x}"));
    assert_eq!(
        e[0].field, "clusters[0].transport_socket_matches[0].tls.ca",
        "{e:?}"
    );
    // Unknown fields name themselves.
    let e = errors(&ok.replace("alpn: [istio]", "alpn: [istio], verify: none"));
    assert!(e[0].message.contains("verify"), "{e:?}");
}

#[test]
fn virtual_hosts_load_and_follow_envoys_domain_rules() {
    let base = GOOD.replace(
        "    protocol: tcp\n    cluster: echo\n",
        "    protocol: triple\n    triple:\n      ignore_port_in_host_matching: true\n      virtual_hosts:\n        - name: a\n          domains: [a.test, \"a.test:80\"]\n          routes: [{route: {cluster: echo}}]\n        - name: any\n          domains: [\"*\"]\n          routes: [{route: {cluster: echo}}]\n",
    );
    let c = Config::from_yaml("c.yaml", &base).unwrap();
    let t = c.listeners[0].triple.as_ref().unwrap();
    assert!(t.ignore_port_in_host_matching);
    assert_eq!(t.virtual_hosts[1].domains, ["*"]);
    assert_eq!(t.all_routes().count(), 2);
    let e = errors(&base.replace("domains: [\"*\"]", "domains: [A.TEST]"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        e[0].field,
        "listeners[0].triple.virtual_hosts[1].domains[0]"
    );
    assert!(
        e[0].message
            .contains("already a domain of virtual_hosts[0]"),
        "{}",
        e[0]
    );
    let e = errors(&base.replace("domains: [\"*\"]", "domains: []"));
    assert_eq!(e[0].field, "listeners[0].triple.virtual_hosts[1].domains");
    let e = errors(&base.replace(
        "      ignore_port_in_host_matching: true\n",
        "      routes: [{route: {cluster: echo}}]\n",
    ));
    assert_eq!(e[0].field, "listeners[0].triple.virtual_hosts");
    let e = errors(&base.replace(
        "routes: [{route: {cluster: echo}}]\n        - name: any",
        "routes: [{route: {cluster: nope}}]\n        - name: any",
    ));
    assert_eq!(
        e[0].field,
        "listeners[0].triple.virtual_hosts[0].routes[0].route.cluster"
    );
}

#[test]
fn local_rate_limits_load_and_are_checked() {
    let dubbo = GOOD.replace("protocol: tcp", "protocol: dubbo");
    let with = |extra: &str| {
        dubbo.replace(
            "    cluster: echo\n",
            &format!("    cluster: echo\n{extra}"),
        )
    };
    let c = Config::from_yaml(
        "c.yaml",
        &with("    local_rate_limit: {max_tokens: 10, fill_interval_ms: 100}\n"),
    )
    .unwrap();
    let b = c.listeners[0].local_rate_limit.unwrap();
    assert_eq!(
        (b.max_tokens, b.tokens_per_fill),
        (10, 1),
        "one token per fill by default"
    );
    assert_eq!(b.rate_per_second(), 10.0);
    let e = errors(&with(
        "    local_rate_limit: {max_tokens: 0, tokens_per_fill: 2, fill_interval_ms: 0}\n",
    ));
    let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "listeners[0].local_rate_limit.max_tokens",
            "listeners[0].local_rate_limit.fill_interval_ms"
        ]
    );
    let e = errors(&GOOD.replace(
        "    cluster: echo\n",
        "    cluster: echo\n    local_rate_limit: {max_tokens: 1, fill_interval_ms: 1}\n",
    ));
    assert_eq!(e[0].field, "listeners[0].local_rate_limit");
    let e = errors(&with("    dubbo:\n      routes:\n        - route: {cluster: echo}\n          local_rate_limit: {max_tokens: 1, fill_interval_ms: 90000000}\n"));
    assert_eq!(
        e[0].field,
        "listeners[0].dubbo.routes[0].local_rate_limit.fill_interval_ms"
    );
}

#[test]
fn filter_chains_load_and_are_checked() {
    let base = GOOD.replace(
        "    protocol: tcp\n    cluster: echo\n",
        "    protocol: tcp\n    original_destination: true\n    http_inspector: {disabled_ports: [[80, 81]]}\n    filter_chains:\n      - {match: {destination_port: 80, prefix_ranges: [10.0.0.0/8]}, listener: in80}\n      - {match: {transport_protocol: tls}}\n    default_filter_chain: {listener: in80}\n  - name: in80\n    address: 127.0.0.1:15001\n    bind: false\n    protocol: tcp\n    original_destination: true\n    cluster: echo\n",
    );
    let c = Config::from_yaml("c.yaml", &base).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.filter_chains[0].matcher.destination_port, Some(80));
    assert_eq!(l.filter_chains[1].listener, None);
    assert!(!l.http_inspector.as_ref().unwrap().enabled_for(80));
    let e = errors(&base.replace("10.0.0.0/8", "10.0.0.0/40"));
    assert_eq!(
        e[0].field,
        "listeners[0].filter_chains[0].match.prefix_ranges[0]"
    );
    let e = errors(&base.replace(
        "{transport_protocol: tls}",
        "{destination_port: 80, prefix_ranges: [10.0.0.0/8]}",
    ));
    assert_eq!(e[0].field, "listeners[0].filter_chains[1].match");
    let e = errors(&base.replace(
        "listener: in80}\n      - {match",
        "listener: nope}\n      - {match",
    ));
    assert_eq!(e[0].field, "listeners[0].filter_chains[0].listener");
    let e = errors(&base.replace(
        "    protocol: tcp\n    original_destination: true\n    http",
        "    protocol: dubbo\n    original_destination: true\n    http",
    ));
    assert!(
        e.iter().any(|e| e.field == "listeners[0].filter_chains"),
        "{e:?}"
    );
}

#[test]
fn tracing_parses_with_defaults_and_names_bad_fields() {
    let traced = |extra: &str| {
        GOOD.replace("protocol: tcp", "protocol: dubbo").replace(
            "    cluster: echo\n",
            &format!("    cluster: echo\n    tracing:\n      collector_cluster: echo\n{extra}"),
        )
    };
    let c = Config::from_yaml("c.yaml", &traced("")).unwrap();
    let t = c.listeners[0].tracing.as_ref().unwrap();
    assert_eq!(t.service_name, TRACING_SERVICE_NAME_DEFAULT);
    assert_eq!(t.random_sampling, Percent(100.0));
    assert_eq!(t.span_kind, SpanKind::Client);
    let c = Config::from_yaml(
        "c.yaml",
        &traced("      random_sampling: 1\n      span_kind: server\n"),
    )
    .unwrap();
    let t = c.listeners[0].tracing.as_ref().unwrap();
    assert_eq!(
        (t.random_sampling, t.span_kind),
        (Percent(1.0), SpanKind::Server)
    );
    let e = errors(&traced("      random_sampling: 101\n"));
    assert_eq!(e[0].field, "listeners[0].tracing.random_sampling");
    let e = errors(&traced("").replace("collector_cluster: echo", "collector_cluster: nope"));
    assert_eq!(e[0].field, "listeners[0].tracing.collector_cluster");
    let e = errors(&traced("").replace("protocol: dubbo", "protocol: tcp"));
    assert_eq!(e[0].field, "listeners[0].tracing");
}

#[test]
fn retry_policies_load_and_are_checked() {
    let dubbo = GOOD.replace("protocol: tcp", "protocol: dubbo");
    let route = |policy: &str| {
        dubbo.replace(
            "    cluster: echo\n",
            &format!("    cluster: echo\n    dubbo:\n      routes:\n        - route: {{cluster: echo, retry_policy: {policy}}}\n"),
        )
    };
    let c = Config::from_yaml(
        "c.yaml",
        &route("{retry_on: [reset, retriable-status-codes], retriable_status_codes: [80]}"),
    )
    .unwrap();
    let p = c.listeners[0].dubbo.as_ref().unwrap().routes[0]
        .route
        .retry_policy
        .clone()
        .unwrap();
    assert_eq!(
        (p.num_retries, p.previous_hosts, p.per_try_timeout_ms),
        (1, true, None),
        "defaults"
    );
    let at = "listeners[0].dubbo.routes[0].route.retry_policy";
    for (policy, field) in [
        ("{retry_on: [unavailable]}", "retry_on[0]"),
        ("{retry_on: [reset], num_retries: 11}", "num_retries"),
        (
            "{retry_on: [reset], per_try_timeout_ms: 0}",
            "per_try_timeout_ms",
        ),
        (
            "{retry_on: [retriable-status-codes]}",
            "retriable_status_codes",
        ),
        (
            "{retry_on: [reset], retriable_status_codes: [80]}",
            "retriable_status_codes",
        ),
        ("{retry_on: []}", "retry_on"),
        (
            "{retry_on: [retriable-status-codes], retriable_status_codes: [80, 20]}",
            "retriable_status_codes[1]",
        ),
        (
            "{retry_on: [reset], retry_back_off: {base_interval_ms: 0}}",
            "retry_back_off.base_interval_ms",
        ),
        (
            "{retry_on: [reset], retry_back_off: {base_interval_ms: 50, max_interval_ms: 40}}",
            "retry_back_off.max_interval_ms",
        ),
    ] {
        let e = errors(&route(policy));
        assert_eq!(e[0].field, format!("{at}.{field}"), "{policy}");
    }
    assert!(!errors(&route("{retry_on: [5xx]}")).is_empty());
}

#[test]
fn faults_load_and_are_checked() {
    let dubbo = GOOD.replace("protocol: tcp", "protocol: dubbo");
    let route = |fault: &str| {
        dubbo.replace(
            "    cluster: echo\n",
            &format!("    cluster: echo\n    dubbo:\n      routes:\n        - route: {{cluster: echo, fault: {fault}}}\n"),
        )
    };
    let c = Config::from_yaml(
        "c.yaml",
        &route("{delay: {fixed_delay_ms: 10, percentage: 12.5}, abort: {status: 80, percentage: 0.0001}}"),
    )
    .unwrap();
    let f = c.listeners[0].dubbo.as_ref().unwrap().routes[0]
        .route
        .fault
        .unwrap();
    assert_eq!(f.delay.unwrap().percentage, Share(125_000));
    assert_eq!(f.abort.unwrap().percentage, Share(1));
    let at = "listeners[0].dubbo.routes[0].route.fault";
    for (fault, field) in [
        ("{abort: {status: 20, percentage: 1}}", "abort.status"),
        (
            "{delay: {fixed_delay_ms: 0, percentage: 1}}",
            "delay.fixed_delay_ms",
        ),
        ("{}", ""),
    ] {
        let e = errors(&route(fault));
        let want = if field.is_empty() {
            at.to_string()
        } else {
            format!("{at}.{field}")
        };
        assert_eq!(e[0].field, want, "{fault}");
    }
    assert!(!errors(&route("{abort: {status: 80, percentage: 101}}")).is_empty());
}

#[test]
fn circuit_breakers_take_envoy_defaults_and_name_a_zero_field() {
    let with = |cb: &str| {
        GOOD.replace(
            "lb: least_request",
            &format!("lb: least_request\n    circuit_breakers: {cb}"),
        )
    };
    let c = Config::from_yaml(
        "c.yaml",
        &with("{max_connections: 2, max_pending_requests: 0}"),
    )
    .unwrap();
    assert_eq!(
        c.clusters[0].circuit_breakers,
        Some(CircuitBreakers {
            max_requests: 1024,
            max_retries: 3,
            max_connections: 2,
            max_pending_requests: 0,
            retry_budget: None,
        })
    );
    let e = errors(&with("{max_connections: 0}"));
    assert_eq!(e[0].field, "clusters[0].circuit_breakers.max_connections");
    let c = Config::from_yaml("c.yaml", &with("{retry_budget: {}}")).unwrap();
    assert_eq!(
        c.clusters[0].circuit_breakers.unwrap().retry_budget,
        Some(RetryBudget {
            budget_percent: Percent(20.0),
            min_retry_concurrency: 3,
        }),
        "Envoy's defaults"
    );
    let c = Config::from_yaml(
        "c.yaml",
        &with("{retry_budget: {budget_percent: 50, min_retry_concurrency: 1}}"),
    )
    .unwrap();
    assert_eq!(
        c.clusters[0].circuit_breakers.unwrap().retry_budget,
        Some(RetryBudget {
            budget_percent: Percent(50.0),
            min_retry_concurrency: 1,
        })
    );
    let e = errors(&with("{retry_budget: {budget_percent: 120}}"));
    assert_eq!(
        e[0].field,
        "clusters[0].circuit_breakers.retry_budget.budget_percent"
    );
}

#[test]
fn mirror_policies_load_and_are_checked() {
    let yaml = |mirrors: &str| {
        format!(
            "listeners:\n  - name: d\n    address: 127.0.0.1:20880\n    protocol: dubbo\n    cluster: a\n    dubbo:\n      routes:\n        - route: {{cluster: a, request_mirror_policies: {mirrors}}}\nclusters:\n  - name: a\n    endpoints: [\"127.0.0.1:1\"]\n  - name: s\n    endpoints: [\"127.0.0.1:2\"]\n"
        )
    };
    let c = Config::from_yaml(
        "c.yaml",
        &yaml("[{cluster: s}, {cluster: s, percentage: 12.5}]"),
    )
    .unwrap();
    let d = c.listeners[0].dubbo.as_ref().unwrap();
    let m = &d.routes[0].route.request_mirror_policies;
    assert_eq!(
        (m[0].percentage, m[1].percentage),
        (Share(1_000_000), Share(125_000))
    );
    let e = Config::from_yaml("c.yaml", &yaml("[{cluster: nope}]"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("request_mirror_policies[0].cluster") && e.contains("unknown cluster"),
        "{e}"
    );
    let five = "[{cluster: s}, {cluster: s}, {cluster: s}, {cluster: s}, {cluster: s}]";
    let e = Config::from_yaml("c.yaml", &yaml(five))
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 4"), "{e}");
    let e = Config::from_yaml("c.yaml", &yaml("[{cluster: s, percentage: 101}]"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn rbac_request_rules_only_in_the_http_filter() {
    let filters = "\
- stat_prefix: http.in.
  rules:
    action: deny
    policies:
      - name: p
        permissions:
          - url_path: {prefix: /pkg.Admin/}
          - header: {name: ':authority', regex: '(?i:admin\\..*)'}
        principals:
          - header: {name: x-user, exact: eve}
";
    let with = |at: &str, filters: &str| {
        let pad = " ".repeat(at.len() - at.trim_start().len() + 2);
        let filters: String = filters.lines().map(|l| format!("{pad}{l}\n")).collect();
        format!(
            "listeners:\n  - name: in\n    address: 127.0.0.1:15006\n    protocol: triple\n    \
             cluster: echo\n{at}\n{filters}clusters:\n  - name: echo\n    endpoints: [\"127.0.0.1:9000\"]\n"
        )
    };
    let c = Config::from_yaml("c.yaml", &with("    triple:\n      rbac:", filters)).unwrap();
    let r = &c.listeners[0].triple.as_ref().unwrap().rbac[0];
    assert_eq!(r.rules.as_ref().unwrap().policies[0].permissions.len(), 2);
    // The same rules in the network filter (per connection, no request): refused.
    let e = errors(&with("    rbac:", filters));
    assert!(
        e.iter()
            .any(|e| e.field.ends_with("permissions[0].url_path")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.field.ends_with("principals[0].header")),
        "{e:?}"
    );
    // Dubbo rules belong in dubbo.rbac.
    let e = errors(&with(
        "    triple:\n      rbac:",
        &filters.replace(
            "url_path: {prefix: /pkg.Admin/}",
            "dubbo_method: {exact: drop}",
        ),
    ));
    assert!(
        e.iter()
            .any(|e| e.field.ends_with("permissions[0].dubbo_method")),
        "{e:?}"
    );
    // A header rule needs an HTTP/2 (lower-case) name.
    let e = errors(&with(
        "    triple:\n      rbac:",
        &filters.replace("name: x-user", "name: X-User"),
    ));
    assert!(e.iter().any(|e| e.field.ends_with("header.name")), "{e:?}");
}

#[test]
fn access_log_filters_parse_and_name_bad_fields() {
    let logged = |filter: &str| {
        GOOD.replace(
            "    cluster: echo\n",
            &format!("    cluster: echo\n    access_log:\n      - path: /dev/stdout\n        filter: {filter}\n"),
        )
    };
    let c = Config::from_yaml(
        "c.yaml",
        &logged("{or: [{status_code: {op: ge, value: 30}}, {and: [{runtime_percent: 10}, {response_flags: [UT, UH]}]}]}"),
    )
    .unwrap();
    let f = c.listeners[0].access_log[0].filter.as_ref().unwrap();
    let or = f.or.as_ref().unwrap();
    assert_eq!(
        or[0].status_code,
        Some(Comparison {
            op: ComparisonOp::Ge,
            value: 30
        })
    );
    assert_eq!(
        or[1].and.as_ref().unwrap()[0].runtime_percent,
        Some(Percent(10.0))
    );
    let at = "listeners[0].access_log[0].filter";
    for (filter, field) in [
        ("{}", at.to_string()),
        (
            "{status_code: {op: eq, value: 20}, duration_ms: {op: ge, value: 5}}",
            at.to_string(),
        ),
        ("{runtime_percent: 101}", format!("{at}.runtime_percent")),
        ("{header: {name: ''}}", format!("{at}.header.name")),
        (
            "{header: {name: x-a, exact: a, prefix: b}}",
            format!("{at}.header"),
        ),
        (
            "{header: {name: x-a, regex: '('}}",
            format!("{at}.header.regex"),
        ),
        (
            "{grpc_status: {statuses: [OK, CANCELLED]}}",
            format!("{at}.grpc_status.statuses[1]"),
        ),
        (
            "{response_flags: [UH, XX]}",
            format!("{at}.response_flags[1]"),
        ),
        ("{and: [{response_flags: []}]}", format!("{at}.and")),
        (
            "{or: [{response_flags: []}, {runtime_percent: -1}]}",
            format!("{at}.or[1].runtime_percent"),
        ),
    ] {
        let e = errors(&logged(filter));
        assert_eq!(e[0].field, field, "{filter}: {e:?}");
    }
    let mut deep = "{response_flags: []}".to_string();
    for _ in 0..=ACCESS_LOG_FILTER_DEPTH_MAX {
        deep = format!("{{and: [{deep}, {{response_flags: []}}]}}");
    }
    let e = errors(&logged(&deep));
    assert!(e[0].message.contains("deeper"), "{e:?}");
    let e = errors(&logged("{status_code: {op: gt, value: 1}}"));
    assert!(!e.is_empty());
}
