//! A web service that hands work to Ivy, and the worker that does it: one binary, two modes.
//!
//! ```sh
//! cargo run --example web                      # serve, with a worker in the same process (memory://)
//! # Two processes on RabbitMQ and Redis:
//! export IVY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f IVY_RESULT_URL=redis://127.0.0.1:6379
//! cargo run --features amqp,redis --example web -- worker
//! cargo run --features amqp,redis --example web -- serve
//! curl -s -XPOST localhost:3000/calls -H 'content-type: application/json' -d '{"title":"Q3","pages":5}'
//! curl -N localhost:3000/calls/<id>/events     # progress, then the result, as Server-Sent Events
//! curl -s localhost:3000/calls/<id>            # {"id":…,"status":"succeeded","result":{…}}
//! ```
//!
//! Settings: `IVY_WEB_ADDR` (default `127.0.0.1:3000`; port 0 picks one, printed as
//! `listening on http://…`), `IVY_QUEUE` (default `web`, the task's own), `IVY_KEYS` as the
//! other examples read it. A setting it cannot read exits 2, a failure 1.

mod routes;
#[path = "../shared/settings.rs"]
#[allow(dead_code)]
mod shared;
mod tasks;

use std::net::SocketAddr;
use std::process::ExitCode;

use ivy::backends::{broker_from_url, notifier_from_url};

#[tokio::main]
async fn main() -> ExitCode {
    shared::init_logging();
    let mode = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    let (broker_url, result_url) = shared::urls();
    let queue = shared::setting("IVY_QUEUE", "web".to_string(), "a queue name", |s| {
        (!s.is_empty()).then(|| s.to_string())
    });
    let keyring = shared::keyring();
    let outcome = match mode.as_str() {
        "serve" => {
            let addr = shared::setting(
                "IVY_WEB_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 3000)),
                "an address and port, e.g. 127.0.0.1:3000",
                |s| s.parse().ok(),
            );
            serve(&broker_url, &result_url, keyring, queue, addr).await
        }
        "worker" => {
            shared::require_shared(&broker_url, "IVY_BROKER_URL");
            shared::require_shared(&result_url, "IVY_RESULT_URL");
            work(&broker_url, &result_url, keyring, queue).await
        }
        other => shared::usage_error(format!(
            "unknown mode {other:?}: expected `serve` (the default) or `worker`"
        )),
    };
    shared::exit_status(outcome)
}

/// The web service. With the in-memory broker a worker runs in this process too: memory cannot
/// be shared with a worker process.
async fn serve(
    broker_url: &str,
    result_url: &str,
    keyring: ivy::Keyring,
    queue: String,
    addr: SocketAddr,
) -> ivy::Result<()> {
    let broker = broker_from_url(broker_url).await?;
    let notifier = notifier_from_url(result_url).await?;
    if broker_url.starts_with("memory://") {
        let worker = ivy::Worker::new(broker.clone(), notifier.clone())?
            .keyring(keyring.clone())
            .queues([queue.clone()]);
        tokio::spawn(worker.run(ivy::shutdown_signal()));
    }
    let producer = ivy::Producer::new(broker, notifier).with_keyring(keyring);
    let app = routes::router(routes::AppState { producer, queue });
    // A port taken or an address not on this host is a setting to change: exit code 2.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| shared::usage_error(format!("cannot listen on {addr}: {e}")));
    let local = listener.local_addr().unwrap_or(addr);
    eprintln!("listening on http://{local}");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(ivy::shutdown_signal())
        .await;
    if let Err(e) = served {
        eprintln!("error: the web server stopped: {e}");
        std::process::exit(1);
    }
    Ok(())
}

/// The worker: runs `build_report` calls from `queue` until SIGINT or SIGTERM.
async fn work(
    broker_url: &str,
    result_url: &str,
    keyring: ivy::Keyring,
    queue: String,
) -> ivy::Result<()> {
    let broker = broker_from_url(broker_url).await?;
    let notifier = notifier_from_url(result_url).await?;
    let report = ivy::Worker::new(broker, notifier)?
        .keyring(keyring)
        .queues([queue])
        .run_until_signal()
        .await?;
    eprintln!("worker report: {report}");
    Ok(())
}
