//! Consuming: a session (own connection, one channel with one prefetch limit for all its
//! queues, one lapin consumer per queue) and the [`AmqpConsumer`] that reconnects it after a
//! loss.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::{SelectAll, Stream, StreamExt};
use ivy_core::{Consumer, Result};
use lapin::message::Delivery as LapinDelivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use tracing::{debug, info, warn};

use super::config::QueueType;
use super::link::connect;
use super::topology::{adopt, arguments_differ, declare, Decl};
use super::{backend, AmqpBroker, AmqpDelivery, FAILURE};
use ivy_core::backoff::Backoff;

use super::reconnect_backoff;

impl AmqpBroker {
    /// Opens a consuming session: own connection, channel with `prefetch`, one consumer per
    /// queue.
    pub(super) async fn open_session(
        &self,
        queues: &[Arc<str>],
        prefetch: u16,
        deadline: Instant,
    ) -> lapin::Result<Session> {
        let connection = connect(self.config(), "ivy consumer", deadline).await?;
        let mut channel = connection.create_channel().await?;
        for queue in queues {
            let decl = Decl::Work(queue);
            if let Err(e) = declare(&channel, self.config(), &decl, None).await {
                if !arguments_differ(self.config(), &e) {
                    return Err(e);
                }
                // The refusal closed the channel.
                channel = connection.create_channel().await?;
                adopt(&channel, self.config(), &decl, None).await?;
            }
        }
        let (limit, global) = qos(self.config().queue_type(), prefetch, queues.len());
        channel.basic_qos(limit, BasicQosOptions { global }).await?;
        let mut streams = SelectAll::new();
        let mut tags = Vec::with_capacity(queues.len());
        for queue in queues {
            let consumer = channel
                .basic_consume(
                    queue.as_ref().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tags.push(consumer.tag());
            streams.push(QueueStream {
                queue: queue.clone(),
                inner: Some(consumer),
            });
        }
        Ok(Session {
            _connection: connection,
            channel,
            streams,
            tags,
        })
    }
}

/// The `basic.qos` that makes `prefetch` one limit for a consumer of `queues` queues.
/// RabbitMQ applies a non-global prefetch to each consumer, so a worker on k queues would
/// hold k × `prefetch` unsettled messages. A global one counts the whole channel, but quorum
/// queues refuse to be consumed under it (NOT_IMPLEMENTED), so with them `prefetch` is shared
/// out between the queues (at least 1 each).
fn qos(queue_type: QueueType, prefetch: u16, queues: usize) -> (u16, bool) {
    match queue_type {
        QueueType::Classic => (prefetch, true),
        QueueType::Quorum => {
            let queues = u16::try_from(queues.max(1)).unwrap_or(u16::MAX);
            ((prefetch / queues).max(1), false)
        }
    }
}

/// One queue's lapin consumer, tagged with the queue, reporting its end once.
struct QueueStream {
    queue: Arc<str>,
    inner: Option<lapin::Consumer>,
}

// Boxing the delivery would cost an allocation per message; an event is moved once.
#[allow(clippy::large_enum_variant)]
enum Event {
    Delivery(LapinDelivery),
    Failed(lapin::Error),
    /// The broker cancelled the consumer (queue deleted) or its channel closed.
    Ended,
}

impl Stream for QueueStream {
    type Item = (Arc<str>, Event);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let event = match std::task::ready!(Pin::new(inner).poll_next(cx)) {
            Some(Ok(d)) => Event::Delivery(d),
            Some(Err(e)) => Event::Failed(e),
            None => {
                this.inner = None;
                Event::Ended
            }
        };
        Poll::Ready(Some((this.queue.clone(), event)))
    }
}

pub(super) struct Session {
    /// Dropping the session closes the connection, which returns unsettled messages.
    _connection: Connection,
    channel: Channel,
    streams: SelectAll<QueueStream>,
    tags: Vec<ShortString>,
}

enum State {
    Active(Box<Session>),
    /// The connection was lost: reconnect on the next call.
    Lost {
        backoff: Backoff,
        since: Instant,
        reported: Instant,
    },
    /// Closed by [`Consumer::close`]; the session stays open so handed-out deliveries can be
    /// settled.
    Closed {
        _open: Option<Box<Session>>,
    },
}

/// Deliveries from one or more RabbitMQ queues, on a connection of its own.
///
/// Dropping it closes that connection: RabbitMQ then requeues every unsettled delivery.
pub struct AmqpConsumer {
    broker: AmqpBroker,
    queues: Vec<Arc<str>>,
    prefetch: u16,
    state: State,
}

impl fmt::Debug for AmqpConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Active(_) => "active",
            State::Lost { .. } => "reconnecting",
            State::Closed { .. } => "closed",
        };
        f.debug_struct("AmqpConsumer")
            .field("queues", &self.queues)
            .field("prefetch", &self.prefetch)
            .field("state", &state)
            .finish()
    }
}

impl AmqpConsumer {
    pub(super) fn new(
        broker: AmqpBroker,
        queues: Vec<Arc<str>>,
        prefetch: u16,
        session: Session,
    ) -> Self {
        AmqpConsumer {
            broker,
            queues,
            prefetch,
            state: State::Active(Box::new(session)),
        }
    }

    fn lost(&mut self) {
        let now = Instant::now();
        self.state = State::Lost {
            backoff: reconnect_backoff(),
            since: now,
            reported: now,
        };
    }
}

impl Consumer for AmqpConsumer {
    type Delivery = AmqpDelivery;

    async fn next(&mut self) -> Option<Result<AmqpDelivery>> {
        loop {
            match &mut self.state {
                State::Closed { .. } => return None,
                State::Active(session) => {
                    let (queue, event) = match session.streams.next().await {
                        Some(item) => item,
                        None => (Arc::from(""), Event::Ended),
                    };
                    match event {
                        Event::Delivery(d) => {
                            return Some(Ok(AmqpDelivery::new(d, queue, self.broker.clone())))
                        }
                        Event::Failed(e) => {
                            warn!(queue = %queue, error = %e, "RabbitMQ consumer failed; reconnecting");
                            self.lost();
                            return Some(Err(FAILURE
                                .caused(format!("consuming `{queue}` failed; reconnecting"), e)));
                        }
                        Event::Ended => {
                            warn!(queue = %queue, "RabbitMQ cancelled the consumer; reconnecting");
                            self.lost();
                            return Some(Err(FAILURE.error(format!(
                                "RabbitMQ cancelled the consumer of `{queue}`; reconnecting"
                            ))));
                        }
                    }
                }
                State::Lost {
                    backoff,
                    since,
                    reported,
                } => match Box::pin(self.broker.open_session(
                    &self.queues,
                    self.prefetch,
                    Instant::now() + self.broker.config().connect_timeout(),
                ))
                .await
                {
                    Ok(session) => {
                        info!(queues = ?self.queues, after = ?since.elapsed(), "consumer reconnected to RabbitMQ");
                        self.state = State::Active(Box::new(session));
                    }
                    Err(e) => {
                        let pause = backoff.next_pause();
                        debug!(error = %e, ?pause, "consumer reconnect failed");
                        // Quiet while it retries, but not silent for long.
                        if reported.elapsed() >= self.broker.config().connect_timeout() {
                            *reported = Instant::now();
                            let waited = since.elapsed();
                            return Some(Err(self.broker.unreachable(waited, e)));
                        }
                        tokio::time::sleep(pause).await;
                    }
                },
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        let session = match std::mem::replace(&mut self.state, State::Closed { _open: None }) {
            State::Active(session) => session,
            _ => return Ok(()),
        };
        let mut result = Ok(());
        for tag in &session.tags {
            if let Err(e) = session
                .channel
                .basic_cancel(tag.clone(), BasicCancelOptions::default())
                .await
            {
                result = Err(backend(e));
            }
        }
        // Deliveries already buffered here were never handed out: give them back now rather
        // than when the connection closes.
        let mut session = session;
        if result.is_ok() {
            let drain = async {
                while let Some((_, event)) = session.streams.next().await {
                    if let Event::Delivery(d) = event {
                        let _ = d
                            .acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                multiple: false,
                            })
                            .await;
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), drain)
                .await
                .is_err()
            {
                debug!("consumer cancel not confirmed within 5 s");
            }
        }
        self.state = State::Closed {
            _open: Some(session),
        };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_is_one_limit_per_consumer_of_many_queues() {
        assert_eq!(qos(QueueType::Classic, 16, 3), (16, true));
        assert_eq!(qos(QueueType::Quorum, 16, 1), (16, false));
        assert_eq!(qos(QueueType::Quorum, 16, 3), (5, false));
        // More queues than the limit: each still gets one.
        assert_eq!(qos(QueueType::Quorum, 2, 5), (1, false));
    }
}
