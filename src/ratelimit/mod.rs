//! Rate-limit windows, plans, the exact in-process limiter, and the response headers: pure
//! arithmetic, no I/O (the Limiter above the store uses it).
//!
//! Semantics (shared by every store):
//! - second, minute and hour are GCRA windows (the generic cell rate algorithm: one theoretical
//!   arrival time per scope and window, constant state): a burst of at most `limit`, then one
//!   request every `window / limit` (over any interval t at most limit + t / interval pass:
//!   docs/rate-limits.md).
//! - day and month are UTC calendar windows (reset at 00:00 UTC and on the 1st), as ARES counts.
//! - one decision checks every window of a scope and consumes from all of them only when all
//!   allow, so refused requests consume nothing. Windows are checked month first, then day, hour,
//!   minute, second, and a refusal names the first window that refused.

use std::cell::RefCell;
use std::collections::BTreeMap;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Mutex;

/// A rate-limit window. Declaration order is check order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    Month,
    /// The tenant's monthly token budget: checked with the request windows, never consumed by
    /// a request (upstream usage headers debit it), never reported in `RateLimit-*`.
    Tokens,
    Day,
    Hour,
    Minute,
    Second,
}

/// The windows counted per UTC calendar period (kept across restarts by a durable store).
pub const CALENDAR_WINDOWS: [Window; 3] = [Window::Day, Window::Month, Window::Tokens];

pub const WINDOWS: [Window; 6] = [
    Window::Month,
    Window::Tokens,
    Window::Day,
    Window::Hour,
    Window::Minute,
    Window::Second,
];

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::Month => "month",
            Window::Tokens => "tokens",
            Window::Day => "day",
            Window::Hour => "hour",
            Window::Minute => "minute",
            Window::Second => "second",
        }
    }

    pub fn exceeded_message(self) -> &'static str {
        match self {
            Window::Month => "Monthly rate limit exceeded",
            Window::Tokens => "Monthly token quota exceeded",
            Window::Day => "Daily rate limit exceeded",
            Window::Hour => "Hourly rate limit exceeded",
            Window::Minute => "Per-minute rate limit exceeded",
            Window::Second => "Per-second rate limit exceeded",
        }
    }

    pub fn is_calendar(self) -> bool {
        matches!(self, Window::Month | Window::Tokens | Window::Day)
    }

    /// Checked but never consumed by the request itself.
    pub fn is_check_only(self) -> bool {
        self == Window::Tokens
    }

    /// Length of a sliding window in milliseconds.
    pub fn sliding_ms(self) -> u64 {
        match self {
            Window::Hour => 3_600_000,
            Window::Minute => 60_000,
            Window::Second => 1_000,
            Window::Day => 86_400_000,
            Window::Month | Window::Tokens => 31 * 86_400_000,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The calendar period containing `now_ms`, and the ms at which it ends.
    pub fn calendar_period(self, now_ms: u64) -> (u64, u64) {
        let day = now_ms / 86_400_000;
        match self {
            Window::Day => (day, (day + 1) * 86_400_000),
            _ => {
                let (y, m) = year_month(day as i64);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let id = (y as u64) * 12 + (m as u64 - 1);
                (id, days_from_civil(ny, nm, 1) as u64 * 86_400_000)
            }
        }
    }
}

/// Civil (proleptic Gregorian) year and month of a day count since 1970-01-01.
fn year_month(days: i64) -> (i64, u32) {
    let (y, m, _) = civil_from_days(days);
    (y, m)
}

/// Civil (proleptic Gregorian) year, month and day of a day count since 1970-01-01 (Howard
/// Hinnant's civil_from_days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (UTC).
pub fn date(days: u64) -> String {
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A plan's `(window, limit)` pairs, at most one per window: a slice kept on the stack.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pairs: [(Window, u64); WINDOWS.len()],
    len: usize,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            pairs: [(Window::Second, 0); WINDOWS.len()],
            len: 0,
        }
    }
}

impl std::ops::Deref for Windows {
    type Target = [(Window, u64)];

    fn deref(&self) -> &[(Window, u64)] {
        &self.pairs[..self.len]
    }
}

/// The limits of one scope: a limit per window (absent = unlimited), and a token budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    limits: [Option<u64>; 6],
    pub tokens_per_month: Option<u64>,
}

impl Plan {
    pub fn get(&self, w: Window) -> Option<u64> {
        self.limits[w.index()]
    }

    pub fn set(&mut self, w: Window, limit: Option<u64>) {
        self.limits[w.index()] = limit;
    }

    /// `(window, limit)` pairs in check order, the token budget included.
    pub fn windows(&self) -> Windows {
        let mut out = Windows::default();
        for w in WINDOWS {
            let limit = match w {
                Window::Tokens => self.tokens_per_month,
                _ => self.get(w),
            };
            if let Some(l) = limit {
                out.pairs[out.len] = (w, l);
                out.len += 1;
            }
        }
        out
    }

    /// This plan with every limit divided by `n` (at least 1 each), for the `local` policy.
    pub fn divided(&self, n: u64) -> Plan {
        let mut p = self.clone();
        for l in p.limits.iter_mut().flatten() {
            *l = (*l / n.max(1)).max(1);
        }
        p
    }
}

/// The tiers ARES defines, used when the config lists none.
pub fn default_plans() -> BTreeMap<String, Plan> {
    let mk = |minute, day, month, tokens| {
        let mut p = Plan::default();
        p.set(Window::Minute, minute);
        p.set(Window::Day, day);
        p.set(Window::Month, month);
        p.tokens_per_month = tokens;
        p
    };
    BTreeMap::from([
        (
            "free".into(),
            mk(Some(20), Some(50), Some(1_000), Some(100_000)),
        ),
        (
            "dev".into(),
            mk(Some(120), Some(2_000), Some(50_000), Some(5_000_000)),
        ),
        (
            "pro".into(),
            mk(Some(600), Some(20_000), Some(500_000), Some(50_000_000)),
        ),
        ("enterprise".into(), mk(Some(6_000), None, None, None)),
    ])
}

/// The `RateLimit-*` values of the tightest window, and `Retry-After` for a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitHeaders {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window frees capacity.
    pub reset: u64,
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl RateLimitHeaders {
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_LIMIT.clone(), repeated(LIMIT, self.limit));
        headers.insert(RATELIMIT_REMAINING.clone(), digits(self.remaining));
        headers.insert(RATELIMIT_RESET.clone(), repeated(RESET, self.reset));
    }

    pub fn retry_after_secs(&self) -> u64 {
        self.reset.max(1)
    }
}

thread_local! {
    /// This thread's last `RateLimit-Limit` and `RateLimit-Reset` values. A limit repeats from
    /// request to request (one plan), and a reset for a second at a time: those requests get a
    /// clone of the last value (a reference count) instead of a new one.
    static REPEATED: RefCell<[Option<(u64, HeaderValue)>; 2]> = const { RefCell::new([None, None]) };
}

const LIMIT: usize = 0;
const RESET: usize = 1;

/// `n` as a header value, this thread's last one for `slot` when it is the same number.
fn repeated(slot: usize, n: u64) -> HeaderValue {
    REPEATED.with_borrow_mut(|last| {
        let Some(cell) = last.get_mut(slot) else {
            return digits(n);
        };
        match cell {
            Some((m, v)) if *m == n => v.clone(),
            _ => {
                let v = digits(n);
                *cell = Some((n, v.clone()));
                v
            }
        }
    })
}

/// `n` as a header value in one allocation of its digits (`HeaderValue::from(u64)` makes two).
fn digits(n: u64) -> HeaderValue {
    let bytes = bytes::Bytes::copy_from_slice(itoa::Buffer::new().format(n).as_bytes());
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from(n))
}

/// Leases of a shared store's capacity (`rate_limits.lease_requests`, `rate_limits.lease_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    /// Requests of a scope taken from the store at once, at most; 0 or 1: every request asks.
    pub requests: u64,
    /// How long (ms) a lease may be spent; its unused requests then go back to the store.
    pub ms: u64,
}

impl Lease {
    pub const OFF: Lease = Lease { requests: 0, ms: 0 };

    pub fn is_on(&self) -> bool {
        self.requests > 1 && self.ms > 0
    }
}

/// What the limiter does when the shared store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Let requests through unlimited.
    Open,
    /// Refuse with 503 `STORE_UNAVAILABLE`.
    Closed,
    /// Enforce `limit / replicas` per replica in memory until the store is back.
    Local,
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// `None`: admitted (and consumed). `Some(w)`: refused by window `w`, nothing consumed.
    pub refused_by: Option<Window>,
    /// Headers for the tightest window (the refusing one on refusal).
    pub headers: RateLimitHeaders,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.refused_by.is_none()
    }
}

/// Usage of one scope in its calendar windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub day: u64,
    pub month: u64,
}

fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// One window of the generic cell rate algorithm (GCRA, a token bucket kept as one time): a limit
/// of `limit` per `span_ms` lets a burst of `limit` through, then one request per `span_ms / limit`
/// as capacity returns. Its whole state is the theoretical arrival time (TAT, in microseconds),
/// whatever the limit. The Redis limiter script does the same arithmetic (`store::redis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Microseconds one request occupies: `span / limit`, rounded up (so never more than the
    /// limit passes).
    interval_us: u64,
    /// Microseconds of backlog that fill the bucket: `limit * interval_us`.
    capacity_us: u64,
}

/// What a GCRA window says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraAnswer {
    pub allowed: bool,
    /// Requests that could still pass at once (after this one, when it is admitted and counted).
    pub remaining: u64,
    /// Milliseconds until one more request can pass (on refusal: the `Retry-After`).
    pub reset_ms: u64,
    /// The TAT to keep when this request is counted.
    pub tat_us: u64,
}

impl Gcra {
    /// `limit` at least 1.
    pub fn new(limit: u64, span_ms: u64) -> Gcra {
        let limit = limit.max(1);
        let interval_us = (span_ms.saturating_mul(1000)).div_ceil(limit).max(1);
        Gcra {
            interval_us,
            capacity_us: interval_us.saturating_mul(limit),
        }
    }

    /// Decide one request at `now_us` against the kept `tat_us` (0: nothing kept).
    pub fn decide(&self, tat_us: u64, now_us: u64, consume: bool) -> GcraAnswer {
        let tat = tat_us.max(now_us);
        // The backlog if this request is admitted.
        let backlog = tat - now_us + self.interval_us;
        if backlog > self.capacity_us {
            return GcraAnswer {
                allowed: false,
                remaining: 0,
                reset_ms: (backlog - self.capacity_us).div_ceil(1000),
                tat_us,
            };
        }
        let held = if consume { backlog } else { tat - now_us };
        let used = held.div_ceil(self.interval_us);
        let limit = self.capacity_us / self.interval_us;
        // One request's room returns when the backlog drops below (used - 1) intervals.
        let reset_us = held.saturating_sub(used.saturating_sub(1) * self.interval_us);
        GcraAnswer {
            allowed: true,
            remaining: limit.saturating_sub(used),
            reset_ms: if used == 0 {
                0
            } else {
                reset_us.div_ceil(1000)
            },
            tat_us: if consume {
                tat + self.interval_us
            } else {
                tat_us
            },
        }
    }
}

/// State of one scope: a GCRA time per second/minute/hour window, a counter per calendar window.
/// The local limiter keeps one per scope in memory; a store that keeps it elsewhere (PostgreSQL)
/// loads it with [`ScopeState::from_parts`], decides, and writes [`ScopeState::parts`] back.
#[derive(Debug, Default, Clone)]
pub struct ScopeState {
    /// TAT in microseconds per sliding window (0: nothing kept).
    tats: [u64; 6],
    /// `(period id, count)` per calendar window.
    periods: [(u64, u64); 6],
    /// A calendar count changed since [`LocalLimiter::take_changed`] last looked.
    changed: bool,
}

impl ScopeState {
    /// A state from what a store kept: a TAT (microseconds) and a `(period, count)` per window,
    /// indexed by [`Window`] order (shorter arrays leave the rest empty).
    pub fn from_parts(tats: &[u64], periods: &[(u64, u64)]) -> ScopeState {
        let mut s = ScopeState::default();
        for (slot, v) in s.tats.iter_mut().zip(tats) {
            *slot = *v;
        }
        for (slot, v) in s.periods.iter_mut().zip(periods) {
            *slot = *v;
        }
        s
    }

    /// What a store keeps of it (see [`ScopeState::from_parts`]).
    pub fn parts(&self) -> ([u64; 6], [(u64, u64); 6]) {
        (self.tats, self.periods)
    }

    /// Requests (or tokens) counted in window `w`'s current calendar period.
    pub fn count(&self, w: Window, now_ms: u64) -> u64 {
        let (period, _) = w.calendar_period(now_ms);
        let (p, c) = self.periods[w.index()];
        if p == period {
            c
        } else {
            0
        }
    }

    /// Add `n` to window `w`'s current calendar period (a new period starts from 0).
    pub fn consume(&mut self, w: Window, n: u64, now_ms: u64) {
        let (period, _) = w.calendar_period(now_ms);
        let slot = &mut self.periods[w.index()];
        if slot.0 != period {
            *slot = (period, 0);
        }
        slot.1 += n;
        self.changed = true;
    }

    fn is_idle(&self, now_ms: u64) -> bool {
        self.tats.iter().all(|&t| t <= now_ms * 1000)
            && CALENDAR_WINDOWS.iter().all(|w| self.count(*w, now_ms) == 0)
    }

    /// Set window `w`'s count for `period` to at least `count` (loading an export).
    pub fn restore(&mut self, w: Window, period: u64, count: u64) {
        let slot = &mut self.periods[w.index()];
        if slot.0 == period {
            slot.1 = slot.1.max(count);
        } else if slot.0 < period {
            *slot = (period, count);
        }
    }

    /// A lease ask, decided as the Redis store's script decides it (`limit.lua`): first `back`
    /// unused requests go back to the GCRA windows and `back_calendar` to the calendar windows;
    /// then, with `want` at least 1, one request is decided and up to `want` taken at once:
    /// `want` while every window has room for four times as many, else a quarter of the
    /// smallest room (at least the request), so near a limit the decision is exact again.
    /// Returns the decision (its remaining is after the requests taken) and how many were taken
    /// (0 when refused, or when `want` is 0: then only the return is made).
    pub fn take(
        &mut self,
        limits: &[(Window, u64)],
        now_ms: u64,
        want: u64,
        back: u64,
        back_calendar: u64,
    ) -> (Decision, u64) {
        let now_us = now_ms * 1000;
        for &(w, limit) in limits {
            if !w.is_calendar() {
                if back > 0 && limit >= 1 {
                    let interval = Gcra::new(limit, w.sliding_ms()).interval_us;
                    let tat = &mut self.tats[w.index()];
                    *tat = tat.saturating_sub(back.saturating_mul(interval));
                    if *tat <= now_us {
                        *tat = 0;
                    }
                }
            } else if !w.is_check_only() && back_calendar > 0 {
                let (period, _) = w.calendar_period(now_ms);
                let slot = &mut self.periods[w.index()];
                if slot.0 == period {
                    slot.1 = slot.1.saturating_sub(back_calendar);
                }
            }
        }
        if want == 0 {
            return (self.decide(&[], now_ms, false), 0);
        }
        // The room every window has for more requests, before this one.
        let mut room = want.saturating_mul(4);
        for &(w, limit) in limits {
            if w.is_check_only() {
                continue;
            }
            let fits = if w.is_calendar() {
                limit.saturating_sub(self.count(w, now_ms))
            } else if want > 1 && limit >= 1 {
                let g = Gcra::new(limit, w.sliding_ms());
                let backlog = self.tats[w.index()].max(now_us) - now_us;
                g.capacity_us.saturating_sub(backlog) / g.interval_us
            } else {
                room
            };
            room = room.min(fits);
        }
        let mut d = self.decide(limits, now_ms, true);
        if !d.allowed() {
            return (d, 0);
        }
        let granted = if want > 1 {
            (room / 4).clamp(1, want)
        } else {
            1
        };
        if granted > 1 {
            let more = granted - 1;
            for &(w, limit) in limits {
                if w.is_check_only() {
                    continue;
                }
                if w.is_calendar() {
                    self.consume(w, more, now_ms);
                } else if limit >= 1 {
                    let interval = Gcra::new(limit, w.sliding_ms()).interval_us;
                    let tat = &mut self.tats[w.index()];
                    *tat = tat.saturating_add(more.saturating_mul(interval));
                }
            }
            d.headers.remaining = d.headers.remaining.saturating_sub(more);
        }
        (d, granted)
    }

    /// Check every window, then consume from all or none.
    pub fn decide(&mut self, limits: &[(Window, u64)], now_ms: u64, consume: bool) -> Decision {
        let now_us = now_ms * 1000;
        let mut tightest: Option<RateLimitHeaders> = None;
        let mut tats = self.tats;
        for &(w, limit) in limits {
            let (refused, h) = if w.is_calendar() {
                let used = self.count(w, now_ms);
                let reset = ceil_secs(w.calendar_period(now_ms).1.saturating_sub(now_ms));
                let after = if consume && !w.is_check_only() {
                    used + 1
                } else {
                    used
                };
                let h = RateLimitHeaders {
                    limit,
                    remaining: limit.saturating_sub(after),
                    reset,
                };
                (used >= limit, h)
            } else {
                let a = if limit == 0 {
                    None
                } else {
                    Some(Gcra::new(limit, w.sliding_ms()).decide(tats[w.index()], now_us, consume))
                };
                tats[w.index()] = a.map_or(0, |a| a.tat_us);
                let h = RateLimitHeaders {
                    limit,
                    remaining: a.map_or(0, |a| a.remaining),
                    reset: ceil_secs(a.map_or(w.sliding_ms(), |a| a.reset_ms)),
                };
                (!a.is_some_and(|a| a.allowed), h)
            };
            if refused {
                // Remaining is 0 and reset at least 1 s here: a calendar window refuses with
                // its count at the limit, before the period's end; GCRA refuses with 0 left and
                // at least 1 ms to wait (unit-tested below).
                return Decision {
                    refused_by: Some(w),
                    headers: h,
                };
            }
            if w.is_check_only() {
                continue;
            }
            let tighter = match tightest {
                None => true,
                Some(t) => {
                    h.remaining < t.remaining || (h.remaining == t.remaining && h.reset < t.reset)
                }
            };
            if tighter {
                tightest = Some(h);
            }
        }
        if consume {
            self.tats = tats;
            for &(w, _) in limits
                .iter()
                .filter(|(w, _)| w.is_calendar() && !w.is_check_only())
            {
                self.consume(w, 1, now_ms);
            }
        }
        Decision {
            refused_by: None,
            headers: tightest.unwrap_or_default(),
        }
    }
}

/// The exact limiter in this process: the memory store's counters, and the `local` failure
/// policy of a shared store.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    scopes: crate::util::FastMap<String, Mutex<ScopeState>>,
}

impl LocalLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Admit (and count) one request of `scope` if every window allows it.
    pub fn check(&self, scope: &str, limits: &[(Window, u64)], now_ms: u64) -> Decision {
        self.with_scope(scope, |s| s.decide(limits, now_ms, true))
    }

    /// A lease's ask ([`ScopeState::take`]): give back `back` requests (`back_calendar` of
    /// them to the calendar windows), then take up to `want`.
    pub fn take(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
        (want, back, back_calendar): (u64, u64, u64),
    ) -> (Decision, u64) {
        self.with_scope(scope, |s| {
            if back_calendar > 0 {
                s.changed = true;
            }
            s.take(limits, now_ms, want, back, back_calendar)
        })
    }

    /// What `check` would decide, without counting.
    pub fn peek(&self, scope: &str, limits: &[(Window, u64)], now_ms: u64) -> Decision {
        match self.scopes.get(scope) {
            Some(entry) => lock(&entry).decide(limits, now_ms, false),
            None => ScopeState::default().decide(limits, now_ms, false),
        }
    }

    /// Add `n` to the calendar windows of `scope` without a limit (token debits).
    pub fn add(&self, scope: &str, window: Window, n: u64, now_ms: u64) -> u64 {
        self.with_scope(scope, |s| {
            s.consume(window, n, now_ms);
            s.count(window, now_ms)
        })
    }

    pub fn usage(&self, scope: &str, now_ms: u64) -> Usage {
        match self.scopes.get(scope) {
            Some(entry) => {
                let s = lock(&entry);
                Usage {
                    day: s.count(Window::Day, now_ms),
                    month: s.count(Window::Month, now_ms),
                }
            }
            None => Usage::default(),
        }
    }

    pub fn count(&self, scope: &str, window: Window, now_ms: u64) -> u64 {
        self.scopes
            .get(scope)
            .map(|e| lock(&e).count(window, now_ms))
            .unwrap_or(0)
    }

    /// Forget scopes with nothing left in any window (client IPs come and go).
    pub fn sweep(&self, now_ms: u64) {
        self.scopes.retain(|_, s| !lock(s).is_idle(now_ms));
    }

    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// The calendar counts (day, month, tokens) changed since the last call, as
    /// `(scope, window, period, count)`: what a durable store writes down in batches.
    pub fn take_changed(&self) -> Vec<(String, Window, u64, u64)> {
        self.calendar(true)
    }

    /// Every non-zero calendar count, as [`LocalLimiter::take_changed`] (an export).
    pub fn calendar_counts(&self) -> Vec<(String, Window, u64, u64)> {
        self.calendar(false)
    }

    fn calendar(&self, only_changed: bool) -> Vec<(String, Window, u64, u64)> {
        let mut out = Vec::new();
        for entry in self.scopes.iter() {
            let mut s = lock(entry.value());
            if only_changed && !std::mem::take(&mut s.changed) {
                continue;
            }
            for w in CALENDAR_WINDOWS {
                let (period, count) = s.periods[w.index()];
                if count > 0 {
                    out.push((entry.key().clone(), w, period, count));
                }
            }
        }
        out
    }

    /// Restore a calendar count written down earlier (start-up, import): the larger of it and
    /// what is counted now for that period, so loading twice counts nothing twice.
    pub fn restore(&self, scope: &str, window: Window, period: u64, count: u64) {
        if !window.is_calendar() {
            return;
        }
        self.with_scope(scope, |s| {
            s.restore(window, period, count);
            s.changed = true;
        });
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    fn with_scope<T>(&self, scope: &str, f: impl FnOnce(&mut ScopeState) -> T) -> T {
        // The DashMap shard guard is held only for this synchronous block, never across .await.
        if let Some(entry) = self.scopes.get(scope) {
            return f(&mut lock(&entry));
        }
        let entry = self.scopes.entry(scope.to_string()).or_default();
        let mut guard = lock(&entry);
        f(&mut guard)
    }
}

fn lock(m: &Mutex<ScopeState>) -> std::sync::MutexGuard<'_, ScopeState> {
    // A panic while holding this lock cannot leave the counters half-updated in a way that
    // matters more than refusing service, so recover the data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
