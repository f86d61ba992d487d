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
//! A queue that vanishes later (deleted, or a local server restarted) is looked up, and
//! created, again when an operation finds it gone.
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
//! not run twice (an extension counts once SQS confirms it; a failed one is tried again at
//! the next check, and SQS's 12-hour cap is reported as an error); dropping an unsettled delivery makes its message visible again at once, and
//! if the process dies the message reappears when the timeout runs out.
//!
//! A producer's calls go in batches (`SendMessageBatch`): a call to a queue with no send in
//! flight goes at once, alone, and calls that arrive while one is in flight go together
//! when it lands, up to ten a request; [`Broker::publish_many`] fills batches of ten.
//! Acks (and the other deletes of received messages) go in batches: a delete waits a few
//! milliseconds for others on the same queue and up to ten share one `DeleteMessageBatch`,
//! since SQS is billed per request; each ack still returns `Ok` only once SQS confirmed its own
//! entry. [`SqsBroker::requests`] counts the requests sent.
//!
//! SQS bodies are text restricted to XML characters, so a body that is not such text (rare:
//! Ivy's envelopes are JSON) travels base64-encoded, marked by an `ivy-encoding` attribute.
//! Message bodies and credentials are never logged.

// The broker type and its `Broker` implementation live here; the pieces are in `config` (URL
// options, queue names), `wire` (bodies and attributes as SQS takes them), `queues` (queue
// URLs, creating queues), `publish`, `consumer`, `visibility` (the heartbeat and making
// messages visible again), `acks` (deletes in batches), `requests` (counting requests),
// `delivery` and `dead_letters`.

mod acks;
mod config;
mod consumer;
mod dead_letters;
mod delivery;
mod inspect;
mod publish;
mod queues;
mod requests;
mod sends;
mod visibility;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::Client;
use aws_smithy_http_client::tls;
use ivy_core::{Broker, Capabilities, DeadLetter, Error, OutgoingMessage, Result};

pub use consumer::SqsConsumer;
pub use delivery::SqsDelivery;

use crate::failure::Failures;
use acks::Deletes;
use config::Config;
use consumer::QueueRef;
use requests::Requests;
use sends::Sends;

const FAILURE: Failures = Failures::of("sqs");

/// The size limit (body plus message attributes) Ivy publishes within: SQS's limit for queues
/// created before AWS raised it to 1 MiB, so that a call fits any queue. Settling a message
/// that was received (a retry, a dead letter) uses the queue's own `MaximumMessageSize`
/// instead: a message already in a queue must be able to leave it.
pub const MAX_MESSAGE_SIZE: usize = 262_144;

/// The longest `DelaySeconds` SQS accepts; longer delays take several hops.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// The message attribute with a dead letter's reason.
pub const REASON_ATTRIBUTE: &str = "ivy-reason";

/// The message attribute with the earliest delivery time (ms since the Unix epoch) of a
/// message whose delay is longer than one SQS hop.
pub const NOT_BEFORE_ATTRIBUTE: &str = "ivy-not-before";

/// State shared by clones of one broker.
struct Inner {
    client: Client,
    config: Config,
    /// Queue URLs by SQS queue name, after GetQueueUrl or CreateQueue.
    urls: Mutex<HashMap<String, Arc<str>>>,
    /// `MaximumMessageSize` by SQS queue name, once looked up.
    limits: Mutex<HashMap<String, usize>>,
    /// Requests sent, counted by the client.
    requests: Requests,
    /// Deletes waiting to go in a batch.
    deletes: Deletes,
    /// A producer's sends waiting to go in a batch.
    sends: Sends,
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

impl SqsBroker {
    /// The broker for `url`: `sqs://?region=…` for AWS, `sqs://host:port?region=…` for an
    /// endpoint of your own (plain HTTP; add `tls=true` for HTTPS).
    ///
    /// Credentials and, without `region=`, the region come from the standard AWS chain
    /// (environment, shared config and credentials files, web identity, ECS and EC2 roles).
    /// For an endpoint on this machine (`localhost`, a loopback address) with neither
    /// `AWS_ACCESS_KEY_ID` nor `AWS_PROFILE` in the environment, static test credentials are
    /// used: local servers such as moto accept any. Any other endpoint gets the standard chain.
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
            let configured = std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
                || std::env::var_os("AWS_PROFILE").is_some();
            if config::test_credentials(endpoint, configured) {
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
        let requests = Requests::default();
        let client = Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&sdk)
                .interceptor(requests.clone())
                .build(),
        );
        Ok(SqsBroker {
            inner: Arc::new(Inner {
                client,
                requests,
                deletes: Deletes::default(),
                sends: Sends::default(),
                config,
                urls: Mutex::default(),
                limits: Mutex::default(),
            }),
        })
    }

    /// The SDK client, for what Ivy does not cover (queue attributes, metrics).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// How many requests this broker (with its clones) has sent to SQS: every attempt,
    /// retries included. SQS is billed per request.
    pub fn requests(&self) -> u64 {
        self.inner.requests.total()
    }

    /// How many requests of one operation, by its SQS name (`"ReceiveMessage"`,
    /// `"DeleteMessageBatch"`), this broker has sent, as [`requests`](Self::requests) counts.
    pub fn requests_of(&self, operation: &str) -> u64 {
        self.inner.requests.of(operation)
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A failure of a request to SQS: `what` failed at this broker's URL (credentials never
    /// shown) because of `source`.
    fn failed(
        &self,
        what: impl fmt::Display,
        source: impl Into<crate::failure::BoxError>,
    ) -> Error {
        FAILURE.caused(format!("{what} at {}", self.inner.config.url), source)
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
        let out = self.plan_call(&msg)?;
        let mut sent = self.send_all(vec![(Arc::from(msg.queue), out)]).await;
        sent.pop().expect("one result per message")
    }

    async fn publish_many(&self, msgs: Vec<OutgoingMessage>) -> Vec<Result<()>> {
        self.publish_calls(msgs).await
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
            refs.push(Arc::new(QueueRef::new(q, self.work_url(q).await?)));
        }
        Ok(SqsConsumer::new(self.clone(), refs, prefetch))
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        self.take_dead(queue, max).await
    }
}

impl fmt::Debug for SqsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsBroker")
            .field("url", &self.inner.config.url)
            .finish_non_exhaustive()
    }
}
