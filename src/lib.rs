//! ares-gateway: the authentication gateway and reverse proxy in front of ARES.
//!
//! # Layout
//!
//! ```text
//! main.rs           clap commands (serve, check, demo); tracing init
//! lib.rs            this map, and `Gateway::start` (listeners, worker threads, housekeeping)
//! config.rs         gateway.yaml: serde file types -> validated `Config`; every problem reported
//! state.rs          AppState (store, caches, hasher, drain flag) and the swappable Snapshot
//! server.rs         accept loop, connection permit, worker balance, TLS handshake, hyper-util auto builder, drain
//! timer.rs          LazySleep / LazyTimer: deadlines moved per request without timer-wheel work
//! tls.rs            PEM -> rustls; certificate reload; client TLS for https upstreams
//! pipeline.rs       handle(): the request pipeline, step by step. Read this first
//! route.rs          path normalisation; RouteTable::classify (longest prefix on segments)
//! auth/mod.rs       Principal; authenticate(); authorize(); bearer parsing
//! auth/api_key.rs   key format + checksum, hashing, the key/tenant cache
//! auth/jwt.rs       JwtKeys: issue(), verify()
//! auth/admin.rs     constant-time admin secret check
//! auth/password.rs  argon2id on spawn_blocking behind a semaphore; password policy
//! store/mod.rs      trait Store and its records; the shared store test suite
//! store/memory.rs   the embedded default store
//! store/redis.rs    Redis / Redis Cluster: key schema, Lua limiter, pub/sub invalidation
//! ratelimit.rs      windows, plans, the exact local limiter, RateLimit-* headers
//! proxy.rs          header hygiene, identity headers, streaming forward
//! bound.rs          a client connection's own upstream connections, driven in its task
//! coalesce.rs       small vectored writes sent as one write (both sides of the proxy)
//! api/auth.rs       /api/auth/*
//! api/admin.rs      /api/admin/tenants*, /api/admin/provision-client
//! api/mod.rs        /healthz, /readyz
//! cors.rs           preflights and CORS response headers
//! framing.rs        HTTP/1 framing checks against request smuggling
//! metrics.rs        Prometheus registry and the metrics listener
//! error.rs          GatewayError and its one into_response()
//! body.rs           Body alias, JSON helpers, the idle-timeout body
//! demo.rs           the `demo` command's echo upstream and walkthrough
//! ```
//!
//! # Request pipeline
//!
//! ```text
//! Gateway::start         one SO_REUSEPORT listener per worker; worker 0 on the caller's runtime,
//!                        the others each on a thread with a current-thread runtime
//! server::run            accept -> permit -> spawn connection (its upstream connections in its task)
//! pipeline::handle       never fails: handle_inner, then error.into_response(); access log
//! pipeline::handle_inner
//!   1 ctx       request id, client ip (trusted proxies); strip spoofable headers
//!   2 route     normalise path; routes.classify(path)                 400 / 404
//!   3 gateway-served routes return here (auth API, admin API, health)
//!   4 principal auth::authenticate(route, headers, ..)                  401
//!   5           auth::authorize(route, &principal)                      403
//!   6           rate limit (tenant / user), token quota                 429
//!               (a user's token revocation: same store round trip)      401
//!   7           proxy::rewrite_request(.., &principal, ..)              413
//!   8           proxy::forward(client, req)                             502 / 504
//!   9           proxy::rewrite_response + RateLimit-* headers
//! ```

pub mod api;
pub mod auth;
pub mod body;
pub mod config;
pub mod cors;
pub mod demo;
pub mod edge;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod state;
pub mod store;
pub mod util;

pub use edge::accept::bind_listeners;
pub use gateway::Gateway;
