//! The conformance suite on a Redis Cluster (`IVY_TEST_REDIS_CLUSTER_URL`, default the one
//! `scripts/redis-cluster start` makes).
#![cfg(feature = "redis")]

mod common;

use common::redis_cluster_notifier;

ivy_core::notifier_conformance!(redis_cluster_notifier);
