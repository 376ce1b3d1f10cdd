//! A decoded header list kept in one reusable buffer (no allocation per request once warm).

use codec::h2::hpack;

/// Whether a field is one a proxy must not forward (RFC 9113 8.2.2: connection-specific;
/// `te` other than `trailers`). By name length first: every forwarded field is checked.
fn hop_by_hop(n: &[u8], v: &[u8]) -> bool {
    match n.len() {
        2 => n == b"te" && v != b"trailers",
        7 => n == b"upgrade",
        10 => n == b"connection" || n == b"keep-alive",
        16 => n == b"proxy-connection",
        17 => n == b"transfer-encoding",
        _ => false,
    }
}

#[derive(Clone, Default)]
pub struct HeaderList {
    buf: Vec<u8>,
    /// (name start, name end, value end, never indexed)
    fields: Vec<(u32, u32, u32, bool)>,
    /// RFC 9113 accounting: name + value + 32 per field.
    pub list_bytes: usize,
    /// Set when the list went over its limit: fields after that were counted, not kept.
    pub too_large: bool,
    /// A field broke HTTP/2's rules (upper-case name, pseudo-header after a regular one).
    pub malformed: bool,
    regular_seen: bool,
}

impl HeaderList {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.fields.clear();
        self.list_bytes = 0;
        self.too_large = false;
        self.malformed = false;
        self.regular_seen = false;
    }

    pub fn push(&mut self, name: &[u8], value: &[u8], never: bool, limit: usize) {
        self.list_bytes += name.len() + value.len() + 32;
        if self.list_bytes > limit {
            self.too_large = true;
            return;
        }
        if name.iter().any(|b| b.is_ascii_uppercase()) {
            self.malformed = true;
        }
        if name.first() == Some(&b':') {
            if self.regular_seen {
                self.malformed = true;
            }
        } else {
            self.regular_seen = true;
        }
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(name);
        let name_end = self.buf.len() as u32;
        self.buf.extend_from_slice(value);
        self.fields
            .push((start, name_end, self.buf.len() as u32, never));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], bool)> {
        self.fields.iter().map(|&(s, n, e, never)| {
            (
                &self.buf[s as usize..n as usize],
                &self.buf[n as usize..e as usize],
                never,
            )
        })
    }

    /// The first value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _, _)| *n == name).map(|(_, v, _)| v)
    }

    /// Drops every `name` field, then adds one with `value` if given (at the end; not counted
    /// against the list's limit: a value ringside sets).
    pub fn replace(&mut self, name: &[u8], value: Option<&[u8]>) {
        let buf = &self.buf;
        self.fields
            .retain(|&(s, n, _, _)| &buf[s as usize..n as usize] != name);
        if let Some(v) = value {
            self.append(name, v);
        }
    }

    /// A copy with `:path` and `:authority` replaced where given (`:authority` added after the
    /// pseudo-headers if the list has none); the other fields as they are, in order.
    pub fn rewritten(&self, path: Option<&[u8]>, authority: Option<&[u8]>) -> HeaderList {
        let mut out = HeaderList {
            buf: Vec::with_capacity(self.buf.len() + 64),
            fields: Vec::with_capacity(self.fields.len() + 2),
            ..HeaderList::default()
        };
        let mut authority_left = authority;
        for (n, v, never) in self.iter() {
            let v = match n {
                b":path" => path.unwrap_or(v),
                b":authority" => authority_left.take().unwrap_or(v),
                _ => {
                    if n.first() != Some(&b':') {
                        if let Some(a) = authority_left.take() {
                            out.push(b":authority", a, false, usize::MAX);
                        }
                    }
                    v
                }
            };
            out.push(n, v, never, usize::MAX);
        }
        if let Some(a) = authority_left {
            out.push(b":authority", a, false, usize::MAX);
        }
        out.list_bytes = self.list_bytes;
        out
    }

    /// Adds a field at the end (not counted against the list's limit: a value ringside sets).
    pub fn append(&mut self, name: &[u8], value: &[u8]) {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(name);
        let name_end = self.buf.len() as u32;
        self.buf.extend_from_slice(value);
        self.fields
            .push((start, name_end, self.buf.len() as u32, false));
    }

    /// HPACK-encodes the list for the next hop, without connection-specific headers.
    /// At most the bytes [`HeaderList::encode`] writes (each field a literal whose lengths take
    /// at most 3 bytes each, no Huffman): what a block's buffer is made with, so it does not
    /// grow while fields are added.
    pub fn encoded_bytes_max(&self) -> usize {
        self.buf.len() + 7 * self.fields.len()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_except(out, |_| false);
    }

    /// As [`HeaderList::encode`] for a shadow copy (`request_mirror_policies`): `:authority`
    /// gets `-shadow` appended, as Envoy does to the shadow's host.
    pub fn encode_shadow(&self, out: &mut Vec<u8>) {
        for (n, v, never) in self.iter() {
            if hop_by_hop(n, v) {
                continue;
            }
            if n == b":authority" {
                // Before the port, if it has one (`host-shadow:port`, as Envoy).
                let host_end = match v.iter().rposition(|&b| b == b':') {
                    Some(i) if i + 1 < v.len() && v[i + 1..].iter().all(u8::is_ascii_digit) => i,
                    _ => v.len(),
                };
                let mut shadow = Vec::with_capacity(v.len() + 7);
                shadow.extend_from_slice(&v[..host_end]);
                shadow.extend_from_slice(b"-shadow");
                shadow.extend_from_slice(&v[host_end..]);
                hpack::encode_field(out, n, &shadow, never);
            } else {
                hpack::encode_field(out, n, v, never);
            }
        }
    }

    /// As [`HeaderList::encode`], leaving out the fields `skip` names (ones the caller writes
    /// anew, e.g. a trace context).
    pub fn encode_except(&self, out: &mut Vec<u8>, skip: impl Fn(&[u8]) -> bool) {
        for (n, v, never) in self.iter() {
            if hop_by_hop(n, v) || skip(n) {
                continue;
            }
            hpack::encode_field(out, n, v, never);
        }
    }
}

impl crate::filter::rbac::Request for HeaderList {
    fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.get(name)
    }
}

impl crate::filter::jwt::Headers for HeaderList {
    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for (n, v, _) in self.iter() {
            f(n, v);
        }
    }
}

/// A call as the rbac rules read it: its header list and its dynamic metadata.
pub struct CallView<'a> {
    pub headers: &'a HeaderList,
    pub metadata: Option<&'a crate::filter::jwt::Metadata>,
}

impl crate::filter::rbac::Request for CallView<'_> {
    fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers.get(name)
    }
    fn metadata(&self) -> Option<&crate::filter::jwt::Metadata> {
        self.metadata
    }
}
