//! Cookie sessions for browser apps (`auth.cookies`, `ARES_AUTH_COOKIES=true`): the refresh
//! token lives in an `HttpOnly; Secure; SameSite=Strict` cookie scoped to `/api/auth/`, out of
//! reach of the page's scripts. A request the cookie authenticates must come from an allowed
//! origin and carry `X-Requested-With` (which a cross-site form cannot send without a
//! preflight): cross-site request forgery is refused.

use http::header::{HeaderMap, HeaderValue, COOKIE, ORIGIN};

use crate::error::GatewayError;

pub const NAME: &str = "ares_refresh";
const ATTRIBUTES: &str = "Path=/api/auth/; HttpOnly; Secure; SameSite=Strict";

/// `Set-Cookie` carrying `token` for `max_age` seconds.
pub fn set(token: &str, max_age: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{NAME}={token}; Max-Age={max_age}; {ATTRIBUTES}")).ok()
}

/// `Set-Cookie` removing it.
pub fn clear() -> HeaderValue {
    HeaderValue::from_static(
        "ares_refresh=; Max-Age=0; Path=/api/auth/; HttpOnly; Secure; SameSite=Strict",
    )
}

/// The refresh token the browser sent in the cookie.
pub fn read(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == NAME && !value.is_empty()).then_some(value)
        })
}

/// A request the cookie authenticates: from an allowed origin, with `X-Requested-With`.
pub fn check_forgery(headers: &HeaderMap, allowed_origins: &[String]) -> Result<(), GatewayError> {
    let origin_ok = headers
        .get(ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| allowed_origins.iter().any(|a| a == o));
    if !origin_ok || !headers.contains_key("x-requested-with") {
        tracing::info!(reason = "cookie_without_origin", "cookie request refused");
        return Err(GatewayError::OriginNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_http_only_secure_strict_and_scoped() {
        let v = set("rt_abc", 60).unwrap();
        let text = v.to_str().unwrap();
        for part in [
            "ares_refresh=rt_abc",
            "Max-Age=60",
            "Path=/api/auth/",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(clear().to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn the_token_is_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("theme=dark; my_ares_refresh=no; ares_refresh=rt_1"),
        );
        assert_eq!(read(&h), Some("rt_1"));
        h.insert(COOKIE, HeaderValue::from_static("ares_refresh="));
        assert_eq!(read(&h), None);
    }

    #[test]
    fn forgery_needs_an_allowed_origin_and_the_header() {
        let allowed = vec!["https://app.example.com".to_string()];
        let mut h = HeaderMap::new();
        assert!(check_forgery(&h, &allowed).is_err());
        h.insert(ORIGIN, HeaderValue::from_static("https://app.example.com"));
        assert!(check_forgery(&h, &allowed).is_err(), "no X-Requested-With");
        h.insert("x-requested-with", HeaderValue::from_static("fetch"));
        assert!(check_forgery(&h, &allowed).is_ok());
        h.insert(ORIGIN, HeaderValue::from_static("https://evil.example.com"));
        assert!(check_forgery(&h, &allowed).is_err());
    }
}
