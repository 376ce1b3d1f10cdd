//! `/config_dump` in Envoy's `envoy.admin.v3.ConfigDump` shape (`configs`: bootstrap,
//! clusters, listeners, routes and, with `?include_eds`, endpoints dumps with their
//! `version_info`), written from the running snapshot, so tools that read Envoy's dump
//! (`istioctl proxy-config listener|cluster|route`) can read ringside's. The resources are
//! ringside's view of them, in Envoy's proto3 JSON: what decides traffic (addresses, filter
//! chains and their matches, the proxy filter and its cluster or routes, cluster types,
//! endpoints, circuit breakers, outlier detection), not every field the control plane sent.
//! Runs on an admin thread, off the shards.

use serde_json::{json, Map, Value};

use crate::config::{self, Config};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const DUBBO_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// What the dump needs besides the config.
pub struct Source<'a> {
    pub config: &'a Config,
    /// The xDS versions (`lds`, `rds`, `cds`, `eds`) of the running snapshot, if xDS built it.
    pub versions: Option<&'a std::collections::BTreeMap<String, String>>,
    /// Names of the listeners and clusters of the config file (the rest came from xDS).
    pub static_listeners: &'a std::collections::HashSet<String>,
    pub static_clusters: &'a std::collections::HashSet<String>,
    pub node: Value,
    pub include_eds: bool,
}

/// The `configs` array of Envoy's `ConfigDump`.
pub fn configs(s: &Source<'_>) -> Vec<Value> {
    let v = |k: &str| {
        s.versions
            .and_then(|m| m.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let (lds, rds, cds, eds) = (v("lds"), v("rds"), v("cds"), v("eds"));
    let mut static_clusters = Vec::new();
    let mut dynamic_clusters = Vec::new();
    for c in &s.config.clusters {
        if s.static_clusters.contains(&c.name) {
            static_clusters.push(json!({"cluster": cluster(c)}));
        } else {
            dynamic_clusters.push(json!({"version_info": cds, "cluster": cluster(c)}));
        }
    }
    let mut static_listeners = Vec::new();
    let mut dynamic_listeners = Vec::new();
    let mut routes = Vec::new();
    for l in &s.config.listeners {
        let is_static = s.static_listeners.contains(&l.name);
        if is_static {
            static_listeners.push(json!({"listener": listener(l, s.config)}));
        } else {
            dynamic_listeners.push(json!({"name": l.name, "active_state": {
                "version_info": lds, "listener": listener(l, s.config)}}));
        }
        if let Some(t) = &l.triple {
            let rc = route_configuration(&l.name, l.cluster.as_deref(), t);
            if is_static {
                routes.push(json!({"route_config": rc}));
            } else {
                routes.push(json!({"version_info": rds, "route_config": rc}));
            }
        }
    }
    let (static_routes, dynamic_routes): (Vec<Value>, Vec<Value>) = routes
        .into_iter()
        .partition(|r| r.get("version_info").is_none());
    let mut out = vec![
        json!({"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
               "bootstrap": {"node": s.node}}),
        json!({"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
               "version_info": cds, "static_clusters": static_clusters,
               "dynamic_active_clusters": dynamic_clusters}),
        json!({"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
               "version_info": lds, "static_listeners": static_listeners,
               "dynamic_listeners": dynamic_listeners}),
        json!({"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
               "static_route_configs": static_routes, "dynamic_route_configs": dynamic_routes}),
    ];
    if s.include_eds {
        let (mut st, mut dy): (Vec<Value>, Vec<Value>) = (Vec::new(), Vec::new());
        for c in &s.config.clusters {
            if c.kind == config::ClusterType::OriginalDestination {
                continue;
            }
            if s.static_clusters.contains(&c.name) {
                st.push(json!({"endpoint_config": load_assignment(c)}));
            } else {
                dy.push(json!({"version_info": eds, "endpoint_config": load_assignment(c)}));
            }
        }
        out.push(
            json!({"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
                        "static_endpoint_configs": st, "dynamic_endpoint_configs": dy}),
        );
    }
    out
}

fn socket(a: std::net::SocketAddr) -> Value {
    json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}})
}

fn duration_ms(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", ms as f64 / 1000.0)
    }
}

fn listener(l: &config::Listener, cfg: &Config) -> Value {
    let mut o = Map::new();
    o.insert("@type".into(), json!(LISTENER));
    o.insert("name".into(), json!(l.name));
    o.insert("address".into(), socket(l.address));
    let chains: Vec<Value> = if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
        vec![json!({"filters": [proxy_filter(l)]})]
    } else {
        // Each chain's connections go to its `bind: false` listener: show that one's filter.
        let served_by = |c: &config::FilterChain| {
            c.listener
                .as_ref()
                .and_then(|n| cfg.listeners.iter().find(|x| &x.name == n))
                .map(proxy_filter)
        };
        let chain = |c: &config::FilterChain| {
            let mut o = Map::new();
            if let Some(n) = &c.name {
                o.insert("name".into(), json!(n));
            }
            let m = chain_match(&c.matcher);
            if !m.is_empty() {
                o.insert("filter_chain_match".into(), Value::Object(m));
            }
            o.insert(
                "filters".into(),
                json!(served_by(c).into_iter().collect::<Vec<_>>()),
            );
            Value::Object(o)
        };
        if let Some(d) = &l.default_filter_chain {
            o.insert("default_filter_chain".into(), chain(d));
        }
        // A virtual dubbo or triple listener's own chain, beside its catch-all default one.
        let own =
            (l.protocol != config::Protocol::Tcp).then(|| json!({"filters": [proxy_filter(l)]}));
        own.into_iter()
            .chain(l.filter_chains.iter().map(chain))
            .collect()
    };
    o.insert("filter_chains".into(), Value::Array(chains));
    if !l.virtual_listeners.is_empty() {
        o.insert("use_original_dst".into(), json!(true));
    }
    if l.original_destination {
        o.insert(
            "listener_filters".into(),
            json!([{"name": "envoy.filters.listener.original_dst", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}]),
        );
    }
    if l.transparent {
        o.insert("transparent".into(), json!(true));
    }
    if !l.bind {
        o.insert("bind_to_port".into(), json!(false));
    }
    let direction = l.traffic_direction.or(match l.istio_metrics {
        Some(config::IstioReporter::Destination) => Some(config::TrafficDirection::Inbound),
        Some(config::IstioReporter::Source) => Some(config::TrafficDirection::Outbound),
        None => None,
    });
    match direction {
        Some(config::TrafficDirection::Inbound) => {
            o.insert("traffic_direction".into(), json!("INBOUND"));
        }
        Some(config::TrafficDirection::Outbound) => {
            o.insert("traffic_direction".into(), json!("OUTBOUND"));
        }
        None => {}
    }
    Value::Object(o)
}

fn chain_match(m: &config::ChainMatch) -> Map<String, Value> {
    let cidr = |r: &String| {
        let (ip, len) = r.split_once('/').unwrap_or((r.as_str(), ""));
        let mut o = json!({"address_prefix": ip});
        if let Ok(n) = len.parse::<u32>() {
            o["prefix_len"] = json!(n);
        }
        o
    };
    let mut o = Map::new();
    if let Some(p) = m.destination_port {
        o.insert("destination_port".into(), json!(p));
    }
    if !m.prefix_ranges.is_empty() {
        o.insert(
            "prefix_ranges".into(),
            json!(m.prefix_ranges.iter().map(cidr).collect::<Vec<_>>()),
        );
    }
    if !m.server_names.is_empty() {
        o.insert("server_names".into(), json!(m.server_names));
    }
    if let Some(t) = &m.transport_protocol {
        o.insert("transport_protocol".into(), json!(t));
    }
    if !m.application_protocols.is_empty() {
        o.insert(
            "application_protocols".into(),
            json!(m.application_protocols),
        );
    }
    if !m.direct_source_prefix_ranges.is_empty() {
        o.insert(
            "direct_source_prefix_ranges".into(),
            json!(m
                .direct_source_prefix_ranges
                .iter()
                .map(cidr)
                .collect::<Vec<_>>()),
        );
    }
    match m.source_type {
        config::SourceType::Any => {}
        config::SourceType::Local => {
            o.insert("source_type".into(), json!("SAME_IP_OR_LOOPBACK"));
        }
        config::SourceType::External => {
            o.insert("source_type".into(), json!("EXTERNAL"));
        }
    }
    if !m.source_prefix_ranges.is_empty() {
        o.insert(
            "source_prefix_ranges".into(),
            json!(m.source_prefix_ranges.iter().map(cidr).collect::<Vec<_>>()),
        );
    }
    if !m.source_ports.is_empty() {
        o.insert("source_ports".into(), json!(m.source_ports));
    }
    o
}

/// The network filter that serves a listener's connections.
fn proxy_filter(l: &config::Listener) -> Value {
    match l.protocol {
        config::Protocol::Tcp => json!({"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": l.name,
                             "cluster": l.cluster.clone().unwrap_or_default()}}),
        config::Protocol::Dubbo => {
            let routes: Vec<Value> = l
                .dubbo
                .iter()
                .flat_map(|d| &d.routes)
                .map(|r| {
                    let mut m = Map::new();
                    if let Some(method) = &r.matcher.method {
                        m.insert("method".into(), json!({"name": string_match(method)}));
                    }
                    json!({"match": m, "route": action(&r.route)})
                })
                .chain(l.cluster.iter().map(|c| {
                    json!({"match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
                           "route": {"cluster": c}})
                }))
                .collect();
            json!({"name": "envoy.filters.network.dubbo_proxy",
                "typed_config": {"@type": DUBBO_PROXY, "stat_prefix": l.name,
                    "protocol_type": "Dubbo", "serialization_type": "Hessian2",
                    "route_config": [{"name": l.name, "interface": "*", "routes": routes}],
                    "dubbo_filters": [{"name": "envoy.filters.dubbo.router"}]}})
        }
        config::Protocol::Triple => json!({"name": "envoy.filters.network.http_connection_manager",
            "typed_config": {"@type": HCM, "stat_prefix": l.name, "codec_type": "HTTP2",
                "rds": {"route_config_name": l.name,
                        "config_source": {"ads": {}, "resource_api_version": "V3"}},
                "http_filters": [{"name": "envoy.filters.http.router",
                                  "typed_config": {"@type": ROUTER}}]}}),
    }
}

fn string_match(m: &config::StringMatch) -> Value {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => json!({"exact": e}),
        (_, Some(p), _) => json!({"prefix": p}),
        (_, _, Some(r)) => json!({"safe_regex": {"regex": r}}),
        _ => json!({"safe_regex": {"regex": ".*"}}),
    }
}

fn action(a: &config::RouteAction) -> Value {
    let mut o = Map::new();
    if let Some(c) = &a.cluster {
        o.insert("cluster".into(), json!(c));
    } else if !a.weighted_clusters.is_empty() {
        let cs: Vec<Value> = a
            .weighted_clusters
            .iter()
            .map(|w| json!({"name": w.name, "weight": w.weight}))
            .collect();
        o.insert("weighted_clusters".into(), json!({"clusters": cs}));
    }
    if let Some(t) = a.timeout_ms {
        o.insert("timeout".into(), json!(duration_ms(t)));
    }
    Value::Object(o)
}

/// A Triple listener's routes as the RouteConfiguration its connection manager names (the
/// listener's name): its virtual hosts, or one `*` host for flat routes; a route's service
/// and method as a `:path` match (`/service/method`, or the service's prefix).
fn route_configuration(name: &str, default: Option<&str>, t: &config::TripleListener) -> Value {
    let route = |r: &config::TripleRoute| {
        let m = &r.matcher;
        let svc = m.service.as_ref().and_then(|s| s.exact.clone());
        let method = m.method.as_ref().and_then(|s| s.exact.clone());
        let mut matcher = match (&m.path, svc, method) {
            (Some(p), _, _) => {
                let mut o = match p {
                    config::PathMatch { exact: Some(v), .. } => json!({"path": v}),
                    config::PathMatch {
                        prefix: Some(v), ..
                    } => json!({"prefix": v}),
                    config::PathMatch {
                        separated_prefix: Some(v),
                        ..
                    } => json!({"path_separated_prefix": v}),
                    config::PathMatch { regex, .. } => {
                        json!({"safe_regex": {"regex": regex.clone().unwrap_or_default()}})
                    }
                };
                if p.ignore_case {
                    o["case_sensitive"] = json!(false);
                }
                o
            }
            (None, Some(s), Some(me)) => json!({"path": format!("/{s}/{me}")}),
            (None, Some(s), None) => json!({"prefix": format!("/{s}/")}),
            _ => json!({"prefix": "/"}),
        };
        if !m.query_parameters.is_empty() {
            let q: Vec<Value> = m
                .query_parameters
                .iter()
                .map(|q| match (&q.exact, &q.prefix, &q.regex) {
                    (Some(v), _, _) => json!({"name": q.name, "string_match": {"exact": v}}),
                    (_, Some(v), _) => json!({"name": q.name, "string_match": {"prefix": v}}),
                    (_, _, Some(v)) => {
                        json!({"name": q.name, "string_match": {"safe_regex": {"regex": v}}})
                    }
                    _ => json!({"name": q.name, "present_match": true}),
                })
                .collect();
            matcher["query_parameters"] = json!(q);
        }
        let mut o = json!({"match": matcher, "route": action(&r.route)});
        if let Some(n) = &r.name {
            o["name"] = json!(n);
        }
        o
    };
    let fallback = default.map(|c| json!({"match": {"prefix": "/"}, "route": {"cluster": c}}));
    let hosts: Vec<Value> = if t.virtual_hosts.is_empty() {
        let routes: Vec<Value> = t.routes.iter().map(route).chain(fallback).collect();
        vec![json!({"name": name, "domains": ["*"], "routes": routes})]
    } else {
        t.virtual_hosts
            .iter()
            .map(|h| {
                let routes: Vec<Value> = h.routes.iter().map(route).collect();
                json!({"name": h.name, "domains": h.domains, "routes": routes})
            })
            .collect()
    };
    let mut rc = json!({"@type": ROUTE, "name": name, "virtual_hosts": hosts});
    if t.ignore_port_in_host_matching {
        rc["ignore_port_in_host_matching"] = json!(true);
    }
    rc
}

fn cluster(c: &config::Cluster) -> Value {
    let mut o = Map::new();
    o.insert("@type".into(), json!(CLUSTER));
    o.insert("name".into(), json!(c.name));
    match c.kind {
        config::ClusterType::OriginalDestination => {
            o.insert("type".into(), json!("ORIGINAL_DST"));
            o.insert("lb_policy".into(), json!("CLUSTER_PROVIDED"));
        }
        _ => {
            o.insert("type".into(), json!("EDS"));
            o.insert(
                "eds_cluster_config".into(),
                json!({"eds_config": {"ads": {}, "resource_api_version": "V3"}}),
            );
            match c.lb {
                config::LbPolicy::RoundRobin => {}
                config::LbPolicy::LeastRequest => {
                    o.insert("lb_policy".into(), json!("LEAST_REQUEST"));
                }
                config::LbPolicy::Random => {
                    o.insert("lb_policy".into(), json!("RANDOM"));
                }
                config::LbPolicy::RingHash {
                    minimum_ring_size,
                    maximum_ring_size,
                } => {
                    o.insert("lb_policy".into(), json!("RING_HASH"));
                    o.insert(
                        "ring_hash_lb_config".into(),
                        json!({
                            "minimum_ring_size": minimum_ring_size.to_string(),
                            "maximum_ring_size": maximum_ring_size.to_string()
                        }),
                    );
                }
                config::LbPolicy::Maglev { table_size } => {
                    o.insert("lb_policy".into(), json!("MAGLEV"));
                    o.insert(
                        "maglev_lb_config".into(),
                        json!({"table_size": table_size.to_string()}),
                    );
                }
            }
        }
    }
    o.insert(
        "connect_timeout".into(),
        json!(duration_ms(c.connect_timeout_ms)),
    );
    if let Some(b) = c.circuit_breakers {
        let mut t = json!({"max_connections": b.max_connections, "max_pending_requests": b.max_pending_requests, "max_requests": b.max_requests, "max_retries": b.max_retries});
        if let Some(r) = b.retry_budget {
            t["retry_budget"] = json!({"budget_percent": {"value": r.budget_percent.0}, "min_retry_concurrency": r.min_retry_concurrency});
        }
        o.insert("circuit_breakers".into(), json!({ "thresholds": [t] }));
    }
    if let Some(d) = c.outlier_detection {
        let mut od = json!({"consecutive_5xx": d.consecutive_errors,
               "enforcing_consecutive_5xx": if d.consecutive_errors > 0 { 100 } else { 0 },
               "interval": duration_ms(d.interval_ms),
               "base_ejection_time": duration_ms(d.base_ejection_time_ms),
               "max_ejection_time": duration_ms(d.max_ejection_time_ms),
               "max_ejection_percent": d.max_ejection_percent,
               "enforcing_success_rate": if d.success_rate.is_some() { 100 } else { 0 },
               "enforcing_failure_percentage": if d.failure_percentage.is_some() { 100 } else { 0 }});
        if let Some(sr) = d.success_rate {
            od["success_rate_minimum_hosts"] = json!(sr.minimum_hosts);
            od["success_rate_request_volume"] = json!(sr.request_volume);
            od["success_rate_stdev_factor"] = json!(sr.stdev_factor);
        }
        if let Some(fp) = d.failure_percentage {
            od["failure_percentage_threshold"] = json!(fp.threshold);
            od["failure_percentage_minimum_hosts"] = json!(fp.minimum_hosts);
            od["failure_percentage_request_volume"] = json!(fp.request_volume);
        }
        o.insert("outlier_detection".into(), od);
    }
    Value::Object(o)
}

fn load_assignment(c: &config::Cluster) -> Value {
    let mut by_priority: std::collections::BTreeMap<u32, Vec<Value>> = Default::default();
    for (i, a) in c.endpoints.iter().enumerate() {
        let m = c.endpoint_metadata.get(i);
        let mut e = json!({"endpoint": {"address": socket(*a)}});
        if let Some(m) = m {
            e["load_balancing_weight"] = json!(m.weight);
        }
        by_priority
            .entry(m.map_or(0, |m| m.priority))
            .or_default()
            .push(e);
    }
    let endpoints: Vec<Value> = by_priority
        .into_iter()
        .map(|(p, eps)| {
            let mut o = json!({"lb_endpoints": eps});
            if p != 0 {
                o["priority"] = json!(p);
            }
            o
        })
        .collect();
    json!({"@type": ENDPOINTS, "cluster_name": c.name, "endpoints": endpoints})
}
