//! The PostgreSQL store (`ARES_STORE=postgres`, `DATABASE_URL`): the gateway's records kept in
//! ARES's own database, so one database says who exists.
//!
//! - Users, tenants and API keys are ARES's rows (`users`, `tenants`, `api_keys`): a user
//!   registered at the gateway is a row ARES's conversations can reference and ARES's login
//!   accepts (the same argon2id PHC hash); a key made at the gateway is one ARES's key check
//!   finds (`key_prefix`: the key's first 13 characters; `key_hash`: SHA-256 of the whole key).
//!   What ARES has no column for (a tenant's suspension and limits, a key's scopes, limits and
//!   last use, a user's disabled flag) is in the gateway's tables beside them (`*_ext`).
//! - Everything else (refresh tokens and their families, revocations, "log out everywhere"
//!   lines, the audit trail, per-key usage, the limiter's state) is in the schema
//!   `ares_gateway` (`schema.rs`), created and migrated forward by the gateway.
//! - Counters are exact in PostgreSQL (one transaction per decision, the scope's row locked),
//!   or in Redis when `REDIS_URL` is set as well (`counters()` hands out the Redis store's).
//! - Other replicas learn of the gateway's own writes by `NOTIFY` (`LISTEN` on
//!   `ares_gateway_invalidate`); of ARES's writes to `tenants` and `api_keys` by a digest of
//!   both tables polled every [`POLL_EVERY`]: either way every replica's caches drop what
//!   changed within a second, and a warm cache costs no round trip on the request path.
//!
//! ```text
//! mod.rs       connecting (pool, TLS by sslmode), invalidations, housekeeping, Store
//! schema.rs    which ARES schema is there; the gateway's own tables and their migration
//! rows.rs      the SQL of ARES's tables with the gateway's columns, rows as records
//! records.rs   Lookup and Records: tenants, keys, users (ARES's rows), provisioning
//! sessions.rs  refresh tokens, revocations, audit, ARES's sessions
//! export.rs    every record as export lines
//! counters.rs  Counters: one locked row per scope, decided with ratelimit::ScopeState
//! ```

mod counters;
mod export;
mod records;
mod rows;
pub mod schema;
mod sessions;

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Counters, Invalidation, Lookup, Records, RedisStore, Store};
use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::util::unix_now;
use schema::{db, one_line, AresSchema, SCHEMA};

/// How often the digest of ARES's `tenants` and `api_keys` is compared (ARES's own writes).
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// How often expired refresh tokens, revocations, old usage and idle limiter rows are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Connections in the pool.
const POOL_SIZE: usize = 16;
/// The channel of the gateway's own invalidations.
const CHANNEL: &str = "ares_gateway_invalidate";

pub struct PostgresStore {
    pool: Pool,
    /// The ARES tables found, and how to read them.
    ares: AresSchema,
    /// The counters, when they are kept in Redis (`REDIS_URL` set as well).
    redis: Option<Arc<RedisStore>>,
    invalidations: broadcast::Sender<Invalidation>,
    /// This replica's id on the channel: its own messages are skipped.
    origin: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("generation", &self.ares.generation)
            .finish_non_exhaustive()
    }
}

/// The TLS connector for `sslmode`: the system's roots (or `SSL_CERT_FILE`'s).
fn tls() -> Result<MakeRustlsConnect, String> {
    let config = crate::net::tls::upstream_client_config(true, None)?;
    Ok(MakeRustlsConnect::new(config))
}

/// The connection settings of `url`, with the gateway's: a statement timeout of the store's
/// command budget (a hanging statement is cancelled by the server too), a connect timeout, and
/// its application name.
fn pg_config(url: &str, budget: Duration) -> Result<tokio_postgres::Config, String> {
    // The URL may hold a password: never echo it.
    let mut cfg = tokio_postgres::Config::from_str(url)
        .map_err(|_| "DATABASE_URL is not a valid PostgreSQL URL".to_string())?;
    let ms = budget.as_millis().max(1);
    let options = match cfg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} -c statement_timeout={ms}"),
        _ => format!("-c statement_timeout={ms}"),
    };
    cfg.options(&options);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    cfg.application_name("ares-gateway");
    Ok(cfg)
}

impl PostgresStore {
    /// Connect, recognise ARES's schema and migrate the gateway's tables. Unlike Redis, the
    /// database must answer at start: without knowing ARES's schema the gateway cannot serve.
    pub async fn connect(
        cfg: &StoreConfig,
        url: &str,
        redis_url: Option<&str>,
    ) -> Result<Arc<PostgresStore>, String> {
        let pg = pg_config(url, cfg.command_timeout)?;
        let tls = tls()?;
        let (mut client, connection) =
            tokio::time::timeout(Duration::from_secs(10), pg.connect(tls.clone()))
                .await
                .map_err(|_| "cannot reach the PostgreSQL database: timed out".to_string())?
                .map_err(|e| format!("cannot reach the PostgreSQL database: {}", one_line(&e)))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let ares = schema::inspect(&client).await?;
        schema::migrate(&mut client, &ares).await?;
        drop(client);
        driver.abort();
        tracing::info!(
            generation = ares.generation.name(),
            ares_users = ares.ares_users,
            "PostgreSQL store: ARES schema recognised, gateway tables ready"
        );
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| format!("PostgreSQL pool: {e}"))?;
        let redis = match redis_url {
            Some(u) => Some(RedisStore::connect(cfg, u).await?),
            None => None,
        };
        let (tx, _) = broadcast::channel(1024);
        let store = Arc::new(PostgresStore {
            pool,
            ares,
            redis,
            invalidations: tx,
            origin: crate::util::random_token("", 16),
        });
        tokio::spawn(listen(pg, tls, Arc::downgrade(&store)));
        tokio::spawn(poll_ares(Arc::downgrade(&store)));
        tokio::spawn(housekeeping(Arc::downgrade(&store)));
        Ok(store)
    }

    /// The generation of ARES's schema the store found.
    pub fn generation(&self) -> schema::Generation {
        self.ares.generation
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))
    }

    /// Tell the other replicas (and this one's own subscribers) what changed.
    async fn notify(&self, client: &tokio_postgres::Client, what: &str) {
        let payload = format!("{} {} {what}", self.origin, crate::util::now_ms());
        if let Err(e) = client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await
        {
            // The other replicas still see it within a poll of the digest.
            tracing::debug!(error = %one_line(&e), "invalidation not sent");
        }
    }

    /// Delete what has expired.
    async fn sweep(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        let now = i(unix_now())?;
        let oldest_day = i((unix_now() / 86_400).saturating_sub(super::KEY_USAGE_DAYS))?;
        let idle_ms = i(crate::util::now_ms().saturating_sub(32 * 86_400_000))?;
        let s = SCHEMA;
        c.batch_execute("BEGIN").await.map_err(db)?;
        let done = async {
            for (sql, arg) in [
                (
                    format!("DELETE FROM {s}.refresh_tokens WHERE expires_at <= $1"),
                    now,
                ),
                (
                    format!("DELETE FROM {s}.revoked_families WHERE until <= $1"),
                    now,
                ),
                (
                    format!("DELETE FROM {s}.revoked_jtis WHERE until <= $1"),
                    now,
                ),
                (
                    format!("DELETE FROM {s}.user_cutoffs WHERE until <= $1"),
                    now,
                ),
                (
                    format!("DELETE FROM {s}.key_usage WHERE day < $1"),
                    oldest_day,
                ),
                (
                    format!("DELETE FROM {s}.limits WHERE touched_ms < $1"),
                    idle_ms,
                ),
            ] {
                c.execute(&sql, &[&arg]).await.map_err(db)?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
        c.batch_execute(end).await.map_err(db)?;
        done
    }

    /// A digest of ARES's `tenants` and `api_keys`: it changes whenever a row does.
    async fn digest(&self) -> Result<String, StoreError> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT coalesce(md5(string_agg(t.id || '|' || t.name || '|' || t.tier, ',' ORDER BY t.id)), '') \
               || ':' || \
             (SELECT coalesce(md5(string_agg(k.id || '|' || k.key_hash || '|' || k.tenant_id || '|' \
                || k.is_active::text || '|' || coalesce(k.expires_at::text, '') || '|' || k.name, \
                ',' ORDER BY k.id)), '') FROM {} k) \
             FROM {} t",
            self.ares.table("api_keys"),
            self.ares.table("tenants")
        );
        let row = c.query_one(&sql, &[]).await.map_err(db)?;
        row.try_get::<_, Option<String>>(0)
            .map(Option::unwrap_or_default)
            .map_err(|e| StoreError::Corrupt(one_line(&e)))
    }
}

/// Listen for the gateway's own invalidations; after every (re)subscription drop everything,
/// since messages may have been missed meanwhile.
async fn listen(pg: tokio_postgres::Config, tls: MakeRustlsConnect, store: Weak<PostgresStore>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(tx) = store
            .upgrade()
            .map(|s| (s.invalidations.clone(), s.origin.clone()))
        else {
            return;
        };
        let (sender, origin) = tx;
        match tokio::time::timeout(Duration::from_secs(5), pg.connect(tls.clone())).await {
            Ok(Ok((client, mut connection))) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                // The connection is driven by the message stream: run both until LISTEN is in.
                let ok = {
                    let listen = format!("LISTEN {CHANNEL}");
                    let mut subscribed = std::pin::pin!(client.batch_execute(&listen));
                    loop {
                        tokio::select! {
                            r = &mut subscribed => break r.is_ok(),
                            m = messages.next() => if !matches!(m, Some(Ok(_))) { break false },
                        }
                    }
                };
                if ok {
                    backoff = Duration::from_millis(100);
                    let _ = sender.send(Invalidation::All);
                    while let Some(Ok(message)) = messages.next().await {
                        let AsyncMessage::Notification(n) = message else {
                            continue;
                        };
                        if let Some(inv) = parse(n.payload(), &origin) {
                            let _ = sender.send(inv);
                        }
                    }
                    tracing::warn!("PostgreSQL invalidation subscription lost; resubscribing");
                }
                drop(client);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %one_line(&e), "invalidation subscription failed")
            }
            Err(_) => tracing::debug!("invalidation subscription timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A payload `<origin> <sent ms> key:<hash> | tenant:<id> | all` from another replica.
fn parse(payload: &str, own: &str) -> Option<Invalidation> {
    let mut parts = payload.splitn(3, ' ');
    let (from, sent, body) = (parts.next()?, parts.next(), parts.next().unwrap_or(""));
    if from == own {
        return None;
    }
    if let Some(sent) = sent.and_then(|t| t.parse::<u64>().ok()) {
        let lag = crate::util::now_ms().saturating_sub(sent);
        crate::metrics::get().invalidation_lag(Duration::from_millis(lag));
    }
    Some(match body.split_once(':') {
        Some(("key", h)) => Invalidation::Key(h.to_string()),
        Some(("tenant", id)) => Invalidation::Tenant(id.to_string()),
        _ => Invalidation::All,
    })
}

/// ARES's own writes (its admin API, its key rotation) carry no notification: compare a digest
/// of its tables every [`POLL_EVERY`] and drop every cached key and tenant when it moves.
async fn poll_ares(store: Weak<PostgresStore>) {
    let mut last: Option<String> = None;
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = store.upgrade() else {
            return;
        };
        match s.digest().await {
            Ok(d) => {
                if last.as_ref().is_some_and(|l| *l != d) {
                    let _ = s.invalidations.send(Invalidation::All);
                }
                last = Some(d);
            }
            Err(e) => tracing::debug!(error = %e, "ARES table digest not read"),
        }
    }
}

async fn housekeeping(store: Weak<PostgresStore>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(s) = store.upgrade() else {
            return;
        };
        if let Err(e) = s.sweep().await {
            tracing::warn!(error = %e, "PostgreSQL sweep failed; retried at the next");
        }
    }
}

/// A count or time as PostgreSQL's BIGINT.
fn i(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} does not fit a BIGINT")))
}

/// A BIGINT read back as a count or time.
fn u(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value {v}")))
}

#[async_trait]
impl Store for PostgresStore {
    fn lookup(&self) -> &dyn Lookup {
        self
    }

    fn counters(&self) -> &dyn Counters {
        match &self.redis {
            Some(r) => r.counters(),
            None => self,
        }
    }

    fn records(&self) -> &dyn Records {
        self
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute("SELECT 1", &[]).await.map_err(db)?;
        if let Some(r) = &self.redis {
            r.ping().await?;
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn invalidations(&self) -> Option<broadcast::Receiver<Invalidation>> {
        Some(self.invalidations.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_payloads_skip_their_own_origin() {
        assert_eq!(parse("me 1 key:abc", "me"), None);
        assert_eq!(
            parse("other 1 key:abc", "me"),
            Some(Invalidation::Key("abc".into()))
        );
        assert_eq!(
            parse("other x tenant:t1", "me"),
            Some(Invalidation::Tenant("t1".into()))
        );
        assert_eq!(parse("other 1 whatever", "me"), Some(Invalidation::All));
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let e = pg_config("postgres://u:sekrit@[::1", Duration::from_millis(300)).unwrap_err();
        assert!(!e.contains("sekrit"), "{e}");
        let cfg = pg_config(
            "postgres://u@127.0.0.1:5432/ares?options=-c%20search_path%3Dpublic",
            Duration::from_millis(300),
        )
        .unwrap();
        let options = cfg.get_options().unwrap();
        assert!(options.contains("statement_timeout=300"), "{options}");
        assert!(options.contains("search_path"), "{options}");
    }

    #[test]
    fn bigints_round_trip_and_refuse_what_does_not_fit() {
        assert_eq!(u(i(42).unwrap()).unwrap(), 42);
        assert!(i(u64::MAX).is_err());
        assert!(u(-1).is_err());
    }
}
