//! `ares-gateway import-ares` against a real PostgreSQL holding ARES's tables (the shapes of
//! dirmacs/ares at 81aa736), into a real Redis store; then the gateway serves what was imported.

use std::process::Output;

use crate::common::postgres::Postgres;
use crate::common::redis::RedisServer;
use crate::common::*;
use argon2::password_hash::{PasswordHasher, SaltString};
use sha2::{Digest, Sha256};

const SCHEMA: &str = "
CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT UNIQUE NOT NULL, password_hash TEXT NOT NULL,
  name TEXT, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, tier TEXT NOT NULL,
  created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE api_keys (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, key_hash TEXT NOT NULL,
  key_prefix TEXT UNIQUE NOT NULL, name TEXT NOT NULL, is_active INTEGER NOT NULL,
  created_at BIGINT NOT NULL, expires_at BIGINT);
";

const OLD_USER: &str = "8c1d2f9e-0b6a-4c1e-9a57-3f2d1e0c9b8a";
const OLD_PASSWORD: &str = "an-old-ares-password-42";
const TENANT: &str = "0f6c4a1e-5d2b-4b8e-a9c3-7e1d2f3a4b5c";

/// ARES's key format: `ares_` + 64 hex; it stores SHA-256 of the 64 hex (without `ares_`).
fn ares_key(seed: &str) -> (String, String) {
    let body: String = Sha256::digest(seed.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let hash: String = Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (format!("ares_{body}"), hash)
}

fn argon2id(password: &str) -> String {
    let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// ARES's database with one good row of each kind and one row of each kind it cannot carry.
async fn seed(pg: &Postgres) -> (String, String) {
    pg.client("postgres")
        .await
        .batch_execute("CREATE DATABASE ares")
        .await
        .unwrap();
    let db = pg.client("ares").await;
    db.batch_execute(SCHEMA).await.unwrap();
    let now = ares_gateway::util::unix_now() as i64;
    let hash = argon2id(OLD_PASSWORD);
    let users: [(&str, &str, String); 4] = [
        (OLD_USER, "Old@Example.com", hash.clone()),
        (
            "u-bcrypt",
            "bcrypt@example.com",
            "$2b$12$abcdefghijklmnopqrstuuvwxyz0123456789ABCDEFGHIJ".into(),
        ),
        ("u-taken", "taken@example.com", hash.clone()),
        ("u-bad-email", "not-an-email", hash.clone()),
    ];
    for (id, email, h) in &users {
        db.execute(
            "INSERT INTO users VALUES ($1, $2, $3, 'Old User', $4, $4)",
            &[id, email, h, &now],
        )
        .await
        .unwrap();
    }
    for (id, tier) in [(TENANT, "pro"), ("t-unknown-tier", "platinum")] {
        db.execute(
            "INSERT INTO tenants VALUES ($1, 'Acme', $2, $3, $3)",
            &[&id, &tier, &now],
        )
        .await
        .unwrap();
    }
    let (raw, key_hash) = ares_key("live");
    let (inactive_raw, inactive_hash) = ares_key("inactive");
    let rows: [(&str, &str, &str, &str, i32); 4] = [
        ("k-live", TENANT, &key_hash, &raw[..13], 1),
        ("k-inactive", TENANT, &inactive_hash, &inactive_raw[..13], 0),
        ("k-bad-hash", TENANT, "not-a-sha256", "ares_deadbeef", 1),
        (
            "k-orphan",
            "t-unknown-tier",
            &ares_key("orphan").1,
            "ares_0rphan00",
            1,
        ),
    ];
    for (id, tenant, h, prefix, active) in rows {
        db.execute(
            "INSERT INTO api_keys VALUES ($1, $2, $3, $4, 'backend', $5, $6, NULL)",
            &[&id, &tenant, &h, &prefix, &active, &now],
        )
        .await
        .unwrap();
    }
    (raw, inactive_raw)
}

fn import(url: &str, redis: &str, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"))
        .args([
            "import-ares",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"),
        ])
        .args(["--database-url", url])
        .args(extra)
        .env("ARES_STORE", "redis")
        .env("REDIS_URL", redis)
        .env("ARES_ADMIN_SECRET", ADMIN)
        .env("ARES_JWT_SECRET", JWT_SECRET)
        .env("ARES_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The line of the report for `kind`: (in ARES, imported, already present, skipped).
fn counts(out: &str, kind: &str) -> (usize, usize, usize, usize) {
    let line = out
        .lines()
        .find(|l| l.starts_with(kind))
        .unwrap_or_else(|| panic!("no {kind} line in {out}"));
    let n: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1], n[2], n[3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ares_users_tenants_and_keys_carry_over_and_work_at_the_gateway() {
    let pg = Postgres::start();
    let (raw, inactive_raw) = seed(&pg).await;
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    // A user of the gateway already holds one of ARES's emails.
    let g = start(config(
        &up.url(),
        &[("ARES_STORE", "redis"), ("REDIS_URL", &redis.url())],
    ))
    .await;
    let r = post(
        &g.url("/api/auth/register"),
        &[],
        r#"{"email":"taken@example.com","password":"your-secure-password","name":"T"}"#,
    )
    .await;
    assert_eq!(r.status, 201);

    let url = pg.url("ares");
    let dry = import(&url, &redis.url(), &["--dry-run"]);
    let out = text(&dry);
    assert_eq!(dry.status.code(), Some(2), "{out}");
    assert!(out.contains("would import"), "{out}");
    assert_eq!(counts(&out, "users"), (4, 1, 0, 3), "{out}");
    let store = &g.state.store;
    assert!(
        store.records().get_user(OLD_USER).await.unwrap().is_none(),
        "a dry run writes nothing"
    );

    let first = import(&url, &redis.url(), &[]);
    let out = text(&first);
    assert_eq!(first.status.code(), Some(2), "some rows are skipped: {out}");
    assert_eq!(counts(&out, "tenants"), (2, 1, 0, 1), "{out}");
    assert_eq!(counts(&out, "users"), (4, 1, 0, 3), "{out}");
    assert_eq!(counts(&out, "api keys"), (4, 2, 0, 2), "{out}");
    for (id, why) in [
        ("u-bcrypt", "not an Argon2id PHC"),
        ("u-taken", "email already belongs to user"),
        ("u-bad-email", "email is not a valid address"),
        ("t-unknown-tier", "\"platinum\" is not a plan"),
        ("k-bad-hash", "not 64 hex"),
        ("k-orphan", "was not imported"),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!(" {id}:")))
            .unwrap_or_else(|| panic!("{id} not listed: {out}"));
        assert!(line.contains(why), "{line}");
    }
    // No secret or hash in what it prints.
    assert!(!out.contains("$argon2id$"), "{out}");
    assert!(!out.contains(&ares_key("live").1), "{out}");
    assert!(!out.contains(&raw[13..]), "{out}");

    let again = import(&url, &redis.url(), &[]);
    let out = text(&again);
    assert_eq!(counts(&out, "users"), (4, 0, 1, 3), "idempotent: {out}");
    assert_eq!(counts(&out, "api keys"), (4, 0, 2, 2), "{out}");
    assert_eq!(counts(&out, "tenants"), (2, 0, 1, 1), "{out}");

    // The old password logs in (the email as ARES had it, any case), with ARES's user id as sub.
    let r = post(
        &g.url("/api/auth/login"),
        &[],
        &format!(r#"{{"email":"old@example.com","password":"{OLD_PASSWORD}"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let r = get(&g.url("/api/chat"), &[("authorization", &bearer(&token))]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-user-id"], OLD_USER);

    // ARES's key works as it is, for its tenant; the inactive one does not.
    let r = post(
        &g.url("/v1/chat"),
        &[("authorization", &bearer(&raw))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(up.last().headers["x-tenant-id"], TENANT);
    assert_eq!(up.last().headers["x-api-key-id"], "k-live");
    let r = post(
        &g.url("/v1/chat"),
        &[("authorization", &bearer(&inactive_raw))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn an_unreachable_database_or_a_missing_table_is_one_line_and_exit_1() {
    let redis = RedisServer::start();
    let closed = format!("postgres://postgres@127.0.0.1:{}/ares", free_port());
    let o = import(&closed, &redis.url(), &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(out.contains("cannot reach the ARES database"), "{out}");

    let pg = Postgres::start();
    pg.client("postgres")
        .await
        .batch_execute("CREATE DATABASE empty")
        .await
        .unwrap();
    let o = import(&pg.url("empty"), &redis.url(), &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(out.contains("ARES table tenants"), "{out}");
}

/// Regression: `import-ares --config elsewhere/gateway.yaml` filled a fresh store under the
/// working directory's `./data`, and `--dry-run` created the store file. A relative data
/// directory is now the config file's neighbour, and a dry run writes nothing.
#[tokio::test]
async fn regression_import_ares_uses_the_config_files_data_directory_and_a_dry_run_writes_nothing()
{
    let pg = Postgres::start();
    seed(&pg).await;
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("gateway.yaml");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"), &conf).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"))
            .current_dir(elsewhere.path())
            .args(["import-ares", "--config"])
            .arg(&conf)
            .args(["--database-url", &pg.url("ares")])
            .args(extra)
            .env("ARES_STORE", "embedded")
            .env("ARES_DATA_DIR", "./data")
            .env("ARES_ADMIN_SECRET", ADMIN)
            .env("ARES_JWT_SECRET", JWT_SECRET)
            .env("ARES_LOG", "warn")
            .output()
            .unwrap()
    };
    let dry = run(&["--dry-run"]);
    assert_eq!(dry.status.code(), Some(2), "{}", text(&dry));
    assert_eq!(counts(&text(&dry), "users").1, 2, "{}", text(&dry));
    assert!(
        !conf_dir.path().join("data").exists(),
        "a dry run created the data directory"
    );
    assert!(!elsewhere.path().join("data").exists());
    let real = run(&[]);
    assert_eq!(real.status.code(), Some(2), "{}", text(&real));
    assert!(
        conf_dir.path().join("data/gateway.redb").is_file(),
        "the store is beside the config file"
    );
    assert!(
        !elsewhere.path().join("data").exists(),
        "nothing under the working directory"
    );
    // Run again from elsewhere: the same store, everything already there.
    let again = run(&[]);
    assert_eq!(counts(&text(&again), "users").2, 2, "{}", text(&again));
}
