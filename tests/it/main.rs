//! The integration tests, one binary (as ripgrep's `tests/` are): the suite links every
//! dependency once. Each module is a subject; `common` holds the harness (a recording upstream,
//! in-process gateways, the binary, Redis, PostgreSQL, a PKI, an OTLP collector).
//!
//! Run one subject: `cargo test --test it admin_api::`.

mod common;

mod admin_api;
mod admin_cli;
mod ares;
mod auth_api;
mod binary;
mod browser;
mod edge;
mod embedded_store;
mod hardening;
mod helm;
mod identity;
mod import_ares;
mod layering;
mod monitoring;
mod openapi;
mod ops;
mod postgres_store;
mod proxy;
mod ratelimit;
mod real_ares;
mod redis_store;
mod seed_clients;
mod shutdown;
mod tracing;
mod upstream_connections;
