//! The seed's flows through the gateway in front of the real ARES (`../shared/ares`, dirmacs/ares
//! at 81aa736), with the shipped `gateway.yaml` and the postgres store on ARES's own database:
//! the answers and ARES's tables are checked. Skipped with one printed line where the real ARES
//! is absent.

use crate::common::real_ares::{RealAres, ARES_ADMIN_KEY, ARES_JWT_SECRET};
use crate::common::*;

async fn gateway_before(ares: &RealAres) -> TestGateway {
    let admins = format!("{ADMIN},{ARES_ADMIN_KEY}");
    start(config(
        &ares.url,
        &[
            ("ARES_STORE", "postgres"),
            ("DATABASE_URL", &ares.database_url),
            ("ARES_UPSTREAM_JWT_SECRET", ARES_JWT_SECRET),
            ("ARES_ADMIN_SECRET", &admins),
        ],
    ))
    .await
}

const HELLO: &str = r#"{"message": "Hello", "agent_type": "product"}"#;

#[tokio::test]
async fn a_user_who_registers_at_the_gateway_chats_with_the_real_ares() {
    let Some(ares) = RealAres::start("real_ares: register and chat") else {
        return;
    };
    let g = gateway_before(&ares).await;
    let r = post(
        &g.url("/api/auth/register"),
        &[],
        r#"{"email":"new@example.com","password":"your-secure-password","name":"New"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let v = r.json();
    let user_id = v["user_id"].as_str().unwrap().to_string();
    let db = ares.db().await;
    let row = db
        .query_one(
            "SELECT email, password_hash FROM users WHERE id = $1",
            &[&user_id],
        )
        .await
        .expect("the gateway's user is a row of ARES's users");
    assert_eq!(row.get::<_, String>(0), "new@example.com");
    assert!(row.get::<_, String>(1).starts_with("$argon2id$"));

    // Chat with the registration's own token, then with a login's: JSON, then SSE.
    let token = bearer(v["access_token"].as_str().unwrap());
    let r = post(&g.url("/api/chat"), &[("authorization", &token)], HELLO).await;
    assert_eq!(r.status, 200, "{:?} {}", r.body, ares.log());
    assert!(r.json()["response"].as_str().unwrap().contains("stub LLM"));
    let login = login_only(&g, "new@example.com").await;
    let token = bearer(login["access_token"].as_str().unwrap());
    let r = post(
        &g.url("/api/chat/stream"),
        &[("authorization", &token)],
        HELLO,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.contains(r#""event":"start""#) && text.contains("stub "),
        "{text}"
    );
    // ARES keeps the conversation under the gateway's user id.
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM conversations WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n >= 1, "no conversation of {user_id} in ARES");
    // One record: ARES's own login takes the same account.
    let direct = post(
        &format!("{}/api/auth/login", ares.url),
        &[],
        r#"{"email":"new@example.com","password":"your-secure-password"}"#,
    )
    .await;
    assert_eq!(direct.status, 200, "{:?}", direct.body);
    // ARES's public agent list needs no token at the gateway either.
    let r = get(&g.url("/api/agents"), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.json().as_array().is_some_and(|a| !a.is_empty()));
}

/// Log in an account that exists.
async fn login_only(g: &TestGateway, email: &str) -> serde_json::Value {
    let r = post(
        &g.url("/api/auth/login"),
        &[],
        &format!(r#"{{"email":"{email}","password":"your-secure-password"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

#[tokio::test]
async fn the_seeds_v1_chat_with_a_tenants_key_answers_aress_reply() {
    let Some(ares) = RealAres::start("real_ares: provision and /v1/chat") else {
        return;
    };
    let g = gateway_before(&ares).await;
    let r = post(
        &g.url("/api/admin/provision-client"),
        &admin(),
        r#"{"name":"Acme","tier":"dev","api_key_name":"backend","product_type":"generic"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let v = r.json();
    let (tenant, raw) = (
        v["tenant_id"].as_str().unwrap().to_string(),
        v["raw_api_key"].as_str().unwrap().to_string(),
    );
    let db = ares.db().await;
    // What ARES's own provisioning writes: the tenant, the key as ARES's check reads it, and
    // the agents of the product's templates.
    let tier: String = db
        .query_one("SELECT tier FROM tenants WHERE id = $1", &[&tenant])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tier, "dev");
    let row = db
        .query_one(
            "SELECT key_prefix, key_hash, is_active FROM api_keys WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), &raw[..13]);
    assert_eq!(
        row.get::<_, String>(1),
        ares_gateway::auth::api_key::hash(&raw)
    );
    assert_eq!(row.get::<_, i32>(2), 1);
    let agents: i64 = db
        .query_one(
            "SELECT count(*) FROM tenant_agents WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .get(0);
    let created = v["agents_created"].as_array().unwrap().len();
    assert!(
        created > 0 && agents == created as i64,
        "{agents} rows, {v}"
    );

    // The seed's first example.
    let key = bearer(&raw);
    let r = post(&g.url("/v1/chat"), &[("authorization", &key)], HELLO).await;
    assert_eq!(r.status, 200, "{:?} {}", r.body, ares.log());
    assert!(r.json()["response"].as_str().unwrap().contains("stub LLM"));
    let r = post(&g.url("/v1/chat/stream"), &[("authorization", &key)], HELLO).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(String::from_utf8_lossy(&r.body).contains(r#""event":"token""#));

    // A tier changed at the gateway is the tier ARES applies.
    let r = send(
        "PUT",
        &g.url(&format!("/api/admin/tenants/{tenant}/quota")),
        &admin(),
        Some(r#"{"tier":"pro"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let tier: String = db
        .query_one("SELECT tier FROM tenants WHERE id = $1", &[&tenant])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tier, "pro");

    // ARES's other /api/v1 routes, by the shipped config: a minted token (the client's key
    // never leaves the gateway), which ARES's key middleware refuses as no key at all.
    let r = get(&g.url("/v1/agents"), &[("authorization", &key)]).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert!(String::from_utf8_lossy(&r.body).contains("Must start with ares_"));
    // With the client's key passed through (ARES_V1_CREDENTIAL=passthrough), its key
    // middleware finds the gateway's key in its table (an unknown one is 401 "Invalid API key"),
    // then fails on its own usage query (a SUM type mismatch at 81aa736): ARES's 500 "Failed to
    // check usage", passed through as ARES's answer.
    let admins = format!("{ADMIN},{ARES_ADMIN_KEY}");
    let g = start(config(
        &ares.url,
        &[
            ("ARES_STORE", "postgres"),
            ("DATABASE_URL", &ares.database_url),
            ("ARES_UPSTREAM_JWT_SECRET", ARES_JWT_SECRET),
            ("ARES_ADMIN_SECRET", &admins),
            ("ARES_V1_CREDENTIAL", "passthrough"),
        ],
    ))
    .await;
    let r = get(&g.url("/v1/agents"), &[("authorization", &key)]).await;
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        body.contains("Failed to check usage") || r.status == 200,
        "{} {body}",
        r.status
    );
    assert_ne!(r.status, 401, "ARES did not find the gateway's key: {body}");
    let direct = get(
        &format!("{}/api/v1/agents", ares.url),
        &[("authorization", "Bearer ares_notakeyatallnotakeyatall00")],
    )
    .await;
    assert_eq!(
        direct.status, 401,
        "ARES's own answer to a key it does not know"
    );
}

/// Sessions ARES issued, during a migration (`ARES_ACCEPT_TOKENS_WITHOUT_ISSUER`, ARES's secret
/// among the gateway's keys): ARES's access token passes, its refresh token never passes as an
/// access token, works once at the gateway's refresh (starting a gateway session and ending
/// ARES's), and a gateway logout ends an ARES session and its access token.
#[tokio::test]
async fn sessions_ares_issued_carry_over_once_and_end_at_a_gateway_logout() {
    let Some(ares) = RealAres::start("real_ares: sessions during a migration") else {
        return;
    };
    let admins = format!("{ADMIN},{ARES_ADMIN_KEY}");
    let g = start(config(
        &ares.url,
        &[
            ("ARES_STORE", "postgres"),
            ("DATABASE_URL", &ares.database_url),
            ("ARES_UPSTREAM_JWT_SECRET", ARES_JWT_SECRET),
            ("ARES_ADMIN_SECRET", &admins),
            ("ARES_ACCEPT_TOKENS_WITHOUT_ISSUER", "true"),
            ("ARES_JWT_PREVIOUS_SECRETS", ARES_JWT_SECRET),
        ],
    ))
    .await;
    // An account ARES made itself, and two sessions of it at ARES.
    let r = post(
        &format!("{}/api/auth/register", ares.url),
        &[],
        r#"{"email":"old@example.com","password":"your-secure-password","name":"Old"}"#,
    )
    .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let ares_login = || async {
        let r = post(
            &format!("{}/api/auth/login", ares.url),
            &[],
            r#"{"email":"old@example.com","password":"your-secure-password"}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = r.json();
        (
            v["access_token"].as_str().unwrap().to_string(),
            v["refresh_token"].as_str().unwrap().to_string(),
        )
    };
    let (access, refresh) = ares_login().await;
    let chat = |token: String| {
        let url = g.url("/api/chat");
        async move { post(&url, &[("authorization", &bearer(&token))], HELLO).await }
    };
    assert_eq!(
        chat(access.clone()).await.status,
        200,
        "ARES's access token passes"
    );
    let r = chat(refresh.clone()).await;
    assert_eq!(
        r.status, 401,
        "ARES's refresh token passed as an access token"
    );
    assert_eq!(r.error_code(), "AUTH_INVALID_TOKEN");

    // Once at the gateway's refresh: a gateway session, and ARES's is over.
    let body = serde_json::json!({ "refresh_token": refresh }).to_string();
    let r = post(&g.url("/api/auth/refresh"), &[], &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert!(v["refresh_token"].as_str().unwrap().starts_with("rt_"));
    assert_eq!(
        chat(v["access_token"].as_str().unwrap().to_string())
            .await
            .status,
        200
    );
    let again = post(&g.url("/api/auth/refresh"), &[], &body).await;
    assert_eq!(again.status, 401, "an ARES refresh token worked twice");
    let at_ares = post(&format!("{}/api/auth/refresh", ares.url), &[], &body).await;
    assert_eq!(
        at_ares.status, 401,
        "ARES still held the session the gateway took"
    );

    // A gateway logout with an ARES session: ARES's session and the access token end.
    let (access, refresh) = ares_login().await;
    let r = post(
        &g.url("/api/auth/logout"),
        &[("authorization", &bearer(&access))],
        &serde_json::json!({ "refresh_token": refresh }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        chat(access).await.status,
        401,
        "the ARES access token outlived the logout"
    );
    let at_ares = post(
        &format!("{}/api/auth/refresh", ares.url),
        &[],
        &serde_json::json!({ "refresh_token": refresh }).to_string(),
    )
    .await;
    assert_eq!(
        at_ares.status, 401,
        "the ARES session outlived the gateway's logout"
    );
}

/// A user who owns ARES data (a conversation) cannot be deleted through the gateway (ARES's
/// foreign keys keep the account): a clear 400, not a 500, and the user is still there; one
/// without ARES data is deleted from ARES's users.
#[tokio::test]
async fn a_user_with_ares_data_is_not_deleted_and_one_without_is() {
    let Some(ares) = RealAres::start("real_ares: deleting users") else {
        return;
    };
    let g = gateway_before(&ares).await;
    let r = post(
        &g.url("/api/auth/register"),
        &[],
        r#"{"email":"keeps@example.com","password":"your-secure-password","name":"K"}"#,
    )
    .await;
    let v = r.json();
    let (id, token) = (
        v["user_id"].as_str().unwrap().to_string(),
        bearer(v["access_token"].as_str().unwrap()),
    );
    assert_eq!(
        post(&g.url("/api/chat"), &[("authorization", &token)], HELLO)
            .await
            .status,
        200
    );
    let r = send(
        "DELETE",
        &g.url(&format!("/api/admin/users/{id}")),
        &admin(),
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(String::from_utf8_lossy(&r.body).contains("disable it instead"));
    let db = ares.db().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM users WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let r = post(
        &g.url("/api/auth/register"),
        &[],
        r#"{"email":"goes@example.com","password":"your-secure-password","name":"G"}"#,
    )
    .await;
    let gone = r.json()["user_id"].as_str().unwrap().to_string();
    let r = send(
        "DELETE",
        &g.url(&format!("/api/admin/users/{gone}")),
        &admin(),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let n: i64 = db
        .query_one("SELECT count(*) FROM users WHERE id = $1", &[&gone])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
