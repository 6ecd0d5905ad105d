//! Access tokens: JWTs issued and verified locally, signed HS256 with a secret or EdDSA/ES256 with
//! a key pair (`auth::keys`), whose public keys `/.well-known/jwks.json` publishes.
//!
//! One active key signs (its `kid` is derived from the key, so no config names it); older keys
//! listed in `jwt_previous_secrets` still verify until removed. A token without `kid` is tried
//! against the active key only, so tokens ARES issues with the shared secret also pass.
//! `iss`, `sub` and `exp` are required, `nbf` is honoured, only HS256 is accepted (never `none`),
//! leeway is at most 60 s, and a token larger than [`MAX_TOKEN_BYTES`] is refused before decoding.
//!
//! [`JwtKeys::verify_cached`] remembers tokens that passed, by their exact text, until they
//! expire: a client sends the same token on every call, and the map lookup costs a fraction of
//! the base64 + JSON + HMAC work. The cache belongs to one set of keys (a config reload that
//! changes them starts an empty one) and holds at most [`VERIFIED_CACHE_ENTRIES`] tokens.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::keys::KeyPair;
use crate::config::AuthConfig;
use crate::util::FastMap;
use crate::util::Secret;

/// Refuse larger tokens before base64 or JSON work.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Verified tokens remembered at most (about 1 KiB each with their claims).
pub const VERIFIED_CACHE_ENTRIES: usize = 16 * 1024;

/// The claims we issue and read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Absent in tokens ARES issued itself (accepted only with `accept_tokens_without_issuer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    pub sub: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Set only in tokens minted for an upstream (`mint.rs`): such a token is never accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_use: Option<String>,
    /// The user's token version when the token was issued (raised by a password change and
    /// a logout everywhere): what a minted token's `token_version` carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tv: Option<u64>,
}

struct VerifyKey {
    kid: String,
    /// The key decides the algorithm: a token naming another is refused, whatever it says.
    alg: Algorithm,
    key: DecodingKey,
    /// The rules, with this key's algorithm the only one allowed.
    validation: Validation,
}

/// Signing and verification keys, with the validation rules pinned.
pub struct JwtKeys {
    active_kid: String,
    active_alg: Algorithm,
    encoding: EncodingKey,
    verify: Vec<VerifyKey>,
    /// `/.well-known/jwks.json`: the public keys of `verify` (never an HS256 secret).
    jwks: bytes::Bytes,
    issuer: String,
    /// Issuers whose tokens verify: ours first, then `jwt_accepted_issuers`.
    accepted_issuers: Vec<String>,
    accept_without_issuer: bool,
    audience: Option<String>,
    ttl_secs: u64,
    leeway: u64,
    /// Tokens that passed [`JwtKeys::verify`], by their text.
    verified: FastMap<Box<str>, Arc<Claims>>,
}

fn kid_of(secret: &Secret) -> String {
    // A short digest identifies the key without revealing it.
    let digest = Sha256::digest(secret.expose().as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("k{hex}")
}

impl JwtKeys {
    pub fn new(cfg: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = cfg.jwt_leeway.as_secs().min(60);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // `iss` is checked after decoding (`issuer_allowed`): a token without one may be
        // accepted, which jsonwebtoken's issuer check cannot express.
        match &cfg.jwt_audience {
            Some(aud) => {
                // jsonwebtoken only checks `aud` when present unless it is required.
                validation.set_required_spec_claims(&["exp", "sub", "aud"]);
                validation.set_audience(&[aud.as_str()]);
            }
            // An `aud` we were not told about is refused, as ARES does.
            None => {
                validation.set_required_spec_claims(&["exp", "sub"]);
                validation.validate_aud = true;
            }
        }
        let pinned = |alg: Algorithm| {
            let mut v = validation.clone();
            v.algorithms = vec![alg];
            v
        };
        let hs = |secret: &Secret| VerifyKey {
            kid: kid_of(secret),
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation: pinned(Algorithm::HS256),
        };
        let pair = |k: &KeyPair| {
            k.decoding_key().ok().map(|key| VerifyKey {
                kid: k.kid().to_string(),
                alg: k.alg(),
                key,
                validation: pinned(k.alg()),
            })
        };
        let signing = &cfg.signing;
        let mut verify = Vec::new();
        let mut active = None;
        if let Some(k) = signing
            .key
            .as_ref()
            .filter(|_| signing.algorithm != Algorithm::HS256)
        {
            if let (Some(enc), Some(v)) = (k.encoding_key(), pair(k)) {
                active = Some((k.kid().to_string(), k.alg(), enc));
                verify.push(v);
            }
        }
        // The HS256 secret verifies where it signs, or where it was set (ARES's tokens, or
        // the tokens of before a move to EdDSA); a generated one never beside a key pair.
        let hs_verifies = active.is_none() || !cfg.jwt_secret_generated;
        if hs_verifies {
            verify.push(hs(&cfg.jwt_secret));
        }
        verify.extend(cfg.jwt_previous_secrets.iter().map(hs));
        verify.extend(signing.previous.iter().filter_map(pair));
        let (active_kid, active_alg, encoding) = active.unwrap_or_else(|| {
            (
                kid_of(&cfg.jwt_secret),
                Algorithm::HS256,
                EncodingKey::from_secret(cfg.jwt_secret.expose().as_bytes()),
            )
        });
        let mut public: Vec<serde_json::Value> = Vec::new();
        for k in signing.key.iter().chain(&signing.previous) {
            if verify.iter().any(|v| v.kid == k.kid())
                && !public.iter().any(|j| j["kid"] == k.kid())
            {
                public.push(k.jwk());
            }
        }
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": public }))
            .unwrap_or_else(|_| br#"{"keys":[]}"#.to_vec());
        let mut accepted_issuers = vec![cfg.jwt_issuer.clone()];
        accepted_issuers.extend(cfg.jwt_accepted_issuers.iter().cloned());
        JwtKeys {
            active_kid,
            active_alg,
            encoding,
            verify,
            jwks: jwks.into(),
            issuer: cfg.jwt_issuer.clone(),
            accepted_issuers,
            accept_without_issuer: cfg.accept_tokens_without_issuer,
            audience: cfg.jwt_audience.clone(),
            ttl_secs: cfg.access_token_ttl.as_secs(),
            leeway: cfg.jwt_leeway.as_secs().min(60),
            verified: FastMap::default(),
        }
    }

    /// The JWKS document of the keys that verify the gateway's tokens (public parts only).
    pub fn jwks(&self) -> bytes::Bytes {
        self.jwks.clone()
    }

    /// The algorithm new tokens are signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.active_alg
    }

    /// The gateway's issuer (`iss` of its tokens).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Sign `claims` with the active key (its `kid` in the header): the gateway's tokens, and
    /// tokens minted for an upstream that verifies them against the JWKS.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, String> {
        let mut header = Header::new(self.active_alg);
        header.kid = Some(self.active_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| format!("signing failed: {e}"))
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Issue an access token; returns it with its claims.
    pub fn issue(&self, user_id: &str, email: &str, now: u64) -> Result<(String, Claims), String> {
        let claims = Claims {
            iss: Some(self.issuer.clone()),
            sub: user_id.to_string(),
            email: email.to_string(),
            iat: now,
            exp: now + self.ttl_secs,
            jti: Some(crate::util::random_token("", 22)),
            nbf: None,
            aud: self.audience.clone(),
            token_use: None,
            tv: None,
        };
        self.sign(&claims).map(|t| (t, claims))
    }

    /// [`JwtKeys::verify`], answered from the tokens that passed before while they are
    /// unexpired (`exp` with the same leeway; `nbf` had passed when they were verified).
    pub fn verify_cached(&self, token: &str, now: u64) -> Result<Arc<Claims>, &'static str> {
        let live = |c: &Claims| now <= c.exp.saturating_add(self.leeway);
        let stale = match self.verified.get(token) {
            Some(claims) if live(&claims) => return Ok(claims.clone()),
            found => found.is_some(),
        };
        if stale {
            self.verified.remove(token);
        }
        let claims = Arc::new(self.verify(token)?);
        if self.verified.len() >= VERIFIED_CACHE_ENTRIES {
            self.verified.retain(|_, c| live(c));
            if self.verified.len() >= VERIFIED_CACHE_ENTRIES {
                self.verified.clear();
            }
        }
        self.verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// Verify an access token; the reason for a refusal is for the log, never the client.
    ///
    /// A token without `iss` (ARES issued it; accepted only with `accept_tokens_without_issuer`)
    /// is an access token only if it lives no longer than one (`access_token_ttl`): ARES's
    /// refresh tokens are JWTs of the same claims living 7 days, and are never access tokens
    /// here. Such a token gets an id derived from its text (ARES's carry no `jti`), so a logout
    /// at the gateway ends it like one of the gateway's own.
    pub fn verify(&self, token: &str) -> Result<Claims, &'static str> {
        let mut c = self.verify_signed(token)?;
        if c.iss.is_none() {
            if c.exp.saturating_sub(c.iat) > self.ttl_secs.saturating_add(self.leeway) {
                return Err(
                    "an issuer-less token living longer than an access token (a refresh token)",
                );
            }
            if c.jti.is_none() {
                c.jti = Some(issuerless_jti(token));
            }
        }
        Ok(c)
    }

    /// An ARES refresh token (with `accept_tokens_without_issuer`): signed with a key the
    /// gateway trusts, without `iss`, living longer than an access token. Whether ARES still
    /// holds its session is the store's to say (`Records::take_upstream_session`).
    pub fn verify_upstream_refresh(&self, token: &str) -> Result<Claims, &'static str> {
        if !self.accept_without_issuer {
            return Err("tokens without issuer are not accepted");
        }
        let c = self.verify_signed(token)?;
        if c.iss.is_some() {
            return Err("not an ARES refresh token (it has an issuer)");
        }
        if c.exp.saturating_sub(c.iat) <= self.ttl_secs.saturating_add(self.leeway) {
            return Err("not an ARES refresh token (it lives as an access token)");
        }
        Ok(c)
    }

    /// Signature, header and claim rules every token of ours or ARES's must meet.
    fn verify_signed(&self, token: &str) -> Result<Claims, &'static str> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too large");
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        if !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::EdDSA | Algorithm::ES256
        ) {
            return Err("algorithm not allowed");
        }
        // A key in the header (RFC 7515 `jwk`, `jku`, `x5u`, `x5c`) is never trusted: the
        // gateway's keys are its own. jsonwebtoken's header type reads them; refuse outright.
        if header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err("key in the header");
        }
        // Only the type the gateway (and ARES) issue, or none: a refresh+jwt, at+jwt or any
        // other typed token was meant for something else.
        if header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("JWT"))
        {
            return Err("token type not accepted");
        }
        // RFC 7515 4.1.11: an extension the recipient does not understand listed in `crit`
        // makes the token invalid. The gateway understands none, and jsonwebtoken's header type
        // drops unknown fields, so the raw header is read for it.
        if header_names_crit(token) {
            return Err("critical header extension");
        }
        // A token without `kid` (ARES issues them) is tried against every key of its
        // algorithm, active first: the key ARES signs with may be a previous secret during a
        // migration. With a `kid`, that key alone, and only if it is of the token's algorithm.
        let keys: Vec<&VerifyKey> = match header.kid.as_deref() {
            None => self.verify.iter().filter(|k| k.alg == header.alg).collect(),
            Some(kid) => {
                let k = self
                    .verify
                    .iter()
                    .find(|k| k.kid == kid)
                    .ok_or("unknown kid")?;
                if k.alg != header.alg {
                    return Err("algorithm does not match the key");
                }
                vec![k]
            }
        };
        if keys.is_empty() {
            return Err("algorithm not allowed");
        }
        let mut decoded = Err(jsonwebtoken::errors::ErrorKind::InvalidSignature.into());
        for key in keys {
            decoded = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation);
            let bad_signature = matches!(
                decoded.as_ref().map_err(|e| e.kind()),
                Err(jsonwebtoken::errors::ErrorKind::InvalidSignature)
            );
            if !bad_signature {
                break;
            }
        }
        let data = decoded.map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "expired",
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => "not yet valid",
            jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad signature",
            jsonwebtoken::errors::ErrorKind::InvalidAudience => "wrong audience",
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => "missing claim",
            _ => "invalid token",
        })?;
        let c = data.claims;
        // The gateway's own access tokens live `access_token_ttl`: one of its issuer living
        // longer was not made by it as an access token (or was made with a leaked key).
        if c.iss.as_deref() == Some(self.issuer.as_str())
            && c.exp.saturating_sub(c.iat) > self.ttl_secs.saturating_add(self.leeway)
        {
            return Err("lives longer than the gateway's access tokens");
        }
        // Issued in the future beyond the leeway: a clock that far off, or a forged token.
        if c.iat > crate::util::unix_now().saturating_add(self.leeway) {
            return Err("issued in the future");
        }
        if c.token_use.is_some() {
            return Err("a token minted for an upstream");
        }
        match c.iss.as_deref() {
            None if self.accept_without_issuer => {}
            None => return Err("missing claim"),
            Some(iss) if self.accepted_issuers.iter().any(|a| a == iss) => {}
            Some(_) => return Err("wrong issuer"),
        }
        // These become upstream headers: keep them short and printable.
        let printable = |s: &str| s.bytes().all(|b| (0x21..0x7f).contains(&b));
        if c.sub.is_empty() || c.sub.len() > 128 || !printable(&c.sub) {
            return Err("bad sub");
        }
        if c.email.len() > 320 || !printable(&c.email) && !c.email.is_empty() {
            return Err("bad email claim");
        }
        if c.jti.as_deref().is_some_and(|j| j.len() > 128) {
            return Err("bad jti");
        }
        Ok(c)
    }
}

/// The id of a token that carries none (ARES's): from its text, so the same token always has
/// the same id.
fn issuerless_jti(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("ares:{hex}")
}

/// Whether the token's header (its first segment) has a `crit` member.
fn header_names_crit(token: &str) -> bool {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let Some(first) = token.split('.').next() else {
        return false;
    };
    match URL_SAFE_NO_PAD.decode(first) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes)
            .map_or(true, |h| h.contains_key("crit")),
        // decode_header already refused what does not decode.
        Err(_) => true,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use std::time::Duration;

    pub(crate) fn cfg(secret: &str) -> AuthConfig {
        AuthConfig {
            admin_secrets: vec![],
            admin_secret_generated: false,
            jwt_secret: Secret::new(secret.into()),
            jwt_secret_generated: false,
            jwt_previous_secrets: vec![],
            signing: crate::config::Signing {
                algorithm: Algorithm::HS256,
                named: false,
                key: None,
                generated: false,
                previous: vec![],
            },
            jwt_issuer: "ares-gateway".into(),
            jwt_accepted_issuers: vec![],
            accept_tokens_without_issuer: false,
            cookies: false,
            jwt_audience: None,
            jwt_leeway: Duration::from_secs(30),
            access_token_ttl: Duration::from_secs(900),
            refresh_token_ttl: Duration::from_secs(3600),
            refresh_rotation: false,
            refresh_reuse_grace: Duration::from_secs(5),
            password_hash_concurrency: 1,
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        crate::util::unix_now()
    }

    fn forge(header: serde_json::Value, claims: serde_json::Value, key: &[u8]) -> String {
        use hmac_free::sign;
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{h}.{c}");
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(sign(key, input.as_bytes()))
        )
    }

    /// HMAC built from sha2 so tests can forge tokens with any header.
    mod hmac_free {
        use sha2::{Digest, Sha256, Sha384};
        pub fn sign(key: &[u8], msg: &[u8]) -> Vec<u8> {
            hmac::<Sha256>(key, msg, 64)
        }
        pub fn sign384(key: &[u8], msg: &[u8]) -> Vec<u8> {
            hmac::<Sha384>(key, msg, 128)
        }
        fn hmac<D: Digest>(key: &[u8], msg: &[u8], block: usize) -> Vec<u8> {
            let mut k = key.to_vec();
            k.resize(block, 0);
            let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
            let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
            let inner = D::new().chain_update(&ipad).chain_update(msg).finalize();
            D::new()
                .chain_update(&opad)
                .chain_update(inner)
                .finalize()
                .to_vec()
        }
    }

    #[test]
    fn an_ares_refresh_token_is_never_an_access_token_and_is_told_apart_by_its_life() {
        let mut lax = cfg(SECRET);
        lax.accept_tokens_without_issuer = true;
        let keys = JwtKeys::new(&lax);
        let hs = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let n = now();
        // ARES's shape: sub, email, iat, exp; no iss, no jti.
        let access = forge(
            hs.clone(),
            serde_json::json!({"sub": "u1", "email": "a@b.c", "iat": n, "exp": n + 900}),
            SECRET.as_bytes(),
        );
        let refresh = forge(
            hs.clone(),
            serde_json::json!({"sub": "u1", "email": "a@b.c", "iat": n, "exp": n + 604_800}),
            SECRET.as_bytes(),
        );
        let a = keys.verify(&access).unwrap();
        // An id of its own, the same every time: a logout can end it.
        assert!(a.jti.as_deref().unwrap().starts_with("ares:"));
        assert_eq!(keys.verify(&access).unwrap().jti, a.jti);
        assert_ne!(keys.verify(&access).unwrap().jti, Some("ares:".into()));
        assert!(
            keys.verify(&refresh).unwrap_err().contains("refresh token"),
            "an ARES refresh token passed as an access token"
        );
        assert_eq!(keys.verify_upstream_refresh(&refresh).unwrap().sub, "u1");
        assert!(keys.verify_upstream_refresh(&access).is_err());
        // The gateway's own tokens (with iss) are never ARES refresh tokens.
        let ours = forge(hs.clone(), good_claims(), SECRET.as_bytes());
        assert!(keys.verify_upstream_refresh(&ours).is_err());
        assert_eq!(keys.verify(&ours).unwrap().jti.as_deref(), Some("j1"));
        // Without the migration setting, none of ARES's tokens is anything.
        let strict = JwtKeys::new(&cfg(SECRET));
        assert!(strict.verify_upstream_refresh(&refresh).is_err());
        assert!(strict.verify(&access).is_err());
        // Signed with another key: nothing.
        let forged = forge(
            hs,
            serde_json::json!({"sub": "u1", "iat": n, "exp": n + 604_800}),
            b"another-secret-0123456789abcdefgh",
        );
        assert!(keys.verify_upstream_refresh(&forged).is_err());
    }

    fn good_claims() -> serde_json::Value {
        serde_json::json!({"iss":"ares-gateway","sub":"usr_1","email":"a@b.c","iat":now(),"exp":now()+600,"jti":"j1"})
    }

    #[test]
    fn regression_unknown_crit_refresh_typ_and_future_iat_were_accepted() {
        let keys = JwtKeys::new(&cfg(SECRET));
        let now = now();
        let claims = serde_json::json!({
            "iss": "ares-gateway", "sub": "usr_1", "email": "", "iat": now, "exp": now + 600
        });
        let ok = forge(
            serde_json::json!({"alg": "HS256", "typ": "JWT"}),
            claims.clone(),
            SECRET.as_bytes(),
        );
        assert!(keys.verify(&ok).is_ok());
        let untyped = forge(
            serde_json::json!({"alg": "HS256"}),
            claims.clone(),
            SECRET.as_bytes(),
        );
        assert!(keys.verify(&untyped).is_ok(), "no typ is accepted");
        let crit = forge(
            serde_json::json!({"alg": "HS256", "crit": ["exp-ext"], "exp-ext": 1}),
            claims.clone(),
            SECRET.as_bytes(),
        );
        assert_eq!(keys.verify(&crit), Err("critical header extension"));
        for typ in ["refresh+jwt", "at+jwt", "JWE"] {
            let t = forge(
                serde_json::json!({"alg": "HS256", "typ": typ}),
                claims.clone(),
                SECRET.as_bytes(),
            );
            assert_eq!(keys.verify(&t), Err("token type not accepted"), "{typ}");
        }
        let leeway = 30;
        for (iat, ok) in [
            (now + 3600, false),
            (now + leeway + 5, false),
            (now + leeway - 5, true),
        ] {
            let mut c = claims.clone();
            c["iat"] = iat.into();
            let t = forge(serde_json::json!({"alg": "HS256"}), c, SECRET.as_bytes());
            assert_eq!(keys.verify(&t).is_ok(), ok, "iat {}", iat - now);
        }
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_contract_claims() {
        let keys = JwtKeys::new(&cfg(SECRET));
        let (token, claims) = keys.issue("usr_1", "a@b.c", now()).unwrap();
        let got = keys.verify(&token).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.exp - got.iat, 900);
        assert!(got.aud.is_none());
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        assert!(header.kid.unwrap().starts_with('k'));
    }

    #[test]
    fn attacks_are_refused() {
        let keys = JwtKeys::new(&cfg(SECRET));
        let k = SECRET.as_bytes();
        let hs = serde_json::json!({"alg":"HS256","typ":"JWT"});
        // Baseline: a forged-but-correct token passes, so the refusals below are meaningful.
        assert!(keys.verify(&forge(hs.clone(), good_claims(), k)).is_ok());

        for alg in ["none", "None", "NONE", "nOnE"] {
            let h = URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}"));
            let c = URL_SAFE_NO_PAD.encode(good_claims().to_string());
            assert!(keys.verify(&format!("{h}.{c}.")).is_err(), "alg {alg}");
        }
        let h384 = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS384","typ":"JWT"}"#);
        let c = URL_SAFE_NO_PAD.encode(good_claims().to_string());
        let input = format!("{h384}.{c}");
        let sig = URL_SAFE_NO_PAD.encode(hmac_free::sign384(k, input.as_bytes()));
        assert!(keys.verify(&format!("{input}.{sig}")).is_err(), "HS384");

        assert!(keys
            .verify(&forge(
                hs.clone(),
                good_claims(),
                b"another-key-another-key-another-k"
            ))
            .is_err());
        let mut tampered = forge(hs.clone(), good_claims(), k);
        let other = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"iss":"ares-gateway","sub":"usr_admin","exp":now()+600}).to_string(),
        );
        let parts: Vec<&str> = tampered.split('.').collect();
        tampered = format!("{}.{}.{}", parts[0], other, parts[2]);
        assert!(keys.verify(&tampered).is_err(), "tampered payload");

        let mut no_exp = good_claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(
            keys.verify(&forge(hs.clone(), no_exp, k)).is_err(),
            "no exp"
        );
        let mut str_exp = good_claims();
        str_exp["exp"] = serde_json::json!("9999999999");
        assert!(
            keys.verify(&forge(hs.clone(), str_exp, k)).is_err(),
            "string exp"
        );
        let mut expired = good_claims();
        expired["exp"] = serde_json::json!(now() - 120);
        assert!(
            keys.verify(&forge(hs.clone(), expired, k)).is_err(),
            "expired"
        );
        let mut future = good_claims();
        future["nbf"] = serde_json::json!(now() + 3600);
        assert!(
            keys.verify(&forge(hs.clone(), future, k)).is_err(),
            "future nbf"
        );
        let mut iss = good_claims();
        iss["iss"] = serde_json::json!("someone-else");
        assert!(
            keys.verify(&forge(hs.clone(), iss, k)).is_err(),
            "wrong iss"
        );
        let mut no_sub = good_claims();
        no_sub.as_object_mut().unwrap().remove("sub");
        assert!(
            keys.verify(&forge(hs.clone(), no_sub, k)).is_err(),
            "no sub"
        );
        let mut aud = good_claims();
        aud["aud"] = serde_json::json!("elsewhere");
        assert!(
            keys.verify(&forge(hs.clone(), aud, k)).is_err(),
            "unexpected aud"
        );
        let mut crlf = good_claims();
        crlf["email"] = serde_json::json!("a@b.c\r\nX-Tenant-Id: t1");
        assert!(
            keys.verify(&forge(hs.clone(), crlf, k)).is_err(),
            "header injection"
        );

        for kid in ["../../etc/passwd", "' OR 1=1 --", "k000000000000"] {
            let h = serde_json::json!({"alg":"HS256","typ":"JWT","kid":kid});
            assert!(
                keys.verify(&forge(h, good_claims(), k)).is_err(),
                "kid {kid}"
            );
        }
        assert!(keys
            .verify("rt_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
            .is_err());
        assert!(keys.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_err());
    }

    /// Pins each refusal's reason and each bound at its edge (cargo-mutants found them loose).
    #[test]
    fn every_rule_refuses_with_its_reason_exactly_at_its_bound() {
        assert_eq!((MAX_TOKEN_BYTES, VERIFIED_CACHE_ENTRIES), (8192, 16384));
        let keys = JwtKeys::new(&cfg(SECRET));
        assert_eq!(keys.ttl_secs(), 900);
        let hs = serde_json::json!({"alg": "HS256"});
        let sign = |c: serde_json::Value| forge(hs.clone(), c, SECRET.as_bytes());
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good_claims();
            c[k] = v;
            keys.verify(&sign(c))
        };
        // Size: the bound itself passes the size check; one byte more does not.
        let pad = |n: usize| {
            let t = sign(good_claims());
            format!("{t}{}", "A".repeat(n - t.len()))
        };
        assert_ne!(keys.verify(&pad(MAX_TOKEN_BYTES)), Err("token too large"));
        assert_eq!(
            keys.verify(&pad(MAX_TOKEN_BYTES + 1)),
            Err("token too large")
        );
        // jsonwebtoken's refusals, each with its own reason.
        assert_eq!(with("exp", (now() - 600).into()), Err("expired"));
        assert_eq!(with("nbf", (now() + 600).into()), Err("not yet valid"));
        assert_eq!(
            keys.verify(&forge(
                hs.clone(),
                good_claims(),
                b"another-secret-another-secret-00"
            )),
            Err("bad signature")
        );
        assert_eq!(with("iss", "someone-else".into()), Err("wrong issuer"));
        let mut aud = cfg(SECRET);
        aud.jwt_audience = Some("ares".into());
        let aud_keys = JwtKeys::new(&aud);
        assert_eq!(aud_keys.verify(&sign(good_claims())), Err("missing claim"));
        let mut c = good_claims();
        c["aud"] = "elsewhere".into();
        assert_eq!(aud_keys.verify(&sign(c)), Err("wrong audience"));
        // iat: at most the leeway ahead.
        assert!(with("iat", (now() + 30).into()).is_ok());
        assert_eq!(
            with("iat", (now() + 90).into()),
            Err("issued in the future")
        );
        // No iss: only when tokens without one are accepted.
        let mut bare = good_claims();
        bare.as_object_mut().unwrap().remove("iss");
        assert_eq!(keys.verify(&sign(bare.clone())), Err("missing claim"));
        let mut lax = cfg(SECRET);
        lax.accept_tokens_without_issuer = true;
        assert!(JwtKeys::new(&lax).verify(&sign(bare)).is_ok());
        // sub, email and jti become upstream headers: each bound on its own.
        assert!(with("sub", "s".repeat(128).into()).is_ok());
        assert_eq!(with("sub", "s".repeat(129).into()), Err("bad sub"));
        assert_eq!(with("sub", "".into()), Err("bad sub"));
        assert_eq!(with("sub", "usr 1".into()), Err("bad sub"));
        assert_eq!(with("sub", "usr\u{7f}1".into()), Err("bad sub"));
        assert!(with("email", "e".repeat(320).into()).is_ok());
        assert_eq!(
            with("email", "e".repeat(321).into()),
            Err("bad email claim")
        );
        assert_eq!(with("email", "a b@c.d".into()), Err("bad email claim"));
        assert!(with("email", "".into()).is_ok());
        assert!(with("jti", "j".repeat(128).into()).is_ok());
        assert_eq!(with("jti", "j".repeat(129).into()), Err("bad jti"));
    }

    /// A token without `kid` signed with a previous key is tried against every key: the first
    /// key's bad signature must not end the search.
    #[test]
    fn a_token_without_kid_signed_with_a_previous_key_verifies() {
        let old = "old-secret-old-secret-old-secret-0";
        let mut rotated = cfg(SECRET);
        rotated.jwt_previous_secrets = vec![Secret::new(old.into())];
        let token = forge(
            serde_json::json!({"alg": "HS256"}),
            good_claims(),
            old.as_bytes(),
        );
        assert!(JwtKeys::new(&rotated).verify(&token).is_ok());
        assert_eq!(
            JwtKeys::new(&cfg(SECRET)).verify(&token),
            Err("bad signature")
        );
    }

    #[test]
    fn leeway_tolerates_small_skew_only() {
        let keys = JwtKeys::new(&cfg(SECRET));
        let hs = serde_json::json!({"alg":"HS256"});
        let mut c = good_claims();
        c["exp"] = serde_json::json!(now() - 10);
        assert!(keys
            .verify(&forge(hs.clone(), c, SECRET.as_bytes()))
            .is_ok());
    }

    #[test]
    fn previous_keys_verify_until_removed() {
        let old = "old-secret-old-secret-old-secret-0";
        let old_keys = JwtKeys::new(&cfg(old));
        let (token, _) = old_keys.issue("usr_1", "a@b.c", now()).unwrap();
        let mut rotated = cfg(SECRET);
        rotated.jwt_previous_secrets = vec![Secret::new(old.into())];
        assert!(JwtKeys::new(&rotated).verify(&token).is_ok());
        assert!(JwtKeys::new(&cfg(SECRET)).verify(&token).is_err());
    }

    #[test]
    fn configured_audience_is_issued_and_required() {
        let mut c = cfg(SECRET);
        c.jwt_audience = Some("ares".into());
        let keys = JwtKeys::new(&c);
        let (token, claims) = keys.issue("usr_1", "a@b.c", now()).unwrap();
        assert_eq!(claims.aud.as_deref(), Some("ares"));
        assert!(keys.verify(&token).is_ok());
        let plain = JwtKeys::new(&cfg(SECRET))
            .issue("usr_1", "a@b.c", now())
            .unwrap()
            .0;
        assert!(keys.verify(&plain).is_err());
    }

    #[test]
    fn cached_tokens_pass_until_they_expire_and_failures_are_never_cached() {
        let keys = JwtKeys::new(&cfg(SECRET));
        let t0 = now();
        let (token, claims) = keys.issue("usr_1", "a@example.com", t0).unwrap();
        let first = keys.verify_cached(&token, t0).unwrap();
        assert_eq!(*first, claims);
        let again = keys.verify_cached(&token, t0 + 1).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second call is a cache hit"
        );
        // Past exp + leeway (30 s) the cached entry is not used: the token is checked afresh.
        let fresh = keys.verify_cached(&token, claims.exp + 31).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &fresh),
            "an expired entry is not served"
        );
        // An entry whose exp has passed never answers, whatever the token text.
        let mut stale = claims.clone();
        stale.exp = t0 - 100;
        keys.verified.insert("stale-token".into(), Arc::new(stale));
        assert!(keys.verify_cached("stale-token", t0).is_err());
        assert!(!keys.verified.contains_key("stale-token"), "dropped");
        // A token expired by the clock is refused.
        let (old, _) = keys.issue("usr_1", "", t0 - 10_000).unwrap();
        assert!(keys.verify_cached(&old, t0).is_err());

        // A tampered token is refused every time and never remembered.
        let mut bad = token.clone();
        bad.pop();
        bad.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(keys.verify_cached(&bad, t0).is_err());
        assert!(keys.verify_cached(&bad, t0).is_err());
        assert!(!keys.verified.contains_key(bad.as_str()));
    }

    #[test]
    fn a_new_key_set_starts_with_an_empty_cache() {
        let old = JwtKeys::new(&cfg(SECRET));
        let (token, _) = old.issue("usr_1", "", now()).unwrap();
        assert!(old.verify_cached(&token, now()).is_ok());
        let rotated = JwtKeys::new(&cfg("another-secret-0123456789abcdef0123"));
        assert!(rotated.verify_cached(&token, now()).is_err());
    }

    #[test]
    fn the_cache_is_bounded() {
        let keys = JwtKeys::new(&cfg(SECRET));
        let t = now();
        for i in 0..VERIFIED_CACHE_ENTRIES + 10 {
            let (token, _) = keys.issue(&format!("usr_{i}"), "", t).unwrap();
            assert!(keys.verify_cached(&token, t).is_ok());
            assert!(keys.verified.len() <= VERIFIED_CACHE_ENTRIES);
        }
    }
}
