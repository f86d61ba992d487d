//! `ivy dashboard`: one live page over the same inspection code as the commands (queue
//! depths, dead letters, announcements, task events). Small axum handlers; the state and
//! its two feeds live in [`hub`] (what it knows: [`view`]), the HTML in [`pages`] and [`call_page`], who may ask in
//! [`guard`], how much a client may hold in [`limits`]. Assets are compiled in; nothing is fetched at run time.

mod call_page;
mod guard;
mod hub;
mod limits;
mod pages;
mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use futures_util::stream::{self, Stream, StreamExt};
use ivy_core::events::EVENTS_CHANNEL;
use ivy_core::{CancelOutcome, Results, DEFAULT_CANCEL_TTL};
use tokio::sync::broadcast;

use crate::config::Settings;
use crate::output::Failure;
use crate::{call, dead};
use hub::{Hub, Update};

/// What the server shares with its handlers.
pub struct Dashboard {
    hub: Arc<Hub>,
    token: Option<String>,
    /// `--behind-https-proxy`: trust `X-Forwarded-Proto: https` for the cookie's `Secure`.
    behind_https_proxy: bool,
    streams: limits::Streams,
}

/// The shortest token accepted: guessing it must be hopeless.
const MIN_TOKEN: usize = 16;

/// Serves the dashboard on `listen` until Ctrl-C.
pub async fn run(
    settings: Settings,
    listen: SocketAddr,
    token: Option<String>,
    behind_https_proxy: bool,
    names: Vec<String>,
    refresh: Duration,
) -> Result<(), Failure> {
    let token = token.filter(|t| !t.is_empty());
    if refresh < Duration::from_millis(100) {
        return Err(Failure::Usage(format!(
            "--refresh {refresh:?} is too short: at least 100ms (each reading asks the broker)"
        )));
    }
    match &token {
        None if !listen.ip().is_loopback() => {
            return Err(Failure::Usage(format!(
                "the dashboard binds to {listen}, which is not a loopback address: give a token \
                 (--token or IVY_DASHBOARD_TOKEN) that every request must carry"
            )))
        }
        Some(t) if t.chars().count() < MIN_TOKEN => {
            return Err(Failure::Usage(format!(
                "the dashboard token is too short: at least {MIN_TOKEN} characters"
            )))
        }
        Some(t) => guard::check_token(t).map_err(Failure::Usage)?,
        None => {}
    }
    let target = settings.target().await?;
    let notifier = settings.notifier().await?;
    let (updates, _) = broadcast::channel(256);
    let hub = Arc::new(Hub {
        settings,
        target,
        notifier,
        names,
        refresh,
        broker_lock: tokio::sync::Mutex::new(()),
        view: RwLock::default(),
        updates,
        parts: RwLock::default(),
        inspect_now: tokio::sync::Notify::new(),
        repeek: AtomicBool::new(false),
        csrf: uuid::Uuid::new_v4().simple().to_string(),
    });
    hub.render_all();
    let subscription = hub.notifier.subscribe(EVENTS_CHANNEL).await?;
    tokio::spawn(hub.clone().follow_events(Some(subscription)));
    tokio::spawn(hub.clone().inspect_loop());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::Other(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr().unwrap_or(listen);
    let state = Arc::new(Dashboard {
        hub,
        token,
        behind_https_proxy,
        streams: limits::Streams::new(limits::MAX_EVENT_STREAMS),
    });
    let app = Router::new()
        .route("/", get(index))
        .route("/events", get(events))
        .route("/calls/{id}", get(call))
        .route("/calls/{id}/cancel", axum::routing::post(cancel))
        .route("/queues/{queue}/replay", axum::routing::post(replay))
        .route("/queues/{queue}/purge", get(purge_page).post(purge))
        .route("/assets/style.css", get(style))
        .route("/assets/app.js", get(script))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check,
        ))
        .layer(axum::middleware::from_fn_with_state(
            limits::REQUEST_TIMEOUT,
            limits::deadline,
        ))
        .with_state(state);
    eprintln!("ivy dashboard on http://{addr}/ (Ctrl-C stops)");
    // Not a graceful shutdown: the event streams of open tabs never end by themselves.
    tokio::select! {
        served = axum::serve(listener, app) => served
            .map_err(|e| Failure::Other(format!("the dashboard server stopped: {e}"))),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[derive(serde::Deserialize)]
struct FlashQuery {
    done: Option<String>,
}

async fn index(State(d): State<Arc<Dashboard>>, Query(q): Query<FlashQuery>) -> Html<String> {
    d.hub.render_all();
    Html(pages::index(&d.hub.snapshot(), q.done.as_deref()).into_string())
}

fn to_event((name, html): Update) -> Result<Event, Infallible> {
    Ok(Event::default().event(name).data(&*html))
}

/// The live parts: everything at once, then each change; a tab that fell behind gets
/// everything again rather than a gap. At most [`limits::MAX_EVENT_STREAMS`] at once: each
/// holds its place until the tab goes.
async fn events(State(d): State<Arc<Dashboard>>) -> Response {
    match d.streams.open() {
        Some(place) => live_parts(&d, place).into_response(),
        None => limits::too_many_streams(),
    }
}

fn live_parts(
    d: &Dashboard,
    place: tokio::sync::OwnedSemaphorePermit,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = d.hub.updates.subscribe();
    let first = stream::iter(d.hub.snapshot());
    let live = stream::unfold(
        (rx, d.hub.clone(), place),
        |(mut rx, hub, place)| async move {
            match rx.recv().await {
                Ok(update) => Some((vec![update], (rx, hub, place))),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let all = hub.snapshot();
                    Some((all, (rx, hub, place)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        },
    )
    .flat_map(stream::iter);
    Sse::new(first.chain(live).map(to_event)).keep_alive(KeepAlive::default())
}

#[derive(serde::Deserialize)]
struct PartQuery {
    part: Option<String>,
    done: Option<String>,
}

async fn call(
    State(d): State<Arc<Dashboard>>,
    Path(id): Path<String>,
    Query(q): Query<PartQuery>,
) -> Html<String> {
    let stored = match d.hub.notifier.fetch(&id).await {
        Ok(None) => call_page::Stored::None,
        Ok(Some(payload)) => match call::decode(&d.hub.settings, &payload) {
            Ok(note) => call_page::Stored::Read(note),
            Err(why) if !d.hub.settings.keyring.is_enabled() => call_page::Stored::Unreadable(
                format!("{why} (sealed? start the dashboard with IVY_KEYS to open it)"),
            ),
            Err(why) => call_page::Stored::Unreadable(why),
        },
        Err(e) => call_page::Stored::Unreadable(e.to_string()),
    };
    let view = d.hub.read();
    let csrf = &d.hub.csrf;
    let html = if q.part.is_some() {
        call_page::part(&view, &id, &stored, csrf)
    } else {
        call_page::page(&view, &id, &stored, csrf, q.done.as_deref())
    };
    Html(html.into_string())
}

#[derive(serde::Deserialize)]
struct ActionForm {
    csrf: String,
    id: Option<String>,
    all: Option<String>,
}

fn bad_form() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(
            pages::message_page(
                "Refused",
                "The form's CSRF token does not match this dashboard (it restarted?): reload the page.",
            )
            .into_string(),
        ),
    )
        .into_response()
}

/// Back to the page, with one line saying what happened.
fn back(message: &str) -> Response {
    Redirect::to(&format!("/?done={}", pages::url_part(message))).into_response()
}

async fn replay(
    State(d): State<Arc<Dashboard>>,
    Path(queue): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !guard::same(&form.csrf, &d.hub.csrf) {
        return bad_form();
    }
    let all = form.all.is_some();
    let ids: Vec<String> = form.id.into_iter().filter(|i| !i.is_empty()).collect();
    if !all && ids.is_empty() {
        return back("nothing to replay: no dead letter was chosen");
    }
    let hub = &d.hub;
    let report = {
        let _one = hub.broker_lock.lock().await;
        dead::replay_on(&hub.settings, &hub.target, &queue, &ids, all, false).await
    };
    let message = match report {
        Ok(report) => {
            if let Some(letters) = hub
                .view
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .dead
                .get_mut(&queue)
            {
                letters.retain(|l| {
                    !l.id()
                        .is_some_and(|id| report.replayed.iter().any(|r| r == id))
                });
            }
            let mut text = format!(
                "replayed {} dead letter(s) onto {queue}",
                report.replayed.len()
            );
            if let Some(f) = report.failure(&queue) {
                text.push_str(&format!("; {f}"));
            }
            text
        }
        Err(f) => format!("replay failed: {f}"),
    };
    hub.repeek.store(true, Ordering::SeqCst);
    hub.inspect_now.notify_one();
    hub.render_all();
    back(&message)
}

#[derive(serde::Deserialize)]
struct CancelForm {
    csrf: String,
}

/// The Cancel button of a call's page: as `ivy cancel`, then back to the page.
async fn cancel(
    State(d): State<Arc<Dashboard>>,
    Path(id): Path<String>,
    Form(form): Form<CancelForm>,
) -> Response {
    if !guard::same(&form.csrf, &d.hub.csrf) {
        return bad_form();
    }
    let message = match call::record_cancel(&d.hub.notifier, &id, DEFAULT_CANCEL_TTL).await {
        Ok(CancelOutcome::AlreadyFinished) => "not cancelled: it has finished already".to_owned(),
        Ok(outcome) => {
            format!("{outcome}: a worker drops it before it runs, or stops it if it is running")
        }
        Err(f) => format!("cancelling failed: {f}"),
    };
    Redirect::to(&format!(
        "/calls/{}?done={}",
        pages::url_part(&id),
        pages::url_part(&message)
    ))
    .into_response()
}

async fn purge_page(State(d): State<Arc<Dashboard>>, Path(queue): Path<String>) -> Html<String> {
    let count = d
        .hub
        .read()
        .queues
        .iter()
        .find(|(q, _)| *q == queue)
        .and_then(|(_, depth)| depth.as_ref()?.dead);
    Html(pages::purge_page(&queue, count, &d.hub.csrf).into_string())
}

async fn purge(
    State(d): State<Arc<Dashboard>>,
    Path(queue): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !guard::same(&form.csrf, &d.hub.csrf) {
        return bad_form();
    }
    let hub = &d.hub;
    let purged = {
        let _one = hub.broker_lock.lock().await;
        dead::purge_on(&hub.target, &queue).await
    };
    let message = match purged {
        Ok(n) => {
            hub.view
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .dead
                .remove(&queue);
            format!("purged {n} dead letter(s) of {queue}")
        }
        Err(f) => format!("purge failed: {f}"),
    };
    hub.repeek.store(true, Ordering::SeqCst);
    hub.inspect_now.notify_one();
    back(&message)
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/style.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
}
