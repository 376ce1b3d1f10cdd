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
async fn exchange(mut conn: tokio::net::TcpStream, peer: SocketAddr, role: Role, shared: &Shared) {
    use tokio::io::AsyncWriteExt;
    let resp = match read_head(&mut conn).await {
        Ok(Some((method, target))) => handle(&method, &target, role, peer, shared),
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

fn handle(method: &str, target: &str, role: Role, peer: SocketAddr, shared: &Shared) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let allowed = match role {
        Role::Admin => true,
        Role::Health => path == "/healthz/ready",
        Role::Prometheus => path == "/stats/prometheus",
    };
    if !allowed {
        return Response::text(404, "not found\n");
    }
    match (method, path) {
        ("GET", "/ready") | ("GET", "/healthz/ready") => ready(shared),
        ("GET", "/server_info") => Response::json(server_info(shared)),
        ("GET", "/stats") if query.split('&').any(|q| q == "format=json") => {
            Response::json(shared.stats.render_json())
        }
        ("GET", "/stats") => Response::text(200, &shared.stats.render_text()),
        ("GET", "/stats/prometheus") => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: shared.stats.render_prometheus(),
        },
        ("GET", "/memory") => Response::json(memory(shared)),
        ("GET", "/config_dump") => {
            let snap = shared.snapshot();
            Response::json(serde_json::json!({
                "version": snap.version,
                "xds_versions": shared.xds_versions(),
                "config": serde_json::to_value(&snap.config)
                    .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() })),
            }))
        }
        ("GET", "/certs") => Response::json(certs(&shared.snapshot().tls)),
        ("POST", "/drain") => drain(shared, "POST /drain", peer),
        ("POST", "/quitquitquit") => drain(shared, "POST /quitquitquit", peer),
        ("GET", "/") => Response::text(
            200,
            "ringside admin: /ready /server_info /memory /stats /stats?format=json \
             /stats/prometheus /config_dump /certs; POST /drain /quitquitquit\n",
        ),
        (_, "/drain" | "/quitquitquit") => Response::text(405, "use POST\n"),
        _ => Response::text(404, "not found\n"),
    }
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
        let why = match shared.lifecycle.state() {
            State::Starting => "STARTING\n",
            State::Draining => "DRAINING\n",
            State::Serving => "NOT ALL SHARDS SERVING\n",
        };
        Response::text(503, why)
    }
}

fn drain(shared: &Shared, reason: &'static str, peer: SocketAddr) -> Response {
    // Who asked: a drain nobody expected is explained by its sender.
    tracing::info!(reason, %peer, "drain requested over the admin API");
    match shared.control.try_send(ControlEvent::Drain { reason }) {
        Ok(()) => Response::text(200, "draining\n"),
        Err(_) => Response::text(200, "already draining\n"),
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
