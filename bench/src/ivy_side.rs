//! Ivy's side of each workload, through its public API only: `Producer::delayed_call` with
//! `handle.result()`, `Producer::send`, and a `Worker` with the bench's settings.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt, TryStreamExt};
use ivy::backends::{AnyBroker, AnyNotifier};
use ivy::{Keyring, Producer, Worker};

use crate::error::BoxError;
use crate::raw::RESULT_TTL;
use crate::scenario::Workload;
use crate::tasks::{add, add_padded};

/// The producer every Ivy run uses: brokers and notifiers chosen by URL, as users do.
pub type IvyProducer = Producer<AnyBroker, AnyNotifier>;

/// The key of the encrypted W4 variant. Not a secret: it protects nothing but bench messages.
pub const BENCH_KEYS: &str =
    "bench:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The keyring for `encrypted` runs, or none.
pub fn keyring(encrypted: bool) -> Result<Keyring, BoxError> {
    Ok(if encrypted {
        Keyring::from_spec(BENCH_KEYS)?
    } else {
        Keyring::new()
    })
}

/// A worker with the bench's settings: one queue, `concurrency`, the prefetch multiplier if
/// one is given (else Ivy's default), the raw baseline's result TTL.
pub fn worker(
    broker: AnyBroker,
    notifier: AnyNotifier,
    queue: &str,
    concurrency: usize,
    prefetch_multiplier: Option<usize>,
    encrypted: bool,
) -> Result<Worker<AnyBroker, AnyNotifier>, BoxError> {
    let mut worker = Worker::new(broker, notifier)?
        .keyring(keyring(encrypted)?)
        .queues([queue])
        .concurrency(concurrency)
        .result_ttl(RESULT_TTL)
        .grace_period(Duration::from_secs(10))
        // To measure what task events cost (README: IVY_BENCH_EVENTS=1).
        .events(std::env::var_os("IVY_BENCH_EVENTS").is_some_and(|v| v == "1"));
    if let Some(m) = prefetch_multiplier {
        worker = worker.prefetch_multiplier(m);
    }
    Ok(worker)
}

/// One call with a result; checks the value.
pub async fn call(p: &IvyProducer, queue: &str, x: u64, pad: Option<&str>) -> Result<(), BoxError> {
    let got = match pad {
        None => {
            p.delayed_call(add::call(x, 1).queue(queue))
                .await?
                .result()
                .await?
        }
        Some(pad) => {
            p.delayed_call(add_padded::call(x, 1, pad.to_owned()).queue(queue))
                .await?
                .result()
                .await?
        }
    };
    if got != x + 1 {
        return Err(format!("Ivy call {x}: expected {}, got {got}", x + 1).into());
    }
    Ok(())
}

/// W1/W4: `n` calls with results, `window` at a time.
pub async fn calls(
    p: &IvyProducer,
    queue: &str,
    n: u64,
    window: usize,
    pad: Option<&str>,
) -> Result<(), BoxError> {
    stream::iter(0..n)
        .map(|i| call(p, queue, i, pad))
        .buffer_unordered(window)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// W2: `n` fire-and-forget calls, `window` at a time.
pub async fn sends(p: &IvyProducer, queue: &str, n: u64, window: usize) -> Result<(), BoxError> {
    stream::iter(0..n)
        .map(|i| async move {
            p.send(add::call(i, 1).queue(queue)).await?;
            Ok::<_, BoxError>(())
        })
        .buffer_unordered(window)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// W5: `n` calls with results, one every `1 / rate` s, each from a caller of its own (they
/// overlap when a call takes longer than the gap); the latency of each.
pub async fn paced(
    p: &IvyProducer,
    queue: &str,
    n: u64,
    rate: f64,
) -> Result<Vec<Duration>, BoxError> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut callers = tokio::task::JoinSet::new();
    for i in 0..n {
        tick.tick().await;
        let (p, queue) = (p.clone(), queue.to_owned());
        callers.spawn(async move {
            let t = Instant::now();
            call(&p, &queue, i, None).await?;
            Ok::<_, BoxError>(t.elapsed())
        });
    }
    let mut latencies = Vec::with_capacity(n as usize);
    while let Some(done) = callers.join_next().await {
        latencies.push(done??);
    }
    Ok(latencies)
}

/// W3: `n` calls one after the other; the latency of each.
pub async fn sequential(p: &IvyProducer, queue: &str, n: u64) -> Result<Vec<Duration>, BoxError> {
    let mut latencies = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        call(p, queue, i, None).await?;
        latencies.push(t.elapsed());
    }
    Ok(latencies)
}

/// The SQS requests `broker` has sent, when it is an SQS broker.
pub fn sqs_requests(broker: &AnyBroker) -> Option<u64> {
    match broker {
        AnyBroker::Sqs(b) => Some(b.requests()),
        _ => None,
    }
}

/// Runs an Ivy worker until `stop` completes (the `worker` subcommand's Ivy side); returns
/// the SQS requests its broker sent, on SQS.
pub async fn run_worker(
    broker_url: &str,
    notifier_url: &str,
    queue: &str,
    concurrency: usize,
    prefetch_multiplier: Option<usize>,
    encrypted: bool,
    stop: impl Future<Output = ()> + Send,
) -> Result<Option<u64>, BoxError> {
    let broker = ivy::backends::broker_from_url(broker_url).await?;
    let notifier = ivy::backends::notifier_from_url(notifier_url).await?;
    let counted = broker.clone();
    let report = worker(
        broker,
        notifier,
        queue,
        concurrency,
        prefetch_multiplier,
        encrypted,
    )?
    .run(stop)
    .await?;
    if report.failed + report.dead_lettered + report.refused + report.returned > 0 {
        return Err(format!("the Ivy worker did not run every call cleanly: {report:?}").into());
    }
    Ok(sqs_requests(&counted))
}

/// The length of the body Ivy's producer writes for call `x` of `workload` (W2: a send; else
/// a call with a result), read back from the in-memory broker.
pub async fn body_len(workload: Workload, x: u64) -> Result<usize, BoxError> {
    use ivy::memory::{MemoryBroker, MemoryNotifier};
    use ivy::{Broker, Consumer, Delivery};
    let broker = MemoryBroker::new();
    let p = Producer::new(broker.clone(), MemoryNotifier::new());
    let call = add::call(x, 1).queue(crate::tasks::IVY_QUEUE);
    let _handle = match workload {
        Workload::W2 => {
            p.send(call).await?;
            None
        }
        _ => Some(p.delayed_call(call).await?),
    };
    let mut c = broker
        .consume(&[crate::tasks::IVY_QUEUE.to_owned()], 1)
        .await?;
    let d = c.next().await.ok_or("no message")??;
    Ok(d.body().len())
}
