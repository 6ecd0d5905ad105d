use super::*;
use crate::ratelimit::Window;
use crate::route::{self, AuthKind, Handler, Target};

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

const SHIPPED: &str = include_str!("../../gateway.yaml");

#[test]
fn the_shipped_file_writes_every_default_of_the_table() {
    let file: Value = serde_yaml::from_str(SHIPPED).unwrap();
    let mut checked = 0;
    for bound in defaults::ALL {
        assert!(
            bound.min <= bound.default && bound.default <= bound.max,
            "{bound:?}"
        );
        // Plan limits are per tier, not defaults.
        if bound.key.starts_with("plans.") {
            continue;
        }
        let mut node = &file;
        for part in bound.key.replace('*', "default").split('.') {
            node = node
                .get(part)
                .unwrap_or_else(|| panic!("{} is not in gateway.yaml", bound.key));
        }
        let written = match node {
            Value::Number(n) => n.as_u64(),
            // `${VAR:-N}`: the default is N.
            Value::String(s) => s
                .rsplit_once(":-")
                .and_then(|(_, d)| d.strip_suffix('}'))
                .and_then(|d| d.parse().ok()),
            _ => None,
        };
        assert_eq!(
            written,
            Some(bound.default),
            "{} in gateway.yaml",
            bound.key
        );
        checked += 1;
    }
    assert!(checked >= 25, "{checked}");
    // An absent key means the table's default.
    let cfg = Config::from_yaml(
        "routes: [{prefix: /, auth: none, handler: health}]",
        &|_| None,
    )
    .unwrap();
    assert_eq!(
        cfg.server.max_connections as u64,
        defaults::SERVER_MAX_CONNECTIONS.default
    );
    assert_eq!(
        cfg.auth.access_token_ttl.as_secs(),
        defaults::AUTH_ACCESS_TOKEN_TTL_SECS.default
    );
}

#[test]
fn shipped_config_is_valid_with_empty_environment() {
    let cfg = Config::from_yaml(SHIPPED, &env_of(&[])).unwrap();
    assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:8080");
    // The default is the durable embedded store in ./data.
    assert_eq!(
        cfg.store.backend,
        StoreBackend::Embedded(EmbeddedOptions {
            dir: "./data".into(),
            cache_bytes: 64 << 20,
            min_free_bytes: 64 << 20,
        })
    );
    assert!(cfg.store.legacy_revocations);
    assert!(cfg.auth.admin_secret_generated);
    let t = &cfg.routes;
    let chat = t.classify("/v1/chat").unwrap();
    assert_eq!(chat.auth, AuthKind::ApiKey);
    // The seed's /v1/chat is ARES's chat route; the rest of /v1/ is ARES's /api/v1/.
    assert_eq!(chat.forward_path("/v1/chat"), "/api/chat");
    assert_eq!(chat.forward_path("/v1/chat/stream"), "/api/chat/stream");
    assert_eq!(chat.required_scope.as_deref(), Some("chat"));
    let v1 = t.classify("/v1/agents").unwrap();
    assert_eq!(v1.forward_path("/v1/agents"), "/api/v1/agents");
    assert_eq!(v1.required_scope.as_deref(), Some("chat"));
    assert_eq!(
        t.classify("/v1/usage/events")
            .unwrap()
            .required_scope
            .as_deref(),
        Some("ingest")
    );
    assert_eq!(t.classify("/api/chat").unwrap().auth, AuthKind::Jwt);
    assert!(t.classify("/api/chat").unwrap().websocket);
    assert_eq!(
        t.classify("/api/chat").unwrap().credential,
        route::Credential::None
    );
    let admin_up = t.classify("/api/admin/agents").unwrap();
    assert_eq!(admin_up.auth, AuthKind::Admin);
    assert_eq!(admin_up.credential, route::Credential::Passthrough);
    assert!(matches!(admin_up.target, Target::Upstream(_)));
    assert!(matches!(
        t.classify("/api/admin/tenants/x").unwrap().target,
        Target::Handler(Handler::Admin)
    ));
    assert!(matches!(
        t.classify("/api/admin/provision-client").unwrap().target,
        Target::Handler(Handler::Admin)
    ));
    assert!(matches!(
        t.classify("/api/auth/login").unwrap().target,
        Target::Handler(Handler::Auth)
    ));
    assert!(matches!(
        t.classify("/readyz").unwrap().target,
        Target::Handler(Handler::Health)
    ));
    assert!(t.classify("/other").is_none());
    let free = &cfg.limits.plans["free"];
    assert_eq!(free.get(Window::Day), Some(50));
    assert_eq!(free.get(Window::Month), Some(1000));
    assert_eq!(cfg.limits.plans["enterprise"].get(Window::Month), None);
    assert_eq!(cfg.limits.user.get(Window::Minute), Some(600));
}

#[test]
fn environment_is_substituted_and_typed() {
    let cfg = Config::from_yaml(
        SHIPPED,
        &env_of(&[
            ("ARES_LISTEN", "127.0.0.1:18080"),
            ("ARES_WORKERS", "3"),
            ("ARES_USER_REQUESTS_PER_MINUTE", "42"),
            (
                "ARES_ADMIN_SECRET",
                "first-admin-secret-0001, second-admin-secret-002",
            ),
            ("ARES_UPSTREAM", "http://127.0.0.1:4000"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:18080");
    assert_eq!(cfg.server.workers, 3);
    assert_eq!(cfg.limits.user.get(Window::Minute), Some(42));
    assert_eq!(cfg.auth.admin_secrets.len(), 2);
    assert!(!cfg.auth.admin_secret_generated);
    assert_eq!(cfg.upstreams[0].authority.as_str(), "127.0.0.1:4000");
}

#[test]
fn redis_store_requires_secrets_and_names_the_variables() {
    let err = Config::from_yaml(SHIPPED, &env_of(&[("ARES_STORE", "redis")])).unwrap_err();
    let text: Vec<String> = err.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter().any(|t| t.contains("ARES_ADMIN_SECRET")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("ARES_JWT_SECRET")),
        "{text:?}"
    );
}

#[test]
fn the_postgres_store_needs_its_url_and_takes_redis_for_counters() {
    let secrets = [
        ("ARES_ADMIN_SECRET", "pg-admin-secret-0123456789"),
        ("ARES_JWT_SECRET", "pg-jwt-secret-0123456789abcdef0123"),
    ];
    let env = |extra: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            extra
                .iter()
                .chain(secrets.iter())
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let err = Config::from_yaml(SHIPPED, &env(&[("ARES_STORE", "postgres")])).unwrap_err();
    let text: String = err.iter().map(|p| p.to_string()).collect();
    assert!(
        text.contains("store.database_url") && text.contains("DATABASE_URL"),
        "{text}"
    );
    let err = Config::from_yaml(
        SHIPPED,
        &env(&[
            ("ARES_STORE", "postgres"),
            ("DATABASE_URL", "mysql://root:hunter2@db/ares"),
        ]),
    )
    .unwrap_err();
    let text: String = err.iter().map(|p| p.to_string()).collect();
    assert!(text.contains("must start with postgres://"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    const URL: &str = "postgres://ares@127.0.0.1/ares";
    let url = URL;
    let cfg = Config::from_yaml(
        SHIPPED,
        &env(&[("ARES_STORE", "postgres"), ("DATABASE_URL", URL)]),
    )
    .unwrap();
    assert!(matches!(&cfg.store.backend,
        StoreBackend::Postgres { url: u, redis: None } if u.expose() == url));
    let cfg = Config::from_yaml(
        SHIPPED,
        &env(&[
            ("ARES_STORE", "postgres"),
            ("DATABASE_URL", URL),
            ("REDIS_URL", "redis://127.0.0.1:6380"),
        ]),
    )
    .unwrap();
    assert!(matches!(&cfg.store.backend,
        StoreBackend::Postgres { redis: Some(r), .. } if r.expose() == "redis://127.0.0.1:6380"));
    // The redis store keeps its default address.
    let cfg = Config::from_yaml(SHIPPED, &env(&[("ARES_STORE", "redis")])).unwrap();
    assert!(matches!(&cfg.store.backend,
        StoreBackend::Redis { url } if url.expose() == "redis://127.0.0.1:6379"));
}

#[test]
fn route_methods_are_known_names_each_once() {
    let yaml = |methods: &str| {
        format!(
            "upstreams:\n  default: {{ url: \"http://127.0.0.1:1\" }}\nroutes:\n  - {{ prefix: /a, auth: none, upstream: default, exact: true, methods: {methods} }}\n"
        )
    };
    let ok = Config::from_yaml(&yaml("[GET, HEAD]"), &env_of(&[])).unwrap();
    let r = ok.routes.classify("/a").unwrap();
    assert_eq!(r.allows(&http::Method::POST), Err("GET, HEAD"));
    assert_eq!(r.allows(&http::Method::HEAD), Ok(()));
    assert!(
        ok.routes.classify("/a/b").is_none(),
        "an exact route is its own path only"
    );
    for (bad, says) in [
        ("[get]", "is not one of"),
        ("[GET, GET]", "listed twice"),
        ("[]", "at least one method"),
        ("[CONNECT]", "is not one of"),
    ] {
        let err = Config::from_yaml(&yaml(bad), &env_of(&[])).unwrap_err();
        let text: String = err.iter().map(|p| p.to_string()).collect();
        assert!(
            text.contains("routes[0].methods") && text.contains(says),
            "{bad}: {text}"
        );
    }
}

#[test]
fn short_secrets_are_refused_without_echoing_them() {
    let err = Config::from_yaml(
        SHIPPED,
        &env_of(&[
            ("ARES_ADMIN_SECRET", "tiny-secret"),
            ("ARES_JWT_SECRET", "short-jwt-key"),
        ]),
    )
    .unwrap_err();
    let all: String = err.iter().map(|p| p.to_string()).collect();
    assert!(
        all.contains("ARES_ADMIN_SECRET") && all.contains("ARES_JWT_SECRET"),
        "{all}"
    );
    assert!(
        !all.contains("tiny-secret") && !all.contains("short-jwt-key"),
        "{all}"
    );
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let yaml = r#"
server:
  listen: "nonsense"
  workers: "many"
store:
  legacy_revocations: "sometimes"
bogus: 1
upstreams:
  default: { url: "ftp://x" }
  other: { url: "http://127.0.0.1:1", colour: red }
routes:
  - { prefix: /a/, auth: jwt, upstream: missing }
  - { prefix: /b/, auth: magic, upstream: default }
  - { prefix: "/c/../d/", auth: none, handler: health }
  - { prefix: /e/, auth: jwt, handler: admin }
  - { prefix: /f/, auth: jwt, upstream: other, required_scope: chat }
  - { prefix: /g/, auth: jwt, upstream: other, failure_policy: maybe }
"#;
    let err = Config::from_yaml(yaml, &env_of(&[])).unwrap_err();
    let paths: Vec<&str> = err.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "server.listen",
        "server.workers",
        "store.legacy_revocations",
        "bogus",
        "upstreams.default.url",
        "upstreams.other.colour",
        "routes[0].upstream",
        "routes[1].auth",
        "routes[2].prefix",
        "routes[3].auth",
        "routes[4].upstream",
        "routes[4].required_scope",
        "routes[5].failure_policy",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn substitution_rules() {
    let env = env_of(&[("A", "1"), ("EMPTY", "")]);
    assert_eq!(substitute("x${A}y", &env).unwrap(), "x1y");
    assert_eq!(substitute("${B:-dflt}", &env).unwrap(), "dflt");
    assert_eq!(substitute("${EMPTY:-dflt}", &env).unwrap(), "dflt");
    assert_eq!(substitute("$${A}", &env).unwrap(), "${A}");
    assert_eq!(substitute("cost $5", &env).unwrap(), "cost $5");
    assert!(substitute("${B}", &env)
        .unwrap_err()
        .contains("B is not set"));
    assert!(substitute("${A", &env).is_err());
    assert!(substitute("${A B}", &env).is_err());
}

#[test]
fn env_values_cannot_inject_yaml() {
    let yaml = "server:\n  listen: \"${ARES_LISTEN}\"\nroutes:\n  - { prefix: /healthz, auth: none, handler: health }\n";
    let err =
        Config::from_yaml(yaml, &env_of(&[("ARES_LISTEN", "1.2.3.4:1\"\nbogus: [")])).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].path, "server.listen");
}

#[test]
fn regression_writes_within_one_clock_tick_looked_unchanged() {
    // Two atomic replacements back to back: the mtime may not move, the stamp must.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.yaml");
    let mut seen = Vec::new();
    for text in ["a: 1\n", "a: 2\n", "a: 3\n"] {
        let tmp = dir.path().join("g.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        seen.push(FileStamp::of(&path).unwrap());
    }
    assert_ne!(seen[0], seen[1]);
    assert_ne!(seen[1], seen[2]);
    assert_eq!(FileStamp::of(&path), Some(seen[2]));
    assert_eq!(FileStamp::of(&dir.path().join("missing")), None);
}

#[test]
fn garbage_never_panics() {
    for text in [
        "",
        "[1,2]",
        "routes: 5",
        "routes: [1, null, {}]",
        "plans: {free: 3}",
        ":::",
        "\0",
    ] {
        let _ = Config::from_yaml(text, &env_of(&[]));
    }
}
#[test]
fn tracing_is_off_without_an_endpoint_and_reads_the_standard_variables() {
    use crate::telemetry::{Protocol, SamplerSpec};
    assert!(Config::from_yaml(SHIPPED, &env_of(&[]))
        .unwrap()
        .tracing
        .is_none());
    const BASE: &[(&str, &str)] = &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")];
    let t = Config::from_yaml(SHIPPED, &env_of(BASE))
        .unwrap()
        .tracing
        .unwrap();
    assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(t.protocol, Protocol::HttpProtobuf);
    assert_eq!(t.service_name, "ares-gateway");
    assert_eq!(t.sampler, SamplerSpec::ParentBasedAlwaysOn);
    assert_eq!(t.max_queue_size, 2048);
    assert_eq!(t.schedule_delay, Duration::from_secs(5));
    assert_eq!(t.export_timeout, Duration::from_secs(10));
    // A file without a tracing section honours them too.
    let (head, rest) = SHIPPED.split_once("\ntracing:\n").unwrap();
    let without = format!("{head}\n{}", &rest[rest.find("\nstore:").unwrap()..]);
    let t = Config::from_yaml(&without, &env_of(BASE))
        .unwrap()
        .tracing
        .unwrap();
    assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
    let t = Config::from_yaml(
        SHIPPED,
        &env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "edge"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "512"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]),
    )
    .unwrap()
    .tracing
    .unwrap();
    assert_eq!(
        t.endpoint, "http://collector:4317",
        "gRPC takes the base as it is"
    );
    assert_eq!(t.protocol, Protocol::Grpc);
    assert_eq!(t.service_name, "edge");
    assert_eq!(t.sampler, SamplerSpec::ParentBasedRatio(0.01));
    assert_eq!(t.max_queue_size, 512);
    assert_eq!(t.schedule_delay, Duration::from_millis(250));
    assert_eq!(t.export_timeout, Duration::from_millis(2500));
    // The signal's own variables win, taken as they are.
    let t = Config::from_yaml(
        SHIPPED,
        &env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://traces.example/otlp",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
        ]),
    )
    .unwrap()
    .tracing
    .unwrap();
    assert_eq!(t.endpoint, "https://traces.example/otlp");
    assert_eq!(t.export_timeout, Duration::from_millis(700));
    const OFF: &[(&str, &str)] = &[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_SDK_DISABLED", "true"),
    ];
    assert!(Config::from_yaml(SHIPPED, &env_of(OFF))
        .unwrap()
        .tracing
        .is_none());
}

#[test]
fn bad_tracing_settings_are_named() {
    let err = Config::from_yaml(
        SHIPPED,
        &env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "many"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ]),
    )
    .unwrap_err();
    let paths: Vec<&str> = err.iter().map(|p| p.path.as_str()).collect();
    for key in [
        "tracing.endpoint",
        "tracing.protocol",
        "tracing.sampler",
        "tracing.max_queue_size",
        "tracing.schedule_delay_ms",
    ] {
        assert!(paths.contains(&key), "{key} not in {err:?}");
    }
}
