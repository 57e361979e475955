//! Health, metrics and the API document.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::app::App;
use crate::app::monitor::ALERT_WINDOW;
use crate::ops::alerts::State as AlertState;

/// Liveness: the process can serve. Checks nothing external, and answers fixed
/// bytes: probes call it often, and it is the benchmark's floor (the pipeline every
/// request passes through, around a handler that does nothing).
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Object, example = json!({"status": "alive"}))))]
pub async fn live() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"alive"}"#).into_response()
}

fn readiness(app: &App) -> Response {
    let report = app.health.report(&app.breakers());
    let status = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report.body)).into_response()
}

/// Readiness: 200 when the database answers, memory is below 90% of its limit, no
/// circuit has been open for more than 5 minutes and the server is not draining.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = Object),
        (status = 503, description = "Take this instance out of rotation", body = Object),
    ))]
pub async fn ready(State(app): State<Arc<App>>) -> Response {
    readiness(&app)
}

/// The same report as `/health/ready`.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = Object),
        (status = 503, description = "Take this instance out of rotation", body = Object),
    ))]
pub async fn health(State(app): State<Arc<App>>) -> Response {
    readiness(&app)
}

/// Every metric, in Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let metrics = &app.metrics;
    let pool = app.store.pool_snapshot();
    metrics
        .db_pool_connections
        .with_label_values(&["active"])
        .set(i64::from(pool.active));
    metrics
        .db_pool_connections
        .with_label_values(&["idle"])
        .set(i64::from(pool.idle));
    metrics.db_pool_max.set(i64::from(pool.max));
    metrics.db_pool_pending.set(i64::from(pool.pending));
    let timeouts = app.store.acquire_timeouts();
    let counted = metrics.db_pool_acquire_timeouts.get();
    if timeouts > counted {
        metrics.db_pool_acquire_timeouts.inc_by(timeouts - counted);
    }
    if let Some(memory) = app.probe.memory() {
        metrics.memory_usage_ratio.set(memory.usage_ratio());
    }
    metrics
        .requests_in_flight
        .set(i64::try_from(app.requests_in_flight()).unwrap_or(i64::MAX));
    let dropped = crate::telemetry::dropped_records();
    for (level, count) in dropped.by_level() {
        let counter = metrics.log_records_dropped.with_label_values(&[level]);
        if count > counter.get() {
            counter.inc_by(count - counter.get());
        }
    }
    let spans = crate::telemetry::trace::spans_dropped();
    if spans > metrics.spans_dropped.get() {
        metrics.spans_dropped.inc_by(spans - metrics.spans_dropped.get());
    }
    for path in crate::app::monitor::watched_paths(&app) {
        if let Some(disk) = app.probe.disk(&path) {
            metrics
                .disk_usage_ratio
                .with_label_values(&[&disk.path])
                .set(disk.usage_ratio);
        }
    }
    for breaker in app.breakers() {
        metrics
            .breaker_state
            .with_label_values(&[breaker.name()])
            .set(breaker.state().gauge());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document of every route", body = Object)))]
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::openapi_json()).into_response()
}

/// Every alert rule and its state, firing ones first.
#[utoipa::path(get, path = "/alerts", tag = "operations",
    responses((status = 200, description = "`{alerts:[{name,severity,state,value,threshold,since}]}`", body = Object)))]
pub async fn alerts(State(app): State<Arc<App>>) -> Json<Value> {
    let mut alerts = app.alerts.statuses();
    alerts.sort_by_key(|a| a.state != AlertState::Firing);
    Json(json!({ "alerts": alerts }))
}

/// The status page: health, breakers, rates, an hour of charts, firing alerts and
/// recent error IDs; one HTML file that refreshes itself.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses((status = 200, description = "The status page", body = String, content_type = "text/html")))]
pub async fn status_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("status.html"),
    )
        .into_response()
}

/// What the status page shows, as JSON.
#[utoipa::path(get, path = "/status/data", tag = "operations",
    responses((status = 200, description = "Health, alerts, the last five minutes, an hour of per-minute points and recent errors", body = Object)))]
pub async fn status_data(State(app): State<Arc<App>>) -> Json<Value> {
    let report = app.health.report(&app.breakers());
    let mut health = report.body;
    health["healthy"] = json!(report.healthy);
    let mut alerts = app.alerts.statuses();
    alerts.sort_by_key(|a| a.state != AlertState::Firing);
    let recent = app.traffic.last(ALERT_WINDOW);
    let total = recent.total();
    Json(json!({
        "service": crate::telemetry::SERVICE,
        "version": crate::telemetry::version(),
        "generatedAt": crate::clock::rfc3339_ms(app.clock.now_ms()),
        "health": health,
        "alerts": alerts,
        "window": {
            "seconds": ALERT_WINDOW.as_secs(),
            "requestsPerSecond": total.requests as f64 / ALERT_WINDOW.as_secs_f64(),
            "errorRatio": total.error_ratio(),
            "checkoutErrorRatio": recent.critical.error_ratio(),
            "p99Ms": recent.p99.map(|d| d.as_secs_f64() * 1000.0),
        },
        "series": {
            "stepSeconds": 60,
            "points": app.traffic.series(std::time::Duration::from_secs(3600), std::time::Duration::from_secs(60)),
        },
        "recentErrors": app.traffic.recent_errors(),
        "errorGroups": app.traffic.error_groups(),
    }))
}
