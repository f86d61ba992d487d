//! Prometheus metrics of a worker (feature `metrics`), served over HTTP at `/metrics` by
//! [`Worker::metrics`](super::Worker::metrics). They are fed by the same steps as task events
//! (`telemetry.rs`), whether or not events are published.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `ivy_tasks_total` | counter: calls that ended | `task`, `outcome` (`succeeded`, `failed`, `cancelled`) |
//! | `ivy_task_retries_total` | counter: attempts that failed and were retried | `task` |
//! | `ivy_dead_letters_total` | counter: messages dead-lettered (failed calls included) | `queue` |
//! | `ivy_refusals_total` | counter: messages the keyring refused | `queue` |
//! | `ivy_task_duration_seconds` | histogram: run time of an attempt | `task` |
//! | `ivy_task_wait_seconds` | histogram: from the call's `created_at` to its receipt | `task` |
//! | `ivy_tasks_in_flight` | gauge: calls being handled now | |
//! | `ivy_events_dropped_total` | counter: task events that could not be published | |

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::events::{EventKind, TaskEvent};

type Labels = Vec<(&'static str, String)>;

fn histogram() -> Histogram {
    // 0.1 ms to about 55 min.
    Histogram::new(exponential_buckets(0.0001, 4.0, 13))
}

/// A worker's metrics and their registry.
#[derive(Debug)]
pub(super) struct Metrics {
    registry: Registry,
    tasks: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    wait: Family<Labels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    events_dropped: Counter,
    events_dropped_seen: AtomicU64,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::default();
        let tasks = Family::<Labels, Counter>::default();
        let retries = Family::<Labels, Counter>::default();
        let dead_letters = Family::<Labels, Counter>::default();
        let refusals = Family::<Labels, Counter>::default();
        let duration = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        let wait = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        let in_flight = Gauge::default();
        let events_dropped = Counter::default();
        registry.register(
            "ivy_tasks",
            "Calls that ended, by task and outcome",
            tasks.clone(),
        );
        registry.register(
            "ivy_task_retries",
            "Attempts that failed and were scheduled for a retry",
            retries.clone(),
        );
        registry.register(
            "ivy_dead_letters",
            "Messages moved to the dead letters, failed calls included",
            dead_letters.clone(),
        );
        registry.register(
            "ivy_refusals",
            "Messages refused by the keyring and dead-lettered",
            refusals.clone(),
        );
        registry.register_with_unit(
            "ivy_task_duration",
            "Run time of an attempt",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register_with_unit(
            "ivy_task_wait",
            "Time from a call's created_at to its receipt by a worker",
            Unit::Seconds,
            wait.clone(),
        );
        registry.register(
            "ivy_tasks_in_flight",
            "Calls being handled now",
            in_flight.clone(),
        );
        registry.register(
            "ivy_events_dropped",
            "Task events that could not be published",
            events_dropped.clone(),
        );
        Metrics {
            registry,
            tasks,
            retries,
            dead_letters,
            refusals,
            duration,
            wait,
            in_flight,
            events_dropped,
            events_dropped_seen: AtomicU64::new(0),
        }
    }

    /// Counts what `event` says.
    pub(super) fn observe(&self, event: &TaskEvent) {
        let task = || vec![("task", event.task.clone().unwrap_or_default())];
        let queue = || vec![("queue", event.queue.clone())];
        if let Some(ms) = event.run_ms {
            self.duration.get_or_create(&task()).observe(ms / 1000.0);
        }
        match event.event {
            EventKind::Received => {
                if let Some(ms) = event.wait_ms {
                    self.wait.get_or_create(&task()).observe(ms as f64 / 1000.0);
                }
            }
            EventKind::Succeeded | EventKind::Failed | EventKind::Cancelled => {
                let mut labels = task();
                labels.push(("outcome", event.event.as_str().to_owned()));
                self.tasks.get_or_create(&labels).inc();
                if event.event == EventKind::Failed {
                    self.dead_letters.get_or_create(&queue()).inc();
                }
            }
            EventKind::Retried => {
                self.retries.get_or_create(&task()).inc();
            }
            EventKind::DeadLettered => {
                self.dead_letters.get_or_create(&queue()).inc();
            }
            EventKind::Refused => {
                self.refusals.get_or_create(&queue()).inc();
            }
            _ => {}
        }
    }

    /// The text exposition, with the gauges read now.
    pub(super) fn render(&self, in_flight: u64, events_dropped: u64) -> String {
        self.in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        let before = self
            .events_dropped_seen
            .swap(events_dropped, Ordering::Relaxed);
        self.events_dropped
            .inc_by(events_dropped.saturating_sub(before));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Binds `addr` (before the worker consumes anything, so a taken port is an error at start).
pub(super) async fn bind(addr: SocketAddr) -> crate::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        crate::Error::Config(format!("cannot serve the worker's metrics on {addr}: {e}"))
    })
}

/// Serves `GET /metrics` (anything else: 404) until the task is aborted.
pub(super) async fn serve(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let render = render.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, render).await {
                        debug!(error = %e, "a metrics request failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head (up to 8 KiB) and answers it, then closes the connection.
async fn answer(
    mut stream: TcpStream,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("request head timed out"))??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "see /metrics\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
