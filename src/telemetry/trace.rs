//! Traces (DESIGN §8). Every request is part of a W3C trace: an incoming
//! `traceparent` is continued, or a trace is started; its `traceId` and `spanId`
//! are fields of the request's span, so every record written while handling it
//! carries them; every call to a dependency sends `traceparent` (naming the call's
//! own span) and `X-Request-Id`.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` the spans are also exported over OTLP/HTTP by
//! the `opentelemetry` crates (through `tracing-opentelemetry`): the request
//! (`server`), each dependency call (`client`) and each database transaction, with
//! the semantic conventions' attributes. Export never waits on the collector: spans
//! go into a bounded queue that a background task sends in batches; a span that
//! finds the queue full, or is in a batch the collector did not take, is dropped
//! and counted ([`spans_dropped`], `otel_spans_dropped_total`). The queue is ours
//! rather than the SDK's batch processor because that one keeps its drop count to
//! itself, and the contract says dropped spans are counted.
//!
//! Attributes are span fields with a dot in their name (`http.route`); log records
//! leave them out (see [`super::record`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};
use tokio::sync::mpsc;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan as _;

/// Spans exported over OTLP/HTTP (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`).
#[derive(Clone, Debug)]
pub struct OtelSettings {
    /// The collector's base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: url::Url,
    /// `service.name` of every span.
    pub service_name: String,
}

/// Spans waiting to be sent; more are dropped.
const QUEUE_SPANS: usize = 4096;
/// Most spans in one export.
const BATCH_SPANS: usize = 512;
/// How long a span may wait for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Bound on one export to the collector.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The names of the spans that are exported: the request, a dependency call, a
/// database transaction. Every other span only gives records their fields.
const EXPORTED: &[&str] = &["request", "dependency", "db"];

static EXPORTING: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Whether spans are being exported (and so worth making for database calls).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Spans dropped so far: the queue was full, or the collector did not take them.
pub fn spans_dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The trace a request continues or starts, and its own span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceIds {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
}

/// The `traceparent` of `headers`, if it is a valid W3C one.
pub fn incoming(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers))
}

/// Makes `span` (a request's) part of the trace `parent` names, or of a new one,
/// and records `traceId` and `spanId` on it.
pub fn start(span: &Span, parent: &opentelemetry::Context) -> TraceIds {
    let remote = parent.span().span_context().clone();
    let ids = if exporting() {
        if remote.is_valid() {
            let _ = span.set_parent(parent.clone());
        }
        let context = span.context();
        let own = context.span().span_context().clone();
        if own.is_valid() { ids_of(&own) } else { fresh(&remote) }
    } else {
        fresh(&remote)
    };
    span.record("traceId", ids.trace_id.as_str());
    span.record("spanId", ids.span_id.as_str());
    ids
}

fn ids_of(context: &SpanContext) -> TraceIds {
    TraceIds {
        trace_id: context.trace_id().to_string(),
        span_id: context.span_id().to_string(),
    }
}

/// The remote trace with a span ID of our own, or a new trace.
fn fresh(remote: &SpanContext) -> TraceIds {
    fallback(remote.is_valid().then(|| remote.trace_id().to_string()))
}

/// What a dependency call sends along: `traceparent` (the call's own span as the
/// parent) and `X-Request-Id`.
#[derive(Clone, Debug)]
pub struct Propagation {
    /// `00-<trace>-<span>-01`.
    pub traceparent: String,
    /// The request's ID, or one of the call's own outside a request.
    pub request_id: String,
}

/// The span of a call to `dependency` (`method` on `url`), child of the current
/// span (made only when spans are exported), and what the call sends along.
pub fn dependency_call(dependency: &str, method: &str, url: &url::Url) -> (Span, Propagation) {
    let (trace_id, request_id) = current_request();
    let request_id = request_id.unwrap_or_else(|| crate::domain::ids::random_id("req_"));
    if !exporting() {
        let ids = fallback(trace_id);
        let propagation = Propagation {
            traceparent: format!("00-{}-{}-01", ids.trace_id, ids.span_id),
            request_id,
        };
        return (Span::none(), propagation);
    }
    let span = tracing::error_span!(
        "dependency",
        dependency,
        spanId = tracing::field::Empty,
        otel.name = %format_args!("{method} {}", url.path()),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        server.address = url.host_str().unwrap_or_default(),
        server.port = u64::from(url.port_or_known_default().unwrap_or_default()),
        url.full = url.as_str(),
        http.response.status_code = tracing::field::Empty,
    );
    let context = span.context();
    let own = context.span().span_context().clone();
    let ids = if own.is_valid() {
        ids_of(&own)
    } else {
        fallback(trace_id)
    };
    span.record("spanId", ids.span_id.as_str());
    let propagation = Propagation {
        traceparent: format!("00-{}-{}-01", ids.trace_id, ids.span_id),
        request_id,
    };
    (span, propagation)
}

/// Trace `trace_id` (a new one without it) and a new span ID.
fn fallback(trace_id: Option<String>) -> TraceIds {
    TraceIds {
        trace_id: trace_id.unwrap_or_else(|| crate::domain::ids::random_hex(16)),
        span_id: crate::domain::ids::random_hex(8),
    }
}

/// The `traceId` and `requestId` of the spans the caller is in.
fn current_request() -> (Option<String>, Option<String>) {
    let mut found = (None, None);
    Span::current().with_subscriber(|(id, dispatch)| {
        let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>() else {
            return;
        };
        let Some(span) = registry.span(id) else {
            return;
        };
        for span in span.scope() {
            let extensions = span.extensions();
            let Some(values) = extensions.get::<super::record::Values>() else {
                continue;
            };
            if found.0.is_none() {
                found.0 = values.text("traceId");
            }
            if found.1.is_none() {
                found.1 = values.text("requestId");
            }
        }
    });
    found
}

/// The span of one database transaction (`operation`), when spans are exported.
pub fn db_span(system: &'static str, operation: &'static str) -> Span {
    if !exporting() {
        return Span::none();
    }
    tracing::error_span!(
        "db",
        otel.name = operation,
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = operation,
    )
}

/// A running OTLP export: its provider and the task that sends batches.
pub struct Export {
    provider: SdkTracerProvider,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Export {
    /// Sends what is queued (waiting at most a few seconds) and stops.
    pub async fn shutdown(mut self) {
        EXPORTING.store(false, Ordering::Relaxed);
        let _ = self.provider.shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(EXPORT_TIMEOUT, task).await;
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        EXPORTING.store(false, Ordering::Relaxed);
    }
}

/// Starts exporting to `settings.endpoint` (from a tokio runtime) and returns the
/// layer that feeds the export, for the subscriber.
pub fn export(settings: &OtelSettings) -> anyhow::Result<(Export, super::SpanLayer)> {
    let endpoint = settings.endpoint.join("v1/traces")?;
    let client = crate::client::Client::new(Duration::from_secs(1))
        .map_err(|error| anyhow::anyhow!("cannot make an HTTP client: {error}"))?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client(client))
        .with_endpoint(endpoint.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            super::version().to_string(),
        ))
        .build();
    exporter.set_resource(&resource);
    let (sender, receiver) = mpsc::channel(QUEUE_SPANS);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(send_batches(exporter, receiver, stopped));
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(Queue { sender })
        .build();
    let tracer = provider.tracer("checkout-service");
    EXPORTING.store(true, Ordering::Relaxed);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && EXPORTED.contains(&meta.name())
        }))
        .boxed();
    Ok((
        Export {
            provider,
            stop: Some(stop),
            task: Some(task),
        },
        layer,
    ))
}

/// Hands ended spans to the export task without ever waiting.
#[derive(Debug)]
struct Queue {
    sender: mpsc::Sender<SpanData>,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.sender.try_send(span).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends queued spans in batches of up to [`BATCH_SPANS`], at least every
/// [`BATCH_DELAY`], until told to stop (then sends what is left).
async fn send_batches(
    exporter: opentelemetry_otlp::SpanExporter,
    mut receiver: mpsc::Receiver<SpanData>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let exporter = Arc::new(exporter);
    loop {
        let mut batch = Vec::with_capacity(BATCH_SPANS);
        let stopping = tokio::select! {
            received = receiver.recv_many(&mut batch, BATCH_SPANS) => received == 0,
            _ = &mut stop => true,
        };
        if !stopping && batch.len() < BATCH_SPANS {
            // Let the batch fill for a while, unless told to stop.
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH_SPANS {
                let more = BATCH_SPANS - batch.len();
                tokio::select! {
                    received = receiver.recv_many(&mut batch, more) => if received == 0 { break },
                    () = tokio::time::sleep_until(deadline) => break,
                    _ = &mut stop => break,
                }
            }
        }
        if stopping {
            while let Ok(span) = receiver.try_recv() {
                batch.push(span);
            }
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let sent = tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await;
            if !matches!(sent, Ok(Ok(()))) {
                DROPPED.fetch_add(count, Ordering::Relaxed);
            }
        }
        if stopping {
            return;
        }
    }
}

/// The OTLP exporter's HTTP client: the service's own (see [`crate::client`]).
#[derive(Debug)]
struct Client(crate::client::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let url = url::Url::parse(&parts.uri.to_string())?;
        let mut outgoing = crate::client::Request::new(parts.method, url).body(body);
        *outgoing.headers_mut() = parts.headers;
        let answer = self
            .0
            .call(outgoing, tokio::time::Instant::now() + EXPORT_TIMEOUT)
            .await?;
        Ok(http::Response::builder().status(answer.status).body(answer.body)?)
    }
}
