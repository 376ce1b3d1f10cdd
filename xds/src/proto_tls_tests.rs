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
    // istio-peer-exchange is never offered: ringside does not speak the exchange.
    assert_eq!(t.alpn, vec!["h2".to_string(), "http/1.1".to_string()]);
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
