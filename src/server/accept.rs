//! The accept loop of one worker: connection permit (shared by all workers), the hand-over of a
//! connection to the worker with the fewest open ones ([`Balance`]), TLS handshake
//! (bounded), hyper-util's auto builder (HTTP/1.1, HTTP/2 by ALPN under TLS, prior-knowledge h2c
//! in clear) with bounded heads and timers, and the drain on shutdown. A connection's task also
//! drives the connection's own upstream connections (`conn_upstreams::drive`).
//!
//! Every wait has a bound: a permit caps open connections (excess waits in the kernel's accept
//! queue), a client must send its head within `header_read_timeout`, heads are capped at
//! `max_header_bytes` (431), HTTP/2 streams and resets are capped, and the drain lasts at most
//! `shutdown_grace`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;
use crate::net::timer::LazyTimer;
use crate::pipeline::{self, ConnInfo};
use crate::proxy::conn_upstreams::{self, ConnUpstreams};
use crate::state::AppState;

/// The HTTP connection builder with the configured limits.
pub fn builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(LazyTimer::pooled())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes)
        .max_headers(cfg.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(LazyTimer::default())
        .max_concurrent_streams(cfg.http2_max_concurrent_streams)
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Open connections per worker, and the way to hand an accepted connection to another worker.
///
/// Each worker accepts on its own `SO_REUSEPORT` listener, where the kernel picks the listener
/// by a hash of the addresses, not by load: 64 connections over 2 workers split 29/35 or worse
/// about half the time, and the busier worker then sets the tail latency. So a worker that
/// accepts a connection while another worker has fewer open ones hands it over (once per
/// connection).
pub struct Balance {
    open: Vec<AtomicUsize>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

/// A connection accepted by one worker for another to serve, with its permit; it is counted
/// against the other worker from the hand-over on, so a burst of accepts spreads at once.
pub struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    counted: Counted,
}

/// One open connection, counted against its worker until dropped.
struct Counted {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(c) = self.balance.open.get(self.worker) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One worker's place in the [`Balance`].
pub struct Worker {
    pub index: usize,
    pub balance: Arc<Balance>,
    pub inbox: mpsc::UnboundedReceiver<Handoff>,
}

impl Balance {
    /// A balance of `n` workers, and each worker's place in it.
    pub fn workers(n: usize) -> Vec<Worker> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Balance {
            open: senders.iter().map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders,
        });
        receivers
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Worker {
                index,
                balance: balance.clone(),
                inbox,
            })
            .collect()
    }

    /// Open connections per worker.
    pub fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Count one more open connection against `worker`, until the result is dropped.
    fn count(self: &Arc<Self>, worker: usize) -> Counted {
        if let Some(c) = self.open.get(worker) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Counted {
            balance: self.clone(),
            worker,
        }
    }

    /// Who serves a connection worker `me` accepted: the worker with the fewest open
    /// connections, `me` on a tie.
    fn pick(&self, me: usize) -> usize {
        let count = |i: usize| {
            self.open
                .get(i)
                .map_or(usize::MAX, |c| c.load(Ordering::Relaxed))
        };
        let mut best = me;
        for i in 0..self.open.len() {
            if count(i) < count(best) {
                best = i;
            }
        }
        best
    }
}

/// Serve `listener` (and the connections other workers hand over) until `shutdown` resolves,
/// then drain in-flight requests for at most the configured grace period. With `tls`, every
/// connection is TLS (handshake bounded in time).
pub async fn run(
    listener: TcpListener,
    mut worker: Worker,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    permits: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) {
    let cfg = state.snapshot().config.server.clone();
    let builder = Arc::new(builder(&cfg));
    // The drain: a change tells every connection to close after its exchange in flight, and
    // each holds a receiver until it has ended.
    let (drain, connections) = watch::channel(());
    tokio::pin!(shutdown);

    loop {
        let accept = async {
            let permit = permits.clone().acquire_owned().await;
            (permit, listener.accept().await)
        };
        let (stream, peer, permit, counted) = tokio::select! {
            _ = &mut shutdown => break,
            Some(h) = worker.inbox.recv() => match TcpStream::from_std(h.stream) {
                Ok(stream) => (stream, h.peer, h.permit, h.counted),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take over a connection");
                    continue;
                }
            },
            (permit, accepted) = accept => {
                let Ok(permit) = permit else { break };
                match accepted {
                    Ok((stream, peer)) => {
                        let me = worker.index;
                        let target = worker.balance.pick(me);
                        if target == me {
                            (stream, peer, permit, worker.balance.count(me))
                        } else {
                            let counted = worker.balance.count(target);
                            match hand_over(&worker.balance, target, stream, peer, permit, counted) {
                                Ok(()) => continue,
                                // The other worker has stopped: serve it here.
                                Err((stream, permit)) => {
                                    (stream, peer, permit, worker.balance.count(me))
                                }
                            }
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let flags = Arc::new(crate::net::framing::ConnFlags::default());
        let tls_conn = tls.is_some();
        let state = state.clone();
        let conn_flags = flags.clone();
        let (upstreams, driver) = ConnUpstreams::new();
        let client = crate::proxy::Peer::new(peer);
        let service = service_fn(move |req| {
            let info = ConnInfo {
                peer: client.clone(),
                tls: tls_conn,
                framing: conn_flags.next_request_refusal(),
                upstreams: Some(upstreams.clone()),
            };
            let state = state.clone();
            let req = req.map(crate::body::RequestBody::from);
            async move { Ok::<_, Infallible>(pipeline::handle(state, info, req).await) }
        });
        let builder = builder.clone();
        let drain_signal = connections.clone();
        let tls = tls.clone();
        let handshake_timeout = cfg.tls_handshake_timeout;
        let first_byte_timeout = cfg.header_read_timeout;
        crate::metrics::get().connection_opened();
        tokio::spawn(async move {
            let result = match tls {
                None if !first_byte_within(&stream, first_byte_timeout).await => {
                    tracing::debug!(peer = %peer, "no request byte in time; connection closed");
                    Ok(())
                }
                None => {
                    let io = TokioIo::new(crate::net::framing::Scanned::new(stream, flags));
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    conn_upstreams::drive(
                        conn.into_owned(),
                        driver,
                        Some(conn_upstreams::Closing::on(drain_signal, |c| {
                            c.graceful_shutdown()
                        })),
                    )
                    .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let io =
                                TokioIo::new(crate::net::framing::Scanned::new(tls_stream, flags));
                            let conn = builder.serve_connection_with_upgrades(io, service);
                            conn_upstreams::drive(
                                conn.into_owned(),
                                driver,
                                Some(conn_upstreams::Closing::on(drain_signal, |c| {
                                    c.graceful_shutdown()
                                })),
                            )
                            .await
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
            drop(counted);
            drop(permit);
        });
    }

    state.start_draining();
    drop(listener);
    drop(connections);
    tracing::info!(
        open = drain.receiver_count(),
        grace_secs = cfg.shutdown_grace.as_secs(),
        "draining"
    );
    // No receiver left (no connection open) is an error here, and nothing to wait for.
    let _ = drain.send(());
    tokio::select! {
        _ = drain.closed() => tracing::info!("drained"),
        _ = tokio::time::sleep(cfg.shutdown_grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

/// Whether the client sends its first byte within `limit`. hyper's head timer starts with the
/// first byte, so a connection that never sends one would hold its permit forever and idle
/// sockets could fill `max_connections`. (A TLS connection's first bytes are its handshake,
/// which has its own bound.) `peek` leaves the byte for hyper; a handed-over connection whose
/// bytes already arrived answers at once.
async fn first_byte_within(stream: &TcpStream, limit: Duration) -> bool {
    let mut probe = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, stream.peek(&mut probe)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Send an accepted connection to worker `target`; gives it back when that worker is gone.
fn hand_over(
    balance: &Balance,
    target: usize,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    counted: Counted,
) -> Result<(), (TcpStream, OwnedSemaphorePermit)> {
    let Some(inbox) = balance.inboxes.get(target) else {
        return Err((stream, permit));
    };
    let stream = match stream.into_std() {
        Ok(s) => s,
        // Already deregistered: nothing to give back; the permit returns with the drop.
        Err(e) => {
            tracing::debug!(error = %e, "cannot hand over a connection");
            return Ok(());
        }
    };
    match inbox.send(Handoff {
        stream,
        peer,
        permit,
        counted,
    }) {
        Ok(()) => Ok(()),
        Err(mpsc::error::SendError(h)) => match TcpStream::from_std(h.stream) {
            Ok(stream) => Err((stream, h.permit)),
            Err(_) => Ok(()),
        },
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

/// `n` listening sockets on one address with `SO_REUSEPORT`: the kernel spreads new
/// connections across them, one per worker, so a connection lives on one thread.
pub fn bind_listeners(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let bind = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if n > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    let first = bind(addr)?;
    // Port 0: the others join the port the first one got.
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind(addr)?);
    }
    Ok(all)
}
