//! The `ringside` binary: `run`, `validate` and `demo`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use dataplane::config::{self, Config};
use dataplane::server::{ControlEvent, Overrides, Server};

#[derive(Parser)]
#[command(
    name = "ringside",
    version,
    about = "A thread-per-core Dubbo/Triple sidecar proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Io {
    Auto,
    Uring,
    Epoll,
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
        /// I/O backend: io_uring with epoll fallback (auto), or force one.
        #[arg(long, value_enum)]
        io: Option<Io>,
    },
    /// Check a config file; print each problem with file, line and field.
    Validate {
        #[arg(short, long)]
        config: PathBuf,
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
    let cli = Cli::parse();
    // The demo prints its own report; keep its log to warnings unless RUST_LOG says otherwise.
    let default_level = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Validate { config } => match Config::load(&config) {
            Ok(c) => {
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
        Command::Run { config, shards, io } => {
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
            };
            run(cfg, &overrides)
        }
        Command::Demo { seconds } => dataplane::demo::run(seconds),
    }
}

fn run(cfg: Config, overrides: &Overrides) -> ExitCode {
    let server = match Server::start(cfg, overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringside: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let control = server.control();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringside: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let reason = if sig == signal_hook::consts::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            let _ = control.try_send(ControlEvent::Drain { reason });
        }
    });
    server.run_until_drained();
    ExitCode::SUCCESS
}
