//! Counting and revocation state in the gateway's own memory: the [`Counters`] of the stores
//! that live in its process (memory and embedded), written once for both. The embedded store
//! writes its file first and then this state; the memory store has only this.

use async_trait::async_trait;

use super::{Admission, Counters, TokenRef};
use crate::error::StoreError;
use crate::ratelimit::{Decision, LocalLimiter, Usage, Window};
use crate::util::FastMap;

/// Limits, token budgets and revocations of one process. Every answer comes from memory: none
/// blocks, so the stores holding one report `in_process`.
#[derive(Debug, Default)]
pub struct LocalCounters {
    /// Every scope's windows (GCRA and calendar counts).
    pub limiter: LocalLimiter,
    /// Revoked access-token ids -> (user, until when).
    pub revoked_jtis: FastMap<String, (String, u64)>,
    /// "Log out everywhere" lines per user.
    pub user_cutoffs: UserCutoffs,
}

impl LocalCounters {
    /// Whether `token` is refused at `now` (unix seconds): by its id, or by its user's line.
    pub fn revoked(&self, token: TokenRef<'_>, now: u64) -> bool {
        token
            .jti
            .is_some_and(|jti| self.revoked_jtis.get(jti).is_some_and(|r| r.1 > now))
            || self
                .user_cutoffs
                .revokes(token.subject, token.issued_at, now)
    }

    /// Refuse the token id `jti` of `subject` until `until` (unix seconds).
    pub fn revoke_jti(&self, subject: &str, jti: &str, until: u64) {
        self.revoked_jtis
            .insert(jti.to_string(), (subject.to_string(), until));
    }

    /// Drop revocations and windows that have ended.
    pub fn sweep(&self, now_ms: u64) {
        let now = now_ms / 1000;
        self.revoked_jtis.retain(|_, r| r.1 > now);
        self.user_cutoffs.sweep(now);
        self.limiter.sweep(now_ms);
    }
}

#[async_trait]
impl Counters for LocalCounters {
    async fn admit_token(
        &self,
        token: TokenRef<'_>,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Admission, StoreError> {
        if self.revoked(token, now_ms / 1000) {
            return Ok(Admission::Revoked);
        }
        let scope = super::scope::user(token.subject);
        Ok(Admission::Decided(
            self.limiter.check(&scope, limits, now_ms),
        ))
    }

    async fn rate_limit(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        Ok(self.limiter.check(scope, limits, now_ms))
    }

    /// One request at a time (its limiter is already local: leasing from it would gain
    /// nothing), but what is given back is given back: a successful login's place in its
    /// failure ceilings (`Limiter::attempt`).
    async fn lease(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
        take: crate::store::Take,
    ) -> Result<(Decision, u64), StoreError> {
        let ask = (take.want.min(1), take.back, take.back_calendar);
        Ok(self.limiter.take(scope, limits, now_ms, ask))
    }

    async fn peek_rate_limit(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        Ok(self.limiter.peek(scope, limits, now_ms))
    }

    async fn usage(&self, scope: &str, now_ms: u64) -> Result<Usage, StoreError> {
        Ok(self.limiter.usage(scope, now_ms))
    }

    async fn add_tokens(&self, scope: &str, n: u64, now_ms: u64) -> Result<u64, StoreError> {
        Ok(self.limiter.add(scope, Window::Tokens, n, now_ms))
    }

    async fn tokens_used(&self, scope: &str, now_ms: u64) -> Result<u64, StoreError> {
        Ok(self.limiter.count(scope, Window::Tokens, now_ms))
    }

    async fn restore_counter(
        &self,
        scope: &str,
        window: Window,
        period: u64,
        count: u64,
    ) -> Result<(), StoreError> {
        self.limiter.restore(scope, window, period, count);
        Ok(())
    }
}

/// "Log out everywhere" in process memory (the memory store's, and the embedded store's mirror
/// of its file): user id -> (tokens issued at or before this are refused, until when).
#[derive(Debug, Default)]
pub struct UserCutoffs {
    map: crate::util::FastMap<String, (u64, u64)>,
    /// Set once any user has logged out everywhere: until then the request path skips the map.
    any: std::sync::atomic::AtomicBool,
}

impl UserCutoffs {
    /// Move user `subject`'s line to `through` (never back), kept until `until`.
    pub fn set(&self, subject: &str, through: u64, until: u64) {
        let mut e = self.map.entry(subject.to_string()).or_insert((0, 0));
        e.0 = e.0.max(through);
        e.1 = e.1.max(until);
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a token of `subject` issued at `issued_at` falls before the user's line.
    pub fn revokes(&self, subject: &str, issued_at: u64, now: u64) -> bool {
        self.any.load(std::sync::atomic::Ordering::Acquire)
            && self
                .map
                .get(subject)
                .is_some_and(|c| issued_at <= c.0 && now < c.1)
    }

    pub fn sweep(&self, now: u64) {
        self.map.retain(|_, c| c.1 > now);
    }

    /// Every live line, as (user id, through, until).
    pub fn entries(&self) -> Vec<(String, u64, u64)> {
        self.map
            .iter()
            .map(|e| (e.key().clone(), e.value().0, e.value().1))
            .collect()
    }
}
