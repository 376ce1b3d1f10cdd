//! The xDS side of ringside: an ADS client (state of the world or incremental, per
//! `XdsBootstrap.mode`) that runs on its own control thread with a tokio current-thread runtime,
//! never on a shard. It subscribes to LDS and CDS (wildcard) and to the RDS and EDS names the
//! listeners and clusters reference, turns the Envoy v3 resources into one plain
//! [`config::Config`] (the static YAML listeners and clusters plus the dynamic ones, validated
//! with `Source::Dynamic`), and hands each warm snapshot to the caller's `apply` callback; an
//! EDS response that changes only endpoints is handed over as the changed clusters' endpoint
//! lists alone ([`Change::Endpoints`]), so its cost follows the change, not the config. What
//! `apply` accepts is ACKed; what cannot be translated, fails validation or is refused by `apply`
//! is NACKed with the resource and field named, and the last good snapshot stays. No prost type
//! appears in this API: every proto conversion is fenced in the private `proto` module, whose
//! doc (and docs/xds.md) lists the supported, ignored and refused Envoy fields.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod client;
#[cfg(test)]
#[allow(clippy::disallowed_types)] // test harness state shared with the server task
mod client_tests;
mod proto;
mod sds;
#[cfg(test)]
mod testing;
mod transport;

pub(crate) use client::jitter as client_jitter;
pub use sds::{start_sds, SdsHandle, SdsTarget, Secret, SecretsFn};
pub use transport::XdsTls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
// The control thread is not the data path: the mutex below guards two strings that the
// xds thread writes and `Handle::stats` copies, never a shard.
#[allow(clippy::disallowed_types)]
use std::sync::{Arc, Mutex};

/// Version strings of the four resource types behind a snapshot: `version_info` (state of the
/// world) or `system_version_info` (incremental, the nonce when the server sends none) of the
/// last accepted response of each type; empty before the first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    pub lds: String,
    pub rds: String,
    pub cds: String,
    pub eds: String,
}

/// One snapshot for the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub change: Change,
    pub versions: Versions,
}

/// What an [`Update`] carries: the whole config, or only the endpoints that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The complete merged config: static listeners and clusters first, then the dynamic ones.
    Full(Box<config::Config>),
    /// Only endpoints (EDS) changed since the last applied update, and only these clusters':
    /// the listeners, routes, cluster settings and every other cluster's endpoints are as the
    /// last applied update left them. Each cluster appears once, with its complete new
    /// endpoint list. Empty when a response changed nothing (its versions are still new).
    Endpoints(Vec<ClusterEndpoints>),
}

/// The new endpoints of one cluster (a dynamic cluster the last applied update has).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEndpoints {
    pub cluster: String,
    pub endpoints: Vec<std::net::SocketAddr>,
    /// `weight` and `priority` of each endpoint (`config::Cluster::endpoint_metadata`); empty
    /// when all have priority 0 and the same weight.
    pub metadata: Vec<config::EndpointMetadata>,
}

/// Counters of one client, readable from any thread (a point-in-time copy).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XdsStats {
    /// An ADS stream is open now.
    pub connected: bool,
    /// Snapshots `apply` accepted.
    pub updates: u64,
    pub acks: u64,
    pub nacks: u64,
    /// ACKs and NACKs per type, in the order LDS, RDS, CDS, EDS (Envoy's
    /// `listener_manager.lds.update_success` / `update_rejected`, `cluster_manager.cds.*`).
    pub by_type: [(u64, u64); 4],
    /// Streams opened after the first one (each after a back-off).
    pub reconnects: u64,
    /// Detail of the last NACK (or of a snapshot the initial-fetch timeout could not apply).
    pub last_nack: Option<String>,
    /// Versions of the last applied snapshot.
    pub versions: Versions,
}

/// Why a resource or a merged snapshot was refused; its text is the NACK's `error_detail`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// A field of one resource that ringside cannot honour, named as a path from the resource.
    #[error("{kind} {name:?}: field `{field}`: {message}")]
    Field {
        kind: &'static str,
        name: String,
        field: String,
        message: String,
    },
    /// A resource that is not the type its response announced, or not a valid message.
    #[error("resource of type {type_url}: {message}")]
    Decode { type_url: String, message: String },
    /// The merged static + dynamic config failed `Config::validate_as(Source::Dynamic)`.
    #[error("merged config: {}", problems.iter().map(|(f, m)| format!("field `{f}`: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid { problems: Vec<(String, String)> },
}

/// The callback that installs a snapshot: `Ok` ACKs it, `Err(detail)` NACKs it with `detail`.
pub type ApplyFn = Box<dyn FnMut(Update) -> Result<(), String> + Send>;

/// Starts the client on a new thread (`ringside-xds`) and returns at once. `apply` runs on that
/// thread. The first snapshot is applied when every listener's clusters and routes and every
/// EDS cluster's endpoints have arrived, or when `initial_fetch_timeout_ms` has passed (then
/// with what is there: listeners whose routes or clusters are missing are left out, EDS
/// clusters without an assignment have no endpoints; with nothing at all, the static config).
pub fn start(
    bootstrap: config::XdsBootstrap,
    static_config: config::Config,
    apply: ApplyFn,
    tls: Option<XdsTls>,
) -> std::io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let client = client::Client::new(bootstrap, static_config, apply, shared.clone(), tls);
    let thread = std::thread::Builder::new()
        .name("ringside-xds".into())
        .spawn(move || runtime.block_on(client.run(stop_rx)))?;
    Ok(Handle {
        shared,
        stop: stop_tx,
        thread: Some(thread),
    })
}

/// The running client. Dropping it stops the client without waiting; [`Handle::stop`] waits.
#[derive(Debug)]
pub struct Handle {
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

// === impl Handle ===

impl Handle {
    pub fn stats(&self) -> XdsStats {
        self.shared.snapshot()
    }

    /// Closes the stream and joins the xds thread.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Written by the xds thread, read by any thread through [`Handle::stats`].
#[derive(Debug, Default)]
pub(crate) struct Shared {
    connected: AtomicBool,
    updates: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    /// (ACKs, NACKs) per type: LDS, RDS, CDS, EDS.
    pub(crate) by_type: [(AtomicU64, AtomicU64); 4],
    reconnects: AtomicU64,
    /// Last NACK detail and applied versions: strings, so a mutex held for a copy only.
    #[allow(clippy::disallowed_types)]
    text: Mutex<(Option<String>, Versions)>,
}

// === impl Shared ===

impl Shared {
    fn snapshot(&self) -> XdsStats {
        let (last_nack, versions) = match self.text.lock() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        };
        XdsStats {
            connected: self.connected.load(Ordering::Relaxed),
            updates: self.updates.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
            nacks: self.nacks.load(Ordering::Relaxed),
            by_type: std::array::from_fn(|i| {
                let (a, n) = &self.by_type[i];
                (a.load(Ordering::Relaxed), n.load(Ordering::Relaxed))
            }),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_nack,
            versions,
        }
    }

    fn with_text(&self, f: impl FnOnce(&mut (Option<String>, Versions))) {
        match self.text.lock() {
            Ok(mut t) => f(&mut t),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}
