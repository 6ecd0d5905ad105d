//! The PostgreSQL store's `Lookup` and `Records`: ARES's `users`, `tenants` and `api_keys` rows
//! with the gateway's columns beside them (`*_ext`), and the gateway's own tables. Every write of
//! more than one row is one transaction; keys and tenants changed are announced to the other
//! replicas (`NOTIFY`).

use tokio_postgres::Row;

use super::schema::{db, one_line, Generation, SCHEMA};
use super::{i, u, PostgresStore};
use crate::error::StoreError;
use crate::store::records::{self, Record, Sink};
use crate::store::{
    ApiKeyRecord, AuditEntry, LimitOverrides, Lookup, Records, RefreshRecord, Rotation, Tenant,
    TenantStatus, TokenRef, User,
};
use crate::util::unix_now;
use async_trait::async_trait;

fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    name: &str,
) -> Result<T, StoreError> {
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {}", one_line(&e))))
}

fn opt_u(v: Option<i64>) -> Result<Option<u64>, StoreError> {
    v.map(u).transpose()
}

fn opt_i(v: Option<u64>) -> Result<Option<i64>, StoreError> {
    v.map(i).transpose()
}

fn limits(row: &Row) -> Result<LimitOverrides, StoreError> {
    Ok(LimitOverrides {
        requests_per_minute: opt_u(col(row, "requests_per_minute")?)?,
        requests_per_day: opt_u(col(row, "requests_per_day")?)?,
        requests_per_month: opt_u(col(row, "requests_per_month")?)?,
    })
}

/// ARES's one scope word (`full`, `ingest`) as the gateway's scope list, and back: a key limited
/// to `ingest` at the gateway is `ingest` at ARES, any other is `full` there (the gateway checks
/// its finer scopes before ARES sees the request).
fn ares_scope(scopes: &[String]) -> &'static str {
    if scopes.iter().all(|s| s == "ingest") && !scopes.is_empty() {
        "ingest"
    } else {
        "full"
    }
}

/// The users row that stands for a tenant in ARES's `users`: API-key requests reach ARES as its
/// JWT requests with the tenant id as `sub` (minted tokens), and ARES's conversations and memory
/// need that id to be a user. It cannot log in (its hash is no PHC string) and is not listed.
pub const TENANT_USER_DOMAIN: &str = "@tenants.ares-gateway.invalid";

impl PostgresStore {
    fn tenant_sql(&self, filter: &str) -> String {
        format!(
            "SELECT t.id, t.name, t.tier, t.created_at, coalesce(e.suspended, false) AS suspended, \
             e.requests_per_minute, e.requests_per_day, e.requests_per_month \
             FROM {} t LEFT JOIN {SCHEMA}.tenant_ext e ON e.tenant_id = t.id {filter}",
            self.ares.table("tenants")
        )
    }

    fn key_sql(&self, filter: &str) -> String {
        let ares_scopes = match self.ares.generation {
            Generation::Crates => "k.scopes",
            Generation::Single => "NULL::text",
        };
        format!(
            "SELECT k.id, k.tenant_id, k.key_hash, k.key_prefix, k.name, k.is_active, \
             k.created_at, k.expires_at, {ares_scopes} AS ares_scopes, e.scopes, \
             e.last_used_at, (e.key_id IS NULL OR e.imported) AS imported, \
             e.requests_per_minute, e.requests_per_day, e.requests_per_month \
             FROM {} k LEFT JOIN {SCHEMA}.key_ext e ON e.key_id = k.id {filter}",
            self.ares.table("api_keys")
        )
    }

    fn user_sql(&self, filter: &str) -> String {
        format!(
            "SELECT u.id, u.email, u.name, u.password_hash, u.created_at, \
             coalesce(e.disabled, false) AS disabled \
             FROM {} u LEFT JOIN {SCHEMA}.user_ext e ON e.user_id = u.id {filter}",
            self.ares.users
        )
    }

    /// Users who are people: not the rows that stand for tenants.
    fn people(&self) -> String {
        format!("NOT u.email LIKE '%{TENANT_USER_DOMAIN}'")
    }

    fn tenant(row: &Row) -> Result<Tenant, StoreError> {
        let suspended: bool = col(row, "suspended")?;
        Ok(Tenant {
            id: col(row, "id")?,
            name: col(row, "name")?,
            tier: col(row, "tier")?,
            status: if suspended {
                TenantStatus::Suspended
            } else {
                TenantStatus::Active
            },
            created_at: u(col(row, "created_at")?)?,
            limits: limits(row)?,
        })
    }

    fn key(row: &Row) -> Result<ApiKeyRecord, StoreError> {
        let own: Option<Vec<String>> = col(row, "scopes")?;
        let ares: Option<String> = col(row, "ares_scopes")?;
        let scopes = match (own, ares) {
            (Some(s), _) => s,
            (None, Some(a)) if a.trim() == "ingest" => vec!["ingest".into()],
            _ => vec!["full".into()],
        };
        let active: i32 = col(row, "is_active")?;
        Ok(ApiKeyRecord {
            id: col(row, "id")?,
            tenant_id: col(row, "tenant_id")?,
            key_hash: col::<String>(row, "key_hash")?.to_ascii_lowercase(),
            key_prefix: col(row, "key_prefix")?,
            name: col(row, "name")?,
            scopes,
            is_active: active != 0,
            created_at: u(col(row, "created_at")?)?,
            expires_at: opt_u(col(row, "expires_at")?)?,
            last_used_at: opt_u(col(row, "last_used_at")?)?,
            imported: col(row, "imported")?,
            limits: limits(row)?,
        })
    }

    fn user(row: &Row) -> Result<User, StoreError> {
        Ok(User {
            id: col(row, "id")?,
            email: col::<String>(row, "email")?.trim().to_lowercase(),
            name: col(row, "name")?,
            password_hash: col(row, "password_hash")?,
            created_at: u(col(row, "created_at")?)?,
            disabled: col(row, "disabled")?,
        })
    }

    fn refresh(row: &Row) -> Result<RefreshRecord, StoreError> {
        Ok(RefreshRecord {
            token_hash: col(row, "token_hash")?,
            user_id: col(row, "user_id")?,
            family_id: col(row, "family_id")?,
            issued_at: u(col(row, "issued_at")?)?,
            expires_at: u(col(row, "expires_at")?)?,
            rotated_at: opt_u(col(row, "rotated_at")?)?,
            successor: col(row, "successor")?,
        })
    }

    async fn upsert_key_ext(
        tx: &deadpool_postgres::Transaction<'_>,
        key: &ApiKeyRecord,
    ) -> Result<(), StoreError> {
        tx.execute(
            &format!(
                "INSERT INTO {SCHEMA}.key_ext (key_id, scopes, last_used_at, imported, \
                 requests_per_minute, requests_per_day, requests_per_month) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key_id) DO UPDATE SET \
                 scopes = EXCLUDED.scopes, last_used_at = EXCLUDED.last_used_at, \
                 imported = EXCLUDED.imported, requests_per_minute = EXCLUDED.requests_per_minute, \
                 requests_per_day = EXCLUDED.requests_per_day, \
                 requests_per_month = EXCLUDED.requests_per_month"
            ),
            &[
                &key.id,
                &key.scopes,
                &opt_i(key.last_used_at)?,
                &key.imported,
                &opt_i(key.limits.requests_per_minute)?,
                &opt_i(key.limits.requests_per_day)?,
                &opt_i(key.limits.requests_per_month)?,
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Also keep a revocation where the counters decide (Redis), when they live there.
    async fn mirror_to_redis<'a>(
        &'a self,
        f: impl FnOnce(&'a dyn Records) -> futures_util::future::BoxFuture<'a, Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        match &self.redis {
            Some(r) => f(crate::store::Store::records(&**r)).await,
            None => Ok(()),
        }
    }
}

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
        let st = c
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM {SCHEMA}.revoked_jtis WHERE jti = $1 AND until > $3), \
                 (SELECT through FROM {SCHEMA}.user_cutoffs WHERE user_id = $2 AND until > $3)"
            ))
            .await
            .map_err(db)?;
        let jti = token.jti.unwrap_or("");
        let row = c
            .query_one(&st, &[&jti, &token.subject, &i(unix_now())?])
            .await
            .map_err(db)?;
        let by_id: bool = row
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
        let through: Option<i64> = row
            .try_get(1)
            .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
        let cut = match opt_u(through)? {
            Some(t) => token.issued_at <= t,
            None => false,
        };
        Ok((by_id && token.jti.is_some()) || cut)
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
        let c = self.client().await?;
        c.execute(
            &format!(
                "INSERT INTO {SCHEMA}.refresh_tokens (token_hash, user_id, family_id, issued_at, \
                 expires_at, rotated_at, successor) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (token_hash) DO UPDATE SET user_id = EXCLUDED.user_id, \
                 family_id = EXCLUDED.family_id, issued_at = EXCLUDED.issued_at, \
                 expires_at = EXCLUDED.expires_at, rotated_at = EXCLUDED.rotated_at, \
                 successor = EXCLUDED.successor"
            ),
            &[
                &r.token_hash,
                &r.user_id,
                &r.family_id,
                &i(r.issued_at)?,
                &i(r.expires_at)?,
                &opt_i(r.rotated_at)?,
                &r.successor,
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn get_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT r.token_hash, r.user_id, r.family_id, r.issued_at, r.expires_at, \
                 r.rotated_at, r.successor, \
                 EXISTS (SELECT 1 FROM {SCHEMA}.revoked_families f \
                   WHERE f.family_id = r.family_id AND f.until > $2) AS family_dead, \
                 (SELECT c.through FROM {SCHEMA}.user_cutoffs c \
                   WHERE c.user_id = r.user_id AND c.until > $2) AS through \
                 FROM {SCHEMA}.refresh_tokens r WHERE r.token_hash = $1"
            ))
            .await
            .map_err(db)?;
        let now = unix_now();
        let Some(row) = c
            .query_opt(&st, &[&token_hash, &i(now)?])
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let r = Self::refresh(&row)?;
        let family_dead: bool = col(&row, "family_dead")?;
        let cut = opt_u(col(&row, "through")?)?.is_some_and(|t| r.issued_at <= t);
        Ok((r.expires_at > now && !family_dead && !cut).then_some(r))
    }

    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        at: u64,
        successor: Option<&str>,
    ) -> Result<Option<Rotation>, StoreError> {
        let c = self.client().await?;
        // The first rotation wins: of concurrent calls exactly one updates the row.
        let rotated = c
            .execute(
                &format!(
                    "UPDATE {SCHEMA}.refresh_tokens SET rotated_at = $2, successor = $3 \
                     WHERE token_hash = $1 AND rotated_at IS NULL"
                ),
                &[&token_hash, &i(at)?, &successor],
            )
            .await
            .map_err(db)?;
        if rotated == 1 {
            return Ok(None);
        }
        let row = c
            .query_opt(
                &format!(
                    "SELECT rotated_at, successor FROM {SCHEMA}.refresh_tokens WHERE token_hash = $1"
                ),
                &[&token_hash],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(opt_u(col(&row, "rotated_at")?)?.map(|at| Rotation {
            at,
            successor: row.try_get("successor").ok().flatten(),
        }))
    }

    async fn revoke_refresh_family(&self, family_id: &str, until: u64) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            &format!(
                "INSERT INTO {SCHEMA}.revoked_families (family_id, until) VALUES ($1, $2) \
                 ON CONFLICT (family_id) DO UPDATE SET until = \
                 greatest({SCHEMA}.revoked_families.until, EXCLUDED.until)"
            ),
            &[&family_id, &i(until)?],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn revoke_jti(&self, subject: &str, jti: &str, until: u64) -> Result<(), StoreError> {
        if until <= unix_now() {
            return Ok(());
        }
        let c = self.client().await?;
        c.execute(
            &format!(
                "INSERT INTO {SCHEMA}.revoked_jtis (jti, subject, until) VALUES ($1, $2, $3) \
                 ON CONFLICT (jti) DO UPDATE SET until = \
                 greatest({SCHEMA}.revoked_jtis.until, EXCLUDED.until)"
            ),
            &[&jti, &subject, &i(until)?],
        )
        .await
        .map_err(db)?;
        self.mirror_to_redis(|r| Box::pin(r.revoke_jti(subject, jti, until)))
            .await
    }

    async fn revoke_user_tokens(
        &self,
        subject: &str,
        through: u64,
        until: u64,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            &format!(
                "INSERT INTO {SCHEMA}.user_cutoffs (user_id, through, until) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET \
                 through = greatest({SCHEMA}.user_cutoffs.through, EXCLUDED.through), \
                 until = greatest({SCHEMA}.user_cutoffs.until, EXCLUDED.until)"
            ),
            &[&subject, &i(through)?, &i(until)?],
        )
        .await
        .map_err(db)?;
        self.mirror_to_redis(|r| Box::pin(r.revoke_user_tokens(subject, through, until)))
            .await
    }

    async fn append_audit(&self, entry: &AuditEntry, keep_ms: u64) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        // Ids begin with the 13-digit time: older than the retention is a range of the key.
        let horizon = format!("{:013}", entry.at_ms.saturating_sub(keep_ms));
        tx.execute(
            &format!("DELETE FROM {SCHEMA}.audit WHERE id < $1"),
            &[&horizon],
        )
        .await
        .map_err(db)?;
        tx.execute(
            &format!(
                "INSERT INTO {SCHEMA}.audit (id, at_ms, actor, action, target, outcome) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING"
            ),
            &[
                &entry.id,
                &i(entry.at_ms)?,
                &entry.actor,
                &entry.action,
                &entry.target,
                &entry.outcome,
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn list_audit(
        &self,
        after: Option<&str>,
        target: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT id, at_ms, actor, action, target, outcome FROM {SCHEMA}.audit \
                     WHERE ($1::text IS NULL OR id > $1) AND starts_with(target, $2) \
                     ORDER BY id LIMIT $3"
                ),
                &[&after, &target, &i(limit as u64)?],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: col(r, "id")?,
                    at_ms: u(col(r, "at_ms")?)?,
                    actor: col(r, "actor")?,
                    action: col(r, "action")?,
                    target: col(r, "target")?,
                    outcome: col(r, "outcome")?,
                })
            })
            .collect()
    }

    async fn take_upstream_session(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        if !(self.ares.sessions && self.ares.ares_users) {
            return Ok(None);
        }
        let c = self.client().await?;
        // ARES can hold one token in several sessions (two logins in one second sign the same
        // claims): all of them end.
        let rows = c
            .query(
                &format!(
                    "DELETE FROM {} WHERE token_hash = $1 AND expires_at > $2 RETURNING user_id",
                    self.ares.table("sessions")
                ),
                &[&token_hash, &i(unix_now())?],
            )
            .await
            .map_err(db)?;
        rows.first()
            .map(|r| col::<String>(r, "user_id"))
            .transpose()
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
        let now = unix_now();
        let c = self.client().await?;
        let mut all: Vec<Record> = Vec::new();
        for r in c
            .query(&self.tenant_sql("ORDER BY t.id"), &[])
            .await
            .map_err(db)?
        {
            all.push(Record::Tenant(Self::tenant(&r)?));
        }
        for r in c
            .query(&self.key_sql("ORDER BY k.id"), &[])
            .await
            .map_err(db)?
        {
            all.push(Record::ApiKey(Self::key(&r)?));
        }
        for r in c
            .query(&self.user_sql("ORDER BY u.id"), &[])
            .await
            .map_err(db)?
        {
            all.push(Record::User(Self::user(&r)?));
        }
        let now_i = i(now)?;
        for r in c
            .query(
                &format!(
                    "SELECT token_hash, user_id, family_id, issued_at, expires_at, rotated_at, \
                     successor FROM {SCHEMA}.refresh_tokens WHERE expires_at > $1"
                ),
                &[&now_i],
            )
            .await
            .map_err(db)?
        {
            all.push(Record::RefreshToken(Self::refresh(&r)?));
        }
        for r in c
            .query(
                &format!("SELECT family_id, until FROM {SCHEMA}.revoked_families WHERE until > $1"),
                &[&now_i],
            )
            .await
            .map_err(db)?
        {
            all.push(Record::RevokedFamily {
                family_id: col(&r, "family_id")?,
                until: u(col(&r, "until")?)?,
            });
        }
        for r in c
            .query(
                &format!("SELECT jti, subject, until FROM {SCHEMA}.revoked_jtis WHERE until > $1"),
                &[&now_i],
            )
            .await
            .map_err(db)?
        {
            all.push(Record::RevokedToken {
                subject: col(&r, "subject")?,
                jti: col(&r, "jti")?,
                until: u(col(&r, "until")?)?,
            });
        }
        for r in c
            .query(
                &format!(
                    "SELECT user_id, through, until FROM {SCHEMA}.user_cutoffs WHERE until > $1"
                ),
                &[&now_i],
            )
            .await
            .map_err(db)?
        {
            all.push(Record::RevokedUser {
                subject: col(&r, "user_id")?,
                through: u(col(&r, "through")?)?,
                until: u(col(&r, "until")?)?,
            });
        }
        all.extend(self.counter_records(&c).await?);
        drop(c);
        for r in all {
            if !records::send(sink, r).await {
                return Ok(());
            }
        }
        if let Some(r) = &self.redis {
            // Counters kept in Redis (its other records are this store's, mirrored).
            crate::store::Store::records(&**r).export(sink).await?;
        }
        Ok(())
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
