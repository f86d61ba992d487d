//! The conformance suite on a Redis Sentinel deployment (`IVY_TEST_REDIS_SENTINEL_URL`,
//! default the one `scripts/redis-sentinel start` makes).
#![cfg(feature = "redis")]

mod common;

use common::redis_sentinel_notifier;

ivy_core::notifier_conformance!(redis_sentinel_notifier);
