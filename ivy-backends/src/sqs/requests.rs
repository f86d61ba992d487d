//! Counting the requests sent to SQS, by operation: SQS is billed per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use ivy_core::sync::lock;

/// Requests sent, by operation name; an SDK interceptor counts every attempt as it is
/// transmitted, retries included.
#[derive(Clone, Debug, Default)]
pub(super) struct Requests {
    by_operation: Arc<Mutex<HashMap<String, u64>>>,
}

impl Requests {
    pub(super) fn total(&self) -> u64 {
        lock(&self.by_operation).values().sum()
    }

    pub(super) fn of(&self, operation: &str) -> u64 {
        lock(&self.by_operation)
            .get(operation)
            .copied()
            .unwrap_or(0)
    }
}

impl Intercept for Requests {
    fn name(&self) -> &'static str {
        "IvyRequestCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
        let mut counts = lock(&self.by_operation);
        match counts.get_mut(operation) {
            Some(n) => *n += 1,
            None => {
                counts.insert(operation.to_owned(), 1);
            }
        }
        Ok(())
    }
}
