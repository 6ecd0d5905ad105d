//! Request framing checks for HTTP/1.x, before anything else reads the request.
//!
//! hyper parses the bytes; this refuses what it would accept but what another HTTP parser (the
//! upstream, or a proxy in between) could frame differently: the shapes of request smuggling.
//! Every refusal is 400 and the connection is closed. HTTP/2 frames bodies itself.

use http::header::{HeaderMap, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Request, Version};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("Content-Length and Transfer-Encoding together")]
    LengthAndChunked,
    #[error("Transfer-Encoding other than a single chunked")]
    TransferEncoding,
    #[error("malformed or repeated Content-Length")]
    ContentLength,
    #[error("HTTP/1.1 requires exactly one Host header")]
    Host,
    #[error("absolute-form request target for another host")]
    ForeignAuthority,
    #[error("Host is not a host[:port]")]
    InvalidHost,
}

pub fn check<B>(req: &Request<B>) -> Result<(), FramingError> {
    let h = req.headers();
    // RFC 9112 3.2: a Host that is not uri-host [":" port] is 400, in every version (an
    // upstream or log reading `x/api/admin` or `evil@x` as a host and path is not ours to
    // guess).
    let mut hosts = 0;
    for v in h.get_all(HOST) {
        if !valid_host(v.as_bytes()) {
            return Err(FramingError::InvalidHost);
        }
        hosts += 1;
    }
    if req.version() > Version::HTTP_11 {
        return Ok(());
    }
    let te = h.get_all(TRANSFER_ENCODING).iter().count();
    let cl = h.get_all(CONTENT_LENGTH).iter().count();
    if te > 0 && cl > 0 {
        return Err(FramingError::LengthAndChunked);
    }
    if te > 0 {
        let only_chunked = te == 1
            && h.get(TRANSFER_ENCODING)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        if !only_chunked {
            return Err(FramingError::TransferEncoding);
        }
    }
    if cl > 1
        || h.get(CONTENT_LENGTH)
            .is_some_and(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Err(FramingError::ContentLength);
    }
    if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
        return Err(FramingError::Host);
    }
    if let Some(authority) = req.uri().authority() {
        let same = host(h).is_some_and(|host| host.eq_ignore_ascii_case(authority.as_str()));
        if !same {
            return Err(FramingError::ForeignAuthority);
        }
    }
    Ok(())
}

/// RFC 3986 3.2.2 and 3.2.3: an IP literal in brackets or a reg-name (unreserved,
/// percent-encoded, sub-delims), then an optional `:` and digits. Empty is allowed (RFC 9112
/// 3.2: a target without authority).
fn valid_host(v: &[u8]) -> bool {
    let (name, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        {
            return false;
        }
        match &rest[end + 1..] {
            [] => (&[][..], None),
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    let reg_name = name.iter().all(|&b| REG_NAME[b as usize]);
    reg_name && port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// The bytes of a reg-name (unreserved, `%` of pct-encoded, sub-delims): one lookup per byte on
/// every request's Host.
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~%!$&'()*+,;=";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

fn host(h: &HeaderMap) -> Option<&str> {
    h.get(HOST).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)], uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri).version(Version::HTTP_11);
        for (k, v) in lines {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn table() {
        let ok = [
            (vec![("host", "x")], "/"),
            (vec![("host", "x"), ("content-length", "5")], "/"),
            (vec![("host", "x"), ("transfer-encoding", "Chunked")], "/"),
            (vec![("host", "gw:8080")], "http://gw:8080/v1"),
        ];
        for (h, uri) in ok {
            assert_eq!(check(&req(&h, uri)), Ok(()), "{h:?} {uri}");
        }
        let bad = [
            (
                vec![
                    ("host", "x"),
                    ("content-length", "5"),
                    ("transfer-encoding", "chunked"),
                ],
                "/",
                FramingError::LengthAndChunked,
            ),
            (
                vec![("host", "x"), ("transfer-encoding", "gzip, chunked")],
                "/",
                FramingError::TransferEncoding,
            ),
            (
                vec![
                    ("host", "x"),
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                "/",
                FramingError::TransferEncoding,
            ),
            (
                vec![
                    ("host", "x"),
                    ("content-length", "5"),
                    ("content-length", "5"),
                ],
                "/",
                FramingError::ContentLength,
            ),
            (
                vec![("host", "x"), ("content-length", "+5")],
                "/",
                FramingError::ContentLength,
            ),
            (
                vec![("host", "x"), ("content-length", "5, 5")],
                "/",
                FramingError::ContentLength,
            ),
            (vec![], "/", FramingError::Host),
            (vec![("host", "x"), ("host", "y")], "/", FramingError::Host),
            (
                vec![("host", "x")],
                "http://evil/v1",
                FramingError::ForeignAuthority,
            ),
        ];
        for (h, uri, want) in bad {
            assert_eq!(check(&req(&h, uri)), Err(want), "{h:?} {uri}");
        }
        // HTTP/1.0 may omit Host; HTTP/2 is framed by h2.
        let r10 = Request::builder()
            .version(Version::HTTP_10)
            .uri("/")
            .body(())
            .unwrap();
        assert_eq!(check(&r10), Ok(()));
        let r2 = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://a/")
            .body(())
            .unwrap();
        assert_eq!(check(&r2), Ok(()));
    }
}

/// Per-connection record of what the byte scanner saw, read by the request handler.
#[derive(Debug, Default)]
pub struct ConnFlags {
    /// The first request head hyper accepts but the gateway refuses, as its 1-based index times
    /// 2, plus 1 when the refusal is a repeated `Content-Length` rather than both lengths (0:
    /// none). hyper merges identical lengths and drops a length next to `Transfer-Encoding`
    /// before the handler sees the head.
    refused_at: std::sync::atomic::AtomicU64,
    /// Requests handed to the handler so far.
    requests: std::sync::atomic::AtomicU64,
}

impl ConnFlags {
    /// Called once per request, in order: why this request's raw head is refused, if it is.
    pub fn next_request_refusal(&self) -> Option<FramingError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.requests.fetch_add(1, SeqCst) + 1;
        let at = self.refused_at.load(SeqCst);
        (at >> 1 == n).then_some(if at & 1 == 1 {
            FramingError::ContentLength
        } else {
            FramingError::LengthAndChunked
        })
    }

    fn refuse(&self, head: u64, repeated_length: bool) {
        let code = head * 2 + u64::from(repeated_length);
        let order = std::sync::atomic::Ordering::SeqCst;
        self.refused_at.compare_exchange(0, code, order, order).ok();
    }
}

/// Where the scanner is in the HTTP/1 byte stream.
#[derive(Debug)]
enum Phase {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers(Vec<u8>),
    /// Lost or not applicable (HTTP/2, upgrades, unparseable): hyper's own handling stands.
    Off,
}

/// Follows HTTP/1 message boundaries in the bytes a connection reads, to see each request head
/// exactly as sent.
#[derive(Debug)]
pub struct Scanner {
    phase: Phase,
    heads: u64,
}

const MAX_SCAN_HEAD: usize = 1 << 20;

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            phase: Phase::Head(Vec::new()),
            heads: 0,
        }
    }
}

impl Scanner {
    pub fn feed(&mut self, mut data: &[u8], flags: &ConnFlags) {
        while !data.is_empty() {
            match &mut self.phase {
                Phase::Off => return,
                Phase::Head(buf) if buf.is_empty() => {
                    // The common case: a whole head in one read, parsed where it lies.
                    match find_blank_line(data) {
                        Some(end) => {
                            self.phase = self.after_head(&data[..end + 4], flags);
                            data = &data[end + 4..];
                        }
                        None => {
                            buf.extend_from_slice(data);
                            return;
                        }
                    }
                }
                Phase::Head(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(data);
                    let Some(end) = find_blank_line(buf) else {
                        if buf.len() > MAX_SCAN_HEAD {
                            self.phase = Phase::Off;
                        }
                        return;
                    };
                    let used = end + 4 - before;
                    let head = std::mem::take(buf);
                    self.phase = self.after_head(&head[..end + 4], flags);
                    data = &data[used..];
                }
                Phase::Body(n) => {
                    let take = (*n).min(data.len() as u64) as usize;
                    *n -= take as u64;
                    data = &data[take..];
                    if *n == 0 {
                        self.phase = Phase::Head(Vec::new());
                    }
                }
                Phase::ChunkSize(line) => {
                    let Some(i) = data.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(data);
                        if line.len() > 4096 {
                            self.phase = Phase::Off;
                        }
                        return;
                    };
                    line.extend_from_slice(&data[..=i]);
                    data = &data[i + 1..];
                    let text = String::from_utf8_lossy(line);
                    let size = text.trim_end().split(';').next().unwrap_or("").trim();
                    self.phase = match u64::from_str_radix(size, 16) {
                        Ok(0) => Phase::Trailers(Vec::new()),
                        Ok(n) => Phase::ChunkData(n),
                        Err(_) => Phase::Off,
                    };
                }
                Phase::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64) as usize;
                    *n -= take as u64;
                    data = &data[take..];
                    if *n == 0 {
                        self.phase = Phase::ChunkCrlf(2);
                    }
                }
                Phase::ChunkCrlf(n) => {
                    let take = (*n as usize).min(data.len());
                    *n -= take as u8;
                    data = &data[take..];
                    if *n == 0 {
                        self.phase = Phase::ChunkSize(Vec::new());
                    }
                }
                Phase::Trailers(buf) => {
                    // Ends at an empty line: "\r\n" right away, or "\r\n\r\n" after trailers.
                    let before = buf.len();
                    buf.extend_from_slice(data);
                    let end = if buf.starts_with(b"\r\n") {
                        Some(0)
                    } else {
                        find_blank_line(buf).map(|e| e + 2)
                    };
                    match end {
                        Some(e) => {
                            let used = e + 2 - before;
                            data = &data[used.min(data.len())..];
                            self.phase = Phase::Head(Vec::new());
                        }
                        None => {
                            if buf.len() > MAX_SCAN_HEAD {
                                self.phase = Phase::Off;
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    fn after_head(&mut self, head: &[u8], flags: &ConnFlags) -> Phase {
        // Lines, not a full parse: hyper parses (and refuses) the head itself; this only needs
        // the framing headers of a head hyper accepts, where every header line is `name:value`.
        let mut start = 0;
        let mut lines = memchr::memchr_iter(b'\n', head).map(|end| {
            let line = &head[start..end];
            start = end + 1;
            line.strip_suffix(b"\r").unwrap_or(line)
        });
        // `METHOD target HTTP/1.x`; anything else (the h2 preface, garbage) hyper serves
        // otherwise or refuses, and CONNECT makes a tunnel: stop following either way.
        let request_line = lines.next().unwrap_or_default();
        let http1 = request_line.ends_with(b" HTTP/1.1") || request_line.ends_with(b" HTTP/1.0");
        let method = request_line
            .split(|&b| b == b' ')
            .next()
            .unwrap_or_default();
        let token = !method.is_empty()
            && method
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
        if !http1 || !token || method == b"CONNECT" {
            return Phase::Off;
        }
        self.heads += 1;
        let mut cl: Option<u64> = None;
        let (mut cls, mut tes, mut upgrade) = (0, 0, false);
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let Some(colon) = memchr::memchr(b':', line) else {
                // Not a header line: hyper refuses this head and closes.
                return Phase::Off;
            };
            let name = &line[..colon];
            if name.eq_ignore_ascii_case(b"content-length") {
                cls += 1;
                cl = std::str::from_utf8(&line[colon + 1..])
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                tes += 1;
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        if (cls > 0 && tes > 0) || cls > 1 {
            flags.refuse(self.heads, tes == 0);
            // The gateway answers 400 and closes: nothing after this head is a request.
            return Phase::Off;
        }
        if upgrade {
            return Phase::Off;
        }
        match (tes, cl) {
            (0, None) | (0, Some(0)) => Phase::Head(Vec::new()),
            (0, Some(n)) => Phase::Body(n),
            _ => Phase::ChunkSize(Vec::new()),
        }
    }
}

/// The empty line that ends a head or trailers. One searcher, built once (`memmem::find`
/// would build one per call).
static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

fn find_blank_line(hay: &[u8]) -> Option<usize> {
    BLANK_LINE.find(hay)
}

/// A connection's reads, shown to a [`Scanner`] on their way to hyper (its small vectored writes go
/// out as one write: [`crate::net::coalesce`]).
pub struct Scanned<T> {
    inner: T,
    scanner: Scanner,
    flags: std::sync::Arc<ConnFlags>,
}

impl<T> Scanned<T> {
    pub fn new(inner: T, flags: std::sync::Arc<ConnFlags>) -> Self {
        Scanned {
            inner,
            scanner: Scanner::default(),
            flags,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Scanned<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let this = &mut *self;
            this.scanner.feed(&buf.filled()[before..], &this.flags);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Scanned<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        crate::net::coalesce::poll_write_vectored(std::pin::Pin::new(&mut self.inner), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod scanner_tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Scanner, ConnFlags) {
        let flags = ConnFlags::default();
        let mut s = Scanner::default();
        for c in chunks {
            s.feed(c, &flags);
        }
        (s, flags)
    }

    /// The head the scanner refused (1-based; 0: none).
    fn flagged_at(f: &ConnFlags) -> u64 {
        f.refused_at.load(std::sync::atomic::Ordering::SeqCst) >> 1
    }

    #[test]
    fn flags_the_right_head_across_bodies_of_every_framing() {
        let stream: Vec<u8> = [
            &b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n"[..],
            b"GET /fake HTTP/1.1\r\nX: 1\r\n\r\n\r\n", // body bytes that look like a head
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]
        .concat();
        // Fed whole and byte by byte, the 4th head is the one with both.
        let (_, f) = scan(&[&stream]);
        assert_eq!(flagged_at(&f), 4);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (_, f) = scan(&bytes);
        assert_eq!(flagged_at(&f), 4);
        assert_eq!(f.next_request_refusal(), None);
        assert_eq!(f.next_request_refusal(), None);
        assert_eq!(f.next_request_refusal(), None);
        assert_eq!(
            f.next_request_refusal(),
            Some(FramingError::LengthAndChunked)
        );
    }

    #[test]
    fn a_repeated_content_length_is_refused_even_when_the_values_agree() {
        // hyper merges identical lengths, so only the raw head shows the repetition.
        let (_, f) = scan(&[
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok",
        ]);
        assert_eq!(flagged_at(&f), 2);
        assert_eq!(f.next_request_refusal(), None);
        assert_eq!(f.next_request_refusal(), Some(FramingError::ContentLength));
        let (_, f) = scan(&[b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"]);
        assert_eq!(flagged_at(&f), 0);
    }

    #[test]
    fn steps_aside_for_h2_upgrades_and_garbage() {
        let (s, f) = scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]);
        assert!(matches!(s.phase, Phase::Off));
        assert_eq!(flagged_at(&f), 0);
        let (s, _) = scan(&[
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ]);
        assert!(matches!(s.phase, Phase::Off));
        let (s, _) = scan(&[b"\x00\x01garbage\r\n\r\n"]);
        assert!(matches!(s.phase, Phase::Off));
        let (s, f) = scan(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert!(matches!(s.phase, Phase::Head(_)));
        assert_eq!(s.heads, 2);
        assert_eq!(flagged_at(&f), 0);
    }
}
