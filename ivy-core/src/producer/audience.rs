//! Whether anyone listens: the first call a producer sends to a queue is followed by a look at
//! the workers' announcements (PROTOCOL.md §9), and a warning when no live worker consumes that
//! queue. Without it, a call to a queue nobody consumes waits in silence (a worker left on
//! `default` while the task names another queue, a typo in a queue name).

use std::collections::HashSet;
use std::sync::Mutex;

use tracing::{debug, warn};

use crate::broker::Notifier;
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
