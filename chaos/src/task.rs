//! The one task of the chaos run, and the record of its executions.
//!
//! Each execution appends one line `<call number> <pid>` to the worker process's own file
//! (opened in append mode, one `write` per line), as a side effect a real task would have: it
//! survives a SIGKILL of the worker and any outage of the broker or of Redis, so the run can
//! count how often each call really ran.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

static EXECUTIONS: OnceLock<Mutex<File>> = OnceLock::new();

/// Opens the file this worker process records its executions in.
pub fn record_to(path: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    EXECUTIONS
        .set(Mutex::new(file))
        .map_err(|_| std::io::Error::other("the executions file is already open"))
}

fn record(line: &str) {
    let Some(file) = EXECUTIONS.get() else {
        // Only worker processes run tasks, and they open the file first.
        panic!("chaos.work ran in a process that records no executions");
    };
    let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
    // A lost record would read as a lost call: better to fail the run than to guess.
    file.write_all(line.as_bytes())
        .expect("could not record an execution");
}

/// Records its start (`+<n> <pid>`), sleeps `ms` milliseconds (the work), records the
/// execution (`<n> <pid>`), returns the call's number so the producer can check it got its
/// own result. A start with no execution after it is a run a SIGKILL interrupted. Retries are generous: a call whose worker is
/// killed runs again, and that must not use up its retries.
#[ivy::task(name = "chaos.work", max_retries = 20, retry_backoff = "200ms")]
pub async fn work(n: u64, ms: u64) -> u64 {
    let pid = std::process::id();
    record(&format!("+{n} {pid}\n"));
    tokio::time::sleep(Duration::from_millis(ms)).await;
    record(&format!("{n} {pid}\n"));
    n
}

/// What the executions files say.
#[derive(Debug, Default)]
pub struct Executions {
    /// One `(call number, worker pid)` per finished execution.
    pub runs: Vec<(u64, u32)>,
    /// Runs that started and never finished (their worker was killed, or is still running).
    pub unfinished: Vec<(u64, u32)>,
}

/// Reads one executions file (none yet: nothing ran).
pub fn read_file(path: &std::path::Path, into: &mut Executions) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut open: Vec<(u64, u32)> = Vec::new();
    for line in text.lines() {
        let (start, rest) = match line.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut words = rest.split(' ');
        let parsed: Option<(u64, u32)> =
            (|| Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?)))();
        let Some(run) = parsed else {
            return Err(std::io::Error::other(format!(
                "{}: unreadable execution record {line:?}",
                path.display()
            )));
        };
        if start {
            open.push(run);
        } else {
            if let Some(i) = open.iter().position(|r| *r == run) {
                open.swap_remove(i);
            }
            into.runs.push(run);
        }
    }
    into.unfinished.extend(open);
    Ok(())
}

/// Reads every executions file in `files`.
pub fn read_executions(files: &[std::path::PathBuf]) -> std::io::Result<Executions> {
    let mut all = Executions::default();
    for path in files {
        read_file(path, &mut all)?;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start with no end after it is unfinished; an end closes the start of its own pid.
    #[test]
    fn reads_starts_and_ends() {
        let dir = std::env::temp_dir().join(format!("ivy-chaos-task-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("executions.txt");
        std::fs::write(&f, "+1 7\n+2 7\n1 7\n+1 7\n").unwrap();
        let e = read_executions(&[f.clone(), dir.join("missing.txt")]).unwrap();
        assert_eq!(e.runs, [(1, 7)]);
        let mut open = e.unfinished.clone();
        open.sort();
        assert_eq!(open, [(1, 7), (2, 7)]);
        std::fs::write(&f, "1 x\n").unwrap();
        assert!(read_executions(&[f]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
