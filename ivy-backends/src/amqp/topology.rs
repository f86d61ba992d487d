//! RabbitMQ's side of Ivy's queue model: the names of work, dead-letter and delay queues,
//! delay buckets, and declaring them (once per connection, delay queues again before their
//! `x-expires` runs out).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ivy_core::{Error, Result};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use tracing::warn;

use super::config::Config;
use super::{long_string, FAILURE};

/// A delay queue is re-declared (which restarts its `x-expires` clock) when its last
/// declaration on this connection is older than this...
const REDECLARE_AFTER: Duration = Duration::from_secs(60);
/// ...and expires this long after its TTL when nobody declares it, so a message published just
/// before a re-declaration was due still expires into the work queue before the queue goes.
const DELAY_QUEUE_SLACK_MS: u64 = 2 * REDECLARE_AFTER.as_millis() as u64;
/// RabbitMQ refuses TTLs and `x-expires` above 2^32 - 1 ms. Longer delays are clamped: the
/// worker re-delays calls that arrive before their eta.
const MAX_DELAY_MS: u64 = u32::MAX as u64 - DELAY_QUEUE_SLACK_MS;

/// AMQP names are short strings; leave room for the `.delay.<ms>` suffix.
const MAX_QUEUE_NAME: usize = 255 - ".delay.".len() - 10;

/// Topology a publish needs.
#[derive(Clone, Copy, Debug)]
pub(super) enum Decl<'a> {
    /// The work queue `q` and its dead letters `q.dead`.
    Work(&'a str),
    /// The delay bucket of `ms` milliseconds in front of `queue`.
    Delay { queue: &'a str, ms: u64 },
}

pub(super) fn dead_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

pub(super) fn delay_queue(queue: &str, ms: u64) -> String {
    format!("{queue}.delay.{ms}")
}

/// Rounds a delay up to its bucket: exact below 100 ms, else two significant digits, so there
/// are at most 90 buckets per decade and a message is at most 10 % late.
pub(super) fn delay_bucket(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let mut unit = 1;
    while ms / unit >= 100 {
        unit *= 10;
    }
    ms.div_ceil(unit).saturating_mul(unit).min(MAX_DELAY_MS)
}

pub(super) fn check_queue_name(queue: &str) -> Result<()> {
    if queue.is_empty() || queue.len() > MAX_QUEUE_NAME {
        return Err(Error::Config(format!(
            "AMQP queue names must have 1 to {MAX_QUEUE_NAME} bytes, `{queue}` has {}",
            queue.len()
        )));
    }
    Ok(())
}

/// Whether `decl` was declared on this connection recently enough: work queues once, delay
/// buckets within `REDECLARE_AFTER` (their `x-expires` clock restarts on a declare).
pub(super) fn fresh(declared: &HashMap<String, Instant>, decl: &Decl<'_>) -> bool {
    match *decl {
        Decl::Work(q) => declared.contains_key(q),
        Decl::Delay { queue, ms } => declared
            .get(&delay_queue(queue, ms))
            .is_some_and(|at| at.elapsed() < REDECLARE_AFTER),
    }
}

/// Declares `decl` unless `declared` says it is fresh on this connection.
pub(super) async fn declare(
    channel: &Channel,
    config: &Config,
    decl: &Decl<'_>,
    mut declared: Option<&mut HashMap<String, Instant>>,
) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    if declared.as_deref().is_some_and(|d| fresh(d, decl)) {
        return Ok(());
    }
    let key = match decl {
        Decl::Work(q) => (*q).to_owned(),
        Decl::Delay { queue, ms } => delay_queue(queue, *ms),
    };
    match decl {
        Decl::Work(q) => {
            channel
                .queue_declare((*q).into(), durable, config.work_queue_args(q))
                .await?;
            let mut args = FieldTable::default();
            config.add_type(&mut args);
            channel
                .queue_declare(dead_queue(q).into(), durable, args)
                .await?;
        }
        Decl::Delay { queue, ms } => {
            let mut args = FieldTable::default();
            config.add_type(&mut args);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(*ms as i64));
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt((*ms + DELAY_QUEUE_SLACK_MS) as i64),
            );
            args.insert("x-dead-letter-exchange".into(), long_string(""));
            args.insert("x-dead-letter-routing-key".into(), long_string(queue));
            config.add_dead_letter_strategy(&mut args);
            channel
                .queue_declare(key.as_str().into(), durable, args)
                .await?;
        }
    }
    if let Some(declared) = declared.as_mut() {
        declared.insert(key, Instant::now());
    }
    Ok(())
}

/// Whether `e` is RabbitMQ refusing to declare a work queue because it exists with another
/// `x-max-priority` than the declaration's: a queue declared by an Ivy that made every classic
/// queue a priority queue, or listed in `?priority_queues=` by some clients and not others.
/// Only for classic queues: a quorum client must not take a classic queue as its own.
pub(super) fn priority_differs(config: &Config, e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    if config.queue_type() != super::QueueType::Classic {
        return false;
    }
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                && amqp
                    .get_message()
                    .as_str()
                    .contains("inequivalent arg 'x-max-priority'")
        }
        _ => false,
    }
}

/// Whether `e` is RabbitMQ refusing to declare a quorum delay queue because it exists without
/// the at-least-once dead-lettering this Ivy declares (`x-dead-letter-strategy`,
/// `x-overflow`): one an earlier Ivy declared, which keeps its arguments until it expires.
pub(super) fn strategy_differs(config: &Config, e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    if config.queue_type() != super::QueueType::Quorum {
        return false;
    }
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            let text = amqp.get_message().as_str();
            *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                && (text.contains("inequivalent arg 'x-dead-letter-strategy'")
                    || text.contains("inequivalent arg 'x-overflow'"))
        }
        _ => false,
    }
}

/// Whether `e` refuses a declaration over arguments [`adopt`] can live with.
pub(super) fn arguments_differ(config: &Config, e: &lapin::Error) -> bool {
    priority_differs(config, e) || strategy_differs(config, e)
}

/// After [`arguments_differ`], for a delay queue: takes it as it exists (a passive declare,
/// on `channel`, a fresh one), dead-lettering at most once until it expires unused.
async fn adopt_delay(
    channel: &Channel,
    key: String,
    declared: Option<&mut HashMap<String, Instant>>,
) -> lapin::Result<()> {
    warn!(
        queue = %key,
        "RabbitMQ has delay queue `{key}` without at-least-once dead-lettering (declared by \
         an earlier Ivy); using it as it is until it expires unused"
    );
    channel
        .queue_declare(
            key.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    if let Some(declared) = declared {
        declared.insert(key, Instant::now());
    }
    Ok(())
}

/// After [`arguments_differ`]: a delay queue goes to [`adopt_delay`]; for a work queue
/// (refused over its priorities), takes the work
/// queue of `decl` as it exists (a passive declare, on `channel`, a fresh one, since the
/// refusal closed the last) and declares its dead-letter queue as usual. Its priorities are then what its first declaration said: a priority
/// queue keeps honouring priorities, a plain one ignores them.
pub(super) async fn adopt(
    channel: &Channel,
    config: &Config,
    decl: &Decl<'_>,
    mut declared: Option<&mut HashMap<String, Instant>>,
) -> lapin::Result<()> {
    if let Decl::Delay { queue, ms } = *decl {
        return adopt_delay(channel, delay_queue(queue, ms), declared).await;
    }
    let queue = decl.queue();
    warn!(
        queue,
        configured_priorities = config.has_priorities(queue),
        "RabbitMQ has queue `{queue}` with another `x-max-priority` than this client's \
         `priority_queues` says; using it as it is (see the README: moving to plain queues)"
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut args = FieldTable::default();
    config.add_type(&mut args);
    channel
        .queue_declare(dead_queue(queue).into(), durable, args)
        .await?;
    if let Some(declared) = declared.as_mut() {
        declared.insert(queue.to_owned(), Instant::now());
    }
    Ok(())
}

impl Decl<'_> {
    pub(super) fn queue(&self) -> &str {
        match *self {
            Decl::Work(q) | Decl::Delay { queue: q, .. } => q,
        }
    }
}

/// The error for RabbitMQ refusing to declare the queues of `decls` with `e`. The common
/// case, a queue that exists with other arguments (declared by hand, by an older Ivy or
/// with another `queue_type`), is refused again on every attempt until someone deletes it:
/// say so, naming the queue, in one line.
pub(super) fn declare_refused(decls: &[Decl<'_>], e: lapin::Error) -> Error {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
            let text = amqp.get_message().as_str();
            // RabbitMQ's text: "PRECONDITION_FAILED - inequivalent arg 'x' for queue 'q' in
            // vhost '/': received … but current is …".
            let detail = text.split_once(" - ").map_or(text, |(_, d)| d);
            let queue = detail
                .split_once("for queue '")
                .and_then(|(_, rest)| rest.split_once('\''))
                .map(|(q, _)| q.to_owned());
            let role = match &queue {
                Some(q)
                    if decls
                        .iter()
                        .any(|d| matches!(d, Decl::Delay { .. }) && q.contains(".delay.")) =>
                {
                    " (the delay queue that retries and `eta` calls wait in)"
                }
                Some(q) if q.ends_with(".dead") => " (the dead-letter queue)",
                _ => "",
            };
            let queue = queue.unwrap_or_else(|| {
                decls
                    .iter()
                    .map(Decl::queue)
                    .collect::<Vec<_>>()
                    .join("`, `")
            });
            return FAILURE.error(format!(
                "RabbitMQ refused to declare queue `{queue}`{role}: it exists with other \
                 arguments than Ivy's (PRECONDITION_FAILED: {detail}); delete it (for example \
                 `rabbitmqctl delete_queue {queue}`) and Ivy declares it again"
            ));
        }
    }
    FAILURE.caused(
        format!(
            "RabbitMQ refused to declare the queues of {:?}",
            decls.iter().map(Decl::queue).collect::<Vec<_>>()
        ),
        e,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_to_two_digits() {
        assert_eq!(delay_bucket(Duration::ZERO), 0);
        assert_eq!(delay_bucket(Duration::from_micros(1)), 1);
        assert_eq!(delay_bucket(Duration::from_millis(99)), 99);
        assert_eq!(delay_bucket(Duration::from_millis(1000)), 1000);
        assert_eq!(delay_bucket(Duration::from_millis(1001)), 1100);
        assert_eq!(delay_bucket(Duration::from_millis(45_678)), 46_000);
        assert_eq!(delay_bucket(Duration::from_secs(3600)), 3_600_000);
        assert!(delay_bucket(Duration::from_secs(u64::MAX)) <= u32::MAX as u64);
    }
}
