//! What workers tell operators: task events ([`TaskEvent`], published on [`EVENTS_CHANNEL`]
//! when a worker has them on) and live workers' announcements ([`WorkerInfo`], kept in the
//! notifier with a short expiry while the worker runs). Both are JSON (PROTOCOL.md §8 and §9),
//! sealed like notifications when the worker has a keyring; neither carries arguments or
//! results (a `progress` event carries the value the task reported).

use serde::{Deserialize, Serialize};

/// The notifier channel task events are published on.
pub const EVENTS_CHANNEL: &str = "ivy:events";

/// The version of the event and announcement formats.
pub const EVENTS_VERSION: u32 = 1;

/// What happened to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A worker took the call from its queue and could read it.
    Received,
    /// The task started running (an attempt).
    Started,
    /// The task returned a value, which was handed to the notifier.
    Succeeded,
    /// The task failed for good (retries used up, or a failure no retry can fix); the call
    /// was dead-lettered.
    Failed,
    /// The attempt failed and a retry was scheduled.
    Retried,
    /// The message went to the dead letters without running: unreadable body, unknown task,
    /// arguments that do not fit, expired, too large.
    DeadLettered,
    /// The keyring refused the message (unencrypted, unauthenticated, a key not allowed).
    Refused,
    /// The call arrived before its eta and was put back until then.
    Delayed,
    /// The message went back to the broker unsettled (to be delivered again).
    Returned,
    /// The call was cancelled: dropped before it ran, or stopped while it ran.
    Cancelled,
    /// A copy of a call that runs once (envelope `once`) whose id ran already or is running
    /// elsewhere was recognised and acked without running (PROTOCOL.md §13).
    Duplicate,
    /// The running task reported progress (`ivy::progress`); the value is in
    /// [`TaskEvent::progress`].
    Progress,
}

impl EventKind {
    /// The name used on the wire (`"dead_lettered"`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Received => "received",
            EventKind::Started => "started",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::Retried => "retried",
            EventKind::DeadLettered => "dead_lettered",
            EventKind::Refused => "refused",
            EventKind::Delayed => "delayed",
            EventKind::Returned => "returned",
            EventKind::Cancelled => "cancelled",
            EventKind::Duplicate => "duplicate",
            EventKind::Progress => "progress",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task event. Fields that do not apply (or are unknown, e.g. the task of an unreadable
/// body) are absent on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskEvent {
    /// [`EVENTS_VERSION`].
    pub v: u32,
    /// What happened.
    pub event: EventKind,
    /// When, in milliseconds since the Unix epoch (the worker's clock).
    pub at: u64,
    /// The worker's id (as in its [`WorkerInfo`]).
    pub worker: String,
    /// The queue the message came from.
    pub queue: String,
    /// The task's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The call's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The attempt (0 for the first run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// `received`: milliseconds from the call's `created_at` to now (queue wait; the clocks of
    /// two machines may differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// `succeeded`, `failed`, `retried`: how long the attempt ran, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<f64>,
    /// `failed`, `retried`: the failure's kind (`ivy.panic`, `ivy.timeout`, the error's type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// `failed`, `retried`: the failure's message; `dead_lettered`, `refused`: the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `progress`: the value the task reported, as it reported it (any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
    /// `received`, from a worker with [`Worker::event_args`](crate::Worker::event_args) on:
    /// the call's arguments (a JSON object by parameter name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
}

impl TaskEvent {
    /// An event of `kind` from `worker` about a message of `queue`, now; add the rest with
    /// the public fields or [`TaskEvent::call`].
    pub fn new(kind: EventKind, worker: impl Into<String>, queue: impl Into<String>) -> Self {
        TaskEvent {
            v: EVENTS_VERSION,
            event: kind,
            at: crate::envelope::now_ms(),
            worker: worker.into(),
            queue: queue.into(),
            task: None,
            id: None,
            attempt: None,
            wait_ms: None,
            run_ms: None,
            error_kind: None,
            message: None,
            progress: None,
            args: None,
        }
    }

    /// With the call's task, id and attempt.
    pub fn call(mut self, task: &str, id: &str, attempt: u32) -> Self {
        self.task = Some(task.to_owned());
        self.id = Some(id.to_owned());
        self.attempt = Some(attempt);
        self
    }

    /// Reads an event from its JSON.
    pub fn from_slice(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }

    /// Its JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serialises")
    }
}

/// What a running worker announces about itself, refreshed while it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// [`EVENTS_VERSION`].
    pub v: u32,
    /// Unique per worker run: `<host>-<pid>-<random>`.
    pub id: String,
    /// The host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The queues it consumes.
    pub queues: Vec<String>,
    /// The tasks it runs.
    pub tasks: Vec<String>,
    /// Each task's own queue (where its calls go unless a call says otherwise), by task name:
    /// what `ivy call` sends to when no queue is given. Absent from older workers.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub task_queues: std::collections::BTreeMap<String, String>,
    /// How many tasks it runs at once.
    pub concurrency: usize,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at: u64,
    /// When this announcement was made (ms since the epoch).
    pub seen_at: u64,
    /// How long the announcement is kept unless refreshed, in milliseconds.
    pub ttl_ms: u64,
    /// Whether it publishes task events.
    pub events: bool,
    /// Events dropped so far because the notifier was down or slower than the worker.
    #[serde(default)]
    pub events_dropped: u64,
    /// Calls running now.
    pub running: u64,
    /// The broker node (`host:port`) it consumes from, when its broker URL names several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_node: Option<String>,
    /// What it did so far (read as 0 where absent).
    pub counts: crate::WorkerReport,
}

impl WorkerInfo {
    /// Reads an announcement from its JSON.
    pub fn from_slice(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }

    /// Its JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an announcement always serialises")
    }
}

/// Why nobody will take calls to `queue`, given the live `workers` (their announcements), in
/// one line; `None` if one of them consumes it.
pub fn unconsumed(queue: &str, workers: &[WorkerInfo]) -> Option<String> {
    if workers.iter().any(|w| w.queues.iter().any(|q| q == queue)) {
        return None;
    }
    if workers.is_empty() {
        return Some(format!(
            "no live worker is announced, so calls to queue {queue} wait until a worker that \
             consumes it starts"
        ));
    }
    let mut queues: Vec<&str> = workers
        .iter()
        .flat_map(|w| w.queues.iter().map(String::as_str))
        .collect();
    queues.sort_unstable();
    queues.dedup();
    Some(format!(
        "no live worker consumes queue {queue} (the {} live worker(s) consume: {}): its calls \
         wait until one does. Start a worker for it (a worker consumes its tasks' queues unless \
         Worker::queues says otherwise), or check the task's queue",
        workers.len(),
        queues.join(", ")
    ))
}
