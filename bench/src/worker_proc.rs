//! The worker in a process of its own, so its peak RSS and CPU are measured apart from the
//! producer's: the bench binary re-executes itself as `ivy-bench worker …`.
//!
//! The protocol is lines. The child prints `ready` once connected, `warm` after its first
//! execution, `done` once it has executed the warm-up plus `--expect` calls, and `stopped`
//! after a `stop` line on its stdin has shut it down (every delivery settled), preceded on SQS
//! by `requests N` (the SQS requests its broker sent); then it waits for stdin to close and
//! exits. The parent reads `/proc/<pid>` in between.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::error::BoxError;
use crate::procfs::{self, Usage};
use crate::scenario::{Kind, Spec};
use crate::{args, ivy_side, raw, tasks};

/// The child's side: runs the worker of `spec` under the line protocol.
pub async fn child_main(spec: Spec) -> Result<(), BoxError> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (eof_tx, eof_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut stop_tx = Some(stop_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "stop" {
                if let Some(tx) = stop_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
        // The parent went away: stop too.
        if let Some(tx) = stop_tx.take() {
            let _ = tx.send(());
        }
        let _ = eof_tx.send(());
    });
    let expect = spec.expect;
    tokio::spawn(async move {
        tasks::wait_for(1).await;
        println!("warm");
        tasks::wait_for(1 + expect).await;
        println!("done");
    });
    let stop = async {
        let _ = stop_rx.await;
    };
    println!("ready");
    match spec.kind {
        Kind::Ivy => {
            let requests = ivy_side::run_worker(
                &spec.broker,
                &spec.notifier,
                &spec.queue,
                spec.concurrency,
                spec.prefetch_multiplier,
                spec.encrypted,
                stop,
            )
            .await?;
            if let Some(n) = requests {
                println!("{REQUESTS_PREFIX}{n}");
            }
        }
        Kind::Raw | Kind::RawMinimal => {
            let flavour = if spec.kind == Kind::Raw {
                raw::Flavour::LikeForLike
            } else {
                raw::Flavour::Minimal
            };
            let prefetch = flavour.prefetch(spec.concurrency);
            raw::worker(&spec.broker, &spec.notifier, prefetch, flavour, stop).await?
        }
    }
    println!("stopped");
    let _ = eof_rx.await;
    Ok(())
}

/// The line before `stopped` with the worker's SQS requests.
const REQUESTS_PREFIX: &str = "requests ";

/// The parent's handle on a worker process.
pub struct WorkerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    pid: String,
    /// CPU seconds when the measurement started.
    cpu_at_start: f64,
    /// The SQS requests the worker reported, once it has.
    sqs_requests: Option<u64>,
}

impl WorkerProcess {
    /// Starts the worker of `spec` and waits until it says it is connected.
    pub async fn start(spec: &Spec) -> Result<Self, BoxError> {
        // IVY_BENCH_WORKER_PREFIX runs the worker under a profiler, e.g.
        // `valgrind --tool=callgrind --callgrind-out-file=/tmp/worker.%p.out`.
        let prefix = std::env::var("IVY_BENCH_WORKER_PREFIX").unwrap_or_default();
        let mut words = prefix.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut cmd = Command::new(program);
                cmd.args(words).arg(std::env::current_exe()?);
                cmd
            }
            None => Command::new(std::env::current_exe()?),
        };
        cmd.args(args::worker_args(spec))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().ok_or("the worker exited at once")?.to_string();
        let stdout = child.stdout.take().ok_or("no worker stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut out = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = WorkerProcess {
            child,
            stdin,
            lines,
            pid,
            cpu_at_start: 0.0,
            sqs_requests: None,
        };
        w.expect_line("ready", Duration::from_secs(60)).await?;
        Ok(w)
    }

    /// Waits for the line `want` from the worker.
    pub async fn expect_line(&mut self, want: &str, limit: Duration) -> Result<(), BoxError> {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if line == want {
                    return Ok(());
                }
                if let Some(n) = line.strip_prefix(REQUESTS_PREFIX) {
                    self.sqs_requests = n.parse().ok();
                }
            }
            Err(format!("the worker exited before saying `{want}`"))
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(format!("the worker did not say `{want}` within {limit:?}").into()),
        }
    }

    /// Marks the start of the measurement.
    pub fn start_measuring(&mut self) {
        self.cpu_at_start = procfs::cpu_seconds(&self.pid).unwrap_or(0.0);
    }

    /// Stops the worker gracefully; its CPU since [`start_measuring`](Self::start_measuring)
    /// and its peak RSS, read from `/proc/<pid>` once it has settled every delivery; and on
    /// SQS the requests its broker sent.
    pub async fn stop(mut self) -> Result<(Usage, Option<u64>), BoxError> {
        let mut stdin = self.stdin.take().ok_or("no worker stdin")?;
        stdin.write_all(b"stop\n").await?;
        stdin.flush().await?;
        self.expect_line("stopped", Duration::from_secs(30)).await?;
        let end = procfs::usage(&self.pid);
        drop(stdin);
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await??;
        if !status.success() {
            return Err(format!("the worker exited with {status}").into());
        }
        let usage = Usage {
            cpu_s: end.cpu_s - self.cpu_at_start,
            peak_rss_kib: end.peak_rss_kib,
        };
        Ok((usage, self.sqs_requests))
    }
}
