//! Filter chain matching, as Envoy's `FilterChainManagerImpl::findFilterChain`: which of a
//! listener's filter chains takes a connection, from its destination and source addresses and
//! what inspecting its first bytes found (transport protocol, application protocols, server
//! name). Criteria are tried level by level in Envoy's order; at each level the most specific
//! value that fits wins and only the chains with it go on to the next level (no coming back:
//! when chains name the connection's destination port and none of them fits, the port-less
//! chains are not tried either; the default chain takes it). Compiled once per config; a
//! match allocates nothing.

use std::net::{IpAddr, SocketAddr};

use crate::config::{self, SourceType};

/// What chain matching knows of a connection.
pub struct ConnInfo<'a> {
    /// The local address (after an original destination was restored).
    pub dst: SocketAddr,
    /// The peer.
    pub src: SocketAddr,
    /// TLS SNI; empty for none.
    pub server_name: &'a [u8],
    /// `raw_buffer` or `tls`.
    pub transport: &'a str,
    /// From inspecting the first bytes (`h2c`, `http/1.1`, ...; TLS ALPN).
    pub application_protocols: &'a [&'a str],
}

/// An IP range; `None` address: the chain gives none (matches any, as Envoy's implicit
/// `0.0.0.0/0` and `::/0`, with length 0).
#[derive(Clone, Copy, Debug)]
pub(super) struct Cidr {
    ip: IpAddr,
    len: u8,
}

impl Cidr {
    /// A validated config range (`a.b.c.d/len`); `None` for one that does not parse.
    pub(super) fn parse(s: &str) -> Option<Cidr> {
        config::parse_cidr(s).ok().map(|(ip, len)| Cidr { ip, len })
    }

    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// One chain's criteria.
#[derive(Debug)]
pub struct Match {
    destination_port: Option<u16>,
    prefix_ranges: Vec<Cidr>,
    server_names: Vec<Box<[u8]>>,
    transport: Option<Box<str>>,
    application_protocols: Vec<Box<str>>,
    direct_source_ranges: Vec<Cidr>,
    source_type: SourceType,
    source_ranges: Vec<Cidr>,
    source_ports: Vec<u16>,
}

fn cidrs(list: &[String]) -> Vec<Cidr> {
    // Validated config: a range that does not parse is a bug, and matches nothing.
    list.iter()
        .filter_map(|r| config::parse_cidr(r).ok())
        .map(|(ip, len)| Cidr { ip, len })
        .collect()
}

impl Match {
    pub fn new(m: &config::ChainMatch) -> Match {
        Match {
            destination_port: m.destination_port.filter(|p| *p != 0),
            prefix_ranges: cidrs(&m.prefix_ranges),
            server_names: m
                .server_names
                .iter()
                .map(|n| n.to_ascii_lowercase().into_bytes().into())
                .collect(),
            transport: m.transport_protocol.as_deref().map(Into::into),
            application_protocols: m
                .application_protocols
                .iter()
                .map(|p| p.as_str().into())
                .collect(),
            direct_source_ranges: cidrs(&m.direct_source_prefix_ranges),
            source_type: m.source_type,
            source_ranges: cidrs(&m.source_prefix_ranges),
            source_ports: m.source_ports.clone(),
        }
    }

    /// Whether any chain needs the transport protocol or application protocols (which take
    /// the connection's first bytes).
    pub fn inspects(&self) -> (bool, bool) {
        (
            self.transport.is_some(),
            !self.application_protocols.is_empty(),
        )
    }
}

/// The longest of `ranges` that holds `ip` (0 for no ranges: any); `None`: none holds it.
fn longest(ranges: &[Cidr], ip: IpAddr) -> Option<u8> {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| r.len)
        .max()
}

/// A set of chain indices (at most [`CHAINS_MAX`]).
type Set = u128;

/// The most chains one listener may have (config validation refuses more).
pub const CHAINS_MAX: usize = 128;

fn each(set: Set, chains: &[Match]) -> impl Iterator<Item = (usize, &Match)> {
    chains
        .iter()
        .enumerate()
        .filter(move |(i, _)| set & (1 << i) != 0)
}

/// Of `set`, the chains whose key is the most specific (`rank` of `Some` higher, `None`: the
/// chain does not fit).
fn narrow(set: Set, chains: &[Match], rank: impl Fn(&Match) -> Option<u32>) -> Set {
    let best = each(set, chains).filter_map(|(_, m)| rank(m)).max();
    let Some(best) = best else { return 0 };
    each(set, chains)
        .filter(|(_, m)| rank(m) == Some(best))
        .fold(0, |s, (i, _)| s | 1 << i)
}

/// The chain that takes a connection, if one does.
pub fn select(chains: &[Match], c: &ConnInfo<'_>) -> Option<usize> {
    let all: Set = if chains.len() >= CHAINS_MAX {
        Set::MAX
    } else {
        (1 << chains.len()) - 1
    };
    let port = c.dst.port();
    let exact = each(all, chains)
        .filter(|(_, m)| m.destination_port == Some(port))
        .fold(0, |s, (i, _)| s | 1 << i);
    // Chains for the exact port decide alone: when none of them fits, Envoy takes the default
    // chain, not the port-less chains.
    if exact != 0 {
        return below_port(exact, chains, c);
    }
    let any_port = each(all, chains)
        .filter(|(_, m)| m.destination_port.is_none())
        .fold(0, |s, (i, _)| s | 1 << i);
    below_port(any_port, chains, c)
}

fn below_port(set: Set, chains: &[Match], c: &ConnInfo<'_>) -> Option<usize> {
    let dst = c.dst.ip().to_canonical();
    let src = c.src.ip().to_canonical();
    let ip_rank = |ranges: &[Cidr], ip: IpAddr| longest(ranges, ip).map(u32::from);
    let set = narrow(set, chains, |m| ip_rank(&m.prefix_ranges, dst));
    let set = narrow(set, chains, |m| {
        server_name_rank(&m.server_names, c.server_name)
    });
    let set = narrow(set, chains, |m| match &m.transport {
        Some(t) if &**t == c.transport => Some(1),
        Some(_) => None,
        None => Some(0),
    });
    let set = narrow(set, chains, |m| {
        if m.application_protocols.is_empty() {
            return Some(0);
        }
        // Envoy tries the connection's protocols in its order; an earlier one ranks higher.
        let n = c.application_protocols.len() as u32;
        c.application_protocols
            .iter()
            .position(|p| m.application_protocols.iter().any(|q| &**q == *p))
            .map(|k| n - k as u32)
    });
    let set = narrow(set, chains, |m| ip_rank(&m.direct_source_ranges, src));
    let local = src.is_loopback() || src == dst;
    let set = narrow(set, chains, |m| match m.source_type {
        SourceType::Any => Some(0),
        SourceType::Local if local => Some(1),
        SourceType::External if !local => Some(1),
        _ => None,
    });
    let set = narrow(set, chains, |m| ip_rank(&m.source_ranges, src));
    let sport = c.src.port();
    let set = narrow(set, chains, |m| {
        if m.source_ports.is_empty() {
            Some(0)
        } else {
            m.source_ports.contains(&sport).then_some(1)
        }
    });
    each(set, chains).map(|(i, _)| i).next()
}

/// Envoy's server name level: the exact name, else the longest `*.suffix` wildcard, else the
/// chains without server names.
fn server_name_rank(names: &[Box<[u8]>], sni: &[u8]) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    if sni.is_empty() {
        return None;
    }
    let lower = |a: &[u8], b: &[u8]| a.eq_ignore_ascii_case(b);
    if names.iter().any(|n| lower(n, sni)) {
        return Some(u32::MAX);
    }
    names
        .iter()
        .filter_map(|n| n.strip_prefix(b"*"))
        .filter(|suffix| {
            sni.len() > suffix.len() && lower(&sni[sni.len() - suffix.len()..], suffix)
        })
        .map(|suffix| suffix.len() as u32)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(yaml: &str) -> Match {
        Match::new(&serde_yaml::from_str(yaml).unwrap())
    }

    fn conn<'a>(dst: &str, src: &str, transport: &'a str, alpn: &'a [&'a str]) -> ConnInfo<'a> {
        ConnInfo {
            dst: dst.parse().unwrap(),
            src: src.parse().unwrap(),
            server_name: b"",
            transport,
            application_protocols: alpn,
        }
    }

    /// Istio's virtualInbound (mTLS off) plus a TLS chain and source criteria.
    #[test]
    fn virtual_inbound_chains_as_envoy_picks_them() {
        let chains = [
            chain("{destination_port: 15006}"),
            chain("{prefix_ranges: [0.0.0.0/0], transport_protocol: raw_buffer, application_protocols: [http/1.1, h2c]}"),
            chain("{prefix_ranges: [0.0.0.0/0], transport_protocol: raw_buffer}"),
            chain("{destination_port: 80, transport_protocol: raw_buffer}"),
            chain("{prefix_ranges: [0.0.0.0/0], transport_protocol: tls}"),
            chain("{destination_port: 9000, prefix_ranges: [10.1.0.0/16], source_prefix_ranges: [10.9.0.0/16]}"),
            chain("{destination_port: 9000, prefix_ranges: [10.1.2.0/24]}"),
        ];
        let pick = |dst, src, t, alpn: &[&str]| select(&chains, &conn(dst, src, t, alpn));
        let peer = "10.0.0.9:5000";
        assert_eq!(pick("10.0.0.1:15006", peer, "raw_buffer", &[]), Some(0));
        assert_eq!(pick("10.0.0.1:8080", peer, "raw_buffer", &["h2c"]), Some(1));
        assert_eq!(pick("10.0.0.1:8080", peer, "raw_buffer", &[]), Some(2));
        assert_eq!(pick("10.0.0.1:80", peer, "raw_buffer", &["h2c"]), Some(3));
        assert_eq!(
            pick("10.0.0.1:80", peer, "tls", &[]),
            None,
            "port 80's chains decide alone"
        );
        assert_eq!(pick("10.0.0.1:8080", peer, "tls", &["h2"]), Some(4));
        assert_eq!(
            pick("[::1]:8080", peer, "raw_buffer", &[]),
            None,
            "no IPv6 range"
        );
        assert_eq!(
            pick("10.1.2.3:9000", "10.9.0.1:1", "raw_buffer", &[]),
            Some(6),
            "longest destination range wins first"
        );
        assert_eq!(
            pick("10.1.3.3:9000", "10.9.0.1:1", "raw_buffer", &[]),
            Some(5)
        );
        // The /16 chain wants another source: nothing at port 9000 (the default chain's).
        assert_eq!(pick("10.1.3.3:9000", "10.8.0.1:1", "raw_buffer", &[]), None);
    }

    #[test]
    fn later_levels_do_not_come_back() {
        // The most specific destination range wins even when its transport does not fit.
        let chains = [
            chain("{prefix_ranges: [10.0.0.0/8], transport_protocol: tls}"),
            chain("{transport_protocol: raw_buffer}"),
        ];
        let c = conn("10.0.0.1:1", "1.2.3.4:5", "raw_buffer", &[]);
        assert_eq!(select(&chains, &c), None);
        let c = conn("11.0.0.1:1", "1.2.3.4:5", "raw_buffer", &[]);
        assert_eq!(select(&chains, &c), Some(1));
    }

    #[test]
    fn source_type_and_ports_and_server_names() {
        let chains = [
            chain("{source_type: local}"),
            chain("{source_type: external, source_ports: [7]}"),
            chain("{source_type: external}"),
        ];
        let pick = |src| select(&chains, &conn("10.0.0.1:80", src, "raw_buffer", &[]));
        assert_eq!(pick("127.0.0.1:7"), Some(0));
        assert_eq!(pick("10.0.0.1:7"), Some(0), "same IP is local");
        assert_eq!(pick("10.0.0.2:7"), Some(1));
        assert_eq!(pick("10.0.0.2:8"), Some(2));
        assert_eq!(server_name_rank(&[], b""), Some(0));
        let names: Vec<Box<[u8]>> = vec![
            b"*.example.com".to_vec().into(),
            b"*.b.example.com".to_vec().into(),
        ];
        assert_eq!(server_name_rank(&names, b""), None);
        assert_eq!(server_name_rank(&names, b"a.B.example.com"), Some(14));
        assert_eq!(server_name_rank(&names, b"example.com"), None);
    }
}
