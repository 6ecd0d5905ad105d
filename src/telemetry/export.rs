//! The OTLP pipeline: sampler, batch processor (a task on the runtime, bounded queue), the
//! exporter (HTTP/protobuf through the gateway's own hyper + rustls client, or gRPC through
//! tonic), and a count of what was exported.
//!
//! A dead or hung collector costs requests nothing: spans are handed to the queue without
//! waiting, an export waits at most its timeout, and when the queue is full new spans are
//! dropped.

use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, IdGenerator, RandomIdGenerator, Sampler, SdkTracerProvider, SpanData,
    SpanExporter,
};
use opentelemetry_sdk::Resource;

use super::{Protocol, SamplerSpec, TracingConfig};

pub(super) fn provider(config: &TracingConfig) -> Result<SdkTracerProvider, String> {
    let exporter = match config.protocol {
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.export_timeout)
            .with_http_client(HttpsClient::new(config.export_timeout)?)
            .build(),
        Protocol::Grpc => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.export_timeout);
            let builder = if config.endpoint.starts_with("https://") {
                builder
                    .with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
            } else {
                builder
            };
            builder.build()
        }
    }
    .map_err(|e| format!("tracing: cannot build the OTLP exporter: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.max_queue_size)
        .with_scheduled_delay(config.schedule_delay)
        .with_max_export_timeout(config.export_timeout)
        .build();
    let processor = BatchSpanProcessor::builder(Counted(exporter), runtime::Tokio)
        .with_batch_config(batch)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(config.sampler))
        .with_id_generator(Ids::default())
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build())
}

fn sampler(spec: SamplerSpec) -> Sampler {
    match spec {
        SamplerSpec::AlwaysOn => Sampler::AlwaysOn,
        SamplerSpec::AlwaysOff => Sampler::AlwaysOff,
        SamplerSpec::Ratio(r) => Sampler::TraceIdRatioBased(r),
        SamplerSpec::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerSpec::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerSpec::ParentBasedRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
    }
}

thread_local! {
    /// The trace id the next root span on this thread takes (the one the gateway already gave
    /// the request), set just before the span is built.
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

pub(super) fn next_trace_id(id: TraceId) {
    NEXT_TRACE_ID.with(|c| c.set(Some(id)));
}

/// Forget a trace id the SDK did not ask for (the span had a parent, or the provider is shut).
pub(super) fn next_trace_id_unused() {
    NEXT_TRACE_ID.with(|c| c.set(None));
}

/// Random ids, except a root span's trace id, which is the request's own.
#[derive(Debug, Default)]
struct Ids(RandomIdGenerator);

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// The exporter, counting what it sends; a failure streak is logged once a minute at most.
#[derive(Debug)]
struct Counted<E>(E);

static LAST_FAILURE_LOG: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.0.export(batch).await;
        match &r {
            Ok(()) => crate::metrics::get().trace_spans("exported", n),
            Err(e) => {
                let mut last = LAST_FAILURE_LOG.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    tracing::warn!(error = %e, spans = n, "trace export failed; spans dropped");
                }
                crate::metrics::get().trace_spans("failed", n)
            }
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource)
    }
}

/// OTLP/HTTP over the same client stack the gateway proxies with: HTTP/1.1 or HTTP/2, rustls
/// with the system roots for `https://` collectors, every send bounded by the export timeout.
#[derive(Debug, Clone)]
struct HttpsClient {
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    timeout: Duration,
}

impl HttpsClient {
    fn new(timeout: Duration) -> Result<HttpsClient, String> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("tracing: no system root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(HttpsClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }
}

/// Collector answers are small; a larger one is cut here.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpsClient {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let exchange = async {
            let resp = self.client.request(request.map(Full::new)).await?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(Response::from_parts(parts, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err("the collector did not answer within the export timeout".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_span_takes_the_requests_trace_id_once() {
        let ids = Ids::default();
        let id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        next_trace_id(id);
        assert_eq!(ids.new_trace_id(), id);
        assert_ne!(ids.new_trace_id(), id, "used once");
        next_trace_id(id);
        next_trace_id_unused();
        assert_ne!(ids.new_trace_id(), id);
    }
}
