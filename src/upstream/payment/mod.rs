//! Payment providers behind one interface, [`PaymentProvider`]: the sandbox gateway
//! ([`sandbox`]) and Stripe's PaymentIntents ([`stripe`]). The checkout, the breaker,
//! the timeouts, the reconciler and the invariant know only this interface.
//!
//! A payment goes through two calls. [`PaymentProvider::prepare`] makes whatever the
//! provider needs before money can move, and returns its reference (a
//! PaymentIntent's ID), which the checkout records durably; only then does
//! [`PaymentProvider::charge`] move the money. So an attempt without a recorded
//! reference was never charged by a provider that gives one, and an unknown
//! outcome is always settled by [`PaymentProvider::lookup`] of the recorded
//! payment, never by guessing.
//!
//! A third provider is a module here that implements the trait over an
//! [`Upstream`] (which brings its breaker, timeouts, metrics and the
//! classification of its answers), a `PAYMENT_PROVIDER` value and its settings in
//! `config`, and a branch in [`build`].

pub mod sandbox;
pub mod stripe;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Upstream, UpstreamError};
use crate::clock::Clock;
use crate::config::{PaymentProvider as ProviderSettings, UpstreamSettings};
use crate::domain::{AttemptId, CartId, Money, PaymentToken};
use crate::ops::metrics::Metrics;

/// The payment of one checkout attempt, as the provider is asked about it.
#[derive(Clone, Debug)]
pub struct PaymentRef<'a> {
    /// The attempt: the idempotency key of every call about it.
    pub attempt: &'a AttemptId,
    /// The cart, for the provider's records.
    pub cart: &'a CartId,
    /// The provider's own reference, once [`PaymentProvider::prepare`] made one and
    /// it was recorded.
    pub reference: Option<&'a str>,
}

/// Money taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paid {
    /// The provider's ID of the payment: the order's transaction ID.
    pub id: String,
    /// What was taken, as the provider says.
    pub amount: Money,
}

/// What a charge did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Charged {
    /// The money is taken.
    Paid(Paid),
    /// The card was declined; nothing was taken.
    Declined {
        /// The provider's reason (`generic_decline`, `insufficient_funds`, ...).
        decline_code: String,
    },
    /// The buyer must act (3-D Secure) before the provider decides.
    RequiresAction {
        /// The provider's reference of the payment.
        reference: String,
        /// What the buyer's browser needs to act (Stripe's `client_secret`).
        client_secret: String,
        /// What the buyer must do (Stripe's `next_action`).
        next_action: Value,
    },
}

/// What preparing a payment made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// Nothing to record: the attempt's ID is reference enough.
    Ready,
    /// The provider's reference, to record before charging.
    Reference(String),
    /// The provider refused the payment method before any money could move.
    Declined {
        /// The provider's reason (`resource_missing`, `card_declined`, ...).
        decline_code: String,
    },
}

/// What a lookup found about an attempt's payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Money taken and not refunded.
    Paid(Paid),
    /// No money taken, and none will be unless asked again.
    NotPaid,
    /// Still undecided: waiting for the buyer, or being processed.
    Pending,
}

/// A payment provider: see the module documentation.
pub trait PaymentProvider: Send + Sync {
    /// The dependency behind the provider (its breaker, for health and fail-fast).
    fn upstream(&self) -> &Upstream;

    /// Makes what a charge needs: see [`Prepared`].
    fn prepare<'a>(
        &'a self,
        payment: &'a PaymentRef<'a>,
        amount: Money,
        token: &'a PaymentToken,
    ) -> BoxFuture<'a, Result<Prepared, UpstreamError>>;

    /// Takes `amount` for the attempt, at most once however often it is asked.
    fn charge<'a>(
        &'a self,
        payment: &'a PaymentRef<'a>,
        amount: Money,
        token: &'a PaymentToken,
    ) -> BoxFuture<'a, Result<Charged, UpstreamError>>;

    /// What became of the attempt's payment.
    fn lookup<'a>(&'a self, payment: &'a PaymentRef<'a>) -> BoxFuture<'a, Result<Found, UpstreamError>>;

    /// Gives back payment `id` in full; refunding twice is harmless.
    fn refund<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), UpstreamError>>;

    /// Gives up a payment still waiting for the buyer: after this it cannot be
    /// paid. A provider without such payments has nothing to do.
    fn cancel<'a>(&'a self, payment: &'a PaymentRef<'a>) -> BoxFuture<'a, Result<(), UpstreamError>>;
}

/// The provider `settings` choose, calling it at `upstream`.
pub fn build(
    settings: &ProviderSettings,
    upstream: &UpstreamSettings,
    metrics: Arc<Metrics>,
    clock: Clock,
) -> anyhow::Result<Arc<dyn PaymentProvider>> {
    Ok(match settings {
        ProviderSettings::Sandbox { api_key } => {
            Arc::new(sandbox::PaymentGateway::new(upstream, api_key, metrics, clock)?)
        }
        ProviderSettings::Stripe(stripe) => Arc::new(stripe::Stripe::new(upstream, stripe, metrics, clock)?),
    })
}
