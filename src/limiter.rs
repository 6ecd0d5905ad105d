//! The one way the gateway limits anything: [`Limiter`] asks the store, falls back by the
//! failure policy when the store cannot answer, and counts every decision in the metrics.
//!
//! Every limit goes through it: a tenant's plan, a user's plan (with the access token's
//! revocation in the same store round trip), the per-address limit of `/api/auth/*`, and the
//! failed-login limits. Only the failed-login check never falls open: a store that cannot say how
//! many guesses were made refuses the login (503) rather than allow unlimited guessing.
//!
//! With leases on (`rate_limits.lease_requests`, a shared store), a tenant's or a user's request
//! that finds this replica holding part of its scope's capacity spends it here, without a store
//! round trip; otherwise it asks the store for up to a lease of requests at once (the store grants
//! at most a quarter of the smallest room left, so near a limit every request asks again and the
//! decision is exact). A lease is spent within `rate_limits.lease_ms`; what it did not spend goes
//! back to the store with the scope's next ask, or from housekeeping.

use std::net::IpAddr;
use std::sync::Arc;

use crate::error::GatewayError;
use crate::ratelimit::{Decision, FailurePolicy, Lease, LocalLimiter, Plan, Window, Windows};
use crate::store::{scope, Admission, Counters, Role, Take, TokenRef};
use crate::util::now_ms;

use lease::{Leases, Refill, Spent};

/// What a limit counts. Its store key and its metric label come from here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// A tenant's plan (API-key routes), and its token budget.
    Tenant(&'a str),
    /// A user's plan (JWT routes).
    User(&'a str),
    /// An API key's own limits (by key id), on top of its tenant's.
    ApiKey(&'a str),
    /// Requests to `/api/auth/*` from one client address.
    AuthIp(IpAddr),
    /// Failed logins to one account (by email hash) from one address.
    LoginAccountIp(&'a str, IpAddr),
    /// Failed logins to one account from anywhere.
    LoginAccount(&'a str),
    /// Refused API keys from one client address.
    KeyFailuresIp(IpAddr),
    /// Wrong admin secrets from one client address.
    AdminFailuresIp(IpAddr),
}

impl Scope<'_> {
    /// The store's name for it (`store::scope`).
    pub fn key(&self) -> String {
        match *self {
            Scope::Tenant(id) => scope::tenant(id),
            Scope::User(id) => scope::user(id),
            Scope::ApiKey(id) => scope::api_key(id),
            Scope::AuthIp(ip) => scope::auth_ip(&ip),
            Scope::LoginAccountIp(account, ip) => scope::login_account_ip(account, &ip),
            Scope::LoginAccount(account) => scope::login_account(account),
            Scope::KeyFailuresIp(ip) => scope::key_failures_ip(&ip),
            Scope::AdminFailuresIp(ip) => scope::admin_failures_ip(&ip),
        }
    }

    /// Its `scope` label in the limiter metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Tenant(_) => "tenant",
            Scope::User(_) => "user",
            Scope::ApiKey(_) => "api_key",
            Scope::AuthIp(_) => "ip",
            Scope::LoginAccountIp(..) => "login_account_ip",
            Scope::LoginAccount(_) => "login_account",
            Scope::KeyFailuresIp(_) => "api_key_failures_ip",
            Scope::AdminFailuresIp(_) => "admin_failures_ip",
        }
    }
}

/// How a route's limits are decided: what happens when the shared store fails (the policy, and
/// how many replicas share the limits: the `local` policy enforces `limit / replicas` in each),
/// and the leases of the store's capacity this replica may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitPolicy {
    pub on_failure: FailurePolicy,
    pub replicas: u64,
    pub lease: Lease,
}

impl LimitPolicy {
    /// Whether decisions under `limits` go through leases: when leases are on and there is
    /// anything to limit (a user without limits is only checked for revocation, every time).
    fn leases(&self, limits: &Windows) -> bool {
        self.lease.is_on() && !limits.is_empty()
    }
}

/// The store, the local fallback and the metrics, behind one call per decision.
pub struct Limiter {
    /// The store's counting role: all the Limiter ever asks of it.
    counters: Role<dyn Counters>,
    /// Limits in force while the shared store is unreachable (`local` policy).
    fallback: LocalLimiter,
    /// Client addresses over their refused-API-key limit, until when (ms) and with which
    /// headers: learned from the shared count when it refuses, so that a key is not even
    /// looked at from them, without a store round trip on any request that passes.
    key_failures: dashmap::DashMap<IpAddr, (u64, Decision)>,
    /// Whether `key_failures` may hold anything: one atomic load on the request path.
    any_key_failures: std::sync::atomic::AtomicBool,
    /// This replica's leases and the asks of them in flight.
    leases: Arc<Leases>,
}

impl Limiter {
    pub fn new(counters: Role<dyn Counters>) -> Self {
        Limiter {
            counters,
            fallback: LocalLimiter::new(),
            key_failures: dashmap::DashMap::new(),
            any_key_failures: std::sync::atomic::AtomicBool::new(false),
            leases: Arc::default(),
        }
    }

    /// Admit one request of `scope` under `plan`. `None`: nothing to limit (or limits open
    /// during an outage). A refusal is a `Decision` naming its window; the caller answers it.
    pub async fn admit(
        &self,
        scope: Scope<'_>,
        plan: &Plan,
        policy: LimitPolicy,
    ) -> Result<Option<Decision>, GatewayError> {
        let limits = plan.windows();
        if limits.is_empty() {
            return Ok(None);
        }
        let key = scope.key();
        let (now, decided) = if policy.leases(&limits) {
            match self.leased(&key, None, limits, policy.lease).await {
                Leased::Here(d) => return Ok(Some(self.spent_here(scope, d))),
                Leased::Asked(Ok(Admission::Decided(d)), now) => (now, Ok(d)),
                // Only a token's ask can find it revoked.
                Leased::Asked(Ok(Admission::Revoked), _) => return Err(GatewayError::InvalidToken),
                Leased::Asked(Err(e), now) => (now, Err(e)),
            }
        } else {
            let now = now_ms();
            let decided = self
                .counters
                .call(self.counters.rate_limit(&key, &limits, now))
                .await;
            (now, decided)
        };
        self.decided(scope, plan, policy, now, decided)
    }

    /// As [`Limiter::admit`] for a user's access token, with its revocation (`jti`) checked in
    /// the same store round trip: a revoked token is `InvalidToken` and counts against nothing.
    pub async fn admit_user(
        &self,
        token: TokenRef<'_>,
        plan: &Plan,
        policy: LimitPolicy,
    ) -> Result<Option<Decision>, GatewayError> {
        let limits = plan.windows();
        let sub = token.subject;
        let (now, admitted) = if policy.leases(&limits) {
            // A lease per access token: it was checked against revocation when taken.
            let key = user_lease_key(token);
            match self.leased(&key, Some(token), limits, policy.lease).await {
                Leased::Here(d) => return Ok(Some(self.spent_here(Scope::User(sub), d))),
                Leased::Asked(admitted, now) => (now, admitted),
            }
        } else {
            let now = now_ms();
            let admitted = self
                .counters
                .call(self.counters.admit_token(token, &limits, now))
                .await;
            (now, admitted)
        };
        let decided = match admitted {
            Ok(Admission::Revoked) => {
                tracing::debug!(reason = "revoked", "access token refused");
                return Err(GatewayError::InvalidToken);
            }
            Ok(Admission::Decided(_)) if limits.is_empty() => return Ok(None),
            Ok(Admission::Decided(d)) => Ok(d),
            Err(e) => {
                // A logout cannot have been recorded while the store is down either; refusing
                // every user for the length of an outage would be worse. The limits follow
                // the policy.
                tracing::warn!(error = %e, "revocation check skipped: store unavailable");
                if limits.is_empty() {
                    return Ok(None);
                }
                Err(e)
            }
        };
        self.decided(Scope::User(sub), plan, policy, now, decided)
    }

    /// One request of the lease `key` (a scope's, or with `token` that access token's): spent
    /// from this replica's lease, or the store's answer to the ask made for it, whose grant
    /// beyond this request becomes the lease. A request that finds another asking for the same
    /// lease waits for that answer once; after that it asks beside it.
    async fn leased(
        &self,
        key: &str,
        token: Option<TokenRef<'_>>,
        limits: Windows,
        lease: Lease,
    ) -> Leased {
        let mut waited = false;
        loop {
            let now = now_ms();
            let (take, asking) = match self.leases.spend(key, now, lease) {
                Spent::Here(d, refill) => {
                    if let Some(refill) = refill {
                        self.refill(key, token, limits, lease, refill);
                    }
                    return Leased::Here(d);
                }
                Spent::Ask(take, asking) => (take, Some(asking)),
                Spent::Wait(done) if !waited => {
                    self.leases.wait(key, done).await;
                    waited = true;
                    continue;
                }
                Spent::Wait(_) => (Take::lease(lease.requests), None),
            };
            let scope = lease_scope(key, token);
            let asked = ask(&self.counters, &scope, token, &limits, now, take).await;
            if let Ok((Admission::Decided(d), granted)) = &asked {
                let grant = (*granted, take.want);
                self.leases
                    .hold(key.to_owned(), scope, limits, *d, grant, 1, now, lease);
            }
            drop(asking);
            return Leased::Asked(asked.map(|(a, _)| a), now);
        }
    }

    /// Ask the store for the next lease of `key` in the background, while this replica spends
    /// what is left of the current one. A refused refill leaves that to be spent (the next ask
    /// is a request's own); a token found revoked ends the lease at once.
    fn refill(
        &self,
        key: &str,
        token: Option<TokenRef<'_>>,
        limits: Windows,
        lease: Lease,
        refill: Refill,
    ) {
        let counters = self.counters.clone();
        let leases = self.leases.clone();
        let key = key.to_owned();
        let scope = lease_scope(&key, token);
        let token = token.map(|t| (t.subject.to_owned(), t.jti.map(str::to_owned), t.issued_at));
        tokio::spawn(async move {
            let now = now_ms();
            let token = token.as_ref().map(|(subject, jti, issued_at)| TokenRef {
                subject,
                jti: jti.as_deref(),
                issued_at: *issued_at,
            });
            let wanted = refill.take.want;
            match ask(&counters, &scope, token, &limits, now, refill.take).await {
                Ok((Admission::Decided(d), granted)) if d.allowed() && granted > 0 => {
                    leases.hold(key, scope, limits, d, (granted, wanted), 0, now, lease);
                }
                Ok((Admission::Revoked, _)) => leases.end(&key),
                Ok(_) => leases.refill_refused(&key),
                Err(e) => {
                    tracing::debug!(error = %e, "lease refill failed");
                    leases.refill_refused(&key);
                }
            }
            drop(refill.asking);
        });
    }

    fn spent_here(&self, scope: Scope<'_>, d: Decision) -> Decision {
        crate::metrics::get().ratelimit(scope.kind(), "-", "allowed");
        d
    }

    /// End this replica's leases of a user's tokens (a logout here): the next request of such
    /// a token asks the store, which knows of the logout, and returns what the lease left.
    pub fn end_user_leases(&self, subject: &str) {
        let mut prefix = scope::user(subject);
        prefix.push('\0');
        self.leases.end_prefixed(&prefix);
    }

    /// Give back what ended leases did not spend (every lease at `all`: at shutdown). Their
    /// scopes asked nothing since, so no ask carried it back.
    pub async fn return_leases(&self, all: bool) {
        let now = now_ms();
        for held in self.leases.take_ended(now, all) {
            let Some(take) = held.give_back(now) else {
                continue;
            };
            let returned = self
                .counters
                .call(self.counters.lease(&held.scope, &held.limits, now, take))
                .await;
            if let Err(e) = returned {
                tracing::debug!(error = %e, "unused lease not returned");
            }
        }
    }

    /// Take this attempt's place in each failure ceiling before the password is checked: a
    /// scope at its ceiling refuses it (429) and one the store cannot count refuses it too (503
    /// `STORE_UNAVAILABLE`), the same answer for a right and a wrong password, so neither a full
    /// store nor concurrency lets more guesses be checked than the ceiling allows. The places
    /// stay taken (the attempt counts as a failure) unless [`Attempt::succeeded`] gives them
    /// back; a place already taken in an earlier scope is given back when a later one refuses.
    pub async fn attempt<'a>(
        &'a self,
        scopes: &[(Scope<'_>, &Plan)],
    ) -> Result<Attempt<'a>, GatewayError> {
        let now = now_ms();
        let mut attempt = Attempt {
            limiter: self,
            taken: Vec::with_capacity(scopes.len()),
        };
        let m = crate::metrics::get();
        for (scope, plan) in scopes {
            let windows = plan.windows();
            if windows.is_empty() {
                continue;
            }
            let key = scope.key();
            let counted = self
                .counters
                .call(self.counters.rate_limit(&key, &windows, now))
                .await;
            match counted {
                Ok(d) if d.allowed() => attempt.taken.push((key, windows)),
                Ok(d) => {
                    attempt.give_back().await;
                    let window = d.refused_by.unwrap_or(Window::Hour);
                    m.ratelimit(scope.kind(), window.name(), "refused");
                    return Err(GatewayError::RateLimited {
                        window,
                        headers: d.headers,
                    });
                }
                Err(e) => {
                    attempt.give_back().await;
                    m.ratelimit(scope.kind(), "-", "store_failed");
                    tracing::warn!(
                        error = %e,
                        scope = scope.kind(),
                        "failure ceiling cannot be counted: attempt refused before the password check"
                    );
                    return Err(e);
                }
            }
        }
        Ok(attempt)
    }

    /// Refuse an API-key request from an address over its refused-key limit (429), before the
    /// key is looked at. No store call: the map is filled by [`Limiter::record_key_failure`].
    pub fn check_key_failures(&self, ip: IpAddr) -> Result<(), GatewayError> {
        if !self
            .any_key_failures
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        let now = now_ms();
        let Some(blocked) = self.key_failures.get(&ip).map(|e| *e.value()) else {
            return Ok(());
        };
        let (until, mut decision) = blocked;
        if now >= until {
            self.key_failures.remove_if(&ip, |_, v| v.0 <= now);
            return Ok(());
        }
        decision.headers.reset = (until - now).div_ceil(1000).max(1);
        crate::metrics::get().ratelimit(Scope::KeyFailuresIp(ip).kind(), "-", "refused");
        Err(refusal(&decision).unwrap_or(GatewayError::InvalidApiKey))
    }

    /// Count one refused API key from `ip`. When the address is already at its limit the
    /// answer becomes that 429 (and the address is refused before any lookup until the window
    /// frees room); otherwise the caller's 401 stands. A store that cannot count is logged.
    pub async fn record_key_failure(&self, ip: IpAddr, plan: &Plan) -> Option<GatewayError> {
        let scope = Scope::KeyFailuresIp(ip);
        let windows = plan.windows();
        if windows.is_empty() {
            return None;
        }
        let now = now_ms();
        let counted = self
            .counters
            .call(self.counters.rate_limit(&scope.key(), &windows, now))
            .await;
        let decision = match counted {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, scope = scope.kind(), "failure not counted");
                return None;
            }
        };
        decision.refused_by?;
        let until = now + decision.headers.reset.max(1) * 1000;
        self.key_failures.insert(ip, (until, decision));
        self.any_key_failures
            .store(true, std::sync::atomic::Ordering::Relaxed);
        crate::metrics::get().ratelimit(scope.kind(), "-", "refused");
        tracing::info!(client = %ip, reason = "api_key_failures", "address refused for failed API keys");
        refusal(&decision)
    }

    /// Count `n` tokens the upstream reported against the scope's monthly budget.
    pub async fn debit_tokens(&self, scope: Scope<'_>, n: u64) -> Result<u64, GatewayError> {
        let key = scope.key();
        self.counters
            .call(self.counters.add_tokens(&key, n, now_ms()))
            .await
    }

    /// Forget idle scopes of the local fallback, and addresses whose refusal has run out.
    pub fn sweep(&self) {
        self.sweep_at(now_ms());
    }

    fn sweep_at(&self, now: u64) {
        self.fallback.sweep(now);
        // As in `check_key_failures`: a refusal ends at `until` itself.
        self.key_failures.retain(|_, v| v.0 > now);
        if self.key_failures.is_empty() {
            // An insert racing with this sets the flag after inserting: looking at the map
            // again after clearing the flag means no block is ever hidden.
            self.any_key_failures
                .store(false, std::sync::atomic::Ordering::Relaxed);
            if !self.key_failures.is_empty() {
                self.any_key_failures
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// A store's answer, counted in the metrics; a failed store by the policy. The scope's key
    /// is made only for the local fallback.
    fn decided(
        &self,
        scope: Scope<'_>,
        plan: &Plan,
        policy: LimitPolicy,
        now: u64,
        decided: Result<Decision, GatewayError>,
    ) -> Result<Option<Decision>, GatewayError> {
        let m = crate::metrics::get();
        let kind = scope.kind();
        match decided {
            Ok(d) => {
                match d.refused_by {
                    None => m.ratelimit(kind, "-", "allowed"),
                    Some(w) => m.ratelimit(kind, w.name(), "refused"),
                }
                Ok(Some(d))
            }
            Err(e) => {
                m.ratelimit(kind, "-", "store_failed");
                tracing::warn!(error = %e, policy = ?policy.on_failure, "rate limiter falling back");
                match policy.on_failure {
                    FailurePolicy::Open => Ok(None),
                    FailurePolicy::Closed => Err(e),
                    FailurePolicy::Local => {
                        let local = plan.divided(policy.replicas).windows();
                        Ok(Some(self.fallback.check(&scope.key(), &local, now)))
                    }
                }
            }
        }
    }
}

/// An attempt's places in its failure ceilings ([`Limiter::attempt`]): kept when it fails,
/// given back when it succeeds.
pub struct Attempt<'a> {
    limiter: &'a Limiter,
    taken: Vec<(String, Windows)>,
}

impl std::fmt::Debug for Attempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("places", &self.taken.len())
            .finish()
    }
}

impl Attempt<'_> {
    /// The password was right: the places go back (a success is no failure).
    pub async fn succeeded(mut self) {
        self.give_back().await;
    }

    /// It failed: its places stay counted.
    pub fn failed(self) {}

    async fn give_back(&mut self) {
        let now = now_ms();
        let counters = &self.limiter.counters;
        for (key, windows) in self.taken.drain(..) {
            let back = Take {
                want: 0,
                back: 1,
                back_calendar: 1,
            };
            if let Err(e) = counters
                .call(counters.lease(&key, &windows, now, back))
                .await
            {
                tracing::warn!(error = %e, "a successful attempt's place not given back");
            }
        }
    }
}

/// What a lease's request came to: spent from the lease, or asked of the store at that time.
enum Leased {
    Here(Decision),
    Asked(Result<Admission, GatewayError>, u64),
}

/// One ask of the store for a lease: of a scope, or of a user's scope for an access token
/// (checked against its revocations in the same round trip).
async fn ask(
    counters: &Role<dyn Counters>,
    scope: &str,
    token: Option<TokenRef<'_>>,
    limits: &Windows,
    now: u64,
    take: Take,
) -> Result<(Admission, u64), GatewayError> {
    match token {
        Some(t) => {
            counters
                .call(counters.lease_token(t, limits, now, take))
                .await
        }
        None => counters
            .call(counters.lease(scope, limits, now, take))
            .await
            .map(|(d, granted)| (Admission::Decided(d), granted)),
    }
}

/// The store key a lease's requests count in: the scope's own key, or a token's user's scope.
fn lease_scope(key: &str, token: Option<TokenRef<'_>>) -> String {
    match token {
        Some(t) => scope::user(t.subject),
        None => key.to_owned(),
    }
}

/// A user's lease key: the user's scope, NUL, the token's id (`@iat` for a token without one).
fn user_lease_key(token: TokenRef<'_>) -> String {
    let mut key = scope::user(token.subject);
    key.push('\0');
    match token.jti {
        Some(jti) => key.push_str(jti),
        None => {
            key.push('@');
            key.push_str(itoa::Buffer::new().format(token.issued_at));
        }
    }
    key
}

/// A refusing decision as the request's error: 429 by its window, or the token budget's own.
pub fn refusal(decision: &Decision) -> Option<GatewayError> {
    let window = decision.refused_by?;
    Some(match window {
        Window::Tokens => GatewayError::TokenQuotaExceeded {
            retry_after: std::time::Duration::from_secs(decision.headers.reset.max(1)),
        },
        window => GatewayError::RateLimited {
            window,
            headers: decision.headers,
        },
    })
}

mod lease;
mod policy;

pub use policy::Admitted;

#[cfg(test)]
mod tests;
