//! One message from RabbitMQ, [`AmqpDelivery`], and how it is settled.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ivy_core::{Delivery, Result};
use lapin::message::Delivery as LapinDelivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, BasicProperties};

use super::long_string;
use super::topology::{dead_queue, Decl};
use super::{AmqpBroker, FAILURE, REASON_HEADER, REASON_LIMIT};
use crate::settle::{self, Remove};

pub(super) fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// lapin reports a settlement on a dead channel as `Ok(false)`: the broker has requeued the
/// message already, and the caller must know its settlement did not happen.
pub(super) fn check_settled(result: lapin::Result<bool>, what: &str) -> Result<()> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(FAILURE.error(format!(
            "could not {what}: its channel is closed (the broker redelivers the message)"
        ))),
        Err(e) => Err(FAILURE.caused(format!("could not {what}"), e)),
    }
}

/// One message from RabbitMQ. Dropping it unsettled requeues it.
pub struct AmqpDelivery {
    acker: Acker,
    body: Vec<u8>,
    queue: Arc<str>,
    redelivered: bool,
    message_id: Option<ShortString>,
    priority: Option<u8>,
    broker: AmqpBroker,
    settled: bool,
    /// Milliseconds to wait before giving the message back when it is dropped unsettled
    /// (0: at once); set when its replacement could not be published.
    hold_ms: AtomicU64,
}

impl AmqpDelivery {
    pub(super) fn new(d: LapinDelivery, queue: Arc<str>, broker: AmqpBroker) -> Self {
        AmqpDelivery {
            acker: d.acker,
            body: d.data,
            queue,
            redelivered: d.redelivered,
            message_id: d.properties.message_id().clone(),
            priority: *d.properties.priority(),
            broker,
            settled: false,
            hold_ms: AtomicU64::new(0),
        }
    }

    /// The AMQP message id: the task id Ivy published it with.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_ref().map(ShortString::as_str)
    }

    /// The AMQP priority it was published with.
    pub fn priority(&self) -> Option<u8> {
        self.priority
    }

    /// Properties a replacement of this message keeps: id and priority.
    fn carried_properties(&self) -> BasicProperties {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = &self.message_id {
            properties = properties.with_message_id(id.clone());
        }
        if let Some(p) = self.priority {
            properties = properties.with_priority(p);
        }
        properties
    }

    /// Publishes this message's replacement with `publish`. When that fails the message goes
    /// back to its queue (the error drops it unsettled), but only after a pause that grows
    /// while its queue's replacements keep failing: a refusal that repeats must not turn
    /// into running the task again as fast as RabbitMQ redelivers it.
    async fn replace(self, publish: impl AsyncFnOnce(&Self) -> Result<()>) -> Result<()> {
        // Boxed: with the failure bookkeeping the replacement's future outgrows what every
        // worker job may carry (tests/future_sizes.rs); retries and dead letters are rare.
        Box::pin(settle::replace(self, async |d: &Self| {
            match publish(d).await {
                Ok(()) => {
                    d.broker.settled_again(&d.queue);
                    Ok(())
                }
                Err(e) => {
                    let hold = d.broker.hold_after_failure(&d.queue);
                    let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
                    d.hold_ms.store(ms, Ordering::Relaxed);
                    Err(e)
                }
            }
        }))
        .await
    }
}

impl Remove for AmqpDelivery {
    async fn remove(&mut self) -> Result<()> {
        self.settled = true;
        check_settled(
            self.acker.ack(BasicAckOptions::default()).await,
            "ack the delivery",
        )
    }
}

impl Delivery for AmqpDelivery {
    fn body(&self) -> &[u8] {
        &self.body
    }

    fn queue(&self) -> &str {
        &self.queue
    }

    fn redelivered(&self) -> bool {
        self.redelivered
    }

    async fn ack(mut self) -> Result<()> {
        self.remove().await
    }

    fn fits<'a>(&'a self, body: &'a [u8]) -> impl std::future::Future<Output = bool> + Send + 'a {
        // What `publish_body` takes.
        std::future::ready(body.len() <= super::DEFAULT_MAX_MESSAGE_SIZE)
    }

    async fn retry(self, body: Vec<u8>, delay: Duration) -> Result<()> {
        self.replace(async |d: &Self| {
            // Boxed (here and in `dead_letter`): a publish future is KBs, which would size
            // every worker job. The properties are made here, not captured, for the same
            // reason.
            let properties = d.carried_properties();
            Box::pin(d.broker.publish_body(&d.queue, &body, properties, delay)).await
        })
        .await
    }

    async fn dead_letter(self, reason: String) -> Result<()> {
        self.replace(async |d: &Self| {
            let mut headers = FieldTable::default();
            let reason = settle::cut_reason(&reason, REASON_LIMIT);
            headers.insert(REASON_HEADER.into(), long_string(&reason));
            let properties = d.carried_properties().with_headers(headers);
            let dead = dead_queue(&d.queue);
            let decls = [Decl::Work(&d.queue)];
            Box::pin(
                d.broker
                    .publish_confirmed(&decls, &dead, &d.body, properties),
            )
            .await
        })
        .await
    }

    async fn requeue(mut self) -> Result<()> {
        self.settled = true;
        check_settled(
            self.acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await,
            "requeue the delivery",
        )
    }
}

impl Drop for AmqpDelivery {
    fn drop(&mut self) {
        if self.settled || !self.acker.usable() {
            return;
        }
        // Without this the message would wait for the consumer's connection to close.
        let acker = self.acker.clone();
        let hold = Duration::from_millis(self.hold_ms.load(Ordering::Relaxed));
        settle::give_back_on_drop(async move {
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            let _ = acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        });
    }
}

impl fmt::Debug for AmqpDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        settle::debug(self, "AmqpDelivery", f)
    }
}
