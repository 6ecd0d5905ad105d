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
//! and WebSocket upgrades use the proxy's shared pool instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::net::coalesce::Coalesced;
use crate::net::timer::LazySleep;
use std::time::Duration;

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
    conns: Vec<ConnFuture>,
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
            conns: Vec::new(),
        };
        (handle, driver)
    }

    /// [`ConnUpstreams::send`], waiting for the response head until `deadline` at most;
    /// `None` when it passed (the upstream connection is then closed: the exchange was cut).
    pub async fn send_by(
        &self,
        up: &Authority,
        connect_timeout: Duration,
        req: Request<Body>,
        deadline: Instant,
    ) -> Option<Result<Response<Incoming>, BoxError>> {
        let mut send = std::pin::pin!(self.send(up, connect_timeout, req));
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
        up: &Authority,
        connect_timeout: Duration,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, BoxError> {
        if let Some(mut sender) = self.take(up) {
            // The previous exchange on this connection is over (HTTP/1 clients wait for the
            // whole response), so an open upstream connection is ready at once; one that is
            // not (closed, or still finishing a body) is left to end on its own.
            if let Some(Ok(())) = sender.ready().now_or_never() {
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        self.put(up, sender);
                        return Ok(resp);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(boxed(e.into_error())),
                    },
                }
            }
        }
        let mut sender = self.connect(up, connect_timeout).await?;
        sender.ready().await.map_err(boxed)?;
        let resp = sender.send_request(req).await.map_err(boxed)?;
        self.put(up, sender);
        Ok(resp)
    }

    async fn connect(
        &self,
        up: &Authority,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Body>, BoxError> {
        let host = up.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = up.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(
            connect_timeout,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| boxed(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
        .map_err(boxed)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(Coalesced(stream)))
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
    /// Poll the upstream connections (and take in new ones); `cx` carries the upstream waker.
    fn poll(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(conn)) = self.new.poll_recv(cx) {
            self.conns.push(conn);
        }
        self.conns.retain_mut(|c| c.as_mut().poll(cx).is_pending());
    }
}

/// How [`drive`] ends its connection gracefully: when the worker's drain begins (`signal`
/// changes), `close` tells the connection to finish the exchange in flight and then end. The
/// drain waits until every connection's receiver is dropped, with the connection.
pub struct Closing<F> {
    signal: Pin<Box<dyn Future<Output = watch::Receiver<()>> + Send>>,
    close: fn(Pin<&mut F>),
}

impl<F> Closing<F> {
    pub fn on(mut signal: watch::Receiver<()>, close: fn(Pin<&mut F>)) -> Closing<F> {
        let signal = Box::pin(async move {
            // An error: the drain's sender is gone, which is a drain too.
            let _ = signal.changed().await;
            signal
        });
        Closing { signal, close }
    }
}

/// Run the client connection `conn` and its upstream connections in one task; ends with
/// `conn` (closing the upstream connections it opened). With `closing`, the connection is
/// closed gracefully when the worker drains.
///
/// Each side (the connection, its upstream connections, the drain signal) gets a waker of its
/// own that only sets a flag (and wakes the task unless it is being polled), so a poll runs just
/// the side that has work, and a wake one side gives the other while the task runs (the request
/// handed to the upstream connection, the response handed back) is served in the same poll
/// instead of scheduling the task again. The drain signal is polled only when it fires.
pub fn drive<F: Future>(conn: F, driver: Driver, closing: Option<Closing<F>>) -> Drive<F> {
    let shared = Arc::new(Shared {
        flags: AtomicU8::new(WORK),
        task: AtomicWaker::new(),
    });
    let waker = |side| {
        Waker::from(Arc::new(SideWaker {
            shared: shared.clone(),
            side,
        }))
    };
    Drive {
        conn: Box::pin(conn),
        driver,
        conn_waker: waker(CONN),
        upstream_waker: waker(UPSTREAM),
        closing_waker: waker(CLOSING),
        closing,
        closed: None,
        shared,
    }
}

/// The client connection side has work.
const CONN: u8 = 1;
/// The upstream side has work.
const UPSTREAM: u8 = 2;
/// The drain signal may have fired.
const CLOSING: u8 = 8;
/// Every side.
const WORK: u8 = CONN | UPSTREAM | CLOSING;
/// The task is inside [`Drive::poll`]: a wake only sets its side's flag.
const POLLING: u8 = 4;
/// Rounds one poll may run before it yields to the task's other work.
const MAX_ROUNDS: usize = 16;

struct Shared {
    flags: AtomicU8,
    task: AtomicWaker,
}

struct SideWaker {
    shared: Arc<Shared>,
    side: u8,
}

impl std::task::Wake for SideWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let before = self.shared.flags.fetch_or(self.side, Ordering::AcqRel);
        // Nobody else will look at the flags: not in a poll, and no earlier wake pending.
        if before & (POLLING | WORK) == 0 {
            self.shared.task.wake();
        }
    }
}

/// The future [`drive`] returns.
pub struct Drive<F> {
    conn: Pin<Box<F>>,
    driver: Driver,
    shared: Arc<Shared>,
    conn_waker: Waker,
    upstream_waker: Waker,
    closing_waker: Waker,
    closing: Option<Closing<F>>,
    /// Once the drain began: held until the connection ends, so the drain waits for it.
    closed: Option<watch::Receiver<()>>,
}

impl<F: Future> Future for Drive<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.shared.task.register(cx.waker());
        let flags = &this.shared.flags;
        let mut todo = flags.swap(POLLING, Ordering::AcqRel) & WORK;
        for _ in 0..MAX_ROUNDS {
            if todo & CLOSING != 0 {
                if let Some(closing) = &mut this.closing {
                    let mut cx = Context::from_waker(&this.closing_waker);
                    if let Poll::Ready(receiver) = closing.signal.as_mut().poll(&mut cx) {
                        (closing.close)(this.conn.as_mut());
                        this.closed = Some(receiver);
                        this.closing = None;
                        // The connection acts on it when polled.
                        todo |= CONN;
                    }
                }
            }
            // Upstream data first, so a response that arrived is handed on in this same poll.
            if todo & UPSTREAM != 0 {
                this.driver
                    .poll(&mut Context::from_waker(&this.upstream_waker));
            }
            if todo & CONN != 0 {
                let out = this
                    .conn
                    .as_mut()
                    .poll(&mut Context::from_waker(&this.conn_waker));
                if out.is_ready() {
                    flags.store(0, Ordering::Release);
                    return out;
                }
            }
            // Wakes given while polling: the request handed to the upstream connection, the
            // response handed back, or I/O that became ready meanwhile.
            todo = flags.swap(POLLING, Ordering::AcqRel) & WORK;
            if todo == 0 {
                match flags.compare_exchange(POLLING, 0, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Poll::Pending,
                    // A wake landed between the two: take it too.
                    Err(_) => todo = flags.swap(POLLING, Ordering::AcqRel) & WORK,
                }
            }
        }
        // Still busy: keep the work flagged and let the runtime's other tasks run first.
        flags.fetch_or(todo, Ordering::AcqRel);
        flags.fetch_and(!POLLING, Ordering::AcqRel);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes the runtime would get for the task.
    struct Counter(AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    /// A client connection that hands a request to its upstream connection and waits for the
    /// answer, with the two talking over channels as hyper's do.
    fn exchange() -> (impl Future<Output = u32>, Driver) {
        let (handle, driver) = ConnUpstreams::new();
        let (req_tx, mut req_rx) =
            mpsc::unbounded_channel::<(u32, tokio::sync::oneshot::Sender<u32>)>();
        let upstream: ConnFuture = Box::pin(async move {
            while let Some((n, reply)) = req_rx.recv().await {
                let _ = reply.send(n * 2);
            }
        });
        let _ = handle.inner.spawn.send(upstream);
        let conn = async move {
            let mut sum = 0;
            for n in 1..=3 {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = req_tx.send((n, tx));
                sum += rx.await.unwrap_or(0);
            }
            sum
        };
        (conn, driver)
    }

    #[test]
    fn wakes_between_the_two_sides_are_served_in_the_same_poll() {
        let (count, waker) = task();
        let (conn, driver) = exchange();
        let mut drive = std::pin::pin!(drive(conn, driver, None));
        // Three request/response rounds between the sides, all in one poll, and the runtime is
        // never asked to poll the task again for them.
        let out = drive.as_mut().poll(&mut Context::from_waker(&waker));
        assert_eq!(out, Poll::Ready(12));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_from_another_thread_reaches_the_task() {
        let (count, waker) = task();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (_handle, driver) = ConnUpstreams::new();
        let mut drive = std::pin::pin!(drive(async move { rx.await.unwrap_or(0) }, driver, None));
        assert!(drive
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        std::thread::spawn(move || tx.send(7)).join().ok();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken");
        assert_eq!(
            drive.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(7)
        );
    }

    /// A connection that, once told to close, takes `finishing` more polls to end.
    struct Closable {
        closing: bool,
        finishing: u32,
    }

    impl Future for Closable {
        type Output = u32;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            if !self.closing {
                return Poll::Pending;
            }
            if self.finishing == 0 {
                return Poll::Ready(7);
            }
            self.finishing -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn the_drain_closes_the_connection_and_waits_for_its_end() {
        let (count, waker) = task();
        let (_handle, driver) = ConnUpstreams::new();
        let (drain, signal) = watch::channel(());
        let conn = Closable {
            closing: false,
            finishing: MAX_ROUNDS as u32 + 3,
        };
        let closing = Closing::on(signal, |c: Pin<&mut Closable>| c.get_mut().closing = true);
        let mut drive = Box::pin(drive(conn, driver, Some(closing)));
        let mut cx = Context::from_waker(&waker);
        assert!(drive.as_mut().poll(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        drain.send(()).unwrap();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the drain wakes the task"
        );
        // Told to close, the connection is still finishing (past one poll's rounds), and the
        // drain still sees it.
        assert!(drive.as_mut().poll(&mut cx).is_pending());
        assert!(drive.closing.is_none());
        assert_eq!(drain.receiver_count(), 1);
        assert_eq!(drive.as_mut().poll(&mut cx), Poll::Ready(7));
        drop(drive);
        assert_eq!(drain.receiver_count(), 0, "the drain is over");
    }

    #[test]
    fn a_side_that_keeps_waking_itself_yields_to_the_runtime() {
        let (count, waker) = task();
        let (_handle, driver) = ConnUpstreams::new();
        let mut polls = 0;
        let busy = std::future::poll_fn(move |cx| {
            polls += 1;
            cx.waker().wake_by_ref();
            if polls > 100 {
                Poll::Ready(polls)
            } else {
                Poll::Pending
            }
        });
        let mut drive = std::pin::pin!(drive(busy, driver, None));
        assert!(drive
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "yielded with a wake");
        let mut polls = 1;
        while drive
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
        {
            polls += 1;
        }
        // MAX_ROUNDS polls of the busy side per poll of the task, and a wake after each.
        assert_eq!(polls + 1, 101usize.div_ceil(MAX_ROUNDS));
        assert_eq!(count.0.load(Ordering::SeqCst), polls);
    }
}
