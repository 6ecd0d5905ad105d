//! The body type every response uses, JSON helpers for gateway-served endpoints, and the
//! streaming wrappers that bound how long a proxied body may stall.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use serde::Serialize;
use tokio::time::Instant;

use crate::net::timer::LazySleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One boxed body type for every response (gateway JSON, proxied streams, errors).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A streamed body of JSON lines, one per value from `rx`. When `rx` ends, `done` tells whether
/// everything was sent: a failure ends the body with an error, so the client sees a cut
/// transfer, never a short file that looks complete.
pub fn json_lines<T, E>(
    rx: tokio::sync::mpsc::Receiver<T>,
    done: tokio::task::JoinHandle<Result<(), E>>,
) -> Body
where
    T: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let frames = futures_util::stream::unfold(Some((rx, done)), |state| async move {
        let (mut rx, done) = state?;
        match rx.recv().await {
            Some(v) => {
                let mut line = serde_json::to_vec(&v).unwrap_or_default();
                line.push(b'\n');
                Some((Ok(Frame::data(Bytes::from(line))), Some((rx, done))))
            }
            None => match done.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some((Err(BoxError::from(e.to_string())), None)),
                Err(e) => Some((Err(BoxError::from(e.to_string())), None)),
            },
        }
    });
    http_body_util::StreamBody::new(frames).boxed_unsync()
}

/// A JSON response. `no_store` is set for responses that carry a key or a token.
pub fn json<T: Serialize>(status: StatusCode, value: &T, no_store: bool) -> Response<Body> {
    // Serialising our own plain structs cannot fail; fall back to an empty object regardless.
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if no_store {
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A request body as the pipeline takes it: as hyper received it, or built in memory (unit
/// tests drive the pipeline without a socket). An enum, not a box: no allocation per request.
pub enum RequestBody {
    Incoming(hyper::body::Incoming),
    Full(Full<Bytes>),
}

impl From<hyper::body::Incoming> for RequestBody {
    fn from(b: hyper::body::Incoming) -> Self {
        RequestBody::Incoming(b)
    }
}

impl From<Bytes> for RequestBody {
    fn from(b: Bytes) -> Self {
        RequestBody::Full(Full::new(b))
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(b) => b.is_end_stream(),
            RequestBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(b) => b.size_hint(),
            RequestBody::Full(b) => b.size_hint(),
        }
    }
}

/// A 204 for gateway-served endpoints that return nothing.
pub fn no_content() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Marks a body that stalled longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body idle for longer than {0:?}")]
pub struct IdleTimeoutError(pub Duration);

/// Marks a request body that fell behind its minimum rate.
#[derive(Debug, thiserror::Error)]
#[error("request body slower than {min_rate} bytes/s after the first {grace:?}")]
pub struct TooSlowError {
    pub grace: Duration,
    pub min_rate: u64,
}

/// When a streamed body's next frame is due: [`Idle`] or [`Rate`].
pub trait Pace: Unpin {
    /// The deadline once a frame carrying `bytes` of data has arrived.
    fn after(&mut self, bytes: u64) -> Instant;
    /// The error that ends a body that missed its deadline.
    fn missed(&self) -> BoxError;
}

/// Each frame due within `idle` of the one before. An idle bound, not a total deadline: an SSE
/// stream that sends a keep-alive every 15 s may last for hours.
pub struct Idle(Duration);

impl Pace for Idle {
    fn after(&mut self, _bytes: u64) -> Instant {
        Instant::now() + self.0
    }

    fn missed(&self) -> BoxError {
        Box::new(IdleTimeoutError(self.0))
    }
}

/// Complete by `grace + received / min_rate` after the start (Apache's `mod_reqtimeout`
/// `body=20,MinRate=500` rule): a slow upload that keeps moving goes on, one trickled byte by
/// byte is cut.
pub struct Rate {
    started: Instant,
    received: u64,
    grace: Duration,
    min_rate: u64,
}

impl Pace for Rate {
    fn after(&mut self, bytes: u64) -> Instant {
        self.received += bytes;
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        self.started + self.grace + earned
    }

    fn missed(&self) -> BoxError {
        Box::new(TooSlowError {
            grace: self.grace,
            min_rate: self.min_rate,
        })
    }
}

/// A body that ends with its pace's error when a frame is late.
pub struct Paced<B, P> {
    inner: B,
    /// None: no bound (a rate of 0, or no body to come).
    pace: Option<(P, LazySleep)>,
}

/// Ends a streamed body with an error when no frame arrives for `idle`.
pub type IdleTimeout<B> = Paced<B, Idle>;

/// Ends a body with an error when it falls behind a minimum rate.
pub type MinRate<B> = Paced<B, Rate>;

impl<B> Paced<B, Idle> {
    pub fn new(inner: B, idle: Duration) -> Self {
        let sleep = LazySleep::new(Instant::now() + idle);
        Paced {
            inner,
            pace: Some((Idle(idle), sleep)),
        }
    }
}

impl<B: http_body::Body> Paced<B, Rate> {
    /// `min_rate` in bytes per second; 0 sets no minimum.
    pub fn new(inner: B, grace: Duration, min_rate: u64) -> Self {
        let pace = (min_rate > 0 && !inner.is_end_stream()).then(|| {
            let started = Instant::now();
            let rate = Rate {
                started,
                received: 0,
                grace,
                min_rate,
            };
            (rate, LazySleep::new(started + grace))
        });
        Paced { inner, pace }
    }
}

impl<B, P> http_body::Body for Paced<B, P>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    P: Pace,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some((pace, sleep)) = &mut this.pace else {
            return polled.map_err(Into::into);
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let bytes = frame.data_ref().map_or(0, |d| d.len() as u64);
                sleep.set(pace.after(bytes));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match sleep.poll_expired(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(pace.missed()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A callback run once, with the trailers of a body.
type TrailersHook = Box<dyn FnOnce(&http::HeaderMap) + Send>;

/// Calls `on_trailers` with the trailers of a streamed body when they arrive (at its end).
pub struct OnTrailers<B> {
    inner: B,
    on_trailers: Option<TrailersHook>,
}

impl<B> OnTrailers<B> {
    pub fn new(inner: B, on_trailers: impl FnOnce(&http::HeaderMap) + Send + 'static) -> Self {
        OnTrailers {
            inner,
            on_trailers: Some(Box::new(on_trailers)),
        }
    }
}

impl<B> http_body::Body for OnTrailers<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(trailers) = frame.trailers_ref() {
                if let Some(f) = this.on_trailers.take() {
                    f(trailers);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_ends_a_stalled_stream_but_not_a_slow_one() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = StreamBody::new(tokio_stream_from(rx));
        let mut body = IdleTimeout::new(stream, Duration::from_secs(10));
        // A frame every 8 s keeps it alive.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .unwrap();
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        // Then silence: the next poll fails after the idle bound.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<IdleTimeoutError>());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn min_rate_gives_the_grace_plus_what_each_byte_earns() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let started = Instant::now();
        let mut body = MinRate::new(
            StreamBody::new(tokio_stream_from(rx)),
            Duration::from_secs(2),
            10,
        );
        // 10 bytes earn 1 s: due by 3 s, then (20 bytes) by 4 s.
        for at in [1, 3] {
            tokio::time::sleep_until(started + Duration::from_millis(at * 1000 - 100)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
                .await
                .unwrap();
            assert!(body.frame().await.unwrap().is_ok(), "in time at {at} s");
        }
        let err = body.frame().await.unwrap().unwrap_err();
        let late = err.downcast_ref::<TooSlowError>().unwrap();
        assert_eq!((late.grace, late.min_rate), (Duration::from_secs(2), 10));
        assert_eq!(started.elapsed(), Duration::from_secs(4));
        drop(tx);

        // A rate of 0 sets no minimum: a body silent for an hour is still read.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let mut body = MinRate::new(StreamBody::new(tokio_stream_from(rx)), Duration::ZERO, 0);
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .unwrap();
        });
        assert!(body.frame().await.unwrap().is_ok());
        sender.await.unwrap();
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
