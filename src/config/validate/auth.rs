//! The `store:` and `auth:` sections, and the secrets they name.

use super::*;
use crate::config::keys::KeyPair;
use jsonwebtoken::Algorithm;

impl Validator {
    pub(in crate::config) fn store(&mut self, f: StoreFile) -> StoreConfig {
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
                    .clone()
                    .filter(|u| !u.trim().is_empty())
                    .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
                self.redis_url(&url);
                StoreBackend::Redis {
                    url: Secret::new(url),
                }
            }
            "postgres" => {
                let url = f.database_url.as_deref().map(str::trim).unwrap_or("");
                if url.is_empty() {
                    self.problem(
                        "store.database_url",
                        "ARES_STORE=postgres needs DATABASE_URL (ARES's PostgreSQL database)",
                    );
                } else if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                    // The URL may hold a password: name the rule, never the value.
                    self.problem(
                        "store.database_url",
                        "DATABASE_URL must start with postgres:// or postgresql://",
                    );
                }
                // REDIS_URL set as well: the counters live in Redis.
                let redis = f
                    .redis_url
                    .clone()
                    .filter(|u| !u.trim().is_empty())
                    .inspect(|u| self.redis_url(u))
                    .map(Secret::new);
                StoreBackend::Postgres {
                    url: Secret::new(url.to_string()),
                    redis,
                }
            }
            other => {
                self.problem(
                    "store.backend",
                    format!(
                        "ARES_STORE must be embedded, memory, redis or postgres, got {other:?}"
                    ),
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

    /// A Redis URL's scheme, checked (the URL itself may hold a password: never echoed).
    fn redis_url(&mut self, url: &str) {
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
            self.problem(
                "store.redis_url",
                "REDIS_URL must start with redis://, rediss://, redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://",
            );
        }
    }

    pub(in crate::config) fn secret_list(
        &mut self,
        v: Option<String>,
        path: &str,
        var: &str,
        min: usize,
    ) -> Vec<Secret> {
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

    /// Which algorithm signs the gateway's tokens and with which key (`ARES_JWT_ALGORITHM`,
    /// `ARES_JWT_PRIVATE_KEY_FILE`, `ARES_JWT_PREVIOUS_KEY_FILES`). Unnamed: HS256 where a
    /// secret is set, the key file's own algorithm where one is given, else (development) EdDSA
    /// with a generated key, which an embedded data directory already holding a generated HS256
    /// secret turns back into HS256 (`store::embedded::secrets`).
    /// `files`: `jwt_algorithm`, `jwt_private_key_file`, `jwt_previous_key_files`.
    fn signing(&mut self, files: [Option<&str>; 3], secret_set: bool, dev: bool) -> Signing {
        let [algorithm_name, key_file, previous_files] = files;
        let named = match algorithm_name.map(str::trim) {
            None | Some("") => None,
            Some(name) => match crate::config::keys::algorithm(name) {
                Some(a) => Some(a),
                None => {
                    self.problem(
                        "auth.jwt_algorithm",
                        "ARES_JWT_ALGORITHM must be HS256, EdDSA or ES256",
                    );
                    None
                }
            },
        };
        let file = key_file.map(str::trim).filter(|p| !p.is_empty());
        let key = file.and_then(|path| {
            let key = self.key_file(path, "auth.jwt_private_key_file", "ARES_JWT_PRIVATE_KEY_FILE")?;
            if !key.can_sign() {
                self.problem(
                    "auth.jwt_private_key_file",
                    format!("ARES_JWT_PRIVATE_KEY_FILE {path}: a public key cannot sign; give the PKCS#8 private key"),
                );
                return None;
            }
            Some(key)
        });
        let previous: Vec<KeyPair> = previous_files
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .filter_map(|path| {
                self.key_file(
                    path,
                    "auth.jwt_previous_key_files",
                    "ARES_JWT_PREVIOUS_KEY_FILES",
                )
            })
            .collect();
        let algorithm = match (named, &key) {
            (Some(a), _) => a,
            (None, Some(k)) => k.alg(),
            (None, None) if secret_set || !dev => Algorithm::HS256,
            (None, None) => Algorithm::EdDSA,
        };
        let mut generated = false;
        let key = match (algorithm, key) {
            (Algorithm::HS256, Some(_)) => {
                self.problem(
                    "auth.jwt_private_key_file",
                    "ARES_JWT_PRIVATE_KEY_FILE names a key pair, but ARES_JWT_ALGORITHM is HS256",
                );
                None
            }
            (Algorithm::HS256, None) => None,
            (a, Some(k)) if k.alg() != a => {
                self.problem(
                    "auth.jwt_private_key_file",
                    format!("ARES_JWT_PRIVATE_KEY_FILE holds a {:?} key, but ARES_JWT_ALGORITHM is {a:?}", k.alg()),
                );
                None
            }
            (_, Some(k)) => Some(k),
            (a, None) if dev => match KeyPair::generate(a) {
                Ok(k) => {
                    generated = true;
                    Some(k)
                }
                Err(e) => {
                    self.problem("auth.jwt_private_key_file", e);
                    None
                }
            },
            (a, None) => {
                if !self
                    .problems
                    .iter()
                    .any(|p| p.path == "auth.jwt_private_key_file")
                {
                    self.problem(
                        "auth.jwt_private_key_file",
                        format!("ARES_JWT_ALGORITHM is {a:?}: set ARES_JWT_PRIVATE_KEY_FILE (required with ARES_STORE=redis or postgres)"),
                    );
                }
                None
            }
        };
        Signing {
            algorithm,
            named: named.is_some(),
            key,
            generated,
            previous,
        }
    }

    /// A key read from `path`; a problem (naming the file, never its content) if it is none.
    fn key_file(&mut self, path: &str, at: &str, var: &str) -> Option<KeyPair> {
        let read = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read it: {}", e.kind()))
            .and_then(|text| KeyPair::from_pem(&text));
        match read {
            Ok(k) => Some(k),
            Err(e) => {
                self.problem(at, format!("{var} {path}: {e}"));
                None
            }
        }
    }

    pub(in crate::config) fn auth(&mut self, f: AuthFile, store: &StoreConfig) -> AuthConfig {
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
        let secret_set = f
            .jwt_secret
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty());
        let signing = self.signing(
            [
                f.jwt_algorithm.as_deref(),
                f.jwt_private_key_file.as_deref(),
                f.jwt_previous_key_files.as_deref(),
            ],
            secret_set,
            dev,
        );
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
                if dev || signing.algorithm != Algorithm::HS256 {
                    // Signs nothing unless HS256 does; never verifies with an asymmetric key.
                    jwt_secret_generated = true;
                } else if !self.problems.iter().any(|p| p.path == "auth.jwt_secret") {
                    self.problem(
                        "auth.jwt_secret",
                        "ARES_JWT_SECRET is not set: set it (HS256) or ARES_JWT_PRIVATE_KEY_FILE (EdDSA/ES256); one is required with ARES_STORE=redis or postgres",
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
            signing,
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
}
