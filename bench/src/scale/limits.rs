//! The limits curve: calls of a task with a `rate_limit` or a `max_concurrency` that never
//! binds, against the same task without, at two sizes. What it should show: the limits' cost
//! per call (a Redis round trip or two) constant in N.

use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt, TryStreamExt};
use ivy::{Call, Task};

use super::point::{self, RedisInfo, ScaleWorker, Urls, QUEUE};
use super::{figures, free, rated, slotted, Col, Curve, Figures, Growth, CONCURRENCY};
use crate::error::BoxError;
use crate::ivy_side::IvyProducer;

/// Calls in flight (as the main bench's W1).
const WINDOW: usize = 1000;
/// `scale.slotted`'s slots (PROTOCOL.md §10), emptied first: a killed earlier run's slots
/// would otherwise bind.
const SLOTS_KEY: &str = "ivy:slots:scale.slotted";

pub fn curve(ns: Vec<u64>) -> Curve {
    Curve {
        key: "limits",
        title: "Limits that never bind",
        what: "N calls with results (1,000 in flight, one worker of concurrency 16) of a task \
               without a limit, with `rate_limit = \"1000000/s\"`, and with `max_concurrency = \
               1000`: neither ever makes a call wait here, so the difference is what the limit \
               itself costs. Redis CPU is the server's (`INFO cpu`) over the calls.",
        n_header: "N calls",
        series: &["none", "rate_limit", "max_concurrency"],
        ns,
        cols: COLS,
    }
}

const COLS: &[Col] = &[
    Col {
        key: "rate",
        header: "calls/s",
        digits: 0,
        growth: Growth::Shown,
    },
    Col {
        key: "producer_cpu",
        header: "producer CPU s per 1k",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "worker_cpu",
        header: "worker CPU s per 1k",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "redis_cpu",
        header: "Redis CPU s per 1k",
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

/// `n` calls of `call(i)` with results, `WINDOW` at a time; each answers `i + 1`.
async fn calls<T: Task<Output = u64>>(
    p: &IvyProducer,
    n: u64,
    call: impl Fn(u64) -> Call<T>,
) -> Result<(), BoxError> {
    stream::iter(0..n)
        .map(|i| {
            let c = call(i).queue(QUEUE);
            async move {
                let got = p.delayed_call(c).await?.result().await?;
                if got != i + 1 {
                    return Err(BoxError::from(format!("call {i} answered {got}")));
                }
                Ok(())
            }
        })
        .buffer_unordered(WINDOW)
        .try_for_each(|()| async { Ok(()) })
        .await
}

async fn run(p: &IvyProducer, series: &str, n: u64) -> Result<(), BoxError> {
    match series {
        "none" => calls(p, n, free::call).await,
        "rate_limit" => calls(p, n, rated::call).await,
        "max_concurrency" => calls(p, n, slotted::call).await,
        other => Err(format!("unknown limit {other}").into()),
    }
}

pub async fn point(urls: &Urls, series: &str, n: u64) -> Result<Figures, BoxError> {
    point::purge(&urls.amqp, &[QUEUE.to_owned()]).await?;
    let mut redis = RedisInfo::connect(&urls.redis).await?;
    redis.del(SLOTS_KEY).await?;
    let worker = ScaleWorker::start(1, CONCURRENCY).await?;
    let p = point::producer(urls).await?;
    // One warm-up call of the same task: connections, subscriptions, the limit's scripts.
    point::within(
        Duration::from_secs(60),
        "the warm-up call",
        run(&p, series, 1),
    )
    .await?;
    let (cpu, wcpu) = (point::own_cpu(), worker.cpu());
    let rcpu = redis.cpu_seconds().await?;
    let t = Instant::now();
    point::within(point::limit_for(n), "the calls", run(&p, series, n)).await?;
    let elapsed = t.elapsed().as_secs_f64();
    let (producer_cpu, worker_cpu) = (point::own_cpu() - cpu, worker.cpu() - wcpu);
    let redis_cpu = redis.cpu_seconds().await? - rcpu;
    let usage = worker.stop().await?;
    let k = n as f64 / 1000.0;
    Ok(figures(&[
        ("rate", n as f64 / elapsed),
        ("producer_cpu", producer_cpu / k),
        ("worker_cpu", worker_cpu / k),
        ("redis_cpu", redis_cpu / k),
        ("worker_rss", point::mib(usage.peak_rss_kib)),
    ]))
}
