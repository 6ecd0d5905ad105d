//! The store as request code calls it: every call within the command budget (a hanging store is
//! an unavailable one) and counted in the store metrics.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Store;
use crate::error::{GatewayError, StoreError};

/// A shared store with its per-command time budget. Cheap to clone; derefs to the store, so a
/// call reads `store.call(store.get_user(id))`.
#[derive(Clone)]
pub struct StoreHandle {
    store: Arc<dyn Store>,
    /// Budget of one store command (`store.command_timeout`).
    budget: Duration,
}

impl StoreHandle {
    pub fn new(store: Arc<dyn Store>, budget: Duration) -> Self {
        StoreHandle { store, budget }
    }

    /// The store itself, for work that outlives a request's borrow (a streamed export).
    pub fn shared(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Run one store call within the budget; its failure as the request's error (503).
    pub async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, GatewayError> {
        self.call_keep_error(fut).await.map_err(GatewayError::from)
    }

    /// As [`StoreHandle::call`], keeping the store's own error, for callers that act on
    /// `Conflict` (an email or key id already taken).
    pub async fn call_keep_error<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = if self.store.in_process() {
            // No timer to arm for a store that answers from memory.
            fut.await
        } else {
            match tokio::time::timeout(self.budget, fut).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable("store command timed out".into())),
            }
        };
        let ok = !matches!(r, Err(StoreError::Unavailable(_)));
        crate::metrics::get().store(started.elapsed(), ok);
        crate::telemetry::store_call(started, self.store.kind(), ok);
        r
    }
}

impl Deref for StoreHandle {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_failed_call_is_the_requests_store_unavailable() {
        let h = StoreHandle::new(Arc::new(MemoryStore::new()), Duration::from_millis(10));
        assert!(h.call(h.ping()).await.is_ok());
        let err = h
            .call(async { Err::<(), _>(StoreError::Unavailable("down".into())) })
            .await
            .unwrap_err();
        assert_eq!(err.parts().2, "STORE_UNAVAILABLE");
        let kept = h
            .call_keep_error(async { Err::<(), _>(StoreError::Conflict) })
            .await
            .unwrap_err();
        assert!(matches!(kept, StoreError::Conflict), "{kept:?}");
    }
}
