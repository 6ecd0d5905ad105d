//! The request pipeline: every request goes through [`handle`], top to bottom.
//!
//! ```text
//! handle           never fails: handle_inner, then error.into_response(); one access-log line
//! handle_inner    (after framing::check: smuggling shapes are 400 + close)
//!   1 ctx          request id, client ip, strip spoofable headers     (proxy::strip_spoofable)
//!   2 route        normalise the path, classify it; CORS preflights    400 / 404
//!   3 gateway-served routes return here (auth API, admin API, health); a path under the
//!                  admin API that it does not implement goes on to the upstream's admin route
//!   4 principal    auth::authenticate                                 401
//!   5              auth::authorize                                    403
//!   6              limits: requests, then token quota                 429
//!                  (a user's token revocation in the same round trip) 401
//!   7              proxy::rewrite_request (Authorization by the route's 413
//!                  credential: none, passthrough, or minted for the upstream)
//!   8              proxy::forward                                     502 / 504
//!                  (a 101 to an allowed WebSocket upgrade becomes a byte tunnel)
//!   9              proxy::rewrite_response + RateLimit-* headers, token debit
//! ```

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::api;
use crate::auth::{self, Identity, Principal};
use crate::body::{self, Body, RequestBody};
use crate::cors;
use crate::error::{ErrorContext, GatewayError};
use crate::limiter::{self, LimitPolicy, Scope};
use crate::proxy::conn_upstreams::ConnUpstreams;
use crate::proxy::{self, X_REQUEST_ID};
use crate::ratelimit::RateLimitHeaders;
use crate::route::{self, AuthKind, Credential, Handler, Route, Target};
use crate::state::{AppState, RequestScope, Snapshot};
use crate::telemetry::{self, RequestTrace};
use crate::util::unix_now;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

/// The methods any route takes (a gateway handler then takes its own subset).
const FORWARDED_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];
/// [`FORWARDED_METHODS`] as an `Allow` header.
const FORWARDED_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The route label of requests that matched none.
static NO_ROUTE: std::sync::LazyLock<crate::metrics::Label> =
    std::sync::LazyLock::new(|| crate::metrics::get().route_label("-"));

/// Facts about the connection a request arrived on.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: proxy::Peer,
    pub tls: bool,
    /// Why the raw head of this request is refused (both Content-Length and Transfer-Encoding,
    /// or a repeated Content-Length), as `framing::Scanner` saw it: hyper drops or merges the
    /// lengths before the handler could tell.
    pub framing: Option<crate::net::framing::FramingError>,
    /// The connection's own upstream connections (HTTP/1 client connections; see `proxy::conn_upstreams`).
    pub upstreams: Option<ConnUpstreams>,
}

/// What the access log and the error response need to know about how far a request got.
#[derive(Debug, Default)]
struct Outcome<'r> {
    /// The matched route, borrowed from the runtime config the request runs under.
    route: Option<&'r Route>,
    bearer: bool,
    auth_method: Option<&'static str>,
    /// Who made a proxied request (its subject is logged).
    principal: Option<Principal>,
    upstream_status: Option<u16>,
}

/// Handle one request. Never fails: errors become their JSON response here.
pub async fn handle(
    state: Arc<AppState>,
    conn: ConnInfo,
    mut req: Request<RequestBody>,
) -> Response<Body> {
    let started = Instant::now();
    let snap = state.snapshot();
    // Before anything reads the request: refuse what another parser could frame differently.
    let framing = match conn.framing {
        Some(refused) => Err(refused),
        None => crate::net::framing::check(&req),
    };
    let uri = req.uri().clone();
    let mut ctx = proxy::strip_spoofable(
        req.headers_mut(),
        &conn.peer,
        conn.tls,
        &uri,
        &snap.config.server.trusted_proxies,
    );
    // With tracing on, the gateway's span joins the trace: the upstream's parent is then the
    // gateway (its exchange span when sampled, else its server span with the flag cleared).
    let trace = state
        .tracing
        .as_ref()
        .map(|t| t.request(&ctx.traceparent, ctx.trace_from_client));
    if let Some(t) = &trace {
        ctx.traceparent = t.traceparent();
    }
    let method = req.method().clone();
    let cors_origin = cors::allowed_origin(req.headers(), &snap.config.server.cors_origins);
    let req_bytes = content_length(req.headers());
    // The path without the query: a query may hold a token (EventSource) and is never logged.
    let path = uri.path();
    let mut outcome = Outcome::default();

    let result = match framing {
        Ok(()) => {
            let own = conn.upstreams.as_ref();
            let scope = RequestScope {
                state: &state,
                snap: &snap,
                ctx: &ctx,
            };
            // Each future is made where it is awaited: a future first bound to a local would
            // take the request's state machine twice its size (measured: +18% instructions
            // per request, in memcpy). A sampled request's future lives on the heap.
            match trace.as_ref().filter(|t| t.sampled()) {
                Some(t) => {
                    let traced = handle_inner(&scope, &uri, own, req, &mut outcome, Some(t));
                    Box::pin(t.scope(traced)).await
                }
                None => handle_inner(&scope, &uri, own, req, &mut outcome, trace.as_ref()).await,
            }
        }
        Err(e) => Err(GatewayError::invalid(e.to_string())),
    };
    let mut error_code = None;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            let (status, _, code) = err.parts();
            error_code = Some(code);
            if code.starts_with("AUTH_") {
                crate::metrics::get().auth_failure(code);
            }
            if status.is_server_error() {
                tracing::warn!(request_id = ?ctx.request_id, code, cause = %err, "request failed");
            } else {
                tracing::debug!(request_id = ?ctx.request_id, code, "request refused");
            }
            err.into_response(ErrorContext {
                bearer: outcome.bearer,
            })
        }
    };
    resp.headers_mut()
        .insert(&X_REQUEST_ID, ctx.request_id.clone());
    if framing.is_err() || resp.status() == StatusCode::REQUEST_TIMEOUT {
        // The rest of the connection cannot be trusted to be framed as we think (or holds the
        // rest of a body that did not come in time).
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    if let Some(origin) = &cors_origin {
        let cfg = &snap.config;
        cors::decorate(
            resp.headers_mut(),
            origin,
            &cfg.cors.expose_headers,
            cfg.auth.cookies,
        );
    }
    let elapsed = started.elapsed();
    if let Some(t) = trace.filter(RequestTrace::sampled) {
        finish_trace(&t, &method, path, &ctx, &outcome, resp.status(), error_code);
    }
    crate::metrics::get().request(
        outcome.route.map_or(&*NO_ROUTE, |r| &r.label),
        &method,
        resp.status(),
        elapsed,
    );
    tracing::info!(
        target: "access",
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        client = %ctx.client_ip,
        method = %method,
        path = %path,
        route = outcome.route.map_or("-", |r| r.label.as_str()),
        status = resp.status().as_u16(),
        latency_us = elapsed.as_micros() as u64,
        trace_id = ctx.trace_id(),
        req_bytes = req_bytes,
        resp_bytes = resp_bytes(&resp),
        auth = outcome.auth_method.unwrap_or("-"),
        subject = outcome.principal.as_ref().map_or("-", Principal::subject),
        upstream_status = outcome.upstream_status.unwrap_or(0),
        "request"
    );
    resp
}

/// Close a sampled request's server span with what the access log says of it (never a secret).
fn finish_trace(
    t: &RequestTrace,
    method: &Method,
    path: &str,
    ctx: &proxy::RequestContext,
    outcome: &Outcome<'_>,
    status: StatusCode,
    error_code: Option<&'static str>,
) {
    let route = outcome.route.map_or("-", |r| r.label.as_str());
    let mut attrs = vec![
        KeyValue::new("http.request.method", method_name(method)),
        telemetry::attr("http.route", route.to_string()),
        telemetry::attr("url.path", path.to_string()),
        KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        telemetry::attr("client.address", ctx.client_ip.to_string()),
        telemetry::attr(
            "ares.request_id",
            ctx.request_id.to_str().unwrap_or("-").to_string(),
        ),
    ];
    if let Some(method) = outcome.auth_method {
        attrs.push(KeyValue::new("ares.auth.method", method));
    }
    identity_attributes(outcome.principal.as_ref(), &mut attrs);
    if let Some(code) = error_code {
        attrs.push(KeyValue::new("ares.error.code", code));
    }
    // A client's error is not the server span's failure (HTTP semantic conventions).
    let failed = error_code.filter(|_| status.is_server_error());
    t.finish(format!("{} {route}", method_name(method)), attrs, failed);
}

/// A method as HTTP semantic conventions name it (`_OTHER` for a method the gateway refuses).
fn method_name(m: &Method) -> &'static str {
    FORWARDED_METHODS
        .iter()
        .zip(FORWARDED_ALLOW.split(", "))
        .find(|(known, _)| *known == m)
        .map_or("_OTHER", |(_, name)| name)
}

/// Who the request ran as: tenant, key and user ids (ids only: no email, no secret).
fn identity_attributes(principal: Option<&Principal>, attrs: &mut Vec<KeyValue>) {
    match principal.map(Principal::identity) {
        Some(Identity::ApiKey { tenant, key }) => {
            attrs.push(telemetry::attr("ares.tenant.id", tenant.id.clone()));
            attrs.push(telemetry::attr("ares.tenant.tier", tenant.tier.clone()));
            attrs.push(telemetry::attr("ares.api_key.id", key.id.clone()));
        }
        Some(Identity::User(claims)) => {
            attrs.push(telemetry::attr("enduser.id", claims.sub.clone()));
        }
        _ => {}
    }
}

async fn handle_inner<'r>(
    scope: &RequestScope<'r>,
    // The request's URI, cloned once by `handle` (the request itself is consumed below).
    uri: &http::Uri,
    // The client connection's own upstream connections (HTTP/1 clients).
    own: Option<&ConnUpstreams>,
    req: Request<RequestBody>,
    outcome: &mut Outcome<'r>,
    trace: Option<&RequestTrace>,
) -> Result<Response<Body>, GatewayError> {
    let RequestScope { state, snap, ctx } = *scope;
    // 1. ctx was built by `handle`; during a drain new requests are refused.
    if state.is_draining() {
        return Err(GatewayError::ShuttingDown);
    }
    // RFC 9110's methods and PATCH, less CONNECT and TRACE: nothing else reaches a handler or
    // the upstream (an extension method, or a method token in another case, is 405).
    if !FORWARDED_METHODS.contains(req.method()) {
        return Err(GatewayError::MethodNotAllowed(FORWARDED_ALLOW));
    }
    // Preflights are answered before any credential is asked for.
    let cors_origins = &snap.config.server.cors_origins;
    if !cors_origins.is_empty() && cors::is_preflight(req.method(), req.headers()) {
        return Ok(cors::preflight(
            cors::allowed_origin(req.headers(), cors_origins).as_ref(),
            &snap.config.cors.allow_headers,
            snap.config.auth.cookies,
        ));
    }

    // 2. route
    let path = route::normalize(uri.path()).map_err(|e| GatewayError::invalid(e.to_string()))?;
    let routes = &snap.config.routes;
    let route = routes.classify(&path).ok_or(GatewayError::NotFound)?;
    if routes.is_ambiguous(&path, route) {
        return Err(GatewayError::invalid(
            "the path reads as another route when case or ;parameters are ignored",
        ));
    }
    outcome.route = Some(route);
    outcome.bearer = route.auth.is_bearer();
    // Admin routes only from the allowed networks, before the secret is even looked at.
    let admin_nets = &snap.config.server.admin_allow_cidrs;
    if route.auth == AuthKind::Admin
        && !admin_nets.is_empty()
        && !admin_nets
            .iter()
            .any(|n| n.contains(&ctx.client_ip.to_canonical()))
    {
        tracing::info!(client = %ctx.client_ip, reason = "admin_network", "admin request refused");
        return Err(GatewayError::Forbidden);
    }

    // 3. gateway-served routes. The admin API serves exactly the paths it implements; the
    // others go to the upstream's own admin routes, after the same admin check.
    let route = match &route.target {
        Target::Handler(Handler::Admin) if !api::admin::serves(&path) => {
            let upstream_route = snap.config.routes.classify_upstream(&path);
            // Never with weaker authentication than the admin secret.
            let route = upstream_route
                .filter(|r| r.auth == AuthKind::Admin)
                .ok_or(GatewayError::NotFound)?;
            outcome.route = Some(route);
            route
        }
        Target::Handler(handler) => {
            return match handler {
                Handler::Health => api::health(state, req.method(), &path).await,
                Handler::Auth => api::auth::handle(scope, req, &path).await,
                Handler::Admin => {
                    let revocation = auth::Revocation::Now;
                    let creds = state.credentials(snap);
                    let principal =
                        auth::authenticate(route, req.headers(), None, revocation, &creds).await?;
                    outcome.auth_method = principal.auth_method();
                    api::admin::handle(scope, &principal, req, &path).await
                }
            };
        }
        Target::Upstream(_) => route,
    };
    let Target::Upstream(upstream) = &route.target else {
        return Err(GatewayError::NotFound);
    };
    // A page on another origin must not ride a user's WebSocket: browsers send `Origin` on
    // every upgrade and CORS does not apply to them, so the gateway checks it here.
    let origins = &snap.config.server.cors_origins;
    if ctx.websocket_upgrade
        && route.websocket
        && !origins.is_empty()
        && req.headers().contains_key(http::header::ORIGIN)
        && cors::allowed_origin(req.headers(), origins).is_none()
    {
        return Err(GatewayError::OriginNotAllowed);
    }
    // 4, 5. principal (an access token's revocation is checked with its limits, in step 6)
    let span = trace.and_then(|t| t.phase("authenticate", SpanKind::Internal, true));
    let principal = principal(scope, route, &req, uri).await;
    if let Some(span) = span {
        let mut attrs = Vec::new();
        if let Ok(p) = &principal {
            attrs.extend(
                p.auth_method()
                    .map(|m| KeyValue::new("ares.auth.method", m)),
            );
            identity_attributes(Some(p), &mut attrs);
        }
        span.end(attrs, principal.as_ref().err().map(|e| e.parts().2));
    }
    let principal = principal?;
    outcome.auth_method = principal.auth_method();
    outcome.principal = Some(principal.clone());
    // Scopes are an API key's: a user's token is never refused here, so a revoked one is
    // refused as revoked, in step 6.
    auth::authorize(route, &principal)?;

    // 6. limits (and a user's token revocation, in the same store round trip)
    let policy = snap.limit_policy(route.failure_policy);
    let span = trace.and_then(|t| t.phase("rate_limit", SpanKind::Internal, true));
    let limit_headers = check_limits(state, snap, &principal, policy).await;
    if let Some(span) = span {
        let remaining = limit_headers
            .as_ref()
            .ok()
            .and_then(|h| h.as_ref())
            .map(|h| h.remaining);
        let attrs = remaining.map(|r| KeyValue::new("ares.ratelimit.remaining", r as i64));
        span.end(
            attrs.into_iter().collect(),
            limit_headers.as_ref().err().map(|e| e.parts().2),
        );
    }
    let limit_headers = limit_headers?;

    // 7. rewrite
    let forward_path = route.forward_path(&path);
    // HTTP/2 clients multiplex: their requests share the pool, not one bound connection.
    let own = own.filter(|_| req.version() <= http::Version::HTTP_11);
    let (mut parts, body) = req.into_parts();
    // A body still to come must keep a minimum rate (408 REQUEST_TIMEOUT otherwise).
    let server = &snap.config.server;
    let body = body::MinRate::new(
        body,
        server.request_body_grace,
        server.request_body_min_rate,
    );
    // A WebSocket upgrade the route allows: keep the client's side of the upgrade.
    let client_upgrade = if route.websocket && ctx.websocket_upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let protocol_bearer =
        client_upgrade.is_some() && proxy::strip_protocol_token(&mut parts.headers);
    let minted = match route.credential {
        Credential::Mint => snap.minters.get(upstream.index).and_then(|m| {
            m.as_ref()
                .and_then(|m| m.authorization(principal.identity(), unix_now()))
        }),
        Credential::None | Credential::Passthrough => None,
    };
    let upstream_req = proxy::rewrite_request(
        parts,
        body,
        route,
        &principal,
        ctx,
        &forward_path,
        snap.config.server.request_body_limit,
        minted,
    )?;

    // 8. forward
    let client = snap
        .clients
        .get(upstream.index)
        .ok_or_else(|| GatewayError::Internal("upstream client missing".into()))?;
    let forward_started = Instant::now();
    // An upgrade takes its upstream connection over: that one comes from the pool.
    let own = own.filter(|_| client_upgrade.is_none());
    let span = trace.and_then(|t| t.phase("upstream", SpanKind::Client, false));
    let mut upstream_req = upstream_req;
    if let Some(span) = &span {
        upstream_req
            .headers_mut()
            .insert(&proxy::TRACEPARENT, span.traceparent());
    }
    let upstream_resp = proxy::forward(client, own, upstream_req).await;
    crate::metrics::get().upstream(&upstream.label, forward_started.elapsed());
    if let Some(span) = span {
        let mut attrs = vec![
            telemetry::attr("ares.upstream", upstream.label.as_str().to_string()),
            telemetry::attr("url.path", forward_path.to_string()),
        ];
        let failed = match &upstream_resp {
            Ok(r) => {
                attrs.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(r.status().as_u16()),
                ));
                r.status().is_server_error().then_some("UPSTREAM_ERROR")
            }
            Err(e) => Some(e.parts().2),
        };
        span.end(attrs, failed);
    }
    let mut upstream_resp = upstream_resp?;
    outcome.upstream_status = Some(upstream_resp.status().as_u16());
    if upstream_resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let client_upgrade = client_upgrade.ok_or_else(|| {
            GatewayError::UpstreamUnavailable("upstream switched protocols unasked".into())
        })?;
        let upstream_upgrade = hyper::upgrade::on(&mut upstream_resp);
        proxy::spawn_tunnel(
            client_upgrade,
            upstream_upgrade,
            snap.config.server.websocket_idle_timeout,
        );
        let mut resp = proxy::switching_protocols(upstream_resp);
        if protocol_bearer
            && !resp
                .headers()
                .contains_key(http::header::SEC_WEBSOCKET_PROTOCOL)
        {
            resp.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static("bearer"),
            );
        }
        return Ok(resp);
    }

    // 9. response
    debit_tokens(state, &principal, upstream_resp.headers());
    let mut resp = proxy::rewrite_response(upstream_resp, upstream);
    if let Identity::ApiKey { .. } = principal.identity() {
        // Streams report their token use in trailers, once the last frame is known.
        let (parts, body) = resp.into_parts();
        let (state, principal) = (state.clone(), principal.clone());
        let metered = body::OnTrailers::new(body, move |trailers| {
            debit_tokens(&state, &principal, trailers)
        });
        resp = Response::from_parts(parts, metered.boxed_unsync());
    }
    if let Some(h) = limit_headers {
        h.apply(resp.headers_mut());
    }
    Ok(resp)
}

/// Step 4: who sends the request. An address that keeps sending refused API keys is refused
/// before any lookup, and each refused key counts against it (never against a tenant).
async fn principal(
    scope: &RequestScope<'_>,
    route: &Route,
    req: &Request<RequestBody>,
    uri: &http::Uri,
) -> Result<Principal, GatewayError> {
    let RequestScope { state, snap, ctx } = *scope;
    let auth_started = Instant::now();
    let revocation = auth::Revocation::WithLimits;
    let creds = state.credentials(snap);
    let key_route = route.auth == AuthKind::ApiKey;
    if key_route {
        state.limiter.check_key_failures(ctx.client_ip)?;
    }
    let principal = auth::authenticate(route, req.headers(), uri.query(), revocation, &creds).await;
    crate::metrics::get().auth(auth_started.elapsed());
    match principal {
        Err(GatewayError::InvalidApiKey) if key_route => {
            let plan = &snap.config.limits.api_key_failures_per_ip;
            let over = state.limiter.record_key_failure(ctx.client_ip, plan).await;
            Err(over.unwrap_or(GatewayError::InvalidApiKey))
        }
        p => p,
    }
}

/// Request limits for the principal's scope and, for tenants, the token budget: one decision
/// (one store round trip), so nothing is consumed when any of them refuses. For a user's access
/// token the same round trip checks its revocation.
/// Of two decisions, the refusing one, else the one with less room left.
fn tighter(
    a: Option<crate::ratelimit::Decision>,
    b: Option<crate::ratelimit::Decision>,
) -> Option<crate::ratelimit::Decision> {
    match (a, b) {
        (Some(a), Some(b)) => {
            if !b.allowed() || b.headers.remaining < a.headers.remaining {
                Some(b)
            } else {
                Some(a)
            }
        }
        (a, b) => a.or(b),
    }
}

async fn check_limits(
    state: &AppState,
    snap: &Snapshot,
    principal: &Principal,
    policy: LimitPolicy,
) -> Result<Option<RateLimitHeaders>, GatewayError> {
    let limits = &snap.config.limits;
    let decision = match principal.identity() {
        Identity::ApiKey { tenant, key } => {
            let tier = limits.plans.get(&tenant.tier).cloned().unwrap_or_default();
            let plan = tenant.limits.apply(&tier);
            let scope = Scope::Tenant(&tenant.id);
            let decision = state.limiter.admit(scope, &plan, policy).await?;
            if key.limits.is_empty() || decision.as_ref().and_then(limiter::refusal).is_some() {
                decision
            } else {
                // The key's own limits, after its tenant's admitted the request (a key without
                // limits costs nothing more).
                let plan = key.limits.apply(&crate::ratelimit::Plan::default());
                let own = state
                    .limiter
                    .admit(Scope::ApiKey(&key.id), &plan, policy)
                    .await?;
                tighter(decision, own)
            }
        }
        Identity::User(claims) => {
            // Users have request limits only; a token budget is a tenant's.
            let mut plan = limits.user.clone();
            plan.tokens_per_month = None;
            let token = crate::store::TokenRef {
                subject: &claims.sub,
                jti: claims.jti.as_deref(),
                issued_at: claims.iat,
            };
            state.limiter.admit_user(token, &plan, policy).await?
        }
        Identity::Admin { .. } | Identity::Anonymous => return Ok(None),
    };
    match decision.as_ref().and_then(limiter::refusal) {
        Some(refused) => Err(refused),
        None => Ok(decision.map(|d| d.headers)),
    }
}

/// Debit the tenant's monthly token budget from the upstream's usage headers (or trailers),
/// off the response path.
fn debit_tokens(state: &Arc<AppState>, principal: &Principal, headers: &http::HeaderMap) {
    let Identity::ApiKey { tenant, .. } = principal.identity() else {
        return;
    };
    let read = |name: &str| -> u64 {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let n = read("x-input-tokens").saturating_add(read("x-output-tokens"));
    if n == 0 {
        return;
    }
    let (state, tenant) = (state.clone(), tenant.clone());
    tokio::spawn(async move {
        let debited = state.limiter.debit_tokens(Scope::Tenant(&tenant.id), n);
        if let Err(e) = debited.await {
            tracing::warn!(error = %e, tokens = n, "token debit lost: store unavailable");
        }
    });
}

/// A declared `Content-Length`, for the access log (-1: none, e.g. a stream).
fn content_length(h: &http::HeaderMap) -> i64 {
    h.get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

fn resp_bytes(resp: &Response<Body>) -> i64 {
    use http_body::Body as _;
    match resp.body().size_hint().exact() {
        Some(n) => n as i64,
        None => content_length(resp.headers()),
    }
}

#[cfg(test)]
mod tests {
    //! The pipeline driven without a socket: built requests, one step's status each.
    use super::*;
    use crate::config::Config;
    use crate::store::MemoryStore;
    use bytes::Bytes;

    const ADMIN: &str = "pipeline-admin-secret-0123456789";

    fn state(env: &[(&str, &str)]) -> Arc<AppState> {
        let yaml = include_str!("../gateway.yaml");
        let mut vars: Vec<(String, String)> = vec![
            ("ARES_ADMIN_SECRET".into(), ADMIN.into()),
            (
                "ARES_JWT_SECRET".into(),
                "pipeline-jwt-secret-0123456789abcdef".into(),
            ),
            // Nothing listens there: proxied requests that get past every check are 502.
            ("ARES_UPSTREAM".into(), "http://127.0.0.1:9".into()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let cfg = Config::from_yaml(yaml, &move |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .unwrap();
        AppState::new(cfg, Arc::new(MemoryStore::new())).unwrap()
    }

    fn conn() -> ConnInfo {
        ConnInfo {
            peer: proxy::Peer::new(std::net::SocketAddr::from(([192, 0, 2, 7], 40000))),
            tls: false,
            framing: None,
            upstreams: None,
        }
    }

    async fn call(
        state: &Arc<AppState>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gateway.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(RequestBody::from(Bytes::from(body.to_string())))
            .unwrap();
        let resp = handle(state.clone(), conn(), req).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    async fn provision(state: &Arc<AppState>) -> (String, String) {
        let (status, v) = call(
            state,
            "POST",
            "/api/admin/provision-client",
            &[("x-admin-secret", ADMIN)],
            r#"{"name":"Acme","tier":"pro","api_key_name":"k"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        (
            v["tenant_id"].as_str().unwrap().to_string(),
            v["raw_api_key"].as_str().unwrap().to_string(),
        )
    }

    #[tokio::test]
    async fn an_unknown_path_is_404_and_a_climbing_one_400() {
        let s = state(&[]);
        let (status, v) = call(&s, "GET", "/nowhere", &[], "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(v["code"], "NOT_FOUND");
        let (status, _) = call(&s, "GET", "/api/../../etc", &[], "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn a_missing_or_wrong_credential_is_401_by_route() {
        let s = state(&[]);
        let (status, v) = call(&s, "GET", "/api/chat", &[], "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(v["code"], "AUTH_MISSING_CREDENTIALS");
        let bad = [("authorization", "Bearer ares_not-a-key")];
        let (status, v) = call(&s, "POST", "/v1/chat", &bad, "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(v["code"], "AUTH_INVALID_API_KEY");
        let wrong = [("x-admin-secret", "not-the-admin-secret-0123")];
        let (status, v) = call(&s, "GET", "/api/admin/tenants", &wrong, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(v["code"], "AUTH_INVALID_ADMIN_SECRET");
    }

    #[tokio::test]
    async fn a_key_without_the_routes_scope_is_403() {
        let s = state(&[]);
        let (tenant, _) = provision(&s).await;
        let (status, v) = call(
            &s,
            "POST",
            &format!("/api/admin/tenants/{tenant}/api-keys"),
            &[("x-admin-secret", ADMIN)],
            r#"{"name":"chat only","scopes":["chat"]}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let key = format!("Bearer {}", v["raw_key"].as_str().unwrap());
        let (status, v) = call(
            &s,
            "POST",
            "/v1/usage/events",
            &[("authorization", &key)],
            "{}",
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(v["code"], "AUTH_FORBIDDEN");
        // Its own scope passes every check and reaches the (absent) upstream.
        let (status, v) = call(&s, "POST", "/v1/chat", &[("authorization", &key)], "{}").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    }

    #[tokio::test]
    async fn a_user_past_the_limit_is_429_and_a_large_body_413() {
        let s = state(&[("ARES_USER_REQUESTS_PER_MINUTE", "1")]);
        let (status, _) = call(
            &s,
            "POST",
            "/api/auth/register",
            &[],
            r#"{"email":"p@example.com","password":"your-secure-password","name":"P"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, v) = call(
            &s,
            "POST",
            "/api/auth/login",
            &[],
            r#"{"email":"p@example.com","password":"your-secure-password"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let token = format!("Bearer {}", v["access_token"].as_str().unwrap());
        let auth = [("authorization", token.as_str())];
        // Too large by its declared length: refused before anything is forwarded (and counted).
        let big = [
            ("authorization", token.as_str()),
            ("content-length", "20000000"),
        ];
        let mut req = Request::builder()
            .method("POST")
            .uri("/api/chat")
            .header("host", "gateway.test");
        for (k, v) in big {
            req = req.header(k, v);
        }
        let req = req.body(RequestBody::from(Bytes::new())).unwrap();
        let resp = handle(s.clone(), conn(), req).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // That one was admitted (limits come before the rewrite); the next is over the limit.
        let (status, v) = call(&s, "GET", "/api/chat", &auth, "").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(v["code"], "RATE_LIMIT_EXCEEDED");
    }
}
