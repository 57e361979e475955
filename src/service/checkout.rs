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

use tracing::Instrument as _;
use tracing::instrument::WithSubscriber as _;

use super::{Checkout, ServiceError, StepContext as _, ms};
use crate::domain::{
    Attempt, AttemptId, AttemptState, Cart, CartId, CartStatus, InventoryAction, Money, OrderId, PaymentToken, UserId,
};
use crate::store::attempts::{Begin, Failure, Lease};
use crate::upstream::UpstreamError;
use crate::upstream::inventory::Reservation;
use crate::upstream::payment::{Charged, Paid, PaymentRef, Prepared};

/// What a successful checkout produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The order.
    pub order_id: OrderId,
    /// The gateway's charge; none for a total of 0.
    pub transaction_id: Option<String>,
    /// Amount charged.
    pub total_cents: i64,
    /// Currency charged.
    pub currency: String,
}

/// A payment waiting for the buyer (3-D Secure): what their browser needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionNeeded {
    /// The cart, `CHECKING_OUT` until the provider decides.
    pub cart_id: CartId,
    /// The attempt.
    pub attempt_id: AttemptId,
    /// The provider's reference (a PaymentIntent's ID).
    pub payment_ref: String,
    /// For the buyer's browser (Stripe's `client_secret`).
    pub client_secret: String,
    /// What the buyer must do (Stripe's `next_action`).
    pub next_action: serde_json::Value,
}

/// How a checkout succeeded, or where it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completed {
    /// This request created the order (201).
    Created(Receipt),
    /// The cart already had an order; nothing was charged (200).
    AlreadyCompleted(Receipt),
    /// The payment waits for the buyer (202); the stock stays held.
    RequiresAction(ActionNeeded),
}

/// How long after an uncertain charge was ruled out the provider is asked again.
pub const RECHECK_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// The attempt's payment, as its provider is asked about it.
pub fn payment_of(attempt: &Attempt) -> PaymentRef<'_> {
    PaymentRef {
        attempt: &attempt.id,
        cart: &attempt.cart_id,
        reference: attempt.payment_ref.as_deref(),
    }
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
        // 9. Nothing to charge: the order stands without a payment.
        if amount.cents == 0 {
            return self.finish(&attempt, owner, None).await.map(Completed::Created);
        }
        // The provider's reference is on record before any money can move.
        if attempt.payment_ref.is_none() {
            let payment = payment_of(&attempt);
            match self.payment.prepare(&payment, amount, token).await {
                Ok(Prepared::Ready) => {}
                Ok(Prepared::Declined { decline_code }) => {
                    self.abandon(&attempt, owner, "PAYMENT_DECLINED", true).await?;
                    return Err(ServiceError::PaymentDeclined(decline_code));
                }
                Ok(Prepared::Reference(reference)) => {
                    let recorded = self
                        .store
                        .record_payment_ref(&attempt.id, owner, &reference, self.now_ms())
                        .await
                        .context("failed to record the payment's reference")?;
                    if !recorded {
                        return Err(ServiceError::CheckoutInProgress);
                    }
                    attempt.payment_ref = Some(reference);
                }
                // Nothing was confirmed, so nothing was charged: undo.
                Err(error) => {
                    self.abandon(&attempt, owner, "PAYMENT_UNAVAILABLE", true).await?;
                    return Err(error).context("failed to prepare the payment");
                }
            }
        }
        let payment = payment_of(&attempt);
        match self.payment.charge(&payment, amount, token).await {
            Ok(Charged::Paid(paid)) if paid.amount == amount => self
                .finish(&attempt, owner, Some(&paid.id))
                .await
                .map(Completed::Created),
            Ok(Charged::Paid(paid)) => self.mismatched(&attempt, owner, amount, &paid).await,
            Ok(Charged::Declined { decline_code }) => {
                self.abandon(&attempt, owner, "PAYMENT_DECLINED", true).await?;
                Err(ServiceError::PaymentDeclined(decline_code))
            }
            Ok(Charged::RequiresAction {
                reference,
                client_secret,
                next_action,
            }) => {
                // The buyer decides now; the stock stays held meanwhile, and whoever
                // hears of the outcome first (a webhook, a retry, the reconciler) settles it.
                let until = attempt
                    .action_until_ms
                    .unwrap_or_else(|| self.now_ms() + ms(self.timing.action_timeout));
                self.store
                    .await_action(&attempt.id, owner, until, self.now_ms())
                    .await
                    .context("failed to record that the payment waits for the buyer")?;
                Ok(Completed::RequiresAction(ActionNeeded {
                    cart_id: attempt.cart_id.clone(),
                    attempt_id: attempt.id.clone(),
                    payment_ref: reference,
                    client_secret,
                    next_action,
                }))
            }
            Err(error) if first_charge && error.was_refused() => {
                // Never charged: this was the attempt's first charge call, and it never
                // left (no connection, an open circuit) or was refused with a 4xx. Undo.
                self.abandon(&attempt, owner, "PAYMENT_REFUSED", true).await?;
                Err(error).context("failed to charge the card")
            }
            Err(error) => self.charge_unknown(&attempt, owner, error).await,
        }
    }

    /// Step 8 when the provider took another amount than the order's: the charge is
    /// refunded at once, the attempt fails and the cart opens again; the client
    /// hears of a bug.
    async fn mismatched<T>(
        &self,
        attempt: &Attempt,
        owner: &str,
        ordered: Money,
        paid: &Paid,
    ) -> Result<T, ServiceError> {
        let refund = self.payment.refund(&paid.id).await;
        // A refund that failed is made by the reconciler, which looks for the charge.
        let recheck = refund.is_err().then(|| self.now_ms() + ms(RECHECK_WINDOW));
        self.fail(attempt, owner, "PAYMENT_AMOUNT_MISMATCH", true, recheck)
            .await
            .context("failed to record the end of the checkout attempt")?;
        let refunded = match &refund {
            Ok(()) => "the charge was refunded".to_string(),
            Err(error) => format!("its refund failed ({error}) and is retried"),
        };
        super::log_amount_mismatch(paid, ordered, &refunded);
        Err(ServiceError::Bug {
            class: "PaymentAmountMismatch",
            cause: anyhow::anyhow!(
                "the payment provider took {} {} for an order of {} {} (transaction {}); {refunded}",
                paid.amount.cents,
                paid.amount.currency,
                ordered.cents,
                ordered.currency,
                paid.id
            ),
        })
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

    /// Step 5: record the order (paid by `transaction_id`, or by nothing for a total
    /// of 0), then commit the stock (retried later if that fails).
    async fn finish(
        &self,
        attempt: &Attempt,
        owner: &str,
        transaction_id: Option<&str>,
    ) -> Result<Receipt, ServiceError> {
        let order_id = OrderId::for_attempt(&attempt.id);
        let completed = self
            .store
            .complete_attempt(attempt, owner, &order_id, transaction_id, self.now_ms())
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
            transactionId = transaction_id,
            totalCents = attempt.amount_cents,
            "order confirmed"
        );
        // The order stands whatever the inventory says now: commit the stock after
        // answering. The commit is owed in the attempt: the reconciler makes it if this
        // one fails, or if too many are in progress to start it now.
        self.settle_in_background(attempt, InventoryAction::Commit);
        Ok(Receipt {
            order_id,
            transaction_id: transaction_id.map(str::to_string),
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
            // Still part of the request's trace, and its records carry its fields.
            .in_current_span()
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

    /// Ends an attempt without an order from a request: the attempt fails and the
    /// cart opens again at once, and the stock (if any may be held) is released in
    /// the background, so the answer never waits for the inventory (10).
    async fn abandon(&self, attempt: &Attempt, owner: &str, reason: &str, release: bool) -> Result<(), ServiceError> {
        self.fail(attempt, owner, reason, release, None)
            .await
            .context("failed to record the end of the checkout attempt")?;
        Ok(())
    }

    /// Fails the attempt and reopens the cart, owing the inventory a release when
    /// `release`, which is then made in the background.
    async fn fail(
        &self,
        attempt: &Attempt,
        owner: &str,
        reason: &str,
        release: bool,
        recheck_until_ms: Option<i64>,
    ) -> Result<bool, crate::store::StoreError> {
        let failure = Failure {
            reason,
            inventory_pending: release.then_some(InventoryAction::Release),
            recheck_until_ms,
        };
        let failed = self.store.fail_attempt(attempt, owner, &failure, self.now_ms()).await?;
        if failed && release {
            self.settle_in_background(attempt, InventoryAction::Release);
        }
        Ok(failed)
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
