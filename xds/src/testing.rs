//! Test-only builders of Envoy v3 resources.

use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;
use envoy_types::pb::google::protobuf::{Any, Duration};
use envoy_types::util::pack_any;

pub(crate) fn addr(ip: &str, port: u32) -> core_pb::Address {
    core_pb::Address {
        address: Some(core_pb::address::Address::SocketAddress(
            core_pb::SocketAddress {
                address: ip.into(),
                port_specifier: Some(core_pb::socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            },
        )),
    }
}

pub(crate) fn listener_pb(name: &str, port: u32, filter: Any) -> listener_pb::Listener {
    listener_pb::Listener {
        name: name.into(),
        address: Some(addr("127.0.0.1", port)),
        filter_chains: vec![listener_pb::FilterChain {
            filters: vec![listener_pb::Filter {
                name: "f".into(),
                config_type: Some(listener_pb::filter::ConfigType::TypedConfig(filter)),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(crate) fn listener(name: &str, port: u32, filter: Any) -> Any {
    pack_any(listener_pb(name, port, filter))
}

pub(crate) fn tcp(cluster: &str) -> Any {
    pack_any(tcp_pb::TcpProxy {
        stat_prefix: "tcp".into(),
        cluster_specifier: Some(tcp_pb::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    })
}

pub(crate) fn router_filter() -> hcm_pb::HttpFilter {
    hcm_pb::HttpFilter {
        name: "envoy.filters.http.router".into(),
        ..Default::default()
    }
}

pub(crate) fn hcm_rds(route_name: &str) -> Any {
    pack_any(hcm_pb::HttpConnectionManager {
        stat_prefix: "h".into(),
        http_filters: vec![router_filter()],
        route_specifier: Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(
            hcm_pb::Rds {
                config_source: Some(core_pb::ConfigSource {
                    config_source_specifier: Some(
                        core_pb::config_source::ConfigSourceSpecifier::Ads(
                            core_pb::AggregatedConfigSource {},
                        ),
                    ),
                    ..Default::default()
                }),
                route_config_name: route_name.into(),
            },
        )),
        ..Default::default()
    })
}

pub(crate) fn hcm_inline(rc: route_pb::RouteConfiguration) -> Any {
    pack_any(hcm_pb::HttpConnectionManager {
        stat_prefix: "h".into(),
        http_filters: vec![router_filter()],
        route_specifier: Some(hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(rc)),
        ..Default::default()
    })
}

pub(crate) fn route_to(prefix: &str, cluster: &str) -> route_pb::Route {
    route_pb::Route {
        r#match: Some(route_pb::RouteMatch {
            path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(route_pb::route::Action::Route(route_pb::RouteAction {
            cluster_specifier: Some(route_pb::route_action::ClusterSpecifier::Cluster(
                cluster.into(),
            )),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub(crate) fn route_config_pb(
    name: &str,
    domains: &[&str],
    routes: Vec<route_pb::Route>,
) -> route_pb::RouteConfiguration {
    route_pb::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![route_pb::VirtualHost {
            name: "vh".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(crate) fn route_config(name: &str, cluster: &str) -> Any {
    pack_any(route_config_pb(name, &["*"], vec![route_to("/", cluster)]))
}

pub(crate) fn cluster_eds_pb(name: &str, service: &str) -> cluster_pb::Cluster {
    cluster_pb::Cluster {
        name: name.into(),
        connect_timeout: Some(Duration {
            seconds: 2,
            nanos: 500_000,
        }),
        cluster_discovery_type: Some(cluster_pb::cluster::ClusterDiscoveryType::Type(
            cluster_pb::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster_pb::cluster::EdsClusterConfig {
            eds_config: Some(core_pb::ConfigSource {
                config_source_specifier: Some(core_pb::config_source::ConfigSourceSpecifier::Ads(
                    core_pb::AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            service_name: service.into(),
        }),
        ..Default::default()
    }
}

pub(crate) fn cluster_eds(name: &str, service: &str) -> Any {
    pack_any(cluster_eds_pb(name, service))
}

pub(crate) fn cla_pb(name: &str, addrs: &[(&str, u32)]) -> endpoint_pb::ClusterLoadAssignment {
    endpoint_pb::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![endpoint_pb::LocalityLbEndpoints {
            lb_endpoints: addrs
                .iter()
                .map(|(ip, port)| endpoint_pb::LbEndpoint {
                    host_identifier: Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint_pb::Endpoint {
                            address: Some(addr(ip, *port)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(crate) fn cla(name: &str, addrs: &[(&str, u32)]) -> Any {
    pack_any(cla_pb(name, addrs))
}

pub(crate) fn cluster_static_pb(name: &str, addrs: &[(&str, u32)]) -> cluster_pb::Cluster {
    cluster_pb::Cluster {
        name: name.into(),
        load_assignment: Some(cla_pb(name, addrs)),
        ..Default::default()
    }
}
