//! `ivy dead list|replay|purge`: the dead letters of an Ivy queue.

use ivy_backends::inspect::{PeekedDeadLetter, Pick, Replayed};
use ivy_core::Envelope;
use serde_json::json;

use crate::config::{Settings, Target};
use crate::output::{self, Failure};

/// What a dead letter says about itself, as far as it can be read.
pub struct Letter {
    /// The envelope, when the body is one (opened with the keys if it is sealed).
    pub envelope: Option<Envelope>,
    /// The key it was sealed under, to seal a changed body under the same one.
    key_id: Option<String>,
    pub sealed: bool,
    pub peeked: PeekedDeadLetter,
}

impl Letter {
    fn read(settings: &Settings, peeked: PeekedDeadLetter) -> Self {
        let body = &peeked.body;
        let sealed = body.starts_with(b"ivy1") || body.starts_with(b"$aes-256-cbc$");
        let (plaintext, key_id) = if !sealed {
            (Some(body.clone()), None)
        } else if settings.keyring.is_enabled() {
            match settings.keyring.open(body) {
                Ok(opened) => (Some(opened.plaintext), opened.key_id),
                Err(_) => (None, None),
            }
        } else {
            (None, None)
        };
        let envelope = plaintext.and_then(|p| Envelope::from_slice(&p).ok());
        Letter {
            envelope,
            key_id,
            sealed,
            peeked,
        }
    }

    pub fn id(&self) -> Option<&str> {
        self.envelope
            .as_ref()
            .map(|e| e.id.as_str())
            .or(self.peeked.message_id.as_deref())
    }

    /// What the task column shows when the envelope cannot be read.
    pub fn task(&self) -> String {
        match (&self.envelope, self.sealed) {
            (Some(e), _) => e.task.clone(),
            (None, true) if self.key_id.is_none() => "(sealed: no key opens it)".into(),
            (None, _) => "(not an Ivy envelope)".into(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let e = self.envelope.as_ref();
        json!({
            "id": self.id(),
            "task": e.map(|e| &e.task),
            "attempt": e.map(|e| e.attempt),
            "created_at": e.map(|e| e.created_at),
            "dead_since": self.peeked.dead_since_ms,
            "reason": self.peeked.reason,
            "sealed": self.sealed,
            "readable": e.is_some(),
        })
    }
}

/// Up to `limit` dead letters of `queue`, read (opened with the keys) and left in place.
pub async fn peek(
    settings: &Settings,
    target: &Target,
    queue: &str,
    limit: usize,
) -> Result<Vec<Letter>, Failure> {
    let peeked = match target {
        #[cfg(feature = "amqp")]
        Target::Amqp(broker, _) => broker.peek_dead_letters(queue, limit).await?,
        #[cfg(feature = "sqs")]
        Target::Sqs(broker) => broker.peek_dead_letters(queue, limit).await?,
    };
    Ok(peeked
        .into_iter()
        .map(|p| Letter::read(settings, p))
        .collect())
}

pub async fn list(settings: &Settings, queue: &str, limit: usize) -> Result<(), Failure> {
    let letters = peek(settings, &settings.target().await?, queue, limit).await?;
    if settings.json {
        let list: Vec<_> = letters.iter().map(Letter::to_json).collect();
        output::json(&json!({"queue": queue, "dead_letters": list}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            let e = l.envelope.as_ref();
            // When it died where the broker says (SQS), else when it was called.
            let when = match (l.peeked.dead_since_ms, e) {
                (Some(ms), _) => output::time(ms),
                (None, Some(e)) => format!("{} (called)", output::time(e.created_at)),
                (None, None) => "?".into(),
            };
            vec![
                l.id().unwrap_or("?").to_owned(),
                l.task(),
                e.map_or_else(|| "?".into(), |e| e.attempt.to_string()),
                when,
                l.peeked.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["ID", "TASK", "ATTEMPT", "WHEN", "REASON"], &rows);
    if letters.is_empty() {
        eprintln!("no dead letters in `{queue}`");
    }
    Ok(())
}

/// What a replay did, for the command's output and the dashboard's.
pub struct ReplayReport {
    /// Put back onto the work queue.
    pub replayed: Vec<String>,
    /// Asked for by id, and not among the dead letters.
    pub not_found: Vec<String>,
    /// Left in the dead letters, with why (`id: why`).
    pub skipped: Vec<String>,
    /// Dead letters read and left where they were.
    pub left: usize,
}

impl ReplayReport {
    /// The error of a replay that did not do all it was asked.
    pub fn failure(&self, queue: &str) -> Option<Failure> {
        if !self.not_found.is_empty() {
            return Some(Failure::Other(format!(
                "no dead letter of `{queue}` has the id {}",
                self.not_found
                    .iter()
                    .map(|id| format!("`{id}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !self.skipped.is_empty() {
            return Some(Failure::Other(format!(
                "{} dead letter(s) could not be replayed",
                self.skipped.len()
            )));
        }
        None
    }
}

/// Puts the dead letters of `queue` with these `ids` (every one with `all`) back onto the
/// work queue, through the broker's replay (a dead letter leaves only once its copy is
/// confirmed on the work queue).
pub async fn replay_on(
    settings: &Settings,
    target: &Target,
    queue: &str,
    ids: &[String],
    all: bool,
    reset_attempts: bool,
) -> Result<ReplayReport, Failure> {
    let mut skipped: Vec<String> = Vec::new();
    let pick = |peeked: &PeekedDeadLetter| {
        let letter = Letter::read(settings, peeked.clone());
        let id = letter.id().unwrap_or_default().to_owned();
        if !all && !ids.contains(&id) {
            return Pick::Leave;
        }
        if !reset_attempts {
            return Pick::Replay {
                id,
                body: peeked.body.clone(),
            };
        }
        let Some(mut envelope) = letter.envelope else {
            skipped.push(format!(
                "{}: cannot reset its attempts: {}",
                if id.is_empty() { "?" } else { &id },
                letter.task()
            ));
            return Pick::Leave;
        };
        envelope.attempt = 0;
        // Run again: not the old outcome delivered again, and not a copy of a call that
        // runs once (its stored result would make the worker skip it).
        envelope.outcome = None;
        envelope.sent_with = None;
        envelope.once = false;
        let plain = envelope.to_bytes();
        let body = if letter.sealed {
            // Under the key that sent it, which may call this task.
            settings
                .keyring
                .reseal_binary(letter.key_id.as_deref(), &plain)
        } else {
            plain
        };
        Pick::Replay { id, body }
    };
    let report: Replayed = match target {
        #[cfg(feature = "amqp")]
        Target::Amqp(broker, _) => broker.replay_dead_letters(queue, pick).await?,
        #[cfg(feature = "sqs")]
        Target::Sqs(broker) => broker.replay_dead_letters(queue, pick).await?,
    };
    let not_found = ids
        .iter()
        .filter(|id| !report.replayed.contains(id))
        .filter(|id| !skipped.iter().any(|s| s.starts_with(id.as_str())))
        .cloned()
        .collect();
    Ok(ReplayReport {
        replayed: report.replayed,
        not_found,
        skipped,
        left: report.left,
    })
}

pub async fn replay(
    settings: &Settings,
    queue: &str,
    ids: Vec<String>,
    all: bool,
    reset_attempts: bool,
) -> Result<(), Failure> {
    let target = settings.target().await?;
    let report = replay_on(settings, &target, queue, &ids, all, reset_attempts).await?;
    if settings.json {
        // `not_found` lists every id not replayed, skipped ones too, as it always did.
        let not_found: Vec<&String> = ids
            .iter()
            .filter(|id| !report.replayed.contains(id))
            .collect();
        output::json(&json!({
            "queue": queue, "replayed": report.replayed, "left": report.left,
            "not_found": not_found, "skipped": report.skipped,
        }));
    } else {
        println!(
            "replayed {} dead letter(s) onto `{queue}`",
            report.replayed.len()
        );
    }
    for why in &report.skipped {
        eprintln!("left in the dead letters: {why}");
    }
    match report.failure(queue) {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

pub async fn purge(settings: &Settings, queue: &str, yes: bool) -> Result<(), Failure> {
    if !yes {
        return Err(Failure::Usage(format!(
            "`ivy dead purge {queue}` deletes every dead letter of `{queue}` for good: add --yes"
        )));
    }
    let purged = purge_on(&settings.target().await?, queue).await?;
    if settings.json {
        output::json(&json!({"queue": queue, "purged": purged}));
    } else {
        println!("purged {purged} dead letter(s) of `{queue}`");
    }
    Ok(())
}

/// Deletes every dead letter of `queue`; how many there were.
pub async fn purge_on(target: &Target, queue: &str) -> Result<u64, Failure> {
    Ok(match target {
        #[cfg(feature = "amqp")]
        Target::Amqp(broker, _) => broker.purge_dead_letters(queue).await?,
        #[cfg(feature = "sqs")]
        Target::Sqs(broker) => broker.purge_dead_letters(queue).await?,
    })
}
