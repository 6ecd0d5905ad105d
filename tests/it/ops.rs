//! Operations: metrics after real traffic, trace context, config hot reload.

use std::time::{Duration, Instant};

use crate::common::*;
use ares_gateway::config::Config;

#[tokio::test]
async fn metrics_reflect_real_traffic_and_live_on_their_own_listener() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[("ARES_METRICS_LISTEN", "127.0.0.1:0")]).await;
    let metrics_url = format!("http://{}/metrics", g.metrics_addr.unwrap());
    let (_, _, key) = provision(&g, "dev").await;
    for _ in 0..2 {
        post(
            &g.url("/v1/chat"),
            &[("authorization", &bearer(&key))],
            "{}",
        )
        .await;
    }
    get(&g.url("/api/chat"), &[("authorization", "Bearer nope")]).await;

    let r = get(&metrics_url, &[]).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).to_string();
    for needle in [
        r#"ares_gateway_requests_total{route="/v1/",method="POST",status="200"}"#,
        r#"ares_gateway_requests_total{route="/api/admin/provision-client",method="POST",status="201"}"#,
        r#"ares_gateway_auth_failures_total{code="AUTH_INVALID_TOKEN"}"#,
        r#"ares_gateway_ratelimit_decisions_total{scope="tenant",window="-",outcome="allowed"}"#,
        r#"ares_gateway_cache_lookups_total{cache="api_key",result="hit"}"#,
        r#"ares_gateway_cache_lookups_total{cache="api_key",result="miss"}"#,
        "ares_gateway_request_duration_seconds_bucket",
        "ares_gateway_upstream_duration_seconds_bucket",
        "ares_gateway_auth_duration_seconds_count",
        "ares_gateway_store_duration_seconds_count",
        "ares_gateway_open_connections",
        "ares_gateway_invalidation_lag_seconds",
        "ares_gateway_config_reloads",
        r#"ares_gateway_build_info{version="#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    // Never on the public listener.
    assert_eq!(get(&g.url("/metrics"), &[]).await.status, 404);
    // No secret in the metrics.
    assert!(!text.contains(&key) && !text.contains(ADMIN));
}

#[tokio::test]
async fn traceparent_is_forwarded_or_created() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (_, _, key) = provision(&g, "dev").await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    post(
        &g.url("/v1/chat"),
        &[("authorization", &bearer(&key)), ("traceparent", tp)],
        "{}",
    )
    .await;
    assert_eq!(up.last().headers["traceparent"], tp);
    post(
        &g.url("/v1/chat"),
        &[("authorization", &bearer(&key))],
        "{}",
    )
    .await;
    let created = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(created.len(), 55);
    assert!(created.starts_with("00-") && created.ends_with("-01"));
}

/// The shipped config with an open `/status/` route added, for reload tests.
fn with_status_route(yaml: &str) -> String {
    yaml.replace(
        "  - prefix: /healthz\n",
        "  - prefix: /status/\n    auth: none\n    upstream: default\n  - prefix: /healthz\n",
    )
}

/// The shipped config as a file-backed in-process gateway reads it: fixed listeners, this
/// upstream, the test admin secret, and a 1 s reload poll.
fn file_yaml(up: &Upstream) -> String {
    shipped_yaml()
        .replace("config_reload_poll_secs: 5", "config_reload_poll_secs: 1")
        .replace("${ARES_LISTEN:-0.0.0.0:8080}", "127.0.0.1:0")
        .replace("${ARES_METRICS_LISTEN:-127.0.0.1:9090}", "off")
        .replace("${ARES_UPSTREAM:-http://127.0.0.1:3000}", &up.url())
        .replace("${ARES_ADMIN_SECRET:-}", ADMIN)
        .replace("${ARES_STORE:-embedded}", "memory")
}

fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn reload_adds_a_route_and_a_broken_file_keeps_the_old_config() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let base_yaml = file_yaml(&up);
    write(&path, &base_yaml);
    let g = start(Config::load(&path).unwrap()).await;
    assert_eq!(get(&g.url("/status/ping"), &[]).await.status, 404);

    // A new route: an open upstream route.
    let with_route = with_status_route(&base_yaml);
    write(&path, &with_route);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&g.url("/status/ping"), &[]).await.status != 200 {
        assert!(Instant::now() < deadline, "route was not added by reload");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(up.last().uri, "/status/ping");

    // A broken file: every problem logged, the running config stays.
    write(
        &path,
        &with_route.replace(
            "auth: none\n    upstream: default\n  - prefix: /healthz",
            "auth: nothing\n    upstream: default\n  - prefix: /healthz",
        ),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&g.url("/status/ping"), &[]).await.status, 200);

    // Rotating the admin secret by reload: the new one works, the old one stops.
    write(
        &path,
        &with_route.replace(ADMIN, "rotated-admin-secret-0001"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(
        &g.url("/api/admin/tenants"),
        &[("x-admin-secret", "rotated-admin-secret-0001")],
    )
    .await
    .status
        != 200
    {
        assert!(Instant::now() < deadline, "admin secret not rotated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(&g.url("/api/admin/tenants"), &admin()).await.status,
        401
    );
}

#[tokio::test]
async fn sighup_reloads_the_config_of_the_binary() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let yaml = shipped_yaml().replace(
        "config_reload_poll_secs: 5",
        "config_reload_poll_secs: 3600",
    );
    write(&path, &yaml);
    let (mut child, base) = serve_binary_with(&path, &up.url(), &[("ARES_LOG", "warn")]).await;
    assert_eq!(get(&format!("{base}/status/x"), &[]).await.status, 404);
    write(&path, &with_status_route(&yaml));
    sighup(&child);
    let deadline = Instant::now() + Duration::from_secs(3);
    while get(&format!("{base}/status/x"), &[]).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the config"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().await.unwrap();
}

#[tokio::test]
async fn regression_a_change_between_load_and_start_was_never_reloaded() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let base_yaml = file_yaml(&up);
    write(&path, &base_yaml);
    let cfg = Config::load(&path).unwrap();
    // The file changes after it was read but before the watcher starts.
    tokio::time::sleep(Duration::from_millis(50)).await;
    write(&path, &with_status_route(&base_yaml));
    let g = start(cfg).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&g.url("/status/ping"), &[]).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the change made before start-up was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
