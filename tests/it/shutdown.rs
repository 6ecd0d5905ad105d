//! The real binary: SIGTERM stops accepting, lets in-flight requests finish, exits 0.

use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = Upstream::start().await;
    let (mut child, base) = serve_binary(&up.url(), &[("ARES_LOG", "warn")]).await;
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
    // In flight once the upstream has it (it answers 3 s later).
    assert!(
        wait_until(Duration::from_secs(10), || async { up.count() >= 1 }).await,
        "the slow request never reached the upstream"
    );
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
    assert!(std::net::TcpStream::connect(base.trim_start_matches("http://")).is_err());
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
