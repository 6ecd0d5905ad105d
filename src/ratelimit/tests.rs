#[test]
fn dates_of_day_counts() {
    assert_eq!(super::date(0), "1970-01-01");
    assert_eq!(super::date(11_016), "2000-02-29");
    assert_eq!(super::date(20_789), "2026-12-02");
}

use super::*;

#[test]
fn plan_windows_in_check_order() {
    let mut p = Plan::default();
    assert!(p.windows().is_empty());
    p.set(Window::Minute, Some(5));
    p.set(Window::Month, Some(9));
    p.tokens_per_month = Some(3);
    assert_eq!(
        *p.windows(),
        [(Window::Month, 9), (Window::Tokens, 3), (Window::Minute, 5)]
    );
}

const DAY: u64 = 86_400_000;

fn ms(y: i64, m: u32, d: u32, hh: u64, mm: u64, ss: u64) -> u64 {
    days_from_civil(y, m, d) as u64 * DAY + (hh * 3600 + mm * 60 + ss) * 1000
}

#[test]
fn civil_dates_round_trip() {
    for days in [0i64, 31, 59, 365, 10_957, 19_782, 20_000, 20_454, 47_482] {
        let (y, m) = year_month(days);
        assert!(days >= days_from_civil(y, m, 1));
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        assert!(days < days_from_civil(ny, nm, 1));
    }
    assert_eq!(year_month(days_from_civil(2024, 2, 29)), (2024, 2));
    assert_eq!(days_from_civil(1970, 1, 1), 0);
}

#[test]
fn gcra_lets_a_burst_of_the_limit_through_then_one_per_interval() {
    let l = LocalLimiter::new();
    let limits = [(Window::Minute, 10)];
    let t0 = 1_000_000_000_000;
    for i in 0..10 {
        let d = l.check("s", &limits, t0 + i);
        assert!(d.allowed(), "request {i} of the burst");
        assert_eq!(d.headers.remaining, 9 - i);
    }
    // The bucket is full: one request's room (6 s) comes back 6 s after the burst began.
    let d = l.check("s", &limits, t0 + 10);
    assert_eq!(d.refused_by, Some(Window::Minute));
    assert_eq!(d.headers.reset, 6);
    assert!(!l.check("s", &limits, t0 + 5_999).allowed());
    assert!(l.check("s", &limits, t0 + 6_000).allowed());
    assert!(!l.check("s", &limits, t0 + 6_001).allowed());
    assert!(l.check("s", &limits, t0 + 12_000).allowed());
    // Idle for a whole minute: the full burst again, and no more.
    let later = t0 + 72_000;
    assert_eq!(
        (0..20)
            .filter(|_| l.check("s", &limits, later).allowed())
            .count(),
        10
    );
}

/// The guarantee docs/rate-limits.md states: over any interval of length t at most
/// `limit + floor(t / interval)` requests pass, with `interval = span / limit` rounded up.
#[test]
fn gcra_never_admits_more_than_its_bound_in_any_interval() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (limit, span) in [(5u64, 1_000u64), (7, 60_000), (3, 1_000), (600, 60_000)] {
        let l = LocalLimiter::new();
        let limits = [(Window::Second, limit)];
        let limits_min = [(Window::Minute, limit)];
        let limits = if span == 1_000 {
            &limits[..]
        } else {
            &limits_min[..]
        };
        let interval = Gcra::new(limit, span).interval_us;
        let mut t = 1_000_000_000u64;
        let mut admitted = Vec::new();
        for _ in 0..3_000 {
            t += next() % (span / limit + 1);
            if l.check("s", limits, t).allowed() {
                admitted.push(t * 1000);
            }
        }
        assert!(
            admitted.len() > limit as usize,
            "the test reaches the limit"
        );
        for (i, &start) in admitted.iter().enumerate() {
            for (j, &end) in admitted.iter().enumerate().skip(i) {
                let passed = (j - i + 1) as u64;
                assert!(
                    passed <= limit + (end - start) / interval,
                    "{passed} in {} us with limit {limit} per {span} ms",
                    end - start
                );
            }
        }
    }
}

#[test]
fn gcra_state_is_one_time_whatever_the_limit() {
    assert_eq!(std::mem::size_of::<ScopeState>(), 6 * 8 + 6 * 16 + 8);
    let g = Gcra::new(3, 1_000);
    assert_eq!(
        g.interval_us, 333_334,
        "rounded up: never more than the limit"
    );
    let a = g.decide(0, 5_000_000, false);
    assert_eq!((a.allowed, a.remaining, a.reset_ms), (true, 3, 0));
}

#[test]
fn refused_requests_consume_nothing_in_any_window() {
    let l = LocalLimiter::new();
    let limits = [(Window::Day, 100), (Window::Minute, 2)];
    let t = ms(2026, 11, 27, 12, 0, 0);
    assert!(l.check("s", &limits, t).allowed());
    assert!(l.check("s", &limits, t).allowed());
    for _ in 0..50 {
        assert_eq!(l.check("s", &limits, t).refused_by, Some(Window::Minute));
    }
    assert_eq!(l.usage("s", t).day, 2);
    // The refusals took no room: one request's room (30 s) returns on time.
    assert!(!l.check("s", &limits, t + 29_999).allowed());
    assert!(l.check("s", &limits, t + 30_000).allowed());
}

#[test]
fn monthly_is_checked_first_and_named() {
    let l = LocalLimiter::new();
    let limits = [(Window::Month, 1), (Window::Day, 1)];
    let t = ms(2026, 11, 27, 12, 0, 0);
    assert!(l.check("s", &limits, t).allowed());
    let d = l.check("s", &limits, t);
    assert_eq!(d.refused_by, Some(Window::Month));
    assert_eq!(
        Window::Month.exceeded_message(),
        "Monthly rate limit exceeded"
    );
}

#[test]
fn calendar_windows_reset_at_utc_midnight_and_month_end() {
    let l = LocalLimiter::new();
    let day = [(Window::Day, 2)];
    let before = ms(2026, 11, 27, 23, 59, 59);
    assert!(l.check("d", &day, before).allowed());
    assert!(l.check("d", &day, before).allowed());
    let d = l.check("d", &day, before);
    assert_eq!(d.refused_by, Some(Window::Day));
    assert_eq!(d.headers.reset, 1);
    assert!(l.check("d", &day, ms(2026, 11, 28, 0, 0, 0)).allowed());

    let month = [(Window::Month, 1)];
    let last = ms(2026, 2, 28, 23, 0, 0);
    assert!(l.check("m", &month, last).allowed());
    let d = l.check("m", &month, last);
    assert_eq!(d.refused_by, Some(Window::Month));
    assert_eq!(d.headers.reset, 3600);
    assert!(l.check("m", &month, ms(2026, 3, 1, 0, 0, 0)).allowed());
    // December rolls into January.
    assert!(l.check("y", &month, ms(2026, 12, 31, 23, 59, 59)).allowed());
    assert!(l.check("y", &month, ms(2027, 1, 1, 0, 0, 0)).allowed());
}

#[test]
fn header_values_follow_the_numbers_when_reused() {
    let text = |h: &HeaderMap, name: &str| h[name].to_str().unwrap().to_string();
    let mut h = HeaderMap::new();
    for (limit, remaining, reset) in [(100, 99, 60), (100, 98, 60), (7, 0, 60), (7, 0, 59)] {
        let v = RateLimitHeaders {
            limit,
            remaining,
            reset,
        };
        v.apply(&mut h);
        assert_eq!(text(&h, "ratelimit-limit"), limit.to_string());
        assert_eq!(text(&h, "ratelimit-remaining"), remaining.to_string());
        assert_eq!(text(&h, "ratelimit-reset"), reset.to_string());
        assert_eq!(h.len(), 3);
    }
    for n in [0, 9, 10, u64::MAX] {
        assert_eq!(digits(n), HeaderValue::from(n));
        assert_eq!(repeated(LIMIT, n), HeaderValue::from(n));
        assert_eq!(repeated(LIMIT, n), HeaderValue::from(n));
    }
}

#[test]
fn headers_report_the_tightest_window() {
    let l = LocalLimiter::new();
    let limits = [(Window::Day, 50), (Window::Minute, 3)];
    let t = ms(2026, 11, 27, 10, 0, 0);
    let d = l.check("s", &limits, t);
    assert_eq!(
        d.headers,
        RateLimitHeaders {
            limit: 3,
            remaining: 2,
            reset: 20
        }
    );
    // One request's room returns 20 s (a minute / 3) after it was taken.
    let d = l.check("s", &limits, t);
    assert_eq!((d.headers.remaining, d.headers.reset), (1, 20));
    let d = l.check("s", &limits, t + 2000);
    assert_eq!((d.headers.remaining, d.headers.reset), (0, 18));
    let refused = l.check("s", &limits, t + 3000);
    assert_eq!(refused.headers.reset, 17);
    assert_eq!(refused.headers.retry_after_secs(), 17);
}

#[test]
fn concurrent_checks_admit_exactly_the_limit() {
    let l = std::sync::Arc::new(LocalLimiter::new());
    let limits = [(Window::Second, 10)];
    let t = 5_000_000;
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let l = l.clone();
            std::thread::spawn(move || {
                (0..50)
                    .filter(|_| l.check("s", &limits, t).allowed())
                    .count()
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 10);
}

#[test]
fn sweep_forgets_idle_scopes_but_keeps_calendar_counts() {
    let l = LocalLimiter::new();
    let t = ms(2026, 11, 27, 10, 0, 0);
    l.check("ip", &[(Window::Minute, 5)], t);
    l.check("tenant", &[(Window::Day, 5)], t);
    l.sweep(t + 61_000);
    assert_eq!(l.len(), 1);
    assert_eq!(l.usage("tenant", t + 61_000).day, 1);
}

#[test]
fn the_token_budget_refuses_but_is_never_consumed_by_requests() {
    let l = LocalLimiter::new();
    let t = ms(2026, 11, 27, 12, 0, 0);
    let limits = [(Window::Tokens, 1000), (Window::Minute, 10)];
    let d = l.check("t", &limits, t);
    assert!(d.allowed());
    assert_eq!(d.headers.limit, 10, "headers describe request windows only");
    assert_eq!(l.count("t", Window::Tokens, t), 0);
    l.add("t", Window::Tokens, 1000, t);
    let d = l.check("t", &limits, t);
    assert_eq!(d.refused_by, Some(Window::Tokens));
    assert_eq!(
        Window::Tokens.exceeded_message(),
        "Monthly token quota exceeded"
    );
    let peek = l.peek("t", &[(Window::Minute, 10)], t);
    assert_eq!(
        peek.headers.remaining, 9,
        "the refused request consumed nothing"
    );
    // A new month, a new budget.
    assert!(l.check("t", &limits, ms(2026, 12, 1, 0, 0, 0)).allowed());
}

#[test]
fn divided_plan_keeps_at_least_one() {
    let mut p = Plan::default();
    p.set(Window::Minute, Some(10));
    p.set(Window::Second, Some(1));
    let d = p.divided(3);
    assert_eq!(d.get(Window::Minute), Some(3));
    assert_eq!(d.get(Window::Second), Some(1));
}

#[test]
fn calendar_periods_are_the_utc_day_and_month_with_their_ends() {
    let now = ms(2026, 12, 2, 13, 59, 0);
    let day = now / 86_400_000;
    assert_eq!(
        Window::Day.calendar_period(now),
        (day, ms(2026, 12, 3, 0, 0, 0))
    );
    // Months are numbered year * 12 + month - 1; December ends on the next year's 1 January.
    assert_eq!(
        Window::Month.calendar_period(now),
        (2026 * 12 + 11, ms(2027, 1, 1, 0, 0, 0))
    );
    assert_eq!(
        Window::Tokens.calendar_period(ms(2024, 2, 10, 0, 0, 0)),
        (2024 * 12 + 1, ms(2024, 3, 1, 0, 0, 0)),
        "a leap February"
    );
    assert_eq!(
        Window::Month.calendar_period(ms(2026, 1, 31, 23, 59, 59)),
        (2026 * 12, ms(2026, 2, 1, 0, 0, 0))
    );
    // A period ends where the next begins.
    let end = Window::Day.calendar_period(now).1;
    assert_eq!(Window::Day.calendar_period(end - 1).0, day);
    assert_eq!(Window::Day.calendar_period(end).0, day + 1);
}

#[test]
fn sliding_window_lengths() {
    let lengths: Vec<u64> = WINDOWS.iter().map(|w| w.sliding_ms()).collect();
    let day = 86_400_000;
    assert_eq!(
        lengths,
        [31 * day, 31 * day, day, 3_600_000, 60_000, 1_000],
        "month, tokens, day, hour, minute, second"
    );
}

#[test]
fn a_repeated_header_value_is_shared_not_made_again() {
    let first = repeated(RESET, 42);
    let again = repeated(RESET, 42);
    assert_eq!(first.as_bytes().as_ptr(), again.as_bytes().as_ptr());
    let other = repeated(RESET, 43);
    assert_eq!(other, HeaderValue::from(43u64));
    assert_ne!(other.as_bytes().as_ptr(), first.as_bytes().as_ptr());
}

#[test]
fn a_refusal_has_nothing_remaining_and_a_reset_of_at_least_a_second() {
    let l = LocalLimiter::new();
    let now = ms(2026, 12, 2, 23, 59, 59) + 999;
    // A calendar day 1 ms before its end, a fast GCRA window, and a zero limit.
    for (scope, limits, reset) in [
        ("d", [(Window::Day, 1)], 1),
        ("s", [(Window::Second, 1000)], 1),
        ("z", [(Window::Minute, 0)], 60),
    ] {
        let mut d = l.check(scope, &limits, now);
        while d.allowed() {
            d = l.check(scope, &limits, now);
        }
        assert_eq!(
            (d.headers.remaining, d.headers.reset),
            (0, reset),
            "{scope}"
        );
    }
}

#[test]
fn a_calendar_windows_remaining_counts_the_request_only_when_it_is_counted() {
    let l = LocalLimiter::new();
    let day = [(Window::Day, 5)];
    let now = ms(2026, 12, 2, 12, 0, 0);
    assert_eq!(
        l.peek("a", &day, now).headers.remaining,
        5,
        "a peek counts nothing"
    );
    assert_eq!(l.check("a", &day, now).headers.remaining, 4);
    assert_eq!(l.peek("a", &day, now).headers.remaining, 4);
    // The token budget is checked, never consumed, and never the reported window.
    let mut plan = Plan::default();
    plan.set(Window::Day, Some(5));
    plan.tokens_per_month = Some(3);
    let d = l.check("b", &plan.windows(), now);
    assert_eq!((d.headers.limit, d.headers.remaining), (5, 4));
}

#[test]
fn ties_between_windows_go_to_the_sooner_reset_then_to_the_first_checked() {
    let l = LocalLimiter::new();
    // 23:54: the day ends in 360 s, as one request's room returns in an hour window of 10.
    let now = ms(2026, 12, 2, 23, 54, 0);
    // Day 11 with one counted already, hour 10: both have 9 left after this request, and
    // both reset in 360 s: the first checked (the day) is reported.
    assert!(l.check("a", &[(Window::Day, 11)], now).allowed());
    let d = l.check("a", &[(Window::Day, 11), (Window::Hour, 10)], now);
    assert_eq!(
        (d.headers.limit, d.headers.remaining, d.headers.reset),
        (11, 9, 360)
    );
    // Same remaining, the later window resets sooner: it is reported.
    let d = l.check("b", &[(Window::Day, 10), (Window::Minute, 10)], now);
    assert_eq!(
        (d.headers.limit, d.headers.remaining, d.headers.reset),
        (10, 9, 6)
    );
    // Same remaining, the later window resets later: the earlier stays.
    let d = l.check("c", &[(Window::Day, 10), (Window::Hour, 10)], now + 60_000);
    assert_eq!((d.headers.remaining, d.headers.reset), (9, 300));
    // Fewer remaining wins whatever the reset.
    let d = l.check("e", &[(Window::Day, 100), (Window::Hour, 10)], now);
    assert_eq!((d.headers.limit, d.headers.remaining), (10, 9));
    let d = l.check("f", &[(Window::Day, 5), (Window::Minute, 100)], now);
    assert_eq!((d.headers.limit, d.headers.remaining), (5, 4));
}

#[test]
fn the_limiter_lists_its_scopes_and_nonzero_calendar_counts() {
    let l = LocalLimiter::new();
    assert!(l.is_empty());
    assert_eq!(l.len(), 0);
    let now = ms(2026, 12, 2, 12, 0, 0);
    l.check("gcra-only", &[(Window::Minute, 10)], now);
    assert!(l.calendar_counts().is_empty(), "no calendar count to list");
    l.check("a", &[(Window::Day, 10)], now);
    l.check("a", &[(Window::Day, 10)], now);
    assert!(!l.is_empty());
    assert_eq!(l.len(), 2);
    let day = Window::Day.calendar_period(now).0;
    assert_eq!(
        l.calendar_counts(),
        vec![("a".to_string(), Window::Day, day, 2)]
    );
    // An export lists it every time; the batch of changes once.
    assert_eq!(l.calendar_counts().len(), 1);
    assert_eq!(l.take_changed().len(), 1);
    assert!(l.take_changed().is_empty());
}
