//! Apache Dubbo provider URLs as ZooKeeper node names: percent-decoding, parsing into an
//! endpoint with its metadata, and building the URL ringside registers.

use std::net::SocketAddr;

use config::EndpointMetadata;

/// One provider node, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// The URL's scheme (`dubbo`, `tri`, ...).
    pub protocol: String,
    pub addr: SocketAddr,
    pub meta: EndpointMetadata,
}

/// Why a node name is not a usable provider.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("not a provider URL: {0}")]
    Invalid(String),
    /// `enabled=false`, `weight=0` or a category other than providers: valid, no traffic.
    #[error("provider takes no traffic ({0})")]
    NoTraffic(&'static str),
}

/// Percent-decodes `s` (`+` is a space, as `URLEncoder` writes one).
pub fn decode(s: &str) -> Result<String, Skip> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Skip::Invalid(format!("bad escape at byte {i}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Skip::Invalid("not UTF-8 once decoded".into()))
}

/// Percent-encodes everything but unreserved characters (`URLEncoder.encode` compatible for
/// the characters URLs contain).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'*') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Parses a decoded provider URL `proto://host:port/path?k=v&...` for `interface`.
pub fn parse(url: &str, interface: &str) -> Result<Provider, Skip> {
    let (protocol, rest) = url
        .split_once("://")
        .ok_or_else(|| Skip::Invalid("no scheme".into()))?;
    // `host:port/path?query`, `host:port?query` (sofa-rpc-node writes no path) or `host:port`.
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    // user:password@ is allowed by Dubbo's URL; the address is after it.
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let addr: SocketAddr = hostport.parse().map_err(|_| {
        Skip::Invalid(format!(
            "{hostport:?} is not ip:port (host names are not resolved)"
        ))
    })?;
    if addr.port() == 0 {
        return Err(Skip::Invalid("port 0".into()));
    }
    let mut meta = EndpointMetadata::default();
    let mut url_interface = None;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "version" => meta.version = v.to_string(),
            "group" => meta.group = v.to_string(),
            "application" => meta.application = v.to_string(),
            "methods" => meta.methods = v.to_string(),
            "interface" => url_interface = Some(v),
            // Apache Dubbo's tag routing label (docs/governance.md#traffic-labels).
            "dubbo.tag" if v.len() > config::TAG_BYTES_MAX => {
                return Err(Skip::Invalid(format!("dubbo.tag of {} bytes", v.len())))
            }
            "dubbo.tag" => meta.tag = v.to_string(),
            "weight" => {
                meta.weight = v
                    .parse()
                    .map_err(|_| Skip::Invalid(format!("weight {v:?}")))?
            }
            "enabled" if v != "true" => return Err(Skip::NoTraffic("enabled=false")),
            "disabled" if v == "true" => return Err(Skip::NoTraffic("disabled=true")),
            "category" if v != "providers" => return Err(Skip::NoTraffic("not a provider")),
            _ => {}
        }
    }
    let named = url_interface.unwrap_or(path);
    if !named.is_empty() && named != interface {
        return Err(Skip::Invalid(format!(
            "interface {named:?} under {interface:?}"
        )));
    }
    if meta.weight == 0 {
        return Err(Skip::NoTraffic("weight=0"));
    }
    Ok(Provider {
        protocol: protocol.to_string(),
        addr,
        meta,
    })
}

/// The provider URL ringside registers for a local service (Apache Dubbo's parameters; `pid`
/// and `timestamp` keep the nodes of two processes apart during a hot upgrade).
pub fn provider_url(s: &config::RegisteredService, addr: SocketAddr, side: &str) -> String {
    let mut q: Vec<(&str, String)> = vec![
        ("anyhost", "false".into()),
        ("interface", s.interface.clone()),
        ("side", side.into()),
        ("dubbo", "2.0.2".into()),
        ("pid", std::process::id().to_string()),
        (
            "timestamp",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                .to_string(),
        ),
    ];
    if !s.methods.is_empty() {
        q.push(("methods", s.methods.join(",")));
    }
    if let Some(a) = &s.application {
        q.push(("application", a.clone()));
    }
    if let Some(v) = &s.version {
        q.push(("version", v.clone()));
    }
    if let Some(g) = &s.group {
        q.push(("group", g.clone()));
    }
    if let Some(w) = s.weight {
        q.push(("weight", w.to_string()));
    }
    if side == "consumer" {
        q.push(("category", "consumers".into()));
    }
    q.sort();
    let query: Vec<String> = q.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let scheme = if side == "consumer" {
        "consumer"
    } else {
        "dubbo"
    };
    format!("{scheme}://{addr}/{}?{}", s.interface, query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: &str = "com.ringside.test.EchoService";

    #[test]
    fn decodes_an_apache_dubbo_provider_node() {
        let node = "dubbo%3A%2F%2F10.0.0.7%3A20880%2Fcom.ringside.test.EchoService%3Fanyhost%3Dtrue%26application%3Ddemo%26interface%3Dcom.ringside.test.EchoService%26methods%3Decho%2Cadd%26version%3D2.0.0%26group%3Dg1%26weight%3D50";
        let p = parse(&decode(node).unwrap(), I).unwrap();
        assert_eq!(p.protocol, "dubbo");
        assert_eq!(p.addr, "10.0.0.7:20880".parse().unwrap());
        assert_eq!(p.meta.version, "2.0.0");
        assert_eq!(p.meta.group, "g1");
        assert_eq!(p.meta.weight, 50);
        assert_eq!(p.meta.application, "demo");
        assert_eq!(p.meta.methods, "echo,add");
        assert_eq!(p.meta.tag, "");
    }

    #[test]
    fn reads_the_dubbo_tag_of_a_provider() {
        let url = "dubbo://10.0.0.7:20880/com.ringside.test.EchoService?interface=com.ringside.test.EchoService&dubbo.tag=gray";
        assert_eq!(parse(url, I).unwrap().meta.tag, "gray");
        let long = format!("dubbo://10.0.0.7:20880?dubbo.tag={}", "x".repeat(200));
        assert!(matches!(parse(&long, I), Err(Skip::Invalid(_))));
    }

    #[test]
    fn decodes_a_sofa_rpc_node_provider_node_without_a_path() {
        let url = "dubbo://127.0.0.1:42991?startTime=1&pid=2&weight=100&protocol=dubbo&interface=com.ringside.test.EchoService&version=1.0.0&group=SOFA";
        let p = parse(url, I).unwrap();
        assert_eq!(p.addr, "127.0.0.1:42991".parse().unwrap());
        assert_eq!(
            (p.meta.version.as_str(), p.meta.group.as_str()),
            ("1.0.0", "SOFA")
        );
    }

    #[test]
    fn disabled_zero_weight_and_foreign_nodes_take_no_traffic() {
        let base = "dubbo://127.0.0.1:1/com.ringside.test.EchoService?version=1";
        assert_eq!(
            parse(&format!("{base}&enabled=false"), I),
            Err(Skip::NoTraffic("enabled=false"))
        );
        assert_eq!(
            parse(&format!("{base}&weight=0"), I),
            Err(Skip::NoTraffic("weight=0"))
        );
        assert!(matches!(
            parse("dubbo://host.example:1/x", I),
            Err(Skip::Invalid(_))
        ));
        assert!(matches!(
            parse("dubbo://127.0.0.1:1/com.other.Service", I),
            Err(Skip::Invalid(_))
        ));
        assert!(matches!(decode("%zz"), Err(Skip::Invalid(_))));
    }

    #[test]
    fn registered_urls_round_trip_through_the_parser() {
        let s = config::RegisteredService {
            interface: I.into(),
            version: Some("1.0.0".into()),
            group: Some("g".into()),
            methods: vec!["echo".into(), "add".into()],
            application: Some("app".into()),
            weight: Some(7),
            listener: "in".into(),
            advertise: None,
            local_port: 1,
            local_host: std::net::IpAddr::from([127, 0, 0, 1]),
            health_interval_ms: 1000,
            register_consumer: false,
        };
        let url = provider_url(&s, "127.0.0.1:20881".parse().unwrap(), "provider");
        let p = parse(&decode(&encode(&url)).unwrap(), I).unwrap();
        assert_eq!(p.addr, "127.0.0.1:20881".parse().unwrap());
        assert_eq!(
            (
                p.meta.version.as_str(),
                p.meta.group.as_str(),
                p.meta.weight
            ),
            ("1.0.0", "g", 7)
        );
        assert_eq!(p.meta.methods, "echo,add");
    }
}
