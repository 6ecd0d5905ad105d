//! Which ARES schema the database holds, and the gateway's own tables beside it.
//!
//! ARES's tables are read and written as ARES's code does, never altered: `users`, `tenants`
//! and `api_keys` (and `sessions`, `tenant_agents` where they exist) in the connection's
//! current schema. Everything ARES has no table for lives in the schema `ares_gateway`, created
//! and migrated forward by the gateway in one transaction under an advisory lock (replicas that
//! start together migrate once), refusing a version newer than this build knows.

use tokio_postgres::Client;

use crate::error::StoreError;

/// The gateway's own schema.
pub const SCHEMA: &str = "ares_gateway";

/// The newest version of the gateway's tables this build writes and reads.
pub const VERSION: i64 = 1;

/// The ARES generations the gateway recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// dirmacs/ares at 81aa736 (one crate): keys looked up by `key_prefix`, hashed over the
    /// whole key; no key scopes; a `users` table.
    Single,
    /// The `crates/` generation (ares-store): as above, plus `api_keys.scopes` (one scope word)
    /// and `api_keys.last_used_at`.
    Crates,
}

impl Generation {
    pub fn name(self) -> &'static str {
        match self {
            Generation::Single => "81aa736",
            Generation::Crates => "crates",
        }
    }
}

/// What the gateway found in ARES's schema, and so how it reads and writes it.
#[derive(Debug, Clone)]
pub struct AresSchema {
    pub generation: Generation,
    /// ARES's schema (quoted, ready for SQL): where `users`, `tenants` and `api_keys` are.
    pub schema: String,
    /// The table users live in: ARES's `users`, or the gateway's own when ARES has none.
    pub users: String,
    /// Whether `users` is ARES's table (then ARES's own login works for the same rows).
    pub ares_users: bool,
    /// ARES's `sessions` (its refresh tokens), where it exists.
    pub sessions: bool,
    /// ARES's `tenant_agents`, where it exists (deleted with their tenant).
    pub tenant_agents: bool,
    /// ARES's `agent_templates` (cloned into `tenant_agents` by `provision-client`).
    pub agent_templates: bool,
}

impl AresSchema {
    pub fn table(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }
}

const TENANTS: &[&str] = &["id", "name", "tier", "created_at", "updated_at"];
const API_KEYS: &[&str] = &[
    "id",
    "tenant_id",
    "key_hash",
    "key_prefix",
    "name",
    "is_active",
    "created_at",
    "expires_at",
];
const USERS: &[&str] = &[
    "id",
    "email",
    "password_hash",
    "name",
    "created_at",
    "updated_at",
];

/// Recognise ARES's tables from their columns; an unknown schema is refused, naming the table
/// and column missed.
pub fn recognise(schema: &str, columns: &[(String, String)]) -> Result<AresSchema, String> {
    let has_table = |t: &str| columns.iter().any(|(table, _)| table == t);
    let has = |t: &str, c: &str| columns.iter().any(|(table, col)| table == t && col == c);
    let require = |t: &str, cols: &[&str]| -> Result<(), String> {
        if !has_table(t) {
            return Err(format!(
                "ARES schema not recognised: no table {t} in schema {schema} (is DATABASE_URL \
                 ARES's database, and has ARES started once to run its migrations?)"
            ));
        }
        match cols.iter().find(|c| !has(t, c)) {
            Some(c) => Err(format!(
                "ARES schema not recognised: table {t} has no column {c}"
            )),
            None => Ok(()),
        }
    };
    require("tenants", TENANTS)?;
    require("api_keys", API_KEYS)?;
    let ares_users = has_table("users");
    if ares_users {
        require("users", USERS)?;
    }
    let generation = if has("api_keys", "scopes") {
        Generation::Crates
    } else {
        Generation::Single
    };
    let quoted = quote(schema);
    Ok(AresSchema {
        generation,
        users: if ares_users {
            format!("{quoted}.users")
        } else {
            format!("{SCHEMA}.users")
        },
        schema: quoted,
        ares_users,
        sessions: has("sessions", "user_id"),
        tenant_agents: has("tenant_agents", "tenant_id"),
        agent_templates: has("agent_templates", "product_type") && has("tenant_agents", "config"),
    })
}

/// An identifier quoted for SQL.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Read ARES's schema from the database.
pub async fn inspect(client: &Client) -> Result<AresSchema, String> {
    let row = client
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(|e| format!("cannot read the database's schema: {}", one_line(&e)))?;
    let schema: Option<String> = row.try_get(0).map_err(|e| one_line(&e))?;
    let schema = schema.ok_or("the database has no current schema (search_path is empty)")?;
    let rows = client
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name IN \
             ('users', 'tenants', 'api_keys', 'sessions', 'tenant_agents', 'agent_templates')",
            &[&schema],
        )
        .await
        .map_err(|e| format!("cannot read ARES's tables: {}", one_line(&e)))?;
    let mut columns = Vec::with_capacity(rows.len());
    for r in rows {
        let t: String = r.try_get(0).map_err(|e| one_line(&e))?;
        let c: String = r.try_get(1).map_err(|e| one_line(&e))?;
        columns.push((t, c));
    }
    recognise(&schema, &columns)
}

/// Create or migrate the gateway's tables forward, in one transaction, under an advisory lock.
pub async fn migrate(client: &mut Client, ares: &AresSchema) -> Result<(), String> {
    let fail = |what: &str, e: tokio_postgres::Error| format!("{what}: {}", one_line(&e));
    let tx = client
        .transaction()
        .await
        .map_err(|e| fail("cannot start the migration", e))?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock(hashtext('{SCHEMA}'));
         CREATE SCHEMA IF NOT EXISTS {SCHEMA};
         CREATE TABLE IF NOT EXISTS {SCHEMA}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    ))
    .await
    .map_err(|e| fail("cannot create the gateway's schema", e))?;
    let found = tx
        .query_opt(
            &format!("SELECT value FROM {SCHEMA}.meta WHERE key = 'version'"),
            &[],
        )
        .await
        .map_err(|e| fail("cannot read the gateway's schema version", e))?;
    let version = match found {
        None => 0,
        Some(row) => {
            let v: String = row.try_get(0).map_err(|e| one_line(&e))?;
            v.parse::<i64>()
                .map_err(|_| format!("{SCHEMA}.meta holds version {v:?}, not a number"))?
        }
    };
    if version > VERSION {
        return Err(format!(
            "the gateway's tables in schema {SCHEMA} are version {version}, newer than this \
             build reads ({VERSION}): run the newer gateway (or restore a backup)"
        ));
    }
    if version < 1 {
        tx.batch_execute(&v1(ares))
            .await
            .map_err(|e| fail("cannot create the gateway's tables", e))?;
    }
    tx.execute(
        &format!(
            "INSERT INTO {SCHEMA}.meta (key, value) VALUES ('version', $1) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        ),
        &[&VERSION.to_string()],
    )
    .await
    .map_err(|e| fail("cannot record the gateway's schema version", e))?;
    tx.commit()
        .await
        .map_err(|e| fail("cannot commit the migration", e))
}

/// Version 1 of the gateway's tables. Rows beside ARES's (`*_ext`) reference them and go with
/// them (`ON DELETE CASCADE`): a tenant, key or user ARES deletes takes the gateway's extra
/// columns along; ARES's own tables are never altered.
fn v1(ares: &AresSchema) -> String {
    let tenants = ares.table("tenants");
    let keys = ares.table("api_keys");
    let own_users = if ares.ares_users {
        String::new()
    } else {
        format!(
            "CREATE TABLE {SCHEMA}.users (id TEXT PRIMARY KEY, email TEXT UNIQUE NOT NULL,
               password_hash TEXT NOT NULL, name TEXT NOT NULL, created_at BIGINT NOT NULL,
               updated_at BIGINT NOT NULL);"
        )
    };
    let users = &ares.users;
    format!(
        "{own_users}
         CREATE TABLE {SCHEMA}.tenant_ext (
           tenant_id TEXT PRIMARY KEY REFERENCES {tenants}(id) ON DELETE CASCADE,
           suspended BOOLEAN NOT NULL DEFAULT false,
           requests_per_minute BIGINT, requests_per_day BIGINT, requests_per_month BIGINT);
         CREATE TABLE {SCHEMA}.key_ext (
           key_id TEXT PRIMARY KEY REFERENCES {keys}(id) ON DELETE CASCADE,
           scopes TEXT[], last_used_at BIGINT, imported BOOLEAN NOT NULL DEFAULT false,
           requests_per_minute BIGINT, requests_per_day BIGINT, requests_per_month BIGINT);
         CREATE TABLE {SCHEMA}.user_ext (
           user_id TEXT PRIMARY KEY REFERENCES {users}(id) ON DELETE CASCADE,
           disabled BOOLEAN NOT NULL DEFAULT false);
         CREATE TABLE {SCHEMA}.refresh_tokens (
           token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, family_id TEXT NOT NULL,
           issued_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, rotated_at BIGINT,
           successor TEXT);
         CREATE INDEX refresh_tokens_user ON {SCHEMA}.refresh_tokens (user_id);
         CREATE INDEX refresh_tokens_expiry ON {SCHEMA}.refresh_tokens (expires_at);
         CREATE TABLE {SCHEMA}.revoked_families (family_id TEXT PRIMARY KEY, until BIGINT NOT NULL);
         CREATE TABLE {SCHEMA}.revoked_jtis (
           jti TEXT PRIMARY KEY, subject TEXT NOT NULL, until BIGINT NOT NULL);
         CREATE TABLE {SCHEMA}.user_cutoffs (
           user_id TEXT PRIMARY KEY, through BIGINT NOT NULL, until BIGINT NOT NULL);
         CREATE TABLE {SCHEMA}.audit (
           id TEXT PRIMARY KEY, at_ms BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
           target TEXT NOT NULL, outcome TEXT NOT NULL);
         CREATE TABLE {SCHEMA}.key_usage (
           key_hash TEXT NOT NULL, day BIGINT NOT NULL, requests BIGINT NOT NULL,
           PRIMARY KEY (key_hash, day));
         CREATE TABLE {SCHEMA}.limits (
           scope TEXT PRIMARY KEY, tats BIGINT[] NOT NULL, periods BIGINT[] NOT NULL,
           touched_ms BIGINT NOT NULL);"
    )
}

pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s.replace(['\n', '\r'], " ")
}

/// A database error as the store's: a unique or foreign-key violation is a conflict (an id,
/// email or key taken; a row another depends on), anything else unavailable.
pub fn db(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::FOREIGN_KEY_VIOLATION => {
            StoreError::Conflict
        }
        _ => StoreError::Unavailable(one_line(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(spec: &[(&str, &[&str])]) -> Vec<(String, String)> {
        spec.iter()
            .flat_map(|(t, cs)| cs.iter().map(move |c| (t.to_string(), c.to_string())))
            .collect()
    }

    #[test]
    fn the_two_ares_generations_are_told_apart() {
        let single = cols(&[
            ("tenants", TENANTS),
            ("api_keys", API_KEYS),
            ("users", USERS),
        ]);
        let s = recognise("public", &single).unwrap();
        assert_eq!(s.generation, Generation::Single);
        assert_eq!(s.users, "\"public\".users");
        assert!(s.ares_users);
        let mut crates = single.clone();
        crates.push(("api_keys".into(), "scopes".into()));
        crates.retain(|(t, _)| t != "users");
        let c = recognise("public", &crates).unwrap();
        assert_eq!(c.generation, Generation::Crates);
        // No users table at ARES: the gateway keeps its own.
        assert_eq!(c.users, "ares_gateway.users");
        assert!(!c.ares_users);
    }

    #[test]
    fn an_unknown_schema_is_refused_naming_the_table_and_column() {
        let no_prefix: Vec<&str> = API_KEYS
            .iter()
            .copied()
            .filter(|c| *c != "key_prefix")
            .collect();
        let e = recognise(
            "public",
            &cols(&[("tenants", TENANTS), ("api_keys", &no_prefix)]),
        )
        .unwrap_err();
        assert!(e.contains("table api_keys has no column key_prefix"), "{e}");
        let e = recognise("public", &cols(&[("api_keys", API_KEYS)])).unwrap_err();
        assert!(e.contains("no table tenants"), "{e}");
        let bad_users = cols(&[
            ("tenants", TENANTS),
            ("api_keys", API_KEYS),
            ("users", &["id", "email"]),
        ]);
        let e = recognise("public", &bad_users).unwrap_err();
        assert!(e.contains("table users has no column password_hash"), "{e}");
    }

    #[test]
    fn schema_names_are_quoted() {
        assert_eq!(quote("pub\"lic"), "\"pub\"\"lic\"");
    }
}
