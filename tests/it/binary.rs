//! The binary as operators run it: `demo` works as printed, and no secret reaches a log line
//! even at debug level in JSON format.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

#[tokio::test]
async fn demo_walkthrough_works_as_printed() {
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"))
        .arg("demo")
        .env("ARES_LISTEN", format!("127.0.0.1:{port}"))
        .env("ARES_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut secret = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while secret.is_none() {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("no walkthrough")
            .unwrap()
            .unwrap();
        if let Some(s) = line.split("admin secret (generated for this run): ").nth(1) {
            secret = Some(s.trim().to_string());
        }
    }
    let secret = secret.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let r = post(
        &format!("{base}/api/admin/provision-client"),
        &[("x-admin-secret", &secret)],
        r#"{"name":"Acme","tier":"dev","api_key_name":"backend"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let key = r.json()["raw_api_key"].as_str().unwrap().to_string();
    let r = post(
        &format!("{base}/v1/chat"),
        &[("authorization", &bearer(&key))],
        r#"{"message":"Hello","agent_type":"product"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    // The seed's /v1/chat goes to ARES's chat route (gateway.yaml, ARES_V1_CHAT_UPSTREAM).
    assert_eq!(echo["path"], "/api/chat");
    assert_eq!(echo["headers"]["x-auth-method"], "api_key");
    assert_eq!(echo["body"]["message"], "Hello");

    post(&format!("{base}/api/auth/register"), &[], r#"{"email":"developer@example.com","password":"your-secure-password","name":"Jane Developer"}"#).await;
    let t = post(
        &format!("{base}/api/auth/login"),
        &[],
        r#"{"email":"developer@example.com","password":"your-secure-password"}"#,
    )
    .await
    .json();
    let r = post(
        &format!("{base}/api/chat"),
        &[(
            "authorization",
            &bearer(t["access_token"].as_str().unwrap()),
        )],
        r#"{"message":"Hello"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-auth-method"], "jwt");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn no_secret_reaches_a_log_line() {
    let up = Upstream::start().await;
    let (mut child, base) = serve_binary(
        &up.url(),
        &[("ARES_LOG", "debug"), ("ARES_LOG_FORMAT", "json")],
    )
    .await;
    let password = "log-test-password-42";
    let r = post(
        &format!("{base}/api/admin/provision-client"),
        &admin(),
        r#"{"name":"L","tier":"dev","api_key_name":"k"}"#,
    )
    .await;
    let key = r.json()["raw_api_key"].as_str().unwrap().to_string();
    let tenant = r.json()["tenant_id"].as_str().unwrap().to_string();
    post(
        &format!("{base}/v1/chat"),
        &[("authorization", &bearer(&key))],
        "{}",
    )
    .await;
    post(
        &format!("{base}/v1/chat"),
        &[("authorization", "Bearer ares_wrongwrongwrong")],
        "{}",
    )
    .await;
    get(
        &format!("{base}/api/admin/tenants"),
        &[("x-admin-secret", "wrong-admin-secret-xyz")],
    )
    .await;
    post(
        &format!("{base}/api/auth/register"),
        &[],
        &format!(r#"{{"email":"log@example.com","password":"{password}","name":"L"}}"#),
    )
    .await;
    post(
        &format!("{base}/api/auth/login"),
        &[],
        r#"{"email":"log@example.com","password":"bad-password-999"}"#,
    )
    .await;
    let t = post(
        &format!("{base}/api/auth/login"),
        &[],
        &format!(r#"{{"email":"log@example.com","password":"{password}"}}"#),
    )
    .await
    .json();
    let access = t["access_token"].as_str().unwrap().to_string();
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    get(
        &format!("{base}/api/chat?access_token={access}"),
        &[("authorization", &bearer(&access))],
    )
    .await;
    post(
        &format!("{base}/api/auth/refresh"),
        &[],
        &format!(r#"{{"refresh_token":"{refresh}"}}"#),
    )
    .await;
    post(
        &format!("{base}/api/auth/logout"),
        &[("authorization", &bearer(&access))],
        &format!(r#"{{"refresh_token":"{refresh}"}}"#),
    )
    .await;

    sigterm(&child);
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    child.wait().await.unwrap();

    assert!(
        logs.contains("\"target\":\"access\""),
        "access log lines exist:\n{logs:.2000}"
    );
    assert!(logs.contains("\"target\":\"audit\""), "audit lines exist");
    // Proxied requests name who made them: the tenant of a key, the user of a token.
    let claims = access.split('.').nth(1).unwrap();
    let claims: serde_json::Value = {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims);
        serde_json::from_slice(&raw.unwrap()).unwrap()
    };
    let user = claims["sub"].as_str().unwrap();
    for subject in [tenant.as_str(), user] {
        let field = format!("\"subject\":\"{subject}\"");
        assert!(logs.contains(&field), "no access line with {field}");
    }
    let hash = ares_gateway::auth::api_key::hash(&key);
    for (what, secret) in [
        ("raw key", key.as_str()),
        ("key hash", hash.as_str()),
        ("admin secret", ADMIN),
        ("wrong admin secret", "wrong-admin-secret-xyz"),
        ("jwt secret", JWT_SECRET),
        ("password", password),
        ("wrong password", "bad-password-999"),
        ("access token", access.as_str()),
        ("refresh token", refresh.as_str()),
        (
            "refresh token hash",
            &ares_gateway::auth::api_key::hash(&refresh),
        ),
        ("random key", "ares_wrongwrongwrong"),
    ] {
        assert!(!logs.contains(secret), "{what} appears in the logs");
    }
    // Logs are JSON lines.
    for line in logs.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

#[tokio::test]
async fn serve_on_the_memory_store_warns_that_nothing_persists() {
    let up = Upstream::start().await;
    let (mut child, _base) = serve_binary(&up.url(), &[("ARES_STORE", "memory")]).await;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("no warning that the memory store keeps nothing")
            .unwrap()
            .expect("stderr closed without the warning");
        if line.contains("WARN") && line.contains("nothing persists") {
            break;
        }
    }
}

#[tokio::test]
async fn a_closed_log_pipe_does_not_stop_the_gateway() {
    let up = Upstream::start().await;
    let (mut child, base) = serve_binary(&up.url(), &[("ARES_LOG", "debug")]).await;
    // The log reader goes away (a collector restarts, `| head` exits): writes now fail.
    drop(child.stderr.take());
    for _ in 0..20 {
        let r = get(&format!("{base}/healthz"), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert!(child.try_wait().unwrap().is_none(), "the gateway exited");
}

/// Found with a paused Redis: every request logged a warning, the log reader did not keep up,
/// and once the pipe was full the gateway froze (every request timed out). A log reader that
/// stops reading must cost log lines, never requests.
#[tokio::test]
async fn a_log_reader_that_stops_reading_never_stalls_requests() {
    let up = Upstream::start().await;
    // Debug: several lines per request. The pipe (64 KiB) is never read.
    let (mut child, base) = serve_binary(&up.url(), &[("ARES_LOG", "debug")]).await;
    let _unread = child.stderr.take();
    let started = std::time::Instant::now();
    for i in 0..3_000 {
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            get(
                &format!("{base}/v1/chat?n={i}"),
                &[("authorization", "Bearer ares_nope")],
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} stalled ({:?} in)", started.elapsed()));
        assert!([401, 429].contains(&r.status.as_u16()), "{}", r.status);
    }
    assert!(child.try_wait().unwrap().is_none(), "the gateway exited");
}
