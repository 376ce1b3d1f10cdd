//! Envoy v3 resources into ringside's config types: the only module (with `client`) that sees a
//! prost type. Each `decode_*` takes one `Any` from a discovery response and returns a plain
//! translated resource, or a [`TranslateError`] naming the resource and the field (as a path
//! from the resource's root, proto field names) that ringside cannot honour.
//!
//! The rule for which fields are accepted (docs/xds.md lists them all):
//! - a field that decides where traffic goes, what bytes reach the wire, or security (routing,
//!   rewrites, header mutations, TLS, filters, subsets, health checks) is translated or, when
//!   ringside cannot honour it, NACKed;
//! - a field that only tunes something ringside does not have (stats prefixes, access logs and
//!   tracers of kinds ringside lacks, retry/hedge policies, circuit breaker thresholds, HTTP/2 protocol options, DNS
//!   settings, metadata) is accepted and ignored: ringside's own defaults apply.
//!
//! Fields not named anywhere in this file are in the second group.

#![allow(deprecated)] // Envoy marks some header-matcher variants deprecated; control planes still send them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::accesslog::v3 as accesslog_pb;
use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as http_rl_pb;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router_pb;
use envoy_types::pb::envoy::extensions::filters::network::dubbo_proxy::v3 as dubbo_pb;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::action::v3 as gp_action_pb;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::matcher::v3 as gp_matcher_pb;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::v3 as gp_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::google::protobuf::{Any, Duration};
use envoy_types::pb::xds::r#type::matcher::v3 as xds_matcher_pb;
use prost::Message;

use config::{
    ArgumentMatch, AttachmentMatch, ChainMatch, Cluster, DubboListener, DubboMatch, DubboRoute,
    FilterChain, HeaderMatch, Inspector, LbPolicy, Listener, PathMatch, Protocol, QueryMatch,
    Range, RouteAction, SourceType, StringMatch, TokenBucket, TripleListener, TripleMatch,
    TripleRoute, VirtualHost, WeightedCluster,
};

use crate::TranslateError;

#[path = "proto_ext_authz.rs"]
mod ext_authz;
#[path = "proto_jwt.rs"]
mod jwt;
#[path = "proto_rbac.rs"]
mod rbac;
#[path = "proto_tls.rs"]
mod tls;
pub(crate) use tls::{decode_secret, SECRET_TYPE};

pub(crate) const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub(crate) const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub(crate) const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub(crate) const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

const DUBBO_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy";
const GENERIC_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.v3.GenericProxy";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const DUBBO_CODEC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.codecs.dubbo.v3.DubboCodecConfig";
const GP_ROUTE_ACTION_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.action.v3.RouteAction";
const GP_SERVICE_INPUT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.matcher.v3.ServiceMatchInput";
const GP_METHOD_INPUT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.matcher.v3.MethodMatchInput";
const GP_PROPERTY_INPUT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.matcher.v3.PropertyMatchInput";
const HTTP_ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const RAW_BUFFER_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

/// Envoy's own default cluster connect timeout (5 s), used when `connect_timeout` is unset.
pub(crate) const ENVOY_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// A translated RouteConfiguration: the `virtual_hosts` and `ignore_port_in_host_matching`
/// of a triple listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RouteTable {
    pub virtual_hosts: Vec<VirtualHost>,
    pub ignore_port_in_host_matching: bool,
    /// The RouteConfiguration's own header mutations.
    pub headers: config::HeaderMutations,
    pub most_specific_header_mutations_wins: bool,
}

impl RouteTable {
    /// Into the triple section `t` (replacing its routes).
    pub fn fill(&self, t: &mut TripleListener) {
        t.routes.clear();
        t.virtual_hosts = self.virtual_hosts.clone();
        t.ignore_port_in_host_matching = self.ignore_port_in_host_matching;
        t.headers = self.headers.clone();
        t.most_specific_header_mutations_wins = self.most_specific_header_mutations_wins;
    }
}

/// A translated LDS resource. A Triple listener whose routes come from RDS has no
/// `triple.virtual_hosts` and names its route configuration in `rds`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListenerRes {
    pub listener: Listener,
    pub rds: Option<String>,
    /// `use_original_dst`: hands connections to every virtual listener of the LDS set.
    pub hand_off: bool,
    /// Its HTTP connection manager has a `local_ratelimit` filter: its RDS routes keep their
    /// own rate limits (without the filter Envoy ignores them).
    pub route_limits: bool,
    /// A listener with `filter_chains` (or a virtual listener with a catch-all chain beside its
    /// protocol chain): the `bind: false` listener of each chain it serves.
    pub chains: Vec<ChainRes>,
}

/// The listener of one filter chain, its RDS name, and whether its RDS routes keep their
/// rate limits (as [`ListenerRes::route_limits`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainRes {
    pub listener: Listener,
    pub rds: Option<String>,
    pub route_limits: bool,
}

/// The most filter chains (with the default one) a listener may have.
const CHAINS_MAX: usize = 128;

/// A translated CDS resource. An EDS cluster has no endpoints here; `eds` names its
/// ClusterLoadAssignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterRes {
    pub cluster: Cluster,
    pub eds: Option<String>,
}

/// One resource's context for error messages: `listener "in"`.
struct Ctx<'a> {
    kind: &'static str,
    name: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> TranslateError {
        TranslateError::Field {
            kind: self.kind,
            name: self.name.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

fn unpack<T: Message + Default>(
    any: &Any,
    want: &str,
    ctx: &Ctx<'_>,
    field: &str,
) -> Result<T, TranslateError> {
    if any.type_url != want {
        return Err(ctx.err(field, format!("expected {want}, got {:?}", any.type_url)));
    }
    T::decode(any.value.as_slice()).map_err(|e| ctx.err(field, format!("cannot decode: {e}")))
}

fn decode_top<T: Message + Default>(any: &Any, want: &str) -> Result<T, TranslateError> {
    if any.type_url != want {
        return Err(TranslateError::Decode {
            type_url: any.type_url.clone(),
            message: format!("expected {want}"),
        });
    }
    T::decode(any.value.as_slice()).map_err(|e| TranslateError::Decode {
        type_url: any.type_url.clone(),
        message: e.to_string(),
    })
}

/// A proto Duration in whole milliseconds (rounded up), refused (so NACKed, naming `field`)
/// when negative or above `max_ms`: nothing downstream saturates or overflows.
fn duration_ms(
    d: &Duration,
    ctx: &Ctx<'_>,
    field: &str,
    max_ms: u64,
) -> Result<u64, TranslateError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ctx.err(field, "must not be negative"));
    }
    let ms = (d.seconds as u64)
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add((d.nanos as u64).div_ceil(1_000_000)))
        .filter(|&ms| ms <= max_ms);
    ms.ok_or_else(|| {
        ctx.err(
            field,
            format!(
                "{}.{:09} s is out of range 0..={max_ms} ms",
                d.seconds, d.nanos
            ),
        )
    })
}

/// Escapes regex metacharacters (the same set as `regex::escape`).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// === listeners ===

pub(crate) fn decode_listener(any: &Any) -> Result<(String, ListenerRes), TranslateError> {
    let l: listener_pb::Listener = decode_top(any, LISTENER_TYPE)?;
    let res = listener(&l)?;
    Ok((l.name.clone(), res))
}

fn listener(l: &listener_pb::Listener) -> Result<ListenerRes, TranslateError> {
    let mut res = listener_unkinded(l)?;
    // Envoy makes a listener's spans server spans when its direction is INBOUND, client spans
    // otherwise (egress).
    let kind = if l.traffic_direction == core_pb::TrafficDirection::Inbound as i32 {
        config::SpanKind::Server
    } else {
        config::SpanKind::Client
    };
    let listeners =
        std::iter::once(&mut res.listener).chain(res.chains.iter_mut().map(|c| &mut c.listener));
    for t in listeners.filter_map(|l| l.tracing.as_mut()) {
        t.span_kind = kind;
    }
    Ok(res)
}

fn listener_unkinded(l: &listener_pb::Listener) -> Result<ListenerRes, TranslateError> {
    let ctx = Ctx {
        kind: "listener",
        name: &l.name,
    };
    if l.name.is_empty() {
        return Err(ctx.err("name", "must not be empty"));
    }
    let address = socket_address(l.address.as_ref(), &ctx, "address")?;
    if !l.additional_addresses.is_empty() {
        return Err(ctx.err(
            "additional_addresses",
            "ringside binds one address per listener",
        ));
    }
    if l.filter_chain_matcher.is_some() {
        return Err(ctx.err(
            "filter_chain_matcher",
            "filter chain selection is not supported",
        ));
    }
    // Envoy's hand-off (Istio's virtualOutbound): connections go to the `bind_to_port: false`
    // listener of their original destination, the rest through this listener's chain. The
    // client gives it every such listener of the LDS set as `virtual_listeners`.
    let hand_off = l.use_original_dst.as_ref().is_some_and(|b| b.value);
    // IP_TRANSPARENT (TPROXY interception), and the original_dst listener filter: a tcp_proxy
    // listener whose connections go to their original destination.
    let transparent = l.transparent.as_ref().is_some_and(|b| b.value);
    let original_destination = hand_off
        || l.listener_filters
            .iter()
            .any(|f| f.name == "envoy.filters.listener.original_dst");
    if l.freebind.as_ref().is_some_and(|b| b.value) {
        return Err(ctx.err("freebind", "IP_FREEBIND is not supported"));
    }
    // A virtual listener (Istio's 0.0.0.0_PORT and IP_PORT): served with the connections a
    // use_original_dst listener hands it.
    let bind = l.bind_to_port.as_ref().is_none_or(|b| b.value);
    if l.api_listener.is_some() {
        return Err(ctx.err("api_listener", "API listeners are not supported"));
    }
    if l.udp_listener_config.is_some() {
        return Err(ctx.err("udp_listener_config", "UDP listeners are not supported"));
    }
    if l.listener_specifier.is_some() {
        return Err(ctx.err("listener_specifier", "internal listeners are not supported"));
    }
    for (i, f) in l.listener_filters.iter().enumerate() {
        // These two feed filter chain matching (`tls_inspector`, `http_inspector` of a
        // listener that chooses chains); elsewhere they change nothing.
        if f.name != "envoy.filters.listener.tls_inspector"
            && f.name != "envoy.filters.listener.http_inspector"
            && f.name != "envoy.filters.listener.original_dst"
        {
            return Err(ctx.err(
                format!("listener_filters[{i}].name"),
                format!("listener filter {:?} is not supported", f.name),
            ));
        }
    }
    let base = Listener {
        name: l.name.clone(),
        address,
        protocol: Protocol::Tcp,
        cluster: None,
        idle_timeout_ms: config::IDLE_TIMEOUT_MS_DEFAULT,
        buffer_bytes: config::BUFFER_BYTES_DEFAULT,
        connections_per_shard_max: config::CONNECTIONS_PER_SHARD_MAX_DEFAULT,
        dubbo: None,
        triple: None,
        transparent,
        original_destination,
        bind,
        virtual_listeners: Vec::new(),
        access_log: Vec::new(),
        // A chain's transport socket sets it (chain_listener).
        tls: None,
        filter_chains: Vec::new(),
        default_filter_chain: None,
        tls_inspector: None,
        http_inspector: None,
        local_rate_limit: None,
        istio_metrics: istio_reporter(l),
        tracing: None,
        traffic_direction: traffic_direction(l.traffic_direction),
        rbac: Vec::new(),
        ext_authz: None,
    };
    let mut base = base;
    if let Some(b) = &l.per_connection_buffer_limit_bytes {
        base.buffer_bytes = b.value as usize;
    }
    if bind && !hand_off && chooses_chains(l) {
        return chain_selecting_listener(l, base, &ctx);
    }
    let (chain, at, catch_all) = select_chain(l, &ctx, hand_off, bind)?;
    let pristine = base.clone();
    let mut c = chain_listener(chain, &at, base, &ctx)?;
    let mut chains = Vec::new();
    if let Some((fat, f)) = catch_all {
        // The connections handed to this virtual listener that do not speak its protocol:
        // served by the catch-all chain's own listener, `NAME/default_filter_chain` (Envoy
        // picks that chain for them by filter_chain_match).
        let mut sub = pristine;
        sub.name = format!("{}/{fat}", l.name);
        // It connects to the original destination its connections were handed off by
        // (PassthroughCluster), whatever listener filters its own listener has.
        sub.original_destination = true;
        let sub = chain_listener(f, &fat, sub, &ctx)?;
        if sub.listener.protocol != Protocol::Tcp || sub.listener.tls.is_some() {
            return Err(ctx.err(
                fat,
                "beside a protocol chain, only a catch-all plaintext tcp_proxy chain is supported",
            ));
        }
        c.listener.default_filter_chain = Some(FilterChain {
            name: (!f.name.is_empty()).then(|| f.name.clone()),
            matcher: ChainMatch::default(),
            listener: Some(sub.listener.name.clone()),
        });
        chains.push(sub);
    }
    Ok(ListenerRes {
        listener: c.listener,
        rds: c.rds,
        hand_off,
        route_limits: c.route_limits,
        chains,
    })
}

/// Whether Envoy's per-connection choice among `l`'s chains is one ringside must make too
/// (more than one chain could take a connection): not for one chain that matches everything,
/// nor for the default chain alone or behind it.
fn chooses_chains(l: &listener_pb::Listener) -> bool {
    match (l.filter_chains.as_slice(), &l.default_filter_chain) {
        ([], _) => false,
        ([c], _) if matches_all(c) => false,
        _ => true,
    }
}

/// A listener that chooses a filter chain per connection (Istio's `virtualInbound`): each
/// chain becomes a `bind: false` listener `NAME/filter_chains[i]` on the same address that its
/// `filter_chains` entry hands the connection to (a TLS chain's listener terminates TLS, a
/// tcp_proxy's then relays the plaintext).
fn chain_selecting_listener(
    l: &listener_pb::Listener,
    mut base: Listener,
    ctx: &Ctx<'_>,
) -> Result<ListenerRes, TranslateError> {
    if l.filter_chains.len() >= CHAINS_MAX {
        return Err(ctx.err(
            "filter_chains",
            format!("at most {} filter chains per listener", CHAINS_MAX - 1),
        ));
    }
    let mut chains = Vec::new();
    let pristine = base.clone();
    let all = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            l.default_filter_chain
                .iter()
                .map(|c| ("default_filter_chain".to_string(), c)),
        );
    for (at, c) in all {
        let matcher = chain_match(c, ctx, &at)?;
        let mut sub = pristine.clone();
        sub.name = format!("{}/{at}", l.name);
        sub.bind = false;
        sub.transparent = false;
        let mut sub = chain_listener(c, &at, sub, ctx)?;
        // Only a tcp chain connects to a connection's original destination.
        sub.listener.original_destination &= sub.listener.protocol == Protocol::Tcp;
        let fc = FilterChain {
            name: (!c.name.is_empty()).then(|| c.name.clone()),
            matcher,
            listener: Some(sub.listener.name.clone()),
        };
        chains.push(sub);
        if at == "default_filter_chain" {
            base.default_filter_chain = Some(fc);
        } else {
            // Envoy: "multiple filter chains with the same matching rules are defined".
            if let Some(k) = base
                .filter_chains
                .iter()
                .position(|o| o.matcher == fc.matcher)
            {
                return Err(ctx.err(
                    format!("{at}.filter_chain_match"),
                    format!("filter_chains[{k}] has the same match"),
                ));
            }
            base.filter_chains.push(fc);
        }
    }
    [base.tls_inspector, base.http_inspector] = inspectors(l, ctx)?;
    Ok(ListenerRes {
        listener: base,
        rds: None,
        hand_off: false,
        route_limits: false,
        chains,
    })
}

/// A chain's `filter_chain_match` in config terms.
fn chain_match(
    c: &listener_pb::FilterChain,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<ChainMatch, TranslateError> {
    let Some(m) = &c.filter_chain_match else {
        return Ok(ChainMatch::default());
    };
    let mat = format!("{at}.filter_chain_match");
    let cidrs = |list: &[core_pb::CidrRange], field: &str| {
        list.iter()
            .enumerate()
            .map(|(k, r)| {
                let len = r.prefix_len.as_ref().map_or(None, |l| Some(l.value));
                let s = match len {
                    Some(l) => format!("{}/{l}", r.address_prefix),
                    None => r.address_prefix.clone(),
                };
                config::parse_cidr(&s)
                    .map(|_| s)
                    .map_err(|e| ctx.err(format!("{mat}.{field}[{k}]"), e))
            })
            .collect::<Result<Vec<String>, TranslateError>>()
    };
    let port = |p: u32, field: &str| {
        u16::try_from(p)
            .map_err(|_| ctx.err(format!("{mat}.{field}"), format!("{p} is not a port")))
    };
    use listener_pb::filter_chain_match::ConnectionSourceType as St;
    let source_type = match St::try_from(m.source_type) {
        Ok(St::Any) => SourceType::Any,
        Ok(St::SameIpOrLoopback) => SourceType::Local,
        Ok(St::External) => SourceType::External,
        Err(_) => return Err(ctx.err(format!("{mat}.source_type"), "unknown source type")),
    };
    let transport = match m.transport_protocol.as_str() {
        "" => None,
        t @ ("raw_buffer" | "tls") => Some(t.to_string()),
        t => {
            return Err(ctx.err(
                format!("{mat}.transport_protocol"),
                format!("{t:?}: ringside tells raw_buffer from tls only"),
            ))
        }
    };
    Ok(ChainMatch {
        destination_port: match &m.destination_port {
            Some(p) if p.value != 0 => Some(port(p.value, "destination_port")?),
            _ => None,
        },
        prefix_ranges: cidrs(&m.prefix_ranges, "prefix_ranges")?,
        server_names: m.server_names.clone(),
        transport_protocol: transport,
        application_protocols: m.application_protocols.clone(),
        direct_source_prefix_ranges: cidrs(
            &m.direct_source_prefix_ranges,
            "direct_source_prefix_ranges",
        )?,
        source_type,
        source_prefix_ranges: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
        source_ports: m
            .source_ports
            .iter()
            .map(|p| port(*p, "source_ports"))
            .collect::<Result<_, _>>()?,
    })
}

/// The `tls_inspector` and `http_inspector` listener filters of `l`, with the destination
/// ports their `filter_disabled` turns them off for.
fn inspectors(
    l: &listener_pb::Listener,
    ctx: &Ctx<'_>,
) -> Result<[Option<Inspector>; 2], TranslateError> {
    let mut out = [None, None];
    for (i, f) in l.listener_filters.iter().enumerate() {
        let slot = match f.name.as_str() {
            "envoy.filters.listener.tls_inspector" => 0,
            "envoy.filters.listener.http_inspector" => 1,
            _ => continue,
        };
        let mut disabled_ports = Vec::new();
        if let Some(p) = &f.filter_disabled {
            port_ranges(p, &mut disabled_ports)
                .map_err(|why| ctx.err(format!("listener_filters[{i}].filter_disabled"), why))?;
        }
        out[slot] = Some(Inspector { disabled_ports });
    }
    Ok(out)
}

/// The destination port ranges of a `filter_disabled` predicate made of
/// `destination_port_range` and `or_match` (what istiod sends).
fn port_ranges(
    p: &listener_pb::ListenerFilterChainMatchPredicate,
    out: &mut Vec<[u32; 2]>,
) -> Result<(), String> {
    use listener_pb::listener_filter_chain_match_predicate::Rule;
    match &p.rule {
        Some(Rule::DestinationPortRange(r)) => {
            out.push([r.start.max(0) as u32, r.end.max(0) as u32]);
            Ok(())
        }
        Some(Rule::OrMatch(set)) => set.rules.iter().try_for_each(|r| port_ranges(r, out)),
        Some(Rule::AnyMatch(true)) => {
            out.push([0, 65536]);
            Ok(())
        }
        _ => Err("only destination_port_range, or_match and any_match are supported".into()),
    }
}

/// One chain translated: its protocol, routes or cluster onto `out` (name, address and socket
/// options given), and its RDS name.
fn chain_listener(
    chain: &listener_pb::FilterChain,
    at: &str,
    mut out: Listener,
    ctx: &Ctx<'_>,
) -> Result<ChainRes, TranslateError> {
    if let Some(ts) = &chain.transport_socket {
        let tat = format!("{at}.transport_socket");
        if let Some(any) = tls::tls_context(ts, ctx, &tat)? {
            out.tls = Some(tls::downstream(any, ctx, &tat)?);
        }
    }
    // Istio's in-band metadata exchange: offered (ALPN `istio-peer-exchange`) only by chains
    // with istio.metadata_exchange, as istio-proxy speaks it only there.
    let mx = chain.filters.iter().any(|f| {
        matches!(&f.config_type, Some(listener_pb::filter::ConfigType::TypedConfig(a)) if config_type(a) == ISTIO_MX)
    });
    if let (false, Some(t)) = (mx, out.tls.as_mut()) {
        t.alpn.retain(|a| a != ISTIO_PEER_EXCHANGE);
    }
    // istiod puts telemetry filters (istio.stats, istio.metadata_exchange, istio_authn) before
    // the proxy filter: ignored (docs/xds.md, "Istio"); exactly one other filter must remain.
    // Network rbac filters (istiod's AuthorizationPolicy), in order: the listener's `rbac`.
    // The network ext_authz filter (istiod's CUSTOM policy on a TCP chain) runs after the
    // rbac filters before it (its shadow one): the listener's `ext_authz`.
    for (i, f) in chain.filters.iter().enumerate() {
        if let Some(listener_pb::filter::ConfigType::TypedConfig(a)) = &f.config_type {
            let fat = format!("{at}.filters[{i}].typed_config");
            if a.type_url == rbac::NETWORK_RBAC_TYPE {
                out.rbac.push(rbac::network(a, ctx, &fat)?);
            } else if a.type_url == ext_authz::NETWORK_EXT_AUTHZ_TYPE {
                if out.ext_authz.is_some() {
                    return Err(ctx.err(
                        format!("{at}.filters[{i}]"),
                        "one network ext_authz filter per chain is supported",
                    ));
                }
                out.ext_authz = Some(ext_authz::network(a, &out.rbac, ctx, &fat)?);
            }
        }
    }
    let authz = |a: &Any| {
        a.type_url == rbac::NETWORK_RBAC_TYPE || a.type_url == ext_authz::NETWORK_EXT_AUTHZ_TYPE
    };
    let proxies: Vec<(usize, &listener_pb::Filter)> = chain
        .filters
        .iter()
        .enumerate()
        .filter(|(_, f)| match &f.config_type {
            Some(listener_pb::filter::ConfigType::TypedConfig(a)) => {
                ignorable_network_filter(a).is_none() && !authz(a)
            }
            _ => true,
        })
        .collect();
    let (fi, filter) = match proxies.as_slice() {
        [one] => *one,
        _ => {
            return Err(ctx.err(
                format!("{at}.filters"),
                format!(
                    "exactly one network filter besides Istio's telemetry filters is supported (got {}: {:?})",
                    proxies.len(),
                    proxies.iter().map(|(_, f)| f.name.as_str()).collect::<Vec<_>>()
                ),
            ))
        }
    };
    let fat = format!("{at}.filters[{fi}]");
    let any = match &filter.config_type {
        Some(listener_pb::filter::ConfigType::TypedConfig(any)) => any,
        Some(listener_pb::filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(ctx.err(
                format!("{fat}.config_discovery"),
                "filter config discovery (ECDS) is not supported",
            ))
        }
        None => return Err(ctx.err(format!("{fat}.typed_config"), "missing")),
    };
    let tat = format!("{fat}.typed_config");
    let mut rds = None;
    let mut route_limits = false;
    // A TypedStruct (Aeraki sends dubbo_proxy so) stands for the message it names.
    let wrapped = if any.type_url == UDPA_TYPED_STRUCT || any.type_url == XDS_TYPED_STRUCT {
        TypedStructFull::decode(any.value.as_slice())
            .ok()
            .filter(|t| t.type_url == DUBBO_PROXY_TYPE)
    } else {
        None
    };
    if let Some(t) = wrapped {
        let d = typed_struct::dubbo_proxy(&t.value.unwrap_or_default())
            .map_err(|(f, m)| ctx.err(format!("{tat}.value.{f}"), m))?;
        out.protocol = Protocol::Dubbo;
        out.dubbo = Some(dubbo_proxy(&d, ctx, &tat)?);
        return Ok(ChainRes {
            listener: out,
            rds: None,
            route_limits: false,
        });
    }
    if out.ext_authz.is_some() && any.type_url != TCP_PROXY_TYPE {
        return Err(ctx.err(
            tat,
            "envoy.filters.network.ext_authz is supported on tcp_proxy chains only (istiod's \
             HTTP chains carry the HTTP ext_authz filter)",
        ));
    }
    match any.type_url.as_str() {
        DUBBO_PROXY_TYPE => {
            let d: dubbo_pb::DubboProxy = unpack(any, DUBBO_PROXY_TYPE, ctx, &tat)?;
            out.protocol = Protocol::Dubbo;
            out.dubbo = Some(dubbo_proxy(&d, ctx, &tat)?);
        }
        GENERIC_PROXY_TYPE => {
            let g: gp_pb::GenericProxy = unpack(any, GENERIC_PROXY_TYPE, ctx, &tat)?;
            out.access_log = access_logs(&g.access_log, ctx, &format!("{tat}.access_log"))?;
            out.tracing = tracing_config(g.tracing.as_ref(), ctx, &format!("{tat}.tracing"))?;
            out.protocol = Protocol::Dubbo;
            out.dubbo = Some(DubboListener { routes: generic_proxy(&g, ctx, &tat)?, ..Default::default() });
        }
        HCM_TYPE => {
            let h: hcm_pb::HttpConnectionManager = unpack(any, HCM_TYPE, ctx, &tat)?;
            out.protocol = Protocol::Triple;
            let HcmRes {
                mut routes,
                rds: name,
                limit,
                rbac,
                jwt,
                ext_authz,
                http1,
                alpn_override,
                forward_client_cert,
                client_cert_details,
                server: (server_name, server_header_transformation, suppress_envoy_headers),
            } = hcm(&h, ctx, &tat)?;
            out.access_log = access_logs(&h.access_log, ctx, &format!("{tat}.access_log"))?;
            out.tracing = tracing_config(h.tracing.as_ref(), ctx, &format!("{tat}.tracing"))?;
            rds = name;
            route_limits = limit.is_some();
            if !route_limits {
                routes
                    .virtual_hosts
                    .iter_mut()
                    .flat_map(|h| &mut h.routes)
                    .for_each(|r| r.local_rate_limit = None);
            }
            out.local_rate_limit = limit.flatten();
            let mut t = TripleListener {
                rbac,
                jwt_authn: jwt,
                ext_authz,
                http1,
                alpn_override,
                forward_client_cert,
                client_cert_details,
                server_name,
                server_header_transformation,
                suppress_envoy_headers,
                ..TripleListener::default()
            };
            // The windows ringside gives callers, Envoy's unless the HCM's HTTP/2 options
            // give them (a caller connection holds at most its connection window in
            // ringside: credit goes back as bytes are relayed).
            let o = h.http2_protocol_options.as_ref();
            let h2at = format!("{tat}.http2_protocol_options");
            t.stream_window_bytes = h2_window(
                o.and_then(|o| o.initial_stream_window_size.as_ref()),
                ENVOY_STREAM_WINDOW_DEFAULT,
                ctx,
                &h2at,
                "initial_stream_window_size",
            )?;
            t.connection_window_bytes = h2_window(
                o.and_then(|o| o.initial_connection_window_size.as_ref()),
                ENVOY_CONNECTION_WINDOW_DEFAULT,
                ctx,
                &h2at,
                "initial_connection_window_size",
            )?;
            routes.fill(&mut t);
            out.triple = Some(t);
        }
        TCP_PROXY_TYPE => {
            if out.ext_authz.is_some() && fi < chain.filters.len() - 1 {
                return Err(ctx.err(fat, "tcp_proxy must be the chain's last filter"));
            }
            let t: tcp_pb::TcpProxy = unpack(any, TCP_PROXY_TYPE, ctx, &tat)?;
            out.protocol = Protocol::Tcp;
            let (cluster, idle) = tcp_proxy(&t, ctx, &tat)?;
            out.access_log = access_logs(&t.access_log, ctx, &format!("{tat}.access_log"))?;
            out.cluster = Some(cluster);
            if let Some(ms) = idle {
                out.idle_timeout_ms = ms;
            }
        }
        other => {
            return Err(ctx.err(
                tat,
                format!(
                    "network filter {:?} ({other}) is not supported; ringside takes dubbo_proxy, generic_proxy (dubbo codec), http_connection_manager or tcp_proxy",
                    filter.name
                ),
            ))
        }
    }
    Ok(ChainRes {
        listener: out,
        rds,
        route_limits,
    })
}

fn socket_address(
    a: Option<&core_pb::Address>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<SocketAddr, TranslateError> {
    let sa = match a.and_then(|a| a.address.as_ref()) {
        Some(core_pb::address::Address::SocketAddress(sa)) => sa,
        Some(_) => {
            return Err(ctx.err(
                at,
                "only socket_address is supported (no pipe or internal address)",
            ))
        }
        None => return Err(ctx.err(at, "missing")),
    };
    if sa.protocol != core_pb::socket_address::Protocol::Tcp as i32 {
        return Err(ctx.err(
            format!("{at}.socket_address.protocol"),
            "only TCP is supported",
        ));
    }
    if !sa.resolver_name.is_empty() {
        return Err(ctx.err(
            format!("{at}.socket_address.resolver_name"),
            "custom resolvers are not supported",
        ));
    }
    let port = match sa.port_specifier {
        Some(core_pb::socket_address::PortSpecifier::PortValue(p)) => {
            u16::try_from(p).map_err(|_| {
                ctx.err(
                    format!("{at}.socket_address.port_value"),
                    format!("{p} is not a port"),
                )
            })?
        }
        Some(core_pb::socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(ctx.err(
                format!("{at}.socket_address.named_port"),
                "named ports are not supported",
            ))
        }
        None => return Err(ctx.err(format!("{at}.socket_address.port_value"), "missing")),
    };
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        ctx.err(
            format!("{at}.socket_address.address"),
            format!(
                "{:?} is not an IP literal (hostnames are not resolved)",
                sa.address
            ),
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

// === dubbo_proxy ===

/// A dubbo_proxy as a Dubbo listener: its routes and its rbac filters.
fn dubbo_proxy(
    d: &dubbo_pb::DubboProxy,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<DubboListener, TranslateError> {
    if d.protocol_type != dubbo_pb::ProtocolType::Dubbo as i32 {
        return Err(ctx.err(
            format!("{at}.protocol_type"),
            format!("only Dubbo is supported (got {})", d.protocol_type),
        ));
    }
    if d.serialization_type != dubbo_pb::SerializationType::Hessian2 as i32 {
        return Err(ctx.err(
            format!("{at}.serialization_type"),
            format!("only Hessian2 is supported (got {})", d.serialization_type),
        ));
    }
    // Aeraki's inbound shape: `envoy.filters.dubbo.rbac` entries (DENY, then ALLOW), then the
    // router. Envoy runs them in order per request and nothing after the router.
    let mut rbac_filters = Vec::new();
    let mut routed = false;
    for (i, f) in d.dubbo_filters.iter().enumerate() {
        let fat = format!("{at}.dubbo_filters[{i}]");
        match f.name.as_str() {
            "envoy.filters.dubbo.router" => routed = true,
            rbac::DUBBO_RBAC_FILTER if routed => {
                return Err(ctx.err(
                    format!("{fat}.name"),
                    "an rbac filter after the router never runs (Envoy) and is refused here: put it before",
                ))
            }
            rbac::DUBBO_RBAC_FILTER => match &f.config {
                Some(a) => rbac_filters.push(rbac::dubbo(a, ctx, &format!("{fat}.config"))?),
                None => return Err(ctx.err(format!("{fat}.config"), "missing (an RBAC)")),
            },
            other => {
                return Err(ctx.err(
                    format!("{fat}.name"),
                    format!(
                        "dubbo filter {other:?} is not supported (only envoy.filters.dubbo.rbac and envoy.filters.dubbo.router)"
                    ),
                ))
            }
        }
    }
    if !routed && !d.dubbo_filters.is_empty() {
        return Err(ctx.err(
            format!("{at}.dubbo_filters"),
            "no envoy.filters.dubbo.router: requests would never be routed",
        ));
    }
    let (configs, rat) = match &d.route_specifier {
        Some(dubbo_pb::dubbo_proxy::RouteSpecifier::Drds(_)) => {
            return Err(ctx.err(
                format!("{at}.drds"),
                "dubbo RDS (drds) is not supported; inline route_config",
            ))
        }
        Some(dubbo_pb::dubbo_proxy::RouteSpecifier::MultipleRouteConfig(m)) => {
            if !d.route_config.is_empty() {
                return Err(ctx.err(
                    format!("{at}.multiple_route_config"),
                    "give route_config or multiple_route_config, not both",
                ));
            }
            (
                &m.route_config,
                format!("{at}.multiple_route_config.route_config"),
            )
        }
        None => (&d.route_config, format!("{at}.route_config")),
    };
    let mut out = Vec::new();
    for (i, rc) in configs.iter().enumerate() {
        let cat = format!("{rat}[{i}]");
        let mut base = DubboMatch::default();
        if !rc.interface.is_empty() && rc.interface != "*" {
            base.interface = Some(StringMatch {
                exact: Some(rc.interface.clone()),
                ..Default::default()
            });
        }
        if !rc.group.is_empty() {
            base.group = Some(rc.group.clone());
        }
        if !rc.version.is_empty() {
            base.version = Some(rc.version.clone());
        }
        for (j, r) in rc.routes.iter().enumerate() {
            let rat = format!("{cat}.routes[{j}]");
            let mut m = base.clone();
            if let Some(rm) = &r.r#match {
                if let Some(mm) = &rm.method {
                    if let Some(name) = &mm.name {
                        m.method = Some(string_match(&pattern(
                            name,
                            ctx,
                            &format!("{rat}.match.method.name"),
                        )?));
                    }
                    let sorted: BTreeMap<_, _> = mm.params_match.iter().collect();
                    for (index, p) in sorted {
                        let pat = format!("{rat}.match.method.params_match[{index}]");
                        use dubbo_pb::method_match::parameter_match_specifier::ParameterMatchSpecifier as P;
                        let a = match &p.parameter_match_specifier {
                            Some(P::ExactMatch(s)) => ArgumentMatch {
                                index: *index,
                                exact: Some(s.clone()),
                                prefix: None,
                                range: None,
                            },
                            Some(P::RangeMatch(r)) => ArgumentMatch {
                                index: *index,
                                exact: None,
                                prefix: None,
                                range: Some(Range {
                                    start: r.start,
                                    end: r.end,
                                }),
                            },
                            None => return Err(ctx.err(pat, "give exact_match or range_match")),
                        };
                        m.arguments.push(a);
                    }
                }
                for (k, h) in rm.headers.iter().enumerate() {
                    m.attachments.push(attachment_match(
                        h,
                        ctx,
                        &format!("{rat}.match.headers[{k}]"),
                    )?);
                }
            }
            let Some(action) = &r.route else {
                return Err(ctx.err(format!("{rat}.route"), "missing"));
            };
            if action.metadata_match.is_some() {
                return Err(ctx.err(
                    format!("{rat}.route.metadata_match"),
                    "subset load balancing is not supported",
                ));
            }
            let route = match &action.cluster_specifier {
                Some(dubbo_pb::route_action::ClusterSpecifier::Cluster(c)) => RouteAction {
                    cluster: Some(c.clone()),
                    ..Default::default()
                },
                Some(dubbo_pb::route_action::ClusterSpecifier::WeightedClusters(w)) => {
                    RouteAction {
                        weighted_clusters: weighted(
                            w,
                            ctx,
                            &format!("{rat}.route.weighted_clusters"),
                        )?,
                        ..Default::default()
                    }
                }
                None => {
                    return Err(ctx.err(format!("{rat}.route"), "give cluster or weighted_clusters"))
                }
            };
            out.push(DubboRoute {
                name: (!rc.name.is_empty()).then(|| rc.name.clone()),
                matcher: m,
                route,
                local_rate_limit: None,
                max_concurrent_requests: None,
            });
        }
    }
    Ok(DubboListener {
        routes: out,
        rbac: rbac_filters,
        ..Default::default()
    })
}

fn weighted(
    w: &route_pb::WeightedCluster,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Vec<WeightedCluster>, TranslateError> {
    let mut out = Vec::new();
    for (i, c) in w.clusters.iter().enumerate() {
        let cat = format!("{at}.clusters[{i}]");
        if !c.cluster_header.is_empty() {
            return Err(ctx.err(
                format!("{cat}.cluster_header"),
                "clusters named by a header are not supported",
            ));
        }
        if c.metadata_match.is_some() {
            return Err(ctx.err(
                format!("{cat}.metadata_match"),
                "subset load balancing is not supported",
            ));
        }
        let headers = header_mutations(
            (&c.request_headers_to_add, &c.request_headers_to_remove),
            (&c.response_headers_to_add, &c.response_headers_to_remove),
            ctx,
            &cat,
        )?;
        let host_rewrite = match &c.host_rewrite_specifier {
            Some(route_pb::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
                (!h.is_empty()).then(|| h.clone())
            }
            None => None,
        };
        out.push(WeightedCluster {
            name: c.name.clone(),
            weight: c.weight.as_ref().map_or(0, |w| w.value),
            headers,
            host_rewrite,
        });
    }
    if out.is_empty() {
        return Err(ctx.err(format!("{at}.clusters"), "must not be empty"));
    }
    Ok(out)
}

/// A string pattern from either Envoy's or xds's StringMatcher, before it becomes a
/// [`StringMatch`], [`HeaderMatch`] or [`AttachmentMatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pat {
    Exact(String),
    Prefix(String),
    Regex(String),
}

fn pattern(m: &matcher_pb::StringMatcher, ctx: &Ctx<'_>, at: &str) -> Result<Pat, TranslateError> {
    use matcher_pb::string_matcher::MatchPattern as M;
    if m.ignore_case {
        return Err(ctx.err(
            format!("{at}.ignore_case"),
            "case-insensitive matching is not supported",
        ));
    }
    Ok(match &m.match_pattern {
        Some(M::Exact(s)) => Pat::Exact(s.clone()),
        Some(M::Prefix(s)) => Pat::Prefix(s.clone()),
        Some(M::SafeRegex(r)) => Pat::Regex(r.regex.clone()),
        Some(M::Suffix(s)) => Pat::Regex(format!(".*{}", regex_escape(s))),
        Some(M::Contains(s)) => Pat::Regex(format!(".*{}.*", regex_escape(s))),
        Some(M::Custom(_)) => {
            return Err(ctx.err(
                format!("{at}.custom"),
                "custom string matchers are not supported",
            ))
        }
        None => return Err(ctx.err(at, "missing match pattern")),
    })
}

fn xds_pattern(
    m: &xds_matcher_pb::StringMatcher,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Pat, TranslateError> {
    use xds_matcher_pb::string_matcher::MatchPattern as M;
    if m.ignore_case {
        return Err(ctx.err(
            format!("{at}.ignore_case"),
            "case-insensitive matching is not supported",
        ));
    }
    Ok(match &m.match_pattern {
        Some(M::Exact(s)) => Pat::Exact(s.clone()),
        Some(M::Prefix(s)) => Pat::Prefix(s.clone()),
        Some(M::SafeRegex(r)) => Pat::Regex(r.regex.clone()),
        Some(M::Suffix(s)) => Pat::Regex(format!(".*{}", regex_escape(s))),
        Some(M::Contains(s)) => Pat::Regex(format!(".*{}.*", regex_escape(s))),
        Some(M::Custom(_)) => {
            return Err(ctx.err(
                format!("{at}.custom"),
                "custom string matchers are not supported",
            ))
        }
        None => return Err(ctx.err(at, "missing match pattern")),
    })
}

/// A route's `query_parameters[]` entry: `string_match` (exact, prefix, regex; suffix and
/// contains as regexes) or `present_match` (Envoy: present, whatever its value).
fn query_match(
    q: &route_pb::QueryParameterMatcher,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<QueryMatch, TranslateError> {
    use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    let mut out = QueryMatch {
        name: q.name.clone(),
        exact: None,
        prefix: None,
        regex: None,
        present: None,
    };
    if q.name.is_empty() {
        return Err(ctx.err(format!("{at}.name"), "empty"));
    }
    match &q.query_parameter_match_specifier {
        Some(Q::StringMatch(sm)) => match pattern(sm, ctx, &format!("{at}.string_match"))? {
            Pat::Exact(v) => out.exact = Some(v),
            Pat::Prefix(v) => out.prefix = Some(v),
            Pat::Regex(v) => out.regex = Some(v),
        },
        Some(Q::PresentMatch(_)) => out.present = Some(true),
        None => return Err(ctx.err(at, "missing string_match or present_match")),
    }
    Ok(out)
}

fn string_match(p: &Pat) -> StringMatch {
    match p {
        Pat::Exact(s) => StringMatch {
            exact: Some(s.clone()),
            ..Default::default()
        },
        Pat::Prefix(s) => StringMatch {
            prefix: Some(s.clone()),
            ..Default::default()
        },
        Pat::Regex(s) => StringMatch {
            regex: Some(s.clone()),
            ..Default::default()
        },
    }
}

/// An Envoy HeaderMatcher as a pattern, or `present`.
enum HeaderPat {
    Pat(Pat),
    Present(bool),
}

fn header_pat(
    h: &route_pb::HeaderMatcher,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<HeaderPat, TranslateError> {
    use route_pb::header_matcher::HeaderMatchSpecifier as H;
    if h.invert_match {
        return Err(ctx.err(
            format!("{at}.invert_match"),
            "inverted matches are not supported",
        ));
    }
    if h.treat_missing_header_as_empty {
        return Err(ctx.err(
            format!("{at}.treat_missing_header_as_empty"),
            "not supported",
        ));
    }
    Ok(match &h.header_match_specifier {
        Some(H::ExactMatch(s)) => HeaderPat::Pat(Pat::Exact(s.clone())),
        Some(H::PrefixMatch(s)) => HeaderPat::Pat(Pat::Prefix(s.clone())),
        Some(H::SafeRegexMatch(r)) => HeaderPat::Pat(Pat::Regex(r.regex.clone())),
        Some(H::SuffixMatch(s)) => HeaderPat::Pat(Pat::Regex(format!(".*{}", regex_escape(s)))),
        Some(H::ContainsMatch(s)) => HeaderPat::Pat(Pat::Regex(format!(".*{}.*", regex_escape(s)))),
        Some(H::StringMatch(m)) => HeaderPat::Pat(pattern(m, ctx, &format!("{at}.string_match"))?),
        Some(H::PresentMatch(b)) => HeaderPat::Present(*b),
        Some(H::RangeMatch(_)) => {
            return Err(ctx.err(
                format!("{at}.range_match"),
                "range header matches are not supported",
            ))
        }
        None => HeaderPat::Present(true),
    })
}

fn attachment_match(
    h: &route_pb::HeaderMatcher,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<AttachmentMatch, TranslateError> {
    let mut a = AttachmentMatch {
        name: h.name.clone(),
        exact: None,
        regex: None,
        present: None,
    };
    match header_pat(h, ctx, at)? {
        HeaderPat::Pat(Pat::Exact(s)) => a.exact = Some(s),
        HeaderPat::Pat(Pat::Prefix(s)) => a.regex = Some(format!("{}.*", regex_escape(&s))),
        HeaderPat::Pat(Pat::Regex(s)) => a.regex = Some(s),
        HeaderPat::Present(b) => a.present = Some(b),
    }
    Ok(a)
}

// === generic_proxy (dubbo codec) ===

fn generic_proxy(
    g: &gp_pb::GenericProxy,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Vec<DubboRoute>, TranslateError> {
    match &g.codec_config {
        Some(c)
            if c.typed_config
                .as_ref()
                .is_some_and(|a| a.type_url == DUBBO_CODEC_TYPE) => {}
        Some(c) => {
            return Err(ctx.err(
                format!("{at}.codec_config"),
                format!(
                    "codec {:?} is not supported (only the dubbo codec, DubboCodecConfig)",
                    c.name
                ),
            ))
        }
        None => return Err(ctx.err(format!("{at}.codec_config"), "missing")),
    }
    for (i, f) in g.filters.iter().enumerate() {
        if f.name != "envoy.filters.generic.router" {
            return Err(ctx.err(
                format!("{at}.filters[{i}].name"),
                format!("generic proxy filter {:?} is not supported (only envoy.filters.generic.router)", f.name),
            ));
        }
    }
    let rc = match &g.route_specifier {
        Some(gp_pb::generic_proxy::RouteSpecifier::RouteConfig(rc)) => rc,
        Some(gp_pb::generic_proxy::RouteSpecifier::GenericRds(_)) => {
            return Err(ctx.err(
                format!("{at}.generic_rds"),
                "generic proxy RDS is not supported; inline route_config",
            ))
        }
        None => return Err(ctx.err(format!("{at}.route_config"), "missing")),
    };
    let rat = format!("{at}.route_config");
    if !rc.virtual_hosts.is_empty() {
        return Err(ctx.err(
            format!("{rat}.virtual_hosts"),
            "virtual hosts are not supported; use routes",
        ));
    }
    let Some(m) = &rc.routes else {
        return Err(ctx.err(format!("{rat}.routes"), "missing"));
    };
    let mut out = Vec::new();
    flatten(
        m,
        &DubboMatch::default(),
        ctx,
        &format!("{rat}.routes"),
        &mut out,
    )?;
    Ok(out)
}

/// What a generic-proxy matcher input reads from a Dubbo request.
enum Input {
    Interface,
    Method,
    Property(String),
}

fn input(
    tec: Option<&envoy_types::pb::xds::core::v3::TypedExtensionConfig>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Input, TranslateError> {
    let Some(any) = tec.and_then(|t| t.typed_config.as_ref()) else {
        return Err(ctx.err(at, "missing"));
    };
    match any.type_url.as_str() {
        GP_SERVICE_INPUT_TYPE => Ok(Input::Interface),
        GP_METHOD_INPUT_TYPE => Ok(Input::Method),
        GP_PROPERTY_INPUT_TYPE => {
            let p: gp_matcher_pb::PropertyMatchInput = unpack(any, GP_PROPERTY_INPUT_TYPE, ctx, at)?;
            Ok(Input::Property(p.property_name))
        }
        other => Err(ctx.err(
            format!("{at}.typed_config"),
            format!("input {other:?} is not supported (ServiceMatchInput, MethodMatchInput, PropertyMatchInput)"),
        )),
    }
}

/// Adds one condition to `m`; refuses a second condition on the same input.
fn add_condition(
    m: &mut DubboMatch,
    input: Input,
    p: Pat,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<(), TranslateError> {
    let twice = || {
        ctx.err(
            at,
            "two conditions on the same input in one route are not supported",
        )
    };
    match input {
        Input::Interface => {
            if m.interface.replace(string_match(&p)).is_some() {
                return Err(twice());
            }
        }
        Input::Method => {
            if m.method.replace(string_match(&p)).is_some() {
                return Err(twice());
            }
        }
        Input::Property(name) if name == "version" || name == "group" => {
            let Pat::Exact(v) = p else {
                return Err(ctx.err(at, format!("property {name:?} takes exact matches only")));
            };
            let slot = if name == "version" {
                &mut m.version
            } else {
                &mut m.group
            };
            if slot.replace(v).is_some() {
                return Err(twice());
            }
        }
        Input::Property(name) => {
            let mut a = AttachmentMatch {
                name,
                exact: None,
                regex: None,
                present: None,
            };
            match p {
                Pat::Exact(s) => a.exact = Some(s),
                Pat::Prefix(s) => a.regex = Some(format!("{}.*", regex_escape(&s))),
                Pat::Regex(s) => a.regex = Some(s),
            }
            m.attachments.push(a);
        }
    }
    Ok(())
}

fn predicate(
    p: &xds_matcher_pb::matcher::matcher_list::Predicate,
    m: &mut DubboMatch,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<(), TranslateError> {
    use xds_matcher_pb::matcher::matcher_list::predicate::{single_predicate, MatchType};
    match &p.match_type {
        Some(MatchType::SinglePredicate(s)) => {
            let inp = input(
                s.input.as_ref(),
                ctx,
                &format!("{at}.single_predicate.input"),
            )?;
            let pat = match &s.matcher {
                Some(single_predicate::Matcher::ValueMatch(v)) => {
                    xds_pattern(v, ctx, &format!("{at}.single_predicate.value_match"))?
                }
                Some(single_predicate::Matcher::CustomMatch(_)) => {
                    return Err(ctx.err(
                        format!("{at}.single_predicate.custom_match"),
                        "custom matchers are not supported",
                    ))
                }
                None => {
                    return Err(ctx.err(format!("{at}.single_predicate.value_match"), "missing"))
                }
            };
            add_condition(m, inp, pat, ctx, &format!("{at}.single_predicate"))
        }
        Some(MatchType::AndMatcher(list)) => {
            for (i, p) in list.predicate.iter().enumerate() {
                predicate(p, m, ctx, &format!("{at}.and_matcher.predicate[{i}]"))?;
            }
            Ok(())
        }
        Some(MatchType::OrMatcher(_)) => {
            Err(ctx.err(format!("{at}.or_matcher"), "or_matcher is not supported"))
        }
        Some(MatchType::NotMatcher(_)) => {
            Err(ctx.err(format!("{at}.not_matcher"), "not_matcher is not supported"))
        }
        None => Err(ctx.err(at, "missing match_type")),
    }
}

/// Flattens a matcher (list or exact/prefix tree, nested through `on_match.matcher`) into
/// first-match-wins routes: Envoy goes on with the next entry when a nested matcher does not
/// match, which is what a flat list does.
fn flatten(
    m: &xds_matcher_pb::Matcher,
    base: &DubboMatch,
    ctx: &Ctx<'_>,
    at: &str,
    out: &mut Vec<DubboRoute>,
) -> Result<(), TranslateError> {
    use xds_matcher_pb::matcher::matcher_tree::TreeType;
    use xds_matcher_pb::matcher::MatcherType;
    match &m.matcher_type {
        Some(MatcherType::MatcherList(list)) => {
            for (i, fm) in list.matchers.iter().enumerate() {
                let fat = format!("{at}.matcher_list.matchers[{i}]");
                let mut mm = base.clone();
                let Some(p) = &fm.predicate else {
                    return Err(ctx.err(format!("{fat}.predicate"), "missing"));
                };
                predicate(p, &mut mm, ctx, &format!("{fat}.predicate"))?;
                let Some(om) = &fm.on_match else {
                    return Err(ctx.err(format!("{fat}.on_match"), "missing"));
                };
                on_match(om, &mm, ctx, &format!("{fat}.on_match"), out)?;
            }
        }
        Some(MatcherType::MatcherTree(tree)) => {
            let tat = format!("{at}.matcher_tree");
            let inp = || input(tree.input.as_ref(), ctx, &format!("{tat}.input"));
            match &tree.tree_type {
                Some(TreeType::ExactMatchMap(map)) => {
                    let sorted: BTreeMap<_, _> = map.map.iter().collect();
                    for (k, om) in sorted {
                        let mut mm = base.clone();
                        add_condition(&mut mm, inp()?, Pat::Exact(k.clone()), ctx, &tat)?;
                        on_match(
                            om,
                            &mm,
                            ctx,
                            &format!("{tat}.exact_match_map.map[{k:?}]"),
                            out,
                        )?;
                    }
                }
                Some(TreeType::PrefixMatchMap(map)) => {
                    // Longest prefix first, as Envoy's prefix map picks the longest match.
                    let mut keys: Vec<_> = map.map.iter().collect();
                    keys.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
                    for (k, om) in keys {
                        let mut mm = base.clone();
                        add_condition(&mut mm, inp()?, Pat::Prefix(k.clone()), ctx, &tat)?;
                        on_match(
                            om,
                            &mm,
                            ctx,
                            &format!("{tat}.prefix_match_map.map[{k:?}]"),
                            out,
                        )?;
                    }
                }
                Some(TreeType::CustomMatch(_)) => {
                    return Err(ctx.err(
                        format!("{tat}.custom_match"),
                        "custom matcher trees are not supported",
                    ))
                }
                None => return Err(ctx.err(format!("{tat}.tree_type"), "missing")),
            }
        }
        None => {}
    }
    if let Some(om) = &m.on_no_match {
        on_match(om, base, ctx, &format!("{at}.on_no_match"), out)?;
    }
    Ok(())
}

fn on_match(
    om: &xds_matcher_pb::matcher::OnMatch,
    m: &DubboMatch,
    ctx: &Ctx<'_>,
    at: &str,
    out: &mut Vec<DubboRoute>,
) -> Result<(), TranslateError> {
    use xds_matcher_pb::matcher::on_match::OnMatch as O;
    if om.keep_matching {
        return Err(ctx.err(
            format!("{at}.keep_matching"),
            "keep_matching is not supported",
        ));
    }
    match &om.on_match {
        Some(O::Matcher(inner)) => flatten(inner, m, ctx, &format!("{at}.matcher"), out),
        Some(O::Action(tec)) => {
            let aat = format!("{at}.action.typed_config");
            let Some(any) = &tec.typed_config else {
                return Err(ctx.err(aat, "missing"));
            };
            let a: gp_action_pb::RouteAction = unpack(any, GP_ROUTE_ACTION_TYPE, ctx, &aat)?;
            let mut route = match &a.cluster_specifier {
                Some(gp_action_pb::route_action::ClusterSpecifier::Cluster(c)) => RouteAction {
                    cluster: Some(c.clone()),
                    ..Default::default()
                },
                Some(gp_action_pb::route_action::ClusterSpecifier::WeightedClusters(w)) => {
                    RouteAction {
                        weighted_clusters: weighted(w, ctx, &format!("{aat}.weighted_clusters"))?,
                        ..Default::default()
                    }
                }
                None => return Err(ctx.err(aat, "give cluster or weighted_clusters")),
            };
            if let Some(t) = &a.timeout {
                route.timeout_ms = Some(timeout_ms(t, ctx, &format!("{aat}.timeout"))?);
            }
            out.push(DubboRoute {
                name: (!a.name.is_empty()).then(|| a.name.clone()),
                matcher: m.clone(),
                route,
                local_rate_limit: None,
                max_concurrent_requests: None,
            });
            Ok(())
        }
        None => Err(ctx.err(at, "missing action or matcher")),
    }
}

/// Envoy's 0 means "no timeout": the largest ringside allows.
fn timeout_ms(d: &Duration, ctx: &Ctx<'_>, at: &str) -> Result<u64, TranslateError> {
    let ms = duration_ms(d, ctx, at, config::REQUEST_TIMEOUT_MS_MAX)?;
    Ok(if ms == 0 {
        config::REQUEST_TIMEOUT_MS_MAX
    } else {
        ms
    })
}

// === tcp_proxy ===

fn tcp_proxy(
    t: &tcp_pb::TcpProxy,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<(String, Option<u64>), TranslateError> {
    if t.on_demand.is_some() {
        return Err(ctx.err(
            format!("{at}.on_demand"),
            "on-demand clusters are not supported",
        ));
    }
    if t.metadata_match.is_some() {
        return Err(ctx.err(
            format!("{at}.metadata_match"),
            "subset load balancing is not supported",
        ));
    }
    if t.tunneling_config.is_some() {
        return Err(ctx.err(
            format!("{at}.tunneling_config"),
            "tunneling is not supported",
        ));
    }
    if !t.proxy_protocol_tlvs.is_empty() {
        return Err(ctx.err(
            format!("{at}.proxy_protocol_tlvs"),
            "PROXY protocol is not supported",
        ));
    }
    let cluster = match &t.cluster_specifier {
        Some(tcp_pb::tcp_proxy::ClusterSpecifier::Cluster(c)) => c.clone(),
        Some(tcp_pb::tcp_proxy::ClusterSpecifier::WeightedClusters(w)) if w.clusters.len() == 1 => {
            w.clusters[0].name.clone()
        }
        Some(tcp_pb::tcp_proxy::ClusterSpecifier::WeightedClusters(_)) => {
            return Err(ctx.err(
                format!("{at}.weighted_clusters"),
                "a tcp listener takes one cluster",
            ))
        }
        None => return Err(ctx.err(format!("{at}.cluster"), "missing")),
    };
    let idle = match &t.idle_timeout {
        Some(d) => match duration_ms(
            d,
            ctx,
            &format!("{at}.idle_timeout"),
            config::IDLE_TIMEOUT_MS_MAX,
        )? {
            0 => None, // Envoy: disabled; ringside keeps its default.
            ms => Some(ms),
        },
        None => None,
    };
    Ok((cluster, idle))
}

// === access logs ===

const FILE_ACCESS_LOG_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_ACCESS_LOG_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_ACCESS_LOG_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

const OPENTELEMETRY_TRACER_TYPE: &str =
    "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";

/// An HTTP connection manager's (or generic proxy's) `tracing`: the OpenTelemetry tracer over
/// gRPC (`grpc_service.envoy_grpc`) is translated; a `tracing` without a provider traces
/// nothing (as in Envoy); any other provider (Istio's default is Zipkin), or the OpenTelemetry
/// tracer over HTTP or a Google gRPC client, is accepted and ignored with a warning: tracing
/// only observes, and refusing it would refuse the mesh's listeners.
fn tracing_config(
    t: Option<&hcm_pb::http_connection_manager::Tracing>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<config::Tracing>, TranslateError> {
    use envoy_types::pb::envoy::config::trace::v3 as trace_pb;
    let Some(t) = t else { return Ok(None) };
    let Some(p) = &t.provider else {
        return Ok(None);
    };
    let pat = format!("{at}.provider");
    let any = match &p.config_type {
        Some(trace_pb::tracing::http::ConfigType::TypedConfig(any))
            if any.type_url == OPENTELEMETRY_TRACER_TYPE =>
        {
            any
        }
        _ => {
            tracing::warn!(field = %pat, tracer = %p.name, "tracer not supported (ringside exports with envoy.tracers.opentelemetry): calls not traced");
            return Ok(None);
        }
    };
    let tat = format!("{pat}.typed_config");
    let o: trace_pb::OpenTelemetryConfig = unpack(any, OPENTELEMETRY_TRACER_TYPE, ctx, &tat)?;
    let cluster = match o
        .grpc_service
        .as_ref()
        .and_then(|g| g.target_specifier.as_ref())
    {
        Some(core_pb::grpc_service::TargetSpecifier::EnvoyGrpc(e))
            if !e.cluster_name.is_empty() =>
        {
            e.cluster_name.clone()
        }
        _ => {
            tracing::warn!(field = %tat, "OpenTelemetry tracer without grpc_service.envoy_grpc (OTLP over HTTP, Google gRPC) not supported: calls not traced");
            return Ok(None);
        }
    };
    let random_sampling = match &t.random_sampling {
        Some(p) if !(0.0..=100.0).contains(&p.value) => {
            return Err(ctx.err(
                format!("{at}.random_sampling.value"),
                format!("{} is not a percentage (0 to 100)", p.value),
            ))
        }
        Some(p) => p.value,
        None => config::TRACING_RANDOM_SAMPLING_DEFAULT,
    };
    Ok(Some(config::Tracing {
        collector_cluster: cluster,
        service_name: if o.service_name.is_empty() {
            config::TRACING_SERVICE_NAME_DEFAULT.to_string()
        } else {
            o.service_name
        },
        random_sampling: config::Percent(random_sampling),
        span_kind: config::SpanKind::Client,
        // Envoy always sends the context it started.
        propagate_unsampled: true,
    }))
}

/// A filter's `access_log` entries: file, stdout and stderr loggers with their format (the
/// dataplane compiles it and NACKs an operator it does not know). Other loggers (gRPC access
/// log service, OpenTelemetry, ...) and access-log `filter`s are telemetry ringside does not
/// have: skipped with a warning, never a NACK (docs/xds.md).
fn access_logs(
    logs: &[accesslog_pb::AccessLog],
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Vec<config::AccessLog>, TranslateError> {
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
        file_access_log::AccessLogFormat as F, FileAccessLog,
    };
    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
        stderr_access_log::AccessLogFormat as E, stdout_access_log::AccessLogFormat as O,
        StderrAccessLog, StdoutAccessLog,
    };
    let mut out = Vec::new();
    for (i, l) in logs.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let Some(accesslog_pb::access_log::ConfigType::TypedConfig(any)) = &l.config_type else {
            return Err(ctx.err(format!("{at}.typed_config"), "missing"));
        };
        let filter = match &l.filter {
            None => None,
            Some(f) => {
                let fat = format!("{at}.filter");
                let f = access_log_filter(f, ctx, &fat, 0)?;
                if f.is_none() {
                    tracing::warn!(field = %fat, "access log filter not supported (ringside takes status_code, duration, runtime, response_flag, header, grpc_status, and, or): every call is logged");
                }
                f
            }
        };
        let (path, format) = match any.type_url.as_str() {
            FILE_ACCESS_LOG_TYPE => {
                let f: FileAccessLog = unpack(any, FILE_ACCESS_LOG_TYPE, ctx, &at)?;
                #[allow(deprecated)]
                let format = match f.access_log_format {
                    None => None,
                    Some(F::LogFormat(s)) => Some(substitution_format(&s, ctx, &at)?),
                    Some(F::Format(s)) => Some((Some(s), None)),
                    Some(F::JsonFormat(j)) | Some(F::TypedJsonFormat(j)) => {
                        Some((None, Some(struct_json(&j))))
                    }
                };
                if f.path.is_empty() {
                    return Err(ctx.err(format!("{at}.path"), "missing"));
                }
                (f.path, format)
            }
            STDOUT_ACCESS_LOG_TYPE => {
                let f: StdoutAccessLog = unpack(any, STDOUT_ACCESS_LOG_TYPE, ctx, &at)?;
                let format = match f.access_log_format {
                    Some(O::LogFormat(s)) => Some(substitution_format(&s, ctx, &at)?),
                    None => None,
                };
                ("/dev/stdout".to_string(), format)
            }
            STDERR_ACCESS_LOG_TYPE => {
                let f: StderrAccessLog = unpack(any, STDERR_ACCESS_LOG_TYPE, ctx, &at)?;
                let format = match f.access_log_format {
                    Some(E::LogFormat(s)) => Some(substitution_format(&s, ctx, &at)?),
                    None => None,
                };
                ("/dev/stderr".to_string(), format)
            }
            other => {
                tracing::warn!(field = %at, logger = other, "access logger not supported: skipped");
                continue;
            }
        };
        let (format, json_format) = format.unwrap_or((None, None));
        out.push(config::AccessLog {
            path,
            format,
            json_format,
            filter,
        });
    }
    Ok(out)
}

/// An access log's `filter`: status code, duration, runtime (its `percent_sampled`: ringside
/// has no runtime layer to look `runtime_key` up in), response flag, and, or. Ok(None): the
/// filter (or a filter in it) is one ringside does not evaluate (headers, metadata, gRPC
/// status, CEL...): the caller logs every call rather than guess.
fn access_log_filter(
    f: &accesslog_pb::AccessLogFilter,
    ctx: &Ctx<'_>,
    at: &str,
    depth: usize,
) -> Result<Option<config::AccessLogFilter>, TranslateError> {
    use accesslog_pb::access_log_filter::FilterSpecifier as F;
    use accesslog_pb::comparison_filter::Op;
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
    let comparison = |c: &Option<accesslog_pb::ComparisonFilter>, field: &str| {
        let cat = format!("{at}.{field}.comparison");
        let Some(c) = c else {
            return Err(ctx.err(cat, "missing"));
        };
        let op = match Op::try_from(c.op) {
            Ok(Op::Eq) => config::ComparisonOp::Eq,
            Ok(Op::Ge) => config::ComparisonOp::Ge,
            Ok(Op::Le) => config::ComparisonOp::Le,
            Ok(Op::Ne) => config::ComparisonOp::Ne,
            Err(_) => return Err(ctx.err(format!("{cat}.op"), format!("unknown op {}", c.op))),
        };
        let value = c.value.as_ref().map_or(0, |v| u64::from(v.default_value));
        Ok(config::Comparison { op, value })
    };
    let list = |fs: &[accesslog_pb::AccessLogFilter], field: &str| {
        if depth >= config::ACCESS_LOG_FILTER_DEPTH_MAX {
            return Err(ctx.err(
                format!("{at}.{field}"),
                format!(
                    "filters nest deeper than {}",
                    config::ACCESS_LOG_FILTER_DEPTH_MAX
                ),
            ));
        }
        if fs.len() < 2 {
            return Err(ctx.err(
                format!("{at}.{field}.filters"),
                "needs at least two filters",
            ));
        }
        let mut out = Vec::with_capacity(fs.len());
        for (i, f) in fs.iter().enumerate() {
            match access_log_filter(f, ctx, &format!("{at}.{field}.filters[{i}]"), depth + 1)? {
                Some(f) => out.push(f),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    };
    let mut out = config::AccessLogFilter::default();
    match &f.filter_specifier {
        None => return Err(ctx.err(at.to_string(), "no filter set")),
        Some(F::StatusCodeFilter(s)) => {
            out.status_code = Some(comparison(&s.comparison, "status_code_filter")?)
        }
        Some(F::DurationFilter(d)) => {
            out.duration_ms = Some(comparison(&d.comparison, "duration_filter")?)
        }
        Some(F::RuntimeFilter(r)) => {
            // Envoy's default: 0 %.
            let percent = match &r.percent_sampled {
                None => 0.0,
                Some(p) => {
                    let denominator = match D::try_from(p.denominator) {
                        Ok(D::Hundred) => 100.0,
                        Ok(D::TenThousand) => 10_000.0,
                        Ok(D::Million) => 1_000_000.0,
                        Err(_) => {
                            return Err(ctx.err(
                                format!("{at}.runtime_filter.percent_sampled.denominator"),
                                format!("unknown denominator {}", p.denominator),
                            ))
                        }
                    };
                    (f64::from(p.numerator) / denominator * 100.0).min(100.0)
                }
            };
            out.runtime_percent = Some(config::Percent(percent));
        }
        Some(F::ResponseFlagFilter(r)) => {
            for (i, flag) in r.flags.iter().enumerate() {
                if !config::RESPONSE_FLAG_NAMES.contains(&flag.as_str()) {
                    return Err(ctx.err(
                        format!("{at}.response_flag_filter.flags[{i}]"),
                        format!("{flag:?} is not a response flag"),
                    ));
                }
            }
            out.response_flags = Some(r.flags.clone());
        }
        Some(F::HeaderFilter(h)) => {
            let Some(m) = &h.header else {
                return Err(ctx.err(format!("{at}.header_filter.header"), "missing"));
            };
            // Inversion and missing-as-empty are the filter's own; the rest is a route header
            // matcher. One ringside cannot take (a range) logs every call.
            let plain = route_pb::HeaderMatcher {
                invert_match: false,
                treat_missing_header_as_empty: false,
                ..m.clone()
            };
            let Ok(pat) = header_pat(&plain, ctx, &format!("{at}.header_filter.header")) else {
                return Ok(None);
            };
            let mut hf = config::AccessLogHeaderFilter {
                name: m.name.to_ascii_lowercase(),
                invert: m.invert_match,
                treat_missing_as_empty: m.treat_missing_header_as_empty,
                ..Default::default()
            };
            match pat {
                HeaderPat::Pat(Pat::Exact(v)) => hf.exact = Some(v),
                HeaderPat::Pat(Pat::Prefix(v)) => hf.prefix = Some(v),
                HeaderPat::Pat(Pat::Regex(v)) => hf.regex = Some(v),
                HeaderPat::Present(b) => hf.present = Some(b),
            }
            out.header = Some(hf);
        }
        Some(F::GrpcStatusFilter(g)) => {
            let mut statuses = Vec::with_capacity(g.statuses.len());
            for (i, &n) in g.statuses.iter().enumerate() {
                let Some(name) = usize::try_from(n)
                    .ok()
                    .and_then(|n| config::GRPC_STATUS_NAMES.get(n))
                else {
                    return Err(ctx.err(
                        format!("{at}.grpc_status_filter.statuses[{i}]"),
                        format!("unknown gRPC status {n}"),
                    ));
                };
                statuses.push(name.to_string());
            }
            out.grpc_status = Some(config::AccessLogGrpcStatusFilter {
                statuses,
                exclude: g.exclude,
            });
        }
        Some(F::AndFilter(a)) => match list(&a.filters, "and_filter")? {
            Some(l) => out.and = Some(l),
            None => return Ok(None),
        },
        Some(F::OrFilter(o)) => match list(&o.filters, "or_filter")? {
            Some(l) => out.or = Some(l),
            None => return Ok(None),
        },
        Some(_) => return Ok(None),
    }
    Ok(Some(out))
}

type FormatPair = (
    Option<String>,
    Option<serde_json::Map<String, serde_json::Value>>,
);

/// A `SubstitutionFormatString`: a text format (inline) or a JSON format.
fn substitution_format(
    s: &core_pb::SubstitutionFormatString,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<FormatPair, TranslateError> {
    use core_pb::data_source::Specifier as D;
    use core_pb::substitution_format_string::Format as S;
    if !s.formatters.is_empty() {
        return Err(ctx.err(
            format!("{at}.log_format.formatters"),
            "formatter extensions are not supported",
        ));
    }
    #[allow(deprecated)]
    match &s.format {
        Some(S::TextFormat(t)) => Ok((Some(t.clone()), None)),
        Some(S::TextFormatSource(d)) => match &d.specifier {
            Some(D::InlineString(t)) => Ok((Some(t.clone()), None)),
            Some(D::InlineBytes(b)) => Ok((Some(String::from_utf8_lossy(b).into_owned()), None)),
            _ => Err(ctx.err(
                format!("{at}.log_format.text_format_source"),
                "only inline_string or inline_bytes",
            )),
        },
        Some(S::JsonFormat(j)) => Ok((None, Some(struct_json(j)))),
        None => Ok((None, None)),
    }
}

/// A `google.protobuf.Struct` as JSON.
fn struct_json(
    s: &envoy_types::pb::google::protobuf::Struct,
) -> serde_json::Map<String, serde_json::Value> {
    use envoy_types::pb::google::protobuf::value::Kind;
    fn value(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
        match &v.kind {
            None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
            Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
            Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_json(s)),
            Some(Kind::ListValue(l)) => {
                serde_json::Value::Array(l.values.iter().map(value).collect())
            }
        }
    }
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value(v)))
        .collect()
}

// === http_connection_manager ===

/// An HTTP connection manager's `local_ratelimit` filter: `None` without one (routes' own
/// configs are then ignored, as Envoy ignores per-filter configs of filters not in the chain),
/// else its filter-level bucket, if it limits.
type RateLimitFilter = Option<Option<TokenBucket>>;

/// What an HTTP connection manager translates to: its inline routes or RDS name, its
/// `local_ratelimit` filter, its `rbac` filters in order.
struct HcmRes {
    routes: RouteTable,
    rds: Option<String>,
    limit: RateLimitFilter,
    rbac: Vec<config::Rbac>,
    /// Its `jwt_authn` filter.
    jwt: Option<config::JwtAuthn>,
    /// Its `ext_authz` filter.
    ext_authz: Option<config::ExtAuthz>,
    /// `codec_type` AUTO or HTTP1: HTTP/1.1 connections are served too.
    http1: bool,
    /// Istio's `istio.alpn` filter.
    alpn_override: Option<config::AlpnOverride>,
    forward_client_cert: config::ForwardClientCert,
    client_cert_details: config::ClientCertDetails,
    /// `server_name`, `server_header_transformation`, the router's `suppress_envoy_headers`.
    server: (Option<String>, config::ServerHeader, bool),
}

/// An HTTP connection manager: its inline routes or RDS name, and its filters.
fn hcm(
    h: &hcm_pb::HttpConnectionManager,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<HcmRes, TranslateError> {
    let mut limit = None;
    let mut rbac = Vec::new();
    let mut jwt = None;
    let mut ext_authz = None;
    let mut alpn_override = None;
    use hcm_pb::http_connection_manager::{CodecType, RouteSpecifier};
    let http1 = match CodecType::try_from(h.codec_type) {
        Ok(CodecType::Auto | CodecType::Http1) => true,
        Ok(CodecType::Http2) => false,
        _ => {
            return Err(ctx.err(
                format!("{at}.codec_type"),
                format!(
                    "only AUTO, HTTP1 or HTTP2 is supported (got {})",
                    h.codec_type
                ),
            ))
        }
    };
    // They rewrite `:authority` before routing and on the wire; ringside forwards it as sent.
    let strip = match h.strip_port_mode {
        Some(hcm_pb::http_connection_manager::StripPortMode::StripAnyHostPort(true)) => {
            Some("strip_any_host_port")
        }
        _ if h.strip_matching_host_port => Some("strip_matching_host_port"),
        _ if h.strip_trailing_host_dot => Some("strip_trailing_host_dot"),
        _ => None,
    };
    if let Some(field) = strip {
        return Err(ctx.err(
            join(at, field),
            "rewriting :authority is not supported (route configurations' \
             ignore_port_in_host_matching is)",
        ));
    }
    let (forward_client_cert, client_cert_details) = client_cert(h, ctx, at)?;
    use hcm_pb::http_connection_manager::ServerHeaderTransformation as Sht;
    let transformation = match Sht::try_from(h.server_header_transformation) {
        Ok(Sht::Overwrite) => config::ServerHeader::Overwrite,
        Ok(Sht::AppendIfAbsent) => config::ServerHeader::AppendIfAbsent,
        Ok(Sht::PassThrough) => config::ServerHeader::PassThrough,
        Err(_) => {
            return Err(ctx.err(
                join(at, "server_header_transformation"),
                format!("unknown value {}", h.server_header_transformation),
            ))
        }
    };
    let mut suppress_envoy_headers = false;
    for (i, f) in h.http_filters.iter().enumerate() {
        let typed = match &f.config_type {
            Some(hcm_pb::http_filter::ConfigType::TypedConfig(a)) => Some(a),
            _ => None,
        };
        let is_router = f.name == "envoy.filters.http.router"
            || typed.is_some_and(|a| a.type_url == HTTP_ROUTER_TYPE);
        if is_router {
            if let Some(a) = typed.filter(|a| a.type_url == HTTP_ROUTER_TYPE) {
                let fat = format!("{at}.http_filters[{i}].typed_config");
                let r: router_pb::Router = unpack(a, HTTP_ROUTER_TYPE, ctx, &fat)?;
                suppress_envoy_headers = r.suppress_envoy_headers;
            }
            continue;
        }
        if let Some(a) = typed.filter(|a| a.type_url == HTTP_LOCAL_RATELIMIT) {
            let fat = format!("{at}.http_filters[{i}].typed_config");
            let rl: http_rl_pb::LocalRateLimit = unpack(a, HTTP_LOCAL_RATELIMIT, ctx, &fat)?;
            limit = Some(http_local_rate_limit(&rl, ctx, &fat)?);
            continue;
        }
        // istio.alpn: the ALPN of TLS upstream connections per upstream protocol.
        if let Some(a) = typed.filter(|a| config_type(a) == ISTIO_ALPN) {
            let fat = format!("{at}.http_filters[{i}].typed_config");
            alpn_override = Some(alpn_filter(a).map_err(|e| ctx.err(fat, e))?);
            continue;
        }
        // istiod's AuthorizationPolicy (DENY, ALLOW, AUDIT filters): checked per call before
        // routing, as Envoy runs them before the router.
        // istiod's RequestAuthentication: checked per call before the rbac filters (istiod
        // puts it first; one after an rbac filter would change what that filter sees).
        if let Some(a) = typed.filter(|a| a.type_url == jwt::JWT_AUTHN_TYPE) {
            let fat = format!("{at}.http_filters[{i}]");
            // istiod's order puts a CUSTOM policy's shadow rbac and ext_authz filters first:
            // the jwt_authn filter may follow them (nothing between).
            let after_ext_authz = ext_authz
                .as_ref()
                .is_some_and(|x: &config::ExtAuthz| x.after_rbac == rbac.len());
            if jwt.is_some() || (!rbac.is_empty() && !after_ext_authz) {
                return Err(ctx.err(
                    fat,
                    "one jwt_authn filter, before every rbac filter or right after the \
                     ext_authz filter, is supported",
                ));
            }
            if let Some(x) = ext_authz.as_mut() {
                x.before_jwt_authn = true;
            }
            jwt = Some(jwt::http(
                a,
                &h.stat_prefix,
                ctx,
                &format!("{fat}.typed_config"),
            )?);
            continue;
        }
        if let Some(a) = typed.filter(|a| a.type_url == rbac::HTTP_RBAC_TYPE) {
            let fat = format!("{at}.http_filters[{i}].typed_config");
            rbac.push(rbac::http(a, &h.stat_prefix, ctx, &fat)?);
            continue;
        }
        // istiod's CUSTOM AuthorizationPolicy: between the rbac filters before it (the shadow
        // one that enables it) and after it, as Envoy runs them.
        if let Some(a) = typed.filter(|a| a.type_url == ext_authz::EXT_AUTHZ_TYPE) {
            let fat = format!("{at}.http_filters[{i}]");
            if ext_authz.is_some() {
                return Err(ctx.err(fat, "one ext_authz filter is supported"));
            }
            ext_authz = Some(ext_authz::http(
                a,
                &h.stat_prefix,
                &rbac,
                ctx,
                &format!("{fat}.typed_config"),
            )?);
            continue;
        }
        // The filters istiod always adds: ignored when they only feed telemetry or act on
        // what ringside refuses anyway (docs/xds.md, "Istio"); refused otherwise.
        let why = match typed {
            Some(a) => http_filter_decision(a).err(),
            None => Some("only envoy.filters.http.router and the filters docs/xds.md lists".into()),
        };
        if let Some(why) = why {
            return Err(ctx.err(
                format!("{at}.http_filters[{i}]"),
                format!("http filter {:?}: {why}", f.name),
            ));
        }
    }
    let server = (
        (!h.server_name.is_empty()).then(|| h.server_name.clone()),
        transformation,
        suppress_envoy_headers,
    );
    match &h.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => Ok(HcmRes {
            routes: route_configuration(rc, ctx, &format!("{at}.route_config"))?,
            rds: None,
            limit,
            rbac,
            jwt,
            ext_authz,
            http1,
            alpn_override,
            forward_client_cert,
            client_cert_details,
            server,
        }),
        Some(RouteSpecifier::Rds(rds)) => {
            let rat = format!("{at}.rds");
            if rds.route_config_name.is_empty() {
                return Err(ctx.err(format!("{rat}.route_config_name"), "must not be empty"));
            }
            if let Some(cs) = &rds.config_source {
                ads_source(cs, ctx, &format!("{rat}.config_source"))?;
            }
            Ok(HcmRes {
                routes: RouteTable::default(),
                rds: Some(rds.route_config_name.clone()),
                limit,
                rbac,
                jwt,
                ext_authz,
                http1,
                alpn_override,
                forward_client_cert,
                client_cert_details,
                server,
            })
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => Err(ctx.err(
            format!("{at}.scoped_routes"),
            "scoped routes are not supported",
        )),
        None => Err(ctx.err(
            format!("{at}.route_config"),
            "missing (give route_config or rds)",
        )),
    }
}

/// `forward_client_cert_details` and `set_current_client_cert_details`.
fn client_cert(
    h: &hcm_pb::HttpConnectionManager,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<(config::ForwardClientCert, config::ClientCertDetails), TranslateError> {
    use config::ForwardClientCert as F;
    use hcm_pb::http_connection_manager::ForwardClientCertDetails as P;
    let mode = match P::try_from(h.forward_client_cert_details) {
        Ok(P::Sanitize) => F::Sanitize,
        Ok(P::ForwardOnly) => F::ForwardOnly,
        Ok(P::AppendForward) => F::AppendForward,
        Ok(P::SanitizeSet) => F::SanitizeSet,
        Ok(P::AlwaysForwardOnly) => F::AlwaysForwardOnly,
        Err(_) => {
            return Err(ctx.err(
                join(at, "forward_client_cert_details"),
                format!("unknown value {}", h.forward_client_cert_details),
            ))
        }
    };
    let d = h
        .set_current_client_cert_details
        .as_ref()
        .map(|d| config::ClientCertDetails {
            subject: d.subject.as_ref().is_some_and(|v| v.value),
            cert: d.cert,
            chain: d.chain,
            dns: d.dns,
            uri: d.uri,
        })
        .unwrap_or_default();
    Ok((mode, d))
}

fn ads_source(cs: &core_pb::ConfigSource, ctx: &Ctx<'_>, at: &str) -> Result<(), TranslateError> {
    match &cs.config_source_specifier {
        Some(core_pb::config_source::ConfigSourceSpecifier::Ads(_)) => Ok(()),
        _ => Err(ctx.err(at, "only an ADS config source (ads: {}) is supported")),
    }
}

pub(crate) fn decode_route(any: &Any) -> Result<(String, RouteTable), TranslateError> {
    let rc: route_pb::RouteConfiguration = decode_top(any, ROUTE_TYPE)?;
    let ctx = Ctx {
        kind: "route configuration",
        name: &rc.name,
    };
    if rc.name.is_empty() {
        return Err(ctx.err("name", "must not be empty"));
    }
    Ok((rc.name.clone(), route_configuration(&rc, &ctx, "")?))
}

fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_string()
    } else {
        format!("{at}.{field}")
    }
}

/// One level's header mutations (Envoy's `request_headers_to_add`, ...), with Envoy's rules:
/// names lower-cased, no pseudo-header nor `host`, the deprecated `append` (true: append,
/// false: overwrite) not together with `append_action`. Value formats are compiled (and an
/// operator ringside cannot fill refused) when the routes are.
fn header_mutations(
    (add, remove): (&[core_pb::HeaderValueOption], &[String]),
    (add_resp, remove_resp): (&[core_pb::HeaderValueOption], &[String]),
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<config::HeaderMutations, TranslateError> {
    let adds = |list: &[core_pb::HeaderValueOption], field: &str| {
        list.iter()
            .enumerate()
            .map(|(k, o)| header_to_add(o, ctx, &join(at, &format!("{field}[{k}]"))))
            .collect::<Result<Vec<_>, _>>()
    };
    let lower = |l: &[String]| l.iter().map(|n| n.to_ascii_lowercase()).collect();
    let m = config::HeaderMutations {
        request_headers_to_add: adds(add, "request_headers_to_add")?,
        request_headers_to_remove: lower(remove),
        response_headers_to_add: adds(add_resp, "response_headers_to_add")?,
        response_headers_to_remove: lower(remove_resp),
    };
    if let Some((field, message)) = m.problems(at).into_iter().next() {
        return Err(ctx.err(field, message));
    }
    Ok(m)
}

fn header_to_add(
    o: &core_pb::HeaderValueOption,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<config::HeaderToAdd, TranslateError> {
    use config::AppendAction as A;
    use core_pb::header_value_option::HeaderAppendAction as P;
    let Some(h) = &o.header else {
        return Err(ctx.err(join(at, "header"), "missing"));
    };
    let value = match (h.value.is_empty(), h.raw_value.is_empty()) {
        (_, true) => h.value.clone(),
        (true, false) => String::from_utf8(h.raw_value.clone())
            .map_err(|_| ctx.err(join(at, "header.raw_value"), "not UTF-8"))?,
        (false, false) => {
            return Err(ctx.err(
                join(at, "header"),
                "only one of value or raw_value can be set",
            ))
        }
    };
    let action = match (&o.append, P::try_from(o.append_action)) {
        (Some(_), Ok(p)) if p != P::AppendIfExistsOrAdd => {
            return Err(ctx.err(
                join(at, "append"),
                "both append and append_action are set, which Envoy refuses",
            ))
        }
        (Some(a), _) if a.value => A::AppendIfExistsOrAdd,
        (Some(_), _) => A::OverwriteIfExistsOrAdd,
        (None, Ok(P::AppendIfExistsOrAdd)) => A::AppendIfExistsOrAdd,
        (None, Ok(P::AddIfAbsent)) => A::AddIfAbsent,
        (None, Ok(P::OverwriteIfExistsOrAdd)) => A::OverwriteIfExistsOrAdd,
        (None, Ok(P::OverwriteIfExists)) => A::OverwriteIfExists,
        (_, Err(_)) => {
            return Err(ctx.err(
                join(at, "append_action"),
                format!("unknown value {}", o.append_action),
            ))
        }
    };
    Ok(config::HeaderToAdd {
        name: h.key.to_ascii_lowercase(),
        value,
        append_action: action,
        keep_empty_value: o.keep_empty_value,
    })
}

fn route_configuration(
    rc: &route_pb::RouteConfiguration,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<RouteTable, TranslateError> {
    if rc.vhds.is_some() {
        return Err(ctx.err(join(at, "vhds"), "VHDS is not supported"));
    }
    if !rc.vhost_header.is_empty() {
        return Err(ctx.err(
            join(at, "vhost_header"),
            "virtual hosts are chosen by :authority only",
        ));
    }
    if !rc.internal_only_headers.is_empty() {
        return Err(ctx.err(join(at, "internal_only_headers"), "not supported"));
    }
    if !rc.cluster_specifier_plugins.is_empty() {
        return Err(ctx.err(join(at, "cluster_specifier_plugins"), "not supported"));
    }
    if !rc.request_mirror_policies.is_empty() {
        return Err(ctx.err(
            join(at, "request_mirror_policies"),
            "mirroring is not supported",
        ));
    }
    let global = header_mutations(
        (&rc.request_headers_to_add, &rc.request_headers_to_remove),
        (&rc.response_headers_to_add, &rc.response_headers_to_remove),
        ctx,
        at,
    )?;
    no_fault_override(&rc.typed_per_filter_config, ctx, at)?;
    no_shared_rate_limit(&rc.typed_per_filter_config, ctx, at)?;
    let mut out = RouteTable {
        virtual_hosts: Vec::with_capacity(rc.virtual_hosts.len()),
        ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
        headers: global,
        most_specific_header_mutations_wins: rc.most_specific_header_mutations_wins,
    };
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let vat = join(at, &format!("virtual_hosts[{i}]"));
        if vh.matcher.is_some() {
            return Err(ctx.err(
                format!("{vat}.matcher"),
                "the matcher API on virtual hosts is not supported",
            ));
        }
        if vh.require_tls != 0 {
            return Err(ctx.err(format!("{vat}.require_tls"), "TLS is not supported"));
        }
        let vh_headers = header_mutations(
            (&vh.request_headers_to_add, &vh.request_headers_to_remove),
            (&vh.response_headers_to_add, &vh.response_headers_to_remove),
            ctx,
            &vat,
        )?;
        no_fault_override(&vh.typed_per_filter_config, ctx, &vat)?;
        no_shared_rate_limit(&vh.typed_per_filter_config, ctx, &vat)?;
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (j, r) in vh.routes.iter().enumerate() {
            let rat = format!("{vat}.routes[{j}]");
            let mut route = triple_route(r, ctx, &rat)?;
            route.route.fault = route_fault(&r.typed_per_filter_config, ctx, &rat)?;
            // The virtual host's policy, for its routes without their own.
            if let (None, Some(p)) = (&route.route.retry_policy, &vh.retry_policy) {
                route.route.retry_policy = retry_policy(p, ctx, &format!("{vat}.retry_policy"))?;
            }
            // Likewise its mirror policies (Envoy: a route's own replace them).
            if matches!(&r.action, Some(route_pb::route::Action::Route(a)) if a.request_mirror_policies.is_empty())
            {
                for (k, m) in vh.request_mirror_policies.iter().enumerate() {
                    let mat = format!("{vat}.request_mirror_policies[{k}]");
                    if let Some(m) = mirror_policy(m, ctx, &mat)? {
                        route.route.request_mirror_policies.push(m);
                    }
                }
            }
            route.local_rate_limit = route_rate_limit(&r.typed_per_filter_config, ctx, &rat)?;
            routes.push(route);
        }
        out.virtual_hosts.push(VirtualHost {
            name: vh.name.clone(),
            domains: vh.domains.clone(),
            routes,
            headers: vh_headers,
        });
    }
    // Envoy's domain rules (non-empty, each once, one `*`), as the RouteConfiguration's own.
    if let Some((field, message)) = config::virtual_host_problems(&out.virtual_hosts)
        .into_iter()
        .next()
    {
        return Err(ctx.err(join(at, &field), message));
    }
    Ok(out)
}

fn triple_route(
    r: &route_pb::Route,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<TripleRoute, TranslateError> {
    use route_pb::route_match::PathSpecifier as P;
    let headers = header_mutations(
        (&r.request_headers_to_add, &r.request_headers_to_remove),
        (&r.response_headers_to_add, &r.response_headers_to_remove),
        ctx,
        at,
    )?;
    let mut m = TripleMatch::default();
    let Some(rm) = &r.r#match else {
        return Err(ctx.err(format!("{at}.match"), "missing"));
    };
    let mat = format!("{at}.match");
    // Envoy's `case_sensitive: false` folds ASCII case for `prefix`, `path` and
    // `path_separated_prefix` (not `safe_regex`): those go to a whole-path condition.
    let fold = rm.case_sensitive.as_ref().is_some_and(|b| !b.value);
    let whole = |f: fn(&mut PathMatch, String), v: &str| {
        let mut p = PathMatch {
            ignore_case: fold,
            ..Default::default()
        };
        f(&mut p, v.to_string());
        Some(p)
    };
    if rm.runtime_fraction.is_some() {
        return Err(ctx.err(format!("{mat}.runtime_fraction"), "not supported"));
    }
    for (k, q) in rm.query_parameters.iter().enumerate() {
        m.query_parameters.push(query_match(
            q,
            ctx,
            &format!("{mat}.query_parameters[{k}]"),
        )?);
    }
    if !rm.cookies.is_empty() {
        return Err(ctx.err(format!("{mat}.cookies"), "not supported"));
    }
    if rm.tls_context.is_some() {
        return Err(ctx.err(format!("{mat}.tls_context"), "TLS is not supported"));
    }
    // istiod's VirtualService `headers` on `@request.auth.claims[...]`: a verified JWT's
    // payload (the jwt_authn filter's metadata).
    for (k, d) in rm.dynamic_metadata.iter().enumerate() {
        m.dynamic_metadata.push(rbac::metadata_match(
            d,
            ctx,
            &format!("{mat}.dynamic_metadata[{k}]"),
        )?);
    }
    if !rm.filter_state.is_empty() {
        return Err(ctx.err(format!("{mat}.filter_state"), "not supported"));
    }
    // `grpc: {}` matches gRPC requests only: every Triple stream is one, so it is accepted.
    // A path that `/{service}/{method}` (split at the first `/` after the leading one) can
    // say exactly stays in that form; any other goes to a whole-path condition.
    // A `prefix_rewrite` replaces the part of the path a `prefix` or `path` matched: kept as
    // a whole-path condition, whose length the rewrite reads.
    let prefix_rewrite = match &r.action {
        Some(route_pb::route::Action::Route(a)) => !a.prefix_rewrite.is_empty(),
        Some(route_pb::route::Action::Redirect(d)) => matches!(
            &d.path_rewrite_specifier,
            Some(route_pb::redirect_action::PathRewriteSpecifier::PrefixRewrite(p)) if !p.is_empty()
        ),
        _ => false,
    };
    match &rm.path_specifier {
        Some(P::Prefix(p)) if prefix_rewrite => m.path = whole(|m, v| m.prefix = Some(v), p),
        Some(P::Path(p)) if prefix_rewrite => m.path = whole(|m, v| m.exact = Some(v), p),
        Some(P::Prefix(p)) if fold && p != "/" && !p.is_empty() => {
            m.path = whole(|m, v| m.prefix = Some(v), p)
        }
        Some(P::Prefix(p)) if !p.starts_with('/') && !p.is_empty() => {
            m.path = whole(|m, v| m.prefix = Some(v), p)
        }
        Some(P::Prefix(p))
            if p.strip_prefix('/')
                .and_then(|r| r.split_once('/'))
                .is_some_and(|(svc, method)| svc.is_empty() || method.contains('/')) =>
        {
            m.path = whole(|m, v| m.prefix = Some(v), p)
        }
        Some(P::Prefix(p)) => {
            let rest = p.strip_prefix('/').unwrap_or(p);
            match rest.split_once('/') {
                None if rest.is_empty() => {}
                None => {
                    m.service = Some(StringMatch {
                        prefix: Some(rest.to_string()),
                        ..Default::default()
                    })
                }
                Some((svc, method)) => {
                    m.service = Some(StringMatch {
                        exact: Some(svc.to_string()),
                        ..Default::default()
                    });
                    if !method.is_empty() {
                        m.method = Some(StringMatch {
                            prefix: Some(method.to_string()),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        Some(P::Path(p)) => {
            let parts: Vec<&str> = p.split('/').collect();
            match parts.as_slice() {
                ["", svc, method] if !svc.is_empty() && !method.is_empty() && !fold => {
                    m.service = Some(StringMatch {
                        exact: Some(svc.to_string()),
                        ..Default::default()
                    });
                    m.method = Some(StringMatch {
                        exact: Some(method.to_string()),
                        ..Default::default()
                    });
                }
                _ => m.path = whole(|m, v| m.exact = Some(v), p),
            }
        }
        // A regex is matched against the whole path (without its query), as Envoy does.
        Some(P::SafeRegex(re)) if re.regex == ".*" || re.regex == "/.*" => {}
        Some(P::SafeRegex(re)) => {
            // (An invalid regex is refused by the config's validation, naming the route.)
            m.path = Some(PathMatch {
                regex: Some(re.regex.clone()),
                ..Default::default()
            })
        }
        Some(P::PathSeparatedPrefix(p)) => {
            // Envoy's own rule (its proto validation): no `?` or `#`, not ending in `/`.
            if p.is_empty() || p.ends_with('/') || p.contains(['?', '#']) {
                return Err(ctx.err(
                    format!("{mat}.path_separated_prefix"),
                    format!("{p:?}: must not be empty, end with / or hold ? or #"),
                ));
            }
            m.path = whole(|m, v| m.separated_prefix = Some(v), p)
        }
        Some(P::ConnectMatcher(_)) => {
            return Err(ctx.err(format!("{mat}.connect_matcher"), "CONNECT is not supported"))
        }
        Some(P::PathMatchPolicy(_)) => {
            return Err(ctx.err(format!("{mat}.path_match_policy"), "not supported"))
        }
        None => return Err(ctx.err(format!("{mat}.prefix"), "missing path specifier")),
    }
    for (k, h) in rm.headers.iter().enumerate() {
        let hat = format!("{mat}.headers[{k}]");
        // `invert_match` and `treat_missing_header_as_empty` (istiod's VirtualService
        // `withoutHeaders`) are kept beside the condition.
        let plain = route_pb::HeaderMatcher {
            invert_match: false,
            treat_missing_header_as_empty: false,
            ..h.clone()
        };
        let (invert, treat_missing_as_empty) = (h.invert_match, h.treat_missing_header_as_empty);
        let pat = header_pat(&plain, ctx, &hat)?;
        let name = h.name.to_ascii_lowercase();
        let dedicated = match name.as_str() {
            "tri-service-version" => Some(&mut m.version),
            "tri-service-group" => Some(&mut m.group),
            "tri-unit-info" => Some(&mut m.unit),
            _ => None,
        };
        let flagged = invert || treat_missing_as_empty;
        match (dedicated, pat) {
            (Some(slot), HeaderPat::Pat(Pat::Exact(v))) if slot.is_none() && !flagged => {
                *slot = Some(v)
            }
            (_, HeaderPat::Pat(Pat::Exact(v)))
                if name == ":authority" && m.authority.is_none() && !flagged =>
            {
                m.authority = Some(StringMatch {
                    exact: Some(v),
                    ..Default::default()
                })
            }
            (_, pat) => {
                let mut hm = HeaderMatch {
                    name,
                    exact: None,
                    prefix: None,
                    regex: None,
                    present: None,
                    invert,
                    treat_missing_as_empty,
                };
                match pat {
                    HeaderPat::Pat(Pat::Exact(s)) => hm.exact = Some(s),
                    HeaderPat::Pat(Pat::Prefix(s)) => hm.prefix = Some(s),
                    HeaderPat::Pat(Pat::Regex(s)) => hm.regex = Some(s),
                    HeaderPat::Present(b) => hm.present = Some(b),
                }
                m.headers.push(hm);
            }
        }
    }
    let route = match &r.action {
        Some(route_pb::route::Action::Route(a)) => http_action(a, ctx, &format!("{at}.route"))?,
        Some(route_pb::route::Action::Redirect(d)) => RouteAction {
            direct: Some(redirect(d, ctx, &format!("{at}.redirect"))?),
            ..Default::default()
        },
        Some(route_pb::route::Action::DirectResponse(d)) => RouteAction {
            direct: Some(direct_response(d, ctx, &format!("{at}.direct_response"))?),
            ..Default::default()
        },
        Some(_) => {
            return Err(ctx.err(
                format!("{at}.route"),
                "only route, redirect and direct_response actions are supported (no filter_action, non_forwarding_action)",
            ))
        }
        None => return Err(ctx.err(format!("{at}.route"), "missing")),
    };
    Ok(TripleRoute {
        name: (!r.name.is_empty()).then(|| r.name.clone()),
        matcher: m,
        route,
        local_rate_limit: None,
        max_concurrent_requests: None,
        headers,
    })
}

/// Envoy's route timeout when a `RouteAction` gives none (`RouteEntryImplBase`'s
/// `DEFAULT_ROUTE_TIMEOUT_MS`).
const HTTP_ROUTE_TIMEOUT_MS_DEFAULT: u64 = 15_000;

fn http_action(
    a: &route_pb::RouteAction,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<RouteAction, TranslateError> {
    use route_pb::route_action::ClusterSpecifier as C;
    let refuse = |field: &str, why: &str| Err(ctx.err(format!("{at}.{field}"), why.to_string()));
    if a.metadata_match.is_some() {
        return refuse("metadata_match", "subset load balancing is not supported");
    }
    if a.path_rewrite_policy.is_some() {
        return refuse(
            "path_rewrite_policy",
            "path rewrite extensions are not supported (prefix_rewrite and regex_rewrite are)",
        );
    }
    if !a.path_rewrite.is_empty() {
        return refuse(
            "path_rewrite",
            "substitution-format path rewrites are not supported (prefix_rewrite and regex_rewrite are)",
        );
    }
    let rewrite = route_rewrite(a, ctx, at)?;
    if !a.upgrade_configs.is_empty() {
        return refuse("upgrade_configs", "upgrades are not supported");
    }
    let mut out = match &a.cluster_specifier {
        Some(C::Cluster(c)) => RouteAction {
            cluster: Some(c.clone()),
            ..Default::default()
        },
        Some(C::WeightedClusters(w)) => RouteAction {
            weighted_clusters: weighted(w, ctx, &format!("{at}.weighted_clusters"))?,
            ..Default::default()
        },
        Some(C::ClusterHeader(_)) => {
            return refuse(
                "cluster_header",
                "clusters named by a header are not supported",
            )
        }
        Some(C::ClusterSpecifierPlugin(_)) | Some(C::InlineClusterSpecifierPlugin(_)) => {
            return refuse(
                "cluster_specifier_plugin",
                "cluster specifier plugins are not supported",
            )
        }
        None => return refuse("cluster", "give cluster or weighted_clusters"),
    };
    out.rewrite = rewrite;
    // Envoy's router: no `timeout` is 15 s, 0 none (nor the `x-envoy-expected-rq-timeout-ms`
    // it would send upstream).
    out.timeout_ms = match &a.timeout {
        None => Some(HTTP_ROUTE_TIMEOUT_MS_DEFAULT),
        Some(t) => Some(duration_ms(
            t,
            ctx,
            &format!("{at}.timeout"),
            config::REQUEST_TIMEOUT_MS_MAX,
        )?)
        .filter(|&ms| ms > 0),
    };
    if let Some(p) = &a.retry_policy {
        out.retry_policy = retry_policy(p, ctx, &format!("{at}.retry_policy"))?;
    }
    for (i, h) in a.hash_policy.iter().enumerate() {
        if let Some(h) = hash_policy(h, ctx, &format!("{at}.hash_policy[{i}]"))? {
            out.hash_policy.push(h);
        }
    }
    for (i, m) in a.request_mirror_policies.iter().enumerate() {
        let mat = format!("{at}.request_mirror_policies[{i}]");
        if let Some(m) = mirror_policy(m, ctx, &mat)? {
            out.request_mirror_policies.push(m);
        }
    }
    Ok(out)
}

/// One of a route's `hash_policy` entries (docs/governance.md#consistent-hashing); `None`
/// for `connection_properties` without `source_ip` (Envoy adds no hash method for it).
fn hash_policy(
    h: &route_pb::route_action::HashPolicy,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<config::HashPolicy>, TranslateError> {
    use route_pb::route_action::hash_policy::PolicySpecifier as P;
    let mut out = config::HashPolicy {
        terminal: h.terminal,
        ..Default::default()
    };
    match &h.policy_specifier {
        Some(P::Header(hd)) => {
            if hd.regex_rewrite.is_some() {
                return Err(ctx.err(
                    format!("{at}.header.regex_rewrite"),
                    "rewriting the header before hashing is not supported",
                ));
            }
            if hd.header_name.is_empty() {
                return Err(ctx.err(format!("{at}.header.header_name"), "must not be empty"));
            }
            out.header = Some(hd.header_name.to_ascii_lowercase());
        }
        Some(P::ConnectionProperties(p)) if !p.source_ip => return Ok(None),
        Some(P::ConnectionProperties(_)) => out.source_ip = true,
        Some(P::QueryParameter(q)) => {
            if q.name.is_empty() {
                return Err(ctx.err(format!("{at}.query_parameter.name"), "must not be empty"));
            }
            out.query_parameter = Some(q.name.clone());
        }
        Some(P::Cookie(c)) => {
            if c.name.is_empty() {
                return Err(ctx.err(format!("{at}.cookie.name"), "must not be empty"));
            }
            out.cookie = Some(c.name.clone());
            // With a ttl, Envoy generates the cookie (its `seconds`; nanos ignored, as Envoy).
            if let Some(t) = &c.ttl {
                out.cookie_ttl_s =
                    Some(u64::try_from(t.seconds).map_err(|_| {
                        ctx.err(format!("{at}.cookie.ttl"), "must not be negative")
                    })?);
                out.cookie_path = c.path.clone();
                out.cookie_attributes = c
                    .attributes
                    .iter()
                    .map(|a| config::CookieAttribute {
                        name: a.name.clone(),
                        value: a.value.clone(),
                    })
                    .collect();
            }
        }
        Some(P::FilterState(_)) => {
            return Err(ctx.err(
                format!("{at}.filter_state"),
                "hashing filter state is not supported (ringside keeps no filter state)",
            ))
        }
        None => return Err(ctx.err(format!("{at}.policy_specifier"), "missing")),
    }
    Ok(Some(out))
}

/// A route's `redirect` (docs/xds.md): the answer's status and `location` parts.
fn redirect(
    d: &route_pb::RedirectAction,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<config::DirectAction, TranslateError> {
    use route_pb::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let status = match C::try_from(d.response_code) {
        Ok(C::MovedPermanently) => 301,
        Ok(C::Found) => 302,
        Ok(C::SeeOther) => 303,
        Ok(C::TemporaryRedirect) => 307,
        Ok(C::PermanentRedirect) => 308,
        Err(_) => {
            return Err(ctx.err(
                format!("{at}.response_code"),
                format!("unknown value {}", d.response_code),
            ))
        }
    };
    let port = match u16::try_from(d.port_redirect) {
        Ok(0) => None,
        Ok(p) => Some(p),
        Err(_) => {
            return Err(ctx.err(
                format!("{at}.port_redirect"),
                format!("{} is not a port", d.port_redirect),
            ))
        }
    };
    let mut r = config::Redirect {
        scheme: match &d.scheme_rewrite_specifier {
            Some(S::HttpsRedirect(true)) => Some("https".into()),
            Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
            _ => None,
        },
        host: (!d.host_redirect.is_empty()).then(|| d.host_redirect.clone()),
        port,
        strip_query: d.strip_query,
        ..Default::default()
    };
    match &d.path_rewrite_specifier {
        None => {}
        Some(P::PathRedirect(p)) => r.path = (!p.is_empty()).then(|| p.clone()),
        Some(P::PrefixRewrite(p)) => r.prefix_rewrite = (!p.is_empty()).then(|| p.clone()),
        Some(P::RegexRewrite(m)) => {
            let Some(p) = &m.pattern else {
                return Err(ctx.err(format!("{at}.regex_rewrite.pattern"), "missing"));
            };
            r.regex_rewrite = Some(config::RegexRewrite {
                pattern: p.regex.clone(),
                substitution: m.substitution.clone(),
            })
        }
        Some(P::PathRewrite(_)) => {
            return Err(ctx.err(
                format!("{at}.path_rewrite"),
                "substitution-format redirect paths are not supported (path_redirect, prefix_rewrite and regex_rewrite are)",
            ))
        }
    }
    Ok(config::DirectAction {
        status,
        body: None,
        redirect: Some(r),
    })
}

/// A route's `direct_response`: its status and inline body (a file's: NACK).
fn direct_response(
    d: &route_pb::DirectResponseAction,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<config::DirectAction, TranslateError> {
    use core_pb::data_source::Specifier as S;
    if !(200..600).contains(&d.status) {
        return Err(ctx.err(
            format!("{at}.status"),
            format!("{} is out of range 200..=599", d.status),
        ));
    }
    if d.body_format.is_some() {
        return Err(ctx.err(
            format!("{at}.body_format"),
            "formatted bodies are not supported (the body is sent as given)",
        ));
    }
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(S::InlineString(s)) => Some(s.clone()),
        Some(S::InlineBytes(b)) => match String::from_utf8(b.clone()) {
            Ok(s) => Some(s),
            Err(_) => {
                return Err(ctx.err(
                    format!("{at}.body.inline_bytes"),
                    "only UTF-8 bodies are supported",
                ))
            }
        },
        Some(S::Filename(_)) => {
            return Err(ctx.err(
                format!("{at}.body.filename"),
                "bodies read from files are not supported (give inline_string or inline_bytes)",
            ))
        }
        Some(S::EnvironmentVariable(_)) => {
            return Err(ctx.err(
                format!("{at}.body.environment_variable"),
                "bodies read from the environment are not supported (give inline_string or inline_bytes)",
            ))
        }
    };
    Ok(config::DirectAction {
        status: d.status as u16,
        body: body.filter(|b| !b.is_empty()),
        redirect: None,
    })
}

/// A route action's `prefix_rewrite`, `regex_rewrite`, `host_rewrite_*` and
/// `append_x_forwarded_host` (docs/xds.md); `None` when it rewrites nothing.
fn route_rewrite(
    a: &route_pb::RouteAction,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<config::Rewrite>, TranslateError> {
    use route_pb::route_action::HostRewriteSpecifier as H;
    let mut r = config::Rewrite {
        append_x_forwarded_host: a.append_x_forwarded_host,
        ..Default::default()
    };
    if !a.prefix_rewrite.is_empty() {
        r.prefix = Some(a.prefix_rewrite.clone());
    }
    let regex = |m: &matcher_pb::RegexMatchAndSubstitute, field: &str| {
        let Some(p) = &m.pattern else {
            return Err(ctx.err(format!("{at}.{field}.pattern"), "missing"));
        };
        Ok(config::RegexRewrite {
            pattern: p.regex.clone(),
            substitution: m.substitution.clone(),
        })
    };
    if let Some(m) = &a.regex_rewrite {
        if r.prefix.is_some() {
            return Err(ctx.err(
                format!("{at}.regex_rewrite"),
                "give at most one of prefix_rewrite, regex_rewrite",
            ));
        }
        r.regex = Some(regex(m, "regex_rewrite")?);
    }
    match &a.host_rewrite_specifier {
        None => {}
        Some(H::HostRewriteLiteral(h)) => r.host = (!h.is_empty()).then(|| h.clone()),
        Some(H::AutoHostRewrite(b)) if !b.value => {}
        Some(H::AutoHostRewrite(_)) => {
            return Err(ctx.err(
                format!("{at}.auto_host_rewrite"),
                "not supported: endpoints' hostnames are not kept (DNS clusters are not supported)",
            ))
        }
        Some(H::HostRewriteHeader(h)) => r.host_header = (!h.is_empty()).then(|| h.clone()),
        Some(H::HostRewritePathRegex(m)) => {
            r.host_path_regex = Some(regex(m, "host_rewrite_path_regex")?)
        }
        Some(H::HostRewrite(_)) => {
            return Err(ctx.err(
                format!("{at}.host_rewrite"),
                "substitution-format host rewrites are not supported (host_rewrite_literal, \
                 host_rewrite_header and host_rewrite_path_regex are)",
            ))
        }
    }
    Ok((r != config::Rewrite::default()).then_some(r))
}

/// A `FractionalPercent` as a share of requests (above 100 %: all).
fn fractional_share(
    p: &envoy_types::pb::envoy::r#type::v3::FractionalPercent,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<config::Share, TranslateError> {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
    let scale = match D::try_from(p.denominator) {
        Ok(D::Hundred) => 10_000,
        Ok(D::TenThousand) => 100,
        Ok(D::Million) => 1,
        Err(_) => return Err(ctx.err(format!("{at}.denominator"), "unknown denominator")),
    };
    Ok(config::Share(
        p.numerator
            .saturating_mul(scale)
            .min(config::Share::PER_MILLION),
    ))
}

/// A route's `request_mirror_policies` entry (docs/governance.md#mirroring); `None` when it
/// mirrors nothing (`runtime_fraction` of 0 %).
fn mirror_policy(
    m: &route_pb::route_action::RequestMirrorPolicy,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<config::MirrorPolicy>, TranslateError> {
    let refuse = |field: &str, why: &str| Err(ctx.err(format!("{at}.{field}"), why.to_string()));
    if !m.cluster_header.is_empty() {
        return refuse(
            "cluster_header",
            "clusters named by a header are not supported",
        );
    }
    if m.cluster.is_empty() {
        return refuse("cluster", "missing");
    }
    if !m.request_headers_mutations.is_empty() {
        return refuse("request_headers_mutations", "not supported");
    }
    if !m.host_rewrite_literal.is_empty() {
        return refuse("host_rewrite_literal", "not supported");
    }
    // Unset: every request (Envoy's default); the runtime key is not consulted.
    let share = match m
        .runtime_fraction
        .as_ref()
        .and_then(|f| f.default_value.as_ref())
    {
        None if m.runtime_fraction.is_none() => config::Share(config::Share::PER_MILLION),
        None => config::Share(0),
        Some(p) => fractional_share(p, ctx, &format!("{at}.runtime_fraction.default_value"))?,
    };
    if share.0 == 0 {
        return Ok(None);
    }
    Ok(Some(config::MirrorPolicy {
        cluster: m.cluster.clone(),
        percentage: share,
    }))
}

const PREVIOUS_HOSTS: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// A route's or virtual host's `retry_policy` (docs/governance.md#retries); `None` when it
/// retries on nothing.
fn retry_policy(
    p: &route_pb::RetryPolicy,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<config::RetryPolicy>, TranslateError> {
    use config::RetryOn as On;
    let refuse = |field: &str, why: &str| Err(ctx.err(format!("{at}.{field}"), why.to_string()));
    if p.per_try_idle_timeout.is_some() {
        return refuse("per_try_idle_timeout", "not supported");
    }
    let previous_priorities = match &p.retry_priority {
        None => None,
        Some(rp) => previous_priorities(rp, ctx, &format!("{at}.retry_priority"))?,
    };
    if !p.retry_options_predicates.is_empty() {
        return refuse("retry_options_predicates", "not supported");
    }
    if p.rate_limited_retry_back_off.is_some() {
        return refuse("rate_limited_retry_back_off", "not supported");
    }
    if !p.retriable_headers.is_empty() {
        return refuse("retriable_headers", "not supported");
    }
    if !p.retriable_request_headers.is_empty() {
        return refuse("retriable_request_headers", "not supported");
    }
    let mut previous_hosts = false;
    for (i, h) in p.retry_host_predicate.iter().enumerate() {
        let typed = match &h.config_type {
            Some(route_pb::retry_policy::retry_host_predicate::ConfigType::TypedConfig(a)) => {
                a.type_url == PREVIOUS_HOSTS
            }
            None => false,
        };
        if !typed && h.name != "envoy.retry_host_predicates.previous_hosts" {
            return Err(ctx.err(
                format!("{at}.retry_host_predicate[{i}]"),
                format!("{:?}: only previous_hosts is supported", h.name),
            ));
        }
        previous_hosts = true;
    }
    let mut retry_on = Vec::new();
    for name in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let on = match name {
            "connect-failure" => On::ConnectFailure,
            "refused-stream" => On::RefusedStream,
            "reset" => On::Reset,
            "retriable-status-codes" if p.retriable_status_codes.is_empty() => continue,
            "retriable-status-codes" => On::RetriableStatusCodes,
            "cancelled" => On::Cancelled,
            "deadline-exceeded" => On::DeadlineExceeded,
            "internal" => On::Internal,
            "resource-exhausted" => On::ResourceExhausted,
            "unavailable" => On::Unavailable,
            "5xx" => On::FiveXx,
            "gateway-error" => On::GatewayError,
            _ => {
                return refuse(
                    "retry_on",
                    &format!(
                        "{name:?} is not supported (5xx, gateway-error, connect-failure, \
                         refused-stream, reset, retriable-status-codes, cancelled, \
                         deadline-exceeded, internal, resource-exhausted, unavailable are)"
                    ),
                )
            }
        };
        if !retry_on.contains(&on) {
            retry_on.push(on);
        }
    }
    if retry_on.is_empty() {
        return Ok(None);
    }
    let codes = match retry_on.contains(&On::RetriableStatusCodes) {
        true => p.retriable_status_codes.clone(),
        false => Vec::new(),
    };
    // Envoy: 0 is no per-try timeout (nor one in `x-envoy-expected-rq-timeout-ms`).
    let per_try_timeout_ms = match &p.per_try_timeout {
        Some(d) => Some(duration_ms(
            d,
            ctx,
            &format!("{at}.per_try_timeout"),
            config::REQUEST_TIMEOUT_MS_MAX,
        )?)
        .filter(|&ms| ms > 0),
        None => None,
    };
    // Envoy: `base_interval` required and above 0 (under 1 ms: 1 ms), `max_interval` at
    // least it (default 10x).
    let retry_back_off = match &p.retry_back_off {
        None => None,
        Some(b) => {
            let max = config::REQUEST_TIMEOUT_MS_MAX;
            let field = format!("{at}.retry_back_off.base_interval");
            let base = match &b.base_interval {
                Some(d) => duration_ms(d, ctx, &field, max)?,
                None => 0,
            };
            if base == 0 {
                return Err(ctx.err(field, "required, above 0"));
            }
            let field = format!("{at}.retry_back_off.max_interval");
            let max_interval_ms = match &b.max_interval {
                Some(d) => Some(duration_ms(d, ctx, &field, max)?),
                None => None,
            };
            if max_interval_ms.is_some_and(|m| m < base) {
                return Err(ctx.err(field, "must be at least base_interval"));
            }
            Some(config::RetryBackOff {
                base_interval_ms: base,
                max_interval_ms,
            })
        }
    };
    Ok(Some(config::RetryPolicy {
        retry_on,
        num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout_ms,
        retriable_status_codes: codes,
        previous_hosts,
        // Envoy's default when unset (0): 1.
        host_selection_retry_max_attempts: match p.host_selection_retry_max_attempts {
            n if n <= 0 => 1,
            n => n.min(i64::from(u32::MAX)) as u32,
        },
        previous_priorities,
        retry_back_off,
    }))
}

const PREVIOUS_PRIORITIES: &str =
    "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig";

/// A `retry_priority` (istiod's VirtualService `retries.retryRemoteLocalities`, with
/// `update_frequency` 2): only `previous_priorities`, as its `update_frequency`; `None` when
/// it is beyond the most tries a route may make (it would never apply).
fn previous_priorities(
    rp: &route_pb::retry_policy::RetryPriority,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<u32>, TranslateError> {
    use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3 as pp_pb;
    let any = match &rp.config_type {
        Some(route_pb::retry_policy::retry_priority::ConfigType::TypedConfig(a)) => a,
        None => {
            return Err(ctx.err(
                format!("{at}.typed_config"),
                format!(
                    "{:?}: only previous_priorities (with its config) is supported",
                    rp.name
                ),
            ))
        }
    };
    if any.type_url != PREVIOUS_PRIORITIES {
        return Err(ctx.err(
            format!("{at}.typed_config"),
            format!("{:?}: only previous_priorities is supported", any.type_url),
        ));
    }
    let c: pp_pb::PreviousPrioritiesConfig =
        unpack(any, PREVIOUS_PRIORITIES, ctx, &format!("{at}.typed_config"))?;
    // Envoy: `update_frequency` > 0.
    let f = match u32::try_from(c.update_frequency) {
        Ok(f) if f > 0 => f,
        _ => {
            return Err(ctx.err(
                format!("{at}.typed_config.update_frequency"),
                format!("{} must be above 0", c.update_frequency),
            ))
        }
    };
    Ok((f <= config::RETRIES_MAX).then_some(f))
}

// === clusters ===

/// A RING_HASH or MAGLEV cluster's balancer (docs/governance.md#consistent-hashing):
/// `ring_hash_lb_config` (ring sizes; `hash_function` XX_HASH only) or `maglev_lb_config`
/// (`table_size`, a prime). Refused: MURMUR_HASH_2, `consistent_hashing_lb_config` with
/// `use_hostname_for_hashing` or a `hash_balance_factor` (bounded loads), locality-weighted
/// balancing (its rings weigh localities; ringside's are per priority).
fn hash_lb(c: &cluster_pb::Cluster, ctx: &Ctx<'_>) -> Result<LbPolicy, TranslateError> {
    use cluster_pb::cluster::ring_hash_lb_config::HashFunction;
    use cluster_pb::cluster::{LbConfig, LbPolicy as L};
    let ring = c.lb_policy == L::RingHash as i32;
    let common = c.common_lb_config.as_ref();
    if let Some(h) = common.and_then(|l| l.consistent_hashing_lb_config.as_ref()) {
        if h.use_hostname_for_hashing {
            return Err(ctx.err(
                "common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing",
                "not supported (endpoints hash by address; ringside keeps no hostnames)",
            ));
        }
        if h.hash_balance_factor.as_ref().is_some_and(|f| f.value > 0) {
            return Err(ctx.err(
                "common_lb_config.consistent_hashing_lb_config.hash_balance_factor",
                "bounded-load consistent hashing is not supported",
            ));
        }
    }
    if matches!(
        common.and_then(|l| l.locality_config_specifier.as_ref()),
        Some(cluster_pb::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    ) {
        return Err(ctx.err(
            "common_lb_config.locality_weighted_lb_config",
            "not supported with RING_HASH or MAGLEV (rings are built per priority)",
        ));
    }
    let max = config::MAX_RING_SIZE_DEFAULT;
    match (&c.lb_config, ring) {
        (Some(LbConfig::RingHashLbConfig(r)), true) => {
            if r.hash_function == HashFunction::MurmurHash2 as i32 {
                return Err(ctx.err(
                    "ring_hash_lb_config.hash_function",
                    "MURMUR_HASH_2 is not supported (XX_HASH, the default, is)",
                ));
            }
            let min_size = r
                .minimum_ring_size
                .as_ref()
                .map_or(config::MIN_RING_SIZE_DEFAULT, |v| v.value);
            let max_size = r.maximum_ring_size.as_ref().map_or(max, |v| v.value);
            if min_size > max || max_size > max {
                return Err(ctx.err(
                    "ring_hash_lb_config",
                    format!("ring sizes must be at most {max}"),
                ));
            }
            if min_size > max_size {
                return Err(ctx.err(
                    "ring_hash_lb_config",
                    format!("minimum_ring_size ({min_size}) > maximum_ring_size ({max_size})"),
                ));
            }
            Ok(LbPolicy::RingHash {
                minimum_ring_size: min_size.max(1),
                maximum_ring_size: max_size.max(1),
            })
        }
        (Some(LbConfig::MaglevLbConfig(m)), false) => {
            let size = m
                .table_size
                .as_ref()
                .map_or(config::MAGLEV_TABLE_SIZE_DEFAULT, |v| v.value);
            if size > config::MAGLEV_TABLE_SIZE_MAX || !config::is_prime(size) {
                return Err(ctx.err(
                    "maglev_lb_config.table_size",
                    format!(
                        "{size}: the table size of maglev must be a prime number of at most {}",
                        config::MAGLEV_TABLE_SIZE_MAX
                    ),
                ));
            }
            Ok(LbPolicy::Maglev { table_size: size })
        }
        (None, true) => Ok(LbPolicy::RingHash {
            minimum_ring_size: config::MIN_RING_SIZE_DEFAULT,
            maximum_ring_size: max,
        }),
        (None, false) => Ok(LbPolicy::Maglev {
            table_size: config::MAGLEV_TABLE_SIZE_DEFAULT,
        }),
        // Envoy reads only the lb_config of the policy it runs.
        (Some(_), true) => Ok(LbPolicy::RingHash {
            minimum_ring_size: config::MIN_RING_SIZE_DEFAULT,
            maximum_ring_size: max,
        }),
        (Some(_), false) => Ok(LbPolicy::Maglev {
            table_size: config::MAGLEV_TABLE_SIZE_DEFAULT,
        }),
    }
}

pub(crate) fn decode_cluster(any: &Any) -> Result<(String, ClusterRes), TranslateError> {
    let c: cluster_pb::Cluster = decode_top(any, CLUSTER_TYPE)?;
    Ok((c.name.clone(), cluster(&c)?))
}

fn cluster(c: &cluster_pb::Cluster) -> Result<ClusterRes, TranslateError> {
    use cluster_pb::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy as L};
    let ctx = Ctx {
        kind: "cluster",
        name: &c.name,
    };
    let refuse = |field: &str, why: &str| Err(ctx.err(field.to_string(), why.to_string()));
    if c.name.is_empty() {
        return refuse("name", "must not be empty");
    }
    if c.transport_socket_matcher.is_some() {
        return refuse(
            "transport_socket_matcher",
            "not supported (transport_socket_matches is)",
        );
    }
    let upstream_tls = |ts: &core_pb::TransportSocket, at: &str| {
        tls::tls_context(ts, &ctx, at)?
            .map(|any| tls::upstream(any, &ctx, at))
            .transpose()
    };
    let mut tls = match &c.transport_socket {
        Some(ts) => upstream_tls(ts, "transport_socket")?,
        None => None,
    };
    let mut transport_socket_matches = c
        .transport_socket_matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("transport_socket_matches[{i}]");
            let labels = match &m.r#match {
                Some(st) => string_labels(st).map_err(|k| {
                    ctx.err(
                        format!("{at}.match.{k}"),
                        "only string values are supported",
                    )
                })?,
                None => Default::default(),
            };
            let tls = match &m.transport_socket {
                Some(ts) => upstream_tls(ts, &format!("{at}.transport_socket"))?,
                None => None,
            };
            Ok(config::TransportSocketMatch {
                name: m.name.clone(),
                labels,
                tls,
            })
        })
        .collect::<Result<Vec<_>, TranslateError>>()?;
    if !c.health_checks.is_empty() {
        return refuse("health_checks", "active health checks are not supported");
    }
    if c.lb_subset_config.is_some() {
        return refuse("lb_subset_config", "subset load balancing is not supported");
    }
    if c.load_balancing_policy.is_some() {
        return refuse(
            "load_balancing_policy",
            "give lb_policy ROUND_ROBIN or LEAST_REQUEST instead",
        );
    }
    let mut mx_filter = false;
    for (i, f) in c.filters.iter().enumerate() {
        // Istio's cluster filter istio.metadata_exchange: ringside speaks the in-band exchange
        // on connections that negotiate ALPN istio-peer-exchange, offered only with it. Any
        // other filter: refused.
        let mx = f
            .typed_config
            .as_ref()
            .is_some_and(|a| config_type(a) == ISTIO_MX);
        mx_filter |= mx;
        if !mx {
            return Err(ctx.err(
                format!("filters[{i}]"),
                format!("upstream network filter {:?} is not supported", f.name),
            ));
        }
    }
    if !mx_filter {
        // No in-band exchange without the filter: the ALPN is not offered.
        let strip = |t: &mut Option<config::ClusterTls>| {
            if let Some(t) = t {
                t.alpn.retain(|a| a != ISTIO_PEER_EXCHANGE);
            }
        };
        strip(&mut tls);
        for m in &mut transport_socket_matches {
            strip(&mut m.tls);
        }
    }
    if c.upstream_config.is_some() {
        return refuse("upstream_config", "not supported");
    }
    if c.lrs_server.is_some() {
        return refuse("lrs_server", "load reporting is not supported");
    }
    let mut upstream_http = match &c.http2_protocol_options {
        // The deprecated cluster field Envoy still reads as explicit HTTP/2.
        Some(_) => config::UpstreamHttp::Http2,
        None => config::UpstreamHttp::Http1,
    };
    if c.protocol_selection
        == cluster_pb::cluster::ClusterProtocolSelection::UseDownstreamProtocol as i32
    {
        upstream_http = config::UpstreamHttp::Downstream;
    }
    let mut h2 = match &c.http2_protocol_options {
        Some(h) => upstream_h2(Some(h), None, &ctx, "http2_protocol_options")?,
        None => upstream_h2(None, None, &ctx, "")?,
    };
    for (key, any) in &c.typed_extension_protocol_options {
        let at = format!("typed_extension_protocol_options[{key:?}]");
        if key != HTTP_PROTOCOL_OPTIONS {
            return Err(ctx.err(
                at,
                "only envoy.extensions.upstreams.http.v3.HttpProtocolOptions is accepted",
            ));
        }
        let want = format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}");
        let o: upstream_http_pb::HttpProtocolOptions = unpack(any, &want, &ctx, &at)?;
        upstream_http = upstream_protocol(&o, &ctx, &at)?;
        h2 = upstream_options(&o, &ctx, &at)?;
    }
    // ALPN decides under auto_config: every transport socket of the cluster must be TLS (as
    // Envoy refuses "ALPN configured for cluster ... which has a non-ALPN transport socket").
    // One without ALPN of its own offers `h2`, `http/1.1`, as Envoy's does.
    if upstream_http == config::UpstreamHttp::Auto {
        let all_tls = tls.is_some() && transport_socket_matches.iter().all(|m| m.tls.is_some());
        if !all_tls {
            return Err(ctx.err(
                format!("typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS:?}].auto_config"),
                "needs TLS (ALPN) on every transport socket of the cluster",
            ));
        }
    }
    let (mut tls, mut transport_socket_matches) = (tls, transport_socket_matches);
    if upstream_http == config::UpstreamHttp::Auto {
        let sockets = tls.iter_mut().chain(
            transport_socket_matches
                .iter_mut()
                .filter_map(|m| m.tls.as_mut()),
        );
        for t in sockets.filter(|t| t.alpn.is_empty()) {
            t.alpn = vec!["h2".to_string(), "http/1.1".to_string()];
        }
    }
    let original_dst = matches!(
        &c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::OriginalDst as i32
    );
    let lb = match L::try_from(c.lb_policy) {
        Ok(L::RoundRobin) => LbPolicy::RoundRobin,
        Ok(L::LeastRequest) => LbPolicy::LeastRequest,
        Ok(L::Random) => LbPolicy::Random,
        Ok(L::RingHash | L::Maglev) => hash_lb(c, &ctx)?,
        // An ORIGINAL_DST cluster has no endpoints to balance over.
        Ok(L::ClusterProvided) if original_dst => LbPolicy::RoundRobin,
        _ => {
            return Err(ctx.err(
                "lb_policy",
                format!(
                    "only ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH or MAGLEV is supported (got {})",
                    c.lb_policy
                ),
            ))
        }
    };
    let connect_timeout_ms = match &c.connect_timeout {
        Some(d) => duration_ms(d, &ctx, "connect_timeout", config::CONNECT_TIMEOUT_MS_MAX)?,
        None => ENVOY_CONNECT_TIMEOUT_MS_DEFAULT,
    };
    let ty = match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => *t,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return refuse("cluster_type", "custom cluster types are not supported")
        }
        None => DiscoveryType::Static as i32,
    };
    let mut out = Cluster {
        name: c.name.clone(),
        kind: config::ClusterType::Static,
        endpoints: Vec::new(),
        endpoint_metadata: Vec::new(),
        registry: None,
        lb,
        connect_timeout_ms,
        source_addresses: match &c.upstream_bind_config {
            Some(b) => upstream_bind(b, &ctx)?,
            None => Vec::new(),
        },
        timeout_ms: config::REQUEST_TIMEOUT_MS_DEFAULT,
        connections_per_host: config::CONNECTIONS_PER_HOST_DEFAULT,
        pending_requests_max: config::PENDING_REQUESTS_PER_HOST_MAX_DEFAULT,
        heartbeat_interval_ms: config::HEARTBEAT_INTERVAL_MS_DEFAULT,
        response_bytes_max: config::RESPONSE_BYTES_MAX_DEFAULT,
        idle_timeout_ms: h2.idle_timeout_ms,
        keepalive_interval_ms: config::KEEPALIVE_INTERVAL_MS_DEFAULT,
        keepalive_timeout_ms: config::KEEPALIVE_TIMEOUT_MS_DEFAULT,
        tcp_keepalive: match c
            .upstream_connection_options
            .as_ref()
            .and_then(|o| o.tcp_keepalive.as_ref())
        {
            Some(k) => Some(tcp_keepalive(k, &ctx)?),
            None => None,
        },
        tls,
        transport_socket_matches,
        upstream_http,
        http2_streams_max: h2.streams_max,
        requests_per_connection_max: h2.requests_max,
        http2_stream_window_bytes: Some(h2.stream_window),
        http2_connection_window_bytes: Some(h2.connection_window),
        http2_keepalive: h2.keepalive,
        max_connection_duration_ms: h2.max_connection_duration_ms,
        keep_alpn: keeps_alpn(c.metadata.as_ref()),
        circuit_breakers: circuit_breakers(c.circuit_breakers.as_ref(), &ctx)?,
        outlier_detection: match &c.outlier_detection {
            Some(o) => outlier_detection(o, &ctx)?,
            None => None,
        },
        priority_load: Vec::new(),
        priority_hosts: Vec::new(),
        overprovisioning: 0,
        locality_weighted: matches!(
            c.common_lb_config
                .as_ref()
                .and_then(|l| l.locality_config_specifier.as_ref()),
            Some(cluster_pb::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        ),
        zone_aware: zone_aware(c.common_lb_config.as_ref(), &ctx)?,
    };
    let eds = match DiscoveryType::try_from(ty) {
        Ok(DiscoveryType::Eds) => {
            let cfg = c.eds_cluster_config.as_ref();
            if let Some(cs) = cfg.and_then(|e| e.eds_config.as_ref()) {
                ads_source(cs, &ctx, "eds_cluster_config.eds_config")?;
            }
            let service = cfg.map(|e| e.service_name.as_str()).unwrap_or("");
            Some(if service.is_empty() {
                c.name.clone()
            } else {
                service.to_string()
            })
        }
        Ok(DiscoveryType::OriginalDst) => {
            out.kind = config::ClusterType::OriginalDestination;
            None
        }
        Ok(DiscoveryType::Static) | Ok(DiscoveryType::StrictDns) => {
            let Some(la) = &c.load_assignment else {
                if ty == DiscoveryType::Static as i32 {
                    // No endpoints: every connection and request fails at once (Istio's
                    // BlackHoleCluster), as in Envoy.
                    return Ok(ClusterRes { cluster: out, eds: None });
                }
                return refuse(
                    "load_assignment",
                    "a STRICT_DNS cluster needs an inline load_assignment",
                );
            };
            endpoints(la, &ctx, "load_assignment")?.apply(&mut out);
            None
        }
        _ => {
            return Err(ctx.err(
                "type",
                format!("only STATIC, STRICT_DNS (IP literals), EDS or ORIGINAL_DST is supported (got {ty})"),
            ))
        }
    };
    Ok(ClusterRes { cluster: out, eds })
}

/// The upstream protocol a cluster's `HttpProtocolOptions` asks HTTP/1.1 requests to take
/// (its other fields tune what ringside does not have and are ignored); HTTP/3 (QUIC, which
/// ringside does not speak) is refused.
fn upstream_protocol(
    o: &upstream_http_pb::HttpProtocolOptions,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<config::UpstreamHttp, TranslateError> {
    use upstream_http_pb::http_protocol_options::explicit_http_config::ProtocolConfig as P;
    use upstream_http_pb::http_protocol_options::UpstreamProtocolOptions as U;
    let http3 = || ctx.err(at.to_string(), "HTTP/3 upstream is not supported");
    Ok(match &o.upstream_protocol_options {
        Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
            Some(P::Http2ProtocolOptions(_)) => config::UpstreamHttp::Http2,
            Some(P::Http3ProtocolOptions(_)) => return Err(http3()),
            Some(P::HttpProtocolOptions(_)) | None => config::UpstreamHttp::Http1,
        },
        Some(U::UseDownstreamProtocolConfig(_)) => config::UpstreamHttp::Downstream,
        Some(U::AutoConfig(a)) if a.http3_protocol_options.is_some() => return Err(http3()),
        Some(U::AutoConfig(_)) => config::UpstreamHttp::Auto,
        None => config::UpstreamHttp::Http1,
    })
}

/// What a cluster's HTTP/2 options and `common_http_protocol_options` set on its upstream
/// connections.
struct UpstreamH2 {
    /// `max_concurrent_streams`, `max_requests_per_connection` (0: unset).
    streams_max: u32,
    requests_max: u32,
    stream_window: u32,
    connection_window: u32,
    keepalive: Option<config::Http2Keepalive>,
    idle_timeout_ms: u64,
    max_connection_duration_ms: u64,
}

/// Envoy 1.40's HTTP/2 windows when `initial_stream_window_size` /
/// `initial_connection_window_size` are not given (what it advertises: SETTINGS_INITIAL_
/// WINDOW_SIZE 16777216 and a connection WINDOW_UPDATE to 25165824; tests/h2_options.rs).
pub(crate) const ENVOY_STREAM_WINDOW_DEFAULT: u32 = 16 << 20;
pub(crate) const ENVOY_CONNECTION_WINDOW_DEFAULT: u32 = 24 << 20;

/// An HTTP/2 window field (`at.name`): Envoy's default when unset, NACKed outside Envoy's
/// range (65535 ..= 2^31 - 1).
fn h2_window(
    v: Option<&envoy_types::pb::google::protobuf::UInt32Value>,
    default: u32,
    ctx: &Ctx<'_>,
    at: &str,
    name: &str,
) -> Result<u32, TranslateError> {
    let Some(v) = v.map(|v| v.value) else {
        return Ok(default);
    };
    if !(config::WINDOW_BYTES_MIN..=config::WINDOW_BYTES_MAX).contains(&v) {
        return Err(ctx.err(
            join(at, name),
            format!(
                "{v} is out of range {}..={}",
                config::WINDOW_BYTES_MIN,
                config::WINDOW_BYTES_MAX
            ),
        ));
    }
    Ok(v)
}

/// The HTTP/2 options of a cluster (`h2` at `at`; none: Envoy's defaults) and its
/// `common_http_protocol_options` (`common` at `common_at`).
fn upstream_h2(
    h2: Option<&core_pb::Http2ProtocolOptions>,
    common: Option<(&core_pb::HttpProtocolOptions, &str)>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<UpstreamH2, TranslateError> {
    let mut out = UpstreamH2 {
        streams_max: 0,
        requests_max: 0,
        stream_window: ENVOY_STREAM_WINDOW_DEFAULT,
        connection_window: ENVOY_CONNECTION_WINDOW_DEFAULT,
        keepalive: None,
        idle_timeout_ms: config::IDLE_TIMEOUT_MS_DEFAULT,
        max_connection_duration_ms: 0,
    };
    if let Some(h) = h2 {
        out.streams_max = h.max_concurrent_streams.as_ref().map_or(0, |v| v.value);
        out.stream_window = h2_window(
            h.initial_stream_window_size.as_ref(),
            ENVOY_STREAM_WINDOW_DEFAULT,
            ctx,
            at,
            "initial_stream_window_size",
        )?;
        out.connection_window = h2_window(
            h.initial_connection_window_size.as_ref(),
            ENVOY_CONNECTION_WINDOW_DEFAULT,
            ctx,
            at,
            "initial_connection_window_size",
        )?;
        if let Some(k) = &h.connection_keepalive {
            out.keepalive = h2_keepalive(k, ctx, &join(at, "connection_keepalive"))?;
        }
    }
    if let Some((c, cat)) = common {
        out.requests_max = c
            .max_requests_per_connection
            .as_ref()
            .map_or(0, |v| v.value);
        if let Some(d) = &c.idle_timeout {
            // Envoy: 0 disables it; ringside's longest (a day) instead, and a longer one is
            // taken as a day.
            let ms = duration_ms(d, ctx, &join(cat, "idle_timeout"), u64::MAX / 2)?;
            out.idle_timeout_ms = match ms {
                0 => config::DUBBO_TIMER_MS_MAX,
                ms => ms.min(config::DUBBO_TIMER_MS_MAX),
            };
        }
        if let Some(d) = &c.max_connection_duration {
            // 0: none, as in Envoy.
            out.max_connection_duration_ms =
                duration_ms(d, ctx, &join(cat, "max_connection_duration"), u64::MAX / 2)?
                    .min(config::IDLE_TIMEOUT_MS_MAX);
        }
        if c.max_connection_duration_jitter.is_some() {
            return Err(ctx.err(join(cat, "max_connection_duration_jitter"), "not supported"));
        }
    }
    Ok(out)
}

/// `connection_keepalive` as Envoy validates it (`timeout` required, durations of 1 ms at
/// least, `interval_jitter` 0 ..= 100 %); without `interval` no PING is sent (Envoy's
/// `connection_idle_interval` PING before a stream on an idle connection is refused).
fn h2_keepalive(
    k: &core_pb::KeepaliveSettings,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<config::Http2Keepalive>, TranslateError> {
    if k.connection_idle_interval.is_some() {
        return Err(ctx.err(join(at, "connection_idle_interval"), "not supported"));
    }
    let ms = |d: &Duration, name: &str| -> Result<u64, TranslateError> {
        let field = join(at, name);
        let ms = duration_ms(d, ctx, &field, config::H2_TIMER_MS_MAX)?;
        if ms == 0 {
            return Err(ctx.err(field, "must be at least 1 ms"));
        }
        Ok(ms)
    };
    let Some(timeout) = &k.timeout else {
        return Err(ctx.err(join(at, "timeout"), "missing"));
    };
    let timeout_ms = ms(timeout, "timeout")?;
    let jitter_percent = match &k.interval_jitter {
        None => config::KEEPALIVE_JITTER_PERCENT_DEFAULT,
        Some(p) if (0.0..=100.0).contains(&p.value) => p.value.round() as u32,
        Some(p) => {
            return Err(ctx.err(
                join(at, "interval_jitter"),
                format!("{} is out of range 0..=100", p.value),
            ))
        }
    };
    Ok(match &k.interval {
        None => None,
        Some(d) => Some(config::Http2Keepalive {
            interval_ms: ms(d, "interval")?,
            timeout_ms,
            jitter_percent,
        }),
    })
}

/// What an `HttpProtocolOptions` (at `at`) sets on the cluster's HTTP/2 connections: the
/// HTTP/2 options of whichever protocol config it has, and `common_http_protocol_options`.
fn upstream_options(
    o: &upstream_http_pb::HttpProtocolOptions,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<UpstreamH2, TranslateError> {
    use upstream_http_pb::http_protocol_options::explicit_http_config::ProtocolConfig as P;
    use upstream_http_pb::http_protocol_options::UpstreamProtocolOptions as U;
    let (h2, h2_at) = match &o.upstream_protocol_options {
        Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(P::Http2ProtocolOptions(h)) => {
                (Some(h), "explicit_http_config.http2_protocol_options")
            }
            _ => (None, ""),
        },
        Some(U::AutoConfig(a)) => (
            a.http2_protocol_options.as_ref(),
            "auto_config.http2_protocol_options",
        ),
        Some(U::UseDownstreamProtocolConfig(d)) => (
            d.http2_protocol_options.as_ref(),
            "use_downstream_protocol_config.http2_protocol_options",
        ),
        None => (None, ""),
    };
    let cat = join(at, "common_http_protocol_options");
    upstream_h2(
        h2,
        o.common_http_protocol_options
            .as_ref()
            .map(|c| (c, cat.as_str())),
        ctx,
        &join(at, h2_at),
    )
}

/// A cluster's `upstream_bind_config` (Istio's inbound clusters: 127.0.0.6, and `::6` in
/// `extra_source_addresses` on dual-stack pods): the source address of each family.
fn upstream_bind(b: &core_pb::BindConfig, ctx: &Ctx<'_>) -> Result<Vec<IpAddr>, TranslateError> {
    let at = "upstream_bind_config";
    if b.freebind.as_ref().is_some_and(|f| f.value) {
        return Err(ctx.err(format!("{at}.freebind"), "not supported"));
    }
    if !b.socket_options.is_empty() {
        return Err(ctx.err(format!("{at}.socket_options"), "not supported"));
    }
    if b.local_address_selector.is_some() {
        return Err(ctx.err(format!("{at}.local_address_selector"), "not supported"));
    }
    #[allow(deprecated)]
    let additional = b
        .additional_source_addresses
        .iter()
        .enumerate()
        .map(|(i, a)| (Some(a), format!("{at}.additional_source_addresses[{i}]")));
    let mut sources = Vec::new();
    let extra = b.extra_source_addresses.iter().enumerate().map(|(i, e)| {
        (
            e.address.as_ref(),
            format!("{at}.extra_source_addresses[{i}].address"),
        )
    });
    // No source_address: only socket options would be bound (none are supported).
    let first = b
        .source_address
        .as_ref()
        .map(|a| (Some(a), format!("{at}.source_address")));
    for (sa, field) in first.into_iter().chain(extra).chain(additional) {
        let Some(sa) = sa else {
            return Err(ctx.err(field, "missing"));
        };
        let ip: IpAddr = sa.address.parse().map_err(|_| {
            ctx.err(
                format!("{field}.address"),
                format!("{:?} is not an IP literal", sa.address),
            )
        })?;
        use core_pb::socket_address::PortSpecifier as P;
        if !matches!(sa.port_specifier, None | Some(P::PortValue(0))) {
            return Err(ctx.err(
                format!("{field}.port_value"),
                "only port 0 (the kernel picks the source port) is supported",
            ));
        }
        if sources.iter().any(|s: &IpAddr| s.is_ipv4() == ip.is_ipv4()) {
            return Err(ctx.err(field, "another source address has this IP family"));
        }
        sources.push(ip);
    }
    Ok(sources)
}

/// CDS `common_lb_config.zone_aware_lb_config` (docs/governance.md#zone-aware-routing):
/// Envoy's defaults without it (100 %, 6), as Envoy routes zone-aware whenever there is a
/// local cluster.
fn zone_aware(
    common: Option<&cluster_pb::cluster::CommonLbConfig>,
    ctx: &Ctx<'_>,
) -> Result<config::ZoneAware, TranslateError> {
    use cluster_pb::cluster::common_lb_config::LocalityConfigSpecifier as L;
    let mut out = config::ZoneAware::default();
    let Some(L::ZoneAwareLbConfig(z)) = common.and_then(|c| c.locality_config_specifier.as_ref())
    else {
        return Ok(out);
    };
    if let Some(p) = &z.routing_enabled {
        if !(0.0..=100.0).contains(&p.value) {
            return Err(ctx.err(
                "common_lb_config.zone_aware_lb_config.routing_enabled",
                "must be within 0 and 100",
            ));
        }
        // Envoy: PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT.
        out.routing_enabled = p.value.round() as u32;
    }
    if let Some(m) = &z.min_cluster_size {
        out.min_cluster_size = m.value;
    }
    out.fail_traffic_on_panic = z.fail_traffic_on_panic;
    Ok(out)
}

// === endpoints ===

/// The endpoints of one ClusterLoadAssignment as a cluster takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub endpoints: Vec<SocketAddr>,
    /// `weight` and `priority` of each endpoint, index for index; empty when every endpoint
    /// has priority 0 and the same weight (the common case costs nothing).
    pub metadata: Vec<config::EndpointMetadata>,
    /// Envoy's load per priority level present in `metadata` (see [`priority_load`]); empty
    /// when the first level takes it all.
    pub priority_load: Vec<u32>,
    /// The same with locality-weighted balancing (see [`locality_load`]): one entry per
    /// (priority, locality) group present in `metadata`; empty when the first takes it all.
    pub locality_load: Vec<u32>,
    /// (healthy, all) endpoints of each priority level present in `metadata`.
    pub priority_hosts: Vec<(u32, u32)>,
    /// `policy.overprovisioning_factor` (or Envoy's default).
    pub overprovisioning: u32,
}

impl Assignment {
    /// Gives `cluster` these endpoints: with [`config::Cluster::locality_weighted`], grouped
    /// by locality with the loads of the groups; else by priority only (localities dropped).
    pub fn apply(&self, cluster: &mut config::Cluster) {
        cluster.endpoints = self.endpoints.clone();
        cluster.endpoint_metadata = self.metadata.clone();
        if cluster.locality_weighted {
            cluster.priority_load = self.locality_load.clone();
            cluster.priority_hosts = Vec::new();
        } else {
            cluster.priority_load = self.priority_load.clone();
            cluster.priority_hosts = self.priority_hosts.clone();
            cluster
                .endpoint_metadata
                .iter_mut()
                .for_each(|m| m.locality = 0);
        }
        cluster.overprovisioning = self.overprovisioning;
    }
}

pub(crate) fn decode_endpoints(any: &Any) -> Result<(String, Assignment), TranslateError> {
    let la: endpoint_pb::ClusterLoadAssignment = decode_top(any, ENDPOINT_TYPE)?;
    let ctx = Ctx {
        kind: "cluster load assignment",
        name: &la.cluster_name,
    };
    if la.cluster_name.is_empty() {
        return Err(ctx.err("cluster_name", "must not be empty"));
    }
    Ok((la.cluster_name.clone(), endpoints(&la, &ctx, "")?))
}

/// Endpoints healthy or of unknown health, in order, each with its priority and
/// `load_balancing_weight` (unset: 1, Envoy's default).
fn endpoints(
    la: &endpoint_pb::ClusterLoadAssignment,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Assignment, TranslateError> {
    use core_pb::HealthStatus as H;
    use envoy_types::pb::google::protobuf::value::Kind;
    if !la.named_endpoints.is_empty() {
        return Err(ctx.err(
            join(at, "named_endpoints"),
            "named endpoints are not supported",
        ));
    }
    let mut out = Assignment::default();
    // (healthy, all) endpoints per priority, for Envoy's priority load.
    let mut hosts: std::collections::BTreeMap<u32, (u32, u32)> = Default::default();
    // Each locality's (priority, index, healthy, all, weight), for locality-weighted loads.
    let mut localities: Vec<LocalityHosts> = Vec::with_capacity(la.endpoints.len());
    for (i, l) in la.endpoints.iter().enumerate() {
        let weight = match l.load_balancing_weight.as_ref().map(|w| w.value) {
            Some(0) => {
                return Err(ctx.err(
                    join(at, &format!("endpoints[{i}].load_balancing_weight")),
                    "must be at least 1",
                ))
            }
            // Unset: the locality takes no load under locality-weighted balancing (Envoy).
            w => w.unwrap_or(0),
        };
        let mut here = LocalityHosts {
            priority: l.priority,
            healthy: 0,
            all: 0,
            weight,
        };
        for (j, e) in l.lb_endpoints.iter().enumerate() {
            let eat = join(at, &format!("endpoints[{i}].lb_endpoints[{j}]"));
            let ep = match &e.host_identifier {
                Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
                Some(endpoint_pb::lb_endpoint::HostIdentifier::EndpointName(_)) => {
                    return Err(ctx.err(
                        format!("{eat}.endpoint_name"),
                        "named endpoints are not supported",
                    ))
                }
                None => return Err(ctx.err(format!("{eat}.endpoint"), "missing")),
            };
            let addr =
                socket_address(ep.address.as_ref(), ctx, &format!("{eat}.endpoint.address"))?;
            let weight = e.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(ctx.err(format!("{eat}.load_balancing_weight"), "must be at least 1"));
            }
            let excluded = matches!(
                H::try_from(e.health_status),
                Ok(H::Unhealthy | H::Draining | H::Timeout)
            );
            let transport_socket_match = match e
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH_KEY))
            {
                Some(st) => string_labels(st).map_err(|k| {
                    ctx.err(
                        format!(
                            "{eat}.metadata.filter_metadata[{TRANSPORT_SOCKET_MATCH_KEY:?}].{k}"
                        ),
                        "only string values are supported",
                    )
                })?,
                None => Default::default(),
            };
            let tag = match e
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(LB_METADATA_KEY))
                .and_then(|st| st.fields.get(TAG_FIELD))
                .map(|v| &v.kind)
            {
                None => String::new(),
                Some(Some(Kind::StringValue(s))) if s.len() <= config::TAG_BYTES_MAX => s.clone(),
                Some(_) => {
                    return Err(ctx.err(
                        format!("{eat}.metadata.filter_metadata[{LB_METADATA_KEY:?}].{TAG_FIELD}"),
                        format!(
                            "must be a string of at most {} bytes",
                            config::TAG_BYTES_MAX
                        ),
                    ))
                }
            };
            let count = hosts.entry(l.priority).or_default();
            count.1 += 1;
            here.all += 1;
            if !excluded {
                count.0 += 1;
                here.healthy += 1;
                out.endpoints.push(addr);
                out.metadata.push(config::EndpointMetadata {
                    weight,
                    priority: l.priority,
                    transport_socket_match,
                    tag,
                    locality: i as u32,
                    region: l
                        .locality
                        .as_ref()
                        .map(|l| l.region.clone())
                        .unwrap_or_default(),
                    zone: l
                        .locality
                        .as_ref()
                        .map(|l| l.zone.clone())
                        .unwrap_or_default(),
                    sub_zone: l
                        .locality
                        .as_ref()
                        .map(|l| l.sub_zone.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                });
            }
        }
        localities.push(here);
        if l.metadata
            .as_ref()
            .is_some_and(|m| m.filter_metadata.contains_key(TRANSPORT_SOCKET_MATCH_KEY))
        {
            return Err(ctx.err(
                join(at, &format!("endpoints[{i}].metadata")),
                "transport socket matching by locality metadata is not supported (by endpoint metadata it is)",
            ));
        }
    }
    let plain = |m: &config::EndpointMetadata| {
        m.priority == 0
            && m.locality == 0
            && m.weight == out.metadata[0].weight
            && m.transport_socket_match.is_empty()
            && m.tag.is_empty()
            && m.region.is_empty()
            && m.zone.is_empty()
            && m.sub_zone.is_empty()
    };
    if out.metadata.iter().all(plain) {
        out.metadata = Vec::new();
    }
    let overprovisioning = match la.policy.as_ref() {
        Some(p) if p.weighted_priority_health => {
            return Err(ctx.err(
                join(at, "policy.weighted_priority_health"),
                "not supported (priority health counts endpoints, Envoy's default)",
            ))
        }
        Some(p) => match p.overprovisioning_factor.as_ref().map(|f| f.value) {
            Some(0) => {
                return Err(ctx.err(
                    join(at, "policy.overprovisioning_factor"),
                    "must be at least 1",
                ))
            }
            f => f.unwrap_or(OVERPROVISIONING_FACTOR_DEFAULT),
        },
        None => OVERPROVISIONING_FACTOR_DEFAULT,
    };
    let counts: Vec<(u32, u32)> = hosts.into_values().collect();
    let load = priority_load(&counts, overprovisioning);
    // The levels the endpoint table has: those with a healthy endpoint.
    let present: Vec<u32> = counts
        .iter()
        .zip(&load)
        .filter(|((healthy, _), _)| *healthy > 0)
        .map(|(_, &l)| l)
        .collect();
    if present.first().is_some_and(|&l| l < 100) {
        out.priority_load = present;
    }
    out.priority_hosts = counts.iter().copied().filter(|&(h, _)| h > 0).collect();
    out.overprovisioning = overprovisioning;
    let by_locality = locality_load(&localities, &counts, &load, overprovisioning);
    if by_locality.first().is_some_and(|&l| l < 100) {
        out.locality_load = by_locality;
    }
    Ok(out)
}

/// One `LocalityLbEndpoints` of an assignment: its priority, (healthy, all) endpoints and
/// `load_balancing_weight` (unset: 0).
#[derive(Clone, Copy, Debug)]
pub struct LocalityHosts {
    pub priority: u32,
    pub healthy: u32,
    pub all: u32,
    pub weight: u32,
}

/// Envoy's locality-weighted balancing (`locality_weighted_lb_config`) as one load per
/// (priority, locality) group that has a healthy endpoint, in the endpoint table's order
/// (priority, then the locality's index): each priority's load (`load`, one per entry of
/// `counts`, the (healthy, all) of each priority present) is shared among its localities by
/// their effective weight, `weight × min(1, overprovisioning × healthy / all)`
/// (`HostSetImpl::effectiveLocalityWeight`). A priority none of whose localities has an
/// effective weight (no weights given) shares its load by healthy endpoints, as Envoy then
/// balances over all of the priority's hosts. Rounded on the cumulative sums, so the loads
/// sum to 100 and each is within 1 of the exact share.
pub fn locality_load(
    localities: &[LocalityHosts],
    counts: &[(u32, u32)],
    load: &[u32],
    overprovisioning: u32,
) -> Vec<u32> {
    let mut priorities: Vec<u32> = localities.iter().map(|l| l.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    debug_assert_eq!(priorities.len(), counts.len());
    let mut out = Vec::new();
    let (mut cum, mut given) = (0.0f64, 0u32);
    for (&p, &level_load) in priorities.iter().zip(load) {
        let here: Vec<&LocalityHosts> = localities
            .iter()
            .filter(|l| l.priority == p && l.healthy > 0)
            .collect();
        let effective = |l: &LocalityHosts| {
            let availability =
                f64::from(overprovisioning) / 100.0 * f64::from(l.healthy) / f64::from(l.all);
            f64::from(l.weight) * availability.min(1.0)
        };
        let mut shares: Vec<f64> = here.iter().map(|l| effective(l)).collect();
        if shares.iter().all(|&w| w <= 0.0) {
            shares = here.iter().map(|l| f64::from(l.healthy)).collect();
        }
        let total: f64 = shares.iter().sum();
        for w in shares {
            cum += f64::from(level_load) * w / total;
            let upto = (cum.round() as u32).min(100);
            out.push(upto - given);
            given = upto;
        }
    }
    out
}

/// Envoy's default `policy.overprovisioning_factor` (140 %: a level is not considered
/// degraded until fewer than 1/1.4 = 71.4 % of its endpoints are healthy).
pub use config::OVERPROVISIONING_FACTOR_DEFAULT;

/// Envoy's priority load (`LoadBalancerBase::recalculatePerPriorityState`, without degraded
/// hosts and panic mode), shared with the shards (which recompute it as they eject endpoints).
pub use config::priority_load;

/// The endpoint metadata that chooses among a cluster's `transport_socket_matches`.
const TRANSPORT_SOCKET_MATCH_KEY: &str = "envoy.transport_socket_match";

/// Envoy's load-balancing metadata namespace, and the field in it that is an endpoint's
/// traffic label (docs/governance.md#traffic-labels).
const LB_METADATA_KEY: &str = "envoy.lb";
const TAG_FIELD: &str = "dubbo.tag";

/// A `Struct` of string values as labels; `Err` the first key whose value is no string.
fn string_labels(
    st: &envoy_types::pb::google::protobuf::Struct,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    st.fields
        .iter()
        .map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Ok((k.clone(), s.clone())),
            _ => Err(k.clone()),
        })
        .collect()
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;

/// A cluster's circuit breakers: the `DEFAULT` priority threshold's `max_requests`,
/// `max_connections`, `max_pending_requests` and `max_retries` (Envoy's defaults, 1024 and 3,
/// for those the threshold leaves out). Without a `DEFAULT` threshold, no limit (where Envoy
/// applies its defaults anyway: docs/governance.md). Its `retry_budget` too (which then
/// replaces `max_retries`). Other priorities and `per_host_thresholds` are ignored.
fn circuit_breakers(
    cb: Option<&cluster_pb::CircuitBreakers>,
    ctx: &Ctx<'_>,
) -> Result<Option<config::CircuitBreakers>, TranslateError> {
    let Some(t) = cb.and_then(|cb| {
        cb.thresholds
            .iter()
            .find(|t| t.priority == core_pb::RoutingPriority::Default as i32)
    }) else {
        return Ok(None);
    };
    // Envoy 1.40's `budget_interval` (requests started in a past window count too): not
    // modelled, so refused rather than enforced differently; 0 (its default) is the rule.
    let interval = t
        .retry_budget
        .as_ref()
        .and_then(|b| b.budget_interval.as_ref());
    if interval.is_some_and(|d| d.seconds != 0 || d.nanos != 0) {
        return Err(ctx.err(
            "circuit_breakers.thresholds.retry_budget.budget_interval".to_string(),
            "not supported (only 0, the default)".to_string(),
        ));
    }
    Ok(Some(config::CircuitBreakers {
        max_requests: t
            .max_requests
            .as_ref()
            .map_or(ENVOY_MAX_REQUESTS_DEFAULT, |v| v.value),
        max_retries: t
            .max_retries
            .as_ref()
            .map_or(config::MAX_RETRIES_DEFAULT, |v| v.value),
        max_connections: t
            .max_connections
            .as_ref()
            .map_or(ENVOY_MAX_REQUESTS_DEFAULT, |v| v.value),
        max_pending_requests: t
            .max_pending_requests
            .as_ref()
            .map_or(ENVOY_MAX_REQUESTS_DEFAULT, |v| v.value),
        // Present (even empty): Envoy's budget, with its defaults for what it leaves out.
        retry_budget: t.retry_budget.as_ref().map(|b| config::RetryBudget {
            budget_percent: config::Percent(
                b.budget_percent
                    .as_ref()
                    .map_or(config::RETRY_BUDGET_PERCENT_DEFAULT, |p| p.value),
            ),
            min_retry_concurrency: b
                .min_retry_concurrency
                .as_ref()
                .map_or(config::MIN_RETRY_CONCURRENCY_DEFAULT, |v| v.value),
        }),
    }))
}

/// A cluster's `outlier_detection`: its consecutive-5xx ejection (`consecutive_5xx`,
/// `interval`, `base_ejection_time`, `max_ejection_time`, `max_ejection_percent`, Envoy's
/// defaults for those left out). `enforcing_consecutive_5xx` 0 turns it off (`None`), between
/// 0 and 100 % is NACKed. Success-rate and failure-percentage ejection, gateway and
/// local-origin splits and the jitter are ignored (docs/governance.md).
fn outlier_detection(
    o: &cluster_pb::OutlierDetection,
    ctx: &Ctx<'_>,
) -> Result<Option<config::OutlierDetection>, TranslateError> {
    let d = config::OutlierDetection::default();
    // Envoy's enforcing_* percentages: 0 or 100 (a share of detections enforced is not
    // supported); `default` is Envoy's.
    use envoy_types::pb::google::protobuf::UInt32Value;
    let enforced =
        |v: Option<&UInt32Value>, field: &str, default: u32| match v.map_or(default, |v| v.value) {
            0 => Ok(false),
            100 => Ok(true),
            n => Err(ctx.err(
                format!("outlier_detection.{field}"),
                format!("{n} %: only 0 or 100 is supported"),
            )),
        };
    let consecutive = enforced(
        o.enforcing_consecutive_5xx.as_ref(),
        "enforcing_consecutive_5xx",
        100,
    )?;
    let success_rate = enforced(
        o.enforcing_success_rate.as_ref(),
        "enforcing_success_rate",
        100,
    )?;
    let failure_percentage = enforced(
        o.enforcing_failure_percentage.as_ref(),
        "enforcing_failure_percentage",
        0,
    )?;
    if !(consecutive || success_rate || failure_percentage) {
        return Ok(None);
    }
    let ms = |d: Option<&Duration>, field: &str, default: u64| match d {
        Some(d) => duration_ms(
            d,
            ctx,
            &format!("outlier_detection.{field}"),
            config::RATE_LIMIT_FILL_INTERVAL_MS_MAX,
        ),
        None => Ok(default),
    };
    let or = |v: Option<&UInt32Value>, default: u32| v.map_or(default, |v| v.value);
    let fp = config::FailurePercentage::default();
    let sr = config::SuccessRate::default();
    if or(o.failure_percentage_threshold.as_ref(), fp.threshold) > 100 {
        return Err(ctx.err(
            "outlier_detection.failure_percentage_threshold",
            "must be at most 100",
        ));
    }
    Ok(Some(config::OutlierDetection {
        consecutive_errors: match consecutive {
            true => or(o.consecutive_5xx.as_ref(), d.consecutive_errors),
            false => 0,
        },
        failure_percentage: failure_percentage.then(|| config::FailurePercentage {
            threshold: or(o.failure_percentage_threshold.as_ref(), fp.threshold),
            minimum_hosts: or(
                o.failure_percentage_minimum_hosts.as_ref(),
                fp.minimum_hosts,
            ),
            request_volume: or(
                o.failure_percentage_request_volume.as_ref(),
                fp.request_volume,
            ),
        }),
        success_rate: success_rate.then(|| config::SuccessRate {
            stdev_factor: or(o.success_rate_stdev_factor.as_ref(), sr.stdev_factor),
            minimum_hosts: or(o.success_rate_minimum_hosts.as_ref(), sr.minimum_hosts),
            request_volume: or(o.success_rate_request_volume.as_ref(), sr.request_volume),
        }),
        interval_ms: ms(o.interval.as_ref(), "interval", d.interval_ms)?,
        base_ejection_time_ms: ms(
            o.base_ejection_time.as_ref(),
            "base_ejection_time",
            d.base_ejection_time_ms,
        )?,
        max_ejection_time_ms: ms(
            o.max_ejection_time.as_ref(),
            "max_ejection_time",
            d.max_ejection_time_ms,
        )?,
        max_ejection_percent: o
            .max_ejection_percent
            .as_ref()
            .map_or(d.max_ejection_percent, |v| v.value),
    }))
}

/// Envoy's `max_requests` when a threshold does not give it.
const ENVOY_MAX_REQUESTS_DEFAULT: u32 = 1024;

/// A cluster's `upstream_connection_options.tcp_keepalive`, as Envoy reads it: a field left
/// out takes the kernel's default (Linux: 7200 s, 75 s, 9 probes), any field set to 0 turns
/// keepalive off; a value beyond the kernel's limit is NACKed (Envoy's setsockopt would fail
/// on every connection).
fn tcp_keepalive(
    k: &core_pb::TcpKeepalive,
    ctx: &Ctx<'_>,
) -> Result<config::TcpKeepalive, TranslateError> {
    let field = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>,
                 name: &str,
                 default: u32,
                 max: u32| {
        let v = v.as_ref().map_or(default, |v| v.value);
        if v > max {
            return Err(ctx.err(
                format!("upstream_connection_options.tcp_keepalive.{name}"),
                format!("{v} is out of range 0..={max}"),
            ));
        }
        Ok(v)
    };
    let time_s = field(
        &k.keepalive_time,
        "keepalive_time",
        config::KEEPALIVE_TIME_S_KERNEL,
        config::KEEPALIVE_TIME_S_MAX,
    )?;
    let interval_s = field(
        &k.keepalive_interval,
        "keepalive_interval",
        config::KEEPALIVE_PROBE_INTERVAL_S_DEFAULT,
        config::KEEPALIVE_PROBE_INTERVAL_S_MAX,
    )?;
    let probes = field(
        &k.keepalive_probes,
        "keepalive_probes",
        config::KEEPALIVE_PROBES_DEFAULT,
        config::KEEPALIVE_PROBES_MAX,
    )?;
    let enabled = time_s > 0 && interval_s > 0 && probes > 0;
    Ok(config::TcpKeepalive {
        enabled,
        time_s: time_s.max(1),
        interval_s: interval_s.max(1),
        probes: probes.max(1),
    })
}

// === filters istiod always adds (docs/xds.md, "Istio": the decisions table) ===

/// `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct`: only the wrapped type is read here.
#[derive(Clone, PartialEq, prost::Message)]
struct TypedStructUrl {
    #[prost(string, tag = "1")]
    type_url: String,
}

const UDPA_TYPED_STRUCT: &str = "type.googleapis.com/udpa.type.v1.TypedStruct";
const XDS_TYPED_STRUCT: &str = "type.googleapis.com/xds.type.v3.TypedStruct";
const ISTIO_STATS: &str = "type.googleapis.com/stats.PluginConfig";
const ISTIO_MX: &str = "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange";
/// The ALPN protocol of Istio's in-band TCP metadata exchange.
const ISTIO_PEER_EXCHANGE: &str = "istio-peer-exchange";
const ISTIO_PEER_METADATA: &str = "type.googleapis.com/io.istio.http.peer_metadata.Config";
const ISTIO_AUTHN: &str = "type.googleapis.com/io.istio.network.authn.Config";
const ISTIO_ALPN: &str =
    "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig";
const WASM_HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const GRPC_STATS: &str =
    "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";
const CORS: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const HTTP_LOCAL_RATELIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const HTTP_LOCAL_RATELIMIT_NAME: &str = "envoy.filters.http.local_ratelimit";

/// The type a filter's `typed_config` configures: the wrapped one for a TypedStruct.
fn config_type(any: &Any) -> String {
    if any.type_url == UDPA_TYPED_STRUCT || any.type_url == XDS_TYPED_STRUCT {
        if let Ok(t) = TypedStructUrl::decode(any.value.as_slice()) {
            return t.type_url;
        }
    }
    any.type_url.clone()
}

/// Istio's standard metrics for a listener whose chains carry Istio's `istio.stats` filter (a
/// network filter, or an HTTP filter of its connection manager): reported as `destination` on
/// an INBOUND listener, else as `source` (what istio-proxy does).
fn istio_reporter(l: &listener_pb::Listener) -> Option<config::IstioReporter> {
    let stats = |a: &Any| config_type(a) == ISTIO_STATS;
    let in_hcm = |a: &Any| {
        a.type_url == HCM_TYPE
            && hcm_pb::HttpConnectionManager::decode(a.value.as_slice()).is_ok_and(|h| {
                h.http_filters.iter().any(|f| match &f.config_type {
                    Some(hcm_pb::http_filter::ConfigType::TypedConfig(t)) => stats(t),
                    _ => false,
                })
            })
    };
    let has = l
        .filter_chains
        .iter()
        .chain(&l.default_filter_chain)
        .flat_map(|c| &c.filters)
        .any(|f| match &f.config_type {
            Some(listener_pb::filter::ConfigType::TypedConfig(a)) => stats(a) || in_hcm(a),
            _ => false,
        });
    // envoy.config.core.v3.TrafficDirection: 1 INBOUND.
    has.then_some(if l.traffic_direction == 1 {
        config::IstioReporter::Destination
    } else {
        config::IstioReporter::Source
    })
}

/// A listener's `traffic_direction` (UNSPECIFIED: none).
fn traffic_direction(d: i32) -> Option<config::TrafficDirection> {
    match core_pb::TrafficDirection::try_from(d) {
        Ok(core_pb::TrafficDirection::Inbound) => Some(config::TrafficDirection::Inbound),
        Ok(core_pb::TrafficDirection::Outbound) => Some(config::TrafficDirection::Outbound),
        _ => None,
    }
}

/// Why a network filter Istio adds before the proxy filter can be ignored, or None when it
/// cannot (it is then refused like any other extra filter).
fn ignorable_network_filter(any: &Any) -> Option<&'static str> {
    match config_type(any).as_str() {
        // Counters and histograms of istio-proxy's own (ringside has its /stats).
        ISTIO_STATS => Some("telemetry only"),
        // Exchanges peer metadata in-band on connections that negotiated the ALPN
        // `istio-peer-exchange`: ringside does it there by itself (its presence keeps that
        // protocol in the chain's ALPN list; filter_chain).
        ISTIO_MX => Some("the in-band exchange is ringside's own (ALPN istio-peer-exchange)"),
        // Records the mTLS peer identity for Istio's filters; ringside's rbac reads the
        // peer's certificate itself.
        ISTIO_AUTHN => Some("records the mTLS peer identity only"),
        _ => None,
    }
}

/// istio-proxy's `istio.alpn` filter leaves a cluster's ALPN alone when the cluster's metadata
/// says `istio: {alpn_override: "false"}` (istiod: a DestinationRule's own TLS).
fn keeps_alpn(m: Option<&core_pb::Metadata>) -> bool {
    use envoy_types::pb::google::protobuf::value::Kind;
    m.and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|s| s.fields.get("alpn_override"))
        .is_some_and(|v| matches!(&v.kind, Some(Kind::StringValue(s)) if s == "false"))
}

/// `istio.alpn` (istio-proxy's `istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig`):
/// `alpn_override` entries of (`upstream_protocol` HTTP10 = 0, HTTP11, HTTP2; the ALPN list).
#[derive(Clone, PartialEq, prost::Message)]
struct AlpnFilterConfig {
    #[prost(message, repeated, tag = "1")]
    alpn_override: Vec<AlpnOverridePb>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AlpnOverridePb {
    #[prost(int32, tag = "1")]
    upstream_protocol: i32,
    #[prost(string, repeated, tag = "2")]
    alpn_override: Vec<String>,
}

/// The ALPN lists of an `istio.alpn` filter (bare, or in a TypedStruct as JSON); a later entry
/// for the same protocol replaces an earlier one.
fn alpn_filter(any: &Any) -> Result<config::AlpnOverride, String> {
    let entries: Vec<(i32, Vec<String>)> = if any.type_url == ISTIO_ALPN {
        AlpnFilterConfig::decode(any.value.as_slice())
            .map_err(|e| format!("cannot decode istio.alpn FilterConfig: {e}"))?
            .alpn_override
            .into_iter()
            .map(|o| (o.upstream_protocol, o.alpn_override))
            .collect()
    } else {
        let t = TypedStructFull::decode(any.value.as_slice())
            .map_err(|e| format!("cannot decode TypedStruct: {e}"))?;
        let json = struct_json(&t.value.unwrap_or_default());
        let list = json
            .get("alpn_override")
            .or_else(|| json.get("alpnOverride"));
        let mut out = Vec::new();
        for o in list.and_then(|l| l.as_array()).into_iter().flatten() {
            let p = o
                .get("upstream_protocol")
                .or_else(|| o.get("upstreamProtocol"));
            let p = match p.and_then(|p| p.as_str()) {
                None | Some("HTTP10") => 0,
                Some("HTTP11") => 1,
                Some("HTTP2") => 2,
                Some(other) => return Err(format!("upstream_protocol {other:?} is not known")),
            };
            let alpn = o
                .get("alpn_override")
                .or_else(|| o.get("alpnOverride"))
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            out.push((p, alpn));
        }
        out
    };
    let mut out = config::AlpnOverride::default();
    for (p, alpn) in entries {
        match p {
            0 => out.http10 = alpn,
            1 => out.http11 = alpn,
            2 => out.http2 = alpn,
            other => return Err(format!("upstream_protocol {other} is not known")),
        }
    }
    Ok(out)
}

/// Why an HTTP filter can be ignored; Err(reason) when ignoring it would change what the
/// listener does (the listener is then refused).
fn http_filter_decision(any: &Any) -> Result<&'static str, String> {
    let ty = config_type(any);
    match ty.as_str() {
        ISTIO_STATS => Ok("telemetry only"),
        ISTIO_PEER_METADATA | ISTIO_MX => Ok("peer metadata headers for telemetry only"),
        GRPC_STATS => Ok("telemetry only"),
        // Acts only on routes with a CORS policy, i.e. browser (gRPC-Web) preflights; ringside
        // speaks h2c gRPC/Triple, which browsers do not send.
        CORS => Ok("acts only for browser requests with a route CORS policy"),
        FAULT => {
            use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
            let f = HttpFault::decode(any.value.as_slice())
                .map_err(|e| format!("cannot decode HTTPFault: {e}"))?;
            if f.delay.is_some() || f.abort.is_some() {
                Err("fault injection (a delay or abort) is not supported".into())
            } else {
                // Istio's filter is empty; faults come per route (typed_per_filter_config,
                // refused there).
                Ok("no fault configured")
            }
        }
        WASM_HTTP => {
            use envoy_types::pb::envoy::config::core::v3::{async_data_source, data_source};
            use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
            use envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm;
            let w = Wasm::decode(any.value.as_slice())
                .map_err(|e| format!("cannot decode Wasm: {e}"))?;
            let vm = w.config.as_ref().and_then(|c| match &c.vm {
                Some(Vm::VmConfig(v)) => Some(v),
                None => None,
            });
            let code = vm
                .and_then(|v| v.code.as_ref())
                .and_then(|c| match &c.specifier {
                    Some(async_data_source::Specifier::Local(d)) => d.specifier.as_ref(),
                    _ => None,
                });
            let null_vm = vm.is_some_and(|v| v.runtime == "envoy.wasm.runtime.null");
            match code {
                // istio-proxy's compiled-in telemetry plugins (Istio 1.18 and older).
                Some(data_source::Specifier::InlineString(s))
                    if null_vm
                        && (s == "envoy.wasm.metadata_exchange" || s == "envoy.wasm.stats") =>
                {
                    Ok("istio-proxy's telemetry plugin")
                }
                _ => Err("Wasm filters are not supported".into()),
            }
        }
        _ => Err(format!("http filter type {ty} is not supported")),
    }
}

/// HTTP filters whose per-route config ringside refuses: (filter name, the end of its
/// per-route config's type URL, the filter's name in the error).
const PER_ROUTE_REFUSED: [(&str, &str, &str); 3] = [
    (
        "envoy.filters.http.jwt_authn",
        "filters.http.jwt_authn.v3.PerRouteConfig",
        "jwt_authn",
    ),
    (
        "envoy.filters.http.ext_authz",
        "filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "ext_authz",
    ),
    (
        "envoy.filters.http.rbac",
        "filters.http.rbac.v3.RBACPerRoute",
        "rbac",
    ),
];

/// Per-route fault injection (Istio's VirtualService `fault`, a `typed_per_filter_config` entry
/// for the fault filter) changes what callers get: refused. Other per-filter configs only
/// tune filters ringside ignores.
fn no_fault_override(
    m: &std::collections::HashMap<String, Any>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<(), TranslateError> {
    for (k, a) in m {
        if k == "envoy.filters.http.fault" || a.type_url == FAULT {
            return Err(ctx.err(
                join(at, &format!("typed_per_filter_config[{k:?}]")),
                "fault injection is not supported",
            ));
        }
        // A per-route config that disables the filter for the route, or changes its
        // requirement (jwt_authn's PerRouteConfig), check (ext_authz's ExtAuthzPerRoute) or
        // rules (RBACPerRoute).
        for (name, type_suffix, what) in PER_ROUTE_REFUSED {
            if k == name || a.type_url.ends_with(type_suffix) {
                return Err(ctx.err(
                    join(at, &format!("typed_per_filter_config[{k:?}]")),
                    format!("per-route {what} is not supported"),
                ));
            }
        }
    }
    Ok(())
}

/// A route's own fault injection (`typed_per_filter_config` of `envoy.filters.http.fault`,
/// docs/governance.md#fault-injection); `None` without one or when it injects nothing.
fn route_fault(
    m: &std::collections::HashMap<String, Any>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<config::Fault>, TranslateError> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
        fault_abort::ErrorType, HttpFault,
    };
    let Some((k, a)) = m
        .iter()
        .find(|(k, a)| *k == "envoy.filters.http.fault" || a.type_url == FAULT)
    else {
        return Ok(None);
    };
    let fat = join(at, &format!("typed_per_filter_config[{k:?}]"));
    let f: HttpFault = unpack(a, FAULT, ctx, &fat)?;
    let refuse = |field: &str, why: &str| Err(ctx.err(format!("{fat}.{field}"), why.to_string()));
    if !f.headers.is_empty() {
        return refuse("headers", "faults by header match are not supported");
    }
    if !f.downstream_nodes.is_empty() {
        return refuse("downstream_nodes", "not supported");
    }
    if !f.upstream_cluster.is_empty() {
        return refuse("upstream_cluster", "not supported");
    }
    if f.response_rate_limit.is_some() {
        return refuse("response_rate_limit", "not supported");
    }
    let share = |p: Option<&envoy_types::pb::envoy::r#type::v3::FractionalPercent>, field: &str| {
        // Left out: 0 % (the proto's default, as Envoy reads it): Istio's empty fault.
        match p {
            None => Ok(config::Share(0)),
            Some(p) => fractional_share(p, ctx, &format!("{fat}.{field}")),
        }
    };
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let ms = match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(t)) => duration_ms(
                    t,
                    ctx,
                    &format!("{fat}.delay.fixed_delay"),
                    config::FAULT_DELAY_MS_MAX,
                )?,
                _ => return refuse("delay", "only fixed_delay is supported"),
            };
            let percentage = share(d.percentage.as_ref(), "delay.percentage")?;
            (ms > 0 && percentage.0 > 0).then_some(config::FaultDelay {
                fixed_delay_ms: ms,
                percentage,
            })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let http_status = match a.error_type {
                Some(ErrorType::HttpStatus(h)) => Some(h),
                _ => None,
            };
            let status = match a.error_type {
                Some(ErrorType::GrpcStatus(c)) => c,
                // Envoy's HTTP status to gRPC status mapping for a gRPC caller.
                Some(ErrorType::HttpStatus(h)) => match h {
                    400 => 13,
                    401 => 16,
                    403 => 7,
                    404 => 12,
                    429 | 502 | 503 | 504 => 14,
                    _ => 2,
                },
                _ => return refuse("abort", "give http_status or grpc_status"),
            };
            let percentage = share(a.percentage.as_ref(), "abort.percentage")?;
            (percentage.0 > 0).then_some(config::FaultAbort {
                status,
                percentage,
                http_status,
            })
        }
    };
    if delay.is_none() && abort.is_none() {
        // Istio's default: nothing to inject.
        return Ok(None);
    }
    Ok(Some(config::Fault {
        delay,
        abort,
        max_active_faults: f.max_active_faults.map(|m| m.value),
    }))
}

// === local rate limits (docs/governance.md) ===

/// The per-filter config of the HTTP local rate limit in `m`, if any.
fn rate_limit_override(m: &std::collections::HashMap<String, Any>) -> Option<(&String, &Any)> {
    m.iter()
        .find(|(k, a)| *k == HTTP_LOCAL_RATELIMIT_NAME || a.type_url == HTTP_LOCAL_RATELIMIT)
}

/// A virtual host's or route configuration's local rate limit is one bucket shared by all their
/// routes in Envoy; ringside has buckets per listener and per route only: refused.
fn no_shared_rate_limit(
    m: &std::collections::HashMap<String, Any>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<(), TranslateError> {
    match rate_limit_override(m) {
        Some((k, _)) => Err(ctx.err(
            join(at, &format!("typed_per_filter_config[{k:?}]")),
            "a local rate limit shared by several routes is not supported (give it per route)",
        )),
        None => Ok(()),
    }
}

/// A route's own local rate limit (its `typed_per_filter_config`), which replaces the
/// filter-level one for the route. One that does not limit (disabled, no token bucket) would
/// exempt the route from the filter-level bucket, which ringside cannot say: refused.
fn route_rate_limit(
    m: &std::collections::HashMap<String, Any>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<TokenBucket>, TranslateError> {
    let Some((k, a)) = rate_limit_override(m) else {
        return Ok(None);
    };
    let fat = join(at, &format!("typed_per_filter_config[{k:?}]"));
    let rl: http_rl_pb::LocalRateLimit = unpack(a, HTTP_LOCAL_RATELIMIT, ctx, &fat)?;
    match http_local_rate_limit(&rl, ctx, &fat)? {
        Some(b) => Ok(Some(b)),
        None => Err(ctx.err(
            fat,
            "a route's local rate limit that does not limit (disabled or without token_bucket) is not supported",
        )),
    }
}

/// An HTTP `LocalRateLimit` as a token bucket: `None` when it does not limit (no
/// `token_bucket`, or `filter_enabled` 0 %, its default). Refused: partial enablement or
/// enforcement (runtime fractions), shadow mode, descriptors, per-connection buckets and
/// cluster-wide sharing. The answer is Envoy's: `status` (below 400: 429, as Envoy), to a
/// gRPC caller mapped as Envoy maps it (429: UNAVAILABLE) unless
/// `rate_limited_as_resource_exhausted`. Response headers to add are ignored.
fn http_local_rate_limit(
    rl: &http_rl_pb::LocalRateLimit,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<TokenBucket>, TranslateError> {
    let refuse = |field: &str, what: &str| Err(ctx.err(join(at, field), what.to_string()));
    if !rl.descriptors.is_empty() || !rl.rate_limits.is_empty() {
        return refuse("descriptors", "rate limit descriptors are not supported");
    }
    if rl.local_rate_limit_per_downstream_connection {
        return refuse(
            "local_rate_limit_per_downstream_connection",
            "per-connection buckets are not supported",
        );
    }
    if rl.local_cluster_rate_limit.is_some() {
        return refuse(
            "local_cluster_rate_limit",
            "sharing the limit across the local cluster is not supported",
        );
    }
    let enabled =
        percent_all_or_none(rl.filter_enabled.as_ref(), ctx, &join(at, "filter_enabled"))?;
    if !enabled {
        return Ok(None);
    }
    let enforced = percent_all_or_none(
        rl.filter_enforced.as_ref(),
        ctx,
        &join(at, "filter_enforced"),
    )?;
    if !enforced {
        return refuse(
            "filter_enforced",
            "shadow mode (enabled, not enforced) is not supported",
        );
    }
    let Some(tb) = &rl.token_bucket else {
        return Ok(None);
    };
    let mut b = token_bucket(tb, ctx, &join(at, "token_bucket"))?;
    // Envoy's `toErrorCode`: a status below 400 (or none) is 429.
    let http = rl
        .status
        .as_ref()
        .map(|s| s.code)
        .filter(|c| (400..=599).contains(c))
        .map_or(429, |c| c as u16);
    b.http_status = Some(http);
    b.grpc_status = Some(match rl.rate_limited_as_resource_exhausted {
        true => 8,
        false => match http {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502 | 503 | 504 => 14,
            _ => 2,
        },
    });
    Ok(Some(b))
}

/// A `RuntimeFractionalPercent` that must be 0 % (or unset: Envoy's default for the local rate
/// limit) or 100 %: whether it is 100 %. The runtime key is not consulted (ringside has no
/// runtime layer).
fn percent_all_or_none(
    p: Option<&core_pb::RuntimeFractionalPercent>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<bool, TranslateError> {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
    let Some(f) = p.and_then(|p| p.default_value.as_ref()) else {
        return Ok(false);
    };
    let whole = match DenominatorType::try_from(f.denominator) {
        Ok(DenominatorType::Hundred) => 100,
        Ok(DenominatorType::TenThousand) => 10_000,
        Ok(DenominatorType::Million) => 1_000_000,
        Err(_) => return Err(ctx.err(join(at, "default_value.denominator"), "unknown denominator")),
    };
    match f.numerator {
        0 => Ok(false),
        n if n >= whole => Ok(true),
        n => Err(ctx.err(
            join(at, "default_value"),
            format!("{n}/{whole} of requests: only 0 % or 100 % is supported"),
        )),
    }
}

fn token_bucket(
    tb: &envoy_types::pb::envoy::r#type::v3::TokenBucket,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<TokenBucket, TranslateError> {
    let Some(fill) = &tb.fill_interval else {
        return Err(ctx.err(join(at, "fill_interval"), "missing"));
    };
    let fill_interval_ms = duration_ms(
        fill,
        ctx,
        &join(at, "fill_interval"),
        config::RATE_LIMIT_FILL_INTERVAL_MS_MAX,
    )?;
    Ok(TokenBucket {
        max_tokens: tb.max_tokens,
        tokens_per_fill: tb.tokens_per_fill.as_ref().map_or(1, |v| v.value),
        fill_interval_ms,
        http_status: None,
        grpc_status: None,
    })
}

// === filter chain selection ===

fn matches_all(c: &listener_pb::FilterChain) -> bool {
    c.filter_chain_match
        .as_ref()
        .is_none_or(|m| *m == listener_pb::FilterChainMatch::default())
}

/// A match that only protocol detection decides (Istio's outbound HTTP chain:
/// `transport_protocol: raw_buffer`, `application_protocols: [http/1.1, h2c]`).
fn sniff_only(c: &listener_pb::FilterChain) -> bool {
    let Some(m) = &c.filter_chain_match else {
        return true;
    };
    let rest = listener_pb::FilterChainMatch {
        transport_protocol: String::new(),
        application_protocols: Vec::new(),
        ..m.clone()
    };
    rest == listener_pb::FilterChainMatch::default()
        && (m.transport_protocol.is_empty() || m.transport_protocol == "raw_buffer")
        && m.application_protocols
            .iter()
            .all(|p| p == "h2c" || p == "http/1.1" || p == "http/1.0")
}

/// The tcp_proxy cluster of a chain whose only non-telemetry filter is a tcp_proxy.
fn tcp_proxy_cluster(c: &listener_pb::FilterChain) -> Option<String> {
    let mut proxies = c.filters.iter().filter(|f| match &f.config_type {
        Some(listener_pb::filter::ConfigType::TypedConfig(a)) => {
            ignorable_network_filter(a).is_none()
        }
        _ => true,
    });
    let (Some(f), None) = (proxies.next(), proxies.next()) else {
        return None;
    };
    let Some(listener_pb::filter::ConfigType::TypedConfig(a)) = &f.config_type else {
        return None;
    };
    if a.type_url != TCP_PROXY_TYPE {
        return None;
    }
    let t = tcp_pb::TcpProxy::decode(a.value.as_slice()).ok()?;
    match t.cluster_specifier {
        Some(tcp_pb::tcp_proxy::ClusterSpecifier::Cluster(c)) => Some(c),
        _ => None,
    }
}

/// The one chain ringside runs for listener `l`, its field path, and (virtual listeners) the
/// catch-all chain beside it with its field path. Envoy picks a chain per connection by
/// `filter_chain_match`; ringside takes the shapes in which that choice is one it makes too:
/// - one chain that matches everything (a `default_filter_chain` beside it is unreachable);
/// - on a `use_original_dst` listener, chains matching only `destination_port` = its own port
///   (Istio's `virtualOutbound-blackhole`: ringside closes such connections itself);
/// - on a virtual listener, a chain matched by protocol detection alone (raw_buffer, h2c /
///   http/1.1) and a catch-all tcp_proxy chain: ringside's hand-off gives the listener a
///   connection that sends the protocol's first bytes, and the catch-all chain any other.
#[allow(clippy::type_complexity)]
fn select_chain<'a>(
    l: &'a listener_pb::Listener,
    ctx: &Ctx<'_>,
    hand_off: bool,
    bind: bool,
) -> Result<
    (
        &'a listener_pb::FilterChain,
        String,
        Option<(String, &'a listener_pb::FilterChain)>,
    ),
    TranslateError,
> {
    let own_port = match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(core_pb::address::Address::SocketAddress(sa)) => match sa.port_specifier {
            Some(core_pb::socket_address::PortSpecifier::PortValue(p)) => p,
            _ => 0,
        },
        _ => 0,
    };
    let loop_guard = |c: &listener_pb::FilterChain| {
        hand_off
            && c.filter_chain_match.as_ref().is_some_and(|m| {
                *m == listener_pb::FilterChainMatch {
                    destination_port: Some(envoy_types::pb::google::protobuf::UInt32Value {
                        value: own_port,
                    }),
                    ..Default::default()
                }
            })
            && tcp_proxy_cluster(c).is_some()
    };
    let mut chains: Vec<(String, &listener_pb::FilterChain)> = l
        .filter_chains
        .iter()
        .enumerate()
        .filter(|(_, c)| !loop_guard(c))
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .collect();
    if let Some(d) = &l.default_filter_chain {
        chains.push(("default_filter_chain".to_string(), d));
    }
    let is_default = |at: &str| at == "default_filter_chain";
    let refuse = |at: &str, why: String| Err(ctx.err(at.to_string(), why));
    match chains.as_slice() {
        [] => refuse("filter_chains", "no filter chain".into()),
        [(at, c)] if is_default(at) || matches_all(c) => Ok((c, at.clone(), None)),
        [(at, c)] if !bind && sniff_only(c) => Ok((c, at.clone(), None)),
        // The first chain matches everything: the default chain is unreachable.
        [(at, c), (d, _)] if is_default(d) && matches_all(c) => Ok((c, at.clone(), None)),
        [(at, c), (fat, f)] if !bind && sniff_only(c) && (is_default(fat) || matches_all(f)) => {
            match tcp_proxy_cluster(f) {
                Some(_) => Ok((c, at.clone(), Some((fat.clone(), *f)))),
                None => refuse(
                    fat,
                    "beside a protocol chain, only a catch-all tcp_proxy chain is supported".into(),
                ),
            }
        }
        [(at, _)] => refuse(
            &format!("{at}.filter_chain_match"),
            "filter chain matching is not supported on this listener (only protocol detection \
             on a bind_to_port: false listener, and the own-port chain of a use_original_dst one)"
                .into(),
        ),
        _ => refuse(
            "filter_chains",
            format!(
                "ringside cannot choose among these {} filter chains (docs/xds.md, \"Istio\")",
                chains.len()
            ),
        ),
    }
}

// === TypedStruct-wrapped DubboProxy (Aeraki) ===

/// `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct` in full.
#[derive(Clone, PartialEq, prost::Message)]
struct TypedStructFull {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(message, optional, tag = "2")]
    value: Option<envoy_types::pb::google::protobuf::Struct>,
}

mod typed_struct {
    //! A `google.protobuf.Struct` (proto3 JSON of a message, lowerCamelCase or proto field
    //! names) read as the DubboProxy message it stands for. Only the fields ringside
    //! translates are read; any other key is refused, so nothing the control plane meant is
    //! dropped silently.
    use envoy_types::pb::envoy::config::core::v3 as core_pb;
    use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
    use envoy_types::pb::envoy::config::route::v3 as route_pb;
    use envoy_types::pb::envoy::extensions::filters::network::dubbo_proxy::v3 as dubbo_pb;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
    use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
    use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct, UInt32Value, Value};

    type R<T> = Result<T, (String, String)>;

    /// `statPrefix` → `stat_prefix`.
    fn snake(k: &str) -> String {
        let mut s = String::with_capacity(k.len() + 4);
        for c in k.chars() {
            if c.is_ascii_uppercase() {
                s.push('_');
                s.push(c.to_ascii_lowercase());
            } else {
                s.push(c);
            }
        }
        s
    }

    fn fields<'a>(v: &'a Value, at: &str) -> R<Vec<(String, &'a Value)>> {
        match &v.kind {
            Some(Kind::StructValue(s)) => Ok(obj(s)),
            _ => Err((at.into(), "expected an object".into())),
        }
    }

    fn obj(s: &Struct) -> Vec<(String, &Value)> {
        let mut v: Vec<(String, &Value)> = s.fields.iter().map(|(k, v)| (snake(k), v)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn string(v: &Value, at: &str) -> R<String> {
        match &v.kind {
            Some(Kind::StringValue(s)) => Ok(s.clone()),
            _ => Err((at.into(), "expected a string".into())),
        }
    }

    fn boolean(v: &Value, at: &str) -> R<bool> {
        match &v.kind {
            Some(Kind::BoolValue(b)) => Ok(*b),
            _ => Err((at.into(), "expected a bool".into())),
        }
    }

    fn list<'a>(v: &'a Value, at: &str) -> R<&'a [Value]> {
        match &v.kind {
            Some(Kind::ListValue(l)) => Ok(&l.values),
            _ => Err((at.into(), "expected a list".into())),
        }
    }

    fn unknown<T>(at: &str, k: &str) -> R<T> {
        Err((
            format!("{at}.{k}"),
            "not supported in a TypedStruct DubboProxy".into(),
        ))
    }

    pub(super) fn dubbo_proxy(s: &Struct) -> R<dubbo_pb::DubboProxy> {
        let mut d = dubbo_pb::DubboProxy::default();
        for (k, v) in obj(s) {
            let at = k.clone();
            match k.as_str() {
                "stat_prefix" => d.stat_prefix = string(v, &at)?,
                "protocol_type" => {
                    d.protocol_type = match string(v, &at)?.as_str() {
                        "Dubbo" => dubbo_pb::ProtocolType::Dubbo as i32,
                        other => return Err((at, format!("protocol {other:?}"))),
                    }
                }
                "serialization_type" => {
                    d.serialization_type = match string(v, &at)?.as_str() {
                        "Hessian2" => dubbo_pb::SerializationType::Hessian2 as i32,
                        other => return Err((at, format!("serialization {other:?}"))),
                    }
                }
                "route_config" => d.route_config = route_configs(v, &at)?,
                "multiple_route_config" => {
                    let mut m = dubbo_pb::MultipleRouteConfiguration::default();
                    for (k, v) in fields(v, &at)? {
                        match k.as_str() {
                            "name" => m.name = string(v, &at)?,
                            "route_config" => m.route_config = route_configs(v, &at)?,
                            _ => return unknown(&at, &k),
                        }
                    }
                    d.route_specifier = Some(
                        dubbo_pb::dubbo_proxy::RouteSpecifier::MultipleRouteConfig(m),
                    );
                }
                "dubbo_filters" => {
                    for (i, f) in list(v, &at)?.iter().enumerate() {
                        let fat = format!("{at}[{i}]");
                        let mut df = dubbo_pb::DubboFilter::default();
                        for (k, v) in fields(f, &fat)? {
                            match k.as_str() {
                                "name" => df.name = string(v, &fat)?,
                                "config" => {
                                    df.config = Some(filter_config(v, &format!("{fat}.config"))?)
                                }
                                _ => return unknown(&fat, &k),
                            }
                        }
                        d.dubbo_filters.push(df);
                    }
                }
                _ => return Err((k, "not supported in a TypedStruct DubboProxy".into())),
            }
        }
        Ok(d)
    }

    fn route_configs(v: &Value, at: &str) -> R<Vec<dubbo_pb::RouteConfiguration>> {
        let mut out = Vec::new();
        for (i, rc) in list(v, at)?.iter().enumerate() {
            let at = format!("{at}[{i}]");
            let mut c = dubbo_pb::RouteConfiguration::default();
            for (k, v) in fields(rc, &at)? {
                match k.as_str() {
                    "name" => c.name = string(v, &at)?,
                    "interface" => c.interface = string(v, &at)?,
                    "group" => c.group = string(v, &at)?,
                    "version" => c.version = string(v, &at)?,
                    "routes" => {
                        for (j, r) in list(v, &at)?.iter().enumerate() {
                            c.routes.push(route(r, &format!("{at}.routes[{j}]"))?);
                        }
                    }
                    _ => return unknown(&at, &k),
                }
            }
            out.push(c);
        }
        Ok(out)
    }

    fn route(v: &Value, at: &str) -> R<dubbo_pb::Route> {
        let mut r = dubbo_pb::Route::default();
        for (k, v) in fields(v, at)? {
            let kat = format!("{at}.{k}");
            match k.as_str() {
                "match" => {
                    let mut m = dubbo_pb::RouteMatch::default();
                    for (k, v) in fields(v, &kat)? {
                        let mat = format!("{kat}.{k}");
                        match k.as_str() {
                            "method" => {
                                let mut mm = dubbo_pb::MethodMatch::default();
                                for (k, v) in fields(v, &mat)? {
                                    match k.as_str() {
                                        "name" => mm.name = Some(string_matcher(v, &mat)?),
                                        _ => return unknown(&mat, &k),
                                    }
                                }
                                m.method = Some(mm);
                            }
                            "headers" => {
                                for (i, h) in list(v, &mat)?.iter().enumerate() {
                                    m.headers.push(header(h, &format!("{mat}[{i}]"))?);
                                }
                            }
                            _ => return unknown(&kat, &k),
                        }
                    }
                    r.r#match = Some(m);
                }
                "route" => {
                    use dubbo_pb::route_action::ClusterSpecifier as C;
                    let mut a = dubbo_pb::RouteAction::default();
                    for (k, v) in fields(v, &kat)? {
                        let aat = format!("{kat}.{k}");
                        match k.as_str() {
                            "cluster" => a.cluster_specifier = Some(C::Cluster(string(v, &aat)?)),
                            "weighted_clusters" => {
                                let mut w = route_pb::WeightedCluster::default();
                                for (k, v) in fields(v, &aat)? {
                                    match k.as_str() {
                                        "clusters" => {
                                            for (i, c) in list(v, &aat)?.iter().enumerate() {
                                                let cat = format!("{aat}.clusters[{i}]");
                                                let mut cw = route_pb::weighted_cluster::ClusterWeight::default();
                                                for (k, v) in fields(c, &cat)? {
                                                    match (k.as_str(), &v.kind) {
                                                        ("name", _) => cw.name = string(v, &cat)?,
                                                        ("weight", Some(Kind::NumberValue(n)))
                                                            if *n >= 0.0 && n.fract() == 0.0 =>
                                                        {
                                                            cw.weight = Some(UInt32Value {
                                                                value: *n as u32,
                                                            })
                                                        }
                                                        _ => return unknown(&cat, &k),
                                                    }
                                                }
                                                w.clusters.push(cw);
                                            }
                                        }
                                        _ => return unknown(&aat, &k),
                                    }
                                }
                                a.cluster_specifier = Some(C::WeightedClusters(w));
                            }
                            _ => return unknown(&kat, &k),
                        }
                    }
                    r.route = Some(a);
                }
                _ => return unknown(at, &k),
            }
        }
        Ok(r)
    }

    fn number(v: &Value, at: &str) -> R<u32> {
        match &v.kind {
            Some(Kind::NumberValue(n))
                if *n >= 0.0 && n.fract() == 0.0 && *n <= u32::MAX as f64 =>
            {
                Ok(*n as u32)
            }
            _ => Err((at.into(), "expected a non-negative integer".into())),
        }
    }

    /// A dubbo filter's `config`: an Any in proto3 JSON (`@type` and the message's fields).
    /// Only the network `RBAC` of Aeraki's `envoy.filters.dubbo.rbac` is known.
    fn filter_config(v: &Value, at: &str) -> R<Any> {
        let mut r = NetworkRbac::default();
        let mut typ = String::new();
        for (k, v) in fields(v, at)? {
            let kat = format!("{at}.{k}");
            match k.as_str() {
                "@type" => typ = string(v, &kat)?,
                "stat_prefix" => r.stat_prefix = string(v, &kat)?,
                "shadow_rules_stat_prefix" => r.shadow_rules_stat_prefix = string(v, &kat)?,
                "rules" => r.rules = Some(rbac_rules(v, &kat)?),
                "shadow_rules" => r.shadow_rules = Some(rbac_rules(v, &kat)?),
                "enforcement_type" => {
                    r.enforcement_type = match string(v, &kat)?.as_str() {
                        "ONE_TIME_ON_FIRST_BYTE" => 0,
                        "CONTINUOUS" => 1,
                        other => return Err((kat, format!("enforcement type {other:?}"))),
                    }
                }
                _ => return unknown(at, &k),
            }
        }
        if typ != super::rbac::NETWORK_RBAC_TYPE {
            return Err((
                format!("{at}.@type"),
                format!(
                    "{typ:?}: only {} is supported",
                    super::rbac::NETWORK_RBAC_TYPE
                ),
            ));
        }
        Ok(Any {
            type_url: typ,
            value: prost::Message::encode_to_vec(&r),
        })
    }

    fn rbac_rules(v: &Value, at: &str) -> R<rbac_pb::Rbac> {
        let mut r = rbac_pb::Rbac::default();
        for (k, v) in fields(v, at)? {
            let kat = format!("{at}.{k}");
            match k.as_str() {
                // proto3 JSON leaves out ALLOW, the default.
                "action" => {
                    r.action = match string(v, &kat)?.as_str() {
                        "ALLOW" => rbac_pb::rbac::Action::Allow as i32,
                        "DENY" => rbac_pb::rbac::Action::Deny as i32,
                        "LOG" => rbac_pb::rbac::Action::Log as i32,
                        other => return Err((kat, format!("action {other:?}"))),
                    }
                }
                // A map: its keys are policy names, kept as they are.
                "policies" => match &v.kind {
                    Some(Kind::StructValue(s)) => {
                        for (name, p) in &s.fields {
                            let pat = format!("{kat}[{name:?}]");
                            let mut policy = rbac_pb::Policy::default();
                            for (k, v) in fields(p, &pat)? {
                                match k.as_str() {
                                    "permissions" => {
                                        policy.permissions = list(v, &pat)?
                                            .iter()
                                            .enumerate()
                                            .map(|(i, x)| {
                                                permission(x, &format!("{pat}.permissions[{i}]"))
                                            })
                                            .collect::<R<_>>()?
                                    }
                                    "principals" => {
                                        policy.principals = list(v, &pat)?
                                            .iter()
                                            .enumerate()
                                            .map(|(i, x)| {
                                                principal(x, &format!("{pat}.principals[{i}]"))
                                            })
                                            .collect::<R<_>>()?
                                    }
                                    _ => return unknown(&pat, &k),
                                }
                            }
                            r.policies.insert(name.clone(), policy);
                        }
                    }
                    _ => return Err((kat, "expected an object".into())),
                },
                _ => return unknown(at, &k),
            }
        }
        Ok(r)
    }

    fn cidr(v: &Value, at: &str) -> R<core_pb::CidrRange> {
        let mut c = core_pb::CidrRange::default();
        for (k, v) in fields(v, at)? {
            match k.as_str() {
                "address_prefix" => c.address_prefix = string(v, at)?,
                "prefix_len" => {
                    c.prefix_len = Some(UInt32Value {
                        value: number(v, at)?,
                    })
                }
                _ => return unknown(at, &k),
            }
        }
        Ok(c)
    }

    /// The one key of a oneof message (`{"andRules": ...}`).
    fn one_of<'a>(v: &'a Value, at: &str) -> R<(String, &'a Value)> {
        let mut f = fields(v, at)?;
        match f.len() {
            1 => Ok(f.remove(0)),
            n => Err((at.into(), format!("expected one rule, got {n} keys"))),
        }
    }

    /// A rule set, `{"KEY": [..]}` (`rules`, `ids`), each item read by `item`.
    fn set_of<T>(v: &Value, at: &str, key: &str, item: fn(&Value, &str) -> R<T>) -> R<Vec<T>> {
        let mut out = Vec::new();
        for (k, v) in fields(v, at)? {
            if k != key {
                return unknown(at, &k);
            }
            for (i, x) in list(v, at)?.iter().enumerate() {
                out.push(item(x, &format!("{at}.{key}[{i}]"))?);
            }
        }
        Ok(out)
    }

    fn permission(v: &Value, at: &str) -> R<rbac_pb::Permission> {
        use rbac_pb::permission::{Rule, Set};
        let (k, v) = one_of(v, at)?;
        let kat = format!("{at}.{k}");
        let rule =
            match k.as_str() {
                "any" => Rule::Any(boolean(v, &kat)?),
                "and_rules" => Rule::AndRules(Set {
                    rules: set_of(v, &kat, "rules", permission)?,
                }),
                "or_rules" => Rule::OrRules(Set {
                    rules: set_of(v, &kat, "rules", permission)?,
                }),
                "not_rule" => Rule::NotRule(Box::new(permission(v, &kat)?)),
                "destination_port" => Rule::DestinationPort(number(v, &kat)?),
                "destination_ip" => Rule::DestinationIp(cidr(v, &kat)?),
                "metadata" => {
                    use matcher_pb::metadata_matcher::{path_segment::Segment, PathSegment};
                    let mut m = matcher_pb::MetadataMatcher::default();
                    for (k, v) in fields(v, &kat)? {
                        let mat = format!("{kat}.{k}");
                        match k.as_str() {
                            "filter" => m.filter = string(v, &mat)?,
                            "invert" => m.invert = boolean(v, &mat)?,
                            "path" => {
                                for (i, seg) in list(v, &mat)?.iter().enumerate() {
                                    let sat = format!("{mat}[{i}]");
                                    let (k, v) = one_of(seg, &sat)?;
                                    match k.as_str() {
                                        "key" => m.path.push(PathSegment {
                                            segment: Some(Segment::Key(string(v, &sat)?)),
                                        }),
                                        _ => return unknown(&sat, &k),
                                    }
                                }
                            }
                            "value" => {
                                let (k, v) = one_of(v, &mat)?;
                                match k.as_str() {
                                    "string_match" => m.value = Some(matcher_pb::ValueMatcher {
                                        match_pattern: Some(
                                            matcher_pb::value_matcher::MatchPattern::StringMatch(
                                                string_matcher(v, &format!("{mat}.string_match"))?,
                                            ),
                                        ),
                                    }),
                                    _ => return unknown(&mat, &k),
                                }
                            }
                            _ => return unknown(&kat, &k),
                        }
                    }
                    Rule::Metadata(m)
                }
                _ => return unknown(at, &k),
            };
        Ok(rbac_pb::Permission { rule: Some(rule) })
    }

    fn principal(v: &Value, at: &str) -> R<rbac_pb::Principal> {
        use rbac_pb::principal::{Authenticated, Identifier as I, Set};
        let (k, v) = one_of(v, at)?;
        let kat = format!("{at}.{k}");
        let id = match k.as_str() {
            "any" => I::Any(boolean(v, &kat)?),
            "and_ids" => I::AndIds(Set {
                ids: set_of(v, &kat, "ids", principal)?,
            }),
            "or_ids" => I::OrIds(Set {
                ids: set_of(v, &kat, "ids", principal)?,
            }),
            "not_id" => I::NotId(Box::new(principal(v, &kat)?)),
            "authenticated" => {
                let mut a = Authenticated::default();
                for (k, v) in fields(v, &kat)? {
                    match k.as_str() {
                        "principal_name" => {
                            a.principal_name =
                                Some(string_matcher(v, &format!("{kat}.principal_name"))?)
                        }
                        _ => return unknown(&kat, &k),
                    }
                }
                I::Authenticated(a)
            }
            "direct_remote_ip" => I::DirectRemoteIp(cidr(v, &kat)?),
            "remote_ip" => I::RemoteIp(cidr(v, &kat)?),
            #[allow(deprecated)]
            "source_ip" => I::SourceIp(cidr(v, &kat)?),
            _ => return unknown(at, &k),
        };
        Ok(rbac_pb::Principal {
            identifier: Some(id),
        })
    }

    fn regex(v: &Value, at: &str) -> R<matcher_pb::RegexMatcher> {
        let mut re = matcher_pb::RegexMatcher::default();
        for (k, v) in fields(v, at)? {
            match k.as_str() {
                "regex" => re.regex = string(v, at)?,
                "google_re2" => {}
                _ => return unknown(at, &k),
            }
        }
        Ok(re)
    }

    fn string_matcher(v: &Value, at: &str) -> R<matcher_pb::StringMatcher> {
        use matcher_pb::string_matcher::MatchPattern as P;
        let mut m = matcher_pb::StringMatcher::default();
        for (k, v) in fields(v, at)? {
            m.match_pattern = Some(match k.as_str() {
                "exact" => P::Exact(string(v, at)?),
                "prefix" => P::Prefix(string(v, at)?),
                "suffix" => P::Suffix(string(v, at)?),
                "contains" => P::Contains(string(v, at)?),
                "safe_regex" => P::SafeRegex(regex(v, &format!("{at}.safe_regex"))?),
                "ignore_case" => {
                    m.ignore_case = boolean(v, at)?;
                    continue;
                }
                _ => return unknown(at, &k),
            });
        }
        Ok(m)
    }

    fn header(v: &Value, at: &str) -> R<route_pb::HeaderMatcher> {
        use route_pb::header_matcher::HeaderMatchSpecifier as H;
        let mut h = route_pb::HeaderMatcher::default();
        for (k, v) in fields(v, at)? {
            let spec = match k.as_str() {
                "name" => {
                    h.name = string(v, at)?;
                    continue;
                }
                "invert_match" => {
                    h.invert_match = boolean(v, at)?;
                    continue;
                }
                "exact_match" => H::ExactMatch(string(v, at)?),
                "prefix_match" => H::PrefixMatch(string(v, at)?),
                "suffix_match" => H::SuffixMatch(string(v, at)?),
                "contains_match" => H::ContainsMatch(string(v, at)?),
                "present_match" => H::PresentMatch(boolean(v, at)?),
                "safe_regex_match" => H::SafeRegexMatch(regex(v, at)?),
                "string_match" => H::StringMatch(string_matcher(v, at)?),
                _ => return unknown(at, &k),
            };
            h.header_match_specifier = Some(spec);
        }
        Ok(h)
    }
}
