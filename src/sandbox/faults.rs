//! Fault injection for the sandbox dependencies: latency, error answers (with a
//! `Retry-After` if asked), hung and refused connections, unparseable, oversized
//! and pending answers, switched at run time through
//! `PUT /_control/faults`, and counted for `GET /_control/stats`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

/// The longest a hung request is held before its connection is dropped.
const MAX_HANG: Duration = Duration::from_secs(600);

/// The faults in force. Every field is optional in `PUT /_control/faults`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Delay added to every answer, after the request has been acted on.
    pub latency_ms: u64,
    /// Share of requests (0 to 1) answered with `error_status` before being acted on.
    pub error_rate: f64,
    /// Status of injected errors (500 when 0).
    pub error_status: u16,
    /// Accept requests and never answer them.
    pub hang: bool,
    /// Close every connection at once without answering.
    pub refuse: bool,
    /// Answer 200 with a body that cannot be parsed (after acting on the request).
    pub malformed: bool,
    /// A `Retry-After` header, in seconds, on the injected error answers.
    pub retry_after_seconds: u64,
    /// Answer 200 with a body of 2 MiB (after acting on the request).
    pub oversized: bool,
    /// Answer with the JSON body's `status` set to `pending` (after acting on the
    /// request): a charge the gateway has taken but not finished.
    pub pending: bool,
}

impl FaultConfig {
    fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("errorRate must be between 0 and 1".into());
        }
        if self.error_status != 0 && !(400..=599).contains(&self.error_status) {
            return Err("errorStatus must be an HTTP error status (400 to 599)".into());
        }
        if self.latency_ms > 600_000 {
            return Err("latencyMs must be at most 600000".into());
        }
        Ok(())
    }
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Injected {
    errors: u64,
    hangs: u64,
    refusals: u64,
    malformed: u64,
    delayed: u64,
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Stats {
    requests: u64,
    by_endpoint: BTreeMap<String, u64>,
    injected: Injected,
}

/// One sandbox's fault switches and counters.
pub struct Faults {
    config: watch::Sender<FaultConfig>,
    stats: Mutex<Stats>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            config: watch::Sender::new(FaultConfig::default()),
            stats: Mutex::default(),
        }
    }
}

impl Faults {
    /// The faults in force.
    pub fn current(&self) -> FaultConfig {
        self.config.borrow().clone()
    }

    /// Replaces the faults in force.
    pub fn set(&self, config: FaultConfig) {
        self.config.send_replace(config);
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether connections are being refused; counts the refusal if so.
    pub fn refuse(&self) -> bool {
        let refusing = self.config.borrow().refuse;
        if refusing {
            self.stats().injected.refusals += 1;
        }
        refusing
    }

    /// If requests are hanging, holds this one until the fault is cleared, the sandbox
    /// stops, or ten minutes pass, and returns true: its connection is then dropped.
    pub async fn hang(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut config = self.config.subscribe();
        if !config.borrow_and_update().hang {
            return false;
        }
        self.stats().injected.hangs += 1;
        let deadline = tokio::time::sleep(MAX_HANG);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                changed = config.changed() => {
                    if changed.is_err() || !config.borrow_and_update().hang {
                        return true;
                    }
                }
                _ = shutdown.changed() => return true,
                () = &mut deadline => return true,
            }
        }
    }
}

/// Middleware for the business routes: counts the request, then injects error
/// answers (before acting), malformed bodies and latency (after acting).
pub async fn inject(State(faults): State<Arc<Faults>>, request: Request, next: Next) -> Response {
    let endpoint = match request.extensions().get::<MatchedPath>() {
        Some(path) => format!("{} {}", request.method(), path.as_str()),
        None => format!("{} {}", request.method(), request.uri().path()),
    };
    {
        let mut stats = faults.stats();
        stats.requests += 1;
        *stats.by_endpoint.entry(endpoint).or_default() += 1;
    }
    let config = faults.current();
    if config.error_rate > 0.0 && rand::rng().random_bool(config.error_rate) {
        faults.stats().injected.errors += 1;
        let status = StatusCode::from_u16(if config.error_status == 0 {
            500
        } else {
            config.error_status
        })
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut answer = (
            status,
            Json(json!({"error": {"type": "api_error", "message": "injected fault"}})),
        )
            .into_response();
        if config.retry_after_seconds > 0 {
            answer.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(config.retry_after_seconds),
            );
        }
        return answer;
    }
    let mut response = next.run(request).await;
    if config.pending {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1024 * 1024).await.unwrap_or_default();
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if let Some(object) = value.as_object_mut() {
            object.insert("status".into(), json!("pending"));
        }
        response = Response::from_parts(parts, Body::from(value.to_string()));
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if config.oversized {
        response = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"padding\":\"{}\"}}", "x".repeat(2 * 1024 * 1024)),
        )
            .into_response();
    }
    if config.malformed {
        faults.stats().injected.malformed += 1;
        response = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"id\": \"txn_"))
            .unwrap_or_default();
    }
    if config.latency_ms > 0 {
        faults.stats().injected.delayed += 1;
        tokio::time::sleep(Duration::from_millis(config.latency_ms)).await;
    }
    response
}

/// `PUT /_control/faults`.
pub async fn put_faults(State(faults): State<Arc<Faults>>, body: axum::body::Bytes) -> Response {
    let config = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(FaultConfig::default())
    } else {
        serde_json::from_slice::<FaultConfig>(&body).map_err(|e| e.to_string())
    };
    match config.and_then(|c| c.validate().map(|()| c)) {
        Ok(config) => {
            faults.set(config.clone());
            Json(config).into_response()
        }
        Err(why) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"type": "invalid_request_error", "message": why}})),
        )
            .into_response(),
    }
}

/// `DELETE /_control/faults`.
pub async fn delete_faults(State(faults): State<Arc<Faults>>) -> Json<FaultConfig> {
    faults.set(FaultConfig::default());
    Json(FaultConfig::default())
}

/// `GET /_control/stats`.
pub async fn get_stats(State(faults): State<Arc<Faults>>) -> Response {
    let stats = faults.stats();
    Json(json!({
        "requests": stats.requests,
        "byEndpoint": stats.by_endpoint,
        "injected": stats.injected,
        "faults": faults.current(),
    }))
    .into_response()
}
