//! Redis notifier: [`RedisNotifier`], statuses over pub/sub and final results under
//! `ivy:result:<task id>`, every name in the deployment's namespace (`redis/namespace.rs`).
//!
//! Owns only the transport; what a payload means is the runtime's business. Pub/sub loses
//! whatever is published while a subscriber is disconnected, so a subscription yields
//! [`Incoming::Gap`](ivy_core::Incoming::Gap) after each reconnect, and the producer re-reads final results with
//! [`Results::fetch`]. Subscriptions use RESP3 (Redis 6 or later) and their own connection,
//! which resubscribes by itself after a reconnect. A connection that stays open but no longer
//! answers sends no disconnect, so an idle subscription checks its own with a `PING`; and a
//! subscription buffers a bounded number of pushes, reporting a gap when it had to drop some
//! (`redis/subscription.rs`). Cancellations and deduplication claims are in `redis/cancel.rs`.
//!
//! Three deployments, one code path: a single server (`redis://`, `rediss://`), a primary
//! watched by Redis Sentinel (`redis+sentinel://`) and a Redis Cluster (`redis+cluster://`);
//! the URL forms are in `redis/topology.rs`, the connections in `redis/conn.rs`, the
//! optional `WAIT` for replicas after the writes a failover must not lose in
//! `redis/durable.rs`. On a cluster, commands whose keys may live on different nodes run one
//! by one instead of as one pipeline (each key's node answers its own), and pub/sub is sharded
//! (`SPUBLISH`, `SSUBSCRIBE`): a plain `PUBLISH` would cross every node of the cluster, and a
//! sharded channel moves with its slot when a replica takes over.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ivy_core::cancel::CancelOutcome;
use ivy_core::url::ParsedUrl;
use ivy_core::{Coordination, Error, Presence, Result, Results, TaskId, Turn};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, FromRedisValue, IntoConnectionInfo,
    ProtocolVersion, TlsCertificates,
};
use tracing::debug;

use crate::failure::Failures;
use crate::tls::{self, TlsFiles};

mod cancel;
mod conn;
mod durable;
mod flow;
mod limits;
mod namespace;
mod subscription;
mod topology;

use conn::{lost_primary, Commands, Conn, Source};
use namespace::Namespace;
pub use topology::{CLUSTER_SCHEME, SENTINEL_SCHEME};

pub use cancel::{CANCEL_INDEX_KEY, CANCEL_KEY_PREFIX, UNIQUE_KEY_PREFIX};
pub use flow::{CLAIM_KEY_PREFIX, DONE_MARKER};
pub use limits::{RATE_KEY_PREFIX, SLOTS_KEY_PREFIX};
pub use subscription::RedisSubscription;

const FAILURE: Failures = Failures::of("redis");

/// The key prefix of stored final results.
pub const RESULT_KEY_PREFIX: &str = "ivy:result:";

/// The key prefix of live workers' announcements (`ivy:worker:<worker id>`, PROTOCOL.md §9).
pub const WORKER_KEY_PREFIX: &str = "ivy:worker:";

/// The sorted set indexing announced workers (member: worker id, score: expiry in ms).
pub const WORKER_INDEX_KEY: &str = "ivy:workers";

/// `ttl` in whole milliseconds for `PX`, which refuses 0.
fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

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
/// After this long without a push, a subscription checks that its connection still answers:
/// a connection that stays open but is dead (a frozen server, a dropped network path) sends
/// no disconnect push. One `PING` per idle period is negligible load.
const HEALTH_CHECK_AFTER: Duration = Duration::from_secs(5);
/// How long a subscription's `PING` may take before the connection counts as dead.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Pushes buffered per subscription; beyond that they are dropped and reported as a gap.
const PUSH_BUFFER: usize = 4096;

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

/// Redis notifier. Cheap to clone: clones share one multiplexed connection for commands (on a
/// cluster, one per node); each subscription has a connection of its own.
///
/// ```no_run
/// # async fn demo() -> ivy_core::Result<()> {
/// use ivy_backends::redis::RedisNotifier;
/// let notifier = RedisNotifier::connect("redis://127.0.0.1:6379").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisNotifier {
    commands: Commands,
    /// Where subscriptions connect. Boxed: a client holds the whole parsed URL, which clones
    /// need not copy.
    source: Arc<Source>,
    redacted: Arc<str>,
    /// `?wait_replicas=`: replicas that must acknowledge the writes a failover must not lose.
    wait: Option<durable::Wait>,
    /// `?prefix=` and the database: what goes before every key and channel name.
    names: Namespace,
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
    ///
    /// `rediss://` checks the server's certificate and host name against the system's roots
    /// (or those of the `SSL_CERT_FILE` / `SSL_CERT_DIR` environment variables), or against
    /// the CA of `?cacertfile=PATH` (PEM) instead. `?certfile=PATH&keyfile=PATH` (PEM,
    /// unencrypted key) give a client certificate for a server that asks for one
    /// (`tls-auth-clients`). A certificate problem (not trusted, not valid for the URL's host,
    /// refused by the server) fails at once, naming the URL; the file options on `redis://`,
    /// `verify=verify_none` and `server_name_indication=` are refused. redis-rs's own
    /// `#insecure` fails too: Ivy never connects without checking the certificate.
    ///
    /// ```no_run
    /// # async fn demo() -> ivy_core::Result<()> {
    /// use ivy_backends::redis::RedisNotifier;
    /// let url = "rediss://:secret@redis.internal:6380?cacertfile=/etc/ivy/ca.pem";
    /// let notifier = RedisNotifier::connect(url).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// A primary watched by Redis Sentinel: `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/<master name>[/<db>]`
    /// lists the sentinels (port 26379 by default); the user info and database are the data
    /// nodes', `?sentinel_username=&sentinel_password=` the sentinels' own credentials, if they
    /// ask for any. Commands and subscriptions follow the primary the sentinels name: after a
    /// failover, the first commands fail (as with a single server that restarts) and
    /// subscriptions report [`Incoming::Interrupted`](ivy_core::Incoming::Interrupted) and then a
    /// gap. A master name the sentinels do not know is an error here.
    ///
    /// A Redis Cluster: `redis+cluster://[[user]:password@]host[:port][,host[:port]…][/]` lists
    /// some of its nodes (port 6379 by default); a server not in cluster mode is an error here.
    /// The keys are the single server's (PROTOCOL.md); pub/sub is sharded (`SPUBLISH`,
    /// `SSUBSCRIBE`), so every producer and worker of a cluster must use this URL form. Neither
    /// form takes TLS yet.
    ///
    /// Deployments sharing one Redis stay apart by their namespace (PROTOCOL.md §3): on any
    /// form, `?prefix=P` puts `P:` before every key and channel name, and on a database `n`
    /// other than 0 channels also get `db<n>:` (pub/sub ignores the database). Database 0
    /// without a prefix keeps the plain names of earlier releases. A producer and its workers
    /// must use the same prefix and database.
    ///
    /// ```no_run
    /// # async fn demo() -> ivy_core::Result<()> {
    /// use ivy_backends::redis::RedisNotifier;
    /// let ha = RedisNotifier::connect("redis+sentinel://10.0.0.1,10.0.0.2,10.0.0.3/mymaster").await?;
    /// let sharded = RedisNotifier::connect("redis+cluster://10.0.1.1:7001,10.0.1.2:7002/").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        match topology::multi_node_scheme(url) {
            Some(SENTINEL_SCHEME) => return Self::connect_sentinel(url).await,
            Some(CLUSTER_SCHEME) => return Self::connect_cluster(url).await,
            Some(_) => return Err(topology::refuse(
                url,
                "TLS is not supported for Sentinel or Cluster URLs yet (use redis+sentinel:// or redis+cluster://)",
            )),
            None => {}
        }
        let bad = |reason: String| ivy_core::url::error(url, reason);
        let parsed = match ParsedUrl::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "redis" | "rediss") => parsed,
            Ok(_) => return Err(bad("expected a redis:// or rediss:// URL".into())),
            Err(e) => return Err(bad(format!("malformed Redis URL: {e}"))),
        };
        let redacted = parsed.redacted();
        let tls = parsed.scheme() == "rediss";
        let files = TlsFiles::from_url(url, &parsed, tls)?;
        // redis-rs reads the URL itself (database, username, TLS options), as given but for
        // the TLS and `wait_` options, which are Ivy's.
        let wait = durable::Wait::from_url(url, &parsed)?;
        let ours: Vec<&str> = tls::OPTIONS
            .iter()
            .chain(&durable::WAIT_OPTIONS)
            .chain(&[namespace::PREFIX_OPTION])
            .copied()
            .collect();
        let given = parsed.without_query_keys(&ours);
        let info = given.as_str().into_connection_info().map_err(|e| {
            // redis-rs's parse errors do not quote the URL, but stay on the safe side.
            bad(format!("malformed Redis URL ({:?})", e.kind()))
        })?;
        let names = Namespace::from_query(parsed.query_pairs(), info.redis_settings().db(), bad)?;
        // RESP3 lets subscriptions and commands share the protocol's push channel and lets the
        // manager notice a dropped connection by itself.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let client = if files.ca.is_some() || files.client.is_some() {
            let certificates = TlsCertificates {
                client_tls: files
                    .client
                    .map(|(client_cert, client_key)| ClientTlsConfig {
                        client_cert,
                        client_key,
                    }),
                root_cert: files.ca,
            };
            Client::build_with_tls(info, certificates)
        } else {
            Client::open(info)
        }
        .map_err(|e| bad(format!("unusable Redis URL ({:?})", e.kind())))?;
        if tls {
            check_handshake(&client, &redacted).await?;
        }
        let commands = ConnectionManager::new_with_config(client.clone(), manager_config())
            .await
            .map_err(|e| FAILURE.caused(format!("could not connect to Redis at {redacted}"), e))?;
        Ok(RedisNotifier {
            commands: Commands::Single(commands),
            source: Arc::new(Source::Single(Box::new(client))),
            redacted: redacted.into(),
            wait,
            names,
        })
    }
}

/// One connection attempt, so that a certificate problem is reported at once: the connection
/// manager would try again a few times first, and then say only that it could not connect.
/// Any other failure is left to the manager, which retries it as usual.
async fn check_handshake(client: &Client, redacted: &str) -> Result<()> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let Err(e) = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
    else {
        return Ok(());
    };
    if let Some(problem) = tls::handshake_problem(&e) {
        // The TLS error follows as the cause, with the details (names, issuer).
        return Err(FAILURE.caused(
            format!("TLS handshake with Redis at {redacted} failed: {problem}"),
            e,
        ));
    }
    if e.kind() == redis::ErrorKind::InvalidClientConfig {
        // E.g. `#insecure`, which this build of redis-rs cannot honour.
        return Err(FAILURE.caused(format!("unusable TLS settings for Redis at {redacted}"), e));
    }
    Ok(())
}

impl RedisNotifier {
    /// Runs `query` once; a failure says `what` failed and where. For a command that must not
    /// run twice: after an I/O error (a response timeout is one) it may have run.
    async fn query_once<T, F>(&self, what: &str, query: impl FnOnce(Conn) -> F) -> Result<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let failed = |e| FAILURE.caused(format!("{what} at {} failed", self.redacted), e);
        let (conn, generation) = self.commands.conn().await.map_err(failed)?;
        query(conn).await.map_err(|e| {
            self.commands.failed(generation, &e);
            failed(e)
        })
    }

    /// Runs `query`, once more if the connection turned out to be dead: the connection
    /// manager reconnects only when a command fails, so after an outage the first command
    /// would fail although Redis is back (and a Sentinel deployment's connection is replaced
    /// only then). A failure says `what` failed and where. Only for commands whose second run
    /// is harmless after a first whose answer was lost: every command and script here is
    /// written so (owner tokens, compare-and-set), but [`query_once`](Self::query_once)'s.
    async fn query<T, F>(&self, what: &str, query: impl Fn(Conn) -> F) -> Result<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let failed = |e| FAILURE.caused(format!("{what} at {} failed", self.redacted), e);
        let (conn, generation) = self.commands.conn().await.map_err(failed)?;
        match query(conn).await {
            Err(e) if lost_primary(&e) => {
                debug!(error = %e, "Redis command failed; retrying once");
                self.commands.failed(generation, &e);
                let (conn, generation) = self.commands.conn().await.map_err(failed)?;
                query(conn).await.map_err(|e| {
                    self.commands.failed(generation, &e);
                    failed(e)
                })
            }
            other => other.map_err(failed),
        }
    }

    /// Runs `cmds` in order and returns their answers: as one pipeline where one connection
    /// reaches every key, one by one on a cluster (a pipeline's keys must share a slot there,
    /// and these name keys of different slots). Not atomic either way; retried as
    /// [`query`](Self::query) is.
    async fn query_each<T: FromRedisValue>(&self, what: &str, cmds: &[Cmd]) -> Result<Vec<T>> {
        let one_by_one = self.commands.is_cluster();
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd.clone());
        }
        let pipe = &pipe;
        self.query(what, |mut conn| async move {
            if !one_by_one {
                return pipe.query_async(&mut conn).await;
            }
            let mut answers = Vec::with_capacity(cmds.len());
            for cmd in cmds {
                answers.push(cmd.query_async(&mut conn).await?);
            }
            Ok(answers)
        })
        .await
    }

    /// [`query_each`](Self::query_each) for commands whose order does not matter: on a
    /// cluster they are sent at once (each node's connection pipelines its share), so a long
    /// list costs about one round trip, not one per command.
    async fn query_all<T: FromRedisValue>(&self, what: &str, cmds: &[Cmd]) -> Result<Vec<T>> {
        if !self.commands.is_cluster() {
            return self.query_each(what, cmds).await;
        }
        self.query(what, |conn| async move {
            let each = cmds.iter().map(|cmd| {
                let mut conn = conn.clone();
                async move { cmd.query_async(&mut conn).await }
            });
            futures_util::future::try_join_all(each).await
        })
        .await
    }

    /// The values of `keys`, in order. One `MGET` per chunk on one server: one round trip for
    /// a usual gap, while a huge one does not hold the server (single-threaded) in one
    /// command. On a cluster, one `GET` per key, sent at once (pipelined per node): redis-rs's
    /// own split of a multi-slot `MGET` hung for 20 s after a primary's failover in the chaos
    /// run, while keyed commands follow the new primary within seconds.
    async fn get_many(&self, what: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MGET_CHUNK) {
            if self.commands.is_cluster() {
                let gets: Vec<Cmd> = chunk
                    .iter()
                    .map(|key| {
                        let mut get = redis::cmd("GET");
                        get.arg(key);
                        get
                    })
                    .collect();
                found.extend(self.query_all::<Option<Vec<u8>>>(what, &gets).await?);
                continue;
            }
            let mut cmd = redis::cmd("MGET");
            cmd.arg(chunk);
            let cmd = &cmd;
            let values: Vec<Option<Vec<u8>>> = self
                .query(
                    what,
                    |mut conn| async move { cmd.query_async(&mut conn).await },
                )
                .await?;
            found.extend(values);
        }
        Ok(found)
    }

    /// `PUBLISH`, or on a cluster `SPUBLISH`: a sharded channel lives on the node of its
    /// slot (and its replicas), where classic pub/sub would cross every node. `channel` is
    /// the runtime's name, without the deployment's prefix.
    fn publish_cmd(&self, channel: &str, payload: &[u8]) -> Cmd {
        let mut cmd = redis::cmd(if self.commands.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        cmd.arg(self.names.channel(channel)).arg(payload);
        cmd
    }
}

impl Results for RedisNotifier {
    type Subscription = RedisSubscription;

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        // Boxed (here and in `publish_final`): with Sentinel and Cluster connections the
        // query's future is KBs, which every event and status a worker publishes would carry
        // (tests/future_sizes.rs).
        Box::pin(async move {
            let cmd = &self.publish_cmd(channel, &payload);
            self.query(
                "publishing a notification to Redis",
                |mut conn| async move { cmd.query_async(&mut conn).await },
            )
            .await
        })
        .await
    }

    async fn publish_final(
        &self,
        channel: &str,
        task_id: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        Box::pin(self.store_and_publish(channel, task_id, payload, ttl)).await
    }

    async fn fetch(&self, task_id: &str) -> Result<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.result_key(task_id));
        let cmd = &cmd;
        self.query(
            "reading a stored result from Redis",
            |mut conn| async move { cmd.query_async(&mut conn).await },
        )
        .await
    }

    async fn fetch_many(&self, task_ids: &[TaskId]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<String> = task_ids.iter().map(|id| self.result_key(id)).collect();
        self.get_many("reading stored results from Redis", &keys)
            .await
    }

    async fn subscribe(&self, channel: &str) -> Result<RedisSubscription> {
        let channel = &self.names.channel(channel);
        RedisSubscription::open(self.source.clone(), self.redacted.clone(), channel).await
    }
}

impl Presence for RedisNotifier {
    async fn announce(&self, worker_id: &str, payload: Vec<u8>, ttl: Duration) -> Result<()> {
        let ttl_ms = px(ttl);
        let worker_index = self.names.key(WORKER_INDEX_KEY);
        // The key expires by itself; the index only saves a SCAN of the whole key space.
        let mut set = redis::cmd("SET");
        set.arg(self.worker_key(worker_id))
            .arg(payload)
            .arg("PX")
            .arg(ttl_ms);
        let mut index = redis::cmd("ZADD");
        index
            .arg(&worker_index)
            .arg(ivy_core::envelope::now_ms().saturating_add(ttl_ms))
            .arg(worker_id);
        let _: Vec<redis::Value> = self
            .query_each("announcing a worker in Redis", &[set, index])
            .await?;
        Ok(())
    }

    async fn withdraw(&self, worker_id: &str) -> Result<()> {
        let mut del = redis::cmd("DEL");
        del.arg(self.worker_key(worker_id));
        let worker_index = self.names.key(WORKER_INDEX_KEY);
        let mut unindex = redis::cmd("ZREM");
        unindex.arg(&worker_index).arg(worker_id);
        let _: Vec<redis::Value> = self
            .query_each(
                "withdrawing a worker's announcement from Redis",
                &[del, unindex],
            )
            .await?;
        Ok(())
    }

    async fn announcements(&self) -> Result<Vec<Vec<u8>>> {
        // Index entries a minute past their expiry go (a minute: other hosts' clocks may
        // differ); whether a worker is live is its key's own TTL, so MGET skips the rest.
        let stale = ivy_core::envelope::now_ms().saturating_sub(60_000);
        let worker_index = self.names.key(WORKER_INDEX_KEY);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&worker_index)
            .arg("-inf")
            .arg(stale)
            .ignore()
            .cmd("ZRANGE")
            .arg(&worker_index)
            .arg(0)
            .arg(-1);
        let pipe = &pipe;
        let (ids,): (Vec<String>,) = self
            .query("listing live workers in Redis", |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        let keys: Vec<String> = ids.iter().map(|id| self.worker_key(id)).collect();
        let values = self
            .get_many("reading live workers from Redis", &keys)
            .await?;
        Ok(values.into_iter().flatten().collect())
    }
}

impl Coordination for RedisNotifier {
    // Workflows (issue 14): in `redis/flow.rs`.
    async fn count_member(&self, set: &str, member: &str, ttl: Duration) -> Result<u64> {
        self.flow_count_member(set, member, ttl).await
    }

    async fn claim(&self, key: &str, owner: &str, lease: Duration) -> Result<ivy_core::Claim> {
        self.fenced_claim(key, owner, lease).await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        self.fenced_release(key, owner).await
    }

    async fn mark_done(&self, key: &str, ttl: Duration) -> Result<()> {
        self.fenced_mark_done(key, ttl).await
    }

    // Cancellation and deduplication (issue 14): in `redis/cancel.rs`.

    async fn cancel(&self, task_id: &str, note: Vec<u8>, ttl: Duration) -> Result<CancelOutcome> {
        self.record_cancel(task_id, note, ttl).await
    }

    async fn is_cancelled(&self, task_id: &str) -> Result<bool> {
        self.cancel_kept(task_id).await
    }

    async fn cancellations(&self) -> Result<Vec<(TaskId, u64)>> {
        self.kept_cancellations().await
    }

    async fn claim_unique(
        &self,
        key: &str,
        id: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<TaskId>> {
        self.claim(key, id, token, ttl).await
    }

    async fn release_unique(&self, key: &str, task_id: &str, token: &str) -> Result<()> {
        self.release(key, task_id, token).await
    }

    // Schedules and limits (issue 15): in redis/limits.rs.
    async fn reserve_turn(&self, task: &str, every: Duration, horizon: Duration) -> Result<Turn> {
        self.reserve_turn_in_redis(task, every, horizon).await
    }

    async fn acquire_slot(&self, task: &str, who: &str, max: u32, lease: Duration) -> Result<bool> {
        self.acquire_slot_in_redis(task, who, max, lease).await
    }

    async fn release_slot(&self, task: &str, holder: &str) -> Result<()> {
        self.release_slot_in_redis(task, holder).await
    }
}
