//! The dashboard's HTML: the page frame and the parts the event stream replaces (queues,
//! workers, calls, dead letters, status). Every value from a message goes through maud,
//! which escapes it: a task argument `<script>` shows as text.

use ivy_core::envelope::now_ms;
use ivy_core::events::EventKind;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::view::{CallView, View, BUCKETS, BUCKET_MS};
use crate::live::ago;
use crate::output;

/// The frame every page shares: header, styles, script.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Ivy" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { span.leaf { "❦" } " Ivy" }
                    span.subtitle { (title) }
                    span #live.live title="live updates" { "connecting…" }
                }
                main { (body) }
            }
        }
    }
}

/// The main page, its parts filled with what the server knows now.
pub fn index(parts: &[(&'static str, std::sync::Arc<str>)], flash: Option<&str>) -> Markup {
    let part = |name: &str| {
        parts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, h)| PreEscaped(h.to_string()))
            .unwrap_or_else(|| PreEscaped(String::new()))
    };
    layout(
        "dashboard",
        html! {
            @if let Some(flash) = flash { p.flash role="status" { (flash) } }
            div #status data-part="status" { (part("status")) }
            section.card #queues-card {
                h2 { "Queues" }
                div #queues data-part="queues" { (part("queues")) }
            }
            div.columns {
                section.card.wide {
                    h2 { "Recent calls" }
                    div #calls data-part="calls" { (part("calls")) }
                }
                section.card {
                    h2 { "Workers" }
                    div #workers data-part="workers" { (part("workers")) }
                }
            }
            section.card {
                h2 { "Dead letters" }
                div #dead data-part="dead" { (part("dead")) }
            }
        },
    )
}

/// A short line under the header: where the figures come from, and what went wrong.
pub fn status_part(view: &View) -> Markup {
    html! {
        @if let Some(e) = &view.queue_error { p.warn { (e) } }
        @if let Some(e) = &view.worker_error { p.warn { "workers: " (e) } }
        @if let Some(e) = &view.dead_error { p.warn { (e) } }
        @if let Some(e) = &view.events_note { p.warn { (e) } }
        @if view.unreadable_events > 0 {
            p.warn { (view.unreadable_events) " task event(s) could not be read (sealed: \
                     start the dashboard with IVY_KEYS to open them)" }
        }
    }
}

fn num(n: Option<u64>) -> Markup {
    html! { (output::count(n)) }
}

pub fn queues_part(view: &View) -> Markup {
    let now_bucket = now_ms() / BUCKET_MS;
    html! {
        @if view.queues.is_empty() {
            p.empty { "No Ivy queue yet (a queue shows once it and its dead-letter queue exist)." }
        } @else {
            table.grid {
                thead { tr {
                    th { "Queue" } th.num { "Ready" } th.num { "In flight" } th.num { "Delayed" }
                    th.num { "Dead" } th.num { "Consumers" } th { "Finished, last 5 min" }
                } }
                tbody {
                    @for (name, depth) in &view.queues {
                        @let series = series(view, name, now_bucket);
                        tr data-queue=(name) {
                            td.name { (name) }
                            @if let Some(d) = depth {
                                td.num data-col="ready" { (num(d.ready)) }
                                td.num data-col="in_flight" { (num(d.in_flight)) }
                                td.num data-col="delayed" { (num(d.delayed)) }
                                td.num.dead[d.dead.unwrap_or(0) > 0] data-col="dead" { (num(d.dead)) }
                                td.num data-col="consumers" { (num(d.consumers)) }
                            } @else {
                                td colspan="5" { "no such queue" }
                            }
                            td.spark { (sparkline(&series)) span.rate { (series.iter().sum::<u32>()) } }
                        }
                    }
                }
            }
            p.note { "Figures from " (view.queue_source) ", read " (ago(now_ms().saturating_sub(view.inspected_at))) " ago." }
        }
    }
}

fn series(view: &View, queue: &str, now_bucket: u64) -> Vec<u32> {
    let first = now_bucket + 1 - BUCKETS as u64;
    let buckets = view.throughput.get(queue);
    (first..=now_bucket)
        .map(|b| buckets.and_then(|m| m.get(&b)).copied().unwrap_or(0))
        .collect()
}

/// An inline SVG line of `values` (finished calls per 10 s).
fn sparkline(values: &[u32]) -> Markup {
    let (w, h) = (150.0_f64, 24.0_f64);
    let max = f64::from(values.iter().copied().max().unwrap_or(0).max(1));
    let step = w / (values.len().max(2) - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                h - 2.0 - f64::from(*v) / max * (h - 4.0)
            )
        })
        .collect();
    html! {
        svg.sparkline width=(w) height=(h) viewBox={"0 0 " (w) " " (h)} role="img" aria-label="finished calls per 10 s" {
            polyline points=(points.join(" ")) {}
        }
    }
}

pub fn workers_part(view: &View) -> Markup {
    let now = now_ms();
    html! {
        @if view.workers.is_empty() {
            p.empty { "No live worker is announced." }
        }
        @for w in &view.workers {
            div.worker data-worker=(w.id) {
                div.worker-head {
                    span.name { (w.id) }
                    span.muted { "up " (ago(now.saturating_sub(w.started_at))) " · seen " (ago(now.saturating_sub(w.seen_at))) " ago" }
                }
                div.worker-body {
                    span { "queues " b { (w.queues.join(", ")) } }
                    span { "running " b { (w.running) "/" (w.concurrency) } }
                    span { b { (w.counts.succeeded) } " ok" }
                    span { b { (w.counts.failed) } " failed" }
                    span { b { (w.counts.retried) } " retried" }
                    span { b { (w.counts.dead_lettered) } " dead" }
                    @if let Some(node) = &w.broker_node { span { "broker node " b { (node) } } }
                    @if !w.events { span.warn-inline { "events off" } }
                }
                details { summary { (w.tasks.len()) " tasks" } p.tasks { (w.tasks.join(", ")) } }
            }
        }
    }
}

/// The CSS class and label of a call's last event.
pub fn badge(kind: EventKind) -> (&'static str, &'static str) {
    match kind {
        EventKind::Received => ("waiting", "received"),
        EventKind::Started => ("running", "running"),
        EventKind::Succeeded => ("ok", "succeeded"),
        EventKind::Failed => ("bad", "failed"),
        EventKind::Retried => ("waiting", "retry scheduled"),
        EventKind::DeadLettered => ("bad", "dead-lettered"),
        EventKind::Refused => ("bad", "refused"),
        EventKind::Delayed => ("waiting", "delayed"),
        EventKind::Returned => ("waiting", "returned"),
        EventKind::Cancelled => ("bad", "cancelled"),
        EventKind::Duplicate => ("ok", "duplicate (ran once)"),
        _ => ("waiting", "other"),
    }
}

/// A run time: `0.04 ms`, `12.5 ms`, `2.31 s`.
pub fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn run_time(c: &CallView) -> String {
    match (c.run_ms, c.started_at) {
        (Some(ms), _) => millis(ms),
        (None, Some(at)) if c.running() => {
            format!("{} so far", ago(now_ms().saturating_sub(at)))
        }
        _ => "–".into(),
    }
}

pub fn calls_part(view: &View) -> Markup {
    html! {
        @if view.calls.is_empty() {
            p.empty { "No call seen since the dashboard started (workers publish events with IVY_EVENTS=1)." }
        } @else {
            table.grid {
                thead { tr {
                    th { "When" } th { "Task" } th { "Call" } th { "Queue" } th { "Status" }
                    th.num { "Attempt" } th.num { "Run time" }
                } }
                tbody {
                    @for c in &view.calls {
                        @let (class, label) = badge(c.last);
                        tr data-call=(c.id) data-status=(c.last.as_str()) {
                            td.muted { (output::time_ms(c.first_at)) }
                            td.name { (c.task) }
                            td { a.mono href={"/calls/" (url_part(&c.id))} { (short(&c.id)) } }
                            td.queue title=(c.queue) { (c.queue) }
                            td {
                                span class={"badge " (class)} { (label) }
                                @if c.last == EventKind::Started { (progress_bar(c, false)) }
                            }
                            td.num { (c.attempt) }
                            td.num { (run_time(c)) }
                        }
                    }
                }
            }
        }
    }
}

/// A running call's progress: a bar with its percentage for a fraction, a moving bar and the
/// value as text (escaped) otherwise.
pub fn progress_bar(c: &CallView, wide: bool) -> Markup {
    let class = if wide { "bar wide" } else { "bar" };
    match c.progress_fraction() {
        Some(f) => {
            let pct = (f * 100.0).floor() as u32;
            // A native bar: the page's CSP allows no inline style to size a span.
            html! {
                progress class={(class) " known"} max="100" value=(pct) data-progress=(pct) { (pct) "%" }
                span.pct { (pct) "%" }
            }
        }
        None => html! {
            span class=(class) { span {} }
            @if let Some(p) = &c.progress {
                span.progress-text title=(p.to_string()) { (progress_text(p)) }
            }
        },
    }
}

/// A progress value that is no fraction, as text: a string as itself, anything else as JSON.
fn progress_text(p: &serde_json::Value) -> String {
    match p {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The end of a task id (ids share their time prefix), enough to tell calls apart.
pub fn short(id: &str) -> &str {
    let start = id.len().saturating_sub(12);
    id.get(start..).unwrap_or(id)
}

pub fn dead_part(view: &View, csrf: &str) -> Markup {
    let counts: Vec<(&String, u64)> = view
        .queues
        .iter()
        .filter_map(|(q, d)| Some((q, d.as_ref()?.dead?)))
        .filter(|(_, n)| *n > 0)
        .collect();
    html! {
        @if counts.is_empty() {
            p.empty { "No dead letters." }
        }
        @for (queue, count) in counts {
            div.dead-queue data-dead-queue=(queue) {
                div.dead-head {
                    h3 { (queue) " " span.muted { (count) " dead letter(s)" } }
                    form method="post" action={"/queues/" (url_part(queue)) "/replay"} {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="all" value="1";
                        button.primary type="submit" data-action="replay-all" { "Replay all" }
                    }
                    a.button.danger href={"/queues/" (url_part(queue)) "/purge"} data-action="purge" { "Purge…" }
                }
                @match view.dead.get(queue.as_str()) {
                    None => p.empty { "Reading…" },
                    Some(letters) => table.grid {
                        thead { tr {
                            th { "Call" } th { "Task" } th { "Arguments" } th.num { "Attempt" }
                            th { "Reason" } th {}
                        } }
                        tbody {
                            @for l in letters {
                                @let id = l.id().unwrap_or("?");
                                tr data-dead=(id) {
                                    td { a.mono href={"/calls/" (url_part(id))} { (short(id)) } }
                                    td.name { (l.task()) }
                                    td.args { (args_text(l)) }
                                    td.num { (l.envelope.as_ref().map_or_else(|| "?".into(), |e| e.attempt.to_string())) }
                                    td.reason { (l.peeked.reason.as_deref().unwrap_or("")) }
                                    td {
                                        form method="post" action={"/queues/" (url_part(queue)) "/replay"} {
                                            input type="hidden" name="csrf" value=(csrf);
                                            input type="hidden" name="id" value=(id);
                                            button type="submit" data-action="replay" { "Replay" }
                                        }
                                    }
                                }
                            }
                        }
                    },
                }
            }
        }
    }
}

/// The arguments as compact JSON, or why they cannot be shown.
pub fn args_text(l: &crate::dead::Letter) -> String {
    match (&l.envelope, l.sealed) {
        (Some(e), _) => serde_json::Value::Object(e.args.clone()).to_string(),
        (None, true) => "(sealed)".into(),
        (None, false) => "?".into(),
    }
}

/// The purge confirmation.
pub fn purge_page(queue: &str, count: Option<u64>, csrf: &str) -> Markup {
    layout(
        "purge dead letters",
        html! {
            section.card.narrow {
                h2 { "Purge the dead letters of " span.mono { (queue) } "?" }
                p { "This deletes " b { (count.map_or_else(|| "every".into(), |c| c.to_string())) }
                    " dead letter(s) of " (queue) " for good. Replaying them is no longer possible." }
                form method="post" action={"/queues/" (url_part(queue)) "/purge"} {
                    input type="hidden" name="csrf" value=(csrf);
                    button.danger type="submit" data-action="confirm-purge" { "Delete them" }
                    " "
                    a.button href="/" { "Cancel" }
                }
            }
        },
    )
}

/// A page for an error (refused token, bad form): one line.
pub fn message_page(title: &str, text: &str) -> Markup {
    layout(
        title,
        html! { section.card.narrow { h2 { (title) } p { (text) } } },
    )
}

/// `text` percent-encoded for a path segment or a query value.
pub fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
