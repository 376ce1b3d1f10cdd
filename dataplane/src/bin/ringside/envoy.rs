//! Envoy's command line and bootstrap, as Istio's pilot-agent gives them to the proxy binary it
//! execs (`pkg/envoy/proxy.go`: `-c etc/istio/proxy/envoy-rev.json --drain-time-s 45
//! --drain-strategy immediate --local-address-ip-version v4 --file-flush-interval-msec 1000
//! --disable-hot-restart --allow-unknown-static-fields -l warning --component-log-level
//! misc:error --concurrency 2`), translated into a ringside config and run. Every flag and
//! bootstrap field is either honoured, accepted with the reason it changes nothing ringside
//! does, or refused with its name (docs/sidecar.md, "Istio").

use std::ffi::OsString;
use std::process::ExitCode;

use dataplane::config::{self, Config};
use dataplane::control::server::Overrides;
use serde_json::{json, Map, Value};

/// The Envoy arguments when the command line is Envoy's: `ringside -c FILE ...` (what
/// pilot-agent runs) or `ringside envoy ...`.
pub fn command_line(args: &[OsString]) -> Option<Vec<String>> {
    let first = args.get(1)?.to_str()?;
    let rest = match first {
        "envoy" => &args[2..],
        "-c" | "--config-path" => &args[1..],
        f if f.starts_with("--config-path=") => &args[1..],
        _ => return None,
    };
    Some(
        rest.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
    )
}

/// What the flags ask for.
#[derive(Debug, Default, PartialEq)]
pub struct Flags {
    pub config_path: Option<String>,
    pub concurrency: Option<usize>,
    pub log_level: Option<String>,
    pub drain_time_s: Option<u64>,
    pub allow_unknown_static_fields: bool,
    /// No hot-upgrade control socket (nothing written to `$TMPDIR`).
    pub disable_hot_restart: bool,
    pub validate_only: bool,
    pub service_cluster: Option<String>,
    pub service_node: Option<String>,
    pub service_zone: Option<String>,
    pub version: bool,
    /// `--log-format` is a JSON object: log JSON lines.
    pub log_json: bool,
    /// Accepted flags that change nothing here, with why (logged at start).
    pub ignored: Vec<String>,
}

/// Parses Envoy's flags (`--name value`, `--name=value`, `-c value`, `-l value`). Err names the
/// flag.
pub fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut f = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            let v = args
                .get(i)
                .cloned()
                .ok_or_else(|| format!("{name}: missing {what}"))?;
            i += 1;
            Ok(v)
        };
        let number = |v: String| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match name {
            "-c" | "--config-path" => f.config_path = Some(value("file")?),
            "--concurrency" => match number(value("number")?)? {
                0 => return Err(format!("{name}: must be at least 1")),
                n => f.concurrency = Some(n as usize),
            },
            "-l" | "--log-level" => {
                let v = value("level")?;
                let level = match v.as_str() {
                    "trace" | "debug" | "info" | "error" | "off" => v.clone(),
                    "warning" | "warn" => "warn".into(),
                    "critical" => "error".into(),
                    _ => return Err(format!("{name}: unknown log level {v:?}")),
                };
                f.log_level = Some(level);
            }
            "--drain-time-s" => f.drain_time_s = Some(number(value("seconds")?)?),
            "--drain-strategy" => match value("strategy")?.as_str() {
                "immediate" => {}
                "gradual" => f.ignored.push(
                    "--drain-strategy gradual: ringside tells every connection at once".into(),
                ),
                v => return Err(format!("{name}: {v:?} is not immediate or gradual")),
            },
            "--local-address-ip-version" => match value("v4|v6")?.as_str() {
                "v4" | "v6" => {}
                v => return Err(format!("{name}: {v:?} is not v4 or v6")),
            },
            "--file-flush-interval-msec" | "--file-flush-min-size-kb" => {
                number(value("number")?)?;
                f.ignored.push(format!(
                    "{name}: access-log writers write each batch as it arrives"
                ));
            }
            "--component-log-level" => {
                let v = value("component:level,...")?;
                if v.split(',').any(|c| c.split_once(':').is_none()) {
                    return Err(format!("{name}: {v:?} is not component:level,..."));
                }
                f.ignored
                    .push(format!("{name}: Envoy's components are not ringside's"));
            }
            "--log-format" | "--log-format-escaped" => {
                // A format that is a JSON object (`{"level":"%l",...}`, what pilot-agent passes
                // for `logAsJson`) asks for JSON lines: ringside writes its own JSON lines.
                if name == "--log-format" && value("format")?.trim_start().starts_with('{') {
                    f.log_json = true;
                } else {
                    f.ignored.push(format!(
                        "{name}: ringside writes its own text lines (a JSON object format, or \
                         application_log_config.log_format.json_format, selects its JSON lines)"
                    ));
                }
            }
            "--disable-hot-restart" => f.disable_hot_restart = true,
            "--skip-deprecated-logs" | "--ignore-unknown-dynamic-fields" => {}
            "--parent-shutdown-time-s" | "--base-id" => {
                number(value("number")?)?;
                f.ignored.push(format!(
                    "{name}: Envoy's hot restart; ringside's hot upgrade is `ringside run --upgrade`"
                ));
            }
            "--restart-epoch" => {
                if number(value("number")?)? != 0 {
                    return Err(format!(
                        "{name}: Envoy's hot restart is not supported (ringside's hot upgrade is \
                         `ringside run --upgrade`)"
                    ));
                }
            }
            "--allow-unknown-static-fields" => f.allow_unknown_static_fields = true,
            "--service-cluster" => f.service_cluster = Some(value("name")?),
            "--service-node" => f.service_node = Some(value("name")?),
            "--service-zone" => f.service_zone = Some(value("zone")?),
            "--mode" => match value("mode")?.as_str() {
                "serve" => {}
                "validate" => f.validate_only = true,
                v => return Err(format!("{name}: {v:?} is not supported (serve, validate)")),
            },
            "--version" => f.version = true,
            "--config-yaml" => {
                return Err(format!(
                    "{name}: not supported: ringside does not merge a bootstrap override into \
                     the bootstrap (Istio: ISTIO_BOOTSTRAP_OVERRIDE)"
                ))
            }
            _ => {
                return Err(format!(
                    "{name}: not an Envoy flag ringside knows (it takes those pilot-agent \
                     passes; docs/sidecar.md, \"Istio\")"
                ))
            }
        }
    }
    Ok(f)
}

/// The fields of Envoy's `envoy.config.bootstrap.v3.Bootstrap` (a field not among them is
/// "unknown": refused unless `--allow-unknown-static-fields`, as Envoy does).
const BOOTSTRAP_FIELDS: &[&str] = &[
    "node",
    "node_context_params",
    "static_resources",
    "dynamic_resources",
    "cluster_manager",
    "hds_config",
    "flags_path",
    "stats_sinks",
    "deferred_stat_options",
    "stats_config",
    "stats_flush_interval",
    "stats_flush_on_admin",
    "watchdog",
    "watchdogs",
    "tracing",
    "layered_runtime",
    "admin",
    "overload_manager",
    "enable_dispatcher_stats",
    "header_prefix",
    "stats_server_version_override",
    "use_tcp_for_dns_lookups",
    "dns_resolution_config",
    "typed_dns_resolver_config",
    "bootstrap_extensions",
    "fatal_actions",
    "config_sources",
    "default_config_source",
    "default_socket_interface",
    "certificate_provider_instances",
    "inline_headers",
    "perf_tracing_file_path",
    "default_regex_engine",
    "xds_delegate_extension",
    "xds_config_tracker_extension",
    "listener_manager",
    "application_log_config",
    "grpc_async_client_manager_config",
    "memory_allocator_manager",
    "stats_eviction_interval",
];

/// Bootstrap fields accepted without effect, with why (telemetry and tuning of Envoy's own
/// machinery; none changes where a request goes or who may send it).
const BOOTSTRAP_IGNORED: &[(&str, &str)] = &[
    ("layered_runtime", "Envoy's runtime flags (ringside's settings are its config)"),
    ("bootstrap_extensions", "Envoy extensions (internal listeners, Istio's metadata discovery)"),
    ("stats_config", "stats tags and the inclusion list shape Envoy's own stat names; ringside exports its own (docs/observability.md)"),
    ("stats_flush_interval", "stats sinks' flush period"),
    ("stats_eviction_interval", "stats eviction"),
    ("deferred_stat_options", "Envoy's lazy stat creation"),
    ("tracing", "Envoy's tracers (Zipkin, Lightstep, Datadog); ringside traces over OTLP from the listeners' tracing"),
    ("stats_sinks", "push sinks (statsd, metrics service); 15090 is scraped"),
    ("watchdog", "Envoy's thread watchdog"),
    ("watchdogs", "Envoy's thread watchdog"),
    ("enable_dispatcher_stats", "Envoy's event-loop stats"),
    ("header_prefix", "Envoy's x-envoy- header prefix"),
];

/// Translates a bootstrap (JSON or YAML) into ringside's config: Err lists each field refused.
/// `warnings` gets what is accepted without effect.
pub fn translate(
    bootstrap: &Value,
    flags: &Flags,
    warnings: &mut Vec<String>,
) -> Result<Value, Vec<String>> {
    let mut errs = Vec::new();
    let Some(b) = bootstrap.as_object() else {
        return Err(vec!["the bootstrap is not an object".into()]);
    };
    for (k, v) in b {
        if !BOOTSTRAP_FIELDS.contains(&k.as_str()) {
            match flags.allow_unknown_static_fields {
                true => warnings.push(format!("bootstrap field `{k}`: unknown, ignored")),
                false => errs.push(format!(
                    "bootstrap field `{k}`: unknown (--allow-unknown-static-fields ignores it)"
                )),
            }
        } else if let Some((_, why)) = BOOTSTRAP_IGNORED.iter().find(|(f, _)| f == k) {
            warnings.push(format!("bootstrap field `{k}`: not used: {why}"));
        } else if !matches!(
            k.as_str(),
            "node"
                | "admin"
                | "cluster_manager"
                | "static_resources"
                | "dynamic_resources"
                | "overload_manager"
                | "application_log_config"
        ) && !v.is_null()
        {
            errs.push(format!("bootstrap field `{k}`: not supported"));
        }
    }
    let mut out = Map::new();
    let mut admin = Map::new();
    // admin
    let admin_addr = match b.get("admin") {
        Some(a) => {
            for k in a
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or(Vec::new())
            {
                if !matches!(
                    k.as_str(),
                    "address" | "access_log" | "profile_path" | "access_log_path"
                ) {
                    errs.push(format!("bootstrap field `admin.{k}`: not supported"));
                }
            }
            match socket_address(&a["address"]) {
                Ok(s) => Some(s),
                Err(e) => {
                    errs.push(format!("bootstrap field `admin.address`: {e}"));
                    None
                }
            }
        }
        None => None,
    };
    if let Some(a) = &admin_addr {
        admin.insert("address".into(), json!(a));
    }
    // static clusters: by name, their one address; those ringside cannot take (a tracer's
    // STRICT_DNS cluster by host name) matter only when something it runs names them.
    let mut clusters: Vec<(String, Endpoint)> = Vec::new();
    let mut unusable: Vec<(String, String)> = Vec::new();
    let statics = &b.get("static_resources").cloned().unwrap_or(json!({}));
    for k in statics
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or(Vec::<String>::new())
    {
        if !matches!(k.as_str(), "clusters" | "listeners") {
            errs.push(format!(
                "bootstrap field `static_resources.{k}`: not supported"
            ));
        }
    }
    for (i, c) in statics["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let lb = &c["load_assignment"]["endpoints"];
        let eps: Vec<&Value> = lb
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["lb_endpoints"].as_array().into_iter().flatten())
            .collect();
        let at = format!("static_resources.clusters[{i}] ({name:?})");
        let ep = match eps.as_slice() {
            [one] => {
                let addr = &one["endpoint"]["address"];
                match addr["pipe"]["path"].as_str() {
                    Some(p) => Ok(Endpoint::Pipe(p.to_string())),
                    None => socket_address(addr).map(Endpoint::Socket),
                }
            }
            _ => Err("ringside takes static clusters of exactly one endpoint".to_string()),
        };
        match ep {
            Ok(ep) => clusters.push((name, ep)),
            Err(e) => unusable.push((name, format!("bootstrap field `{at}.load_assignment`: {e}"))),
        }
    }
    let cluster = |n: &str| clusters.iter().find(|(c, _)| c == n).map(|(_, e)| e);
    // dynamic resources: ADS
    let mut ads_cluster = None;
    if let Some(d) = b.get("dynamic_resources").and_then(Value::as_object) {
        let mut xds = Map::new();
        for (k, v) in d {
            match k.as_str() {
                "lds_config" | "cds_config" => {
                    if v.get("ads").is_none() {
                        errs.push(format!(
                            "bootstrap field `dynamic_resources.{k}`: only `ads` is supported"
                        ));
                    }
                    if k == "lds_config" {
                        if let Some(t) = v["initial_fetch_timeout"].as_str() {
                            match duration_ms(t) {
                                // Envoy's 0: wait for ever (ringside: its longest, 10 min; the
                                // pod's readiness waits for the first LDS and CDS anyway).
                                Some(0) => {
                                    xds.insert(
                                        "initial_fetch_timeout_ms".into(),
                                        json!(config::FETCH_TIMEOUT_MS_MAX),
                                    );
                                }
                                Some(ms) => {
                                    xds.insert("initial_fetch_timeout_ms".into(), json!(ms));
                                }
                                None => errs.push(format!(
                                    "bootstrap field `dynamic_resources.{k}.initial_fetch_timeout`: {t:?} is not a duration"
                                )),
                            }
                        }
                    }
                }
                "ads_config" => {
                    match v["api_type"].as_str() {
                        Some("GRPC") => {
                            xds.insert("mode".into(), json!("sotw"));
                        }
                        Some("DELTA_GRPC") => {
                            xds.insert("mode".into(), json!("delta"));
                        }
                        t => errs.push(format!(
                            "bootstrap field `dynamic_resources.ads_config.api_type`: {t:?} is not GRPC or DELTA_GRPC"
                        )),
                    }
                    match v["grpc_services"].as_array().map(Vec::as_slice) {
                        Some([g]) if g["envoy_grpc"]["cluster_name"].is_string() => {
                            ads_cluster = g["envoy_grpc"]["cluster_name"].as_str().map(String::from)
                        }
                        _ => errs.push(
                            "bootstrap field `dynamic_resources.ads_config.grpc_services`: one \
                             `envoy_grpc` service is supported"
                                .into(),
                        ),
                    }
                }
                _ => errs.push(format!(
                    "bootstrap field `dynamic_resources.{k}`: not supported"
                )),
            }
        }
        match ads_cluster.as_deref().map(|c| (c, cluster(c))) {
            Some((_, Some(Endpoint::Pipe(p)))) => {
                xds.insert("server".into(), json!(format!("unix:{p}")));
            }
            Some((_, Some(Endpoint::Socket(s)))) => {
                xds.insert("server".into(), json!(s));
            }
            Some((c, None)) => errs.push(format!(
                "bootstrap field `dynamic_resources.ads_config`: no static cluster {c:?}"
            )),
            None => {}
        }
        // node
        let node = &b.get("node").cloned().unwrap_or(json!({}));
        let id = flags
            .service_node
            .clone()
            .or_else(|| node["id"].as_str().map(String::from));
        xds.insert("node_id".into(), json!(id.unwrap_or_default()));
        let cl = flags
            .service_cluster
            .clone()
            .or_else(|| node["cluster"].as_str().map(String::from));
        xds.insert("node_cluster".into(), json!(cl.unwrap_or_default()));
        let mut loc = node["locality"].as_object().cloned().unwrap_or_default();
        if let Some(z) = &flags.service_zone {
            loc.insert("zone".into(), json!(z));
        }
        if !loc.is_empty() {
            xds.insert("locality".into(), Value::Object(loc));
        }
        if let Some(m) = node["metadata"].as_object() {
            if !m.is_empty() {
                xds.insert("node_metadata".into(), Value::Object(m.clone()));
            }
        }
        for k in node
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or(Vec::<String>::new())
        {
            if !matches!(k.as_str(), "id" | "cluster" | "locality" | "metadata") {
                errs.push(format!("bootstrap field `node.{k}`: not supported"));
            }
        }
        out.insert("xds".into(), Value::Object(xds));
    }
    // The other pipe clusters: SDS servers (pilot-agent's workload-spiffe-uds socket).
    let sds: Vec<Value> = clusters
        .iter()
        .filter(|(n, _)| Some(n.as_str()) != ads_cluster.as_deref())
        .filter_map(|(n, e)| match e {
            Endpoint::Pipe(p) => Some(json!({"name": n, "path": p})),
            Endpoint::Socket(_) => None,
        })
        .collect();
    if !sds.is_empty() {
        out.insert("sds".into(), Value::Array(sds));
    }
    // static listeners: Istio's 15090 (Prometheus, via the admin) and 15021 (readiness, via
    // the agent).
    for (i, l) in statics["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = l["name"].as_str().unwrap_or_default();
        let at = format!("static_resources.listeners[{i}] ({name:?})");
        match static_listener(l, &cluster, admin_addr.as_deref()) {
            Ok((key, addr, upstream)) => {
                if admin.contains_key(key) {
                    errs.push(format!("bootstrap field `{at}`: a second {key} listener"));
                }
                admin.insert(key.into(), json!(addr));
                if let Some(u) = upstream {
                    admin.insert("health_upstream".into(), json!(u));
                }
            }
            Err(e) => errs.push(format!("bootstrap field `{at}`: {e}")),
        }
    }
    out.insert("admin".into(), Value::Object(admin));
    // cluster_manager: the local cluster of zone-aware routing (docs/governance.md)
    if let Some(cm) = b.get("cluster_manager").and_then(Value::as_object) {
        let local = local_cluster(cm, statics, b.get("node"), flags, warnings);
        match local {
            Ok(Some((manager, cluster))) => {
                out.insert("cluster_manager".into(), manager);
                out.insert("clusters".into(), json!([cluster]));
                unusable.retain(|(n, _)| Some(n.as_str()) != cm["local_cluster_name"].as_str());
            }
            Ok(None) => {}
            Err(e) => errs.push(e),
        }
    }
    let mut named = Vec::new();
    cluster_names(&statics["listeners"], &mut named);
    named.extend(ads_cluster.clone());
    for (name, e) in unusable {
        match named.contains(&name) {
            true => errs.push(e),
            false => warnings.push(format!("static cluster {name:?}: not used: {e}")),
        }
    }
    // overload manager: only Istio's unlimited downstream connections
    if let Some(o) = b.get("overload_manager") {
        let monitors = o["resource_monitors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let unlimited = |m: &Value| {
            m["name"] == "envoy.resource_monitors.global_downstream_max_connections"
                && m["typed_config"]["max_active_downstream_connections"]
                    .as_u64()
                    .or_else(|| {
                        m["typed_config"]["max_active_downstream_connections"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                    })
                    .is_some_and(|n| n >= i32::MAX as u64)
        };
        let other_keys = o
            .as_object()
            .is_some_and(|m| m.keys().any(|k| k != "resource_monitors"));
        if other_keys || !monitors.iter().all(unlimited) {
            errs.push(
                "bootstrap field `overload_manager`: only Istio's global_downstream_max_connections \
                 of 2147483647 (no limit) is supported"
                    .into(),
            );
        }
    }
    // `b` is a Map: index only through `get` (a bootstrap without the field is the common case).
    if b.get("application_log_config")
        .is_some_and(|a| a["log_format"]["json_format"].is_object())
    {
        out.insert("_log_json".into(), json!(true));
    }
    let mut runtime = Map::new();
    if let Some(n) = flags.concurrency {
        runtime.insert("shards".into(), json!(n));
    }
    if !runtime.is_empty() {
        out.insert("runtime".into(), Value::Object(runtime));
    }
    if let Some(s) = flags.drain_time_s {
        out.insert("drain_timeout_ms".into(), json!(s.saturating_mul(1000)));
    }
    match errs.is_empty() {
        true => Ok(Value::Object(out)),
        false => Err(errs),
    }
}

enum Endpoint {
    Pipe(String),
    Socket(String),
}

/// `cluster_manager.local_cluster_name` (Envoy's zone-aware routing): ringside's
/// `cluster_manager` (with the node's locality) and the local cluster, a STATIC cluster of
/// `static_resources` (Envoy requires it there) with its endpoints and their localities.
/// `cluster_manager`'s other fields (outlier event log, load reports, ...) change no routing:
/// warned about.
fn local_cluster(
    cm: &Map<String, Value>,
    statics: &Value,
    node: Option<&Value>,
    flags: &Flags,
    warnings: &mut Vec<String>,
) -> Result<Option<(Value, Value)>, String> {
    for k in cm.keys().filter(|k| *k != "local_cluster_name") {
        warnings.push(format!(
            "bootstrap field `cluster_manager.{k}`: not used (outlier-detection event log, load \
             reports and Envoy's cluster manager tuning)"
        ));
    }
    let Some(name) = cm.get("local_cluster_name").and_then(Value::as_str) else {
        return Ok(None);
    };
    let at = "bootstrap field `cluster_manager.local_cluster_name`";
    let c = statics["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .ok_or_else(|| format!("{at}: no static cluster {name:?} (Envoy requires one)"))?;
    if !matches!(c["type"].as_str(), None | Some("STATIC")) {
        return Err(format!(
            "{at}: the local cluster {name:?} must be STATIC (its endpoints in the bootstrap)"
        ));
    }
    let mut endpoints = Vec::new();
    let mut metadata = Vec::new();
    for (i, l) in c["load_assignment"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let loc = &l["locality"];
        for (j, e) in l["lb_endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let addr = socket_address(&e["endpoint"]["address"]).map_err(|e| {
                format!("{at}: {name:?} load_assignment.endpoints[{i}].lb_endpoints[{j}]: {e}")
            })?;
            // Envoy's local cluster has one priority; unhealthy hosts are not healthy there.
            if matches!(
                e["health_status"].as_str(),
                Some("UNHEALTHY" | "DRAINING" | "TIMEOUT")
            ) {
                continue;
            }
            endpoints.push(json!(addr));
            metadata.push(json!({
                "region": loc["region"].as_str().unwrap_or_default(),
                "zone": loc["zone"].as_str().unwrap_or_default(),
                "sub_zone": loc["sub_zone"].as_str().unwrap_or_default(),
            }));
        }
    }
    let node = node.cloned().unwrap_or(json!({}));
    let mut loc = node["locality"].as_object().cloned().unwrap_or_default();
    if let Some(z) = &flags.service_zone {
        loc.insert("zone".into(), json!(z));
    }
    Ok(Some((
        json!({"local_cluster_name": name, "locality": Value::Object(loc)}),
        json!({"name": name, "endpoints": endpoints, "endpoint_metadata": metadata}),
    )))
}

/// Every `cluster` string under `v` (the clusters static listeners route to).
fn cluster_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("cluster", Value::String(c)) => out.push(c.clone()),
                    _ => cluster_names(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| cluster_names(x, out)),
        _ => {}
    }
}

/// `{socket_address: {address, port_value}}` as `ip:port`.
fn socket_address(a: &Value) -> Result<String, String> {
    let s = &a["socket_address"];
    let ip: std::net::IpAddr = s["address"]
        .as_str()
        .ok_or("not a socket_address")?
        .parse()
        .map_err(|_| format!("{} is not an IP address", s["address"]))?;
    let port = s["port_value"]
        .as_u64()
        .filter(|p| *p <= 65535)
        .ok_or_else(|| format!("port_value {} is not a port", s["port_value"]))?;
    Ok(std::net::SocketAddr::new(ip, port as u16).to_string())
}

/// One of Istio's static listeners: one `http_connection_manager` whose one route goes to a
/// static cluster, `/stats/prometheus` to the admin (→ `prometheus_address`) or `/healthz/ready`
/// to another address (→ `health_address` relaying to `health_upstream`).
fn static_listener<'a>(
    l: &Value,
    cluster: &dyn Fn(&str) -> Option<&'a Endpoint>,
    admin: Option<&str>,
) -> Result<(&'static str, String, Option<String>), String> {
    for k in l
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or(Vec::<String>::new())
    {
        if !matches!(
            k.as_str(),
            "name"
                | "address"
                | "filter_chains"
                | "ignore_global_conn_limit"
                | "bypass_overload_manager"
        ) {
            return Err(format!("field `{k}` is not supported"));
        }
    }
    let addr = socket_address(&l["address"]).map_err(|e| format!("address: {e}"))?;
    let Some([chain]) = l["filter_chains"].as_array().map(Vec::as_slice) else {
        return Err("one filter chain is supported".into());
    };
    let Some([filter]) = chain["filters"].as_array().map(Vec::as_slice) else {
        return Err("one filter is supported".into());
    };
    if chain.as_object().is_some_and(|c| c.len() != 1) {
        return Err("a filter chain with more than `filters` is not supported".into());
    }
    let hcm = &filter["typed_config"];
    if !hcm["@type"]
        .as_str()
        .is_some_and(|t| t.ends_with("HttpConnectionManager"))
    {
        return Err("only an http_connection_manager is supported".into());
    }
    for f in hcm["http_filters"].as_array().into_iter().flatten() {
        let t = f["typed_config"]["@type"].as_str().unwrap_or_default();
        // Compression of the scrape (Accept-Encoding): ringside answers uncompressed, which
        // every scraper takes.
        if !(t.ends_with(".router.v3.Router") || t.ends_with(".compressor.v3.Compressor")) {
            return Err(format!("http filter {t:?} is not supported"));
        }
    }
    let routes: Vec<&Value> = hcm["route_config"]["virtual_hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["routes"].as_array().into_iter().flatten())
        .collect();
    let [route] = routes.as_slice() else {
        return Err("one route is supported".into());
    };
    let prefix = route["match"]["prefix"].as_str().unwrap_or_default();
    let target = route["route"]["cluster"].as_str().unwrap_or_default();
    let to = match cluster(target) {
        Some(Endpoint::Socket(s)) => s.clone(),
        _ => {
            return Err(format!(
                "route to {target:?}: not a static cluster with one address"
            ))
        }
    };
    match prefix {
        "/stats/prometheus" if Some(to.as_str()) == admin => Ok(("prometheus_address", addr, None)),
        "/healthz/ready" => Ok(("health_address", addr, Some(to))),
        _ => Err(format!(
            "route {prefix:?} to {target:?}: ringside serves /stats/prometheus from its admin \
             and relays /healthz/ready only"
        )),
    }
}

/// `"0.250s"`, `"1s"`, `"0s"` as milliseconds.
fn duration_ms(s: &str) -> Option<u64> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (secs >= 0.0 && secs.is_finite()).then(|| (secs * 1000.0).round() as u64)
}

/// Runs the Envoy command line: exit 1 with every refused flag or field named.
pub fn main(args: Vec<String>) -> ExitCode {
    let flags = match parse_flags(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringside (Envoy command line): {e}");
            return ExitCode::from(1);
        }
    };
    if flags.version {
        println!(
            "ringside {} (Envoy command line)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let Some(path) = flags.config_path.clone() else {
        eprintln!("ringside (Envoy command line): -c/--config-path is required");
        return ExitCode::from(1);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ringside (Envoy command line): {path}: {e}");
            return ExitCode::from(1);
        }
    };
    let bootstrap: Value = match serde_yaml::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ringside (Envoy command line): {path}: {e}");
            return ExitCode::from(1);
        }
    };
    let mut warnings = Vec::new();
    let mut translated = match translate(&bootstrap, &flags, &mut warnings) {
        Ok(c) => c,
        Err(errs) => {
            for e in errs {
                eprintln!("ringside (Envoy command line): {path}: {e}");
            }
            return ExitCode::from(1);
        }
    };
    let log_json = translated
        .as_object_mut()
        .and_then(|o| o.remove("_log_json"))
        .is_some()
        || flags.log_json;
    super::logging::init(
        flags.log_level.as_deref().unwrap_or("info"),
        log_json,
        false,
    );
    for w in flags.ignored.iter().chain(&warnings) {
        tracing::info!("envoy command line: {w}");
    }
    let name = format!("{path} (translated from Envoy's bootstrap)");
    let cfg = match Config::from_yaml(&name, &translated.to_string()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if flags.validate_only {
        println!("{path}: ok");
        return ExitCode::SUCCESS;
    }
    let overrides = Overrides {
        shards: None,
        io: None::<config::IoMode>,
        poll_mode: None,
    };
    super::run(cfg, &overrides, false, !flags.disable_hot_restart)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn pilot_agents_command_line_parses() {
        let f = parse_flags(&args(
            "-c etc/istio/proxy/envoy-rev.json --drain-time-s 45 --drain-strategy immediate \
             --local-address-ip-version v4 --file-flush-interval-msec 1000 --disable-hot-restart \
             --allow-unknown-static-fields -l warning --component-log-level misc:error \
             --concurrency 2",
        ))
        .unwrap();
        assert_eq!(
            f.config_path.as_deref(),
            Some("etc/istio/proxy/envoy-rev.json")
        );
        assert_eq!(f.drain_time_s, Some(45));
        assert_eq!(f.concurrency, Some(2));
        assert_eq!(f.log_level.as_deref(), Some("warn"));
        assert!(f.allow_unknown_static_fields);
        assert!(f.disable_hot_restart);
    }

    /// pilot-agent's `--log-format` for `logAsJson` selects JSON lines; its text format does not.
    #[test]
    fn a_json_log_format_selects_json_lines() {
        let json = r#"{"level":"%l","time":"%Y-%m-%dT%T.%fZ","scope":"envoy %n","msg":"%j"}"#;
        let mut a = args("-c x");
        a.extend(["--log-format".to_string(), json.to_string()]);
        let f = parse_flags(&a).unwrap();
        assert!(f.log_json && f.ignored.is_empty(), "{f:?}");
        let mut a = args("-c x");
        a.push("--log-format=%Y-%m-%dT%T.%fZ\t%l\tenvoy %n\t%v".to_string());
        let f = parse_flags(&a).unwrap();
        assert!(!f.log_json && f.ignored.len() == 1, "{f:?}");
    }

    #[test]
    fn unknown_and_unsupported_flags_are_named() {
        let e = parse_flags(&args("-c x --frobnicate 1")).unwrap_err();
        assert!(e.starts_with("--frobnicate:"), "{e}");
        let e = parse_flags(&args("-c x --config-yaml {}")).unwrap_err();
        assert!(e.contains("ISTIO_BOOTSTRAP_OVERRIDE"), "{e}");
        let e = parse_flags(&args("--concurrency=zero")).unwrap_err();
        assert!(e.contains("--concurrency"), "{e}");
        assert_eq!(
            parse_flags(&args("--concurrency=3")).unwrap().concurrency,
            Some(3)
        );
    }

    /// pilot-agent's bootstrap with a tracer (`zipkin`: a STRICT_DNS cluster by host name) runs
    /// without it; the same cluster named by the ADS config is refused with its reason.
    #[test]
    fn an_unused_static_cluster_ringside_cannot_take_is_only_logged() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/istio/envoy-rev.json"
        );
        let mut b: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        b["static_resources"]["clusters"]
            .as_array_mut()
            .unwrap()
            .push(json!({
            "name": "zipkin", "type": "STRICT_DNS", "load_assignment": {"cluster_name": "zipkin",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address":
            {"address": "zipkin.istio-system", "port_value": 9411}}}}]}]}}));
        let flags = parse_flags(&args("-c x --allow-unknown-static-fields")).unwrap();
        let mut warnings = Vec::new();
        let c = translate(&b, &flags, &mut warnings).unwrap();
        assert_eq!(c["xds"]["server"], "unix:./etc/istio/proxy/XDS");
        assert_eq!(
            c["sds"][0]["path"],
            "./var/run/secrets/workload-spiffe-uds/socket"
        );
        assert_eq!(c["admin"]["health_upstream"], "127.0.0.1:15020");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("\"zipkin\": not used") && w.contains("not an IP address")),
            "{warnings:?}"
        );
        b["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] =
            json!("zipkin");
        let errs = translate(&b, &flags, &mut Vec::new()).unwrap_err();
        assert!(
            errs.iter().any(|e| e.contains("not an IP address")),
            "{errs:?}"
        );
    }

    #[test]
    fn the_command_line_is_envoys_from_minus_c_or_envoy() {
        let os = |s: &str| s.split_whitespace().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(command_line(&os("ringside -c f")).unwrap(), ["-c", "f"]);
        assert_eq!(
            command_line(&os("ringside envoy -c f")).unwrap(),
            ["-c", "f"]
        );
        assert!(command_line(&os("ringside run -c f")).is_none());
    }
}
