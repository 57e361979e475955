//! The inventory service: reservations keyed by the attempt ID, then committed or released.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{Read, Upstream, UpstreamError};
use crate::clock::Clock;
use crate::config::UpstreamSettings;
use crate::domain::{AttemptId, CartLine};
use crate::ops::metrics::Metrics;
use crate::resilience::Dependency;

/// The inventory's answer to a reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Every item is held for this attempt.
    Held,
    /// Some items are not available; nothing is held.
    Conflict {
        /// The SKUs that cannot be reserved.
        unavailable_skus: Vec<String>,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReservationRequest<'a> {
    reservation_id: &'a str,
    items: Vec<ReservationItem<'a>>,
}

#[derive(Serialize)]
struct ReservationItem<'a> {
    sku: &'a str,
    quantity: i64,
}

/// A successful reservation's answer: which reservation it holds.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeldBody {
    reservation_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConflictBody {
    #[serde(default)]
    unavailable_skus: Vec<String>,
}

/// Client of the inventory service.
pub struct InventoryService {
    upstream: Upstream,
}

impl InventoryService {
    /// A client for the service at `settings.url`.
    pub fn new(settings: &UpstreamSettings, metrics: Arc<Metrics>, clock: Clock) -> anyhow::Result<Self> {
        Ok(Self {
            upstream: Upstream::new(Dependency::InventoryService, settings, metrics, clock)?,
        })
    }

    /// The dependency behind this client (for its breaker).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Holds `items` under reservation `id`. Idempotent on `id`.
    pub async fn reserve(&self, id: &AttemptId, items: &[CartLine]) -> Result<Reservation, UpstreamError> {
        let body = ReservationRequest {
            reservation_id: id.as_str(),
            items: items
                .iter()
                .map(|line| ReservationItem {
                    sku: line.sku.as_str(),
                    quantity: line.quantity,
                })
                .collect(),
        };
        let request = self.upstream.request(Method::POST, &["v1", "reservations"]).json(&body);
        self.upstream
            .call(request, |answer| match answer.status {
                // A hold is believed only when the answer says it is this one.
                StatusCode::OK | StatusCode::CREATED => match serde_json::from_slice::<HeldBody>(&answer.body) {
                    Ok(held) if held.reservation_id == id.as_str() => Read::Done(Reservation::Held),
                    Ok(held) => Read::Malformed(format!(
                        "the answer holds reservation {:?}, not {id}",
                        held.reservation_id
                    )),
                    Err(error) => Read::Malformed(error.to_string()),
                },
                StatusCode::CONFLICT => Read::json(answer, |conflict: ConflictBody| Reservation::Conflict {
                    unavailable_skus: conflict.unavailable_skus,
                }),
                _ => Read::Unexpected,
            })
            .await
    }

    /// Makes reservation `id` permanent.
    pub async fn commit(&self, id: &AttemptId) -> Result<(), UpstreamError> {
        let request = self
            .upstream
            .request(Method::POST, &["v1", "reservations", id.as_str(), "commit"]);
        self.upstream
            .call(request, |answer| match answer.status {
                StatusCode::OK | StatusCode::NO_CONTENT => Read::Done(()),
                _ => Read::Unexpected,
            })
            .await
    }

    /// Gives reservation `id` back. Releasing one that does not exist is a no-op.
    pub async fn release(&self, id: &AttemptId) -> Result<(), UpstreamError> {
        let request = self
            .upstream
            .request(Method::DELETE, &["v1", "reservations", id.as_str()]);
        self.upstream
            .call(request, |answer| match answer.status {
                StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Read::Done(()),
                _ => Read::Unexpected,
            })
            .await
    }
}
