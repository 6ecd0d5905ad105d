//! Development secrets that outlive a restart: with the embedded store and no `ARES_ADMIN_SECRET`
//! or signing key, the gateway generates them once and keeps them in the data directory
//! (`secrets.json`, mode 0600), so sessions and the printed admin secret stay valid.
//!
//! The signing key of a new data directory is an Ed25519 key pair (`jwt_private_key`, PKCS#8
//! PEM). A data directory that already holds a generated HS256 secret (`jwt_secret`) keeps
//! signing with it unless `ARES_JWT_ALGORITHM` names another algorithm; a generated key of
//! another algorithm than the one named is kept as a previous key, so its tokens still verify.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::keys::KeyPair;
use crate::config::Config;
use crate::util::Secret;

pub const FILE_NAME: &str = "secrets.json";

#[derive(Default, Serialize, Deserialize)]
struct Kept {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwt_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwt_private_key: Option<String>,
    /// Generated keys that signed before another algorithm was named: they still verify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    jwt_previous_keys: Vec<String>,
}

/// Replace the secrets `cfg` generated with the ones kept in `dir`, keeping the new ones when
/// there are none yet. Returns true when the admin secret is new (it is then printed, once).
pub fn keep_generated(cfg: &mut Config, dir: &Path) -> Result<bool, String> {
    let auth = &mut cfg.auth;
    if !auth.admin_secret_generated && !auth.jwt_secret_generated && !auth.signing.generated {
        return Ok(false);
    }
    let path = dir.join(FILE_NAME);
    let mut kept: Kept = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{}: not a secrets file ({e}); move it aside to generate new secrets",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Kept::default(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut changed = false;
    let mut admin_is_new = false;
    if auth.admin_secret_generated {
        match &kept.admin_secret {
            Some(s) => auth.admin_secrets = vec![Secret::new(s.clone())],
            None => {
                if let Some(s) = auth.admin_secrets.first() {
                    kept.admin_secret = Some(s.expose().to_string());
                    changed = true;
                    admin_is_new = true;
                }
            }
        }
    }
    let signing = &mut auth.signing;
    if signing.generated && !signing.named && kept.jwt_secret.is_some() {
        // A data directory of before EdDSA: it keeps its HS256 sessions.
        signing.algorithm = jsonwebtoken::Algorithm::HS256;
        signing.key = None;
        signing.generated = false;
    }
    if !signing.generated {
        // A key generated before a secret or a key file was set: its tokens still verify.
        if let Some(pem) = &kept.jwt_private_key {
            if let Ok(k) = KeyPair::from_pem(pem) {
                signing.previous.push(k);
            }
        }
    }
    if signing.generated {
        let read = |pem: &String| {
            KeyPair::from_pem(pem).map_err(|e| format!("{}: jwt_private_key: {e}", path.display()))
        };
        let kept_key = kept.jwt_private_key.as_ref().map(read).transpose()?;
        for old in &kept.jwt_previous_keys {
            signing.previous.push(read(old)?);
        }
        match kept_key {
            Some(k) if k.alg() == signing.algorithm => signing.key = Some(k),
            other => {
                if let Some(old) = other {
                    // Another algorithm is named now: the old key still verifies.
                    if let Some(pem) = old.private_pem() {
                        kept.jwt_previous_keys.push(pem.expose().to_string());
                    }
                    signing.previous.push(old);
                }
                if let Some(pem) = signing.key.as_ref().and_then(|k| k.private_pem()) {
                    kept.jwt_private_key = Some(pem.expose().to_string());
                    changed = true;
                }
            }
        }
    }
    // The HS256 secret is kept only where it signs: kept beside a key pair, it would turn the
    // directory back to HS256 at the next start.
    if auth.jwt_secret_generated && auth.signing.algorithm == jsonwebtoken::Algorithm::HS256 {
        match &kept.jwt_secret {
            Some(s) => auth.jwt_secret = Secret::new(s.clone()),
            None => {
                kept.jwt_secret = Some(auth.jwt_secret.expose().to_string());
                changed = true;
            }
        }
    }
    if changed {
        write_private(dir, &path, &kept)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(admin_is_new)
}

/// Write `kept` to `path` atomically, readable by this user only.
fn write_private(dir: &Path, path: &Path, kept: &Kept) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    // The first thing written to a new data directory: it is created private, as the store
    // would create it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(kept).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;

    fn dev_config() -> Config {
        let yaml = "store:\n  backend: embedded\nroutes:\n  - prefix: /healthz\n    auth: none\n    handler: health\n";
        Config::from_yaml(yaml, &|_| None).unwrap()
    }

    #[test]
    fn generated_secrets_are_kept_once_and_reused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let dir = dir.as_path();
        let mut first = dev_config();
        assert!(first.auth.admin_secret_generated && first.auth.signing.generated);
        assert!(keep_generated(&mut first, dir).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let dir_mode = std::fs::metadata(dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700, "a new data directory is private");
        let kid = |c: &Config| c.auth.signing.key.as_ref().unwrap().kid().to_string();
        assert_eq!(
            first.auth.signing.algorithm,
            Algorithm::EdDSA,
            "a new directory"
        );
        let mut second = dev_config();
        assert_ne!(kid(&second), kid(&first));
        assert!(!keep_generated(&mut second, dir).unwrap());
        assert_eq!(kid(&second), kid(&first), "the same key after a restart");
        assert_eq!(
            second.auth.admin_secrets[0].expose(),
            first.auth.admin_secrets[0].expose()
        );
        let mode = std::fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let kept: Kept =
            serde_json::from_slice(&std::fs::read(dir.join(FILE_NAME)).unwrap()).unwrap();
        assert!(
            kept.jwt_secret.is_none(),
            "no HS256 secret beside the key: it would turn the directory back to HS256"
        );
        // ES256 named later: a new key signs, the generated EdDSA one still verifies.
        let yaml = "store:\n  backend: embedded\nauth:\n  jwt_algorithm: ES256\nroutes:\n  - prefix: /healthz\n    auth: none\n    handler: health\n";
        let mut third = Config::from_yaml(yaml, &|_| None).unwrap();
        keep_generated(&mut third, dir).unwrap();
        assert_eq!(third.auth.signing.algorithm, Algorithm::ES256);
        assert_eq!(third.auth.signing.previous.len(), 1);
        assert_eq!(third.auth.signing.previous[0].kid(), kid(&first));
        let mut fourth = Config::from_yaml(yaml, &|_| None).unwrap();
        keep_generated(&mut fourth, dir).unwrap();
        assert_eq!(kid(&fourth), kid(&third));
        assert_eq!(fourth.auth.signing.previous[0].kid(), kid(&first));
    }

    #[test]
    fn a_data_directory_of_before_eddsa_keeps_signing_hs256_with_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let old = Kept {
            jwt_secret: Some("kept-hs256-secret-0123456789abcdef0123".into()),
            ..Kept::default()
        };
        write_private(dir.path(), &dir.path().join(FILE_NAME), &old).unwrap();
        let mut cfg = dev_config();
        keep_generated(&mut cfg, dir.path()).unwrap();
        assert_eq!(cfg.auth.signing.algorithm, Algorithm::HS256);
        assert!(cfg.auth.signing.key.is_none());
        assert_eq!(
            cfg.auth.jwt_secret.expose(),
            "kept-hs256-secret-0123456789abcdef0123"
        );
    }

    #[test]
    fn a_damaged_secrets_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let err = keep_generated(&mut dev_config(), dir.path()).unwrap_err();
        assert!(err.contains(FILE_NAME), "{err}");
    }
}
