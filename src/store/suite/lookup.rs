//! The `Lookup` role: keys and tenants as written, refresh tokens and revocations as seen.

use super::*;

pub(super) async fn tenants_and_keys(s: &dyn Store) {
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

pub(super) async fn refresh_and_revocation(s: &dyn Store) {
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
