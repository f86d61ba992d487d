//! Bulk sends under every single publish fault: each call answers for itself, and what was
//! not sent can be sent again without a second copy of what was.

use std::time::Duration;

use super::super::*;
use crate::broker::{Consumer, Delivery};
use crate::failure::TaskFailure;
use crate::faults::{Fault, Faults, FaultyBroker};
use crate::memory::{MemoryBroker, MemoryNotifier};
use crate::task::TaskOptions;
use serde_json::Map;

struct Noop;
impl Task for Noop {
    const NAME: &'static str = "producer.bulk_tests.noop";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = ();
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        Ok(Value::Null)
    }
}

const N: usize = 5;

/// Call `i`, by a caller's id and unique for a minute: sending it again is the same call.
fn call(i: usize) -> Call<Noop> {
    Call::__new(Ok(Map::new()))
        .id(format!("c{i}"))
        .unique_for(Duration::from_secs(60))
}

/// The ids of every call waiting on the `default` queue, sorted.
async fn queued(broker: &MemoryBroker) -> Vec<String> {
    let mut consumer = broker.consume(&["default".into()], 100).await.unwrap();
    let mut ids = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(50), consumer.next()).await {
        let d = d.unwrap();
        let env: Value = serde_json::from_slice(d.body()).unwrap();
        ids.push(env["id"].as_str().unwrap().to_owned());
        d.ack().await.unwrap();
    }
    ids.sort();
    ids
}

fn ids(range: impl Iterator<Item = usize>) -> Vec<String> {
    range.map(|i| format!("c{i}")).collect()
}

#[tokio::test]
async fn each_call_of_a_bulk_send_answers_for_itself_under_every_publish_fault() {
    for fault in Fault::ALL {
        for nth in 1..=N as u32 {
            let faults = Faults::new();
            faults.inject("publish", nth, fault);
            let broker = MemoryBroker::new();
            let p = Producer::new(
                FaultyBroker::new(broker.clone(), faults.clone()),
                MemoryNotifier::new(),
            );
            let sent = p.send_many((0..N).map(call)).await;
            let failed: Vec<usize> = (0..N).filter(|&i| sent[i].is_err()).collect();
            assert_eq!(failed.len(), 1, "{fault:?} on publish {nth}: {sent:?}");
            let f = failed[0];
            match (fault, &sent[f]) {
                (Fault::Fail, Err(Error::Backend { .. })) => {}
                (Fault::LoseAnswer, Err(Error::PublishOutcomeUnknown { .. })) => {}
                other => panic!("{fault:?} on publish {nth}: {other:?}"),
            }
            for (i, r) in sent.iter().enumerate().filter(|(i, _)| *i != f) {
                assert_eq!(r.as_deref().ok(), Some(format!("c{i}").as_str()));
            }
            // What the broker took: every other call, and the faulted one if only its answer
            // was lost.
            let expected = ids((0..N).filter(|&i| i != f || fault == Fault::LoseAnswer));
            assert_eq!(
                queued(&broker).await,
                expected,
                "{fault:?} on publish {nth}"
            );

            // Sending all again: the call not sent goes now (its key was given up); the others,
            // the lost answer's too, are duplicates of calls sent (their keys kept).
            let again = p.send_many((0..N).map(call)).await;
            let again: Vec<String> = again.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(again, ids(0..N));
            let expected = match fault {
                Fault::Fail => ids(f..=f),
                _ => Vec::new(),
            };
            assert_eq!(
                queued(&broker).await,
                expected,
                "{fault:?} on publish {nth}"
            );
        }
    }
}

#[tokio::test]
async fn a_handle_not_sent_leaves_no_registration_behind() {
    for fault in Fault::ALL {
        let faults = Faults::new();
        faults.inject("publish", 2, fault);
        let p = Producer::new(
            FaultyBroker::new(MemoryBroker::new(), faults),
            MemoryNotifier::new(),
        );
        let handles = p.delayed_calls((0..N).map(call)).await.unwrap();
        let ok = handles.iter().filter(|h| h.is_ok()).count();
        assert_eq!(ok, N - 1, "{fault:?}");
        assert_eq!(lock(&p.inner.shared.pending).len(), N - 1, "{fault:?}");
        drop(handles);
        assert!(lock(&p.inner.shared.pending).is_empty());
    }
}
