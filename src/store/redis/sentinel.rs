//! Redis Sentinel: the primary of a monitored master, found through the sentinels and followed
//! across failovers without a restart.
//!
//! `redis+sentinel://[user:password@]host1:26379,host2:26379/<master name>[/<db>]` (and
//! `rediss+sentinel://`, TLS to the sentinels and the data nodes). The credentials are the data
//! nodes'; sentinels are asked without them.
//!
//! A watcher asks the sentinels for the primary's address every [`WATCH_INTERVAL`] and, when it
//! has changed (a failover), replaces the connection: requests move to the promoted replica as
//! soon as the sentinels have promoted it. Until then commands fail like any Redis outage and
//! the failure policy decides.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, RedisConnectionInfo, TlsMode};

use crate::error::StoreError;

/// How often the sentinels are asked where the primary is.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// A parsed `redis+sentinel://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `host:port` of each sentinel.
    pub sentinels: Vec<String>,
    /// The master name the sentinels monitor.
    pub service: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: bool,
}

impl SentinelUrl {
    /// `None` when `url` is not a Sentinel URL; an error naming what is wrong when it is one
    /// that cannot be used (never echoing the password).
    pub fn parse(url: &str) -> Option<Result<SentinelUrl, String>> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, r)
        } else {
            return None;
        };
        Some(Self::parse_rest(tls, rest))
    }

    fn parse_rest(tls: bool, rest: &str) -> Result<SentinelUrl, String> {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (auth, hosts) = match authority.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, authority),
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => {
                let (u, p) = a.split_once(':').unwrap_or(("", a));
                let decode = |s: &str| {
                    percent_decode(s).ok_or("REDIS_URL: the credentials are not valid UTF-8")
                };
                let u = decode(u)?;
                (Some(u).filter(|u| !u.is_empty()), Some(decode(p)?))
            }
        };
        let sentinels: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    h.to_string()
                } else {
                    format!("{h}:26379")
                }
            })
            .collect();
        if sentinels.is_empty() {
            return Err(
                "REDIS_URL names no sentinel (redis+sentinel://host:26379/<master>)".into(),
            );
        }
        let mut parts = path.trim_end_matches('/').split('/');
        let service = parts.next().unwrap_or("").to_string();
        if service.is_empty() {
            return Err(
                "REDIS_URL names no master (redis+sentinel://host:26379/<master name>)".into(),
            );
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(d) => d
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or("REDIS_URL: the database after the master name must be a number")?,
        };
        Ok(SentinelUrl {
            sentinels,
            service,
            db,
            username,
            password,
            tls,
        })
    }

    fn client(&self) -> Result<SentinelClient, String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|h| format!("{scheme}://{h}"))
            .collect();
        let mut redis = RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            redis = redis.set_username(u);
        }
        if let Some(p) = &self.password {
            redis = redis.set_password(p);
        }
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
        if self.tls {
            node = node.set_tls_mode(TlsMode::Secure);
        }
        SentinelClient::build(nodes, &self.service, Some(node), SentinelServerType::Master)
            .map_err(|e| format!("REDIS_URL: {e}"))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// The primary in use: its address and a connection to it.
pub struct Primary {
    pub addr: String,
    pub client: redis::Client,
    pub conn: ConnectionManager,
}

/// The sentinels, and the primary they last named.
pub struct SentinelConn {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    current: ArcSwapOption<Primary>,
    config: ConnectionManagerConfig,
    timeout: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn addr_text(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
        other => other.to_string(),
    }
}

impl SentinelConn {
    /// Nothing is connected yet: the first command (or the watcher) asks the sentinels.
    pub fn new(
        url: &SentinelUrl,
        config: ConnectionManagerConfig,
        timeout: Duration,
    ) -> Result<Arc<SentinelConn>, String> {
        let conn = Arc::new(SentinelConn {
            sentinels: tokio::sync::Mutex::new(url.client()?),
            current: ArcSwapOption::empty(),
            config,
            timeout,
        });
        tokio::spawn(watch(Arc::downgrade(&conn)));
        Ok(conn)
    }

    /// The primary in use, asking the sentinels when none is known yet.
    pub async fn primary(&self) -> Result<Arc<Primary>, StoreError> {
        match self.current.load_full() {
            Some(p) => Ok(p),
            None => self.resolve().await,
        }
    }

    /// Ask the sentinels where the primary is; connect to it when that is somewhere new.
    async fn resolve(&self) -> Result<Arc<Primary>, StoreError> {
        let client = tokio::time::timeout(self.timeout * 4, async {
            self.sentinels.lock().await.async_get_client().await
        })
        .await
        .map_err(|_| unavailable("the sentinels did not answer in time"))?
        .map_err(|e| unavailable(format!("no primary from the sentinels: {e}")))?;
        let addr = addr_text(client.get_connection_info().addr());
        if let Some(p) = self.current.load_full() {
            if p.addr == addr {
                return Ok(p);
            }
        }
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), self.config.clone())
            .map_err(unavailable)?;
        let primary = Arc::new(Primary { addr, client, conn });
        let old = self.current.swap(Some(primary.clone()));
        match old {
            Some(old) => tracing::warn!(
                from = %old.addr, to = %primary.addr,
                "redis sentinel: the primary moved; commands follow it"
            ),
            None => tracing::info!(primary = %primary.addr, "redis sentinel: primary found"),
        }
        Ok(primary)
    }
}

/// Follow the primary until the store is dropped.
async fn watch(conn: Weak<SentinelConn>) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let Some(c) = conn.upgrade() else {
            return;
        };
        if let Err(e) = c.resolve().await {
            tracing::debug!(error = %e, "redis sentinel: primary not resolved");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_the_credentials() {
        assert_eq!(SentinelUrl::parse("redis://h:6379"), None);
        let u = SentinelUrl::parse("redis+sentinel://s1:26379, s2:26380 ,s3/mymaster")
            .unwrap()
            .unwrap();
        assert_eq!(u.sentinels, ["s1:26379", "s2:26380", "s3:26379"]);
        assert_eq!((u.service.as_str(), u.db, u.tls), ("mymaster", 0, false));
        assert_eq!((u.username, u.password), (None, None));

        let u = SentinelUrl::parse("rediss+sentinel://app:p%40ss:w@s1:1,s2:2/main/3")
            .unwrap()
            .unwrap();
        assert_eq!((u.service.as_str(), u.db, u.tls), ("main", 3, true));
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss:w"));
        let u = SentinelUrl::parse("redis+sentinel://:secret@s1/m")
            .unwrap()
            .unwrap();
        assert_eq!((u.username, u.password.as_deref()), (None, Some("secret")));

        for bad in [
            "redis+sentinel:///m",
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+sentinel://s1/m/x",
        ] {
            let e = SentinelUrl::parse(bad).unwrap().unwrap_err();
            assert!(e.starts_with("REDIS_URL"), "{bad}: {e}");
        }
        let e = SentinelUrl::parse("redis+sentinel://u:hunter2@/m")
            .unwrap()
            .unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
