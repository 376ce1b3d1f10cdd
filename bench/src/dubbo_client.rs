//! The consumer side of one Dubbo connection of `dubbo-load`, shared by the closed loop (tokio)
//! and the open loop (std threads): the request template, the requests in flight, and the check
//! of every response. Frames are built and decoded with `codec::dubbo` only.
//!
//! Checks per response: a Dubbo frame (else `decode`, and the connection is dropped: the stream
//! cannot resync), a response to an id in flight on this connection (else `unknown_id`;
//! pipelined responses may come in any order), status 20 (else `status`) and a readable
//! Hessian2 response head (else `decode`). Heartbeat requests from the peer are answered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use codec::dubbo::encode::{self, Arg, RequestBuilder};
use codec::dubbo::response::ResponseRepr;
use codec::dubbo::{self as wire, Decoded, Status};

use crate::progress::Counters;
use crate::report::{ErrorCounts, ErrorKind, Recorder};

/// Largest frame the load generator accepts.
pub const FRAME_BYTES_MAX: usize = wire::FRAME_BYTES_MAX_DEFAULT;
/// Request ids of connection `i` start at `i << CONN_ID_SHIFT`, so an id answered on the wrong
/// connection is an unknown id.
pub const CONN_ID_SHIFT: u32 = 40;
/// Free space kept in the read buffer before each read.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One encoded request, re-used for every send with only the id patched.
#[derive(Clone)]
pub struct Template {
    frame: Bytes,
}

// === impl Template ===

impl Template {
    /// `interface.method(String)` with a `payload_bytes` string argument.
    pub fn new(interface: &str, method: &str, payload_bytes: usize) -> Template {
        Template::with_attachments(interface, method, payload_bytes, &[])
    }

    /// [`Template::new`] with extra attachments (e.g. the `traceparent` an instrumented
    /// consumer sends), after the ones a Java consumer always sends.
    pub fn with_attachments(
        interface: &str,
        method: &str,
        payload_bytes: usize,
        attachments: &[(&str, &str)],
    ) -> Template {
        let payload = "x".repeat(payload_bytes);
        let args = [Arg::Str(&payload)];
        let frame = RequestBuilder::new(interface, method)
            .version("1.0.0")
            .args(&args)
            .attachments(attachments)
            .build();
        Template { frame }
    }

    pub fn frame_bytes(&self) -> usize {
        self.frame.len()
    }
}

/// What one batch of received bytes did.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Requests that left the in-flight set (answered, well or not).
    pub completed: usize,
    /// The stream is broken (undecodable bytes); close the connection.
    pub fatal: bool,
    /// The peer sent Dubbo's readonly event: it is going away, new requests belong on a new
    /// connection.
    pub readonly: bool,
}

pub struct ConnState {
    template: Template,
    inflight: HashMap<u64, Instant>,
    next_id: u64,
    pub read_buf: BytesMut,
    pub rec: Recorder,
    pub errors: ErrorCounts,
    /// Only requests sent (closed loop) or due (open loop) at or after this are recorded.
    measure_from: Instant,
    /// When set (`dubbo-load --samples`): every answered or expired request after
    /// `measure_from`, as (sent or due at, latency, answered OK), for latency over time windows.
    pub samples: Option<Vec<Sample>>,
}

/// One request of `--samples`: when it was sent (open loop: due), its latency (an expired one:
/// the time until it was given up), whether it was answered with status OK.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub sent_at: Instant,
    pub latency: Duration,
    pub ok: bool,
}

// === impl ConnState ===

impl ConnState {
    pub fn new(conn_index: usize, template: Template, measure_from: Instant) -> ConnState {
        ConnState {
            template,
            inflight: HashMap::new(),
            next_id: (conn_index as u64) << CONN_ID_SHIFT,
            read_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            rec: Recorder::new(),
            errors: ErrorCounts::default(),
            measure_from,
            samples: None,
        }
    }

    /// Bytes of one request frame.
    pub fn frame_bytes(&self) -> usize {
        self.template.frame_bytes()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Appends the next request to `out` and marks it in flight since `t` (the actual send time
    /// in the closed loop, the intended one in the open loop).
    pub fn push_request(&mut self, out: &mut BytesMut, t: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let start = out.len();
        out.extend_from_slice(&self.template.frame);
        if let Some(frame) = out.get_mut(start..) {
            wire::set_request_id(frame, id);
        }
        self.inflight.insert(id, t);
    }

    /// Makes room in the read buffer for the next read.
    pub fn reserve_read(&mut self) {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK_BYTES / 4 {
            self.read_buf.reserve(READ_CHUNK_BYTES);
        }
    }

    /// Decodes every whole frame in the read buffer, checks and records each response, and
    /// appends answers to heartbeats to `out`.
    pub fn on_read(&mut self, now: Instant, out: &mut BytesMut, counters: &Counters) -> Progress {
        let mut progress = Progress::default();
        loop {
            let frame = match wire::decode_frame(&mut self.read_buf, FRAME_BYTES_MAX) {
                Ok(Decoded::Frame(frame)) => frame,
                Ok(Decoded::NeedMore(_)) => return progress,
                Err(_) => {
                    self.error(ErrorKind::Decode, counters);
                    progress.fatal = true;
                    return progress;
                }
            };
            let header = frame.header;
            if header.flags.event {
                if wire::is_readonly_event(&frame.bytes) {
                    progress.readonly = true;
                    continue;
                }
                // Heartbeats from the proxy or provider; answer requests, ignore the rest.
                if header.flags.request && header.flags.two_way {
                    out.extend_from_slice(&encode::heartbeat_response(header.request_id));
                }
                continue;
            }
            if header.flags.request {
                self.error(ErrorKind::Decode, counters);
                continue;
            }
            let Some(sent_at) = self.inflight.remove(&header.request_id) else {
                self.error(ErrorKind::UnknownId, counters);
                continue;
            };
            progress.completed += 1;
            let ok = header.status == Status::Ok;
            self.sample(sent_at, now, ok);
            if !ok {
                self.error(ErrorKind::Status, counters);
                continue;
            }
            if ResponseRepr::parse(&header, frame.body()).is_err() {
                self.error(ErrorKind::Decode, counters);
                continue;
            }
            counters.received(1);
            if sent_at >= self.measure_from {
                self.rec.record(now.saturating_duration_since(sent_at));
            }
        }
    }

    /// Drops requests in flight for longer than `timeout`, counting each as a timeout.
    /// Returns how many.
    pub fn expire(&mut self, now: Instant, timeout: Duration, counters: &Counters) -> usize {
        let before = self.inflight.len();
        let measure_from = self.measure_from;
        let mut samples = self.samples.take();
        self.inflight.retain(|_, sent_at| {
            let keep = now.saturating_duration_since(*sent_at) < timeout;
            if let (false, Some(v)) = (keep, samples.as_mut()) {
                if *sent_at >= measure_from {
                    v.push(Sample {
                        sent_at: *sent_at,
                        latency: now.saturating_duration_since(*sent_at),
                        ok: false,
                    });
                }
            }
            keep
        });
        self.samples = samples;
        let expired = before - self.inflight.len();
        for _ in 0..expired {
            self.error(ErrorKind::Timeout, counters);
        }
        expired
    }

    /// Counts every request still in flight as a timeout (the run ended without its answer).
    pub fn expire_all(&mut self, counters: &Counters) {
        for _ in 0..self.inflight.len() {
            self.error(ErrorKind::Timeout, counters);
        }
        self.inflight.clear();
    }

    fn sample(&mut self, sent_at: Instant, now: Instant, ok: bool) {
        if let Some(v) = self.samples.as_mut() {
            if sent_at >= self.measure_from {
                v.push(Sample {
                    sent_at,
                    latency: now.saturating_duration_since(sent_at),
                    ok,
                });
            }
        }
    }

    /// Forgets the requests in flight without counting them (closed loop: the run ended).
    pub fn abandon(&mut self) {
        self.inflight.clear();
    }

    pub fn error(&mut self, kind: ErrorKind, counters: &Counters) {
        self.errors.add(kind);
        counters.error();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(req_id: u64, status: Status) -> Bytes {
        if status == Status::Ok {
            encode::response_ok(req_id, &Arg::Str("ok"), None)
        } else {
            encode::response_error(req_id, status, "no")
        }
    }

    #[test]
    fn checks_each_response() {
        let counters = Counters::default();
        let t0 = Instant::now();
        let mut c = ConnState::new(1, Template::new("a.B", "m", 8), t0);
        let mut out = BytesMut::new();
        for _ in 0..3 {
            c.push_request(&mut out, t0);
        }
        let base = 1u64 << CONN_ID_SHIFT;
        // Out of order, one error status, one unknown id, split across reads.
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&answer(base + 2, Status::Ok));
        bytes.extend_from_slice(&answer(base, Status::ServerError));
        bytes.extend_from_slice(&answer(7, Status::Ok));
        let tail = bytes.split_off(10);
        c.read_buf.extend_from_slice(&bytes);
        let mut hb = BytesMut::new();
        assert_eq!(c.on_read(t0, &mut hb, &counters).completed, 0);
        c.read_buf.extend_from_slice(&tail);
        let p = c.on_read(t0, &mut hb, &counters);
        assert_eq!(p.completed, 2);
        assert!(!p.fatal);
        assert_eq!(c.errors.status, 1);
        assert_eq!(c.errors.unknown_id, 1);
        assert_eq!(c.rec.hist.len(), 1);
        assert_eq!(c.inflight(), 1);
        // A heartbeat request is answered; garbage is fatal.
        c.read_buf.extend_from_slice(&encode::heartbeat_request(99));
        c.on_read(t0, &mut hb, &counters);
        assert!(wire::is_heartbeat(&hb));
        c.read_buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert!(c.on_read(t0, &mut hb, &counters).fatal);
        assert_eq!(c.errors.decode, 1);
        // What is left times out.
        assert_eq!(
            c.expire(
                t0 + Duration::from_secs(5),
                Duration::from_secs(1),
                &counters
            ),
            1
        );
        assert_eq!(c.errors.timeout, 1);
    }
}
