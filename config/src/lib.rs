//! ringside's config model and its YAML loader.
//!
//! The model is plain data (`Eq`, no proto types): the static YAML file produces it today, and
//! the xDS and registry sources of later issues will produce the same types. Loading is two
//! steps, each of which names the file, line and field of every problem it finds:
//! 1. serde deserialisation with `deny_unknown_fields` (typos and wrong types);
//! 2. [`Config::validate`]: cross references (a listener's cluster exists), uniqueness, ranges.
//!
//! Every limit is a named constant here, documented in `docs/config.md`; out-of-range values are
//! rejected, never clamped.

#![forbid(unsafe_code)]

mod dpdk;
mod ext_authz;
mod jwt;
mod lines;
mod rbac;

pub use dpdk::*;
pub use ext_authz::*;
pub use jwt::*;
pub use rbac::*;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
pub const DRAIN_TIMEOUT_MS_MAX: u64 = 600_000;
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 3_600_000;
/// Every duration has an upper bound: a deadline computed from it (`Instant + Duration`) must
/// not overflow, and a week without a byte is no connection anyone waits for.
pub const IDLE_TIMEOUT_MS_MAX: u64 = 7 * 24 * 3_600_000;
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 1_000;
pub const CONNECT_TIMEOUT_MS_MAX: u64 = 60_000;
/// Per-direction relay buffer of one TCP connection: the most a slow peer can make us hold.
pub const BUFFER_BYTES_DEFAULT: usize = 64 * 1024;
pub const BUFFER_BYTES_MIN: usize = 1024;
pub const BUFFER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Downstream connections one shard accepts on one listener before refusing more.
pub const CONNECTIONS_PER_SHARD_MAX_DEFAULT: u32 = 16_384;
pub const SHARDS_MAX: usize = 256;
/// Largest Dubbo frame accepted (header + body), as Dubbo's own `payload` default.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;
pub const FRAME_BYTES_MAX_LIMIT: usize = 256 * 1024 * 1024;
/// Requests one downstream connection may have in flight before ringside stops reading from it.
pub const PENDING_REQUESTS_PER_CONNECTION_MAX_DEFAULT: u32 = 4096;
/// Default request timeout when neither the route nor the cluster sets one (Dubbo's own is 1 s;
/// a proxy must not cut shorter than the caller, so it waits a little longer).
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 3_000;
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Upstream connections per endpoint per shard (multiplexed).
pub const CONNECTIONS_PER_HOST_DEFAULT: u32 = 1;
pub const CONNECTIONS_PER_HOST_MAX: u32 = 64;
/// Requests waiting for or in flight on one endpoint, per shard; beyond it: status 100.
pub const PENDING_REQUESTS_PER_HOST_MAX_DEFAULT: u32 = 8192;
/// Heartbeats on idle upstream Dubbo connections (Dubbo's default is 60 s).
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 60_000;
pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 100;
pub const HEARTBEAT_INTERVAL_MS_MAX: u64 = 3_600_000;
/// Initial fetch timeouts (xDS, registry) and reconnect back-offs.
pub const FETCH_TIMEOUT_MS_MAX: u64 = 600_000;
pub const RETRY_MS_MAX: u64 = 600_000;
/// Largest Dubbo response accepted from a provider (header + body); a larger one is skipped and
/// its caller answered status 80. Same default as `frame_bytes_max`.
pub const RESPONSE_BYTES_MAX_DEFAULT: usize = FRAME_BYTES_MAX_DEFAULT;
/// Upper bound of the Dubbo connection timers (idle, first frame, heartbeat, output stall).
pub const DUBBO_TIMER_MS_MAX: u64 = 86_400_000;
/// Dubbo downstream: answers queued for one consumer connection before ringside stops reading
/// its requests (twice the default largest frame, so one whole answer always fits).
pub const OUTPUT_BYTES_MAX_DEFAULT: usize = 2 * FRAME_BYTES_MAX_DEFAULT;
/// Dubbo downstream: how long the output queue may stay over `output_bytes_max` (the consumer
/// does not read) before the connection is closed.
pub const OUTPUT_STALL_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Dubbo downstream: a new connection must send its first whole frame within this (Envoy's
/// `listener_filters_timeout`).
pub const FIRST_FRAME_TIMEOUT_MS_DEFAULT: u64 = 15_000;
/// Dubbo downstream: a consumer that sends nothing (not even a heartbeat) for this long is
/// closed (Apache Dubbo's server side: 3 × its 60 s heartbeat).
pub const HEARTBEAT_TIMEOUT_MS_DEFAULT: u64 = 180_000;
/// Bytes one shard may hold buffered for its connections (queued output, partly read large
/// frames) before it sheds new requests.
pub const BUFFERED_BYTES_PER_SHARD_MAX_DEFAULT: usize = 512 * 1024 * 1024;
pub const BUFFERED_BYTES_PER_SHARD_MAX_MIN: usize = 1024 * 1024;
pub const BUFFERED_BYTES_PER_SHARD_MAX_LIMIT: usize = 1 << 40;

/// HTTP/2 (triple listeners): frame size advertised to callers, and its protocol limits.
pub const H2_FRAME_BYTES_MAX_DEFAULT: u32 = 16_384;
pub const H2_FRAME_BYTES_MAX_LIMIT: u32 = (1 << 24) - 1;
pub const HEADER_LIST_BYTES_MAX_DEFAULT: u32 = 64 * 1024;
pub const HEADER_LIST_BYTES_MAX_LIMIT: u32 = 16 * 1024 * 1024;
pub const CONCURRENT_STREAMS_MAX_DEFAULT: u32 = 1024;
/// Flow-control windows (HTTP/2 allows 65535 ..= 2^31-1).
pub const STREAM_WINDOW_BYTES_DEFAULT: u32 = 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES_DEFAULT: u32 = 4 * 1024 * 1024;
pub const WINDOW_BYTES_MIN: u32 = 65_535;
pub const WINDOW_BYTES_MAX: u32 = (1 << 31) - 1;
pub const RESETS_PER_SECOND_MAX_DEFAULT: u32 = 200;
/// Control frames queued for a peer that does not read them (Envoy's
/// `max_outbound_control_frames`).
pub const OUTBOUND_CONTROL_FRAMES_MAX_DEFAULT: u32 = 1000;
/// How long a new caller connection may take to send the HTTP/2 preface and SETTINGS.
pub const PREFACE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Header bytes a caller may make ringside decode beyond the header block bytes it sent (HPACK
/// amplification), per connection per second: 16 MiB is some 70,000 calls per second of a
/// client that indexes ~250 bytes of headers.
pub const HPACK_AMPLIFIED_BYTES_PER_SECOND_MAX_DEFAULT: u32 = 16 << 20;
/// Upper bound of every HTTP/2 timer (a day).
pub const H2_TIMER_MS_MAX: u64 = 86_400_000;
/// HTTP/2 PING keepalive of upstream connections (see `Cluster::keepalive_interval_ms`).
pub const KEEPALIVE_INTERVAL_MS_DEFAULT: u64 = 300_000;
pub const KEEPALIVE_TIMEOUT_MS_DEFAULT: u64 = 20_000;
/// A token bucket's `max_tokens` and `tokens_per_fill` (`local_rate_limit`).
pub const RATE_LIMIT_TOKENS_MAX: u32 = 1_000_000_000;
/// A token bucket's `fill_interval_ms`.
pub const RATE_LIMIT_FILL_INTERVAL_MS_MAX: u64 = 86_400_000;

/// The whole config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub runtime: Runtime,
    /// How long a draining process waits for connections in flight before it exits anyway.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    #[serde(default)]
    pub stats: StatsConfig,
    /// Dynamic listeners, routes, clusters and endpoints from an xDS (ADS) server, added to the
    /// static ones above (names must not collide).
    #[serde(default)]
    pub xds: Option<XdsBootstrap>,
    /// The optional DPDK path (a ringside built with `--features dpdk`; docs/dpdk.md).
    #[serde(default)]
    pub dpdk: Option<Dpdk>,
    /// A service registry (ZooKeeper, Apache Dubbo's layout): the endpoints of `type: zookeeper`
    /// clusters, and the local services ringside registers on the application's behalf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<Registry>,
    /// SDS servers on Unix sockets (Istio's pilot-agent), by the cluster name xDS's
    /// `sds_config` gives them: certificates of `tls` sections with `sds` from `server: NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sds: Vec<SdsServer>,
    /// Envoy's `cluster_manager.local_cluster_name` and the node's locality: zone-aware
    /// routing (docs/governance.md#zone-aware-routing). None: no zone-aware routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_manager: Option<ClusterManager>,
}

/// Envoy's `cluster_manager` as far as zone-aware routing needs it
/// (docs/governance.md#zone-aware-routing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterManager {
    /// The *local cluster*: the endpoints of this service's own proxies (the callers), whose
    /// share per locality zone-aware routing matches. A cluster of `clusters` or from xDS;
    /// while none has this name, no zone-aware routing.
    pub local_cluster_name: String,
    /// The locality this proxy runs in (Envoy's `node.locality`); default `xds.locality`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
}

impl Config {
    /// The locality zone-aware routing treats as local (`cluster_manager.locality`, else
    /// `xds.locality`), when there is a local cluster.
    pub fn local_locality(&self) -> Option<(&str, Locality)> {
        let cm = self.cluster_manager.as_ref()?;
        let loc = cm
            .locality
            .clone()
            .or_else(|| self.xds.as_ref().and_then(|x| x.locality.clone()))
            .unwrap_or_default();
        Some((cm.local_cluster_name.as_str(), loc))
    }
}

/// An SDS server (`envoy.service.secret.v3.SecretDiscoveryService`) on a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdsServer {
    /// The name secrets refer to it by (xDS: `sds_config`'s `envoy_grpc.cluster_name`, Istio's
    /// `sds-grpc`).
    pub name: String,
    /// The Unix socket (Istio: `/var/run/secrets/workload-spiffe-uds/socket`).
    pub path: String,
}

/// A secret from SDS: a certificate with its key (`tls_certificate`), or a trust bundle
/// (`validation_context`), by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdsSecret {
    /// The secret's name (Istio: `default` for the workload certificate, `ROOTCA`).
    pub name: String,
    /// The `sds` server it comes from; none: the ADS stream of the `xds` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// How a peer certificate's URI SAN is matched: a string matches exactly, `{prefix: P}` any
/// SAN that starts with P.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SanMatcher {
    Exact(String),
    Prefix { prefix: String },
}

/// A TLS version (Envoy's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSv1_2")]
    Tls12,
    #[serde(rename = "TLSv1_3")]
    Tls13,
}

/// TLS versions and TLS 1.2 cipher suites of a listener or cluster (Envoy's `tls_params`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsParams {
    /// Default TLSv1_2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
    /// Default TLSv1_3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<TlsVersion>,
    /// TLS 1.2 suites allowed, OpenSSL names; those ringside lacks are skipped (at least one
    /// must be known). Empty: all of ringside's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

pub const REGISTRY_SESSION_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const REGISTRY_SESSION_TIMEOUT_MS_MIN: u64 = 2_000;
pub const REGISTRY_SESSION_TIMEOUT_MS_MAX: u64 = 600_000;
pub const REGISTRY_INITIAL_FETCH_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const REGISTRY_RETRY_INITIAL_MS_DEFAULT: u64 = 500;
pub const REGISTRY_RETRY_MAX_MS_DEFAULT: u64 = 30_000;
pub const REGISTRY_ROOT_DEFAULT: &str = "dubbo";
pub const REGISTRY_HEALTH_INTERVAL_MS_DEFAULT: u64 = 2_000;
/// Dubbo's default provider weight.
pub const ENDPOINT_WEIGHT_DEFAULT: u32 = 100;

/// One ZooKeeper ensemble, read and written in Apache Dubbo's layout
/// (`/{root}/{interface}/providers/{URL-encoded provider URL}`). One session per process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// `host:port` of each ensemble member.
    pub addresses: Vec<String>,
    /// ZooKeeper chroot every path is under (`/` or e.g. `/prod`).
    #[serde(default = "default_registry_chroot")]
    pub chroot: String,
    /// Dubbo's root node (Dubbo's `registry.group`): `dubbo` gives `/dubbo/{interface}/...`.
    #[serde(default = "default_registry_root")]
    pub root: String,
    #[serde(default = "default_registry_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How long start-up waits for the first read of every `type: zookeeper` cluster before
    /// serving without it (`/ready` stays 503 until then).
    #[serde(default = "default_registry_initial_fetch_timeout_ms")]
    pub initial_fetch_timeout_ms: u64,
    /// Reconnect back-off: starts here, doubles up to `retry_max_ms`.
    #[serde(default = "default_registry_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_registry_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Services of the local application that ringside registers as providers, pointing
    /// consumers at one of its listeners.
    #[serde(default)]
    pub services: Vec<RegisteredService>,
}

/// A provider ringside registers on the application's behalf: an ephemeral node
/// `dubbo://{advertised address}/{interface}?...` that exists while `health_port` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisteredService {
    pub interface: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// Method names, published as `methods=a,b`.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Dubbo's `application`.
    #[serde(default)]
    pub application: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
    /// The listener (by name) consumers are sent to; its address is advertised unless
    /// `advertise` is given.
    pub listener: String,
    /// `host:port` to publish instead of the listener's address (e.g. the pod IP when the
    /// listener binds 0.0.0.0).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// The application's own port: the service is registered only while a TCP connect to it
    /// succeeds.
    pub local_port: u16,
    /// Host of the local port (default 127.0.0.1).
    #[serde(default = "default_local_host")]
    pub local_host: std::net::IpAddr,
    #[serde(default = "default_registry_health_interval_ms")]
    pub health_interval_ms: u64,
    /// Also write a consumer node under `/{root}/{interface}/consumers`.
    #[serde(default)]
    pub register_consumer: bool,
}

fn default_registry_protocol() -> String {
    "dubbo".into()
}
fn default_registry_chroot() -> String {
    "/".into()
}
fn default_registry_root() -> String {
    REGISTRY_ROOT_DEFAULT.into()
}
fn default_registry_session_timeout_ms() -> u64 {
    REGISTRY_SESSION_TIMEOUT_MS_DEFAULT
}
fn default_registry_initial_fetch_timeout_ms() -> u64 {
    REGISTRY_INITIAL_FETCH_TIMEOUT_MS_DEFAULT
}
fn default_registry_retry_initial_ms() -> u64 {
    REGISTRY_RETRY_INITIAL_MS_DEFAULT
}
fn default_registry_retry_max_ms() -> u64 {
    REGISTRY_RETRY_MAX_MS_DEFAULT
}
fn default_registry_health_interval_ms() -> u64 {
    REGISTRY_HEALTH_INTERVAL_MS_DEFAULT
}
fn default_local_host() -> std::net::IpAddr {
    std::net::IpAddr::from([127, 0, 0, 1])
}
fn is_default_weight(w: &u32) -> bool {
    *w == ENDPOINT_WEIGHT_DEFAULT
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn default_weight() -> u32 {
    ENDPOINT_WEIGHT_DEFAULT
}

pub const XDS_INITIAL_FETCH_TIMEOUT_MS_DEFAULT: u64 = 15_000;
pub const XDS_RETRY_INITIAL_MS_DEFAULT: u64 = 500;
pub const XDS_RETRY_MAX_MS_DEFAULT: u64 = 30_000;

/// Where and as whom ringside subscribes to xDS (one ADS stream, plaintext gRPC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsBootstrap {
    /// `host:port` of the ADS server (e.g. `istiod.istio-system.svc:15010`), or `unix:PATH`: a
    /// Unix socket (Istio's pilot-agent proxies ADS on `./etc/istio/proxy/XDS`).
    pub server: String,
    /// The node id the control plane knows this sidecar by (Istio: `sidecar~IP~POD.NS~NS.svc.cluster.local`).
    pub node_id: String,
    /// The node's service cluster.
    #[serde(default)]
    pub node_cluster: String,
    #[serde(default)]
    pub locality: Option<Locality>,
    /// `sotw` (state of the world) or `delta` (incremental) xDS.
    #[serde(default)]
    pub mode: XdsMode,
    /// How long start-up waits for the first listeners and clusters before serving the static
    /// ones alone (`/ready` stays 503 until then).
    #[serde(default = "default_xds_initial_fetch_timeout_ms")]
    pub initial_fetch_timeout_ms: u64,
    /// Reconnect back-off: starts here, doubles (with jitter) up to `retry_max_ms`.
    #[serde(default = "default_xds_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_xds_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Envoy's `node.metadata`, sent to the control plane and read by Istio's standard metrics
    /// (docs/observability.md): Istio's keys `NAME`, `NAMESPACE`, `WORKLOAD_NAME`,
    /// `CLUSTER_ID`, `LABELS` (a map: `app`, `version`, `service.istio.io/canonical-name`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_metadata: std::collections::BTreeMap<String, NodeMetadataValue>,
    /// TLS to the ADS server (Envoy: the xDS cluster's `UpstreamTlsContext`; istiod's port
    /// 15012); none: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<XdsTls>,
}

/// TLS to the ADS server: the server's certificate must chain to `ca` and carry a SAN (DNS or
/// URI) one of `subject_alt_names` matches; a client certificate when `cert_chain` and
/// `private_key` are given. Files only (SDS itself may come over this stream). No plaintext
/// fallback: a failed handshake is a failed connect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsTls {
    /// PEM file: the CAs the server's certificate must chain to (Istio: the mesh root,
    /// `/var/run/secrets/istio/root-cert.pem`).
    pub ca: String,
    /// PEM files: the client certificate chain and key presented (both or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_chain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The server's certificate must carry a DNS or URI SAN one of these matches (Envoy's
    /// `match_subject_alt_names`; Istio: `istiod.istio-system.svc`); empty: any certificate
    /// `ca` signed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SanMatcher>,
    /// Server name sent as SNI; none: no SNI (Envoy's `sni`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub params: TlsParams,
}

/// One `xds.node_metadata` value: a string, a map of strings (Istio's `LABELS`), or any other
/// JSON value (pilot-agent's bootstrap: numbers such as `ENVOY_STATUS_PORT`, lists such as
/// `PILOT_SAN`, objects such as `PROXY_CONFIG`), sent as the `google.protobuf.Value` it maps to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NodeMetadataValue {
    String(String),
    Map(std::collections::BTreeMap<String, String>),
    Json(serde_json::Value),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub sub_zone: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdsMode {
    #[default]
    Sotw,
    Delta,
}

fn default_xds_initial_fetch_timeout_ms() -> u64 {
    XDS_INITIAL_FETCH_TIMEOUT_MS_DEFAULT
}
fn default_xds_retry_initial_ms() -> u64 {
    XDS_RETRY_INITIAL_MS_DEFAULT
}
fn default_xds_retry_max_ms() -> u64 {
    XDS_RETRY_MAX_MS_DEFAULT
}

/// Default cap on Dubbo (listener, interface, method) stat entries per shard.
pub const DUBBO_SERVICES_MAX_DEFAULT: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// Per-upstream-host stats (off: with many hosts they dominate memory).
    #[serde(default)]
    pub per_host: bool,
    /// When non-empty, only stats whose text name matches one of these are kept.
    #[serde(default)]
    pub include: Vec<NameMatch>,
    /// Stats whose text name matches one of these are dropped.
    #[serde(default)]
    pub exclude: Vec<NameMatch>,
    /// Distinct Dubbo (listener, interface, method) entries tracked per shard; beyond it,
    /// requests are counted under interface and method `other`.
    #[serde(default = "default_dubbo_services_max")]
    pub dubbo_services_max: usize,
    /// Istio metrics (listeners with `istio_metrics`): distinct label sets per listener and
    /// shard; a call or connection with a new label set beyond it is not counted in them
    /// (`istio.label_sets_overflow` counts it).
    #[serde(default = "default_istio_label_sets_max")]
    pub istio_label_sets_max: usize,
}

/// Default cap on Istio metric label sets per listener and shard.
pub const ISTIO_LABEL_SETS_MAX_DEFAULT: usize = 1_000;
/// Upper bound of `stats.istio_label_sets_max` (each set is ~100 bytes of names plus 64
/// value slots per shard).
pub const ISTIO_LABEL_SETS_MAX_LIMIT: usize = 100_000;

fn default_istio_label_sets_max() -> usize {
    ISTIO_LABEL_SETS_MAX_DEFAULT
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            per_host: false,
            include: Vec::new(),
            exclude: Vec::new(),
            dubbo_services_max: DUBBO_SERVICES_MAX_DEFAULT,
            istio_label_sets_max: ISTIO_LABEL_SETS_MAX_DEFAULT,
        }
    }
}

/// Exactly one of `prefix` or `regex` (full match), against a stat's text name such as
/// `cluster.users.upstream_rq_total`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameMatch {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

fn default_dubbo_services_max() -> usize {
    DUBBO_SERVICES_MAX_DEFAULT
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// The admin HTTP API (Istio: 15000). Keep it on loopback.
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
    /// Optional extra listener answering only `/healthz/ready` (Istio: 15021).
    #[serde(default)]
    pub health_address: Option<SocketAddr>,
    /// With `health_address`: `/healthz/ready` there is answered by this HTTP server instead
    /// (request and answer relayed as Envoy's bootstrap routes it to pilot-agent's status port,
    /// 15020); unreachable: 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_upstream: Option<SocketAddr>,
    /// Optional extra listener answering only `/stats/prometheus` (Istio: 15090).
    #[serde(default)]
    pub prometheus_address: Option<SocketAddr>,
    /// Unix socket a successor connects to for a hot upgrade (`ringside run --upgrade`).
    /// Default: `$TMPDIR/ringside-<euid>/ringside-<admin port>.sock`. Created mode 0600; its
    /// directory must be writable only by ringside's user (checked at start).
    #[serde(default)]
    pub control_socket: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Number of shards; default: one per core in the process's affinity mask.
    #[serde(default)]
    pub shards: Option<usize>,
    #[serde(default)]
    pub io: IoMode,
    /// Pin each shard thread to its own core.
    #[serde(default = "default_true")]
    pub pin: bool,
    /// How an idle shard waits for work: sleep in the kernel, spin, or spin then sleep.
    #[serde(default)]
    pub poll_mode: PollMode,
    /// `poll_mode: hybrid`: how long an idle shard keeps spinning before it sleeps.
    #[serde(default = "default_spin_budget_us")]
    pub spin_budget_us: u64,
    /// SO_MARK on every socket ringside opens: listening sockets (and so the SYN-ACKs and
    /// replies of connections they accept) and upstream connections. Interception rules
    /// (`ringside iptables --proxy-mark`) let packets with this mark pass first, so the proxy's
    /// own traffic is never intercepted again. Needs CAP_NET_ADMIN. Default: no mark.
    #[serde(default)]
    pub socket_mark: Option<u32>,
    /// Bytes one shard may hold buffered for its connections (output queues, partly read
    /// large frames); beyond it new requests are shed (Dubbo status 100, gRPC
    /// RESOURCE_EXHAUSTED) and counted in `shard.<n>.rq_shed_memory`.
    #[serde(default = "default_buffered_bytes_per_shard_max")]
    pub buffered_bytes_per_shard_max: usize,
    /// TCP keepalive on every connection ringside accepts or opens (downstream, upstream unless
    /// the cluster sets its own, the xDS client's): a peer that vanished without a FIN or RST
    /// (a powered-off node, a NAT or load balancer that forgot the flow) is found and its
    /// connection closed instead of pinning its slot, requests and buffers forever. Read once
    /// at start.
    #[serde(default)]
    pub tcp_keepalive: TcpKeepalive,
    /// CPUs for the threads that work beside the shards for every logged or traced call: the
    /// access-log writers (`ringside-log`) and the span exporters (`ringside-trace`). Empty
    /// (default): they may run on any CPU of the process's affinity mask, a shard's pinned
    /// core included. Each must be in the affinity mask. Read once at start.
    #[serde(default)]
    pub aux_cpus: Vec<usize>,
}

/// Envoy's `http2_protocol_options.connection_keepalive` (see
/// `Cluster::http2_keepalive`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Keepalive {
    /// A PING this often (1 ..= 86400000).
    pub interval_ms: u64,
    /// Closed when nothing arrived this long after a PING (1 ..= 86400000).
    pub timeout_ms: u64,
    /// Up to this percentage of `interval_ms`, random, added to each interval (Envoy's
    /// `interval_jitter`, default 15; 0 ..= 100).
    #[serde(default = "default_keepalive_jitter_percent")]
    pub jitter_percent: u32,
}

/// Envoy's `connection_keepalive.interval_jitter` default.
pub const KEEPALIVE_JITTER_PERCENT_DEFAULT: u32 = 15;

fn default_keepalive_jitter_percent() -> u32 {
    KEEPALIVE_JITTER_PERCENT_DEFAULT
}

impl Http2Keepalive {
    pub fn validate(&self, at: &str, err: &mut dyn FnMut(String, String)) {
        for (name, v) in [
            ("interval_ms", self.interval_ms),
            ("timeout_ms", self.timeout_ms),
        ] {
            if !(1..=H2_TIMER_MS_MAX).contains(&v) {
                err(
                    format!("{at}.{name}"),
                    format!("{v} is out of range 1..={H2_TIMER_MS_MAX}"),
                );
            }
        }
        if self.jitter_percent > 100 {
            err(
                format!("{at}.jitter_percent"),
                format!("{} is out of range 0..=100", self.jitter_percent),
            );
        }
    }
}

/// TCP keepalive of a socket: SO_KEEPALIVE, TCP_KEEPIDLE (`time_s`), TCP_KEEPINTVL
/// (`interval_s`) and TCP_KEEPCNT (`probes`). A silent peer is given up after `time_s +
/// interval_s * probes` seconds of silence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// SO_KEEPALIVE on; false leaves the socket without keepalive (the kernel default).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Idle seconds before the first probe.
    #[serde(default = "default_keepalive_time_s")]
    pub time_s: u32,
    /// Seconds between unanswered probes.
    #[serde(default = "default_keepalive_probe_interval_s")]
    pub interval_s: u32,
    /// Unanswered probes before the connection is dropped.
    #[serde(default = "default_keepalive_probes")]
    pub probes: u32,
}

/// Idle time before the first probe: 180 s, under the idle timeouts of common NATs and cloud
/// load balancers (Azure 4 min, AWS NLB 350 s, GCP 10 min), so the probes also keep such a
/// flow alive. Envoy sets no keepalive unless configured and then takes the kernel's value for
/// a field left out (Linux: 7200 s, too long to keep those flows or to free a slot soon).
pub const KEEPALIVE_TIME_S_DEFAULT: u32 = 180;
/// CPU numbers `runtime.aux_cpus` may name (Linux's `CPU_SETSIZE`).
pub const AUX_CPU_LIMIT: usize = 1024;

/// Linux's default (`tcp_keepalive_intvl`), which Envoy uses for a field left out.
pub const KEEPALIVE_PROBE_INTERVAL_S_DEFAULT: u32 = 75;
/// Linux's default (`tcp_keepalive_probes`), which Envoy uses for a field left out.
pub const KEEPALIVE_PROBES_DEFAULT: u32 = 9;
/// The kernel's limits (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT).
pub const KEEPALIVE_TIME_S_MAX: u32 = 32_767;
pub const KEEPALIVE_PROBE_INTERVAL_S_MAX: u32 = 32_767;
pub const KEEPALIVE_PROBES_MAX: u32 = 127;
/// Linux's own defaults, for an xDS `tcp_keepalive` field left out (as Envoy does).
pub const KEEPALIVE_TIME_S_KERNEL: u32 = 7_200;

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive {
            enabled: true,
            time_s: KEEPALIVE_TIME_S_DEFAULT,
            interval_s: KEEPALIVE_PROBE_INTERVAL_S_DEFAULT,
            probes: KEEPALIVE_PROBES_DEFAULT,
        }
    }
}

impl TcpKeepalive {
    /// Checks each field against the kernel's limits.
    pub fn validate(&self, at: &str, err: &mut dyn FnMut(String, String)) {
        for (name, v, max) in [
            ("time_s", self.time_s, KEEPALIVE_TIME_S_MAX),
            (
                "interval_s",
                self.interval_s,
                KEEPALIVE_PROBE_INTERVAL_S_MAX,
            ),
            ("probes", self.probes, KEEPALIVE_PROBES_MAX),
        ] {
            if v == 0 || v > max {
                err(
                    format!("{at}.{name}"),
                    format!("{v} is out of range 1..={max}"),
                );
            }
        }
    }
}

fn default_keepalive_time_s() -> u32 {
    KEEPALIVE_TIME_S_DEFAULT
}

fn default_keepalive_probe_interval_s() -> u32 {
    KEEPALIVE_PROBE_INTERVAL_S_DEFAULT
}

fn default_keepalive_probes() -> u32 {
    KEEPALIVE_PROBES_DEFAULT
}

fn default_buffered_bytes_per_shard_max() -> usize {
    BUFFERED_BYTES_PER_SHARD_MAX_DEFAULT
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollMode {
    #[default]
    Sleep,
    Spin,
    Hybrid,
}

pub const SPIN_BUDGET_US_DEFAULT: u64 = 50;
pub const SPIN_BUDGET_US_MAX: u64 = 1_000_000;

fn default_spin_budget_us() -> u64 {
    SPIN_BUDGET_US_DEFAULT
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    #[default]
    Auto,
    Uring,
    Epoll,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: Protocol,
    /// tcp: the cluster every connection goes to.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: usize,
    #[serde(default = "default_connections_per_shard_max")]
    pub connections_per_shard_max: u32,
    /// Dubbo options and routes (protocol `dubbo` only).
    #[serde(default)]
    pub dubbo: Option<DubboListener>,
    /// Triple/gRPC options and routes (protocol `triple` only).
    #[serde(default)]
    pub triple: Option<TripleListener>,
    /// IP_TRANSPARENT on the listening socket: accepts connections TPROXY steers to it, whatever
    /// their destination address (`ringside iptables --mode tproxy`). Needs CAP_NET_ADMIN.
    #[serde(default)]
    pub transparent: bool,
    /// Each connection's upstream is its original destination (for a cluster of `type:
    /// original_destination`): with TPROXY the accepted socket's local address, with REDIRECT
    /// the address conntrack recorded before NAT (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).
    /// tcp listeners only.
    #[serde(default)]
    pub original_destination: bool,
    /// `false`: a virtual listener. It opens no socket; an `original_destination` listener that
    /// names it in `virtual_listeners` hands it the connections whose original destination is
    /// its `address` (Envoy's `bind_to_port: false`).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub bind: bool,
    /// tcp listeners with `original_destination: true`: listeners with `bind: false` that take
    /// over connections by original destination and protocol. A connection whose original
    /// destination is a virtual listener's address (its IP, or any IP when that is 0.0.0.0 or
    /// [::]; an exact IP wins) goes to that listener when the first bytes fit its protocol
    /// (Dubbo magic for `dubbo`, the HTTP/2 preface for `triple`, anything for `tcp`), else to
    /// that listener's `default_filter_chain` when it has one; every other connection is
    /// passed through to its original destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_listeners: Vec<String>,
    /// Per connection, the first of these whose `match` fits (as Envoy's filter chain matching
    /// chooses) hands the connection to its `bind: false` listener; none fits:
    /// `default_filter_chain`, else the connection is closed. A tcp listener's own `cluster`
    /// then serves nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_chains: Vec<FilterChain>,
    /// The chain of the connections no `filter_chains` entry takes (its `match` stays empty).
    /// On a virtual (`bind: false`) dubbo or triple listener, without `filter_chains`: the
    /// tcp listener that takes the connections handed to it whose first bytes do not speak
    /// its protocol (Istio's catch-all chain of a sniffed port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_filter_chain: Option<FilterChain>,
    /// Envoy's `tls_inspector`: chain matching sees `transport_protocol: tls` for a connection
    /// that starts with a TLS record, else `raw_buffer`. Without it every connection is
    /// `raw_buffer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_inspector: Option<Inspector>,
    /// Envoy's `http_inspector`: chain matching sees `application_protocols` `h2c` (the HTTP/2
    /// preface), `http/1.1` or `http/1.0` (an HTTP/1 request line) of a plaintext connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_inspector: Option<Inspector>,
    /// Access logs: one line per Dubbo call, Triple stream or TCP connection
    /// (docs/observability.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLog>,
    /// TLS termination (dubbo, triple and tcp listeners; a tcp listener's proxy relays the
    /// plaintext): see [`ListenerTls`] and docs/security.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// dubbo and triple listeners: one token per request (Dubbo request, Triple call) on this
    /// listener, for the routes without their own `local_rate_limit`; see docs/governance.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<TokenBucket>,
    /// Istio's standard metrics (`istio_requests_total`, `istio_tcp_*`, ...) for this
    /// listener's calls or connections, reported as `source` (outbound) or `destination`
    /// (inbound); from xDS: a listener with Istio's `istio.stats` filter
    /// (docs/observability.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio_metrics: Option<IstioReporter>,
    /// dubbo and triple listeners: trace context propagation and one span per call, exported
    /// with OTLP/gRPC (docs/observability.md#tracing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Envoy's `traffic_direction`: `inbound` (in front of the local application) or
    /// `outbound`; `POST /drain_listeners?inboundonly` drains the `inbound` ones only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_direction: Option<TrafficDirection>,
    /// Connection authorization (Envoy's network `rbac` filters, in order): a connection
    /// that one of them denies is closed (docs/security.md#authorization).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rbac: Vec<Rbac>,
    /// tcp listeners: connection authorization by an external service (Envoy's network
    /// `ext_authz` filter with a gRPC service, istiod's CUSTOM AuthorizationPolicy on TCP
    /// chains): a connection waits for `Authorization/Check` before its upstream connect, and
    /// is closed when denied (docs/security.md#external-authorization). Runs after the first
    /// `after_rbac` of `rbac`; counters `ext_authz.STAT_PREFIX...` (Envoy's network names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_authz: Option<ExtAuthz>,
}

/// A listener's direction (Envoy's `envoy.config.core.v3.TrafficDirection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficDirection {
    Inbound,
    Outbound,
}

/// Who reports a listener's Istio metrics (the `reporter` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IstioReporter {
    /// The client's sidecar: outbound listeners.
    Source,
    /// The server's sidecar: inbound listeners.
    Destination,
}

/// `service.name` of ringside's spans when the config names none (Envoy's default is
/// `unknown_service:envoy`).
pub const TRACING_SERVICE_NAME_DEFAULT: &str = "ringside";
/// Envoy's `random_sampling` default: every call that starts a trace here is sampled.
pub const TRACING_RANDOM_SAMPLING_DEFAULT: f64 = 100.0;

/// A listener's tracing: where its spans go, how often a call that arrives without a trace
/// context starts a sampled one, and the kind of its spans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The cluster of an OpenTelemetry collector (OTLP over gRPC, plaintext HTTP/2).
    pub collector_cluster: String,
    /// The spans' resource attribute `service.name`.
    #[serde(default = "default_tracing_service_name")]
    pub service_name: String,
    /// Percent (0 to 100) of the calls arriving without a sampling decision (no context, or a
    /// B3 context that defers it) that ringside samples (Envoy's `random_sampling`).
    #[serde(default = "default_tracing_random_sampling")]
    pub random_sampling: Percent,
    /// `server` for a listener in front of the local application (inbound), `client` for
    /// one the application calls out through (outbound): Envoy's listener direction.
    #[serde(default)]
    pub span_kind: SpanKind,
    /// A call that arrives without a context and is not sampled still carries a new context
    /// (`traceparent` flags `00`) to the next hop, as Envoy sends it (the default). `false`:
    /// it is forwarded untouched (a Dubbo request is then never copied); the next hop makes
    /// its own decision.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub propagate_unsampled: bool,
}

/// A percentage (0 to 100), compared bit for bit (so configs stay `Eq`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Percent(pub f64);

impl PartialEq for Percent {
    fn eq(&self, o: &Percent) -> bool {
        self.0.to_bits() == o.0.to_bits()
    }
}

impl Eq for Percent {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    Server,
    #[default]
    Client,
}

fn default_tracing_service_name() -> String {
    TRACING_SERVICE_NAME_DEFAULT.to_string()
}

fn default_tracing_random_sampling() -> Percent {
    Percent(TRACING_RANDOM_SAMPLING_DEFAULT)
}

/// One access log of a listener: where its lines go and their format (Envoy's format language).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// The file lines are appended to (created if missing); `/dev/stdout` for standard output.
    pub path: String,
    /// A format string (`%START_TIME% %DUBBO_METHOD% ...\n`); Envoy's default format when
    /// neither this nor `json_format` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A format dictionary: one JSON object per line, values format strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format: Option<serde_json::Map<String, serde_json::Value>>,
    /// Which calls get a line (Envoy's access-log `filter`); every call when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
}

/// Nesting of `and`/`or` access-log filters accepted (Envoy has no limit; a deeper tree is
/// refused rather than walked per call).
pub const ACCESS_LOG_FILTER_DEPTH_MAX: usize = 8;

/// Envoy's response flag names (`%RESPONSE_FLAGS%`), the ones a `response_flags` filter may
/// name (ringside sets a subset: docs/observability.md).
pub const RESPONSE_FLAG_NAMES: &[&str] = &[
    "UH", "UF", "UO", "NR", "URX", "NC", "DT", "DC", "LH", "UT", "LR", "UR", "UC", "DI", "FI",
    "RL", "UAEX", "RLSE", "IH", "SI", "DPE", "UPE", "UMSDR", "OM", "DF", "DO", "DR", "UDO", "NFCF",
    "RFCF",
];

/// An access-log filter (Envoy's `AccessLogFilter`): exactly one field set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFilter {
    /// `%RESPONSE_CODE%` compared with `value`: the Dubbo status (20 OK; `{op: ge, value: 30}`
    /// keeps every failed Dubbo call), the HTTP status of a Triple call, 0 for TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<Comparison>,
    /// `%DURATION%` (milliseconds) compared with `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<Comparison>,
    /// This percentage of the calls (0 to 100), each chosen at random (Envoy's
    /// `runtime_filter` with its `percent_sampled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_percent: Option<Percent>,
    /// Calls with any of these response flags (`[UH, UT]`); an empty list: any flag at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_flags: Option<Vec<String>>,
    /// A request header condition (Envoy's `header_filter`; Triple only: Dubbo calls and TCP
    /// connections have no headers, so every header is missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<AccessLogHeaderFilter>,
    /// The call's gRPC status is (or, with `exclude`, is not) one of `statuses` (Envoy's
    /// `grpc_status_filter`; a call without one, Dubbo and TCP included, is `UNKNOWN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<AccessLogGrpcStatusFilter>,
    /// Every one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub and: Option<Vec<AccessLogFilter>>,
    /// Any one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or: Option<Vec<AccessLogFilter>>,
}

/// A request header condition of an access-log filter: `name` and at most one of `exact`,
/// `prefix`, `regex` (a full match) or `present` (without any: present), as Envoy's
/// `HeaderMatcher`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogHeaderFilter {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Envoy's `invert_match`: a present header matches when the condition does not hold; a
    /// missing one matches only `present: true` (Envoy's rule).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
    /// Envoy's `treat_missing_header_as_empty`: a missing header is compared as "".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub treat_missing_as_empty: bool,
}

/// gRPC status names as Envoy's `GrpcStatusFilter` spells them, by number.
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The gRPC-status condition of an access-log filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogGrpcStatusFilter {
    /// Names from [`GRPC_STATUS_NAMES`] (`[UNAVAILABLE, DEADLINE_EXCEEDED]`).
    pub statuses: Vec<String>,
    /// Keep the calls whose status is *not* listed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude: bool,
}

impl AccessLogFilter {
    fn validate(&self, at: &str, depth: usize, err: &mut dyn FnMut(String, String)) {
        let set = [
            self.status_code.is_some(),
            self.duration_ms.is_some(),
            self.runtime_percent.is_some(),
            self.response_flags.is_some(),
            self.header.is_some(),
            self.grpc_status.is_some(),
            self.and.is_some(),
            self.or.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            err(
                at.to_string(),
                "set exactly one of status_code, duration_ms, runtime_percent, response_flags, \
                 header, grpc_status, and, or"
                    .into(),
            );
        }
        if let Some(h) = &self.header {
            if h.name.is_empty() {
                err(format!("{at}.header.name"), "is empty".into());
            }
            let conditions = [
                h.exact.is_some(),
                h.prefix.is_some(),
                h.regex.is_some(),
                h.present.is_some(),
            ];
            if conditions.iter().filter(|c| **c).count() > 1 {
                err(
                    format!("{at}.header"),
                    "set at most one of exact, prefix, regex, present".into(),
                );
            }
            if let Some(r) = &h.regex {
                if let Err(e) = regex::Regex::new(r) {
                    err(format!("{at}.header.regex"), e.to_string());
                }
            }
        }
        for (i, s) in self
            .grpc_status
            .iter()
            .flat_map(|g| &g.statuses)
            .enumerate()
        {
            if !GRPC_STATUS_NAMES.contains(&s.as_str()) {
                err(
                    format!("{at}.grpc_status.statuses[{i}]"),
                    format!(
                        "{s:?} is not a gRPC status ({})",
                        GRPC_STATUS_NAMES.join(", ")
                    ),
                );
            }
        }
        if let Some(p) = self.runtime_percent {
            if !(0.0..=100.0).contains(&p.0) {
                err(
                    format!("{at}.runtime_percent"),
                    format!("{} is not a percentage (0 to 100)", p.0),
                );
            }
        }
        for (i, f) in self.response_flags.iter().flatten().enumerate() {
            if !RESPONSE_FLAG_NAMES.contains(&f.as_str()) {
                err(
                    format!("{at}.response_flags[{i}]"),
                    format!(
                        "{f:?} is not a response flag ({})",
                        RESPONSE_FLAG_NAMES.join(", ")
                    ),
                );
            }
        }
        for (name, list) in [("and", &self.and), ("or", &self.or)] {
            let Some(list) = list else { continue };
            if depth >= ACCESS_LOG_FILTER_DEPTH_MAX {
                err(
                    format!("{at}.{name}"),
                    format!("filters nest deeper than {ACCESS_LOG_FILTER_DEPTH_MAX}"),
                );
                continue;
            }
            if list.len() < 2 {
                err(format!("{at}.{name}"), "needs at least two filters".into());
            }
            for (i, f) in list.iter().enumerate() {
                f.validate(&format!("{at}.{name}[{i}]"), depth + 1, err);
            }
        }
    }
}

/// A value compared with a threshold (Envoy's `ComparisonFilter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    pub op: ComparisonOp,
    pub value: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComparisonOp {
    /// Equal.
    Eq,
    /// Greater than or equal.
    Ge,
    /// Less than or equal.
    Le,
    /// Not equal.
    Ne,
}

impl Comparison {
    pub fn holds(self, v: u64) -> bool {
        match self.op {
            ComparisonOp::Eq => v == self.value,
            ComparisonOp::Ge => v >= self.value,
            ComparisonOp::Le => v <= self.value,
            ComparisonOp::Ne => v != self.value,
        }
    }
}

/// Whether a TLS listener also serves plaintext (Istio's PeerAuthentication modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Only TLS: a connection that does not start with a TLS record is closed.
    #[default]
    Strict,
    /// TLS when the first byte is a TLS handshake record (0x16), plaintext otherwise.
    Permissive,
}

/// A listener's `tls`: its certificate, and how client certificates are verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file: the listener's certificate chain, leaf first (or `certificate_sds`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_chain: String,
    /// PEM file: its private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// The certificate and key from SDS instead of files (Istio: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sds: Option<SdsSecret>,
    /// PEM file: the CAs client certificates must chain to. Without it (and `ca_sds`) no
    /// client certificate is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The trust bundle from SDS instead of a file (Istio: `ROOTCA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_sds: Option<SdsSecret>,
    /// Refuse a client without a certificate (mutual TLS). Needs `ca`.
    #[serde(default = "default_true")]
    pub require_client_certificate: bool,
    /// A client certificate must carry a URI SAN one of these matches (SPIFFE ids: a string
    /// exactly, `{prefix: ...}` by prefix); empty: any certificate `ca` signed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SanMatcher>,
    /// ALPN protocols offered, in preference order (e.g. `h2` for gRPC clients).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub params: TlsParams,
    /// TLS 1.3 session tickets after each handshake (stateless resumption); `false`: none
    /// (every handshake a full one, but TLS 1.2 session ids).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub session_tickets: bool,
    /// Seconds between changes of the listener's ticket keys; a ticket is accepted for twice
    /// this ([`TICKET_KEY_ROTATION_S_MAX`] at most: rustls' own rotation).
    #[serde(
        default = "default_ticket_key_rotation_s",
        skip_serializing_if = "is_default_ticket_key_rotation_s"
    )]
    pub ticket_key_rotation_s: u32,
}

/// Longest (and default) `ticket_key_rotation_s`: 6 hours, rustls' own rotation period.
pub const TICKET_KEY_ROTATION_S_MAX: u32 = 6 * 60 * 60;

fn default_ticket_key_rotation_s() -> u32 {
    TICKET_KEY_ROTATION_S_MAX
}

fn is_default_ticket_key_rotation_s(s: &u32) -> bool {
    *s == TICKET_KEY_ROTATION_S_MAX
}

/// A cluster's `tls`: TLS (mutual, with a client certificate) to its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// PEM files: the client certificate chain and key presented to endpoints (both or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_chain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The client certificate and key from SDS instead of files (Istio: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sds: Option<SdsSecret>,
    /// PEM file: the CAs an endpoint's certificate must chain to (or `ca_sds`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca: String,
    /// The trust bundle from SDS instead of a file (Istio: `ROOTCA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_sds: Option<SdsSecret>,
    /// Server name sent as SNI (Istio: `outbound_.PORT_._.HOST`); none: no SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// ALPN protocols offered (Istio: `istio-peer-exchange`, `istio`, `h2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// An endpoint's certificate must carry a URI SAN one of these matches (a string exactly,
    /// `{prefix: ...}` by prefix; Envoy's `match_typed_subject_alt_names` of type URI); empty:
    /// any certificate `ca` signed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SanMatcher>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub params: TlsParams,
}

/// A token bucket (Envoy's `token_bucket`), shared by every shard: it holds up to
/// `max_tokens` (the burst; it starts full) and gains `tokens_per_fill` every
/// `fill_interval_ms`, continuously (as Envoy's local rate limit since 1.32). A request that
/// finds no token is answered by ringside (Dubbo status 100; gRPC `grpc_status`, HTTP/1.1
/// `http_status`, each with Envoy's body `local_rate_limited`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub max_tokens: u32,
    #[serde(default = "default_tokens_per_fill")]
    pub tokens_per_fill: u32,
    pub fill_interval_ms: u64,
    /// The HTTP status an HTTP/1.1 request over the limit is answered (Envoy's `status`,
    /// 400..=599). Unset: 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The gRPC status a call over the limit is answered (1..=16). Unset: RESOURCE_EXHAUSTED
    /// (8). From xDS: Envoy's (its `status` mapped, 429 as UNAVAILABLE, unless
    /// `rate_limited_as_resource_exhausted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

impl TokenBucket {
    /// The HTTP status of an HTTP/1.1 request's answer over the limit.
    pub fn http_status(&self) -> u16 {
        self.http_status.unwrap_or(429)
    }

    /// The gRPC status of a call's answer over the limit.
    pub fn grpc_status(&self) -> u32 {
        self.grpc_status.unwrap_or(8)
    }

    /// Tokens gained per second.
    pub fn rate_per_second(&self) -> f64 {
        self.tokens_per_fill as f64 * 1000.0 / self.fill_interval_ms as f64
    }

    fn validate(&self, at: &str, err: &mut dyn FnMut(String, String)) {
        for (name, v) in [
            ("max_tokens", self.max_tokens),
            ("tokens_per_fill", self.tokens_per_fill),
        ] {
            if !(1..=RATE_LIMIT_TOKENS_MAX).contains(&v) {
                err(
                    format!("{at}.{name}"),
                    format!("{v} is out of range 1..={RATE_LIMIT_TOKENS_MAX}"),
                );
            }
        }
        range_ms(
            err,
            format!("{at}.fill_interval_ms"),
            self.fill_interval_ms,
            1,
            RATE_LIMIT_FILL_INTERVAL_MS_MAX,
        );
        if let Some(s) = self.http_status.filter(|s| !(400..=599).contains(s)) {
            err(
                format!("{at}.http_status"),
                format!("{s} is out of range 400..=599"),
            );
        }
        if let Some(s) = self.grpc_status.filter(|s| !(1..=16).contains(s)) {
            err(
                format!("{at}.grpc_status"),
                format!("{s} is out of range 1..=16"),
            );
        }
    }
}

fn default_tokens_per_fill() -> u32 {
    1
}

impl Listener {
    /// The route actions of every Dubbo and Triple route of this listener.
    pub fn route_actions(&self) -> impl Iterator<Item = &RouteAction> {
        let dubbo = self
            .dubbo
            .iter()
            .flat_map(|d| d.routes.iter().map(|r| &r.route));
        let triple = self
            .triple
            .iter()
            .flat_map(|t| t.all_routes().map(|r| &r.route));
        dubbo.chain(triple)
    }
}

/// A filter chain of a listener with `filter_chains`: the connections its `match` selects go
/// to `listener`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChain {
    /// For stats and logs (Envoy's filter chain `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: ChainMatch,
    /// The `bind: false` listener that serves the connections. None: a chain ringside cannot
    /// serve (a TLS chain, until ringside terminates TLS); its connections are closed
    /// (`downstream_cx_filter_chain_unserved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
}

/// Envoy's `FilterChainMatch`: every criterion given must hold; among the chains that fit, the
/// most specific wins level by level (destination port, destination IP, server name,
/// transport protocol, application protocol, direct source IP, source type, source IP, source
/// port), as Envoy's `FilterChainManager` decides.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// CIDR ranges of the destination address (`10.0.0.0/8`, `::/0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_ranges: Vec<String>,
    /// TLS SNI (`*.example.com` wildcards); a plaintext connection has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// `raw_buffer` or `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub application_protocols: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub direct_source_prefix_ranges: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub source_type: SourceType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_prefix_ranges: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ports: Vec<u16>,
}

/// Envoy's `ConnectionSourceType`: `local` is a peer on the connection's own IP or loopback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    #[default]
    Any,
    Local,
    External,
}

/// A first-bytes inspector feeding filter chain matching, off for connections whose
/// destination port is in one of `disabled_ports` (`[start, end)`, Envoy's
/// `filter_disabled` `destination_port_range`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inspector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_ports: Vec<[u32; 2]>,
}

impl Inspector {
    pub fn enabled_for(&self, port: u16) -> bool {
        !self
            .disabled_ports
            .iter()
            .any(|[lo, hi]| (*lo..*hi).contains(&u32::from(port)))
    }
}

/// `10.0.0.0/8` → (address, prefix length); the length at most 32 (IPv4) or 128 (IPv6).
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?}: not an IP address range (a.b.c.d/len)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = if len.is_empty() {
        max
    } else {
        len.parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length over {max}"))?
    };
    Ok((ip, len))
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// HTTP/2 limits and routes of a `triple` listener. The limits are what ringside advertises to
/// callers in its SETTINGS and enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TripleListener {
    /// SETTINGS_MAX_FRAME_SIZE advertised to callers (16384 ..= 16777215).
    #[serde(default = "default_h2_frame_bytes_max")]
    pub frame_bytes_max: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: larger header lists are refused (RESOURCE_EXHAUSTED).
    #[serde(default = "default_header_list_bytes_max")]
    pub header_list_bytes_max: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS per caller connection; more are refused (REFUSED_STREAM).
    #[serde(default = "default_concurrent_streams_max")]
    pub concurrent_streams_max: u32,
    /// Flow-control window per stream (SETTINGS_INITIAL_WINDOW_SIZE), for callers and
    /// upstreams: the most one stream can make ringside buffer.
    #[serde(default = "default_stream_window_bytes")]
    pub stream_window_bytes: u32,
    /// Flow-control window per connection: the most one connection can make ringside buffer.
    #[serde(default = "default_connection_window_bytes")]
    pub connection_window_bytes: u32,
    /// Stream resets (RST_STREAM) a caller may send per second before the connection is
    /// closed with ENHANCE_YOUR_CALM (rapid-reset protection).
    #[serde(default = "default_resets_per_second_max")]
    pub resets_per_second_max: u32,
    /// PING and SETTINGS acknowledgements and RST_STREAM frames queued for a peer that does not
    /// read them; beyond it GOAWAY ENHANCE_YOUR_CALM (PING / SETTINGS floods).
    #[serde(default = "default_outbound_control_frames_max")]
    pub outbound_control_frames_max: u32,
    /// A caller connection that has not sent the connection preface and its SETTINGS within
    /// this long is closed.
    #[serde(default = "default_preface_timeout_ms")]
    pub preface_timeout_ms: u64,
    /// Header bytes a caller's connection may make ringside decode beyond the header block
    /// bytes it sent (references to its HPACK dynamic table), per second; beyond it GOAWAY
    /// ENHANCE_YOUR_CALM (HPACK amplification).
    #[serde(default = "default_hpack_amplified_bytes_per_second_max")]
    pub hpack_amplified_bytes_per_second_max: u32,
    /// Tried in order; the first match wins; else the listener's `cluster`; else UNIMPLEMENTED.
    /// Not with `virtual_hosts`.
    #[serde(default)]
    pub routes: Vec<TripleRoute>,
    /// Call authorization (Envoy's HTTP `rbac` filters, in order): a call one of them denies
    /// is answered PERMISSION_DENIED (docs/security.md#authorization).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rbac: Vec<Rbac>,
    /// JWT authentication (Envoy's `jwt_authn` HTTP filter), checked before `rbac`: a call
    /// whose token fails is answered UNAUTHENTICATED (HTTP/1.1: 401); a verified token's
    /// payload is the call's metadata for `rbac` and routes (docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_authn: Option<JwtAuthn>,
    /// External authorization (Envoy's `ext_authz` HTTP filter with a gRPC service): calls
    /// it applies to wait for the authorizer's answer before routing
    /// (docs/security.md#external-authorization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_authz: Option<ExtAuthz>,
    /// Routes per `:authority`, as Envoy's virtual hosts: a stream goes to the one host whose
    /// domain matches its `:authority` best (exact, then the longest `*suffix`, then the
    /// longest `prefix*`, then `*`) and takes only that host's routes; else the listener's
    /// `cluster`; else UNIMPLEMENTED. Not with `routes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Domains are matched against `:authority` without its port (Envoy's
    /// `ignore_port_in_host_matching`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_port_in_host_matching: bool,
    /// Traffic labels (Apache Dubbo's tag routing): a call's `dubbo-tag` header (by default)
    /// sends it to the endpoints tagged with it; docs/governance.md#traffic-labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_label: Option<TrafficLabel>,
    /// Also serve HTTP/1.1 (Envoy's `codec_type: AUTO`): a plaintext connection whose first
    /// bytes are not the HTTP/2 preface is served as HTTP/1.1, each request routed by Host and
    /// path with these routes (docs/decisions/0010-http1.md).
    #[serde(default, skip_serializing_if = "is_false")]
    pub http1: bool,
    /// Istio's `istio.alpn` HTTP filter: the ALPN protocols a TLS upstream connection offers,
    /// by the protocol the request goes upstream with, in place of its cluster's `alpn` (so an
    /// Istio peer's inbound serves it on its HTTP chain); clusters with `keep_alpn` excepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn_override: Option<AlpnOverride>,
    /// `x-forwarded-client-cert` on requests (Envoy's `forward_client_cert_details`; the
    /// default, `sanitize`, removes it).
    #[serde(default, skip_serializing_if = "is_default")]
    pub forward_client_cert: ForwardClientCert,
    /// What `append_forward` and `sanitize_set` put in `x-forwarded-client-cert` besides `By`
    /// and `Hash` (Envoy's `set_current_client_cert_details`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub client_cert_details: ClientCertDetails,
    /// Header mutations of every route (Envoy's RouteConfiguration-level
    /// `request_headers_to_add`, ...; docs/config.md#header-mutations).
    #[serde(default, skip_serializing_if = "HeaderMutations::is_empty")]
    pub headers: HeaderMutations,
    /// The most specific level's mutations win (evaluated last: listener, host, route) instead
    /// of the least specific's (Envoy's `most_specific_header_mutations_wins`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub most_specific_header_mutations_wins: bool,
    /// The `server` header of responses (Envoy's `server_name`); default `ringside`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// What becomes of an upstream response's `server` (Envoy's
    /// `server_header_transformation`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub server_header_transformation: ServerHeader,
    /// The router adds no `x-envoy-*` headers (Envoy's router filter
    /// `suppress_envoy_headers`): no `x-envoy-original-path` on a rewritten request, no
    /// `x-envoy-expected-rq-timeout-ms` on HTTP/1.1 requests, no
    /// `x-envoy-upstream-service-time` on responses.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suppress_envoy_headers: bool,
}

/// Envoy's `server_header_transformation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerHeader {
    /// `server: <server_name>` on every response, replacing the upstream's.
    #[default]
    Overwrite,
    /// The upstream's when it sent one, else `server: <server_name>`.
    AppendIfAbsent,
    /// The upstream's when it sent one, else none.
    PassThrough,
}

/// Request and response header mutations of one level (listener, virtual host, route,
/// weighted cluster), as Envoy's `request_headers_to_add`, `request_headers_to_remove`,
/// `response_headers_to_add`, `response_headers_to_remove`: removals first, then additions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutations {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderToAdd>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderToAdd>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.request_headers_to_add.is_empty()
            && self.request_headers_to_remove.is_empty()
            && self.response_headers_to_add.is_empty()
            && self.response_headers_to_remove.is_empty()
    }

    /// Envoy's rules: a name is a header name (lower-cased when compiled), never a
    /// pseudo-header (`:path`, ...) nor `host`. Each problem as (field below `at`, message).
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let join = |f: String| match at.is_empty() {
            true => f,
            false => format!("{at}.{f}"),
        };
        let bad_name = |n: &str| {
            n.is_empty()
                || n.bytes().any(|b| b.is_ascii_control() || b == b' ')
                || n.bytes().skip(1).any(|b| b == b':')
        };
        for (dir, adds, removes) in [
            (
                "request",
                &self.request_headers_to_add,
                &self.request_headers_to_remove,
            ),
            (
                "response",
                &self.response_headers_to_add,
                &self.response_headers_to_remove,
            ),
        ] {
            for (k, h) in adds.iter().enumerate() {
                let f = join(format!("{dir}_headers_to_add[{k}].name"));
                if bad_name(&h.name) {
                    out.push((f, format!("{:?} is not a header name", h.name)));
                } else if !header_modifiable(&h.name) {
                    out.push((f, ":-prefixed or host headers may not be modified".into()));
                }
                if h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    out.push((
                        join(format!("{dir}_headers_to_add[{k}].value")),
                        "holds CR, LF or NUL".into(),
                    ));
                }
            }
            for (k, n) in removes.iter().enumerate() {
                let f = join(format!("{dir}_headers_to_remove[{k}]"));
                if bad_name(n) {
                    out.push((f, format!("{n:?} is not a header name")));
                } else if !header_modifiable(n) {
                    out.push((f, ":-prefixed or host headers may not be removed".into()));
                }
            }
        }
        out
    }
}

/// Envoy's `HeaderUtility::isModifiableHeader`: not a pseudo-header, not `host`.
fn header_modifiable(name: &str) -> bool {
    !name.starts_with(':') && !name.eq_ignore_ascii_case("host")
}

/// One header a level adds: `value` is an Envoy substitution format string (`%%` is a `%`;
/// the command operators ringside fills are listed in docs/config.md#header-mutations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderToAdd {
    pub name: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub append_action: AppendAction,
    /// Add it even when its value comes out empty (else it is left out).
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_empty_value: bool,
}

/// Envoy's `HeaderValueOption.HeaderAppendAction`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppendAction {
    /// Another field of that name (the default).
    #[default]
    AppendIfExistsOrAdd,
    /// Only when the header is absent.
    AddIfAbsent,
    /// Replaces every field of that name, or adds one.
    OverwriteIfExistsOrAdd,
    /// Replaces every field of that name; nothing when absent.
    OverwriteIfExists,
}

/// Envoy's `forward_client_cert_details`: what a request's `x-forwarded-client-cert` becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardClientCert {
    /// Removed.
    #[default]
    Sanitize,
    /// Kept over mutual TLS, removed otherwise.
    ForwardOnly,
    /// Over mutual TLS the client certificate's details appended to it, removed otherwise.
    AppendForward,
    /// Over mutual TLS replaced by the client certificate's details, removed otherwise.
    SanitizeSet,
    /// Kept, whatever the connection.
    AlwaysForwardOnly,
}

/// Envoy's `set_current_client_cert_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertDetails {
    #[serde(default, skip_serializing_if = "is_false")]
    pub subject: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub cert: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub chain: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dns: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub uri: bool,
}

/// ALPN protocols per upstream HTTP protocol (`istio.alpn`'s `alpn_override`); an empty list
/// overrides nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlpnOverride {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http10: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http11: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http2: Vec<String>,
}

impl TripleListener {
    /// Every route, `routes` first, then each virtual host's in order: the order of route
    /// indices (and route stats).
    pub fn all_routes(&self) -> impl Iterator<Item = &TripleRoute> {
        self.routes
            .iter()
            .chain(self.virtual_hosts.iter().flat_map(|h| &h.routes))
    }
}

/// A set of domains and the routes of the streams whose `:authority` they match best.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    /// `host`, `host:port`, `*suffix`, `prefix*` or `*` (at most one host has it); compared
    /// without regard to ASCII case; each domain in one host only.
    pub domains: Vec<String>,
    /// Tried in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<TripleRoute>,
    /// Header mutations of the host's routes (Envoy's VirtualHost-level ones).
    #[serde(default, skip_serializing_if = "HeaderMutations::is_empty")]
    pub headers: HeaderMutations,
}

impl Default for TripleListener {
    fn default() -> Self {
        TripleListener {
            frame_bytes_max: H2_FRAME_BYTES_MAX_DEFAULT,
            header_list_bytes_max: HEADER_LIST_BYTES_MAX_DEFAULT,
            concurrent_streams_max: CONCURRENT_STREAMS_MAX_DEFAULT,
            stream_window_bytes: STREAM_WINDOW_BYTES_DEFAULT,
            connection_window_bytes: CONNECTION_WINDOW_BYTES_DEFAULT,
            resets_per_second_max: RESETS_PER_SECOND_MAX_DEFAULT,
            outbound_control_frames_max: OUTBOUND_CONTROL_FRAMES_MAX_DEFAULT,
            preface_timeout_ms: PREFACE_TIMEOUT_MS_DEFAULT,
            hpack_amplified_bytes_per_second_max: HPACK_AMPLIFIED_BYTES_PER_SECOND_MAX_DEFAULT,
            routes: Vec::new(),
            rbac: Vec::new(),
            jwt_authn: None,
            ext_authz: None,
            virtual_hosts: Vec::new(),
            ignore_port_in_host_matching: false,
            traffic_label: None,
            http1: false,
            alpn_override: None,
            forward_client_cert: ForwardClientCert::Sanitize,
            client_cert_details: ClientCertDetails::default(),
            headers: HeaderMutations::default(),
            most_specific_header_mutations_wins: false,
            server_name: None,
            server_header_transformation: ServerHeader::default(),
            suppress_envoy_headers: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TripleRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: TripleMatch,
    pub route: RouteAction,
    /// One token per request this route takes; replaces the listener's `local_rate_limit` for
    /// them (as Envoy's per-route `typed_per_filter_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<TokenBucket>,
    /// At most this many of the route's calls in flight; one more is answered
    /// RESOURCE_EXHAUSTED (HTTP/1.1: 503) at once. Per shard `ceil(max / shards)`
    /// (docs/governance.md#concurrency-limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
    /// Header mutations of the route's requests and responses (Envoy's Route-level ones).
    #[serde(default, skip_serializing_if = "HeaderMutations::is_empty")]
    pub headers: HeaderMutations,
}

/// Every condition given must hold; an empty match matches every stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TripleMatch {
    /// `{service}` of `:path` = `/{service}/{method}`.
    #[serde(default)]
    pub service: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Header `tri-service-version`, exact.
    #[serde(default)]
    pub version: Option<String>,
    /// Header `tri-service-group`, exact.
    #[serde(default)]
    pub group: Option<String>,
    /// Header `tri-unit-info`, exact.
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// The whole request path (without its query and fragment), for conditions that cannot be
    /// said as `service` / `method` (HTTP paths, `path_separated_prefix`, case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Query parameters of the path (the first value of each name, not percent-decoded, as
    /// Envoy's `query_parameters`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryMatch>,
    /// The call's dynamic metadata (a verified JWT's payload; Envoy's `dynamic_metadata`):
    /// every condition must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dynamic_metadata: Vec<MetadataMatch>,
}

/// A condition on the request path without its query and fragment: exactly one of `exact`,
/// `prefix`, `regex` (whole path), `separated_prefix` (the path is it or starts with it and
/// `/`, Envoy's `path_separated_prefix`). `ignore_case` applies to all but `regex`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separated_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

/// A query parameter by name: exactly one of `exact`, `prefix`, `regex`, `present` (its first
/// value, as sent: not percent-decoded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryMatch {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
}

/// A request header by (lower-case) name: exactly one of `exact`, `prefix`, `regex`, `present`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
    /// The condition's opposite (Envoy's `invert_match`): a request without the header still
    /// fails an `exact`/`prefix`/`regex` condition unless `treat_missing_as_empty`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
    /// A missing header is matched as the empty value (Envoy's `treat_missing_header_as_empty`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub treat_missing_as_empty: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Dubbo,
    /// Dubbo3 Triple and gRPC over HTTP/2 (prior-knowledge h2c).
    Triple,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DubboListener {
    #[serde(default = "default_frame_bytes_max")]
    pub frame_bytes_max: usize,
    #[serde(default = "default_pending_per_connection")]
    pub pending_requests_per_connection_max: u32,
    /// Answers queued for one consumer connection before ringside stops reading its requests.
    #[serde(default = "default_output_bytes_max")]
    pub output_bytes_max: usize,
    /// How long the output queue may stay over `output_bytes_max` before the connection is
    /// closed.
    #[serde(default = "default_output_stall_timeout_ms")]
    pub output_stall_timeout_ms: u64,
    /// A new connection must send its first whole frame within this.
    #[serde(default = "default_first_frame_timeout_ms")]
    pub first_frame_timeout_ms: u64,
    /// A consumer that sends nothing, not even a heartbeat, for this long is closed.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
    /// Tried in order; the first match wins. When none matches, the listener's `cluster` (if
    /// set) is the default route; otherwise the caller gets status 60.
    #[serde(default)]
    pub routes: Vec<DubboRoute>,
    /// Request authorization (rbac filters in order, as Aeraki's `envoy.filters.dubbo.rbac`):
    /// a request one of them denies is answered status 40 "ringside: RBAC: access denied"
    /// (docs/security.md#authorization).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rbac: Vec<Rbac>,
    /// Traffic labels (Apache Dubbo's tag routing): a request's `dubbo.tag` attachment (by
    /// default) sends it to the endpoints tagged with it; docs/governance.md#traffic-labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_label: Option<TrafficLabel>,
}

/// Longest traffic label (an endpoint's `tag`) and label key accepted.
pub const TAG_BYTES_MAX: usize = 128;

/// Where a listener reads a call's traffic label (Apache Dubbo's tag routing): the label
/// selects the endpoints whose `tag` equals it, else (none carries it, and the call does not
/// force it) the untagged ones; a call without a label goes to the untagged endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficLabel {
    /// The Dubbo attachment (default `dubbo.tag`) or Triple header (default `dubbo-tag`)
    /// holding the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The attachment (default `dubbo.force.tag`) or header (default `dubbo-force-tag`) that,
    /// `true`, forbids the fall-back to untagged endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_key: Option<String>,
}

impl TrafficLabel {
    pub const DUBBO_KEY: &'static str = "dubbo.tag";
    pub const DUBBO_FORCE_KEY: &'static str = "dubbo.force.tag";
    pub const TRIPLE_KEY: &'static str = "dubbo-tag";
    pub const TRIPLE_FORCE_KEY: &'static str = "dubbo-force-tag";

    /// (key, force key) of a Dubbo listener.
    pub fn dubbo_keys(&self) -> (&str, &str) {
        (
            self.key.as_deref().unwrap_or(Self::DUBBO_KEY),
            self.force_key.as_deref().unwrap_or(Self::DUBBO_FORCE_KEY),
        )
    }

    /// (key, force key) of a Triple listener.
    pub fn triple_keys(&self) -> (&str, &str) {
        (
            self.key.as_deref().unwrap_or(Self::TRIPLE_KEY),
            self.force_key.as_deref().unwrap_or(Self::TRIPLE_FORCE_KEY),
        )
    }

    fn validate(
        &self,
        header: bool,
        at: &dyn Fn(&str) -> String,
        err: &mut dyn FnMut(String, String),
    ) {
        for (field, v) in [("key", &self.key), ("force_key", &self.force_key)] {
            let Some(v) = v else { continue };
            let bad = if v.is_empty() || v.len() > TAG_BYTES_MAX {
                Some(format!("must be 1..={TAG_BYTES_MAX} bytes"))
            } else if header
                && !v
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            {
                Some("a header name: lowercase letters, digits, '-', '_', '.'".into())
            } else {
                None
            };
            if let Some(m) = bad {
                err(at(&format!("traffic_label.{field}")), format!("{v:?}: {m}"));
            }
        }
    }
}

impl Default for DubboListener {
    fn default() -> Self {
        DubboListener {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            pending_requests_per_connection_max: PENDING_REQUESTS_PER_CONNECTION_MAX_DEFAULT,
            output_bytes_max: OUTPUT_BYTES_MAX_DEFAULT,
            output_stall_timeout_ms: OUTPUT_STALL_TIMEOUT_MS_DEFAULT,
            first_frame_timeout_ms: FIRST_FRAME_TIMEOUT_MS_DEFAULT,
            heartbeat_timeout_ms: HEARTBEAT_TIMEOUT_MS_DEFAULT,
            routes: Vec::new(),
            rbac: Vec::new(),
            traffic_label: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DubboRoute {
    /// Optional name, used in stats and logs.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: DubboMatch,
    pub route: RouteAction,
    /// One token per request this route takes; replaces the listener's `local_rate_limit` for
    /// them (as Envoy's per-route `typed_per_filter_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<TokenBucket>,
    /// At most this many of the route's two-way calls in flight (Sentinel's thread-count flow
    /// control); one more is answered 100 at once. Per shard `ceil(max / shards)`
    /// (docs/governance.md#concurrency-limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
}

/// Most `max_concurrent_requests` of a route.
pub const ROUTE_CONCURRENT_REQUESTS_MAX: u32 = 1_000_000;

/// Every condition given must hold; an empty match matches every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DubboMatch {
    #[serde(default)]
    pub interface: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// Service version (the request's version field).
    #[serde(default)]
    pub version: Option<String>,
    /// Attachment `group`.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub arguments: Vec<ArgumentMatch>,
    #[serde(default)]
    pub attachments: Vec<AttachmentMatch>,
}

/// Exactly one of `exact`, `prefix`, `regex` (a full match, as Envoy's `safe_regex`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// A scalar argument by index: exactly one of `exact` (string, int, long or bool compared as
/// text), `prefix` (strings) or `range` (ints and longs, `start` inclusive, `end` exclusive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgumentMatch {
    pub index: u32,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub range: Option<Range>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub start: i64,
    pub end: i64,
}

/// An attachment by name: exactly one of `exact`, `regex` or `present`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentMatch {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
}

/// Exactly one of `cluster` or `weighted_clusters`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub weighted_clusters: Vec<WeightedCluster>,
    /// Overrides the cluster's `timeout_ms`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Retries of the route's requests (docs/governance.md#retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// Fault injection on the route's requests (docs/governance.md#fault-injection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Copies of a share of the route's requests to shadow clusters, their answers discarded
    /// (Envoy's `request_mirror_policies`; docs/governance.md#mirroring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_mirror_policies: Vec<MirrorPolicy>,
    /// The path and `:authority` the route's requests go upstream with (Triple routes; Envoy's
    /// `prefix_rewrite`, `regex_rewrite`, `host_rewrite_*`), applied once routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// The route answers its requests itself (Envoy's `redirect`, `direct_response`; Triple
    /// routes): no `cluster`, `weighted_clusters` or other action field then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<DirectAction>,
    /// What a request's hash is made of, for clusters with `lb: ring_hash` or `maglev`
    /// (Triple routes; Envoy's `hash_policy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<HashPolicy>,
}

/// A route's own answer: `status` (HTTP; a gRPC caller gets Envoy's mapping of it in a
/// trailers-only answer), a text `body`, and for a `redirect` (or a 201 / 3xx) a `location`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectAction {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
}

/// Envoy's `RedirectAction`: each part of the request's URL replaced where given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The whole path (its query, if it has one, replaces the request's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// As a route's `rewrite.prefix` / `rewrite.regex`, on the redirect's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexRewrite>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_query: bool,
}

/// A Triple route's rewrites, as Envoy's route action does them: first `:authority` (a weighted
/// cluster's `host_rewrite`, then one of `host`, `host_header`, `host_path_regex`, from the path
/// as it came), then the path (one of `prefix`, `regex`). With a path rewrite the request
/// carries its path as it came in `x-envoy-original-path` (unless the listener has
/// `suppress_envoy_headers`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the part of the path the route's `match.path` matched (`prefix`, `exact`,
    /// `separated_prefix`; with a `regex` or no path condition: the whole path), the query kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Every match of `pattern` in the path (without its query) replaced by `substitution`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegexRewrite>,
    /// `:authority` := this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `:authority` := the value of this request header, when present and not empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    /// `:authority` := the path (without its query) rewritten by this, when not empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path_regex: Option<RegexRewrite>,
    /// The `:authority` a host rewrite replaced is appended to `x-forwarded-host`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub append_x_forwarded_host: bool,
}

/// A regex rewrite: RE2 syntax; in `substitution`, `\N` is capture group N and `\\` a
/// backslash (Envoy's `RegexMatchAndSubstitute`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: String,
    #[serde(default)]
    pub substitution: String,
}

impl RegexRewrite {
    /// `substitution` in the `regex` crate's replacement syntax (`${N}`, `$$`); an error for a
    /// backslash not followed by a digit or a backslash, or a group `pattern` does not have
    /// (`groups`: its capture groups, without the whole match).
    pub fn replacement(&self, groups: usize) -> Result<String, String> {
        let mut out = String::with_capacity(self.substitution.len() + 8);
        let mut chars = self.substitution.chars();
        while let Some(c) = chars.next() {
            match c {
                '$' => out.push_str("$$"),
                '\\' => match chars.next() {
                    Some('\\') => out.push('\\'),
                    Some(d @ '0'..='9') => {
                        let n = d as usize - '0' as usize;
                        if n > groups {
                            return Err(format!(
                                "substitution uses group \\{n}, the pattern has {groups}"
                            ));
                        }
                        out.push_str(&format!("${{{n}}}"));
                    }
                    _ => {
                        return Err("a backslash must be followed by a digit or a backslash".into())
                    }
                },
                c => out.push(c),
            }
        }
        Ok(out)
    }
}

/// Most `request_mirror_policies` of one route.
pub const MIRROR_POLICIES_MAX: usize = 4;

/// One shadow cluster of a route: `percentage` of its requests are copied there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorPolicy {
    pub cluster: String,
    /// Share of the route's requests copied (Envoy's `runtime_fraction`); default 100.
    #[serde(default = "share_all")]
    pub percentage: Share,
}

fn share_all() -> Share {
    Share(Share::PER_MILLION)
}

/// Longest `fault.delay.fixed_delay_ms`.
pub const FAULT_DELAY_MS_MAX: u64 = 3_600_000;

/// A share of requests, in parts per million; written as a percentage (`25`, `0.5`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Share(pub u32);

impl Share {
    pub const PER_MILLION: u32 = 1_000_000;
}

impl Serialize for Share {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(f64::from(self.0) / 10_000.0)
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=100.0).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "percentage {v} is out of range 0..=100"
            )));
        }
        Ok(Share((v * 10_000.0).round() as u32))
    }
}

/// A route's fault injection (Envoy's HTTP `fault` filter): a delay before the request is
/// forwarded, and/or an answer instead of forwarding it, each for a share of requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Faults in progress at most (per shard); beyond it requests pass unharmed
    /// (`fault.faults_overflow`). Default: no limit but the connections' own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_faults: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed_delay_ms: u64,
    pub percentage: Share,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// The answer: a gRPC status (Triple) or a Dubbo response status (Dubbo).
    pub status: u32,
    pub percentage: Share,
    /// The HTTP status an HTTP/1.1 request on a triple listener is answered with (from xDS:
    /// `abort.http_status`); unset: 200, as Envoy answers a gRPC-status abort to a request
    /// that is not gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
}

/// Most retries a route may ask for (`retry_policy.num_retries`).
pub const RETRIES_MAX: u32 = 10;
/// Most `retry_policy.retriable_status_codes`.
pub const RETRIABLE_STATUS_CODES_MAX: usize = 8;
/// Envoy's default `circuit_breakers` `max_retries`: retries in flight to a cluster.
pub const MAX_RETRIES_DEFAULT: u32 = 3;
/// Envoy's default `circuit_breakers` `max_requests`.
pub const MAX_REQUESTS_DEFAULT: u32 = 1024;

/// When a route's request is sent again (Envoy's `retry_on` values; docs/governance.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection to the endpoint could not be made.
    ConnectFailure,
    /// The endpoint refused the stream unprocessed (Triple: REFUSED_STREAM, GOAWAY above it).
    RefusedStream,
    /// No answer: the stream was reset, the connection was lost with the request in flight,
    /// or `per_try_timeout_ms` passed.
    Reset,
    /// A response status in `retriable_status_codes` (Dubbo: the response status; Triple: the
    /// HTTP `:status` of a response without body).
    RetriableStatusCodes,
    /// Triple: a trailers-only answer with this gRPC status.
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
    /// HTTP: any 5xx response, and everything `reset` and `connect-failure` cover (Envoy's
    /// `5xx`).
    #[serde(rename = "5xx")]
    FiveXx,
    /// HTTP: a 502, 503 or 504 response, and everything `reset` and `connect-failure` cover
    /// (Envoy's `gateway-error`).
    GatewayError,
}

impl RetryOn {
    /// Whether it applies to Dubbo routes (the gRPC statuses and HTTP classes do not).
    pub fn dubbo(self) -> bool {
        matches!(
            self,
            RetryOn::ConnectFailure | RetryOn::Reset | RetryOn::RetriableStatusCodes
        )
    }
}

/// A route's `retry_policy` (Envoy's `RouteAction.retry_policy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub retry_on: Vec<RetryOn>,
    /// Retries after the first try (Envoy's default 1), at most `RETRIES_MAX`.
    #[serde(default = "default_num_retries")]
    pub num_retries: u32,
    /// Each try's own deadline (within the request's); one that passes is a `reset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Statuses retried under `retriable-status-codes` (Dubbo: e.g. 80, 100; Triple: HTTP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u32>,
    /// Each retry goes to an endpoint not tried yet for this request, while the cluster has
    /// one available (Envoy's `previous_hosts` retry host predicate).
    #[serde(default = "default_true")]
    pub previous_hosts: bool,
    /// With `previous_hosts`: how many times more a retry's endpoint is drawn again (its
    /// priority level from the cluster's priority load, then an endpoint in it) when the
    /// draw falls on a level whose endpoints were all tried, before a tried one is taken
    /// (Envoy's `host_selection_retry_max_attempts`, default 1; istiod sets 5).
    #[serde(
        default = "default_host_selection_retry_max_attempts",
        skip_serializing_if = "is_default_host_selection_retry_max_attempts"
    )]
    pub host_selection_retry_max_attempts: u32,
    /// Envoy's `previous_priorities` retry priority, its `update_frequency` (1..=10): once
    /// that many tries went out, each retry's priority load leaves out the priority levels the
    /// tries went to (decided again every `update_frequency` tries); none: every try draws
    /// from the cluster's own load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_priorities: Option<u32>,
    /// Envoy's `retry_back_off`: the wait before each retry, jittered exponential (Envoy's
    /// default, 25 ms base and 10x that at most, when left out). Triple and HTTP/1.1 routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_back_off: Option<RetryBackOff>,
}

/// Envoy's `RetryPolicy.retry_back_off`: retry k waits a random time in
/// `[0, min(base_interval × 2^(k-1), max_interval))` (Envoy's
/// `JitteredExponentialBackOffStrategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOff {
    /// 1..=3600000.
    pub base_interval_ms: u64,
    /// At least `base_interval_ms`; default 10 × `base_interval_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval_ms: Option<u64>,
}

/// Envoy's default `retry_back_off.base_interval` (`upstream.base_retry_backoff_ms`).
pub const RETRY_BACK_OFF_BASE_MS_DEFAULT: u64 = 25;

fn default_num_retries() -> u32 {
    1
}

fn default_host_selection_retry_max_attempts() -> u32 {
    1
}

fn is_default_host_selection_retry_max_attempts(n: &u32) -> bool {
    *n == 1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
    /// `:authority` of the requests sent to this cluster (Envoy's `host_rewrite_literal`; a
    /// route's own host rewrite, when it gives one, wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// Header mutations of the requests sent to this cluster and their responses (Triple
    /// routes only; evaluated before the route's, as Envoy's `ClusterWeight` ones).
    #[serde(default, skip_serializing_if = "HeaderMutations::is_empty")]
    pub headers: HeaderMutations,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// `static` (the default): the endpoints below. `original_destination`: no endpoints; each
    /// connection goes to its own original destination (listeners with
    /// `original_destination: true` only).
    #[serde(default, rename = "type")]
    pub kind: ClusterType,
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// Metadata of `endpoints`, index for index; empty when none has any (static clusters
    /// usually). The registry fills it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_metadata: Vec<EndpointMetadata>,
    /// `type: zookeeper`: which providers of the registry are this cluster's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySelector>,
    #[serde(default)]
    pub lb: LbPolicy,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Source addresses of upstream connections (Envoy's `upstream_bind_config`: Istio's
    /// 127.0.0.6, which its iptables rules let pass): a connection binds the one of its
    /// destination's family, port chosen by the kernel. At most one per family.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_addresses: Vec<IpAddr>,
    /// Dubbo: how long a request may wait for its response.
    #[serde(default = "default_request_timeout_ms")]
    pub timeout_ms: u64,
    /// Dubbo: multiplexed upstream connections per endpoint per shard.
    #[serde(default = "default_connections_per_host")]
    pub connections_per_host: u32,
    /// Dubbo: requests queued or in flight per endpoint per shard; beyond it callers get
    /// status 100.
    #[serde(default = "default_pending_per_host")]
    pub pending_requests_max: u32,
    /// Dubbo: heartbeat idle upstream connections this often; close after 3 missed.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Dubbo: largest response accepted from a provider; a larger one is skipped (the
    /// connection stays up) and only its caller gets status 80.
    #[serde(default = "default_response_bytes_max")]
    pub response_bytes_max: usize,
    /// Dubbo and Triple: close an upstream connection that has had no request (Triple: no
    /// stream) for this long (Envoy's upstream `idle_timeout`, 1 h).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Triple: an upstream connection with streams that has read nothing for this long is sent
    /// an HTTP/2 PING; no answer within `keepalive_timeout_ms` closes it and fails its calls
    /// UNAVAILABLE. 5 minutes: gRPC servers enforce a 5-minute minimum between PINGs.
    #[serde(default = "default_keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// TCP keepalive of this cluster's upstream connections; default `runtime.tcp_keepalive`
    /// (xDS: the cluster's `upstream_connection_options.tcp_keepalive`).
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// TLS to the endpoints: see [`ClusterTls`]. With `transport_socket_matches`, what an
    /// endpoint none of them matches gets (none: plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// TLS or plaintext per endpoint (Envoy's `transport_socket_matches`: Istio's auto mTLS):
    /// the first entry whose `match` an endpoint's `transport_socket_match` metadata contains
    /// decides; an endpoint no entry matches gets `tls`. See [`Cluster::transport_socket`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transport_socket_matches: Vec<TransportSocketMatch>,
    /// The protocol HTTP/1.1 requests (`triple.http1`) are forwarded with (Envoy's
    /// `HttpProtocolOptions` of `typed_extension_protocol_options`): `downstream` (the
    /// default; Envoy's `use_downstream_protocol_config`) and `http1` forward them as HTTP/1.1,
    /// `http2` as HTTP/2 (h2c, or h2 over the endpoint's TLS), `auto` as HTTP/2 where TLS
    /// settles on ALPN `h2` and HTTP/1.1 elsewhere. Triple (HTTP/2) calls go as HTTP/2
    /// whatever it says. See docs/decisions/0010-http1.md.
    #[serde(default, skip_serializing_if = "UpstreamHttp::is_default")]
    pub upstream_http: UpstreamHttp,
    /// The HTTP/2 connections of HTTP/1.1 requests (`upstream_http`): at most this many
    /// streams at once on one, besides the upstream's SETTINGS_MAX_CONCURRENT_STREAMS (Envoy's
    /// `http2_protocol_options.max_concurrent_streams`); 0: no limit of ringside's.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub http2_streams_max: u32,
    /// The HTTP/2 connections of HTTP/1.1 requests: at most this many requests each, then
    /// closed once they are done (Envoy's `common_http_protocol_options.
    /// max_requests_per_connection`); 0: no limit.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub requests_per_connection_max: u32,
    /// The stream window ringside gives the upstream on this cluster's HTTP/2 connections
    /// (SETTINGS_INITIAL_WINDOW_SIZE; Envoy's `http2_protocol_options.
    /// initial_stream_window_size`, 65535 ..= 2147483647): the most of one response that
    /// waits in ringside for a caller that reads slower than its upstream writes. Unset: the
    /// listener's `stream_window_bytes` for gRPC calls, 65535 for HTTP/1.1 requests (xDS:
    /// Envoy's default, 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_stream_window_bytes: Option<u32>,
    /// The connection window of the same (Envoy's `initial_connection_window_size`): the
    /// most all the streams of one connection together make ringside hold. Unset: the
    /// listener's `connection_window_bytes` for gRPC calls, 1 MiB for HTTP/1.1 requests (xDS:
    /// Envoy's default, 24 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_connection_window_bytes: Option<u32>,
    /// HTTP/2 PING keepalive as Envoy's `http2_protocol_options.connection_keepalive`: on
    /// every HTTP/2 connection of the cluster a PING every `interval_ms` (plus a random
    /// `jitter_percent` of it at most), idle or not; a connection that then receives nothing
    /// within `timeout_ms` is closed and its requests fail as a `connection termination`
    /// reset. Replaces `keepalive_interval_ms` / `keepalive_timeout_ms` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keepalive: Option<Http2Keepalive>,
    /// HTTP/2 connections of the cluster (gRPC calls and HTTP/1.1 requests) take no new
    /// request once this old and close when their requests are done (Envoy's
    /// `common_http_protocol_options.max_connection_duration`); 0: no limit.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub max_connection_duration_ms: u64,
    /// A listener's `alpn_override` (Istio's `istio.alpn`) leaves this cluster's TLS ALPN as
    /// given (xDS: the cluster's `metadata.filter_metadata.istio.alpn_override: "false"`, which
    /// istiod sets for a DestinationRule's own TLS).
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_alpn: bool,
    /// Envoy's `circuit_breakers` (default priority): limits on the whole cluster; see
    /// docs/governance.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// Envoy's `outlier_detection` (consecutive errors): an endpoint that fails this many
    /// requests in a row is ejected for a while; see docs/governance.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Envoy's priority load (xDS only: computed from EDS health and the overprovisioning
    /// factor, docs/governance.md#locality): the percentage of requests each priority level
    /// present in `endpoint_metadata` takes, lowest priority number first, summing to 100.
    /// Empty: the first level takes every request while it has an endpoint available (strict
    /// failover; what a YAML cluster always has).
    #[serde(skip)]
    pub priority_load: Vec<u32>,
    /// (healthy, all) endpoints of each priority level present in `endpoint_metadata` as EDS
    /// counts them (xDS only; empty for YAML clusters, whose endpoints all count as healthy,
    /// and with `locality_weighted`): what a shard recomputes the priority load from when it
    /// ejects endpoints (outlier detection, docs/governance.md#locality).
    #[serde(skip)]
    pub priority_hosts: Vec<(u32, u32)>,
    /// EDS `policy.overprovisioning_factor` in percent (0: Envoy's default, 140).
    #[serde(skip)]
    pub overprovisioning: u32,
    /// Envoy's locality-weighted balancing (xDS only: CDS
    /// `common_lb_config.locality_weighted_lb_config`, docs/governance.md#locality): the
    /// endpoints of each priority level are grouped by EDS locality
    /// ([`EndpointMetadata::locality`]) and `priority_load` has one entry per (priority,
    /// locality) group instead of one per priority.
    #[serde(skip)]
    pub locality_weighted: bool,
    /// Envoy's `common_lb_config.zone_aware_lb_config`: how this cluster's requests prefer
    /// the endpoints of the caller's locality when there is a local cluster
    /// (`cluster_manager`, docs/governance.md#zone-aware-routing).
    #[serde(default, skip_serializing_if = "ZoneAware::is_default")]
    pub zone_aware: ZoneAware,
}

/// Envoy's `ZoneAwareLbConfig` (docs/governance.md#zone-aware-routing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneAware {
    /// Percentage of requests considered for zone-aware routing (Envoy: `routing_enabled`,
    /// default 100).
    #[serde(default = "default_routing_enabled")]
    pub routing_enabled: u32,
    /// Fewer healthy priority-0 endpoints than this: no zone-aware routing (default 6).
    #[serde(default = "default_min_cluster_size")]
    pub min_cluster_size: u64,
    /// While the local cluster is in panic (under 50 % healthy), fail requests instead of
    /// balancing over every locality.
    #[serde(default)]
    pub fail_traffic_on_panic: bool,
    /// Envoy's `force_local_zone.min_size` (extension config only): with at least this many
    /// healthy endpoints in the local locality, every request goes there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_local_zone_min_size: Option<u32>,
}

fn default_routing_enabled() -> u32 {
    100
}

fn default_min_cluster_size() -> u64 {
    6
}

impl Default for ZoneAware {
    fn default() -> Self {
        ZoneAware {
            routing_enabled: 100,
            min_cluster_size: 6,
            fail_traffic_on_panic: false,
            force_local_zone_min_size: None,
        }
    }
}

impl ZoneAware {
    pub fn is_default(&self) -> bool {
        *self == ZoneAware::default()
    }
}

/// Most `transport_socket_matches` of one cluster (istiod sends two).
pub const TRANSPORT_SOCKET_MATCHES_MAX: usize = 16;

/// One of a cluster's `transport_socket_matches`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSocketMatch {
    pub name: String,
    /// Labels an endpoint's `transport_socket_match` metadata must all carry, with these
    /// values (empty: every endpoint; Istio: `{tlsMode: istio}`).
    #[serde(default, rename = "match", skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// TLS to the endpoints it matches; none: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
}

impl Cluster {
    /// The transport socket of endpoint `i` (index into `endpoints`): 0 for the cluster's
    /// `tls`, `k` for `transport_socket_matches[k - 1]`.
    pub fn transport_socket(&self, i: usize) -> usize {
        if self.transport_socket_matches.is_empty() {
            return 0;
        }
        let labels = self
            .endpoint_metadata
            .get(i)
            .map(|m| &m.transport_socket_match);
        self.transport_socket_matches
            .iter()
            .position(|m| {
                m.labels
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .map_or(0, |k| k + 1)
    }

    /// The cluster's TLS settings, by transport socket index (see [`Cluster::transport_socket`]).
    pub fn transport_sockets(&self) -> impl Iterator<Item = Option<&ClusterTls>> {
        std::iter::once(self.tls.as_ref())
            .chain(self.transport_socket_matches.iter().map(|m| m.tls.as_ref()))
    }

    /// Whether any endpoint may get TLS.
    pub fn has_tls(&self) -> bool {
        self.transport_sockets().any(|t| t.is_some())
    }
}

/// Consecutive-error ejection (Envoy's `outlier_detection` `consecutive_5xx`), with Envoy's
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Failed requests in a row (Dubbo status 31, 80 or 100, local timeouts, connection
    /// failures) that eject an endpoint; 0: no consecutive-error ejection (Envoy's
    /// `enforcing_consecutive_5xx: 0`).
    #[serde(default = "default_consecutive_errors")]
    pub consecutive_errors: u32,
    /// Envoy's failure-percentage ejection, checked each `interval_ms`: none when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentage>,
    /// Envoy's success-rate ejection, checked each `interval_ms`: none when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    /// An endpoint's n-th ejection lasts `n × base_ejection_time_ms`, at most
    /// `max_ejection_time_ms`.
    #[serde(default = "default_base_ejection_time_ms")]
    pub base_ejection_time_ms: u64,
    #[serde(default = "default_max_ejection_time_ms")]
    pub max_ejection_time_ms: u64,
    /// Each `interval_ms` an endpoint spends not ejected takes one off its ejection count.
    #[serde(default = "default_outlier_interval_ms")]
    pub interval_ms: u64,
    /// At most this share of the cluster's endpoints ejected at once (at least one may be).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_errors: default_consecutive_errors(),
            failure_percentage: None,
            success_rate: None,
            base_ejection_time_ms: default_base_ejection_time_ms(),
            max_ejection_time_ms: default_max_ejection_time_ms(),
            interval_ms: default_outlier_interval_ms(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_consecutive_errors() -> u32 {
    5
}
fn default_base_ejection_time_ms() -> u64 {
    30_000
}
fn default_max_ejection_time_ms() -> u64 {
    300_000
}
fn default_outlier_interval_ms() -> u64 {
    10_000
}
fn default_max_ejection_percent() -> u32 {
    10
}

/// Failure-percentage ejection (Envoy's `failure_percentage_*`, its defaults): each interval,
/// when at least `minimum_hosts` endpoints had `request_volume` requests or more in it, each
/// of those whose share of failed requests is `threshold` % or more is ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailurePercentage {
    #[serde(default = "default_failure_percentage_threshold")]
    pub threshold: u32,
    #[serde(default = "default_outlier_minimum_hosts")]
    pub minimum_hosts: u32,
    #[serde(default = "default_failure_percentage_request_volume")]
    pub request_volume: u32,
}

impl Default for FailurePercentage {
    fn default() -> Self {
        FailurePercentage {
            threshold: default_failure_percentage_threshold(),
            minimum_hosts: default_outlier_minimum_hosts(),
            request_volume: default_failure_percentage_request_volume(),
        }
    }
}

/// Success-rate ejection (Envoy's `success_rate_*`, its defaults): each interval, when at
/// least `minimum_hosts` endpoints had `request_volume` requests or more in it, each of those
/// whose success rate is below `mean - stdev_factor / 1000 × stdev` of theirs is ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessRate {
    #[serde(default = "default_success_rate_stdev_factor")]
    pub stdev_factor: u32,
    #[serde(default = "default_outlier_minimum_hosts")]
    pub minimum_hosts: u32,
    #[serde(default = "default_success_rate_request_volume")]
    pub request_volume: u32,
}

impl Default for SuccessRate {
    fn default() -> Self {
        SuccessRate {
            stdev_factor: default_success_rate_stdev_factor(),
            minimum_hosts: default_outlier_minimum_hosts(),
            request_volume: default_success_rate_request_volume(),
        }
    }
}

fn default_failure_percentage_threshold() -> u32 {
    85
}
fn default_outlier_minimum_hosts() -> u32 {
    5
}
fn default_failure_percentage_request_volume() -> u32 {
    50
}
fn default_success_rate_stdev_factor() -> u32 {
    1900
}
fn default_success_rate_request_volume() -> u32 {
    100
}

/// A cluster's circuit breakers (Envoy's `circuit_breakers.thresholds`, default priority).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Requests in flight to the cluster (Dubbo requests, Triple streams), all endpoints
    /// together; beyond it requests are answered locally (Dubbo status 100, gRPC UNAVAILABLE).
    /// Enforced per shard as `ceil(max_requests / shards)`.
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
    /// Retries in flight to the cluster (Envoy's default 3 also applies to a cluster without
    /// `circuit_breakers`); a retry beyond it is not made. Per shard as `max_requests`.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Upstream connections to the cluster, all endpoints together (per shard as
    /// `max_requests`); beyond it no new connection is opened (`upstream_cx_overflow`), except
    /// an endpoint's first.
    #[serde(default = "default_max_requests")]
    pub max_connections: u32,
    /// Requests waiting for an upstream connection with room (Triple: every connection at the
    /// upstream's stream limit and no new one allowed; Dubbo: queued on a connection still
    /// connecting); beyond it requests are answered locally as for `max_requests`
    /// (`upstream_rq_pending_overflow`). Per shard as `max_requests`.
    #[serde(default = "default_max_requests")]
    pub max_pending_requests: u32,
    /// Envoy's `retry_budget`: when set, it replaces `max_retries`: the retries in flight may
    /// be `budget_percent` of the requests active and pending, at least `min_retry_concurrency`
    /// (per shard: docs/governance.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Envoy's `circuit_breakers.thresholds[].retry_budget`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Percent (0 to 100) of the cluster's active and pending requests that may be retries
    /// in flight (Envoy's default 20).
    #[serde(default = "default_budget_percent")]
    pub budget_percent: Percent,
    /// Retries in flight allowed whatever the load (Envoy's default 3).
    #[serde(default = "default_min_retry_concurrency")]
    pub min_retry_concurrency: u32,
}

/// Envoy's default `retry_budget.budget_percent`.
pub const RETRY_BUDGET_PERCENT_DEFAULT: f64 = 20.0;
/// Envoy's default `retry_budget.min_retry_concurrency`.
pub const MIN_RETRY_CONCURRENCY_DEFAULT: u32 = 3;

fn default_budget_percent() -> Percent {
    Percent(RETRY_BUDGET_PERCENT_DEFAULT)
}
fn default_min_retry_concurrency() -> u32 {
    MIN_RETRY_CONCURRENCY_DEFAULT
}

fn default_max_requests() -> u32 {
    MAX_REQUESTS_DEFAULT
}
fn default_max_retries() -> u32 {
    MAX_RETRIES_DEFAULT
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterType {
    #[default]
    Static,
    /// The upstream is the connection's original destination (interception).
    OriginalDestination,
    /// The providers of one interface in the `registry` (ZooKeeper), selected by `registry`.
    Zookeeper,
}

/// The providers a `type: zookeeper` cluster takes: those of `interface` whose version and
/// group equal the ones given (a field left out matches any provider), enabled and with a
/// weight above 0. Two clusters on one interface with different versions are two subsets that
/// routes choose between.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySelector {
    pub interface: String,
    /// The provider URL's scheme: `dubbo` (Dubbo2, the default) or `tri` (Triple).
    #[serde(default = "default_registry_protocol")]
    pub protocol: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

impl RegistrySelector {
    /// Whether a provider with this metadata belongs to the cluster (`enabled` and `weight`
    /// are the registry's business: it never lists disabled or zero-weight providers).
    pub fn selects(&self, m: &EndpointMetadata) -> bool {
        self.version.as_ref().is_none_or(|v| *v == m.version)
            && self.group.as_ref().is_none_or(|g| *g == m.group)
    }
}

/// What a registry says about one endpoint (Dubbo provider URL parameters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointMetadata {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Relative share of requests (round robin visits an endpoint `weight / gcd` times per
    /// cycle); Dubbo's default is 100.
    #[serde(default = "default_weight", skip_serializing_if = "is_default_weight")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub application: String,
    /// Failover tier (Envoy's EDS `priority`): requests go to the endpoints of the lowest
    /// priority that has one available; 0, the default, is the first tier.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub priority: u32,
    /// Comma-separated method names, as the provider URL gives them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub methods: String,
    /// Envoy's `envoy.transport_socket_match` metadata (Istio: `{tlsMode: istio}` on pods
    /// with a sidecar): chooses among the cluster's `transport_socket_matches`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub transport_socket_match: BTreeMap<String, String>,
    /// Traffic label (Apache Dubbo's `dubbo.tag` provider parameter; EDS: the
    /// `filter_metadata["envoy.lb"]["dubbo.tag"]` string): calls labelled with it go here
    /// (docs/governance.md#traffic-labels). Empty: untagged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// The EDS locality the endpoint is in (xDS only: the index of its `LocalityLbEndpoints`
    /// in the assignment; 0 unless the cluster is [`Cluster::locality_weighted`]).
    #[serde(skip)]
    pub locality: u32,
    /// The endpoint's locality by name (EDS: its `LocalityLbEndpoints`' `locality`): what
    /// zone-aware routing groups endpoints by (docs/governance.md#zone-aware-routing).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_zone: String,
}

impl EndpointMetadata {
    /// The endpoint's locality (region, zone, sub-zone).
    pub fn locality_name(&self) -> Locality {
        Locality {
            region: self.region.clone(),
            zone: self.zone.clone(),
            sub_zone: self.sub_zone.clone(),
        }
    }
}

impl Default for EndpointMetadata {
    fn default() -> Self {
        EndpointMetadata {
            version: String::new(),
            group: String::new(),
            weight: ENDPOINT_WEIGHT_DEFAULT,
            application: String::new(),
            priority: 0,
            methods: String::new(),
            transport_socket_match: BTreeMap::new(),
            tag: String::new(),
            locality: 0,
            region: String::new(),
            zone: String::new(),
            sub_zone: String::new(),
        }
    }
}

/// A cluster's upstream HTTP protocol for HTTP/1.1 requests ([`Cluster::upstream_http`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamHttp {
    /// The request's own protocol (Envoy's `use_downstream_protocol_config`).
    #[default]
    Downstream,
    /// HTTP/1.1 (Envoy's default, and `explicit_http_config.http_protocol_options`).
    Http1,
    /// HTTP/2 (`explicit_http_config.http2_protocol_options`).
    Http2,
    /// HTTP/2 when the endpoint's TLS settles on ALPN `h2`, else HTTP/1.1 (`auto_config`).
    Auto,
}

impl UpstreamHttp {
    pub fn is_default(&self) -> bool {
        *self == UpstreamHttp::Downstream
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    /// Fewest active connections (tcp) or requests in flight (dubbo) on this shard.
    LeastRequest,
    /// A uniformly random entry of the level's visit order (a per-shard xorshift), the first
    /// ready one from there (Envoy's `RANDOM`).
    Random,
    /// Envoy's `RING_HASH` (`ring_hash_lb.cc`): each priority level's endpoints on a ring of
    /// xxHash64 points (`ADDRESS_i`, by weight, `minimum_ring_size` to `maximum_ring_size`
    /// points); a request goes to the first point at or after its hash (its route's
    /// `hash_policy`; none, or no value: a random one). Rebuilt per shard when the endpoints
    /// or the shard's outlier ejections change (docs/governance.md#consistent-hashing).
    RingHash {
        #[serde(default = "default_min_ring_size")]
        minimum_ring_size: u64,
        #[serde(default = "default_max_ring_size")]
        maximum_ring_size: u64,
    },
    /// Envoy's `MAGLEV` (`maglev_lb.cc`): each priority level's endpoints in a lookup table of
    /// `table_size` entries (a prime, default 65537), a request going to entry `hash % size`.
    Maglev {
        #[serde(default = "default_maglev_table_size")]
        table_size: u64,
    },
}

impl LbPolicy {
    /// `RING_HASH` or `MAGLEV`: the route's `hash_policy` picks the endpoint.
    pub fn is_hashed(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

/// Envoy's `minimum_ring_size` default, and the most either ring size may be (its proto's
/// bound).
pub const MIN_RING_SIZE_DEFAULT: u64 = 1024;
pub const MAX_RING_SIZE_DEFAULT: u64 = 8 * 1024 * 1024;
/// Envoy's Maglev `table_size` default, and its bound.
pub const MAGLEV_TABLE_SIZE_DEFAULT: u64 = 65537;
pub const MAGLEV_TABLE_SIZE_MAX: u64 = 5_000_011;

fn default_min_ring_size() -> u64 {
    MIN_RING_SIZE_DEFAULT
}
fn default_max_ring_size() -> u64 {
    MAX_RING_SIZE_DEFAULT
}
fn default_maglev_table_size() -> u64 {
    MAGLEV_TABLE_SIZE_DEFAULT
}

/// Whether `n` is prime (Maglev's table size must be, as Envoy checks).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// One of a route's `hash_policy` entries (Envoy's `RouteAction.HashPolicy`): exactly one of
/// `header`, `source_ip`, `query_parameter`, `cookie`. The policies' hashes combine as
/// Envoy's do (each earlier hash rotated left by one, then xor); after a `terminal` one that
/// gave a hash, the rest are skipped (docs/governance.md#consistent-hashing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    /// xxHash64 of the request header's value (several: sorted, each one's hash seeded with
    /// the hash of those before it, as Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// xxHash64 of the caller's IP address as text.
    #[serde(default, skip_serializing_if = "is_false")]
    pub source_ip: bool,
    /// xxHash64 of the first value of this query parameter of the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<String>,
    /// xxHash64 of this cookie's value (from the `cookie` headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// With `cookie` (Envoy's cookie `ttl`, seconds): a request without the cookie hashes a
    /// value generated from its connection's addresses, and its response sets the cookie
    /// (`set-cookie: NAME="VALUE"; Max-Age=TTL; Path=PATH; ATTRIBUTES; HttpOnly`, no
    /// `Max-Age` for 0), as Envoy's router does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_ttl_s: Option<u64>,
    /// The generated cookie's `Path` (with `cookie_ttl_s`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cookie_path: String,
    /// The generated cookie's other attributes, in order (with `cookie_ttl_s`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookie_attributes: Vec<CookieAttribute>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub terminal: bool,
}

/// An attribute of a generated cookie: `NAME=VALUE`, or `NAME` alone when the value is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieAttribute {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// Most hash policies of one route (a request's generated cookies are one bit each).
pub const HASH_POLICIES_MAX: usize = 64;

fn default_h2_frame_bytes_max() -> u32 {
    H2_FRAME_BYTES_MAX_DEFAULT
}
fn default_header_list_bytes_max() -> u32 {
    HEADER_LIST_BYTES_MAX_DEFAULT
}
fn default_concurrent_streams_max() -> u32 {
    CONCURRENT_STREAMS_MAX_DEFAULT
}
fn default_stream_window_bytes() -> u32 {
    STREAM_WINDOW_BYTES_DEFAULT
}
fn default_connection_window_bytes() -> u32 {
    CONNECTION_WINDOW_BYTES_DEFAULT
}
fn default_outbound_control_frames_max() -> u32 {
    OUTBOUND_CONTROL_FRAMES_MAX_DEFAULT
}

fn default_preface_timeout_ms() -> u64 {
    PREFACE_TIMEOUT_MS_DEFAULT
}

fn default_hpack_amplified_bytes_per_second_max() -> u32 {
    HPACK_AMPLIFIED_BYTES_PER_SECOND_MAX_DEFAULT
}

fn default_resets_per_second_max() -> u32 {
    RESETS_PER_SECOND_MAX_DEFAULT
}
fn default_true() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn default_drain_timeout_ms() -> u64 {
    DRAIN_TIMEOUT_MS_DEFAULT
}
fn default_idle_timeout_ms() -> u64 {
    IDLE_TIMEOUT_MS_DEFAULT
}
fn default_connect_timeout_ms() -> u64 {
    CONNECT_TIMEOUT_MS_DEFAULT
}
fn default_frame_bytes_max() -> usize {
    FRAME_BYTES_MAX_DEFAULT
}
fn default_pending_per_connection() -> u32 {
    PENDING_REQUESTS_PER_CONNECTION_MAX_DEFAULT
}
fn default_request_timeout_ms() -> u64 {
    REQUEST_TIMEOUT_MS_DEFAULT
}
fn default_connections_per_host() -> u32 {
    CONNECTIONS_PER_HOST_DEFAULT
}
fn default_pending_per_host() -> u32 {
    PENDING_REQUESTS_PER_HOST_MAX_DEFAULT
}
fn default_keepalive_interval_ms() -> u64 {
    KEEPALIVE_INTERVAL_MS_DEFAULT
}

fn default_keepalive_timeout_ms() -> u64 {
    KEEPALIVE_TIMEOUT_MS_DEFAULT
}

fn default_heartbeat_interval_ms() -> u64 {
    HEARTBEAT_INTERVAL_MS_DEFAULT
}
fn default_response_bytes_max() -> usize {
    RESPONSE_BYTES_MAX_DEFAULT
}
fn default_output_bytes_max() -> usize {
    OUTPUT_BYTES_MAX_DEFAULT
}
fn default_output_stall_timeout_ms() -> u64 {
    OUTPUT_STALL_TIMEOUT_MS_DEFAULT
}
fn default_first_frame_timeout_ms() -> u64 {
    FIRST_FRAME_TIMEOUT_MS_DEFAULT
}
fn default_heartbeat_timeout_ms() -> u64 {
    HEARTBEAT_TIMEOUT_MS_DEFAULT
}
fn default_buffer_bytes() -> usize {
    BUFFER_BYTES_DEFAULT
}
fn default_connections_per_shard_max() -> u32 {
    CONNECTIONS_PER_SHARD_MAX_DEFAULT
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: default_admin_address(),
            health_address: None,
            health_upstream: None,
            prometheus_address: None,
            control_socket: None,
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            shards: None,
            io: IoMode::Auto,
            pin: true,
            poll_mode: PollMode::Sleep,
            spin_budget_us: SPIN_BUDGET_US_DEFAULT,
            socket_mark: None,
            buffered_bytes_per_shard_max: BUFFERED_BYTES_PER_SHARD_MAX_DEFAULT,
            tcp_keepalive: TcpKeepalive::default(),
            aux_cpus: Vec::new(),
        }
    }
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field, as a path: `listeners[0].cluster`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file, line)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "field `{}`: {}", self.field, self.message)
        }
    }
}

/// Every problem found in one file (at least one).
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Who assembled a config: the rules differ slightly (see [`Config::validate_as`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Dynamic,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::from_yaml(&file, &text)
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<Config, ConfigErrors> {
        let config: Config = match serde_yaml::from_str(text) {
            Ok(c) => c,
            Err(e) => return Err(ConfigErrors(vec![serde_error(file, text, &e)])),
        };
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        let index = lines::LineIndex::build(text);
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|(field, message)| ConfigError {
                    file: file.to_string(),
                    line: index.line_of(&field),
                    field,
                    message,
                })
                .collect(),
        ))
    }

    /// Cross-field checks; returns (field path, message) for each problem.
    pub fn validate(&self) -> Vec<(String, String)> {
        self.validate_as(Source::File)
    }

    /// [`Config::validate`] for a config assembled from xDS or a registry, where a cluster may
    /// have no endpoints yet (its requests fail as "no healthy upstream" until some arrive).
    pub fn validate_as(&self, source: Source) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut err = |field: String, message: String| out.push((field, message));
        self.validate_process(&mut err);
        self.validate_sds(&mut err);
        let cluster_names = self.validate_clusters(source, &mut err);
        self.validate_listeners(&cluster_names, &mut err);
        self.validate_virtual_listeners(&mut err);
        out
    }

    /// The process-wide sections: runtime, dpdk, xds, registry, drain timeout, stats.
    fn validate_process(&self, err: &mut dyn FnMut(String, String)) {
        if let Some(n) = self.runtime.shards {
            if n == 0 || n > SHARDS_MAX {
                err(
                    "runtime.shards".into(),
                    format!("{n} is out of range 1..={SHARDS_MAX}"),
                );
            }
        }
        let b = self.runtime.buffered_bytes_per_shard_max;
        if !(BUFFERED_BYTES_PER_SHARD_MAX_MIN..=BUFFERED_BYTES_PER_SHARD_MAX_LIMIT).contains(&b) {
            err(
                "runtime.buffered_bytes_per_shard_max".into(),
                format!("{b} is out of range {BUFFERED_BYTES_PER_SHARD_MAX_MIN}..={BUFFERED_BYTES_PER_SHARD_MAX_LIMIT}"),
            );
        }
        self.runtime
            .tcp_keepalive
            .validate("runtime.tcp_keepalive", err);
        for (i, &cpu) in self.runtime.aux_cpus.iter().enumerate() {
            if cpu >= AUX_CPU_LIMIT {
                err(
                    format!("runtime.aux_cpus[{i}]"),
                    format!("CPU {cpu} is out of range 0..{AUX_CPU_LIMIT}"),
                );
            } else if self.runtime.aux_cpus[..i].contains(&cpu) {
                err(
                    format!("runtime.aux_cpus[{i}]"),
                    format!("CPU {cpu} is listed twice"),
                );
            }
        }
        let budget = self.runtime.spin_budget_us;
        if budget == 0 || budget > SPIN_BUDGET_US_MAX {
            err(
                "runtime.spin_budget_us".into(),
                format!("{budget} is out of range 1..={SPIN_BUDGET_US_MAX}"),
            );
        }
        if let Some(d) = &self.dpdk {
            d.validate(self.runtime.shards, &self.listeners, err);
        }
        let sets = self.stats.istio_label_sets_max;
        if !(1..=ISTIO_LABEL_SETS_MAX_LIMIT).contains(&sets) {
            err(
                "stats.istio_label_sets_max".into(),
                format!("{sets} is out of range 1..={ISTIO_LABEL_SETS_MAX_LIMIT}"),
            );
        }
        if let Some(x) = &self.xds {
            validate_xds(x, err);
        }
        if let Some(r) = &self.registry {
            validate_registry(r, &self.listeners, err);
        }
        if self.runtime.socket_mark == Some(0) {
            err(
                "runtime.socket_mark".into(),
                "0 is no mark: give 1..=4294967295 or leave the field out".into(),
            );
        }
        range_ms(
            err,
            "drain_timeout_ms".into(),
            self.drain_timeout_ms,
            0,
            DRAIN_TIMEOUT_MS_MAX,
        );

        for (list, rules) in [
            ("include", &self.stats.include),
            ("exclude", &self.stats.exclude),
        ] {
            for (i, m) in rules.iter().enumerate() {
                let field = format!("stats.{list}[{i}]");
                match (&m.prefix, &m.regex) {
                    (Some(_), None) => {}
                    (None, Some(r)) => {
                        if let Err(e) = regex::Regex::new(r) {
                            err(format!("{field}.regex"), format!("invalid regex: {e}"));
                        }
                    }
                    _ => err(field, "give exactly one of prefix, regex".into()),
                }
            }
        }
    }

    /// Every cluster; returns the names defined.
    fn validate_clusters(
        &self,
        source: Source,
        err: &mut dyn FnMut(String, String),
    ) -> HashSet<&str> {
        let mut cluster_names = HashSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let at = |f: &str| format!("clusters[{i}].{f}");
            if c.name.is_empty() {
                err(at("name"), "must not be empty".into());
            } else if !cluster_names.insert(c.name.as_str()) {
                err(at("name"), format!("duplicate cluster name {:?}", c.name));
            }
            self.validate_cluster_source(c, source, &at, err);
            validate_cluster_limits(c, &at, err);
            let v4 = c.source_addresses.iter().filter(|a| a.is_ipv4()).count();
            if v4 > 1 || c.source_addresses.len() - v4 > 1 {
                err(
                    at("source_addresses"),
                    "at most one IPv4 and one IPv6 address (a connection binds the one of its \
                     destination's family)"
                        .into(),
                );
            }
            if let Some(t) = &c.tls {
                validate_cluster_tls(c, t, &|f| at(&format!("tls.{f}")), err);
            }
            match c.lb {
                LbPolicy::RingHash {
                    minimum_ring_size: min,
                    maximum_ring_size: max,
                } => {
                    if min == 0 || min > MAX_RING_SIZE_DEFAULT || max > MAX_RING_SIZE_DEFAULT {
                        err(
                            at("lb.ring_hash"),
                            format!("ring sizes must be in 1..={MAX_RING_SIZE_DEFAULT}"),
                        );
                    } else if min > max {
                        err(
                            at("lb.ring_hash"),
                            format!("minimum_ring_size ({min}) > maximum_ring_size ({max})"),
                        );
                    }
                }
                LbPolicy::Maglev { table_size } => {
                    if table_size > MAGLEV_TABLE_SIZE_MAX || !is_prime(table_size) {
                        err(
                            at("lb.maglev.table_size"),
                            format!(
                                "{table_size}: must be a prime number of at most \
                                 {MAGLEV_TABLE_SIZE_MAX}"
                            ),
                        );
                    }
                }
                _ => {}
            }
            if c.zone_aware.routing_enabled > 100 {
                err(
                    at("zone_aware.routing_enabled"),
                    format!("{} %: at most 100", c.zone_aware.routing_enabled),
                );
            }
            if c.transport_socket_matches.len() > TRANSPORT_SOCKET_MATCHES_MAX {
                err(
                    at("transport_socket_matches"),
                    format!(
                        "{} entries: at most {TRANSPORT_SOCKET_MATCHES_MAX}",
                        c.transport_socket_matches.len()
                    ),
                );
            }
            for (k, m) in c.transport_socket_matches.iter().enumerate() {
                if let Some(t) = &m.tls {
                    let at = |f: &str| at(&format!("transport_socket_matches[{k}].tls.{f}"));
                    validate_cluster_tls(c, t, &at, err);
                }
            }
        }
        cluster_names
    }

    /// Where a cluster's endpoints come from: its type, registry selector and metadata.
    fn validate_cluster_source(
        &self,
        c: &Cluster,
        source: Source,
        at: &dyn Fn(&str) -> String,
        err: &mut dyn FnMut(String, String),
    ) {
        match c.kind {
            ClusterType::Static => {
                if c.endpoints.is_empty() && source == Source::File {
                    err(
                        at("endpoints"),
                        "a cluster needs at least one endpoint".into(),
                    );
                }
            }
            ClusterType::Zookeeper => {
                if c.registry.is_none() {
                    err(
                        at("registry"),
                        "a cluster of type zookeeper needs registry.interface".into(),
                    );
                }
                if self.registry.is_none() {
                    err(
                        at("type"),
                        "a cluster of type zookeeper needs the top-level registry section".into(),
                    );
                }
                if !c.endpoints.is_empty() && source == Source::File {
                    err(
                        at("endpoints"),
                        "a cluster of type zookeeper takes its endpoints from the registry".into(),
                    );
                }
            }
            ClusterType::OriginalDestination => {
                if !c.endpoints.is_empty() {
                    err(
                        at("endpoints"),
                        "a cluster of type original_destination takes no endpoints (each \
                         connection goes to its own original destination)"
                            .into(),
                    );
                }
            }
        }
        if let Some(sel) = &c.registry {
            if c.kind != ClusterType::Zookeeper {
                err(
                    at("registry"),
                    "only a cluster of type zookeeper takes a registry selector".into(),
                );
            }
            if !valid_interface(&sel.interface) {
                err(
                    at("registry.interface"),
                    format!("{:?} is not a Dubbo interface name", sel.interface),
                );
            }
        }
        if !c.endpoint_metadata.is_empty() {
            if c.endpoint_metadata.len() != c.endpoints.len() {
                err(
                    at("endpoint_metadata"),
                    format!(
                        "has {} entries for {} endpoints (give one per endpoint, in order)",
                        c.endpoint_metadata.len(),
                        c.endpoints.len()
                    ),
                );
            }
            for (k, m) in c.endpoint_metadata.iter().enumerate() {
                if m.weight == 0 {
                    err(
                        at(&format!("endpoint_metadata[{k}].weight")),
                        "must be at least 1 (leave an endpoint that takes no traffic out)".into(),
                    );
                }
                if m.tag.len() > TAG_BYTES_MAX {
                    err(
                        at(&format!("endpoint_metadata[{k}].tag")),
                        format!("{} bytes: at most {TAG_BYTES_MAX}", m.tag.len()),
                    );
                }
            }
        }
    }

    /// The admin addresses and every listener.
    fn validate_listeners(
        &self,
        cluster_names: &HashSet<&str>,
        err: &mut dyn FnMut(String, String),
    ) {
        let mut listener_names = HashSet::new();
        let mut addresses = HashSet::new();
        addresses.insert(self.admin.address);
        if self.admin.health_upstream.is_some() && self.admin.health_address.is_none() {
            err(
                "admin.health_upstream".into(),
                "needs admin.health_address (the listener whose probes it answers)".into(),
            );
        }
        for extra in [self.admin.health_address, self.admin.prometheus_address]
            .into_iter()
            .flatten()
        {
            if !addresses.insert(extra) {
                err(
                    "admin".into(),
                    format!("address {extra} is used twice in the admin section"),
                );
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("listeners[{i}].{f}");
            if l.name.is_empty() {
                err(at("name"), "must not be empty".into());
            } else if !listener_names.insert(l.name.as_str()) {
                err(at("name"), format!("duplicate listener name {:?}", l.name));
            }
            if l.bind && !addresses.insert(l.address) {
                err(
                    at("address"),
                    format!(
                        "{} is already used by the admin API or another listener",
                        l.address
                    ),
                );
            }
            self.validate_listener(l, cluster_names, &at, err);
        }
    }

    /// One listener's cluster, protocol section, limits and original destination.
    fn validate_listener(
        &self,
        l: &Listener,
        cluster_names: &HashSet<&str>,
        at: &dyn Fn(&str) -> String,
        err: &mut dyn FnMut(String, String),
    ) {
        match (&l.cluster, l.protocol) {
            (None, Protocol::Tcp)
                if l.filter_chains.is_empty() && l.default_filter_chain.is_none() =>
            {
                err(
                    at("cluster"),
                    "a tcp listener needs a cluster (or filter_chains)".into(),
                )
            }
            (None, Protocol::Dubbo) if l.dubbo.as_ref().is_none_or(|d| d.routes.is_empty()) => err(
                at("cluster"),
                "a dubbo listener needs routes (dubbo.routes) or a default cluster".into(),
            ),
            (None, Protocol::Triple)
                if l.triple
                    .as_ref()
                    .is_none_or(|t| t.all_routes().next().is_none()) =>
            {
                err(
                    at("cluster"),
                    "a triple listener needs routes (triple.routes or triple.virtual_hosts) \
                     or a default cluster"
                        .into(),
                )
            }
            (Some(c), _) if !cluster_names.contains(c.as_str()) => err(
                at("cluster"),
                format!("unknown cluster {c:?} (defined: {})", names(&self.clusters)),
            ),
            _ => {}
        }
        for (i, log) in l.access_log.iter().enumerate() {
            if log.path.is_empty() {
                err(
                    at(&format!("access_log[{i}].path")),
                    "must not be empty".into(),
                );
            }
            if log.format.is_some() && log.json_format.is_some() {
                err(
                    at(&format!("access_log[{i}]")),
                    "set format or json_format, not both".into(),
                );
            }
            if let Some(f) = &log.filter {
                f.validate(&at(&format!("access_log[{i}].filter")), 0, err);
            }
        }
        if let Some(t) = &l.tracing {
            if l.protocol == Protocol::Tcp {
                err(
                    at("tracing"),
                    "only dubbo and triple listeners are traced".into(),
                );
            }
            validate_tracing(t, cluster_names, &|f| at(&format!("tracing.{f}")), err);
        }
        match (l.protocol, &l.dubbo) {
            (Protocol::Dubbo, Some(d)) => {
                validate_dubbo(d, cluster_names, &|f| at(&format!("dubbo.{f}")), err)
            }
            (_, Some(_)) => err(
                at("dubbo"),
                "only a dubbo listener takes a dubbo section".into(),
            ),
            _ => {}
        }
        match (l.protocol, &l.triple) {
            (Protocol::Triple, Some(t)) => {
                validate_triple(t, cluster_names, &|f| at(&format!("triple.{f}")), err)
            }
            (_, Some(_)) => err(
                at("triple"),
                "only a triple listener takes a triple section".into(),
            ),
            _ => {}
        }
        if !(BUFFER_BYTES_MIN..=BUFFER_BYTES_MAX).contains(&l.buffer_bytes) {
            err(
                at("buffer_bytes"),
                format!(
                    "{} is out of range {BUFFER_BYTES_MIN}..={BUFFER_BYTES_MAX}",
                    l.buffer_bytes
                ),
            );
        }
        range_ms(
            err,
            at("idle_timeout_ms"),
            l.idle_timeout_ms,
            1,
            IDLE_TIMEOUT_MS_MAX,
        );
        if l.connections_per_shard_max == 0 {
            err(at("connections_per_shard_max"), "must be at least 1".into());
        }
        if let Some(t) = &l.tls {
            validate_listener_tls(t, l, &|f| at(&format!("tls.{f}")), err);
        }
        validate_rbac_filters(&l.rbac, RbacScope::Network, at, err);
        if let Some(x) = &l.ext_authz {
            if l.protocol != Protocol::Tcp {
                err(
                    at("ext_authz"),
                    "only tcp listeners (the network filter); triple listeners have triple.ext_authz"
                        .into(),
                );
            }
            x.validate(
                cluster_names,
                l.rbac.len(),
                &|f| at(&format!("ext_authz.{f}")),
                err,
            );
        }
        if let Some(b) = &l.local_rate_limit {
            if l.protocol == Protocol::Tcp {
                err(
                    at("local_rate_limit"),
                    "only dubbo and triple listeners count requests".into(),
                );
            }
            b.validate(&at("local_rate_limit"), err);
        }
        if l.original_destination && l.protocol != Protocol::Tcp {
            err(
                at("original_destination"),
                "only a tcp listener takes original_destination".into(),
            );
        }
        let orig_dst_cluster = |name: &str| {
            self.cluster(name)
                .is_some_and(|c| c.kind == ClusterType::OriginalDestination)
        };
        if let Some(c) = &l.cluster {
            // Triple and Dubbo calls go to their connection's original destination
            // (docs/sidecar.md).
            if orig_dst_cluster(c.as_str())
                && l.protocol == Protocol::Tcp
                && !l.original_destination
            {
                err(
                    at("cluster"),
                    format!(
                        "cluster {c:?} is of type original_destination: only a tcp listener \
                         with original_destination: true, a triple or a dubbo listener can use it"
                    ),
                );
            }
            // A filter chain's listener (bind: false) knows the original destination for
            // whatever cluster it has, as Envoy's chains behind an original_dst filter. A
            // listener with virtual_listeners uses it to pick one; its own cluster takes the
            // rest (Istio's REGISTRY_ONLY virtualOutbound: BlackHoleCluster).
            if l.original_destination
                && l.bind
                && l.virtual_listeners.is_empty()
                && !orig_dst_cluster(c.as_str())
                && cluster_names.contains(c.as_str())
            {
                err(
                    at("original_destination"),
                    format!(
                        "the listener's cluster {c:?} is not of type original_destination, \
                         so the original destination would be ignored"
                    ),
                );
            }
        }
    }

    /// `bind: false` listeners and the `virtual_listeners` that hand connections to them.
    fn validate_virtual_listeners(&self, err: &mut dyn FnMut(String, String)) {
        let mut handed: HashSet<&str> = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("listeners[{i}].{f}");
            let hands_off = l.protocol == Protocol::Tcp && l.original_destination && l.bind;
            if !l.virtual_listeners.is_empty() && !hands_off {
                err(
                    at("virtual_listeners"),
                    "only a tcp listener with original_destination: true (and bind: true) hands \
                     connections to virtual listeners"
                        .into(),
                );
            }
            let mut seen: Vec<SocketAddr> = Vec::new();
            for name in &l.virtual_listeners {
                handed.insert(name.as_str());
                match self.listeners.iter().find(|v| &v.name == name) {
                    None => err(
                        at("virtual_listeners"),
                        format!("unknown listener {name:?}"),
                    ),
                    Some(v) if v.bind => err(
                        at("virtual_listeners"),
                        format!("listener {name:?} is not virtual: give it bind: false"),
                    ),
                    Some(v) if seen.contains(&v.address) => err(
                        at("virtual_listeners"),
                        format!(
                            "two virtual listeners have the address {}: which one takes a \
                             connection would be ambiguous",
                            v.address
                        ),
                    ),
                    Some(v) => seen.push(v.address),
                }
            }
        }
        let chained = self.validate_filter_chains(err);
        handed.extend(chained.iter().copied());
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("listeners[{i}].{f}");
            if l.bind {
                continue;
            }
            // A chain's listener reads the original destination its handing listener's socket
            // restored (Istio's virtualInbound chains to ORIGINAL_DST clusters).
            let chain_od = l.original_destination && chained.contains(l.name.as_str());
            if l.transparent || (l.original_destination && !chain_od) {
                err(
                    at("bind"),
                    "a virtual listener (bind: false) opens no socket: transparent and \
                     original_destination belong on the listener that hands it connections"
                        .into(),
                );
            }
            if !handed.contains(l.name.as_str()) {
                err(
                    at("bind"),
                    format!(
                        "no listener hands connections to virtual listener {:?}: name it in an \
                         original_destination listener's virtual_listeners or in a \
                         listener's filter_chains",
                        l.name
                    ),
                );
            }
        }
    }

    /// Listeners with `filter_chains`: where they may be, what their chains name, the
    /// ranges they match. Returns the listeners chains name.
    fn validate_filter_chains(&self, err: &mut dyn FnMut(String, String)) -> HashSet<&str> {
        let mut named = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("listeners[{i}].{f}");
            let chains = l
                .filter_chains
                .iter()
                .enumerate()
                .map(|(k, c)| (format!("filter_chains[{k}]"), c));
            let chains: Vec<(String, &FilterChain)> = chains
                .chain(
                    l.default_filter_chain
                        .iter()
                        .map(|c| ("default_filter_chain".to_string(), c)),
                )
                .collect();
            if chains.is_empty() {
                continue;
            }
            // A virtual dubbo or triple listener's catch-all chain: the connections handed to
            // it whose first bytes do not speak its protocol (Istio's sniffed outbound ports).
            let catch_all = !l.bind && l.protocol != Protocol::Tcp && l.filter_chains.is_empty();
            if catch_all {
                let target = l
                    .default_filter_chain
                    .as_ref()
                    .and_then(|c| c.listener.as_ref());
                let target = target.and_then(|n| self.listeners.iter().find(|v| &v.name == n));
                if target.is_some_and(|t| t.protocol != Protocol::Tcp) {
                    err(
                        at("default_filter_chain.listener"),
                        "a virtual dubbo or triple listener's catch-all chain must be a tcp \
                         listener"
                            .into(),
                    );
                }
            } else if l.protocol != Protocol::Tcp || !l.bind || !l.virtual_listeners.is_empty() {
                err(
                    at("filter_chains"),
                    "only a tcp listener that binds (bind: true) and has no virtual_listeners \
                     chooses filter chains (a virtual dubbo or triple listener has a \
                     default_filter_chain only)"
                        .into(),
                );
            }
            let mut seen: Vec<&ChainMatch> = Vec::new();
            for (cat, c) in &chains {
                let cat = at(cat);
                if let Some(name) = &c.listener {
                    named.insert(name.as_str());
                    match self.listeners.iter().find(|v| &v.name == name) {
                        None => err(
                            format!("{cat}.listener"),
                            format!("unknown listener {name:?}"),
                        ),
                        Some(v) if v.bind => err(
                            format!("{cat}.listener"),
                            format!("listener {name:?} is not virtual: give it bind: false"),
                        ),
                        Some(_) => {}
                    }
                }
                let m = &c.matcher;
                if cat.ends_with("default_filter_chain") && *m != ChainMatch::default() {
                    err(
                        format!("{cat}.match"),
                        "the default chain matches nothing itself".into(),
                    );
                }
                let ranges = [
                    ("prefix_ranges", &m.prefix_ranges),
                    (
                        "direct_source_prefix_ranges",
                        &m.direct_source_prefix_ranges,
                    ),
                    ("source_prefix_ranges", &m.source_prefix_ranges),
                ];
                for (field, list) in ranges {
                    for (k, r) in list.iter().enumerate() {
                        if let Err(e) = parse_cidr(r) {
                            err(format!("{cat}.match.{field}[{k}]"), e);
                        }
                    }
                }
                if let Some(t) = m.transport_protocol.as_deref() {
                    if t != "raw_buffer" && t != "tls" {
                        err(
                            format!("{cat}.match.transport_protocol"),
                            format!("{t:?}: ringside tells raw_buffer from tls only"),
                        );
                    }
                }
                if !cat.ends_with("default_filter_chain") {
                    if seen.contains(&m) {
                        err(
                            format!("{cat}.match"),
                            "another chain has the same match: which one takes a connection \
                             would be ambiguous"
                                .into(),
                        );
                    }
                    seen.push(m);
                }
            }
        }
        named
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// A listener's `tls`: where it may be, and its certificate and CA fields.
fn validate_listener_tls(
    t: &ListenerTls,
    l: &Listener,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    // A tcp listener that hands its connections on chooses by bytes TLS would hide: TLS
    // belongs on the listener a connection is handed to (Istio's TLS chains of
    // virtualInbound).
    let hands_on = !l.filter_chains.is_empty()
        || l.default_filter_chain.is_some()
        || !l.virtual_listeners.is_empty();
    if l.protocol == Protocol::Tcp && hands_on {
        err(
            at("mode"),
            "a tcp listener with filter_chains, default_filter_chain or virtual_listeners hands \
             connections on before TLS: put tls on the listener that serves them"
                .into(),
        );
    }
    if t.certificate_sds.is_some() {
        if !t.cert_chain.is_empty() || !t.private_key.is_empty() {
            err(
                at("certificate_sds"),
                "either certificate_sds or cert_chain and private_key".into(),
            );
        }
    } else {
        for (f, v) in [
            ("cert_chain", &t.cert_chain),
            ("private_key", &t.private_key),
        ] {
            if v.is_empty() {
                err(
                    at(f),
                    "must name a PEM file (or set certificate_sds)".into(),
                );
            }
        }
    }
    if t.ca.is_some() && t.ca_sds.is_some() {
        err(at("ca_sds"), "either ca or ca_sds".into());
    }
    if t.ca.is_none()
        && t.ca_sds.is_none()
        && (t.require_client_certificate || !t.subject_alt_names.is_empty())
    {
        err(
            at("ca"),
            "require_client_certificate and subject_alt_names need a ca to verify clients against \
             (or set require_client_certificate: false for TLS without client certificates)"
                .into(),
        );
    }
    if !(1..=TICKET_KEY_ROTATION_S_MAX).contains(&t.ticket_key_rotation_s) {
        err(
            at("ticket_key_rotation_s"),
            format!(
                "{} is outside 1..={TICKET_KEY_ROTATION_S_MAX} (seconds)",
                t.ticket_key_rotation_s
            ),
        );
    }
    t.params.validate(&|f| at(&format!("params.{f}")), err);
}

impl TlsParams {
    fn validate(&self, at: &dyn Fn(&str) -> String, err: &mut dyn FnMut(String, String)) {
        if let (Some(min), Some(max)) = (self.min_version, self.max_version) {
            if min > max {
                err(at("min_version"), "is above max_version".into());
            }
        }
        let tls12 = self.min_version.is_none_or(|v| v == TlsVersion::Tls12);
        let known = [
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-RSA-CHACHA20-POLY1305",
        ];
        if tls12
            && !self.cipher_suites.is_empty()
            && !self
                .cipher_suites
                .iter()
                .flat_map(|n| n.split(['[', ']', '|']))
                .any(|n| known.contains(&n))
        {
            err(
                at("cipher_suites"),
                format!(
                    "none of them is a TLS 1.2 suite ringside has ({})",
                    known.join(", ")
                ),
            );
        }
    }
}

fn validate_cluster_tls(
    c: &Cluster,
    t: &ClusterTls,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    if c.kind == ClusterType::OriginalDestination {
        err(
            at("ca"),
            "an original_destination cluster relays bytes as they are (no TLS origination)".into(),
        );
    }
    if t.cert_chain.is_some() != t.private_key.is_some() {
        err(
            at("private_key"),
            "cert_chain and private_key go together (both for mutual TLS, or neither)".into(),
        );
    }
    if t.cert_chain.is_some() && t.certificate_sds.is_some() {
        err(
            at("certificate_sds"),
            "either certificate_sds or cert_chain and private_key".into(),
        );
    }
    match (t.ca.is_empty(), &t.ca_sds) {
        (true, None) => err(at("ca"), "must name a PEM file (or set ca_sds)".into()),
        (false, Some(_)) => err(at("ca_sds"), "either ca or ca_sds".into()),
        _ => {}
    }
    t.params.validate(&|f| at(&format!("params.{f}")), err);
}

impl Config {
    /// Every SDS secret a listener or cluster names, with the field that names it.
    pub fn sds_secrets(&self) -> impl Iterator<Item = (String, &SdsSecret)> {
        let listeners = self.listeners.iter().enumerate().flat_map(|(i, l)| {
            l.tls.iter().flat_map(move |t| {
                [
                    ("certificate_sds", &t.certificate_sds),
                    ("ca_sds", &t.ca_sds),
                ]
                .into_iter()
                .filter_map(move |(f, s)| {
                    s.as_ref().map(|s| (format!("listeners[{i}].tls.{f}"), s))
                })
            })
        });
        let clusters = self.clusters.iter().enumerate().flat_map(|(i, c)| {
            c.transport_sockets()
                .enumerate()
                .filter_map(|(k, t)| t.map(|t| (k, t)))
                .flat_map(move |(k, t)| {
                    [
                        ("certificate_sds", &t.certificate_sds),
                        ("ca_sds", &t.ca_sds),
                    ]
                    .into_iter()
                    .filter_map(move |(f, s)| {
                        let at = match k {
                            0 => format!("clusters[{i}].tls.{f}"),
                            k => {
                                format!("clusters[{i}].transport_socket_matches[{}].tls.{f}", k - 1)
                            }
                        };
                        s.as_ref().map(|s| (at, s))
                    })
                })
        });
        listeners.chain(clusters)
    }

    /// SDS servers named once each, with a path; secrets from a server `sds` lists, or from
    /// ADS only with an `xds` section.
    fn validate_sds(&self, err: &mut dyn FnMut(String, String)) {
        for (i, s) in self.sds.iter().enumerate() {
            if s.name.is_empty() || s.path.is_empty() {
                err(format!("sds[{i}]"), "needs a name and a path".into());
            }
            if self.sds[..i].iter().any(|o| o.name == s.name) {
                err(
                    format!("sds[{i}].name"),
                    format!("{:?} is listed twice", s.name),
                );
            }
        }
        for (at, s) in self.sds_secrets() {
            if s.name.is_empty() {
                err(format!("{at}.name"), "must not be empty".into());
            }
            match &s.server {
                Some(server) if !self.sds.iter().any(|o| &o.name == server) => err(
                    format!("{at}.server"),
                    format!("no sds server named {server:?} (the top-level `sds` list)"),
                ),
                None if self.xds.is_none() => err(
                    format!("{at}.server"),
                    "a secret over ADS needs an xds section (or name an sds server)".into(),
                ),
                _ => {}
            }
        }
    }
}

fn validate_cluster_limits(
    c: &Cluster,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    if let Some(fp) = c.outlier_detection.and_then(|o| o.failure_percentage) {
        if fp.threshold > 100 {
            err(
                at("outlier_detection.failure_percentage.threshold"),
                format!("{} is out of range 0..=100", fp.threshold),
            );
        }
    }
    if let Some(b) = c.circuit_breakers.and_then(|cb| cb.retry_budget) {
        let p = b.budget_percent.0;
        if !(0.0..=100.0).contains(&p) {
            err(
                at("circuit_breakers.retry_budget.budget_percent"),
                format!("{p} is out of range 0..=100"),
            );
        }
    }
    let mut from_1 = |field: &str, v: u64, max: u64| {
        if v == 0 || v > max {
            err(at(field), format!("{v} is out of range 1..={max}"));
        }
    };
    from_1(
        "connect_timeout_ms",
        c.connect_timeout_ms,
        CONNECT_TIMEOUT_MS_MAX,
    );
    from_1("timeout_ms", c.timeout_ms, REQUEST_TIMEOUT_MS_MAX);
    if let Some(o) = &c.outlier_detection {
        for (name, ms) in [
            ("base_ejection_time_ms", o.base_ejection_time_ms),
            ("max_ejection_time_ms", o.max_ejection_time_ms),
            ("interval_ms", o.interval_ms),
        ] {
            from_1(
                &format!("outlier_detection.{name}"),
                ms,
                RATE_LIMIT_FILL_INTERVAL_MS_MAX,
            );
        }
        if o.max_ejection_percent > 100 {
            // 101 is out of 1..=100 too, and names the field.
            from_1(
                "outlier_detection.max_ejection_percent",
                o.max_ejection_percent as u64,
                100,
            );
        }
    }
    if let Some(cb) = &c.circuit_breakers {
        for (name, v) in [
            ("max_requests", cb.max_requests),
            ("max_connections", cb.max_connections),
        ] {
            from_1(
                &format!("circuit_breakers.{name}"),
                v as u64,
                u32::MAX as u64,
            );
        }
    }
    from_1(
        "connections_per_host",
        u64::from(c.connections_per_host),
        u64::from(CONNECTIONS_PER_HOST_MAX),
    );
    if c.pending_requests_max == 0 {
        err(at("pending_requests_max"), "must be at least 1".into());
    }
    if !(BUFFER_BYTES_MIN..=FRAME_BYTES_MAX_LIMIT).contains(&c.response_bytes_max) {
        err(
            at("response_bytes_max"),
            format!(
                "{} is out of range {BUFFER_BYTES_MIN}..={FRAME_BYTES_MAX_LIMIT}",
                c.response_bytes_max
            ),
        );
    }
    timer_in_range(c.idle_timeout_ms, at("idle_timeout_ms"), err);
    timer_in_range(c.keepalive_interval_ms, at("keepalive_interval_ms"), err);
    timer_in_range(c.keepalive_timeout_ms, at("keepalive_timeout_ms"), err);
    if let Some(k) = &c.tcp_keepalive {
        k.validate(&at("tcp_keepalive"), err);
    }
    for (name, v) in [
        ("http2_stream_window_bytes", c.http2_stream_window_bytes),
        (
            "http2_connection_window_bytes",
            c.http2_connection_window_bytes,
        ),
    ] {
        if let Some(v) = v.filter(|v| !(WINDOW_BYTES_MIN..=WINDOW_BYTES_MAX).contains(v)) {
            err(
                at(name),
                format!("{v} is out of range {WINDOW_BYTES_MIN}..={WINDOW_BYTES_MAX}"),
            );
        }
    }
    if let Some(k) = &c.http2_keepalive {
        k.validate(&at("http2_keepalive"), err);
    }
    if c.max_connection_duration_ms > IDLE_TIMEOUT_MS_MAX {
        err(
            at("max_connection_duration_ms"),
            format!(
                "{} is out of range 0..={IDLE_TIMEOUT_MS_MAX}",
                c.max_connection_duration_ms
            ),
        );
    }
    range_ms(
        err,
        at("heartbeat_interval_ms"),
        c.heartbeat_interval_ms,
        HEARTBEAT_INTERVAL_MS_MIN,
        HEARTBEAT_INTERVAL_MS_MAX,
    );
}

fn validate_xds(x: &XdsBootstrap, err: &mut dyn FnMut(String, String)) {
    let ok = match x.server.strip_prefix("unix:") {
        Some(path) => !path.is_empty(),
        None => x
            .server
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)),
    };
    if !ok {
        err(
            "xds.server".into(),
            format!("{:?} is not host:port or unix:PATH", x.server),
        );
    }
    if x.node_id.is_empty() {
        err("xds.node_id".into(), "must not be empty".into());
    }
    if let Some(t) = &x.tls {
        if x.server.starts_with("unix:") {
            err(
                "xds.tls".into(),
                "TLS to a unix: server is not supported (pilot-agent's socket is plaintext)".into(),
            );
        }
        if t.ca.is_empty() {
            err(
                "xds.tls.ca".into(),
                "required: the server's trust bundle".into(),
            );
        }
        if t.cert_chain.is_some() != t.private_key.is_some() {
            err(
                "xds.tls.cert_chain".into(),
                "cert_chain and private_key go together".into(),
            );
        }
    }
    if x.retry_initial_ms == 0 || x.retry_initial_ms > x.retry_max_ms {
        err(
            "xds.retry_initial_ms".into(),
            format!(
                "{} must be at least 1 and at most retry_max_ms ({})",
                x.retry_initial_ms, x.retry_max_ms
            ),
        );
    }
    range_ms(
        err,
        "xds.retry_max_ms".into(),
        x.retry_max_ms,
        1,
        RETRY_MS_MAX,
    );
    range_ms(
        err,
        "xds.initial_fetch_timeout_ms".into(),
        x.initial_fetch_timeout_ms,
        0,
        FETCH_TIMEOUT_MS_MAX,
    );
}

fn timer_in_range(ms: u64, field: String, err: &mut dyn FnMut(String, String)) {
    if ms == 0 || ms > DUBBO_TIMER_MS_MAX {
        err(
            field,
            format!("{ms} is out of range 1..={DUBBO_TIMER_MS_MAX}"),
        );
    }
}

fn validate_dubbo(
    d: &DubboListener,
    clusters: &HashSet<&str>,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    validate_rbac_filters(&d.rbac, RbacScope::Dubbo, at, err);
    if let Some(t) = &d.traffic_label {
        t.validate(false, at, err);
    }
    if d.frame_bytes_max < BUFFER_BYTES_MIN || d.frame_bytes_max > FRAME_BYTES_MAX_LIMIT {
        err(
            at("frame_bytes_max"),
            format!(
                "{} is out of range {BUFFER_BYTES_MIN}..={FRAME_BYTES_MAX_LIMIT}",
                d.frame_bytes_max
            ),
        );
    }
    if d.pending_requests_per_connection_max == 0 {
        err(
            at("pending_requests_per_connection_max"),
            "must be at least 1".into(),
        );
    }
    if !(BUFFER_BYTES_MIN..=FRAME_BYTES_MAX_LIMIT).contains(&d.output_bytes_max) {
        err(
            at("output_bytes_max"),
            format!(
                "{} is out of range {BUFFER_BYTES_MIN}..={FRAME_BYTES_MAX_LIMIT}",
                d.output_bytes_max
            ),
        );
    }
    for (name, ms) in [
        ("output_stall_timeout_ms", d.output_stall_timeout_ms),
        ("first_frame_timeout_ms", d.first_frame_timeout_ms),
        ("heartbeat_timeout_ms", d.heartbeat_timeout_ms),
    ] {
        timer_in_range(ms, at(name), &mut *err);
    }
    let regex_ok = |field: String, pattern: &str, err: &mut dyn FnMut(String, String)| {
        if let Err(e) = regex::bytes::Regex::new(pattern) {
            err(field, format!("invalid regex: {e}"));
        }
    };
    for (i, r) in d.routes.iter().enumerate() {
        let rat = |f: &str| at(&format!("routes[{i}].{f}"));
        for (name, m) in [
            ("interface", &r.matcher.interface),
            ("method", &r.matcher.method),
        ] {
            let Some(m) = m else { continue };
            let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()];
            if set.iter().filter(|x| **x).count() != 1 {
                err(
                    rat(&format!("match.{name}")),
                    "give exactly one of exact, prefix, regex".into(),
                );
            }
            if let Some(p) = &m.regex {
                regex_ok(rat(&format!("match.{name}.regex")), p, err);
            }
        }
        for (k, a) in r.matcher.arguments.iter().enumerate() {
            let set = [a.exact.is_some(), a.prefix.is_some(), a.range.is_some()];
            if set.iter().filter(|x| **x).count() != 1 {
                err(
                    rat(&format!("match.arguments[{k}]")),
                    "give exactly one of exact, prefix, range".into(),
                );
            }
            if let Some(range) = a.range {
                if range.start >= range.end {
                    err(
                        rat(&format!("match.arguments[{k}].range")),
                        format!("start {} must be below end {}", range.start, range.end),
                    );
                }
            }
        }
        for (k, a) in r.matcher.attachments.iter().enumerate() {
            let set = [a.exact.is_some(), a.regex.is_some(), a.present.is_some()];
            if set.iter().filter(|x| **x).count() != 1 {
                err(
                    rat(&format!("match.attachments[{k}]")),
                    "give exactly one of exact, regex, present".into(),
                );
            }
            if let Some(p) = &a.regex {
                regex_ok(rat(&format!("match.attachments[{k}].regex")), p, err);
            }
        }
        validate_action(&r.route, clusters, false, &rat, err);
        if let Some(b) = &r.local_rate_limit {
            b.validate(&rat("local_rate_limit"), err);
        }
        validate_concurrency(r.max_concurrent_requests, &rat, err);
    }
}

/// The route action of a Dubbo or (`grpc`) Triple route.
fn validate_action(
    action: &RouteAction,
    clusters: &HashSet<&str>,
    grpc: bool,
    rat: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    if let Some(p) = &action.retry_policy {
        validate_retry(p, grpc, &|f| rat(&format!("route.retry_policy.{f}")), err);
    }
    for (k, w) in action.weighted_clusters.iter().enumerate() {
        if !grpc && !w.headers.is_empty() {
            err(
                rat(&format!("route.weighted_clusters[{k}].headers")),
                "header mutations are for Triple routes only".into(),
            );
        }
    }
    if let Some(f) = &action.fault {
        if let Some(d) = &f.delay {
            if d.fixed_delay_ms == 0 || d.fixed_delay_ms > FAULT_DELAY_MS_MAX {
                err(
                    rat("route.fault.delay.fixed_delay_ms"),
                    format!(
                        "{} is out of range 1..={FAULT_DELAY_MS_MAX}",
                        d.fixed_delay_ms
                    ),
                );
            }
        }
        if let Some(a) = &f.abort {
            // gRPC 0 or Dubbo 20 (OK) would be an answer no provider gave.
            let (ok, top) = if grpc { (0, 16) } else { (20, 255) };
            if a.status == ok || a.status > top {
                err(
                    rat("route.fault.abort.status"),
                    format!("{} is not an error status (1..={top}, not {ok})", a.status),
                );
            }
        }
        if f.delay.is_none() && f.abort.is_none() {
            err(rat("route.fault"), "give delay, abort or both".into());
        }
    }
    if action.request_mirror_policies.len() > MIRROR_POLICIES_MAX {
        err(
            rat("route.request_mirror_policies"),
            format!(
                "{} policies: at most {MIRROR_POLICIES_MAX}",
                action.request_mirror_policies.len()
            ),
        );
    }
    for (k, m) in action.request_mirror_policies.iter().enumerate() {
        if !clusters.contains(m.cluster.as_str()) {
            err(
                rat(&format!("route.request_mirror_policies[{k}].cluster")),
                format!("unknown cluster {:?}", m.cluster),
            );
        }
    }
    if let Some(d) = &action.direct {
        if !grpc {
            err(
                rat("route.direct"),
                "only Triple routes answer requests themselves".into(),
            );
        }
        if action.cluster.is_some() || !action.weighted_clusters.is_empty() {
            err(
                rat("route.direct"),
                "give direct or a cluster, not both".into(),
            );
        }
        if !(200..=599).contains(&d.status) {
            err(
                rat("route.direct.status"),
                format!("{} is out of range 200..=599", d.status),
            );
        }
        if let Some(re) = d.redirect.as_ref().and_then(|r| r.regex_rewrite.as_ref()) {
            match regex::bytes::Regex::new(&re.pattern) {
                Err(e) => err(
                    rat("route.direct.redirect.regex_rewrite.pattern"),
                    format!("invalid regex: {e}"),
                ),
                Ok(c) => {
                    if let Err(e) = re.replacement(c.captures_len() - 1) {
                        err(rat("route.direct.redirect.regex_rewrite.substitution"), e);
                    }
                }
            }
        }
        return;
    }
    match (&action.cluster, action.weighted_clusters.is_empty()) {
        (Some(_), false) | (None, true) => err(
            rat("route"),
            "give exactly one of cluster, weighted_clusters".into(),
        ),
        _ => {}
    }
    if let Some(c) = &action.cluster {
        if !clusters.contains(c.as_str()) {
            err(rat("route.cluster"), format!("unknown cluster {c:?}"));
        }
    }
    for (k, w) in action.weighted_clusters.iter().enumerate() {
        if !clusters.contains(w.name.as_str()) {
            err(
                rat(&format!("route.weighted_clusters[{k}].name")),
                format!("unknown cluster {:?}", w.name),
            );
        }
    }
    if !action.weighted_clusters.is_empty()
        && action.weighted_clusters.iter().all(|w| w.weight == 0)
    {
        err(
            rat("route.weighted_clusters"),
            "at least one weight must be above 0".into(),
        );
    }
    if let Some(t) = action.timeout_ms {
        if t == 0 || t > REQUEST_TIMEOUT_MS_MAX {
            err(
                rat("route.timeout_ms"),
                format!("{t} is out of range 1..={REQUEST_TIMEOUT_MS_MAX}"),
            );
        }
    }
    validate_rewrite(action, grpc, rat, err);
    if action.hash_policy.len() > HASH_POLICIES_MAX {
        err(
            rat("route.hash_policy"),
            format!("at most {HASH_POLICIES_MAX} entries"),
        );
    }
    for (k, h) in action.hash_policy.iter().enumerate() {
        // What goes into a `set-cookie` value: no control characters, no `"` in the name.
        let bad = |v: &str| v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f);
        let generated = h.cookie_ttl_s.is_some()
            || !h.cookie_path.is_empty()
            || !h.cookie_attributes.is_empty();
        if generated && h.cookie.is_none() {
            err(
                rat(&format!("route.hash_policy[{k}]")),
                "cookie_ttl_s, cookie_path and cookie_attributes go with cookie".into(),
            );
        }
        if generated
            && h.cookie
                .as_deref()
                .is_some_and(|c| bad(c) || c.contains(['"', ';', '=', ' ']))
        {
            err(
                rat(&format!("route.hash_policy[{k}].cookie")),
                "a cookie name without control characters, spaces, `\"`, `;` or `=`".into(),
            );
        }
        if bad(&h.cookie_path) || h.cookie_path.contains(';') {
            err(
                rat(&format!("route.hash_policy[{k}].cookie_path")),
                "no control characters or `;`".into(),
            );
        }
        for (j, a) in h.cookie_attributes.iter().enumerate() {
            if a.name.is_empty() || bad(&a.name) || bad(&a.value) {
                err(
                    rat(&format!("route.hash_policy[{k}].cookie_attributes[{j}]")),
                    "a non-empty name; no control characters in name or value".into(),
                );
            }
        }
        let given = usize::from(h.header.is_some())
            + usize::from(h.source_ip)
            + usize::from(h.query_parameter.is_some())
            + usize::from(h.cookie.is_some());
        if given != 1 {
            err(
                rat(&format!("route.hash_policy[{k}]")),
                "give exactly one of header, source_ip, query_parameter, cookie".into(),
            );
        }
        if !grpc {
            err(
                rat(&format!("route.hash_policy[{k}]")),
                "only Triple routes hash requests (Dubbo requests pick at random on a \
                 ring_hash or maglev cluster)"
                    .into(),
            );
        }
    }
}

/// A route's `rewrite` and its weighted clusters' `host_rewrite` (Triple routes only).
fn validate_rewrite(
    action: &RouteAction,
    grpc: bool,
    rat: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    for (k, w) in action.weighted_clusters.iter().enumerate() {
        if w.host_rewrite.is_some() && !grpc {
            err(
                rat(&format!("route.weighted_clusters[{k}].host_rewrite")),
                "only Triple routes rewrite requests".into(),
            );
        }
    }
    let Some(r) = &action.rewrite else {
        return;
    };
    if !grpc {
        err(
            rat("route.rewrite"),
            "only Triple routes rewrite requests".into(),
        );
        return;
    }
    if r.prefix.is_some() && r.regex.is_some() {
        err(
            rat("route.rewrite"),
            "give at most one of prefix, regex".into(),
        );
    }
    let hosts = [
        r.host.is_some(),
        r.host_header.is_some(),
        r.host_path_regex.is_some(),
    ];
    if hosts.iter().filter(|&&b| b).count() > 1 {
        err(
            rat("route.rewrite"),
            "give at most one of host, host_header, host_path_regex".into(),
        );
    }
    for (field, re) in [("regex", &r.regex), ("host_path_regex", &r.host_path_regex)] {
        let Some(re) = re else {
            continue;
        };
        match regex::bytes::Regex::new(&re.pattern) {
            Err(e) => err(
                rat(&format!("route.rewrite.{field}.pattern")),
                format!("invalid regex: {e}"),
            ),
            Ok(c) => {
                if let Err(e) = re.replacement(c.captures_len() - 1) {
                    err(rat(&format!("route.rewrite.{field}.substitution")), e);
                }
            }
        }
    }
    if r.host_header.as_deref().is_some_and(str::is_empty) {
        err(rat("route.rewrite.host_header"), "empty".into());
    }
}

fn validate_retry(
    p: &RetryPolicy,
    grpc: bool,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    if p.retry_on.is_empty() {
        err(at("retry_on"), "give at least one condition".into());
    }
    for (i, on) in p.retry_on.iter().enumerate() {
        if !grpc && !on.dubbo() {
            err(
                at(&format!("retry_on[{i}]")),
                format!("{on:?} is for HTTP and gRPC: Dubbo routes retry on connect-failure, reset, retriable-status-codes"),
            );
        }
    }
    if p.num_retries > RETRIES_MAX {
        err(
            at("num_retries"),
            format!("{} is out of range 0..={RETRIES_MAX}", p.num_retries),
        );
    }
    if let Some(t) = p.per_try_timeout_ms {
        if t == 0 || t > REQUEST_TIMEOUT_MS_MAX {
            err(
                at("per_try_timeout_ms"),
                format!("{t} is out of range 1..={REQUEST_TIMEOUT_MS_MAX}"),
            );
        }
    }
    if let Some(f) = p.previous_priorities {
        if f == 0 || f > RETRIES_MAX {
            err(
                at("previous_priorities"),
                format!("{f} is out of range 1..={RETRIES_MAX}"),
            );
        }
    }
    if let Some(b) = p.retry_back_off {
        if b.base_interval_ms == 0 || b.base_interval_ms > REQUEST_TIMEOUT_MS_MAX {
            err(
                at("retry_back_off.base_interval_ms"),
                format!(
                    "{} is out of range 1..={REQUEST_TIMEOUT_MS_MAX}",
                    b.base_interval_ms
                ),
            );
        }
        if let Some(m) = b.max_interval_ms {
            if m < b.base_interval_ms || m > REQUEST_TIMEOUT_MS_MAX {
                err(
                    at("retry_back_off.max_interval_ms"),
                    format!("{m} is out of range base_interval_ms..={REQUEST_TIMEOUT_MS_MAX}"),
                );
            }
        }
    }
    if p.retriable_status_codes.len() > RETRIABLE_STATUS_CODES_MAX {
        err(
            at("retriable_status_codes"),
            format!("at most {RETRIABLE_STATUS_CODES_MAX} codes"),
        );
    }
    let top = if grpc { 599 } else { 255 };
    for (i, &c) in p.retriable_status_codes.iter().enumerate() {
        if c > top {
            err(
                at(&format!("retriable_status_codes[{i}]")),
                format!("{c} is out of range 0..={top}"),
            );
        } else if !grpc && c == 20 {
            err(
                at(&format!("retriable_status_codes[{i}]")),
                "20 is Dubbo's OK: an answer, never retried".into(),
            );
        }
    }
    let wants = p.retry_on.contains(&RetryOn::RetriableStatusCodes);
    let has = !p.retriable_status_codes.is_empty();
    if wants != has {
        err(
            at("retriable_status_codes"),
            "give codes exactly when retry_on has retriable-status-codes".into(),
        );
    }
}

pub(crate) fn validate_string_match(
    m: &StringMatch,
    field: String,
    err: &mut dyn FnMut(String, String),
) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()];
    if set.iter().filter(|x| **x).count() != 1 {
        err(
            field.clone(),
            "give exactly one of exact, prefix, regex".into(),
        );
    }
    if let Some(p) = &m.regex {
        if let Err(e) = regex::bytes::Regex::new(p) {
            err(format!("{field}.regex"), format!("invalid regex: {e}"));
        }
    }
}

/// A path condition: exactly one kind; a `separated_prefix` starts with `/`, does not end with
/// one and holds no `?` or `#` (Envoy refuses those too).
fn validate_path_match(p: &PathMatch, field: String, err: &mut dyn FnMut(String, String)) {
    let set = [
        p.exact.is_some(),
        p.prefix.is_some(),
        p.regex.is_some(),
        p.separated_prefix.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        err(
            field.clone(),
            "give exactly one of exact, prefix, regex, separated_prefix".into(),
        );
    }
    if let Some(r) = &p.regex {
        if let Err(e) = regex::bytes::Regex::new(r) {
            err(format!("{field}.regex"), format!("invalid regex: {e}"));
        }
    }
    if let Some(sp) = &p.separated_prefix {
        if !sp.starts_with('/') || sp.ends_with('/') || sp.contains(['?', '#']) {
            err(
                format!("{field}.separated_prefix"),
                format!("{sp:?}: starts with /, does not end with /, has no ? or #"),
            );
        }
    }
}

/// A header condition: exactly one of exact, prefix, regex, present; an HTTP/2 name.
pub(crate) fn validate_header_match(
    h: &HeaderMatch,
    field: String,
    err: &mut dyn FnMut(String, String),
) {
    let set = [
        h.exact.is_some(),
        h.prefix.is_some(),
        h.regex.is_some(),
        h.present.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        err(
            field.clone(),
            "give exactly one of exact, prefix, regex, present".into(),
        );
    }
    if h.name.is_empty() || h.name.bytes().any(|b| b.is_ascii_uppercase()) {
        err(
            format!("{field}.name"),
            format!(
                "{:?}: HTTP/2 header names are non-empty and lower-case",
                h.name
            ),
        );
    }
    if let Some(p) = &h.regex {
        if let Err(e) = regex::bytes::Regex::new(p) {
            err(format!("{field}.regex"), format!("invalid regex: {e}"));
        }
    }
}

/// A list of rbac filters (a listener's `rbac` or `triple.rbac`), each field under `at("rbac")`.
fn validate_rbac_filters(
    list: &[Rbac],
    scope: RbacScope,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    if list.len() > RBAC_FILTERS_MAX {
        err(
            at("rbac"),
            format!("{} filters: at most {RBAC_FILTERS_MAX}", list.len()),
        );
    }
    for (i, r) in list.iter().enumerate() {
        r.validate(scope, &|f| at(&format!("rbac[{i}].{f}")), err);
    }
}

fn validate_triple(
    t: &TripleListener,
    clusters: &HashSet<&str>,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    validate_rbac_filters(&t.rbac, RbacScope::Http, at, err);
    if let Some(j) = &t.jwt_authn {
        j.validate(&|f| at(&format!("jwt_authn.{f}")), err);
    }
    if let Some(x) = &t.ext_authz {
        x.validate(
            clusters,
            t.rbac.len(),
            &|f| at(&format!("ext_authz.{f}")),
            err,
        );
        if let Some(b) = x.with_request_body {
            // An HTTP/2 caller's body waits unacknowledged until the check goes.
            if b.max_request_bytes > t.stream_window_bytes {
                err(
                    at("ext_authz.with_request_body.max_request_bytes"),
                    format!(
                        "{} is above the listener's stream_window_bytes {}",
                        b.max_request_bytes, t.stream_window_bytes
                    ),
                );
            }
        }
    }
    if let Some(tl) = &t.traffic_label {
        tl.validate(true, at, err);
    }
    let mut range = |field: &str, v: u32, lo: u32, hi: u32| {
        if !(lo..=hi).contains(&v) {
            err(at(field), format!("{v} is out of range {lo}..={hi}"));
        }
    };
    range(
        "frame_bytes_max",
        t.frame_bytes_max,
        H2_FRAME_BYTES_MAX_DEFAULT,
        H2_FRAME_BYTES_MAX_LIMIT,
    );
    range(
        "header_list_bytes_max",
        t.header_list_bytes_max,
        1024,
        HEADER_LIST_BYTES_MAX_LIMIT,
    );
    range(
        "concurrent_streams_max",
        t.concurrent_streams_max,
        1,
        1 << 20,
    );
    range(
        "stream_window_bytes",
        t.stream_window_bytes,
        WINDOW_BYTES_MIN,
        WINDOW_BYTES_MAX,
    );
    range(
        "connection_window_bytes",
        t.connection_window_bytes,
        WINDOW_BYTES_MIN,
        WINDOW_BYTES_MAX,
    );
    range("resets_per_second_max", t.resets_per_second_max, 1, 1 << 20);
    range(
        "outbound_control_frames_max",
        t.outbound_control_frames_max,
        1,
        1 << 20,
    );
    range(
        "hpack_amplified_bytes_per_second_max",
        t.hpack_amplified_bytes_per_second_max,
        1 << 16,
        1 << 30,
    );
    if !(1..=H2_TIMER_MS_MAX).contains(&t.preface_timeout_ms) {
        err(
            at("preface_timeout_ms"),
            format!(
                "{} is out of range 1..={H2_TIMER_MS_MAX}",
                t.preface_timeout_ms
            ),
        );
    }
    if !t.routes.is_empty() && !t.virtual_hosts.is_empty() {
        err(
            at("virtual_hosts"),
            "give routes or virtual_hosts, not both".into(),
        );
    }
    for (field, message) in virtual_host_problems(&t.virtual_hosts) {
        err(at(&field), message);
    }
    for (field, message) in t.headers.problems("headers") {
        err(at(&field), message);
    }
    if let Some(n) = &t.server_name {
        if n.bytes().any(|b| b.is_ascii_control()) {
            err(
                at("server_name"),
                format!("{n:?} holds a control character"),
            );
        }
    }
    for (i, r) in t.routes.iter().enumerate() {
        validate_triple_route(r, clusters, &|f| at(&format!("routes[{i}].{f}")), err);
    }
    for (i, h) in t.virtual_hosts.iter().enumerate() {
        for (j, r) in h.routes.iter().enumerate() {
            let rat = |f: &str| at(&format!("virtual_hosts[{i}].routes[{j}].{f}"));
            validate_triple_route(r, clusters, &rat, err);
        }
    }
}

/// Envoy's rules for the domains of a route configuration: each host has a name and a domain,
/// a domain (ASCII case aside) is in one host only, and `*` in at most one. Each problem as
/// (field below the list, message), e.g. `virtual_hosts[1].domains[0]`.
pub fn virtual_host_problems(hosts: &[VirtualHost]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, h) in hosts.iter().enumerate() {
        if h.name.is_empty() {
            out.push((format!("virtual_hosts[{i}].name"), "empty".into()));
        }
        out.extend(h.headers.problems(&format!("virtual_hosts[{i}].headers")));
        if h.domains.is_empty() {
            out.push((
                format!("virtual_hosts[{i}].domains"),
                "a virtual host needs at least one domain (`*`: any)".into(),
            ));
        }
        for (k, d) in h.domains.iter().enumerate() {
            let field = format!("virtual_hosts[{i}].domains[{k}]");
            if d.is_empty() || d.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                out.push((field, format!("{d:?} is not a host name")));
            } else if let Some(first) = seen.insert(d.to_ascii_lowercase(), i) {
                out.push((
                    field,
                    format!("{d:?} is already a domain of virtual_hosts[{first}]"),
                ));
            }
        }
    }
    out
}

fn validate_triple_route(
    r: &TripleRoute,
    clusters: &HashSet<&str>,
    rat: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    let m = &r.matcher;
    for (name, sm) in [
        ("service", &m.service),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            validate_string_match(sm, rat(&format!("match.{name}")), err);
        }
    }
    for (k, h) in m.headers.iter().enumerate() {
        validate_header_match(h, rat(&format!("match.headers[{k}]")), err);
    }
    if let Some(p) = &m.path {
        validate_path_match(p, rat("match.path"), err);
    }
    for (k, d) in m.dynamic_metadata.iter().enumerate() {
        d.validate(&rat(&format!("match.dynamic_metadata[{k}]")), err);
    }
    for (k, q) in m.query_parameters.iter().enumerate() {
        let field = rat(&format!("match.query_parameters[{k}]"));
        let set = [
            q.exact.is_some(),
            q.prefix.is_some(),
            q.regex.is_some(),
            q.present.is_some(),
        ];
        if set.iter().filter(|x| **x).count() != 1 {
            err(
                field.clone(),
                "give exactly one of exact, prefix, regex, present".into(),
            );
        }
        if q.name.is_empty() {
            err(format!("{field}.name"), "empty".into());
        }
        if let Some(p) = &q.regex {
            if let Err(e) = regex::bytes::Regex::new(p) {
                err(format!("{field}.regex"), format!("invalid regex: {e}"));
            }
        }
    }
    validate_action(&r.route, clusters, true, rat, err);
    for (field, message) in r.headers.problems("headers") {
        err(rat(&field), message);
    }
    for (k, w) in r.route.weighted_clusters.iter().enumerate() {
        for (field, message) in w
            .headers
            .problems(&format!("route.weighted_clusters[{k}].headers"))
        {
            err(rat(&field), message);
        }
    }
    if let Some(b) = &r.local_rate_limit {
        b.validate(&rat("local_rate_limit"), err);
    }
    validate_concurrency(r.max_concurrent_requests, &rat, err);
}

fn validate_concurrency(
    max: Option<u32>,
    rat: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    if let Some(m) = max {
        if m == 0 || m > ROUTE_CONCURRENT_REQUESTS_MAX {
            err(
                rat("max_concurrent_requests"),
                format!("{m} is out of range 1..={ROUTE_CONCURRENT_REQUESTS_MAX}"),
            );
        }
    }
}

/// A duration field in `lo..=hi` milliseconds, or an error naming the field and the range.
fn range_ms(err: &mut dyn FnMut(String, String), field: String, v: u64, lo: u64, hi: u64) {
    if !(lo..=hi).contains(&v) {
        err(field, format!("{v} ms is out of range {lo}..={hi} ms"));
    }
}

/// A listener's `tracing`: a known collector cluster, a sampling percentage between 0 and 100.
fn validate_tracing(
    t: &Tracing,
    cluster_names: &HashSet<&str>,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    if !cluster_names.contains(t.collector_cluster.as_str()) {
        err(
            at("collector_cluster"),
            format!("unknown cluster {:?}", t.collector_cluster),
        );
    }
    if t.service_name.is_empty() {
        err(at("service_name"), "must not be empty".into());
    }
    let p = t.random_sampling.0;
    if !(0.0..=100.0).contains(&p) {
        err(
            at("random_sampling"),
            format!("{p} is not a percentage (0 to 100)"),
        );
    }
}

fn names(clusters: &[Cluster]) -> String {
    if clusters.is_empty() {
        return "none".into();
    }
    clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// serde_yaml errors read "listeners[0].protocol: unknown variant ... at line 5 column 15";
/// split that into our shape so every error prints the same way.
fn serde_error(file: &str, text: &str, e: &serde_yaml::Error) -> ConfigError {
    let line = e.location().map(|l| l.line());
    let full = e.to_string();
    // Drop serde_yaml's own " at line X column Y" suffix; we print the line first.
    let without_loc = match full.find(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    let (field, message) = match without_loc.split_once(": ") {
        Some((path, msg)) if !path.contains(' ') => (path.to_string(), msg.to_string()),
        _ => (String::new(), without_loc.to_string()),
    };
    let line = line.or_else(|| lines::LineIndex::build(text).line_of(&field));
    ConfigError {
        file: file.to_string(),
        line,
        field,
        message,
    }
}

#[cfg(test)]
mod tests;

/// A Dubbo interface name: non-empty, no `/` (it is one ZooKeeper path segment), no spaces.
fn valid_interface(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', ' ', '?', '&'])
}

fn validate_registry(r: &Registry, listeners: &[Listener], err: &mut dyn FnMut(String, String)) {
    if r.addresses.is_empty() {
        err(
            "registry.addresses".into(),
            "give at least one host:port".into(),
        );
    }
    for (i, a) in r.addresses.iter().enumerate() {
        let ok = a
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            err(
                format!("registry.addresses[{i}]"),
                format!("{a:?} is not host:port"),
            );
        }
    }
    if !r.chroot.starts_with('/') || (r.chroot.len() > 1 && r.chroot.ends_with('/')) {
        err(
            "registry.chroot".into(),
            format!("{:?} must start with / and not end with one", r.chroot),
        );
    }
    if r.root.is_empty() || r.root.contains('/') {
        err(
            "registry.root".into(),
            format!("{:?} must be one path segment (e.g. dubbo)", r.root),
        );
    }
    if !(REGISTRY_SESSION_TIMEOUT_MS_MIN..=REGISTRY_SESSION_TIMEOUT_MS_MAX)
        .contains(&r.session_timeout_ms)
    {
        err(
            "registry.session_timeout_ms".into(),
            format!(
                "{} is out of range {REGISTRY_SESSION_TIMEOUT_MS_MIN}..={REGISTRY_SESSION_TIMEOUT_MS_MAX}",
                r.session_timeout_ms
            ),
        );
    }
    if r.retry_initial_ms == 0 || r.retry_initial_ms > r.retry_max_ms {
        err(
            "registry.retry_initial_ms".into(),
            format!(
                "{} must be at least 1 and at most retry_max_ms ({})",
                r.retry_initial_ms, r.retry_max_ms
            ),
        );
    }
    range_ms(
        err,
        "registry.retry_max_ms".into(),
        r.retry_max_ms,
        1,
        RETRY_MS_MAX,
    );
    range_ms(
        err,
        "registry.initial_fetch_timeout_ms".into(),
        r.initial_fetch_timeout_ms,
        0,
        FETCH_TIMEOUT_MS_MAX,
    );
    for (i, s) in r.services.iter().enumerate() {
        let at = |f: &str| format!("registry.services[{i}].{f}");
        if !valid_interface(&s.interface) {
            err(
                at("interface"),
                format!("{:?} is not a Dubbo interface name", s.interface),
            );
        }
        if !listeners.iter().any(|l| l.name == s.listener) {
            err(at("listener"), format!("unknown listener {:?}", s.listener));
        }
        if s.local_port == 0 {
            err(at("local_port"), "must be 1..=65535".into());
        }
        if s.weight == Some(0) {
            err(at("weight"), "must be at least 1".into());
        }
        range_ms(
            err,
            at("health_interval_ms"),
            s.health_interval_ms,
            HEARTBEAT_INTERVAL_MS_MIN,
            HEARTBEAT_INTERVAL_MS_MAX,
        );
    }
}

/// Envoy's overprovisioning factor when EDS gives none (`policy.overprovisioning_factor`), in
/// percent.
pub const OVERPROVISIONING_FACTOR_DEFAULT: u32 = 140;

/// Envoy's priority load: `counts` is (healthy, all) endpoints per priority level, lowest
/// priority number first; each level's health is `min(100, overprovisioning × healthy /
/// all)`, the levels take their health in turn until 100 % is given out (scaled up when the
/// health sums under 100; what rounding leaves goes to the first level with health). All
/// zero when no level has health (Envoy's total panic, which the caller handles).
pub fn priority_load(counts: &[(u32, u32)], overprovisioning: u32) -> Vec<u32> {
    let health: Vec<u32> = counts
        .iter()
        .map(|&(healthy, all)| match all {
            0 => 0,
            _ => {
                (u64::from(overprovisioning) * u64::from(healthy) / u64::from(all)).min(100) as u32
            }
        })
        .collect();
    let total = health.iter().sum::<u32>().min(100);
    let mut load = vec![0; health.len()];
    if total == 0 {
        return load;
    }
    let mut left = 100;
    for (l, &h) in load.iter_mut().zip(&health) {
        *l = (h * 100 / total).min(left);
        left -= *l;
    }
    if let Some(first) = health.iter().position(|&h| h > 0) {
        load[first] += left;
    }
    load
}
