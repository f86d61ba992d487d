//! Trace context from producer to worker (feature `opentelemetry`): a call made inside a traced
//! span carries a `traceparent`, and the worker's `task` span belongs to the same trace, as a
//! child of the producer's span.
#![cfg(feature = "opentelemetry")]

use std::time::Duration;

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Producer, Worker};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[ivy::task(name = "otel.double")]
async fn double(n: u32) -> u32 {
    n * 2
}

// A current-thread runtime: the worker's spawned runs see this test's default subscriber.
#[tokio::test]
async fn the_workers_span_continues_the_producers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("ivy-test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let (b, n) = (MemoryBroker::new(), MemoryNotifier::new());
    let worker = Worker::new(b.clone(), n.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let p = Producer::new(b, n);
    let request = tracing::info_span!("request");
    async {
        let mut h = p.delayed_call(double::call(21)).await.unwrap();
        assert_eq!(h.result_timeout(Duration::from_secs(20)).await.unwrap(), 42);
    }
    .instrument(request)
    .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no `{name}` span among {spans:#?}"))
    };
    let (request, task) = (named("request"), named("task"));
    assert_eq!(
        task.span_context.trace_id(),
        request.span_context.trace_id(),
        "the worker's span is in the producer's trace"
    );
    assert_eq!(task.parent_span_id, request.span_context.span_id());
}
