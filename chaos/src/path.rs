//! One path of the run (AMQP + Redis, or SQS + Redis): workers started, calls sent, the
//! faults injected one after the other as the calls progress, then every call counted.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::calls::{self, CallPlan};
use crate::faults::{self, Fault, Target};
use crate::report::{self, Counts};
use crate::services::{Clusters, Moto, Rabbit, Redis};
use crate::workers::{WorkerProcess, WorkerSpec};
use crate::BoxError;

/// A path's settings.
#[derive(Clone, Debug)]
pub struct PathPlan {
    /// `amqp`, `sqs`, `cluster`, …
    pub tag: &'static str,
    pub broker_url: String,
    /// The notifier's URL; `None`: the run's own Redis.
    pub results_url: Option<String>,
    pub calls: CallPlan,
    pub workers: usize,
    pub concurrency: usize,
    pub faults: Vec<Fault>,
    /// With nothing left but calls that made no progress for this long, the run ends and
    /// counts them as lost.
    pub settle: Duration,
}

/// The services a path may act on.
#[derive(Debug)]
pub struct Services<'a> {
    pub rabbit: Option<&'a Rabbit>,
    pub redis: &'a Redis,
    pub moto: Option<&'a mut Moto>,
    pub clusters: Option<&'a Clusters>,
    pub dir: &'a std::path::Path,
}

fn log(start: Instant, tag: &str, msg: impl std::fmt::Display) {
    eprintln!("[{:7.1}s] {tag}: {msg}", start.elapsed().as_secs_f64());
}

pub async fn run(plan: PathPlan, s: Services<'_>) -> Result<Counts, BoxError> {
    let start = Instant::now();
    let tag = plan.tag;
    let spec = WorkerSpec {
        broker: plan.broker_url.clone(),
        results: plan.results_url.clone().unwrap_or_else(|| s.redis.url()),
        queue: plan.calls.queue.clone(),
        concurrency: plan.concurrency,
    };
    let mut workers: Vec<WorkerProcess> = Vec::new();
    let mut started = Vec::new();
    let mut killed = Vec::new();
    let mut rng = plan.calls.seed;
    let mut moto_back = None;
    let Services {
        rabbit,
        redis,
        moto,
        clusters,
        dir,
    } = s;
    let broker = ivy::backends::broker_from_url(&plan.broker_url).await?;
    let notifier = ivy::backends::notifier_from_url(&spec.results).await?;
    let mut target = Target {
        rabbit,
        redis,
        moto,
        workers: &mut workers,
        started: &mut started,
        killed: &mut killed,
        spec: &spec,
        dir,
        tag,
        rng: &mut rng,
        moto_back: &mut moto_back,
        clusters,
        broker: &broker,
        notifier: &notifier,
    };
    for _ in 0..plan.workers {
        faults::add_worker(&mut target).await?;
    }
    log(
        start,
        tag,
        format_args!(
            "{} workers of concurrency {} on queue {}",
            plan.workers, plan.concurrency, spec.queue
        ),
    );
    let producer = ivy::Producer::new(broker.clone(), notifier.clone());
    let n = plan.calls.n;
    let ledger = calls::start(producer, plan.calls.clone());

    // Each fault has a share of the calls: half of it sent at once just before the fault
    // (calls queued, running and waiting for their results when it strikes), the other
    // half trickled in while it lasts (calls sent during the outage). The rest follows the
    // last fault.
    let mut injected = Vec::new();
    let mut in_flight_at_faults = Vec::new();
    // When each fault struck, and the first call of its share.
    let mut struck = Vec::new();
    let count = plan.faults.len() as u64;
    let share = n / (count + 1);
    for (i, fault) in plan.faults.iter().enumerate() {
        let base = i as u64 * share;
        let burst = base + share / 2;
        ledger.allowed.store(burst, Ordering::Relaxed);
        while ledger.sent.load(Ordering::Relaxed) < burst {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = ledger.sent.load(Ordering::Relaxed);
        let settled = ledger.settled.load(Ordering::Relaxed);
        in_flight_at_faults.push(sent - settled);
        log(
            start,
            tag,
            format_args!(
                "fault {}/{count} with {} calls in flight ({sent} sent): {fault}",
                i + 1,
                sent - settled
            ),
        );
        let t = Instant::now();
        struck.push(report::Struck {
            fault: *fault,
            at: t,
            calls: base..base + share,
        });
        let trickle = trickle(&ledger, burst, base + share, fault.estimate());
        let what = {
            tokio::pin!(trickle);
            let inject = faults::inject(*fault, &mut target);
            tokio::pin!(inject);
            loop {
                tokio::select! {
                    r = &mut inject => break r?,
                    () = &mut trickle => {}
                }
            }
        };
        ledger.allowed.store(base + share, Ordering::Relaxed);
        log(
            start,
            tag,
            format_args!(
                "fault {}/{count} over after {:.1}s {what}",
                i + 1,
                t.elapsed().as_secs_f64()
            ),
        );
        injected.push(*fault);
        // Calls flow again before the next fault: a pause and a few results.
        let before = ledger.settled.load(Ordering::Relaxed);
        let back = Instant::now();
        while back.elapsed() < Duration::from_secs(2)
            || ledger.settled.load(Ordering::Relaxed)
                < (before + 10).min(ledger.sent.load(Ordering::Relaxed))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ledger.allowed.store(n, Ordering::Relaxed);

    // Wait until every call is settled, or until nothing has moved for `settle`.
    let mut last = (ledger.changes.load(Ordering::Relaxed), Instant::now());
    let mut said = Instant::now();
    loop {
        let settled = ledger.settled.load(Ordering::Relaxed);
        if settled == n {
            break;
        }
        let changes = ledger.changes.load(Ordering::Relaxed);
        if changes != last.0 {
            last = (changes, Instant::now());
        } else if last.1.elapsed() >= plan.settle {
            log(
                start,
                tag,
                format_args!(
                    "{} calls unsettled and no progress for {:?}: ending the wait",
                    n - settled,
                    plan.settle
                ),
            );
            break;
        }
        if said.elapsed() >= Duration::from_secs(5) {
            log(start, tag, format_args!("{settled}/{n} calls settled"));
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ledger.abort_all();
    let elapsed = start.elapsed();
    for w in workers.drain(..) {
        w.stop(Duration::from_secs(60)).await?;
    }
    let files: Vec<_> = started.iter().map(|(_, f)| f.clone()).collect();
    let executions = crate::task::read_executions(&files)?;
    let records = ledger
        .records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let counts = report::count(report::Inputs {
        tag,
        records: &records,
        sent: ledger.sent.load(Ordering::Relaxed),
        executions: &executions,
        in_flight_at_faults: &in_flight_at_faults,
        killed: &killed,
        plan: &plan.calls,
        faults: &injected,
        moto_back,
        elapsed,
        workers_started: started.len(),
        struck: &struck,
    });
    log(
        start,
        tag,
        format_args!(
            "done: {} lost calls, {} lost results",
            counts.lost_calls.len(),
            counts.lost_results.len()
        ),
    );
    Ok(counts)
}

/// Raises the sender's allowance from `from` to `to` evenly over `over`, then never ends.
async fn trickle(ledger: &calls::Ledger, from: u64, to: u64, over: Duration) {
    let start = Instant::now();
    loop {
        let part = (start.elapsed().as_secs_f64() / over.as_secs_f64()).min(1.0);
        let allowed = from + ((to - from) as f64 * part) as u64;
        ledger.allowed.fetch_max(allowed, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
