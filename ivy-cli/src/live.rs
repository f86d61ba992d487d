//! `ivy workers` (live workers' announcements, PROTOCOL.md §9) and `ivy watch` (task events,
//! §8), both read from the result store; sealed ones are opened with `IVY_KEYS`.

use ivy_core::events::{TaskEvent, WorkerInfo, EVENTS_CHANNEL};
use ivy_core::{Incoming, Notifier, Results, Subscription};
use serde_json::Value;

use crate::config::Settings;
use crate::output::{self, Failure};

/// Opens a payload a worker sealed (events, announcements), or passes plain JSON through.
fn open(settings: &Settings, payload: &[u8]) -> Result<Vec<u8>, String> {
    if payload.first() == Some(&b'{') || !settings.keyring.is_enabled() {
        return Ok(payload.to_vec());
    }
    settings
        .keyring
        .open_result(payload)
        .map(|o| o.plaintext)
        .map_err(|e| e.to_string())
}

/// Reads one task event (opened with the keys when sealed).
pub fn read_event(settings: &Settings, payload: &[u8]) -> Result<TaskEvent, String> {
    open(settings, payload).and_then(|p| TaskEvent::from_slice(&p).map_err(|e| e.to_string()))
}

/// The live workers, as announced (unreadable announcements are skipped with a note).
pub async fn announced<N: Notifier>(
    settings: &Settings,
    n: &N,
) -> Result<Vec<WorkerInfo>, Failure> {
    let mut workers = Vec::new();
    for payload in n.announcements().await? {
        match open(settings, &payload)
            .and_then(|p| WorkerInfo::from_slice(&p).map_err(|e| e.to_string()))
        {
            Ok(w) => workers.push(w),
            Err(e) => eprintln!("note: skipping an announcement that cannot be read: {e}"),
        }
    }
    workers.sort_by(|a, b| (&a.host, a.started_at, &a.id).cmp(&(&b.host, b.started_at, &b.id)));
    Ok(workers)
}

/// `ivy workers`.
pub async fn workers(settings: &Settings) -> Result<(), Failure> {
    let n = settings.notifier().await?;
    let workers = announced(settings, &n).await?;
    if settings.json {
        let list: Vec<Value> = workers
            .iter()
            .map(|w| serde_json::to_value(w).expect("an announcement serialises"))
            .collect();
        output::json(&Value::Array(list));
        return Ok(());
    }
    if workers.is_empty() {
        eprintln!("no live worker is announced");
        return Ok(());
    }
    let now = ivy_core::envelope::now_ms();
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.queues.join(","),
                w.tasks.len().to_string(),
                format!("{}/{}", w.running, w.concurrency),
                w.counts.succeeded.to_string(),
                w.counts.failed.to_string(),
                w.counts.retried.to_string(),
                w.counts.dead_lettered.to_string(),
                ago(now.saturating_sub(w.started_at)),
                ago(now.saturating_sub(w.seen_at)),
                if w.events { "on" } else { "off" }.to_owned(),
                w.broker_node.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    output::table(
        &[
            "WORKER",
            "QUEUES",
            "TASKS",
            "RUNNING",
            "SUCCEEDED",
            "FAILED",
            "RETRIED",
            "DEAD",
            "UP",
            "SEEN",
            "EVENTS",
            "NODE",
        ],
        &rows,
    );
    Ok(())
}

/// `3s`, `4m`, `2h`, `5d`.
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `ivy watch`: prints matching events as they come, until interrupted or `count` were shown.
pub async fn watch(
    settings: &Settings,
    queue: Option<&str>,
    task: Option<&str>,
    count: Option<u64>,
) -> Result<(), Failure> {
    let n = settings.notifier().await?;
    let mut events = n.subscribe(EVENTS_CHANNEL).await?;
    // On stderr also with --json: it says the subscription is in place.
    eprintln!(
        "watching task events (workers publish them with events on, e.g. IVY_EVENTS=1); Ctrl-C stops"
    );
    let mut shown = 0;
    while count.is_none_or(|c| shown < c) {
        let payload = tokio::select! {
            next = events.next() => match next {
                Some(Ok(Incoming::Message(p))) => p,
                Some(Ok(Incoming::Gap)) => {
                    eprintln!("note: the connection to the result store was interrupted; events may have been missed");
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(Failure::Other("the events subscription closed".into())),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let event = match read_event(settings, &payload) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("note: skipping an event that cannot be read: {e}");
                continue;
            }
        };
        if queue.is_some_and(|q| q != event.queue)
            || task.is_some_and(|t| Some(t) != event.task.as_deref())
        {
            continue;
        }
        shown += 1;
        if settings.json {
            output::json(&serde_json::to_value(&event).expect("an event serialises"));
        } else {
            println!("{}", line(&event));
        }
    }
    Ok(())
}

/// One line: time, event, task, id, attempt, queue, worker and what applies of run time,
/// wait, progress (as JSON) and message.
fn line(e: &TaskEvent) -> String {
    let mut out = format!(
        "{}  {:<13}  {}  {}",
        output::time_ms(e.at),
        e.event.as_str(),
        e.task.as_deref().unwrap_or("-"),
        e.id.as_deref().unwrap_or("-"),
    );
    if let Some(a) = e.attempt {
        out.push_str(&format!("  attempt={a}"));
    }
    out.push_str(&format!("  queue={}  worker={}", e.queue, e.worker));
    if let Some(w) = e.wait_ms {
        out.push_str(&format!("  wait={w}ms"));
    }
    if let Some(r) = e.run_ms {
        out.push_str(&format!("  run={r:.1}ms"));
    }
    if let Some(p) = &e.progress {
        out.push_str(&format!("  progress={p}"));
    }
    if let Some(k) = &e.error_kind {
        out.push_str(&format!("  error={k}"));
    }
    if let Some(m) = &e.message {
        out.push_str(&format!("  {m}"));
    }
    out
}

/// Warns on stderr when no live worker announces `task` (the call is sent anyway).
pub async fn warn_if_unserved<N: Notifier>(settings: &Settings, n: &N, task: &str, queue: &str) {
    match announced(settings, n).await {
        Ok(workers) if !workers.iter().any(|w| w.tasks.iter().any(|t| t == task)) => {
            let on_queue = workers
                .iter()
                .filter(|w| w.queues.iter().any(|q| q == queue))
                .count();
            eprintln!(
                "warning: no live worker announces task `{task}` ({} live, {on_queue} on `{queue}`): \
                 sending anyway; a worker that does not know it dead-letters it as an unknown task",
                workers.len()
            );
        }
        Ok(_) => {}
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use ivy_core::events::{EventKind, TaskEvent};

    #[test]
    fn a_progress_event_shows_its_value() {
        let mut e = TaskEvent::new(EventKind::Progress, "w1", "q").call("t.x", "a", 0);
        e.progress = Some(serde_json::json!({"done": 1, "of": 2}));
        let line = super::line(&e);
        assert!(
            line.contains(r#"progress       t.x  a  attempt=0  queue=q  worker=w1  progress={"done":1,"of":2}"#),
            "{line}"
        );
    }
}
