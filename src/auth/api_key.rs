//! API keys: format, checksum, hashing, and the lookup cache in front of the store.
//!
//! Format: `ares_` + 43 alphanumerics (256 bits from the OS-seeded CSPRNG) + 6 alphanumerics of
//! checksum (the first 32 bits of SHA-256 over the rest). A mistyped or random key fails the
//! checksum and is refused without touching the store. Keys imported from ARES (`ares_` + 64
//! hex) carry no checksum; they go to the store, behind the negative cache.
//! Only the SHA-256 (hex) of a whole key is stored, with its first 13 characters for display.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::FastMap;
use sha2::{Digest, Sha256};

use crate::store::{ApiKeyRecord, Tenant};

pub const KEY_PREFIX: &str = "ares_";
const BODY_LEN: usize = 43;
const CHECK_LEN: usize = 6;
pub const KEY_LEN: usize = KEY_PREFIX.len() + BODY_LEN + CHECK_LEN;
/// Characters shown in listings (`key_prefix`).
pub const DISPLAY_PREFIX_LEN: usize = 13;
/// Negative-cache entries kept at most: when full, expired entries go, and if that is not enough
/// the older half (so a flood of random keys never empties it).
const NEGATIVE_CAP: usize = 50_000;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated key: shown once, then only its hash is kept.
pub struct NewKey {
    pub raw: String,
    pub hash: String,
    pub prefix: String,
}

fn checksum(body: &str) -> String {
    let d = Sha256::digest(body.as_bytes());
    let mut n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as u64;
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn generate() -> NewKey {
    let body = format!("{KEY_PREFIX}{}", crate::util::random_token("", BODY_LEN));
    let raw = format!("{body}{}", checksum(&body));
    NewKey {
        hash: hash(&raw),
        prefix: raw[..DISPLAY_PREFIX_LEN].to_string(),
        raw,
    }
}

/// SHA-256 (hex): what the store indexes. Of the whole key for the gateway's own keys; of the
/// 64 hex after `ares_` for keys ARES issued, because that is the `key_hash` ARES stores, so its
/// keys are imported by that hash as they are.
pub fn hash(raw: &str) -> String {
    let hashed = match (shape_of_legacy(raw), raw.strip_prefix(KEY_PREFIX)) {
        (true, Some(body)) => body,
        _ => raw,
    };
    let d = Sha256::digest(hashed.as_bytes());
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        s.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    s
}

/// A stored key hash: SHA-256 as 64 hex digits (either case; stored lower-case).
pub fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A key's display prefix: `ares_` and at most [`DISPLAY_PREFIX_LEN`] characters in all, of the
/// key's own alphabet.
pub fn is_display_prefix(prefix: &str) -> bool {
    prefix.starts_with(KEY_PREFIX)
        && prefix.len() <= DISPLAY_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What a presented key looks like before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyShape {
    /// Ours, checksum valid.
    Native,
    /// `ares_` + 64 hex, as ARES issues: no checksum to test.
    Legacy,
    /// Anything else: refused without a lookup.
    Invalid,
}

/// `ares_` + 64 hex digits: a key ARES issued.
fn shape_of_legacy(raw: &str) -> bool {
    raw.strip_prefix(KEY_PREFIX).is_some_and(is_sha256_hex)
}

pub fn shape(raw: &str) -> KeyShape {
    let Some(rest) = raw.strip_prefix(KEY_PREFIX) else {
        return KeyShape::Invalid;
    };
    if shape_of_legacy(raw) {
        return KeyShape::Legacy;
    }
    if raw.len() == KEY_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        let (body, check) = raw.split_at(KEY_LEN - CHECK_LEN);
        // The checksum is not a secret; a plain compare is fine.
        if checksum(body) == check {
            return KeyShape::Native;
        }
    }
    KeyShape::Invalid
}

/// Local cache of key and tenant lookups, so a hot key costs no store round trip.
///
/// Positive entries live `ttl`; misses are remembered (bounded) so random keys cannot hammer the
/// store. Changes made on this replica invalidate entries at once.
pub struct KeyCache {
    ttl: Duration,
    keys: FastMap<String, (Arc<ApiKeyRecord>, Instant)>,
    missing: FastMap<String, Instant>,
    tenants: FastMap<String, (Arc<Tenant>, Instant)>,
    /// `last_used_at` updates waiting for the next batch write.
    /// Key hash -> (last use, requests since the last batch).
    pending_touch: FastMap<String, (u64, u64)>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        KeyCache {
            ttl,
            keys: FastMap::default(),
            missing: FastMap::default(),
            tenants: FastMap::default(),
            pending_touch: FastMap::default(),
        }
    }

    pub fn key(&self, hash: &str) -> Option<Arc<ApiKeyRecord>> {
        let entry = self.keys.get(hash)?;
        younger(entry.1, Instant::now(), self.ttl).then(|| entry.0.clone())
    }

    /// A cached copy up to `max_age` old: used only when the store is unreachable.
    pub fn stale_key(&self, hash: &str, max_age: Duration) -> Option<Arc<ApiKeyRecord>> {
        let entry = self.keys.get(hash)?;
        younger(entry.1, Instant::now(), max_age).then(|| entry.0.clone())
    }

    pub fn is_known_missing(&self, hash: &str) -> bool {
        self.missing
            .get(hash)
            .is_some_and(|at| younger(*at, Instant::now(), self.ttl))
    }

    pub fn put_key(&self, record: Arc<ApiKeyRecord>) {
        if self.ttl.is_zero() {
            return;
        }
        self.missing.remove(&record.key_hash);
        self.keys
            .insert(record.key_hash.clone(), (record, Instant::now()));
    }

    pub fn put_missing(&self, hash: &str) {
        if self.ttl.is_zero() {
            return;
        }
        if self.missing.len() >= NEGATIVE_CAP {
            self.make_room_in_missing(Instant::now());
        }
        self.missing.insert(hash.to_string(), Instant::now());
    }

    /// Drop expired misses; if the cache is still full, the older half of it. Runs once per
    /// `NEGATIVE_CAP / 2` insertions at most, so it costs O(1) per insertion on average.
    fn make_room_in_missing(&self, now: Instant) {
        self.missing.retain(|_, at| younger(*at, now, self.ttl));
        if self.missing.len() < NEGATIVE_CAP {
            return;
        }
        let mut times: Vec<Instant> = self.missing.iter().map(|e| *e.value()).collect();
        let half = times.len() / 2;
        let median = *times.select_nth_unstable(half).1;
        self.missing.retain(|_, at| *at >= median);
    }

    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        let entry = self.tenants.get(id)?;
        younger(entry.1, Instant::now(), self.ttl).then(|| entry.0.clone())
    }

    pub fn stale_tenant(&self, id: &str, max_age: Duration) -> Option<Arc<Tenant>> {
        let entry = self.tenants.get(id)?;
        younger(entry.1, Instant::now(), max_age).then(|| entry.0.clone())
    }

    pub fn put_tenant(&self, tenant: Arc<Tenant>) {
        if self.ttl.is_zero() {
            return;
        }
        self.tenants
            .insert(tenant.id.clone(), (tenant, Instant::now()));
    }

    /// A key was created, imported, or deleted.
    pub fn invalidate_key(&self, hash: &str) {
        self.keys.remove(hash);
        self.missing.remove(hash);
    }

    /// A tenant changed or was deleted: drop it and every cached key of it.
    pub fn invalidate_tenant(&self, id: &str) {
        self.tenants.remove(id);
        self.keys.retain(|_, (k, _)| k.tenant_id != id);
    }

    /// Drop everything (after a lost invalidation stream).
    pub fn clear(&self) {
        self.keys.clear();
        self.missing.clear();
        self.tenants.clear();
    }

    pub fn touch(&self, hash: &str, at: u64) {
        // A key in use is usually pending already: update it without a new String.
        match self.pending_touch.get_mut(hash) {
            Some(mut pending) => *pending = (at, pending.1 + 1),
            None => {
                self.pending_touch.insert(hash.to_string(), (at, 1));
            }
        }
    }

    /// Take the pending `last_used_at` updates.
    /// The uses since the last call, as (key hash, last use, requests).
    pub fn drain_touches(&self) -> Vec<(String, u64, u64)> {
        let keys: Vec<String> = self.pending_touch.iter().map(|e| e.key().clone()).collect();
        keys.into_iter()
            .filter_map(|k| self.pending_touch.remove(&k))
            .map(|(k, (at, n))| (k, at, n))
            .collect()
    }
}

/// Whether an entry made `at` is younger than `max_age` at `now` (a zero age keeps nothing).
fn younger(at: Instant, now: Instant, max_age: Duration) -> bool {
    now.saturating_duration_since(at) < max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let k = generate();
        assert_eq!(k.raw.len(), KEY_LEN);
        assert!(k.raw.starts_with("ares_"));
        assert!(k.raw[5..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(k.prefix, &k.raw[..13]);
        assert_eq!(k.hash, hash(&k.raw));
        assert_eq!(k.hash.len(), 64);
        assert_eq!(shape(&k.raw), KeyShape::Native);
        assert_ne!(generate().raw, k.raw);
    }

    #[test]
    fn hash_is_sha256_hex_of_the_whole_key() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn an_ares_keys_hash_is_the_one_ares_stores() {
        // ARES stores SHA-256 of the 64 hex digits, without `ares_`.
        let body = "0123456789abcdef".repeat(4);
        assert_eq!(hash(&format!("ares_{body}")), hash(&body));
        assert_ne!(hash(&format!("ares_{body}")), hash(&format!("x{body}")));
        // One digit short is not ARES's shape: hashed whole.
        let short = format!("ares_{}", &body[1..]);
        assert_eq!(shape(&short), KeyShape::Invalid);
        assert_ne!(hash(&short), hash(&body[1..]));
    }

    #[test]
    fn every_single_character_typo_fails_the_checksum() {
        let k = generate();
        let bytes = k.raw.as_bytes();
        let mut caught = 0;
        let mut total = 0;
        for i in 5..bytes.len() {
            for &c in [b'0', b'a', b'Z'].iter() {
                if bytes[i] == c {
                    continue;
                }
                let mut typo = bytes.to_vec();
                typo[i] = c;
                total += 1;
                if shape(std::str::from_utf8(&typo).unwrap()) == KeyShape::Invalid {
                    caught += 1;
                }
            }
        }
        assert_eq!(caught, total);
    }

    #[test]
    fn shapes() {
        assert_eq!(
            shape(&format!("ares_{}", "ab12".repeat(16))),
            KeyShape::Legacy
        );
        assert_eq!(shape("ares_k7Gx9mPqR2vLwN4s"), KeyShape::Invalid);
        assert_eq!(shape("eyJhbGciOiJIUzI1NiJ9.e30.x"), KeyShape::Invalid);
        assert_eq!(shape(""), KeyShape::Invalid);
        assert_eq!(
            shape(&format!("ares_{}", "é".repeat(24))),
            KeyShape::Invalid
        );
    }

    fn record(hash: &str, tenant: &str) -> Arc<ApiKeyRecord> {
        let mut r = crate::store::suite::key("k1", tenant, hash);
        r.key_hash = hash.into();
        Arc::new(r)
    }

    #[test]
    fn cache_expires_and_invalidates() {
        let c = KeyCache::new(Duration::from_millis(50));
        c.put_key(record("h1", "t1"));
        c.put_key(record("h2", "t2"));
        assert!(c.key("h1").is_some());
        c.invalidate_tenant("t1");
        assert!(c.key("h1").is_none());
        assert!(c.key("h2").is_some());
        c.invalidate_key("h2");
        assert!(c.key("h2").is_none());
        c.put_missing("h3");
        assert!(c.is_known_missing("h3"));
        c.put_key(record("h3", "t1"));
        assert!(!c.is_known_missing("h3"), "creating a key clears its miss");
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.key("h3").is_none());
        assert!(c.stale_key("h3", Duration::from_secs(5)).is_some());
    }

    #[test]
    fn an_entry_is_young_strictly_before_its_age_limit() {
        let at = Instant::now();
        let ttl = Duration::from_secs(30);
        assert!(younger(at, at, ttl));
        assert!(younger(at, at + ttl - Duration::from_nanos(1), ttl));
        assert!(!younger(at, at + ttl, ttl));
        assert!(!younger(at, at + ttl * 2, ttl));
        assert!(!younger(at, at, Duration::ZERO), "a zero age keeps nothing");
        // A `now` taken before the entry (another thread's clock read) counts as age zero.
        assert!(younger(at + ttl, at, ttl));
    }

    fn fill_missing(c: &KeyCache, n: usize) {
        for i in 0..n {
            c.put_missing(&format!("h{i}"));
        }
    }

    #[test]
    fn a_full_negative_cache_keeps_its_newer_half() {
        let c = KeyCache::new(Duration::from_secs(60));
        fill_missing(&c, NEGATIVE_CAP);
        assert_eq!(c.missing.len(), NEGATIVE_CAP, "filled up to the cap");
        c.put_missing("newest");
        // A flood of random keys must not empty it: the older half went, the rest stays.
        let len = c.missing.len();
        assert!(
            (NEGATIVE_CAP / 2..=NEGATIVE_CAP / 2 + 2).contains(&len),
            "{len} entries after making room"
        );
        assert!(c.is_known_missing("newest"));
        assert!(c.is_known_missing(&format!("h{}", NEGATIVE_CAP - 1)));
        assert!(c.is_known_missing(&format!("h{}", NEGATIVE_CAP * 3 / 4)));
        assert!(!c.is_known_missing("h0"), "the oldest went first");
        assert!(!c.is_known_missing(&format!("h{}", NEGATIVE_CAP / 4)));
        // It stays bounded as the flood goes on.
        fill_missing(&c, NEGATIVE_CAP * 2);
        assert!(c.missing.len() <= NEGATIVE_CAP);
    }

    #[test]
    fn a_full_negative_cache_drops_expired_misses_first() {
        let c = KeyCache::new(Duration::from_millis(300));
        fill_missing(&c, NEGATIVE_CAP);
        std::thread::sleep(Duration::from_millis(350));
        assert!(!c.is_known_missing("h1"), "expired");
        c.put_missing("fresh");
        assert_eq!(c.missing.len(), 1, "only the expired went, all of them");
        assert!(c.is_known_missing("fresh"));
    }

    #[test]
    fn tenants_are_cached_until_their_ttl_and_kept_stale_for_outages() {
        let c = KeyCache::new(Duration::from_millis(50));
        let t = Arc::new(crate::store::suite::tenant("t1"));
        assert!(c.tenant("t1").is_none());
        c.put_tenant(t.clone());
        assert_eq!(
            c.tenant("t1").map(|t| t.name.clone()),
            Some("tenant t1".into())
        );
        assert!(c.tenant("t2").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.tenant("t1").is_none(), "expired");
        assert!(c.stale_tenant("t1", Duration::from_secs(5)).is_some());
        assert!(c.stale_tenant("t1", Duration::from_millis(55)).is_none());
        assert!(c.stale_key("t1", Duration::from_secs(5)).is_none());
        c.put_tenant(t);
        c.invalidate_tenant("t1");
        assert!(c.stale_tenant("t1", Duration::from_secs(5)).is_none());
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let c = KeyCache::new(Duration::ZERO);
        c.put_key(record("h1", "t1"));
        c.put_missing("h2");
        c.put_tenant(Arc::new(crate::store::suite::tenant("t1")));
        assert!(c.stale_key("h1", Duration::from_secs(5)).is_none());
        assert!(!c.is_known_missing("h2"));
        assert!(c.stale_tenant("t1", Duration::from_secs(5)).is_none());
    }

    #[test]
    fn clearing_drops_keys_misses_and_tenants() {
        let c = KeyCache::new(Duration::from_secs(60));
        c.put_key(record("h1", "t1"));
        c.put_missing("h2");
        c.put_tenant(Arc::new(crate::store::suite::tenant("t1")));
        c.clear();
        assert!(c.stale_key("h1", Duration::from_secs(5)).is_none());
        assert!(!c.is_known_missing("h2"));
        assert!(c.stale_tenant("t1", Duration::from_secs(5)).is_none());
    }

    #[test]
    fn display_prefixes_are_ares_and_the_keys_alphabet_up_to_thirteen_characters() {
        assert!(is_display_prefix("ares_k7Gx9mPq"));
        assert!(is_display_prefix("ares_"));
        assert!(is_display_prefix(&generate().prefix));
        for bad in [
            "ares_k7Gx9mPqR",
            "ares_abcdefghijklmn",
            "xres_abc",
            "ares",
            "ares_a-b",
            "ares_a b",
            "ares_\u{e9}",
            "",
        ] {
            assert!(!is_display_prefix(bad), "{bad:?}");
        }
    }

    #[test]
    fn stored_hashes_are_64_hex_digits() {
        assert!(is_sha256_hex(&hash("abc")));
        assert!(is_sha256_hex(&"AbC0".repeat(16)));
        assert!(!is_sha256_hex(&"a".repeat(63)));
        assert!(!is_sha256_hex(&"a".repeat(65)));
        assert!(!is_sha256_hex(&format!("{}g", "a".repeat(63))));
    }

    #[test]
    fn the_checksum_is_pinned() {
        // A key written down today must pass in every later version: the checksum's
        // arithmetic is part of the key format.
        let body = format!("ares_{}", "0123456789abcdefghijABCDEFGHIJ0123456789xyz");
        // First 32 bits of SHA-256 in base 62, computed apart from this code (Python's hashlib).
        assert_eq!(checksum(&body), "1ZNZjD");
        assert_eq!(shape(&format!("{body}1ZNZjD")), KeyShape::Native);
        assert_eq!(shape(&format!("{body}1ZNZjE")), KeyShape::Invalid);
    }

    #[test]
    fn touches_are_batched() {
        let c = KeyCache::new(Duration::from_secs(60));
        c.touch("h1", 5);
        c.touch("h1", 6);
        c.touch("h2", 7);
        let mut t = c.drain_touches();
        t.sort();
        assert_eq!(
            t,
            vec![("h1".to_string(), 6, 2), ("h2".to_string(), 7, 1)],
            "(hash, last use, requests)"
        );
        assert!(c.drain_touches().is_empty());
    }
}
