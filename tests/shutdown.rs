//! The real binary: SIGTERM stops accepting, lets in-flight requests finish, exits 0.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = Upstream::start().await;
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"))
        .args([
            "serve",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"),
        ])
        .env("ARES_LISTEN", format!("127.0.0.1:{port}"))
        .env("ARES_METRICS_LISTEN", "")
        .env("ARES_UPSTREAM", up.url())
        .env("ARES_ADMIN_SECRET", ADMIN)
        .env("ARES_JWT_SECRET", JWT_SECRET)
        .env("ARES_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = tokio::time::timeout(
            Duration::from_millis(500),
            client().get(format!("{base}/healthz").parse().unwrap()),
        )
        .await
        .is_ok_and(|r| r.is_ok_and(|r| r.status() == 200));
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tokens = {
        post(
            &format!("{base}/api/auth/register"),
            &[],
            r#"{"email":"d@example.com","password":"your-secure-password","name":"D"}"#,
        )
        .await;
        post(
            &format!("{base}/api/auth/login"),
            &[],
            r#"{"email":"d@example.com","password":"your-secure-password"}"#,
        )
        .await
        .json()
    };
    let auth = bearer(tokens["access_token"].as_str().unwrap());
    let slow_url = format!("{base}/api/slow");
    let in_flight = tokio::spawn(async move { get(&slow_url, &[("authorization", &auth)]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    // The slow request (3 s at the upstream) still completes.
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "slow");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("did not exit")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // And the listener is closed.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn check_prints_every_problem_or_the_route_table() {
    let bin = env!("CARGO_BIN_EXE_ares-gateway");
    let ok = std::process::Command::new(bin)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"),
        ])
        .env_remove("ARES_STORE")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let table = String::from_utf8_lossy(&ok.stdout);
    for needle in [
        "/api/admin/tenants",
        "/v1/",
        "/api/v1/",
        "api_key",
        "jwt",
        "handler admin",
        "upstream default",
    ] {
        assert!(table.contains(needle), "{needle} missing from:\n{table}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "server:\n  listen: nowhere\n  colour: blue\nroutes:\n  - { prefix: /x/, auth: jwt, upstream: none }\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server"), "{err}");
    assert!(err.contains("routes[0].upstream"), "{err}");
}
