//! How the PostgreSQL store reads its rows: the SQL of ARES's tables joined with the gateway's
//! columns beside them, and each row as the store's record (every column read with `try_get`:
//! what the database holds never panics the gateway).

use tokio_postgres::Row;

use super::schema::{db, one_line, Generation, SCHEMA};
use super::{i, u, PostgresStore};
use crate::error::StoreError;
use crate::store::{
    ApiKeyRecord, LimitOverrides, Records, RefreshRecord, Tenant, TenantStatus, TokenRef, User,
};

pub(super) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    name: &str,
) -> Result<T, StoreError> {
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {}", one_line(&e))))
}

pub(super) fn opt_u(v: Option<i64>) -> Result<Option<u64>, StoreError> {
    v.map(u).transpose()
}

pub(super) fn opt_i(v: Option<u64>) -> Result<Option<i64>, StoreError> {
    v.map(i).transpose()
}

pub(super) fn limits(row: &Row) -> Result<LimitOverrides, StoreError> {
    Ok(LimitOverrides {
        requests_per_minute: opt_u(col(row, "requests_per_minute")?)?,
        requests_per_day: opt_u(col(row, "requests_per_day")?)?,
        requests_per_month: opt_u(col(row, "requests_per_month")?)?,
    })
}

/// ARES's one scope word (`full`, `ingest`) as the gateway's scope list, and back: a key limited
/// to `ingest` at the gateway is `ingest` at ARES, any other is `full` there (the gateway checks
/// its finer scopes before ARES sees the request).
pub(super) fn ares_scope(scopes: &[String]) -> &'static str {
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
    pub(super) fn tenant_sql(&self, filter: &str) -> String {
        format!(
            "SELECT t.id, t.name, t.tier, t.created_at, coalesce(e.suspended, false) AS suspended, \
             e.requests_per_minute, e.requests_per_day, e.requests_per_month \
             FROM {} t LEFT JOIN {SCHEMA}.tenant_ext e ON e.tenant_id = t.id {filter}",
            self.ares.table("tenants")
        )
    }

    pub(super) fn key_sql(&self, filter: &str) -> String {
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

    pub(super) fn user_sql(&self, filter: &str) -> String {
        format!(
            "SELECT u.id, u.email, u.name, u.password_hash, u.created_at, \
             coalesce(e.disabled, false) AS disabled \
             FROM {} u LEFT JOIN {SCHEMA}.user_ext e ON e.user_id = u.id {filter}",
            self.ares.users
        )
    }

    /// Users who are people: not the rows that stand for tenants.
    pub(super) fn people(&self) -> String {
        format!("NOT u.email LIKE '%{TENANT_USER_DOMAIN}'")
    }

    pub(super) fn tenant(row: &Row) -> Result<Tenant, StoreError> {
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

    pub(super) fn key(row: &Row) -> Result<ApiKeyRecord, StoreError> {
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

    pub(super) fn user(row: &Row) -> Result<User, StoreError> {
        Ok(User {
            id: col(row, "id")?,
            email: col::<String>(row, "email")?.trim().to_lowercase(),
            name: col(row, "name")?,
            password_hash: col(row, "password_hash")?,
            created_at: u(col(row, "created_at")?)?,
            disabled: col(row, "disabled")?,
        })
    }

    pub(super) fn refresh(row: &Row) -> Result<RefreshRecord, StoreError> {
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

    pub(super) async fn upsert_key_ext(
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
    pub(super) async fn mirror_to_redis<'a>(
        &'a self,
        f: impl FnOnce(&'a dyn Records) -> futures_util::future::BoxFuture<'a, Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        match &self.redis {
            Some(r) => f(crate::store::Store::records(&**r)).await,
            None => Ok(()),
        }
    }
}

/// Whether an access token is revoked, as one statement: by its id ($1), or by its user's ($2)
/// "log out everywhere" line, both as of $3 (unix seconds). Read with [`revoked`].
pub(super) fn revocation_sql() -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM {SCHEMA}.revoked_jtis WHERE jti = $1 AND until > $3), \
         (SELECT through FROM {SCHEMA}.user_cutoffs WHERE user_id = $2 AND until > $3)"
    )
}

/// The answer of [`revocation_sql`] for `token`.
pub(super) fn revoked(row: &Row, token: TokenRef<'_>) -> Result<bool, StoreError> {
    let by_id: bool = row
        .try_get(0)
        .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
    let through: Option<i64> = row
        .try_get(1)
        .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
    let cut = opt_u(through)?.is_some_and(|t| token.issued_at <= t);
    Ok((by_id && token.jti.is_some()) || cut)
}
