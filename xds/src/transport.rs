//! The connection to the ADS server: plaintext TCP (tonic's own connector), a Unix socket
//! ([`unix`]), or TLS over TCP (`xds.tls`, [`tls_connect`]). With TLS
//! there is no plaintext fallback: a failed handshake is a failed connect, and the next attempt
//! is TLS again.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// TLS to the ADS server: the rustls client config (trust bundle, SAN check, optional client
/// certificate, ALPN `h2`) and the name handed to rustls (sent as SNI when the config enables
/// it; the SAN check does not use it).
#[derive(Clone, Debug)]
pub struct XdsTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// TCP keepalive of the connection to the ADS server: (idle time, interval, probes).
pub(crate) type Keepalive = Option<(Duration, Duration, u32)>;

/// A tonic connector: `connect` makes each connection.
#[derive(Clone)]
pub(crate) struct Connector<F>(F);

impl<F, Fut, Io> tower_service::Service<tonic::transport::Uri> for Connector<F>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Io>> + Send + 'static,
{
    type Response = Io;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<Fut>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        Box::pin((self.0)())
    }
}

/// A connection to a Unix socket, as tonic takes it.
type UnixIo = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
type UnixConnect =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<UnixIo>> + Send>>;

/// Connects to the Unix socket `path` (pilot-agent's XDS proxy and SDS sockets).
pub(crate) fn unix(path: &str) -> Connector<impl FnMut() -> UnixConnect + Clone> {
    let path = path.to_string();
    Connector(move || -> UnixConnect {
        let path = path.clone();
        Box::pin(async move {
            let s = tokio::net::UnixStream::connect(path).await?;
            Ok(hyper_util::rt::TokioIo::new(s))
        })
    })
}

/// Connects over TLS to `addr` (`host:port`), with `keepalive`.
async fn tls_connect(
    addr: String,
    tls: XdsTls,
    keepalive: Keepalive,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>
{
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    let _ = tcp.set_nodelay(true);
    if let Some((time, interval, probes)) = keepalive {
        let k = socket2::TcpKeepalive::new()
            .with_time(time)
            .with_interval(interval)
            .with_retries(probes);
        socket2::SockRef::from(&tcp).set_tcp_keepalive(&k)?;
    }
    let stream = tokio_rustls::TlsConnector::from(tls.config)
        .connect(tls.server_name, tcp)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
    Ok(hyper_util::rt::TokioIo::new(stream))
}

/// Connects a channel to `server` (`host:port` or `unix:PATH`), over TLS when `tls` is given.
/// The error names every cause (tonic's own says only "transport error").
pub(crate) async fn connect(
    server: &str,
    tls: Option<&XdsTls>,
    keepalive: Keepalive,
) -> Result<tonic::transport::Channel, String> {
    let authority = match server.starts_with("unix:") {
        true => "xds.local",
        false => server,
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5));
    if let Some((time, interval, probes)) = keepalive {
        endpoint = endpoint
            .tcp_keepalive(Some(time))
            .tcp_keepalive_interval(Some(interval))
            .tcp_keepalive_retries(Some(probes));
    }
    let connected = match (server.strip_prefix("unix:"), tls) {
        // `unix:PATH`: pilot-agent's XDS proxy socket (keepalive does not apply).
        (Some(path), _) => endpoint.connect_with_connector(unix(path)).await,
        (None, Some(tls)) => {
            let (addr, tls) = (server.to_string(), tls.clone());
            let connector = Connector(move || tls_connect(addr.clone(), tls.clone(), keepalive));
            endpoint.connect_with_connector(connector).await
        }
        (None, None) => endpoint.connect().await,
    };
    connected.map_err(|e| format!("connect: {}", causes(&e)))
}

/// `e` and its sources, `a: b: c`, each said once.
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
