//! Moving between stores: every stored record as one JSON line (`ares-gateway export`,
//! `GET /api/admin/export`) and loading such lines into any store (`ares-gateway import`).
//!
//! Records hold hashes, never raw secrets; an export is still sensitive (password hashes can be
//! attacked offline) and is treated like the data file itself.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{ApiKeyRecord, RefreshRecord, Store, Tenant, User};
use crate::error::StoreError;
use crate::ratelimit::{Window, CALENDAR_WINDOWS};
use crate::util::unix_now;

/// The export format this build writes and the newest it reads.
pub const FORMAT: u32 = 1;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The first line: what wrote the file.
    Export {
        format: u32,
        store: String,
        exported_at: u64,
    },
    Tenant(Tenant),
    ApiKey(ApiKeyRecord),
    User(User),
    RefreshToken(RefreshRecord),
    /// Every refresh token of the family is refused until `until` (logout, reuse).
    RevokedFamily {
        family_id: String,
        until: u64,
    },
    /// The access token `jti` of user `subject` is refused until `until` (logout).
    RevokedToken {
        subject: String,
        jti: String,
        until: u64,
    },
    /// User `subject` logged out everywhere: its tokens issued at or before `through` are
    /// refused, until `until`.
    RevokedUser {
        subject: String,
        through: u64,
        until: u64,
    },
    /// A calendar count: requests this day or month, tokens this month, of one limiter scope.
    Counter {
        scope: String,
        window: String,
        period: u64,
        count: u64,
    },
}

impl Record {
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Export { .. } => "export",
            Record::Tenant(_) => "tenant",
            Record::ApiKey(_) => "api_key",
            Record::User(_) => "user",
            Record::RefreshToken(_) => "refresh_token",
            Record::RevokedFamily { .. } => "revoked_family",
            Record::RevokedToken { .. } => "revoked_token",
            Record::RevokedUser { .. } => "revoked_user",
            Record::Counter { .. } => "counter",
        }
    }

    pub fn counter(scope: &str, window: Window, period: u64, count: u64) -> Record {
        Record::Counter {
            scope: scope.to_string(),
            window: window.name().to_string(),
            period,
            count,
        }
    }
}

/// A calendar window by the name an export uses.
pub fn calendar_window(name: &str) -> Option<Window> {
    CALENDAR_WINDOWS.into_iter().find(|w| w.name() == name)
}

/// Where a store's records go: a bounded channel, so a large store streams in constant memory.
pub type Sink = mpsc::Sender<Record>;

/// Send one record; `false` when the reader went away (the export stops quietly).
pub async fn send(sink: &Sink, r: Record) -> bool {
    sink.send(r).await.is_ok()
}

/// What loading one record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// Written, or already there exactly: importing a file twice changes nothing.
    Stored,
    /// Nothing written, for this reason (expired, an email another user holds, ...).
    Skipped(String),
}

/// Load one record into `store`, idempotently: by the record's own id, replacing what is there.
pub async fn load(store: &dyn Store, r: &Record) -> Result<Loaded, StoreError> {
    let now = unix_now();
    match r {
        Record::Export { format, .. } => {
            if *format > FORMAT {
                return Ok(Loaded::Skipped(format!(
                    "export format {format} is newer than this build reads ({FORMAT})"
                )));
            }
        }
        Record::Tenant(t) => store.records().put_tenant(t).await?,
        Record::ApiKey(k) => return load_key(store, k).await,
        Record::User(u) => return load_user(store, u).await,
        Record::RefreshToken(t) => {
            if t.expires_at <= now {
                return Ok(Loaded::Skipped("expired".into()));
            }
            store.records().put_refresh_token(t).await?;
            if let Some(at) = t.rotated_at {
                store
                    .records()
                    .mark_refresh_rotated(&t.token_hash, at, t.successor.as_deref())
                    .await?;
            }
        }
        Record::RevokedFamily { family_id, until } => {
            if *until <= now {
                return Ok(Loaded::Skipped("expired".into()));
            }
            store
                .records()
                .revoke_refresh_family(family_id, *until)
                .await?;
        }
        Record::RevokedToken {
            subject,
            jti,
            until,
        } => {
            if *until <= now {
                return Ok(Loaded::Skipped("expired".into()));
            }
            store.records().revoke_jti(subject, jti, *until).await?;
        }
        Record::RevokedUser {
            subject,
            through,
            until,
        } => {
            if *until <= now {
                return Ok(Loaded::Skipped("expired".into()));
            }
            store
                .records()
                .revoke_user_tokens(subject, *through, *until)
                .await?;
        }
        Record::Counter {
            scope,
            window,
            period,
            count,
        } => {
            let Some(w) = calendar_window(window) else {
                return Ok(Loaded::Skipped(format!("unknown window {window:?}")));
            };
            if *period != w.calendar_period(crate::util::now_ms()).0 {
                return Ok(Loaded::Skipped("a past period".into()));
            }
            store
                .counters()
                .restore_counter(scope, w, *period, *count)
                .await?;
        }
    }
    Ok(Loaded::Stored)
}

async fn load_key(store: &dyn Store, k: &ApiKeyRecord) -> Result<Loaded, StoreError> {
    match store.records().create_api_key(k).await {
        Ok(()) => Ok(Loaded::Stored),
        Err(StoreError::Conflict) => {
            let Some(old) = store.lookup().get_api_key(&k.key_hash).await? else {
                // Deleted meanwhile: try once more.
                store.records().create_api_key(k).await?;
                return Ok(Loaded::Stored);
            };
            if &old != k {
                store
                    .records()
                    .delete_api_key(&old.tenant_id, &old.id)
                    .await?;
                store.records().create_api_key(k).await?;
            }
            Ok(Loaded::Stored)
        }
        Err(e) => Err(e),
    }
}

async fn load_user(store: &dyn Store, u: &User) -> Result<Loaded, StoreError> {
    match store.records().create_user(u).await {
        Ok(()) => Ok(Loaded::Stored),
        Err(StoreError::Conflict) => match store.records().get_user_by_email(&u.email).await? {
            Some(old) if old.id == u.id => {
                if old.password_hash != u.password_hash {
                    store
                        .records()
                        .set_password_hash(&u.id, &u.password_hash)
                        .await?;
                }
                Ok(Loaded::Stored)
            }
            _ => Ok(Loaded::Skipped(format!(
                "user {}: another user holds its email",
                u.id
            ))),
        },
        Err(e) => Err(e),
    }
}

/// The header line of an export from `store`.
pub fn header(store: &str) -> Record {
    Record::Export {
        format: FORMAT,
        store: store.to_string(),
        exported_at: unix_now(),
    }
}

/// Run `store`'s export on its own task; the records arrive on the returned channel, the
/// export's outcome on the handle.
pub fn stream(
    store: std::sync::Arc<dyn Store>,
    name: &str,
) -> (
    mpsc::Receiver<Record>,
    tokio::task::JoinHandle<Result<(), StoreError>>,
) {
    let (tx, rx) = mpsc::channel(1024);
    let head = header(name);
    let task = tokio::spawn(async move {
        if !send(&tx, head).await {
            return Ok(());
        }
        store.records().export(&tx).await
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_with_a_type_tag() {
        let r = Record::RevokedToken {
            subject: "usr_1".into(),
            jti: "j1".into(),
            until: 5,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"type":"revoked_token","subject":"usr_1","jti":"j1","until":5}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
        let t = Record::Tenant(super::super::suite::tenant("t1"));
        let line = serde_json::to_string(&t).unwrap();
        assert!(line.starts_with(r#"{"type":"tenant","id":"t1""#), "{line}");
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), t);
    }

    #[test]
    fn only_calendar_windows_are_counters() {
        assert_eq!(calendar_window("day"), Some(Window::Day));
        assert_eq!(calendar_window("tokens"), Some(Window::Tokens));
        assert_eq!(calendar_window("minute"), None);
    }
}
