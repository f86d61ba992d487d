//! The queues curve: one worker consuming k queues. Its start-up (until it has run one call
//! from every queue), its idle CPU over a fixed window, then its throughput on calls spread
//! over all k queues. What it should show: idle CPU and CPU per call that do not grow with k.

use std::time::{Duration, Instant};

use super::point::{self, ScaleWorker, Urls};
use super::{figures, Col, Curve, Figures, Growth, CONCURRENCY};
use crate::error::BoxError;
use crate::procfs;
use crate::tasks::add;

/// The idle window: long enough for a few clock ticks of CPU at 1 queue.
const IDLE: Duration = Duration::from_secs(4);
const IDLE_SMOKE: Duration = Duration::from_millis(200);
/// Calls of the throughput part, spread over the queues in turn.
const CALLS: u64 = 10_000;
const CALLS_SMOKE: u64 = 100;
const WINDOW: usize = 1000;

pub fn curve(ns: Vec<u64>) -> Curve {
    Curve {
        key: "queues",
        title: "A worker consuming many queues",
        what: "One worker (concurrency 16) consumes k queues. *start-up* runs from its start to \
               its having run one call sent to each queue; *idle CPU* is its CPU over the next 4 \
               s with nothing to do, in % of a core; then 10,000 fire-and-forget calls spread \
               over the k queues in turn (1,000 in flight): the rate from the first send to the \
               worker's last execution, the worker's CPU and RabbitMQ's (its `beam.smp`, \
               whatever else uses the node counts too) per call.",
        n_header: "k queues",
        series: &["queues"],
        ns,
        cols: COLS,
    }
}

const COLS: &[Col] = &[
    Col {
        key: "startup_s",
        header: "start-up s",
        digits: 2,
        growth: Growth::None,
    },
    Col {
        key: "startup_ms",
        header: "start-up ms per queue",
        digits: 1,
        growth: Growth::Cost,
    },
    Col {
        key: "idle_pct",
        header: "idle CPU % of a core",
        digits: 2,
        growth: Growth::None,
    },
    Col {
        key: "idle_per_queue",
        header: "idle CPU % per queue",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "rate",
        header: "calls/s",
        digits: 0,
        growth: Growth::Shown,
    },
    Col {
        key: "worker_cpu",
        header: "worker CPU s per 1k calls",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "rabbitmq_cpu",
        header: "RabbitMQ CPU s per 1k calls",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "worker_rss",
        header: "worker peak RSS MiB",
        digits: 1,
        growth: Growth::None,
    },
];

pub async fn point(urls: &Urls, k: u64, smoke: bool) -> Result<Figures, BoxError> {
    let count = usize::try_from(k)?;
    let names = point::queue_names(count);
    point::purge(&urls.amqp, &names).await?;
    let p = point::producer(urls).await?;
    let t = Instant::now();
    let mut worker = ScaleWorker::start(count, CONCURRENCY).await?;
    let limit = point::limit_for(k * 20);
    point::send_all(&p, k, WINDOW, |i| {
        add::call(i, 1).queue(names[i as usize].clone())
    })
    .await?;
    worker.wait_for(k, limit).await?;
    let startup = t.elapsed().as_secs_f64();

    let idle = if smoke { IDLE_SMOKE } else { IDLE };
    let cpu = worker.cpu();
    // A fixed window is what is measured here: the CPU of a worker with nothing to do.
    tokio::time::sleep(idle).await;
    let idle_pct = (worker.cpu() - cpu) / idle.as_secs_f64() * 100.0;

    let calls = if smoke { CALLS_SMOKE } else { CALLS };
    let rabbitmq = procfs::rabbitmq_pid();
    let rabbitmq_cpu = || rabbitmq.as_deref().and_then(procfs::cpu_seconds);
    let broker_cpu = rabbitmq_cpu();
    let (cpu, t) = (worker.cpu(), Instant::now());
    point::send_all(&p, calls, WINDOW, |i| {
        add::call(i, 1).queue(names[(i % k) as usize].clone())
    })
    .await?;
    worker.wait_for(k + calls, point::limit_for(calls)).await?;
    let elapsed = t.elapsed().as_secs_f64();
    let worker_cpu = worker.cpu() - cpu;
    let broker_cpu = match (broker_cpu, rabbitmq_cpu()) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let usage = worker.stop().await?;
    point::purge(&urls.amqp, &names).await?;
    Ok(figures(&[
        ("startup_s", startup),
        ("startup_ms", startup * 1000.0 / k as f64),
        ("idle_pct", idle_pct),
        ("idle_per_queue", idle_pct / k as f64),
        ("rate", calls as f64 / elapsed),
        ("worker_cpu", worker_cpu / (calls as f64 / 1000.0)),
        ("rabbitmq_cpu", broker_cpu / (calls as f64 / 1000.0)),
        ("worker_rss", point::mib(usage.peak_rss_kib)),
    ]))
}
