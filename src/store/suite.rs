//! The behaviour every store must have, one suite per role; each store's tests run
//! [`run_all`] against it (the Redis store's from `tests/`, against a real Redis).

use super::*;

pub fn tenant(id: &str) -> Tenant {
    Tenant {
        id: id.into(),
        name: format!("tenant {id}"),
        tier: "free".into(),
        status: TenantStatus::Active,
        created_at: 1_700_000_000,
        limits: LimitOverrides::default(),
    }
}

pub fn key(id: &str, tenant: &str, hash: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        key_hash: hash.into(),
        key_prefix: "ares_abcdefgh".into(),
        name: "k".into(),
        scopes: vec!["full".into()],
        is_active: true,
        created_at: 1_700_000_000,
        expires_at: None,
        last_used_at: None,
        imported: false,
        limits: Default::default(),
    }
}

/// Every role's suite.
pub async fn run_all(s: &dyn Store) {
    lookup(s).await;
    records(s).await;
    counters(s).await;
}

/// `Lookup`: keys and tenants as written, and revocations seen (by id and "everywhere").
pub async fn lookup(s: &dyn Store) {
    tenants_and_keys(s).await;
    refresh_and_revocation(s).await;
}

/// `Records`: users, sessions, the audit trail.
pub async fn records(s: &dyn Store) {
    users(s).await;
    managed_users(s).await;
    audit_trail(s).await;
}

/// `Counters`: limits, token budgets, restored counts, and a token revoked by "log out
/// everywhere" admitted by nothing.
pub async fn counters(s: &dyn Store) {
    request_limits(s).await;
    restored_counters(s).await;
    logout_everywhere(s).await;
}

async fn audit_trail(s: &dyn Store) {
    let now = crate::util::now_ms();
    let keep = 3_600_000;
    let old = AuditEntry::new(
        now - 2 * keep,
        0,
        "admin:0",
        "tenant.create",
        "tenant:t_old",
        "ok",
    );
    s.records().append_audit(&old, keep).await.unwrap();
    for (i, target) in ["tenant:t_a", "user:usr_a", "tenant:t_b"]
        .iter()
        .enumerate()
    {
        let e = AuditEntry::new(now + i as u64, 0, "admin:1", "x.y", target, "ok");
        s.records().append_audit(&e, keep).await.unwrap();
    }
    let all = s.records().list_audit(None, "", 10).await.unwrap();
    let targets: Vec<&str> = all.iter().map(|e| e.target.as_str()).collect();
    // Past the retention: gone. The rest in order.
    assert_eq!(targets, ["tenant:t_a", "user:usr_a", "tenant:t_b"]);
    let page = s
        .records()
        .list_audit(Some(&all[0].id), "", 1)
        .await
        .unwrap();
    assert_eq!(page[0].target, "user:usr_a");
    let tenants = s.records().list_audit(None, "tenant:", 10).await.unwrap();
    assert_eq!(tenants.len(), 2);
}

async fn managed_users(s: &dyn Store) {
    let user = |id: &str, email: &str| User {
        id: id.into(),
        email: email.into(),
        name: "M".into(),
        password_hash: "$argon2id$m".into(),
        created_at: 3,
        disabled: false,
    };
    for (id, email) in [
        ("usr_m2", "m2@list.example"),
        ("usr_m1", "m1@list.example"),
        ("usr_x", "x@other.example"),
    ] {
        s.records().create_user(&user(id, email)).await.unwrap();
    }
    let emails = |v: Vec<User>| v.into_iter().map(|u| u.email).collect::<Vec<_>>();
    let page = s.records().list_users("m", None, 1).await.unwrap();
    assert_eq!(emails(page), ["m1@list.example"]);
    let page = s
        .records()
        .list_users("m", Some("m1@list.example"), 10)
        .await
        .unwrap();
    assert_eq!(emails(page), ["m2@list.example"]);
    let page = s.records().list_users("x@", None, 10).await.unwrap();
    assert_eq!(emails(page), ["x@other.example"]);

    let mut off = user("usr_m1", "m1@list.example");
    off.disabled = true;
    assert!(s.records().update_user(&off).await.unwrap());
    assert!(
        s.records()
            .get_user("usr_m1")
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    // An update never moves a user to another email (the index would lie).
    assert!(!s
        .records()
        .update_user(&user("usr_m1", "new@list.example"))
        .await
        .unwrap());
    assert!(!s
        .records()
        .update_user(&user("usr_none", "none@list.example"))
        .await
        .unwrap());

    assert_eq!(
        s.records()
            .delete_user("usr_m2")
            .await
            .unwrap()
            .unwrap()
            .email,
        "m2@list.example"
    );
    assert!(s.records().delete_user("usr_m2").await.unwrap().is_none());
    assert!(s
        .records()
        .get_user_by_email("m2@list.example")
        .await
        .unwrap()
        .is_none());
    // Its email is free again.
    s.records()
        .create_user(&user("usr_m3", "m2@list.example"))
        .await
        .unwrap();
}

async fn logout_everywhere(s: &dyn Store) {
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

/// An access token of `subject` with id `jti`, issued at `iat`.
pub fn token<'a>(subject: &'a str, jti: &'a str, iat: u64) -> TokenRef<'a> {
    TokenRef {
        subject,
        jti: Some(jti),
        issued_at: iat,
    }
}

/// One record of every kind, with ids of its own (`ten_f`, `usr_f`, ...).
pub async fn fill(s: &dyn Store) {
    let now = crate::util::unix_now();
    s.records().put_tenant(&tenant("ten_f")).await.unwrap();
    s.records()
        .create_api_key(&key("key_f", "ten_f", "hash_f"))
        .await
        .unwrap();
    let user = User {
        id: "usr_f".into(),
        email: "f@example.com".into(),
        name: "F".into(),
        password_hash: "$argon2id$f".into(),
        created_at: 2,
        disabled: false,
    };
    s.records().create_user(&user).await.unwrap();
    let r = RefreshRecord {
        token_hash: "rt_f".into(),
        user_id: "usr_f".into(),
        family_id: "fam_f".into(),
        issued_at: now,
        expires_at: now + 3600,
        rotated_at: None,
        successor: None,
    };
    s.records().put_refresh_token(&r).await.unwrap();
    s.records()
        .mark_refresh_rotated("rt_f", now, Some("sealed"))
        .await
        .unwrap();
    s.records()
        .revoke_refresh_family("fam_dead", now + 600)
        .await
        .unwrap();
    s.records()
        .revoke_jti("usr_f", "jti_f", now + 600)
        .await
        .unwrap();
    s.records()
        .revoke_user_tokens("usr_gone", now - 100, now + 600)
        .await
        .unwrap();
    let ms = crate::util::now_ms();
    s.counters()
        .rate_limit(&scope::tenant("ten_f"), &[(Window::Day, 100)], ms)
        .await
        .unwrap();
    s.counters()
        .add_tokens(&scope::tenant("ten_f"), 77, ms)
        .await
        .unwrap();
}

/// What [`fill`] wrote is all there.
pub async fn check_filled(s: &dyn Store) {
    assert_eq!(
        s.lookup().get_tenant("ten_f").await.unwrap(),
        Some(tenant("ten_f"))
    );
    assert_eq!(
        s.lookup().get_api_key("hash_f").await.unwrap(),
        Some(key("key_f", "ten_f", "hash_f"))
    );
    assert_eq!(s.records().list_api_keys("ten_f").await.unwrap().len(), 1);
    let u = s
        .records()
        .get_user_by_email("f@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (u.id.as_str(), u.password_hash.as_str()),
        ("usr_f", "$argon2id$f")
    );
    let r = s
        .records()
        .get_refresh_token("rt_f")
        .await
        .unwrap()
        .unwrap();
    assert!(r.rotated_at.is_some(), "rotation lost");
    assert!(s
        .records()
        .mark_refresh_rotated("rt_f", 1, None)
        .await
        .unwrap()
        .is_some());
    let mut dead = r.clone();
    dead.token_hash = "rt_dead".into();
    dead.family_id = "fam_dead".into();
    s.records().put_refresh_token(&dead).await.unwrap();
    assert!(
        s.records()
            .get_refresh_token("rt_dead")
            .await
            .unwrap()
            .is_none(),
        "family revocation lost"
    );
    assert!(
        s.lookup()
            .is_token_revoked(token("usr_f", "jti_f", crate::util::unix_now()))
            .await
            .unwrap(),
        "logout lost"
    );
    assert!(
        s.lookup()
            .is_token_revoked(token("usr_gone", "j", crate::util::unix_now() - 200))
            .await
            .unwrap(),
        "a logout everywhere was lost"
    );
    let ms = crate::util::now_ms();
    let usage = s
        .counters()
        .usage(&scope::tenant("ten_f"), ms)
        .await
        .unwrap();
    assert_eq!((usage.day, usage.month), (1, 0));
    assert_eq!(
        s.counters()
            .tokens_used(&scope::tenant("ten_f"), ms)
            .await
            .unwrap(),
        77
    );
}

/// Every record `s` exports, header excluded.
pub async fn exported(s: &dyn Store) -> Vec<records::Record> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    // The sender goes with the export, so the reader ends when the export does.
    let export = async move { s.records().export(&tx).await };
    let (done, out) = tokio::join!(export, async {
        let mut out = Vec::new();
        while let Some(r) = rx.recv().await {
            out.push(r);
        }
        out
    });
    done.unwrap();
    out
}

async fn restored_counters(s: &dyn Store) {
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

async fn tenants_and_keys(s: &dyn Store) {
    s.ping().await.unwrap();
    s.records().put_tenant(&tenant("t1")).await.unwrap();
    s.records().put_tenant(&tenant("t2")).await.unwrap();
    assert_eq!(
        s.lookup().get_tenant("t1").await.unwrap().unwrap().name,
        "tenant t1"
    );
    assert!(s.lookup().get_tenant("nope").await.unwrap().is_none());
    let mut ids: Vec<String> = s
        .records()
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort();
    assert!(ids.contains(&"t1".to_string()) && ids.contains(&"t2".to_string()));

    let mut t1 = tenant("t1");
    t1.status = TenantStatus::Suspended;
    t1.limits.requests_per_day = Some(7);
    s.records().put_tenant(&t1).await.unwrap();
    assert_eq!(s.lookup().get_tenant("t1").await.unwrap().unwrap(), t1);

    s.records()
        .create_api_key(&key("k1", "t1", "h1"))
        .await
        .unwrap();
    s.records()
        .create_api_key(&key("k2", "t1", "h2"))
        .await
        .unwrap();
    s.records()
        .create_api_key(&key("k3", "t2", "h3"))
        .await
        .unwrap();
    assert!(matches!(
        s.records().create_api_key(&key("k9", "t2", "h3")).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        s.lookup().get_api_key("h1").await.unwrap().unwrap().id,
        "k1"
    );
    assert_eq!(s.records().list_api_keys("t1").await.unwrap().len(), 2);

    let mut disabled = key("k1", "t1", "h1");
    disabled.is_active = false;
    disabled.name = "renamed".into();
    assert!(s.records().update_api_key(&disabled).await.unwrap());
    assert_eq!(
        s.lookup().get_api_key("h1").await.unwrap(),
        Some(disabled.clone())
    );
    assert_eq!(s.records().list_api_keys("t1").await.unwrap().len(), 2);
    disabled.is_active = true;
    assert!(s.records().update_api_key(&disabled).await.unwrap());
    assert!(!s
        .records()
        .update_api_key(&key("k8", "t1", "gone"))
        .await
        .unwrap());
    assert!(
        s.lookup().get_api_key("gone").await.unwrap().is_none(),
        "an update created a key"
    );
    let today = crate::util::unix_now() / 86_400;
    let uses = [
        ("h1".to_string(), today - 1, 3),
        ("h1".to_string(), today, 2),
    ];
    s.records().record_key_usage(&uses).await.unwrap();
    s.records()
        .record_key_usage(&[("h1".into(), today, 5), ("h2".into(), today, 1)])
        .await
        .unwrap();
    assert_eq!(
        s.records().key_usage("h1", today - 30).await.unwrap(),
        vec![(today - 1, 3), (today, 7)]
    );
    assert_eq!(
        s.records().key_usage("h1", today).await.unwrap(),
        vec![(today, 7)]
    );
    assert!(s
        .records()
        .key_usage("nope", today - 30)
        .await
        .unwrap()
        .is_empty());
    s.records()
        .touch_api_keys(&[("h1".into(), 1_800_000_000), ("zz".into(), 1)])
        .await
        .unwrap();
    assert_eq!(
        s.lookup()
            .get_api_key("h1")
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(1_800_000_000)
    );

    // A key of another tenant is not deletable through this tenant.
    assert!(s
        .records()
        .delete_api_key("t1", "k3")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        s.records()
            .delete_api_key("t1", "k2")
            .await
            .unwrap()
            .unwrap()
            .key_hash,
        "h2"
    );
    assert!(s.lookup().get_api_key("h2").await.unwrap().is_none());

    let hashes = s.records().delete_tenant("t1").await.unwrap().unwrap();
    assert_eq!(hashes, vec!["h1".to_string()]);
    assert!(s.lookup().get_api_key("h1").await.unwrap().is_none());
    assert!(s.lookup().get_tenant("t1").await.unwrap().is_none());
    assert!(s.records().delete_tenant("t1").await.unwrap().is_none());
    assert!(s.lookup().get_api_key("h3").await.unwrap().is_some());
}

async fn users(s: &dyn Store) {
    let u = User {
        id: "usr_1".into(),
        email: "a@example.com".into(),
        name: "A".into(),
        password_hash: "$argon2id$x".into(),
        created_at: 1,
        disabled: false,
    };
    s.records().create_user(&u).await.unwrap();
    let mut dup = u.clone();
    dup.id = "usr_2".into();
    assert!(matches!(
        s.records().create_user(&dup).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        s.records()
            .get_user_by_email("a@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        "usr_1"
    );
    assert_eq!(
        s.records().get_user("usr_1").await.unwrap().unwrap().email,
        "a@example.com"
    );
    assert!(s.records().get_user("usr_2").await.unwrap().is_none());
    s.records()
        .set_password_hash("usr_1", "$argon2id$y")
        .await
        .unwrap();
    assert_eq!(
        s.records()
            .get_user("usr_1")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "$argon2id$y"
    );
    assert_eq!(
        s.records()
            .get_user_by_email("a@example.com")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "$argon2id$y"
    );
}

async fn refresh_and_revocation(s: &dyn Store) {
    let now = crate::util::unix_now();
    let r = RefreshRecord {
        token_hash: "rh1".into(),
        user_id: "usr_1".into(),
        family_id: "fam1".into(),
        issued_at: now,
        expires_at: now + 3600,
        rotated_at: None,
        successor: None,
    };
    s.records().put_refresh_token(&r).await.unwrap();
    let mut r2 = r.clone();
    r2.token_hash = "rh2".into();
    s.records().put_refresh_token(&r2).await.unwrap();
    assert_eq!(
        s.records().get_refresh_token("rh1").await.unwrap(),
        Some(r.clone())
    );
    assert_eq!(
        s.records()
            .mark_refresh_rotated("rh1", now, Some("sealed-1"))
            .await
            .unwrap(),
        None
    );
    // The first rotation stays, with its successor: a second one learns it.
    assert_eq!(
        s.records()
            .mark_refresh_rotated("rh1", now + 5, Some("sealed-2"))
            .await
            .unwrap(),
        Some(Rotation {
            at: now,
            successor: Some("sealed-1".into())
        })
    );
    assert_eq!(
        s.records()
            .mark_refresh_rotated("rh2", now, None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.records()
            .mark_refresh_rotated("rh2", now + 1, Some("late"))
            .await
            .unwrap(),
        Some(Rotation {
            at: now,
            successor: None
        })
    );
    s.records()
        .revoke_refresh_family("fam1", now + 3600)
        .await
        .unwrap();
    assert!(s
        .records()
        .get_refresh_token("rh1")
        .await
        .unwrap()
        .is_none());
    assert!(s
        .records()
        .get_refresh_token("rh2")
        .await
        .unwrap()
        .is_none());

    let mut expired = r.clone();
    expired.token_hash = "rh3".into();
    expired.family_id = "fam2".into();
    expired.expires_at = now - 1;
    s.records().put_refresh_token(&expired).await.unwrap();
    assert!(s
        .records()
        .get_refresh_token("rh3")
        .await
        .unwrap()
        .is_none());

    assert!(!s
        .lookup()
        .is_token_revoked(token("usr_1", "j1", now))
        .await
        .unwrap());
    s.records()
        .revoke_jti("usr_1", "j1", now + 60)
        .await
        .unwrap();
    assert!(s
        .lookup()
        .is_token_revoked(token("usr_1", "j1", now))
        .await
        .unwrap());
    s.records()
        .revoke_jti("usr_1", "j2", now - 1)
        .await
        .unwrap();
    assert!(!s
        .lookup()
        .is_token_revoked(token("usr_1", "j2", now))
        .await
        .unwrap());

    // The revocation check and the user's limit are one decision; a revoked token counts
    // against nothing.
    let now_ms = now * 1000;
    let limits = [(Window::Minute, 2)];
    let admit = |jti| {
        let t = TokenRef {
            subject: "usr_2",
            jti,
            issued_at: now,
        };
        s.counters().admit_token(t, &limits, now_ms)
    };
    let Admission::Decided(d) = admit(Some("j3")).await.unwrap() else {
        panic!("a live token was refused as revoked");
    };
    assert_eq!((d.refused_by, d.headers.remaining), (None, 1));
    s.records()
        .revoke_jti("usr_2", "j3", now + 60)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(admit(Some("j3")).await.unwrap(), Admission::Revoked);
    }
    let Admission::Decided(d) = admit(Some("j4")).await.unwrap() else {
        panic!("another token of the user was refused as revoked");
    };
    assert_eq!((d.refused_by, d.headers.remaining), (None, 0));
    // Counted in the user's own scope, the one the usage endpoint and `rate_limit` see.
    let user = scope::user("usr_2");
    let peek = s
        .counters()
        .peek_rate_limit(&user, &limits, now_ms)
        .await
        .unwrap();
    assert_eq!(peek.refused_by, Some(Window::Minute));
    let Admission::Decided(d) = admit(None).await.unwrap() else {
        panic!("a token without jti was refused as revoked");
    };
    assert_eq!(d.refused_by, Some(Window::Minute));
    // No limits: the revocation check alone.
    assert_eq!(
        s.counters()
            .admit_token(token("usr_2", "j3", now), &[], now_ms)
            .await
            .unwrap(),
        Admission::Revoked
    );
    assert!(matches!(
        s.counters()
            .admit_token(token("usr_2", "j4", now), &[], now_ms)
            .await
            .unwrap(),
        Admission::Decided(_)
    ));
}

async fn request_limits(s: &dyn Store) {
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
