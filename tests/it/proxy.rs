//! Forwarding through a real upstream: rewrite, identity headers, streaming, upstream faults,
//! malformed input.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;
use http_body_util::BodyExt;

#[tokio::test]
async fn api_key_request_is_rewritten_and_carries_identity() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (tenant, key_id, key) = provision(&g, "dev").await;
    let r = post(
        &g.url("/v1/chat?stream=false"),
        &[
            ("authorization", &bearer(&key)),
            ("x-request-id", "req-abc.1"),
        ],
        r#"{"message":"Hello","agent_type":"product"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-request-id"), Some("req-abc.1"));
    let seen = up.last();
    assert_eq!(seen.uri, "/api/chat?stream=false");
    assert_eq!(seen.body, r#"{"message":"Hello","agent_type":"product"}"#);
    let h = &seen.headers;
    assert_eq!(h["x-auth-method"], "api_key");
    assert_eq!(h["x-tenant-id"], tenant.as_str());
    assert_eq!(h["x-tenant-tier"], "dev");
    assert_eq!(h["x-api-key-id"], key_id.as_str());
    assert_eq!(h["x-request-id"], "req-abc.1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], g.addr.to_string().as_str());
    assert!(
        h.get("authorization").is_none(),
        "the key must not reach the upstream"
    );
    // Rate-limit headers for the tightest window (dev: 120/minute).
    assert_eq!(r.header("ratelimit-limit"), Some("120"));
    assert_eq!(r.header("ratelimit-remaining"), Some("119"));
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let tokens = login(&g, "spoof@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let r = get(
        &g.url("/api/chat"),
        &[
            ("authorization", &bearer(access)),
            ("X-Tenant-Id", "ten_victim"),
            ("x-tenant-tier", "enterprise"),
            ("X-API-KEY-ID", "key_victim"),
            ("x-user-id", "usr_admin"),
            ("X-User-Email", "root@example.com"),
            ("x-auth-method", "admin"),
            ("connection", "x-user-id"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-request-id", "has space"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let h = up.last().headers;
    assert_eq!(h["x-auth-method"], "jwt");
    assert!(h["x-user-id"].to_str().unwrap().starts_with("usr_"));
    assert_ne!(h["x-user-id"], "usr_admin");
    assert_eq!(h["x-user-email"], "spoof@example.com");
    assert!(h.get("x-tenant-id").is_none());
    assert!(h.get("x-tenant-tier").is_none());
    assert!(h.get("x-api-key-id").is_none());
    assert_eq!(h.get_all("x-user-id").iter().count(), 1);
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "untrusted XFF is replaced"
    );
    assert_ne!(h["x-request-id"], "has space");
    assert_eq!(
        r.header("x-request-id").unwrap(),
        h["x-request-id"].to_str().unwrap()
    );
}

#[tokio::test]
async fn admin_credentials_are_forwarded_only_where_configured() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let r = get(&g.url("/api/admin/agents"), &admin()).await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    assert_eq!(h["x-auth-method"], "admin");
    assert_eq!(
        h["x-admin-secret"], ADMIN,
        "shipped config forwards credentials on /api/admin/"
    );

    let tokens = login(&g, "fwd@example.com").await;
    let r = get(
        &g.url("/api/chat"),
        &[
            (
                "authorization",
                &bearer(tokens["access_token"].as_str().unwrap()),
            ),
            ("x-admin-secret", ADMIN),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    assert!(h.get("x-admin-secret").is_none());
    assert!(h.get("authorization").is_none());
}

#[tokio::test]
async fn sse_frames_arrive_before_the_upstream_finishes() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (_, _, key) = provision(&g, "dev").await;
    let req = http::Request::get(g.url("/v1/sse"))
        .header("authorization", bearer(&key))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = started.elapsed();
    assert_eq!(first, "data: frame0\n\n");
    let mut rest = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            rest.extend_from_slice(&d);
        }
    }
    let total = started.elapsed();
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        "data: frame1\n\ndata: frame2\n\n"
    );
    // The upstream needs >= 600 ms for all frames; the first must not wait for them.
    assert!(total >= Duration::from_millis(600), "{total:?}");
    assert!(
        first_at + Duration::from_millis(400) < total,
        "first {first_at:?}, total {total:?}"
    );
}

#[tokio::test]
async fn dead_upstream_is_502_and_slow_upstream_is_504() {
    // Reserve a port and close it: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let g = gateway(&format!("http://{dead}"), &[]).await;
    let (_, _, key) = provision(&g, "dev").await;
    let r = get(&g.url("/v1/chat"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "UPSTREAM_UNAVAILABLE");
    assert!(!String::from_utf8_lossy(&r.body).contains(&dead.port().to_string()));

    let up = Upstream::start().await;
    let yaml = shipped_yaml().replace("first_byte_timeout_secs: 60", "first_byte_timeout_secs: 1");
    let g = start(config_from(&yaml, &up.url(), &[])).await;
    let tokens = login(&g, "slow@example.com").await;
    let started = Instant::now();
    let r = get(
        &g.url("/api/slow"),
        &[(
            "authorization",
            &bearer(tokens["access_token"].as_str().unwrap()),
        )],
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "UPSTREAM_TIMEOUT");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_dropped() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let tokens = login(&g, "hop@example.com").await;
    let r = get(
        &g.url("/api/hop"),
        &[(
            "authorization",
            &bearer(tokens["access_token"].as_str().unwrap()),
        )],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-secret-hop").is_none());
    assert!(r.header("keep-alive").is_none());
}

#[tokio::test]
async fn path_tricks_cannot_reach_another_routes_rule() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let tokens = login(&g, "tricks@example.com").await;
    let auth = bearer(tokens["access_token"].as_str().unwrap());
    // A JWT holder climbing into the admin routes is judged by the admin rule.
    for path in [
        "/api/chat/../admin/agents",
        "/api/%2e%2e/api/admin/agents",
        "//api//admin/agents",
        "/api/./admin/agents",
    ] {
        let r = get(&g.url(path), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.error_code(), "AUTH_MISSING_CREDENTIALS", "{path}");
    }
    for path in [
        "/api/chat%2f..%2fadmin",
        "/api/..%5cadmin",
        "/api/%00",
        "/..",
        "/api/../../x",
    ] {
        let r = get(&g.url(path), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.error_code(), "INVALID_INPUT");
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    // A normalised path is what the upstream sees.
    let r = get(&g.url("/api//v2/./x/../chat"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/api/v2/chat");
}

#[tokio::test]
async fn unknown_paths_and_wrong_credentials_get_json_errors() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let r = get(&g.url("/nope"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (404, "NOT_FOUND")
    );
    let r = get(&g.url("/api/administrator"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_MISSING_CREDENTIALS")
    );
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="ares""#));
    let r = get(
        &g.url("/api/chat"),
        &[("authorization", "Bearer not.a.jwt")],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_TOKEN")
    );
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    assert_eq!(r.json()["error"], "Invalid or expired token");
    let r = get(&g.url("/healthz"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = get(&g.url("/readyz"), &[]).await;
    assert_eq!(r.status, 200);
    let r = post(&g.url("/healthz"), &[], "{}").await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (405, "METHOD_NOT_ALLOWED")
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn oversized_bodies_are_413_and_not_forwarded() {
    let up = Upstream::start().await;
    let yaml = shipped_yaml().replace(
        "request_body_limit_bytes: 10485760",
        "request_body_limit_bytes: 1000",
    );
    let g = start(config_from(&yaml, &up.url(), &[])).await;
    let (_, _, key) = provision(&g, "dev").await;
    let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(5000));
    let r = post(
        &g.url("/v1/chat"),
        &[("authorization", &bearer(&key))],
        &big,
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "PAYLOAD_TOO_LARGE");
    assert_eq!(up.count(), 0);

    // The gateway's own JSON endpoints have their own (smaller) limit.
    let r = post(
        &g.url("/api/auth/login"),
        &[],
        &format!(r#"{{"email":"{}"}}"#, "a".repeat(70_000)),
    )
    .await;
    assert_eq!(r.status, 413);
}

/// Raw bytes over TCP, for what a client library would refuse to send.
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_json_and_oversized_heads_are_refused() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    for body in ["{", "[]", "{\"email\": 5}", "null", ""] {
        let r = post(&g.url("/api/auth/register"), &[], body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.error_code(), "INVALID_INPUT");
    }
    let addr = g.addr;
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let resp = tokio::task::spawn_blocking(move || raw(addr, big_header.as_bytes()))
        .await
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:.80}");
    let garbage = tokio::task::spawn_blocking(move || raw(addr, b"\x00\x01garbage\r\n\r\n"))
        .await
        .unwrap();
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage:.80}"
    );
    let trace = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            b"TRACE /api/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert!(trace.starts_with("HTTP/1.1 405"), "{trace:.80}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn prior_knowledge_h2c_routes_and_rewrites_like_http1() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (tenant, _, key) = provision(&g, "dev").await;
    let h2: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::post(g.url("/v1/chat"))
        .header("authorization", bearer(&key))
        .header("x-tenant-id", "ten_spoofed")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"m\":1}",
        )))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    let seen = up.last();
    assert_eq!(seen.uri, "/api/chat");
    assert_eq!(seen.headers["x-tenant-id"], tenant.as_str());
    assert_eq!(seen.body, "{\"m\":1}");
    // A path trick over h2 is refused the same way.
    let req = http::Request::get(g.url("/api/%2e%2e/%2e%2e/x"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(h2.request(req).await.unwrap().status(), 400);
}

#[tokio::test]
async fn requests_during_a_drain_get_503_shutting_down() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    assert_eq!(get(&g.url("/healthz"), &[]).await.status, 200);
    g.state.start_draining();
    let r = get(&g.url("/healthz"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (503, "SHUTTING_DOWN")
    );
}
