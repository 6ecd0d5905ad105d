use super::lease::Held;
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
async fn an_attempt_takes_its_place_first_and_a_success_gives_it_back() {
    let l = limiter();
    let plan = per_minute(2);
    let scopes = [(Scope::LoginAccount("acct"), &plan)];
    for _ in 0..5 {
        l.attempt(&scopes).await.unwrap().succeeded().await;
    }
    let first = l.attempt(&scopes).await.unwrap();
    let second = l.attempt(&scopes).await.unwrap();
    // Two attempts out at once fill the ceiling of 2: a third is refused before its check.
    let err = l.attempt(&scopes).await.unwrap_err();
    assert!(matches!(err, GatewayError::RateLimited { .. }), "{err:?}");
    first.succeeded().await;
    second.failed();
    l.attempt(&scopes).await.unwrap().failed();
    let err = l.attempt(&scopes).await.unwrap_err();
    assert!(
        matches!(err, GatewayError::RateLimited { .. }),
        "two failures: {err:?}"
    );
}

#[tokio::test]
async fn a_refusal_in_a_later_ceiling_gives_back_the_place_taken_in_an_earlier_one() {
    let l = limiter();
    let (wide, narrow) = (per_minute(10), per_minute(1));
    let both = [
        (Scope::LoginAccount("a"), &wide),
        (Scope::LoginAccount("b"), &narrow),
    ];
    l.attempt(&both).await.unwrap().failed();
    for _ in 0..20 {
        assert!(l.attempt(&both).await.is_err(), "b is at its ceiling");
    }
    let only_a = [(Scope::LoginAccount("a"), &wide)];
    let d = l
        .admit(Scope::LoginAccount("a"), &wide, OPEN)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.headers.remaining, 8,
        "a counted the failure and this request only"
    );
    l.attempt(&only_a).await.unwrap().failed();
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
    l.leases.hold(
        key.into(),
        key.into(),
        limits,
        granted(remaining),
        (granted_n, LEASE.requests),
        1,
        now,
        LEASE,
    );
}

fn ask(spent: Spent) -> Take {
    match spent {
        Spent::Ask(take, _) => take,
        Spent::Here(d, _) => panic!("spent here: {d:?}"),
        Spent::Wait(_) => panic!("waits"),
    }
}

fn here(spent: Spent) -> Decision {
    match spent {
        Spent::Here(d, _) => d,
        Spent::Ask(take, _) => panic!("asked: {take:?}"),
        Spent::Wait(_) => panic!("waits"),
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
    assert_eq!(
        ask(l.leases.spend("t:a", now, LEASE)),
        fresh,
        "nothing held"
    );
    // The store granted 5 and had 60 left after them: this request and 4 more.
    hold(&l, "t:a", 60, 5, now);
    for left in (0..4).rev() {
        let d = here(l.leases.spend("t:a", now + 10, LEASE));
        assert!(d.allowed());
        assert_eq!(
            d.headers.remaining,
            60 + left,
            "the store's room and the lease's"
        );
    }
    assert_eq!(
        ask(l.leases.spend("t:a", now + 20, LEASE)),
        Take::lease(16),
        "spent in under a quarter of its time: ask for twice as many, nothing back"
    );
    assert!(l.leases.held.is_empty());
    assert_eq!(
        ask(l.leases.spend("t:b", now, LEASE)),
        fresh,
        "another scope"
    );
}

#[test]
fn what_a_lease_did_not_spend_goes_back_with_the_next_ask() {
    let l = limiter();
    let now = 5 * 86_400_000 + 1_000;
    hold(&l, "t:a", 60, 5, now);
    here(l.leases.spend("t:a", now + 999, LEASE));
    // Ended at lease.ms: its 3 unused requests go back, to every window.
    let take = ask(l.leases.spend("t:a", now + 1_000, LEASE));
    assert_eq!(
        take,
        Take {
            want: 8,
            back: 3,
            back_calendar: 3
        }
    );
    assert!(l.leases.held.is_empty());
    // A lease of yesterday returns nothing to today's calendar counts.
    hold(&l, "t:a", 60, 5, now - 2_000);
    let take = ask(l.leases.spend("t:a", now + 86_400_000, LEASE));
    assert_eq!((take.back, take.back_calendar), (4, 0));
}

#[test]
fn concurrent_grants_add_up_and_the_newest_end_holds() {
    let l = limiter();
    let now = 1_000_000;
    let limits = per_minute(100).windows();
    hold(&l, "t:a", 60, 3, now);
    hold(&l, "t:a", 50, 4, now + 500);
    let held = l.leases.held.get("t:a").map(|h| (h.left, h.until)).unwrap();
    assert_eq!(held, (2 + 3, now + 500 + 1_000));
    // A refusal or a single request holds nothing.
    let refused = Decision {
        refused_by: Some(Window::Minute),
        ..granted(0)
    };
    l.leases.hold(
        "t:b".into(),
        "t:b".into(),
        limits,
        refused,
        (8, 8),
        1,
        now,
        LEASE,
    );
    hold(&l, "t:c", 9, 1, now);
    assert!(!l.leases.held.contains_key("t:b") && !l.leases.held.contains_key("t:c"));
    // A lease held since yesterday is replaced (its calendar counts cannot go back).
    hold(&l, "t:a", 40, 2, now + 86_400_000);
    let held = l.leases.held.get("t:a").map(|h| (h.left, h.until)).unwrap();
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
        l.leases.hold(
            key.clone(),
            "u:x".into(),
            limits,
            granted(9),
            (5, 8),
            1,
            now,
            LEASE,
        );
    }
    l.end_user_leases("usr_1");
    let take = ask(l.leases.spend(&t1, now, LEASE));
    assert_eq!(take.back, 4, "ended: its unused requests go back");
    here(l.leases.spend(&t2, now, LEASE));
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
        l.leases.held.is_empty(),
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
    assert!(!l.leases.held.contains_key("t:ended"), "ended: returned");
    assert!(l.leases.held.contains_key("t:live"), "still being spent");
    l.return_leases(true).await;
    assert!(
        l.leases.held.is_empty(),
        "at shutdown every lease goes back"
    );
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
        refills: true,
        size: 8,
        filled_at: 1_000,
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

#[tokio::test]
async fn a_lease_running_low_starts_one_refill_and_its_grant_adds_to_what_is_left() {
    let l = limiter();
    let now = 1_000_000;
    // 8 granted, 1 used by the asking request: 7 left; low is a quarter of 8.
    hold(&l, "t:a", 60, 8, now);
    let mut refills = Vec::new();
    for _ in 0..7 {
        match l.leases.spend("t:a", now + 1, LEASE) {
            Spent::Here(_, refill) => refills.push(refill),
            _ => panic!("a held lease is spent here"),
        }
    }
    let started: Vec<usize> = (0..7).filter(|i| refills[*i].is_some()).collect();
    assert_eq!(started, vec![4], "one refill, when 2 of 8 were left");
    let refill = refills[4].take().unwrap();
    assert_eq!(
        refill.take,
        Take::lease(16),
        "spent in under a quarter of its time: twice the size, nothing back"
    );
    // Spent while the refill is out: the next request waits for it rather than asking too.
    assert!(matches!(
        l.leases.spend("t:a", now + 2, LEASE),
        Spent::Wait(_)
    ));
    // Its grant is all the lease's (the request that started it was served from the old one),
    // and the lease ends with it.
    let limits = per_minute(100).windows();
    l.leases.hold(
        "t:a".into(),
        "t:a".into(),
        limits,
        granted(40),
        (8, 16),
        0,
        now + 300,
        LEASE,
    );
    drop(refill);
    let held = l.leases.held.get("t:a").map(|h| (h.left, h.until)).unwrap();
    assert_eq!(held, (8, now + 300 + 1_000));
    assert_eq!(
        here(l.leases.spend("t:a", now + 301, LEASE))
            .headers
            .remaining,
        47
    );
    // A refused refill: what is left is spent without another, then the request asks.
    l.leases.refill_refused("t:a");
    for _ in 0..7 {
        assert!(matches!(
            l.leases.spend("t:a", now + 302, LEASE),
            Spent::Here(_, None)
        ));
    }
    assert_eq!(
        ask(l.leases.spend("t:a", now + 303, LEASE)),
        Take::lease(32)
    );
}

#[test]
fn a_leases_size_follows_how_fast_its_scope_spends_it() {
    let limits = per_minute(100).windows();
    let held = |size| Held {
        scope: "t:a".into(),
        limits,
        left: 0,
        until: 2_000,
        taken_at: 1_000,
        decision: granted(9),
        refills: true,
        size,
        filled_at: 1_000,
    };
    // LEASE: 8 requests, 1000 ms.
    assert_eq!(
        held(8).next_size(1_100, LEASE),
        16,
        "in a tenth of its time"
    );
    assert_eq!(
        held(8 * 16).next_size(1_100, LEASE),
        8 * 16,
        "at most 16 times"
    );
    assert_eq!(held(64).next_size(1_400, LEASE), 64, "in between: the same");
    assert_eq!(
        held(64).next_size(1_600, LEASE),
        32,
        "over half its time: half"
    );
    assert_eq!(
        held(8).next_size(1_900, LEASE),
        8,
        "never below lease_requests"
    );
}

#[tokio::test]
async fn while_one_request_asks_for_a_scope_the_others_wait_for_its_answer() {
    let l = limiter();
    let now = 1_000_000;
    let Spent::Ask(take, asking) = l.leases.spend("t:a", now, LEASE) else {
        panic!("nothing held: ask");
    };
    assert_eq!(take, Take::lease(8));
    let Spent::Wait(done) = l.leases.spend("t:a", now, LEASE) else {
        panic!("a second request must wait for the first one's ask");
    };
    assert!(
        matches!(l.leases.spend("t:b", now, LEASE), Spent::Ask(..)),
        "another scope asks for itself"
    );
    let leases = l.leases.clone();
    let waiter = tokio::spawn(async move {
        leases.wait("t:a", done).await;
        leases.spend("t:a", now + 1, LEASE)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "it waits while the ask is out");
    hold(&l, "t:a", 60, 8, now);
    drop(asking);
    let spent = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("woken when the ask ended")
        .unwrap();
    assert_eq!(
        here(spent).headers.remaining,
        66,
        "spent from the new lease"
    );
    // An ask that ends without an answer (its request cancelled) lets the next request ask.
    let Spent::Ask(_, asking) = l.leases.spend("t:c", now, LEASE) else {
        panic!("nothing held: ask");
    };
    drop(asking);
    assert!(matches!(l.leases.spend("t:c", now, LEASE), Spent::Ask(..)));
    // A wait for an ask already ended returns at once.
    let Spent::Ask(_, asking) = l.leases.spend("t:d", now, LEASE) else {
        panic!("nothing held: ask");
    };
    let Spent::Wait(done) = l.leases.spend("t:d", now, LEASE) else {
        panic!("waits");
    };
    drop(asking);
    tokio::time::timeout(Duration::from_millis(100), l.leases.wait("t:d", done))
        .await
        .expect("an ended ask is not waited for");
}
