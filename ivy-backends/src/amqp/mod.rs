//! RabbitMQ (AMQP 0-9-1) broker on [lapin]: [`AmqpBroker`].
//!
//! Owns the mapping of Ivy's queue model onto RabbitMQ and nothing else: envelopes, retries
//! and results are the runtime's business. Per Ivy queue `q` it declares, lazily and
//! idempotently on the default exchange:
//!
//! - `q`: the durable work queue: classic, with `x-max-priority` 9 only when `q` is listed in
//!   `?priority_queues=` (a plain queue costs RabbitMQ less per message), or quorum with
//!   `?queue_type=quorum`, which gives up priorities. A queue that exists with another
//!   `x-max-priority` (declared by an earlier Ivy) is used as it is, with a warning;
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
//! one `Err` from [`Consumer::next`](ivy_core::Consumer::next) and then reconnects and
//! consumes again by itself.

// The broker type and its `Broker` implementation live here; the pieces are in `config`
// (URL options), `topology` (queue names and declarations), `link` (the producer connection
// and confirmed publishing), `consumer` and `delivery`.

mod config;
mod consumer;
mod delivery;
mod inspect;
mod link;
mod topology;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use ivy_core::{Broker, Capabilities, DeadLetter, Error, OutgoingMessage, Result};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::BasicProperties;
use tokio::sync::Mutex;
use tracing::warn;

pub use config::QueueType;
pub use consumer::AmqpConsumer;
pub use delivery::AmqpDelivery;

use crate::failure::Failures;
use config::{Config, MAX_PRIORITY};
use delivery::{check_settled, header_string};
use ivy_core::backoff::Backoff;
use ivy_core::sync::lock;
use link::{connection_lost, pause_before, refused_for_good, Link};
use topology::{check_queue_name, dead_queue, Decl};

const FAILURE: Failures = Failures::of("amqp");

/// The first pause between reconnection attempts, before jitter, and the shortest time a
/// connection attempt is given.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause before jitter. Jitter adds up to as much again, so no pause is longer
/// than 5 s, the longest one before jitter was added.
const MAX_BACKOFF: Duration = Duration::from_millis(2_500);

/// The pauses between attempts to reach RabbitMQ while it is down.
fn reconnect_backoff() -> Backoff {
    Backoff::doubling(MIN_BACKOFF, MAX_BACKOFF)
}

/// The first and the longest pause (before jitter) before a delivery whose retry or dead
/// letter could not be published goes back to its queue. Without a pause a refusal that
/// repeats (a delay queue declared with other arguments) would run the task again as fast
/// as RabbitMQ redelivers it.
const FIRST_HOLD: Duration = Duration::from_millis(500);
const LONGEST_HOLD: Duration = Duration::from_secs(30);

/// The header that carries a dead letter's reason.
pub const REASON_HEADER: &str = "x-ivy-reason";

/// The most bytes of a reason [`REASON_HEADER`] carries, longer ones cut. A message's headers
/// travel in one frame (RabbitMQ's `frame_max` is 128 KiB by default); a header that
/// overflows it closes the connection with FRAME_ERROR, so the dead letter is never confirmed
/// and the call runs again. 4 KiB tells an operator why and leaves the frame room.
pub const REASON_LIMIT: usize = 4 * 1024;

/// RabbitMQ's default `max_message_size` (128 MiB) since 3.8; larger bodies are refused by
/// the server, so they are refused here before sending.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// The default of `?connect_timeout_ms=`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A string argument of a queue declaration or a header.
fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn backend(e: lapin::Error) -> Error {
    FAILURE.client(e)
}

struct Inner {
    config: Config,
    link: Mutex<Option<Link>>,
    generations: AtomicU64,
    /// Per work queue, the backoff of deliveries whose retry or dead letter could not be
    /// published: while it lasts, each such delivery is given back only after a pause.
    unsettleable: StdMutex<HashMap<Arc<str>, Backoff>>,
    /// Queues not in `?priority_queues=` that a call with a priority was sent to (warned once).
    priority_ignored: StdMutex<HashSet<String>>,
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

impl AmqpBroker {
    /// Parses `url` (`amqp://user:pass@host:port/vhost`, `amqps://…`) without connecting:
    /// the first operation connects.
    ///
    /// Ivy's options, in the query string: `queue_type=classic|quorum` (default classic),
    /// `priority_queues=q1,q2` (the classic work queues declared with `x-max-priority` 9, `*`
    /// for all; default none), `connect_timeout_ms=` (how long a publish waits for an
    /// unreachable broker, default 30 000). lapin's own options (`heartbeat=`, `frame_max=`, `connection_timeout=`, …) are
    /// passed on.
    ///
    /// TLS (`amqps://`, RabbitMQ's own URI parameters): the server's certificate and host name
    /// are always checked, against the system's roots (which the `SSL_CERT_FILE` or
    /// `SSL_CERT_DIR` environment variables replace) and the CA certificates of
    /// `cacertfile=PATH` (PEM), trusted besides them. `certfile=PATH&keyfile=PATH` (PEM, the
    /// key unencrypted) give a client certificate for a node that asks for one.
    /// `verify=verify_peer` is accepted; `verify=verify_none` and `server_name_indication=`
    /// are refused, as are the file options on `amqp://`. The files are read here, so a
    /// missing or unreadable one is an [`Error::Url`] now. A certificate the client does not
    /// trust, one not valid for the URL's host, or a client certificate the node refuses fails
    /// the first operation at once (not after the connect timeout), naming the URL.
    ///
    /// ```no_run
    /// # async fn demo() -> ivy_core::Result<()> {
    /// use ivy_backends::amqp::AmqpBroker;
    /// let url = "amqps://ivy:secret@rabbit.internal:5671/%2f?cacertfile=/etc/ivy/ca.pem";
    /// let broker = AmqpBroker::connect(url).await?;
    /// # Ok(()) }
    /// ```
    pub fn from_url(url: &str) -> Result<Self> {
        let config = Config::parse(url)?;
        Ok(AmqpBroker {
            inner: Arc::new(Inner {
                config,
                link: Mutex::new(None),
                generations: AtomicU64::new(0),
                unsettleable: StdMutex::new(HashMap::new()),
                priority_ignored: StdMutex::new(HashSet::new()),
            }),
        })
    }

    /// Like [`from_url`](Self::from_url), then connects (waiting up to the connect timeout),
    /// so an unreachable broker or wrong credentials show up now.
    pub async fn connect(url: &str) -> Result<Self> {
        let broker = Self::from_url(url)?;
        broker.check_reachable().await?;
        Ok(broker)
    }

    /// Opens a connection and closes it again, waiting for RabbitMQ up to the connect
    /// timeout. The producer's connection is opened by the first publish instead: a worker
    /// that never publishes then holds one connection (its consumer's), not two, and each
    /// costs about 8 MiB of resident memory (lapin's buffers, 32 frames each way).
    async fn check_reachable(&self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + self.config().connect_timeout();
        let mut backoff = reconnect_backoff();
        loop {
            match link::connect(self.config(), "ivy check", deadline).await {
                Ok(connection) => {
                    let _ = connection.close(200, "reachable".into()).await;
                    return Ok(());
                }
                Err(e) if connection_lost(&e, None) => {
                    let Some(pause) = pause_before(deadline, &mut backoff) else {
                        return Err(self.unreachable(started.elapsed(), e));
                    };
                    warn!(url = %self.config().redacted(), error = %e, ?pause, "RabbitMQ unreachable; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(self.refused(e)),
            }
        }
    }

    /// The kind of queues this broker declares.
    pub fn queue_type(&self) -> QueueType {
        self.inner.config.queue_type()
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    /// How long to hold a delivery of `queue` whose replacement could not be published
    /// before giving it back: longer with each failure in a row on that queue.
    fn hold_after_failure(&self, queue: &Arc<str>) -> Duration {
        let mut failing = lock(&self.inner.unsettleable);
        failing
            .entry(queue.clone())
            .or_insert_with(|| Backoff::doubling(FIRST_HOLD, LONGEST_HOLD))
            .next_pause()
    }

    /// A replacement for a delivery of `queue` was published: the next failure starts the
    /// backoff afresh.
    fn settled_again(&self, queue: &str) {
        let mut failing = lock(&self.inner.unsettleable);
        if !failing.is_empty() {
            failing.remove(queue);
        }
    }

    /// Warns, once per queue, that a priority went to a queue not declared with priorities.
    fn priority_ignored(&self, queue: &str) {
        let mut warned = lock(&self.inner.priority_ignored);
        if !warned.contains(queue) {
            warned.insert(queue.to_owned());
            warn!(
                queue,
                "a call with a priority was sent to `{queue}`, which is not in the AMQP URL's \
                 `priority_queues`: RabbitMQ ignores its priority unless the queue already \
                 exists as a priority queue"
            );
        }
    }

    /// RabbitMQ refused the connection for a reason that waiting cannot fix.
    fn refused(&self, e: lapin::Error) -> Error {
        let url = self.config().redacted();
        let what = format!("RabbitMQ at {url} refused the connection");
        match e.kind() {
            lapin::ErrorKind::IOError(io) => match crate::tls::handshake_problem(io.as_ref()) {
                // The TLS error follows as the cause, with the details (names, issuer).
                Some(problem) => FAILURE.caused(
                    format!("TLS handshake with RabbitMQ at {url} failed: {problem}"),
                    e,
                ),
                None => FAILURE.caused(what, e),
            },
            // RabbitMQ's reply says it all ("NOT_ALLOWED - vhost x not found"); lapin's
            // error would repeat it twice over.
            lapin::ErrorKind::ProtocolError(amqp) => {
                let reply = amqp.get_message().as_str();
                // "vhost  not found": the URL ends in a bare `/`, which names the empty vhost.
                let hint = if reply.contains("vhost  not found") {
                    "; a URL's path names the vhost and a bare `/` names the empty one: \
                     RabbitMQ's default vhost `/` is written %2f (amqp://host:5672/%2f), or \
                     leave the path out (amqp://host:5672)"
                } else {
                    ""
                };
                FAILURE.error(format!("{what}: {reply}{hint}"))
            }
            _ => FAILURE.caused(what, e),
        }
    }

    fn unreachable(&self, waited: Duration, e: lapin::Error) -> Error {
        FAILURE.caused(
            format!(
                "RabbitMQ at {} unreachable for {waited:?}",
                self.config().redacted()
            ),
            e,
        )
    }
}

impl Broker for AmqpBroker {
    type Delivery = AmqpDelivery;
    type Consumer = AmqpConsumer;

    fn connected_node(&self) -> Option<String> {
        let config = self.config();
        config
            .node_of("ivy consumer")
            .or_else(|| config.node_of("ivy producer"))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(DEFAULT_MAX_MESSAGE_SIZE)
            // `basic.qos` carries the prefetch count in 16 bits.
            .with_max_prefetch(usize::from(u16::MAX))
            // Held deliveries stay unacked until settled, and closing the consumer gives
            // back those never handed out.
            .with_prefetch_ahead(true)
            .with_fifo(true)
            .with_priorities(self.config().all_priorities())
    }

    async fn publish(&self, msg: OutgoingMessage) -> Result<()> {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Ok(id) = ShortString::try_new(msg.id.clone()) {
            properties = properties.with_message_id(id);
        }
        if let (Some(p), QueueType::Classic) = (msg.priority, self.queue_type()) {
            // Sent even to a queue not in `priority_queues`: one that exists as a priority
            // queue (declared by an earlier Ivy) honours it, a plain one ignores it.
            properties = properties.with_priority(p.min(MAX_PRIORITY));
            if !self.config().has_priorities(&msg.queue) {
                self.priority_ignored(&msg.queue);
            }
        }
        self.publish_body(
            &msg.queue,
            &msg.body,
            properties,
            msg.delay.unwrap_or_default(),
        )
        .await
        .map_err(|e| match e {
            // The error says which call it may have.
            Error::PublishOutcomeUnknown {
                backend,
                queue,
                source,
                ..
            } => Error::PublishOutcomeUnknown {
                backend,
                id: Some(msg.id),
                queue,
                source,
            },
            other => other,
        })
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
        let deadline = started + self.config().connect_timeout();
        let mut backoff = reconnect_backoff();
        loop {
            match self.open_session(&queues, prefetch, deadline).await {
                Ok(session) => {
                    return Ok(AmqpConsumer::new(self.clone(), queues, prefetch, session))
                }
                Err(e) if connection_lost(&e, None) => {
                    let Some(pause) = pause_before(deadline, &mut backoff) else {
                        return Err(self.unreachable(started.elapsed(), e));
                    };
                    warn!(url = %self.config().redacted(), error = %e, ?pause, "RabbitMQ unreachable; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(e) if refused_for_good(&e) => return Err(self.refused(e)),
                Err(e) => return Err(FAILURE.caused(format!("could not consume {queues:?}"), e)),
            }
        }
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        check_queue_name(queue)?;
        let deadline = Instant::now() + self.config().connect_timeout();
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
            check_settled(
                delivery.acker.ack(BasicAckOptions::default()).await,
                "ack a dead letter",
            )?;
            letters.push(DeadLetter::new(queue, delivery.data, reason));
        }
        Ok(letters)
    }
}

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("url", &self.inner.config.redacted())
            .field("queue_type", &self.inner.config.queue_type())
            .finish_non_exhaustive()
    }
}
