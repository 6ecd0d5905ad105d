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
use http_body_util::{BodyExt, Empty, Full, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::timer::LazySleep;

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

/// Read a JSON request body of at most `limit` bytes and parse it.
///
/// Too large is 413; anything else that is not the expected JSON (bad syntax, non-UTF-8, nesting
/// past serde_json's recursion limit, a missing field) is 400 naming the problem.
pub async fn read_json<T, B>(body: B, limit: usize) -> Result<T, GatewayError>
where
    T: DeserializeOwned,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let bytes = read_limited(body, limit).await?;
    if bytes.is_empty() {
        return Err(GatewayError::invalid("request body must be a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        // serde_json's message names the field and position, never echoes long input.
        GatewayError::invalid(format!("malformed JSON body: {}", json_problem(&e)))
    })
}

/// Collect a body of at most `limit` bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(GatewayError::PayloadTooLarge),
        Err(e) => Err(GatewayError::invalid(format!(
            "could not read request body: {e}"
        ))),
    }
}

fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json quotes unknown variants and values; keep messages short and free of input.
    match e.classify() {
        serde_json::error::Category::Data => text,
        _ => format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ),
    }
}

/// Marks a body that stalled longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body idle for longer than {0:?}")]
pub struct IdleTimeoutError(pub Duration);

/// Ends a streamed body with an error when no frame arrives for `idle`.
///
/// This is an idle bound, not a total deadline: an SSE stream that sends a keep-alive every 15 s
/// may last for hours.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    sleep: LazySleep,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            sleep: LazySleep::new(Instant::now() + idle),
        }
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep.set(Instant::now() + this.idle);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.poll_expired(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimeoutError(this.idle))))),
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

    #[derive(serde::Deserialize, Debug)]
    struct Login {
        #[allow(dead_code)]
        email: String,
    }

    #[tokio::test]
    async fn oversize_json_is_413() {
        let body = Full::new(Bytes::from(vec![b' '; 2000]));
        let err = read_json::<Login, _>(body, 1000).await.unwrap_err();
        assert!(matches!(err, GatewayError::PayloadTooLarge));
    }

    #[tokio::test]
    async fn missing_field_is_400_naming_it() {
        let body = Full::new(Bytes::from_static(b"{\"name\":\"x\"}"));
        let err = read_json::<Login, _>(body, 1000).await.unwrap_err();
        match err {
            GatewayError::InvalidInput(m) => assert!(m.contains("email"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn non_utf8_and_deep_nesting_are_400() {
        let body = Full::new(Bytes::from_static(b"{\"email\":\"\xff\xfe\"}"));
        assert!(matches!(
            read_json::<Login, _>(body, 1000).await,
            Err(GatewayError::InvalidInput(_))
        ));
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let body = Full::new(Bytes::from(deep));
        assert!(matches!(
            read_json::<serde_json::Value, _>(body, 100_000).await,
            Err(GatewayError::InvalidInput(_))
        ));
    }

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

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
