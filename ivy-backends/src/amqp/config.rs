//! The AMQP URL: what lapin connects to, Ivy's own options (and the TLS files, see
//! [`crate::tls`]) taken out of it, and the queue arguments those options imply.

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
const IVY_OPTIONS: [&str; 3] = ["queue_type", "connect_timeout_ms", "priority_queues"];

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
    uri: String,
    redacted: String,
    queue_type: QueueType,
    connect_timeout: Duration,
    /// The CA and client certificate of `?cacertfile=`, `?certfile=` and `?keyfile=`.
    tls: OwnedTLSConfig,
    priority_queues: PriorityQueues,
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

impl Config {
    pub(super) fn parse(url: &str) -> Result<Self> {
        let bad = |reason: String| ivy_core::url::error(url, reason);
        let parsed = ParsedUrl::parse(url).map_err(|e| bad(format!("malformed AMQP URL: {e}")))?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(bad("expected an amqp:// or amqps:// URL".into()));
        }
        let mut queue_type = QueueType::Classic;
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
        let mut priority_queues = PriorityQueues::None;
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
        let redacted = parsed.redacted();
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
            uri,
            redacted,
            queue_type,
            connect_timeout,
            tls,
            priority_queues,
        })
    }

    /// What lapin connects to: the URL without Ivy's own options, password included.
    pub(super) fn uri(&self) -> &str {
        &self.uri
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
        assert_eq!(c.uri, "amqp://u:secret@h:5672/%2f?heartbeat=10");
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
        assert_eq!(c.uri, "amqps://u:secret@h:5671/%2f?heartbeat=10");
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
        assert_eq!(c.uri, "amqp://h/%2f");
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
