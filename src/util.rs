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
