//! Endpoints the gateway serves itself: health, `/api/auth/*`, the admin API, and the
//! `/.well-known/` documents of its signing keys.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cookie;
pub mod json;
pub mod well_known;

use http::{Method, Response, StatusCode};
use serde_json::json;

use crate::body::{self, Body};
use crate::error::GatewayError;
use crate::state::AppState;

/// `/healthz`: the process runs. `/readyz`: the store answers within its budget.
pub async fn health(
    state: &AppState,
    method: &Method,
    path: &str,
) -> Result<Response<Body>, GatewayError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed("GET, HEAD"));
    }
    match path {
        "/healthz" => Ok(body::json(StatusCode::OK, &json!({"status": "ok"}), false)),
        "/readyz" => {
            state.store.call(state.store.ping()).await?;
            Ok(body::json(
                StatusCode::OK,
                &json!({"status": "ready"}),
                false,
            ))
        }
        _ => Err(GatewayError::NotFound),
    }
}

/// Parse and validate `data` as every JSON body the gateway serves (for the fuzz target).
#[doc(hidden)]
pub fn fuzz_bodies(data: &[u8]) {
    auth::fuzz(data);
    admin::fuzz(data);
}

/// The path segments after `base`, without empty ones.
pub fn segments<'a>(path: &'a str, base: &str) -> Vec<&'a str> {
    path.strip_prefix(base)
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect()
}

/// Trim and check a display name (tenant, key, user).
pub fn check_name(field: &str, value: &str) -> Result<String, GatewayError> {
    let v = value.trim();
    let n = v.chars().count();
    if n == 0 || n > 200 {
        return Err(GatewayError::invalid(format!(
            "{field} must be 1 to 200 characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(GatewayError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(v.to_string())
}
