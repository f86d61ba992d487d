//! Worker processes: the chaos binary re-executed as `ivy-chaos worker …`, each recording its
//! executions in a file of its own, killed with SIGKILL or stopped with SIGTERM by the run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BoxError;

/// What a worker process is started with.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub broker: String,
    pub results: String,
    pub queue: String,
    pub concurrency: usize,
}

/// A running worker process.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    pub log: PathBuf,
    pub executions: PathBuf,
}

impl WorkerProcess {
    /// Starts worker number `k` and waits until it consumes.
    pub async fn start(
        spec: &WorkerSpec,
        dir: &Path,
        tag: &str,
        k: usize,
    ) -> Result<Self, BoxError> {
        let log = dir.join(format!("worker-{tag}-{k}.log"));
        let executions = dir.join(format!("executions-{tag}-{k}.txt"));
        let child = Command::new(std::env::current_exe()?)
            .args([
                "worker",
                "--broker",
                &spec.broker,
                "--results",
                &spec.results,
            ])
            .args([
                "--queue",
                &spec.queue,
                "--concurrency",
                &spec.concurrency.to_string(),
            ])
            .arg("--executions")
            .arg(&executions)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut w = WorkerProcess {
            child,
            log,
            executions,
        };
        w.wait_for_log("worker started", Duration::from_secs(90))
            .await?;
        Ok(w)
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_for_log(&mut self, needle: &str, limit: Duration) -> Result<(), BoxError> {
        let start = Instant::now();
        while !self.log_text().contains(needle) {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "worker {} exited ({status}) before logging {needle:?}; see {}",
                    self.pid(),
                    self.log.display()
                )
                .into());
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "worker {} did not log {needle:?} within {limit:?}; see {}",
                    self.pid(),
                    self.log.display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(mut self) -> Result<(), BoxError> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM: the worker finishes what runs and exits 0.
    pub async fn stop(mut self, limit: Duration) -> Result<(), BoxError> {
        crate::services::signal(&self.pid(), "-TERM")?;
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    return Err(format!(
                        "worker {} exited with {status} on SIGTERM; see {}",
                        self.pid(),
                        self.log.display()
                    )
                    .into());
                }
                return Ok(());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                return Err(format!(
                    "worker {} did not stop within {limit:?} of SIGTERM; see {}",
                    self.pid(),
                    self.log.display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A run that ends early leaves no worker behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The worker side: `ivy-chaos worker`, until SIGTERM.
pub async fn worker_main(spec: WorkerSpec, executions: PathBuf) -> Result<(), BoxError> {
    crate::task::record_to(&executions)?;
    let broker = ivy::backends::broker_from_url(&spec.broker).await?;
    let notifier = ivy::backends::notifier_from_url(&spec.results).await?;
    let report = ivy::Worker::new(broker, notifier)?
        .queues([spec.queue.as_str()])
        .concurrency(spec.concurrency)
        .grace_period(Duration::from_secs(30))
        .run_until_signal()
        .await?;
    eprintln!("worker report: {report:?}");
    Ok(())
}
