//! The embedded store (the default): one redb file in `ARES_DATA_DIR`, for a gateway that runs as
//! one process. Nothing acknowledged is lost on restart or `kill -9`: every write commits (and
//! syncs) before the call returns.
//!
//! The request path never waits on the disk: access-token revocations are mirrored in memory
//! (loaded at start-up, written through), and the limiter counts in memory with the memory
//! store's `LocalCounters`, its day/month/token counts written down every [`COUNTER_FLUSH`] (and
//! at shutdown). A crash forgives at most that interval of calendar counts, plus the second,
//! minute and hour windows (GCRA: one theoretical arrival time per scope and window), which live
//! in memory only (docs/stores.md, "What a restart forgives").

pub mod file;
pub mod secrets;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::de::DeserializeOwned;

use self::file::{
    unavailable, COUNTERS, EMAILS, FAMILIES, KEYS, REFRESH, TENANTS, TENANT_KEYS, TOKENS, USERS,
    USER_CUTOFFS,
};
use self::file::{AUDIT, KEY_USAGE};
use super::local::LocalCounters;
use super::records::{self, Record};
use super::{
    ApiKeyRecord, Counters, Lookup, Records, RefreshRecord, Rotation, Store, Tenant, TokenRef, User,
};
use crate::error::StoreError;
use crate::ratelimit::Window;
use crate::util::{now_ms, unix_now};

/// How often changed day/month/token counts are written to the file: the most a crash forgives.
pub const COUNTER_FLUSH: Duration = Duration::from_secs(1);
/// The longest a write may take (a disk that hangs): past it the caller gets 503, though the
/// write may still land. Reads and the limiter answer from memory or the page cache, so the
/// store counts as in-process and calls carry no per-command timer.
const WRITE_BUDGET: Duration = Duration::from_secs(10);
/// How often expired revocations, refresh tokens and past counters are deleted from the file.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

pub use crate::config::EmbeddedOptions as Options;

pub struct EmbeddedStore {
    db: Arc<Database>,
    dir: PathBuf,
    path: PathBuf,
    min_free_bytes: u64,
    /// The file's access-token revocations and "log out everywhere" lines (read on every JWT
    /// request), and the limiter's counts (written down every `COUNTER_FLUSH`): the store's
    /// `Counters`.
    local: LocalCounters,
    /// `bulk_load`: commits skip the sync until it is turned off.
    bulk: std::sync::atomic::AtomicBool,
    /// Counts taken from the limiter but not yet written (a failed write keeps them).
    unwritten: Mutex<std::collections::HashMap<(String, Window), (u64, u64)>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn decode<T: DeserializeOwned>(what: &str, id: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what} {id}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EmbeddedStore {
    /// Open the data file and load what the request path keeps in memory. Blocking: call at
    /// start-up.
    pub fn open(opts: &Options) -> Result<Arc<EmbeddedStore>, String> {
        let (db, path) = file::open(&opts.dir, opts.cache_bytes)?;
        let store = EmbeddedStore {
            db: Arc::new(db),
            dir: opts.dir.clone(),
            path,
            min_free_bytes: opts.min_free_bytes,
            local: LocalCounters::default(),
            bulk: std::sync::atomic::AtomicBool::new(false),
            unwritten: Mutex::new(Default::default()),
        };
        store
            .load_memory()
            .map_err(|e| format!("{}: {e}", store.path.display()))?;
        Ok(Arc::new(store))
    }

    /// Open, and run the counter writer and the sweeper while the store lives.
    pub fn start(opts: &Options) -> Result<Arc<EmbeddedStore>, String> {
        let store = Self::open(opts)?;
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COUNTER_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut since_sweep = Duration::ZERO;
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { break };
                if let Err(e) = s.flush().await {
                    tracing::warn!(error = %e, "day/month counts not written yet; retrying");
                }
                since_sweep += COUNTER_FLUSH;
                if since_sweep >= SWEEP_EVERY {
                    since_sweep = Duration::ZERO;
                    if let Err(e) = s.sweep().await {
                        tracing::warn!(error = %e, "embedded store sweep failed");
                    }
                }
            }
        });
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load_memory(&self) -> Result<(), StoreError> {
        let now = unix_now();
        let tx = self.db.begin_read().map_err(unavailable)?;
        each(&tx, TOKENS, |jti, (subject, until)| {
            if until > now {
                self.local.revoke_jti(subject, jti, until);
            }
            Ok(true)
        })?;
        each(&tx, USER_CUTOFFS, |user, (through, until)| {
            if until > now {
                self.local.user_cutoffs.set(user, through, until);
            }
            Ok(true)
        })?;
        let now_ms = now_ms();
        each(&tx, COUNTERS, |(scope, window), (period, count)| {
            if let Some(w) = records::calendar_window(window) {
                if w.calendar_period(now_ms).0 == period {
                    self.local.limiter.restore(scope, w, period, count);
                }
            }
            Ok(true)
        })?;
        // Restoring marked every count changed; they are in the file already.
        self.local.limiter.take_changed();
        Ok(())
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        f(&tx)
    }

    /// Run `f` in one write transaction on a blocking thread and commit (durably) when it
    /// returns `Ok`; an `Err` aborts it.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        file::check_space(&self.dir, self.min_free_bytes)?;
        let db = self.db.clone();
        let bulk = self.bulk.load(std::sync::atomic::Ordering::Relaxed);
        let task = tokio::task::spawn_blocking(move || {
            let mut tx = db.begin_write().map_err(unavailable)?;
            if bulk {
                // Made durable by the next durable commit (`bulk_load(false)`).
                tx.set_durability(redb::Durability::None)
                    .map_err(|e| StoreError::Unavailable(format!("embedded store: {e}")))?;
            }
            let out = f(&tx)?;
            tx.commit().map_err(unavailable)?;
            Ok(out)
        });
        match tokio::time::timeout(WRITE_BUDGET, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "embedded store write: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(
                "embedded store write timed out (is the data disk hanging?)".into(),
            )),
        }
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        table: redb::TableDefinition<&str, &[u8]>,
        what: &str,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(table).map_err(unavailable)?;
            let v = t.get(id).map_err(unavailable)?;
            v.map(|v| decode(what, id, v.value())).transpose()
        })
    }

    /// Write down the calendar counts changed since the last call.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let changed = self.local.limiter.take_changed();
        let batch: Vec<((String, Window), (u64, u64))> = {
            let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
            for (scope, w, period, count) in changed {
                unwritten.insert((scope, w), (period, count));
            }
            unwritten.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let written = batch.clone();
        self.write(move |tx| {
            let mut t = tx.open_table(COUNTERS).map_err(unavailable)?;
            for ((scope, w), v) in &written {
                t.insert((scope.as_str(), w.name()), *v)
                    .map_err(unavailable)?;
            }
            Ok(())
        })
        .await?;
        let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in batch {
            // A newer count taken meanwhile stays for the next flush.
            if unwritten.get(&k) == Some(&v) {
                unwritten.remove(&k);
            }
        }
        Ok(())
    }

    /// Delete what has expired from the file and from memory.
    pub async fn sweep(&self) -> Result<(), StoreError> {
        let now = unix_now();
        let now_ms = now_ms();
        self.local.sweep(now_ms);
        self.write(move |tx| {
            tx.open_table(TOKENS)
                .map_err(unavailable)?
                .retain(|_, (_, until)| until > now)
                .map_err(unavailable)?;
            tx.open_table(FAMILIES)
                .map_err(unavailable)?
                .retain(|_, until| until > now)
                .map_err(unavailable)?;
            tx.open_table(USER_CUTOFFS)
                .map_err(unavailable)?
                .retain(|_, (_, until)| until > now)
                .map_err(unavailable)?;
            let oldest = (now / 86_400).saturating_sub(super::KEY_USAGE_DAYS);
            tx.open_table(KEY_USAGE)
                .map_err(unavailable)?
                .retain(|(_, day), _| day >= oldest)
                .map_err(unavailable)?;
            tx.open_table(REFRESH)
                .map_err(unavailable)?
                .retain(|_, json| {
                    serde_json::from_slice::<RefreshRecord>(json)
                        .map_or(true, |r| r.expires_at > now)
                })
                .map_err(unavailable)?;
            tx.open_table(COUNTERS)
                .map_err(unavailable)?
                .retain(|(_, window), (period, _)| {
                    records::calendar_window(window)
                        .is_some_and(|w| w.calendar_period(now_ms).0 <= period)
                })
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    /// Every record, from one snapshot of the file (writers go on meanwhile). Blocking.
    fn export_blocking(db: &Database, sink: &records::Sink) -> Result<(), StoreError> {
        let tx = db.begin_read().map_err(unavailable)?;
        // Each walk stops (false) when the reader went away.
        let send = |r: Record| Ok(sink.blocking_send(r).is_ok());
        let now = unix_now();
        // Complete, or cut short by a reader that went away: either way nothing is left to do.
        let _complete = each(&tx, TENANTS, |id, json| {
            send(Record::Tenant(decode("tenant", id, json)?))
        })? && each(&tx, KEYS, |h, json| {
            send(Record::ApiKey(decode("api key", h, json)?))
        })? && each(&tx, USERS, |id, json| {
            send(Record::User(decode("user", id, json)?))
        })? && each(&tx, REFRESH, |h, json| {
            send(Record::RefreshToken(decode("refresh token", h, json)?))
        })? && each(&tx, FAMILIES, |family_id, until| {
            if until <= now {
                return Ok(true);
            }
            let family_id = family_id.to_string();
            send(Record::RevokedFamily { family_id, until })
        })? && each(&tx, TOKENS, |jti, (subject, until)| {
            if until <= now {
                return Ok(true);
            }
            let (subject, jti) = (subject.to_string(), jti.to_string());
            send(Record::RevokedToken {
                subject,
                jti,
                until,
            })
        })? && each(&tx, USER_CUTOFFS, |subject, (through, until)| {
            if until <= now {
                return Ok(true);
            }
            let subject = subject.to_string();
            send(Record::RevokedUser {
                subject,
                through,
                until,
            })
        })? && each(&tx, COUNTERS, |(scope, window), (period, count)| {
            let (scope, window) = (scope.to_string(), window.to_string());
            send(Record::Counter {
                scope,
                window,
                period,
                count,
            })
        })?;
        Ok(())
    }
}

/// Call `f` on every entry of `table` in key order, until it returns `false`; returns whether
/// the walk reached the end.
fn each<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    table: redb::TableDefinition<K, V>,
    mut f: impl for<'a> FnMut(K::SelfType<'a>, V::SelfType<'a>) -> Result<bool, StoreError>,
) -> Result<bool, StoreError> {
    for entry in tx
        .open_table(table)
        .map_err(unavailable)?
        .iter()
        .map_err(unavailable)?
    {
        let (k, v) = entry.map_err(unavailable)?;
        if !f(k.value(), v.value())? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Remove key `hash` from both key tables; returns its record.
fn remove_key(tx: &WriteTransaction, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
    let old = tx
        .open_table(KEYS)
        .map_err(unavailable)?
        .remove(hash)
        .map_err(unavailable)?
        .map(|v| decode::<ApiKeyRecord>("api key", hash, v.value()))
        .transpose()?;
    if let Some(k) = &old {
        tx.open_table(TENANT_KEYS)
            .map_err(unavailable)?
            .remove((k.tenant_id.as_str(), k.id.as_str()))
            .map_err(unavailable)?;
    }
    Ok(old)
}

#[async_trait]
impl Store for EmbeddedStore {
    fn lookup(&self) -> &dyn Lookup {
        self
    }

    fn counters(&self) -> &dyn Counters {
        &self.local
    }

    fn records(&self) -> &dyn Records {
        self
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|tx| tx.open_table(file::META).map(|_| ()).map_err(unavailable))
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn in_process(&self) -> bool {
        true
    }

    async fn bulk_load(&self, on: bool) -> Result<(), StoreError> {
        self.bulk.store(on, std::sync::atomic::Ordering::Relaxed);
        if on {
            return Ok(());
        }
        // Restored counters are in memory: write them down with the rest. A durable commit
        // makes every earlier one durable too.
        self.flush().await?;
        self.write(|_| Ok(())).await
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        self.flush().await
    }
}

#[async_trait]
impl Lookup for EmbeddedStore {
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        self.get_json(TENANTS, "tenant", id)
    }

    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get_json(KEYS, "api key", key_hash)
    }

    async fn is_token_revoked(&self, token: TokenRef<'_>) -> Result<bool, StoreError> {
        Ok(self.local.revoked(token, unix_now()))
    }
}

#[cfg(test)]
mod tests;
