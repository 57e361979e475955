//! `POST /api/checkout/complete`, with `Idempotency-Key` replays.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::api::{ActionView, Checkout, CheckoutRequest, CheckoutResult, ErrorBody, OrderStatusView};
use super::error::ApiError;
use super::extract::{AuthUser, JsonBody};
use crate::app::App;
use crate::service::{Command, Completed, Receipt, ServiceError};
use crate::store::idempotency::KeyClaim;

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_CHARS: usize = 256;

/// The `Idempotency-Key` header, checked when the handler gets to it (after the
/// body), without copying the other headers.
pub struct IdempotencyKey(Result<Option<String>, ApiError>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(IdempotencyKey(idempotency_key(&parts.headers)))
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.as_bytes();
    if key.is_empty() || key.len() > MAX_KEY_CHARS || !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "must be 1 to 256 visible ASCII characters (no spaces)",
        ));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

fn json_response(status: StatusCode, body: String, replayed: bool) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn result_body(receipt: &Receipt) -> String {
    let body = CheckoutResult {
        order_id: receipt.order_id.to_string(),
        transaction_id: receipt.transaction_id.clone(),
        status: OrderStatusView::Confirmed,
        total_cents: receipt.total_cents,
        currency: receipt.currency.clone(),
    };
    serde_json::to_string(&body).expect("a receipt is strings and numbers")
}

/// Checks a cart out: reserves stock, charges the card once, confirms the order.
#[utoipa::path(
    post, path = "/api/checkout/complete", tag = "checkout",
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, pattern = "^[!-~]+$",
            description = "Replaying a key with the same body returns the original response; with another body, 422"),
    ),
    request_body(content = CheckoutRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Order confirmed", body = CheckoutResult,
            links(("GetOrder" = (operation_id = "get_order", parameters(("orderId" = "$response.body#/orderId")))))),
        (status = 200, description = "The cart was already checked out: its order, charged once", body = CheckoutResult),
        (status = 202, description = "The card needs the buyer (3-D Secure): the cart stays CHECKING_OUT until the provider decides", body = ActionView),
        (status = 400, description = "Missing or invalid fields (MISSING_REQUIRED_FIELDS, INVALID_FIELD, INVALID_JSON)", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 402, description = "The card was declined", body = ErrorBody),
        (status = 403, description = "userId is not the token's user, or the cart is another user's", body = ErrorBody),
        (status = 404, description = "No such cart", body = ErrorBody),
        (status = 409, description = "Empty cart, checkout in progress, or items unavailable", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused with a different body", body = ErrorBody),
        (status = 503, description = "A dependency is unavailable; retry after Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn complete(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    body: JsonBody<CheckoutRequest>,
) -> Result<Response, ApiError> {
    let request = Checkout::try_from(body.require()?)?;
    tracing::Span::current().record("cartId", request.cart_id.as_str());
    if request.user_id != user {
        return Err(ApiError::Forbidden);
    }
    let key = key?;
    if let Some(key) = &key {
        let fingerprint = request.fingerprint();
        let now = app.clock.now_ms();
        match app.store.claim_idempotency_key(&user, key, &fingerprint, now).await? {
            KeyClaim::Mismatch => return Err(ApiError::IdempotencyKeyReused),
            KeyClaim::Replay { status, body } => {
                app.metrics.checkouts.with_label_values(&["replayed"]).inc();
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                return Ok(json_response(status, body, true));
            }
            KeyClaim::Proceed => {}
        }
    }
    let command = Command {
        cart_id: &request.cart_id,
        user: &user,
        token: &request.payment_token,
    };
    let outcome = app.checkout.complete(&command).await;
    app.metrics
        .checkouts
        .with_label_values(&[match &outcome {
            Ok(Completed::Created(_)) => "confirmed",
            Ok(Completed::RequiresAction(_)) => "requires_action",
            Ok(Completed::AlreadyCompleted(_)) => "already_completed",
            Err(ServiceError::PaymentDeclined(_)) => "declined",
            Err(ServiceError::InventoryConflict(_)) => "inventory_conflict",
            Err(ServiceError::Store { source, .. }) if source.is_unavailable() => "unavailable",
            Err(ServiceError::Upstream { source, .. }) if source.is_unavailable() => "unavailable",
            Err(ServiceError::Store { .. } | ServiceError::Upstream { .. } | ServiceError::Bug { .. }) => "error",
            Err(_) => "rejected",
        }])
        .inc();
    let (status, receipt) = match outcome? {
        Completed::Created(receipt) => (StatusCode::CREATED, receipt),
        Completed::AlreadyCompleted(receipt) => (StatusCode::OK, receipt),
        // Not an outcome yet: never kept for Idempotency-Key replays.
        Completed::RequiresAction(needed) => {
            let body = ActionView {
                status: "REQUIRES_ACTION",
                cart_id: needed.cart_id.to_string(),
                attempt_id: needed.attempt_id.to_string(),
                payment_intent_id: needed.payment_ref,
                client_secret: needed.client_secret,
                next_action: needed.next_action,
            };
            let body = serde_json::to_string(&body).expect("an answer of strings and JSON");
            return Ok(json_response(StatusCode::ACCEPTED, body, false));
        }
    };
    let body = result_body(&receipt);
    if let Some(key) = &key
        && let Err(error) = app
            .store
            .save_idempotent_response(&user, key, status.as_u16(), &body)
            .await
    {
        // The order stands; a replay of this key will find the completed cart instead.
        tracing::warn!(
            event = "idempotency_save_failed",
            error = %error,
            "could not keep the response for Idempotency-Key replays"
        );
    }
    Ok(json_response(status, body, false))
}
