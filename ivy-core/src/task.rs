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
}

/// Helpers for code generated by `#[task]`. Not a public API.
#[doc(hidden)]
pub mod codegen {
    use super::*;
    use std::fmt::Display;

    /// What a task argument must be: JSON both ways, and sendable to the worker's runtime.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task argument",
        label = "this type must implement serde's `Serialize` and `Deserialize`",
        note = "task arguments travel as JSON: derive `serde::Serialize` and `serde::Deserialize` for it, and use owned types (`String`, not `&str`)"
    )]
    pub trait TaskArg {}
    // Without this, rustc reports each missing bound of this impl as an error of its own.
    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned + Send + 'static> TaskArg for T {}

    /// Checks an argument type where the user wrote it, so the error points there.
    pub const fn assert_task_arg<T: TaskArg>() {}

    /// What a task's result must be.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task result",
        label = "this type must implement serde's `Serialize` and `Deserialize`",
        note = "results travel back as JSON: derive `serde::Serialize` and `serde::Deserialize` for it"
    )]
    pub trait TaskOutput {}
    // As for `TaskArg`: one error per type, not one per missing bound.
    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned + Send + 'static> TaskOutput for T {}

    /// Encodes and decodes arguments of type `T` for generated code. Called as
    /// `(&ArgCodec::<T>::NEW).ivy_encode_arg(..)`: method resolution picks [`FitArg`] when `T`
    /// can travel and [`UnfitArg`] otherwise, so an unfit type is reported once, by
    /// [`assert_task_arg`], and not again by every use of it.
    pub struct ArgCodec<T>(PhantomData<fn() -> T>);

    impl<T> ArgCodec<T> {
        /// The codec (it holds nothing).
        pub const NEW: Self = ArgCodec(PhantomData);
    }

    impl<T> std::fmt::Debug for ArgCodec<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("ArgCodec")
        }
    }

    /// The codec of an argument type that can travel.
    pub trait FitArg<T> {
        /// [`encode_arg`].
        fn ivy_encode_arg(
            &self,
            args: &mut Result<Map<String, Value>, (&'static str, serde_json::Error)>,
            name: &'static str,
            value: &T,
        );
        /// [`decode_arg`].
        fn ivy_decode_arg(
            &self,
            args: &mut Map<String, Value>,
            name: &'static str,
        ) -> Result<T, TaskFailure>;
    }

    impl<T: Serialize + DeserializeOwned + Send + 'static> FitArg<T> for ArgCodec<T> {
        fn ivy_encode_arg(
            &self,
            args: &mut Result<Map<String, Value>, (&'static str, serde_json::Error)>,
            name: &'static str,
            value: &T,
        ) {
            encode_arg(args, name, value)
        }
        fn ivy_decode_arg(
            &self,
            args: &mut Map<String, Value>,
            name: &'static str,
        ) -> Result<T, TaskFailure> {
            decode_arg(args, name)
        }
    }

    /// The stand-in for an argument type that cannot travel. Never runs: the crate that uses
    /// it fails to compile at [`assert_task_arg`].
    pub trait UnfitArg<T> {
        /// Unreachable.
        fn ivy_encode_arg(
            &self,
            _args: &mut Result<Map<String, Value>, (&'static str, serde_json::Error)>,
            _name: &'static str,
            _value: &T,
        ) {
            unreachable!("assert_task_arg rejects this argument type at compile time")
        }
        /// Unreachable.
        fn ivy_decode_arg(
            &self,
            _args: &mut Map<String, Value>,
            _name: &'static str,
        ) -> Result<T, TaskFailure> {
            unreachable!("assert_task_arg rejects this argument type at compile time")
        }
    }

    impl<T> UnfitArg<T> for &ArgCodec<T> {}

    /// `T` itself, when it can be a task's result. Generated code declares
    /// `type Output = <T as CheckedOutput>::Type`, so that an unfit `T` is one error
    /// ("cannot be a task result") rather than one per bound of `Task::Output`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task result",
        label = "this type must implement serde's `Serialize` and `Deserialize`",
        note = "results travel back as JSON: derive `serde::Serialize` and `serde::Deserialize` for it"
    )]
    pub trait CheckedOutput {
        /// `Self`.
        type Type;
    }

    // A single bound, so that the bounds of `Task::Output` all fail on it and merge into one
    // error.
    #[diagnostic::do_not_recommend]
    impl<T: TaskOutput> CheckedOutput for T {
        type Type = T;
    }

    /// Encodes results of type `T`, as [`ArgCodec`] does arguments: `FitOutput` when `T` can
    /// travel, `UnfitOutput` otherwise, so that only
    /// [`CheckedOutput`] reports it.
    pub struct OutputCodec<T>(PhantomData<fn() -> T>);

    impl<T> OutputCodec<T> {
        /// The codec (it holds nothing).
        pub const NEW: Self = OutputCodec(PhantomData);
    }

    impl<T> std::fmt::Debug for OutputCodec<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("OutputCodec")
        }
    }

    /// The codec of a result type that can travel.
    pub trait FitOutput<T> {
        /// [`encode_output`].
        fn ivy_encode_output(&self, out: T) -> Result<Value, TaskFailure>;
    }

    impl<T: Serialize + DeserializeOwned + Send + 'static> FitOutput<T> for OutputCodec<T> {
        fn ivy_encode_output(&self, out: T) -> Result<Value, TaskFailure> {
            encode_output(out)
        }
    }

    /// The stand-in for a result type that cannot travel (see [`UnfitArg`]).
    pub trait UnfitOutput<T> {
        /// Unreachable.
        fn ivy_encode_output(&self, _out: T) -> Result<Value, TaskFailure> {
            unreachable!("CheckedOutput rejects this result type at compile time")
        }
    }

    impl<T> UnfitOutput<T> for &OutputCodec<T> {}

    /// Turns `a::b::c` into `a.b.c` at compile time: default task names are the module path
    /// and function name joined with dots. `N` is [`dotted_len`] of the input.
    pub const fn dotted<const N: usize>(path: &str) -> [u8; N] {
        let src = path.as_bytes();
        let mut out = [0u8; N];
        let (mut i, mut j) = (0, 0);
        while i < src.len() {
            if i + 1 < src.len() && src[i] == b':' && src[i + 1] == b':' {
                out[j] = b'.';
                i += 2;
            } else {
                out[j] = src[i];
                i += 1;
            }
            j += 1;
        }
        out
    }

    /// The length of [`dotted`]'s output.
    pub const fn dotted_len(path: &str) -> usize {
        let src = path.as_bytes();
        let (mut i, mut n) = (0, 0);
        while i < src.len() {
            if i + 1 < src.len() && src[i] == b':' && src[i + 1] == b':' {
                i += 2;
            } else {
                i += 1;
            }
            n += 1;
        }
        n
    }

    /// Reads the bytes made by [`dotted`] back as a name.
    pub const fn dotted_str(bytes: &'static [u8]) -> &'static str {
        match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => panic!("a module path is UTF-8"),
        }
    }

    /// Encodes one argument into the call's map.
    pub fn encode_arg<A: Serialize + ?Sized>(
        args: &mut Result<Map<String, Value>, (&'static str, serde_json::Error)>,
        name: &'static str,
        value: &A,
    ) {
        if let Ok(map) = args {
            match serde_json::to_value(value) {
                Ok(v) => {
                    map.insert(name.to_string(), v);
                }
                Err(e) => *args = Err((name, e)),
            }
        }
    }

    /// Takes one argument out of the call's map.
    pub fn decode_arg<A: DeserializeOwned>(
        args: &mut Map<String, Value>,
        name: &'static str,
    ) -> Result<A, TaskFailure> {
        let value = args.remove(name).ok_or_else(|| {
            TaskFailure::new(
                TaskFailure::BAD_ARGUMENTS,
                format!("missing argument `{name}`"),
            )
        })?;
        serde_json::from_value(value).map_err(|e| {
            TaskFailure::new(
                TaskFailure::BAD_ARGUMENTS,
                format!("argument `{name}`: {e}"),
            )
        })
    }

    /// Refuses arguments the function does not have (a producer built from other code).
    pub fn no_extra_args(args: &Map<String, Value>) -> Result<(), TaskFailure> {
        match args.keys().next() {
            None => Ok(()),
            Some(k) => Err(TaskFailure::new(
                TaskFailure::BAD_ARGUMENTS,
                format!("unexpected argument `{k}`"),
            )),
        }
    }

    /// Encodes a successful result.
    pub fn encode_output<O: Serialize>(out: O) -> Result<Value, TaskFailure> {
        serde_json::to_value(out).map_err(|e| TaskFailure::from_error(TaskFailure::BAD_RESULT, &e))
    }

    /// The return type of a task that returns `Result<T, E>` (however it is spelled).
    pub trait TaskReturn {
        /// `T`.
        type Ok;
        /// `E`.
        type Err;
        /// Itself, as a plain `Result`.
        fn into_result(self) -> Result<Self::Ok, Self::Err>;
    }

    impl<T, E> TaskReturn for Result<T, E> {
        type Ok = T;
        type Err = E;
        fn into_result(self) -> Result<T, E> {
            self
        }
    }

    /// Wraps a task's error to pick, at compile time, the richest way to describe it:
    /// a `std::error::Error` gives its source chain, an `anyhow`-like error its chain through
    /// `AsRef<dyn Error>`, anything else its `Display` text.
    #[allow(missing_debug_implementations)]
    pub struct ErrWrap<'a, E>(pub &'a E);

    /// Chosen for `E: std::error::Error`.
    pub trait ViaError {
        /// The failure.
        fn ivy_failure(&self) -> TaskFailure;
    }
    impl<E: std::error::Error> ViaError for &&ErrWrap<'_, E> {
        fn ivy_failure(&self) -> TaskFailure {
            TaskFailure::from_error(std::any::type_name::<E>(), self.0)
        }
    }

    /// Chosen for `E: AsRef<dyn Error + Send + Sync>` (such as `anyhow::Error`).
    pub trait ViaAsRefError {
        /// The failure.
        fn ivy_failure(&self) -> TaskFailure;
    }
    impl<E: AsRef<dyn std::error::Error + Send + Sync + 'static>> ViaAsRefError for &ErrWrap<'_, E> {
        fn ivy_failure(&self) -> TaskFailure {
            TaskFailure::from_error(std::any::type_name::<E>(), self.0.as_ref())
        }
    }

    /// Chosen for anything `Display`.
    pub trait ViaDisplay {
        /// The failure.
        fn ivy_failure(&self) -> TaskFailure;
    }
    impl<E: Display> ViaDisplay for ErrWrap<'_, E> {
        fn ivy_failure(&self) -> TaskFailure {
            TaskFailure::new(std::any::type_name::<E>(), self.0.to_string())
        }
    }

    /// Turns the panic of a blocking task into its failure.
    pub fn join_failure(e: tokio::task::JoinError) -> TaskFailure {
        if e.is_panic() {
            TaskFailure::from_panic(e.into_panic())
        } else {
            TaskFailure::new(TaskFailure::PANIC, "the blocking task was cancelled")
        }
    }
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
        use super::codegen::{ViaAsRefError as _, ViaDisplay as _, ViaError as _};
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
