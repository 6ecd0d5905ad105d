//! Export from Redis and restoring counters into it: every record under the key prefix, found by
//! `SCAN` (not one snapshot: writes made during the export may or may not be in it).

use redis::AsyncCommands;

use super::{unavailable, RedisStore};
use crate::error::StoreError;
use crate::ratelimit::Window;
use crate::store::records::{self, Record, Sink};
use crate::store::{ApiKeyRecord, RefreshRecord, Tenant, User};
use crate::util::unix_now;

/// What a key under the prefix holds, by its name.
#[derive(Debug, PartialEq, Eq)]
enum Kind<'a> {
    Tenant,
    ApiKey,
    User,
    Refresh(&'a str),
    Family(&'a str),
    /// `jti:{u:<subject>}:<jti>`
    Token {
        subject: &'a str,
        jti: &'a str,
    },
    /// `ub:{u:<subject>}`
    UserCutoff(&'a str),
    /// `rl:{<scope>}:<day|month|tokens>:<period>`
    Counter {
        scope: &'a str,
        window: Window,
        period: u64,
    },
}

fn classify(name: &str) -> Option<Kind<'_>> {
    if name.starts_with("tenant:") {
        return Some(Kind::Tenant);
    }
    if name.starts_with("key:") {
        return Some(Kind::ApiKey);
    }
    if name.starts_with("user:") {
        return Some(Kind::User);
    }
    if let Some(h) = name.strip_prefix("rt:") {
        return Some(Kind::Refresh(h));
    }
    if let Some(f) = name.strip_prefix("rtfam:") {
        return Some(Kind::Family(f));
    }
    if let Some(rest) = name.strip_prefix("jti:{") {
        let (user_scope, jti) = rest.split_once("}:")?;
        let subject = user_scope.strip_prefix(crate::store::scope::USER)?;
        return Some(Kind::Token { subject, jti });
    }
    if let Some(rest) = name.strip_prefix("ub:{") {
        let user_scope = rest.strip_suffix('}')?;
        return Some(Kind::UserCutoff(
            user_scope.strip_prefix(crate::store::scope::USER)?,
        ));
    }
    let rest = name.strip_prefix("rl:{")?;
    let (scope, tail) = rest.rsplit_once("}:")?;
    let (window, period) = tail.split_once(':')?;
    Some(Kind::Counter {
        scope,
        window: records::calendar_window(window)?,
        period: period.parse().ok()?,
    })
}

/// One `SCAN` step over the names matching `pattern`: the next cursor (0 at the end) and a page.
async fn scan_page(
    c: &mut redis::aio::ConnectionManager,
    cursor: u64,
    pattern: &str,
) -> Result<(u64, Vec<String>), StoreError> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000)
        .query_async(c)
        .await
        .map_err(unavailable)
}

impl RedisStore {
    /// Every user record, by `SCAN` (one Redis; a cluster is refused like an export).
    pub(super) async fn scan_users(&self) -> Result<Vec<User>, StoreError> {
        let Some(conn) = self.single().await? else {
            // A cluster is not walked node by node: its users come from the index set that
            // registrations maintain (users of gateways older than it are not in it).
            return self.set_records("users", "user:").await;
        };
        let mut c = conn;
        let (mut cursor, mut out) = (0u64, Vec::new());
        let pattern = format!("{}user:*", self.prefix);
        loop {
            let (next, names) = scan_page(&mut c, cursor, &pattern).await?;
            for name in &names {
                if let Some(u) = self.get_json::<User>(name).await? {
                    out.push(u);
                }
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    pub(super) async fn export_records(&self, sink: &Sink) -> Result<(), StoreError> {
        let Some(conn) = self.single().await? else {
            return Err(StoreError::Unavailable(
                "export from a Redis Cluster is not supported; export before moving to a cluster"
                    .into(),
            ));
        };
        let mut c = conn;
        let mut cursor: u64 = 0;
        let pattern = format!("{}*", self.prefix);
        loop {
            let (next, names) = scan_page(&mut c, cursor, &pattern).await?;
            for name in &names {
                let Some(kind) = name.strip_prefix(self.prefix.as_str()).and_then(classify) else {
                    continue;
                };
                if let Some(r) = self.record(kind, name).await? {
                    if !records::send(sink, r).await {
                        return Ok(());
                    }
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The record key `name` holds; `None` when it went away meanwhile.
    async fn record(&self, kind: Kind<'_>, name: &str) -> Result<Option<Record>, StoreError> {
        let until = || async {
            let mut c = self.handle().await?;
            let ttl: i64 = c.ttl(name).await.map_err(unavailable)?;
            Ok::<Option<u64>, StoreError>((ttl > 0).then(|| unix_now() + ttl as u64))
        };
        Ok(match kind {
            Kind::Tenant => self.get_json::<Tenant>(name).await?.map(Record::Tenant),
            Kind::ApiKey => self
                .get_json::<ApiKeyRecord>(name)
                .await?
                .map(Record::ApiKey),
            Kind::User => self.get_json::<User>(name).await?.map(Record::User),
            Kind::Refresh(hash) => {
                let Some(mut r) = self.get_json::<RefreshRecord>(name).await? else {
                    return Ok(None);
                };
                let mut c = self.handle().await?;
                let rotated: Option<String> = c
                    .get(key!(self, "rtrot:{hash}"))
                    .await
                    .map_err(unavailable)?;
                if let Some(rot) = rotated.as_deref().and_then(super::parse_rotation) {
                    r.rotated_at = r.rotated_at.or(Some(rot.at));
                    r.successor = r.successor.or(rot.successor);
                }
                Some(Record::RefreshToken(r))
            }
            Kind::Family(family_id) => until().await?.map(|until| Record::RevokedFamily {
                family_id: family_id.to_string(),
                until,
            }),
            Kind::Token { subject, jti } => until().await?.map(|until| Record::RevokedToken {
                subject: subject.to_string(),
                jti: jti.to_string(),
                until,
            }),
            Kind::UserCutoff(subject) => {
                let mut c = self.handle().await?;
                let through: Option<u64> = c.get(name).await.map_err(unavailable)?;
                match (through, until().await?) {
                    (Some(through), Some(until)) => Some(Record::RevokedUser {
                        subject: subject.to_string(),
                        through,
                        until,
                    }),
                    _ => None,
                }
            }
            Kind::Counter {
                scope,
                window,
                period,
            } => {
                let mut c = self.handle().await?;
                let count: Option<u64> = c.get(name).await.map_err(unavailable)?;
                count.map(|n| Record::counter(scope, window, period, n))
            }
        })
    }

    /// Raise a calendar counter to `count` (never lower it), expiring a day after its period.
    pub(super) async fn restore_count(
        &self,
        scope: &str,
        window: Window,
        period: u64,
        count: u64,
    ) -> Result<(), StoreError> {
        let (current, end) = window.calendar_period(crate::util::now_ms());
        if current != period {
            return Ok(());
        }
        let key = self.window_key(scope, window, Some(period));
        let mut c = self.handle().await?;
        redis::Script::new(
            "local n = tonumber(redis.call('GET', KEYS[1]) or '0')
             if n < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
             redis.call('PEXPIREAT', KEYS[1], ARGV[2])
             return 1",
        )
        .key(&key)
        .arg(count)
        .arg(end + 86_400_000)
        .invoke_async::<i64>(&mut c)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_map_to_records() {
        assert_eq!(classify("tenant:ten_1"), Some(Kind::Tenant));
        assert_eq!(classify("key:ab"), Some(Kind::ApiKey));
        assert_eq!(classify("tenant_keys:ten_1"), None);
        assert_eq!(classify("email:ab"), None);
        assert_eq!(classify("rt:h1"), Some(Kind::Refresh("h1")));
        assert_eq!(classify("rtrot:h1"), None);
        assert_eq!(classify("rtfam:f1"), Some(Kind::Family("f1")));
        assert_eq!(
            classify("jti:{u:usr_1}:j1"),
            Some(Kind::Token {
                subject: "usr_1",
                jti: "j1"
            })
        );
        // The legacy revocation key names no user: its twin above carries it.
        assert_eq!(classify("jti:j1"), None);
        assert_eq!(
            classify("rl:{t:ten_1}:day:20000"),
            Some(Kind::Counter {
                scope: "t:ten_1",
                window: Window::Day,
                period: 20000
            })
        );
        assert_eq!(
            classify("rl:{la:ab:10.0.0.1}:tokens:7"),
            Some(Kind::Counter {
                scope: "la:ab:10.0.0.1",
                window: Window::Tokens,
                period: 7
            })
        );
        assert_eq!(classify("rl:{t:ten_1}:minute"), None);
        assert_eq!(classify("ub:{u:usr_1}"), Some(Kind::UserCutoff("usr_1")));
    }
}
