//! The wire format: the call envelope, notifications and the error shape.
//!
//! `PROTOCOL.md` at the repository root documents every field; the tests in this module check that
//! the code produces exactly its examples. Change both together.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::failure::null_as_default;
pub use crate::failure::TaskFailure;
pub use flow::{ChordRef, Flow, FlowStep};

mod flow;

/// The protocol version this code writes and the only one it reads.
pub const PROTOCOL_VERSION: u32 = 1;

/// A task id: a UUID (version 7, so ids sort by creation time) in its hyphenated form.
pub type TaskId = String;

/// Makes a fresh task id.
pub fn new_task_id() -> TaskId {
    // The 74 random bits come from the thread's CSPRNG rather than `Uuid::now_v7`'s
    // `getrandom` system call per id; the format is the same UUIDv7.
    let random: [u8; 10] = rand::random();
    let id = uuid::Builder::from_unix_timestamp_millis(now_ms(), &random).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buf).to_owned()
}

/// Milliseconds since the Unix epoch, the unit of every timestamp on the wire.
pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// Converts a time to milliseconds since the Unix epoch (0 for times before it).
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One delayed call, as it travels through the broker.
///
/// Made with [`Envelope::new`] and the `with_*` methods (or read with
/// [`Envelope::from_slice`]), so that a new optional field is not a breaking change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// The derives write inherent `Envelope::serialize`/`deserialize`; the trait impls below call
// them, and reading goes through `ObjectOnly`, because a derived struct also reads a JSON
// array (its fields in order) and a call must be an object.
#[serde(remote = "Self")]
#[non_exhaustive]
pub struct Envelope {
    /// Protocol version, always [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The task id, unique per call (kept across retries).
    pub id: TaskId,
    /// The registered task name, e.g. `testpackage.factorial`.
    pub task: String,
    /// The arguments, by parameter name.
    #[serde(deserialize_with = "crate::task::args_by_name")]
    pub args: Map<String, Value>,
    /// The queue the call was sent to: informational, as the broker knows where a message
    /// is. Ivy does not write it (every byte of a persistent message costs the broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// 0 for the first run, incremented by each retry. Not written when 0; read as 0 when
    /// absent or `null`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub attempt: u32,
    /// How many retries are allowed after the first run, when the call overrides the task's
    /// own setting; `None` (not written): the worker's setting for the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// When the producer created the call, in ms since the Unix epoch.
    pub created_at: u64,
    /// Not to run before this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<u64>,
    /// Not to run after this time (ms since the epoch); a later message is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// The producer's notification channel; absent for fire-and-forget calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Message priority, 0 (lowest) to 9, where the broker supports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// The producer's trace context, as a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`),
    /// written when the producer runs inside a traced span (feature `opentelemetry`); the
    /// worker's `task` span continues that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The call already ran and this is how it ended: a worker stopped before it could store
    /// the result passed the call on with it. The next worker only delivers it (stores and
    /// publishes the result) and settles the message; the task does not run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// What follows the call: the rest of its chain, its chord, its hooks (PROTOCOL.md §12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Box<Flow>>,
    /// Run at most once (PROTOCOL.md §13): the worker claims the id before it runs the call and
    /// recognises a copy of a call that is running elsewhere or whose result is stored, so a
    /// copy published twice runs once. Set on what a worker publishes after a call (chain
    /// steps, hooks, chord callbacks), on a schedule's ticks and by `Call::once`. Not written
    /// when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub once: bool,
    /// The id of the key that sent the call, when a worker passed it on with its `outcome`
    /// sealed under another key (its own: the sender's may not send results). What follows the
    /// call is sealed under this key, so it keeps the sender's rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_with: Option<String>,
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // The derived, inherent function (see the `remote` attribute above).
        Envelope::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Fields(Envelope);
        impl<'de> Deserialize<'de> for Fields {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                // The derived, inherent function (see the `remote` attribute above).
                Envelope::deserialize(d).map(Fields)
            }
        }
        d.deserialize_map(ObjectOnly::<Fields>::new("a call envelope, a JSON object"))
            .map(|f| f.0)
    }
}

/// Reads a `T` from a JSON object and from nothing else: derived struct impls also accept an
/// array of the fields in order, which the protocol does not.
struct ObjectOnly<T> {
    expecting: &'static str,
    read: std::marker::PhantomData<T>,
}

impl<T> ObjectOnly<T> {
    fn new(expecting: &'static str) -> Self {
        ObjectOnly {
            expecting,
            read: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> std::result::Result<T, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

/// An envelope's fields, borrowed: what is written on the wire. The producer serializes a
/// call through it without first copying its strings into an [`Envelope`].
#[derive(Serialize)]
pub(crate) struct EnvelopeRef<'a> {
    pub v: u32,
    pub id: &'a str,
    pub task: &'a str,
    pub args: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<&'a Flow>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub once: bool,
}

impl EnvelopeRef<'_> {
    /// The JSON that travels: the same bytes as the owned [`Envelope`] with these fields.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Envelope {
    /// A first attempt of a call of `task` with `args`, created at `created_at` (ms since the
    /// Unix epoch), with no optional field set.
    pub fn new(
        id: impl Into<TaskId>,
        task: impl Into<String>,
        args: Map<String, Value>,
        created_at: u64,
    ) -> Self {
        Envelope {
            v: PROTOCOL_VERSION,
            id: id.into(),
            task: task.into(),
            args,
            queue: None,
            attempt: 0,
            max_retries: None,
            created_at,
            eta: None,
            expires: None,
            reply_to: None,
            priority: None,
            traceparent: None,
            outcome: None,
            flow: None,
            once: false,
            sent_with: None,
        }
    }

    /// Sets `queue`.
    pub fn with_queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Sets `attempt`.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets `max_retries`.
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = Some(max_retries);
        self
    }

    /// Sets `eta` (ms since the Unix epoch).
    pub fn with_eta(mut self, eta: u64) -> Self {
        self.eta = Some(eta);
        self
    }

    /// Sets `expires` (ms since the Unix epoch).
    pub fn with_expires(mut self, expires: u64) -> Self {
        self.expires = Some(expires);
        self
    }

    /// Sets `reply_to`.
    pub fn with_reply_to(mut self, channel: impl Into<String>) -> Self {
        self.reply_to = Some(channel.into());
        self
    }

    /// Sets `priority`.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets `outcome`: the call ran already and ended so.
    pub fn with_outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = Some(outcome);
        self
    }

    /// Sets `flow` (none when it is empty).
    pub fn with_flow(mut self, flow: Flow) -> Self {
        self.flow = (!flow.is_empty()).then(|| Box::new(flow));
        self
    }

    /// Encodes the envelope as the JSON bytes that travel.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    /// Decodes and checks an envelope.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let env: Envelope = serde_json::from_slice(bytes)
            .map_err(|e| Error::Malformed(format!("not an Ivy envelope: {e}")))?;
        if env.v != PROTOCOL_VERSION {
            return Err(Error::Malformed(format!(
                "protocol version {} is not supported (expected {PROTOCOL_VERSION})",
                env.v
            )));
        }
        if env.id.is_empty() || env.task.is_empty() {
            return Err(Error::Malformed("empty task id or task name".into()));
        }
        Ok(env)
    }

    /// Time left until `eta`, if it lies in the future.
    pub fn delay_until_eta(&self, now_ms: u64) -> Option<Duration> {
        self.eta
            .filter(|&eta| eta > now_ms)
            .map(|eta| Duration::from_millis(eta - now_ms))
    }
}

/// Where a call is in its life, as the producer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// Accepted by the broker, waiting for a worker (again, after a failed attempt).
    Scheduled,
    /// A worker is running an attempt.
    Running,
    /// The last attempt failed; a retry is scheduled unless a `done` follows.
    Errored,
    /// The last attempt succeeded; the result follows in the `done` notification.
    Successful,
    /// Final: the result or the final error has been delivered. Nothing follows.
    Done,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Scheduled => "scheduled",
            Status::Running => "running",
            Status::Errored => "errored",
            Status::Successful => "successful",
            Status::Done => "done",
        })
    }
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The task's return value.
    Ok(Value),
    /// The final failure.
    Err(TaskFailure),
}

/// A message on a producer's notification channel.
///
/// Made with [`Notification::status`], [`Notification::progress`] or
/// [`Notification::result`]; new kinds and new optional fields are not breaking changes, so
/// match with `..` and a wildcard arm.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Notification {
    /// The call changed status.
    #[non_exhaustive]
    Status {
        /// Protocol version.
        v: u32,
        /// Task id.
        id: TaskId,
        /// The new status.
        status: Status,
        /// The attempt it concerns.
        attempt: u32,
        /// For `errored`: what went wrong in this attempt.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<TaskFailure>,
    },
    /// The task reported progress.
    #[non_exhaustive]
    Progress {
        /// Protocol version.
        v: u32,
        /// Task id.
        id: TaskId,
        /// The attempt it concerns.
        attempt: u32,
        /// Whatever JSON the task reported.
        progress: Value,
    },
    /// Final: the call is `done`.
    #[non_exhaustive]
    Result {
        /// Protocol version.
        v: u32,
        /// Task id.
        id: TaskId,
        /// The attempt that ended it.
        attempt: u32,
        /// The value or the final error.
        outcome: Outcome,
    },
}

/// The flat form every notification kind fits in. Reading through it, rather than through
/// serde's internally tagged enums (which buffer the whole object first), is what the
/// producer does for every notification, so it matters.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Status,
    Progress,
    Result,
}

#[derive(Deserialize)]
struct Wire {
    kind: Kind,
    v: u32,
    id: TaskId,
    attempt: u32,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    error: Option<TaskFailure>,
    #[serde(default)]
    progress: Option<Value>,
    #[serde(default)]
    outcome: Option<Outcome>,
}

impl<'de> Deserialize<'de> for Notification {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = d.deserialize_map(ObjectOnly::<Wire>::new(
            "an Ivy notification, a JSON object",
        ))?;
        Ok(match w.kind {
            Kind::Status => Notification::Status {
                v: w.v,
                id: w.id,
                status: w.status.ok_or_else(|| D::Error::missing_field("status"))?,
                attempt: w.attempt,
                error: w.error,
            },
            Kind::Progress => Notification::Progress {
                v: w.v,
                id: w.id,
                attempt: w.attempt,
                // `"progress": null` is a report of null, not a missing field.
                progress: w.progress.unwrap_or(Value::Null),
            },
            Kind::Result => Notification::Result {
                v: w.v,
                id: w.id,
                attempt: w.attempt,
                outcome: w
                    .outcome
                    .ok_or_else(|| D::Error::missing_field("outcome"))?,
            },
        })
    }
}

impl Notification {
    /// A change of status of attempt `attempt` of call `id`, without an error.
    pub fn status(id: impl Into<TaskId>, status: Status, attempt: u32) -> Self {
        Notification::Status {
            v: PROTOCOL_VERSION,
            id: id.into(),
            status,
            attempt,
            error: None,
        }
    }

    /// Sets what went wrong, on a status notification (`errored`); other kinds have no error
    /// and are returned unchanged.
    pub fn with_error(mut self, failure: TaskFailure) -> Self {
        if let Notification::Status { error, .. } = &mut self {
            *error = Some(failure);
        }
        self
    }

    /// A progress report of attempt `attempt` of call `id`.
    pub fn progress(id: impl Into<TaskId>, attempt: u32, progress: Value) -> Self {
        Notification::Progress {
            v: PROTOCOL_VERSION,
            id: id.into(),
            attempt,
            progress,
        }
    }

    /// The final outcome of call `id`, ended by attempt `attempt`.
    pub fn result(id: impl Into<TaskId>, attempt: u32, outcome: Outcome) -> Self {
        Notification::Result {
            v: PROTOCOL_VERSION,
            id: id.into(),
            attempt,
            outcome,
        }
    }

    /// The task id it concerns.
    pub fn id(&self) -> &str {
        match self {
            Notification::Status { id, .. }
            | Notification::Progress { id, .. }
            | Notification::Result { id, .. } => id,
        }
    }

    /// Encodes the notification as the JSON bytes that travel.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a notification always serializes")
    }

    /// Decodes and checks a notification.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let n: Notification = serde_json::from_slice(bytes)
            .map_err(|e| Error::Malformed(format!("not an Ivy notification: {e}")))?;
        let v = match &n {
            Notification::Status { v, .. }
            | Notification::Progress { v, .. }
            | Notification::Result { v, .. } => *v,
        };
        if v != PROTOCOL_VERSION {
            return Err(Error::Malformed(format!(
                "notification version {v} is not supported"
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
