//! `/api/auth/*`: register, login, refresh, logout, me — exactly as the ARES auth docs show.
//!
//! Every endpoint here is limited per client IP (falling back to per-replica limits when the
//! store fails, whatever the routes' policy: login limits never silently disappear); failed
//! logins are also limited per
//! (account, IP) and per account, counted only on failure, so a victim's account cannot be
//! locked from one address.

use http::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::{self, check_name, segments};
use crate::auth::password::{self, Password};
use crate::auth::{self, Identity};
use crate::body::{self, Body, RequestBody};
use crate::error::{GatewayError, StoreError};
use crate::limiter::{self, LimitPolicy, Scope};
use crate::ratelimit::FailurePolicy;
use crate::state::{AppState, RequestScope};
use crate::store::{RefreshRecord, User};
use crate::util::{random_token, unix_now};

const REFRESH_PREFIX: &str = "rt_";
/// 43 alphanumerics carry 256 bits.
const REFRESH_RANDOM_LEN: usize = 43;

#[derive(Deserialize)]
struct RegisterRequest {
    email: String,
    password: Password,
    name: String,
}

#[derive(Deserialize)]
struct LoginRequest {
    email: String,
    password: Password,
}

#[derive(Deserialize)]
struct PasswordChange {
    current_password: Password,
    new_password: Password,
}

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

/// A body that may leave the refresh token to the cookie (cookie sessions).
#[derive(Deserialize)]
struct MaybeRefreshRequest {
    #[serde(default)]
    refresh_token: Option<String>,
}

/// The refresh token a refresh or logout presents: in the JSON body, or (cookie sessions) in
/// the cookie, which then needs an allowed Origin and `X-Requested-With`.
async fn presented_refresh(
    s: &RequestScope<'_>,
    req: Request<RequestBody>,
) -> Result<String, GatewayError> {
    let snap = s.snap;
    let limit = snap.config.server.json_body_limit;
    if !snap.config.auth.cookies {
        let body: RefreshRequest = api::json::read_request_json(req, limit).await?;
        return Ok(body.refresh_token);
    }
    let cookie = api::cookie::read(req.headers()).map(str::to_string);
    let forgery = api::cookie::check_forgery(req.headers(), &snap.config.server.cors_origins);
    let has_body = req.headers().contains_key(http::header::CONTENT_TYPE)
        || req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v != "0");
    let body = if has_body {
        let b: MaybeRefreshRequest = api::json::read_request_json(req, limit).await?;
        b.refresh_token
    } else {
        None
    };
    match (body, cookie) {
        (Some(token), _) => Ok(token),
        (None, Some(token)) => forgery.map(|()| token),
        (None, None) => Err(GatewayError::InvalidRefreshToken),
    }
}

/// Cookie sessions: move a new refresh token from the JSON body into the cookie, and clear
/// the cookie when a session ends (a logout answer carries no token).
async fn with_cookie(
    s: &RequestScope<'_>,
    resp: Result<Response<Body>, GatewayError>,
) -> Result<Response<Body>, GatewayError> {
    let auth = &s.snap.config.auth;
    if !auth.cookies {
        return resp;
    }
    let resp = resp?;
    let (mut parts, body) = resp.into_parts();
    // Our own JSON answer, in memory: collecting it does not wait.
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| GatewayError::Internal(format!("auth answer: {e}")))?;
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(Response::from_parts(parts, body::full(bytes)));
    };
    let cookie = match v.get("refresh_token").and_then(|t| t.as_str()) {
        Some(token) => api::cookie::set(token, auth.refresh_token_ttl.as_secs()),
        None if v.get("access_token").is_none() => Some(api::cookie::clear()),
        None => None,
    };
    if let Some(obj) = v.as_object_mut() {
        obj.remove("refresh_token");
    }
    if let Some(c) = cookie {
        parts.headers.append(http::header::SET_COOKIE, c);
    }
    let bytes = serde_json::to_vec(&v).unwrap_or_default();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, body::full(bytes)))
}

pub async fn handle(
    s: &RequestScope<'_>,
    req: Request<RequestBody>,
    path: &str,
) -> Result<Response<Body>, GatewayError> {
    let RequestScope { state, snap, ctx } = *s;
    // Per client address, and by the `local` policy whatever the configured one: these
    // endpoints take passwords, so they are never unlimited; and exact, so never leased.
    let policy = LimitPolicy {
        on_failure: FailurePolicy::Local,
        replicas: snap.config.limits.replicas,
        lease: crate::ratelimit::Lease::OFF,
    };
    let scope = Scope::AuthIp(ctx.client_ip);
    let plan = &snap.config.limits.auth_ip;
    let decision = state.limiter.admit(scope, plan, policy).await?;
    if let Some(refused) = decision.as_ref().and_then(limiter::refusal) {
        return Err(refused);
    }
    let seg = segments(path, "/api/auth");
    let method = req.method().clone();
    let limit = snap.config.server.json_body_limit;
    match (seg.as_slice(), &method) {
        (["register"], &Method::POST) => {
            let registered = register(s, api::json::read_request_json(req, limit).await?).await;
            with_cookie(s, registered).await
        }
        (["login"], &Method::POST) => {
            let login = login(s, api::json::read_request_json(req, limit).await?).await;
            with_cookie(s, login).await
        }
        (["refresh"], &Method::POST) => {
            let presented = presented_refresh(s, req).await?;
            with_cookie(s, refresh(s, presented).await).await
        }
        (["logout"], &Method::POST) => {
            let principal = match auth::bearer(req.headers()) {
                Ok(Some(token)) => auth::authenticate_jwt(token, &state.credentials(snap))
                    .await
                    .ok(),
                _ => None,
            };
            let presented = presented_refresh(s, req).await;
            with_cookie(s, logout(s, presented, principal).await).await
        }
        (["logout-all"], &Method::POST) => {
            let token = auth::bearer(req.headers())?.ok_or(GatewayError::MissingCredentials)?;
            let principal = auth::authenticate_jwt(token, &state.credentials(snap)).await?;
            with_cookie(s, logout_all(s, &principal).await).await
        }
        (["password"], &Method::POST) => {
            let token = auth::bearer(req.headers())?.ok_or(GatewayError::MissingCredentials)?;
            let principal = auth::authenticate_jwt(token, &state.credentials(snap)).await?;
            let body: PasswordChange = api::json::read_request_json(req, limit).await?;
            with_cookie(s, change_password(s, &principal, body).await).await
        }
        (["me"], &Method::GET) => me(s, &req).await,
        (["me"], _) => Err(GatewayError::MethodNotAllowed("GET")),
        (["register" | "login" | "refresh" | "logout" | "logout-all" | "password"], _) => {
            Err(GatewayError::MethodNotAllowed("POST"))
        }
        _ => Err(GatewayError::NotFound),
    }
}

/// Trim, lower-case and check an email address.
pub fn normalize_email(raw: &str) -> Result<String, GatewayError> {
    let email = raw.trim().to_lowercase();
    let bad = || GatewayError::invalid("email is not a valid address");
    if email.len() > 254 {
        return Err(bad());
    }
    let (local, domain) = email.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if local_ok && domain_ok {
        Ok(email)
    } else {
        Err(bad())
    }
}

/// A non-reversible handle for an email in limiter keys, so addresses never sit in counters.
fn email_key(email: &str) -> String {
    let d = Sha256::digest(email.as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn token_hash(token: &str) -> String {
    crate::auth::api_key::hash(token)
}

/// A new account, logged in: the seed's `{message, user_id}` and, as ARES's own register answers,
/// the login answer's token pair (a client of ARES keeps its session from the first call).
async fn register(
    s: &RequestScope<'_>,
    req: RegisterRequest,
) -> Result<Response<Body>, GatewayError> {
    let RequestScope { state, .. } = *s;
    // Every check that can fail runs before the (deliberately slow) hash.
    let email = normalize_email(&req.email)?;
    let name = check_name("name", &req.name)?;
    password::check_policy(req.password.expose())?;
    let user = User {
        id: random_token("usr_", 24),
        email,
        name,
        password_hash: state.passwords.hash(&req.password).await?,
        created_at: unix_now(),
        disabled: false,
    };
    match state
        .records
        .call_keep_error(state.records.create_user(&user))
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict) => return Err(GatewayError::EmailTaken),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(user = %user.id, "user registered");
    let mut answer = new_session(s, &user.id, &user.email).await?;
    answer.insert("message".into(), json!("Registration successful"));
    answer.insert("user_id".into(), json!(user.id));
    Ok(body::json(StatusCode::CREATED, &answer, true))
}

async fn login(s: &RequestScope<'_>, req: LoginRequest) -> Result<Response<Body>, GatewayError> {
    let RequestScope { state, snap, ctx } = *s;
    let limits = &snap.config.limits;
    // Same answer for a malformed email as for a wrong password: no account probing.
    let email = normalize_email(&req.email).map_err(|_| GatewayError::InvalidCredentials)?;
    if password::too_long(req.password.expose()) {
        return Err(GatewayError::InvalidCredentials);
    }
    let ek = email_key(&email);
    let failures = [
        (
            Scope::LoginAccountIp(&ek, ctx.client_ip),
            &limits.login_failures_per_account_ip,
        ),
        (Scope::LoginAccount(&ek), &limits.login_failures_per_account),
    ];
    let attempt = match state.limiter.attempt(&failures).await {
        Ok(a) => a,
        Err(e) => {
            if matches!(e, GatewayError::RateLimited { .. }) {
                let keep = snap.config.store.audit_retention;
                let target = format!("account:{ek}");
                crate::api::audit::record(
                    state,
                    keep,
                    "gateway",
                    "login.locked",
                    &target,
                    "refused",
                )
                .await;
            }
            return Err(e);
        }
    };

    let user = state
        .records
        .call(state.records.get_user_by_email(&email))
        .await?;
    let verified = state
        .passwords
        .verify(
            &req.password,
            user.as_ref().map(|u| u.password_hash.as_str()),
        )
        .await?;
    let Some(user) = user.filter(|_| verified.ok) else {
        attempt.failed();
        tracing::info!(reason = "bad_credentials", "login refused");
        return Err(GatewayError::InvalidCredentials);
    };
    attempt.succeeded().await;
    if user.disabled {
        tracing::info!(user = %user.id, reason = "user_disabled", "login refused");
        return Err(GatewayError::Forbidden);
    }
    if let Some(new_hash) = verified.rehash {
        if let Err(e) = state
            .records
            .call(state.records.set_password_hash(&user.id, &new_hash))
            .await
        {
            tracing::warn!(user = %user.id, error = %e, "password rehash not stored");
        }
    }
    let answer = new_session(s, &user.id, &user.email).await?;
    tracing::info!(user = %user.id, "login");
    Ok(body::json(StatusCode::OK, &answer, true))
}

/// A new session of the user (a token pair of a new refresh family), as the members every
/// answer that starts one carries: `access_token`, `refresh_token`, `expires_in`, `token_type`.
async fn new_session(
    s: &RequestScope<'_>,
    user_id: &str,
    email: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, GatewayError> {
    let family = random_token("fam_", 22);
    let (access, refresh) = issue_pair(s, user_id, email, &family).await?;
    let mut answer = serde_json::Map::new();
    answer.insert("access_token".into(), json!(access));
    answer.insert("refresh_token".into(), json!(refresh));
    answer.insert("expires_in".into(), json!(s.snap.jwt.ttl_secs()));
    answer.insert("token_type".into(), json!("Bearer"));
    Ok(answer)
}

/// Issue an access token and store a new refresh token of `family`.
async fn issue_pair(
    s: &RequestScope<'_>,
    user_id: &str,
    email: &str,
    family: &str,
) -> Result<(String, String), GatewayError> {
    let refresh = random_token(REFRESH_PREFIX, REFRESH_RANDOM_LEN);
    let now = unix_now();
    store_refresh(s, user_id, family, &refresh, now).await?;
    let (access, _) = s
        .snap
        .jwt
        .issue(user_id, email, now)
        .map_err(GatewayError::Internal)?;
    Ok((access, refresh))
}

/// Store a new member of a refresh-token family (by its hash).
async fn store_refresh(
    s: &RequestScope<'_>,
    user_id: &str,
    family: &str,
    token: &str,
    now: u64,
) -> Result<(), GatewayError> {
    let record = RefreshRecord {
        token_hash: token_hash(token),
        user_id: user_id.to_string(),
        family_id: family.to_string(),
        issued_at: now,
        expires_at: now + s.snap.config.auth.refresh_token_ttl.as_secs(),
        rotated_at: None,
        successor: None,
    };
    s.state
        .records
        .call(s.state.records.put_refresh_token(&record))
        .await
}

fn plausible_refresh_token(t: &str) -> bool {
    t.starts_with(REFRESH_PREFIX) && t.len() <= 128
}

/// SHA-256 (hex) of a token ARES issued: how ARES keys its sessions.
fn ares_token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An ARES refresh token at the gateway's refresh, during a migration: it works once (ARES's
/// session is taken) and starts a gateway session of the same user.
async fn adopt_ares_session(
    s: &RequestScope<'_>,
    presented: &str,
) -> Result<Response<Body>, GatewayError> {
    let RequestScope { state, snap, .. } = *s;
    let claims = snap
        .jwt
        .verify_upstream_refresh(presented)
        .map_err(|reason| {
            tracing::debug!(reason, "refresh token refused");
            GatewayError::InvalidRefreshToken
        })?;
    let hash = ares_token_hash(presented);
    let user_id = state
        .records
        .call(state.records.take_upstream_session(&hash))
        .await?
        .filter(|u| *u == claims.sub)
        .ok_or(GatewayError::InvalidRefreshToken)?;
    let user = state
        .records
        .call(state.records.get_user(&user_id))
        .await?
        .filter(|u| !u.disabled)
        .ok_or(GatewayError::InvalidRefreshToken)?;
    let answer = new_session(s, &user.id, &user.email).await?;
    tracing::info!(user = %user.id, "ARES session carried over");
    Ok(body::json(StatusCode::OK, &answer, true))
}

async fn refresh(s: &RequestScope<'_>, presented: String) -> Result<Response<Body>, GatewayError> {
    let RequestScope { state, snap, .. } = *s;
    if !plausible_refresh_token(&presented) {
        if presented.len() <= 8192 && presented.split('.').count() == 3 {
            return adopt_ares_session(s, &presented).await;
        }
        return Err(GatewayError::InvalidRefreshToken);
    }
    let hash = token_hash(&presented);
    let record = state
        .records
        .call(state.records.get_refresh_token(&hash))
        .await?
        .ok_or(GatewayError::InvalidRefreshToken)?;
    let user = state
        .records
        .call(state.records.get_user(&record.user_id))
        .await?
        .ok_or(GatewayError::InvalidRefreshToken)?;
    if user.disabled {
        return Err(GatewayError::InvalidRefreshToken);
    }
    let cfg = &snap.config.auth;
    let now = unix_now();
    if !cfg.refresh_rotation {
        let (access, _) = snap
            .jwt
            .issue(&user.id, &user.email, now)
            .map_err(GatewayError::Internal)?;
        // The same refresh token back: a client written against ARES (whose refresh always
        // rotates) keeps what the answer holds, and so keeps a working token.
        return Ok(body::json(
            StatusCode::OK,
            &json!({
                "access_token": access,
                "refresh_token": presented,
                "expires_in": snap.jwt.ttl_secs(),
            }),
            true,
        ));
    }
    // Rotation. The successor is stored first, so whoever is handed it can use it at once; the
    // atomic mark then decides which of concurrent refreshes created the family's next token.
    let successor = random_token(REFRESH_PREFIX, REFRESH_RANDOM_LEN);
    let sealed = auth::successor::seal(&presented, &hash, &successor);
    store_refresh(s, &user.id, &record.family_id, &successor, now).await?;
    let marked = state
        .records
        .call(
            state
                .records
                .mark_refresh_rotated(&hash, now, sealed.as_deref()),
        )
        .await?;
    let refresh = match marked {
        None => successor,
        Some(rotation) => {
            if now.saturating_sub(rotation.at) > cfg.refresh_reuse_grace.as_secs() {
                // A rotated token came back: it leaked. Kill the whole family (RFC 9700).
                state
                    .records
                    .call(state.records.revoke_refresh_family(
                        &record.family_id,
                        now + cfg.refresh_token_ttl.as_secs(),
                    ))
                    .await?;
                tracing::warn!(user = %user.id, reason = "refresh_reuse", "refresh token family revoked");
                return Err(GatewayError::InvalidRefreshToken);
            }
            // Rotated moments ago by a concurrent refresh: the successor it created (ours was
            // never handed out). A rotation recorded without one keeps ours.
            rotation
                .successor
                .as_deref()
                .and_then(|sealed| auth::successor::open(&presented, &hash, sealed))
                .unwrap_or(successor)
        }
    };
    let (access, _) = snap
        .jwt
        .issue(&user.id, &user.email, now)
        .map_err(GatewayError::Internal)?;
    Ok(body::json(
        StatusCode::OK,
        &json!({"access_token": access, "refresh_token": refresh, "expires_in": snap.jwt.ttl_secs()}),
        true,
    ))
}

async fn logout(
    s: &RequestScope<'_>,
    presented: Result<String, GatewayError>,
    principal: Option<auth::Principal>,
) -> Result<Response<Body>, GatewayError> {
    let RequestScope { state, snap, .. } = *s;
    let now = unix_now();
    // Idempotent: a logout without a usable refresh token still ends the access token and
    // clears the cookie; only a malformed body or a forged cookie request is refused.
    let presented = match presented {
        Ok(t) => Some(t),
        Err(GatewayError::InvalidRefreshToken) => None,
        Err(e) => return Err(e),
    };
    if let Some(token) = presented
        .as_deref()
        .filter(|t| !plausible_refresh_token(t))
        .filter(|t| snap.jwt.verify_upstream_refresh(t).is_ok())
    {
        // An ARES refresh token: its session at ARES ends here too.
        state
            .records
            .call(state.records.take_upstream_session(&ares_token_hash(token)))
            .await?;
    }
    if let Some(token) = presented.filter(|t| plausible_refresh_token(t)) {
        let hash = token_hash(&token);
        if let Some(record) = state
            .records
            .call(state.records.get_refresh_token(&hash))
            .await?
        {
            let until = now + snap.config.auth.refresh_token_ttl.as_secs();
            state
                .records
                .call(
                    state
                        .records
                        .revoke_refresh_family(&record.family_id, until),
                )
                .await?;
        }
    }
    if let Some(Identity::User(claims)) = principal.as_ref().map(|p| p.identity()) {
        if let Some(jti) = &claims.jti {
            let until = claims.exp + snap.config.auth.jwt_leeway.as_secs();
            state
                .records
                .call(state.records.revoke_jti(&claims.sub, jti, until))
                .await?;
            state.limiter.end_user_leases(&claims.sub);
        }
    }
    Ok(body::json(
        StatusCode::OK,
        &json!({"message": "Logged out successfully"}),
        false,
    ))
}

/// `POST /api/auth/password`: the current password and a new one (the registration policy).
/// Every session of the user ends, this one included, and a new one is returned: whoever held
/// a stolen token or refresh token is out. Wrong current passwords count as failed logins.
async fn change_password(
    s: &RequestScope<'_>,
    principal: &auth::Principal,
    req: PasswordChange,
) -> Result<Response<Body>, GatewayError> {
    let RequestScope { state, snap, ctx } = *s;
    let Identity::User(claims) = principal.identity() else {
        return Err(GatewayError::InvalidToken);
    };
    if password::too_long(req.current_password.expose()) {
        return Err(GatewayError::InvalidCredentials);
    }
    password::check_policy(req.new_password.expose())?;
    let user = state
        .records
        .call(state.records.get_user(&claims.sub))
        .await?
        .ok_or(GatewayError::InvalidToken)?;
    let limits = &snap.config.limits;
    let ek = email_key(&user.email);
    let failures = [
        (
            Scope::LoginAccountIp(&ek, ctx.client_ip),
            &limits.login_failures_per_account_ip,
        ),
        (Scope::LoginAccount(&ek), &limits.login_failures_per_account),
    ];
    let attempt = state.limiter.attempt(&failures).await?;
    let verified = state
        .passwords
        .verify(&req.current_password, Some(user.password_hash.as_str()))
        .await?;
    if verified.ok {
        attempt.succeeded().await;
    } else {
        attempt.failed();
        let keep = snap.config.store.audit_retention;
        let actor = format!("user:{}", user.id);
        crate::api::audit::record(state, keep, &actor, "password.change", &actor, "refused").await;
        return Err(GatewayError::InvalidCredentials);
    }
    let hash = state.passwords.hash(&req.new_password).await?;
    state
        .records
        .call(state.records.set_password_hash(&user.id, &hash))
        .await?;
    end_every_session(s, &user.id).await?;
    let mut answer = new_session(s, &user.id, &user.email).await?;
    answer.insert("message".into(), json!("Password changed"));
    let keep = snap.config.store.audit_retention;
    let actor = format!("user:{}", user.id);
    crate::api::audit::record(state, keep, &actor, "password.change", &actor, "ok").await;
    Ok(body::json(StatusCode::OK, &answer, true))
}

/// Draw the user's "log out everywhere" line at now, and return once this second is over:
/// token times are whole seconds, so every token issued after the return is past the line.
async fn end_every_session(s: &RequestScope<'_>, user_id: &str) -> Result<(), GatewayError> {
    end_sessions(s.state, s.snap, user_id).await
}

/// [`end_every_session`] for callers outside a user's own request (the admin API).
pub(crate) async fn end_sessions(
    state: &AppState,
    snap: &crate::state::Snapshot,
    user_id: &str,
) -> Result<(), GatewayError> {
    let now_ms = crate::util::now_ms();
    let through = now_ms / 1000;
    let cfg = &snap.config.auth;
    let access_life = snap.jwt.ttl_secs() + cfg.jwt_leeway.as_secs();
    let until = through + access_life.max(cfg.refresh_token_ttl.as_secs());
    state
        .records
        .call(state.records.revoke_user_tokens(user_id, through, until))
        .await?;
    state.limiter.end_user_leases(user_id);
    tokio::time::sleep(std::time::Duration::from_millis(1000 - now_ms % 1000)).await;
    Ok(())
}

/// `POST /api/auth/logout-all`: every session of the caller ends, on every replica: each
/// refresh token stored and each access token issued up to now (the checks a JWT request
/// already makes read the same line: no extra store round trip).
async fn logout_all(
    s: &RequestScope<'_>,
    principal: &auth::Principal,
) -> Result<Response<Body>, GatewayError> {
    let Identity::User(claims) = principal.identity() else {
        return Err(GatewayError::InvalidToken);
    };
    end_every_session(s, &claims.sub).await?;
    tracing::info!(user = %claims.sub, "logged out everywhere");
    Ok(body::json(
        StatusCode::OK,
        &json!({"message": "Logged out everywhere"}),
        false,
    ))
}

async fn me(
    s: &RequestScope<'_>,
    req: &Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    let RequestScope { state, snap, .. } = *s;
    let token = auth::bearer(req.headers())?.ok_or(GatewayError::MissingCredentials)?;
    let principal = auth::authenticate_jwt(token, &state.credentials(snap)).await?;
    let Identity::User(claims) = principal.identity() else {
        return Err(GatewayError::InvalidToken);
    };
    let user = state
        .records
        .call(state.records.get_user(&claims.sub))
        .await?
        .ok_or(GatewayError::InvalidToken)?;
    Ok(body::json(
        StatusCode::OK,
        &json!({"user_id": user.id, "email": user.email, "name": user.name, "created_at": user.created_at}),
        true,
    ))
}

pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<RegisterRequest>(data) {
        let _ = normalize_email(&r.email);
        let _ = check_name("name", &r.name);
        let _ = password::check_policy(r.password.expose());
    }
    if let Ok(r) = serde_json::from_slice::<LoginRequest>(data) {
        let _ = normalize_email(&r.email).map(|e| email_key(&e));
    }
    if let Ok(r) = serde_json::from_slice::<RefreshRequest>(data) {
        let _ = plausible_refresh_token(&r.refresh_token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowered_and_checked() {
        assert_eq!(
            normalize_email("  Dev@Example.COM ").unwrap(),
            "dev@example.com"
        );
        assert_eq!(
            normalize_email("a.b+tag@sub.example.org").unwrap(),
            "a.b+tag@sub.example.org"
        );
        for bad in [
            "",
            "plain",
            "@x.com",
            "a@",
            "a@com",
            "a@@x.com",
            "a b@x.com",
            "a@x..com",
            ".a@x.com",
            "a@-x.com",
            "a\r\n@x.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_email(&format!("{}@x.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn email_keys_do_not_contain_the_address() {
        let k = email_key("dev@example.com");
        assert_eq!(k.len(), 24);
        assert!(!k.contains("example"));
    }
}
