//! ares-gateway: the authentication gateway and reverse proxy in front of ARES.
//!
//! # Layout
//!
//! Layers, top to bottom; a module imports only from its own layer or below, and no two modules
//! import each other (`tests/it/layering.rs` checks both).
//!
//! ```text
//! main.rs, lib.rs   the commands (serve, check, demo, export, import, import-ares); this map
//! gateway.rs        Gateway::start: store, shared state, listeners, workers, reload, housekeeping
//! edge/accept.rs    accept loop, connection permit, worker balance, TLS handshake, drain
//! demo.rs           the `demo` command's echo upstream and walkthrough
//! import_ares.rs    `import-ares`: ARES's PostgreSQL tables -> the store
//! transfer.rs       `export` / `import FILE`: any store <-> JSON lines (store/records.rs)
//! admin_cli.rs      `admin ...`: the admin API of a running gateway from a terminal
//! pipeline.rs       handle(request): the request pipeline, step by step. Read this first
//! api/              what the gateway serves itself: auth.rs (/api/auth/*), admin.rs (the admin
//!                   API), json.rs (bounded JSON bodies), mod.rs (/healthz, /readyz)
//! state.rs          AppState (store, caches, limiter, hasher, drain flag); Snapshot (one config)
//! auth/             Principal, authenticate(Credentials), authorize; api_key.rs, jwt.rs,
//!                   mint.rs (tokens for upstreams), admin.rs, password.rs
//! ratelimit/        limiter.rs: the one Limiter (store + failure policy + local fallback +
//!                   metrics) and its Scope enum; mod.rs: windows, plans, the exact local
//!                   limiter, RateLimit-* headers
//! proxy/            hygiene.rs (step 1 and hop-by-hop), identity.rs (what the upstream
//!                   receives), forward.rs (pool and forward), tunnel.rs (WebSocket)
//! cors.rs           preflights and CORS response headers
//! store/            trait Store and its records; handle.rs (the command budget); embedded/
//!                   (the default: redb file, schema, generated secrets), memory.rs, redis/;
//!                   records.rs (export lines, idempotent load); the shared store test suite
//! config/           file.rs (serde schema) -> substitute.rs (${VAR}) -> validate.rs -> Config;
//!                   defaults.rs: every numeric default and bound in one table
//! route.rs          path normalisation, RouteTable::classify, Upstream, Credential
//! error.rs          GatewayError and its one into_response()
//! metrics.rs        Prometheus registry and the metrics listener
//! telemetry/        OpenTelemetry traces: the request's spans (mod.rs), the OTLP exporter,
//!                   sampler and bounded batch queue (export.rs); off unless configured
//! body.rs           Body, RequestBody, JSON responses, the idle-timeout body
//! edge/             the connection machinery's leaves (no tenants, tokens or routes):
//!                   conn_upstreams.rs (a connection's own upstream connections), framing.rs (HTTP/1
//!                   smuggling checks), coalesce.rs (vectored writes), timer.rs, tls.rs
//! util.rs           clocks, random tokens, Secret, FileStamp, FastMap
//! ```
//!
//! # Request pipeline
//!
//! ```text
//! Gateway::start         one SO_REUSEPORT listener per worker; worker 0 on the caller's runtime,
//!                        the others each on a thread with a current-thread runtime
//! server::accept::run      accept -> permit -> spawn connection (its upstream connections in its task)
//! pipeline::handle       never fails: handle_inner, then error.into_response(); access log
//! pipeline::handle_inner
//!   1 ctx       request id, client ip (trusted proxies); strip spoofable headers
//!   2 route     normalise path; routes.classify(path)                 400 / 404
//!   3 gateway-served routes return here (auth API, admin API, health);
//!               admin paths the gateway does not implement go on to the upstream
//!   4 principal auth::authenticate(route, headers, .., credentials)     401
//!   5           auth::authorize(route, &principal)                      403
//!   6           state.limiter: tenant / user, token quota               429
//!               (a user's token revocation: same store round trip)      401
//!   7           proxy::rewrite_request(.., &principal, .., minted)      413
//!   8           proxy::forward(client, req)                             502 / 504
//!   9           proxy::rewrite_response + RateLimit-* headers
//! ```

pub mod api;
pub mod auth;
pub mod body;
pub mod cmd;
pub mod config;
pub mod cors;
pub mod error;
pub mod limiter;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod util;

pub use server::accept::bind_listeners;
pub use server::Gateway;
