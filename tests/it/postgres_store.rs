//! The PostgreSQL store against real PostgreSQL: on the real ARES's own tables (81aa736, from
//! `../shared/ares`) and on tables shaped as the newer `crates/` generation's, the store suite
//! per role, schema recognition and migration, invalidation between two gateway processes in
//! both directions (the gateway's writes and ARES's), exact limits across replicas, and what a
//! database that is down does to requests.

use std::sync::Arc;
use std::time::Duration;

use ares_gateway::config::Config;
use ares_gateway::ratelimit::Window;
use ares_gateway::store::{PostgresStore, Store};

use crate::common::postgres::Postgres;
use crate::common::real_ares::RealAres;
use crate::common::*;

/// ARES's tables as the `crates/` generation has them (the columns the gateway reads: keys with
/// one scope word and their last use; no users table: the gateway keeps its own).
const CRATES_SCHEMA: &str = "
CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, tier TEXT NOT NULL DEFAULT 'free',
  created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, paused BOOLEAN NOT NULL DEFAULT false);
CREATE TABLE api_keys (id TEXT PRIMARY KEY,
  tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE, key_hash TEXT NOT NULL,
  key_prefix TEXT NOT NULL UNIQUE, name TEXT NOT NULL DEFAULT 'default',
  is_active INTEGER NOT NULL DEFAULT 1, created_at BIGINT NOT NULL, expires_at BIGINT,
  scopes TEXT NOT NULL DEFAULT 'full', last_used_at BIGINT);";

fn store_config(env: &[(&str, &str)]) -> Config {
    config("http://127.0.0.1:9", env)
}

async fn crates_db() -> (Postgres, String) {
    let pg = Postgres::start();
    let c = pg.client("postgres").await;
    c.batch_execute("CREATE DATABASE ares").await.unwrap();
    let ares = pg.client("ares").await;
    ares.batch_execute(CRATES_SCHEMA).await.unwrap();
    let url = pg.url("ares");
    (pg, url)
}

async fn connect(url: &str) -> Result<Arc<PostgresStore>, String> {
    let cfg = store_config(&[("ARES_STORE", "postgres"), ("DATABASE_URL", url)]);
    PostgresStore::connect(&cfg.store, url, None).await
}

#[tokio::test]
async fn the_postgres_store_passes_the_store_suite_on_the_real_ares_tables() {
    let Some(ares) = RealAres::start("postgres_store suite on ARES 81aa736") else {
        return;
    };
    let store = connect(&ares.database_url).await.unwrap();
    assert_eq!(store.generation().name(), "81aa736");
    ares_gateway::store::suite::run_all(&*store).await;
    // The suite's users and tenants are ARES's rows: ARES's own tables hold them.
    let db = ares.db().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM users WHERE id = 'usr_m3'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "a user the suite created is a row of ARES's users");
    let key: (String, String) = db
        .query_one(
            "SELECT key_prefix, tenant_id FROM api_keys WHERE key_hash = 'h3'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(key.1, "t2");
}

#[tokio::test]
async fn the_postgres_store_passes_the_store_suite_on_the_newer_ares_tables() {
    let (_pg, url) = crates_db().await;
    let store = connect(&url).await.unwrap();
    assert_eq!(store.generation().name(), "crates");
    ares_gateway::store::suite::run_all(&*store).await;
}

#[tokio::test]
async fn an_unknown_ares_schema_is_refused_naming_the_table_and_column() {
    let pg = Postgres::start();
    let c = pg.client("postgres").await;
    c.batch_execute(
        "CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT, tier TEXT, created_at BIGINT,
           updated_at BIGINT);
         CREATE TABLE api_keys (id TEXT PRIMARY KEY, tenant_id TEXT, key_hash TEXT, name TEXT,
           is_active INTEGER, created_at BIGINT, expires_at BIGINT);",
    )
    .await
    .unwrap();
    let e = connect(&pg.url("postgres")).await.unwrap_err();
    assert!(e.contains("table api_keys has no column key_prefix"), "{e}");
    // Nothing of the gateway's was created on a database it does not recognise.
    let made: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'ares_gateway'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(made, 0);
    let empty = Postgres::start();
    let e = connect(&empty.url("postgres")).await.unwrap_err();
    assert!(e.contains("no table tenants"), "{e}");
}

#[tokio::test]
async fn the_gateway_tables_are_migrated_once_and_a_newer_version_is_refused() {
    let (pg, url) = crates_db().await;
    // Two replicas starting together migrate once (an advisory lock orders them).
    let (a, b) = tokio::join!(connect(&url), connect(&url));
    a.unwrap();
    b.unwrap();
    let c = pg.client("ares").await;
    let v: String = c
        .query_one(
            "SELECT value FROM ares_gateway.meta WHERE key = 'version'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "1");
    // ARES's own tables are untouched: no column added.
    let cols: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'api_keys' \
             AND table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cols, 10);
    c.batch_execute("UPDATE ares_gateway.meta SET value = '99' WHERE key = 'version'")
        .await
        .unwrap();
    let e = connect(&url).await.unwrap_err();
    assert!(
        e.contains("version 99, newer than this build reads (1)"),
        "{e}"
    );
}

#[tokio::test]
async fn limits_are_exact_across_two_replicas_sharing_the_database() {
    let (_pg, url) = crates_db().await;
    let (a, b) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
    let now = ares_gateway::util::now_ms();
    let limits = [(Window::Day, 10), (Window::Minute, 1000)];
    let mut tasks = Vec::new();
    for n in 0..40 {
        let s: Arc<PostgresStore> = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.counters()
                .rate_limit("t:shared", &limits, now)
                .await
                .unwrap()
                .allowed()
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap());
    }
    assert_eq!(allowed, 10, "exactly the limit passes across both replicas");
    assert_eq!(a.counters().usage("t:shared", now).await.unwrap().day, 10);
    // A lease takes several at once and gives back what it did not spend.
    let take = ares_gateway::store::Take {
        want: 8,
        back: 0,
        back_calendar: 0,
    };
    let big = [(Window::Day, 1000)];
    let (d, granted) = a
        .counters()
        .lease("t:lease", &big, now, take)
        .await
        .unwrap();
    assert!(d.allowed());
    assert_eq!(granted, 8);
    assert_eq!(d.headers.remaining, 992);
    let back = ares_gateway::store::Take {
        want: 0,
        back: 0,
        back_calendar: 5,
    };
    b.counters()
        .lease("t:lease", &big, now, back)
        .await
        .unwrap();
    assert_eq!(b.counters().usage("t:lease", now).await.unwrap().day, 3);
}

/// Two gateway processes on one database: a key revoked through one is refused by the other
/// within a second (the gateway's own write, by NOTIFY), and a key ARES disables in its table is
/// refused by both within a second (ARES's write, by the digest poll).
#[tokio::test]
async fn key_changes_reach_every_gateway_process_within_a_second_in_both_directions() {
    let (pg, url) = crates_db().await;
    let up = Upstream::start().await;
    let env = [("ARES_STORE", "postgres"), ("DATABASE_URL", url.as_str())];
    let (_a, base_a) = serve_binary(&up.url(), &env).await;
    let (_b, base_b) = serve_binary(&up.url(), &env).await;
    let chat = |base: &str, key: &str| {
        let (url, auth) = (format!("{base}/v1/chat"), bearer(key));
        async move { post(&url, &[("authorization", &auth)], "{}").await.status }
    };
    let provision = |base: &str| {
        let url = format!("{base}/api/admin/provision-client");
        async move {
            let r = post(
                &url,
                &admin(),
                r#"{"name":"Acme","tier":"pro","api_key_name":"k"}"#,
            )
            .await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            let v = r.json();
            (
                v["tenant_id"].as_str().unwrap().to_string(),
                v["api_key_id"].as_str().unwrap().to_string(),
                v["raw_api_key"].as_str().unwrap().to_string(),
            )
        }
    };
    let (tenant, key_id, raw) = provision(&base_a).await;
    // Both gateways know the key (and cache it).
    assert_eq!(chat(&base_a, &raw).await, 200);
    assert_eq!(chat(&base_b, &raw).await, 200);
    let r = send(
        "DELETE",
        &format!("{base_a}/api/admin/tenants/{tenant}/api-keys/{key_id}"),
        &admin(),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    let refused = |base: String, key: String| async move {
        wait_until(Duration::from_secs(1), || {
            let (base, key) = (base.clone(), key.clone());
            async move { chat(&base, &key).await == 401 }
        })
        .await
    };
    assert!(
        refused(base_b.clone(), raw.clone()).await,
        "the other gateway still took a key deleted through the first after 1 s"
    );
    // ARES's own write: a key disabled in its table, no gateway told.
    let (_, _, raw2) = provision(&base_b).await;
    assert_eq!(chat(&base_a, &raw2).await, 200);
    assert_eq!(chat(&base_b, &raw2).await, 200);
    let c = pg.client("ares").await;
    let hash = ares_gateway::auth::api_key::hash(&raw2);
    let n = c
        .execute(
            "UPDATE api_keys SET is_active = 0 WHERE key_hash = $1",
            &[&hash],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(
        refused(base_a.clone(), raw2.clone()).await,
        "a key ARES disabled still worked at the first gateway after 1 s"
    );
    assert!(
        refused(base_b.clone(), raw2.clone()).await,
        "a key ARES disabled still worked at the second gateway after 1 s"
    );
}

/// A database that stops answering: requests that need it are 503 (never 500, never a hang
/// past the store budget), and `/readyz` says not ready.
#[tokio::test]
async fn a_database_that_is_down_is_a_503_never_a_500_or_a_hang() {
    let (pg, url) = crates_db().await;
    let up = Upstream::start().await;
    let g = start(config(
        &up.url(),
        &[("ARES_STORE", "postgres"), ("DATABASE_URL", url.as_str())],
    ))
    .await;
    let tokens = login(&g, "pg-down@example.com").await;
    let auth = bearer(tokens["access_token"].as_str().unwrap());
    assert_eq!(
        get(&g.url("/api/chat"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(get(&g.url("/readyz"), &[]).await.status, 200);
    drop(pg);
    let started = std::time::Instant::now();
    let r = post(
        &g.url("/api/auth/login"),
        &[],
        r#"{"email":"pg-down@example.com","password":"your-secure-password"}"#,
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "STORE_UNAVAILABLE");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(&g.url("/readyz"), &[]).await.status, 503);
}

/// `export` from the embedded and the Redis store, `import` into the PostgreSQL store: every
/// record arrives (sessions, revocations and counts too), twice loaded counts once, and the way
/// back gives the same records.
#[tokio::test]
async fn export_and_import_move_every_record_into_the_postgres_store_and_back() {
    use ares_gateway::store::{suite, EmbeddedStore, MemoryStore, RedisStore};
    let (_pg, url) = crates_db().await;
    let dir = tempfile::tempdir().unwrap();
    let opts = ares_gateway::config::EmbeddedOptions {
        dir: dir.path().to_path_buf(),
        cache_bytes: 4 << 20,
        min_free_bytes: 0,
    };
    let embedded: Arc<dyn Store> = EmbeddedStore::open(&opts).unwrap();
    suite::fill(&*embedded).await;
    let postgres: Arc<dyn Store> = connect(&url).await.unwrap();
    transfer(embedded.clone(), &*postgres).await;
    suite::check_filled(&*postgres).await;
    transfer(embedded.clone(), &*postgres).await;
    suite::check_filled(&*postgres).await;

    let redis = crate::common::redis::RedisServer::start();
    let cfg = config(
        "http://127.0.0.1:1",
        &[("ARES_STORE", "redis"), ("REDIS_URL", &redis.url())],
    );
    let redis_store: Arc<dyn Store> = RedisStore::connect(&cfg.store, &redis.url()).await.unwrap();
    transfer(postgres.clone(), &*redis_store).await;
    suite::check_filled(&*redis_store).await;

    let back: Arc<dyn Store> = Arc::new(MemoryStore::new());
    transfer(postgres.clone(), &*back).await;
    suite::check_filled(&*back).await;
    every_record_kind_is_in(&*back).await;
}

/// A database that turned read-only (a failover to a replica, `default_transaction_read_only`):
/// writes are 503 `STORE_UNAVAILABLE` (never a 500), reads go on.
#[tokio::test]
async fn a_read_only_database_refuses_writes_with_a_503_and_serves_reads() {
    let (pg, url) = crates_db().await;
    let up = Upstream::start().await;
    let g = start(config(
        &up.url(),
        &[("ARES_STORE", "postgres"), ("DATABASE_URL", url.as_str())],
    ))
    .await;
    let tokens = login(&g, "ro@example.com").await;
    let c = pg.client("postgres").await;
    c.batch_execute(
        "ALTER DATABASE ares SET default_transaction_read_only = on;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE datname = 'ares' AND pid <> pg_backend_pid();",
    )
    .await
    .unwrap();
    // Writes: every attempt a 503 once the pool has reconnected (a connection it had may
    // fail first: also a 503).
    for _ in 0..3 {
        let r = post(
            &g.url("/api/auth/register"),
            &[],
            r#"{"email":"ro2@example.com","password":"your-secure-password","name":"R"}"#,
        )
        .await;
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.error_code(), "STORE_UNAVAILABLE");
    }
    // Reads: the user is still there, and its access token (verified, no write) still works.
    let auth = bearer(tokens["access_token"].as_str().unwrap());
    let ok = wait_until(Duration::from_secs(5), || async {
        get(&g.url("/api/auth/me"), &[("authorization", &auth)])
            .await
            .status
            == 200
    })
    .await;
    assert!(ok, "reads stopped with the database read-only");
}
