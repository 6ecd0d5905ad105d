//! The behaviour every store must have, one suite per role; each store's tests run
//! [`run_all`] against it (the Redis store's from `tests/`, against a real Redis).

use crate::store::*;

mod counters;
mod lookup;
mod records;

use counters::{logout_everywhere, request_limits, restored_counters};
use lookup::{refresh_and_revocation, tenants_and_keys};
use records::{audit_trail, managed_users, users};

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
    // A display prefix of its own per key: ARES's `api_keys.key_prefix` is unique.
    let tail: Vec<char> = id.chars().rev().take(8).collect();
    let tail: String = tail.into_iter().rev().collect();
    ApiKeyRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        key_hash: hash.into(),
        key_prefix: format!("ares_{tail:0>8}"),
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
pub async fn exported(s: &dyn Store) -> Vec<crate::store::records::Record> {
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
