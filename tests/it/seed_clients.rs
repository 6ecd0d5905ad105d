//! The seed's JavaScript and Python `AresClient` classes, run unchanged against the gateway:
//! login, chat, let the client refresh, chat again.

use crate::common::*;

async fn run_client(program: &str, script: &str) {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let email = format!("{program}@example.com");
    let r = post(
        &g.url("/api/auth/register"),
        &[],
        &format!(
            r#"{{"email":"{email}","password":"your-secure-password","name":"Jane Developer"}}"#
        ),
    )
    .await;
    assert_eq!(r.status, 201);
    let script = format!("{}/tests/seed/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(program)
        .arg(&script)
        .arg(format!("http://{}", g.addr))
        .arg(&email)
        .arg("your-secure-password")
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("{program} is required for this test (.ci/run installs it): {e}")
        });
    assert!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["first"]["ok"], true, "{v}");
    assert_eq!(v["first"]["path"], "/api/chat");
    assert_eq!(v["second"]["path"], "/api/chat");
    assert_eq!(v["refreshed"], true, "the client refreshed its token");
    let chats: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.uri == "/api/chat")
        .collect();
    assert_eq!(chats.len(), 2);
    for c in &chats {
        assert_eq!(c.headers["x-auth-method"], "jwt");
        assert_eq!(c.headers["x-user-email"], email.as_str());
        let body: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(body["agent_type"], "product");
    }
}

#[tokio::test]
async fn seed_javascript_client_works_unchanged() {
    run_client("node", "client.mjs").await;
}

#[tokio::test]
async fn seed_python_client_works_unchanged() {
    run_client("python3", "client.py").await;
}

/// A client written against ARES's real answers (`tests/seed/ares_native_client.py`): it uses
/// register's token pair and stores every refresh's refresh token. It passes against the
/// gateway, and (where `../shared/ares` is here) against the real ARES itself, which shows the
/// script reads ARES's answers and not the gateway's.
#[tokio::test]
async fn a_client_written_against_ares_itself_works_against_the_gateway() {
    let script = format!(
        "{}/tests/seed/ares_native_client.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let run = |base: String, email: &'static str| {
        let script = script.clone();
        async move {
            let out = tokio::process::Command::new("python3")
                .arg(&script)
                .arg(base)
                .arg(email)
                .arg("your-secure-password")
                .output()
                .await
                .expect("python3 is required (.ci/run installs it)");
            assert!(
                out.status.success(),
                "the ARES-native client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        }
    };
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let v = run(format!("http://{}", g.addr), "native@example.com").await;
    assert_eq!(v["chats"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["logged_out"]["message"], "Logged out successfully");
    // With rotation on, the same client follows the new token each time.
    let rotating = start(config_from(&rotating_yaml(), &up.url(), &[])).await;
    let v = run(format!("http://{}", rotating.addr), "native2@example.com").await;
    assert_eq!(v["chats"].as_array().unwrap().len(), 3, "{v}");
    if let Some(ares) = crate::common::real_ares::RealAres::start("seed_clients: ARES itself") {
        let v = run(ares.url.clone(), "native3@example.com").await;
        assert_eq!(v["chats"].as_array().unwrap().len(), 3, "{v}");
    }
}
