//! Turning the file types into the validated [`Config`](super::Config) parts: every bad field is
//! reported with its key path (all of them, not the first), and nothing here panics. Defaults and
//! bounds come from `defaults.rs`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde_yaml::Value;

use super::defaults::{self, Bound};
use super::file::*;
use super::*;
use crate::net::tls::TlsFiles;
use crate::ratelimit::{FailurePolicy, Lease, Plan, Window};
use crate::route::{self, AuthKind, Handler, Route, RouteTable, Target, Upstream};
use crate::util::Secret;

/// Collects problems while turning file types into runtime types.
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
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

    /// A number with its default and bounds from the table in `defaults.rs`.
    fn bounded(&mut self, v: &Option<Num>, d: &Bound) -> u64 {
        self.num(v, d.key, d.default, d.min, d.max)
    }

    /// As `bounded`, for a key under a named item (`upstreams.<name>.…`).
    fn bounded_at(&mut self, v: &Option<Num>, path: &str, d: &Bound) -> u64 {
        self.num(v, path, d.default, d.min, d.max)
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

    pub(super) fn server(&mut self, f: ServerFile) -> ServerConfig {
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
        let mut admin_allow_cidrs = Vec::new();
        for cidr in f
            .admin_allow_cidrs
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
        {
            if cidr.is_empty() {
                continue;
            }
            let parsed = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => admin_allow_cidrs.push(net),
                Err(_) => self.problem(
                    "server.admin_allow_cidrs",
                    format!("ARES_ADMIN_ALLOW_CIDRS: expected IPs or CIDRs, got {cidr:?}"),
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
            workers: self.bounded(&f.workers, &defaults::SERVER_WORKERS) as usize,
            max_connections: self.bounded(&f.max_connections, &defaults::SERVER_MAX_CONNECTIONS)
                as usize,
            header_read_timeout: Duration::from_secs(self.bounded(
                &f.header_read_timeout_secs,
                &defaults::SERVER_HEADER_READ_TIMEOUT_SECS,
            )),
            request_body_grace: Duration::from_secs(self.bounded(
                &f.request_body_grace_secs,
                &defaults::SERVER_REQUEST_BODY_GRACE_SECS,
            )),
            request_body_min_rate: self.bounded(
                &f.request_body_min_rate_bytes,
                &defaults::SERVER_REQUEST_BODY_MIN_RATE_BYTES,
            ),
            max_header_bytes: self.bounded(&f.max_header_bytes, &defaults::SERVER_MAX_HEADER_BYTES)
                as usize,
            max_headers: self.bounded(&f.max_headers, &defaults::SERVER_MAX_HEADERS) as usize,
            request_body_limit: self.bounded(
                &f.request_body_limit_bytes,
                &defaults::SERVER_REQUEST_BODY_LIMIT_BYTES,
            ),
            json_body_limit: self.bounded(
                &f.json_body_limit_bytes,
                &defaults::SERVER_JSON_BODY_LIMIT_BYTES,
            ) as usize,
            shutdown_grace: Duration::from_secs(self.bounded(
                &f.shutdown_grace_secs,
                &defaults::SERVER_SHUTDOWN_GRACE_SECS,
            )),
            trusted_proxies,
            admin_allow_cidrs,
            tls,
            tls_handshake_timeout: Duration::from_secs(self.bounded(
                &f.tls_handshake_timeout_secs,
                &defaults::SERVER_TLS_HANDSHAKE_TIMEOUT_SECS,
            )),
            tls_reload_poll: Duration::from_secs(self.bounded(
                &f.tls_reload_poll_secs,
                &defaults::SERVER_TLS_RELOAD_POLL_SECS,
            )),
            websocket_idle_timeout: Duration::from_secs(self.bounded(
                &f.websocket_idle_timeout_secs,
                &defaults::SERVER_WEBSOCKET_IDLE_TIMEOUT_SECS,
            )),
            config_reload_poll: Duration::from_secs(self.bounded(
                &f.config_reload_poll_secs,
                &defaults::SERVER_CONFIG_RELOAD_POLL_SECS,
            )),
            cors_origins,
            http2_max_concurrent_streams: self.bounded(
                &f.http2_max_concurrent_streams,
                &defaults::SERVER_HTTP2_MAX_CONCURRENT_STREAMS,
            ) as u32,
        }
    }

    /// The header lists a browser sees: the defaults, then the configured extras (each a
    /// header name; lower-cased, duplicates dropped).
    pub(super) fn cors(&mut self, f: CorsFile) -> CorsConfig {
        CorsConfig {
            allow_headers: self.header_list(
                defaults::CORS_ALLOW_HEADERS,
                f.allow_headers,
                "cors.allow_headers",
            ),
            expose_headers: self.header_list(
                defaults::CORS_EXPOSE_HEADERS,
                f.expose_headers,
                "cors.expose_headers",
            ),
        }
    }

    /// `tracing:`, each key falling back to its standard variable; `None` (off) when no
    /// endpoint is set or `OTEL_SDK_DISABLED=true`. The signal-specific
    /// `OTEL_EXPORTER_OTLP_TRACES_*` variables win over the keys, as the OTel spec has them win
    /// over the generic ones.
    pub(super) fn tracing(
        &mut self,
        f: TracingFile,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<crate::telemetry::TracingConfig> {
        use crate::telemetry::{Protocol, SamplerSpec, TracingConfig};
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let key = |v: Option<String>| v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let protocol_text = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| key(f.protocol))
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        let protocol = Protocol::parse(&protocol_text).unwrap_or_else(|| {
            self.problem(
                "tracing.protocol",
                format!("expected grpc or http/protobuf, got {protocol_text:?}"),
            );
            Protocol::HttpProtobuf
        });
        // The traces URL: the signal's own variable as it is; else the base with the OTLP/HTTP
        // path (gRPC takes the base as it is).
        let endpoint = match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(url) => url,
            None => {
                let base = key(f.endpoint).or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
                match protocol {
                    Protocol::Grpc => base,
                    Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                }
            }
        };
        match endpoint.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => self.problem(
                "tracing.endpoint",
                format!("expected an http:// or https:// URL, got {endpoint:?}"),
            ),
        }
        let service_name = key(f.service_name)
            .or_else(|| var("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "ares-gateway".into());
        let sampler_name = key(f.sampler)
            .or_else(|| var("OTEL_TRACES_SAMPLER"))
            .unwrap_or_else(|| "parentbased_always_on".into());
        let sampler_arg = key(f.sampler_arg).or_else(|| var("OTEL_TRACES_SAMPLER_ARG"));
        let sampler =
            SamplerSpec::parse(&sampler_name, sampler_arg.as_deref()).unwrap_or_else(|e| {
                self.problem("tracing.sampler", e);
                SamplerSpec::AlwaysOff
            });
        let num_or_var = |v: Option<Num>, name: &str| match v {
            Some(Num::Text(t)) if t.trim().is_empty() => var(name).map(Num::Text),
            None => var(name).map(Num::Text),
            some => some,
        };
        let max_queue_size = self.bounded(
            &num_or_var(f.max_queue_size, "OTEL_BSP_MAX_QUEUE_SIZE"),
            &defaults::TRACING_MAX_QUEUE_SIZE,
        ) as usize;
        let schedule_delay = Duration::from_millis(self.bounded(
            &num_or_var(f.schedule_delay_ms, "OTEL_BSP_SCHEDULE_DELAY"),
            &defaults::TRACING_SCHEDULE_DELAY_MS,
        ));
        let timeout = var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .map(Num::Text)
            .or_else(|| num_or_var(f.export_timeout_ms, "OTEL_EXPORTER_OTLP_TIMEOUT"));
        let export_timeout =
            Duration::from_millis(self.bounded(&timeout, &defaults::TRACING_EXPORT_TIMEOUT_MS));
        Some(TracingConfig {
            endpoint,
            protocol,
            service_name,
            sampler,
            max_queue_size,
            schedule_delay,
            export_timeout,
        })
    }

    fn header_list(
        &mut self,
        defaults: &[&str],
        extra: Option<String>,
        path: &str,
    ) -> http::HeaderValue {
        let mut names: Vec<String> = defaults.iter().map(|d| d.to_string()).collect();
        for name in extra.unwrap_or_default().split(',').map(str::trim) {
            if name.is_empty() {
                continue;
            }
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => {
                    if !names.iter().any(|n| n == h.as_str()) {
                        names.push(h.as_str().to_string());
                    }
                }
                Err(_) => self.problem(path, format!("{name:?} is not a header name")),
            }
        }
        http::HeaderValue::from_str(&names.join(", "))
            .unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    pub(super) fn store(&mut self, f: StoreFile) -> StoreConfig {
        let backend = match f.backend.as_deref().map(str::trim).unwrap_or("memory") {
            "" | "memory" => StoreBackend::Memory,
            "embedded" => {
                let dir = f.data_dir.as_deref().map(str::trim).unwrap_or("./data");
                if dir.is_empty() {
                    self.problem("store.data_dir", "ARES_DATA_DIR must not be empty");
                }
                StoreBackend::Embedded(super::EmbeddedOptions {
                    dir: std::path::PathBuf::from(dir),
                    cache_bytes: self
                        .bounded(&f.embedded_cache_mb, &defaults::STORE_EMBEDDED_CACHE_MB)
                        as usize
                        * 1024
                        * 1024,
                    min_free_bytes: self
                        .bounded(&f.min_free_disk_mb, &defaults::STORE_MIN_FREE_DISK_MB)
                        * 1024
                        * 1024,
                })
            }
            "redis" => {
                let url = f
                    .redis_url
                    .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
                let ok = [
                    "redis://",
                    "rediss://",
                    "redis+cluster://",
                    "rediss+cluster://",
                    "redis+sentinel://",
                    "rediss+sentinel://",
                ]
                .iter()
                .any(|s| url.starts_with(s));
                if !ok {
                    // The URL may hold a password: name the scheme rule, never the value.
                    self.problem(
                        "store.redis_url",
                        "REDIS_URL must start with redis://, rediss://, redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://",
                    );
                }
                StoreBackend::Redis {
                    url: Secret::new(url),
                }
            }
            other => {
                self.problem(
                    "store.backend",
                    format!("ARES_STORE must be embedded, memory or redis, got {other:?}"),
                );
                StoreBackend::Memory
            }
        };
        StoreConfig {
            backend,
            key_prefix: f.key_prefix.unwrap_or_else(|| "ares:".into()),
            command_timeout: Duration::from_millis(
                self.bounded(&f.command_timeout_ms, &defaults::STORE_COMMAND_TIMEOUT_MS),
            ),
            api_key_cache_ttl: Duration::from_secs(self.bounded(
                &f.api_key_cache_ttl_secs,
                &defaults::STORE_API_KEY_CACHE_TTL_SECS,
            )),
            legacy_revocations: self.flag(&f.legacy_revocations, "store.legacy_revocations", true),
            audit_retention: Duration::from_secs(
                self.bounded(
                    &f.audit_retention_days,
                    &defaults::STORE_AUDIT_RETENTION_DAYS,
                ) * 86_400,
            ),
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
            out.push(Secret::new(s.to_string()));
        }
        out
    }

    pub(super) fn auth(&mut self, f: AuthFile, store: &StoreConfig) -> AuthConfig {
        // Development use: secrets may be generated (and, embedded, kept in the data directory).
        let dev = matches!(
            store.backend,
            StoreBackend::Memory | StoreBackend::Embedded(_)
        );
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
                admin_secrets.push(Secret::new(crate::util::random_token("adm_", 32)));
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
                Secret::new(crate::util::random_token("", 48))
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
            jwt_accepted_issuers: f
                .jwt_accepted_issuers
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            accept_tokens_without_issuer: self.flag(
                &f.accept_tokens_without_issuer,
                "auth.accept_tokens_without_issuer",
                false,
            ),
            cookies: self.flag(&f.cookies, "auth.cookies", false),
            jwt_audience: f.jwt_audience.filter(|a| !a.trim().is_empty()),
            jwt_leeway: Duration::from_secs(
                self.bounded(&f.jwt_leeway_secs, &defaults::AUTH_JWT_LEEWAY_SECS),
            ),
            access_token_ttl: Duration::from_secs(self.bounded(
                &f.access_token_ttl_secs,
                &defaults::AUTH_ACCESS_TOKEN_TTL_SECS,
            )),
            refresh_token_ttl: Duration::from_secs(self.bounded(
                &f.refresh_token_ttl_secs,
                &defaults::AUTH_REFRESH_TOKEN_TTL_SECS,
            )),
            refresh_rotation: self.flag(&f.refresh_rotation, "auth.refresh_rotation", false),
            refresh_reuse_grace: Duration::from_secs(self.bounded(
                &f.refresh_reuse_grace_secs,
                &defaults::AUTH_REFRESH_REUSE_GRACE_SECS,
            )),
            password_hash_concurrency: self.bounded(
                &f.password_hash_concurrency,
                &defaults::AUTH_PASSWORD_HASH_CONCURRENCY,
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
            let path = format!("{path}.tokens_per_month");
            let n = self.num(&f.tokens_per_month, &path, 0, 1, u64::MAX / 4);
            if n > 0 {
                plan.tokens_per_month = Some(n);
            }
        }
        plan
    }

    pub(super) fn plans(&mut self, v: Value) -> BTreeMap<String, Plan> {
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

    pub(super) fn limits(
        &mut self,
        f: RateLimitsFile,
        plans: BTreeMap<String, Plan>,
    ) -> RateLimitConfig {
        let failure_policy = self
            .policy(f.failure_policy.as_deref(), "rate_limits.failure_policy")
            .unwrap_or(FailurePolicy::Local);
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
        let default_key_failures = PlanFile {
            requests_per_minute: Some(Num::Int(30)),
            requests_per_hour: Some(Num::Int(300)),
            ..Default::default()
        };
        let api_key_failures_per_ip = self.plan(
            f.api_key_failures_per_ip
                .as_ref()
                .unwrap_or(&default_key_failures),
            "rate_limits.api_key_failures_per_ip",
        );
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
            replicas: self.bounded(&f.replicas, &defaults::RATE_LIMITS_REPLICAS),
            lease: Lease {
                requests: self.bounded(&f.lease_requests, &defaults::RATE_LIMITS_LEASE_REQUESTS),
                ms: self.bounded(&f.lease_ms, &defaults::RATE_LIMITS_LEASE_MS),
            },
            user,
            auth_ip,
            login_failures_per_account_ip,
            login_failures_per_account,
            api_key_failures_per_ip,
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

    pub(super) fn upstreams(&mut self, v: Value) -> Vec<Arc<Upstream>> {
        let files: BTreeMap<String, Value> =
            section(v, "upstreams", &mut self.problems).unwrap_or_default();
        let mut out = Vec::new();
        for (name, value) in files {
            let path = format!("upstreams.{name}");
            let Some(file) = section::<UpstreamFile>(value, &path, &mut self.problems) else {
                continue;
            };
            let mut up =
                match Upstream::parse(&name, file.url.trim(), defaults::upstream_timeouts()) {
                    Ok(u) => u,
                    Err(e) => {
                        self.problem(format!("{path}.url"), e);
                        continue;
                    }
                };
            up.index = out.len();
            up.connect_timeout = Duration::from_millis(self.bounded_at(
                &file.connect_timeout_ms,
                &format!("{path}.connect_timeout_ms"),
                &defaults::UPSTREAM_CONNECT_TIMEOUT_MS,
            ));
            up.first_byte_timeout = Duration::from_secs(self.bounded_at(
                &file.first_byte_timeout_secs,
                &format!("{path}.first_byte_timeout_secs"),
                &defaults::UPSTREAM_FIRST_BYTE_TIMEOUT_SECS,
            ));
            up.idle_timeout = Duration::from_secs(self.bounded_at(
                &file.idle_timeout_secs,
                &format!("{path}.idle_timeout_secs"),
                &defaults::UPSTREAM_IDLE_TIMEOUT_SECS,
            ));
            up.pool_idle_timeout = Duration::from_secs(self.bounded_at(
                &file.pool_idle_timeout_secs,
                &format!("{path}.pool_idle_timeout_secs"),
                &defaults::UPSTREAM_POOL_IDLE_TIMEOUT_SECS,
            ));
            up.pool_max_idle_per_host = self.bounded_at(
                &file.pool_max_idle_per_host,
                &format!("{path}.pool_max_idle_per_host"),
                &defaults::UPSTREAM_POOL_MAX_IDLE_PER_HOST,
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
            self.upstream_credential(&mut up, &file, &path);
            out.push(Arc::new(up));
        }
        out
    }

    /// An upstream's minting settings and default credential.
    fn upstream_credential(&mut self, up: &mut Upstream, file: &UpstreamFile, path: &str) {
        let secret = file.mint_secret.as_deref().map(str::trim).unwrap_or("");
        if !secret.is_empty() {
            if secret.len() < MIN_JWT_SECRET_BYTES {
                self.problem(
                    format!("{path}.mint_secret"),
                    format!(
                        "must be at least {MIN_JWT_SECRET_BYTES} bytes (got {}; the value is not shown)",
                        secret.len()
                    ),
                );
            }
            let ttl_secs = self.bounded_at(
                &file.mint_ttl_secs,
                &format!("{path}.mint_ttl_secs"),
                &defaults::UPSTREAM_MINT_TTL_SECS,
            );
            let claims = match &file.mint_claims {
                None | Some(Value::Null) => serde_json::Map::new(),
                Some(v) => match serde_json::to_value(v) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => {
                        self.problem(
                            format!("{path}.mint_claims"),
                            "must be a mapping of claim names to values",
                        );
                        serde_json::Map::new()
                    }
                },
            };
            for name in claims.keys() {
                if route::MintConfig::RESERVED_CLAIMS.contains(&name.as_str()) {
                    self.problem(
                        format!("{path}.mint_claims.{name}"),
                        "the gateway sets this claim itself",
                    );
                }
            }
            up.mint = Some(route::MintConfig {
                secret: Secret::new(secret.to_string()),
                ttl_secs,
                claims,
            });
        }
        let default = if up.mint.is_some() {
            route::Credential::Mint
        } else {
            route::Credential::None
        };
        up.credential = match file.credential.as_deref().map(str::trim) {
            None | Some("") => default,
            Some(text) => match route::Credential::parse(text) {
                Some(route::Credential::Mint) if up.mint.is_none() => {
                    self.problem(
                        format!("{path}.credential"),
                        "mint needs mint_secret (ARES_UPSTREAM_JWT_SECRET)",
                    );
                    default
                }
                Some(c) => c,
                None => {
                    self.problem(
                        format!("{path}.credential"),
                        format!("must be none, passthrough or mint, got {text:?}"),
                    );
                    default
                }
            },
        };
    }

    pub(super) fn routes(&mut self, v: Value, upstreams: &[Arc<Upstream>]) -> RouteTable {
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
        let credential = self.route_credential(&f, target.as_ref(), path);
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
                credential,
                f.websocket,
                f.query_token,
            )
            .with_failure_policy(failure_policy),
        )
    }
}

impl Validator {
    /// A route's credential: its own `upstream_credential`, `forward_credentials: true`
    /// (passthrough), or its upstream's default.
    fn route_credential(
        &mut self,
        f: &RouteFile,
        target: Option<&Target>,
        path: &str,
    ) -> route::Credential {
        let upstream = match target {
            Some(Target::Upstream(u)) => Some(u),
            _ => None,
        };
        let own = match f.upstream_credential.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => match route::Credential::parse(text) {
                Some(c) => Some(c),
                None => {
                    self.problem(
                        format!("{path}.upstream_credential"),
                        format!("must be none, passthrough or mint, got {text:?}"),
                    );
                    None
                }
            },
        };
        if (own.is_some() || f.forward_credentials) && upstream.is_none() {
            self.problem(
                format!("{path}.upstream_credential"),
                "only upstream routes send credentials upstream",
            );
        }
        if own.is_some() && f.forward_credentials {
            self.problem(
                format!("{path}.forward_credentials"),
                "set upstream_credential or forward_credentials, not both",
            );
        }
        let credential = match (own, f.forward_credentials) {
            (Some(c), _) => c,
            (None, true) => route::Credential::Passthrough,
            (None, false) => upstream.map_or(route::Credential::None, |u| u.credential),
        };
        if credential == route::Credential::Mint && upstream.is_some_and(|u| u.mint.is_none()) {
            self.problem(
                format!("{path}.upstream_credential"),
                "mint needs the upstream's mint_secret (ARES_UPSTREAM_JWT_SECRET)",
            );
        }
        credential
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
