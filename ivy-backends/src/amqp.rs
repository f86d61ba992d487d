//! RabbitMQ (AMQP 0-9-1) broker on [lapin]: [`AmqpBroker`].
//!
//! Owns the mapping of Ivy's queue model onto RabbitMQ and nothing else: envelopes, retries
//! and results are the runtime's business. Per Ivy queue `q` it declares, lazily and
//! idempotently on the default exchange:
//!
//! - `q`: the durable work queue (classic with `x-max-priority` 9, or quorum with
//!   `?queue_type=quorum`, which gives up priorities);
//! - `q.dead`: its dead letters, each carrying the reason in the `x-ivy-reason` header;
//! - `q.delay.<ms>`: one queue per delay bucket, with `x-message-ttl` = bucket, whose expired
//!   messages dead-letter back into `q`. RabbitMQ 3.10 has no delayed-message exchange here,
//!   and per-message TTLs only expire at the head of a queue, so a queue per bucket keeps
//!   every delay queue FIFO by expiry. Buckets round delays *up* to two significant digits
//!   (so a message is never early) and vanish through `x-expires` when unused.
//!
//! Publishing uses publisher confirms and `mandatory`, so [`Broker::publish`] returns only once
//! RabbitMQ has the message in a queue. The producer side reconnects with backoff, for up to
//! `?connect_timeout_ms=` (default 30 s) per publish; a consumer reports a lost connection as
//! one `Err` from [`Consumer::next`] and then reconnects and consumes again by itself.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::{SelectAll, Stream, StreamExt};
use ivy_core::{
    Broker, Capabilities, Consumer, DeadLetter, Delivery, Error, OutgoingMessage, Result,
};
use lapin::message::Delivery as LapinDelivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::redact_url;

const BACKEND: &str = "amqp";

/// The header that carries a dead letter's reason.
pub const REASON_HEADER: &str = "x-ivy-reason";

/// RabbitMQ's default `max_message_size` (128 MiB) since 3.8; larger bodies are refused by
/// the server, so they are refused here before sending.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// The default of `?connect_timeout_ms=`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const MAX_PRIORITY: u8 = 9;

/// A delay queue is re-declared (which restarts its `x-expires` clock) when its last
/// declaration on this connection is older than this...
const REDECLARE_AFTER: Duration = Duration::from_secs(60);
/// ...and expires this long after its TTL when nobody declares it, so a message published just
/// before a re-declaration was due still expires into the work queue before the queue goes.
const DELAY_QUEUE_SLACK_MS: u64 = 2 * REDECLARE_AFTER.as_millis() as u64;
/// RabbitMQ refuses TTLs and `x-expires` above 2^32 - 1 ms. Longer delays are clamped: the
/// worker re-delays calls that arrive before their eta.
const MAX_DELAY_MS: u64 = u32::MAX as u64 - DELAY_QUEUE_SLACK_MS;

/// AMQP names are short strings; leave room for the `.delay.<ms>` suffix.
const MAX_QUEUE_NAME: usize = 255 - ".delay.".len() - 10;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_ATTEMPT_LIMIT: Duration = Duration::from_secs(10);

/// Which kind of RabbitMQ queue Ivy declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// Classic queues with `x-max-priority` 9: priorities work.
    Classic,
    /// Replicated quorum queues: no priorities on RabbitMQ 3.10.
    Quorum,
}

#[derive(Clone)]
struct Config {
    /// What lapin connects to: the URL without Ivy's own options, password included.
    uri: String,
    /// The URL for errors and logs.
    redacted: String,
    queue_type: QueueType,
    connect_timeout: Duration,
}

impl Config {
    fn parse(url: &str) -> Result<Self> {
        let redacted = redact_url(url);
        let bad = |reason: String| Error::Url {
            url: redacted.clone(),
            reason,
        };
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(bad("expected an amqp:// or amqps:// URL".into()));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut queue_type = QueueType::Classic;
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
        let mut passed_on = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "queue_type" => {
                    queue_type = match value {
                        "classic" => QueueType::Classic,
                        "quorum" => QueueType::Quorum,
                        _ => {
                            return Err(bad(format!(
                                "queue_type must be `classic` or `quorum`, not `{value}`"
                            )))
                        }
                    }
                }
                "connect_timeout_ms" => {
                    let ms: u64 = value.parse().map_err(|_| {
                        bad(format!(
                            "connect_timeout_ms must be a number of milliseconds, not `{value}`"
                        ))
                    })?;
                    connect_timeout = Duration::from_millis(ms);
                }
                // lapin's own options (heartbeat, frame_max, channel_max, connection_timeout,
                // auth_mechanism).
                _ => passed_on.push(pair),
            }
        }
        let uri = if passed_on.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed_on.join("&"))
        };
        // Parse now so a malformed URL fails at construction, not at the first publish.
        uri.parse::<lapin::uri::AMQPUri>().map_err(|e| {
            // The parser's message may quote the URL; do not echo a password.
            let reason = if url.contains('@') {
                "malformed AMQP URL".to_owned()
            } else {
                format!("malformed AMQP URL: {e}")
            };
            bad(reason)
        })?;
        Ok(Config {
            uri,
            redacted,
            queue_type,
            connect_timeout,
        })
    }

    fn work_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        match self.queue_type {
            QueueType::Classic => {
                args.insert(
                    "x-max-priority".into(),
                    AMQPValue::ShortShortUInt(MAX_PRIORITY),
                );
            }
            QueueType::Quorum => self.add_type(&mut args),
        }
        args
    }

    fn add_type(&self, args: &mut FieldTable) {
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), long_string("quorum"));
        }
    }
}

/// Topology a publish needs.
#[derive(Clone, Copy, Debug)]
enum Decl<'a> {
    /// The work queue `q` and its dead letters `q.dead`.
    Work(&'a str),
    /// The delay bucket of `ms` milliseconds in front of `queue`.
    Delay { queue: &'a str, ms: u64 },
}

fn dead_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

fn delay_queue(queue: &str, ms: u64) -> String {
    format!("{queue}.delay.{ms}")
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Rounds a delay up to its bucket: exact below 100 ms, else two significant digits, so there
/// are at most 90 buckets per decade and a message is at most 10 % late.
fn delay_bucket(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let mut unit = 1;
    while ms / unit >= 100 {
        unit *= 10;
    }
    ms.div_ceil(unit).saturating_mul(unit).min(MAX_DELAY_MS)
}

fn check_queue_name(queue: &str) -> Result<()> {
    if queue.is_empty() || queue.len() > MAX_QUEUE_NAME {
        return Err(Error::Config(format!(
            "AMQP queue names must have 1 to {MAX_QUEUE_NAME} bytes, `{queue}` has {}",
            queue.len()
        )));
    }
    Ok(())
}

/// This backend's failures (see `crate::failure`).
struct Failure;

impl Failure {
    fn error(message: impl Into<String>) -> Error {
        crate::failure::error(BACKEND, message)
    }

    fn caused(message: impl Into<String>, source: lapin::Error) -> Error {
        crate::failure::caused(BACKEND, message, source)
    }
}

fn backend(e: lapin::Error) -> Error {
    Error::backend(BACKEND, e)
}

/// Whether `e` means the connection is gone (so reconnecting may help), as opposed to the
/// broker refusing an operation (which closes only the channel, and would be refused again).
fn connection_lost(e: &lapin::Error, connection: Option<&Connection>) -> bool {
    e.is_io_error()
        || e.is_amqp_hard_error()
        || matches!(
            e.kind(),
            lapin::ErrorKind::InvalidConnectionState(_) | lapin::ErrorKind::MissingHeartbeatError
        )
        || connection.is_some_and(|c| !c.status().connected())
}

/// Exponential backoff without jitter: there are few clients per broker here.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(MIN_BACKOFF)
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        d
    }
}

/// One connection attempt, bounded: a silently dropped SYN would otherwise hang the caller
/// well past its deadline.
async fn connect(config: &Config, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let limit = config
        .connect_timeout
        .clamp(MIN_BACKOFF, CONNECT_ATTEMPT_LIMIT);
    match tokio::time::timeout(limit, Connection::connect(&config.uri, props)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no AMQP handshake within {limit:?}"),
        )
        .into()),
    }
}

/// The producer side's connection and its confirm-mode channel.
struct Link {
    connection: Connection,
    channel: Channel,
    /// Queues declared on this connection, and when: a reconnect declares everything again.
    declared: HashMap<String, Instant>,
    generation: u64,
}

impl Link {
    async fn open(config: &Config, generation: u64) -> lapin::Result<Self> {
        let connection = connect(config, "ivy producer").await?;
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
            declare(&self.channel, config, decl, Some(&mut self.declared)).await?;
        }
        Ok(())
    }
}

async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Whether `decl` was declared on this connection recently enough: work queues once, delay
/// buckets within `REDECLARE_AFTER` (their `x-expires` clock restarts on a declare).
fn fresh(declared: &HashMap<String, Instant>, decl: &Decl<'_>) -> bool {
    match *decl {
        Decl::Work(q) => declared.contains_key(q),
        Decl::Delay { queue, ms } => declared
            .get(&delay_queue(queue, ms))
            .is_some_and(|at| at.elapsed() < REDECLARE_AFTER),
    }
}

/// Declares `decl` unless `declared` says it is fresh on this connection.
async fn declare(
    channel: &Channel,
    config: &Config,
    decl: &Decl<'_>,
    mut declared: Option<&mut HashMap<String, Instant>>,
) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    if declared.as_deref().is_some_and(|d| fresh(d, decl)) {
        return Ok(());
    }
    let key = match decl {
        Decl::Work(q) => (*q).to_owned(),
        Decl::Delay { queue, ms } => delay_queue(queue, *ms),
    };
    match decl {
        Decl::Work(q) => {
            channel
                .queue_declare((*q).into(), durable, config.work_queue_args())
                .await?;
            let mut args = FieldTable::default();
            config.add_type(&mut args);
            channel
                .queue_declare(dead_queue(q).into(), durable, args)
                .await?;
        }
        Decl::Delay { queue, ms } => {
            let mut args = FieldTable::default();
            config.add_type(&mut args);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(*ms as i64));
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt((*ms + DELAY_QUEUE_SLACK_MS) as i64),
            );
            args.insert("x-dead-letter-exchange".into(), long_string(""));
            args.insert("x-dead-letter-routing-key".into(), long_string(queue));
            channel
                .queue_declare(key.as_str().into(), durable, args)
                .await?;
        }
    }
    if let Some(declared) = declared.as_mut() {
        declared.insert(key, Instant::now());
    }
    Ok(())
}

struct Inner {
    config: Config,
    link: Mutex<Option<Link>>,
    generations: AtomicU64,
}

/// RabbitMQ broker. Cheap to clone: clones share the producer connection.
///
/// ```no_run
/// # async fn demo() -> ivy_core::Result<()> {
/// use ivy_backends::amqp::AmqpBroker;
/// let broker = AmqpBroker::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("url", &self.inner.config.redacted)
            .field("queue_type", &self.inner.config.queue_type)
            .finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// Parses `url` (`amqp://user:pass@host:port/vhost`, `amqps://…`) without connecting:
    /// the first operation connects.
    ///
    /// Ivy's options, in the query string: `queue_type=classic|quorum` (default classic),
    /// `connect_timeout_ms=` (how long a publish waits for an unreachable broker, default
    /// 30 000). lapin's own options (`heartbeat=`, `frame_max=`, `connection_timeout=`, …) are
    /// passed on.
    pub fn from_url(url: &str) -> Result<Self> {
        let config = Config::parse(url)?;
        Ok(AmqpBroker {
            inner: Arc::new(Inner {
                config,
                link: Mutex::new(None),
                generations: AtomicU64::new(0),
            }),
        })
    }

    /// Like [`from_url`](Self::from_url), then connects (waiting up to the connect timeout),
    /// so an unreachable broker or wrong credentials show up now.
    pub async fn connect(url: &str) -> Result<Self> {
        let broker = Self::from_url(url)?;
        broker
            .channel(&[], Instant::now() + broker.config().connect_timeout)
            .await?;
        Ok(broker)
    }

    /// The kind of queues this broker declares.
    pub fn queue_type(&self) -> QueueType {
        self.inner.config.queue_type
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    fn unreachable(&self, waited: Duration, e: lapin::Error) -> Error {
        Failure::caused(
            format!(
                "RabbitMQ at {} unreachable for {waited:?}",
                self.config().redacted
            ),
            e,
        )
    }

    /// The producer channel, connected and with `decls` declared; waits for the broker until
    /// `deadline`.
    async fn channel(&self, decls: &[Decl<'_>], deadline: Instant) -> Result<(Channel, u64)> {
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
        let mut backoff = Backoff::new();
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
                    Err(e) => {
                        return Err(Failure::caused(
                            format!(
                                "RabbitMQ refused to declare the queues of {:?}",
                                decls.iter().map(Decl::queue).collect::<Vec<_>>()
                            ),
                            e,
                        ))
                    }
                },
                None => {
                    let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
                    match Link::open(self.config(), generation).await {
                        Ok(l) => {
                            if generation > 1 {
                                info!(url = %self.config().redacted, "reconnected to RabbitMQ");
                            }
                            *link = Some(l);
                            continue;
                        }
                        Err(e) if connection_lost(&e, None) => e,
                        Err(e) => {
                            return Err(Failure::caused(
                                format!(
                                    "RabbitMQ at {} refused the connection",
                                    self.config().redacted
                                ),
                                e,
                            ))
                        }
                    }
                }
            };
            drop(link);
            let pause = backoff.next();
            if Instant::now() + pause >= deadline {
                return Err(self.unreachable(started.elapsed(), error));
            }
            warn!(url = %self.config().redacted, error = %error, ?pause, "RabbitMQ unreachable; retrying");
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
    async fn publish_confirmed(
        &self,
        decls: &[Decl<'_>],
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let started = Instant::now();
        let deadline = started + self.config().connect_timeout;
        let mut backoff = Backoff::new();
        let mut returned_before = false;
        loop {
            let (channel, generation) = self.channel(decls, deadline).await?;
            let options = BasicPublishOptions {
                // An unroutable message (its queue deleted behind our back) comes back instead
                // of vanishing.
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            let confirm = async {
                channel
                    .basic_publish(
                        "".into(),
                        routing_key.into(),
                        options,
                        body,
                        properties.clone(),
                    )
                    .await?
                    .await
            };
            let Ok(confirmed) = tokio::time::timeout_at(deadline.into(), confirm).await else {
                // Flow control (a memory or disk alarm) or a half-dead connection that the
                // heartbeat has not caught yet.
                return Err(Failure::error(format!(
                    "RabbitMQ did not confirm the message for queue `{routing_key}` within {:?}",
                    self.config().connect_timeout
                )));
            };
            match confirmed {
                Ok(Confirmation::Ack(None)) => return Ok(()),
                Ok(Confirmation::Ack(Some(_))) if !returned_before => {
                    // Declared once on this connection, deleted since: declare again.
                    returned_before = true;
                    self.forget_declared(generation).await;
                }
                Ok(Confirmation::Ack(Some(returned))) => {
                    return Err(Failure::error(format!(
                        "RabbitMQ returned the message for queue `{routing_key}` as unroutable: {}",
                        returned.reply_text
                    )))
                }
                Ok(Confirmation::Nack(_)) => {
                    return Err(Failure::error(format!(
                        "RabbitMQ refused (nacked) the message for queue `{routing_key}`"
                    )))
                }
                Ok(Confirmation::NotRequested) => {
                    return Err(Failure::error("publisher confirms are not enabled"))
                }
                Err(e) if connection_lost(&e, None) || !channel.status().connected() => {
                    let retriable = connection_lost(&e, None)
                        || matches!(
                            e.kind(),
                            lapin::ErrorKind::InvalidChannelState(..)
                                | lapin::ErrorKind::InvalidChannel(_)
                        );
                    self.drop_link(generation).await;
                    if !retriable {
                        return Err(backend(e));
                    }
                    let pause = backoff.next();
                    if Instant::now() + pause >= deadline {
                        return Err(self.unreachable(started.elapsed(), e));
                    }
                    debug!(error = %e, "publish failed; reconnecting");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// Publishes to `queue` now, or through the delay bucket for `delay`.
    async fn publish_body(
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

    /// Opens a consuming session: own connection, channel with `prefetch`, one consumer per
    /// queue.
    async fn open_session(&self, queues: &[Arc<str>], prefetch: u16) -> lapin::Result<Session> {
        let connection = connect(self.config(), "ivy consumer").await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut streams = SelectAll::new();
        let mut tags = Vec::with_capacity(queues.len());
        for queue in queues {
            declare(&channel, self.config(), &Decl::Work(queue), None).await?;
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

impl Decl<'_> {
    fn queue(&self) -> &str {
        match *self {
            Decl::Work(q) | Decl::Delay { queue: q, .. } => q,
        }
    }
}

impl Broker for AmqpBroker {
    type Delivery = AmqpDelivery;
    type Consumer = AmqpConsumer;

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(DEFAULT_MAX_MESSAGE_SIZE)
            .with_fifo(true)
            .with_priorities(self.queue_type() == QueueType::Classic)
    }

    async fn publish(&self, msg: OutgoingMessage) -> Result<()> {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Ok(id) = ShortString::try_new(msg.id) {
            properties = properties.with_message_id(id);
        }
        if let (Some(p), QueueType::Classic) = (msg.priority, self.queue_type()) {
            properties = properties.with_priority(p.min(MAX_PRIORITY));
        }
        self.publish_body(
            &msg.queue,
            &msg.body,
            properties,
            msg.delay.unwrap_or_default(),
        )
        .await
    }

    async fn consume(&self, queues: &[String], prefetch: usize) -> Result<AmqpConsumer> {
        if queues.is_empty() {
            return Err(Error::Config("consume needs at least one queue".into()));
        }
        for q in queues {
            check_queue_name(q)?;
        }
        let queues: Vec<Arc<str>> = queues.iter().map(|q| Arc::from(q.as_str())).collect();
        // AMQP's prefetch 0 means unlimited, which is not what 0 would mean to a caller.
        let prefetch = u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX);
        let started = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            match self.open_session(&queues, prefetch).await {
                Ok(session) => {
                    return Ok(AmqpConsumer {
                        broker: self.clone(),
                        queues,
                        prefetch,
                        state: State::Active(Box::new(session)),
                    })
                }
                Err(e) if connection_lost(&e, None) => {
                    let pause = backoff.next();
                    if started.elapsed() + pause >= self.config().connect_timeout {
                        return Err(self.unreachable(started.elapsed(), e));
                    }
                    warn!(url = %self.config().redacted, error = %e, ?pause, "RabbitMQ unreachable; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(Failure::caused(format!("could not consume {queues:?}"), e)),
            }
        }
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        check_queue_name(queue)?;
        let deadline = Instant::now() + self.config().connect_timeout;
        let (channel, _) = self.channel(&[Decl::Work(queue)], deadline).await?;
        let dead = dead_queue(queue);
        let mut letters = Vec::new();
        while letters.len() < max {
            let Some(got) = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(backend)?
            else {
                break;
            };
            let delivery = got.delivery;
            let reason = header_string(&delivery.properties, REASON_HEADER).unwrap_or_default();
            settle(
                delivery.acker.ack(BasicAckOptions::default()).await,
                "ack a dead letter",
            )?;
            letters.push(DeadLetter {
                queue: queue.to_owned(),
                body: delivery.data,
                reason,
            });
        }
        Ok(letters)
    }
}

fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// lapin reports a settlement on a dead channel as `Ok(false)`: the broker has requeued the
/// message already, and the caller must know its settlement did not happen.
fn settle(result: lapin::Result<bool>, what: &str) -> Result<()> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure::error(format!(
            "could not {what}: its channel is closed (the broker redelivers the message)"
        ))),
        Err(e) => Err(Failure::caused(format!("could not {what}"), e)),
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

struct Session {
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
    fn lost(&mut self) {
        let now = Instant::now();
        self.state = State::Lost {
            backoff: Backoff::new(),
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
                            return Some(Err(Failure::caused(
                                format!("consuming `{queue}` failed; reconnecting"),
                                e,
                            )));
                        }
                        Event::Ended => {
                            warn!(queue = %queue, "RabbitMQ cancelled the consumer; reconnecting");
                            self.lost();
                            return Some(Err(Failure::error(format!(
                                "RabbitMQ cancelled the consumer of `{queue}`; reconnecting"
                            ))));
                        }
                    }
                }
                State::Lost {
                    backoff,
                    since,
                    reported,
                } => match Box::pin(self.broker.open_session(&self.queues, self.prefetch)).await {
                    Ok(session) => {
                        info!(queues = ?self.queues, after = ?since.elapsed(), "consumer reconnected to RabbitMQ");
                        self.state = State::Active(Box::new(session));
                    }
                    Err(e) => {
                        let pause = backoff.next();
                        debug!(error = %e, ?pause, "consumer reconnect failed");
                        // Quiet while it retries, but not silent for long.
                        if reported.elapsed() >= self.broker.config().connect_timeout {
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
}

impl fmt::Debug for AmqpDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpDelivery")
            .field("queue", &self.queue)
            .field("len", &self.body.len())
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl AmqpDelivery {
    fn new(d: LapinDelivery, queue: Arc<str>, broker: AmqpBroker) -> Self {
        AmqpDelivery {
            acker: d.acker,
            body: d.data,
            queue,
            redelivered: d.redelivered,
            message_id: d.properties.message_id().clone(),
            priority: *d.properties.priority(),
            broker,
            settled: false,
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

    async fn ack_now(&mut self) -> Result<()> {
        self.settled = true;
        settle(
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
        self.ack_now().await
    }

    async fn retry(mut self, body: Vec<u8>, delay: Duration) -> Result<()> {
        // Publish first: if that fails, dropping `self` requeues the original. Boxed (here and
        // in `dead_letter`): a publish future is KBs, which would size every worker job.
        let properties = self.carried_properties();
        Box::pin(
            self.broker
                .publish_body(&self.queue, &body, properties, delay),
        )
        .await?;
        self.ack_now().await
    }

    async fn dead_letter(mut self, reason: String) -> Result<()> {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), long_string(&reason));
        let properties = self.carried_properties().with_headers(headers);
        let dead = dead_queue(&self.queue);
        let decls = [Decl::Work(&self.queue)];
        Box::pin(
            self.broker
                .publish_confirmed(&decls, &dead, &self.body, properties),
        )
        .await?;
        self.ack_now().await
    }

    async fn requeue(mut self) -> Result<()> {
        self.settled = true;
        settle(
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
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let acker = self.acker.clone();
            runtime.spawn(async move {
                let _ = acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_to_two_digits() {
        assert_eq!(delay_bucket(Duration::ZERO), 0);
        assert_eq!(delay_bucket(Duration::from_micros(1)), 1);
        assert_eq!(delay_bucket(Duration::from_millis(99)), 99);
        assert_eq!(delay_bucket(Duration::from_millis(1000)), 1000);
        assert_eq!(delay_bucket(Duration::from_millis(1001)), 1100);
        assert_eq!(delay_bucket(Duration::from_millis(45_678)), 46_000);
        assert_eq!(delay_bucket(Duration::from_secs(3600)), 3_600_000);
        assert!(delay_bucket(Duration::from_secs(u64::MAX)) <= u32::MAX as u64);
    }

    #[test]
    fn url_options_are_taken_out() {
        let c = Config::parse(
            "amqp://u:secret@h:5672/%2f?queue_type=quorum&heartbeat=10&connect_timeout_ms=500",
        )
        .unwrap();
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.uri, "amqp://u:secret@h:5672/%2f?heartbeat=10");
        assert!(!c.redacted.contains("secret"));
    }

    #[test]
    fn bad_urls_do_not_echo_passwords() {
        for url in [
            "amqp://u:secret@h:5672/%2f?queue_type=fast",
            "amqp://u:secret@h:notaport/",
            "amqp://u:secret@h/?connect_timeout_ms=soon",
        ] {
            let e = Config::parse(url).err().expect(url).to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
