//! `gateway.yaml`: parsed into serde types that refuse unknown keys, then validated into
//! [`Config`], the only configuration request code ever sees.
//!
//! Loading never panics and reports every problem it finds, each with its key path, so an
//! operator fixes a file in one go. `${VAR}` and `${VAR:-default}` are substituted inside string
//! values *after* YAML parsing, so an environment value can never inject YAML structure.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use crate::ratelimit::{Plan, Window};
use crate::route::{self, AuthKind, Handler, Route, RouteTable, Target};

/// Shortest admin secret accepted.
pub const MIN_ADMIN_SECRET_BYTES: usize = 16;
/// Shortest HS256 key accepted (CONTRACT.md section 3).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Largest limit a sliding window (second, minute, hour) may have: each admitted request is
/// remembered for the window's length, so this bounds memory per scope.
pub const MAX_SLIDING_LIMIT: u64 = 100_000;

/// What a watched file looks like on disk. Modification times come from a coarse kernel clock,
/// so two writes a few milliseconds apart can share one; size and inode (an atomic rename always
/// brings a new one) catch those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of `path`, or `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode,
        })
    }
}

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
// The file as written.

/// A number that may also be written as a string (as `${VAR:-60}` substitution produces).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Num {
    Int(u64),
    Text(String),
}

/// A boolean that may also be written as a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Flag {
    Bool(bool),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub workers: Option<Num>,
    pub max_connections: Option<Num>,
    pub header_read_timeout_secs: Option<Num>,
    pub max_header_bytes: Option<Num>,
    pub max_headers: Option<Num>,
    pub request_body_limit_bytes: Option<Num>,
    pub json_body_limit_bytes: Option<Num>,
    pub shutdown_grace_secs: Option<Num>,
    pub trusted_proxies: Option<Vec<String>>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_handshake_timeout_secs: Option<Num>,
    pub tls_reload_poll_secs: Option<Num>,
    pub websocket_idle_timeout_secs: Option<Num>,
    pub config_reload_poll_secs: Option<Num>,
    pub cors_origins: Option<String>,
    pub http2_max_concurrent_streams: Option<Num>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub key_prefix: Option<String>,
    pub command_timeout_ms: Option<Num>,
    pub api_key_cache_ttl_secs: Option<Num>,
    pub legacy_revocations: Option<Flag>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub admin_secrets: Option<String>,
    pub jwt_secret: Option<String>,
    pub jwt_previous_secrets: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway_secs: Option<Num>,
    pub access_token_ttl_secs: Option<Num>,
    pub refresh_token_ttl_secs: Option<Num>,
    pub refresh_rotation: Option<Flag>,
    pub refresh_reuse_grace_secs: Option<Num>,
    pub password_hash_concurrency: Option<Num>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    pub requests_per_second: Option<Num>,
    pub requests_per_minute: Option<Num>,
    pub requests_per_hour: Option<Num>,
    pub requests_per_day: Option<Num>,
    pub requests_per_month: Option<Num>,
    pub tokens_per_month: Option<Num>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsFile {
    pub failure_policy: Option<String>,
    pub replicas: Option<Num>,
    pub user: Option<PlanFile>,
    pub auth_ip: Option<PlanFile>,
    pub login_failures_per_account_ip: Option<PlanFile>,
    pub login_failures_per_account: Option<PlanFile>,
    pub default_plan: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub url: String,
    pub connect_timeout_ms: Option<Num>,
    pub first_byte_timeout_secs: Option<Num>,
    pub idle_timeout_secs: Option<Num>,
    pub pool_idle_timeout_secs: Option<Num>,
    pub pool_max_idle_per_host: Option<Num>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub prefix: String,
    pub auth: AuthKindFile,
    pub upstream: Option<String>,
    pub handler: Option<HandlerFile>,
    pub upstream_prefix: Option<String>,
    pub required_scope: Option<String>,
    #[serde(default)]
    pub forward_credentials: bool,
    #[serde(default)]
    pub websocket: bool,
    #[serde(default)]
    pub query_token: bool,
    /// `open | closed | local`: overrides `rate_limits.failure_policy` on this route.
    pub failure_policy: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKindFile {
    None,
    ApiKey,
    Jwt,
    Admin,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerFile {
    Auth,
    Admin,
    Health,
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "store",
    "auth",
    "rate_limits",
    "plans",
    "upstreams",
    "routes",
];

// ---------------------------------------------------------------------------------------------
// The validated configuration.

/// A secret string: no `Debug` or `Display` that could print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

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
    /// Read buffer for a request head; larger heads are 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Proxied request bodies larger than this are 413.
    pub request_body_limit: u64,
    /// Bodies of gateway-served JSON endpoints.
    pub json_body_limit: usize,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// Peers whose `X-Forwarded-*` values are believed.
    pub trusted_proxies: Vec<IpNet>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Memory,
    Redis { url: Secret },
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
    pub jwt_issuer: String,
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

/// What the limiter does when the shared store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Let requests through unlimited.
    Open,
    /// Refuse with 503 `STORE_UNAVAILABLE`.
    Closed,
    /// Enforce `limit / replicas` per replica in memory until the store is back.
    Local,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub failure_policy: FailurePolicy,
    /// Replicas sharing the store; divides limits under the `local` policy.
    pub replicas: u64,
    /// Per user on JWT routes.
    pub user: Plan,
    /// Per client IP on `/api/auth/*`.
    pub auth_ip: Plan,
    /// Failed logins per (account, client IP): a victim's account cannot be locked from one IP.
    pub login_failures_per_account_ip: Plan,
    /// Failed logins per account from anywhere: a ceiling against distributed guessing.
    pub login_failures_per_account: Plan,
    /// Tiers, by name.
    pub plans: BTreeMap<String, Plan>,
    /// Tier of tenants created without one.
    pub default_plan: String,
}

/// One upstream service.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// The name as a metric label.
    pub label: crate::metrics::Label,
    /// Position in the upstream list; the client pool uses the same index.
    pub index: usize,
    pub https: bool,
    pub authority: http::uri::Authority,
    /// `Host` for requests on the gateway's own HTTP/1 connections (the authority).
    pub host: http::HeaderValue,
    /// Path the upstream is mounted at, without trailing slash (usually empty).
    pub base_path: String,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// PEM bundle trusted for an `https://` upstream (else the system roots).
    pub ca_file: Option<PathBuf>,
}

impl Upstream {
    /// An upstream with default timeouts.
    pub fn parse(name: &str, url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("not a valid URL ({e})"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("scheme must be http or https".into()),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| "URL has no host".to_string())?;
        if authority.as_str().contains('@') {
            return Err("URL must not carry credentials".into());
        }
        if uri.query().is_some() {
            return Err("URL must not have a query".into());
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        let host = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| "URL host is not a valid Host header".to_string())?;
        Ok(Upstream {
            host,
            label: crate::metrics::get().upstream_label(name),
            name: name.to_string(),
            index: 0,
            https,
            authority,
            base_path,
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            ca_file: None,
        })
    }
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
        let auth: AuthFile = section(take("auth"), "auth", &mut problems).unwrap_or_default();
        let limits: RateLimitsFile =
            section(take("rate_limits"), "rate_limits", &mut problems).unwrap_or_default();
        let plans_v = take("plans");
        let upstreams_v = take("upstreams");
        let routes_v = take("routes");

        let mut v = Validator { problems };
        let server = v.server(server);
        let store = v.store(store);
        let auth = v.auth(auth, &store);
        let plans = v.plans(plans_v);
        let limits = v.limits(limits, plans);
        let upstreams = v.upstreams(upstreams_v);
        let routes = v.routes(routes_v, &upstreams);
        if v.problems.is_empty() {
            Ok(Config {
                source: None,
                source_stamp: None,
                server,
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

fn yaml_key(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into()),
    }
}

/// Deserialize one part of the tree, recording a problem with its key path on failure.
fn section<T: DeserializeOwned>(v: Value, path: &str, problems: &mut Vec<Problem>) -> Option<T> {
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
fn substitute_tree(
    v: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match v {
        Value::String(s) if s.contains('$') => match substitute(s, env) {
            Ok(new) => *s = new,
            Err(message) => problems.push(Problem {
                path: path.to_string(),
                message,
            }),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_tree(item, &format!("{path}[{i}]"), env, problems);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = yaml_key(k);
                let p = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                substitute_tree(item, &p, env, problems);
            }
        }
        Value::Tagged(t) => substitute_tree(&mut t.value, path, env, problems),
        _ => {}
    }
}

/// `${VAR}` must be set; `${VAR:-default}` falls back when unset or empty; `$${` is a literal `${`.
pub fn substitute(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${...} expression".to_string())?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad variable name in ${{{expr}}}"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Collects problems while turning file types into runtime types.
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn num(&mut self, v: &Option<Num>, path: &str, default: u64, min: u64, max: u64) -> u64 {
        let n = match v {
            None => return default,
            Some(Num::Int(n)) => *n,
            Some(Num::Text(t)) if t.trim().is_empty() => return default,
            Some(Num::Text(t)) => match t.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    self.problem(path, format!("expected a whole number, got {t:?}"));
                    return default;
                }
            },
        };
        if n < min || n > max {
            self.problem(path, format!("must be between {min} and {max}, got {n}"));
            return default;
        }
        n
    }

    fn flag(&mut self, v: &Option<Flag>, path: &str, default: bool) -> bool {
        match v {
            None => default,
            Some(Flag::Bool(b)) => *b,
            Some(Flag::Text(t)) => match t.trim() {
                "" => default,
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                other => {
                    self.problem(path, format!("expected true or false, got {other:?}"));
                    default
                }
            },
        }
    }

    fn addr(&mut self, v: &Option<String>, path: &str, default: &str) -> Option<SocketAddr> {
        let text = v.as_deref().unwrap_or(default).trim();
        // `off` turns a listener off (an empty value falls back to the default under `:-`).
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return None;
        }
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(path, format!("expected ip:port, got {text:?}"));
                None
            }
        }
    }

    fn server(&mut self, f: ServerFile) -> ServerConfig {
        let listen = self
            .addr(&f.listen, "server.listen", "0.0.0.0:8080")
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080)));
        let metrics_listen =
            self.addr(&f.metrics_listen, "server.metrics_listen", "127.0.0.1:9090");
        let mut trusted_proxies = Vec::new();
        for (i, cidr) in f.trusted_proxies.unwrap_or_default().iter().enumerate() {
            let parsed = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => self.problem(
                    format!("server.trusted_proxies[{i}]"),
                    format!("expected an IP or CIDR, got {cidr:?}"),
                ),
            }
        }
        let cert = f.tls_cert.unwrap_or_default();
        let key = f.tls_key.unwrap_or_default();
        let tls = match (cert.trim().is_empty(), key.trim().is_empty()) {
            (true, true) => None,
            (false, false) => Some(TlsFiles {
                cert: PathBuf::from(cert.trim()),
                key: PathBuf::from(key.trim()),
            }),
            _ => {
                self.problem(
                    "server.tls_cert",
                    "ARES_TLS_CERT and ARES_TLS_KEY must be set together",
                );
                None
            }
        };
        let mut cors_origins = Vec::new();
        for origin in f.cors_origins.unwrap_or_default().split(',') {
            let origin = origin.trim();
            if origin.is_empty() {
                continue;
            }
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && origin.parse::<http::Uri>().is_ok();
            if ok {
                cors_origins.push(origin.to_string());
            } else {
                self.problem(
                    "server.cors_origins",
                    format!("{origin:?} is not an origin like https://app.example.com"),
                );
            }
        }
        ServerConfig {
            listen,
            metrics_listen,
            workers: self.num(&f.workers, "server.workers", 0, 0, 1024) as usize,
            max_connections: self.num(
                &f.max_connections,
                "server.max_connections",
                10_000,
                1,
                1_000_000,
            ) as usize,
            header_read_timeout: Duration::from_secs(self.num(
                &f.header_read_timeout_secs,
                "server.header_read_timeout_secs",
                10,
                1,
                300,
            )),
            max_header_bytes: self.num(
                &f.max_header_bytes,
                "server.max_header_bytes",
                64 * 1024,
                8192,
                1 << 20,
            ) as usize,
            max_headers: self.num(&f.max_headers, "server.max_headers", 100, 16, 1000) as usize,
            request_body_limit: self.num(
                &f.request_body_limit_bytes,
                "server.request_body_limit_bytes",
                10 << 20,
                1,
                1 << 40,
            ),
            json_body_limit: self.num(
                &f.json_body_limit_bytes,
                "server.json_body_limit_bytes",
                64 * 1024,
                1024,
                1 << 20,
            ) as usize,
            shutdown_grace: Duration::from_secs(self.num(
                &f.shutdown_grace_secs,
                "server.shutdown_grace_secs",
                30,
                0,
                3600,
            )),
            trusted_proxies,
            tls,
            tls_handshake_timeout: Duration::from_secs(self.num(
                &f.tls_handshake_timeout_secs,
                "server.tls_handshake_timeout_secs",
                10,
                1,
                120,
            )),
            tls_reload_poll: Duration::from_secs(self.num(
                &f.tls_reload_poll_secs,
                "server.tls_reload_poll_secs",
                10,
                1,
                3600,
            )),
            websocket_idle_timeout: Duration::from_secs(self.num(
                &f.websocket_idle_timeout_secs,
                "server.websocket_idle_timeout_secs",
                300,
                1,
                86_400,
            )),
            config_reload_poll: Duration::from_secs(self.num(
                &f.config_reload_poll_secs,
                "server.config_reload_poll_secs",
                5,
                1,
                3600,
            )),
            cors_origins,
            http2_max_concurrent_streams: self.num(
                &f.http2_max_concurrent_streams,
                "server.http2_max_concurrent_streams",
                256,
                1,
                10_000,
            ) as u32,
        }
    }

    fn store(&mut self, f: StoreFile) -> StoreConfig {
        let backend = match f.backend.as_deref().map(str::trim).unwrap_or("memory") {
            "" | "memory" => StoreBackend::Memory,
            "redis" => {
                let url = f
                    .redis_url
                    .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
                let ok = [
                    "redis://",
                    "rediss://",
                    "redis+cluster://",
                    "rediss+cluster://",
                ]
                .iter()
                .any(|s| url.starts_with(s));
                if !ok {
                    // The URL may hold a password: name the scheme rule, never the value.
                    self.problem(
                        "store.redis_url",
                        "REDIS_URL must start with redis://, rediss://, redis+cluster:// or rediss+cluster://",
                    );
                }
                StoreBackend::Redis { url: Secret(url) }
            }
            other => {
                self.problem(
                    "store.backend",
                    format!("ARES_STORE must be memory or redis, got {other:?}"),
                );
                StoreBackend::Memory
            }
        };
        StoreConfig {
            backend,
            key_prefix: f.key_prefix.unwrap_or_else(|| "ares:".into()),
            command_timeout: Duration::from_millis(self.num(
                &f.command_timeout_ms,
                "store.command_timeout_ms",
                300,
                10,
                60_000,
            )),
            api_key_cache_ttl: Duration::from_secs(self.num(
                &f.api_key_cache_ttl_secs,
                "store.api_key_cache_ttl_secs",
                30,
                0,
                3600,
            )),
            legacy_revocations: self.flag(&f.legacy_revocations, "store.legacy_revocations", true),
        }
    }

    fn secret_list(&mut self, v: Option<String>, path: &str, var: &str, min: usize) -> Vec<Secret> {
        let mut out = Vec::new();
        for (i, s) in v.unwrap_or_default().split(',').map(str::trim).enumerate() {
            if s.is_empty() {
                continue;
            }
            if s.len() < min {
                // Name the variable and the rule, never the value.
                self.problem(
                    path,
                    format!(
                        "{var}: secret #{} is {} bytes, at least {min} are required",
                        i + 1,
                        s.len()
                    ),
                );
                continue;
            }
            out.push(Secret(s.to_string()));
        }
        out
    }

    fn auth(&mut self, f: AuthFile, store: &StoreConfig) -> AuthConfig {
        let dev = store.backend == StoreBackend::Memory;
        let mut admin_secrets = self.secret_list(
            f.admin_secrets,
            "auth.admin_secrets",
            "ARES_ADMIN_SECRET",
            MIN_ADMIN_SECRET_BYTES,
        );
        let mut admin_secret_generated = false;
        if admin_secrets.is_empty() && !self.problems.iter().any(|p| p.path == "auth.admin_secrets")
        {
            if dev {
                admin_secrets.push(Secret(crate::auth::random_token("adm_", 32)));
                admin_secret_generated = true;
            } else {
                self.problem(
                    "auth.admin_secrets",
                    "ARES_ADMIN_SECRET is not set (required with ARES_STORE=redis)",
                );
            }
        }
        let mut jwt = self.secret_list(
            f.jwt_secret,
            "auth.jwt_secret",
            "ARES_JWT_SECRET",
            MIN_JWT_SECRET_BYTES,
        );
        if jwt.len() > 1 {
            self.problem(
                "auth.jwt_secret",
                "ARES_JWT_SECRET holds one key; list older keys in ARES_JWT_PREVIOUS_SECRETS",
            );
        }
        let mut jwt_secret_generated = false;
        let jwt_secret = match jwt.pop() {
            Some(s) => s,
            None => {
                if dev {
                    jwt_secret_generated = true;
                } else if !self.problems.iter().any(|p| p.path == "auth.jwt_secret") {
                    self.problem(
                        "auth.jwt_secret",
                        "ARES_JWT_SECRET is not set (required with ARES_STORE=redis)",
                    );
                }
                Secret(crate::auth::random_token("", 48))
            }
        };
        let jwt_previous_secrets = self.secret_list(
            f.jwt_previous_secrets,
            "auth.jwt_previous_secrets",
            "ARES_JWT_PREVIOUS_SECRETS",
            MIN_JWT_SECRET_BYTES,
        );
        let jwt_issuer = f.jwt_issuer.unwrap_or_else(|| "ares-gateway".into());
        if jwt_issuer.trim().is_empty() {
            self.problem("auth.jwt_issuer", "must not be empty");
        }
        AuthConfig {
            admin_secrets,
            admin_secret_generated,
            jwt_secret,
            jwt_secret_generated,
            jwt_previous_secrets,
            jwt_issuer,
            jwt_audience: f.jwt_audience.filter(|a| !a.trim().is_empty()),
            jwt_leeway: Duration::from_secs(self.num(
                &f.jwt_leeway_secs,
                "auth.jwt_leeway_secs",
                30,
                0,
                60,
            )),
            access_token_ttl: Duration::from_secs(self.num(
                &f.access_token_ttl_secs,
                "auth.access_token_ttl_secs",
                900,
                60,
                86_400,
            )),
            refresh_token_ttl: Duration::from_secs(self.num(
                &f.refresh_token_ttl_secs,
                "auth.refresh_token_ttl_secs",
                7 * 86_400,
                300,
                365 * 86_400,
            )),
            refresh_rotation: self.flag(&f.refresh_rotation, "auth.refresh_rotation", false),
            refresh_reuse_grace: Duration::from_secs(self.num(
                &f.refresh_reuse_grace_secs,
                "auth.refresh_reuse_grace_secs",
                5,
                0,
                60,
            )),
            password_hash_concurrency: self.num(
                &f.password_hash_concurrency,
                "auth.password_hash_concurrency",
                0,
                0,
                256,
            ) as usize,
        }
    }

    fn plan(&mut self, f: &PlanFile, path: &str) -> Plan {
        let mut plan = Plan::default();
        let windows = [
            (
                Window::Second,
                &f.requests_per_second,
                "requests_per_second",
            ),
            (
                Window::Minute,
                &f.requests_per_minute,
                "requests_per_minute",
            ),
            (Window::Hour, &f.requests_per_hour, "requests_per_hour"),
            (Window::Day, &f.requests_per_day, "requests_per_day"),
            (Window::Month, &f.requests_per_month, "requests_per_month"),
        ];
        for (window, value, name) in windows {
            if value.is_none() {
                continue;
            }
            let max = if window.is_calendar() {
                u64::MAX / 4
            } else {
                MAX_SLIDING_LIMIT
            };
            let n = self.num(value, &format!("{path}.{name}"), 0, 1, max);
            if n > 0 {
                plan.set(window, Some(n));
            }
        }
        if f.tokens_per_month.is_some() {
            let n = self.num(
                &f.tokens_per_month,
                &format!("{path}.tokens_per_month"),
                0,
                1,
                u64::MAX / 4,
            );
            if n > 0 {
                plan.tokens_per_month = Some(n);
            }
        }
        plan
    }

    fn plans(&mut self, v: Value) -> BTreeMap<String, Plan> {
        let files: BTreeMap<String, Value> =
            section(v, "plans", &mut self.problems).unwrap_or_default();
        let mut out = BTreeMap::new();
        for (name, value) in files {
            let path = format!("plans.{name}");
            if !valid_name(&name) {
                self.problem(
                    &path,
                    "plan names are lower-case letters, digits, '-' and '_'",
                );
            }
            let file: PlanFile = if value.is_null() {
                PlanFile::default()
            } else {
                match section(value, &path, &mut self.problems) {
                    Some(f) => f,
                    None => continue,
                }
            };
            let plan = self.plan(&file, &path);
            out.insert(name, plan);
        }
        out
    }

    fn limits(&mut self, f: RateLimitsFile, plans: BTreeMap<String, Plan>) -> RateLimitConfig {
        let failure_policy = match f
            .failure_policy
            .as_deref()
            .map(str::trim)
            .unwrap_or("local")
        {
            "open" => FailurePolicy::Open,
            "closed" => FailurePolicy::Closed,
            "local" | "" => FailurePolicy::Local,
            other => {
                self.problem(
                    "rate_limits.failure_policy",
                    format!("must be open, closed or local, got {other:?}"),
                );
                FailurePolicy::Local
            }
        };
        let default_user = PlanFile {
            requests_per_minute: Some(Num::Int(600)),
            ..Default::default()
        };
        let default_auth_ip = PlanFile {
            requests_per_minute: Some(Num::Int(30)),
            requests_per_hour: Some(Num::Int(300)),
            ..Default::default()
        };
        let default_acct_ip = PlanFile {
            requests_per_hour: Some(Num::Int(10)),
            ..Default::default()
        };
        let default_acct = PlanFile {
            requests_per_hour: Some(Num::Int(100)),
            ..Default::default()
        };
        let user = self.plan(f.user.as_ref().unwrap_or(&default_user), "rate_limits.user");
        let auth_ip = self.plan(
            f.auth_ip.as_ref().unwrap_or(&default_auth_ip),
            "rate_limits.auth_ip",
        );
        let login_failures_per_account_ip = self.plan(
            f.login_failures_per_account_ip
                .as_ref()
                .unwrap_or(&default_acct_ip),
            "rate_limits.login_failures_per_account_ip",
        );
        let login_failures_per_account = self.plan(
            f.login_failures_per_account
                .as_ref()
                .unwrap_or(&default_acct),
            "rate_limits.login_failures_per_account",
        );
        let plans = if plans.is_empty() {
            crate::ratelimit::default_plans()
        } else {
            plans
        };
        let default_plan = f.default_plan.unwrap_or_else(|| "free".into());
        if !plans.contains_key(&default_plan) {
            self.problem(
                "rate_limits.default_plan",
                format!("no plan named {default_plan:?} in plans"),
            );
        }
        RateLimitConfig {
            failure_policy,
            replicas: self.num(&f.replicas, "rate_limits.replicas", 1, 1, 1000),
            user,
            auth_ip,
            login_failures_per_account_ip,
            login_failures_per_account,
            plans,
            default_plan,
        }
    }

    fn policy(&mut self, v: Option<&str>, path: &str) -> Option<FailurePolicy> {
        match v.map(str::trim) {
            None | Some("") => None,
            Some("open") => Some(FailurePolicy::Open),
            Some("closed") => Some(FailurePolicy::Closed),
            Some("local") => Some(FailurePolicy::Local),
            Some(other) => {
                self.problem(
                    path,
                    format!("must be open, closed or local, got {other:?}"),
                );
                None
            }
        }
    }

    fn upstreams(&mut self, v: Value) -> Vec<Arc<Upstream>> {
        let files: BTreeMap<String, Value> =
            section(v, "upstreams", &mut self.problems).unwrap_or_default();
        let mut out = Vec::new();
        for (name, value) in files {
            let path = format!("upstreams.{name}");
            let Some(file) = section::<UpstreamFile>(value, &path, &mut self.problems) else {
                continue;
            };
            let mut up = match Upstream::parse(&name, file.url.trim()) {
                Ok(u) => u,
                Err(e) => {
                    self.problem(format!("{path}.url"), e);
                    continue;
                }
            };
            up.index = out.len();
            up.connect_timeout = Duration::from_millis(self.num(
                &file.connect_timeout_ms,
                &format!("{path}.connect_timeout_ms"),
                2000,
                10,
                60_000,
            ));
            up.first_byte_timeout = Duration::from_secs(self.num(
                &file.first_byte_timeout_secs,
                &format!("{path}.first_byte_timeout_secs"),
                60,
                1,
                3600,
            ));
            up.idle_timeout = Duration::from_secs(self.num(
                &file.idle_timeout_secs,
                &format!("{path}.idle_timeout_secs"),
                300,
                1,
                86_400,
            ));
            up.pool_idle_timeout = Duration::from_secs(self.num(
                &file.pool_idle_timeout_secs,
                &format!("{path}.pool_idle_timeout_secs"),
                90,
                1,
                3600,
            ));
            up.pool_max_idle_per_host = self.num(
                &file.pool_max_idle_per_host,
                &format!("{path}.pool_max_idle_per_host"),
                256,
                0,
                100_000,
            ) as usize;
            up.ca_file = file
                .ca_file
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from);
            if let Some(ca) = &up.ca_file {
                if !up.https {
                    self.problem(
                        format!("{path}.ca_file"),
                        "only https:// upstreams use a CA bundle",
                    );
                } else if !ca.is_file() {
                    self.problem(
                        format!("{path}.ca_file"),
                        format!("{} is not a readable file", ca.display()),
                    );
                }
            }
            out.push(Arc::new(up));
        }
        out
    }

    fn routes(&mut self, v: Value, upstreams: &[Arc<Upstream>]) -> RouteTable {
        let items: Vec<Value> = match v {
            Value::Null => {
                self.problem("routes", "at least one route is required");
                Vec::new()
            }
            Value::Sequence(items) => items,
            _ => {
                self.problem("routes", "must be a list of routes");
                Vec::new()
            }
        };
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("routes[{i}]");
            let Some(f) = section::<RouteFile>(item, &path, &mut self.problems) else {
                continue;
            };
            if let Some(r) = self.route(f, &path, upstreams, &mut seen) {
                routes.push(r);
            }
        }
        RouteTable::new(routes)
    }

    fn route(
        &mut self,
        f: RouteFile,
        path: &str,
        upstreams: &[Arc<Upstream>],
        seen: &mut HashSet<String>,
    ) -> Option<Route> {
        let before = self.problems.len();
        let prefix = f.prefix.trim().to_string();
        match route::normalize(&prefix) {
            Ok(n) if n == prefix => {}
            Ok(n) => self.problem(
                format!("{path}.prefix"),
                format!("{prefix:?} is not a normalised path (did you mean {n:?}?)"),
            ),
            Err(e) => self.problem(format!("{path}.prefix"), format!("{prefix:?}: {e}")),
        }
        let key = prefix.trim_end_matches('/').to_string();
        if !seen.insert(key) {
            self.problem(
                format!("{path}.prefix"),
                format!("{prefix:?} is listed twice"),
            );
        }
        let auth = match f.auth {
            AuthKindFile::None => AuthKind::None,
            AuthKindFile::ApiKey => AuthKind::ApiKey,
            AuthKindFile::Jwt => AuthKind::Jwt,
            AuthKindFile::Admin => AuthKind::Admin,
        };
        let target = match (&f.upstream, f.handler) {
            (Some(name), None) => match upstreams.iter().find(|u| &u.name == name) {
                Some(u) => Some(Target::Upstream(u.clone())),
                None => {
                    self.problem(
                        format!("{path}.upstream"),
                        format!("no upstream named {name:?}"),
                    );
                    None
                }
            },
            (None, Some(h)) => {
                let (handler, want) = match h {
                    HandlerFile::Auth => (Handler::Auth, AuthKind::None),
                    HandlerFile::Admin => (Handler::Admin, AuthKind::Admin),
                    HandlerFile::Health => (Handler::Health, AuthKind::None),
                };
                if auth != want {
                    self.problem(
                        format!("{path}.auth"),
                        format!("handler {} needs auth: {}", handler.as_str(), want.as_str()),
                    );
                }
                Some(Target::Handler(handler))
            }
            (Some(_), Some(_)) => {
                self.problem(path, "set either upstream or handler, not both");
                None
            }
            (None, None) => {
                self.problem(
                    path,
                    "set upstream (a name from upstreams) or handler (auth, admin, health)",
                );
                None
            }
        };
        if let Some(up) = &f.upstream_prefix {
            if f.upstream.is_none() {
                self.problem(
                    format!("{path}.upstream_prefix"),
                    "only upstream routes rewrite paths",
                );
            }
            if !matches!(route::normalize(up), Ok(ref n) if n == up) {
                self.problem(
                    format!("{path}.upstream_prefix"),
                    format!("{up:?} must be a normalised absolute path"),
                );
            }
        }
        if let Some(scope) = &f.required_scope {
            if auth != AuthKind::ApiKey {
                self.problem(
                    format!("{path}.required_scope"),
                    "only api_key routes check scopes",
                );
            }
            if !valid_name(scope) {
                self.problem(
                    format!("{path}.required_scope"),
                    "scopes are lower-case words",
                );
            }
        }
        if f.query_token && auth != AuthKind::Jwt {
            self.problem(
                format!("{path}.query_token"),
                "only jwt routes accept a query token",
            );
        }
        let failure_policy = self.policy(
            f.failure_policy.as_deref(),
            &format!("{path}.failure_policy"),
        );
        if f.websocket && f.upstream.is_none() {
            self.problem(
                format!("{path}.websocket"),
                "only upstream routes pass WebSocket upgrades",
            );
        }
        if self.problems.len() > before {
            return None;
        }
        Some(
            Route::new(
                prefix,
                auth,
                target?,
                f.upstream_prefix,
                f.required_scope,
                f.forward_credentials,
                f.websocket,
                f.query_token,
            )
            .with_failure_policy(failure_policy),
        )
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    const SHIPPED: &str = include_str!("../gateway.yaml");

    #[test]
    fn shipped_config_is_valid_with_empty_environment() {
        let cfg = Config::from_yaml(SHIPPED, &env_of(&[])).unwrap();
        assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.store.backend, StoreBackend::Memory);
        assert!(cfg.store.legacy_revocations);
        assert!(cfg.auth.admin_secret_generated);
        let t = &cfg.routes;
        let v1 = t.classify("/v1/chat").unwrap();
        assert_eq!(v1.auth, AuthKind::ApiKey);
        assert_eq!(v1.forward_path("/v1/chat"), "/api/v1/chat");
        assert_eq!(v1.required_scope.as_deref(), Some("chat"));
        assert_eq!(
            t.classify("/v1/usage/events")
                .unwrap()
                .required_scope
                .as_deref(),
            Some("ingest")
        );
        assert_eq!(t.classify("/api/chat").unwrap().auth, AuthKind::Jwt);
        assert!(t.classify("/api/chat").unwrap().websocket);
        assert!(!t.classify("/api/chat").unwrap().forward_credentials);
        let admin_up = t.classify("/api/admin/agents").unwrap();
        assert_eq!(admin_up.auth, AuthKind::Admin);
        assert!(admin_up.forward_credentials);
        assert!(matches!(admin_up.target, Target::Upstream(_)));
        assert!(matches!(
            t.classify("/api/admin/tenants/x").unwrap().target,
            Target::Handler(Handler::Admin)
        ));
        assert!(matches!(
            t.classify("/api/admin/provision-client").unwrap().target,
            Target::Handler(Handler::Admin)
        ));
        assert!(matches!(
            t.classify("/api/auth/login").unwrap().target,
            Target::Handler(Handler::Auth)
        ));
        assert!(matches!(
            t.classify("/readyz").unwrap().target,
            Target::Handler(Handler::Health)
        ));
        assert!(t.classify("/other").is_none());
        let free = &cfg.limits.plans["free"];
        assert_eq!(free.get(Window::Day), Some(50));
        assert_eq!(free.get(Window::Month), Some(1000));
        assert_eq!(cfg.limits.plans["enterprise"].get(Window::Month), None);
        assert_eq!(cfg.limits.user.get(Window::Minute), Some(600));
    }

    #[test]
    fn environment_is_substituted_and_typed() {
        let cfg = Config::from_yaml(
            SHIPPED,
            &env_of(&[
                ("ARES_LISTEN", "127.0.0.1:18080"),
                ("ARES_WORKERS", "3"),
                ("ARES_USER_REQUESTS_PER_MINUTE", "42"),
                (
                    "ARES_ADMIN_SECRET",
                    "first-admin-secret-0001, second-admin-secret-002",
                ),
                ("ARES_UPSTREAM", "http://127.0.0.1:4000"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:18080");
        assert_eq!(cfg.server.workers, 3);
        assert_eq!(cfg.limits.user.get(Window::Minute), Some(42));
        assert_eq!(cfg.auth.admin_secrets.len(), 2);
        assert!(!cfg.auth.admin_secret_generated);
        assert_eq!(cfg.upstreams[0].authority.as_str(), "127.0.0.1:4000");
    }

    #[test]
    fn redis_store_requires_secrets_and_names_the_variables() {
        let err = Config::from_yaml(SHIPPED, &env_of(&[("ARES_STORE", "redis")])).unwrap_err();
        let text: Vec<String> = err.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains("ARES_ADMIN_SECRET")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("ARES_JWT_SECRET")),
            "{text:?}"
        );
    }

    #[test]
    fn short_secrets_are_refused_without_echoing_them() {
        let err = Config::from_yaml(
            SHIPPED,
            &env_of(&[
                ("ARES_ADMIN_SECRET", "tiny-secret"),
                ("ARES_JWT_SECRET", "short-jwt-key"),
            ]),
        )
        .unwrap_err();
        let all: String = err.iter().map(|p| p.to_string()).collect();
        assert!(
            all.contains("ARES_ADMIN_SECRET") && all.contains("ARES_JWT_SECRET"),
            "{all}"
        );
        assert!(
            !all.contains("tiny-secret") && !all.contains("short-jwt-key"),
            "{all}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let yaml = r#"
server:
  listen: "nonsense"
  workers: "many"
store:
  legacy_revocations: "sometimes"
bogus: 1
upstreams:
  default: { url: "ftp://x" }
  other: { url: "http://127.0.0.1:1", colour: red }
routes:
  - { prefix: /a/, auth: jwt, upstream: missing }
  - { prefix: /b/, auth: magic, upstream: default }
  - { prefix: "/c/../d/", auth: none, handler: health }
  - { prefix: /e/, auth: jwt, handler: admin }
  - { prefix: /f/, auth: jwt, upstream: other, required_scope: chat }
  - { prefix: /g/, auth: jwt, upstream: other, failure_policy: maybe }
"#;
        let err = Config::from_yaml(yaml, &env_of(&[])).unwrap_err();
        let paths: Vec<&str> = err.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "server.listen",
            "server.workers",
            "store.legacy_revocations",
            "bogus",
            "upstreams.default.url",
            "upstreams.other.colour",
            "routes[0].upstream",
            "routes[1].auth",
            "routes[2].prefix",
            "routes[3].auth",
            "routes[4].upstream",
            "routes[4].required_scope",
            "routes[5].failure_policy",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn substitution_rules() {
        let env = env_of(&[("A", "1"), ("EMPTY", "")]);
        assert_eq!(substitute("x${A}y", &env).unwrap(), "x1y");
        assert_eq!(substitute("${B:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(substitute("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(substitute("$${A}", &env).unwrap(), "${A}");
        assert_eq!(substitute("cost $5", &env).unwrap(), "cost $5");
        assert!(substitute("${B}", &env)
            .unwrap_err()
            .contains("B is not set"));
        assert!(substitute("${A", &env).is_err());
        assert!(substitute("${A B}", &env).is_err());
    }

    #[test]
    fn env_values_cannot_inject_yaml() {
        let yaml = "server:\n  listen: \"${ARES_LISTEN}\"\nroutes:\n  - { prefix: /healthz, auth: none, handler: health }\n";
        let err = Config::from_yaml(yaml, &env_of(&[("ARES_LISTEN", "1.2.3.4:1\"\nbogus: [")]))
            .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].path, "server.listen");
    }

    #[test]
    fn regression_writes_within_one_clock_tick_looked_unchanged() {
        // Two atomic replacements back to back: the mtime may not move, the stamp must.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.yaml");
        let mut seen = Vec::new();
        for text in ["a: 1\n", "a: 2\n", "a: 3\n"] {
            let tmp = dir.path().join("g.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            seen.push(FileStamp::of(&path).unwrap());
        }
        assert_ne!(seen[0], seen[1]);
        assert_ne!(seen[1], seen[2]);
        assert_eq!(FileStamp::of(&path), Some(seen[2]));
        assert_eq!(FileStamp::of(&dir.path().join("missing")), None);
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "",
            "[1,2]",
            "routes: 5",
            "routes: [1, null, {}]",
            "plans: {free: 3}",
            ":::",
            "\0",
        ] {
            let _ = Config::from_yaml(text, &env_of(&[]));
        }
    }
}
