//! How the notifier's commands reach Redis, whatever the deployment: [`Commands`] holds one
//! kind of connection (a single server, a primary found through Sentinel, a cluster) and hands
//! out a [`Conn`] per command, so the rest of the notifier is one code path.
//!
//! - one server: redis-rs's `ConnectionManager`, which reconnects by itself;
//! - Sentinel: a multiplexed connection to the primary the sentinels name. A connection to a
//!   fixed address would not follow a failover (it reconnects to the dead primary, or to the
//!   old one come back as a replica), so a connection that fails, or answers `READONLY`, is
//!   dropped and the next command asks the sentinels again (the Sentinel client spec's rule);
//! - a cluster: redis-rs's cluster connection, which follows `MOVED` and failovers itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ivy_core::Result;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, ErrorKind, Pipeline, ProtocolVersion,
    RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tracing::{debug, info};

use super::topology::{self, ClusterTarget, SentinelTarget};
use super::{RedisNotifier, CONNECTION_TIMEOUT, FAILURE, RESPONSE_TIMEOUT};

/// The longest a look-up of the primary through the sentinels may take, connection to the
/// primary included: each sentinel is asked in turn, each within the connection timeout.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed look-up of the primary answers the commands that waited for it, or come
/// meanwhile, instead of a look-up of their own.
const FAILED_LOOKUP_COUNTS: Duration = Duration::from_millis(200);

/// One command's connection: a cheap clone of the current one.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Sentinel(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The notifier's command connection, of one of three kinds. Cheap to clone.
#[derive(Clone)]
pub(super) enum Commands {
    Single(ConnectionManager),
    Sentinel(Arc<SentinelCommands>),
    Cluster(Arc<ClusterCommands>),
}

impl Commands {
    /// Whether keys may live on different nodes: multi-key commands and pipelines must then be
    /// split, and pub/sub is sharded.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Commands::Cluster(_))
    }

    /// A connection for one command, and the generation to name when it fails.
    pub(super) async fn conn(&self) -> RedisResult<(Conn, u64)> {
        match self {
            Commands::Single(c) => Ok((Conn::Single(c.clone()), 0)),
            Commands::Sentinel(s) => s.conn().await.map(|(c, g)| (Conn::Sentinel(c), g)),
            Commands::Cluster(c) => c.conn().await.map(|(c, g)| (Conn::Cluster(c), g)),
        }
    }

    /// Learns of a command's failure on the connection of `generation`: a Sentinel
    /// connection that failed is given up, so that the next command asks the sentinels.
    pub(super) fn failed(&self, generation: u64, e: &RedisError) {
        if !lost_primary(e) {
            return;
        }
        match self {
            Commands::Sentinel(s) => s.give_up(generation),
            Commands::Cluster(c) => c.renew(generation),
            Commands::Single(_) => {}
        }
    }
}

/// Whether `e` says the connection no longer reaches a working primary.
pub(super) fn lost_primary(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
        || e.kind() == ErrorKind::Server(ServerErrorKind::MasterDown)
}

/// Finds the current primary through the sentinels.
pub(super) struct SentinelResolver {
    sentinel: tokio::sync::Mutex<Sentinel>,
    master: String,
    node: SentinelNodeConnectionInfo,
}

impl SentinelResolver {
    pub(super) fn new(
        sentinels: Vec<ConnectionInfo>,
        master: String,
        node: SentinelNodeConnectionInfo,
    ) -> RedisResult<Self> {
        Ok(SentinelResolver {
            sentinel: tokio::sync::Mutex::new(Sentinel::build(sentinels)?),
            master,
            node,
        })
    }

    /// A client for the current primary (redis-rs checks that it says `ROLE` master).
    pub(super) async fn primary(&self) -> RedisResult<Client> {
        let mut sentinel = self.sentinel.lock().await;
        let lookup = sentinel.async_master_for(&self.master, Some(&self.node));
        match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(client) => client,
            Err(_) => Err(RedisError::from((
                ErrorKind::Io,
                "no sentinel named a primary in time",
            ))),
        }
    }

    /// A new connection to the current primary with `config`.
    pub(super) async fn connect(
        &self,
        config: AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        let client = self.primary().await?;
        let config = config
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        debug!(primary = %client.get_connection_info().addr(), master = %self.master, "connected to the primary the sentinels name");
        Ok(conn)
    }
}

/// The command connection of a Sentinel deployment: the current primary's, made on first use
/// and given up when it fails.
pub(super) struct SentinelCommands {
    pub(super) resolver: Arc<SentinelResolver>,
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// One look-up at a time: the commands that find no connection wait for it.
    connecting: tokio::sync::Mutex<Lookups>,
}

impl SentinelCommands {
    pub(super) async fn new(resolver: Arc<SentinelResolver>) -> RedisResult<Self> {
        let commands = SentinelCommands {
            resolver,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(Lookups::default()),
        };
        commands.conn().await?;
        Ok(commands)
    }

    fn current(&self) -> Option<(MultiplexedConnection, u64)> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.as_ref().map(|(g, c)| (c.clone(), *g))
    }

    async fn conn(&self) -> RedisResult<(MultiplexedConnection, u64)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let mut lookups = self.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current); // Made while this one waited.
        }
        // A look-up that failed while this one waited answers it too: with the sentinels or
        // the primary gone, each command waiting its turn for a look-up of its own would
        // wait for all those before it.
        if let Some(failed) = lookups.failed_at {
            if failed.elapsed() < FAILED_LOOKUP_COUNTS {
                return Err(RedisError::from((
                    ErrorKind::Io,
                    "no primary found through the sentinels a moment ago",
                )));
            }
        }
        let conn = match self.resolver.connect(AsyncConnectionConfig::new()).await {
            Ok(conn) => conn,
            Err(e) => {
                lookups.failed_at = Some(Instant::now());
                return Err(e);
            }
        };
        lookups.failed_at = None;
        lookups.made += 1;
        let made = (lookups.made, conn.clone());
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(made);
        if lookups.made > 1 {
            info!(master = %self.resolver.master, "Redis commands follow the primary the sentinels name now");
        }
        Ok((conn, lookups.made))
    }

    fn give_up(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(&*current, Some((g, _)) if *g == generation) {
            debug!(master = %self.resolver.master, "giving up the connection to the primary; asking the sentinels again");
            *current = None;
        }
    }
}

/// The command connection of a Redis Cluster: redis-rs's, made again when a command on it
/// fails for want of a node. After a primary's failover, the chaos run saw a connection keep
/// timing out on the failed shard's keys for 40 s and more while new connections (the
/// workers') worked: a new one reads the slots afresh from the seed nodes.
pub(super) struct ClusterCommands {
    settings: ClusterSettings,
    current: Mutex<(u64, ClusterConnection)>,
    /// The generation whose connection failed, if it is still current.
    stale: Mutex<Option<u64>>,
    /// One renewal at a time, and at most one per [`RENEW_EVERY`].
    renewing: tokio::sync::Mutex<Option<Instant>>,
}

/// The longest a command on a cluster may take, retries and redirects included.
const CLUSTER_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The least time between two renewals of a cluster connection.
const RENEW_EVERY: Duration = Duration::from_secs(1);

impl ClusterCommands {
    fn current(&self) -> (ClusterConnection, u64) {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (current.1.clone(), current.0)
    }

    async fn conn(&self) -> RedisResult<(ClusterConnection, u64)> {
        let (conn, generation) = self.current();
        let stale = *self.stale.lock().unwrap_or_else(|e| e.into_inner()) == Some(generation);
        if !stale {
            return Ok((conn, generation));
        }
        let Ok(mut renewed_at) = self.renewing.try_lock() else {
            // Another command is renewing it: use the old one meanwhile.
            return Ok((conn, generation));
        };
        if renewed_at.is_some_and(|t| t.elapsed() < RENEW_EVERY) || self.current().1 != generation {
            return Ok(self.current());
        }
        *renewed_at = Some(Instant::now());
        let fresh = tokio::time::timeout(RESOLVE_TIMEOUT, async {
            self.settings
                .builder()
                .build()?
                .get_async_connection()
                .await
        })
        .await;
        match fresh {
            Ok(Ok(fresh)) => {
                let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
                *current = (generation + 1, fresh.clone());
                info!("Redis Cluster commands on a new connection (the slots read afresh)");
                Ok((fresh, generation + 1))
            }
            // The cluster still refuses (no majority, slots uncovered): the old one, and
            // another try at the next failure.
            _ => Ok((conn, generation)),
        }
    }

    /// Learns that a command on the connection of `generation` failed for want of a node.
    fn renew(&self, generation: u64) {
        *self.stale.lock().unwrap_or_else(|e| e.into_inner()) = Some(generation);
    }
}

/// Where a subscription's connections go.
pub(crate) enum Source {
    /// Boxed: a client holds the whole parsed URL.
    Single(Box<Client>),
    Sentinel(Arc<SentinelResolver>),
    Cluster(ClusterSettings),
}

/// The look-ups of a [`SentinelCommands`]: how many connections it made (their generations),
/// and when the last one failed.
#[derive(Default)]
struct Lookups {
    made: u64,
    failed_at: Option<Instant>,
}

/// A cluster's seed nodes and the settings every connection to it shares.
pub(super) struct ClusterSettings {
    pub(super) nodes: Vec<ConnectionInfo>,
}

impl ClusterSettings {
    /// A client builder: RESP3 (sharded subscriptions' pushes), Ivy's timeouts, and retries
    /// that outlast a failover (the cluster refuses queries about 1 s, a replica takes over
    /// 2-3 s after its primary died with `cluster-node-timeout 1000`) but stay bounded.
    pub(super) fn builder(&self) -> ClusterClientBuilder {
        ClusterClientBuilder::new(self.nodes.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(CONNECTION_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(8)
            .min_retry_wait(100)
            .max_retry_wait(1000)
            // A command that outlasts a failover's 2-3 s by this much is stuck: the caller
            // retries on a new connection (`ClusterCommands`).
            .overall_response_timeout(Some(CLUSTER_COMMAND_TIMEOUT))
    }
}

impl RedisNotifier {
    /// [`RedisNotifier::connect`] for `redis+sentinel://`: finds the primary now, so that
    /// unreachable sentinels or a master name they do not know fail here.
    pub(super) async fn connect_sentinel(url: &str) -> Result<Self> {
        let target = SentinelTarget::parse(url)?;
        let redacted = target.redacted;
        let master = target.master;
        let resolver = SentinelResolver::new(target.sentinels, master.clone(), target.node)
            .map_err(|e| {
                topology::refuse(url, format!("unusable sentinel list ({:?})", e.kind()))
            })?;
        let resolver = Arc::new(resolver);
        let commands = SentinelCommands::new(resolver.clone()).await.map_err(|e| {
            let message = if e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel {
                format!("the sentinels at {redacted} know no primary named `{master}`")
            } else {
                format!(
                    "could not reach the primary `{master}` through the sentinels at {redacted}"
                )
            };
            FAILURE.caused(message, e)
        })?;
        Ok(RedisNotifier {
            commands: Commands::Sentinel(Arc::new(commands)),
            source: Arc::new(Source::Sentinel(resolver)),
            redacted: redacted.into(),
            wait: target.wait,
            names: target.names,
        })
    }

    /// [`RedisNotifier::connect`] for `redis+cluster://`: reads the cluster's slots now, so
    /// that unreachable nodes or a server not in cluster mode fail here.
    pub(super) async fn connect_cluster(url: &str) -> Result<Self> {
        let target = ClusterTarget::parse(url)?;
        let redacted = target.redacted;
        let settings = ClusterSettings {
            nodes: target.nodes,
        };
        let client = settings
            .builder()
            .build()
            .map_err(|e| topology::refuse(url, format!("unusable node list ({:?})", e.kind())))?;
        let commands = client.get_async_connection().await.map_err(|e| {
            // redis-rs passes the server's `CLUSTER SLOTS` refusal on as a plain response
            // error, with no kind of its own: its text is all there is.
            let message = if e.to_string().contains("cluster support disabled") {
                format!("the server at {redacted} is not in cluster mode (use redis:// for a single server)")
            } else {
                format!("could not connect to the Redis Cluster at {redacted}")
            };
            FAILURE.caused(message, e)
        })?;
        let commands = ClusterCommands {
            settings: ClusterSettings {
                nodes: settings.nodes.clone(),
            },
            current: Mutex::new((0, commands)),
            stale: Mutex::new(None),
            renewing: tokio::sync::Mutex::new(None),
        };
        Ok(RedisNotifier {
            commands: Commands::Cluster(Arc::new(commands)),
            source: Arc::new(Source::Cluster(settings)),
            redacted: redacted.into(),
            wait: target.wait,
            names: target.names,
        })
    }
}
