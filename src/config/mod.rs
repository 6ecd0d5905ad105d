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
mod tests {
    use super::*;
    use crate::ratelimit::Window;
    use crate::route::{self, AuthKind, Handler, Target};

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    const SHIPPED: &str = include_str!("../../gateway.yaml");

    #[test]
    fn the_shipped_file_writes_every_default_of_the_table() {
        let file: Value = serde_yaml::from_str(SHIPPED).unwrap();
        let mut checked = 0;
        for bound in defaults::ALL {
            assert!(
                bound.min <= bound.default && bound.default <= bound.max,
                "{bound:?}"
            );
            // Plan limits are per tier, not defaults.
            if bound.key.starts_with("plans.") {
                continue;
            }
            let mut node = &file;
            for part in bound.key.replace('*', "default").split('.') {
                node = node
                    .get(part)
                    .unwrap_or_else(|| panic!("{} is not in gateway.yaml", bound.key));
            }
            let written = match node {
                Value::Number(n) => n.as_u64(),
                // `${VAR:-N}`: the default is N.
                Value::String(s) => s
                    .rsplit_once(":-")
                    .and_then(|(_, d)| d.strip_suffix('}'))
                    .and_then(|d| d.parse().ok()),
                _ => None,
            };
            assert_eq!(
                written,
                Some(bound.default),
                "{} in gateway.yaml",
                bound.key
            );
            checked += 1;
        }
        assert!(checked >= 25, "{checked}");
        // An absent key means the table's default.
        let cfg = Config::from_yaml(
            "routes: [{prefix: /, auth: none, handler: health}]",
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            cfg.server.max_connections as u64,
            defaults::SERVER_MAX_CONNECTIONS.default
        );
        assert_eq!(
            cfg.auth.access_token_ttl.as_secs(),
            defaults::AUTH_ACCESS_TOKEN_TTL_SECS.default
        );
    }

    #[test]
    fn shipped_config_is_valid_with_empty_environment() {
        let cfg = Config::from_yaml(SHIPPED, &env_of(&[])).unwrap();
        assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:8080");
        // The default is the durable embedded store in ./data.
        assert_eq!(
            cfg.store.backend,
            StoreBackend::Embedded(EmbeddedOptions {
                dir: "./data".into(),
                cache_bytes: 64 << 20,
                min_free_bytes: 64 << 20,
            })
        );
        assert!(cfg.store.legacy_revocations);
        assert!(cfg.auth.admin_secret_generated);
        let t = &cfg.routes;
        let chat = t.classify("/v1/chat").unwrap();
        assert_eq!(chat.auth, AuthKind::ApiKey);
        // The seed's /v1/chat is ARES's chat route; the rest of /v1/ is ARES's /api/v1/.
        assert_eq!(chat.forward_path("/v1/chat"), "/api/chat");
        assert_eq!(chat.forward_path("/v1/chat/stream"), "/api/chat/stream");
        assert_eq!(chat.required_scope.as_deref(), Some("chat"));
        let v1 = t.classify("/v1/agents").unwrap();
        assert_eq!(v1.forward_path("/v1/agents"), "/api/v1/agents");
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
        assert_eq!(
            t.classify("/api/chat").unwrap().credential,
            route::Credential::None
        );
        let admin_up = t.classify("/api/admin/agents").unwrap();
        assert_eq!(admin_up.auth, AuthKind::Admin);
        assert_eq!(admin_up.credential, route::Credential::Passthrough);
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
    fn the_postgres_store_needs_its_url_and_takes_redis_for_counters() {
        let secrets = [
            ("ARES_ADMIN_SECRET", "pg-admin-secret-0123456789"),
            ("ARES_JWT_SECRET", "pg-jwt-secret-0123456789abcdef0123"),
        ];
        let env = |extra: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                extra
                    .iter()
                    .chain(secrets.iter())
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let err = Config::from_yaml(SHIPPED, &env(&[("ARES_STORE", "postgres")])).unwrap_err();
        let text: String = err.iter().map(|p| p.to_string()).collect();
        assert!(
            text.contains("store.database_url") && text.contains("DATABASE_URL"),
            "{text}"
        );
        let err = Config::from_yaml(
            SHIPPED,
            &env(&[
                ("ARES_STORE", "postgres"),
                ("DATABASE_URL", "mysql://root:hunter2@db/ares"),
            ]),
        )
        .unwrap_err();
        let text: String = err.iter().map(|p| p.to_string()).collect();
        assert!(text.contains("must start with postgres://"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        const URL: &str = "postgres://ares@127.0.0.1/ares";
        let url = URL;
        let cfg = Config::from_yaml(
            SHIPPED,
            &env(&[("ARES_STORE", "postgres"), ("DATABASE_URL", URL)]),
        )
        .unwrap();
        assert!(matches!(&cfg.store.backend,
            StoreBackend::Postgres { url: u, redis: None } if u.expose() == url));
        let cfg = Config::from_yaml(
            SHIPPED,
            &env(&[
                ("ARES_STORE", "postgres"),
                ("DATABASE_URL", URL),
                ("REDIS_URL", "redis://127.0.0.1:6380"),
            ]),
        )
        .unwrap();
        assert!(matches!(&cfg.store.backend,
            StoreBackend::Postgres { redis: Some(r), .. } if r.expose() == "redis://127.0.0.1:6380"));
        // The redis store keeps its default address.
        let cfg = Config::from_yaml(SHIPPED, &env(&[("ARES_STORE", "redis")])).unwrap();
        assert!(matches!(&cfg.store.backend,
            StoreBackend::Redis { url } if url.expose() == "redis://127.0.0.1:6379"));
    }

    #[test]
    fn route_methods_are_known_names_each_once() {
        let yaml = |methods: &str| {
            format!(
                "upstreams:\n  default: {{ url: \"http://127.0.0.1:1\" }}\nroutes:\n  - {{ prefix: /a, auth: none, upstream: default, exact: true, methods: {methods} }}\n"
            )
        };
        let ok = Config::from_yaml(&yaml("[GET, HEAD]"), &env_of(&[])).unwrap();
        let r = ok.routes.classify("/a").unwrap();
        assert_eq!(r.allows(&http::Method::POST), Err("GET, HEAD"));
        assert_eq!(r.allows(&http::Method::HEAD), Ok(()));
        assert!(
            ok.routes.classify("/a/b").is_none(),
            "an exact route is its own path only"
        );
        for (bad, says) in [
            ("[get]", "is not one of"),
            ("[GET, GET]", "listed twice"),
            ("[]", "at least one method"),
            ("[CONNECT]", "is not one of"),
        ] {
            let err = Config::from_yaml(&yaml(bad), &env_of(&[])).unwrap_err();
            let text: String = err.iter().map(|p| p.to_string()).collect();
            assert!(
                text.contains("routes[0].methods") && text.contains(says),
                "{bad}: {text}"
            );
        }
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
    #[test]
    fn tracing_is_off_without_an_endpoint_and_reads_the_standard_variables() {
        use crate::telemetry::{Protocol, SamplerSpec};
        assert!(Config::from_yaml(SHIPPED, &env_of(&[]))
            .unwrap()
            .tracing
            .is_none());
        const BASE: &[(&str, &str)] = &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")];
        let t = Config::from_yaml(SHIPPED, &env_of(BASE))
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.service_name, "ares-gateway");
        assert_eq!(t.sampler, SamplerSpec::ParentBasedAlwaysOn);
        assert_eq!(t.max_queue_size, 2048);
        assert_eq!(t.schedule_delay, Duration::from_secs(5));
        assert_eq!(t.export_timeout, Duration::from_secs(10));
        // A file without a tracing section honours them too.
        let (head, rest) = SHIPPED.split_once("\ntracing:\n").unwrap();
        let without = format!("{head}\n{}", &rest[rest.find("\nstore:").unwrap()..]);
        let t = Config::from_yaml(&without, &env_of(BASE))
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        let t = Config::from_yaml(
            SHIPPED,
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "512"),
                ("OTEL_BSP_SCHEDULE_DELAY", "250"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ]),
        )
        .unwrap()
        .tracing
        .unwrap();
        assert_eq!(
            t.endpoint, "http://collector:4317",
            "gRPC takes the base as it is"
        );
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(t.service_name, "edge");
        assert_eq!(t.sampler, SamplerSpec::ParentBasedRatio(0.01));
        assert_eq!(t.max_queue_size, 512);
        assert_eq!(t.schedule_delay, Duration::from_millis(250));
        assert_eq!(t.export_timeout, Duration::from_millis(2500));
        // The signal's own variables win, taken as they are.
        let t = Config::from_yaml(
            SHIPPED,
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://traces.example/otlp",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ]),
        )
        .unwrap()
        .tracing
        .unwrap();
        assert_eq!(t.endpoint, "https://traces.example/otlp");
        assert_eq!(t.export_timeout, Duration::from_millis(700));
        const OFF: &[(&str, &str)] = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert!(Config::from_yaml(SHIPPED, &env_of(OFF))
            .unwrap()
            .tracing
            .is_none());
    }

    #[test]
    fn bad_tracing_settings_are_named() {
        let err = Config::from_yaml(
            SHIPPED,
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "many"),
                ("OTEL_BSP_SCHEDULE_DELAY", "0"),
            ]),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.iter().map(|p| p.path.as_str()).collect();
        for key in [
            "tracing.endpoint",
            "tracing.protocol",
            "tracing.sampler",
            "tracing.max_queue_size",
            "tracing.schedule_delay_ms",
        ] {
            assert!(paths.contains(&key), "{key} not in {err:?}");
        }
    }
}
