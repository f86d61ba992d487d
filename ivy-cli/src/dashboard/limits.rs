//! What one client may hold of the server: a bounded number of open event streams, and a
//! deadline for every answer. It decides nothing about who may ask (that is [`super::guard`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pages::message_page;

/// Event streams (`/events`) open at once; each is an open tab.
pub const MAX_EVENT_STREAMS: usize = 64;
/// How long a handler may take to answer. Only up to the answer's head: an event stream's
/// body goes on after it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The open event streams, counted.
pub struct Streams(Arc<Semaphore>);

impl Streams {
    pub fn new(max: usize) -> Self {
        Streams(Arc::new(Semaphore::new(max)))
    }

    /// A place for one more stream, held until the stream is dropped (the tab closed); none
    /// when all are taken.
    pub fn open(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// The answer when every place is taken.
pub fn too_many_streams() -> Response {
    let text =
        format!("{MAX_EVENT_STREAMS} live views are open already: close a tab, or reload later.");
    let page = message_page("Too many open views", &text).into_string();
    (StatusCode::SERVICE_UNAVAILABLE, Html(page)).into_response()
}

/// The middleware: a handler that has not answered within `timeout` is answered 503. What it
/// was doing is dropped; a replay cut short is safe, as after a crash (each dead letter leaves
/// only after its copy is confirmed).
pub async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let text = format!("No answer within {timeout:?}: the broker or Redis may be slow.");
            let page = message_page("Timed out", &text).into_string();
            (StatusCode::SERVICE_UNAVAILABLE, Html(page)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A handler that never answers gets the deadline's 503; a quick one is untouched.
    #[tokio::test]
    async fn a_slow_answer_times_out() {
        let app = Router::new()
            .route("/slow", get(std::future::pending::<&'static str>))
            .route("/quick", get(|| async { "quick" }))
            .layer(axum::middleware::from_fn_with_state(
                Duration::from_millis(200),
                deadline,
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let ask = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            // Bounded, so a missing deadline fails the test instead of hanging it.
            tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut answer))
                .await
                .expect("an answer")
                .unwrap();
            answer
        };
        let slow = ask("/slow").await;
        assert!(slow.starts_with("HTTP/1.1 503"), "{slow}");
        assert!(slow.contains("No answer within 200ms"), "{slow}");
        let quick = ask("/quick").await;
        assert!(quick.starts_with("HTTP/1.1 200"), "{quick}");
        server.abort();
    }

    #[test]
    fn streams_are_counted_and_given_back() {
        let streams = Streams::new(2);
        let (a, _b) = (streams.open().unwrap(), streams.open().unwrap());
        assert!(streams.open().is_none());
        drop(a);
        assert!(streams.open().is_some());
        assert_eq!(too_many_streams().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
