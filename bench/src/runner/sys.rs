//! What the runner reads from the machine: the idle check, the machine description for the doc,
//! and per-process CPU time (`/proc/PID/stat` utime+stime) and peak RSS (`VmHWM`, reset through
//! `/proc/PID/clear_refs` before each measured run).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Load average above which the machine is reported as busy.
pub const IDLE_LOADAVG_MAX: f64 = 0.5;
/// Busy share of any CPU, over the sample, above which the machine is reported as busy.
pub const IDLE_CPU_BUSY_PCT_MAX: f64 = 10.0;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdleCheck {
    pub loadavg_1m: f64,
    /// Busy percentage per CPU over a short sample.
    pub cpu_busy_pct: Vec<f64>,
    pub idle: bool,
}

// === impl IdleCheck ===

impl IdleCheck {
    pub fn describe(&self) -> String {
        let busy: Vec<String> = self
            .cpu_busy_pct
            .iter()
            .enumerate()
            .map(|(i, b)| format!("cpu{i} {b:.0}%"))
            .collect();
        format!(
            "{}: load average {:.2} (limit {IDLE_LOADAVG_MAX}), busy {} (limit {IDLE_CPU_BUSY_PCT_MAX}%)",
            if self.idle { "idle" } else { "NOT IDLE" },
            self.loadavg_1m,
            busy.join(", ")
        )
    }
}

/// Samples `/proc/loadavg` and per-CPU `/proc/stat` over `sample`.
pub fn idle_check(sample: Duration) -> IdleCheck {
    let loadavg_1m = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let before = cpu_times();
    std::thread::sleep(sample);
    let after = cpu_times();
    let cpu_busy_pct: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|((b_busy, b_total), (a_busy, a_total))| {
            let total = a_total.saturating_sub(*b_total).max(1) as f64;
            100.0 * a_busy.saturating_sub(*b_busy) as f64 / total
        })
        .collect();
    let idle =
        loadavg_1m <= IDLE_LOADAVG_MAX && cpu_busy_pct.iter().all(|b| *b <= IDLE_CPU_BUSY_PCT_MAX);
    IdleCheck {
        loadavg_1m,
        cpu_busy_pct,
        idle,
    }
}

/// Busy clock ticks summed over every CPU (same unit as [`cpu_ticks`]).
pub fn busy_ticks_all() -> u64 {
    cpu_times().iter().map(|(busy, _)| busy).sum()
}

/// (busy, total) jiffies per CPU.
fn cpu_times() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            // idle + iowait are not busy.
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total.saturating_sub(idle), total)
        })
        .collect()
}

/// The CPUs this process may run on (`Cpus_allowed_list` of `/proc/self/status`), ascending.
pub fn allowed_cpus() -> Vec<u32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    parse_cpu_list(list.trim())
}

/// `0-2,5` → `[0, 1, 2, 5]`.
pub fn parse_cpu_list(list: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<u32>().ok()),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    cpus
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some((kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
        })
        .unwrap_or(0.0);
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        kernel,
        memory_gib,
    }
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ); 100 on every Linux we run on, and
/// `getconf` tells us otherwise.
pub fn clock_ticks_per_s() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of the whole process (all threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')' field 0 is state (stat field 3); utime and stime are stat fields 14 and 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident set size (VmHWM) in KiB.
pub fn rss_peak_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:")
}

/// Current resident set size (VmRSS) in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// Resets VmHWM to the current RSS (Linux >= 4.0; needs to own the process or be root).
pub fn reset_rss_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-3,5"), vec![0, 2, 3, 5]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        assert!(rss_peak_kb(pid).unwrap_or(0) > 0);
        assert!(!cpu_times().is_empty());
    }
}
