//! `ivy call` (a call by task name, as PROTOCOL.md §1 describes it, optionally followed to its
//! result) and `ivy result` (a stored result, §3).
//!
//! The call is the envelope a producer in any language would send, published through the
//! [`Broker`] trait; the notifications are read from a reply channel of this process's own,
//! subscribed before the call is sent, with the stored result read as well (at once after a
//! gap, and every few seconds) so nothing is missed.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use ivy_core::cancel::CancelNote;
use ivy_core::envelope::{new_task_id, now_ms};
use ivy_core::{
    Broker, CancelOutcome, Coordination, Envelope, Incoming, Notification, Notifier, Outcome,
    OutgoingMessage, Results, Status, Subscription,
};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::config::{Settings, Target};
use crate::output::{self, Failure};

/// How often `--wait` reads the stored result besides listening: the safety net under
/// pub/sub, which may drop a message while Redis reconnects.
const STORED_RESULT_POLL: Duration = Duration::from_secs(2);

/// Reads `text` as the arguments of a call: a JSON object by parameter name. Anything else
/// is refused before anything is sent.
fn parse_args(text: &str) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(args)) => Ok(args),
        Ok(other) => Err(Failure::Usage(format!(
            "the arguments must be a JSON object by parameter name, e.g. '{{\"x\": 2}}', not {}",
            kind(&other)
        ))),
        Err(e) => Err(Failure::Usage(format!(
            "the arguments are not valid JSON: {e}; nothing was sent"
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

async fn publish<B: Broker>(broker: &B, msg: OutgoingMessage) -> Result<(), Failure> {
    let limit = broker.capabilities().default_message_limit();
    if msg.body.len() > limit {
        return Err(ivy_core::Error::MessageTooLarge {
            size: msg.body.len(),
            limit,
        }
        .into());
    }
    Ok(broker.publish(msg).await?)
}

/// How `ivy call` sends and follows a call.
#[derive(Debug)]
pub struct How {
    /// `--queue`; else the task's queue as workers announce it; else `default`.
    pub queue: Option<String>,
    /// `--wait`: follow the call to its result.
    pub wait: bool,
    /// Ask the worker to store the result (all but `--no-result`).
    pub store: bool,
    /// `--force`: send even when no live worker runs the task.
    pub force: bool,
    /// `--timeout`, with `--wait`.
    pub timeout: Option<Duration>,
}

pub async fn call(settings: &Settings, task: &str, args: &str, how: How) -> Result<(), Failure> {
    let args = parse_args(args)?;
    if task.trim().is_empty() {
        return Err(Failure::Usage("the task name is empty".into()));
    }
    let mut queue = how.queue.clone();
    if settings.has_result_store() {
        if let Ok(notifier) = settings.notifier().await {
            if let Ok(workers) = crate::live::announced(settings, &notifier).await {
                let served = crate::live::check_served(&workers, task, how.force)?;
                if queue.is_none() {
                    queue = served;
                }
                let q = queue.as_deref().unwrap_or("default");
                if let Some(why) = ivy_core::events::unconsumed(q, &workers) {
                    eprintln!("warning: {why}");
                }
            }
        }
    }
    let queue = queue.unwrap_or_else(|| "default".to_owned());
    let queue = queue.as_str();
    let id = new_task_id();
    let mut envelope = Envelope::new(id.clone(), task, args, now_ms());
    let mut listening = None;
    if how.wait {
        let notifier = settings.notifier().await?;
        let channel = reply_channel();
        // Subscribed before the call goes out, so its first notification is heard.
        let subscription = notifier.subscribe(&channel).await?;
        envelope = envelope.with_reply_to(channel);
        listening = Some((notifier, subscription));
    } else if how.store {
        // A reply channel nobody listens to: the worker stores the result under the task id
        // (for `ivy result`) and publishes to no one.
        envelope = envelope.with_reply_to(reply_channel());
    }
    let body = settings.seal(envelope.to_bytes());
    let msg = OutgoingMessage::new(id.clone(), queue, body);
    match settings.target().await? {
        #[cfg(feature = "amqp")]
        Target::Amqp(broker, _) => publish(&broker, msg).await?,
        #[cfg(feature = "sqs")]
        Target::Sqs(broker) => publish(&broker, msg).await?,
    }
    let Some((notifier, subscription)) = listening else {
        if settings.json {
            output::json(&json!({"event": "sent", "id": id, "task": task, "queue": queue}));
        } else {
            println!("{id}");
        }
        return Ok(());
    };
    let mut view = View::new(settings.json, &id);
    view.sent(task, queue);
    let outcome = follow(
        settings,
        &notifier,
        subscription,
        &id,
        how.timeout,
        &mut view,
    )
    .await?;
    view.finish(outcome)
}

fn reply_channel() -> String {
    format!("ivy.reply.{}", uuid::Uuid::now_v7().simple())
}

/// Listens until the result of `id` arrives, or `timeout` runs out.
async fn follow<N: Notifier>(
    settings: &Settings,
    notifier: &N,
    mut subscription: N::Subscription,
    id: &str,
    timeout: Option<Duration>,
    view: &mut View,
) -> Result<Outcome, Failure> {
    let deadline = timeout.map(|t| Instant::now() + t);
    // Not at once: a fast call's stored result, read before its notifications arrive, would
    // end the wait without the progress it reported (seen in the tests).
    let mut poll =
        tokio::time::interval_at(Instant::now() + STORED_RESULT_POLL, STORED_RESULT_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let payload = tokio::select! {
            incoming = subscription.next() => match incoming {
                Some(Ok(Incoming::Message(payload))) => Some(payload),
                // The connection is being restored: the gap that follows re-reads the store.
                Some(Ok(Incoming::Interrupted)) => None,
                // A gap: the result may have been published while nobody listened.
                Some(Ok(_)) => stored(notifier, id).await?,
                Some(Err(e)) => {
                    view.note(&format!("warning: {e}"));
                    None
                }
                None => return Err(Failure::Other(format!(
                    "the subscription to the result store closed; `ivy result {id}` later"
                ))),
            },
            _ = poll.tick() => stored(notifier, id).await?,
            () = until_deadline => return Err(Failure::Other(format!(
                "no result after {:?}; the call goes on: `ivy result {id}` later",
                timeout.unwrap_or_default()
            ))),
        };
        let Some(payload) = payload else { continue };
        match decode(settings, &payload) {
            Ok(note) if note.id() == id => {
                if let Some(outcome) = view.show(note) {
                    return Ok(outcome);
                }
            }
            Ok(_) => {}
            Err(why) => view.note(&format!("warning: ignoring a notification: {why}")),
        }
    }
}

async fn stored<N: Notifier>(notifier: &N, id: &str) -> Result<Option<Vec<u8>>, Failure> {
    Ok(notifier.fetch(id).await?)
}

/// Opens (with keys) and reads a notification; a payload sealed under a key that may not
/// send results is refused, as a producer refuses it.
pub fn decode(settings: &Settings, payload: &[u8]) -> Result<Notification, String> {
    if settings.keyring.is_enabled() {
        let opened = settings
            .keyring
            .open_result(payload)
            .map_err(|e| e.to_string())?;
        Notification::from_slice(&opened.plaintext).map_err(|e| e.to_string())
    } else {
        Notification::from_slice(payload).map_err(|e| e.to_string())
    }
}

pub async fn result(settings: &Settings, id: &str) -> Result<(), Failure> {
    let notifier = settings.notifier().await?;
    let Some(payload) = notifier.fetch(id).await? else {
        return Err(Failure::Other(format!(
            "no stored result for `{id}`: the call has not finished, was sent without a reply \
             channel (fire-and-forget), or its result expired"
        )));
    };
    let note = decode(settings, &payload).map_err(|why| {
        Failure::Other(format!("the stored result of `{id}` cannot be read: {why}"))
    })?;
    let mut view = View::new(settings.json, id);
    match view.show(note) {
        Some(outcome) => view.finish(outcome),
        None => Err(Failure::Other(format!(
            "the stored payload of `{id}` is not a result"
        ))),
    }
}

/// What `--wait` shows: plain lines (JSON lines with `--json`), or a progress bar for
/// `{"done": n, "of": m}` progress when stdout is a terminal.
struct View {
    json: bool,
    id: String,
    terminal: bool,
    bar: Option<ProgressBar>,
}

impl View {
    fn new(json: bool, id: &str) -> Self {
        View {
            json,
            id: id.to_owned(),
            terminal: !json && std::io::stdout().is_terminal(),
            bar: None,
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    fn sent(&self, task: &str, queue: &str) {
        if self.json {
            output::json(&json!({"event": "sent", "id": self.id, "task": task, "queue": queue}));
        } else {
            self.line(&format!("{}  sent to `{queue}`", self.id));
        }
    }

    /// Shows `note`; returns the outcome once it is the result.
    fn show(&mut self, note: Notification) -> Option<Outcome> {
        match note {
            Notification::Status {
                status,
                attempt,
                error,
                ..
            } => {
                if self.json {
                    output::json(&json!({
                        "event": "status", "id": self.id, "status": status,
                        "attempt": attempt, "error": error,
                    }));
                } else {
                    let mut text = format!("{}  {status} (attempt {attempt})", self.id);
                    if let (Status::Errored, Some(e)) = (status, error) {
                        text.push_str(&format!(": {}: {}; a retry follows", e.kind, e.message));
                    }
                    self.line(&text);
                }
                None
            }
            Notification::Progress {
                attempt, progress, ..
            } => {
                if self.json {
                    output::json(&json!({
                        "event": "progress", "id": self.id, "attempt": attempt, "progress": progress,
                    }));
                } else if let (true, Some((done, of))) = (self.terminal, done_of(&progress)) {
                    let bar = self.bar.get_or_insert_with(|| {
                        let bar = ProgressBar::new(of);
                        if let Ok(style) =
                            ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed}")
                        {
                            bar.set_style(style);
                        }
                        bar
                    });
                    bar.set_length(of);
                    bar.set_position(done);
                } else {
                    self.line(&format!("{}  progress: {progress}", self.id));
                }
                None
            }
            Notification::Result { outcome, .. } => Some(outcome),
            _ => None,
        }
    }

    /// Prints the outcome: the value on stdout (exit 0), or the failure (exit 1).
    fn finish(&mut self, outcome: Outcome) -> Result<(), Failure> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        match outcome {
            Outcome::Ok(value) => {
                if self.json {
                    output::json(&json!({"event": "result", "id": self.id, "ok": value}));
                } else {
                    println!("{value}");
                }
                Ok(())
            }
            Outcome::Err(failure) => {
                if self.json {
                    output::json(&json!({"event": "result", "id": self.id, "err": failure}));
                }
                Err(Failure::Task(failure))
            }
            other => Err(Failure::Other(format!(
                "an outcome this version cannot read: {other:?}"
            ))),
        }
    }
}

/// `{"done": n, "of": m}` progress, the shape that gets a bar.
fn done_of(progress: &Value) -> Option<(u64, u64)> {
    let done = progress.get("done")?.as_u64()?;
    let of = progress.get("of")?.as_u64()?;
    Some((done, of))
}

/// `ivy cancel`: records a cancellation of `id` for `ttl` (PROTOCOL.md §11). Asked again with
/// the same note after a failure, so a first try whose answer was lost counts as this one.
pub async fn cancel(settings: &Settings, id: &str, ttl: Duration) -> Result<(), Failure> {
    let id = id.trim();
    if id.is_empty() {
        return Err(Failure::Usage("the task id is empty".into()));
    }
    let notifier = settings.notifier().await?;
    let outcome = record_cancel(&notifier, id, ttl).await?;
    if settings.json {
        output::json(&json!({"id": id, "outcome": outcome.to_string()}));
    }
    match outcome {
        CancelOutcome::AlreadyFinished => Err(Failure::Other(format!(
            "`{id}` has finished already (its result is stored: `ivy result {id}`); nothing was cancelled"
        ))),
        CancelOutcome::AlreadyCancelled => {
            if !settings.json {
                println!("already cancelled {id}");
            }
            Ok(())
        }
        _ => {
            if !settings.json {
                println!("cancelled {id}");
            }
            Ok(())
        }
    }
}

/// Records a cancellation of `id` for `ttl`, asked again (with the same note, so a first try
/// whose answer was lost counts as this one) after a failure.
pub async fn record_cancel<N: Coordination>(
    notifier: &N,
    id: &str,
    ttl: Duration,
) -> Result<CancelOutcome, Failure> {
    let note = CancelNote::lasting(id, ttl).to_bytes();
    let mut tries = 0;
    loop {
        tries += 1;
        match notifier.cancel(id, note.clone(), ttl).await {
            Ok(outcome) => return Ok(outcome),
            Err(e) if tries < 3 => {
                eprintln!("warning: recording the cancellation failed ({e}); asking again");
                tokio::time::sleep(Duration::from_millis(200) * tries).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_a_json_object() {
        assert!(parse_args(r#"{"x": 2}"#).is_ok());
        let Err(Failure::Usage(why)) = parse_args(r#"{"x": "#) else {
            panic!("malformed JSON accepted")
        };
        assert!(why.contains("not valid JSON: EOF while parsing"), "{why}");
        let Err(Failure::Usage(why)) = parse_args("[1, 2]") else {
            panic!("an array accepted")
        };
        assert!(why.contains("not an array"), "{why}");
    }

    #[test]
    fn progress_bars_need_done_and_of() {
        assert_eq!(done_of(&json!({"done": 3, "of": 10})), Some((3, 10)));
        assert_eq!(done_of(&json!(3)), None);
        assert_eq!(done_of(&json!({"done": 3})), None);
    }
}
