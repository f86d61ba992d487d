//! The workflow curves. Groups and chords of N members: how long from the last member's
//! finish to the producer holding every result (group) or to the callback's start (chord),
//! and the Redis memory per member. Chains of k steps against k plain sequential calls: what
//! a step's run-once claim, its mark and the publishing of the next step cost.

use std::time::{Duration, Instant};

use super::point::{self, RedisInfo, ScaleWorker, Urls, QUEUE};
use super::{figures, gather, stamp, step, Col, Curve, Figures, Growth, CONCURRENCY};
use crate::error::BoxError;
use crate::tasks::add;

pub fn group_curve(ns: Vec<u64>) -> Curve {
    Curve {
        key: "flows",
        title: "Groups and chords",
        what: "A group, then a chord, of N members of a task that returns its finish time (epoch \
               µs), on one worker. *last member → end* is, for a group, the time from the last \
               member's finish to the producer holding every result; for a chord, from the last \
               member's finish to the callback's start (the callback returns both). *wall* runs \
               from the first send to that end. *Redis bytes per member* is the growth of \
               Redis's `used_memory` over the flow (results and chord bookkeeping, still stored \
               when it ends), per member. CPU covers the whole flow.",
        n_header: "N members",
        series: &["group", "chord"],
        ns,
        cols: GROUP_COLS,
    }
}

const GROUP_COLS: &[Col] = &[
    Col {
        key: "wall_s",
        header: "wall s",
        digits: 2,
        growth: Growth::None,
    },
    Col {
        key: "tail_ms",
        header: "last member → end ms",
        digits: 1,
        growth: Growth::None,
    },
    Col {
        key: "wall_us",
        header: "wall µs per member",
        digits: 1,
        growth: Growth::Cost,
    },
    Col {
        key: "redis_bytes",
        header: "Redis bytes per member",
        digits: 0,
        growth: Growth::Cost,
    },
    Col {
        key: "producer_cpu",
        header: "producer CPU s per 1k members",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "worker_cpu",
        header: "worker CPU s per 1k members",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "worker_rss",
        header: "worker peak RSS MiB",
        digits: 1,
        growth: Growth::Cost,
    },
];

/// A fresh queue, a worker and a producer, warmed up with one call.
async fn setup(urls: &Urls) -> Result<(ScaleWorker, crate::ivy_side::IvyProducer), BoxError> {
    point::purge(&urls.amqp, &[QUEUE.to_owned()]).await?;
    let worker = ScaleWorker::start(1, CONCURRENCY).await?;
    let p = point::producer(urls).await?;
    let got = point::within(Duration::from_secs(60), "the warm-up call", async {
        Ok(p.delayed_call(add::call(1, 1).queue(QUEUE))
            .await?
            .result()
            .await?)
    })
    .await?;
    if got != 2 {
        return Err(format!("the warm-up call answered {got}").into());
    }
    Ok((worker, p))
}

pub async fn group_point(urls: &Urls, series: &str, n: u64) -> Result<Figures, BoxError> {
    let (worker, p) = setup(urls).await?;
    if series == "chord" {
        // A worker opens its publishing connection with the first follow-up it publishes
        // (about 15 ms and 8 MiB): a chord of one first, so the figures are the steady state.
        point::within(Duration::from_secs(60), "the warm-up chord", async {
            let one = vec![stamp::call(0).queue(QUEUE)];
            Ok(p.chord(one, gather::with().queue(QUEUE))
                .await?
                .result()
                .await?)
        })
        .await?;
    }
    let mut redis = RedisInfo::connect(&urls.redis).await?;
    let limit = point::limit_for(n);
    let memory = redis.used_memory().await?;
    let (cpu, wcpu) = (point::own_cpu(), worker.cpu());
    let t = Instant::now();
    let members = || (0..n).map(|i| stamp::call(i).queue(QUEUE));
    let (last_member, end) = match series {
        "group" => {
            let mut group = p.group(members()).await?;
            let results = group.results_timeout(limit).await?;
            let end = point::now_us();
            let mut last = 0;
            for (i, r) in results.into_iter().enumerate() {
                last = last.max(r.map_err(|f| format!("member {i} failed: {}", f.message))?);
            }
            (last, end)
        }
        "chord" => {
            let callback = gather::with().queue(QUEUE);
            let mut chord = p.chord(members().collect(), callback).await?;
            chord.result_timeout(limit).await?
        }
        other => return Err(format!("unknown flow {other}").into()),
    };
    let wall = t.elapsed().as_secs_f64();
    let (producer_cpu, worker_cpu) = (point::own_cpu() - cpu, worker.cpu() - wcpu);
    let memory = redis.used_memory().await? - memory;
    let usage = worker.stop().await?;
    let k = n as f64 / 1000.0;
    Ok(figures(&[
        ("wall_s", wall),
        ("tail_ms", (end as f64 - last_member as f64) / 1000.0),
        ("wall_us", wall * 1e6 / n as f64),
        ("redis_bytes", memory / n as f64),
        ("producer_cpu", producer_cpu / k),
        ("worker_cpu", worker_cpu / k),
        ("worker_rss", point::mib(usage.peak_rss_kib)),
    ]))
}

/// Steps per point, in chains of k (and as many plain calls): enough CPU ticks for a steady
/// figure at every k, few enough for seconds.
const STEPS: u64 = 1000;
const STEPS_SMOKE: u64 = 10;

pub fn chain_curve(ns: Vec<u64>) -> Curve {
    Curve {
        key: "chain",
        title: "Chains against plain calls",
        what: "1,000 / k chains of k steps, one after the other (each awaited), against as many \
               plain calls as steps of the same task, one after the other, on one worker. A chain of one step \
               is a plain call. Per step: the wall time and the worker's CPU; *extra* is the \
               chain's figure minus the plain call's, what a step's run-once claim, its mark and \
               the publishing of the next step cost.",
        n_header: "k steps",
        series: &["chain"],
        ns,
        cols: CHAIN_COLS,
    }
}

const CHAIN_COLS: &[Col] = &[
    Col {
        key: "chain_ms",
        header: "chain ms per step",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "plain_ms",
        header: "plain ms per call",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "extra_ms",
        header: "extra ms per step",
        digits: 3,
        growth: Growth::None,
    },
    Col {
        key: "chain_cpu",
        header: "worker CPU ms per step",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "plain_cpu",
        header: "worker CPU ms per plain call",
        digits: 3,
        growth: Growth::Cost,
    },
    Col {
        key: "chain_pcpu",
        header: "producer CPU ms per step",
        digits: 3,
        growth: Growth::Cost,
    },
];

pub async fn chain_point(urls: &Urls, k: u64, smoke: bool) -> Result<Figures, BoxError> {
    let (worker, p) = setup(urls).await?;
    let reps = (if smoke { STEPS_SMOKE } else { STEPS } / k).max(1);
    let steps = reps * k;
    let limit = point::limit_for(steps * 10);

    let (cpu, wcpu, t) = (point::own_cpu(), worker.cpu(), Instant::now());
    point::within(limit, "the chains", async {
        for r in 0..reps {
            let x = r * 100;
            let mut handle = if k == 1 {
                p.delayed_call(step::call(x).queue(QUEUE)).await?
            } else {
                let mut chain = step::call(x).queue(QUEUE).then(step::with().queue(QUEUE));
                for _ in 2..k {
                    chain = chain.then(step::with().queue(QUEUE));
                }
                p.chain(chain).await?
            };
            let got = handle.result().await?;
            if got != x + k {
                return Err(format!("chain {r} answered {got}, not {}", x + k).into());
            }
        }
        Ok(())
    })
    .await?;
    let chain_s = t.elapsed().as_secs_f64();
    let (chain_pcpu, chain_cpu) = (point::own_cpu() - cpu, worker.cpu() - wcpu);

    let (wcpu, t) = (worker.cpu(), Instant::now());
    point::within(limit, "the plain calls", async {
        for i in 0..steps {
            let got = p
                .delayed_call(step::call(i).queue(QUEUE))
                .await?
                .result()
                .await?;
            if got != i + 1 {
                return Err(format!("call {i} answered {got}").into());
            }
        }
        Ok(())
    })
    .await?;
    let plain_s = t.elapsed().as_secs_f64();
    let plain_cpu = worker.cpu() - wcpu;
    worker.stop().await?;
    let per = |s: f64| s * 1000.0 / steps as f64;
    Ok(figures(&[
        ("chain_ms", per(chain_s)),
        ("plain_ms", per(plain_s)),
        ("extra_ms", per(chain_s) - per(plain_s)),
        ("chain_cpu", per(chain_cpu)),
        ("plain_cpu", per(plain_cpu)),
        ("chain_pcpu", per(chain_pcpu)),
    ]))
}
