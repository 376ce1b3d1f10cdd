//! HTTP/1.1 requests forwarded as HTTP/2 (a cluster's `upstream_http: http2`, or `auto` where
//! TLS settled on ALPN `h2`; docs/decisions/0010-http1.md), as Envoy's router does with an
//! HTTP/2 upstream: a small client of one stream at a time per connection (kept idle between
//! requests as HTTP/1.1 ones are). The request head becomes HEADERS (`:method`, `:scheme`,
//! `:authority`, `:path`, then the end-to-end fields), its body DATA (a chunked body's data
//! without framing) within the peer's windows; the response HEADERS become an HTTP/1.1 head
//! (its reason phrase Envoy's, `content-length` kept, else `transfer-encoding: chunked` with
//! each DATA frame a chunk; trailers dropped, as Envoy's HTTP/1.1 codec does by default).

use bytes::{Buf, Bytes, BytesMut};
use codec::h2::frame::{self, flag, kind, setting, FrameHeader};
use codec::h2::hpack;
use shard::monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::super::error::Reset;
use super::{Body, BodyError, Chunks, Failed, Framing, Local, Mx, Request, Response};
use crate::io::READ_CHUNK_BYTES;
use crate::stats::istio::{exchange, MetaId};

/// One HTTP/2 connection's state (the socket is the caller's `Up`).
pub(super) struct Session {
    enc: hpack::Encoder,
    dec: hpack::Decoder,
    /// The preface and SETTINGS went out.
    started: bool,
    /// The stream of the exchange in flight (0: none yet), the next one's id after it.
    stream: u32,
    next: u32,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    peer_window: i64,
    frame_max: u32,
    /// Send windows: the connection's and the stream's.
    conn_window: i64,
    stream_window: i64,
    /// A GOAWAY came: no new stream on this connection.
    goaway: bool,
    /// Frames of the stream read while its request body waited for window, read again first.
    early: BytesMut,
    /// The response's END_STREAM came.
    ended: bool,
}

impl Session {
    pub(super) fn new() -> Session {
        Session {
            enc: hpack::Encoder::default(),
            dec: hpack::Decoder::default(),
            started: false,
            stream: 0,
            next: 1,
            peer_window: i64::from(frame::WINDOW_DEFAULT),
            frame_max: frame::FRAME_BYTES_DEFAULT,
            conn_window: i64::from(frame::WINDOW_DEFAULT),
            stream_window: i64::from(frame::WINDOW_DEFAULT),
            goaway: false,
            early: BytesMut::new(),
            ended: false,
        }
    }

    /// Whether another request may go on this connection.
    pub(super) fn reusable(&self) -> bool {
        !self.goaway && self.next < frame::STREAM_ID_MAX - 2
    }
}

/// A frame that breaks the protocol (or one ringside never asked for): the exchange fails as
/// an upstream protocol error.
fn broken() -> Failed {
    Failed::Final(Local::BadGateway)
}

/// The next frame from the connection (`early` ones first), at most our SETTINGS_MAX_FRAME_SIZE
/// (the default) long.
async fn next_frame<S: AsyncReadRent>(
    s: &mut S,
    sess: &mut Session,
    rbuf: &mut BytesMut,
) -> Result<(FrameHeader, Bytes), Failed> {
    if let Some(h) = FrameHeader::parse(&sess.early) {
        sess.early.advance(frame::HEADER_BYTES);
        let p = sess.early.split_to(h.len as usize).freeze();
        return Ok((h, p));
    }
    loop {
        if let Some(h) = FrameHeader::parse(rbuf) {
            if h.len > frame::FRAME_BYTES_DEFAULT {
                return Err(broken());
            }
            let total = frame::HEADER_BYTES + h.len as usize;
            if rbuf.len() >= total {
                rbuf.advance(frame::HEADER_BYTES);
                return Ok((h, rbuf.split_to(h.len as usize).freeze()));
            }
        }
        rbuf.reserve(READ_CHUNK_BYTES);
        let (r, b) = crate::io::read_append(s, std::mem::take(rbuf)).await;
        *rbuf = b;
        match r {
            Ok(0) | Err(_) => return Err(Failed::Lost(Reset::Termination)),
            Ok(_) => {}
        }
    }
}

/// Reads frames until one of the exchange's stream (HEADERS, CONTINUATION, DATA) comes,
/// handling the connection's own (SETTINGS acknowledged, PING answered, windows, GOAWAY).
/// `stash`: such a frame is kept in `early` instead (one WINDOW_UPDATE or more arrived then,
/// `Ok(None)`), while the request is still being sent.
async fn stream_frame<S: AsyncReadRent + AsyncWriteRent>(
    s: &mut S,
    sess: &mut Session,
    rbuf: &mut BytesMut,
    stash: bool,
) -> Result<Option<(FrameHeader, Bytes)>, Failed> {
    loop {
        let (h, p) = next_frame(s, sess, rbuf).await?;
        let mut reply = Vec::new();
        match h.kind {
            kind::SETTINGS if h.stream != 0 => return Err(broken()),
            kind::SETTINGS if h.flags & flag::ACK != 0 => {}
            kind::SETTINGS => {
                for (id, v) in frame::settings(&p).map_err(|_| broken())? {
                    match id {
                        setting::INITIAL_WINDOW_SIZE if v > frame::WINDOW_LIMIT => {
                            return Err(broken())
                        }
                        setting::INITIAL_WINDOW_SIZE => {
                            sess.stream_window += i64::from(v) - sess.peer_window;
                            sess.peer_window = i64::from(v);
                        }
                        setting::MAX_FRAME_SIZE => {
                            sess.frame_max =
                                v.clamp(frame::FRAME_BYTES_DEFAULT, frame::FRAME_BYTES_LIMIT)
                        }
                        setting::HEADER_TABLE_SIZE => sess.enc.set_peer_table_size(v),
                        _ => {}
                    }
                }
                frame::write_settings_ack(&mut reply);
            }
            kind::PING if h.flags & flag::ACK == 0 => {
                let data: [u8; 8] = p.as_ref().try_into().map_err(|_| broken())?;
                frame::write_ping(&mut reply, true, data);
            }
            kind::PING | kind::PRIORITY => {}
            kind::WINDOW_UPDATE => {
                let n = i64::from(frame::window_update(&p).map_err(|_| broken())?);
                if h.stream == 0 {
                    sess.conn_window += n;
                } else if h.stream == sess.stream {
                    sess.stream_window += n;
                }
                if stash {
                    return Ok(None);
                }
            }
            kind::GOAWAY => {
                let (last, _) = frame::goaway(&p).map_err(|_| broken())?;
                sess.goaway = true;
                if last < sess.stream {
                    return Err(Failed::Lost(Reset::RemoteRefused));
                }
            }
            kind::RST_STREAM if h.stream == sess.stream => {
                // Envoy's reset reasons: REFUSED_STREAM is a refused stream.
                let refused = frame::rst_stream(&p).ok() == Some(frame::code::REFUSED_STREAM);
                return Err(Failed::Lost(match refused {
                    true => Reset::RemoteRefused,
                    false => Reset::Remote,
                }));
            }
            kind::HEADERS | kind::CONTINUATION | kind::DATA if h.stream == sess.stream => {
                if !stash {
                    return Ok(Some((h, p)));
                }
                let mut raw = BytesMut::with_capacity(frame::HEADER_BYTES + p.len());
                h.write(&mut raw);
                raw.extend_from_slice(&p);
                sess.early.extend_from_slice(&raw);
            }
            kind::PUSH_PROMISE => return Err(broken()),
            // Other streams (ended ones' late frames) and unknown kinds: ignored.
            _ => {}
        }
        if !reply.is_empty() {
            let (r, _) = s.write_all(reply).await;
            r.map_err(|_| Failed::Lost(Reset::Termination))?;
        }
    }
}

/// Opens the exchange's stream with the request's HEADERS (`rid`: the `x-request-id` added
/// when the request has none; `tail`: the trace context as HTTP/1.1 field lines, last); the
/// connection's preface and SETTINGS first on a new one.
/// `end`: the request has no body.
pub(super) async fn send_head<S: AsyncWriteRent>(
    s: &mut S,
    sess: &mut Session,
    req: &Request,
    (scheme, mx): (&str, Mx<'_>),
    (rid, expected_ms, tail): (Option<&str>, Option<u64>, &[u8]),
    end: bool,
) -> Result<(), Failed> {
    let mut out = Vec::with_capacity(512);
    if !sess.started {
        sess.started = true;
        out.extend_from_slice(frame::PREFACE);
        frame::write_settings(&mut out, &[(setting::ENABLE_PUSH, 0)]);
    }
    sess.stream = sess.next;
    sess.next += 2;
    sess.stream_window = sess.peer_window;
    sess.ended = false;
    let mut block = Vec::with_capacity(256);
    let enc = &mut sess.enc;
    // Envoy's order: the pseudo-headers as its HTTP/1.1 codec set them.
    enc.encode(&mut block, b":authority", req.authority.as_bytes(), false);
    enc.encode(&mut block, b":path", req.path.as_bytes(), false);
    enc.encode(&mut block, b":method", req.method.as_bytes(), false);
    enc.encode(&mut block, b":scheme", scheme.as_bytes(), false);
    let mut proto = false;
    for (n, v) in req.fields.iter().filter(|(n, _)| !mx.drops(n)) {
        proto |= n == "x-forwarded-proto";
        enc.encode(&mut block, n.as_bytes(), v, false);
    }
    if !proto {
        enc.encode(&mut block, b"x-forwarded-proto", scheme.as_bytes(), false);
    }
    if let Some(id) = rid {
        enc.encode(&mut block, b"x-request-id", id.as_bytes(), false);
    }
    // Istio's metadata exchange, as on an HTTP/1.1 upstream.
    let mut mx_fields = Vec::new();
    mx.write(&mut mx_fields, true);
    for (n, v) in head_fields(&mx_fields) {
        enc.encode(&mut block, n, v, false);
    }
    if let Some(ms) = expected_ms {
        let v = ms.to_string();
        enc.encode(
            &mut block,
            b"x-envoy-expected-rq-timeout-ms",
            v.as_bytes(),
            false,
        );
    }
    // The trace context, last, as Envoy's router injects it (HTTP/1.1 field lines).
    for (n, v) in head_fields(tail) {
        enc.encode(&mut block, n, v, false);
    }
    frame::write_headers(&mut out, sess.stream, &block, end, sess.frame_max);
    let (r, _) = s.write_all(out).await;
    r.map(|_| ()).map_err(|_| Failed::Lost(Reset::Termination))
}

/// Sends `data` as DATA frames of the stream within the send windows (waiting for the peer's
/// WINDOW_UPDATEs), the last with END_STREAM when `end`.
async fn send_data<S: AsyncReadRent + AsyncWriteRent>(
    s: &mut S,
    sess: &mut Session,
    rbuf: &mut BytesMut,
    mut data: &[u8],
    end: bool,
) -> Result<(), Failed> {
    loop {
        let room = sess
            .conn_window
            .min(sess.stream_window)
            .min(i64::from(sess.frame_max))
            .max(0) as usize;
        let n = room.min(data.len());
        if n == 0 && !data.is_empty() {
            stream_frame(s, sess, rbuf, true).await?;
            continue;
        }
        let last = n == data.len();
        let mut out = Vec::with_capacity(frame::HEADER_BYTES + n);
        frame::write_data_header(&mut out, sess.stream, n, last && end);
        out.extend_from_slice(&data[..n]);
        sess.conn_window -= n as i64;
        sess.stream_window -= n as i64;
        let (r, _) = s.write_all(out).await;
        r.map_err(|_| Failed::Lost(Reset::Termination))?;
        data = &data[n..];
        if last {
            return Ok(());
        }
    }
}

/// The data of a chunked body held whole (its framing dropped).
fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let _ = Chunks::default().feed_data(b, &mut |d| out.extend_from_slice(d));
    out
}

/// Sends the request's body: from the caller (`Body::Unread`: relayed as it arrives, a copy
/// kept in `hold` as [`super::relay_body`] does) or held from an earlier try.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send_body<D: AsyncReadRent, S: AsyncReadRent + AsyncWriteRent>(
    down: &mut D,
    dbuf: &mut BytesMut,
    s: &mut S,
    sess: &mut Session,
    rbuf: &mut BytesMut,
    framing: Framing,
    body: &Body,
    hold: &mut Option<Vec<u8>>,
    count: &mut u64,
) -> Result<(), (Failed, bool)> {
    if let Body::Held(b) = body {
        let data = match framing {
            Framing::Chunked => dechunk(b),
            _ => b.clone(),
        };
        return send_data(s, sess, rbuf, &data, true)
            .await
            .map_err(|f| (f, true));
    }
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunks = Chunks::default();
    while left > 0 {
        if dbuf.is_empty() {
            dbuf.reserve(READ_CHUNK_BYTES);
            let (r, b) = crate::io::read_append(down, std::mem::take(dbuf)).await;
            *dbuf = b;
            match r {
                Ok(0) | Err(_) => return Err((Failed::Final(Local::BadRequest), false)),
                Ok(_) => {}
            }
        }
        let mut data = Vec::new();
        let take = match framing {
            Framing::Chunked => {
                let (n, done) = chunks
                    .feed_data(dbuf, &mut |d| data.extend_from_slice(d))
                    .map_err(|_| (Failed::Final(Local::BadRequest), false))?;
                if done {
                    left = 0;
                }
                n
            }
            _ => {
                let n = (dbuf.len() as u64).min(left) as usize;
                left -= n as u64;
                data.extend_from_slice(&dbuf[..n]);
                n
            }
        };
        *count += data.len() as u64;
        let piece = dbuf.split_to(take);
        if let Some(h) = hold {
            match h.len() + piece.len() <= super::RETRY_BODY_BYTES_MAX {
                true => h.extend_from_slice(&piece),
                false => *hold = None,
            }
        }
        if !data.is_empty() || left == 0 {
            send_data(s, sess, rbuf, &data, left == 0)
                .await
                .map_err(|f| (f, false))?;
        }
    }
    Ok(())
}

/// A header block: HEADERS and its CONTINUATIONs, decoded; (fields, END_STREAM).
async fn header_block<S: AsyncReadRent + AsyncWriteRent>(
    s: &mut S,
    sess: &mut Session,
    rbuf: &mut BytesMut,
    h: FrameHeader,
    p: Bytes,
) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), Failed> {
    let end_stream = h.flags & flag::END_STREAM != 0;
    let mut block = frame::headers_fragment(h.flags, &p)
        .map_err(|_| broken())?
        .to_vec();
    let mut done = h.flags & flag::END_HEADERS != 0;
    while !done {
        let Some((c, p)) = stream_frame(s, sess, rbuf, false).await? else {
            continue;
        };
        if c.kind != kind::CONTINUATION {
            return Err(broken());
        }
        block.extend_from_slice(&p);
        done = c.flags & flag::END_HEADERS != 0;
        if block.len() > super::HEAD_BYTES_MAX {
            return Err(broken());
        }
    }
    let mut fields = Vec::new();
    sess.dec
        .decode(&block, &mut |n, v, _| fields.push((n.to_vec(), v.to_vec())))
        .map_err(|_| broken())?;
    Ok((fields, end_stream))
}

/// Reads the response's HEADERS (interim 1xx ones dropped) and makes its HTTP/1.1 head.
pub(super) async fn read_response<S: AsyncReadRent + AsyncWriteRent>(
    s: &mut S,
    sess: &mut Session,
    rbuf: &mut BytesMut,
    req: &Request,
    mx: Mx<'_>,
) -> Result<Response, Failed> {
    loop {
        let Some((h, p)) = stream_frame(s, sess, rbuf, false).await? else {
            continue;
        };
        if h.kind != kind::HEADERS {
            return Err(broken());
        }
        let (fields, end) = header_block(s, sess, rbuf, h, p).await?;
        let status = fields
            .iter()
            .find(|(n, _)| n == b":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
            .filter(|c| (100..600).contains(c))
            .ok_or_else(broken)?;
        if (100..200).contains(&status) {
            if end {
                return Err(broken());
            }
            continue;
        }
        sess.ended = end;
        return Ok(response_head(status, &fields, end, req, mx));
    }
}

/// The HTTP/1.1 head of a response whose HEADERS carried `fields` (`end`: END_STREAM with
/// them), as Envoy's HTTP/1.1 codec writes it.
fn response_head(
    code: u16,
    fields: &[(Vec<u8>, Vec<u8>)],
    end: bool,
    req: &Request,
    mx: Mx<'_>,
) -> Response {
    let no_body = req.method == "HEAD" || code == 204 || code == 304;
    let length = fields
        .iter()
        .find(|(n, _)| n == b"content-length")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
    let framing = match (no_body, length, end) {
        (true, ..) => Framing::Length(0),
        (false, Some(n), _) => Framing::Length(n),
        (false, None, true) => Framing::Length(0),
        (false, None, false) => Framing::Chunked,
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("HTTP/1.1 {code} {}\r\n", reason(code)).as_bytes());
    let mut peer = MetaId::NONE;
    for (n, v) in fields {
        if let (Mx::Outbound { istio, .. }, true) = (mx, n == exchange::HEADER) {
            // The first value, as HTTP/2's header list gives it.
            if peer == MetaId::NONE {
                peer = istio.peer_metadata(Some(v));
            }
        }
        let name = String::from_utf8_lossy(n);
        if n.starts_with(b":") || super::hop_by_hop(&name) || mx.drops(&name) {
            continue;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    let fields_end = out.len();
    mx.write(&mut out, false);
    let own = (fields_end, out.len());
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(0) if length.is_none() && code != 204 && code != 304 && !no_body => {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        _ => {}
    }
    if req.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Response {
        code,
        head: out,
        framing,
        reusable: true,
        peer,
        own,
    }
}

/// The (name, value) pairs of HTTP/1.1 field lines (`name: value\r\n` each).
fn head_fields(b: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    b.split(|&x| x == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r")?;
        let colon = line.iter().position(|&x| x == b':')?;
        Some((&line[..colon], line[colon + 1..].trim_ascii()))
    })
}

/// Relays the response's body (its DATA frames, as chunks when `framing` is chunked) to the
/// caller until END_STREAM (trailers read and dropped), giving the windows back as it goes.
pub(super) async fn relay_response<S: AsyncReadRent + AsyncWriteRent, W: AsyncWriteRent>(
    s: &mut S,
    sess: &mut Session,
    rbuf: &mut BytesMut,
    to: &mut W,
    framing: Framing,
    count: &mut u64,
) -> Result<(), BodyError> {
    let fail = |f: Failed| match f {
        Failed::Lost(_) => BodyError::Read,
        _ => BodyError::Malformed,
    };
    while !sess.ended {
        let Some((h, p)) = stream_frame(s, sess, rbuf, false).await.map_err(fail)? else {
            continue;
        };
        let end = h.flags & flag::END_STREAM != 0;
        match h.kind {
            kind::DATA => {
                let data = frame::data_payload(h.flags, &p).map_err(|_| BodyError::Malformed)?;
                *count += data.len() as u64;
                let mut out = Vec::with_capacity(data.len() + 16);
                match framing {
                    Framing::Chunked if !data.is_empty() => {
                        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        out.extend_from_slice(data);
                        out.extend_from_slice(b"\r\n");
                    }
                    Framing::Chunked => {}
                    _ => out.extend_from_slice(data),
                }
                if end && framing == Framing::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                if !out.is_empty() {
                    let (r, _) = to.write_all(out).await;
                    r.map_err(|_| BodyError::Write)?;
                }
                // The windows back for what was consumed (the stream's only while it lasts).
                if h.len > 0 {
                    let mut wu = Vec::with_capacity(26);
                    frame::write_window_update(&mut wu, 0, h.len);
                    if !end {
                        frame::write_window_update(&mut wu, sess.stream, h.len);
                    }
                    let (r, _) = s.write_all(wu).await;
                    r.map_err(|_| BodyError::Read)?;
                }
            }
            kind::HEADERS => {
                // Trailers: decoded (the HPACK state), dropped.
                let (_, end) = header_block(s, sess, rbuf, h, p).await.map_err(fail)?;
                if !end {
                    return Err(BodyError::Malformed);
                }
                if framing == Framing::Chunked {
                    let (r, _) = to.write_all(b"0\r\n\r\n".to_vec()).await;
                    r.map_err(|_| BodyError::Write)?;
                }
                sess.ended = true;
                continue;
            }
            _ => return Err(BodyError::Malformed),
        }
        sess.ended = end;
    }
    Ok(())
}

/// The reason phrase Envoy's HTTP/1.1 codec writes for a status.
fn reason(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_held_lose_their_framing() {
        assert_eq!(
            dechunk(b"4;x=1\r\nWiki\r\n5\r\npedia\r\n0\r\nt: 1\r\n\r\n"),
            b"Wikipedia"
        );
    }

    #[test]
    fn responses_are_framed_as_envoys_http1_codec_does() {
        let req = super::super::parse_request(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let f = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        let r = response_head(
            200,
            &[f(":status", "200"), f("x-a", "1")],
            false,
            &req,
            Mx::Off,
        );
        assert_eq!(r.framing, Framing::Chunked);
        assert_eq!(
            r.head,
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let r = response_head(404, &[f("content-length", "3")], false, &req, Mx::Off);
        assert_eq!(r.framing, Framing::Length(3));
        assert_eq!(
            r.head,
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\n"
        );
        let r = response_head(204, &[], true, &req, Mx::Off);
        assert_eq!(r.head, b"HTTP/1.1 204 No Content\r\n\r\n");
    }
}
