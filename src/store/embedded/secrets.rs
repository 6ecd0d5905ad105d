//! Development secrets that outlive a restart: with the embedded store and no `ARES_ADMIN_SECRET`
//! or `ARES_JWT_SECRET`, the gateway generates them once and keeps them in the data directory
//! (`secrets.json`, mode 0600), so sessions and the printed admin secret stay valid.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::util::Secret;

pub const FILE_NAME: &str = "secrets.json";

#[derive(Default, Serialize, Deserialize)]
struct Kept {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwt_secret: Option<String>,
}

/// Replace the secrets `cfg` generated with the ones kept in `dir`, keeping the new ones when
/// there are none yet. Returns true when the admin secret is new (it is then printed, once).
pub fn keep_generated(cfg: &mut Config, dir: &Path) -> Result<bool, String> {
    let auth = &mut cfg.auth;
    if !auth.admin_secret_generated && !auth.jwt_secret_generated {
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
    if auth.jwt_secret_generated {
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
        assert!(first.auth.admin_secret_generated && first.auth.jwt_secret_generated);
        assert!(keep_generated(&mut first, dir).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let dir_mode = std::fs::metadata(dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700, "a new data directory is private");
        let mut second = dev_config();
        assert_ne!(
            second.auth.jwt_secret.expose(),
            first.auth.jwt_secret.expose()
        );
        assert!(!keep_generated(&mut second, dir).unwrap());
        assert_eq!(
            second.auth.jwt_secret.expose(),
            first.auth.jwt_secret.expose()
        );
        assert_eq!(
            second.auth.admin_secrets[0].expose(),
            first.auth.admin_secrets[0].expose()
        );
        let mode = std::fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_secrets_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let err = keep_generated(&mut dev_config(), dir.path()).unwrap_err();
        assert!(err.contains(FILE_NAME), "{err}");
    }
}
