//! The handles curve: N calls with results sent while no worker runs, so N handles wait in
//! one producer; then a worker starts and every result comes back. What it should show: the
//! memory of a waiting handle and the producer's CPU per result (the result path) flat.

use std::time::Instant;

use futures_util::{stream, StreamExt, TryStreamExt};

use super::point::{self, ScaleWorker, Urls, QUEUE};
use super::{figures, Col, Curve, Figures, Growth, CONCURRENCY};
use crate::error::BoxError;
use crate::tasks::add;

/// Calls in flight while sending.
const WINDOW: usize = 1000;
/// A call index far from 0..N, for the warm-up call.
const WARM_UP: u64 = 1 << 40;

pub fn curve(ns: Vec<u64>) -> Curve {
    Curve {
        key: "handles",
        title: "Handles waiting in one producer",
        what: "N calls with results are sent (1,000 in flight) while no worker runs, and the \
               producer keeps their N handles; then one worker starts and the producer awaits \
               every result. *memory per handle* is the growth of the producer's resident set \
               (VmRSS) over the sends, per handle (after one warm-up call has set up the \
               result listener); *result path* is the producer's CPU from the worker's start \
               to the last result, per result.",
        n_header: "N handles",
        series: &["handles"],
        ns,
        cols: COLS,
    }
}

const COLS: &[Col] = &[
    Col {
        key: "send_s",
        header: "send s",
        digits: 1,
        growth: Growth::None,
    },
    Col {
        key: "results_s",
        header: "results s",
        digits: 1,
        growth: Growth::None,
    },
    Col {
        key: "rss_growth",
        header: "producer RSS growth MiB",
        digits: 1,
        growth: Growth::None,
    },
    Col {
        key: "per_handle",
        header: "bytes per waiting handle",
        digits: 0,
        growth: Growth::Cost,
    },
    Col {
        key: "send_cpu",
        header: "producer CPU s per 1k sends",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "result_cpu",
        header: "producer CPU s per 1k results",
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
        key: "results_us",
        header: "results µs per call",
        digits: 1,
        growth: Growth::Cost,
    },
    Col {
        key: "producer_rss",
        header: "producer peak RSS MiB",
        digits: 1,
        growth: Growth::None,
    },
];

pub async fn point(urls: &Urls, n: u64) -> Result<Figures, BoxError> {
    point::purge(&urls.amqp, &[QUEUE.to_owned()]).await?;
    let p = point::producer(urls).await?;
    let mut warm = p.delayed_call(add::call(WARM_UP, 1).queue(QUEUE)).await?;
    let rss = point::own_rss_kib();
    let cpu = point::own_cpu();
    let t = Instant::now();
    let sending = stream::iter(0..n)
        .map(|i| {
            let p = &p;
            async move {
                let h = p.delayed_call(add::call(i, 1).queue(QUEUE)).await?;
                Ok::<_, BoxError>((i, h))
            }
        })
        .buffer_unordered(WINDOW)
        .try_collect::<Vec<_>>();
    let handles = point::within(point::limit_for(n), "the sends", sending).await?;
    let send_s = t.elapsed().as_secs_f64();
    let send_cpu = point::own_cpu() - cpu;
    let rss_growth = point::own_rss_kib().saturating_sub(rss);

    let worker = ScaleWorker::start(1, CONCURRENCY).await?;
    let t = Instant::now();
    let (cpu, wcpu) = (point::own_cpu(), worker.cpu());
    let waiting = stream::iter(handles)
        .map(|(i, mut h)| async move {
            let got = h.result().await?;
            if got != i + 1 {
                return Err(BoxError::from(format!("call {i} answered {got}")));
            }
            Ok(())
        })
        .buffer_unordered(usize::try_from(n).unwrap_or(usize::MAX).max(1))
        .try_for_each(|()| async { Ok(()) });
    point::within(point::limit_for(n), "the results", waiting).await?;
    warm.result().await?;
    let results_s = t.elapsed().as_secs_f64();
    let result_cpu = point::own_cpu() - cpu;
    let worker_cpu = worker.cpu() - wcpu;
    worker.stop().await?;
    let peak = crate::procfs::usage("self").peak_rss_kib;
    point::purge(&urls.amqp, &[QUEUE.to_owned()]).await?;
    let k = n as f64 / 1000.0;
    Ok(figures(&[
        ("send_s", send_s),
        ("results_s", results_s),
        ("rss_growth", point::mib(rss_growth)),
        ("per_handle", rss_growth as f64 * 1024.0 / n as f64),
        ("send_cpu", send_cpu / k),
        ("result_cpu", result_cpu / k),
        ("worker_cpu", worker_cpu / k),
        ("results_us", results_s * 1e6 / n as f64),
        ("producer_rss", point::mib(peak)),
    ]))
}
