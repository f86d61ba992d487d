//! A Redis subscription ([`RedisSubscription`]): one channel on a connection of its own, which
//! resubscribes after a reconnect, reports gaps, and checks an idle connection with a `PING`.
//! On a single server the connection manager reconnects and resubscribes by itself; with
//! Sentinel a lost connection is replaced by one to the primary the sentinels name then; on a
//! cluster the channel is sharded (`SSUBSCRIBE`) and subscribed again after every disconnect,
//! since redis-rs alone resubscribes after only some failovers.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ivy_core::{Error, Incoming, Result, Subscription};
use redis::aio::{
    AsyncPushSender, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, SendError,
};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Msg, PushInfo, PushKind, RedisResult};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::conn::Source;
use super::{
    backend, manager_config, FAILURE, HEALTH_CHECK_AFTER, PING_TIMEOUT, POKE_EVERY, PUSH_BUFFER,
};

impl Source {
    /// A new connection whose pushes go to `sink`; on a single server, `lazy`: connected on
    /// first use.
    async fn open(&self, sink: &PushSink, lazy: bool) -> RedisResult<SubConn> {
        match self {
            Source::Single(client) if lazy => {
                ConnectionManager::new_lazy_with_config(Client::clone(client), sink.config())
                    .map(SubConn::Single)
            }
            Source::Single(client) => {
                ConnectionManager::new_with_config(Client::clone(client), sink.config())
                    .await
                    .map(SubConn::Single)
            }
            Source::Sentinel(resolver) => resolver
                .connect(AsyncConnectionConfig::new().set_push_sender(sink.clone()))
                .await
                .map(SubConn::Sentinel),
            Source::Cluster(settings) => {
                let client = settings.builder().push_sender(sink.clone()).build()?;
                client.get_async_connection().await.map(SubConn::Cluster)
            }
        }
    }
}

/// A subscription's connection, of the kind its [`Source`] makes.
enum SubConn {
    Single(ConnectionManager),
    Sentinel(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl SubConn {
    async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            SubConn::Single(c) => c.subscribe(channel).await,
            SubConn::Sentinel(c) => c.subscribe(channel).await,
            SubConn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    /// Whether the node serving `channel` answers: a `PING` (on a cluster a keyed read of
    /// the channel's slot, since a `PING` there goes to every node).
    async fn ping(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            SubConn::Single(c) => redis::cmd("PING").query_async(c).await,
            SubConn::Sentinel(c) => redis::cmd("PING").query_async(c).await,
            SubConn::Cluster(c) => redis::cmd("EXISTS").arg(channel).query_async(c).await,
        }
    }
}

/// Hands a connection's pushes to its subscription without ever blocking the connection:
/// when the subscription lags [`PUSH_BUFFER`] pushes behind, further ones are dropped and the
/// subscription reports a gap instead. Each push is tagged with the generation of the
/// connection it came from, so pushes of a connection given up on are ignored.
#[derive(Clone)]
struct PushSink {
    tx: mpsc::Sender<(u64, PushInfo)>,
    generation: u64,
    overflowed: Arc<AtomicBool>,
}

impl PushSink {
    fn config(&self) -> ConnectionManagerConfig {
        manager_config()
            .set_push_sender(self.clone())
            .set_automatic_resubscription()
    }
}

impl AsyncPushSender for PushSink {
    fn send(&self, info: PushInfo) -> std::result::Result<(), SendError> {
        match self.tx.try_send((self.generation, info)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Relaxed);
                Err(SendError)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError),
        }
    }
}

/// A subscription to one Redis channel, on its own connection.
///
/// It learns of a closed connection from the client's disconnect push, and of a connection
/// that stays open but no longer answers (a frozen server, a dropped network path) by a
/// `PING` after a few seconds without news: then it reports an error, replaces the
/// connection and, once subscribed again, a gap.
pub struct RedisSubscription {
    /// `None` from giving a connection up until a new one is made.
    conn: Option<SubConn>,
    source: Arc<Source>,
    redacted: Arc<str>,
    sink: PushSink,
    rx: mpsc::Receiver<(u64, PushInfo)>,
    channel: String,
    /// False from a disconnect until the subscription is restored.
    connected: bool,
    /// Whether the confirmation of the first subscribe is still to come (a cluster's later
    /// confirmations are resubscriptions redis-rs made by itself, after which messages may be
    /// missing).
    first_confirmation: bool,
    interruptions: u64,
}

impl fmt::Debug for RedisSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSubscription")
            .field("channel", &self.channel)
            .field("connected", &self.connected)
            .field("interruptions", &self.interruptions)
            .finish_non_exhaustive()
    }
}

impl RedisSubscription {
    /// Subscribes to `channel` on a new connection.
    pub(super) async fn open(
        source: Arc<Source>,
        redacted: Arc<str>,
        channel: &str,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(PUSH_BUFFER);
        let sink = PushSink {
            tx,
            generation: 0,
            overflowed: Arc::new(AtomicBool::new(false)),
        };
        let mut conn = source.open(&sink, false).await.map_err(backend)?;
        conn.subscribe(channel).await.map_err(backend)?;
        Ok(RedisSubscription {
            conn: Some(conn),
            source,
            redacted,
            sink,
            rx,
            channel: channel.to_owned(),
            connected: true,
            first_confirmation: true,
            interruptions: 0,
        })
    }

    /// How many times this subscription found its connection lost or unresponsive.
    pub fn interruptions(&self) -> u64 {
        self.interruptions
    }

    fn is_cluster(&self) -> bool {
        matches!(*self.source, Source::Cluster(_))
    }

    /// Whether Redis answers a `PING` on this subscription's connection in time.
    async fn answers(&mut self) -> std::result::Result<(), String> {
        let Some(conn) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        match tokio::time::timeout(PING_TIMEOUT, conn.ping(&self.channel)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer to PING within {PING_TIMEOUT:?}")),
        }
    }

    /// Drives a reconnect: the connection manager gives up after a few attempts and tries
    /// again only when used; a Sentinel or cluster connection given up on is made anew here.
    /// Once Redis answers, makes sure the subscription is back even if the client's own
    /// resubscription failed (or, on a cluster, never came); its confirmation ends the gap.
    async fn poke(&mut self) {
        if self.conn.is_none() {
            let opened =
                tokio::time::timeout(PING_TIMEOUT, self.source.open(&self.sink, true)).await;
            match opened {
                Ok(Ok(conn)) => self.conn = Some(conn),
                Ok(Err(e)) => return debug!(error = %e, "Redis still unreachable"),
                Err(_) => return debug!("Redis still unreachable (connecting timed out)"),
            }
        }
        // A cluster's keyed check and its subscribe go to the same node: one is enough.
        if !self.is_cluster() {
            if let Err(e) = self.answers().await {
                return debug!(error = %e, "Redis still unreachable");
            }
        }
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = conn.subscribe(&self.channel).await {
                debug!(error = %e, "resubscribe failed");
            }
        }
    }

    /// Gives up the connection: one that is open but does not answer (the connection
    /// manager would keep it, since nothing closed it), or a Sentinel connection whose
    /// primary is gone. A new one replaces it when [`poke`](Self::poke) next runs; pushes of
    /// the old one are ignored from now on.
    fn give_up_connection(&mut self) {
        self.connected = false;
        self.sink.generation += 1;
        self.conn = None;
    }

    fn not_answering(&mut self, why: String) -> Error {
        self.interruptions += 1;
        self.give_up_connection();
        let url = &self.redacted;
        warn!(channel = %self.channel, %url, reason = %why, "Redis subscription not answering; reconnecting");
        FAILURE.error(format!(
            "the Redis subscription at {url} stopped answering ({why}); reconnecting"
        ))
    }

    fn is_ours(&self, push: &PushInfo) -> bool {
        matches!(push.data.first(), Some(redis::Value::BulkString(name)) if name == self.channel.as_bytes())
    }
}

impl Subscription for RedisSubscription {
    async fn next(&mut self) -> Option<Result<Incoming>> {
        loop {
            if self.sink.overflowed.swap(false, Ordering::Relaxed) {
                warn!(channel = %self.channel, "Redis notifications came faster than read; some were dropped");
                return Some(Ok(Incoming::Gap));
            }
            let wait = if self.connected {
                HEALTH_CHECK_AFTER
            } else {
                POKE_EVERY
            };
            let (generation, push) = tokio::select! {
                push = self.rx.recv() => push?,
                () = tokio::time::sleep(wait) => {
                    if !self.connected {
                        self.poke().await;
                    } else if let Err(why) = self.answers().await {
                        return Some(Err(self.not_answering(why)));
                    }
                    continue;
                }
            };
            if generation != self.sink.generation {
                continue; // From a connection given up on.
            }
            match push.kind {
                PushKind::Disconnection if self.connected => {
                    warn!(channel = %self.channel, "Redis subscription lost; reconnecting");
                    self.connected = false;
                    self.interruptions += 1;
                    if matches!(*self.source, Source::Sentinel(_)) {
                        // It would reconnect to the same address, where the primary may be
                        // no more: the next poke asks the sentinels.
                        self.give_up_connection();
                    }
                    return Some(Ok(Incoming::Interrupted));
                }
                PushKind::Subscribe | PushKind::SSubscribe if self.is_ours(&push) => {
                    let first = std::mem::replace(&mut self.first_confirmation, false);
                    if !self.connected {
                        info!(channel = %self.channel, "Redis subscription restored");
                        self.connected = true;
                        return Some(Ok(Incoming::Gap));
                    }
                    if !first && self.is_cluster() {
                        // redis-rs resubscribed by itself (a shard's failover) without a
                        // disconnect push: what was published meanwhile is missing.
                        info!(channel = %self.channel, "Redis subscription moved to another node");
                        return Some(Ok(Incoming::Gap));
                    }
                }
                PushKind::Message | PushKind::SMessage if self.is_ours(&push) => {
                    if let Some(msg) = Msg::from_push_info(push) {
                        return Some(Ok(Incoming::Message(msg.get_payload_bytes().to_vec())));
                    }
                }
                _ => {}
            }
        }
    }
}
