//! One collector: the bounded queue shards hand span batches to, and the exporter thread that
//! sends them with OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
//!
//! Collectors are shared by (cluster, service name) across listeners and config updates (one
//! exporter thread each). A collector no snapshot and no listener of a shard uses any more is
//! dropped, which wakes its exporter thread to end. The exporter never holds up a shard: when
//! it falls behind (a slow or dead collector), the queue fills and shards drop batches,
//! counted (`tracing.spans_dropped`). An export that fails is tried once more, on the next
//! endpoint, then dropped, counted (`tracing.export_failed`) and logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::Thread;
use std::time::Duration;

use bytes::{Buf, BufMut};
use crossbeam_queue::ArrayQueue;

use super::{BATCH_BYTES, QUEUED_BATCHES_MAX};
use crate::stats::{Kind, ShardStats, StatId, Stats};

/// How long the exporter sleeps when nothing arrives (every batch wakes it).
const IDLE_PARK: Duration = Duration::from_secs(1);
/// One export request holds at most this many bytes of spans (batches are joined up to it).
pub const EXPORT_BYTES_MAX: usize = 1 << 20;
/// An export (connect included) that takes longer fails.
pub const EXPORT_TIMEOUT_MS: u64 = 5_000;
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Tries of one export request before it is dropped.
const EXPORT_TRIES: u32 = 2;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where one listener's spans go.
pub struct Collector {
    cluster: String,
    service_name: String,
    queue: ArrayQueue<Vec<u8>>,
    /// Sent batches, cleared, for shards to fill again (no allocation in steady state).
    spare: ArrayQueue<Vec<u8>>,
    /// The collector cluster's endpoints, set by the control thread on every config update
    /// (read by the exporter thread only; no shard takes this lock).
    #[allow(clippy::disallowed_types)]
    endpoints: std::sync::Mutex<Vec<SocketAddr>>,
    exporter: OnceLock<Thread>,
    /// The exporter holds batches it has not finished sending.
    busy: AtomicBool,
    /// Export requests that failed (every try), and their spans' bytes: logged.
    failed: AtomicU64,
    /// `tracing.export_ok` / `tracing.export_failed` (tag `collector`): export requests sent,
    /// and dropped after every try failed. Registered by the first shard that batches spans
    /// for this collector ([`Collector::count_in`]); written by the exporter thread only (in
    /// shard 0's slots, which no shard writes for these stats).
    counts: OnceLock<(ShardStats, ExportStatIds)>,
}

#[derive(Clone, Copy, Debug)]
struct ExportStatIds {
    ok: StatId,
    failed: StatId,
}

/// The last user of a collector left (the config no longer names it): its exporter thread
/// wakes, finds it gone and ends.
impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(t) = self.exporter.get() {
            t.unpark();
        }
    }
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("cluster", &self.cluster)
            .field("service_name", &self.service_name)
            .finish()
    }
}

#[allow(clippy::disallowed_types)]
type Registry = std::sync::Mutex<HashMap<(String, String), Weak<Collector>>>;

/// Every collector by (cluster, service name) (weak: the snapshots that name one keep it).
fn registry() -> &'static Registry {
    static COLLECTORS: OnceLock<Registry> = OnceLock::new();
    COLLECTORS.get_or_init(Default::default)
}

/// Waits (up to `timeout`) until every batch handed to an exporter is sent: the process is
/// exiting, after its shards flushed their batches.
pub fn drain_all(timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    let all: Vec<Arc<Collector>> = {
        let r = registry().lock().unwrap_or_else(|e| e.into_inner());
        r.values().filter_map(Weak::upgrade).collect()
    };
    for c in all {
        while !c.queue.is_empty() || c.busy.load(Ordering::SeqCst) {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(cluster = %c.cluster, "tracing: exiting with spans not yet exported");
                break;
            }
            if let Some(t) = c.exporter.get() {
                t.unpark();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Collector {
    /// The collector of (`cluster`, `service_name`), shared with every listener naming the
    /// same; starts its exporter thread the first time.
    pub fn open(cluster: &str, service_name: &str) -> std::io::Result<Arc<Collector>> {
        let key = (cluster.to_string(), service_name.to_string());
        let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = r.get(&key).and_then(Weak::upgrade) {
            return Ok(c);
        }
        let c = Arc::new(Collector {
            cluster: key.0.clone(),
            service_name: key.1.clone(),
            queue: ArrayQueue::new(QUEUED_BATCHES_MAX),
            spare: ArrayQueue::new(QUEUED_BATCHES_MAX),
            endpoints: Default::default(),
            exporter: OnceLock::new(),
            busy: AtomicBool::new(false),
            failed: AtomicU64::new(0),
            counts: OnceLock::new(),
        });
        let weak = Arc::downgrade(&c);
        let thread = std::thread::Builder::new()
            .name("ringside-trace".into())
            .spawn(move || {
                shard::pin_aux_thread();
                export_loop(weak)
            })?;
        let _ = c.exporter.set(thread.thread().clone());
        r.retain(|_, w| w.strong_count() > 0);
        r.insert(key, Arc::downgrade(&c));
        Ok(c)
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Registers the exporter's stats in `stats` (once; a shard calls it when it starts a
    /// batch for this collector, off the request path).
    pub(super) fn count_in(&self, stats: &Arc<Stats>) {
        self.counts.get_or_init(|| {
            let tags = [("collector", self.cluster.as_str())];
            let ids = ExportStatIds {
                ok: stats.add("tracing", "export_ok", &tags, Kind::Counter),
                failed: stats.add("tracing", "export_failed", &tags, Kind::Counter),
            };
            (stats.shard(0), ids)
        });
    }

    /// The collector cluster's endpoints now (control thread, on every update).
    pub fn set_endpoints(&self, addrs: Vec<SocketAddr>) {
        *self.endpoints.lock().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    /// An empty batch to fill (a sent one when there is one).
    pub(super) fn spare_batch(&self) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES + BATCH_BYTES / 4))
    }

    /// Queues a batch for the exporter; false (the batch dropped) when the queue is full.
    pub(super) fn push(&self, batch: Vec<u8>) -> bool {
        let ok = self.queue.push(batch).is_ok();
        if let Some(t) = self.exporter.get() {
            t.unpark();
        }
        ok
    }
}

/// The exporter thread: joins queued batches into export requests and sends them, until the
/// collector is gone.
fn export_loop(collector: Weak<Collector>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "tracing: cannot start the exporter's runtime; spans are dropped");
            return;
        }
    };
    let mut client = Client::default();
    let mut spans: Vec<u8> = Vec::new();
    let mut request: Vec<u8> = Vec::new();
    loop {
        let Some(c) = collector.upgrade() else {
            tracing::debug!("tracing: collector left the config; exporter thread ends");
            return;
        };
        c.busy.store(true, Ordering::SeqCst);
        spans.clear();
        while spans.len() < EXPORT_BYTES_MAX {
            let Some(mut batch) = c.queue.pop() else {
                break;
            };
            spans.extend_from_slice(&batch);
            batch.clear();
            if batch.capacity() <= 4 * BATCH_BYTES {
                let _ = c.spare.push(batch);
            }
        }
        if spans.is_empty() {
            c.busy.store(false, Ordering::SeqCst);
            drop(c);
            std::thread::park_timeout(IDLE_PARK);
            continue;
        }
        super::otlp::export_request(&c.service_name, &spans, &mut request);
        let body = bytes::Bytes::copy_from_slice(&request);
        let mut failure = None;
        for _ in 0..EXPORT_TRIES {
            let endpoints = c
                .endpoints
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match rt.block_on(client.export(&endpoints, body.clone())) {
                Ok(()) => {
                    failure = None;
                    break;
                }
                Err(e) => {
                    tracing::debug!(cluster = %c.cluster, error = %e, "tracing: export failed");
                    client.next();
                    failure = Some(e);
                }
            }
        }
        if let Some((stats, ids)) = c.counts.get() {
            stats.inc(if failure.is_none() {
                ids.ok
            } else {
                ids.failed
            });
        }
        if let Some(e) = failure {
            let n = c.failed.fetch_add(1, Ordering::Relaxed) + 1;
            // Once, then every 100th: a dead collector must not flood the log.
            if n % 100 == 1 {
                tracing::warn!(cluster = %c.cluster, failed_requests = n, error = %e, "tracing: export failed; spans lost");
            }
        }
        c.busy.store(false, Ordering::SeqCst);
    }
}

/// A gRPC channel to one endpoint of the collector cluster.
#[derive(Default)]
struct Client {
    /// Which endpoint (index, rotated on failure) and its channel.
    index: usize,
    channel: Option<(SocketAddr, tonic::transport::Channel)>,
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("the collector cluster has no endpoint")]
    NoEndpoint,
    #[error("{0}")]
    Endpoint(String),
    #[error("timed out after {EXPORT_TIMEOUT_MS} ms")]
    Timeout,
    #[error("{0}")]
    Status(#[from] tonic::Status),
}

impl Client {
    fn next(&mut self) {
        self.index = self.index.wrapping_add(1);
        self.channel = None;
    }

    async fn export(
        &mut self,
        endpoints: &[SocketAddr],
        body: bytes::Bytes,
    ) -> Result<(), ExportError> {
        if endpoints.is_empty() {
            return Err(ExportError::NoEndpoint);
        }
        let addr = endpoints[self.index % endpoints.len()];
        let channel = match &self.channel {
            Some((a, ch)) if *a == addr => ch.clone(),
            _ => {
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| ExportError::Endpoint(e.to_string()))?
                    .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                    .timeout(Duration::from_millis(EXPORT_TIMEOUT_MS))
                    .connect_lazy();
                self.channel = Some((addr, ch.clone()));
                ch
            }
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
            grpc.unary::<_, (), _>(tonic::Request::new(body), path, RawCodec)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(Duration::from_millis(EXPORT_TIMEOUT_MS), call).await {
            Ok(r) => r.map_err(ExportError::from),
            Err(_) => Err(ExportError::Timeout),
        }
    }
}

/// Sends an encoded request as it is; reads the response (`ExportTraceServiceResponse`,
/// whose partial-success details ringside does not act on) as nothing.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        let n = src.remaining();
        src.advance(n);
        Ok(Some(()))
    }
}
