//! The `server:`, `cors:` and `tracing:` sections.

use super::*;

impl Validator {
    pub(in crate::config) fn server(&mut self, f: ServerFile) -> ServerConfig {
        let listen = self
            .addr(&f.listen, "server.listen", "0.0.0.0:8080")
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080)));
        let metrics_listen =
            self.addr(&f.metrics_listen, "server.metrics_listen", "127.0.0.1:9090");
        let mut trusted_proxies = Vec::new();
        for (i, cidr) in f.trusted_proxies.unwrap_or_default().iter().enumerate() {
            let parsed = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => self.problem(
                    format!("server.trusted_proxies[{i}]"),
                    format!("expected an IP or CIDR, got {cidr:?}"),
                ),
            }
        }
        let mut admin_allow_cidrs = Vec::new();
        for cidr in f
            .admin_allow_cidrs
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
        {
            if cidr.is_empty() {
                continue;
            }
            let parsed = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => admin_allow_cidrs.push(net),
                Err(_) => self.problem(
                    "server.admin_allow_cidrs",
                    format!("ARES_ADMIN_ALLOW_CIDRS: expected IPs or CIDRs, got {cidr:?}"),
                ),
            }
        }
        let cert = f.tls_cert.unwrap_or_default();
        let key = f.tls_key.unwrap_or_default();
        let tls = match (cert.trim().is_empty(), key.trim().is_empty()) {
            (true, true) => None,
            (false, false) => Some(TlsFiles {
                cert: PathBuf::from(cert.trim()),
                key: PathBuf::from(key.trim()),
            }),
            _ => {
                self.problem(
                    "server.tls_cert",
                    "ARES_TLS_CERT and ARES_TLS_KEY must be set together",
                );
                None
            }
        };
        let mut cors_origins = Vec::new();
        for origin in f.cors_origins.unwrap_or_default().split(',') {
            let origin = origin.trim();
            if origin.is_empty() {
                continue;
            }
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && origin.parse::<http::Uri>().is_ok();
            if ok {
                cors_origins.push(origin.to_string());
            } else {
                self.problem(
                    "server.cors_origins",
                    format!("{origin:?} is not an origin like https://app.example.com"),
                );
            }
        }
        ServerConfig {
            listen,
            metrics_listen,
            workers: self.bounded(&f.workers, &defaults::SERVER_WORKERS) as usize,
            max_connections: self.bounded(&f.max_connections, &defaults::SERVER_MAX_CONNECTIONS)
                as usize,
            header_read_timeout: Duration::from_secs(self.bounded(
                &f.header_read_timeout_secs,
                &defaults::SERVER_HEADER_READ_TIMEOUT_SECS,
            )),
            request_body_grace: Duration::from_secs(self.bounded(
                &f.request_body_grace_secs,
                &defaults::SERVER_REQUEST_BODY_GRACE_SECS,
            )),
            request_body_min_rate: self.bounded(
                &f.request_body_min_rate_bytes,
                &defaults::SERVER_REQUEST_BODY_MIN_RATE_BYTES,
            ),
            max_header_bytes: self.bounded(&f.max_header_bytes, &defaults::SERVER_MAX_HEADER_BYTES)
                as usize,
            max_headers: self.bounded(&f.max_headers, &defaults::SERVER_MAX_HEADERS) as usize,
            max_request_target_bytes: self.bounded(
                &f.max_request_target_bytes,
                &defaults::SERVER_MAX_REQUEST_TARGET_BYTES,
            ) as usize,
            request_body_limit: self.bounded(
                &f.request_body_limit_bytes,
                &defaults::SERVER_REQUEST_BODY_LIMIT_BYTES,
            ),
            json_body_limit: self.bounded(
                &f.json_body_limit_bytes,
                &defaults::SERVER_JSON_BODY_LIMIT_BYTES,
            ) as usize,
            shutdown_grace: Duration::from_secs(self.bounded(
                &f.shutdown_grace_secs,
                &defaults::SERVER_SHUTDOWN_GRACE_SECS,
            )),
            trusted_proxies,
            admin_allow_cidrs,
            tls,
            tls_handshake_timeout: Duration::from_secs(self.bounded(
                &f.tls_handshake_timeout_secs,
                &defaults::SERVER_TLS_HANDSHAKE_TIMEOUT_SECS,
            )),
            tls_reload_poll: Duration::from_secs(self.bounded(
                &f.tls_reload_poll_secs,
                &defaults::SERVER_TLS_RELOAD_POLL_SECS,
            )),
            websocket_idle_timeout: Duration::from_secs(self.bounded(
                &f.websocket_idle_timeout_secs,
                &defaults::SERVER_WEBSOCKET_IDLE_TIMEOUT_SECS,
            )),
            config_reload_poll: Duration::from_secs(self.bounded(
                &f.config_reload_poll_secs,
                &defaults::SERVER_CONFIG_RELOAD_POLL_SECS,
            )),
            cors_origins,
            http2_max_concurrent_streams: self.bounded(
                &f.http2_max_concurrent_streams,
                &defaults::SERVER_HTTP2_MAX_CONCURRENT_STREAMS,
            ) as u32,
        }
    }

    /// The header lists a browser sees: the defaults, then the configured extras (each a
    /// header name; lower-cased, duplicates dropped).
    pub(in crate::config) fn cors(&mut self, f: CorsFile) -> CorsConfig {
        CorsConfig {
            allow_headers: self.header_list(
                defaults::CORS_ALLOW_HEADERS,
                f.allow_headers,
                "cors.allow_headers",
            ),
            expose_headers: self.header_list(
                defaults::CORS_EXPOSE_HEADERS,
                f.expose_headers,
                "cors.expose_headers",
            ),
        }
    }

    /// `tracing:`, each key falling back to its standard variable; `None` (off) when no
    /// endpoint is set or `OTEL_SDK_DISABLED=true`. The signal-specific
    /// `OTEL_EXPORTER_OTLP_TRACES_*` variables win over the keys, as the OTel spec has them win
    /// over the generic ones.
    pub(in crate::config) fn tracing(
        &mut self,
        f: TracingFile,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<crate::telemetry::TracingConfig> {
        use crate::telemetry::{Protocol, SamplerSpec, TracingConfig};
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let key = |v: Option<String>| v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let protocol_text = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| key(f.protocol))
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        let protocol = Protocol::parse(&protocol_text).unwrap_or_else(|| {
            self.problem(
                "tracing.protocol",
                format!("expected grpc or http/protobuf, got {protocol_text:?}"),
            );
            Protocol::HttpProtobuf
        });
        // The traces URL: the signal's own variable as it is; else the base with the OTLP/HTTP
        // path (gRPC takes the base as it is).
        let endpoint = match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(url) => url,
            None => {
                let base = key(f.endpoint).or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
                match protocol {
                    Protocol::Grpc => base,
                    Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                }
            }
        };
        match endpoint.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => self.problem(
                "tracing.endpoint",
                format!("expected an http:// or https:// URL, got {endpoint:?}"),
            ),
        }
        let service_name = key(f.service_name)
            .or_else(|| var("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "ares-gateway".into());
        let sampler_name = key(f.sampler)
            .or_else(|| var("OTEL_TRACES_SAMPLER"))
            .unwrap_or_else(|| "parentbased_always_on".into());
        let sampler_arg = key(f.sampler_arg).or_else(|| var("OTEL_TRACES_SAMPLER_ARG"));
        let sampler =
            SamplerSpec::parse(&sampler_name, sampler_arg.as_deref()).unwrap_or_else(|e| {
                self.problem("tracing.sampler", e);
                SamplerSpec::AlwaysOff
            });
        let num_or_var = |v: Option<Num>, name: &str| match v {
            Some(Num::Text(t)) if t.trim().is_empty() => var(name).map(Num::Text),
            None => var(name).map(Num::Text),
            some => some,
        };
        let max_queue_size = self.bounded(
            &num_or_var(f.max_queue_size, "OTEL_BSP_MAX_QUEUE_SIZE"),
            &defaults::TRACING_MAX_QUEUE_SIZE,
        ) as usize;
        let schedule_delay = Duration::from_millis(self.bounded(
            &num_or_var(f.schedule_delay_ms, "OTEL_BSP_SCHEDULE_DELAY"),
            &defaults::TRACING_SCHEDULE_DELAY_MS,
        ));
        let timeout = var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .map(Num::Text)
            .or_else(|| num_or_var(f.export_timeout_ms, "OTEL_EXPORTER_OTLP_TIMEOUT"));
        let export_timeout =
            Duration::from_millis(self.bounded(&timeout, &defaults::TRACING_EXPORT_TIMEOUT_MS));
        Some(TracingConfig {
            endpoint,
            protocol,
            service_name,
            sampler,
            max_queue_size,
            schedule_delay,
            export_timeout,
        })
    }

    pub(in crate::config) fn header_list(
        &mut self,
        defaults: &[&str],
        extra: Option<String>,
        path: &str,
    ) -> http::HeaderValue {
        let mut names: Vec<String> = defaults.iter().map(|d| d.to_string()).collect();
        for name in extra.unwrap_or_default().split(',').map(str::trim) {
            if name.is_empty() {
                continue;
            }
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => {
                    if !names.iter().any(|n| n == h.as_str()) {
                        names.push(h.as_str().to_string());
                    }
                }
                Err(_) => self.problem(path, format!("{name:?} is not a header name")),
            }
        }
        http::HeaderValue::from_str(&names.join(", "))
            .unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }
}
