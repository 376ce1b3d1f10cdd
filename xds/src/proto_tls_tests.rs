use super::*;
use envoy_types::util::pack_any;

fn ctx() -> Ctx<'static> {
    Ctx {
        kind: "listener",
        name: "l",
    }
}

fn sds_secret(name: &str) -> tls_pb::SdsSecretConfig {
    use core_pb::config_source::ConfigSourceSpecifier as C;
    tls_pb::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(core_pb::ConfigSource {
            config_source_specifier: Some(C::ApiConfigSource(core_pb::ApiConfigSource {
                api_type: core_pb::api_config_source::ApiType::Grpc as i32,
                grpc_services: vec![core_pb::GrpcService {
                    target_specifier: Some(core_pb::grpc_service::TargetSpecifier::EnvoyGrpc(
                        core_pb::grpc_service::EnvoyGrpc {
                            cluster_name: "sds-grpc".into(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }),
    }
}

fn matcher(p: matcher_pb::string_matcher::MatchPattern) -> matcher_pb::StringMatcher {
    matcher_pb::StringMatcher {
        match_pattern: Some(p),
        ignore_case: false,
    }
}

/// istiod's inbound `common_tls_context`: SDS `default` and `ROOTCA`, SAN prefix.
fn istio_common(alpn: &[&str]) -> tls_pb::CommonTlsContext {
    use matcher_pb::string_matcher::MatchPattern as P;
    use tls_pb::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
    tls_pb::CommonTlsContext {
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        tls_certificate_sds_secret_configs: vec![sds_secret("default")],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(tls_pb::CertificateValidationContext {
                    match_subject_alt_names: vec![matcher(P::Prefix(
                        "spiffe://cluster.local/".into(),
                    ))],
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds_secret("ROOTCA")),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn downstream_any(c: tls_pb::CommonTlsContext) -> Any {
    pack_any(tls_pb::DownstreamTlsContext {
        common_tls_context: Some(c),
        require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue {
            value: true,
        }),
        ..Default::default()
    })
}

#[test]
fn istio_inbound_context_takes_its_certificates_from_sds() {
    let t = downstream(
        &downstream_any(istio_common(&["istio-peer-exchange", "h2", "http/1.1"])),
        &ctx(),
        "transport_socket",
    )
    .unwrap();
    let sds = |n: &str| {
        Some(SdsSecret {
            name: n.into(),
            server: Some("sds-grpc".into()),
        })
    };
    assert_eq!(t.certificate_sds, sds("default"));
    assert_eq!(t.ca_sds, sds("ROOTCA"));
    assert!(t.cert_chain.is_empty() && t.ca.is_none());
    assert!(t.require_client_certificate);
    assert_eq!(
        t.subject_alt_names,
        vec![SanMatcher::Prefix {
            prefix: "spiffe://cluster.local/".into()
        }]
    );
    // The context keeps istio-peer-exchange; the chain drops it unless it has
    // istio.metadata_exchange (proto.rs; tls_xds.rs checks both).
    assert_eq!(t.alpn, ["istio-peer-exchange", "h2", "http/1.1"]);
    assert!(
        t.session_tickets,
        "tickets unless the context disables them"
    );
    // disable_stateless_session_resumption: no tickets.
    let off = pack_any(tls_pb::DownstreamTlsContext {
        common_tls_context: Some(istio_common(&["istio"])),
        session_ticket_keys_type: Some(
            tls_pb::downstream_tls_context::SessionTicketKeysType::DisableStatelessSessionResumption(true),
        ),
        ..Default::default()
    });
    let t = downstream(&off, &ctx(), "transport_socket").unwrap();
    assert!(!t.session_tickets);
}

#[test]
fn upstream_context_with_files_typed_sans_sni_and_versions() {
    use core_pb::data_source::Specifier as S;
    use matcher_pb::string_matcher::MatchPattern as P;
    use tls_pb::common_tls_context::ValidationContextType;
    let file = |f: &str| {
        Some(core_pb::DataSource {
            specifier: Some(S::Filename(f.into())),
            ..Default::default()
        })
    };
    let c = tls_pb::CommonTlsContext {
        tls_params: Some(tls_pb::TlsParameters {
            tls_minimum_protocol_version: tls_pb::tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificates: vec![tls_pb::TlsCertificate {
            certificate_chain: file("/c.pem"),
            private_key: file("/c.key"),
            ..Default::default()
        }],
        validation_context_type: Some(ValidationContextType::ValidationContext(
            tls_pb::CertificateValidationContext {
                trusted_ca: file("/ca.pem"),
                match_typed_subject_alt_names: vec![tls_pb::SubjectAltNameMatcher {
                    san_type: tls_pb::subject_alt_name_matcher::SanType::Uri as i32,
                    matcher: Some(matcher(P::Exact("spiffe://td/ns/a/sa/b".into()))),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let any = pack_any(tls_pb::UpstreamTlsContext {
        common_tls_context: Some(c.clone()),
        sni: "outbound_.80_._.b.a.svc.cluster.local".into(),
        ..Default::default()
    });
    let t = upstream(&any, &ctx(), "transport_socket").unwrap();
    assert_eq!(t.cert_chain.as_deref(), Some("/c.pem"));
    assert_eq!(t.private_key.as_deref(), Some("/c.key"));
    assert_eq!(t.ca, "/ca.pem");
    assert_eq!(
        t.sni.as_deref(),
        Some("outbound_.80_._.b.a.svc.cluster.local")
    );
    assert_eq!(
        t.subject_alt_names,
        vec![SanMatcher::Exact("spiffe://td/ns/a/sa/b".into())]
    );
    assert_eq!(t.params.min_version, Some(TlsVersion::Tls13));

    // What ringside cannot honour is NACKed, naming the field.
    let nack = |c: tls_pb::CommonTlsContext| {
        let any = pack_any(tls_pb::UpstreamTlsContext {
            common_tls_context: Some(c),
            ..Default::default()
        });
        upstream(&any, &ctx(), "transport_socket")
            .err()
            .expect("a NACK")
            .to_string()
    };
    let mut inline = c.clone();
    inline.tls_certificates[0].private_key = Some(core_pb::DataSource {
        specifier: Some(S::InlineString("-----BEGIN".into())),
        ..Default::default()
    });
    let e = nack(inline);
    assert!(
        e.contains("tls_certificates[0].private_key") && e.contains("inline"),
        "{e}"
    );
    let mut unverified = c.clone();
    unverified.validation_context_type = None;
    let e = nack(unverified);
    assert!(
        e.contains("validation_context") && e.contains("verifies"),
        "{e}"
    );
    let mut dns = c.clone();
    if let Some(ValidationContextType::ValidationContext(v)) = &mut dns.validation_context_type {
        v.match_typed_subject_alt_names[0].san_type =
            tls_pb::subject_alt_name_matcher::SanType::Dns as i32;
    }
    let e = nack(dns);
    assert!(
        e.contains("match_typed_subject_alt_names[0].san_type"),
        "{e}"
    );
    let mut old = c;
    old.tls_params = Some(tls_pb::TlsParameters {
        tls_maximum_protocol_version: tls_pb::tls_parameters::TlsProtocol::TlSv11 as i32,
        ..Default::default()
    });
    let e = nack(old);
    assert!(e.contains("tls_params.tls_maximum_protocol_version"), "{e}");
}

#[test]
fn secrets_of_both_kinds_decode_and_others_are_refused() {
    use core_pb::data_source::Specifier as S;
    let inline = |s: &str| {
        Some(core_pb::DataSource {
            specifier: Some(S::InlineString(s.into())),
            ..Default::default()
        })
    };
    let cert = pack_any(tls_pb::Secret {
        name: "default".into(),
        r#type: Some(tls_pb::secret::Type::TlsCertificate(
            tls_pb::TlsCertificate {
                certificate_chain: inline("CHAIN"),
                private_key: inline("KEY"),
                ..Default::default()
            },
        )),
    });
    let (name, s) = decode_secret(&cert).unwrap();
    assert_eq!(name, "default");
    assert_eq!(s.cert_chain.as_deref(), Some(&b"CHAIN"[..]));
    assert_eq!(s.private_key.as_deref(), Some(&b"KEY"[..]));
    let ca = pack_any(tls_pb::Secret {
        name: "ROOTCA".into(),
        r#type: Some(tls_pb::secret::Type::ValidationContext(
            tls_pb::CertificateValidationContext {
                trusted_ca: inline("CA"),
                ..Default::default()
            },
        )),
    });
    assert_eq!(
        decode_secret(&ca).unwrap().1.trusted_ca.as_deref(),
        Some(&b"CA"[..])
    );
    let keys = pack_any(tls_pb::Secret {
        name: "tickets".into(),
        r#type: Some(tls_pb::secret::Type::SessionTicketKeys(Default::default())),
    });
    let e = decode_secret(&keys).err().unwrap().to_string();
    assert!(
        e.contains("tickets") && e.contains("tls_certificate"),
        "{e}"
    );
}

/// istiod's auto-mTLS cluster (`cluster_tls.go`): `tlsMode-istio` → ISTIO_MUTUAL over SDS,
/// `tlsMode-disabled` `{}` → raw_buffer; endpoints chosen by `envoy.transport_socket_match`.
#[test]
fn transport_socket_matches_and_endpoint_labels_as_istiod_sends_them() {
    use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let labels = |kv: &[(&str, Kind)]| Struct {
        fields: kv
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(v.clone()),
                    },
                )
            })
            .collect(),
    };
    let istio = || labels(&[("tlsMode", Kind::StringValue("istio".into()))]);
    let tls = core_pb::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(
            pack_any(tls_pb::UpstreamTlsContext {
                common_tls_context: Some(istio_common(&["istio-peer-exchange", "istio"])),
                sni: "outbound_.20880_._.p.default.svc.cluster.local".into(),
                ..Default::default()
            }),
        )),
    };
    let raw = core_pb::TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: None,
    };
    let mut pb =
        crate::testing::cluster_static_pb("c", &[("10.0.0.1", 20880), ("10.0.0.2", 20880)]);
    pb.transport_socket_matches = vec![
        cluster_pb::cluster::TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(istio()),
            transport_socket: Some(tls),
        },
        cluster_pb::cluster::TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(raw),
        },
    ];
    let eps = &mut pb.load_assignment.as_mut().unwrap().endpoints[0].lb_endpoints;
    eps[0].metadata = Some(core_pb::Metadata {
        filter_metadata: [("envoy.transport_socket_match".to_string(), istio())].into(),
        ..Default::default()
    });
    let c = super::super::cluster(&pb).unwrap().cluster;
    assert_eq!(c.tls, None);
    assert_eq!(c.transport_socket_matches.len(), 2);
    let m = &c.transport_socket_matches[0];
    assert_eq!(m.name, "tlsMode-istio");
    assert_eq!(m.labels.get("tlsMode").map(String::as_str), Some("istio"));
    let t = m.tls.as_ref().unwrap();
    assert_eq!(t.certificate_sds.as_ref().unwrap().name, "default");
    assert_eq!(t.ca_sds.as_ref().unwrap().name, "ROOTCA");
    assert_eq!(c.transport_socket_matches[1].tls, None);
    assert!(c.transport_socket_matches[1].labels.is_empty());
    // The labelled endpoint gets the TLS socket, the other one the catch-all plaintext.
    assert_eq!((c.transport_socket(0), c.transport_socket(1)), (1, 2));
    // The secrets of a match are asked for like the cluster's own.
    let cfg = config::Config {
        clusters: vec![c.clone()],
        ..Default::default()
    };
    let named: Vec<String> = cfg
        .sds_secrets()
        .map(|(at, s)| format!("{at}={}", s.name))
        .collect();
    assert_eq!(
        named,
        [
            "clusters[0].transport_socket_matches[0].tls.certificate_sds=default",
            "clusters[0].transport_socket_matches[0].tls.ca_sds=ROOTCA"
        ]
    );

    // Only string labels, on the match and on endpoints; locality metadata: NACK.
    let mut bad = pb.clone();
    bad.transport_socket_matches[0].r#match = Some(labels(&[("tlsMode", Kind::BoolValue(true))]));
    let e = super::super::cluster(&bad).err().unwrap().to_string();
    assert!(
        e.contains("transport_socket_matches[0].match.tlsMode"),
        "{e}"
    );
    let mut bad = pb.clone();
    bad.load_assignment.as_mut().unwrap().endpoints[0].lb_endpoints[1].metadata =
        Some(core_pb::Metadata {
            filter_metadata: [(
                "envoy.transport_socket_match".to_string(),
                labels(&[("tlsMode", Kind::NumberValue(1.0))]),
            )]
            .into(),
            ..Default::default()
        });
    let e = super::super::cluster(&bad).err().unwrap().to_string();
    assert!(
        e.contains(
            "lb_endpoints[1].metadata.filter_metadata[\"envoy.transport_socket_match\"].tlsMode"
        ),
        "{e}"
    );
    let mut bad = pb.clone();
    bad.load_assignment.as_mut().unwrap().endpoints[0].metadata = Some(core_pb::Metadata {
        filter_metadata: [("envoy.transport_socket_match".to_string(), istio())].into(),
        ..Default::default()
    });
    let e = super::super::cluster(&bad).err().unwrap().to_string();
    assert!(
        e.contains("endpoints[0].metadata") && e.contains("locality"),
        "{e}"
    );
    // A transport socket other than tls or raw_buffer (istiod's HBONE internal_upstream): NACK.
    let mut bad = pb;
    bad.transport_socket_matches[1].transport_socket = Some(core_pb::TransportSocket {
        name: "envoy.transport_sockets.internal_upstream".into(),
        config_type: None,
    });
    let e = super::super::cluster(&bad).err().unwrap().to_string();
    assert!(
        e.contains("transport_socket_matches[1].transport_socket"),
        "{e}"
    );
}
