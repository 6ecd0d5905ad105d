//! The edge: TLS (HTTP/1.1 and h2 by ALPN), TLS 1.1 refused, certificate reload, WebSocket
//! pass-through, CORS, HTTPS upstreams with a private CA.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::pki::{write_atomic, Pki};
use crate::common::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn tls_client_config(pki: &Pki) -> rustls::ClientConfig {
    ares_gateway::net::tls::upstream_client_config(true, Some(&pki.ca_path())).unwrap()
}

/// The certificate the gateway presents on a fresh connection.
async fn served_cert(addr: std::net::SocketAddr, pki: &Pki) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(pki)));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn https_get(url: &str, pki: &Pki, h2: bool) -> (http::StatusCode, http::Version, Bytes) {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_client_config(pki))
        .https_only();
    let connector = if h2 {
        b.enable_all_versions().build()
    } else {
        b.enable_http1().build()
    };
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let (status, version) = (resp.status(), resp.version());
    (
        status,
        version,
        resp.into_body().collect().await.unwrap().to_bytes(),
    )
}

async fn tls_gateway(
    pki: &Pki,
    upstream: &str,
    poll_secs: u64,
) -> (TestGateway, PathBuf, PathBuf, Vec<u8>) {
    let (cert, key, der) = pki.issue("server", "first");
    let yaml = shipped_yaml().replace(
        "tls_reload_poll_secs: 10",
        &format!("tls_reload_poll_secs: {poll_secs}"),
    );
    let (c, k) = (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    );
    let g = start(config_from(
        &yaml,
        upstream,
        &[("ARES_TLS_CERT", &c), ("ARES_TLS_KEY", &k)],
    ))
    .await;
    (g, cert, key, der)
}

#[tokio::test]
async fn https_with_http1_and_h2_by_alpn() {
    let pki = Pki::new("ares test ca");
    let up = Upstream::start().await;
    let (g, _, _, _) = tls_gateway(&pki, &up.url(), 10).await;
    let base = format!("https://localhost:{}", g.addr.port());
    let (status, version, body) = https_get(&format!("{base}/healthz"), &pki, true).await;
    assert_eq!((status.as_u16(), version), (200, http::Version::HTTP_2));
    assert_eq!(body, r#"{"status":"ok"}"#);
    let (status, version, _) = https_get(&format!("{base}/healthz"), &pki, false).await;
    assert_eq!((status.as_u16(), version), (200, http::Version::HTTP_11));
    // Routing and errors are the same over h2 under TLS.
    let (status, _, body) = https_get(&format!("{base}/api/chat"), &pki, true).await;
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&body).contains("AUTH_MISSING_CREDENTIALS"));
    // The upstream is told the client came over https.
    let tokens = login_over(&g, &pki).await;
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_client_config(&pki))
        .https_only();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(b.enable_all_versions().build());
    let req = http::Request::get(format!("{base}/api/chat"))
        .header("authorization", bearer(&tokens))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 200);
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");
}

async fn login_over(g: &TestGateway, pki: &Pki) -> String {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_client_config(pki))
        .https_only();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(b.enable_http1().build());
    let base = format!("https://localhost:{}", g.addr.port());
    for (path, body) in [
        (
            "/api/auth/register",
            r#"{"email":"tls@example.com","password":"your-secure-password","name":"T"}"#,
        ),
        (
            "/api/auth/login",
            r#"{"email":"tls@example.com","password":"your-secure-password"}"#,
        ),
    ] {
        let req = http::Request::post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        if path.ends_with("login") {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            return v["access_token"].as_str().unwrap().to_string();
        }
    }
    unreachable!()
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let pki = Pki::new("ares test ca");
    let (g, _, _, _) = tls_gateway(&pki, "http://127.0.0.1:1", 10).await;
    let addr = g.addr;
    let reply = tokio::task::spawn_blocking(move || {
        // A minimal TLS 1.1 ClientHello: version 3.2, one suite (TLS_RSA_WITH_AES_128_CBC_SHA).
        let mut body = vec![0x03, 0x02];
        body.extend_from_slice(&[7u8; 32]);
        body.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]);
        let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut record = vec![0x16, 0x03, 0x02, 0x00, hs.len() as u8];
        record.extend_from_slice(&hs);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&record).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    })
    .await
    .unwrap();
    // An alert record (0x15) or a closed connection, never a ServerHello (0x16).
    assert!(
        reply.first() != Some(&0x16),
        "server answered a TLS 1.1 hello: {reply:?}"
    );
    assert!(reply.is_empty() || reply[0] == 0x15, "{reply:?}");
}

#[tokio::test]
async fn certificate_reloads_on_file_change_and_survives_a_broken_file() {
    let pki = Pki::new("ares test ca");
    let (g, cert, key, first) = tls_gateway(&pki, "http://127.0.0.1:1", 1).await;
    assert_eq!(served_cert(g.addr, &pki).await, first);

    // A broken file is logged and the old certificate keeps serving.
    write_atomic(
        &cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served_cert(g.addr, &pki).await, first);

    // A good new pair is picked up without a restart.
    let (new_cert, new_key, second) = pki.issue("next", "second");
    write_atomic(&key, &std::fs::read(new_key).unwrap());
    write_atomic(&cert, &std::fs::read(new_cert).unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if served_cert(g.addr, &pki).await == second {
            break;
        }
        assert!(Instant::now() < deadline, "certificate was not reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_bad_certificate_stops_start_up() {
    let pki = Pki::new("ares test ca");
    let (cert, key, first) = pki.issue("server", "first");
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"))
        .args([
            "serve",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"),
        ])
        .env("ARES_LISTEN", format!("127.0.0.1:{port}"))
        .env("ARES_METRICS_LISTEN", "off")
        .env("ARES_STORE", "memory")
        .env("ARES_TLS_CERT", &cert)
        .env("ARES_TLS_KEY", &key)
        .env("ARES_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_cert(addr, &pki).await, first);
    let (new_cert, new_key, second) = pki.issue("next", "second");
    write_atomic(&key, &std::fs::read(new_key).unwrap());
    write_atomic(&cert, &std::fs::read(new_cert).unwrap());
    sighup(&child);
    // The file poll runs every 10 s; SIGHUP must be much faster.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if served_cert(addr, &pki).await == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().await.unwrap();

    let bad = pki.dir.path().join("bad.crt");
    std::fs::write(&bad, "garbage").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"))
        .args([
            "serve",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"),
        ])
        .env("ARES_LISTEN", "127.0.0.1:0")
        .env("ARES_METRICS_LISTEN", "off")
        .env("ARES_STORE", "memory")
        .env("ARES_TLS_CERT", &bad)
        .env("ARES_TLS_KEY", &key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.crt"), "{err}");
}

/// A WebSocket upstream that echoes messages and records the handshake headers.
async fn ws_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)]
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    rec.lock().unwrap().push(req.headers().clone());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) => {
                            let _ = ws.send(Message::Text(format!("echo: {t}").into())).await;
                        }
                        Message::Binary(b) => {
                            let _ = ws.send(Message::Binary(b)).await;
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn websocket_upgrades_pass_through_after_authentication() {
    let (ws_addr, seen) = ws_upstream().await;
    let g = gateway(&format!("http://{ws_addr}"), &[]).await;
    let tokens = login(&g, "ws@example.com").await;
    let mut req = format!("ws://{}/api/ws", g.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        bearer(tokens["access_token"].as_str().unwrap())
            .parse()
            .unwrap(),
    );
    req.headers_mut()
        .insert("x-user-id", "usr_spoofed".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("echo: hello".into())
    );
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Binary(vec![1, 2, 3].into())
    );
    ws.close(None).await.unwrap();
    let h = seen.lock().unwrap()[0].clone();
    assert_eq!(h["x-auth-method"], "jwt");
    assert!(h["x-user-id"].to_str().unwrap().starts_with("usr_"));
    assert_ne!(h["x-user-id"], "usr_spoofed");
    assert!(h.get("authorization").is_none());

    // Without a credential the upgrade is 401 and never reaches the upstream.
    let before = seen.lock().unwrap().len();
    let req = format!("ws://{}/api/ws", g.addr)
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // A route without `websocket: true` does not upgrade (/api/v1/ here).
    let (_, _, key) = provision(&g, "dev").await;
    let mut req = format!("ws://{}/api/v1/ws", g.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", bearer(&key).parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    assert_eq!(seen.lock().unwrap().len(), before);
}

#[tokio::test]
async fn websocket_tunnels_close_when_idle() {
    let (ws_addr, _) = ws_upstream().await;
    let yaml = shipped_yaml().replace(
        "websocket_idle_timeout_secs: 300",
        "websocket_idle_timeout_secs: 1",
    );
    let g = start(config_from(&yaml, &format!("http://{ws_addr}"), &[])).await;
    let (_, _, key) = provision(&g, "dev").await;
    let mut req = format!("ws://{}/v1/ws", g.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", bearer(&key).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text("ping".into())).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    let started = Instant::now();
    // Silence: the gateway closes the tunnel after about a second.
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("tunnel not closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))));
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[tokio::test]
async fn cors_preflights_and_errors_are_readable_by_allowed_origins() {
    let up = Upstream::start().await;
    let g = gateway(
        &up.url(),
        &[(
            "ARES_CORS_ORIGINS",
            "https://app.example.com, https://admin.example.com",
        )],
    )
    .await;
    let r = send(
        "OPTIONS",
        &g.url("/api/chat"),
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let allow = r.header("access-control-allow-headers").unwrap();
    for h in [
        "authorization",
        "content-type",
        "x-admin-secret",
        "x-request-id",
    ] {
        assert!(allow.contains(h), "{allow}");
    }
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(up.count(), 0, "preflights are answered by the gateway");

    // A 401 is readable by the browser.
    let r = get(
        &g.url("/api/chat"),
        &[("origin", "https://admin.example.com")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://admin.example.com")
    );
    let expose = r.header("access-control-expose-headers").unwrap();
    for h in [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
        "x-request-id",
    ] {
        assert!(expose.contains(h), "{expose}");
    }
    // Other origins get nothing.
    let r = send(
        "OPTIONS",
        &g.url("/api/chat"),
        &[
            ("origin", "https://evil.example.com"),
            ("access-control-request-method", "POST"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(r.header("access-control-allow-methods").is_none());
    let r = get(
        &g.url("/healthz"),
        &[("origin", "https://evil.example.com")],
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn query_token_is_accepted_only_where_allowed_and_never_forwarded() {
    let up = Upstream::start().await;
    // An ops-written config: the token in the query only on /api/events/.
    let yaml = shipped_yaml()
        .replace("    query_token: true\n", "")
        .replace(
            "  - prefix: /api/\n    auth: jwt\n",
            "  - prefix: /api/events/\n    auth: jwt\n    upstream: default\n    query_token: true\n  - prefix: /api/\n    auth: jwt\n",
        );
    assert_eq!(yaml.matches("query_token: true").count(), 1);
    let g = start(config_from(&yaml, &up.url(), &[])).await;
    let tokens = login(&g, "sse@example.com").await;
    let token = tokens["access_token"].as_str().unwrap();
    let r = get(
        &g.url(&format!("/api/events/stream?x=1&access_token={token}")),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/api/events/stream?x=1");
    let r = get(&g.url(&format!("/api/chat?access_token={token}")), &[]).await;
    assert_eq!(r.status, 401, "not on routes without query_token");
}

/// An HTTPS upstream with a private CA, offering h2 and http/1.1.
async fn https_upstream(pki: &Pki) -> (u16, Arc<Mutex<Vec<http::Version>>>) {
    let (cert, key, _) = pki.issue("upstream", "upstream");
    let files = ares_gateway::net::tls::TlsFiles { cert, key };
    let reloader = ares_gateway::net::tls::CertReloader::new(&files).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(reloader.server_config().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let versions: Arc<Mutex<Vec<http::Version>>> = Arc::default();
    let rec = versions.clone();
    tokio::spawn(async move {
        let _keep = reloader;
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, rec) = (acceptor.clone(), rec.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    rec.lock().unwrap().push(req.version());
                    async move {
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                            b"{\"secure\":true}",
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, versions)
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_and_h2() {
    let pki = Pki::new("ares test ca");
    let (port, versions) = https_upstream(&pki).await;
    let ca = pki.ca_path();
    let g = gateway(
        &format!("https://localhost:{port}"),
        &[("ARES_UPSTREAM_CA", ca.to_str().unwrap())],
    )
    .await;
    let (_, _, key) = provision(&g, "dev").await;
    let r = get(&g.url("/v1/models"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, "{\"secure\":true}");
    assert_eq!(
        versions.lock().unwrap().last(),
        Some(&http::Version::HTTP_2)
    );

    // Without the private CA (system roots) the upstream is not trusted: 502.
    let g = gateway(&format!("https://localhost:{port}"), &[]).await;
    let (_, _, key) = provision(&g, "dev").await;
    let r = get(&g.url("/v1/models"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(r.status, 502);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is required for this test (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn rsa_pkcs1_pkcs8_and_sec1_ec_keys_and_chains_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA, and leaves with each key format, signed by it.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test ca",
        ],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa8.key",
        ],
    );
    openssl(
        d,
        &["rsa", "-in", "rsa8.key", "-traditional", "-out", "rsa1.key"],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec1.key",
        ],
    );
    let ext = d.join("ext.cnf");
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    for (key, cert) in [
        ("rsa8.key", "rsa8.crt"),
        ("rsa1.key", "rsa1.crt"),
        ("ec1.key", "ec1.crt"),
    ] {
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                key,
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                cert,
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
    }
    let head = |p: &str| {
        std::fs::read_to_string(d.join(p))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(head("rsa8.key"), "-----BEGIN PRIVATE KEY-----");
    assert_eq!(head("rsa1.key"), "-----BEGIN RSA PRIVATE KEY-----");
    assert_eq!(head("ec1.key"), "-----BEGIN EC PRIVATE KEY-----");

    // A chain file: the leaf, then the CA.
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(d.join("rsa1.crt")).unwrap(),
        std::fs::read_to_string(d.join("ca.pem")).unwrap()
    );
    std::fs::write(d.join("chain.crt"), chain).unwrap();

    let client_cfg =
        ares_gateway::net::tls::upstream_client_config(true, Some(&d.join("ca.pem"))).unwrap();
    for (cert, key, chain_len) in [
        ("rsa8.crt", "rsa8.key", 1),
        ("chain.crt", "rsa1.key", 2),
        ("ec1.crt", "ec1.key", 1),
    ] {
        let (c, k) = (d.join(cert), d.join(key));
        let g = start(config_from(
            &shipped_yaml(),
            "http://127.0.0.1:1",
            &[
                ("ARES_TLS_CERT", c.to_str().unwrap()),
                ("ARES_TLS_KEY", k.to_str().unwrap()),
            ],
        ))
        .await;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg.clone()));
        let tcp = tokio::net::TcpStream::connect(g.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("{cert}: {e}"));
        assert_eq!(
            tls.get_ref().1.peer_certificates().unwrap().len(),
            chain_len,
            "{cert}"
        );
    }
    // A key that does not belong to the certificate is refused at start-up, naming the files.
    let files = ares_gateway::net::tls::TlsFiles {
        cert: d.join("rsa8.crt"),
        key: d.join("ec1.key"),
    };
    let err = ares_gateway::net::tls::CertReloader::new(&files)
        .err()
        .expect("mismatched key accepted");
    assert!(err.contains("rsa8.crt") && err.contains("ec1.key"), "{err}");
}

#[tokio::test]
async fn browsers_stream_and_upgrade_with_the_shipped_config() {
    // EventSource cannot set Authorization: the access token rides in the query, on the JWT
    // route only, and never reaches the upstream.
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let tokens = login(&g, "es@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let r = get(
        &g.url(&format!("/api/chat/stream?x=1&access_token={access}&y=2")),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let seen = up.last();
    assert_eq!(seen.uri, "/api/chat/stream?x=1&y=2");
    assert!(!format!("{:?}", seen.headers).contains(access));
    assert!(seen.headers["x-user-id"]
        .to_str()
        .unwrap()
        .starts_with("usr_"));
    // Never on an API-key route.
    let (_, _, key) = provision(&g, "dev").await;
    let r = get(&g.url(&format!("/v1/chat?access_token={key}")), &[]).await;
    assert_eq!(r.status, 401);

    // A WebSocket: `new WebSocket(url, ["bearer", token])`.
    let (ws_addr, seen) = ws_upstream().await;
    let g = gateway(&format!("http://{ws_addr}"), &[]).await;
    let tokens = login(&g, "wsp@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let mut req = format!("ws://{}/api/ws", g.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {access}").parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    // The browser requires one of its offered protocols back; the token is never echoed.
    assert_eq!(resp.headers()["sec-websocket-protocol"], "bearer");
    ws.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("echo: hi".into())
    );
    let h = seen.lock().unwrap()[0].clone();
    assert!(h.get("sec-websocket-protocol").is_none(), "{h:?}");
    assert!(!format!("{h:?}").contains(access));
    assert_eq!(h["x-auth-method"], "jwt");
    // Other protocols the page asked for still reach the upstream.
    let mut req = format!("ws://{}/api/ws", g.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {access}, chat.v1").parse().unwrap(),
    );
    let _ = tokio_tungstenite::connect_async(req).await;
    let h = seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(h["sec-websocket-protocol"], "chat.v1");
    // A bad token in the protocol is a 401, like any other.
    let mut req = format!("ws://{}/api/ws", g.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "bearer, not-a-token".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn websocket_upgrades_from_an_origin_not_allowed_are_403() {
    let (ws_addr, seen) = ws_upstream().await;
    let g = gateway(
        &format!("http://{ws_addr}"),
        &[("ARES_CORS_ORIGINS", "https://app.example.com")],
    )
    .await;
    let tokens = login(&g, "wso@example.com").await;
    let access = bearer(tokens["access_token"].as_str().unwrap());
    let upgrade = |origin: Option<&'static str>| {
        let mut req = format!("ws://{}/api/ws", g.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", access.parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    match upgrade(Some("https://evil.example.com")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert!(body.contains("AUTH_FORBIDDEN"), "{body}");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(seen.lock().unwrap().is_empty(), "the upstream was reached");
    assert_eq!(
        upgrade(Some("https://app.example.com"))
            .await
            .unwrap()
            .1
            .status(),
        101
    );
    // No Origin: not a browser; the token decides.
    assert_eq!(upgrade(None).await.unwrap().1.status(), 101);
}

#[tokio::test]
async fn cors_allows_trace_context_and_configured_headers() {
    let up = Upstream::start().await;
    let yaml = shipped_yaml()
        .replace(
            "  allow_headers: \"\"",
            "  allow_headers: \"x-client-version\"",
        )
        .replace(
            "  expose_headers: \"\"",
            "  expose_headers: \"x-model-name\"",
        );
    assert!(yaml.contains("x-client-version") && yaml.contains("x-model-name"));
    let g = start(config_from(
        &yaml,
        &up.url(),
        &[("ARES_CORS_ORIGINS", "https://app.example.com")],
    ))
    .await;
    let r = send(
        "OPTIONS",
        &g.url("/api/chat"),
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, traceparent, tracestate, x-client-version",
            ),
        ],
        None,
    )
    .await;
    let allow = r.header("access-control-allow-headers").unwrap();
    for h in [
        "traceparent",
        "tracestate",
        "x-client-version",
        "authorization",
    ] {
        assert!(allow.contains(h), "{allow}");
    }
    let r = get(
        &g.url("/api/chat"),
        &[("origin", "https://app.example.com")],
    )
    .await;
    let expose = r.header("access-control-expose-headers").unwrap();
    for h in ["www-authenticate", "x-model-name", "ratelimit-remaining"] {
        assert!(expose.contains(h), "{expose}");
    }
    // A header name that is not a token is a config error naming the key.
    let bad = shipped_yaml().replace("  allow_headers: \"\"", "  allow_headers: \"x bad\"");
    let err = ares_gateway::config::Config::from_yaml(&bad, &|_| None).unwrap_err();
    assert!(
        err.iter()
            .any(|p| p.to_string().contains("cors.allow_headers")),
        "{err:?}"
    );
}
