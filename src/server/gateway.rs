//! A running gateway: [`Gateway::start`] builds the store and the shared state, binds one
//! listener per worker and runs the accept loops; config hot reload and housekeeping run beside
//! them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::{Config, StoreBackend};
use crate::metrics;
use crate::net::tls;
use crate::server::accept;
use crate::store;

use crate::state::AppState;
use crate::store::{MemoryStore, Store};

/// A gateway serving on a bound listener.
pub struct Gateway {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    pub task: JoinHandle<()>,
    balance: Arc<accept::Balance>,
}

impl Gateway {
    /// Open client connections per worker.
    pub fn open_connections(&self) -> Vec<usize> {
        self.balance.open()
    }

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
        let workers = worker_count(config.server.workers);
        let listeners = accept::bind_listeners(config.server.listen, workers)
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
        let addr = listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .ok_or_else(|| "listener has no address".to_string())?;
        let tls = match &config.server.tls {
            None => None,
            Some(files) => {
                let reloader = tls::CertReloader::new(files)?;
                let acceptor = tokio_rustls::TlsAcceptor::from(reloader.server_config()?);
                reloader.watch(config.server.tls_reload_poll);
                export_certificate_expiry(&reloader);
                let on_hup = reloader.clone();
                accept::on_sighup(move || {
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
        let permits = Arc::new(Semaphore::new(
            state.snapshot().config.server.max_connections,
        ));
        // Worker 0 runs on this runtime; the others each on a thread with a runtime of its own.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut listeners = listeners.into_iter();
        let mut places = accept::Balance::workers(workers).into_iter();
        let first_place = places.next().ok_or_else(|| "no worker".to_string())?;
        let balance = first_place.balance.clone();
        let first = listeners
            .next()
            .ok_or_else(|| "no listener".to_string())
            .and_then(|l| TcpListener::from_std(l).map_err(|e| e.to_string()))?;
        let mut done = Vec::new();
        for ((i, listener), place) in listeners.enumerate().zip(places) {
            let (state, tls, permits) = (state.clone(), tls.clone(), permits.clone());
            let mut stop = stop_rx.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("ares-worker-{}", i + 1))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match rt {
                        Ok(rt) => rt.block_on(async move {
                            match TcpListener::from_std(listener) {
                                Ok(l) => {
                                    // Resolves on the signal, or when the gateway is dropped.
                                    let stop = async move {
                                        let _ = stop.wait_for(|stopped| *stopped).await;
                                    };
                                    accept::run(l, place, state, tls, permits, stop).await
                                }
                                Err(e) => tracing::error!(error = %e, "worker cannot listen"),
                            }
                        }),
                        Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
                    }
                    let _ = tx.send(());
                })
                .map_err(|e| format!("cannot start a worker thread: {e}"))?;
            done.push(rx);
        }
        let run_state = state.clone();
        let task = tokio::spawn(async move {
            let stop = async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            };
            accept::run(first, first_place, run_state.clone(), tls, permits, stop).await;
            for worker in done {
                let _ = worker.await;
            }
            // What this replica's leases did not spend goes back before it exits.
            run_state.limiter.return_leases(true).await;
            if let Some(tracing) = &run_state.tracing {
                tracing.shutdown(Duration::from_secs(5)).await;
            }
        });
        Ok(Gateway {
            addr,
            metrics_addr,
            state,
            task,
            balance,
        })
    }
}

/// Accept loops to run: `server.workers`, or one per core when 0.
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
        StoreBackend::Embedded(opts) => {
            let store: Arc<dyn Store> = store::EmbeddedStore::start(opts)?;
            Ok(store)
        }
        StoreBackend::Redis { url } => {
            let store: Arc<dyn Store> =
                store::RedisStore::connect(&config.store, url.expose()).await?;
            Ok(store)
        }
        StoreBackend::Postgres { url, redis } => {
            let redis = redis.as_ref().map(|r| r.expose());
            let store: Arc<dyn Store> =
                store::PostgresStore::connect(&config.store, url.expose(), redis).await?;
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
    loaded: Option<crate::util::FileStamp>,
    every: Duration,
) {
    let on_hup = (Arc::downgrade(state), path.clone());
    accept::on_sighup(move || {
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
            let now = crate::util::FileStamp::of(&path);
            if now != last {
                last = now;
                reload_config(&state, &path);
            }
        }
    });
}

/// `tls_certificate_expiry_timestamp_seconds`, now and every minute (a reloaded certificate
/// shows within a minute).
fn export_certificate_expiry(reloader: &Arc<tls::CertReloader>) {
    let weak = Arc::downgrade(reloader);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(reloader) = weak.upgrade() else {
                return;
            };
            if let Some(not_after) = reloader.not_after() {
                metrics::get().tls_expiry(not_after);
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
