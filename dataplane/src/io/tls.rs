//! TLS of listeners and clusters (docs/security.md): the rustls configs built from their config
//! when a config is applied (certificate files are read on the control thread, never on a
//! shard), and [`TlsConn`], the TLS connection type the filters serve like any [`Conn`]. A
//! plaintext connection never meets any of this: TLS is chosen once per connection, when it
//! is accepted (a listener with `tls`) or opened (a cluster with `tls`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shard::monoio::net::TcpStream;
use tls::rustls;
use tls::rustls::pki_types::ServerName;

use super::Conn;

/// A TLS connection over a kernel socket.
pub type TlsConn = tls::TlsStream<TcpStream>;

/// How long a handshake may take, either side, before the connection is closed (the peer sent
/// too little, or nothing).
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// How long a PERMISSIVE listener waits for a connection's first byte before serving it as
/// plaintext (a server-speaks-first peer sends nothing).
pub const PEEK_TIMEOUT_MS: u64 = 5_000;

/// A listener's TLS termination.
pub struct ServerTls {
    /// `Err`: not ready (an SDS secret has not arrived): every handshake fails with this.
    /// With it, the same config without ALPN, for clients whose ALPN list has nothing in
    /// common with the listener's (served without ALPN, as Envoy does).
    pub config: Result<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>), String>,
    pub mode: config::TlsMode,
    /// Our certificate's SPIFFE id, if it has one (known once the certificate is).
    pub principal: Option<Arc<str>>,
    /// Our certificate's URI SANs (`x-forwarded-client-cert`'s `By`).
    pub uris: Arc<[String]>,
}

/// A cluster's TLS origination.
pub struct ClientTls {
    /// `Err`: not ready (an SDS secret has not arrived): every connect fails with this.
    pub config: Result<Arc<rustls::ClientConfig>, String>,
    /// The SNI; `None`: the endpoint's IP address (no SNI is sent for an address).
    pub sni: Option<ServerName<'static>>,
    /// Our certificate's SPIFFE id, if it has one (Istio's `source_principal` of outbound
    /// calls over this TLS: istio-proxy's `uriSanLocalCertificate`).
    pub principal: Option<Arc<str>>,
}

/// One SDS secret as received: PEM text of a certificate chain and its key
/// (`tls_certificate`), or of a trust bundle (`validation_context`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secret {
    pub cert_chain: Option<Vec<u8>>,
    pub private_key: Option<Vec<u8>>,
    pub trusted_ca: Option<Vec<u8>>,
}

/// The SDS secrets held now, by (server, name) (`None`: over ADS).
pub type Secrets = std::collections::HashMap<(Option<String>, String), Arc<Secret>>;

/// Where the PEM of a certificate or a trust bundle is: a file, or an SDS secret (which may
/// not be there yet).
enum Source<'a> {
    File(&'a str),
    Sds(&'a config::SdsSecret, Option<&'a Secret>),
}

impl Source<'_> {
    fn describe(&self) -> String {
        match self {
            Source::File(p) => (*p).to_string(),
            Source::Sds(s, _) => sds_name(s),
        }
    }
}

/// `sds:NAME` (over ADS) or `sds:SERVER/NAME`, as `/certs` shows a secret.
fn sds_name(s: &config::SdsSecret) -> String {
    match &s.server {
        Some(server) => format!("sds:{server}/{}", s.name),
        None => format!("sds:{}", s.name),
    }
}

/// Why a TLS config of an SDS secret is not built yet, or `Err` for a file that is bad.
enum Missing {
    /// An SDS secret not received (or without the part needed): the listener or cluster waits.
    Waiting(String),
    /// A file (or an SDS secret's PEM) that does not load.
    Bad(String),
}

fn secret<'a>(secrets: &'a Secrets, s: &config::SdsSecret) -> Option<&'a Secret> {
    secrets
        .get(&(s.server.clone(), s.name.clone()))
        .map(|s| &**s)
}

/// The PEM of a certificate chain (`want_key`: and its key) or a trust bundle.
fn pem<'a>(src: &'a Source<'a>, part: Part) -> Result<tls::Pem<'a>, Missing> {
    match src {
        Source::File(p) => Ok(tls::Pem::File(std::path::Path::new(p))),
        Source::Sds(s, got) => {
            let bytes = got.and_then(|g| match part {
                Part::Chain => g.cert_chain.as_deref(),
                Part::Key => g.private_key.as_deref(),
                Part::Ca => g.trusted_ca.as_deref(),
            });
            match bytes {
                Some(pem) => Ok(tls::Pem::Bytes { name: &s.name, pem }),
                None => Err(Missing::Waiting(format!(
                    "waiting for SDS secret {:?}{}",
                    s.name,
                    s.server
                        .as_ref()
                        .map(|v| format!(" from {v:?}"))
                        .unwrap_or_default()
                ))),
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Part {
    Chain,
    Key,
    Ca,
}

fn params(p: &config::TlsParams) -> tls::Params {
    tls::Params {
        tls13_only: p.min_version == Some(config::TlsVersion::Tls13),
        tls12_only: p.max_version == Some(config::TlsVersion::Tls12),
        cipher_suites: p.cipher_suites.clone(),
    }
}

fn sans(list: &[config::SanMatcher]) -> Vec<tls::SanMatch> {
    list.iter()
        .map(|m| match m {
            config::SanMatcher::Exact(s) => tls::SanMatch::Exact(s.clone()),
            config::SanMatcher::Prefix { prefix } => tls::SanMatch::Prefix(prefix.clone()),
        })
        .collect()
}

/// A cluster's transport sockets, by the index `config::Cluster::transport_socket` gives an
/// endpoint: 0 its `tls`, `k` its `transport_socket_matches[k - 1]`'s (`None`: plaintext).
pub type ClusterSockets = Arc<[Option<Arc<ClientTls>>]>;

/// The TLS of every listener and cluster of one config, by index (`None`: plaintext).
#[derive(Default)]
pub struct TlsSet {
    pub listeners: Vec<Option<Arc<ServerTls>>>,
    /// `None`: a cluster whose endpoints all get plaintext.
    pub clusters: Vec<Option<ClusterSockets>>,
    /// Every certificate file the config names, as loaded (for `/certs`).
    pub certs: Vec<CertFile>,
}

/// One certificate file or SDS secret of a listener or cluster, as it was loaded.
pub struct CertFile {
    /// `listener NAME` or `cluster NAME`.
    pub owner: String,
    /// `cert_chain` or `ca`.
    pub role: &'static str,
    /// The file, or `sds:NAME` / `sds:SERVER/NAME`.
    pub path: String,
    /// Empty for an SDS secret that has not arrived.
    pub certs: Vec<tls::CertSummary>,
}

impl TlsSet {
    /// Reads every certificate and key the config names, files or SDS `secrets`; the first
    /// problem with a file as `(field, message)`. A listener or cluster whose SDS secret is
    /// not in `secrets` gets a TLS that is not ready (handshakes fail) until a later load.
    pub fn load(c: &config::Config, secrets: &Secrets) -> Result<TlsSet, (String, String)> {
        let listeners = c
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.tls
                    .as_ref()
                    .map(|t| server(t, secrets).map(Arc::new))
                    .transpose()
                    .map_err(|e| (format!("listeners[{i}].tls"), e))
            })
            .collect::<Result<_, _>>()?;
        let clusters = c
            .clusters
            .iter()
            .enumerate()
            .map(|(i, cl)| {
                if !cl.has_tls() {
                    return Ok(None);
                }
                cl.transport_sockets()
                    .enumerate()
                    .map(|(k, t)| {
                        t.map(|t| client(t, secrets).map(Arc::new))
                            .transpose()
                            .map_err(|e| (socket_field(i, k), e))
                    })
                    .collect::<Result<ClusterSockets, _>>()
                    .map(Some)
            })
            .collect::<Result<_, _>>()?;
        let mut certs = Vec::new();
        let mut add = |owner: String, role, src: Source<'_>| -> Result<(), String> {
            let summary = match pem(&src, if role == "ca" { Part::Ca } else { Part::Chain }) {
                Ok(p) => tls::describe(p).map_err(|e| e.to_string())?,
                Err(_) => Vec::new(),
            };
            certs.push(CertFile {
                owner,
                role,
                path: src.describe(),
                certs: summary,
            });
            Ok(())
        };
        for (i, l) in c.listeners.iter().enumerate() {
            let Some(t) = &l.tls else { continue };
            let at = |e| (format!("listeners[{i}].tls"), e);
            let owner = format!("listener {}", l.name);
            add(
                owner.clone(),
                "cert_chain",
                chain_source(&t.certificate_sds, Some(&t.cert_chain), secrets),
            )
            .map_err(at)?;
            if let Some(ca) = ca_source(&t.ca_sds, t.ca.as_deref(), secrets) {
                add(owner, "ca", ca).map_err(at)?;
            }
        }
        for (i, cl) in c.clusters.iter().enumerate() {
            for (k, t) in cl.transport_sockets().enumerate() {
                let Some(t) = t else { continue };
                let at = |e| (socket_field(i, k), e);
                // A transport socket match: `cluster NAME/MATCH` (Istio: `tlsMode-istio`).
                let owner = match k {
                    0 => format!("cluster {}", cl.name),
                    k => format!(
                        "cluster {}/{}",
                        cl.name,
                        cl.transport_socket_matches[k - 1].name
                    ),
                };
                if t.cert_chain.is_some() || t.certificate_sds.is_some() {
                    add(
                        owner.clone(),
                        "cert_chain",
                        chain_source(&t.certificate_sds, t.cert_chain.as_ref(), secrets),
                    )
                    .map_err(at)?;
                }
                if let Some(ca) = ca_source(&t.ca_sds, Some(&t.ca), secrets) {
                    add(owner, "ca", ca).map_err(at)?;
                }
            }
        }
        Ok(TlsSet {
            listeners,
            clusters,
            certs,
        })
    }
}

/// The config field of cluster `i`'s transport socket `k`.
fn socket_field(i: usize, k: usize) -> String {
    match k {
        0 => format!("clusters[{i}].tls"),
        k => format!("clusters[{i}].transport_socket_matches[{}].tls", k - 1),
    }
}

fn chain_source<'a>(
    sds: &'a Option<config::SdsSecret>,
    file: Option<&'a String>,
    secrets: &'a Secrets,
) -> Source<'a> {
    match sds {
        Some(s) => Source::Sds(s, secret(secrets, s)),
        None => Source::File(file.map_or("", |f| f.as_str())),
    }
}

fn ca_source<'a>(
    sds: &'a Option<config::SdsSecret>,
    file: Option<&'a str>,
    secrets: &'a Secrets,
) -> Option<Source<'a>> {
    match (sds, file) {
        (Some(s), _) => Some(Source::Sds(s, secret(secrets, s))),
        (None, Some(f)) if !f.is_empty() => Some(Source::File(f)),
        _ => None,
    }
}

/// A file that does not load refuses the config (`Err`); an SDS secret that has not arrived
/// (or does not load) leaves the TLS not ready.
fn ready_or<T>(r: Result<T, Missing>) -> Result<Result<T, String>, String> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(Missing::Waiting(why)) => Ok(Err(why)),
        Err(Missing::Bad(why)) => Err(why),
    }
}

/// The SPIFFE id (the `spiffe://` URI SAN) of a DER certificate: Istio's principal.
pub fn spiffe_id(der: &[u8]) -> Option<String> {
    tls::x509::uri_sans(der)
        .into_iter()
        .find(|u| u.starts_with(b"spiffe://"))
        .and_then(|u| std::str::from_utf8(u).ok())
        .map(str::to_string)
}

fn server(t: &config::ListenerTls, secrets: &Secrets) -> Result<ServerTls, String> {
    let chain = chain_source(&t.certificate_sds, Some(&t.cert_chain), secrets);
    let key = match &t.certificate_sds {
        Some(s) => Source::Sds(s, secret(secrets, s)),
        None => Source::File(&t.private_key),
    };
    let ca = ca_source(&t.ca_sds, t.ca.as_deref(), secrets);
    let from_sds = t.certificate_sds.is_some() || t.ca_sds.is_some();
    let build = || -> Result<Arc<rustls::ServerConfig>, Missing> {
        let sans = sans(&t.subject_alt_names);
        let params = params(&t.params);
        tls::ServerSettings {
            cert_chain: pem(&chain, Part::Chain)?,
            private_key: pem(&key, Part::Key)?,
            ca: ca.as_ref().map(|c| pem(c, Part::Ca)).transpose()?,
            require_client_certificate: t.require_client_certificate,
            subject_alt_names: &sans,
            alpn: &t.alpn,
            params: &params,
            tickets: t.session_tickets.then_some(t.ticket_key_rotation_s),
        }
        .build()
        .map_err(|e| bad(e.to_string(), from_sds))
    };
    let config = ready_or(build())?.map(|c| {
        let plain = tls::without_alpn(&c);
        (c, plain)
    });
    // Our certificate's SPIFFE id (Istio's destination_principal on inbound calls).
    let leaf = pem(&chain, Part::Chain)
        .ok()
        .and_then(|p| tls::certs(p).ok())
        .and_then(|c| c.into_iter().next());
    let principal = leaf.as_ref().and_then(|c| spiffe_id(c)).map(Arc::from);
    let uris = leaf
        .as_ref()
        .map(|c| {
            tls::x509::uri_sans_iter(c)
                .map(|u| String::from_utf8_lossy(u).into_owned())
                .collect()
        })
        .unwrap_or_default();
    Ok(ServerTls {
        config,
        mode: t.mode,
        principal,
        uris,
    })
}

/// The TLS of the xDS client (`xds.tls`) to `server` (`host:port`): the trust bundle, the
/// server's SANs (DNS or URI, as Envoy's untyped `match_subject_alt_names` reads istiod's
/// certificate), the optional client certificate, ALPN `h2` (gRPC servers require it), SNI
/// only when `sni` is set. Files are read now: one that does not load is the error.
pub fn xds_tls(t: &config::XdsTls, server: &str) -> Result<xds::XdsTls, String> {
    let sans = sans(&t.subject_alt_names);
    let params = params(&t.params);
    let file = |field: &str, path: &str| -> Result<(), String> {
        std::fs::metadata(path)
            .map(|_| ())
            .map_err(|e| format!("xds.tls.{field}: {path}: {e}"))
    };
    file("ca", &t.ca)?;
    let config = tls::ClientSettings {
        cert_chain: t
            .cert_chain
            .as_deref()
            .map(|p| tls::Pem::File(std::path::Path::new(p))),
        private_key: t
            .private_key
            .as_deref()
            .map(|p| tls::Pem::File(std::path::Path::new(p))),
        ca: tls::Pem::File(std::path::Path::new(&t.ca)),
        subject_alt_names: &sans,
        san_kinds: tls::SanKinds::UriAndDns,
        alpn: &["h2".to_string()],
        sni: t.sni.is_some(),
        params: &params,
    }
    .build()
    .map_err(|e| format!("xds.tls: {e}"))?;
    // The name rustls is given: the SNI when set, else the server's host (not sent).
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    let name = t.sni.as_deref().unwrap_or(host).trim_matches(['[', ']']);
    let server_name = ServerName::try_from(name.to_string())
        .or_else(|_| ServerName::try_from("xds.local".to_string()))
        .map_err(|e| format!("xds.tls.sni: {name:?}: {e}"))?;
    Ok(xds::XdsTls {
        config,
        server_name,
    })
}

/// A certificate that does not load: from a file, a refused config; from SDS, a listener or
/// cluster that waits for a better secret.
fn bad(why: String, from_sds: bool) -> Missing {
    if from_sds {
        Missing::Waiting(format!("SDS secret: {why}"))
    } else {
        Missing::Bad(why)
    }
}

fn client(t: &config::ClusterTls, secrets: &Secrets) -> Result<ClientTls, String> {
    let chain = (t.cert_chain.is_some() || t.certificate_sds.is_some())
        .then(|| chain_source(&t.certificate_sds, t.cert_chain.as_ref(), secrets));
    let key = match (&t.certificate_sds, &t.private_key) {
        (Some(s), _) => Some(Source::Sds(s, secret(secrets, s))),
        (None, Some(k)) => Some(Source::File(k)),
        (None, None) => None,
    };
    let ca = ca_source(&t.ca_sds, Some(&t.ca), secrets);
    let from_sds = t.certificate_sds.is_some() || t.ca_sds.is_some();
    let build = || -> Result<Arc<rustls::ClientConfig>, Missing> {
        let sans = sans(&t.subject_alt_names);
        let params = params(&t.params);
        let Some(ca) = &ca else {
            return Err(Missing::Bad("no ca".into()));
        };
        tls::ClientSettings {
            cert_chain: chain.as_ref().map(|c| pem(c, Part::Chain)).transpose()?,
            private_key: key.as_ref().map(|k| pem(k, Part::Key)).transpose()?,
            ca: pem(ca, Part::Ca)?,
            subject_alt_names: &sans,
            alpn: &t.alpn,
            sni: true,
            san_kinds: tls::SanKinds::Uri,
            params: &params,
        }
        .build()
        .map_err(|e| bad(e.to_string(), from_sds))
    };
    let config = ready_or(build())?;
    let sni = t
        .sni
        .as_ref()
        .map(|s| ServerName::try_from(s.clone()).map_err(|e| format!("sni {s:?}: {e}")))
        .transpose()?;
    // Our certificate's SPIFFE id (Istio's source_principal on outbound calls).
    let principal = chain
        .as_ref()
        .and_then(|c| pem(c, Part::Chain).ok())
        .and_then(|p| tls::certs(p).ok())
        .and_then(|c| spiffe_id(c.first()?))
        .map(Arc::from);
    Ok(ClientTls {
        config,
        sni,
        principal,
    })
}

/// ALPN protocols a TLS upstream connection offers in place of its cluster's `alpn` (a
/// listener's `alpn_override`, Istio's `istio.alpn`); `None`: the cluster's. Pooled
/// connections are reused only for the same ([`same_alpn`]).
pub type AlpnOverride = Option<Arc<[String]>>;

/// Whether two ALPN overrides are the same list (the same `Arc` first: the usual case).
pub fn same_alpn(a: &AlpnOverride, b: &AlpnOverride) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a[..] == b[..],
        _ => false,
    }
}

/// Connects to `addr` and completes a client handshake (the caller bounds the whole by its
/// connect timeout), offering `alpn` in place of the cluster's ALPN when given.
pub async fn connect(
    addr: SocketAddr,
    sources: &[std::net::IpAddr],
    t: &ClientTls,
    alpn: Option<&[String]>,
) -> io::Result<TlsConn> {
    let mut config = t.config.clone().map_err(io::Error::other)?;
    if let Some(list) = alpn {
        // A copy sharing the rest (its session cache too); once per connection.
        let mut c = (*config).clone();
        c.alpn_protocols = list.iter().map(|p| p.as_bytes().to_vec()).collect();
        config = Arc::new(c);
    }
    let tcp = super::intercept::connect(addr, sources).await?;
    let _ = tcp.set_nodelay(true);
    let name = t
        .sni
        .clone()
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    tls::connect(tcp, config, name)
        .await
        .map_err(io::Error::other)
}

/// Completes a server handshake within [`HANDSHAKE_TIMEOUT_MS`].
pub async fn accept(tcp: TcpStream, t: &ServerTls) -> io::Result<TlsConn> {
    let (config, no_alpn) = t.config.as_ref().map_err(|e| io::Error::other(e.clone()))?;
    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let handshake = tls::accept_lenient_alpn(tcp, config.clone(), no_alpn);
    match shard::monoio::time::timeout(timeout, handshake).await {
        Ok(r) => r.map_err(io::Error::other),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// TLS record type of a handshake: the first byte of every ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether a connection's first byte (read with MSG_PEEK: left in the socket) starts a TLS
/// handshake. Plaintext Dubbo starts with 0xda, HTTP/2 with `P`. A connection that sends
/// nothing within [`PEEK_TIMEOUT_MS`] or closes counts as plaintext.
pub async fn starts_with_tls(tcp: &TcpStream) -> bool {
    let deadline = Instant::now() + Duration::from_millis(PEEK_TIMEOUT_MS);
    let mut first = [0u8; 1];
    loop {
        shard::monoio::select! {
            r = tcp.readable(false) => if r.is_err() { return false },
            _ = shard::monoio::time::sleep_until(deadline.into()) => return false,
        }
        match shard::sockopt::peek(tcp.as_raw_fd(), &mut first) {
            Ok(1) => return first[0] == TLS_HANDSHAKE_RECORD,
            Ok(_) => return false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

impl Conn for TlsConn {
    fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.get_ref().set_nodelay(on)
    }
    fn set_keepalive(&self, k: &config::TcpKeepalive) -> io::Result<()> {
        Conn::set_keepalive(self.get_ref(), k)
    }
    fn addrs(&self) -> (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>) {
        Conn::addrs(self.get_ref())
    }
    fn original_dst(&self) -> Option<std::net::SocketAddr> {
        Conn::original_dst(self.get_ref())
    }
    fn peer_principal(&self) -> Option<Option<String>> {
        let chain = self.peer_certificates()?;
        Some(spiffe_id(chain.first()?))
    }
    fn with_peer_certificate(&self, f: &mut dyn FnMut(Option<&[u8]>) -> bool) -> bool {
        self.with_peer_certificate(|c| f(c))
    }
    fn peer_chain(&self) -> Vec<Vec<u8>> {
        self.peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect()
    }
    fn into_kernel(self) -> Result<TcpStream, Self> {
        Err(self)
    }
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.get_ref())
    }
    fn alpn(&self) -> Option<Vec<u8>> {
        self.alpn_protocol()
    }
    fn server_name(&self) -> Option<String> {
        tls::TlsStream::server_name(self)
    }
    fn is_tls(&self) -> bool {
        true
    }
}
