//! `envoy.filters.network.rbac` into a listener's `rbac` and `envoy.filters.http.rbac` into a
//! Triple listener's `triple.rbac` (docs/xds.md, "RBAC"): the shapes istiod builds from
//! AuthorizationPolicy (principals by SPIFFE id, source IP, request headers; permissions by
//! destination port and IP, and for HTTP by `:path` and headers; ALLOW, DENY, shadow rules),
//! and Aeraki's `envoy.filters.dubbo.rbac` entries of a dubbo_proxy into a Dubbo listener's
//! `dubbo.rbac` (the request's interface and method as `metadata` matchers). Part of the
//! `proto` module.

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::google::protobuf::Any;

use config::{HeaderMatch, Permission, Principal, Rbac, RbacAction, RbacPolicy, RbacRules};

use super::{header_pat, pattern, regex_escape, string_match, unpack, Ctx, HeaderPat, Pat};
use crate::TranslateError;

pub(super) const NETWORK_RBAC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
pub(super) const HTTP_RBAC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const URI_TEMPLATE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";
/// Aeraki's Dubbo RBAC filter (a `dubbo_filters` entry whose `config` is a network `RBAC`),
/// also the `filter` of the metadata its permissions match.
pub(super) const DUBBO_RBAC_FILTER: &str = "envoy.filters.dubbo.rbac";

/// Which filter a rule is in: the HTTP one may look at the request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Network,
    Http,
    /// Aeraki's `envoy.filters.dubbo.rbac`: may look at the request's interface and method.
    Dubbo,
}

pub(super) fn network(any: &Any, ctx: &Ctx<'_>, at: &str) -> Result<Rbac, TranslateError> {
    let r: NetworkRbac = unpack(any, NETWORK_RBAC_TYPE, ctx, at)?;
    network_or_dubbo(&r, Scope::Network, ctx, at)
}

/// The `config` of an `envoy.filters.dubbo.rbac` entry of a dubbo_proxy's `dubbo_filters`.
pub(super) fn dubbo(any: &Any, ctx: &Ctx<'_>, at: &str) -> Result<Rbac, TranslateError> {
    let r: NetworkRbac = unpack(any, NETWORK_RBAC_TYPE, ctx, at)?;
    network_or_dubbo(&r, Scope::Dubbo, ctx, at)
}

fn network_or_dubbo(
    r: &NetworkRbac,
    scope: Scope,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Rbac, TranslateError> {
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
    // same for the whole connection, so both enforcement types are one check. The Dubbo
    // filter checks every request either way (Envoy's runs per message).
    let (rules, shadow_rules) = both_rules(&r.rules, &r.shadow_rules, scope, ctx, at)?;
    Ok(Rbac {
        stat_prefix: r.stat_prefix.clone(),
        rules_stat_prefix: String::new(),
        rules,
        shadow_rules,
        shadow_rules_stat_prefix: r.shadow_rules_stat_prefix.clone(),
    })
}

/// A filter's `rules` and `shadow_rules`.
fn both_rules(
    enforced: &Option<rbac_pb::Rbac>,
    shadow: &Option<rbac_pb::Rbac>,
    scope: Scope,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<(Option<RbacRules>, Option<RbacRules>), TranslateError> {
    Ok((
        enforced
            .as_ref()
            .map(|x| rules(x, scope, ctx, &format!("{at}.rules")))
            .transpose()?,
        shadow
            .as_ref()
            .map(|x| rules(x, scope, ctx, &format!("{at}.shadow_rules")))
            .transpose()?,
    ))
}

/// An HTTP connection manager's `envoy.filters.http.rbac`, its counters under Envoy's
/// `http.STAT_PREFIX.` (the manager's `stat_prefix`).
pub(super) fn http(
    any: &Any,
    hcm_stat_prefix: &str,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Rbac, TranslateError> {
    let r: HttpRbac = unpack(any, HTTP_RBAC_TYPE, ctx, at)?;
    if r.matcher.is_some() || r.shadow_matcher.is_some() {
        return Err(ctx.err(
            format!("{at}.matcher"),
            "the matcher API is not supported (rules are)",
        ));
    }
    // `track_per_rule_stats` only adds per-policy counters: ignored (docs/xds.md, "RBAC").
    let (rules, shadow_rules) = both_rules(&r.rules, &r.shadow_rules, Scope::Http, ctx, at)?;
    Ok(Rbac {
        stat_prefix: format!("http.{hcm_stat_prefix}."),
        rules_stat_prefix: r.rules_stat_prefix.clone(),
        rules,
        shadow_rules,
        shadow_rules_stat_prefix: r.shadow_rules_stat_prefix.clone(),
    })
}

fn rules(
    r: &rbac_pb::Rbac,
    scope: Scope,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<RbacRules, TranslateError> {
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
                    .map(|(i, x)| permission(x, scope, ctx, &format!("{at}.permissions[{i}]")))
                    .collect::<Result<_, _>>()?,
                principals: p
                    .principals
                    .iter()
                    .enumerate()
                    .map(|(i, x)| principal(x, scope, ctx, &format!("{at}.principals[{i}]")))
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

/// A string matcher as a pattern; `ignore_case` (istiod's `:authority` matches) as a
/// case-insensitive regex.
fn rbac_pattern(
    m: &matcher_pb::StringMatcher,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Pat, TranslateError> {
    if !m.ignore_case {
        return pattern(m, ctx, at);
    }
    let plain = matcher_pb::StringMatcher {
        ignore_case: false,
        ..m.clone()
    };
    let re = match pattern(&plain, ctx, at)? {
        Pat::Exact(s) => regex_escape(&s),
        Pat::Prefix(s) => format!("{}.*", regex_escape(&s)),
        Pat::Regex(r) => r,
    };
    Ok(Pat::Regex(format!("(?i:{re})")))
}

/// A header condition of the HTTP filter.
fn header(
    h: &envoy_types::pb::envoy::config::route::v3::HeaderMatcher,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<HeaderMatch, TranslateError> {
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as H;
    if h.name.is_empty() || h.name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ctx.err(
            format!("{at}.name"),
            format!(
                "{:?}: HTTP/2 header names are non-empty and lower-case",
                h.name
            ),
        ));
    }
    let pat = match &h.header_match_specifier {
        Some(H::StringMatch(m)) if !h.invert_match && !h.treat_missing_header_as_empty => {
            HeaderPat::Pat(rbac_pattern(m, ctx, &format!("{at}.string_match"))?)
        }
        _ => header_pat(h, ctx, at)?,
    };
    let mut out = HeaderMatch {
        name: h.name.clone(),
        exact: None,
        prefix: None,
        regex: None,
        present: None,
        invert: false,
        treat_missing_as_empty: false,
    };
    match pat {
        HeaderPat::Pat(Pat::Exact(s)) => out.exact = Some(s),
        HeaderPat::Pat(Pat::Prefix(s)) => out.prefix = Some(s),
        HeaderPat::Pat(Pat::Regex(s)) => out.regex = Some(s),
        HeaderPat::Present(b) => out.present = Some(b),
    }
    Ok(out)
}

fn http_only(scope: Scope, ctx: &Ctx<'_>, at: &str, what: &str) -> Result<(), TranslateError> {
    match scope {
        Scope::Http => Ok(()),
        // Envoy's network filter has no request: such a rule never matches there.
        Scope::Network | Scope::Dubbo => Err(ctx.err(
            at,
            format!("{what} rules are for the HTTP rbac filter, not the network one"),
        )),
    }
}

/// A `MetadataMatcher` on `envoy.filters.http.jwt_authn`'s metadata (istiod's
/// `requestPrincipals`, `request.auth.claims[...]`, `request.auth.audiences`, ...: the path
/// `payload` then claims): a verified JWT's payload. Any other filter: NACK (ringside has no
/// other dynamic metadata, and a rule that could never match would change what a policy
/// means).
pub(super) fn metadata_match(
    m: &matcher_pb::MetadataMatcher,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<config::MetadataMatch, TranslateError> {
    use matcher_pb::metadata_matcher::path_segment::Segment;
    if m.filter != config::JWT_AUTHN_FILTER {
        return Err(ctx.err(
            format!("{at}.filter"),
            format!(
                "{:?}: only {}'s metadata (verified JWT payloads) exists",
                m.filter,
                config::JWT_AUTHN_FILTER
            ),
        ));
    }
    let path = m
        .path
        .iter()
        .map(|p| match &p.segment {
            Some(Segment::Key(k)) => Ok(k.clone()),
            None => Err(ctx.err(format!("{at}.path"), "a segment without a key")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if path.is_empty() {
        return Err(ctx.err(format!("{at}.path"), "missing"));
    }
    let value = m
        .value
        .as_ref()
        .ok_or_else(|| ctx.err(format!("{at}.value"), "missing"))?;
    Ok(config::MetadataMatch {
        filter: m.filter.clone(),
        path,
        value: value_match(value, ctx, &format!("{at}.value"), 1)?,
        invert: m.invert,
    })
}

fn value_match(
    v: &matcher_pb::ValueMatcher,
    ctx: &Ctx<'_>,
    at: &str,
    depth: usize,
) -> Result<config::ValueMatch, TranslateError> {
    use matcher_pb::list_matcher::MatchPattern as L;
    use matcher_pb::value_matcher::MatchPattern as V;
    if depth > config::JWT_DEPTH_MAX {
        return Err(ctx.err(at, "nested too deep"));
    }
    Ok(match &v.match_pattern {
        Some(V::StringMatch(sm)) => config::ValueMatch::String(string_match(&rbac_pattern(
            sm,
            ctx,
            &format!("{at}.string_match"),
        )?)),
        Some(V::PresentMatch(b)) => config::ValueMatch::Present(*b),
        Some(V::NullMatch(_)) => config::ValueMatch::Null,
        Some(V::BoolMatch(b)) => config::ValueMatch::Bool(*b),
        Some(V::ListMatch(l)) => match &l.match_pattern {
            Some(L::OneOf(one)) => config::ValueMatch::List(Box::new(value_match(
                one,
                ctx,
                &format!("{at}.list_match.one_of"),
                depth + 1,
            )?)),
            None => return Err(ctx.err(format!("{at}.list_match"), "missing one_of")),
        },
        Some(V::OrMatch(o)) => config::ValueMatch::Or(
            o.value_matchers
                .iter()
                .enumerate()
                .map(|(i, x)| value_match(x, ctx, &format!("{at}.or_match[{i}]"), depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Some(V::DoubleMatch(_)) => {
            return Err(ctx.err(format!("{at}.double_match"), "not supported"))
        }
        None => return Err(ctx.err(at, "missing match_pattern")),
    })
}

/// Aeraki's Dubbo permissions (`internal/plugin/dubbo/authz`): a `metadata` matcher on the
/// `envoy.filters.dubbo.rbac` filter's `service` (the request's interface) or `method` key,
/// whose value is a string matcher. Any other metadata is NACKed: ringside has no dynamic
/// metadata, and a rule that could never match would silently change what a policy means.
fn dubbo_metadata(
    m: &matcher_pb::MetadataMatcher,
    scope: Scope,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Permission, TranslateError> {
    use matcher_pb::metadata_matcher::path_segment::Segment;
    use matcher_pb::value_matcher::MatchPattern as V;
    if scope != Scope::Dubbo {
        return Err(ctx.err(
            format!("{at}.metadata"),
            format!("metadata rules are supported only in {DUBBO_RBAC_FILTER} (dynamic metadata is not)"),
        ));
    }
    if m.filter != DUBBO_RBAC_FILTER {
        return Err(ctx.err(
            format!("{at}.metadata.filter"),
            format!(
                "{:?}: only {DUBBO_RBAC_FILTER}'s `service` and `method` are known",
                m.filter
            ),
        ));
    }
    let key = match m.path.as_slice() {
        [one] => match &one.segment {
            Some(Segment::Key(k)) => k.as_str(),
            None => "",
        },
        _ => "",
    };
    let sm = match m.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
        Some(V::StringMatch(sm)) => sm,
        _ => {
            return Err(ctx.err(
                format!("{at}.metadata.value"),
                "only a string_match is supported",
            ))
        }
    };
    let s = string_match(&rbac_pattern(
        sm,
        ctx,
        &format!("{at}.metadata.value.string_match"),
    )?);
    let p = match key {
        "service" => Permission::DubboInterface(s),
        "method" => Permission::DubboMethod(s),
        _ => {
            return Err(ctx.err(
                format!("{at}.metadata.path"),
                "one key, `service` or `method`, is supported",
            ))
        }
    };
    Ok(if m.invert {
        Permission::NotRule(Box::new(p))
    } else {
        p
    })
}

fn permission(
    p: &rbac_pb::Permission,
    scope: Scope,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Permission, TranslateError> {
    use rbac_pb::permission::Rule as R;
    let list = |s: &rbac_pb::permission::Set, f: &str| {
        s.rules
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x, scope, ctx, &format!("{at}.{f}.rules[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.rule {
        Some(R::Any(b)) => Permission::Any(*b),
        Some(R::AndRules(s)) => Permission::AndRules(list(s, "and_rules")?),
        Some(R::OrRules(s)) => Permission::OrRules(list(s, "or_rules")?),
        Some(R::NotRule(n)) => Permission::NotRule(Box::new(permission(
            n,
            scope,
            ctx,
            &format!("{at}.not_rule"),
        )?)),
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
        Some(R::Header(h)) => {
            http_only(scope, ctx, at, "header")?;
            Permission::Header(header(h, ctx, &format!("{at}.header"))?)
        }
        Some(R::UrlPath(m)) => {
            http_only(scope, ctx, at, "url_path")?;
            let pat = match &m.rule {
                Some(matcher_pb::path_matcher::Rule::Path(s)) => {
                    rbac_pattern(s, ctx, &format!("{at}.url_path.path"))?
                }
                None => return Err(ctx.err(format!("{at}.url_path.path"), "missing")),
            };
            Permission::UrlPath(string_match(&pat))
        }
        Some(R::Metadata(m)) if scope == Scope::Http => {
            Permission::Metadata(metadata_match(m, ctx, &format!("{at}.metadata"))?)
        }
        Some(R::Metadata(m)) => dubbo_metadata(m, scope, ctx, at)?,
        Some(R::UriTemplate(ext)) => {
            http_only(scope, ctx, at, "uri_template")?;
            let field = format!("{at}.uri_template.typed_config");
            let any = ext
                .typed_config
                .as_ref()
                .ok_or_else(|| ctx.err(&field, "missing"))?;
            let t: UriTemplateMatchConfig = unpack(any, URI_TEMPLATE_TYPE, ctx, &field)?;
            let re = uri_template_regex(&t.path_template)
                .map_err(|e| ctx.err(format!("{field}.path_template"), e))?;
            Permission::UrlPath(config::StringMatch {
                regex: Some(re),
                ..Default::default()
            })
        }
        Some(R::RequestedServerName(m)) => Permission::RequestedServerName(string_match(
            &rbac_pattern(m, ctx, &format!("{at}.requested_server_name"))?,
        )),
        // Dynamic metadata of other filters, ...
        Some(_) => return Err(ctx.err(at, "this permission rule is not supported")),
        None => return Err(ctx.err(at, "missing rule")),
    })
}

/// Envoy's `uri_template` path matcher (istiod's AuthorizationPolicy paths with `{*}` and
/// `{**}`, written as `*` and `**`): the template as the regex Envoy matches against `:path`
/// without its query (`uri_template_lib/uri_template_internal.cc`: `*` one or more characters
/// of a path segment, `**` any characters including `/`, `{name}` / `{name=...}` variables,
/// a literal suffix after the last operator), or Envoy's reason to refuse it.
pub(super) fn uri_template_regex(template: &str) -> Result<String, String> {
    // RFC 3986's pchar without `*` and `/` (Envoy's `kLiteral`).
    const CLASS: &str = "a-zA-Z0-9\\-._~%!$&'()+,;:@=";
    fn literal_ok(s: &str) -> bool {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b))
    }
    fn escape(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if matches!(c, '$' | '(' | ')' | '+' | '.') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Op {
        Path,
        Text,
    }
    enum Part<'a> {
        Lit(&'a str),
        Op(Op),
    }
    enum Seg<'a> {
        Part(Part<'a>),
        Var(&'a str, Vec<Part<'a>>),
    }
    // An operator at the head of `s`, or a literal up to the next `/`.
    fn part(s: &str) -> Result<(Part<'_>, &str), String> {
        if let Some(rest) = s.strip_prefix("**") {
            return Ok((Part::Op(Op::Text), rest));
        }
        if let Some(rest) = s.strip_prefix('*') {
            return Ok((Part::Op(Op::Path), rest));
        }
        let end = s.find('/').unwrap_or(s.len());
        if !literal_ok(&s[..end]) {
            return Err(format!("invalid literal {:?}", &s[..end]));
        }
        Ok((Part::Lit(&s[..end]), &s[end..]))
    }
    fn glob(op: Op) -> String {
        match op {
            Op::Path => format!("[{CLASS}]+"),
            Op::Text => format!("[{CLASS}/]*"),
        }
    }
    fn part_re(p: &Part<'_>) -> String {
        match p {
            Part::Lit(l) => escape(l),
            Part::Op(op) => glob(*op),
        }
    }

    let Some(mut rest) = template.strip_prefix('/') else {
        return Err(format!("{template:?} does not start with /"));
    };
    if !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{template:?} holds a character that is not printable ASCII"
        ));
    }
    let mut segs: Vec<Seg<'_>> = Vec::new();
    let mut suffix = "";
    while !rest.is_empty() {
        if let Some(v) = rest.strip_prefix('{') {
            let Some(close) = v.find('}') else {
                return Err(format!("unmatched variable bracket in {template:?}"));
            };
            let (inner, after) = (&v[..close], &v[close + 1..]);
            let (name, pat) = match inner.split_once('=') {
                Some((n, p)) => (n, Some(p)),
                None => (inner, None),
            };
            let ident = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ident {
                return Err(format!("invalid variable name {name:?}"));
            }
            let mut parts = Vec::new();
            if let Some(mut p) = pat {
                if p.is_empty() {
                    return Err(format!("empty variable match in {template:?}"));
                }
                while !p.is_empty() {
                    let (x, r) = part(p)?;
                    parts.push(x);
                    p = r;
                    if !p.is_empty() {
                        if !p.starts_with('/') || p.len() == 1 {
                            return Err(format!("invalid variable match {p:?}"));
                        }
                        p = &p[1..];
                    }
                }
            }
            segs.push(Seg::Var(name, parts));
            rest = after;
        } else {
            let (x, r) = part(rest)?;
            segs.push(Seg::Part(x));
            rest = r;
        }
        if rest.is_empty() {
            break;
        }
        if rest == "/" {
            // A trailing `/`: an empty last segment.
            segs.push(Seg::Part(Part::Lit("")));
            break;
        }
        if let Some(r) = rest.strip_prefix('/') {
            rest = r;
            continue;
        }
        // Text right after an operator or variable: a suffix, only at the very end.
        let end = rest.find('/').unwrap_or(rest.len());
        if !literal_ok(&rest[..end]) {
            return Err(format!("invalid literal {:?}", &rest[..end]));
        }
        if end != rest.len() {
            return Err(format!("{template:?}: a suffix must end the template"));
        }
        suffix = rest;
        break;
    }
    // Envoy's limits on variables, and no operator after a `**`.
    let names: Vec<&str> = segs
        .iter()
        .filter_map(|s| match s {
            Seg::Var(n, _) => Some(*n),
            Seg::Part(_) => None,
        })
        .collect();
    if names.len() > 5 {
        return Err(format!("{template:?} has more than 5 variables"));
    }
    for (i, n) in names.iter().enumerate() {
        if n.len() > 16 {
            return Err(format!("variable name {n:?} is longer than 16"));
        }
        if names[..i].contains(n) {
            return Err(format!("repeated variable name {n:?}"));
        }
    }
    let mut seen_text = false;
    for s in &segs {
        let ops: Vec<Op> = match s {
            Seg::Part(Part::Op(op)) => vec![*op],
            Seg::Part(Part::Lit(_)) => vec![],
            // A variable without a match is a `*`.
            Seg::Var(_, parts) if parts.is_empty() => vec![Op::Path],
            Seg::Var(_, parts) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Op(op) => Some(*op),
                    Part::Lit(_) => None,
                })
                .collect(),
        };
        for op in ops {
            if seen_text {
                return Err(format!("{template:?}: an operator after `**`"));
            }
            seen_text = op == Op::Text;
        }
    }
    let re: Vec<String> = segs
        .iter()
        .map(|s| match s {
            Seg::Part(p) => part_re(p),
            Seg::Var(n, parts) if parts.is_empty() => format!("(?P<{n}>{})", glob(Op::Path)),
            Seg::Var(n, parts) => format!(
                "(?P<{n}>{})",
                parts.iter().map(part_re).collect::<Vec<_>>().join("/")
            ),
        })
        .collect();
    Ok(format!("/{}{}", re.join("/"), escape(suffix)))
}

fn principal(
    p: &rbac_pb::Principal,
    scope: Scope,
    ctx: &Ctx<'_>,
    at: &str,
) -> Result<Principal, TranslateError> {
    use rbac_pb::principal::Identifier as I;
    let list = |s: &rbac_pb::principal::Set, f: &str| {
        s.ids
            .iter()
            .enumerate()
            .map(|(i, x)| principal(x, scope, ctx, &format!("{at}.{f}.ids[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.identifier {
        Some(I::Any(b)) => Principal::Any(*b),
        Some(I::AndIds(s)) => Principal::AndIds(list(s, "and_ids")?),
        Some(I::OrIds(s)) => Principal::OrIds(list(s, "or_ids")?),
        Some(I::NotId(n)) => {
            Principal::NotId(Box::new(principal(n, scope, ctx, &format!("{at}.not_id"))?))
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
        Some(I::Header(h)) => {
            http_only(scope, ctx, at, "header")?;
            Principal::Header(header(h, ctx, &format!("{at}.header"))?)
        }
        Some(I::Metadata(m)) => {
            http_only(scope, ctx, at, "metadata")?;
            Principal::Metadata(metadata_match(m, ctx, &format!("{at}.metadata"))?)
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

    /// istiod's `connection.sni`: `requested_server_name`, in the network filter too.
    #[test]
    fn requested_server_name_translates() {
        use matcher_pb::string_matcher::MatchPattern as P;
        let sni = rbac_pb::Permission {
            rule: Some(rbac_pb::permission::Rule::RequestedServerName(
                matcher_pb::StringMatcher {
                    match_pattern: Some(P::Suffix(".svc".into())),
                    ignore_case: false,
                },
            )),
        };
        let r = network(&filter(sni, by_suffix("x")), &ctx(), "f").unwrap();
        match &r.rules.unwrap().policies[0].permissions[0] {
            Permission::RequestedServerName(m) => {
                assert_eq!(m.regex.as_deref(), Some(".*\\.svc"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn http_rules_translate_with_istiods_case_insensitive_authority() {
        use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
        use matcher_pb::string_matcher::MatchPattern as P;
        let sm = |p: P, ignore_case: bool| matcher_pb::StringMatcher {
            match_pattern: Some(p),
            ignore_case,
        };
        let authority = rbac_pb::Permission {
            rule: Some(rbac_pb::permission::Rule::Header(HeaderMatcher {
                name: ":authority".into(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    sm(P::Suffix(".suffix.com".into()), true),
                )),
                ..Default::default()
            })),
        };
        let path = rbac_pb::Permission {
            rule: Some(rbac_pb::permission::Rule::UrlPath(
                matcher_pb::PathMatcher {
                    rule: Some(matcher_pb::path_matcher::Rule::Path(sm(
                        P::Prefix("/pkg.".into()),
                        false,
                    ))),
                },
            )),
        };
        let and = rbac_pb::Permission {
            rule: Some(rbac_pb::permission::Rule::AndRules(
                rbac_pb::permission::Set {
                    rules: vec![authority, path],
                },
            )),
        };
        let f = pack_any(HttpRbac {
            rules: Some(rbac_pb::Rbac {
                policies: [(
                    "p".to_string(),
                    rbac_pb::Policy {
                        permissions: vec![and.clone()],
                        principals: vec![by_suffix("/sa/a")],
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            }),
            rules_stat_prefix: "r_".into(),
            ..Default::default()
        });
        let r = http(&f, "inbound_0.0.0.0_80", &ctx(), "f").unwrap();
        assert_eq!(r.stat_prefix, "http.inbound_0.0.0.0_80.");
        assert_eq!(r.rules_stat_prefix, "r_");
        let Permission::AndRules(l) = &r.rules.unwrap().policies[0].permissions[0] else {
            panic!()
        };
        match &l[0] {
            Permission::Header(h) => {
                assert_eq!(h.name, ":authority");
                assert_eq!(h.regex.as_deref(), Some(r"(?i:.*\.suffix\.com)"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            l[1],
            Permission::UrlPath(config::StringMatch {
                prefix: Some("/pkg.".into()),
                ..Default::default()
            })
        );
        // The same rule in the network filter: NACKed, naming the rule.
        let e = network(&filter(and, by_suffix("x")), &ctx(), "f")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("and_rules.rules[0]") && e.contains("HTTP rbac filter"),
            "{e}"
        );
    }

    /// Envoy's `uri_template` paths as regexes: istiod's shapes (its golden
    /// `allow-path-out.yaml`: `/path/template/*`, `/**/path/template`), variables, a suffix,
    /// and the templates Envoy refuses.
    #[test]
    fn uri_templates_match_as_envoys() {
        let full = |t: &str| {
            let re = uri_template_regex(t).unwrap();
            regex::Regex::new(&format!("^(?:{re})$")).unwrap()
        };
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "/path/template/*",
                &["/path/template/a", "/path/template/a.b~c%20"],
                &["/path/template/", "/path/template/a/b", "/path/templateX/a"],
            ),
            (
                "/**/path/template",
                &[
                    "//path/template",
                    "/a/path/template",
                    "/a/b/c/path/template",
                ],
                &["/path/template", "/a/path/template/x"],
            ),
            ("/a/**", &["/a/", "/a/b", "/a/b/c/"], &["/a", "/b/c"]),
            ("/*/b", &["/x/b"], &["//b", "/x/y/b"]),
            (
                "/v/{id}/{rest=x/**}",
                &["/v/7/x/", "/v/7/x/y/z"],
                &["/v/7/y/z", "/v//x/y"],
            ),
            (
                "/files/*.json",
                &["/files/a.json"],
                &["/files/.json", "/files/ajson"],
            ),
            ("/a+b/$(c)", &["/a+b/$(c)"], &["/aab/$(c)", "/a+b/c"]),
            ("/a/", &["/a/"], &["/a", "/a/b"]),
        ];
        for (t, yes, no) in cases {
            let re = full(t);
            for p in *yes {
                assert!(re.is_match(p), "{t} should match {p} ({re})");
            }
            for p in *no {
                assert!(!re.is_match(p), "{t} should not match {p} ({re})");
            }
        }
        for bad in [
            "a/b",
            "/a/**/*",
            "/**/{x}",
            "/a{b}",
            "/{1x}",
            "/{x}/{x}",
            "/{x=}",
            "/*x/y",
            "/a//b",
            "/a b",
            "/{a}/{b}/{c}/{d}/{e}/{f}",
            "/{abcdefghijklmnopq}",
        ] {
            assert!(uri_template_regex(bad).is_err(), "{bad} should be refused");
        }
    }
}
