//! Test harness: a recording upstream, an in-process gateway on 127.0.0.1:0, and an HTTP client.
#![allow(dead_code)]

pub mod otlp;
pub mod pki;
pub mod postgres;
pub mod real_ares;
pub mod redis;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ares_gateway::config::Config;
use ares_gateway::state::AppState;
use ares_gateway::Gateway;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const ADMIN: &str = "test-admin-secret-0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123";

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A real HTTP server that records every request and answers by path:
/// - `/api/v1/sse`: three SSE frames 300 ms apart
/// - `/api/slow`: answers after 3 s
/// - `/api/v1/tokens`: 200 with `x-input-tokens: 600`, `x-output-tokens: 400`
/// - `/api/hop`: a response carrying hop-by-hop headers
/// - anything else: 200 JSON `{"ok":true,"path":...}`
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let rec = seen.clone();
        let addr = serve(move |req| {
            let rec = rec.clone();
            async move { answer(req, rec).await }
        })
        .await;
        Upstream { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into())
        .map_err(|n: Infallible| match n {})
        .boxed_unsync()
}

async fn answer(req: Request<Incoming>, rec: Arc<Mutex<Vec<Recorded>>>) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    rec.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body,
    });
    let path = parts.uri.path().to_string();
    match path.as_str() {
        "/api/v1/sse" => {
            let (tx2, mut rx2) =
                tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                for i in 0..3 {
                    if tx2
                        .send(Ok(Frame::data(Bytes::from(format!("data: frame{i}\n\n")))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
            let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx2.poll_recv(cx)));
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body.boxed_unsync())
                .unwrap()
        }
        "/api/v1/stream-tokens" => {
            let frames = vec![
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"data: hi\n\n"))),
                Ok(Frame::trailers({
                    let mut t = HeaderMap::new();
                    t.insert("x-input-tokens", "300".parse().unwrap());
                    t.insert("x-output-tokens", "200".parse().unwrap());
                    t
                })),
            ];
            let body = StreamBody::new(futures_util::stream::iter(frames));
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("trailer", "x-input-tokens, x-output-tokens")
                .body(body.boxed_unsync())
                .unwrap()
        }
        "/api/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(full("slow"))
        }
        "/api/v1/tokens" => Response::builder()
            .header("x-input-tokens", "600")
            .header("x-output-tokens", "400")
            .body(full("{}"))
            .unwrap(),
        "/api/hop" => Response::builder()
            .header("connection", "x-secret-hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .body(full("{}"))
            .unwrap(),
        _ => Response::builder()
            .header("content-type", "application/json")
            .body(full(
                serde_json::json!({"ok": true, "path": path}).to_string(),
            ))
            .unwrap(),
    }
}

/// An in-process gateway on a free loopback port, stopped when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when the config enables it.
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// What the request helpers need of a gateway: where a path is. A [`TestGateway`] answers over
/// loopback sockets; a [`TestPipeline`] without any.
pub trait Gate {
    fn url(&self, path: &str) -> String;
    fn state(&self) -> &Arc<AppState>;
}

impl Gate for TestGateway {
    fn url(&self, path: &str) -> String {
        TestGateway::url(self, path)
    }
    fn state(&self) -> &Arc<AppState> {
        &self.state
    }
}

/// A built gateway (its store, state and housekeeping, as `Gateway::start` makes them) driven
/// without a socket: [`send`] hands a `pipeline://` URL's request to `pipeline::handle` and
/// reads the response, as from a client at 127.0.0.1 on a plain connection.
pub struct TestPipeline {
    gateway: TestGateway,
    id: usize,
}

/// The pipelines `send` can reach, by id (a test's own, dropped with it).
static PIPELINES: Mutex<Vec<std::sync::Weak<AppState>>> = Mutex::new(Vec::new());

impl TestPipeline {
    pub fn url(&self, path: &str) -> String {
        format!("pipeline://{}{path}", self.id)
    }
}

impl std::ops::Deref for TestPipeline {
    type Target = TestGateway;
    fn deref(&self) -> &TestGateway {
        &self.gateway
    }
}

impl Gate for TestPipeline {
    fn url(&self, path: &str) -> String {
        TestPipeline::url(self, path)
    }
    fn state(&self) -> &Arc<AppState> {
        &self.gateway.state
    }
}

/// The shipped config in a [`TestPipeline`] (as [`gateway`] builds a [`TestGateway`]).
pub async fn pipeline(upstream: &str, env: &[(&str, &str)]) -> TestPipeline {
    pipeline_of(config(upstream, env)).await
}

/// `cfg` in a [`TestPipeline`] (as [`start`] builds a [`TestGateway`]).
pub async fn pipeline_of(cfg: Config) -> TestPipeline {
    let gateway = start(cfg).await;
    let mut all = PIPELINES.lock().unwrap();
    all.push(Arc::downgrade(&gateway.state));
    TestPipeline {
        id: all.len() - 1,
        gateway,
    }
}

/// One request through a pipeline, without a socket.
async fn send_to_pipeline(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let rest = url.strip_prefix("pipeline://").expect("a pipeline URL");
    let split = rest.find('/').unwrap_or(rest.len());
    let (id, path) = (rest[..split].parse::<usize>().unwrap(), &rest[split..]);
    let state = PIPELINES.lock().unwrap()[id]
        .upgrade()
        .expect("the pipeline is still running");
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let bytes = Bytes::from(body.unwrap_or("").to_string());
    let req = b
        .body(ares_gateway::body::RequestBody::from(bytes))
        .unwrap();
    let conn = ares_gateway::pipeline::ConnInfo {
        peer: ares_gateway::proxy::Peer::new(SocketAddr::from(([127, 0, 0, 1], 50000))),
        tls: false,
        framing: None,
        upstreams: None,
    };
    let (parts, body) = ares_gateway::pipeline::handle(state, conn, req)
        .await
        .into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A test double's JSON answer.
pub fn json_reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// What a request carries after `Authorization: Bearer ` (empty without it): what a double
/// of an upstream verifies.
pub fn bearer_of<B>(req: &Request<B>) -> String {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string()
}

/// Serve `handler` on a free loopback port (HTTP/1.1 and h2c), each connection in its own task.
pub async fn serve<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The shipped config with test secrets, the given upstream, and `env` overrides.
pub fn config(upstream: &str, env: &[(&str, &str)]) -> Config {
    config_from(&shipped_yaml(), upstream, env)
}

pub fn config_from(yaml: &str, upstream: &str, env: &[(&str, &str)]) -> Config {
    let mut vars: Vec<(String, String)> = vec![
        ("ARES_LISTEN".into(), "127.0.0.1:0".into()),
        ("ARES_METRICS_LISTEN".into(), "off".into()),
        ("ARES_UPSTREAM".into(), upstream.into()),
        ("ARES_ADMIN_SECRET".into(), ADMIN.into()),
        ("ARES_JWT_SECRET".into(), JWT_SECRET.into()),
        ("ARES_STORE".into(), "memory".into()),
    ];
    for (k, v) in env {
        vars.retain(|(n, _)| n != k);
        vars.push((k.to_string(), v.to_string()));
    }
    Config::from_yaml(yaml, &move |k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .unwrap_or_else(|p| panic!("test config invalid: {p:?}"))
}

pub async fn gateway(upstream: &str, env: &[(&str, &str)]) -> TestGateway {
    start(config(upstream, env)).await
}

pub async fn start(cfg: Config) -> TestGateway {
    let (tx, rx) = oneshot::channel::<()>();
    let g = Gateway::start(cfg, async move {
        let _ = rx.await;
    })
    .await
    .unwrap();
    TestGateway {
        addr: g.addr,
        metrics_addr: g.metrics_addr,
        state: g.state,
        stop: Some(tx),
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the contract's error shape and returns the code.
    pub fn error_code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert!(v["error"].is_string(), "{v}");
        v["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code in {v}"))
            .to_string()
    }
}

pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    if url.starts_with("pipeline://") {
        return send_to_pipeline(method, url, headers, body).await;
    }
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap();
    let resp = client().request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, None).await
}

pub async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    send("POST", url, headers, Some(body)).await
}

/// Provision a tenant with a key; returns (tenant id, key id, raw key).
pub async fn provision(g: &impl Gate, tier: &str) -> (String, String, String) {
    let r = post(
        &g.url("/api/admin/provision-client"),
        &[("x-admin-secret", ADMIN)],
        &format!(r#"{{"name":"Acme","tier":"{tier}","api_key_name":"backend"}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let v = r.json();
    (
        v["tenant_id"].as_str().unwrap().into(),
        v["api_key_id"].as_str().unwrap().into(),
        v["raw_api_key"].as_str().unwrap().into(),
    )
}

/// Delete (revoke) a tenant's API key through the admin API.
pub async fn revoke_key(g: &impl Gate, tenant: &str, key_id: &str) -> Reply {
    let url = g.url(&format!("/api/admin/tenants/{tenant}/api-keys/{key_id}"));
    send("DELETE", &url, &admin(), None).await
}

/// Register and log in; returns the login response JSON.
pub async fn login(g: &impl Gate, email: &str) -> serde_json::Value {
    let r = post(
        &g.url("/api/auth/register"),
        &[],
        &format!(r#"{{"email":"{email}","password":"your-secure-password","name":"Jane"}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = post(
        &g.url("/api/auth/login"),
        &[],
        &format!(r#"{{"email":"{email}","password":"your-secure-password"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

/// Register `email` on the gateway at `base` (a process, by URL) and log in: its access token.
pub async fn access_token_at(base: &str, email: &str) -> String {
    let body = format!(r#"{{"email":"{email}","password":"your-secure-password","name":"N"}}"#);
    let r = post(&format!("{base}/api/auth/register"), &[], &body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = post(&format!("{base}/api/auth/login"), &[], &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// The admin secret header, for admin API calls.
pub fn admin() -> [(&'static str, &'static str); 1] {
    [("x-admin-secret", ADMIN)]
}

/// Poll `check` until it holds (every 20 ms, at most `within`): for effects that land
/// asynchronously (a token debit, a cache invalidation), instead of sleeping a fixed time.
pub async fn wait_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The shipped `gateway.yaml` text, for tests that tweak one value.
pub fn shipped_yaml() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml")).unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `/healthz` until it answers 200 (at most 10 s).
pub async fn wait_healthy(base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ok = tokio::time::timeout(
            Duration::from_millis(500),
            client().get(format!("{base}/healthz").parse().unwrap()),
        )
        .await
        .is_ok_and(|r| r.is_ok_and(|r| r.status() == 200));
        if ok {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `ares-gateway serve` with the shipped config on a free port; returns the child (its
/// stderr piped) and the base URL once it is healthy.
pub async fn serve_binary(upstream: &str, env: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml");
    serve_binary_with(std::path::Path::new(shipped), upstream, env).await
}

/// As `serve_binary`, with another config file.
pub async fn serve_binary_with(
    config: &std::path::Path,
    upstream: &str,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let port = free_port();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ares-gateway"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("ARES_LISTEN", format!("127.0.0.1:{port}"))
        .env("ARES_METRICS_LISTEN", "off")
        .env("ARES_UPSTREAM", upstream)
        .env("ARES_ADMIN_SECRET", ADMIN)
        .env("ARES_JWT_SECRET", JWT_SECRET)
        .env("ARES_STORE", "memory")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    (child, base)
}

/// Send a signal (`-TERM`, `-HUP`, ...) to a child process.
pub fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("child still running").to_string();
    assert!(std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

pub fn sigterm(child: &tokio::process::Child) {
    signal(child, "-TERM");
}

pub fn sighup(child: &tokio::process::Child) {
    signal(child, "-HUP");
}

/// Log out everywhere, as a second browser tab sees it.
pub async fn logout_all_ends_every_session<G: Gate>(a: &G, b: &G, email: &str) {
    let first = login(a, email).await;
    let second = post(
        &b.url("/api/auth/login"),
        &[],
        &format!(r#"{{"email":"{email}","password":"your-secure-password"}}"#),
    )
    .await
    .json();
    let tab = |v: &serde_json::Value| v["access_token"].as_str().unwrap().to_string();
    let (tab1, tab2) = (tab(&first), tab(&second));
    for (g, t) in [(a, &tab1), (b, &tab2), (a, &tab2)] {
        let r = get(&g.url("/api/chat"), &[("authorization", &bearer(t))]).await;
        assert_eq!(r.status, 200);
    }
    let r = post(
        &a.url("/api/auth/logout-all"),
        &[("authorization", &bearer(&tab1))],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["message"], "Logged out everywhere");
    for g in [a, b] {
        for t in [&tab1, &tab2] {
            let r = get(&g.url("/api/chat"), &[("authorization", &bearer(t))]).await;
            assert_eq!(
                (r.status.as_u16(), r.error_code().as_str()),
                (401, "AUTH_INVALID_TOKEN")
            );
            let r = get(&g.url("/api/auth/me"), &[("authorization", &bearer(t))]).await;
            assert_eq!(r.status, 401);
        }
    }
    for v in [&first, &second] {
        let body = format!(
            r#"{{"refresh_token":"{}"}}"#,
            v["refresh_token"].as_str().unwrap()
        );
        let r = post(&b.url("/api/auth/refresh"), &[], &body).await;
        assert_eq!(r.status, 401, "a refresh token outlived logout-all");
    }
    // A new login right after works, on either replica.
    let again = post(
        &b.url("/api/auth/login"),
        &[],
        &format!(r#"{{"email":"{email}","password":"your-secure-password"}}"#),
    )
    .await
    .json();
    let r = get(
        &a.url("/api/chat"),
        &[("authorization", &bearer(&tab(&again)))],
    )
    .await;
    assert_eq!(r.status, 200, "a login after logout-all was refused");
    // It needs a valid access token.
    let r = post(&a.url("/api/auth/logout-all"), &[], "").await;
    assert_eq!(r.status, 401);
    let r = post(
        &a.url("/api/auth/logout-all"),
        &[("authorization", &bearer(&tab1))],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
}

/// The shipped config with refresh-token rotation on.
pub fn rotating_yaml() -> String {
    shipped_yaml().replace("refresh_rotation: false", "refresh_rotation: true")
}

/// Issue 24: ten concurrent refreshes of one token, spread over `gateways` (rotation on, the
/// default grace): every one succeeds with the same new refresh token (one rotation), which then
/// works, and the rotated token, presented after the grace, ends the family.
pub async fn concurrent_refreshes_make_one_rotation<G: Gate>(gateways: &[&G], email: &str) {
    let t = login(gateways[0], email).await;
    let first = t["refresh_token"].as_str().unwrap().to_string();
    let body = format!(r#"{{"refresh_token":"{first}"}}"#);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (url, body) = (
            gateways[i % gateways.len()].url("/api/auth/refresh"),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move { post(&url, &[], &body).await }));
    }
    let mut refresh_tokens = std::collections::BTreeSet::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = r.json();
        assert!(v["access_token"].is_string());
        refresh_tokens.insert(v["refresh_token"].as_str().unwrap().to_string());
    }
    assert_eq!(
        refresh_tokens.len(),
        1,
        "one rotation, one successor: {refresh_tokens:?}"
    );
    let second = refresh_tokens.into_iter().next().unwrap();
    assert_ne!(second, first);
    // The successor is a working member of the family.
    let r = post(
        &gateways[gateways.len() - 1].url("/api/auth/refresh"),
        &[],
        &format!(r#"{{"refresh_token":"{second}"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let third = r.json()["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(third, second);
}

/// Records through the `export`/`import` code (JSON lines), from `from` into `to`; the lines.
pub async fn transfer(
    from: Arc<dyn ares_gateway::store::Store>,
    to: &dyn ares_gateway::store::Store,
) -> String {
    let mut lines = Vec::new();
    ares_gateway::cmd::transfer::export(from, &mut lines)
        .await
        .unwrap();
    let text = String::from_utf8(lines).unwrap();
    let report = ares_gateway::cmd::transfer::import(to, &mut text.as_bytes())
        .await
        .unwrap();
    assert!(
        report.bad.is_empty() && report.skipped.is_empty(),
        "{report}"
    );
    text
}

/// Every kind of record `suite::fill` makes is in `store`'s export.
pub async fn every_record_kind_is_in(store: &dyn ares_gateway::store::Store) {
    use ares_gateway::store::{records, suite};
    let kinds: std::collections::BTreeSet<&str> = suite::exported(store)
        .await
        .iter()
        .map(records::Record::kind)
        .collect();
    for kind in [
        "tenant",
        "api_key",
        "user",
        "refresh_token",
        "revoked_family",
        "revoked_token",
        "revoked_user",
        "counter",
    ] {
        assert!(kinds.contains(kind), "{kind} lost on the way: {kinds:?}");
    }
}
