//! The JSON result every load generator prints, and the pieces that build it: a latency
//! [`Recorder`] (HDR histogram in nanoseconds, warm-up excluded by the caller) and error counts by
//! kind. The runner reads the same struct back, so the schema lives in one place.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms track (anything slower is clamped and is a failed run anyway).
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Significant decimal digits of the histograms.
pub const LATENCY_SIGFIGS: u8 = 3;

/// Why a request did not count as a good response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A response with a status other than 20 (OK).
    Status,
    /// A response whose request id is not in flight on that connection.
    UnknownId,
    /// Bytes that are not a Dubbo frame (or a short TCP echo).
    Decode,
    /// Connecting failed.
    Connect,
    /// No response within the timeout.
    Timeout,
    /// The connection failed or closed mid-run.
    Io,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorCounts {
    pub status: u64,
    pub unknown_id: u64,
    pub decode: u64,
    pub connect: u64,
    pub timeout: u64,
    pub io: u64,
}

// === impl ErrorCounts ===

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind) {
        *self.slot(kind) += 1;
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        self.status += other.status;
        self.unknown_id += other.unknown_id;
        self.decode += other.decode;
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.io += other.io;
    }

    pub fn total(&self) -> u64 {
        self.status + self.unknown_id + self.decode + self.connect + self.timeout + self.io
    }

    fn slot(&mut self, kind: ErrorKind) -> &mut u64 {
        match kind {
            ErrorKind::Status => &mut self.status,
            ErrorKind::UnknownId => &mut self.unknown_id,
            ErrorKind::Decode => &mut self.decode,
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Io => &mut self.io,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LatencyUs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// What a load generator prints (stdout or `--json FILE`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub tool: String,
    /// `closed` or `open`.
    pub mode: String,
    pub target: String,
    pub connections: usize,
    /// Closed loop: requests in flight per connection.
    pub pipeline: usize,
    /// Open loop: intended requests per second over all connections.
    pub rate_per_s: Option<f64>,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Requests written over the whole run, warm-up included.
    pub sent: u64,
    /// Good responses over the whole run, warm-up included.
    pub received: u64,
    /// Good responses recorded in the histogram (after warm-up).
    pub measured: u64,
    /// `measured` / measured seconds.
    pub rps: f64,
    pub latency_us: LatencyUs,
    pub errors: ErrorCounts,
    /// Open loop: connections replaced after a readonly event.
    #[serde(default)]
    pub reconnects: u64,
    /// Open loop with `--reconnect-on-close`: connections replaced after the peer closed them.
    #[serde(default)]
    pub reconnects_after_close: u64,
    /// `dubbo-tls-load`: TLS handshakes completed (handshake mode: in the measured window).
    #[serde(default)]
    pub handshakes: u64,
    /// Latency CDF points `[quantile, µs]`, for plots.
    pub cdf: Vec<(f64, f64)>,
}

// === impl LoadReport ===

impl LoadReport {
    /// The measured part of a report (counts, rps, latency, errors, CDF); the caller adds what
    /// describes the load (`LoadReport { tool, mode, .., ..LoadReport::measured(..) }`).
    pub fn measured(
        counters: &crate::progress::Counters,
        rec: &Recorder,
        errors: ErrorCounts,
        duration: Duration,
        warmup: Duration,
    ) -> LoadReport {
        use std::sync::atomic::Ordering::Relaxed;
        let measured = rec.hist.len();
        LoadReport {
            duration_s: duration.as_secs_f64(),
            warmup_s: warmup.as_secs_f64(),
            sent: counters.sent.load(Relaxed),
            received: counters.received.load(Relaxed),
            measured,
            rps: measured as f64 / duration.as_secs_f64().max(1e-9),
            latency_us: rec.latency_us(),
            errors,
            cdf: rec.cdf(),
            ..LoadReport::default()
        }
    }
}

/// Latency histogram of one connection or one whole run, in nanoseconds.
pub struct Recorder {
    pub hist: Histogram<u64>,
}

// === impl Recorder ===

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        #[allow(clippy::unwrap_used)] // constant, valid bounds
        let hist = Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGFIGS).unwrap();
        Recorder { hist }
    }

    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(LATENCY_NS_MAX);
        self.hist.saturating_record(ns.clamp(1, LATENCY_NS_MAX));
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn latency_us(&self) -> LatencyUs {
        let h = &self.hist;
        let q = |q: f64| us(h.value_at_quantile(q));
        LatencyUs {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
        }
    }

    /// CDF points at quantiles spaced evenly on the `1 / (1 - q)` scale (HdrHistogram's
    /// percentile-distribution spacing), ending at the max.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        if self.hist.is_empty() {
            return Vec::new();
        }
        let mut points: Vec<(f64, f64)> = Vec::new();
        for v in self.hist.iter_quantiles(4) {
            let q = v.quantile_iterated_to();
            let point = (q, us(v.value_iterated_to()));
            match points.last() {
                Some(last) if last.0 == point.0 => continue,
                _ => points.push(point),
            }
            if q >= 0.99999 {
                break;
            }
        }
        points.push((1.0, us(self.hist.max())));
        points
    }
}

/// Awaits every task's (latency, errors) and merges them; a task that panicked adds nothing.
pub async fn merge_all(
    tasks: Vec<tokio::task::JoinHandle<(Recorder, ErrorCounts)>>,
) -> (Recorder, ErrorCounts) {
    let mut all = (Recorder::new(), ErrorCounts::default());
    for t in tasks {
        if let Ok((rec, errs)) = t.await {
            all.0.merge(&rec);
            all.1.merge(&errs);
        }
    }
    all
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// Writes the report as one JSON line to stdout, or to `path`.
pub fn emit(report: &LoadReport, path: Option<&str>) -> std::io::Result<()> {
    let json = serde_json::to_string(report).map_err(std::io::Error::other)?;
    match path {
        Some(p) => std::fs::write(p, json + "\n"),
        None => {
            println!("{json}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_quantiles_and_cdf() {
        let mut r = Recorder::new();
        for i in 1..=1000u64 {
            r.record(Duration::from_micros(i));
        }
        let l = r.latency_us();
        assert!((l.p50 - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() < 1.0, "{l:?}");
        let cdf = r.cdf();
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(cdf.last().map(|p| p.0), Some(1.0));
    }

    #[test]
    fn error_counts() {
        let mut e = ErrorCounts::default();
        e.add(ErrorKind::Timeout);
        e.add(ErrorKind::Status);
        let mut f = ErrorCounts::default();
        f.merge(&e);
        assert_eq!(f.total(), 2);
        assert_eq!(f.timeout, 1);
    }
}
