//! What the dashboard knows: the last inspection (queues, workers, dead letters) and the
//! recent calls as the task events told them. Plain data; [`super::hub`] feeds it and
//! [`super::pages`] renders it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use ivy_backends::inspect::QueueDepth;
use ivy_core::envelope::now_ms;
use ivy_core::events::{EventKind, TaskEvent, WorkerInfo};

use crate::dead::Letter;

/// Recent calls kept (oldest forgotten first).
const RECENT_CALLS: usize = 60;
/// Events kept per call for its timeline.
const TIMELINE: usize = 40;
/// The throughput sparkline: buckets of this many ms …
pub const BUCKET_MS: u64 = 10_000;
/// … this many of them (5 minutes).
pub const BUCKETS: usize = 30;

/// A call as the events told it.
#[derive(Clone, Debug)]
pub struct CallView {
    pub id: String,
    pub task: String,
    pub queue: String,
    pub last: EventKind,
    pub attempt: u32,
    pub first_at: u64,
    pub last_at: u64,
    pub started_at: Option<u64>,
    pub run_ms: Option<f64>,
    pub worker: String,
    pub error: Option<String>,
    /// The last progress the running attempt reported (`progress` events).
    pub progress: Option<serde_json::Value>,
    pub timeline: Vec<TaskEvent>,
}

impl CallView {
    /// Still going: received or running, or waiting for a retry.
    pub fn running(&self) -> bool {
        matches!(
            self.last,
            EventKind::Received | EventKind::Started | EventKind::Retried | EventKind::Delayed
        )
    }

    /// The progress to show as a bar: `Some(fraction)` for `{"done": d, "of": n}` or a number
    /// in 0..=1, while the call runs.
    pub fn progress_fraction(&self) -> Option<f64> {
        if self.last != EventKind::Started {
            return None;
        }
        fraction(self.progress.as_ref()?)
    }
}

/// `{"done": d, "of": n}` (n > 0) as `d / n` (at most 1), a number in 0..=1 as itself; the
/// conventions of `ivy call`'s progress bar.
pub fn fraction(progress: &serde_json::Value) -> Option<f64> {
    let f = match progress {
        serde_json::Value::Number(n) => n.as_f64().filter(|f| (0.0..=1.0).contains(f))?,
        serde_json::Value::Object(o) => {
            let done = o.get("done")?.as_f64()?;
            let of = o.get("of")?.as_f64()?;
            if !(of > 0.0 && done >= 0.0) {
                return None;
            }
            (done / of).min(1.0)
        }
        _ => return None,
    };
    Some(f)
}

/// What the dashboard knows now.
#[derive(Default)]
pub struct View {
    pub queues: Vec<(String, Option<QueueDepth>)>,
    pub queue_source: &'static str,
    pub queue_error: Option<String>,
    pub workers: Vec<WorkerInfo>,
    pub worker_error: Option<String>,
    pub calls: VecDeque<CallView>,
    /// Finished calls per queue and bucket (`at / BUCKET_MS`).
    pub throughput: HashMap<String, BTreeMap<u64, u32>>,
    pub dead: BTreeMap<String, Vec<Letter>>,
    pub dead_error: Option<String>,
    /// Events that could not be read (sealed without keys, malformed).
    pub unreadable_events: u64,
    pub events_note: Option<String>,
    pub inspected_at: u64,
}

impl View {
    pub fn call(&self, id: &str) -> Option<&CallView> {
        self.calls.iter().find(|c| c.id == id)
    }

    /// The dead letter with task id `id`, in whichever queue.
    pub fn dead_letter(&self, id: &str) -> Option<(&str, &Letter)> {
        self.dead.iter().find_map(|(q, letters)| {
            letters
                .iter()
                .find(|l| l.id() == Some(id))
                .map(|l| (q.as_str(), l))
        })
    }

    pub fn apply(&mut self, e: TaskEvent) {
        let Some(id) = e.id.clone() else { return };
        if e.event == EventKind::Progress {
            // Not a status: the call's latest progress, kept apart from its timeline.
            if let Some(call) = self.calls.iter_mut().find(|c| c.id == id) {
                if e.attempt.unwrap_or(0) >= call.attempt {
                    call.progress = e.progress;
                }
            }
            return;
        }
        if matches!(e.event, EventKind::Succeeded | EventKind::Failed) {
            *self
                .throughput
                .entry(e.queue.clone())
                .or_default()
                .entry(e.at / BUCKET_MS)
                .or_default() += 1;
            let oldest = (now_ms() / BUCKET_MS).saturating_sub(BUCKETS as u64 * 2);
            for buckets in self.throughput.values_mut() {
                buckets.retain(|b, _| *b >= oldest);
            }
        }
        let position = self.calls.iter().position(|c| c.id == id);
        let call = match position {
            Some(i) => &mut self.calls[i],
            None => {
                if self.calls.len() >= RECENT_CALLS {
                    self.calls.pop_back();
                }
                self.calls.push_front(CallView {
                    id,
                    task: e.task.clone().unwrap_or_else(|| "?".into()),
                    queue: e.queue.clone(),
                    last: e.event,
                    attempt: 0,
                    first_at: e.at,
                    last_at: e.at,
                    started_at: None,
                    run_ms: None,
                    worker: String::new(),
                    error: None,
                    progress: None,
                    timeline: Vec::new(),
                });
                &mut self.calls[0]
            }
        };
        // Events of one call may arrive out of order between workers: the latest wins.
        if e.at >= call.last_at || call.timeline.is_empty() {
            call.last = e.event;
            call.last_at = e.at;
        }
        if let Some(a) = e.attempt {
            call.attempt = call.attempt.max(a);
        }
        if e.event == EventKind::Started {
            call.started_at = Some(e.at);
            call.run_ms = None;
            call.progress = None;
        }
        if let Some(r) = e.run_ms {
            call.run_ms = Some(r);
        }
        if let Some(t) = &e.task {
            call.task.clone_from(t);
        }
        call.worker.clone_from(&e.worker);
        if let Some(m) = &e.message {
            call.error = Some(match &e.error_kind {
                Some(k) => format!("{k}: {m}"),
                None => m.clone(),
            });
        }
        if call.timeline.len() >= TIMELINE {
            call.timeline.remove(0);
        }
        call.timeline.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, id: &str, at: u64) -> TaskEvent {
        let mut e = TaskEvent::new(kind, "w1", "q").call("t.x", id, 0);
        e.at = at;
        e
    }

    #[test]
    fn a_call_shows_its_latest_event_and_recent_calls_are_bounded() {
        let mut view = View::default();
        let now = now_ms();
        view.apply(event(EventKind::Received, "a", now));
        view.apply(event(EventKind::Succeeded, "a", now + 2));
        // Late news from another worker does not take the call back.
        view.apply(event(EventKind::Started, "a", now + 1));
        let a = view.call("a").unwrap();
        assert_eq!((a.last, a.timeline.len()), (EventKind::Succeeded, 3));
        assert_eq!(view.throughput["q"].values().sum::<u32>(), 1);
        for i in 0..RECENT_CALLS + 5 {
            view.apply(event(EventKind::Received, &format!("c{i}"), now));
        }
        assert_eq!(view.calls.len(), RECENT_CALLS);
        assert!(view.call("a").is_none(), "the oldest call is forgotten");
        assert_eq!(view.calls[0].id, format!("c{}", RECENT_CALLS + 4));
    }

    #[test]
    fn a_running_call_shows_its_last_progress() {
        let mut view = View::default();
        let now = now_ms();
        view.apply(event(EventKind::Received, "a", now));
        view.apply(event(EventKind::Started, "a", now + 1));
        let mut p = event(EventKind::Progress, "a", now + 2);
        p.progress = Some(serde_json::json!({"done": 3, "of": 4}));
        view.apply(p);
        let a = view.call("a").unwrap();
        assert_eq!((a.last, a.timeline.len()), (EventKind::Started, 2));
        assert_eq!(a.progress_fraction(), Some(0.75));
        view.apply(event(EventKind::Succeeded, "a", now + 3));
        assert_eq!(view.call("a").unwrap().progress_fraction(), None);
        for (value, f) in [
            (serde_json::json!(0.5), Some(0.5)),
            (serde_json::json!(1), Some(1.0)),
            (serde_json::json!(7), None),
            (serde_json::json!({"done": 9, "of": 3}), Some(1.0)),
            (serde_json::json!({"done": 1, "of": 0}), None),
            (serde_json::json!("<b>step 2</b>"), None),
        ] {
            assert_eq!(fraction(&value), f, "{value}");
        }
    }
}
