//! CORS for browser clients: exact origins from `ARES_CORS_ORIGINS`.
//!
//! Preflights are answered by the gateway itself, before any credential is asked for. Every
//! response to an allowed origin (errors included, so a browser can read a 401 or a 429) carries
//! `Access-Control-Allow-Origin` and `Vary: Origin`, and exposes the rate-limit and request-id
//! headers (`cors.allow_headers` / `cors.expose_headers` add to the defaults in `config/defaults.rs`).
//! `Access-Control-Allow-Credentials: true` is sent to allowed origins only, and only with
//! cookie sessions on (`auth.cookies`); otherwise credentials travel in headers.
//! A preflight from an origin not on the list gets 204 without CORS headers: the browser stops.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{self, Body};

const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
const MAX_AGE: &str = "600";

/// The request's `Origin` when it is on the allowed list.
pub fn allowed_origin(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    if allowed.is_empty() {
        return None;
    }
    let mut all = headers.get_all(header::ORIGIN).iter();
    let origin = all.next()?;
    // One Origin or none allowed: with two, which one a browser sent is not ours to pick.
    if all.next().is_some() {
        return None;
    }
    let text = origin.to_str().ok()?;
    allowed.iter().any(|a| a == text).then(|| origin.clone())
}

/// Whether this is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight; `allow_headers` is `CorsConfig::allow_headers`.
/// `credentials`: cookie sessions are on, so allowed origins may send cookies.
pub fn preflight(
    origin: Option<&HeaderValue>,
    allow_headers: &HeaderValue,
    credentials: bool,
) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    if origin.is_some() {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers.clone());
        if credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
    }
    resp
}

/// Mark a response readable by an allowed origin; `expose` is `CorsConfig::expose_headers`.
pub fn decorate(
    headers: &mut HeaderMap,
    origin: &HeaderValue,
    expose: &HeaderValue,
    credentials: bool,
) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
    if credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    let varies = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("origin")
    });
    if !varies {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_origins_are_allowed() {
        let allowed = vec!["https://app.example.com".to_string()];
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example.com"),
        );
        assert!(allowed_origin(&h, &allowed).is_some());
        for bad in [
            "https://app.example.com.evil.com",
            "http://app.example.com",
            "null",
            "https://APP.example.com",
        ] {
            h.insert(header::ORIGIN, HeaderValue::from_static(bad));
            assert!(allowed_origin(&h, &allowed).is_none(), "{bad}");
        }
        assert!(allowed_origin(&h, &[]).is_none());
    }

    #[test]
    fn decorate_adds_vary_once() {
        let mut h = HeaderMap::new();
        h.insert(
            header::VARY,
            HeaderValue::from_static("Accept-Encoding, Origin"),
        );
        decorate(
            &mut h,
            &HeaderValue::from_static("https://a.example"),
            &HeaderValue::from_static("x-request-id"),
            false,
        );
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
    }
}
