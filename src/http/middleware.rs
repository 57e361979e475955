//! The request pipeline around every route, one layer ([`pipeline`]) that runs,
//! under the app's log subscriber, outermost first:
//!
//! - [`observe`]: runs the request in its span ([`telemetry::request_span`]), whose
//!   fields every record of it carries, turns a panic into a 500,
//!   writes the one ERROR record of a 5xx and the one access record of every
//!   request, and counts it (metrics labelled by route template, and the traffic
//!   windows alerts are evaluated on);
//! - [`admit`]: refuses work once the server has stopped accepting, reads the
//!   body (bounded by `BODY_READ_TIMEOUT_MS` and `MAX_BODY_BYTES`) before taking
//!   a slot, sheds load beyond `MAX_IN_FLIGHT`, and bounds the request by
//!   `REQUEST_TIMEOUT_MS`. Health, metrics and the API
//!   document are exempt, so operators can always see in.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Once};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use tokio::time::Instant;
use tracing::instrument::WithSubscriber as _;
use tracing::{Dispatch, Instrument as _};

use super::error::{ApiError, Dependency, ErrorOutcome, SHORT_BACKOFF};
use crate::app::App;
use crate::clock;
use crate::domain::ids::random_id;
use crate::ops::window::{RecentError, RouteClass};
use crate::telemetry;

/// `X-Request-Id`: echoed when the client sends a sane one, generated otherwise.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

thread_local! {
    /// Where the panic hook leaves the message and location of the latest panic on
    /// this thread, for the request middleware that catches it.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// How many request handlers this thread is polling right now.
    static HANDLING: Cell<u32> = const { Cell::new(0) };
}

/// Installs a panic hook that, while a request handler is being polled, keeps the
/// panic's message and location for the request's ERROR record instead of printing
/// them; any other panic goes to the previous hook as usual.
pub fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if HANDLING.with(Cell::get) == 0 {
                return previous(info);
            }
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_else(|| "an unknown location".to_string());
            let message = panic_message(info.payload());
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(format!("panicked at {location}: {message}")));
        }));
    });
}

/// Marks the thread as polling a request handler for as long as it is alive, even
/// when the poll unwinds.
struct HandlingGuard;

impl HandlingGuard {
    fn enter() -> Self {
        HANDLING.with(|n| n.set(n.get() + 1));
        HandlingGuard
    }
}

impl Drop for HandlingGuard {
    fn drop(&mut self) {
        HANDLING.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".to_string())
}

fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| random_id("req_"))
}

/// What the pipeline needs besides the request.
#[derive(Clone)]
pub struct Pipeline {
    /// The application the routes serve.
    pub app: Arc<App>,
    /// Where the request's records go.
    pub dispatch: Dispatch,
}

/// The `method` label and log field: one of the standard methods, or `OTHER`, so
/// that a client inventing methods cannot grow the metrics without bound.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The whole pipeline as one layer: see the module documentation.
pub async fn pipeline(State(pipeline): State<Pipeline>, request: Request, next: Next) -> Response {
    let Pipeline { app, dispatch } = pipeline;
    let started = Instant::now();
    let request_id = request_id(&request);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string());
    let endpoint = format!(
        "{} {}",
        method_label(request.method()),
        route.as_deref().unwrap_or("unmatched")
    );
    let parent = telemetry::trace::incoming(request.headers());
    let span = tracing::dispatcher::with_default(&dispatch, || {
        let span = telemetry::request_span(&request_id, &endpoint);
        telemetry::trace::start(&span, &parent);
        if telemetry::trace::exporting() {
            span.record("http.request.method", method_label(request.method()));
            span.record("http.route", route.as_deref().unwrap_or("unmatched"));
            span.record("url.path", request.uri().path());
        }
        span
    });
    let mut response = observe(&app, request, next, started, route.as_deref(), &endpoint)
        .instrument(span)
        .with_subscriber(dispatch)
        .await;
    if let Ok(value) = HeaderValue::try_from(request_id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    if app.health.is_draining() {
        // Move keep-alive clients to another instance while this one still answers.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// See the module documentation.
async fn observe(
    app: &App,
    request: Request,
    next: Next,
    started: Instant,
    route: Option<&str>,
    endpoint: &str,
) -> Response {
    let method = method_label(request.method());
    let route_label = route.unwrap_or("unmatched");
    let class = route_class(request.method(), route);
    // Kept for the ERROR record of a 5xx.
    let uri = request.uri().clone();
    let user_agent = request.headers().get(header::USER_AGENT).cloned();

    let admitted = admit(app, request, next);
    let mut admitted = std::pin::pin!(admitted);
    let handled = std::future::poll_fn(|cx| {
        let _handling = HandlingGuard::enter();
        admitted.as_mut().poll(cx)
    });
    let mut response = match AssertUnwindSafe(handled).catch_unwind().await {
        Ok(response) => response,
        Err(payload) => {
            let detail = LAST_PANIC
                .with(|last| last.borrow_mut().take())
                .unwrap_or_else(|| format!("panicked: {}", panic_message(payload.as_ref())));
            ApiError::internal("Panic", anyhow::anyhow!(detail).context("the request handler panicked")).into_response()
        }
    };

    let status = response.status();
    if telemetry::trace::exporting() {
        let span = tracing::Span::current();
        span.record("http.response.status_code", u64::from(status.as_u16()));
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }
    }
    let elapsed = started.elapsed();
    let duration_ms = clock::whole_millis(elapsed);
    let (code, report) = match response.extensions_mut().remove::<ErrorOutcome>() {
        Some(ErrorOutcome { code, report }) => (Some(code), report),
        None => (None, None),
    };
    if let Some(report) = report {
        let chain = serde_json::to_string(&report.chain).expect("a list of strings serializes");
        tracing::error!(
            event = "error",
            errorId = report.error_id.as_str(),
            errorClass = report.class,
            errorChain = chain.as_str(),
            dependency = report.dependency.map(Dependency::as_str),
            status = report.status,
            method,
            url = %uri,
            userAgent = user_agent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default(),
            durationMs = duration_ms,
            "{}",
            report.chain.first().map(String::as_str).unwrap_or("server error")
        );
        app.metrics.errors.with_label_values(&[report.class]).inc();
        app.traffic.record_error(RecentError {
            error_id: report.error_id,
            error_class: report.class,
            endpoint: endpoint.to_string(),
            status: report.status,
            dependency: report.dependency.map(Dependency::as_str),
            at_ms: app.clock.now_ms(),
        });
    }
    app.traffic.record(class, status.as_u16(), elapsed);
    tracing::info!(
        event = "access",
        method,
        status = status.as_u16(),
        durationMs = duration_ms,
        error = code,
        "{endpoint} {} in {duration_ms}ms",
        status.as_u16()
    );
    app.metrics
        .http_requests
        .with_label_values(&[method, route_label, status.as_str()])
        .inc();
    app.metrics
        .http_duration
        .with_label_values(&[method, route_label])
        .observe(elapsed.as_secs_f64());
    response
}

/// Routes that must answer even when the server is saturated or shutting down, and
/// that are not counted as traffic.
fn is_operational(path: &str) -> bool {
    path == "/health"
        || path.starts_with("/health/")
        || path == "/status"
        || path.starts_with("/status/")
        || matches!(path, "/metrics" | "/alerts" | "/openapi.json")
}

/// How a request counts for alerting: the checkout is the critical path.
fn route_class(method: &Method, route: Option<&str>) -> RouteClass {
    match route {
        Some("/api/checkout/complete") if method == Method::POST => RouteClass::Critical,
        Some(route) if is_operational(route) => RouteClass::Operational,
        _ => RouteClass::Standard,
    }
}

/// The request with its body read in full, within `BODY_READ_TIMEOUT_MS` and
/// `MAX_BODY_BYTES` (408 and 413 otherwise). A request that declares no body is
/// passed on as it is.
async fn buffer_body(app: &App, request: Request) -> Result<Request, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.is_none_or(|length| length == 0) && !chunked {
        return Ok(request);
    }
    let limit = app.settings.max_body_bytes;
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let (parts, body) = request.into_parts();
    let bytes = super::extract::read_body(body, limit, app.settings.body_read_timeout).await?;
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

/// See the module documentation.
async fn admit(app: &App, request: Request, next: Next) -> Response {
    if is_operational(request.uri().path()) {
        return next.run(request).await;
    }
    if app.health.is_closing() {
        return ApiError::unavailable(
            Dependency::Server,
            SHORT_BACKOFF,
            "Draining",
            anyhow::anyhow!("the server is shutting down and takes no new requests"),
        )
        .into_response();
    }
    // The body first: a client trickling it in must not hold one of the
    // MAX_IN_FLIGHT slots meanwhile, or slow uploads could starve everyone else.
    let request = match buffer_body(app, request).await {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let Ok(_permit) = app.in_flight.try_acquire() else {
        return ApiError::unavailable(
            Dependency::Server,
            SHORT_BACKOFF,
            "Overloaded",
            anyhow::anyhow!(
                "{} requests already in flight (MAX_IN_FLIGHT); shedding load",
                app.settings.max_in_flight
            ),
        )
        .into_response();
    };
    let limit = app.settings.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(
            Dependency::Server,
            SHORT_BACKOFF,
            "RequestTimeout",
            anyhow::anyhow!(
                "the request did not finish within {}ms (REQUEST_TIMEOUT_MS)",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}
