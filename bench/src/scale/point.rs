//! What every point of a curve uses: the worker process (`ivy-bench scale-worker …`, its
//! child side and the parent's handle on it), the producer, queue clean-up, windowed sends,
//! and the figures read from `/proc` and from Redis. It measures; it judges nothing.

use std::ffi::OsString;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{stream, StreamExt, TryStreamExt};
use ivy::{Call, Producer, Task};
use lapin::options::QueueDeleteOptions;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::error::BoxError;
use crate::ivy_side::{self, IvyProducer};
use crate::procfs::{self, Usage};
pub use crate::run::within;
use crate::tasks;

/// The queue of every curve but the queues curve, which adds `ivy-scale-0`, `ivy-scale-1`, …
pub const QUEUE: &str = "ivy-scale";

/// The service URLs, from the environment as the rest of the bench.
pub struct Urls {
    pub amqp: String,
    pub redis: String,
}

impl Urls {
    pub fn from_env() -> Self {
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Urls {
            amqp: env("IVY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            redis: env("IVY_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
        }
    }
}

/// The names of `count` queues: [`QUEUE`] alone, or `ivy-scale-0` … for more than one.
pub fn queue_names(count: usize) -> Vec<String> {
    if count == 1 {
        return vec![QUEUE.to_owned()];
    }
    (0..count).map(|i| format!("{QUEUE}-{i}")).collect()
}

/// Microseconds since the epoch: member tasks stamp their finish with it, so the parent can
/// compare times taken in different processes of one machine.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A producer on AMQP + Redis, as users build one.
pub async fn producer(urls: &Urls) -> Result<IvyProducer, BoxError> {
    let broker = ivy::backends::broker_from_url(&urls.amqp).await?;
    let notifier = ivy::backends::notifier_from_url(&urls.redis).await?;
    Ok(Producer::new(broker, notifier))
}

/// Deletes `queues` and their dead-letter queues, so a point starts from empty queues.
pub async fn purge(url: &str, queues: &[String]) -> Result<(), BoxError> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let mut channel = conn.create_channel().await?;
    for q in queues {
        for name in [q.clone(), format!("{q}.dead")] {
            let deleted = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
            // A refused delete closes the channel: go on with a new one.
            if deleted.is_err() {
                channel = conn.create_channel().await?;
            }
        }
    }
    let _ = conn.close(200, "purged".into()).await;
    Ok(())
}

/// Sends `n` fire-and-forget calls, `window` in flight; `call(i)` makes the `i`th.
pub async fn send_all<T: Task>(
    p: &IvyProducer,
    n: u64,
    window: usize,
    call: impl Fn(u64) -> Call<T>,
) -> Result<(), BoxError> {
    stream::iter(0..n)
        .map(|i| {
            let c = call(i);
            async move {
                p.send(c).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(window)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// A generous limit for work of `n` units: a hang fails the point with a reason.
pub fn limit_for(n: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(2) * u32::try_from(n).unwrap_or(u32::MAX)
}

/// This process's CPU seconds so far.
pub fn own_cpu() -> f64 {
    procfs::cpu_seconds("self").unwrap_or(0.0)
}

/// This process's resident set now (`VmRSS`), in KiB.
pub fn own_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// KiB to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Reads Redis's `INFO`: the server's `used_memory` (bytes) and its CPU seconds (user + sys).
pub struct RedisInfo {
    conn: redis::aio::MultiplexedConnection,
}

impl RedisInfo {
    pub async fn connect(url: &str) -> Result<Self, BoxError> {
        let conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        Ok(RedisInfo { conn })
    }

    async fn field(&mut self, section: &str, names: &[&str]) -> Result<f64, BoxError> {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.conn)
            .await?;
        let mut sum = 0.0;
        for name in names {
            let value = info
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .ok_or_else(|| format!("no {name} in Redis's INFO {section}"))?;
            sum += value.trim().parse::<f64>()?;
        }
        Ok(sum)
    }

    pub async fn used_memory(&mut self) -> Result<f64, BoxError> {
        self.field("memory", &["used_memory"]).await
    }

    pub async fn cpu_seconds(&mut self) -> Result<f64, BoxError> {
        self.field("cpu", &["used_cpu_user", "used_cpu_sys"]).await
    }

    /// Deletes `key` (a task's concurrency slots, left by an earlier run).
    pub async fn del(&mut self, key: &str) -> Result<(), BoxError> {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut self.conn)
            .await?;
        Ok(())
    }
}

/// The parent's handle on a worker process of the cost curves.
///
/// Its line protocol, unlike `worker_proc.rs`'s fixed count on one queue: `ready` once the
/// worker runs; `wait N` on stdin answers `reached N` once N tasks ran in it; `stop` stops
/// it gracefully and it answers `stopped` (then waits for stdin to close and exits).
pub struct ScaleWorker {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    pid: String,
}

impl ScaleWorker {
    /// Starts a worker on `queues` (see [`queue_names`]) running `concurrency` tasks at once.
    pub async fn start(queues: usize, concurrency: usize) -> Result<Self, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "scale-worker".to_owned(),
                queues.to_string(),
                concurrency.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("the worker exited at once")?.to_string();
        let stdout = child.stdout.take().ok_or("no worker stdout")?;
        let stdin = child.stdin.take().ok_or("no worker stdin")?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut out = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = ScaleWorker {
            child,
            stdin,
            lines,
            pid,
        };
        w.expect("ready", Duration::from_secs(60)).await?;
        Ok(w)
    }

    async fn expect(&mut self, want: &str, limit: Duration) -> Result<(), BoxError> {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if line == want {
                    return Ok(());
                }
            }
            Err(format!("the worker exited before saying `{want}`"))
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(format!("the worker did not say `{want}` within {limit:?}").into()),
        }
    }

    /// Waits until `n` tasks have run in the worker since it started.
    pub async fn wait_for(&mut self, n: u64, limit: Duration) -> Result<(), BoxError> {
        self.stdin
            .write_all(format!("wait {n}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        self.expect(&format!("reached {n}"), limit).await
    }

    /// The worker's CPU seconds so far.
    pub fn cpu(&self) -> f64 {
        procfs::cpu_seconds(&self.pid).unwrap_or(0.0)
    }

    /// Stops the worker gracefully; its CPU seconds and peak RSS over its whole life.
    pub async fn stop(mut self) -> Result<Usage, BoxError> {
        self.stdin.write_all(b"stop\n").await?;
        self.stdin.flush().await?;
        self.expect("stopped", Duration::from_secs(30)).await?;
        let usage = procfs::usage(&self.pid);
        drop(self.stdin);
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await??;
        if !status.success() {
            return Err(format!("the worker exited with {status}").into());
        }
        Ok(usage)
    }
}

/// The child's side: `scale-worker QUEUES CONCURRENCY`.
pub async fn worker_main(args: &[OsString]) -> Result<(), BoxError> {
    let word = |i: usize| -> Result<usize, BoxError> {
        let w = args.get(i).and_then(|a| a.to_str()).ok_or(WORKER_USAGE)?;
        Ok(w.parse().map_err(|_| WORKER_USAGE)?)
    };
    let (queues, concurrency) = (word(0)?, word(1)?);
    let urls = Urls::from_env();
    let broker = ivy::backends::broker_from_url(&urls.amqp).await?;
    let notifier = ivy::backends::notifier_from_url(&urls.redis).await?;
    let names = queue_names(queues);
    let worker = ivy_side::worker(broker, notifier, QUEUE, concurrency, None, false)?
        .queues(names)
        .grace_period(Duration::from_secs(10));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut stop_tx = Some(stop_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim();
            if let Some(n) = line.strip_prefix("wait ").and_then(|n| n.parse().ok()) {
                tokio::spawn(async move {
                    tasks::wait_for(n).await;
                    println!("reached {n}");
                });
            } else if line == "stop" {
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
    println!("ready");
    let report = worker
        .run(async {
            let _ = stop_rx.await;
        })
        .await?;
    if report.failed + report.dead_lettered + report.refused + report.returned > 0 {
        return Err(format!("the worker did not run every call cleanly: {report:?}").into());
    }
    println!("stopped");
    let _ = eof_rx.await;
    Ok(())
}

const WORKER_USAGE: &str = "usage: ivy-bench scale-worker QUEUES CONCURRENCY";
