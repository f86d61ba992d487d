//! `ivy-bench`: Ivy against the raw RabbitMQ + Redis ceiling, in one run.
//!
//! Run it with `scripts/bench` (services first, then a release build). Per path (memory,
//! AMQP + Redis, SQS + Redis) and workload (W1 throughput with results, W2 fire-and-forget,
//! W3 sequential latency, W4 a 16 KiB argument with and without encryption) it measures Ivy
//! and, on AMQP, a raw baseline written directly on lapin and redis (see `raw.rs`). Every run
//! starts fresh processes, this binary re-executed: `ivy-bench run …` for the producer (on
//! memory, producer and worker together) and `ivy-bench worker …` for the worker, so each
//! peak RSS is the run's own and producer and worker are measured apart. It prints a Markdown
//! table and writes it to `--out`. Nothing here judges the figures: tests check behaviour only.

mod args;
mod ivy_side;
mod procfs;
mod raw;
mod report;
mod tasks;
mod worker_proc;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ivy::backends::{AnyBroker, AnyNotifier};
use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::Producer;
use lapin::options::QueuePurgeOptions;

use crate::args::{Command, Opts, RunArgs};
use crate::procfs::Usage;
use crate::report::{Outcome, Row, Sample};
use crate::worker_proc::{Kind, Spec, WorkerProcess};

/// Errors of the bench itself: it reports them, it does not recover from them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where calls travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    Memory,
    Amqp,
    Sqs,
}

impl PathKind {
    fn parse(s: &str) -> Result<Self, BoxError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(PathKind::Memory),
            "amqp" => Ok(PathKind::Amqp),
            "sqs" => Ok(PathKind::Sqs),
            other => Err(format!("unknown path `{other}` (memory, amqp, sqs)").into()),
        }
    }

    fn key(self) -> &'static str {
        match self {
            PathKind::Memory => "memory",
            PathKind::Amqp => "amqp",
            PathKind::Sqs => "sqs",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            PathKind::Memory => "memory",
            PathKind::Amqp => "AMQP + Redis",
            PathKind::Sqs => "SQS (moto) + Redis",
        }
    }
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    W1,
    W2,
    W3,
    W4,
}

impl Workload {
    fn parse(s: &str) -> Result<Self, BoxError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "W1" => Ok(Workload::W1),
            "W2" => Ok(Workload::W2),
            "W3" => Ok(Workload::W3),
            "W4" => Ok(Workload::W4),
            other => Err(format!("unknown workload `{other}` (W1, W2, W3, W4)").into()),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W4 => "W4",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Workload::W1 => "W1 results",
            Workload::W2 => "W2 fire-and-forget",
            Workload::W3 => "W3 sequential latency",
            Workload::W4 => "W4 16 KiB argument",
        }
    }
}

/// Who does the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Ivy,
    IvyEncrypted,
    Raw,
    /// The raw baseline with its bodies padded to the length of Ivy's envelope for the same
    /// call: what the message size alone costs on the broker.
    RawSized,
}

impl Side {
    fn key(self) -> &'static str {
        match self {
            Side::Ivy => "ivy",
            Side::IvyEncrypted => "ivy-encrypted",
            Side::Raw => "raw",
            Side::RawSized => "raw-sized",
        }
    }

    fn parse(s: &str) -> Result<Self, BoxError> {
        match s {
            "ivy" => Ok(Side::Ivy),
            "ivy-encrypted" => Ok(Side::IvyEncrypted),
            "raw" => Ok(Side::Raw),
            "raw-sized" => Ok(Side::RawSized),
            other => Err(format!("unknown implementation `{other}`").into()),
        }
    }

    pub fn label(self, workload: Workload) -> &'static str {
        match (self, workload) {
            (Side::Ivy, Workload::W4) => "Ivy, plain",
            (Side::Ivy, _) => "Ivy",
            (Side::IvyEncrypted, _) => "Ivy, encrypted",
            (Side::Raw, _) => "raw lapin + redis",
            (Side::RawSized, _) => "raw, body padded to Ivy's size",
        }
    }
}

/// The 16 KiB argument of W4.
const PAD_BYTES: usize = 16 * 1024;
/// W3's number of sequential calls (or N if smaller).
const W3_CALLS: u64 = 1000;
/// Calls per SQS run unless `--sqs-n` says otherwise: moto answers every request on a new
/// connection and manages a few dozen calls per second here, so N would take many minutes.
const SQS_DEFAULT_CALLS: u64 = 300;

/// The implementations measured for a path and workload.
fn sides(path: PathKind, workload: Workload) -> Vec<Side> {
    let mut sides = vec![Side::Ivy];
    if workload == Workload::W4 {
        sides.push(Side::IvyEncrypted);
    }
    if path == PathKind::Amqp {
        sides.push(Side::Raw);
        if matches!(workload, Workload::W1 | Workload::W2) {
            sides.push(Side::RawSized);
        }
    }
    sides
}

/// CPU of this process over one measurement, its wall time, and its peak RSS so far (each
/// run has a process of its own, so that peak is the run's).
struct Meter {
    start: Instant,
    cpu: f64,
}

impl Meter {
    fn begin() -> Self {
        Meter {
            cpu: procfs::cpu_seconds("self").unwrap_or(0.0),
            start: Instant::now(),
        }
    }

    fn end(&self) -> (Duration, Usage) {
        let elapsed = self.start.elapsed();
        let now = procfs::usage("self");
        (
            elapsed,
            Usage {
                cpu_s: now.cpu_s - self.cpu,
                peak_rss_kib: now.peak_rss_kib,
            },
        )
    }
}

/// The producer of one run.
enum Prod<'a> {
    Ivy(&'a ivy_side::IvyProducer, &'a str),
    Raw(&'a raw::RawProducer),
}

/// A call index far from 0..N, for the warm-up call.
const WARM_UP: u64 = 1 << 40;

impl Prod<'_> {
    /// One call of the workload's kind, so connections, subscriptions and the worker are up.
    async fn warm_up(&self, workload: Workload, pad: Option<&str>) -> Result<(), BoxError> {
        match (self, workload) {
            (Prod::Ivy(p, q), Workload::W2) => {
                p.send(tasks::add::call(WARM_UP, 1).queue(*q)).await?;
            }
            (Prod::Ivy(p, q), _) => ivy_side::call(p, q, WARM_UP, pad).await?,
            (Prod::Raw(p), Workload::W2) => p.send(WARM_UP).await?,
            (Prod::Raw(p), _) => p.call(WARM_UP, pad).await?,
        }
        Ok(())
    }

    /// The producer's part of the workload; W3's latencies.
    async fn drive(
        &self,
        workload: Workload,
        n: u64,
        window: usize,
        pad: Option<&str>,
    ) -> Result<Vec<Duration>, BoxError> {
        match (self, workload) {
            (Prod::Ivy(p, q), Workload::W1 | Workload::W4) => {
                ivy_side::calls(p, q, n, window, pad).await?
            }
            (Prod::Ivy(p, q), Workload::W2) => ivy_side::sends(p, q, n, window).await?,
            (Prod::Ivy(p, q), Workload::W3) => return ivy_side::sequential(p, q, n).await,
            (Prod::Raw(p), Workload::W1 | Workload::W4) => p.calls(0, n, window, pad).await?,
            (Prod::Raw(p), Workload::W2) => p.sends(0, n, window).await?,
            (Prod::Raw(p), Workload::W3) => return p.sequential(0, n).await,
        }
        Ok(Vec::new())
    }
}

/// `f`, or an error naming `what` if it takes longer than `limit`: a run that hangs (a confirm
/// that never comes) fails with a reason instead of being killed from outside.
async fn within<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what} did not finish within {limit:?}").into()),
    }
}

/// One run, in the `ivy-bench run …` process.
struct Bench {
    opts: Opts,
    /// The run's number, for unique SQS queue names.
    counter: u64,
}

impl Bench {
    async fn run_once(
        &mut self,
        path: PathKind,
        workload: Workload,
        side: Side,
        n: u64,
    ) -> Result<Sample, BoxError> {
        let pad = (workload == Workload::W4).then(|| "x".repeat(PAD_BYTES));
        let pad = pad.as_deref();
        let encrypted = side == Side::IvyEncrypted;
        let window = self.opts.window;
        if path == PathKind::Memory {
            return memory_run(&self.opts, workload, encrypted, n, pad).await;
        }
        let (broker_url, queue) = match path {
            PathKind::Sqs => (
                self.opts.sqs_url.clone(),
                format!("ivy-bench-{}-{}", std::process::id(), self.counter),
            ),
            _ => {
                purge_amqp(&self.opts.amqp_url).await?;
                (self.opts.amqp_url.clone(), tasks::IVY_QUEUE.to_owned())
            }
        };
        let spec = Spec {
            kind: if matches!(side, Side::Raw | Side::RawSized) {
                Kind::Raw
            } else {
                Kind::Ivy
            },
            broker: broker_url.clone(),
            notifier: self.opts.redis_url.clone(),
            queue: queue.clone(),
            concurrency: self.opts.concurrency,
            expect: n,
            encrypted,
        };
        let mut worker = WorkerProcess::start(&spec).await?;
        let ivy_producer;
        let raw_producer;
        let prod = if matches!(side, Side::Raw | Side::RawSized) {
            let replies = workload != Workload::W2;
            let mut p =
                raw::RawProducer::connect(&self.opts.amqp_url, &self.opts.redis_url, replies)
                    .await?;
            if side == Side::RawSized {
                // A call from the middle of the run, so the numbers have typical lengths.
                let x = n / 2;
                let ivy = within(
                    Duration::from_secs(10),
                    "measuring Ivy's envelope",
                    ivy_side::body_len(workload, x),
                )
                .await?;
                p.pad_by(ivy.saturating_sub(p.body_len(x, replies)?));
            }
            raw_producer = p;
            Prod::Raw(&raw_producer)
        } else {
            let broker = ivy::backends::broker_from_url(&broker_url).await?;
            let notifier = ivy::backends::notifier_from_url(&self.opts.redis_url).await?;
            ivy_producer =
                Producer::new(broker, notifier).with_keyring(ivy_side::keyring(encrypted)?);
            Prod::Ivy(&ivy_producer, &queue)
        };
        within(
            Duration::from_secs(60),
            "the warm-up call",
            prod.warm_up(workload, pad),
        )
        .await?;
        worker.expect_line("warm", Duration::from_secs(60)).await?;

        worker.start_measuring();
        let meter = Meter::begin();
        let latencies = within(
            self.opts.run_limit(n),
            "the producer's calls",
            prod.drive(workload, n, window, pad),
        )
        .await?;
        if workload == Workload::W2 {
            worker.expect_line("done", self.opts.run_limit(n)).await?;
        }
        let (elapsed, producer) = meter.end();
        let worker = worker.stop().await?;
        Ok(Sample {
            tasks: n,
            elapsed,
            latencies,
            producer,
            worker: Some(worker),
        })
    }
}

/// Runs one scenario once in a fresh `ivy-bench run …` process (which starts its own worker
/// process where there is one), so each run's peak RSS is its own.
async fn run_in_child(
    opts: &Opts,
    path: PathKind,
    workload: Workload,
    side: Side,
    n: u64,
    counter: u64,
) -> Result<Sample, BoxError> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(args::run_args(opts, path, workload, side, n, counter))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let limit = opts.run_limit(n) * 2;
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Ok(out) => out?,
        Err(_) => return Err(format!("no end within {limit:?}").into()),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let last = stderr.lines().rev().take(5).collect::<Vec<_>>();
        let last = last.into_iter().rev().collect::<Vec<_>>().join(" / ");
        return Err(format!("the run process failed ({}): {last}", out.status).into());
    }
    if !stderr.trim().is_empty() {
        eprint!("{stderr}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(SAMPLE_PREFIX))
        .ok_or("the run process printed no sample")?;
    Ok(serde_json::from_str(line)?)
}

/// How a `run` process hands its sample to the parent.
const SAMPLE_PREFIX: &str = "SAMPLE ";

/// The `run` subcommand: one scenario once; the sample goes to stdout for the parent.
async fn child_run(run: RunArgs) -> Result<(), BoxError> {
    let mut bench = Bench {
        opts: run.opts,
        counter: run.counter,
    };
    let sample = bench
        .run_once(run.path, run.workload, run.side, run.n)
        .await?;
    println!("{SAMPLE_PREFIX}{}", serde_json::to_string(&sample)?);
    Ok(())
}

/// One run on the in-memory broker: producer and worker in this process, by nature.
async fn memory_run(
    opts: &Opts,
    workload: Workload,
    encrypted: bool,
    n: u64,
    pad: Option<&str>,
) -> Result<Sample, BoxError> {
    let broker = AnyBroker::Memory(MemoryBroker::new());
    let notifier = AnyNotifier::Memory(MemoryNotifier::new());
    let worker = ivy_side::worker(
        broker.clone(),
        notifier.clone(),
        tasks::IVY_QUEUE,
        opts.concurrency,
        encrypted,
    )?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let producer = Producer::new(broker, notifier).with_keyring(ivy_side::keyring(encrypted)?);
    let prod = Prod::Ivy(&producer, tasks::IVY_QUEUE);
    let before = tasks::count();
    prod.warm_up(workload, pad).await?;
    tasks::wait_for(before + 1).await;

    let base = tasks::count();
    let meter = Meter::begin();
    let latencies = prod.drive(workload, n, opts.window, pad).await?;
    if workload == Workload::W2 {
        tasks::wait_for(base + n).await;
    }
    let (elapsed, usage) = meter.end();
    let _ = stop.send(());
    let report = running.await??;
    if report.failed + report.dead_lettered + report.refused + report.returned > 0 {
        return Err(format!("the worker did not run every call cleanly: {report:?}").into());
    }
    Ok(Sample {
        tasks: n,
        elapsed,
        latencies,
        producer: usage,
        worker: None,
    })
}

/// Empties the bench's AMQP queues, so a run never sees an earlier run's leftovers.
async fn purge_amqp(url: &str) -> Result<(), BoxError> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let dead = format!("{}.dead", tasks::IVY_QUEUE);
    for q in [tasks::IVY_QUEUE, dead.as_str(), raw::RAW_QUEUE] {
        // A queue that does not exist yet closes the channel it was purged on: one each.
        let channel = conn.create_channel().await?;
        let _ = channel
            .queue_purge(q.into(), QueuePurgeOptions::default())
            .await;
    }
    let _ = conn.close(200, "purged".into()).await;
    Ok(())
}

/// Whether the SQS path can run: `None`, or why not.
async fn sqs_unavailable(url: &str) -> Option<Outcome> {
    match ivy::backends::broker_from_url(url).await {
        Ok(_) => None,
        Err(ivy::Error::Url { reason, .. }) => {
            Some(Outcome::Skipped(format!("no sqs backend ({reason})")))
        }
        Err(e) => Some(Outcome::Failed(format!("SQS at {url} unusable: {e}"))),
    }
}

async fn redis_version(url: &str) -> String {
    let info = async {
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut conn)
            .await
    };
    match info.await {
        Ok(info) => info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned(),
        Err(_) => "unknown".into(),
    }
}

/// RabbitMQ's and Erlang's versions from the management API (one HTTP call).
fn rabbitmq_version() -> String {
    let out = procfs::command_line(
        "curl",
        &[
            "-sf",
            "-m",
            "5",
            "-u",
            "guest:guest",
            "http://127.0.0.1:15672/api/overview",
        ],
    );
    match serde_json::from_str::<serde_json::Value>(&out) {
        Ok(v) => format!(
            "{} (Erlang {})",
            v["rabbitmq_version"].as_str().unwrap_or("unknown"),
            v["erlang_version"].as_str().unwrap_or("unknown")
        ),
        Err(_) => "unknown (management API not reachable)".into(),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

async fn header(opts: &Opts, load_before: &str) -> String {
    let mut h = String::new();
    let crates = procfs::locked_versions(&["ivy", "lapin", "redis", "tokio", "aws-sdk-sqs"])
        .into_iter()
        .map(|(n, v)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let uses_amqp = opts.paths.contains(&PathKind::Amqp);
    let uses_redis = uses_amqp || opts.paths.contains(&PathKind::Sqs);
    let _ = writeln!(h, "# Ivy benchmark\n");
    let _ = writeln!(
        h,
        "- **Date**: {}",
        procfs::command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(h, "- **Machine**: {}", procfs::machine());
    let _ = writeln!(
        h,
        "- **Load average** (1/5/15 min) before the run: {load_before}"
    );
    let _ = writeln!(
        h,
        "- **Versions**: Ivy at `{}`; {}; crates: {crates}; RabbitMQ {}; Redis {}",
        procfs::command_line(
            "git",
            &[
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty"
            ]
        ),
        procfs::command_line("rustc", &["-V"]),
        if uses_amqp {
            rabbitmq_version()
        } else {
            "not used".into()
        },
        if uses_redis {
            redis_version(&opts.redis_url).await
        } else {
            "not used".into()
        },
    );
    let _ =
        writeln!(
        h,
        "- **Settings**: N = {} calls per run (W3: {} sequential calls{}), {} run(s) per figure \
         (median, min–max); worker concurrency = broker prefetch = {}; {} calls in flight per \
         producer (W1, W2, W4); release build{}",
        opts.n,
        opts.n.min(W3_CALLS),
        if opts.paths.contains(&PathKind::Sqs) {
            format!("; SQS: {} calls", opts.calls(PathKind::Sqs, Workload::W1))
        } else {
            String::new()
        },
        opts.runs,
        opts.concurrency,
        opts.window,
        if cfg!(debug_assertions) { " — NO: debug build, figures meaningless" } else { "" },
    );
    let _ = writeln!(
        h,
        "- **Persistence**: durable classic queues with `x-max-priority` 9 (what Ivy declares), \
         persistent messages (`delivery_mode` 2), `mandatory`, publisher confirms awaited per \
         message with many in flight; manual acks after the result is stored; results stored \
         with a 600 s TTL and published over Redis pub/sub (Redis without persistence)"
    );
    let _ = writeln!(
        h,
        "- **Raw baseline**: lapin + redis, same queue, prefetch, persistence and in-flight window; \
         JSON call `{{id, args, pad?, reply_to?}}`; the worker replies store-then-publish \
         (`SET PX` + `PUBLISH` pipelined, as Ivy's notifier) to the producer's own channel, then \
         acks. It skips what Ivy adds: the `running` status message, the envelope's metadata, \
         the registry, retries, reconnection and typed handles. The row *raw, body padded to Ivy's \
         size* (W1, W2) is the same baseline with its bodies padded with JSON whitespace to the \
         length of Ivy's envelope for the same call: what the message size alone costs on the \
         broker (its Ivy/raw column is its ratio to the unpadded baseline)"
    );
    let _ = writeln!(
        h,
        "- **Measured**: tasks/s from the first send to the last result (W1, W3, W4) or to the \
         worker's last execution (W2); p50/p99 per call (W3); peak RSS = VmHWM of the process \
         (every run starts fresh processes: this binary re-executes itself as `ivy-bench run …` \
         for the producer and `ivy-bench worker …` for the worker); CPU = utime + stime from \
         `/proc/<pid>/stat` during the measurement (after connecting and one warm-up call). On memory the producer and worker are one process: one figure. W4 \
         encryption: AES-256-CBC + HMAC-SHA-256 both ways. Ivy/raw = Ivy's median tasks/s over \
         raw's, same path and workload (W4: both Ivy rows against raw's 16 KiB row)\n"
    );
    h
}

async fn bench(opts: Opts) -> Result<bool, BoxError> {
    let load_before = load_average();
    let mut counter = 0;
    let mut rows: Vec<Row> = Vec::new();
    for &path in &opts.paths {
        let unavailable = if path == PathKind::Sqs {
            sqs_unavailable(&opts.sqs_url).await
        } else {
            None
        };
        for &workload in &opts.workloads {
            let n = opts.calls(path, workload);
            let sides = sides(path, workload);
            let mut samples: Vec<Result<Vec<Sample>, String>> = vec![Ok(Vec::new()); sides.len()];
            if let Some(why) = &unavailable {
                for &side in &sides {
                    rows.push(Row {
                        path,
                        workload,
                        side,
                        outcome: why.clone(),
                    });
                }
                if let Outcome::Skipped(why) = why {
                    eprintln!("{} {}: skipped: {why}", path.label(), workload.label());
                }
                continue;
            }
            // Runs alternate between implementations, so drift in the machine's load hits all.
            for run in 1..=opts.runs {
                for (i, &side) in sides.iter().enumerate() {
                    let Ok(done) = &mut samples[i] else { continue };
                    counter += 1;
                    let result = run_in_child(&opts, path, workload, side, n, counter).await;
                    match result {
                        Ok(s) => {
                            eprintln!(
                                "{} | {} | {} | run {run}/{}: {:.0} tasks/s",
                                path.label(),
                                workload.label(),
                                side.label(workload),
                                opts.runs,
                                s.tasks as f64 / s.elapsed.as_secs_f64()
                            );
                            done.push(s);
                        }
                        Err(e) => {
                            eprintln!(
                                "{} | {} | {} | run {run}: FAILED: {e}",
                                path.label(),
                                workload.label(),
                                side.label(workload)
                            );
                            samples[i] = Err(e.to_string());
                        }
                    }
                }
            }
            for (side, s) in sides.into_iter().zip(samples) {
                rows.push(Row {
                    path,
                    workload,
                    side,
                    outcome: match s {
                        Ok(s) => Outcome::Samples(s),
                        Err(e) => Outcome::Failed(e),
                    },
                });
            }
        }
    }

    let mut doc = header(&opts, &load_before).await;
    doc.push_str(&report::table(&rows));
    let _ = writeln!(doc, "\nLoad average after the run: {}", load_average());
    if opts.scale_check {
        doc.push_str(&scale_check(&opts).await?);
    }
    println!("{doc}");
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out, &doc)?;
    eprintln!("written to {}", opts.out.display());
    Ok(!rows.iter().any(|r| matches!(r.outcome, Outcome::Failed(_))))
}

/// W1 on memory at N and at 10×N: per-task CPU should not grow with N.
async fn scale_check(opts: &Opts) -> Result<String, BoxError> {
    let mut out = String::from(
        "\n## Per-task cost against N (W1, memory, producer and worker in one process)\n\n\
         | N | tasks/s median | CPU µs per task (median) | peak RSS MiB |\n|---|---|---|---|\n",
    );
    for n in [opts.n, opts.n * 10] {
        let mut samples = Vec::new();
        for run in 0..opts.runs {
            samples.push(
                run_in_child(
                    opts,
                    PathKind::Memory,
                    Workload::W1,
                    Side::Ivy,
                    n,
                    run as u64,
                )
                .await?,
            );
        }
        let f = report::figures(&samples);
        eprintln!("scale check N={n}: {:.0} tasks/s", f.tps);
        let _ = writeln!(
            out,
            "| {n} | {:.0} | {:.1} | {:.1} |",
            f.tps,
            f.producer_cpu_per_1k * 1000.0,
            f.producer_rss_mib
        );
    }
    Ok(out)
}

/// Exit status of a usage error (0 ok, 1 a scenario or the bench failed).
const USAGE_ERROR: u8 = 2;

fn main() -> std::process::ExitCode {
    let command = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            println!("{}", args::USAGE);
            return std::process::ExitCode::SUCCESS;
        }
        Ok(command) => command,
        Err(e) => {
            eprintln!("ivy-bench: {e} (see ivy-bench --help)");
            return std::process::ExitCode::from(USAGE_ERROR);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ivy-bench: cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Bench(opts) => runtime.block_on(bench(opts)),
        Command::Run(run) => runtime.block_on(child_run(run)).map(|()| true),
        Command::Worker(spec) => runtime
            .block_on(worker_proc::child_main(spec))
            .map(|()| true),
        Command::Help => Ok(true),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("ivy-bench: some scenarios FAILED (see the table)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ivy-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_runs_only_on_amqp() {
        assert_eq!(
            sides(PathKind::Amqp, Workload::W1),
            [Side::Ivy, Side::Raw, Side::RawSized]
        );
        assert_eq!(
            sides(PathKind::Amqp, Workload::W4),
            [Side::Ivy, Side::IvyEncrypted, Side::Raw]
        );
        assert_eq!(sides(PathKind::Memory, Workload::W2), [Side::Ivy]);
        assert_eq!(
            sides(PathKind::Sqs, Workload::W4),
            [Side::Ivy, Side::IvyEncrypted]
        );
    }
}
