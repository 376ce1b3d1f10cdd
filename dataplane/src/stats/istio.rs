//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_tcp_*`) for the listeners with
//! `istio_metrics`, with the labels istio-proxy's stats filter gives them, in its order.
//!
//! Labels come from three places: the node metadata (`xds.node_metadata`: this workload's
//! name, namespace, app, version, canonical service and revision, cluster id), the cluster a
//! call went to (an Istio cluster name `outbound|PORT|SUBSET|HOST` names the destination
//! service), the call itself (response code, gRPC status, response flags) and, on inbound
//! listeners, the connection's mutual TLS (the peer's and our certificate's SPIFFE ids are
//! `source_principal` and `destination_principal`) and, on Triple/gRPC calls, Istio's HTTP
//! metadata exchange ([`exchange`]: the peer's workload, decoded once per distinct value and
//! shard). What ringside cannot know (Dubbo's and tcp's peers: istio-proxy learns them from an
//! in-band exchange) is `unknown`, as istio-proxy reports it without that exchange.
//!
//! Data path: each listener has, per shard, a table from the call's variable part (cluster,
//! code, gRPC status, flags) to its registered stat ids; a call looks its key up (no
//! allocation, no lock) and counts into the shard's own slots like any stat. A key seen for
//! the first time registers its label set (allocation, the stats registration lock: once per
//! set and shard). The table holds at most `stats.istio_label_sets_max` sets; a call with a
//! new set beyond it is not counted here, only in `istio.label_sets_overflow`.

pub mod exchange;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{HistId, Kind, Layout, ShardStats, StatId, Stats, ISTIO_SCOPE};
use crate::config::{IstioReporter, NodeMetadataValue};

/// What istio-proxy reports for a value it does not know.
pub const UNKNOWN: &str = "unknown";

/// This workload, as the node metadata names it (`unknown` for what it leaves out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster_id: String,
    /// What ringside sends in Istio's HTTP metadata exchange (`x-envoy-peer-metadata-id`,
    /// `x-envoy-peer-metadata`): the node id and this node's metadata as istio-proxy encodes
    /// its own ([`exchange_value`]). Empty without xDS.
    pub exchange_id: Box<[u8]>,
    pub exchange_value: Box<[u8]>,
    /// What ringside writes in Istio's in-band TCP exchange (connections that negotiated
    /// `istio-peer-exchange`): the header and the `Any` of this node
    /// ([`exchange::in_band_frame`]).
    pub exchange_frame: Box<[u8]>,
}

impl Node {
    /// [`Node::from_metadata`], plus what the metadata exchange sends for node `id`.
    pub fn from_xds(id: &str, m: &BTreeMap<String, NodeMetadataValue>) -> Node {
        Node {
            exchange_id: id.as_bytes().into(),
            exchange_value: exchange::exchange_value(m).into_bytes().into(),
            exchange_frame: exchange::in_band_frame(id, m).into(),
            ..Node::from_metadata(m)
        }
    }

    /// From Istio's node metadata keys: `WORKLOAD_NAME`, `NAMESPACE`, `CLUSTER_ID` and the
    /// `LABELS` `app`, `version`, `service.istio.io/canonical-name` and
    /// `service.istio.io/canonical-revision` (falling back on `app` and `version`, as Istio's
    /// injector does).
    pub fn from_metadata(m: &BTreeMap<String, NodeMetadataValue>) -> Node {
        let string = |k: &str| match m.get(k) {
            Some(NodeMetadataValue::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let label = |k: &str| match m.get("LABELS") {
            Some(NodeMetadataValue::Map(l)) => l.get(k).filter(|v| !v.is_empty()).cloned(),
            _ => None,
        };
        let unknown = || UNKNOWN.to_string();
        let app = label("app");
        let version = label("version");
        Node {
            workload: string("WORKLOAD_NAME").unwrap_or_else(unknown),
            namespace: string("NAMESPACE").unwrap_or_else(unknown),
            canonical_service: label("service.istio.io/canonical-name")
                .or_else(|| app.clone())
                .or_else(|| string("WORKLOAD_NAME"))
                .unwrap_or_else(unknown),
            canonical_revision: label("service.istio.io/canonical-revision")
                .or_else(|| version.clone())
                .unwrap_or_else(|| "latest".to_string()),
            app: app.unwrap_or_else(unknown),
            version: version.unwrap_or_else(unknown),
            cluster_id: string("CLUSTER_ID").unwrap_or_else(unknown),
            exchange_id: Box::default(),
            exchange_value: Box::default(),
            exchange_frame: exchange::in_band_frame("", m).into(),
        }
    }
}

/// Which protocol a listener's calls are (`request_protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Dubbo,
    Grpc,
    Tcp,
    /// HTTP/1.x requests on a triple listener with `http1` (istio-proxy's `http`).
    Http,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Dubbo => "dubbo",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        }
    }
}

/// Distinct mutual-TLS peers (principals) one listener labels on one shard; a connection from
/// yet another is not counted in Istio's metrics (`istio.label_sets_overflow`).
pub const PEERS_MAX: usize = 256;

/// A connection's peer as the labels see it, from [`IstioListener::peer`]: no mutual TLS, or
/// an index into the listener's principals on this shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerId(u16);

impl PeerId {
    /// Plaintext, or TLS without a client certificate.
    pub const NONE: PeerId = PeerId(0);
    /// Beyond [`PEERS_MAX`]: not counted.
    const OVERFLOW: PeerId = PeerId(u16::MAX);
}

/// An upstream TLS connection's principals (outbound listeners' `destination_principal` and
/// `source_principal`), kept by the connection from its handshake.
#[derive(Clone, Debug, Default)]
pub struct UpstreamTls {
    /// The SPIFFE id of the server's certificate (`None`: it has none).
    pub peer: Option<Box<str>>,
    /// The SPIFFE id of our certificate on the connection (`None`: none sent or configured,
    /// or without one).
    pub local: Option<std::sync::Arc<str>>,
}

/// Distinct `x-envoy-peer-metadata` values one listener decodes on one shard; a call with yet
/// another is not counted in Istio's metrics (`istio.label_sets_overflow`).
pub const PEER_METADATA_MAX: usize = 256;

/// A call's peer as Istio's metadata exchange named it, from [`IstioListener::peer_metadata`]:
/// none, or an index into the listener's peers on this shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetaId(u16);

impl MetaId {
    /// No exchange (or a value that names no peer).
    pub const NONE: MetaId = MetaId(0);
    /// Beyond [`PEER_METADATA_MAX`]: not counted.
    const OVERFLOW: MetaId = MetaId(u16::MAX);
}

/// What one call's metadata exchange carried (the Triple record keeps it): the peer, and on an
/// inbound request whether it carried the two headers (istio-proxy answers each only then).
#[derive(Clone, Copy, Debug, Default)]
pub struct Exchange {
    pub peer: MetaId,
    pub id_received: bool,
    pub value_received: bool,
}

/// The part of a call's label set that varies per call: the table's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    /// The listener's protocol, or HTTP for an HTTP/1.1 request on a triple listener.
    protocol: Protocol,
    peer: PeerId,
    meta: MetaId,
    /// The cluster (a stat id its name registered once: stable while the process lives).
    cluster: Option<StatId>,
    code: u32,
    grpc: Option<u32>,
    flags: u16,
}

#[derive(Clone, Copy, Debug)]
enum Ids {
    Request {
        total: StatId,
        duration: HistId,
        request_bytes: HistId,
        response_bytes: HistId,
    },
    Tcp {
        opened: StatId,
        closed: StatId,
        sent: StatId,
        received: StatId,
    },
}

/// One finished call or connection, as the metrics see it.
pub struct Outcome<'a> {
    /// The cluster it went to: a stable stat id of that cluster, and its name. `None`: no
    /// cluster (no route).
    pub cluster: Option<(StatId, &'a str)>,
    /// Dubbo status or HTTP status (0 for TCP).
    pub code: u32,
    pub grpc: Option<u32>,
    /// The response flags (an `access_log::Flags` value) and how to write them (`-` for none),
    /// called only for a label set seen for the first time.
    pub flags: (u16, &'a dyn Fn() -> String),
    /// The connection's peer ([`IstioListener::peer`]).
    pub peer: PeerId,
    /// The peer's workload from the metadata exchange ([`IstioListener::peer_metadata`]): the
    /// caller on inbound listeners, the upstream on outbound ones.
    pub meta: MetaId,
}

/// One listener's Istio metrics on one shard.
pub struct IstioListener {
    /// Unique in the process (a connection's cached label of it names it).
    id: u64,
    stats: ShardStats,
    reporter: IstioReporter,
    protocol: Protocol,
    node: Arc<Node>,
    /// Our certificate's SPIFFE id (inbound: `destination_principal` of mutual-TLS calls).
    local_principal: Option<Arc<str>>,
    /// The principals of TLS peers seen, `PeerId` `i` at `i - 1`: the peer's (`None`: a
    /// certificate without a SPIFFE id) and, for an upstream connection, ours on it (`None`:
    /// no certificate, or one without a SPIFFE id); at most [`PEERS_MAX`].
    peers: RefCell<Vec<(Option<Box<str>>, Option<Box<str>>)>>,
    table: RefCell<FxHashMap<Key, Ids>>,
    max: usize,
    overflow: StatId,
    /// Peers named by the metadata exchange, `MetaId` `i` at `i - 1` (distinct workloads).
    metas: RefCell<Vec<exchange::PeerMeta>>,
    /// `x-envoy-peer-metadata` values seen, each decoded once: at most
    /// [`PEER_METADATA_MAX`].
    meta_values: RefCell<FxHashMap<Box<[u8]>, MetaId>>,
    /// Values decoded (`istio.peer_metadata_decoded`).
    decoded: StatId,
}

impl IstioListener {
    pub fn new(
        stats: ShardStats,
        reporter: IstioReporter,
        protocol: Protocol,
        node: Arc<Node>,
        local_principal: Option<Arc<str>>,
        max: usize,
    ) -> IstioListener {
        let overflow = stats
            .stats
            .add("istio", "label_sets_overflow", &[], Kind::Counter);
        let decoded = stats
            .stats
            .add("istio", "peer_metadata_decoded", &[], Kind::Counter);
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        IstioListener {
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            metas: RefCell::new(Vec::new()),
            meta_values: RefCell::new(FxHashMap::default()),
            decoded,
            stats,
            reporter,
            protocol,
            node,
            local_principal,
            peers: RefCell::new(Vec::new()),
            table: RefCell::new(FxHashMap::default()),
            max,
            overflow,
        }
    }

    /// The peer of a new connection, from its TLS: `Some(principal)` for a peer that presented
    /// a certificate (`Some(None)`: one without a SPIFFE id), `None` for no mutual TLS. Once
    /// per connection; a principal seen for the first time on this shard is copied once.
    pub fn peer(&self, mutual: Option<Option<&str>>) -> PeerId {
        let Some(principal) = mutual else {
            return PeerId::NONE;
        };
        self.entry(principal, None)
    }

    /// An upstream connection as an outbound listener labels it, from its TLS (`None`:
    /// plaintext): the SPIFFE id of the server's certificate (`destination_principal`) and of
    /// ours on the connection (`source_principal`, istio-proxy's `uriSanLocalCertificate`).
    /// Once per connection and listener.
    pub fn upstream(&self, tls: Option<&UpstreamTls>) -> PeerId {
        let Some(t) = tls else {
            return PeerId::NONE;
        };
        self.entry(t.peer.as_deref(), t.local.as_deref())
    }

    fn entry(&self, peer: Option<&str>, local: Option<&str>) -> PeerId {
        let mut peers = self.peers.borrow_mut();
        if let Some(i) = peers
            .iter()
            .position(|(p, l)| p.as_deref() == peer && l.as_deref() == local)
        {
            return PeerId(i as u16 + 1);
        }
        if peers.len() >= PEERS_MAX {
            return PeerId::OVERFLOW;
        }
        peers.push((peer.map(Box::from), local.map(Box::from)));
        PeerId(peers.len() as u16)
    }

    /// This listener's id on this shard, unique in the process (never 0).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this listener reports as the destination (inbound): it reads the exchange on
    /// requests and answers it on responses; else (outbound) it sends ours on requests and
    /// reads the upstream's on responses.
    pub fn inbound(&self) -> bool {
        self.reporter == IstioReporter::Destination
    }

    /// What ringside sends in the exchange: (`x-envoy-peer-metadata-id`,
    /// `x-envoy-peer-metadata`).
    pub fn own_exchange(&self) -> (&[u8], &[u8]) {
        (&self.node.exchange_id, &self.node.exchange_value)
    }

    /// The peer an `x-envoy-peer-metadata` value names. A value seen before on this shard is a
    /// table lookup (no allocation); a new one is decoded once and kept (at most
    /// [`PEER_METADATA_MAX`] values; beyond, the call is not counted).
    pub fn peer_metadata(&self, value: Option<&[u8]>) -> MetaId {
        self.meta_of(value, exchange::decode)
    }

    /// The peer an in-band exchange's payload (`Any`) names, as [`Self::peer_metadata`] (the
    /// same table: a payload's first byte is never one of base64's).
    pub fn peer_metadata_in_band(&self, any: Option<&[u8]>) -> MetaId {
        self.meta_of(any, exchange::decode_in_band)
    }

    fn meta_of(
        &self,
        value: Option<&[u8]>,
        decode: fn(&[u8]) -> Option<exchange::PeerMeta>,
    ) -> MetaId {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return MetaId::NONE;
        };
        if let Some(id) = self.meta_values.borrow().get(value) {
            return *id;
        }
        if self.meta_values.borrow().len() >= PEER_METADATA_MAX {
            return MetaId::OVERFLOW;
        }
        self.stats.inc(self.decoded);
        let id = match decode(value) {
            None => MetaId::NONE,
            Some(m) => {
                let mut metas = self.metas.borrow_mut();
                match metas.iter().position(|x| *x == m) {
                    Some(i) => MetaId(i as u16 + 1),
                    None => {
                        metas.push(m);
                        MetaId(metas.len() as u16)
                    }
                }
            }
        };
        self.meta_values.borrow_mut().insert(value.into(), id);
        id
    }

    /// Counts one finished request (Dubbo call, gRPC/Triple call).
    pub fn request(&self, o: &Outcome<'_>, duration_us: u64, bytes_in: u64, bytes_out: u64) {
        self.request_as(self.protocol, o, duration_us, bytes_in, bytes_out);
    }

    /// [`Self::request`] for a request of another protocol than the listener's (an HTTP/1.1
    /// request on a triple listener: `request_protocol="http"`).
    pub fn request_as(
        &self,
        protocol: Protocol,
        o: &Outcome<'_>,
        duration_us: u64,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let Some(Ids::Request {
            total,
            duration,
            request_bytes,
            response_bytes,
        }) = self.ids(protocol, o)
        else {
            return;
        };
        let st = &self.stats;
        st.inc(total);
        st.record(duration, duration_us);
        st.record(request_bytes, bytes_in.saturating_mul(1000));
        st.record(response_bytes, bytes_out.saturating_mul(1000));
    }

    /// Counts one closed TCP connection: opened and closed, and its bytes each way.
    pub fn connection(&self, o: &Outcome<'_>, received: u64, sent: u64) {
        let Some(Ids::Tcp {
            opened,
            closed,
            sent: sent_id,
            received: received_id,
        }) = self.ids(self.protocol, o)
        else {
            return;
        };
        // `closed` is written last (and registered last): a scrape that sees the connection
        // closed sees its bytes too (x86 keeps the order of these relaxed stores).
        let st = &self.stats;
        st.add(sent_id, sent);
        st.add(received_id, received);
        st.inc(opened);
        st.inc(closed);
    }

    fn ids(&self, protocol: Protocol, o: &Outcome<'_>) -> Option<Ids> {
        if o.peer == PeerId::OVERFLOW || o.meta == MetaId::OVERFLOW {
            self.stats.inc(self.overflow);
            return None;
        }
        let key = Key {
            protocol,
            peer: o.peer,
            meta: o.meta,
            cluster: o.cluster.map(|c| c.0),
            code: o.code,
            grpc: o.grpc,
            flags: o.flags.0,
        };
        if let Some(ids) = self.table.borrow().get(&key) {
            return Some(*ids);
        }
        if self.table.borrow().len() >= self.max {
            self.stats.inc(self.overflow);
            return None;
        }
        let ids = self.register(protocol, o);
        self.table.borrow_mut().insert(key, ids);
        Some(ids)
    }

    /// Registers the stats of a label set seen for the first time.
    fn register(&self, protocol: Protocol, o: &Outcome<'_>) -> Ids {
        let labels = self.labels(protocol, o);
        let tags: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let st: &Stats = &self.stats.stats;
        match protocol {
            Protocol::Tcp => Ids::Tcp {
                opened: st.add(
                    ISTIO_SCOPE,
                    "istio_tcp_connections_opened_total",
                    &tags,
                    Kind::Counter,
                ),
                sent: st.add(
                    ISTIO_SCOPE,
                    "istio_tcp_sent_bytes_total",
                    &tags,
                    Kind::Counter,
                ),
                received: st.add(
                    ISTIO_SCOPE,
                    "istio_tcp_received_bytes_total",
                    &tags,
                    Kind::Counter,
                ),
                // Last: see `connection`.
                closed: st.add(
                    ISTIO_SCOPE,
                    "istio_tcp_connections_closed_total",
                    &tags,
                    Kind::Counter,
                ),
            },
            _ => Ids::Request {
                total: st.add(ISTIO_SCOPE, "istio_requests_total", &tags, Kind::Counter),
                duration: st.add_histogram_in(
                    ISTIO_SCOPE,
                    "istio_request_duration_milliseconds",
                    &tags,
                    Layout::EnvoyMilli,
                ),
                request_bytes: st.add_histogram_in(
                    ISTIO_SCOPE,
                    "istio_request_bytes",
                    &tags,
                    Layout::EnvoyMilli,
                ),
                response_bytes: st.add_histogram_in(
                    ISTIO_SCOPE,
                    "istio_response_bytes",
                    &tags,
                    Layout::EnvoyMilli,
                ),
            },
        }
    }

    /// The labels of `o`, in the order istio-proxy's stats filter adds them.
    fn labels(&self, protocol: Protocol, o: &Outcome<'_>) -> Vec<(&'static str, String)> {
        let n = &*self.node;
        let u = || UNKNOWN.to_string();
        // Inbound mutual TLS: the peer's principal and ours (istio-proxy's values).
        let mutual = o.peer != PeerId::NONE;
        let (peer_principal, upstream_local) = match o.peer.0 {
            0 => (None, None),
            i => {
                let (p, l) = &self.peers.borrow()[usize::from(i) - 1];
                (
                    p.as_deref().map(str::to_string),
                    l.as_deref().map(str::to_string),
                )
            }
        };
        let local_principal = || {
            self.local_principal
                .as_deref()
                .filter(|_| mutual)
                .map(str::to_string)
                .unwrap_or_else(u)
        };
        let security = match (self.reporter, mutual) {
            (IstioReporter::Source, _) => UNKNOWN,
            (IstioReporter::Destination, true) => "mutual_tls",
            (IstioReporter::Destination, false) => "none",
        };
        let service = o.cluster.and_then(|c| service_of(c.1));
        // The peer's workload, from the metadata exchange (istio-proxy: each label `unknown`
        // when not given; the canonical revision `latest`).
        let metas = self.metas.borrow();
        let meta = match o.meta.0 {
            0 => None,
            i => metas.get(usize::from(i) - 1),
        };
        let pm = |f: fn(&exchange::PeerMeta) -> &String| -> String {
            meta.map(f)
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(u)
        };
        let revision = || {
            meta.map(|m| m.canonical_revision.clone())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "latest".into())
        };
        // istio-proxy: the namespace the peer's SPIFFE id names (`.../ns/NS/...`), else the
        // one its metadata gives.
        let peer_namespace = peer_principal
            .as_deref()
            .and_then(spiffe_namespace)
            .map(str::to_string)
            .or_else(|| meta.map(|m| m.namespace.clone()))
            .filter(|v| !v.is_empty());
        let mut l: Vec<(&'static str, String)> = Vec::with_capacity(25);
        match self.reporter {
            IstioReporter::Destination => {
                l.push(("reporter", "destination".into()));
                l.push(("source_workload", pm(|m| &m.workload)));
                l.push(("source_canonical_service", pm(|m| &m.canonical_service)));
                l.push(("source_canonical_revision", revision()));
                l.push((
                    "source_workload_namespace",
                    peer_namespace.unwrap_or_else(u),
                ));
                l.push(("source_principal", peer_principal.unwrap_or_else(u)));
                l.push(("source_app", pm(|m| &m.app)));
                l.push(("source_version", pm(|m| &m.version)));
                l.push(("source_cluster", pm(|m| &m.cluster)));
                l.push(("destination_workload", n.workload.clone()));
                l.push(("destination_workload_namespace", n.namespace.clone()));
                l.push(("destination_principal", local_principal()));
                l.push(("destination_app", n.app.clone()));
                l.push(("destination_version", n.version.clone()));
                let (host, name) = match &service {
                    Some(s) => (s.host.clone(), s.name.clone()),
                    None => (n.canonical_service.clone(), n.canonical_service.clone()),
                };
                l.push(("destination_service", host));
                l.push(("destination_canonical_service", n.canonical_service.clone()));
                l.push((
                    "destination_canonical_revision",
                    n.canonical_revision.clone(),
                ));
                l.push(("destination_service_name", name));
                l.push(("destination_service_namespace", n.namespace.clone()));
                l.push(("destination_cluster", n.cluster_id.clone()));
            }
            IstioReporter::Source => {
                l.push(("reporter", "source".into()));
                l.push(("source_workload", n.workload.clone()));
                l.push(("source_canonical_service", n.canonical_service.clone()));
                l.push(("source_canonical_revision", n.canonical_revision.clone()));
                l.push(("source_workload_namespace", n.namespace.clone()));
                // Our certificate on the upstream connection.
                l.push(("source_principal", upstream_local.unwrap_or_else(u)));
                l.push(("source_app", n.app.clone()));
                l.push(("source_version", n.version.clone()));
                l.push(("source_cluster", n.cluster_id.clone()));
                l.push(("destination_workload", pm(|m| &m.workload)));
                l.push((
                    "destination_workload_namespace",
                    peer_namespace.clone().unwrap_or_else(u),
                ));
                // The upstream's certificate (its connection's TLS).
                l.push((
                    "destination_principal",
                    peer_principal.clone().unwrap_or_else(u),
                ));
                l.push(("destination_app", pm(|m| &m.app)));
                l.push(("destination_version", pm(|m| &m.version)));
                let s = service.as_ref();
                l.push((
                    "destination_service",
                    s.map(|s| s.host.clone()).unwrap_or_else(u),
                ));
                l.push((
                    "destination_canonical_service",
                    pm(|m| &m.canonical_service),
                ));
                l.push(("destination_canonical_revision", revision()));
                l.push((
                    "destination_service_name",
                    s.map(|s| s.name.clone()).unwrap_or_else(u),
                ));
                // istio-proxy: the peer's namespace; without one, ringside keeps the namespace
                // the Istio cluster name's host names.
                l.push((
                    "destination_service_namespace",
                    peer_namespace
                        .or_else(|| s.and_then(|s| s.namespace.clone()))
                        .unwrap_or_else(u),
                ));
                l.push(("destination_cluster", pm(|m| &m.cluster)));
            }
        }
        l.push(("request_protocol", protocol.as_str().into()));
        if protocol != Protocol::Tcp {
            l.push(("response_code", o.code.to_string()));
            l.push((
                "grpc_response_status",
                o.grpc.map(|g| g.to_string()).unwrap_or_default(),
            ));
        }
        l.push(("response_flags", (o.flags.1)()));
        l.push(("connection_security_policy", security.into()));
        l
    }
}

/// The namespace of a SPIFFE id `spiffe://TD/ns/NS/sa/SA`, as istio-proxy's `getNamespace`
/// reads it (after the first `/ns/`, up to the next `/`).
fn spiffe_namespace(principal: &str) -> Option<&str> {
    let rest = &principal[principal.find("/ns/")? + 4..];
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The destination service a cluster name stands for.
#[derive(Debug, PartialEq, Eq)]
struct Service {
    host: String,
    name: String,
    namespace: Option<String>,
}

/// Istio's cluster names: `outbound|PORT|SUBSET|HOST` (and `inbound|PORT|SUBSET|HOST`) name
/// the service host; its name is the host's first label and, for a Kubernetes host
/// (`NAME.NAMESPACE.svc...`), its namespace the second. Istio's special clusters
/// (`PassthroughCluster`, `BlackHoleCluster`, `InboundPassthroughCluster*`) are their own
/// service name, as istio-proxy reports them. Other names: unknown.
fn service_of(cluster: &str) -> Option<Service> {
    if matches!(cluster, "PassthroughCluster" | "BlackHoleCluster")
        || cluster.starts_with("InboundPassthroughCluster")
    {
        return Some(Service {
            host: cluster.to_string(),
            name: cluster.to_string(),
            namespace: None,
        });
    }
    let mut parts = cluster.split('|');
    let (Some("outbound" | "inbound"), Some(_port), Some(_subset), Some(host), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if host.is_empty() {
        return None;
    }
    let mut labels = host.split('.');
    let name = labels.next().unwrap_or(host).to_string();
    let namespace = match (labels.next(), labels.next()) {
        (Some(ns), Some("svc")) => Some(ns.to_string()),
        _ => None,
    };
    Some(Service {
        host: host.to_string(),
        name,
        namespace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_cluster_names_give_the_service() {
        let s = service_of("outbound|20880||users.shop.svc.cluster.local").unwrap();
        assert_eq!(
            (s.host.as_str(), s.name.as_str(), s.namespace.as_deref()),
            ("users.shop.svc.cluster.local", "users", Some("shop"))
        );
        let s = service_of("outbound|50051|v1|greeter.example.com").unwrap();
        assert_eq!((s.name.as_str(), s.namespace), ("greeter", None));
        assert_eq!(service_of("inbound|20880||"), None);
        assert_eq!(service_of("users"), None);
        assert_eq!(
            service_of("PassthroughCluster").unwrap().name,
            "PassthroughCluster"
        );
    }

    #[test]
    fn node_metadata_names_the_workload_with_istio_fallbacks() {
        let m: BTreeMap<String, NodeMetadataValue> = serde_yaml::from_str(
            "WORKLOAD_NAME: users-v1\nNAMESPACE: shop\nLABELS: {app: users, version: v1}\n",
        )
        .unwrap();
        let n = Node::from_metadata(&m);
        assert_eq!(n.workload, "users-v1");
        assert_eq!(
            n.canonical_service, "users",
            "app stands for the canonical name"
        );
        assert_eq!(n.canonical_revision, "v1");
        assert_eq!(n.cluster_id, UNKNOWN);
        let n = Node::from_metadata(&BTreeMap::new());
        assert_eq!(
            (n.app.as_str(), n.canonical_revision.as_str()),
            (UNKNOWN, "latest")
        );
    }

    #[test]
    fn mutual_tls_peers_are_labelled_by_principal_and_capped() {
        let s = Arc::new(Stats::new(1, &crate::config::StatsConfig::default()).unwrap());
        let node = Arc::new(Node::from_metadata(&BTreeMap::new()));
        let me = "spiffe://cluster.local/ns/a/sa/server";
        let l = IstioListener::new(
            s.shard(0),
            IstioReporter::Destination,
            Protocol::Dubbo,
            node,
            Some(Arc::from(me)),
            100,
        );
        let alice = "spiffe://cluster.local/ns/b/sa/alice";
        let peers = [
            l.peer(None),
            l.peer(Some(Some(alice))),
            l.peer(Some(Some(alice))),
            l.peer(Some(None)),
        ];
        assert_eq!(peers[0], PeerId::NONE);
        assert_eq!(peers[1], peers[2], "one id per principal");
        let dash = || "-".to_string();
        for peer in peers {
            let o = Outcome {
                cluster: None,
                code: 20,
                grpc: None,
                flags: (0, &dash),
                peer,
                meta: MetaId::NONE,
            };
            l.request(&o, 1_000, 10, 20);
        }
        let text = s.render_prometheus();
        let line = |src: &str, dst: &str, policy: &str| {
            text.lines()
                .find(|x| {
                    x.starts_with("istio_requests_total{")
                        && x.contains(&format!("source_principal=\"{src}\""))
                        && x.contains(&format!("destination_principal=\"{dst}\""))
                        && x.contains(&format!("connection_security_policy=\"{policy}\""))
                })
                .unwrap_or_else(|| panic!("no {src} {dst} {policy}:\n{text}"))
                .to_string()
        };
        assert!(line(alice, me, "mutual_tls").ends_with(" 2"));
        assert!(line("unknown", me, "mutual_tls").ends_with(" 1"));
        assert!(line("unknown", "unknown", "none").ends_with(" 1"));
        // A bounded table: peers beyond PEERS_MAX are not counted, only the overflow.
        for i in 1..PEERS_MAX {
            l.peer(Some(Some(&format!("spiffe://x/{i}"))));
        }
        let over = l.peer(Some(Some("spiffe://x/one-too-many")));
        let o = Outcome {
            cluster: None,
            code: 20,
            grpc: None,
            flags: (0, &dash),
            peer: over,
            meta: MetaId::NONE,
        };
        l.request(&o, 1_000, 10, 20);
        assert!(s.render_text().contains("istio.label_sets_overflow: 1"));
    }

    #[test]
    fn label_sets_are_capped_and_the_overflow_counted() {
        let s = Arc::new(Stats::new(1, &crate::config::StatsConfig::default()).unwrap());
        let node = Arc::new(Node::from_metadata(&BTreeMap::new()));
        let l = IstioListener::new(
            s.shard(0),
            IstioReporter::Source,
            Protocol::Dubbo,
            node,
            None,
            2,
        );
        let dash = || "-".to_string();
        for code in [20, 30, 20, 40, 50] {
            let o = Outcome {
                cluster: None,
                code,
                grpc: None,
                flags: (0, &dash),
                peer: PeerId::NONE,
                meta: MetaId::NONE,
            };
            l.request(&o, 1_000, 10, 20);
        }
        let text = s.render_text();
        assert!(text.contains("istio.label_sets_overflow: 2"), "{text}");
        let counted: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istiocustom.istio_requests_total."))
            .collect();
        assert_eq!(counted.len(), 2, "{counted:?}");
        assert!(
            counted
                .iter()
                .any(|l| l.contains("response_code.20.") && l.ends_with(": 2")),
            "{counted:?}"
        );
    }
}
