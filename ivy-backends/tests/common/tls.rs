//! TLS listeners of a test's own: certificates from `scripts/tls-certs`, a RabbitMQ node
//! `ivy-tls` from `scripts/rabbitmq-node` (AMQP 5683, AMQPS 5684) and a Redis with only a TLS
//! port (6396), both listening on 127.0.0.1 and 127.0.0.2. The certificate is valid for
//! `localhost` and `127.0.0.1`, so 127.0.0.2 is the same server under a name it does not
//! cover. Needs `openssl`, `rabbitmq-server` (run as root or as the rabbitmq user),
//! `redis-server` built with TLS and `redis-cli`; a missing one fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const AMQPS_PORT: u16 = 5684;
const AMQP_PORT: &str = "5683";
const NODE: &str = "ivy-tls";
pub const REDIS_PORT: u16 = 6396;
/// Redis asks for it, so that the tests see it redacted in errors.
pub const REDIS_PASSWORD: &str = "tls-test-secret";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

/// The running listeners; stops them when dropped, also while a failed test unwinds.
pub struct TlsServices {
    pub certs: PathBuf,
    redis_dir: PathBuf,
}

impl TlsServices {
    /// Makes the certificates and starts both servers, waiting until they answer.
    pub fn start() -> TlsServices {
        let base = std::env::temp_dir().join("ivy-test-tls");
        let certs = base.join("certs");
        let redis_dir = base.join("redis");
        std::fs::create_dir_all(&redis_dir).expect("a directory for the test's Redis");
        let services = TlsServices { certs, redis_dir };
        // A Redis left by an aborted run would hold the port.
        services.stop_redis();
        run(Command::new(scripts().join("tls-certs")).arg(&services.certs));
        services.start_redis();
        run(Command::new(scripts().join("rabbitmq-node")).args([
            "start",
            NODE,
            AMQP_PORT,
            &AMQPS_PORT.to_string(),
            services.certs.to_str().expect("a UTF-8 temp dir"),
        ]));
        services
    }

    /// A file made by `scripts/tls-certs`, e.g. `ca.pem`.
    pub fn file(&self, name: &str) -> String {
        self.certs.join(name).display().to_string()
    }

    /// `amqps://guest:guest@HOST:5684/%2f` with `query` (no leading `?`).
    pub fn amqps_url(&self, host: &str, query: &str) -> String {
        with_query(
            format!("amqps://guest:guest@{host}:{AMQPS_PORT}/%2f"),
            query,
        )
    }

    /// `rediss://:PASSWORD@HOST:6396` with `query` (no leading `?`).
    pub fn rediss_url(&self, host: &str, query: &str) -> String {
        with_query(
            format!("rediss://:{REDIS_PASSWORD}@{host}:{REDIS_PORT}"),
            query,
        )
    }

    /// Stops the RabbitMQ node, checking that it was running.
    pub fn stop_rabbitmq(&self) {
        run(Command::new(scripts().join("rabbitmq-node")).args(["pid", NODE]));
        run(Command::new(scripts().join("rabbitmq-node")).args(["stop", NODE]));
        let pid = Command::new(scripts().join("rabbitmq-node"))
            .args(["pid", NODE])
            .output()
            .expect("run scripts/rabbitmq-node pid");
        assert!(!pid.status.success(), "the TLS node stopped");
    }

    /// Starts the stopped RabbitMQ node again and waits until it is up.
    pub fn restart_rabbitmq(&self) {
        run(Command::new(scripts().join("rabbitmq-node")).args(["restart", NODE]));
    }

    fn redis_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &self.file("ca.pem")])
            .args(["-h", "127.0.0.1", "-p", &REDIS_PORT.to_string()])
            .args(["-a", REDIS_PASSWORD, "--no-auth-warning"])
            .args(args)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn redis_answers(&self) -> bool {
        self.redis_cli(&["ping"]).as_deref() == Some("PONG")
    }

    fn start_redis(&self) {
        let status = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &REDIS_PORT.to_string()])
            .args([
                "--bind",
                "127.0.0.1 127.0.0.2",
                "--requirepass",
                REDIS_PASSWORD,
            ])
            .args(["--tls-cert-file", &self.file("server.pem")])
            .args(["--tls-key-file", &self.file("server.key")])
            .args(["--tls-ca-cert-file", &self.file("ca.pem")])
            // A client certificate is checked when sent, not required.
            .args(["--tls-auth-clients", "optional"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
            .arg("--dir")
            .arg(&self.redis_dir)
            .arg("--pidfile")
            .arg(self.redis_dir.join("redis.pid"))
            .arg("--logfile")
            .arg(self.redis_dir.join("redis.log"))
            .status()
            .expect("run redis-server");
        assert!(status.success(), "redis-server failed: {status}");
        let start = Instant::now();
        while !self.redis_answers() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the TLS Redis answering within 15 s; log in {}",
                self.redis_dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the Redis of a pid file of ours, if it runs; waits until it is gone.
    fn stop_redis(&self) {
        let Ok(pid) = std::fs::read_to_string(self.redis_dir.join("redis.pid")) else {
            return;
        };
        let pid = pid.trim().to_owned();
        let alive = || Path::new("/proc").join(&pid).exists();
        if alive() {
            let _ = self.redis_cli(&["shutdown", "nosave"]);
        }
        if alive() {
            // Its certificates are gone (a new run made others): SIGTERM also shuts it down.
            let _ = Command::new("kill").arg(&pid).status();
        }
        let start = Instant::now();
        while alive() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.redis_dir.join("redis.pid"));
    }
}

impl Drop for TlsServices {
    fn drop(&mut self) {
        self.stop_redis();
        let _ = Command::new(scripts().join("rabbitmq-node"))
            .args(["stop", NODE])
            .status();
    }
}

fn with_query(url: String, query: &str) -> String {
    if query.is_empty() {
        url
    } else {
        format!("{url}?{query}")
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
