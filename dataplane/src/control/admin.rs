//! The admin API: a small HTTP/1.1 server on its own threads (never on a shard).
//!
//! One thread per admin listener (admin, health, Prometheus), each running a single-threaded
//! async runtime, so a slow client never delays another and a big `/config_dump` never delays
//! a health probe. One request per connection (`Connection: close`). It serves probes and
//! scrapes, not traffic; its limits, per listener:
//! - [`REQUEST_DEADLINE`]: the whole exchange, from accept to the last byte of the answer
//!   (a client that drips its request is cut there: `admin.downstream_rq_timeout`);
//! - [`CONNECTIONS_MAX`] open connections: one more evicts the oldest
//!   (`admin.downstream_cx_evicted`), so clients that hold connections open cannot lock
//!   kubelet's probes out;
//! - [`REQUEST_HEAD_BYTES_MAX`]: larger request heads are refused with 400.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use super::server::{self, ControlEvent, Shared, State};
use crate::stats::{Kind, StatId};

pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// From accept to the last byte written. Kubelet's probe timeout is 1 s by default, so a
/// client still talking after this is broken or hostile.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Open connections per admin listener; beyond it the oldest is closed.
pub const CONNECTIONS_MAX: usize = 64;

/// Which endpoints a listener serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Admin,
    /// Only `/healthz/ready` (Istio's 15021).
    Health,
    /// Only `/stats/prometheus` (Istio's 15090).
    Prometheus,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Health => "health",
            Role::Prometheus => "prometheus",
        }
    }
}

/// How often an admin thread checks whether a successor took over its socket.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Pause after an accept error such as EMFILE.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// One admin listener's counters, tagged `listener=admin|health|prometheus`. Written only by
/// that listener's thread (through shard 0's value array, which no shard writes at these
/// ids), so the single-writer rule of [`crate::stats`] holds.
#[derive(Clone, Copy)]
struct AdminStatIds {
    cx_total: StatId,
    cx_evicted: StatId,
    rq_timeout: StatId,
}

impl AdminStatIds {
    fn new(shared: &Shared, role: Role) -> Self {
        let t = [("listener", role.as_str())];
        let st = &shared.stats;
        AdminStatIds {
            cx_total: st.add("admin", "downstream_cx_total", &t, Kind::Counter),
            cx_evicted: st.add("admin", "downstream_cx_evicted", &t, Kind::Counter),
            rq_timeout: st.add("admin", "downstream_rq_timeout", &t, Kind::Counter),
        }
    }
}

/// Starts a thread per admin listener (the sockets were bound, or inherited, by the server);
/// returns the admin API's address.
pub fn start(shared: Arc<Shared>) -> Result<SocketAddr, (SocketAddr, io::Error)> {
    let a = &shared.config.admin;
    let mut admin_addr = a.address;
    for (name, sock) in &shared.sockets.admin {
        let role = match name.as_str() {
            server::ADMIN_SOCKET => Role::Admin,
            server::HEALTH_SOCKET => Role::Health,
            _ => Role::Prometheus,
        };
        let fail = |e| (a.address, e);
        let listener = sock.try_clone().map_err(fail)?;
        if role == Role::Admin {
            admin_addr = listener.local_addr().map_err(fail)?;
        }
        listener.set_nonblocking(true).map_err(fail)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(fail)?;
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("admin-{}", role.as_str()))
            .spawn(move || runtime.block_on(serve(listener, role, shared)))
            .map_err(fail)?;
    }
    Ok(admin_addr)
}

/// Accepts until a successor takes the admin sockets over, then lets the exchanges in flight
/// finish (each within its deadline).
async fn serve(listener: TcpListener, role: Role, shared: Arc<Shared>) {
    use std::sync::atomic::Ordering;
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = role.as_str(), error = %e, "admin: cannot serve");
            return;
        }
    };
    let ids = AdminStatIds::new(&shared, role);
    let stats = shared.stats.shard(0);
    let mut open: VecDeque<tokio::task::JoinHandle<()>> = VecDeque::new();
    while !shared.admin_stop.load(Ordering::Acquire) {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = tokio::time::sleep(STOP_CHECK) => continue,
        };
        let (conn, peer) = match accepted {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        stats.inc(ids.cx_total);
        open.retain(|h| !h.is_finished());
        if open.len() >= CONNECTIONS_MAX {
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
                stats.inc(ids.cx_evicted);
            }
        }
        let (shared, stats) = (shared.clone(), stats.clone());
        open.push_back(tokio::spawn(async move {
            let exchange = exchange(conn, peer, role, &shared);
            if tokio::time::timeout(REQUEST_DEADLINE, exchange)
                .await
                .is_err()
            {
                stats.inc(ids.rq_timeout);
            }
        }));
    }
    drop(listener);
    for h in open {
        let _ = h.await;
    }
}

/// Reads one request head, answers it, closes.
async fn exchange(
    mut conn: tokio::net::TcpStream,
    peer: SocketAddr,
    role: Role,
    shared: &Arc<Shared>,
) {
    use tokio::io::AsyncWriteExt;
    let resp = match read_head(&mut conn).await {
        Ok(Some((method, target))) => match (role, shared.config.admin.health_upstream) {
            (Role::Health, Some(up)) if target.split('?').next() == Some("/healthz/ready") => {
                health_upstream(up, &method, &target).await
            }
            _ => handle(&method, &target, role, peer, shared),
        },
        Ok(None) => return,
        Err(e) => Response::text(400, &format!("bad request: {e}\n")),
    };
    let _ = conn.write_all(resp.to_bytes().as_slice()).await;
    let _ = conn.shutdown().await;
}

/// Reads the request head; returns (method, target).
async fn read_head(conn: &mut tokio::net::TcpStream) -> io::Result<Option<(String, String)>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() > REQUEST_HEAD_BYTES_MAX {
            return Err(io::Error::other("request head too large"));
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::other("malformed request line"));
    };
    Ok(Some((method.to_string(), target.to_string())))
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }
    fn json(v: serde_json::Value) -> Self {
        Response {
            status: 200,
            content_type: "application/json",
            body: format!("{v:#}\n"),
        }
    }
    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.status,
            self.content_type,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

fn handle(
    method: &str,
    target: &str,
    role: Role,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let allowed = match role {
        Role::Admin => true,
        Role::Health => path == "/healthz/ready",
        Role::Prometheus => path == "/stats/prometheus",
    };
    if !allowed {
        return Response::text(404, "not found\n");
    }
    let q = Query::parse(query);
    match (method, path) {
        ("GET", "/ready") | ("GET", "/healthz/ready") => ready(shared),
        ("GET", "/server_info") => Response::json(server_info(shared)),
        ("GET", "/stats") | ("GET", "/stats/prometheus") => stats(shared, path, &q),
        ("GET", "/memory") => Response::json(memory(shared)),
        ("GET", "/config_dump") => config_dump(shared, &q),
        ("GET", "/certs") => Response::json(certs(&shared.snapshot().tls)),
        ("GET", "/listeners") => listeners(shared, q.has_value("format", "json")),
        ("GET", "/clusters") => clusters(shared, q.has_value("format", "json")),
        ("POST", "/drain") => drain(shared, "POST /drain", peer),
        ("POST", "/quitquitquit") => drain(shared, "POST /quitquitquit", peer),
        ("POST", "/drain_listeners") => drain_listeners(shared, &q, peer),
        ("POST", "/reset_counters") => {
            shared.stats.reset_counters();
            Response::text(200, "OK\n")
        }
        ("POST", "/healthcheck/fail") | ("POST", "/healthcheck/ok") => {
            let fail = path.ends_with("fail");
            let was = shared
                .health_failed
                .swap(fail, std::sync::atomic::Ordering::AcqRel);
            if was != fail {
                tracing::info!(%peer, "admin: {path}: /ready now answers {}", if fail { 503 } else { 200 });
            }
            Response::text(200, "OK\n")
        }
        ("POST", "/logging") => logging(&q),
        ("GET", "/") => Response::text(
            200,
            "ringside admin: GET /ready /server_info /memory /stats /stats?format=json \
             /stats?filter=REGEX&usedonly /stats/prometheus /config_dump /certs /listeners \
             /clusters (?format=json); POST /drain /quitquitquit \
             /drain_listeners?inboundonly&graceful /reset_counters \
             /healthcheck/fail /healthcheck/ok /logging?level=LEVEL\n",
        ),
        (
            _,
            "/drain" | "/quitquitquit" | "/drain_listeners" | "/reset_counters"
            | "/healthcheck/fail" | "/healthcheck/ok" | "/logging",
        ) => Response::text(
            405,
            &format!("Method {method} not allowed, POST required.\n"),
        ),
        _ => Response::text(404, "not found\n"),
    }
}

/// `/config_dump`: Envoy's `ConfigDump` (`configs`, for tools such as `istioctl
/// proxy-config`), and beside it ringside's own view: `version` (snapshots applied),
/// `xds_versions` and the effective `config`.
fn config_dump(shared: &Shared, q: &Query) -> Response {
    let snap = shared.snapshot();
    let versions = shared.xds_versions();
    let node = match &shared.config.xds {
        Some(x) => serde_json::json!({
            "id": x.node_id, "cluster": x.node_cluster, "user_agent_name": "ringside",
            "metadata": serde_json::to_value(&x.node_metadata).unwrap_or_default(),
        }),
        None => serde_json::json!({"user_agent_name": "ringside"}),
    };
    let configs = super::config_dump::configs(&super::config_dump::Source {
        config: &snap.config,
        versions: versions.as_ref(),
        static_listeners: &shared.static_names.0,
        static_clusters: &shared.static_names.1,
        node,
        include_eds: q.has("include_eds"),
    });
    Response::json(serde_json::json!({
        "configs": configs,
        "version": snap.version,
        "xds_versions": versions,
        "config": serde_json::to_value(&snap.config)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() })),
    }))
}

/// A request's query: `key=value` pairs and bare `key`s, percent-decoded.
struct Query(Vec<(String, Option<String>)>);

impl Query {
    fn parse(q: &str) -> Query {
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (percent_decode(k), Some(percent_decode(v))),
                    None => (percent_decode(p), None),
                })
                .collect(),
        )
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }
    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
    fn has_value(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

/// `%XX` escapes and `+` (a space, in a query).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/stats` (text, `?format=json`) and `/stats/prometheus`, each with Envoy's `filter=REGEX`
/// (searched in the stat's text name) and `usedonly`.
fn stats(shared: &Shared, path: &str, q: &Query) -> Response {
    let filter = match q.get("filter").filter(|f| !f.is_empty()) {
        Some(f) => match regex::Regex::new(f) {
            Ok(r) => Some(r),
            Err(e) => return Response::text(400, &format!("Invalid regex: {e}\n")),
        },
        None => None,
    };
    let sel = crate::stats::Select {
        filter: filter.as_ref(),
        used_only: q.has("usedonly"),
    };
    if path == "/stats/prometheus" {
        return Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: shared.stats.render_prometheus_selected(&sel),
        };
    }
    match q.get("format") {
        Some("json") => Response::json(shared.stats.render_json(&sel)),
        Some("prometheus") => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: shared.stats.render_prometheus_selected(&sel),
        },
        _ => Response::text(200, &shared.stats.render_text_selected(&sel)),
    }
}

/// What `POST /logging?level=` calls: set by the binary, which owns the log subscriber.
/// Takes the new filter (`debug`, or `dataplane=debug,xds=info`), returns the active one.
pub type LogLevelHook = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

static LOG_LEVEL_HOOK: std::sync::OnceLock<LogLevelHook> = std::sync::OnceLock::new();

/// Lets `POST /logging` change the log level (once per process).
pub fn set_log_level_hook(hook: LogLevelHook) {
    let _ = LOG_LEVEL_HOOK.set(hook);
}

/// `POST /logging?level=L` (every log), `?paths=target:L,target:L` or `?target=L` (some), as
/// Envoy's; levels are Envoy's names (`warning`, `critical` = error).
fn logging(q: &Query) -> Response {
    let usage = "usage: /logging?level=<level> (change all levels)\n\
                 usage: /logging?<name>=<level> (change single level)\n\
                 usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n\
                 levels: trace debug info warning error critical off\n";
    let level = |l: &str| -> Option<&'static str> {
        Some(match l {
            "trace" => "trace",
            "debug" => "debug",
            "info" => "info",
            "warning" | "warn" => "warn",
            "error" | "critical" => "error",
            "off" => "off",
            _ => return None,
        })
    };
    let mut directives: Vec<String> = Vec::new();
    for (k, v) in &q.0 {
        let v = v.as_deref().unwrap_or("");
        let pairs: Vec<(&str, &str)> = match k.as_str() {
            "level" => vec![("", v)],
            "paths" => v
                .split(',')
                .map(|p| p.split_once(':').unwrap_or((p, "")))
                .collect(),
            name => vec![(name, v)],
        };
        for (target, l) in pairs {
            let Some(l) = level(l) else {
                return Response::text(400, &format!("error: unknown logger level\n\n{usage}"));
            };
            let ok_target = target
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            if !ok_target {
                return Response::text(
                    400,
                    &format!("error: bad logger name {target:?}\n\n{usage}"),
                );
            }
            directives.push(if target.is_empty() {
                l.to_string()
            } else {
                format!("{target}={l}")
            });
        }
    }
    if directives.is_empty() {
        return Response::text(400, usage);
    }
    let Some(hook) = LOG_LEVEL_HOOK.get() else {
        return Response::text(503, "this process cannot change its log level\n");
    };
    match hook(&directives.join(",")) {
        Ok(active) => {
            tracing::info!(filter = %active, "admin: log level changed");
            Response::text(200, &format!("active loggers:\n  {active}\n"))
        }
        Err(e) => Response::text(400, &format!("error: {e}\n\n{usage}")),
    }
}

/// `/listeners`: Envoy's `name::address` lines, or `listener_statuses` JSON.
fn listeners(shared: &Shared, json: bool) -> Response {
    let snap = shared.snapshot();
    if json {
        let statuses: Vec<serde_json::Value> = snap
            .config
            .listeners
            .iter()
            .map(
                |l| serde_json::json!({"name": l.name, "local_address": socket_address(l.address)}),
            )
            .collect();
        return Response::json(serde_json::json!({ "listener_statuses": statuses }));
    }
    let mut out = String::new();
    for l in &snap.config.listeners {
        out.push_str(&format!("{}::{}\n", l.name, l.address));
    }
    Response::text(200, &out)
}

fn socket_address(a: SocketAddr) -> serde_json::Value {
    serde_json::json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}})
}

/// A circuit-breaker threshold ringside does not enforce, shown as Envoy shows an unlimited
/// one (Istio sets them to this).
const UNLIMITED: u32 = u32::MAX;

/// One endpoint of a cluster as `/clusters` shows it.
struct HostStatus {
    addr: SocketAddr,
    weight: u32,
    priority: u32,
    /// Its locality (EDS, or `endpoint_metadata`).
    locality: crate::config::Locality,
    ejected: bool,
    /// (name, value, is gauge), in Envoy's text order.
    stats: [(&'static str, u64, bool); 9],
}

/// `/clusters`: per cluster its circuit breakers and, per endpoint, Envoy's host stats
/// (`stats.per_host` on; 0 otherwise), weight, priority and health flags (`healthy`, or
/// `/failed_outlier_check` while outlier detection ejects it on some shard).
fn clusters(shared: &Shared, json: bool) -> Response {
    let snap = shared.snapshot();
    let st = &shared.stats;
    let via_api = snap.xds_versions.is_some();
    let mut text = String::new();
    let mut statuses = Vec::new();
    for (i, c) in snap.config.clusters.iter().enumerate() {
        let meta: std::collections::HashMap<SocketAddr, &crate::config::EndpointMetadata> = c
            .endpoints
            .iter()
            .zip(&c.endpoint_metadata)
            .map(|(a, m)| (*a, m))
            .collect();
        let mut hosts: Vec<HostStatus> = Vec::new();
        if let Some(e) = snap.endpoints.get(i) {
            let mut live: Vec<u32> = e.live.to_vec();
            live.sort_unstable();
            live.dedup();
            for k in live {
                let Some(slot) = e.slots.get(k as usize) else {
                    continue;
                };
                let ids = slot.ids;
                let total = |id| st.total(id);
                let (rq, timeout, failure) = (
                    total(ids.rq_total),
                    total(ids.rq_timeout),
                    total(ids.rq_failure),
                );
                let m = meta.get(&slot.addr);
                hosts.push(HostStatus {
                    addr: slot.addr,
                    weight: m.map(|m| m.weight).unwrap_or(1),
                    priority: m.map(|m| m.priority).unwrap_or(0),
                    locality: m.map(|m| m.locality_name()).unwrap_or_default(),
                    ejected: ids.ejected != crate::stats::SINK && (total(ids.ejected) as i64) > 0,
                    stats: [
                        ("cx_active", 0, true),
                        ("cx_connect_fail", total(ids.cx_connect_fail), false),
                        ("cx_total", total(ids.cx_total), false),
                        ("rq_active", 0, true),
                        ("rq_error", failure + timeout, false),
                        ("rq_pending_active", 0, true),
                        ("rq_success", rq.saturating_sub(failure + timeout), false),
                        ("rq_timeout", timeout, false),
                        ("rq_total", rq, false),
                    ],
                });
            }
        }
        // Envoy's default 3 retries applies without `circuit_breakers` too (docs/governance.md).
        let limits = c.circuit_breakers.map_or(
            [
                UNLIMITED,
                UNLIMITED,
                UNLIMITED,
                crate::config::MAX_RETRIES_DEFAULT,
            ],
            |b| {
                [
                    b.max_connections,
                    b.max_pending_requests,
                    b.max_requests,
                    b.max_retries,
                ]
            },
        );
        if json {
            statuses.push(cluster_json(c, &hosts, limits, via_api));
            continue;
        }
        let n = &c.name;
        text.push_str(&format!("{n}::observability_name::{n}\n"));
        if c.outlier_detection.is_some() {
            for k in [
                "success_rate_average",
                "success_rate_ejection_threshold",
                "local_origin_success_rate_average",
                "local_origin_success_rate_ejection_threshold",
            ] {
                text.push_str(&format!("{n}::outlier::{k}::-1\n"));
            }
        }
        for p in ["default_priority", "high_priority"] {
            let l = match p {
                "default_priority" => limits,
                _ => [UNLIMITED; 4],
            };
            for (k, v) in [
                "max_connections",
                "max_pending_requests",
                "max_requests",
                "max_retries",
            ]
            .iter()
            .zip(l)
            {
                text.push_str(&format!("{n}::{p}::{k}::{v}\n"));
            }
        }
        text.push_str(&format!("{n}::added_via_api::{via_api}\n"));
        for h in &hosts {
            let a = h.addr;
            for (k, v, _) in h.stats {
                text.push_str(&format!("{n}::{a}::{k}::{v}\n"));
            }
            let flags = if h.ejected {
                "/failed_outlier_check"
            } else {
                "healthy"
            };
            text.push_str(&format!(
                "{n}::{a}::hostname::\n{n}::{a}::health_flags::{flags}\n{n}::{a}::weight::{}\n\
                 {n}::{a}::region::{}\n{n}::{a}::zone::{}\n{n}::{a}::sub_zone::{}\n\
                 {n}::{a}::canary::false\n{n}::{a}::priority::{}\n\
                 {n}::{a}::success_rate::-1\n{n}::{a}::local_origin_success_rate::-1\n",
                h.weight, h.locality.region, h.locality.zone, h.locality.sub_zone, h.priority
            ));
        }
    }
    if json {
        return Response::json(serde_json::json!({ "cluster_statuses": statuses }));
    }
    Response::text(200, &text)
}

/// One cluster in Envoy's `ClusterStatus` JSON (proto3 JSON: zero values left out, 64-bit
/// counters as strings).
fn cluster_json(
    c: &crate::config::Cluster,
    hosts: &[HostStatus],
    [max_connections, max_pending_requests, max_requests, max_retries]: [u32; 4],
    via_api: bool,
) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let limit = UNLIMITED;
    let host_statuses: Vec<Value> = hosts
        .iter()
        .map(|h| {
            // Envoy lists counters first, then gauges.
            let mut stats: Vec<Value> = Vec::new();
            for gauge in [false, true] {
                for (k, v, g) in h.stats.iter().filter(|s| s.2 == gauge) {
                    let mut o = Map::new();
                    if *g {
                        o.insert("type".into(), json!("GAUGE"));
                    }
                    o.insert("name".into(), json!(k));
                    if *v != 0 {
                        o.insert("value".into(), json!(v.to_string()));
                    }
                    stats.push(Value::Object(o));
                }
            }
            let mut health = Map::new();
            if h.ejected {
                health.insert("failed_outlier_check".into(), json!(true));
            }
            health.insert("eds_health_status".into(), json!("HEALTHY"));
            let mut o = Map::new();
            o.insert("address".into(), socket_address(h.addr));
            o.insert("stats".into(), Value::Array(stats));
            o.insert("health_status".into(), Value::Object(health));
            o.insert("weight".into(), json!(h.weight));
            if h.priority != 0 {
                o.insert("priority".into(), json!(h.priority));
            }
            // proto3 JSON: empty strings left out.
            let mut loc = Map::new();
            for (k, v) in [
                ("region", &h.locality.region),
                ("zone", &h.locality.zone),
                ("sub_zone", &h.locality.sub_zone),
            ] {
                if !v.is_empty() {
                    loc.insert(k.into(), json!(v));
                }
            }
            o.insert("locality".into(), Value::Object(loc));
            Value::Object(o)
        })
        .collect();
    let mut o = Map::new();
    o.insert("name".into(), json!(c.name));
    if via_api {
        o.insert("added_via_api".into(), json!(true));
    }
    o.insert("host_statuses".into(), Value::Array(host_statuses));
    o.insert(
        "circuit_breakers".into(),
        json!({"thresholds": [
            {"max_connections": max_connections, "max_pending_requests": max_pending_requests, "max_requests": max_requests, "max_retries": max_retries},
            {"priority": "HIGH", "max_connections": limit, "max_pending_requests": limit, "max_requests": limit, "max_retries": limit},
        ]}),
    );
    o.insert("observability_name".into(), json!(c.name));
    Value::Object(o)
}

/// The certificates of the running config's listeners and clusters: file (or `sds:NAME`), URI
/// SANs, expiry (as loaded when the config was applied or the SDS secret arrived).
fn certs(set: &crate::io::tls::TlsSet) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let files: Vec<serde_json::Value> = set
        .certs
        .iter()
        .map(|f| {
            let certs: Vec<serde_json::Value> = f
                .certs
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "uri_sans": c.uri_sans,
                        "expiration_unix_s": c.not_after,
                        "days_until_expiration": c.not_after.map(|t| (t - now).div_euclid(86_400)),
                    })
                })
                .collect();
            serde_json::json!({"owner": f.owner, "role": f.role, "path": f.path, "certificates": certs})
        })
        .collect();
    serde_json::json!({ "files": files })
}

fn ready(shared: &Shared) -> Response {
    if shared.ready() {
        Response::text(200, "LIVE\n")
    } else {
        let failed = shared
            .health_failed
            .load(std::sync::atomic::Ordering::Acquire);
        let why = match shared.lifecycle.state() {
            State::Starting => "STARTING\n",
            State::Draining => "DRAINING\n",
            // Envoy's state after POST /healthcheck/fail.
            State::Serving if failed => "DRAINING\n",
            State::Serving => "NOT ALL SHARDS SERVING\n",
        };
        Response::text(503, why)
    }
}

/// `admin.health_upstream`: the probe relayed to pilot-agent's status port, as Envoy's
/// bootstrap routes `/healthz/ready` to its `agent` cluster: the agent's status and body, or
/// 503 when it cannot be reached within the `agent` cluster's connect timeout or does not
/// answer within [`HEALTH_UPSTREAM_TIMEOUT`] (under the exchange's own deadline). Its answer
/// is read up to [`HEALTH_UPSTREAM_BYTES_MAX`].
async fn health_upstream(up: SocketAddr, method: &str, target: &str) -> Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = async {
        let mut s = tokio::time::timeout(
            HEALTH_UPSTREAM_CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(up),
        )
        .await
        .map_err(|_| io::Error::other("connect timeout"))??;
        let head = format!("{method} {target} HTTP/1.1\r\nHost: {up}\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut s)
            .take(HEALTH_UPSTREAM_BYTES_MAX)
            .read_to_end(&mut buf)
            .await?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..600).contains(c))
            .ok_or_else(|| io::Error::other("no HTTP status line"))?;
        Ok::<_, io::Error>(Response::text(status, body))
    };
    let why = match tokio::time::timeout(HEALTH_UPSTREAM_TIMEOUT, relay).await {
        Ok(Ok(r)) => return r,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timeout".to_string(),
    };
    Response::text(
        503,
        &format!("upstream connect error or disconnect/reset before headers: {why}\n"),
    )
}

/// `connect_timeout` of the `agent` cluster in pilot-agent's bootstrap.
const HEALTH_UPSTREAM_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);
/// Under the exchange's deadline (`REQUEST_DEADLINE`), so the prober gets a 503, not a close.
const HEALTH_UPSTREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
const HEALTH_UPSTREAM_BYTES_MAX: u64 = 64 * 1024;

fn drain(shared: &Shared, reason: &'static str, peer: SocketAddr) -> Response {
    // Who asked: a drain nobody expected is explained by its sender.
    tracing::info!(reason, %peer, "drain requested over the admin API");
    match shared.control.try_send(ControlEvent::Drain { reason }) {
        Ok(()) => Response::text(200, "draining\n"),
        Err(_) => Response::text(200, "already draining\n"),
    }
}

/// `POST /drain_listeners[?inboundonly][&graceful]`, as Envoy's (docs/observability.md).
fn drain_listeners(shared: &Arc<Shared>, q: &Query, peer: SocketAddr) -> Response {
    if q.has("skip_exit") {
        return Response::text(400, "skip_exit is not supported\n");
    }
    let scope = if q.has("inboundonly") {
        crate::worker::ListenerScope::Inbound
    } else {
        crate::worker::ListenerScope::All
    };
    let graceful = q.has("graceful");
    tracing::info!(?scope, graceful, %peer, "drain_listeners requested over the admin API");
    match shared.drain_listeners(scope, graceful) {
        Ok(()) => Response::text(200, "OK\n"),
        Err(e) => Response::text(503, &format!("{e}\n")),
    }
}

fn memory(shared: &Shared) -> serde_json::Value {
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    serde_json::json!({
        "rss_bytes": rss_kib * 1024,
        "stats": shared.stats.memory(),
        "per_host_stats": shared.stats.per_host,
    })
}

fn server_info(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot();
    let shards: Vec<_> = shared
        .shard_infos
        .get()
        .map(|v| {
            v.iter()
                .map(|i| {
                    let shard_stats = shared.stats.shard(i.id);
                    let accepted: u64 = snap
                        .listener_ids
                        .iter()
                        .map(|l| shard_stats.get(l.cx_total))
                        .sum();
                    serde_json::json!({
                        "id": i.id,
                        "downstream_cx_total": accepted,
                        "core": i.core,
                        "io_backend": i.backend.as_str(),
                        "io_fallback_reason": i.fallback_reason,
                        "poll_mode": i.poll.as_str(),
                        "poll_idle_spin_s": i.poll_stats.idle_spin().as_secs_f64(),
                        "poll_loop_s": i.poll_stats.loop_time().as_secs_f64(),
                        "poll_idle_spin_fraction": i.poll_stats.idle_spin_fraction(),
                        "poll_sleeps": i.poll_stats.sleeps(),
                        "poll_spins": i.poll_stats.spins(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    #[cfg(feature = "dpdk")]
    let dpdk = crate::dpdk::server_info();
    #[cfg(not(feature = "dpdk"))]
    let dpdk = serde_json::Value::Null;
    let state = match shared.lifecycle.state() {
        State::Starting => "STARTING",
        // Envoy's state after `POST /healthcheck/fail`.
        State::Serving
            if shared
                .health_failed
                .load(std::sync::atomic::Ordering::Acquire) =>
        {
            "DRAINING"
        }
        State::Serving => "LIVE",
        State::Draining => "DRAINING",
    };
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "state": state,
        "uptime_s": shared.lifecycle.started.elapsed().as_secs(),
        "config_version": shared.snapshot().version,
        "xds": shared.xds.get().map(|h| {
            let x = h.stats();
            serde_json::json!({
                "connected": x.connected,
                "updates": x.updates,
                "acks": x.acks,
                "nacks": x.nacks,
                "reconnects": x.reconnects,
                "last_nack": x.last_nack,
                "versions": {"lds": x.versions.lds, "rds": x.versions.rds,
                             "cds": x.versions.cds, "eds": x.versions.eds},
            })
        }),
        "registry": super::registry_glue::server_info(shared),
        "dpdk": dpdk,
        "shard_count": shared.shard_count,
        "shards": shards,
    })
}
