//! CPU time and peak RSS from `/proc`, and the machine and version facts printed with the
//! results. Linux only, read-only.

use std::process::Command;
use std::sync::OnceLock;

/// CPU seconds (user + system) and peak resident set of one process at one moment.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// utime + stime, in seconds.
    pub cpu_s: f64,
    /// VmHWM, in KiB.
    pub peak_rss_kib: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, usually 100).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `utime + stime` of `pid` ("self" for this process), in seconds.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// `VmHWM` of `pid`, in KiB.
pub fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Both figures for `pid`; zeros where `/proc` could not be read.
pub fn usage(pid: &str) -> Usage {
    Usage {
        cpu_s: cpu_seconds(pid).unwrap_or(0.0),
        peak_rss_kib: peak_rss_kib(pid).unwrap_or(0),
    }
}

/// The pid of the RabbitMQ node the bench uses: `IVY_BENCH_RABBITMQ_PID`, else the system
/// node's pid file (`/var/lib/rabbitmq/mnesia/<node>.pid`, what `scripts/services` starts).
/// `None` when neither names a live process (RabbitMQ's CPU is then not reported).
pub fn rabbitmq_pid() -> Option<String> {
    let from_env = std::env::var("IVY_BENCH_RABBITMQ_PID").ok();
    let from_file = || {
        std::fs::read_dir("/var/lib/rabbitmq/mnesia")
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "pid"))
            .and_then(|p| std::fs::read_to_string(p).ok())
    };
    let pid = from_env.or_else(from_file)?.trim().to_owned();
    cpu_seconds(&pid).is_some().then_some(pid)
}

/// CPU model, cores and memory, from `/proc`.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    format!(
        "{model}, {cores} cores, {:.1} GiB RAM",
        mem_kib as f64 / (1024.0 * 1024.0)
    )
}

/// The first line a command prints, or `unknown`.
pub fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// The locked version of each crate in `names`, from the workspace's `Cargo.lock`.
pub fn locked_versions(names: &[&str]) -> Vec<(String, String)> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut current: Option<&str> = None;
    for line in lock.lines() {
        if let Some(name) = line.strip_prefix("name = ") {
            current = Some(name.trim_matches('"'));
        } else if let (Some(name), Some(version)) = (current, line.strip_prefix("version = ")) {
            if names.contains(&name) {
                found.push((name.to_owned(), version.trim_matches('"').to_owned()));
            }
            current = None;
        }
    }
    names
        .iter()
        .map(|n| {
            let v = found
                .iter()
                .filter(|(name, _)| name == n)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join("/");
            ((*n).to_owned(), if v.is_empty() { "?".into() } else { v })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_usage() {
        let u = usage("self");
        assert!(u.peak_rss_kib > 0);
        assert!(u.cpu_s >= 0.0);
    }

    #[test]
    fn finds_locked_versions() {
        let v = locked_versions(&["lapin", "no-such-crate"]);
        assert_ne!(v[0].1, "?");
        assert_eq!(v[1].1, "?");
    }
}
