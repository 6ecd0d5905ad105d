//! The `Counters` role: limits and token budgets, restored counts, and a token revoked by
//! "log out everywhere" admitted by nothing.

use super::*;

pub(super) async fn logout_everywhere(s: &dyn Store) {
    let now = crate::util::unix_now();
    let refresh = |hash: &str, issued_at| RefreshRecord {
        token_hash: hash.into(),
        user_id: "usr_all".into(),
        family_id: format!("fam_{hash}"),
        issued_at,
        expires_at: now + 3600,
        rotated_at: None,
        successor: None,
    };
    s.records()
        .put_refresh_token(&refresh("old_rt", now - 10))
        .await
        .unwrap();
    let ms = now * 1000;
    let admitted = |iat| async move {
        let t = token("usr_all", "any", iat);
        matches!(
            s.counters()
                .admit_token(t, &[(Window::Minute, 100)], ms)
                .await
                .unwrap(),
            Admission::Decided(_)
        )
    };
    assert!(admitted(now - 10).await);
    s.records()
        .revoke_user_tokens("usr_all", now - 5, now + 600)
        .await
        .unwrap();
    // Issued at or before the logout: refused, with limits or without, and without a jti.
    assert!(!admitted(now - 10).await);
    assert!(!admitted(now - 5).await);
    let no_jti = TokenRef {
        subject: "usr_all",
        jti: None,
        issued_at: now - 6,
    };
    assert!(s.lookup().is_token_revoked(no_jti).await.unwrap());
    assert!(s
        .records()
        .get_refresh_token("old_rt")
        .await
        .unwrap()
        .is_none());
    // Issued after it: live. Another user: untouched.
    assert!(admitted(now - 4).await);
    assert!(!s
        .lookup()
        .is_token_revoked(token("usr_other", "x", now - 10))
        .await
        .unwrap());
    s.records()
        .put_refresh_token(&refresh("new_rt", now - 4))
        .await
        .unwrap();
    assert!(s
        .records()
        .get_refresh_token("new_rt")
        .await
        .unwrap()
        .is_some());
    // A later logout moves the line; an earlier one never moves it back.
    s.records()
        .revoke_user_tokens("usr_all", now - 2, now + 600)
        .await
        .unwrap();
    s.records()
        .revoke_user_tokens("usr_all", now - 8, now + 600)
        .await
        .unwrap();
    assert!(!admitted(now - 3).await);
    assert!(admitted(now - 1).await);
}

pub(super) async fn restored_counters(s: &dyn Store) {
    let ms = crate::util::now_ms();
    let (day, _) = Window::Day.calendar_period(ms);
    s.counters()
        .restore_counter("rc", Window::Day, day, 5)
        .await
        .unwrap();
    // Loading the same count again counts nothing twice; a lower one lowers nothing.
    s.counters()
        .restore_counter("rc", Window::Day, day, 5)
        .await
        .unwrap();
    s.counters()
        .restore_counter("rc", Window::Day, day, 2)
        .await
        .unwrap();
    assert_eq!(s.counters().usage("rc", ms).await.unwrap().day, 5);
    let d = s
        .counters()
        .rate_limit("rc", &[(Window::Day, 6)], ms)
        .await
        .unwrap();
    assert!(d.allowed());
    assert!(!s
        .counters()
        .rate_limit("rc", &[(Window::Day, 6)], ms)
        .await
        .unwrap()
        .allowed());
}

pub(super) async fn request_limits(s: &dyn Store) {
    let now = 1_800_000_000_000;
    let limits = [(Window::Month, 100), (Window::Day, 3), (Window::Minute, 10)];
    for _ in 0..3 {
        assert!(s
            .counters()
            .rate_limit("scope", &limits, now)
            .await
            .unwrap()
            .allowed());
    }
    let d = s
        .counters()
        .rate_limit("scope", &limits, now)
        .await
        .unwrap();
    assert_eq!(d.refused_by, Some(Window::Day));
    assert_eq!(d.headers.remaining, 0);
    let peek = s
        .counters()
        .peek_rate_limit("scope", &limits, now)
        .await
        .unwrap();
    assert_eq!(peek.refused_by, Some(Window::Day));
    assert_eq!(
        s.counters().usage("scope", now).await.unwrap(),
        Usage { day: 3, month: 3 }
    );
    assert_eq!(
        s.counters().usage("other", now).await.unwrap(),
        Usage::default()
    );

    // GCRA, 2 per second: a burst of two, then one each 500 ms; refusals take no room.
    let gcra = [(Window::Second, 2)];
    let allowed = |t: u64| async move {
        s.counters()
            .rate_limit("sl", &gcra, t)
            .await
            .unwrap()
            .allowed()
    };
    assert!(allowed(now).await);
    assert!(allowed(now).await);
    assert!(!allowed(now).await);
    assert!(!allowed(now + 499).await);
    assert!(allowed(now + 500).await);
    assert!(!allowed(now + 501).await);
    assert!(allowed(now + 1_000).await);
    let d = s
        .counters()
        .rate_limit("sl", &gcra, now + 1_000)
        .await
        .unwrap();
    assert_eq!((d.refused_by, d.headers.reset), (Some(Window::Second), 1));
    let peek = s
        .counters()
        .peek_rate_limit("sl", &gcra, now + 3_000)
        .await
        .unwrap();
    assert_eq!((peek.headers.remaining, peek.headers.reset), (2, 0));

    // The token budget is checked by the same decision, and never consumed by requests.
    let budget = [(Window::Tokens, 160), (Window::Minute, 100)];
    assert!(s
        .counters()
        .rate_limit("tok", &budget, now)
        .await
        .unwrap()
        .allowed());
    assert_eq!(s.counters().tokens_used("tok", now).await.unwrap(), 0);
    assert_eq!(s.counters().add_tokens("tok", 150, now).await.unwrap(), 150);
    assert!(s
        .counters()
        .rate_limit("tok", &budget, now)
        .await
        .unwrap()
        .allowed());
    assert_eq!(s.counters().add_tokens("tok", 50, now).await.unwrap(), 200);
    assert_eq!(s.counters().tokens_used("tok", now).await.unwrap(), 200);
    let d = s.counters().rate_limit("tok", &budget, now).await.unwrap();
    assert_eq!(d.refused_by, Some(Window::Tokens));
    assert_eq!(s.counters().tokens_used("tok", now).await.unwrap(), 200);
    assert_eq!(
        s.counters()
            .tokens_used("tok", now + 40 * 86_400_000)
            .await
            .unwrap(),
        0
    );

    // A refusal by a later window takes back what earlier windows counted.
    let both = [
        (Window::Month, 100),
        (Window::Day, 100),
        (Window::Tokens, 10),
    ];
    assert!(s
        .counters()
        .rate_limit("tb", &both, now)
        .await
        .unwrap()
        .allowed());
    s.counters().add_tokens("tb", 10, now).await.unwrap();
    for _ in 0..3 {
        let d = s.counters().rate_limit("tb", &both, now).await.unwrap();
        assert_eq!(d.refused_by, Some(Window::Tokens));
    }
    assert_eq!(
        s.counters().usage("tb", now).await.unwrap(),
        Usage { day: 1, month: 1 }
    );
}
