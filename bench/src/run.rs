//! One run of one scenario, in the `ivy-bench run …` process: connects, starts the worker
//! process (or, on memory, the worker in this process), makes the warm-up call, then drives
//! the workload while metering this process's CPU and the wall time. It hands back one
//! [`Sample`] on stdout and keeps no state between runs: every run is a fresh process.

use std::time::{Duration, Instant};

use ivy::backends::{AnyBroker, AnyNotifier};
use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::Producer;
use lapin::options::QueueDeleteOptions;

use crate::args::{Opts, RunArgs};
use crate::error::BoxError;
use crate::procfs::{self, Usage};
use crate::report::Sample;
use crate::scenario::{Kind, Spec};
use crate::scenario::{PathKind, Side, Workload, PAD_BYTES};
use crate::worker_proc::WorkerProcess;
use crate::{ivy_side, raw, tasks};

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
        opts: &Opts,
        pad: Option<&str>,
    ) -> Result<Vec<Duration>, BoxError> {
        let window = opts.window;
        match (self, workload) {
            (Prod::Ivy(p, q), Workload::W5) => return ivy_side::paced(p, q, n, opts.rate).await,
            (Prod::Raw(_), Workload::W5) => return Err("W5 has no raw side".into()),
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
pub async fn within<T>(
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
                let url = if self.opts.ivy_priorities {
                    with_option(&self.opts.amqp_url, "priority_queues=*")
                } else {
                    self.opts.amqp_url.clone()
                };
                (url, tasks::IVY_QUEUE.to_owned())
            }
        };
        let spec = Spec {
            kind: side.raw_kind().unwrap_or(Kind::Ivy),
            broker: broker_url.clone(),
            notifier: self.opts.redis_url.clone(),
            queue: queue.clone(),
            concurrency: self.opts.concurrency,
            expect: n,
            encrypted,
            prefetch_multiplier: self.opts.prefetch_multiplier,
        };
        let mut worker = WorkerProcess::start(&spec).await?;
        let ivy_producer;
        let mut producer_broker = None;
        let raw_producer;
        let prod = if let Some(kind) = side.raw_kind() {
            let replies = workload != Workload::W2;
            let flavour = if kind == Kind::RawMinimal {
                raw::Flavour::Minimal
            } else {
                raw::Flavour::LikeForLike
            };
            let mut p = raw::RawProducer::connect(
                &self.opts.amqp_url,
                &self.opts.redis_url,
                replies,
                flavour,
            )
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
            producer_broker = Some(broker.clone());
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
        let rabbitmq = (path == PathKind::Amqp)
            .then(procfs::rabbitmq_pid)
            .flatten();
        let broker_cpu_before = rabbitmq.as_deref().and_then(procfs::cpu_seconds);
        let meter = Meter::begin();
        let latencies = within(
            self.opts.run_limit(n),
            "the producer's calls",
            prod.drive(workload, n, &self.opts, pad),
        )
        .await?;
        if workload == Workload::W2 {
            worker.expect_line("done", self.opts.run_limit(n)).await?;
        }
        let (elapsed, producer) = meter.end();
        let broker_cpu_s = match (
            rabbitmq.as_deref().and_then(procfs::cpu_seconds),
            broker_cpu_before,
        ) {
            (Some(after), Some(before)) => Some(after - before),
            _ => None,
        };
        let (worker, worker_requests) = worker.stop().await?;
        // Warm-up included: both sides count from their start.
        let sqs_requests = match (
            producer_broker.as_ref().and_then(ivy_side::sqs_requests),
            worker_requests,
        ) {
            (Some(p), Some(w)) => Some(p + w),
            _ => None,
        };
        Ok(Sample {
            tasks: n,
            elapsed,
            latencies,
            producer,
            worker: Some(worker),
            sqs_requests,
            broker_cpu_s,
        })
    }
}

/// How a `run` process hands its sample to the parent.
pub const SAMPLE_PREFIX: &str = "SAMPLE ";

/// The `run` subcommand: one scenario once; the sample goes to stdout for the parent.
pub async fn child_run(run: RunArgs) -> Result<(), BoxError> {
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
        opts.prefetch_multiplier,
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
    let latencies = prod.drive(workload, n, opts, pad).await?;
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
        sqs_requests: None,
        broker_cpu_s: None,
    })
}

/// `url` with one more query option.
fn with_option(url: &str, option: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{option}")
}

/// Deletes the bench's AMQP queues, so a run never sees an earlier run's leftovers and each
/// queue is declared afresh with the arguments of this run (`--ivy-priorities` or not).
pub async fn purge_amqp(url: &str) -> Result<(), BoxError> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let dead = format!("{}.dead", tasks::IVY_QUEUE);
    for q in [
        tasks::IVY_QUEUE,
        dead.as_str(),
        raw::RAW_QUEUE,
        raw::MINIMAL_QUEUE,
    ] {
        // Failing (a queue that does not exist) closes the channel: one each.
        let channel = conn.create_channel().await?;
        let _ = channel
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "purged".into()).await;
    Ok(())
}
