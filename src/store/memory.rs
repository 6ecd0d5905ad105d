//! The memory store: everything in process memory (DashMap), lost on exit. For tests and `demo`
//! (`ARES_STORE=memory`); the default is the embedded store, which keeps the same state in a file.
//! It has exactly the semantics of the other stores (the same suite runs against each).
//! DashMap guards are never held across an `.await`: every method body is synchronous.

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::local::LocalCounters;
use super::records::{self, Record, Sink};
use super::{
    ApiKeyRecord, Counters, Lookup, Records, RefreshRecord, Rotation, Store, Tenant, TokenRef, User,
};
use crate::error::StoreError;
use crate::util::unix_now;

#[derive(Debug, Default)]
pub struct MemoryStore {
    tenants: DashMap<String, Tenant>,
    /// By key hash.
    keys: DashMap<String, ApiKeyRecord>,
    users: DashMap<String, User>,
    /// Lower-cased email -> user id; the uniqueness index.
    emails: DashMap<String, String>,
    refresh: DashMap<String, RefreshRecord>,
    /// Family id -> revoked until (unix seconds).
    revoked_families: DashMap<String, u64>,
    /// (key hash, unix day) -> requests.
    key_usage: DashMap<(String, u64), u64>,
    /// The audit trail, oldest first, bounded by retention and by `AUDIT_CAP`.
    audit: std::sync::Mutex<std::collections::VecDeque<super::AuditEntry>>,
    /// Limits, token budgets and access-token revocations (also the store's `Counters`).
    local: LocalCounters,
}

/// The memory store's audit trail keeps at most this many entries.
const AUDIT_CAP: usize = 100_000;

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drop what has expired; called periodically so memory stays bounded by live state.
    pub fn sweep(&self) {
        let now = unix_now();
        self.refresh.retain(|_, r| r.expires_at > now);
        self.revoked_families.retain(|_, until| *until > now);
        let oldest = (now / 86_400).saturating_sub(super::KEY_USAGE_DAYS);
        self.key_usage.retain(|(_, day), _| *day >= oldest);
        self.local.sweep(crate::util::now_ms());
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn lookup(&self) -> &dyn Lookup {
        self
    }

    fn counters(&self) -> &dyn Counters {
        &self.local
    }

    fn records(&self) -> &dyn Records {
        self
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn in_process(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[async_trait]
impl Lookup for MemoryStore {
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        Ok(self.tenants.get(id).map(|t| t.clone()))
    }

    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.keys.get(key_hash).map(|k| k.clone()))
    }

    async fn is_token_revoked(&self, token: TokenRef<'_>) -> Result<bool, StoreError> {
        Ok(self.local.revoked(token, unix_now()))
    }
}

#[async_trait]
impl Records for MemoryStore {
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.tenants.insert(tenant.id.clone(), tenant.clone());
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut all: Vec<Tenant> = self.tenants.iter().map(|t| t.clone()).collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    async fn delete_tenant(&self, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        if self.tenants.remove(id).is_none() {
            return Ok(None);
        }
        let hashes: Vec<String> = self
            .keys
            .iter()
            .filter(|k| k.tenant_id == id)
            .map(|k| k.key().clone())
            .collect();
        for h in &hashes {
            self.keys.remove(h);
        }
        Ok(Some(hashes))
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        match self.keys.entry(key.key_hash.clone()) {
            Entry::Occupied(_) => Err(StoreError::Conflict),
            Entry::Vacant(v) => {
                v.insert(key.clone());
                Ok(())
            }
        }
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut keys: Vec<ApiKeyRecord> = self
            .keys
            .iter()
            .filter(|k| k.tenant_id == tenant_id)
            .map(|k| k.clone())
            .collect();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    async fn delete_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let hash = self
            .keys
            .iter()
            .find(|k| k.tenant_id == tenant_id && k.id == key_id)
            .map(|k| k.key().clone());
        Ok(hash.and_then(|h| self.keys.remove(&h).map(|(_, k)| k)))
    }

    async fn update_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError> {
        Ok(match self.keys.get_mut(&key.key_hash) {
            Some(mut k) => {
                *k = key.clone();
                true
            }
            None => false,
        })
    }

    async fn record_key_usage(&self, uses: &[(String, u64, u64)]) -> Result<(), StoreError> {
        for (hash, day, n) in uses {
            *self.key_usage.entry((hash.clone(), *day)).or_insert(0) += n;
        }
        Ok(())
    }

    async fn key_usage(
        &self,
        key_hash: &str,
        from_day: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut days: Vec<(u64, u64)> = self
            .key_usage
            .iter()
            .filter(|e| e.key().0 == key_hash && e.key().1 >= from_day)
            .map(|e| (e.key().1, *e.value()))
            .collect();
        days.sort();
        Ok(days)
    }

    async fn touch_api_keys(&self, used: &[(String, u64)]) -> Result<(), StoreError> {
        for (hash, at) in used {
            if let Some(mut k) = self.keys.get_mut(hash) {
                k.last_used_at = Some(k.last_used_at.map_or(*at, |prev| prev.max(*at)));
            }
        }
        Ok(())
    }

    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        match self.emails.entry(user.email.clone()) {
            Entry::Occupied(_) => Err(StoreError::Conflict),
            Entry::Vacant(v) => {
                self.users.insert(user.id.clone(), user.clone());
                v.insert(user.id.clone());
                Ok(())
            }
        }
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let id = self.emails.get(email).map(|id| id.clone());
        Ok(id.and_then(|id| self.users.get(&id).map(|u| u.clone())))
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        Ok(self.users.get(id).map(|u| u.clone()))
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError> {
        if let Some(mut u) = self.users.get_mut(user_id) {
            u.password_hash = hash.to_string();
        }
        Ok(())
    }

    async fn update_user(&self, user: &User) -> Result<bool, StoreError> {
        Ok(match self.users.get_mut(&user.id) {
            Some(mut u) if u.email == user.email => {
                *u = user.clone();
                true
            }
            _ => false,
        })
    }

    async fn delete_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let Some((_, user)) = self.users.remove(id) else {
            return Ok(None);
        };
        self.emails.remove(&user.email);
        Ok(Some(user))
    }

    async fn list_users(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let mut found: Vec<User> = self
            .users
            .iter()
            .filter(|u| u.email.starts_with(prefix) && after.is_none_or(|a| u.email.as_str() > a))
            .map(|u| u.clone())
            .collect();
        found.sort_by(|a, b| a.email.cmp(&b.email));
        found.truncate(limit);
        Ok(found)
    }

    async fn put_refresh_token(&self, record: &RefreshRecord) -> Result<(), StoreError> {
        self.refresh
            .insert(record.token_hash.clone(), record.clone());
        Ok(())
    }

    async fn get_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let now = unix_now();
        let Some(r) = self.refresh.get(token_hash).map(|r| r.clone()) else {
            return Ok(None);
        };
        let family_dead = self
            .revoked_families
            .get(&r.family_id)
            .is_some_and(|until| *until > now)
            || self
                .local
                .user_cutoffs
                .revokes(&r.user_id, r.issued_at, now);
        Ok((r.expires_at > now && !family_dead).then_some(r))
    }

    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        at: u64,
        successor: Option<&str>,
    ) -> Result<Option<Rotation>, StoreError> {
        match self.refresh.get_mut(token_hash) {
            Some(mut r) => Ok(super::rotate(&mut r, at, successor)),
            None => Ok(None),
        }
    }

    async fn revoke_refresh_family(&self, family_id: &str, until: u64) -> Result<(), StoreError> {
        self.revoked_families.insert(family_id.to_string(), until);
        Ok(())
    }

    // A jti is random per token: it alone names the revocation here.
    async fn revoke_jti(&self, subject: &str, jti: &str, until: u64) -> Result<(), StoreError> {
        if until > unix_now() {
            self.local.revoke_jti(subject, jti, until);
        }
        Ok(())
    }

    async fn revoke_user_tokens(
        &self,
        subject: &str,
        through: u64,
        until: u64,
    ) -> Result<(), StoreError> {
        self.local.user_cutoffs.set(subject, through, until);
        Ok(())
    }

    async fn append_audit(
        &self,
        entry: &super::AuditEntry,
        keep_ms: u64,
    ) -> Result<(), StoreError> {
        let mut log = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let horizon = entry.at_ms.saturating_sub(keep_ms);
        while log
            .front()
            .is_some_and(|e| e.at_ms < horizon || log.len() >= AUDIT_CAP)
        {
            log.pop_front();
        }
        log.push_back(entry.clone());
        Ok(())
    }

    async fn list_audit(
        &self,
        after: Option<&str>,
        target: &str,
        limit: usize,
    ) -> Result<Vec<super::AuditEntry>, StoreError> {
        let log = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        Ok(log
            .iter()
            .filter(|e| after.is_none_or(|a| e.id.as_str() > a) && e.target.starts_with(target))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn export(&self, sink: &Sink) -> Result<(), StoreError> {
        // Collected first: no map guard is held across the sends.
        let now = unix_now();
        let mut all: Vec<Record> = Vec::new();
        all.extend(self.tenants.iter().map(|t| Record::Tenant(t.clone())));
        all.extend(self.keys.iter().map(|k| Record::ApiKey(k.clone())));
        all.extend(self.users.iter().map(|u| Record::User(u.clone())));
        all.extend(self.refresh.iter().map(|r| Record::RefreshToken(r.clone())));
        all.extend(
            self.revoked_families
                .iter()
                .filter(|e| *e.value() > now)
                .map(|e| Record::RevokedFamily {
                    family_id: e.key().clone(),
                    until: *e.value(),
                }),
        );
        all.extend(
            self.local
                .revoked_jtis
                .iter()
                .filter(|e| e.value().1 > now)
                .map(|e| Record::RevokedToken {
                    subject: e.value().0.clone(),
                    jti: e.key().clone(),
                    until: e.value().1,
                }),
        );
        all.extend(
            self.local
                .user_cutoffs
                .entries()
                .into_iter()
                .filter(|e| e.2 > now)
                .map(|(subject, through, until)| Record::RevokedUser {
                    subject,
                    through,
                    until,
                }),
        );
        all.extend(
            self.local
                .limiter
                .calendar_counts()
                .into_iter()
                .map(|(scope, w, period, count)| Record::counter(&scope, w, period, count)),
        );
        for r in all {
            if !records::send(sink, r).await {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_store_suite() {
        let s = MemoryStore::new();
        crate::store::suite::run_all(&s).await;
    }

    #[tokio::test]
    async fn sweep_drops_expired_state() {
        let s = MemoryStore::new();
        s.local
            .revoked_jtis
            .insert("old".into(), ("usr_1".into(), 1));
        s.revoked_families.insert("old".into(), 1);
        s.sweep();
        assert!(s.local.revoked_jtis.is_empty() && s.revoked_families.is_empty());
    }
}
