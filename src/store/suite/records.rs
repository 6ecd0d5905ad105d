//! The `Records` role: users (and the admin's listing), the audit trail.

use super::*;

pub(super) async fn audit_trail(s: &dyn Store) {
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

pub(super) async fn managed_users(s: &dyn Store) {
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

pub(super) async fn users(s: &dyn Store) {
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
