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

/// Checks `task` against the live `workers` before anything is sent, and gives its own queue
/// as they announce it. With workers live and none running `task`: an error naming the
/// closest names they run (unless `force`, which sends with a warning). With no worker live:
/// a warning, and the call is sent (a worker may start later).
pub fn check_served(
    workers: &[WorkerInfo],
    task: &str,
    force: bool,
) -> Result<Option<String>, Failure> {
    if workers.is_empty() {
        eprintln!(
            "warning: no live worker is announced: sending anyway; the call waits until a worker \
             that runs `{task}` consumes its queue"
        );
        return Ok(None);
    }
    let runs = |w: &&WorkerInfo| w.tasks.iter().any(|t| t == task);
    if let Some(w) = workers.iter().find(runs) {
        return Ok(w.task_queues.get(task).cloned());
    }
    let mut known: Vec<&str> = workers
        .iter()
        .flat_map(|w| w.tasks.iter().map(String::as_str))
        .collect();
    known.sort_unstable();
    known.dedup();
    let close = closest(task, &known);
    let hint = if close.is_empty() {
        format!("they run: {}", shortlist(&known))
    } else {
        format!("did you mean {}?", close.join(" or "))
    };
    let what = format!(
        "none of the {} live worker(s) runs task `{task}`; {hint}",
        workers.len()
    );
    if force {
        eprintln!("warning: {what}; sending anyway (--force): a worker that does not know it dead-letters it as an unknown task");
        return Ok(None);
    }
    Err(Failure::Usage(format!(
        "{what} Nothing was sent (--force sends it anyway)."
    )))
}

/// The names in `known` nearest to `name` (by edit distance: 2, or a quarter of its length).
fn closest(name: &str, known: &[&str]) -> Vec<String> {
    let limit = (name.chars().count() / 4).max(2);
    let mut scored: Vec<(usize, &str)> = known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort_unstable();
    scored
        .iter()
        .take(3)
        .map(|(_, k)| format!("`{k}`"))
        .collect()
}

/// Up to 10 names, then how many more.
fn shortlist(known: &[&str]) -> String {
    let mut out: Vec<String> = known.iter().take(10).map(|k| format!("`{k}`")).collect();
    if known.len() > 10 {
        out.push(format!("and {} more", known.len() - 10));
    }
    out.join(", ")
}

/// Levenshtein distance over chars.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use ivy_core::events::{EventKind, TaskEvent};

    #[test]
    fn a_misspelt_task_name_gets_the_nearest_names() {
        let known = ["examples.add", "examples.fail", "billing.charge"];
        assert_eq!(super::closest("exmples.add", &known), ["`examples.add`"]);
        assert_eq!(super::closest("examples.ad", &known), ["`examples.add`"]);
        assert!(super::closest("reports.build", &known).is_empty());
        assert_eq!(super::distance("kitten", "sitting"), 3);
    }

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
