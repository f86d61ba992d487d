//! A log line written inside a task names the call without any effort from the task: the
//! worker runs each call in a `task` span with `task`, `id`, `attempt` and `queue`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Producer, Worker};

#[ivy::task(name = "t.logs")]
async fn logs(n: u32) -> u32 {
    tracing::info!(n, "inside the task");
    n
}

/// Where the test's subscriber writes its lines.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

// A current-thread runtime: the worker's spawned runs see this test's default subscriber.
#[tokio::test]
async fn a_log_line_inside_a_task_names_the_call() {
    let lines = Lines::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(lines.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let b = MemoryBroker::new();
    let n = MemoryNotifier::new();
    let worker = Worker::new(b.clone(), n.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let p = Producer::new(b, n);

    let mut h = p.delayed_call(logs::call(7)).await.unwrap();
    let id = h.id().to_owned();
    assert_eq!(h.result_timeout(Duration::from_secs(20)).await.unwrap(), 7);
    let _ = stop.send(());
    running.await.unwrap().unwrap();

    let out = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let line = out
        .lines()
        .find(|l| l.contains("inside the task"))
        .unwrap_or_else(|| panic!("the task's line is missing from:\n{out}"));
    for field in [
        format!("id={id}"),
        "task=t.logs".to_owned(),
        "attempt=0".to_owned(),
        "queue=".to_owned(),
    ] {
        assert!(line.contains(&field), "`{field}` missing from: {line}");
    }
}
