//! A test OTLP trace receiver: OTLP/HTTP (protobuf) on `/v1/traces` and OTLP/gRPC
//! (`TraceService/Export` over h2c) on one port, decoding every export with the OTLP protobuf
//! types; or one that accepts connections and never answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use super::{serve, BoxBody};

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct SpanRec {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's SpanKind: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub attrs: BTreeMap<String, String>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub service_name: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl SpanRec {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
}

#[derive(Clone)]
pub struct Collector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<SpanRec>>>,
    /// Exports received, by transport (`http`, `grpc`).
    exports: Arc<Mutex<Vec<&'static str>>>,
}

impl Collector {
    pub async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<SpanRec>>> = Arc::default();
        let exports: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let (s, e) = (spans.clone(), exports.clone());
        let addr = serve(move |req: Request<Incoming>| {
            let (s, e) = (s.clone(), e.clone());
            async move { receive(req, s, e).await }
        })
        .await;
        Collector {
            addr,
            spans,
            exports,
        }
    }

    /// Base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<SpanRec> {
        self.spans.lock().unwrap().clone()
    }

    pub fn transports(&self) -> Vec<&'static str> {
        self.exports.lock().unwrap().clone()
    }

    /// The spans of one trace, once `n` of them have arrived (or what came within 10 s).
    pub async fn trace(&self, trace_id: &str, n: usize) -> Vec<SpanRec> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<SpanRec> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if found.len() >= n || tokio::time::Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(
    req: Request<Incoming>,
    spans: Arc<Mutex<Vec<SpanRec>>>,
    exports: Arc<Mutex<Vec<&'static str>>>,
) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    let grpc = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if grpc {
        assert_eq!(
            path,
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        // One length-prefixed message, uncompressed.
        assert_eq!(body[0], 0, "compressed gRPC message");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        record(&body[5..5 + len], &spans);
        exports.lock().unwrap().push("grpc");
        // An empty ExportTraceServiceResponse, then grpc-status 0 in the trailers.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed_unsync(body))
            .unwrap();
    }
    assert_eq!(path, "/v1/traces");
    record(&body, &spans);
    exports.lock().unwrap().push("http");
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-protobuf")
        .body(BodyExt::boxed_unsync(
            Full::new(Bytes::new()).map_err(|never| match never {}),
        ))
        .unwrap()
}

fn record(bytes: &[u8], spans: &Mutex<Vec<SpanRec>>) {
    let req = ExportTraceServiceRequest::decode(bytes).expect("a valid OTLP export");
    let mut out = spans.lock().unwrap();
    for rs in req.resource_spans {
        let service_name = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| a.value.as_ref())
            .map(any_text)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(SpanRec {
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    kind: s.kind,
                    attrs: s
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                a.value.as_ref().map(any_text).unwrap_or_default(),
                            )
                        })
                        .collect(),
                    status: s.status.map_or(0, |st| st.code),
                    service_name: service_name.clone(),
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                });
            }
        }
    }
}

fn any_text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A collector that accepts connections and never answers: the addresses of its sockets stay
/// open until the test ends.
pub async fn hanging() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}
