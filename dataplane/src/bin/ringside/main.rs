//! The `ringside` binary: `run`, `validate`, `demo` and `iptables`; and Envoy's command line
//! (`ringside -c BOOTSTRAP ...`, `ringside envoy ...`), as Istio's pilot-agent runs the proxy.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use dataplane::config::{self, Config};
use dataplane::control::server::{ControlEvent, Overrides, Server};
use dataplane::control::{handoff, registry_glue, xds_glue};
use signal_hook::iterator::exfiltrator::WithOrigin;

mod demo;
mod envoy;
mod iptables;
mod logging;

#[derive(Parser)]
#[command(
    name = "ringside",
    version,
    about = "A thread-per-core Dubbo/Triple sidecar proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or as JSON objects, one per line (timestamp, level, target, message,
    /// fields).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Io {
    Auto,
    Uring,
    Epoll,
}

#[derive(Clone, Copy, ValueEnum)]
enum Poll {
    Sleep,
    Spin,
    Hybrid,
}

#[derive(Clone, Copy, ValueEnum)]
enum InterceptMode {
    /// mangle table TPROXY + policy routing; no nat table, no conntrack entries.
    Tproxy,
    /// nat table REDIRECT (original destination from conntrack).
    Redirect,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file until SIGTERM/SIGINT or POST /drain.
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// Shards (threads, one per core); default: the cores in the affinity mask.
        #[arg(long)]
        shards: Option<usize>,
        /// I/O backend: auto (io_uring with epoll fallback when sleeping; epoll for a spin or
        /// hybrid poll mode, where it answers sooner), or force one.
        #[arg(long, value_enum)]
        io: Option<Io>,
        /// How an idle shard waits: sleep in the kernel (default), spin on its core (needs one
        /// pinned CPU per shard; takes the whole core), or hybrid (spin for
        /// runtime.spin_budget_us after the last event, then sleep).
        #[arg(long, value_enum)]
        poll_mode: Option<Poll>,
        /// Hot upgrade: take the listening sockets over from the ringside running with the same
        /// control socket, which then drains and exits. Nothing is dropped.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a config file; print each problem with file, line and field.
    Validate {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Set up (or print, or remove) the rules that send the pod's TCP traffic through ringside:
    /// inbound to --inbound-port, outbound to --outbound-port. Idempotent: removes what an
    /// earlier run installed first. Needs CAP_NET_ADMIN; run it in the pod's network namespace.
    Iptables {
        #[arg(long, value_enum)]
        mode: InterceptMode,
        /// Inbound ports to intercept: a comma-separated list, `*` for all, or empty for none.
        #[arg(long, default_value = "*")]
        inbound_ports: String,
        /// Inbound ports never intercepted (besides the proxy's own: 15000, 15021, 15090 and
        /// the inbound and outbound ports).
        #[arg(long, default_value = "")]
        exclude_inbound_ports: String,
        #[arg(long, default_value_t = 15001)]
        outbound_port: u16,
        #[arg(long, default_value_t = 15006)]
        inbound_port: u16,
        /// The proxy's uid: its traffic is never intercepted (0: no uid rule).
        #[arg(long, default_value_t = 1337)]
        proxy_uid: u32,
        /// The proxy's socket mark (ringside's runtime.socket_mark): packets carrying it are
        /// never intercepted.
        #[arg(long, default_value_t = 1337)]
        proxy_mark: u32,
        /// Outbound destinations never intercepted: comma-separated CIDRs (IPv4 and IPv6).
        #[arg(long, default_value = "")]
        exclude_cidrs: String,
        /// IPv4 rules only (no ip6tables, no `ip -6`).
        #[arg(long)]
        no_ipv6: bool,
        /// Print the commands instead of running them.
        #[arg(long)]
        dry_run: bool,
        /// Remove everything an earlier run installed, install nothing.
        #[arg(long)]
        clean: bool,
    },
    /// Start a built-in echo upstream and ringside in front of it, run a short load direct and
    /// through the proxy, and print what was measured.
    Demo {
        /// Seconds of load per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    // pilot-agent execs the proxy with Envoy's command line (`-c envoy-rev.json ...`).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(envoy_args) = envoy::command_line(&args) {
        return envoy::main(envoy_args);
    }
    let cli = Cli::parse();
    // The demo prints its own report; keep its log to warnings unless RUST_LOG says otherwise.
    let default_level = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    logging::init(
        default_level,
        cli.log_format == LogFormat::Json,
        std::io::stderr().is_terminal(),
    );
    match cli.command {
        Command::Validate { config } => match Config::load(&config) {
            Ok(c) => {
                let problems = dataplane::snapshot::check_files(&c);
                if !problems.is_empty() {
                    for p in &problems {
                        eprintln!("{}: {p}", config.display());
                    }
                    return ExitCode::from(2);
                }
                println!(
                    "{}: ok ({} listeners, {} clusters)",
                    config.display(),
                    c.listeners.len(),
                    c.clusters.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            config,
            shards,
            io,
            poll_mode,
            upgrade,
        } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let overrides = Overrides {
                shards,
                io: io.map(|i| match i {
                    Io::Auto => config::IoMode::Auto,
                    Io::Uring => config::IoMode::Uring,
                    Io::Epoll => config::IoMode::Epoll,
                }),
                poll_mode: poll_mode.map(|p| match p {
                    Poll::Sleep => config::PollMode::Sleep,
                    Poll::Spin => config::PollMode::Spin,
                    Poll::Hybrid => config::PollMode::Hybrid,
                }),
            };
            run(cfg, &overrides, upgrade, true)
        }
        Command::Demo { seconds } => demo::run(seconds),
        Command::Iptables {
            mode,
            inbound_ports,
            exclude_inbound_ports,
            outbound_port,
            inbound_port,
            proxy_uid,
            proxy_mark,
            exclude_cidrs,
            no_ipv6,
            dry_run,
            clean,
        } => {
            use iptables as ipt;
            let parsed = (|| -> Result<ipt::Options, String> {
                let exclude = match ipt::parse_ports(&exclude_inbound_ports, false)
                    .map_err(|e| format!("--exclude-inbound-ports: {e}"))?
                {
                    ipt::Ports::List(l) => l,
                    ipt::Ports::All => Vec::new(),
                };
                Ok(ipt::Options {
                    mode: match mode {
                        InterceptMode::Tproxy => ipt::Mode::Tproxy,
                        InterceptMode::Redirect => ipt::Mode::Redirect,
                    },
                    inbound_ports: ipt::parse_ports(&inbound_ports, true)
                        .map_err(|e| format!("--inbound-ports: {e}"))?,
                    exclude_inbound_ports: exclude,
                    outbound_port,
                    inbound_port,
                    proxy_uid: (proxy_uid != 0).then_some(proxy_uid),
                    proxy_mark,
                    exclude_cidrs: ipt::parse_cidrs(&exclude_cidrs)
                        .map_err(|e| format!("--exclude-cidrs: {e}"))?,
                    ipv6: !no_ipv6,
                })
            })();
            let result = parsed.and_then(|o| ipt::apply(&o, clean, dry_run));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringside iptables: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `control_socket: false` (Envoy's `--disable-hot-restart`): no control socket, so nothing is
/// written outside the config's own paths (Istio's sidecar has a read-only root filesystem).
fn run(cfg: Config, overrides: &Overrides, upgrade: bool, control_socket: bool) -> ExitCode {
    let control_path = handoff::path(&cfg);
    // A fresh start refuses to run next to a live ringside with the same control socket; an
    // upgrade takes that ringside's listening sockets first.
    let upgrade_started = std::time::Instant::now();
    let (predecessor, inherited, protocol) = if upgrade {
        match handoff::take_over(&control_path) {
            Ok((conn, inherited, protocol)) => (Some(conn), inherited, protocol),
            Err(e) => {
                eprintln!("ringside: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        (None, Default::default(), 0)
    };
    let bind_control = || match handoff::listen(&control_path, upgrade) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("ringside: {e}");
            None
        }
    };
    // A fresh start claims the control socket first; a successor only once it serves, so a
    // failed upgrade leaves the predecessor reachable for the next attempt.
    let mut control_listener = None;
    if !upgrade && control_socket {
        control_listener = bind_control();
        if control_listener.is_none() {
            return ExitCode::from(1);
        }
    }
    let server = match Server::start(cfg, overrides, inherited) {
        Ok(s) => s,
        Err(e) => {
            // A predecessor, if any, never stopped serving: dropping the connection tells it.
            eprintln!("ringside: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    // xDS: the client thread applies each snapshot to the shards. A successor of a hot
    // upgrade waits for its first snapshot (or the initial fetch timeout) before it tells the
    // predecessor it serves: the dynamic listeners' sockets it inherited accept only then.
    // The registry (ZooKeeper) is the second dynamic source; both go through one composer.
    // SDS first: certificates the static and dynamic configs name arrive on their own clients.
    if let Err(e) = dataplane::control::sds_glue::start(&server.shared) {
        eprintln!("ringside: cannot start an SDS client: {e}");
        return ExitCode::from(1);
    }
    let composer = registry_glue::Composer::new(server.shared.clone());
    let _xds = match xds_glue::start(&server.shared, &composer) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ringside: cannot start the xDS client: {e}");
            return ExitCode::from(1);
        }
    };
    let _registry = match registry_glue::start(&server.shared, &composer) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ringside: cannot start the registry client: {e}");
            return ExitCode::from(1);
        }
    };
    if predecessor.is_some() {
        xds_glue::wait_ready(&server.shared);
    }
    if let Some(conn) = predecessor {
        if let Err(e) = hotswap::send(&conn, &hotswap::Message::Serving, &[]) {
            tracing::warn!(error = %e, "hot upgrade: could not tell the predecessor we serve");
        }
        handoff::ask_for_connections(&conn, protocol);
        tracing::info!(
            handoff_ms = upgrade_started.elapsed().as_secs_f64() * 1e3,
            "hot upgrade: serving on the predecessor's sockets"
        );
        let shared = server.shared.clone();
        std::thread::spawn(move || handoff::await_predecessor(conn, shared));
        control_listener = bind_control();
    }
    match control_listener {
        Some(l) => {
            let shared = server.shared.clone();
            std::thread::spawn(move || handoff::serve(l, shared));
        }
        None if !control_socket => {
            tracing::info!("no control socket (--disable-hot-restart): no hot upgrade")
        }
        None => tracing::warn!("no control socket: this process cannot be hot-upgraded"),
    }
    let control = server.control();
    // With the sender's pid: a drain nobody expected (a hot-upgrade successor exiting 0 before
    // it served) is explained by who sent the signal.
    let mut signals = match signal_hook::iterator::SignalsInfo::<WithOrigin>::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringside: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    std::thread::spawn(move || {
        for origin in signals.forever() {
            if origin.signal == signal_hook::consts::SIGUSR1 {
                // Log rotation: the access-log writers reopen their files.
                tracing::info!("SIGUSR1: reopening access log files");
                dataplane::access_log::reopen_all();
                continue;
            }
            let reason = if origin.signal == signal_hook::consts::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            let sender = origin.process.map_or_else(
                || "unknown (not sent by a process)".to_string(),
                |p| handoff::describe_pid(p.pid),
            );
            tracing::info!(signal = reason, %sender, "drain requested by a signal");
            let _ = control.try_send(ControlEvent::Drain { reason });
            break;
        }
    });
    server.run_until_drained();
    // The shards handed their last access-log batches to the writers: let them finish.
    dataplane::access_log::drain_all(std::time::Duration::from_secs(2));
    dataplane::trace::drain_all(std::time::Duration::from_secs(2));
    ExitCode::SUCCESS
}
