//! The gateway's asymmetric signing keys (read with the config: `ARES_JWT_PRIVATE_KEY_FILE`): Ed25519 (`EdDSA`) and P-256 (`ES256`) key pairs, read
//! from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), or verify-only from a public key's PEM
//! (`-----BEGIN PUBLIC KEY-----`, for an older key whose private part is gone), or generated.
//!
//! A key's `kid` is its RFC 7638 thumbprint (SHA-256 of its canonical public JWK), so no config
//! names it and every replica holding the same key agrees on it. Only the public part ever
//! leaves this module as text ([`KeyPair::jwk`]); the private part is only turned into a
//! signing key, or into PEM for the data directory's secrets file.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use sha2::{Digest, Sha256};

use crate::util::Secret;

/// SubjectPublicKeyInfo prefixes of the two key types (RFC 8410, RFC 5480): what precedes the
/// raw public key in a `PUBLIC KEY` PEM.
const ED25519_SPKI: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const P256_SPKI: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// One signing key of the gateway (or an older one that only verifies).
pub struct KeyPair {
    alg: Algorithm,
    kid: String,
    /// The raw public key: 32 bytes (Ed25519), or the uncompressed point 04 || x || y (P-256).
    public: Vec<u8>,
    /// PKCS#8 DER of the private key; `None` for a verify-only key.
    pkcs8: Option<Secret>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("private", &self.pkcs8.is_some())
            .finish()
    }
}

impl Clone for KeyPair {
    fn clone(&self) -> Self {
        KeyPair {
            alg: self.alg,
            kid: self.kid.clone(),
            public: self.public.clone(),
            pkcs8: self.pkcs8.clone(),
        }
    }
}

/// The algorithm `ARES_JWT_ALGORITHM` names, if it is one the gateway signs with.
pub fn algorithm(name: &str) -> Option<Algorithm> {
    match name.trim() {
        n if n.eq_ignore_ascii_case("HS256") => Some(Algorithm::HS256),
        n if n.eq_ignore_ascii_case("EdDSA") || n.eq_ignore_ascii_case("Ed25519") => {
            Some(Algorithm::EdDSA)
        }
        n if n.eq_ignore_ascii_case("ES256") => Some(Algorithm::ES256),
        _ => None,
    }
}

impl KeyPair {
    /// A new key pair for `alg` (`EdDSA` or `ES256`).
    pub fn generate(alg: Algorithm) -> Result<KeyPair, String> {
        let rng = SystemRandom::new();
        let doc = match alg {
            Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng),
            Algorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
            other => return Err(format!("{other:?} is not a key pair algorithm")),
        }
        .map_err(|_| "key generation failed".to_string())?;
        KeyPair::from_pkcs8(doc.as_ref())
    }

    /// A key from PEM: a PKCS#8 private key (`PRIVATE KEY`), or a public key (`PUBLIC KEY`)
    /// that only verifies. The error never quotes the text.
    pub fn from_pem(text: &str) -> Result<KeyPair, String> {
        use rustls::pki_types::pem::{PemObject, SectionKind};
        let mut found = None;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
            let (kind, der) = section.map_err(|_| "not a PEM file".to_string())?;
            match kind {
                SectionKind::PrivateKey | SectionKind::PublicKey if found.is_none() => {
                    found = Some((kind, der))
                }
                SectionKind::PrivateKey | SectionKind::PublicKey => {
                    return Err("holds more than one key".into())
                }
                SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey => {
                    return Err(
                        "not PKCS#8: convert it with `openssl pkcs8 -topk8 -nocrypt`".into(),
                    )
                }
                _ => {}
            }
        }
        match found {
            Some((SectionKind::PrivateKey, der)) => KeyPair::from_pkcs8(&der),
            Some((_, der)) => KeyPair::from_spki(&der),
            None => Err("no PRIVATE KEY or PUBLIC KEY section".into()),
        }
    }

    fn from_pkcs8(der: &[u8]) -> Result<KeyPair, String> {
        let (alg, public) = if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            (Algorithm::EdDSA, k.public_key().as_ref().to_vec())
        } else if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
        {
            (Algorithm::ES256, k.public_key().as_ref().to_vec())
        } else {
            return Err("not an Ed25519 or P-256 PKCS#8 private key".into());
        };
        let pem = STANDARD.encode(der);
        Ok(KeyPair {
            kid: thumbprint(alg, &public),
            alg,
            public,
            pkcs8: Some(Secret::new(pem)),
        })
    }

    fn from_spki(der: &[u8]) -> Result<KeyPair, String> {
        let (alg, public) = if let Some(raw) = der.strip_prefix(ED25519_SPKI) {
            (Algorithm::EdDSA, raw)
        } else if let Some(raw) = der.strip_prefix(P256_SPKI) {
            (Algorithm::ES256, raw)
        } else {
            return Err("not an Ed25519 or P-256 public key".into());
        };
        let expected = if alg == Algorithm::EdDSA { 32 } else { 65 };
        if public.len() != expected || (alg == Algorithm::ES256 && public[0] != 4) {
            return Err("malformed public key".into());
        }
        Ok(KeyPair {
            kid: thumbprint(alg, public),
            alg,
            public: public.to_vec(),
            pkcs8: None,
        })
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn can_sign(&self) -> bool {
        self.pkcs8.is_some()
    }

    fn der(&self) -> Option<Vec<u8>> {
        STANDARD.decode(self.pkcs8.as_ref()?.expose()).ok()
    }

    /// The private key as PKCS#8 PEM, to keep in the data directory (never logged).
    pub fn private_pem(&self) -> Option<Secret> {
        let b64 = self.pkcs8.as_ref()?.expose();
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).ok()?);
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Some(Secret::new(pem))
    }

    pub fn encoding_key(&self) -> Option<EncodingKey> {
        let der = self.der()?;
        Some(match self.alg {
            Algorithm::EdDSA => EncodingKey::from_ed_der(&der),
            _ => EncodingKey::from_ec_der(&der),
        })
    }

    pub fn decoding_key(&self) -> Result<DecodingKey, String> {
        let (x, y) = self.coordinates();
        match y {
            None => DecodingKey::from_ed_components(&x),
            Some(y) => DecodingKey::from_ec_components(&x, &y),
        }
        .map_err(|e| format!("public key unusable: {e}"))
    }

    /// base64url `x` (and `y` for P-256) of the public key.
    fn coordinates(&self) -> (String, Option<String>) {
        coordinates(self.alg, &self.public)
    }

    /// The public JWK (RFC 7517/8037): what `/.well-known/jwks.json` lists.
    pub fn jwk(&self) -> serde_json::Value {
        let (x, y) = self.coordinates();
        match y {
            None => serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": x,
                "kid": self.kid, "alg": "EdDSA", "use": "sig",
            }),
            Some(y) => serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": x, "y": y,
                "kid": self.kid, "alg": "ES256", "use": "sig",
            }),
        }
    }
}

fn coordinates(alg: Algorithm, public: &[u8]) -> (String, Option<String>) {
    match alg {
        Algorithm::ES256 if public.len() == 65 => (
            URL_SAFE_NO_PAD.encode(&public[1..33]),
            Some(URL_SAFE_NO_PAD.encode(&public[33..])),
        ),
        _ => (URL_SAFE_NO_PAD.encode(public), None),
    }
}

/// RFC 7638: base64url SHA-256 of the required members in lexicographic order, no spaces.
fn thumbprint(alg: Algorithm, public: &[u8]) -> String {
    let canonical = match coordinates(alg, public) {
        (x, None) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
        (x, Some(y)) => format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
    };
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_what_their_public_part_verifies_and_round_trip_through_pem() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            let k = KeyPair::generate(alg).unwrap();
            assert_eq!(k.alg(), alg);
            let again = KeyPair::from_pem(k.private_pem().unwrap().expose()).unwrap();
            assert_eq!(again.kid(), k.kid(), "the kid comes from the key");
            let claims = serde_json::json!({"sub": "usr_1", "exp": 4_000_000_000u64});
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = Some(k.kid().into());
            let token = jsonwebtoken::encode(&header, &claims, &k.encoding_key().unwrap()).unwrap();
            let mut v = jsonwebtoken::Validation::new(alg);
            v.set_required_spec_claims(&["exp"]);
            jsonwebtoken::decode::<serde_json::Value>(&token, &again.decoding_key().unwrap(), &v)
                .unwrap();
            let other = KeyPair::generate(alg).unwrap();
            assert_ne!(other.kid(), k.kid());
            assert!(jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &other.decoding_key().unwrap(),
                &v
            )
            .is_err());
        }
    }

    #[test]
    fn the_jwk_is_public_only_and_its_kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A.1 / A.3: this Ed25519 public key's thumbprint.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            thumbprint(Algorithm::EdDSA, &x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        let k = KeyPair::generate(Algorithm::ES256).unwrap();
        let jwk = k.jwk();
        let text = jwk.to_string();
        assert!(!text.contains("\"d\""), "no private member: {text}");
        let secret = k.private_pem().unwrap();
        let body: String = secret
            .expose()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!text.contains(&body[..20]));
        assert!(
            !format!("{k:?}").contains(&body[..20]),
            "Debug shows no key"
        );
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["kid"], k.kid());
    }

    #[test]
    fn a_public_key_pem_only_verifies_and_bad_pem_is_refused_without_quoting_it() {
        let k = KeyPair::generate(Algorithm::EdDSA).unwrap();
        let mut spki = ED25519_SPKI.to_vec();
        spki.extend_from_slice(&k.public);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&spki)
        );
        let public = KeyPair::from_pem(&pem).unwrap();
        assert_eq!(public.kid(), k.kid());
        assert!(!public.can_sign() && public.encoding_key().is_none());
        for bad in [
            "",
            "not pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        ] {
            let e = KeyPair::from_pem(bad).unwrap_err();
            assert!(!e.contains("AAAA"), "{e}");
        }
        let two = format!("{pem}{pem}");
        assert!(KeyPair::from_pem(&two).is_err(), "one key per file");
    }

    #[test]
    fn the_algorithm_names_are_read_as_the_contract_spells_them() {
        assert_eq!(algorithm("HS256"), Some(Algorithm::HS256));
        assert_eq!(algorithm("EdDSA"), Some(Algorithm::EdDSA));
        assert_eq!(algorithm("es256"), Some(Algorithm::ES256));
        assert_eq!(algorithm("RS256"), None, "the gateway does not sign RS256");
        assert_eq!(algorithm("none"), None);
    }
}
