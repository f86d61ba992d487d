//! The conformance suite on SQS (`IVY_TEST_SQS_URL`, default the local moto server).
#![cfg(feature = "sqs")]

use ivy_backends::sqs::SqsBroker;

async fn broker() -> SqsBroker {
    let url = std::env::var("IVY_TEST_SQS_URL")
        .unwrap_or_else(|_| "sqs://127.0.0.1:4566?region=us-east-1".to_owned());
    // A short visibility timeout: a message whose release was lost comes back within the
    // suite's patience.
    let sep = if url.contains('?') { '&' } else { '?' };
    SqsBroker::from_url(&format!("{url}{sep}visibility_timeout=5"))
        .await
        .expect("an SQS server must be running (scripts/services)")
}

ivy_core::broker_conformance!(broker);
