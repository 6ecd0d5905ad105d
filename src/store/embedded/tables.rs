//! The embedded store's `Records` over the tables `file.rs` defines: each write one redb
//! transaction, committed (and synced) before the call returns; reads from a read transaction.

use super::*;

#[async_trait]
impl Records for EmbeddedStore {
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let (id, json) = (tenant.id.clone(), encode(tenant)?);
        self.write(move |tx| {
            tx.open_table(TENANTS)
                .map_err(unavailable)?
                .insert(id.as_str(), json.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut all: Vec<Tenant> = self.read(|tx| {
            let t = tx.open_table(TENANTS).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(unavailable)? {
                let (k, v) = entry.map_err(unavailable)?;
                out.push(decode("tenant", k.value(), v.value())?);
            }
            Ok(out)
        })?;
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    async fn delete_tenant(&self, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let id = id.to_string();
        self.write(move |tx| {
            let existed = tx
                .open_table(TENANTS)
                .map_err(unavailable)?
                .remove(id.as_str())
                .map_err(unavailable)?
                .is_some();
            if !existed {
                return Ok(None);
            }
            let hashes: Vec<String> = {
                let t = tx.open_table(TENANT_KEYS).map_err(unavailable)?;
                let mut out = Vec::new();
                for entry in t.range((id.as_str(), "")..).map_err(unavailable)? {
                    let (k, v) = entry.map_err(unavailable)?;
                    if k.value().0 != id {
                        break;
                    }
                    out.push(v.value().to_string());
                }
                out
            };
            for h in &hashes {
                remove_key(tx, h)?;
            }
            Ok(Some(hashes))
        })
        .await
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let (key, json) = (key.clone(), encode(key)?);
        self.write(move |tx| {
            let mut keys = tx.open_table(KEYS).map_err(unavailable)?;
            if keys
                .get(key.key_hash.as_str())
                .map_err(unavailable)?
                .is_some()
            {
                return Err(StoreError::Conflict);
            }
            keys.insert(key.key_hash.as_str(), json.as_slice())
                .map_err(unavailable)?;
            tx.open_table(TENANT_KEYS)
                .map_err(unavailable)?
                .insert(
                    (key.tenant_id.as_str(), key.id.as_str()),
                    key.key_hash.as_str(),
                )
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut keys: Vec<ApiKeyRecord> = self.read(|tx| {
            let index = tx.open_table(TENANT_KEYS).map_err(unavailable)?;
            let keys = tx.open_table(KEYS).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in index.range((tenant_id, "")..).map_err(unavailable)? {
                let (k, hash) = entry.map_err(unavailable)?;
                if k.value().0 != tenant_id {
                    break;
                }
                if let Some(v) = keys.get(hash.value()).map_err(unavailable)? {
                    out.push(decode("api key", hash.value(), v.value())?);
                }
            }
            Ok(out)
        })?;
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    async fn delete_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let (tenant_id, key_id) = (tenant_id.to_string(), key_id.to_string());
        self.write(move |tx| {
            let hash = tx
                .open_table(TENANT_KEYS)
                .map_err(unavailable)?
                .get((tenant_id.as_str(), key_id.as_str()))
                .map_err(unavailable)?
                .map(|h| h.value().to_string());
            match hash {
                Some(h) => remove_key(tx, &h),
                None => Ok(None),
            }
        })
        .await
    }

    async fn update_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError> {
        let (hash, json) = (key.key_hash.clone(), encode(key)?);
        self.write(move |tx| {
            let mut keys = tx.open_table(KEYS).map_err(unavailable)?;
            if keys.get(hash.as_str()).map_err(unavailable)?.is_none() {
                return Ok(false);
            }
            keys.insert(hash.as_str(), json.as_slice())
                .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn record_key_usage(&self, uses: &[(String, u64, u64)]) -> Result<(), StoreError> {
        let uses = uses.to_vec();
        self.write(move |tx| {
            let mut t = tx.open_table(KEY_USAGE).map_err(unavailable)?;
            for (hash, day, n) in &uses {
                let before = t
                    .get((hash.as_str(), *day))
                    .map_err(unavailable)?
                    .map_or(0, |v| v.value());
                t.insert((hash.as_str(), *day), before + n)
                    .map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }

    async fn key_usage(
        &self,
        key_hash: &str,
        from_day: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(KEY_USAGE).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in t
                .range((key_hash, from_day)..=(key_hash, u64::MAX))
                .map_err(unavailable)?
            {
                let (k, v) = entry.map_err(unavailable)?;
                out.push((k.value().1, v.value()));
            }
            Ok(out)
        })
    }

    async fn touch_api_keys(&self, used: &[(String, u64)]) -> Result<(), StoreError> {
        let used = used.to_vec();
        self.write(move |tx| {
            let mut keys = tx.open_table(KEYS).map_err(unavailable)?;
            for (hash, at) in &used {
                let found = keys.get(hash.as_str()).map_err(unavailable)?;
                let Some(mut k) = found
                    .map(|v| decode::<ApiKeyRecord>("api key", hash, v.value()))
                    .transpose()?
                else {
                    continue;
                };
                k.last_used_at = Some(k.last_used_at.map_or(*at, |p| p.max(*at)));
                keys.insert(hash.as_str(), encode(&k)?.as_slice())
                    .map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }

    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let (user, json) = (user.clone(), encode(user)?);
        self.write(move |tx| {
            let mut emails = tx.open_table(EMAILS).map_err(unavailable)?;
            if emails
                .get(user.email.as_str())
                .map_err(unavailable)?
                .is_some()
            {
                return Err(StoreError::Conflict);
            }
            emails
                .insert(user.email.as_str(), user.id.as_str())
                .map_err(unavailable)?;
            tx.open_table(USERS)
                .map_err(unavailable)?
                .insert(user.id.as_str(), json.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.read(|tx| {
            let id = tx
                .open_table(EMAILS)
                .map_err(unavailable)?
                .get(email)
                .map_err(unavailable)?
                .map(|id| id.value().to_string());
            let Some(id) = id else { return Ok(None) };
            let users = tx.open_table(USERS).map_err(unavailable)?;
            let v = users.get(id.as_str()).map_err(unavailable)?;
            v.map(|v| decode("user", &id, v.value())).transpose()
        })
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.get_json(USERS, "user", id)
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError> {
        let (id, hash) = (user_id.to_string(), hash.to_string());
        self.write(move |tx| {
            let mut users = tx.open_table(USERS).map_err(unavailable)?;
            let found = users.get(id.as_str()).map_err(unavailable)?;
            let Some(mut u) = found
                .map(|v| decode::<User>("user", &id, v.value()))
                .transpose()?
            else {
                return Ok(());
            };
            u.password_hash = hash;
            users
                .insert(id.as_str(), encode(&u)?.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn update_user(&self, user: &User) -> Result<bool, StoreError> {
        let (user, json) = (user.clone(), encode(user)?);
        self.write(move |tx| {
            let mut users = tx.open_table(USERS).map_err(unavailable)?;
            let found = users.get(user.id.as_str()).map_err(unavailable)?;
            let same = found
                .map(|v| decode::<User>("user", &user.id, v.value()))
                .transpose()?
                .is_some_and(|u| u.email == user.email);
            if !same {
                return Ok(false);
            }
            users
                .insert(user.id.as_str(), json.as_slice())
                .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn delete_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_string();
        self.write(move |tx| {
            let removed = tx
                .open_table(USERS)
                .map_err(unavailable)?
                .remove(id.as_str())
                .map_err(unavailable)?
                .map(|v| decode::<User>("user", &id, v.value()))
                .transpose()?;
            if let Some(u) = &removed {
                tx.open_table(EMAILS)
                    .map_err(unavailable)?
                    .remove(u.email.as_str())
                    .map_err(unavailable)?;
            }
            Ok(removed)
        })
        .await
    }

    async fn list_users(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        self.read(|tx| {
            let emails = tx.open_table(EMAILS).map_err(unavailable)?;
            let users = tx.open_table(USERS).map_err(unavailable)?;
            let start = after.map_or(prefix, |a| a.max(prefix));
            let mut out = Vec::new();
            for entry in emails.range(start..).map_err(unavailable)? {
                let (email, id) = entry.map_err(unavailable)?;
                if !email.value().starts_with(prefix) || out.len() >= limit {
                    break;
                }
                if after == Some(email.value()) {
                    continue;
                }
                if let Some(v) = users.get(id.value()).map_err(unavailable)? {
                    out.push(decode("user", id.value(), v.value())?);
                }
            }
            Ok(out)
        })
    }

    async fn put_refresh_token(&self, record: &RefreshRecord) -> Result<(), StoreError> {
        let (hash, json) = (record.token_hash.clone(), encode(record)?);
        self.write(move |tx| {
            tx.open_table(REFRESH)
                .map_err(unavailable)?
                .insert(hash.as_str(), json.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let now = unix_now();
        self.read(|tx| {
            let t = tx.open_table(REFRESH).map_err(unavailable)?;
            let Some(r) = t
                .get(token_hash)
                .map_err(unavailable)?
                .map(|v| decode::<RefreshRecord>("refresh token", "", v.value()))
                .transpose()?
            else {
                return Ok(None);
            };
            let dead = tx
                .open_table(FAMILIES)
                .map_err(unavailable)?
                .get(r.family_id.as_str())
                .map_err(unavailable)?
                .is_some_and(|until| until.value() > now)
                || self
                    .local
                    .user_cutoffs
                    .revokes(&r.user_id, r.issued_at, now);
            Ok((r.expires_at > now && !dead).then_some(r))
        })
    }

    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        at: u64,
        successor: Option<&str>,
    ) -> Result<Option<Rotation>, StoreError> {
        let hash = token_hash.to_string();
        let successor = successor.map(str::to_string);
        // One write transaction at a time: of two concurrent rotations, exactly one sees None.
        self.write(move |tx| {
            let mut t = tx.open_table(REFRESH).map_err(unavailable)?;
            let found = t.get(hash.as_str()).map_err(unavailable)?;
            let Some(mut r) = found
                .map(|v| decode::<RefreshRecord>("refresh token", "", v.value()))
                .transpose()?
            else {
                return Ok(None);
            };
            let prev = crate::store::rotate(&mut r, at, successor.as_deref());
            if prev.is_none() {
                t.insert(hash.as_str(), encode(&r)?.as_slice())
                    .map_err(unavailable)?;
            }
            Ok(prev)
        })
        .await
    }

    async fn revoke_refresh_family(&self, family_id: &str, until: u64) -> Result<(), StoreError> {
        let id = family_id.to_string();
        self.write(move |tx| {
            let mut t = tx.open_table(FAMILIES).map_err(unavailable)?;
            let before = t.get(id.as_str()).map_err(unavailable)?.map(|v| v.value());
            t.insert(id.as_str(), until.max(before.unwrap_or(0)))
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn revoke_jti(&self, subject: &str, jti: &str, until: u64) -> Result<(), StoreError> {
        if until <= unix_now() {
            return Ok(());
        }
        let (user, id) = (subject.to_string(), jti.to_string());
        self.write(move |tx| {
            tx.open_table(TOKENS)
                .map_err(unavailable)?
                .insert(id.as_str(), (user.as_str(), until))
                .map_err(unavailable)?;
            Ok(())
        })
        .await?;
        // In memory only once it is in the file: a revocation the caller saw succeed survives.
        self.local.revoke_jti(subject, jti, until);
        Ok(())
    }

    async fn revoke_user_tokens(
        &self,
        subject: &str,
        through: u64,
        until: u64,
    ) -> Result<(), StoreError> {
        let id = subject.to_string();
        self.write(move |tx| {
            let mut t = tx.open_table(USER_CUTOFFS).map_err(unavailable)?;
            let before = t.get(id.as_str()).map_err(unavailable)?.map(|v| v.value());
            let (b_through, b_until) = before.unwrap_or((0, 0));
            t.insert(id.as_str(), (through.max(b_through), until.max(b_until)))
                .map_err(unavailable)?;
            Ok(())
        })
        .await?;
        // In memory once it is in the file, as for a single token's revocation.
        self.local.user_cutoffs.set(subject, through, until);
        Ok(())
    }

    async fn append_audit(
        &self,
        entry: &crate::store::AuditEntry,
        keep_ms: u64,
    ) -> Result<(), StoreError> {
        let (id, json) = (entry.id.clone(), encode(entry)?);
        let horizon = format!("{:013}", entry.at_ms.saturating_sub(keep_ms));
        self.write(move |tx| {
            let mut t = tx.open_table(AUDIT).map_err(unavailable)?;
            t.retain_in(..horizon.as_str(), |_, _| false)
                .map_err(unavailable)?;
            t.insert(id.as_str(), json.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        after: Option<&str>,
        target: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::AuditEntry>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(AUDIT).map_err(unavailable)?;
            let mut out = Vec::new();
            let range = match after {
                Some(a) => {
                    t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                }
                None => t.range::<&str>(..),
            }
            .map_err(unavailable)?;
            for entry in range {
                let (k, v) = entry.map_err(unavailable)?;
                let e: crate::store::AuditEntry = decode("audit entry", k.value(), v.value())?;
                if e.target.starts_with(target) {
                    out.push(e);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    async fn export(&self, sink: &records::Sink) -> Result<(), StoreError> {
        self.flush().await?;
        let (db, sink) = (self.db.clone(), sink.clone());
        tokio::task::spawn_blocking(move || Self::export_blocking(&db, &sink))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store export: {e}")))?
    }
}
