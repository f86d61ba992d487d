//! Ivy's broker and notifier backends, one cargo feature each, and a choice of backend by URL
//! at run time.
//!
//! | URL | Backend | Feature |
//! |-----|---------|---------|
//! | `memory://name` | [`MemoryBroker`], [`MemoryNotifier`] (in-process) | always |
//! | `amqp://user:pass@host:5672/vhost`, `amqps://…` | [`amqp::AmqpBroker`] (RabbitMQ) | `amqp` |
//! | `redis://[:pass@]host:6379[/db]`, `rediss://…` | [`redis::RedisNotifier`] | `redis` |
//! | `redis+sentinel://[:pass@]host:26379[,host:26379…]/master[/db]` (Sentinel) | [`redis::RedisNotifier`] | `redis` |
//! | `redis+cluster://[:pass@]host:port[,host:port…]/` (Redis Cluster) | [`redis::RedisNotifier`] | `redis` |
//! | `sqs://?region=…`, `sqs://host:port?region=…` | [`sqs::SqsBroker`] (Amazon SQS) | `sqs` |
//!
//! Every Redis form takes `?prefix=name`, which keeps deployments sharing one Redis apart
//! ([`redis::RedisNotifier::connect`]).
//!
//! [`broker_from_url`] and [`notifier_from_url`] return the type-erased [`AnyBroker`] and
//! [`AnyNotifier`], enums that dispatch to the backend (no boxing). Code that knows its
//! backend at compile time can use the backend type directly. An unknown scheme, or one whose
//! feature is off, is an [`Error::Url`], never a panic; errors and logs never show passwords.
//!
//! ```
//! use ivy_core::{Broker, Consumer, Delivery, OutgoingMessage};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ivy_core::Result<()> {
//! let broker = ivy_backends::broker_from_url("memory://docs").await?;
//! broker
//!     .publish(OutgoingMessage::new("1", "default", b"hello".to_vec()))
//!     .await?;
//! let mut consumer = broker.consume(&["default".to_owned()], 1).await?;
//! let delivery = consumer.next().await.expect("open")?;
//! assert_eq!(delivery.body(), b"hello");
//! delivery.ack().await?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use ivy_core::cancel::CancelOutcome;
use ivy_core::memory::{MemoryBroker, MemoryNotifier};
use ivy_core::url::ParsedUrl;
use ivy_core::{
    Broker, Capabilities, Consumer, Coordination, DeadLetter, Delivery, Error, Incoming,
    OutgoingMessage, Presence, Result, Results, Subscription, TaskId,
};

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(any(feature = "amqp", feature = "sqs", feature = "redis"))]
mod failure;
#[cfg(any(feature = "amqp", feature = "sqs"))]
pub mod inspect;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "amqp", feature = "sqs"))]
mod settle;
#[cfg(feature = "sqs")]
pub mod sqs;
#[cfg(any(feature = "amqp", feature = "redis"))]
mod tls;

type MemoryConsumer = <MemoryBroker as Broker>::Consumer;
type MemoryDelivery = <MemoryBroker as Broker>::Delivery;
type MemorySubscription = <MemoryNotifier as ivy_core::Results>::Subscription;

/// A broker chosen at run time; see [`broker_from_url`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyBroker {
    /// The in-process broker.
    Memory(MemoryBroker),
    /// RabbitMQ.
    #[cfg(feature = "amqp")]
    Amqp(amqp::AmqpBroker),
    /// Amazon SQS.
    #[cfg(feature = "sqs")]
    Sqs(sqs::SqsBroker),
}

/// A consumer of an [`AnyBroker`].
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyConsumer {
    /// From the in-process broker.
    Memory(MemoryConsumer),
    /// From RabbitMQ.
    #[cfg(feature = "amqp")]
    Amqp(amqp::AmqpConsumer),
    /// From Amazon SQS.
    #[cfg(feature = "sqs")]
    Sqs(sqs::SqsConsumer),
}

/// A delivery from an [`AnyBroker`].
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyDelivery {
    /// From the in-process broker.
    Memory(MemoryDelivery),
    /// From RabbitMQ.
    #[cfg(feature = "amqp")]
    Amqp(amqp::AmqpDelivery),
    /// From Amazon SQS.
    #[cfg(feature = "sqs")]
    Sqs(sqs::SqsDelivery),
}

/// Awaits the future `$fut` of whichever variant `$value` is, with `$b` bound to the inner
/// value. SQS's futures (the AWS SDK's) are several KB: boxed, so that they do not size the
/// future of every other backend's call, which callers carry and copy.
macro_rules! dispatch_await {
    ($enum:ident, $value:expr, $b:ident => $fut:expr) => {
        match $value {
            $enum::Memory($b) => $fut.await,
            #[cfg(feature = "amqp")]
            $enum::Amqp($b) => $fut.await,
            #[cfg(feature = "sqs")]
            $enum::Sqs($b) => Box::pin($fut).await,
        }
    };
}

/// Expands `$body` once per variant, with `$b` bound to the inner value.
macro_rules! dispatch {
    ($enum:ident, $value:expr, $b:ident => $body:expr) => {
        match $value {
            $enum::Memory($b) => $body,
            #[cfg(feature = "amqp")]
            $enum::Amqp($b) => $body,
            #[cfg(feature = "sqs")]
            $enum::Sqs($b) => $body,
        }
    };
}

impl Broker for AnyBroker {
    type Delivery = AnyDelivery;
    type Consumer = AnyConsumer;

    fn capabilities(&self) -> Capabilities {
        dispatch!(AnyBroker, self, b => b.capabilities())
    }

    fn connected_node(&self) -> Option<String> {
        dispatch!(AnyBroker, self, b => b.connected_node())
    }

    async fn publish(&self, msg: OutgoingMessage) -> Result<()> {
        dispatch_await!(AnyBroker, self, b => b.publish(msg))
    }

    async fn publish_many(&self, msgs: Vec<OutgoingMessage>) -> Vec<Result<()>> {
        dispatch_await!(AnyBroker, self, b => b.publish_many(msgs))
    }

    async fn consume(&self, queues: &[String], prefetch: usize) -> Result<AnyConsumer> {
        match self {
            AnyBroker::Memory(b) => b.consume(queues, prefetch).await.map(AnyConsumer::Memory),
            #[cfg(feature = "amqp")]
            AnyBroker::Amqp(b) => b.consume(queues, prefetch).await.map(AnyConsumer::Amqp),
            #[cfg(feature = "sqs")]
            AnyBroker::Sqs(b) => Box::pin(b.consume(queues, prefetch))
                .await
                .map(AnyConsumer::Sqs),
        }
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        dispatch_await!(AnyBroker, self, b => b.take_dead_letters(queue, max))
    }
}

impl Consumer for AnyConsumer {
    type Delivery = AnyDelivery;

    async fn next(&mut self) -> Option<Result<AnyDelivery>> {
        match self {
            AnyConsumer::Memory(c) => Some(c.next().await?.map(AnyDelivery::Memory)),
            #[cfg(feature = "amqp")]
            AnyConsumer::Amqp(c) => Some(c.next().await?.map(AnyDelivery::Amqp)),
            #[cfg(feature = "sqs")]
            AnyConsumer::Sqs(c) => Some(Box::pin(c.next()).await?.map(AnyDelivery::Sqs)),
        }
    }

    async fn close(&mut self) -> Result<()> {
        dispatch_await!(AnyConsumer, self, c => c.close())
    }
}

impl Delivery for AnyDelivery {
    fn body(&self) -> &[u8] {
        dispatch!(AnyDelivery, self, d => d.body())
    }

    fn queue(&self) -> &str {
        dispatch!(AnyDelivery, self, d => d.queue())
    }

    fn redelivered(&self) -> bool {
        dispatch!(AnyDelivery, self, d => d.redelivered())
    }

    async fn ack(self) -> Result<()> {
        dispatch_await!(AnyDelivery, self, d => d.ack())
    }

    fn fits<'a>(&'a self, body: &'a [u8]) -> impl std::future::Future<Output = bool> + Send + 'a {
        let fits: std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> =
            dispatch!(AnyDelivery, self, d => Box::pin(d.fits(body)));
        fits
    }

    async fn retry(self, body: Vec<u8>, delay: Duration) -> Result<()> {
        dispatch_await!(AnyDelivery, self, d => d.retry(body, delay))
    }

    async fn dead_letter(self, reason: String) -> Result<()> {
        dispatch_await!(AnyDelivery, self, d => d.dead_letter(reason))
    }

    async fn requeue(self) -> Result<()> {
        dispatch_await!(AnyDelivery, self, d => d.requeue())
    }
}

/// A notifier chosen at run time; see [`notifier_from_url`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyNotifier {
    /// The in-process notifier.
    Memory(MemoryNotifier),
    /// Redis.
    #[cfg(feature = "redis")]
    Redis(redis::RedisNotifier),
}

/// A subscription of an [`AnyNotifier`].
#[derive(Debug)]
#[non_exhaustive]
pub enum AnySubscription {
    /// In-process.
    Memory(MemorySubscription),
    /// Redis.
    #[cfg(feature = "redis")]
    Redis(redis::RedisSubscription),
}

macro_rules! dispatch_notifier {
    ($enum:ident, $value:expr, $n:ident => $body:expr) => {
        match $value {
            $enum::Memory($n) => $body,
            #[cfg(feature = "redis")]
            $enum::Redis($n) => $body,
        }
    };
}

impl Results for AnyNotifier {
    type Subscription = AnySubscription;

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        dispatch_notifier!(AnyNotifier, self, n => n.publish(channel, payload).await)
    }

    // Short names keep the signature on one line: it is the trait's, repeated by every
    // implementation, and only the dispatch below is this type's own.
    async fn publish_final(&self, ch: &str, id: &str, p: Vec<u8>, ttl: Duration) -> Result<()> {
        dispatch_notifier!(AnyNotifier, self, n => n.publish_final(ch, id, p, ttl).await)
    }

    async fn fetch(&self, task_id: &str) -> Result<Option<Vec<u8>>> {
        dispatch_notifier!(AnyNotifier, self, n => n.fetch(task_id).await)
    }

    async fn fetch_many(&self, task_ids: &[TaskId]) -> Result<Vec<Option<Vec<u8>>>> {
        dispatch_notifier!(AnyNotifier, self, n => n.fetch_many(task_ids).await)
    }

    async fn subscribe(&self, channel: &str) -> Result<AnySubscription> {
        match self {
            AnyNotifier::Memory(n) => n.subscribe(channel).await.map(AnySubscription::Memory),
            #[cfg(feature = "redis")]
            AnyNotifier::Redis(n) => n.subscribe(channel).await.map(AnySubscription::Redis),
        }
    }
}

impl Presence for AnyNotifier {
    async fn announce(&self, worker_id: &str, payload: Vec<u8>, ttl: Duration) -> Result<()> {
        dispatch_notifier!(AnyNotifier, self, n => n.announce(worker_id, payload, ttl).await)
    }

    async fn withdraw(&self, worker_id: &str) -> Result<()> {
        dispatch_notifier!(AnyNotifier, self, n => n.withdraw(worker_id).await)
    }

    async fn announcements(&self) -> Result<Vec<Vec<u8>>> {
        dispatch_notifier!(AnyNotifier, self, n => n.announcements().await)
    }
}

impl Coordination for AnyNotifier {
    // Workflows (issue 14)

    async fn count_member(&self, set: &str, member: &str, ttl: Duration) -> Result<u64> {
        dispatch_notifier!(AnyNotifier, self, n => n.count_member(set, member, ttl).await)
    }

    async fn claim(&self, key: &str, owner: &str, lease: Duration) -> Result<ivy_core::Claim> {
        dispatch_notifier!(AnyNotifier, self, n => n.claim(key, owner, lease).await)
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        dispatch_notifier!(AnyNotifier, self, n => n.release(key, owner).await)
    }

    async fn mark_done(&self, key: &str, ttl: Duration) -> Result<()> {
        dispatch_notifier!(AnyNotifier, self, n => n.mark_done(key, ttl).await)
    }

    // Cancellation and deduplication (issue 14)

    async fn cancel(&self, task_id: &str, note: Vec<u8>, ttl: Duration) -> Result<CancelOutcome> {
        dispatch_notifier!(AnyNotifier, self, n => n.cancel(task_id, note, ttl).await)
    }

    async fn is_cancelled(&self, task_id: &str) -> Result<bool> {
        dispatch_notifier!(AnyNotifier, self, n => n.is_cancelled(task_id).await)
    }

    async fn cancellations(&self) -> Result<Vec<(TaskId, u64)>> {
        dispatch_notifier!(AnyNotifier, self, n => n.cancellations().await)
    }

    async fn claim_unique(
        &self,
        key: &str,
        id: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<TaskId>> {
        dispatch_notifier!(AnyNotifier, self, n => n.claim_unique(key, id, token, ttl).await)
    }

    async fn release_unique(&self, key: &str, task_id: &str, token: &str) -> Result<()> {
        dispatch_notifier!(AnyNotifier, self, n => n.release_unique(key, task_id, token).await)
    }

    // Schedules and limits (issue 15)

    async fn reserve_turn(
        &self,
        task: &str,
        interval: Duration,
        horizon: Duration,
    ) -> Result<ivy_core::Turn> {
        dispatch_notifier!(AnyNotifier, self, n => n.reserve_turn(task, interval, horizon).await)
    }

    async fn acquire_slot(
        &self,
        task: &str,
        holder: &str,
        max: u32,
        lease: Duration,
    ) -> Result<bool> {
        dispatch_notifier!(AnyNotifier, self, n => n.acquire_slot(task, holder, max, lease).await)
    }

    async fn release_slot(&self, task: &str, holder: &str) -> Result<()> {
        dispatch_notifier!(AnyNotifier, self, n => n.release_slot(task, holder).await)
    }
}

impl Subscription for AnySubscription {
    async fn next(&mut self) -> Option<Result<Incoming>> {
        dispatch_notifier!(AnySubscription, self, s => s.next().await)
    }
}

/// The broker for `url`: `memory://name`, `amqp://…`/`amqps://…` (feature `amqp`).
///
/// RabbitMQ is connected to before this returns, so wrong credentials or an unreachable
/// broker show up here (after the connect timeout, 30 s by default).
pub async fn broker_from_url(url: &str) -> Result<AnyBroker> {
    match scheme(url)?.as_str() {
        "memory" => MemoryBroker::from_url(url).map(AnyBroker::Memory),
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => amqp::AmqpBroker::connect(url).await.map(AnyBroker::Amqp),
        #[cfg(not(feature = "amqp"))]
        "amqp" | "amqps" => Err(feature_off(url, "amqp")),
        #[cfg(feature = "sqs")]
        "sqs" => sqs::SqsBroker::from_url(url).await.map(AnyBroker::Sqs),
        #[cfg(not(feature = "sqs"))]
        "sqs" => Err(feature_off(url, "sqs")),
        "redis" | "rediss" => Err(url_error(
            url,
            "Redis is a notifier here, not a broker: use it as the notifier URL",
        )),
        other => Err(url_error(
            url,
            &format!("unknown broker scheme `{other}` (known: memory, amqp, amqps, sqs)"),
        )),
    }
}

/// The notifier for `url`: `memory://name`, `redis://…`/`rediss://…`, a Sentinel deployment
/// `redis+sentinel://…` or a Redis Cluster `redis+cluster://…` (feature `redis`; the forms are
/// in [`redis::RedisNotifier::connect`]).
///
/// Redis is connected to before this returns.
pub async fn notifier_from_url(url: &str) -> Result<AnyNotifier> {
    match scheme(url)?.as_str() {
        "memory" => MemoryNotifier::from_url(url).map(AnyNotifier::Memory),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+sentinel" | "redis+cluster" | "rediss+sentinel"
        | "rediss+cluster" => redis::RedisNotifier::connect(url)
            .await
            .map(AnyNotifier::Redis),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" | "redis+sentinel" | "redis+cluster" | "rediss+sentinel"
        | "rediss+cluster" => Err(feature_off(url, "redis")),
        other => Err(url_error(
            url,
            &format!("unknown notifier scheme `{other}` (known: memory, redis, rediss, redis+sentinel, redis+cluster)"),
        )),
    }
}

/// The scheme of `url`, read off its first node when it names several
/// (`amqp://u:p@h1,h2/…`, or URLs separated by `;`); each backend checks the rest.
fn scheme(url: &str) -> Result<String> {
    let first = url.split(';').next().unwrap_or(url);
    let first = ivy_core::url::split_hosts(first)
        .ok()
        .and_then(|nodes| nodes.into_iter().next())
        .unwrap_or_else(|| first.to_owned());
    match ParsedUrl::parse(&first) {
        Ok(parsed) => Ok(parsed.scheme().to_owned()),
        // A URL listing several nodes (`host1:26379,host2:26379`) is not one URL to the
        // parser; its backend reads it.
        Err(_) if multi_node(url).is_some() => Ok(multi_node(url).unwrap_or_default()),
        Err(e) => Err(url_error(url, &e.to_string())),
    }
}

/// The scheme of `url` when it is one of the Redis forms that list several nodes.
fn multi_node(url: &str) -> Option<String> {
    let (scheme, _) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    matches!(
        scheme.as_str(),
        "redis+sentinel" | "redis+cluster" | "rediss+sentinel" | "rediss+cluster"
    )
    .then_some(scheme)
}

fn url_error(url: &str, reason: &str) -> Error {
    ivy_core::url::error(url, reason)
}

#[cfg(any(not(feature = "amqp"), not(feature = "redis"), not(feature = "sqs")))]
fn feature_off(url: &str, feature: &str) -> Error {
    url_error(
        url,
        &format!("this build has no {feature} backend: enable the `{feature}` feature of ivy (or ivy-backends)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_of_a_url_naming_several_nodes_is_its_first_nodes() {
        assert_eq!(scheme("amqp://u:p@a:5701,b:5702/%2f").unwrap(), "amqp");
        assert_eq!(scheme("amqps://u:p@a/;amqps://u:p@b/").unwrap(), "amqps");
        let e = scheme("amqp://u:secret@a:x,b/").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[tokio::test]
    async fn unknown_schemes_are_url_errors() {
        for url in ["nope://u:secret@x", "sqs://u:secret@x", "no-scheme"] {
            match broker_from_url(url).await {
                Err(Error::Url { url, .. }) => assert!(!url.contains("secret")),
                other => panic!("{url}: {other:?}"),
            }
        }
        match notifier_from_url("amqp://u:secret@x").await {
            Err(Error::Url { url, .. }) => assert!(!url.contains("secret")),
            other => panic!("{other:?}"),
        }
    }

    #[cfg(not(feature = "amqp"))]
    #[tokio::test]
    async fn amqp_without_its_feature_names_the_feature() {
        match broker_from_url("amqps://u:secret@host/").await {
            Err(Error::Url { url, reason }) => {
                assert!(reason.contains("`amqp` feature"), "{reason}");
                assert!(!url.contains("secret"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn redis_without_its_feature_names_the_feature() {
        for url in [
            "rediss://:secret@host/",
            "redis+sentinel://:secret@h1,h2/mymaster",
            "redis+cluster://:secret@h1:7001,h2:7002/",
        ] {
            match notifier_from_url(url).await {
                Err(Error::Url { url, reason }) => {
                    assert!(reason.contains("`redis` feature"), "{reason}");
                    assert!(!url.contains("secret"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn memory_urls_work() {
        assert!(matches!(
            broker_from_url("memory://t").await,
            Ok(AnyBroker::Memory(_))
        ));
        assert!(matches!(
            notifier_from_url("memory://t").await,
            Ok(AnyNotifier::Memory(_))
        ));
    }
}
