//! The one way the gateway limits anything: [`Limiter`] asks the store, falls back by the
//! failure policy when the store cannot answer, and counts every decision in the metrics.
//!
//! Every limit goes through it: a tenant's plan, a user's plan (with the access token's
//! revocation in the same store round trip), the per-address limit of `/api/auth/*`, and the
//! failed-login limits. Only the failed-login check never falls open: a store that cannot say how
//! many guesses were made refuses the login (503) rather than allow unlimited guessing.

use std::net::IpAddr;

use super::{Decision, FailurePolicy, LocalLimiter, Plan, Window};
use crate::error::GatewayError;
use crate::store::{scope, Admission, StoreHandle, TokenRef};
use crate::util::now_ms;

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

/// When the shared store fails: the policy, and how many replicas share the limits (the `local`
/// policy enforces `limit / replicas` in each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnFailure {
    pub policy: FailurePolicy,
    pub replicas: u64,
}

/// The store, the local fallback and the metrics, behind one call per decision.
pub struct Limiter {
    store: StoreHandle,
    /// Limits in force while the shared store is unreachable (`local` policy).
    fallback: LocalLimiter,
    /// Client addresses over their refused-API-key limit, until when (ms) and with which
    /// headers: learned from the shared count when it refuses, so that a key is not even
    /// looked at from them, without a store round trip on any request that passes.
    key_failures: dashmap::DashMap<IpAddr, (u64, Decision)>,
    /// Whether `key_failures` may hold anything: one atomic load on the request path.
    any_key_failures: std::sync::atomic::AtomicBool,
}

impl Limiter {
    pub fn new(store: StoreHandle) -> Self {
        Limiter {
            store,
            fallback: LocalLimiter::new(),
            key_failures: dashmap::DashMap::new(),
            any_key_failures: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Admit one request of `scope` under `plan`. `None`: nothing to limit (or limits open
    /// during an outage). A refusal is a `Decision` naming its window; the caller answers it.
    pub async fn admit(
        &self,
        scope: Scope<'_>,
        plan: &Plan,
        on_failure: OnFailure,
    ) -> Result<Option<Decision>, GatewayError> {
        let limits = plan.windows();
        if limits.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let decided = self
            .store
            .call(self.store.rate_limit(&scope.key(), &limits, now))
            .await;
        self.decided(scope, plan, on_failure, now, decided)
    }

    /// As [`Limiter::admit`] for a user's access token, with its revocation (`jti`) checked in
    /// the same store round trip: a revoked token is `InvalidToken` and counts against nothing.
    pub async fn admit_user(
        &self,
        token: TokenRef<'_>,
        plan: &Plan,
        on_failure: OnFailure,
    ) -> Result<Option<Decision>, GatewayError> {
        let limits = plan.windows();
        let sub = token.subject;
        let now = now_ms();
        let admitted = self
            .store
            .call(self.store.admit_token(token, &limits, now))
            .await;
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
        self.decided(Scope::User(sub), plan, on_failure, now, decided)
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
                .store
                .call(self.store.peek_rate_limit(&scope.key(), &windows, now))
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
                .store
                .call(self.store.rate_limit(&scope.key(), &windows, now))
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
            .store
            .call(self.store.rate_limit(&scope.key(), &windows, now))
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
        self.store
            .call(self.store.add_tokens(&key, n, now_ms()))
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
        on_failure: OnFailure,
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
                tracing::warn!(error = %e, policy = ?on_failure.policy, "rate limiter falling back");
                match on_failure.policy {
                    FailurePolicy::Open => Ok(None),
                    FailurePolicy::Closed => Err(e),
                    FailurePolicy::Local => {
                        let local = plan.divided(on_failure.replicas).windows();
                        Ok(Some(self.fallback.check(&scope.key(), &local, now)))
                    }
                }
            }
        }
    }
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

    fn limiter() -> Limiter {
        Limiter::new(StoreHandle::new(
            Arc::new(MemoryStore::new()),
            Duration::from_millis(300),
        ))
    }

    fn per_minute(n: u64) -> Plan {
        let mut p = Plan::default();
        p.set(Window::Minute, Some(n));
        p
    }

    const OPEN: OnFailure = OnFailure {
        policy: FailurePolicy::Open,
        replicas: 1,
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
        let l = limiter();
        let plan = per_minute(1);
        l.store
            .call(
                l.store
                    .revoke_jti("usr_1", "j1", crate::util::unix_now() + 60),
            )
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
}
