//! A test CA that issues SPIFFE certificates (rcgen, ECDSA P-256 as Istio's CA does), as PEM
//! files in a temp dir, and more leaves on demand (certificate rotation).

use super::TempDir;

pub const PROVIDER_ID: &str = "spiffe://cluster.local/ns/default/sa/provider";
pub const CONSUMER_ID: &str = "spiffe://cluster.local/ns/default/sa/consumer";
pub const ROGUE_ID: &str = "spiffe://cluster.local/ns/default/sa/rogue";
/// The DNS name grpcio checks the inbound certificate against.
pub const PROVIDER_DNS: &str = "provider.default.svc";

/// A CA and the leaves it issued: `ca.pem`; `NAME.pem` and `NAME.key` for `provider`,
/// `consumer`, `rogue` (right CA, wrong SAN) and `stranger` (the consumer's SAN, issued by
/// another CA).
pub struct Pki {
    pub dir: TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A leaf for `uri` (and `dns` names) valid until `not_after` (y, m, d): (cert, key) PEM.
pub fn leaf(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    uri: &str,
    dns: &[&str],
    not_after: (i32, u8, u8),
) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = std::iter::once(rcgen::SanType::URI(uri.try_into().unwrap()))
        .chain(
            dns.iter()
                .map(|d| rcgen::SanType::DnsName((*d).try_into().unwrap())),
        )
        .collect();
    p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "cluster.local");
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(p, key))
}

/// The leaves' expiry: 2031-07-09T00:00:00Z.
pub const NOT_AFTER: (i32, u8, u8) = (2031, 7, 9);
pub const NOT_AFTER_UNIX_S: i64 = 1_941_321_600;

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("tls");
        let (ca_pem, issuer) = ca();
        dir.write("ca.pem", &ca_pem);
        let leaves = [
            ("provider", PROVIDER_ID, &[PROVIDER_DNS][..]),
            ("consumer", CONSUMER_ID, &[][..]),
            ("rogue", ROGUE_ID, &[][..]),
        ];
        for (name, uri, dns) in leaves {
            let (cert, key) = leaf(&issuer, uri, dns, NOT_AFTER);
            dir.write(&format!("{name}.pem"), &cert);
            dir.write(&format!("{name}.key"), &key);
        }
        let (_, other) = ca();
        let (cert, key) = leaf(&other, CONSUMER_ID, &[], NOT_AFTER);
        dir.write("stranger.pem", &cert);
        dir.write("stranger.key", &key);
        Pki { dir, issuer }
    }

    pub fn path(&self, f: &str) -> String {
        self.dir.0.join(f).display().to_string()
    }

    pub fn read(&self, f: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(f)).unwrap()
    }

    /// Writes `NAME.pem` and `NAME.key`: a leaf of this CA for `uri` and `dns` names.
    pub fn write_leaf(&self, name: &str, uri: &str, dns: &[&str]) {
        let (cert, key) = leaf(&self.issuer, uri, dns, NOT_AFTER);
        self.dir.write(&format!("{name}.pem"), &cert);
        self.dir.write(&format!("{name}.key"), &key);
    }

    /// Writes `NAME.pem` and `NAME.key`: a leaf of this CA for `uri` and `dns` names with a
    /// subject of these attributes (in this order).
    pub fn write_leaf_with_subject(
        &self,
        name: &str,
        uri: &str,
        dns: &[&str],
        subject: &[(rcgen::DnType, &str)],
    ) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = std::iter::once(rcgen::SanType::URI(uri.try_into().unwrap()))
            .chain(
                dns.iter()
                    .map(|d| rcgen::SanType::DnsName((*d).try_into().unwrap())),
            )
            .collect();
        let mut dn = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            dn.push(t.clone(), *v);
        }
        p.distinguished_name = dn;
        p.not_after = rcgen::date_time_ymd(NOT_AFTER.0, NOT_AFTER.1, NOT_AFTER.2);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        self.dir.write(&format!("{name}.pem"), &cert.pem());
        self.dir.write(&format!("{name}.key"), &key.serialize_pem());
    }

    /// A new leaf of this CA for `uri`, valid until `not_after`: (cert, key) PEM.
    pub fn issue(&self, uri: &str, not_after: (i32, u8, u8)) -> (String, String) {
        leaf(&self.issuer, uri, &[], not_after)
    }
}

/// The SDS secrets pilot-agent serves a workload (as the test xDS server's `secrets`): its
/// certificate `default` and the trust bundle `ROOTCA`, PEM inline.
pub fn sds_secrets(cert: &str, key: &str, ca: &str) -> serde_json::Value {
    serde_json::json!([
        {"name": "default", "tls_certificate": {
            "certificate_chain": {"inline_string": cert},
            "private_key": {"inline_string": key}}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": ca}}}
    ])
}
