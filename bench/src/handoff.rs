//! The `max_concurrency` handoff scenario (`ivy-bench --handoff`): how soon a freed cluster
//! slot goes to a call waiting for it. 12 calls of 400 ms of a task with `max_concurrency = 2`
//! on AMQP + Redis, over two worker processes: ideally 12 / 2 × 400 ms = 2.4 s. Measured in
//! the same run, as the baseline: the same 12 calls of a task without a limit on one worker of
//! concurrency 2, the same shape held by the worker's own slots, i.e. what the pipeline costs
//! without cluster slots. Runs alternate between the two, so drift in the machine's load hits
//! both. The figure is the wall time from the first send to the last result.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use ivy::Producer;

use crate::args::Opts;
use crate::error::BoxError;
use crate::scenario::{Kind, Spec};
use crate::tasks::{self, narrow, wide, HANDOFF_RUN};
use crate::worker_proc::WorkerProcess;
use crate::{header, ivy_side, procfs, report};

/// Calls per run.
const CALLS: u64 = 12;
/// The task's `max_concurrency`.
const MAX: u64 = 2;
/// The Redis key of `bench.narrow`'s slots (PROTOCOL.md §10), emptied before each run so that
/// a slot left by a killed earlier run cannot hold this one up.
const SLOTS_KEY: &str = "ivy:slots:bench.narrow";

/// The two setups measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// `bench.narrow` (`max_concurrency = 2`) over two workers of `--concurrency` each.
    Limited,
    /// `bench.wide` (no limit) on one worker of concurrency 2.
    Baseline,
}

impl Setup {
    fn label(self, opts: &Opts) -> String {
        match self {
            Setup::Limited => format!(
                "`max_concurrency = {MAX}`, two workers of concurrency {}",
                opts.concurrency
            ),
            Setup::Baseline => format!("no limit, one worker of concurrency {MAX} (baseline)"),
        }
    }
}

/// The ideal wall time: the calls in rounds of `MAX`, each round one run long.
fn ideal() -> Duration {
    HANDOFF_RUN * u32::try_from(CALLS.div_ceil(MAX)).unwrap_or(u32::MAX)
}

/// One run of `setup`: fresh worker processes, a warm-up call each, then the 12 calls.
async fn run_once(opts: &Opts, setup: Setup) -> Result<Duration, BoxError> {
    crate::run::purge_amqp(&opts.amqp_url).await?;
    let mut redis = redis::Client::open(opts.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("DEL")
        .arg(SLOTS_KEY)
        .query_async::<()>(&mut redis)
        .await?;
    let (workers, concurrency) = match setup {
        Setup::Limited => (2, opts.concurrency),
        Setup::Baseline => (1, MAX as usize),
    };
    let spec = Spec {
        kind: Kind::Ivy,
        broker: opts.amqp_url.clone(),
        notifier: opts.redis_url.clone(),
        queue: tasks::IVY_QUEUE.to_owned(),
        concurrency,
        expect: 0,
        encrypted: false,
        prefetch_multiplier: opts.prefetch_multiplier,
    };
    let mut procs = Vec::new();
    for _ in 0..workers {
        procs.push(WorkerProcess::start(&spec).await?);
    }
    let broker = ivy::backends::broker_from_url(&opts.amqp_url).await?;
    let notifier = ivy::backends::notifier_from_url(&opts.redis_url).await?;
    let producer = Producer::new(broker, notifier);
    // Warm-up calls until every worker has run one (RabbitMQ hands them out in turn).
    let mut warm = vec![false; procs.len()];
    for i in 0..100u64 {
        if warm.iter().all(|w| *w) {
            break;
        }
        ivy_side::call(&producer, tasks::IVY_QUEUE, (1 << 40) + i, None).await?;
        for (proc, warm) in procs.iter_mut().zip(&mut warm) {
            if !*warm {
                *warm = proc
                    .expect_line("warm", Duration::from_millis(100))
                    .await
                    .is_ok();
            }
        }
    }
    if !warm.iter().all(|w| *w) {
        return Err("a worker never ran a warm-up call".into());
    }
    let queue = tasks::IVY_QUEUE;
    let started = Instant::now();
    let calls = (0..CALLS).map(|i| {
        let producer = &producer;
        async move {
            let got = match setup {
                Setup::Limited => {
                    producer
                        .delayed_call(narrow::call(i).queue(queue))
                        .await?
                        .result()
                        .await?
                }
                Setup::Baseline => {
                    producer
                        .delayed_call(wide::call(i).queue(queue))
                        .await?
                        .result()
                        .await?
                }
            };
            if got != i {
                return Err(BoxError::from(format!("call {i} answered {got}")));
            }
            Ok(())
        }
    });
    let limit = Duration::from_secs(60);
    match tokio::time::timeout(limit, try_join_all(calls)).await {
        Ok(r) => r?,
        Err(_) => return Err(format!("the calls did not finish within {limit:?}").into()),
    };
    let elapsed = started.elapsed();
    for proc in procs {
        proc.stop().await?;
    }
    Ok(elapsed)
}

/// Runs the scenario `--runs` times per setup; the report section (Markdown). A run that
/// fails ends the bench: the figure would mean nothing.
pub async fn section(opts: &Opts) -> Result<String, BoxError> {
    let setups = [Setup::Limited, Setup::Baseline];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for run in 1..=opts.runs {
        for (i, &setup) in setups.iter().enumerate() {
            let t = run_once(opts, setup).await?;
            eprintln!(
                "handoff | {} | run {run}/{}: {:.3} s",
                setup.label(opts),
                opts.runs,
                t.as_secs_f64()
            );
            times[i].push(t.as_secs_f64());
        }
    }
    let ideal = ideal().as_secs_f64();
    let medians: Vec<f64> = times.iter().map(|t| report::median(t)).collect();
    let mut out = format!(
        "\n## `max_concurrency` handoff (AMQP + Redis)\n\n{CALLS} calls of {} ms sent at once, \
         wall time from the first send to the last result, {} run(s) per figure (median, \
         min–max). Ideal: {CALLS} / {MAX} × {} ms = {ideal:.1} s.\n\n\
         | Setup | wall time s median (min–max) | ÷ ideal ({ideal:.1} s) | ÷ baseline |\n\
         |---|---|---|---|\n",
        HANDOFF_RUN.as_millis(),
        opts.runs,
        HANDOFF_RUN.as_millis(),
    );
    for (i, &setup) in setups.iter().enumerate() {
        let min = times[i].iter().copied().fold(f64::INFINITY, f64::min);
        let max = times[i].iter().copied().fold(0.0, f64::max);
        let vs_baseline = if setup == Setup::Baseline {
            "(baseline)".to_owned()
        } else {
            format!("{:.2}", medians[i] / medians[1])
        };
        let _ = writeln!(
            out,
            "| {} | {:.2} ({min:.2}–{max:.2}) | {:.2} | {vs_baseline} |",
            setup.label(opts),
            medians[i],
            medians[i] / ideal,
        );
    }
    Ok(out)
}

/// The report's header for `--handoff`: date, machine, load, versions, build.
pub async fn header(opts: &Opts, load_before: &str) -> String {
    let mut h = header::opening("Ivy benchmark: `max_concurrency` handoff", load_before);
    let _ = writeln!(
        h,
        "- **Versions**: Ivy at `{}`; {}; RabbitMQ {}; Redis {}; {} build",
        header::ivy_commit(),
        procfs::command_line("rustc", &["-V"]),
        header::rabbitmq_version(),
        header::redis_version(&opts.redis_url).await,
        if cfg!(debug_assertions) {
            "debug (the figures are mostly sleeps and round trips, so still telling)"
        } else {
            "release"
        },
    );
    h
}
