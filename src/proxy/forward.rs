//! Sending a request upstream: on the client connection's own upstream connection (`proxy::conn_upstreams`) or
//! through the shared pool, within the first-byte timeout; upstream failures told apart from a
//! client's oversized body.

use std::sync::Arc;

use http::header::{self};
use http::uri::Scheme;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{Body, BoxError, IdleTimeout};
use crate::error::GatewayError;
use crate::proxy::conn_upstreams::ConnUpstreams;
use crate::route::Upstream;

use super::hygiene::*;

/// The shared pool for one upstream, for what cannot use a client connection's own upstream
/// connection (`conn_upstreams`): HTTP/2 clients, `https://` upstreams, WebSocket upgrades. HTTP/1.1, or
/// HTTP/2 when an HTTPS upstream offers it by ALPN.
pub struct UpstreamClient {
    pub upstream: Arc<Upstream>,
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

impl UpstreamClient {
    pub fn new(upstream: Arc<Upstream>) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(upstream.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls =
            crate::net::tls::upstream_client_config(upstream.https, upstream.ca_file.as_deref())
                .map_err(|e| format!("upstream {}: {e}", upstream.name))?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(upstream.pool_idle_timeout)
            .pool_max_idle_per_host(upstream.pool_max_idle_per_host)
            .build(connector);
        Ok(UpstreamClient { upstream, client })
    }
}

/// Send the request; the response head must arrive within the upstream's first-byte timeout.
/// With `own` (an HTTP/1 client connection's own upstream connections), a plain-HTTP upstream
/// is reached on the client connection's own upstream connection; otherwise through the pool.
pub async fn forward(
    client: &UpstreamClient,
    own: Option<&ConnUpstreams>,
    req: Request<Body>,
) -> Result<Response<Incoming>, GatewayError> {
    let up = &client.upstream;
    let sent = match own {
        Some(own) if !up.https => {
            let deadline = tokio::time::Instant::now() + up.first_byte_timeout;
            own.send_by(&up.authority, up.connect_timeout, req, deadline)
                .await
        }
        _ => {
            // The pool wants an absolute target, and sets `Host` (HTTP/1) or `:authority`.
            let (mut parts, body) = req.into_parts();
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(if up.https {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            });
            uri.authority = Some(up.authority.clone());
            uri.path_and_query = parts.uri.path_and_query().cloned();
            parts.uri = Uri::from_parts(uri)
                .map_err(|_| GatewayError::invalid("request target cannot be forwarded"))?;
            parts.headers.remove(header::HOST);
            let req = Request::from_parts(parts, body);
            tokio::time::timeout(up.first_byte_timeout, client.client.request(req))
                .await
                .ok()
                .map(|r| r.map_err(|e| -> BoxError { Box::new(e) }))
        }
    };
    match sent {
        None => Err(GatewayError::UpstreamTimeout),
        Some(Ok(resp)) => Ok(resp),
        Some(Err(e)) => {
            if caused_by::<http_body_util::LengthLimitError>(&*e) {
                return Err(GatewayError::PayloadTooLarge);
            }
            if caused_by::<crate::body::TooSlowError>(&*e) {
                return Err(GatewayError::BodyTimeout);
            }
            if client_body_failed(&*e) {
                return Err(GatewayError::invalid(
                    "the request body could not be read (malformed chunked encoding or cut off)",
                ));
            }
            Err(GatewayError::UpstreamUnavailable(format!(
                "{}: {}",
                up.name,
                error_chain(&*e)
            )))
        }
    }
}

/// Whether the request body the client was sending failed (a malformed chunk, a connection
/// cut mid-body): hyper's client reports it as its user body's error, wrapping the hyper error
/// of the server side that read the client. The client's fault, not the upstream's.
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<hyper::Error>() {
            return err.source().is_some_and(caused_by::<hyper::Error>);
        }
        cur = err.source();
    }
    false
}

fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

/// Drop hop-by-hop headers from the upstream's response and bound stalls of its body.
pub fn rewrite_response(resp: Response<Incoming>, up: &Upstream) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = IdleTimeout::new(body, up.idle_timeout).boxed_unsync();
    Response::from_parts(parts, body)
}
