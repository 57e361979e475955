//! How a checkout can fail, as the service says it: the client's answers (a
//! missing cart, a declined card, ...) and the failures underneath, each with the
//! step that failed and its cause. [`StepContext::context`] names the step, so a
//! call site reads `store.cart(id).await.context("failed to load the cart")?`.

use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// Why a checkout did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such cart.
    #[error("no such cart")]
    CartNotFound,
    /// The cart is another user's.
    #[error("the cart belongs to another user")]
    Forbidden,
    /// The cart has no items.
    #[error("the cart is empty")]
    CartEmpty,
    /// Another request is checking the cart out.
    #[error("the cart is being checked out by another request")]
    CheckoutInProgress,
    /// Inventory cannot reserve these SKUs.
    #[error("items are unavailable: {0:?}")]
    InventoryConflict(Vec<String>),
    /// The card was declined, for this reason.
    #[error("the card was declined ({0})")]
    PaymentDeclined(String),
    /// A database step failed.
    #[error("{step}")]
    Store {
        /// The step, `failed to ...`.
        step: &'static str,
        /// What the database said.
        #[source]
        source: StoreError,
    },
    /// A dependency step failed.
    #[error("{step}")]
    Upstream {
        /// The step, `failed to ...`.
        step: &'static str,
        /// What the dependency did.
        #[source]
        source: UpstreamError,
    },
    /// Something that cannot happen did: a bug, or data this build cannot explain.
    #[error("{cause:#}")]
    Bug {
        /// A short name for logs and metrics.
        class: &'static str,
        /// What was found.
        cause: anyhow::Error,
    },
}

impl From<StoreError> for ServiceError {
    fn from(source: StoreError) -> Self {
        ServiceError::Store {
            step: "a database call failed",
            source,
        }
    }
}

impl From<UpstreamError> for ServiceError {
    fn from(source: UpstreamError) -> Self {
        ServiceError::Upstream {
            step: "a dependency call failed",
            source,
        }
    }
}

/// Names the step a database or dependency error happened in.
pub trait StepContext<T> {
    /// The error, as a [`ServiceError`] that says `step` failed.
    fn context(self, step: &'static str) -> Result<T, ServiceError>;
}

impl<T> StepContext<T> for Result<T, StoreError> {
    fn context(self, step: &'static str) -> Result<T, ServiceError> {
        self.map_err(|source| ServiceError::Store { step, source })
    }
}

impl<T> StepContext<T> for Result<T, UpstreamError> {
    fn context(self, step: &'static str) -> Result<T, ServiceError> {
        self.map_err(|source| ServiceError::Upstream { step, source })
    }
}
