//! The checkout as a service that knows nothing of HTTP: [`Checkout`] runs a
//! checkout step by step ([`checkout`]) and settles what failures leave behind
//! ([`reconcile`]), over the store and the dependency clients. Its failures are
//! [`ServiceError`]s, turned into answers once, at the HTTP edge.

pub mod checkout;
mod error;
pub mod reconcile;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

pub use checkout::{ActionNeeded, Command, Completed, Receipt};
pub use error::{ServiceError, StepContext};

use crate::clock::Clock;
use crate::config::Settings;
use crate::ops::metrics::Metrics;
use crate::store::Store;
use crate::upstream::InventoryService;
use crate::upstream::payment::PaymentProvider;

/// Most inventory calls made after answering that are in progress at once. Any
/// beyond them is left to the reconciler (each is owed in its attempt either way),
/// so a slow inventory service builds a backlog in the database, not in memory.
pub const SETTLING_AT_ONCE: usize = 64;

/// The bounds the checkout and the reconciler work within.
#[derive(Clone, Debug)]
pub struct Timing {
    /// A request's whole time (`REQUEST_TIMEOUT_MS`): its lease on an attempt
    /// cannot outlive it.
    pub request_timeout: Duration,
    /// Bound on one payment call.
    pub payment_timeout: Duration,
    /// Bound on one inventory call.
    pub inventory_timeout: Duration,
    /// Bound on one database call (acquiring a connection and its statement).
    pub db_call: Duration,
    /// Period of the reconciler's sweep.
    pub reconcile_interval: Duration,
    /// How often the gateway is asked again for a charge that may land late.
    pub recheck_interval: Duration,
    /// How long a payment may wait for the buyer before it is cancelled.
    pub action_timeout: Duration,
}

impl Timing {
    /// The bounds `settings` set.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            request_timeout: settings.request_timeout,
            payment_timeout: settings.payment.timeout,
            inventory_timeout: settings.inventory.timeout,
            db_call: settings.db.acquire_timeout + settings.db.statement_timeout,
            reconcile_interval: settings.reconcile_interval,
            recheck_interval: settings.recheck_interval,
            action_timeout: match &settings.provider {
                crate::config::PaymentProvider::Stripe(stripe) => stripe.action_timeout,
                crate::config::PaymentProvider::Sandbox { .. } => Duration::from_secs(3600),
            },
        }
    }
}

/// Checkouts and their reconciliation, for one instance.
pub struct Checkout {
    /// The database.
    pub store: Arc<Store>,
    /// The payment provider.
    pub payment: Arc<dyn PaymentProvider>,
    /// The inventory service.
    pub inventory: Arc<InventoryService>,
    /// Names this instance in attempt leases: `inst_...`.
    pub instance: String,
    /// The clock leases and retries are measured on.
    pub clock: Clock,
    /// The bounds of every step.
    pub timing: Timing,
    /// Counts what the reconciler does.
    pub metrics: Arc<Metrics>,
    /// Bounds the inventory calls made after answering (see [`SETTLING_AT_ONCE`]).
    pub settling: Arc<Semaphore>,
}

impl Checkout {
    /// A service over these parts.
    pub fn new(
        store: Arc<Store>,
        payment: Arc<dyn PaymentProvider>,
        inventory: Arc<InventoryService>,
        instance: String,
        clock: Clock,
        timing: Timing,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            payment,
            inventory,
            instance,
            clock,
            timing,
            metrics,
            settling: Arc::new(Semaphore::new(SETTLING_AT_ONCE)),
        }
    }

    /// Now, on the service's clock.
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// Milliseconds of `duration`, as stored in the database.
/// The `payment_amount_mismatch` record: the provider took `paid` for an order of
/// `ordered`, and `what` was done about it.
fn log_amount_mismatch(paid: &crate::upstream::payment::Paid, ordered: crate::domain::Money, what: &str) {
    tracing::warn!(
        event = "payment_amount_mismatch",
        transactionId = paid.id.as_str(),
        orderedCents = ordered.cents,
        paidCents = paid.amount.cents,
        "the payment provider took {} {} for an order of {} {}; {what}",
        paid.amount.cents,
        paid.amount.currency,
        ordered.cents,
        ordered.currency
    );
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
