//! Connects the registry client (crate `registry`, its own thread) to the running server, and
//! composes the two dynamic sources: the [`Composer`] keeps the latest base config (the file's,
//! or the newest xDS snapshot, which contains the file's) and the latest provider map, fills
//! every `type: zookeeper` cluster's endpoints from the map, and hands the result to
//! [`Shared::apply`], the one snapshot path. Readiness waits for the first read of every
//! interface (or `registry.initial_fetch_timeout_ms`); the client's counters are copied into
//! `registry.*` stats every second; the drain deregisters the local services first.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::server::{ApplyError, Shared};
use crate::config::{self, Config};
use crate::stats::Kind;

/// How long the drain waits for the registry to delete ringside's provider nodes.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// The latest of each dynamic source, merged into one config.
pub struct Composer {
    shared: Arc<Shared>,
    // Control plane only (the xDS and registry threads), never a shard.
    #[allow(clippy::disallowed_types)]
    state: std::sync::Mutex<Sources>,
}

#[derive(Clone)]
struct Sources {
    base: Config,
    xds_versions: Option<BTreeMap<String, String>>,
    providers: Arc<registry::Providers>,
    /// Cluster name → index in `base.clusters` (rebuilt with `base`).
    index: Arc<std::collections::HashMap<String, usize>>,
}

impl Sources {
    fn reindex(&mut self) {
        self.index = Arc::new(
            self.base
                .clusters
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect(),
        );
    }
}

impl Composer {
    /// Starts from the config the server runs now (the file's).
    #[allow(clippy::disallowed_types)] // the control-plane mutex above
    pub fn new(shared: Arc<Shared>) -> Arc<Composer> {
        let base = shared.snapshot().config.clone();
        let mut sources = Sources {
            base,
            xds_versions: None,
            providers: Arc::default(),
            index: Arc::default(),
        };
        sources.reindex();
        Arc::new(Composer {
            shared,
            state: std::sync::Mutex::new(sources),
        })
    }

    /// A new xDS snapshot (static + dynamic, complete): applied with the providers known.
    pub fn apply_xds(
        &self,
        config: Config,
        versions: BTreeMap<String, String>,
    ) -> Result<u64, ApplyError> {
        self.update(|s| {
            s.base = config;
            s.reindex();
            s.xds_versions = Some(versions);
        })
    }

    /// An endpoints-only xDS change (the clusters are dynamic ones of the last xDS snapshot):
    /// applied as it is, the cost following the change. xDS clusters are never `type:
    /// zookeeper`, so the providers do not enter into it; `base` takes the new endpoints once
    /// the shards run them.
    pub fn apply_xds_endpoints(
        &self,
        changed: Vec<xds::ClusterEndpoints>,
        versions: BTreeMap<String, String>,
    ) -> Result<u64, ApplyError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut at = Vec::with_capacity(changed.len());
        for c in &changed {
            match state.index.get(&c.cluster) {
                Some(&i) if state.base.clusters[i].kind != config::ClusterType::Zookeeper => {
                    at.push(i)
                }
                Some(_) => return Err(ApplyError::EdsForRegistryCluster(c.cluster.clone())),
                None => return Err(ApplyError::EdsUnknownCluster(c.cluster.clone())),
            }
        }
        let version = self
            .shared
            .apply_endpoints(&changed, Some(versions.clone()))?;
        for (i, c) in at.into_iter().zip(changed) {
            state.base.clusters[i].endpoints = c.endpoints;
            state.base.clusters[i].endpoint_metadata = c.metadata;
        }
        state.xds_versions = Some(versions);
        Ok(version)
    }

    /// A new provider map from the registry.
    pub fn apply_providers(&self, providers: Arc<registry::Providers>) -> Result<u64, ApplyError> {
        self.update(|s| s.providers = providers)
    }

    /// Applies the sources as `change` leaves them; keeps the change only if the shards took it
    /// (a refused xDS snapshot must not come back with the next registry change).
    fn update(&self, change: impl FnOnce(&mut Sources)) -> Result<u64, ApplyError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = state.clone();
        change(&mut next);
        let mut config = compose(&next.base, &next.providers);
        config.xds = self.shared.config.xds.clone();
        config.registry = self.shared.config.registry.clone();
        let version = self.shared.apply(config, next.xds_versions.clone())?;
        *state = next;
        Ok(version)
    }
}

/// `base` with every `type: zookeeper` cluster's endpoints (and their metadata) taken from
/// `providers`: those of its interface and protocol that its selector matches, one per
/// address (two nodes of one address, e.g. both processes of a hot upgrade, are one endpoint),
/// in address order so that an unchanged set compares equal.
pub fn compose(base: &Config, providers: &registry::Providers) -> Config {
    let mut config = base.clone();
    for c in &mut config.clusters {
        let Some(sel) = c
            .registry
            .as_ref()
            .filter(|_| c.kind == config::ClusterType::Zookeeper)
        else {
            continue;
        };
        let mut chosen: Vec<&registry::Provider> = providers
            .get(&sel.interface)
            .map(|ps| {
                ps.iter()
                    .filter(|p| p.protocol == sel.protocol && sel.selects(&p.meta))
                    .collect()
            })
            .unwrap_or_default();
        chosen.sort_by_key(|p| p.addr);
        chosen.dedup_by_key(|p| p.addr);
        c.endpoints = chosen.iter().map(|p| p.addr).collect();
        c.endpoint_metadata = chosen.iter().map(|p| p.meta.clone()).collect();
    }
    config
}

/// The interfaces the config's `type: zookeeper` clusters watch (each once).
pub fn interfaces(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = config
        .clusters
        .iter()
        .filter(|c| c.kind == config::ClusterType::Zookeeper)
        .filter_map(|c| c.registry.as_ref().map(|r| r.interface.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The services to register, each with the address consumers are sent to (its `advertise`,
/// else its listener's address; a listener on 0.0.0.0 needs `advertise`).
pub fn registrations(config: &Config) -> Result<Vec<registry::Registration>, String> {
    let Some(r) = &config.registry else {
        return Ok(Vec::new());
    };
    r.services
        .iter()
        .map(|s| {
            let listener = config
                .listeners
                .iter()
                .find(|l| l.name == s.listener)
                .ok_or_else(|| format!("registry service {:?}: unknown listener {:?}", s.interface, s.listener))?;
            let advertise = s.advertise.unwrap_or(listener.address);
            if advertise.ip().is_unspecified() {
                return Err(format!(
                    "registry service {:?}: listener {:?} binds {}: give `advertise` (the address consumers reach)",
                    s.interface, s.listener, listener.address
                ));
            }
            Ok(registry::Registration {
                service: s.clone(),
                advertise,
            })
        })
        .collect()
}

/// Starts the registry client when the config has a `registry` section; `None` otherwise.
pub fn start(
    shared: &Arc<Shared>,
    composer: &Arc<Composer>,
) -> Result<Option<Arc<registry::Handle>>, String> {
    let Some(cfg) = shared.config.registry.clone() else {
        return Ok(None);
    };
    let base = shared.snapshot().config.clone();
    let interfaces = interfaces(&base);
    let registrations = registrations(&base)?;
    let initial = Duration::from_millis(cfg.initial_fetch_timeout_ms);
    let (s, c) = (shared.clone(), composer.clone());
    let apply: registry::ApplyFn = Box::new(move |providers, complete| {
        let (interfaces, endpoints) = (
            providers.len(),
            providers.values().map(Vec::len).sum::<usize>(),
        );
        let version = c.apply_providers(providers).map_err(|e| e.to_string())?;
        tracing::info!(version, interfaces, endpoints, "registry providers applied");
        if complete {
            s.registry_ready.store(true, Ordering::Release);
        }
        Ok(())
    });
    let handle = Arc::new(
        registry::start(cfg, interfaces, registrations, apply).map_err(|e| e.to_string())?,
    );
    let _ = shared.registry.set(handle.clone());
    let s = shared.clone();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    spawn(
        "registry-ready",
        Box::new(move || {
            std::thread::sleep(initial);
            if !s.registry_ready.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    timeout_ms = initial.as_millis() as u64,
                    "registry: not every interface read within the initial fetch timeout; serving without"
                );
            }
        }),
    )?;
    let (s, h) = (shared.clone(), Arc::downgrade(&handle));
    spawn("registry-stats", Box::new(move || publish(s, h)))?;
    Ok(Some(handle))
}

/// Deletes the nodes registered on the application's behalf (the drain, before it stops
/// accepting). Waits at most [`DEREGISTER_TIMEOUT`].
pub fn deregister(shared: &Shared) {
    let Some(h) = shared.registry.get() else {
        return;
    };
    if shared
        .config
        .registry
        .as_ref()
        .is_none_or(|r| r.services.is_empty())
    {
        return;
    }
    if h.deregister(DEREGISTER_TIMEOUT) {
        tracing::info!("registry: local services deregistered");
    } else {
        tracing::warn!("registry: deregistration did not finish; the nodes go with the session");
    }
}

/// Copies the client's counters into `registry.*` stats (shard 0's slots, written by this
/// thread only).
fn publish(shared: Arc<Shared>, handle: std::sync::Weak<registry::Handle>) {
    let st = &shared.stats;
    let c = |name| st.add("registry", name, &[], Kind::Counter);
    let g = |name| st.add("registry", name, &[], Kind::Gauge);
    let (updates, failures, events, expirations, reconnects, skipped) = (
        c("updates"),
        c("update_failures"),
        c("watch_events"),
        c("session_expirations"),
        c("reconnects"),
        c("nodes_skipped"),
    );
    let (connected, endpoints, registered) = (g("connected"), g("endpoints"), g("registered"));
    let out = st.shard(0);
    let mut last = registry::RegistryStats::default();
    while let Some(h) = handle.upgrade() {
        if shared.drained.load(Ordering::Acquire) {
            return;
        }
        let now = h.stats();
        drop(h);
        out.add(updates, now.updates.saturating_sub(last.updates));
        out.add(
            failures,
            now.update_failures.saturating_sub(last.update_failures),
        );
        out.add(events, now.watch_events.saturating_sub(last.watch_events));
        out.add(
            expirations,
            now.session_expirations
                .saturating_sub(last.session_expirations),
        );
        out.add(reconnects, now.reconnects.saturating_sub(last.reconnects));
        out.add(
            skipped,
            now.nodes_skipped.saturating_sub(last.nodes_skipped),
        );
        gauge(
            &out,
            connected,
            u64::from(last.connected),
            u64::from(now.connected),
        );
        gauge(&out, endpoints, last.endpoints, now.endpoints);
        gauge(&out, registered, last.registered, now.registered);
        last = now;
        std::thread::sleep(super::xds_glue::XDS_STATS_PUBLISH);
    }
}

fn gauge(out: &crate::stats::ShardStats, id: crate::stats::StatId, old: u64, new: u64) {
    // Slots wrap: adding the wrapped difference moves a gauge down as well as up.
    out.add(id, new.wrapping_sub(old));
}

/// `/server_info`'s `registry` section.
pub fn server_info(shared: &Shared) -> Option<serde_json::Value> {
    let h = shared.registry.get()?;
    let r = h.stats();
    let cfg = shared.config.registry.as_ref();
    Some(serde_json::json!({
        "addresses": cfg.map(|c| c.addresses.clone()),
        "connected": r.connected,
        "ready": shared.registry_ready.load(Ordering::Acquire),
        "updates": r.updates,
        "update_failures": r.update_failures,
        "watch_events": r.watch_events,
        "session_expirations": r.session_expirations,
        "reconnects": r.reconnects,
        "endpoints": r.endpoints,
        "nodes_skipped": r.nodes_skipped,
        "registered": r.registered,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(port: u16, version: &str, protocol: &str) -> registry::Provider {
        registry::Provider {
            protocol: protocol.into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            meta: config::EndpointMetadata {
                version: version.into(),
                ..Default::default()
            },
        }
    }

    const BASE: &str = "registry:\n  addresses: ['127.0.0.1:2181']\nclusters:\n  - {name: s, endpoints: ['127.0.0.1:9']}\n  - {name: v1, type: zookeeper, registry: {interface: com.a.B, version: '1'}}\n  - {name: any, type: zookeeper, registry: {interface: com.a.B}}\n  - {name: tri, type: zookeeper, registry: {interface: com.a.B, protocol: tri}}\n  - {name: other, type: zookeeper, registry: {interface: com.a.C}}\n";

    #[test]
    fn registry_clusters_take_their_subset_once_per_address_in_order() {
        let base = Config::from_yaml("t.yaml", BASE).unwrap();
        assert_eq!(interfaces(&base), ["com.a.B", "com.a.C"]);
        let mut providers = registry::Providers::new();
        providers.insert(
            "com.a.B".into(),
            vec![
                provider(3, "1", "dubbo"),
                provider(2, "2", "dubbo"),
                provider(1, "1", "dubbo"),
                provider(3, "1", "dubbo"),
                provider(4, "1", "tri"),
            ],
        );
        let c = compose(&base, &providers);
        let ports = |name: &str| -> Vec<u16> {
            c.cluster(name)
                .unwrap()
                .endpoints
                .iter()
                .map(|a| a.port())
                .collect()
        };
        assert_eq!(ports("s"), [9]);
        assert_eq!(ports("v1"), [1, 3]);
        assert_eq!(ports("any"), [1, 2, 3]);
        assert_eq!(ports("tri"), [4]);
        assert!(ports("other").is_empty());
        let any = c.cluster("any").unwrap();
        assert_eq!(any.endpoint_metadata.len(), 3);
        assert_eq!(any.endpoint_metadata[1].version, "2");
        assert!(c.validate_as(config::Source::Dynamic).is_empty());
        // Nothing known for an interface keeps it empty; the file config itself is untouched.
        assert!(base.cluster("v1").unwrap().endpoints.is_empty());
    }

    #[test]
    fn services_on_a_wildcard_listener_need_an_advertised_address() {
        let yaml = "registry:\n  addresses: ['127.0.0.1:2181']\n  services:\n    - {interface: com.a.B, listener: in, local_port: 20880}\nlisteners:\n  - {name: in, address: '0.0.0.0:20881', protocol: dubbo, cluster: app}\nclusters:\n  - {name: app, endpoints: ['127.0.0.1:20880']}\n";
        let c = Config::from_yaml("t.yaml", yaml).unwrap();
        assert!(registrations(&c).unwrap_err().contains("advertise"));
        let c = Config::from_yaml(
            "t.yaml",
            &yaml.replace(
                "local_port: 20880}",
                "local_port: 20880, advertise: '10.0.0.5:20881'}",
            ),
        )
        .unwrap();
        assert_eq!(
            registrations(&c).unwrap()[0].advertise,
            "10.0.0.5:20881".parse().unwrap()
        );
    }
}
