//! A Rust Dubbo2 provider and consumer for tests, built on the codec crate.
//!
//! The provider answers each Hessian2 request with the string `"{name}|{method}|{arg0}"`
//! (so tests can tell which provider served a request; method `big` with an int argument n
//! answers a string of n bytes; method `attachment` with a string argument k answers the
//! request's attachment k, or `-`; method `slow` with an int argument ms answers after ms
//! milliseconds), echoes bodies of other serializations
//! unchanged, answers heartbeats, and holds requests to method `hold` unanswered until it is
//! stopped. It counts the connections it accepted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
// Test code, not the data path: a lock is fine here.
use std::sync::Arc;
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::dubbo::encode::{Arg, RequestBuilder};
use codec::dubbo::request::RequestRepr;
use codec::dubbo::{self, encode, Decoded, Status};
use codec::hessian2::Scalar;

pub struct Provider {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// While set, every Hessian2 request is answered with status 80 (SERVER_ERROR), as a
    /// provider in trouble does.
    pub fail: Arc<AtomicBool>,
    /// The method of every Hessian2 request received, one-way ones included, in order.
    #[allow(clippy::disallowed_types)]
    pub seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    #[allow(clippy::disallowed_types)]
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Provider {
    pub fn start(name: &str) -> Provider {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name)
    }

    pub fn start_on(addr: SocketAddr, name: &str) -> Provider {
        let l = TcpListener::bind(addr).unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let fail = Arc::new(AtomicBool::new(false));
        #[allow(clippy::disallowed_types)]
        let conns = Arc::new(Mutex::new(Vec::new()));
        #[allow(clippy::disallowed_types)]
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s, c, name, log, failing) = (
            accepted.clone(),
            stop.clone(),
            conns.clone(),
            name.to_string(),
            seen.clone(),
            fail.clone(),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_nodelay(true).unwrap();
                        a.fetch_add(1, Ordering::SeqCst);
                        c.lock().unwrap().push(conn.try_clone().unwrap());
                        let (name, log, failing) = (name.clone(), log.clone(), failing.clone());
                        std::thread::spawn(move || serve(conn, &name, &log, &failing));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Provider {
            addr,
            accepted,
            fail,
            seen,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    /// Closes the listener and resets every connection (like a killed process).
    pub fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[allow(clippy::disallowed_types)]
fn serve(mut conn: TcpStream, name: &str, seen: &Mutex<Vec<String>>, failing: &AtomicBool) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        loop {
            match dubbo::decode_frame(&mut buf, 64 << 20) {
                Ok(Decoded::Frame(f)) => {
                    let h = f.header;
                    let reply: Option<Bytes> = if h.flags.event {
                        h.flags
                            .two_way
                            .then(|| encode::heartbeat_response(h.request_id))
                    } else if h.serialization != dubbo::Serialization::Hessian2 {
                        // Echo an opaque body unchanged, in the same serialization.
                        let mut out = f.bytes.clone();
                        out[2] = h.serialization.into(); // response: no request flag
                        out[3] = 20;
                        Some(out.freeze())
                    } else {
                        let req = RequestRepr::parse(f.body()).expect("provider got a bad request");
                        let method = String::from_utf8_lossy(req.method()).to_string();
                        seen.lock().unwrap().push(method.clone());
                        if method == "hold" {
                            None
                        } else if failing.load(Ordering::SeqCst) {
                            Some(encode::response_error(
                                h.request_id,
                                Status::ServerError,
                                &format!("{name} is failing"),
                            ))
                        } else {
                            let arg0 = match req.argument(0) {
                                Ok(Some(Scalar::Str(s))) => String::from_utf8_lossy(s).to_string(),
                                Ok(Some(Scalar::Int(i))) => i.to_string(),
                                Ok(Some(Scalar::Long(i))) => i.to_string(),
                                Ok(Some(Scalar::Binary(b))) => format!("{} bytes", b.len()),
                                Ok(Some(Scalar::BinaryChunked(c))) => {
                                    let mut v = Vec::new();
                                    c.copy_to(&mut v);
                                    format!("{} bytes", v.len())
                                }
                                _ => String::new(),
                            };
                            if method == "slow" {
                                // `slow(ms)`: answered after ms milliseconds (this
                                // connection's later requests wait behind it).
                                let ms = arg0.parse::<u64>().unwrap_or(0);
                                std::thread::sleep(Duration::from_millis(ms));
                            }
                            let value = match (method.as_str(), arg0.parse::<usize>()) {
                                // `big(n)`: an answer of n bytes.
                                ("big", Ok(n)) => "x".repeat(n),
                                // `attachment(key)`: the value of that attachment, or `-`.
                                ("attachment", _) => req
                                    .attachment(arg0.as_bytes())
                                    .map_or("-".into(), |v| String::from_utf8_lossy(v).into()),
                                _ => format!("{name}|{method}|{arg0}"),
                            };
                            Some(encode::response_ok(h.request_id, &Arg::Str(&value), None))
                        }
                    };
                    if let Some(r) = reply {
                        if conn.write_all(&r).is_err() {
                            return;
                        }
                    }
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(_) => return,
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A response as the consumer sees it.
#[derive(Debug)]
pub struct Answer {
    pub id: u64,
    pub status: Status,
    /// The string value (OK responses) or error message (others).
    pub text: String,
    pub frame: BytesMut,
}

/// A blocking Dubbo consumer over one connection.
pub struct Consumer {
    pub conn: TcpStream,
    buf: BytesMut,
    next_id: u64,
    /// The proxy said it is going away (Dubbo readonly event): a well-behaved consumer opens a
    /// new connection for its next request.
    pub readonly: bool,
}

impl Consumer {
    pub fn connect(addr: SocketAddr) -> Consumer {
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_nodelay(true).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Consumer {
            conn,
            buf: BytesMut::new(),
            next_id: 1,
            readonly: false,
        }
    }

    /// Sends a request built by `b` (its id replaced by a fresh one); returns the id.
    pub fn send(&mut self, b: RequestBuilder<'_>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let frame = b.request_id(id).build();
        self.conn.write_all(&frame).unwrap();
        id
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.conn.write_all(bytes).unwrap();
    }

    /// [`Consumer::send`] that reports a failed write instead of panicking.
    pub fn try_send(&mut self, b: RequestBuilder<'_>) -> std::io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.conn.write_all(&b.request_id(id).build())?;
        Ok(id)
    }

    /// Whether the proxy has closed this connection (its FIN already arrived), without
    /// blocking; bytes that arrived before it are kept for [`Consumer::recv`]. What an
    /// event-driven client library knows when it picks a connection for its next call.
    pub fn closed_by_peer(&mut self) -> bool {
        let _ = self.conn.set_nonblocking(true);
        let mut chunk = [0u8; 4096];
        let closed = loop {
            match self.conn.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        let _ = self.conn.set_nonblocking(false);
        closed
    }

    /// The next answer (events from the proxy are noted and skipped), or `None` at EOF /
    /// reset / timeout.
    pub fn recv(&mut self) -> Option<Answer> {
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            match dubbo::decode_frame(&mut self.buf, 64 << 20) {
                Ok(Decoded::Frame(f)) if f.header.flags.event && f.header.flags.request => {
                    if dubbo::is_readonly_event(&f.bytes) {
                        self.readonly = true;
                    }
                    continue;
                }
                Ok(Decoded::Frame(f)) => {
                    let h = f.header;
                    let text = answer_text(&f.bytes);
                    return Some(Answer {
                        id: h.request_id,
                        status: h.status,
                        text,
                        frame: f.bytes,
                    });
                }
                Ok(Decoded::NeedMore(_)) => {}
                Err(e) => panic!("consumer got a bad frame: {e}"),
            }
            match self.conn.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends and waits for the answer to that request.
    pub fn call(&mut self, b: RequestBuilder<'_>) -> Answer {
        let id = self.send(b);
        let a = self.recv().expect("an answer");
        assert_eq!(a.id, id, "answer carries the request's id");
        a
    }

    /// Receives `n` answers, keyed by id.
    pub fn recv_n(&mut self, n: usize) -> HashMap<u64, Answer> {
        let mut m = HashMap::new();
        for _ in 0..n {
            let a = self.recv().expect("an answer");
            m.insert(a.id, a);
        }
        m
    }
}

/// The string in a response body: the value of an OK response, the message of an error one.
fn answer_text(frame: &[u8]) -> String {
    let body = &frame[dubbo::HEADER_BYTES..];
    if frame[3] == 20 {
        // [response type int][value]
        let mut r = codec::hessian2::Reader::new(body);
        let _kind = r.read_value();
        match r.read_value() {
            Ok(Scalar::Str(s)) => String::from_utf8_lossy(s).to_string(),
            other => format!("{other:?}"),
        }
    } else {
        let mut r = codec::hessian2::Reader::new(body);
        match r.read_value() {
            Ok(Scalar::Str(s)) => String::from_utf8_lossy(s).to_string(),
            other => format!("{other:?}"),
        }
    }
}

pub fn dubbo_config(
    admin: SocketAddr,
    listen: SocketAddr,
    clusters: &[(&str, &[SocketAddr])],
    listener_extra: &str,
) -> String {
    let mut s = format!(
        "admin:\n  address: {admin}\nlisteners:\n  - name: dubbo\n    address: {listen}\n    protocol: dubbo\n{listener_extra}clusters:\n"
    );
    for (name, eps) in clusters {
        let eps: Vec<String> = eps.iter().map(|e| format!("\"{e}\"")).collect();
        s.push_str(&format!(
            "  - name: {name}\n    endpoints: [{}]\n    timeout_ms: 1000\n",
            eps.join(", ")
        ));
    }
    s
}
