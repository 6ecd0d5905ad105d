//! Micro-benchmarks of the per-request steps: route classification, path normalisation, JWT
//! verify (and the verified-token cache), API-key shape + checksum + hash + cache hit, the memory
//! limiter decision, the header rewrite, and the whole pipeline: a JWT POST through a gateway
//! in this process to an upstream in this process, over loopback sockets.
//! `cargo bench --bench hot_path`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

use ares_gateway::auth::api_key::{self, KeyCache};
use ares_gateway::auth::jwt::JwtKeys;
use ares_gateway::auth::{Identity, Verified};
use ares_gateway::config::Config;
use ares_gateway::limiter::Admitted;
use ares_gateway::proxy::{self, Peer};
use ares_gateway::ratelimit::{LocalLimiter, Window};
use ares_gateway::route;
use ares_gateway::store::ApiKeyRecord;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};

fn config_with(upstream: &str) -> Config {
    // A calendar limit high enough that a long run is never refused (the limiter still runs).
    let yaml = include_str!("../gateway.yaml").replace(
        "  user:\n    requests_per_minute: \"${ARES_USER_REQUESTS_PER_MINUTE:-600}\"",
        "  user:\n    requests_per_day: 1000000000",
    );
    assert!(
        yaml.contains("requests_per_day: 1000000000"),
        "user limit patched"
    );
    Config::from_yaml(&yaml, &|k| match k {
        "ARES_JWT_SECRET" => Some("bench-jwt-secret-0123456789abcdef0123".into()),
        "ARES_ADMIN_SECRET" => Some("bench-admin-secret-0123".into()),
        "ARES_UPSTREAM" => Some(upstream.into()),
        "ARES_LISTEN" => Some("127.0.0.1:0".into()),
        "ARES_METRICS_LISTEN" => Some("off".into()),
        "ARES_WORKERS" => Some("1".into()),
        "ARES_LOG" => Some("warn".into()),
        _ => None,
    })
    .expect("shipped config is valid")
}

fn config() -> Config {
    config_with("http://127.0.0.1:9")
}

/// The request a client sends on the JWT route.
fn chat_request(token: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri("/api/chat")
        .header("host", "gateway.example")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from_static(
            br#"{"message":"Hello","agent_type":"product"}"#,
        )))
        .expect("valid request")
}

/// A trivial upstream in this process: `{"ok":true}` to everything.
async fn upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(br#"{"ok":true}"#),
                        )))
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    addr
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
    let now = ares_gateway::util::unix_now();
    let (token, _) = keys
        .issue("usr_bench", "bench@example.com", now)
        .expect("issue");
    c.bench_function("jwt/verify", |b| {
        b.iter(|| keys.verify(black_box(&token)).is_ok())
    });
    c.bench_function("jwt/verify_cached_hit", |b| {
        b.iter(|| keys.verify_cached(black_box(&token), now).is_ok())
    });

    // Header rewrite: the client's headers cleaned, the upstream request built.
    let route = cfg.routes.classify("/api/chat").expect("the JWT route");
    let claims = keys.verify(&token).expect("valid token");
    let admitted = Admitted::for_test(Verified::for_test(Identity::User(Arc::new(claims))));
    let peer = Peer::new("10.1.2.3:40000".parse().expect("addr"));
    c.bench_function("proxy/header_rewrite", |b| {
        b.iter_batched(
            || chat_request(&token),
            |mut req| {
                let uri = req.uri().clone();
                let ctx = proxy::strip_spoofable(req.headers_mut(), &peer, false, &uri, &[]);
                let (parts, body) = req.into_parts();
                proxy::rewrite_request(
                    parts,
                    body,
                    route,
                    &admitted,
                    &ctx,
                    "/api/chat",
                    1 << 20,
                    None,
                )
                .is_ok()
            },
            BatchSize::SmallInput,
        )
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
        limits: Default::default(),
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

/// The whole pipeline: one JWT POST at a time on a keep-alive connection, through a gateway
/// (memory store, one worker) to an upstream, all in this process on one runtime.
fn bench_pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut sender, token, _gateway) = rt.block_on(async {
        let up = upstream().await;
        let cfg = config_with(&format!("http://{up}"));
        let keys = JwtKeys::new(&cfg.auth);
        let (token, _) = keys
            .issue(
                "usr_bench",
                "bench@example.com",
                ares_gateway::util::unix_now(),
            )
            .expect("issue");
        let gw = ares_gateway::Gateway::start(cfg, std::future::pending())
            .await
            .expect("gateway starts");
        let stream = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        (sender, token, gw)
    });
    c.bench_function("pipeline/jwt_post_in_process", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resp = sender
                    .send_request(chat_request(&token))
                    .await
                    .expect("response");
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.expect("body").to_bytes()
            })
        })
    });
}

criterion_group!(benches, bench, bench_pipeline);
criterion_main!(benches);
