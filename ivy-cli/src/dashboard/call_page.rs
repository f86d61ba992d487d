//! A call's page: what the events told of it (status timeline, run time), its arguments
//! where the dashboard can read them (its `received` event, from a worker that sends them, or
//! a dead letter's envelope),
//! and its stored result or failure with the chain of causes.

use ivy_core::{Notification, Outcome};
use maud::{html, Markup};

use super::pages::{args_text, badge, layout, millis, progress_bar};
use super::view::View;
use crate::output;

/// The stored result as read from the result store.
pub enum Stored {
    /// Nothing stored (fire-and-forget call, not finished, expired).
    None,
    /// A notification, opened.
    Read(Notification),
    /// Stored but unreadable (sealed without keys, malformed).
    Unreadable(String),
}

pub fn page(view: &View, id: &str, stored: &Stored, csrf: &str, flash: Option<&str>) -> Markup {
    layout(
        &format!("call {id}"),
        html! {
            @if let Some(flash) = flash { p.flash role="status" { (flash) } }
            div #call data-call-page=(id) { (part(view, id, stored, csrf)) }
        },
    )
}

/// The inner part, which the page's script fetches again when the calls change.
pub fn part(view: &View, id: &str, stored: &Stored, csrf: &str) -> Markup {
    let call = view.call(id);
    let dead = view.dead_letter(id);
    // Not finished as far as the dashboard knows: no stored result, not a dead letter.
    let cancellable = matches!(stored, Stored::None) && dead.is_none();
    html! {
        section.card {
            h2 {
                (call.map(|c| c.task.as_str()).or(dead.and_then(|(_, l)| l.envelope.as_ref().map(|e| e.task.as_str()))).unwrap_or("call"))
                " "
                span.mono.muted { (id) }
            }
            @if cancellable {
                form.inline method="post" action={"/calls/" (super::pages::url_part(id)) "/cancel"} {
                    input type="hidden" name="csrf" value=(csrf);
                    button.danger type="submit" data-action="cancel" { "Cancel" }
                    span.note { " Dropped before it runs (a countdown included), stopped if it is running." }
                }
            }
            @if let Some(c) = call {
                @let (class, label) = badge(c.last);
                p.facts {
                    span class={"badge " (class)} data-status=(c.last.as_str()) { (label) }
                    span { "queue " b { (c.queue) } }
                    span { "attempt " b { (c.attempt) } }
                    @if let Some(ms) = c.run_ms { span { "ran " b { (millis(ms)) } } }
                    span { "worker " b { (c.worker) } }
                }
                @if c.last == ivy_core::events::EventKind::Started {
                    div.running-progress { (progress_bar(c, true)) }
                }
            } @else if dead.is_none() {
                p.empty { "The dashboard has seen no event of this call since it started." }
            }
            h3 { "Arguments" }
            @match (dead, call.and_then(|c| c.timeline.iter().rev().find_map(|e| e.args.as_ref()))) {
                (Some((queue, letter)), _) => {
                    pre.args { (args_text(letter)) }
                    p.note { "Read from its dead letter in " (queue) "." }
                },
                (None, Some(args)) => {
                    pre.args { (args.to_string()) }
                    p.note { "From its received event." }
                },
                (None, None) => p.empty { "Shown when the worker sends them with its events (Worker::event_args; the example worker: IVY_EVENT_ARGS=1), and while the call is a dead letter." },
            }
            h3 { "Result" }
            @match stored {
                Stored::None => p.empty { "No stored result (the call has not finished, was sent without a reply channel, or its result expired)." },
                Stored::Unreadable(why) => p.warn { "The stored result cannot be read: " (why) },
                Stored::Read(note) => (notification(note)),
            }
            @if let Some(e) = call.and_then(|c| c.error.as_ref()) {
                h3 { "Last error" }
                pre.failure { (e) }
            }
            @if let Some((_, l)) = dead {
                h3 { "Dead-lettered" }
                pre.failure { (l.peeked.reason.as_deref().unwrap_or("(no reason given)")) }
            }
            @if let Some(c) = call {
                h3 { "Timeline" }
                table.grid {
                    thead { tr { th { "Time" } th { "Event" } th.num { "Attempt" } th { "Worker" } th { "Detail" } } }
                    tbody {
                        @for e in &c.timeline {
                            tr data-event=(e.event.as_str()) {
                                td.muted { (output::time_ms(e.at)) }
                                td { (e.event.as_str()) }
                                td.num { (e.attempt.map_or_else(String::new, |a| a.to_string())) }
                                td { (e.worker) }
                                td {
                                    @if let Some(w) = e.wait_ms { "waited " (w) " ms " }
                                    @if let Some(r) = e.run_ms { "ran " (millis(r)) " " }
                                    @if let Some(k) = &e.error_kind { (k) ": " }
                                    @if let Some(m) = &e.message { (m) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn notification(note: &Notification) -> Markup {
    match note {
        Notification::Result { outcome, .. } => match outcome {
            Outcome::Ok(value) => html! {
                pre.result data-outcome="ok" { (serde_json::to_string_pretty(value).unwrap_or_default()) }
            },
            Outcome::Err(f) => html! {
                div.failure data-outcome="err" {
                    p { b { (f.kind) } ": " (f.message) }
                    @for cause in &f.chain { p.cause { "caused by: " (cause) } }
                }
            },
            _ => html! { p.warn { "An outcome this version cannot read." } },
        },
        Notification::Status {
            status, attempt, ..
        } => html! {
            p { "Last status: " b { (status.to_string()) } " (attempt " (attempt) ")" }
        },
        Notification::Progress { progress, .. } => html! {
            @match (progress.get("done").and_then(|d| d.as_u64()), progress.get("of").and_then(|d| d.as_u64())) {
                (Some(done), Some(of)) if of > 0 => {
                    progress.bar.wide.known max=(of) value=(done.min(of)) {}
                    p.note { (done) " of " (of) }
                }
                _ => p { "Progress: " (progress.to_string()) },
            }
        },
        _ => html! { p.warn { "A notification this version cannot read." } },
    }
}
