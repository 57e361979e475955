//! The payment gateway: charges keyed by idempotency key, lookups by that key, refunds.

use std::sync::Arc;

use anyhow::Context as _;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{Read, Upstream, UpstreamError};
use crate::clock::Clock;
use crate::config::UpstreamSettings;
use crate::domain::{AttemptId, Money};
use crate::ops::metrics::Metrics;
use crate::resilience::Dependency;

/// A charge as the gateway reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    /// The gateway's ID (`txn_...`): the order's transaction ID.
    pub id: String,
    /// `succeeded` for a charge that went through.
    pub status: String,
    /// Amount charged.
    pub amount_cents: i64,
    /// Currency charged.
    pub currency: String,
    /// Whether it has been refunded.
    #[serde(default)]
    pub refunded: bool,
}

/// The gateway's answer to a charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeResult {
    /// The card was charged.
    Succeeded(Charge),
    /// The card was declined; nothing was charged.
    Declined {
        /// The gateway's reason (`generic_decline`, `insufficient_funds`, ...).
        decline_code: String,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChargeRequest<'a> {
    amount_cents: i64,
    currency: &'a str,
    token: &'a str,
}

#[derive(Deserialize)]
struct DeclineBody {
    error: DeclineDetail,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeclineDetail {
    decline_code: Option<String>,
    code: Option<String>,
}

/// Client of the payment gateway.
pub struct PaymentGateway {
    upstream: Upstream,
    /// `Bearer <PAYMENT_API_KEY>`, marked sensitive so that it is never printed.
    bearer: HeaderValue,
}

impl PaymentGateway {
    /// A client for the gateway at `settings.url`, authenticating with `api_key`.
    pub fn new(
        settings: &UpstreamSettings,
        api_key: &SecretString,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let mut bearer = HeaderValue::try_from(format!("Bearer {}", api_key.expose_secret()))
            .context("PAYMENT_API_KEY cannot be sent in an HTTP header")?;
        bearer.set_sensitive(true);
        Ok(Self {
            upstream: Upstream::new(Dependency::PaymentGateway, settings, metrics, clock)?,
            bearer,
        })
    }

    /// The dependency behind this client (for its breaker).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Charges `amount` to `token`. The attempt ID is the idempotency key: however
    /// often this is retried, the gateway charges at most once.
    pub async fn charge(&self, key: &AttemptId, amount: Money, token: &str) -> Result<ChargeResult, UpstreamError> {
        let request = self
            .upstream
            .request(Method::POST, &["v1", "charges"])
            .header(AUTHORIZATION, self.bearer.clone())
            .header("Idempotency-Key", key.as_str())
            .json(&ChargeRequest {
                amount_cents: amount.cents,
                currency: amount.currency.as_str(),
                token,
            });
        self.upstream
            .call(request, |answer| match answer.status {
                // Anything but a finished charge (`pending`, say) leaves the outcome unknown.
                StatusCode::OK | StatusCode::CREATED => match serde_json::from_slice::<Charge>(&answer.body) {
                    Ok(charge) if charge.status == "succeeded" => Read::Done(ChargeResult::Succeeded(charge)),
                    Ok(charge) => {
                        Read::Malformed(format!("the charge's status is {:?}, not \"succeeded\"", charge.status))
                    }
                    Err(error) => Read::Malformed(error.to_string()),
                },
                StatusCode::PAYMENT_REQUIRED => {
                    let decline_code = serde_json::from_slice::<DeclineBody>(&answer.body)
                        .ok()
                        .and_then(|b| b.error.decline_code.or(b.error.code))
                        .unwrap_or_else(|| "unknown".to_string());
                    Read::Done(ChargeResult::Declined { decline_code })
                }
                _ => Read::Unexpected,
            })
            .await
    }

    /// The charge made under idempotency key `key`, if any.
    pub async fn find_charge(&self, key: &AttemptId) -> Result<Option<Charge>, UpstreamError> {
        let request = self
            .upstream
            .request(Method::GET, &["v1", "charges"])
            .query(&[("idempotencyKey", key.as_str())])
            .header(AUTHORIZATION, self.bearer.clone());
        self.upstream
            .call(request, |answer| match answer.status {
                StatusCode::OK => Read::json(answer, Some),
                StatusCode::NOT_FOUND => Read::Done(None),
                _ => Read::Unexpected,
            })
            .await
    }

    /// Refunds charge `charge_id` in full. Refunding twice is harmless.
    pub async fn refund(&self, charge_id: &str) -> Result<(), UpstreamError> {
        let request = self
            .upstream
            .request(Method::POST, &["v1", "refunds"])
            .header(AUTHORIZATION, self.bearer.clone())
            .header("Idempotency-Key", format!("refund_{charge_id}"))
            .json(&serde_json::json!({ "chargeId": charge_id }));
        self.upstream
            .call(request, |answer| match answer.status {
                StatusCode::OK | StatusCode::CREATED => Read::Done(()),
                _ => Read::Unexpected,
            })
            .await
    }
}
