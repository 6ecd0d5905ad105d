//! The persistent state of the gateway. A store is handed out by the roles its callers play,
//! so each caller takes only what it uses:
//!
//! ```text
//! Lookup     what authentication reads on every request: keys, tenants, revocation state
//! Counters   the Limiter's contract: request limits, token debits, leases, usage counts
//! Records    what the API writes and reads: tenants, keys, users, sessions, audit, export
//! Store      hands those out, plus its lifecycle: readiness, invalidation, bulk load, shutdown
//! ```
//!
//! Four stores implement them: the embedded store (the default: one durable redb file, one
//! process), the Redis store (shared by replicas), the PostgreSQL store (ARES's own database:
//! users, tenants and keys are ARES's rows; shared by replicas) and the memory store (lost on
//! exit: tests and `demo`). The embedded and memory stores count in this process with one implementation,
//! [`local::LocalCounters`]. Nothing secret is stored in plaintext: API keys and refresh tokens
//! by SHA-256, passwords as argon2id PHC strings.
//!
//! # What a new store implements
//!
//! 1. [`Lookup`], [`Records`] and [`Counters`] (or hand out a [`local::LocalCounters`] for a
//!    store that lives in the gateway's process), and [`Store`]: `ping`, `kind`, the three role
//!    getters, and `invalidations` when several replicas share it (a change made by one must
//!    reach the others' caches within a second).
//! 2. Every method may fail with `StoreError::Unavailable` and never panics on what the backend
//!    returns; `in_process` is true only when no call can block or hang (calls then skip the
//!    time budget).
//! 3. `suite::run_all` passes against it (one suite per role), and it is a variant of
//!    `config::StoreBackend` built in `server::gateway::build_store`.
//!
//! ```text
//! model.rs     the records and values (Tenant, ApiKeyRecord, User, RefreshRecord, ...)
//! scope.rs     rate-limit scope names (t:, u:, k:, ...)
//! handle.rs    StoreHandle and Role: every call within the command budget, counted
//! local.rs     LocalCounters: limits and revocations in process memory
//! records.rs   export lines and their idempotent load
//! suite.rs     the conformance suite, per role
//! memory.rs, embedded/, redis/, postgres/   the stores
//! ```

pub mod embedded;
pub mod handle;
pub mod local;
pub mod memory;
pub mod model;
pub mod postgres;
pub mod records;
pub mod redis;
pub mod scope;
#[doc(hidden)]
pub mod suite;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::ratelimit::{Decision, Usage, Window};

pub use self::redis::RedisStore;
pub use embedded::EmbeddedStore;
pub use handle::{Role, StoreHandle};
pub use memory::MemoryStore;
pub use model::*;
pub use postgres::PostgresStore;

/// What authentication reads on every request (behind its caches): keys, tenants, and whether
/// an access token was revoked.
#[async_trait]
pub trait Lookup: Send + Sync + 'static {
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError>;
    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Whether `token` was revoked: by its `jti`, or by its user's "log out everywhere".
    async fn is_token_revoked(&self, token: TokenRef<'_>) -> Result<bool, StoreError>;
}

/// The Limiter's contract: requests admitted per scope and window, token budgets, leases of
/// capacity, and the counts behind usage reports. A shared store decides each call atomically,
/// so replicas sharing it never admit more than a limit.
#[async_trait]
pub trait Counters: Send + Sync + 'static {
    /// One request with a user's access token: `Revoked` when it was revoked (its `jti`, or
    /// its user logged out everywhere since it was issued), else `rate_limit` on
    /// `scope::user(subject)`. A revoked token counts against nothing. A shared store answers
    /// both in one round trip.
    async fn admit_token(
        &self,
        token: TokenRef<'_>,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Admission, StoreError>;

    /// `rate_limit` for a lease (`Take`): how many requests were granted with the decision
    /// (0 when refused, or when `want` is 0: then only the return is made). The default, for
    /// stores in the gateway's own process, decides one request at a time and returns nothing:
    /// its limiter is already local, so leasing from it would gain nothing.
    async fn lease(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
        take: Take,
    ) -> Result<(Decision, u64), StoreError> {
        if take.want == 0 {
            return Ok((self.peek_rate_limit(scope, &[], now_ms).await?, 0));
        }
        let d = self.rate_limit(scope, limits, now_ms).await?;
        Ok((d, u64::from(d.allowed())))
    }

    /// `admit_token` for a lease, as [`Counters::lease`] is `rate_limit`'s.
    async fn lease_token(
        &self,
        token: TokenRef<'_>,
        limits: &[(Window, u64)],
        now_ms: u64,
        take: Take,
    ) -> Result<(Admission, u64), StoreError> {
        if take.want == 0 {
            let scope = scope::user(token.subject);
            let (d, _) = self.lease(&scope, limits, now_ms, take).await?;
            return Ok((Admission::Decided(d), 0));
        }
        let admission = self.admit_token(token, limits, now_ms).await?;
        let granted = match admission {
            Admission::Revoked => 0,
            Admission::Decided(d) => u64::from(d.allowed()),
        };
        Ok((admission, granted))
    }

    /// Admit one request of `scope` if every window allows it; see `ratelimit`.
    async fn rate_limit(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Decision, StoreError>;
    /// What `rate_limit` would decide, without counting.
    async fn peek_rate_limit(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Decision, StoreError>;
    /// Requests counted for `scope` today and this month (UTC).
    async fn usage(&self, scope: &str, now_ms: u64) -> Result<Usage, StoreError>;
    /// Debit `n` tokens from `scope` this month; returns the month's total.
    async fn add_tokens(&self, scope: &str, n: u64, now_ms: u64) -> Result<u64, StoreError>;
    async fn tokens_used(&self, scope: &str, now_ms: u64) -> Result<u64, StoreError>;

    /// Set a calendar count (day, month or tokens of `period`) to at least `count`: loading an
    /// export, where loading it twice must count nothing twice.
    async fn restore_counter(
        &self,
        scope: &str,
        window: Window,
        period: u64,
        count: u64,
    ) -> Result<(), StoreError>;
}

/// The records the gateway's own API keeps: tenants, keys and their usage, users, refresh
/// tokens and revocations, the audit trail, and the export of all of it.
#[async_trait]
pub trait Records: Send + Sync + 'static {
    /// Create or replace a tenant.
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Delete a tenant and every key it has; returns the deleted keys' hashes, or `None` when
    /// there was no such tenant.
    async fn delete_tenant(&self, id: &str) -> Result<Option<Vec<String>>, StoreError>;

    /// Store a new key; `Conflict` when its hash exists.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Delete a key of a tenant; returns it, or `None` when the tenant has no such key.
    async fn delete_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Replace a key's record (same hash, same tenant and id): its name, scopes, expiry or
    /// state changed. `false` when the key no longer exists (nothing is created).
    async fn update_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError>;
    /// Add `(key hash, day (unix days), requests)` to each key's daily counts (kept 31 days).
    async fn record_key_usage(&self, uses: &[(String, u64, u64)]) -> Result<(), StoreError>;
    /// A key's requests per day from `from_day` on, as (day, requests), days without any left out.
    async fn key_usage(&self, key_hash: &str, from_day: u64)
        -> Result<Vec<(u64, u64)>, StoreError>;
    /// Record `last_used_at` for a batch of `(key hash, time)`; unknown hashes are skipped.
    async fn touch_api_keys(&self, used: &[(String, u64)]) -> Result<(), StoreError>;

    /// Create a user; `Conflict` when the email is taken.
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;
    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError>;
    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError>;
    /// Replace a user's record (same id and email): `false` when the user is gone.
    async fn update_user(&self, user: &User) -> Result<bool, StoreError>;
    /// Delete a user and its email; returns the record, or `None` when there was none.
    async fn delete_user(&self, id: &str) -> Result<Option<User>, StoreError>;
    /// Users by email, from the first after `after` (an email), at most `limit`, only those
    /// whose email starts with `prefix`.
    async fn list_users(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError>;

    async fn put_refresh_token(&self, record: &RefreshRecord) -> Result<(), StoreError>;
    /// The record, unless it expired or its family was revoked.
    async fn get_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError>;
    /// Mark a token rotated at `at` with its sealed `successor` unless it already was (atomic:
    /// of concurrent calls exactly one sees `None`); returns the earlier rotation.
    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        at: u64,
        successor: Option<&str>,
    ) -> Result<Option<Rotation>, StoreError>;
    /// Kill every token of a family (logout, reuse detection).
    async fn revoke_refresh_family(&self, family_id: &str, until: u64) -> Result<(), StoreError>;

    /// Refuse the access token id `jti` of user `subject` until `until` (unix seconds).
    async fn revoke_jti(&self, subject: &str, jti: &str, until: u64) -> Result<(), StoreError>;
    /// Log user `subject` out everywhere: refuse every access token issued (`iat`) and every
    /// refresh token stored at or before `through` (unix seconds); remembered until `until`.
    async fn revoke_user_tokens(
        &self,
        subject: &str,
        through: u64,
        until: u64,
    ) -> Result<(), StoreError>;

    /// Append to the audit trail; entries older than `keep_ms` are dropped along the way.
    async fn append_audit(&self, entry: &AuditEntry, keep_ms: u64) -> Result<(), StoreError>;
    /// Audit entries after the cursor `after` (an entry id; `None`: from the oldest kept), in
    /// order, at most `limit`, only those whose target starts with `target`.
    async fn list_audit(
        &self,
        after: Option<&str>,
        target: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Send every record to `sink` (`ares-gateway export`); stops early when the reader goes.
    async fn export(&self, sink: &records::Sink) -> Result<(), StoreError>;

    /// End the session ARES keeps for one of its refresh tokens (by SHA-256 hex of the token),
    /// returning its user: once only, so an ARES refresh token starts at most one gateway
    /// session, and a gateway logout ends it at ARES too. Only a store on ARES's database has
    /// ARES's sessions: the others know none.
    async fn take_upstream_session(&self, _token_hash: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// Give a new tenant the agents of ARES's templates for `product_type` (what ARES's own
    /// `provision-client` does); the agents' names. Only a store on ARES's database has ARES's
    /// agent tables: the others give none.
    async fn clone_agent_templates(
        &self,
        _tenant_id: &str,
        _product_type: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
}

/// A store: the roles above, and its lifecycle. Every method may fail with
/// `StoreError::Unavailable`; none panics on what the store returns.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// What authentication reads.
    fn lookup(&self) -> &dyn Lookup;
    /// What the Limiter counts with.
    fn counters(&self) -> &dyn Counters;
    /// What the API keeps.
    fn records(&self) -> &dyn Records;

    /// Cheap liveness probe for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Loading many records (`ares-gateway import`): while on, writes need not reach the disk
    /// one by one; turning it off makes everything written so far durable at once.
    async fn bulk_load(&self, _on: bool) -> Result<(), StoreError> {
        Ok(())
    }

    /// Write down what is held back for batching (counters); called when the gateway stops.
    async fn shutdown(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// `memory`, `embedded`, `redis` or `postgres`.
    fn kind(&self) -> &'static str;

    /// Answers from this process's memory, never blocking or hanging: calls need no time
    /// budget.
    fn in_process(&self) -> bool {
        false
    }

    /// Changes made by other replicas, for stores shared between replicas.
    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        None
    }
}
