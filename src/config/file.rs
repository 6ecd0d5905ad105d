//! `gateway.yaml` as written: serde types that refuse unknown keys. Nothing here is checked
//! beyond its shape; `validate.rs` turns these into the types request code sees.

use serde::Deserialize;

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
    pub request_body_grace_secs: Option<Num>,
    pub request_body_min_rate_bytes: Option<Num>,
    pub max_header_bytes: Option<Num>,
    pub max_headers: Option<Num>,
    pub max_request_target_bytes: Option<Num>,
    pub request_body_limit_bytes: Option<Num>,
    pub json_body_limit_bytes: Option<Num>,
    pub shutdown_grace_secs: Option<Num>,
    pub trusted_proxies: Option<Vec<String>>,
    /// Comma-separated IPs or CIDRs allowed to reach admin routes; empty: any.
    pub admin_allow_cidrs: Option<String>,
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
    pub data_dir: Option<String>,
    pub embedded_cache_mb: Option<Num>,
    pub min_free_disk_mb: Option<Num>,
    pub audit_retention_days: Option<Num>,
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
    pub key_prefix: Option<String>,
    pub command_timeout_ms: Option<Num>,
    pub api_key_cache_ttl_secs: Option<Num>,
    pub legacy_revocations: Option<Flag>,
}

/// `cors:`: what browsers may send and read, beyond the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    pub allow_headers: Option<String>,
    pub expose_headers: Option<String>,
}

/// `tracing:`: OTLP trace export (each key falls back to its standard `OTEL_*` variable).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub service_name: Option<String>,
    pub sampler: Option<String>,
    pub sampler_arg: Option<String>,
    pub max_queue_size: Option<Num>,
    pub schedule_delay_ms: Option<Num>,
    pub export_timeout_ms: Option<Num>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub admin_secrets: Option<String>,
    pub jwt_secret: Option<String>,
    pub jwt_previous_secrets: Option<String>,
    /// HS256, EdDSA or ES256 (unset: HS256 where a secret is set, else EdDSA).
    pub jwt_algorithm: Option<String>,
    /// PKCS#8 PEM signing key for EdDSA/ES256.
    pub jwt_private_key_file: Option<String>,
    /// Older keys (private or public PEM) that still verify, comma-separated.
    pub jwt_previous_key_files: Option<String>,
    pub jwt_issuer: Option<String>,
    /// Other issuers whose tokens verify (comma-separated), e.g. during a migration.
    pub jwt_accepted_issuers: Option<String>,
    pub accept_tokens_without_issuer: Option<Flag>,
    pub cookies: Option<Flag>,
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
    pub lease_requests: Option<Num>,
    pub lease_ms: Option<Num>,
    pub user: Option<PlanFile>,
    pub auth_ip: Option<PlanFile>,
    pub login_failures_per_account_ip: Option<PlanFile>,
    pub login_failures_per_account: Option<PlanFile>,
    pub api_key_failures_per_ip: Option<PlanFile>,
    pub admin_failures_per_ip: Option<PlanFile>,
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
    /// `none | passthrough | mint`: what the upstream receives in `Authorization` on routes
    /// that do not say (default: `mint` when `mint_secret` is set, else `none`).
    pub credential: Option<String>,
    /// HS256 secret of the upstream (ARES's `JWT_SECRET`) for minted tokens.
    pub mint_secret: Option<String>,
    /// `secret` (HS256 with `mint_secret`, the default) or `gateway_key`: signed with the
    /// gateway's EdDSA/ES256 key, verified upstream against `/.well-known/jwks.json`.
    pub mint_signing: Option<String>,
    pub mint_ttl_secs: Option<Num>,
    /// Static claims added to every minted token, e.g. `roles: {ares: [user]}`.
    pub mint_claims: Option<serde_yaml::Value>,
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
    /// `none | passthrough | mint`; overrides the upstream's `credential`.
    pub upstream_credential: Option<String>,
    #[serde(default)]
    pub websocket: bool,
    #[serde(default)]
    pub query_token: bool,
    /// `open | closed | local`: overrides `rate_limits.failure_policy` on this route.
    pub failure_policy: Option<String>,
    /// The methods the route takes (others are 405 with `Allow`); absent: every method the
    /// gateway forwards.
    pub methods: Option<Vec<String>>,
    /// Only the prefix's own path, not the paths under it.
    #[serde(default)]
    pub exact: bool,
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
    WellKnown,
}

pub(super) const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "cors",
    "tracing",
    "store",
    "auth",
    "rate_limits",
    "plans",
    "upstreams",
    "routes",
];
