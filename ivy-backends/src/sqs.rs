//! Amazon SQS broker on the AWS SDK: [`SqsBroker`].
//!
//! Owns the mapping of Ivy's queue model onto SQS and nothing else: envelopes, retries and
//! results are the runtime's business. Per Ivy queue `q` it uses, creating them when missing
//! (unless `create_queues=false`):
//!
//! - `<prefix>q`: the work queue; a name ending in `.fifo` makes a FIFO queue (`FifoQueue`),
//!   with `MessageGroupId` = the queue name (or `?group=`) and `MessageDeduplicationId` = the
//!   task id (a fresh id for retries, which must not be deduplicated against the original);
//! - `<prefix>q-dead` (`<prefix>q-dead.fifo`): its dead letters, each carrying the reason in the
//!   `ivy-reason` message attribute.
//!
//! SQS caps `DelaySeconds` at 15 minutes. A longer delay is sent with the longest one SQS takes
//! plus an `ivy-not-before` attribute (epoch ms); a consumer that receives such a message early
//! sends it again with the remaining delay and deletes the original, so the worker never sees
//! it early. FIFO queues take no per-message delay at all: there a delayed message gets a group
//! of its own and a consumer that receives it early hides it (`ChangeMessageVisibility`) until
//! it is due.
//!
//! A received message stays invisible to other consumers for the visibility timeout. A
//! heartbeat per consumer extends that for every delivery not settled yet, so a long task is
//! not run twice; dropping an unsettled delivery makes its message visible again at once, and
//! if the process dies the message reappears when the timeout runs out.
//!
//! SQS bodies are text restricted to XML characters, so a body that is not such text (rare:
//! Ivy's envelopes are JSON) travels base64-encoded, marked by an `ivy-encoding` attribute.
//! Message bodies and credentials are never logged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use aws_smithy_http_client::tls;
use ivy_core::{
    Broker, Capabilities, Consumer, DeadLetter, Delivery, Error, OutgoingMessage, Result,
};
use ivy_core::sync::lock;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::redact_url;

const BACKEND: &str = "sqs";

/// SQS's message size limit (body plus message attributes) for standard and FIFO queues.
/// AWS has since raised it to 1 MiB, but queues created earlier and local servers (moto)
/// still enforce 256 KiB, so Ivy holds to the smaller limit.
pub const MAX_MESSAGE_SIZE: usize = 262_144;

/// The longest `DelaySeconds` SQS accepts; longer delays take several hops.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// The message attribute with a dead letter's reason.
pub const REASON_ATTRIBUTE: &str = "ivy-reason";

/// The message attribute with the earliest delivery time (ms since the Unix epoch) of a
/// message whose delay is longer than one SQS hop.
pub const NOT_BEFORE_ATTRIBUTE: &str = "ivy-not-before";

/// The message attribute that marks a base64-encoded (or empty) body.
const ENCODING_ATTRIBUTE: &str = "ivy-encoding";

/// SQS's longest visibility timeout, 12 hours.
const MAX_VISIBILITY: u32 = 43_200;

/// SQS queue names have at most 80 characters, `.fifo` included.
const MAX_QUEUE_NAME: usize = 80;

/// Dead letters are kept as long as SQS allows (14 days): someone has to look at them.
const DEAD_RETENTION_SECS: &str = "1209600";

/// What an SQS API call returns, boxed: the SDK's error types differ per operation.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The defaults of the URL options.
const DEFAULT_VISIBILITY: u32 = 30;
const DEFAULT_WAIT: u32 = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Config {
    /// The URL for errors and logs (it never holds a secret: credentials in it are refused).
    url: String,
    /// `http://host:port` (or `https://` with `tls=true`) for a local or private endpoint;
    /// `None` lets the AWS chain pick the endpoint.
    endpoint: Option<String>,
    region: Option<String>,
    create_queues: bool,
    visibility_timeout: u32,
    wait_time: u32,
    prefix: String,
    group: Option<String>,
    max_delay: u32,
}

impl Config {
    fn parse(url: &str) -> Result<Self> {
        let redacted = redact_url(url);
        let bad = |reason: String| Error::Url {
            url: redacted.clone(),
            reason,
        };
        let rest = url
            .strip_prefix("sqs://")
            .ok_or_else(|| bad("expected an sqs:// URL".into()))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(bad(
                "credentials come from the AWS credential chain (environment, profile, \
                 instance role), not from the URL"
                    .into(),
            ));
        }
        if !path.is_empty() && path != "/" {
            return Err(bad(
                "an sqs:// URL has no path: queues are named by the tasks".into(),
            ));
        }
        if !authority.is_empty() {
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
                return Err(bad(format!(
                    "`{authority}` is not a host or host:port for the endpoint"
                )));
            }
        }
        let mut config = Config {
            url: redacted.clone(),
            endpoint: None,
            region: None,
            create_queues: true,
            visibility_timeout: DEFAULT_VISIBILITY,
            wait_time: DEFAULT_WAIT,
            prefix: String::new(),
            group: None,
            max_delay: MAX_DELAY.as_secs() as u32,
        };
        let mut tls = false;
        let mut seen = HashSet::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !seen.insert(key) {
                return Err(bad(format!("option `{key}` is given twice")));
            }
            let number = |min: u32, max: u32| {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "{key} must be a whole number of seconds from {min} to {max}, not `{value}`"
                        ))
                    })
            };
            let flag = || match value {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(bad(format!(
                    "{key} must be `true` or `false`, not `{value}`"
                ))),
            };
            match key {
                "region" => {
                    if value.is_empty()
                        || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    {
                        return Err(bad(format!("`{value}` is not an AWS region")));
                    }
                    config.region = Some(value.to_owned());
                }
                "create_queues" => config.create_queues = flag()?,
                "tls" => tls = flag()?,
                "visibility_timeout" => config.visibility_timeout = number(1, MAX_VISIBILITY)?,
                "wait_time" => config.wait_time = number(0, 20)?,
                "max_delay" => config.max_delay = number(1, MAX_DELAY.as_secs() as u32)?,
                "prefix" => {
                    if !value.chars().all(queue_name_char) || value.len() > MAX_QUEUE_NAME / 2 {
                        return Err(bad(format!(
                            "prefix may hold up to {} letters, digits, `-` and `_`",
                            MAX_QUEUE_NAME / 2
                        )));
                    }
                    config.prefix = value.to_owned();
                }
                "group" => {
                    // SQS: 1 to 128 characters, alphanumeric and punctuation.
                    if value.is_empty()
                        || value.len() > 128
                        || !value.chars().all(|c| c.is_ascii_graphic())
                    {
                        return Err(bad(
                            "group must have 1 to 128 letters, digits or punctuation".into(),
                        ));
                    }
                    config.group = Some(value.to_owned());
                }
                _ => {
                    return Err(bad(format!(
                        "unknown option `{key}` (known: region, create_queues, visibility_timeout, \
                         wait_time, prefix, group, max_delay, tls)"
                    )))
                }
            }
        }
        if !authority.is_empty() {
            let scheme = if tls { "https" } else { "http" };
            config.endpoint = Some(format!("{scheme}://{authority}"));
        } else if tls {
            return Err(bad(
                "tls applies to an endpoint given as sqs://host:port; AWS's own endpoints always use TLS"
                    .into(),
            ));
        }
        Ok(config)
    }

    /// The SQS queue name of Ivy queue `queue`, or of its dead letters.
    fn sqs_name(&self, queue: &str, dead: bool) -> String {
        let suffix = if dead { "-dead" } else { "" };
        match queue.strip_suffix(".fifo") {
            Some(base) => format!("{}{base}{suffix}.fifo", self.prefix),
            None => format!("{}{queue}{suffix}", self.prefix),
        }
    }

    fn check_queue_name(&self, queue: &str) -> Result<()> {
        let base = queue.strip_suffix(".fifo").unwrap_or(queue);
        let longest = self.sqs_name(queue, true).len();
        if base.is_empty() || !base.chars().all(queue_name_char) || longest > MAX_QUEUE_NAME {
            return Err(Error::Config(format!(
                "SQS queue names take letters, digits, `-` and `_` (plus a `.fifo` suffix), and \
                 with the prefix and `-dead` at most {MAX_QUEUE_NAME} characters: `{queue}` does not fit"
            )));
        }
        Ok(())
    }

    fn group<'a>(&'a self, queue: &'a str) -> &'a str {
        self.group.as_deref().unwrap_or(queue)
    }
}

fn queue_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn is_fifo(queue: &str) -> bool {
    queue.ends_with(".fifo")
}

/// This backend's failures (see `crate::failure`).
struct Failure;

impl Failure {
    fn error(message: impl Into<String>) -> Error {
        crate::failure::error(BACKEND, message)
    }

    fn caused(message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        crate::failure::caused(BACKEND, message, source)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000).min(u64::MAX as u128) as u64
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Whether SQS takes `s` as a body or attribute value: XML 1.0 characters only.
fn sqs_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
    })
}

/// How a body travels: SQS takes non-empty XML text only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Text,
    Base64,
    /// SQS refuses empty bodies; an empty one travels as one space.
    Empty,
}

impl Encoding {
    fn attribute(self) -> Option<&'static str> {
        match self {
            Encoding::Text => None,
            Encoding::Base64 => Some("base64"),
            Encoding::Empty => Some("empty"),
        }
    }
}

fn encode_body(body: &[u8]) -> (String, Encoding) {
    if body.is_empty() {
        return (" ".to_owned(), Encoding::Empty);
    }
    match std::str::from_utf8(body) {
        Ok(s) if sqs_text(s) => (s.to_owned(), Encoding::Text),
        _ => (aws_smithy_types::base64::encode(body), Encoding::Base64),
    }
}

/// The body bytes of a received message. A body that cannot be decoded is handed on as it
/// came, so the worker dead-letters it as malformed instead of it circling forever.
fn decode_body(body: String, encoding: Option<&str>) -> Vec<u8> {
    match encoding {
        Some("empty") => Vec::new(),
        Some("base64") => match aws_smithy_types::base64::decode(&body) {
            Ok(bytes) => bytes,
            Err(_) => body.into_bytes(),
        },
        _ => body.into_bytes(),
    }
}

/// Ivy's message attributes of one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Attrs {
    encoding: Option<&'static str>,
    not_before: Option<u64>,
    reason: Option<String>,
}

impl Attrs {
    fn from_message(m: &Message) -> Attrs {
        let mut attrs = Attrs::default();
        if let Some(map) = m.message_attributes() {
            let get = |name: &str| map.get(name).and_then(|v| v.string_value());
            attrs.encoding = match get(ENCODING_ATTRIBUTE) {
                Some("base64") => Some("base64"),
                Some("empty") => Some("empty"),
                _ => None,
            };
            attrs.not_before = get(NOT_BEFORE_ATTRIBUTE).and_then(|v| v.parse().ok());
            attrs.reason = get(REASON_ATTRIBUTE).map(str::to_owned);
        }
        attrs
    }

    fn list(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut list = Vec::new();
        if let Some(e) = self.encoding {
            list.push((ENCODING_ATTRIBUTE, "String", e.to_owned()));
        }
        if let Some(t) = self.not_before {
            list.push((NOT_BEFORE_ATTRIBUTE, "Number", t.to_string()));
        }
        if let Some(r) = &self.reason {
            list.push((REASON_ATTRIBUTE, "String", r.clone()));
        }
        list
    }

    /// What SQS counts against its size limit: the body plus each attribute's name, type and
    /// value.
    fn wire_size(&self, body: &str) -> usize {
        body.len()
            + self
                .list()
                .iter()
                .map(|(n, t, v)| n.len() + t.len() + v.len())
                .sum::<usize>()
    }

    fn to_sdk(&self) -> Result<Option<HashMap<String, MessageAttributeValue>>> {
        let list = self.list();
        if list.is_empty() {
            return Ok(None);
        }
        let mut map = HashMap::new();
        for (name, data_type, value) in list {
            let v = MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(value)
                .build()
                .map_err(|e| Failure::caused("could not build a message attribute", e))?;
            map.insert(name.to_owned(), v);
        }
        Ok(Some(map))
    }
}

/// A dead letter's reason as SQS takes it: XML text, not empty, and small enough to leave the
/// body room under the size limit (a dead letter that cannot be sent would circle forever).
fn reason_attribute(reason: &str, room: usize) -> Option<String> {
    let cleaned: String = reason
        .chars()
        .map(|c| {
            if sqs_text(c.encode_utf8(&mut [0; 4])) {
                c
            } else {
                '\u{FFFD}'
            }
        })
        .collect();
    let mut cut = room.min(cleaned.len());
    while !cleaned.is_char_boundary(cut) {
        cut -= 1;
    }
    let cleaned = cleaned[..cut].trim_end();
    (!cleaned.is_empty()).then(|| cleaned.to_owned())
}

/// A deduplication id SQS accepts: the task id where it fits (1 to 128 printable ASCII
/// characters), else a fresh one.
fn dedup_id(id: &str) -> String {
    if !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()) {
        id.to_owned()
    } else {
        ivy_core::envelope::new_task_id()
    }
}

/// One SendMessage, fully planned.
#[derive(Debug)]
struct Outgoing {
    body: String,
    attrs: Attrs,
    delay_secs: u32,
    /// FIFO queues only: (MessageGroupId, MessageDeduplicationId).
    fifo: Option<(String, String)>,
}

/// State shared by clones of one broker.
struct Inner {
    client: Client,
    config: Config,
    /// Queue URLs by SQS queue name, after GetQueueUrl or CreateQueue.
    urls: Mutex<HashMap<String, Arc<str>>>,
}

/// Amazon SQS broker. Cheap to clone: clones share the client and the queue URL cache.
///
/// ```no_run
/// # async fn demo() -> ivy_core::Result<()> {
/// use ivy_backends::sqs::SqsBroker;
/// // Real AWS, with credentials and endpoint from the standard AWS chain:
/// let aws = SqsBroker::from_url("sqs://?region=eu-west-1").await?;
/// // A local server such as moto or localstack:
/// let local = SqsBroker::from_url("sqs://127.0.0.1:4566?region=us-east-1").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqsBroker {
    inner: Arc<Inner>,
}

impl fmt::Debug for SqsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsBroker")
            .field("url", &self.inner.config.url)
            .finish_non_exhaustive()
    }
}

impl SqsBroker {
    /// The broker for `url`: `sqs://?region=…` for AWS, `sqs://host:port?region=…` for an
    /// endpoint of your own (plain HTTP; add `tls=true` for HTTPS).
    ///
    /// Credentials and, without `region=`, the region come from the standard AWS chain
    /// (environment, shared config and credentials files, web identity, ECS and EC2 roles).
    /// For an endpoint given in the URL with no `AWS_ACCESS_KEY_ID` in the environment,
    /// static test credentials are used: local servers such as moto accept any.
    ///
    /// Options: `create_queues=false` (default true: missing queues are created),
    /// `visibility_timeout=` seconds a received message stays hidden without a heartbeat
    /// (default 30), `wait_time=` long-poll seconds (0 to 20, default 20), `prefix=` for
    /// every queue name, `group=` the `MessageGroupId` on FIFO queues (default: the queue
    /// name), `max_delay=` the longest delay given to SQS in one hop (1 to 900 s, default
    /// 900; lower it only to exercise long delays in tests).
    ///
    /// Nothing is sent before the first operation, so an unreachable endpoint or wrong
    /// credentials show up there.
    pub async fn from_url(url: &str) -> Result<SqsBroker> {
        let config = Config::parse(url)?;
        // The SDK's default client brings aws-lc-rs; ring is already built for the AMQP and
        // Redis backends and builds in a fraction of the time.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
                && std::env::var_os("AWS_PROFILE").is_none()
            {
                loader = loader.credentials_provider(Credentials::new(
                    "test",
                    "test",
                    None,
                    None,
                    "ivy-local-endpoint",
                ));
            }
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(Error::Url {
                url: config.url,
                reason: "no AWS region: add `region=` to the URL or set AWS_REGION".into(),
            });
        }
        Ok(SqsBroker {
            inner: Arc::new(Inner {
                client: Client::new(&sdk),
                config,
                urls: Mutex::default(),
            }),
        })
    }

    /// The SDK client, for what Ivy does not cover (queue attributes, metrics).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The URL of the work queue (`dead` false) or dead-letter queue of Ivy queue `queue`,
    /// creating it when missing (if allowed): a new work queue gets its dead-letter queue
    /// alongside. `Ok(None)` when it does not exist and `create` is false.
    async fn queue_url(&self, queue: &str, dead: bool, create: bool) -> Result<Option<Arc<str>>> {
        let name = self.config().sqs_name(queue, dead);
        if let Some(url) = lock(&self.inner.urls).get(&name) {
            return Ok(Some(url.clone()));
        }
        let url = match self
            .inner
            .client
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
        {
            Ok(out) => out.queue_url().map(Arc::from),
            Err(e) => {
                let missing = e.as_service_error().is_some_and(|s| {
                    s.is_queue_does_not_exist()
                        || s.code().is_some_and(|c| c.contains("NonExistentQueue"))
                });
                if !missing {
                    return Err(Failure::caused(
                        format!("could not look up SQS queue `{name}`"),
                        e,
                    ));
                }
                if !create {
                    return Ok(None);
                }
                if !self.config().create_queues {
                    return Err(Failure::error(format!(
                        "SQS queue `{name}` does not exist, and the URL says create_queues=false"
                    )));
                }
                if !dead {
                    // Dead letters must have somewhere to go before any work arrives.
                    Box::pin(self.queue_url(queue, true, true)).await?;
                }
                Some(self.create_queue(&name, is_fifo(queue), dead).await?)
            }
        };
        let url = url.ok_or_else(|| Failure::error(format!("SQS gave no URL for `{name}`")))?;
        lock(&self.inner.urls).insert(name, url.clone());
        Ok(Some(url))
    }

    async fn create_queue(&self, name: &str, fifo: bool, dead: bool) -> Result<Arc<str>> {
        let mut create = self
            .inner
            .client
            .create_queue()
            .queue_name(name)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                self.config().visibility_timeout.to_string(),
            );
        if fifo {
            create = create.attributes(QueueAttributeName::FifoQueue, "true");
        }
        if dead {
            create = create.attributes(
                QueueAttributeName::MessageRetentionPeriod,
                DEAD_RETENTION_SECS,
            );
        }
        let out = create
            .send()
            .await
            .map_err(|e| Failure::caused(format!("could not create SQS queue `{name}`"), e))?;
        debug!(queue = name, "created SQS queue");
        out.queue_url()
            .map(Arc::from)
            .ok_or_else(|| Failure::error(format!("SQS gave no URL for `{name}`")))
    }

    async fn work_url(&self, queue: &str) -> Result<Arc<str>> {
        self.queue_url(queue, false, true)
            .await?
            .ok_or_else(|| Failure::error(format!("SQS queue for `{queue}` is missing")))
    }

    async fn dead_url(&self, queue: &str) -> Result<Arc<str>> {
        self.queue_url(queue, true, true).await?.ok_or_else(|| {
            Failure::error(format!("SQS dead-letter queue for `{queue}` is missing"))
        })
    }

    /// Plans a send of `body` to Ivy queue `queue` after `delay`; refuses it when too large.
    fn plan(
        &self,
        queue: &str,
        body: &[u8],
        delay: Option<Duration>,
        dedup: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Outgoing> {
        let (body, encoding) = encode_body(body);
        let mut attrs = Attrs {
            encoding: encoding.attribute(),
            ..Attrs::default()
        };
        let delay = delay.filter(|d| !d.is_zero());
        let fifo = is_fifo(queue);
        let mut delay_secs = 0;
        if let Some(d) = delay {
            let secs = ceil_secs(d);
            if fifo {
                // FIFO queues take no per-message delay: the consumer holds it back.
                attrs.not_before = Some(now_ms().saturating_add(millis(d)));
            } else if secs > u64::from(self.config().max_delay) {
                delay_secs = self.config().max_delay;
                attrs.not_before = Some(now_ms().saturating_add(millis(d)));
            } else {
                delay_secs = secs as u32;
            }
        }
        if let Some(reason) = reason {
            let used = attrs.wire_size(&body) + REASON_ATTRIBUTE.len() + "String".len();
            attrs.reason =
                reason_attribute(reason, MAX_MESSAGE_SIZE.saturating_sub(used).min(16 * 1024));
        }
        let size = attrs.wire_size(&body);
        if size > MAX_MESSAGE_SIZE {
            return Err(Error::MessageTooLarge {
                size,
                limit: MAX_MESSAGE_SIZE,
            });
        }
        let fifo = fifo.then(|| {
            let dedup = match dedup {
                Some(id) => dedup_id(id),
                None => ivy_core::envelope::new_task_id(),
            };
            // A delayed message in the queue's group would hold up every message behind it
            // while it waits; its own group lets the rest flow.
            let group = if attrs.not_before.is_some() {
                dedup.clone()
            } else {
                self.config().group(queue).to_owned()
            };
            (group, dedup)
        });
        Ok(Outgoing {
            body,
            attrs,
            delay_secs,
            fifo,
        })
    }

    async fn send(&self, queue_url: &str, out: Outgoing, what: &str) -> Result<()> {
        let mut send = self
            .inner
            .client
            .send_message()
            .queue_url(queue_url)
            .message_body(out.body)
            .set_message_attributes(out.attrs.to_sdk()?);
        if out.delay_secs > 0 {
            send = send.delay_seconds(out.delay_secs as i32);
        }
        if let Some((group, dedup)) = out.fifo {
            send = send.message_group_id(group).message_deduplication_id(dedup);
        }
        send.send()
            .await
            .map_err(|e| Failure::caused(format!("could not {what}"), e))?;
        Ok(())
    }

    /// Publishes up to 10 messages per SendMessageBatch call (fewer where their sizes add up
    /// to more than SQS takes in one batch). Every message is checked for size before
    /// anything is sent; on a partial failure the error says how many were not sent (the
    /// others were).
    pub async fn publish_batch(&self, msgs: Vec<OutgoingMessage>) -> Result<()> {
        let mut by_queue: Vec<(String, Vec<(String, Outgoing)>)> = Vec::new();
        for msg in msgs {
            self.config().check_queue_name(&msg.queue)?;
            let out = self.plan(&msg.queue, &msg.body, msg.delay, Some(&msg.id), None)?;
            match by_queue.iter_mut().find(|(q, _)| *q == msg.queue) {
                Some((_, list)) => list.push((msg.id, out)),
                None => by_queue.push((msg.queue, vec![(msg.id, out)])),
            }
        }
        let mut failed = 0usize;
        let mut first_error: Option<String> = None;
        for (queue, list) in by_queue {
            let url = self.work_url(&queue).await?;
            let mut batch: Vec<SendMessageBatchRequestEntry> = Vec::new();
            let mut batch_size = 0;
            let mut list = list.into_iter().peekable();
            while let Some((_, out)) = list.next() {
                let size = out.attrs.wire_size(&out.body);
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(batch.len().to_string())
                    .message_body(out.body)
                    .set_message_attributes(out.attrs.to_sdk()?);
                if out.delay_secs > 0 {
                    entry = entry.delay_seconds(out.delay_secs as i32);
                }
                if let Some((group, dedup)) = out.fifo {
                    entry = entry
                        .message_group_id(group)
                        .message_deduplication_id(dedup);
                }
                batch.push(
                    entry
                        .build()
                        .map_err(|e| Failure::caused("could not build a batch entry", e))?,
                );
                batch_size += size;
                let next_size = list.peek().map_or(0, |(_, o)| o.attrs.wire_size(&o.body));
                let full = batch.len() == 10
                    || batch_size + next_size > MAX_MESSAGE_SIZE
                    || list.peek().is_none();
                if !full {
                    continue;
                }
                let out = self
                    .inner
                    .client
                    .send_message_batch()
                    .queue_url(&*url)
                    .set_entries(Some(std::mem::take(&mut batch)))
                    .send()
                    .await
                    .map_err(|e| {
                        Failure::caused(format!("could not publish a batch to `{queue}`"), e)
                    })?;
                batch_size = 0;
                for f in out.failed() {
                    failed += 1;
                    first_error.get_or_insert_with(|| {
                        format!("{}: {}", f.code(), f.message().unwrap_or_default())
                    });
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(first) => Err(Failure::error(format!(
                "SQS refused {failed} message(s) of the batch; the first because {first}"
            ))),
        }
    }

    async fn change_visibility(&self, queue_url: &str, receipt: &str, secs: u32) -> Result<()> {
        self.inner
            .client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(secs as i32)
            .send()
            .await
            .map_err(|e| Failure::caused("could not change a message's visibility", e))?;
        Ok(())
    }

    async fn delete(&self, queue_url: &str, receipt: &str) -> Result<()> {
        self.inner
            .client
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| Failure::caused("could not delete a message", e))?;
        Ok(())
    }

    /// Makes received messages visible again, ten per call.
    async fn release(&self, queue_url: &str, receipts: Vec<String>) {
        change_visibility_batch(&self.inner.client, queue_url, &receipts, 0, |e| {
            debug!(error = %e, "could not release received messages; they reappear after the visibility timeout")
        })
        .await;
    }

    /// Handles a message received before its `ivy-not-before`: on a standard queue, send it
    /// again with (up to one hop of) the remaining delay and delete the original; on a FIFO
    /// queue, hide it until it is due.
    async fn redelay(&self, queue: &QueueRef, message: Received, not_before: u64) {
        let remaining = Duration::from_millis(not_before.saturating_sub(now_ms()));
        let secs = ceil_secs(remaining).max(1);
        let result = if queue.fifo {
            // SQS counts the 12-hour limit from the receive: leave a minute's margin.
            let secs = secs.min(u64::from(MAX_VISIBILITY - 60)) as u32;
            self.change_visibility(&queue.url, &message.receipt, secs)
                .await
        } else {
            let out = Outgoing {
                body: message.wire_body,
                attrs: message.attrs,
                delay_secs: secs.min(u64::from(self.config().max_delay)) as u32,
                fifo: None,
            };
            // Send first: if the delete then fails, the early copy comes back and is
            // re-sent again, a duplicate the not-before time keeps from running early.
            match self.send(&queue.url, out, "delay a message again").await {
                Ok(()) => self.delete(&queue.url, &message.receipt).await,
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(()) => {
                debug!(queue = %queue.name, remaining = ?remaining, "message received before its time; delayed again")
            }
            Err(e) => {
                warn!(queue = %queue.name, error = %ErrorChain(&e), "could not delay an early message again; it reappears after the visibility timeout")
            }
        }
    }
}

/// Displays an error with its sources, for logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl Broker for SqsBroker {
    type Delivery = SqsDelivery;
    type Consumer = SqsConsumer;

    fn capabilities(&self) -> Capabilities {
        // Only `.fifo` queues keep order, and capabilities are per broker.
        Capabilities::new(MAX_MESSAGE_SIZE)
    }

    async fn publish(&self, msg: OutgoingMessage) -> Result<()> {
        self.config().check_queue_name(&msg.queue)?;
        let out = self.plan(&msg.queue, &msg.body, msg.delay, Some(&msg.id), None)?;
        let url = self.work_url(&msg.queue).await?;
        self.send(&url, out, &format!("publish to `{}`", msg.queue))
            .await
    }

    async fn consume(&self, queues: &[String], prefetch: usize) -> Result<SqsConsumer> {
        if queues.is_empty() || prefetch == 0 {
            return Err(Error::Config(
                "consume needs at least one queue and a prefetch of at least 1".into(),
            ));
        }
        let mut refs = Vec::with_capacity(queues.len());
        for q in queues {
            self.config().check_queue_name(q)?;
            refs.push(Arc::new(QueueRef {
                name: Arc::from(q.as_str()),
                url: self.work_url(q).await?,
                fifo: is_fifo(q),
            }));
        }
        let tracker = Arc::new(Tracker::default());
        tokio::spawn(heartbeat(
            self.inner.client.clone(),
            Arc::downgrade(&tracker),
            self.config().visibility_timeout,
        ));
        Ok(SqsConsumer {
            broker: self.clone(),
            queues: refs,
            next_queue: 0,
            permits: Arc::new(Semaphore::new(prefetch)),
            tracker,
            buffer: VecDeque::new(),
            pending: None,
            closed: false,
        })
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        self.config().check_queue_name(queue)?;
        let Some(url) = self.queue_url(queue, true, false).await? else {
            return Ok(Vec::new());
        };
        let mut letters: Vec<(u64, DeadLetter)> = Vec::new();
        while letters.len() < max {
            let out = self
                .inner
                .client
                .receive_message()
                .queue_url(&*url)
                .max_number_of_messages((max - letters.len()).min(10) as i32)
                // A short wait only: callers poll, and want what is there now.
                .wait_time_seconds(if letters.is_empty() { 1 } else { 0 })
                .visibility_timeout(30)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| {
                    Failure::caused(format!("could not receive dead letters of `{queue}`"), e)
                })?;
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            let round_start = letters.len();
            let mut receipts = Vec::new();
            for m in messages {
                let sent = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let Some(received) = Received::new(m) else {
                    continue;
                };
                receipts.push(received.receipt.clone());
                letters.push((
                    sent,
                    DeadLetter {
                        queue: queue.to_owned(),
                        reason: received.attrs.reason.clone().unwrap_or_default(),
                        body: received.body(),
                    },
                ));
            }
            let entries = receipts
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .ok()
                })
                .collect();
            let deleted = self
                .inner
                .client
                .delete_message_batch()
                .queue_url(&*url)
                .set_entries(Some(entries))
                .send()
                .await;
            // A letter not deleted comes back after the visibility timeout: hand it out then,
            // not twice. Letters of earlier rounds are deleted already and must be returned.
            match deleted {
                Ok(out) => {
                    let mut failed: Vec<usize> = out
                        .failed()
                        .iter()
                        .filter_map(|f| f.id().parse().ok())
                        .collect();
                    failed.sort_unstable();
                    for i in failed.into_iter().rev() {
                        letters.remove(round_start + i);
                    }
                }
                Err(e) if round_start > 0 => {
                    warn!(queue, error = %DisplayErrorContext(&e), "could not delete dead letters; they come back later");
                    letters.truncate(round_start);
                    break;
                }
                Err(e) => {
                    return Err(Failure::caused(
                        format!("could not delete dead letters of `{queue}`"),
                        e,
                    ))
                }
            }
        }
        // SQS standard queues do not keep order; the sent time restores it within one take.
        letters.sort_by_key(|(sent, _)| *sent);
        Ok(letters.into_iter().map(|(_, l)| l).collect())
    }
}

/// One consumed queue.
#[derive(Debug)]
struct QueueRef {
    name: Arc<str>,
    url: Arc<str>,
    fifo: bool,
}

/// A received message, before it becomes a delivery.
#[derive(Debug)]
struct Received {
    wire_body: String,
    attrs: Attrs,
    receipt: String,
    receive_count: u32,
}

impl Received {
    fn new(m: Message) -> Option<Self> {
        let attrs = Attrs::from_message(&m);
        let receive_count = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        Some(Received {
            receipt: m.receipt_handle?,
            wire_body: m.body.unwrap_or_default(),
            attrs,
            receive_count,
        })
    }

    fn body(&self) -> Vec<u8> {
        decode_body(self.wire_body.clone(), self.attrs.encoding)
    }
}

/// The unsettled messages of one consumer, whose visibility the heartbeat extends.
#[derive(Debug, Default)]
struct Tracker {
    entries: Mutex<HashMap<u64, Tracked>>,
    next_id: AtomicU64,
    /// Held by the heartbeat while it extends visibilities, and by a release while it makes
    /// a message visible: an extension landing after a release would hide the message again.
    sending: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Tracked {
    queue_url: Arc<str>,
    receipt: String,
    extended_at: Instant,
}

impl Tracker {
    fn insert(&self, queue_url: Arc<str>, receipt: String) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.entries).insert(
            id,
            Tracked {
                queue_url,
                receipt,
                extended_at: Instant::now(),
            },
        );
        id
    }

    fn remove(&self, id: u64) {
        lock(&self.entries).remove(&id);
    }

    /// Entries due for an extension, grouped by queue URL, marked extended now.
    fn due(&self, older_than: Duration) -> HashMap<Arc<str>, Vec<String>> {
        let now = Instant::now();
        let mut due: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for t in lock(&self.entries).values_mut() {
            if now.duration_since(t.extended_at) >= older_than {
                t.extended_at = now;
                due.entry(t.queue_url.clone())
                    .or_default()
                    .push(t.receipt.clone());
            }
        }
        due
    }
}

/// Keeps the unsettled messages of one consumer invisible until they are settled. Ends when
/// the consumer and all its deliveries are gone.
async fn heartbeat(client: Client, tracker: Weak<Tracker>, visibility: u32) {
    let visibility_d = Duration::from_secs(u64::from(visibility));
    // Extend once a third of the timeout has passed, checking every sixth: an extension is
    // sent with at least half the timeout left.
    let extend_after = visibility_d / 3;
    let tick = (visibility_d / 6).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(tick).await;
        let Some(t) = tracker.upgrade() else {
            return;
        };
        let due = t.due(extend_after);
        if due.is_empty() {
            continue;
        }
        let _sending = t.sending.lock().await;
        for (url, receipts) in due {
            change_visibility_batch(
                &client,
                &url,
                &receipts,
                visibility as i32,
                |e| warn!(error = %e, "could not extend visibility; a long task may run twice"),
            )
            .await;
        }
    }
}

/// Sets the visibility timeout of `receipts`, ten per request. `on_error` hears of a failed
/// request; a failed single entry is a message settled meanwhile and only logged.
async fn change_visibility_batch(
    client: &Client,
    queue_url: &str,
    receipts: &[String],
    timeout: i32,
    on_error: impl Fn(&dyn fmt::Display),
) {
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .visibility_timeout(timeout)
                    .build()
                    .ok()
            })
            .collect();
        match client
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                for f in out.failed() {
                    debug!(code = f.code(), "visibility not changed for one message");
                }
            }
            Err(e) => on_error(&DisplayErrorContext(&e)),
        }
    }
}

/// A ReceiveMessage in flight, with the prefetch permits it may fill. It runs as a task of
/// its own so that a caller giving up on [`Consumer::next`] loses no received message.
struct Pending {
    queue: Arc<QueueRef>,
    permits: Vec<OwnedSemaphorePermit>,
    task: JoinHandle<Result<Vec<Message>, BoxError>>,
}

/// A received message waiting to be handed out.
struct Buffered {
    queue: Arc<QueueRef>,
    received: Received,
    track_id: u64,
    permit: OwnedSemaphorePermit,
}

/// Deliveries from one or more SQS queues by long polling.
///
/// Never holds more than `prefetch` unsettled messages, received and handed out together.
/// Dropping it makes received messages not handed out yet visible again.
pub struct SqsConsumer {
    broker: SqsBroker,
    queues: Vec<Arc<QueueRef>>,
    next_queue: usize,
    permits: Arc<Semaphore>,
    tracker: Arc<Tracker>,
    buffer: VecDeque<Buffered>,
    pending: Option<Pending>,
    closed: bool,
}

impl fmt::Debug for SqsConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsConsumer")
            .field(
                "queues",
                &self.queues.iter().map(|q| &q.name).collect::<Vec<_>>(),
            )
            .field("buffered", &self.buffer.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl SqsConsumer {
    fn start_receive(&mut self, first: OwnedSemaphorePermit) {
        let mut permits = vec![first];
        while permits.len() < 10 {
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let queue = self.queues[self.next_queue].clone();
        self.next_queue = (self.next_queue + 1) % self.queues.len();
        let config = self.broker.config();
        // With several queues a long poll on one would starve the others.
        let wait = if self.queues.len() == 1 {
            config.wait_time
        } else {
            config.wait_time.min(1)
        };
        let receive = self
            .broker
            .inner
            .client
            .receive_message()
            .queue_url(&*queue.url)
            .max_number_of_messages(permits.len() as i32)
            .wait_time_seconds(wait as i32)
            .visibility_timeout(config.visibility_timeout as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All");
        let task = tokio::spawn(async move {
            receive
                .send()
                .await
                .map(|out| out.messages.unwrap_or_default())
                .map_err(|e| Box::new(e) as BoxError)
        });
        self.pending = Some(Pending {
            queue,
            permits,
            task,
        });
    }

    fn accept(
        &mut self,
        queue: Arc<QueueRef>,
        messages: Vec<Message>,
        permits: Vec<OwnedSemaphorePermit>,
    ) {
        let now = now_ms();
        for (m, permit) in messages.into_iter().zip(permits) {
            let Some(received) = Received::new(m) else {
                continue;
            };
            if let Some(not_before) = received.attrs.not_before.filter(|t| *t > now) {
                let broker = self.broker.clone();
                let queue = queue.clone();
                // Detached: a caller giving up on `next` must not cut this half way.
                tokio::spawn(async move { broker.redelay(&queue, received, not_before).await });
                continue;
            }
            let track_id = self
                .tracker
                .insert(queue.url.clone(), received.receipt.clone());
            self.buffer.push_back(Buffered {
                queue: queue.clone(),
                received,
                track_id,
                permit,
            });
        }
    }

    /// Takes what was received but not handed out, for release.
    fn take_unhanded(&mut self) -> (Vec<(Arc<str>, String)>, Option<Pending>) {
        let buffered = self
            .buffer
            .drain(..)
            .map(|b| {
                self.tracker.remove(b.track_id);
                (b.queue.url.clone(), b.received.receipt)
            })
            .collect();
        (buffered, self.pending.take())
    }
}

/// Makes messages visible again: the buffered ones, then those of a receive still in flight.
async fn release_unhanded(
    broker: SqsBroker,
    tracker: Arc<Tracker>,
    buffered: Vec<(Arc<str>, String)>,
    pending: Option<Pending>,
) {
    let mut by_url: HashMap<Arc<str>, Vec<String>> = HashMap::new();
    for (url, receipt) in buffered {
        by_url.entry(url).or_default().push(receipt);
    }
    {
        let _sending = tracker.sending.lock().await;
        for (url, receipts) in by_url {
            broker.release(&url, receipts).await;
        }
    }
    if let Some(p) = pending {
        if let Ok(Ok(messages)) = p.task.await {
            let receipts = messages
                .into_iter()
                .filter_map(|m| m.receipt_handle)
                .collect();
            broker.release(&p.queue.url, receipts).await;
        }
    }
}

impl Consumer for SqsConsumer {
    type Delivery = SqsDelivery;

    async fn next(&mut self) -> Option<Result<SqsDelivery>> {
        loop {
            if self.closed {
                return None;
            }
            if let Some(b) = self.buffer.pop_front() {
                return Some(Ok(SqsDelivery {
                    broker: self.broker.clone(),
                    body: b.received.body(),
                    queue: b.queue,
                    receipt: b.received.receipt,
                    redelivered: b.received.receive_count > 1,
                    tracker: self.tracker.clone(),
                    track_id: b.track_id,
                    settled: false,
                    _permit: b.permit,
                }));
            }
            if self.pending.is_none() {
                // Waits while `prefetch` messages are unsettled.
                let first = self.permits.clone().acquire_owned().await.ok()?;
                self.start_receive(first);
            }
            let pending = self.pending.as_mut().expect("a receive is in flight");
            let result = (&mut pending.task).await;
            let Pending { queue, permits, .. } = self.pending.take().expect("in flight");
            match result {
                Ok(Ok(messages)) => self.accept(queue, messages, permits),
                Ok(Err(e)) => {
                    warn!(queue = %queue.name, error = %ErrorChain(e.as_ref()), "receiving from SQS failed");
                    return Some(Err(Failure::caused(
                        format!("could not receive from `{}`", queue.name),
                        e,
                    )));
                }
                Err(e) => {
                    return Some(Err(Failure::caused(
                        format!("receiving from `{}` was cut short", queue.name),
                        e,
                    )))
                }
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let (buffered, pending) = self.take_unhanded();
        // A receive in flight can take the whole long poll to answer: release its messages
        // in the background rather than hold up the worker's shutdown.
        let broker = self.broker.clone();
        let tracker = self.tracker.clone();
        if let Some(p) = pending {
            tokio::spawn(release_unhanded(
                broker.clone(),
                tracker.clone(),
                Vec::new(),
                Some(p),
            ));
        }
        release_unhanded(broker, tracker, buffered, None).await;
        Ok(())
    }
}

impl Drop for SqsConsumer {
    fn drop(&mut self) {
        let (buffered, pending) = self.take_unhanded();
        if buffered.is_empty() && pending.is_none() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release_unhanded(
                self.broker.clone(),
                self.tracker.clone(),
                buffered,
                pending,
            ));
        }
    }
}

/// One message from SQS. Dropping it unsettled makes it visible again at once.
pub struct SqsDelivery {
    broker: SqsBroker,
    queue: Arc<QueueRef>,
    body: Vec<u8>,
    receipt: String,
    redelivered: bool,
    tracker: Arc<Tracker>,
    track_id: u64,
    settled: bool,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for SqsDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsDelivery")
            .field("queue", &self.queue.name)
            .field("len", &self.body.len())
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl SqsDelivery {
    /// Marks the delivery settled and stops its heartbeat.
    fn settle(&mut self) {
        self.settled = true;
        self.tracker.remove(self.track_id);
    }

    async fn delete_now(&mut self) -> Result<()> {
        self.settle();
        self.broker.delete(&self.queue.url, &self.receipt).await
    }
}

impl Delivery for SqsDelivery {
    fn body(&self) -> &[u8] {
        &self.body
    }

    fn queue(&self) -> &str {
        &self.queue.name
    }

    fn redelivered(&self) -> bool {
        self.redelivered
    }

    async fn ack(mut self) -> Result<()> {
        self.delete_now().await
    }

    async fn retry(mut self, body: Vec<u8>, delay: Duration) -> Result<()> {
        // A fresh deduplication id: the task id would make a FIFO queue drop the retry.
        let out = self
            .broker
            .plan(&self.queue.name, &body, Some(delay), None, None)?;
        // Send first: if that fails, dropping `self` returns the original.
        self.broker
            .send(
                &self.queue.url,
                out,
                &format!("retry on `{}`", self.queue.name),
            )
            .await?;
        self.delete_now().await
    }

    async fn dead_letter(mut self, reason: String) -> Result<()> {
        let out = self
            .broker
            .plan(&self.queue.name, &self.body, None, None, Some(&reason))?;
        let dead = self.broker.dead_url(&self.queue.name).await?;
        self.broker
            .send(&dead, out, &format!("dead-letter on `{}`", self.queue.name))
            .await?;
        self.delete_now().await
    }

    async fn requeue(mut self) -> Result<()> {
        self.settle();
        let _sending = self.tracker.sending.lock().await;
        self.broker
            .change_visibility(&self.queue.url, &self.receipt, 0)
            .await
    }
}

impl Drop for SqsDelivery {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.settle();
        // Without this the message would stay hidden for the rest of its visibility timeout.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let broker = self.broker.clone();
            let tracker = self.tracker.clone();
            let url = self.queue.url.clone();
            let receipt = std::mem::take(&mut self.receipt);
            runtime.spawn(async move {
                let _sending = tracker.sending.lock().await;
                if let Err(e) = broker.change_visibility(&url, &receipt, 0).await {
                    debug!(error = %ErrorChain(&e), "could not return a dropped delivery; it reappears after the visibility timeout");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let c = Config::parse("sqs://?region=us-east-1").unwrap();
        assert_eq!(c.endpoint, None);
        assert_eq!(c.region.as_deref(), Some("us-east-1"));
        assert!(c.create_queues);
        assert_eq!(
            (c.visibility_timeout, c.wait_time, c.max_delay),
            (30, 20, 900)
        );

        let c = Config::parse(
            "sqs://127.0.0.1:4566/?region=eu-west-1&create_queues=false&visibility_timeout=5\
             &wait_time=0&prefix=app-&group=g1&max_delay=2",
        )
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert!(!c.create_queues);
        assert_eq!((c.visibility_timeout, c.wait_time, c.max_delay), (5, 0, 2));
        assert_eq!(c.prefix, "app-");
        assert_eq!(c.group.as_deref(), Some("g1"));

        let c = Config::parse("sqs://sqs.internal:443?tls=true").unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://sqs.internal:443"));
        assert_eq!(c.region, None);
    }

    #[test]
    fn bad_urls_are_refused_without_secrets() {
        for url in [
            "amqp://h",
            "sqs://key:secret@h:4566",
            "sqs://h:notaport",
            "sqs://h/queue",
            "sqs://?region=",
            "sqs://?visibility_timeout=0",
            "sqs://?visibility_timeout=43201",
            "sqs://?wait_time=21",
            "sqs://?max_delay=901",
            "sqs://?create_queues=maybe",
            "sqs://?prefix=a.b",
            "sqs://?tls=true",
            "sqs://?colour=blue",
            "sqs://?region=a&region=b",
        ] {
            match Config::parse(url) {
                Err(Error::Url { url: shown, reason }) => {
                    assert!(!shown.contains("secret"), "{shown}");
                    assert!(!reason.contains("secret"), "{reason}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn queue_names_map() {
        let c = Config::parse("sqs://?prefix=p-").unwrap();
        assert_eq!(c.sqs_name("jobs", false), "p-jobs");
        assert_eq!(c.sqs_name("jobs", true), "p-jobs-dead");
        assert_eq!(c.sqs_name("jobs.fifo", false), "p-jobs.fifo");
        assert_eq!(c.sqs_name("jobs.fifo", true), "p-jobs-dead.fifo");
        assert!(c.check_queue_name("jobs").is_ok());
        assert!(c.check_queue_name("jobs.fifo").is_ok());
        for bad in ["", ".fifo", "a.b", "a b", &"x".repeat(80)] {
            assert!(c.check_queue_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bodies_round_trip() {
        for body in [
            &b""[..],
            b"plain json {}",
            b"hello \x00\xff bytes",
            "\u{FFFE}".as_bytes(),
        ] {
            let (wire, encoding) = encode_body(body);
            assert!(!wire.is_empty());
            assert!(sqs_text(&wire));
            assert_eq!(decode_body(wire, encoding.attribute()), body);
        }
        assert_eq!(encode_body(b"{\"a\":1}").1, Encoding::Text);
        assert_eq!(encode_body(b"\x00").1, Encoding::Base64);
    }

    #[test]
    fn reasons_are_cleaned_and_bounded() {
        assert_eq!(
            reason_attribute("bad\0input", 100).as_deref(),
            Some("bad\u{FFFD}input")
        );
        assert_eq!(reason_attribute("", 100), None);
        assert_eq!(reason_attribute("ééé", 3).as_deref(), Some("é"));
    }

    #[test]
    fn dedup_ids_fit() {
        assert_eq!(dedup_id("0190-abc"), "0190-abc");
        assert_ne!(dedup_id("has space"), "has space");
        assert_ne!(dedup_id(&"x".repeat(129)), "x".repeat(129));
    }
}
