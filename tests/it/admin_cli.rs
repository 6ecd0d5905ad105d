//! `ares-gateway admin ...` against a running gateway: tables, `--json`, and exit codes a script
//! can rely on.

use std::process::Output;

use crate::common::*;

/// Run the command; async, so the in-process gateway on this runtime keeps answering.
async fn admin_cli(base: &str, args: &[&str], secret: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"));
    cmd.arg("admin").args(["--url", base]).args(args);
    cmd.env_remove("ARES_ADMIN_SECRET");
    if let Some(s) = secret {
        cmd.env("ARES_ADMIN_SECRET", s);
    }
    cmd.output().await.unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test]
async fn the_admin_command_drives_tenants_keys_users_and_audit() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let base = format!("http://{}", g.addr);
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let base = base.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            admin_cli(&base, &args, Some(ADMIN)).await
        }
    };

    let out = run(&["--json", "tenants", "create", "Acme", "--tier", "dev"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tenant: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = tenant["id"].as_str().unwrap().to_string();
    let out = run(&["tenants", "list"]).await;
    let table = stdout(&out);
    assert!(table.starts_with("id"), "{table}");
    assert!(
        table.contains(&id) && table.contains("Acme") && table.contains("dev"),
        "{table}"
    );

    // A key: created (raw shown once), disabled, rotated, revoked.
    let out = run(&[
        "--json", "keys", "create", &id, "backend", "--scopes", "chat",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let key_id = v["api_key"]["id"].as_str().unwrap().to_string();
    let raw = v["raw_key"].as_str().unwrap().to_string();
    let chat = || {
        let (url, auth) = (g.url("/v1/chat"), bearer(&raw));
        async move { post(&url, &[("authorization", &auth)], "{}").await }
    };
    assert_eq!(chat().await.status, 200);
    assert_eq!(
        run(&["keys", "disable", &id, &key_id]).await.status.code(),
        Some(0)
    );
    assert_eq!(chat().await.status, 401);
    assert_eq!(
        run(&["keys", "enable", &id, &key_id]).await.status.code(),
        Some(0)
    );
    let out = run(&["keys", "rotate", &id, &key_id, "--grace-secs", "60"]).await;
    assert!(
        stdout(&out).contains("raw key (shown once): ares_"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(&format!("previous key {key_id} works until")));
    assert_eq!(
        run(&["keys", "revoke", &id, &key_id]).await.status.code(),
        Some(0)
    );
    assert_eq!(chat().await.status, 401);

    // Users.
    login(&g, "cli@example.com").await;
    let out = run(&["users", "list", "--email", "cli@"]).await;
    assert!(stdout(&out).contains("cli@example.com"), "{}", stdout(&out));
    let out = run(&["--json", "users", "list"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let user = v["users"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        run(&["users", "disable", &user]).await.status.code(),
        Some(0)
    );
    assert!(stdout(&run(&["users", "show", &user]).await).contains("true"));
    assert_eq!(
        run(&["users", "logout", &user]).await.status.code(),
        Some(0)
    );

    // The audit trail saw it all.
    let out = run(&["audit", "--limit", "100"]).await;
    let text = stdout(&out);
    for action in [
        "tenant.create",
        "api_key.create",
        "api_key.disable",
        "api_key.rotate",
        "api_key.revoke",
        "user.disable",
    ] {
        assert!(text.contains(action), "{action} missing:\n{text}");
    }
    assert!(!text.contains(&raw));

    // Exit codes: refused 1 (one line, the code), unreachable 3, no secret 2.
    let out = run(&["tenants", "show", "ten_missing"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("404 NOT_FOUND"), "{err}");
    let out = admin_cli(&base, &["tenants", "list"], Some("wrong-admin-secret-123")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTH_INVALID_ADMIN_SECRET"));
    let out = admin_cli(
        &format!("http://127.0.0.1:{}", free_port()),
        &["tenants", "list"],
        Some(ADMIN),
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    let out = admin_cli(&base, &["tenants", "list"], None).await;
    assert_eq!(out.status.code(), Some(2));
    // The secret never reaches the terminal.
    assert!(!String::from_utf8_lossy(&run(&["audit"]).await.stdout).contains(ADMIN));
}
