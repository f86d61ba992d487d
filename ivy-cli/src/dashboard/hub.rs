//! The dashboard's one view of the deployment, shared by every tab: one subscription to the
//! task events and one periodic inspection of the queues, workers and dead letters per
//! server. Each change is rendered once and broadcast to the tabs' event streams; a tab
//! never makes the server ask the broker anything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ivy_backends::AnyNotifier;
use ivy_core::envelope::now_ms;
use ivy_core::events::EVENTS_CHANNEL;
use ivy_core::{Incoming, Results, Subscription};
use tokio::sync::{broadcast, Mutex, Notify};

use crate::config::{Settings, Target};
use crate::dead;
use crate::{live, queues};

use super::pages;
use super::view::View;

/// Dead letters read per queue.
pub const DEAD_SHOWN: usize = 50;
/// Up to this many queues shown, their ready and dead counts come from passive declares
/// (exact) rather than the management API (late, and stale after a purge).
const EXACT_COUNTS: usize = 50;
/// Dead letters are read again at least this often while there are some.
const DEAD_REREAD: Duration = Duration::from_secs(15);
/// Coalesces bursts of events into at most one render of the calls per this period.
const CALLS_RENDER_EVERY: Duration = Duration::from_millis(250);

/// One rendered part of the page for the tabs: the SSE event name and its HTML.
pub type Update = (&'static str, Arc<str>);

/// The server's state.
pub struct Hub {
    pub settings: Settings,
    pub target: Target,
    pub notifier: AnyNotifier,
    /// Queue names asked for (empty: every Ivy queue).
    pub names: Vec<String>,
    pub refresh: Duration,
    /// Peeks, replays and purges one at a time: a replay must not miss letters a peek holds.
    pub broker_lock: Mutex<()>,
    pub view: RwLock<View>,
    pub updates: broadcast::Sender<Update>,
    /// The last HTML sent per part, for tabs that connect later.
    pub parts: RwLock<HashMap<&'static str, Arc<str>>>,
    /// Asks the inspection to run now (after a replay or purge).
    pub inspect_now: Notify,
    /// Read the dead letters again at the next inspection, whatever the counts say (they lag).
    pub repeek: AtomicBool,
    pub csrf: String,
}

impl Hub {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `html` as part `name` unless it is what the tabs already have.
    fn publish(&self, name: &'static str, html: String) {
        // SSE data cannot carry a carriage return; as an entity it renders the same.
        let html: Arc<str> = html.replace('\r', "&#13;").into();
        let mut parts = self.parts.write().unwrap_or_else(|p| p.into_inner());
        if parts.get(name).is_some_and(|old| *old == html) {
            return;
        }
        parts.insert(name, html.clone());
        // No tab listening is fine.
        let _ = self.updates.send((name, html));
    }

    /// Every part as last sent, for a tab that just connected.
    pub fn snapshot(&self) -> Vec<Update> {
        let parts = self.parts.read().unwrap_or_else(|p| p.into_inner());
        parts.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    pub fn render_all(&self) {
        let (queues, workers, calls, dead, status) = {
            let view = self.read();
            (
                pages::queues_part(&view).into_string(),
                pages::workers_part(&view).into_string(),
                pages::calls_part(&view).into_string(),
                pages::dead_part(&view, &self.csrf).into_string(),
                pages::status_part(&view).into_string(),
            )
        };
        self.publish("queues", queues);
        self.publish("workers", workers);
        self.publish("calls", calls);
        self.publish("dead", dead);
        self.publish("status", status);
    }

    /// Follows the task events for as long as the server runs (resubscribing after errors).
    /// `first`: the subscription made before the server said it listens, so nothing sent
    /// after that is missed.
    pub async fn follow_events(
        self: Arc<Self>,
        mut first: Option<<AnyNotifier as ivy_core::Results>::Subscription>,
    ) {
        let mut tick = tokio::time::interval(CALLS_RENDER_EVERY);
        loop {
            let subscribed = match first.take() {
                Some(s) => Ok(s),
                None => self.notifier.subscribe(EVENTS_CHANNEL).await,
            };
            let mut events = match subscribed {
                Ok(s) => s,
                Err(e) => {
                    self.write().events_note = Some(format!("cannot follow the task events: {e}"));
                    self.render_all();
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            if self.write().events_note.take().is_some() {
                self.render_all();
            }
            let mut dirty = false;
            loop {
                tokio::select! {
                    next = events.next() => match next {
                        Some(Ok(Incoming::Message(payload))) => {
                            match live::read_event(&self.settings, &payload) {
                                // Asked for some queues: only their calls.
                                Ok(e) if !self.names.is_empty() && !self.names.contains(&e.queue) => {}
                                Ok(e) => self.write().apply(e),
                                Err(_) => self.write().unreadable_events += 1,
                            }
                            dirty = true;
                        }
                        Some(Ok(Incoming::Gap)) => {
                            self.write().events_note = Some(
                                "the connection to the result store was interrupted: events may \
                                 have been missed".into(),
                            );
                            dirty = true;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            self.write().events_note = Some(format!("task events: {e}"));
                            dirty = true;
                        }
                        None => break,
                    },
                    _ = tick.tick() => {
                        if std::mem::take(&mut dirty) {
                            let (calls, queues, status) = {
                                let view = self.read();
                                (
                                    pages::calls_part(&view).into_string(),
                                    pages::queues_part(&view).into_string(),
                                    pages::status_part(&view).into_string(),
                                )
                            };
                            self.publish("calls", calls);
                            self.publish("queues", queues);
                            self.publish("status", status);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Reads queues, workers and dead letters every `refresh`, or at once when asked.
    pub async fn inspect_loop(self: Arc<Self>) {
        let mut peeked: HashMap<String, (u64, tokio::time::Instant)> = HashMap::new();
        loop {
            self.inspect_once(&mut peeked).await;
            tokio::select! {
                _ = tokio::time::sleep(self.refresh) => {}
                _ = self.inspect_now.notified() => {}
            }
        }
    }

    async fn inspect_once(&self, peeked: &mut HashMap<String, (u64, tokio::time::Instant)>) {
        let inspection = {
            let _one = self.broker_lock.lock().await;
            match queues::inspect(&self.target, self.names.clone()).await {
                Ok(mut i) => queues::exact_counts(&self.target, &mut i, EXACT_COUNTS)
                    .await
                    .map(|()| i),
                Err(f) => Err(f),
            }
        };
        let workers = live::announced(&self.settings, &self.notifier).await;
        if self.repeek.swap(false, Ordering::SeqCst) {
            peeked.clear();
        }
        let mut to_peek = Vec::new();
        {
            let mut view = self.write();
            match inspection {
                Ok(i) => {
                    view.queues = i.names.into_iter().zip(i.depths).collect();
                    view.queue_source = i.source;
                    view.queue_error = i.note;
                }
                Err(f) => view.queue_error = Some(f.to_string()),
            }
            match workers {
                Ok(mut w) => {
                    // Asked for some queues: the workers that serve them.
                    if !self.names.is_empty() {
                        w.retain(|w| w.queues.iter().any(|q| self.names.contains(q)));
                    }
                    view.workers = w;
                    view.worker_error = None;
                }
                Err(f) => view.worker_error = Some(f.to_string()),
            }
            view.inspected_at = now_ms();
            let counts: Vec<(String, u64)> = view
                .queues
                .iter()
                .filter_map(|(q, d)| Some((q.clone(), d.as_ref()?.dead?)))
                .collect();
            view.dead
                .retain(|q, _| counts.iter().any(|(c, n)| c == q && *n > 0));
            for (q, n) in counts {
                let stale = peeked
                    .get(&q)
                    .is_none_or(|(seen, at)| *seen != n || at.elapsed() >= DEAD_REREAD);
                if n > 0 && stale {
                    to_peek.push((q, n));
                } else if n == 0 {
                    peeked.remove(&q);
                }
            }
        }
        for (q, n) in to_peek {
            let letters = {
                let _one = self.broker_lock.lock().await;
                dead::peek(&self.settings, &self.target, &q, DEAD_SHOWN).await
            };
            let mut view = self.write();
            match letters {
                Ok(letters) => {
                    peeked.insert(q.clone(), (n, tokio::time::Instant::now()));
                    view.dead.insert(q, letters);
                    view.dead_error = None;
                }
                Err(f) => view.dead_error = Some(format!("dead letters of `{q}`: {f}")),
            }
        }
        self.render_all();
    }
}
