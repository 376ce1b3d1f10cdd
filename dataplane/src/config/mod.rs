//! ringside's config model and its YAML loader.
//!
//! The model is plain data (`Eq`, no proto types): the static YAML file produces it today, and
//! the xDS and registry sources of later issues will produce the same types. Loading is two
//! steps, each of which names the file, line and field of every problem it finds:
//! 1. serde deserialisation with `deny_unknown_fields` (typos and wrong types);
//! 2. [`Config::validate`]: cross references (a listener's cluster exists), uniqueness, ranges.
//!
//! Every limit is a named constant here, documented in `docs/config.md`; out-of-range values are
//! rejected, never clamped.

mod lines;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
pub const DRAIN_TIMEOUT_MS_MAX: u64 = 600_000;
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 3_600_000;
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 1_000;
pub const CONNECT_TIMEOUT_MS_MAX: u64 = 60_000;
/// Per-direction relay buffer of one TCP connection: the most a slow peer can make us hold.
pub const BUFFER_BYTES_DEFAULT: usize = 64 * 1024;
pub const BUFFER_BYTES_MIN: usize = 1024;
pub const BUFFER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Downstream connections one shard accepts on one listener before refusing more.
pub const CONNECTIONS_PER_SHARD_MAX_DEFAULT: u32 = 16_384;
pub const SHARDS_MAX: usize = 256;

/// The whole config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub runtime: Runtime,
    /// How long a draining process waits for connections in flight before it exits anyway.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// The admin HTTP API (Istio: 15000). Keep it on loopback.
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
    /// Optional extra listener answering only `/healthz/ready` (Istio: 15021).
    #[serde(default)]
    pub health_address: Option<SocketAddr>,
    /// Optional extra listener answering only `/stats/prometheus` (Istio: 15090).
    #[serde(default)]
    pub prometheus_address: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Number of shards; default: one per core in the process's affinity mask.
    #[serde(default)]
    pub shards: Option<usize>,
    #[serde(default)]
    pub io: IoMode,
    /// Pin each shard thread to its own core.
    #[serde(default = "default_true")]
    pub pin: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    #[default]
    Auto,
    Uring,
    Epoll,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: Protocol,
    /// tcp: the cluster every connection goes to.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: usize,
    #[serde(default = "default_connections_per_shard_max")]
    pub connections_per_shard_max: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    #[serde(default)]
    pub lb: LbPolicy,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    /// Fewest active connections (tcp) or requests in flight (dubbo) on this shard.
    LeastRequest,
}

fn default_true() -> bool {
    true
}
fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn default_drain_timeout_ms() -> u64 {
    DRAIN_TIMEOUT_MS_DEFAULT
}
fn default_idle_timeout_ms() -> u64 {
    IDLE_TIMEOUT_MS_DEFAULT
}
fn default_connect_timeout_ms() -> u64 {
    CONNECT_TIMEOUT_MS_DEFAULT
}
fn default_buffer_bytes() -> usize {
    BUFFER_BYTES_DEFAULT
}
fn default_connections_per_shard_max() -> u32 {
    CONNECTIONS_PER_SHARD_MAX_DEFAULT
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: default_admin_address(),
            health_address: None,
            prometheus_address: None,
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            shards: None,
            io: IoMode::Auto,
            pin: true,
        }
    }
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field, as a path: `listeners[0].cluster`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file, line)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "field `{}`: {}", self.field, self.message)
        }
    }
}

/// Every problem found in one file (at least one).
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::from_yaml(&file, &text)
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<Config, ConfigErrors> {
        let config: Config = match serde_yaml::from_str(text) {
            Ok(c) => c,
            Err(e) => return Err(ConfigErrors(vec![serde_error(file, text, &e)])),
        };
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        let index = lines::LineIndex::build(text);
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|(field, message)| ConfigError {
                    file: file.to_string(),
                    line: index.line_of(&field),
                    field,
                    message,
                })
                .collect(),
        ))
    }

    /// Cross-field checks; returns (field path, message) for each problem.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut err = |field: String, message: String| out.push((field, message));

        if let Some(n) = self.runtime.shards {
            if n == 0 || n > SHARDS_MAX {
                err(
                    "runtime.shards".into(),
                    format!("{n} is out of range 1..={SHARDS_MAX}"),
                );
            }
        }
        if self.drain_timeout_ms > DRAIN_TIMEOUT_MS_MAX {
            err(
                "drain_timeout_ms".into(),
                format!(
                    "{} is above the limit {DRAIN_TIMEOUT_MS_MAX}",
                    self.drain_timeout_ms
                ),
            );
        }

        let mut cluster_names = HashSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let at = |f: &str| format!("clusters[{i}].{f}");
            if c.name.is_empty() {
                err(at("name"), "must not be empty".into());
            } else if !cluster_names.insert(c.name.as_str()) {
                err(at("name"), format!("duplicate cluster name {:?}", c.name));
            }
            if c.endpoints.is_empty() {
                err(
                    at("endpoints"),
                    "a cluster needs at least one endpoint".into(),
                );
            }
            if c.connect_timeout_ms == 0 || c.connect_timeout_ms > CONNECT_TIMEOUT_MS_MAX {
                err(
                    at("connect_timeout_ms"),
                    format!(
                        "{} is out of range 1..={CONNECT_TIMEOUT_MS_MAX}",
                        c.connect_timeout_ms
                    ),
                );
            }
        }

        let mut listener_names = HashSet::new();
        let mut addresses = HashSet::new();
        addresses.insert(self.admin.address);
        for extra in [self.admin.health_address, self.admin.prometheus_address]
            .into_iter()
            .flatten()
        {
            if !addresses.insert(extra) {
                err(
                    "admin".into(),
                    format!("address {extra} is used twice in the admin section"),
                );
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("listeners[{i}].{f}");
            if l.name.is_empty() {
                err(at("name"), "must not be empty".into());
            } else if !listener_names.insert(l.name.as_str()) {
                err(at("name"), format!("duplicate listener name {:?}", l.name));
            }
            if !addresses.insert(l.address) {
                err(
                    at("address"),
                    format!(
                        "{} is already used by the admin API or another listener",
                        l.address
                    ),
                );
            }
            match (&l.cluster, l.protocol) {
                (None, Protocol::Tcp) => {
                    err(at("cluster"), "a tcp listener needs a cluster".into())
                }
                (Some(c), _) if !cluster_names.contains(c.as_str()) => err(
                    at("cluster"),
                    format!("unknown cluster {c:?} (defined: {})", names(&self.clusters)),
                ),
                _ => {}
            }
            if !(BUFFER_BYTES_MIN..=BUFFER_BYTES_MAX).contains(&l.buffer_bytes) {
                err(
                    at("buffer_bytes"),
                    format!(
                        "{} is out of range {BUFFER_BYTES_MIN}..={BUFFER_BYTES_MAX}",
                        l.buffer_bytes
                    ),
                );
            }
            if l.idle_timeout_ms == 0 {
                err(at("idle_timeout_ms"), "must be at least 1".into());
            }
            if l.connections_per_shard_max == 0 {
                err(at("connections_per_shard_max"), "must be at least 1".into());
            }
        }
        out
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

fn names(clusters: &[Cluster]) -> String {
    if clusters.is_empty() {
        return "none".into();
    }
    clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// serde_yaml errors read "listeners[0].protocol: unknown variant ... at line 5 column 15";
/// split that into our shape so every error prints the same way.
fn serde_error(file: &str, text: &str, e: &serde_yaml::Error) -> ConfigError {
    let line = e.location().map(|l| l.line());
    let full = e.to_string();
    // Drop serde_yaml's own " at line X column Y" suffix; we print the line first.
    let without_loc = match full.find(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    let (field, message) = match without_loc.split_once(": ") {
        Some((path, msg)) if !path.contains(' ') => (path.to_string(), msg.to_string()),
        _ => (String::new(), without_loc.to_string()),
    };
    let line = line.or_else(|| lines::LineIndex::build(text).line_of(&field));
    ConfigError {
        file: file.to_string(),
        line,
        field,
        message,
    }
}

#[cfg(test)]
mod tests;
