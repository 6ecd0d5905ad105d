//! Tokens the gateway mints for an upstream that authenticates every request itself (ARES).
//!
//! ARES verifies `Authorization: Bearer <jwt>` with its own `JWT_SECRET` and jsonwebtoken's default
//! validation (HS256, `exp` required, 60 s leeway, no `iss` expected, and any `aud` refused because
//! it expects none). So a minted token is HS256 with the upstream's secret, carries ARES's claims
//! (`sub`, `email`, `iat`, `exp`) plus who the gateway let in (`tenant_id`, `tier`, `key_id`,
//! `auth_method`) and the configured static claims (`roles: {ares: [user]}`), and no `aud`.
//!
//! A minted token is never a client credential at the gateway: it carries the issuer
//! [`MINTED_ISSUER`] and the claim `token_use: "upstream"`, and the verifier refuses every token
//! with a `token_use` claim whatever its signature (see `jwt.rs`).
//!
//! With `mint_signing: gateway_key` a token is signed instead with the gateway's own EdDSA/ES256
//! key (its `kid` in the header), which a newer ARES verifies against the gateway's JWKS
//! (`ERUKA_JWKS_URL`): then `roles` is that generation's wire shape, `{"ares": [{"role": <name>,
//! "resource_id": <tenant>}]}` (the names from `mint_claims.roles.ares`, `user` by default; an
//! admin's is `admin`), and `token_version` is the user's (0 for keys and admins).
//!
//! Minting costs a signature, JSON and base64 per token, so a principal's token is reused while more
//! than half of its life is left: a client calling steadily pays it once per half lifetime.

use std::sync::Arc;

use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::Identity;
use crate::config::keys::KeyPair;
use crate::util::FastMap;

/// The `iss` of minted tokens (ARES does not check it; the gateway never accepts it).
pub const MINTED_ISSUER: &str = "ares-gateway/upstream";

/// Tokens kept for reuse at most per minter; past it the expired ones go, then all.
const CACHE_ENTRIES: usize = 64 * 1024;

/// What signs minted tokens: the upstream's HS256 secret, or the gateway's key pair.
pub enum MintKey<'a> {
    Secret(&'a [u8]),
    Pair(&'a KeyPair),
}

/// How an upstream's tokens are made: its key, their lifetime, and the static claims.
pub struct Minter {
    key: EncodingKey,
    header: Header,
    /// Signed with the gateway's key pair: roles in the JWKS generation's shape.
    role_names: Option<Vec<String>>,
    ttl_secs: u64,
    /// Claims added to every token (`roles` for ARES's `roles.ares` rule), as configured.
    extra: serde_json::Map<String, serde_json::Value>,
    /// Minted tokens of users, by `sub`, and of API keys, by key id.
    users: FastMap<Box<str>, Minted>,
    keys: FastMap<Box<str>, Minted>,
}

#[derive(Clone)]
struct Minted {
    header: HeaderValue,
    /// Reused until then (half its life); it stays valid upstream for the other half.
    reuse_until: u64,
}

#[derive(Serialize)]
struct UpstreamClaims<'a> {
    iss: &'static str,
    sub: &'a str,
    email: &'a str,
    iat: u64,
    exp: u64,
    auth_method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    token_use: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_version: Option<u64>,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

impl Minter {
    /// `extra` must not name a claim the gateway sets (validated with the config).
    pub fn new(
        key: MintKey<'_>,
        ttl_secs: u64,
        mut extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, String> {
        let (key, header, role_names) = match key {
            MintKey::Secret(secret) => (
                EncodingKey::from_secret(secret),
                Header::new(Algorithm::HS256),
                None,
            ),
            MintKey::Pair(pair) => {
                let key = pair
                    .encoding_key()
                    .ok_or("the gateway's key has no private part")?;
                let mut header = Header::new(pair.alg());
                header.kid = Some(pair.kid().to_string());
                // `roles.ares` names the roles; the shape is the gateway's to set.
                let names: Vec<String> = extra
                    .remove("roles")
                    .and_then(|r| r.get("ares").cloned())
                    .and_then(|a| a.as_array().cloned())
                    .map(|a| {
                        a.iter()
                            .filter_map(|n| n.as_str().map(str::to_string))
                            .collect()
                    })
                    .filter(|n: &Vec<String>| !n.is_empty())
                    .unwrap_or_else(|| vec!["user".to_string()]);
                (key, header, Some(names))
            }
        };
        Ok(Minter {
            key,
            header,
            role_names,
            ttl_secs: ttl_secs.max(1),
            extra,
            users: FastMap::default(),
            keys: FastMap::default(),
        })
    }

    /// `roles` in the JWKS generation's shape: each configured name, for the tenant if any.
    fn roles(&self, identity: &Identity) -> Option<serde_json::Value> {
        let names = self.role_names.as_ref()?;
        let entries: Vec<serde_json::Value> = match identity {
            Identity::Admin { .. } => vec![serde_json::json!({"role": "admin"})],
            Identity::ApiKey { tenant, .. } => names
                .iter()
                .map(|n| serde_json::json!({"role": n, "resource_id": tenant.id}))
                .collect(),
            _ => names
                .iter()
                .map(|n| serde_json::json!({"role": n}))
                .collect(),
        };
        Some(serde_json::json!({ "ares": entries }))
    }

    /// `Bearer <token>` for this principal, reused while more than half its life is left.
    /// `None` for principals that carry no identity (anonymous routes).
    pub fn authorization(&self, identity: &Identity, now: u64) -> Option<HeaderValue> {
        let (cache, id) = match identity {
            Identity::User(c) => (&self.users, c.sub.as_str()),
            Identity::ApiKey { key, .. } => (&self.keys, key.id.as_str()),
            // Rare, and never from a cache a user's `sub` could name.
            Identity::Admin { .. } => return self.mint(identity, now).map(|m| m.header),
            Identity::Anonymous => return None,
        };
        if let Some(m) = cache.get(id) {
            if now < m.reuse_until {
                return Some(m.header.clone());
            }
        }
        let minted = self.mint(identity, now)?;
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, m| now < m.reuse_until);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(id.into(), minted.clone());
        Some(minted.header)
    }

    fn mint(&self, identity: &Identity, now: u64) -> Option<Minted> {
        let mut claims = UpstreamClaims {
            iss: MINTED_ISSUER,
            sub: "",
            email: "",
            iat: now,
            exp: now + self.ttl_secs,
            auth_method: "jwt",
            tenant_id: None,
            tier: None,
            key_id: None,
            token_use: "upstream",
            roles: self.roles(identity),
            token_version: None,
            extra: &self.extra,
        };
        match identity {
            Identity::User(c) => {
                claims.sub = &c.sub;
                claims.email = &c.email;
                if self.role_names.is_some() {
                    claims.token_version = Some(c.tv.unwrap_or(0));
                }
            }
            Identity::ApiKey { tenant, key } => {
                // ARES keys its data on `sub`: a tenant's keys share the tenant's.
                claims.sub = &tenant.id;
                claims.auth_method = "api_key";
                claims.tenant_id = Some(&tenant.id);
                claims.tier = Some(&tenant.tier);
                claims.key_id = Some(&key.id);
            }
            Identity::Admin { .. } => {
                claims.sub = "admin";
                claims.auth_method = "admin";
            }
            Identity::Anonymous => return None,
        }
        if self.role_names.is_some() && claims.token_version.is_none() {
            claims.token_version = Some(0);
        }
        let token = match jsonwebtoken::encode(&self.header, &claims, &self.key) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "upstream token not minted");
                return None;
            }
        };
        let mut value = String::with_capacity(token.len() + 7);
        value.push_str("Bearer ");
        value.push_str(&token);
        let mut header = HeaderValue::from_str(&value).ok()?;
        header.set_sensitive(true);
        Some(Minted {
            header,
            reuse_until: now + self.ttl_secs / 2,
        })
    }
}

/// A minter per upstream, by index in `config.upstreams` (`None`: that upstream mints nothing).
pub type Minters = Vec<Option<Arc<Minter>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::Claims;
    use crate::store::{ApiKeyRecord, Tenant};
    use jsonwebtoken::{DecodingKey, Validation};

    const SECRET: &[u8] = b"ares-jwt-secret-0123456789abcdef0123";

    fn user_claims() -> Claims {
        Claims {
            iss: Some("ares-gateway".into()),
            sub: "usr_1".into(),
            email: "a@example.com".into(),
            iat: 0,
            exp: u64::MAX,
            jti: None,
            nbf: None,
            aud: None,
            token_use: None,
            tv: None,
        }
    }

    fn user() -> Identity {
        Identity::User(Arc::new(user_claims()))
    }

    fn roles() -> serde_json::Map<String, serde_json::Value> {
        serde_json::json!({"roles": {"ares": ["user"]}})
            .as_object()
            .cloned()
            .unwrap()
    }

    /// What ARES does: jsonwebtoken's default validation with its secret.
    fn ares_decode(header: &HeaderValue) -> serde_json::Value {
        let token = header.to_str().unwrap().strip_prefix("Bearer ").unwrap();
        jsonwebtoken::decode::<serde_json::Value>(
            token,
            &DecodingKey::from_secret(SECRET),
            &Validation::default(),
        )
        .unwrap()
        .claims
    }

    #[test]
    fn a_users_token_passes_ares_default_validation_with_its_claims() {
        let m = Minter::new(MintKey::Secret(SECRET), 60, roles()).unwrap();
        let now = crate::util::unix_now();
        let h = m.authorization(&user(), now).unwrap();
        assert!(h.is_sensitive());
        let c = ares_decode(&h);
        assert_eq!(c["sub"], "usr_1");
        assert_eq!(c["email"], "a@example.com");
        assert_eq!(c["iat"], now);
        assert_eq!(c["exp"], now + 60);
        assert_eq!(c["auth_method"], "jwt");
        assert_eq!(c["roles"]["ares"][0], "user");
        assert_eq!(c["token_use"], "upstream");
        assert!(
            c.get("aud").is_none(),
            "ARES refuses an aud it was not told"
        );
        assert!(c.get("tenant_id").is_none());
    }

    #[test]
    fn an_api_keys_token_names_its_tenant_and_key() {
        let m = Minter::new(MintKey::Secret(SECRET), 60, roles()).unwrap();
        let tenant = Tenant {
            id: "ten_1".into(),
            name: "Acme".into(),
            tier: "pro".into(),
            status: crate::store::TenantStatus::Active,
            created_at: 0,
            limits: Default::default(),
        };
        let key = ApiKeyRecord {
            id: "key_1".into(),
            tenant_id: "ten_1".into(),
            key_hash: "h".into(),
            key_prefix: "ares_x".into(),
            name: "k".into(),
            scopes: vec!["full".into()],
            is_active: true,
            created_at: 0,
            expires_at: None,
            last_used_at: None,
            imported: false,
            limits: Default::default(),
        };
        let identity = Identity::ApiKey {
            tenant: Arc::new(tenant),
            key: Arc::new(key),
        };
        let c = ares_decode(&m.authorization(&identity, crate::util::unix_now()).unwrap());
        assert_eq!(c["sub"], "ten_1");
        assert_eq!(c["tenant_id"], "ten_1");
        assert_eq!(c["tier"], "pro");
        assert_eq!(c["key_id"], "key_1");
        assert_eq!(c["auth_method"], "api_key");
        assert!(m.authorization(&Identity::Anonymous, 0).is_none());
    }

    #[test]
    fn a_user_whose_sub_is_admin_never_gets_the_admin_token() {
        let m = Minter::new(MintKey::Secret(SECRET), 60, Default::default()).unwrap();
        let now = crate::util::unix_now();
        let admin = m
            .authorization(&Identity::Admin { secret_index: 0 }, now)
            .unwrap();
        assert_eq!(ares_decode(&admin)["auth_method"], "admin");
        let named_admin = Identity::User(Arc::new(Claims {
            sub: "admin".into(),
            ..user_claims()
        }));
        let c = ares_decode(&m.authorization(&named_admin, now).unwrap());
        assert_eq!(c["auth_method"], "jwt");
    }

    #[test]
    fn a_token_is_reused_for_half_its_life_then_minted_again() {
        let m = Minter::new(MintKey::Secret(SECRET), 60, Default::default()).unwrap();
        let first = m.authorization(&user(), 1_000).unwrap();
        assert_eq!(m.authorization(&user(), 1_029).unwrap(), first);
        let later = m.authorization(&user(), 1_030).unwrap();
        assert_ne!(later, first);
    }
}
