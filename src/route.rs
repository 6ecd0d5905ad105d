//! Path normalisation and the route table: which credential rule and which target a request gets.
//!
//! Classification runs on the *normalised* path, and the normalised path is what is forwarded, so
//! the upstream never sees a path that another route's rule would have classified differently.
//! Prefixes match whole segments: `/api/admin` matches `/api/admin` and `/api/admin/x`, never
//! `/api/administrator`.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use std::path::PathBuf;
use std::time::Duration;

use crate::ratelimit::FailurePolicy;

pub mod readings;

/// Why a path was refused before routing (400 `INVALID_INPUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("path climbs above the root")]
    AboveRoot,
    #[error("path holds an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("path holds a backslash")]
    Backslash,
    #[error("path holds a control character")]
    ControlCharacter,
    #[error("path holds a malformed percent-encoding")]
    BadPercentEncoding,
}

/// Normalise a request path: decode percent-encoded unreserved characters, collapse duplicate
/// slashes, resolve `.` and `..`; refuse the encodings that let a path mean one thing here and
/// another upstream. A trailing slash is kept.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let clean = !bytes.windows(2).any(|w| w == b"//" || w == b"/.")
        && !bytes
            .iter()
            .any(|&b| b == b'%' || b == b'\\' || !(0x20..0x7f).contains(&b));
    if clean {
        return Ok(Cow::Borrowed(path));
    }

    // Decode what may be decoded; keep everything else exactly as encoded (upper-case hex).
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(PathError::BadPercentEncoding)?;
                let v = hex_pair(hex).ok_or(PathError::BadPercentEncoding)?;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        decoded.push(v as char)
                    }
                    _ => {
                        decoded.push('%');
                        decoded.push(hex[0].to_ascii_uppercase() as char);
                        decoded.push(hex[1].to_ascii_uppercase() as char);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            0x80..=0xff => {
                // `http::Uri` lets raw non-ASCII bytes through; forward them percent-encoded so
                // the path stays ASCII and normalising is idempotent (found by fuzzing).
                decoded.push('%');
                decoded.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
                decoded.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
                i += 1;
            }
            _ => {
                decoded.push(b as char);
                i += 1;
            }
        }
    }

    remove_dot_segments(&decoded, false).map(Cow::Owned)
}

/// RFC 3986 remove_dot_segments over a decoded path, empty segments dropped: a final `.` or `..`
/// leaves a directory path, a trailing slash is kept. A `..` above the root is `AboveRoot`, or
/// with `clamp` stays at the root (how a lenient upstream reads it: `route::readings`).
fn remove_dot_segments(decoded: &str, clamp: bool) -> Result<String, PathError> {
    let last = decoded.rsplit('/').next().unwrap_or("");
    let trailing = decoded.ends_with('/') || last == "." || last == "..";
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() && !clamp {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

fn hex_pair(h: &[u8]) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    Some(d(h[0])? << 4 | d(h[1])?)
}

/// Which credential a route demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    None,
    ApiKey,
    Jwt,
    Admin,
}

impl AuthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::None => "none",
            AuthKind::ApiKey => "api_key",
            AuthKind::Jwt => "jwt",
            AuthKind::Admin => "admin",
        }
    }

    /// Routes whose credential travels as `Authorization: Bearer`.
    pub fn is_bearer(self) -> bool {
        matches!(self, AuthKind::ApiKey | AuthKind::Jwt)
    }
}

/// Endpoints the gateway serves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `/api/auth/*`: register, login, refresh, logout, me.
    Auth,
    /// `/api/admin/tenants*`, `/api/admin/provision-client`.
    Admin,
    /// `/healthz`, `/readyz`.
    Health,
    /// `/.well-known/jwks.json`, `/.well-known/openid-configuration`.
    WellKnown,
}

impl Handler {
    pub fn as_str(self) -> &'static str {
        match self {
            Handler::Auth => "auth",
            Handler::Admin => "admin",
            Handler::Health => "health",
            Handler::WellKnown => "well_known",
        }
    }
}

/// Where an authorised request goes.
#[derive(Debug, Clone)]
pub enum Target {
    Upstream(Arc<Upstream>),
    Handler(Handler),
}

/// What a proxied request carries to the upstream in `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Nothing: the client's `Authorization` and `X-Admin-Secret` are removed.
    None,
    /// The client's own `Authorization` and `X-Admin-Secret`, as sent.
    Passthrough,
    /// A short-lived token the gateway mints with the upstream's secret (`auth::mint`); the
    /// client's credentials are removed.
    Mint,
}

impl Credential {
    pub fn parse(s: &str) -> Option<Credential> {
        match s.trim() {
            "none" => Some(Credential::None),
            "passthrough" => Some(Credential::Passthrough),
            "mint" => Some(Credential::Mint),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Credential::None => "none",
            Credential::Passthrough => "passthrough",
            Credential::Mint => "mint",
        }
    }
}

/// What signs an upstream's minted tokens.
#[derive(Clone)]
pub enum MintSigning {
    /// The upstream's HS256 secret (ARES's `JWT_SECRET`).
    Secret(crate::util::Secret),
    /// The gateway's own EdDSA/ES256 signing key: the upstream verifies against the gateway's
    /// JWKS (a newer ARES with `ERUKA_JWKS_URL`), and holds no secret of the gateway's.
    GatewayKey,
}

impl fmt::Debug for MintSigning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MintSigning::Secret(s) => f.debug_tuple("Secret").field(s).finish(),
            MintSigning::GatewayKey => f.write_str("GatewayKey"),
        }
    }
}

/// How an upstream's tokens are minted (`credential: mint`).
#[derive(Clone)]
pub struct MintConfig {
    pub signing: MintSigning,
    pub ttl_secs: u64,
    /// Static claims of every token (never one the gateway sets itself).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl MintConfig {
    /// The claims the gateway sets itself (`auth::mint`); static claims may not replace them.
    pub const RESERVED_CLAIMS: [&'static str; 10] = [
        "iss",
        "sub",
        "email",
        "iat",
        "exp",
        "auth_method",
        "tenant_id",
        "tier",
        "key_id",
        "token_use",
    ];
}

impl fmt::Debug for MintConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintConfig")
            .field("signing", &self.signing)
            .field("ttl_secs", &self.ttl_secs)
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The prefix as configured (normalised), for display and logs.
    pub prefix: String,
    /// The prefix as a metric label, so metrics and logs need no copy or lookup per request.
    pub label: crate::metrics::Label,
    /// The prefix without its trailing slash (`""` for `/`): the segment-boundary match base.
    base: String,
    pub auth: AuthKind,
    pub target: Target,
    /// Replaces `base` in the forwarded path (also without trailing slash).
    upstream_base: Option<String>,
    /// Keys need this scope (or `full`).
    pub required_scope: Option<String>,
    /// What the upstream receives in `Authorization` (and whether `X-Admin-Secret` reaches it).
    pub credential: Credential,
    /// Whether WebSocket upgrades pass through.
    pub websocket: bool,
    /// Whether an `access_token` query parameter may stand in for the header (EventSource).
    pub query_token: bool,
    /// What the limiter does on this route when the store fails (else the global policy).
    pub failure_policy: Option<FailurePolicy>,
    /// The methods the route takes, and their `Allow` header; `None`: every forwarded method.
    pub methods: Option<(Vec<http::Method>, &'static str)>,
    /// The route is its prefix's own path only (`/api/agents`, not `/api/agents/x`).
    pub exact: bool,
}

impl Route {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        prefix: String,
        auth: AuthKind,
        target: Target,
        upstream_prefix: Option<String>,
        required_scope: Option<String>,
        credential: Credential,
        websocket: bool,
        query_token: bool,
    ) -> Self {
        Route {
            label: crate::metrics::get().route_label(&prefix),
            base: strip_trailing_slash(&prefix).to_owned(),
            upstream_base: upstream_prefix.map(|p| strip_trailing_slash(&p).to_owned()),
            prefix,
            auth,
            target,
            required_scope,
            credential,
            websocket,
            query_token,
            failure_policy: None,
            methods: None,
            exact: false,
        }
    }

    /// This route with its own failure policy.
    pub fn with_failure_policy(mut self, policy: Option<FailurePolicy>) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Only `methods` (with `allow`, their `Allow` header), and with `exact`, only the prefix's
    /// own path.
    pub fn with_methods(
        mut self,
        methods: Option<(Vec<http::Method>, &'static str)>,
        exact: bool,
    ) -> Self {
        self.methods = methods;
        self.exact = exact;
        self
    }

    /// Whether the route takes `method` (else the `Allow` header of a 405).
    pub fn allows(&self, method: &http::Method) -> Result<(), &'static str> {
        match &self.methods {
            Some((methods, allow)) if !methods.contains(method) => Err(allow),
            _ => Ok(()),
        }
    }

    /// Whether `path` (normalised) lies under this route, on a segment boundary (or is its own
    /// path exactly, for an `exact` route).
    pub fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.base.as_str()) {
            Some(rest) if self.exact => rest.is_empty() || rest == "/",
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// The path to send upstream for a normalised `path` this route matched.
    pub fn forward_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        match &self.upstream_base {
            None => Cow::Borrowed(path),
            Some(up) => {
                let rest = &path[self.base.len().min(path.len())..];
                let mut out = String::with_capacity(up.len() + rest.len() + 1);
                out.push_str(up);
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                Cow::Owned(out)
            }
        }
    }

    pub fn target_name(&self) -> String {
        match &self.target {
            Target::Upstream(u) => format!("upstream {}", u.name),
            Target::Handler(h) => format!("handler {}", h.as_str()),
        }
    }
}

fn strip_trailing_slash(p: &str) -> &str {
    p.strip_suffix('/').unwrap_or(p)
}

/// Routes ordered longest base first, so the first match is the longest prefix.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.base.len()));
        RouteTable { routes }
    }

    /// The route for a normalised path, if any.
    pub fn classify(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path))
    }

    /// Whether another reading of `path` that a further-normalising upstream could make
    /// ([`readings`]: case, `;parameters`, a second percent-decoding, overlong or invalid UTF-8,
    /// NFKC, trailing dots and spaces, each alone and combined) lands on a route with another
    /// credential rule than `route`, the one it was classified to. Such a path could reach an
    /// upstream's admin route under a user's token (`/api/x/..;/admin/…`, `/api/%2561dmin/…`),
    /// so the pipeline refuses it. Free for the usual path: one scan finds nothing to read.
    pub fn is_ambiguous(&self, path: &str, route: &Route) -> bool {
        if !readings::may_read_otherwise(path) {
            return false;
        }
        readings::readings(path)
            .iter()
            .filter_map(|reading| self.classify(reading))
            .any(|other| other.auth != route.auth)
    }

    /// The longest upstream route for `path`: where a gateway-served path that its handler does
    /// not implement goes (the admin API's other paths, to the upstream's own admin routes).
    pub fn classify_upstream(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| matches!(r.target, Target::Upstream(_)) && r.matches(path))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

impl fmt::Display for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<32} {:<8} {:<22} {:<18} {:<7} {:<5} upstream_credential",
            "prefix", "auth", "target", "upstream_prefix", "scope", "ws"
        )?;
        for r in &self.routes {
            let up = r
                .upstream_base
                .as_ref()
                .map(|b| format!("{b}/"))
                .unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "{:<32} {:<8} {:<22} {:<18} {:<7} {:<5} {}",
                r.prefix,
                r.auth.as_str(),
                r.target_name(),
                up,
                r.required_scope.as_deref().unwrap_or("-"),
                if r.websocket { "yes" } else { "no" },
                match &r.target {
                    Target::Upstream(_) => r.credential.as_str(),
                    Target::Handler(_) => "-",
                },
            )?;
        }
        Ok(())
    }
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
    /// What this upstream's routes send in `Authorization` unless a route says.
    pub credential: Credential,
    /// Set when the upstream takes minted tokens.
    pub mint: Option<MintConfig>,
}

/// An upstream's timeouts and pool size: the config layer decides them (its table of named
/// defaults, `config::defaults::upstream_timeouts`, or the file's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub pool_idle: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Upstream {
    /// An upstream at `url` with the given timeouts (the rest from the config).
    pub fn parse(name: &str, url: &str, timeouts: UpstreamTimeouts) -> Result<Self, String> {
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
            connect_timeout: timeouts.connect,
            first_byte_timeout: timeouts.first_byte,
            idle_timeout: timeouts.idle,
            pool_idle_timeout: timeouts.pool_idle,
            pool_max_idle_per_host: timeouts.pool_max_idle_per_host,
            ca_file: None,
            credential: Credential::None,
            mint: None,
        })
    }
}

#[cfg(test)]
mod tests;
