//! The producer's listener: one subscription to its notification channel, made on the first
//! call that wants a result, whose notifications go to the waiting handles.

use std::sync::Arc;

use tracing::warn;

use super::{Producer, Shared};
use crate::broker::{Broker, Incoming, Notifier, Subscription};
use crate::error::{Error, Result};

impl<B: Broker, N: Notifier> Producer<B, N> {
    /// Subscribes to this producer's channel, once.
    pub(super) async fn ensure_listening(&self) -> Result<()> {
        self.inner
            .listener
            .get_or_try_init(|| async {
                let sub = self.inner.notifier.subscribe(&self.inner.channel).await?;
                let shared = self.inner.shared.clone();
                Ok::<_, Error>(tokio::spawn(listen(sub, shared)))
            })
            .await?;
        Ok(())
    }
}

async fn listen<S: Subscription>(mut sub: S, shared: Arc<Shared>) {
    while let Some(incoming) = sub.next().await {
        match incoming {
            Ok(Incoming::Message(payload)) => shared.deliver(&payload),
            Ok(Incoming::Gap) => shared.refetch_pending().await,
            Ok(Incoming::Interrupted) => {}
            Err(e) => warn!(error = %e, "notification subscription error"),
        }
    }
    warn!("the notification subscription ended; handles fall back to reading stored results");
}
