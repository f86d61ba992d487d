//! What `#[task]` generates against: the [`Task`] trait, its options, the [`Call`] a producer
//! sends, and the [`Registry`] a worker runs from.

use std::any::TypeId;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::failure::TaskFailure;

/// Per-task settings, fixed at compile time by `#[task(...)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskOptions {
    /// The queue calls go to unless the call says otherwise.
    pub queue: &'static str,
    /// Default message priority (0..=9).
    pub priority: Option<u8>,
    /// Retries after the first failed run, before the call is dead-lettered.
    pub max_retries: u32,
    /// Delay before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// The longest delay between retries.
    pub retry_backoff_max: Duration,
    /// Time limit of one run.
    pub timeout: Option<Duration>,
    /// Runs on the blocking thread pool (`#[task(blocking)]`): a cancel cannot drop it, so the
    /// worker sets its cancellation flag and waits for it to return.
    pub blocking: bool,
    /// At most this many runs start per period, across every worker sharing the notifier.
    pub rate_limit: Option<RateLimit>,
    /// At most this many runs at once, across every worker sharing the notifier.
    pub max_concurrency: Option<u32>,
}

/// `#[task(rate_limit = "100/s")]`: at most `count` runs start per `per`, spread evenly (one
/// every `per / count`, no burst), across every worker sharing the notifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Runs per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl RateLimit {
    /// `count` runs per `per`; `None` if either is zero.
    pub const fn new(count: u32, per: Duration) -> Option<Self> {
        if count == 0 || per.is_zero() {
            None
        } else {
            Some(RateLimit { count, per })
        }
    }

    /// The time between two runs' starts.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.per.as_secs() {
            1 => write!(f, "{}/s", self.count),
            60 => write!(f, "{}/m", self.count),
            3600 => write!(f, "{}/h", self.count),
            _ => write!(f, "{}/{:?}", self.count, self.per),
        }
    }
}

impl TaskOptions {
    /// The defaults: queue `default`, no priority, 3 retries, backoff 1 s doubling up to 10 min,
    /// no time limit.
    pub const DEFAULT: TaskOptions = TaskOptions {
        queue: "default",
        priority: None,
        max_retries: 3,
        retry_backoff: Duration::from_secs(1),
        retry_backoff_max: Duration::from_secs(600),
        timeout: None,
        blocking: false,
        rate_limit: None,
        max_concurrency: None,
    };

    /// Sets `queue`.
    pub const fn with_queue(mut self, queue: &'static str) -> Self {
        self.queue = queue;
        self
    }

    /// Sets `priority`.
    pub const fn with_priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets `max_retries`.
    pub const fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets `retry_backoff`.
    pub const fn with_retry_backoff(mut self, d: Duration) -> Self {
        self.retry_backoff = d;
        self
    }

    /// Sets `retry_backoff_max`.
    pub const fn with_retry_backoff_max(mut self, d: Duration) -> Self {
        self.retry_backoff_max = d;
        self
    }

    /// Sets `timeout`.
    pub const fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Sets `blocking`.
    pub const fn with_blocking(mut self) -> Self {
        self.blocking = true;
        self
    }

    /// Sets `rate_limit` to `count` runs per `per` (a zero count or period sets none).
    pub const fn with_rate_limit(mut self, count: u32, per: Duration) -> Self {
        self.rate_limit = RateLimit::new(count, per);
        self
    }

    /// Sets `max_concurrency` (zero sets none).
    pub const fn with_max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = if n == 0 { None } else { Some(n) };
        self
    }

    /// The delay before retry number `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.retry_backoff_max)
    }
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A task: a function a worker can run by name. Implemented by `#[task]`; the unit-like type it
/// is implemented for carries the function's name.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an Ivy task",
    label = "not a task",
    note = "annotate the async function with `#[ivy::task]` and call it as `name::call(args..)`"
)]
pub trait Task: Send + Sync + 'static {
    /// The name calls use, e.g. `testpackage.factorial`.
    const NAME: &'static str;
    /// Settings from the attribute.
    const OPTIONS: TaskOptions;
    /// What a successful run returns to the producer.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Decodes `args`, runs the function and encodes its result or error.
    fn run(args: Map<String, Value>) -> impl Future<Output = Result<Value, TaskFailure>> + Send;
}

type RunFn =
    fn(Map<String, Value>) -> Pin<Box<dyn Future<Output = Result<Value, TaskFailure>> + Send>>;

/// A type-erased task, as the worker keeps it.
#[derive(Clone, Copy)]
pub struct TaskEntry {
    /// The task name.
    pub name: &'static str,
    /// Its options.
    pub options: TaskOptions,
    run: RunFn,
    type_id: fn() -> TypeId,
}

impl std::fmt::Debug for TaskEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskEntry")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn erased_run<T: Task>(
    args: Map<String, Value>,
) -> Pin<Box<dyn Future<Output = Result<Value, TaskFailure>> + Send>> {
    Box::pin(T::run(args))
}

impl TaskEntry {
    /// The entry of task `T`.
    pub const fn of<T: Task>() -> Self {
        TaskEntry {
            name: T::NAME,
            options: T::OPTIONS,
            run: erased_run::<T>,
            type_id: TypeId::of::<T>,
        }
    }

    /// Runs the task on `args`.
    pub fn run(
        &self,
        args: Map<String, Value>,
    ) -> Pin<Box<dyn Future<Output = Result<Value, TaskFailure>> + Send>> {
        (self.run)(args)
    }
}

inventory::collect!(TaskEntry);

/// The tasks a worker can run, by name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    tasks: HashMap<&'static str, TaskEntry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `#[task]` linked into this binary. Two tasks with one name are an error.
    pub fn linked() -> Result<Self> {
        let mut r = Self::new();
        for entry in inventory::iter::<TaskEntry> {
            r.add(*entry)?;
        }
        Ok(r)
    }

    /// Adds task `T`. Adding the same task twice is harmless; another task with its name is an
    /// error.
    pub fn register<T: Task>(mut self) -> Result<Self> {
        self.add(TaskEntry::of::<T>())?;
        Ok(self)
    }

    /// Adds an entry (see [`Registry::register`]).
    pub fn add(&mut self, entry: TaskEntry) -> Result<()> {
        match self.tasks.get(entry.name) {
            Some(old) if (old.type_id)() == (entry.type_id)() => Ok(()),
            Some(_) => Err(Error::DuplicateTask(entry.name.to_string())),
            None => {
                self.tasks.insert(entry.name, entry);
                Ok(())
            }
        }
    }

    /// The task called `name`.
    pub fn get(&self, name: &str) -> Option<&TaskEntry> {
        self.tasks.get(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.tasks.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The queues its tasks' calls go to by default, sorted, each once.
    pub fn queues(&self) -> Vec<&'static str> {
        let mut queues: Vec<_> = self.tasks.values().map(|e| e.options.queue).collect();
        queues.sort_unstable();
        queues.dedup();
        queues
    }

    /// Each task's own queue, by task name.
    pub fn task_queues(&self) -> std::collections::BTreeMap<String, String> {
        self.tasks
            .values()
            .map(|e| (e.name.to_owned(), e.options.queue.to_owned()))
            .collect()
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// One call of task `T` with its arguments, ready for
/// [`Producer::delayed_call`](crate::Producer::delayed_call). Made by `task_name::call(args..)`.
#[must_use = "a call does nothing until it is given to a producer"]
pub struct Call<T: Task> {
    pub(crate) args: Result<Map<String, Value>, (&'static str, serde_json::Error)>,
    pub(crate) queue: Option<String>,
    pub(crate) priority: Option<u8>,
    pub(crate) eta: Option<SystemTime>,
    pub(crate) expires: Option<SystemTime>,
    pub(crate) max_retries: Option<u32>,
    /// What follows the call: chain steps, hooks, chord membership (workflows, issue 14).
    pub(crate) flow: Option<Box<crate::envelope::Flow>>,
    /// The caller's task id (`Call::id`); `None`: a fresh UUIDv7.
    pub(crate) id: Option<String>,
    /// Deduplication window (`Call::unique_for`).
    pub(crate) unique_for: Option<Duration>,
    /// Run at most once per id (`Call::once`).
    pub(crate) once: bool,
    /// A schedule's tick: its id names the tick, and is not its deduplication key.
    pub(crate) tick: bool,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> std::fmt::Debug for Call<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Arguments may be secret: they are not shown.
        f.debug_struct("Call")
            .field("task", &T::NAME)
            .field("queue", &self.queue)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl<T: Task> Call<T> {
    #[doc(hidden)]
    pub fn __new(args: Result<Map<String, Value>, (&'static str, serde_json::Error)>) -> Self {
        Call {
            args,
            queue: None,
            priority: None,
            eta: None,
            expires: None,
            max_retries: None,
            flow: None,
            id: None,
            unique_for: None,
            once: false,
            tick: false,
            _task: PhantomData,
        }
    }

    /// Sends this call to `queue` instead of the task's own.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Priority 0..=9, higher first (clamped to 9).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority.min(9));
        self
    }

    /// Runs no earlier than `delay` from now.
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.eta = Some(SystemTime::now() + delay);
        self
    }

    /// Runs no earlier than `at`.
    pub fn eta(mut self, at: SystemTime) -> Self {
        self.eta = Some(at);
        self
    }

    /// Not to be started more than `ttl` from now; later it is dead-lettered as expired.
    pub fn expires_in(mut self, ttl: Duration) -> Self {
        self.expires = Some(SystemTime::now() + ttl);
        self
    }

    /// Overrides the task's `max_retries` for this call.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }

    /// Uses `id` as the task id instead of a fresh UUID (`order-42`): the result is stored
    /// and looked up under it, and [`Producer::cancel`](crate::Producer::cancel) takes it. At
    /// most 200 bytes, no whitespace or control characters. Two calls with one id are two
    /// calls unless [`unique_for`](Self::unique_for) says otherwise (but they share one stored
    /// result, and an SQS FIFO queue, which deduplicates by task id, drops the second if it
    /// comes within SQS's 5-minute window).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Runs this call at most once per id, even if its message is delivered or published
    /// twice: the worker claims the id before running it (a lease, renewed while it runs) and
    /// does not run a copy whose id is running elsewhere or whose result is stored (the result
    /// is stored even for [`send`](crate::Producer::send)). Costs two notifier round trips per
    /// call. Most useful with a caller's [`id`](Self::id), e.g. an order number: publishing
    /// `order-42` again after an unknown outcome then cannot run it twice. PROTOCOL.md §13.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// Publishes this call only if no call with the same key was made in the last `window`;
    /// otherwise returns a handle to that call (whose result it then resolves to).
    ///
    /// The key is the call's [`id`](Self::id) when it has one, else the task name and a
    /// SHA-256 of its arguments' JSON. It is claimed atomically in the notifier (Redis:
    /// `SET ivy:unique:<key> <task id> NX PX <window>`), so this holds across producers and
    /// processes; it lapses after `window`, not when the call finishes. The returned handle
    /// reads the first call's result from the notifier's store, so the first call must have
    /// asked for one: a duplicate of a [`send`](crate::Producer::send) gets only its id.
    pub fn unique_for(mut self, window: Duration) -> Self {
        self.unique_for = Some(window);
        self
    }
}

/// Helpers for code generated by `#[task]`. Not a public API.
#[doc(hidden)]
pub mod codegen;

/// Reads a call's `args`: a JSON object of the arguments by parameter name. Anything else (an
/// array of positional arguments, as some clients send) is refused with a message that says so.
pub(crate) fn args_by_name<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Map<String, Value>, D::Error> {
    struct ByName;
    impl<'de> serde::de::Visitor<'de> for ByName {
        type Value = Map<String, Value>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(
                "`args` as a JSON object of the arguments by parameter name \
                 (positional arguments are not supported)",
            )
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(ByName)
}

#[cfg(test)]
mod tests {
    use super::codegen::*;
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let o = TaskOptions {
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(5),
            ..TaskOptions::DEFAULT
        };
        assert_eq!(o.backoff(1), Duration::from_secs(1));
        assert_eq!(o.backoff(2), Duration::from_secs(2));
        assert_eq!(o.backoff(3), Duration::from_secs(4));
        assert_eq!(o.backoff(4), Duration::from_secs(5));
        assert_eq!(o.backoff(100), Duration::from_secs(5));
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    #[allow(clippy::needless_borrow)] // the borrows pick the implementation
    fn error_description_picks_the_richest_form() {
        #[allow(unused_imports)]
        use super::codegen::{ViaAsRefError as _, ViaDisplay as _, ViaError as _, ViaUnfit as _};
        let e = Outer(std::io::Error::other("inner"));
        let f = (&&ErrWrap(&e)).ivy_failure();
        assert_eq!(f.message, "outer");
        assert_eq!(f.chain, vec!["inner".to_string()]);
        assert!(f.kind.ends_with("Outer"), "{}", f.kind);

        let s = String::from("plain text");
        let f = (&&ErrWrap(&s)).ivy_failure();
        assert_eq!(f.message, "plain text");
        assert!(f.chain.is_empty());

        let boxed: Box<dyn std::error::Error + Send + Sync> =
            Box::new(Outer(std::io::Error::other("x")));
        let f = (&&ErrWrap(&boxed)).ivy_failure();
        assert_eq!(f.chain, vec!["x".to_string()]);
    }

    #[test]
    fn dotted_names() {
        const P: &str = "my_crate::math::add";
        const B: [u8; dotted_len(P)] = dotted::<{ dotted_len(P) }>(P);
        assert_eq!(dotted_str(&B), "my_crate.math.add");
        assert_eq!(dotted_len("a"), 1);
    }

    #[test]
    fn argument_codec_reports_names() {
        let mut args: Result<Map<String, Value>, _> = Ok(Map::new());
        encode_arg(&mut args, "x", &5u32);
        let mut map = args.unwrap();
        map.insert("y".into(), Value::String("nope".into()));
        let x: u32 = decode_arg(&mut map, "x").unwrap();
        assert_eq!(x, 5);
        let err = decode_arg::<u32>(&mut map, "y").unwrap_err();
        assert_eq!(err.kind, TaskFailure::BAD_ARGUMENTS);
        assert!(err.message.contains("argument `y`"), "{}", err.message);
        let err = decode_arg::<u32>(&mut map, "z").unwrap_err();
        assert!(err.message.contains("missing argument `z`"));
        map.insert("w".into(), Value::Null);
        assert!(no_extra_args(&map).unwrap_err().message.contains("`w`"));
    }
}
