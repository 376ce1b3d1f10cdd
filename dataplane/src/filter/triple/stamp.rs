//! What Envoy's connection manager and router add to every response, HTTP/2 and HTTP/1.1:
//! `x-envoy-upstream-service-time` (the router, on upstream responses, unless
//! `suppress_envoy_headers`), `date` (always, replacing the upstream's) and `server` (by
//! `server_header_transformation`, with `server_name`).

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{ServerHeader, TripleListener};

/// A listener's response stamping.
#[derive(Clone, Debug)]
pub struct Stamp {
    pub server_name: Box<[u8]>,
    pub server: ServerHeader,
    /// The router's own headers (`suppress_envoy_headers` off): `x-envoy-upstream-service-time`
    /// on upstream responses, `x-envoy-expected-rq-timeout-ms` on HTTP/1.1 requests.
    pub envoy_headers: bool,
}

impl Stamp {
    pub fn from_config(t: &TripleListener) -> Stamp {
        Stamp {
            server_name: t
                .server_name
                .as_deref()
                .unwrap_or("ringside")
                .as_bytes()
                .into(),
            server: t.server_header_transformation,
            envoy_headers: !t.suppress_envoy_headers,
        }
    }

    /// Whether ringside writes `server` itself (the upstream's, if any, is then dropped).
    pub fn overwrites_server(&self) -> bool {
        self.server == ServerHeader::Overwrite
    }

    /// Whether `server` is added to a response that has `present` (an upstream's) or not.
    pub fn adds_server(&self, present: bool) -> bool {
        match self.server {
            ServerHeader::Overwrite => true,
            ServerHeader::AppendIfAbsent => !present,
            ServerHeader::PassThrough => false,
        }
    }

    /// Whether an upstream's response header `n` gives way to the one ringside writes (`date`,
    /// `server` when overwritten, `x-envoy-upstream-service-time` unless suppressed). By name
    /// length first: every forwarded field is checked.
    pub fn replaces(&self, n: &[u8]) -> bool {
        match n.len() {
            4 => n == b"date",
            6 => n == b"server" && self.overwrites_server(),
            29 => n == b"x-envoy-upstream-service-time" && self.envoy_headers,
            _ => false,
        }
    }

    /// At most the bytes the stamps add to an HTTP/2 response header block (as
    /// `hpack::encode_known` writes them: service time, date, server).
    pub fn h2_bytes_max(&self) -> usize {
        (2 + 29 + 1 + 20) + (2 + 29) + (4 + self.server_name.len())
    }
}

thread_local! {
    /// The current `DATE`, and the instant until which it holds (the next wall-clock second).
    static DATE: Cell<(Option<Instant>, [u8; 29])> = const { Cell::new((None, [0; 29])) };
}

/// The current time as an HTTP date (RFC 9110 IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`),
/// made once a second per shard.
pub fn http_date() -> [u8; 29] {
    http_date_at(Instant::now())
}

/// [`http_date`] for a caller that has read the monotonic clock (`now`): no other clock read
/// but once a second, when the wall clock is read and the text made for its second, held until
/// the monotonic clock reaches that second's end (a wall clock stepped meanwhile shows from
/// then on, as Envoy's date, refreshed by a timer).
pub fn http_date_at(now: Instant) -> [u8; 29] {
    DATE.with(|c| {
        let (until, d) = c.get();
        if until.is_some_and(|u| now < u) {
            return d;
        }
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let d = format_date(wall.as_secs());
        let left = Duration::from_nanos(u64::from(1_000_000_000 - wall.subsec_nanos()));
        c.set((Some(now + left), d));
        d
    })
}

fn format_date(secs: u64) -> [u8; 29] {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = crate::access_log::format::civil(days as i64);
    let s = format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let mut out = [b' '; 29];
    out.copy_from_slice(&s.as_bytes()[..29]);
    out
}

/// An HTTP/1.1 response head from an upstream with the stamps: `fields_end` is where the
/// upstream's fields end and `own_end` where the ones ringside adds before its framing fields
/// end (Istio's exchange). As Envoy's header map: an upstream's `date` (and `server`, when
/// overwritten, and `x-envoy-upstream-service-time`, when set) is replaced where it stands;
/// `x-envoy-upstream-service-time` otherwise follows the upstream's fields, `date` and `server`
/// follow the ones added after them; names of replaced fields are written lower case.
pub fn head(
    head: &[u8],
    (fields_end, own_end): (usize, usize),
    st: &Stamp,
    service_ms: Option<u64>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 96);
    let status_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(head.len(), |p| p + 2)
        .min(fields_end);
    out.extend_from_slice(&head[..status_end]);
    let (mut date, mut server, mut time) = (false, false, false);
    let service_ms = service_ms.filter(|_| st.envoy_headers);
    let ms = Decimal::new(service_ms.unwrap_or(0));
    for line in head[status_end..fields_end].split_inclusive(|&b| b == b'\n') {
        let name = &line[..line.iter().position(|&b| b == b':').unwrap_or(0)];
        if name.eq_ignore_ascii_case(b"date") {
            date = true;
            field(&mut out, b"date", &http_date());
        } else if name.eq_ignore_ascii_case(b"server") && st.overwrites_server() {
            server = true;
            field(&mut out, b"server", &st.server_name);
        } else if name.eq_ignore_ascii_case(b"x-envoy-upstream-service-time")
            && service_ms.is_some()
        {
            time = true;
            field(&mut out, b"x-envoy-upstream-service-time", ms.as_slice());
        } else {
            server |= name.eq_ignore_ascii_case(b"server");
            out.extend_from_slice(line);
        }
    }
    if service_ms.is_some() && !time {
        field(&mut out, b"x-envoy-upstream-service-time", ms.as_slice());
    }
    out.extend_from_slice(&head[fields_end..own_end]);
    if !date {
        field(&mut out, b"date", &http_date());
    }
    if !server && st.adds_server(false) {
        field(&mut out, b"server", &st.server_name);
    }
    out.extend_from_slice(&head[own_end..]);
    out
}

fn field(out: &mut Vec<u8>, n: &[u8], v: &[u8]) {
    out.extend_from_slice(n);
    out.extend_from_slice(b": ");
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, on the stack: no allocation per response.
pub struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn new(mut n: u64) -> Self {
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return Decimal { buf, start };
            }
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_as_to_string() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(Decimal::new(n).as_slice(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(&format_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&format_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_date(1_709_164_800),
            b"Thu, 29 Feb 2024 00:00:00 GMT"
        );
    }

    #[test]
    fn an_upstream_date_and_server_are_replaced_in_place() {
        let st = Stamp {
            server_name: b"envoy".as_slice().into(),
            server: ServerHeader::Overwrite,
            envoy_headers: true,
        };
        let h = b"HTTP/1.1 200 OK\r\nServer: up\r\nDate: x\r\na: 1\r\nconnection: close\r\n\r\n";
        let fields_end = h.len() - b"connection: close\r\n\r\n".len();
        let out = head(h, (fields_end, fields_end), &st, Some(3));
        let s = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = s.split("\r\n").collect();
        assert_eq!(lines[1], "server: envoy");
        assert!(
            lines[2].starts_with("date: ") && lines[2].ends_with(" GMT"),
            "{s}"
        );
        assert_eq!(
            lines[3..],
            [
                "a: 1",
                "x-envoy-upstream-service-time: 3",
                "connection: close",
                "",
                ""
            ]
        );
    }
}
