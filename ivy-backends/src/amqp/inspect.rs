//! RabbitMQ's side of [`crate::inspect`]: depths by passive declare, dead letters read and
//! replayed on a connection of their own, purges.
//!
//! Reading takes dead letters with `basic.get` and never acknowledges them: closing the
//! channel gives every one back to its queue, in its place (RabbitMQ requeues unacknowledged
//! messages at their position), and a crash gives them back too, when the connection goes.
//! A replay publishes each chosen message to the work queue with a publisher confirm and only
//! then acknowledges its dead letter.

use std::time::{Duration, Instant};

use ivy_core::Result;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::config::MAX_PRIORITY;
use super::delivery::{check_settled, header_string};
use super::link::{connect, refused_for_good};
use super::topology::{check_queue_name, dead_queue};
use super::{AmqpBroker, QueueType, FAILURE, REASON_HEADER};
use crate::inspect::{PeekedDeadLetter, Pick, QueueDepth, Replayed};

/// The reply code of a clean close.
const CLOSE_OK: u16 = 200;

/// A connection and channel of one inspection. Closing it gives back what was read and not
/// acknowledged.
struct Session {
    connection: Connection,
    channel: Channel,
}

impl Session {
    async fn close(self) {
        // Errors here only mean the connection is gone already, which gives the messages
        // back just the same.
        let _ = self.channel.close(CLOSE_OK, "inspected".into()).await;
        let _ = self.connection.close(CLOSE_OK, "inspected".into()).await;
    }
}

fn not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

impl PeekedDeadLetter {
    fn from_amqp(delivery: &lapin::message::Delivery) -> Self {
        PeekedDeadLetter {
            body: delivery.data.clone(),
            reason: header_string(&delivery.properties, REASON_HEADER),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            dead_since_ms: None,
        }
    }
}

impl AmqpBroker {
    /// One attempt to connect, bounded by the connect timeout: an operator's command should
    /// say at once that RabbitMQ is unreachable rather than wait for it.
    async fn session(&self) -> Result<Session> {
        let started = Instant::now();
        let deadline = started + self.config().connect_timeout();
        let connection = connect(self.config(), "ivy inspect", deadline)
            .await
            .map_err(|e| {
                if refused_for_good(&e) {
                    self.refused(e)
                } else {
                    self.unreachable(started.elapsed(), e)
                }
            })?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| FAILURE.caused("could not open a channel", e))?;
        Ok(Session {
            connection,
            channel,
        })
    }

    /// Messages and consumers of `name` by a passive declare; `None` when it does not exist
    /// (which closes the channel: a new one is opened for the next question).
    async fn passive_counts(
        &self,
        session: &mut Session,
        name: &str,
    ) -> Result<Option<(u64, u64)>> {
        let declared = session
            .channel
            .queue_declare(name.into(), passive(), FieldTable::default())
            .await;
        match declared {
            Ok(q) => Ok(Some((
                u64::from(q.message_count()),
                u64::from(q.consumer_count()),
            ))),
            Err(e) if not_found(&e) => {
                session.channel = session
                    .connection
                    .create_channel()
                    .await
                    .map_err(|e| FAILURE.caused("could not open a channel", e))?;
                Ok(None)
            }
            Err(e) => Err(FAILURE.caused(format!("could not look at queue `{name}`"), e)),
        }
    }

    /// What passive declares tell of each Ivy queue of `queues`: ready messages, consumers
    /// and dead letters; in flight and delayed are unknown this way (`None`). `None` for a
    /// queue that does not exist. Declares nothing.
    pub async fn passive_depths(&self, queues: &[String]) -> Result<Vec<Option<QueueDepth>>> {
        for q in queues {
            check_queue_name(q)?;
        }
        let mut session = self.session().await?;
        let mut depths = Vec::with_capacity(queues.len());
        for q in queues {
            let depth = match self.passive_counts(&mut session, q).await? {
                None => None,
                Some((ready, consumers)) => {
                    let dead = self.passive_counts(&mut session, &dead_queue(q)).await?;
                    Some(QueueDepth {
                        ready: Some(ready),
                        consumers: Some(consumers),
                        dead: Some(dead.map_or(0, |(n, _)| n)),
                        ..QueueDepth::default()
                    })
                }
            };
            depths.push(depth);
        }
        session.close().await;
        Ok(depths)
    }

    /// Up to `limit` dead letters of Ivy queue `queue`, oldest first, left in the queue.
    pub async fn peek_dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<PeekedDeadLetter>> {
        check_queue_name(queue)?;
        let dead = dead_queue(queue);
        let session = self.session().await?;
        let mut letters = Vec::new();
        while letters.len() < limit {
            let got = session
                .channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| FAILURE.caused(format!("could not read `{dead}`"), e))?;
            let Some(got) = got else { break };
            letters.push(PeekedDeadLetter::from_amqp(&got.delivery));
        }
        // Unacknowledged: closing gives every one back, in its place.
        session.close().await;
        Ok(letters)
    }

    /// Puts dead letters of `queue` back onto its work queue: each of those that were there
    /// when it started is shown to `pick`; one it picks is published (confirmed) to the work
    /// queue, then removed from the dead letters. The others stay. On an error, what was
    /// replayed so far stays replayed and the rest stays dead.
    pub async fn replay_dead_letters(
        &self,
        queue: &str,
        mut pick: impl FnMut(&PeekedDeadLetter) -> Pick,
    ) -> Result<Replayed> {
        check_queue_name(queue)?;
        let dead = dead_queue(queue);
        let mut session = self.session().await?;
        // Only what is there now: a replayed call that is dead-lettered again meanwhile is
        // not taken a second time.
        let Some((mut budget, _)) = self.passive_counts(&mut session, &dead).await? else {
            session.close().await;
            return Ok(Replayed::default());
        };
        let mut report = Replayed::default();
        let result = async {
            while budget > 0 {
                budget -= 1;
                let got = session
                    .channel
                    .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|e| FAILURE.caused(format!("could not read `{dead}`"), e))?;
                let Some(got) = got else { break };
                let letter = PeekedDeadLetter::from_amqp(&got.delivery);
                let (id, body) = match pick(&letter) {
                    Pick::Replay { id, body } => (id, body),
                    _ => {
                        report.left += 1;
                        continue;
                    }
                };
                let mut properties = BasicProperties::default().with_delivery_mode(2);
                if let Ok(message_id) = ShortString::try_new(id.clone()) {
                    properties = properties.with_message_id(message_id);
                }
                if let (Some(p), QueueType::Classic) =
                    (*got.delivery.properties.priority(), self.queue_type())
                {
                    properties = properties.with_priority(p.min(MAX_PRIORITY));
                }
                self.publish_body(queue, &body, properties, Duration::ZERO)
                    .await?;
                check_settled(
                    got.delivery.acker.ack(BasicAckOptions::default()).await,
                    "remove a replayed dead letter",
                )?;
                report.replayed.push(id);
            }
            Ok(())
        }
        .await;
        session.close().await;
        result.map(|()| report)
    }

    /// Deletes every dead letter of `queue`; returns how many there were.
    pub async fn purge_dead_letters(&self, queue: &str) -> Result<u64> {
        check_queue_name(queue)?;
        let dead = dead_queue(queue);
        let session = self.session().await?;
        let purged = session
            .channel
            .queue_purge(dead.as_str().into(), QueuePurgeOptions::default())
            .await
            .map_err(|e| FAILURE.caused(format!("could not purge `{dead}`"), e));
        session.close().await;
        Ok(u64::from(purged?))
    }
}
