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
use crate::auth::{self, Identity, Verified};
use crate::body::{self, Body, RequestBody};
use crate::cors;
use crate::error::{ErrorContext, GatewayError};
use crate::limiter::{Admitted, Scope};
use crate::proxy::conn_upstreams::ConnUpstreams;
use crate::proxy::{self, X_REQUEST_ID};
use crate::route::{self, AuthKind, Credential, Handler, Route, Target};
use crate::state::{AppState, RequestScope};
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
    principal: Option<Verified>,
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
    let too_long = req
        .uri()
        .path_and_query()
        .is_some_and(|pq| pq.as_str().len() > snap.config.server.max_request_target_bytes);
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
        Ok(()) if too_long => Err(GatewayError::UriTooLong),
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
            if err.is_auth_failure() {
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
    if framing.is_err() || too_long || resp.status() == StatusCode::REQUEST_TIMEOUT {
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
        subject = outcome.principal.as_ref().map_or("-", Verified::subject),
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
    identity_attributes(
        outcome.principal.as_ref().map(Verified::identity),
        &mut attrs,
    );
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
fn identity_attributes(identity: Option<&Identity>, attrs: &mut Vec<KeyValue>) {
    match identity {
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
    let (path, route) = classify(snap, ctx, req.method(), uri)?;
    outcome.route = Some(route);
    outcome.bearer = route.auth.is_bearer();

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
                Handler::WellKnown => {
                    let tls = snap.config.server.tls.is_some();
                    api::well_known::handle(&snap.jwt, tls, &req, &path)
                }
                Handler::Auth => api::auth::handle(scope, req, &path).await,
                Handler::Admin => {
                    let creds = state.credentials(snap);
                    let principal = admin_checked(
                        scope,
                        auth::authenticate_now(route, req.headers(), None, &creds),
                    )
                    .await?;
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
    websocket_origin(snap, ctx, route, &req)?;

    // 4, 5. who (an access token's revocation is checked with its limits, in step 6)
    // (Each future is awaited where it is made: one moved into a helper first would grow the
    // request's state machine and its copies: measured, +1.5% instructions per request.)
    let span = phase(trace, "authenticate", SpanKind::Internal);
    let caller = principal(scope, route, &req, uri).await;
    end_phase(span, &caller, |caller, attrs| {
        if let Some(caller) = caller {
            attrs.extend(
                caller
                    .auth_method()
                    .map(|m| KeyValue::new("ares.auth.method", m)),
            );
            identity_attributes(Some(caller.identity()), attrs);
        }
        None
    });
    let caller = caller?;
    outcome.auth_method = caller.auth_method();
    outcome.principal = Some(caller.clone());
    // Scopes are an API key's: a user's token is never refused here, so a revoked one is
    // refused as revoked, in step 6.
    auth::authorize(route, &caller)?;

    // 6. limits (and a user's token revocation, in the same store round trip)
    let policy = snap.limit_policy(route.failure_policy);
    let limits = &snap.config.limits;
    let span = phase(trace, "rate_limit", SpanKind::Internal);
    let admitted = state.limiter.admit_principal(caller, limits, policy).await;
    end_phase(span, &admitted, |admitted, attrs| {
        if let Some(h) = admitted.and_then(Admitted::headers) {
            attrs.push(KeyValue::new(
                "ares.ratelimit.remaining",
                h.remaining as i64,
            ));
        }
        None
    });
    let admitted = admitted?;

    // 7. rewrite
    let forward_path = route.forward_path(&path);
    // HTTP/2 clients multiplex: their requests share the pool, not one bound connection.
    let own = own.filter(|_| req.version() <= http::Version::HTTP_11);
    let rewritten = rewrite(scope, route, upstream, req, &forward_path, &admitted)?;

    // 8. forward (an upgrade takes its upstream connection over: that one comes from the pool)
    let own = own.filter(|_| rewritten.upgrade.is_none());
    let client = snap
        .clients
        .get(upstream.index)
        .ok_or_else(|| GatewayError::Internal("upstream client missing".into()))?;
    let mut request = rewritten.request;
    let started = Instant::now();
    let span = trace.and_then(|t| t.phase("upstream", SpanKind::Client, false));
    if let Some(span) = &span {
        request
            .headers_mut()
            .insert(&proxy::TRACEPARENT, span.traceparent());
    }
    let upstream_resp = proxy::forward(client, own, request).await;
    crate::metrics::get().upstream(&upstream.label, started.elapsed());
    end_phase(span, &upstream_resp, |r, attrs| {
        attrs.push(telemetry::attr(
            "ares.upstream",
            upstream.label.as_str().to_string(),
        ));
        attrs.push(telemetry::attr("url.path", forward_path.to_string()));
        let status = r?.status();
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        status.is_server_error().then_some("UPSTREAM_ERROR")
    });
    let upstream_resp = upstream_resp?;
    outcome.upstream_status = Some(upstream_resp.status().as_u16());
    if upstream_resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return tunnel(
            snap,
            rewritten.upgrade,
            rewritten.protocol_bearer,
            upstream_resp,
        );
    }

    // 9. response
    Ok(respond(state, &admitted, upstream, upstream_resp))
}

/// A request rewritten for its upstream, and the client's side of an upgrade the route allows.
struct Rewritten {
    request: Request<Body>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The token came in `Sec-WebSocket-Protocol: bearer, <token>`: the answer names `bearer`.
    protocol_bearer: bool,
}

/// Step 7: the request as the upstream receives it (path, identity headers, `Authorization` by
/// the route's credential: none, the client's own, or minted), its body bounded.
fn rewrite(
    scope: &RequestScope<'_>,
    route: &Route,
    upstream: &crate::route::Upstream,
    req: Request<RequestBody>,
    forward_path: &str,
    admitted: &Admitted,
) -> Result<Rewritten, GatewayError> {
    let RequestScope { snap, ctx, .. } = *scope;
    let (mut parts, body) = req.into_parts();
    // A body still to come must keep a minimum rate (408 REQUEST_TIMEOUT otherwise).
    let server = &snap.config.server;
    let body = body::MinRate::new(
        body,
        server.request_body_grace,
        server.request_body_min_rate,
    );
    // A WebSocket upgrade the route allows: keep the client's side of the upgrade.
    let upgrade = if route.websocket && ctx.websocket_upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let protocol_bearer = upgrade.is_some() && proxy::strip_protocol_token(&mut parts.headers);
    let minted = match route.credential {
        Credential::Mint => snap.minters.get(upstream.index).and_then(|m| {
            m.as_ref()
                .and_then(|m| m.authorization(admitted.identity(), unix_now()))
        }),
        Credential::None | Credential::Passthrough => None,
    };
    let request = proxy::rewrite_request(
        parts,
        body,
        route,
        admitted,
        ctx,
        forward_path,
        server.request_body_limit,
        minted,
    )?;
    Ok(Rewritten {
        request,
        upgrade,
        protocol_bearer,
    })
}

/// A 101 from the upstream: the two upgraded connections become a byte tunnel.
fn tunnel(
    snap: &crate::state::Snapshot,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    protocol_bearer: bool,
    mut upstream_resp: Response<hyper::body::Incoming>,
) -> Result<Response<Body>, GatewayError> {
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
    Ok(resp)
}

/// Step 9: the upstream's answer for the client: hop-by-hop headers dropped, `RateLimit-*`
/// added, the tenant's token use debited (from headers now, from trailers when streamed).
fn respond(
    state: &Arc<AppState>,
    admitted: &Admitted,
    upstream: &crate::route::Upstream,
    upstream_resp: Response<hyper::body::Incoming>,
) -> Response<Body> {
    state
        .limiter
        .debit_response(admitted.identity(), upstream_resp.headers());
    let mut resp = proxy::rewrite_response(upstream_resp, upstream);
    if let Identity::ApiKey { .. } = admitted.identity() {
        // Streams report their token use in trailers, once the last frame is known.
        let (parts, body) = resp.into_parts();
        let (limiter, identity) = (state.limiter.clone(), admitted.identity().clone());
        let metered = body::OnTrailers::new(body, move |trailers| {
            limiter.debit_response(&identity, trailers)
        });
        resp = Response::from_parts(parts, metered.boxed_unsync());
    }
    if let Some(h) = admitted.headers() {
        h.apply(resp.headers_mut());
    }
    resp
}

/// Step 2: the normalised path and the route it lands on (400 for a path that reads as
/// another route, 404 for none, 405 for a method the route does not take); admin routes only
/// from the allowed networks, before the secret is even looked at.
fn classify<'r, 'u>(
    snap: &'r crate::state::Snapshot,
    ctx: &proxy::RequestContext,
    method: &Method,
    uri: &'u http::Uri,
) -> Result<(std::borrow::Cow<'u, str>, &'r Route), GatewayError> {
    let path = route::normalize(uri.path()).map_err(|e| GatewayError::invalid(e.to_string()))?;
    let routes = &snap.config.routes;
    let route = routes.classify(&path).ok_or(GatewayError::NotFound)?;
    route
        .allows(method)
        .map_err(GatewayError::MethodNotAllowed)?;
    if routes.is_ambiguous(&path, route) {
        return Err(GatewayError::invalid(
            "the path reads as another route when normalised further (SECURITY.md, path readings)",
        ));
    }
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
    Ok((path, route))
}

/// A page on another origin must not ride a user's WebSocket: browsers send `Origin` on every
/// upgrade and CORS does not apply to them, so the gateway checks it here.
fn websocket_origin(
    snap: &crate::state::Snapshot,
    ctx: &proxy::RequestContext,
    route: &Route,
    req: &Request<RequestBody>,
) -> Result<(), GatewayError> {
    let origins = &snap.config.server.cors_origins;
    if ctx.websocket_upgrade
        && route.websocket
        && !origins.is_empty()
        && req.headers().contains_key(http::header::ORIGIN)
        && cors::allowed_origin(req.headers(), origins).is_none()
    {
        return Err(GatewayError::OriginNotAllowed);
    }
    Ok(())
}

/// Step 4: who sends the request. An address that keeps sending refused API keys is refused
/// before any lookup, and each refused key counts against it (never against a tenant).
async fn principal(
    scope: &RequestScope<'_>,
    route: &Route,
    req: &Request<RequestBody>,
    uri: &http::Uri,
) -> Result<Verified, GatewayError> {
    let RequestScope { state, snap, ctx } = *scope;
    let auth_started = Instant::now();
    let creds = state.credentials(snap);
    let key_route = route.auth == AuthKind::ApiKey;
    if key_route {
        if let Err(blocked) = state.limiter.check_key_failures(ctx.client_ip) {
            // A key this replica already holds as valid still passes from a blocked address:
            // a neighbour guessing keys behind the same NAT never locks a tenant out.
            let known = auth::bearer(req.headers())
                .ok()
                .flatten()
                .is_some_and(|t| creds.keys.key(&auth::api_key::hash(t)).is_some());
            if !known {
                return Err(blocked);
            }
        }
    }
    // Each future made where it is awaited (a future bound to a local first is moved: memcpy
    // of its state on every request, measured).
    let principal = if route.auth == AuthKind::Admin {
        let check = auth::authenticate(route, req.headers(), uri.query(), &creds);
        admin_checked(scope, check).await
    } else {
        auth::authenticate(route, req.headers(), uri.query(), &creds).await
    };
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

/// An admin-secret check as a guarded attempt (`Limiter::attempt`): it takes its place in the
/// client address's ceiling of wrong admin secrets first (429 past it, 503 when the store cannot
/// count it), and anything but a wrong secret gives the place back.
async fn admin_checked<T>(
    scope: &RequestScope<'_>,
    check: impl std::future::Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    let plan = &scope.snap.config.limits.admin_failures_per_ip;
    let ceiling = [(Scope::AdminFailuresIp(scope.ctx.client_ip), plan)];
    let attempt = scope.state.limiter.attempt(&ceiling).await?;
    let result = check.await;
    if matches!(result, Err(GatewayError::InvalidAdminSecret)) {
        attempt.failed();
    } else {
        attempt.succeeded().await;
    }
    result
}

/// A step's span, when the request is sampled (store calls made meanwhile are its children).
fn phase(
    trace: Option<&RequestTrace>,
    name: &'static str,
    kind: SpanKind,
) -> Option<telemetry::Phase> {
    trace.and_then(|t| t.phase(name, kind, true))
}

/// End a step's span with the attributes `describe` writes (given the step's value, `None`
/// when it failed), failed with the error's code, or with the failure `describe` sees in a
/// success (an upstream's 5xx).
fn end_phase<T>(
    span: Option<telemetry::Phase>,
    result: &Result<T, GatewayError>,
    describe: impl FnOnce(Option<&T>, &mut Vec<KeyValue>) -> Option<&'static str>,
) {
    let Some(span) = span else {
        return;
    };
    let mut attrs = Vec::new();
    let seen = describe(result.as_ref().ok(), &mut attrs);
    let failed = match result {
        Ok(_) => seen,
        Err(e) => Some(e.parts().2),
    };
    span.end(attrs, failed);
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
mod tests;
