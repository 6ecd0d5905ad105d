//! The `upstreams:` and `routes:` sections: the route table and what each route sends upstream.

use super::*;

impl Validator {
    /// An upstream minting with the gateway's key needs one: EdDSA or ES256, not HS256 (whose
    /// secret no upstream may hold as a public key).
    pub(in crate::config) fn mint_keys(&mut self, upstreams: &[Arc<Upstream>], auth: &AuthConfig) {
        for up in upstreams {
            let by_key = up
                .mint
                .as_ref()
                .is_some_and(|m| matches!(m.signing, route::MintSigning::GatewayKey));
            if by_key && auth.signing.key.is_none() {
                self.problem(
                    format!("upstreams.{}.mint_signing", up.name),
                    "gateway_key needs the gateway to sign with EdDSA or ES256 (ARES_JWT_ALGORITHM, ARES_JWT_PRIVATE_KEY_FILE)",
                );
            }
        }
    }

    pub(in crate::config) fn upstreams(&mut self, v: Value) -> Vec<Arc<Upstream>> {
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
    pub(in crate::config) fn upstream_credential(
        &mut self,
        up: &mut Upstream,
        file: &UpstreamFile,
        path: &str,
    ) {
        let secret = file.mint_secret.as_deref().map(str::trim).unwrap_or("");
        let signing = match file.mint_signing.as_deref().map(str::trim) {
            None | Some("") | Some("secret") => (!secret.is_empty())
                .then(|| route::MintSigning::Secret(Secret::new(secret.to_string()))),
            Some("gateway_key") => {
                if !secret.is_empty() {
                    self.problem(
                        format!("{path}.mint_secret"),
                        "mint_signing is gateway_key: the upstream verifies against the gateway's JWKS, so no mint_secret is needed (the value is not shown)",
                    );
                }
                Some(route::MintSigning::GatewayKey)
            }
            Some(other) => {
                self.problem(
                    format!("{path}.mint_signing"),
                    format!("must be secret or gateway_key, got {other:?}"),
                );
                None
            }
        };
        if let Some(signing) = signing {
            if matches!(signing, route::MintSigning::Secret(_))
                && secret.len() < MIN_JWT_SECRET_BYTES
            {
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
                signing,
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

    pub(in crate::config) fn routes(
        &mut self,
        v: Value,
        upstreams: &[Arc<Upstream>],
    ) -> RouteTable {
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

    pub(in crate::config) fn route(
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
                    HandlerFile::WellKnown => (Handler::WellKnown, AuthKind::None),
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
                    "set upstream (a name from upstreams) or handler (auth, admin, health, well_known)",
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
        let methods = self.methods(f.methods.as_deref(), &format!("{path}.methods"));
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
            .with_failure_policy(failure_policy)
            .with_methods(methods, f.exact),
        )
    }

    /// A route's credential: its own `upstream_credential`, `forward_credentials: true`
    /// (passthrough), or its upstream's default.
    pub(in crate::config) fn route_credential(
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

    /// A route's `methods`: names among those the gateway forwards, upper case, each once.
    pub(in crate::config) fn methods(
        &mut self,
        v: Option<&[String]>,
        path: &str,
    ) -> Option<(Vec<http::Method>, &'static str)> {
        const KNOWN: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
        let v = v?;
        let mut out: Vec<http::Method> = Vec::new();
        for m in v.iter().map(|m| m.trim()) {
            match KNOWN.iter().find(|k| **k == m) {
                Some(k) if !out.iter().any(|o| o.as_str() == *k) => {
                    out.push(http::Method::from_bytes(k.as_bytes()).unwrap_or(http::Method::GET))
                }
                Some(_) => self.problem(path, format!("{m} is listed twice")),
                None => self.problem(
                    path,
                    format!("{m:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                ),
            }
        }
        if out.is_empty() {
            self.problem(path, "list at least one method (or leave methods out)");
            return None;
        }
        let allow = out
            .iter()
            .map(http::Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Some((out, intern(allow)))
    }
}

/// One `'static` copy of each `Allow` value a config names (the 405 error carries a `&'static
/// str`): at most one per distinct method set, however often the config is reloaded.
fn intern(s: String) -> &'static str {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = seen.iter().find(|x| **x == s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.into_boxed_str());
    seen.push(leaked);
    leaked
}
