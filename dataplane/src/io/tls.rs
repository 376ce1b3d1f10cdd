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
    pub config: Arc<rustls::ServerConfig>,
    pub mode: config::TlsMode,
}

/// A cluster's TLS origination.
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The SNI; `None`: the endpoint's IP address (no SNI is sent for an address).
    pub sni: Option<ServerName<'static>>,
}

/// The TLS of every listener and cluster of one config, by index (`None`: plaintext).
#[derive(Default)]
pub struct TlsSet {
    pub listeners: Vec<Option<Arc<ServerTls>>>,
    pub clusters: Vec<Option<Arc<ClientTls>>>,
    /// Every certificate file the config names, as loaded (for `/certs`).
    pub certs: Vec<CertFile>,
}

/// One certificate file of a listener or cluster, as it was loaded.
pub struct CertFile {
    /// `listener NAME` or `cluster NAME`.
    pub owner: String,
    /// `cert_chain` or `ca`.
    pub role: &'static str,
    pub path: String,
    pub certs: Vec<tls::CertSummary>,
}

impl TlsSet {
    /// Reads every certificate and key the config names; the first problem as `(field,
    /// message)`.
    pub fn load(c: &config::Config) -> Result<TlsSet, (String, String)> {
        let listeners = c
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.tls
                    .as_ref()
                    .map(|t| server(t).map(Arc::new))
                    .transpose()
                    .map_err(|e| (format!("listeners[{i}].tls"), e))
            })
            .collect::<Result<_, _>>()?;
        let clusters = c
            .clusters
            .iter()
            .enumerate()
            .map(|(i, cl)| {
                cl.tls
                    .as_ref()
                    .map(|t| client(t).map(Arc::new))
                    .transpose()
                    .map_err(|e| (format!("clusters[{i}].tls"), e))
            })
            .collect::<Result<_, _>>()?;
        let mut certs = Vec::new();
        let mut add = |owner: String, role, path: &str| -> Result<(), String> {
            let summary = tls::describe(path.as_ref()).map_err(|e| e.to_string())?;
            certs.push(CertFile {
                owner,
                role,
                path: path.to_string(),
                certs: summary,
            });
            Ok(())
        };
        for (i, l) in c.listeners.iter().enumerate() {
            let Some(t) = &l.tls else { continue };
            let at = |e| (format!("listeners[{i}].tls"), e);
            add(format!("listener {}", l.name), "cert_chain", &t.cert_chain).map_err(at)?;
            if let Some(ca) = &t.ca {
                add(format!("listener {}", l.name), "ca", ca).map_err(at)?;
            }
        }
        for (i, cl) in c.clusters.iter().enumerate() {
            let Some(t) = &cl.tls else { continue };
            let at = |e| (format!("clusters[{i}].tls"), e);
            if let Some(chain) = &t.cert_chain {
                add(format!("cluster {}", cl.name), "cert_chain", chain).map_err(at)?;
            }
            add(format!("cluster {}", cl.name), "ca", &t.ca).map_err(at)?;
        }
        Ok(TlsSet {
            listeners,
            clusters,
            certs,
        })
    }
}

fn server(t: &config::ListenerTls) -> Result<ServerTls, String> {
    let ca = t.ca.as_ref().map(std::path::Path::new);
    let config = tls::ServerSettings {
        cert_chain: t.cert_chain.as_ref(),
        private_key: t.private_key.as_ref(),
        ca,
        require_client_certificate: t.require_client_certificate,
        subject_alt_names: &t.subject_alt_names,
        alpn: &t.alpn,
    }
    .build()
    .map_err(|e| e.to_string())?;
    Ok(ServerTls {
        config,
        mode: t.mode,
    })
}

fn client(t: &config::ClusterTls) -> Result<ClientTls, String> {
    let config = tls::ClientSettings {
        cert_chain: t.cert_chain.as_deref().map(std::path::Path::new),
        private_key: t.private_key.as_deref().map(std::path::Path::new),
        ca: t.ca.as_ref(),
        subject_alt_names: &t.subject_alt_names,
        alpn: &t.alpn,
        sni: true,
    }
    .build()
    .map_err(|e| e.to_string())?;
    let sni = t
        .sni
        .as_ref()
        .map(|s| ServerName::try_from(s.clone()).map_err(|e| format!("sni {s:?}: {e}")))
        .transpose()?;
    Ok(ClientTls { config, sni })
}

/// Connects to `addr` and completes a client handshake (the caller bounds the whole by its
/// connect timeout).
pub async fn connect(
    addr: SocketAddr,
    sources: &[std::net::IpAddr],
    t: &ClientTls,
) -> io::Result<TlsConn> {
    let tcp = super::intercept::connect(addr, sources).await?;
    let _ = tcp.set_nodelay(true);
    let name = t
        .sni
        .clone()
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    tls::connect(tcp, t.config.clone(), name)
        .await
        .map_err(io::Error::other)
}

/// Completes a server handshake within [`HANDSHAKE_TIMEOUT_MS`].
pub async fn accept(tcp: TcpStream, t: &ServerTls) -> io::Result<TlsConn> {
    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    match shard::monoio::time::timeout(timeout, tls::accept(tcp, t.config.clone())).await {
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
    fn into_kernel(self) -> Result<TcpStream, Self> {
        Err(self)
    }
}
