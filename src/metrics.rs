//! Prometheus metrics, served on `ARES_METRICS_LISTEN` (never on the public listener).
//!
//! One process-wide registry: every gateway in the process reports into it. Label values are
//! bounded: routes are the configured prefixes, methods the standard ones, codes the contract's.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::body::{self, Body};

/// Hot-path label sets: no allocation per request (routes and upstreams are shared names).
#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<String>,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: Arc<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    scope: &'static str,
    window: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    result: &'static str,
}

/// The hot label sets hash their contents with foldhash into one `u64` first: the registry's
/// maps hash with SipHash, which costs per field and per byte. Equal labels still hash equal.
macro_rules! fold_hash {
    ($t:ty, $($field:ident),+) => {
        impl std::hash::Hash for $t {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                use std::hash::BuildHasher;
                let folded = foldhash::fast::FixedState::with_seed(0x6172_6573)
                    .hash_one(($(&self.$field,)+));
                state.write_u64(folded);
            }
        }
    };
}

fold_hash!(RequestLabels, route, method, status);
fold_hash!(RouteLabel, route);
fold_hash!(UpstreamLabel, upstream);
fold_hash!(DecisionLabels, scope, window, outcome);
fold_hash!(CacheLabels, cache, result);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 us .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
    upstream_seconds: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    auth_seconds: Histogram,
    store_seconds: Histogram,
    store_errors: Counter,
    auth_failures: Family<CodeLabel, Counter>,
    ratelimit_decisions: Family<DecisionLabels, Counter>,
    cache: Family<CacheLabels, Counter>,
    invalidation_lag_seconds: Histogram,
    open_connections: Gauge,
    config_reloads: Family<ResultLabel, Counter>,
    /// When the served TLS certificate expires (absent without TLS).
    tls_expiry: Family<ListenerLabel, Gauge>,
    /// Trace spans by what became of them (`ended`: handed to the export queue).
    trace_spans: Family<ResultLabel, Counter>,
    /// The series every request touches, made once: admitted decisions by scope kind (in the
    /// order of `SCOPE_KINDS`), and cache lookups by cache (`CACHES`), miss then hit.
    allowed: [Counter; SCOPE_KINDS.len()],
    lookups: [[Counter; 2]; CACHES.len()],
}

/// Every `limiter::Scope::kind`, each with its premade series.
pub const SCOPE_KINDS: [&str; 7] = [
    "tenant",
    "user",
    "api_key",
    "ip",
    "login_account_ip",
    "login_account",
    "api_key_failures_ip",
];

/// The caches `Metrics::cache` counts.
const CACHES: [&str; 2] = ["api_key", "tenant"];

/// A route's or an upstream's name as a metric label, with its latency series made once (when
/// the config is loaded), not looked up per request.
#[derive(Debug, Clone)]
pub struct Label {
    pub name: Arc<String>,
    seconds: Histogram,
}

impl Label {
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ares_gateway");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            auth_seconds: latency_histogram(),
            store_seconds: latency_histogram(),
            store_errors: Counter::default(),
            auth_failures: Family::default(),
            ratelimit_decisions: Family::default(),
            cache: Family::default(),
            invalidation_lag_seconds: latency_histogram(),
            open_connections: Gauge::default(),
            config_reloads: Family::default(),
            trace_spans: Family::default(),
            tls_expiry: Family::default(),
            registry: Registry::default(),
            allowed: Default::default(),
            lookups: Default::default(),
        };
        registry.register(
            "requests",
            "Requests by route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Whole request latency by route",
            m.request_seconds.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time to the upstream's response head",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "auth_duration_seconds",
            "Credential checks",
            m.auth_seconds.clone(),
        );
        registry.register(
            "store_duration_seconds",
            "Store commands",
            m.store_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Store commands that failed or timed out",
            m.store_errors.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused credentials by error code",
            m.auth_failures.clone(),
        );
        registry.register(
            "ratelimit_decisions",
            "Rate-limit decisions by scope, window and outcome",
            m.ratelimit_decisions.clone(),
        );
        registry.register(
            "cache_lookups",
            "Key and tenant cache lookups",
            m.cache.clone(),
        );
        registry.register(
            "invalidation_lag_seconds",
            "Delay from a change on one replica to its invalidation here",
            m.invalidation_lag_seconds.clone(),
        );
        registry.register(
            "open_connections",
            "Open client connections",
            m.open_connections.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the served TLS certificate stops being valid (Unix time)",
            m.tls_expiry.clone(),
        );
        registry.register(
            "trace_spans",
            "Trace spans: ended (queued for export), exported, failed (export refused or timed \
             out); ended - exported - failed is dropped (queue full) or still queued",
            m.trace_spans.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
        );
        // Series that should read 0 rather than be absent before the first event.
        for result in ["ok", "error"] {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        for result in ["ended", "exported", "failed"] {
            let _ = m.trace_spans.get_or_create(&ResultLabel { result });
        }
        let allowed = SCOPE_KINDS.map(|scope| {
            let labels = DecisionLabels {
                scope,
                window: "-",
                outcome: "allowed",
            };
            m.ratelimit_decisions.get_or_create(&labels).clone()
        });
        let lookups = CACHES.map(|cache| {
            ["miss", "hit"].map(|result| {
                m.cache
                    .get_or_create(&CacheLabels { cache, result })
                    .clone()
            })
        });
        Metrics {
            registry,
            allowed,
            lookups,
            ..m
        }
    }

    /// A route's label, with its series of `request_duration_seconds`.
    pub fn route_label(&self, route: &str) -> Label {
        let name = Arc::new(route.to_string());
        let labels = RouteLabel {
            route: name.clone(),
        };
        let seconds = self.request_seconds.get_or_create(&labels).clone();
        Label { name, seconds }
    }

    /// An upstream's label, with its series of `upstream_duration_seconds`.
    pub fn upstream_label(&self, upstream: &str) -> Label {
        let name = Arc::new(upstream.to_string());
        let labels = UpstreamLabel {
            upstream: name.clone(),
        };
        let seconds = self.upstream_seconds.get_or_create(&labels).clone();
        Label { name, seconds }
    }

    pub fn request(&self, route: &Label, method: &Method, status: StatusCode, elapsed: Duration) {
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::PATCH => "PATCH",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => "OTHER",
        };
        let labels = RequestLabels {
            route: route.name.clone(),
            method,
            status: status.as_u16(),
        };
        self.requests.get_or_create(&labels).inc();
        route.seconds.observe(elapsed.as_secs_f64());
    }

    pub fn upstream(&self, upstream: &Label, elapsed: Duration) {
        upstream.seconds.observe(elapsed.as_secs_f64());
    }

    pub fn auth(&self, elapsed: Duration) {
        self.auth_seconds.observe(elapsed.as_secs_f64());
    }

    /// The public listener's certificate expires at `not_after` (Unix seconds).
    pub fn tls_expiry(&self, not_after: i64) {
        self.tls_expiry
            .get_or_create(&ListenerLabel { listener: "public" })
            .set(not_after);
    }

    /// `n` trace spans `ended`, `exported` or `failed`.
    pub fn trace_spans(&self, result: &'static str, n: u64) {
        self.trace_spans
            .get_or_create(&ResultLabel { result })
            .inc_by(n);
    }

    pub fn auth_failure(&self, code: &'static str) {
        self.auth_failures.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn store(&self, elapsed: Duration, ok: bool) {
        self.store_seconds.observe(elapsed.as_secs_f64());
        if !ok {
            self.store_errors.inc();
        }
    }

    /// `scope` is the kind (tenant, user, ip, ...), never the id.
    pub fn ratelimit(&self, scope: &'static str, window: &'static str, outcome: &'static str) {
        if (window, outcome) == ("-", "allowed") {
            if let Some(i) = SCOPE_KINDS.iter().position(|k| *k == scope) {
                self.allowed[i].inc();
                return;
            }
        }
        self.ratelimit_decisions
            .get_or_create(&DecisionLabels {
                scope,
                window,
                outcome,
            })
            .inc();
    }

    pub fn cache(&self, cache: &'static str, hit: bool) {
        if let Some(i) = CACHES.iter().position(|c| *c == cache) {
            self.lookups[i][usize::from(hit)].inc();
            return;
        }
        let result = if hit { "hit" } else { "miss" };
        self.cache
            .get_or_create(&CacheLabels { cache, result })
            .inc();
    }

    pub fn invalidation_lag(&self, lag: Duration) {
        self.invalidation_lag_seconds.observe(lag.as_secs_f64());
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serve `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                Ok::<_, std::convert::Infallible>(answer(&req))
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
        });
    }
}

fn answer(req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        let mut r = Response::new(body::full("not found\n"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let mut r = Response::new(body::full(get().render()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    r
}

/// Bind the metrics listener.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), String> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    let a = l.local_addr().map_err(|e| e.to_string())?;
    Ok((l, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn premade_series_count_like_the_looked_up_ones() {
        let m = Metrics::new();
        let text = m.render();
        // Made at start: they read 0 before the first request.
        for kind in SCOPE_KINDS {
            let zero = format!(
                "ratelimit_decisions_total{{scope=\"{kind}\",window=\"-\",outcome=\"allowed\"}} 0"
            );
            assert!(text.contains(&zero), "{zero}");
        }
        m.ratelimit("tenant", "-", "allowed");
        m.ratelimit("tenant", "minute", "refused");
        m.ratelimit("tenant", "-", "store_failed");
        m.ratelimit("some_new_kind", "-", "allowed");
        m.cache("api_key", true);
        m.cache("api_key", true);
        m.cache("api_key", false);
        m.cache("tenant", false);
        m.cache("other_cache", true);
        let text = m.render();
        for expected in [
            "ratelimit_decisions_total{scope=\"tenant\",window=\"-\",outcome=\"allowed\"} 1",
            "ratelimit_decisions_total{scope=\"tenant\",window=\"minute\",outcome=\"refused\"} 1",
            "ratelimit_decisions_total{scope=\"tenant\",window=\"-\",outcome=\"store_failed\"} 1",
            "ratelimit_decisions_total{scope=\"some_new_kind\",window=\"-\",outcome=\"allowed\"} 1",
            "ratelimit_decisions_total{scope=\"user\",window=\"-\",outcome=\"allowed\"} 0",
            "cache_lookups_total{cache=\"api_key\",result=\"hit\"} 2",
            "cache_lookups_total{cache=\"api_key\",result=\"miss\"} 1",
            "cache_lookups_total{cache=\"tenant\",result=\"miss\"} 1",
            "cache_lookups_total{cache=\"tenant\",result=\"hit\"} 0",
            "cache_lookups_total{cache=\"other_cache\",result=\"hit\"} 1",
        ] {
            assert!(text.contains(expected), "{expected} not in\n{text}");
        }
    }

    #[test]
    fn equal_labels_from_different_allocations_are_one_series() {
        let m = Metrics::new();
        // Two labels of the same name (two routes, or one route across a config reload).
        let a = m.route_label("/api/");
        let b = m.route_label("/api/");
        let other = m.route_label("/v1/");
        let ms = Duration::from_millis(1);
        m.request(&a, &Method::POST, StatusCode::OK, ms);
        m.request(&b, &Method::POST, StatusCode::OK, ms);
        m.request(&other, &Method::POST, StatusCode::OK, ms);
        m.request(&a, &Method::GET, StatusCode::OK, ms);
        m.ratelimit("user", "-", "allowed");
        m.ratelimit("user", "-", "allowed");
        m.ratelimit("tenant", "-", "allowed");
        let text = m.render();
        let line = |prefix: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(str::to_string)
                .collect()
        };
        let api_post = line("ares_gateway_requests_total{route=\"/api/\",method=\"POST\"");
        assert_eq!(
            api_post,
            vec!["ares_gateway_requests_total{route=\"/api/\",method=\"POST\",status=\"200\"} 2"]
        );
        assert_eq!(line("ares_gateway_requests_total{").len(), 3);
        assert_eq!(
            line("ares_gateway_ratelimit_decisions_total{scope=\"user\""),
            vec!["ares_gateway_ratelimit_decisions_total{scope=\"user\",window=\"-\",outcome=\"allowed\"} 2"]
        );
        assert_eq!(
            line("ares_gateway_request_duration_seconds_count{route=\"/api/\"}"),
            vec!["ares_gateway_request_duration_seconds_count{route=\"/api/\"} 3"]
        );
        m.upstream(&m.upstream_label("default"), ms);
        m.upstream(&m.upstream_label("default"), ms);
        let text = m.render();
        let count = "ares_gateway_upstream_duration_seconds_count{upstream=\"default\"} 2";
        assert!(text.lines().any(|l| l == count), "{text}");
    }
}
