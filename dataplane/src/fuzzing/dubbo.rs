//! The Dubbo script: up to two consumers and the providers behind two endpoints, all played
//! by the fuzzer's input, around one real Dubbo listener and cluster pool.
//!
//! Operations (one byte each, then their arguments): a consumer sends a well-formed request
//! (two-way or one-way, routed, routed with a 1 ms deadline, or unroutable), a heartbeat, raw
//! bytes, half-closes or vanishes, stops or resumes reading; a connect attempt is accepted or
//! refused; a provider answers one of the requests it received (OK, error, large, or an id it
//! never got), sends a heartbeat or readonly event, raw bytes, half-closes or vanishes; the
//! clock moves a few ms.
//!
//! Checked after every operation: ringside's output to consumers and providers is well-formed
//! Dubbo; no two-way request is answered more often than it was sent (per id and consumer);
//! request ids on one provider connection never repeat. At the end (providers gone, connects
//! refused, consumers' answers read): every two-way request of a consumer that only sent
//! well-formed frames is answered exactly once; every connection task ends; the active-request
//! and connection gauges are back to 0, and so is the shard's buffer budget.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use codec::dubbo::encode::{self, Arg, RequestBuilder};
use codec::dubbo::{decode_frame, Decoded, Status};
use shard::mem::MemStream;

use super::{settle, Fixture, Script, Upstreams, PIPE_BYTES, SLEEPS_MAX};

/// The config every run serves: one listener, routes with a normal and a 1 ms deadline, one
/// cluster of two endpoints with small pending limits.
pub const CONFIG: &str = r#"
listeners:
  - name: in
    address: 127.0.0.1:20880
    protocol: dubbo
    dubbo:
      frame_bytes_max: 8192
      pending_requests_per_connection_max: 4
      routes:
        - match: {interface: {exact: com.example.Svc}, method: {exact: slow}}
          route: {cluster: backend, timeout_ms: 1}
        - match: {interface: {exact: com.example.Svc}}
          route: {cluster: backend}
clusters:
  - name: backend
    endpoints: [127.0.0.2:20880, 127.0.0.3:20880]
    connect_timeout_ms: 60000
    timeout_ms: 60000
    connections_per_host: 2
    pending_requests_max: 6
    heartbeat_interval_ms: 60000
"#;

/// Largest frame ringside may send either way (the listener's limit; local replies are small).
const FRAME_MAX: usize = 1 << 20;

thread_local! {
    static FIXTURE: Fixture = Fixture::new(CONFIG);
}

/// Operation codes (the first byte of each operation, modulo their count).
pub mod op {
    pub const REQUEST: u8 = 0;
    pub const HEARTBEAT: u8 = 1;
    pub const RAW: u8 = 2;
    pub const CLOSE: u8 = 3;
    pub const VANISH: u8 = 4;
    pub const READING: u8 = 5;
    pub const ACCEPT: u8 = 6;
    pub const REFUSE: u8 = 7;
    pub const REPLY: u8 = 8;
    pub const UP_EVENT: u8 = 9;
    pub const UP_RAW: u8 = 10;
    pub const UP_CLOSE: u8 = 11;
    pub const SLEEP: u8 = 12;
    pub const COUNT: u8 = 13;
}

/// A request frame as the REQUEST operation builds it from its three argument bytes:
/// `flags` (bit 0: two-way; bits 1-2: echo, slow (1 ms deadline), unroutable, echo), `id`,
/// `size` (argument length / 4).
pub fn request(flags: u8, id: u8, size: u8) -> bytes::Bytes {
    let (interface, method) = match (flags >> 1) & 3 {
        1 => ("com.example.Svc", "slow"),
        2 => ("com.example.Unknown", "echo"),
        _ => ("com.example.Svc", "echo"),
    };
    let arg = "a".repeat(usize::from(size) * 4);
    RequestBuilder::new(interface, method)
        .request_id(u64::from(id))
        .two_way(flags & 1 == 1)
        .version("1.0.0")
        .args(&[Arg::Str(&arg)])
        .build()
}

/// One consumer connection, as the script sees it.
struct Consumer {
    end: Option<MemStream>,
    /// Two-way requests (and heartbeats) sent, by id.
    sent: HashMap<u64, u32>,
    answered: HashMap<u64, u32>,
    out: BytesMut,
    /// Sent only well-formed frames and never closed: every two-way request must be answered.
    clean: bool,
    reading: bool,
    done: Rc<Cell<bool>>,
    eof: bool,
}

/// One provider connection (accepted connect), as the script sees it.
struct Provider {
    end: Option<MemStream>,
    input: BytesMut,
    /// Two-way requests received (ids on this connection).
    requests: Vec<u64>,
    ids: HashSet<u64>,
}

/// Runs one script; panics on a broken invariant. `live_bytes`: the heap in use (the fuzz
/// target's counting allocator), bounded during the run.
pub fn run(data: &[u8], live_bytes: fn() -> usize) {
    let fx = FIXTURE.with(Fixture::clone);
    let data = data.to_vec();
    // A task of its own, so that its turns let the connection tasks run.
    super::runtime()
        .block_on(async move { shard::monoio::spawn(script(fx, data, live_bytes)).await });
    Upstreams::uninstall();
    super::check_no_leak(live_bytes);
}

async fn script(fx: Fixture, data: Vec<u8>, live_bytes: fn() -> usize) {
    let base = live_bytes();
    let ups = Upstreams::install();
    let (shard, stats) = fx.shard();
    let ctx = shard.listener("in").expect("listener in");
    let mut consumers: Vec<Consumer> = Vec::new();
    let mut providers: Vec<Provider> = Vec::new();
    let mut s = Script::new(&data);
    let mut sleeps = 0;
    let mut peak = 0;
    while !s.is_empty() {
        let code = s.byte() % op::COUNT;
        let a = s.args();
        // Raw bytes follow their operation (length: argument 1).
        let raw = match code {
            op::RAW | op::UP_RAW => s.bytes(usize::from(a[1])),
            _ => &[],
        };
        match code {
            op::REQUEST | op::HEARTBEAT | op::RAW | op::CLOSE | op::VANISH | op::READING => {
                let pick = usize::from(a[0]);
                if consumers.len() < 2 && (consumers.is_empty() || pick & 1 == 1) {
                    consumers.push(open_consumer(&ctx));
                }
                let n = consumers.len();
                let c = &mut consumers[pick % n];
                let Some(end) = &c.end else { continue };
                match code {
                    op::REQUEST => {
                        let (flags, id, size) = (a[1], a[2], a[3]);
                        let frame = request(flags, id, size);
                        // A frame only partly written (the pipe is full: ringside paused
                        // reading) leaves a torn frame in the stream, one-way or not.
                        if !write_all(end, &frame) {
                            c.clean = false;
                        } else if flags & 1 == 1 {
                            *c.sent.entry(u64::from(id)).or_default() += 1;
                        }
                    }
                    op::HEARTBEAT => {
                        let id = a[1];
                        if write_all(end, &encode::heartbeat_request(u64::from(id))) {
                            *c.sent.entry(u64::from(id)).or_default() += 1;
                        } else {
                            c.clean = false;
                        }
                    }
                    op::RAW => {
                        c.clean = false;
                        write_all(end, raw);
                    }
                    op::CLOSE => {
                        c.clean = false;
                        end.close_write();
                    }
                    op::VANISH => {
                        c.clean = false;
                        c.end = None;
                    }
                    _ => c.reading = !c.reading,
                }
            }
            op::ACCEPT => {
                if let Some((_, end)) = ups.accept(usize::from(a[0])) {
                    providers.push(Provider {
                        end: Some(end),
                        input: BytesMut::new(),
                        requests: Vec::new(),
                        ids: HashSet::new(),
                    });
                }
            }
            op::REFUSE => {
                ups.refuse(usize::from(a[0]));
            }
            op::REPLY | op::UP_EVENT | op::UP_RAW | op::UP_CLOSE => {
                let pick = usize::from(a[0]);
                if providers.is_empty() {
                    continue;
                }
                let n = providers.len();
                let p = &mut providers[pick % n];
                let Some(end) = &p.end else { continue };
                match code {
                    op::REPLY => {
                        let (which, kind) = (usize::from(a[1]), a[2]);
                        let Some(&id) = p.requests.get(which % p.requests.len().max(1)) else {
                            continue;
                        };
                        let frame = match kind % 4 {
                            0 => encode::response_ok(id, &Arg::Str("ok"), None),
                            1 => encode::response_error(id, Status::ServiceError, "boom"),
                            2 => encode::response_ok(id, &Arg::Str(&"r".repeat(6000)), None),
                            _ => encode::response_ok(id.wrapping_add(1000), &Arg::Null, None),
                        };
                        write_all(end, &frame);
                    }
                    op::UP_EVENT => {
                        let id = u64::from(a[1]);
                        let frame = if a[2] & 1 == 0 {
                            encode::heartbeat_request(id)
                        } else {
                            encode::readonly_event(id)
                        };
                        write_all(end, &frame);
                    }
                    op::UP_RAW => {
                        write_all(end, raw);
                    }
                    _ => {
                        if a[1] & 1 == 0 {
                            end.close_write();
                        } else {
                            p.end = None;
                        }
                    }
                }
            }
            _ => {
                if sleeps < SLEEPS_MAX {
                    sleeps += 1;
                    shard::monoio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        settle().await;
        collect(&mut consumers, &mut providers, false);
        peak = peak.max(live_bytes().saturating_sub(base));
    }

    // The end: providers leave and no endpoint answers any more, so every request still in
    // flight must be answered by ringside itself.
    ups.refuse_all();
    for p in &mut providers {
        p.end = None;
    }
    settle().await;
    collect(&mut consumers, &mut providers, true);
    for (i, c) in consumers.iter().enumerate() {
        if c.clean {
            assert!(
                !c.eof,
                "consumer {i}: ringside closed a well-behaved consumer"
            );
            assert_eq!(
                c.sent, c.answered,
                "consumer {i}: two-way requests (by id: count) sent vs answered"
            );
        }
    }
    for c in &mut consumers {
        if let Some(end) = &c.end {
            end.close_write();
        }
    }
    settle().await;
    collect(&mut consumers, &mut providers, true);
    for (i, c) in consumers.iter().enumerate() {
        assert!(
            c.done.get(),
            "consumer {i}: connection task still running after EOF"
        );
    }
    fx.check_end(&stats, shard.budget().used(), peak, data.len());
    drop(shard);
}

fn open_consumer(ctx: &Rc<crate::worker::listener::ListenerCtx>) -> Consumer {
    let (ours, theirs) = shard::mem::pair(PIPE_BYTES);
    let done = Rc::new(Cell::new(false));
    let (ctx, flag) = (ctx.clone(), done.clone());
    shard::monoio::spawn(async move {
        crate::worker::listener::serve_connection(theirs, ctx).await;
        flag.set(true);
    });
    Consumer {
        end: Some(ours),
        sent: HashMap::new(),
        answered: HashMap::new(),
        out: BytesMut::new(),
        clean: true,
        reading: true,
        done,
        eof: false,
    }
}

/// Writes what fits (a peer that is not read blocks like a full socket); whether all of it did.
fn write_all(end: &MemStream, bytes: &[u8]) -> bool {
    matches!(end.try_write(bytes), Ok(n) if n == bytes.len())
}

/// Reads and checks what ringside wrote to consumers (those reading, or all at the end) and
/// providers.
fn collect(consumers: &mut [Consumer], providers: &mut [Provider], all: bool) {
    for (i, c) in consumers.iter_mut().enumerate() {
        let Some(end) = &c.end else { continue };
        if !(c.reading || all) {
            continue;
        }
        loop {
            let before = c.out.len();
            let mut v = Vec::new();
            match end.try_read(&mut v) {
                None => c.eof = true,
                Some(_) => c.out.extend_from_slice(&v),
            }
            if c.out.len() == before {
                break;
            }
        }
        while let Some(f) = next(&mut c.out, "consumer", i) {
            let h = f.header;
            if h.flags.request {
                // Only ringside's own events go this way (readonly when draining).
                assert!(h.flags.event, "consumer {i}: ringside sent a request");
                continue;
            }
            let id = h.request_id;
            let n = c.answered.entry(id).or_default();
            *n += 1;
            let sent = c.sent.get(&id).copied().unwrap_or(0);
            if c.clean {
                assert!(
                    *n <= sent,
                    "consumer {i}: id {id} answered {n} times, sent {sent}"
                );
            }
        }
    }
    for (i, p) in providers.iter_mut().enumerate() {
        let Some(end) = &p.end else { continue };
        let mut v = Vec::new();
        while end.try_read(&mut v).is_some_and(|n| n > 0) {}
        p.input.extend_from_slice(&v);
        while let Some(f) = next(&mut p.input, "provider", i) {
            let h = f.header;
            if !h.flags.request {
                continue; // answers to the provider's heartbeats
            }
            let id = h.request_id;
            assert!(
                p.ids.insert(id),
                "provider {i}: request id {id} sent twice on one connection"
            );
            if h.flags.two_way && !h.flags.event {
                p.requests.push(id);
            }
        }
    }
}

/// The next whole frame ringside wrote, which must be well-formed.
fn next(buf: &mut BytesMut, who: &str, i: usize) -> Option<codec::dubbo::Frame> {
    match decode_frame(buf, FRAME_MAX) {
        Ok(Decoded::Frame(f)) => Some(f),
        Ok(Decoded::NeedMore(_)) => None,
        Err(e) => panic!("{who} {i}: ringside sent a bad frame: {e:?}"),
    }
}

/// The config of [`steady_state_allocations`]: one listener, one route, one endpoint.
const CLOSED_LOOP_CONFIG: &str = r#"
listeners:
  - name: in
    address: 127.0.0.1:20880
    protocol: dubbo
    dubbo:
      routes:
        - match: {interface: {exact: com.example.Svc}}
          route: {cluster: backend}
clusters:
  - name: backend
    endpoints: [127.0.0.2:20880]
    connect_timeout_ms: 60000
    timeout_ms: 60000
    heartbeat_interval_ms: 60000
"#;

/// Heap allocations made while one consumer sends `measured` two-way requests one at a time
/// (a 1x1 closed loop) through a Dubbo listener to one provider, after `warmup` such requests:
/// the real downstream, routing and upstream pool code over in-memory streams. `allocations`:
/// the allocator's count of allocation calls (the bench `dubbo_allocs` counts them). The
/// harness itself allocates nothing per request once warm.
pub fn steady_state_allocations(warmup: u32, measured: u32, allocations: fn() -> u64) -> u64 {
    let fx = Fixture::new(CLOSED_LOOP_CONFIG);
    let n = super::runtime().block_on(async move {
        shard::monoio::spawn(closed_loop(fx, warmup, measured, allocations)).await
    });
    Upstreams::uninstall();
    n
}

async fn closed_loop(fx: Fixture, warmup: u32, measured: u32, allocations: fn() -> u64) -> u64 {
    let ups = Upstreams::install();
    let (shard, _stats) = fx.shard();
    let ctx = shard.listener("in").expect("listener in");
    let (mut consumer, theirs) = shard::mem::pair(PIPE_BYTES);
    shard::monoio::spawn(crate::worker::listener::serve_connection(theirs, ctx));
    let request = request(1, 7, 4);
    let template = encode::response_ok(0, &Arg::Str("ok"), None);
    let mut reply = Vec::with_capacity(template.len());
    let (mut buf, mut acc) = (Vec::with_capacity(64 << 10), Vec::with_capacity(64 << 10));
    let mut provider: Option<MemStream> = None;
    let mut start = 0;
    for i in 0..warmup + measured {
        if i == warmup {
            start = allocations();
        }
        assert_eq!(consumer.try_write(&request).ok(), Some(request.len()));
        while provider.is_none() {
            match ups.accept(0) {
                Some((_, end)) => provider = Some(end),
                None => settle().await,
            }
        }
        let p = provider.as_mut().expect("accepted");
        let id = read_frame(p, &mut buf, &mut acc).await;
        reply.clear();
        reply.extend_from_slice(&template);
        reply[4..12].copy_from_slice(&id.to_be_bytes());
        assert_eq!(p.try_write(&reply).ok(), Some(reply.len()));
        assert_eq!(read_frame(&mut consumer, &mut buf, &mut acc).await, 7);
    }
    let n = allocations() - start;
    drop(shard);
    n
}

/// Reads one whole Dubbo frame from `end` (through `acc`); returns its request id.
async fn read_frame(end: &mut MemStream, buf: &mut Vec<u8>, acc: &mut Vec<u8>) -> u64 {
    use shard::monoio::io::AsyncReadRent;
    loop {
        if acc.len() >= 16 {
            let len = 16 + u32::from_be_bytes(acc[12..16].try_into().expect("4 bytes")) as usize;
            if acc.len() >= len {
                let id = u64::from_be_bytes(acc[4..12].try_into().expect("8 bytes"));
                acc.drain(..len);
                return id;
            }
        }
        let (r, b) = end.read(std::mem::take(buf)).await;
        *buf = b;
        let n = r.expect("in-memory read");
        assert!(n > 0, "the other end closed");
        acc.extend_from_slice(&buf[..n]);
    }
}
