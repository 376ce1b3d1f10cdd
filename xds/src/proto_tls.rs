//! `envoy.transport_sockets.tls` into a listener's or cluster's `tls` (docs/xds.md, "TLS"):
//! `DownstreamTlsContext`, `UpstreamTlsContext` and the `CommonTlsContext` they share, with
//! certificates from files or SDS (`tls_certificate_sds_secret_configs`,
//! `validation_context_sds_secret_config`, Istio's `combined_validation_context`), and SDS
//! `Secret` resources. Part of the `proto` module (its `Ctx` and `unpack`).

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::google::protobuf::Any;

use config::{ClusterTls, ListenerTls, SanMatcher, SdsSecret, TlsParams, TlsVersion};

use super::{unpack, Ctx};
use crate::sds::Secret as SecretPem;
use crate::TranslateError;

pub(crate) const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const RAW_BUFFER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
const DOWNSTREAM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// A transport socket's TLS context (`None`: raw_buffer, plaintext). `at` names the
/// `transport_socket` field.
pub(super) fn tls_context<'a>(
    ts: &'a core_pb::TransportSocket,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<&'a Any>, TranslateError> {
    use core_pb::transport_socket::ConfigType;
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(a)) => Some(a),
        None => None,
    };
    match any {
        Some(a) if a.type_url == DOWNSTREAM_TYPE || a.type_url == UPSTREAM_TYPE => Ok(Some(a)),
        Some(a) if a.type_url == RAW_BUFFER_TYPE => Ok(None),
        None if ts.name == super::RAW_BUFFER_SOCKET => Ok(None),
        None if ts.name == TLS_SOCKET => Err(ctx.err(
            format!("{at}.typed_config"),
            "a tls transport socket needs its TLS context",
        )),
        _ => Err(ctx.err(
            format!("{at}.typed_config"),
            format!(
                "transport socket {:?} ({}): only raw_buffer and tls (DownstreamTlsContext, UpstreamTlsContext)",
                ts.name,
                any.map_or("no typed_config", |a| a.type_url.as_str())
            ),
        )),
    }
}

/// A `DownstreamTlsContext` (a listener's filter chain): STRICT TLS termination.
pub(super) fn downstream(
    any: &Any,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<ListenerTls, TranslateError> {
    let at = format!("{at}.typed_config");
    let d: tls_pb::DownstreamTlsContext = unpack(any, DOWNSTREAM_TYPE, ctx, &at)?;
    if d.require_sni.as_ref().is_some_and(|b| b.value) {
        return Err(ctx.err(format!("{at}.require_sni"), "not supported"));
    }
    let c = common(
        d.common_tls_context.as_ref(),
        ctx,
        &format!("{at}.common_tls_context"),
    )?;
    let (cert_chain, private_key) = c.files.unwrap_or_default();
    if cert_chain.is_empty() && c.certificate_sds.is_none() {
        return Err(ctx.err(
            format!("{at}.common_tls_context.tls_certificates"),
            "a listener needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)",
        ));
    }
    Ok(ListenerTls {
        mode: config::TlsMode::Strict,
        cert_chain,
        private_key,
        certificate_sds: c.certificate_sds,
        ca: c.ca,
        ca_sds: c.ca_sds,
        // Envoy's default: a client certificate is verified when sent, not required.
        require_client_certificate: d
            .require_client_certificate
            .as_ref()
            .is_some_and(|b| b.value),
        subject_alt_names: c.sans,
        alpn: c.alpn,
        params: c.params,
        // Envoy's `disable_stateless_session_resumption`: no tickets. Its `session_ticket_keys`
        // (keys shared by several proxies) are not read: ringside's keys are its own, and a
        // ticket of another proxy gets a full handshake.
        session_tickets: !matches!(
            d.session_ticket_keys_type,
            Some(tls_pb::downstream_tls_context::SessionTicketKeysType::DisableStatelessSessionResumption(true))
        ),
        ticket_key_rotation_s: config::TICKET_KEY_ROTATION_S_MAX,
    })
}

/// An `UpstreamTlsContext` (a cluster's transport socket).
pub(super) fn upstream(any: &Any, ctx: &Ctx<'_>, at: &str) -> Result<ClusterTls, TranslateError> {
    let at = format!("{at}.typed_config");
    let u: tls_pb::UpstreamTlsContext = unpack(any, UPSTREAM_TYPE, ctx, &at)?;
    if u.auto_host_sni || u.auto_sni_san_validation {
        return Err(ctx.err(
            format!("{at}.auto_host_sni"),
            "SNI from the request's host is not supported",
        ));
    }
    let cat = format!("{at}.common_tls_context");
    let c = common(u.common_tls_context.as_ref(), ctx, &cat)?;
    if c.ca.is_none() && c.ca_sds.is_none() {
        return Err(ctx.err(
            format!("{cat}.validation_context"),
            "ringside verifies every upstream certificate: give a trusted_ca or a validation context over SDS",
        ));
    }
    let (cert_chain, private_key) = match c.files {
        Some((c, k)) => (Some(c), Some(k)),
        None => (None, None),
    };
    Ok(ClusterTls {
        cert_chain,
        private_key,
        certificate_sds: c.certificate_sds,
        ca: c.ca.unwrap_or_default(),
        ca_sds: c.ca_sds,
        sni: (!u.sni.is_empty()).then_some(u.sni),
        alpn: c.alpn,
        subject_alt_names: c.sans,
        params: c.params,
    })
}

/// What both sides take from a `CommonTlsContext`.
#[derive(Default)]
struct Common {
    /// `tls_certificates[0]`: chain and key files.
    files: Option<(String, String)>,
    certificate_sds: Option<SdsSecret>,
    ca: Option<String>,
    ca_sds: Option<SdsSecret>,
    sans: Vec<SanMatcher>,
    alpn: Vec<String>,
    params: TlsParams,
}

fn common(
    c: Option<&tls_pb::CommonTlsContext>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Common, TranslateError> {
    use tls_pb::common_tls_context::ValidationContextType as V;
    let Some(c) = c else {
        return Ok(Common::default());
    };
    let mut out = Common {
        alpn: c.alpn_protocols.clone(),
        ..Common::default()
    };
    // Istio's in-band peer metadata exchange (`istio-peer-exchange`) stays only where the
    // chain or cluster has istio.metadata_exchange (proto.rs drops it elsewhere): negotiating
    // it has both sides write their metadata frame before the protocol's bytes.
    if let Some(p) = &c.tls_params {
        out.params = params(p, ctx, &format!("{at}.tls_params"))?;
    }
    let unsupported = [
        (
            "tls_certificate_provider_instance",
            c.tls_certificate_provider_instance.is_some(),
        ),
        (
            "custom_tls_certificate_selector",
            c.custom_tls_certificate_selector.is_some(),
        ),
        (
            "tls_certificate_certificate_provider",
            c.tls_certificate_certificate_provider.is_some(),
        ),
        (
            "tls_certificate_certificate_provider_instance",
            c.tls_certificate_certificate_provider_instance.is_some(),
        ),
        ("custom_handshaker", c.custom_handshaker.is_some()),
    ];
    if let Some((f, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(ctx.err(format!("{at}.{f}"), "not supported"));
    }
    match (
        c.tls_certificates.as_slice(),
        c.tls_certificate_sds_secret_configs.as_slice(),
    ) {
        ([], []) => {}
        ([t], []) => out.files = Some(certificate(t, ctx, &format!("{at}.tls_certificates[0]"))?),
        ([], [s]) => {
            out.certificate_sds = Some(sds(
                s,
                ctx,
                &format!("{at}.tls_certificate_sds_secret_configs[0]"),
            )?)
        }
        _ => return Err(ctx.err(
            format!("{at}.tls_certificates"),
            "one certificate per context (tls_certificates or tls_certificate_sds_secret_configs)",
        )),
    }
    match &c.validation_context_type {
        None => {}
        Some(V::ValidationContext(v)) => {
            validation(v, &mut out, ctx, &format!("{at}.validation_context"))?
        }
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            out.ca_sds = Some(sds(
                s,
                ctx,
                &format!("{at}.validation_context_sds_secret_config"),
            )?)
        }
        Some(V::CombinedValidationContext(cv)) => {
            let cat = format!("{at}.combined_validation_context");
            if let Some(v) = &cv.default_validation_context {
                validation(
                    v,
                    &mut out,
                    ctx,
                    &format!("{cat}.default_validation_context"),
                )?;
            }
            match &cv.validation_context_sds_secret_config {
                Some(s) => {
                    // The SDS bundle stands in for a default trusted_ca (Envoy merges them,
                    // the dynamic singular field winning).
                    out.ca = None;
                    out.ca_sds = Some(sds(
                        s,
                        ctx,
                        &format!("{cat}.validation_context_sds_secret_config"),
                    )?);
                }
                None => {
                    return Err(ctx.err(
                        format!("{cat}.validation_context_sds_secret_config"),
                        "missing",
                    ))
                }
            }
        }
        Some(_) => {
            return Err(ctx.err(
                format!("{at}.validation_context_certificate_provider"),
                "certificate providers are not supported",
            ))
        }
    }
    Ok(out)
}

fn params(p: &tls_pb::TlsParameters, ctx: &Ctx<'_>, at: &str) -> Result<TlsParams, TranslateError> {
    use tls_pb::tls_parameters::TlsProtocol as P;
    let version = |v: i32, field: &str, max: bool| -> Result<Option<TlsVersion>, TranslateError> {
        match P::try_from(v) {
            Ok(P::TlsAuto) => Ok(None),
            // ringside speaks TLS 1.2 and 1.3 only: a lower minimum allows what it has.
            Ok(P::TlSv10 | P::TlSv11) if !max => Ok(None),
            Ok(P::TlSv12) => Ok(Some(TlsVersion::Tls12)),
            Ok(P::TlSv13) => Ok(Some(TlsVersion::Tls13)),
            _ => Err(ctx.err(
                format!("{at}.{field}"),
                "ringside speaks TLS 1.2 and 1.3 only",
            )),
        }
    };
    if !p.compliance_policies.is_empty() {
        return Err(ctx.err(format!("{at}.compliance_policies"), "not supported"));
    }
    let mut out = TlsParams {
        min_version: version(
            p.tls_minimum_protocol_version,
            "tls_minimum_protocol_version",
            false,
        )?,
        max_version: version(
            p.tls_maximum_protocol_version,
            "tls_maximum_protocol_version",
            true,
        )?,
        cipher_suites: p.cipher_suites.clone(),
    };
    // The defaults, spelled out: nothing to carry.
    if out.min_version == Some(TlsVersion::Tls12) {
        out.min_version = None;
    }
    if out.max_version == Some(TlsVersion::Tls13) {
        out.max_version = None;
    }
    Ok(out)
}

/// A `TlsCertificate` of files: (chain, key).
fn certificate(
    t: &tls_pb::TlsCertificate,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<(String, String), TranslateError> {
    if t.private_key_provider.is_some() {
        return Err(ctx.err(format!("{at}.private_key_provider"), "not supported"));
    }
    if t.password.is_some() {
        return Err(ctx.err(format!("{at}.password"), "encrypted keys are not supported"));
    }
    let chain = file(
        t.certificate_chain.as_ref(),
        ctx,
        &format!("{at}.certificate_chain"),
    )?;
    let key = file(t.private_key.as_ref(), ctx, &format!("{at}.private_key"))?;
    Ok((chain, key))
}

/// A `DataSource` that names a file.
fn file(
    d: Option<&core_pb::DataSource>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<String, TranslateError> {
    use core_pb::data_source::Specifier as S;
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(S::Filename(f)) if !f.is_empty() => Ok(f.clone()),
        Some(S::InlineBytes(_) | S::InlineString(_)) => Err(ctx.err(
            at,
            "inline certificates are not supported: give a filename, or SDS",
        )),
        Some(S::EnvironmentVariable(_)) => {
            Err(ctx.err(at, "environment_variable is not supported"))
        }
        _ => Err(ctx.err(at, "missing (give a filename)")),
    }
}

/// An `SdsSecretConfig`: the secret's name and where it comes from (ADS, or the SDS server of
/// an `envoy_grpc` cluster, which must be in the static config's `sds` list).
fn sds(s: &tls_pb::SdsSecretConfig, ctx: &Ctx<'_>, at: &str) -> Result<SdsSecret, TranslateError> {
    use core_pb::config_source::ConfigSourceSpecifier as C;
    use core_pb::grpc_service::TargetSpecifier as T;
    if s.name.is_empty() {
        return Err(ctx.err(format!("{at}.name"), "must not be empty"));
    }
    let server = match s.sds_config.as_ref().and_then(|c| c.config_source_specifier.as_ref()) {
        Some(C::Ads(_)) => None,
        Some(C::ApiConfigSource(a)) => {
            let grpc = a.grpc_services.first().and_then(|g| g.target_specifier.as_ref());
            match grpc {
                Some(T::EnvoyGrpc(e)) if a.grpc_services.len() == 1 && !e.cluster_name.is_empty() => {
                    Some(e.cluster_name.clone())
                }
                _ => {
                    return Err(ctx.err(
                        format!("{at}.sds_config.api_config_source.grpc_services"),
                        "one envoy_grpc service naming an sds server of the bootstrap",
                    ))
                }
            }
        }
        None => {
            return Err(ctx.err(
                format!("{at}.sds_config"),
                "static secrets are not supported: give an SDS config source (ads or api_config_source)",
            ))
        }
        Some(_) => {
            return Err(ctx.err(
                format!("{at}.sds_config"),
                "only ads or an api_config_source with one envoy_grpc service",
            ))
        }
    };
    Ok(SdsSecret {
        name: s.name.clone(),
        server,
    })
}

/// A `CertificateValidationContext`: the trusted CA file and the SAN matchers.
fn validation(
    v: &tls_pb::CertificateValidationContext,
    out: &mut Common,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<(), TranslateError> {
    use tls_pb::certificate_validation_context::TrustChainVerification as Tv;
    let refused = [
        (
            "verify_certificate_spki",
            !v.verify_certificate_spki.is_empty(),
        ),
        (
            "verify_certificate_hash",
            !v.verify_certificate_hash.is_empty(),
        ),
        ("crl", v.crl.is_some()),
        ("allow_expired_certificate", v.allow_expired_certificate),
        (
            "trust_chain_verification",
            v.trust_chain_verification == Tv::AcceptUntrusted as i32,
        ),
        (
            "custom_validator_config",
            v.custom_validator_config.is_some(),
        ),
        ("system_root_certs", v.system_root_certs.is_some()),
        (
            "ca_certificate_provider_instance",
            v.ca_certificate_provider_instance.is_some(),
        ),
        ("watched_directory", v.watched_directory.is_some()),
    ];
    if let Some((f, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(ctx.err(format!("{at}.{f}"), "not supported"));
    }
    if v.trusted_ca.is_some() {
        out.ca = Some(file(
            v.trusted_ca.as_ref(),
            ctx,
            &format!("{at}.trusted_ca"),
        )?);
    }
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        use tls_pb::subject_alt_name_matcher::SanType;
        let mat = format!("{at}.match_typed_subject_alt_names[{i}]");
        if m.san_type != SanType::Uri as i32 {
            return Err(ctx.err(
                format!("{mat}.san_type"),
                "ringside matches URI SANs (SPIFFE ids) only",
            ));
        }
        out.sans
            .push(san(m.matcher.as_ref(), ctx, &format!("{mat}.matcher"))?);
    }
    // Deprecated, and what istiod still sends: Envoy matches any SAN type, ringside the URI
    // SANs (Istio's workload certificates carry only their SPIFFE id).
    for (i, m) in v.match_subject_alt_names.iter().enumerate() {
        out.sans.push(san(
            Some(m),
            ctx,
            &format!("{at}.match_subject_alt_names[{i}]"),
        )?);
    }
    Ok(())
}

fn san(
    m: Option<&matcher_pb::StringMatcher>,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<SanMatcher, TranslateError> {
    use matcher_pb::string_matcher::MatchPattern as P;
    let Some(m) = m else {
        return Err(ctx.err(at, "missing"));
    };
    if m.ignore_case {
        return Err(ctx.err(format!("{at}.ignore_case"), "not supported"));
    }
    match &m.match_pattern {
        Some(P::Exact(s)) => Ok(SanMatcher::Exact(s.clone())),
        Some(P::Prefix(p)) => Ok(SanMatcher::Prefix { prefix: p.clone() }),
        _ => Err(ctx.err(at, "only exact and prefix SAN matchers are supported")),
    }
}

/// Decodes one `Secret` resource: (name, PEM), or what ringside cannot use: a
/// `tls_certificate` (chain and key) or a `validation_context` (trusted CA), inline or
/// from files (read now).
pub(crate) fn decode_secret(any: &Any) -> Result<(String, SecretPem), TranslateError> {
    use tls_pb::secret::Type;
    let s: tls_pb::Secret = super::decode_top(any, SECRET_TYPE)?;
    let ctx = Ctx {
        kind: "secret",
        name: &s.name,
    };
    let inline = |d: Option<&core_pb::DataSource>, at: &str| -> Result<Vec<u8>, TranslateError> {
        use core_pb::data_source::Specifier as S;
        match d.and_then(|d| d.specifier.as_ref()) {
            Some(S::InlineBytes(b)) => Ok(b.clone()),
            Some(S::InlineString(s)) => Ok(s.clone().into_bytes()),
            Some(S::Filename(f)) => {
                std::fs::read(f).map_err(|e| ctx.err(at, format!("cannot read {f:?}: {e}")))
            }
            _ => Err(ctx.err(at, "missing (inline_bytes, inline_string or filename)")),
        }
    };
    let pem = match &s.r#type {
        Some(Type::TlsCertificate(t)) => SecretPem {
            cert_chain: Some(inline(
                t.certificate_chain.as_ref(),
                "tls_certificate.certificate_chain",
            )?),
            private_key: Some(inline(
                t.private_key.as_ref(),
                "tls_certificate.private_key",
            )?),
            trusted_ca: None,
        },
        Some(Type::ValidationContext(v)) => SecretPem {
            cert_chain: None,
            private_key: None,
            trusted_ca: Some(inline(
                v.trusted_ca.as_ref(),
                "validation_context.trusted_ca",
            )?),
        },
        _ => {
            return Err(ctx.err(
                "type",
                "only tls_certificate and validation_context secrets are supported",
            ))
        }
    };
    Ok((s.name.clone(), pem))
}

#[cfg(test)]
#[path = "proto_tls_tests.rs"]
mod tests;
