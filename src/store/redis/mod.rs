//! The Redis store: shared by every gateway replica (one Redis, or a Redis Cluster).
//!
//! # Key schema (prefix `ares:` by default)
//!
//! ```text
//! {p}tenant:{id}                 JSON tenant
//! {p}tenants                     SET of tenant ids
//! {p}tenant_keys:{id}            SET of the tenant's key hashes
//! {p}key:{sha256 of key}         JSON key record (hash, prefix, scopes; never the key)
//! {p}user:{id}                   JSON user (argon2id PHC string; never the password)
//! {p}email:{sha256 of email}     user id: the unique index (SET NX)
//! {p}users                       SET of user ids (the admin listing under Cluster)
//! {p}audit                       ZSET of audit entries (JSON) by time, trimmed to the retention
//! {p}kusage:{sha256 of key}      HASH unix day -> requests, expiring 31 days after the last use
//! {p}rt:{sha256 of token}        JSON refresh record, expiring with the token
//! {p}rtrot:{sha256 of token}     "<rotation time> <sealed successor>" (SET NX GET: the first
//!                                rotation wins; older values hold the time alone)
//! {p}rtfam:{family}              revoked refresh family, expiring with the last token
//! {p}jti:{u:<subject>}:{jti}      revoked access token id, expiring with the token (in the
//!                                user's limiter slot: one script checks it and the limits)
//! {p}jti:{jti}                   the same, as older gateways keep it (`store.legacy_revocations`)
//! {p}ub:{u:<subject>}            "log out everywhere": tokens of the user issued (iat) at or
//!                                before this time are revoked; in the user's slot too
//! {p}rl:{<scope>}:{window}:gcra  GCRA time (microseconds) for second|minute|hour
//! {p}rl:{<scope>}:{window}:{n}   calendar counter for day|month period n, expiring after it
//! {p}rl:{<scope>}:tokens:{n}     tokens debited in month n (the limiter checks it too)
//! channel {p}invalidate          "<origin> <sent ms> key:<hash>" | ... tenant:<id>: invalidations
//! ```
//!
//! The braces are Redis Cluster hash tags: every key one rate-limit decision touches shares a
//! slot, so the decision is one Lua script (`EVALSHA`), atomic and one round trip. Other
//! multi-key writes are ordered so that a crash between steps never leaves a usable record
//! without its index (the unique index is written first, with NX).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, OnceCell};

use super::{
    scope, Admission, ApiKeyRecord, Counters, Invalidation, Lookup, Records, RefreshRecord,
    Rotation, Store, Take, Tenant, TokenRef, User,
};
use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::ratelimit::{Decision, RateLimitHeaders, Usage, Window};
use crate::util::unix_now;

pub struct RedisStore {
    conn: Conn,
    prefix: String,
    invalidations: broadcast::Sender<Invalidation>,
    limiter: Script,
    timeout: Duration,
    /// Also keep revocations under the key older gateways read (`StoreConfig`).
    legacy_revocations: bool,
    /// This replica's id on the invalidation channel: its own messages are skipped (it has
    /// already invalidated its cache), so they cannot evict entries it cached since.
    origin: String,
}

/// `{prefix}` + a formatted key name.
macro_rules! key {
    ($store:expr, $($arg:tt)*) => {
        format!("{}{}", $store.prefix, format_args!($($arg)*))
    };
}

mod conn;
mod export;
mod limit;
mod records;
mod sentinel;

use conn::Conn;
use limit::LIMIT_SCRIPT;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn sha_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[async_trait]
impl Store for RedisStore {
    fn lookup(&self) -> &dyn Lookup {
        self
    }

    fn counters(&self) -> &dyn Counters {
        self
    }

    fn records(&self) -> &dyn Records {
        self
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.handle().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn invalidations(&self) -> Option<broadcast::Receiver<Invalidation>> {
        Some(self.invalidations.subscribe())
    }
}

/// A `rtrot:` value: `"<time> <sealed successor>"`, or the time alone (older gateways).
pub(crate) fn parse_rotation(v: &str) -> Option<Rotation> {
    let (at, successor) = match v.split_once(' ') {
        Some((at, s)) => (at, Some(s.to_string())),
        None => (v, None),
    };
    Some(Rotation {
        at: at.parse().ok()?,
        successor,
    })
}

#[cfg(test)]
mod tests {
    use super::conn::cluster_nodes;

    #[test]
    fn cluster_urls_name_every_seed_node() {
        assert_eq!(
            cluster_nodes("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/").unwrap(),
            vec!["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://:pw@a:1,b:2").unwrap(),
            vec!["rediss://:pw@a:1", "rediss://:pw@b:2"]
        );
        assert!(cluster_nodes("redis://127.0.0.1:6379").is_none());
    }
}
