//! Shared state of a running gateway.
//!
//! [`Snapshot`] is everything derived from one load of the config file (routes, keys, upstream
//! clients); it is swapped atomically as a whole, so a request sees one consistent config from
//! start to end. [`AppState`] holds what outlives a config: the store, caches, the limiter, the
//! password hasher, and the drain flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::admin::AdminSecrets;
use crate::auth::api_key::KeyCache;
use crate::auth::jwt::JwtKeys;
use crate::auth::mint::{MintKey, Minter, Minters};
use crate::auth::password::PasswordHasher;
use crate::auth::Credentials;
use crate::config::Config;
use crate::limiter::{LimitPolicy, Limiter};
use crate::proxy::{RequestContext, UpstreamClient};
use crate::ratelimit::FailurePolicy;
use crate::route::MintSigning;
use crate::store::{Counters, Invalidation, Lookup, Records, Role, Store, StoreHandle};
use jsonwebtoken::Algorithm;

/// What one load of the config file turns into.
pub struct Snapshot {
    pub config: Config,
    pub jwt: JwtKeys,
    pub admin: AdminSecrets,
    /// One pooled client per upstream, in `config.upstreams` order.
    pub clients: Vec<UpstreamClient>,
    /// Token minters of the upstreams that take minted tokens, in the same order.
    pub minters: Minters,
}

impl Snapshot {
    pub fn new(config: Config) -> Result<Self, String> {
        let clients = config
            .upstreams
            .iter()
            .map(|u| UpstreamClient::new(u.clone()))
            .collect::<Result<_, _>>()?;
        let minters = config
            .upstreams
            .iter()
            .map(|u| {
                let m = u.mint.as_ref()?;
                let key = match &m.signing {
                    MintSigning::Secret(s) => MintKey::Secret(s.expose().as_bytes()),
                    MintSigning::GatewayKey => match &config.auth.signing.key {
                        Some(pair) if config.auth.signing.algorithm != Algorithm::HS256 => {
                            MintKey::Pair(pair)
                        }
                        // Validation refuses this; a data directory that kept its HS256
                        // secret can still come here.
                        _ => {
                            tracing::warn!(upstream = %u.name, "mint_signing gateway_key without an EdDSA/ES256 key: no token minted");
                            return None;
                        }
                    },
                };
                match Minter::new(key, m.ttl_secs, m.claims.clone()) {
                    Ok(minter) => Some(Arc::new(minter)),
                    Err(e) => {
                        tracing::warn!(upstream = %u.name, error = %e, "no token minted");
                        None
                    }
                }
            })
            .collect();
        Ok(Snapshot {
            minters,
            jwt: JwtKeys::new(&config.auth),
            admin: AdminSecrets::new(&config.auth.admin_secrets),
            clients,
            config,
        })
    }

    /// How the limiter decides this route's requests: leases, and what it does when the store
    /// fails.
    pub fn limit_policy(&self, route_policy: Option<FailurePolicy>) -> LimitPolicy {
        let limits = &self.config.limits;
        LimitPolicy {
            on_failure: route_policy.unwrap_or(limits.failure_policy),
            replicas: limits.replicas,
            lease: limits.lease,
        }
    }
}

/// What one request runs under: the shared state, the config it started with (one snapshot
/// from start to end), and what step 1 learnt about the request. Made once per request in the
/// pipeline; every step and every gateway-served handler borrows it.
#[derive(Clone, Copy)]
pub struct RequestScope<'r> {
    pub state: &'r Arc<AppState>,
    pub snap: &'r Snapshot,
    pub ctx: &'r RequestContext,
}

pub struct AppState {
    snapshot: ArcSwap<Snapshot>,
    /// The store's lifecycle: readiness (`/readyz`), invalidations, shutdown.
    pub store: StoreHandle,
    /// What authentication reads (behind `keys`).
    pub lookup: Role<dyn Lookup>,
    /// What the API keeps: tenants, keys, users, sessions, audit.
    pub records: Role<dyn Records>,
    /// The counts the usage reports read (the Limiter holds its own handle for deciding).
    pub counters: Role<dyn Counters>,
    pub keys: KeyCache,
    pub passwords: PasswordHasher,
    pub limiter: Arc<Limiter>,
    /// OTLP trace export, when configured.
    pub tracing: Option<crate::telemetry::Tracing>,
    /// Set on SIGTERM: new requests get 503 `SHUTTING_DOWN`.
    draining: AtomicBool,
}

impl AppState {
    pub fn new(config: Config, store: Arc<dyn Store>) -> Result<Arc<Self>, String> {
        let keys = KeyCache::new(config.store.api_key_cache_ttl);
        let passwords = PasswordHasher::new(config.auth.password_hash_concurrency);
        let store = StoreHandle::new(store, config.store.command_timeout);
        let invalidations = store.invalidations();
        let tracing = match &config.tracing {
            Some(t) => Some(crate::telemetry::Tracing::start(t)?),
            None => None,
        };
        let state = Arc::new(AppState {
            tracing,
            snapshot: ArcSwap::from_pointee(Snapshot::new(config)?),
            limiter: Arc::new(Limiter::new(store.counters())),
            lookup: store.lookup(),
            records: store.records(),
            counters: store.counters(),
            store,
            keys,
            passwords,
            draining: AtomicBool::new(false),
        });
        if let Some(rx) = invalidations {
            tokio::spawn(apply_invalidations(rx, Arc::downgrade(&state)));
        }
        Ok(state)
    }

    /// The config in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// What authentication reads, under the config `snap`.
    pub fn credentials<'a>(&'a self, snap: &'a Snapshot) -> Credentials<'a> {
        Credentials {
            jwt: &snap.jwt,
            admin: &snap.admin,
            keys: &self.keys,
            lookup: &self.lookup,
            // How long cached credentials stay usable while the store cannot answer.
            outage_grace: snap.config.store.api_key_cache_ttl * 2,
        }
    }

    /// Swap in a new config (hot reload). Secrets generated for development carry over, so
    /// sessions and the printed admin secret survive a reload. Returns what needs a restart.
    pub fn reload(&self, mut new: Config) -> Result<Vec<String>, String> {
        let old = self.snapshot();
        let before = &old.config;
        if new.auth.admin_secret_generated && before.auth.admin_secret_generated {
            new.auth.admin_secrets = before.auth.admin_secrets.clone();
        }
        if new.auth.jwt_secret_generated && before.auth.jwt_secret_generated {
            new.auth.jwt_secret = before.auth.jwt_secret.clone();
        }
        // A generated signing key (or the generated secret start-up chose instead) carries
        // over, unless the reload names another algorithm.
        let (n, b) = (&new.auth.signing, &before.auth.signing);
        let b_generated = b.generated || before.auth.jwt_secret_generated && b.key.is_none();
        if n.generated && b_generated && (!n.named || n.algorithm == b.algorithm) {
            new.auth.signing = b.clone();
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
        let snap = Snapshot::new(new)?;
        self.snapshot.store(Arc::new(snap));
        Ok(restart)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Periodic housekeeping: batched `last_used_at` writes and the fallback limiter sweep.
    pub async fn housekeeping(&self) {
        let drained = self.keys.drain_touches();
        if !drained.is_empty() {
            let touches: Vec<(String, u64)> =
                drained.iter().map(|(h, at, _)| (h.clone(), *at)).collect();
            if let Err(e) = self
                .records
                .call(self.records.touch_api_keys(&touches))
                .await
            {
                tracing::debug!(error = %e, "last_used_at batch not written");
            }
            // Requests per key and day, counted on the day of the batch's last use.
            let uses: Vec<(String, u64, u64)> = drained
                .into_iter()
                .map(|(h, at, n)| (h, at / 86_400, n))
                .collect();
            if let Err(e) = self
                .records
                .call(self.records.record_key_usage(&uses))
                .await
            {
                tracing::debug!(error = %e, "key usage batch not written");
            }
        }
        self.limiter.sweep();
        self.limiter.return_leases(false).await;
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
