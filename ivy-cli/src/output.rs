//! What the command prints: tables and JSON on stdout, failures on stderr with their exit code.

use std::process::ExitCode;

use ivy_core::TaskFailure;
use serde_json::Value;

/// Why a command failed, and so its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Usage or configuration (exit 2).
    Usage(String),
    /// The operation failed: a service, a missing result (exit 1).
    Other(String),
    /// The task failed (exit 1): kind, message and chain on stderr.
    Task(TaskFailure),
}

impl Failure {
    /// Prints the failure on stderr (one line, plus the chain of a task failure) and gives
    /// its exit code.
    pub fn report(self) -> ExitCode {
        match self {
            Failure::Usage(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
            Failure::Other(message) => {
                eprintln!("error: {message}");
                ExitCode::from(1)
            }
            Failure::Task(failure) => {
                eprintln!("task failed: {}: {}", failure.kind, failure.message);
                for cause in &failure.chain {
                    eprintln!("  caused by: {cause}");
                }
                ExitCode::from(1)
            }
        }
    }
}

/// One line, for the dashboard (the command prints with [`Failure::report`]).
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Other(m) => f.write_str(m),
            Failure::Task(t) => write!(f, "task failed: {}: {}", t.kind, t.message),
        }
    }
}

impl From<ivy_core::Error> for Failure {
    fn from(e: ivy_core::Error) -> Self {
        match e {
            ivy_core::Error::Url { .. } | ivy_core::Error::Config(_) => {
                Failure::Usage(e.to_string())
            }
            ivy_core::Error::Task(failure) => Failure::Task(failure),
            other => Failure::Other(other.to_string()),
        }
    }
}

/// Prints `rows` under `header`, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(header, rows));
}

fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Prints `value` as one line of JSON.
pub fn json(value: &Value) {
    println!("{value}");
}

/// A count, or `?` when unknown.
pub fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC).
pub fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `ms` since the Unix epoch as `HH:MM:SS.mmm` (UTC), for lines that follow each other.
pub fn time_ms(ms: u64) -> String {
    let day = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(time(1_795_449_600_000), "2026-11-23 16:00:00Z");
        assert_eq!(time(951_827_696_000), "2000-02-29 12:34:56Z");
    }

    #[test]
    fn tables_pad_all_but_the_last_column() {
        let rows = vec![vec!["default".to_owned(), "3".to_owned(), "x".to_owned()]];
        assert_eq!(
            render_table(&["QUEUE", "READY", "WHY"], &rows),
            "QUEUE    READY  WHY\ndefault  3      x\n"
        );
    }
}
