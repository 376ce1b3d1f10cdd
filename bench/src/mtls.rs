//! The bench's mutual-TLS material: a test CA and SPIFFE leaves as Istio issues them (ECDSA
//! P-256, one URI SAN, no DNS name), written as PEM files for the proxies' static configs, and
//! the rustls client config `dubbo-tls-load` (and `tls-bench`) use to call an mTLS sidecar.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// The identity of the server side (the inbound sidecar): what its peers check.
pub const SERVER_SAN: &str = "spiffe://cluster.local/ns/bench/sa/provider";
/// The identity of the client side (the outbound sidecar, and the TLS load generator).
pub const CLIENT_SAN: &str = "spiffe://cluster.local/ns/bench/sa/consumer";

/// The PEM files [`write_files`] makes.
#[derive(Clone, Debug)]
pub struct Files {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// One leaf: its DER chain (leaf only), and its certificate and key as PEM.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh CA and the two leaves it signs ([`SERVER_SAN`], [`CLIENT_SAN`]).
pub struct Certs {
    pub ca_pem: String,
    pub ca: CertificateDer<'static>,
    pub server: Leaf,
    pub client: Leaf,
}

fn leaf(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, uri: &str) -> Result<Leaf, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("leaf key: {e}"))?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("leaf params: {e}"))?;
    let san = uri
        .to_string()
        .try_into()
        .map_err(|e| format!("SAN {uri}: {e}"))?;
    p.subject_alt_names = vec![rcgen::SanType::URI(san)];
    let cert = p
        .signed_by(&key, issuer)
        .map_err(|e| format!("signing {uri}: {e}"))?;
    Ok(Leaf {
        chain: vec![cert.der().clone()],
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Makes a CA (`O=cluster.local`) and the server and client leaves.
pub fn generate() -> Result<Certs, String> {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("CA key: {e}"))?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("CA params: {e}"))?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "cluster.local");
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| format!("CA cert: {e}"))?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    Ok(Certs {
        ca_pem: ca_cert.pem(),
        ca: ca_cert.der().clone(),
        server: leaf(&issuer, SERVER_SAN)?,
        client: leaf(&issuer, CLIENT_SAN)?,
    })
}

/// Generates [`Certs`] and writes them into `dir` (`ca.pem`, `server.pem`, `server-key.pem`,
/// `client.pem`, `client-key.pem`).
pub fn write_files(dir: &Path) -> Result<Files, String> {
    let c = generate()?;
    let files = Files {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    for (path, body) in [
        (&files.ca, &c.ca_pem),
        (&files.server_cert, &c.server.cert_pem),
        (&files.server_key, &c.server.key_pem),
        (&files.client_cert, &c.client.cert_pem),
        (&files.client_key, &c.client.key_pem),
    ] {
        std::fs::write(path, body).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(files)
}

/// A TLS 1.3 client config presenting `chain`/`key`, verifying the server's chain against `ca`
/// and its URI SAN against `server_san` (as a sidecar does), without resumption (every
/// handshake is a full one), no ALPN.
pub fn client_config(
    provider: &Arc<CryptoProvider>,
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server_san: &str,
) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| format!("CA: {e}"))?;
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS 1.3: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate: {e}"))?;
    client.resumption = rustls::client::Resumption::disabled();
    // Istio verifies the URI SAN, not the DNS name; the leaves carry none, so the name check is
    // replaced by the chain check plus the SAN comparison, as a SPIFFE verifier does.
    client
        .dangerous()
        .set_certificate_verifier(Arc::new(SpiffeVerifier::new(
            ca,
            provider.clone(),
            server_san,
        )?));
    Ok(client)
}

/// [`client_config`] from the PEM files of [`write_files`] (the client leaf).
pub fn client_config_from_files(
    ca: &Path,
    cert: &Path,
    key: &Path,
    server_san: &str,
) -> Result<ClientConfig, String> {
    let ca_der = CertificateDer::from_pem_file(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    client_config(&provider, ca_der, chain, key_der, server_san)
}

/// The name a client passes to rustls: an IP address, so no SNI is sent, and
/// [`SpiffeVerifier`] does not check it.
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

/// Chain verification against the trust bundle plus the URI SAN check, as a SPIFFE peer
/// verifier does (rustls' WebPkiServerVerifier insists on a DNS/IP name).
#[derive(Debug)]
pub struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    san: Vec<u8>,
}

// === impl SpiffeVerifier ===

impl SpiffeVerifier {
    pub fn new(
        ca: CertificateDer<'static>,
        provider: Arc<CryptoProvider>,
        san: &str,
    ) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(|e| format!("CA: {e}"))?;
        Ok(SpiffeVerifier {
            roots: Arc::new(roots),
            provider,
            san: san.as_bytes().to_vec(),
        })
    }
}

impl rustls::client::danger::ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::General("bad cert".into()))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("{e:?}")))?;
        // The URI SAN is found in the DER (webpki does not expose URI names); ringside parses it.
        if !end_entity
            .as_ref()
            .windows(self.san.len())
            .any(|w| w == self.san.as_slice())
        {
            return Err(rustls::Error::General("peer SAN mismatch".into()));
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
