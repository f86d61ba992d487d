//! The in-memory notifier's rate limits and concurrency slots: what Redis's keys
//! and scripts do across processes (PROTOCOL.md §10), done inside one process.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::Turn;

#[derive(Debug, Default)]
pub(super) struct Limits {
    /// Per rate-limited task, the theoretical arrival time of its next turn (GCRA).
    turns: HashMap<String, Instant>,
    /// Per task with a concurrency limit, its holders and their lease expiries.
    slots: HashMap<String, HashMap<String, Instant>>,
}

impl Limits {
    pub(super) fn reserve_turn(
        &mut self,
        task: &str,
        interval: Duration,
        horizon: Duration,
    ) -> Turn {
        let now = Instant::now();
        let next = self.turns.get(task).map_or(now, |tat| (*tat).max(now));
        let wait = next - now;
        if wait > horizon {
            return Turn::Busy(wait);
        }
        self.turns.insert(task.to_owned(), next + interval);
        Turn::Reserved(wait)
    }

    pub(super) fn acquire_slot(
        &mut self,
        task: &str,
        holder: &str,
        max: u32,
        lease: Duration,
    ) -> bool {
        let now = Instant::now();
        let holders = self.slots.entry(task.to_owned()).or_default();
        holders.retain(|_, expiry| *expiry > now);
        if holders.contains_key(holder) || holders.len() < max as usize {
            holders.insert(holder.to_owned(), now + lease);
            true
        } else {
            false
        }
    }

    pub(super) fn release_slot(&mut self, task: &str, holder: &str) {
        if let Some(holders) = self.slots.get_mut(task) {
            holders.remove(holder);
            if holders.is_empty() {
                self.slots.remove(task);
            }
        }
    }
}
