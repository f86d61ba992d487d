//! Periodic calls: the [`Scheduler`] publishes typed calls on a [`Schedule`], from any number
//! of replicas, each tick's call running once.
//!
//! There is no leader: every replica wakes at every tick and claims it in the notifier (a
//! fenced claim, [`Coordination::claim`](crate::Coordination::claim), on `tick:<schedule>:<tick ms>` with the replica's own
//! token and a lease); the one that wins publishes the call through the ordinary producer
//! path (queues, encryption, retries) and marks the tick done, the others wait until it is
//! done or the claim comes free: a winner that cannot publish gives the claim back, a winner
//! that died lets its lease run out, and another replica publishes the tick. The tick's call
//! has an id made of the schedule and the tick, and runs once (envelope `once`): a tick
//! published twice (a confirm lost, a lease run out mid-publish) runs once. This module owns
//! the timing and the claims; it never runs tasks.

mod when;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::broker::{Broker, Claim, Notifier};
use crate::envelope::{now_ms, TaskId};
use crate::error::{Error, Result};
use crate::producer::Producer;
use crate::task::{Call, Task};

pub use when::{Missed, Schedule};

/// How long a claim outlives the tick after the one it claims: a replica starting with
/// [`Missed::RunOnce`] can then tell whether the last tick went out.
const CLAIM_MARGIN: Duration = Duration::from_secs(60);
/// The longest a replica keeps trying to claim or publish one tick while the notifier or the
/// broker fails; after that the tick is given up (and logged).
const TICK_PATIENCE: Duration = Duration::from_secs(30);

/// The lease of a tick's claim: how long replicas wait for a winner that died.
const TICK_LEASE: Duration = Duration::from_secs(10);

type PublishFn<B, N> = Arc<
    dyn for<'a> Fn(
            &'a Producer<B, N>,
            TaskId,
        ) -> Pin<Box<dyn Future<Output = Result<TaskId>> + Send + 'a>>
        + Send
        + Sync,
>;

struct Entry<B: Broker, N: Notifier> {
    name: String,
    task: &'static str,
    schedule: Schedule,
    publish: PublishFn<B, N>,
}

/// Publishes calls on schedules, safely from any number of replicas.
///
/// ```
/// use std::time::Duration;
/// use ivy_core::memory::{MemoryBroker, MemoryNotifier};
/// use ivy_core::schedule::{Schedule, Scheduler};
/// # use ivy_core::{Task, TaskOptions, TaskFailure};
/// # struct Report;
/// # impl Task for Report {
/// #     const NAME: &'static str = "doc.report";
/// #     const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
/// #     type Output = ();
/// #     async fn run(_: serde_json::Map<String, serde_json::Value>) -> Result<serde_json::Value, TaskFailure> { Ok(serde_json::Value::Null) }
/// # }
/// # fn report_call() -> ivy_core::Call<Report> { ivy_core::Call::__new(Ok(Default::default())) }
/// # fn main() -> ivy_core::Result<()> {
/// let scheduler = Scheduler::new(MemoryBroker::new(), MemoryNotifier::new())
///     .every(Duration::from_secs(30), report_call())?
///     .cron("0 0 9 * * MON-FRI", report_call())?
///     .add("report-paris", Schedule::cron("0 0 9 * * *")?.in_zone("Europe/Paris")?, report_call())?;
/// // tokio::spawn(scheduler.run_until_signal());
/// # let _ = scheduler; Ok(()) }
/// ```
pub struct Scheduler<B: Broker, N: Notifier> {
    producer: Producer<B, N>,
    notifier: N,
    entries: Vec<Entry<B, N>>,
}

impl<B: Broker, N: Notifier> std::fmt::Debug for Scheduler<B, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("Scheduler")
            .field("schedules", &names)
            .finish_non_exhaustive()
    }
}

impl<B: Broker, N: Notifier> Scheduler<B, N> {
    /// A scheduler publishing to `broker` and claiming ticks in `notifier`. Replicas share
    /// ticks when they share the notifier (the same Redis).
    pub fn new(broker: B, notifier: N) -> Self {
        Self::with_producer(Producer::new(broker, notifier.clone()), notifier)
    }

    /// A scheduler publishing through `producer` (e.g. one with a keyring), claiming ticks in
    /// `notifier`.
    pub fn with_producer(producer: Producer<B, N>, notifier: N) -> Self {
        Scheduler {
            producer,
            notifier,
            entries: Vec::new(),
        }
    }

    /// Publishes `call` every `interval` (see [`Schedule::every`]), under the name
    /// `<task> every <ms>ms`.
    pub fn every<T: Task>(self, interval: Duration, call: Call<T>) -> Result<Self> {
        let schedule = Schedule::every(interval)?;
        let name = format!("{} {}", T::NAME, schedule.describe());
        self.add(name, schedule, call)
    }

    /// Publishes `call` when the cron `expression` matches, in UTC (see [`Schedule::cron`]),
    /// under the name `<task> cron <expression>`. A bad expression is an error naming it.
    pub fn cron<T: Task>(self, expression: &str, call: Call<T>) -> Result<Self> {
        let schedule = Schedule::cron(expression)?;
        let name = format!("{} {}", T::NAME, schedule.describe());
        self.add(name, schedule, call)
    }

    /// Publishes `call` on `schedule` under `name`, which replicas must agree on (it keys the
    /// tick claims) and which no other schedule of this scheduler has.
    pub fn add<T: Task>(
        mut self,
        name: impl Into<String>,
        schedule: Schedule,
        call: Call<T>,
    ) -> Result<Self> {
        let name = name.into();
        if self.entries.iter().any(|e| e.name == name) {
            return Err(Error::Schedule {
                schedule: name,
                reason: "two schedules have this name; give one another with `add`".into(),
            });
        }
        // What a schedule cannot repeat: each tick is a call of its own, with its own id.
        let cannot = if call.id.is_some() {
            Some("its call has an id (`Call::id`), and every tick is a new call")
        } else if call.flow.is_some() {
            Some("its call has hooks (`on_success`/`on_failure`), which a schedule does not repeat")
        } else if call.eta.is_some() {
            Some("its call has a countdown or eta; the schedule says when it runs")
        } else {
            None
        };
        if let Some(reason) = cannot {
            return Err(Error::Schedule {
                schedule: name,
                reason: reason.into(),
            });
        }
        let args = call
            .args
            .map_err(|(name, source)| Error::Argument { name, source })?;
        let (queue, priority, max_retries) = (call.queue, call.priority, call.max_retries);
        let unique_for = call.unique_for;
        // An expiry is kept as the same span after each tick.
        let ttl = call
            .expires
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default());
        let publish: PublishFn<B, N> = Arc::new(move |producer, id| {
            let mut call = Call::<T>::__new(Ok(args.clone()));
            call.id = Some(id);
            call.tick = true;
            call.once = true;
            call.queue.clone_from(&queue);
            call.priority = priority;
            call.max_retries = max_retries;
            call.unique_for = unique_for;
            if let Some(ttl) = ttl {
                call = call.expires_in(ttl);
            }
            Box::pin(producer.send(call))
        });
        self.entries.push(Entry {
            name,
            task: T::NAME,
            schedule,
            publish,
        });
        Ok(self)
    }

    /// The names of the schedules, in the order they were added.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// Runs until SIGINT or SIGTERM.
    pub async fn run_until_signal(self) -> Result<()> {
        self.run(crate::worker::shutdown_signal()).await
    }

    /// Runs every schedule until `shutdown` completes. Dropping the future stops at once: a
    /// tick claimed but not yet published is then lost (the others go on elsewhere).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        if self.entries.is_empty() {
            return Err(Error::Config(
                "a scheduler needs at least one schedule".into(),
            ));
        }
        info!(schedules = ?self.names(), "scheduler started");
        let mut loops = JoinSet::new();
        for entry in self.entries {
            let (producer, notifier) = (self.producer.clone(), self.notifier.clone());
            loops.spawn(tick_loop(entry, producer, notifier));
        }
        shutdown.await;
        loops.abort_all();
        while loops.join_next().await.is_some() {}
        info!("scheduler stopped");
        Ok(())
    }
}

/// One schedule's loop: sleep until the next tick, claim it, publish it if the claim is ours.
async fn tick_loop<B: Broker, N: Notifier>(
    entry: Entry<B, N>,
    producer: Producer<B, N>,
    notifier: N,
) {
    // This replica's token for its claims (one per schedule loop).
    let owner = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
    let now = now_ms();
    if entry.schedule.missed == Missed::RunOnce {
        if let Some(last) = entry.schedule.last_at_or_before(now) {
            tick(&entry, &producer, &notifier, &owner, last).await;
        }
    }
    let mut after = now;
    while let Some(at) = entry.schedule.next_after(after) {
        let wait = Duration::from_millis(at.saturating_sub(now_ms()));
        tokio::time::sleep(wait).await;
        // A timer may wake a little early, by the system clock.
        while now_ms() < at {
            tokio::time::sleep(Duration::from_millis(at - now_ms())).await;
        }
        tick(&entry, &producer, &notifier, &owner, at).await;
        // Ticks that passed meanwhile (a replica stalled for longer than an interval) are
        // left to the replicas that were on time.
        after = at.max(now_ms().saturating_sub(1));
    }
    warn!(schedule = %entry.name, "the schedule has no further ticks");
}

/// The id of the call of schedule `name`'s tick at `at`: the same in every replica, so a tick
/// published twice is one call. Readable (the name, its spaces made dashes), and unique per
/// schedule (a hash of the name).
fn tick_id(name: &str, at: u64) -> TaskId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let readable: String = name
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '-'
            } else {
                c
            }
        })
        .scan(0, |len, c| {
            *len += c.len_utf8();
            (*len <= 100).then_some(c)
        })
        .collect();
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{readable}-{hash}@{at}")
}

async fn tick<B: Broker, N: Notifier>(
    entry: &Entry<B, N>,
    producer: &Producer<B, N>,
    notifier: &N,
    owner: &str,
    at: u64,
) {
    let following = entry.schedule.next_after(at).unwrap_or(at);
    let done_for = Duration::from_millis(following.saturating_sub(at)) + CLAIM_MARGIN;
    let key = format!("tick:{}:{at}", entry.name);
    let give_up = tokio::time::Instant::now() + TICK_PATIENCE;
    let mut pause = Duration::from_millis(100);
    let mut retry = |what: &str, e: &Error| {
        if tokio::time::Instant::now() + pause > give_up {
            error!(schedule = %entry.name, tick = at, error = %e, "gave up on {what} this tick");
            return None;
        }
        warn!(schedule = %entry.name, tick = at, error = %e, "{what} failed; trying again");
        let p = pause;
        pause = (pause * 2).min(Duration::from_secs(5));
        Some(p)
    };
    // Another replica's claim is waited out: it publishes and marks the tick done, or gives
    // the claim back after a failed publish, or dies and its lease runs out. Longer than a
    // winner tries.
    let wait_until = tokio::time::Instant::now() + 2 * TICK_PATIENCE + TICK_LEASE;
    let mut poll = Duration::from_millis(50);
    let id = tick_id(&entry.name, at);
    loop {
        match notifier.claim(&key, owner, TICK_LEASE).await {
            Ok(Claim::Won) => {}
            Ok(Claim::Held) if tokio::time::Instant::now() < wait_until => {
                debug!(schedule = %entry.name, tick = at, "tick claimed by another replica; waiting until it is done");
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(Duration::from_secs(1));
                continue;
            }
            Ok(Claim::Held) => {
                warn!(schedule = %entry.name, tick = at, "another replica held the tick for long without publishing it; leaving it");
                return;
            }
            Ok(_) => {
                debug!(schedule = %entry.name, tick = at, "tick published by another replica");
                return;
            }
            // Asking again is safe: the claim is this replica's own.
            Err(e) => {
                match retry("claiming", &e) {
                    Some(p) => tokio::time::sleep(p).await,
                    None => return,
                }
                continue;
            }
        }
        // Sent again after an unknown outcome too: it is the same call, which runs once.
        match (entry.publish)(producer, id.clone()).await {
            Ok(id) => {
                info!(schedule = %entry.name, task = entry.task, task_id = %id, tick = at, "published a scheduled call");
                if let Err(e) = notifier.mark_done(&key, done_for).await {
                    // Another replica may publish the tick again: the copy does not run.
                    warn!(schedule = %entry.name, tick = at, error = %e, "could not mark the tick done");
                }
                return;
            }
            Err(e) => {
                // Given back at once, so a replica that can publish does.
                if let Err(e) = notifier.release(&key, owner).await {
                    debug!(schedule = %entry.name, tick = at, error = %e, "could not give the tick's claim back; it lapses with its lease");
                }
                match retry("publishing", &e) {
                    Some(p) => tokio::time::sleep(p).await,
                    None => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Coordination;
    use crate::broker::{Consumer, Delivery};
    use crate::envelope::Envelope;
    use crate::failure::TaskFailure;
    use crate::memory::{MemoryBroker, MemoryNotifier};
    use serde_json::{Map, Value};

    struct Report;
    impl Task for Report {
        const NAME: &'static str = "schedule.tests.report";
        const OPTIONS: crate::TaskOptions = crate::TaskOptions::DEFAULT;
        type Output = ();
        async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
            Ok(Value::Null)
        }
    }

    fn call() -> Call<Report> {
        Call::__new(Ok(Map::new()))
    }

    /// A call a schedule cannot repeat is refused when the schedule is built, not published
    /// without what was asked for (its id, hooks or countdown were dropped before).
    #[test]
    fn a_call_a_schedule_cannot_repeat_is_refused() {
        let every = Duration::from_secs(1);
        let scheduler = || Scheduler::new(MemoryBroker::new(), MemoryNotifier::new());
        let hooked = call().on_failure(call());
        for (what, call) in [
            ("an id", call().id("nightly")),
            ("hooks", hooked),
            ("a countdown", call().countdown(Duration::from_secs(5))),
        ] {
            let err = scheduler().every(every, call).unwrap_err();
            assert!(matches!(err, Error::Schedule { .. }), "{what}: {err}");
        }
        assert!(scheduler()
            .every(every, call().unique_for(Duration::from_secs(5)))
            .is_ok());
    }

    /// The tick at `at` of a fresh schedule, claimed first by "replica-a" (which won it and
    /// then could not publish, or died); "replica-b" runs its tick: what it published.
    async fn tick_held_by_a(a_gives_up: bool) -> (Vec<Envelope>, Duration) {
        let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
        let mut scheduler = Scheduler::new(broker.clone(), notifier.clone())
            .every(Duration::from_secs(60), call())
            .unwrap();
        let entry = scheduler.entries.pop().unwrap();
        let producer = scheduler.producer.clone();
        let at = 1_000_000;
        let key = format!("tick:{}:{at}", entry.name);
        assert_eq!(
            notifier.claim(&key, "replica-a", TICK_LEASE).await.unwrap(),
            Claim::Won
        );
        let started = tokio::time::Instant::now();
        let b = {
            let notifier = notifier.clone();
            tokio::spawn(async move {
                tick(&entry, &producer, &notifier, "replica-b", at).await;
                tick(&entry, &producer, &notifier, "replica-b", at).await;
            })
        };
        if a_gives_up {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(broker.depth("default").ready, 0, "held by replica a");
            notifier.release(&key, "replica-a").await.unwrap();
        }
        b.await.unwrap();
        let waited = started.elapsed();
        let mut consumer = broker.consume(&["default".into()], 10).await.unwrap();
        let mut published = Vec::new();
        while let Ok(Some(d)) =
            tokio::time::timeout(Duration::from_millis(10), consumer.next()).await
        {
            let d = d.unwrap();
            published.push(Envelope::from_slice(d.body()).unwrap());
            d.ack().await.unwrap();
        }
        (published, waited)
    }

    /// A replica that won a tick but cannot publish gives the claim back, and another replica
    /// that was waiting publishes the tick (it gave up at once, and the tick was lost); ticked
    /// again, the tick is done and not published twice. The tick's call has the tick's id and
    /// runs once, so a tick sent twice after an unknown outcome is one call.
    #[tokio::test(start_paused = true)]
    async fn a_tick_given_back_by_a_replica_that_cannot_publish_is_published_by_another() {
        let (published, _) = tick_held_by_a(true).await;
        assert_eq!(published.len(), 1, "{published:?}");
        assert!(published[0].once, "{:?}", published[0]);
        assert!(published[0].id.ends_with("@1000000"), "{}", published[0].id);
    }

    /// A replica that won a tick and died: another publishes it once the claim's lease ran out.
    #[tokio::test(start_paused = true)]
    async fn a_tick_held_by_a_replica_that_died_is_published_after_its_lease() {
        let (published, waited) = tick_held_by_a(false).await;
        assert_eq!(published.len(), 1, "{published:?}");
        assert!(waited >= TICK_LEASE, "{waited:?}");
    }

    #[test]
    fn tick_ids_are_valid_and_distinct_per_schedule() {
        let a = tick_id("report every 1000ms", 5);
        assert_eq!(a.split('@').nth(1), Some("5"));
        assert!(!a.contains(char::is_whitespace), "{a}");
        assert_ne!(a, tick_id("report-every-1000ms", 5));
        assert!(tick_id(&"x".repeat(500), 5).len() <= 200);
    }
}
