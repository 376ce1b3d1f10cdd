//! Config → `Snapshot`: one immutable config as the shards run it, with every stat id it names
//! registered once, and each cluster's endpoint table (slots that keep their index across
//! updates). Built on the control thread by `Builder`, read by the shards.

use std::sync::Arc;

use crate::access_log::{LogSpec, OpenError};
use crate::cluster::zone::Zones;
use crate::cluster::{
    tag_hash, ClusterStatIds, Endpoints, HostStatIds, Labels, Slot, Subset, UpstreamStatIds,
};
use crate::config::{self, Config};
use crate::filter::dubbo::downstream::DubboStatIds;
use crate::filter::ratelimit::{Bucket, LimitStatIds, SharedLimit, SharedLimits};
use crate::filter::triple::{TripleStatIds, UpstreamH2StatIds};
use crate::filter::{ListenerStatIds, RequestStatIds};
use crate::stats::{StatId, Stats};

/// One shard's poll-loop counters, copied from the shard's `PollStats` by the shard itself
/// every `POLL_STATS_PUBLISH`: each shard writes only its own, tagged `shard=N`.
#[derive(Clone, Copy, Debug)]
pub struct PollStatIds {
    /// µs the loop spent in polls that found nothing (spin and hybrid modes).
    pub idle_spin_us: StatId,
    /// µs of loop wall time: `idle_spin_us / loop_us` is the idle-spinning fraction.
    pub loop_us: StatId,
    /// Times the loop blocked in the kernel (every wait in sleep mode, none in spin mode).
    pub sleeps: StatId,
}

/// One shard's own stats, tagged `shard=N`: its poll loop and its buffer budget.
#[derive(Clone, Copy, Debug)]
pub struct ShardStatIds {
    pub poll: PollStatIds,
    pub budget: crate::filter::BudgetStatIds,
    /// Hot upgrade, new side: how long each adopted connection paused, from the moment its
    /// predecessor stopped reading it until a shard here starts reading it (one histogram
    /// for the process, recorded by the shard that adopts).
    pub handover_pause: crate::stats::HistId,
}

/// One immutable config as the shards run it: the config, every stat id it needs, and each
/// cluster's endpoint table. Built on the control thread; shards swap it in between requests.
pub struct Snapshot {
    /// Counts applied configs: 1 for the one the process started with.
    pub version: u64,
    pub config: Config,
    /// The xDS resource versions it was built from (type → version), when xDS built it.
    pub xds_versions: Option<std::collections::BTreeMap<String, String>>,
    pub listener_ids: Vec<ListenerStatIds>,
    /// For `dubbo` listeners, by listener index.
    pub dubbo_ids: Vec<Option<DubboStatIds>>,
    /// For `dubbo` and `triple` listeners: per route, then the default route.
    pub route_ids: Vec<Vec<RequestStatIds>>,
    /// Per cluster (shared with the next snapshot when only endpoints change).
    pub cluster_ids: Arc<[ClusterStatIds]>,
    pub upstream_ids: Arc<[UpstreamStatIds]>,
    /// Per cluster: what its HTTP/2 (Triple) upstream connections count.
    pub upstream_h2_ids: Arc<[UpstreamH2StatIds]>,
    /// For `triple` listeners, by listener index.
    pub triple_ids: Vec<Option<TripleStatIds>>,
    /// Each cluster's endpoints, shared by the shards.
    pub endpoints: Vec<Arc<Endpoints>>,
    /// Set when this snapshot differs from the one before it (`base`) only in the endpoints
    /// of these clusters (indices): a shard that runs `base` updates just those.
    pub endpoints_only: Option<EndpointsOnly>,
    /// Each listener's access logs (by listener index; files opened by [`open_access_logs`]).
    pub access_logs: Vec<Vec<LogSpec>>,
    /// Each listener's tracing (by listener index): its collector, shared across updates.
    pub traces: Vec<Option<crate::trace::TraceSpec>>,
    /// The TLS of listeners and clusters, by index: loaded by the control thread from the
    /// files the config names ([`crate::io::tls::TlsSet::load`]) before the shards get it.
    pub tls: Arc<crate::io::tls::TlsSet>,
    /// By listener index: its local rate limits (buckets shared by the shards), `None` when
    /// it has none.
    pub limits: Vec<Option<SharedLimits>>,
    /// By listener index: its JWT authentication (`triple.jwt_authn`), the JWKS parsed once
    /// here, shared by the shards.
    pub jwt: Vec<Option<Arc<crate::filter::jwt::JwtAuthn>>>,
}

impl Snapshot {
    /// A copy of this snapshot as version `version` (a full one, not endpoints-only): the
    /// config and endpoint tables copied, everything else shared.
    fn copy(&self, version: u64) -> Snapshot {
        Snapshot {
            version,
            config: self.config.clone(),
            xds_versions: self.xds_versions.clone(),
            listener_ids: self.listener_ids.clone(),
            dubbo_ids: self.dubbo_ids.clone(),
            route_ids: self.route_ids.clone(),
            cluster_ids: self.cluster_ids.clone(),
            upstream_ids: self.upstream_ids.clone(),
            upstream_h2_ids: self.upstream_h2_ids.clone(),
            triple_ids: self.triple_ids.clone(),
            endpoints: self.endpoints.clone(),
            endpoints_only: None,
            access_logs: self.access_logs.clone(),
            traces: self.traces.clone(),
            tls: self.tls.clone(),
            limits: self.limits.clone(),
            jwt: self.jwt.clone(),
        }
    }
}

/// Opens (or shares) the access-log files of every listener and compiles their formats: a bad
/// format or a file that cannot be opened refuses the config.
pub fn open_access_logs(config: &Config) -> Result<Vec<Vec<LogSpec>>, OpenError> {
    config
        .listeners
        .iter()
        .map(|l| crate::access_log::open(&l.access_log))
        .collect()
}

/// Opens (or shares) the collector of every traced listener and gives each the endpoints of
/// its cluster now. A collector whose exporter thread cannot start leaves its listener
/// untraced (logged).
fn open_traces(
    config: &Config,
    endpoints: &[Arc<Endpoints>],
) -> Vec<Option<crate::trace::TraceSpec>> {
    let node = Arc::new(config.xds.as_ref().map_or_else(Default::default, |x| {
        let zone = x.locality.as_ref().map(|l| l.zone.clone());
        (x.node_id.clone(), zone.unwrap_or_default())
    }));
    config
        .listeners
        .iter()
        .map(|l| {
            let t = l.tracing.as_ref()?;
            match crate::trace::TraceSpec::open(t, node.clone()) {
                Ok(spec) => {
                    set_collector_endpoints(config, endpoints, &spec);
                    Some(spec)
                }
                Err(e) => {
                    tracing::error!(listener = %l.name, error = %e, "tracing: cannot start the exporter; listener not traced");
                    None
                }
            }
        })
        .collect()
}

/// Gives a collector the live endpoints of its cluster.
fn set_collector_endpoints(
    config: &Config,
    endpoints: &[Arc<Endpoints>],
    spec: &crate::trace::TraceSpec,
) {
    let Some(i) = config
        .clusters
        .iter()
        .position(|c| c.name == spec.collector.cluster())
    else {
        return;
    };
    let Some(e) = endpoints.get(i) else { return };
    let mut addrs: Vec<std::net::SocketAddr> = Vec::new();
    for &slot in e.live.iter() {
        if let Some(s) = e.slots.get(slot as usize) {
            if !addrs.contains(&s.addr) {
                addrs.push(s.addr);
            }
        }
    }
    spec.collector.set_endpoints(addrs);
}

/// What `ringside run` would refuse beyond the config's own validation, checked without side
/// effects (`ringside validate`): access-log formats that do not compile (their files are not
/// opened) and certificate, key and CA files that cannot be read or do not parse.
pub fn check_files(config: &Config) -> Vec<String> {
    let mut problems: Vec<String> = config
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            crate::access_log::check(&l.access_log)
                .err()
                .map(|e| format!("listeners[{i}] ({}): {e}", l.name))
        })
        .collect();
    // SDS secrets arrive at run time: only files are checked here.
    if let Err((field, message)) = crate::io::tls::TlsSet::load(config, &Default::default()) {
        problems.push(format!("{field}: {message}"));
    }
    problems
}

/// What an endpoints-only snapshot changed (see [`Snapshot::endpoints_only`]).
#[derive(Clone, Debug)]
pub struct EndpointsOnly {
    pub base: u64,
    pub clusters: Vec<usize>,
}

impl Snapshot {
    /// No listeners, no clusters (what a shard runs before its first snapshot).
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            config: Config::default(),
            xds_versions: None,
            listener_ids: Vec::new(),
            dubbo_ids: Vec::new(),
            route_ids: Vec::new(),
            cluster_ids: Arc::new([]),
            upstream_ids: Arc::new([]),
            upstream_h2_ids: Arc::new([]),
            triple_ids: Vec::new(),
            endpoints: Vec::new(),
            endpoints_only: None,
            access_logs: Vec::new(),
            traces: Vec::new(),
            tls: Arc::default(),
            limits: Vec::new(),
            jwt: Vec::new(),
        }
    }
}

/// Endpoint tables with slot indices that stay stable across updates fall behind this many
/// slots beyond twice the live endpoints, then are renumbered (the shards replace that
/// cluster's pools; its connections close once idle).
pub const ENDPOINT_SLOTS_SLACK: usize = 64;

/// What the control thread remembers about one cluster between snapshots: its stat ids
/// (registered once) and its endpoint table.
struct ClusterState {
    /// Its index in the last snapshot's clusters.
    index: usize,
    ids: ClusterStatIds,
    upstream: UpstreamStatIds,
    upstream_h2: UpstreamH2StatIds,
    published: Arc<Endpoints>,
    /// Each endpoint's traffic label as last published (address order of the config),
    /// for the unchanged check.
    tags: Vec<String>,
}

/// The control thread's state between snapshots.
#[derive(Default)]
pub struct Builder {
    clusters: std::collections::HashMap<String, ClusterState>,
    /// Rate limit buckets by place (`listener/route`): a bucket whose config stays the same
    /// keeps its tokens across updates.
    buckets: std::collections::HashMap<String, SharedLimit>,
    next_generation: u64,
    version: u64,
}

fn host_stat_ids(st: &Stats, c: &config::Cluster, addr: std::net::SocketAddr) -> HostStatIds {
    let cluster = c.name.as_str();
    // Whether the endpoint is ejected on some shard, for `/clusters` (outlier detection only:
    // the address is formatted once per new endpoint).
    let ejected = if c.outlier_detection.is_some() {
        let host = addr.to_string();
        st.add_hidden(
            "cluster_host",
            "outlier_ejected",
            &[("cluster", cluster), ("host", host.as_str())],
        )
    } else {
        crate::stats::SINK
    };
    if !st.per_host {
        // Off (the default): every id is the sink. Not formatting the address matters at
        // 100,000 endpoints (a big xDS push spent ~6 % of its CPU here).
        return HostStatIds {
            ejected,
            ..HostStatIds::sink()
        };
    }
    let host = addr.to_string();
    let t = [("cluster", cluster), ("host", host.as_str())];
    HostStatIds {
        cx_total: st.add_host("cluster_host", "upstream_cx_total", &t),
        cx_connect_fail: st.add_host("cluster_host", "upstream_cx_connect_fail", &t),
        rq_total: st.add_host("cluster_host", "upstream_rq_total", &t),
        rq_timeout: st.add_host("cluster_host", "upstream_rq_timeout", &t),
        rq_failure: st.add_host("cluster_host", "upstream_rq_failure", &t),
        ejected,
    }
}

/// The stat names of a Triple listener's routes in route-index order: flat routes by their
/// `name`; a virtual host's as `{host name}/{route name}` (routes of several hosts, Istio's
/// among them, are often named alike). `None`: `routes[i]` by index, resp.
/// `{host}/routes[j]`.
fn triple_route_names(t: &config::TripleListener) -> Vec<Option<String>> {
    let flat = t.routes.iter().map(|r| r.name.clone());
    let hosted = t.virtual_hosts.iter().flat_map(|h| {
        h.routes.iter().enumerate().map(|(j, r)| {
            Some(match &r.name {
                Some(n) => format!("{}/{n}", h.name),
                None => format!("{}/routes[{j}]", h.name),
            })
        })
    });
    flat.chain(hosted).collect()
}

/// The request counters of each route of listener `l` (config order, then its default route),
/// named by the route's `name` or `routes[i]`.
fn route_stat_ids(st: &Stats, l: &config::Listener) -> Vec<RequestStatIds> {
    let (names, scope): (Vec<Option<String>>, _) = match l.protocol {
        config::Protocol::Dubbo => (
            l.dubbo
                .iter()
                .flat_map(|d| &d.routes)
                .map(|r| r.name.clone())
                .collect(),
            "dubbo_route",
        ),
        config::Protocol::Triple => (
            l.triple.iter().flat_map(triple_route_names).collect(),
            "triple_route",
        ),
        config::Protocol::Tcp => return Vec::new(),
    };
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| n.unwrap_or_else(|| format!("routes[{i}]")))
        .chain(std::iter::once("default".to_string()))
        .map(|route| {
            let t = [("listener", l.name.as_str()), ("route", route.as_str())];
            RequestStatIds::register(st, scope, &t)
        })
        .collect()
}

impl Builder {
    /// The snapshot of `config` (validated by the caller); registers the stats it names.
    pub fn build(
        &mut self,
        config: Config,
        st: &Stats,
        xds_versions: Option<std::collections::BTreeMap<String, String>>,
        access_logs: Vec<Vec<LogSpec>>,
    ) -> Snapshot {
        self.version += 1;
        // A set of the new names: `retain` with a scan of config.clusters per kept cluster was
        // O(clusters²) (10,000 clusters: ~10^8 name comparisons on every update, EDS ones too).
        let names: std::collections::HashSet<&str> =
            config.clusters.iter().map(|c| c.name.as_str()).collect();
        self.clusters
            .retain(|name, _| names.contains(name.as_str()));
        let mut cluster_ids = Vec::with_capacity(config.clusters.len());
        let mut upstream_ids = Vec::with_capacity(config.clusters.len());
        let mut upstream_h2_ids = Vec::with_capacity(config.clusters.len());
        let mut endpoints = Vec::with_capacity(config.clusters.len());
        // Zone-aware routing: every table grouped by locality too (the proxy's own first).
        let me = config.local_locality().map(|(_, l)| l);
        for (index, c) in config.clusters.iter().enumerate() {
            let state = self.clusters.entry(c.name.clone()).or_insert_with(|| {
                self.next_generation += 1;
                ClusterState {
                    index,
                    ids: ClusterStatIds::register(st, &c.name),
                    upstream: UpstreamStatIds::register(st, &c.name),
                    upstream_h2: UpstreamH2StatIds::register(st, &[("cluster", &c.name)]),
                    published: Arc::new(Endpoints::empty(self.next_generation)),
                    tags: Vec::new(),
                }
            });
            state.index = index;
            state.update(c, st, &mut self.next_generation, me.as_ref());
            cluster_ids.push(state.ids.clone());
            upstream_ids.push(state.upstream);
            upstream_h2_ids.push(state.upstream_h2);
            endpoints.push(state.published.clone());
        }
        let listener_ids = config
            .listeners
            .iter()
            .map(|l| ListenerStatIds::register(st, l))
            .collect();
        let dubbo_ids = config
            .listeners
            .iter()
            .map(|l| {
                (l.protocol == config::Protocol::Dubbo).then(|| DubboStatIds::register(st, &l.name))
            })
            .collect();
        let route_ids = config
            .listeners
            .iter()
            .map(|l| route_stat_ids(st, l))
            .collect();
        let triple_ids = config
            .listeners
            .iter()
            .map(|l| {
                (l.protocol == config::Protocol::Triple)
                    .then(|| TripleStatIds::register(st, &l.name))
            })
            .collect();
        let traces = open_traces(&config, &endpoints);
        let mut buckets = std::mem::take(&mut self.buckets);
        let limits = config
            .listeners
            .iter()
            .map(|l| self.shared_limits(st, l, &mut buckets))
            .collect();
        let jwt = config
            .listeners
            .iter()
            .map(|l| {
                let j = l.triple.as_ref()?.jwt_authn.as_ref()?;
                Some(Arc::new(crate::filter::jwt::JwtAuthn::new(j, st)))
            })
            .collect();
        Snapshot {
            version: self.version,
            config,
            xds_versions,
            listener_ids,
            dubbo_ids,
            route_ids,
            cluster_ids: cluster_ids.into(),
            upstream_ids: upstream_ids.into(),
            upstream_h2_ids: upstream_h2_ids.into(),
            triple_ids,
            endpoints,
            endpoints_only: None,
            access_logs,
            traces,
            tls: Arc::default(),
            limits,
            jwt,
        }
    }

    /// Listener `l`'s rate limits: a bucket from `old` (the last snapshot's) when its place and
    /// config are the same, else a new full one. Kept in `self.buckets` for the next update.
    fn shared_limits(
        &mut self,
        st: &Stats,
        l: &config::Listener,
        old: &mut std::collections::HashMap<String, SharedLimit>,
    ) -> Option<SharedLimits> {
        // In route-index order, named as the route stats are.
        let routes: Vec<(Option<String>, Option<&config::TokenBucket>)> = match l.protocol {
            config::Protocol::Dubbo => l
                .dubbo
                .iter()
                .flat_map(|d| &d.routes)
                .map(|r| (r.name.clone(), r.local_rate_limit.as_ref()))
                .collect(),
            config::Protocol::Triple => l
                .triple
                .iter()
                .flat_map(|t| {
                    let limits = t.all_routes().map(|r| r.local_rate_limit.as_ref());
                    triple_route_names(t).into_iter().zip(limits)
                })
                .collect(),
            config::Protocol::Tcp => Vec::new(),
        };
        if l.local_rate_limit.is_none() && routes.iter().all(|(_, b)| b.is_none()) {
            return None;
        }
        let mut limit = |route: Option<String>, b: &config::TokenBucket| {
            let key = format!("{}/{}", l.name, route.as_deref().unwrap_or(""));
            let shared = match old.remove(&key) {
                Some(s) if s.bucket.config == *b => s,
                _ => {
                    let mut tags = vec![("listener", l.name.as_str())];
                    if let Some(r) = &route {
                        tags.push(("route", r.as_str()));
                    }
                    SharedLimit {
                        bucket: Arc::new(Bucket::new(*b)),
                        ids: LimitStatIds::register(st, &tags),
                    }
                }
            };
            self.buckets.insert(key, shared.clone());
            shared
        };
        let listener = l.local_rate_limit.as_ref().map(|b| limit(None, b));
        let routes = routes
            .into_iter()
            .enumerate()
            .map(|(i, (name, b))| {
                let name = name.unwrap_or_else(|| format!("routes[{i}]"));
                b.map(|b| limit(Some(name), b))
            })
            .chain(std::iter::once(None))
            .collect();
        Some(SharedLimits { listener, routes })
    }

    /// The snapshot after `prev` (the last one built) that differs only in its TLS configs
    /// (new SDS certificates): everything else is shared with or copied from `prev`.
    pub fn build_tls(&mut self, prev: &Snapshot, tls: Arc<crate::io::tls::TlsSet>) -> Snapshot {
        self.version += 1;
        Snapshot {
            tls,
            ..prev.copy(self.version)
        }
    }

    /// Index of cluster `name` in the last snapshot built.
    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.get(name).map(|s| s.index)
    }

    /// The snapshot after `prev` (the last one built) in which only `changed` (index, the
    /// cluster with its new endpoints) differ: the endpoint tables of those clusters are
    /// updated, everything else is shared with or copied from `prev` as it is. `spare`, when
    /// it is `prev`'s base (`prev` is endpoints-only), is reused: only `prev`'s changes and
    /// these are written into it, so the work follows the changes, not the config's size;
    /// otherwise `prev` is copied.
    pub fn build_endpoints(
        &mut self,
        prev: &Snapshot,
        spare: Option<Snapshot>,
        changed: Vec<(usize, config::Cluster)>,
        st: &Stats,
        xds_versions: Option<std::collections::BTreeMap<String, String>>,
    ) -> Snapshot {
        self.version += 1;
        let base_of_prev = |s: &Snapshot| {
            prev.endpoints_only.as_ref().filter(|d| {
                d.base == s.version && s.config.clusters.len() == prev.config.clusters.len()
            })
        };
        let mut next = match spare {
            Some(mut s) if base_of_prev(&s).is_some() => {
                for &i in base_of_prev(&s)
                    .map(|d| d.clusters.as_slice())
                    .unwrap_or_default()
                {
                    s.config.clusters[i] = prev.config.clusters[i].clone();
                    s.endpoints[i] = prev.endpoints[i].clone();
                }
                s
            }
            _ => prev.copy(0),
        };
        // Endpoints-only: the listeners and clusters, so their TLS, are prev's.
        next.tls = prev.tls.clone();
        let mut indices = Vec::with_capacity(changed.len());
        let me = next.config.local_locality().map(|(_, l)| l);
        for (i, c) in changed {
            if let Some(state) = self.clusters.get_mut(&c.name) {
                state.update(&c, st, &mut self.next_generation, me.as_ref());
                next.endpoints[i] = state.published.clone();
            }
            next.config.clusters[i] = c;
            indices.push(i);
        }
        // Collectors whose cluster changed follow it (work per traced listener and change).
        for spec in next.traces.iter().flatten() {
            if indices
                .iter()
                .any(|&i| next.config.clusters[i].name == spec.collector.cluster())
            {
                set_collector_endpoints(&next.config, &next.endpoints, spec);
            }
        }
        next.version = self.version;
        next.xds_versions = xds_versions;
        next.endpoints_only = Some(EndpointsOnly {
            base: prev.version,
            clusters: indices,
        });
        next
    }
}

impl ClusterState {
    /// Publishes `c.endpoints` as the live set, keeping each known address in its slot.
    fn update(
        &mut self,
        c: &config::Cluster,
        st: &Stats,
        generation: &mut u64,
        me: Option<&config::Locality>,
    ) {
        let visits = visit_order(c);
        let load = cumulative_load(c, visits.levels.len());
        let level_hosts = level_hosts(c, &visits);
        // The transport socket of each address (TLS or plaintext per endpoint), when the
        // cluster chooses per endpoint.
        let socket_of: std::collections::HashMap<std::net::SocketAddr, u8> =
            match c.transport_socket_matches.is_empty() {
                true => Default::default(),
                // At most TRANSPORT_SOCKET_MATCHES_MAX + 1 sockets: fits a u8.
                false => (0..c.endpoints.len())
                    .map(|i| (c.endpoints[i], c.transport_socket(i) as u8))
                    .collect(),
            };
        let socket = |addr| socket_of.get(&addr).copied().unwrap_or(0);
        let tags: Vec<String> = match c.endpoint_metadata.iter().any(|m| !m.tag.is_empty()) {
            true => c.endpoint_metadata.iter().map(|m| m.tag.clone()).collect(),
            false => Vec::new(),
        };
        let old = &self.published;
        let zones = |slot_of: &std::collections::HashMap<std::net::SocketAddr, u32>| {
            me.and_then(|me| zones_of(c, me, slot_of))
        };
        let old_slots = || {
            old.slots
                .iter()
                .enumerate()
                .map(|(i, s)| (s.addr, i as u32))
                .collect()
        };
        if old.addrs().eq(visits.addrs.iter().copied())
            && self.tags == tags
            && old.zones == zones(&old_slots())
            && *old.levels == visits.levels[..]
            && *old.weights == visits.weights[..]
            && *old.load == load[..]
            && *old.level_hosts == level_hosts[..]
            && old.overprovisioning == overprovisioning(c)
            && old
                .live
                .iter()
                .all(|&i| old.socket(i as usize) == usize::from(socket(old.slots[i as usize].addr)))
        {
            return; // unchanged: shards see the same Arc and skip this cluster
        }
        let distinct: std::collections::HashSet<_> = c.endpoints.iter().collect();
        if self.published.slots.len() > 2 * distinct.len() + ENDPOINT_SLOTS_SLACK {
            // Too many departed endpoints kept their slots: renumber.
            *generation += 1;
            self.published = Arc::new(Endpoints::empty(*generation));
        }
        let old = &self.published;
        let mut by_addr: std::collections::HashMap<std::net::SocketAddr, u32> = old
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.addr, i as u32))
            .collect();
        let mut added: Vec<Slot> = Vec::new();
        let live: Box<[u32]> = visits
            .addrs
            .iter()
            .map(|&addr| {
                *by_addr.entry(addr).or_insert_with(|| {
                    added.push(Slot {
                        addr,
                        ids: host_stat_ids(st, c, addr),
                    });
                    (old.slots.len() + added.len() - 1) as u32
                })
            })
            .collect();
        let slots: Arc<[Slot]> = if added.is_empty() {
            old.slots.clone()
        } else {
            old.slots.iter().copied().chain(added).collect()
        };
        let sockets = match socket_of.is_empty() {
            true => Box::default(),
            false => slots.iter().map(|s| socket(s.addr)).collect(),
        };
        let distinct = {
            let mut d = live.to_vec();
            d.sort_unstable();
            d.dedup();
            d.len() as u32
        };
        let labels = (!tags.is_empty()).then(|| labels_of(c, &by_addr));
        let zones = zones(&by_addr);
        self.tags = tags;
        self.published = Arc::new(Endpoints {
            slots,
            live,
            distinct,
            levels: visits.levels.into(),
            weights: visits.weights.into(),
            load: load.into(),
            level_hosts: level_hosts.into(),
            overprovisioning: overprovisioning(c),
            generation: old.generation,
            sockets,
            labels,
            zones,
        });
    }
}

/// `c`'s endpoints by locality for zone-aware routing ([`Zones`]; `me`: the proxy's
/// locality), as slot numbers (`slot_of`: every endpoint's slot); none for a
/// locality-weighted cluster (Envoy: locality-weighted balancing comes first).
fn zones_of(
    c: &config::Cluster,
    me: &config::Locality,
    slot_of: &std::collections::HashMap<std::net::SocketAddr, u32>,
) -> Option<Box<Zones>> {
    if c.locality_weighted || c.endpoints.is_empty() {
        return None;
    }
    let meta = &c.endpoint_metadata;
    let with_meta = meta.len() == c.endpoints.len();
    let loc = |i: usize| match with_meta {
        true => meta[i].locality_name(),
        false => config::Locality::default(),
    };
    let prio = |i: usize| if with_meta { meta[i].priority } else { 0 };
    let weight = |i: usize| if with_meta { meta[i].weight.max(1) } else { 1 };
    let n = c.endpoints.len();
    // Distinct endpoints per locality, at priority 0 and over all.
    let count = |keep: &dyn Fn(usize) -> bool| {
        let mut by: std::collections::BTreeMap<config::Locality, Vec<std::net::SocketAddr>> =
            Default::default();
        for i in (0..n).filter(|&i| keep(i)) {
            by.entry(loc(i)).or_default().push(c.endpoints[i]);
        }
        by.into_iter()
            .map(|(l, mut a)| {
                a.sort_unstable();
                a.dedup();
                (l, a.len() as u32)
            })
            .collect::<Vec<_>>()
    };
    let mut p0 = count(&|i| prio(i) == 0);
    // The proxy's own locality first (Envoy's `HostsPerLocality::hasLocalLocality`).
    let has_local = match p0.iter().position(|(l, _)| l == me) {
        Some(k) => {
            let own = p0.remove(k);
            p0.insert(0, own);
            true
        }
        None => false,
    };
    let all_localities = count(&|_| true);
    let weighted = (1..n).any(|i| weight(i) != weight(0));
    let mut subset = Subset::default();
    let (mut live, mut levels, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    for (l, _) in &p0 {
        let v = visit_order_of(c, &|i| prio(i) == 0 && loc(i) == *l, false);
        for (k, a) in v.addrs.iter().enumerate() {
            live.push(*slot_of.get(a)?);
            if weighted {
                let w = v.weights.get(k).copied();
                let i = c.endpoints.iter().position(|e| e == a).unwrap_or(0);
                weights.push(w.unwrap_or_else(|| weight(i)));
            }
        }
        levels.push(live.len() as u32);
    }
    subset.live = live.into();
    subset.levels = levels.into();
    subset.weights = weights.into();
    let (healthy, all) = match c.priority_hosts.is_empty() {
        true => {
            let d: u32 = all_localities.iter().map(|(_, k)| k).sum();
            (d, d)
        }
        false => c
            .priority_hosts
            .iter()
            .fold((0, 0), |(h, a), &(x, y)| (h + x, a + y)),
    };
    Some(Box::new(Zones {
        p0: subset,
        local_present: all_localities.iter().any(|(l, k)| l == me && *k > 0),
        p0_localities: p0.into(),
        has_local,
        all_localities: all_localities.into(),
        healthy,
        all,
    }))
}

/// `c`'s endpoints by traffic label (`tag`), each subset in the visit order of
/// [`visit_order`], as slot numbers (`slot_of`: every endpoint's slot).
fn labels_of(
    c: &config::Cluster,
    slot_of: &std::collections::HashMap<std::net::SocketAddr, u32>,
) -> Box<Labels> {
    let subset = |keep: &dyn Fn(usize) -> bool| {
        // By priority only: a labelled request fails over strictly (no loads), so its
        // label's endpoints of every locality of a priority are one level.
        let v = visit_order_of(c, keep, false);
        Subset {
            live: v.addrs.iter().map(|a| slot_of[a]).collect(),
            levels: v.levels.into(),
            weights: v.weights.into(),
        }
    };
    let meta = &c.endpoint_metadata;
    let mut tags: Vec<&str> = meta
        .iter()
        .map(|m| m.tag.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    tags.sort_unstable();
    tags.dedup();
    let mut tagged: Vec<(u64, Subset)> = tags
        .iter()
        .map(|&t| (tag_hash(t.as_bytes()), subset(&|i| meta[i].tag == t)))
        .collect();
    tagged.sort_by_key(|(h, _)| *h);
    tagged.dedup_by_key(|(h, _)| *h);
    Box::new(Labels {
        untagged: subset(&|i| meta[i].tag.is_empty()),
        tagged: tagged.into(),
    })
}

/// `c.priority_load` as [`Endpoints::load`] wants it: cumulative, one per level of the
/// table (`levels` of them); empty when the loads do not fit the levels (the endpoints and
/// their loads come from one EDS assignment, so they always do) or the first level takes all.
fn cumulative_load(c: &config::Cluster, levels: usize) -> Vec<u8> {
    let load = &c.priority_load;
    if load.len() != levels || load.first().is_none_or(|&l| l >= 100) {
        return Vec::new();
    }
    let mut sum = 0u32;
    load.iter()
        .map(|&l| {
            sum = (sum + l).min(100);
            sum as u8
        })
        .collect()
}

/// `c`'s overprovisioning factor in percent (EDS, else Envoy's default).
fn overprovisioning(c: &config::Cluster) -> u32 {
    match c.overprovisioning {
        0 => config::OVERPROVISIONING_FACTOR_DEFAULT,
        f => f,
    }
}

/// (healthy, all) endpoints of each level of `visits` as [`Endpoints::level_hosts`] keeps
/// them: EDS's counts (`c.priority_hosts`) when they fit the levels, else (a YAML cluster:
/// every endpoint healthy) the distinct endpoints of each level; empty with one level (no
/// load to shift) or locality-weighted levels (not recomputed on the shards).
fn level_hosts(c: &config::Cluster, visits: &Visits) -> Vec<(u32, u32)> {
    if visits.levels.len() < 2 || c.locality_weighted {
        return Vec::new();
    }
    if c.priority_hosts.len() == visits.levels.len() {
        return c.priority_hosts.clone();
    }
    let mut from = 0;
    visits
        .levels
        .iter()
        .map(|&end| {
            let mut level: Vec<_> = visits.addrs[from..end as usize].to_vec();
            from = end as usize;
            level.sort_unstable();
            level.dedup();
            (level.len() as u32, level.len() as u32)
        })
        .collect()
}

/// The most times one endpoint appears in a cluster's live list (weights are scaled down to it).
pub const WEIGHT_VISITS_MAX: u32 = 10;

/// A cluster's endpoints in the order the balancer visits them (see [`Endpoints`]).
#[derive(Debug, Default, PartialEq)]
struct Visits {
    addrs: Vec<std::net::SocketAddr>,
    /// End of each priority level in `addrs`, lowest priority number first.
    levels: Vec<u32>,
    /// Weight of each entry of `addrs` when the endpoints' weights differ, else empty.
    weights: Vec<u32>,
}

/// The visit order of `c`'s endpoints: grouped by priority (metadata `priority`, lowest
/// first) and within one by locality (metadata `locality`: 0 unless the cluster is
/// `locality_weighted`, whose loads are per (priority, locality) group), each group in
/// weighted round-robin order (see [`weighted_visits`]).
fn visit_order(c: &config::Cluster) -> Visits {
    visit_order_of(c, &|_| true, true)
}

/// [`visit_order`] of the endpoints `keep` keeps (by index in `c.endpoints`), grouped by
/// locality too if `by_locality`.
fn visit_order_of(c: &config::Cluster, keep: &dyn Fn(usize) -> bool, by_locality: bool) -> Visits {
    let meta = &c.endpoint_metadata;
    if meta.len() != c.endpoints.len() || meta.is_empty() {
        let addrs: Vec<_> = (0..c.endpoints.len())
            .filter(|&i| keep(i))
            .map(|i| c.endpoints[i])
            .collect();
        let end = addrs.len() as u32;
        return Visits {
            addrs,
            levels: if end == 0 { Vec::new() } else { vec![end] },
            weights: Vec::new(),
        };
    }
    let weight = |i: usize| meta[i].weight.max(1);
    let weighted = (1..meta.len()).any(|i| weight(i) != weight(0));
    // By priority (and locality), config order within one (a stable sort).
    let group = |i: usize| {
        (
            meta[i].priority,
            if by_locality { meta[i].locality } else { 0 },
        )
    };
    let mut order: Vec<usize> = (0..meta.len()).filter(|&i| keep(i)).collect();
    order.sort_by_key(|&i| group(i));
    let mut v = Visits::default();
    for level in order.chunk_by(|&a, &b| group(a) == group(b)) {
        let weights: Vec<u32> = level.iter().map(|&i| weight(i)).collect();
        for k in weighted_visits(&weights) {
            v.addrs.push(c.endpoints[level[k]]);
            if weighted {
                v.weights.push(weights[k]);
            }
        }
        v.levels.push(v.addrs.len() as u32);
    }
    v
}

/// Indices of `weights` in the order round robin visits them: each once when the weights are
/// equal, else each `weight / gcd` times (scaled so that none exceeds [`WEIGHT_VISITS_MAX`], at
/// least once), interleaved. Round robin then follows the weights with no work per request.
fn weighted_visits(weights: &[u32]) -> Vec<usize> {
    if weights.windows(2).all(|w| w[0] == w[1]) {
        return (0..weights.len()).collect();
    }
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let max = weights.iter().copied().max().unwrap_or(1);
    let visits: Vec<u32> = if max / g <= WEIGHT_VISITS_MAX {
        weights.iter().map(|w| w / g).collect()
    } else {
        let max = u64::from(max);
        weights
            .iter()
            .map(|&w| ((u64::from(w) * u64::from(WEIGHT_VISITS_MAX) + max / 2) / max).max(1) as u32)
            .collect()
    };
    let rounds = visits.iter().copied().max().unwrap_or(1);
    let mut out = Vec::with_capacity(visits.iter().map(|&v| v as usize).sum());
    for k in 0..rounds {
        for (i, &v) in visits.iter().enumerate() {
            if v > k {
                out.push(i);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, endpoints: &[u16]) -> config::Cluster {
        config::Cluster {
            name: name.into(),
            kind: config::ClusterType::Static,
            endpoints: endpoints
                .iter()
                .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], *p)))
                .collect(),
            endpoint_metadata: Vec::new(),
            registry: None,
            lb: config::LbPolicy::RoundRobin,
            connect_timeout_ms: config::CONNECT_TIMEOUT_MS_DEFAULT,
            source_addresses: Vec::new(),
            timeout_ms: config::REQUEST_TIMEOUT_MS_DEFAULT,
            connections_per_host: 1,
            pending_requests_max: 100,
            heartbeat_interval_ms: config::HEARTBEAT_INTERVAL_MS_DEFAULT,
            response_bytes_max: config::RESPONSE_BYTES_MAX_DEFAULT,
            idle_timeout_ms: config::IDLE_TIMEOUT_MS_DEFAULT,
            keepalive_interval_ms: config::KEEPALIVE_INTERVAL_MS_DEFAULT,
            keepalive_timeout_ms: config::KEEPALIVE_TIMEOUT_MS_DEFAULT,
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
        }
    }

    fn build(b: &mut Builder, st: &Stats, clusters: Vec<config::Cluster>) -> Snapshot {
        let config = Config {
            clusters,
            ..Config::default()
        };
        b.build(config, st, None, Vec::new())
    }

    #[test]
    fn endpoint_slots_stay_put_and_unchanged_tables_are_shared() {
        let st = Stats::new(1, &config::StatsConfig::default()).unwrap();
        let mut b = Builder::default();
        let s1 = build(
            &mut b,
            &st,
            vec![cluster("a", &[1, 2, 3]), cluster("z", &[9])],
        );
        let ids = s1.cluster_ids[0].cx_total;
        // 2 leaves, 4 arrives, 1 and 3 keep their slots; z is untouched and shared.
        let s2 = build(
            &mut b,
            &st,
            vec![cluster("a", &[3, 4, 1]), cluster("z", &[9])],
        );
        let a = &s2.endpoints[0];
        assert_eq!(&*a.live, &[2, 3, 0]);
        assert_eq!(a.slots[3].addr.port(), 4);
        assert_eq!(a.generation, s1.endpoints[0].generation);
        assert!(Arc::ptr_eq(&s1.endpoints[1], &s2.endpoints[1]));
        assert_eq!(
            s2.cluster_ids[0].cx_total, ids,
            "stat ids are registered once"
        );
        // 2 comes back to its old slot.
        let s3 = build(&mut b, &st, vec![cluster("a", &[2]), cluster("z", &[9])]);
        assert_eq!(&*s3.endpoints[0].live, &[1]);
        assert_eq!(s3.version, 3);
    }

    #[test]
    fn endpoints_only_snapshots_change_only_their_clusters_and_reuse_the_spare() {
        let st = Stats::new(1, &config::StatsConfig::default()).unwrap();
        let mut b = Builder::default();
        let s1 = build(
            &mut b,
            &st,
            vec![cluster("a", &[1]), cluster("b", &[2]), cluster("c", &[3])],
        );
        assert_eq!(b.cluster_index("c"), Some(2));
        let s2 = b.build_endpoints(&s1, None, vec![(1, cluster("b", &[2, 4]))], &st, None);
        let d = s2.endpoints_only.as_ref().unwrap();
        assert_eq!((d.base, d.clusters.as_slice()), (s1.version, &[1][..]));
        assert_eq!(s2.config.clusters[1].endpoints.len(), 2);
        assert!(Arc::ptr_eq(&s1.endpoints[0], &s2.endpoints[0]));
        assert!(Arc::ptr_eq(&s1.cluster_ids, &s2.cluster_ids));
        // b keeps its table (slot 0 stays port 2), so shards keep its pool.
        assert_eq!(s2.endpoints[1].generation, s1.endpoints[1].generation);
        assert_eq!(s2.endpoints[1].slots[0].addr.port(), 2);
        // s1 is s2's base: the next snapshot is built in it and must equal s2 plus c's change.
        let s3 = b.build_endpoints(&s2, Some(s1), vec![(2, cluster("c", &[5]))], &st, None);
        let ports = |s: &Snapshot| -> Vec<Vec<u16>> {
            s.config
                .clusters
                .iter()
                .map(|c| c.endpoints.iter().map(|a| a.port()).collect())
                .collect()
        };
        assert_eq!(ports(&s3), [vec![1], vec![2, 4], vec![5]]);
        assert!(Arc::ptr_eq(&s2.endpoints[1], &s3.endpoints[1]));
        assert_eq!(s3.endpoints_only.as_ref().unwrap().base, s2.version);
        assert_eq!(s3.version, s2.version + 1);
        // A spare that is not the base of the running snapshot is not used.
        let stale = build(
            &mut b,
            &st,
            vec![cluster("a", &[9]), cluster("b", &[9]), cluster("c", &[9])],
        );
        let s4 = b.build_endpoints(&s3, Some(stale), vec![(0, cluster("a", &[6]))], &st, None);
        assert_eq!(ports(&s4), [vec![6], vec![2, 4], vec![5]]);
    }

    fn meta(weight: u32, priority: u32) -> config::EndpointMetadata {
        config::EndpointMetadata {
            weight,
            priority,
            ..Default::default()
        }
    }

    fn visit_ports(c: &config::Cluster) -> Vec<u16> {
        visit_order(c).addrs.iter().map(|a| a.port()).collect()
    }

    #[test]
    fn weights_become_repeated_visits_in_the_live_list() {
        let mut c = cluster("w", &[1, 2, 3]);
        c.endpoint_metadata = vec![meta(100, 0), meta(200, 0), meta(100, 0)];
        assert_eq!(visit_ports(&c), [1, 2, 3, 2]);
        assert_eq!(visit_order(&c).weights, [100, 200, 100, 200]);
        c.endpoint_metadata = vec![meta(1, 0), meta(1000, 0), meta(100, 0)];
        let ports = visit_ports(&c);
        assert_eq!(ports.iter().filter(|&&p| p == 2).count(), 10);
        assert_eq!(ports.iter().filter(|&&p| p == 1).count(), 1);
        assert_eq!(ports.iter().filter(|&&p| p == 3).count(), 1);
        c.endpoint_metadata = vec![meta(50, 0); 3];
        let v = visit_order(&c);
        assert_eq!(
            (v.addrs, v.levels, v.weights),
            (c.endpoints, vec![3], vec![])
        );
    }

    #[test]
    fn priorities_become_levels_each_weighted_on_its_own() {
        let mut c = cluster("p", &[1, 2, 3, 4, 5]);
        c.endpoint_metadata = vec![meta(1, 2), meta(3, 0), meta(1, 2), meta(1, 0), meta(2, 2)];
        let v = visit_order(&c);
        assert_eq!(visit_ports(&c), [2, 4, 2, 2, 1, 3, 5, 5]);
        assert_eq!(v.levels, [4, 8]);
        assert_eq!(v.weights, [3, 1, 3, 3, 1, 1, 2, 2]);
        // Equal weights: no weight table; one endpoint per level.
        c.endpoint_metadata = vec![meta(7, 1), meta(7, 0), meta(7, 1), meta(7, 0), meta(7, 5)];
        let v = visit_order(&c);
        assert_eq!(visit_ports(&c), [2, 4, 1, 3, 5]);
        assert_eq!((v.levels, v.weights), (vec![2, 4, 5], vec![]));
        assert_eq!(visit_order(&cluster("e", &[])), Visits::default());
    }

    /// Locality-weighted clusters: a level per (priority, locality), in that order; traffic
    /// label subsets by priority only.
    #[test]
    fn localities_become_levels_within_a_priority() {
        let mut c = cluster("l", &[1, 2, 3, 4, 5]);
        let at = |priority, locality| config::EndpointMetadata {
            locality,
            ..meta(1, priority)
        };
        c.endpoint_metadata = vec![at(0, 1), at(1, 2), at(0, 0), at(0, 1), at(0, 0)];
        let v = visit_order(&c);
        assert_eq!(visit_ports(&c), [3, 5, 1, 4, 2]);
        assert_eq!(v.levels, [2, 4, 5]);
        let v = visit_order_of(&c, &|_| true, false);
        assert_eq!(
            v.addrs.iter().map(|a| a.port()).collect::<Vec<_>>(),
            [1, 3, 4, 5, 2]
        );
        assert_eq!(v.levels, [4, 5]);
    }

    /// A shard's balancer over `c` (built as the shards build it) and the picks it makes.
    fn balancer(c: config::Cluster) -> crate::cluster::ShardCluster {
        let st = Stats::new(1, &config::StatsConfig::default()).unwrap();
        let mut b = Builder::default();
        let s = build(&mut b, &st, vec![c.clone()]);
        crate::cluster::ShardCluster::new(
            &c,
            s.endpoints[0].clone(),
            s.cluster_ids[0].clone(),
            None,
        )
    }

    fn picks(
        lb: &crate::cluster::ShardCluster,
        n: usize,
        state: impl Fn(u16) -> crate::cluster::Availability,
    ) -> Vec<u16> {
        (0..n)
            .map(|_| {
                lb.pick_available(|i| state(lb.slot(i).addr.port()))
                    .map_or(0, |i| lb.slot(i).addr.port())
            })
            .collect()
    }

    #[test]
    fn round_robin_follows_weights_and_fails_over_by_priority() {
        use crate::cluster::Availability::{BackingOff, Excluded, Ready};
        let mut c = cluster("rr", &[1, 2, 3, 4]);
        c.endpoint_metadata = vec![meta(3, 0), meta(1, 0), meta(1, 1), meta(1, 2)];
        let lb = balancer(c);
        // 3:1 within priority 0; priorities 1 and 2 idle.
        let p = picks(&lb, 400, |_| Ready);
        assert_eq!(p.iter().filter(|&&p| p == 1).count(), 300);
        assert_eq!(p.iter().filter(|&&p| p == 2).count(), 100);
        // One endpoint of priority 0 down: the other takes it all.
        assert!(picks(&lb, 20, |p| if p == 1 { BackingOff } else { Ready })
            .iter()
            .all(|&p| p == 2));
        // Priority 0 down (back-off or excluded): priority 1; both 0 and 1 down: priority 2.
        let down01 = |p| match p {
            1 => BackingOff,
            2 => Excluded,
            _ => Ready,
        };
        assert_eq!(
            picks(&lb, 5, |p| if p <= 2 { BackingOff } else { Ready }),
            [3; 5]
        );
        assert_eq!(
            picks(&lb, 5, |p| if p == 3 { Excluded } else { down01(p) }),
            [4; 5]
        );
        // Nothing ready: the first endpoint in back-off of the first level that has one.
        assert_eq!(
            picks(&lb, 3, |p| if p == 1 { Excluded } else { BackingOff }),
            [2; 3]
        );
        assert_eq!(
            picks(&lb, 3, |p| if p == 4 { BackingOff } else { Excluded }),
            [4; 3]
        );
        assert_eq!(picks(&lb, 3, |_| Excluded), [0; 3]);
        // Priority 0 recovered: all traffic back on it.
        let p = picks(&lb, 8, |_| Ready);
        assert!(p.iter().all(|&p| p <= 2), "{p:?}");
    }

    #[test]
    fn traffic_labels_pick_their_subset_and_fall_back_to_the_untagged() {
        use crate::cluster::{Availability::BackingOff, Availability::Ready, Label};
        let tagged = |tag: &str, priority| config::EndpointMetadata {
            tag: tag.into(),
            priority,
            ..Default::default()
        };
        // 1, 2 untagged; 3, 4 gray (4 a priority-1 failover); 5 blue.
        let mut c = cluster("t", &[1, 2, 3, 4, 5]);
        c.endpoint_metadata = vec![
            tagged("", 0),
            tagged("", 0),
            tagged("gray", 0),
            tagged("gray", 1),
            tagged("blue", 0),
        ];
        let lb = balancer(c.clone());
        let pick = |label: Option<Label>, down: &[u16], n: usize| -> Vec<u16> {
            (0..n)
                .map(|_| {
                    lb.pick_labelled(label, |i| match down.contains(&lb.slot(i).addr.port()) {
                        true => BackingOff,
                        false => Ready,
                    })
                    .map_or(0, |i| lb.slot(i).addr.port())
                })
                .collect()
        };
        let label = |t: &str, force: bool| {
            Some(Label::of(Some(t.as_bytes()), force.then_some(&b"TRUE"[..])))
        };
        let mut all = pick(None, &[], 4);
        all.sort();
        assert_eq!(
            all,
            [1, 2, 3, 5],
            "no label read: every endpoint (of priority 0)"
        );
        assert_eq!(pick(label("gray", false), &[], 4), [3; 4]);
        assert_eq!(
            pick(label("gray", false), &[3], 2),
            [4; 2],
            "priority failover within the tag"
        );
        assert_eq!(
            pick(label("gray", false), &[3, 4], 1),
            [3],
            "all in back-off: still the tag's"
        );
        assert_eq!(pick(label("blue", true), &[], 2), [5; 2]);
        let mut untagged = pick(label("red", false), &[], 4);
        untagged.sort();
        assert_eq!(
            untagged,
            [1, 1, 2, 2],
            "no endpoint has it: the untagged ones"
        );
        assert_eq!(pick(label("red", true), &[], 1), [0], "forced: none");
        assert!(
            pick(label("", false), &[], 1)[0] <= 2,
            "unlabelled: untagged only"
        );
        assert!(pick(Some(Label::default()), &[1, 2], 1)[0] <= 2);
        assert_eq!(std::mem::size_of::<Option<Label>>(), 8);
        let l = Label::of(Some(b"gray"), Some(b"True"));
        assert_eq!(
            (l.tag(), l.force()),
            (crate::cluster::tag_hash(b"gray"), true)
        );
        // Without any tagged endpoint, every endpoint is untagged.
        c.endpoint_metadata = vec![tagged("", 0); 5];
        let lb = balancer(c);
        let any = lb.pick_labelled(label("red", false), |_| Ready);
        assert!(any.is_some());
        assert_eq!(lb.pick_labelled(label("red", true), |_| Ready), None);
    }

    #[test]
    fn least_request_weighs_active_requests_by_weight() {
        use crate::cluster::Availability::{BackingOff, Ready};
        let mut c = cluster("lr", &[1, 2, 3]);
        c.lb = config::LbPolicy::LeastRequest;
        c.endpoint_metadata = vec![meta(3, 0), meta(1, 0), meta(1, 1)];
        let lb = balancer(c);
        // Requests that never finish: the weight-3 endpoint carries 3 for every 1 of the other.
        let mut count = [0u32; 4];
        for _ in 0..400 {
            let i = lb.pick().unwrap();
            lb.add_active(i, 1);
            count[lb.slot(i).addr.port() as usize] += 1;
        }
        assert_eq!(count, [0, 300, 100, 0]);
        // The least loaded ready endpoint wins even when one in back-off has fewer.
        let p = picks(&lb, 3, |p| if p == 2 { BackingOff } else { Ready });
        assert_eq!(p, [1; 3]);
        assert_eq!(
            picks(&lb, 2, |p| if p == 3 { Ready } else { BackingOff }),
            [3; 2]
        );
    }

    #[test]
    fn churned_tables_are_renumbered_with_a_new_generation() {
        let st = Stats::new(1, &config::StatsConfig::default()).unwrap();
        let mut b = Builder::default();
        let first = build(&mut b, &st, vec![cluster("a", &[1])]);
        let mut last = first.endpoints[0].clone();
        for port in 2..200u16 {
            last = build(&mut b, &st, vec![cluster("a", &[port])]).endpoints[0].clone();
            assert!(last.slots.len() <= 2 + ENDPOINT_SLOTS_SLACK + 1);
        }
        assert_ne!(last.generation, first.endpoints[0].generation);
        assert_eq!(last.addrs().next().unwrap().port(), 199);
    }

    #[test]
    fn rate_limit_buckets_survive_updates_that_keep_them() {
        let st = Stats::new(1, &config::StatsConfig::default()).unwrap();
        let mut b = Builder::default();
        let yaml = |max: u32, other: u64| {
            format!(
                "listeners:\n  - name: l\n    address: 127.0.0.1:9\n    protocol: dubbo\n    cluster: a\n    local_rate_limit: {{max_tokens: {max}, fill_interval_ms: 10}}\n    dubbo:\n      routes:\n        - name: r\n          route: {{cluster: a, timeout_ms: {other}}}\n          local_rate_limit: {{max_tokens: 3, fill_interval_ms: 10}}\nclusters:\n  - {{name: a, endpoints: [\"127.0.0.1:1\"]}}\n"
            )
        };
        let cfg = |y: String| Config::from_yaml("t.yaml", &y).unwrap();
        let s1 = b.build(cfg(yaml(5, 100)), &st, None, Vec::new());
        let l1 = s1.limits[0].clone().unwrap();
        assert_eq!(l1.routes.len(), 2, "the route, then the default route");
        assert!(l1.routes[1].is_none());
        // Another route timeout: both buckets are the same ones (their tokens carry over).
        let s2 = b.build(cfg(yaml(5, 200)), &st, None, Vec::new());
        let l2 = s2.limits[0].clone().unwrap();
        let same = |a: &Option<SharedLimit>, b: &Option<SharedLimit>| {
            Arc::ptr_eq(&a.as_ref().unwrap().bucket, &b.as_ref().unwrap().bucket)
        };
        assert!(same(&l1.listener, &l2.listener));
        assert!(same(&l1.routes[0], &l2.routes[0]));
        // A new listener burst: a new listener bucket, the route's stays.
        let s3 = b.build(cfg(yaml(6, 200)), &st, None, Vec::new());
        let l3 = s3.limits[0].clone().unwrap();
        assert!(!same(&l2.listener, &l3.listener));
        assert!(same(&l2.routes[0], &l3.routes[0]));
        assert_eq!(l3.listener.unwrap().bucket.config.max_tokens, 6);
    }
}
