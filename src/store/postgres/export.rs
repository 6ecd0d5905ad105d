//! Every record of the PostgreSQL store as export lines (`ares-gateway export`): ARES's users
//! (people, not the rows that stand for tenants), tenants and keys with the gateway's columns,
//! live sessions and revocations, the counts of the current calendar periods; and, when the
//! counters live in Redis, Redis's.

use super::rows::*;
use super::schema::{db, SCHEMA};
use super::{i, u, PostgresStore};
use crate::error::StoreError;
use crate::store::records::{self, Record, Sink};
use crate::util::unix_now;

pub(super) async fn export(s: &PostgresStore, sink: &Sink) -> Result<(), StoreError> {
    let now = unix_now();
    let c = s.client().await?;
    let mut all: Vec<Record> = Vec::new();
    for r in c
        .query(&s.tenant_sql("ORDER BY t.id"), &[])
        .await
        .map_err(db)?
    {
        all.push(Record::Tenant(PostgresStore::tenant(&r)?));
    }
    for r in c
        .query(&s.key_sql("ORDER BY k.id"), &[])
        .await
        .map_err(db)?
    {
        all.push(Record::ApiKey(PostgresStore::key(&r)?));
    }
    for r in c
        .query(&s.user_sql("ORDER BY u.id"), &[])
        .await
        .map_err(db)?
    {
        all.push(Record::User(PostgresStore::user(&r)?));
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
        all.push(Record::RefreshToken(PostgresStore::refresh(&r)?));
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
            &format!("SELECT user_id, through, until FROM {SCHEMA}.user_cutoffs WHERE until > $1"),
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
    all.extend(s.counter_records(&c).await?);
    drop(c);
    for r in all {
        if !records::send(sink, r).await {
            return Ok(());
        }
    }
    if let Some(r) = &s.redis {
        // Counters kept in Redis (its other records are this store's, mirrored).
        crate::store::Store::records(&**r).export(sink).await?;
    }
    Ok(())
}
