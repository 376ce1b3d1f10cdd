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
pub use stream::{
    accept, accept_lenient_alpn, connect, HandshakeError, TlsRead, TlsStream, TlsWrite,
};

/// `config` without ALPN protocols, for [`accept_lenient_alpn`].
pub fn without_alpn(config: &Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    let mut c = (**config).clone();
    c.alpn_protocols.clear();
    Arc::new(c)
}

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

/// SHA-256 of `data` in lower-case hex (Envoy's `sha256PeerCertificateDigest`), with the TLS
/// stack's own hash.
pub fn sha256_hex(data: &[u8]) -> String {
    let rustls::SupportedCipherSuite::Tls13(suite) =
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
    else {
        unreachable!("a TLS 1.3 suite");
    };
    let out = suite.common.hash_provider.hash(data);
    out.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The crypto provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Where PEM text comes from: a file (read when a config is built), or bytes already in
/// memory (an SDS secret), named for errors.
#[derive(Clone, Copy, Debug)]
pub enum Pem<'a> {
    File(&'a Path),
    Bytes { name: &'a str, pem: &'a [u8] },
}

impl Pem<'_> {
    fn name(&self) -> String {
        match self {
            Pem::File(p) => p.display().to_string(),
            Pem::Bytes { name, .. } => (*name).to_string(),
        }
    }

    fn bad(&self, why: impl ToString) -> ConfigError {
        ConfigError::File {
            path: self.name(),
            why: why.to_string(),
        }
    }
}

/// Every certificate in a PEM file, in order (a chain: leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    certs(Pem::File(path))
}

/// Every certificate of PEM text, in order (a chain: leaf first).
pub fn certs(pem: Pem<'_>) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = match pem {
        Pem::File(path) => CertificateDer::pem_file_iter(path)
            .map_err(|e| pem.bad(e))?
            .collect::<Result<Vec<_>, _>>(),
        Pem::Bytes { pem: bytes, .. } => {
            CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>()
        }
    }
    .map_err(|e| pem.bad(e))?;
    if certs.is_empty() {
        return Err(pem.bad("no CERTIFICATE in it"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    key(Pem::File(path))
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of PEM text.
pub fn key(pem: Pem<'_>) -> Result<PrivateKeyDer<'static>, ConfigError> {
    match pem {
        Pem::File(path) => PrivateKeyDer::from_pem_file(path),
        Pem::Bytes { pem: bytes, .. } => PrivateKeyDer::from_pem_slice(bytes),
    }
    .map_err(|e| pem.bad(e))
}

/// How a peer's URI SAN is matched (Envoy's `match_typed_subject_alt_names` of type URI, or
/// `match_subject_alt_names`): exactly, or by prefix (Istio's inbound
/// `spiffe://TRUST_DOMAIN/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SanMatch {
    Exact(String),
    Prefix(String),
}

impl SanMatch {
    fn matches(&self, uri: &[u8]) -> bool {
        match self {
            SanMatch::Exact(s) => s.as_bytes() == uri,
            SanMatch::Prefix(p) => uri.starts_with(p.as_bytes()),
        }
    }
}

impl std::fmt::Display for SanMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SanMatch::Exact(s) => write!(f, "{s:?}"),
            SanMatch::Prefix(p) => write!(f, "prefix {p:?}"),
        }
    }
}

/// Which TLS versions and TLS 1.2 cipher suites a config allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// Only TLS 1.3 (Envoy's `tls_minimum_protocol_version: TLSv1_3`).
    pub tls13_only: bool,
    /// Only TLS 1.2 (`tls_maximum_protocol_version: TLSv1_2`).
    pub tls12_only: bool,
    /// TLS 1.2 cipher suites by their OpenSSL names (`ECDHE-ECDSA-AES256-GCM-SHA384`); those
    /// rustls does not implement are skipped. Empty: every suite rustls has.
    pub cipher_suites: Vec<String>,
}

/// The TLS 1.2 suites of rustls by OpenSSL name.
const TLS12_SUITES: &[(&str, rustls::SupportedCipherSuite)] = {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    &[
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ]
};

/// Whether some TLS 1.2 suite of `names` is one rustls has (else a config restricted to them
/// could never negotiate TLS 1.2).
pub fn any_cipher_suite_known(names: &[String]) -> bool {
    names.iter().any(|n| {
        n.split(['[', ']', '|'])
            .any(|n| TLS12_SUITES.iter().any(|(s, _)| *s == n))
    })
}

impl Params {
    /// The provider with only the allowed TLS 1.2 suites, and the versions.
    fn provider(
        &self,
    ) -> (
        Arc<CryptoProvider>,
        &'static [&'static rustls::SupportedProtocolVersion],
    ) {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        if !self.cipher_suites.is_empty() {
            // An OpenSSL equal-preference group `[A|B]` counts as its members.
            let allowed: Vec<&str> = self
                .cipher_suites
                .iter()
                .flat_map(|n| n.split(['[', ']', '|']))
                .collect();
            p.cipher_suites.retain(|s| {
                s.version() == &rustls::version::TLS13
                    || TLS12_SUITES
                        .iter()
                        .any(|(n, known)| known.suite() == s.suite() && allowed.contains(n))
            });
        }
        static TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        static TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
        static BOTH: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let versions = match (self.tls13_only, self.tls12_only) {
            (true, _) => TLS13,
            (false, true) => TLS12,
            (false, false) => BOTH,
        };
        (Arc::new(p), versions)
    }
}

/// What `/certs` shows of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub uri_sans: Vec<String>,
    /// notAfter, seconds since the Unix epoch (`None`: unreadable).
    pub not_after: Option<i64>,
}

/// Every certificate of a PEM file or text, summarised (leaf first for a chain).
pub fn describe(pem: Pem<'_>) -> Result<Vec<CertSummary>, ConfigError> {
    Ok(certs(pem)?
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

fn roots(pem: Pem<'_>) -> Result<Arc<RootCertStore>, ConfigError> {
    let mut roots = RootCertStore::empty();
    for c in certs(pem)? {
        roots
            .add(c)
            .map_err(|e| pem.bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// TLS 1.3 session tickets a listener sends after each handshake.
pub const TICKETS_PER_HANDSHAKE: usize = 2;
/// Servers whose tickets a cluster's client config keeps (the oldest is forgotten first).
pub const CLIENT_SESSION_SERVERS: usize = 16;
/// Tickets rustls keeps per server.
const CLIENT_TICKETS_PER_SERVER: usize = 8;

/// A listener's TLS termination.
pub struct ServerSettings<'a> {
    pub cert_chain: Pem<'a>,
    pub private_key: Pem<'a>,
    /// Trust bundle for client certificates; `None`: no client certificate asked for.
    pub ca: Option<Pem<'a>>,
    pub require_client_certificate: bool,
    /// Accepted client URI SANs; empty: any certificate `ca` signed.
    pub subject_alt_names: &'a [SanMatch],
    pub alpn: &'a [String],
    pub params: &'a Params,
    /// TLS 1.3 session tickets: `Some(s)`, sent after each handshake, their keys changed every
    /// `s` seconds (at most [`TICKET_ROTATION_S_MAX`]); `None`: none sent.
    pub tickets: Option<u32>,
}

/// rustls' own ticket-key rotation, the longest [`ServerSettings::tickets`] honours.
pub const TICKET_ROTATION_S_MAX: u32 = 6 * 60 * 60;

/// A ticketer (rustls' RFC 5077 construction, AES-256-CBC and HMAC-SHA256, keys from the
/// system's random source) changed every `rotation_s` seconds. rustls' own rotates every 6
/// hours; a shorter period wraps fresh ones of those in a rotator of that period (each inner
/// one is replaced long before its own rotation would come).
fn ticketer(rotation_s: u32) -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    if rotation_s >= TICKET_ROTATION_S_MAX {
        return rustls::crypto::aws_lc_rs::Ticketer::new();
    }
    #[derive(Debug)]
    struct Inner(Arc<dyn rustls::server::ProducesTickets>);
    impl rustls::server::ProducesTickets for Inner {
        fn enabled(&self) -> bool {
            self.0.enabled()
        }
        fn lifetime(&self) -> u32 {
            self.0.lifetime()
        }
        fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
            self.0.encrypt(plain)
        }
        fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
            self.0.decrypt(cipher)
        }
    }
    fn fresh() -> Result<Box<dyn rustls::server::ProducesTickets>, rustls::crypto::GetRandomFailed>
    {
        rustls::crypto::aws_lc_rs::Ticketer::new()
            .map(|t| Box::new(Inner(t)) as Box<dyn rustls::server::ProducesTickets>)
            .map_err(|_| rustls::crypto::GetRandomFailed)
    }
    Ok(Arc::new(rustls::ticketer::TicketRotator::new(
        rotation_s.max(1),
        fresh,
    )?))
}

impl ServerSettings<'_> {
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
        let (p, versions) = self.params.provider();
        let builder = rustls::ServerConfig::builder_with_provider(p.clone())
            .with_protocol_versions(versions)?;
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
            builder.with_single_cert(certs(self.cert_chain)?, key(self.private_key)?)?;
        config.alpn_protocols = self.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        // TLS 1.3 session tickets (docs/security.md, "Session resumption"): stateless, sealed
        // with keys of this listener's config alone (a ticket of one listener, whose client
        // verification it vouches for, cannot resume on another), random per process and
        // rotated every `tickets` seconds (a ticket lives twice that), 2 per handshake as
        // BoringSSL sends: a client opening two connections at once resumes both.
        match self.tickets {
            Some(rotation_s) => {
                config.ticketer = ticketer(rotation_s)?;
                config.send_tls13_tickets = TICKETS_PER_HANDSHAKE;
            }
            None => config.send_tls13_tickets = 0,
        }
        Ok(Arc::new(config))
    }
}

/// A cluster's TLS origination.
pub struct ClientSettings<'a> {
    /// Client certificate and key (mutual TLS); `None`: none presented.
    pub cert_chain: Option<Pem<'a>>,
    pub private_key: Option<Pem<'a>>,
    pub ca: Pem<'a>,
    /// Accepted server SANs; empty: any certificate `ca` signed.
    pub subject_alt_names: &'a [SanMatch],
    /// Which SANs `subject_alt_names` are matched against.
    pub san_kinds: SanKinds,
    pub alpn: &'a [String],
    /// Whether an SNI is sent (the name given to [`connect`]).
    pub sni: bool,
    pub params: &'a Params,
}

impl ClientSettings<'_> {
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
        let (p, versions) = self.params.provider();
        let builder = rustls::ClientConfig::builder_with_provider(p.clone())
            .with_protocol_versions(versions)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
                roots: roots(self.ca)?,
                sans: self.subject_alt_names.to_vec(),
                san_kinds: self.san_kinds,
                provider: p,
            }));
        let mut config = match (self.cert_chain, self.private_key) {
            (Some(c), Some(k)) => builder.with_client_auth_cert(certs(c)?, key(k)?)?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        config.enable_sni = self.sni;
        // Resumption: the tickets of at most CLIENT_SESSION_SERVERS servers (by SNI, or the
        // endpoint's address without one), 8 each, per cluster transport socket.
        config.resumption = rustls::client::Resumption::in_memory_sessions(
            CLIENT_SESSION_SERVERS * CLIENT_TICKETS_PER_SERVER,
        );
        Ok(Arc::new(config))
    }
}

/// Which of a peer certificate's subject alternative names `subject_alt_names` are matched
/// against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SanKinds {
    /// URI SANs only (Envoy's `match_typed_subject_alt_names` of type URI: SPIFFE ids).
    #[default]
    Uri,
    /// URI and DNS SANs (Envoy's untyped `match_subject_alt_names`, as Istio's bootstrap checks
    /// istiod's certificate, which names its service: `istiod.istio-system.svc`).
    UriAndDns,
}

/// The SANs of `end_entity` of `kinds`.
fn sans_of<'a>(end_entity: &'a CertificateDer<'_>, kinds: SanKinds) -> Vec<&'a [u8]> {
    let dns = (kinds == SanKinds::UriAndDns).then(|| x509::dns_sans_iter(end_entity));
    x509::uri_sans_iter(end_entity)
        .chain(dns.into_iter().flatten())
        .collect()
}

/// Whether the end-entity certificate carries a SAN of `kinds` that one of `sans` matches
/// (any, when empty).
fn san_allowed(end_entity: &CertificateDer<'_>, sans: &[SanMatch], kinds: SanKinds) -> bool {
    sans.is_empty()
        || sans_of(end_entity, kinds)
            .iter()
            .any(|u| sans.iter().any(|s| s.matches(u)))
}

fn san_mismatch(
    end_entity: &CertificateDer<'_>,
    sans: &[SanMatch],
    kinds: SanKinds,
) -> rustls::Error {
    let seen: Vec<String> = sans_of(end_entity, kinds)
        .iter()
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .collect();
    let want: Vec<String> = sans.iter().map(ToString::to_string).collect();
    let kind = match kinds {
        SanKinds::Uri => "URI SANs",
        SanKinds::UriAndDns => "URI and DNS SANs",
    };
    rustls::Error::General(format!(
        "peer certificate {kind} {seen:?} match none of [{}]",
        want.join(", ")
    ))
}

/// The chain against the trust bundle, then the URI SAN against the list. The server name
/// (SNI) is not matched against the certificate: Istio's certificates carry only a SPIFFE id,
/// and its SNI (`outbound_.PORT_._.HOST`) names a cluster, not the peer.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    sans: Vec<SanMatch>,
    san_kinds: SanKinds,
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
        if !san_allowed(end_entity, &self.sans, self.san_kinds) {
            return Err(san_mismatch(end_entity, &self.sans, self.san_kinds));
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
    sans: Vec<SanMatch>,
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
        if !san_allowed(end_entity, &self.sans, SanKinds::Uri) {
            return Err(san_mismatch(end_entity, &self.sans, SanKinds::Uri));
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
