//! The tasks the end-to-end checks call, written by hand (this crate cannot use the macro), and
//! the registry a check's worker runs them from.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::envelope::TaskFailure;
use crate::sync::lock;
use crate::task::{codegen, Registry, Task, TaskOptions};

/// Returns its arguments.
#[derive(Debug)]
pub struct Echo;
impl Task for Echo {
    const NAME: &'static str = "ivy.conformance.echo";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = Value;
    async fn run(args: Map<String, Value>) -> Result<Value, TaskFailure> {
        Ok(Value::Object(args))
    }
}

/// Adds two `u64`, so wrong argument types can be sent to it.
#[derive(Debug)]
pub struct Add;
impl Task for Add {
    const NAME: &'static str = "ivy.conformance.add";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = u64;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let x: u64 = codegen::decode_arg(&mut args, "x")?;
        let y: u64 = codegen::decode_arg(&mut args, "y")?;
        codegen::no_extra_args(&args)?;
        codegen::encode_output(x + y)
    }
}

/// Always fails; retried once after 50 ms.
#[derive(Debug)]
pub struct Boom;
impl Task for Boom {
    const NAME: &'static str = "ivy.conformance.boom";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(1)
        .with_retry_backoff(Duration::from_millis(50));
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        Err(TaskFailure::new("conformance::Boom", "boom").with_chain(["the fuse was lit"]))
    }
}

/// Sleeps `ms`, reporting progress 1, 2, 3 on the way; returns `"done"`.
#[derive(Debug)]
pub struct Slow;
impl Task for Slow {
    const NAME: &'static str = "ivy.conformance.slow";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = String;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let ms: u64 = codegen::decode_arg(&mut args, "ms")?;
        for i in 1..=3u32 {
            crate::progress(&i).await.ok();
            tokio::time::sleep(Duration::from_millis(ms / 3)).await;
        }
        codegen::encode_output("done")
    }
}

static MARKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub(super) fn marked(key: &str) -> bool {
    lock(&MARKS).iter().any(|k| k == key)
}

/// Records `key` in a process-wide list, so a fire-and-forget call can be seen to have run.
#[derive(Debug)]
pub struct Mark;
impl Task for Mark {
    const NAME: &'static str = "ivy.conformance.mark";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = ();
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let key: String = codegen::decode_arg(&mut args, "key")?;
        lock(&MARKS).push(key);
        codegen::encode_output(())
    }
}

/// Panics.
#[derive(Debug)]
pub struct Panics;
impl Task for Panics {
    const NAME: &'static str = "ivy.conformance.panics";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        panic!("the task lost its mind")
    }
}

/// Records `key` and returns `n`: a chord member whose runs can be counted.
#[derive(Debug)]
pub struct Tick;
impl Task for Tick {
    const NAME: &'static str = "ivy.conformance.tick";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = u64;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let n: u64 = codegen::decode_arg(&mut args, "n")?;
        let key: String = codegen::decode_arg(&mut args, "key")?;
        codegen::no_extra_args(&args)?;
        lock(&MARKS).push(key);
        codegen::encode_output(n)
    }
}

/// Records `key` and returns the sum of `values`: a chord callback whose runs can be counted.
#[derive(Debug)]
pub struct Sum;
impl Task for Sum {
    const NAME: &'static str = "ivy.conformance.sum";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = u64;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let values: Vec<u64> = codegen::decode_arg(&mut args, "values")?;
        let key: String = codegen::decode_arg(&mut args, "key")?;
        codegen::no_extra_args(&args)?;
        lock(&MARKS).push(key);
        codegen::encode_output(values.iter().sum::<u64>())
    }
}

/// Counts the failures among `results` (a chord callback that is passed failures).
#[derive(Debug)]
pub struct Failures;
impl Task for Failures {
    const NAME: &'static str = "ivy.conformance.failures";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = u64;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let results: Vec<Result<u64, TaskFailure>> = codegen::decode_arg(&mut args, "results")?;
        codegen::no_extra_args(&args)?;
        codegen::encode_output(results.iter().filter(|r| r.is_err()).count() as u64)
    }
}

/// How many times `key` was recorded by [`Mark`] or the tasks below.
pub(super) fn marks(key: &str) -> usize {
    lock(&MARKS).iter().filter(|k| *k == key).count()
}

/// Polls until `key` has been marked `n` times, for at most `limit`.
pub(super) async fn until_marked(key: &str, n: usize, limit: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + limit;
    while marks(key) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "conformance: {what} (`{key}`) not seen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn mark(key: String) {
    lock(&MARKS).push(key);
}

/// Records `started:<key>`, then sleeps `ms` and records `finished:<key>`; records
/// `dropped:<key>` if its future is dropped before that (a cancel while it runs).
#[derive(Debug)]
pub struct Sleepy;
impl Task for Sleepy {
    const NAME: &'static str = "ivy.conformance.sleepy";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = String;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        struct OnDrop(Option<String>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                if let Some(key) = self.0.take() {
                    mark(format!("dropped:{key}"));
                }
            }
        }
        let key: String = codegen::decode_arg(&mut args, "key")?;
        let ms: u64 = codegen::decode_arg(&mut args, "ms")?;
        mark(format!("started:{key}"));
        let mut guard = OnDrop(Some(key.clone()));
        tokio::time::sleep(Duration::from_millis(ms)).await;
        guard.0 = None;
        mark(format!("finished:{key}"));
        codegen::encode_output("finished")
    }
}

/// A blocking task: records `started:<key>`, then waits (30 s at most) until its call is
/// cancelled, records `saw-cancel:<key>` and returns.
#[derive(Debug)]
pub struct Spin;
impl Task for Spin {
    const NAME: &'static str = "ivy.conformance.spin";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0).with_blocking();
    type Output = String;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let key: String = codegen::decode_arg(&mut args, "key")?;
        let spin = move || {
            mark(format!("started:{key}"));
            let until = std::time::Instant::now() + Duration::from_secs(30);
            while !crate::is_cancelled() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if crate::is_cancelled() {
                mark(format!("saw-cancel:{key}"));
            }
            "returned"
        };
        let out = crate::context::spawn_blocking_in_context(spin)
            .await
            .map_err(codegen::join_failure)?;
        codegen::encode_output(out)
    }
}

/// What the worker's state holds for [`Stateful`].
#[derive(Clone, Debug)]
pub struct Probe(pub String);

/// Returns the worker's [`Probe`] (a `State<Probe>` parameter).
#[derive(Debug)]
pub struct Stateful;
impl Task for Stateful {
    const NAME: &'static str = "ivy.conformance.stateful";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = String;
    async fn run(args: Map<String, Value>) -> Result<Value, TaskFailure> {
        codegen::no_extra_args(&args)?;
        let probe = <crate::State<Probe> as crate::context::FromWorker>::from_worker(Self::NAME)?;
        codegen::encode_output(probe.0 .0)
    }
}

/// Records `<key>` and fails with a [`Permanent`](crate::Permanent) error, though it
/// allows 3 retries.
#[derive(Debug)]
pub struct Refuses;
impl Task for Refuses {
    const NAME: &'static str = "ivy.conformance.refuses";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(3)
        .with_retry_backoff(Duration::from_millis(10));
    type Output = ();
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        #[allow(unused_imports)]
        use codegen::{ViaAsRefError as _, ViaDisplay as _, ViaError as _, ViaUnfit as _};
        let key: String = codegen::decode_arg(&mut args, "key")?;
        mark(key);
        let e: Box<dyn std::error::Error + Send + Sync> =
            Box::new(crate::Permanent::new("no such customer"));
        #[allow(clippy::needless_borrow)] // the borrows pick the implementation
        Err((&&codegen::ErrWrap(&e)).ivy_failure())
    }
}

pub(super) fn registry() -> Registry {
    Registry::new()
        .register::<Echo>()
        .and_then(|r| r.register::<Add>())
        .and_then(|r| r.register::<Boom>())
        .and_then(|r| r.register::<Slow>())
        .and_then(|r| r.register::<Panics>())
        .and_then(|r| r.register::<Mark>())
        .and_then(|r| r.register::<Tick>())
        .and_then(|r| r.register::<Sum>())
        .and_then(|r| r.register::<Failures>())
        .and_then(|r| r.register::<Sleepy>())
        .and_then(|r| r.register::<Spin>())
        .and_then(|r| r.register::<Stateful>())
        .and_then(|r| r.register::<Refuses>())
        .expect("distinct names")
}
