//! The ceiling: the same work written directly on `lapin` and `redis`, with no Ivy in between.
//!
//! Kept honest and fast, and like-for-like with what Ivy does on the wire:
//! - the same durable classic queue with `x-max-priority` 9, persistent messages
//!   (`delivery_mode` 2), `mandatory`, publisher confirms awaited per message while up to the
//!   in-flight window of publishes run concurrently on one confirm channel;
//! - the worker consumes with manual ack and the same prefetch, runs each delivery on its own
//!   tokio task, and acks only after the reply is handed to Redis;
//! - the reply is **store-then-publish** in one pipelined round trip (`SET key PX ttl` then
//!   `PUBLISH` to the producer's own channel), as Ivy's Redis notifier does, on a per-producer
//!   channel the producer subscribed to once.
//!
//! What it leaves out is exactly Ivy's extra work: the "running" status message, the envelope's
//! metadata (task name, attempt, timestamps, retries, expiry), the task registry, retries and
//! dead-lettering, reconnection, and the typed handle.
//!
//! The [`Flavour::Minimal`] pipeline is the real ceiling instead: a plain durable classic queue
//! (no `x-max-priority`), persistent messages but no publisher confirms and no `mandatory`,
//! prefetch [`MINIMAL_PREFETCH`] whatever the concurrency, the reply only PUBLISHed (no `SET`),
//! and the same per-task work and ack after it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt, TryStreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::error::BoxError;
use crate::tasks;

/// The like-for-like raw baseline's queue.
pub const RAW_QUEUE: &str = "raw-bench";
/// The minimal pipeline's queue (plain, so it cannot share the priority queue's name).
pub const MINIMAL_QUEUE: &str = "raw-bench-minimal";
/// The minimal pipeline's prefetch, whatever the concurrency.
pub const MINIMAL_PREFETCH: u16 = 100;

/// Which raw pipeline runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Ivy's own wire choices: priority queue, confirms, prefetch = concurrency,
    /// store-then-publish.
    LikeForLike,
    /// The minimal persistent pipeline: plain queue, no confirms, prefetch 100, reply by
    /// PUBLISH only.
    Minimal,
}

impl Flavour {
    pub fn queue(self) -> &'static str {
        match self {
            Flavour::LikeForLike => RAW_QUEUE,
            Flavour::Minimal => MINIMAL_QUEUE,
        }
    }

    /// The work queue's arguments.
    fn queue_args(self) -> FieldTable {
        match self {
            Flavour::LikeForLike => work_queue_args(),
            Flavour::Minimal => FieldTable::default(),
        }
    }

    /// The worker's prefetch for `concurrency`.
    pub fn prefetch(self, concurrency: usize) -> u16 {
        match self {
            Flavour::LikeForLike => u16::try_from(concurrency).unwrap_or(u16::MAX),
            Flavour::Minimal => MINIMAL_PREFETCH,
        }
    }
}
/// How long stored replies live (Ivy's worker is given the same result TTL).
pub const RESULT_TTL: Duration = Duration::from_secs(600);

/// A call on the wire: what the raw worker needs and nothing more.
#[derive(Serialize)]
struct CallOut<'a> {
    id: &'a str,
    args: [u64; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    pad: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
}

#[derive(Deserialize)]
struct CallIn {
    id: String,
    args: [u64; 2],
    #[serde(default)]
    pad: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    id: String,
    result: u64,
}

/// The work queue's arguments: those Ivy's AMQP broker declares (classic, priorities 0..=9).
pub fn work_queue_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
    args
}

async fn declare(channel: &Channel, flavour: Flavour) -> lapin::Result<()> {
    channel
        .queue_declare(
            flavour.queue().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            flavour.queue_args(),
        )
        .await?;
    Ok(())
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<u64>>>>;

/// The raw producer: one connection, one confirm channel, and (for calls with results) one
/// Redis subscription to its own reply channel.
pub struct RawProducer {
    _connection: Connection,
    channel: Channel,
    flavour: Flavour,
    prefix: String,
    reply_to: Option<String>,
    pending: Pending,
    listener: Option<tokio::task::JoinHandle<()>>,
    /// Spaces appended to every body (valid JSON whitespace), to send Ivy-sized messages.
    pad_by: usize,
}

impl Drop for RawProducer {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            l.abort();
        }
    }
}

impl RawProducer {
    /// Connects; subscribes to a reply channel only when `replies` is set (W2 does not).
    pub async fn connect(
        amqp: &str,
        redis_url: &str,
        replies: bool,
        flavour: Flavour,
    ) -> Result<Self, BoxError> {
        let connection = Connection::connect(amqp, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        if flavour == Flavour::LikeForLike {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        declare(&channel, flavour).await?;
        let prefix = format!("{}-{:x}", std::process::id(), unique());
        let pending: Pending = Arc::default();
        let (reply_to, listener) = if replies {
            let reply_to = format!("raw.reply.{prefix}");
            let client = redis::Client::open(redis_url)?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&reply_to).await?;
            let mut messages = pubsub.into_on_message();
            let pending = pending.clone();
            let listener = tokio::spawn(async move {
                while let Some(msg) = messages.next().await {
                    let Ok(reply) = serde_json::from_slice::<Reply>(msg.get_payload_bytes()) else {
                        continue;
                    };
                    let waiter = pending.lock().expect("not poisoned").remove(&reply.id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(reply.result);
                    }
                }
            });
            (Some(reply_to), Some(listener))
        } else {
            (None, None)
        };
        Ok(RawProducer {
            _connection: connection,
            channel,
            flavour,
            prefix,
            reply_to,
            pending,
            listener,
            pad_by: 0,
        })
    }

    /// Appends `extra` spaces to every body from now on.
    pub fn pad_by(&mut self, extra: usize) {
        self.pad_by = extra;
    }

    /// The length of the body of call `x` (with a reply channel if `reply`), before padding.
    pub fn body_len(&self, x: u64, reply: bool) -> Result<usize, BoxError> {
        Ok(self.body(&self.id(x), x, None, reply)?.len())
    }

    fn body(&self, id: &str, x: u64, pad: Option<&str>, reply: bool) -> Result<Vec<u8>, BoxError> {
        let mut body = serde_json::to_vec(&CallOut {
            id,
            args: [x, 1],
            pad,
            reply_to: if reply {
                self.reply_to.as_deref()
            } else {
                None
            },
        })?;
        body.resize(body.len() + self.pad_by, b' ');
        Ok(body)
    }

    /// Publishes one persistent call and (like-for-like) waits for RabbitMQ's confirm; the
    /// minimal pipeline only hands it to the socket.
    async fn publish(
        &self,
        id: &str,
        x: u64,
        pad: Option<&str>,
        reply: bool,
    ) -> Result<(), BoxError> {
        let body = self.body(id, x, pad, reply)?;
        let confirmed = self.flavour == Flavour::LikeForLike;
        let sent = self
            .channel
            .basic_publish(
                "".into(),
                self.flavour.queue().into(),
                BasicPublishOptions {
                    mandatory: confirmed,
                    ..BasicPublishOptions::default()
                },
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        if !confirmed {
            return Ok(());
        }
        match sent.await? {
            Confirmation::Ack(None) => Ok(()),
            other => Err(format!("RabbitMQ did not take the message: {other:?}").into()),
        }
    }

    fn id(&self, i: u64) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// One call with a result: publish, then wait for the reply.
    pub async fn call(&self, x: u64, pad: Option<&str>) -> Result<(), BoxError> {
        let id = self.id(x);
        let (tx, rx) = oneshot::channel();
        // Registered before publishing, so the reply cannot arrive for an unknown id.
        self.pending
            .lock()
            .expect("not poisoned")
            .insert(id.clone(), tx);
        if let Err(e) = self.publish(&id, x, pad, true).await {
            self.pending.lock().expect("not poisoned").remove(&id);
            return Err(e);
        }
        let got = rx.await.map_err(|_| "the reply listener ended")?;
        if got != x + 1 {
            return Err(format!("raw call {x}: expected {}, got {got}", x + 1).into());
        }
        Ok(())
    }

    /// One call without a result.
    pub async fn send(&self, x: u64) -> Result<(), BoxError> {
        self.publish(&self.id(x), x, None, false).await
    }

    /// W1/W4: `n` calls with results, `window` at a time.
    pub async fn calls(
        &self,
        first: u64,
        n: u64,
        window: usize,
        pad: Option<&str>,
    ) -> Result<(), BoxError> {
        stream::iter(first..first + n)
            .map(|i| self.call(i, pad))
            .buffer_unordered(window)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    /// W2: `n` fire-and-forget calls, `window` at a time.
    pub async fn sends(&self, first: u64, n: u64, window: usize) -> Result<(), BoxError> {
        stream::iter(first..first + n)
            .map(|i| self.send(i))
            .buffer_unordered(window)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    /// W3: `n` calls one after the other; the latency of each.
    pub async fn sequential(&self, first: u64, n: u64) -> Result<Vec<Duration>, BoxError> {
        let mut latencies = Vec::with_capacity(n as usize);
        for i in first..first + n {
            let t = Instant::now();
            self.call(i, None).await?;
            latencies.push(t.elapsed());
        }
        Ok(latencies)
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The raw worker: consumes with manual ack and `prefetch`, runs each delivery on a task of
/// its own, replies when asked (like-for-like: store-then-publish; minimal: publish only),
/// acks; stops taking messages when `stop` completes and returns once every running delivery
/// is settled.
pub async fn worker(
    amqp: &str,
    redis_url: &str,
    prefetch: u16,
    flavour: Flavour,
    stop: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let connection = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    declare(&channel, flavour).await?;
    let mut consumer = channel
        .basic_consume(
            flavour.queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    let redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let ttl_ms = RESULT_TTL.as_millis() as u64;
    let mut jobs: JoinSet<Result<(), BoxError>> = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            Some(done) = jobs.join_next(), if !jobs.is_empty() => done??,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let mut redis = redis.clone();
                    jobs.spawn(async move {
                        let call: CallIn = serde_json::from_slice(&delivery.data)?;
                        tasks::executed();
                        let result = call.args[0] + call.args[1]
                            + u64::from(call.pad.as_deref().is_some_and(str::is_empty));
                        if let Some(reply_to) = call.reply_to {
                            let payload = serde_json::to_vec(&Reply { id: call.id.clone(), result })?;
                            if flavour == Flavour::Minimal {
                                redis::cmd("PUBLISH")
                                    .arg(reply_to)
                                    .arg(&payload)
                                    .query_async::<()>(&mut redis)
                                    .await?;
                            } else {
                            redis::pipe()
                                .cmd("SET")
                                .arg(format!("raw:result:{}", call.id))
                                .arg(&payload)
                                .arg("PX")
                                .arg(ttl_ms)
                                .ignore()
                                .cmd("PUBLISH")
                                .arg(reply_to)
                                .arg(&payload)
                                .ignore()
                                .query_async::<()>(&mut redis)
                                .await?;
                            }
                        }
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                        Ok(())
                    });
                }
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
        }
    }
    while let Some(done) = jobs.join_next().await {
        done??;
    }
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}
