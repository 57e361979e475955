//! The sandbox payment gateway (DESIGN §5): charges keyed by idempotency key (the
//! attempt's ID), lookups by that key, refunds.

use std::sync::Arc;

use anyhow::Context as _;
use http::header::HeaderValue;
use http::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use futures_util::future::BoxFuture;

use super::{Charged, Found, Paid, PaymentProvider, PaymentRef, Prepared};
use crate::client::IDEMPOTENCY_KEY;
use crate::clock::Clock;
use crate::config::UpstreamSettings;
use crate::domain::{AttemptId, Currency, Money, PaymentToken};
use crate::ops::metrics::Metrics;
use crate::resilience::Dependency;
use crate::upstream::{Read, Upstream, UpstreamError};

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

/// Client of the sandbox payment gateway.
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

    /// Charges `amount` to `token`. The attempt ID is the idempotency key: however
    /// often this is retried, the gateway charges at most once.
    async fn charge_once(&self, key: &AttemptId, amount: Money, token: &str) -> Result<Charged, UpstreamError> {
        let request = self
            .upstream
            .request(Method::POST, &["v1", "charges"])
            .bearer(&self.bearer)
            .header(IDEMPOTENCY_KEY, key.as_str())
            .json(&ChargeRequest {
                amount_cents: amount.cents,
                currency: amount.currency.as_str(),
                token,
            });
        self.upstream
            .call(request, |answer| match answer.status {
                // Anything but a finished charge (`pending`, say) leaves the outcome unknown.
                StatusCode::OK | StatusCode::CREATED => match serde_json::from_slice::<Charge>(&answer.body) {
                    Ok(charge) if charge.status == "succeeded" => match charge.paid() {
                        Some(paid) => Read::Done(Charged::Paid(paid)),
                        None => Read::Malformed(format!(
                            "the charge's currency {:?} is not an ISO code",
                            charge.currency
                        )),
                    },
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
                    Read::Done(Charged::Declined { decline_code })
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
            .bearer(&self.bearer);
        self.upstream
            .call(request, |answer| match answer.status {
                StatusCode::OK => Read::json(answer, Some),
                StatusCode::NOT_FOUND => Read::Done(None),
                _ => Read::Unexpected,
            })
            .await
    }

    /// Refunds charge `charge_id` in full. Refunding twice is harmless.
    async fn refund_charge(&self, charge_id: &str) -> Result<(), UpstreamError> {
        let request = self
            .upstream
            .request(Method::POST, &["v1", "refunds"])
            .bearer(&self.bearer)
            .header(IDEMPOTENCY_KEY, format!("refund_{charge_id}"))
            .json(&serde_json::json!({ "chargeId": charge_id }));
        self.upstream
            .call(request, |answer| match answer.status {
                StatusCode::OK | StatusCode::CREATED => Read::Done(()),
                _ => Read::Unexpected,
            })
            .await
    }
}

impl Charge {
    /// The charge as money taken, if its currency is one.
    fn paid(&self) -> Option<Paid> {
        Some(Paid {
            id: self.id.clone(),
            amount: Money {
                cents: self.amount_cents,
                currency: Currency::parse(&self.currency).ok()?,
            },
        })
    }
}

impl PaymentProvider for PaymentGateway {
    fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    fn prepare<'a>(
        &'a self,
        _payment: &'a PaymentRef<'a>,
        _amount: Money,
        _token: &'a PaymentToken,
    ) -> BoxFuture<'a, Result<Prepared, UpstreamError>> {
        // The attempt's ID is the idempotency key: nothing to make first.
        Box::pin(async { Ok(Prepared::Ready) })
    }

    fn charge<'a>(
        &'a self,
        payment: &'a PaymentRef<'a>,
        amount: Money,
        token: &'a PaymentToken,
    ) -> BoxFuture<'a, Result<Charged, UpstreamError>> {
        Box::pin(self.charge_once(payment.attempt, amount, token.expose()))
    }

    fn lookup<'a>(&'a self, payment: &'a PaymentRef<'a>) -> BoxFuture<'a, Result<Found, UpstreamError>> {
        Box::pin(async move {
            Ok(match self.find_charge(payment.attempt).await? {
                Some(charge) if charge.status == "succeeded" && !charge.refunded => match charge.paid() {
                    Some(paid) => Found::Paid(paid),
                    None => Found::NotPaid,
                },
                Some(charge) if charge.status == "pending" => Found::Pending,
                // No charge, a declined one, or one already refunded.
                _ => Found::NotPaid,
            })
        })
    }

    fn refund<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(self.refund_charge(id))
    }

    fn cancel<'a>(&'a self, _payment: &'a PaymentRef<'a>) -> BoxFuture<'a, Result<(), UpstreamError>> {
        // The gateway's charges never wait for the buyer.
        Box::pin(async { Ok(()) })
    }
}
