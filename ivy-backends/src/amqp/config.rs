//! The AMQP URL: what lapin connects to, Ivy's own options taken out of it, and the queue
//! arguments those options imply.

use std::time::Duration;

use ivy_core::url::ParsedUrl;
use ivy_core::Result;
use lapin::types::{AMQPValue, FieldTable};

use super::long_string;
use super::DEFAULT_CONNECT_TIMEOUT;

pub(super) const MAX_PRIORITY: u8 = 9;

/// The query options that are Ivy's; lapin gets the others.
const IVY_OPTIONS: [&str; 2] = ["queue_type", "connect_timeout_ms"];

/// Which kind of RabbitMQ queue Ivy declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// Classic queues with `x-max-priority` 9: priorities work.
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
                // lapin's own options (heartbeat, frame_max, channel_max, connection_timeout,
                // auth_mechanism) stay in the URL lapin gets.
                _ => continue,
            }
            ours = true;
        }
        // lapin gets the URL as given, unless Ivy's options have to come out of it.
        let uri = if ours {
            parsed.without_query_keys(&IVY_OPTIONS)
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
        let redacted = parsed.redacted();
        Ok(Config {
            uri,
            redacted,
            queue_type,
            connect_timeout,
        })
    }

    /// What lapin connects to: the URL without Ivy's own options, password included.
    pub(super) fn uri(&self) -> &str {
        &self.uri
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

    pub(super) fn work_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        match self.queue_type {
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
