//! `ivy queues`: messages per Ivy queue, by state.

#[cfg(feature = "amqp")]
use std::collections::HashMap;

use ivy_backends::inspect::QueueDepth;
use serde_json::json;

use crate::config::{Settings, Target};
#[cfg(feature = "amqp")]
use crate::management::ApiQueue;
use crate::output::{self, Failure};

/// Where the figures came from, for `--json` and the notes.
#[cfg(feature = "amqp")]
const MANAGEMENT: &str = "management";
#[cfg(feature = "amqp")]
const PASSIVE: &str = "passive";
pub const SQS: &str = "sqs";

/// What one inspection found: the queues, their depths (`None`: no such queue), where the
/// figures came from, and a note when the management API could not be used.
pub struct Inspection {
    pub names: Vec<String>,
    pub depths: Vec<Option<QueueDepth>>,
    pub source: &'static str,
    pub note: Option<String>,
}

/// The depths of `names` (every Ivy queue when empty), the way `ivy queues` and the dashboard
/// read them: the management API when it answers, else passive declarations (AMQP); SQS's
/// attributes.
pub async fn inspect(target: &Target, names: Vec<String>) -> Result<Inspection, Failure> {
    // Set by RabbitMQ's side only.
    #[cfg_attr(not(feature = "amqp"), allow(unused_mut))]
    let mut note = None;
    let (names, depths, source) = match target {
        #[cfg(feature = "sqs")]
        Target::Sqs(broker) => {
            let names = if names.is_empty() {
                broker.ivy_queues().await?
            } else {
                names
            };
            let depths = broker.depths(&names).await?;
            (names, depths, SQS)
        }
        #[cfg(feature = "amqp")]
        Target::Amqp(broker, management) => {
            let mut api = None;
            if let Some(m) = management {
                match m.queues().await {
                    Ok(list) => api = Some(list),
                    Err(why) => {
                        note = Some(format!(
                            "RabbitMQ's management API at {} cannot be used ({why}); in flight \
                             and delayed are unknown (`?`). Give its address with --management-url.",
                            m.url()
                        ))
                    }
                }
            }
            match api {
                Some(list) => {
                    let (names, depths) = from_api(&list, names);
                    (names, depths, MANAGEMENT)
                }
                None => {
                    if names.is_empty() {
                        return Err(Failure::Usage(format!(
                            "name the queues (ivy queues Q..): without its management API, \
                             RabbitMQ cannot list them{}",
                            note.map(|n| format!(" ({n})")).unwrap_or_default()
                        )));
                    }
                    let depths = broker.passive_depths(&names).await?;
                    (names, depths, PASSIVE)
                }
            }
        }
    };
    Ok(Inspection {
        names,
        depths,
        source,
        note,
    })
}

/// Replaces the management API's ready, dead and consumer figures with those of passive
/// declares, which are exact: the API's lag by seconds, and stay stale for an idle queue after
/// a purge (RabbitMQ 3.10 emits no new statistics for it). For at most `limit` queues (a
/// declare each, two per queue); SQS and passive figures are left as they are.
#[cfg(all(feature = "amqp", feature = "dashboard"))]
pub async fn exact_counts(
    target: &Target,
    inspection: &mut Inspection,
    limit: usize,
) -> Result<(), Failure> {
    let broker = match target {
        Target::Amqp(broker, _) => broker,
        #[cfg(feature = "sqs")]
        Target::Sqs(_) => return Ok(()),
    };
    if inspection.source != MANAGEMENT || inspection.names.len() > limit {
        return Ok(());
    }
    let exact = broker.passive_depths(&inspection.names).await?;
    for (depth, exact) in inspection.depths.iter_mut().zip(exact) {
        match (depth.as_mut(), exact) {
            (Some(d), Some(e)) => {
                d.ready = e.ready;
                d.dead = e.dead;
                d.consumers = e.consumers;
            }
            (_, None) => *depth = None,
            (None, Some(e)) => *depth = Some(e),
        }
    }
    Ok(())
}

/// Without RabbitMQ there is nothing to make exact.
#[cfg(all(not(feature = "amqp"), feature = "dashboard"))]
pub async fn exact_counts(_: &Target, _: &mut Inspection, _: usize) -> Result<(), Failure> {
    Ok(())
}

pub async fn run(settings: &Settings, names: Vec<String>) -> Result<(), Failure> {
    let Inspection {
        names,
        depths,
        source,
        note,
    } = inspect(&settings.target().await?, names).await?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    print(settings, &names, &depths, source);
    match names
        .iter()
        .zip(&depths)
        .filter(|(_, d)| d.is_none())
        .map(|(n, _)| format!("`{n}`"))
        .collect::<Vec<_>>()
    {
        missing if missing.is_empty() => Ok(()),
        missing => Err(Failure::Other(format!(
            "no such queue: {}",
            missing.join(", ")
        ))),
    }
}

/// The depths of `names` (all Ivy queues when empty: those with a `.dead` queue beside them)
/// from the management API's queue list.
#[cfg(feature = "amqp")]
fn from_api(list: &[ApiQueue], names: Vec<String>) -> (Vec<String>, Vec<Option<QueueDepth>>) {
    let by_name: HashMap<&str, &ApiQueue> = list.iter().map(|q| (q.name.as_str(), q)).collect();
    let names = if names.is_empty() {
        let mut ivy: Vec<String> = list
            .iter()
            .filter(|q| by_name.contains_key(format!("{}.dead", q.name).as_str()))
            .map(|q| q.name.clone())
            .collect();
        ivy.sort();
        ivy
    } else {
        names
    };
    let depths = names
        .iter()
        .map(|name| {
            let work = by_name.get(name.as_str())?;
            let prefix = format!("{name}.delay.");
            let delayed = list
                .iter()
                .filter(|q| {
                    q.name
                        .strip_prefix(&prefix)
                        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|q| q.ready + q.unacked)
                .sum();
            let dead = by_name
                .get(format!("{name}.dead").as_str())
                .map_or(0, |d| d.ready + d.unacked);
            let mut depth = QueueDepth::default();
            depth.ready = Some(work.ready);
            depth.in_flight = Some(work.unacked);
            depth.delayed = Some(delayed);
            depth.dead = Some(dead);
            depth.consumers = Some(work.consumers);
            Some(depth)
        })
        .collect();
    (names, depths)
}

fn print(settings: &Settings, names: &[String], depths: &[Option<QueueDepth>], source: &str) {
    if settings.json {
        let queues: Vec<_> = names
            .iter()
            .zip(depths)
            .map(|(name, d)| match d {
                Some(d) => json!({
                    "queue": name, "exists": true, "ready": d.ready, "in_flight": d.in_flight,
                    "delayed": d.delayed, "dead": d.dead, "consumers": d.consumers,
                }),
                None => json!({"queue": name, "exists": false}),
            })
            .collect();
        output::json(&json!({"source": source, "queues": queues}));
        return;
    }
    let rows: Vec<Vec<String>> = names
        .iter()
        .zip(depths)
        .map(|(name, d)| match d {
            Some(d) => vec![
                name.clone(),
                output::count(d.ready),
                output::count(d.in_flight),
                output::count(d.delayed),
                output::count(d.dead),
                output::count(d.consumers),
            ],
            None => vec![
                name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "(no such queue)".into(),
            ],
        })
        .collect();
    output::table(
        &[
            "QUEUE",
            "READY",
            "IN FLIGHT",
            "DELAYED",
            "DEAD",
            "CONSUMERS",
        ],
        &rows,
    );
    if source == SQS {
        eprintln!("note: SQS counts are approximate, and SQS does not tell its consumers (`?`)");
    }
}

#[cfg(all(test, feature = "amqp"))]
mod tests {
    use super::*;

    fn q(name: &str, ready: u64, unacked: u64, consumers: u64) -> ApiQueue {
        ApiQueue {
            name: name.into(),
            ready,
            unacked,
            consumers,
        }
    }

    #[test]
    fn ivy_queues_are_those_with_dead_letters_beside_them() {
        let list = vec![
            q("a", 3, 1, 2),
            q("a.dead", 4, 0, 0),
            q("a.delay.1100", 5, 0, 0),
            q("a.delay.46000", 1, 0, 0),
            q("a.delayed", 9, 0, 0),
            q("other", 7, 0, 0),
        ];
        let (names, depths) = from_api(&list, Vec::new());
        assert_eq!(names, ["a"]);
        let d = depths[0].unwrap();
        assert_eq!(
            (d.ready, d.in_flight, d.delayed, d.dead, d.consumers),
            (Some(3), Some(1), Some(6), Some(4), Some(2))
        );
        let (_, depths) = from_api(&list, vec!["missing".into()]);
        assert_eq!(depths, [None]);
    }
}
