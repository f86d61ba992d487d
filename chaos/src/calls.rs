//! The calls of one path: sent `window` at a time through a real producer, each followed to
//! its result by its own handle; what happened to each call is kept in a [`Ledger`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ivy::backends::{AnyBroker, AnyNotifier};
use ivy::Producer;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::task::work;

/// What happened to one call, as the caller saw it.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// When it was handed to `delayed_call`.
    pub sent_at: Option<Instant>,
    /// When `delayed_call` returned `Ok` (the broker confirmed it).
    pub confirmed_at: Option<Instant>,
    /// `delayed_call`'s error, when it failed.
    pub send_error: Option<String>,
    /// What the handle yielded: the value, or its error.
    pub result: Option<Result<u64, String>>,
    /// When the handle yielded it.
    pub result_at: Option<Instant>,
}

/// Every call's record and the counters the fault plan and the end of the run watch.
#[derive(Debug)]
pub struct Ledger {
    pub records: Mutex<Vec<Record>>,
    pub sent: AtomicU64,
    /// Calls the sender may send so far (it sends call `n` once `n < allowed`): the run
    /// releases them in a burst before each fault and a trickle during it.
    pub allowed: AtomicU64,
    /// Calls whose fate changed (confirmed, failed to send, got a result), for "no progress".
    pub changes: AtomicU64,
    /// Calls that are settled for the caller: a send error or a result.
    pub settled: AtomicU64,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Ledger {
    fn update(&self, n: u64, f: impl FnOnce(&mut Record)) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut records[n as usize]);
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops every call still waiting.
    pub fn abort_all(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// How the calls of a path are made.
#[derive(Clone, Debug)]
pub struct CallPlan {
    pub n: u64,
    /// Calls in flight at most (sent, result not yet back).
    pub window: usize,
    pub queue: String,
    pub seed: u64,
    /// Every `long_every`-th call lasts `long_ms` (longer than SQS's visibility timeout).
    pub long: Option<(u64, u64)>,
    /// A call waiting this long for its result stops counting against the window (it keeps
    /// waiting), so calls lost by a broker restart do not stall the run.
    pub stuck_after: Duration,
}

/// A cheap reproducible hash (splitmix64).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl CallPlan {
    /// How long call `n` works: mostly 1–20 ms; one in ten 200–1000 ms, so that a worker
    /// killed is likely to be killed mid-task; the long ones the long duration.
    pub fn millis(&self, n: u64) -> u64 {
        let r = mix(self.seed ^ n);
        match self.long {
            Some((every, ms)) if n % every == every / 2 => ms,
            _ if n % 10 == 3 => 200 + r % 800,
            _ => 1 + r % 20,
        }
    }

    pub fn is_long(&self, n: u64) -> bool {
        matches!(self.long, Some((every, _)) if n % every == every / 2)
    }
}

/// Starts sending; returns at once. The ledger fills in as calls are confirmed and answered.
pub fn start(producer: Producer<AnyBroker, AnyNotifier>, plan: CallPlan) -> Arc<Ledger> {
    let ledger = Arc::new(Ledger {
        records: Mutex::new(vec![Record::default(); plan.n as usize]),
        sent: AtomicU64::new(0),
        allowed: AtomicU64::new(0),
        changes: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        tasks: Mutex::new(Vec::new()),
    });
    let window = Arc::new(Semaphore::new(plan.window));
    let l = ledger.clone();
    let sender = tokio::spawn(async move {
        for n in 0..plan.n {
            while n >= l.allowed.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let Ok(permit) = window.clone().acquire_owned().await else {
                return;
            };
            l.sent.fetch_add(1, Ordering::Relaxed);
            let (p, l2, plan2) = (producer.clone(), l.clone(), plan.clone());
            l.update(n, |r| r.sent_at = Some(Instant::now()));
            let task = tokio::spawn(async move {
                let mut permit = Some(permit);
                let call = work::call(n, plan2.millis(n)).queue(plan2.queue.as_str());
                let mut handle = match p.delayed_call(call).await {
                    Ok(h) => h,
                    Err(e) => {
                        l2.update(n, |r| r.send_error = Some(e.to_string()));
                        l2.settled.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                l2.update(n, |r| r.confirmed_at = Some(Instant::now()));
                let result = {
                    let wait = handle.result();
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            r = &mut wait => break r,
                            () = tokio::time::sleep(plan2.stuck_after), if permit.is_some() => {
                                permit = None;
                            }
                        }
                    }
                };
                l2.update(n, |r| {
                    r.result = Some(result.map_err(|e| e.to_string()));
                    r.result_at = Some(Instant::now());
                });
                l2.settled.fetch_add(1, Ordering::Relaxed);
                drop(permit);
            });
            l.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(task.abort_handle());
        }
    });
    ledger
        .tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(sender.abort_handle());
    ledger
}
