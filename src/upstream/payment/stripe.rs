//! Stripe's PaymentIntents (DESIGN §11), at `STRIPE_API_BASE` with
//! `STRIPE_SECRET_KEY`. Requests are form-encoded, as Stripe requires.
//!
//! [`PaymentProvider::prepare`] creates the PaymentIntent (amount, currency, the
//! PaymentMethod, `metadata` with `attemptId` and `cartId`, `Idempotency-Key` = the
//! attempt's ID) without confirming it; the checkout records its ID; then
//! [`PaymentProvider::charge`] confirms it, or, for a PaymentIntent already
//! confirmed, reads where it stands. Correctness never rests on `Idempotency-Key`:
//! a PaymentIntent is only ever confirmed once its ID is on record, so an attempt
//! with no ID on record was never charged, and one with an ID is settled by
//! reading that PaymentIntent.
//!
//! Webhook signatures are checked by [`verify_signature`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use http::header::HeaderValue;
use http::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use super::{Charged, Found, Paid, PaymentProvider, PaymentRef, Prepared};
use crate::client::{Answer, IDEMPOTENCY_KEY};
use crate::clock::Clock;
use crate::config::{StripeSettings, UpstreamSettings};
use crate::domain::{Currency, Money, PaymentToken};
use crate::ops::metrics::Metrics;
use crate::resilience::Dependency;
use crate::upstream::{Read, Upstream, UpstreamError, UpstreamErrorKind};

/// How old a webhook's signed timestamp may be (or how far ahead).
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);

/// A PaymentIntent, as much of it as the checkout reads.
#[derive(Clone, Debug, Deserialize)]
pub struct PaymentIntent {
    /// `pi_...`.
    pub id: String,
    /// Its state: `requires_payment_method`, `requires_confirmation`,
    /// `requires_action`, `processing`, `requires_capture`, `canceled`, `succeeded`.
    pub status: String,
    /// In the currency's smallest unit.
    pub amount: i64,
    /// Lower case ISO code.
    pub currency: String,
    /// For the buyer's browser, to act on `next_action`.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// What the buyer must do, while `requires_action`.
    #[serde(default)]
    pub next_action: Option<Value>,
    /// Why the latest try failed, if it did.
    #[serde(default)]
    pub last_payment_error: Option<StripeError>,
    /// The latest charge, when the PaymentIntent was read with it expanded: whether
    /// money went back.
    #[serde(default, deserialize_with = "expanded_charge")]
    pub latest_charge: Option<LatestCharge>,
}

/// What the checkout reads of a PaymentIntent's latest charge.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LatestCharge {
    /// How much of it was given back, in the smallest unit.
    #[serde(default)]
    pub amount_refunded: i64,
}

/// A charge expanded into its object; its bare ID (not expanded) says nothing.
fn expanded_charge<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<LatestCharge>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Field {
        Expanded(LatestCharge),
        Id(#[allow(dead_code, reason = "read only to be told apart")] String),
    }
    Ok(match Option::<Field>::deserialize(deserializer)? {
        Some(Field::Expanded(charge)) => Some(charge),
        _ => None,
    })
}

/// An error as Stripe describes it.
#[derive(Clone, Debug, Deserialize)]
pub struct StripeError {
    /// `card_error`, `invalid_request_error`, ...
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// `card_declined`, `resource_missing`, `payment_intent_authentication_failure`, ...
    #[serde(default)]
    pub code: Option<String>,
    /// The issuer's reason for a decline.
    #[serde(default)]
    pub decline_code: Option<String>,
    /// The parameter at fault.
    #[serde(default)]
    pub param: Option<String>,
}

impl StripeError {
    /// The reason a client is told: the decline code, or the error code.
    fn reason(&self) -> String {
        self.decline_code
            .clone()
            .or_else(|| self.code.clone())
            .unwrap_or_else(|| "card_declined".to_string())
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: StripeError,
}

impl PaymentIntent {
    fn paid(&self) -> Option<Paid> {
        Some(Paid {
            id: self.id.clone(),
            amount: Money {
                cents: self.amount,
                currency: Currency::parse(&self.currency.to_ascii_uppercase()).ok()?,
            },
        })
    }

    /// Where the PaymentIntent stands, as a charge's answer.
    fn charged(&self) -> Read<Charged> {
        match self.status.as_str() {
            "succeeded" => match self.paid() {
                Some(paid) => Read::Done(Charged::Paid(paid)),
                None => Read::Malformed(format!(
                    "the PaymentIntent's currency {:?} is not an ISO code",
                    self.currency
                )),
            },
            "requires_action" => match &self.client_secret {
                Some(secret) => Read::Done(Charged::RequiresAction {
                    reference: self.id.clone(),
                    client_secret: secret.clone(),
                    next_action: self.next_action.clone().unwrap_or(Value::Null),
                }),
                None => Read::Malformed("a PaymentIntent that requires action has no client_secret".into()),
            },
            // The latest try failed (a decline, a failed authentication): nothing taken.
            "requires_payment_method" | "canceled" => Read::Done(Charged::Declined {
                decline_code: self
                    .last_payment_error
                    .as_ref()
                    .map_or_else(|| self.status.clone(), StripeError::reason),
            }),
            // `processing` and the rest: Stripe has not decided; the outcome is unknown.
            other => Read::Malformed(format!("the PaymentIntent is {other}")),
        }
    }

    fn found(&self) -> Found {
        let refunded = self
            .latest_charge
            .as_ref()
            .is_some_and(|c| c.amount_refunded >= self.amount);
        match self.status.as_str() {
            "succeeded" if refunded => Found::NotPaid,
            "succeeded" => self.paid().map_or(Found::NotPaid, Found::Paid),
            "requires_payment_method" | "canceled" | "requires_confirmation" => Found::NotPaid,
            _ => Found::Pending,
        }
    }
}

/// Stripe's PaymentIntents API.
pub struct Stripe {
    upstream: Upstream,
    bearer: HeaderValue,
}

impl Stripe {
    /// A client of Stripe at `settings.url` (`STRIPE_API_BASE`).
    pub fn new(
        settings: &UpstreamSettings,
        stripe: &StripeSettings,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let mut bearer = HeaderValue::try_from(format!("Bearer {}", stripe.secret_key.expose_secret()))
            .context("STRIPE_SECRET_KEY cannot be sent in an HTTP header")?;
        bearer.set_sensitive(true);
        Ok(Self {
            upstream: Upstream::new(Dependency::PaymentGateway, settings, metrics, clock)?,
            bearer,
        })
    }

    fn request(&self, method: Method, segments: &[&str]) -> crate::client::Request {
        self.upstream.request(method, segments).bearer(&self.bearer)
    }

    /// A PaymentIntent, read afresh, with its latest charge.
    pub async fn payment_intent(&self, id: &str) -> Result<PaymentIntent, UpstreamError> {
        let request = self
            .request(Method::GET, &["v1", "payment_intents", id])
            .query(&[("expand[]", "latest_charge")]);
        self.upstream
            .call(request, |answer| match answer.status {
                StatusCode::OK => Read::json(answer, |intent| intent),
                _ => Read::Unexpected,
            })
            .await
    }

    /// A PaymentIntent's answer, or a card error's.
    fn read_intent(answer: &Answer) -> Read<Charged> {
        match answer.status {
            StatusCode::OK => match serde_json::from_slice::<PaymentIntent>(&answer.body) {
                Ok(intent) => intent.charged(),
                Err(error) => Read::Malformed(error.to_string()),
            },
            // A card error: Stripe declined it; nothing was taken.
            StatusCode::PAYMENT_REQUIRED => match serde_json::from_slice::<ErrorBody>(&answer.body) {
                Ok(body) => Read::Done(Charged::Declined {
                    decline_code: body.error.reason(),
                }),
                Err(error) => Read::Malformed(error.to_string()),
            },
            _ => Read::Unexpected,
        }
    }

    /// A created PaymentIntent's answer: its ID, or the buyer's PaymentMethod refused.
    fn read_created(answer: &Answer) -> Read<Prepared> {
        match answer.status {
            StatusCode::OK => Read::json(answer, |intent: PaymentIntent| Prepared::Reference(intent.id)),
            StatusCode::PAYMENT_REQUIRED => match serde_json::from_slice::<ErrorBody>(&answer.body) {
                Ok(body) => Read::Done(Prepared::Declined {
                    decline_code: body.error.reason(),
                }),
                Err(error) => Read::Malformed(error.to_string()),
            },
            // The only object the request names is the buyer's PaymentMethod: one that
            // Stripe does not know (404, or 400 naming the parameter) is the client's
            // card, refused, not a fault of ours.
            StatusCode::NOT_FOUND => Read::Done(Prepared::Declined {
                decline_code: "resource_missing".into(),
            }),
            StatusCode::BAD_REQUEST => match serde_json::from_slice::<ErrorBody>(&answer.body) {
                Ok(body) if body.error.param.as_deref() == Some("payment_method") => Read::Done(Prepared::Declined {
                    decline_code: body.error.reason(),
                }),
                _ => Read::Unexpected,
            },
            _ => Read::Unexpected,
        }
    }
}

impl PaymentProvider for Stripe {
    fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    fn prepare<'a>(
        &'a self,
        payment: &'a PaymentRef<'a>,
        amount: Money,
        token: &'a PaymentToken,
    ) -> BoxFuture<'a, Result<Prepared, UpstreamError>> {
        Box::pin(async move {
            if let Some(reference) = payment.reference {
                return Ok(Prepared::Reference(reference.to_string()));
            }
            let form = [
                ("amount", amount.cents.to_string()),
                ("currency", amount.currency.as_str().to_ascii_lowercase()),
                ("payment_method", token.expose().to_string()),
                ("payment_method_types[]", "card".to_string()),
                ("metadata[attemptId]", payment.attempt.to_string()),
                ("metadata[cartId]", payment.cart.to_string()),
            ];
            let request = self
                .request(Method::POST, &["v1", "payment_intents"])
                .header(IDEMPOTENCY_KEY, payment.attempt.as_str())
                .form(&form);
            self.upstream.call(request, Self::read_created).await
        })
    }

    fn charge<'a>(
        &'a self,
        payment: &'a PaymentRef<'a>,
        _amount: Money,
        _token: &'a PaymentToken,
    ) -> BoxFuture<'a, Result<Charged, UpstreamError>> {
        Box::pin(async move {
            let Some(reference) = payment.reference else {
                return Err(UpstreamError::new(
                    Dependency::PaymentGateway,
                    UpstreamErrorKind::InvalidRequest(
                        "a PaymentIntent is confirmed only once its ID is on record".into(),
                    ),
                ));
            };
            let request = self
                .request(Method::POST, &["v1", "payment_intents", reference, "confirm"])
                .header(IDEMPOTENCY_KEY, format!("confirm_{}", payment.attempt));
            let confirmed = self
                .upstream
                .call(request, |answer| match answer.status {
                    // Confirmed before (a retry, a resumed attempt, the buyer acting):
                    // where it stands is read instead.
                    StatusCode::BAD_REQUEST => Read::Done(None),
                    _ => Self::read_intent(answer).map(Some),
                })
                .await?;
            if let Some(charged) = confirmed {
                return Ok(charged);
            }
            let intent = self.payment_intent(reference).await?;
            match intent.charged() {
                Read::Done(charged) => Ok(charged),
                Read::Malformed(why) => Err(UpstreamError::new(
                    Dependency::PaymentGateway,
                    UpstreamErrorKind::Malformed(why),
                )),
                Read::Unexpected => Err(UpstreamError::new(
                    Dependency::PaymentGateway,
                    UpstreamErrorKind::Malformed(format!("the PaymentIntent is {}", intent.status)),
                )),
            }
        })
    }

    fn lookup<'a>(&'a self, payment: &'a PaymentRef<'a>) -> BoxFuture<'a, Result<Found, UpstreamError>> {
        Box::pin(async move {
            match payment.reference {
                // Never confirmed: a PaymentIntent is confirmed only once on record.
                None => Ok(Found::NotPaid),
                Some(reference) => Ok(self.payment_intent(reference).await?.found()),
            }
        })
    }

    fn refund<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let request = self
                .request(Method::POST, &["v1", "refunds"])
                .header(IDEMPOTENCY_KEY, format!("refund_{id}"))
                .form(&[("payment_intent", id)]);
            self.upstream
                .call(request, |answer| match answer.status {
                    StatusCode::OK => Read::Done(()),
                    // Refunded already: what was asked for holds.
                    StatusCode::BAD_REQUEST
                        if serde_json::from_slice::<ErrorBody>(&answer.body)
                            .is_ok_and(|b| b.error.code.as_deref() == Some("charge_already_refunded")) =>
                    {
                        Read::Done(())
                    }
                    _ => Read::Unexpected,
                })
                .await
        })
    }

    fn cancel<'a>(&'a self, payment: &'a PaymentRef<'a>) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let Some(reference) = payment.reference else {
                return Ok(());
            };
            let request = self.request(Method::POST, &["v1", "payment_intents", reference, "cancel"]);
            self.upstream
                .call(request, |answer| match answer.status {
                    StatusCode::OK => Read::Done(()),
                    // Already canceled or finished: nothing to cancel; a lookup says which.
                    StatusCode::BAD_REQUEST => Read::Done(()),
                    _ => Read::Unexpected,
                })
                .await
        })
    }
}

/// Why a webhook's `Stripe-Signature` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No header, or no `t=` or `v1=` in it.
    #[error("the Stripe-Signature header is missing or malformed")]
    Malformed,
    /// Signed too long ago, or too far ahead.
    #[error("the Stripe-Signature timestamp is outside the 300 s tolerance")]
    Stale,
    /// No `v1` signature matches.
    #[error("no Stripe-Signature v1 signature matches the payload")]
    Mismatch,
}

/// Checks `header` (`t=...,v1=...[,v1=...]`) against `payload` and `secret`, at
/// `now_secs`: HMAC-SHA256 of `t.payload`, any `v1` may match (secrets roll over),
/// within [`SIGNATURE_TOLERANCE`] of `t`.
pub fn verify_signature(
    header: Option<&str>,
    payload: &[u8],
    secret: &str,
    now_secs: u64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Malformed)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<u64>().ok(),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if timestamp.abs_diff(now_secs) > SIGNATURE_TOLERANCE.as_secs() {
        return Err(SignatureError::Stale);
    }
    for signature in signatures {
        let Ok(expected) = hex::decode(signature) else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// The `Stripe-Signature` header Stripe would send for `payload` at `timestamp`.
pub fn sign(payload: &[u8], secret: &str, timestamp: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    #[test]
    fn a_signature_verifies_within_the_tolerance_with_any_v1() {
        let payload = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
        let header = sign(payload, SECRET, 1_800_000_000);
        assert_eq!(verify_signature(Some(&header), payload, SECRET, 1_800_000_100), Ok(()));
        let rolled = format!(
            "t=1800000000,v1={},{}",
            "00".repeat(32),
            header.split(',').nth(1).expect("v1")
        );
        assert_eq!(
            verify_signature(Some(&rolled), payload, SECRET, 1_800_000_000),
            Ok(()),
            "secrets roll over"
        );
        assert_eq!(
            verify_signature(Some(&header), payload, SECRET, 1_800_000_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(Some(&header), b"{}", SECRET, 1_800_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(Some(&header), payload, "whsec_other", 1_800_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(None, payload, SECRET, 0),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(Some("t=1"), payload, SECRET, 1),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn a_payment_intent_says_what_a_charge_did() {
        let intent = |status: &str| PaymentIntent {
            id: "pi_1".into(),
            status: status.into(),
            amount: 1200,
            currency: "usd".into(),
            client_secret: Some("pi_1_secret".into()),
            next_action: Some(serde_json::json!({"type": "use_stripe_sdk"})),
            last_payment_error: None,
            latest_charge: None,
        };
        assert!(matches!(intent("succeeded").charged(), Read::Done(Charged::Paid(p)) if p.amount.cents == 1200));
        assert!(matches!(
            intent("requires_action").charged(),
            Read::Done(Charged::RequiresAction { .. })
        ));
        assert!(matches!(
            intent("requires_payment_method").charged(),
            Read::Done(Charged::Declined { .. })
        ));
        assert!(matches!(intent("processing").charged(), Read::Malformed(_)));
        assert_eq!(intent("processing").found(), Found::Pending);
        assert_eq!(intent("requires_action").found(), Found::Pending);
        assert_eq!(intent("canceled").found(), Found::NotPaid);
    }
}
