//! `/.well-known/jwks.json` and `/.well-known/openid-configuration`: what a service needs to
//! verify the gateway's tokens (and its minted upstream tokens) without any shared secret.
//!
//! The JWKS lists the public keys of the EdDSA/ES256 keys that verify (the signing key and
//! older ones still verifying); an HS256 secret is never in it, so with HS256 alone it is
//! `{"keys":[]}`. Both are cacheable for [`MAX_AGE_SECS`]: a verifier that meets an unknown
//! `kid` refetches (as ARES and the usual JWKS clients do), so a rotation is seen at once.
//! The discovery document's `jwks_uri` is built from the issuer when the issuer is a URL (set
//! `ARES_JWT_ISSUER` to the gateway's public URL), else from the request's `Host`.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::auth::jwt::JwtKeys;
use crate::body::{self, Body};
use crate::error::GatewayError;

/// How long a client may cache either document.
pub const MAX_AGE_SECS: u64 = 300;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

pub fn handle<B>(
    jwt: &JwtKeys,
    tls: bool,
    req: &Request<B>,
    path: &str,
) -> Result<Response<Body>, GatewayError> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed("GET, HEAD"));
    }
    let mut resp = match path {
        JWKS_PATH => {
            let mut r = Response::new(body::full(jwt.jwks()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            );
            r
        }
        DISCOVERY_PATH => {
            let base = base_url(jwt.issuer(), tls, req)?;
            let alg = jwt_alg_name(jwt);
            let doc = json!({
                "issuer": jwt.issuer(),
                "jwks_uri": format!("{base}{JWKS_PATH}"),
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": [alg],
                "token_endpoint_auth_methods_supported": ["none"],
                "response_types_supported": ["token"],
            });
            body::json(StatusCode::OK, &doc, false)
        }
        _ => return Err(GatewayError::NotFound),
    };
    let cache = format!("public, max-age={MAX_AGE_SECS}");
    if let Ok(v) = HeaderValue::from_str(&cache) {
        resp.headers_mut().insert(CACHE_CONTROL, v);
    }
    Ok(resp)
}

fn jwt_alg_name(jwt: &JwtKeys) -> &'static str {
    match jwt.algorithm() {
        jsonwebtoken::Algorithm::EdDSA => "EdDSA",
        jsonwebtoken::Algorithm::ES256 => "ES256",
        _ => "HS256",
    }
}

/// The gateway's public base URL: the issuer when it is one, else scheme and `Host` of the
/// request (a `Host` that is not a plain host\[:port\] is refused, never echoed).
fn base_url<B>(issuer: &str, tls: bool, req: &Request<B>) -> Result<String, GatewayError> {
    if issuer.starts_with("https://") || issuer.starts_with("http://") {
        return Ok(issuer.trim_end_matches('/').to_string());
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !plain {
        return Err(GatewayError::InvalidInput("Host header".into()));
    }
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{host}"))
}
