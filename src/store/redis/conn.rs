//! The Redis store's connections: one Redis (multiplexed, reconnecting), the primary the
//! sentinels name, or a cluster connected on first use; and the invalidation subscription.

use super::*;

/// A live connection: one Redis (multiplexed, reconnecting) or a cluster.
#[derive(Clone)]
pub(super) enum Handle {
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

pub(super) enum Conn {
    Single(ConnectionManager),
    /// One Redis at a time, the primary the sentinels name (followed across failovers).
    Sentinel(Arc<sentinel::SentinelConn>),
    /// Connected on first use, so the gateway starts (unready) while the cluster is down.
    Cluster(Box<LazyCluster>),
}

pub(super) struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// Node URLs of `redis+cluster://[auth@]h1:p1,h2:p2` (or `rediss+cluster://`).
pub(super) fn cluster_nodes(url: &str) -> Option<Vec<String>> {
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
    pub(super) fn is_one_redis(&self) -> bool {
        !matches!(self.conn, Conn::Cluster(_))
    }

    /// The connection to the one Redis, or `None` under Cluster.
    pub(super) async fn single(&self) -> Result<Option<ConnectionManager>, StoreError> {
        match &self.conn {
            Conn::Single(m) => Ok(Some(m.clone())),
            Conn::Sentinel(s) => Ok(Some(s.primary().await?.conn.clone())),
            Conn::Cluster(_) => Ok(None),
        }
    }

    pub(super) async fn handle(&self) -> Result<Handle, StoreError> {
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
}

/// Where the invalidation subscription connects: a fixed node, or the primary the sentinels name
/// at each (re)subscription.
pub(super) enum PubSubSource {
    Fixed(Box<redis::Client>),
    Sentinel(Arc<sentinel::SentinelConn>),
}

/// Listen for invalidations; after every (re)subscription tell the caches to drop everything,
/// since messages may have been missed while disconnected.
pub(super) async fn subscribe_loop(
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
