//! Bearer parsing, API-key shape and checksum, JWT verification: never panic on any input.
#![no_main]
use std::sync::OnceLock;

use ares_gateway::auth::{api_key, bearer, jwt::JwtKeys};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static JwtKeys {
    static KEYS: OnceLock<JwtKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let cfg = ares_gateway::config::Config::from_yaml(include_str!("../../gateway.yaml"), &|k| match k {
            "ARES_JWT_SECRET" => Some("fuzz-jwt-secret-0123456789abcdef0123".into()),
            _ => None,
        })
        .expect("shipped config");
        JwtKeys::new(&cfg.auth)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v);
        if let Ok(Some(token)) = bearer(&h) {
            let _ = api_key::shape(token);
            let _ = keys().verify(token);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = api_key::shape(s);
        let _ = keys().verify(s);
    }
});
