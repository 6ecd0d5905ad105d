//! ares-gateway: the authentication gateway and reverse proxy in front of ARES.
//!
//! # Layout
//!
//! ```text
//! main.rs           clap commands (serve, check, demo); tracing init
//! lib.rs            this map, and `Gateway::start` (bind + serve + housekeeping)
//! config.rs         gateway.yaml: serde file types -> validated `Config`; every problem reported
//! state.rs          AppState (store, caches, hasher, drain flag) and the swappable Runtime
//! server.rs         accept loop, connection permit, TLS handshake, hyper-util auto builder, drain
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
//! server::run            accept -> permit -> spawn connection
//! pipeline::handle       never fails: handle_inner, then error.into_response(); access log
//! pipeline::handle_inner
//!   1 ctx       request id, client ip (trusted proxies); strip spoofable headers
//!   2 route     normalise path; routes.classify(path)                 400 / 404
//!   3 gateway-served routes return here (auth API, admin API, health)
//!   4 principal auth::authenticate(route, headers, ..)                  401
//!   5           auth::authorize(route, &principal)                      403
//!   6           rate limit (tenant / user), token quota                 429
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
pub mod error;
pub mod framing;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{Config, StoreBackend};
use crate::state::AppState;
use crate::store::{MemoryStore, Store};

/// A gateway serving on a bound listener.
pub struct Gateway {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    pub task: JoinHandle<()>,
}

impl Gateway {
    /// Build the store, bind the public listener and serve until `shutdown` resolves.
    pub async fn start(
        config: Config,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Gateway, String> {
        let store = build_store(&config).await?;
        Self::start_with_store(config, store, shutdown).await
    }

    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn Store>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Gateway, String> {
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let tls = match &config.server.tls {
            None => None,
            Some(files) => {
                let reloader = tls::CertReloader::new(files)?;
                let acceptor = tokio_rustls::TlsAcceptor::from(reloader.server_config()?);
                reloader.watch(config.server.tls_reload_poll);
                let on_hup = reloader.clone();
                server::on_sighup(move || {
                    let _ = on_hup.reload();
                });
                Some(acceptor)
            }
        };
        let metrics_addr = match config.server.metrics_listen {
            Some(addr) => {
                let (listener, bound) = metrics::bind(addr).await?;
                tokio::spawn(metrics::serve(listener));
                Some(bound)
            }
            None => None,
        };
        let source = config.source.clone().map(|p| (p, config.source_stamp));
        let reload_poll = config.server.config_reload_poll;
        let state = AppState::new(config, store)?;
        spawn_housekeeping(Arc::downgrade(&state));
        if let Some((path, stamp)) = source {
            watch_config(&state, path, stamp, reload_poll);
        }
        let task = tokio::spawn(server::run(listener, state.clone(), tls, shutdown));
        Ok(Gateway {
            addr,
            metrics_addr,
            state,
            task,
        })
    }
}

/// The store the config names.
pub async fn build_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    match &config.store.backend {
        StoreBackend::Memory => {
            let store = Arc::new(MemoryStore::new());
            let weak = Arc::downgrade(&store);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(s) => s.sweep(),
                        None => break,
                    }
                }
            });
            Ok(store)
        }
        StoreBackend::Redis { url } => {
            let store: Arc<dyn Store> =
                store::RedisStore::connect(&config.store, url.expose()).await?;
            Ok(store)
        }
    }
}

/// Reload the config file into `state`; on any problem keep the running config.
pub fn reload_config(state: &AppState, path: &std::path::Path) -> bool {
    let m = metrics::get();
    match Config::load(path) {
        Err(e) => {
            let problems: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
            tracing::error!(file = %path.display(), problems = ?problems, "config reload refused; keeping the running config");
            m.config_reload(false);
            false
        }
        Ok(cfg) => match state.reload(cfg) {
            Ok(restart) => {
                if !restart.is_empty() {
                    tracing::warn!(needs_restart = ?restart, "config reloaded; some changes need a restart");
                }
                tracing::info!(file = %path.display(), "config reloaded");
                m.config_reload(true);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; keeping the running config");
                m.config_reload(false);
                false
            }
        },
    }
}

/// Reload on SIGHUP and whenever the file's modification time changes.
fn watch_config(
    state: &Arc<AppState>,
    path: std::path::PathBuf,
    loaded: Option<config::FileStamp>,
    every: Duration,
) {
    let on_hup = (Arc::downgrade(state), path.clone());
    server::on_sighup(move || {
        if let Some(s) = on_hup.0.upgrade() {
            reload_config(&s, &on_hup.1);
        }
    });
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut last = loaded;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else {
                return;
            };
            let now = config::FileStamp::of(&path);
            if now != last {
                last = now;
                reload_config(&state, &path);
            }
        }
    });
}

fn spawn_housekeeping(state: std::sync::Weak<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match state.upgrade() {
                Some(s) => s.housekeeping().await,
                None => break,
            }
        }
    });
}
