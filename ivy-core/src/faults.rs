//! Fault injection for tests (feature `conformance`): [`FaultyNotifier`] and [`FaultyBroker`]
//! wrap any notifier or broker and make a chosen call of a named operation fail, either
//! before it happens ([`Fault::Fail`]) or after it happened with its answer lost
//! ([`Fault::LoseAnswer`], what a response timeout looks like to the caller).
//!
//! Operations are named by their method: the notifier's (`publish_final`, `claim`,
//! `count_member`, …) and the broker's `publish`, `consume`, and a delivery's `ack`, `retry`,
//! `dead_letter`, `requeue`. [`Faults::counts`] tells how often each was called, so a test can
//! run a scenario once without faults, then once per (operation, call, fault).
//!
//! Nothing here is used by the runtime; it exists so that every "once" can be proven under
//! every single-operation fault, deterministically.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::broker::{
    Broker, Capabilities, Claim, Consumer, Coordination, DeadLetter, Delivery, Notifier,
    OutgoingMessage, Presence, Results, Turn,
};
use crate::cancel::CancelOutcome;
use crate::envelope::TaskId;
use crate::error::{Error, Result};
use crate::sync::lock;

/// What happens to the faulted call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// It fails without doing anything.
    Fail,
    /// It is done, but the caller gets an error (a lost answer, a timeout). A publish says its
    /// outcome is unknown ([`Error::PublishOutcomeUnknown`]).
    LoseAnswer,
    /// It never answers (a server that hangs): the caller's own time limits must end it.
    Hang,
}

impl Fault {
    /// The kinds that answer.
    pub const ALL: [Fault; 2] = [Fault::Fail, Fault::LoseAnswer];
}

#[derive(Debug, Default)]
struct Plan {
    counts: BTreeMap<&'static str, u32>,
    /// (operation, the first and last of its calls to fault, from 1; the fault).
    planned: Vec<(&'static str, u32, u32, Fault)>,
    fired: u32,
}

/// The faults to inject and the calls seen, shared by the wrappers made with it.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    plan: Arc<Mutex<Plan>>,
}

impl Faults {
    /// No faults planned.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes call number `nth` (from 1) of `op` fail with `fault`.
    pub fn inject(&self, op: &'static str, nth: u32, fault: Fault) {
        lock(&self.plan).planned.push((op, nth, nth, fault));
    }

    /// Makes calls `first..=last` of `op` fail ([`Fault::Fail`]): an outage of that operation.
    pub fn fail_calls(&self, op: &'static str, first: u32, last: u32) {
        lock(&self.plan)
            .planned
            .push((op, first, last, Fault::Fail));
    }

    /// Makes every call of `op` from the `first` on hang ([`Fault::Hang`]).
    pub fn hang_from(&self, op: &'static str, first: u32) {
        lock(&self.plan)
            .planned
            .push((op, first, u32::MAX, Fault::Hang));
    }

    /// Makes the first `n` calls of `op` fail ([`Fault::Fail`]): an outage of that operation.
    pub fn fail_first(&self, op: &'static str, n: u32) {
        lock(&self.plan).planned.push((op, 1, n, Fault::Fail));
    }

    /// How often `op` was called so far.
    pub fn count(&self, op: &str) -> u32 {
        lock(&self.plan).counts.get(op).copied().unwrap_or(0)
    }

    /// How often each operation was called so far.
    pub fn counts(&self) -> BTreeMap<&'static str, u32> {
        lock(&self.plan).counts.clone()
    }

    /// How many planned faults have fired.
    pub fn fired(&self) -> u32 {
        lock(&self.plan).fired
    }

    /// Counts a call of `op`; the fault planned for it, if any.
    fn next(&self, op: &'static str) -> Option<Fault> {
        let mut plan = lock(&self.plan);
        let n = plan.counts.entry(op).or_default();
        *n += 1;
        let n = *n;
        let fault = plan
            .planned
            .iter()
            .find(|(o, first, last, _)| *o == op && (*first..=*last).contains(&n))
            .map(|(_, _, _, f)| *f);
        if fault.is_some() {
            plan.fired += 1;
        }
        fault
    }

    async fn run<T>(&self, op: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        match self.next(op) {
            None => call.await,
            Some(Fault::Fail) => Err(injected(op, "failed")),
            Some(Fault::LoseAnswer) => {
                let _ = call.await;
                Err(injected(op, "answer lost"))
            }
            Some(Fault::Hang) => std::future::pending().await,
        }
    }
}

fn injected(op: &str, what: &str) -> Error {
    Error::backend("faults", format!("injected fault: `{op}` {what}"))
}

/// A notifier whose operations fail as [`Faults`] plans.
#[derive(Clone, Debug)]
pub struct FaultyNotifier<N> {
    /// The notifier that does the work.
    pub inner: N,
    /// The plan, shared with whoever made this.
    pub faults: Faults,
}

impl<N> FaultyNotifier<N> {
    /// Wraps `inner`.
    pub fn new(inner: N, faults: Faults) -> Self {
        FaultyNotifier { inner, faults }
    }
}

impl<N: Notifier> Results for FaultyNotifier<N> {
    type Subscription = N::Subscription;

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        let call = self.inner.publish(channel, payload);
        self.faults.run("publish", call).await
    }

    async fn publish_final(
        &self,
        channel: &str,
        task_id: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        let call = self.inner.publish_final(channel, task_id, payload, ttl);
        self.faults.run("publish_final", call).await
    }

    async fn fetch(&self, task_id: &str) -> Result<Option<Vec<u8>>> {
        self.faults.run("fetch", self.inner.fetch(task_id)).await
    }

    async fn fetch_many(&self, task_ids: &[TaskId]) -> Result<Vec<Option<Vec<u8>>>> {
        let call = self.inner.fetch_many(task_ids);
        self.faults.run("fetch_many", call).await
    }

    async fn subscribe(&self, channel: &str) -> Result<Self::Subscription> {
        let call = self.inner.subscribe(channel);
        self.faults.run("subscribe", call).await
    }
}

impl<N: Notifier> Presence for FaultyNotifier<N> {
    async fn announce(&self, worker_id: &str, payload: Vec<u8>, ttl: Duration) -> Result<()> {
        let call = self.inner.announce(worker_id, payload, ttl);
        self.faults.run("announce", call).await
    }

    async fn withdraw(&self, worker_id: &str) -> Result<()> {
        let call = self.inner.withdraw(worker_id);
        self.faults.run("withdraw", call).await
    }

    async fn announcements(&self) -> Result<Vec<Vec<u8>>> {
        let call = self.inner.announcements();
        self.faults.run("announcements", call).await
    }
}

impl<N: Notifier> Coordination for FaultyNotifier<N> {
    async fn cancel(&self, task_id: &str, note: Vec<u8>, ttl: Duration) -> Result<CancelOutcome> {
        let call = self.inner.cancel(task_id, note, ttl);
        self.faults.run("cancel", call).await
    }

    async fn is_cancelled(&self, task_id: &str) -> Result<bool> {
        let call = self.inner.is_cancelled(task_id);
        self.faults.run("is_cancelled", call).await
    }

    async fn cancellations(&self) -> Result<Vec<(TaskId, u64)>> {
        let call = self.inner.cancellations();
        self.faults.run("cancellations", call).await
    }

    async fn claim_unique(
        &self,
        key: &str,
        task_id: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<TaskId>> {
        let call = self.inner.claim_unique(key, task_id, token, ttl);
        self.faults.run("claim_unique", call).await
    }

    async fn release_unique(&self, key: &str, task_id: &str, token: &str) -> Result<()> {
        let call = self.inner.release_unique(key, task_id, token);
        self.faults.run("release_unique", call).await
    }

    async fn reserve_turn(
        &self,
        task: &str,
        interval: Duration,
        horizon: Duration,
    ) -> Result<Turn> {
        let call = self.inner.reserve_turn(task, interval, horizon);
        self.faults.run("reserve_turn", call).await
    }

    async fn acquire_slot(
        &self,
        task: &str,
        holder: &str,
        max: u32,
        lease: Duration,
    ) -> Result<bool> {
        let call = self.inner.acquire_slot(task, holder, max, lease);
        self.faults.run("acquire_slot", call).await
    }

    async fn release_slot(&self, task: &str, holder: &str) -> Result<()> {
        let call = self.inner.release_slot(task, holder);
        self.faults.run("release_slot", call).await
    }

    async fn count_member(&self, set: &str, member: &str, ttl: Duration) -> Result<u64> {
        let call = self.inner.count_member(set, member, ttl);
        self.faults.run("count_member", call).await
    }

    async fn claim(&self, key: &str, owner: &str, lease: Duration) -> Result<Claim> {
        let call = self.inner.claim(key, owner, lease);
        self.faults.run("claim", call).await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        let call = self.inner.release(key, owner);
        self.faults.run("release", call).await
    }

    async fn mark_done(&self, key: &str, ttl: Duration) -> Result<()> {
        let call = self.inner.mark_done(key, ttl);
        self.faults.run("mark_done", call).await
    }
}

/// A broker whose publishes and deliveries' settlements fail as [`Faults`] plans. A delivery
/// whose settlement failed without happening goes back to its queue, as a real broker
/// redelivers what a dropped connection left unsettled.
#[derive(Clone, Debug)]
pub struct FaultyBroker<B> {
    /// The broker that does the work.
    pub inner: B,
    /// The plan, shared with whoever made this.
    pub faults: Faults,
    /// What it says it promises, when not the inner broker's.
    capabilities: Option<Capabilities>,
}

impl<B> FaultyBroker<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, faults: Faults) -> Self {
        FaultyBroker {
            inner,
            faults,
            capabilities: None,
        }
    }

    /// Says it promises `capabilities` (e.g. that held deliveries are safe, as AMQP's are),
    /// so a test on the in-memory broker takes the worker's paths for such a broker.
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }
}

impl<B: Broker> Broker for FaultyBroker<B> {
    type Delivery = FaultyDelivery<B::Delivery>;
    type Consumer = FaultyConsumer<B::Consumer>;

    fn capabilities(&self) -> Capabilities {
        self.capabilities
            .unwrap_or_else(|| self.inner.capabilities())
    }

    async fn publish(&self, msg: OutgoingMessage) -> Result<()> {
        let (queue, id) = (msg.queue.clone(), msg.id.clone());
        match self.faults.next("publish") {
            None => self.inner.publish(msg).await,
            Some(Fault::Fail) => Err(injected("publish", "failed")),
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::LoseAnswer) => {
                self.inner.publish(msg).await?;
                Err(Error::PublishOutcomeUnknown {
                    backend: "faults",
                    id: Some(id),
                    queue,
                    source: "injected fault: the confirm was lost".into(),
                })
            }
        }
    }

    async fn consume(&self, queues: &[String], prefetch: usize) -> Result<Self::Consumer> {
        let inner = self.inner.consume(queues, prefetch);
        let inner = self.faults.run("consume", inner).await?;
        Ok(FaultyConsumer {
            inner,
            faults: self.faults.clone(),
        })
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        self.inner.take_dead_letters(queue, max).await
    }
}

/// The consumer of a [`FaultyBroker`].
#[derive(Debug)]
pub struct FaultyConsumer<C> {
    inner: C,
    faults: Faults,
}

impl<C: Consumer> Consumer for FaultyConsumer<C> {
    type Delivery = FaultyDelivery<C::Delivery>;

    async fn next(&mut self) -> Option<Result<Self::Delivery>> {
        let next = self.inner.next().await?;
        Some(next.map(|inner| FaultyDelivery {
            inner,
            faults: self.faults.clone(),
        }))
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

/// A delivery of a [`FaultyBroker`].
#[derive(Debug)]
pub struct FaultyDelivery<D> {
    inner: D,
    faults: Faults,
}

impl<D: Delivery> FaultyDelivery<D> {
    /// Settles with `settle` unless a fault is planned: [`Fault::Fail`] drops the delivery
    /// unsettled (so it goes back to its queue), [`Fault::LoseAnswer`] settles and errs.
    async fn settle<F: Future<Output = Result<()>>>(
        self,
        op: &'static str,
        settle: impl FnOnce(D) -> F,
    ) -> Result<()> {
        match self.faults.next(op) {
            None => settle(self.inner).await,
            Some(Fault::Fail) => {
                drop(self.inner);
                Err(injected(op, "failed"))
            }
            Some(Fault::LoseAnswer) => {
                settle(self.inner).await?;
                Err(injected(op, "answer lost"))
            }
            Some(Fault::Hang) => std::future::pending().await,
        }
    }
}

impl<D: Delivery> Delivery for FaultyDelivery<D> {
    fn body(&self) -> &[u8] {
        self.inner.body()
    }

    fn queue(&self) -> &str {
        self.inner.queue()
    }

    fn redelivered(&self) -> bool {
        self.inner.redelivered()
    }

    fn fits<'a>(&'a self, body: &'a [u8]) -> impl Future<Output = bool> + Send + 'a {
        self.inner.fits(body)
    }

    async fn ack(self) -> Result<()> {
        self.settle("ack", Delivery::ack).await
    }

    async fn retry(self, body: Vec<u8>, delay: Duration) -> Result<()> {
        self.settle("retry", |d| d.retry(body, delay)).await
    }

    async fn dead_letter(self, reason: String) -> Result<()> {
        self.settle("dead_letter", |d| d.dead_letter(reason)).await
    }

    async fn requeue(self) -> Result<()> {
        self.settle("requeue", Delivery::requeue).await
    }
}
