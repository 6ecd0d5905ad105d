//! What the upstream receives: the rewritten target, `Host`, the identity headers the gateway
//! vouches for (only for an [`Admitted`] request), forwarding headers and a bounded body.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Limited};

use crate::auth::Identity;
use crate::body::{Body, BoxError};
use crate::error::GatewayError;
use crate::limiter::Admitted;
use crate::route::Upstream;
use crate::route::{Credential, Route};

use super::hygiene::*;

/// Build the upstream request: rewritten path, hygiene, identity headers, bounded body.
#[allow(clippy::too_many_arguments)]
pub fn rewrite_request<B>(
    mut parts: Parts,
    body: B,
    route: &Route,
    admitted: &Admitted,
    ctx: &RequestContext,
    forward_path: &str,
    body_limit: u64,
    // `Bearer <token>` minted for the upstream, on `Credential::Mint` routes.
    minted: Option<HeaderValue>,
) -> Result<Request<Body>, GatewayError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(up) = route_upstream(route) else {
        return Err(GatewayError::Internal("route has no upstream".into()));
    };
    if let Some(value) = parts.headers.get(header::CONTENT_LENGTH) {
        // hyper read it as decimal (it refuses anything else); forward that reading, not the
        // client's spelling: an upstream reading `010` as octal would frame the body apart.
        let len = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(len) = len {
            if len > body_limit {
                return Err(GatewayError::PayloadTooLarge);
            }
            if value.as_bytes() != itoa::Buffer::new().format(len).as_bytes() {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
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
    match route.credential {
        Credential::Passthrough => {}
        Credential::None => {
            h.remove(header::AUTHORIZATION);
            h.remove(&X_ADMIN_SECRET);
        }
        Credential::Mint => {
            h.remove(&X_ADMIN_SECRET);
            match minted {
                Some(token) => h.insert(header::AUTHORIZATION, token),
                None => h.remove(header::AUTHORIZATION),
            };
        }
    }
    if route.websocket && ctx.websocket_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    match admitted.identity() {
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

pub(crate) fn insert_text(h: &mut HeaderMap, name: &HeaderName, value: &str) {
    // Values come from our store or verified claims and were checked printable; a value that
    // is still not a valid header is left out rather than forwarded mangled.
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

pub(crate) fn strip_query_token(query: &str, enabled: bool) -> std::borrow::Cow<'_, str> {
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
