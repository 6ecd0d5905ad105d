//! OpenTelemetry trace export (issue 23), against a real OTLP receiver that decodes every
//! export: the span tree and attributes of a JWT request, an API-key request, a 429 and a 502,
//! over OTLP/HTTP and OTLP/gRPC; sampling; and a dead or hung collector never failing or
//! holding a request.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::otlp::{self, Collector, SpanRec};
use crate::common::*;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;
const ERROR: i32 = 2;

/// The client's trace context on the requests that send one.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{CLIENT_SPAN}-01")
}

/// The `sub` claim of a token the gateway issued.
fn sub_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    claims["sub"].as_str().unwrap().to_string()
}

/// A registered user's access token on `g`.
async fn user_token(g: &TestGateway, email: &str) -> String {
    login(g, email).await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// GET `path` with `token`, in the client's trace `trace`.
async fn traced_get(g: &TestGateway, path: &str, token: &str, trace: &str) -> Reply {
    let headers = [
        ("authorization", bearer(token)),
        ("traceparent", traceparent(trace)),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    get(&g.url(path), &headers).await
}

/// A gateway exporting to `collector` every 100 ms (the 5 s default would leave a test's 10 s
/// wait for its spans too little margin on a busy machine: the first export comes after two
/// delays).
async fn traced(upstream: &str, collector: &str, env: &[(&str, &str)]) -> TestGateway {
    let mut vars = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    vars.extend_from_slice(env);
    gateway(upstream, &vars).await
}

fn one<'a>(spans: &'a [SpanRec], name: &str) -> &'a SpanRec {
    let found: Vec<&SpanRec> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span in {spans:#?}");
    found[0]
}

fn server(spans: &[SpanRec]) -> &SpanRec {
    let found: Vec<&SpanRec> = spans.iter().filter(|s| s.kind == SERVER).collect();
    assert_eq!(found.len(), 1, "one server span in {spans:#?}");
    found[0]
}

/// No attribute of any span carries one of `secrets`.
fn no_secret_in(spans: &[SpanRec], secrets: &[&str]) {
    for s in spans {
        for (k, v) in &s.attrs {
            for secret in secrets {
                assert!(!v.contains(secret), "{k} of {} carries a secret", s.name);
            }
        }
    }
}

#[tokio::test]
async fn a_jwt_request_is_a_server_span_with_authentication_limiter_and_upstream_children() {
    let up = Upstream::start().await;
    let col = Collector::start().await;
    let g = traced(&up.url(), &col.url(), &[]).await;
    let session = login(&g, "trace@example.com").await;
    let token = session["access_token"].as_str().unwrap();
    let user_id = sub_of(token);
    let user_id = user_id.as_str();
    let tp = traceparent(TRACE);
    let r = get(
        &g.url("/api/chat?q=1"),
        &[("authorization", &bearer(token)), ("traceparent", &tp)],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let spans = col.trace(TRACE, 4).await;
    let root = server(&spans);
    assert_eq!(root.name, "GET /api/");
    assert_eq!(
        root.parent_span_id, CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(root.service_name, "ares-gateway");
    assert_eq!(root.attr("http.route"), Some("/api/"));
    assert_eq!(root.attr("http.request.method"), Some("GET"));
    assert_eq!(root.attr("url.path"), Some("/api/chat"), "never the query");
    assert_eq!(root.attr("http.response.status_code"), Some("200"));
    assert_eq!(root.attr("ares.auth.method"), Some("jwt"));
    assert_eq!(root.attr("enduser.id"), Some(user_id));
    assert_eq!(root.status, 0);
    for (name, kind) in [
        ("authenticate", INTERNAL),
        ("rate_limit", INTERNAL),
        ("upstream", CLIENT),
    ] {
        let s = one(&spans, name);
        assert_eq!(
            s.parent_span_id, root.span_id,
            "{name} is the server span's child"
        );
        assert_eq!(s.kind, kind, "{name}");
        assert!(
            root.start_ns <= s.start_ns && s.end_ns <= root.end_ns,
            "{name} inside"
        );
    }
    let auth = one(&spans, "authenticate");
    let limit = one(&spans, "rate_limit");
    let exchange = one(&spans, "upstream");
    assert!(
        auth.end_ns <= limit.start_ns && limit.end_ns <= exchange.start_ns,
        "in order"
    );
    assert_eq!(auth.attr("enduser.id"), Some(user_id));
    assert_eq!(exchange.attr("http.response.status_code"), Some("200"));
    assert_eq!(exchange.attr("ares.upstream"), Some("default"));
    // The upstream's parent is the exchange span.
    let sent = up.last();
    assert_eq!(
        sent.headers["traceparent"].to_str().unwrap(),
        format!("00-{TRACE}-{}-01", exchange.span_id)
    );
    no_secret_in(&spans, &[token, JWT_SECRET]);
    assert_eq!(col.transports().first(), Some(&"http"));
}

#[tokio::test]
async fn an_api_key_request_over_grpc_names_tenant_and_key_and_its_store_lookup() {
    let up = Upstream::start().await;
    let col = Collector::start().await;
    let g = traced(
        &up.url(),
        &col.url(),
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "edge-eu"),
        ],
    )
    .await;
    let (tenant, key_id, key) = provision(&g, "free").await;
    // No traceparent: the gateway starts the trace, and its id is the request id.
    let r = get(&g.url("/v1/chat"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let trace = r.header("x-request-id").unwrap().to_string();
    assert_eq!(trace.len(), 32);

    let spans = col.trace(&trace, 5).await;
    let root = server(&spans);
    assert_eq!(root.parent_span_id, "", "a root span");
    assert_eq!(root.service_name, "edge-eu");
    assert_eq!(root.name, "GET /v1/chat");
    assert_eq!(root.attr("ares.auth.method"), Some("api_key"));
    assert_eq!(root.attr("ares.tenant.id"), Some(tenant.as_str()));
    assert_eq!(root.attr("ares.tenant.tier"), Some("free"));
    assert_eq!(root.attr("ares.api_key.id"), Some(key_id.as_str()));
    // The first use of a key looks it up in the store, under authentication.
    let auth = one(&spans, "authenticate");
    let lookups: Vec<&SpanRec> = spans
        .iter()
        .filter(|s| s.name == "store" && s.parent_span_id == auth.span_id)
        .collect();
    assert!(
        !lookups.is_empty(),
        "no store span under authenticate: {spans:#?}"
    );
    assert_eq!(lookups[0].kind, CLIENT);
    assert_eq!(lookups[0].attr("db.system.name"), Some("memory"));
    let exchange = one(&spans, "upstream");
    assert_eq!(
        up.last().headers["traceparent"].to_str().unwrap(),
        format!("00-{trace}-{}-01", exchange.span_id)
    );
    no_secret_in(&spans, &[&key, ADMIN]);
    assert!(col.transports().contains(&"grpc"), "{:?}", col.transports());
}

#[tokio::test]
async fn a_429_ends_at_the_limiter_span_and_a_502_at_the_upstream_span() {
    let up = Upstream::start().await;
    let col = Collector::start().await;
    let g = traced(
        &up.url(),
        &col.url(),
        &[("ARES_USER_REQUESTS_PER_MINUTE", "1")],
    )
    .await;
    let token = user_token(&g, "limit@example.com").await;
    let first = "11111111111111111111111111111111";
    let second = "22222222222222222222222222222222";
    let r = traced_get(&g, "/api/a", &token, first).await;
    assert_eq!(r.status, 200);
    let r = traced_get(&g, "/api/a", &token, second).await;
    assert_eq!(r.status, 429);
    let spans = col.trace(second, 3).await;
    let root = server(&spans);
    assert_eq!(root.attr("http.response.status_code"), Some("429"));
    assert_eq!(root.attr("ares.error.code"), Some("RATE_LIMIT_EXCEEDED"));
    assert_eq!(
        root.status, 0,
        "a client's error is not the server span's failure"
    );
    let limit = one(&spans, "rate_limit");
    assert_eq!(limit.status, ERROR);
    assert_eq!(limit.attr("error.type"), Some("RATE_LIMIT_EXCEEDED"));
    assert!(
        spans.iter().all(|s| s.name != "upstream"),
        "never forwarded"
    );

    // An upstream that is not there: 502, the exchange span failed, the server span too.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let g = traced(&dead, &col.url(), &[]).await;
    let token = user_token(&g, "down@example.com").await;
    let third = "33333333333333333333333333333333";
    let r = traced_get(&g, "/api/a", &token, third).await;
    assert_eq!(r.status, 502);
    let spans = col.trace(third, 4).await;
    let root = server(&spans);
    assert_eq!(root.attr("http.response.status_code"), Some("502"));
    assert_eq!(root.status, ERROR);
    assert_eq!(root.attr("error.type"), Some("UPSTREAM_UNAVAILABLE"));
    let exchange = one(&spans, "upstream");
    assert_eq!(exchange.status, ERROR);
    assert_eq!(exchange.attr("error.type"), Some("UPSTREAM_UNAVAILABLE"));
    assert_eq!(exchange.parent_span_id, root.span_id);
}

#[tokio::test]
async fn sampling_follows_the_sampler_and_the_upstream_sees_the_decision() {
    let up = Upstream::start().await;
    let col = Collector::start().await;
    let g = traced(
        &up.url(),
        &col.url(),
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    )
    .await;
    let token = user_token(&g, "off@example.com").await;
    let trace = "44444444444444444444444444444444";
    let r = traced_get(&g, "/api/x", &token, trace).await;
    assert_eq!(r.status, 200);
    // Not sampled: the upstream's parent is the gateway's span, flagged not sampled.
    let sent = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(sent.starts_with(&format!("00-{trace}-")), "{sent}");
    assert!(sent.ends_with("-00"), "{sent}");
    assert!(!sent.contains(CLIENT_SPAN), "{sent}");
    // Ten export intervals: anything recorded would have arrived.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(col.spans().is_empty(), "{:?}", col.spans());

    // parentbased_always_off follows the caller: its sampled flag makes a trace.
    let g = traced(
        &up.url(),
        &col.url(),
        &[("OTEL_TRACES_SAMPLER", "parentbased_always_off")],
    )
    .await;
    let token = user_token(&g, "follow@example.com").await;
    let trace = "55555555555555555555555555555555";
    let r = traced_get(&g, "/api/x", &token, trace).await;
    assert_eq!(r.status, 200);
    let spans = col.trace(trace, 4).await;
    server(&spans);
    for name in ["authenticate", "rate_limit", "upstream"] {
        one(&spans, name);
    }
    let names: BTreeSet<String> = col.spans().into_iter().map(|s| s.name).collect();
    assert!(
        !names.contains("POST /api/auth/"),
        "unsampled logins exported: {names:?}"
    );
}

/// Requests through a gateway process whose collector is `collector`: every one answered, none
/// held for the export timeout (10 s), and SIGTERM still ends the process (its last export is
/// bounded). Returns the process's `/metrics` text at the end.
async fn requests_go_on(collector: &str, wait_for_failed_export: bool) {
    let up = Upstream::start().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let (mut child, base) = serve_binary(
        &up.url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-honeycomb-team=sekrit-otel-header-value",
            ),
            ("ARES_METRICS_LISTEN", &metrics),
            ("ARES_LOG", "debug"),
        ],
    )
    .await;
    // Read the log as it comes (a full pipe would only drop lines, which could hide a leak).
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    let auth = bearer(&access_token_at(&base, "dead@example.com").await);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (url, auth) = (format!("{base}/api/n{i}"), auth.clone());
        tasks.push(tokio::spawn(async move {
            let headers = [("authorization", auth.as_str())];
            tokio::time::timeout(Duration::from_secs(3), get(&url, &headers)).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap().expect("a request waited on the collector");
        assert_eq!(r.status, 200);
    }
    let metrics_url = format!("http://{metrics}/metrics");
    let failed = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("ares_gateway_trace_spans_total{result=\"failed\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    if wait_for_failed_export {
        let counted = wait_until(Duration::from_secs(15), || {
            let url = metrics_url.clone();
            async move { failed(&String::from_utf8_lossy(&get(&url, &[]).await.body)) > 0.0 }
        })
        .await;
        assert!(counted, "failed exports are counted in /metrics");
    }
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the gateway did not stop")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let log = log.await.unwrap();
    assert!(log.contains("request"), "no access log read");
    assert!(
        !log.contains("sekrit-otel-header-value"),
        "an OTLP header value was logged"
    );
    assert!(
        !log.contains(auth.trim_start_matches("Bearer ")),
        "a token was logged"
    );
}

#[tokio::test]
async fn a_collector_on_a_closed_port_never_fails_a_request() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    requests_go_on(&closed, true).await;
}

#[tokio::test]
async fn a_collector_that_never_answers_never_holds_a_request() {
    let hung = otlp::hanging().await;
    requests_go_on(&format!("http://{hung}"), false).await;
}
