//! The store as request code calls it: every call within the command budget (a hanging store is
//! an unavailable one) and counted in the store metrics.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Counters, Lookup, Records, Store};
use crate::error::{GatewayError, StoreError};

/// A shared store with its per-command time budget: the lifecycle (`ping`, `shutdown`,
/// `invalidations`) through `Deref`, and the roles its callers take ([`StoreHandle::lookup`],
/// [`StoreHandle::counters`], [`StoreHandle::records`]). Cheap to clone.
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

    fn role<R: ?Sized>(&self, pick: for<'s> fn(&'s dyn Store) -> &'s R) -> Role<R> {
        Role {
            store: self.store.clone(),
            pick,
            budget: self.budget,
            in_process: self.store.in_process(),
            kind: self.store.kind(),
        }
    }

    /// What authentication reads.
    pub fn lookup(&self) -> Role<dyn Lookup> {
        self.role(|s| s.lookup())
    }

    /// What the Limiter counts with.
    pub fn counters(&self) -> Role<dyn Counters> {
        self.role(|s| s.counters())
    }

    /// What the API keeps.
    pub fn records(&self) -> Role<dyn Records> {
        self.role(|s| s.records())
    }

    /// Run one lifecycle call (`ping`) within the budget; its failure as the request's error.
    pub async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, GatewayError> {
        self.records().call(fut).await
    }
}

impl Deref for StoreHandle {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.store
    }
}

/// One role of the store (`R` is `dyn Lookup`, `dyn Counters` or `dyn Records`), with the
/// store's time budget: derefs to the role, so a call reads `records.call(records.get_user(id))`.
/// A caller holding a `Role<dyn Lookup>` can reach nothing else of the store.
pub struct Role<R: ?Sized> {
    store: Arc<dyn Store>,
    /// The role of `store` this handle lends.
    pick: for<'s> fn(&'s dyn Store) -> &'s R,
    budget: Duration,
    /// The store answers from this process's memory: no timer is armed.
    in_process: bool,
    /// For the store metrics and spans.
    kind: &'static str,
}

impl<R: ?Sized> Clone for Role<R> {
    fn clone(&self) -> Self {
        Role {
            store: self.store.clone(),
            pick: self.pick,
            budget: self.budget,
            in_process: self.in_process,
            kind: self.kind,
        }
    }
}

impl<R: ?Sized> Deref for Role<R> {
    type Target = R;

    fn deref(&self) -> &R {
        (self.pick)(&*self.store)
    }
}

impl<R: ?Sized> Role<R> {
    /// Run one store call within the budget; its failure as the request's error (503).
    pub async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, GatewayError> {
        self.call_keep_error(fut).await.map_err(GatewayError::from)
    }

    /// As [`Role::call`], keeping the store's own error, for callers that act on `Conflict`
    /// (an email or key id already taken).
    pub async fn call_keep_error<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = if self.in_process {
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
        crate::telemetry::store_call(started, self.kind, ok);
        r
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
        let h = h.records();
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
