//! The sandbox payment gateway: charges that are idempotent on their key, test
//! tokens that decline, refunds, and a ledger of everything for invariant checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::faults::{self, Faults};
use crate::domain::ids::random_id;

/// One charge, as the ledger records it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerCharge {
    id: String,
    idempotency_key: String,
    amount_cents: i64,
    currency: String,
    /// `succeeded`, or `failed` for a declined card.
    status: &'static str,
    refunded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    decline_code: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LedgerRefund {
    id: String,
    charge_id: String,
    amount_cents: i64,
}

#[derive(Default)]
struct Ledger {
    charges: Vec<LedgerCharge>,
    by_key: HashMap<String, usize>,
    refunds: Vec<LedgerRefund>,
}

/// The gateway's state.
pub struct Gateway {
    api_key: String,
    ledger: Mutex<Ledger>,
    faults: Arc<Faults>,
}

impl Gateway {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn gateway_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"type": kind, "code": code, "message": message}})),
    )
        .into_response()
}

/// The 401 for a request without the gateway's API key, if it lacks it.
fn unauthorized(gateway: &Gateway, headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", gateway.api_key);
    match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(given) if given == expected => None,
        _ => Some(gateway_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "Invalid API key provided.",
        )),
    }
}

fn charge_json(charge: &LedgerCharge) -> Value {
    json!({
        "id": charge.id,
        "status": charge.status,
        "amountCents": charge.amount_cents,
        "currency": charge.currency,
        "refunded": charge.refunded,
    })
}

fn decline(charge: &LedgerCharge) -> Response {
    let code = charge.decline_code.unwrap_or("generic_decline");
    (
        StatusCode::PAYMENT_REQUIRED,
        Json(
            json!({"error": {"type": "card_error", "code": "card_declined", "declineCode": code,
            "message": "Your card was declined.", "chargeId": charge.id}}),
        ),
    )
        .into_response()
}

async fn create_charge(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(denied) = unauthorized(&gateway, &headers) {
        return denied;
    }
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
    else {
        return gateway_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "idempotency_key_required",
            "An Idempotency-Key header is required.",
        );
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let amount = request.get("amountCents").and_then(Value::as_i64).filter(|a| *a > 0);
    let currency = request
        .get("currency")
        .and_then(Value::as_str)
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()));
    let token = request.get("token").and_then(Value::as_str);
    let (Some(amount), Some(currency), Some(token)) = (amount, currency, token) else {
        return gateway_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_invalid",
            "amountCents (positive integer), currency (ISO code) and token are required.",
        );
    };
    let mut ledger = gateway.ledger();
    if let Some(&index) = ledger.by_key.get(key) {
        let existing = &ledger.charges[index];
        if existing.amount_cents != amount || existing.currency != currency {
            return gateway_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_error",
                "idempotency_key_reused",
                "This idempotency key was used with different parameters.",
            );
        }
        return match existing.status {
            "succeeded" => Json(charge_json(existing)).into_response(),
            _ => decline(existing),
        };
    }
    let decline_code = match token {
        "tok_chargeDeclined" => Some("generic_decline"),
        "tok_chargeDeclinedInsufficientFunds" => Some("insufficient_funds"),
        t if !t.starts_with("tok_") => Some("invalid_token"),
        _ => None,
    };
    let charge = LedgerCharge {
        id: random_id("txn_"),
        idempotency_key: key.to_string(),
        amount_cents: amount,
        currency: currency.to_string(),
        status: if decline_code.is_some() { "failed" } else { "succeeded" },
        refunded: false,
        decline_code,
    };
    let response = match decline_code {
        Some(_) => decline(&charge),
        None => Json(charge_json(&charge)).into_response(),
    };
    let index = ledger.charges.len();
    ledger.by_key.insert(key.to_string(), index);
    ledger.charges.push(charge);
    response
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChargeQuery {
    idempotency_key: Option<String>,
}

async fn find_charge(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(query): Query<ChargeQuery>,
) -> Response {
    if let Some(denied) = unauthorized(&gateway, &headers) {
        return denied;
    }
    let Some(key) = query.idempotency_key else {
        return gateway_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_missing",
            "idempotencyKey is required.",
        );
    };
    let ledger = gateway.ledger();
    match ledger.by_key.get(&key) {
        Some(&index) => Json(charge_json(&ledger.charges[index])).into_response(),
        None => gateway_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            "No charge has this idempotency key.",
        ),
    }
}

async fn create_refund(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(denied) = unauthorized(&gateway, &headers) {
        return denied;
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(charge_id) = request.get("chargeId").and_then(Value::as_str) else {
        return gateway_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_missing",
            "chargeId is required.",
        );
    };
    let mut ledger = gateway.ledger();
    if let Some(refund) = ledger.refunds.iter().find(|r| r.charge_id == charge_id) {
        return Json(json!(refund)).into_response();
    }
    let Some(charge) = ledger
        .charges
        .iter_mut()
        .find(|c| c.id == charge_id && c.status == "succeeded")
    else {
        return gateway_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            "No successful charge has this ID.",
        );
    };
    charge.refunded = true;
    let refund = LedgerRefund {
        id: random_id("re_"),
        charge_id: charge_id.to_string(),
        amount_cents: charge.amount_cents,
    };
    let response = Json(json!(refund)).into_response();
    ledger.refunds.push(refund);
    response
}

async fn get_ledger(State(gateway): State<Arc<Gateway>>) -> Json<Value> {
    let ledger = gateway.ledger();
    Json(json!({"charges": ledger.charges, "refunds": ledger.refunds}))
}

/// The gateway's routes, accepting `api_key`.
pub fn router(api_key: String, faults: Arc<Faults>) -> Router {
    let gateway = Arc::new(Gateway {
        api_key,
        ledger: Mutex::default(),
        faults: faults.clone(),
    });
    let business = Router::new()
        .route("/v1/charges", post(create_charge).get(find_charge))
        .route("/v1/refunds", post(create_refund))
        .with_state(gateway.clone())
        .layer(axum::middleware::from_fn_with_state(faults.clone(), faults::inject));
    let control = Router::new()
        .route("/_control/ledger", get(get_ledger))
        .with_state(gateway.clone())
        .merge(control_router(gateway.faults.clone()));
    business.merge(control)
}

/// The fault and stats routes both sandboxes share.
pub fn control_router(faults: Arc<Faults>) -> Router {
    Router::new()
        .route(
            "/_control/faults",
            put(faults::put_faults).delete(faults::delete_faults),
        )
        .route("/_control/stats", get(faults::get_stats))
        .with_state(faults)
}
