//! The conformance suite on Redis (`IVY_TEST_REDIS_URL`, default the local server).
#![cfg(feature = "redis")]

mod common;

use common::redis_notifier;

ivy_core::notifier_conformance!(redis_notifier);
