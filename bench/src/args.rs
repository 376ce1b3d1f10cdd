//! A tiny `--name value` / `--flag` parser shared by the bench binaries, plus duration parsing
//! (`10s`, `500ms`, `2m`). Bad input prints the binary's usage and exits 2.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

pub struct Args {
    usage: &'static str,
    values: BTreeMap<String, String>,
    flags: Vec<String>,
}

// === impl Args ===

impl Args {
    /// Parses the process arguments. `flags` names the options that take no value; every other
    /// `--name` takes the next argument (or `--name=value`).
    pub fn parse(usage: &'static str, flags: &[&str]) -> Args {
        Self::parse_from(usage, flags, std::env::args().skip(1))
    }

    pub fn parse_from(
        usage: &'static str,
        flags: &[&str],
        argv: impl Iterator<Item = String>,
    ) -> Args {
        let mut args = Args {
            usage,
            values: BTreeMap::new(),
            flags: Vec::new(),
        };
        let mut argv = argv.peekable();
        while let Some(arg) = argv.next() {
            if arg == "-h" || arg == "--help" {
                println!("{usage}");
                std::process::exit(0);
            }
            let Some(name) = arg.strip_prefix("--") else {
                args.fail(&format!("unexpected argument `{arg}`"));
            };
            if let Some((name, value)) = name.split_once('=') {
                args.values.insert(name.to_string(), value.to_string());
            } else if flags.contains(&name) {
                args.flags.push(name.to_string());
            } else {
                match argv.next() {
                    Some(value) => {
                        args.values.insert(name.to_string(), value);
                    }
                    None => args.fail(&format!("`--{name}` needs a value")),
                }
            }
        }
        args
    }

    pub fn fail(&self, msg: &str) -> ! {
        eprintln!("error: {msg}\n\n{}", self.usage);
        std::process::exit(2)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn str_or(&self, name: &str, default: &str) -> String {
        self.opt_str(name).unwrap_or(default).to_string()
    }

    pub fn opt<T: FromStr>(&self, name: &str) -> Option<T> {
        let raw = self.opt_str(name)?;
        match raw.parse() {
            Ok(v) => Some(v),
            Err(_) => self.fail(&format!("`--{name} {raw}`: not a valid value")),
        }
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        self.opt(name).unwrap_or(default)
    }

    pub fn duration(&self, name: &str, default: Duration) -> Duration {
        match self.opt_str(name) {
            None => default,
            Some(raw) => parse_duration(raw).unwrap_or_else(|| {
                self.fail(&format!("`--{name} {raw}`: use e.g. 10s, 500ms, 2m"))
            }),
        }
    }
}

/// `1.5s`, `500ms`, `2m`, `100us`; a bare number is seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let num: f64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => num,
        "ms" => num / 1e3,
        "us" => num / 1e6,
        "m" => num * 60.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("5h"), None);
    }

    #[test]
    fn values_and_flags() {
        let argv = ["--c", "4", "--quick", "--d=3s"].map(String::from);
        let a = Args::parse_from("usage", &["quick"], argv.into_iter());
        assert_eq!(a.get("c", 1usize), 4);
        assert!(a.flag("quick"));
        assert_eq!(a.duration("d", Duration::ZERO), Duration::from_secs(3));
        assert_eq!(a.get("missing", 7u32), 7);
    }
}
