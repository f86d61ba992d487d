//! Where calls go and whether anyone listens there: the queue `default` stands for the
//! producer's default queue ([`Producer::with_default_queue`]), and the first call a producer
//! sends to a queue is followed by a look at
//! the workers' announcements (PROTOCOL.md §9), and a warning when no live worker consumes that
//! queue. Without it, a call to a queue nobody consumes waits in silence (a worker left on
//! `default` while the task names another queue, a typo in a queue name).

use std::collections::HashSet;
use std::sync::Mutex;

use tracing::{debug, warn};

use std::sync::Arc;

use super::Producer;
use crate::broker::{Broker, Notifier};
use crate::events::WorkerInfo;
use crate::sync::lock;

/// The queues this producer has looked for consumers of (each once per producer).
#[derive(Debug, Default)]
pub(super) struct Audience {
    looked: Mutex<HashSet<String>>,
}

impl Audience {
    /// After a call to `queue`: the first time, looks in the background for a live worker that
    /// consumes it, and warns when there is none.
    pub(super) fn look<N: Notifier>(&self, queue: &str, notifier: &N) {
        {
            let mut looked = lock(&self.looked);
            if looked.contains(queue) {
                return;
            }
            looked.insert(queue.to_owned());
        }
        let (queue, notifier) = (queue.to_owned(), notifier.clone());
        tokio::spawn(async move {
            match notifier.announcements().await {
                Ok(found) => {
                    let workers: Vec<WorkerInfo> = found
                        .iter()
                        .filter_map(|a| WorkerInfo::from_slice(a).ok())
                        .collect();
                    if let Some(why) = crate::events::unconsumed(&queue, &workers) {
                        warn!(queue = %queue, "{why}");
                    }
                }
                Err(e) => {
                    debug!(queue = %queue, error = %e, "could not read the workers' announcements")
                }
            }
        });
    }
}

impl<B: Broker, N: Notifier> Producer<B, N> {
    /// Sends calls of tasks that name no queue (their queue is `default`) to `queue`
    /// instead; a call's own [`Call::queue`](crate::Call::queue) still wins. Give workers the
    /// same ([`Worker::default_queue`](crate::Worker::default_queue)): one line per process
    /// instead of `queue = "…"` on every task. Applies to this producer and its clones.
    pub fn with_default_queue(self, queue: impl Into<String>) -> Self {
        let queue: Arc<str> = Arc::from(queue.into());
        *self
            .inner
            .default_queue
            .write()
            .unwrap_or_else(|p| p.into_inner()) = queue;
        self
    }

    /// The queue a call for `queue` goes to: `default` is the producer's default queue.
    pub(super) fn resolve_queue(&self, queue: String) -> String {
        if queue != "default" {
            return queue;
        }
        let to = self
            .inner
            .default_queue
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if &**to == "default" {
            return queue;
        }
        to.to_string()
    }
}
