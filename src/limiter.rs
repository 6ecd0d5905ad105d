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

use crate::error::GatewayError;
use crate::ratelimit::{Decision, FailurePolicy, Lease, LocalLimiter, Plan, Window, Windows};
use crate::store::{scope, Admission, Counters, Role, Take, TokenRef};
use crate::util::{now_ms, FastMap};

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

/// Capacity this replica took from the store for one scope (a user's: for one access token).
struct Held {
    /// The scope's store key, where unused requests go back.
    scope: String,
    limits: Windows,
    /// Requests left to spend.
    left: u64,
    /// Spendable before this time (ms).
    until: u64,
    /// When it was taken (ms): calendar counts go back only within the same UTC day.
    taken_at: u64,
    /// The store's answer: `remaining` is what the store had left after the lease.
    decision: Decision,
}

impl Held {
    /// Whether it can no longer be spent at `now`.
    fn ended(&self, now: u64) -> bool {
        self.until <= now
    }

    /// The ask that gives its unused requests back and takes none; `None` when all were spent.
    fn give_back(&self, now: u64) -> Option<Take> {
        (self.left > 0).then(|| self.returned(now, 0))
    }

    /// The ask that returns this lease's unused requests, taking `want` more.
    fn returned(&self, now: u64, want: u64) -> Take {
        let same_day = now / 86_400_000 == self.taken_at / 86_400_000;
        Take {
            want,
            back: self.left,
            back_calendar: if same_day { self.left } else { 0 },
        }
    }
}

/// What this replica's leases say of one request.
enum Spent {
    /// Admitted from a lease: no store round trip.
    Here(Decision),
    /// Ask the store.
    Ask(Take),
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
    /// Leases held, by scope key (a user's: scope key, NUL, the token's id).
    leases: FastMap<String, Held>,
}

impl Limiter {
    pub fn new(counters: Role<dyn Counters>) -> Self {
        Limiter {
            counters,
            fallback: LocalLimiter::new(),
            key_failures: dashmap::DashMap::new(),
            any_key_failures: std::sync::atomic::AtomicBool::new(false),
            leases: FastMap::default(),
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
        let now = now_ms();
        let key = scope.key();
        let decided = if policy.leases(&limits) {
            let take = match self.spend(&key, now, policy.lease) {
                Spent::Here(d) => return Ok(Some(self.spent_here(scope, d))),
                Spent::Ask(take) => take,
            };
            let taken = self
                .counters
                .call(self.counters.lease(&key, &limits, now, take))
                .await;
            taken.map(|(d, granted)| {
                self.hold(key.clone(), key, limits, d, granted, now, policy.lease);
                d
            })
        } else {
            self.counters
                .call(self.counters.rate_limit(&key, &limits, now))
                .await
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
        let now = now_ms();
        let admitted = if policy.leases(&limits) {
            // A lease per access token: it was checked against revocation when taken.
            let key = user_lease_key(token);
            let take = match self.spend(&key, now, policy.lease) {
                Spent::Here(d) => return Ok(Some(self.spent_here(Scope::User(sub), d))),
                Spent::Ask(take) => take,
            };
            let taken = self
                .counters
                .call(self.counters.lease_token(token, &limits, now, take))
                .await;
            taken.map(|(admission, granted)| {
                if let Admission::Decided(d) = admission {
                    let scope = scope::user(sub);
                    self.hold(key, scope, limits, d, granted, now, policy.lease);
                }
                admission
            })
        } else {
            self.counters
                .call(self.counters.admit_token(token, &limits, now))
                .await
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

    /// One request from this replica's lease of the scope, if it holds one to spend; else the
    /// ask to make of the store, with an ended lease's unused requests to return.
    fn spend(&self, key: &str, now: u64, lease: Lease) -> Spent {
        let ask = Take {
            want: lease.requests,
            back: 0,
            back_calendar: 0,
        };
        if let Some(mut held) = self.leases.get_mut(key) {
            if now < held.until && held.left > 0 {
                held.left -= 1;
                let mut d = held.decision;
                d.headers.remaining = d.headers.remaining.saturating_add(held.left);
                return Spent::Here(d);
            }
        } else {
            return Spent::Ask(ask);
        }
        match self.leases.remove(key) {
            Some((_, held)) => Spent::Ask(held.returned(now, lease.requests)),
            None => Spent::Ask(ask),
        }
    }

    fn spent_here(&self, scope: Scope<'_>, d: Decision) -> Decision {
        crate::metrics::get().ratelimit(scope.kind(), "-", "allowed");
        d
    }

    /// Keep what the store granted beyond this request, to spend until `lease.ms` from now.
    /// A lease already held for the scope (concurrent asks) is added to; the sooner end holds.
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &self,
        key: String,
        scope: String,
        limits: Windows,
        decision: Decision,
        granted: u64,
        now: u64,
        lease: Lease,
    ) {
        if !decision.allowed() || granted < 2 {
            return;
        }
        let left = granted - 1;
        let until = now.saturating_add(lease.ms);
        match self.leases.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                let held = e.get_mut();
                if held.taken_at / 86_400_000 == now / 86_400_000 {
                    held.left = held.left.saturating_add(left);
                    held.until = held.until.min(until);
                } else {
                    // A lease of another day: its calendar counts cannot go back any more.
                    *held = Held {
                        scope,
                        limits,
                        left,
                        until,
                        taken_at: now,
                        decision,
                    };
                    return;
                }
                held.limits = limits;
                held.decision = decision;
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(Held {
                    scope,
                    limits,
                    left,
                    until,
                    taken_at: now,
                    decision,
                });
            }
        }
    }

    /// End this replica's leases of a user's tokens (a logout here): the next request of such
    /// a token asks the store, which knows of the logout, and returns what the lease left.
    pub fn end_user_leases(&self, subject: &str) {
        let mut prefix = scope::user(subject);
        prefix.push('\0');
        for mut held in self.leases.iter_mut() {
            if held.key().starts_with(&prefix) {
                held.until = 0;
            }
        }
    }

    /// Give back what ended leases did not spend (every lease at `all`: at shutdown). Their
    /// scopes asked nothing since, so no ask carried it back.
    pub async fn return_leases(&self, all: bool) {
        let now = now_ms();
        let ended: Vec<String> = self
            .leases
            .iter()
            .filter(|h| all || h.ended(now))
            .map(|h| h.key().clone())
            .collect();
        for key in ended {
            let Some((_, held)) = self.leases.remove_if(&key, |_, h| all || h.ended(now)) else {
                continue;
            };
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

    /// Refuse when any of these failure counts is at its limit, without counting anything.
    /// Never falls open: a store that cannot answer is the request's 503.
    pub async fn check_failures(&self, scopes: &[(Scope<'_>, &Plan)]) -> Result<(), GatewayError> {
        let now = now_ms();
        for (scope, plan) in scopes {
            let windows = plan.windows();
            if windows.is_empty() {
                continue;
            }
            let peeked = self
                .counters
                .call(self.counters.peek_rate_limit(&scope.key(), &windows, now))
                .await;
            let m = crate::metrics::get();
            let d = peeked.inspect_err(|_| m.ratelimit(scope.kind(), "-", "store_failed"))?;
            if let Some(window) = d.refused_by {
                m.ratelimit(scope.kind(), window.name(), "refused");
                return Err(GatewayError::RateLimited {
                    window,
                    headers: d.headers,
                });
            }
        }
        Ok(())
    }

    /// Count one failure in each scope. Best effort: a failure the store cannot record is
    /// logged; the next check then fails closed while the store is still down.
    pub async fn record_failure(&self, scopes: &[(Scope<'_>, &Plan)]) {
        let now = now_ms();
        for (scope, plan) in scopes {
            let windows = plan.windows();
            if windows.is_empty() {
                continue;
            }
            let counted = self
                .counters
                .call(self.counters.rate_limit(&scope.key(), &windows, now))
                .await;
            if let Err(e) = counted {
                tracing::warn!(error = %e, scope = scope.kind(), "failure not counted");
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::Arc;
    use std::time::Duration;

    fn store() -> crate::store::StoreHandle {
        crate::store::StoreHandle::new(Arc::new(MemoryStore::new()), Duration::from_millis(300))
    }

    fn limiter() -> Limiter {
        Limiter::new(store().counters())
    }

    fn per_minute(n: u64) -> Plan {
        let mut p = Plan::default();
        p.set(Window::Minute, Some(n));
        p
    }

    const OPEN: LimitPolicy = LimitPolicy {
        on_failure: FailurePolicy::Open,
        replicas: 1,
        lease: Lease::OFF,
    };

    #[test]
    fn scopes_name_their_store_keys_and_metric_kinds() {
        let ip = IpAddr::from([10, 0, 0, 1]);
        let cases = [
            (Scope::Tenant("ten_1"), "t:ten_1", "tenant"),
            (Scope::User("usr_9"), "u:usr_9", "user"),
            (Scope::AuthIp(ip), "ip:10.0.0.1", "ip"),
            (
                Scope::LoginAccountIp("ab12", ip),
                "la:ab12:10.0.0.1",
                "login_account_ip",
            ),
            (Scope::LoginAccount("ab12"), "lf:ab12", "login_account"),
            (
                Scope::KeyFailuresIp(ip),
                "kf:10.0.0.1",
                "api_key_failures_ip",
            ),
        ];
        for (scope, key, kind) in cases {
            assert_eq!(scope.key(), key);
            assert_eq!(scope.kind(), kind);
            // Each kind has its premade metric series.
            assert!(crate::metrics::SCOPE_KINDS.contains(&kind), "{kind}");
        }
    }

    #[tokio::test]
    async fn admits_up_to_the_plan_then_refuses_with_the_window() {
        let l = limiter();
        let plan = per_minute(2);
        for _ in 0..2 {
            let d = l.admit(Scope::Tenant("t"), &plan, OPEN).await.unwrap();
            assert!(d.unwrap().allowed());
        }
        let d = l
            .admit(Scope::Tenant("t"), &plan, OPEN)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.refused_by, Some(Window::Minute));
        assert!(matches!(
            refusal(&d),
            Some(GatewayError::RateLimited {
                window: Window::Minute,
                ..
            })
        ));
        // Another scope has its own count.
        let d = l.admit(Scope::Tenant("u"), &plan, OPEN).await.unwrap();
        assert!(d.unwrap().allowed());
        // No windows: nothing to decide.
        assert!(l
            .admit(Scope::Tenant("t"), &Plan::default(), OPEN)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn failure_limits_count_only_when_recorded() {
        let l = limiter();
        let plan = per_minute(2);
        let scopes = [(Scope::LoginAccount("acct"), &plan)];
        for _ in 0..5 {
            l.check_failures(&scopes).await.unwrap();
        }
        l.record_failure(&scopes).await;
        l.check_failures(&scopes).await.unwrap();
        l.record_failure(&scopes).await;
        let err = l.check_failures(&scopes).await.unwrap_err();
        assert!(matches!(err, GatewayError::RateLimited { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_revoked_token_is_refused_and_counts_nothing() {
        let store = store();
        let l = Limiter::new(store.counters());
        let plan = per_minute(1);
        let records = store.records();
        records
            .call(records.revoke_jti("usr_1", "j1", crate::util::unix_now() + 60))
            .await
            .unwrap();
        let err = l
            .admit_user(crate::store::suite::token("usr_1", "j1", 1), &plan, OPEN)
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::InvalidToken));
        // The one request of the minute is still there for a valid token.
        let d = l
            .admit_user(crate::store::suite::token("usr_1", "j2", 1), &plan, OPEN)
            .await
            .unwrap();
        assert!(d.unwrap().allowed());
    }

    #[tokio::test]
    async fn a_user_without_limits_is_admitted_without_a_decision() {
        let l = limiter();
        let token = crate::store::suite::token("usr_1", "j1", 1);
        assert!(l
            .admit_user(token, &Plan::default(), OPEN)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn token_debits_add_up_in_the_months_budget() {
        let l = limiter();
        assert_eq!(l.debit_tokens(Scope::Tenant("t"), 5).await.unwrap(), 5);
        assert_eq!(l.debit_tokens(Scope::Tenant("t"), 7).await.unwrap(), 12);
        assert_eq!(l.debit_tokens(Scope::Tenant("u"), 1).await.unwrap(), 1);
    }

    fn retry_secs(err: &GatewayError) -> u64 {
        match err {
            GatewayError::RateLimited { headers, .. } => headers.reset,
            other => panic!("expected a 429, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_address_over_its_refused_key_limit_is_refused_until_its_room_returns() {
        let l = limiter();
        let ip = IpAddr::from([192, 0, 2, 7]);
        let other = IpAddr::from([192, 0, 2, 8]);
        let plan = per_minute(2);
        assert!(l.check_key_failures(ip).is_ok(), "nothing recorded yet");
        // Two refused keys: each stays the caller's 401.
        assert!(l.record_key_failure(ip, &plan).await.is_none());
        assert!(l.record_key_failure(ip, &plan).await.is_none());
        assert!(
            l.check_key_failures(ip).is_ok(),
            "at the limit, not over it"
        );
        // The third is over: a 429 whose Retry-After is when one failure's room returns
        // (60 s / 2 = 30 s).
        let err = l.record_key_failure(ip, &plan).await.expect("refused");
        assert!((29..=30).contains(&retry_secs(&err)), "{err:?}");
        // From then on the address is refused before any key is looked at, with the time left.
        let err = l.check_key_failures(ip).expect_err("blocked");
        assert!((29..=30).contains(&retry_secs(&err)), "{err:?}");
        assert!(l.check_key_failures(other).is_ok(), "another address");
        // No failures plan: nothing counted.
        assert!(l
            .record_key_failure(other, &Plan::default())
            .await
            .is_none());
    }

    fn block(l: &Limiter, ip: IpAddr, until: u64) {
        let decision = Decision {
            refused_by: Some(Window::Minute),
            headers: Default::default(),
        };
        l.key_failures.insert(ip, (until, decision));
        l.any_key_failures
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    #[test]
    fn a_refused_key_block_ends_at_its_time_and_is_forgotten() {
        let l = limiter();
        let ip = IpAddr::from([192, 0, 2, 9]);
        block(&l, ip, now_ms() - 1);
        assert!(l.check_key_failures(ip).is_ok(), "run out");
        assert!(l.key_failures.is_empty(), "and dropped");
        block(&l, ip, now_ms() + 60_000);
        assert!(l.check_key_failures(ip).is_err());
    }

    #[test]
    fn sweeping_drops_ended_blocks_and_clears_the_flag_when_none_is_left() {
        let l = limiter();
        let (a, b) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        let now = now_ms();
        block(&l, a, now);
        block(&l, b, now + 1);
        l.sweep_at(now);
        assert!(!l.key_failures.contains_key(&a), "ends at its time");
        assert!(l.key_failures.contains_key(&b));
        assert!(l
            .any_key_failures
            .load(std::sync::atomic::Ordering::Relaxed));
        l.sweep_at(now + 1);
        assert!(l.key_failures.is_empty());
        assert!(
            !l.any_key_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            "no block left: the request path skips the map again"
        );
        // `sweep` is `sweep_at` now.
        block(&l, a, now_ms() - 1);
        l.sweep();
        assert!(l.key_failures.is_empty());
    }

    const LEASE: Lease = Lease {
        requests: 8,
        ms: 1_000,
    };

    fn granted(remaining: u64) -> Decision {
        Decision {
            refused_by: None,
            headers: crate::ratelimit::RateLimitHeaders {
                limit: 100,
                remaining,
                reset: 1,
            },
        }
    }

    /// As the store's grant of `granted` requests at `now` (with `remaining` left after them)
    /// would leave it: held for scope `key` under per-minute 100.
    fn hold(l: &Limiter, key: &str, remaining: u64, granted_n: u64, now: u64) {
        let limits = per_minute(100).windows();
        l.hold(
            key.into(),
            key.into(),
            limits,
            granted(remaining),
            granted_n,
            now,
            LEASE,
        );
    }

    fn ask(spent: Spent) -> Take {
        match spent {
            Spent::Ask(take) => take,
            Spent::Here(d) => panic!("spent here: {d:?}"),
        }
    }

    fn here(spent: Spent) -> Decision {
        match spent {
            Spent::Here(d) => d,
            Spent::Ask(take) => panic!("asked: {take:?}"),
        }
    }

    #[test]
    fn a_lease_is_spent_here_counting_remaining_down_then_asks_again() {
        let l = limiter();
        let now = 1_000_000;
        let fresh = Take {
            want: 8,
            back: 0,
            back_calendar: 0,
        };
        assert_eq!(ask(l.spend("t:a", now, LEASE)), fresh, "nothing held");
        // The store granted 5 and had 60 left after them: this request and 4 more.
        hold(&l, "t:a", 60, 5, now);
        for left in (0..4).rev() {
            let d = here(l.spend("t:a", now + 10, LEASE));
            assert!(d.allowed());
            assert_eq!(
                d.headers.remaining,
                60 + left,
                "the store's room and the lease's"
            );
        }
        assert_eq!(
            ask(l.spend("t:a", now + 20, LEASE)),
            fresh,
            "spent: ask, nothing back"
        );
        assert!(l.leases.is_empty());
        assert_eq!(ask(l.spend("t:b", now, LEASE)), fresh, "another scope");
    }

    #[test]
    fn what_a_lease_did_not_spend_goes_back_with_the_next_ask() {
        let l = limiter();
        let now = 5 * 86_400_000 + 1_000;
        hold(&l, "t:a", 60, 5, now);
        here(l.spend("t:a", now + 999, LEASE));
        // Ended at lease.ms: its 3 unused requests go back, to every window.
        let take = ask(l.spend("t:a", now + 1_000, LEASE));
        assert_eq!(
            take,
            Take {
                want: 8,
                back: 3,
                back_calendar: 3
            }
        );
        assert!(l.leases.is_empty());
        // A lease of yesterday returns nothing to today's calendar counts.
        hold(&l, "t:a", 60, 5, now - 2_000);
        let take = ask(l.spend("t:a", now + 86_400_000, LEASE));
        assert_eq!((take.back, take.back_calendar), (4, 0));
    }

    #[test]
    fn concurrent_grants_add_up_and_the_sooner_end_holds() {
        let l = limiter();
        let now = 1_000_000;
        let limits = per_minute(100).windows();
        hold(&l, "t:a", 60, 3, now);
        hold(&l, "t:a", 50, 4, now + 500);
        let held = l.leases.get("t:a").map(|h| (h.left, h.until)).unwrap();
        assert_eq!(held, (2 + 3, now + 1_000));
        // A refusal or a single request holds nothing.
        let refused = Decision {
            refused_by: Some(Window::Minute),
            ..granted(0)
        };
        l.hold("t:b".into(), "t:b".into(), limits, refused, 8, now, LEASE);
        hold(&l, "t:c", 9, 1, now);
        assert!(!l.leases.contains_key("t:b") && !l.leases.contains_key("t:c"));
        // A lease held since yesterday is replaced (its calendar counts cannot go back).
        hold(&l, "t:a", 40, 2, now + 86_400_000);
        let held = l.leases.get("t:a").map(|h| (h.left, h.until)).unwrap();
        assert_eq!(held, (1, now + 86_400_000 + 1_000));
    }

    #[test]
    fn a_logout_here_ends_the_users_leases_at_once() {
        let l = limiter();
        let now = now_ms();
        let limits = per_minute(100).windows();
        let t1 = user_lease_key(crate::store::suite::token("usr_1", "j1", 1));
        let t2 = user_lease_key(crate::store::suite::token("usr_12", "j1", 1));
        assert_eq!(t1, "u:usr_1\0j1");
        let no_jti = crate::store::TokenRef {
            subject: "usr_1",
            jti: None,
            issued_at: 77,
        };
        assert_eq!(user_lease_key(no_jti), "u:usr_1\0@77");
        for key in [&t1, &t2] {
            l.hold(key.clone(), "u:x".into(), limits, granted(9), 5, now, LEASE);
        }
        l.end_user_leases("usr_1");
        let take = ask(l.spend(&t1, now, LEASE));
        assert_eq!(take.back, 4, "ended: its unused requests go back");
        here(l.spend(&t2, now, LEASE));
    }

    #[tokio::test]
    async fn leases_off_or_from_a_store_in_this_process_hold_nothing() {
        let l = limiter();
        let plan = per_minute(100);
        let on = LimitPolicy {
            lease: LEASE,
            ..OPEN
        };
        for policy in [OPEN, on] {
            let d = l.admit(Scope::Tenant("t"), &plan, policy).await.unwrap();
            assert!(d.unwrap().allowed());
            let token = crate::store::suite::token("usr_1", "j1", 1);
            let d = l.admit_user(token, &plan, policy).await.unwrap();
            assert!(d.unwrap().allowed());
        }
        assert!(
            l.leases.is_empty(),
            "the memory store grants one request at a time"
        );
        // Each request counted once: 2 of 100 used per scope.
        let d = l
            .admit(Scope::Tenant("t"), &plan, OPEN)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.headers.remaining, 97);
        l.return_leases(true).await;
    }

    #[test]
    fn leases_are_on_with_more_than_one_request_and_a_time() {
        assert!(LEASE.is_on());
        assert!(!Lease::OFF.is_on());
        assert!(!Lease {
            requests: 1,
            ms: 1_000
        }
        .is_on());
        assert!(!Lease { requests: 8, ms: 0 }.is_on());
    }
    #[tokio::test]
    async fn housekeeping_returns_ended_leases_and_shutdown_returns_every_lease() {
        let l = limiter();
        let now = now_ms();
        hold(&l, "t:ended", 9, 5, now - 2_000);
        hold(&l, "t:live", 9, 5, now);
        l.return_leases(false).await;
        assert!(!l.leases.contains_key("t:ended"), "ended: returned");
        assert!(l.leases.contains_key("t:live"), "still being spent");
        l.return_leases(true).await;
        assert!(l.leases.is_empty(), "at shutdown every lease goes back");
    }

    #[test]
    fn a_lease_ends_at_its_time_and_gives_back_only_what_it_did_not_spend() {
        let limits = per_minute(100).windows();
        let held = |left| Held {
            scope: "t:a".into(),
            limits,
            left,
            until: 2_000,
            taken_at: 1_000,
            decision: granted(9),
        };
        assert!(!held(3).ended(1_999));
        assert!(held(3).ended(2_000));
        assert_eq!(
            held(3).give_back(2_000),
            Some(Take {
                want: 0,
                back: 3,
                back_calendar: 3
            })
        );
        assert_eq!(
            held(0).give_back(2_000),
            None,
            "all spent: nothing to return"
        );
    }

    #[test]
    fn leases_apply_only_to_decisions_with_limits() {
        let on = LimitPolicy {
            lease: LEASE,
            ..OPEN
        };
        assert!(on.leases(&per_minute(10).windows()));
        assert!(
            !on.leases(&Plan::default().windows()),
            "a revocation check alone"
        );
        assert!(!OPEN.leases(&per_minute(10).windows()));
    }
}
