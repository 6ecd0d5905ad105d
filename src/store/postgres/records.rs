//! The PostgreSQL store's `Lookup` and `Records`: ARES's `users`, `tenants` and `api_keys` rows
//! with the gateway's columns beside them (`*_ext`). Every write of more than one row is one
//! transaction; keys and tenants changed are announced to the other replicas (`NOTIFY`).
//! Sessions, revocations and audit are in `sessions.rs`, the export in `export.rs`.

use async_trait::async_trait;

use super::rows::*;
use super::schema::{db, Generation, SCHEMA};
use super::{export, i, sessions, u, PostgresStore};
use crate::error::StoreError;
use crate::store::records::Sink;
use crate::store::{
    ApiKeyRecord, AuditEntry, Lookup, Records, RefreshRecord, Rotation, Tenant, TenantStatus,
    TokenRef, User,
};
use crate::util::unix_now;

#[async_trait]
impl Lookup for PostgresStore {
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.tenant_sql("WHERE t.id = $1"))
            .await
            .map_err(db)?;
        c.query_opt(&st, &[&id])
            .await
            .map_err(db)?
            .map(|r| Self::tenant(&r))
            .transpose()
    }

    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.key_sql("WHERE k.key_hash = $1 LIMIT 1"))
            .await
            .map_err(db)?;
        c.query_opt(&st, &[&key_hash])
            .await
            .map_err(db)?
            .map(|r| Self::key(&r))
            .transpose()
    }

    async fn is_token_revoked(&self, token: TokenRef<'_>) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let st = c.prepare_cached(&revocation_sql()).await.map_err(db)?;
        let jti = token.jti.unwrap_or("");
        let row = c
            .query_one(&st, &[&jti, &token.subject, &i(unix_now())?])
            .await
            .map_err(db)?;
        revoked(&row, token)
    }
}

#[async_trait]
impl Records for PostgresStore {
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let now = i(unix_now())?;
        tx.execute(
            &format!(
                "INSERT INTO {} (id, name, tier, created_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, tier = EXCLUDED.tier, \
                 updated_at = EXCLUDED.updated_at",
                self.ares.table("tenants")
            ),
            &[&tenant.id, &tenant.name, &tenant.tier, &i(tenant.created_at)?, &now],
        )
        .await
        .map_err(db)?;
        tx.execute(
            &format!(
                "INSERT INTO {SCHEMA}.tenant_ext (tenant_id, suspended, requests_per_minute, \
                 requests_per_day, requests_per_month) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (tenant_id) DO UPDATE SET suspended = EXCLUDED.suspended, \
                 requests_per_minute = EXCLUDED.requests_per_minute, \
                 requests_per_day = EXCLUDED.requests_per_day, \
                 requests_per_month = EXCLUDED.requests_per_month"
            ),
            &[
                &tenant.id,
                &(tenant.status == TenantStatus::Suspended),
                &opt_i(tenant.limits.requests_per_minute)?,
                &opt_i(tenant.limits.requests_per_day)?,
                &opt_i(tenant.limits.requests_per_month)?,
            ],
        )
        .await
        .map_err(db)?;
        if self.ares.ares_users {
            // The tenant's row in ARES's users, for its API keys' requests (see
            // TENANT_USER_DOMAIN); an existing user of that id is left as it is.
            tx.execute(
                &format!(
                    "INSERT INTO {} (id, email, password_hash, name, created_at, updated_at) \
                     VALUES ($1, $2, '!', $3, $4, $4) ON CONFLICT DO NOTHING",
                    self.ares.users
                ),
                &[
                    &tenant.id,
                    &format!("{}{TENANT_USER_DOMAIN}", tenant.id),
                    &tenant.name,
                    &now,
                ],
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.notify(&c, &format!("tenant:{}", tenant.id)).await;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(&self.tenant_sql("ORDER BY t.created_at, t.id"), &[])
            .await
            .map_err(db)?;
        rows.iter().map(Self::tenant).collect()
    }

    async fn delete_tenant(&self, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let keys = tx
            .query(
                &format!(
                    "SELECT key_hash FROM {} WHERE tenant_id = $1",
                    self.ares.table("api_keys")
                ),
                &[&id],
            )
            .await
            .map_err(db)?;
        let hashes = keys
            .iter()
            .map(|r| col::<String>(r, "key_hash").map(|h| h.to_ascii_lowercase()))
            .collect::<Result<Vec<_>, _>>()?;
        if self.ares.tenant_agents {
            tx.execute(
                &format!(
                    "DELETE FROM {} WHERE tenant_id = $1",
                    self.ares.table("tenant_agents")
                ),
                &[&id],
            )
            .await
            .map_err(db)?;
        }
        tx.execute(
            &format!(
                "DELETE FROM {} WHERE tenant_id = $1",
                self.ares.table("api_keys")
            ),
            &[&id],
        )
        .await
        .map_err(db)?;
        let deleted = tx
            .execute(
                &format!("DELETE FROM {} WHERE id = $1", self.ares.table("tenants")),
                &[&id],
            )
            .await
            .map_err(db)?;
        if self.ares.ares_users {
            // Its stand-in user goes too, unless ARES keeps data of it (conversations): then
            // ARES's foreign keys keep the row, as they keep the data.
            tx.batch_execute("SAVEPOINT tenant_user")
                .await
                .map_err(db)?;
            let gone = tx
                .execute(
                    &format!(
                        "DELETE FROM {} WHERE id = $1 AND email = $2",
                        self.ares.users
                    ),
                    &[&id, &format!("{id}{TENANT_USER_DOMAIN}")],
                )
                .await;
            if gone.is_err() {
                tx.batch_execute("ROLLBACK TO SAVEPOINT tenant_user")
                    .await
                    .map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
        if deleted == 0 {
            return Ok(None);
        }
        self.notify(&c, &format!("tenant:{id}")).await;
        for h in &hashes {
            self.notify(&c, &format!("key:{h}")).await;
        }
        Ok(Some(hashes))
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let keys = self.ares.table("api_keys");
        // ARES indexes keys by prefix, not hash: the gateway's "hash taken" is checked here.
        let taken = tx
            .query_opt(
                &format!("SELECT 1 FROM {keys} WHERE key_hash = $1 OR id = $2"),
                &[&key.key_hash, &key.id],
            )
            .await
            .map_err(db)?;
        if taken.is_some() {
            return Err(StoreError::Conflict);
        }
        let active: i32 = key.is_active.into();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &key.id,
            &key.tenant_id,
            &key.key_hash,
            &key.key_prefix,
            &key.name,
            &active,
            &i(key.created_at)?,
            &opt_i(key.expires_at)?,
        ];
        match self.ares.generation {
            Generation::Single => {
                tx.execute(
                    &format!(
                        "INSERT INTO {keys} (id, tenant_id, key_hash, key_prefix, name, is_active, \
                         created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                    ),
                    &params,
                )
                .await
                .map_err(db)?;
            }
            Generation::Crates => {
                let scope = ares_scope(&key.scopes);
                let mut with_scope = params.to_vec();
                with_scope.push(&scope);
                tx.execute(
                    &format!(
                        "INSERT INTO {keys} (id, tenant_id, key_hash, key_prefix, name, is_active, \
                         created_at, expires_at, scopes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                    ),
                    &with_scope,
                )
                .await
                .map_err(db)?;
            }
        }
        Self::upsert_key_ext(&tx, key).await?;
        tx.commit().await.map_err(db)?;
        self.notify(&c, &format!("key:{}", key.key_hash)).await;
        Ok(())
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &self.key_sql("WHERE k.tenant_id = $1 ORDER BY k.created_at, k.id"),
                &[&tenant_id],
            )
            .await
            .map_err(db)?;
        rows.iter().map(Self::key).collect()
    }

    async fn delete_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let found = tx
            .query_opt(
                &self.key_sql("WHERE k.tenant_id = $1 AND k.id = $2 FOR UPDATE OF k"),
                &[&tenant_id, &key_id],
            )
            .await
            .map_err(db)?;
        let Some(row) = found else {
            return Ok(None);
        };
        let key = Self::key(&row)?;
        tx.execute(
            &format!("DELETE FROM {} WHERE id = $1", self.ares.table("api_keys")),
            &[&key_id],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.notify(&c, &format!("key:{}", key.key_hash)).await;
        Ok(Some(key))
    }

    async fn update_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let active: i32 = key.is_active.into();
        let keys = self.ares.table("api_keys");
        let sql = match self.ares.generation {
            Generation::Single => format!(
                "UPDATE {keys} SET name = $4, is_active = $5, expires_at = $6 \
                 WHERE id = $1 AND tenant_id = $2 AND key_hash = $3"
            ),
            Generation::Crates => format!(
                "UPDATE {keys} SET name = $4, is_active = $5, expires_at = $6, scopes = $7 \
                 WHERE id = $1 AND tenant_id = $2 AND key_hash = $3"
            ),
        };
        let scope = ares_scope(&key.scopes);
        let expires = opt_i(key.expires_at)?;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &key.id,
            &key.tenant_id,
            &key.key_hash,
            &key.name,
            &active,
            &expires,
        ];
        if self.ares.generation == Generation::Crates {
            params.push(&scope);
        }
        let updated = tx.execute(&sql, &params).await.map_err(db)?;
        if updated == 0 {
            return Ok(false);
        }
        Self::upsert_key_ext(&tx, key).await?;
        tx.commit().await.map_err(db)?;
        self.notify(&c, &format!("key:{}", key.key_hash)).await;
        Ok(true)
    }

    async fn record_key_usage(&self, uses: &[(String, u64, u64)]) -> Result<(), StoreError> {
        // One row per (key, day) in one statement: duplicates summed first (an upsert cannot
        // touch a row twice).
        let mut sums: std::collections::BTreeMap<(&str, u64), u64> = Default::default();
        for (h, day, n) in uses {
            *sums.entry((h.as_str(), *day)).or_default() += n;
        }
        if sums.is_empty() {
            return Ok(());
        }
        let mut hashes = Vec::with_capacity(sums.len());
        let mut days = Vec::with_capacity(sums.len());
        let mut counts = Vec::with_capacity(sums.len());
        for ((h, day), n) in sums {
            hashes.push(h.to_string());
            days.push(i(day)?);
            counts.push(i(n)?);
        }
        let c = self.client().await?;
        c.execute(
            &format!(
                "INSERT INTO {SCHEMA}.key_usage (key_hash, day, requests) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
                 ON CONFLICT (key_hash, day) DO UPDATE \
                 SET requests = {SCHEMA}.key_usage.requests + EXCLUDED.requests"
            ),
            &[&hashes, &days, &counts],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn key_usage(
        &self,
        key_hash: &str,
        from_day: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT day, requests FROM {SCHEMA}.key_usage \
                     WHERE key_hash = $1 AND day >= $2 ORDER BY day"
                ),
                &[&key_hash, &i(from_day)?],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| Ok((u(col(r, "day")?)?, u(col(r, "requests")?)?)))
            .collect()
    }

    async fn touch_api_keys(&self, used: &[(String, u64)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let mut latest: std::collections::BTreeMap<&str, u64> = Default::default();
        for (h, at) in used {
            let e = latest.entry(h.as_str()).or_default();
            *e = (*e).max(*at);
        }
        let hashes: Vec<String> = latest.keys().map(|h| h.to_string()).collect();
        let ats = latest
            .values()
            .map(|a| i(*a))
            .collect::<Result<Vec<_>, _>>()?;
        let c = self.client().await?;
        // Keys ARES made get their `key_ext` row here (scopes left to ARES's column).
        c.execute(
            &format!(
                "INSERT INTO {SCHEMA}.key_ext (key_id, last_used_at, imported) \
                 SELECT k.id, u.at, true FROM unnest($1::text[], $2::bigint[]) AS u(hash, at) \
                 JOIN {} k ON k.key_hash = u.hash \
                 ON CONFLICT (key_id) DO UPDATE SET last_used_at = \
                 greatest(coalesce({SCHEMA}.key_ext.last_used_at, 0), EXCLUDED.last_used_at)",
                self.ares.table("api_keys")
            ),
            &[&hashes, &ats],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let users = &self.ares.users;
        // ARES's unique index is on the email as written; the gateway's on its lower case.
        let taken = tx
            .query_opt(
                &format!("SELECT 1 FROM {users} WHERE lower(email) = lower($1) OR id = $2"),
                &[&user.email, &user.id],
            )
            .await
            .map_err(db)?;
        if taken.is_some() {
            return Err(StoreError::Conflict);
        }
        let created = i(user.created_at)?;
        tx.execute(
            &format!(
                "INSERT INTO {users} (id, email, password_hash, name, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $5)"
            ),
            &[
                &user.id,
                &user.email,
                &user.password_hash,
                &user.name,
                &created,
            ],
        )
        .await
        .map_err(db)?;
        // In the same transaction: a user row never stands without the gateway's.
        tx.execute(
            &format!("INSERT INTO {SCHEMA}.user_ext (user_id, disabled) VALUES ($1, $2)"),
            &[&user.id, &user.disabled],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.user_sql("WHERE lower(u.email) = lower($1) LIMIT 1"))
            .await
            .map_err(db)?;
        c.query_opt(&st, &[&email.trim()])
            .await
            .map_err(db)?
            .map(|r| Self::user(&r))
            .transpose()
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.user_sql("WHERE u.id = $1"))
            .await
            .map_err(db)?;
        c.query_opt(&st, &[&id])
            .await
            .map_err(db)?
            .map(|r| Self::user(&r))
            .transpose()
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            &format!(
                "UPDATE {} SET password_hash = $2, updated_at = $3 WHERE id = $1",
                self.ares.users
            ),
            &[&user_id, &hash, &i(unix_now())?],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn update_user(&self, user: &User) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let updated = tx
            .execute(
                &format!(
                    "UPDATE {} SET name = $2, password_hash = $3, updated_at = $4 \
                     WHERE id = $1 AND lower(email) = lower($5)",
                    self.ares.users
                ),
                &[
                    &user.id,
                    &user.name,
                    &user.password_hash,
                    &i(unix_now())?,
                    &user.email,
                ],
            )
            .await
            .map_err(db)?;
        if updated == 0 {
            return Ok(false);
        }
        tx.execute(
            &format!(
                "INSERT INTO {SCHEMA}.user_ext (user_id, disabled) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET disabled = EXCLUDED.disabled"
            ),
            &[&user.id, &user.disabled],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn delete_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let found = tx
            .query_opt(&self.user_sql("WHERE u.id = $1"), &[&id])
            .await
            .map_err(db)?;
        let Some(row) = found else {
            return Ok(None);
        };
        let user = Self::user(&row)?;
        tx.execute(
            &format!("DELETE FROM {SCHEMA}.refresh_tokens WHERE user_id = $1"),
            &[&id],
        )
        .await
        .map_err(db)?;
        if self.ares.sessions && self.ares.ares_users {
            tx.execute(
                &format!(
                    "DELETE FROM {} WHERE user_id = $1",
                    self.ares.table("sessions")
                ),
                &[&id],
            )
            .await
            .map_err(db)?;
        }
        // A user who owns ARES data (conversations, memory, agents) keeps it: ARES's foreign
        // keys refuse the delete, and the caller is told (disable the user instead).
        tx.execute(
            &format!("DELETE FROM {} WHERE id = $1", self.ares.users),
            &[&id],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(user))
    }

    async fn list_users(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let c = self.client().await?;
        let limit = i(limit as u64)?;
        let rows = c
            .query(
                &self.user_sql(&format!(
                    "WHERE starts_with(lower(u.email), $1) AND ($2::text IS NULL OR lower(u.email) > $2) \
                     AND {} ORDER BY lower(u.email) LIMIT $3",
                    self.people()
                )),
                &[&prefix, &after, &limit],
            )
            .await
            .map_err(db)?;
        rows.iter().map(Self::user).collect()
    }

    async fn put_refresh_token(&self, r: &RefreshRecord) -> Result<(), StoreError> {
        sessions::put_refresh_token(self, r).await
    }

    async fn get_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        sessions::get_refresh_token(self, token_hash).await
    }

    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        at: u64,
        successor: Option<&str>,
    ) -> Result<Option<Rotation>, StoreError> {
        sessions::mark_refresh_rotated(self, token_hash, at, successor).await
    }

    async fn revoke_refresh_family(&self, family_id: &str, until: u64) -> Result<(), StoreError> {
        sessions::revoke_refresh_family(self, family_id, until).await
    }

    async fn revoke_jti(&self, subject: &str, jti: &str, until: u64) -> Result<(), StoreError> {
        sessions::revoke_jti(self, subject, jti, until).await
    }

    async fn revoke_user_tokens(
        &self,
        subject: &str,
        through: u64,
        until: u64,
    ) -> Result<(), StoreError> {
        sessions::revoke_user_tokens(self, subject, through, until).await
    }

    async fn append_audit(&self, entry: &AuditEntry, keep_ms: u64) -> Result<(), StoreError> {
        sessions::append_audit(self, entry, keep_ms).await
    }

    async fn list_audit(
        &self,
        after: Option<&str>,
        target: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        sessions::list_audit(self, after, target, limit).await
    }

    async fn take_upstream_session(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        sessions::take_upstream_session(self, token_hash).await
    }

    async fn clone_agent_templates(
        &self,
        tenant_id: &str,
        product_type: &str,
    ) -> Result<Vec<String>, StoreError> {
        if !self.ares.agent_templates {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "INSERT INTO {agents} (id, tenant_id, agent_name, display_name, description, \
                     config, enabled, created_at, updated_at) \
                     SELECT md5(random()::text || clock_timestamp()::text || t.agent_name), $1, \
                     t.agent_name, t.display_name, t.description, t.config, true, $3, $3 \
                     FROM {templates} t WHERE t.product_type = $2 \
                     ON CONFLICT (tenant_id, agent_name) DO NOTHING RETURNING agent_name",
                    agents = self.ares.table("tenant_agents"),
                    templates = self.ares.table("agent_templates"),
                ),
                &[&tenant_id, &product_type, &i(unix_now())?],
            )
            .await
            .map_err(db)?;
        let mut names = rows
            .iter()
            .map(|r| col::<String>(r, "agent_name"))
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        Ok(names)
    }

    async fn export(&self, sink: &Sink) -> Result<(), StoreError> {
        export::export(self, sink).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ares_gets_its_one_scope_word() {
        let s = |v: &[&str]| ares_scope(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["ingest"]), "ingest");
        assert_eq!(s(&["full"]), "full");
        assert_eq!(s(&["chat"]), "full");
        assert_eq!(s(&["chat", "ingest"]), "full");
        assert_eq!(s(&[]), "full");
    }
}
