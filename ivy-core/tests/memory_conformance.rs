//! The memory backend passes the conformance suite every backend must pass.

use ivy_core::memory::{MemoryBroker, MemoryNotifier};

async fn broker() -> MemoryBroker {
    // A small limit keeps the oversized-body check cheap.
    MemoryBroker::with_max_message_size(64 * 1024)
}

async fn notifier() -> MemoryNotifier {
    MemoryNotifier::new()
}

ivy_core::broker_conformance!(broker);
ivy_core::notifier_conformance!(notifier);
