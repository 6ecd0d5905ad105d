//! Rate limits and quotas through real HTTP on the memory store.

use crate::common::*;

async fn set_limits(g: &TestGateway, tenant: &str, body: &str) {
    let r = send(
        "PUT",
        &g.url(&format!("/api/admin/tenants/{tenant}/limits")),
        &admin(),
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn concurrent_requests_from_two_keys_share_one_exact_budget() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (tenant, _, key1) = provision(&g, "pro").await;
    let r = post(
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys")),
        &admin(),
        r#"{"name":"second"}"#,
    )
    .await;
    let key2 = r.json()["raw_key"].as_str().unwrap().to_string();
    let (_, _, other) = provision(&g, "pro").await;
    set_limits(&g, &tenant, r#"{"requests_per_minute":10}"#).await;

    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = g.url("/v1/chat");
        let auth = bearer(if i % 2 == 0 { &key1 } else { &key2 });
        tasks.push(tokio::spawn(async move {
            post(&url, &[("authorization", &auth)], "{}").await
        }));
    }
    let mut passed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => passed += 1,
            429 => {
                assert_eq!(r.error_code(), "RATE_LIMIT_EXCEEDED");
                assert_eq!(r.json()["error"], "Per-minute rate limit exceeded");
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry));
                assert_eq!(r.header("ratelimit-remaining"), Some("0"));
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(passed, 10);
    assert_eq!(up.count(), 10, "refused requests never reach the upstream");
    // Other tenants are unaffected; refused requests consumed nothing.
    assert_eq!(
        post(
            &g.url("/v1/chat"),
            &[("authorization", &bearer(&other))],
            "{}"
        )
        .await
        .status,
        200
    );
    let usage = get(
        &g.url(&format!("/api/admin/tenants/{tenant}/usage")),
        &admin(),
    )
    .await
    .json();
    assert_eq!(usage["daily_requests"], 10);
    assert_eq!(usage["monthly_requests"], 10);
}

#[tokio::test]
async fn monthly_is_checked_before_daily_and_named() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (tenant, _, key) = provision(&g, "free").await;
    let auth = bearer(&key);
    set_limits(&g, &tenant, r#"{"requests_per_day":3}"#).await;
    for _ in 0..3 {
        assert_eq!(
            post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}")
                .await
                .status,
            200
        );
    }
    let r = post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}").await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json(),
        serde_json::json!({"error":"Daily rate limit exceeded","code":"RATE_LIMIT_EXCEEDED"})
    );
    set_limits(&g, &tenant, r#"{"requests_per_month":3}"#).await;
    let r = post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}").await;
    assert_eq!(r.json()["error"], "Monthly rate limit exceeded");
    // null clears an override: the tier's day limit (50) applies again; month stays overridden.
    set_limits(
        &g,
        &tenant,
        r#"{"requests_per_day":null,"requests_per_month":null}"#,
    )
    .await;
    assert_eq!(
        post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn users_are_limited_per_user_on_jwt_routes() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[("ARES_USER_REQUESTS_PER_MINUTE", "3")]).await;
    let a = login(&g, "a@example.com").await;
    let b = login(&g, "b@example.com").await;
    let auth_a = bearer(a["access_token"].as_str().unwrap());
    for i in 0..3 {
        let r = get(&g.url("/api/chat"), &[("authorization", &auth_a)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
    }
    let r = get(&g.url("/api/chat"), &[("authorization", &auth_a)]).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        get(
            &g.url("/api/chat"),
            &[(
                "authorization",
                &bearer(b["access_token"].as_str().unwrap())
            )]
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn token_usage_headers_debit_the_monthly_budget() {
    let up = Upstream::start().await;
    let yaml = shipped_yaml().replace("tokens_per_month: 100000", "tokens_per_month: 1500");
    let g = start(config_from(&yaml, &up.url(), &[])).await;
    let (tenant, _, key) = provision(&g, "free").await;
    let auth = bearer(&key);
    // Each call to /v1/tokens reports 600 + 400 tokens.
    for _ in 0..2 {
        assert_eq!(
            get(&g.url("/v1/tokens"), &[("authorization", &auth)])
                .await
                .status,
            200
        );
    }
    // The debit lands off the response path.
    let usage_url = g.url(&format!("/api/admin/tenants/{tenant}/usage"));
    let debited = wait_until(std::time::Duration::from_secs(5), || async {
        get(&usage_url, &admin()).await.json()["monthly_tokens"] == 2000
    })
    .await;
    assert!(debited, "{}", get(&usage_url, &admin()).await.json());
    let r = get(&g.url("/v1/chat"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "Monthly token quota exceeded");
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn token_counts_in_stream_trailers_are_debited_after_the_stream() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (tenant, _, key) = provision(&g, "free").await;
    let r = get(
        &g.url("/v1/stream-tokens"),
        &[("authorization", &bearer(&key))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "data: hi\n\n");
    // The debit lands off the response path.
    let usage_url = g.url(&format!("/api/admin/tenants/{tenant}/usage"));
    let debited = wait_until(std::time::Duration::from_secs(5), || async {
        get(&usage_url, &admin()).await.json()["monthly_tokens"] == 500
    })
    .await;
    assert!(debited, "{}", get(&usage_url, &admin()).await.json());
}

/// Issue 24: 60 bad keys from one address were 60 x 401. Now they are counted per client address
/// (never against a tenant); past the limit the address gets 429 before any key is looked at,
/// until room returns.
#[tokio::test]
async fn repeated_failed_api_keys_from_one_address_are_limited_without_touching_any_quota() {
    let up = Upstream::start().await;
    let yaml = shipped_yaml().replace(
        "  api_key_failures_per_ip:\n    requests_per_minute: 30\n    requests_per_hour: 300\n",
        "  api_key_failures_per_ip:\n    requests_per_second: 5\n",
    );
    assert!(
        yaml.contains("requests_per_second: 5"),
        "the shipped config names the limit"
    );
    let g = start(config_from(&yaml, &up.url(), &[])).await;
    let (tenant, _, key) = provision(&g, "pro").await;
    let chat = |auth: String| {
        let url = g.url("/v1/chat");
        async move { post(&url, &[("authorization", &auth)], "{}").await }
    };
    let bad = [
        "Bearer ares_not_a_key",
        "Bearer ares_0123456789abcdef0123456789abcdef",
    ];
    for i in 0..5 {
        let r = chat(bad[i % 2].to_string()).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (401, "AUTH_INVALID_API_KEY")
        );
    }
    let r = chat(bad[0].to_string()).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (429, "RATE_LIMIT_EXCEEDED")
    );
    assert!(r.header("retry-after").is_some());
    // The address is refused before any lookup, a valid key included, until room returns.
    let r = chat(bearer(&key)).await;
    assert_eq!(r.status, 429);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(chat(bearer(&key)).await.status, 200);
    assert_eq!(
        chat(bad[1].to_string()).await.status,
        401,
        "one failure's room returned"
    );
    // No tenant paid for any of it: one request was admitted.
    let usage = get(
        &g.url(&format!("/api/admin/tenants/{tenant}/usage")),
        &admin(),
    )
    .await
    .json();
    assert_eq!(usage["daily_requests"], 1);
    assert_eq!(up.count(), 1);
}
