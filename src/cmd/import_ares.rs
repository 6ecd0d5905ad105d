//! `ares-gateway import-ares`: carry ARES's users, tenants and API keys into the gateway's store,
//! reading ARES's PostgreSQL database in one read-only transaction.
//!
//! What is kept: user ids (so `sub` still matches ARES's data) and their Argon2id hashes (old
//! passwords log in), tenant ids, names and tiers, and API keys by ARES's stored hash (SHA-256 of
//! the 64 hex after `ares_`, which is how the gateway looks an ARES-shaped key up), with their ids,
//! names, active flags and expiry.
//!
//! Idempotent: a row already in the store (same id) counts as present and is not written again.
//! A row that cannot be carried (a hash that is not Argon2id PHC, an email taken by another user,
//! a malformed key hash, a tier the config does not define, ...) is listed by id with the reason
//! and skipped whole. Nothing secret or personal is printed: ids, counts and reasons only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use tokio_postgres::{Client, Row};

use crate::auth::api_key;
use crate::error::StoreError;
use crate::ratelimit::Plan;
use crate::store::StoreHandle;
use crate::store::{ApiKeyRecord, Tenant, TenantStatus, User};

/// How long connecting to ARES's database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one kind of record came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Rows in ARES's table.
    pub found: usize,
    /// Written to the store (or, in a dry run, that would be).
    pub imported: usize,
    /// Already in the store from an earlier run.
    pub present: usize,
    pub skipped: usize,
}

/// A row left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub kind: &'static str,
    pub id: String,
    pub reason: String,
}

/// The outcome of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub dry_run: bool,
    pub tenants: Counts,
    pub users: Counts,
    pub keys: Counts,
    pub skipped: Vec<Skipped>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would import"
        } else {
            "imported"
        };
        writeln!(
            f,
            "{:<9} {:>7} {:>14} {:>16} {:>8}",
            "", "in ARES", verb, "already present", "skipped"
        )?;
        for (name, c) in [
            ("tenants", self.tenants),
            ("users", self.users),
            ("api keys", self.keys),
        ] {
            writeln!(
                f,
                "{name:<9} {:>7} {:>14} {:>16} {:>8}",
                c.found, c.imported, c.present, c.skipped
            )?;
        }
        for s in &self.skipped {
            writeln!(f, "skipped {} {}: {}", s.kind, s.id, s.reason)?;
        }
        Ok(())
    }
}

/// Connect to ARES's database; a one-line error when it cannot be reached. The URL is never part
/// of the message (it may hold a password).
pub async fn connect(database_url: &str) -> Result<Client, String> {
    // TLS as the URL's sslmode says (`prefer` by default), verified by the system's roots.
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
        crate::net::tls::upstream_client_config(true, None)?,
    );
    let connecting = tokio_postgres::connect(database_url, tls);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| "cannot reach the ARES database: timed out".to_string())?
        .map_err(|e| format!("cannot reach the ARES database: {}", one_line(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "ARES database connection ended");
        }
    });
    Ok(client)
}

/// Read ARES's tables and write what the store lacks (nothing when `dry_run`).
pub async fn run(
    client: &mut Client,
    store: &StoreHandle,
    plans: &BTreeMap<String, Plan>,
    dry_run: bool,
) -> Result<Report, String> {
    // One snapshot of all three tables, and no way to write through this session.
    let tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(|e| format!("cannot read the ARES database: {}", one_line(&e)))?;
    let read = |table: &'static str, sql: &'static str| {
        let tx = &tx;
        async move {
            tx.query(sql, &[])
                .await
                .map_err(|e| format!("cannot read ARES table {table}: {}", one_line(&e)))
        }
    };
    let tenants = read(
        "tenants",
        "SELECT id, name, tier, created_at FROM tenants ORDER BY id",
    )
    .await?;
    let users = read(
        "users",
        "SELECT id, email, password_hash, name, created_at FROM users ORDER BY id",
    )
    .await?;
    let keys = read(
        "api_keys",
        "SELECT id, tenant_id, key_hash, key_prefix, name, is_active, created_at, expires_at \
         FROM api_keys ORDER BY id",
    )
    .await?;
    tx.rollback()
        .await
        .map_err(|e| format!("cannot end the read: {}", one_line(&e)))?;

    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    let mut tenant_ids = BTreeSet::new();
    for row in &tenants {
        if let Some(id) = import_tenant(row, store, plans, dry_run, &mut report).await? {
            tenant_ids.insert(id);
        }
    }
    for row in &users {
        import_user(row, store, dry_run, &mut report).await?;
    }
    for row in &keys {
        import_key(row, store, &tenant_ids, dry_run, &mut report).await?;
    }
    Ok(report)
}

/// An error's text on one line (tokio-postgres appends its cause, e.g. the server's message).
fn one_line(e: &dyn std::error::Error) -> String {
    e.to_string().replace(['\n', '\r'], " ")
}

fn store_error(e: StoreError) -> String {
    format!("the gateway's store failed: {e}")
}

/// An id the gateway can carry: printable ASCII, no spaces, at most 128 bytes.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| (0x21..0x7f).contains(&b))
}

fn text(row: &Row, col: &str) -> Result<Option<String>, String> {
    row.try_get::<_, Option<String>>(col)
        .map_err(|e| format!("unexpected type of column {col}: {}", one_line(&e)))
}

fn int(row: &Row, col: &str) -> Result<Option<i64>, String> {
    // ARES declares its times BIGINT and is_active INTEGER; accept either width.
    if let Ok(v) = row.try_get::<_, Option<i64>>(col) {
        return Ok(v);
    }
    row.try_get::<_, Option<i32>>(col)
        .map(|v| v.map(i64::from))
        .map_err(|e| format!("unexpected type of column {col}: {}", one_line(&e)))
}

/// A unix time from ARES (seconds), or `None` when absent or negative.
fn seconds(v: Option<i64>) -> Option<u64> {
    v.and_then(|s| u64::try_from(s).ok())
}

fn skip(report: &mut Report, kind: &'static str, id: &str, reason: impl Into<String>) {
    report.skipped.push(Skipped {
        kind,
        id: id.chars().take(128).collect(),
        reason: reason.into(),
    });
}

async fn import_tenant(
    row: &Row,
    store: &StoreHandle,
    plans: &BTreeMap<String, Plan>,
    dry_run: bool,
    report: &mut Report,
) -> Result<Option<String>, String> {
    let lookup = store.lookup();
    let records = store.records();
    report.tenants.found += 1;
    let id = text(row, "id")?.unwrap_or_default();
    let name = text(row, "name")?.unwrap_or_default();
    let tier = text(row, "tier")?
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let problem = if !valid_id(&id) {
        Some("id is empty, too long or not printable".to_string())
    } else if crate::api::check_name("name", &name).is_err() {
        Some("name is empty, longer than 200 characters or holds control characters".into())
    } else if !plans.contains_key(&tier) {
        Some(format!(
            "tier {tier:?} is not a plan in gateway.yaml (plans: {})",
            plans.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    } else {
        None
    };
    if let Some(reason) = problem {
        report.tenants.skipped += 1;
        skip(report, "tenant", &id, reason);
        return Ok(None);
    }
    if lookup
        .call_keep_error(lookup.get_tenant(&id))
        .await
        .map_err(store_error)?
        .is_some()
    {
        report.tenants.present += 1;
        return Ok(Some(id));
    }
    let tenant = Tenant {
        id: id.clone(),
        name: name.trim().to_string(),
        tier,
        status: TenantStatus::Active,
        created_at: seconds(int(row, "created_at")?).unwrap_or(0),
        limits: Default::default(),
    };
    if !dry_run {
        records
            .call_keep_error(records.put_tenant(&tenant))
            .await
            .map_err(store_error)?;
    }
    report.tenants.imported += 1;
    Ok(Some(id))
}

async fn import_user(
    row: &Row,
    store: &StoreHandle,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), String> {
    let records = store.records();
    report.users.found += 1;
    let id = text(row, "id")?.unwrap_or_default();
    let raw_email = text(row, "email")?.unwrap_or_default();
    let hash = text(row, "password_hash")?.unwrap_or_default();
    let name = text(row, "name")?.unwrap_or_default();
    let email = crate::api::auth::normalize_email(&raw_email);
    let problem = if !valid_id(&id) {
        Some("id is empty, too long or not printable")
    } else if email.is_err() {
        Some("email is not a valid address")
    } else if !is_argon2id_phc(&hash) {
        Some("password hash is not an Argon2id PHC string")
    } else {
        None
    };
    let email = match (problem, email) {
        (None, Ok(email)) => email,
        (problem, _) => {
            report.users.skipped += 1;
            skip(report, "user", &id, problem.unwrap_or("invalid row"));
            return Ok(());
        }
    };
    if let Some(existing) = records
        .call_keep_error(records.get_user(&id))
        .await
        .map_err(store_error)?
    {
        if existing.email == email {
            report.users.present += 1;
        } else {
            report.users.skipped += 1;
            skip(
                report,
                "user",
                &id,
                "a user with this id but another email exists",
            );
        }
        return Ok(());
    }
    let holder = records
        .call_keep_error(records.get_user_by_email(&email))
        .await
        .map_err(store_error)?;
    if let Some(holder) = holder {
        report.users.skipped += 1;
        let reason = format!("email already belongs to user {}", holder.id);
        skip(report, "user", &id, reason);
        return Ok(());
    }
    let name = match crate::api::check_name("name", &name) {
        Ok(n) => n,
        // ARES allows an empty name; the gateway keeps one for display only.
        Err(_) => email.split('@').next().unwrap_or("user").to_string(),
    };
    let user = User {
        id: id.clone(),
        email,
        name,
        password_hash: hash,
        created_at: seconds(int(row, "created_at")?).unwrap_or(0),
        disabled: false,
    };
    if !dry_run {
        match records.call_keep_error(records.create_user(&user)).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                report.users.skipped += 1;
                skip(report, "user", &id, "email already taken");
                return Ok(());
            }
            Err(e) => return Err(store_error(e)),
        }
    }
    report.users.imported += 1;
    Ok(())
}

fn is_argon2id_phc(hash: &str) -> bool {
    argon2::PasswordHash::new(hash)
        .is_ok_and(|h| h.algorithm.as_str() == "argon2id" && h.salt.is_some() && h.hash.is_some())
}

async fn import_key(
    row: &Row,
    store: &StoreHandle,
    tenants: &BTreeSet<String>,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), String> {
    let lookup = store.lookup();
    let records = store.records();
    report.keys.found += 1;
    let id = text(row, "id")?.unwrap_or_default();
    let tenant_id = text(row, "tenant_id")?.unwrap_or_default();
    let key_hash = text(row, "key_hash")?
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let key_prefix = text(row, "key_prefix")?.unwrap_or_default();
    let name = text(row, "name")?.unwrap_or_default();
    let problem = if !valid_id(&id) {
        Some("id is empty, too long or not printable".to_string())
    } else if !api_key::is_sha256_hex(&key_hash) {
        Some("key hash is not 64 hex digits (SHA-256)".into())
    } else if !api_key::is_display_prefix(&key_prefix) {
        Some("key prefix is not ares_ and at most 13 characters".into())
    } else if !tenants.contains(&tenant_id) {
        Some(format!("its tenant {tenant_id:?} was not imported"))
    } else {
        None
    };
    if let Some(reason) = problem {
        report.keys.skipped += 1;
        skip(report, "api key", &id, reason);
        return Ok(());
    }
    if let Some(existing) = lookup
        .call_keep_error(lookup.get_api_key(&key_hash))
        .await
        .map_err(store_error)?
    {
        if existing.tenant_id == tenant_id {
            report.keys.present += 1;
        } else {
            report.keys.skipped += 1;
            skip(
                report,
                "api key",
                &id,
                "its hash belongs to another tenant's key",
            );
        }
        return Ok(());
    }
    let record = ApiKeyRecord {
        id: id.clone(),
        tenant_id,
        key_hash,
        key_prefix,
        name: crate::api::check_name("name", &name).unwrap_or_else(|_| "imported".into()),
        scopes: vec!["full".into()],
        is_active: int(row, "is_active")?.unwrap_or(1) != 0,
        created_at: seconds(int(row, "created_at")?).unwrap_or(0),
        expires_at: seconds(int(row, "expires_at")?),
        last_used_at: None,
        imported: true,
        limits: Default::default(),
    };
    if !dry_run {
        match records
            .call_keep_error(records.create_api_key(&record))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                report.keys.skipped += 1;
                skip(report, "api key", &id, "its id or hash is already taken");
                return Ok(());
            }
            Err(e) => return Err(store_error(e)),
        }
    }
    report.keys.imported += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_argon2id_phc_hashes_are_carried() {
        let good = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A";
        assert!(is_argon2id_phc(good));
        assert!(!is_argon2id_phc(&good.replace("argon2id", "argon2i")));
        assert!(!is_argon2id_phc("$2b$12$abcdefghijklmnopqrstuv"));
        assert!(!is_argon2id_phc("$argon2id$garbage"));
        assert!(!is_argon2id_phc(""));
    }

    #[test]
    fn ids_must_be_printable_and_bounded() {
        assert!(valid_id("8c1d2f9e-0b6a-4c1e-9a57-3f2d1e0c9b8a"));
        assert!(!valid_id(""));
        assert!(!valid_id("has space"));
        assert!(!valid_id("ctl\u{1}"));
        assert!(!valid_id(&"x".repeat(129)));
    }

    #[test]
    fn the_report_names_ids_and_reasons_only() {
        let mut r = Report::default();
        r.users.found = 2;
        r.users.imported = 1;
        r.users.skipped = 1;
        skip(
            &mut r,
            "user",
            "u-2",
            "password hash is not an Argon2id PHC string",
        );
        let text = r.to_string();
        assert!(text.contains("users"), "{text}");
        assert!(text.contains("skipped user u-2: password hash"), "{text}");
    }
}
