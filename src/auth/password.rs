//! Password hashing: argon2id (m = 19 MiB, t = 2, p = 1, the OWASP minimum) as PHC strings.
//!
//! Hashing runs on the blocking pool behind a semaphore sized to the cores, so a login flood
//! queues here instead of starving the proxy's workers. An unknown email is verified against a
//! dummy hash so both failures cost the same time.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::error::GatewayError;

/// Password length bounds, in characters (Unicode scalar values, as JSON Schema's `minLength`
/// and `maxLength` count them): 1,024 characters are at most 4 KiB for argon2.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// Whether `pw` is longer than any password can be (checked before any hashing).
pub fn too_long(pw: &str) -> bool {
    // Past 4 bytes a character, no need to count.
    pw.len() > 4 * MAX_PASSWORD_CHARS || pw.chars().count() > MAX_PASSWORD_CHARS
}

/// A password from a request body: no `Debug` or `Display` that could print it.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

fn params() -> Params {
    // Constants within argon2's documented bounds; the fallback is never taken.
    Params::new(19 * 1024, 2, 1, None).unwrap_or_default()
}

fn argon() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
}

static COMMON: OnceLock<HashSet<&'static str>> = OnceLock::new();

/// Whether `pw` is one of the most common passwords (the list ships in the binary).
pub fn is_common(pw: &str) -> bool {
    let set = COMMON.get_or_init(|| include_str!("common-passwords.txt").lines().collect());
    set.contains(pw.to_lowercase().as_str())
}

/// Check a new password against the policy; the message never contains the password.
pub fn check_policy(pw: &str) -> Result<(), GatewayError> {
    if pw.chars().count() < MIN_PASSWORD_CHARS {
        return Err(GatewayError::invalid(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if too_long(pw) {
        return Err(GatewayError::invalid(format!(
            "password must be at most {MAX_PASSWORD_CHARS} characters"
        )));
    }
    if is_common(pw) {
        return Err(GatewayError::invalid(
            "password is too common; choose another",
        ));
    }
    Ok(())
}

pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    dummy: OnceLock<String>,
}

/// The result of a verification.
pub struct Verified {
    pub ok: bool,
    /// The stored hash uses other parameters: store a fresh one.
    pub rehash: Option<String>,
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> Self {
        let n = if concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            concurrency
        };
        PasswordHasher {
            permits: Arc::new(Semaphore::new(n)),
            dummy: OnceLock::new(),
        }
    }

    pub async fn hash(&self, pw: &Password) -> Result<String, GatewayError> {
        let pw = pw.expose().to_owned();
        self.blocking(move || hash_now(&pw)).await?
    }

    /// Verify against `stored`, or against a dummy hash when there is no such user.
    pub async fn verify(
        &self,
        pw: &Password,
        stored: Option<&str>,
    ) -> Result<Verified, GatewayError> {
        let known = stored.is_some();
        let stored = match stored {
            Some(s) => s.to_owned(),
            None => self.dummy_hash().to_owned(),
        };
        let pw = pw.expose().to_owned();
        self.blocking(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Ok(Verified {
                    ok: false,
                    rehash: None,
                });
            };
            let ok = argon().verify_password(pw.as_bytes(), &parsed).is_ok() && known;
            let current = Params::try_from(&parsed).ok();
            let outdated = parsed.algorithm.as_str() != "argon2id"
                || current.is_none_or(|p| {
                    p.m_cost() != params().m_cost()
                        || p.t_cost() != params().t_cost()
                        || p.p_cost() != params().p_cost()
                });
            let rehash = if ok && outdated {
                Some(hash_now(&pw)?)
            } else {
                None
            };
            Ok(Verified { ok, rehash })
        })
        .await?
    }

    fn dummy_hash(&self) -> &str {
        self.dummy
            .get_or_init(|| hash_now("dummy password for unknown accounts").unwrap_or_default())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, GatewayError> {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| GatewayError::Internal("password hasher closed".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| GatewayError::Internal(format!("password task failed: {e}")))
    }
}

fn hash_now(pw: &str) -> Result<String, GatewayError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| GatewayError::Internal(format!("hashing failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify_with_owasp_parameters() {
        let h = PasswordHasher::new(2);
        let pw = Password::new("correct horse battery staple");
        let phc = h.hash(&pw).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify(&pw, Some(&phc)).await.unwrap().ok);
        assert!(
            !h.verify(&Password::new("wrong horse"), Some(&phc))
                .await
                .unwrap()
                .ok
        );
        assert!(
            !h.verify(&pw, None).await.unwrap().ok,
            "unknown user never verifies"
        );
        assert!(!h.verify(&pw, Some("garbage")).await.unwrap().ok);
    }

    #[tokio::test]
    async fn outdated_parameters_are_rehashed_on_login() {
        let pw = Password::new("correct horse battery staple");
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        );
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let old = weak
            .hash_password(pw.expose().as_bytes(), &salt)
            .unwrap()
            .to_string();
        let v = PasswordHasher::new(1)
            .verify(&pw, Some(&old))
            .await
            .unwrap();
        assert!(v.ok);
        assert!(v.rehash.unwrap().contains("m=19456,t=2,p=1"));
    }

    #[test]
    fn policy() {
        assert!(check_policy("short").is_err());
        assert!(check_policy(&"x".repeat(1025)).is_err());
        assert!(check_policy("password").is_err());
        assert!(
            check_policy("PassWord1").is_err(),
            "common lists are case-insensitive"
        );
        assert!(check_policy("qwertyuiop").is_err());
        assert!(check_policy("your-secure-password").is_ok());
        assert!(check_policy("пароль-надёжный-1").is_ok(), "any Unicode");
    }

    #[test]
    fn debug_never_prints_the_password() {
        assert_eq!(
            format!("{:?}", Password::new("hunter22")),
            "Password(<redacted>)"
        );
    }
}
