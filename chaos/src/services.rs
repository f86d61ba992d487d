//! The services of the chaos run: a RabbitMQ node, a Redis and a moto server of its own, on
//! ports nobody else uses, started, stopped, restarted and frozen only here. The shared
//! services (5672, 6379, 4566) are never touched.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BoxError;

/// Runs `program args…`; its stdout, or an error with what it printed.
fn run(program: &str, args: &[&str]) -> Result<String, BoxError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `ready` every 100 ms until it holds, at most `limit`.
async fn wait_until(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), BoxError> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > limit {
            return Err(format!("{what} within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A RabbitMQ node of our own, driven through `scripts/rabbitmq-node`.
#[derive(Debug)]
pub struct Rabbit {
    script: PathBuf,
    name: String,
    port: u16,
}

impl Rabbit {
    pub fn new(script: PathBuf, name: &str, port: u16) -> Self {
        Rabbit {
            script,
            name: name.to_owned(),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn node(&self, args: &[&str]) -> Result<String, BoxError> {
        let script = self.script.to_string_lossy().into_owned();
        let mut all = vec![script.as_str()];
        all.extend_from_slice(args);
        run("bash", &all)
    }

    /// Starts the node afresh (an earlier node of that name is stopped and its data removed).
    pub async fn start(&self) -> Result<(), BoxError> {
        let port = self.port.to_string();
        self.blocking(&["start", &self.name, &port]).await.map(drop)
    }

    async fn blocking(&self, args: &[&str]) -> Result<String, BoxError> {
        let me = Rabbit::new(self.script.clone(), &self.name, self.port);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            me.node(&args)
        })
        .await?
    }

    /// `rabbitmqctl stop_app`: the node stays, its AMQP listener closes.
    pub async fn stop_app(&self) -> Result<(), BoxError> {
        self.blocking(&["ctl", &self.name, "stop_app"])
            .await
            .map(drop)
    }

    pub async fn start_app(&self) -> Result<(), BoxError> {
        self.blocking(&["ctl", &self.name, "start_app"]).await?;
        self.blocking(&["wait", &self.name]).await.map(drop)
    }

    /// Stops the whole node (the Erlang VM exits); [`restart`](Self::restart) boots it again
    /// with its data: durable queues and persistent messages.
    pub async fn stop(&self) -> Result<(), BoxError> {
        self.blocking(&["stop", &self.name]).await.map(drop)
    }

    pub async fn restart(&self) -> Result<(), BoxError> {
        self.blocking(&["restart", &self.name]).await.map(drop)
    }

    /// The node's `beam.smp`, for SIGSTOP and SIGCONT.
    pub async fn pid(&self) -> Result<String, BoxError> {
        Ok(self.blocking(&["pid", &self.name]).await?.trim().to_owned())
    }

    /// Stops the node at the end, whatever state it is in.
    pub fn stop_at_end(&self) {
        if let Err(e) = self.node(&["stop", &self.name]) {
            eprintln!("chaos: could not stop RabbitMQ node {}: {e}", self.name);
        }
    }
}

/// Sends `signal` (e.g. `-STOP`) to `pid` with kill(1).
pub fn signal(pid: &str, signal: &str) -> Result<(), BoxError> {
    run("kill", &[signal, pid]).map(drop)
}

/// A Redis of our own, without periodic saves; it is stopped with `SHUTDOWN SAVE`, so what it
/// stored comes back when it is started again: a result stored before the outage is not lost
/// by Redis itself.
#[derive(Debug)]
pub struct Redis {
    port: u16,
    dir: PathBuf,
}

impl Redis {
    pub fn new(port: u16, dir: &Path) -> Self {
        Redis {
            port,
            dir: dir.join("redis"),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> Result<String, BoxError> {
        let port = self.port.to_string();
        let mut all = vec!["-h", "127.0.0.1", "-p", port.as_str()];
        all.extend_from_slice(args);
        run("redis-cli", &all)
    }

    fn is_up(&self) -> bool {
        self.cli(&["ping"])
            .map(|s| s.trim() == "PONG")
            .unwrap_or(false)
    }

    /// Starts it; refuses when something already answers on its port (not ours to use).
    pub async fn start(&self, first: bool) -> Result<(), BoxError> {
        if first && self.is_up() {
            return Err(format!(
                "a Redis already answers on port {}: the chaos run uses only a Redis it starts",
                self.port
            )
            .into());
        }
        std::fs::create_dir_all(&self.dir)?;
        let dir = self.dir.to_string_lossy().into_owned();
        let port = self.port.to_string();
        let pidfile = format!("{dir}/redis.pid");
        let logfile = format!("{dir}/redis.log");
        run(
            "redis-server",
            &[
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--dir",
                &dir,
                "--pidfile",
                &pidfile,
                "--logfile",
                &logfile,
            ],
        )?;
        wait_until("Redis did not answer", Duration::from_secs(20), || {
            self.is_up()
        })
        .await
    }

    /// Stops it, keeping its data for the next start; checks it is down.
    pub async fn stop(&self) -> Result<(), BoxError> {
        // SHUTDOWN closes the connection instead of answering.
        let _ = self.cli(&["shutdown", "save"]);
        wait_until("Redis did not stop", Duration::from_secs(20), || {
            !self.is_up()
        })
        .await
    }

    pub fn stop_at_end(&self) {
        let _ = self.cli(&["shutdown", "nosave"]);
    }
}

/// A moto (SQS) server of our own, a child process.
#[derive(Debug)]
pub struct Moto {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Moto {
    pub fn new(port: u16, dir: &Path) -> Self {
        Moto {
            port,
            log: dir.join("moto.log"),
            child: None,
        }
    }

    pub fn url(&self, visibility_secs: u32) -> String {
        format!(
            "sqs://127.0.0.1:{}?region=us-east-1&visibility_timeout={visibility_secs}&wait_time=1",
            self.port
        )
    }

    fn is_up(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        );
        let mut head = [0u8; 12];
        s.write_all(req.as_bytes()).is_ok()
            && s.read_exact(&mut head).is_ok()
            && head.starts_with(b"HTTP/1.")
            && &head[9..12] == b"200"
    }

    /// Starts a fresh server (no queues); refuses when something already listens on its port.
    pub async fn start(&mut self) -> Result<(), BoxError> {
        if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            return Err(format!(
                "something already listens on port {}: the chaos run uses only a moto it starts",
                self.port
            )
            .into());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("could not start moto_server: {e}"))?;
        // For scripts/chaos, to stop it should this process die first.
        std::fs::write(self.log.with_file_name("moto.pid"), child.id().to_string())?;
        self.child = Some(child);
        wait_until("moto did not answer", Duration::from_secs(30), || {
            self.is_up()
        })
        .await
    }

    /// Stops the server (SIGTERM, then SIGKILL): its queues and messages are gone.
    pub async fn stop(&mut self) -> Result<(), BoxError> {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = signal(&pid, "-TERM");
            let start = Instant::now();
            while child.try_wait()?.is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        wait_until("moto's port did not close", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_err()
        })
        .await
    }

    pub fn stop_at_end(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The test clusters of `scripts/rabbitmq-cluster`, `scripts/redis-sentinel` and
/// `scripts/redis-cluster` (which `scripts/chaos` starts when they are not up): their URLs,
/// and killing and restarting their nodes.
#[derive(Debug)]
pub struct Clusters {
    scripts: PathBuf,
}

/// The three RabbitMQ nodes, with quorum queues; a connect timeout that outlasts a node's
/// restart.
pub const RABBIT_CLUSTER_URL: &str = "amqp://guest:guest@127.0.0.1:5701,127.0.0.1:5702,\
                                      127.0.0.1:5703/%2f?queue_type=quorum&connect_timeout_ms=60000";

/// The Sentinel setup's primary, as its sentinels name it.
pub const SENTINEL_URL: &str =
    "redis+sentinel://127.0.0.1:26401,127.0.0.1:26402,127.0.0.1:26403/mymaster?wait_replicas=1";
/// The Redis Cluster, by three of its nodes.
pub const REDIS_CLUSTER_URL: &str =
    "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003/?wait_replicas=1";

impl Clusters {
    pub fn new(scripts: PathBuf) -> Self {
        Clusters { scripts }
    }

    async fn script(&self, script: &str, args: &[&str]) -> Result<String, BoxError> {
        let path = self.scripts.join(script).to_string_lossy().into_owned();
        let mut all = vec![path];
        all.extend(args.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            run("bash", &all)
        })
        .await?
    }

    /// SIGKILLs the RabbitMQ node at `address` (`127.0.0.1:570N`); returns its number.
    pub async fn kill_rabbit(&self, address: &str) -> Result<String, BoxError> {
        let n = address
            .strip_prefix("127.0.0.1:570")
            .ok_or_else(|| format!("{address} is not a node of scripts/rabbitmq-cluster"))?
            .to_owned();
        self.script("rabbitmq-cluster", &["kill", &n]).await?;
        Ok(n)
    }

    /// SIGKILLs the Sentinel setup's primary; returns its port.
    pub async fn kill_sentinel_primary(&self) -> Result<String, BoxError> {
        Ok(self
            .script("redis-sentinel", &["kill-primary"])
            .await?
            .trim()
            .to_owned())
    }

    /// SIGKILLs the Redis Cluster primary serving `key`'s slot; returns its port.
    pub async fn kill_cluster_primary(&self, key: &str) -> Result<String, BoxError> {
        Ok(self
            .script("redis-cluster", &["kill-primary-of", key])
            .await?
            .trim()
            .to_owned())
    }

    /// Starts a killed Redis node of `script` (`redis-sentinel`, `redis-cluster`) again; it
    /// comes back as a replica.
    pub async fn restart_redis(&self, script: &str, port: &str) -> Result<(), BoxError> {
        self.script(script, &["restart-node", port]).await.map(drop)
    }

    /// Starts RabbitMQ node `n` again and waits until it has booted (it rejoins by itself).
    pub async fn restart_rabbit(&self, n: &str) -> Result<(), BoxError> {
        self.script("rabbitmq-cluster", &["start_node", n])
            .await
            .map(drop)
    }
}
