//! Redis notifier: [`RedisNotifier`], statuses over pub/sub and final results under
//! `ivy:result:<task id>`.
//!
//! Owns only the transport; what a payload means is the runtime's business. Pub/sub loses
//! whatever is published while a subscriber is disconnected, so a subscription yields
//! [`Incoming::Gap`] after each reconnect, and the producer re-reads final results with
//! [`Notifier::fetch`]. Subscriptions use RESP3 (Redis 6 or later) and their own connection,
//! which resubscribes by itself after a reconnect.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ivy_core::url::ParsedUrl;
use ivy_core::{Error, Incoming, Notifier, Result, Subscription, TaskId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, Msg, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::failure::Failures;

const FAILURE: Failures = Failures::of("redis");

/// The key prefix of stored final results.
pub const RESULT_KEY_PREFIX: &str = "ivy:result:";

/// redis-rs times a response out after 500 ms by default, which a large result on a busy server
/// can exceed; nothing here blocks on the server, so a few seconds is still a failure signal.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts per reconnect of redis-rs's connection manager. Few, because every use of a
/// failed connection starts another round (and subscriptions poke theirs), while a client
/// that cannot connect at start-up should say so soon.
const RECONNECT_ATTEMPTS: usize = 3;
/// The most ids read by one `MGET`.
const MGET_CHUNK: usize = 512;
/// How often a disconnected subscription pokes its connection, which makes the connection
/// manager try again once its own retries are used up.
const POKE_EVERY: Duration = Duration::from_secs(1);

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(RECONNECT_ATTEMPTS)
}

fn backend(e: redis::RedisError) -> Error {
    FAILURE.client(e)
}

fn result_key(task_id: &str) -> String {
    format!("{RESULT_KEY_PREFIX}{task_id}")
}

/// Redis notifier. Cheap to clone: clones share one multiplexed connection for commands; each
/// subscription has a connection of its own.
///
/// ```no_run
/// # async fn demo() -> ivy_core::Result<()> {
/// use ivy_backends::redis::RedisNotifier;
/// let notifier = RedisNotifier::connect("redis://127.0.0.1:6379").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisNotifier {
    commands: ConnectionManager,
    /// Boxed: a client holds the whole parsed URL, which clones need not copy.
    client: Arc<Client>,
    redacted: Arc<str>,
}

impl fmt::Debug for RedisNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisNotifier")
            .field("url", &self.redacted)
            .finish_non_exhaustive()
    }
}

impl RedisNotifier {
    /// Connects to `redis://[[user]:password@]host[:port][/db]` or `rediss://…` (TLS).
    pub async fn connect(url: &str) -> Result<Self> {
        let bad = |reason: String| ivy_core::url::error(url, reason);
        let parsed = match ParsedUrl::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "redis" | "rediss") => parsed,
            Ok(_) => return Err(bad("expected a redis:// or rediss:// URL".into())),
            Err(e) => return Err(bad(format!("malformed Redis URL: {e}"))),
        };
        let redacted = parsed.redacted();
        // redis-rs reads the URL itself (database, username, TLS options), as given.
        let info = url.into_connection_info().map_err(|e| {
            // redis-rs's parse errors do not quote the URL, but stay on the safe side.
            bad(format!("malformed Redis URL ({:?})", e.kind()))
        })?;
        // RESP3 lets subscriptions and commands share the protocol's push channel and lets the
        // manager notice a dropped connection by itself.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))
            .map_err(|e| bad(format!("unusable Redis URL ({:?})", e.kind())))?;
        let commands = ConnectionManager::new_with_config(client.clone(), manager_config())
            .await
            .map_err(backend)?;
        Ok(RedisNotifier {
            commands,
            client: Arc::new(client),
            redacted: redacted.into(),
        })
    }
}

impl RedisNotifier {
    /// Runs `query`, once more if the connection turned out to be dead: the connection
    /// manager reconnects only when a command fails, so after an outage the first command
    /// would fail although Redis is back. A failure says `what` failed and where.
    async fn query<T, F>(&self, what: &str, query: impl Fn(ConnectionManager) -> F) -> Result<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let failed = |e| FAILURE.caused(format!("{what} at {} failed", self.redacted), e);
        match query(self.commands.clone()).await {
            Err(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() =>
            {
                debug!(error = %e, "Redis command failed; retrying once");
                query(self.commands.clone()).await.map_err(failed)
            }
            other => other.map_err(failed),
        }
    }
}

impl Notifier for RedisNotifier {
    type Subscription = RedisSubscription;

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        let cmd = &cmd;
        self.query(
            "publishing a notification to Redis",
            |mut conn| async move { cmd.query_async(&mut conn).await },
        )
        .await
    }

    async fn publish_final(
        &self,
        channel: &str,
        task_id: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        // One round trip; the store comes first so a subscriber that misses the publish finds
        // the result with `fetch`.
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(result_key(task_id))
            .arg(&payload)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("PUBLISH")
            .arg(channel)
            .arg(&payload)
            .ignore();
        let pipe = &pipe;
        self.query("storing a result in Redis", |mut conn| async move {
            pipe.query_async(&mut conn).await
        })
        .await
    }

    async fn fetch(&self, task_id: &str) -> Result<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(result_key(task_id));
        let cmd = &cmd;
        self.query(
            "reading a stored result from Redis",
            |mut conn| async move { cmd.query_async(&mut conn).await },
        )
        .await
    }

    async fn fetch_many(&self, task_ids: &[TaskId]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut found = Vec::with_capacity(task_ids.len());
        // One MGET per chunk: one round trip for a usual gap, while a huge one does not hold
        // the server (single-threaded) in one command.
        for ids in task_ids.chunks(MGET_CHUNK) {
            let mut cmd = redis::cmd("MGET");
            for id in ids {
                cmd.arg(result_key(id));
            }
            let cmd = &cmd;
            let values: Vec<Option<Vec<u8>>> = self
                .query("reading stored results from Redis", |mut conn| async move {
                    cmd.query_async(&mut conn).await
                })
                .await?;
            found.extend(values);
        }
        Ok(found)
    }

    async fn subscribe(&self, channel: &str) -> Result<RedisSubscription> {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = manager_config()
            .set_push_sender(tx)
            .set_automatic_resubscription();
        let mut manager = ConnectionManager::new_with_config(Client::clone(&self.client), config)
            .await
            .map_err(backend)?;
        manager.subscribe(channel).await.map_err(backend)?;
        Ok(RedisSubscription {
            manager,
            rx,
            channel: channel.to_owned(),
            connected: true,
        })
    }
}

/// A subscription to one Redis channel, on its own connection.
pub struct RedisSubscription {
    manager: ConnectionManager,
    rx: mpsc::UnboundedReceiver<PushInfo>,
    channel: String,
    /// False from a disconnect until the subscription is restored.
    connected: bool,
}

impl fmt::Debug for RedisSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSubscription")
            .field("channel", &self.channel)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl RedisSubscription {
    /// Drives a reconnect: the connection manager gives up after a few attempts and tries
    /// again only when used. Once Redis answers, makes sure the subscription is back even if
    /// the manager's own resubscription failed; its confirmation ends the gap.
    async fn poke(&mut self) {
        let ping = redis::cmd("PING")
            .query_async::<()>(&mut self.manager)
            .await;
        match ping {
            Ok(()) => {
                if let Err(e) = self.manager.subscribe(&self.channel).await {
                    debug!(error = %e, "resubscribe failed");
                }
            }
            Err(e) => debug!(error = %e, "Redis still unreachable"),
        }
    }

    fn is_ours(&self, push: &PushInfo) -> bool {
        matches!(push.data.first(), Some(redis::Value::BulkString(name)) if name == self.channel.as_bytes())
    }
}

impl Subscription for RedisSubscription {
    async fn next(&mut self) -> Option<Result<Incoming>> {
        loop {
            let push = if self.connected {
                self.rx.recv().await
            } else {
                tokio::select! {
                    push = self.rx.recv() => push,
                    () = tokio::time::sleep(POKE_EVERY) => {
                        self.poke().await;
                        continue;
                    }
                }
            };
            // The manager, which holds the sender, lives as long as `self`.
            let push = push?;
            match push.kind {
                PushKind::Disconnection if self.connected => {
                    warn!(channel = %self.channel, "Redis subscription lost; reconnecting");
                    self.connected = false;
                }
                PushKind::Subscribe if !self.connected && self.is_ours(&push) => {
                    info!(channel = %self.channel, "Redis subscription restored");
                    self.connected = true;
                    return Some(Ok(Incoming::Gap));
                }
                PushKind::Message if self.is_ours(&push) => {
                    if let Some(msg) = Msg::from_push_info(push) {
                        return Some(Ok(Incoming::Message(msg.get_payload_bytes().to_vec())));
                    }
                }
                _ => {}
            }
        }
    }
}
