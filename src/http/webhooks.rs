//! `POST /webhooks/stripe` (DESIGN §11): Stripe's events about PaymentIntents. The
//! `Stripe-Signature` header is verified before anything of the body is read;
//! each event is applied once (by its ID), in any order, by reading the
//! PaymentIntent afresh, never by trusting the event.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::ErrorBody;
use super::error::{ApiError, Dependency, SHORT_BACKOFF};
use crate::app::App;
use crate::config::PaymentProvider;
use crate::service::reconcile::Settled;
use crate::upstream::payment::stripe::verify_signature;

/// What the service did with an event.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventReceipt {
    /// Always true: Stripe stops delivering it.
    pub received: bool,
    /// `applied`, `duplicate` (applied before), or `ignored` (not about a payment
    /// of this service).
    pub outcome: &'static str,
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: EventObject,
}

#[derive(Deserialize)]
struct EventObject {
    id: String,
    #[serde(default)]
    object: String,
}

/// The events that settle a payment.
const SETTLING: &[&str] = &[
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.processing",
    "payment_intent.requires_action",
];

/// Applies one of Stripe's events.
#[utoipa::path(
    post, path = "/webhooks/stripe", tag = "checkout",
    params(("Stripe-Signature" = String, Header, description = "t=<seconds>,v1=<HMAC-SHA256 of t.payload>")),
    request_body(content = Object, description = "A Stripe event", content_type = "application/json"),
    responses(
        (status = 200, description = "The event is verified and applied (or was before)", body = EventReceipt),
        (status = 400, description = "A missing, stale or wrong signature, or not an event (INVALID_FIELD, INVALID_JSON)", body = ErrorBody),
        (status = 404, description = "This instance does not use Stripe (NOT_FOUND)", body = ErrorBody),
        (status = 409, description = "A request is settling the payment right now; delivered again, the event is applied (CHECKOUT_IN_PROGRESS)", body = ErrorBody),
        (status = 503, description = "The event could not be applied now; Stripe delivers it again", body = ErrorBody),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    )
)]
pub async fn stripe(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<EventReceipt>, ApiError> {
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let PaymentProvider::Stripe(stripe) = &app.settings.provider else {
        // Without a signature the request is wrong whoever receives it.
        if signature.is_none() {
            return Err(ApiError::invalid(
                "Stripe-Signature",
                crate::upstream::payment::stripe::SignatureError::Malformed.to_string(),
            ));
        }
        return Err(ApiError::NotFound);
    };
    verify_signature(
        signature,
        &body,
        stripe.webhook_secret.expose_secret(),
        app.clock.now_secs(),
    )
    .map_err(|why| ApiError::invalid("Stripe-Signature", why.to_string()))?;
    let event: Event = serde_json::from_slice(&body)
        .map_err(|error| ApiError::InvalidJson(format!("it is not a Stripe event ({error})")))?;
    let receipt = |outcome| {
        Json(EventReceipt {
            received: true,
            outcome,
        })
    };
    if !SETTLING.contains(&event.kind.as_str()) || event.data.object.object != "payment_intent" {
        return Ok(receipt("ignored"));
    }
    let reference = event.data.object.id;
    let now = app.clock.now_ms();
    if !app
        .store
        .record_event(&event.id, &event.kind, Some(&reference), now)
        .await?
    {
        return Ok(receipt("duplicate"));
    }
    match app.checkout.settle_payment(&reference).await {
        Ok(Settled::Done(_) | Settled::AlreadySettled) => Ok(receipt("applied")),
        Ok(Settled::Unknown) => Ok(receipt("ignored")),
        // A request is settling this payment right now: Stripe delivers the event
        // again, and it is applied then.
        Ok(Settled::Busy) => {
            let _ = app.store.forget_event(&event.id).await;
            Err(ApiError::CheckoutInProgress)
        }
        Err(error) => {
            // Not applied: let a delivery again apply it.
            let _ = app.store.forget_event(&event.id).await;
            Err(ApiError::unavailable(
                Dependency::PaymentGateway,
                SHORT_BACKOFF,
                "PaymentEventDeferred",
                error.context(format!("failed to apply Stripe event {} ({})", event.id, event.kind)),
            ))
        }
    }
}
