//! The PostgreSQL store's `Counters`, exact across replicas: a scope's whole limiter state (a
//! GCRA time per second/minute/hour window, a count per calendar window) is one row of
//! `ares_gateway.limits`, locked for the decision (`INSERT ... ON CONFLICT DO UPDATE ...
//! RETURNING` creates or locks it in one statement), decided with the arithmetic every store
//! shares (`ratelimit::ScopeState`) and written back in the same transaction. A user's token is
//! checked against its revocations in that transaction too. Leases (`Counters::lease`) take
//! several requests in one decision, as the Redis store's script does.

use async_trait::async_trait;

use super::rows::{revocation_sql, revoked};
use super::schema::{db, one_line, SCHEMA};
use super::{i, u, PostgresStore};
use crate::error::StoreError;
use crate::ratelimit::{Decision, ScopeState, Usage, Window, WINDOWS};
use crate::store::records::Record;
use crate::store::{scope, Admission, Counters, Take, TokenRef};

/// What a decision does with the scope's state.
enum Step<'a> {
    /// Decide (and count) under `limits`, with a lease's ask.
    Take(&'a [(Window, u64)], Take),
    /// Add `n` to a calendar window (token debits).
    Add(Window, u64),
    /// Set a calendar count to at least `count` (loading an export).
    Restore(Window, u64, u64),
}

/// What it answered.
enum Done {
    Decided(Decision, u64),
    Count(u64),
    Nothing,
}

fn state(tats: &[i64], periods: &[i64]) -> Result<ScopeState, StoreError> {
    let tats = tats.iter().map(|t| u(*t)).collect::<Result<Vec<_>, _>>()?;
    let mut pairs = Vec::with_capacity(periods.len() / 2);
    for p in periods.chunks_exact(2) {
        pairs.push((u(p[0])?, u(p[1])?));
    }
    Ok(ScopeState::from_parts(&tats, &pairs))
}

fn columns(s: &ScopeState) -> Result<(Vec<i64>, Vec<i64>), StoreError> {
    let (tats, periods) = s.parts();
    let tats = tats.iter().map(|t| i(*t)).collect::<Result<Vec<_>, _>>()?;
    let mut flat = Vec::with_capacity(periods.len() * 2);
    for (p, c) in periods {
        flat.push(i(p)?);
        flat.push(i(c)?);
    }
    Ok((tats, flat))
}

impl PostgresStore {
    /// One locked decision on `scope`'s row. With `token`, a revoked token answers `None` and
    /// counts nothing.
    async fn locked(
        &self,
        scope: &str,
        now_ms: u64,
        token: Option<TokenRef<'_>>,
        step: Step<'_>,
    ) -> Result<Option<Done>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        if let Some(t) = token {
            let st = tx.prepare_cached(&revocation_sql()).await.map_err(db)?;
            let row = tx
                .query_one(&st, &[&t.jti.unwrap_or(""), &t.subject, &i(now_ms / 1000)?])
                .await
                .map_err(db)?;
            if revoked(&row, t)? {
                return Ok(None);
            }
        }
        let lock = tx
            .prepare_cached(&format!(
                "INSERT INTO {SCHEMA}.limits (scope, tats, periods, touched_ms) \
                 VALUES ($1, '{{}}', '{{}}', $2) \
                 ON CONFLICT (scope) DO UPDATE SET touched_ms = EXCLUDED.touched_ms \
                 RETURNING tats, periods"
            ))
            .await
            .map_err(db)?;
        let row = tx
            .query_one(&lock, &[&scope, &i(now_ms)?])
            .await
            .map_err(db)?;
        let tats: Vec<i64> = row
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
        let periods: Vec<i64> = row
            .try_get(1)
            .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
        let mut s = state(&tats, &periods)?;
        let done = match step {
            Step::Take(limits, take) => {
                let (d, granted) = s.take(limits, now_ms, take.want, take.back, take.back_calendar);
                Done::Decided(d, granted)
            }
            Step::Add(w, n) => {
                s.consume(w, n, now_ms);
                Done::Count(s.count(w, now_ms))
            }
            Step::Restore(w, period, count) => {
                s.restore(w, period, count);
                Done::Nothing
            }
        };
        let (tats, periods) = columns(&s)?;
        let write = tx
            .prepare_cached(&format!(
                "UPDATE {SCHEMA}.limits SET tats = $2, periods = $3 WHERE scope = $1"
            ))
            .await
            .map_err(db)?;
        tx.execute(&write, &[&scope, &tats, &periods])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(done))
    }

    /// The scope's state as it is, unlocked (peeks and usage reads).
    async fn read_state(&self, scope: &str) -> Result<ScopeState, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT tats, periods FROM {SCHEMA}.limits WHERE scope = $1"
            ))
            .await
            .map_err(db)?;
        match c.query_opt(&st, &[&scope]).await.map_err(db)? {
            None => Ok(ScopeState::default()),
            Some(row) => {
                let tats: Vec<i64> = row
                    .try_get(0)
                    .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
                let periods: Vec<i64> = row
                    .try_get(1)
                    .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
                state(&tats, &periods)
            }
        }
    }

    /// The calendar counts of the current periods, as export lines.
    pub(super) async fn counter_records(
        &self,
        c: &tokio_postgres::Client,
    ) -> Result<Vec<Record>, StoreError> {
        let rows = c
            .query(
                &format!("SELECT scope, tats, periods FROM {SCHEMA}.limits"),
                &[],
            )
            .await
            .map_err(db)?;
        let now_ms = crate::util::now_ms();
        let mut out = Vec::new();
        for r in rows {
            let scope: String = r
                .try_get(0)
                .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
            let tats: Vec<i64> = r
                .try_get(1)
                .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
            let periods: Vec<i64> = r
                .try_get(2)
                .map_err(|e| StoreError::Corrupt(one_line(&e)))?;
            let s = state(&tats, &periods)?;
            for w in WINDOWS.iter().copied().filter(|w| w.is_calendar()) {
                let n = s.count(w, now_ms);
                if n > 0 {
                    out.push(Record::counter(&scope, w, w.calendar_period(now_ms).0, n));
                }
            }
        }
        Ok(out)
    }
}

fn decided(done: Option<Done>) -> Result<(Decision, u64), StoreError> {
    match done {
        Some(Done::Decided(d, granted)) => Ok((d, granted)),
        _ => Err(StoreError::Corrupt(
            "limiter step answered out of turn".into(),
        )),
    }
}

#[async_trait]
impl Counters for PostgresStore {
    async fn admit_token(
        &self,
        token: TokenRef<'_>,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Admission, StoreError> {
        let (a, _) = self.lease_token(token, limits, now_ms, Take::ONE).await?;
        Ok(a)
    }

    async fn lease(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
        take: Take,
    ) -> Result<(Decision, u64), StoreError> {
        decided(
            self.locked(scope, now_ms, None, Step::Take(limits, take))
                .await?,
        )
    }

    async fn lease_token(
        &self,
        token: TokenRef<'_>,
        limits: &[(Window, u64)],
        now_ms: u64,
        take: Take,
    ) -> Result<(Admission, u64), StoreError> {
        let scope = scope::user(token.subject);
        // A return alone (want 0) is no request: no revocation to check.
        let check = (take.want > 0).then_some(token);
        match self
            .locked(&scope, now_ms, check, Step::Take(limits, take))
            .await?
        {
            None => Ok((Admission::Revoked, 0)),
            done => decided(done).map(|(d, g)| (Admission::Decided(d), g)),
        }
    }

    async fn rate_limit(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        self.lease(scope, limits, now_ms, Take::ONE)
            .await
            .map(|(d, _)| d)
    }

    async fn peek_rate_limit(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        Ok(self.read_state(scope).await?.decide(limits, now_ms, false))
    }

    async fn usage(&self, scope: &str, now_ms: u64) -> Result<Usage, StoreError> {
        let s = self.read_state(scope).await?;
        Ok(Usage {
            day: s.count(Window::Day, now_ms),
            month: s.count(Window::Month, now_ms),
        })
    }

    async fn add_tokens(&self, scope: &str, n: u64, now_ms: u64) -> Result<u64, StoreError> {
        match self
            .locked(scope, now_ms, None, Step::Add(Window::Tokens, n))
            .await?
        {
            Some(Done::Count(total)) => Ok(total),
            _ => Err(StoreError::Corrupt(
                "token debit answered out of turn".into(),
            )),
        }
    }

    async fn tokens_used(&self, scope: &str, now_ms: u64) -> Result<u64, StoreError> {
        Ok(self.read_state(scope).await?.count(Window::Tokens, now_ms))
    }

    async fn restore_counter(
        &self,
        scope: &str,
        window: Window,
        period: u64,
        count: u64,
    ) -> Result<(), StoreError> {
        if !window.is_calendar() {
            return Ok(());
        }
        self.locked(
            scope,
            crate::util::now_ms(),
            None,
            Step::Restore(window, period, count),
        )
        .await
        .map(|_| ())
    }
}
