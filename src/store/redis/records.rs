//! The Redis store's `Lookup` and `Records`: JSON records under the key schema of `mod.rs`,
//! their indexes written first (with NX) so that a crash between steps never leaves a usable
//! record without its index, and the invalidations other replicas apply.

use super::*;

impl RedisStore {
    /// The records named by the members of the index set `{p}<set>`, each stored at
    /// `{p}<record><member>`; members whose record went away meanwhile are skipped.
    pub(super) async fn set_records<T: DeserializeOwned>(
        &self,
        set: &str,
        record: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut c = self.handle().await?;
        let members: Vec<String> = c.smembers(key!(self, "{set}")).await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            if let Some(r) = self.get_json(&key!(self, "{record}{m}")).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub(super) async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let mut c = self.handle().await?;
        let raw: Option<String> = c.get(key).await.map_err(unavailable)?;
        match raw {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{key}: {e}"))),
        }
    }

    pub(super) async fn set_json<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.handle().await?;
        c.set::<_, _, ()>(key, json).await.map_err(unavailable)
    }

    pub(super) async fn publish(&self, message: String) {
        let channel = key!(self, "invalidate");
        let result: Result<(), StoreError> = async {
            let mut c = self.handle().await?;
            let sent_ms = crate::util::now_ms();
            c.publish::<_, _, ()>(channel, format!("{} {sent_ms} {message}", self.origin))
                .await
                .map_err(unavailable)
        }
        .await;
        if let Err(e) = result {
            // The cache TTL on the other replicas is the backstop.
            tracing::warn!(error = %e, "invalidation not published");
        }
    }
}

#[async_trait]
impl Lookup for RedisStore {
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        self.get_json(&key!(self, "tenant:{id}")).await
    }

    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get_json(&key!(self, "key:{key_hash}")).await
    }

    async fn is_token_revoked(&self, token: TokenRef<'_>) -> Result<bool, StoreError> {
        let admission = self.admit_token(token, &[], 0).await?;
        Ok(admission == Admission::Revoked)
    }
}

#[async_trait]
impl Records for RedisStore {
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.set_json(&key!(self, "tenant:{}", tenant.id), tenant)
            .await?;
        let mut c = self.handle().await?;
        c.sadd::<_, _, ()>(key!(self, "tenants"), &tenant.id)
            .await
            .map_err(unavailable)?;
        self.publish(format!("tenant:{}", tenant.id)).await;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut out: Vec<Tenant> = self.set_records("tenants", "tenant:").await?;
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn delete_tenant(&self, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let tenant_key = key!(self, "tenant:{id}");
        let mut c = self.handle().await?;
        let existed: u64 = c.del(&tenant_key).await.map_err(unavailable)?;
        if existed == 0 {
            return Ok(None);
        }
        let set = key!(self, "tenant_keys:{id}");
        let hashes: Vec<String> = c.smembers(&set).await.map_err(unavailable)?;
        for h in &hashes {
            c.del::<_, ()>(key!(self, "key:{h}"))
                .await
                .map_err(unavailable)?;
        }
        c.del::<_, ()>(&set).await.map_err(unavailable)?;
        c.srem::<_, _, ()>(key!(self, "tenants"), id)
            .await
            .map_err(unavailable)?;
        self.publish(format!("tenant:{id}")).await;
        for h in &hashes {
            self.publish(format!("key:{h}")).await;
        }
        Ok(Some(hashes))
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.handle().await?;
        let created: bool = redis::cmd("SET")
            .arg(key!(self, "key:{}", key.key_hash))
            .arg(json)
            .arg("NX")
            .query_async::<Option<String>>(&mut c)
            .await
            .map_err(unavailable)?
            .is_some();
        if !created {
            return Err(StoreError::Conflict);
        }
        c.sadd::<_, _, ()>(key!(self, "tenant_keys:{}", key.tenant_id), &key.key_hash)
            .await
            .map_err(unavailable)?;
        // Other replicas may hold this hash in their negative caches.
        self.publish(format!("key:{}", key.key_hash)).await;
        Ok(())
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let set = format!("tenant_keys:{tenant_id}");
        let mut out: Vec<ApiKeyRecord> = self.set_records(&set, "key:").await?;
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn delete_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let found = self
            .list_api_keys(tenant_id)
            .await?
            .into_iter()
            .find(|k| k.id == key_id);
        let Some(record) = found else {
            return Ok(None);
        };
        let mut c = self.handle().await?;
        c.del::<_, ()>(key!(self, "key:{}", record.key_hash))
            .await
            .map_err(unavailable)?;
        c.srem::<_, _, ()>(key!(self, "tenant_keys:{tenant_id}"), &record.key_hash)
            .await
            .map_err(unavailable)?;
        self.publish(format!("key:{}", record.key_hash)).await;
        Ok(Some(record))
    }

    async fn update_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError> {
        let json = serde_json::to_string(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.handle().await?;
        // XX: never resurrect a key deleted meanwhile.
        let updated = redis::cmd("SET")
            .arg(key!(self, "key:{}", key.key_hash))
            .arg(json)
            .arg("XX")
            .query_async::<Option<String>>(&mut c)
            .await
            .map_err(unavailable)?
            .is_some();
        if updated {
            self.publish(format!("key:{}", key.key_hash)).await;
        }
        Ok(updated)
    }

    async fn record_key_usage(&self, uses: &[(String, u64, u64)]) -> Result<(), StoreError> {
        let mut c = self.handle().await?;
        for (hash, day, n) in uses {
            let key = key!(self, "kusage:{hash}");
            redis::pipe()
                .hincr(&key, day, *n)
                .ignore()
                .expire(&key, (crate::store::KEY_USAGE_DAYS * 86_400) as i64)
                .ignore()
                .query_async::<()>(&mut c)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn key_usage(
        &self,
        key_hash: &str,
        from_day: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut c = self.handle().await?;
        let all: std::collections::HashMap<u64, u64> = c
            .hgetall(key!(self, "kusage:{key_hash}"))
            .await
            .map_err(unavailable)?;
        let mut days: Vec<(u64, u64)> = all.into_iter().filter(|(d, _)| *d >= from_day).collect();
        days.sort();
        Ok(days)
    }

    async fn touch_api_keys(&self, used: &[(String, u64)]) -> Result<(), StoreError> {
        for (hash, at) in used {
            let key = key!(self, "key:{hash}");
            let Some(mut record) = self.get_json::<ApiKeyRecord>(&key).await? else {
                continue;
            };
            record.last_used_at = Some(record.last_used_at.map_or(*at, |p| p.max(*at)));
            let json =
                serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut c = self.handle().await?;
            // XX: never resurrect a key deleted meanwhile.
            redis::cmd("SET")
                .arg(&key)
                .arg(json)
                .arg("XX")
                .query_async::<Option<String>>(&mut c)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let mut c = self.handle().await?;
        let claimed = redis::cmd("SET")
            .arg(key!(self, "email:{}", sha_hex(&user.email)))
            .arg(&user.id)
            .arg("NX")
            .query_async::<Option<String>>(&mut c)
            .await
            .map_err(unavailable)?
            .is_some();
        if !claimed {
            return Err(StoreError::Conflict);
        }
        self.set_json(&key!(self, "user:{}", user.id), user).await?;
        let mut c = self.handle().await?;
        c.sadd::<_, _, ()>(key!(self, "users"), &user.id)
            .await
            .map_err(unavailable)
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let mut c = self.handle().await?;
        let id: Option<String> = c
            .get(key!(self, "email:{}", sha_hex(email)))
            .await
            .map_err(unavailable)?;
        match id {
            Some(id) => self.get_user(&id).await,
            None => Ok(None),
        }
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.get_json(&key!(self, "user:{id}")).await
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError> {
        let key = key!(self, "user:{user_id}");
        if let Some(mut u) = self.get_json::<User>(&key).await? {
            u.password_hash = hash.to_string();
            self.set_json(&key, &u).await?;
        }
        Ok(())
    }

    async fn update_user(&self, user: &User) -> Result<bool, StoreError> {
        let key = key!(self, "user:{}", user.id);
        match self.get_json::<User>(&key).await? {
            Some(u) if u.email == user.email => {}
            _ => return Ok(false),
        }
        let json = serde_json::to_string(user).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.handle().await?;
        let updated = redis::cmd("SET")
            .arg(&key)
            .arg(json)
            .arg("XX")
            .query_async::<Option<String>>(&mut c)
            .await
            .map_err(unavailable)?
            .is_some();
        Ok(updated)
    }

    async fn delete_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let key = key!(self, "user:{id}");
        let Some(user) = self.get_json::<User>(&key).await? else {
            return Ok(None);
        };
        let mut c = self.handle().await?;
        // The record first: a crash in between leaves an email index to a missing user,
        // which reads as no user (and a new registration of the email conflicts until swept).
        c.del::<_, ()>(&key).await.map_err(unavailable)?;
        c.del::<_, ()>(key!(self, "email:{}", sha_hex(&user.email)))
            .await
            .map_err(unavailable)?;
        c.srem::<_, _, ()>(key!(self, "users"), id)
            .await
            .map_err(unavailable)?;
        Ok(Some(user))
    }

    async fn list_users(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        // No index by email in Redis (emails are stored hashed): walk the users. Fine for an
        // admin listing; the embedded store answers from its index.
        let mut users = self.scan_users().await?;
        users.retain(|u| u.email.starts_with(prefix) && after.is_none_or(|a| u.email.as_str() > a));
        users.sort_by(|a, b| a.email.cmp(&b.email));
        users.truncate(limit);
        Ok(users)
    }

    async fn put_refresh_token(&self, record: &RefreshRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.handle().await?;
        redis::cmd("SET")
            .arg(key!(self, "rt:{}", record.token_hash))
            .arg(json)
            .arg("EXAT")
            .arg(record.expires_at.max(unix_now() + 1))
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn get_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let Some(r) = self
            .get_json::<RefreshRecord>(&key!(self, "rt:{token_hash}"))
            .await?
        else {
            return Ok(None);
        };
        // Two commands: under Cluster the keys live in different slots.
        let mut c = self.handle().await?;
        let mut c2 = c.clone();
        let family_key = key!(self, "rtfam:{}", r.family_id);
        let cutoff_key = self.cutoff_key(&scope::user(&r.user_id));
        let (family, cutoff) = tokio::join!(
            c.exists::<_, bool>(&family_key),
            c2.get::<_, Option<u64>>(&cutoff_key)
        );
        let (family, cutoff) = (family.map_err(unavailable)?, cutoff.map_err(unavailable)?);
        let logged_out = cutoff.is_some_and(|through| r.issued_at <= through);
        Ok((r.expires_at > unix_now() && !family && !logged_out).then_some(r))
    }

    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        at: u64,
        successor: Option<&str>,
    ) -> Result<Option<Rotation>, StoreError> {
        let mut c = self.handle().await?;
        let value = match successor {
            Some(s) => format!("{at} {s}"),
            None => at.to_string(),
        };
        let prev: Option<String> = redis::cmd("SET")
            .arg(key!(self, "rtrot:{token_hash}"))
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(366 * 86_400)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(prev.as_deref().and_then(parse_rotation))
    }

    async fn revoke_refresh_family(&self, family_id: &str, until: u64) -> Result<(), StoreError> {
        let mut c = self.handle().await?;
        redis::cmd("SET")
            .arg(key!(self, "rtfam:{family_id}"))
            .arg(1)
            .arg("EXAT")
            .arg(until.max(unix_now() + 1))
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn revoke_jti(&self, subject: &str, jti: &str, until: u64) -> Result<(), StoreError> {
        if until <= unix_now() {
            return Ok(());
        }
        let mut keys = vec![self.revocation_key(&scope::user(subject), jti)];
        if self.legacy_revocations {
            keys.push(key!(self, "jti:{jti}"));
        }
        let mut c = self.handle().await?;
        // One command per key: under Cluster they live in different slots.
        for key in keys {
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("EXAT")
                .arg(until)
                .query_async::<()>(&mut c)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn revoke_user_tokens(
        &self,
        subject: &str,
        through: u64,
        until: u64,
    ) -> Result<(), StoreError> {
        let key = self.cutoff_key(&scope::user(subject));
        let mut c = self.handle().await?;
        // Never moves the line back, and keeps the longer life.
        redis::Script::new(
            "local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
             local ttl = redis.call('TTL', KEYS[1])
             local keep = tonumber(ARGV[2]) - tonumber(ARGV[3])
             if ttl > keep then keep = ttl end
             if keep < 1 then keep = 1 end
             local through = tonumber(ARGV[1])
             if cur > through then through = cur end
             redis.call('SET', KEYS[1], through, 'EX', keep)
             return 1",
        )
        .key(&key)
        .arg(through)
        .arg(until)
        .arg(unix_now())
        .invoke_async::<i64>(&mut c)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn append_audit(
        &self,
        entry: &crate::store::AuditEntry,
        keep_ms: u64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = key!(self, "audit");
        let mut c = self.handle().await?;
        redis::pipe()
            .atomic()
            .zadd(&key, json, entry.at_ms)
            .ignore()
            .zrembyscore(
                &key,
                "-inf",
                format!("({}", entry.at_ms.saturating_sub(keep_ms)),
            )
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn list_audit(
        &self,
        after: Option<&str>,
        target: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::AuditEntry>, StoreError> {
        let from: u64 = after
            .and_then(|a| a.split('-').next())
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        let mut c = self.handle().await?;
        let raw: Vec<String> = c
            .zrangebyscore(key!(self, "audit"), from, "+inf")
            .await
            .map_err(unavailable)?;
        let mut out: Vec<crate::store::AuditEntry> = Vec::new();
        for json in raw {
            let e: crate::store::AuditEntry = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))?;
            if after.is_none_or(|a| e.id.as_str() > a) && e.target.starts_with(target) {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.truncate(limit);
        Ok(out)
    }

    async fn export(&self, sink: &crate::store::records::Sink) -> Result<(), StoreError> {
        self.export_records(sink).await
    }
}
