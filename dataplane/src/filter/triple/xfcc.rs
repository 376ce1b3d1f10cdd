//! `x-forwarded-client-cert` on requests, as Envoy's connection manager sets it
//! (`forward_client_cert_details`, `set_current_client_cert_details`; docs/security.md): what a
//! caller connection's requests get is decided once, when the connection is served (the
//! client certificate's details formatted then), and applied to each request's headers before
//! it is authorized, logged and routed.

use std::rc::Rc;

use config::{ClientCertDetails, ForwardClientCert};

/// The header's name.
pub const HEADER: &[u8] = b"x-forwarded-client-cert";

/// What a caller connection's requests get in `x-forwarded-client-cert`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Xfcc {
    /// Forwarded as the caller sent it.
    #[default]
    Keep,
    /// Removed.
    Remove,
    /// The caller's value (if any), `,`, then these details.
    Append(Rc<[u8]>),
    /// These details alone.
    Set(Rc<[u8]>),
}

impl Xfcc {
    /// For a caller connection: `chain` the certificates it presented (leaf first; empty: not
    /// mutual TLS), `local_uris` the URI SANs of ours (`By`).
    pub fn for_connection(
        mode: ForwardClientCert,
        details: ClientCertDetails,
        chain: &[&[u8]],
        local_uris: &[String],
    ) -> Xfcc {
        use ForwardClientCert as F;
        if mode == F::AlwaysForwardOnly {
            return Xfcc::Keep;
        }
        if chain.is_empty() {
            return Xfcc::Remove;
        }
        match mode {
            F::Sanitize => Xfcc::Remove,
            F::ForwardOnly | F::AlwaysForwardOnly => Xfcc::Keep,
            F::AppendForward => Xfcc::Append(Rc::from(value(details, chain, local_uris))),
            F::SanitizeSet => Xfcc::Set(Rc::from(value(details, chain, local_uris))),
        }
    }

    /// For a caller connection `c` of listener `l` (its certificates copied only when the mode
    /// needs them).
    pub fn of<C: crate::io::Conn>(c: &C, l: &super::TripleListener) -> Xfcc {
        use ForwardClientCert as F;
        let (mode, details) = l.xfcc;
        match mode {
            F::AlwaysForwardOnly => return Xfcc::Keep,
            F::Sanitize => return Xfcc::Remove,
            _ => {}
        }
        let chain = c.peer_chain();
        let chain: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
        Xfcc::for_connection(mode, details, &chain, &l.local_uris)
    }

    /// The header's new value given the values the request carries (`None`: removed, or none
    /// to add); `Keep` is not asked.
    fn new_value<'v>(&self, got: impl Iterator<Item = &'v [u8]>) -> Option<Vec<u8>> {
        match self {
            Xfcc::Keep | Xfcc::Remove => None,
            Xfcc::Set(d) => Some(d.to_vec()),
            Xfcc::Append(d) => {
                // Envoy keeps one value per request (repeated headers joined by `,`).
                let mut v = Vec::new();
                for g in got {
                    v.extend_from_slice(g);
                    v.push(b',');
                }
                v.extend_from_slice(d);
                Some(v)
            }
        }
    }

    /// Applies to an HTTP/2 request's header list.
    pub fn apply(&self, hl: &mut super::headers::HeaderList) {
        if *self == Xfcc::Keep || (*self == Xfcc::Remove && hl.get(HEADER).is_none()) {
            return;
        }
        let v = self.new_value(hl.iter().filter(|f| f.0 == HEADER).map(|f| f.1));
        hl.replace(HEADER, v.as_deref());
    }

    /// Applies to an HTTP/1.1 request's fields (lower-case names).
    pub fn apply_fields(&self, fields: &mut Vec<(String, Vec<u8>)>) {
        if *self == Xfcc::Keep {
            return;
        }
        let is = |n: &str| n.as_bytes() == HEADER;
        let v = self.new_value(fields.iter().filter(|f| is(&f.0)).map(|f| f.1.as_slice()));
        fields.retain(|f| !is(&f.0));
        if let Some(v) = v {
            fields.push((String::from_utf8_lossy(HEADER).into_owned(), v));
        }
    }
}

/// The client certificate's details: `By` (each URI SAN of ours), `Hash` (SHA-256 of the
/// client's certificate), then as `details` asks, in Envoy 1.40's order: `Cert`, `Chain`,
/// `Subject`, `URI`, `DNS`; `;` between them.
fn value(d: ClientCertDetails, chain: &[&[u8]], local_uris: &[String]) -> Vec<u8> {
    let leaf = chain[0];
    let mut parts: Vec<String> = local_uris.iter().map(|u| format!("By={u}")).collect();
    parts.push(format!("Hash={}", tls::sha256_hex(leaf)));
    if d.cert {
        parts.push(format!("Cert=\"{}\"", url_encode(&tls::x509::pem(leaf))));
    }
    if d.chain {
        let pems: String = chain
            .iter()
            .map(|c| url_encode(&tls::x509::pem(c)))
            .collect();
        parts.push(format!("Chain=\"{pems}\""));
    }
    if d.subject {
        // The key is there even when the subject is empty.
        let s = tls::x509::subject_rfc2253(leaf).unwrap_or_default();
        parts.push(format!("Subject=\"{s}\""));
    }
    if d.uri {
        let uris: Vec<&[u8]> = tls::x509::uri_sans_iter(leaf).collect();
        if uris.is_empty() {
            parts.push("URI=".into());
        }
        for u in uris {
            parts.push(format!("URI={}", String::from_utf8_lossy(u)));
        }
    }
    if d.dns {
        for n in tls::x509::dns_sans_iter(leaf) {
            parts.push(format!("DNS={}", String::from_utf8_lossy(n)));
        }
    }
    parts.join(";").into_bytes()
}

/// Envoy's `PercentEncoding::urlEncode`: every byte but the unreserved ones as `%XX`.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 11 / 10);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_without_mutual_tls_remove_or_keep() {
        use ForwardClientCert as F;
        let d = ClientCertDetails::default();
        for (mode, want) in [
            (F::Sanitize, Xfcc::Remove),
            (F::ForwardOnly, Xfcc::Remove),
            (F::AppendForward, Xfcc::Remove),
            (F::SanitizeSet, Xfcc::Remove),
            (F::AlwaysForwardOnly, Xfcc::Keep),
        ] {
            assert_eq!(Xfcc::for_connection(mode, d, &[], &[]), want, "{mode:?}");
        }
        let mut f = vec![
            ("x-forwarded-client-cert".to_string(), b"a".to_vec()),
            ("x-other".to_string(), b"1".to_vec()),
            ("x-forwarded-client-cert".to_string(), b"b".to_vec()),
        ];
        Xfcc::Append(Rc::from(&b"By=x"[..])).apply_fields(&mut f);
        assert_eq!(
            f,
            vec![
                ("x-other".to_string(), b"1".to_vec()),
                ("x-forwarded-client-cert".to_string(), b"a,b,By=x".to_vec()),
            ]
        );
        Xfcc::Remove.apply_fields(&mut f);
        assert_eq!(f, vec![("x-other".to_string(), b"1".to_vec())]);
        assert_eq!(url_encode("-a+/= \n"), "-a%2B%2F%3D%20%0A");
    }
}
