//! Every numeric setting's default and bounds, in one table: the validator reads them from here,
//! `gateway.yaml` writes the same defaults (a test checks the shipped file against this table),
//! and the tables of docs/configuration.md name them. `*` stands for a name (`upstreams.default.…`).

/// A numeric key of `gateway.yaml`: what an absent value means, and what is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub key: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
}

pub const SERVER_WORKERS: Bound = Bound {
    key: "server.workers",
    default: 0,
    min: 0,
    max: 1024,
};
pub const SERVER_MAX_CONNECTIONS: Bound = Bound {
    key: "server.max_connections",
    default: 10_000,
    min: 1,
    max: 1_000_000,
};
pub const SERVER_HEADER_READ_TIMEOUT_SECS: Bound = Bound {
    key: "server.header_read_timeout_secs",
    default: 10,
    min: 1,
    max: 300,
};
pub const SERVER_MAX_HEADER_BYTES: Bound = Bound {
    key: "server.max_header_bytes",
    default: 64 * 1024,
    min: 8192,
    max: 1 << 20,
};
pub const SERVER_MAX_REQUEST_TARGET_BYTES: Bound = Bound {
    key: "server.max_request_target_bytes",
    default: 8 * 1024,
    min: 256,
    max: 64 * 1024,
};
pub const SERVER_MAX_HEADERS: Bound = Bound {
    key: "server.max_headers",
    default: 100,
    min: 16,
    max: 1000,
};
pub const SERVER_REQUEST_BODY_LIMIT_BYTES: Bound = Bound {
    key: "server.request_body_limit_bytes",
    default: 10 << 20,
    min: 1,
    max: 1 << 40,
};
pub const SERVER_JSON_BODY_LIMIT_BYTES: Bound = Bound {
    key: "server.json_body_limit_bytes",
    default: 64 * 1024,
    min: 1024,
    max: 1 << 20,
};
pub const SERVER_SHUTDOWN_GRACE_SECS: Bound = Bound {
    key: "server.shutdown_grace_secs",
    default: 30,
    min: 0,
    max: 3600,
};
pub const SERVER_TLS_HANDSHAKE_TIMEOUT_SECS: Bound = Bound {
    key: "server.tls_handshake_timeout_secs",
    default: 10,
    min: 1,
    max: 120,
};
pub const SERVER_TLS_RELOAD_POLL_SECS: Bound = Bound {
    key: "server.tls_reload_poll_secs",
    default: 10,
    min: 1,
    max: 3600,
};
pub const SERVER_WEBSOCKET_IDLE_TIMEOUT_SECS: Bound = Bound {
    key: "server.websocket_idle_timeout_secs",
    default: 300,
    min: 1,
    max: 86_400,
};
pub const SERVER_CONFIG_RELOAD_POLL_SECS: Bound = Bound {
    key: "server.config_reload_poll_secs",
    default: 5,
    min: 1,
    max: 3600,
};
pub const SERVER_HTTP2_MAX_CONCURRENT_STREAMS: Bound = Bound {
    key: "server.http2_max_concurrent_streams",
    default: 256,
    min: 1,
    max: 10_000,
};
/// Request headers every allowed page may send: W3C trace context too, so fetch
/// instrumentation (OpenTelemetry) does not get every request blocked.
pub const CORS_ALLOW_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "x-admin-secret",
    "x-request-id",
    "x-requested-with",
    "traceparent",
    "tracestate",
];
/// Response headers every allowed page may read.
pub const CORS_EXPOSE_HEADERS: &[&str] = &[
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
    "x-request-id",
    "www-authenticate",
];

pub const STORE_COMMAND_TIMEOUT_MS: Bound = Bound {
    key: "store.command_timeout_ms",
    default: 300,
    min: 10,
    max: 60_000,
};
pub const STORE_API_KEY_CACHE_TTL_SECS: Bound = Bound {
    key: "store.api_key_cache_ttl_secs",
    default: 30,
    min: 0,
    max: 3600,
};
pub const STORE_EMBEDDED_CACHE_MB: Bound = Bound {
    key: "store.embedded_cache_mb",
    default: 64,
    min: 1,
    max: 65_536,
};
pub const STORE_MIN_FREE_DISK_MB: Bound = Bound {
    key: "store.min_free_disk_mb",
    default: 64,
    min: 0,
    max: 1_048_576,
};
pub const STORE_AUDIT_RETENTION_DAYS: Bound = Bound {
    key: "store.audit_retention_days",
    default: 90,
    min: 1,
    max: 3650,
};
pub const AUTH_JWT_LEEWAY_SECS: Bound = Bound {
    key: "auth.jwt_leeway_secs",
    default: 30,
    min: 0,
    max: 60,
};
pub const AUTH_ACCESS_TOKEN_TTL_SECS: Bound = Bound {
    key: "auth.access_token_ttl_secs",
    default: 900,
    min: 60,
    max: 86_400,
};
pub const AUTH_REFRESH_TOKEN_TTL_SECS: Bound = Bound {
    key: "auth.refresh_token_ttl_secs",
    default: 7 * 86_400,
    min: 300,
    max: 365 * 86_400,
};
pub const AUTH_REFRESH_REUSE_GRACE_SECS: Bound = Bound {
    key: "auth.refresh_reuse_grace_secs",
    default: 5,
    min: 0,
    max: 60,
};
pub const AUTH_PASSWORD_HASH_CONCURRENCY: Bound = Bound {
    key: "auth.password_hash_concurrency",
    default: 0,
    min: 0,
    max: 256,
};
pub const RATE_LIMITS_REPLICAS: Bound = Bound {
    key: "rate_limits.replicas",
    default: 1,
    min: 1,
    max: 1000,
};
pub const RATE_LIMITS_LEASE_REQUESTS: Bound = Bound {
    key: "rate_limits.lease_requests",
    default: 0,
    min: 0,
    max: 10_000,
};
pub const RATE_LIMITS_LEASE_MS: Bound = Bound {
    key: "rate_limits.lease_ms",
    default: 1000,
    min: 10,
    max: 60_000,
};
pub const UPSTREAM_CONNECT_TIMEOUT_MS: Bound = Bound {
    key: "upstreams.*.connect_timeout_ms",
    default: 2000,
    min: 10,
    max: 60_000,
};
pub const UPSTREAM_FIRST_BYTE_TIMEOUT_SECS: Bound = Bound {
    key: "upstreams.*.first_byte_timeout_secs",
    default: 60,
    min: 1,
    max: 3600,
};
pub const UPSTREAM_IDLE_TIMEOUT_SECS: Bound = Bound {
    key: "upstreams.*.idle_timeout_secs",
    default: 300,
    min: 1,
    max: 86_400,
};
pub const UPSTREAM_POOL_IDLE_TIMEOUT_SECS: Bound = Bound {
    key: "upstreams.*.pool_idle_timeout_secs",
    default: 90,
    min: 1,
    max: 3600,
};
pub const UPSTREAM_POOL_MAX_IDLE_PER_HOST: Bound = Bound {
    key: "upstreams.*.pool_max_idle_per_host",
    default: 256,
    min: 0,
    max: 100_000,
};
pub const UPSTREAM_MINT_TTL_SECS: Bound = Bound {
    key: "upstreams.*.mint_ttl_secs",
    default: 60,
    min: 10,
    max: 3600,
};

pub const SERVER_REQUEST_BODY_GRACE_SECS: Bound = Bound {
    key: "server.request_body_grace_secs",
    default: 20,
    min: 1,
    max: 3600,
};
pub const SERVER_REQUEST_BODY_MIN_RATE_BYTES: Bound = Bound {
    key: "server.request_body_min_rate_bytes",
    default: 500,
    min: 0,
    max: 1 << 30,
};
pub const TRACING_MAX_QUEUE_SIZE: Bound = Bound {
    key: "tracing.max_queue_size",
    default: 2048,
    min: 64,
    max: 1_000_000,
};
pub const TRACING_SCHEDULE_DELAY_MS: Bound = Bound {
    key: "tracing.schedule_delay_ms",
    default: 5_000,
    min: 10,
    max: 600_000,
};
pub const TRACING_EXPORT_TIMEOUT_MS: Bound = Bound {
    key: "tracing.export_timeout_ms",
    default: 10_000,
    min: 100,
    max: 120_000,
};

/// The whole table, in file order.
pub const ALL: &[Bound] = &[
    SERVER_WORKERS,
    SERVER_MAX_CONNECTIONS,
    SERVER_HEADER_READ_TIMEOUT_SECS,
    SERVER_MAX_HEADER_BYTES,
    SERVER_MAX_HEADERS,
    SERVER_REQUEST_BODY_LIMIT_BYTES,
    SERVER_JSON_BODY_LIMIT_BYTES,
    SERVER_SHUTDOWN_GRACE_SECS,
    SERVER_TLS_HANDSHAKE_TIMEOUT_SECS,
    SERVER_TLS_RELOAD_POLL_SECS,
    SERVER_WEBSOCKET_IDLE_TIMEOUT_SECS,
    SERVER_CONFIG_RELOAD_POLL_SECS,
    SERVER_HTTP2_MAX_CONCURRENT_STREAMS,
    SERVER_REQUEST_BODY_GRACE_SECS,
    SERVER_REQUEST_BODY_MIN_RATE_BYTES,
    TRACING_MAX_QUEUE_SIZE,
    TRACING_SCHEDULE_DELAY_MS,
    TRACING_EXPORT_TIMEOUT_MS,
    STORE_COMMAND_TIMEOUT_MS,
    STORE_API_KEY_CACHE_TTL_SECS,
    STORE_EMBEDDED_CACHE_MB,
    STORE_MIN_FREE_DISK_MB,
    STORE_AUDIT_RETENTION_DAYS,
    AUTH_JWT_LEEWAY_SECS,
    AUTH_ACCESS_TOKEN_TTL_SECS,
    AUTH_REFRESH_TOKEN_TTL_SECS,
    AUTH_REFRESH_REUSE_GRACE_SECS,
    AUTH_PASSWORD_HASH_CONCURRENCY,
    RATE_LIMITS_REPLICAS,
    UPSTREAM_CONNECT_TIMEOUT_MS,
    UPSTREAM_FIRST_BYTE_TIMEOUT_SECS,
    UPSTREAM_IDLE_TIMEOUT_SECS,
    UPSTREAM_POOL_IDLE_TIMEOUT_SECS,
    UPSTREAM_POOL_MAX_IDLE_PER_HOST,
    UPSTREAM_MINT_TTL_SECS,
];

/// An upstream's timeouts when its file says nothing.
pub fn upstream_timeouts() -> crate::route::UpstreamTimeouts {
    use std::time::Duration;
    crate::route::UpstreamTimeouts {
        connect: Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS.default),
        first_byte: Duration::from_secs(UPSTREAM_FIRST_BYTE_TIMEOUT_SECS.default),
        idle: Duration::from_secs(UPSTREAM_IDLE_TIMEOUT_SECS.default),
        pool_idle: Duration::from_secs(UPSTREAM_POOL_IDLE_TIMEOUT_SECS.default),
        pool_max_idle_per_host: UPSTREAM_POOL_MAX_IDLE_PER_HOST.default as usize,
    }
}
