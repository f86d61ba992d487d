//! The test clusters `scripts/test` starts before the tests (`scripts/rabbitmq-cluster`, and
//! the Redis ones): where they are, and killing and restarting their nodes.

use std::process::Command;

/// `IVY_TEST_AMQP_CLUSTER_URL`, default the three nodes of `scripts/rabbitmq-cluster` with
/// quorum queues.
pub fn amqp_cluster_url() -> String {
    std::env::var("IVY_TEST_AMQP_CLUSTER_URL").unwrap_or_else(|_| {
        "amqp://guest:guest@127.0.0.1:5701,127.0.0.1:5702,127.0.0.1:5703/%2f?queue_type=quorum"
            .to_owned()
    })
}

/// Runs `scripts/<script> args…`, panicking with its output when it fails.
pub fn script(script: &str, args: &[&str]) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/");
    let out = Command::new("bash")
        .arg(format!("{path}{script}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("scripts/{script}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{script} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number (1-3) of the `scripts/rabbitmq-cluster` node at `address` (`127.0.0.1:570N`).
pub fn rabbit_node_number(address: &str) -> String {
    let n = address
        .strip_prefix("127.0.0.1:570")
        .unwrap_or_else(|| panic!("{address} is not a node of scripts/rabbitmq-cluster"));
    n.to_owned()
}

/// Kills RabbitMQ cluster nodes and starts them again when dropped, test failed or not, so
/// the next test binary finds three nodes.
#[derive(Default)]
pub struct KilledRabbits(Vec<String>);

impl KilledRabbits {
    /// SIGKILLs node `n` (its beam.smp: no goodbye to its clients).
    pub fn kill(&mut self, n: &str) {
        script("rabbitmq-cluster", &["kill", n]);
        self.0.push(n.to_owned());
    }

    /// Starts the killed nodes again (waiting until each has booted and rejoined).
    pub fn restart(&mut self) {
        for n in self.0.drain(..) {
            script("rabbitmq-cluster", &["start_node", &n]);
        }
    }
}

impl Drop for KilledRabbits {
    fn drop(&mut self) {
        self.restart();
    }
}
