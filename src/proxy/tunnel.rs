//! WebSocket upgrades: the client's `101`, and the byte tunnel between the two upgraded
//! connections with its idle bound.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::Body;

use super::hygiene::*;

/// The client's `101 Switching Protocols`: the upstream's handshake headers
/// (`Sec-WebSocket-*`), with the upgrade itself re-stated.
pub fn switching_protocols(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Response::from_parts(parts, crate::body::empty())
}

/// Join the client's and the upstream's upgraded connections; bytes flow both ways until either
/// side closes or nothing moves for `idle`.
pub fn spawn_tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let activity = Arc::new(AtomicU64::new(0));
        let started = tokio::time::Instant::now();
        let mut client = Activity::new(TokioIo::new(client), activity.clone(), started);
        let mut upstream = Activity::new(TokioIo::new(upstream), activity.clone(), started);
        let watchdog = async {
            let tick = (idle / 4).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(tick).await;
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                if started.elapsed().saturating_sub(last) >= idle {
                    return;
                }
            }
        };
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "websocket tunnel ended");
                }
            }
            _ = watchdog => tracing::debug!("websocket tunnel idle; closed"),
        }
    });
}

/// Records the time of the last byte moved, for the tunnel's idle bound.
struct Activity<T> {
    inner: T,
    last: Arc<AtomicU64>,
    started: tokio::time::Instant,
}

impl<T> Activity<T> {
    fn new(inner: T, last: Arc<AtomicU64>, started: tokio::time::Instant) -> Self {
        Activity {
            inner,
            last,
            started,
        }
    }

    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
