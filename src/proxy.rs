//! Header hygiene, identity headers, and the streaming forward to an upstream.
//!
//! Order matters and is fixed: [`strip_spoofable`] runs on every request before anything else
//! reads its headers; [`rewrite_request`] adds what the gateway vouches for (only from a
//! [`Principal`]); [`forward`] streams both bodies; [`rewrite_response`] drops hop-by-hop headers
//! and bounds the time a streamed body may stall.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::auth::{Identity, Principal};
use crate::body::{Body, BoxError, IdleTimeout};
use crate::bound::ConnUpstreams;
use crate::config::Upstream;
use crate::error::GatewayError;
use crate::route::Route;

pub static X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
pub static X_TENANT_TIER: HeaderName = HeaderName::from_static("x-tenant-tier");
pub static X_API_KEY_ID: HeaderName = HeaderName::from_static("x-api-key-id");
pub static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub static X_USER_EMAIL: HeaderName = HeaderName::from_static("x-user-email");
pub static X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_ADMIN_SECRET: HeaderName = HeaderName::from_static("x-admin-secret");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers only the gateway may set: removed from every client request on every route.
pub const IDENTITY_HEADERS: [&HeaderName; 6] = [
    &X_TENANT_ID,
    &X_TENANT_TIER,
    &X_API_KEY_ID,
    &X_USER_ID,
    &X_USER_EMAIL,
    &X_AUTH_METHOD,
];

/// Facts about a request gathered before routing.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    /// The client, after believing `X-Forwarded-For` from trusted proxies only.
    pub client_ip: IpAddr,
    pub peer: SocketAddr,
    /// The `X-Forwarded-For` chain to send upstream (client's entries only when trusted).
    pub forwarded_for: HeaderValue,
    pub forwarded_proto: HeaderValue,
    pub forwarded_host: Option<HeaderValue>,
    /// The client asked for a WebSocket upgrade (honoured only where the route allows).
    pub websocket_upgrade: bool,
    /// W3C trace context sent upstream: the client's when well-formed, else a new one.
    pub traceparent: HeaderValue,
}

impl RequestContext {
    /// The 32-hex trace id, for the access log.
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .to_str()
            .ok()
            .and_then(|t| t.get(3..35))
            .unwrap_or("-")
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero (W3C Trace Context, version 00).
fn valid_traceparent(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let nonzero = |s: &[u8]| s.iter().any(|c| *c != b'0');
    b.len() == 55
        && &b[..3] == b"00-"
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[3..35])
        && nonzero(&b[3..35])
        && hex(&b[36..52])
        && nonzero(&b[36..52])
        && hex(&b[53..55])
}

thread_local! {
    /// Ids need to be unique and unguessable enough for correlation, not secret: a fast
    /// generator per thread, seeded from the OS.
    static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_os_rng());
}

fn put_hex(out: &mut [u8], mut n: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// A new W3C `traceparent`, and its trace id (32 hex digits) as a request id: one buffer.
fn new_traceparent() -> (HeaderValue, HeaderValue) {
    let (trace, span) = IDS.with(|r| {
        let mut r = r.borrow_mut();
        (
            rand::Rng::random::<u128>(&mut *r) | 1,
            rand::Rng::random::<u64>(&mut *r) | 1,
        )
    });
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
    put_hex(&mut buf[3..35], trace);
    put_hex(&mut buf[36..52], u128::from(span));
    let bytes = bytes::Bytes::copy_from_slice(&buf);
    let fallback =
        || HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01");
    let id = HeaderValue::from_maybe_shared(bytes.slice(3..35))
        .unwrap_or_else(|_| HeaderValue::from_static("0"));
    (
        HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| fallback()),
        id,
    )
}

fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

fn new_request_id() -> HeaderValue {
    let n: u128 = IDS.with(|r| rand::Rng::random(&mut *r.borrow_mut()));
    let mut buf = [0u8; 32];
    put_hex(&mut buf, n);
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

/// A client connection's address, with its `X-Forwarded-For` value made once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub header: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let header = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        Peer { addr, header }
    }
}

/// Headers [`strip_spoofable`] removes or reads specially: identity ([`IDENTITY_HEADERS`]),
/// forwarding, hop-by-hop. A `match` on the name, like [`is_hop_by_hop`]; a test keeps it and
/// the header statics in step.
fn is_stripped(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || matches!(
            name.as_str(),
            "x-tenant-id"
                | "x-tenant-tier"
                | "x-api-key-id"
                | "x-user-id"
                | "x-user-email"
                | "x-auth-method"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "forwarded"
        )
}

/// The hop-by-hop headers (RFC 9110 7.6.1), removed both ways.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A hop-by-hop header (a `match` on the name: no hashing).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    trusted.iter().any(|n| n.contains(&ip))
}

/// Step 1 of the pipeline: identify the request and remove every header a client could use to
/// impersonate the gateway. Runs before anything else reads the headers.
pub fn strip_spoofable(
    headers: &mut HeaderMap,
    peer: &Peer,
    tls: bool,
    uri: &Uri,
    trusted: &[IpNet],
) -> RequestContext {
    // Most requests carry none of the headers read or removed below: one pass over the names
    // tells, and spares the lookups (each hashes the name) and removals.
    let (mut stripped, mut traced, mut identified) = (false, false, false);
    for name in headers.keys() {
        stripped |= is_stripped(name);
        traced |= name == TRACEPARENT;
        identified |= name == X_REQUEST_ID;
    }
    let client_trace = traced
        .then(|| headers.get(&TRACEPARENT))
        .flatten()
        .filter(|v| valid_traceparent(v))
        .cloned();
    let client_id = identified
        .then(|| headers.get(&X_REQUEST_ID))
        .flatten()
        .filter(|v| sane_request_id(v))
        .cloned();
    let (traceparent, request_id) = match (client_trace, client_id) {
        (Some(t), Some(id)) => (t, id),
        (Some(t), None) => (t, new_request_id()),
        // A new trace: its trace id doubles as the request id.
        (None, id) => {
            let (t, trace_id) = new_traceparent();
            (t, id.unwrap_or(trace_id))
        }
    };
    let websocket_upgrade = stripped
        && connection_names(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if stripped {
        // Connection may name any header as hop-by-hop, including the identity headers.
        strip_hop_by_hop(headers);
        for name in IDENTITY_HEADERS {
            headers.remove(name);
        }
    }

    let peer_ip = peer.addr.ip();
    let trusted_peer = !trusted.is_empty() && is_trusted(peer_ip, trusted);
    let prior = if stripped {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    } else {
        String::new()
    };
    let mut client_ip = peer_ip;
    let forwarded_for;
    if trusted_peer && !prior.is_empty() {
        // Walk from the right: the first address not of a trusted proxy is the client.
        for entry in prior.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client_ip = ip;
                    if !is_trusted(ip, trusted) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        forwarded_for =
            HeaderValue::from_str(&format!("{prior}, {peer_ip}")).unwrap_or_else(|_| {
                HeaderValue::from_str(&peer_ip.to_string())
                    .unwrap_or(HeaderValue::from_static("unknown"))
            });
    } else {
        forwarded_for = peer.header.clone();
    }
    let own_proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    let forwarded_proto = if trusted_peer {
        headers
            .get(&X_FORWARDED_PROTO)
            .filter(|v| v.as_bytes() == b"https" || v.as_bytes() == b"http")
            .cloned()
            .unwrap_or(own_proto)
    } else {
        own_proto
    };
    let own_host = headers.get(header::HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let forwarded_host = if trusted_peer {
        headers.get(&X_FORWARDED_HOST).cloned().or(own_host)
    } else {
        own_host
    };
    if stripped {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        headers.remove(&FORWARDED);
    }

    RequestContext {
        request_id,
        client_ip,
        peer: peer.addr,
        forwarded_for,
        forwarded_proto,
        forwarded_host,
        websocket_upgrade,
        traceparent,
    }
}

/// The shared pool for one upstream, for what cannot use a client connection's own upstream
/// connection (`bound`): HTTP/2 clients, `https://` upstreams, WebSocket upgrades. HTTP/1.1, or
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
        let tls = crate::tls::upstream_client_config(upstream.https, upstream.ca_file.as_deref())
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

/// Build the upstream request: rewritten path, hygiene, identity headers, bounded body.
pub fn rewrite_request<B>(
    mut parts: Parts,
    body: B,
    route: &Route,
    principal: &Principal,
    ctx: &RequestContext,
    forward_path: &str,
    body_limit: u64,
) -> Result<Request<Body>, GatewayError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(up) = route_upstream(route) else {
        return Err(GatewayError::Internal("route has no upstream".into()));
    };
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > body_limit {
            return Err(GatewayError::PayloadTooLarge);
        }
    }

    let query = parts
        .uri
        .query()
        .map(|q| strip_query_token(q, route.query_token));
    let query = query.as_deref().filter(|q| !q.is_empty());
    // Exactly the length: `Bytes::from` would otherwise copy it into a shorter allocation.
    let len = up.base_path.len() + forward_path.len() + query.map_or(0, |q| q.len() + 1);
    let mut target = String::with_capacity(len);
    target.push_str(&up.base_path);
    target.push_str(forward_path);
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    // Origin-form and `Host` for the upstream; `forward` makes it absolute for the pool.
    parts.uri = PathAndQuery::from_maybe_shared(bytes::Bytes::from(target))
        .map(Uri::from)
        .map_err(|_| GatewayError::invalid("request target cannot be forwarded"))?;
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    h.insert(header::HOST, up.host.clone());
    if !route.forward_credentials {
        h.remove(header::AUTHORIZATION);
        h.remove(&X_ADMIN_SECRET);
    }
    if route.websocket && ctx.websocket_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    match principal.identity() {
        Identity::Anonymous => {}
        Identity::ApiKey { tenant, key } => {
            h.insert(&X_AUTH_METHOD, HeaderValue::from_static("api_key"));
            insert_text(h, &X_TENANT_ID, &tenant.id);
            insert_text(h, &X_TENANT_TIER, &tenant.tier);
            insert_text(h, &X_API_KEY_ID, &key.id);
        }
        Identity::User(claims) => {
            h.insert(&X_AUTH_METHOD, HeaderValue::from_static("jwt"));
            insert_text(h, &X_USER_ID, &claims.sub);
            if !claims.email.is_empty() {
                insert_text(h, &X_USER_EMAIL, &claims.email);
            }
        }
        Identity::Admin { .. } => {
            h.insert(&X_AUTH_METHOD, HeaderValue::from_static("admin"));
        }
    }
    h.insert(&X_REQUEST_ID, ctx.request_id.clone());
    h.insert(&TRACEPARENT, ctx.traceparent.clone());
    // We read token counts from trailers, so tell the upstream we accept them.
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert(&X_FORWARDED_FOR, ctx.forwarded_for.clone());
    h.insert(&X_FORWARDED_PROTO, ctx.forwarded_proto.clone());
    if let Some(host) = &ctx.forwarded_host {
        h.insert(&X_FORWARDED_HOST, host.clone());
    }

    let body = Limited::new(body, body_limit as usize)
        .map_err(|e| -> BoxError { e })
        .boxed_unsync();
    Ok(Request::from_parts(parts, body))
}

fn insert_text(h: &mut HeaderMap, name: &HeaderName, value: &str) {
    // Values come from our store or verified claims and were checked printable; a value that
    // is still not a valid header is left out rather than forwarded mangled.
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn strip_query_token(query: &str, enabled: bool) -> std::borrow::Cow<'_, str> {
    if !enabled || !query.contains("access_token=") {
        return query.into();
    }
    query
        .split('&')
        .filter(|p| !p.starts_with("access_token="))
        .collect::<Vec<_>>()
        .join("&")
        .into()
}

fn route_upstream(route: &Route) -> Option<&Arc<Upstream>> {
    match &route.target {
        crate::route::Target::Upstream(u) => Some(u),
        crate::route::Target::Handler(_) => None,
    }
}

/// Send the request; the response head must arrive within the upstream's first-byte timeout.
/// With `bound` (an HTTP/1 client connection's own upstream connections), a plain-HTTP upstream
/// is reached on the client connection's own upstream connection; otherwise through the pool.
pub async fn forward(
    client: &UpstreamClient,
    bound: Option<&ConnUpstreams>,
    req: Request<Body>,
) -> Result<Response<Incoming>, GatewayError> {
    let up = &client.upstream;
    let sent = match bound {
        Some(bound) if !up.https => {
            let deadline = tokio::time::Instant::now() + up.first_byte_timeout;
            bound.send_by(up, req, deadline).await
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
            Err(GatewayError::UpstreamUnavailable(format!(
                "{}: {}",
                up.name,
                error_chain(&*e)
            )))
        }
    }
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

/// Drop hop-by-hop headers from the upstream's response and bound stalls of its body.
pub fn rewrite_response(resp: Response<Incoming>, up: &Upstream) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = IdleTimeout::new(body, up.idle_timeout).boxed_unsync();
    Response::from_parts(parts, body)
}

/// The tokens of every `Connection` header.
fn connection_names(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
}

/// Remove the hop-by-hop headers and every header `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names finds the hop-by-hop ones (each name appears once in `keys`).
    let mut found: [Option<HeaderName>; HOP_BY_HOP.len()] = Default::default();
    let hop = h.keys().filter(|n| is_hop_by_hop(n));
    for (slot, name) in found.iter_mut().zip(hop) {
        *slot = Some(name.clone());
    }
    if found[0].is_none() {
        return;
    }
    // Usually just `Connection: keep-alive` or `close`, which name no other header: those
    // need no parsing.
    let plain = h.get_all(header::CONNECTION).iter().all(|v| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    });
    if !plain {
        let named: Vec<HeaderName> = connection_names(h)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !is_hop_by_hop(n))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for name in found.into_iter().flatten() {
        h.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn peer(ip: &str) -> Peer {
        Peer::new(SocketAddr::new(ip.parse().unwrap(), 5555))
    }

    #[test]
    fn stripped_names_are_exactly_the_identity_forwarding_and_hop_by_hop_ones() {
        let forwarding = [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &FORWARDED,
        ];
        for name in IDENTITY_HEADERS.into_iter().chain(forwarding) {
            assert!(is_stripped(name), "{name}");
        }
        for name in HOP_BY_HOP {
            assert!(is_stripped(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            &X_REQUEST_ID,
            &TRACEPARENT,
            &X_ADMIN_SECRET,
            &header::HOST,
            &header::AUTHORIZATION,
            &header::CONTENT_TYPE,
        ] {
            assert!(!is_stripped(name), "{name}");
        }
    }

    #[test]
    fn identity_headers_are_stripped_in_any_case_and_multiplicity() {
        let mut h = hm(&[
            ("X-Tenant-Id", "t_evil"),
            ("x-tenant-id", "t_evil2"),
            ("X-TENANT-TIER", "enterprise"),
            ("x-api-key-id", "k"),
            ("X-User-Id", "usr_admin"),
            ("x-user-email", "root@x"),
            ("X-Auth-Method", "admin"),
            ("content-type", "application/json"),
        ]);
        strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        for n in IDENTITY_HEADERS {
            assert!(h.get(n).is_none(), "{n} survived");
        }
        assert_eq!(h["content-type"], "application/json");
    }

    #[test]
    fn connection_named_headers_and_hop_by_hop_are_dropped() {
        let mut h = hm(&[
            ("connection", "keep-alive, X-Custom, x-user-id"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("x-other", "kept"),
            ("proxy-connection", "close"),
            ("proxy-authenticate", "Basic"),
            ("trailer", "x-a"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "max=5"),
        ]);
        let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        assert!(!ctx.websocket_upgrade);
        assert_eq!(h.len(), 1);
        for n in HOP_BY_HOP.into_iter().chain(["x-custom"]) {
            assert!(h.get(n).is_none(), "{n} survived");
        }
        assert_eq!(h["x-other"], "kept");

        // A plain `keep-alive` in one Connection header does not hide what another names.
        let mut h = hm(&[
            ("connection", "Keep-Alive"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("x-other", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none());
        assert_eq!(h["x-other"], "kept");
    }

    #[test]
    fn websocket_upgrade_is_detected() {
        let mut h = hm(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        assert!(ctx.websocket_upgrade);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = hm(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        let ctx = strip_spoofable(
            &mut h,
            &peer("1.2.3.4"),
            false,
            &Uri::from_static("/"),
            &trusted,
        );
        assert_eq!(ctx.client_ip.to_string(), "1.2.3.4");
        assert_eq!(ctx.forwarded_for, "1.2.3.4");
        assert_eq!(ctx.forwarded_proto, "http");

        let mut h = hm(&[
            ("x-forwarded-for", "6.6.6.6, 7.7.7.7, 10.0.0.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let ctx = strip_spoofable(
            &mut h,
            &peer("10.0.0.1"),
            false,
            &Uri::from_static("/"),
            &trusted,
        );
        assert_eq!(ctx.client_ip.to_string(), "7.7.7.7");
        assert_eq!(ctx.forwarded_for, "6.6.6.6, 7.7.7.7, 10.0.0.9, 10.0.0.1");
        assert_eq!(ctx.forwarded_proto, "https");
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut h = hm(&[("x-request-id", "abc-123_x.y")]);
        let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        assert_eq!(ctx.request_id, "abc-123_x.y");
        for bad in ["a b", &"x".repeat(129), "<script>"] {
            let mut h = hm(&[("x-request-id", bad)]);
            let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
            assert_ne!(ctx.request_id, bad);
            assert_eq!(ctx.request_id.len(), 32);
        }
    }

    #[test]
    fn traceparent_is_kept_when_valid_and_created_otherwise() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = hm(&[("traceparent", good)]);
        let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        assert_eq!(ctx.traceparent, good);
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut h = hm(&[("traceparent", bad)]);
            let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
            assert_ne!(ctx.traceparent, bad);
            assert!(valid_traceparent(&ctx.traceparent));
        }
    }

    #[test]
    fn query_token_is_removed_before_forwarding() {
        assert_eq!(
            strip_query_token("a=1&access_token=s3cret&b=2", true),
            "a=1&b=2"
        );
        assert_eq!(strip_query_token("access_token=s3cret", true), "");
        assert_eq!(strip_query_token("access_token=x", false), "access_token=x");
    }

    #[test]
    fn the_name_match_covers_every_removed_header() {
        for name in IDENTITY_HEADERS {
            assert!(is_stripped(name), "{name}");
        }
        for name in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &FORWARDED,
        ] {
            assert!(is_stripped(name), "{name}");
        }
        for name in [
            header::CONNECTION,
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::PROXY_AUTHORIZATION,
            header::PROXY_AUTHENTICATE,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
        ] {
            assert!(is_hop_by_hop(&name) && is_stripped(&name), "{name}");
            assert!(HOP_BY_HOP.contains(&name.as_str()), "{name}");
        }
        assert_eq!(HOP_BY_HOP.len(), 9);
        for name in [
            header::HOST,
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            X_REQUEST_ID.clone(),
        ] {
            assert!(!is_stripped(&name), "{name}");
        }
    }

    #[test]
    fn a_new_trace_gives_its_trace_id_as_request_id_and_ids_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let mut h = hm(&[]);
            let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
            assert!(valid_traceparent(&ctx.traceparent));
            assert_eq!(ctx.request_id.to_str().unwrap(), ctx.trace_id());
            assert!(seen.insert(ctx.trace_id().to_string()), "trace ids repeat");
            assert_eq!(ctx.forwarded_for, "1.2.3.4");
        }
    }
}
