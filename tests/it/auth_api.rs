//! `/api/auth/*` through the pipeline (no socket): shapes, refusals, refresh rotation, logout.

use crate::common::*;

#[tokio::test]
async fn register_login_me_refresh_have_the_seed_shapes() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let r = post(
        &g.url("/api/auth/register"),
        &[],
        r#"{"email":" Developer@Example.com ","password":"your-secure-password","name":"Jane Developer","role":"admin","tenant_id":"t1"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let v = r.json();
    assert_eq!(v["message"], "Registration successful");
    let user_id = v["user_id"].as_str().unwrap().to_string();
    assert!(user_id.starts_with("usr_"));
    // As ARES's own register: the new account's session too (a client of ARES keeps it).
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        (v["expires_in"].as_u64(), v["token_type"].as_str()),
        (Some(900), Some("Bearer"))
    );
    assert!(v["refresh_token"].as_str().unwrap().starts_with("rt_"));
    let first = bearer(v["access_token"].as_str().unwrap());
    let me = get(&g.url("/api/auth/me"), &[("authorization", &first)]).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["user_id"], user_id.as_str());

    let r = post(
        &g.url("/api/auth/register"),
        &[],
        r#"{"email":"developer@EXAMPLE.com","password":"another-secure-pw","name":"J"}"#,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (409, "EMAIL_TAKEN")
    );

    let r = post(
        &g.url("/api/auth/login"),
        &[],
        r#"{"email":"developer@example.com","password":"your-secure-password"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let t = r.json();
    assert_eq!(t["expires_in"], 900);
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["refresh_token"].as_str().unwrap().starts_with("rt_"));
    let access = t["access_token"].as_str().unwrap().to_string();
    assert!(access.starts_with("eyJ"));

    let me = get(
        &g.url("/api/auth/me"),
        &[("authorization", &bearer(&access))],
    )
    .await;
    assert_eq!(me.status, 200);
    let m = me.json();
    assert_eq!(m["user_id"], user_id.as_str());
    assert_eq!(m["email"], "developer@example.com");
    assert_eq!(m["name"], "Jane Developer");
    assert!(m["created_at"].is_u64());

    let r = post(
        &g.url("/api/auth/refresh"),
        &[],
        &format!(
            r#"{{"refresh_token":"{}"}}"#,
            t["refresh_token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["expires_in"], 900);
    // No rotation by default: the answer holds the same refresh token (a client written
    // against ARES, whose refresh always rotates, keeps what it is given).
    assert_eq!(
        v["refresh_token"], t["refresh_token"],
        "no rotation by default"
    );
    let fresh = v["access_token"].as_str().unwrap();
    assert_eq!(
        get(&g.url("/api/chat"), &[("authorization", &bearer(fresh))])
            .await
            .status,
        200
    );
    assert_eq!(up.last().headers["x-user-id"], user_id.as_str());
    // The original refresh token keeps working (the seed's clients keep it).
    let r = post(
        &g.url("/api/auth/refresh"),
        &[],
        &format!(
            r#"{{"refresh_token":"{}"}}"#,
            t["refresh_token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn registration_input_is_validated_before_hashing() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    for (body, field) in [
        (
            r#"{"email":"not-an-email","password":"your-secure-password","name":"J"}"#,
            "email",
        ),
        (
            r#"{"email":"a@example.com","password":"short","name":"J"}"#,
            "password",
        ),
        (
            r#"{"email":"a@example.com","password":"password123","name":"J"}"#,
            "common",
        ),
        (
            r#"{"email":"a@example.com","password":"your-secure-password","name":""}"#,
            "name",
        ),
        (
            r#"{"email":"a@example.com","password":"your-secure-password"}"#,
            "name",
        ),
    ] {
        let r = post(&g.url("/api/auth/register"), &[], body).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (400, "INVALID_INPUT"),
            "{body}"
        );
        assert!(
            r.json()["error"].as_str().unwrap().contains(field),
            "{body}: {}",
            r.json()
        );
    }
    let long = format!(
        r#"{{"email":"a@example.com","password":"{}","name":"J"}}"#,
        "x".repeat(1025)
    );
    assert_eq!(
        post(&g.url("/api/auth/register"), &[], &long).await.status,
        400
    );
}

#[tokio::test]
async fn login_failures_look_the_same_for_unknown_email_and_wrong_password() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    login(&g, "real@example.com").await;
    let wrong = post(
        &g.url("/api/auth/login"),
        &[],
        r#"{"email":"real@example.com","password":"wrong-password-1"}"#,
    )
    .await;
    let unknown = post(
        &g.url("/api/auth/login"),
        &[],
        r#"{"email":"ghost@example.com","password":"wrong-password-1"}"#,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.error_code(), "AUTH_INVALID_CREDENTIALS");
}

#[tokio::test]
async fn failed_logins_are_limited_per_account_and_ip_without_locking_others_out() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    login(&g, "victim@example.com").await;
    // Shipped: 10 failures per (account, IP) per hour.
    for i in 0..10 {
        let r = post(
            &g.url("/api/auth/login"),
            &[],
            r#"{"email":"victim@example.com","password":"wrong-password-1"}"#,
        )
        .await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = post(
        &g.url("/api/auth/login"),
        &[],
        r#"{"email":"victim@example.com","password":"your-secure-password"}"#,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (429, "RATE_LIMIT_EXCEEDED")
    );
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["error"], "Hourly rate limit exceeded");
    // Another account from the same address is unaffected.
    login(&g, "other@example.com").await;
}

#[tokio::test]
async fn auth_endpoints_are_limited_per_client_ip() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    // Shipped: 30 per minute per IP on /api/auth/*.
    let mut codes = Vec::new();
    for _ in 0..32 {
        let r = post(
            &g.url("/api/auth/refresh"),
            &[],
            r#"{"refresh_token":"rt_nope"}"#,
        )
        .await;
        codes.push(r.status.as_u16());
    }
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 30);
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 2);
}

#[tokio::test]
async fn logout_kills_the_refresh_token_and_the_access_token() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let t = login(&g, "bye@example.com").await;
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    assert_eq!(
        get(&g.url("/api/chat"), &[("authorization", &bearer(access))])
            .await
            .status,
        200
    );
    let body = format!(r#"{{"refresh_token":"{refresh}"}}"#);
    let r = post(
        &g.url("/api/auth/logout"),
        &[("authorization", &bearer(access))],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["message"], "Logged out successfully");
    let r = post(&g.url("/api/auth/refresh"), &[], &body).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_REFRESH_TOKEN")
    );
    let r = get(&g.url("/api/chat"), &[("authorization", &bearer(access))]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_TOKEN")
    );
    // Idempotent.
    assert_eq!(
        post(&g.url("/api/auth/logout"), &[], &body).await.status,
        200
    );
    assert_eq!(
        post(
            &g.url("/api/auth/logout"),
            &[],
            r#"{"refresh_token":"rt_unknown"}"#
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn refresh_tokens_are_never_access_tokens() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let t = login(&g, "rt@example.com").await;
    let r = get(
        &g.url("/api/chat"),
        &[(
            "authorization",
            &bearer(t["refresh_token"].as_str().unwrap()),
        )],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_TOKEN")
    );
    let r = post(
        &g.url("/api/auth/refresh"),
        &[],
        &format!(
            r#"{{"refresh_token":"{}"}}"#,
            t["access_token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(r.error_code(), "AUTH_INVALID_REFRESH_TOKEN");
}

#[tokio::test]
async fn rotation_returns_new_tokens_and_reuse_revokes_the_family() {
    let up = Upstream::start().await;
    let yaml = shipped_yaml()
        .replace("refresh_rotation: false", "refresh_rotation: true")
        .replace("refresh_reuse_grace_secs: 5", "refresh_reuse_grace_secs: 0");
    let g = pipeline_of(config_from(&yaml, &up.url(), &[])).await;
    let t = login(&g, "rotate@example.com").await;
    let first = t["refresh_token"].as_str().unwrap().to_string();
    let r = post(
        &g.url("/api/auth/refresh"),
        &[],
        &format!(r#"{{"refresh_token":"{first}"}}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    let second = r.json()["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // The rotated token comes back: theft. The whole family dies, the new token too.
    let r = post(
        &g.url("/api/auth/refresh"),
        &[],
        &format!(r#"{{"refresh_token":"{first}"}}"#),
    )
    .await;
    assert_eq!(r.error_code(), "AUTH_INVALID_REFRESH_TOKEN");
    let r = post(
        &g.url("/api/auth/refresh"),
        &[],
        &format!(r#"{{"refresh_token":"{second}"}}"#),
    )
    .await;
    assert_eq!(r.error_code(), "AUTH_INVALID_REFRESH_TOKEN");
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_make_one_rotation() {
    let up = Upstream::start().await;
    let g = pipeline_of(config_from(&rotating_yaml(), &up.url(), &[])).await;
    concurrent_refreshes_make_one_rotation(&[&g], "tabs@example.com").await;
    // The embedded store too (its rotation is one write transaction).
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let env = [("ARES_STORE", "embedded"), ("ARES_DATA_DIR", data)];
    let g = pipeline_of(config_from(&rotating_yaml(), &up.url(), &env)).await;
    concurrent_refreshes_make_one_rotation(&[&g], "tabs@example.com").await;
}

#[tokio::test]
async fn logout_all_ends_every_session_of_the_user() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    logout_all_ends_every_session(&g, &g, "everywhere@example.com").await;
}

#[tokio::test]
async fn cookie_sessions_keep_the_refresh_token_out_of_scripts_and_refuse_forgery() {
    let up = Upstream::start().await;
    let app = "https://app.example.com";
    let g = pipeline(
        &up.url(),
        &[("ARES_AUTH_COOKIES", "true"), ("ARES_CORS_ORIGINS", app)],
    )
    .await;
    post(
        &g.url("/api/auth/register"),
        &[],
        r#"{"email":"cookie@example.com","password":"your-secure-password","name":"C"}"#,
    )
    .await;
    let r = post(
        &g.url("/api/auth/login"),
        &[("origin", app)],
        r#"{"email":"cookie@example.com","password":"your-secure-password"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(v["access_token"].is_string());
    assert!(
        v.get("refresh_token").is_none(),
        "the refresh token is readable: {v}"
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let set = r.header("set-cookie").unwrap().to_string();
    for part in [
        "ares_refresh=rt_",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/api/auth/",
    ] {
        assert!(set.contains(part), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();

    // The cookie alone, from the app, with the header a form cannot send: a new access token.
    let from_app = [
        ("cookie", cookie.as_str()),
        ("origin", app),
        ("x-requested-with", "fetch"),
    ];
    let r = send("POST", &g.url("/api/auth/refresh"), &from_app, None).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["access_token"].is_string());
    // Forgery: another origin, no origin, or no X-Requested-With.
    for headers in [
        vec![
            ("cookie", cookie.as_str()),
            ("origin", "https://evil.example.com"),
            ("x-requested-with", "x"),
        ],
        vec![("cookie", cookie.as_str()), ("x-requested-with", "x")],
        vec![("cookie", cookie.as_str()), ("origin", app)],
    ] {
        let r = send("POST", &g.url("/api/auth/refresh"), &headers, None).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (403, "AUTH_FORBIDDEN"),
            "{headers:?}"
        );
    }
    // Logout reads the cookie and clears it; the refresh token is dead.
    let r = send("POST", &g.url("/api/auth/logout"), &from_app, None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = send("POST", &g.url("/api/auth/refresh"), &from_app, None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn changing_the_password_ends_every_other_session() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let first = login(&g, "change@example.com").await;
    let old_access = first["access_token"].as_str().unwrap().to_string();
    let old_refresh = first["refresh_token"].as_str().unwrap().to_string();
    let change = |current: &str, new: &str| {
        let (url, auth) = (g.url("/api/auth/password"), bearer(&old_access));
        let body = format!(r#"{{"current_password":"{current}","new_password":"{new}"}}"#);
        async move { post(&url, &[("authorization", &auth)], &body).await }
    };
    let r = change("not-my-password", "a-brand-new-password-9").await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_CREDENTIALS")
    );
    let r = change("your-secure-password", "password").await;
    assert_eq!(r.status, 400, "a weak new password was taken");
    let r = change("your-secure-password", "a-brand-new-password-9").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["message"], "Password changed");
    let new_access = v["access_token"].as_str().unwrap().to_string();
    // The old session is gone; the one returned works.
    let r = get(
        &g.url("/api/chat"),
        &[("authorization", &bearer(&old_access))],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = post(
        &g.url("/api/auth/refresh"),
        &[],
        &format!(r#"{{"refresh_token":"{old_refresh}"}}"#),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = get(
        &g.url("/api/chat"),
        &[("authorization", &bearer(&new_access))],
    )
    .await;
    assert_eq!(r.status, 200);
    // Only the new password logs in.
    let login_with = |pw: &str| {
        let url = g.url("/api/auth/login");
        let body = format!(r#"{{"email":"change@example.com","password":"{pw}"}}"#);
        async move { post(&url, &[], &body).await.status }
    };
    assert_eq!(login_with("your-secure-password").await, 401);
    assert_eq!(login_with("a-brand-new-password-9").await, 200);
    // Without a token: 401.
    let r = post(
        &g.url("/api/auth/password"),
        &[],
        r#"{"current_password":"x","new_password":"y"}"#,
    )
    .await;
    assert_eq!(r.status, 401);
}
