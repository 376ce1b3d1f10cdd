//! The two things ringside reads from a certificate that webpki does not expose: its URI
//! subject alternative names (SPIFFE ids) and its expiry. A minimal DER walk over an already
//! parsed-and-verified (or locally loaded) certificate; malformed input yields nothing, never a
//! panic: every length is checked against the bytes left before it is used.

/// One DER element: tag, contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        // High tag numbers do not occur in the fields read here.
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The elements of a SEQUENCE's contents, in order.
fn elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, body, rest) = element(input)?;
        input = rest;
        Some((tag, body))
    })
}

const SEQUENCE: u8 = 0x30;
const EXTENSIONS: u8 = 0xa3;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const URI: u8 = 0x86;
/// GeneralName dNSName, `[2] IA5String`.
const DNS: u8 = 0x82;
/// 2.5.29.17, subjectAltName.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// TBSCertificate's fields.
fn tbs(der: &[u8]) -> Option<&[u8]> {
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    (tag == SEQUENCE).then_some(tbs)
}

/// The URI subject alternative names of a DER certificate (empty when it has none or cannot
/// be read).
pub fn uri_sans(der: &[u8]) -> Vec<&[u8]> {
    uri_sans_iter(der).collect()
}

/// The URI subject alternative names of a DER certificate, read in place (no allocation:
/// authorization reads them once per connection).
pub fn uri_sans_iter(der: &[u8]) -> impl Iterator<Item = &[u8]> {
    sans_iter(der, URI)
}

/// The DNS subject alternative names of a DER certificate, read in place.
pub fn dns_sans_iter(der: &[u8]) -> impl Iterator<Item = &[u8]> {
    sans_iter(der, DNS)
}

/// The subject alternative names of GeneralName tag `kind`.
fn sans_iter(der: &[u8], kind: u8) -> impl Iterator<Item = &[u8]> {
    let exts = tbs(der)
        .and_then(|tbs| elements(tbs).find(|(t, _)| *t == EXTENSIONS))
        .and_then(|(_, exts)| match element(exts) {
            Some((SEQUENCE, list, _)) => Some(list),
            _ => None,
        })
        .unwrap_or(&[]);
    elements(exts)
        .filter(|(tag, _)| *tag == SEQUENCE)
        .filter_map(|(_, ext)| {
            let mut fields = elements(ext);
            if fields.next() != Some((OID, OID_SAN)) {
                return None;
            }
            // `critical` (a BOOLEAN) may come before the value.
            let (_, value) = fields.find(|(t, _)| *t == OCTET_STRING)?;
            match element(value) {
                Some((SEQUENCE, names, _)) => Some(names),
                _ => None,
            }
        })
        .flat_map(move |names| {
            elements(names)
                .filter(move |(t, _)| *t == kind)
                .map(|(_, v)| v)
        })
}

/// notAfter of a DER certificate, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let tbs = tbs(der)?;
    let mut fields = elements(tbs).peekable();
    // [0] version, serial, signature algorithm, issuer, validity.
    if fields.peek().map(|f| f.0) == Some(0xa0) {
        fields.next();
    }
    let (tag, validity) = fields.nth(3)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, time) = elements(validity).nth(1)?;
    let s = std::str::from_utf8(time).ok()?;
    let (year, rest) = match tag {
        // UTCTime YYMMDDHHMMSSZ: 1950-2049.
        0x17 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, s.get(2..)?)
        }
        // GeneralizedTime YYYYMMDDHHMMSSZ.
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| rest.get(r).and_then(|v| v.parse::<i64>().ok());
    let (month, day) = (num(0..2)?, num(2..4)?);
    let (h, m, sec) = (num(4..6)?, num(6..8)?, num(8..10)?);
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// The subject of a DER certificate as Envoy prints it (`x-forwarded-client-cert`'s
/// `Subject`): BoringSSL's `X509_NAME_print_ex` with `XN_FLAG_RFC2253`: attributes last to
/// first, `,` between RDNs and `+` within one, short names (an unknown type as its dotted OID,
/// its value as `#` and the element's DER in hex), values UTF-8 with RFC 2253's escapes and
/// every byte over 0x7f or control byte as `\XX`. `None` when the subject cannot be read.
pub fn subject_rfc2253(der: &[u8]) -> Option<String> {
    let tbs = tbs(der)?;
    let mut fields = elements(tbs).peekable();
    if fields.peek().map(|f| f.0) == Some(0xa0) {
        fields.next();
    }
    // serial, signature algorithm, issuer, validity, subject.
    let (tag, name) = fields.nth(4)?;
    if tag != SEQUENCE {
        return None;
    }
    // (RDN index, OID, value tag, value, the value's whole DER element).
    let mut entries = Vec::new();
    for (i, (tag, rdn)) in elements(name).enumerate() {
        if tag != 0x31 {
            return None;
        }
        for (tag, atv) in elements(rdn) {
            if tag != SEQUENCE {
                return None;
            }
            let (otag, oid, rest) = element(atv)?;
            if otag != OID {
                return None;
            }
            let (vtag, value, _) = element(rest)?;
            let whole = &rest[..rest.len() - element(rest)?.2.len()];
            entries.push((i, oid, vtag, value, whole));
        }
    }
    let mut out = String::new();
    let mut prev = None;
    for (i, oid, vtag, value, whole) in entries.into_iter().rev() {
        if let Some(p) = prev {
            out.push(if p == i { '+' } else { ',' });
        }
        prev = Some(i);
        match short_name(oid) {
            Some(n) => out.push_str(n),
            None => out.push_str(&dotted(oid)?),
        }
        out.push('=');
        let chars = match short_name(oid).and_then(|_| string_chars(vtag, value)) {
            Some(c) => c,
            None => {
                // Unknown field or string type: its DER, dumped.
                out.push('#');
                for b in whole {
                    out.push_str(&format!("{b:02X}"));
                }
                continue;
            }
        };
        let n = chars.len();
        for (k, c) in chars.into_iter().enumerate() {
            let mut utf8 = [0u8; 4];
            let bytes = char::from_u32(c)
                .unwrap_or(char::REPLACEMENT_CHARACTER)
                .encode_utf8(&mut utf8)
                .as_bytes()
                .to_vec();
            let m = bytes.len();
            for (j, b) in bytes.into_iter().enumerate() {
                let first = k == 0 && j == 0;
                let last = k + 1 == n && j + 1 == m;
                escape_2253(b, first, last, &mut out);
            }
        }
    }
    Some(out)
}

/// BoringSSL's `do_esc_char` with `ASN1_STRFLGS_RFC2253` for one byte of UTF-8.
fn escape_2253(b: u8, first: bool, last: bool, out: &mut String) {
    if b > 0x7f || b < 0x20 || b == 0x7f {
        out.push_str(&format!("\\{b:02X}"));
    } else if b == b'\\' || b == b'"' {
        out.push('\\');
        out.push(b as char);
    } else if matches!(b, b',' | b'+' | b'<' | b'>' | b';')
        || (first && (b == b' ' || b == b'#'))
        || (last && b == b' ')
    {
        out.push('\\');
        out.push(b as char);
    } else {
        out.push(b as char);
    }
}

/// The characters of a directory string (`None`: a type BoringSSL dumps).
fn string_chars(tag: u8, v: &[u8]) -> Option<Vec<u32>> {
    match tag {
        // UTF8String.
        0x0c => Some(String::from_utf8_lossy(v).chars().map(u32::from).collect()),
        // NumericString, PrintableString, T61String, IA5String, UTCTime, GeneralizedTime,
        // VisibleString: one byte a character.
        0x12 | 0x13 | 0x14 | 0x16 | 0x17 | 0x18 | 0x1a => {
            Some(v.iter().map(|&b| u32::from(b)).collect())
        }
        // BMPString.
        0x1e if v.len() % 2 == 0 => Some(
            v.chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .collect(),
        ),
        // UniversalString.
        0x1c if v.len() % 4 == 0 => Some(
            v.chunks(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        _ => None,
    }
}

/// BoringSSL's short names of the attribute types certificates' names use.
fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, n] => match n {
            3 => "CN",
            4 => "SN",
            5 => "serialNumber",
            6 => "C",
            7 => "L",
            8 => "ST",
            9 => "street",
            10 => "O",
            11 => "OU",
            12 => "title",
            13 => "description",
            15 => "businessCategory",
            17 => "postalCode",
            41 => "name",
            42 => "GN",
            43 => "initials",
            44 => "generationQualifier",
            46 => "dnQualifier",
            65 => "pseudonym",
            97 => "organizationIdentifier",
            _ => return None,
        },
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return None,
    })
}

/// An OBJECT IDENTIFIER's contents as dotted decimal.
fn dotted(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    for &b in oid {
        v = v.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(v);
            v = 0;
        }
    }
    let first = *arcs.first()?;
    let (a, b) = match first {
        0..=39 => (0, first),
        40..=79 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut s = format!("{a}.{b}");
    for x in &arcs[1..] {
        s.push_str(&format!(".{x}"));
    }
    Some(s)
}

/// A DER certificate as PEM, as OpenSSL's `PEM_write_bio_X509` writes it (64 columns).
pub fn pem(der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for c in der.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                b64.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(uris: &[&str], dns: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = dns
            .iter()
            .map(|d| rcgen::SanType::DnsName(d.to_string().try_into().unwrap()))
            .chain(
                uris.iter()
                    .map(|u| rcgen::SanType::URI(u.to_string().try_into().unwrap())),
            )
            .collect();
        p.not_after = rcgen::date_time_ymd(2031, 7, 9);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_uri_sans_among_dns_names() {
        let der = cert(
            &[
                "spiffe://cluster.local/ns/default/sa/provider",
                "spiffe://x/y",
            ],
            &["provider.default.svc"],
        );
        assert_eq!(
            uri_sans(&der),
            vec![
                &b"spiffe://cluster.local/ns/default/sa/provider"[..],
                &b"spiffe://x/y"[..]
            ]
        );
        assert!(uri_sans(&cert(&[], &["a.b"])).is_empty());
        assert_eq!(
            dns_sans_iter(&der).collect::<Vec<_>>(),
            vec![&b"provider.default.svc"[..]]
        );
    }

    #[test]
    fn prints_subjects_as_boringssl() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "US");
        dn.push(rcgen::DnType::OrganizationName, "Sue, Grabbit + Runn");
        dn.push(rcgen::DnType::CommonName, " #café\"<x> ");
        p.distinguished_name = dn;
        let der = p.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(
            subject_rfc2253(&der).unwrap(),
            "CN=\\ #caf\\C3\\A9\\\"\\<x\\>\\ ,O=Sue\\, Grabbit \\+ Runn,C=US"
        );
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]).unwrap(),
            "1.2.840.113549"
        );
        let pem = pem(&der);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\nMI"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        for cut in 0..der.len() {
            let _ = subject_rfc2253(&der[..cut]);
        }
    }

    #[test]
    fn reads_not_after() {
        let der = cert(&["spiffe://a/b"], &[]);
        // 2031-07-09T00:00:00Z.
        assert_eq!(not_after(&der), Some(1_941_321_600));
    }

    #[test]
    fn malformed_input_yields_nothing() {
        let der = cert(&["spiffe://cluster.local/ns/a/sa/b"], &[]);
        for cut in 0..der.len() {
            let _ = uri_sans(&der[..cut]);
            let _ = not_after(&der[..cut]);
        }
        let mut bad = der.clone();
        for i in 0..bad.len() {
            bad[i] ^= 0xff;
            let _ = uri_sans(&bad);
            let _ = not_after(&bad);
            bad[i] ^= 0xff;
        }
        assert!(uri_sans(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
    }
}
