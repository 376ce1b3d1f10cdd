//! The hot-upgrade control socket: the running process serves the handoff on a Unix socket
//! (old side, [`serve`]); a new process started with `--upgrade` takes the listening sockets
//! over from it ([`take_over`]). The protocol itself is in the `hotswap` crate; this module
//! maps it onto ringside's listeners, admin sockets, drain and stats.
//!
//! Who may take the sockets over: the control socket is mode 0600 in a directory only
//! ringside's user can write (checked at bind; the default directory is created mode 0700), and
//! a connecting process must run as ringside's own uid (SO_PEERCRED) before it is read from.
//! A peer that says nothing within [`HANDSHAKE_TIMEOUT`] is dropped (the running process serves
//! one successor at a time), and it reads at most `hotswap::REQUEST_BYTES_MAX` per message.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hotswap::REQUEST_BYTES_MAX;
use hotswap::{
    HandoffError, Message, SocketEntry, MESSAGE_BYTES_MAX, PROTOCOL_BASE, PROTOCOL_CONNECTIONS,
    PROTOCOL_TCP, PROTOCOL_VERSION,
};

use super::server::{ControlEvent, Inherited, Shared, State};
use crate::config::Config;

/// Test hook: make a new process claim another protocol version (to test refusals).
pub const PROTOCOL_OVERRIDE_ENV: &str = "RINGSIDE_HANDOFF_PROTOCOL_OVERRIDE";
/// Test hook: the highest protocol version this process speaks, below [`PROTOCOL_VERSION`]
/// (`1`: on the wire exactly a version 1 ringside, which moves no connection).
pub const PROTOCOL_MAX_ENV: &str = "RINGSIDE_HANDOFF_PROTOCOL_MAX";

// A connection's unread bytes fit in the protocol's limit.
const _: () = assert!(crate::filter::HANDOVER_UNREAD_BYTES_MAX <= hotswap::UNREAD_BYTES_MAX);

/// The highest protocol version this process speaks.
fn speaks() -> u32 {
    std::env::var(PROTOCOL_MAX_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(PROTOCOL_VERSION, |v: u32| {
            v.clamp(PROTOCOL_BASE, PROTOCOL_VERSION)
        })
}

fn build() -> String {
    format!("ringside {}", env!("CARGO_PKG_VERSION"))
}

/// How long either side waits for each handshake message (and for a write to drain) before it
/// drops the connection. Also how long one silent peer delays a real successor.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the running process waits for `Serving` after it handed its sockets over, beyond the
/// successor's own wait for its first xDS and registry data.
pub const SUCCESSOR_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a successor waits for each answer of the running process: that one serves one
/// connection at a time, so a successor may queue behind a silent peer.
const PREDECESSOR_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The control socket path: `admin.control_socket`, or
/// `$TMPDIR/ringside-<euid>/ringside-<admin port>.sock` (see [`default_dir`]).
pub fn path(config: &Config) -> PathBuf {
    config.admin.control_socket.clone().unwrap_or_else(|| {
        default_dir().join(format!("ringside-{}.sock", config.admin.address.port()))
    })
}

/// `$TMPDIR/ringside-<euid>`: created mode 0700 on first use, refused when it exists but is not
/// a private directory of this user (as tmux does with its socket directory).
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join(format!("ringside-{}", hotswap::private::euid()))
}

/// Binds the control socket (mode 0600, in a directory only our uid or root can write). A socket
/// file nobody answers on is stale and replaced; one that answers belongs to a running ringside:
/// refused unless `replace` (we are its successor).
pub fn listen(path: &Path, replace: bool) -> Result<UnixListener, String> {
    let unsafe_dir = |e: HandoffError| {
        format!(
            "admin.control_socket {}: {e}; give a path in a directory only this user can write",
            path.display()
        )
    };
    if path.parent() == Some(default_dir().as_path()) {
        hotswap::private::private_dir(&default_dir()).map_err(unsafe_dir)?;
    }
    // Probe only a fresh start: a successor replaces the file anyway, and its probe reached
    // the predecessor's handoff loop as a connection that closes at once (a warning,
    // "hot upgrade aborted", in every upgrade's log).
    if path.exists() && !replace && UnixStream::connect(path).is_ok() {
        return Err(format!(
            "a ringside is already running with control socket {}; start with --upgrade to \
             replace it",
            path.display()
        ));
    }
    hotswap::bind_private(path).map_err(|e| match e {
        HandoffError::UnsafeDir { .. } => unsafe_dir(e),
        e => format!("cannot bind control socket {}: {e}", path.display()),
    })
}

/// Old side: answers successors on `listener`, one at a time, until the process exits.
pub fn serve(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if let Err(e) = admit(&conn) {
            tracing::warn!(error = %e, "hot upgrade: refused a control socket connection");
            let _ = hotswap::send(
                &conn,
                &Message::Refused {
                    reason: e.to_string(),
                },
                &[],
            );
            continue;
        }
        match handoff(&conn, &shared) {
            Ok(Some(protocol)) => {
                let _ = shared.control.send(ControlEvent::HandOff {
                    stream: conn,
                    protocol,
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "hot upgrade aborted; still serving"),
        }
    }
}

/// A connection is read from only when its peer runs as our uid; every read and write on it
/// is then bounded by [`HANDSHAKE_TIMEOUT`].
fn admit(conn: &UnixStream) -> Result<(), HandoffError> {
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    conn.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    hotswap::check_peer(conn)?;
    Ok(())
}

/// How long the successor may take from `Listeners` to `Serving`: it starts its shards, then
/// waits for its first xDS snapshot up to the initial fetch timeout.
fn successor_start_timeout(config: &Config) -> Duration {
    let xds = config
        .xds
        .as_ref()
        .map_or(0, |x| x.initial_fetch_timeout_ms);
    SUCCESSOR_START_TIMEOUT + Duration::from_millis(xds)
}

/// Runs steps 1–3 of the protocol (and, with version 2, the successor's `GetConnections`);
/// `Ok(Some(version))` once the successor serves (2 on: it adopts connections).
fn handoff(conn: &UnixStream, shared: &Shared) -> Result<Option<u32>, HandoffError> {
    let (hello, _) = hotswap::recv(conn, REQUEST_BYTES_MAX)?;
    let Message::Hello {
        protocol,
        build: theirs,
        highest,
    } = hello
    else {
        hotswap::send(
            conn,
            &Message::Refused {
                reason: "expected Hello".into(),
            },
            &[],
        )?;
        return Ok(None);
    };
    if protocol != PROTOCOL_BASE {
        let reason = format!(
            "handoff protocol {protocol} ({theirs}) is not compatible with {PROTOCOL_BASE} ({})",
            build()
        );
        tracing::warn!(%reason, "refusing hot upgrade");
        hotswap::send(conn, &Message::Refused { reason }, &[])?;
        return Ok(None);
    }
    if shared.lifecycle.state() != State::Serving {
        hotswap::send(
            conn,
            &Message::Refused {
                reason: "not serving (starting or draining)".into(),
            },
            &[],
        )?;
        return Ok(None);
    }
    let version = hotswap::negotiate(highest, speaks());
    hotswap::send(
        conn,
        &Message::Welcome {
            protocol: version,
            build: build(),
        },
        &[],
    )?;
    tracing::info!(
        successor = %theirs,
        protocol = version,
        successor_process = %hotswap::peer_pid(conn).map_or_else(|| "unknown".into(), describe_pid),
        "hot upgrade: successor connected"
    );
    match hotswap::recv(conn, REQUEST_BYTES_MAX)?.0 {
        Message::GetListeners => {}
        other => {
            return Err(HandoffError::Unexpected {
                expected: "GetListeners",
                got: format!("{other:?}"),
            })
        }
    }
    let sockets = shared.sockets.for_handoff();
    let entries: Vec<SocketEntry> = sockets
        .iter()
        .map(|(name, s)| SocketEntry {
            name: name.clone(),
            address: s.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        })
        .collect();
    let fds: Vec<i32> = sockets.iter().map(|(_, s)| s.as_raw_fd()).collect();
    hotswap::send(conn, &Message::Listeners { sockets: entries }, &fds)?;
    drop(sockets);
    conn.set_read_timeout(Some(successor_start_timeout(&shared.config)))?;
    match hotswap::recv(conn, REQUEST_BYTES_MAX)?.0 {
        Message::Serving => {}
        other => {
            return Err(HandoffError::Unexpected {
                expected: "Serving",
                got: format!("{other:?}"),
            })
        }
    }
    let connections = version >= PROTOCOL_CONNECTIONS;
    if connections {
        conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        match hotswap::recv(conn, REQUEST_BYTES_MAX)?.0 {
            Message::GetConnections => {}
            other => {
                return Err(HandoffError::Unexpected {
                    expected: "GetConnections",
                    got: format!("{other:?}"),
                })
            }
        }
    }
    tracing::info!(
        requests_in_flight = in_flight(shared),
        hand_over_connections = connections,
        hand_over_tcp = version >= PROTOCOL_TCP,
        "hot upgrade: successor serves; draining"
    );
    Ok(Some(version))
}

/// Old side, while draining: sends the connections the shards handed over since the last call
/// (batches of `Connections`, and of `TcpConnections` for TCP proxy pairs), then closes our
/// copies of their sockets. Returns how many were sent; a failed send closes them (the
/// successor died: their callers reconnect).
pub fn send_connections(
    conn: &UnixStream,
    rx: &std::sync::mpsc::Receiver<crate::filter::HandedOver>,
) -> usize {
    let taken: Vec<crate::filter::HandedOver> = rx.try_iter().collect();
    if taken.is_empty() {
        return 0;
    }
    let sent_at_ns = hotswap::monotonic_ns();
    let (tcp, dubbo): (Vec<_>, Vec<_>) = taken.iter().partition(|c| c.upstream.is_some());
    let entries: Vec<hotswap::ConnEntry> = dubbo
        .iter()
        .map(|c| hotswap::ConnEntry {
            listener: c.listener.clone(),
            unread: c.unread.clone(),
            paused_at_ns: c.paused_at_ns,
            sent_at_ns,
        })
        .collect();
    let fds: Vec<i32> = dubbo.iter().map(|c| c.fd.as_raw_fd()).collect();
    let (pairs, pair_fds): (Vec<hotswap::TcpPairEntry>, Vec<(i32, i32)>) = tcp
        .iter()
        .filter_map(|c| {
            let u = c.upstream.as_ref()?;
            let entry = hotswap::TcpPairEntry {
                listener: c.listener.clone(),
                cluster: u.cluster.clone(),
                upstream: u.address.to_string(),
                unread: c.unread.clone(),
                unread_upstream: u.unread.clone(),
                started_unix_ms: u
                    .started
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                bytes_received: u.bytes_received,
                bytes_sent: u.bytes_sent,
                paused_at_ns: c.paused_at_ns,
                sent_at_ns,
            };
            Some((entry, (c.fd.as_raw_fd(), u.fd.as_raw_fd())))
        })
        .unzip();
    let sent = (!entries.is_empty())
        .then(|| hotswap::send_connections(conn, &entries, &fds))
        .transpose()
        .and_then(|_| {
            (!pairs.is_empty())
                .then(|| hotswap::send_tcp_connections(conn, &pairs, &pair_fds))
                .transpose()
        });
    match sent {
        Ok(_) => taken.len(),
        Err(e) => {
            tracing::warn!(error = %e, connections = taken.len(), "hot upgrade: could not hand connections to the successor; closing them");
            0
        }
    }
}

/// `pid` and its command line (best effort: the process may be gone), for logs that name who
/// asked this process to drain.
pub fn describe_pid(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text: String = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect();
    if text.is_empty() {
        format!("pid {pid}")
    } else {
        format!("pid {pid} ({text})")
    }
}

/// Requests in flight to upstreams right now, over every shard and cluster.
fn in_flight(shared: &Shared) -> u64 {
    let snap = shared.snapshot();
    (0..shared.shard_count)
        .map(|k| {
            let s = shared.stats.shard(k);
            snap.upstream_ids
                .iter()
                .map(|ids| s.get(ids.rq_active) as i64)
                .sum::<i64>()
        })
        .sum::<i64>()
        .max(0) as u64
}

/// New side: connects to the running process and takes its listening sockets. Returns the
/// protocol version both speak too (2: send `GetConnections` after `Serving`).
pub fn take_over(path: &Path) -> Result<(UnixStream, Inherited, u32), String> {
    let conn = UnixStream::connect(path).map_err(|e| {
        format!(
            "--upgrade: no running ringside answers on {}: {e}",
            path.display()
        )
    })?;
    // The sockets and counters we are about to take must come from a process of our own user.
    let bounded = conn
        .set_read_timeout(Some(PREDECESSOR_ANSWER_TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(HANDSHAKE_TIMEOUT)));
    if let Err(e) = bounded {
        return Err(format!("--upgrade: {e}"));
    }
    hotswap::check_peer(&conn).map_err(|e| format!("--upgrade: {}: {e}", path.display()))?;
    let protocol = std::env::var(PROTOCOL_OVERRIDE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PROTOCOL_BASE);
    let fail = |e: HandoffError| format!("--upgrade: {e}");
    hotswap::send(
        &conn,
        &Message::Hello {
            protocol,
            build: build(),
            highest: (speaks() > PROTOCOL_BASE).then(speaks),
        },
        &[],
    )
    .map_err(fail)?;
    let version = match hotswap::recv(&conn, REQUEST_BYTES_MAX).map_err(fail)?.0 {
        Message::Welcome {
            build,
            protocol: version,
        } => {
            tracing::info!(predecessor = %build, protocol = version, "hot upgrade: taking over");
            version.min(speaks())
        }
        Message::Refused { reason } => {
            return Err(format!(
                "--upgrade refused by the running ringside (it keeps serving): {reason}"
            ))
        }
        other => return Err(format!("--upgrade: unexpected {other:?}")),
    };
    hotswap::send(&conn, &Message::GetListeners, &[]).map_err(fail)?;
    let (msg, fds) = hotswap::recv(&conn, MESSAGE_BYTES_MAX).map_err(fail)?;
    let Message::Listeners { sockets } = msg else {
        return Err(format!("--upgrade: expected Listeners, got {msg:?}"));
    };
    if sockets.len() != fds.len() {
        return Err(fail(HandoffError::FdCountMismatch {
            announced: sockets.len(),
            carried: fds.len(),
        }));
    }
    let mut inherited = Inherited::default();
    for (entry, fd) in sockets.into_iter().zip(fds) {
        inherited
            .sockets
            .entry(entry.name)
            .or_default()
            .push(std::net::TcpListener::from(fd));
    }
    Ok((conn, inherited, version))
}

/// New side, right after `Serving`: with protocol 2, asks for the predecessor's live
/// connections ([`await_predecessor`] adopts them as they come).
pub fn ask_for_connections(conn: &UnixStream, version: u32) {
    if version < PROTOCOL_CONNECTIONS {
        return;
    }
    if let Err(e) = hotswap::send(conn, &Message::GetConnections, &[]) {
        tracing::warn!(error = %e, "hot upgrade: could not ask for the predecessor's connections");
    }
}

/// New side, after `Serving`: imports the predecessor's final counters when it has drained.
pub fn await_predecessor(conn: UnixStream, shared: Arc<Shared>) {
    // The predecessor drains first (up to its drain_timeout_ms); this thread only waits.
    let _ = conn.set_read_timeout(None);
    let mut adopted = 0u64;
    loop {
        match hotswap::recv(&conn, MESSAGE_BYTES_MAX) {
            Ok((Message::Connections { conns }, fds)) => {
                if conns.len() != fds.len() {
                    tracing::warn!(announced = conns.len(), carried = fds.len(), "hot upgrade: handed-over connections without their descriptors; closing them");
                    continue;
                }
                for (c, fd) in conns.into_iter().zip(fds) {
                    let a = crate::worker::Adoption {
                        listener: c.listener,
                        stream: std::net::TcpStream::from(fd),
                        unread: c.unread,
                        upstream: None,
                        paused_at_ns: c.paused_at_ns,
                        sent_at_ns: c.sent_at_ns,
                    };
                    if shared.adopt(a) {
                        adopted += 1;
                    }
                }
            }
            Ok((Message::TcpConnections { conns }, fds)) => {
                if 2 * conns.len() != fds.len() {
                    tracing::warn!(announced = 2 * conns.len(), carried = fds.len(), "hot upgrade: handed-over TCP connections without their descriptors; closing them");
                    continue;
                }
                let mut fds = fds.into_iter();
                for c in conns {
                    let (Some(down), Some(up)) = (fds.next(), fds.next()) else {
                        break;
                    };
                    let Ok(address) = c.upstream.parse() else {
                        tracing::warn!(upstream = %c.upstream, "hot upgrade: a handed-over TCP connection with an unreadable upstream address; closing it");
                        continue;
                    };
                    let a = crate::worker::Adoption {
                        listener: c.listener,
                        stream: std::net::TcpStream::from(down),
                        unread: c.unread,
                        upstream: Some(crate::filter::UpstreamHandedOver {
                            fd: up,
                            cluster: c.cluster,
                            address,
                            unread: c.unread_upstream,
                            started: std::time::UNIX_EPOCH
                                + Duration::from_millis(c.started_unix_ms),
                            bytes_received: c.bytes_received,
                            bytes_sent: c.bytes_sent,
                        }),
                        paused_at_ns: c.paused_at_ns,
                        sent_at_ns: c.sent_at_ns,
                    };
                    if shared.adopt(a) {
                        adopted += 1;
                    }
                }
            }
            Ok((Message::Stats { blob }, _)) => match shared.stats.import(blob.as_bytes()) {
                Ok(n) => tracing::info!(
                    counters = n,
                    "hot upgrade: predecessor's counters carried over"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "hot upgrade: cannot import predecessor's stats")
                }
            },
            Ok((Message::Bye, _)) => {
                tracing::info!(
                    connections_adopted = adopted,
                    "hot upgrade: predecessor drained and exited"
                );
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Old side, after the drain: hands the final counters to the successor and says goodbye.
pub fn farewell(conn: &UnixStream, shared: &Shared) {
    let blob = String::from_utf8(shared.stats.export()).unwrap_or_default();
    if let Err(e) = hotswap::send(conn, &Message::Stats { blob }, &[])
        .and_then(|_| hotswap::send(conn, &Message::Bye, &[]))
    {
        tracing::warn!(error = %e, "hot upgrade: could not hand over final stats");
    }
}

/// Old side, while draining for a successor: if the successor's connection drops before we
/// are done, resume serving.
pub fn watch_successor(conn: &UnixStream, shared: &Arc<Shared>) {
    let Ok(watch) = conn.try_clone() else { return };
    // The clone shares the socket: no read timeout from the handshake while we drain.
    let _ = watch.set_read_timeout(None);
    let shared = shared.clone();
    std::thread::spawn(move || {
        // The successor sends nothing more until it closes; a close before our Bye means it
        // died.
        let _ = hotswap::recv(&watch, REQUEST_BYTES_MAX);
        if shared.lifecycle.state() == State::Draining && !shared.drained.load(Ordering::Acquire) {
            let _ = shared.control.send(ControlEvent::Resume);
        }
    });
}
