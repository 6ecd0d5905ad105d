//! Other readings of a normalised path: what the path may become in an upstream (or a proxy,
//! framework or file system behind it) that normalises further than RFC 3986 does. The route
//! table refuses a path one of whose readings lands on a route with another credential rule
//! (`RouteTable::is_ambiguous`), so no such normalisation can take a user's token to an admin
//! route. The readings, each alone and in every combination (SECURITY.md lists them):
//!
//! - **case**: ASCII letters folded to lower case (case-insensitive routers, Windows paths);
//! - **parameters**: every segment's `;parameters` cut (servlet-style matrix parameters, Tomcat,
//!   Jetty, Spring), `;` also when encoded as `%3B`, before the dot segments are resolved
//!   (`/api/x/..;/admin` reads `/api/admin`);
//! - **decoding**: percent-decoding repeated until nothing changes (an upstream or a second
//!   layer decoding again: `%2561` -> `%61` -> `a`, `%252F` -> `/`);
//! - **overlong UTF-8**: two- and three-byte overlong encodings of ASCII decoded to it
//!   (`%C0%AF` -> `/`, `%C0%AE` -> `.`), as lenient decoders do;
//! - **invalid UTF-8 dropped**: bytes that are not part of valid UTF-8 removed (`adm%FFin`);
//! - **NFKC**: percent-encoded UTF-8 folded by Unicode compatibility normalisation
//!   (fullwidth `ａｄｍｉｎ` -> `admin`);
//! - **trailing dots and spaces**: stripped from the end of every segment (`admin.`, `admin%20`:
//!   Windows and IIS).
//!
//! Every reading is then resolved as a lenient upstream would: empty segments dropped, `.` and
//! `..` resolved, a `..` above the root kept at the root.

use unicode_normalization::UnicodeNormalization;

/// Whether `path` (normalised) can read differently at all: upper case, `%`, `;`, or a segment
/// ending in `.` or a space. One pass over the bytes; most paths have none of them.
pub fn may_read_otherwise(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c.is_ascii_uppercase()
            || c == b'%'
            || c == b';'
            || (c == b'.' || c == b' ') && b.get(i + 1).is_none_or(|&n| n == b'/')
    })
}

/// The normalisation steps a reading is made of, in the order [`readings`] applies them.
const STEPS: [fn(&str) -> String; 7] = [
    decode_all,
    overlong,
    drop_invalid_utf8,
    nfkc,
    cut_params,
    trim_segments,
    lower,
];

/// Every distinct reading of `path` other than itself, resolved.
pub fn readings(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // Every subset of the steps, applied in this order (decoding first: the others act on what
    // it reveals).
    for mask in 1u32..(1 << STEPS.len()) {
        let mut p = path.to_string();
        for (i, step) in STEPS.iter().enumerate() {
            if mask & (1 << i) != 0 {
                p = step(&p);
            }
        }
        let p = resolve(&p);
        if p != path && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Percent-decoding repeated until nothing changes (at most a few rounds: each one shortens).
/// What decodes to non-ASCII stays encoded, so the result is ASCII.
fn decode_all(path: &str) -> String {
    let mut cur = path.to_string();
    for _ in 0..4 {
        let next = decode_once(&cur);
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

fn decode_once(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(v) = bytes.get(i + 1..i + 3).and_then(hex) {
                if v.is_ascii() {
                    out.push(v as char);
                } else {
                    push_encoded(&mut out, v);
                }
                i += 3;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

fn hex(h: &[u8]) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    Some(d(*h.first()?)? << 4 | d(*h.get(1)?)?)
}

fn push_encoded(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 15) as usize] as char);
}

/// The path's bytes with every `%XX` decoded (what a decoder sees).
fn raw_bytes(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = b.get(i + 1..i + 3).and_then(hex) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Bytes back to a path: ASCII as itself, the rest percent-encoded.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii() && b != b'%' && b > 0x20 {
            out.push(b as char);
        } else if b == b' ' {
            out.push(' ');
        } else {
            push_encoded(&mut out, b);
        }
    }
    out
}

/// Overlong encodings of ASCII (`C0 xx`, `C1 xx`, `E0 80..9F xx`) decoded to the ASCII byte.
fn overlong(path: &str) -> String {
    let b = raw_bytes(path);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let cont = |j: usize| b.get(j).is_some_and(|c| c & 0xC0 == 0x80);
        match b[i] {
            0xC0 | 0xC1 if cont(i + 1) => {
                out.push(((b[i] & 0x1F) << 6) | (b[i + 1] & 0x3F));
                i += 2;
            }
            0xE0 if cont(i + 1) && cont(i + 2) && b[i + 1] < 0xA0 => {
                let v = (u32::from(b[i + 1] & 0x3F) << 6) | u32::from(b[i + 2] & 0x3F);
                match u8::try_from(v) {
                    Ok(ascii) if ascii.is_ascii() => out.push(ascii),
                    _ => out.extend_from_slice(&b[i..i + 3]),
                }
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    encode(&out)
}

/// Bytes that are not part of valid UTF-8 removed.
fn drop_invalid_utf8(path: &str) -> String {
    let b = raw_bytes(path);
    let mut out = Vec::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        out.extend_from_slice(chunk.valid().as_bytes());
    }
    encode(&out)
}

/// Unicode compatibility normalisation of what decodes as UTF-8.
fn nfkc(path: &str) -> String {
    let b = raw_bytes(path);
    let text = String::from_utf8_lossy(&b);
    let folded: String = text.nfkc().collect();
    encode(folded.as_bytes())
}

/// Every segment's `;parameters` cut (`%3B` too).
fn cut_params(path: &str) -> String {
    path.replace("%3B", ";")
        .replace("%3b", ";")
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}

/// Trailing dots and spaces (also `%20`) stripped from every segment but `.` and `..`.
fn trim_segments(path: &str) -> String {
    path.replace("%20", " ")
        .split('/')
        .map(|s| {
            let spaced = s.trim_end_matches(' ');
            if spaced == "." || spaced == ".." {
                return spaced;
            }
            match s.trim_end_matches(['.', ' ']) {
                // Only dots (`...`): read as the parent, the reading that climbs.
                "" if s.starts_with("..") => "..",
                "" if !s.is_empty() => ".",
                t => t,
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn lower(path: &str) -> String {
    path.to_ascii_lowercase()
}

/// Resolved as a lenient upstream would: unreserved characters decoded, empty segments
/// dropped, `.` and `..` resolved, a `..` above the root kept at the root. A trailing slash is
/// kept.
fn resolve(path: &str) -> String {
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = b.get(i + 1..i + 3).and_then(hex) {
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    decoded.push(v as char);
                    i += 3;
                    continue;
                }
            }
        }
        decoded.push(b[i] as char);
        i += 1;
    }
    // Kept at the root, this never refuses.
    super::remove_dot_segments(&decoded, true).unwrap_or_else(|_| "/".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads_as(path: &str, wanted: &str) {
        let all = readings(path);
        assert!(all.iter().any(|r| r == wanted), "{path}: {all:?}");
    }

    #[test]
    fn each_reading_the_issue_lists_is_made() {
        reads_as("/api/x/..;/admin/x", "/api/admin/x");
        reads_as("/api/;/admin/x", "/api/admin/x");
        reads_as("/api/admin;x/y", "/api/admin/y");
        reads_as("/api/%2561dmin/x", "/api/admin/x");
        reads_as("/api/x%252F..%252Fadmin/x", "/api/admin/x");
        reads_as("/api/x/%C0%AE%C0%AE%C0%AFadmin/x", "/api/admin/x");
        reads_as("/api/adm%FFin/x", "/api/admin/x");
        reads_as(
            "/api/%EF%BD%81%EF%BD%84%EF%BD%8D%EF%BD%89%EF%BD%8E/x",
            "/api/admin/x",
        );
        reads_as("/api/admin./x", "/api/admin/x");
        reads_as("/api/admin%20/x", "/api/admin/x");
        reads_as("/api/x/..%20/admin", "/api/admin");
        reads_as("/api/ADMIN/x", "/api/admin/x");
        reads_as("/API/%41dmin;x./y", "/api/admin/y");
    }

    #[test]
    fn an_ordinary_path_has_no_other_reading_and_costs_one_scan() {
        for p in [
            "/api/chat",
            "/v1/chat/stream",
            "/api/conversations/c_123/",
            "/healthz",
        ] {
            assert!(!may_read_otherwise(p), "{p}");
        }
        for p in [
            "/api/Chat",
            "/api/a;b",
            "/api/%41",
            "/api/x.",
            "/api/x./y",
            "/api/x /y",
        ] {
            assert!(may_read_otherwise(p), "{p}");
        }
        assert!(readings("/api/chat").is_empty());
    }

    /// Property: whatever order and repetition a chain of upstream normalisations applies its
    /// steps in, a path it turns into an admin path has a reading here that is one too. Random
    /// paths of hostile segments around the `/api/` prefix (a fixed seed: the same cases on
    /// every run; more rounds with `READINGS_ROUNDS`).
    #[test]
    fn property_every_chain_of_normalisations_is_among_the_readings() {
        const PIECES: [&str; 24] = [
            "admin",
            "ADMIN",
            "Admin",
            "x",
            "..",
            ".",
            ";",
            ";x",
            "..;",
            "%2561dmin",
            "%2561",
            "%C0%AE%C0%AE",
            "%C0%AF",
            "%EF%BD%81dmin",
            "admin.",
            "admin%20",
            "..%20",
            "%3B",
            "%252F",
            "%252E%252E",
            "%FF",
            "adm%FFin",
            "...",
            "tenants",
        ];
        let is_admin = |p: &str| p == "/api/admin" || p.starts_with("/api/admin/");
        let rounds: u64 = std::env::var("READINGS_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3_000);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut reached = 0;
        for _ in 0..rounds {
            let mut path = String::from("/api");
            for _ in 0..1 + next(4) {
                path.push('/');
                for _ in 0..1 + next(2) {
                    path.push_str(PIECES[next(PIECES.len())]);
                }
            }
            let Ok(normal) = crate::route::normalize(&path) else {
                continue;
            };
            if is_admin(&normal) {
                continue;
            }
            let mut upstream = normal.to_string();
            for _ in 0..1 + next(6) {
                upstream = STEPS[next(STEPS.len())](&upstream);
            }
            if !is_admin(&resolve(&upstream)) {
                continue;
            }
            reached += 1;
            assert!(
                readings(&normal).iter().any(|r| is_admin(r)),
                "{path} (normalised {normal}) reads {} upstream, not among {:?}",
                resolve(&upstream),
                readings(&normal)
            );
        }
        assert!(
            reached > 50,
            "the generator reached admin only {reached} times"
        );
    }

    #[test]
    fn resolving_keeps_a_climb_at_the_root_and_a_trailing_slash() {
        assert_eq!(resolve("/a/../../b"), "/b");
        assert_eq!(resolve("/a//b/"), "/a/b/");
        assert_eq!(resolve("/a/%2E%2E/b"), "/b");
        assert_eq!(resolve("/a/.."), "/");
    }
}
