//! The AMQP URL: what lapin connects to, Ivy's own options (and the TLS files, see
//! [`crate::tls`]) taken out of it, and the queue arguments those options imply.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ivy_core::url::ParsedUrl;
use ivy_core::Result;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable};

use super::long_string;
use super::DEFAULT_CONNECT_TIMEOUT;
use crate::tls::{self, TlsFiles};

pub(super) const MAX_PRIORITY: u8 = 9;

/// The query options that are Ivy's; lapin gets the others.
const IVY_OPTIONS: [&str; 4] = [
    "queue_type",
    "connect_timeout_ms",
    "priority_queues",
    "failover_strategy",
];

/// Which kind of RabbitMQ queue Ivy declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// Classic queues; those named in `?priority_queues=` get `x-max-priority` 9.
    Classic,
    /// Replicated quorum queues: no priorities on RabbitMQ 3.10.
    Quorum,
}

#[derive(Clone)]
pub(super) struct Config {
    /// The nodes, in the order they are tried (shuffled once with
    /// `?failover_strategy=shuffle`).
    nodes: Arc<[Node]>,
    /// Where the next connection starts in `nodes`: one past the node the last one reached, so
    /// every reconnect moves on to another node. Shared by the clones of one broker.
    next: Arc<AtomicUsize>,
    /// The node each named connection (`ivy consumer`, `ivy producer`, …) reached last.
    reached: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    redacted: String,
    queue_type: QueueType,
    connect_timeout: Duration,
    /// The CA and client certificate of `?cacertfile=`, `?certfile=` and `?keyfile=`.
    tls: OwnedTLSConfig,
    priority_queues: PriorityQueues,
}

/// One RabbitMQ node of the URL.
pub(super) struct Node {
    /// What lapin connects to: the node's URL without Ivy's own options, password included.
    pub(super) uri: String,
    /// `host:port`, for logs, `ivy workers` and errors.
    pub(super) address: String,
}

/// The options of one node's URL, before they are checked to agree with the other nodes'.
struct Single {
    node: Node,
    scheme: String,
    queue_type: QueueType,
    connect_timeout: Duration,
    priority_queues: PriorityQueues,
    shuffle: bool,
    files: TlsFiles,
}

/// Which classic work queues are declared with `x-max-priority` (`?priority_queues=`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) enum PriorityQueues {
    /// None (the default): a plain queue costs RabbitMQ less per message.
    #[default]
    None,
    /// `*`: every work queue.
    All,
    /// A comma-separated list of queue names.
    Named(Vec<String>),
}

impl PriorityQueues {
    fn parse(value: &str) -> Self {
        let names: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.iter().any(|n| n == "*") {
            PriorityQueues::All
        } else if names.is_empty() {
            PriorityQueues::None
        } else {
            PriorityQueues::Named(names)
        }
    }

    fn contains(&self, queue: &str) -> bool {
        match self {
            PriorityQueues::None => false,
            PriorityQueues::All => true,
            PriorityQueues::Named(names) => names.iter().any(|n| n == queue),
        }
    }
}

impl Single {
    /// One node's URL: its options, checked; the TLS files read.
    fn parse(url: &str) -> Result<Self> {
        let bad = |reason: String| ivy_core::url::error(url, reason);
        let parsed = ParsedUrl::parse(url).map_err(|e| bad(format!("malformed AMQP URL: {e}")))?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(bad("expected an amqp:// or amqps:// URL".into()));
        }
        let mut queue_type = QueueType::Classic;
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
        let mut priority_queues = PriorityQueues::None;
        let mut shuffle = false;
        let mut ours = false;
        for (key, value) in parsed.query_pairs() {
            match key.as_str() {
                "queue_type" => {
                    queue_type = match value.as_str() {
                        "classic" => QueueType::Classic,
                        "quorum" => QueueType::Quorum,
                        _ => {
                            return Err(bad(format!(
                                "queue_type must be `classic` or `quorum`, not `{value}`"
                            )))
                        }
                    }
                }
                "connect_timeout_ms" => {
                    let ms: u64 = value.parse().map_err(|_| {
                        bad(format!(
                            "connect_timeout_ms must be a number of milliseconds, not `{value}`"
                        ))
                    })?;
                    connect_timeout = Duration::from_millis(ms);
                }
                "priority_queues" => priority_queues = PriorityQueues::parse(value),
                // Kombu's names: `round-robin` (its default) and `shuffle`.
                "failover_strategy" => {
                    shuffle = match value.as_str() {
                        "round-robin" | "in_order" => false,
                        "shuffle" => true,
                        _ => {
                            return Err(bad(format!(
                                "failover_strategy must be `round-robin` or `shuffle`, not \
                                 `{value}`"
                            )))
                        }
                    }
                }
                // lapin's own options (heartbeat, frame_max, channel_max, connection_timeout,
                // auth_mechanism) stay in the URL lapin gets.
                _ => continue,
            }
            ours = true;
        }
        let files = TlsFiles::from_url(url, &parsed, parsed.scheme() == "amqps")?;
        ours |= parsed
            .query_pairs()
            .iter()
            .any(|(k, _)| tls::OPTIONS.contains(&k.as_str()));
        // lapin gets the URL as given, unless Ivy's options have to come out of it.
        let uri = if ours {
            let options: Vec<&str> = IVY_OPTIONS.iter().chain(&tls::OPTIONS).copied().collect();
            parsed.without_query_keys(&options)
        } else {
            url.to_owned()
        };
        // Parse now so a malformed URL fails at construction, not at the first publish.
        uri.parse::<lapin::uri::AMQPUri>().map_err(|e| {
            // The parser's message may quote the URL; do not echo a password.
            let reason = if parsed.has_credentials() {
                "malformed AMQP URL".to_owned()
            } else {
                format!("malformed AMQP URL: {e}")
            };
            bad(reason)
        })?;
        if queue_type == QueueType::Quorum && priority_queues != PriorityQueues::None {
            return Err(bad(
                "priority_queues needs classic queues: RabbitMQ refuses `x-max-priority` on \
                 quorum queues"
                    .into(),
            ));
        }
        let default_port = if parsed.scheme() == "amqps" {
            5671
        } else {
            5672
        };
        let address = format!(
            "{}:{}",
            parsed.host().unwrap_or("localhost"),
            parsed.port().unwrap_or(default_port)
        );
        Ok(Single {
            node: Node { uri, address },
            scheme: parsed.scheme().to_owned(),
            queue_type,
            connect_timeout,
            priority_queues,
            shuffle,
            files,
        })
    }
}

/// Shuffles the node list once per process (`?failover_strategy=shuffle`), so that clients
/// started together spread over the nodes. Randomness from std's hasher keys: no dependency.
fn shuffle_in_place(nodes: &mut [Node]) {
    use std::hash::{BuildHasher, Hasher};
    for i in (1..nodes.len()).rev() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        let j = (h.finish() % (i as u64 + 1)) as usize;
        nodes.swap(i, j);
    }
}

impl Config {
    /// Parses an AMQP URL naming one node or several: `amqp://u:p@h1:5672,h2:5672,h3/vhost?…`
    /// (one user info, path and query for all), or Celery's form, whole URLs separated by `;`.
    pub(super) fn parse(url: &str) -> Result<Self> {
        let bad = |reason: String| ivy_core::url::error(url, reason);
        let mut singles = Vec::new();
        for part in url.split(';').map(str::trim) {
            if part.is_empty() {
                return Err(bad("an empty URL in the `;`-separated list".into()));
            }
            for node in ivy_core::url::split_hosts(part)
                .map_err(|e| bad(format!("malformed AMQP URL: {e}")))?
            {
                singles.push(Single::parse(&node).map_err(|e| match e {
                    // Report the whole URL, not one node of it.
                    ivy_core::Error::Url { reason, .. } => bad(reason),
                    other => other,
                })?);
            }
        }
        let first = &singles[0];
        for other in &singles[1..] {
            let differs = if other.scheme != first.scheme {
                Some("scheme (amqp:// and amqps:// mixed)")
            } else if other.queue_type != first.queue_type {
                Some("queue_type")
            } else if other.connect_timeout != first.connect_timeout {
                Some("connect_timeout_ms")
            } else if other.priority_queues != first.priority_queues {
                Some("priority_queues")
            } else if other.shuffle != first.shuffle {
                Some("failover_strategy")
            } else {
                None
            };
            if let Some(what) = differs {
                return Err(bad(format!(
                    "the nodes of the list must agree on their {what}; {} differs from {}",
                    other.node.address, first.node.address
                )));
            }
        }
        let redacted = ivy_core::url::redact(url);
        let mut singles = singles.into_iter();
        let Some(first) = singles.next() else {
            return Err(bad("the URL names no RabbitMQ node".into()));
        };
        let (queue_type, connect_timeout, shuffle) =
            (first.queue_type, first.connect_timeout, first.shuffle);
        let priority_queues = first.priority_queues.clone();
        let files = first.files.clone();
        let mut nodes: Vec<Node> = std::iter::once(first.node)
            .chain(singles.map(|s| s.node))
            .collect();
        if shuffle {
            shuffle_in_place(&mut nodes);
        }
        // lapin adds `cert_chain` to the system's roots; a PEM file is text.
        let tls = OwnedTLSConfig {
            cert_chain: files
                .ca
                .map(|pem| String::from_utf8_lossy(&pem).into_owned()),
            identity: files
                .client
                .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
        };
        Ok(Config {
            nodes: nodes.into(),
            next: Arc::new(AtomicUsize::new(0)),
            reached: Arc::default(),
            redacted,
            queue_type,
            connect_timeout,
            tls,
            priority_queues,
        })
    }

    /// The nodes in the order the next connection tries them: from one past the node the last
    /// connection reached, round the list.
    pub(super) fn nodes_in_turn(&self) -> impl Iterator<Item = (usize, &Node)> {
        let start = self.next.load(Ordering::Relaxed);
        let n = self.nodes.len();
        (0..n).map(move |k| {
            let i = (start + k) % n;
            (i, &self.nodes[i])
        })
    }

    /// Notes that connection `name` reached node `i`: the next one starts at the node after it.
    pub(super) fn reached(&self, i: usize, name: &str) {
        self.next
            .store((i + 1) % self.nodes.len(), Ordering::Relaxed);
        let address = self.nodes[i].address.clone();
        let mut reached = self.reached.lock().unwrap_or_else(|e| e.into_inner());
        match reached.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = address,
            None => reached.push((name.to_owned(), address)),
        }
    }

    /// The node (`host:port`) connection `name` reached last.
    pub(super) fn node_of(&self, name: &str) -> Option<String> {
        let reached = self.reached.lock().unwrap_or_else(|e| e.into_inner());
        reached
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
    }

    /// How many nodes the URL names.
    pub(super) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The CA and client certificate for an `amqps://` connection.
    pub(super) fn tls(&self) -> &OwnedTLSConfig {
        &self.tls
    }

    /// The URL for errors and logs.
    pub(super) fn redacted(&self) -> &str {
        &self.redacted
    }

    pub(super) fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// How long a publish waits for an unreachable broker (`?connect_timeout_ms=`).
    pub(super) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Whether work queue `queue` is declared as a priority queue.
    pub(super) fn has_priorities(&self, queue: &str) -> bool {
        self.queue_type == QueueType::Classic && self.priority_queues.contains(queue)
    }

    /// Whether every work queue is declared as a priority queue (`?priority_queues=*`).
    pub(super) fn all_priorities(&self) -> bool {
        self.queue_type == QueueType::Classic && self.priority_queues == PriorityQueues::All
    }

    pub(super) fn work_queue_args(&self, queue: &str) -> FieldTable {
        let mut args = FieldTable::default();
        match self.queue_type {
            QueueType::Classic if !self.has_priorities(queue) => {}
            QueueType::Classic => {
                args.insert(
                    "x-max-priority".into(),
                    AMQPValue::ShortShortUInt(MAX_PRIORITY),
                );
            }
            QueueType::Quorum => self.add_type(&mut args),
        }
        args
    }

    /// On quorum queues, the delay queues' dead-lettering (a delayed call expiring into its
    /// work queue) is RabbitMQ's at-least-once kind (3.10 and later): the message leaves the
    /// delay queue only once the work queue has confirmed it, so a node lost meanwhile loses
    /// nothing. It needs `x-overflow: reject-publish` (with the default, drop-head, RabbitMQ
    /// silently falls back to at-most-once); Ivy sets no length limit, so that never refuses a
    /// publish.
    pub(super) fn add_dead_letter_strategy(&self, args: &mut FieldTable) {
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-dead-letter-strategy".into(),
                long_string("at-least-once"),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
        }
    }

    pub(super) fn add_type(&self, args: &mut FieldTable) {
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), long_string("quorum"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_taken_out() {
        let c = Config::parse(
            "amqp://u:secret@h:5672/%2f?queue_type=quorum&heartbeat=10&connect_timeout_ms=500",
        )
        .unwrap();
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.nodes[0].uri, "amqp://u:secret@h:5672/%2f?heartbeat=10");
        assert!(!c.redacted.contains("secret"));
    }

    #[test]
    fn tls_files_are_read_and_taken_out() {
        let dir = std::env::temp_dir().join(format!("ivy-amqp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        // A CA certificate made by scripts/tls-certs; only its PEM form is checked here.
        std::fs::write(&ca, TEST_CERT).unwrap();
        let url = format!(
            "amqps://u:secret@h:5671/%2f?cacertfile={}&verify=verify_peer&heartbeat=10",
            ca.display()
        );
        let c = Config::parse(&url).unwrap();
        assert_eq!(c.nodes[0].uri, "amqps://u:secret@h:5671/%2f?heartbeat=10");
        assert_eq!(c.tls.cert_chain.as_deref(), Some(TEST_CERT));
        assert!(c.tls.identity.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBpjCCAUugAwIBAgIUDkt6h9bjBhHQ0r7+aL3t9KJxRZ4wCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVSXZ5IHVucmVsYXRlZCB0ZXN0IENBMB4XDTI2MTEyOTIzMTU1
OVoXDTI2MTIyOTIzMTU1OVowIDEeMBwGA1UEAwwVSXZ5IHVucmVsYXRlZCB0ZXN0
IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEc14rf3LepaXrchNG7lmfH1HK
r9MLr1jwg7tmc0RAOFrG4ZK9d7kbxJnVBKLh9dKnj9ZGMHECUgl8hT0iYRi+waNj
MGEwHQYDVR0OBBYEFNKnEa7uwJPBaN4WSp/MmobatFrQMB8GA1UdIwQYMBaAFNKn
Ea7uwJPBaN4WSp/MmobatFrQMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQD
AgEGMAoGCCqGSM49BAMCA0kAMEYCIQDPSvy2s67I5OmhhkhqnrDnnHADqRCahnEk
gQcf41eqpQIhAMm4PbPd6votf12LKFqIqxpqBb8UY+lXNpEzzQGKe+F2
-----END CERTIFICATE-----
";

    #[test]
    fn priority_queues_are_named_or_all() {
        let c = Config::parse("amqp://h/%2f?priority_queues=a,b").unwrap();
        assert!(c.has_priorities("a") && c.has_priorities("b") && !c.has_priorities("c"));
        assert!(!c.all_priorities());
        assert_eq!(c.nodes[0].uri, "amqp://h/%2f");
        assert!(c.work_queue_args("c").inner().is_empty());
        assert!(c
            .work_queue_args("a")
            .inner()
            .contains_key("x-max-priority"));
        let all = Config::parse("amqp://h/%2f?priority_queues=*").unwrap();
        assert!(all.all_priorities() && all.has_priorities("any"));
        let none = Config::parse("amqp://h/%2f").unwrap();
        assert!(!none.has_priorities("a"));
        assert!(Config::parse("amqp://h/%2f?queue_type=quorum&priority_queues=a").is_err());
    }

    #[test]
    fn several_nodes_share_the_options() {
        let c = Config::parse("amqp://u:secret@a:5701,b:5702,c/%2f?queue_type=quorum&heartbeat=10")
            .unwrap();
        let uris: Vec<&str> = c.nodes.iter().map(|n| n.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "amqp://u:secret@a:5701/%2f?heartbeat=10",
                "amqp://u:secret@b:5702/%2f?heartbeat=10",
                "amqp://u:secret@c/%2f?heartbeat=10",
            ]
        );
        let addresses: Vec<&str> = c.nodes.iter().map(|n| n.address.as_str()).collect();
        assert_eq!(addresses, ["a:5701", "b:5702", "c:5672"]);
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert_eq!(
            c.redacted(),
            "amqp://u:***@a:5701,b:5702,c/%2f?queue_type=quorum&heartbeat=10"
        );
        // Celery's form.
        let celery = Config::parse("amqp://u:p@a/%2f;amqp://u:p@b/%2f").unwrap();
        assert_eq!(celery.node_count(), 2);
    }

    #[test]
    fn every_reconnect_starts_at_the_next_node() {
        let c = Config::parse("amqp://a,b,c/%2f").unwrap();
        let order = |c: &Config| -> Vec<String> {
            c.nodes_in_turn().map(|(_, n)| n.address.clone()).collect()
        };
        assert_eq!(order(&c), ["a:5672", "b:5672", "c:5672"]);
        c.reached(0, "ivy producer");
        assert_eq!(order(&c), ["b:5672", "c:5672", "a:5672"]);
        assert_eq!(c.node_of("ivy producer").as_deref(), Some("a:5672"));
        // Clones (the consumer's, the producer's) share the turn.
        c.clone().reached(2, "ivy consumer");
        assert_eq!(c.node_of("ivy consumer").as_deref(), Some("c:5672"));
        assert_eq!(order(&c), ["a:5672", "b:5672", "c:5672"]);
        let shuffled = Config::parse("amqp://a,b,c,d,e/%2f?failover_strategy=shuffle").unwrap();
        let mut seen = order(&shuffled);
        seen.sort();
        assert_eq!(seen, ["a:5672", "b:5672", "c:5672", "d:5672", "e:5672"]);
    }

    #[test]
    fn node_lists_that_cannot_work_are_refused_naming_the_url() {
        for (url, says) in [
            ("amqp://u:secret@a,,b/%2f", "empty"),
            ("amqp://u:secret@a/%2f;amqps://u:secret@b/%2f", "scheme"),
            (
                "amqp://u:secret@a/%2f?queue_type=quorum;amqp://u:secret@b/%2f",
                "queue_type",
            ),
            ("amqp://u:secret@a/%2f;;amqp://u:secret@b/%2f", "empty URL"),
            ("amqp://u:secret@a/%2f;redis://u:secret@b/", "amqp://"),
            (
                "amqp://u:secret@a,b/%2f?failover_strategy=random",
                "failover_strategy",
            ),
        ] {
            let e = Config::parse(url).err().expect(url).to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
            assert!(e.contains("u:***@a"), "names the URL: {e}");
        }
    }

    #[test]
    fn bad_urls_do_not_echo_passwords() {
        for url in [
            "amqp://u:secret@h:5672/%2f?queue_type=fast",
            "amqp://u:secret@h:notaport/",
            "amqp://u:secret@h/?connect_timeout_ms=soon",
        ] {
            let e = Config::parse(url).err().expect(url).to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
