//! The Redis store against real `redis-server` processes: the shared store suite (one Redis and
//! a 3-master cluster), two gateway replicas sharing state, restarts, outages, a hanging Redis.

use std::time::{Duration, Instant};

use crate::common::redis::{cli, RedisCluster, RedisServer, RedisTls, SentinelGroup};
use crate::common::*;
use ares_gateway::config::Config;
use ares_gateway::store::{suite, RedisStore};

fn redis_config(upstream: &str, redis_url: &str, extra: &[(&str, &str)]) -> Config {
    let mut env = vec![("ARES_STORE", "redis"), ("REDIS_URL", redis_url)];
    env.extend_from_slice(extra);
    config(upstream, &env)
}

async fn store_for(url: &str) -> std::sync::Arc<RedisStore> {
    let cfg = redis_config("http://127.0.0.1:1", url, &[]);
    RedisStore::connect(&cfg.store, url).await.unwrap()
}

#[tokio::test]
async fn redis_store_passes_the_store_suite() {
    let redis = RedisServer::start();
    let store = store_for(&redis.url()).await;
    suite::run_all(store.as_ref()).await;
    // Nothing secret is stored in plaintext: key names and values hold hashes only.
    let keys = cli(redis.port, &["KEYS", "*"]);
    assert!(keys.contains("ares:key:h3"), "{keys}");
    assert!(
        !keys.contains("a@example.com"),
        "emails are indexed by hash: {keys}"
    );
    // Every limiter key expires (calendar counters get their expiry when created).
    let limiter_keys = cli(redis.port, &["KEYS", "ares:rl:*"]);
    assert!(limiter_keys.contains(":day:"), "{limiter_keys}");
    for key in limiter_keys.lines().filter(|k| !k.is_empty()) {
        let ttl: i64 = cli(redis.port, &["PTTL", key]).parse().unwrap();
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
    }
}

#[tokio::test]
async fn redis_cluster_passes_the_store_suite() {
    let cluster = RedisCluster::start();
    let store = store_for(&cluster.url()).await;
    suite::run_all(store.as_ref()).await;
    // A revocation under the older gateways' key lives in another slot than the user's limiter
    // keys; it is still honoured.
    use ares_gateway::store::{Admission, Store};
    let now_ms = ares_gateway::util::now_ms();
    let limits = [(ares_gateway::ratelimit::Window::Minute, 10)];
    let token = ares_gateway::store::suite::token("usr_c", "old-jti", now_ms / 1000);
    let admit = || store.counters().admit_token(token, &limits, now_ms);
    assert!(matches!(admit().await.unwrap(), Admission::Decided(_)));
    let set = std::process::Command::new("redis-cli")
        .args(["-c", "-p", &cluster.nodes[0].port.to_string()])
        .args(["SET", "ares:jti:old-jti", "1", "EX", "60"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK");
    assert_eq!(admit().await.unwrap(), Admission::Revoked);
    assert!(store.lookup().is_token_revoked(token).await.unwrap());
}

#[tokio::test]
async fn two_replicas_share_keys_revocations_logouts_and_limits() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let a = start(redis_config(&up.url(), &redis.url(), &[])).await;
    let b = start(redis_config(&up.url(), &redis.url(), &[])).await;

    // A key made on one replica works on the other.
    let (tenant, key_id, key) = provision(&a, "pro").await;
    let auth = bearer(&key);
    assert_eq!(
        post(&b.url("/v1/chat"), &[("authorization", &auth)], "{}")
            .await
            .status,
        200
    );
    assert_eq!(up.last().headers["x-tenant-id"], tenant.as_str());

    // Revocation on A is refused by B (which has the key cached) within 1 s.
    assert_eq!(revoke_key(&a, &tenant, &key_id).await.status, 204);
    let revoked_at = Instant::now();
    loop {
        let r = post(&b.url("/v1/chat"), &[("authorization", &auth)], "{}").await;
        if r.status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "B still accepts a revoked key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lag = revoked_at.elapsed();
    assert!(lag < Duration::from_millis(500), "revocation took {lag:?}");

    // Suspension on B is seen by A.
    let (t2, _, k2) = provision(&b, "pro").await;
    assert_eq!(
        post(&a.url("/v1/chat"), &[("authorization", &bearer(&k2))], "{}")
            .await
            .status,
        200
    );
    send(
        "PUT",
        &b.url(&format!("/api/admin/tenants/{t2}/status")),
        &admin(),
        Some(r#"{"status":"suspended"}"#),
    )
    .await;
    // Replica a hears of it through the store's invalidation channel, as fast as a revocation.
    let suspended = wait_until(Duration::from_millis(500), || async {
        let r = post(&a.url("/v1/chat"), &[("authorization", &bearer(&k2))], "{}").await;
        r.error_code() == "AUTH_TENANT_SUSPENDED"
    })
    .await;
    assert!(suspended);

    // Logout on A kills the access token on B.
    let t = login(&a, "replica@example.com").await;
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(
        get(&b.url("/api/chat"), &[("authorization", &bearer(access))])
            .await
            .status,
        200
    );
    let body = format!(
        r#"{{"refresh_token":"{}"}}"#,
        t["refresh_token"].as_str().unwrap()
    );
    assert_eq!(
        post(
            &a.url("/api/auth/logout"),
            &[("authorization", &bearer(access))],
            &body
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(&b.url("/api/chat"), &[("authorization", &bearer(access))])
            .await
            .status,
        401
    );
    assert_eq!(
        post(&b.url("/api/auth/refresh"), &[], &body).await.status,
        401
    );
}

/// Issue 24: concurrent refreshes of one token on two replicas still make one rotation.
#[tokio::test]
async fn concurrent_refreshes_on_two_replicas_make_one_rotation() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let url = redis.url();
    let env = [("ARES_STORE", "redis"), ("REDIS_URL", url.as_str())];
    let a = start(config_from(&rotating_yaml(), &up.url(), &env)).await;
    let b = start(config_from(&rotating_yaml(), &up.url(), &env)).await;
    concurrent_refreshes_make_one_rotation(&[&a, &b], "two-tabs@example.com").await;
}

#[tokio::test]
async fn exactly_the_limit_passes_across_two_replicas() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let a = start(redis_config(&up.url(), &redis.url(), &[])).await;
    let b = start(redis_config(&up.url(), &redis.url(), &[])).await;
    let (tenant, _, key) = provision(&a, "pro").await;
    let r = send(
        "PUT",
        &a.url(&format!("/api/admin/tenants/{tenant}/limits")),
        &admin(),
        Some(r#"{"requests_per_minute":10}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = up.count();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            a.url("/v1/chat")
        } else {
            b.url("/v1/chat")
        };
        let auth = bearer(&key);
        tasks.push(tokio::spawn(async move {
            post(&url, &[("authorization", &auth)], "{}")
                .await
                .status
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 10, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 30, "{codes:?}");
    assert_eq!(up.count() - before, 10);
    let usage = get(
        &b.url(&format!("/api/admin/tenants/{tenant}/usage")),
        &admin(),
    )
    .await
    .json();
    assert_eq!(usage["daily_requests"], 10);
}

/// The limiter's state per scope and window is one number, whatever the limit; the sliding-log
/// keys an older gateway left are never read and expire on their own (no migration step).
#[tokio::test]
async fn limiter_state_is_constant_and_old_log_keys_expire_harmlessly() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let g = start(redis_config(&up.url(), &redis.url(), &[])).await;
    let mut sizes = Vec::new();
    for limit in [10, 6_000] {
        let (tenant, _, key) = provision(&g, "pro").await;
        let r = send(
            "PUT",
            &g.url(&format!("/api/admin/tenants/{tenant}/limits")),
            &admin(),
            Some(&format!(r#"{{"requests_per_minute":{limit}}}"#)),
        )
        .await;
        assert_eq!(r.status, 200);
        // What a sliding-log gateway left: a log of admission times, expiring after a minute.
        let old = format!("ares:rl:{{t:{tenant}}}:minute");
        for i in 0..50 {
            cli(
                redis.port,
                &["ZADD", &old, &i.to_string(), &format!("m{i}")],
            );
        }
        cli(redis.port, &["PEXPIRE", &old, "60000"]);
        let auth = bearer(&key);
        let mut passed = 0;
        for _ in 0..30 {
            let r = post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}").await;
            assert!([200, 429].contains(&r.status.as_u16()), "{}", r.status);
            passed += usize::from(r.status == 200);
        }
        assert_eq!(
            passed,
            limit.min(30),
            "limit {limit}: the old log is not counted"
        );
        assert_eq!(
            cli(redis.port, &["ZCARD", &old]),
            "50",
            "the old log is untouched"
        );
        let ttl: i64 = cli(redis.port, &["PTTL", &old]).parse().unwrap();
        assert!(
            (1..=60_000).contains(&ttl),
            "the old log still expires: {ttl}"
        );
        let new = format!("ares:rl:{{t:{tenant}}}:minute:gcra");
        let size: u64 = cli(redis.port, &["MEMORY", "USAGE", &new]).parse().unwrap();
        let ttl: i64 = cli(redis.port, &["PTTL", &new]).parse().unwrap();
        assert!(
            (1..=60_001).contains(&ttl),
            "the limiter key expires: {ttl}"
        );
        sizes.push(size);
    }
    assert_eq!(
        sizes[0], sizes[1],
        "the same size at 10 and 6,000 per minute"
    );
    assert!(sizes[0] <= 200, "{} bytes", sizes[0]);
}

#[tokio::test]
async fn restarting_the_gateway_loses_nothing() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let a = start(redis_config(&up.url(), &redis.url(), &[])).await;
    let (tenant, _, key) = provision(&a, "dev").await;
    let t = login(&a, "durable@example.com").await;
    drop(a);
    let b = start(redis_config(&up.url(), &redis.url(), &[])).await;
    assert_eq!(
        post(
            &b.url("/v1/chat"),
            &[("authorization", &bearer(&key))],
            "{}"
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(&b.url(&format!("/api/admin/tenants/{tenant}")), &admin())
            .await
            .status,
        200
    );
    let r = post(
        &b.url("/api/auth/login"),
        &[],
        r#"{"email":"durable@example.com","password":"your-secure-password"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let body = format!(
        r#"{{"refresh_token":"{}"}}"#,
        t["refresh_token"].as_str().unwrap()
    );
    assert_eq!(
        post(&b.url("/api/auth/refresh"), &[], &body).await.status,
        200
    );
}

/// A gateway on `redis` whose cache holds a key (and its tenant): returns it and the key's
/// `Authorization` value.
async fn gateway_with_a_cached_key(up: &Upstream, redis: &RedisServer) -> (TestGateway, String) {
    let g = start(redis_config(&up.url(), &redis.url(), &[])).await;
    let (_, _, key) = provision(&g, "dev").await;
    let auth = bearer(&key);
    // Once subscribed, a replica drops its caches (messages before it were missed), and its
    // own provisioning messages arrive: let both settle so the next request fills the cache
    // that outages fall back on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}").await;
    assert_eq!(r.status, 200);
    (g, auth)
}

#[tokio::test]
async fn redis_outage_degrades_cleanly_and_recovers_without_restart() {
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let (g, auth) = gateway_with_a_cached_key(&up, &redis).await;
    let unknown = ares_gateway::auth::api_key::generate().raw;

    redis.kill();
    assert_eq!(get(&g.url("/healthz"), &[]).await.status, 200);
    let started = Instant::now();
    let r = get(&g.url("/readyz"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (503, "STORE_UNAVAILABLE")
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // A key validated within the cache TTL keeps working (local limits meanwhile); never a 500.
    let r = post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // An unknown key never passes.
    let r = post(
        &g.url("/v1/chat"),
        &[("authorization", &bearer(&unknown))],
        "{}",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (503, "STORE_UNAVAILABLE")
    );
    // Writes are refused with 503.
    let r = post(
        &g.url("/api/admin/tenants"),
        &admin(),
        r#"{"name":"x","tier":"dev"}"#,
    )
    .await;
    assert_eq!(r.error_code(), "STORE_UNAVAILABLE");
    let r = post(
        &g.url("/api/auth/register"),
        &[],
        r#"{"email":"o@example.com","password":"your-secure-password","name":"O"}"#,
    )
    .await;
    assert_eq!(r.error_code(), "STORE_UNAVAILABLE");
    // The failed-login limits cannot be read: a login is refused, never let through unlimited.
    let r = post(
        &g.url("/api/auth/login"),
        &[],
        r#"{"email":"o@example.com","password":"your-secure-password"}"#,
    )
    .await;
    assert_eq!(r.error_code(), "STORE_UNAVAILABLE");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&g.url("/readyz"), &[]).await.status != 200 {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = post(
        &g.url("/api/admin/tenants"),
        &admin(),
        r#"{"name":"after","tier":"dev"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn a_hanging_redis_answers_within_the_budget() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let (g, auth) = gateway_with_a_cached_key(&up, &redis).await;
    assert_eq!(cli(redis.port, &["CLIENT", "PAUSE", "3000", "ALL"]), "OK");
    let started = Instant::now();
    let r = get(&g.url("/readyz"), &[]).await;
    assert_eq!(r.status, 503);
    let r = post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}").await;
    assert_eq!(r.status, 200, "cached key, local limits");
    let r = post(
        &g.url("/api/admin/tenants"),
        &admin(),
        r#"{"name":"x","tier":"dev"}"#,
    )
    .await;
    assert_eq!(r.status, 503);
    // Three calls, each bounded by the 300 ms command budget: far below the 3 s pause.
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn failure_policies_decide_when_redis_is_down() {
    for (policy, want) in [("open", 200u16), ("closed", 503), ("local", 200)] {
        let mut redis = RedisServer::start();
        let up = Upstream::start().await;
        let yaml = shipped_yaml().replace(
            "failure_policy: local",
            &format!("failure_policy: {policy}"),
        );
        let g = start(config_from(
            &yaml,
            &up.url(),
            &[
                ("ARES_STORE", "redis"),
                ("REDIS_URL", &redis.url()),
                ("ARES_USER_REQUESTS_PER_MINUTE", "2"),
            ],
        ))
        .await;
        let t = login(&g, "policy@example.com").await;
        let auth = bearer(t["access_token"].as_str().unwrap());
        redis.kill();
        let codes: Vec<u16> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(
                    get(&g.url("/api/chat"), &[("authorization", &auth)])
                        .await
                        .status
                        .as_u16(),
                );
            }
            v
        };
        match policy {
            "open" => assert_eq!(codes, vec![200, 200, 200], "{policy}"),
            "closed" => assert_eq!(codes, vec![503, 503, 503], "{policy}"),
            // Per-replica limits in memory: 2 per minute (replicas: 1).
            _ => assert_eq!(codes, vec![200, 200, 429], "{policy}"),
        }
        assert_eq!(codes[0], want);
    }

    // A route may override the global policy.
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let yaml = shipped_yaml().replace(
        "    auth: jwt\n    upstream: default\n    websocket: true",
        "    auth: jwt\n    upstream: default\n    websocket: true\n    failure_policy: closed",
    );
    let g = start(config_from(
        &yaml,
        &up.url(),
        &[("ARES_STORE", "redis"), ("REDIS_URL", &redis.url())],
    ))
    .await;
    let t = login(&g, "route-policy@example.com").await;
    redis.kill();
    let r = get(
        &g.url("/api/chat"),
        &[(
            "authorization",
            &bearer(t["access_token"].as_str().unwrap()),
        )],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (503, "STORE_UNAVAILABLE")
    );
}

#[tokio::test]
async fn a_flushed_redis_never_lets_unknown_credentials_pass_and_never_500s() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    // A zero cache TTL: every request asks Redis, so the flush is seen at once.
    let yaml = shipped_yaml().replace("api_key_cache_ttl_secs: 30", "api_key_cache_ttl_secs: 0");
    let g = start(config_from(
        &yaml,
        &up.url(),
        &[("ARES_STORE", "redis"), ("REDIS_URL", &redis.url())],
    ))
    .await;
    let (_, _, key) = provision(&g, "dev").await;
    let t = login(&g, "flushed@example.com").await;
    assert_eq!(
        post(
            &g.url("/v1/chat"),
            &[("authorization", &bearer(&key))],
            "{}"
        )
        .await
        .status,
        200
    );
    assert_eq!(cli(redis.port, &["FLUSHALL"]), "OK");
    let r = post(
        &g.url("/v1/chat"),
        &[("authorization", &bearer(&key))],
        "{}",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_API_KEY")
    );
    let body = format!(
        r#"{{"refresh_token":"{}"}}"#,
        t["refresh_token"].as_str().unwrap()
    );
    assert_eq!(
        post(&g.url("/api/auth/refresh"), &[], &body).await.status,
        401
    );
    assert_eq!(get(&g.url("/readyz"), &[]).await.status, 200);
    // And it keeps working: the limiter script is reloaded after SCRIPT FLUSH too.
    assert_eq!(cli(redis.port, &["SCRIPT", "FLUSH"]), "OK");
    let (_, _, key2) = provision(&g, "dev").await;
    assert_eq!(
        post(
            &g.url("/v1/chat"),
            &[("authorization", &bearer(&key2))],
            "{}"
        )
        .await
        .status,
        200
    );
}

fn calls(port: u16, cmd: &str) -> u64 {
    cli(port, &["INFO", "commandstats"])
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_api_key_request_costs_one_redis_round_trip_token_budget_included() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let g = start(redis_config(&up.url(), &redis.url(), &[])).await;
    // `dev` has minute, day and month limits and a token budget.
    let (_, _, key) = provision(&g, "dev").await;
    let auth = bearer(&key);
    assert_eq!(
        post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}")
            .await
            .status,
        200
    );
    let (evalsha, get_, exists) = (
        calls(redis.port, "evalsha"),
        calls(redis.port, "get"),
        calls(redis.port, "exists"),
    );
    for _ in 0..20 {
        assert_eq!(
            post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}")
                .await
                .status,
            200
        );
    }
    assert_eq!(
        calls(redis.port, "evalsha") - evalsha,
        20,
        "one script call per request"
    );
    // Commands a script runs count in commandstats too: the script reads the day, month and
    // token counters and the minute's GCRA time (4 GETs). Anything beyond would be a key or
    // tenant lookup, which the cache makes unnecessary (one GET may come from the batched
    // last_used_at write).
    let gets = calls(redis.port, "get") - get_;
    assert!((80..=81).contains(&gets), "{gets} GETs for 20 requests");
    assert_eq!(calls(redis.port, "exists") - exists, 0);
}

/// A JWT route of the shipped config, with this `Authorization` value.
async fn chat(g: &TestGateway, auth: &str) -> Reply {
    get(&g.url("/api/chat"), &[("authorization", auth)]).await
}

/// Log out with the tokens a login returned (the access token and the refresh token).
async fn logout(g: &TestGateway, tokens: &serde_json::Value) -> u16 {
    let access = tokens["access_token"].as_str().unwrap();
    let body = format!(
        r#"{{"refresh_token":"{}"}}"#,
        tokens["refresh_token"].as_str().unwrap()
    );
    let auth = bearer(access);
    let r = post(
        &g.url("/api/auth/logout"),
        &[("authorization", &auth)],
        &body,
    )
    .await;
    r.status.as_u16()
}

/// `sub` and `jti` of an access token (read, not verified: the gateway signed it).
fn sub_and_jti(token: &str) -> (String, String) {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let field = |k: &str| claims[k].as_str().unwrap().to_string();
    (field("sub"), field("jti"))
}

#[tokio::test]
async fn a_jwt_request_costs_one_redis_round_trip_revocation_included() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let g = start(redis_config(&up.url(), &redis.url(), &[])).await;
    let t = login(&g, "one-trip@example.com").await;
    let access = t["access_token"].as_str().unwrap();
    let (sub, jti) = sub_and_jti(access);
    let auth = bearer(access);
    assert_eq!(chat(&g, &auth).await.status, 200);
    let before = ["evalsha", "exists", "get", "set"].map(|c| calls(redis.port, c));
    for _ in 0..20 {
        assert_eq!(chat(&g, &auth).await.status, 200);
    }
    let spent = ["evalsha", "exists", "get", "set"].map(|c| calls(redis.port, c));
    let spent: Vec<u64> = spent.iter().zip(before).map(|(a, b)| a - b).collect();
    // One script call per request. Inside it: the token's revocation key and, while
    // `store.legacy_revocations` is on, the older gateways' key (2 EXISTS), the user's "log out
    // everywhere" line (1 GET), and the user's per-minute window (1 GET and 1 SET of its GCRA
    // time). No separate lookup.
    assert_eq!(spent, [20, 40, 40, 20], "evalsha, exists, get, set");

    // Logout: the token is refused, and its refused requests count against nothing.
    let minute = format!("ares:rl:{{u:{sub}}}:minute:gcra");
    let counted = || cli(redis.port, &["GET", &minute]);
    let tat = counted();
    assert!(tat.parse::<u64>().is_ok(), "{minute} holds a time: {tat:?}");
    assert_eq!(logout(&g, &t).await, 200);
    let revoked = cli(redis.port, &["KEYS", "ares:jti:*"]);
    let tagged = format!("ares:jti:{{u:{sub}}}:{jti}");
    let legacy = format!("ares:jti:{jti}");
    let mut revoked: Vec<&str> = revoked.lines().collect();
    revoked.sort();
    assert_eq!(revoked, [legacy.as_str(), tagged.as_str()]);
    for key in [&tagged, &legacy] {
        let ttl: i64 = cli(redis.port, &["TTL", key]).parse().unwrap();
        assert!((1..=930).contains(&ttl), "{key} expires in {ttl} s");
    }
    for _ in 0..5 {
        let r = chat(&g, &auth).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (401, "AUTH_INVALID_TOKEN")
        );
    }
    assert_eq!(counted(), tat);

    // A revocation written by an older gateway (its key only) is honoured too.
    let t = post(
        &g.url("/api/auth/login"),
        &[],
        r#"{"email":"one-trip@example.com","password":"your-secure-password"}"#,
    )
    .await
    .json();
    let access = t["access_token"].as_str().unwrap();
    let (_, jti) = sub_and_jti(access);
    let auth = bearer(access);
    assert_eq!(
        get(&g.url("/api/chat"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let legacy = format!("ares:jti:{jti}");
    assert_eq!(cli(redis.port, &["SET", &legacy, "1", "EX", "60"]), "OK");
    assert_eq!(chat(&g, &auth).await.status, 401);
}

#[tokio::test]
async fn without_legacy_revocations_only_the_tagged_key_is_written_and_read() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let mut cfg = redis_config(&up.url(), &redis.url(), &[]);
    cfg.store.legacy_revocations = false;
    let g = start(cfg).await;
    let t = login(&g, "tagged@example.com").await;
    let access = t["access_token"].as_str().unwrap();
    let (sub, jti) = sub_and_jti(access);
    let auth = bearer(access);
    assert_eq!(chat(&g, &auth).await.status, 200);
    let exists = calls(redis.port, "exists");
    assert_eq!(chat(&g, &auth).await.status, 200);
    assert_eq!(calls(redis.port, "exists") - exists, 1);
    assert_eq!(logout(&g, &t).await, 200);
    assert_eq!(
        cli(redis.port, &["KEYS", "ares:jti:*"]),
        format!("ares:jti:{{u:{sub}}}:{jti}")
    );
    assert_eq!(chat(&g, &auth).await.status, 401);
}

fn connections_received(port: u16) -> u64 {
    cli(port, &["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn concurrent_decisions_share_one_multiplexed_connection() {
    use ares_gateway::ratelimit::Window;
    use ares_gateway::store::Store;
    use ares_gateway::util::now_ms;
    let redis = RedisServer::start();
    let store = store_for(&redis.url()).await;
    let limits = [(Window::Day, 1_000), (Window::Minute, 1_000)];
    store
        .counters()
        .rate_limit("t:warm", &limits, now_ms())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = connections_received(redis.port);
    let evalsha = calls(redis.port, "evalsha");
    // 256 decisions in flight at once, over 8 tenants.
    let decisions = (0..256).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let scope = format!("t:{}", i % 8);
            store.counters().rate_limit(&scope, &limits, now_ms()).await
        })
    });
    for d in futures_util::future::join_all(decisions).await {
        assert!(d.unwrap().unwrap().allowed());
    }
    assert_eq!(calls(redis.port, "evalsha") - evalsha, 256);
    // The two `calls` queries and this one opened three connections; the store opened none: the
    // 256 concurrent commands were multiplexed on the connection it already had.
    assert_eq!(connections_received(redis.port) - before, 3);
    let day = Window::Day.calendar_period(now_ms()).0;
    let count = cli(redis.port, &["GET", &format!("ares:rl:{{t:3}}:day:{day}")]);
    assert_eq!(count, "32");
}

#[tokio::test]
async fn logout_all_on_one_replica_ends_sessions_on_the_other() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let a = start(redis_config(&up.url(), &redis.url(), &[])).await;
    let b = start(redis_config(&up.url(), &redis.url(), &[])).await;
    logout_all_ends_every_session(&a, &b, "replicas@example.com").await;
}

fn repl_offset(port: u16, field: &str) -> Option<u64> {
    cli(port, &["INFO", "replication"])
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().parse().ok())
}

async fn daily_requests(g: &TestGateway, tenant: &str) -> u64 {
    let r = get(
        &g.url(&format!("/api/admin/tenants/{tenant}/usage")),
        &admin(),
    )
    .await;
    assert_eq!(r.status, 200, "usage is read from the store");
    r.json()["daily_requests"].as_u64().unwrap()
}

/// Kill `group`'s primary and POST `/v1/chat` with `headers` to the gateway at `base` until the
/// sentinels have promoted the replica and the gateway is ready again (at most 40 s). Returns
/// the statuses answered during the switch and how long it took.
async fn fail_over_under_traffic(
    group: &mut SentinelGroup,
    base: &str,
    headers: &[(&str, &str)],
) -> (Vec<u16>, Duration) {
    let (chat_url, ready_url) = (format!("{base}/v1/chat"), format!("{base}/readyz"));
    let old = group.primary.port;
    group.primary.kill();
    let killed = Instant::now();
    let mut statuses = Vec::new();
    loop {
        statuses.push(post(&chat_url, headers, "{}").await.status.as_u16());
        if group.primary_port() == Some(group.replica.port)
            && get(&ready_url, &[]).await.status == 200
        {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "no failover: primary {:?}, statuses {statuses:?}",
            group.primary_port()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(group.primary_port(), Some(old));
    (statuses, killed.elapsed())
}

/// `redis+sentinel://`: the primary is killed under traffic; the sentinels promote the replica
/// and the same gateway process moves to it. What the README says the switch loses: nothing the
/// replica had received (here: everything, the test waits for it), and the counts of requests
/// admitted by the failure policy while no primary answered.
#[tokio::test]
async fn sentinel_failover_moves_the_gateway_to_the_promoted_replica_without_a_restart() {
    let mut group = SentinelGroup::start();
    let up = Upstream::start().await;
    let g = start(redis_config(&up.url(), &group.url(), &[])).await;
    let (tenant, _, key) = provision(&g, "pro").await;
    let auth = bearer(&key);
    let url = g.url("/v1/chat");
    let headers = [("authorization", auth.as_str())];
    let send_chat = || post(&url, &headers, "{}");
    for _ in 0..5 {
        assert_eq!(send_chat().await.status, 200);
    }
    let session = login(&g, "failover@example.com").await;
    let access = bearer(session["access_token"].as_str().unwrap());
    assert_eq!(chat(&g, &access).await.status, 200);
    let counted = daily_requests(&g, &tenant).await;
    assert_eq!(counted, 5);

    // Replication is asynchronous: wait until the replica has everything written so far.
    let deadline = Instant::now() + Duration::from_secs(10);
    while repl_offset(group.primary.port, "master_repl_offset:")
        != repl_offset(group.replica.port, "slave_repl_offset:")
    {
        assert!(Instant::now() < deadline, "the replica did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (statuses, took) = fail_over_under_traffic(&mut group, &g.url(""), &headers).await;
    eprintln!("sentinel failover: ready again {took:?} after the kill");
    // During the switch the failure policy (`local`) decides: a cached key passes on per-replica
    // limits; nothing is a 500 or blamed on the upstream.
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );

    // Store-backed again, on the new primary: counts move there, nothing replicated was lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = daily_requests(&g, &tenant).await;
    loop {
        assert_eq!(send_chat().await.status, 200);
        let now = daily_requests(&g, &tenant).await;
        if now == before + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counts do not reach the new primary"
        );
        before = now;
    }
    assert!(
        before >= counted,
        "{before} < {counted}: replicated counts were lost"
    );
    let day_keys = cli(group.replica.port, &["KEYS", "ares:rl:*:day:*"]);
    assert!(day_keys.contains(&tenant), "{day_keys}");
    // Writes work: a tenant provisioned now, and the session from before the switch.
    let (_, _, key2) = provision(&g, "dev").await;
    let r = post(
        &g.url("/v1/chat"),
        &[("authorization", &bearer(&key2))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(chat(&g, &access).await.status, 200);
    assert_eq!(logout(&g, &session).await, 200);
    assert_eq!(chat(&g, &access).await.status, 401);
}

/// Issue 24: with Redis paused, bursts of 50 concurrent requests on a cached key took seconds,
/// doubling burst after burst, although each request alone stayed within the command budget.
/// The budget must hold per request under concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_redis_keeps_the_budget_for_every_request_of_a_burst() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let (g, auth) = gateway_with_a_cached_key(&up, &redis).await;
    assert_eq!(cli(redis.port, &["CLIENT", "PAUSE", "6000", "ALL"]), "OK");
    let mut worst = Vec::new();
    for _ in 0..5 {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let url = g.url("/v1/chat");
                let auth = auth.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let r = post(&url, &[("authorization", &auth)], "{}").await;
                    (r.status.as_u16(), started.elapsed())
                })
            })
            .collect();
        let mut slowest = Duration::ZERO;
        for t in tasks {
            let (status, took) = t.await.unwrap();
            // A cached key passes on the local limits, or is refused by them: either way the
            // gateway answered.
            assert!([200, 429].contains(&status), "{status}");
            slowest = slowest.max(took);
        }
        worst.push(slowest);
    }
    eprintln!("slowest request per burst: {worst:?}");
    // One limiter call per request, bounded by the 300 ms budget; a margin for a loaded machine.
    assert!(
        worst.iter().all(|w| *w < Duration::from_millis(1500)),
        "{worst:?}"
    );
}

/// Leases (`rate_limits.lease_requests`) in the store: the script grants a quarter of the
/// smallest room at most, so the grants shrink to one request near the limit and add up to it
/// exactly; unused requests go back to the GCRA and calendar windows.
#[tokio::test]
async fn the_store_grants_leases_from_the_room_and_takes_back_what_was_not_spent() {
    use ares_gateway::ratelimit::Window;
    use ares_gateway::store::{Store, Take};
    let redis = RedisServer::start();
    let store = store_for(&redis.url()).await;
    let now = ares_gateway::util::now_ms();
    let want = |n| Take {
        want: n,
        back: 0,
        back_calendar: 0,
    };
    let minute = [(Window::Minute, 100)];
    let (d, granted) = store
        .counters()
        .lease("t:a", &minute, now, want(10))
        .await
        .unwrap();
    assert!(d.allowed());
    assert_eq!((granted, d.headers.remaining), (10, 90));
    let mut grants = vec![granted];
    loop {
        let (d, granted) = store
            .counters()
            .lease("t:a", &minute, now, want(10))
            .await
            .unwrap();
        if !d.allowed() {
            assert_eq!(granted, 0, "a refusal grants nothing");
            break;
        }
        grants.push(granted);
    }
    assert_eq!(grants.iter().sum::<u64>(), 100, "{grants:?}");
    assert_eq!(grants.last(), Some(&1), "exact near the limit: {grants:?}");
    assert!(grants.windows(2).all(|w| w[0] >= w[1]), "{grants:?}");
    // Five unused requests go back (want 0: only the return).
    let back = Take {
        want: 0,
        back: 5,
        back_calendar: 5,
    };
    let (_, granted) = store
        .counters()
        .lease("t:a", &minute, now, back)
        .await
        .unwrap();
    assert_eq!(granted, 0);
    let d = store
        .counters()
        .peek_rate_limit("t:a", &minute, now)
        .await
        .unwrap();
    assert_eq!(d.headers.remaining, 5);
    // More back than was taken empties the window; it never goes below empty.
    let all_back = Take {
        back: 1_000,
        ..back
    };
    store
        .counters()
        .lease("t:a", &minute, now, all_back)
        .await
        .unwrap();
    let d = store
        .counters()
        .peek_rate_limit("t:a", &minute, now)
        .await
        .unwrap();
    assert_eq!(d.headers.remaining, 100);

    // Calendar windows: counted when granted, returned when unused.
    let day = [(Window::Day, 50), (Window::Minute, 1_000)];
    let (d, granted) = store
        .counters()
        .lease("t:b", &day, now, want(10))
        .await
        .unwrap();
    assert_eq!(
        (granted, d.headers.limit, d.headers.remaining),
        (10, 50, 40),
        "the day is the tightest window after the lease too"
    );
    assert_eq!(store.counters().usage("t:b", now).await.unwrap().day, 10);
    let (d, granted) = store
        .counters()
        .lease("t:b", &day, now, back)
        .await
        .unwrap();
    assert_eq!(granted, 0, "{d:?}");
    assert_eq!(store.counters().usage("t:b", now).await.unwrap().day, 5);
    let over = Take {
        back_calendar: 100,
        ..back
    };
    store
        .counters()
        .lease("t:b", &day, now, over)
        .await
        .unwrap();
    assert_eq!(
        store.counters().usage("t:b", now).await.unwrap().day,
        0,
        "not below zero"
    );
    let key = "ares:rl:{t:b}:day:".to_string();
    let ttl: i64 = cli(redis.port, &["KEYS", &format!("{key}*")])
        .lines()
        .next()
        .map(|k| cli(redis.port, &["PTTL", k.trim()]).trim().parse().unwrap())
        .unwrap();
    assert!(ttl > 0, "the day's counter keeps its expiry: {ttl}");
    // A return for a scope with no counter creates none.
    store
        .counters()
        .lease("t:none", &day, now, over)
        .await
        .unwrap();
    assert!(cli(redis.port, &["KEYS", "ares:rl:{t:none}*"])
        .trim()
        .is_empty());
    // A single request (no lease) is what it always was.
    let (d, granted) = store
        .counters()
        .lease("t:c", &minute, now, want(1))
        .await
        .unwrap();
    assert_eq!((granted, d.headers.remaining), (1, 99));
}

/// Two replicas with leases: requests alternate between them; the limit is met exactly, most
/// admitted requests cost no Redis round trip, and what the leases did not spend goes back.
#[tokio::test]
async fn with_leases_exactly_the_limit_passes_across_two_replicas_with_fewer_round_trips() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let env = [("ARES_LEASE_REQUESTS", "8"), ("ARES_LEASE_MS", "60000")];
    let a = start(redis_config(&up.url(), &redis.url(), &env)).await;
    let b = start(redis_config(&up.url(), &redis.url(), &env)).await;
    let (tenant, _, key) = provision(&a, "pro").await;
    let r = send(
        "PUT",
        &a.url(&format!("/api/admin/tenants/{tenant}/limits")),
        &admin(),
        Some(r#"{"requests_per_minute":40,"requests_per_day":1000}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let auth = bearer(&key);
    let evals = calls(redis.port, "evalsha");
    let mut codes = Vec::new();
    for i in 0..100 {
        let g = if i % 2 == 0 { &a } else { &b };
        let r = post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}").await;
        if codes.len() == 20 {
            let asked = calls(redis.port, "evalsha") - evals;
            // Each replica asks for its lease, and again when a quarter of it is left (a
            // refill, so that no request waits); near the limit grants shrink to a quarter of
            // the room, so more asks. Without leases: 20.
            assert!(asked <= 10, "{asked} round trips for the first 20 requests");
        }
        codes.push(r.status.as_u16());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 40, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 60, "{codes:?}");
    // The leases are spent: the day counted exactly the admitted requests.
    a.state.limiter.return_leases(true).await;
    b.state.limiter.return_leases(true).await;
    assert_eq!(daily_requests(&a, &tenant).await, 40);
}

/// With leases, a burst of one tenant's requests on many connections at once asks Redis for
/// the lease once: the other requests wait for that ask and spend from its lease (regression:
/// every request that found no lease asked for one, so a burst of 48 made up to 48 asks, and on
/// a store that locks the scope's row they queued behind each other).
#[tokio::test]
async fn with_leases_a_burst_of_one_tenant_asks_the_store_once() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let env = [("ARES_LEASE_REQUESTS", "64"), ("ARES_LEASE_MS", "60000")];
    let a = start(redis_config(&up.url(), &redis.url(), &env)).await;
    let (tenant, _, key) = provision(&a, "pro").await;
    let r = send(
        "PUT",
        &a.url(&format!("/api/admin/tenants/{tenant}/limits")),
        &admin(),
        Some(r#"{"requests_per_minute":10000,"requests_per_day":100000}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let auth = bearer(&key);
    let url = a.url("/v1/chat");
    // One request first: the key's record is cached, so the burst asks only for its lease.
    assert_eq!(
        post(&url, &[("authorization", &auth)], "{}").await.status,
        200
    );
    a.state.limiter.return_leases(true).await;
    let evals = calls(redis.port, "evalsha");
    let headers = [("authorization", auth.as_str())];
    let burst = (0..48).map(|_| post(&url, &headers, "{}"));
    let codes: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .iter()
        .map(|r| r.status.as_u16())
        .collect();
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    let asked = calls(redis.port, "evalsha") - evals;
    // One ask for the lease of 64; running low (16 left) starts one refill.
    assert!(
        asked <= 2,
        "{asked} asks of Redis for a burst of 48 under leases of 64"
    );
    // The refill runs in the background: let it land before every lease goes back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.state.limiter.return_leases(true).await;
    assert_eq!(
        daily_requests(&a, &tenant).await,
        49,
        "every admitted request counted once"
    );
}

/// With leases, a user's lease is per access token and was checked against revocation when it
/// was taken: a logout is immediate on the replica that served it and reaches the others within
/// `lease_ms`.
#[tokio::test]
async fn with_leases_a_logout_reaches_other_replicas_within_the_lease_time() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let env = [("ARES_LEASE_REQUESTS", "8"), ("ARES_LEASE_MS", "400")];
    let a = start(redis_config(&up.url(), &redis.url(), &env)).await;
    let b = start(redis_config(&up.url(), &redis.url(), &env)).await;
    let t = login(&a, "lease@example.com").await;
    let auth = bearer(t["access_token"].as_str().unwrap());
    assert_eq!(chat(&b, &auth).await.status, 200, "B holds a lease now");
    assert_eq!(chat(&a, &auth).await.status, 200, "and A");
    let evals = calls(redis.port, "evalsha");
    for _ in 0..6 {
        assert_eq!(chat(&b, &auth).await.status, 200);
    }
    let asked = calls(redis.port, "evalsha") - evals;
    assert!(
        asked <= 1,
        "six JWT requests spent from B's lease of 8 ({asked} asks: one refill at most)"
    );
    assert_eq!(logout(&a, &t).await, 200);
    assert_eq!(
        chat(&a, &auth).await.status,
        401,
        "at once where it was served"
    );
    let out = Instant::now();
    let ended = wait_until(Duration::from_millis(1_500), || async {
        chat(&b, &auth).await.status == 401
    })
    .await;
    assert!(ended, "B still accepts a logged-out token");
    let lag = out.elapsed();
    assert!(
        lag < Duration::from_millis(900),
        "took {lag:?} with lease_ms 400"
    );
}

/// Provision tenant `name` through the gateway at `base` (the binary) and send one request with
/// its new key, which must pass; returns the key as a `Bearer` value.
async fn provision_and_use(base: &str, name: &str, tier: &str) -> String {
    let r = post(
        &format!("{base}/api/admin/provision-client"),
        &[("x-admin-secret", ADMIN)],
        &format!(r#"{{"name":"{name}","tier":"{tier}","api_key_name":"k"}}"#),
    )
    .await;
    assert_eq!(r.status, 201);
    let auth = bearer(r.json()["raw_api_key"].as_str().unwrap());
    let r = post(
        &format!("{base}/v1/chat"),
        &[("authorization", &auth)],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200);
    auth
}

/// The gateway binary on a Redis store reached over TLS at `url`: first with only the system's
/// roots, which must refuse the private CA (so the gateway stays unready), then trusting `tls`'s
/// CA through `SSL_CERT_FILE`. Returns that gateway, its base URL, and an API key provisioned
/// through it (so written over TLS) that has passed one request.
async fn gateway_over_tls(
    url: &str,
    tls: &RedisTls,
    up: &Upstream,
) -> (tokio::process::Child, String, String) {
    let redis_env = [("ARES_STORE", "redis"), ("REDIS_URL", url)];
    let (mut untrusting, base) = serve_binary(&up.url(), &redis_env).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(get(&format!("{base}/readyz"), &[]).await.status, 503);
    let _ = untrusting.kill().await;

    let ca = tls.ca();
    let mut env = redis_env.to_vec();
    env.push(("SSL_CERT_FILE", ca.as_str()));
    let (gateway, base) = serve_binary(&up.url(), &env).await;
    let ready = wait_until(Duration::from_secs(10), || async {
        get(&format!("{base}/readyz"), &[]).await.status == 200
    })
    .await;
    assert!(ready, "not ready over {url}");
    let auth = provision_and_use(&base, "Acme", "pro").await;
    (gateway, base, auth)
}

/// `rediss+sentinel://`: sentinels, primary and replica serve TLS only (a private CA). The
/// gateway (the binary, trusting that CA through `SSL_CERT_FILE`) finds the primary through the
/// sentinels over TLS, verifies every certificate, and follows a failover without a restart; with
/// only the system's roots it trusts none of them and stays unready.
#[tokio::test]
async fn rediss_sentinel_verifies_tls_everywhere_and_follows_a_failover() {
    let tls = RedisTls::new();
    let mut group = SentinelGroup::start_tls(&tls);
    let url = group.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    let up = Upstream::start().await;
    let (_gateway, base, auth) = gateway_over_tls(&url, &tls, &up).await;
    let headers = [("authorization", auth.as_str())];
    // The key is in the TLS primary, and replicated over TLS.
    assert!(!group.primary.cli(&["KEYS", "ares:key:*"]).is_empty());
    let replicated = wait_until(Duration::from_secs(10), || async {
        !group.replica.cli(&["KEYS", "ares:key:*"]).is_empty()
    })
    .await;
    assert!(replicated, "nothing replicated over TLS");

    let (statuses, _) = fail_over_under_traffic(&mut group, &base, &headers).await;
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "during the switch: {statuses:?}"
    );
    // On the promoted replica, over TLS: a new tenant is written there and its key works.
    provision_and_use(&base, "After", "dev").await;
    assert!(group.replica.cli(&["DBSIZE"]).parse::<u64>().unwrap() > 0);
}

/// `rediss://` to one Redis serving TLS only: trusted through `SSL_CERT_FILE`, the store works;
/// with only the system's roots the private CA's certificate is refused and the gateway stays
/// unready.
#[tokio::test]
async fn a_rediss_url_verifies_the_servers_certificate() {
    let tls = RedisTls::new();
    let redis = RedisServer::start_tls(&tls, None);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let up = Upstream::start().await;
    let _gateway = gateway_over_tls(&url, &tls, &up).await;
    assert!(
        !redis.cli(&["KEYS", "ares:key:*"]).is_empty(),
        "written over TLS"
    );
}

/// `rediss+cluster://` to a 3-master cluster serving TLS only (its bus too): the gateway trusts
/// the private CA only through `SSL_CERT_FILE`, and writes and reads through every node's TLS
/// port (keys of many slots, so of every master).
#[tokio::test]
async fn a_rediss_cluster_url_verifies_every_nodes_certificate() {
    let tls = RedisTls::new();
    let cluster = RedisCluster::start_tls(&tls);
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let up = Upstream::start().await;
    let (_gateway, base, _) = gateway_over_tls(&url, &tls, &up).await;
    for i in 0..6 {
        provision_and_use(&base, &format!("t{i}"), "dev").await;
    }
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["DBSIZE"]).parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert_eq!(holding, 3, "every master holds keys");
}
