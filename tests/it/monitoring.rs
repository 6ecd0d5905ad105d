//! The shipped dashboard and alert rules (helm/ares-gateway/monitoring/): every series and
//! label they name is one the gateway exports at `/metrics`; the rules pass promtool's check and
//! unit tests; and a real Prometheus scraping a real gateway evaluates every dashboard query and
//! rule expression, with data where the traffic made some.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/ares-gateway/monitoring");

/// Every PromQL expression of the dashboard (Grafana's variables filled in as "all") and of
/// the rules, each with where it comes from.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(MONITORING).join("dashboard.json")).unwrap(),
    )
    .unwrap();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            out.push((
                format!("panel {:?}", panel["title"].as_str().unwrap()),
                expr,
            ));
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(METRIC{...}, label): the metric selector is what Prometheus sees.
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            let selector = inner.rsplit_once(',').unwrap().0.replace("$job", ".*");
            out.push((
                format!("variable {:?}", var["name"].as_str().unwrap()),
                selector,
            ));
        }
    }
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(MONITORING).join("alerts.yaml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            out.push((
                format!("alert {:?}", rule["alert"].as_str().unwrap()),
                rule["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(out.len() > 30, "{} expressions", out.len());
    out
}

/// `(metric, labels in its selector)` for every `ares_gateway_*` series an expression names.
fn series(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ares_gateway_") {
        rest = &rest[i..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[name.len()..];
        let mut labels = BTreeSet::new();
        if let Some(sel) = rest.strip_prefix('{') {
            let body = &sel[..sel.find('}').unwrap()];
            for matcher in body.split(',') {
                let key: String = matcher
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !key.is_empty() {
                    labels.insert(key);
                }
            }
        }
        out.push((name, labels));
    }
    out
}

/// `/metrics` text -> sample name -> label names seen on it.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap();
        let labels = out.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let body = &line[end + 1..line.find('}').unwrap()];
            for pair in body.split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
    out
}

/// A gateway with metrics on, TLS on a second listener (for the certificate series), tracing
/// on, and traffic of every kind the panels show: JWT and API-key requests, refused
/// credentials, a 429.
struct Busy {
    gateways: Vec<TestGateway>,
    /// The TLS certificate's expiry (Unix seconds).
    not_after: i64,
    /// `/metrics`'s address.
    metrics: String,
    token: String,
    key: String,
    _dir: tempfile::TempDir,
}

impl Busy {
    /// One more round of every kind of traffic.
    async fn traffic(&self) {
        let g = &self.gateways[0];
        for _ in 0..3 {
            get(
                &g.url("/api/chat"),
                &[("authorization", &bearer(&self.token))],
            )
            .await;
        }
        let r = get(&g.url("/v1/chat"), &[("authorization", &bearer(&self.key))]).await;
        assert_eq!(r.status, 200);
        let bad = get(&g.url("/v1/chat"), &[("authorization", "Bearer ares_nope")]).await;
        assert_eq!(bad.status, 401);
    }
}

async fn busy_gateway() -> Busy {
    let up = Upstream::start().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let g = gateway(
        &up.url(),
        &[
            ("ARES_METRICS_LISTEN", &metrics),
            ("ARES_USER_REQUESTS_PER_MINUTE", "2"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://127.0.0.1:{}", free_port()),
            ),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 1, 2);
    let not_after = params.not_after.unix_timestamp();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let tls = gateway(
        &up.url(),
        &[
            ("ARES_TLS_CERT", c.to_str().unwrap()),
            ("ARES_TLS_KEY", k.to_str().unwrap()),
        ],
    )
    .await;

    let token = login(&g, "dash@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, key) = provision(&g, "free").await;
    let busy = Busy {
        gateways: vec![g, tls],
        not_after,
        metrics,
        token,
        key,
        _dir: dir,
    };
    busy.traffic().await;
    busy
}

#[tokio::test]
async fn every_series_and_label_the_dashboard_and_rules_name_is_exported() {
    let busy = busy_gateway().await;
    let (not_after, metrics) = (busy.not_after, &busy.metrics);
    let text = String::from_utf8_lossy(&get(&format!("http://{metrics}/metrics"), &[]).await.body)
        .into_owned();
    let have = exported(&text);
    let mut checked = BTreeSet::new();
    for (place, expr) in expressions() {
        for (name, labels) in series(&expr) {
            let seen = have
                .get(&name)
                .unwrap_or_else(|| panic!("{place}: {name} is not in /metrics"));
            for label in labels
                .iter()
                .filter(|l| !["job", "instance", "namespace"].contains(&l.as_str()))
            {
                assert!(
                    seen.contains(label),
                    "{place}: {name} has no label {label} ({seen:?})"
                );
            }
            checked.insert(name);
        }
    }
    for must in [
        "ares_gateway_requests_total",
        "ares_gateway_request_duration_seconds_bucket",
        "ares_gateway_upstream_duration_seconds_bucket",
        "ares_gateway_auth_failures_total",
        "ares_gateway_ratelimit_decisions_total",
        "ares_gateway_store_duration_seconds_bucket",
        "ares_gateway_store_errors_total",
        "ares_gateway_open_connections",
        "ares_gateway_invalidation_lag_seconds_bucket",
        "ares_gateway_tls_certificate_expiry_timestamp_seconds",
        "ares_gateway_trace_spans_total",
    ] {
        assert!(checked.contains(must), "nothing shipped uses {must}");
    }
    let expiry = format!(
        "ares_gateway_tls_certificate_expiry_timestamp_seconds{{listener=\"public\"}} {not_after}"
    );
    assert!(text.contains(&expiry), "{expiry} not in /metrics");
}

fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(MONITORING)
        .output()
        .expect("promtool is required (.ci/run installs prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests() {
    let out = promtool(&["check", "rules", "alerts.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "alerts_test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A Prometheus server on a free loopback port scraping `target` every second; killed on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config: PathBuf = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ares-gateway\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus is required (.ci/run installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    async fn query(&self, expr: &str) -> serde_json::Value {
        let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let r = get(&format!("{}/api/v1/query?query={q}", self.url), &[]).await;
        serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "{expr}: {} {e}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )
        })
    }
}

#[tokio::test]
async fn a_real_prometheus_evaluates_every_dashboard_query_and_rule() {
    let busy = busy_gateway().await;
    let prom = Prometheus::start(&busy.metrics);
    let port = prom.url.rsplit(':').next().unwrap().to_string();
    let listening = wait_until(Duration::from_secs(20), || {
        let addr = format!("127.0.0.1:{port}");
        async move {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
                && get(&format!("http://{addr}/-/ready"), &[]).await.status == 200
        }
    })
    .await;
    assert!(listening, "Prometheus did not start");
    // Two scrapes at least, so that rates have two points.
    let scraped = wait_until(Duration::from_secs(30), || async {
        let count = "count_over_time(ares_gateway_build_info[1m])";
        let ok = tokio::time::timeout(Duration::from_secs(2), prom.query(count)).await;
        ok.ok()
            .and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_string)
            })
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 3)
    })
    .await;
    assert!(scraped, "Prometheus never scraped the gateway");
    // More traffic between scrapes, so rates are not zero.
    for _ in 0..4 {
        busy.traffic().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut with_data = BTreeSet::new();
    for (place, expr) in expressions() {
        let v = prom.query(&expr).await;
        assert_eq!(v["status"], "success", "{place}: {expr}\n{v}");
        if v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            with_data.insert(place);
        }
    }
    for place in [
        "panel \"Requests per second\"",
        "panel \"Requests by route and status\"",
        "panel \"Request latency by route (p50 / p95 / p99)\"",
        "panel \"Upstream latency (p50 / p99)\"",
        "panel \"Refused credentials by code\"",
        "panel \"Rate-limit decisions\"",
        "panel \"Open connections\"",
        "panel \"TLS certificate expires in\"",
        "variable \"job\"",
    ] {
        assert!(
            with_data.contains(place),
            "{place} shows no data; with data: {with_data:?}"
        );
    }
}
