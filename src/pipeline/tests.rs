//! The pipeline driven without a socket: built requests, one step's status each.
use super::*;
use crate::config::Config;
use crate::store::MemoryStore;
use bytes::Bytes;

const ADMIN: &str = "pipeline-admin-secret-0123456789";

fn state(env: &[(&str, &str)]) -> Arc<AppState> {
    let yaml = include_str!("../../gateway.yaml");
    let mut vars: Vec<(String, String)> = vec![
        ("ARES_ADMIN_SECRET".into(), ADMIN.into()),
        (
            "ARES_JWT_SECRET".into(),
            "pipeline-jwt-secret-0123456789abcdef".into(),
        ),
        // Nothing listens there: proxied requests that get past every check are 502.
        ("ARES_UPSTREAM".into(), "http://127.0.0.1:9".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let cfg = Config::from_yaml(yaml, &move |k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .unwrap();
    AppState::new(cfg, Arc::new(MemoryStore::new())).unwrap()
}

fn conn() -> ConnInfo {
    ConnInfo {
        peer: proxy::Peer::new(std::net::SocketAddr::from(([192, 0, 2, 7], 40000))),
        tls: false,
        framing: None,
        upstreams: None,
    }
}

async fn call(
    state: &Arc<AppState>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(RequestBody::from(Bytes::from(body.to_string())))
        .unwrap();
    let resp = handle(state.clone(), conn(), req).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

async fn provision(state: &Arc<AppState>) -> (String, String) {
    let (status, v) = call(
        state,
        "POST",
        "/api/admin/provision-client",
        &[("x-admin-secret", ADMIN)],
        r#"{"name":"Acme","tier":"pro","api_key_name":"k"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["tenant_id"].as_str().unwrap().to_string(),
        v["raw_api_key"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn an_unknown_path_is_404_and_a_climbing_one_400() {
    let s = state(&[]);
    let (status, v) = call(&s, "GET", "/nowhere", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "NOT_FOUND");
    let (status, _) = call(&s, "GET", "/api/../../etc", &[], "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_missing_or_wrong_credential_is_401_by_route() {
    let s = state(&[]);
    let (status, v) = call(&s, "GET", "/api/chat", &[], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "AUTH_MISSING_CREDENTIALS");
    let bad = [("authorization", "Bearer ares_not-a-key")];
    let (status, v) = call(&s, "POST", "/v1/chat", &bad, "{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "AUTH_INVALID_API_KEY");
    let wrong = [("x-admin-secret", "not-the-admin-secret-0123")];
    let (status, v) = call(&s, "GET", "/api/admin/tenants", &wrong, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "AUTH_INVALID_ADMIN_SECRET");
}

#[tokio::test]
async fn a_key_without_the_routes_scope_is_403() {
    let s = state(&[]);
    let (tenant, _) = provision(&s).await;
    let (status, v) = call(
        &s,
        "POST",
        &format!("/api/admin/tenants/{tenant}/api-keys"),
        &[("x-admin-secret", ADMIN)],
        r#"{"name":"chat only","scopes":["chat"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let key = format!("Bearer {}", v["raw_key"].as_str().unwrap());
    let (status, v) = call(
        &s,
        "POST",
        "/v1/usage/events",
        &[("authorization", &key)],
        "{}",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(v["code"], "AUTH_FORBIDDEN");
    // Its own scope passes every check and reaches the (absent) upstream.
    let (status, v) = call(&s, "POST", "/v1/chat", &[("authorization", &key)], "{}").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
}

#[tokio::test]
async fn a_user_past_the_limit_is_429_and_a_large_body_413() {
    let s = state(&[("ARES_USER_REQUESTS_PER_MINUTE", "1")]);
    let (status, _) = call(
        &s,
        "POST",
        "/api/auth/register",
        &[],
        r#"{"email":"p@example.com","password":"your-secure-password","name":"P"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, v) = call(
        &s,
        "POST",
        "/api/auth/login",
        &[],
        r#"{"email":"p@example.com","password":"your-secure-password"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let token = format!("Bearer {}", v["access_token"].as_str().unwrap());
    let auth = [("authorization", token.as_str())];
    // Too large by its declared length: refused before anything is forwarded (and counted).
    let big = [
        ("authorization", token.as_str()),
        ("content-length", "20000000"),
    ];
    let mut req = Request::builder()
        .method("POST")
        .uri("/api/chat")
        .header("host", "gateway.test");
    for (k, v) in big {
        req = req.header(k, v);
    }
    let req = req.body(RequestBody::from(Bytes::new())).unwrap();
    let resp = handle(s.clone(), conn(), req).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // That one was admitted (limits come before the rewrite); the next is over the limit.
    let (status, v) = call(&s, "GET", "/api/chat", &auth, "").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["code"], "RATE_LIMIT_EXCEEDED");
}

#[tokio::test]
async fn aress_public_agent_list_needs_no_token_and_nothing_else_under_api_does() {
    let s = state(&[]);
    // Past every check to the (absent) upstream: no credential asked for.
    let (status, v) = call(&s, "GET", "/api/agents", &[], "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    let (status, _) = call(&s, "GET", "/api/agents/", &[], "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    // Only the methods the route lists.
    let req = Request::builder()
        .method("POST")
        .uri("/api/agents")
        .header("host", "gateway.test")
        .body(RequestBody::from(Bytes::new()))
        .unwrap();
    let resp = handle(s.clone(), conn(), req).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    // A path under it, or beside it, is a JWT route still.
    for path in ["/api/agents/product", "/api/agentsx", "/api/chat"] {
        let (status, v) = call(&s, "GET", path, &[], "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(v["code"], "AUTH_MISSING_CREDENTIALS", "{path}");
    }
}
