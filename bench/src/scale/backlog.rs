//! The backlog curve: N fire-and-forget calls queued first, then drained by one fresh worker.
//! What it should show: per-call worker CPU and drain time flat, worker RSS flat (the worker
//! holds its prefetch, never the backlog).

use std::time::Instant;

use super::point::{self, ScaleWorker, Urls, QUEUE};
use super::{figures, Col, Curve, Figures, Growth, CONCURRENCY};
use crate::error::BoxError;
use crate::tasks::add;

/// Sends in flight while filling the queue.
const FILL_WINDOW: usize = 2000;

pub fn curve(ns: Vec<u64>) -> Curve {
    Curve {
        key: "backlog",
        title: "A backlog drained by one worker",
        what: "N fire-and-forget calls of a trivial task are queued first (2,000 sends in \
               flight), then one fresh worker (concurrency 16, prefetch 16 × 8) drains them. \
               *fill* and the producer's CPU cover the sends; *drain* runs from the worker's \
               start (once connected) to its N-th execution, its CPU over the same span; peak RSS is the \
               worker's whole life.",
        n_header: "N calls",
        series: &["backlog"],
        ns,
        cols: COLS,
    }
}

const COLS: &[Col] = &[
    Col {
        key: "fill_s",
        header: "fill s",
        digits: 1,
        growth: Growth::None,
    },
    Col {
        key: "drain_s",
        header: "drain s",
        digits: 1,
        growth: Growth::None,
    },
    Col {
        key: "drain_rate",
        header: "drained calls/s",
        digits: 0,
        growth: Growth::Shown,
    },
    Col {
        key: "producer_cpu",
        header: "producer CPU s per 1k sends",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "worker_cpu",
        header: "worker CPU s per 1k calls",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "drain_us",
        header: "drain µs per call",
        digits: 1,
        growth: Growth::Cost,
    },
    Col {
        key: "worker_rss",
        header: "worker peak RSS MiB",
        digits: 1,
        growth: Growth::Cost,
    },
];

pub async fn point(urls: &Urls, n: u64) -> Result<Figures, BoxError> {
    point::purge(&urls.amqp, &[QUEUE.to_owned()]).await?;
    let p = point::producer(urls).await?;
    let cpu = point::own_cpu();
    let t = Instant::now();
    point::within(
        point::limit_for(n),
        "filling the backlog",
        point::send_all(&p, n, FILL_WINDOW, |i| add::call(i, 1).queue(QUEUE)),
    )
    .await?;
    let fill = t.elapsed().as_secs_f64();
    let producer_cpu = point::own_cpu() - cpu;

    let mut worker = ScaleWorker::start(1, CONCURRENCY).await?;
    let t = Instant::now();
    let wcpu = worker.cpu();
    worker.wait_for(n, point::limit_for(n)).await?;
    let drain = t.elapsed().as_secs_f64();
    let worker_cpu = worker.cpu() - wcpu;
    let usage = worker.stop().await?;
    point::purge(&urls.amqp, &[QUEUE.to_owned()]).await?;
    let k = n as f64 / 1000.0;
    Ok(figures(&[
        ("fill_s", fill),
        ("drain_s", drain),
        ("drain_rate", n as f64 / drain),
        ("producer_cpu", producer_cpu / k),
        ("worker_cpu", worker_cpu / k),
        ("drain_us", drain * 1e6 / n as f64),
        ("worker_rss", point::mib(usage.peak_rss_kib)),
    ]))
}
