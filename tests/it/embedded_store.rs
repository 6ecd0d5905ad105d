//! The embedded store as operators run it: the binary killed with SIGKILL right after a write
//! it acknowledged, a second gateway on the same directory, damaged, newer and unwritable files,
//! a full disk, generated secrets kept across restarts, and export/import between all three
//! stores.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::redis::RedisServer;
use crate::common::*;
use ares_gateway::store::{suite, EmbeddedStore, MemoryStore, RedisStore, Store};

fn embedded_env(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("ARES_STORE", "embedded".into()),
        ("ARES_DATA_DIR", dir.display().to_string()),
    ]
}

async fn serve_embedded(upstream: &str, dir: &Path) -> (tokio::process::Child, String) {
    let env = embedded_env(dir);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    serve_binary(upstream, &env).await
}

/// `serve` that is expected to refuse to start: its exit code and stderr.
fn serve_refused(dir: &Path, extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"));
    cmd.args([
        "serve",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"),
    ])
    .env("ARES_LISTEN", format!("127.0.0.1:{}", free_port()))
    .env("ARES_METRICS_LISTEN", "off")
    .env("ARES_ADMIN_SECRET", ADMIN)
    .env("ARES_JWT_SECRET", JWT_SECRET)
    .env("ARES_STORE", "embedded")
    .env("ARES_DATA_DIR", dir)
    .stdout(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway started where it must refuse to");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn kill_9(child: &mut tokio::process::Child) {
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

async fn admin_post(base: &str, path: &str, body: &str) -> Reply {
    post(&format!("{base}{path}"), &admin(), body).await
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = serve_embedded(&up.url(), dir.path()).await;
    let r = admin_post(
        &base,
        "/api/admin/provision-client",
        r#"{"name":"Acme","tier":"dev","api_key_name":"backend"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let key = r.json()["raw_api_key"].as_str().unwrap().to_string();
    let register = r#"{"email":"k9@example.com","password":"your-secure-password","name":"K"}"#;
    assert_eq!(
        post(&format!("{base}/api/auth/register"), &[], register)
            .await
            .status,
        201
    );
    let login = r#"{"email":"k9@example.com","password":"your-secure-password"}"#;
    let t = post(&format!("{base}/api/auth/login"), &[], login)
        .await
        .json();
    let (access, refresh) = (
        t["access_token"].as_str().unwrap().to_string(),
        t["refresh_token"].as_str().unwrap().to_string(),
    );
    // A second session, logged out: the 200 goes out, then the process dies at once.
    let t2 = post(&format!("{base}/api/auth/login"), &[], login)
        .await
        .json();
    let access2 = t2["access_token"].as_str().unwrap().to_string();
    let body = format!(
        r#"{{"refresh_token":"{}"}}"#,
        t2["refresh_token"].as_str().unwrap()
    );
    let r = post(
        &format!("{base}/api/auth/logout"),
        &[("authorization", &bearer(&access2))],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    kill_9(&mut child).await;

    let (_child, base) = serve_embedded(&up.url(), dir.path()).await;
    let chat = |token: String| {
        let base = base.clone();
        async move {
            post(
                &format!("{base}/v1/chat"),
                &[("authorization", &bearer(&token))],
                "{}",
            )
            .await
        }
    };
    assert_eq!(chat(key).await.status, 200, "the API key was lost");
    let api = |token: String| {
        let base = base.clone();
        async move {
            get(
                &format!("{base}/api/chat"),
                &[("authorization", &bearer(&token))],
            )
            .await
        }
    };
    assert_eq!(api(access).await.status, 200, "a live session was lost");
    let r = api(access2).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_TOKEN"),
        "a logged-out token works again after the restart"
    );
    let r = post(
        &format!("{base}/api/auth/refresh"),
        &[],
        &format!(r#"{{"refresh_token":"{refresh}"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "the refresh token was lost");
    assert_eq!(
        post(&format!("{base}/api/auth/login"), &[], login)
            .await
            .status,
        200,
        "the user was lost"
    );
}

#[tokio::test]
async fn day_counts_older_than_a_second_survive_kill_9() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = serve_embedded(&up.url(), dir.path()).await;
    let r = admin_post(
        &base,
        "/api/admin/provision-client",
        r#"{"name":"Acme","tier":"dev","api_key_name":"backend"}"#,
    )
    .await;
    let v = r.json();
    let (tenant, key) = (
        v["tenant_id"].as_str().unwrap().to_string(),
        v["raw_api_key"].as_str().unwrap().to_string(),
    );
    let limits = format!("/api/admin/tenants/{tenant}/limits");
    let r = send(
        "PUT",
        &format!("{base}{limits}"),
        &admin(),
        Some(r#"{"requests_per_day":5}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for _ in 0..5 {
        let r = post(
            &format!("{base}/v1/chat"),
            &[("authorization", &bearer(&key))],
            "{}",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // The README's bound: counts are written down within one second (COUNTER_FLUSH).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill_9(&mut child).await;

    let (_child, base) = serve_embedded(&up.url(), dir.path()).await;
    let usage = get(
        &format!("{base}/api/admin/tenants/{tenant}/usage"),
        &admin(),
    )
    .await;
    assert_eq!(usage.json()["daily_requests"], 5, "{:?}", usage.json());
    let r = post(
        &format!("{base}/v1/chat"),
        &[("authorization", &bearer(&key))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 429, "a restart forgave the day's count");
}

#[tokio::test]
async fn a_second_gateway_on_the_same_directory_is_refused() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_first, base) = serve_embedded(&up.url(), dir.path()).await;
    let (code, err) = serve_refused(dir.path(), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("in use by another process"), "{err}");
    assert!(err.contains("gateway.redb"), "{err}");
    // The first one is untouched.
    assert_eq!(get(&format!("{base}/readyz"), &[]).await.status, 200);
    // So is any other command that opens the store.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"))
        .args(["export", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"))
        .env("ARES_STORE", "embedded")
        .env("ARES_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
}

#[tokio::test]
async fn damaged_newer_and_unwritable_data_are_start_up_errors_naming_the_path() {
    // Not a database: refused, and the file is left exactly as it was.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.redb");
    let junk = b"someone's data, not a redb file".repeat(500);
    std::fs::write(&file, &junk).unwrap();
    let (code, err) = serve_refused(dir.path(), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(
        std::fs::read(&file).unwrap() == junk,
        "the file was changed"
    );

    // Written by a newer version (a schema this build does not know): refused untouched.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.redb");
    {
        let db = redb::Database::create(&file).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema_version", 99)
            .unwrap();
        tx.commit().unwrap();
    }
    let before = std::fs::read(&file).unwrap();
    let (code, err) = serve_refused(dir.path(), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("newer ares-gateway") && err.contains("gateway.redb"),
        "{err}"
    );
    assert!(
        std::fs::read(&file).unwrap() == before,
        "the file was changed"
    );

    // A data directory that cannot be created (its parent is a file).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain-file"), "x").unwrap();
    let bad = dir.path().join("plain-file").join("data");
    let (code, err) = serve_refused(&bad, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&bad.display().to_string()), "{err}");
}

#[tokio::test]
async fn generated_secrets_are_kept_in_the_data_directory() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let port = free_port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"))
            .args(["serve", "--config"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"))
            .env("ARES_LISTEN", format!("127.0.0.1:{port}"))
            .env("ARES_METRICS_LISTEN", "off")
            .env("ARES_UPSTREAM", up.url())
            .env("ARES_STORE", "embedded")
            .env("ARES_DATA_DIR", dir.path())
            .env_remove("ARES_ADMIN_SECRET")
            .env_remove("ARES_JWT_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        (child, format!("http://127.0.0.1:{port}"))
    };
    let (mut child, base) = start();
    wait_healthy(&base).await;
    let secret = {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut found = None;
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await
        {
            if let Some(s) = line.split("(X-Admin-Secret): ").nth(1) {
                found = Some(s.trim().to_string());
                break;
            }
        }
        // Keep reading: the gateway's stderr stays open.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        found.expect("the generated admin secret was not printed")
    };
    let r = post(
        &format!("{base}/api/admin/provision-client"),
        &[("x-admin-secret", &secret)],
        r#"{"name":"Acme"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let register = r#"{"email":"s@example.com","password":"your-secure-password","name":"S"}"#;
    post(&format!("{base}/api/auth/register"), &[], register).await;
    let login = r#"{"email":"s@example.com","password":"your-secure-password"}"#;
    let access = post(&format!("{base}/api/auth/login"), &[], login)
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    sigterm(&child);
    child.wait().await.unwrap();

    let (child, base) = start();
    wait_healthy(&base).await;
    // The same secret and the same signing key: the session issued before still works.
    let r = get(
        &format!("{base}/api/admin/tenants"),
        &[("x-admin-secret", &secret)],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(
        &format!("{base}/api/chat"),
        &[("authorization", &bearer(&access))],
    )
    .await;
    assert_eq!(r.status, 200);
    sigterm(&child);
    let out = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains(&secret), "the kept secret was printed again");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("secrets.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Run `serve` inside a mount namespace whose data directory is a small tmpfs; the test
/// reaches that directory through `/proc/PID/root`. Needs root (CI runs as root).
#[tokio::test]
async fn a_full_disk_refuses_writes_while_reads_and_proxying_go_on() {
    let probe = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: no mount namespaces here (needs root and unshare)");
        return;
    }
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let port = free_port();
    let script = format!(
        "mount -t tmpfs -o size=96m tmpfs '{}' && exec '{}' serve --config '{}'",
        data.display(),
        env!("CARGO_BIN_EXE_ares-gateway"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"),
    );
    let mut child = tokio::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("ARES_LISTEN", format!("127.0.0.1:{port}"))
        .env("ARES_METRICS_LISTEN", "off")
        .env("ARES_UPSTREAM", up.url())
        .env("ARES_ADMIN_SECRET", ADMIN)
        .env("ARES_JWT_SECRET", JWT_SECRET)
        .env("ARES_STORE", "embedded")
        .env("ARES_DATA_DIR", &data)
        .env("ARES_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let pid = child.id().unwrap();
    let inside = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(data.strip_prefix("/").unwrap());
    assert!(inside.join("gateway.redb").exists());

    let r = admin_post(
        &base,
        "/api/admin/provision-client",
        r#"{"name":"Before","tier":"dev","api_key_name":"k"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let (tenant, key) = (
        r.json()["tenant_id"].as_str().unwrap().to_string(),
        r.json()["raw_api_key"].as_str().unwrap().to_string(),
    );

    // Fill the disk until it refuses another byte.
    let filler = inside.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let r = admin_post(&base, "/api/admin/tenants", r#"{"name":"During"}"#).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (503, "STORE_UNAVAILABLE"),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let r = post(
        &format!("{base}/api/auth/register"),
        &[],
        r#"{"email":"full@example.com","password":"your-secure-password","name":"F"}"#,
    )
    .await;
    assert_eq!(r.status, 503);
    // Reads and proxying go on.
    let r = get(&format!("{base}/api/admin/tenants/{tenant}"), &admin()).await;
    assert_eq!(r.status, 200);
    let r = post(
        &format!("{base}/v1/chat"),
        &[("authorization", &bearer(&key))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200);

    // Space again: writes work again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let r = admin_post(&base, "/api/admin/tenants", r#"{"name":"After"}"#).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    kill_9(&mut child).await;
}

#[tokio::test]
async fn export_and_import_move_every_record_between_all_three_stores() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let opts = ares_gateway::config::EmbeddedOptions {
        dir: dir.path().to_path_buf(),
        cache_bytes: 4 << 20,
        min_free_bytes: 0,
    };
    let memory: std::sync::Arc<dyn Store> = std::sync::Arc::new(MemoryStore::new());
    suite::fill(&*memory).await;
    let embedded: std::sync::Arc<dyn Store> = EmbeddedStore::open(&opts).unwrap();
    let text = transfer(memory.clone(), &*embedded).await;
    assert!(text.starts_with(r#"{"type":"export","format":1,"store":"memory""#));
    // Hashes only: no raw key, token or password in the file.
    assert!(!text.contains("your-secure-password"));
    suite::check_filled(&*embedded).await;

    let cfg = config(
        "http://127.0.0.1:1",
        &[("ARES_STORE", "redis"), ("REDIS_URL", &redis.url())],
    );
    let redis_store: std::sync::Arc<dyn Store> =
        RedisStore::connect(&cfg.store, &redis.url()).await.unwrap();
    transfer(embedded.clone(), &*redis_store).await;
    suite::check_filled(&*redis_store).await;
    // Idempotent: the same file again changes nothing (counts are not doubled).
    transfer(embedded.clone(), &*redis_store).await;
    suite::check_filled(&*redis_store).await;

    let back: std::sync::Arc<dyn Store> = std::sync::Arc::new(MemoryStore::new());
    transfer(redis_store.clone(), &*back).await;
    suite::check_filled(&*back).await;
    // Every kind of record made the whole trip.
    every_record_kind_is_in(&*back).await;
}

#[tokio::test]
async fn the_import_command_reports_bad_lines_and_the_admin_export_streams_a_backup() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = serve_embedded(&up.url(), dir.path()).await;
    let r = admin_post(
        &base,
        "/api/admin/provision-client",
        r#"{"name":"Acme","tier":"dev","api_key_name":"backend"}"#,
    )
    .await;
    let key = r.json()["raw_api_key"].as_str().unwrap().to_string();
    // The online backup: the gateway keeps serving while it is taken.
    let r = get(&format!("{base}/api/admin/export"), &admin()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let backup = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(backup.lines().count() >= 3, "{backup}");
    assert!(!backup.contains(&key), "a raw key in the export");
    assert_eq!(
        get(&format!("{base}/api/admin/export"), &[]).await.status,
        401
    );
    kill_9(&mut child).await;

    // Restore the backup into a new directory with the import command, one damaged line in it.
    let file = dir.path().join("backup.jsonl");
    std::fs::write(&file, format!("{backup}not json\n")).unwrap();
    let fresh = dir.path().join("restored");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"))
        .arg("import")
        .arg(&file)
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"),
        ])
        .env("ARES_STORE", "embedded")
        .env("ARES_DATA_DIR", &fresh)
        .env("ARES_ADMIN_SECRET", ADMIN)
        .env("ARES_JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("tenant: 1 stored") && stdout.contains("api_key: 1 stored"),
        "{stdout}"
    );
    assert!(stdout.contains("not a record: line"), "{stdout}");
    let (_child, base) = serve_embedded(&up.url(), &fresh).await;
    let r = post(
        &format!("{base}/v1/chat"),
        &[("authorization", &bearer(&key))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200, "the restored key does not work");
}
