//! The accept loop of one worker: connection permit (shared by all workers), TLS handshake
//! (bounded), hyper-util's auto builder (HTTP/1.1, HTTP/2 by ALPN under TLS, prior-knowledge h2c
//! in clear) with bounded heads and timers, and the drain on shutdown. A connection's task also
//! drives the connection's own upstream connections (`bound::drive`).
//!
//! Every wait has a bound: a permit caps open connections (excess waits in the kernel's accept
//! queue), a client must send its head within `header_read_timeout`, heads are capped at
//! `max_header_bytes` (431), HTTP/2 streams and resets are capped, and the drain lasts at most
//! `shutdown_grace`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::bound::{self, ConnUpstreams};
use crate::config::ServerConfig;
use crate::pipeline::{self, ConnInfo};
use crate::state::AppState;
use crate::timer::LazyTimer;

/// The HTTP connection builder with the configured limits.
pub fn builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(LazyTimer)
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes)
        .max_headers(cfg.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(LazyTimer)
        .max_concurrent_streams(cfg.http2_max_concurrent_streams)
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Serve `listener` until `shutdown` resolves, then drain in-flight requests for at most the
/// configured grace period. With `tls`, every connection is TLS (handshake bounded in time).
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    permits: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) {
    let cfg = state.runtime().config.server.clone();
    let builder = Arc::new(builder(&cfg));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let flags = Arc::new(crate::framing::ConnFlags::default());
        let tls_conn = tls.is_some();
        let state = state.clone();
        let conn_flags = flags.clone();
        let (upstreams, driver) = ConnUpstreams::new();
        let client = crate::proxy::Peer::new(peer);
        let service = service_fn(move |req| {
            let info = ConnInfo {
                peer: client.clone(),
                tls: tls_conn,
                both_lengths: conn_flags.next_request_has_both_lengths(),
                upstreams: Some(upstreams.clone()),
            };
            let state = state.clone();
            async move { Ok::<_, Infallible>(pipeline::handle(state, info, req).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = cfg.tls_handshake_timeout;
        crate::metrics::get().connection_opened();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let io = TokioIo::new(crate::framing::Scanned::new(stream, flags));
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    bound::drive(watcher.watch(conn.into_owned()), driver).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let io = TokioIo::new(crate::framing::Scanned::new(tls_stream, flags));
                            let conn = builder.serve_connection_with_upgrades(io, service);
                            bound::drive(watcher.watch(conn.into_owned()), driver).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, peer = %peer, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, peer = %peer, "connection ended with error");
            }
            crate::metrics::get().connection_closed();
            drop(permit);
        });
    }

    state.start_draining();
    drop(listener);
    tracing::info!(
        open = graceful.count(),
        grace_secs = cfg.shutdown_grace.as_secs(),
        "draining"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(cfg.shutdown_grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

/// Run `f` on every SIGHUP (certificate and config reload).
pub fn on_sighup(f: impl Fn() + Send + 'static) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; reload by file change only");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            f();
        }
    });
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
