//! A RabbitMQ node of a test's own (`scripts/rabbitmq-node`), on a port of its own, for tests
//! that stop, restart or freeze their broker (never the shared node on 5672). Needs
//! `rabbitmq-server` and the rights to run it (root or the `rabbitmq` user). Also used by the
//! facade's tests (`#[path]`), so it names nothing of this crate.

use std::path::PathBuf;
use std::process::Command;

/// Node `name@localhost` on 127.0.0.1:`port`. Nothing runs until [`OwnRabbit::start`].
pub struct OwnRabbit {
    name: &'static str,
    port: u16,
}

impl OwnRabbit {
    pub const fn new(name: &'static str, port: u16) -> Self {
        OwnRabbit { name, port }
    }

    /// Its URL, guest account, default vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts it afresh (no queues) and waits until it is up; stops it again when the returned
    /// guard is dropped, also while unwinding from a failed assertion.
    pub fn start(&'static self) -> StopAtEnd {
        self.script(&["start", self.name, &self.port.to_string()]);
        StopAtEnd(self)
    }

    /// `rabbitmqctl -n name@localhost args…`; panics when it fails.
    pub fn ctl(&self, args: &[&str]) {
        let mut all = vec!["ctl", self.name];
        all.extend_from_slice(args);
        self.script(&all);
    }

    fn script(&self, args: &[&str]) {
        let status = Command::new("bash")
            .arg(script_path())
            .args(args)
            .status()
            .expect("run scripts/rabbitmq-node");
        assert!(status.success(), "scripts/rabbitmq-node {args:?}: {status}");
    }
}

/// `scripts/rabbitmq-node`, found upwards from this crate's folder.
fn script_path() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let candidate = dir.join("scripts/rabbitmq-node");
        if candidate.exists() {
            return candidate;
        }
        assert!(dir.pop(), "scripts/rabbitmq-node not found above the crate");
    }
}

/// See [`OwnRabbit::start`].
pub struct StopAtEnd(&'static OwnRabbit);

impl Drop for StopAtEnd {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script_path())
            .args(["stop", self.0.name])
            .status();
    }
}
