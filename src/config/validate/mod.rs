//! Turning the file types into the validated [`Config`](super::Config) parts: every bad field is
//! reported with its key path (all of them, not the first), and nothing here panics. Defaults and
//! bounds come from `defaults.rs`. One file per section of the config file:
//!
//! ```text
//! server.rs   server, cors, tracing
//! auth.rs     store, auth (secrets, JWT, cookies)
//! limits.rs   plans, rate_limits
//! routes.rs   upstreams, routes
//! ```

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

mod auth;
mod limits;
mod routes;
mod server;

/// Collects problems while turning file types into runtime types.
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
}

impl Validator {
    pub(in crate::config) fn problem(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(in crate::config) fn num(
        &mut self,
        v: &Option<Num>,
        path: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
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
    pub(in crate::config) fn bounded(&mut self, v: &Option<Num>, d: &Bound) -> u64 {
        self.num(v, d.key, d.default, d.min, d.max)
    }

    /// As `bounded`, for a key under a named item (`upstreams.<name>.…`).
    pub(in crate::config) fn bounded_at(&mut self, v: &Option<Num>, path: &str, d: &Bound) -> u64 {
        self.num(v, path, d.default, d.min, d.max)
    }

    pub(in crate::config) fn flag(&mut self, v: &Option<Flag>, path: &str, default: bool) -> bool {
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

    pub(in crate::config) fn addr(
        &mut self,
        v: &Option<String>,
        path: &str,
        default: &str,
    ) -> Option<SocketAddr> {
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
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
