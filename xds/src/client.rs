//! The ADS stream: requests, ACK/NACK, subscriptions, warming, reconnects. Runs only on the xds
//! thread's current-thread runtime. The resource cache holds translated resources (plain
//! types); a response is translated into a copy of the cache, and the copy replaces the cache
//! only when the response is ACKed, so a NACK leaves the last good state as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use config::{Config, Listener, Source, XdsMode};

use crate::proto::{self, ClusterRes, ListenerRes, RouteTable};
use crate::{ApplyFn, Change, ClusterEndpoints, Shared, TranslateError, Update, Versions};

/// google.rpc.Code INVALID_ARGUMENT, the code of every NACK.
const INVALID_ARGUMENT: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lds = 0,
    Rds = 1,
    Cds = 2,
    Eds = 3,
}

const KINDS_IN_ORDER: [Kind; 4] = [Kind::Cds, Kind::Eds, Kind::Lds, Kind::Rds];

impl Kind {
    fn type_url(self) -> &'static str {
        match self {
            Kind::Lds => proto::LISTENER_TYPE,
            Kind::Rds => proto::ROUTE_TYPE,
            Kind::Cds => proto::CLUSTER_TYPE,
            Kind::Eds => proto::ENDPOINT_TYPE,
        }
    }

    fn from_url(url: &str) -> Option<Kind> {
        [Kind::Lds, Kind::Rds, Kind::Cds, Kind::Eds]
            .into_iter()
            .find(|k| k.type_url() == url)
    }

    /// LDS and CDS are wildcard subscriptions whose state-of-the-world responses are complete.
    fn wildcard(self) -> bool {
        matches!(self, Kind::Lds | Kind::Cds)
    }
}

#[derive(Clone, Debug)]
struct Entry<T> {
    version: String,
    value: T,
}

#[derive(Clone, Debug, Default)]
struct Cache {
    listeners: BTreeMap<String, Entry<ListenerRes>>,
    routes: BTreeMap<String, Entry<RouteTable>>,
    clusters: BTreeMap<String, Entry<ClusterRes>>,
    endpoints: BTreeMap<String, Entry<proto::Assignment>>,
}

impl Cache {
    fn names(&self, kind: Kind) -> Vec<(String, String)> {
        fn v<T>(m: &BTreeMap<String, Entry<T>>) -> Vec<(String, String)> {
            m.iter()
                .map(|(k, e)| (k.clone(), e.version.clone()))
                .collect()
        }
        match kind {
            Kind::Lds => v(&self.listeners),
            Kind::Rds => v(&self.routes),
            Kind::Cds => v(&self.clusters),
            Kind::Eds => v(&self.endpoints),
        }
    }

    fn remove(&mut self, kind: Kind, name: &str) {
        match kind {
            Kind::Lds => drop(self.listeners.remove(name)),
            Kind::Rds => drop(self.routes.remove(name)),
            Kind::Cds => drop(self.clusters.remove(name)),
            Kind::Eds => drop(self.endpoints.remove(name)),
        }
    }

    fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::Lds => self.listeners.clear(),
            Kind::Rds => self.routes.clear(),
            Kind::Cds => self.clusters.clear(),
            Kind::Eds => self.endpoints.clear(),
        }
    }

    /// Translates and inserts one resource.
    fn insert(&mut self, kind: Kind, any: &Any, version: &str) -> Result<(), TranslateError> {
        let version = version.to_string();
        match kind {
            Kind::Lds => {
                let (name, value) = proto::decode_listener(any)?;
                self.listeners.insert(name, Entry { version, value });
            }
            Kind::Rds => {
                let (name, value) = proto::decode_route(any)?;
                self.routes.insert(name, Entry { version, value });
            }
            Kind::Cds => {
                let (name, value) = proto::decode_cluster(any)?;
                self.clusters.insert(name, Entry { version, value });
            }
            Kind::Eds => {
                let (name, value) = proto::decode_endpoints(any)?;
                self.endpoints.insert(name, Entry { version, value });
            }
        }
        Ok(())
    }

    /// RDS names the listeners reference.
    fn wanted_routes(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| {
                let chains = l.value.chains.iter().filter_map(|c| c.rds.clone());
                l.value.rds.clone().into_iter().chain(chains)
            })
            .collect()
    }

    /// EDS names the clusters reference.
    fn wanted_endpoints(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| c.value.eds.clone())
            .collect()
    }
}

/// Every cluster a listener sends traffic (or spans) to.
fn referenced_clusters(l: &Listener) -> Vec<&str> {
    let mut out: Vec<&str> = l.cluster.iter().map(String::as_str).collect();
    // The tracer's collector too: a listener naming one that is not there yet warms (as for a
    // route's cluster) instead of failing the whole update's validation.
    out.extend(l.tracing.as_ref().map(|t| t.collector_cluster.as_str()));
    for a in l.route_actions() {
        out.extend(a.cluster.as_deref());
        out.extend(a.weighted_clusters.iter().map(|w| w.name.as_str()));
    }
    out
}

/// A response, either flavour, as the cache sees it.
enum Changes<'a> {
    /// State of the world: all resources (LDS, CDS) or the ones sent (RDS, EDS).
    Sotw(&'a [Any]),
    /// Incremental: (version, resource) added or changed, and names removed.
    Delta(Vec<(String, &'a Any)>, &'a [String]),
}

pub(crate) struct Client {
    bootstrap: config::XdsBootstrap,
    /// `xds.tls`, built by the caller (files read, SANs compiled).
    tls: Option<crate::XdsTls>,
    static_config: Config,
    apply: ApplyFn,
    shared: Arc<Shared>,
    cache: Cache,
    /// Per Kind: last accepted version (state of the world) or system version (delta).
    versions: [String; 4],
    /// Per Kind: nonce of the last response on the current stream.
    nonces: [String; 4],
    /// RDS and EDS names requested on the current stream.
    requested_routes: BTreeSet<String>,
    requested_endpoints: BTreeSet<String>,
    /// Per Kind: changed since the last applied snapshot.
    dirty: [bool; 4],
    applied_once: bool,
    first_deadline: Instant,
    /// The first deadline has passed (and its forced apply was tried).
    deadline_done: bool,
    /// EDS service name → the cached clusters that take their endpoints from it (rebuilt when
    /// the cache is replaced), so that an EDS response finds its clusters without a scan.
    eds_index: HashMap<String, Vec<String>>,
    /// The cache was replaced since the RDS and EDS subscriptions were last compared with it.
    subscriptions_stale: bool,
    /// Hash of the encoded bytes of each cached assignment the incremental path took (by
    /// name, and the reverse): an assignment sent again byte for byte (state of the world
    /// resends every one) is known unchanged without decoding it. Cleared when the cache is
    /// replaced.
    eds_hashes: HashMap<String, u64>,
    eds_by_hash: HashMap<u64, String>,
}

enum Exit {
    Stopped,
    Failed { got_response: bool, why: String },
}

// === impl Client ===

impl Client {
    pub(crate) fn new(
        bootstrap: config::XdsBootstrap,
        static_config: Config,
        apply: ApplyFn,
        shared: Arc<Shared>,
        tls: Option<crate::XdsTls>,
    ) -> Client {
        let first_deadline =
            Instant::now() + Duration::from_millis(bootstrap.initial_fetch_timeout_ms);
        Client {
            bootstrap,
            tls,
            static_config,
            apply,
            shared,
            cache: Cache::default(),
            versions: Default::default(),
            nonces: Default::default(),
            requested_routes: BTreeSet::new(),
            requested_endpoints: BTreeSet::new(),
            dirty: [false; 4],
            applied_once: false,
            first_deadline,
            deadline_done: false,
            eds_index: HashMap::new(),
            subscriptions_stale: true,
            eds_hashes: HashMap::new(),
            eds_by_hash: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let initial = self.bootstrap.retry_initial_ms.max(1);
        let max = self.bootstrap.retry_max_ms.max(initial);
        let mut backoff = initial;
        let mut first = true;
        loop {
            if !first {
                self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let exit = self.connect_and_serve(&mut stop).await;
            self.shared.connected.store(false, Ordering::Relaxed);
            match exit {
                Exit::Stopped => return,
                Exit::Failed { got_response, why } => {
                    tracing::warn!(server = %self.bootstrap.server, "xds stream ended: {why}");
                    if got_response {
                        backoff = initial;
                    }
                }
            }
            let delay = jitter(backoff);
            backoff = backoff.saturating_mul(2).min(max);
            if self.pause(Duration::from_millis(delay), &mut stop).await {
                return;
            }
        }
    }

    /// Sleeps, still applying the first snapshot at its deadline; true when stopped.
    async fn pause(&mut self, d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        let until = Instant::now() + d;
        loop {
            if *stop.borrow() {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                _ = tokio::time::sleep_until(self.first_deadline), if !self.applied_once && !self.deadline_done => {
                    self.deadline_passed();
                }
                _ = stop.changed() => return true,
            }
        }
    }

    fn deadline_passed(&mut self) {
        if self.applied_once {
            return;
        }
        // Once only: after this, every response tries a forced apply until one succeeds.
        self.deadline_done = true;
        let cand = self.cache.clone();
        if let Err(detail) = self.try_apply(cand, true) {
            tracing::warn!("xds: initial snapshot not applied: {detail}");
            self.shared.with_text(|t| t.0 = Some(detail));
        }
    }

    async fn connect_and_serve(&mut self, stop: &mut watch::Receiver<bool>) -> Exit {
        // The management server's connection gets `runtime.tcp_keepalive` too: a vanished
        // server is noticed and the client reconnects.
        let k = self.static_config.runtime.tcp_keepalive;
        let keepalive = k.enabled.then(|| {
            (
                Duration::from_secs(k.time_s.into()),
                Duration::from_secs(k.interval_s.into()),
                k.probes,
            )
        });
        let channel = tokio::select! {
            c = crate::transport::connect(&self.bootstrap.server, self.tls.as_ref(), keepalive) => match c {
                Ok(c) => c,
                Err(why) => return Exit::Failed { got_response: false, why },
            },
            _ = stop.changed() => return Exit::Stopped,
        };
        let client = AggregatedDiscoveryServiceClient::new(channel);
        self.nonces = Default::default();
        self.requested_routes.clear();
        self.requested_endpoints.clear();
        self.subscriptions_stale = true;
        match self.bootstrap.mode {
            XdsMode::Sotw => self.serve_sotw(client, stop).await,
            XdsMode::Delta => self.serve_delta(client, stop).await,
        }
    }

    fn node(&self) -> core_pb::Node {
        core_pb::Node {
            id: self.bootstrap.node_id.clone(),
            cluster: self.bootstrap.node_cluster.clone(),
            locality: self.bootstrap.locality.as_ref().map(|l| core_pb::Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            }),
            user_agent_name: "ringside".into(),
            metadata: node_metadata(&self.bootstrap.node_metadata),
            ..Default::default()
        }
    }

    // --- state of the world ---

    fn sotw_request(&self, kind: Kind, error: Option<String>) -> DiscoveryRequest {
        let names = match kind {
            Kind::Rds => self.requested_routes.iter().cloned().collect(),
            Kind::Eds => self.requested_endpoints.iter().cloned().collect(),
            _ => Vec::new(),
        };
        DiscoveryRequest {
            version_info: self.versions[kind as usize].clone(),
            node: Some(self.node()),
            resource_names: names,
            type_url: kind.type_url().into(),
            response_nonce: self.nonces[kind as usize].clone(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    async fn serve_sotw(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        stop: &mut watch::Receiver<bool>,
    ) -> Exit {
        let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
        // Resubscribe: CDS and LDS always, RDS and EDS for what the cache references, each with
        // the version we hold so the server can skip what we have.
        self.requested_routes = self.cache.wanted_routes();
        self.requested_endpoints = self.cache.wanted_endpoints();
        for kind in KINDS_IN_ORDER {
            let needed = match kind {
                Kind::Rds => !self.requested_routes.is_empty(),
                Kind::Eds => !self.requested_endpoints.is_empty(),
                _ => true,
            };
            if needed {
                let _ = tx.send(self.sotw_request(kind, None));
            }
        }
        let response = tokio::select! {
            r = client.stream_aggregated_resources(UnboundedReceiverStream::new(rx)) => r,
            _ = stop.changed() => return Exit::Stopped,
        };
        let mut stream = match response {
            Ok(r) => r.into_inner(),
            Err(s) => {
                return Exit::Failed {
                    got_response: false,
                    why: format!("open stream: {s}"),
                }
            }
        };
        self.shared.connected.store(true, Ordering::Relaxed);
        let mut got_response = false;
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(resp)) => {
                        got_response = true;
                        self.on_sotw(resp, &tx);
                    }
                    Ok(None) => return Exit::Failed { got_response, why: "server closed the stream".into() },
                    Err(s) => return Exit::Failed { got_response, why: s.to_string() },
                },
                _ = tokio::time::sleep_until(self.first_deadline), if !self.applied_once && !self.deadline_done => {
                    self.deadline_passed();
                    self.sync_subscriptions_sotw(&tx);
                }
                _ = stop.changed() => return Exit::Stopped,
            }
        }
    }

    fn on_sotw(&mut self, resp: DiscoveryResponse, tx: &mpsc::UnboundedSender<DiscoveryRequest>) {
        let Some(kind) = Kind::from_url(&resp.type_url) else {
            tracing::warn!("xds: ignoring response of unknown type {}", resp.type_url);
            return;
        };
        self.nonces[kind as usize] = resp.nonce.clone();
        match self.on_response(kind, &resp.version_info, Changes::Sotw(&resp.resources)) {
            Ok(()) => {
                let _ = tx.send(self.sotw_request(kind, None));
                self.shared.acks.fetch_add(1, Ordering::Relaxed);
                self.shared.by_type[kind as usize]
                    .0
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(detail) => {
                self.shared.by_type[kind as usize]
                    .1
                    .fetch_add(1, Ordering::Relaxed);
                self.nack(&detail);
                let _ = tx.send(self.sotw_request(kind, Some(detail)));
            }
        }
        self.sync_subscriptions_sotw(tx);
    }

    fn sync_subscriptions_sotw(&mut self, tx: &mpsc::UnboundedSender<DiscoveryRequest>) {
        if !std::mem::take(&mut self.subscriptions_stale) {
            return;
        }
        let routes = self.cache.wanted_routes();
        if routes != self.requested_routes {
            self.requested_routes = routes;
            let _ = tx.send(self.sotw_request(Kind::Rds, None));
        }
        let endpoints = self.cache.wanted_endpoints();
        if endpoints != self.requested_endpoints {
            self.requested_endpoints = endpoints;
            let _ = tx.send(self.sotw_request(Kind::Eds, None));
        }
    }

    // --- incremental ---

    async fn serve_delta(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        stop: &mut watch::Receiver<bool>,
    ) -> Exit {
        let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
        self.requested_routes = self.cache.wanted_routes();
        self.requested_endpoints = self.cache.wanted_endpoints();
        for kind in KINDS_IN_ORDER {
            let subscribe: Vec<String> = match kind {
                Kind::Rds if self.requested_routes.is_empty() => continue,
                Kind::Eds if self.requested_endpoints.is_empty() => continue,
                Kind::Rds => self.requested_routes.iter().cloned().collect(),
                Kind::Eds => self.requested_endpoints.iter().cloned().collect(),
                // An explicit wildcard, so a reconnect stays a wildcard subscription.
                _ => vec!["*".into()],
            };
            let initial: HashMap<String, String> = self.cache.names(kind).into_iter().collect();
            let _ = tx.send(DeltaDiscoveryRequest {
                node: Some(self.node()),
                type_url: kind.type_url().into(),
                resource_names_subscribe: subscribe,
                initial_resource_versions: initial,
                ..Default::default()
            });
        }
        let response = tokio::select! {
            r = client.delta_aggregated_resources(UnboundedReceiverStream::new(rx)) => r,
            _ = stop.changed() => return Exit::Stopped,
        };
        let mut stream = match response {
            Ok(r) => r.into_inner(),
            Err(s) => {
                return Exit::Failed {
                    got_response: false,
                    why: format!("open stream: {s}"),
                }
            }
        };
        self.shared.connected.store(true, Ordering::Relaxed);
        let mut got_response = false;
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(resp)) => {
                        got_response = true;
                        self.on_delta(resp, &tx);
                    }
                    Ok(None) => return Exit::Failed { got_response, why: "server closed the stream".into() },
                    Err(s) => return Exit::Failed { got_response, why: s.to_string() },
                },
                _ = tokio::time::sleep_until(self.first_deadline), if !self.applied_once && !self.deadline_done => {
                    self.deadline_passed();
                    self.sync_subscriptions_delta(&tx);
                }
                _ = stop.changed() => return Exit::Stopped,
            }
        }
    }

    fn on_delta(
        &mut self,
        resp: DeltaDiscoveryResponse,
        tx: &mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    ) {
        let Some(kind) = Kind::from_url(&resp.type_url) else {
            tracing::warn!("xds: ignoring response of unknown type {}", resp.type_url);
            return;
        };
        let version = if resp.system_version_info.is_empty() {
            resp.nonce.clone()
        } else {
            resp.system_version_info.clone()
        };
        let added: Vec<(String, &Any)> = resp
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref().map(|a| (r.version.clone(), a)))
            .collect();
        let result = self.on_response(
            kind,
            &version,
            Changes::Delta(added, &resp.removed_resources),
        );
        let error_detail = match result {
            Ok(()) => {
                self.shared.acks.fetch_add(1, Ordering::Relaxed);
                self.shared.by_type[kind as usize]
                    .0
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(detail) => {
                self.shared.by_type[kind as usize]
                    .1
                    .fetch_add(1, Ordering::Relaxed);
                self.nack(&detail);
                Some(Status {
                    code: INVALID_ARGUMENT,
                    message: detail,
                    details: Vec::new(),
                })
            }
        };
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        });
        self.sync_subscriptions_delta(tx);
    }

    fn sync_subscriptions_delta(&mut self, tx: &mpsc::UnboundedSender<DeltaDiscoveryRequest>) {
        if !std::mem::take(&mut self.subscriptions_stale) {
            return;
        }
        for kind in [Kind::Eds, Kind::Rds] {
            let (wanted, requested) = match kind {
                Kind::Rds => (self.cache.wanted_routes(), &mut self.requested_routes),
                _ => (self.cache.wanted_endpoints(), &mut self.requested_endpoints),
            };
            if wanted == *requested {
                continue;
            }
            let subscribe: Vec<String> = wanted.difference(requested).cloned().collect();
            let unsubscribe: Vec<String> = requested.difference(&wanted).cloned().collect();
            *requested = wanted;
            let _ = tx.send(DeltaDiscoveryRequest {
                type_url: kind.type_url().into(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            });
        }
    }

    // --- both ---

    fn nack(&mut self, detail: &str) {
        tracing::warn!("xds: NACK: {detail}");
        self.shared.nacks.fetch_add(1, Ordering::Relaxed);
        self.shared.with_text(|t| t.0 = Some(detail.to_string()));
    }

    /// Translates a response into a copy of the cache and applies it when warm. `Err` is the
    /// NACK detail; the cache is then untouched.
    fn on_response(
        &mut self,
        kind: Kind,
        version: &str,
        changes: Changes<'_>,
    ) -> Result<(), String> {
        if kind == Kind::Eds {
            if let Some(result) = self.endpoints_only(version, &changes) {
                return result;
            }
        }
        let started = std::time::Instant::now();
        let resources = match &changes {
            Changes::Sotw(r) => r.len(),
            Changes::Delta(a, _) => a.len(),
        };
        let mut cand = self.cache.clone();
        match changes {
            Changes::Sotw(resources) => {
                if kind.wildcard() {
                    cand.clear(kind);
                }
                for any in resources {
                    cand.insert(kind, any, version).map_err(|e| e.to_string())?;
                }
            }
            Changes::Delta(added, removed) => {
                for name in removed {
                    cand.remove(kind, name);
                }
                for (v, any) in added {
                    cand.insert(kind, any, &v).map_err(|e| e.to_string())?;
                }
            }
        }
        self.check_static_names(&cand, kind)?;
        // Drop routes and endpoints nothing references any more (they are unsubscribed).
        let routes = cand.wanted_routes();
        cand.routes.retain(|k, _| routes.contains(k));
        let endpoints = cand.wanted_endpoints();
        cand.endpoints.retain(|k, _| endpoints.contains(k));

        let version_before = self.versions[kind as usize].clone();
        let dirty_before = self.dirty;
        self.versions[kind as usize] = version.to_string();
        self.dirty[kind as usize] = true;
        let forced = !self.applied_once && self.deadline_done;
        let translated = started.elapsed();
        let result = self.try_apply(cand, forced);
        tracing::debug!(
            kind = ?kind,
            resources,
            translate_ms = translated.as_secs_f64() * 1e3,
            apply_ms = (started.elapsed() - translated).as_secs_f64() * 1e3,
            "xds: full update"
        );
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.versions[kind as usize] = version_before;
                self.dirty = dirty_before;
                Err(e)
            }
        }
    }

    /// An EDS response while a snapshot runs and nothing else waits to be applied: only the
    /// clusters whose endpoints changed go to `apply` ([`Change::Endpoints`]) and the cache is
    /// updated in place, so the work follows the response, not the whole config (no cache copy,
    /// no assembly, no validation of the other clusters). `None` leaves the response to the
    /// full path: a removal, an assignment the cache has none of yet (it may warm a cluster),
    /// or changes of other types not applied yet.
    fn endpoints_only(
        &mut self,
        version: &str,
        changes: &Changes<'_>,
    ) -> Option<Result<(), String>> {
        if !self.applied_once || self.dirty.iter().any(|d| *d) {
            return None;
        }
        let sent: Vec<(&str, &Any)> = match changes {
            Changes::Sotw(resources) => resources.iter().map(|a| (version, a)).collect(),
            Changes::Delta(_, removed) if !removed.is_empty() => return None,
            Changes::Delta(added, _) => added.iter().map(|(v, a)| (v.as_str(), *a)).collect(),
        };
        // By name, the last one sent wins (as in the full path); unreferenced ones are dropped.
        let mut decoded: HashMap<String, (&str, proto::Assignment, u64)> = HashMap::new();
        let mut same: HashMap<&str, &str> = HashMap::new();
        for (v, any) in sent {
            let hash = any_hash(any);
            if let Some(name) = self.eds_by_hash.get(&hash) {
                // Byte for byte the assignment the cache holds for `name`.
                decoded.remove(name);
                same.insert(name, v);
                continue;
            }
            match proto::decode_endpoints(any) {
                Ok((name, value)) if self.eds_index.contains_key(&name) => {
                    if !self.cache.endpoints.contains_key(&name) {
                        return None;
                    }
                    same.remove(name.as_str());
                    decoded.insert(name, (v, value, hash));
                }
                Ok(_) => {}
                Err(e) => return Some(Err(e.to_string())),
            }
        }
        let mut changed: Vec<ClusterEndpoints> = Vec::new();
        for (name, (_, value, _)) in &decoded {
            if self
                .cache
                .endpoints
                .get(name)
                .is_some_and(|e| e.value == *value)
            {
                continue;
            }
            let clusters = self.eds_index.get(name).into_iter().flatten();
            changed.extend(clusters.map(|c| ClusterEndpoints {
                cluster: c.clone(),
                endpoints: value.endpoints.clone(),
                metadata: value.metadata.clone(),
            }));
        }
        let version_before =
            std::mem::replace(&mut self.versions[Kind::Eds as usize], version.to_string());
        let update = Update {
            change: Change::Endpoints(changed),
            versions: self.current_versions(),
        };
        if let Err(e) = (self.apply)(update) {
            self.versions[Kind::Eds as usize] = version_before;
            return Some(Err(e));
        }
        let same: Vec<(String, String)> = same
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        for (name, version) in same {
            if let Some(e) = self.cache.endpoints.get_mut(&name) {
                e.version = version;
            }
        }
        for (name, (v, value, hash)) in decoded {
            if let Some(old) = self.eds_hashes.insert(name.clone(), hash) {
                self.eds_by_hash.remove(&old);
            }
            self.eds_by_hash.insert(hash, name.clone());
            let version = v.to_string();
            self.cache.endpoints.insert(name, Entry { version, value });
        }
        self.shared.updates.fetch_add(1, Ordering::Relaxed);
        let versions = self.current_versions();
        self.shared.with_text(|t| t.1 = versions);
        Some(Ok(()))
    }

    fn current_versions(&self) -> Versions {
        Versions {
            lds: self.versions[Kind::Lds as usize].clone(),
            rds: self.versions[Kind::Rds as usize].clone(),
            cds: self.versions[Kind::Cds as usize].clone(),
            eds: self.versions[Kind::Eds as usize].clone(),
        }
    }

    /// Makes `cand` the cache (and rebuilds what is derived from it).
    fn commit(&mut self, cand: Cache) {
        self.cache = cand;
        self.eds_index.clear();
        for (name, c) in &self.cache.clusters {
            if let Some(eds) = &c.value.eds {
                self.eds_index
                    .entry(eds.clone())
                    .or_default()
                    .push(name.clone());
            }
        }
        self.subscriptions_stale = true;
        self.eds_hashes.clear();
        self.eds_by_hash.clear();
    }

    fn check_static_names(&self, cand: &Cache, kind: Kind) -> Result<(), String> {
        let clash = match kind {
            Kind::Lds => self
                .static_config
                .listeners
                .iter()
                .find(|l| cand.listeners.contains_key(&l.name))
                .map(|l| ("listener", &l.name)),
            Kind::Cds => self
                .static_config
                .clusters
                .iter()
                .find(|c| cand.clusters.contains_key(&c.name))
                .map(|c| ("cluster", &c.name)),
            _ => None,
        };
        match clash {
            Some((what, name)) => Err(TranslateError::Field {
                kind: what,
                name: name.clone(),
                field: "name".into(),
                message: format!("a static {what} has this name"),
            }
            .to_string()),
            None => Ok(()),
        }
    }

    /// Every listener's routes and clusters are there, and every EDS cluster has endpoints.
    fn warm(&self, cand: &Cache) -> bool {
        let listeners_ready = cand
            .listeners
            .values()
            .all(|l| self.listener_ready(cand, &l.value));
        let endpoints_ready = cand
            .clusters
            .values()
            .filter_map(|c| c.value.eds.as_ref())
            .all(|n| cand.endpoints.contains_key(n));
        listeners_ready && endpoints_ready
    }

    fn listener_ready(&self, cand: &Cache, l: &ListenerRes) -> bool {
        let rds = std::iter::once(&l.rds).chain(l.chains.iter().map(|c| &c.rds));
        let routes_ok = rds.flatten().all(|n| cand.routes.contains_key(n));
        routes_ok
            && self.fill(cand, l).iter().all(|filled| {
                referenced_clusters(filled).iter().all(|c| {
                    cand.clusters.contains_key(*c) || self.static_config.cluster(c).is_some()
                })
            })
    }

    /// The listener, then its chains' listeners, with their RDS routes filled in.
    fn fill(&self, cand: &Cache, l: &ListenerRes) -> Vec<Listener> {
        let one = |listener: &Listener, rds: &Option<String>, route_limits: bool| {
            let mut out = listener.clone();
            if let (Some(name), Some(t)) = (rds, out.triple.as_mut()) {
                if let Some(r) = cand.routes.get(name) {
                    r.value.fill(t);
                    if !route_limits {
                        t.virtual_hosts
                            .iter_mut()
                            .flat_map(|h| &mut h.routes)
                            .for_each(|r| r.local_rate_limit = None);
                    }
                }
            }
            out
        };
        std::iter::once(one(&l.listener, &l.rds, l.route_limits))
            .chain(
                l.chains
                    .iter()
                    .map(|c| one(&c.listener, &c.rds, c.route_limits)),
            )
            .collect()
    }

    /// Static config plus the dynamic resources; with `ready_only`, listeners whose routes or
    /// clusters are missing are left out.
    fn assemble(&self, cand: &Cache, ready_only: bool) -> Result<Config, TranslateError> {
        let mut config = self.static_config.clone();
        for c in cand.clusters.values() {
            let mut cluster = c.value.cluster.clone();
            if let Some(e) = c.value.eds.as_ref().and_then(|n| cand.endpoints.get(n)) {
                e.value.apply(&mut cluster);
            }
            config.clusters.push(cluster);
        }
        let first_dynamic = config.listeners.len();
        for l in cand.listeners.values() {
            if ready_only && !self.listener_ready(cand, &l.value) {
                continue;
            }
            config.listeners.extend(self.fill(cand, &l.value));
        }
        hand_off(&mut config, first_dynamic, cand);
        let problems = config.validate_as(Source::Dynamic);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(TranslateError::Invalid {
                problems: name_problems(&config, problems),
            })
        }
    }

    /// Applies `cand` when warm (or `forced` by the first deadline) and commits it to the cache;
    /// when not warm, commits it without applying.
    fn try_apply(&mut self, cand: Cache, forced: bool) -> Result<(), String> {
        let warm = self.warm(&cand);
        if !warm && !forced {
            self.commit(cand);
            return Ok(());
        }
        let started = std::time::Instant::now();
        let config = self.assemble(&cand, !warm).map_err(|e| e.to_string())?;
        tracing::debug!(
            clusters = config.clusters.len(),
            assemble_ms = started.elapsed().as_secs_f64() * 1e3,
            "xds: assembled"
        );
        let versions = self.current_versions();
        (self.apply)(Update {
            change: Change::Full(Box::new(config)),
            versions: versions.clone(),
        })?;
        self.commit(cand);
        self.dirty = [false; 4];
        self.applied_once = true;
        self.shared.updates.fetch_add(1, Ordering::Relaxed);
        self.shared.with_text(|t| t.1 = versions);
        Ok(())
    }
}

/// Prefixes `listeners[i]` / `clusters[i]` problems with the resource's name, which is what
/// the control plane knows.
fn name_problems(config: &Config, problems: Vec<(String, String)>) -> Vec<(String, String)> {
    problems
        .into_iter()
        .map(|(field, message)| {
            let named = (|| {
                let (list, rest) = field.split_once('[')?;
                let (index, _) = rest.split_once(']')?;
                let i: usize = index.parse().ok()?;
                let name = match list {
                    "listeners" => &config.listeners.get(i)?.name,
                    "clusters" => &config.clusters.get(i)?.name,
                    _ => return None,
                };
                Some(format!("{} ({name:?})", field))
            })();
            (named.unwrap_or(field), message)
        })
        .collect()
}

/// A 64-bit hash of a resource as sent (type and bytes).
fn any_hash(any: &Any) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    h.finish()
}

/// A delay in [base/2, base] (ms), spread so that many sidecars do not reconnect in step.
pub(crate) fn jitter(base_ms: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let half = base_ms / 2;
    half + h.finish() % (base_ms - half + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_half_to_full() {
        for base in [1u64, 2, 500, 30_000] {
            for _ in 0..100 {
                let j = jitter(base);
                assert!(j >= base / 2 && j <= base, "{j} for {base}");
            }
        }
    }
}

/// Envoy's hand-off over the whole LDS set: a `use_original_dst` listener passes a connection
/// to the `bind_to_port: false` listener of its original destination. Each such listener gets
/// every dynamic virtual listener as `virtual_listeners`; with none, the virtual listeners take
/// no connection (as in Envoy) and are left out, with the listeners of their chains.
fn hand_off(config: &mut Config, first_dynamic: usize, cand: &Cache) {
    let dynamic = &config.listeners[first_dynamic..];
    let res = |name: &str| cand.listeners.get(name).map(|e| &e.value);
    // bind: false LDS listeners (not the listeners of a listener's filter chains).
    let virtuals: Vec<String> = dynamic
        .iter()
        .filter(|l| !l.bind && res(&l.name).is_some())
        .map(|l| l.name.clone())
        .collect();
    let handing: Vec<usize> = (first_dynamic..config.listeners.len())
        .filter(|&i| res(&config.listeners[i].name).is_some_and(|r| r.hand_off))
        .collect();
    if handing.is_empty() {
        let chain_of = |l: &Listener| {
            virtuals.iter().any(|v| {
                l.name
                    .strip_prefix(v.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        };
        config
            .listeners
            .retain(|l| l.bind || !(virtuals.contains(&l.name) || chain_of(l)));
        return;
    }
    for &h in &handing {
        config.listeners[h].virtual_listeners = virtuals.clone();
    }
}

/// A JSON value as a `google.protobuf.Value`.
pub(crate) fn json(v: &serde_json::Value) -> envoy_types::pb::google::protobuf::Value {
    use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// `xds.node_metadata` as the `google.protobuf.Struct` of `Node.metadata` (none when empty).
fn node_metadata(
    m: &std::collections::BTreeMap<String, config::NodeMetadataValue>,
) -> Option<envoy_types::pb::google::protobuf::Struct> {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    (!m.is_empty()).then(|| Struct {
        fields: m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    config::NodeMetadataValue::String(s) => string(s),
                    config::NodeMetadataValue::Map(m) => Value {
                        kind: Some(Kind::StructValue(Struct {
                            fields: m.iter().map(|(k, v)| (k.clone(), string(v))).collect(),
                        })),
                    },
                    config::NodeMetadataValue::Json(v) => json(v),
                };
                (k.clone(), v)
            })
            .collect(),
    })
}

/// What a listener makes the client wait for.
#[cfg(test)]
mod referenced_tests {
    #[test]
    fn a_tracers_collector_cluster_is_waited_for() {
        let yaml = "listeners:\n  - name: d\n    address: 127.0.0.1:20880\n    protocol: dubbo\n    cluster: app\n    tracing: {collector_cluster: otel}\nclusters:\n  - name: app\n    endpoints: [\"127.0.0.1:1\"]\n  - name: otel\n    endpoints: [\"127.0.0.1:2\"]\n";
        let c = config::Config::from_yaml("t.yaml", yaml).unwrap();
        assert_eq!(super::referenced_clusters(&c.listeners[0]), ["app", "otel"]);
    }
}
