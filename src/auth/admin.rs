//! The admin secret: compared in constant time, independent of length.
//!
//! Both sides are reduced to SHA-256 digests first, so the comparison always runs over 32 bytes
//! whatever was sent, and every configured secret is compared (no early exit), so timing reveals
//! neither which secret matched nor how long any of them is.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::util::Secret;

pub struct AdminSecrets {
    digests: Vec<[u8; 32]>,
}

impl AdminSecrets {
    pub fn new(secrets: &[Secret]) -> Self {
        AdminSecrets {
            digests: secrets
                .iter()
                .map(|s| Sha256::digest(s.expose().as_bytes()).into())
                .collect(),
        }
    }

    /// The index of the matching secret (for the audit log), if any.
    pub fn verify(&self, presented: &[u8]) -> Option<usize> {
        let given: [u8; 32] = Sha256::digest(presented).into();
        let mut found = subtle::Choice::from(0u8);
        let mut index = 0u32;
        for (i, d) in self.digests.iter().enumerate() {
            let eq = d.ct_eq(&given);
            index.conditional_assign(&(i as u32), eq & !found);
            found |= eq;
        }
        bool::from(found).then_some(index as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configured_secret_is_valid_and_reports_its_index() {
        let s = AdminSecrets::new(&[
            Secret::new("first-secret-0000001".into()),
            Secret::new("second-secret-000002".into()),
        ]);
        assert_eq!(s.verify(b"first-secret-0000001"), Some(0));
        assert_eq!(s.verify(b"second-secret-000002"), Some(1));
        assert_eq!(s.verify(b"second-secret-00000"), None);
        assert_eq!(s.verify(b""), None);
        assert_eq!(s.verify(&[b'x'; 10_000]), None);
    }

    #[test]
    fn a_secret_configured_twice_reports_its_first_place() {
        // Found by cargo-mutants: `eq & !found` as `eq | !found` reported the last place.
        let s = AdminSecrets::new(&[
            Secret::new("other-secret-0000000".into()),
            Secret::new("same-secret-00000001".into()),
            Secret::new("same-secret-00000001".into()),
        ]);
        assert_eq!(s.verify(b"same-secret-00000001"), Some(1));
    }
}
