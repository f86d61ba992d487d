//! The test clusters `scripts/test` starts before the tests (`scripts/rabbitmq-cluster`, and
//! the Redis ones): where they are, and killing and restarting their nodes.

use super::script;

/// `IVY_TEST_AMQP_CLUSTER_URL`, default the three nodes of `scripts/rabbitmq-cluster` with
/// quorum queues.
pub fn amqp_cluster_url() -> String {
    std::env::var("IVY_TEST_AMQP_CLUSTER_URL").unwrap_or_else(|_| {
        "amqp://guest:guest@127.0.0.1:5701,127.0.0.1:5702,127.0.0.1:5703/%2f?queue_type=quorum"
            .to_owned()
    })
}

/// The number (1-3) of the `scripts/rabbitmq-cluster` node at `address` (`127.0.0.1:570N`).
pub fn rabbit_node_number(address: &str) -> String {
    let n = address
        .strip_prefix("127.0.0.1:570")
        .unwrap_or_else(|| panic!("{address} is not a node of scripts/rabbitmq-cluster"));
    n.to_owned()
}

/// Quorum queue `queue`'s members that are online, as RabbitMQ node `n` (1-3) sees them.
pub fn quorum_online(n: &str, queue: &str) -> Vec<String> {
    let listed = script(
        "rabbitmq-cluster",
        &[
            "ctl",
            n,
            "list_queues",
            "name",
            "online",
            "--no-table-headers",
            "--quiet",
        ],
    );
    listed
        .lines()
        .find_map(|line| {
            let (name, online) = line.split_once('\t')?;
            (name == queue).then(|| {
                online
                    .trim_matches(|c| c == '[' || c == ']')
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Waits (up to 60 s) until quorum queue `queue` has all three members online: a queue with a
/// member still starting does not survive the loss of another (a minority is left).
pub fn wait_quorum_online(queue: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let online = quorum_online("1", queue);
        if online.len() == 3 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "quorum queue {queue} has only {online:?} online after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
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
