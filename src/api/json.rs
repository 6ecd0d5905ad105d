//! Reading the JSON bodies of gateway-served endpoints: bounded, and every problem a 400 or 413
//! naming it (never echoing the input).

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use crate::body::BoxError;
use crate::error::GatewayError;

/// Read a JSON request body of at most `limit` bytes and parse it.
///
/// Too large is 413; anything else that is not the expected JSON (bad syntax, non-UTF-8, nesting
/// past serde_json's recursion limit, a missing field) is 400 naming the problem.
pub async fn read_json<T, B>(body: B, limit: usize) -> Result<T, GatewayError>
where
    T: DeserializeOwned,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let bytes = read_limited(body, limit).await?;
    // RFC 8259 8.1: JSON is UTF-8. serde_json checks the strings it keeps, not the ones it
    // skips, so the whole body is checked once.
    if std::str::from_utf8(&bytes).is_err() {
        return Err(GatewayError::invalid("request body is not UTF-8"));
    }
    // Every body the gateway takes is an object: serde would read a struct from an array too
    // (`[7, 8, 9]` as limits), so anything else is refused before it gets the chance.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(GatewayError::invalid("request body must be a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        // serde_json's message names the field and position, never echoes long input.
        GatewayError::invalid(format!("malformed JSON body: {}", json_problem(&e)))
    })
}

/// [`read_json`] of a request whose `Content-Type`, when it has one, is JSON (`application/json`
/// or a `+json` type, any parameters): a body declared as something else (`text/plain`, a
/// form) is 415 and never parsed.
pub async fn read_request_json<T, B>(req: http::Request<B>, limit: usize) -> Result<T, GatewayError>
where
    T: DeserializeOwned,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if let Some(ct) = req.headers().get(http::header::CONTENT_TYPE) {
        let media = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let json = media.eq_ignore_ascii_case("application/json")
            || media
                .get(media.len().saturating_sub(5)..)
                .is_some_and(|s| s.eq_ignore_ascii_case("+json"));
        if !json {
            return Err(GatewayError::UnsupportedMediaType);
        }
    }
    read_json(req.into_body(), limit).await
}

/// How long a gateway-served endpoint waits for its whole (small, JSON) body: a client that
/// trickles one byte at a time cannot hold a connection and a handler for minutes.
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Collect a body of at most `limit` bytes, within [`BODY_DEADLINE`].
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let collected = tokio::time::timeout(BODY_DEADLINE, Limited::new(body, limit).collect())
        .await
        .map_err(|_| GatewayError::BodyTimeout)?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(GatewayError::PayloadTooLarge),
        Err(e) => Err(GatewayError::invalid(format!(
            "could not read request body: {e}"
        ))),
    }
}

fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json quotes unknown variants and values; keep messages short and free of input.
    match e.classify() {
        serde_json::error::Category::Data => text,
        _ => format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[derive(serde::Deserialize, Debug)]
    struct Login {
        #[allow(dead_code)]
        email: String,
    }

    #[tokio::test]
    async fn oversize_json_is_413() {
        let body = Full::new(Bytes::from(vec![b' '; 2000]));
        let err = read_json::<Login, _>(body, 1000).await.unwrap_err();
        assert!(matches!(err, GatewayError::PayloadTooLarge));
    }

    #[tokio::test]
    async fn missing_field_is_400_naming_it() {
        let body = Full::new(Bytes::from_static(b"{\"name\":\"x\"}"));
        let err = read_json::<Login, _>(body, 1000).await.unwrap_err();
        match err {
            GatewayError::InvalidInput(m) => assert!(m.contains("email"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn non_utf8_and_deep_nesting_are_400() {
        let body = Full::new(Bytes::from_static(b"{\"email\":\"\xff\xfe\"}"));
        assert!(matches!(
            read_json::<Login, _>(body, 1000).await,
            Err(GatewayError::InvalidInput(_))
        ));
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let body = Full::new(Bytes::from(deep));
        assert!(matches!(
            read_json::<serde_json::Value, _>(body, 100_000).await,
            Err(GatewayError::InvalidInput(_))
        ));
    }

    fn request(content_type: Option<&str>, body: &'static str) -> http::Request<Full<Bytes>> {
        let mut b = http::Request::builder();
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        b.body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    #[tokio::test]
    async fn regression_text_plain_and_arrays_were_read_as_json_objects() {
        let body = r#"{"email":"a@example.com"}"#;
        for ok in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/merge-patch+json"),
        ] {
            let r = read_request_json::<Login, _>(request(ok, body), 1000).await;
            assert!(r.is_ok(), "{ok:?}");
        }
        for bad in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "json",
        ] {
            let r = read_request_json::<Login, _>(request(Some(bad), body), 1000).await;
            assert!(
                matches!(r, Err(GatewayError::UnsupportedMediaType)),
                "{bad}"
            );
        }
        // serde reads a struct from a sequence; an object is required.
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Limits {
            a: Option<u64>,
            b: Option<u64>,
            c: Option<u64>,
        }
        for bad in ["[7,8,9]", "  [1]", "7", "\"x\"", "null"] {
            let r =
                read_json::<Limits, _>(Full::new(Bytes::from_static(bad.as_bytes())), 100).await;
            assert!(matches!(r, Err(GatewayError::InvalidInput(_))), "{bad}");
        }
        assert!(
            read_json::<Limits, _>(Full::new(Bytes::from_static(b" {}")), 100)
                .await
                .is_ok()
        );
    }
}
