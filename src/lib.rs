//! ares-gateway: the authentication gateway and reverse proxy in front of ARES.
//!
//! # Layout
//!
//! A folder (or a top-level file) is one layer; a module imports only from its own layer or
//! below, and no two modules import each other (`tests/it/layering.rs` checks both, with this
//! table).
//!
//! ```text
//! 10 main.rs, lib.rs   the commands (serve, check in main.rs); this map
//!    cmd/              demo, import-ares, export/import (transfer.rs), admin (the admin API
//!                      from a terminal)
//!  9 server/           gateway.rs: Gateway::start (store, state, listeners, workers, reload,
//!                      housekeeping); accept.rs: accept loop, connection permit, worker balance,
//!                      TLS handshake, drain. Calls the pipeline; nothing calls it
//!  8 pipeline.rs       handle(request): the request pipeline, step by step. Read this first
//!  7 api/              what the gateway serves itself: auth.rs (/api/auth/*), admin/ (the
//!                      admin API), json.rs (bounded JSON bodies), mod.rs (/healthz, /readyz),
//!                      well_known.rs (/.well-known/jwks.json, openid-configuration)
//!  6 state.rs          AppState (the store's roles, caches, limiter, hasher, drain flag);
//!                      Snapshot (one config); RequestScope
//!  5 limiter.rs        the one Limiter (the store's counters + failure policy + local fallback
//!                      + metrics + failure-ceiling attempts); limiter/policy.rs: which limits
//!                      apply to a caller, token debits, Admitted (what forwarding takes);
//!                      limiter/lease.rs: this replica's leases, one ask in flight per scope
//!    proxy/            hygiene.rs (step 1, hop-by-hop), identity.rs (what the upstream
//!                      receives), forward.rs (pool and forward), conn_upstreams.rs (a client
//!                      connection's own upstream connections), tunnel.rs (WebSocket)
//!    cors.rs           preflights and CORS response headers
//!  4 auth/             Verified, Principal, authenticate, authorize; api_key.rs, jwt.rs,
//!                      mint.rs (tokens for upstreams), admin.rs, password.rs, successor.rs
//!  3 store/            the roles (Lookup, Counters, Records) and Store; model.rs, scope.rs,
//!                      handle.rs (StoreHandle, Role: the command budget), local.rs
//!                      (LocalCounters), records.rs (export lines), suite/ (per role);
//!                      memory.rs, embedded/, redis/, postgres/ (ARES's own database)
//!    config/           file.rs (serde schema) -> substitute.rs (${VAR}) -> validate/ (one file
//!                      per section) -> Config; defaults.rs: every numeric default and bound;
//!                      keys.rs: the EdDSA/ES256 signing keys (PEM, generated, JWK, kid)
//!    route.rs          path normalisation, RouteTable::classify, Upstream, Credential;
//!                      route/readings.rs: what a further-normalising upstream may read
//!  2 error.rs          GatewayError and its one into_response()
//!    metrics.rs        Prometheus registry and the metrics listener
//!    telemetry/        OpenTelemetry traces: the request's spans, the OTLP exporter
//!  1 body.rs           Body, RequestBody, JSON responses, paced bodies
//!    ratelimit/        pure window arithmetic: GCRA, calendar windows, ScopeState, the exact
//!                      local limiter, RateLimit-* headers (no I/O)
//!  0 net/              framing.rs (HTTP/1 smuggling checks), coalesce.rs (vectored writes),
//!                      timer.rs, tls.rs: the pieces that know no tenant, token or route
//!    util.rs           clocks, random tokens, Secret, FileStamp, FastMap
//! ```
//!
//! # Request pipeline
//!
//! ```text
//! server::Gateway::start one SO_REUSEPORT listener per worker; worker 0 on the caller's runtime,
//!                        the others each on a thread with a current-thread runtime
//! server::accept::run    accept -> permit -> spawn connection (its upstream connections in its task)
//! pipeline::handle       never fails: handle_inner, then error.into_response(); access log
//! pipeline::handle_inner
//!   1 ctx       request id, client ip (trusted proxies); strip spoofable headers
//!   2 route     normalise path; routes.classify(path); its methods     400 / 404 / 405
//!   3 gateway-served routes return here (auth API, admin API, health);
//!               admin paths the gateway does not implement go on to the upstream
//!   4 caller    auth::authenticate(route, headers, .., credentials)     401
//!               -> Verified (a user token's revocation still to check)
//!   5           auth::authorize(route, &caller)                         403
//!   6           limiter.admit_principal: tenant and key / user, token   429
//!               budget; a user's token revocation in the same round trip 401
//!               -> Admitted (the only thing forwarding takes)
//!   7           proxy::rewrite_request(.., &admitted, .., minted)       413
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
