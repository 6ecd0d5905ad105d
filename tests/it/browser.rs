//! A real browser against the gateway: Debian's `chromium`, headless, loads a page the test
//! serves on another origin; the page logs in across origins with a cookie session, chats and
//! reads `RateLimit-*`, streams with `EventSource`, echoes over a WebSocket, refreshes by the
//! cookie, and logs out everywhere, ending a second tab's token; a page on an origin that is
//! not allowed is refused. Each page posts what it saw back to the test's page server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// WebSocket upgrades that reached the upstream.
static UPSTREAM_WS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn up_ws_count() -> usize {
    UPSTREAM_WS.load(std::sync::atomic::Ordering::SeqCst)
}

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

/// The upstream: `/api/chat` answers JSON, `/api/chat/stream` sends three events 300 ms apart,
/// `/api/ws` is a WebSocket echo.
async fn upstream(mut req: Request<Incoming>) -> Response<BoxBody> {
    match req.uri().path() {
        "/api/ws" => {
            UPSTREAM_WS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(io) = upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(io),
                    Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(Message::Text(t))) = ws.next().await {
                    let _ = ws.send(Message::Text(format!("echo: {t}").into())).await;
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        }
        "/api/chat/stream" => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                for i in 1..=3 {
                    let frame = Frame::data(Bytes::from(format!("data: part {i}\n\n")));
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                // Stay open, as ARES does between events; the page closes the stream.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
            let stream = tokio_stream_from(rx);
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        _ => full(
            StatusCode::OK,
            "application/json",
            r#"{"response":"hello from the upstream"}"#,
        ),
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn serve_upgrading<F, Fut>(port: u16, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The page server: `/` and `/foreign` are the pages, `POST /results` is where they report.
/// `token` is what the foreign page tries its WebSocket with.
async fn page_server(
    port: u16,
    gateway: String,
    token: std::sync::Arc<std::sync::Mutex<String>>,
    results: mpsc::Sender<serde_json::Value>,
) -> SocketAddr {
    serve_upgrading(port, move |req: Request<Incoming>| {
        let (gateway, results, token) = (gateway.clone(), results.clone(), token.clone());
        async move {
            match (req.method().as_str(), req.uri().path()) {
                ("POST", "/results") => {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    let _ = results.send(v).await;
                    full(StatusCode::NO_CONTENT, "text/plain", "")
                }
                ("GET", "/foreign") => full(
                    StatusCode::OK,
                    "text/html",
                    FOREIGN
                        .replace("__GATEWAY__", &gateway)
                        .replace("__TOKEN__", &token.lock().unwrap()),
                ),
                ("GET", "/") => full(
                    StatusCode::OK,
                    "text/html",
                    PAGE.replace("__GATEWAY__", &gateway),
                ),
                _ => full(StatusCode::NOT_FOUND, "text/plain", "no"),
            }
        }
    })
    .await
}

const PAGE: &str = r#"<!doctype html><html><body><script>
const GW = "http://__GATEWAY__";
const out = {};
const json = {"Content-Type": "application/json"};
async function login(email) {
  const r = await fetch(GW + "/api/auth/login", {method: "POST", headers: json, credentials: "include",
    body: JSON.stringify({email, password: "your-secure-password"})});
  const v = await r.json();
  return {status: r.status, access: v.access_token, body_has_refresh: "refresh_token" in v};
}
function sse(token) {
  return new Promise((resolve) => {
    const got = [];
    const es = new EventSource(GW + "/api/chat/stream?access_token=" + encodeURIComponent(token));
    es.onmessage = (e) => {
      got.push({data: e.data, at: performance.now()});
      if (got.length === 3) { es.close(); resolve(got); }
    };
    es.onerror = () => { es.close(); resolve(got); };
  });
}
function ws(token) {
  return new Promise((resolve) => {
    const s = new WebSocket(GW.replace("http", "ws") + "/api/ws", ["bearer", token]);
    s.onopen = () => s.send("ping");
    s.onmessage = (e) => { resolve({echo: e.data, protocol: s.protocol}); s.close(); };
    s.onerror = () => resolve({error: true});
  });
}
async function run() {
  try {
    const reg = await fetch(GW + "/api/auth/register", {method: "POST", headers: json,
      body: JSON.stringify({email: "browser@example.com", password: "your-secure-password", name: "B"})});
    out.register = reg.status;
    const tab1 = await login("browser@example.com");
    out.login = {status: tab1.status, body_has_refresh: tab1.body_has_refresh,
      cookie_visible: document.cookie.includes("ares_refresh")};
    const chat = await fetch(GW + "/api/chat", {method: "POST",
      headers: {...json, "Authorization": "Bearer " + tab1.access, "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
      body: JSON.stringify({message: "Hello", agent_type: "product"})});
    out.chat = {status: chat.status, remaining: chat.headers.get("ratelimit-remaining"),
      body: await chat.json()};
    out.sse = await sse(tab1.access);
    out.ws = await ws(tab1.access);
    const refreshed = await fetch(GW + "/api/auth/refresh", {method: "POST", credentials: "include",
      headers: {"X-Requested-With": "fetch"}});
    out.refresh = {status: refreshed.status, has_access: "access_token" in (await refreshed.json())};
    const tab2 = await login("browser@example.com");
    const before = await fetch(GW + "/api/chat", {method: "POST", headers: {...json, "Authorization": "Bearer " + tab2.access}, body: "{}"});
    const all = await fetch(GW + "/api/auth/logout-all", {method: "POST", credentials: "include",
      headers: {"Authorization": "Bearer " + tab1.access}});
    const after = await fetch(GW + "/api/chat", {method: "POST", headers: {...json, "Authorization": "Bearer " + tab2.access}, body: "{}"});
    out.logout_all = {status: all.status, tab2_before: before.status, tab2_after: after.status,
      www_authenticate: after.headers.get("www-authenticate")};
  } catch (e) {
    out.error = String(e);
  }
  await fetch("/results", {method: "POST", body: JSON.stringify(out)});
}
run();
</script></body></html>"#;

const FOREIGN: &str = r#"<!doctype html><html><body><script>
const GW = "http://__GATEWAY__";
const out = {};
async function run() {
  try {
    await fetch(GW + "/api/auth/login", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({email: "browser@example.com", password: "your-secure-password"})});
    out.fetch = "allowed";
  } catch (e) {
    out.fetch = "blocked";
  }
  out.ws = await new Promise((resolve) => {
    const s = new WebSocket(GW.replace("http", "ws") + "/api/ws", ["bearer", "__TOKEN__"]);
    s.onopen = () => { resolve("open"); s.close(); };
    s.onerror = () => resolve("refused");
  });
  await fetch("/results", {method: "POST", body: JSON.stringify(out)});
}
run();
</script></body></html>"#;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Load `url` in headless Chromium and wait for the page's report.
async fn visit(
    browser: &str,
    url: &str,
    results: &mut mpsc::Receiver<serde_json::Value>,
) -> serde_json::Value {
    let profile = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(45), results.recv()).await;
    let _ = child.kill().await;
    got.expect("the page reported nothing within 45 s")
        .expect("page server gone")
}

#[tokio::test]
async fn a_real_browser_logs_in_streams_upgrades_refreshes_and_logs_out_everywhere() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no chromium here (.ci/run installs Debian's chromium)");
        return;
    };
    let up = serve_upgrading(0, upstream).await;
    let (tx, mut results) = mpsc::channel(4);
    // The page's origin must be in the gateway's CORS list before the gateway starts.
    let page_port = free_port();
    let app = format!("http://localhost:{page_port}");
    let g = gateway(
        &format!("http://{up}"),
        &[("ARES_CORS_ORIGINS", &app), ("ARES_AUTH_COOKIES", "true")],
    )
    .await;
    let gw_host = format!("localhost:{}", g.addr.port());
    let token = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    page_server(page_port, gw_host, token.clone(), tx).await;

    let v = visit(browser, &format!("{app}/"), &mut results).await;
    assert!(v.get("error").is_none(), "the page failed: {v}");
    assert_eq!(v["register"], 201, "{v}");
    // Cross-origin login with a cookie session: the refresh token is out of the script's reach.
    assert_eq!(v["login"]["status"], 200, "{v}");
    assert_eq!(v["login"]["body_has_refresh"], false, "{v}");
    assert_eq!(v["login"]["cookie_visible"], false, "{v}");
    // A chat, with RateLimit-* readable by the script (and traceparent let through).
    assert_eq!(v["chat"]["status"], 200, "{v}");
    assert!(
        v["chat"]["remaining"]
            .as_str()
            .is_some_and(|r| r.parse::<u64>().is_ok()),
        "{v}"
    );
    assert_eq!(v["chat"]["body"]["response"], "hello from the upstream");
    // EventSource: three frames, arriving as the upstream wrote them (300 ms apart), not at once.
    let frames = v["sse"].as_array().unwrap();
    assert_eq!(frames.len(), 3, "{v}");
    assert_eq!(frames[2]["data"], "part 3");
    let gap = frames[2]["at"].as_f64().unwrap() - frames[0]["at"].as_f64().unwrap();
    assert!(gap > 400.0, "the frames arrived together ({gap} ms): {v}");
    // WebSocket with the token as a subprotocol.
    assert_eq!(v["ws"]["echo"], "echo: ping", "{v}");
    assert_eq!(v["ws"]["protocol"], "bearer", "{v}");
    // The cookie refreshes.
    assert_eq!(v["refresh"]["status"], 200, "{v}");
    assert_eq!(v["refresh"]["has_access"], true, "{v}");
    // Log out everywhere ends the second tab's token.
    assert_eq!(v["logout_all"]["status"], 200, "{v}");
    assert_eq!(v["logout_all"]["tab2_before"], 200, "{v}");
    assert_eq!(v["logout_all"]["tab2_after"], 401, "{v}");
    assert!(
        v["logout_all"]["www_authenticate"]
            .as_str()
            .is_some_and(|h| h.starts_with("Bearer")),
        "{v}"
    );

    // Another origin (127.0.0.1 is not localhost): its fetch is blocked by CORS and its
    // WebSocket is refused by the gateway, even with a valid token.
    *token.lock().unwrap() = login(&g, "other@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let foreign = format!("http://127.0.0.1:{page_port}/foreign");
    let before = up_ws_count();
    let v = visit(browser, &foreign, &mut results).await;
    assert_eq!(v["fetch"], "blocked", "{v}");
    assert_eq!(v["ws"], "refused", "{v}");
    assert_eq!(up_ws_count(), before);
}
