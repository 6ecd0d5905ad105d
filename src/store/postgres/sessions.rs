//! The PostgreSQL store's sessions and audit (the `Records` methods `records.rs` hands here):
//! refresh tokens and their families, access-token revocations and "log out everywhere" lines
//! (mirrored into Redis when the counters live there), the audit trail, and ARES's own sessions
//! during a migration. All in the gateway's schema but ARES's `sessions`.

use super::rows::*;
use super::schema::{db, SCHEMA};
use super::{i, u, PostgresStore};
use crate::error::StoreError;
use crate::store::{AuditEntry, RefreshRecord, Rotation};
use crate::util::unix_now;

pub(super) async fn put_refresh_token(
    s: &PostgresStore,
    r: &RefreshRecord,
) -> Result<(), StoreError> {
    let c = s.client().await?;
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

pub(super) async fn get_refresh_token(
    s: &PostgresStore,
    token_hash: &str,
) -> Result<Option<RefreshRecord>, StoreError> {
    let c = s.client().await?;
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
    let r = PostgresStore::refresh(&row)?;
    let family_dead: bool = col(&row, "family_dead")?;
    let cut = opt_u(col(&row, "through")?)?.is_some_and(|t| r.issued_at <= t);
    Ok((r.expires_at > now && !family_dead && !cut).then_some(r))
}

pub(super) async fn mark_refresh_rotated(
    s: &PostgresStore,
    token_hash: &str,
    at: u64,
    successor: Option<&str>,
) -> Result<Option<Rotation>, StoreError> {
    let c = s.client().await?;
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

pub(super) async fn revoke_refresh_family(
    s: &PostgresStore,
    family_id: &str,
    until: u64,
) -> Result<(), StoreError> {
    let c = s.client().await?;
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

pub(super) async fn revoke_jti(
    s: &PostgresStore,
    subject: &str,
    jti: &str,
    until: u64,
) -> Result<(), StoreError> {
    if until <= unix_now() {
        return Ok(());
    }
    let c = s.client().await?;
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
    s.mirror_to_redis(|r| Box::pin(r.revoke_jti(subject, jti, until)))
        .await
}

pub(super) async fn revoke_user_tokens(
    s: &PostgresStore,
    subject: &str,
    through: u64,
    until: u64,
) -> Result<(), StoreError> {
    let c = s.client().await?;
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
    s.mirror_to_redis(|r| Box::pin(r.revoke_user_tokens(subject, through, until)))
        .await
}

pub(super) async fn append_audit(
    s: &PostgresStore,
    entry: &AuditEntry,
    keep_ms: u64,
) -> Result<(), StoreError> {
    let mut c = s.client().await?;
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

pub(super) async fn list_audit(
    s: &PostgresStore,
    after: Option<&str>,
    target: &str,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let c = s.client().await?;
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

pub(super) async fn take_upstream_session(
    s: &PostgresStore,
    token_hash: &str,
) -> Result<Option<String>, StoreError> {
    if !(s.ares.sessions && s.ares.ares_users) {
        return Ok(None);
    }
    let c = s.client().await?;
    // ARES can hold one token in several sessions (two logins in one second sign the same
    // claims): all of them end.
    let rows = c
        .query(
            &format!(
                "DELETE FROM {} WHERE token_hash = $1 AND expires_at > $2 RETURNING user_id",
                s.ares.table("sessions")
            ),
            &[&token_hash, &i(unix_now())?],
        )
        .await
        .map_err(db)?;
    rows.first()
        .map(|r| col::<String>(r, "user_id"))
        .transpose()
}
