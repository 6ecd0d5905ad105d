//! The persistent state of the gateway, behind one trait with three implementations: the
//! embedded store (the default: one durable file, one process), the Redis store (shared by
//! replicas) and the memory store (lost on exit: tests and `demo`). Nothing secret is stored in
//! plaintext: API keys and refresh tokens by SHA-256, passwords as argon2id PHC strings.

pub mod embedded;
pub mod handle;
pub mod memory;
pub mod records;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::ratelimit::{Decision, Plan, Usage, Window};

pub use self::redis::RedisStore;
pub use embedded::EmbeddedStore;
pub use handle::StoreHandle;
pub use memory::MemoryStore;

/// A change another replica made: drop the cached copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A key (by hash) was created, imported or deleted.
    Key(String),
    /// A tenant changed or was deleted.
    Tenant(String),
    /// Messages may have been missed: drop every cached key and tenant.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Suspended,
}

/// Per-tenant overrides of its tier's request limits (`None` = the tier's value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    pub requests_per_minute: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub requests_per_month: Option<u64>,
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        self == &LimitOverrides::default()
    }

    /// The plan in force: the tier's, with these overrides on top.
    pub fn apply(&self, tier: &Plan) -> Plan {
        let mut p = tier.clone();
        if let Some(n) = self.requests_per_minute {
            p.set(Window::Minute, Some(n));
        }
        if let Some(n) = self.requests_per_day {
            p.set(Window::Day, Some(n));
        }
        if let Some(n) = self.requests_per_month {
            p.set(Window::Month, Some(n));
        }
        p
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub status: TenantStatus,
    pub created_at: u64,
    #[serde(default)]
    pub limits: LimitOverrides,
}

/// A stored API key. Holds the hash, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant_id: String,
    /// SHA-256 (hex) of the whole key: the lookup index.
    pub key_hash: String,
    /// The first 13 characters, for display.
    pub key_prefix: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub is_active: bool,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub last_used_at: Option<u64>,
    /// Imported from ARES: no checksum to test.
    #[serde(default)]
    pub imported: bool,
    /// The key's own request limits, on top of its tenant's (none: the tenant's alone).
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub limits: LimitOverrides,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    /// Lower-cased, trimmed: the unique index.
    pub email: String,
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub created_at: u64,
    /// Set by an admin: logins and refreshes are refused (records before it read false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A stored refresh token, by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub token_hash: String,
    pub user_id: String,
    /// Every token descended from one login; reuse of a rotated member revokes them all.
    pub family_id: String,
    /// Unix seconds; a "log out everywhere" at or after it ends this token. Records written
    /// before this field existed read 0 (issued before any such logout).
    #[serde(default)]
    pub issued_at: u64,
    pub expires_at: u64,
    /// Set when rotation replaced this token.
    pub rotated_at: Option<u64>,
    /// The token that replaced it, sealed with a key only a holder of this token can derive
    /// (`auth::successor`): concurrent refreshes of one token all receive that one successor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
}

/// A refresh token's rotation, as the first rotation recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub at: u64,
    /// The sealed successor (absent for rotations recorded before successors were kept).
    pub successor: Option<String>,
}

/// The first rotation of a record wins: record it (with its successor) unless one is there;
/// returns the one that was (the stores that keep records whole use this).
pub(crate) fn rotate(r: &mut RefreshRecord, at: u64, successor: Option<&str>) -> Option<Rotation> {
    match r.rotated_at {
        Some(prev) => Some(Rotation {
            at: prev,
            successor: r.successor.clone(),
        }),
        None => {
            r.rotated_at = Some(at);
            r.successor = successor.map(str::to_string);
            None
        }
    }
}

/// Days of per-key request counts a store keeps.
pub const KEY_USAGE_DAYS: u64 = 31;

/// One line of the audit trail: an admin action or a security event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// `<unix ms>-<sequence>`: the order, and the paging cursor.
    pub id: String,
    pub at_ms: u64,
    /// `admin:<secret index>`, `user:<id>` or `gateway`.
    pub actor: String,
    /// `tenant.create`, `api_key.rotate`, `user.disable`, `login.locked`, ...
    pub action: String,
    /// `tenant:<id>`, `api_key:<tenant>/<key>`, `user:<id>`, `account:<email hash>`.
    pub target: String,
    pub outcome: String,
}

impl AuditEntry {
    /// A new entry at `at_ms`; `seq` tells apart entries of the same millisecond.
    pub fn new(
        at_ms: u64,
        seq: u64,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
    ) -> Self {
        AuditEntry {
            id: format!("{at_ms:013}-{seq:06}"),
            at_ms,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
        }
    }
}

/// An access token as the revocation checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRef<'a> {
    /// The user (`sub`).
    pub subject: &'a str,
    /// Its id: what a logout revokes.
    pub jti: Option<&'a str>,
    /// `iat`: a "log out everywhere" revokes every token of the user issued at or before it.
    pub issued_at: u64,
}

/// One ask of a shared limiter: take up to `want` requests of a scope at once (a lease; 1: the
/// request alone; 0: none), after returning `back` unused requests of an ended lease to the
/// scope's GCRA windows and `back_calendar` to its calendar windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Take {
    pub want: u64,
    pub back: u64,
    pub back_calendar: u64,
}

impl Take {
    /// The request alone.
    pub const ONE: Take = Take {
        want: 1,
        back: 0,
        back_calendar: 0,
    };
}

/// What the store keeps. Every method may fail with `StoreError::Unavailable`; none panics on
/// what the store returns.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap liveness probe for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Create or replace a tenant.
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Delete a tenant and every key it has; returns the deleted keys' hashes, or `None` when
    /// there was no such tenant.
    async fn delete_tenant(&self, id: &str) -> Result<Option<Vec<String>>, StoreError>;

    /// Store a new key; `Conflict` when its hash exists.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
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
    /// Whether `token` was revoked: by its `jti`, or by its user's "log out everywhere".
    async fn is_token_revoked(&self, token: TokenRef<'_>) -> Result<bool, StoreError>;

    /// One request with a user's access token: `Revoked` when it was revoked (its `jti`, or
    /// its user logged out everywhere since it was issued), else `rate_limit` on
    /// `scope::user(subject)`. A revoked token counts against nothing. A shared store answers
    /// both in one round trip.
    async fn admit_token(
        &self,
        token: TokenRef<'_>,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Admission, StoreError> {
        if self.is_token_revoked(token).await? {
            return Ok(Admission::Revoked);
        }
        self.rate_limit(&scope::user(token.subject), limits, now_ms)
            .await
            .map(Admission::Decided)
    }

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

    /// `admit_token` for a lease, as [`Store::lease`] is `rate_limit`'s.
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

    /// Set a calendar count (day, month or tokens of `period`) to at least `count`: loading an
    /// export, where loading it twice must count nothing twice.
    async fn restore_counter(
        &self,
        scope: &str,
        window: Window,
        period: u64,
        count: u64,
    ) -> Result<(), StoreError>;

    /// Send every record to `sink` (`ares-gateway export`); stops early when the reader goes.
    async fn export(&self, sink: &records::Sink) -> Result<(), StoreError>;

    /// Loading many records (`ares-gateway import`): while on, writes need not reach the disk
    /// one by one; turning it off makes everything written so far durable at once.
    async fn bulk_load(&self, _on: bool) -> Result<(), StoreError> {
        Ok(())
    }

    /// Write down what is held back for batching (counters); called when the gateway stops.
    async fn shutdown(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// `memory`, `embedded` or `redis`.
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

/// "Log out everywhere" in process memory (the memory store's, and the embedded store's mirror
/// of its file): user id -> (tokens issued at or before this are refused, until when).
#[derive(Debug, Default)]
pub struct UserCutoffs {
    map: crate::util::FastMap<String, (u64, u64)>,
    /// Set once any user has logged out everywhere: until then the request path skips the map.
    any: std::sync::atomic::AtomicBool,
}

impl UserCutoffs {
    /// Move user `subject`'s line to `through` (never back), kept until `until`.
    pub fn set(&self, subject: &str, through: u64, until: u64) {
        let mut e = self.map.entry(subject.to_string()).or_insert((0, 0));
        e.0 = e.0.max(through);
        e.1 = e.1.max(until);
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a token of `subject` issued at `issued_at` falls before the user's line.
    pub fn revokes(&self, subject: &str, issued_at: u64, now: u64) -> bool {
        self.any.load(std::sync::atomic::Ordering::Acquire)
            && self
                .map
                .get(subject)
                .is_some_and(|c| issued_at <= c.0 && now < c.1)
    }

    pub fn sweep(&self, now: u64) {
        self.map.retain(|_, c| c.1 > now);
    }

    /// Every live line, as (user id, through, until).
    pub fn entries(&self) -> Vec<(String, u64, u64)> {
        self.map
            .iter()
            .map(|e| (e.key().clone(), e.value().0, e.value().1))
            .collect()
    }
}

/// The answer to `Store::admit_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The token was revoked (logout); nothing was counted.
    Revoked,
    Decided(Decision),
}

/// Rate-limit scope names, one place so every store and the usage endpoint agree: a kind prefix
/// and an id (`t:ten_1`). Built without `format!`: the tenant and user scopes are built on every
/// request.
pub mod scope {
    fn join(parts: &[&str]) -> String {
        let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            s.push_str(p);
        }
        s
    }

    pub fn tenant(id: &str) -> String {
        join(&["t:", id])
    }
    /// The prefix of user scopes.
    pub const USER: &str = "u:";

    pub fn user(id: &str) -> String {
        join(&[USER, id])
    }
    /// An API key's own limits, by key id.
    pub fn api_key(id: &str) -> String {
        join(&["k:", id])
    }
    pub fn auth_ip(ip: &std::net::IpAddr) -> String {
        format!("ip:{ip}")
    }
    pub fn login_account_ip(email_hash: &str, ip: &std::net::IpAddr) -> String {
        format!("la:{email_hash}:{ip}")
    }
    /// Refused API keys from one client address.
    pub fn key_failures_ip(ip: &std::net::IpAddr) -> String {
        format!("kf:{ip}")
    }
    pub fn login_account(email_hash: &str) -> String {
        join(&["lf:", email_hash])
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn names() {
            assert_eq!(super::tenant("ten_1"), "t:ten_1");
            assert_eq!(super::user("usr_9"), "u:usr_9");
            assert_eq!(super::login_account("ab12"), "lf:ab12");
            let ip = std::net::IpAddr::from([10, 0, 0, 1]);
            assert_eq!(super::auth_ip(&ip), "ip:10.0.0.1");
            assert_eq!(super::login_account_ip("ab12", &ip), "la:ab12:10.0.0.1");
        }
    }
}

#[doc(hidden)]
pub mod suite {
    //! The behaviour every `Store` must have; run against each implementation.
    use super::*;

    pub fn tenant(id: &str) -> Tenant {
        Tenant {
            id: id.into(),
            name: format!("tenant {id}"),
            tier: "free".into(),
            status: TenantStatus::Active,
            created_at: 1_700_000_000,
            limits: LimitOverrides::default(),
        }
    }

    pub fn key(id: &str, tenant: &str, hash: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            tenant_id: tenant.into(),
            key_hash: hash.into(),
            key_prefix: "ares_abcdefgh".into(),
            name: "k".into(),
            scopes: vec!["full".into()],
            is_active: true,
            created_at: 1_700_000_000,
            expires_at: None,
            last_used_at: None,
            imported: false,
            limits: Default::default(),
        }
    }

    pub async fn run_all(s: &dyn Store) {
        tenants_and_keys(s).await;
        users(s).await;
        refresh_and_revocation(s).await;
        logout_everywhere(s).await;
        managed_users(s).await;
        audit_trail(s).await;
        counters(s).await;
        restored_counters(s).await;
    }

    async fn audit_trail(s: &dyn Store) {
        let now = crate::util::now_ms();
        let keep = 3_600_000;
        let old = AuditEntry::new(
            now - 2 * keep,
            0,
            "admin:0",
            "tenant.create",
            "tenant:t_old",
            "ok",
        );
        s.append_audit(&old, keep).await.unwrap();
        for (i, target) in ["tenant:t_a", "user:usr_a", "tenant:t_b"]
            .iter()
            .enumerate()
        {
            let e = AuditEntry::new(now + i as u64, 0, "admin:1", "x.y", target, "ok");
            s.append_audit(&e, keep).await.unwrap();
        }
        let all = s.list_audit(None, "", 10).await.unwrap();
        let targets: Vec<&str> = all.iter().map(|e| e.target.as_str()).collect();
        // Past the retention: gone. The rest in order.
        assert_eq!(targets, ["tenant:t_a", "user:usr_a", "tenant:t_b"]);
        let page = s.list_audit(Some(&all[0].id), "", 1).await.unwrap();
        assert_eq!(page[0].target, "user:usr_a");
        let tenants = s.list_audit(None, "tenant:", 10).await.unwrap();
        assert_eq!(tenants.len(), 2);
    }

    async fn managed_users(s: &dyn Store) {
        let user = |id: &str, email: &str| User {
            id: id.into(),
            email: email.into(),
            name: "M".into(),
            password_hash: "$argon2id$m".into(),
            created_at: 3,
            disabled: false,
        };
        for (id, email) in [
            ("usr_m2", "m2@list.example"),
            ("usr_m1", "m1@list.example"),
            ("usr_x", "x@other.example"),
        ] {
            s.create_user(&user(id, email)).await.unwrap();
        }
        let emails = |v: Vec<User>| v.into_iter().map(|u| u.email).collect::<Vec<_>>();
        let page = s.list_users("m", None, 1).await.unwrap();
        assert_eq!(emails(page), ["m1@list.example"]);
        let page = s
            .list_users("m", Some("m1@list.example"), 10)
            .await
            .unwrap();
        assert_eq!(emails(page), ["m2@list.example"]);
        let page = s.list_users("x@", None, 10).await.unwrap();
        assert_eq!(emails(page), ["x@other.example"]);

        let mut off = user("usr_m1", "m1@list.example");
        off.disabled = true;
        assert!(s.update_user(&off).await.unwrap());
        assert!(s.get_user("usr_m1").await.unwrap().unwrap().disabled);
        // An update never moves a user to another email (the index would lie).
        assert!(!s
            .update_user(&user("usr_m1", "new@list.example"))
            .await
            .unwrap());
        assert!(!s
            .update_user(&user("usr_none", "none@list.example"))
            .await
            .unwrap());

        assert_eq!(
            s.delete_user("usr_m2").await.unwrap().unwrap().email,
            "m2@list.example"
        );
        assert!(s.delete_user("usr_m2").await.unwrap().is_none());
        assert!(s
            .get_user_by_email("m2@list.example")
            .await
            .unwrap()
            .is_none());
        // Its email is free again.
        s.create_user(&user("usr_m3", "m2@list.example"))
            .await
            .unwrap();
    }

    async fn logout_everywhere(s: &dyn Store) {
        let now = crate::util::unix_now();
        let refresh = |hash: &str, issued_at| RefreshRecord {
            token_hash: hash.into(),
            user_id: "usr_all".into(),
            family_id: format!("fam_{hash}"),
            issued_at,
            expires_at: now + 3600,
            rotated_at: None,
            successor: None,
        };
        s.put_refresh_token(&refresh("old_rt", now - 10))
            .await
            .unwrap();
        let ms = now * 1000;
        let admitted = |iat| async move {
            let t = token("usr_all", "any", iat);
            matches!(
                s.admit_token(t, &[(Window::Minute, 100)], ms)
                    .await
                    .unwrap(),
                Admission::Decided(_)
            )
        };
        assert!(admitted(now - 10).await);
        s.revoke_user_tokens("usr_all", now - 5, now + 600)
            .await
            .unwrap();
        // Issued at or before the logout: refused, with limits or without, and without a jti.
        assert!(!admitted(now - 10).await);
        assert!(!admitted(now - 5).await);
        let no_jti = TokenRef {
            subject: "usr_all",
            jti: None,
            issued_at: now - 6,
        };
        assert!(s.is_token_revoked(no_jti).await.unwrap());
        assert!(s.get_refresh_token("old_rt").await.unwrap().is_none());
        // Issued after it: live. Another user: untouched.
        assert!(admitted(now - 4).await);
        assert!(!s
            .is_token_revoked(token("usr_other", "x", now - 10))
            .await
            .unwrap());
        s.put_refresh_token(&refresh("new_rt", now - 4))
            .await
            .unwrap();
        assert!(s.get_refresh_token("new_rt").await.unwrap().is_some());
        // A later logout moves the line; an earlier one never moves it back.
        s.revoke_user_tokens("usr_all", now - 2, now + 600)
            .await
            .unwrap();
        s.revoke_user_tokens("usr_all", now - 8, now + 600)
            .await
            .unwrap();
        assert!(!admitted(now - 3).await);
        assert!(admitted(now - 1).await);
    }

    /// An access token of `subject` with id `jti`, issued at `iat`.
    pub fn token<'a>(subject: &'a str, jti: &'a str, iat: u64) -> TokenRef<'a> {
        TokenRef {
            subject,
            jti: Some(jti),
            issued_at: iat,
        }
    }

    /// One record of every kind, with ids of its own (`ten_f`, `usr_f`, ...).
    pub async fn fill(s: &dyn Store) {
        let now = crate::util::unix_now();
        s.put_tenant(&tenant("ten_f")).await.unwrap();
        s.create_api_key(&key("key_f", "ten_f", "hash_f"))
            .await
            .unwrap();
        let user = User {
            id: "usr_f".into(),
            email: "f@example.com".into(),
            name: "F".into(),
            password_hash: "$argon2id$f".into(),
            created_at: 2,
            disabled: false,
        };
        s.create_user(&user).await.unwrap();
        let r = RefreshRecord {
            token_hash: "rt_f".into(),
            user_id: "usr_f".into(),
            family_id: "fam_f".into(),
            issued_at: now,
            expires_at: now + 3600,
            rotated_at: None,
            successor: None,
        };
        s.put_refresh_token(&r).await.unwrap();
        s.mark_refresh_rotated("rt_f", now, Some("sealed"))
            .await
            .unwrap();
        s.revoke_refresh_family("fam_dead", now + 600)
            .await
            .unwrap();
        s.revoke_jti("usr_f", "jti_f", now + 600).await.unwrap();
        s.revoke_user_tokens("usr_gone", now - 100, now + 600)
            .await
            .unwrap();
        let ms = crate::util::now_ms();
        s.rate_limit(&scope::tenant("ten_f"), &[(Window::Day, 100)], ms)
            .await
            .unwrap();
        s.add_tokens(&scope::tenant("ten_f"), 77, ms).await.unwrap();
    }

    /// What [`fill`] wrote is all there.
    pub async fn check_filled(s: &dyn Store) {
        assert_eq!(s.get_tenant("ten_f").await.unwrap(), Some(tenant("ten_f")));
        assert_eq!(
            s.get_api_key("hash_f").await.unwrap(),
            Some(key("key_f", "ten_f", "hash_f"))
        );
        assert_eq!(s.list_api_keys("ten_f").await.unwrap().len(), 1);
        let u = s.get_user_by_email("f@example.com").await.unwrap().unwrap();
        assert_eq!(
            (u.id.as_str(), u.password_hash.as_str()),
            ("usr_f", "$argon2id$f")
        );
        let r = s.get_refresh_token("rt_f").await.unwrap().unwrap();
        assert!(r.rotated_at.is_some(), "rotation lost");
        assert!(s
            .mark_refresh_rotated("rt_f", 1, None)
            .await
            .unwrap()
            .is_some());
        let mut dead = r.clone();
        dead.token_hash = "rt_dead".into();
        dead.family_id = "fam_dead".into();
        s.put_refresh_token(&dead).await.unwrap();
        assert!(
            s.get_refresh_token("rt_dead").await.unwrap().is_none(),
            "family revocation lost"
        );
        assert!(
            s.is_token_revoked(token("usr_f", "jti_f", crate::util::unix_now()))
                .await
                .unwrap(),
            "logout lost"
        );
        assert!(
            s.is_token_revoked(token("usr_gone", "j", crate::util::unix_now() - 200))
                .await
                .unwrap(),
            "a logout everywhere was lost"
        );
        let ms = crate::util::now_ms();
        let usage = s.usage(&scope::tenant("ten_f"), ms).await.unwrap();
        assert_eq!((usage.day, usage.month), (1, 0));
        assert_eq!(
            s.tokens_used(&scope::tenant("ten_f"), ms).await.unwrap(),
            77
        );
    }

    /// Every record `s` exports, header excluded.
    pub async fn exported(s: &dyn Store) -> Vec<records::Record> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        // The sender goes with the export, so the reader ends when the export does.
        let export = async move { s.export(&tx).await };
        let (done, out) = tokio::join!(export, async {
            let mut out = Vec::new();
            while let Some(r) = rx.recv().await {
                out.push(r);
            }
            out
        });
        done.unwrap();
        out
    }

    async fn restored_counters(s: &dyn Store) {
        let ms = crate::util::now_ms();
        let (day, _) = Window::Day.calendar_period(ms);
        s.restore_counter("rc", Window::Day, day, 5).await.unwrap();
        // Loading the same count again counts nothing twice; a lower one lowers nothing.
        s.restore_counter("rc", Window::Day, day, 5).await.unwrap();
        s.restore_counter("rc", Window::Day, day, 2).await.unwrap();
        assert_eq!(s.usage("rc", ms).await.unwrap().day, 5);
        let d = s.rate_limit("rc", &[(Window::Day, 6)], ms).await.unwrap();
        assert!(d.allowed());
        assert!(!s
            .rate_limit("rc", &[(Window::Day, 6)], ms)
            .await
            .unwrap()
            .allowed());
    }

    async fn tenants_and_keys(s: &dyn Store) {
        s.ping().await.unwrap();
        s.put_tenant(&tenant("t1")).await.unwrap();
        s.put_tenant(&tenant("t2")).await.unwrap();
        assert_eq!(s.get_tenant("t1").await.unwrap().unwrap().name, "tenant t1");
        assert!(s.get_tenant("nope").await.unwrap().is_none());
        let mut ids: Vec<String> = s
            .list_tenants()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        ids.sort();
        assert!(ids.contains(&"t1".to_string()) && ids.contains(&"t2".to_string()));

        let mut t1 = tenant("t1");
        t1.status = TenantStatus::Suspended;
        t1.limits.requests_per_day = Some(7);
        s.put_tenant(&t1).await.unwrap();
        assert_eq!(s.get_tenant("t1").await.unwrap().unwrap(), t1);

        s.create_api_key(&key("k1", "t1", "h1")).await.unwrap();
        s.create_api_key(&key("k2", "t1", "h2")).await.unwrap();
        s.create_api_key(&key("k3", "t2", "h3")).await.unwrap();
        assert!(matches!(
            s.create_api_key(&key("k9", "t2", "h3")).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(s.get_api_key("h1").await.unwrap().unwrap().id, "k1");
        assert_eq!(s.list_api_keys("t1").await.unwrap().len(), 2);

        let mut disabled = key("k1", "t1", "h1");
        disabled.is_active = false;
        disabled.name = "renamed".into();
        assert!(s.update_api_key(&disabled).await.unwrap());
        assert_eq!(s.get_api_key("h1").await.unwrap(), Some(disabled.clone()));
        assert_eq!(s.list_api_keys("t1").await.unwrap().len(), 2);
        disabled.is_active = true;
        assert!(s.update_api_key(&disabled).await.unwrap());
        assert!(!s.update_api_key(&key("k8", "t1", "gone")).await.unwrap());
        assert!(
            s.get_api_key("gone").await.unwrap().is_none(),
            "an update created a key"
        );
        let today = crate::util::unix_now() / 86_400;
        let uses = [
            ("h1".to_string(), today - 1, 3),
            ("h1".to_string(), today, 2),
        ];
        s.record_key_usage(&uses).await.unwrap();
        s.record_key_usage(&[("h1".into(), today, 5), ("h2".into(), today, 1)])
            .await
            .unwrap();
        assert_eq!(
            s.key_usage("h1", today - 30).await.unwrap(),
            vec![(today - 1, 3), (today, 7)]
        );
        assert_eq!(s.key_usage("h1", today).await.unwrap(), vec![(today, 7)]);
        assert!(s.key_usage("nope", today - 30).await.unwrap().is_empty());
        s.touch_api_keys(&[("h1".into(), 1_800_000_000), ("zz".into(), 1)])
            .await
            .unwrap();
        assert_eq!(
            s.get_api_key("h1").await.unwrap().unwrap().last_used_at,
            Some(1_800_000_000)
        );

        // A key of another tenant is not deletable through this tenant.
        assert!(s.delete_api_key("t1", "k3").await.unwrap().is_none());
        assert_eq!(
            s.delete_api_key("t1", "k2")
                .await
                .unwrap()
                .unwrap()
                .key_hash,
            "h2"
        );
        assert!(s.get_api_key("h2").await.unwrap().is_none());

        let hashes = s.delete_tenant("t1").await.unwrap().unwrap();
        assert_eq!(hashes, vec!["h1".to_string()]);
        assert!(s.get_api_key("h1").await.unwrap().is_none());
        assert!(s.get_tenant("t1").await.unwrap().is_none());
        assert!(s.delete_tenant("t1").await.unwrap().is_none());
        assert!(s.get_api_key("h3").await.unwrap().is_some());
    }

    async fn users(s: &dyn Store) {
        let u = User {
            id: "usr_1".into(),
            email: "a@example.com".into(),
            name: "A".into(),
            password_hash: "$argon2id$x".into(),
            created_at: 1,
            disabled: false,
        };
        s.create_user(&u).await.unwrap();
        let mut dup = u.clone();
        dup.id = "usr_2".into();
        assert!(matches!(
            s.create_user(&dup).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(
            s.get_user_by_email("a@example.com")
                .await
                .unwrap()
                .unwrap()
                .id,
            "usr_1"
        );
        assert_eq!(
            s.get_user("usr_1").await.unwrap().unwrap().email,
            "a@example.com"
        );
        assert!(s.get_user("usr_2").await.unwrap().is_none());
        s.set_password_hash("usr_1", "$argon2id$y").await.unwrap();
        assert_eq!(
            s.get_user("usr_1").await.unwrap().unwrap().password_hash,
            "$argon2id$y"
        );
        assert_eq!(
            s.get_user_by_email("a@example.com")
                .await
                .unwrap()
                .unwrap()
                .password_hash,
            "$argon2id$y"
        );
    }

    async fn refresh_and_revocation(s: &dyn Store) {
        let now = crate::util::unix_now();
        let r = RefreshRecord {
            token_hash: "rh1".into(),
            user_id: "usr_1".into(),
            family_id: "fam1".into(),
            issued_at: now,
            expires_at: now + 3600,
            rotated_at: None,
            successor: None,
        };
        s.put_refresh_token(&r).await.unwrap();
        let mut r2 = r.clone();
        r2.token_hash = "rh2".into();
        s.put_refresh_token(&r2).await.unwrap();
        assert_eq!(s.get_refresh_token("rh1").await.unwrap(), Some(r.clone()));
        assert_eq!(
            s.mark_refresh_rotated("rh1", now, Some("sealed-1"))
                .await
                .unwrap(),
            None
        );
        // The first rotation stays, with its successor: a second one learns it.
        assert_eq!(
            s.mark_refresh_rotated("rh1", now + 5, Some("sealed-2"))
                .await
                .unwrap(),
            Some(Rotation {
                at: now,
                successor: Some("sealed-1".into())
            })
        );
        assert_eq!(
            s.mark_refresh_rotated("rh2", now, None).await.unwrap(),
            None
        );
        assert_eq!(
            s.mark_refresh_rotated("rh2", now + 1, Some("late"))
                .await
                .unwrap(),
            Some(Rotation {
                at: now,
                successor: None
            })
        );
        s.revoke_refresh_family("fam1", now + 3600).await.unwrap();
        assert!(s.get_refresh_token("rh1").await.unwrap().is_none());
        assert!(s.get_refresh_token("rh2").await.unwrap().is_none());

        let mut expired = r.clone();
        expired.token_hash = "rh3".into();
        expired.family_id = "fam2".into();
        expired.expires_at = now - 1;
        s.put_refresh_token(&expired).await.unwrap();
        assert!(s.get_refresh_token("rh3").await.unwrap().is_none());

        assert!(!s.is_token_revoked(token("usr_1", "j1", now)).await.unwrap());
        s.revoke_jti("usr_1", "j1", now + 60).await.unwrap();
        assert!(s.is_token_revoked(token("usr_1", "j1", now)).await.unwrap());
        s.revoke_jti("usr_1", "j2", now - 1).await.unwrap();
        assert!(!s.is_token_revoked(token("usr_1", "j2", now)).await.unwrap());

        // The revocation check and the user's limit are one decision; a revoked token counts
        // against nothing.
        let now_ms = now * 1000;
        let limits = [(Window::Minute, 2)];
        let admit = |jti| {
            let t = TokenRef {
                subject: "usr_2",
                jti,
                issued_at: now,
            };
            s.admit_token(t, &limits, now_ms)
        };
        let Admission::Decided(d) = admit(Some("j3")).await.unwrap() else {
            panic!("a live token was refused as revoked");
        };
        assert_eq!((d.refused_by, d.headers.remaining), (None, 1));
        s.revoke_jti("usr_2", "j3", now + 60).await.unwrap();
        for _ in 0..3 {
            assert_eq!(admit(Some("j3")).await.unwrap(), Admission::Revoked);
        }
        let Admission::Decided(d) = admit(Some("j4")).await.unwrap() else {
            panic!("another token of the user was refused as revoked");
        };
        assert_eq!((d.refused_by, d.headers.remaining), (None, 0));
        // Counted in the user's own scope, the one the usage endpoint and `rate_limit` see.
        let user = scope::user("usr_2");
        let peek = s.peek_rate_limit(&user, &limits, now_ms).await.unwrap();
        assert_eq!(peek.refused_by, Some(Window::Minute));
        let Admission::Decided(d) = admit(None).await.unwrap() else {
            panic!("a token without jti was refused as revoked");
        };
        assert_eq!(d.refused_by, Some(Window::Minute));
        // No limits: the revocation check alone.
        assert_eq!(
            s.admit_token(token("usr_2", "j3", now), &[], now_ms)
                .await
                .unwrap(),
            Admission::Revoked
        );
        assert!(matches!(
            s.admit_token(token("usr_2", "j4", now), &[], now_ms)
                .await
                .unwrap(),
            Admission::Decided(_)
        ));
    }

    async fn counters(s: &dyn Store) {
        let now = 1_800_000_000_000;
        let limits = [(Window::Month, 100), (Window::Day, 3), (Window::Minute, 10)];
        for _ in 0..3 {
            assert!(s.rate_limit("scope", &limits, now).await.unwrap().allowed());
        }
        let d = s.rate_limit("scope", &limits, now).await.unwrap();
        assert_eq!(d.refused_by, Some(Window::Day));
        assert_eq!(d.headers.remaining, 0);
        let peek = s.peek_rate_limit("scope", &limits, now).await.unwrap();
        assert_eq!(peek.refused_by, Some(Window::Day));
        assert_eq!(
            s.usage("scope", now).await.unwrap(),
            Usage { day: 3, month: 3 }
        );
        assert_eq!(s.usage("other", now).await.unwrap(), Usage::default());

        // GCRA, 2 per second: a burst of two, then one each 500 ms; refusals take no room.
        let gcra = [(Window::Second, 2)];
        let allowed = |t: u64| async move { s.rate_limit("sl", &gcra, t).await.unwrap().allowed() };
        assert!(allowed(now).await);
        assert!(allowed(now).await);
        assert!(!allowed(now).await);
        assert!(!allowed(now + 499).await);
        assert!(allowed(now + 500).await);
        assert!(!allowed(now + 501).await);
        assert!(allowed(now + 1_000).await);
        let d = s.rate_limit("sl", &gcra, now + 1_000).await.unwrap();
        assert_eq!((d.refused_by, d.headers.reset), (Some(Window::Second), 1));
        let peek = s.peek_rate_limit("sl", &gcra, now + 3_000).await.unwrap();
        assert_eq!((peek.headers.remaining, peek.headers.reset), (2, 0));

        // The token budget is checked by the same decision, and never consumed by requests.
        let budget = [(Window::Tokens, 160), (Window::Minute, 100)];
        assert!(s.rate_limit("tok", &budget, now).await.unwrap().allowed());
        assert_eq!(s.tokens_used("tok", now).await.unwrap(), 0);
        assert_eq!(s.add_tokens("tok", 150, now).await.unwrap(), 150);
        assert!(s.rate_limit("tok", &budget, now).await.unwrap().allowed());
        assert_eq!(s.add_tokens("tok", 50, now).await.unwrap(), 200);
        assert_eq!(s.tokens_used("tok", now).await.unwrap(), 200);
        let d = s.rate_limit("tok", &budget, now).await.unwrap();
        assert_eq!(d.refused_by, Some(Window::Tokens));
        assert_eq!(s.tokens_used("tok", now).await.unwrap(), 200);
        assert_eq!(
            s.tokens_used("tok", now + 40 * 86_400_000).await.unwrap(),
            0
        );

        // A refusal by a later window takes back what earlier windows counted.
        let both = [
            (Window::Month, 100),
            (Window::Day, 100),
            (Window::Tokens, 10),
        ];
        assert!(s.rate_limit("tb", &both, now).await.unwrap().allowed());
        s.add_tokens("tb", 10, now).await.unwrap();
        for _ in 0..3 {
            let d = s.rate_limit("tb", &both, now).await.unwrap();
            assert_eq!(d.refused_by, Some(Window::Tokens));
        }
        assert_eq!(
            s.usage("tb", now).await.unwrap(),
            Usage { day: 1, month: 1 }
        );
    }
}
