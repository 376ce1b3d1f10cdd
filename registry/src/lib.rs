//! ringside's registry side: one ZooKeeper session per process, on its own control thread
//! (`ringside-registry`, a tokio current-thread runtime), never on a shard.
//!
//! Discovery: for every interface a `type: zookeeper` cluster names, it watches
//! `/{root}/{interface}/providers` (Apache Dubbo's layout), decodes each child (a URL-encoded
//! provider URL) into an endpoint with its metadata, and hands the whole provider map to the
//! caller's `apply` (on a separate thread, coalesced: the newest map wins). What it knows is
//! kept across disconnections and session expiry: an unreachable registry never empties an
//! endpoint set; a new session re-reads every interface and reconciles.
//!
//! Registration: every configured local service gets an ephemeral provider node pointing at
//! ringside's listener while its local port accepts TCP connections; [`Handle::deregister`]
//! removes them (the drain calls it before it stops accepting); a new session after expiry
//! registers them again.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod url;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use zookeeper_client as zk;

pub use url::Provider;

/// Every interface's providers that take traffic (valid, enabled, weight above 0), by
/// interface, in node order.
pub type Providers = BTreeMap<String, Vec<Provider>>;

/// Installs a provider map; `complete` is true once every watched interface was read at least
/// once. `Err` is logged and counted; the next change is applied anyway.
pub type ApplyFn = Box<dyn FnMut(Arc<Providers>, bool) -> Result<(), String> + Send>;

/// A local service to register, with the address consumers are sent to.
#[derive(Clone, Debug)]
pub struct Registration {
    pub service: config::RegisteredService,
    pub advertise: SocketAddr,
}

/// Counters of the client (a point-in-time copy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub connected: bool,
    /// Provider maps `apply` accepted.
    pub updates: u64,
    pub update_failures: u64,
    /// Watch notifications (children changed) received.
    pub watch_events: u64,
    pub session_expirations: u64,
    /// Session establishments after the first one.
    pub reconnects: u64,
    /// Providers in the last map (all interfaces).
    pub endpoints: u64,
    /// Provider nodes skipped: undecodable, or disabled / zero weight.
    pub nodes_skipped: u64,
    /// Local services registered now.
    pub registered: u64,
}

#[derive(Default)]
struct Shared {
    connected: AtomicBool,
    updates: AtomicU64,
    update_failures: AtomicU64,
    watch_events: AtomicU64,
    session_expirations: AtomicU64,
    reconnects: AtomicU64,
    endpoints: AtomicU64,
    nodes_skipped: AtomicU64,
    registered: AtomicU64,
}

enum Cmd {
    /// Remove every registered node and register no more; reply when done.
    Deregister(std::sync::mpsc::Sender<()>),
}

/// The running client; dropping it stops the thread (its ephemeral nodes go with the session).
pub struct Handle {
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedSender<Cmd>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    pub fn stats(&self) -> RegistryStats {
        let s = &self.shared;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RegistryStats {
            connected: s.connected.load(Ordering::Relaxed),
            updates: n(&s.updates),
            update_failures: n(&s.update_failures),
            watch_events: n(&s.watch_events),
            session_expirations: n(&s.session_expirations),
            reconnects: n(&s.reconnects),
            endpoints: n(&s.endpoints),
            nodes_skipped: n(&s.nodes_skipped),
            registered: n(&s.registered),
        }
    }

    /// Deletes the provider (and consumer) nodes ringside registered and stops registering;
    /// returns false when that did not finish within `timeout` (e.g. the registry is down:
    /// the nodes then go when the session expires).
    pub fn deregister(&self, timeout: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.cmd.send(Cmd::Deregister(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the client on a new thread and returns at once.
pub fn start(
    cfg: config::Registry,
    interfaces: Vec<String>,
    registrations: Vec<Registration>,
    apply: ApplyFn,
) -> std::io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared::default());
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (maps_tx, maps_rx) = std::sync::mpsc::channel();
    let s = shared.clone();
    std::thread::Builder::new()
        .name("ringside-registry-apply".into())
        .spawn(move || applier(maps_rx, apply, s))?;
    let client = Client {
        cfg,
        interfaces,
        registrations,
        shared: shared.clone(),
        maps: maps_tx,
    };
    let thread = std::thread::Builder::new()
        .name("ringside-registry".into())
        .spawn(move || runtime.block_on(client.run(cmd_rx, stop_rx)))?;
    Ok(Handle {
        shared,
        cmd: cmd_tx,
        stop: stop_tx,
        thread: Some(thread),
    })
}

/// Applies provider maps in order, always the newest one queued (a burst of watch events
/// costs one snapshot, not one per event).
fn applier(
    rx: std::sync::mpsc::Receiver<(Arc<Providers>, bool)>,
    mut apply: ApplyFn,
    shared: Arc<Shared>,
) {
    while let Ok(mut next) = rx.recv() {
        while let Ok(newer) = rx.try_recv() {
            next = newer;
        }
        let (map, complete) = next;
        match apply(map, complete) {
            Ok(()) => shared.updates.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %e, "registry: provider update refused");
                shared.update_failures.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// What a watch task reports.
enum Event {
    Providers(String, Vec<Provider>),
}

struct Client {
    cfg: config::Registry,
    interfaces: Vec<String>,
    registrations: Vec<Registration>,
    shared: Arc<Shared>,
    maps: std::sync::mpsc::Sender<(Arc<Providers>, bool)>,
}

impl Client {
    fn connect_string(&self) -> String {
        let mut s = self.cfg.addresses.join(",");
        if self.cfg.chroot != "/" {
            s.push_str(&self.cfg.chroot);
        }
        s
    }

    async fn run(self, mut cmds: mpsc::UnboundedReceiver<Cmd>, mut stop: watch::Receiver<bool>) {
        let connect = self.connect_string();
        let session_timeout = Duration::from_millis(self.cfg.session_timeout_ms);
        let retry_max = Duration::from_millis(self.cfg.retry_max_ms);
        let retry_initial = Duration::from_millis(self.cfg.retry_initial_ms);
        let mut backoff = retry_initial;
        // Survives sessions: only a successful read replaces an interface's providers.
        let mut known = Providers::new();
        let mut read: HashSet<String> = HashSet::new();
        let (offline_tx, offline_rx) = watch::channel(false);
        let mut sessions = 0u64;
        loop {
            let attempt = zk::Client::connector()
                .with_session_timeout(session_timeout)
                .with_connection_timeout(session_timeout / 3)
                .with_fail_eagerly()
                .connect(&connect);
            let client = tokio::select! {
                r = tokio::time::timeout(session_timeout, attempt) => match r {
                    Ok(Ok(c)) => c,
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_string(),
                        };
                        tracing::warn!(registry = %connect, error = %why, retry_in_ms = backoff.as_millis() as u64, "registry: cannot connect; keeping the last known providers");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                            Some(c) = cmds.recv() => handle_offline(c, &offline_tx),
                        }
                        backoff = (backoff * 2).min(retry_max);
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            backoff = retry_initial;
            sessions += 1;
            if sessions > 1 {
                self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            self.shared.connected.store(true, Ordering::Relaxed);
            tracing::info!(registry = %connect, session = ?client.session_id(), "registry: session established");
            let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
            let mut tasks = tokio::task::JoinSet::new();
            for i in &self.interfaces {
                let path = format!("/{}/{i}/providers", self.cfg.root);
                tasks.spawn(watch_providers(
                    client.clone(),
                    path,
                    i.clone(),
                    ev_tx.clone(),
                    self.shared.clone(),
                ));
            }
            let mut registrations = tokio::task::JoinSet::new();
            for r in &self.registrations {
                registrations.spawn(register(
                    client.clone(),
                    self.cfg.root.clone(),
                    r.clone(),
                    self.shared.clone(),
                    offline_rx.clone(),
                ));
            }
            let mut state = client.state_watcher();
            loop {
                tokio::select! {
                    Some(Event::Providers(i, p)) = ev_rx.recv() => {
                        self.absorb(&mut known, &mut read, i, p);
                        while let Ok(Event::Providers(i, p)) = ev_rx.try_recv() {
                            self.absorb(&mut known, &mut read, i, p);
                        }
                        let total = known.values().map(Vec::len).sum::<usize>() as u64;
                        self.shared.endpoints.store(total, Ordering::Relaxed);
                        let complete = read.len() == self.interfaces.len();
                        let _ = self.maps.send((Arc::new(known.clone()), complete));
                    }
                    s = state.changed() => {
                        use zk::SessionState as S;
                        match s {
                            S::SyncConnected | S::ConnectedReadOnly => {
                                self.shared.connected.store(true, Ordering::Relaxed);
                                tracing::info!("registry: reconnected (session kept)");
                            }
                            S::Disconnected => {
                                self.shared.connected.store(false, Ordering::Relaxed);
                                tracing::warn!("registry: disconnected; keeping the last known providers");
                            }
                            S::Expired | S::Closed | S::AuthFailed => {
                                if s == S::Expired {
                                    self.shared.session_expirations.fetch_add(1, Ordering::Relaxed);
                                }
                                tracing::warn!(state = ?s, "registry: session lost; keeping the last known providers, reconnecting");
                                break;
                            }
                        }
                    }
                    Some(c) = cmds.recv() => {
                        let Cmd::Deregister(done) = c;
                        let _ = offline_tx.send(true);
                        // Each registration deletes its nodes and ends.
                        while registrations.join_next().await.is_some() {}
                        let _ = done.send(());
                    }
                    _ = stop.changed() => return,
                }
            }
            self.shared.connected.store(false, Ordering::Relaxed);
            self.shared.registered.store(0, Ordering::Relaxed);
            tasks.abort_all();
            registrations.abort_all();
        }
    }

    fn absorb(
        &self,
        known: &mut Providers,
        read: &mut HashSet<String>,
        interface: String,
        providers: Vec<Provider>,
    ) {
        read.insert(interface.clone());
        known.insert(interface, providers);
    }
}

fn handle_offline(c: Cmd, offline: &watch::Sender<bool>) {
    let Cmd::Deregister(done) = c;
    // No session: nothing of ours is registered in a live session we could reach.
    let _ = offline.send(true);
    let _ = done.send(());
}

/// Decodes the children of a providers node; counts what it skips.
fn decode_children(children: &[String], interface: &str, shared: &Shared) -> Vec<Provider> {
    let mut out = Vec::with_capacity(children.len());
    for c in children {
        match url::decode(c).and_then(|u| url::parse(&u, interface)) {
            Ok(p) => out.push(p),
            Err(e) => {
                shared.nodes_skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(interface, node = %c, reason = %e, "registry: provider node skipped");
            }
        }
    }
    out
}

/// Keeps one interface's providers current: read with a watch, report, wait for the watch,
/// again. A missing providers node is an empty set (the registry says so); errors are retried
/// without reporting anything, so the last known set stays.
async fn watch_providers(
    client: zk::Client,
    path: String,
    interface: String,
    tx: mpsc::UnboundedSender<Event>,
    shared: Arc<Shared>,
) {
    let mut first = true;
    loop {
        if !first {
            shared.watch_events.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        match client.get_and_watch_children(&path).await {
            Ok((children, _, watcher)) => {
                let providers = decode_children(&children, &interface, &shared);
                if tx
                    .send(Event::Providers(interface.clone(), providers))
                    .is_err()
                {
                    return;
                }
                watcher.changed().await;
            }
            Err(zk::Error::NoNode) => {
                // Watch for the node's creation, then read it.
                match client.check_and_watch_stat(&path).await {
                    Ok((Some(_), _)) => continue,
                    Ok((None, watcher)) => {
                        if tx
                            .send(Event::Providers(interface.clone(), Vec::new()))
                            .is_err()
                        {
                            return;
                        }
                        watcher.changed().await;
                    }
                    Err(e) => {
                        tracing::debug!(path, error = %e, "registry: exists watch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            Err(e @ (zk::Error::SessionExpired | zk::Error::ClientClosed)) => {
                tracing::debug!(path, error = %e, "registry: watch ends with the session");
                return;
            }
            Err(e) => {
                tracing::debug!(path, error = %e, "registry: read failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Keeps one local service registered while its port answers, until deregistered.
async fn register(
    client: zk::Client,
    root: String,
    r: Registration,
    shared: Arc<Shared>,
    mut offline: watch::Receiver<bool>,
) {
    let s = &r.service;
    let dir = format!("/{root}/{}/providers", s.interface);
    let node = format!(
        "{dir}/{}",
        url::encode(&url::provider_url(s, r.advertise, "provider"))
    );
    let consumer = s.register_consumer.then(|| {
        let dir = format!("/{root}/{}/consumers", s.interface);
        let node = format!(
            "{dir}/{}",
            url::encode(&url::provider_url(s, r.advertise, "consumer"))
        );
        (dir, node)
    });
    let local = SocketAddr::new(s.local_host, s.local_port);
    let interval = Duration::from_millis(s.health_interval_ms);
    let mut registered = false;
    loop {
        if *offline.borrow() {
            if registered {
                unregister(&client, &node, consumer.as_ref()).await;
                shared.registered.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(interface = %s.interface, "registry: deregistered (drain)");
            }
            return;
        }
        let up = matches!(
            tokio::time::timeout(interval, tokio::net::TcpStream::connect(local)).await,
            Ok(Ok(_))
        );
        if up && !registered {
            match create(&client, &dir, &node).await {
                Ok(()) => {
                    if let Some((dir, node)) = &consumer {
                        if let Err(e) = create(&client, dir, node).await {
                            tracing::warn!(interface = %s.interface, error = %e, "registry: consumer node not written");
                        }
                    }
                    registered = true;
                    shared.registered.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(interface = %s.interface, advertise = %r.advertise, "registry: registered");
                }
                Err(e) => {
                    tracing::warn!(interface = %s.interface, error = %e, "registry: registration failed; retrying")
                }
            }
        } else if !up && registered {
            unregister(&client, &node, consumer.as_ref()).await;
            registered = false;
            shared.registered.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(interface = %s.interface, local = %local, "registry: local port does not answer; deregistered");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = offline.changed() => {}
        }
    }
}

/// Creates an ephemeral node under `dir` (made first), replacing a stale one of ours.
async fn create(client: &zk::Client, dir: &str, node: &str) -> Result<(), zk::Error> {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    client.mkdir(dir, &persistent).await?;
    match client.create(node, &[], &ephemeral).await {
        Ok(_) => Ok(()),
        Err(zk::Error::NodeExists) => {
            match client.delete(node, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
            client.create(node, &[], &ephemeral).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

async fn unregister(client: &zk::Client, node: &str, consumer: Option<&(String, String)>) {
    for n in std::iter::once(node).chain(consumer.map(|(_, n)| n.as_str())) {
        match client.delete(n, None).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => tracing::warn!(node = n, error = %e, "registry: cannot delete node"),
        }
    }
}
