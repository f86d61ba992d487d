//! Small synchronisation helpers shared by the runtime and the backends.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the guard even when another thread panicked while holding it.
///
/// Every critical section in Ivy is a plain map or queue update that a panic cannot leave half
/// done, so a poisoned lock carries no broken invariant; stopping every producer and worker
/// because of it would turn one panicking task into an outage.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
