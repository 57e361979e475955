//! The request pipeline around every route, one layer ([`pipeline`]) that runs,
//! under the app's log subscriber, outermost first:
//!
//! - [`observe`]: gives the request an ID and the fields every record of it carries
//!   ([`telemetry::in_request`]), turns a panic into a 500,
//!   writes the one ERROR record of a 5xx and the one access record of every
//!   request, and counts it (metrics labelled by route template, and the traffic
//!   windows alerts are evaluated on);
//! - [`admit`]: refuses work while draining, sheds load beyond `MAX_IN_FLIGHT`, and
//!   bounds the request by `REQUEST_TIMEOUT_MS`. Health, metrics and the API
//!   document are exempt, so operators can always see in.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Once};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use tokio::time::Instant;
use tracing::instrument::WithSubscriber as _;
use tracing::{Dispatch, Level};

use crate::app::App;
use crate::clock;
use crate::domain::ids::random_id;
use crate::error::{ApiError, Dependency, ErrorOutcome, SHORT_BACKOFF};
use crate::json;
use crate::ops::window::{RecentError, RouteClass};
use crate::telemetry::{self, FieldValue};

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

/// The whole pipeline as one layer: see the module documentation.
pub async fn pipeline(State(pipeline): State<Pipeline>, request: Request, next: Next) -> Response {
    let Pipeline { app, dispatch } = pipeline;
    let started = Instant::now();
    let request_id = request_id(&request);
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route_label = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = request.method().as_str();
    let mut endpoint = String::with_capacity(method.len() + 1 + route_label.len());
    endpoint.push_str(method);
    endpoint.push(' ');
    endpoint.push_str(route_label);
    // Boxed: the future axum boxes for this layer, and every wrapper around it here,
    // then move a pointer rather than the whole of `observe`'s state.
    let observed = Box::pin(observe(&app, request, next, started, route.as_ref(), &endpoint));
    let mut response = telemetry::in_request(&request_id, &endpoint, observed)
        .with_subscriber(dispatch)
        .await;
    if let Ok(value) = HeaderValue::try_from(request_id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}

/// See the module documentation.
async fn observe(
    app: &App,
    request: Request,
    next: Next,
    started: Instant,
    route: Option<&MatchedPath>,
    endpoint: &str,
) -> Response {
    let method = request.method().clone();
    let route = route.map(MatchedPath::as_str);
    let route_label = route.unwrap_or("unmatched");
    // Kept for the ERROR record of a 5xx; cloning either shares its bytes.
    let uri = request.uri().clone();
    let user_agent = request.headers().get(header::USER_AGENT).cloned();

    // Polled with the thread marked as handling, in place: this whole future is
    // boxed once by `pipeline`.
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
    let elapsed = started.elapsed();
    let duration_ms = clock::whole_millis(elapsed);
    // Taken out, not borrowed: nothing after this layer reads it, and the error ID
    // moves into the recent errors instead of being copied.
    let (code, report) = match response.extensions_mut().remove::<ErrorOutcome>() {
        Some(ErrorOutcome { code, report }) => (Some(code), report),
        None => (None, None),
    };
    if let Some(report) = report {
        if tracing::enabled!(Level::ERROR) {
            let mut chain = Vec::with_capacity(report.chain.iter().map(|cause| cause.len() + 3).sum::<usize>() + 2);
            json::push_str_array(&mut chain, &report.chain);
            telemetry::record(
                Level::ERROR,
                report.chain.first().map(String::as_str).unwrap_or("server error"),
                &[
                    ("event", Some(FieldValue::Text("error"))),
                    ("errorId", Some(FieldValue::Text(&report.error_id))),
                    ("errorClass", Some(FieldValue::Text(report.class))),
                    // JSON this crate wrote, embedded without being parsed again.
                    ("errorChain", Some(FieldValue::Json(&chain))),
                    ("dependency", report.dependency.map(|d| FieldValue::Text(d.as_str()))),
                    ("status", Some(FieldValue::Number(report.status.into()))),
                    ("method", Some(FieldValue::Text(method.as_str()))),
                    ("url", Some(url_value(&uri))),
                    (
                        "userAgent",
                        Some(FieldValue::Text(
                            user_agent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default(),
                        )),
                    ),
                    ("durationMs", Some(FieldValue::Number(duration_ms))),
                ],
            );
        }
        app.metrics.errors.with_label_values(&[report.class]).inc();
        app.traffic.record_error(RecentError {
            error_id: report.error_id,
            error_class: report.class,
            endpoint: endpoint.to_string(),
            status: report.status,
            at_ms: app.clock.now_ms(),
        });
    }
    app.traffic
        .record(route_class(&method, route), status.as_u16(), elapsed);
    // `POST /api/checkout/complete 400 in 0ms`, put together by hand: one of
    // these is written for every request.
    let mut message = String::with_capacity(endpoint.len() + 24);
    message.push_str(endpoint);
    message.push(' ');
    message.push_str(status.as_str());
    message.push_str(" in ");
    message.push_str(itoa::Buffer::new().format(duration_ms));
    message.push_str("ms");
    if tracing::enabled!(Level::INFO) {
        telemetry::record(
            Level::INFO,
            &message,
            &[
                ("event", Some(FieldValue::Text("access"))),
                ("method", Some(FieldValue::Text(method.as_str()))),
                ("status", Some(FieldValue::Number(status.as_u16().into()))),
                ("durationMs", Some(FieldValue::Number(duration_ms))),
                ("error", code.map(FieldValue::Text)),
            ],
        );
    }
    app.metrics
        .http_requests
        .with_label_values(&[method.as_str(), route_label, status.as_str()])
        .inc();
    app.metrics
        .http_duration
        .with_label_values(&[method.as_str(), route_label])
        .observe(elapsed.as_secs_f64());
    response
}

/// The URL of a request as its ERROR record shows it: the path and query as they
/// came, or the whole URI formatted when it is not of that (origin) form.
fn url_value(uri: &Uri) -> FieldValue<'_> {
    match (uri.scheme(), uri.path_and_query()) {
        (None, Some(path_and_query)) => FieldValue::Text(path_and_query.as_str()),
        _ => FieldValue::Display(uri),
    }
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

/// See the module documentation.
async fn admit(app: &App, request: Request, next: Next) -> Response {
    if is_operational(request.uri().path()) {
        return next.run(request).await;
    }
    if app.health.is_draining() {
        return ApiError::unavailable(
            Dependency::Server,
            SHORT_BACKOFF,
            "Draining",
            anyhow::anyhow!("the server is shutting down and takes no new requests"),
        )
        .into_response();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_of_an_error_record_is_the_uri_as_it_is_shown() {
        for text in [
            "/api/carts/cart_1?x=%22y%22&z={a}",
            "/",
            "*",
            "http://example.test:8080/api/products?a=1",
        ] {
            let uri: Uri = text.parse().expect("a URI");
            let mut written = Vec::new();
            url_value(&uri).write_json(&mut written);
            assert_eq!(
                String::from_utf8(written).expect("UTF-8"),
                serde_json::to_string(&uri.to_string()).expect("JSON")
            );
        }
    }
}
