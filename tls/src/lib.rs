//! TLS for ringside: rustls (aws-lc-rs provider, docs/decisions/0007-tls-stack.md) over monoio's
//! owned-buffer streams ([`TlsStream`]), the server and client configs ringside builds from
//! certificate files ([`ServerSettings`], [`ClientSettings`]), and peer verification by SPIFFE
//! URI SAN as Istio configures it (exact match against a list; an empty list checks the chain
//! only, as Envoy does without `match_typed_subject_alt_names`).
//!
//! Knows nothing of listeners, clusters or protocols. `unsafe` only where bytes move between
//! rustls and a caller's owned buffer (`stream`), each block under a `SAFETY:` comment.

#![deny(unsafe_code)]

pub mod stream;
pub mod x509;

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

pub use rustls;
pub use stream::{accept, connect, HandshakeError, TlsRead, TlsStream, TlsWrite};

/// Why certificates or a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The crypto provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in a PEM file, in order (a chain: leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |why: String| ConfigError::File {
        path: path.display().to_string(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// What `/certs` shows of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub uri_sans: Vec<String>,
    /// notAfter, seconds since the Unix epoch (`None`: unreadable).
    pub not_after: Option<i64>,
}

/// Every certificate of a PEM file, summarised (leaf first for a chain).
pub fn describe(path: &Path) -> Result<Vec<CertSummary>, ConfigError> {
    Ok(load_certs(path)?
        .iter()
        .map(|c| CertSummary {
            uri_sans: x509::uri_sans(c)
                .iter()
                .map(|u| String::from_utf8_lossy(u).into_owned())
                .collect(),
            not_after: x509::not_after(c),
        })
        .collect())
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, ConfigError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// A listener's TLS termination.
pub struct ServerSettings<'a> {
    pub cert_chain: &'a Path,
    pub private_key: &'a Path,
    /// Trust bundle for client certificates; `None`: no client certificate asked for.
    pub ca: Option<&'a Path>,
    pub require_client_certificate: bool,
    /// Accepted client URI SANs; empty: any certificate `ca` signed.
    pub subject_alt_names: &'a [String],
    pub alpn: &'a [String],
}

impl ServerSettings<'_> {
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
        let p = provider();
        let builder = rustls::ServerConfig::builder_with_provider(p.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match self.ca {
            Some(ca) => {
                let mut v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots(ca)?,
                    p.clone(),
                );
                if !self.require_client_certificate {
                    v = v.allow_unauthenticated();
                }
                let inner = v
                    .build()
                    .map_err(|e| ConfigError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(Arc::new(SanClientVerifier {
                    inner,
                    sans: self.subject_alt_names.to_vec(),
                }))
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_single_cert(load_certs(self.cert_chain)?, load_key(self.private_key)?)?;
        config.alpn_protocols = self.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        // Sidecar connections are long-lived and peers rarely resume: no tickets to mint.
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

/// A cluster's TLS origination.
pub struct ClientSettings<'a> {
    /// Client certificate and key (mutual TLS); `None`: none presented.
    pub cert_chain: Option<&'a Path>,
    pub private_key: Option<&'a Path>,
    pub ca: &'a Path,
    /// Accepted server URI SANs; empty: any certificate `ca` signed.
    pub subject_alt_names: &'a [String],
    pub alpn: &'a [String],
    /// Whether an SNI is sent (the name given to [`connect`]).
    pub sni: bool,
}

impl ClientSettings<'_> {
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
        let p = provider();
        let builder = rustls::ClientConfig::builder_with_provider(p.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
                roots: roots(self.ca)?,
                sans: self.subject_alt_names.to_vec(),
                provider: p,
            }));
        let mut config = match (self.cert_chain, self.private_key) {
            (Some(c), Some(k)) => builder.with_client_auth_cert(load_certs(c)?, load_key(k)?)?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        config.enable_sni = self.sni;
        Ok(Arc::new(config))
    }
}

/// Whether the end-entity certificate carries one of `sans` as a URI SAN (any, when empty).
fn san_allowed(end_entity: &CertificateDer<'_>, sans: &[String]) -> bool {
    sans.is_empty()
        || x509::uri_sans(end_entity)
            .iter()
            .any(|u| sans.iter().any(|s| s.as_bytes() == *u))
}

fn san_mismatch(end_entity: &CertificateDer<'_>, sans: &[String]) -> rustls::Error {
    let seen: Vec<String> = x509::uri_sans(end_entity)
        .iter()
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .collect();
    rustls::Error::General(format!(
        "peer certificate URI SANs {seen:?} match none of {sans:?}"
    ))
}

/// The chain against the trust bundle, then the URI SAN against the list. The server name
/// (SNI) is not matched against the certificate: Istio's certificates carry only a SPIFFE id,
/// and its SNI (`outbound_.PORT_._.HOST`) names a cluster, not the peer.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    sans: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        if !san_allowed(end_entity, &self.sans) {
            return Err(san_mismatch(end_entity, &self.sans));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// rustls' WebPKI client verifier plus the URI SAN check.
#[derive(Debug)]
struct SanClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<String>,
}

impl ClientCertVerifier for SanClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !san_allowed(end_entity, &self.sans) {
            return Err(san_mismatch(end_entity, &self.sans));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
