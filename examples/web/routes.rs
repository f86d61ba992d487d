//! The HTTP side: enqueue a call, report its status, stream its progress and result (SSE).
//! Every error is JSON, `{"error": "…"}`, with the error's Display text.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use ivy::backends::{AnyBroker, AnyNotifier};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::tasks::{build_report, Report};

/// What every handler gets; cloning it clones the producer, which shares one connection and
/// one notification channel.
#[derive(Clone)]
pub struct AppState {
    pub producer: ivy::Producer<AnyBroker, AnyNotifier>,
    pub queue: String,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/calls", post(create))
        .route("/calls/{id}", get(status))
        .route("/calls/{id}/events", get(events))
        .fallback(not_found)
        .with_state(state)
}

/// The body of `POST /calls`.
#[derive(Deserialize)]
struct NewReport {
    title: String,
    pages: u32,
}

/// The most pages one request may ask for.
const MAX_PAGES: u32 = 50;

/// How long one `/events` request follows a call before it gives up (the call goes on).
const FOLLOW_FOR: Duration = Duration::from_secs(600);

/// `POST /calls`: enqueues `build_report` and answers at once with its id (202 Accepted).
async fn create(
    State(app): State<AppState>,
    body: Result<Json<NewReport>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // axum's own status (400 bad JSON, 415 not JSON, 422 wrong fields) and message.
    let Json(req) = body.map_err(|e| ApiError {
        status: e.status(),
        message: e.body_text(),
    })?;
    if !(1..=MAX_PAGES).contains(&req.pages) {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("pages must be between 1 and {MAX_PAGES}, not {}", req.pages),
        });
    }
    let call = build_report::call(req.title, req.pages).queue(&app.queue);
    // The handle is dropped at the end of this request: any request can get a new one from
    // the id with `Producer::handle`, which is what the two GET endpoints do.
    let handle = app
        .producer
        .delayed_call(call)
        .await
        .map_err(ApiError::ivy)?;
    let id = handle.id();
    let links = json!({
        "id": id,
        "status": format!("/calls/{id}"),
        "events": format!("/calls/{id}/events"),
    });
    Ok((StatusCode::ACCEPTED, Json(links)))
}

/// A call as the API shows it, in `GET /calls/{id}` and as the last `/events` event.
#[derive(Serialize)]
struct CallView {
    id: String,
    /// `pending` (queued or running: only final results are stored), `succeeded` or `failed`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl CallView {
    /// The view of a finished call from its outcome; `Err` for an error that is not the
    /// call's own failure (the result could not be read).
    fn finished(id: String, outcome: ivy::Result<Report>) -> Result<Self, ivy::Error> {
        let (status, result, error) = match outcome {
            Ok(report) => ("succeeded", Some(report), None),
            Err(ivy::Error::Task(failure)) => ("failed", None, Some(failure.message)),
            Err(other) => return Err(other),
        };
        Ok(CallView {
            id,
            status,
            result,
            error,
        })
    }
}

/// `GET /calls/{id}`: the stored result if there is one, else `pending`.
async fn status(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CallView>, ApiError> {
    let mut handle = app
        .producer
        .handle::<build_report>(id.clone())
        .await
        .map_err(ApiError::ivy)?;
    if !handle.is_finished() {
        let view = CallView {
            id,
            status: "pending",
            result: None,
            error: None,
        };
        return Ok(Json(view));
    }
    // Finished: the outcome is in hand, so this does not wait.
    let outcome = handle.result_timeout(Duration::ZERO).await;
    let view = CallView::finished(id, outcome).map_err(ApiError::ivy)?;
    Ok(Json(view))
}

/// `GET /calls/{id}/events`: `progress` events as the task reports them, then one `result`
/// event (the same JSON as `GET /calls/{id}`), then the stream ends. If the result cannot be
/// had within `FOLLOW_FOR`, an `error` event ends it instead.
async fn events(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let handle = app
        .producer
        .handle::<build_report>(id.clone())
        .await
        .map_err(ApiError::ivy)?;
    let progress = handle.progress();
    let until = Instant::now() + FOLLOW_FOR;
    let stream =
        futures_util::stream::unfold(Some((handle, progress, id)), move |following| async move {
            let (mut handle, mut progress, id) = following?;
            let left = until.saturating_duration_since(Instant::now());
            tokio::select! {
                // Progress first: what the task reported before it finished comes before the result.
                biased;
                Some(p) = progress.next() => {
                    let event = Event::default().event("progress").data(p.to_string());
                    Some((Ok(event), Some((handle, progress, id))))
                }
                outcome = handle.result_timeout(left) => Some((Ok(last_event(id, outcome)), None)),
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The last event of a stream: the finished call, or why its result could not be had.
fn last_event(id: String, outcome: ivy::Result<Report>) -> Event {
    match CallView::finished(id, outcome) {
        Ok(view) => Event::default().event("result").data(to_json(&view)),
        Err(e) => Event::default()
            .event("error")
            .data(to_json(&json!({ "error": e.to_string() }))),
    }
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| json!({ "error": e.to_string() }).to_string())
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no route for {method} {uri}"),
    }
}

/// An error answer: a status code and `{"error": message}`.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error of the broker or the result store: the service cannot do its job right now.
    fn ivy(e: ivy::Error) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}
