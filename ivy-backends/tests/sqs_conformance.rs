//! The conformance suite on SQS (`IVY_TEST_SQS_URL`, default the local moto server).
#![cfg(feature = "sqs")]

mod common;

async fn broker() -> ivy_backends::sqs::SqsBroker {
    // A short visibility timeout: a message whose release was lost comes back within the
    // suite's patience.
    common::sqs_broker("visibility_timeout=5").await
}

ivy_core::broker_conformance!(broker);
