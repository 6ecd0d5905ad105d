//! Shared state of a running gateway.
//!
//! [`Runtime`] is everything derived from the config file (routes, keys, upstream clients); it is
//! swapped atomically as a whole, so a request sees one consistent config from start to end.
//! [`AppState`] holds what outlives a config: the store, caches, the password hasher, and the
//! drain flag.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::auth::admin::AdminSecrets;
use crate::auth::api_key::KeyCache;
use crate::auth::jwt::JwtKeys;
use crate::auth::password::PasswordHasher;
use crate::auth::Claims;
use crate::config::{Config, FailurePolicy};
use crate::error::{GatewayError, StoreError};
use crate::proxy::UpstreamClient;
use crate::ratelimit::{now_ms, Decision, LocalLimiter, Plan};
use crate::store::{scope, Admission, Invalidation, Store};

/// What one config file turns into.
pub struct Runtime {
    pub config: Config,
    pub jwt: JwtKeys,
    pub admin: AdminSecrets,
    /// One pooled client per upstream, in `config.upstreams` order.
    pub clients: Vec<UpstreamClient>,
}

impl Runtime {
    pub fn new(config: Config) -> Result<Self, String> {
        let clients = config
            .upstreams
            .iter()
            .map(|u| UpstreamClient::new(u.clone()))
            .collect::<Result<_, _>>()?;
        Ok(Runtime {
            jwt: JwtKeys::new(&config.auth),
            admin: AdminSecrets::new(&config.auth.admin_secrets),
            clients,
            config,
        })
    }
}

pub struct AppState {
    runtime: ArcSwap<Runtime>,
    pub store: Arc<dyn Store>,
    pub keys: KeyCache,
    pub passwords: PasswordHasher,
    /// Limits in force while the shared store is unreachable (`local` policy).
    fallback_limiter: LocalLimiter,
    /// Set on SIGTERM: new requests get 503 `SHUTTING_DOWN`.
    draining: AtomicBool,
    command_timeout: Duration,
}

impl AppState {
    pub fn new(config: Config, store: Arc<dyn Store>) -> Result<Arc<Self>, String> {
        let keys = KeyCache::new(config.store.api_key_cache_ttl);
        let passwords = PasswordHasher::new(config.auth.password_hash_concurrency);
        let command_timeout = config.store.command_timeout;
        let invalidations = store.invalidations();
        let state = Arc::new(AppState {
            runtime: ArcSwap::from_pointee(Runtime::new(config)?),
            store,
            keys,
            passwords,
            fallback_limiter: LocalLimiter::new(),
            draining: AtomicBool::new(false),
            command_timeout,
        });
        if let Some(rx) = invalidations {
            tokio::spawn(apply_invalidations(rx, Arc::downgrade(&state)));
        }
        Ok(state)
    }

    /// The config in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Swap in a new config (hot reload). Secrets generated for development carry over, so
    /// sessions and the printed admin secret survive a reload. Returns what needs a restart.
    pub fn reload(&self, mut new: Config) -> Result<Vec<String>, String> {
        let old = self.runtime();
        let before = &old.config;
        if new.auth.admin_secret_generated && before.auth.admin_secret_generated {
            new.auth.admin_secrets = before.auth.admin_secrets.clone();
        }
        if new.auth.jwt_secret_generated && before.auth.jwt_secret_generated {
            new.auth.jwt_secret = before.auth.jwt_secret.clone();
        }
        let mut restart = Vec::new();
        let (a, b) = (&before.server, &new.server);
        if a.listen != b.listen || a.metrics_listen != b.metrics_listen {
            restart.push("listener addresses".to_string());
        }
        if a.tls != b.tls {
            restart.push("TLS file paths".to_string());
        }
        if a.max_connections != b.max_connections
            || a.header_read_timeout != b.header_read_timeout
            || a.max_header_bytes != b.max_header_bytes
        {
            restart.push("connection limits".to_string());
        }
        if before.store.backend != new.store.backend
            || before.store.key_prefix != new.store.key_prefix
        {
            restart.push("the store".to_string());
        }
        let rt = Runtime::new(new)?;
        self.runtime.store(Arc::new(rt));
        Ok(restart)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Run one store call within the command budget; a hanging store is an unavailable one.
    pub async fn store_call<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, GatewayError> {
        self.store_raw(fut).await.map_err(GatewayError::from)
    }

    /// As `store_call`, keeping the store's own error (for callers that act on `Conflict`).
    pub async fn store_raw<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let r = if self.store.in_process() {
            // No timer to arm for a store that answers from memory.
            fut.await
        } else {
            match tokio::time::timeout(self.command_timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable("store command timed out".into())),
            }
        };
        let ok = !matches!(r, Err(StoreError::Unavailable(_)));
        crate::metrics::get().store(started.elapsed(), ok);
        r
    }

    /// How long cached credentials stay usable while the store cannot answer.
    pub fn outage_grace(&self) -> Duration {
        self.runtime().config.store.api_key_cache_ttl * 2
    }

    /// Admit one request of `scope` under `plan`, by the store; when the store fails, by the
    /// given failure policy. `None`: nothing to limit (or limits open during an outage).
    pub async fn rate_limit(
        &self,
        scope: &str,
        plan: &Plan,
        policy: FailurePolicy,
    ) -> Result<Option<Decision>, GatewayError> {
        let limits = plan.windows();
        if limits.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let decided = self
            .store_call(self.store.rate_limit(scope, &limits, now))
            .await;
        let kind = crate::metrics::scope_kind(scope);
        self.limited(kind, || scope.into(), plan, policy, now, decided)
    }

    /// As `rate_limit` for a user's access token, with its revocation check in the same store
    /// round trip: a revoked token is `InvalidToken` and counts against nothing.
    pub async fn admit_user(
        &self,
        claims: &Claims,
        plan: &Plan,
        policy: FailurePolicy,
    ) -> Result<Option<Decision>, GatewayError> {
        let limits = plan.windows();
        if limits.is_empty() && claims.jti.is_none() {
            return Ok(None);
        }
        let now = now_ms();
        let admitted = self
            .store_call(
                self.store
                    .admit_token(&claims.sub, claims.jti.as_deref(), &limits, now),
            )
            .await;
        let decided = match admitted {
            Ok(Admission::Revoked) => return Err(crate::auth::revoked()),
            Ok(Admission::Decided(_)) if limits.is_empty() => return Ok(None),
            Ok(Admission::Decided(d)) => Ok(d),
            Err(e) => {
                // As `auth::check_revoked` during an outage; the limits follow the policy.
                tracing::warn!(error = %e, "revocation check skipped: store unavailable");
                if limits.is_empty() {
                    return Ok(None);
                }
                Err(e)
            }
        };
        let kind = crate::metrics::scope_kind(scope::USER);
        let scope = || scope::user(&claims.sub).into();
        self.limited(kind, scope, plan, policy, now, decided)
    }

    /// A store's rate-limit answer, counted in the metrics (by the scope's `kind`); a failed
    /// store by `policy`. The scope's name is needed, and made, only for the local fallback.
    fn limited<'a>(
        &self,
        kind: &'static str,
        scope: impl FnOnce() -> std::borrow::Cow<'a, str>,
        plan: &Plan,
        policy: FailurePolicy,
        now: u64,
        decided: Result<Decision, GatewayError>,
    ) -> Result<Option<Decision>, GatewayError> {
        let m = crate::metrics::get();
        match decided {
            Ok(d) => {
                match d.refused_by {
                    None => m.ratelimit(kind, "-", "allowed"),
                    Some(w) => m.ratelimit(kind, w.name(), "refused"),
                }
                Ok(Some(d))
            }
            Err(e) => {
                m.ratelimit(kind, "-", "store_failed");
                let cfg = &self.runtime().config.limits;
                tracing::warn!(error = %e, policy = ?policy, "rate limiter falling back");
                match policy {
                    FailurePolicy::Open => Ok(None),
                    FailurePolicy::Closed => Err(e),
                    FailurePolicy::Local => {
                        let local = plan.divided(cfg.replicas).windows();
                        Ok(Some(self.fallback_limiter.check(&scope(), &local, now)))
                    }
                }
            }
        }
    }

    /// Periodic housekeeping: batched `last_used_at` writes and the fallback limiter sweep.
    pub async fn housekeeping(&self) {
        let touches = self.keys.drain_touches();
        if !touches.is_empty() {
            if let Err(e) = self.store_call(self.store.touch_api_keys(&touches)).await {
                tracing::debug!(error = %e, "last_used_at batch not written");
            }
        }
        self.fallback_limiter.sweep(now_ms());
    }
}

/// Apply other replicas' changes to this replica's caches.
async fn apply_invalidations(
    mut rx: tokio::sync::broadcast::Receiver<Invalidation>,
    state: std::sync::Weak<AppState>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let msg = rx.recv().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        match msg {
            Ok(Invalidation::Key(hash)) => state.keys.invalidate_key(&hash),
            Ok(Invalidation::Tenant(id)) => state.keys.invalidate_tenant(&id),
            Ok(Invalidation::All) | Err(RecvError::Lagged(_)) => state.keys.clear(),
            Err(RecvError::Closed) => return,
        }
    }
}
