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
}

pub fn check<B>(req: &Request<B>) -> Result<(), FramingError> {
    if req.version() > Version::HTTP_11 {
        return Ok(());
    }
    let h = req.headers();
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
    let hosts = h.get_all(HOST).iter().count();
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
