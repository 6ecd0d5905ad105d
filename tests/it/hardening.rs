//! Hostile input over raw TCP: request framing (smuggling), oversized heads, slow clients, upstream
//! faults, and a recording upstream that asserts what (if anything) was forwarded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;

/// Send raw bytes; return what came back before the server closed (or 3 s passed).
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn raw_async(addr: SocketAddr, request: Vec<u8>) -> String {
    tokio::task::spawn_blocking(move || raw(addr, &request))
        .await
        .unwrap()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn smuggling_shapes_are_refused_and_never_forwarded() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (_, _, key) = provision(&g, "pro").await;
    let a = format!("Authorization: Bearer {key}\r\n");
    let cases: Vec<(&str, String)> = vec![
        ("CL and TE together", format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("identical CL twice", format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello")),
        ("conflicting CL", format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")),
        ("CL list", format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Content-Length: 5, 6\r\n\r\nhello!")),
        ("malformed CL", format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Content-Length: +5\r\n\r\nhello")),
        ("TE gzip, chunked", format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")),
        ("TE chunked twice", format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("TE identity", format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Transfer-Encoding: identity\r\n\r\n")),
        ("TE with space", format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Transfer-Encoding:  chunked x\r\n\r\n0\r\n\r\n")),
        ("obs-fold", format!("GET /v1/chat HTTP/1.1\r\nHost: x\r\n{a}X-Folded: a\r\n b\r\n\r\n")),
        ("space before colon", format!("GET /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Content-Length : 0\r\n\r\n")),
        ("NUL in value", format!("GET /v1/chat HTTP/1.1\r\nHost: x\r\n{a}X-A: a\0b\r\n\r\n")),
        ("CR in value", format!("GET /v1/chat HTTP/1.1\r\nHost: x\r\n{a}X-A: a\rb\r\n\r\n")),
        ("no Host", format!("GET /v1/chat HTTP/1.1\r\n{a}\r\n")),
        ("two Hosts", format!("GET /v1/chat HTTP/1.1\r\nHost: x\r\nHost: y\r\n{a}\r\n")),
        ("absolute-form for another host", format!("GET http://evil.example/v1/chat HTTP/1.1\r\nHost: x\r\n{a}\r\n")),
        ("CONNECT", format!("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n{a}\r\n")),
        ("TRACE", format!("TRACE /v1/chat HTTP/1.1\r\nHost: x\r\n{a}\r\n")),
    ];
    for (name, req) in cases {
        let resp = raw_async(g.addr, req.into_bytes()).await;
        let status = status_of(&resp);
        assert!(
            resp.is_empty() || (400..500).contains(&status),
            "{name}: expected a 4xx or a closed connection, got {resp:.120}"
        );
        assert_ne!(status, 200, "{name}");
    }
    assert_eq!(
        up.count(),
        0,
        "the upstream saw a request it should not have"
    );

    // Baselines: the same requests, well formed, pass (so the refusals above mean something).
    let ok = raw_async(g.addr, format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Content-Length: 5\r\nConnection: close\r\n\r\nhello").into_bytes()).await;
    assert_eq!(status_of(&ok), 200, "{ok:.200}");
    let ok = raw_async(g.addr, format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes()).await;
    assert_eq!(status_of(&ok), 200, "{ok:.200}");
    let own = g.addr.to_string();
    let ok = raw_async(
        g.addr,
        format!("GET http://{own}/v1/chat HTTP/1.1\r\nHost: {own}\r\n{a}Connection: close\r\n\r\n")
            .into_bytes(),
    )
    .await;
    assert_eq!(
        status_of(&ok),
        200,
        "absolute-form for this host: {ok:.200}"
    );
    assert_eq!(up.count(), 3);
    for r in up.requests() {
        assert_eq!(r.uri, "/api/chat");
        assert!(
            r.headers.get("transfer-encoding").is_none()
                || r.headers["transfer-encoding"] == "chunked"
        );
    }
}

/// hyper drops Content-Length when Transfer-Encoding is present (RFC 9112 section 6.3) before any
/// handler sees the headers; the connection's byte scanner sees the raw head and the request is
/// refused with 400 and a closed connection, so a request smuggled behind it is never read.
#[tokio::test]
async fn content_length_with_chunked_is_400_and_cannot_smuggle_a_second_request() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (_, _, key) = provision(&g, "pro").await;
    let a = format!("Authorization: Bearer {key}\r\n");
    // A front end using Content-Length would see one request; a parser using chunked sees an
    // empty body and then a second request (to an admin path).
    let smuggled = "GET /api/admin/agents HTTP/1.1\r\nHost: x\r\n\r\n";
    for (first, second) in [
        ("Content-Length", "Transfer-Encoding"),
        ("Transfer-Encoding", "Content-Length"),
    ] {
        let (v1, v2) = if first == "Content-Length" {
            ((5 + smuggled.len()).to_string(), "chunked".to_string())
        } else {
            ("chunked".to_string(), (5 + smuggled.len()).to_string())
        };
        // A normal request first on the same connection: the refusal hits the right one.
        let req = format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\n{a}\r\nPOST /v1/chat HTTP/1.1\r\nHost: x\r\n{a}{first}: {v1}\r\n{second}: {v2}\r\n\r\n0\r\n\r\n{smuggled}"
        );
        let resp = raw_async(g.addr, req.into_bytes()).await;
        let statuses: Vec<u16> = resp
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| status_of(&resp[i..]))
            .collect();
        assert_eq!(statuses, vec![200, 400], "{resp}");
        assert!(resp.contains("INVALID_INPUT"));
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "only the two GETs: {seen:?}");
    assert!(seen.iter().all(|r| r.uri == "/api/v1/models"));
}

#[tokio::test]
async fn oversized_request_lines_and_header_counts_are_414_or_431() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let long_line = format!(
        "GET /api/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100_000)
    );
    let s = status_of(&raw_async(g.addr, long_line.into_bytes()).await);
    assert!(s == 414 || s == 431, "{s}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let s = status_of(
        &raw_async(
            g.addr,
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes(),
        )
        .await,
    );
    assert_eq!(s, 431);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn slow_and_idle_floods_do_not_starve_health_checks() {
    let up = Upstream::start().await;
    let yaml = shipped_yaml().replace(
        "header_read_timeout_secs: 10",
        "header_read_timeout_secs: 1",
    );
    let g = start(config_from(&yaml, &up.url(), &[])).await;
    let addr = g.addr;
    // 200 connections: half send a partial head and stall (slowloris), half send nothing.
    let mut held = Vec::new();
    for i in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            use tokio::io::AsyncWriteExt;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        held.push(s);
    }
    let started = Instant::now();
    let r = get(&g.url("/healthz"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The stalled heads are cut off by the header read timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), held[0].read(&mut buf))
        .await
        .expect("not closed")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");

    // A slow body on a proxied route does not hold up others either.
    let (_, _, key) = provision(&g, "pro").await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        slow.write_all(format!("POST /v1/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\nabc").as_bytes())
            .await
            .unwrap();
    }
    let started = Instant::now();
    assert_eq!(get(&g.url("/healthz"), &[]).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn regression_connections_that_never_sent_a_byte_were_never_closed() {
    let up = Upstream::start().await;
    let yaml = shipped_yaml()
        .replace(
            "header_read_timeout_secs: 10",
            "header_read_timeout_secs: 1",
        )
        .replace("max_connections: 10000", "max_connections: 20");
    let g = start(config_from(&yaml, &up.url(), &[("ARES_WORKERS", "1")])).await;
    // More silent sockets than the gateway takes connections.
    let mut silent = Vec::new();
    for _ in 0..30 {
        silent.push(tokio::net::TcpStream::connect(g.addr).await.unwrap());
    }
    // Each is closed once the first-byte bound (the header timeout) passes...
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent[0].read(&mut buf))
        .await
        .expect("a silent connection was still open after 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    // ...so new clients get in while more silent ones keep arriving.
    let started = Instant::now();
    let r = get(&g.url("/healthz"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn regression_a_clients_malformed_chunked_body_was_answered_502() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let token = login(&g, "chunks@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let head = format!(
        "POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // A valid chunk, then a chunk size that is not hex.
    s.write_all(b"5\r\nhello\r\nZZ\r\nmore\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("INVALID_INPUT"), "{text}");
}

#[tokio::test]
async fn regression_text_plain_bodies_and_arrays_were_accepted_as_json() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let req = http::Request::post(g.url("/api/auth/register"))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"email":"plain@example.com","password":"your-secure-password","name":"P"}"#,
        )))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 415);
    let (tenant, _, _) = provision(&g, "pro").await;
    let r = send(
        "PUT",
        &g.url(&format!("/api/admin/tenants/{tenant}/limits")),
        &admin(),
        Some("[7,8,9]"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "INVALID_INPUT");
}

#[tokio::test]
async fn regression_admin_looking_paths_reached_the_upstream_with_a_users_jwt() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let token = login(&g, "casey@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = bearer(&token);
    for path in [
        "/api/ADMIN/tenants/ten_1/agents",
        "/api/admin;x/tenants",
        "/api/admin%3Bx/tenants",
        "/api/Admin/anything",
    ] {
        let r = get(&g.url(path), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.error_code(), "INVALID_INPUT", "{path}");
    }
    assert_eq!(up.count(), 0, "none reached the upstream");
    // Upper case that changes no credential rule is forwarded as it is.
    let r = get(&g.url("/api/chat/ABC"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/api/chat/ABC");
}

/// Third round: readings of a further-normalising upstream (servlet `;` parameters beside dot
/// or empty segments, a second percent-decoding, overlong and invalid UTF-8, fullwidth letters,
/// trailing dots and spaces) reached `/api/admin/...` upstream with a user's JWT, over HTTP/1.1
/// and HTTP/2, and were forwarded as sent.
#[tokio::test]
async fn regression_paths_an_upstream_reads_as_admin_were_forwarded_with_a_users_jwt() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let token = login(&g, "dana@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = bearer(&token);
    let paths = [
        "/api/x/..;/admin/x",
        "/api/;/admin/x",
        "/api/x/..;x/admin/tenants",
        "/api/%2561dmin/tenants",
        "/api/x%252F..%252Fadmin/tenants",
        "/api/x/%C0%AE%C0%AE%C0%AFadmin/tenants",
        "/api/x/%C0%AE%C0%AE/admin/tenants",
        "/api/adm%FFin/tenants",
        "/api/%EF%BD%81%EF%BD%84%EF%BD%8D%EF%BD%89%EF%BD%8E/tenants",
        "/api/admin./tenants",
        "/api/admin%20/tenants",
        "/api/x/..%20/admin/tenants",
        "/api/x/...;/admin/tenants",
    ];
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for path in paths {
        let r = get(&g.url(path), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(r.error_code(), "INVALID_INPUT", "{path}");
        let req = http::Request::get(g.url(path))
            .header("authorization", &auth)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = h2.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 400, "{path} over h2");
    }
    assert_eq!(up.count(), 0, "none reached the upstream");
    // What no reading takes elsewhere is forwarded as it is.
    for path in [
        "/api/chat/a%2561b",
        "/api/files/report.",
        "/api/x;v=1/chat",
        "/api/caf%C3%A9",
    ] {
        let r = get(&g.url(path), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
}

/// Third round: `X-Original-URL`, `X-Rewrite-URL`, `X-Forwarded-Prefix` and the method-override
/// headers reached the upstream, where a framework honouring them routes the request elsewhere.
#[tokio::test]
async fn regression_rewrite_and_method_override_headers_were_forwarded() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let token = login(&g, "eli@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = bearer(&token);
    let headers = [
        ("authorization", auth.as_str()),
        ("x-original-url", "/api/admin/tenants"),
        ("x-rewrite-url", "/api/admin/tenants"),
        ("x-forwarded-prefix", "/api/admin"),
        ("x-forwarded-path", "/api/admin/tenants"),
        ("x-forwarded-uri", "/api/admin/tenants"),
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("x-kept", "yes"),
    ];
    let r = post(&g.url("/api/chat"), &headers, "{}").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    for (name, _) in &headers[1..9] {
        assert!(seen.headers.get(*name).is_none(), "{name} was forwarded");
    }
    assert_eq!(seen.headers["x-kept"], "yes", "other headers pass");
}

/// Third round: a zero-padded `Content-Length: 010` was forwarded verbatim; an upstream that
/// reads it as octal (8) frames the body apart from the gateway (10).
#[tokio::test]
async fn regression_a_zero_padded_content_length_was_forwarded_verbatim() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (_, _, key) = provision(&g, "pro").await;
    let req = format!(
        "POST /v1/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 010\r\nConnection: close\r\n\r\n{{\"a\":\"12\"}}"
    );
    let resp = raw_async(g.addr, req.into_bytes()).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = up.last();
    assert_eq!(seen.headers["content-length"], "10");
    assert_eq!(seen.body.as_ref(), br#"{"a":"12"}"#);
}

/// The shipped config with the per-address limit of `/api/auth/*` out of the way, and the
/// failed-login ceilings per (account, address) and per account at `per_ip` and `per_account`.
fn login_ceilings(up: &str, per_ip: u64, per_account: u64) -> ares_gateway::config::Config {
    let yaml = shipped_yaml()
        .replace(
            "  auth_ip:\n    requests_per_minute: 30\n    requests_per_hour: 300\n",
            "  auth_ip:\n    requests_per_minute: 100000\n",
        )
        .replace(
            "  login_failures_per_account_ip:\n    requests_per_hour: 10\n",
            &format!("  login_failures_per_account_ip:\n    requests_per_hour: {per_ip}\n"),
        )
        .replace(
            "  login_failures_per_account:\n    requests_per_hour: 100\n",
            &format!("  login_failures_per_account:\n    requests_per_hour: {per_account}\n"),
        );
    config_from(&yaml, up, &[])
}

async fn wrong_logins_at_once(g: &impl Gate, email: &str, n: usize) -> (usize, usize) {
    let body = format!(r#"{{"email":"{email}","password":"wrong-password-1"}}"#);
    let url = g.url("/api/auth/login");
    let all = (0..n).map(|_| post(&url, &[], &body));
    let codes: Vec<u16> = futures_util::future::join_all(all)
        .await
        .iter()
        .map(|r| r.status.as_u16())
        .collect();
    let checked = codes.iter().filter(|c| **c == 401).count();
    let refused = codes.iter().filter(|c| **c == 429).count();
    assert_eq!(checked + refused, n, "{codes:?}");
    (checked, refused)
}

/// Third round: a ceiling was checked before the attempt and counted after it, so parallel
/// guesses all passed the check (100, 119, 198, 299 checked against a ceiling of 100 at 1, 20,
/// 100, 200 at once; 30 of 30 against 10 from one address). Now each attempt takes its place
/// first: exactly the ceiling is checked, at 200 in parallel.
#[tokio::test]
async fn regression_failed_login_ceilings_overshot_by_the_concurrency() {
    let up = Upstream::start().await;
    let g = pipeline_of(login_ceilings(&up.url(), 100_000, 100)).await;
    login(&g, "target@example.com").await;
    let (checked, refused) = wrong_logins_at_once(&g, "target@example.com", 200).await;
    assert_eq!((checked, refused), (100, 100), "per account, 200 at once");
    let g = pipeline_of(login_ceilings(&up.url(), 10, 100)).await;
    login(&g, "target@example.com").await;
    let (checked, refused) = wrong_logins_at_once(&g, "target@example.com", 30).await;
    assert_eq!(
        (checked, refused),
        (10, 20),
        "per account and address, 30 at once"
    );
    // A success gives its place back: the owner's right password still counts nothing.
    let g = pipeline_of(login_ceilings(&up.url(), 3, 100)).await;
    login(&g, "owner@example.com").await;
    for _ in 0..5 {
        let r = post(
            &g.url("/api/auth/login"),
            &[],
            r#"{"email":"owner@example.com","password":"your-secure-password"}"#,
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        wrong_logins_at_once(&g, "owner@example.com", 5).await,
        (3, 2)
    );
}

/// Third round: with Redis full (`maxmemory`, `noeviction`) failed logins were not counted, so
/// 25 wrong passwords from one address were all checked against a ceiling of 10, and a right
/// password answered 503 where a wrong one answered 401: an oracle. Now an attempt whose place
/// cannot be counted is refused before the password is checked, the same for both.
#[tokio::test]
async fn regression_failed_logins_were_not_counted_with_redis_full() {
    let redis = crate::common::redis::RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(
        &up.url(),
        &[("ARES_STORE", "redis"), ("REDIS_URL", &redis.url())],
    );
    let g = start(cfg).await;
    login(&g, "full@example.com").await;
    crate::common::redis::cli(
        redis.port,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    crate::common::redis::cli(redis.port, &["CONFIG", "SET", "maxmemory", "1"]);
    let mut answers = Vec::new();
    for password in ["wrong-password-1", "your-secure-password"] {
        for _ in 0..12 {
            let r = post(
                &g.url("/api/auth/login"),
                &[],
                &format!(r#"{{"email":"full@example.com","password":"{password}"}}"#),
            )
            .await;
            answers.push((r.status.as_u16(), r.error_code()));
        }
    }
    assert!(
        answers
            .iter()
            .all(|a| a == &(503, "STORE_UNAVAILABLE".to_string())),
        "{answers:?}"
    );
    crate::common::redis::cli(redis.port, &["CONFIG", "SET", "maxmemory", "0"]);
    let r = post(
        &g.url("/api/auth/login"),
        &[],
        r#"{"email":"full@example.com","password":"your-secure-password"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "room again: the owner logs in");
}

/// Third round, item 7: `Host: x/api/admin` and `Host: evil@x` were accepted (RFC 9112 3.2
/// requires 400 for an invalid Host).
#[tokio::test]
async fn regression_an_invalid_host_was_accepted() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    for host in [
        "x/api/admin",
        "evil@x",
        "a b",
        "x:80x",
        "[::1",
        "x\\y",
        "x?y",
        "x#y",
    ] {
        let req = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let resp = raw_async(g.addr, req.into_bytes()).await;
        assert_eq!(status_of(&resp), 400, "Host: {host}: {resp}");
    }
    for host in [
        "gw.example.com",
        "gw.example.com:8443",
        "127.0.0.1:80",
        "[::1]:8080",
        "xn--bcher-kva.example",
    ] {
        let req = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let resp = raw_async(g.addr, req.into_bytes()).await;
        assert_eq!(status_of(&resp), 200, "Host: {host}: {resp}");
    }
}

/// Third round, item 7: a 16 KB request line was forwarded (no 414 at any length).
#[tokio::test]
async fn regression_a_16k_request_line_was_forwarded() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (_, _, key) = provision(&g, "pro").await;
    let auth = bearer(&key);
    let long = format!("/v1/chat?q={}", "a".repeat(16 * 1024));
    let r = post(&g.url(&long), &[("authorization", &auth)], "{}").await;
    assert_eq!(r.status, 414);
    assert_eq!(r.error_code(), "URI_TOO_LONG");
    assert_eq!(up.count(), 0);
    let fits = format!("/v1/chat?q={}", "a".repeat(8_000));
    let r = post(&g.url(&fits), &[("authorization", &auth)], "{}").await;
    assert_eq!(
        r.status, 200,
        "within server.max_request_target_bytes (8192)"
    );
}

/// Third round, item 7: with two `Origin` headers the allowed one won.
#[tokio::test]
async fn regression_two_origin_headers_let_the_allowed_one_win() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[("ARES_CORS_ORIGINS", "https://app.example")]).await;
    let one = get(&g.url("/healthz"), &[("origin", "https://app.example")]).await;
    assert_eq!(
        one.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let two = get(
        &g.url("/healthz"),
        &[
            ("origin", "https://evil.example"),
            ("origin", "https://app.example"),
        ],
    )
    .await;
    assert_eq!(two.header("access-control-allow-origin"), None, "{two:?}");
}

/// Third round, item 7: invalid UTF-8 inside a JSON body was accepted (RFC 8259 8.1).
#[tokio::test]
async fn regression_invalid_utf8_in_a_json_body_was_accepted() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let mut body =
        br#"{"email":"utf@example.com","password":"your-secure-password","name":"J","x":""#
            .to_vec();
    body.extend_from_slice(b"\xff\xfe");
    body.extend_from_slice(br#""}"#);
    let mut req = format!(
        "POST /api/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let resp = raw_async(g.addr, req).await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert!(resp.contains("INVALID_INPUT"), "{resp}");
}

/// Third round, item 7: a token signed with the real key and `exp` 2^63 was accepted: no
/// lifetime cap for the gateway's own issuer.
#[tokio::test]
async fn regression_a_token_of_the_gateways_issuer_living_far_past_its_ttl_was_accepted() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let t = login(&g, "ttl@example.com").await;
    let sub = t["user_id"].as_str().unwrap_or("usr_x").to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let sign = |exp: u64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"iss": "ares-gateway", "sub": sub, "email": "ttl@example.com",
                                "iat": now, "exp": exp, "jti": format!("j{exp}")}),
            &key,
        )
        .unwrap()
    };
    let chat = |token: String| {
        let g = &g;
        async move {
            post(
                &g.url("/api/chat"),
                &[("authorization", &bearer(&token))],
                "{}",
            )
            .await
        }
    };
    assert_eq!(
        chat(sign(now + 900)).await.status,
        200,
        "the gateway's own lifetime"
    );
    assert_eq!(chat(sign(1 << 63)).await.status, 401, "exp 2^63");
    assert_eq!(chat(sign(now + 7 * 86_400)).await.status, 401, "a week");
}

/// Third round, item 7: wrong admin secrets were never throttled (300 in 0.1 s, all 401). Now
/// each takes its place in the address's ceiling (shipped: 10 per minute) before the compare.
#[tokio::test]
async fn regression_wrong_admin_secrets_were_never_throttled() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    // A right secret gives its place back: many admin calls never fill the ceiling.
    for _ in 0..15 {
        assert_eq!(
            get(&g.url("/api/admin/tenants"), &admin()).await.status,
            200
        );
    }
    let url = g.url("/api/admin/tenants");
    let wrong = [("x-admin-secret", "wrong-admin-secret-0123456789")];
    let all = (0..30).map(|_| get(&url, &wrong));
    let codes: Vec<u16> = futures_util::future::join_all(all)
        .await
        .iter()
        .map(|r| r.status.as_u16())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 10, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 20, "{codes:?}");
    // Forwarded admin paths (ARES's own) are behind the same ceiling.
    let r = get(&g.url("/api/admin/tenants/t/agents"), &wrong).await;
    assert_eq!(r.status, 429);
    assert_eq!(up.count(), 0);
}

/// Third round, item 7: after 120 bad keys from one address, a tenant's own valid key from
/// that address was 429 too (a neighbour behind the same NAT locked the tenant out). A key the
/// gateway already holds as valid now passes; unknown keys from there are still refused.
#[tokio::test]
async fn regression_a_blocked_address_locked_out_a_tenants_valid_key() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (_, _, key) = provision(&g, "pro").await;
    let good = bearer(&key);
    assert_eq!(
        post(&g.url("/v1/chat"), &[("authorization", &good)], "{}")
            .await
            .status,
        200
    );
    let bad = bearer(&ares_gateway::auth::api_key::generate().raw);
    let mut last = 0;
    for _ in 0..40 {
        last = post(&g.url("/v1/chat"), &[("authorization", &bad)], "{}")
            .await
            .status
            .as_u16();
    }
    assert_eq!(last, 429, "the address is over its refused-key limit");
    let r = post(&g.url("/v1/chat"), &[("authorization", &good)], "{}").await;
    assert_eq!(r.status, 200, "the tenant's own key still works: {r:?}");
    let other = bearer(&ares_gateway::auth::api_key::generate().raw);
    let r = post(&g.url("/v1/chat"), &[("authorization", &other)], "{}").await;
    assert_eq!(r.status, 429, "an unknown key from there is still refused");
}

/// An upstream that misbehaves by path, at the TCP level.
async fn rogue_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                match path.as_str() {
                    "/api/v1/garbage" => {
                        let _ = s.write_all(b"this is not HTTP\r\n\r\n").await;
                    }
                    "/api/v1/huge-headers" => {
                        let big = format!(
                            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
                            "a".repeat(1 << 20)
                        );
                        let _ = s.write_all(big.as_bytes()).await;
                    }
                    "/api/v1/reset-mid-stream" => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n6\r\ndata: \r\n")
                            .await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        // Close without the last chunk.
                    }
                    "/api/v1/close-early" => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
                            .await;
                    }
                    _ => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_faults_become_502_or_a_cleanly_ended_stream() {
    let rogue = rogue_upstream().await;
    let g = gateway(&format!("http://{rogue}"), &[]).await;
    let (_, _, key) = provision(&g, "pro").await;
    let auth = bearer(&key);
    for path in ["/v1/garbage", "/v1/huge-headers"] {
        let started = Instant::now();
        let r = get(&g.url(path), &[("authorization", &auth)]).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (502, "UPSTREAM_UNAVAILABLE"),
            "{path}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{path}");
    }
    // Mid-stream failures end the client's stream (an error or a short body), never a hang.
    for path in ["/v1/reset-mid-stream", "/v1/close-early"] {
        let req = http::Request::get(g.url(path))
            .header("authorization", &auth)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            let resp = client().request(req).await?;
            use http_body_util::BodyExt;
            resp.into_body()
                .collect()
                .await
                .map(|_| ())
                .map_err(|e| e.into())
        })
        .await;
        let ended: Result<(), Box<dyn std::error::Error + Send + Sync>> =
            outcome.expect("client hung");
        assert!(
            ended.is_err(),
            "{path}: a truncated upstream body must not look complete"
        );
    }
}

#[tokio::test]
async fn regression_raw_non_ascii_paths_are_forwarded_percent_encoded() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let tokens = login(&g, "utf8@example.com").await;
    let auth = format!(
        "Authorization: Bearer {}\r\n",
        tokens["access_token"].as_str().unwrap()
    );
    let mut req = b"GET /api/caf".to_vec();
    req.extend_from_slice(&[0xC3, 0xA9]);
    req.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    );
    let resp = raw_async(g.addr, req).await;
    let status = status_of(&resp);
    // hyper's parser lets the raw bytes through; the upstream sees them percent-encoded.
    assert_eq!(status, 200, "{resp:.200}");
    assert_eq!(up.last().uri, "/api/caf%C3%A9");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let yaml = shipped_yaml().replace(
        "header_read_timeout_secs: 10",
        "header_read_timeout_secs: 1",
    );
    let g = start(config_from(&yaml, &up.url(), &[])).await;
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then silence: the connection is closed within a few seconds, not held forever.
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("idle connection kept open");
    assert_eq!(n.unwrap_or(0), 0);
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn tls_handshakes_that_stall_are_cut_off() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let yaml = shipped_yaml().replace(
        "tls_handshake_timeout_secs: 10",
        "tls_handshake_timeout_secs: 1",
    );
    let g = start(config_from(
        &yaml,
        "http://127.0.0.1:1",
        &[
            ("ARES_TLS_CERT", c.to_str().unwrap()),
            ("ARES_TLS_KEY", k.to_str().unwrap()),
        ],
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("handshake not bounded");
    assert_eq!(n.unwrap_or(0), 0);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// Issue 24: any method token was forwarded (`FOO`, `TRACK`, `PROPFIND`, lowercase `get`). Only
/// RFC 9110's methods and PATCH (less CONNECT and TRACE) reach the upstream; every 405 names what
/// the resource takes in `Allow`.
#[tokio::test]
async fn unknown_method_tokens_are_405_with_allow_and_never_forwarded() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (_, _, key) = provision(&g, "pro").await;
    let auth = bearer(&key);
    let forwarded = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
    for method in ["FOO", "TRACK", "PROPFIND", "get", "Post", "TRACE"] {
        for path in ["/v1/chat", "/api/chat", "/api/admin/tenants", "/nowhere"] {
            let r = send(method, &g.url(path), &[("authorization", &auth)], None).await;
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("allow"), Some(forwarded), "{method} {path}");
            assert_eq!(r.error_code(), "METHOD_NOT_ALLOWED");
        }
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    // Gateway-served resources name their own methods.
    let cases = [
        ("GET", "/api/auth/login", false, "POST"),
        ("POST", "/api/auth/me", false, "GET"),
        ("POST", "/healthz", false, "GET, HEAD"),
        ("GET", "/api/admin/provision-client", true, "POST"),
        ("PUT", "/api/admin/tenants", true, "GET, POST"),
        ("GET", "/api/admin/tenants/ten_1/limits", true, "PUT"),
        (
            "GET",
            "/api/admin/tenants/ten_1/api-keys/import",
            true,
            "POST",
        ),
        (
            "POST",
            "/api/admin/tenants/ten_1/api-keys/key_1",
            true,
            "PATCH, DELETE",
        ),
        ("PUT", "/api/admin/users/usr_1", true, "GET, PATCH, DELETE"),
    ];
    for (method, path, as_admin, allow) in cases {
        let headers: &[(&str, &str)] = if as_admin { &admin() } else { &[] };
        let r = send(method, &g.url(path), headers, None).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    // The methods it forwards still pass.
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        let r = send(
            method,
            &g.url("/v1/chat"),
            &[("authorization", &auth)],
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{method}");
    }
}

/// Issue 24: a body trickled to `/api/auth/*` was held 45 s (only the 300 s idle bound applied).
/// Gateway-served endpoints wait at most 10 s for the whole body: 408 and the connection closed.
#[tokio::test]
async fn a_trickled_body_to_a_gateway_endpoint_meets_a_total_deadline() {
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let addr = g.addr;
    let (status, took, closed) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let started = Instant::now();
        s.write_all(
            b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"email\"",
        )
        .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // One byte a second, forever: never a whole body.
        while started.elapsed() < Duration::from_secs(30) {
            let _ = s.write_all(b" ");
            match s.read(&mut buf) {
                Ok(0) => return (status_of(&String::from_utf8_lossy(&out)), started.elapsed(), true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        (status_of(&String::from_utf8_lossy(&out)), started.elapsed(), false)
    })
    .await
    .unwrap();
    assert_eq!(status, 408);
    assert!(closed, "the connection is closed after the 408");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// Issue 24: a proxied body had only the 300 s idle bound, so one byte every few seconds held a
/// connection and an upstream request for ever. It must now keep a minimum rate (here 1 s grace
/// and 50 bytes/s): trickled, it is cut with 408; sent at a steady pace, it goes through.
#[tokio::test]
async fn a_trickled_proxied_body_falls_behind_the_minimum_rate() {
    let up = Upstream::start().await;
    let yaml = shipped_yaml()
        .replace("request_body_grace_secs: 20", "request_body_grace_secs: 1")
        .replace(
            "request_body_min_rate_bytes: 500",
            "request_body_min_rate_bytes: 50",
        );
    let g = start(config_from(&yaml, &up.url(), &[])).await;
    let token = login(&g, "slow@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let send = |chunk: &'static [u8], every: Duration, count: usize| {
        let (addr, token) = (g.addr, token.clone());
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let len = chunk.len() * count;
            let head = format!(
                "POST /api/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).unwrap();
            let started = Instant::now();
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            let mut sent = 0;
            while started.elapsed() < Duration::from_secs(30) {
                if sent < count {
                    let _ = s.write_all(chunk);
                    sent += 1;
                }
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        if String::from_utf8_lossy(&out).contains("\r\n\r\n") {
                            std::thread::sleep(Duration::from_millis(100));
                            if let Ok(n) = s.read(&mut buf) {
                                out.extend_from_slice(&buf[..n]);
                            }
                            break;
                        }
                    }
                    Err(_) => {}
                }
                std::thread::sleep(every);
            }
            (
                String::from_utf8_lossy(&out).into_owned(),
                started.elapsed(),
            )
        })
    };
    // 1 byte every 200 ms (5 bytes/s) of 200: far behind 50 bytes/s after the first second.
    let (reply, took) = send(b"x", Duration::from_millis(200), 200).await.unwrap();
    assert_eq!(status_of(&reply), 408, "{reply}");
    assert!(reply.contains("REQUEST_TIMEOUT"), "{reply}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // 100 bytes every 200 ms (500 bytes/s) for 2 s: ahead of the rate all along.
    let (reply, _) = send(&[b'y'; 100], Duration::from_millis(200), 10)
        .await
        .unwrap();
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert_eq!(up.last().body.len(), 1000);
}
