//! The producer side's connection to RabbitMQ: connecting with a bounded attempt,
//! reconnecting with backoff until a deadline, and publishing with confirms.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ivy_core::{Error, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tracing::{debug, info, warn};

use super::config::Config;
use super::topology::{
    adopt, arguments_differ, check_queue_name, declare, declare_refused, delay_bucket, delay_queue,
    fresh, Decl,
};
use super::{backend, AmqpBroker, DEFAULT_MAX_MESSAGE_SIZE, FAILURE};
use super::{reconnect_backoff, MIN_BACKOFF};
use ivy_core::backoff::Backoff;

const CONNECT_ATTEMPT_LIMIT: Duration = Duration::from_secs(10);
/// One node's share of an attempt when the URL names several.
const NODE_ATTEMPT_LIMIT: Duration = Duration::from_secs(5);

/// Whether `e` means the connection is gone (so reconnecting may help), as opposed to the
/// broker refusing an operation (which closes only the channel, and would be refused again).
pub(super) fn connection_lost(e: &lapin::Error, connection: Option<&Connection>) -> bool {
    !refused_for_good(e)
        && (e.is_io_error()
            || e.is_amqp_hard_error()
            || matches!(
                e.kind(),
                lapin::ErrorKind::InvalidConnectionState(_)
                    | lapin::ErrorKind::MissingHeartbeatError
            )
            || connection.is_some_and(|c| !c.status().connected()))
}

/// Whether RabbitMQ refused the connection for a reason that waiting cannot fix: wrong
/// credentials (ACCESS_REFUSED), an unknown vhost or one the user may not use (NOT_ALLOWED,
/// INVALID_PATH), a protocol it does not speak, or a TLS handshake that failed over a
/// certificate (not trusted, not valid for the host name) or incompatible settings. Reported
/// at once, not retried until the connect timeout and then reported as "unreachable".
pub(super) fn refused_for_good(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    match e.kind() {
        lapin::ErrorKind::IOError(io) => crate::tls::handshake_problem(io.as_ref()).is_some(),
        lapin::ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH)
        ),
        lapin::ErrorKind::AuthProviderError(_) | lapin::ErrorKind::InvalidProtocolVersion(_) => {
            true
        }
        _ => false,
    }
}

/// The pause before the next attempt to reach RabbitMQ, cut to what is left until
/// `deadline`; `None` once the deadline has passed. Waiting out the last stretch (rather than
/// giving up when the next pause would cross the deadline) means a caller is given the whole
/// timeout it configured.
pub(super) fn pause_before(deadline: Instant, backoff: &mut Backoff) -> Option<Duration> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    Some(backoff.next_pause().min(left))
}

/// One connection attempt, bounded by `deadline` (but given at least `MIN_BACKOFF`, and at
/// most `CONNECT_ATTEMPT_LIMIT` so that a silently dropped SYN leaves time for another try).
///
/// With several nodes in the URL, the attempt goes through them in turn, starting one past
/// the node the last connection reached (so every reconnect moves to another node), each
/// given at most `NODE_ATTEMPT_LIMIT`: a node that is powered off (its SYNs dropped) costs
/// that long, not the whole timeout. The first that answers wins; a refusal that waiting
/// cannot fix (credentials, vhost, certificate) ends the attempt at once, since every node
/// of a cluster would refuse it alike. Otherwise the last node's error is returned.
pub(super) async fn connect(
    config: &Config,
    name: &str,
    deadline: Instant,
) -> lapin::Result<Connection> {
    let several = config.node_count() > 1;
    let mut last = None;
    for (i, node) in config.nodes_in_turn() {
        let cap = if several {
            NODE_ATTEMPT_LIMIT
        } else {
            CONNECT_ATTEMPT_LIMIT
        };
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .clamp(MIN_BACKOFF, cap);
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let runtime = lapin::runtime::default_runtime()?;
        let connect =
            Connection::connect_with_config(&node.uri, props, config.tls().clone(), runtime);
        let result = match tokio::time::timeout(limit, connect).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no AMQP handshake from {} within {limit:?}", node.address),
            )
            .into()),
        };
        match result {
            Ok(connection) => {
                config.reached(i, name);
                if several {
                    info!(node = %node.address, connection = name, "connected to RabbitMQ node");
                }
                return Ok(connection);
            }
            Err(e) if refused_for_good(&e) => return Err(e),
            Err(e) => {
                if several {
                    debug!(node = %node.address, error = %e, "RabbitMQ node unreachable; trying the next");
                }
                last = Some(e);
            }
        }
        if Instant::now() >= deadline && last.is_some() {
            break;
        }
    }
    Err(last.expect("a URL names at least one node"))
}

/// The producer side's connection and its confirm-mode channel.
pub(super) struct Link {
    connection: Connection,
    channel: Channel,
    /// Queues declared on this connection, and when: a reconnect declares everything again.
    declared: HashMap<String, Instant>,
    generation: u64,
}

impl Link {
    async fn open(config: &Config, generation: u64, deadline: Instant) -> lapin::Result<Self> {
        let connection = connect(config, "ivy producer", deadline).await?;
        let channel = confirm_channel(&connection).await?;
        Ok(Link {
            connection,
            channel,
            declared: HashMap::new(),
            generation,
        })
    }

    /// Whether every queue of `decls` was declared on this connection recently enough: the
    /// common case, checked without allocating so a publish pays nothing for it.
    fn declared(&self, decls: &[Decl<'_>]) -> bool {
        decls.iter().all(|decl| fresh(&self.declared, decl))
    }

    async fn declare(&mut self, config: &Config, decls: &[Decl<'_>]) -> lapin::Result<()> {
        for decl in decls {
            match declare(&self.channel, config, decl, Some(&mut self.declared)).await {
                Err(e) if arguments_differ(config, &e) => {
                    // The refusal closed the channel.
                    self.channel = confirm_channel(&self.connection).await?;
                    adopt(&self.channel, config, decl, Some(&mut self.declared)).await?;
                }
                done => done?,
            }
        }
        Ok(())
    }
}

pub(super) async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

impl AmqpBroker {
    /// The producer channel, connected and with `decls` declared; waits for the broker until
    /// `deadline`.
    pub(super) async fn channel(
        &self,
        decls: &[Decl<'_>],
        deadline: Instant,
    ) -> Result<(Channel, u64)> {
        {
            let link = self.inner.link.lock().await;
            if let Some(l) = link.as_ref().filter(|l| {
                l.connection.status().connected()
                    && l.channel.status().connected()
                    && l.declared(decls)
            }) {
                return Ok((l.channel.clone(), l.generation));
            }
        }
        // Connecting, reopening the channel or declaring: rare, and its future is several
        // KB (lapin's connect), so it is boxed rather than carried by every publish.
        Box::pin(self.open_channel(decls, deadline)).await
    }

    /// [`channel`](Self::channel)'s slow path.
    async fn open_channel(&self, decls: &[Decl<'_>], deadline: Instant) -> Result<(Channel, u64)> {
        let started = Instant::now();
        let mut backoff = reconnect_backoff();
        loop {
            let mut link = self.inner.link.lock().await;
            if let Some(l) = link.as_mut() {
                if !l.connection.status().connected() {
                    *link = None;
                } else if !l.channel.status().connected() {
                    // A refused operation closed the channel; the connection is fine.
                    match confirm_channel(&l.connection).await {
                        Ok(channel) => l.channel = channel,
                        Err(_) => *link = None,
                    }
                }
            }
            let error = match link.as_mut() {
                Some(l) => match l.declare(self.config(), decls).await {
                    Ok(()) => return Ok((l.channel.clone(), l.generation)),
                    Err(e) if connection_lost(&e, Some(&l.connection)) => {
                        *link = None;
                        e
                    }
                    Err(e) => return Err(declare_refused(decls, e)),
                },
                None => {
                    let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
                    match Link::open(self.config(), generation, deadline).await {
                        Ok(l) => {
                            if generation > 1 {
                                info!(url = %self.config().redacted(), "reconnected to RabbitMQ");
                            }
                            *link = Some(l);
                            continue;
                        }
                        Err(e) if connection_lost(&e, None) => e,
                        Err(e) => return Err(self.refused(e)),
                    }
                }
            };
            drop(link);
            let Some(pause) = pause_before(deadline, &mut backoff) else {
                return Err(self.unreachable(started.elapsed(), error));
            };
            warn!(url = %self.config().redacted(), error = %error, ?pause, "RabbitMQ unreachable; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Forgets the link of `generation` after it failed, so the next call reconnects.
    async fn drop_link(&self, generation: u64) {
        let mut link = self.inner.link.lock().await;
        if link.as_ref().is_some_and(|l| l.generation == generation) {
            *link = None;
        }
    }

    /// Forgets what `generation` declared, after a message came back unroutable.
    async fn forget_declared(&self, generation: u64) {
        let mut link = self.inner.link.lock().await;
        if let Some(l) = link.as_mut().filter(|l| l.generation == generation) {
            l.declared.clear();
        }
    }

    /// Publishes `body` to `routing_key` on the default exchange and waits for the confirm.
    ///
    /// Once a publish has gone out unconfirmed (its confirm did not come in time, or the
    /// connection went while waiting for it), RabbitMQ may have the message: giving up then
    /// is [`Error::PublishOutcomeUnknown`], never a plain failure. A publish that went out on
    /// a connection that was lost is sent again on the next one (at least once: this may
    /// duplicate it, as a redelivery would).
    pub(super) async fn publish_confirmed(
        &self,
        decls: &[Decl<'_>],
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let started = Instant::now();
        let deadline = started + self.config().connect_timeout();
        let mut backoff = reconnect_backoff();
        let mut returned_before = false;
        // Whether an earlier attempt went out without a confirm or a refusal.
        let mut maybe_sent = false;
        let give_up = |maybe_sent: bool, e: Error| {
            if maybe_sent {
                Error::PublishOutcomeUnknown {
                    backend: "amqp",
                    id: None,
                    queue: routing_key.to_owned(),
                    source: Box::new(e),
                }
            } else {
                e
            }
        };
        loop {
            let (channel, generation) = match self.channel(decls, deadline).await {
                Ok(link) => link,
                Err(e) => return Err(give_up(maybe_sent, e)),
            };
            let options = BasicPublishOptions {
                // An unroutable message (its queue deleted behind our back) comes back instead
                // of vanishing.
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            let mut sent = false;
            let confirm = async {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        routing_key.into(),
                        options,
                        body,
                        properties.clone(),
                    )
                    .await?;
                sent = true;
                confirm.await
            };
            let confirmed = tokio::time::timeout_at(deadline.into(), confirm).await;
            let Ok(confirmed) = confirmed else {
                // Flow control (a memory or disk alarm) or a half-dead connection that the
                // heartbeat has not caught yet. The message may be on its way or in a queue.
                let why = FAILURE.error(format!(
                    "RabbitMQ at {} did not confirm it within {:?}",
                    self.config().redacted(),
                    self.config().connect_timeout()
                ));
                return Err(give_up(true, why));
            };
            match confirmed {
                Ok(Confirmation::Ack(None)) => return Ok(()),
                Ok(Confirmation::Ack(Some(_))) if !returned_before => {
                    // Declared once on this connection, deleted since: declare again.
                    returned_before = true;
                    self.forget_declared(generation).await;
                }
                Ok(Confirmation::Ack(Some(returned))) => {
                    return Err(FAILURE.error(format!(
                        "RabbitMQ returned the message for queue `{routing_key}` as unroutable: {}",
                        returned.reply_text
                    )))
                }
                Ok(Confirmation::Nack(_)) => {
                    // RabbitMQ did not take it: a quorum queue without a leader for a moment
                    // (a node lost, an election under way) says so. Sending it again cannot
                    // duplicate it; wait and try again until the deadline.
                    let refused = || {
                        FAILURE.error(format!(
                            "RabbitMQ at {} refused (nacked) the message for queue \
                             `{routing_key}` until the connect timeout ({:?}) ran out",
                            self.config().redacted(),
                            self.config().connect_timeout()
                        ))
                    };
                    let Some(pause) = pause_before(deadline, &mut backoff) else {
                        return Err(give_up(maybe_sent, refused()));
                    };
                    debug!(queue = routing_key, ?pause, "publish nacked; trying again");
                    tokio::time::sleep(pause).await;
                }
                Ok(Confirmation::NotRequested) => {
                    return Err(FAILURE.error("publisher confirms are not enabled"))
                }
                Err(e) if connection_lost(&e, None) || !channel.status().connected() => {
                    maybe_sent |= sent;
                    let retriable = connection_lost(&e, None)
                        || matches!(
                            e.kind(),
                            lapin::ErrorKind::InvalidChannelState(..)
                                | lapin::ErrorKind::InvalidChannel(_)
                        );
                    self.drop_link(generation).await;
                    if !retriable {
                        return Err(give_up(maybe_sent, backend(e)));
                    }
                    let Some(pause) = pause_before(deadline, &mut backoff) else {
                        return Err(give_up(maybe_sent, self.unreachable(started.elapsed(), e)));
                    };
                    debug!(error = %e, "publish failed; reconnecting");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(give_up(maybe_sent || sent, backend(e))),
            }
        }
    }

    /// Publishes to `queue` now, or through the delay bucket for `delay`.
    pub(super) async fn publish_body(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
        delay: Duration,
    ) -> Result<()> {
        check_queue_name(queue)?;
        let limit = DEFAULT_MAX_MESSAGE_SIZE;
        if body.len() > limit {
            return Err(Error::MessageTooLarge {
                size: body.len(),
                limit,
            });
        }
        let work = Decl::Work(queue);
        let ms = delay_bucket(delay);
        if ms == 0 {
            self.publish_confirmed(&[work], queue, body, properties)
                .await
        } else {
            let decls = [work, Decl::Delay { queue, ms }];
            self.publish_confirmed(&decls, &delay_queue(queue, ms), body, properties)
                .await
        }
    }
}
