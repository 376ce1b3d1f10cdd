use super::*;
use crate::testing::*;
use envoy_types::pb::envoy::extensions::filters::network::dubbo_proxy::v3::method_match::parameter_match_specifier::ParameterMatchSpecifier as Param;
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;
use xds_matcher_pb::matcher::matcher_list::predicate::{single_predicate, MatchType, PredicateList, SinglePredicate};
use xds_matcher_pb::matcher::matcher_list::{FieldMatcher, Predicate};

fn sm_exact(s: &str) -> matcher_pb::StringMatcher {
    matcher_pb::StringMatcher {
        match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(s.into())),
        ignore_case: false,
    }
}

fn err_text(r: Result<(String, ListenerRes), TranslateError>) -> String {
    match r {
        Ok(v) => panic!("expected a NACK, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn exact(s: &str) -> Option<StringMatch> {
    Some(StringMatch {
        exact: Some(s.into()),
        ..Default::default()
    })
}

#[test]
fn tcp_proxy_listener() {
    let (name, res) =
        decode_listener(&crate::testing::listener("in", 9000, tcp("backend"))).unwrap();
    assert_eq!(name, "in");
    assert_eq!(res.rds, None);
    assert_eq!(res.listener.protocol, Protocol::Tcp);
    assert_eq!(res.listener.cluster.as_deref(), Some("backend"));
    assert_eq!(res.listener.address, "127.0.0.1:9000".parse().unwrap());
}

fn dubbo_proxy_pb() -> dubbo_pb::DubboProxy {
    let mut params = std::collections::HashMap::new();
    params.insert(
        1,
        dubbo_pb::method_match::ParameterMatchSpecifier {
            parameter_match_specifier: Some(Param::ExactMatch("7".into())),
        },
    );
    params.insert(
        0,
        dubbo_pb::method_match::ParameterMatchSpecifier {
            parameter_match_specifier: Some(Param::RangeMatch(Int64Range { start: 10, end: 20 })),
        },
    );
    let headers = vec![
        route_pb::HeaderMatcher {
            name: "env".into(),
            header_match_specifier: Some(
                route_pb::header_matcher::HeaderMatchSpecifier::StringMatch(sm_exact("gray")),
            ),
            ..Default::default()
        },
        route_pb::HeaderMatcher {
            name: "trace".into(),
            header_match_specifier: Some(
                route_pb::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
            ),
            ..Default::default()
        },
        route_pb::HeaderMatcher {
            name: "user".into(),
            header_match_specifier: Some(
                route_pb::header_matcher::HeaderMatchSpecifier::SafeRegexMatch(
                    matcher_pb::RegexMatcher {
                        regex: "u[0-9]+".into(),
                        engine_type: None,
                    },
                ),
            ),
            ..Default::default()
        },
    ];
    dubbo_pb::DubboProxy {
        stat_prefix: "d".into(),
        route_config: vec![dubbo_pb::RouteConfiguration {
            name: "users".into(),
            interface: "org.demo.UserService".into(),
            group: "g1".into(),
            version: "1.0".into(),
            routes: vec![
                dubbo_pb::Route {
                    r#match: Some(dubbo_pb::RouteMatch {
                        method: Some(dubbo_pb::MethodMatch {
                            name: Some(matcher_pb::StringMatcher {
                                match_pattern: Some(
                                    matcher_pb::string_matcher::MatchPattern::Prefix("get".into()),
                                ),
                                ignore_case: false,
                            }),
                            params_match: params,
                        }),
                        headers,
                    }),
                    route: Some(dubbo_pb::RouteAction {
                        metadata_match: None,
                        cluster_specifier: Some(
                            dubbo_pb::route_action::ClusterSpecifier::WeightedClusters(
                                route_pb::WeightedCluster {
                                    clusters: vec![
                                        route_pb::weighted_cluster::ClusterWeight {
                                            name: "a".into(),
                                            weight: Some(UInt32Value { value: 80 }),
                                            ..Default::default()
                                        },
                                        route_pb::weighted_cluster::ClusterWeight {
                                            name: "b".into(),
                                            weight: Some(UInt32Value { value: 20 }),
                                            ..Default::default()
                                        },
                                    ],
                                    ..Default::default()
                                },
                            ),
                        ),
                    }),
                },
                dubbo_pb::Route {
                    r#match: Some(dubbo_pb::RouteMatch {
                        method: Some(dubbo_pb::MethodMatch {
                            name: Some(matcher_pb::StringMatcher {
                                match_pattern: Some(
                                    matcher_pb::string_matcher::MatchPattern::SafeRegex(
                                        matcher_pb::RegexMatcher {
                                            regex: "set.*".into(),
                                            engine_type: None,
                                        },
                                    ),
                                ),
                                ignore_case: false,
                            }),
                            params_match: Default::default(),
                        }),
                        headers: vec![],
                    }),
                    route: Some(dubbo_pb::RouteAction {
                        metadata_match: None,
                        cluster_specifier: Some(dubbo_pb::route_action::ClusterSpecifier::Cluster(
                            "c".into(),
                        )),
                    }),
                },
            ],
        }],
        ..Default::default()
    }
}

#[test]
fn dubbo_proxy_routes() {
    let (_, res) = decode_listener(&crate::testing::listener(
        "d",
        20880,
        pack_any(dubbo_proxy_pb()),
    ))
    .unwrap();
    let l = res.listener;
    assert_eq!(l.protocol, Protocol::Dubbo);
    let routes = l.dubbo.unwrap().routes;
    assert_eq!(routes.len(), 2);
    let r0 = &routes[0];
    assert_eq!(r0.name.as_deref(), Some("users"));
    assert_eq!(r0.matcher.interface, exact("org.demo.UserService"));
    assert_eq!(r0.matcher.group.as_deref(), Some("g1"));
    assert_eq!(r0.matcher.version.as_deref(), Some("1.0"));
    assert_eq!(
        r0.matcher.method,
        Some(StringMatch {
            prefix: Some("get".into()),
            ..Default::default()
        })
    );
    assert_eq!(
        r0.matcher.arguments,
        vec![
            ArgumentMatch {
                index: 0,
                exact: None,
                prefix: None,
                range: Some(Range { start: 10, end: 20 })
            },
            ArgumentMatch {
                index: 1,
                exact: Some("7".into()),
                prefix: None,
                range: None
            },
        ]
    );
    assert_eq!(
        r0.matcher.attachments,
        vec![
            AttachmentMatch {
                name: "env".into(),
                exact: Some("gray".into()),
                regex: None,
                present: None,
            },
            AttachmentMatch {
                name: "trace".into(),
                exact: None,
                regex: None,
                present: Some(true)
            },
            AttachmentMatch {
                name: "user".into(),
                exact: None,
                regex: Some("u[0-9]+".into()),
                present: None
            },
        ]
    );
    assert_eq!(
        r0.route.weighted_clusters,
        vec![
            WeightedCluster {
                name: "a".into(),
                weight: 80,
                host_rewrite: None,
                headers: Default::default(),
            },
            WeightedCluster {
                name: "b".into(),
                weight: 20,
                host_rewrite: None,
                headers: Default::default(),
            }
        ]
    );
    assert_eq!(
        routes[1].matcher.method,
        Some(StringMatch {
            regex: Some("set.*".into()),
            ..Default::default()
        })
    );
    assert_eq!(routes[1].route.cluster.as_deref(), Some("c"));
}

#[test]
fn dubbo_proxy_nacks_name_the_field() {
    let mut d = dubbo_proxy_pb();
    d.serialization_type = 1;
    let e = err_text(decode_listener(&crate::testing::listener(
        "d",
        1,
        pack_any(d),
    )));
    assert!(e.contains("listener \"d\""), "{e}");
    assert!(
        e.contains("filter_chains[0].filters[0].typed_config.serialization_type"),
        "{e}"
    );

    let mut d = dubbo_proxy_pb();
    d.dubbo_filters.push(dubbo_pb::DubboFilter {
        name: "envoy.filters.dubbo.ratelimit".into(),
        config: None,
    });
    let e = err_text(decode_listener(&crate::testing::listener(
        "d",
        1,
        pack_any(d),
    )));
    assert!(e.contains("typed_config.dubbo_filters[0].name"), "{e}");

    let mut d = dubbo_proxy_pb();
    d.route_specifier = Some(dubbo_pb::dubbo_proxy::RouteSpecifier::Drds(
        Default::default(),
    ));
    let e = err_text(decode_listener(&crate::testing::listener(
        "d",
        1,
        pack_any(d),
    )));
    assert!(e.contains("typed_config.drds"), "{e}");

    let mut d = dubbo_proxy_pb();
    d.route_config[0].routes[1]
        .route
        .as_mut()
        .unwrap()
        .metadata_match = Some(Default::default());
    let e = err_text(decode_listener(&crate::testing::listener(
        "d",
        1,
        pack_any(d),
    )));
    assert!(
        e.contains("typed_config.route_config[0].routes[1].route.metadata_match"),
        "{e}"
    );

    let mut d = dubbo_proxy_pb();
    d.route_config[0].routes[0]
        .r#match
        .as_mut()
        .unwrap()
        .headers[0]
        .invert_match = true;
    let e = err_text(decode_listener(&crate::testing::listener(
        "d",
        1,
        pack_any(d),
    )));
    assert!(e.contains("routes[0].match.headers[0].invert_match"), "{e}");
}

#[test]
fn dubbo_multiple_route_config_maps_like_inline() {
    let mut d = dubbo_proxy_pb();
    let rcs = std::mem::take(&mut d.route_config);
    d.route_specifier = Some(dubbo_pb::dubbo_proxy::RouteSpecifier::MultipleRouteConfig(
        dubbo_pb::MultipleRouteConfiguration {
            name: "m".into(),
            route_config: rcs,
        },
    ));
    let (_, res) = decode_listener(&crate::testing::listener("d", 1, pack_any(d))).unwrap();
    assert_eq!(res.listener.dubbo.unwrap().routes.len(), 2);
}

fn typed(type_url: &str, value: Vec<u8>) -> Option<envoy_types::pb::google::protobuf::Any> {
    Some(envoy_types::pb::google::protobuf::Any {
        type_url: type_url.into(),
        value,
    })
}

fn xds_tec(type_url: &str, value: Vec<u8>) -> envoy_types::pb::xds::core::v3::TypedExtensionConfig {
    envoy_types::pb::xds::core::v3::TypedExtensionConfig {
        name: "x".into(),
        typed_config: typed(type_url, value),
    }
}

fn single(input: envoy_types::pb::xds::core::v3::TypedExtensionConfig, value: &str) -> Predicate {
    Predicate {
        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
            input: Some(input),
            matcher: Some(single_predicate::Matcher::ValueMatch(
                xds_matcher_pb::StringMatcher {
                    match_pattern: Some(xds_matcher_pb::string_matcher::MatchPattern::Exact(
                        value.into(),
                    )),
                    ignore_case: false,
                },
            )),
        })),
    }
}

fn gp_action(cluster: &str) -> xds_matcher_pb::matcher::OnMatch {
    let a = gp_action_pb::RouteAction {
        name: format!("to-{cluster}"),
        cluster_specifier: Some(gp_action_pb::route_action::ClusterSpecifier::Cluster(
            cluster.into(),
        )),
        timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    };
    xds_matcher_pb::matcher::OnMatch {
        keep_matching: false,
        on_match: Some(xds_matcher_pb::matcher::on_match::OnMatch::Action(xds_tec(
            GP_ROUTE_ACTION_TYPE,
            a.encode_to_vec(),
        ))),
    }
}

fn generic(routes: xds_matcher_pb::Matcher) -> Any {
    pack_any(gp_pb::GenericProxy {
        stat_prefix: "g".into(),
        codec_config: Some(core_pb::TypedExtensionConfig {
            name: "dubbo".into(),
            typed_config: typed(DUBBO_CODEC_TYPE, vec![]),
        }),
        filters: vec![core_pb::TypedExtensionConfig {
            name: "envoy.filters.generic.router".into(),
            typed_config: None,
        }],
        route_specifier: Some(gp_pb::generic_proxy::RouteSpecifier::RouteConfig(
            gp_pb::RouteConfiguration {
                name: "r".into(),
                routes: Some(routes),
                virtual_hosts: vec![],
            },
        )),
        ..Default::default()
    })
}

#[test]
fn generic_proxy_matcher_list_and_tree() {
    let service = || xds_tec(GP_SERVICE_INPUT_TYPE, vec![]);
    let method = || xds_tec(GP_METHOD_INPUT_TYPE, vec![]);
    let prop = |n: &str| {
        xds_tec(
            GP_PROPERTY_INPUT_TYPE,
            gp_matcher_pb::PropertyMatchInput {
                property_name: n.into(),
            }
            .encode_to_vec(),
        )
    };
    let list = xds_matcher_pb::Matcher {
        on_no_match: Some(Box::new(gp_action("fallback"))),
        matcher_type: Some(xds_matcher_pb::matcher::MatcherType::MatcherList(
            xds_matcher_pb::matcher::MatcherList {
                matchers: vec![
                    FieldMatcher {
                        predicate: Some(Predicate {
                            match_type: Some(MatchType::AndMatcher(PredicateList {
                                predicate: vec![
                                    single(service(), "org.demo.A"),
                                    single(method(), "get"),
                                    single(prop("version"), "2.0"),
                                    single(prop("env"), "gray"),
                                ],
                            })),
                        }),
                        on_match: Some(gp_action("a-gray")),
                    },
                    FieldMatcher {
                        predicate: Some(single(service(), "org.demo.A")),
                        on_match: Some(gp_action("a")),
                    },
                ],
            },
        )),
    };
    let (_, res) = decode_listener(&crate::testing::listener("g", 1, generic(list))).unwrap();
    let routes = res.listener.dubbo.unwrap().routes;
    assert_eq!(routes.len(), 3);
    assert_eq!(routes[0].matcher.interface, exact("org.demo.A"));
    assert_eq!(routes[0].matcher.method, exact("get"));
    assert_eq!(routes[0].matcher.version.as_deref(), Some("2.0"));
    assert_eq!(
        routes[0].matcher.attachments,
        vec![AttachmentMatch {
            name: "env".into(),
            exact: Some("gray".into()),
            regex: None,
            present: None
        }]
    );
    assert_eq!(routes[0].route.cluster.as_deref(), Some("a-gray"));
    assert_eq!(routes[0].route.timeout_ms, Some(1000));
    assert_eq!(routes[0].name.as_deref(), Some("to-a-gray"));
    assert_eq!(routes[1].matcher.method, None);
    assert_eq!(routes[1].route.cluster.as_deref(), Some("a"));
    assert_eq!(routes[2].matcher, DubboMatch::default());
    assert_eq!(routes[2].route.cluster.as_deref(), Some("fallback"));

    // A tree on the service with exact keys, each holding an action.
    let mut map = std::collections::HashMap::new();
    map.insert("org.demo.B".to_string(), gp_action("b"));
    map.insert("org.demo.A".to_string(), gp_action("a"));
    let tree = xds_matcher_pb::Matcher {
        on_no_match: None,
        matcher_type: Some(xds_matcher_pb::matcher::MatcherType::MatcherTree(
            xds_matcher_pb::matcher::MatcherTree {
                input: Some(service()),
                tree_type: Some(
                    xds_matcher_pb::matcher::matcher_tree::TreeType::ExactMatchMap(
                        xds_matcher_pb::matcher::matcher_tree::MatchMap { map },
                    ),
                ),
            },
        )),
    };
    let (_, res) = decode_listener(&crate::testing::listener("g", 1, generic(tree))).unwrap();
    let routes = res.listener.dubbo.unwrap().routes;
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].matcher.interface, exact("org.demo.A"));
    assert_eq!(routes[1].route.cluster.as_deref(), Some("b"));
}

#[test]
fn generic_proxy_nacks_or_matcher() {
    let service = || xds_tec(GP_SERVICE_INPUT_TYPE, vec![]);
    let m = xds_matcher_pb::Matcher {
        on_no_match: None,
        matcher_type: Some(xds_matcher_pb::matcher::MatcherType::MatcherList(
            xds_matcher_pb::matcher::MatcherList {
                matchers: vec![FieldMatcher {
                    predicate: Some(Predicate {
                        match_type: Some(MatchType::OrMatcher(PredicateList {
                            predicate: vec![single(service(), "A"), single(service(), "B")],
                        })),
                    }),
                    on_match: Some(gp_action("a")),
                }],
            },
        )),
    };
    let e = err_text(decode_listener(&crate::testing::listener(
        "g",
        1,
        generic(m),
    )));
    assert!(
        e.contains(
            "typed_config.route_config.routes.matcher_list.matchers[0].predicate.or_matcher"
        ),
        "{e}"
    );
}

fn header(name: &str, exact_value: &str) -> route_pb::HeaderMatcher {
    route_pb::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(route_pb::header_matcher::HeaderMatchSpecifier::StringMatch(
            sm_exact(exact_value),
        )),
        ..Default::default()
    }
}

#[test]
fn hcm_inline_routes() {
    let mut by_path = route_to("/", "x");
    by_path.r#match.as_mut().unwrap().path_specifier = Some(
        route_pb::route_match::PathSpecifier::Path("/org.demo.Greeter/SayHello".into()),
    );
    by_path.r#match.as_mut().unwrap().headers = vec![
        header("tri-service-version", "1.0"),
        header("tri-service-group", "g"),
        header("tri-unit-info", "u1"),
        header("x-env", "gray"),
        route_pb::HeaderMatcher {
            name: "x-user".into(),
            header_match_specifier: Some(
                route_pb::header_matcher::HeaderMatchSpecifier::StringMatch(
                    matcher_pb::StringMatcher {
                        match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Prefix(
                            "vip".into(),
                        )),
                        ignore_case: false,
                    },
                ),
            ),
            ..Default::default()
        },
    ];
    if let Some(route_pb::route::Action::Route(a)) = by_path.action.as_mut() {
        a.cluster_specifier = Some(route_pb::route_action::ClusterSpecifier::Cluster(
            "greeter-v1".into(),
        ));
        a.timeout = Some(Duration {
            seconds: 2,
            nanos: 0,
        });
    }
    let mut by_regex = route_to("/", "r");
    by_regex.r#match.as_mut().unwrap().path_specifier = Some(
        route_pb::route_match::PathSpecifier::SafeRegex(matcher_pb::RegexMatcher {
            regex: "/org\\.demo\\..*/[^/]+".into(),
            engine_type: None,
        }),
    );
    let rc = route_config_pb(
        "inline",
        &["greeter.demo", "greeter.demo:50051"],
        vec![
            by_path,
            route_to("/org.demo.Greeter/", "greeter"),
            by_regex,
            route_to("/", "default"),
        ],
    );
    let (_, res) = decode_listener(&crate::testing::listener("t", 50051, hcm_inline(rc))).unwrap();
    assert_eq!(res.rds, None);
    let l = res.listener;
    assert_eq!(l.protocol, Protocol::Triple);
    let t = l.triple.unwrap();
    assert!(t.routes.is_empty());
    assert_eq!(t.virtual_hosts.len(), 1);
    assert_eq!(
        t.virtual_hosts[0].domains,
        ["greeter.demo", "greeter.demo:50051"]
    );
    let routes = &t.virtual_hosts[0].routes;
    assert_eq!(routes.len(), 4);
    let m = &routes[0].matcher;
    assert_eq!(m.service, exact("org.demo.Greeter"));
    assert_eq!(m.method, exact("SayHello"));
    assert_eq!(m.version.as_deref(), Some("1.0"));
    assert_eq!(m.group.as_deref(), Some("g"));
    assert_eq!(m.unit.as_deref(), Some("u1"));
    assert_eq!(
        m.authority, None,
        "the virtual host's domains choose the host"
    );
    assert_eq!(
        m.headers,
        vec![
            HeaderMatch {
                name: "x-env".into(),
                exact: Some("gray".into()),
                prefix: None,
                regex: None,
                present: None,
                invert: false,
                treat_missing_as_empty: false,
            },
            HeaderMatch {
                name: "x-user".into(),
                exact: None,
                prefix: Some("vip".into()),
                regex: None,
                present: None,
                invert: false,
                treat_missing_as_empty: false,
            },
        ]
    );
    assert_eq!(routes[0].route.cluster.as_deref(), Some("greeter-v1"));
    assert_eq!(routes[0].route.timeout_ms, Some(2000));
    assert_eq!(routes[1].matcher.service, exact("org.demo.Greeter"));
    assert_eq!(routes[1].matcher.method, None);
    // A regex is matched against the whole path, as Envoy does.
    assert_eq!(routes[2].matcher.service, None);
    assert_eq!(
        routes[2].matcher.path,
        Some(config::PathMatch {
            regex: Some("/org\\.demo\\..*/[^/]+".into()),
            ..Default::default()
        })
    );
    assert_eq!(routes[3].matcher.service, None);
    assert_eq!(routes[3].route.cluster.as_deref(), Some("default"));
}

#[test]
fn hcm_rds_and_route_resource() {
    let (_, res) = decode_listener(&crate::testing::listener("t", 1, hcm_rds("routes-1"))).unwrap();
    assert_eq!(res.rds.as_deref(), Some("routes-1"));
    assert_eq!(res.listener.triple.unwrap().virtual_hosts, vec![]);
    let (name, table) = decode_route(&route_config("routes-1", "c")).unwrap();
    assert_eq!(name, "routes-1");
    assert!(!table.ignore_port_in_host_matching);
    let routes = &table.virtual_hosts[0].routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].matcher, TripleMatch::default());
    assert_eq!(routes[0].route.cluster.as_deref(), Some("c"));
}

/// A route's timeout as Envoy's router takes it: unset is its 15 s default, `0s` none (what
/// istiod sets), any other its value.
#[test]
fn route_timeout_defaults_as_envoys() {
    let timed = |t: Option<(i64, i32)>| {
        let mut r = route_to("/", "c");
        if let Some(route_pb::route::Action::Route(a)) = r.action.as_mut() {
            a.timeout = t.map(|(seconds, nanos)| Duration { seconds, nanos });
        }
        r
    };
    let rc = route_config_pb(
        "t",
        &["*"],
        vec![
            timed(None),
            timed(Some((0, 0))),
            timed(Some((2, 500_000_000))),
        ],
    );
    let any = Any {
        type_url: ROUTE_TYPE.into(),
        value: rc.encode_to_vec(),
    };
    let (_, t) = decode_route(&any).unwrap();
    let got: Vec<Option<u64>> = t.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.route.timeout_ms)
        .collect();
    assert_eq!(got, [Some(15_000), None, Some(2_500)]);
}

/// Virtual hosts stay hosts (each with its own routes), in order, with Envoy's domain rules
/// and `ignore_port_in_host_matching`; `vhost_header` and `:authority` rewrites are refused.
#[test]
fn route_configuration_keeps_virtual_hosts() {
    let mut rc = route_config_pb("rc", &["a.test", "*.b.test"], vec![route_to("/", "a")]);
    let mut other = rc.virtual_hosts[0].clone();
    other.name = "any".into();
    other.domains = vec!["*".into()];
    rc.virtual_hosts.push(other);
    rc.ignore_port_in_host_matching = true;
    let any = |rc: &route_pb::RouteConfiguration| Any {
        type_url: ROUTE_TYPE.into(),
        value: rc.encode_to_vec(),
    };
    let (_, t) = decode_route(&any(&rc)).unwrap();
    assert!(t.ignore_port_in_host_matching);
    let domains: Vec<&[String]> = t.virtual_hosts.iter().map(|h| &h.domains[..]).collect();
    assert_eq!(domains, [&["a.test", "*.b.test"][..], &["*"][..]]);
    let mut dup = rc.clone();
    dup.virtual_hosts[1].domains = vec!["A.test".into()];
    let e = decode_route(&any(&dup)).unwrap_err().to_string();
    assert!(
        e.contains(
            "`virtual_hosts[1].domains[0]`: \"A.test\" is already a domain of virtual_hosts[0]"
        ),
        "{e}"
    );
    let mut none = rc.clone();
    none.virtual_hosts[1].domains.clear();
    let e = decode_route(&any(&none)).unwrap_err().to_string();
    assert!(e.contains("`virtual_hosts[1].domains`"), "{e}");
    let mut vh = rc.clone();
    vh.vhost_header = "x-host".into();
    let e = decode_route(&any(&vh)).unwrap_err().to_string();
    assert!(e.contains("`vhost_header`"), "{e}");
    let mut h: hcm_pb::HttpConnectionManager =
        hcm_pb::HttpConnectionManager::decode(hcm_rds("r").value.as_slice()).unwrap();
    h.strip_port_mode =
        Some(hcm_pb::http_connection_manager::StripPortMode::StripAnyHostPort(true));
    let l = crate::testing::listener(
        "t",
        1,
        Any {
            type_url: HCM_TYPE.into(),
            value: h.encode_to_vec(),
        },
    );
    let e = decode_listener(&l).unwrap_err().to_string();
    assert!(e.contains("strip_any_host_port"), "{e}");
}

#[test]
fn hcm_nacks_name_the_field() {
    let mut h: hcm_pb::HttpConnectionManager =
        hcm_pb::HttpConnectionManager::decode(hcm_rds("r").value.as_slice()).unwrap();
    h.http_filters.insert(
        0,
        hcm_pb::HttpFilter {
            name: "envoy.filters.http.fault".into(),
            ..Default::default()
        },
    );
    let e = err_text(decode_listener(&crate::testing::listener(
        "t",
        1,
        pack_any(h.clone()),
    )));
    assert!(
        e.contains("typed_config.http_filters[0]") && e.contains("envoy.filters.http.fault"),
        "{e}"
    );

    h.http_filters.remove(0);
    // HTTP/1.1 is served beside HTTP/2 (AUTO, HTTP1); HTTP/3 is not.
    h.codec_type = hcm_pb::http_connection_manager::CodecType::Http1 as i32;
    let (_, l) = decode_listener(&crate::testing::listener("t", 1, pack_any(h.clone()))).unwrap();
    assert!(l.listener.triple.as_ref().is_some_and(|t| t.http1));
    h.codec_type = hcm_pb::http_connection_manager::CodecType::Http2 as i32;
    let (_, l) = decode_listener(&crate::testing::listener("t", 1, pack_any(h.clone()))).unwrap();
    assert!(l.listener.triple.as_ref().is_some_and(|t| !t.http1));
    h.codec_type = hcm_pb::http_connection_manager::CodecType::Http3 as i32;
    let e = err_text(decode_listener(&crate::testing::listener(
        "t",
        1,
        pack_any(h),
    )));
    assert!(e.contains("typed_config.codec_type"), "{e}");

    let mut r = route_to("/", "c");
    if let Some(route_pb::route::Action::Route(a)) = r.action.as_mut() {
        a.path_rewrite = "/x".into();
    }
    let rc = route_config_pb("rc", &["*"], vec![route_to("/", "c"), r]);
    let e = err_text(decode_listener(&crate::testing::listener(
        "t",
        1,
        hcm_inline(rc),
    )));
    assert!(
        e.contains("typed_config.route_config.virtual_hosts[0].routes[1].route.path_rewrite"),
        "{e}"
    );
    // A prefix_rewrite keeps its prefix as a whole-path condition (the part it replaces).
    let mut r = route_to("/pkg.S/", "c");
    if let Some(route_pb::route::Action::Route(a)) = r.action.as_mut() {
        a.prefix_rewrite = "/x/".into();
        a.host_rewrite_specifier =
            Some(route_pb::route_action::HostRewriteSpecifier::HostRewriteLiteral("h.test".into()));
    }
    let rc = route_config_pb("rc", &["*"], vec![r]);
    let (_, l) = decode_listener(&crate::testing::listener("t", 1, hcm_inline(rc))).unwrap();
    let t = l.listener.triple.unwrap();
    let route = t
        .virtual_hosts
        .first()
        .and_then(|h| h.routes.first())
        .or(t.routes.first())
        .unwrap();
    assert_eq!(
        route
            .matcher
            .path
            .as_ref()
            .and_then(|p| p.prefix.as_deref()),
        Some("/pkg.S/")
    );
    let rw = route.route.rewrite.as_ref().unwrap();
    // direct_response: a body from a file is NACKed, naming the field.
    let mut r = route_to("/", "c");
    r.action = Some(route_pb::route::Action::DirectResponse(
        route_pb::DirectResponseAction {
            status: 200,
            body: Some(core_pb::DataSource {
                specifier: Some(core_pb::data_source::Specifier::Filename("/x".into())),
                ..Default::default()
            }),
            ..Default::default()
        },
    ));
    let rc2 = route_config_pb("rc", &["*"], vec![r]);
    let e = err_text(decode_listener(&crate::testing::listener(
        "t",
        1,
        hcm_inline(rc2),
    )));
    assert!(e.contains("routes[0].direct_response.body.filename"), "{e}");
    assert_eq!(
        (rw.prefix.as_deref(), rw.host.as_deref()),
        (Some("/x/"), Some("h.test"))
    );

    let mut rc = route_config_pb("rc", &["*"], vec![route_to("/", "c")]);
    rc.virtual_hosts[0].routes[0]
        .r#match
        .as_mut()
        .unwrap()
        .headers
        .push(route_pb::HeaderMatcher {
            name: "a".into(),
            invert_match: true,
            header_match_specifier: Some(
                route_pb::header_matcher::HeaderMatchSpecifier::RangeMatch(Default::default()),
            ),
            ..Default::default()
        });
    let e = decode_route(&pack_any(rc)).unwrap_err().to_string();
    assert_eq!(e, "route configuration \"rc\": field `virtual_hosts[0].routes[0].match.headers[0].range_match`: range header matches are not supported");
}

#[test]
fn listener_shape_nacks() {
    let mut l = listener_pb("two", 1, tcp("c"));
    l.filter_chains.push(l.filter_chains[0].clone());
    let e = decode_listener(&pack_any(l)).unwrap_err().to_string();
    assert!(
        e.contains("listener \"two\": field `filter_chains[1].filter_chain_match`: filter_chains[0] has the same match"),
        "{e}"
    );

    // An empty match matches every connection (one listener); a port match chooses per
    // connection (a chain-selecting listener whose chain has its own listener).
    let mut l = listener_pb("m", 1, tcp("c"));
    l.filter_chains[0].filter_chain_match = Some(Default::default());
    let (_, res) = decode_listener(&pack_any(l.clone())).unwrap();
    assert!(res.chains.is_empty() && res.listener.filter_chains.is_empty());
    l.filter_chains[0].filter_chain_match = Some(listener_pb::FilterChainMatch {
        destination_port: Some(UInt32Value { value: 80 }),
        ..Default::default()
    });
    let (_, res) = decode_listener(&pack_any(l)).unwrap();
    let fc = &res.listener.filter_chains[0];
    assert_eq!(fc.matcher.destination_port, Some(80));
    assert_eq!(fc.listener.as_deref(), Some("m/filter_chains[0]"));
    assert_eq!(res.chains[0].listener.cluster.as_deref(), Some("c"));
    assert!(!res.chains[0].listener.bind && res.chains[0].listener.filter_chains.is_empty());

    let mut l = listener_pb("h", 1, tcp("c"));
    l.address = Some(addr("localhost", 1));
    let e = decode_listener(&pack_any(l)).unwrap_err().to_string();
    assert!(e.contains("field `address.socket_address.address`"), "{e}");

    let l = listener_pb("u", 1, pack_any(route_pb::RouteConfiguration::default()));
    let e = decode_listener(&pack_any(l)).unwrap_err().to_string();
    assert!(
        e.contains("field `filter_chains[0].filters[0].typed_config`")
            && e.contains("not supported"),
        "{e}"
    );
}

#[test]
fn clusters() {
    let (name, c) = decode_cluster(&cluster_eds("users", "users-eds")).unwrap();
    assert_eq!(name, "users");
    assert_eq!(c.eds.as_deref(), Some("users-eds"));
    assert_eq!(c.cluster.connect_timeout_ms, 2001);
    assert_eq!(c.cluster.endpoints, vec![]);
    let (_, c) = decode_cluster(&cluster_eds("orders", "")).unwrap();
    assert_eq!(c.eds.as_deref(), Some("orders"));
    assert!(!c.cluster.locality_weighted);
    // common_lb_config: locality-weighted balancing taken, zone-aware routing ignored.
    {
        use cluster_pb::cluster::common_lb_config::LocalityConfigSpecifier as L;
        use cluster_pb::cluster::CommonLbConfig;
        let with = |l: L| {
            let mut k: cluster_pb::Cluster =
                prost::Message::decode(&cluster_eds("orders", "").value[..]).unwrap();
            k.common_lb_config = Some(CommonLbConfig {
                locality_config_specifier: Some(l),
                ..Default::default()
            });
            decode_cluster(&pack_any(k))
                .unwrap()
                .1
                .cluster
                .locality_weighted
        };
        assert!(with(L::LocalityWeightedLbConfig(Default::default())));
        assert!(!with(L::ZoneAwareLbConfig(Default::default())));
    }

    let mut s = cluster_static_pb("s", &[("10.0.0.1", 80), ("10.0.0.2", 81)]);
    s.lb_policy = cluster_pb::cluster::LbPolicy::LeastRequest as i32;
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    assert_eq!(
        c.cluster.upstream_http,
        config::UpstreamHttp::Http1,
        "Envoy's default"
    );
    // HttpProtocolOptions: the upstream protocol of HTTP/1.1 requests.
    {
        use upstream_http_pb::http_protocol_options::explicit_http_config::ProtocolConfig as P;
        use upstream_http_pb::http_protocol_options::{
            AutoHttpConfig, ExplicitHttpConfig, UpstreamProtocolOptions as U,
        };
        let with = |o: Option<U>| {
            let mut k = s.clone();
            let opts = upstream_http_pb::HttpProtocolOptions {
                upstream_protocol_options: o,
                ..Default::default()
            };
            k.typed_extension_protocol_options
                .insert(HTTP_PROTOCOL_OPTIONS.into(), pack_any(opts));
            decode_cluster(&pack_any(k)).map(|(_, c)| c.cluster.upstream_http)
        };
        let explicit = |p: P| {
            Some(U::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(p),
            }))
        };
        assert_eq!(with(None).unwrap(), config::UpstreamHttp::Http1);
        assert_eq!(
            with(explicit(P::Http2ProtocolOptions(Default::default()))).unwrap(),
            config::UpstreamHttp::Http2
        );
        assert_eq!(
            with(explicit(P::HttpProtocolOptions(Default::default()))).unwrap(),
            config::UpstreamHttp::Http1
        );
        assert_eq!(
            with(Some(U::UseDownstreamProtocolConfig(Default::default()))).unwrap(),
            config::UpstreamHttp::Downstream
        );
        // auto_config on a plaintext cluster: refused, as Envoy refuses it (no ALPN).
        let e = with(Some(U::AutoConfig(AutoHttpConfig::default())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auto_config") && e.contains("needs TLS"), "{e}");
        let e = with(explicit(P::Http3ProtocolOptions(Default::default())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("HTTP/3 upstream is not supported"), "{e}");
        let mut k = s.clone();
        k.typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.into(), Any::default());
        assert!(decode_cluster(&pack_any(k)).is_err(), "an Any of no type");

        // The HTTP/2 options and common_http_protocol_options: windows (Envoy's 16 MiB /
        // 24 MiB when unset, its range enforced), connection_keepalive, idle_timeout,
        // max_connection_duration, each out-of-range value NACKed naming its field.
        let u32v = |value| Some(envoy_types::pb::google::protobuf::UInt32Value { value });
        let secs =
            |seconds| Some(envoy_types::pb::google::protobuf::Duration { seconds, nanos: 0 });
        let with_h2 = |h: core_pb::Http2ProtocolOptions,
                       c: Option<core_pb::HttpProtocolOptions>| {
            let mut k = s.clone();
            let opts = upstream_http_pb::HttpProtocolOptions {
                upstream_protocol_options: explicit(P::Http2ProtocolOptions(h)),
                common_http_protocol_options: c,
                ..Default::default()
            };
            k.typed_extension_protocol_options
                .insert(HTTP_PROTOCOL_OPTIONS.into(), pack_any(opts));
            decode_cluster(&pack_any(k)).map(|(_, c)| c.cluster)
        };
        let c = with_h2(Default::default(), None).unwrap();
        assert_eq!(
            (c.http2_stream_window_bytes, c.http2_connection_window_bytes),
            (Some(16 << 20), Some(24 << 20))
        );
        assert_eq!(
            (
                c.http2_keepalive,
                c.idle_timeout_ms,
                c.max_connection_duration_ms
            ),
            (None, config::IDLE_TIMEOUT_MS_DEFAULT, 0)
        );
        let c = with_h2(
            core_pb::Http2ProtocolOptions {
                initial_stream_window_size: u32v(65535),
                initial_connection_window_size: u32v(1 << 20),
                connection_keepalive: Some(core_pb::KeepaliveSettings {
                    interval: secs(10),
                    timeout: secs(2),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Some(core_pb::HttpProtocolOptions {
                idle_timeout: secs(30),
                max_connection_duration: secs(600),
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(
            (c.http2_stream_window_bytes, c.http2_connection_window_bytes),
            (Some(65535), Some(1 << 20))
        );
        assert_eq!(
            c.http2_keepalive,
            Some(config::Http2Keepalive {
                interval_ms: 10_000,
                timeout_ms: 2_000,
                jitter_percent: 15
            })
        );
        assert_eq!(
            (c.idle_timeout_ms, c.max_connection_duration_ms),
            (30_000, 600_000)
        );
        // idle_timeout 0: Envoy never closes; ringside after a day.
        let c = with_h2(
            Default::default(),
            Some(core_pb::HttpProtocolOptions {
                idle_timeout: secs(0),
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(c.idle_timeout_ms, config::DUBBO_TIMER_MS_MAX);
        let nack = |h: core_pb::Http2ProtocolOptions| with_h2(h, None).unwrap_err().to_string();
        let e = nack(core_pb::Http2ProtocolOptions {
            initial_stream_window_size: u32v(65534),
            ..Default::default()
        });
        assert!(
            e.contains("explicit_http_config.http2_protocol_options.initial_stream_window_size")
                && e.contains("65534 is out of range 65535..=2147483647"),
            "{e}"
        );
        let e = nack(core_pb::Http2ProtocolOptions {
            initial_connection_window_size: u32v(1 << 31),
            ..Default::default()
        });
        assert!(e.contains("initial_connection_window_size"), "{e}");
        let e = nack(core_pb::Http2ProtocolOptions {
            connection_keepalive: Some(core_pb::KeepaliveSettings {
                interval: secs(1),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(e.contains("connection_keepalive.timeout`: missing"), "{e}");
        let e = nack(core_pb::Http2ProtocolOptions {
            connection_keepalive: Some(core_pb::KeepaliveSettings {
                timeout: secs(1),
                connection_idle_interval: secs(1),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(
            e.contains("connection_keepalive.connection_idle_interval"),
            "{e}"
        );
    }
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    assert_eq!(c.eds, None);
    assert_eq!(c.cluster.lb, LbPolicy::LeastRequest);
    assert_eq!(
        c.cluster.connect_timeout_ms,
        ENVOY_CONNECT_TIMEOUT_MS_DEFAULT
    );
    assert_eq!(
        c.cluster.endpoints,
        vec![
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:81".parse().unwrap()
        ]
    );

    // upstream_connection_options.tcp_keepalive: fields left out take the kernel's defaults
    // (as in Envoy), 0 turns keepalive off, beyond the kernel's limits is refused.
    assert_eq!(c.cluster.tcp_keepalive, None);
    let keepalive = |probes: Option<u32>, time: Option<u32>, interval: Option<u32>| {
        let mut k = s.clone();
        let v = |v: Option<u32>| {
            v.map(|value| envoy_types::pb::google::protobuf::UInt32Value { value })
        };
        k.upstream_connection_options = Some(cluster_pb::UpstreamConnectionOptions {
            tcp_keepalive: Some(core_pb::TcpKeepalive {
                keepalive_probes: v(probes),
                keepalive_time: v(time),
                keepalive_interval: v(interval),
            }),
            ..Default::default()
        });
        decode_cluster(&pack_any(k)).map(|(_, c)| c.cluster.tcp_keepalive.unwrap())
    };
    let k = keepalive(Some(3), Some(60), None).unwrap();
    assert_eq!(
        (k.enabled, k.time_s, k.interval_s, k.probes),
        (true, 60, 75, 3)
    );
    let k = keepalive(None, None, None).unwrap();
    assert_eq!((k.enabled, k.time_s, k.probes), (true, 7200, 9));
    assert!(!keepalive(Some(0), None, None).unwrap().enabled);
    let e = keepalive(None, Some(40_000), None).unwrap_err().to_string();
    assert!(
        e.contains("upstream_connection_options.tcp_keepalive.keepalive_time"),
        "{e}"
    );

    let mut bad = s.clone();
    bad.transport_socket = Some(core_pb::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: None,
    });
    assert!(decode_cluster(&pack_any(bad))
        .unwrap_err()
        .to_string()
        .contains("cluster \"s\": field `transport_socket.typed_config`"));
    let mut r = s.clone();
    r.lb_policy = cluster_pb::cluster::LbPolicy::Random as i32;
    let (_, c) = decode_cluster(&pack_any(r)).unwrap();
    assert_eq!(
        c.cluster.lb,
        LbPolicy::Random,
        "istio's loadBalancer.simple RANDOM"
    );
    let mut r = s.clone();
    r.lb_policy = cluster_pb::cluster::LbPolicy::RingHash as i32;
    let (_, c) = decode_cluster(&pack_any(r.clone())).unwrap();
    assert_eq!(
        c.cluster.lb,
        LbPolicy::RingHash {
            minimum_ring_size: 1024,
            maximum_ring_size: 8 << 20
        }
    );
    r.lb_config = Some(cluster_pb::cluster::LbConfig::RingHashLbConfig(
        cluster_pb::cluster::RingHashLbConfig {
            minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 10 }),
            maximum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 5 }),
            hash_function: 0,
        },
    ));
    assert!(decode_cluster(&pack_any(r))
        .unwrap_err()
        .to_string()
        .contains("minimum_ring_size (10) > maximum_ring_size (5)"));
    let mut m = s.clone();
    m.lb_policy = cluster_pb::cluster::LbPolicy::Maglev as i32;
    let (_, c) = decode_cluster(&pack_any(m.clone())).unwrap();
    assert_eq!(c.cluster.lb, LbPolicy::Maglev { table_size: 65537 });
    m.lb_config = Some(cluster_pb::cluster::LbConfig::MaglevLbConfig(
        cluster_pb::cluster::MaglevLbConfig {
            table_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 1000 }),
        },
    ));
    assert!(decode_cluster(&pack_any(m))
        .unwrap_err()
        .to_string()
        .contains("prime"));
    let mut bad = s.clone();
    bad.lb_policy = cluster_pb::cluster::LbPolicy::ClusterProvided as i32;
    assert!(decode_cluster(&pack_any(bad))
        .unwrap_err()
        .to_string()
        .contains("field `lb_policy`"));
    let mut bad = s.clone();
    bad.typed_extension_protocol_options
        .insert("envoy.filters.network.thrift_proxy".into(), Any::default());
    assert!(decode_cluster(&pack_any(bad))
        .unwrap_err()
        .to_string()
        .contains("typed_extension_protocol_options[\"envoy.filters.network.thrift_proxy\"]"));
    let bad = cluster_static_pb("dns", &[("backend.svc", 80)]);
    let e = decode_cluster(&pack_any(bad)).unwrap_err().to_string();
    assert!(e.contains("field `load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address`"), "{e}");
}

#[test]
fn original_dst_clusters() {
    let od = cluster_pb::Cluster {
        name: "passthrough".into(),
        cluster_discovery_type: Some(cluster_pb::cluster::ClusterDiscoveryType::Type(
            cluster_pb::cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster_pb::cluster::LbPolicy::ClusterProvided as i32,
        ..Default::default()
    };
    let (_, c) = decode_cluster(&pack_any(od)).unwrap();
    assert_eq!(c.cluster.kind, config::ClusterType::OriginalDestination);
    assert!(c.cluster.endpoints.is_empty());
    assert_eq!(c.eds, None);
    // CLUSTER_PROVIDED is for ORIGINAL_DST only.
    let mut bad = cluster_static_pb("s", &[("10.0.0.1", 80)]);
    bad.lb_policy = cluster_pb::cluster::LbPolicy::ClusterProvided as i32;
    assert!(decode_cluster(&pack_any(bad))
        .unwrap_err()
        .to_string()
        .contains("field `lb_policy`"));
}

#[test]
fn endpoints_exclude_unhealthy_and_keep_weights_and_priorities() {
    let mut la = cla_pb(
        "users",
        &[("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)],
    );
    la.endpoints[0].lb_endpoints[1].health_status = core_pb::HealthStatus::Draining as i32;
    la.endpoints[0].lb_endpoints[2].health_status = core_pb::HealthStatus::Healthy as i32;
    la.endpoints[0].lb_endpoints[2].load_balancing_weight = Some(UInt32Value { value: 3 });
    let mut failover = cla_pb("users", &[("10.9.9.9", 80)]).endpoints.remove(0);
    failover.priority = 1;
    // Locality weights matter only to locality-weighted clusters (Envoy too).
    failover.load_balancing_weight = Some(UInt32Value { value: 50 });
    la.endpoints.push(failover);
    let (name, a) = decode_endpoints(&pack_any(la.clone())).unwrap();
    assert_eq!(name, "users");
    let addrs: Vec<SocketAddr> = ["10.0.0.1:80", "10.0.0.3:80", "10.9.9.9:80"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(a.endpoints, addrs);
    let meta = |weight, priority| config::EndpointMetadata {
        weight,
        priority,
        ..Default::default()
    };
    let failover_meta = config::EndpointMetadata {
        locality: 1,
        ..meta(1, 1)
    };
    assert_eq!(a.metadata, [meta(1, 0), meta(3, 0), failover_meta]);
    // 2 of 3 healthy at priority 0: health 140 × 2 / 3 = 93 %, the rest fails over.
    assert_eq!(a.priority_load, [93, 7]);
    // Locality-weighted: the first locality has no weight, but it is its priority's only
    // one with a healthy endpoint, so it takes the priority's load.
    assert_eq!(a.locality_load, [93, 7]);
    // A cluster without locality-weighted balancing drops the localities.
    let mut c = decode_cluster(&cluster_eds("users", "")).unwrap().1.cluster;
    a.apply(&mut c);
    assert_eq!(c.endpoint_metadata[2], meta(1, 1));
    assert_eq!(c.priority_load, [93, 7]);
    // One priority, one weight: no metadata at all.
    la.endpoints.pop();
    la.endpoints[0].lb_endpoints[0].load_balancing_weight = Some(UInt32Value { value: 3 });
    let (_, a) = decode_endpoints(&pack_any(la.clone())).unwrap();
    assert_eq!((a.endpoints, a.metadata), (addrs[..2].to_vec(), vec![]));
    la.endpoints[0].lb_endpoints[0].load_balancing_weight = Some(UInt32Value { value: 0 });
    let e = decode_endpoints(&pack_any(la)).unwrap_err().to_string();
    assert!(
        e.contains(
            "field `endpoints[0].lb_endpoints[0].load_balancing_weight`: must be at least 1"
        ),
        "{e}"
    );
    let e = decode_endpoints(&cla("users", &[("db.local", 5432)]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster load assignment \"users\": field `endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address`"), "{e}");
}

#[test]
fn eds_endpoint_metadata_gives_the_traffic_label() {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let lb = |v: Kind| Metadata {
        filter_metadata: [(
            "envoy.lb".to_string(),
            Struct {
                fields: [("dubbo.tag".to_string(), Value { kind: Some(v) })].into(),
            },
        )]
        .into(),
        ..Default::default()
    };
    let mut la = cla_pb("users", &[("10.0.0.1", 80), ("10.0.0.2", 80)]);
    la.endpoints[0].lb_endpoints[1].metadata = Some(lb(Kind::StringValue("gray".into())));
    let (_, a) = decode_endpoints(&pack_any(la.clone())).unwrap();
    let tags: Vec<&str> = a.metadata.iter().map(|m| m.tag.as_str()).collect();
    assert_eq!(tags, ["", "gray"]);
    la.endpoints[0].lb_endpoints[1].metadata = Some(lb(Kind::NumberValue(1.0)));
    let e = decode_endpoints(&pack_any(la)).unwrap_err().to_string();
    assert!(
        e.contains(
            "lb_endpoints[1].metadata.filter_metadata[\"envoy.lb\"].dubbo.tag`: must be a string"
        ),
        "{e}"
    );
}

#[test]
fn wrong_type_url_is_a_decode_error() {
    let e = decode_listener(&cla("x", &[])).unwrap_err();
    assert!(matches!(e, TranslateError::Decode { .. }), "{e:?}");
}

fn any_of(type_url: &str, value: Vec<u8>) -> Any {
    Any {
        type_url: type_url.into(),
        value,
    }
}

fn typed_struct(inner: &str) -> Any {
    any_of(
        UDPA_TYPED_STRUCT,
        TypedStructUrl {
            type_url: inner.into(),
        }
        .encode_to_vec(),
    )
}

fn http_filter(name: &str, a: Any) -> hcm_pb::HttpFilter {
    hcm_pb::HttpFilter {
        name: name.into(),
        config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(a)),
        ..Default::default()
    }
}

fn null_wasm(code: &str, runtime: &str) -> Any {
    use envoy_types::pb::envoy::config::core::v3::{
        async_data_source, data_source, AsyncDataSource, DataSource,
    };
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
    use envoy_types::pb::envoy::extensions::wasm::v3::{plugin_config::Vm, PluginConfig, VmConfig};
    let w = Wasm {
        config: Some(PluginConfig {
            vm: Some(Vm::VmConfig(VmConfig {
                runtime: runtime.into(),
                code: Some(AsyncDataSource {
                    specifier: Some(async_data_source::Specifier::Local(DataSource {
                        specifier: Some(data_source::Specifier::InlineString(code.into())),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    any_of(WASM_HTTP, w.encode_to_vec())
}

/// The filters istiod always adds: accepted and ignored when telemetry-only, refused when
/// ignoring them would change what the listener does (docs/xds.md, "Istio").
#[test]
fn istio_filter_decisions() {
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    let base: hcm_pb::HttpConnectionManager =
        hcm_pb::HttpConnectionManager::decode(hcm_rds("r").value.as_slice()).unwrap();
    let with = |fs: Vec<hcm_pb::HttpFilter>| {
        let mut h = base.clone();
        let router = h.http_filters.pop().unwrap();
        h.http_filters = fs;
        h.http_filters.push(router);
        decode_listener(&crate::testing::listener("t", 1, pack_any(h)))
    };
    let istio = vec![
        http_filter("istio.metadata_exchange", typed_struct(ISTIO_PEER_METADATA)),
        http_filter(
            "istio.metadata_exchange",
            null_wasm("envoy.wasm.metadata_exchange", "envoy.wasm.runtime.null"),
        ),
        http_filter("envoy.filters.http.grpc_stats", any_of(GRPC_STATS, vec![])),
        http_filter("istio.alpn", any_of(ISTIO_ALPN, vec![])),
        http_filter("envoy.filters.http.fault", any_of(FAULT, vec![])),
        http_filter("envoy.filters.http.cors", any_of(CORS, vec![])),
        http_filter("istio.stats", any_of(ISTIO_STATS, vec![])),
    ];
    let (_, res) = with(istio).unwrap();
    assert_eq!(res.rds.as_deref(), Some("r"));

    let abort = HttpFault {
        abort: Some(Default::default()),
        ..Default::default()
    };
    let e = err_text(with(vec![http_filter(
        "envoy.filters.http.fault",
        any_of(FAULT, abort.encode_to_vec()),
    )]));
    assert!(
        e.contains("http_filters[0]") && e.contains("fault injection"),
        "{e}"
    );
    // istiod's AuthorizationPolicy filter becomes the listener's triple.rbac; an ext_authz
    // filter (CUSTOM policies) without `transport_api_version: V3` is refused, naming it.
    let rbac = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
    let (_, res) = with(vec![http_filter(
        "envoy.filters.http.rbac",
        any_of(rbac, vec![]),
    )])
    .unwrap();
    let t = res.listener.triple.unwrap();
    assert_eq!(t.rbac.len(), 1);
    assert!(t.rbac[0].stat_prefix.starts_with("http.") && t.rbac[0].stat_prefix.ends_with('.'));
    let ext_authz = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
    let e = err_text(with(vec![http_filter(
        "envoy.filters.http.ext_authz",
        any_of(ext_authz, vec![]),
    )]));
    assert!(
        e.contains("http_filters[0].typed_config.transport_api_version") && e.contains("only V3"),
        "{e}"
    );
    // istiod's shapes (extauthz.go `generateGRPCConfig` / `generateHTTPConfig`): the gRPC
    // provider with and without a request body, the HTTP provider are taken.
    {
        use envoy_types::pb::envoy::config::core::v3 as core_pb;
        use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as ea;
        let grpc = |body: bool| ea::ExtAuthz {
            transport_api_version: core_pb::ApiVersion::V3 as i32,
            failure_mode_allow: true,
            with_request_body: body.then(|| ea::BufferSettings {
                max_request_bytes: 4096,
                allow_partial_message: true,
                pack_as_bytes: false,
            }),
            services: Some(ea::ext_authz::Services::GrpcService(core_pb::GrpcService {
                target_specifier: Some(core_pb::grpc_service::TargetSpecifier::EnvoyGrpc(
                    core_pb::grpc_service::EnvoyGrpc {
                        cluster_name: "outbound|9000||authz".into(),
                        authority: "authz".into(),
                        ..Default::default()
                    },
                )),
                timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 0,
                    nanos: 2_000_000,
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let (_, res) = with(vec![http_filter(
            "envoy.filters.http.ext_authz",
            any_of(ext_authz, grpc(false).encode_to_vec()),
        )])
        .unwrap();
        let x = res.listener.triple.unwrap().ext_authz.unwrap();
        assert_eq!(
            (
                x.cluster.as_str(),
                x.timeout_ms,
                x.failure_mode_allow,
                x.status_on_error
            ),
            ("outbound|9000||authz", 2, true, 403)
        );
        // istiod's `includeRequestBodyInCheck`: taken.
        let (_, res) = with(vec![http_filter(
            "envoy.filters.http.ext_authz",
            any_of(ext_authz, grpc(true).encode_to_vec()),
        )])
        .unwrap();
        let x = res.listener.triple.unwrap().ext_authz.unwrap();
        assert_eq!(
            x.with_request_body,
            Some(config::ExtAuthzBody {
                max_request_bytes: 4096,
                allow_partial_message: true,
                pack_as_bytes: false
            })
        );
        let http = ea::ExtAuthz {
            transport_api_version: core_pb::ApiVersion::V3 as i32,
            services: Some(ea::ext_authz::Services::HttpService(Default::default())),
            ..Default::default()
        };
        let e = err_text(with(vec![http_filter(
            "envoy.filters.http.ext_authz",
            any_of(ext_authz, http.encode_to_vec()),
        )]));
        assert!(e.contains("typed_config.http_service.server_uri"), "{e}");
        // istiod's HTTP provider (golden file custom-http-provider-out2.yaml, without its
        // request body): case-blind header names become `(?i)` regexes.
        use envoy_types::pb::envoy::r#type::matcher::v3 as m;
        let names = |first: &str| m::ListStringMatcher {
            patterns: vec![
                m::StringMatcher {
                    match_pattern: Some(m::string_matcher::MatchPattern::Exact(first.into())),
                    ignore_case: true,
                },
                m::StringMatcher {
                    match_pattern: Some(m::string_matcher::MatchPattern::Prefix(
                        "x-prefix-".into(),
                    )),
                    ignore_case: true,
                },
            ],
        };
        let service = ea::HttpService {
            server_uri: Some(core_pb::HttpUri {
                uri: "http://my-custom-ext-authz.foo.svc.cluster.local".into(),
                timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                http_upstream_type: Some(core_pb::http_uri::HttpUpstreamType::Cluster(
                    "outbound|9000||my-custom-ext-authz.foo.svc.cluster.local".into(),
                )),
            }),
            path_prefix: "/check".into(),
            authorization_request: Some(ea::AuthorizationRequest {
                allowed_headers: None,
                headers_to_add: vec![core_pb::HeaderValue {
                    key: "x-header-1".into(),
                    value: "value-1".into(),
                    ..Default::default()
                }],
            }),
            authorization_response: Some(ea::AuthorizationResponse {
                allowed_client_headers: Some(names("Set-cookie")),
                allowed_client_headers_on_success: Some(names("Set-cookie")),
                allowed_upstream_headers: Some(names("Authorization")),
                ..Default::default()
            }),
            ..Default::default()
        };
        let istiod = ea::ExtAuthz {
            transport_api_version: core_pb::ApiVersion::V3 as i32,
            failure_mode_allow: true,
            clear_route_cache: true,
            allowed_headers: Some(names("x-custom-id")),
            status_on_error: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 403 }),
            services: Some(ea::ext_authz::Services::HttpService(service.clone())),
            ..Default::default()
        };
        let (_, res) = with(vec![http_filter(
            "envoy.filters.http.ext_authz",
            any_of(ext_authz, istiod.encode_to_vec()),
        )])
        .unwrap();
        let x = res.listener.triple.unwrap().ext_authz.unwrap();
        let h = x.http.as_ref().unwrap();
        assert_eq!(
            (x.cluster.as_str(), x.timeout_ms, h.path_prefix.as_str()),
            (
                "outbound|9000||my-custom-ext-authz.foo.svc.cluster.local",
                10_000,
                "/check"
            )
        );
        assert_eq!(
            x.allowed_headers[0].regex.as_deref(),
            Some("(?i)x\\-custom\\-id")
        );
        assert_eq!(h.headers_to_add, [("x-header-1".into(), "value-1".into())]);
        assert_eq!(h.allowed_upstream_headers.len(), 2);
        // Both lists of request headers: refused, as Envoy refuses them.
        let mut both = istiod.clone();
        let mut s2 = service.clone();
        s2.authorization_request.as_mut().unwrap().allowed_headers = Some(names("x-a"));
        both.services = Some(ea::ext_authz::Services::HttpService(s2));
        let e = err_text(with(vec![http_filter(
            "envoy.filters.http.ext_authz",
            any_of(ext_authz, both.encode_to_vec()),
        )]));
        assert!(e.contains("authorization_request.allowed_headers"), "{e}");
        // A formatter in a value is refused, not sent as it is.
        let mut fmt = istiod.clone();
        let mut s3 = service;
        s3.authorization_request.as_mut().unwrap().headers_to_add[0].value = "%REQ(:path)%".into();
        fmt.services = Some(ea::ext_authz::Services::HttpService(s3));
        let e = err_text(with(vec![http_filter(
            "envoy.filters.http.ext_authz",
            any_of(ext_authz, fmt.encode_to_vec()),
        )]));
        assert!(e.contains("headers_to_add[0].value"), "{e}");
    }
    let e = err_text(with(vec![http_filter(
        "w",
        null_wasm("my.plugin", "envoy.wasm.runtime.v8"),
    )]));
    assert!(e.contains("Wasm filters are not supported"), "{e}");

    // Network: telemetry filters before the proxy filter are skipped; rbac becomes the
    // listener's `rbac`; any other extra filter is refused.
    let filter = |name: &str, a: Any| listener_pb::Filter {
        name: name.into(),
        config_type: Some(listener_pb::filter::ConfigType::TypedConfig(a)),
    };
    let mut l = crate::testing::listener_pb("t", 1, tcp("c"));
    let proxy = l.filter_chains[0].filters.pop().unwrap();
    l.filter_chains[0].filters = vec![
        filter("istio_authn", typed_struct(ISTIO_AUTHN)),
        filter("istio.metadata_exchange", any_of(ISTIO_MX, vec![])),
        filter("istio.stats", any_of(ISTIO_STATS, vec![])),
        proxy.clone(),
    ];
    let (_, res) = decode_listener(&pack_any(l.clone())).unwrap();
    assert_eq!(res.listener.cluster.as_deref(), Some("c"));
    l.filter_chains[0].filters.insert(
        0,
        filter(
            "envoy.filters.network.rbac",
            any_of(
                "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                vec![],
            ),
        ),
    );
    let (_, res) = decode_listener(&pack_any(l.clone())).unwrap();
    assert_eq!(res.listener.rbac.len(), 1);
    assert_eq!(res.listener.cluster.as_deref(), Some("c"));
    // The network ext_authz filter (istiod's CUSTOM policy on TCP chains, extauthz.go
    // `generateGRPCConfig`'s `tcp`) after that rbac filter: the listener's `ext_authz`, run
    // after one rbac filter; without `transport_api_version: V3`, or with a field ringside does
    // not act on, refused naming it.
    {
        use envoy_types::pb::envoy::config::core::v3 as core_pb;
        use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3 as na;
        let net = "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";
        let istiod = na::ExtAuthz {
            stat_prefix: "tcp.".into(),
            transport_api_version: core_pb::ApiVersion::V3 as i32,
            failure_mode_allow: true,
            grpc_service: Some(core_pb::GrpcService {
                target_specifier: Some(core_pb::grpc_service::TargetSpecifier::EnvoyGrpc(
                    core_pb::grpc_service::EnvoyGrpc {
                        cluster_name: "outbound|9000||authz".into(),
                        authority: "authz".into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        let at = |x: &na::ExtAuthz| {
            let mut l = l.clone();
            l.filter_chains[0].filters.insert(
                1,
                filter(
                    "envoy.filters.network.ext_authz",
                    any_of(net, x.encode_to_vec()),
                ),
            );
            l
        };
        let (_, res) = decode_listener(&pack_any(at(&istiod))).unwrap();
        let x = res.listener.ext_authz.unwrap();
        assert_eq!(
            (
                x.cluster.as_str(),
                x.after_rbac,
                x.failure_mode_allow,
                x.stat_prefix.as_str(),
                x.timeout_ms
            ),
            ("outbound|9000||authz", 1, true, "tcp.", 200)
        );
        assert_eq!(res.listener.cluster.as_deref(), Some("c"));
        let e = err_text(decode_listener(&pack_any(at(&na::ExtAuthz::default()))));
        assert!(
            e.contains("filters[1].typed_config.transport_api_version"),
            "{e}"
        );
        let alert = na::ExtAuthz {
            send_tls_alert_on_denial: true,
            ..istiod.clone()
        };
        let e = err_text(decode_listener(&pack_any(at(&alert))));
        assert!(e.contains("typed_config.send_tls_alert_on_denial"), "{e}");
        // Its filter_enabled_metadata names a shadow prefix no rbac filter before it has.
        let enabled = na::ExtAuthz {
            filter_enabled_metadata: Some(
                envoy_types::pb::envoy::r#type::matcher::v3::MetadataMatcher {
                    filter: "envoy.filters.network.rbac".into(),
                    path: vec![envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment {
                        segment: Some(envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment::Key(
                            "istio_ext_authz_shadow_effective_policy_id".into(),
                        )),
                    }],
                    ..Default::default()
                },
            ),
            ..istiod.clone()
        };
        let e = err_text(decode_listener(&pack_any(at(&enabled))));
        assert!(
            e.contains("filter_enabled_metadata.path[0].key")
                && e.contains("envoy.filters.network.rbac"),
            "{e}"
        );
        // Not on an HTTP connection manager's chain.
        let mut h =
            crate::testing::listener_pb("h", 2, hcm_inline(route_config_pb("r", &["*"], vec![])));
        h.filter_chains[0].filters.insert(
            0,
            filter(
                "envoy.filters.network.ext_authz",
                any_of(net, istiod.encode_to_vec()),
            ),
        );
        let e = err_text(decode_listener(&pack_any(h)));
        assert!(e.contains("tcp_proxy chains only"), "{e}");
    }

    // Per-route fault injection (a VirtualService `fault`) is the route's `fault`; an abort
    // without a status is refused.
    let mut rc = route_config_pb("rc", &["*"], vec![route_to("/", "c")]);
    rc.virtual_hosts[0].routes[0]
        .typed_per_filter_config
        .insert(
            "envoy.filters.http.fault".into(),
            any_of(FAULT, abort.encode_to_vec()),
        );
    let e = err_text(decode_listener(&crate::testing::listener(
        "t",
        1,
        hcm_inline(rc),
    )));
    assert!(
        e.contains("routes[0].typed_per_filter_config")
            && e.contains("give http_status or grpc_status"),
        "{e}"
    );
}

#[test]
fn istio_clusters() {
    use cluster_pb::cluster::{ClusterDiscoveryType, DiscoveryType};
    // BlackHoleCluster: STATIC without load_assignment has no endpoints.
    let bh = cluster_pb::Cluster {
        name: "BlackHoleCluster".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        ..Default::default()
    };
    let (_, res) = decode_cluster(&pack_any(bh.clone())).unwrap();
    assert!(res.cluster.endpoints.is_empty() && res.eds.is_none());
    let mut dns = bh.clone();
    dns.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
    assert!(decode_cluster(&pack_any(dns)).is_err());

    // istio.metadata_exchange as a cluster filter (TypedStruct) and outlier_detection: accepted.
    let mut c = bh.clone();
    c.filters = vec![cluster_pb::Filter {
        name: "istio.metadata_exchange".into(),
        typed_config: Some(typed_struct(ISTIO_MX)),
        ..Default::default()
    }];
    c.outlier_detection = Some(Default::default());
    assert!(decode_cluster(&pack_any(c.clone())).is_ok());
    c.filters[0].typed_config = Some(any_of("type.googleapis.com/some.Other", vec![]));
    let e = match decode_cluster(&pack_any(c)) {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected a NACK, got {v:?}"),
    };
    assert!(e.contains("filters[0]"), "{e}");
}

/// `upstream_bind_config` as istiod sends it (127.0.0.6; `::6` as an extra source address on
/// dual-stack pods) becomes `source_addresses`; what ringside cannot bind is refused by name.
#[test]
fn upstream_bind_config_source_addresses() {
    use core_pb::socket_address::PortSpecifier;
    let sa = |ip: &str, port: u32| core_pb::SocketAddress {
        address: ip.into(),
        port_specifier: Some(PortSpecifier::PortValue(port)),
        ..Default::default()
    };
    let cluster = |b: core_pb::BindConfig| {
        let c = cluster_pb::Cluster {
            name: "inbound|80||".into(),
            cluster_discovery_type: Some(cluster_pb::cluster::ClusterDiscoveryType::Type(
                cluster_pb::cluster::DiscoveryType::OriginalDst as i32,
            )),
            lb_policy: cluster_pb::cluster::LbPolicy::ClusterProvided as i32,
            upstream_bind_config: Some(b),
            ..Default::default()
        };
        decode_cluster(&pack_any(c)).map(|(_, r)| r.cluster.source_addresses)
    };
    let v4 = core_pb::BindConfig {
        source_address: Some(sa("127.0.0.6", 0)),
        ..Default::default()
    };
    assert_eq!(
        cluster(v4.clone()).unwrap(),
        vec!["127.0.0.6".parse::<IpAddr>().unwrap()]
    );
    let mut dual = v4.clone();
    dual.extra_source_addresses = vec![core_pb::ExtraSourceAddress {
        address: Some(sa("::6", 0)),
        ..Default::default()
    }];
    let want: Vec<IpAddr> = vec!["127.0.0.6".parse().unwrap(), "::6".parse().unwrap()];
    assert_eq!(cluster(dual.clone()).unwrap(), want);
    let nack = |b: core_pb::BindConfig| match cluster(b) {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected a NACK, got {v:?}"),
    };
    let mut same = dual.clone();
    same.extra_source_addresses[0].address = Some(sa("127.0.0.7", 0));
    let e = nack(same);
    assert!(
        e.contains("upstream_bind_config.extra_source_addresses[0].address"),
        "{e}"
    );
    let e = nack(core_pb::BindConfig {
        source_address: Some(sa("127.0.0.6", 7)),
        ..Default::default()
    });
    assert!(
        e.contains("upstream_bind_config.source_address.port_value"),
        "{e}"
    );
    let e = nack(core_pb::BindConfig {
        source_address: Some(sa("localhost", 0)),
        ..Default::default()
    });
    assert!(
        e.contains("upstream_bind_config.source_address.address"),
        "{e}"
    );
    let mut free = v4;
    free.freebind = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
    assert!(nack(free).contains("upstream_bind_config.freebind"));
}

/// Istio's virtualOutbound (own-port blackhole chain + catch-all) and an outbound
/// `0.0.0.0_PORT` (HTTP chain by protocol detection + PassthroughFilterChain); a listener
/// choosing by destination port is refused.
#[test]
fn istio_chain_shapes() {
    use envoy_types::pb::google::protobuf::BoolValue;
    let chain = |m: Option<listener_pb::FilterChainMatch>, filter: Any| listener_pb::FilterChain {
        filter_chain_match: m,
        filters: vec![listener_pb::Filter {
            name: "f".into(),
            config_type: Some(listener_pb::filter::ConfigType::TypedConfig(filter)),
        }],
        ..Default::default()
    };
    let port = |p: u32| listener_pb::FilterChainMatch {
        destination_port: Some(UInt32Value { value: p }),
        ..Default::default()
    };
    let mut vo = crate::testing::listener_pb("virtualOutbound", 15001, tcp("x"));
    vo.use_original_dst = Some(BoolValue { value: true });
    vo.filter_chains = vec![
        chain(Some(port(15001)), tcp("BlackHoleCluster")),
        chain(None, tcp("PassthroughCluster")),
    ];
    let (_, res) = decode_listener(&pack_any(vo.clone())).unwrap();
    assert!(res.hand_off && res.listener.original_destination && res.listener.bind);
    assert_eq!(res.listener.cluster.as_deref(), Some("PassthroughCluster"));

    let mut out = crate::testing::listener_pb("0.0.0.0_9080", 9080, tcp("x"));
    out.bind_to_port = Some(BoolValue { value: false });
    let http = listener_pb::FilterChainMatch {
        transport_protocol: "raw_buffer".into(),
        application_protocols: vec!["http/1.1".into(), "h2c".into()],
        ..Default::default()
    };
    out.filter_chains = vec![chain(Some(http.clone()), hcm_rds("9080"))];
    out.default_filter_chain = Some(chain(None, tcp("PassthroughCluster")));
    let (_, res) = decode_listener(&pack_any(out.clone())).unwrap();
    assert!(!res.listener.bind && !res.hand_off);
    assert_eq!(res.listener.protocol, Protocol::Triple);
    assert_eq!(res.rds.as_deref(), Some("9080"));
    // Its catch-all chain: a listener of its own, to the original destination.
    let d = res.listener.default_filter_chain.as_ref().unwrap();
    assert_eq!(
        d.listener.as_deref(),
        Some("0.0.0.0_9080/default_filter_chain")
    );
    assert!(res.listener.filter_chains.is_empty());
    let [c] = res.chains.as_slice() else {
        panic!("{:?}", res.chains)
    };
    assert_eq!(c.listener.name, "0.0.0.0_9080/default_filter_chain");
    assert_eq!(c.listener.cluster.as_deref(), Some("PassthroughCluster"));
    assert!(!c.listener.bind && c.listener.original_destination);
    assert_eq!(c.listener.protocol, Protocol::Tcp);

    // The same chains on a listener that binds its port: chosen per connection, each chain's
    // listener with its own RDS; a TLS chain in front of a tcp_proxy gets a tcp listener that
    // terminates TLS.
    let mut bound = out.clone();
    bound.bind_to_port = None;
    let mut tls_chain = chain(
        Some(listener_pb::FilterChainMatch {
            transport_protocol: "tls".into(),
            ..Default::default()
        }),
        tcp("x"),
    );
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
    let file = |f: &str| {
        Some(core_pb::DataSource {
            specifier: Some(core_pb::data_source::Specifier::Filename(f.into())),
            ..Default::default()
        })
    };
    tls_chain.transport_socket = Some(core_pb::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(
            pack_any(tls_pb::DownstreamTlsContext {
                common_tls_context: Some(tls_pb::CommonTlsContext {
                    tls_certificates: vec![tls_pb::TlsCertificate {
                        certificate_chain: file("/c.pem"),
                        private_key: file("/c.key"),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )),
    });
    bound.filter_chains.push(tls_chain);
    let (_, res) = decode_listener(&pack_any(bound)).unwrap();
    let l = &res.listener;
    assert!(l.bind && l.protocol == Protocol::Tcp && l.cluster.is_none());
    assert_eq!(
        l.filter_chains[0].matcher.application_protocols,
        ["http/1.1", "h2c"]
    );
    assert_eq!(
        l.filter_chains[1].listener.as_deref(),
        Some("0.0.0.0_9080/filter_chains[1]")
    );
    assert_eq!(res.chains.len(), 3);
    assert_eq!(res.chains[0].rds.as_deref(), Some("9080"));
    let t = &res.chains[1].listener;
    assert!(
        t.protocol == Protocol::Tcp && t.tls.is_some() && !t.bind,
        "{t:?}"
    );
    assert_eq!(t.cluster.as_deref(), Some("x"));
    assert_eq!(
        res.chains[2].listener.name,
        "0.0.0.0_9080/default_filter_chain"
    );
    // A use_original_dst listener keeps the shapes its hand-off decides.
    vo.filter_chains
        .insert(0, chain(Some(port(80)), tcp("c80")));
    let e = err_text(decode_listener(&pack_any(vo)));
    assert!(
        e.contains("`filter_chains`") && e.contains("cannot choose"),
        "{e}"
    );
}

/// Aeraki's dubbo_proxy: a TypedStruct (`udpa.type.v1`, as Aeraki sends it, or its successor
/// `xds.type.v3`) whose value is the proto3 JSON (lowerCamelCase) of DubboProxy; a key ringside
/// does not translate is refused, never dropped.
#[test]
fn typed_struct_dubbo_proxy() {
    use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
    fn o(kv: &[(&str, Value)]) -> Value {
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            })),
        }
    }
    fn s(x: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(x.into())),
        }
    }
    fn l(v: Vec<Value>) -> Value {
        Value {
            kind: Some(Kind::ListValue(ListValue { values: v })),
        }
    }
    let proxy = |wrapper: &str, route: Value| {
        let v = o(&[
            ("statPrefix", s("outbound|20880||svc")),
            ("protocolType", s("Dubbo")),
            ("serializationType", s("Hessian2")),
            (
                "routeConfig",
                l(vec![o(&[
                    ("name", s("rc")),
                    ("interface", s("org.apache.dubbo.samples.DemoService")),
                    (
                        "routes",
                        l(vec![o(&[
                            (
                                "match",
                                o(&[(
                                    "method",
                                    o(&[(
                                        "name",
                                        o(&[(
                                            "safeRegex",
                                            o(&[("googleRe2", o(&[])), ("regex", s(".*"))]),
                                        )]),
                                    )]),
                                )]),
                            ),
                            ("route", route),
                        ])]),
                    ),
                ])]),
            ),
            (
                "dubboFilters",
                l(vec![o(&[("name", s("envoy.filters.dubbo.router"))])]),
            ),
        ]);
        let Some(Kind::StructValue(st)) = v.kind else {
            unreachable!()
        };
        any_of(
            wrapper,
            TypedStructFull {
                type_url: DUBBO_PROXY_TYPE.into(),
                value: Some(st),
            }
            .encode_to_vec(),
        )
    };
    for wrapper in [UDPA_TYPED_STRUCT, XDS_TYPED_STRUCT] {
        let (_, res) = decode_listener(&crate::testing::listener(
            "d",
            1,
            proxy(wrapper, o(&[("cluster", s("c"))])),
        ))
        .unwrap();
        assert_eq!(res.listener.protocol, Protocol::Dubbo, "{wrapper}");
        let routes = res.listener.dubbo.unwrap().routes;
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].route.cluster.as_deref(), Some("c"));
        assert_eq!(
            routes[0].matcher.interface,
            exact("org.apache.dubbo.samples.DemoService")
        );

        let e = err_text(decode_listener(&crate::testing::listener(
            "d",
            1,
            proxy(
                wrapper,
                o(&[("cluster", s("c")), ("metadataMatch", o(&[]))]),
            ),
        )));
        assert!(
            e.contains("metadata_match") && e.contains("not supported"),
            "{wrapper}: {e}"
        );
    }
}

fn rate_limit_pb(
    max: u32,
    per_fill: u32,
    fill_ms: i32,
    enabled: u32,
) -> http_rl_pb::LocalRateLimit {
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket as TokenBucketPb};
    let all = |n: u32| core_pb::RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: n,
            denominator: 0,
        }),
        runtime_key: "rk".into(),
    };
    http_rl_pb::LocalRateLimit {
        stat_prefix: "rl".into(),
        token_bucket: Some(TokenBucketPb {
            max_tokens: max,
            tokens_per_fill: Some(UInt32Value { value: per_fill }),
            fill_interval: Some(Duration {
                seconds: 0,
                nanos: fill_ms * 1_000_000,
            }),
        }),
        filter_enabled: Some(all(enabled)),
        filter_enforced: Some(all(100)),
        ..Default::default()
    }
}

#[test]
fn http_local_rate_limit_filter_and_per_route_configs() {
    let mut limited = route_to("/pkg.S/Limited", "c");
    limited.typed_per_filter_config.insert(
        "envoy.filters.http.local_ratelimit".into(),
        pack_any(rate_limit_pb(5, 2, 500, 100)),
    );
    let rc = route_config_pb("rc", &["*"], vec![limited, route_to("/", "c")]);
    let mut h =
        hcm_pb::HttpConnectionManager::decode(hcm_inline(rc.clone()).value.as_slice()).unwrap();
    h.http_filters.insert(
        0,
        http_filter(
            "envoy.filters.http.local_ratelimit",
            pack_any(rate_limit_pb(100, 10, 100, 100)),
        ),
    );
    let (_, res) = decode_listener(&crate::testing::listener("t", 1, pack_any(h.clone()))).unwrap();
    let bucket = |max, per, ms| {
        Some(TokenBucket {
            max_tokens: max,
            tokens_per_fill: per,
            fill_interval_ms: ms,
            http_status: Some(429),
            grpc_status: Some(14),
        })
    };
    assert_eq!(res.listener.local_rate_limit, bucket(100, 10, 100));
    assert!(res.route_limits);
    let routes = res.listener.triple.unwrap().virtual_hosts[0].routes.clone();
    assert_eq!(routes[0].local_rate_limit, bucket(5, 2, 500));
    assert_eq!(
        routes[1].local_rate_limit, None,
        "the filter-level bucket applies"
    );

    // Filter disabled (0 %, also Envoy's default): no listener bucket, routes keep theirs.
    h.http_filters[0] = http_filter(
        "envoy.filters.http.local_ratelimit",
        pack_any(rate_limit_pb(100, 10, 100, 0)),
    );
    let (_, res) = decode_listener(&crate::testing::listener("t", 1, pack_any(h.clone()))).unwrap();
    assert_eq!(res.listener.local_rate_limit, None);
    assert_eq!(
        res.listener.triple.unwrap().virtual_hosts[0].routes[0].local_rate_limit,
        bucket(5, 2, 500)
    );

    // No filter in the chain: Envoy ignores the per-route configs, so does ringside.
    let (_, res) = decode_listener(&crate::testing::listener("t", 1, hcm_inline(rc))).unwrap();
    assert!(!res.route_limits);
    assert_eq!(
        res.listener.triple.unwrap().virtual_hosts[0].routes[0].local_rate_limit,
        None
    );

    // Refused: partial enablement, descriptors, shadow mode, a virtual host's shared bucket.
    h.http_filters[0] = http_filter(
        "envoy.filters.http.local_ratelimit",
        pack_any(rate_limit_pb(1, 1, 100, 50)),
    );
    let e = err_text(decode_listener(&crate::testing::listener(
        "t",
        1,
        pack_any(h.clone()),
    )));
    assert!(
        e.contains("http_filters[0].typed_config.filter_enabled.default_value")
            && e.contains("50/100"),
        "{e}"
    );
    let mut shadow = rate_limit_pb(1, 1, 100, 100);
    shadow.filter_enforced = None;
    h.http_filters[0] = http_filter("envoy.filters.http.local_ratelimit", pack_any(shadow));
    let e = err_text(decode_listener(&crate::testing::listener(
        "t",
        1,
        pack_any(h),
    )));
    assert!(
        e.contains("filter_enforced") && e.contains("shadow mode"),
        "{e}"
    );
    let mut rc = route_config_pb("rc", &["*"], vec![route_to("/", "c")]);
    rc.virtual_hosts[0].typed_per_filter_config.insert(
        "envoy.filters.http.local_ratelimit".into(),
        pack_any(rate_limit_pb(5, 2, 500, 100)),
    );
    let e = decode_route(&pack_any(rc)).unwrap_err().to_string();
    assert!(
        e.contains("virtual_hosts[0].typed_per_filter_config")
            && e.contains("shared by several routes"),
        "{e}"
    );
}

#[test]
fn circuit_breakers_default_priority_max_requests() {
    use cluster_pb::circuit_breakers::Thresholds;
    let mut s = cluster_static_pb("s", &[("10.0.0.1", 80)]);
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    assert_eq!(c.cluster.circuit_breakers, None, "no thresholds: no limit");
    s.circuit_breakers = Some(cluster_pb::CircuitBreakers {
        thresholds: vec![
            Thresholds {
                priority: core_pb::RoutingPriority::High as i32,
                max_requests: Some(UInt32Value { value: 7 }),
                ..Default::default()
            },
            Thresholds {
                max_requests: Some(UInt32Value { value: 50 }),
                max_connections: Some(UInt32Value { value: 3 }),
                max_pending_requests: Some(UInt32Value { value: 0 }),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    assert_eq!(
        c.cluster.circuit_breakers,
        Some(config::CircuitBreakers {
            max_requests: 50,
            max_retries: 3,
            max_connections: 3,
            max_pending_requests: 0,
            retry_budget: None,
        })
    );
    s.circuit_breakers.as_mut().unwrap().thresholds[1] = Thresholds::default();
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    assert_eq!(
        c.cluster.circuit_breakers,
        Some(config::CircuitBreakers {
            max_requests: 1024,
            max_retries: 3,
            max_connections: 1024,
            max_pending_requests: 1024,
            retry_budget: None,
        }),
        "Envoy's default"
    );
    // A retry budget, empty: Envoy's defaults (20 %, 3); set: its values.
    s.circuit_breakers.as_mut().unwrap().thresholds[1].retry_budget = Some(Default::default());
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    assert_eq!(
        c.cluster.circuit_breakers.unwrap().retry_budget,
        Some(config::RetryBudget {
            budget_percent: config::Percent(20.0),
            min_retry_concurrency: 3,
        })
    );
    s.circuit_breakers.as_mut().unwrap().thresholds[1].retry_budget =
        Some(cluster_pb::circuit_breakers::thresholds::RetryBudget {
            budget_percent: Some(envoy_types::pb::envoy::r#type::v3::Percent { value: 12.5 }),
            min_retry_concurrency: Some(UInt32Value { value: 0 }),
            budget_interval: None,
        });
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    assert_eq!(
        c.cluster.circuit_breakers.unwrap().retry_budget,
        Some(config::RetryBudget {
            budget_percent: config::Percent(12.5),
            min_retry_concurrency: 0,
        })
    );
    // Envoy 1.40's `budget_interval`: refused unless 0.
    let t = &mut s.circuit_breakers.as_mut().unwrap().thresholds[1];
    t.retry_budget.as_mut().unwrap().budget_interval =
        Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 1,
            nanos: 0,
        });
    let e = decode_cluster(&pack_any(s)).unwrap_err().to_string();
    assert!(e.contains("budget_interval"), "{e}");
}

#[test]
fn outlier_detection_consecutive_5xx() {
    let mut s = cluster_static_pb("s", &[("10.0.0.1", 80)]);
    s.outlier_detection = Some(cluster_pb::OutlierDetection::default());
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    assert_eq!(
        c.cluster.outlier_detection,
        Some(config::OutlierDetection {
            success_rate: Some(config::SuccessRate::default()),
            ..Default::default()
        }),
        "Envoy's defaults: 5 in a row, 30 s base, 300 s max, 10 s interval, 10 %, success \
         rate enforced (1.9 stdev, 5 hosts, 100 requests), failure percentage not"
    );
    let o = s.outlier_detection.as_mut().unwrap();
    o.consecutive_5xx = Some(UInt32Value { value: 2 });
    o.base_ejection_time = Some(Duration {
        seconds: 1,
        nanos: 0,
    });
    o.max_ejection_percent = Some(UInt32Value { value: 50 });
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    let got = c.cluster.outlier_detection.unwrap();
    assert_eq!(
        (
            got.consecutive_errors,
            got.base_ejection_time_ms,
            got.max_ejection_percent
        ),
        (2, 1000, 50)
    );
    s.outlier_detection
        .as_mut()
        .unwrap()
        .enforcing_consecutive_5xx = Some(UInt32Value { value: 0 });
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    assert_eq!(
        c.cluster.outlier_detection.map(|o| o.consecutive_errors),
        Some(0),
        "consecutive errors not enforced, success rate still"
    );
    let o = s.outlier_detection.as_mut().unwrap();
    o.enforcing_success_rate = Some(UInt32Value { value: 0 });
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    assert_eq!(c.cluster.outlier_detection, None, "nothing enforced");
    let o = s.outlier_detection.as_mut().unwrap();
    o.enforcing_failure_percentage = Some(UInt32Value { value: 100 });
    o.failure_percentage_threshold = Some(UInt32Value { value: 50 });
    o.failure_percentage_minimum_hosts = Some(UInt32Value { value: 3 });
    let (_, c) = decode_cluster(&pack_any(s.clone())).unwrap();
    let got = c.cluster.outlier_detection.unwrap();
    assert_eq!(
        (
            got.consecutive_errors,
            got.success_rate,
            got.failure_percentage
        ),
        (
            0,
            None,
            Some(config::FailurePercentage {
                threshold: 50,
                minimum_hosts: 3,
                request_volume: 50
            })
        )
    );
    let o = s.outlier_detection.as_mut().unwrap();
    o.failure_percentage_threshold = Some(UInt32Value { value: 101 });
    let e = decode_cluster(&pack_any(s.clone()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("failure_percentage_threshold"), "{e}");
    let o = s.outlier_detection.as_mut().unwrap();
    o.failure_percentage_threshold = None;
    s.outlier_detection
        .as_mut()
        .unwrap()
        .enforcing_consecutive_5xx = Some(UInt32Value { value: 30 });
    let e = decode_cluster(&pack_any(s)).unwrap_err().to_string();
    assert!(
        e.contains("outlier_detection.enforcing_consecutive_5xx"),
        "{e}"
    );
}

#[test]
fn hcm_opentelemetry_tracing() {
    use envoy_types::pb::envoy::config::trace::v3 as trace_pb;
    use envoy_types::pb::envoy::r#type::v3::Percent;
    let otel = |cluster: &str| trace_pb::OpenTelemetryConfig {
        grpc_service: Some(core_pb::GrpcService {
            target_specifier: Some(core_pb::grpc_service::TargetSpecifier::EnvoyGrpc(
                core_pb::grpc_service::EnvoyGrpc {
                    cluster_name: cluster.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        service_name: "frontend".into(),
        ..Default::default()
    };
    let provider = |any: Any| trace_pb::tracing::Http {
        name: "envoy.tracers.opentelemetry".into(),
        config_type: Some(trace_pb::tracing::http::ConfigType::TypedConfig(any)),
    };
    let with = |t: Option<hcm_pb::http_connection_manager::Tracing>, direction: i32| {
        let mut h = hcm_pb::HttpConnectionManager::decode(hcm_rds("r").value.as_slice()).unwrap();
        h.tracing = t;
        let mut l = crate::testing::listener_pb("t", 1, pack_any(h));
        l.traffic_direction = direction;
        decode_listener(&pack_any(l))
    };
    let t = hcm_pb::http_connection_manager::Tracing {
        random_sampling: Some(Percent { value: 12.5 }),
        provider: Some(provider(pack_any(otel("otel")))),
        ..Default::default()
    };
    let (_, res) = with(Some(t.clone()), core_pb::TrafficDirection::Inbound as i32).unwrap();
    let got = res.listener.tracing.unwrap();
    assert_eq!(got.collector_cluster, "otel");
    assert_eq!(got.service_name, "frontend");
    assert_eq!(got.random_sampling, config::Percent(12.5));
    assert_eq!(got.span_kind, config::SpanKind::Server);
    let (_, res) = with(Some(t.clone()), core_pb::TrafficDirection::Outbound as i32).unwrap();
    assert_eq!(
        res.listener.tracing.unwrap().span_kind,
        config::SpanKind::Client
    );
    // Without a provider (istiod's shape when no tracer is configured), or with one ringside
    // lacks: not traced, accepted.
    let (_, res) = with(Some(hcm_pb::http_connection_manager::Tracing::default()), 0).unwrap();
    assert_eq!(res.listener.tracing, None);
    let zipkin = hcm_pb::http_connection_manager::Tracing {
        provider: Some(provider(any_of(
            "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            Vec::new(),
        ))),
        ..Default::default()
    };
    assert_eq!(with(Some(zipkin), 0).unwrap().1.listener.tracing, None);
    let bad = hcm_pb::http_connection_manager::Tracing {
        random_sampling: Some(Percent { value: 250.0 }),
        ..t
    };
    let e = err_text(with(Some(bad), 0));
    assert!(e.contains("tracing.random_sampling.value"), "{e}");
}

/// A route's `retry_policy` (Istio's default shape), the virtual host's for routes without
/// one, and what is refused.
#[test]
fn retry_policy_from_rds() {
    let policy = |retry_on: &str| route_pb::RetryPolicy {
        retry_on: retry_on.into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retry_host_predicate: vec![route_pb::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: None,
        }],
        host_selection_retry_max_attempts: 5,
        retriable_status_codes: vec![503],
        // istiod's `retryRemoteLocalities: true`.
        retry_priority: Some(retry_priority(2)),
        ..Default::default()
    };
    let mut own = route_to("/a", "c");
    if let Some(route_pb::route::Action::Route(a)) = own.action.as_mut() {
        a.retry_policy = Some(policy(
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        ));
    }
    let mut rc = route_config_pb("rc", &["*"], vec![own, route_to("/", "c")]);
    rc.virtual_hosts[0].retry_policy = Some(route_pb::RetryPolicy {
        retry_on: "reset".into(),
        ..Default::default()
    });
    let (_, t) = decode_route(&pack_any(rc.clone())).unwrap();
    let routes = &t.virtual_hosts[0].routes;
    use config::RetryOn as On;
    assert_eq!(
        routes[0].route.retry_policy,
        Some(config::RetryPolicy {
            retry_on: vec![
                On::ConnectFailure,
                On::RefusedStream,
                On::Unavailable,
                On::Cancelled,
                On::RetriableStatusCodes
            ],
            num_retries: 2,
            per_try_timeout_ms: None,
            retriable_status_codes: vec![503],
            previous_hosts: true,
            host_selection_retry_max_attempts: 5,
            previous_priorities: Some(2),
            retry_back_off: None,
        })
    );
    let vh = routes[1].route.retry_policy.as_ref().unwrap();
    assert_eq!(
        (&vh.retry_on[..], vh.num_retries, vh.previous_hosts),
        (&[On::Reset][..], 1, false)
    );
    let mut bad = rc.clone();
    bad.virtual_hosts[0].retry_policy = Some(policy("retriable-4xx"));
    let e = decode_route(&pack_any(bad)).unwrap_err().to_string();
    assert!(
        e.contains("`virtual_hosts[0].retry_policy.retry_on`: \"retriable-4xx\" is not supported"),
        "{e}"
    );
    let mut bad = rc;
    bad.virtual_hosts[0].retry_policy = Some(route_pb::RetryPolicy {
        retry_on: "reset".into(),
        retriable_headers: vec![Default::default()],
        ..Default::default()
    });
    let e = decode_route(&pack_any(bad.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("retry_policy.retriable_headers`: not supported"),
        "{e}"
    );
    // `update_frequency` 0 (Envoy: above 0), another retry priority: NACK; beyond the most
    // tries: no effect.
    let with = |rp: route_pb::retry_policy::RetryPriority| {
        let mut rc = bad.clone();
        rc.virtual_hosts[0].retry_policy = Some(route_pb::RetryPolicy {
            retry_on: "reset".into(),
            retry_priority: Some(rp),
            ..Default::default()
        });
        decode_route(&pack_any(rc))
    };
    let e = with(retry_priority(0)).unwrap_err().to_string();
    assert!(e.contains("update_frequency`: 0 must be above 0"), "{e}");
    let mut other = retry_priority(1);
    other.config_type = None;
    let e = with(other).unwrap_err().to_string();
    assert!(e.contains("retry_priority.typed_config`"), "{e}");
    let (_, t) = with(retry_priority(50)).unwrap();
    let p = t.virtual_hosts[0].routes[1]
        .route
        .retry_policy
        .as_ref()
        .unwrap();
    assert_eq!(p.previous_priorities, None);
}

/// Envoy's `previous_priorities` retry priority with `update_frequency` `f`.
fn retry_priority(f: i32) -> route_pb::retry_policy::RetryPriority {
    use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3 as pp_pb;
    route_pb::retry_policy::RetryPriority {
        name: "envoy.retry_priorities.previous_priorities".into(),
        config_type: Some(route_pb::retry_policy::retry_priority::ConfigType::TypedConfig(
            Any {
                type_url: "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig".into(),
                value: pp_pb::PreviousPrioritiesConfig { update_frequency: f }.encode_to_vec(),
            },
        )),
    }
}

/// A tcp_proxy's access logs with filters: supported ones translate (a runtime fraction of
/// ten thousand as a percentage), one ringside does not evaluate anywhere in the tree keeps
/// every call (no filter), bad flags and missing comparisons are NACKed.
#[test]
fn access_log_filters() {
    use accesslog_pb::access_log_filter::FilterSpecifier as F;
    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    let with = |filter: F| -> Result<(String, ListenerRes), TranslateError> {
        let t = tcp_pb::TcpProxy {
            stat_prefix: "tcp".into(),
            cluster_specifier: Some(tcp_pb::tcp_proxy::ClusterSpecifier::Cluster("b".into())),
            access_log: vec![accesslog_pb::AccessLog {
                name: "stdout".into(),
                filter: Some(accesslog_pb::AccessLogFilter {
                    filter_specifier: Some(filter),
                }),
                config_type: Some(accesslog_pb::access_log::ConfigType::TypedConfig(pack_any(
                    StdoutAccessLog::default(),
                ))),
            }],
            ..Default::default()
        };
        decode_listener(&crate::testing::listener("in", 9000, pack_any(t)))
    };
    let filter = |r: Result<(String, ListenerRes), TranslateError>| {
        r.unwrap().1.listener.access_log[0].filter.clone()
    };
    let sampled = F::RuntimeFilter(accesslog_pb::RuntimeFilter {
        runtime_key: "k".into(),
        percent_sampled: Some(FractionalPercent {
            numerator: 50,
            denominator: 1,
        }),
        use_independent_randomness: false,
    });
    assert_eq!(
        filter(with(sampled.clone())).unwrap().runtime_percent,
        Some(config::Percent(0.5))
    );
    let code = F::StatusCodeFilter(accesslog_pb::StatusCodeFilter {
        comparison: Some(accesslog_pb::ComparisonFilter {
            op: 1,
            value: Some(core_pb::RuntimeUInt32 {
                default_value: 30,
                runtime_key: "k".into(),
            }),
        }),
    });
    let f = filter(with(F::AndFilter(accesslog_pb::AndFilter {
        filters: vec![
            accesslog_pb::AccessLogFilter {
                filter_specifier: Some(code.clone()),
            },
            accesslog_pb::AccessLogFilter {
                filter_specifier: Some(sampled),
            },
        ],
    })))
    .unwrap();
    assert_eq!(
        f.and.unwrap()[0].status_code,
        Some(config::Comparison {
            op: config::ComparisonOp::Ge,
            value: 30
        })
    );
    // Header filters: inversion kept, suffix as a regex; gRPC status filters by name.
    use route_pb::header_matcher::HeaderMatchSpecifier as H;
    let header = |m: H, invert: bool| {
        F::HeaderFilter(accesslog_pb::HeaderFilter {
            header: Some(route_pb::HeaderMatcher {
                name: "X-User".into(),
                header_match_specifier: Some(m),
                invert_match: invert,
                ..Default::default()
            }),
        })
    };
    let h = filter(with(header(H::SuffixMatch("-1".into()), true)))
        .unwrap()
        .header
        .unwrap();
    assert_eq!(
        h,
        config::AccessLogHeaderFilter {
            name: "x-user".into(),
            regex: Some(".*\\-1".into()),
            invert: true,
            ..Default::default()
        }
    );
    let g = filter(with(F::GrpcStatusFilter(accesslog_pb::GrpcStatusFilter {
        statuses: vec![0, 14],
        exclude: true,
    })))
    .unwrap()
    .grpc_status
    .unwrap();
    assert_eq!(g.statuses, ["OK", "UNAVAILABLE"]);
    assert!(g.exclude);
    let e = err_text(with(F::GrpcStatusFilter(accesslog_pb::GrpcStatusFilter {
        statuses: vec![17],
        exclude: false,
    })));
    assert!(e.contains("grpc_status_filter.statuses[0]"), "{e}");
    // A header filter ringside cannot take (a range) inside an or: the whole filter is dropped
    // (every call logged).
    let unsupported = F::OrFilter(accesslog_pb::OrFilter {
        filters: vec![
            accesslog_pb::AccessLogFilter {
                filter_specifier: Some(code),
            },
            accesslog_pb::AccessLogFilter {
                filter_specifier: Some(header(
                    H::RangeMatch(Int64Range { start: 1, end: 2 }),
                    false,
                )),
            },
        ],
    });
    assert_eq!(filter(with(unsupported)), None);
    let e = err_text(with(F::ResponseFlagFilter(
        accesslog_pb::ResponseFlagFilter {
            flags: vec!["UH".into(), "XX".into()],
        },
    )));
    assert!(e.contains("response_flag_filter.flags[1]"), "{e}");
    let e = err_text(with(F::DurationFilter(accesslog_pb::DurationFilter {
        comparison: None,
    })));
    assert!(e.contains("duration_filter.comparison"), "{e}");
}

/// A route's `request_mirror_policies` (every request unless `runtime_fraction` says a share),
/// the virtual host's for routes without their own, and what is refused.
#[test]
fn request_mirror_policies_from_rds() {
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    let mirror =
        |cluster: &str, percent: Option<u32>| route_pb::route_action::RequestMirrorPolicy {
            cluster: cluster.into(),
            runtime_fraction: percent.map(|n| core_pb::RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: n,
                    denominator: 1, // TEN_THOUSAND
                }),
                runtime_key: "k".into(),
            }),
            ..Default::default()
        };
    let mut own = route_to("/a", "c");
    if let Some(route_pb::route::Action::Route(a)) = own.action.as_mut() {
        a.request_mirror_policies = vec![
            mirror("s1", None),
            mirror("s2", Some(2500)),
            mirror("s3", Some(0)),
        ];
    }
    let mut rc = route_config_pb("rc", &["*"], vec![own, route_to("/", "c")]);
    rc.virtual_hosts[0].request_mirror_policies = vec![mirror("s4", Some(10))];
    let (_, t) = decode_route(&pack_any(rc.clone())).unwrap();
    let routes = &t.virtual_hosts[0].routes;
    let policy = |c: &str, per_million: u32| config::MirrorPolicy {
        cluster: c.into(),
        percentage: config::Share(per_million),
    };
    assert_eq!(
        routes[0].route.request_mirror_policies,
        [policy("s1", 1_000_000), policy("s2", 250_000)],
        "a route's own replace the virtual host's; 0 % is none"
    );
    assert_eq!(
        routes[1].route.request_mirror_policies,
        [policy("s4", 1_000)]
    );
    let mut bad = rc.clone();
    bad.virtual_hosts[0].request_mirror_policies[0].cluster_header = "x-shadow".into();
    let e = decode_route(&pack_any(bad)).unwrap_err().to_string();
    assert!(
        e.contains("request_mirror_policies[0].cluster_header"),
        "{e}"
    );
    let mut bad = rc;
    bad.request_mirror_policies = vec![mirror("s1", None)];
    let e = decode_route(&pack_any(bad)).unwrap_err().to_string();
    assert!(e.contains("request_mirror_policies"), "{e}");
}

/// Envoy's priority load (LoadBalancerBase::recalculatePerPriorityState): health per level
/// `min(100, 140 × healthy / all)`, given out in order, scaled up when it sums under 100, the
/// rounding's remainder to the first level with health.
#[test]
fn priority_load_is_envoys() {
    use super::priority_load;
    assert_eq!(priority_load(&[(4, 4), (2, 2)], 140), [100, 0]);
    assert_eq!(priority_load(&[(3, 4), (2, 2)], 140), [100, 0]); // 105 % capped
    assert_eq!(priority_load(&[(2, 4), (2, 2)], 140), [70, 30]);
    assert_eq!(priority_load(&[(1, 4), (2, 2)], 140), [35, 65]);
    assert_eq!(priority_load(&[(0, 4), (2, 2)], 140), [0, 100]);
    assert_eq!(priority_load(&[(2, 4), (2, 2)], 100), [50, 50]);
    // Health under 100 in total: scaled up (35 + 17 = 52: 67 % and 32 %, 1 left to the first).
    assert_eq!(priority_load(&[(1, 4), (1, 8)], 140), [68, 32]);
    // Three levels, the middle one empty of healthy endpoints.
    assert_eq!(priority_load(&[(1, 4), (0, 3), (1, 2)], 140), [35, 0, 65]);
    assert_eq!(priority_load(&[(0, 4)], 140), [0]);
}

/// Envoy's locality-weighted balancing: each priority's load shared among its localities by
/// `weight × min(1, 1.4 × healthy / all)`.
#[test]
fn locality_load_is_envoys() {
    use super::{locality_load, priority_load, LocalityHosts};
    let at = |priority, healthy, all, weight| LocalityHosts {
        priority,
        healthy,
        all,
        weight,
    };
    let run = |ls: &[LocalityHosts]| {
        let mut counts: std::collections::BTreeMap<u32, (u32, u32)> = Default::default();
        for l in ls {
            let c = counts.entry(l.priority).or_default();
            c.0 += l.healthy;
            c.1 += l.all;
        }
        let counts: Vec<(u32, u32)> = counts.into_values().collect();
        locality_load(ls, &counts, &priority_load(&counts, 140), 140)
    };
    // Weights 1 and 3: 25 / 75 whatever the endpoint counts; priority 1 takes nothing.
    let (a, b, c) = (at(0, 2, 2, 1), at(0, 2, 2, 3), at(1, 1, 1, 1));
    assert_eq!(run(&[a, b, c]), [25, 75, 0]);
    // Half of b healthy: its effective weight 3 × 0.7 = 2.1; 1 / 3.1 = 32.3 %.
    let b_half = at(0, 1, 2, 3);
    assert_eq!(run(&[a, b_half, c]), [32, 68, 0]);
    // None of b healthy: priority 0 is 2 of 4 healthy (70 %), all of it a's; c takes 30.
    assert_eq!(run(&[a, at(0, 0, 2, 3), c]), [70, 30]);
    // No weights at all in a priority: by healthy endpoints (Envoy balances over its hosts).
    assert_eq!(run(&[at(0, 1, 1, 0), at(0, 3, 3, 0)]), [25, 75]);
    // A locality without weight beside weighted ones takes nothing.
    assert_eq!(run(&[at(0, 1, 1, 0), at(0, 3, 3, 2)]), [0, 100]);
    // Thirds: rounded on the cumulative sums (33, 67, 100).
    assert_eq!(
        run(&[at(0, 1, 1, 1), at(0, 1, 1, 1), at(0, 1, 1, 1)]),
        [33, 34, 33]
    );
}

/// Aeraki's inbound dubbo_proxy for a Dubbo service with DubboAuthorizationPolicies
/// (`internal/plugin/dubbo/authz`: a DENY filter, then an ALLOW filter, then the router; the
/// interfaces and methods as `metadata` matchers on `envoy.filters.dubbo.rbac`'s `service` and
/// `method`, namespaces as `.*/ns/NS/.*` principals), in the TypedStruct Aeraki sends and as a
/// DubboProxy message: the listener's `dubbo.rbac`, in order.
#[test]
fn aeraki_dubbo_rbac_filters_become_the_listeners_dubbo_rbac() {
    use config::{Permission, Principal, RbacAction};
    let meta = |key: &str, m: serde_json::Value| {
        serde_json::json!({"metadata": {"filter": "envoy.filters.dubbo.rbac",
            "path": [{"key": key}], "value": {"stringMatch": m}}})
    };
    let deny = serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "statPrefix": "dubbo.",
        "rules": {"action": "DENY", "policies": {"ns[default]-policy[Deny-Add]-rule[0]": {
            "permissions": [{"andRules": {"rules": [
                {"orRules": {"rules": [meta("method", serde_json::json!({"exact": "add"}))]}},
                {"notRule": {"orRules": {"rules": [meta("service", serde_json::json!({"suffix": "Admin"}))]}}}
            ]}}],
            "principals": [{"andIds": {"ids": [{"orIds": {"ids": [{"authenticated": {
                "principalName": {"safeRegex": {"googleRe2": {}, "regex": ".*/ns/evil/.*"}}}}]}}]}}]
        }}}
    });
    let allow = serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "statPrefix": "dubbo.",
        "rules": {"policies": {"ns[default]-policy[allow]-rule[0]": {
            "permissions": [{"andRules": {"rules": [{"orRules": {"rules": [
                meta("service", serde_json::json!({"safeRegex": {"googleRe2": {}, "regex": ".+"}}))]}}]}}],
            "principals": [{"andIds": {"ids": [{"any": true}]}}]
        }}}
    });
    let value = |filters: serde_json::Value| {
        serde_json::json!({
            "statPrefix": "inbound|20880||", "protocolType": "Dubbo", "serializationType": "Hessian2",
            "routeConfig": [{"name": "inbound|20880||", "interface": "*", "routes": [{
                "match": {"method": {"name": {"safeRegex": {"googleRe2": {}, "regex": ".*"}}}},
                "route": {"cluster": "inbound|20880||"}}]}],
            "dubboFilters": filters
        })
    };
    let typed = |v: serde_json::Value| {
        let Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(st)) =
            crate::client::json(&v).kind
        else {
            unreachable!()
        };
        crate::testing::listener(
            "in",
            20880,
            any_of(
                UDPA_TYPED_STRUCT,
                TypedStructFull {
                    type_url: DUBBO_PROXY_TYPE.into(),
                    value: Some(st),
                }
                .encode_to_vec(),
            ),
        )
    };
    let router = serde_json::json!({"name": "envoy.filters.dubbo.router"});
    let filters = serde_json::json!([
        {"name": "envoy.filters.dubbo.rbac", "config": deny},
        {"name": "envoy.filters.dubbo.rbac", "config": allow},
        router
    ]);
    let (_, res) = decode_listener(&typed(value(filters))).unwrap();
    let d = res.listener.dubbo.unwrap();
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.rbac.len(), 2);
    assert!(d.rbac.iter().all(|r| r.stat_prefix == "dubbo."));
    let deny = d.rbac[0].rules.as_ref().unwrap();
    assert_eq!(deny.action, RbacAction::Deny);
    assert_eq!(
        deny.policies[0].name,
        "ns[default]-policy[Deny-Add]-rule[0]"
    );
    let m = |e: &str| config::StringMatch {
        exact: Some(e.into()),
        ..Default::default()
    };
    let re = |r: &str| config::StringMatch {
        regex: Some(r.into()),
        ..Default::default()
    };
    assert_eq!(
        deny.policies[0].permissions,
        [Permission::AndRules(vec![
            Permission::OrRules(vec![Permission::DubboMethod(m("add"))]),
            Permission::NotRule(Box::new(Permission::OrRules(vec![
                Permission::DubboInterface(re(".*Admin"))
            ])))
        ])]
    );
    assert_eq!(
        deny.policies[0].principals,
        [Principal::AndIds(vec![Principal::OrIds(vec![
            Principal::Authenticated {
                principal_name: Some(re(".*/ns/evil/.*"))
            }
        ])])]
    );
    let allow = d.rbac[1].rules.as_ref().unwrap();
    assert_eq!(allow.action, RbacAction::Allow);
    assert_eq!(
        allow.policies[0].permissions,
        [Permission::AndRules(vec![Permission::OrRules(vec![
            Permission::DubboInterface(re(".+"))
        ])])]
    );

    // As a DubboProxy message (the filter's config an Any); `invert` is a `not_rule`.
    let mut pb = dubbo_proxy_pb();
    pb.dubbo_filters = vec![
        dubbo_pb::DubboFilter {
            name: "envoy.filters.dubbo.rbac".into(),
            config: Some(pack_any(
                envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac {
                    stat_prefix: "dubbo.".into(),
                    rules: Some(envoy_types::pb::envoy::config::rbac::v3::Rbac {
                        action: 1,
                        policies: [(
                            "p".to_string(),
                            envoy_types::pb::envoy::config::rbac::v3::Policy {
                                permissions: vec![envoy_types::pb::envoy::config::rbac::v3::Permission {
                                    rule: Some(envoy_types::pb::envoy::config::rbac::v3::permission::Rule::Metadata(
                                        matcher_pb::MetadataMatcher {
                                            filter: "envoy.filters.dubbo.rbac".into(),
                                            path: vec![matcher_pb::metadata_matcher::PathSegment {
                                                segment: Some(matcher_pb::metadata_matcher::path_segment::Segment::Key("method".into())),
                                            }],
                                            value: Some(matcher_pb::ValueMatcher {
                                                match_pattern: Some(matcher_pb::value_matcher::MatchPattern::StringMatch(sm_exact("add"))),
                                            }),
                                            invert: true,
                                        },
                                    )),
                                }],
                                principals: vec![envoy_types::pb::envoy::config::rbac::v3::Principal {
                                    identifier: Some(envoy_types::pb::envoy::config::rbac::v3::principal::Identifier::Any(true)),
                                }],
                                ..Default::default()
                            },
                        )]
                        .into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
        },
        dubbo_pb::DubboFilter {
            name: "envoy.filters.dubbo.router".into(),
            config: None,
        },
    ];
    let (_, res) =
        decode_listener(&crate::testing::listener("in", 1, pack_any(pb.clone()))).unwrap();
    let r = &res.listener.dubbo.unwrap().rbac;
    assert_eq!(
        r[0].rules.as_ref().unwrap().policies[0].permissions,
        [Permission::NotRule(Box::new(Permission::DubboMethod(m(
            "add"
        ))))]
    );

    // NACKs naming the field: an rbac filter after the router (Envoy never runs it), metadata
    // of another filter or key, another config type, a filter without the router.
    let cases = [
        (
            serde_json::json!([router, {"name": "envoy.filters.dubbo.rbac", "config": deny_json()}]),
            "dubbo_filters[1].name",
        ),
        (
            serde_json::json!([{"name": "envoy.filters.dubbo.rbac", "config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "rules": {"policies": {"p": {"permissions": [meta("group", serde_json::json!({"exact": "g"}))],
                "principals": [{"any": true}]}}}}}, router]),
            "metadata.path",
        ),
        (
            serde_json::json!([{"name": "envoy.filters.dubbo.rbac", "config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "rules": {"policies": {"p": {"permissions": [{"metadata": {"filter": "istio_authn",
                "path": [{"key": "method"}], "value": {"stringMatch": {"exact": "x"}}}}],
                "principals": [{"any": true}]}}}}}, router]),
            "metadata.filter",
        ),
        (
            serde_json::json!([{"name": "envoy.filters.dubbo.rbac", "config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"}}, router]),
            "config.@type",
        ),
        (
            serde_json::json!([{"name": "envoy.filters.dubbo.rbac", "config": deny_json()}]),
            "dubbo_filters",
        ),
    ];
    for (filters, field) in cases {
        let e = err_text(decode_listener(&typed(value(filters.clone()))));
        assert!(e.contains(field), "{filters}: {e}");
    }
}

fn deny_json() -> serde_json::Value {
    serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "statPrefix": "dubbo.",
        "rules": {"action": "DENY", "policies": {"p": {
            "permissions": [{"metadata": {"filter": "envoy.filters.dubbo.rbac",
                "path": [{"key": "method"}], "value": {"stringMatch": {"exact": "add"}}}}],
            "principals": [{"any": true}]}}}
    })
}

#[test]
fn istio_alpn_filter_gives_the_listener_its_alpn_override() {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
    let base: hcm_pb::HttpConnectionManager =
        hcm_pb::HttpConnectionManager::decode(hcm_rds("r").value.as_slice()).unwrap();
    let with = |f: Any| {
        let mut h = base.clone();
        h.http_filters.insert(0, http_filter("istio.alpn", f));
        decode_listener(&crate::testing::listener("t", 1, pack_any(h)))
    };
    // istiod's filter (HTTP10 is the enum's zero: no upstream_protocol on the wire).
    let entry = |p: i32, l: &[&str]| AlpnOverridePb {
        upstream_protocol: p,
        alpn_override: l.iter().map(|s| s.to_string()).collect(),
    };
    let istiod = AlpnFilterConfig {
        alpn_override: vec![
            entry(0, &["istio-http/1.0", "istio", "http/1.0"]),
            entry(1, &["istio-http/1.1", "istio", "http/1.1"]),
            entry(2, &["istio-h2", "istio", "h2"]),
        ],
    };
    let (_, res) = with(any_of(ISTIO_ALPN, istiod.encode_to_vec())).unwrap();
    let o = res.listener.triple.unwrap().alpn_override.unwrap();
    assert_eq!(o.http10, ["istio-http/1.0", "istio", "http/1.0"]);
    assert_eq!(o.http11, ["istio-http/1.1", "istio", "http/1.1"]);
    assert_eq!(o.http2, ["istio-h2", "istio", "h2"]);
    // The same as a TypedStruct (JSON).
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    let obj = |p: Option<&str>, l: &[&str]| {
        let mut fields: std::collections::HashMap<String, Value> = [(
            "alpn_override".to_string(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: l.iter().map(|v| s(v)).collect(),
                })),
            },
        )]
        .into();
        if let Some(p) = p {
            fields.insert("upstream_protocol".into(), s(p));
        }
        Value {
            kind: Some(Kind::StructValue(Struct { fields })),
        }
    };
    let ts = TypedStructFull {
        type_url: ISTIO_ALPN.into(),
        value: Some(Struct {
            fields: [(
                "alpn_override".to_string(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: vec![obj(Some("HTTP2"), &["istio-h2", "istio"])],
                    })),
                },
            )]
            .into(),
        }),
    };
    let (_, res) = with(any_of(UDPA_TYPED_STRUCT, ts.encode_to_vec())).unwrap();
    let o = res.listener.triple.unwrap().alpn_override.unwrap();
    assert_eq!(o.http2, ["istio-h2", "istio"]);
    assert!(o.http11.is_empty() && o.http10.is_empty());
    let e = err_text(with(any_of(
        ISTIO_ALPN,
        AlpnFilterConfig {
            alpn_override: vec![entry(7, &["x"])],
        }
        .encode_to_vec(),
    )));
    assert!(e.contains("upstream_protocol 7"), "{e}");
    // Without the filter: none.
    let (_, res) =
        decode_listener(&crate::testing::listener("t", 1, pack_any(base.clone()))).unwrap();
    assert!(res.listener.triple.unwrap().alpn_override.is_none());

    // A cluster istiod marks `istio.alpn_override: "false"` keeps its ALPN.
    let mut k = cluster_static_pb("c", &[("10.0.0.1", 80)]);
    let (_, c) = decode_cluster(&pack_any(k.clone())).unwrap();
    assert!(!c.cluster.keep_alpn);
    k.metadata = Some(Metadata {
        filter_metadata: [(
            "istio".to_string(),
            Struct {
                fields: [("alpn_override".to_string(), s("false"))].into(),
            },
        )]
        .into(),
        ..Default::default()
    });
    let (_, c) = decode_cluster(&pack_any(k)).unwrap();
    assert!(c.cluster.keep_alpn);
}

/// A route's `typed_per_filter_config` for fault, jwt_authn, ext_authz or rbac is refused,
/// named by the filter or by its per-route type URL; another filter's passes.
#[test]
fn per_route_configs_that_change_a_filter_nack() {
    let ctx = Ctx {
        kind: "route configuration",
        name: "r",
    };
    let check = |name: &str, type_url: &str| {
        let m = std::collections::HashMap::from([(
            name.to_string(),
            Any {
                type_url: type_url.into(),
                value: vec![],
            },
        )]);
        no_fault_override(&m, &ctx, "virtual_hosts[0].routes[0]").map_err(|e| e.to_string())
    };
    let tpe = "type.googleapis.com/envoy.extensions.filters.http";
    for (name, url, what) in [
        ("envoy.filters.http.jwt_authn", "x", "per-route jwt_authn"),
        (
            "j",
            &format!("{tpe}.jwt_authn.v3.PerRouteConfig"),
            "per-route jwt_authn",
        ),
        ("envoy.filters.http.ext_authz", "x", "per-route ext_authz"),
        (
            "e",
            &format!("{tpe}.ext_authz.v3.ExtAuthzPerRoute"),
            "per-route ext_authz",
        ),
        ("envoy.filters.http.rbac", "x", "per-route rbac"),
        (
            "r",
            &format!("{tpe}.rbac.v3.RBACPerRoute"),
            "per-route rbac",
        ),
        ("envoy.filters.http.fault", "x", "fault injection"),
    ] {
        let e = check(name, url).expect_err(name);
        assert!(
            e.contains(what) && e.contains(&format!("typed_per_filter_config[{name:?}]")),
            "{name}: {e}"
        );
    }
    assert_eq!(check("envoy.filters.http.cors", "x"), Ok(()));
}
