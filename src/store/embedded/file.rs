//! The data file: opening it (with clear answers for every bad condition), its schema version
//! and forward migrations, and the free-space guard that keeps a full disk from breaking reads.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use crate::error::StoreError;

/// The file in `ARES_DATA_DIR`.
pub const FILE_NAME: &str = "gateway.redb";

pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Tenant id -> JSON.
pub const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
/// Key hash -> JSON.
pub const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");
/// (tenant id, key id) -> key hash: a tenant's keys in one range.
pub const TENANT_KEYS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tenant_keys");
/// User id -> JSON.
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Lower-cased email -> user id: the uniqueness index.
pub const EMAILS: TableDefinition<&str, &str> = TableDefinition::new("emails");
/// Refresh token hash -> JSON.
pub const REFRESH: TableDefinition<&str, &[u8]> = TableDefinition::new("refresh_tokens");
/// Refresh family id -> revoked until (unix seconds).
pub const FAMILIES: TableDefinition<&str, u64> = TableDefinition::new("revoked_families");
/// Access token id -> (user id, revoked until).
pub const TOKENS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("revoked_tokens");
/// User id -> (tokens issued at or before this are refused, until): "log out everywhere".
pub const USER_CUTOFFS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("user_cutoffs");
/// Audit entry id (`<unix ms>-<seq>`, zero-padded: time order) -> JSON.
pub const AUDIT: TableDefinition<&str, &[u8]> = TableDefinition::new("audit");
/// (key hash, unix day) -> requests that day.
pub const KEY_USAGE: TableDefinition<(&str, u64), u64> = TableDefinition::new("key_usage");
/// (limiter scope, window name) -> (calendar period, count).
pub const COUNTERS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("counters");

const SCHEMA_KEY: &str = "schema_version";

/// One forward migration: from version `i` to `i + 1` for the step at index `i`.
pub type Migration = fn(&WriteTransaction) -> Result<(), redb::Error>;

/// The schema this build writes. A file at an older version is migrated at start-up; a newer
/// one is refused untouched.
pub const MIGRATIONS: &[Migration] = &[
    create_tables_v1,
    add_user_cutoffs_v2,
    add_audit_v3,
    add_key_usage_v4,
];

pub fn schema_version() -> u64 {
    MIGRATIONS.len() as u64
}

fn create_tables_v1(tx: &WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(TENANTS)?;
    tx.open_table(KEYS)?;
    tx.open_table(TENANT_KEYS)?;
    tx.open_table(USERS)?;
    tx.open_table(EMAILS)?;
    tx.open_table(REFRESH)?;
    tx.open_table(FAMILIES)?;
    tx.open_table(TOKENS)?;
    tx.open_table(COUNTERS)?;
    Ok(())
}

/// Version 2: "log out everywhere" (`POST /api/auth/logout-all`).
fn add_user_cutoffs_v2(tx: &WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(USER_CUTOFFS)?;
    Ok(())
}

/// Version 3: the audit trail (`GET /api/admin/audit`).
fn add_audit_v3(tx: &WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(AUDIT)?;
    Ok(())
}

/// Version 4: requests per API key and day.
fn add_key_usage_v4(tx: &WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(KEY_USAGE)?;
    Ok(())
}

/// Bring the file to the newest version of `steps` in one transaction: all steps or none.
/// Returns the version found.
pub fn migrate(db: &Database, path: &Path, steps: &[Migration]) -> Result<u64, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let tx = db.begin_write().map_err(|e| fail(&e))?;
    let found = {
        let meta = tx.open_table(META).map_err(|e| fail(&e))?;
        let v = meta.get(SCHEMA_KEY).map_err(|e| fail(&e))?;
        v.map(|v| v.value()).unwrap_or(0)
    };
    let newest = steps.len() as u64;
    if found > newest {
        return Err(newer(path, found, newest));
    }
    for (i, step) in steps.iter().enumerate().skip(found as usize) {
        step(&tx).map_err(|e| fail(&format_args!("migration to schema {}: {e}", i + 1)))?;
    }
    if found < newest {
        tx.open_table(META)
            .map_err(|e| fail(&e))?
            .insert(SCHEMA_KEY, newest)
            .map_err(|e| fail(&e))?;
        tx.commit().map_err(|e| fail(&e))?;
        if found > 0 {
            tracing::info!(file = %path.display(), from = found, to = newest, "embedded store migrated");
        }
    }
    Ok(found)
}

/// Open (or create) the data file in `dir`: created 0700/0600, locked against a second
/// process, migrated. Every failure names the path and changes nothing.
pub fn open(dir: &Path, cache_bytes: usize) -> Result<(Database, PathBuf), String> {
    if !dir.exists() {
        create_private_dir(dir)
            .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    }
    if !dir.is_dir() {
        return Err(format!(
            "the data directory {} is not a directory",
            dir.display()
        ));
    }
    let path = dir.join(FILE_NAME);
    let existed = path.exists();
    if existed {
        refuse_newer(&path)?;
    }
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(&path)
        .map_err(|e| open_error(&path, e))?;
    if !existed {
        restrict(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    migrate(&db, &path, MIGRATIONS)?;
    Ok((db, path))
}

/// A file from a newer version is refused before anything opens it for writing (an open for
/// writing updates the file's header).
fn refuse_newer(path: &Path) -> Result<(), String> {
    use redb::ReadableDatabase;
    let Ok(db) = redb::Builder::new().open_read_only(path) else {
        // Locked by a writer, or in need of recovery: the open for writing says which.
        return Ok(());
    };
    let found = db
        .begin_read()
        .ok()
        .and_then(|tx| tx.open_table(META).ok())
        .and_then(|t| t.get(SCHEMA_KEY).ok().flatten().map(|v| v.value()))
        .unwrap_or(0);
    if found > schema_version() {
        return Err(newer(path, found, schema_version()));
    }
    Ok(())
}

fn newer(path: &Path, found: u64, newest: u64) -> String {
    format!(
        "{} was written by a newer ares-gateway (schema version {found}; this build reads up to {newest}); nothing was changed: run the newer version, or import an export into a new directory",
        path.display()
    )
}

fn open_error(path: &Path, e: redb::DatabaseError) -> String {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => format!(
            "{} is in use by another process: another gateway runs on this ARES_DATA_DIR (one directory serves one gateway; stop it, or use ARES_STORE=redis for several replicas)",
            path.display()
        ),
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            format!("cannot write {}: {io} (check the data directory's owner and mode)", path.display())
        }
        other => format!(
            "cannot open the embedded store {}: {other} (the file was not changed; restore a backup or move it aside)",
            path.display()
        ),
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Bytes free for this process on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Refuse a write while less than `reserve` bytes are free: a write that fails half-way
/// leaves the engine refusing every later operation until it is reopened, so a nearly full
/// disk is met before it is full. Reads and proxying go on.
pub fn check_space(dir: &Path, reserve: u64) -> Result<(), StoreError> {
    if reserve == 0 {
        return Ok(());
    }
    match free_bytes(dir) {
        Ok(free) if free < reserve => {
            tracing::error!(dir = %dir.display(), free_bytes = free, reserve_bytes = reserve, "data disk nearly full: store writes refused");
            Err(StoreError::Unavailable(
                "the data disk is full (store.min_free_disk_mb)".into(),
            ))
        }
        _ => Ok(()),
    }
}

/// A redb error as the store's error: unavailable (a 503), with no data in the text.
pub fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    StoreError::Unavailable(format!("embedded store: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> (tempfile::TempDir, Database, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let db = Database::create(&path).unwrap();
        (dir, db, path)
    }

    const EXTRA: TableDefinition<&str, u64> = TableDefinition::new("extra");

    fn add_extra(tx: &WriteTransaction) -> Result<(), redb::Error> {
        tx.open_table(EXTRA)?.insert("migrated", 1)?;
        Ok(())
    }

    fn failing(_: &WriteTransaction) -> Result<(), redb::Error> {
        Err(redb::Error::Corrupted("test step".into()))
    }

    #[test]
    fn migrations_run_forward_once_and_record_the_version() {
        let (_d, db, path) = scratch();
        assert_eq!(migrate(&db, &path, &[create_tables_v1]).unwrap(), 0);
        assert_eq!(migrate(&db, &path, &[create_tables_v1]).unwrap(), 1);
        // A build with one more step migrates 1 -> 2 and only that step runs.
        assert_eq!(
            migrate(&db, &path, &[failing as Migration, add_extra]).unwrap(),
            1
        );
        use redb::ReadableDatabase;
        let r = db.begin_read().unwrap();
        assert_eq!(
            r.open_table(EXTRA)
                .unwrap()
                .get("migrated")
                .unwrap()
                .unwrap()
                .value(),
            1
        );
        assert_eq!(
            r.open_table(META)
                .unwrap()
                .get(SCHEMA_KEY)
                .unwrap()
                .unwrap()
                .value(),
            2
        );
    }

    #[test]
    fn a_failed_migration_changes_nothing() {
        let (_d, db, path) = scratch();
        migrate(&db, &path, &[create_tables_v1]).unwrap();
        let err = migrate(&db, &path, &[create_tables_v1, add_extra, failing]).unwrap_err();
        assert!(err.contains("migration to schema 3"), "{err}");
        use redb::ReadableDatabase;
        let r = db.begin_read().unwrap();
        assert_eq!(
            r.open_table(META)
                .unwrap()
                .get(SCHEMA_KEY)
                .unwrap()
                .unwrap()
                .value(),
            1
        );
        assert!(r.open_table(EXTRA).is_err());
    }

    #[test]
    fn a_newer_file_is_refused_naming_the_path() {
        let (_d, db, path) = scratch();
        migrate(&db, &path, &[create_tables_v1, add_extra]).unwrap();
        let err = migrate(&db, &path, &[create_tables_v1]).unwrap_err();
        assert!(
            err.contains("newer ares-gateway") && err.contains(FILE_NAME),
            "{err}"
        );
    }

    #[test]
    fn a_version_1_file_is_migrated_forward_keeping_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let db = Database::create(&path).unwrap();
            migrate(&db, &path, &MIGRATIONS[..1]).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(TENANTS)
                .unwrap()
                .insert("ten_1", b"{}".as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let (db, _) = open(dir.path(), 1 << 20).unwrap();
        use redb::ReadableDatabase;
        let r = db.begin_read().unwrap();
        let version = r
            .open_table(META)
            .unwrap()
            .get(SCHEMA_KEY)
            .unwrap()
            .unwrap()
            .value();
        assert_eq!(version, schema_version());
        assert!(
            r.open_table(USER_CUTOFFS).is_ok(),
            "version 2's table is missing"
        );
        assert!(r
            .open_table(TENANTS)
            .unwrap()
            .get("ten_1")
            .unwrap()
            .is_some());
    }

    #[test]
    fn space_guard_refuses_only_below_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_space(dir.path(), 0).is_ok());
        assert!(check_space(dir.path(), 1).is_ok());
        assert!(matches!(
            check_space(dir.path(), u64::MAX),
            Err(StoreError::Unavailable(_))
        ));
    }
}
