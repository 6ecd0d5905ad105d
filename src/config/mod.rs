//! `gateway.yaml`: parsed into serde types that refuse unknown keys, then validated into
//! [`Config`], the only configuration request code ever sees.
//!
//! Loading never panics and reports every problem it finds, each with its key path, so an
//! operator fixes a file in one go. `${VAR}` and `${VAR:-default}` are substituted inside string
//! values *after* YAML parsing, so an environment value can never inject YAML structure.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

pub mod defaults;
mod file;
pub mod keys;
mod substitute;
mod validate;

use file::*;
pub use file::{Flag, Num};
pub use substitute::substitute;
use substitute::substitute_tree;
use validate::Validator;

pub use crate::net::tls::TlsFiles;
use crate::ratelimit::{FailurePolicy, Lease, Plan};
use crate::route::{RouteTable, Upstream};
use crate::util::{FileStamp, Secret};

/// Shortest admin secret accepted.
pub const MIN_ADMIN_SECRET_BYTES: usize = 16;
/// Shortest HS256 key accepted (CONTRACT.md section 3).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Largest limit a second, minute or hour window may have. The limiter's state does not grow with
/// it (one GCRA time per window). GCRA counts whole microseconds per request (rounded up), so a
/// limit above one per microsecond of its window acts as one per microsecond (1,000,000/s).
pub const MAX_SLIDING_LIMIT: u64 = 100_000_000;

/// One problem in the file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} problem(s)",
            self.file.display(),
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None` turns the metrics listener off (an empty `metrics_listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// Tokio worker threads; 0 means one per core.
    pub workers: usize,
    /// Open connections beyond this wait in the accept queue.
    pub max_connections: usize,
    /// Time a client has to send a request head (slowloris bound).
    pub header_read_timeout: Duration,
    /// A proxied request body must be complete by `request_body_grace + received /
    /// request_body_min_rate` (bytes/s; 0: no minimum).
    pub request_body_grace: Duration,
    pub request_body_min_rate: u64,
    /// Read buffer for a request head; larger heads are 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Request targets (path and query) longer than this are 414.
    pub max_request_target_bytes: usize,
    /// Proxied request bodies larger than this are 413.
    pub request_body_limit: u64,
    /// Bodies of gateway-served JSON endpoints.
    pub json_body_limit: usize,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// Peers whose `X-Forwarded-*` values are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Networks allowed to reach admin routes (by the client address the gateway trusts);
    /// empty: any.
    pub admin_allow_cidrs: Vec<IpNet>,
    pub tls: Option<TlsFiles>,
    pub tls_handshake_timeout: Duration,
    /// How often the certificate files are checked for changes (SIGHUP reloads at once).
    pub tls_reload_poll: Duration,
    /// A WebSocket tunnel with no bytes either way for this long is closed.
    pub websocket_idle_timeout: Duration,
    /// How often the config file is checked for changes (SIGHUP reloads at once).
    pub config_reload_poll: Duration,
    /// Exact origins allowed by CORS; empty turns CORS off.
    pub cors_origins: Vec<String>,
    pub http2_max_concurrent_streams: u32,
}

/// Request headers a page may send (answered to preflights) and response headers its scripts
/// may read, each the defaults plus `cors.allow_headers` / `cors.expose_headers`.
#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub allow_headers: http::HeaderValue,
    pub expose_headers: http::HeaderValue,
}

/// Where and how the embedded store keeps its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    pub dir: std::path::PathBuf,
    /// The engine's page cache: what bounds memory, whatever the file's size.
    pub cache_bytes: usize,
    /// Writes are refused (503) while less than this is free on the data disk.
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Memory,
    Embedded(EmbeddedOptions),
    Redis {
        url: Secret,
    },
    /// ARES's PostgreSQL database; the counters in Redis when `redis` is set.
    Postgres {
        url: Secret,
        redis: Option<Secret>,
    },
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Budget of one store command; past it the store counts as unavailable for that request.
    pub command_timeout: Duration,
    /// How long a validated API key (and its tenant) is trusted from the local cache.
    pub api_key_cache_ttl: Duration,
    /// Also write and read access-token revocations under the Redis key older gateways use
    /// (`{p}jti:{jti}`), for replicas of an older version during an upgrade.
    pub legacy_revocations: bool,
    /// How long the audit trail keeps an entry.
    pub audit_retention: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Every one is valid (rotation). Never empty after validation.
    pub admin_secrets: Vec<Secret>,
    /// True when the admin secret was generated for development (memory store only).
    pub admin_secret_generated: bool,
    /// Signs new tokens.
    pub jwt_secret: Secret,
    pub jwt_secret_generated: bool,
    /// Still verify tokens signed before a rotation.
    pub jwt_previous_secrets: Vec<Secret>,
    /// What signs the gateway's tokens when it is not the HS256 secret.
    pub signing: Signing,
    pub jwt_issuer: String,
    /// Issuers besides `jwt_issuer` whose tokens verify.
    pub jwt_accepted_issuers: Vec<String>,
    /// Verify tokens without `iss` (those ARES issued itself) with the same keys.
    pub accept_tokens_without_issuer: bool,
    /// Cookie sessions for browser apps: the refresh token in an HttpOnly cookie.
    pub cookies: bool,
    pub jwt_audience: Option<String>,
    pub jwt_leeway: Duration,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub refresh_rotation: bool,
    /// Reuse of a rotated refresh token within this grace is a concurrent refresh, not theft.
    pub refresh_reuse_grace: Duration,
    /// Argon2 hashes running at once; the rest queue.
    pub password_hash_concurrency: usize,
}

/// The algorithm of the gateway's own tokens and, for EdDSA/ES256, its key pairs.
#[derive(Debug, Clone)]
pub struct Signing {
    pub algorithm: jsonwebtoken::Algorithm,
    /// `ARES_JWT_ALGORITHM` named it (else it was chosen by the rule of `Validator::signing`).
    pub named: bool,
    /// The signing key pair (EdDSA/ES256).
    pub key: Option<crate::config::keys::KeyPair>,
    /// Generated for development (kept in an embedded data directory).
    pub generated: bool,
    /// Older keys that still verify (`ARES_JWT_PREVIOUS_KEY_FILES`, or kept generated ones).
    pub previous: Vec<crate::config::keys::KeyPair>,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub failure_policy: FailurePolicy,
    /// Replicas sharing the store; divides limits under the `local` policy.
    pub replicas: u64,
    /// Leases of a shared store's capacity for tenant and user limits (off: `requests` 0).
    pub lease: Lease,
    /// Per user on JWT routes.
    pub user: Plan,
    /// Per client IP on `/api/auth/*`.
    pub auth_ip: Plan,
    /// Failed logins per (account, client IP): a victim's account cannot be locked from one IP.
    pub login_failures_per_account_ip: Plan,
    /// Failed logins per account from anywhere: a ceiling against distributed guessing.
    pub login_failures_per_account: Plan,
    /// Refused API keys per client IP (the tenant's quota is never touched by them).
    pub api_key_failures_per_ip: Plan,
    /// Wrong admin secrets per client IP.
    pub admin_failures_per_ip: Plan,
    /// Tiers, by name.
    pub plans: BTreeMap<String, Plan>,
    /// Tier of tenants created without one.
    pub default_plan: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (watched for hot reload), if any.
    pub source: Option<PathBuf>,
    /// The file's modification time when it was read: the reload watcher's baseline, taken
    /// before reading so that a change made right after is never missed.
    pub source_stamp: Option<FileStamp>,
    pub server: ServerConfig,
    pub cors: CorsConfig,
    /// OTLP trace export; `None`: off. Read at start (a reload does not change it).
    pub tracing: Option<crate::telemetry::TracingConfig>,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub limits: RateLimitConfig,
    pub upstreams: Vec<Arc<Upstream>>,
    pub routes: RouteTable,
}

impl Config {
    /// Read, substitute, parse and validate a file with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let stamp = FileStamp::of(path);
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read file: {e}"),
            }],
        })?;
        let mut cfg = Config::from_yaml(&text, &|k| std::env::var(k).ok()).map_err(|problems| {
            ConfigError {
                file: path.to_path_buf(),
                problems,
            }
        })?;
        // A relative data directory is the config file's neighbour, whatever the working
        // directory: `--config /etc/x/gateway.yaml` from anywhere names one store.
        if let StoreBackend::Embedded(opts) = &mut cfg.store.backend {
            if opts.dir.is_relative() {
                let base = path.parent().filter(|p| !p.as_os_str().is_empty());
                if let Some(base) = base {
                    opts.dir = base.join(&opts.dir);
                }
            }
        }
        cfg.source = Some(path.to_path_buf());
        cfg.source_stamp = stamp;
        Ok(cfg)
    }

    /// Parse and validate YAML text with the given environment.
    pub fn from_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut root: Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return Err(vec![Problem {
                    path: String::new(),
                    message: format!("not valid YAML: {e}"),
                }])
            }
        };
        substitute_tree(&mut root, "", env, &mut problems);
        let map = match root {
            Value::Mapping(m) => m,
            Value::Null => Default::default(),
            _ => {
                return Err(vec![Problem {
                    path: String::new(),
                    message: "the file must be a mapping of sections".into(),
                }])
            }
        };
        let mut sections: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in map {
            match k.as_str() {
                Some(name) if TOP_LEVEL_KEYS.contains(&name) => {
                    sections.insert(name.to_string(), v);
                }
                _ => problems.push(Problem {
                    path: yaml_key(&k),
                    message: format!(
                        "unknown section (expected one of {})",
                        TOP_LEVEL_KEYS.join(", ")
                    ),
                }),
            }
        }
        let mut take = |name: &str| sections.remove(name).unwrap_or(Value::Null);
        let server: ServerFile =
            section(take("server"), "server", &mut problems).unwrap_or_default();
        let store: StoreFile = section(take("store"), "store", &mut problems).unwrap_or_default();
        let cors: CorsFile = section(take("cors"), "cors", &mut problems).unwrap_or_default();
        let tracing: TracingFile =
            section(take("tracing"), "tracing", &mut problems).unwrap_or_default();
        let auth: AuthFile = section(take("auth"), "auth", &mut problems).unwrap_or_default();
        let limits: RateLimitsFile =
            section(take("rate_limits"), "rate_limits", &mut problems).unwrap_or_default();
        let plans_v = take("plans");
        let upstreams_v = take("upstreams");
        let routes_v = take("routes");

        let mut v = Validator { problems };
        let server = v.server(server);
        let cors = v.cors(cors);
        let tracing = v.tracing(tracing, env);
        let store = v.store(store);
        let auth = v.auth(auth, &store);
        let plans = v.plans(plans_v);
        let limits = v.limits(limits, plans);
        let upstreams = v.upstreams(upstreams_v);
        let routes = v.routes(routes_v, &upstreams);
        v.mint_keys(&upstreams, &auth);
        if v.problems.is_empty() {
            Ok(Config {
                source: None,
                source_stamp: None,
                server,
                cors,
                tracing,
                store,
                auth,
                limits,
                upstreams,
                routes,
            })
        } else {
            Err(v.problems)
        }
    }
}

pub(crate) fn yaml_key(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into()),
    }
}

/// Deserialize one part of the tree, recording a problem with its key path on failure.
pub(crate) fn section<T: DeserializeOwned>(
    v: Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    if v.is_null() {
        return None;
    }
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let full = match (path.is_empty(), inner.as_str()) {
                (_, ".") => path.to_string(),
                (true, _) => inner,
                (false, _) => format!("{path}.{inner}"),
            };
            problems.push(Problem {
                path: full,
                message: e.into_inner().to_string(),
            });
            None
        }
    }
}

/// Replace `${VAR}` and `${VAR:-default}` in every string of the tree.
#[cfg(test)]
mod tests;
