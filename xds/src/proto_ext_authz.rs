//! `envoy.filters.http.ext_authz` into a Triple listener's `triple.ext_authz` (docs/xds.md,
//! "External authorization"): the shape istiod builds for an AuthorizationPolicy with
//! `action: CUSTOM` and an `envoyExtAuthzGrpc` extension provider (a gRPC service by cluster,
//! `filter_enabled_metadata` on the shadow rbac filter istiod puts in front of it); and
//! `envoy.filters.network.ext_authz` on a tcp_proxy chain into the chain's listener's
//! `ext_authz`. Every field ringside does not act on is refused, naming it: ignoring an
//! authorization field could let through what it denies. Part of the `proto` module.

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as ext_authz_pb;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3 as net_ext_authz_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::google::protobuf::Any;

use config::{ExtAuthz, ShadowPolicyMatch, EXT_AUTHZ_TIMEOUT_MS_DEFAULT, EXT_AUTHZ_TIMEOUT_MS_MAX};

use super::{duration_ms, join, pattern, regex_escape, string_match, unpack, Ctx};
use crate::TranslateError;

pub(super) const EXT_AUTHZ_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
pub(super) const NETWORK_EXT_AUTHZ_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";
const HTTP_RBAC: &str = "envoy.filters.http.rbac";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// The key Envoy's HTTP rbac filter writes its shadow rules' matched policy under (after the
/// filter's `shadow_rules_stat_prefix`), in its `envoy.filters.http.rbac` metadata.
const SHADOW_POLICY_KEY: &str = "shadow_effective_policy_id";

/// The filter, `rbac` its listener's HTTP rbac filters before it (each `shadow_rules_stat_prefix`,
/// in order).
pub(super) fn http(
    any: &Any,
    hcm_stat_prefix: &str,
    rbac_before: &[config::Rbac],
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<ExtAuthz, TranslateError> {
    let x: ext_authz_pb::ExtAuthz = unpack(any, EXT_AUTHZ_TYPE, ctx, at)?;
    let refuse = |field: &str, why: &str| Err(ctx.err(join(at, field), why.to_string()));
    // V3 is the only version Envoy 1.40 accepts too.
    if x.transport_api_version != core_pb::ApiVersion::V3 as i32 {
        return refuse("transport_api_version", "only V3 is supported");
    }
    // Fields that change who is let through, what the authorizer is told or what the caller
    // gets: refused unless at their default.
    let unsupported: [(&str, bool); 18] = [
        ("validate_mutations", x.validate_mutations),
        (
            "metadata_context_namespaces",
            !x.metadata_context_namespaces.is_empty(),
        ),
        (
            "typed_metadata_context_namespaces",
            !x.typed_metadata_context_namespaces.is_empty(),
        ),
        (
            "route_metadata_context_namespaces",
            !x.route_metadata_context_namespaces.is_empty(),
        ),
        (
            "route_typed_metadata_context_namespaces",
            !x.route_typed_metadata_context_namespaces.is_empty(),
        ),
        ("filter_enabled", x.filter_enabled.is_some()),
        ("deny_at_disable", x.deny_at_disable.is_some()),
        ("stat_prefix", !x.stat_prefix.is_empty()),
        (
            "bootstrap_metadata_labels_key",
            !x.bootstrap_metadata_labels_key.is_empty(),
        ),
        ("disallowed_headers", x.disallowed_headers.is_some()),
        ("include_tls_session", x.include_tls_session),
        ("encode_raw_headers", x.encode_raw_headers),
        (
            "decoder_header_mutation_rules",
            x.decoder_header_mutation_rules.is_some(),
        ),
        ("filter_metadata", x.filter_metadata.is_some()),
        (
            "max_denied_response_body_bytes",
            x.max_denied_response_body_bytes != 0,
        ),
        (
            "enforce_response_header_limits",
            x.enforce_response_header_limits,
        ),
        ("shadow_mode", x.shadow_mode),
        (
            "enable_dynamic_metadata_ingestion",
            x.enable_dynamic_metadata_ingestion
                .as_ref()
                .is_some_and(|b| !b.value),
        ),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return refuse(field, "not supported (docs/xds.md, External authorization)");
    }
    use ext_authz_pb::ext_authz::Services;
    let mut allowed_headers = match &x.allowed_headers {
        Some(l) => header_names(l, ctx, &join(at, "allowed_headers"))?,
        None => Vec::new(),
    };
    let (cluster, authority, timeout_ms, http) = match &x.services {
        Some(Services::GrpcService(g)) => {
            if x.allowed_headers
                .as_ref()
                .is_some_and(|l| l.patterns.is_empty())
            {
                // Envoy's empty allow list tells the authorizer of no header at all.
                return refuse("allowed_headers", "an empty list is not supported");
            }
            let (c, a, t) = grpc_service(g, ctx, &join(at, "grpc_service"))?;
            (c, a, t, None)
        }
        Some(Services::HttpService(h)) => {
            let hat = join(at, "http_service");
            let (c, t, service, allowed) = http_service(h, ctx, &hat)?;
            if let Some(l) = allowed {
                if x.allowed_headers.is_some() {
                    // Envoy 1.40 refuses both too.
                    return Err(ctx.err(
                        join(&hat, "authorization_request.allowed_headers"),
                        "given with allowed_headers (Envoy: invalid duplicate configuration)",
                    ));
                }
                allowed_headers = l;
            }
            (c, String::new(), t, Some(service))
        }
        None => return refuse("grpc_service", "missing"),
    };
    let status_on_error = match &x.status_on_error {
        // Envoy's HttpStatus: a code of 0 is refused by its validation; ours too.
        Some(s) if (200..=599).contains(&s.code) => s.code as u16,
        Some(s) => {
            return Err(ctx.err(
                join(at, "status_on_error.code"),
                format!("{} is not an HTTP status 200..=599", s.code),
            ))
        }
        None => 403,
    };
    let with_request_body = match &x.with_request_body {
        // Envoy's validation: more than 0.
        Some(b) if b.max_request_bytes == 0 => {
            return refuse("with_request_body.max_request_bytes", "must be more than 0")
        }
        Some(b) => Some(config::ExtAuthzBody {
            max_request_bytes: b.max_request_bytes,
            allow_partial_message: b.allow_partial_message,
            pack_as_bytes: b.pack_as_bytes,
        }),
        None => None,
    };
    let enabled_by_shadow_policy = enabled_metadata(
        x.filter_enabled_metadata.as_ref(),
        HTTP_RBAC,
        rbac_before,
        ctx,
        &join(at, "filter_enabled_metadata"),
    )?;
    Ok(ExtAuthz {
        cluster,
        authority,
        timeout_ms,
        failure_mode_allow: x.failure_mode_allow,
        failure_mode_allow_header_add: x.failure_mode_allow_header_add,
        status_on_error,
        enabled_by_shadow_policy,
        include_peer_certificate: x.include_peer_certificate,
        after_rbac: rbac_before.len(),
        before_jwt_authn: false,
        stat_prefix: format!("http.{hcm_stat_prefix}."),
        allowed_headers,
        http,
        with_request_body,
    })
}

/// Envoy's `http_service`: the cluster (`server_uri.cluster`), the timeout
/// (`server_uri.timeout`), what ringside keeps of it, and
/// `authorization_request.allowed_headers` when given.
#[allow(clippy::type_complexity)]
fn http_service(
    h: &ext_authz_pb::HttpService,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<
    (
        String,
        u64,
        config::ExtAuthzHttp,
        Option<Vec<config::StringMatch>>,
    ),
    TranslateError,
> {
    if !h.path_override.is_empty() {
        return Err(ctx.err(join(at, "path_override"), "not supported (path_prefix is)"));
    }
    if h.retry_policy.is_some() {
        return Err(ctx.err(join(at, "retry_policy"), "not supported"));
    }
    let uat = join(at, "server_uri");
    let Some(uri) = &h.server_uri else {
        return Err(ctx.err(uat, "missing"));
    };
    use core_pb::http_uri::HttpUpstreamType;
    let cluster = match &uri.http_upstream_type {
        Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
        _ => return Err(ctx.err(join(&uat, "cluster"), "must name a cluster")),
    };
    // Required by Envoy's validation; `uri` itself is not used (as Envoy: the cluster is).
    let timeout_ms = match &uri.timeout {
        Some(d) => duration_ms(d, ctx, &join(&uat, "timeout"), EXT_AUTHZ_TIMEOUT_MS_MAX)?.max(1),
        None => return Err(ctx.err(join(&uat, "timeout"), "missing")),
    };
    let path_prefix = h.path_prefix.clone();
    if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
        return Err(ctx.err(join(at, "path_prefix"), "must start with /"));
    }
    let mut out = config::ExtAuthzHttp {
        path_prefix,
        ..Default::default()
    };
    let mut allowed = None;
    if let Some(r) = &h.authorization_request {
        let rat = join(at, "authorization_request");
        if let Some(l) = &r.allowed_headers {
            allowed = Some(header_names(l, ctx, &join(&rat, "allowed_headers"))?);
        }
        for (i, hv) in r.headers_to_add.iter().enumerate() {
            let hat = format!("{rat}.headers_to_add[{i}]");
            let value = match hv.raw_value.is_empty() {
                true => hv.value.clone(),
                false => String::from_utf8(hv.raw_value.clone())
                    .map_err(|_| ctx.err(join(&hat, "raw_value"), "not UTF-8"))?,
            };
            if value.contains('%') {
                // Envoy's substitution formatters (`%REQ(...)%`): not supported.
                return Err(ctx.err(
                    join(&hat, "value"),
                    format!("{value:?}: % formatters are not supported"),
                ));
            }
            out.headers_to_add
                .push((hv.key.to_ascii_lowercase(), value));
        }
    }
    if let Some(r) = &h.authorization_response {
        let rat = join(at, "authorization_response");
        let list = |l: &Option<matcher_pb::ListStringMatcher>, name: &str| match l {
            Some(l) => header_names(l, ctx, &join(&rat, name)),
            None => Ok(Vec::new()),
        };
        out.allowed_upstream_headers =
            list(&r.allowed_upstream_headers, "allowed_upstream_headers")?;
        out.allowed_upstream_headers_to_append = list(
            &r.allowed_upstream_headers_to_append,
            "allowed_upstream_headers_to_append",
        )?;
        out.allowed_client_headers = list(&r.allowed_client_headers, "allowed_client_headers")?;
        out.allowed_client_headers_on_success = list(
            &r.allowed_client_headers_on_success,
            "allowed_client_headers_on_success",
        )?;
        // `dynamic_metadata_from_headers`: the answer's headers as the filter's dynamic
        // metadata, which nothing in ringside reads (no per-request metadata matchers or
        // access-log fields over it): accepted, the metadata not kept (docs/xds.md).
        if let Some(l) = &r.dynamic_metadata_from_headers {
            header_names(l, ctx, &join(&rat, "dynamic_metadata_from_headers"))?;
        }
    }
    Ok((cluster, timeout_ms, out, allowed))
}

/// A list of header-name matchers (names are lower case; `ignore_case` as a case-blind
/// regex).
fn header_names(
    l: &matcher_pb::ListStringMatcher,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Vec<config::StringMatch>, TranslateError> {
    use matcher_pb::string_matcher::MatchPattern as M;
    l.patterns
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let pat = format!("{at}.patterns[{i}]");
            if !m.ignore_case {
                return Ok(string_match(&pattern(m, ctx, &pat)?));
            }
            let re = match &m.match_pattern {
                Some(M::Exact(s)) => regex_escape(s),
                Some(M::Prefix(s)) => format!("{}.*", regex_escape(s)),
                Some(M::Suffix(s)) => format!(".*{}", regex_escape(s)),
                Some(M::Contains(s)) => format!(".*{}.*", regex_escape(s)),
                Some(M::SafeRegex(r)) => format!("(?:{})", r.regex),
                Some(M::Custom(_)) => return Err(ctx.err(join(&pat, "custom"), "not supported")),
                None => return Err(ctx.err(pat, "missing match pattern")),
            };
            Ok(config::StringMatch {
                regex: Some(format!("(?i){re}")),
                ..Default::default()
            })
        })
        .collect()
}

/// A gRPC `grpc_service` (`envoy_grpc` only): the cluster, `:authority` and timeout.
fn grpc_service(
    g: &core_pb::GrpcService,
    ctx: &Ctx<'_>,
    gat: &str,
) -> Result<(String, String, u64), TranslateError> {
    if !g.initial_metadata.is_empty() {
        return Err(ctx.err(join(gat, "initial_metadata"), "not supported"));
    }
    if g.retry_policy.is_some() {
        return Err(ctx.err(join(gat, "retry_policy"), "not supported"));
    }
    use core_pb::grpc_service::TargetSpecifier;
    let e = match &g.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => e,
        Some(TargetSpecifier::GoogleGrpc(_)) => {
            return Err(ctx.err(join(gat, "google_grpc"), "not supported (envoy_grpc is)"))
        }
        None => return Err(ctx.err(join(gat, "envoy_grpc"), "missing")),
    };
    let eat = join(gat, "envoy_grpc");
    if e.cluster_name.is_empty() {
        return Err(ctx.err(join(&eat, "cluster_name"), "must not be empty"));
    }
    if e.retry_policy.is_some() {
        return Err(ctx.err(join(&eat, "retry_policy"), "not supported"));
    }
    let timeout_ms = match &g.timeout {
        Some(d) => duration_ms(d, ctx, &join(gat, "timeout"), EXT_AUTHZ_TIMEOUT_MS_MAX)?.max(1),
        None => EXT_AUTHZ_TIMEOUT_MS_DEFAULT,
    };
    Ok((e.cluster_name.clone(), e.authority.clone(), timeout_ms))
}

/// `envoy.filters.network.ext_authz` on a tcp_proxy chain (istiod's CUSTOM policy on TCP
/// chains: `generateGRPCConfig`'s `tcp`, behind the shadow network rbac filter), `rbac_before`
/// the chain's network rbac filters before it.
pub(super) fn network(
    any: &Any,
    rbac_before: &[config::Rbac],
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<ExtAuthz, TranslateError> {
    let x: net_ext_authz_pb::ExtAuthz = unpack(any, NETWORK_EXT_AUTHZ_TYPE, ctx, at)?;
    let refuse = |field: &str, why: &str| Err(ctx.err(join(at, field), why.to_string()));
    if x.transport_api_version != core_pb::ApiVersion::V3 as i32 {
        return refuse("transport_api_version", "only V3 is supported");
    }
    // Envoy's validation: stat_prefix has min_len 1.
    if x.stat_prefix.is_empty() {
        return refuse("stat_prefix", "must not be empty");
    }
    let unsupported: [(&str, bool); 6] = [
        (
            "bootstrap_metadata_labels_key",
            !x.bootstrap_metadata_labels_key.is_empty(),
        ),
        ("include_tls_session", x.include_tls_session),
        ("send_tls_alert_on_denial", x.send_tls_alert_on_denial),
        (
            "metadata_context_namespaces",
            !x.metadata_context_namespaces.is_empty(),
        ),
        (
            "typed_metadata_context_namespaces",
            !x.typed_metadata_context_namespaces.is_empty(),
        ),
        ("shadow_mode", x.shadow_mode),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return refuse(field, "not supported (docs/xds.md, External authorization)");
    }
    let Some(g) = &x.grpc_service else {
        return refuse("grpc_service", "missing");
    };
    let (cluster, authority, timeout_ms) = grpc_service(g, ctx, &join(at, "grpc_service"))?;
    let enabled_by_shadow_policy = enabled_metadata(
        x.filter_enabled_metadata.as_ref(),
        NETWORK_RBAC,
        rbac_before,
        ctx,
        &join(at, "filter_enabled_metadata"),
    )?;
    Ok(ExtAuthz {
        cluster,
        authority,
        timeout_ms,
        failure_mode_allow: x.failure_mode_allow,
        failure_mode_allow_header_add: false,
        status_on_error: 403,
        enabled_by_shadow_policy,
        include_peer_certificate: x.include_peer_certificate,
        after_rbac: rbac_before.len(),
        before_jwt_authn: false,
        stat_prefix: x.stat_prefix,
        allowed_headers: Vec::new(),
        http: None,
        with_request_body: None,
    })
}

/// `filter_enabled_metadata`: only istiod's form, the shadow policy an rbac filter before
/// this one matched (`envoy.filters.http.rbac`, one key `SHADOW_PREFIXshadow_effective_policy_id`,
/// a string matcher).
fn enabled_metadata(
    m: Option<&matcher_pb::MetadataMatcher>,
    rbac_filter: &str,
    rbac_before: &[config::Rbac],
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<ShadowPolicyMatch>, TranslateError> {
    let Some(m) = m else {
        return Ok(None);
    };
    if m.filter != rbac_filter {
        return Err(ctx.err(
            join(at, "filter"),
            format!(
                "{:?}: only {rbac_filter}'s shadow_effective_policy_id is supported",
                m.filter
            ),
        ));
    }
    use matcher_pb::metadata_matcher::path_segment::Segment;
    let key = match m.path.as_slice() {
        [p] => match &p.segment {
            Some(Segment::Key(k)) => k,
            None => return Err(ctx.err(join(at, "path[0]"), "missing key")),
        },
        _ => return Err(ctx.err(join(at, "path"), "one key is supported")),
    };
    let Some(prefix) = key.strip_suffix(SHADOW_POLICY_KEY) else {
        return Err(ctx.err(
            join(at, "path[0].key"),
            format!("{key:?}: only SHADOW_PREFIX{SHADOW_POLICY_KEY} is supported"),
        ));
    };
    if !rbac_before
        .iter()
        .any(|r| r.shadow_rules.is_some() && r.shadow_rules_stat_prefix == prefix)
    {
        return Err(ctx.err(
            join(at, "path[0].key"),
            format!(
                "{key:?}: no {rbac_filter} filter before this one has shadow_rules with \
                 shadow_rules_stat_prefix {prefix:?} (the filter would never run)"
            ),
        ));
    }
    if m.invert {
        return Err(ctx.err(join(at, "invert"), "not supported"));
    }
    use matcher_pb::value_matcher::MatchPattern;
    let vat = join(at, "value");
    let policy = match m.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
        Some(MatchPattern::StringMatch(s)) => {
            string_match(&pattern(s, ctx, &join(&vat, "string_match"))?)
        }
        _ => return Err(ctx.err(vat, "only string_match is supported")),
    };
    Ok(Some(ShadowPolicyMatch {
        shadow_rules_stat_prefix: prefix.to_string(),
        policy,
    }))
}
