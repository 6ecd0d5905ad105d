//! The Redis store's `Counters`: every decision one Lua script (`limit.lua`) over the keys of
//! one hash slot, atomic and one round trip.

use super::*;

/// Decide every window of one scope atomically; consume from all only when all allow.
///
/// KEYS: the revocation keys of the request's access token (none for an API key), then its
/// user's "log out everywhere" key (holding a time: tokens issued at or before it are revoked),
/// then one per window, in check order. ARGV: now_ms, consume (1/0), the number of revocation
/// keys, the number of cut-off keys, the token's iat, want (requests to take at once: 1, or a
/// lease's size; 0 takes none), back (a lease's unused requests to return to the GCRA windows
/// first), back_calendar (the same for the calendar windows: 0 once the lease's day is over),
/// then per window: kind (`g` second, minute or hour: GCRA | `c` calendar | `k` check-only
/// calendar: the token budget), limit, span (GCRA: window ms; calendar: period end ms).
/// A GCRA key holds one number, the theoretical arrival time in microseconds (the arithmetic of
/// `ratelimit::Gcra`, which the memory store runs); it expires when it is in the past.
/// Returns {-1, 0, 0, 0, 0} when a revocation key exists (nothing consumed), else {refusing
/// window index or 0, limit, remaining, reset_ms, granted} of the refusing or tightest window.
/// Granted is how many requests were taken: `want` while every window has room for four times
/// as many, else a quarter of the smallest room (at least one), so near a limit a lease shrinks
/// to the single request and the decision is exact again. Remaining is what is left after them.
pub(super) const LIMIT_SCRIPT: &str = include_str!("limit.lua");

impl RedisStore {
    /// `{p}rl:{<scope>}:<window>:gcra` for a second, minute or hour window, and
    /// `{p}rl:{<scope>}:<window>:<period>` for a calendar window: the one place the limiter's key
    /// names are made. (Before GCRA, `{p}rl:{<scope>}:<window>` held a sliding log; such keys are
    /// never read now and expire within their window's length.)
    pub(super) fn window_key(&self, scope: &str, w: Window, period: Option<u64>) -> String {
        let mut key = String::with_capacity(64);
        self.write_window_key(&mut key, scope, w, period);
        key
    }

    /// [`RedisStore::window_key`] written into `key` (cleared first), without `format!`: the
    /// limiter builds these on every request.
    pub(super) fn write_window_key(
        &self,
        key: &mut String,
        scope: &str,
        w: Window,
        period: Option<u64>,
    ) {
        key.clear();
        for part in [self.prefix.as_str(), "rl:{", scope, "}:", w.name()] {
            key.push_str(part);
        }
        match period {
            Some(period) => {
                key.push(':');
                key.push_str(itoa::Buffer::new().format(period));
            }
            None => key.push_str(":gcra"),
        }
    }

    /// The revocation key of an access token, in its user's limiter slot (`scope::user`).
    pub(super) fn revocation_key(&self, user_scope: &str, jti: &str) -> String {
        key!(self, "jti:{{{user_scope}}}:{jti}")
    }

    /// The "log out everywhere" key of a user, in its limiter slot (`scope::user`).
    pub(super) fn cutoff_key(&self, user_scope: &str) -> String {
        key!(self, "ub:{{{user_scope}}}")
    }

    /// One run of the limiter script: the revocation keys first, then the token's cut-off key
    /// (with its `iat`), then the windows.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn decide(
        &self,
        revocations: &[String],
        cutoff: Option<(&str, u64)>,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
        consume: bool,
        take: Take,
    ) -> Result<(Admission, u64), StoreError> {
        if limits.is_empty() && revocations.is_empty() && cutoff.is_none() {
            let decision = Decision {
                refused_by: None,
                headers: RateLimitHeaders::default(),
            };
            return Ok((Admission::Decided(decision), u64::from(take.want > 0)));
        }
        // EVALSHA built as one command (one buffer) rather than through `ScriptInvocation`,
        // which allocates per argument and copies them all into a command again.
        let ncut = usize::from(cutoff.is_some());
        let nkeys = revocations.len() + ncut + limits.len();
        let mut cmd = redis::Cmd::with_capacity(3 + nkeys + 8 + 3 * limits.len(), 512);
        cmd.arg("EVALSHA").arg(self.limiter.get_hash()).arg(nkeys);
        for k in revocations {
            cmd.arg(k);
        }
        if let Some((key, _)) = cutoff {
            cmd.arg(key);
        }
        // Per window, in check order: its key, then (kind, limit, span) for the script.
        let mut key = String::with_capacity(64);
        let mut windows = Vec::with_capacity(limits.len());
        for &(w, limit) in limits {
            if w.is_calendar() {
                let (period, end) = w.calendar_period(now_ms);
                self.write_window_key(&mut key, scope, w, Some(period));
                let kind = if w.is_check_only() { "k" } else { "c" };
                windows.push((kind, limit, end));
            } else {
                self.write_window_key(&mut key, scope, w, None);
                windows.push(("g", limit, w.sliding_ms()));
            }
            cmd.arg(key.as_str());
        }
        cmd.arg(now_ms)
            .arg(if consume { "1" } else { "0" })
            .arg(revocations.len())
            .arg(ncut)
            .arg(cutoff.map_or(0, |(_, iat)| iat))
            .arg(take.want)
            .arg(take.back)
            .arg(take.back_calendar);
        for &(kind, limit, span) in &windows {
            cmd.arg(kind).arg(limit).arg(span);
        }
        let out: Vec<i64> = self.run_limiter(&cmd).await?;
        let [idx, limit, remaining, reset_ms, granted] = out.as_slice() else {
            return Err(StoreError::Corrupt(format!(
                "limiter script returned {out:?}"
            )));
        };
        let refused_by = match *idx {
            -1 => return Ok((Admission::Revoked, 0)),
            0 => None,
            i => limits.get((i - 1) as usize).map(|(w, _)| *w),
        };
        let granted = (*granted).max(0) as u64;
        let reset = (reset_ms.max(&0) + 999) / 1000;
        let decision = Decision {
            refused_by,
            headers: RateLimitHeaders {
                limit: *limit as u64,
                remaining: *remaining as u64,
                reset: if refused_by.is_some() {
                    reset.max(1) as u64
                } else {
                    reset as u64
                },
            },
        };
        Ok((Admission::Decided(decision), granted))
    }

    /// Run a limiter `EVALSHA`. When Redis does not know the script (NOSCRIPT: after a restart
    /// or a `SCRIPT FLUSH`), load it and run the command once more.
    pub(super) async fn run_limiter<T: redis::FromRedisValue>(
        &self,
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        let mut c = self.handle().await?;
        match cmd.query_async(&mut c).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.limiter.load_async(&mut c).await.map_err(unavailable)?;
                cmd.query_async(&mut c).await.map_err(unavailable)
            }
            r => r.map_err(unavailable),
        }
    }

    /// A decision of limits alone, with what it granted.
    pub(super) async fn decide_limits(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
        consume: bool,
        take: Take,
    ) -> Result<(Decision, u64), StoreError> {
        match self
            .decide(&[], None, scope, limits, now_ms, consume, take)
            .await?
        {
            (Admission::Decided(d), granted) => Ok((d, granted)),
            (Admission::Revoked, _) => Err(StoreError::Corrupt(
                "limiter script found a revocation it was not asked about".into(),
            )),
        }
    }

    pub(super) async fn calendar_count(&self, key: String) -> Result<u64, StoreError> {
        let mut c = self.handle().await?;
        let v: Option<u64> = c.get(key).await.map_err(unavailable)?;
        Ok(v.unwrap_or(0))
    }
}

#[async_trait]
impl Counters for RedisStore {
    async fn admit_token(
        &self,
        token: TokenRef<'_>,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Admission, StoreError> {
        let (admission, _) = self.lease_token(token, limits, now_ms, Take::ONE).await?;
        Ok(admission)
    }

    async fn lease_token(
        &self,
        token: TokenRef<'_>,
        limits: &[(Window, u64)],
        now_ms: u64,
        take: Take,
    ) -> Result<(Admission, u64), StoreError> {
        let scope = scope::user(token.subject);
        let cutoff_key = self.cutoff_key(&scope);
        let cutoff = Some((cutoff_key.as_str(), token.issued_at));
        let Some(jti) = token.jti else {
            return self
                .decide(&[], cutoff, &scope, limits, now_ms, true, take)
                .await;
        };
        let mut revocations = vec![self.revocation_key(&scope, jti)];
        let legacy = self.legacy_revocations.then(|| key!(self, "jti:{jti}"));
        if self.is_one_redis() {
            // One Redis: the script may read a key of any name.
            revocations.extend(legacy);
            return self
                .decide(&revocations, cutoff, &scope, limits, now_ms, true, take)
                .await;
        }
        let decided = self.decide(&revocations, cutoff, &scope, limits, now_ms, true, take);
        let Some(legacy) = legacy else {
            return decided.await;
        };
        // Under Cluster the legacy key lives in another slot: it is asked alongside the script
        // (so while it is read, a revoked token may count once against its user).
        let legacy_revoked = async {
            let mut c = self.handle().await?;
            c.exists::<_, bool>(legacy).await.map_err(unavailable)
        };
        let (decided, legacy_revoked) = tokio::join!(decided, legacy_revoked);
        if legacy_revoked? {
            return Ok((Admission::Revoked, 0));
        }
        decided
    }

    async fn rate_limit(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        let (d, _) = self
            .decide_limits(scope, limits, now_ms, true, Take::ONE)
            .await?;
        Ok(d)
    }

    async fn lease(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
        take: Take,
    ) -> Result<(Decision, u64), StoreError> {
        self.decide_limits(scope, limits, now_ms, true, take).await
    }

    async fn peek_rate_limit(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        let (d, _) = self
            .decide_limits(scope, limits, now_ms, false, Take::ONE)
            .await?;
        Ok(d)
    }

    async fn usage(&self, scope: &str, now_ms: u64) -> Result<Usage, StoreError> {
        let mut counts = [0u64; 2];
        for (slot, w) in counts.iter_mut().zip([Window::Day, Window::Month]) {
            let (period, _) = w.calendar_period(now_ms);
            *slot = self
                .calendar_count(self.window_key(scope, w, Some(period)))
                .await?;
        }
        Ok(Usage {
            day: counts[0],
            month: counts[1],
        })
    }

    async fn add_tokens(&self, scope: &str, n: u64, now_ms: u64) -> Result<u64, StoreError> {
        let (period, end) = Window::Month.calendar_period(now_ms);
        // The token budget's counter: the limiter script checks the same key, in the same slot.
        let key = self.window_key(scope, Window::Tokens, Some(period));
        let mut c = self.handle().await?;
        let (total,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, n)
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(end + 86_400_000)
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(total)
    }

    async fn tokens_used(&self, scope: &str, now_ms: u64) -> Result<u64, StoreError> {
        let (period, _) = Window::Month.calendar_period(now_ms);
        self.calendar_count(self.window_key(scope, Window::Tokens, Some(period)))
            .await
    }

    async fn restore_counter(
        &self,
        scope: &str,
        window: Window,
        period: u64,
        count: u64,
    ) -> Result<(), StoreError> {
        self.restore_count(scope, window, period, count).await
    }
}
