//! The inventory service: reservations keyed by the attempt ID, then committed or released.

use std::sync::Arc;

use hyper::header::CONTENT_TYPE;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::transport::encode_component;
use super::{Body, Upstream, UpstreamError};
use crate::config::UpstreamSettings;
use crate::domain::{AttemptId, CartLine};
use crate::error::Dependency;
use crate::ops::metrics::Metrics;

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
    pub fn new(settings: &UpstreamSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Ok(Self {
            upstream: Upstream::new(Dependency::InventoryService, settings, metrics)?,
        })
    }

    /// The dependency behind this client (for its breaker).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Holds `items` under reservation `id`. Idempotent on `id`.
    pub async fn reserve(&self, id: &AttemptId, items: &[CartLine]) -> Result<Reservation, UpstreamError> {
        let body = serde_json::to_vec(&ReservationRequest {
            reservation_id: id.as_str(),
            items: items
                .iter()
                .map(|line| ReservationItem {
                    sku: line.sku.as_str(),
                    quantity: line.quantity,
                })
                .collect(),
        })
        .unwrap_or_default();
        let request = self
            .upstream
            .request(Method::POST, "/v1/reservations")
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body));
        let answer = self.upstream.send(request).await?;
        match answer.status {
            StatusCode::OK | StatusCode::CREATED => Ok(Reservation::Held),
            StatusCode::CONFLICT => {
                let conflict: ConflictBody = self.upstream.parse(&answer)?;
                Ok(Reservation::Conflict {
                    unavailable_skus: conflict.unavailable_skus,
                })
            }
            _ => Err(self.upstream.unexpected(&answer)),
        }
    }

    /// Makes reservation `id` permanent.
    pub async fn commit(&self, id: &AttemptId) -> Result<(), UpstreamError> {
        let path = format!("/v1/reservations/{}/commit", encode_component(id.as_str()));
        let request = self.upstream.request(Method::POST, &path).body(Body::default());
        let answer = self.upstream.send(request).await?;
        match answer.status {
            StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
            _ => Err(self.upstream.unexpected(&answer)),
        }
    }

    /// Gives reservation `id` back. Releasing one that does not exist is a no-op.
    pub async fn release(&self, id: &AttemptId) -> Result<(), UpstreamError> {
        let path = format!("/v1/reservations/{}", encode_component(id.as_str()));
        let request = self.upstream.request(Method::DELETE, &path).body(Body::default());
        let answer = self.upstream.send(request).await?;
        match answer.status {
            StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(()),
            _ => Err(self.upstream.unexpected(&answer)),
        }
    }
}
