//! Who is calling: [`authenticate`] turns a route's credential rule and the request headers into
//! a [`Verified`] caller, and [`authorize`] checks what it may do on the route.
//!
//! Two types, both built in this module only:
//! - [`Verified`]: the credential checked (signature, claims, key, tenant), but a user token's
//!   revocation (logout) not yet: the Limiter checks it together with the limits, in one store
//!   round trip, and only the Limiter's `Admitted` reaches forwarding.
//! - [`Principal`]: revocation checked too ([`Verified::checked`], [`authenticate_jwt`]): what
//!   the gateway's own endpoints act for.
//!
//! So nothing unauthenticated, and no revoked token, reaches a protected upstream by accident.

pub mod admin;
pub mod api_key;
pub mod jwt;
pub mod mint;
pub mod password;
pub mod successor;

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, AUTHORIZATION};

use crate::error::GatewayError;
use crate::route::{AuthKind, Route};
use crate::store::{ApiKeyRecord, Lookup, Role, Tenant, TenantStatus};
use crate::util::unix_now;

use admin::AdminSecrets;
use api_key::KeyCache;
use jwt::JwtKeys;

pub use jwt::Claims;

/// Who a request is, its credential verified and a user token's revocation checked. Built in
/// this module only.
#[derive(Debug, Clone)]
pub struct Principal(Identity);

/// Who a request says it is, its credential verified; a user token's revocation is still to be
/// checked (the Limiter does it with the limits). Built by [`authenticate`] only.
#[derive(Debug, Clone)]
pub struct Verified(Identity);

impl Verified {
    pub fn identity(&self) -> &Identity {
        &self.0
    }

    /// The tenant or user id, for logs.
    pub fn subject(&self) -> &str {
        subject(&self.0)
    }

    pub fn auth_method(&self) -> Option<&'static str> {
        auth_method(&self.0)
    }

    /// The principal, once a user token is known not to be revoked (other callers need no
    /// check).
    pub async fn checked(self, lookup: &Role<dyn Lookup>) -> Result<Principal, GatewayError> {
        let principal = Principal(self.0);
        check_revoked(&principal, lookup).await?;
        Ok(principal)
    }

    /// A verified caller for benchmarks and tests (`test-util` builds only): the pipeline's
    /// come from [`authenticate`].
    #[cfg(feature = "test-util")]
    pub fn for_test(identity: Identity) -> Verified {
        Verified(identity)
    }
}

fn subject(identity: &Identity) -> &str {
    match identity {
        Identity::Anonymous => "-",
        Identity::ApiKey { tenant, .. } => &tenant.id,
        Identity::User(c) => &c.sub,
        Identity::Admin { .. } => "admin",
    }
}

fn auth_method(identity: &Identity) -> Option<&'static str> {
    match identity {
        Identity::Anonymous => None,
        Identity::ApiKey { .. } => Some("api_key"),
        Identity::User(_) => Some("jwt"),
        Identity::Admin { .. } => Some("admin"),
    }
}

/// The kinds of caller.
#[derive(Debug, Clone)]
pub enum Identity {
    /// A route without a credential rule.
    Anonymous,
    /// An API key of an active tenant.
    ApiKey {
        tenant: Arc<Tenant>,
        key: Arc<ApiKeyRecord>,
    },
    /// A user holding a valid access token.
    User(Arc<Claims>),
    /// A holder of the admin secret (index into the configured list, for the audit log).
    Admin { secret_index: usize },
}

impl Principal {
    pub fn identity(&self) -> &Identity {
        &self.0
    }

    /// The tenant or user id, for logs.
    pub fn subject(&self) -> &str {
        subject(&self.0)
    }

    pub fn auth_method(&self) -> Option<&'static str> {
        auth_method(&self.0)
    }
}

/// The token of `Authorization: Bearer <token>` (scheme word in any case).
///
/// `Ok(None)` when there is no Authorization header; `Err` when it is there but unusable
/// (another scheme, several headers, empty token).
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::InvalidToken);
    }
    let bytes = value.as_bytes();
    let space = memchr::memchr(b' ', bytes).ok_or(GatewayError::InvalidToken)?;
    let (scheme, rest) = (&bytes[..space], &bytes[space..]);
    let start = rest
        .iter()
        .position(|&b| b != b' ')
        .ok_or(GatewayError::InvalidToken)?;
    let end = rest.iter().rposition(|&b| b != b' ').unwrap_or(start);
    let token = &rest[start..=end];
    // Every byte visible ASCII (so no space inside, and valid UTF-8), checked without an early
    // exit; `from_utf8` below then only confirms it.
    let invisible = token.iter().fold(0u8, |bad, &b| {
        bad | u8::from(b.wrapping_sub(0x21) > 0x7e - 0x21)
    });
    if !scheme.eq_ignore_ascii_case(b"bearer") || invisible != 0 {
        return Err(GatewayError::InvalidToken);
    }
    std::str::from_utf8(token)
        .map(Some)
        .map_err(|_| GatewayError::InvalidToken)
}

/// The token of `Sec-WebSocket-Protocol: bearer, <token>`: a browser's `new WebSocket(url,
/// ["bearer", token])` cannot set `Authorization`. The entry after `bearer` is the token.
pub fn protocol_token(headers: &HeaderMap) -> Option<&str> {
    let mut entries = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    entries.find(|e| e.eq_ignore_ascii_case("bearer"))?;
    entries.next().filter(|t| !t.is_empty())
}

/// The `access_token` query parameter, on routes that allow it (EventSource cannot set headers).
fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .filter(|t| !t.is_empty())
}

/// What authentication reads: the verifiers of one config and the credential caches in front of
/// the store. Nothing else of the running gateway.
pub struct Credentials<'a> {
    pub jwt: &'a JwtKeys,
    pub admin: &'a AdminSecrets,
    /// Validated keys and tenants, and the keys known not to exist.
    pub keys: &'a KeyCache,
    /// The store's lookup role: nothing else of the store reaches authentication.
    pub lookup: &'a Role<dyn Lookup>,
    /// How long a cached key or tenant stays usable while the store cannot answer.
    pub outage_grace: Duration,
}

/// Establish who the caller is, by the route's rule (a user token's revocation is the caller's
/// to check: [`Verified::checked`], or the Limiter with the limits).
pub async fn authenticate(
    route: &Route,
    headers: &HeaderMap,
    query: Option<&str>,
    creds: &Credentials<'_>,
) -> Result<Verified, GatewayError> {
    match route.auth {
        AuthKind::None => Ok(Verified(Identity::Anonymous)),
        AuthKind::Admin => authenticate_admin(headers, creds.admin).map(|p| Verified(p.0)),
        AuthKind::Jwt => {
            // Authorization first; then the forms a browser can send, where the route allows
            // them: a WebSocket subprotocol, the query (EventSource).
            let token = match bearer(headers)? {
                Some(t) => t,
                None => route
                    .websocket
                    .then(|| protocol_token(headers))
                    .flatten()
                    .or_else(|| route.query_token.then(|| query_token(query)).flatten())
                    .ok_or(GatewayError::MissingCredentials)?,
            };
            verify_jwt(token, creds.jwt).map(|p| Verified(p.0))
        }
        AuthKind::ApiKey => {
            let token = bearer(headers)
                .map_err(|_| GatewayError::InvalidApiKey)?
                .ok_or(GatewayError::MissingCredentials)?;
            authenticate_key(token, creds).await.map(|p| Verified(p.0))
        }
    }
}

/// [`authenticate`] with a user token's revocation checked at once.
pub async fn authenticate_now(
    route: &Route,
    headers: &HeaderMap,
    query: Option<&str>,
    creds: &Credentials<'_>,
) -> Result<Principal, GatewayError> {
    authenticate(route, headers, query, creds)
        .await?
        .checked(creds.lookup)
        .await
}

pub fn authenticate_admin(
    headers: &HeaderMap,
    secrets: &AdminSecrets,
) -> Result<Principal, GatewayError> {
    let mut values = headers.get_all("x-admin-secret").iter();
    let value = values.next().ok_or(GatewayError::MissingCredentials)?;
    if values.next().is_some() {
        return Err(GatewayError::InvalidAdminSecret);
    }
    secrets
        .verify(value.as_bytes())
        .map(|secret_index| Principal(Identity::Admin { secret_index }))
        .ok_or(GatewayError::InvalidAdminSecret)
}

/// Verify an access token and check it was not revoked (logout).
pub async fn authenticate_jwt(
    token: &str,
    creds: &Credentials<'_>,
) -> Result<Principal, GatewayError> {
    let principal = verify_jwt(token, creds.jwt)?;
    check_revoked(&principal, creds.lookup).await?;
    Ok(principal)
}

/// Verify an access token's signature and claims; revocation is the caller's to check.
fn verify_jwt(token: &str, keys: &JwtKeys) -> Result<Principal, GatewayError> {
    let claims = keys.verify_cached(token, unix_now()).map_err(|reason| {
        tracing::debug!(reason, "access token refused");
        GatewayError::InvalidToken
    })?;
    Ok(Principal(Identity::User(claims)))
}

/// Refuse a user's access token that was revoked (logout). Other principals pass.
async fn check_revoked(
    principal: &Principal,
    lookup: &Role<dyn Lookup>,
) -> Result<(), GatewayError> {
    let Identity::User(claims) = principal.identity() else {
        return Ok(());
    };
    let token = crate::store::TokenRef {
        subject: &claims.sub,
        jti: claims.jti.as_deref(),
        issued_at: claims.iat,
    };
    match lookup.call(lookup.is_token_revoked(token)).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(revoked()),
        // A logout cannot have been recorded while the store is down either; refusing every
        // user for the length of an outage would be worse. Logged, and visible in metrics.
        Err(e) => {
            tracing::warn!(error = %e, "revocation check skipped: store unavailable");
            Ok(())
        }
    }
}

/// The refusal of a revoked access token (logged at debug, like every token refusal).
pub fn revoked() -> GatewayError {
    tracing::debug!(reason = "revoked", "access token refused");
    GatewayError::InvalidToken
}

/// Look an API key up (format and checksum first, then the caches, then the store).
pub async fn authenticate_key(
    raw: &str,
    creds: &Credentials<'_>,
) -> Result<Principal, GatewayError> {
    if api_key::shape(raw) == api_key::KeyShape::Invalid {
        return Err(GatewayError::InvalidApiKey);
    }
    let hash = api_key::hash(raw);
    let cache = creds.keys;
    let cached = cache.key(&hash);
    crate::metrics::get().cache("api_key", cached.is_some());
    let key = match cached {
        Some(k) => k,
        None if cache.is_known_missing(&hash) => return Err(GatewayError::InvalidApiKey),
        None => match creds.lookup.call(creds.lookup.get_api_key(&hash)).await {
            Ok(Some(k)) => {
                let k = Arc::new(k);
                cache.put_key(k.clone());
                k
            }
            Ok(None) => {
                cache.put_missing(&hash);
                return Err(GatewayError::InvalidApiKey);
            }
            // Keys validated within the last cache TTL keep working through an outage;
            // unknown keys never pass.
            Err(e) => cache.stale_key(&hash, creds.outage_grace).ok_or(e)?,
        },
    };
    let now = unix_now();
    if !key.is_active || key.expires_at.is_some_and(|exp| exp <= now) {
        return Err(GatewayError::InvalidApiKey);
    }
    let tenant = tenant(&key.tenant_id, creds).await?;
    let Some(tenant) = tenant else {
        return Err(GatewayError::InvalidApiKey);
    };
    if tenant.status == TenantStatus::Suspended {
        return Err(GatewayError::TenantSuspended);
    }
    cache.touch(&key.key_hash, now);
    Ok(Principal(Identity::ApiKey { tenant, key }))
}

async fn tenant(id: &str, creds: &Credentials<'_>) -> Result<Option<Arc<Tenant>>, GatewayError> {
    let cached = creds.keys.tenant(id);
    crate::metrics::get().cache("tenant", cached.is_some());
    if let Some(t) = cached {
        return Ok(Some(t));
    }
    match creds.lookup.call(creds.lookup.get_tenant(id)).await {
        Ok(Some(t)) => {
            let t = Arc::new(t);
            creds.keys.put_tenant(t.clone());
            Ok(Some(t))
        }
        Ok(None) => Ok(None),
        Err(e) => match creds.keys.stale_tenant(id, creds.outage_grace) {
            Some(t) => Ok(Some(t)),
            None => Err(e),
        },
    }
}

/// What the principal may do on this route: API keys need the route's scope or `full`.
pub fn authorize(route: &Route, principal: &Verified) -> Result<(), GatewayError> {
    if let (Some(scope), Identity::ApiKey { key, .. }) = (&route.required_scope, &principal.0) {
        let allowed = key.scopes.iter().any(|s| s == scope || s == "full");
        if !allowed {
            return Err(GatewayError::Forbidden);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_strict() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let h = headers(&[("authorization", &format!("{scheme} tok"))]);
            assert_eq!(bearer(&h).unwrap(), Some("tok"));
        }
        assert_eq!(bearer(&headers(&[])).unwrap(), None);
        for bad in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Token x",
        ] {
            assert!(
                bearer(&headers(&[("authorization", bad)])).is_err(),
                "{bad}"
            );
        }
        let two = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(bearer(&two).is_err());
        let padded = headers(&[("authorization", "Bearer   ares_tok.x-y_z  ")]);
        assert_eq!(bearer(&padded).unwrap(), Some("ares_tok.x-y_z"));
        for bad in [
            &b"Bearer a\tb"[..],
            b"Bearer \tab",
            b"Bearer tok\xc3\xa9",
            b"B\xc3arer tok",
        ] {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_bytes(bad).unwrap());
            assert!(bearer(&h).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn query_token_is_found_only_by_exact_name() {
        assert_eq!(query_token(Some("a=1&access_token=xyz")), Some("xyz"));
        assert_eq!(query_token(Some("my_access_token=xyz")), None);
        assert_eq!(query_token(Some("access_token=")), None);
        assert_eq!(query_token(None), None);
    }

    /// Authentication with its narrow interfaces only: no AppState, no sockets.
    mod with_credentials {
        use super::*;
        use crate::route::{Credential, Target, Upstream};
        use crate::store::MemoryStore;
        use std::time::Duration;

        struct Fixture {
            jwt: JwtKeys,
            admin: AdminSecrets,
            keys: KeyCache,
            store: crate::store::StoreHandle,
            lookup: Role<dyn Lookup>,
        }

        impl Fixture {
            fn new() -> Fixture {
                let cfg = jwt::tests::cfg("auth-unit-secret-0123456789abcdef0123");
                let store = crate::store::StoreHandle::new(
                    Arc::new(MemoryStore::new()),
                    Duration::from_secs(1),
                );
                Fixture {
                    jwt: JwtKeys::new(&cfg),
                    admin: AdminSecrets::new(&[crate::util::Secret::new(
                        "auth-unit-admin-secret".into(),
                    )]),
                    keys: KeyCache::new(Duration::from_secs(30)),
                    lookup: store.lookup(),
                    store,
                }
            }

            fn creds(&self) -> Credentials<'_> {
                Credentials {
                    jwt: &self.jwt,
                    admin: &self.admin,
                    keys: &self.keys,
                    lookup: &self.lookup,
                    outage_grace: Duration::from_secs(60),
                }
            }
        }

        fn route(auth: AuthKind) -> Route {
            let up = Arc::new(
                Upstream::parse(
                    "u",
                    "http://127.0.0.1:1",
                    crate::config::defaults::upstream_timeouts(),
                )
                .unwrap(),
            );
            Route::new(
                "/r/".into(),
                auth,
                Target::Upstream(up),
                None,
                None,
                Credential::None,
                false,
                false,
            )
        }

        fn auth_header(value: &str) -> HeaderMap {
            headers(&[("authorization", value)])
        }

        #[tokio::test]
        async fn an_api_key_is_found_by_hash_and_its_tenant_must_be_active() {
            let f = Fixture::new();
            let new = api_key::generate();
            let tenant = Tenant {
                id: "ten_1".into(),
                name: "T".into(),
                tier: "pro".into(),
                status: TenantStatus::Active,
                created_at: 0,
                limits: Default::default(),
            };
            f.store.records().put_tenant(&tenant).await.unwrap();
            let record = ApiKeyRecord {
                id: "key_1".into(),
                tenant_id: "ten_1".into(),
                key_hash: new.hash.clone(),
                key_prefix: new.prefix.clone(),
                name: "k".into(),
                scopes: vec!["chat".into()],
                is_active: true,
                created_at: 0,
                expires_at: None,
                last_used_at: None,
                imported: false,
                limits: Default::default(),
            };
            f.store.records().create_api_key(&record).await.unwrap();
            let r = route(AuthKind::ApiKey);
            let h = auth_header(&format!("Bearer {}", new.raw));
            let p = authenticate(&r, &h, None, &f.creds()).await.unwrap();
            assert_eq!(p.subject(), "ten_1");
            assert_eq!(p.auth_method(), Some("api_key"));
            // A scope the key lacks.
            let mut scoped = route(AuthKind::ApiKey);
            scoped.required_scope = Some("ingest".into());
            assert!(matches!(
                authorize(&scoped, &p),
                Err(GatewayError::Forbidden)
            ));
            // Suspended: refused although the key is cached.
            let suspended = Tenant {
                status: TenantStatus::Suspended,
                ..tenant
            };
            f.store.records().put_tenant(&suspended).await.unwrap();
            f.keys.invalidate_tenant("ten_1");
            let err = authenticate_now(&r, &h, None, &f.creds())
                .await
                .unwrap_err();
            assert!(matches!(err, GatewayError::TenantSuspended), "{err:?}");
            // A key that fails its checksum never reaches the store. (Regression: the typo
            // replaced the last character with `x`, which one key in 62 already ends with: the
            // "typo" was then the key itself.)
            let last = new.raw.chars().last().unwrap();
            let other = if last == 'x' { 'y' } else { 'x' };
            let typo = auth_header(&format!("Bearer {}{other}", &new.raw[..new.raw.len() - 1]));
            let err = authenticate_now(&r, &typo, None, &f.creds())
                .await
                .unwrap_err();
            assert!(matches!(err, GatewayError::InvalidApiKey), "{err:?}");
        }

        #[tokio::test]
        async fn a_jwt_is_verified_and_a_logged_out_one_refused() {
            let f = Fixture::new();
            let (token, claims) = f
                .jwt
                .issue("usr_1", "a@example.com", crate::util::unix_now())
                .unwrap();
            let r = route(AuthKind::Jwt);
            let h = auth_header(&format!("Bearer {token}"));
            let p = authenticate_now(&r, &h, None, &f.creds()).await.unwrap();
            assert_eq!(p.subject(), "usr_1");
            let jti = claims.jti.unwrap();
            f.store
                .records()
                .revoke_jti("usr_1", &jti, claims.exp)
                .await
                .unwrap();
            let err = authenticate_now(&r, &h, None, &f.creds())
                .await
                .unwrap_err();
            assert!(matches!(err, GatewayError::InvalidToken));
            // Checked later with the limits: not here.
            assert!(authenticate(&r, &h, None, &f.creds()).await.is_ok());
            // The query token only where the route allows it.
            let query = format!("access_token={token}");
            let none = HeaderMap::new();
            let err = authenticate(&r, &none, Some(&query), &f.creds())
                .await
                .unwrap_err();
            assert!(matches!(err, GatewayError::MissingCredentials));
            let mut q = route(AuthKind::Jwt);
            q.query_token = true;
            assert!(authenticate(&q, &none, Some(&query), &f.creds())
                .await
                .is_ok());
        }

        #[tokio::test]
        async fn the_admin_secret_and_the_wrong_kind_of_credential() {
            let f = Fixture::new();
            let r = route(AuthKind::Admin);
            let ok = headers(&[("x-admin-secret", "auth-unit-admin-secret")]);
            let p = authenticate_now(&r, &ok, None, &f.creds()).await.unwrap();
            assert_eq!(p.auth_method(), Some("admin"));
            let bad = headers(&[("x-admin-secret", "auth-unit-admin-secreT")]);
            let err = authenticate_now(&r, &bad, None, &f.creds())
                .await
                .unwrap_err();
            assert!(matches!(err, GatewayError::InvalidAdminSecret));
            // A JWT on an API-key route is an invalid key, not a pass.
            let (token, _) = f.jwt.issue("usr_1", "", crate::util::unix_now()).unwrap();
            let k = route(AuthKind::ApiKey);
            let err = authenticate_now(
                &k,
                &auth_header(&format!("Bearer {token}")),
                None,
                &f.creds(),
            )
            .await
            .unwrap_err();
            assert!(matches!(err, GatewayError::InvalidApiKey), "{err:?}");
        }
    }
}
