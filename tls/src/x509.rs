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
