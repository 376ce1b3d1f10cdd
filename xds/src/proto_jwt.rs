//! `envoy.filters.http.jwt_authn` into a Triple listener's `triple.jwt_authn` (docs/xds.md,
//! "JWT authentication"): the shape istiod builds from RequestAuthentication (providers with an
//! inline JWKS, `requires_any` of the provider and `allow_missing`, `payload_in_metadata`,
//! `bypass_cors_preflight`). Part of the `proto` module.

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as D;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier as P;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt_pb;
use envoy_types::pb::google::protobuf::Any;

use config::{JwtAuthn, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement, JwtRule};

use super::{unpack, Ctx};
use crate::TranslateError;

pub(super) const JWT_AUTHN_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

/// An HTTP connection manager's `envoy.filters.http.jwt_authn`, its counters under Envoy's
/// `http.STAT_PREFIX.` (the manager's `stat_prefix`).
pub(super) fn http(
    any: &Any,
    hcm_stat_prefix: &str,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<JwtAuthn, TranslateError> {
    let j: jwt_pb::JwtAuthentication = unpack(any, JWT_AUTHN_TYPE, ctx, at)?;
    if j.filter_state_rules.is_some() {
        return Err(ctx.err(format!("{at}.filter_state_rules"), "not supported"));
    }
    if !j.requirement_map.is_empty() {
        return Err(ctx.err(
            format!("{at}.requirement_map"),
            "not supported (rules with requires are)",
        ));
    }
    // A map on the wire: by name, so the same resource always compiles the same.
    let mut names: Vec<&String> = j.providers.keys().collect();
    names.sort();
    let providers = names
        .into_iter()
        .map(|n| provider(n, &j.providers[n], ctx, &format!("{at}.providers[{n:?}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let rules = j
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(r, ctx, &format!("{at}.rules[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    // Envoy: `http.HCM_STAT_PREFIX.jwt_authn.FILTER_STAT_PREFIX` + `allowed`, ...
    let stat_prefix = format!("http.{hcm_stat_prefix}.jwt_authn.{}", j.stat_prefix);
    Ok(JwtAuthn {
        stat_prefix,
        providers,
        rules,
        bypass_cors_preflight: j.bypass_cors_preflight,
        strip_failure_response: j.strip_failure_response,
    })
}

fn provider(
    name: &str,
    p: &jwt_pb::JwtProvider,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<JwtProvider, TranslateError> {
    use jwt_pb::jwt_provider::JwksSourceSpecifier as J;
    let local_jwks = match &p.jwks_source_specifier {
        Some(J::LocalJwks(d)) => match &d.specifier {
            Some(D::InlineString(s)) => s.clone(),
            Some(D::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => {
                return Err(ctx.err(
                    format!("{at}.local_jwks"),
                    "only inline_string or inline_bytes (istiod inlines the keys it fetched)",
                ))
            }
        },
        Some(J::RemoteJwks(_)) => {
            return Err(ctx.err(
                format!("{at}.remote_jwks"),
                "fetching keys is not supported: let istiod inline them (its default, \
                 PILOT_JWT_ENABLE_REMOTE_JWKS=false)",
            ))
        }
        None => String::new(),
    };
    // What would change which tokens pass: refused rather than ignored.
    let refuse = [
        (p.subjects.is_some(), "subjects"),
        (p.require_expiration, "require_expiration"),
        (p.max_lifetime.is_some(), "max_lifetime"),
        (!p.from_cookies.is_empty(), "from_cookies"),
    ];
    if let Some((_, f)) = refuse.iter().find(|(set, _)| *set) {
        return Err(ctx.err(format!("{at}.{f}"), "not supported"));
    }
    // `header_in_metadata`, `failed_status_in_metadata` (metadata nobody reads here),
    // `jwt_cache_config`: ignored.
    let claim_to_headers = p
        .claim_to_headers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if !c.claim_path.is_empty() {
                return Err(ctx.err(
                    format!("{at}.claim_to_headers[{i}].claim_path"),
                    "not supported (claim_name is)",
                ));
            }
            Ok(JwtClaimToHeader {
                header_name: c.header_name.to_ascii_lowercase(),
                claim_name: c.claim_name.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(JwtProvider {
        name: name.to_string(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        local_jwks,
        forward: p.forward,
        from_headers: p
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.to_ascii_lowercase(),
                value_prefix: h.value_prefix.clone(),
            })
            .collect(),
        from_params: p.from_params.clone(),
        payload_in_metadata: p.payload_in_metadata.clone(),
        space_delimited_claims: p
            .normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        forward_payload_header: p.forward_payload_header.to_ascii_lowercase(),
        pad_forward_payload_header: p.pad_forward_payload_header,
        claim_to_headers,
        clear_route_cache: p.clear_route_cache,
        clock_skew_seconds: p.clock_skew_seconds,
    })
}

fn rule(r: &jwt_pb::RequirementRule, ctx: &Ctx<'_>, at: &str) -> Result<JwtRule, TranslateError> {
    use jwt_pb::requirement_rule::RequirementType as T;
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| ctx.err(format!("{at}.match"), "missing"))?;
    if !m.headers.is_empty()
        || !m.query_parameters.is_empty()
        || m.grpc.is_some()
        || m.runtime_fraction.is_some()
        || !m.dynamic_metadata.is_empty()
        || m.tls_context.is_some()
        || m.case_sensitive.is_some_and(|c| !c.value)
    {
        return Err(ctx.err(
            format!("{at}.match"),
            "only prefix, path and safe_regex are supported",
        ));
    }
    let path = match &m.path_specifier {
        Some(P::Prefix(s)) => config::StringMatch {
            prefix: Some(s.clone()),
            ..Default::default()
        },
        Some(P::Path(s)) => config::StringMatch {
            exact: Some(s.clone()),
            ..Default::default()
        },
        Some(P::SafeRegex(re)) => config::StringMatch {
            regex: Some(re.regex.clone()),
            ..Default::default()
        },
        _ => {
            return Err(ctx.err(
                format!("{at}.match"),
                "only prefix, path and safe_regex are supported",
            ))
        }
    };
    let requires = match &r.requirement_type {
        Some(T::Requires(q)) => requirement(q, ctx, &format!("{at}.requires"))?,
        Some(T::RequirementName(_)) => {
            return Err(ctx.err(format!("{at}.requirement_name"), "not supported"))
        }
        None => None,
    };
    Ok(JwtRule { path, requires })
}

/// `None`: the requirement is not set (Envoy: anything passes).
fn requirement(
    q: &jwt_pb::JwtRequirement,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Option<JwtRequirement>, TranslateError> {
    use jwt_pb::jwt_requirement::RequiresType as R;
    let list = |l: &[jwt_pb::JwtRequirement], f: &str| {
        l.iter()
            .enumerate()
            .map(|(i, x)| {
                requirement(x, ctx, &format!("{at}.{f}[{i}]")).map(|r| {
                    // A nested unset requirement passes everything: as allow_missing_or_failed.
                    r.unwrap_or(JwtRequirement::AllowMissingOrFailed(true))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Some(match &q.requires_type {
        Some(R::ProviderName(n)) => JwtRequirement::ProviderName(n.clone()),
        Some(R::ProviderAndAudiences(p)) => JwtRequirement::ProviderAndAudiences {
            provider_name: p.provider_name.clone(),
            audiences: p.audiences.clone(),
        },
        Some(R::RequiresAny(l)) => {
            JwtRequirement::RequiresAny(list(&l.requirements, "requires_any")?)
        }
        Some(R::RequiresAll(l)) => {
            JwtRequirement::RequiresAll(list(&l.requirements, "requires_all")?)
        }
        Some(R::AllowMissingOrFailed(_)) => JwtRequirement::AllowMissingOrFailed(true),
        Some(R::AllowMissing(_)) => JwtRequirement::AllowMissing(true),
        Some(_) => return Err(ctx.err(at, "this requirement is not supported")),
        None => return Ok(None),
    }))
}
