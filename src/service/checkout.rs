//! The checkout, step by step. Each step is recorded before it is taken, so that
//! whatever fails (a dependency, the database, the process itself) leaves an attempt
//! that a retry or the reconciler can finish or undo, and never a second charge:
//!
//! 1. fail fast while either dependency's circuit is open;
//! 2. record a `RESERVING` attempt and mark the cart `CHECKING_OUT` together, so a
//!    concurrent checkout of the same cart gets 409 (a cart that cannot be claimed
//!    is read to learn why: missing, someone else's, empty, completed, or in progress);
//! 3. reserve stock under the attempt's ID;
//! 4. record `CHARGING`, then charge with the attempt's ID as idempotency key;
//! 5. create the order and complete attempt and cart together, then commit the stock.
//!
//! A charge whose outcome is unknown leaves the attempt `CHARGING`: the client gets
//! 503, and its retry resumes the same attempt with the same idempotency key.

use tracing::instrument::WithSubscriber as _;

use super::{Checkout, ServiceError, StepContext as _, ms};
use crate::domain::{
    Attempt, AttemptId, AttemptState, Cart, CartId, CartStatus, InventoryAction, Money, OrderId, PaymentToken, UserId,
};
use crate::store::attempts::{Begin, Failure, Lease};
use crate::upstream::UpstreamError;
use crate::upstream::inventory::Reservation;
use crate::upstream::payment::{Charge, ChargeResult};

/// What a successful checkout produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The order.
    pub order_id: OrderId,
    /// The gateway's charge.
    pub transaction_id: String,
    /// Amount charged.
    pub total_cents: i64,
    /// Currency charged.
    pub currency: String,
}

/// How a checkout succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completed {
    /// This request created the order (201).
    Created(Receipt),
    /// The cart already had an order; nothing was charged (200).
    AlreadyCompleted(Receipt),
}

/// Everything a checkout needs from the request.
pub struct Command<'a> {
    /// The cart.
    pub cart_id: &'a CartId,
    /// The buyer (already checked against the token).
    pub user: &'a UserId,
    /// The card.
    pub token: &'a PaymentToken,
}

/// Records the attempt being worked on in the records of the current request.
fn record_attempt(attempt: &AttemptId) {
    tracing::Span::current().record("attemptId", attempt.as_str());
}

impl Checkout {
    /// Step 1: with a circuit open the order cannot be completed; say so before any work.
    pub fn check_circuits(&self) -> Result<(), ServiceError> {
        self.inventory
            .upstream()
            .check()
            .context("the inventory service is failing fast")?;
        self.payment
            .upstream()
            .check()
            .context("the payment gateway is failing fast")?;
        Ok(())
    }

    /// Runs a checkout to its end, or to the first answer the client must hear.
    ///
    /// The common case, a first checkout of an open cart, goes straight to step 2: the
    /// claim itself checks that the cart is the user's, open and not empty, and reads
    /// its lines. Only when it claims nothing is the cart read to learn why.
    pub async fn complete(&self, command: &Command<'_>) -> Result<Completed, ServiceError> {
        self.check_circuits()?;
        let lease = self.request_lease();
        // A cart that another request reopens between our claim and our read is tried
        // again; a cart that keeps changing under us is a concurrent checkout.
        for _ in 0..2 {
            // 2. One transaction: the attempt exists exactly when the cart is CHECKING_OUT.
            let attempt_id = AttemptId::generate();
            let begun = self
                .store
                .begin_attempt(command.cart_id, command.user, &attempt_id, &lease, self.now_ms())
                .await
                .context("failed to record the checkout attempt")?;
            if let Begin::Started(attempt, cart) = begun {
                return self.run(attempt, &cart, command.token, &lease.owner).await;
            }
            let cart = self.owned_cart(command).await?;
            match cart.status {
                CartStatus::Completed => return self.replay(&cart).await.map(Completed::AlreadyCompleted),
                CartStatus::CheckingOut => return self.resume(command, &cart, &lease).await,
                CartStatus::Open if cart.items.is_empty() => return Err(ServiceError::CartEmpty),
                CartStatus::Open => {}
            }
        }
        Err(ServiceError::CheckoutInProgress)
    }

    async fn owned_cart(&self, command: &Command<'_>) -> Result<Cart, ServiceError> {
        let cart = self
            .store
            .cart(command.cart_id)
            .await
            .context("failed to load the cart")?
            .ok_or(ServiceError::CartNotFound)?;
        if &cart.user_id != command.user {
            return Err(ServiceError::Forbidden);
        }
        Ok(cart)
    }

    /// A lease for this request: it cannot outlive the request's own timeout, so once
    /// it runs out the request is certainly gone and someone else may take over.
    fn request_lease(&self) -> Lease {
        let margin = std::time::Duration::from_secs(1);
        Lease {
            owner: format!("{}/{}", self.instance, crate::domain::ids::random_id("req_")),
            until_ms: self.now_ms() + ms(self.timing.request_timeout + margin),
        }
    }

    /// The cart is `CHECKING_OUT`: take over its attempt if nobody is working on it.
    async fn resume(&self, command: &Command<'_>, cart: &Cart, lease: &Lease) -> Result<Completed, ServiceError> {
        let claimed = self
            .store
            .claim_cart_attempt(&cart.id, lease, self.now_ms())
            .await
            .context("failed to take over the unfinished checkout attempt")?;
        let Some(attempt) = claimed else {
            return Err(ServiceError::CheckoutInProgress);
        };
        tracing::info!(
            event = "checkout_resumed",
            state = attempt.state.as_str(),
            "resuming an unfinished checkout attempt {}",
            attempt.id
        );
        self.run(attempt, cart, command.token, &lease.owner).await
    }

    /// Steps 3 to 5 for an attempt this request holds.
    async fn run(
        &self,
        mut attempt: Attempt,
        cart: &Cart,
        token: &PaymentToken,
        owner: &str,
    ) -> Result<Completed, ServiceError> {
        record_attempt(&attempt.id);
        // Only a charge call made by this request can be known not to have charged: a
        // resumed CHARGING attempt may carry an earlier call whose outcome is unknown.
        let first_charge = attempt.state == AttemptState::Reserving;
        if attempt.state == AttemptState::Reserving {
            // 3. Reserve stock under the attempt's ID (idempotent, so a resumed attempt
            //    cannot reserve twice).
            match self.inventory.reserve(&attempt.id, &cart.items).await {
                Ok(Reservation::Held) => {}
                Ok(Reservation::Conflict { unavailable_skus }) => {
                    self.abandon(&attempt, owner, "INVENTORY_CONFLICT", true).await?;
                    return Err(ServiceError::InventoryConflict(unavailable_skus));
                }
                Err(error) => {
                    self.abandon(&attempt, owner, "INVENTORY_UNAVAILABLE", !error.was_not_sent())
                        .await?;
                    return Err(error).context("failed to reserve inventory");
                }
            }
            // 4. From here on the card may be charged: write that down first.
            let marked = self
                .store
                .mark_charging(&attempt.id, owner, self.now_ms())
                .await
                .context("failed to record that the charge is starting")?;
            if !marked {
                return Err(ServiceError::CheckoutInProgress);
            }
            attempt.state = AttemptState::Charging;
        }
        let amount = Money {
            cents: attempt.amount_cents,
            currency: attempt.currency,
        };
        match self.payment.charge(&attempt.id, amount, token.expose()).await {
            Ok(ChargeResult::Succeeded(charge)) => self.finish(&attempt, owner, &charge).await.map(Completed::Created),
            Ok(ChargeResult::Declined { decline_code }) => {
                self.abandon(&attempt, owner, "PAYMENT_DECLINED", true).await?;
                Err(ServiceError::PaymentDeclined(decline_code))
            }
            Err(error) if first_charge && error.was_not_sent() => {
                // Never charged: this was the attempt's first charge call and it never
                // left (no connection, or the circuit is open). Undo.
                self.abandon(&attempt, owner, "PAYMENT_UNAVAILABLE", true).await?;
                Err(error).context("failed to charge the card")
            }
            Err(error) => self.charge_unknown(&attempt, owner, error).await,
        }
    }

    /// The charge may or may not have happened (now or in an earlier call). Keep the
    /// attempt CHARGING and hand it back: a retry resumes it with the same
    /// idempotency key, or the reconciler asks the gateway.
    async fn charge_unknown<T>(&self, attempt: &Attempt, owner: &str, error: UpstreamError) -> Result<T, ServiceError> {
        let now = self.now_ms();
        if let Err(release) = self.store.release_lease(&attempt.id, owner, now, now).await {
            tracing::warn!(
                event = "lease_release_failed",
                error = %release,
                "could not hand the attempt back; it is taken over when its lease runs out"
            );
        }
        Err(error).context("failed to charge the card; the outcome is unknown")
    }

    /// Step 5: record the order, then commit the stock (retried later if that fails).
    async fn finish(&self, attempt: &Attempt, owner: &str, charge: &Charge) -> Result<Receipt, ServiceError> {
        let order_id = OrderId::for_attempt(&attempt.id);
        let completed = self
            .store
            .complete_attempt(attempt, owner, &order_id, &charge.id, self.now_ms())
            .await
            .context("failed to record the order after a successful charge")?;
        if !completed {
            // The reconciler took this attempt over (this request outlived its lease);
            // the order it made is the one to report.
            let cart = self
                .store
                .cart(&attempt.cart_id)
                .await
                .context("failed to reload the cart")?
                .ok_or(ServiceError::CartNotFound)?;
            return match cart.status {
                CartStatus::Completed => self.replay(&cart).await,
                _ => Err(ServiceError::CheckoutInProgress),
            };
        }
        tracing::Span::current().record("orderId", order_id.as_str());
        tracing::info!(
            event = "order_confirmed",
            transactionId = charge.id.as_str(),
            totalCents = attempt.amount_cents,
            "order confirmed"
        );
        // The order stands whatever the inventory says now: commit the stock after
        // answering. The commit is owed in the attempt: the reconciler makes it if this
        // one fails, or if too many are in progress to start it now.
        self.settle_in_background(attempt, InventoryAction::Commit);
        Ok(Receipt {
            order_id,
            transaction_id: charge.id.clone(),
            total_cents: attempt.amount_cents,
            currency: attempt.currency.to_string(),
        })
    }

    /// Makes an inventory call the attempt owes after the answer, unless too many
    /// are in progress already (the reconciler makes it then).
    fn settle_in_background(&self, attempt: &Attempt, action: InventoryAction) {
        let Ok(turn) = self.settling.clone().try_acquire_owned() else {
            return;
        };
        let (inventory, store, clock, owed) = (
            self.inventory.clone(),
            self.store.clone(),
            self.clock.clone(),
            attempt.clone(),
        );
        tokio::spawn(
            async move {
                settle_inventory(&inventory, &store, &clock, &owed, action).await;
                drop(turn);
            }
            .with_current_subscriber(),
        );
    }

    /// Performs an inventory call the attempt owes and records it done; on failure
    /// it stays owed and the reconciler retries it. Returns whether it is done.
    pub async fn settle_inventory(&self, attempt: &Attempt, action: InventoryAction) -> bool {
        settle_inventory(&self.inventory.clone(), &self.store, &self.clock, attempt, action).await
    }

    /// Ends an attempt without an order: gives the stock back if any may be held,
    /// then fails the attempt and reopens the cart. Returns false if `owner` no
    /// longer held it.
    pub async fn give_back(
        &self,
        attempt: &Attempt,
        owner: &str,
        reason: &str,
        release_stock: bool,
        recheck_until_ms: Option<i64>,
    ) -> Result<bool, crate::store::StoreError> {
        let pending = if release_stock {
            match self.inventory.release(&attempt.id).await {
                Ok(()) => None,
                Err(error) => {
                    tracing::warn!(
                        event = "inventory_settle_deferred",
                        action = "RELEASE",
                        error = %error,
                        "could not release the reservation of attempt {}; the reconciler will retry it",
                        attempt.id
                    );
                    Some(InventoryAction::Release)
                }
            }
        } else {
            None
        };
        let failure = Failure {
            reason,
            inventory_pending: pending,
            recheck_until_ms,
        };
        self.store.fail_attempt(attempt, owner, &failure, self.now_ms()).await
    }

    async fn abandon(&self, attempt: &Attempt, owner: &str, reason: &str, release: bool) -> Result<(), ServiceError> {
        self.give_back(attempt, owner, reason, release, None)
            .await
            .context("failed to record the end of the checkout attempt")?;
        Ok(())
    }

    /// The order of a completed cart: a repeated checkout answers with it, charging
    /// nothing.
    async fn replay(&self, cart: &Cart) -> Result<Receipt, ServiceError> {
        let Some(order_id) = cart.order_id.as_ref() else {
            return Err(ServiceError::Bug {
                class: "InconsistentCart",
                cause: anyhow::anyhow!("completed cart {} has no order", cart.id),
            });
        };
        let order = self
            .store
            .order(order_id)
            .await
            .context("failed to load the order of a completed cart")?
            .ok_or_else(|| ServiceError::Bug {
                class: "InconsistentCart",
                cause: anyhow::anyhow!("completed cart {} names missing order {order_id}", cart.id),
            })?;
        tracing::Span::current().record("orderId", order.id.as_str());
        Ok(Receipt {
            order_id: order.id,
            transaction_id: order.transaction_id,
            total_cents: order.total_cents,
            currency: order.currency.to_string(),
        })
    }
}

/// Makes an inventory call an attempt owes and records it done.
async fn settle_inventory(
    inventory: &crate::upstream::InventoryService,
    store: &crate::store::Store,
    clock: &crate::clock::Clock,
    attempt: &Attempt,
    action: InventoryAction,
) -> bool {
    let result = match action {
        InventoryAction::Commit => inventory.commit(&attempt.id).await,
        InventoryAction::Release => inventory.release(&attempt.id).await,
    };
    let deferred = |error: &dyn std::fmt::Display, why: &str| {
        tracing::warn!(
            event = "inventory_settle_deferred",
            action = action.as_str(),
            error = %error,
            "{why} (attempt {})",
            attempt.id
        );
        false
    };
    match result {
        Ok(()) => match store.inventory_done(&attempt.id, action, clock.now_ms()).await {
            Ok(()) => true,
            Err(error) => deferred(
                &error,
                "inventory call done but not recorded; it will be repeated (it is idempotent)",
            ),
        },
        Err(error) => deferred(&error, "inventory call failed; the reconciler will retry it"),
    }
}
