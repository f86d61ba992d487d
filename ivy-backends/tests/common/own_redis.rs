//! A Redis server of a test's own, on a port of its own, for tests that stop, restart or
//! freeze it (never the shared one on 6379). Needs `redis-server` and `redis-cli` on the PATH.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A test's own Redis on `port`, with `password` if any. Nothing runs until [`OwnRedis::start`].
pub struct OwnRedis {
    port: u16,
    password: Option<&'static str>,
}

impl OwnRedis {
    pub const fn new(port: u16, password: Option<&'static str>) -> Self {
        OwnRedis { port, password }
    }

    /// Its URL, with the password when there is one.
    pub fn url(&self) -> String {
        match self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    fn dir(&self) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ivy-test-redis-{}", self.port));
        std::fs::create_dir_all(&dir).expect("a directory for the test's Redis");
        dir
    }

    /// Runs `redis-cli` against it; its trimmed output, `None` when it could not run.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = self.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        let out = cmd.args(args).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn ping(&self) -> bool {
        self.cli(&["ping"]).as_deref() == Some("PONG")
    }

    /// Starts it unless it already answers, and waits until it does.
    pub fn start(&self) {
        if !self.ping() {
            let dir = self.dir();
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
            if let Some(p) = self.password {
                cmd.args(["--requirepass", p]);
            }
            let status = cmd
                .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
                .arg("--dir")
                .arg(&dir)
                .arg("--pidfile")
                .arg(dir.join("redis.pid"))
                .arg("--logfile")
                .arg(dir.join("redis.log"))
                .status()
                .expect("run redis-server");
            assert!(status.success(), "redis-server failed: {status}");
        }
        wait_until(
            "the test's Redis answering",
            Duration::from_secs(15),
            || self.ping(),
        );
    }

    /// Stops it, checking that it was up and that the shutdown worked.
    pub fn stop(&self) {
        assert!(self.ping(), "the test's Redis is up before it is stopped");
        // A successful shutdown closes the connection without a reply.
        let reply = self.cli(&["shutdown", "nosave"]).expect("run redis-cli");
        assert!(reply.is_empty(), "shutdown answered: {reply}");
        wait_until("the test's Redis stopped", Duration::from_secs(10), || {
            !self.ping()
        });
    }

    /// Its process id, from its pid file.
    pub fn pid(&self) -> String {
        let pid = std::fs::read_to_string(self.dir().join("redis.pid")).expect("the pid file");
        pid.trim().to_owned()
    }

    /// A guard that stops it when dropped, also while unwinding from a failed assertion.
    pub fn stop_at_end(&'static self) -> StopAtEnd {
        StopAtEnd(self)
    }
}

/// See [`OwnRedis::stop_at_end`].
pub struct StopAtEnd(&'static OwnRedis);

impl Drop for StopAtEnd {
    fn drop(&mut self) {
        let _ = self.0.cli(&["shutdown", "nosave"]);
        // The next test may start it again at once: wait until it is gone (bounded, and
        // without panicking, as this may run while unwinding).
        let start = Instant::now();
        while self.0.ping() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits until `ok`, polling; fails the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis notifier that counts its failed reads of stored results and failed stores, so a
/// test can wait until the producer or the worker has met an outage.
#[derive(Clone, Debug)]
pub struct Counting {
    inner: ivy_backends::redis::RedisNotifier,
    pub failed_reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub failed_stores: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Counting {
    pub async fn connect(url: &str) -> Counting {
        let inner = ivy_backends::redis::RedisNotifier::connect(url)
            .await
            .expect("the test's Redis");
        Counting {
            inner,
            failed_reads: Default::default(),
            failed_stores: Default::default(),
        }
    }

    fn count<T>(
        counter: &std::sync::atomic::AtomicUsize,
        r: ivy_core::Result<T>,
    ) -> ivy_core::Result<T> {
        if r.is_err() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }
}

impl ivy_core::Results for Counting {
    type Subscription = ivy_backends::redis::RedisSubscription;

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> ivy_core::Result<()> {
        self.inner.publish(channel, payload).await
    }

    async fn publish_final(
        &self,
        channel: &str,
        task_id: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> ivy_core::Result<()> {
        let stored = self
            .inner
            .publish_final(channel, task_id, payload, ttl)
            .await;
        Self::count(&self.failed_stores, stored)
    }

    async fn fetch(&self, task_id: &str) -> ivy_core::Result<Option<Vec<u8>>> {
        Self::count(&self.failed_reads, self.inner.fetch(task_id).await)
    }

    async fn fetch_many(
        &self,
        task_ids: &[ivy_core::TaskId],
    ) -> ivy_core::Result<Vec<Option<Vec<u8>>>> {
        Self::count(&self.failed_reads, self.inner.fetch_many(task_ids).await)
    }

    async fn subscribe(&self, channel: &str) -> ivy_core::Result<Self::Subscription> {
        self.inner.subscribe(channel).await
    }
}

impl ivy_core::Presence for Counting {
    async fn announce(
        &self,
        worker_id: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> ivy_core::Result<()> {
        self.inner.announce(worker_id, payload, ttl).await
    }

    async fn withdraw(&self, worker_id: &str) -> ivy_core::Result<()> {
        self.inner.withdraw(worker_id).await
    }

    async fn announcements(&self) -> ivy_core::Result<Vec<Vec<u8>>> {
        self.inner.announcements().await
    }
}

impl ivy_core::Coordination for Counting {
    // Workflows (issue 14)

    async fn count_member(&self, set: &str, member: &str, ttl: Duration) -> ivy_core::Result<u64> {
        self.inner.count_member(set, member, ttl).await
    }

    async fn claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> ivy_core::Result<ivy_core::Claim> {
        self.inner.claim(key, owner, lease).await
    }

    async fn release(&self, key: &str, owner: &str) -> ivy_core::Result<()> {
        self.inner.release(key, owner).await
    }

    async fn mark_done(&self, key: &str, ttl: Duration) -> ivy_core::Result<()> {
        self.inner.mark_done(key, ttl).await
    }

    // Cancellation and deduplication (issue 14)

    async fn cancel(
        &self,
        task_id: &str,
        note: Vec<u8>,
        ttl: Duration,
    ) -> ivy_core::Result<ivy_core::CancelOutcome> {
        self.inner.cancel(task_id, note, ttl).await
    }

    async fn is_cancelled(&self, task_id: &str) -> ivy_core::Result<bool> {
        self.inner.is_cancelled(task_id).await
    }

    async fn cancellations(&self) -> ivy_core::Result<Vec<(ivy_core::TaskId, u64)>> {
        self.inner.cancellations().await
    }

    async fn claim_unique(
        &self,
        key: &str,
        task_id: &str,
        token: &str,
        ttl: Duration,
    ) -> ivy_core::Result<Option<ivy_core::TaskId>> {
        self.inner.claim_unique(key, task_id, token, ttl).await
    }

    async fn release_unique(&self, key: &str, task_id: &str, token: &str) -> ivy_core::Result<()> {
        self.inner.release_unique(key, task_id, token).await
    }

    // Schedules and limits (issue 15)

    async fn reserve_turn(
        &self,
        task: &str,
        interval: Duration,
        horizon: Duration,
    ) -> ivy_core::Result<ivy_core::Turn> {
        self.inner.reserve_turn(task, interval, horizon).await
    }

    async fn acquire_slot(
        &self,
        task: &str,
        holder: &str,
        max: u32,
        lease: Duration,
    ) -> ivy_core::Result<bool> {
        self.inner.acquire_slot(task, holder, max, lease).await
    }

    async fn release_slot(&self, task: &str, holder: &str) -> ivy_core::Result<()> {
        self.inner.release_slot(task, holder).await
    }
}
