//! The faults a run injects, and how each is done to the services the run started.

use std::time::{Duration, Instant};

use ivy::backends::{AnyBroker, AnyNotifier};

use crate::services::{self, Clusters, Moto, Rabbit, Redis};
use crate::workers::{WorkerProcess, WorkerSpec};
use crate::BoxError;

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a worker process with tasks running, then start a replacement.
    KillWorker,
    /// `rabbitmqctl stop_app`, held down, then `start_app`.
    RabbitStopApp(Duration),
    /// The whole node stopped (`rabbitmqctl stop`), held down, then booted again with its data.
    RabbitRestart(Duration),
    /// SIGSTOP of the node's `beam.smp`, SIGCONT after the duration.
    RabbitFreeze(Duration),
    /// Redis shut down (its data saved) for the duration, then started again.
    RedisDown(Duration),
    /// moto killed and started again: every queue and message is gone.
    MotoRestart,
    /// SIGKILL of the RabbitMQ cluster node a worker consumes from (as its announcement
    /// says), started again once calls flow.
    KillWorkersNode,
    /// SIGKILL of the RabbitMQ cluster node the producer is connected to, started again once
    /// calls flow.
    KillProducersNode,
    /// SIGKILL of the Redis primary Sentinel watches (Sentinel promotes the replica), started
    /// again as a replica.
    KillSentinelPrimary,
    /// SIGKILL of a Redis Cluster primary (its replica takes over), started again as a replica.
    KillRedisClusterPrimary,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KillWorker => write!(f, "SIGKILL a worker"),
            Fault::RabbitStopApp(d) => {
                write!(f, "RabbitMQ stop_app for {}s, start_app", d.as_secs())
            }
            Fault::RabbitRestart(d) => {
                write!(f, "RabbitMQ node stopped for {}s, restarted", d.as_secs())
            }
            Fault::RabbitFreeze(d) => write!(f, "RabbitMQ frozen (SIGSTOP) for {}s", d.as_secs()),
            Fault::RedisDown(d) => write!(f, "Redis down for {}s", d.as_secs()),
            Fault::MotoRestart => write!(f, "moto restarted (queues gone)"),
            Fault::KillWorkersNode => write!(f, "SIGKILL the RabbitMQ node a worker consumes from"),
            Fault::KillProducersNode => {
                write!(f, "SIGKILL the RabbitMQ node the producer publishes to")
            }
            Fault::KillSentinelPrimary => write!(f, "SIGKILL the Redis primary (Sentinel)"),
            Fault::KillRedisClusterPrimary => write!(f, "SIGKILL a Redis Cluster primary"),
        }
    }
}

impl Fault {
    /// About how long it takes on the 2-core machine, service commands included: the run
    /// spreads the calls it sends during the fault over this time.
    pub fn estimate(&self) -> Duration {
        let s = Duration::from_secs;
        match *self {
            Fault::KillWorker => s(3),
            Fault::RabbitStopApp(d) => d + s(6),
            Fault::RabbitRestart(d) => d + s(15),
            Fault::RabbitFreeze(d) => d + s(1),
            Fault::RedisDown(d) => d + s(1),
            Fault::MotoRestart => s(4),
            Fault::KillWorkersNode | Fault::KillProducersNode => s(15),
            Fault::KillSentinelPrimary | Fault::KillRedisClusterPrimary => s(8),
        }
    }

    /// The name in the summary table.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillWorker => "worker SIGKILL",
            Fault::RabbitStopApp(_) => "RabbitMQ stop_app/start_app",
            Fault::RabbitRestart(_) => "RabbitMQ stop/restart",
            Fault::RabbitFreeze(_) => "RabbitMQ SIGSTOP/SIGCONT",
            Fault::RedisDown(_) => "Redis down",
            Fault::MotoRestart => "moto restart",
            Fault::KillWorkersNode => "worker's RabbitMQ node SIGKILL",
            Fault::KillProducersNode => "producer's RabbitMQ node SIGKILL",
            Fault::KillSentinelPrimary => "Redis primary SIGKILL (Sentinel)",
            Fault::KillRedisClusterPrimary => "Redis Cluster primary SIGKILL",
        }
    }
}

/// Everything a fault may act on.
#[derive(Debug)]
pub struct Target<'a> {
    pub rabbit: Option<&'a Rabbit>,
    pub redis: &'a Redis,
    pub moto: Option<&'a mut Moto>,
    pub workers: &'a mut Vec<WorkerProcess>,
    /// Every worker ever started: its pid and executions file.
    pub started: &'a mut Vec<(String, std::path::PathBuf)>,
    pub killed: &'a mut Vec<String>,
    pub spec: &'a WorkerSpec,
    pub dir: &'a std::path::Path,
    pub tag: &'a str,
    pub rng: &'a mut u64,
    /// When moto was last back after a restart.
    pub moto_back: &'a mut Option<Instant>,
    /// The test clusters, on the cluster paths.
    pub clusters: Option<&'a Clusters>,
    /// The producer's broker (for the node it is connected to) and the path's notifier (for
    /// the workers' announcements).
    pub broker: &'a AnyBroker,
    pub notifier: &'a AnyNotifier,
}

fn need<'b, T>(x: Option<&'b T>, what: &str) -> Result<&'b T, BoxError> {
    x.ok_or_else(|| format!("this path has no {what}").into())
}

/// Starts worker number `started.len()` and keeps it.
pub async fn add_worker(t: &mut Target<'_>) -> Result<(), BoxError> {
    let w = WorkerProcess::start(t.spec, t.dir, t.tag, t.started.len()).await?;
    t.started.push((w.pid(), w.executions.clone()));
    t.workers.push(w);
    Ok(())
}

/// Does `fault`; returns when the service is back (or the replacement worker consumes).
pub async fn inject(fault: Fault, t: &mut Target<'_>) -> Result<String, BoxError> {
    Ok(match fault {
        Fault::KillWorker => {
            let (i, busy) = victim(t).await?;
            let w = t.workers.remove(i);
            let pid = w.pid();
            w.kill().await?;
            t.killed.push(pid.clone());
            add_worker(t).await?;
            let busy = match busy {
                Some(n) => format!("while running call {n}"),
                None => "(no task was running in it)".to_owned(),
            };
            let new = t.started.last().map_or("?", |s| &s.0);
            format!("killed worker {pid} {busy}, started worker {new}")
        }
        Fault::RabbitStopApp(d) => {
            let r = need(t.rabbit, "RabbitMQ")?;
            r.stop_app().await?;
            tokio::time::sleep(d).await;
            r.start_app().await?;
            String::new()
        }
        Fault::RabbitRestart(d) => {
            let r = need(t.rabbit, "RabbitMQ")?;
            r.stop().await?;
            tokio::time::sleep(d).await;
            r.restart().await?;
            String::new()
        }
        Fault::RabbitFreeze(d) => {
            let pid = need(t.rabbit, "RabbitMQ")?.pid().await?;
            services::signal(&pid, "-STOP")?;
            tokio::time::sleep(d).await;
            services::signal(&pid, "-CONT")?;
            format!("beam.smp {pid}")
        }
        Fault::RedisDown(d) => {
            t.redis.stop().await?;
            tokio::time::sleep(d).await;
            t.redis.start(false).await?;
            String::new()
        }
        Fault::KillWorkersNode => {
            let c = need(t.clusters, "cluster")?;
            let node = workers_node(t).await?;
            let n = c.kill_rabbit(&node).await?;
            // Clients notice and move on while the node is down; it comes back for the next
            // fault (two nodes of three down is a minority, where quorum queues stop).
            tokio::time::sleep(Duration::from_secs(5)).await;
            c.restart_rabbit(&n).await?;
            format!("killed node {node} (r{n}), started it again")
        }
        Fault::KillProducersNode => {
            use ivy::Broker as _;
            let c = need(t.clusters, "cluster")?;
            let node = t
                .broker
                .connected_node()
                .ok_or("the producer has no RabbitMQ node yet")?;
            let n = c.kill_rabbit(&node).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            c.restart_rabbit(&n).await?;
            format!("killed node {node} (r{n}), started it again")
        }
        Fault::KillSentinelPrimary => {
            let c = need(t.clusters, "cluster")?;
            let port = c.kill_sentinel_primary().await?;
            // Sentinel promotes the replica in about 2.2 s; the old primary comes back as
            // its replica once calls flow.
            tokio::time::sleep(Duration::from_secs(5)).await;
            c.restart_redis("redis-sentinel", &port).await?;
            format!("killed the primary on {port}, started it again as a replica")
        }
        Fault::KillRedisClusterPrimary => {
            let c = need(t.clusters, "cluster")?;
            // The shard of the workers' index: any shard holds a third of the results and
            // reply channels.
            let port = c.kill_cluster_primary("ivy:workers").await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            c.restart_redis("redis-cluster", &port).await?;
            format!("killed the primary on {port}, started it again as a replica")
        }
        Fault::MotoRestart => {
            let m = t.moto.as_deref_mut().ok_or("this path has no moto")?;
            m.stop().await?;
            m.start().await?;
            *t.moto_back = Some(Instant::now());
            String::new()
        }
    })
}

/// The RabbitMQ node one of the path's live workers consumes from, as announced.
async fn workers_node(t: &Target<'_>) -> Result<String, BoxError> {
    use ivy::Presence as _;
    let ours: Vec<String> = t.workers.iter().map(|w| w.pid()).collect();
    let start = Instant::now();
    loop {
        let announced = t.notifier.announcements().await?;
        let node = announced
            .iter()
            .filter_map(|p| ivy::events::WorkerInfo::from_slice(p).ok())
            .filter(|w| ours.contains(&w.pid.to_string()))
            .find_map(|w| w.broker_node);
        if let Some(node) = node {
            return Ok(node);
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err("no worker of the path announced a broker node within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The worker to kill: one that is running a task (its executions file shows a start with no
/// end), waiting up to 15 s for one; else one at random. Its index, and the call it runs.
async fn victim(t: &mut Target<'_>) -> Result<(usize, Option<u64>), BoxError> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        for (i, w) in t.workers.iter().enumerate() {
            let mut e = crate::task::Executions::default();
            crate::task::read_file(&w.executions, &mut e)?;
            if let Some((n, _)) = e.unfinished.first() {
                return Ok((i, Some(*n)));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    *t.rng = crate::calls::mix(*t.rng);
    Ok(((*t.rng % t.workers.len() as u64) as usize, None))
}
