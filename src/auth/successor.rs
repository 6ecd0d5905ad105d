//! A rotated refresh token's successor, sealed so that only a holder of the rotated token can
//! open it: concurrent refreshes of one token (two tabs, a retried request) all receive the one
//! successor the first of them created, and the store never holds a usable token.
//!
//! The key is SHA-256 of a context string and the presented token (256 random bits), the
//! cipher ChaCha20-Poly1305 with a random nonce; the token's hash (the record's name) is the
//! associated data, so a sealed value cannot be moved to another record.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use sha2::{Digest, Sha256};

const CONTEXT: &[u8] = b"ares-gateway refresh successor v1\0";

fn key(presented: &str) -> Option<LessSafeKey> {
    let mut h = Sha256::new();
    h.update(CONTEXT);
    h.update(presented.as_bytes());
    let k = UnboundKey::new(&CHACHA20_POLY1305, &h.finalize()).ok()?;
    Some(LessSafeKey::new(k))
}

/// `successor` sealed for holders of `presented` (whose hash is `presented_hash`).
pub fn seal(presented: &str, presented_hash: &str, successor: &str) -> Option<String> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut data = successor.as_bytes().to_vec();
    key(presented)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(presented_hash.as_bytes()),
            &mut data,
        )
        .ok()?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
}

/// The successor, if `sealed` was sealed for `presented`; `None` for anything else.
pub fn open(presented: &str, presented_hash: &str, sealed: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sealed)
        .ok()?;
    if raw.len() < NONCE_LEN {
        return None;
    }
    let (nonce, data) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut data = data.to_vec();
    let plain = key(presented)?
        .open_in_place(nonce, Aad::from(presented_hash.as_bytes()), &mut data)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_presented_token_opens_its_successor() {
        let sealed = seal("rt_old", "h_old", "rt_new").unwrap();
        assert!(!sealed.contains("rt_new"));
        assert_eq!(open("rt_old", "h_old", &sealed).as_deref(), Some("rt_new"));
        // Another token, another record, a changed byte: nothing.
        assert_eq!(open("rt_other", "h_old", &sealed), None);
        assert_eq!(open("rt_old", "h_other", &sealed), None);
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            open("rt_old", "h_old", &String::from_utf8(bytes).unwrap()),
            None
        );
        assert_eq!(open("rt_old", "h_old", "not base64 !"), None);
        assert_eq!(open("rt_old", "h_old", ""), None);
        // Two seals of one successor differ (random nonces).
        assert_ne!(seal("a", "b", "c"), seal("a", "b", "c"));
    }
}
