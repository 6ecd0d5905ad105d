//! Small things every layer uses: clocks, random tokens, secrets that never print, file stamps,
//! and the concurrent map type. Imports nothing from the crate.

use std::fmt;
use std::path::Path;

use rand::distr::{Alphanumeric, SampleString};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `prefix` + `len` alphanumerics from the thread-local CSPRNG (ChaCha, seeded by the OS).
pub fn random_token(prefix: &str, len: usize) -> String {
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    Alphanumeric.append_string(&mut rand::rng(), &mut s, len);
    s
}

/// `traceparent` (W3C Trace Context, version 00) for these ids, written without `fmt`.
pub fn traceparent(trace: u128, span: u64, sampled: bool) -> http::HeaderValue {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut buf[3..35], trace);
    put_hex(&mut buf[36..52], u128::from(span));
    if sampled {
        buf[54] = b'1';
    }
    http::HeaderValue::from_bytes(&buf).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
}

/// `(trace id, span id, flags)` of a version-00 `traceparent` (lower-case hex).
pub fn parse_traceparent(v: &[u8]) -> Option<(u128, u64, u8)> {
    fn hex(s: &[u8]) -> Option<u128> {
        s.iter().try_fold(0u128, |n, c| {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            Some(n << 4 | u128::from(d))
        })
    }
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let span = u64::try_from(hex(&v[36..52])?).ok()?;
    let flags = u8::try_from(hex(&v[53..55])?).ok()?;
    Some((hex(&v[3..35])?, span, flags))
}

/// `n` in lower-case hex, right-aligned in `out` (its high digits dropped if it does not fit).
pub fn put_hex(out: &mut [u8], mut n: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A secret string: no `Debug` or `Display` that could print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// What a watched file looks like on disk. Modification times come from a coarse kernel clock,
/// so two writes a few milliseconds apart can share one; size and inode (an atomic rename always
/// brings a new one) catch those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of `path`, or `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode,
        })
    }
}

/// The concurrent maps on the request path: foldhash (seeded per map) instead of SipHash, a
/// measurable share of a request's instructions with long keys such as tokens. Their keys are
/// verified tokens, hashes and ids, not strings a client picks freely.
pub type FastMap<K, V> = dashmap::DashMap<K, V, foldhash::quality::RandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_long_and_distinct() {
        let a = random_token("rt_", 43);
        assert_eq!(a.len(), 46);
        assert!(a[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, random_token("rt_", 43));
    }
}
