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

/// Decide every window of one scope atomically; consume from all only when all allow.
///
/// KEYS: the revocation keys of the request's access token (none for an API key), then its
/// user's "log out everywhere" key (holding a time: tokens issued at or before it are revoked),
/// then one per window, in check order. ARGV: now_ms, consume (1/0), the number of revocation
/// keys, the number of cut-off keys, the token's iat, want (requests to take at once: 1, or a
/// lease's size; 0 takes none), back (a lease's unused requests to return to the GCRA windows
/// first), back_calendar (the same for the calendar windows: 0 once the lease's day is over),
/// then per window: kind (`g` second, minute or hour: GCRA | `c` calendar | `k` check-only
/// calendar: the token budget), limit, span (GCRA: window ms; calendar: period end ms).
/// A GCRA key holds one number, the theoretical arrival time in microseconds (the arithmetic of
/// `ratelimit::Gcra`, which the memory store runs); it expires when it is in the past.
/// Returns {-1, 0, 0, 0, 0} when a revocation key exists (nothing consumed), else {refusing
/// window index or 0, limit, remaining, reset_ms, granted} of the refusing or tightest window.
/// Granted is how many requests were taken: `want` while every window has room for four times
/// as many, else a quarter of the smallest room (at least one), so near a limit a lease shrinks
/// to the single request and the decision is exact again. Remaining is what is left after them.
const LIMIT_SCRIPT: &str = r#"
-- Globals read through locals: each global access costs a table look-up.
local KEYS, ARGV, tonumber = KEYS, ARGV, tonumber
local call, ceil, floor = redis.call, math.ceil, math.floor
local now = tonumber(ARGV[1])
local now_us = now * 1000
local consume = ARGV[2] == '1'
local nrev = tonumber(ARGV[3])
local ncut = tonumber(ARGV[4])
local iat = tonumber(ARGV[5])
local want = tonumber(ARGV[6])
local back = tonumber(ARGV[7])
local back_cal = tonumber(ARGV[8])
local first = nrev + ncut
local nwin = #KEYS - first
if back > 0 or back_cal > 0 then
  for w = 1, nwin do
    local key = KEYS[first + w]
    local base = 8 + (w - 1) * 3
    local kind = ARGV[base + 1]
    local limit = tonumber(ARGV[base + 2])
    if kind == 'g' and back > 0 and limit >= 1 then
      local tat = tonumber(call('GET', key) or '0')
      local interval = ceil(tonumber(ARGV[base + 3]) * 1000 / limit)
      tat = tat - back * interval
      if tat <= now_us then
        call('DEL', key)
      else
        call('SET', key, string.format('%.0f', tat), 'PX', ceil((tat - now_us) / 1000) + 1)
      end
    elseif kind == 'c' and back_cal > 0 and call('EXISTS', key) == 1 then
      if call('DECRBY', key, back_cal) < 0 then
        call('SET', key, '0', 'KEEPTTL')
      end
    end
  end
end
if want < 1 then
  return {0, 0, 0, 0, 0}
end
for i = 1, nrev do
  if call('EXISTS', KEYS[i]) == 1 then
    return {-1, 0, 0, 0, 0}
  end
end
for i = nrev + 1, nrev + ncut do
  local cut = call('GET', KEYS[i])
  if cut and iat <= tonumber(cut) then
    return {-1, 0, 0, 0, 0}
  end
end
-- One pass decides every window and finds the tightest as if one request were taken. A lease
-- of g takes g - 1 more from every window alike (a GCRA window's reset does not move once it
-- holds a request), so the same window stays the tightest with g - 1 fewer remaining.
local tats, intervals = {}, {}
local one = 0
if consume then one = 1 end
local room = want * 4
local tl, tr, tz = 0, -1, 0
for w = 1, nwin do
  local key = KEYS[first + w]
  local base = 8 + (w - 1) * 3
  local kind = ARGV[base + 1]
  local limit = tonumber(ARGV[base + 2])
  local span = tonumber(ARGV[base + 3])
  local rem, reset
  if kind == 'g' then
    if limit < 1 then
      return {w, limit, 0, span, 0}
    end
    local interval = ceil(span * 1000 / limit)
    local tat = tonumber(call('GET', key) or '0')
    if tat < now_us then tat = now_us end
    local backlog = tat - now_us + interval
    if backlog > interval * limit then
      return {w, limit, 0, ceil((backlog - interval * limit) / 1000), 0}
    end
    tats[w], intervals[w] = tat, interval
    if want > 1 then
      local fits = floor((interval * limit - (tat - now_us)) / interval)
      if fits < room then room = fits end
    end
    local held = tat - now_us + one * interval
    local n = ceil(held / interval)
    rem = limit - n
    if n == 0 then reset = 0 else reset = ceil((held - (n - 1) * interval) / 1000) end
  else
    local n = tonumber(call('GET', key) or '0')
    if n >= limit then
      return {w, limit, 0, span - now, 0}
    end
    if kind == 'c' and limit - n < room then room = limit - n end
    rem = limit - n - one
    reset = span - now
  end
  if kind ~= 'k' and (tr < 0 or rem < tr or (rem == tr and reset < tz)) then
    tl, tr, tz = limit, rem, reset
  end
end
local granted = 1
if consume and want > 1 then
  granted = math.max(1, math.min(want, floor(room / 4)))
  tr = tr - (granted - 1)
end
if consume then
  for w = 1, nwin do
    local key = KEYS[first + w]
    local base = 8 + (w - 1) * 3
    local kind = ARGV[base + 1]
    if kind == 'g' then
      local tat = tats[w] + granted * intervals[w]
      local ttl = ceil((tat - now_us) / 1000) + 1
      call('SET', key, string.format('%.0f', tat), 'PX', ttl)
    elseif kind == 'k' then
      -- check-only: debited by token usage, not by requests
    elseif (granted == 1 and call('INCR', key) or call('INCRBY', key, granted)) == granted then
      -- A calendar key is created here, once per window: its expiry is set once.
      call('PEXPIREAT', key, tonumber(ARGV[base + 3]) + 86400000)
    end
  end
end
if tr < 0 then tr = 0 end
return {0, tl, tr, tz, granted}
"#;

/// A live connection: one Redis (multiplexed, reconnecting) or a cluster.
#[derive(Clone)]
enum Handle {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Handle::Single(c) => c.req_packed_command(cmd),
            Handle::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Single(c) => c.get_db(),
            Handle::Cluster(c) => c.get_db(),
        }
    }
}

enum Conn {
    Single(ConnectionManager),
    /// One Redis at a time, the primary the sentinels name (followed across failovers).
    Sentinel(Arc<sentinel::SentinelConn>),
    /// Connected on first use, so the gateway starts (unready) while the cluster is down.
    Cluster(Box<LazyCluster>),
}

struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

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

/// Node URLs of `redis+cluster://[auth@]h1:p1,h2:p2` (or `rediss+cluster://`).
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("redis+cluster://") {
        ("redis://", r)
    } else if let Some(r) = url.strip_prefix("rediss+cluster://") {
        ("rediss://", r)
    } else {
        return None;
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    Some(
        hosts
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(|h| format!("{scheme}{auth}{}", h.trim()))
            .collect(),
    )
}

/// `{prefix}` + a formatted key name.
macro_rules! key {
    ($store:expr, $($arg:tt)*) => {
        format!("{}{}", $store.prefix, format_args!($($arg)*))
    };
}

mod export;
mod sentinel;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Set up connections without requiring Redis to be up: commands fail (503) until it is.
    pub async fn connect(cfg: &StoreConfig, url: &str) -> Result<Arc<RedisStore>, String> {
        let timeout = cfg.command_timeout;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let (conn, pubsub) = if let Some(parsed) = sentinel::SentinelUrl::parse(url) {
            let s = sentinel::SentinelConn::new(&parsed?, manager_config, timeout)?;
            (Conn::Sentinel(s.clone()), PubSubSource::Sentinel(s))
        } else {
            match cluster_nodes(url) {
                Some(nodes) if nodes.is_empty() => {
                    return Err("REDIS_URL names no cluster node".into())
                }
                Some(nodes) => {
                    let client = ClusterClient::builder(nodes.clone())
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .retries(1)
                        .build()
                        .map_err(|e| format!("REDIS_URL: {e}"))?;
                    let pubsub = redis::Client::open(nodes[0].as_str())
                        .map_err(|e| format!("REDIS_URL: {e}"))?;
                    (
                        Conn::Cluster(Box::new(LazyCluster {
                            client,
                            conn: OnceCell::new(),
                        })),
                        PubSubSource::Fixed(Box::new(pubsub)),
                    )
                }
                None => {
                    let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?;
                    let manager =
                        ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
                            .map_err(|e| format!("REDIS_URL: {e}"))?;
                    (Conn::Single(manager), PubSubSource::Fixed(Box::new(client)))
                }
            }
        };
        let (tx, _) = broadcast::channel(1024);
        let origin = crate::util::random_token("", 16);
        let store = Arc::new(RedisStore {
            conn,
            prefix: cfg.key_prefix.clone(),
            invalidations: tx.clone(),
            limiter: Script::new(LIMIT_SCRIPT),
            timeout,
            legacy_revocations: cfg.legacy_revocations,
            origin: origin.clone(),
        });
        let channel = format!("{}invalidate", cfg.key_prefix);
        tokio::spawn(subscribe_loop(
            pubsub,
            channel,
            origin,
            tx,
            Arc::downgrade(&store),
        ));
        Ok(store)
    }

    /// One Redis (directly or through Sentinel), not a cluster: any key is in reach of a script.
    fn is_one_redis(&self) -> bool {
        !matches!(self.conn, Conn::Cluster(_))
    }

    /// The connection to the one Redis, or `None` under Cluster.
    async fn single(&self) -> Result<Option<ConnectionManager>, StoreError> {
        match &self.conn {
            Conn::Single(m) => Ok(Some(m.clone())),
            Conn::Sentinel(s) => Ok(Some(s.primary().await?.conn.clone())),
            Conn::Cluster(_) => Ok(None),
        }
    }

    async fn handle(&self) -> Result<Handle, StoreError> {
        match &self.conn {
            Conn::Single(m) => Ok(Handle::Single(m.clone())),
            Conn::Sentinel(s) => Ok(Handle::Single(s.primary().await?.conn.clone())),
            Conn::Cluster(lazy) => {
                let LazyCluster { client, conn } = lazy.as_ref();
                let c = conn
                    .get_or_try_init(|| async {
                        tokio::time::timeout(self.timeout * 4, client.get_async_connection())
                            .await
                            .map_err(|_| unavailable("cluster connect timed out"))?
                            .map_err(unavailable)
                    })
                    .await?;
                Ok(Handle::Cluster(c.clone()))
            }
        }
    }

    /// The records named by the members of the index set `{p}<set>`, each stored at
    /// `{p}<record><member>`; members whose record went away meanwhile are skipped.
    async fn set_records<T: DeserializeOwned>(
        &self,
        set: &str,
        record: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut c = self.handle().await?;
        let members: Vec<String> = c.smembers(key!(self, "{set}")).await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            if let Some(r) = self.get_json(&key!(self, "{record}{m}")).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let mut c = self.handle().await?;
        let raw: Option<String> = c.get(key).await.map_err(unavailable)?;
        match raw {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{key}: {e}"))),
        }
    }

    async fn set_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let json = serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.handle().await?;
        c.set::<_, _, ()>(key, json).await.map_err(unavailable)
    }

    async fn publish(&self, message: String) {
        let channel = key!(self, "invalidate");
        let result: Result<(), StoreError> = async {
            let mut c = self.handle().await?;
            let sent_ms = crate::util::now_ms();
            c.publish::<_, _, ()>(channel, format!("{} {sent_ms} {message}", self.origin))
                .await
                .map_err(unavailable)
        }
        .await;
        if let Err(e) = result {
            // The cache TTL on the other replicas is the backstop.
            tracing::warn!(error = %e, "invalidation not published");
        }
    }

    /// `{p}rl:{<scope>}:<window>:gcra` for a second, minute or hour window, and
    /// `{p}rl:{<scope>}:<window>:<period>` for a calendar window: the one place the limiter's key
    /// names are made. (Before GCRA, `{p}rl:{<scope>}:<window>` held a sliding log; such keys are
    /// never read now and expire within their window's length.)
    fn window_key(&self, scope: &str, w: Window, period: Option<u64>) -> String {
        let mut key = String::with_capacity(64);
        self.write_window_key(&mut key, scope, w, period);
        key
    }

    /// [`RedisStore::window_key`] written into `key` (cleared first), without `format!`: the
    /// limiter builds these on every request.
    fn write_window_key(&self, key: &mut String, scope: &str, w: Window, period: Option<u64>) {
        key.clear();
        for part in [self.prefix.as_str(), "rl:{", scope, "}:", w.name()] {
            key.push_str(part);
        }
        match period {
            Some(period) => {
                key.push(':');
                key.push_str(itoa::Buffer::new().format(period));
            }
            None => key.push_str(":gcra"),
        }
    }

    /// The revocation key of an access token, in its user's limiter slot (`scope::user`).
    fn revocation_key(&self, user_scope: &str, jti: &str) -> String {
        key!(self, "jti:{{{user_scope}}}:{jti}")
    }

    /// The "log out everywhere" key of a user, in its limiter slot (`scope::user`).
    fn cutoff_key(&self, user_scope: &str) -> String {
        key!(self, "ub:{{{user_scope}}}")
    }

    /// One run of the limiter script: the revocation keys first, then the token's cut-off key
    /// (with its `iat`), then the windows.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        revocations: &[String],
        cutoff: Option<(&str, u64)>,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
        consume: bool,
        take: Take,
    ) -> Result<(Admission, u64), StoreError> {
        if limits.is_empty() && revocations.is_empty() && cutoff.is_none() {
            let decision = Decision {
                refused_by: None,
                headers: RateLimitHeaders::default(),
            };
            return Ok((Admission::Decided(decision), u64::from(take.want > 0)));
        }
        // EVALSHA built as one command (one buffer) rather than through `ScriptInvocation`,
        // which allocates per argument and copies them all into a command again.
        let ncut = usize::from(cutoff.is_some());
        let nkeys = revocations.len() + ncut + limits.len();
        let mut cmd = redis::Cmd::with_capacity(3 + nkeys + 8 + 3 * limits.len(), 512);
        cmd.arg("EVALSHA").arg(self.limiter.get_hash()).arg(nkeys);
        for k in revocations {
            cmd.arg(k);
        }
        if let Some((key, _)) = cutoff {
            cmd.arg(key);
        }
        // Per window, in check order: its key, then (kind, limit, span) for the script.
        let mut key = String::with_capacity(64);
        let mut windows = Vec::with_capacity(limits.len());
        for &(w, limit) in limits {
            if w.is_calendar() {
                let (period, end) = w.calendar_period(now_ms);
                self.write_window_key(&mut key, scope, w, Some(period));
                let kind = if w.is_check_only() { "k" } else { "c" };
                windows.push((kind, limit, end));
            } else {
                self.write_window_key(&mut key, scope, w, None);
                windows.push(("g", limit, w.sliding_ms()));
            }
            cmd.arg(key.as_str());
        }
        cmd.arg(now_ms)
            .arg(if consume { "1" } else { "0" })
            .arg(revocations.len())
            .arg(ncut)
            .arg(cutoff.map_or(0, |(_, iat)| iat))
            .arg(take.want)
            .arg(take.back)
            .arg(take.back_calendar);
        for &(kind, limit, span) in &windows {
            cmd.arg(kind).arg(limit).arg(span);
        }
        let out: Vec<i64> = self.run_limiter(&cmd).await?;
        let [idx, limit, remaining, reset_ms, granted] = out.as_slice() else {
            return Err(StoreError::Corrupt(format!(
                "limiter script returned {out:?}"
            )));
        };
        let refused_by = match *idx {
            -1 => return Ok((Admission::Revoked, 0)),
            0 => None,
            i => limits.get((i - 1) as usize).map(|(w, _)| *w),
        };
        let granted = (*granted).max(0) as u64;
        let reset = (reset_ms.max(&0) + 999) / 1000;
        let decision = Decision {
            refused_by,
            headers: RateLimitHeaders {
                limit: *limit as u64,
                remaining: *remaining as u64,
                reset: if refused_by.is_some() {
                    reset.max(1) as u64
                } else {
                    reset as u64
                },
            },
        };
        Ok((Admission::Decided(decision), granted))
    }

    /// Run a limiter `EVALSHA`. When Redis does not know the script (NOSCRIPT: after a restart
    /// or a `SCRIPT FLUSH`), load it and run the command once more.
    async fn run_limiter<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut c = self.handle().await?;
        match cmd.query_async(&mut c).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.limiter.load_async(&mut c).await.map_err(unavailable)?;
                cmd.query_async(&mut c).await.map_err(unavailable)
            }
            r => r.map_err(unavailable),
        }
    }

    /// A decision of limits alone, with what it granted.
    async fn decide_limits(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
        consume: bool,
        take: Take,
    ) -> Result<(Decision, u64), StoreError> {
        match self
            .decide(&[], None, scope, limits, now_ms, consume, take)
            .await?
        {
            (Admission::Decided(d), granted) => Ok((d, granted)),
            (Admission::Revoked, _) => Err(StoreError::Corrupt(
                "limiter script found a revocation it was not asked about".into(),
            )),
        }
    }

    async fn calendar_count(&self, key: String) -> Result<u64, StoreError> {
        let mut c = self.handle().await?;
        let v: Option<u64> = c.get(key).await.map_err(unavailable)?;
        Ok(v.unwrap_or(0))
    }
}

/// Where the invalidation subscription connects: a fixed node, or the primary the sentinels name
/// at each (re)subscription.
enum PubSubSource {
    Fixed(Box<redis::Client>),
    Sentinel(Arc<sentinel::SentinelConn>),
}

/// Listen for invalidations; after every (re)subscription tell the caches to drop everything,
/// since messages may have been missed while disconnected.
async fn subscribe_loop(
    source: PubSubSource,
    channel: String,
    origin: String,
    tx: broadcast::Sender<Invalidation>,
    store: std::sync::Weak<RedisStore>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if store.upgrade().is_none() {
            return;
        }
        let connected = tokio::time::timeout(Duration::from_secs(2), async {
            let client = match &source {
                PubSubSource::Fixed(c) => c.as_ref().clone(),
                PubSubSource::Sentinel(s) => match s.primary().await {
                    Ok(p) => p.client.clone(),
                    Err(e) => {
                        return Err(redis::RedisError::from(std::io::Error::other(
                            e.to_string(),
                        )))
                    }
                },
            };
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        match connected {
            Ok(Ok(ps)) => {
                backoff = Duration::from_millis(100);
                let _ = tx.send(Invalidation::All);
                let mut stream = ps.into_on_message();
                while let Some(msg) = stream.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let mut parts = payload.splitn(3, ' ');
                    let (from, sent_ms, body) = (
                        parts.next().unwrap_or(""),
                        parts.next().and_then(|t| t.parse::<u64>().ok()),
                        parts.next().unwrap_or(""),
                    );
                    if from == origin {
                        continue;
                    }
                    if let Some(sent) = sent_ms {
                        let lag = crate::util::now_ms().saturating_sub(sent);
                        crate::metrics::get().invalidation_lag(Duration::from_millis(lag));
                    }
                    let inv = match body.split_once(':') {
                        Some(("key", h)) => Invalidation::Key(h.to_string()),
                        Some(("tenant", id)) => Invalidation::Tenant(id.to_string()),
                        _ => Invalidation::All,
                    };
                    let _ = tx.send(inv);
                }
                tracing::warn!("invalidation subscription lost; resubscribing");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "invalidation subscription failed"),
            Err(_) => tracing::debug!("invalidation subscription timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
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

#[async_trait]
impl Lookup for RedisStore {
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        self.get_json(&key!(self, "tenant:{id}")).await
    }

    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get_json(&key!(self, "key:{key_hash}")).await
    }

    async fn is_token_revoked(&self, token: TokenRef<'_>) -> Result<bool, StoreError> {
        let admission = self.admit_token(token, &[], 0).await?;
        Ok(admission == Admission::Revoked)
    }
}

#[async_trait]
impl Records for RedisStore {
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.set_json(&key!(self, "tenant:{}", tenant.id), tenant)
            .await?;
        let mut c = self.handle().await?;
        c.sadd::<_, _, ()>(key!(self, "tenants"), &tenant.id)
            .await
            .map_err(unavailable)?;
        self.publish(format!("tenant:{}", tenant.id)).await;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut out: Vec<Tenant> = self.set_records("tenants", "tenant:").await?;
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn delete_tenant(&self, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let tenant_key = key!(self, "tenant:{id}");
        let mut c = self.handle().await?;
        let existed: u64 = c.del(&tenant_key).await.map_err(unavailable)?;
        if existed == 0 {
            return Ok(None);
        }
        let set = key!(self, "tenant_keys:{id}");
        let hashes: Vec<String> = c.smembers(&set).await.map_err(unavailable)?;
        for h in &hashes {
            c.del::<_, ()>(key!(self, "key:{h}"))
                .await
                .map_err(unavailable)?;
        }
        c.del::<_, ()>(&set).await.map_err(unavailable)?;
        c.srem::<_, _, ()>(key!(self, "tenants"), id)
            .await
            .map_err(unavailable)?;
        self.publish(format!("tenant:{id}")).await;
        for h in &hashes {
            self.publish(format!("key:{h}")).await;
        }
        Ok(Some(hashes))
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.handle().await?;
        let created: bool = redis::cmd("SET")
            .arg(key!(self, "key:{}", key.key_hash))
            .arg(json)
            .arg("NX")
            .query_async::<Option<String>>(&mut c)
            .await
            .map_err(unavailable)?
            .is_some();
        if !created {
            return Err(StoreError::Conflict);
        }
        c.sadd::<_, _, ()>(key!(self, "tenant_keys:{}", key.tenant_id), &key.key_hash)
            .await
            .map_err(unavailable)?;
        // Other replicas may hold this hash in their negative caches.
        self.publish(format!("key:{}", key.key_hash)).await;
        Ok(())
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let set = format!("tenant_keys:{tenant_id}");
        let mut out: Vec<ApiKeyRecord> = self.set_records(&set, "key:").await?;
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn delete_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let found = self
            .list_api_keys(tenant_id)
            .await?
            .into_iter()
            .find(|k| k.id == key_id);
        let Some(record) = found else {
            return Ok(None);
        };
        let mut c = self.handle().await?;
        c.del::<_, ()>(key!(self, "key:{}", record.key_hash))
            .await
            .map_err(unavailable)?;
        c.srem::<_, _, ()>(key!(self, "tenant_keys:{tenant_id}"), &record.key_hash)
            .await
            .map_err(unavailable)?;
        self.publish(format!("key:{}", record.key_hash)).await;
        Ok(Some(record))
    }

    async fn update_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError> {
        let json = serde_json::to_string(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.handle().await?;
        // XX: never resurrect a key deleted meanwhile.
        let updated = redis::cmd("SET")
            .arg(key!(self, "key:{}", key.key_hash))
            .arg(json)
            .arg("XX")
            .query_async::<Option<String>>(&mut c)
            .await
            .map_err(unavailable)?
            .is_some();
        if updated {
            self.publish(format!("key:{}", key.key_hash)).await;
        }
        Ok(updated)
    }

    async fn record_key_usage(&self, uses: &[(String, u64, u64)]) -> Result<(), StoreError> {
        let mut c = self.handle().await?;
        for (hash, day, n) in uses {
            let key = key!(self, "kusage:{hash}");
            redis::pipe()
                .hincr(&key, day, *n)
                .ignore()
                .expire(&key, (super::KEY_USAGE_DAYS * 86_400) as i64)
                .ignore()
                .query_async::<()>(&mut c)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn key_usage(
        &self,
        key_hash: &str,
        from_day: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut c = self.handle().await?;
        let all: std::collections::HashMap<u64, u64> = c
            .hgetall(key!(self, "kusage:{key_hash}"))
            .await
            .map_err(unavailable)?;
        let mut days: Vec<(u64, u64)> = all.into_iter().filter(|(d, _)| *d >= from_day).collect();
        days.sort();
        Ok(days)
    }

    async fn touch_api_keys(&self, used: &[(String, u64)]) -> Result<(), StoreError> {
        for (hash, at) in used {
            let key = key!(self, "key:{hash}");
            let Some(mut record) = self.get_json::<ApiKeyRecord>(&key).await? else {
                continue;
            };
            record.last_used_at = Some(record.last_used_at.map_or(*at, |p| p.max(*at)));
            let json =
                serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut c = self.handle().await?;
            // XX: never resurrect a key deleted meanwhile.
            redis::cmd("SET")
                .arg(&key)
                .arg(json)
                .arg("XX")
                .query_async::<Option<String>>(&mut c)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let mut c = self.handle().await?;
        let claimed = redis::cmd("SET")
            .arg(key!(self, "email:{}", sha_hex(&user.email)))
            .arg(&user.id)
            .arg("NX")
            .query_async::<Option<String>>(&mut c)
            .await
            .map_err(unavailable)?
            .is_some();
        if !claimed {
            return Err(StoreError::Conflict);
        }
        self.set_json(&key!(self, "user:{}", user.id), user).await?;
        let mut c = self.handle().await?;
        c.sadd::<_, _, ()>(key!(self, "users"), &user.id)
            .await
            .map_err(unavailable)
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let mut c = self.handle().await?;
        let id: Option<String> = c
            .get(key!(self, "email:{}", sha_hex(email)))
            .await
            .map_err(unavailable)?;
        match id {
            Some(id) => self.get_user(&id).await,
            None => Ok(None),
        }
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.get_json(&key!(self, "user:{id}")).await
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError> {
        let key = key!(self, "user:{user_id}");
        if let Some(mut u) = self.get_json::<User>(&key).await? {
            u.password_hash = hash.to_string();
            self.set_json(&key, &u).await?;
        }
        Ok(())
    }

    async fn update_user(&self, user: &User) -> Result<bool, StoreError> {
        let key = key!(self, "user:{}", user.id);
        match self.get_json::<User>(&key).await? {
            Some(u) if u.email == user.email => {}
            _ => return Ok(false),
        }
        let json = serde_json::to_string(user).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.handle().await?;
        let updated = redis::cmd("SET")
            .arg(&key)
            .arg(json)
            .arg("XX")
            .query_async::<Option<String>>(&mut c)
            .await
            .map_err(unavailable)?
            .is_some();
        Ok(updated)
    }

    async fn delete_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let key = key!(self, "user:{id}");
        let Some(user) = self.get_json::<User>(&key).await? else {
            return Ok(None);
        };
        let mut c = self.handle().await?;
        // The record first: a crash in between leaves an email index to a missing user,
        // which reads as no user (and a new registration of the email conflicts until swept).
        c.del::<_, ()>(&key).await.map_err(unavailable)?;
        c.del::<_, ()>(key!(self, "email:{}", sha_hex(&user.email)))
            .await
            .map_err(unavailable)?;
        c.srem::<_, _, ()>(key!(self, "users"), id)
            .await
            .map_err(unavailable)?;
        Ok(Some(user))
    }

    async fn list_users(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        // No index by email in Redis (emails are stored hashed): walk the users. Fine for an
        // admin listing; the embedded store answers from its index.
        let mut users = self.scan_users().await?;
        users.retain(|u| u.email.starts_with(prefix) && after.is_none_or(|a| u.email.as_str() > a));
        users.sort_by(|a, b| a.email.cmp(&b.email));
        users.truncate(limit);
        Ok(users)
    }

    async fn put_refresh_token(&self, record: &RefreshRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.handle().await?;
        redis::cmd("SET")
            .arg(key!(self, "rt:{}", record.token_hash))
            .arg(json)
            .arg("EXAT")
            .arg(record.expires_at.max(unix_now() + 1))
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn get_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let Some(r) = self
            .get_json::<RefreshRecord>(&key!(self, "rt:{token_hash}"))
            .await?
        else {
            return Ok(None);
        };
        // Two commands: under Cluster the keys live in different slots.
        let mut c = self.handle().await?;
        let mut c2 = c.clone();
        let family_key = key!(self, "rtfam:{}", r.family_id);
        let cutoff_key = self.cutoff_key(&scope::user(&r.user_id));
        let (family, cutoff) = tokio::join!(
            c.exists::<_, bool>(&family_key),
            c2.get::<_, Option<u64>>(&cutoff_key)
        );
        let (family, cutoff) = (family.map_err(unavailable)?, cutoff.map_err(unavailable)?);
        let logged_out = cutoff.is_some_and(|through| r.issued_at <= through);
        Ok((r.expires_at > unix_now() && !family && !logged_out).then_some(r))
    }

    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        at: u64,
        successor: Option<&str>,
    ) -> Result<Option<Rotation>, StoreError> {
        let mut c = self.handle().await?;
        let value = match successor {
            Some(s) => format!("{at} {s}"),
            None => at.to_string(),
        };
        let prev: Option<String> = redis::cmd("SET")
            .arg(key!(self, "rtrot:{token_hash}"))
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(366 * 86_400)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(prev.as_deref().and_then(parse_rotation))
    }

    async fn revoke_refresh_family(&self, family_id: &str, until: u64) -> Result<(), StoreError> {
        let mut c = self.handle().await?;
        redis::cmd("SET")
            .arg(key!(self, "rtfam:{family_id}"))
            .arg(1)
            .arg("EXAT")
            .arg(until.max(unix_now() + 1))
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn revoke_jti(&self, subject: &str, jti: &str, until: u64) -> Result<(), StoreError> {
        if until <= unix_now() {
            return Ok(());
        }
        let mut keys = vec![self.revocation_key(&scope::user(subject), jti)];
        if self.legacy_revocations {
            keys.push(key!(self, "jti:{jti}"));
        }
        let mut c = self.handle().await?;
        // One command per key: under Cluster they live in different slots.
        for key in keys {
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("EXAT")
                .arg(until)
                .query_async::<()>(&mut c)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn revoke_user_tokens(
        &self,
        subject: &str,
        through: u64,
        until: u64,
    ) -> Result<(), StoreError> {
        let key = self.cutoff_key(&scope::user(subject));
        let mut c = self.handle().await?;
        // Never moves the line back, and keeps the longer life.
        redis::Script::new(
            "local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
             local ttl = redis.call('TTL', KEYS[1])
             local keep = tonumber(ARGV[2]) - tonumber(ARGV[3])
             if ttl > keep then keep = ttl end
             if keep < 1 then keep = 1 end
             local through = tonumber(ARGV[1])
             if cur > through then through = cur end
             redis.call('SET', KEYS[1], through, 'EX', keep)
             return 1",
        )
        .key(&key)
        .arg(through)
        .arg(until)
        .arg(unix_now())
        .invoke_async::<i64>(&mut c)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn append_audit(
        &self,
        entry: &super::AuditEntry,
        keep_ms: u64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = key!(self, "audit");
        let mut c = self.handle().await?;
        redis::pipe()
            .atomic()
            .zadd(&key, json, entry.at_ms)
            .ignore()
            .zrembyscore(
                &key,
                "-inf",
                format!("({}", entry.at_ms.saturating_sub(keep_ms)),
            )
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn list_audit(
        &self,
        after: Option<&str>,
        target: &str,
        limit: usize,
    ) -> Result<Vec<super::AuditEntry>, StoreError> {
        let from: u64 = after
            .and_then(|a| a.split('-').next())
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        let mut c = self.handle().await?;
        let raw: Vec<String> = c
            .zrangebyscore(key!(self, "audit"), from, "+inf")
            .await
            .map_err(unavailable)?;
        let mut out: Vec<super::AuditEntry> = Vec::new();
        for json in raw {
            let e: super::AuditEntry = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))?;
            if after.is_none_or(|a| e.id.as_str() > a) && e.target.starts_with(target) {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.truncate(limit);
        Ok(out)
    }

    async fn export(&self, sink: &super::records::Sink) -> Result<(), StoreError> {
        self.export_records(sink).await
    }
}

#[async_trait]
impl Counters for RedisStore {
    async fn admit_token(
        &self,
        token: TokenRef<'_>,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Admission, StoreError> {
        let (admission, _) = self.lease_token(token, limits, now_ms, Take::ONE).await?;
        Ok(admission)
    }

    async fn lease_token(
        &self,
        token: TokenRef<'_>,
        limits: &[(Window, u64)],
        now_ms: u64,
        take: Take,
    ) -> Result<(Admission, u64), StoreError> {
        let scope = scope::user(token.subject);
        let cutoff_key = self.cutoff_key(&scope);
        let cutoff = Some((cutoff_key.as_str(), token.issued_at));
        let Some(jti) = token.jti else {
            return self
                .decide(&[], cutoff, &scope, limits, now_ms, true, take)
                .await;
        };
        let mut revocations = vec![self.revocation_key(&scope, jti)];
        let legacy = self.legacy_revocations.then(|| key!(self, "jti:{jti}"));
        if self.is_one_redis() {
            // One Redis: the script may read a key of any name.
            revocations.extend(legacy);
            return self
                .decide(&revocations, cutoff, &scope, limits, now_ms, true, take)
                .await;
        }
        let decided = self.decide(&revocations, cutoff, &scope, limits, now_ms, true, take);
        let Some(legacy) = legacy else {
            return decided.await;
        };
        // Under Cluster the legacy key lives in another slot: it is asked alongside the script
        // (so while it is read, a revoked token may count once against its user).
        let legacy_revoked = async {
            let mut c = self.handle().await?;
            c.exists::<_, bool>(legacy).await.map_err(unavailable)
        };
        let (decided, legacy_revoked) = tokio::join!(decided, legacy_revoked);
        if legacy_revoked? {
            return Ok((Admission::Revoked, 0));
        }
        decided
    }

    async fn rate_limit(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        let (d, _) = self
            .decide_limits(scope, limits, now_ms, true, Take::ONE)
            .await?;
        Ok(d)
    }

    async fn lease(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
        take: Take,
    ) -> Result<(Decision, u64), StoreError> {
        self.decide_limits(scope, limits, now_ms, true, take).await
    }

    async fn peek_rate_limit(
        &self,
        scope: &str,
        limits: &[(Window, u64)],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        let (d, _) = self
            .decide_limits(scope, limits, now_ms, false, Take::ONE)
            .await?;
        Ok(d)
    }

    async fn usage(&self, scope: &str, now_ms: u64) -> Result<Usage, StoreError> {
        let mut counts = [0u64; 2];
        for (slot, w) in counts.iter_mut().zip([Window::Day, Window::Month]) {
            let (period, _) = w.calendar_period(now_ms);
            *slot = self
                .calendar_count(self.window_key(scope, w, Some(period)))
                .await?;
        }
        Ok(Usage {
            day: counts[0],
            month: counts[1],
        })
    }

    async fn add_tokens(&self, scope: &str, n: u64, now_ms: u64) -> Result<u64, StoreError> {
        let (period, end) = Window::Month.calendar_period(now_ms);
        // The token budget's counter: the limiter script checks the same key, in the same slot.
        let key = self.window_key(scope, Window::Tokens, Some(period));
        let mut c = self.handle().await?;
        let (total,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, n)
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(end + 86_400_000)
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(total)
    }

    async fn tokens_used(&self, scope: &str, now_ms: u64) -> Result<u64, StoreError> {
        let (period, _) = Window::Month.calendar_period(now_ms);
        self.calendar_count(self.window_key(scope, Window::Tokens, Some(period)))
            .await
    }

    async fn restore_counter(
        &self,
        scope: &str,
        window: Window,
        period: u64,
        count: u64,
    ) -> Result<(), StoreError> {
        self.restore_count(scope, window, period, count).await
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
    use super::*;

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
