//! A Redis subscription ([`RedisSubscription`]): one channel on a connection of its own, which
//! resubscribes after a reconnect, reports gaps, and checks an idle connection with a `PING`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ivy_core::{Error, Incoming, Result, Subscription};
use redis::aio::{AsyncPushSender, ConnectionManager, ConnectionManagerConfig, SendError};
use redis::{Client, Msg, PushInfo, PushKind};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    backend, manager_config, FAILURE, HEALTH_CHECK_AFTER, PING_TIMEOUT, POKE_EVERY, PUSH_BUFFER,
};

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
    manager: ConnectionManager,
    client: Arc<Client>,
    redacted: Arc<str>,
    sink: PushSink,
    rx: mpsc::Receiver<(u64, PushInfo)>,
    channel: String,
    /// False from a disconnect until the subscription is restored.
    connected: bool,
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
        client: Arc<Client>,
        redacted: Arc<str>,
        channel: &str,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(PUSH_BUFFER);
        let sink = PushSink {
            tx,
            generation: 0,
            overflowed: Arc::new(AtomicBool::new(false)),
        };
        let mut manager = ConnectionManager::new_with_config(Client::clone(&client), sink.config())
            .await
            .map_err(backend)?;
        manager.subscribe(channel).await.map_err(backend)?;
        Ok(RedisSubscription {
            manager,
            client,
            redacted,
            sink,
            rx,
            channel: channel.to_owned(),
            connected: true,
            interruptions: 0,
        })
    }

    /// How many times this subscription found its connection lost or unresponsive.
    pub fn interruptions(&self) -> u64 {
        self.interruptions
    }

    /// Whether Redis answers a `PING` on this subscription's connection in time.
    async fn answers(&mut self) -> std::result::Result<(), String> {
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<()>(&mut self.manager);
        match tokio::time::timeout(PING_TIMEOUT, ping).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer to PING within {PING_TIMEOUT:?}")),
        }
    }

    /// Drives a reconnect: the connection manager gives up after a few attempts and tries
    /// again only when used. Once Redis answers, makes sure the subscription is back even if
    /// the manager's own resubscription failed; its confirmation ends the gap.
    async fn poke(&mut self) {
        match self.answers().await {
            Ok(()) => {
                if let Err(e) = self.manager.subscribe(&self.channel).await {
                    debug!(error = %e, "resubscribe failed");
                }
            }
            Err(e) => debug!(error = %e, "Redis still unreachable"),
        }
    }

    /// Gives up on a connection that is open but does not answer: the connection manager
    /// would keep it, since nothing closed it. A new one, made on first use, replaces it.
    fn replace_connection(&mut self, why: String) -> Error {
        self.connected = false;
        self.interruptions += 1;
        self.sink.generation += 1;
        let url = &self.redacted;
        warn!(channel = %self.channel, %url, reason = %why, "Redis subscription not answering; reconnecting");
        match ConnectionManager::new_lazy_with_config(
            Client::clone(&self.client),
            self.sink.config(),
        ) {
            Ok(manager) => self.manager = manager,
            // Only a configuration error, which the first connection would have met.
            Err(e) => debug!(error = %e, "could not set up a new Redis connection"),
        }
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
                        return Some(Err(self.replace_connection(why)));
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
                    return Some(Ok(Incoming::Interrupted));
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
