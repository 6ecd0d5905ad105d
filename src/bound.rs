//! Upstream connections bound to one client connection, driven by that connection's task.
//!
//! An HTTP/1 client connection carries one exchange at a time, so it can keep its own HTTP/1
//! connection to each plain-HTTP upstream it talks to. [`drive`] polls those upstream
//! connections in the same task as the client connection: a proxied request then never wakes
//! another task or thread (no pool lock, no cross-thread wake-up, no executor hop), which is
//! where a shared pool spent most of its time on a busy 2-core machine.
//!
//! Lifetimes: an upstream connection lives until the client connection ends, the upstream closes
//! it, or a newer one replaces it; so the gateway holds at most one idle upstream connection per
//! client connection and upstream. HTTP/2 clients (many exchanges at once), `https://` upstreams
//! and WebSocket upgrades use the shared pool in [`crate::proxy::UpstreamClient`] instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::config::Upstream;
use crate::timer::LazySleep;

type ConnFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The handle a client connection's requests use; cheap to clone.
#[derive(Clone)]
pub struct ConnUpstreams {
    inner: Arc<Inner>,
}

struct Inner {
    /// Idle upstream connections, by upstream authority (almost always one entry).
    idle: Mutex<Vec<(Authority, SendRequest<Body>)>>,
    /// New upstream connections, handed to the [`Driver`] of the same task.
    spawn: mpsc::UnboundedSender<ConnFuture>,
    /// The first-byte deadline of the exchange in flight (one at a time), re-armed lazily.
    first_byte: Mutex<Option<LazySleep>>,
}

/// Polls the upstream connections of one client connection; see [`drive`].
pub struct Driver {
    new: mpsc::UnboundedReceiver<ConnFuture>,
    conns: FuturesUnordered<ConnFuture>,
}

impl ConnUpstreams {
    pub fn new() -> (ConnUpstreams, Driver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = ConnUpstreams {
            inner: Arc::new(Inner {
                idle: Mutex::new(Vec::new()),
                spawn: tx,
                first_byte: Mutex::new(None),
            }),
        };
        let driver = Driver {
            new: rx,
            conns: FuturesUnordered::new(),
        };
        (handle, driver)
    }

    /// [`ConnUpstreams::send`], waiting for the response head until `deadline` at most;
    /// `None` when it passed (the upstream connection is then closed: the exchange was cut).
    pub async fn send_by(
        &self,
        up: &Upstream,
        req: Request<Body>,
        deadline: Instant,
    ) -> Option<Result<Response<Incoming>, BoxError>> {
        let mut send = std::pin::pin!(self.send(up, req));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = send.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            let mut timer = self
                .inner
                .first_byte
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let timer = timer.get_or_insert_with(|| LazySleep::new(deadline));
            if timer.deadline() != deadline {
                timer.set(deadline);
            }
            timer.poll_expired(cx).map(|()| None)
        })
        .await
    }

    /// Send `req` (origin-form target, `Host` set) to `up` on this connection's own upstream
    /// connection, opening one when there is none or it was closed. A request the upstream
    /// never saw (its idle connection closed just before) is retried once on a new connection.
    pub async fn send(
        &self,
        up: &Upstream,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, BoxError> {
        if let Some(mut sender) = self.take(&up.authority) {
            // The previous exchange on this connection is over (HTTP/1 clients wait for the
            // whole response), so an open upstream connection is ready at once; one that is
            // not (closed, or still finishing a body) is left to end on its own.
            if let Some(Ok(())) = sender.ready().now_or_never() {
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        self.put(&up.authority, sender);
                        return Ok(resp);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(boxed(e.into_error())),
                    },
                }
            }
        }
        let mut sender = self.connect(up).await?;
        sender.ready().await.map_err(boxed)?;
        let resp = sender.send_request(req).await.map_err(boxed)?;
        self.put(&up.authority, sender);
        Ok(resp)
    }

    async fn connect(&self, up: &Upstream) -> Result<SendRequest<Body>, BoxError> {
        let host = up.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = up.authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(
            up.connect_timeout,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| boxed(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
        .map_err(boxed)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(boxed)?;
        let conn: ConnFuture = Box::pin(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with error");
            }
        });
        self.inner
            .spawn
            .send(conn)
            .map_err(|_| boxed(std::io::Error::from(std::io::ErrorKind::NotConnected)))?;
        Ok(sender)
    }

    fn take(&self, authority: &Authority) -> Option<SendRequest<Body>> {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let i = idle.iter().position(|(a, _)| a == authority)?;
        Some(idle.swap_remove(i).1)
    }

    fn put(&self, authority: &Authority, sender: SendRequest<Body>) {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        idle.retain(|(a, _)| a != authority);
        idle.push((authority.clone(), sender));
    }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> BoxError {
    Box::new(e)
}

impl Driver {
    fn poll(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(conn)) = self.new.poll_recv(cx) {
            self.conns.push(conn);
        }
        while let Poll::Ready(Some(())) = self.conns.poll_next_unpin(cx) {}
    }
}

/// Run the client connection `conn` and its upstream connections in one task; ends with
/// `conn` (closing the upstream connections it opened).
pub fn drive<F: Future>(conn: F, driver: Driver) -> Drive<F> {
    Drive {
        conn: Box::pin(conn),
        driver,
    }
}

/// The future [`drive`] returns.
pub struct Drive<F> {
    conn: Pin<Box<F>>,
    driver: Driver,
}

impl<F: Future> Future for Drive<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Upstream data first, so a response that arrived is handed on in this same poll.
        this.driver.poll(cx);
        let out = this.conn.as_mut().poll(cx);
        if out.is_pending() {
            // Requests the client connection just sent go out now, not on the next wake-up.
            this.driver.poll(cx);
        }
        out
    }
}
