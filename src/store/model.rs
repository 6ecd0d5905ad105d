//! The records a store keeps and the values passed to and from it: plain data, no I/O.

use serde::{Deserialize, Serialize};

use crate::ratelimit::{Decision, Plan, Window};

/// A change another replica made: drop the cached copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A key (by hash) was created, imported or deleted.
    Key(String),
    /// A tenant changed or was deleted.
    Tenant(String),
    /// Messages may have been missed: drop every cached key and tenant.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Suspended,
}

/// Per-tenant overrides of its tier's request limits (`None` = the tier's value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    pub requests_per_minute: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub requests_per_month: Option<u64>,
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        self == &LimitOverrides::default()
    }

    /// The plan in force: the tier's, with these overrides on top.
    pub fn apply(&self, tier: &Plan) -> Plan {
        let mut p = tier.clone();
        if let Some(n) = self.requests_per_minute {
            p.set(Window::Minute, Some(n));
        }
        if let Some(n) = self.requests_per_day {
            p.set(Window::Day, Some(n));
        }
        if let Some(n) = self.requests_per_month {
            p.set(Window::Month, Some(n));
        }
        p
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub status: TenantStatus,
    pub created_at: u64,
    #[serde(default)]
    pub limits: LimitOverrides,
}

/// A stored API key. Holds the hash, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant_id: String,
    /// SHA-256 (hex) of the whole key: the lookup index.
    pub key_hash: String,
    /// The first 13 characters, for display.
    pub key_prefix: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub is_active: bool,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub last_used_at: Option<u64>,
    /// Imported from ARES: no checksum to test.
    #[serde(default)]
    pub imported: bool,
    /// The key's own request limits, on top of its tenant's (none: the tenant's alone).
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub limits: LimitOverrides,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    /// Lower-cased, trimmed: the unique index.
    pub email: String,
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub created_at: u64,
    /// Set by an admin: logins and refreshes are refused (records before it read false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A stored refresh token, by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub token_hash: String,
    pub user_id: String,
    /// Every token descended from one login; reuse of a rotated member revokes them all.
    pub family_id: String,
    /// Unix seconds; a "log out everywhere" at or after it ends this token. Records written
    /// before this field existed read 0 (issued before any such logout).
    #[serde(default)]
    pub issued_at: u64,
    pub expires_at: u64,
    /// Set when rotation replaced this token.
    pub rotated_at: Option<u64>,
    /// The token that replaced it, sealed with a key only a holder of this token can derive
    /// (`auth::successor`): concurrent refreshes of one token all receive that one successor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
}

/// A refresh token's rotation, as the first rotation recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub at: u64,
    /// The sealed successor (absent for rotations recorded before successors were kept).
    pub successor: Option<String>,
}

/// The first rotation of a record wins: record it (with its successor) unless one is there;
/// returns the one that was (the stores that keep records whole use this).
pub(crate) fn rotate(r: &mut RefreshRecord, at: u64, successor: Option<&str>) -> Option<Rotation> {
    match r.rotated_at {
        Some(prev) => Some(Rotation {
            at: prev,
            successor: r.successor.clone(),
        }),
        None => {
            r.rotated_at = Some(at);
            r.successor = successor.map(str::to_string);
            None
        }
    }
}

/// Days of per-key request counts a store keeps.
pub const KEY_USAGE_DAYS: u64 = 31;

/// One line of the audit trail: an admin action or a security event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// `<unix ms>-<sequence>`: the order, and the paging cursor.
    pub id: String,
    pub at_ms: u64,
    /// `admin:<secret index>`, `user:<id>` or `gateway`.
    pub actor: String,
    /// `tenant.create`, `api_key.rotate`, `user.disable`, `login.locked`, ...
    pub action: String,
    /// `tenant:<id>`, `api_key:<tenant>/<key>`, `user:<id>`, `account:<email hash>`.
    pub target: String,
    pub outcome: String,
}

impl AuditEntry {
    /// A new entry at `at_ms`; `seq` tells apart entries of the same millisecond.
    pub fn new(
        at_ms: u64,
        seq: u64,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
    ) -> Self {
        AuditEntry {
            id: format!("{at_ms:013}-{seq:06}"),
            at_ms,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
        }
    }
}

/// An access token as the revocation checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRef<'a> {
    /// The user (`sub`).
    pub subject: &'a str,
    /// Its id: what a logout revokes.
    pub jti: Option<&'a str>,
    /// `iat`: a "log out everywhere" revokes every token of the user issued at or before it.
    pub issued_at: u64,
}

/// One ask of a shared limiter: take up to `want` requests of a scope at once (a lease; 1: the
/// request alone; 0: none), after returning `back` unused requests of an ended lease to the
/// scope's GCRA windows and `back_calendar` to its calendar windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Take {
    pub want: u64,
    pub back: u64,
    pub back_calendar: u64,
}

impl Take {
    /// The request alone.
    pub const ONE: Take = Take {
        want: 1,
        back: 0,
        back_calendar: 0,
    };

    /// A lease of up to `want` requests, returning nothing.
    pub fn lease(want: u64) -> Take {
        Take {
            want,
            back: 0,
            back_calendar: 0,
        }
    }
}

/// The answer to `Counters::admit_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The token was revoked (logout); nothing was counted.
    Revoked,
    Decided(Decision),
}
