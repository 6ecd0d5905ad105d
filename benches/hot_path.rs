//! Micro-benchmarks of the per-request steps: route classification, path normalisation, JWT
//! verify, API-key shape + checksum + hash + cache hit, the memory limiter decision.
//! `cargo bench --bench hot_path`.

use std::sync::Arc;
use std::time::Duration;

use ares_gateway::auth::api_key::{self, KeyCache};
use ares_gateway::auth::jwt::JwtKeys;
use ares_gateway::config::Config;
use ares_gateway::ratelimit::{LocalLimiter, Window};
use ares_gateway::route;
use ares_gateway::store::ApiKeyRecord;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn config() -> Config {
    let yaml = include_str!("../gateway.yaml");
    Config::from_yaml(yaml, &|k| match k {
        "ARES_JWT_SECRET" => Some("bench-jwt-secret-0123456789abcdef0123".into()),
        "ARES_ADMIN_SECRET" => Some("bench-admin-secret-0123".into()),
        _ => None,
    })
    .expect("shipped config is valid")
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    c.bench_function("route/normalize_clean", |b| {
        b.iter(|| route::normalize(black_box("/v1/chat/completions")))
    });
    c.bench_function("route/normalize_tricky", |b| {
        b.iter(|| route::normalize(black_box("/api//v1/./x/%2e%2e/chat%7E")))
    });
    c.bench_function("route/classify", |b| {
        b.iter(|| cfg.routes.classify(black_box("/api/v1/chat")).is_some())
    });

    let keys = JwtKeys::new(&cfg.auth);
    let now = ares_gateway::auth::unix_now();
    let (token, _) = keys
        .issue("usr_bench", "bench@example.com", now)
        .expect("issue");
    c.bench_function("jwt/verify", |b| {
        b.iter(|| keys.verify(black_box(&token)).is_ok())
    });

    let key = api_key::generate();
    let cache = KeyCache::new(Duration::from_secs(60));
    cache.put_key(Arc::new(ApiKeyRecord {
        id: "key_1".into(),
        tenant_id: "ten_1".into(),
        key_hash: key.hash.clone(),
        key_prefix: key.prefix.clone(),
        name: "bench".into(),
        scopes: vec!["full".into()],
        is_active: true,
        created_at: now,
        expires_at: None,
        last_used_at: None,
        imported: false,
    }));
    c.bench_function("api_key/shape_hash_cache_hit", |b| {
        b.iter(|| {
            let raw = black_box(key.raw.as_str());
            assert_eq!(api_key::shape(raw), api_key::KeyShape::Native);
            cache.key(&api_key::hash(raw)).is_some()
        })
    });

    let limiter = LocalLimiter::new();
    let limits = [
        (Window::Month, u64::MAX / 8),
        (Window::Day, u64::MAX / 8),
        (Window::Minute, 100_000),
    ];
    let mut t = 1_800_000_000_000u64;
    c.bench_function("ratelimit/memory_decision", |b| {
        b.iter(|| {
            t += 1;
            limiter.check(black_box("t:ten_1"), &limits, t).allowed()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
