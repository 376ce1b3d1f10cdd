//! `envoy.filters.network.rbac` into a listener's `rbac` (docs/xds.md, "RBAC"): the shapes
//! istiod builds from AuthorizationPolicy (principals by SPIFFE id, source IP; permissions by
//! destination port and IP; ALLOW, DENY, shadow rules). Part of the `proto` module.

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::google::protobuf::Any;

use config::{Permission, Principal, Rbac, RbacAction, RbacPolicy, RbacRules};

use super::{pattern, string_match, unpack, Ctx};
use crate::TranslateError;

pub(super) const NETWORK_RBAC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

pub(super) fn network(any: &Any, ctx: &Ctx<'_>, at: &str) -> Result<Rbac, TranslateError> {
    let r: NetworkRbac = unpack(any, NETWORK_RBAC_TYPE, ctx, at)?;
    if r.matcher.is_some() || r.shadow_matcher.is_some() {
        return Err(ctx.err(
            format!("{at}.matcher"),
            "the matcher API is not supported (rules are)",
        ));
    }
    if r.delay_deny.is_some() {
        return Err(ctx.err(format!("{at}.delay_deny"), "not supported"));
    }
    // CONTINUOUS re-checks on every read; ringside's rules (no dynamic metadata) decide the
    // same for the whole connection, so both enforcement types are one check.
    Ok(Rbac {
        stat_prefix: r.stat_prefix.clone(),
        rules: r
            .rules
            .as_ref()
            .map(|x| rules(x, ctx, &format!("{at}.rules")))
            .transpose()?,
        shadow_rules: r
            .shadow_rules
            .as_ref()
            .map(|x| rules(x, ctx, &format!("{at}.shadow_rules")))
            .transpose()?,
        shadow_rules_stat_prefix: r.shadow_rules_stat_prefix.clone(),
    })
}

fn rules(r: &rbac_pb::Rbac, ctx: &Ctx<'_>, at: &str) -> Result<RbacRules, TranslateError> {
    use rbac_pb::rbac::Action as A;
    let action = match A::try_from(r.action) {
        Ok(A::Allow) => RbacAction::Allow,
        Ok(A::Deny) => RbacAction::Deny,
        Ok(A::Log) => RbacAction::Log,
        Err(_) => {
            return Err(ctx.err(
                format!("{at}.action"),
                format!("unknown action {}", r.action),
            ))
        }
    };
    if r.audit_logging_options.is_some() {
        return Err(ctx.err(format!("{at}.audit_logging_options"), "not supported"));
    }
    // A map on the wire: by name, so the same resource always compiles the same.
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    let policies = names
        .into_iter()
        .map(|name| {
            let p = &r.policies[name];
            let at = format!("{at}.policies[{name:?}]");
            if p.condition.is_some() || p.checked_condition.is_some() || p.cel_config.is_some() {
                return Err(ctx.err(
                    format!("{at}.condition"),
                    "CEL conditions are not supported",
                ));
            }
            Ok(RbacPolicy {
                name: name.clone(),
                permissions: p
                    .permissions
                    .iter()
                    .enumerate()
                    .map(|(i, x)| permission(x, ctx, &format!("{at}.permissions[{i}]")))
                    .collect::<Result<_, _>>()?,
                principals: p
                    .principals
                    .iter()
                    .enumerate()
                    .map(|(i, x)| principal(x, ctx, &format!("{at}.principals[{i}]")))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(RbacRules { action, policies })
}

fn cidr(c: &core_pb::CidrRange) -> String {
    format!(
        "{}/{}",
        c.address_prefix,
        c.prefix_len.as_ref().map_or(0, |l| l.value)
    )
}

fn permission(
    p: &rbac_pb::Permission,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Permission, TranslateError> {
    use rbac_pb::permission::Rule as R;
    let list = |s: &rbac_pb::permission::Set, f: &str| {
        s.rules
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x, ctx, &format!("{at}.{f}.rules[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.rule {
        Some(R::Any(b)) => Permission::Any(*b),
        Some(R::AndRules(s)) => Permission::AndRules(list(s, "and_rules")?),
        Some(R::OrRules(s)) => Permission::OrRules(list(s, "or_rules")?),
        Some(R::NotRule(n)) => {
            Permission::NotRule(Box::new(permission(n, ctx, &format!("{at}.not_rule"))?))
        }
        Some(R::DestinationPort(v)) => {
            Permission::DestinationPort(u16::try_from(*v).map_err(|_| {
                ctx.err(
                    format!("{at}.destination_port"),
                    format!("{v} is not a port"),
                )
            })?)
        }
        Some(R::DestinationPortRange(r)) => {
            let port = |v: i32| u16::try_from(v.clamp(0, 65536).min(65535)).unwrap_or(u16::MAX);
            Permission::DestinationPortRange {
                start: port(r.start),
                end: if r.end > 65535 { u16::MAX } else { port(r.end) },
            }
        }
        Some(R::DestinationIp(c)) => Permission::DestinationIp(cidr(c)),
        // HTTP rules on a network filter never match a connection (Envoy: no headers).
        Some(R::Header(_)) | Some(R::UrlPath(_)) => {
            return Err(ctx.err(
                at,
                "header and url_path permissions are for the HTTP rbac filter (not supported)",
            ))
        }
        Some(_) => return Err(ctx.err(at, "this permission rule is not supported")),
        None => return Err(ctx.err(at, "missing rule")),
    })
}

fn principal(p: &rbac_pb::Principal, ctx: &Ctx<'_>, at: &str) -> Result<Principal, TranslateError> {
    use rbac_pb::principal::Identifier as I;
    let list = |s: &rbac_pb::principal::Set, f: &str| {
        s.ids
            .iter()
            .enumerate()
            .map(|(i, x)| principal(x, ctx, &format!("{at}.{f}.ids[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.identifier {
        Some(I::Any(b)) => Principal::Any(*b),
        Some(I::AndIds(s)) => Principal::AndIds(list(s, "and_ids")?),
        Some(I::OrIds(s)) => Principal::OrIds(list(s, "or_ids")?),
        Some(I::NotId(n)) => {
            Principal::NotId(Box::new(principal(n, ctx, &format!("{at}.not_id"))?))
        }
        Some(I::Authenticated(a)) => Principal::Authenticated {
            principal_name: a
                .principal_name
                .as_ref()
                .map(|m| {
                    pattern(m, ctx, &format!("{at}.authenticated.principal_name"))
                        .map(|p| string_match(&p))
                })
                .transpose()?,
        },
        #[allow(deprecated)]
        Some(I::SourceIp(c)) => Principal::SourceIp(cidr(c)),
        Some(I::DirectRemoteIp(c)) => Principal::DirectRemoteIp(cidr(c)),
        Some(I::RemoteIp(c)) => Principal::RemoteIp(cidr(c)),
        Some(I::Header(_)) | Some(I::UrlPath(_)) => {
            return Err(ctx.err(
                at,
                "header and url_path principals are for the HTTP rbac filter (not supported)",
            ))
        }
        Some(_) => return Err(ctx.err(at, "this principal is not supported")),
        None => return Err(ctx.err(at, "missing identifier")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
    use envoy_types::util::pack_any;

    fn ctx() -> Ctx<'static> {
        Ctx {
            kind: "listener",
            name: "l",
        }
    }

    fn by_suffix(s: &str) -> rbac_pb::Principal {
        use matcher_pb::string_matcher::MatchPattern as P;
        rbac_pb::Principal {
            identifier: Some(rbac_pb::principal::Identifier::Authenticated(
                rbac_pb::principal::Authenticated {
                    principal_name: Some(matcher_pb::StringMatcher {
                        match_pattern: Some(P::Suffix(s.into())),
                        ignore_case: false,
                    }),
                },
            )),
        }
    }

    fn filter(p: rbac_pb::Permission, who: rbac_pb::Principal) -> Any {
        pack_any(NetworkRbac {
            stat_prefix: "tcp.".into(),
            rules: Some(rbac_pb::Rbac {
                action: rbac_pb::rbac::Action::Deny as i32,
                policies: [(
                    "p".to_string(),
                    rbac_pb::Policy {
                        permissions: vec![p],
                        principals: vec![who],
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn istiod_shapes_translate_and_http_rules_are_refused() {
        let port = rbac_pb::Permission {
            rule: Some(rbac_pb::permission::Rule::DestinationPort(8080)),
        };
        let r = network(&filter(port, by_suffix("/sa/admin")), &ctx(), "f").unwrap();
        let rules = r.rules.unwrap();
        assert_eq!(rules.action, RbacAction::Deny);
        assert_eq!(
            rules.policies[0].permissions,
            [Permission::DestinationPort(8080)]
        );
        // A suffix is a full-match regex of the escaped text.
        match &rules.policies[0].principals[0] {
            Principal::Authenticated {
                principal_name: Some(m),
            } => assert_eq!(m.regex.as_deref(), Some(".*/sa/admin")),
            other => panic!("{other:?}"),
        }
        // A path permission belongs to the HTTP filter: NACK naming the field.
        let path = rbac_pb::Permission {
            rule: Some(rbac_pb::permission::Rule::UrlPath(Default::default())),
        };
        let e = network(&filter(path, by_suffix("x")), &ctx(), "f")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("f.rules.policies[\"p\"].permissions[0]"), "{e}");
    }
}
