//! The settings of one run: URLs and keys from the environment or the options, and the
//! broker, notifier and management API they lead to.

use std::time::Duration;

#[cfg(feature = "amqp")]
use ivy_backends::amqp::AmqpBroker;
#[cfg(feature = "sqs")]
use ivy_backends::sqs::SqsBroker;
use ivy_backends::AnyNotifier;
use ivy_core::url::{redact, ParsedUrl};
use ivy_core::Keyring;

use crate::cli::Global;
#[cfg(feature = "amqp")]
use crate::management::Management;
use crate::output::Failure;

/// What the options and the environment say.
#[derive(Debug)]
pub struct Settings {
    broker_url: Option<String>,
    result_url: Option<String>,
    pub keyring: Keyring,
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    management_url: Option<String>,
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    no_management: bool,
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    insecure_management: bool,
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    pub connect_timeout: Duration,
    pub json: bool,
}

/// The broker an inspection talks to.
#[derive(Debug)]
pub enum Target {
    /// RabbitMQ, with its management API unless it was turned off.
    #[cfg(feature = "amqp")]
    Amqp(AmqpBroker, Option<Management>),
    /// SQS.
    #[cfg(feature = "sqs")]
    Sqs(SqsBroker),
}

impl Settings {
    pub fn from_cli(global: &Global) -> Result<Self, Failure> {
        let keyring = match global.keys.as_deref().filter(|k| !k.trim().is_empty()) {
            // The error names what is wrong with the list, never a secret.
            Some(spec) => Keyring::from_spec(spec)
                .map_err(|e| Failure::Usage(format!("IVY_KEYS (or --keys) is refused: {e}")))?,
            None => Keyring::new(),
        };
        Ok(Settings {
            broker_url: global.broker_url.clone().filter(|u| !u.is_empty()),
            result_url: global.result_url.clone().filter(|u| !u.is_empty()),
            keyring,
            management_url: global.management_url.clone().filter(|u| !u.is_empty()),
            no_management: global.no_management,
            insecure_management: global.insecure_management,
            connect_timeout: global.connect_timeout,
            json: global.json,
        })
    }

    fn broker_url(&self) -> Result<&str, Failure> {
        self.broker_url.as_deref().ok_or_else(|| {
            Failure::Usage(
                "no broker: set IVY_BROKER_URL or --broker-url (amqp://… or sqs://…)".into(),
            )
        })
    }

    /// The broker, not connected yet (the first operation connects).
    pub async fn target(&self) -> Result<Target, Failure> {
        let url = self.broker_url()?;
        // A URL naming several nodes (a RabbitMQ cluster) is read off its first node here;
        // the broker itself takes them all.
        let first = first_node(url);
        let parsed = ParsedUrl::parse(&first)
            .map_err(|e| Failure::Usage(format!("broker URL {}: {e}", redact(url))))?;
        match parsed.scheme() {
            #[cfg(feature = "amqp")]
            "amqp" | "amqps" => {
                let broker = AmqpBroker::from_url(&self.with_connect_timeout(url, &parsed))?;
                let management = if self.no_management {
                    None
                } else {
                    Some(self.management(&parsed)?)
                };
                Ok(Target::Amqp(broker, management))
            }
            #[cfg(not(feature = "amqp"))]
            "amqp" | "amqps" => Err(not_built("RabbitMQ support (amqp://)", "amqp")),
            #[cfg(feature = "sqs")]
            "sqs" => Ok(Target::Sqs(SqsBroker::from_url(url).await?)),
            #[cfg(not(feature = "sqs"))]
            "sqs" => Err(not_built("SQS support (sqs://)", "sqs")),
            "memory" => Err(Failure::Usage(format!(
                "broker URL {url}: an in-memory broker lives in its own process; `ivy` needs \
                 RabbitMQ (amqp://) or SQS (sqs://)"
            ))),
            other => Err(Failure::Usage(format!(
                "broker URL {}: unknown scheme `{other}` (known: amqp, amqps, sqs)",
                redact(url)
            ))),
        }
    }

    /// The AMQP URL with `connect_timeout_ms` set to `--connect-timeout` unless it has one:
    /// a command should not wait the library's 30 s for an unreachable broker.
    #[cfg(feature = "amqp")]
    fn with_connect_timeout(&self, url: &str, parsed: &ParsedUrl) -> String {
        if parsed
            .query_pairs()
            .iter()
            .any(|(k, _)| k == "connect_timeout_ms")
        {
            return url.to_owned();
        }
        // Each URL of Celery's `;`-separated form gets it: the nodes must agree on it.
        url.split(';')
            .map(|part| {
                let sep = if part.contains('?') { '&' } else { '?' };
                format!(
                    "{part}{sep}connect_timeout_ms={}",
                    self.connect_timeout.as_millis().max(1)
                )
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The management API: `--management-url`/`IVY_MANAGEMENT_URL`, or the AMQP host (HTTPS
    /// on 15671 for `amqps://`, else HTTP on 15672); credentials from that URL, else the AMQP
    /// URL's (RabbitMQ's default guest/guest when it has none). An explicit `http://` URL is
    /// the user accepting clear text, as `--insecure-management` is.
    #[cfg(feature = "amqp")]
    fn management(&self, amqp: &ParsedUrl) -> Result<Management, Failure> {
        let vhost = match amqp.path_segments() {
            [] => "/".to_owned(),
            [v] if v.is_empty() => "/".to_owned(),
            [v] => v.clone(),
            _ => {
                return Err(Failure::Usage(
                    "the AMQP URL's path must be one vhost".into(),
                ))
            }
        };
        let amqp_user = if amqp.has_credentials() {
            (
                amqp.user().into_owned(),
                amqp.password().map(|p| p.into_owned()).unwrap_or_default(),
            )
        } else {
            ("guest".to_owned(), "guest".to_owned())
        };
        match &self.management_url {
            Some(text) => {
                let url = ParsedUrl::parse(text)
                    .map_err(|e| Failure::Usage(format!("management URL {}: {e}", redact(text))))?;
                let user = if url.has_credentials() {
                    (
                        url.user().into_owned(),
                        url.password().map(|p| p.into_owned()).unwrap_or_default(),
                    )
                } else {
                    amqp_user
                };
                Management::new(&url, user, vhost, self.connect_timeout, true)
            }
            None => {
                let text = crate::management::default_url(amqp);
                let url = ParsedUrl::parse(&text)
                    .map_err(|e| Failure::Usage(format!("management URL {text}: {e}")))?;
                Management::new(
                    &url,
                    amqp_user,
                    vhost,
                    self.connect_timeout,
                    self.insecure_management,
                )
            }
        }
    }

    /// Whether a result store is configured.
    pub fn has_result_store(&self) -> bool {
        self.result_url.is_some()
    }

    /// The result store.
    pub async fn notifier(&self) -> Result<AnyNotifier, Failure> {
        let url = self.result_url.as_deref().ok_or_else(|| {
            Failure::Usage("no result store: set IVY_RESULT_URL or --result-url (redis://…)".into())
        })?;
        if url.starts_with("memory:") {
            return Err(Failure::Usage(format!(
                "result URL {url}: an in-memory store lives in its own process; `ivy` needs Redis"
            )));
        }
        #[cfg(not(feature = "redis"))]
        if url.starts_with("redis") {
            return Err(not_built("Redis support (redis://)", "redis"));
        }
        Ok(ivy_backends::notifier_from_url(url).await?)
    }

    /// Seals `plaintext` with the current key when keys are configured.
    pub fn seal(&self, plaintext: Vec<u8>) -> Vec<u8> {
        if self.keyring.is_enabled() {
            self.keyring.seal_binary(&plaintext)
        } else {
            plaintext
        }
    }
}

/// The error for a URL of a backend this build of `ivy` left out: which cargo feature brings
/// it, and the command that installs `ivy` with it.
#[cfg(not(all(
    feature = "amqp",
    feature = "sqs",
    feature = "redis",
    feature = "dashboard"
)))]
pub fn not_built(what: &str, feature: &str) -> Failure {
    Failure::Usage(format!(
        "this `ivy` was built without {what}: reinstall it with `cargo install \
         --path ivy-cli --features {feature}` from the root of an Ivy checkout"
    ))
}

/// The first node's URL of a URL that may name several (`amqp://u:p@h1,h2/…`, or URLs
/// separated by `;`); the URL itself otherwise.
fn first_node(url: &str) -> String {
    let first = url.split(';').next().unwrap_or(url);
    ivy_core::url::split_hosts(first)
        .ok()
        .and_then(|nodes| nodes.into_iter().next())
        .unwrap_or_else(|| first.to_owned())
}

#[cfg(test)]
mod cluster_url_tests {
    use super::first_node;

    #[test]
    fn a_cluster_url_is_read_off_its_first_node() {
        assert_eq!(
            first_node("amqp://u:p@mq-1:5672,mq-2:5672/%2f?queue_type=quorum"),
            "amqp://u:p@mq-1:5672/%2f?queue_type=quorum"
        );
        assert_eq!(first_node("amqp://a/%2f;amqp://b/%2f"), "amqp://a/%2f");
        assert_eq!(first_node("sqs://?region=x"), "sqs://?region=x");
    }
}
