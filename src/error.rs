//! The one error type of the request path, and the one place that turns it into a response.
//!
//! Handlers and pipeline steps return `GatewayError`; only [`GatewayError::into_response`] picks
//! the status, the stable client-facing message and the code of CONTRACT.md section 9. Causes
//! (I/O errors, store errors) are kept for the log line and never reach the body.

use std::time::Duration;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::body::{self, Body};
use crate::ratelimit::{RateLimitHeaders, Window};

/// Everything the gateway itself can refuse a request with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The message names the field or rule; it is built by our code, never from client bytes
    /// that could carry a secret.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("missing credentials")]
    MissingCredentials,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("invalid api key")]
    InvalidApiKey,
    #[error("invalid admin secret")]
    InvalidAdminSecret,
    #[error("invalid login credentials")]
    InvalidCredentials,
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("forbidden")]
    Forbidden,
    #[error("tenant suspended")]
    TenantSuspended,
    /// A browser page on an origin not in `cors_origins` tried a WebSocket upgrade.
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    /// With the methods the resource takes (the response's `Allow`).
    MethodNotAllowed(&'static str),
    #[error("email taken")]
    EmailTaken,
    #[error("payload too large")]
    PayloadTooLarge,
    /// A gateway-served endpoint's body did not arrive whole within its deadline.
    #[error("request body timed out")]
    BodyTimeout,
    /// The request target (path and query) is longer than `server.max_request_target_bytes`.
    #[error("request target too long")]
    UriTooLong,
    /// A gateway-served endpoint's body declared a type other than JSON.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// A request-count window refused the request.
    #[error("rate limited ({window:?})")]
    RateLimited {
        window: Window,
        headers: RateLimitHeaders,
    },
    /// The tenant's monthly token budget is spent.
    #[error("token quota exceeded")]
    TokenQuotaExceeded { retry_after: Duration },
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream timeout")]
    UpstreamTimeout,
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    #[error("shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the response needs to know about where the error happened.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorContext {
    /// The route takes `Authorization: Bearer`, so its 401s carry `WWW-Authenticate: Bearer`.
    pub bearer: bool,
}

impl GatewayError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        GatewayError::InvalidInput(msg.into())
    }

    /// A refused credential (the `AUTH_*` codes): counted in `ares_gateway_auth_failures_total`.
    pub fn is_auth_failure(&self) -> bool {
        use GatewayError::*;
        matches!(
            self,
            MissingCredentials
                | InvalidToken
                | InvalidApiKey
                | InvalidAdminSecret
                | InvalidCredentials
                | InvalidRefreshToken
                | Forbidden
                | OriginNotAllowed
                | TenantSuspended
        )
    }

    /// Status, stable message and code of CONTRACT.md section 9.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use GatewayError::*;
        match self {
            InvalidInput(_) => (StatusCode::BAD_REQUEST, "Invalid input", "INVALID_INPUT"),
            MissingCredentials => (
                StatusCode::UNAUTHORIZED,
                "Missing credentials",
                "AUTH_MISSING_CREDENTIALS",
            ),
            InvalidToken => (
                StatusCode::UNAUTHORIZED,
                "Invalid or expired token",
                "AUTH_INVALID_TOKEN",
            ),
            InvalidApiKey => (
                StatusCode::UNAUTHORIZED,
                "Invalid API key",
                "AUTH_INVALID_API_KEY",
            ),
            InvalidAdminSecret => (
                StatusCode::UNAUTHORIZED,
                "Invalid admin secret",
                "AUTH_INVALID_ADMIN_SECRET",
            ),
            InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                "Invalid email or password",
                "AUTH_INVALID_CREDENTIALS",
            ),
            InvalidRefreshToken => (
                StatusCode::UNAUTHORIZED,
                "Invalid or expired refresh token",
                "AUTH_INVALID_REFRESH_TOKEN",
            ),
            Forbidden => (
                StatusCode::FORBIDDEN,
                "Insufficient permissions",
                "AUTH_FORBIDDEN",
            ),
            OriginNotAllowed => (
                StatusCode::FORBIDDEN,
                "Origin not allowed",
                "AUTH_FORBIDDEN",
            ),
            TenantSuspended => (
                StatusCode::FORBIDDEN,
                "Tenant is suspended",
                "AUTH_TENANT_SUSPENDED",
            ),
            NotFound => (StatusCode::NOT_FOUND, "Not found", "NOT_FOUND"),
            MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "METHOD_NOT_ALLOWED",
            ),
            EmailTaken => (
                StatusCode::CONFLICT,
                "Email is already registered",
                "EMAIL_TAKEN",
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload too large",
                "PAYLOAD_TOO_LARGE",
            ),
            BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "Request body not received in time",
                "REQUEST_TIMEOUT",
            ),
            UriTooLong => (
                StatusCode::URI_TOO_LONG,
                "Request target too long",
                "URI_TOO_LONG",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
                "UNSUPPORTED_MEDIA_TYPE",
            ),
            RateLimited { window, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                window.exceeded_message(),
                "RATE_LIMIT_EXCEEDED",
            ),
            TokenQuotaExceeded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Monthly token quota exceeded",
                "RATE_LIMIT_EXCEEDED",
            ),
            UpstreamUnavailable(_) => (
                StatusCode::BAD_GATEWAY,
                "Upstream unavailable",
                "UPSTREAM_UNAVAILABLE",
            ),
            UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "Upstream timed out",
                "UPSTREAM_TIMEOUT",
            ),
            StoreUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                "STORE_UNAVAILABLE",
            ),
            ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Shutting down",
                "SHUTTING_DOWN",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                "INTERNAL_ERROR",
            ),
        }
    }

    /// The stable code, for logs and metrics.
    pub fn code(&self) -> &'static str {
        self.parts().2
    }

    /// The only place an error becomes a response.
    pub fn into_response(self, ctx: ErrorContext) -> Response<Body> {
        let (status, message, code) = self.parts();
        // Validation messages name the field at fault; they are ours, so they may be shown.
        let message: std::borrow::Cow<'static, str> = match &self {
            GatewayError::InvalidInput(detail) if !detail.is_empty() => detail.clone().into(),
            _ => message.into(),
        };
        let payload = serde_json::json!({ "error": message, "code": code });
        let mut resp = Response::new(body::full(payload.to_string()));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED && ctx.bearer {
            let value = match self {
                GatewayError::MissingCredentials => r#"Bearer realm="ares""#,
                _ => r#"Bearer realm="ares", error="invalid_token""#,
            };
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(value));
        }
        match &self {
            GatewayError::RateLimited { headers: rl, .. } => {
                rl.apply(headers);
                headers.insert(RETRY_AFTER, HeaderValue::from(rl.retry_after_secs()));
            }
            GatewayError::TokenQuotaExceeded { retry_after } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            }
            GatewayError::MethodNotAllowed(allow) => {
                headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

/// Why a store call failed; mapped to 503 on the request path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("conflict")]
    Conflict,
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => GatewayError::StoreUnavailable(m),
            StoreError::Conflict => GatewayError::Internal("unexpected store conflict".into()),
            StoreError::Corrupt(m) => GatewayError::Internal(format!("corrupt store record: {m}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn invalid_token_on_bearer_route_has_www_authenticate_and_contract_body() {
        let resp = GatewayError::InvalidToken.into_response(ErrorContext { bearer: true });
        assert_eq!(resp.status(), 401);
        assert!(resp.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let v = body_json(resp).await;
        assert_eq!(v["error"], "Invalid or expired token");
        assert_eq!(v["code"], "AUTH_INVALID_TOKEN");
    }

    #[tokio::test]
    async fn admin_401_has_no_bearer_challenge() {
        let resp = GatewayError::InvalidAdminSecret.into_response(ErrorContext::default());
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[tokio::test]
    async fn internal_causes_never_reach_the_body() {
        let resp = GatewayError::UpstreamUnavailable("connect 10.1.2.3:3000 refused".into())
            .into_response(ErrorContext::default());
        assert_eq!(resp.status(), 502);
        let v = body_json(resp).await;
        assert_eq!(v["code"], "UPSTREAM_UNAVAILABLE");
        assert!(!v.to_string().contains("10.1.2.3"));
    }

    #[test]
    fn auth_failures_are_exactly_the_auth_codes() {
        use crate::ratelimit::{RateLimitHeaders, Window};
        let every = [
            GatewayError::invalid("x"),
            GatewayError::MissingCredentials,
            GatewayError::InvalidToken,
            GatewayError::InvalidApiKey,
            GatewayError::InvalidAdminSecret,
            GatewayError::InvalidCredentials,
            GatewayError::InvalidRefreshToken,
            GatewayError::Forbidden,
            GatewayError::TenantSuspended,
            GatewayError::OriginNotAllowed,
            GatewayError::NotFound,
            GatewayError::MethodNotAllowed("GET"),
            GatewayError::EmailTaken,
            GatewayError::PayloadTooLarge,
            GatewayError::BodyTimeout,
            GatewayError::UnsupportedMediaType,
            GatewayError::RateLimited {
                window: Window::Minute,
                headers: RateLimitHeaders::default(),
            },
            GatewayError::TokenQuotaExceeded {
                retry_after: Duration::from_secs(1),
            },
            GatewayError::UpstreamUnavailable("x".into()),
            GatewayError::UpstreamTimeout,
            GatewayError::StoreUnavailable("x".into()),
            GatewayError::ShuttingDown,
            GatewayError::Internal("x".into()),
        ];
        for e in &every {
            let code = e.parts().2;
            assert_eq!(e.is_auth_failure(), code.starts_with("AUTH_"), "{code}");
        }
        assert_eq!(every.iter().filter(|e| e.is_auth_failure()).count(), 9);
    }
}
