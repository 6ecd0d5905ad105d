//! The gateway in front of an upstream that authenticates like ARES (dirmacs/ares at 81aa736):
//! it re-verifies every request's `Authorization: Bearer <jwt>` with its own copy of the secret
//! and jsonwebtoken's default validation, never reads the identity headers, answers 401
//! `{"error":"Unauthorized"}`, and (as a newer ARES does) 403 without a non-empty `roles.ares`.
//! Its admin routes want ARES's own `X-Admin-Secret`, and it keeps its own API-key table (by
//! SHA-256 of the 64 hex after `ares_`, as ARES stores them).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::common::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde_json::json;

/// ARES's `JWT_SECRET` (its own copy; the gateway has it as `ARES_UPSTREAM_JWT_SECRET`).
const ARES_SECRET: &str = "ares-own-jwt-secret-0123456789abcdef";

/// ARES's key table: (SHA-256 of the 64 hex, tenant id). The key is `ares_` + [`ARES_KEY_HEX`].
const ARES_KEY_HEX: &str = "7f3a9c0e5b1d2f4a6c8e0b2d4f6a8c0e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a";
static ARES_KEYS: std::sync::LazyLock<Vec<(String, &'static str)>> =
    std::sync::LazyLock::new(|| vec![(sha256_hex(ARES_KEY_HEX.as_bytes()), "ten_ares")]);

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the ARES-like upstream let in: the path and the claims it verified.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    claims: serde_json::Value,
    token: String,
}

struct Ares {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Ares {
    async fn start() -> Ares {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = seen.clone();
        let addr = serve(move |req| {
            let rec = rec.clone();
            async move { ares_answer(req, &rec) }
        })
        .await;
        Ares { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// ARES's middleware: admin routes by `X-Admin-Secret`, everything else by a JWT it verifies.
fn ares_answer(req: Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path.starts_with("/api/admin/") {
        if req
            .headers()
            .get("x-admin-secret")
            .and_then(|v| v.to_str().ok())
            != Some(ADMIN)
        {
            return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
        }
        seen.lock().unwrap().push(Seen {
            path: path.clone(),
            claims: json!(null),
            token: String::new(),
        });
        return json_reply(StatusCode::OK, json!({"agents": [], "path": path}));
    }
    let token = bearer_of(&req);
    // ARES's own keys: `ares_` + 64 hex, looked up by SHA-256 of the hex.
    if let Some(hex) = token.strip_prefix("ares_") {
        let hash = sha256_hex(hex.as_bytes());
        let Some(tenant) = ARES_KEYS.iter().find(|(h, _)| *h == hash).map(|(_, t)| t) else {
            return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
        };
        seen.lock().unwrap().push(Seen {
            path: path.clone(),
            claims: json!({"tenant_id": tenant, "auth_method": "ares_api_key"}),
            token,
        });
        return json_reply(
            StatusCode::OK,
            json!({"response": "Hello", "tenant": tenant}),
        );
    }
    let key = DecodingKey::from_secret(ARES_SECRET.as_bytes());
    let Ok(data) = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &Validation::default())
    else {
        return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
    };
    let claims = data.claims;
    // ARES's Claims: sub and email are required strings.
    if !claims["sub"].is_string() || !claims["email"].is_string() {
        return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
    }
    let has_role = claims["roles"]["ares"]
        .as_array()
        .is_some_and(|r| !r.is_empty());
    if !has_role {
        return json_reply(StatusCode::FORBIDDEN, json!({"error": "Forbidden"}));
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        claims: claims.clone(),
        token,
    });
    if path.ends_with("/stream") {
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Full::new(Bytes::from_static(
                b"data: {\"delta\":\"Hel\"}\n\ndata: {\"delta\":\"lo\"}\n\ndata: [DONE]\n\n",
            )))
            .unwrap();
    }
    json_reply(
        StatusCode::OK,
        json!({"response": "Hello", "agent": "router", "sub": claims["sub"]}),
    )
}

/// The newer generation meters `/v1` from the minted token's claims and answers `/api/v1/chat`
/// itself: its deployment leaves `/v1/chat` at `/api/v1/chat` (`ARES_V1_CHAT_UPSTREAM`).
async fn gateway_in_front_of(ares: &Ares, env: &[(&str, &str)]) -> TestGateway {
    let mut vars = vec![
        ("ARES_UPSTREAM_JWT_SECRET", ARES_SECRET),
        ("ARES_V1_CHAT_UPSTREAM", "/api/v1/chat"),
    ];
    vars.extend_from_slice(env);
    gateway(&ares.url(), &vars).await
}

#[tokio::test]
async fn a_users_chat_and_stream_reach_ares_with_a_token_it_accepts() {
    let ares = Ares::start().await;
    let g = gateway_in_front_of(&ares, &[]).await;
    let login = login(&g, "jane@example.com").await;
    let token = login["access_token"].as_str().unwrap();
    let user_id = g
        .state
        .store
        .records()
        .get_user_by_email("jane@example.com")
        .await
        .unwrap()
        .unwrap()
        .id;

    let r = post(
        &g.url("/api/chat"),
        &[("authorization", &bearer(token))],
        r#"{"message":"hi"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["sub"], user_id.as_str());
    let seen = ares.seen();
    let claims = &seen.last().unwrap().claims;
    assert_eq!(claims["email"], "jane@example.com");
    assert_eq!(claims["auth_method"], "jwt");
    assert_eq!(claims["roles"]["ares"][0], "user");
    assert!(claims["exp"].as_u64().unwrap() <= claims["iat"].as_u64().unwrap() + 60);

    let r = get(
        &g.url("/api/chat/stream"),
        &[("authorization", &bearer(token))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(String::from_utf8_lossy(&r.body).contains("data: [DONE]"));
    assert_eq!(ares.seen().len(), 2);
}

#[tokio::test]
async fn an_api_key_request_reaches_ares_with_a_minted_token_naming_its_tenant() {
    let ares = Ares::start().await;
    let g = gateway_in_front_of(&ares, &[]).await;
    let (tenant_id, key_id, raw) = provision(&g, "pro").await;
    let r = post(
        &g.url("/v1/chat"),
        &[("authorization", &bearer(&raw))],
        r#"{"message":"hi"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = ares.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.path, "/api/v1/chat");
    assert_eq!(last.claims["sub"], tenant_id.as_str());
    assert_eq!(last.claims["tenant_id"], tenant_id.as_str());
    assert_eq!(last.claims["key_id"], key_id.as_str());
    assert_eq!(last.claims["tier"], "pro");
    assert_eq!(last.claims["auth_method"], "api_key");
    // The raw key never reaches ARES.
    assert!(!last.token.contains("ares_"));
}

#[tokio::test]
async fn revoked_expired_and_logged_out_tokens_never_reach_ares() {
    let ares = Ares::start().await;
    let g = gateway_in_front_of(&ares, &[]).await;
    let login = login(&g, "sam@example.com").await;
    let token = login["access_token"].as_str().unwrap().to_string();
    let auth = bearer(&token);

    // Expired, signed with the gateway's own key.
    let now = ares_gateway::util::unix_now();
    let expired = jsonwebtoken::encode(
        &Header::default(),
        &json!({"iss": "ares-gateway", "sub": "usr_x", "email": "", "iat": now - 7200, "exp": now - 3600}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let r = get(&g.url("/api/chat"), &[("authorization", &bearer(&expired))]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "AUTH_INVALID_TOKEN");

    let r = post(
        &g.url("/api/auth/logout"),
        &[("authorization", &auth)],
        &format!(
            r#"{{"refresh_token":"{}"}}"#,
            login["refresh_token"].as_str().unwrap()
        ),
    )
    .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let r = get(&g.url("/api/chat"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "AUTH_INVALID_TOKEN");

    // An API key deleted at the gateway.
    let (tenant, key_id, raw) = provision(&g, "pro").await;
    assert_eq!(revoke_key(&g, &tenant, &key_id).await.status, 204);
    let r = get(&g.url("/v1/chat"), &[("authorization", &bearer(&raw))]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "AUTH_INVALID_API_KEY");

    assert!(ares.seen().is_empty(), "{:?}", ares.seen());
}

#[tokio::test]
async fn a_minted_token_is_never_a_client_credential_at_the_gateway() {
    let ares = Ares::start().await;
    // Even when the upstream's secret is the gateway's own signing key.
    let g = gateway_in_front_of(
        &ares,
        &[
            ("ARES_JWT_SECRET", ARES_SECRET),
            ("ARES_ACCEPT_TOKENS_WITHOUT_ISSUER", "true"),
        ],
    )
    .await;
    let login = login(&g, "max@example.com").await;
    let token = login["access_token"].as_str().unwrap();
    let r = get(&g.url("/api/chat"), &[("authorization", &bearer(token))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let minted = ares.seen().last().unwrap().token.clone();
    let r = get(&g.url("/api/chat"), &[("authorization", &bearer(&minted))]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "AUTH_INVALID_TOKEN");
    assert_eq!(ares.seen().len(), 1);
}

#[tokio::test]
async fn tokens_ares_issued_pass_only_when_tokens_without_issuer_are_accepted() {
    let ares = Ares::start().await;
    let now = ares_gateway::util::unix_now();
    // ARES's shape: no iss, no kid, signed with its JWT_SECRET (here the gateway's previous key).
    let ares_token = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "8c1d2f9e-ares-user", "email": "old@example.com", "iat": now, "exp": now + 600}),
        &EncodingKey::from_secret(ARES_SECRET.as_bytes()),
    )
    .unwrap();
    let auth = bearer(&ares_token);

    let g = gateway_in_front_of(&ares, &[("ARES_JWT_PREVIOUS_SECRETS", ARES_SECRET)]).await;
    let r = get(&g.url("/api/chat"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 401, "no iss is refused by default");

    let g = gateway_in_front_of(
        &ares,
        &[
            ("ARES_JWT_PREVIOUS_SECRETS", ARES_SECRET),
            ("ARES_ACCEPT_TOKENS_WITHOUT_ISSUER", "true"),
        ],
    )
    .await;
    let r = get(&g.url("/api/chat"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["sub"], "8c1d2f9e-ares-user");
    // Another issuer is still refused.
    let other = jsonwebtoken::encode(
        &Header::default(),
        &json!({"iss": "someone-else", "sub": "u", "email": "", "iat": now, "exp": now + 600}),
        &EncodingKey::from_secret(ARES_SECRET.as_bytes()),
    )
    .unwrap();
    let r = get(&g.url("/api/chat"), &[("authorization", &bearer(&other))]).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn ares_admin_routes_under_the_gateways_prefix_reach_ares_after_the_admin_check() {
    let ares = Ares::start().await;
    let g = gateway_in_front_of(&ares, &[]).await;
    for path in [
        "/api/admin/tenants/ten_1/agents",
        "/api/admin/tenants/ten_1/agents/router",
        "/api/admin/tenants/ten_1/agents/router/runs",
        "/api/admin/tenants/ten_1/agents/router/stats",
        "/api/admin/tenants/ten_1/usage/daily",
    ] {
        let r = get(&g.url(path), &admin()).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert_eq!(r.json()["path"], path);
        let r = get(&g.url(path), &[]).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.error_code(), "AUTH_MISSING_CREDENTIALS");
        let r = get(
            &g.url(path),
            &[("x-admin-secret", "wrong-secret-0123456789")],
        )
        .await;
        assert_eq!(r.error_code(), "AUTH_INVALID_ADMIN_SECRET");
    }
    assert_eq!(ares.seen().len(), 5);
    // What the gateway implements, it answers: its own tenants, not ARES's.
    let r = get(&g.url("/api/admin/tenants"), &admin()).await;
    assert_eq!(r.status, 200);
    assert!(r.json().is_array());
    let r = send(
        "PATCH",
        &g.url("/api/admin/tenants/ten_1/quota"),
        &admin(),
        None,
    )
    .await;
    assert_eq!(r.status, 405, "a path the gateway serves keeps its 405");
    assert_eq!(ares.seen().len(), 5);
}

#[tokio::test]
async fn an_ares_key_imported_by_aress_hash_passes_both_sides_on_a_passthrough_route() {
    // The /api/v1/ route passing the client's own key through (ARES_V1_CREDENTIAL=passthrough):
    // ARES checks it in its own table after the gateway checked it in the store (imported by
    // the hash ARES keeps).
    let ares = Ares::start().await;
    let g = start(config(
        &ares.url(),
        &[
            ("ARES_UPSTREAM_JWT_SECRET", ARES_SECRET),
            ("ARES_V1_CREDENTIAL", "passthrough"),
            ("ARES_V1_CHAT_UPSTREAM", "/api/v1/chat"),
        ],
    ))
    .await;
    let raw = format!("ares_{ARES_KEY_HEX}");
    let auth = bearer(&raw);
    let r = post(&g.url("/api/v1/chat"), &[("authorization", &auth)], "{}").await;
    assert_eq!(r.status, 401, "unknown to the gateway before the import");
    assert!(ares.seen().is_empty());
    let (tenant, _, _) = provision(&g, "pro").await;
    let r = post(
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys/import")),
        &admin(),
        &json!({
            "key_hash": sha256_hex(ARES_KEY_HEX.as_bytes()),
            "key_prefix": &raw[..13],
            "name": "from ARES"
        })
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = post(&g.url("/api/v1/chat"), &[("authorization", &auth)], "{}").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["tenant"], "ten_ares");
    assert_eq!(ares.seen().last().unwrap().token, raw);
    // The same key on a minting route reaches ARES as a minted token instead.
    let r = post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        ares.seen().last().unwrap().claims["tenant_id"],
        tenant.as_str()
    );
}

#[tokio::test]
async fn without_a_minting_secret_ares_refuses_every_proxied_request() {
    // The state issue 18 started from: the shipped config strips Authorization.
    let ares = Ares::start().await;
    let g = gateway(&ares.url(), &[]).await;
    let login = login(&g, "lee@example.com").await;
    let token = login["access_token"].as_str().unwrap();
    let r = get(&g.url("/api/chat"), &[("authorization", &bearer(token))]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"error": "Unauthorized"}));
    assert!(ares.seen().is_empty());
}
