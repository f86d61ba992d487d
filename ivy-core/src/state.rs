//! Shared state given to a worker ([`Worker::state`](crate::Worker::state)) and handed to tasks
//! that take a [`State<T>`] parameter: a database pool, a client, a configuration. Not a global
//! and not on the wire: `#[task]` leaves `State<T>` parameters out of `name::call(..)` and fills
//! them from the running worker (`FromWorker`, in `context.rs`).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

/// A value from the worker's shared state, as a task parameter:
///
/// ```
/// # #[derive(Clone)] struct Db;
/// # impl Db { async fn save(&self, _: u64) {} }
/// # use ivy_core::State;
/// // With the `ivy` crate: #[ivy::task]
/// async fn record(order: u64, db: State<Db>) {
///     db.save(order).await
/// }
/// ```
///
/// The worker is given the value with `Worker::state(db)`; the call is made with the other
/// arguments only (`record::call(42)`); calling the function directly passes it
/// (`record(42, State(db)).await`). A worker without state of that type fails the call at once
/// with `ivy.missing_state` (dead-lettered, not retried).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State<T>(pub T);

impl<T> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for State<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// The worker's values by type.
#[derive(Default)]
pub(crate) struct States {
    by_type: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("States")
            .field("types", &self.by_type.len())
            .finish()
    }
}

impl States {
    /// Adds (or replaces) the value of type `T`.
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.by_type.insert(TypeId::of::<T>(), Box::new(value));
    }

    pub(crate) fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.by_type
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }
}
