//! The gateway's own keys: EdDSA/ES256 signing, the JWKS and discovery documents, rotation, and
//! minted tokens a newer ARES verifies against that JWKS (the `jwks_ares` double below verifies
//! exactly as its `crates/ares-http/src/auth/jwks.rs` does). Every refusal of RFC 8725's list
//! that a key pair opens (algorithm confusion, keys in the header, `none`) is tried here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::common::*;
use ares_gateway::config::keys::KeyPair;
use ares_gateway::config::Config;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

/// A gateway on the memory store with no HS256 secret: it signs EdDSA with a generated key.
async fn eddsa_gateway(up: &str, env: &[(&str, &str)]) -> TestGateway {
    let mut all = vec![("ARES_JWT_SECRET", "")];
    all.extend_from_slice(env);
    gateway(up, &all).await
}

fn header_of(token: &str) -> serde_json::Value {
    let first = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(first).unwrap()).unwrap()
}

fn claims_of(token: &str) -> serde_json::Value {
    let second = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(second).unwrap()).unwrap()
}

async fn jwks_of(g: &impl Gate) -> JwkSet {
    let r = get(&g.url("/.well-known/jwks.json"), &[]).await;
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

/// A JWT of `header` and `claims`, its signature made by `sign` over the signing input.
fn forge(
    header: serde_json::Value,
    claims: &serde_json::Value,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
    format!("{input}.{sig}")
}

fn hmac256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), msg)
        .as_ref()
        .to_vec()
}

async fn chat(g: &impl Gate, token: &str) -> Reply {
    post(
        &g.url("/api/chat"),
        &[("authorization", &bearer(token))],
        "{}",
    )
    .await
}

#[tokio::test]
async fn without_a_secret_the_gateway_signs_eddsa_and_publishes_only_the_public_key() {
    let up = Upstream::start().await;
    let g = eddsa_gateway(&up.url(), &[]).await;
    let t = login(&g, "eddsa@example.com").await;
    let access = t["access_token"].as_str().unwrap();
    let header = header_of(access);
    assert_eq!(header["alg"], "EdDSA");
    let kid = header["kid"].as_str().unwrap().to_string();
    assert_eq!(chat(&g, access).await.status, 200);

    let r = get(&g.url("/.well-known/jwks.json"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/jwk-set+json"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    let raw: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let keys = raw["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{raw}");
    assert_eq!(keys[0]["kid"], kid.as_str());
    assert_eq!(keys[0]["kty"], "OKP");
    for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        assert!(
            keys[0].get(private).is_none(),
            "private member {private} in {raw}"
        );
    }
    // Anyone can verify the gateway's token with it: no secret shared.
    let set: JwkSet = serde_json::from_slice(&r.body).unwrap();
    let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_required_spec_claims(&["exp", "sub"]);
    let c = jsonwebtoken::decode::<serde_json::Value>(access, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(c["iss"], "ares-gateway");

    let r = get(&g.url("/.well-known/openid-configuration"), &[]).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["issuer"], "ares-gateway");
    assert_eq!(
        doc["jwks_uri"],
        format!("http://{}/.well-known/jwks.json", g.addr)
    );
    assert_eq!(doc["id_token_signing_alg_values_supported"][0], "EdDSA");
    let r = send(
        "GET",
        &g.url("/.well-known/openid-configuration"),
        &[("host", "evil.example/x")],
        None,
    )
    .await;
    assert_eq!(r.status, 400, "a Host that is not a host is never echoed");
    let r = send("POST", &g.url("/.well-known/jwks.json"), &[], Some("{}")).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn an_issuer_url_names_the_jwks_and_hs256_alone_publishes_no_key() {
    let up = Upstream::start().await;
    let yaml = shipped_yaml().replace(
        "jwt_issuer: ares-gateway",
        "jwt_issuer: https://gw.example.com/",
    );
    let g = start(config_from(&yaml, &up.url(), &[])).await;
    let doc = get(&g.url("/.well-known/openid-configuration"), &[])
        .await
        .json();
    assert_eq!(
        doc["jwks_uri"],
        "https://gw.example.com/.well-known/jwks.json"
    );
    assert_eq!(doc["id_token_signing_alg_values_supported"][0], "HS256");
    let r = get(&g.url("/.well-known/jwks.json"), &[]).await;
    assert_eq!(
        r.json(),
        json!({"keys": []}),
        "an HS256 secret is never published"
    );
    let t = login(&g, "hs@example.com").await;
    assert_eq!(
        header_of(t["access_token"].as_str().unwrap())["alg"],
        "HS256"
    );
}

/// RFC 8725 3.1/3.2, RFC 7515 4.1.2-4.1.6: the key decides the algorithm, and the header never
/// brings a key. Each forged token is refused at a JWT route (401 INVALID_TOKEN).
#[tokio::test]
async fn forged_tokens_against_a_key_pair_are_refused() {
    let up = Upstream::start().await;
    let g = eddsa_gateway(&up.url(), &[]).await;
    let t = login(&g, "victim@example.com").await;
    let access = t["access_token"].as_str().unwrap();
    let kid = header_of(access)["kid"].as_str().unwrap().to_string();
    let mut claims = claims_of(access);
    claims["jti"] = json!("forged-jti");
    let set = jwks_of(&g).await;
    let AlgorithmParameters::OctetKeyPair(okp) = &set.keys[0].algorithm else {
        panic!("an Ed25519 key");
    };
    let public = URL_SAFE_NO_PAD.decode(&okp.x).unwrap();
    let attacker = KeyPair::generate(Algorithm::EdDSA).unwrap();
    let attacker_pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pem_der(
        attacker.private_pem().unwrap().expose(),
    ))
    .unwrap();
    let attacker_sign = |msg: &[u8]| attacker_pair.sign(msg).as_ref().to_vec();
    let cases: Vec<(&str, String)> = vec![
        (
            "HS256 with the public key as the HMAC secret, naming the Ed25519 kid",
            forge(
                json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
                &claims,
                |m| hmac256(&public, m),
            ),
        ),
        (
            "HS256 with the public key's JWK x as the secret, no kid",
            forge(json!({"alg": "HS256", "typ": "JWT"}), &claims, |m| {
                hmac256(okp.x.as_bytes(), m)
            }),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            ),
        ),
        (
            "signed by another key, its public part embedded as jwk",
            forge(
                json!({"alg": "EdDSA", "typ": "JWT", "jwk": attacker.jwk()}),
                &claims,
                attacker_sign,
            ),
        ),
        (
            "signed by another key, named by jku",
            forge(
                json!({"alg": "EdDSA", "typ": "JWT", "kid": attacker.kid(), "jku": "http://127.0.0.1:1/jwks.json"}),
                &claims,
                attacker_sign,
            ),
        ),
        (
            "signed by another key under the gateway's kid",
            forge(
                json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
                &claims,
                attacker_sign,
            ),
        ),
        (
            "ES256 naming the Ed25519 kid",
            forge(
                json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
                &claims,
                attacker_sign,
            ),
        ),
    ];
    for (what, token) in cases {
        let r = chat(&g, &token).await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_eq!(r.error_code(), "AUTH_INVALID_TOKEN", "{what}");
    }
    assert_eq!(
        chat(&g, access).await.status,
        200,
        "the real token still passes"
    );
    assert!(
        up.requests().iter().all(|r| !r
            .headers
            .values()
            .any(|v| v.to_str().unwrap_or("").contains("forged-jti"))),
        "no forged token reached the upstream"
    );
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn write_key(dir: &std::path::Path, name: &str, key: &KeyPair) -> String {
    let path = dir.join(name);
    std::fs::write(&path, key.private_pem().unwrap().expose()).unwrap();
    path.to_string_lossy().into_owned()
}

/// Rotation: the new key signs, the old one verifies until it is removed from the list, and
/// the JWKS lists both meanwhile. An older key may be given by its public part alone.
#[tokio::test]
async fn a_rotated_key_verifies_its_tokens_until_it_is_removed() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let old = KeyPair::generate(Algorithm::ES256).unwrap();
    let new = KeyPair::generate(Algorithm::EdDSA).unwrap();
    let old_file = write_key(dir.path(), "old.pem", &old);
    let new_file = write_key(dir.path(), "new.pem", &new);
    let public_file = dir.path().join("old.pub.pem");
    std::fs::write(&public_file, spki_pem(&old)).unwrap();
    let public_file = public_file.to_string_lossy().into_owned();

    let before = eddsa_gateway(&up.url(), &[("ARES_JWT_PRIVATE_KEY_FILE", &old_file)]).await;
    let t = login(&before, "rotate@example.com").await;
    let old_token = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        header_of(&old_token)["alg"],
        "ES256",
        "the key file's algorithm"
    );
    assert_eq!(header_of(&old_token)["kid"], old.kid());

    for previous in [&old_file, &public_file] {
        let during = eddsa_gateway(
            &up.url(),
            &[
                ("ARES_JWT_PRIVATE_KEY_FILE", &new_file),
                ("ARES_JWT_PREVIOUS_KEY_FILES", previous),
            ],
        )
        .await;
        assert_eq!(chat(&during, &old_token).await.status, 200, "{previous}");
        let kids: Vec<String> = jwks_of(&during)
            .await
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        assert_eq!(kids, vec![new.kid().to_string(), old.kid().to_string()]);
        let t = login(&during, "rotated@example.com").await;
        assert_eq!(
            header_of(t["access_token"].as_str().unwrap())["kid"],
            new.kid()
        );
    }

    let after = eddsa_gateway(&up.url(), &[("ARES_JWT_PRIVATE_KEY_FILE", &new_file)]).await;
    assert_eq!(
        chat(&after, &old_token).await.status,
        401,
        "removed: refused"
    );
    assert_eq!(jwks_of(&after).await.keys.len(), 1);
}

fn spki_pem(k: &KeyPair) -> String {
    // The public key's SubjectPublicKeyInfo, from its JWK.
    let jwk = k.jwk();
    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    let y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    der.extend_from_slice(&x);
    der.extend_from_slice(&y);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

fn problems(yaml: &str, env: &[(&str, &str)]) -> String {
    let vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Config::from_yaml(yaml, &move |k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }) {
        Ok(_) => String::new(),
        Err(p) => format!("{p:?}"),
    }
}

#[test]
fn signing_settings_that_cannot_work_are_refused_at_start_naming_the_variable_never_the_key() {
    let yaml = shipped_yaml();
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(Algorithm::EdDSA).unwrap();
    let key_file = write_key(dir.path(), "k.pem", &key);
    let secret_body: String = key
        .private_pem()
        .unwrap()
        .expose()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let base = [("ARES_ADMIN_SECRET", ADMIN), ("ARES_STORE", "memory")];
    let with = |extra: &[(&str, &str)]| {
        let mut all = base.to_vec();
        all.extend_from_slice(extra);
        problems(&yaml, &all)
    };
    assert_eq!(
        with(&[("ARES_JWT_PRIVATE_KEY_FILE", &key_file)]),
        "",
        "a good key"
    );
    let p = with(&[("ARES_JWT_ALGORITHM", "RS256")]);
    assert!(
        p.contains("ARES_JWT_ALGORITHM must be HS256, EdDSA or ES256"),
        "{p}"
    );
    let p = with(&[
        ("ARES_JWT_ALGORITHM", "ES256"),
        ("ARES_JWT_PRIVATE_KEY_FILE", &key_file),
    ]);
    assert!(
        p.contains("holds a EdDSA key, but ARES_JWT_ALGORITHM is ES256"),
        "{p}"
    );
    let p = with(&[("ARES_JWT_PRIVATE_KEY_FILE", "/nonexistent/k.pem")]);
    assert!(
        p.contains("ARES_JWT_PRIVATE_KEY_FILE /nonexistent/k.pem: cannot read it"),
        "{p}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let p = with(&[("ARES_JWT_PRIVATE_KEY_FILE", garbage.to_str().unwrap())]);
    assert!(p.contains("not an Ed25519 or P-256"), "{p}");
    assert!(
        !p.contains("c2VjcmV0"),
        "the file's content is never quoted: {p}"
    );
    let public = dir.path().join("pub.pem");
    std::fs::write(
        &public,
        spki_pem(&KeyPair::generate(Algorithm::ES256).unwrap()),
    )
    .unwrap();
    let p = with(&[("ARES_JWT_PRIVATE_KEY_FILE", public.to_str().unwrap())]);
    assert!(p.contains("a public key cannot sign"), "{p}");
    // A shared store: no generated key (replicas would disagree); the file is required.
    let p = problems(
        &yaml,
        &[
            ("ARES_ADMIN_SECRET", ADMIN),
            ("ARES_STORE", "redis"),
            ("ARES_JWT_ALGORITHM", "EdDSA"),
        ],
    );
    assert!(p.contains("set ARES_JWT_PRIVATE_KEY_FILE"), "{p}");
    let p = problems(
        &yaml,
        &[("ARES_ADMIN_SECRET", ADMIN), ("ARES_STORE", "redis")],
    );
    assert!(
        p.contains("ARES_JWT_SECRET is not set: set it (HS256) or ARES_JWT_PRIVATE_KEY_FILE"),
        "{p}"
    );
    // Minting with the gateway's key needs a key pair.
    let p = with(&[
        ("ARES_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("ARES_UPSTREAM_JWT_SIGNING", "gateway_key"),
    ]);
    assert!(
        p.contains("gateway_key needs the gateway to sign with EdDSA or ES256"),
        "{p}"
    );
    for p in [
        with(&[("ARES_JWT_PRIVATE_KEY_FILE", garbage.to_str().unwrap())]),
        with(&[
            ("ARES_JWT_PRIVATE_KEY_FILE", &key_file),
            ("ARES_JWT_ALGORITHM", "ES256"),
        ]),
    ] {
        assert!(!p.contains(&secret_body[..24]), "{p}");
    }
}

/// What a newer ARES (`crates/ares-http/src/auth/jwks.rs`) reads from a token.
#[derive(serde::Deserialize)]
struct IssuerClaims {
    sub: String,
    email: String,
    #[allow(dead_code)]
    exp: i64,
    #[allow(dead_code)]
    iat: i64,
    #[serde(default)]
    roles: Option<HashMap<String, Vec<RoleEntry>>>,
    #[serde(default)]
    token_version: Option<i32>,
}

#[derive(serde::Deserialize, serde::Serialize, Clone)]
struct RoleEntry {
    role: String,
    #[serde(default)]
    resource_id: Option<String>,
}

/// The newer ARES's JWKS verification, as that file does it: the set fetched from
/// `ERUKA_JWKS_URL` and cached, fetched again once for an unknown `kid`; `oct` keys refused,
/// only Ed25519 (EdDSA) and RSA (RS256) keys used; the header's `alg` must be EdDSA or RS256
/// and the key's; a token without `kid` needs a set of one key; `Validation::new(alg)` with
/// 60 s leeway. Answers 401 for a token it refuses, 403 without a role for `ares`, else 200
/// with what it read.
struct JwksAres {
    addr: SocketAddr,
    jwks_url: Arc<Mutex<String>>,
    fetches: Arc<Mutex<u32>>,
}

async fn jwks_ares() -> JwksAres {
    let jwks_url: Arc<Mutex<String>> = Arc::default();
    let fetches: Arc<Mutex<u32>> = Arc::default();
    let cache: Arc<Mutex<Option<KeySet>>> = Arc::default();
    let (url, count) = (jwks_url.clone(), fetches.clone());
    let addr = serve(move |req: Request<Incoming>| {
        let (url, count, cache) = (url.clone(), count.clone(), cache.clone());
        async move { jwks_ares_answer(req, url, count, cache).await }
    })
    .await;
    JwksAres {
        addr,
        jwks_url,
        fetches,
    }
}

type KeySet = Vec<(Option<String>, Algorithm, DecodingKey)>;

async fn fetch_set(url: &str) -> Option<KeySet> {
    let r = get(url, &[]).await;
    let set: JwkSet = serde_json::from_slice(&r.body).ok()?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::OctetKey(_) => return None,
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => continue,
        };
        keys.push((
            jwk.common.key_id.clone(),
            alg,
            DecodingKey::from_jwk(jwk).ok()?,
        ));
    }
    (!keys.is_empty()).then_some(keys)
}

async fn jwks_ares_answer(
    req: Request<Incoming>,
    url: Arc<Mutex<String>>,
    count: Arc<Mutex<u32>>,
    cache: Arc<Mutex<Option<KeySet>>>,
) -> Response<Full<Bytes>> {
    let token = bearer_of(&req);
    let Ok(header) = jsonwebtoken::decode_header(&token) else {
        return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
    };
    if !matches!(header.alg, Algorithm::EdDSA | Algorithm::RS256) {
        return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
    }
    let jwks_url = url.lock().unwrap().clone();
    let mut refetched = false;
    loop {
        let cached = cache.lock().unwrap().clone();
        let set = match cached {
            Some(set) if !refetched => set,
            _ => {
                *count.lock().unwrap() += 1;
                let Some(set) = fetch_set(&jwks_url).await else {
                    return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
                };
                *cache.lock().unwrap() = Some(set.clone());
                refetched = true;
                set
            }
        };
        let key = match header.kid.as_deref() {
            Some(kid) => match set.iter().find(|k| k.0.as_deref() == Some(kid)) {
                Some(k) => k.clone(),
                None if !refetched => {
                    refetched = true;
                    *cache.lock().unwrap() = None;
                    continue;
                }
                None => {
                    return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}))
                }
            },
            None if set.len() == 1 => set[0].clone(),
            None => return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"})),
        };
        if key.1 != header.alg {
            return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
        }
        let mut v = Validation::new(key.1);
        v.leeway = 60;
        let Ok(data) = jsonwebtoken::decode::<IssuerClaims>(&token, &key.2, &v) else {
            return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
        };
        let c = data.claims;
        let roles = c.roles.unwrap_or_default();
        let Some(ares) = roles.get("ares") else {
            return json_reply(StatusCode::FORBIDDEN, json!({"error": "Forbidden"}));
        };
        return json_reply(
            StatusCode::OK,
            json!({
                "user_id": c.sub,
                "email": c.email,
                "roles": ares,
                "token_version": c.token_version.unwrap_or(0),
            }),
        );
    }
}

/// A newer ARES with `ERUKA_JWKS_URL` at the gateway's JWKS trusts the gateway as its issuer:
/// users and API keys reach it with minted EdDSA tokens carrying that generation's roles, and
/// the gateway holds no secret of ARES's (none is configured).
#[tokio::test]
async fn a_newer_ares_verifies_minted_tokens_against_the_gateways_jwks() {
    let ares = jwks_ares().await;
    let g = eddsa_gateway(
        &format!("http://{}", ares.addr),
        &[("ARES_UPSTREAM_JWT_SIGNING", "gateway_key")],
    )
    .await;
    *ares.jwks_url.lock().unwrap() = g.url("/.well-known/jwks.json");

    let t = login(&g, "newer@example.com").await;
    let r = chat(&g, t["access_token"].as_str().unwrap()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = r.json();
    let user_id = claims_of(t["access_token"].as_str().unwrap())["sub"].clone();
    assert_eq!(seen["user_id"], user_id);
    assert_eq!(seen["email"], "newer@example.com");
    assert_eq!(
        seen["roles"],
        json!([{"role": "user", "resource_id": null}])
    );
    assert_eq!(seen["token_version"], 0);

    let (tenant, _, key) = provision(&g, "pro").await;
    let r = post(
        &g.url("/v1/chat"),
        &[("authorization", &bearer(&key))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = r.json();
    assert_eq!(seen["user_id"], tenant.as_str());
    assert_eq!(
        seen["roles"],
        json!([{"role": "user", "resource_id": tenant}]),
        "the tenant as the role's resource"
    );
    assert_eq!(
        *ares.fetches.lock().unwrap(),
        1,
        "the set is fetched once and cached"
    );

    // The double is strict: an HS256 token (what minting with a secret makes) is refused.
    let hs = forge(
        json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"sub": "x", "email": "e", "exp": 4_000_000_000u64, "iat": 0, "roles": {"ares": []}}),
        |m| hmac256(b"any-secret", m),
    );
    let r = post(
        &format!("http://{}/api/chat", ares.addr),
        &[("authorization", &bearer(&hs))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 401);
}

/// A gateway restarted with a new key: the newer ARES meets an unknown `kid`, fetches the set
/// again once, and verifies.
#[tokio::test]
async fn a_new_key_is_fetched_again_by_the_newer_ares_on_its_unknown_kid() {
    let ares = jwks_ares().await;
    let up = format!("http://{}", ares.addr);
    let env = [("ARES_UPSTREAM_JWT_SIGNING", "gateway_key")];
    let first = eddsa_gateway(&up, &env).await;
    *ares.jwks_url.lock().unwrap() = first.url("/.well-known/jwks.json");
    let t = login(&first, "kid@example.com").await;
    assert_eq!(
        chat(&first, t["access_token"].as_str().unwrap())
            .await
            .status,
        200
    );
    let second = eddsa_gateway(&up, &env).await;
    *ares.jwks_url.lock().unwrap() = second.url("/.well-known/jwks.json");
    let t = login(&second, "kid2@example.com").await;
    assert_eq!(
        chat(&second, t["access_token"].as_str().unwrap())
            .await
            .status,
        200
    );
    assert_eq!(*ares.fetches.lock().unwrap(), 2);
}
