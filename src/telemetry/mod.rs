//! OpenTelemetry traces: one server span per request, children for authentication, the limiter,
//! each store call and the upstream exchange, exported over OTLP by `export.rs`.
//!
//! Off (no tracer, nothing recorded) unless an OTLP endpoint is configured. When on, a request
//! that the sampler drops still gets a span context, so the upstream's `traceparent` names the
//! gateway's span with the sampled flag cleared; only sampled requests build spans. Spans carry
//! routes, statuses, auth methods and tenant / user / key ids, never a secret.
//!
//! The store calls made while a sampled request runs find it through a task-local
//! ([`CURRENT`]), set around the request's future by the pipeline: the store layer needs no
//! trace parameter threaded through every call.

mod export;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// `tracing:` in gateway.yaml with the standard `OTEL_*` variables applied (see `config`).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Where spans go: the traces URL itself (`…/v1/traces` for HTTP, the collector for gRPC).
    pub endpoint: String,
    pub protocol: Protocol,
    pub service_name: String,
    pub sampler: SamplerSpec,
    /// Spans waiting for export; beyond this, new spans are dropped (and counted).
    pub max_queue_size: usize,
    /// How long ended spans wait for the next export (`OTEL_BSP_SCHEDULE_DELAY`).
    pub schedule_delay: Duration,
    /// One export's bound (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub export_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`'s spelling (`http/json` is not offered).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// `OTEL_TRACES_SAMPLER` with its argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSpec {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

impl SamplerSpec {
    /// The standard sampler names; `arg` is the ratio for the `traceidratio` ones (default 1.0).
    pub fn parse(name: &str, arg: Option<&str>) -> Result<SamplerSpec, String> {
        let ratio = || -> Result<f64, String> {
            match arg.map(str::trim).filter(|a| !a.is_empty()) {
                None => Ok(1.0),
                Some(a) => match a.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(format!(
                        "sampler argument must be a ratio from 0 to 1, got {a:?}"
                    )),
                },
            }
        };
        Ok(match name.trim() {
            "always_on" => SamplerSpec::AlwaysOn,
            "always_off" => SamplerSpec::AlwaysOff,
            "traceidratio" => SamplerSpec::Ratio(ratio()?),
            "parentbased_always_on" => SamplerSpec::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerSpec::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerSpec::ParentBasedRatio(ratio()?),
            other => {
                return Err(format!(
                    "unknown sampler {other:?} (always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
                ))
            }
        })
    }
}

/// Set while any gateway in the process traces: store calls skip the task-local look-up
/// otherwise.
static ANY_TRACING: AtomicBool = AtomicBool::new(false);

tokio::task_local! {
    /// The sampled request the current task is serving.
    static CURRENT: RequestTrace;
}

/// A gateway's tracer and the provider that exports its spans.
pub struct Tracing {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Build the exporter and the batch processor (on the current runtime).
    pub fn start(config: &TracingConfig) -> Result<Tracing, String> {
        let provider = export::provider(config)?;
        ANY_TRACING.store(true, Ordering::Relaxed);
        Ok(Tracing {
            tracer: opentelemetry::trace::TracerProvider::tracer(&provider, "ares-gateway"),
            provider,
        })
    }

    /// Export what is queued, within `within` (a hung collector never holds the exit longer).
    pub async fn shutdown(&self, within: Duration) {
        let provider = self.provider.clone();
        // The SDK blocks the calling thread while its batch task (on this runtime) flushes.
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(within));
        match tokio::time::timeout(within + Duration::from_millis(500), done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "trace export did not finish at shutdown"),
            _ => tracing::warn!("trace export did not finish at shutdown"),
        }
    }

    /// The server span of a request. `traceparent` is the request's trace context; `from_client`
    /// says whether the client sent it (then it is the parent) or the gateway made it (then
    /// only its trace id is kept, so the logs' trace id finds the trace).
    pub fn request(&self, traceparent: &HeaderValue, from_client: bool) -> RequestTrace {
        let parent = parse_traceparent(traceparent);
        let cx = match parent {
            Some(sc) if from_client => Context::new().with_remote_span_context(sc),
            // A root span with the trace id the gateway made (the access log's, and the request
            // id when the client sent none).
            Some(sc) => {
                export::next_trace_id(sc.trace_id());
                Context::new()
            }
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &cx);
        export::next_trace_id_unused();
        let context = span.span_context().clone();
        // An unsampled request keeps its span context only (no span to hold, nothing to end).
        let sampled = span.is_recording().then(|| {
            Arc::new(Inner {
                tracer: self.tracer.clone(),
                server: Context::new().with_span(span),
                phase: Mutex::new(None),
            })
        });
        RequestTrace { context, sampled }
    }
}

impl Drop for Tracing {
    /// A provider dropped without [`Tracing::shutdown`] flushes in its `Drop`, blocking on the
    /// batch task; on a runtime thread that task may never run again. Flush on a thread of its
    /// own instead (a no-op when already shut down).
    fn drop(&mut self) {
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("trace-flush".into())
            .spawn(move || {
                let _ = provider.shutdown_with_timeout(Duration::from_secs(1));
            });
    }
}

struct Inner {
    tracer: SdkTracer,
    server: Context,
    /// The phase span open now (authentication, limiter): store calls become its children.
    phase: Mutex<Option<Context>>,
}

impl Inner {
    fn store_call(&self, started: Instant, done: Instant, backend: &'static str, ok: bool) {
        let now = SystemTime::now();
        let start = now - done.saturating_duration_since(started);
        let phase = self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let parent = phase.as_ref().unwrap_or(&self.server);
        let mut span = self
            .tracer
            .span_builder("store")
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes([KeyValue::new("db.system.name", backend)])
            .start_with_context(&self.tracer, parent);
        if !ok {
            span.set_attribute(KeyValue::new("error.type", "STORE_UNAVAILABLE"));
            span.set_status(Status::error("STORE_UNAVAILABLE"));
        }
        span.end_with_timestamp(now);
        ended();
    }
}

/// One request's trace: its server span's context, and the span itself when sampled.
#[derive(Clone)]
pub struct RequestTrace {
    context: SpanContext,
    sampled: Option<Arc<Inner>>,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("sampled", &self.sampled.is_some())
            .finish()
    }
}

/// An open child span; [`Phase::end`] closes it with attributes.
pub struct Phase {
    cx: Context,
    trace: Arc<Inner>,
}

impl Phase {
    /// The `traceparent` that names this span (sent to the upstream from its exchange span).
    pub fn traceparent(&self) -> HeaderValue {
        traceparent(self.cx.span().span_context())
    }

    /// Close the span: `error` (an error code) marks it failed.
    pub fn end(self, attributes: Vec<KeyValue>, error: Option<&'static str>) {
        let mut phase = self.trace.phase.lock().unwrap_or_else(|p| p.into_inner());
        if phase
            .as_ref()
            .is_some_and(|p| p.span().span_context() == self.cx.span().span_context())
        {
            *phase = None;
        }
        drop(phase);
        close(self.cx.span(), attributes, error);
    }
}

/// End a span with its attributes; `error` (an error code) marks it failed.
fn close(
    span: opentelemetry::trace::SpanRef<'_>,
    attributes: Vec<KeyValue>,
    error: Option<&'static str>,
) {
    span.set_attributes(attributes);
    if let Some(code) = error {
        span.set_attribute(KeyValue::new("error.type", code));
        span.set_status(Status::error(code));
    }
    span.end();
    ended();
}

/// One more span handed to the export queue.
fn ended() {
    crate::metrics::get().trace_spans("ended", 1);
}

impl RequestTrace {
    pub fn sampled(&self) -> bool {
        self.sampled.is_some()
    }

    /// The `traceparent` the upstream receives when no exchange span names itself: the server
    /// span's, with the sampler's decision in its flags.
    pub fn traceparent(&self) -> HeaderValue {
        traceparent(&self.context)
    }

    /// Open a child of the server span. Store calls made until it ends become its children
    /// when `holds_store_calls`.
    pub fn phase(
        &self,
        name: &'static str,
        kind: SpanKind,
        holds_store_calls: bool,
    ) -> Option<Phase> {
        let inner = self.sampled.as_ref()?;
        let span = inner
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&inner.tracer, &inner.server);
        let cx = Context::new().with_span(span);
        if holds_store_calls {
            *inner.phase.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.clone());
        }
        Some(Phase {
            cx,
            trace: inner.clone(),
        })
    }

    /// Run `fut` with this trace as the task's current one (store calls find it).
    pub fn scope<F: std::future::Future>(
        &self,
        fut: F,
    ) -> impl std::future::Future<Output = F::Output> {
        CURRENT.scope(self.clone(), fut)
    }

    /// Close the server span: its name is the method and route (`GET /api/`), as HTTP
    /// semantic conventions name server spans.
    pub fn finish(&self, name: String, attributes: Vec<KeyValue>, error: Option<&'static str>) {
        let Some(inner) = &self.sampled else {
            return;
        };
        let span = inner.server.span();
        span.update_name(name);
        close(span, attributes, error);
    }
}

/// A store call has just ended: a span for it, when a sampled request is being served.
pub fn store_call(started: Instant, backend: &'static str, ok: bool) {
    if !ANY_TRACING.load(Ordering::Relaxed) {
        return;
    }
    let ended = Instant::now();
    let _ = CURRENT.try_with(|t| {
        if let Some(inner) = &t.sampled {
            inner.store_call(started, ended, backend, ok)
        }
    });
}

/// An attribute whose value is owned text.
pub fn attr(key: &'static str, value: impl Into<Cow<'static, str>>) -> KeyValue {
    KeyValue::new(key, opentelemetry::Value::String(value.into().into()))
}

/// `traceparent` as W3C spells it (version 00).
fn traceparent(sc: &SpanContext) -> HeaderValue {
    crate::util::traceparent(
        u128::from_be_bytes(sc.trace_id().to_bytes()),
        u64::from_be_bytes(sc.span_id().to_bytes()),
        sc.is_sampled(),
    )
}

/// A valid version-00 `traceparent` (the pipeline has checked it) as a remote span context.
fn parse_traceparent(v: &HeaderValue) -> Option<SpanContext> {
    let (trace, span, flags) = crate::util::parse_traceparent(v.as_bytes())?;
    Some(SpanContext::new(
        TraceId::from_bytes(trace.to_be_bytes()),
        SpanId::from_bytes(span.to_be_bytes()),
        TraceFlags::new(flags),
        true,
        TraceState::NONE,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_names_and_arguments() {
        assert_eq!(
            SamplerSpec::parse("parentbased_traceidratio", Some("0.01")),
            Ok(SamplerSpec::ParentBasedRatio(0.01))
        );
        assert_eq!(
            SamplerSpec::parse("traceidratio", None),
            Ok(SamplerSpec::Ratio(1.0))
        );
        assert_eq!(
            SamplerSpec::parse("always_off", Some("x")),
            Ok(SamplerSpec::AlwaysOff)
        );
        assert!(SamplerSpec::parse("traceidratio", Some("1.5")).is_err());
        assert!(SamplerSpec::parse("traceidratio", Some("half")).is_err());
        assert!(SamplerSpec::parse("jaeger_remote", None).is_err());
        assert_eq!(Protocol::parse("grpc"), Some(Protocol::Grpc));
        assert_eq!(
            Protocol::parse("http/protobuf"),
            Some(Protocol::HttpProtobuf)
        );
        assert_eq!(Protocol::parse("http/json"), None);
    }

    #[test]
    fn traceparent_round_trips() {
        let v = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let sc = parse_traceparent(&v).unwrap();
        assert!(sc.is_sampled());
        assert_eq!(traceparent(&sc), v);
        let unsampled =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let sc = parse_traceparent(&unsampled).unwrap();
        assert!(!sc.is_sampled());
        assert_eq!(traceparent(&sc), unsampled);
        assert!(parse_traceparent(&HeaderValue::from_static("00-zz")).is_none());
    }
}
